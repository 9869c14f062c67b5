"""Decoded pixels are bounded before any pixel is decoded: each image by the size its header gives, in a
format whose header gives the size it decodes to, and each request by all its images' headers together."""

import base64
import io
import struct

import httpx
import numpy as np
import pytest
from PIL import Image, ImageFile

from prospect_core.server import ServerLimits, start_in_thread


def encode(img, fmt):
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def url_of(data, kind="png"):
    return f"data:image/{kind};base64," + base64.b64encode(data).decode()


def small(fmt="PNG", w=40, h=40):
    return encode(Image.fromarray(np.full((h, w, 3), 120, np.uint8)), fmt)


def ico_holding(png: bytes) -> bytes:
    """An icon whose directory says 16x16 but whose one image is the PNG given."""
    return struct.pack("<HHH", 0, 1, 1) + struct.pack("<BBBBHHII", 16, 16, 0, 0, 1, 32, len(png), 22) + png


def chat_with(*urls):
    content = [{"type": "image_url", "image_url": {"url": u}} for u in urls]
    return {"messages": [{"role": "user", "content": [*content, {"type": "text", "text": "what?"}]}], "max_tokens": 2}


@pytest.fixture(scope="module")
def http(engine):
    limits = ServerLimits(max_image_pixels=200 * 200, max_request_pixels=30_000, max_images_per_request=3)
    srv = start_in_thread(engine, limits=limits)
    with httpx.Client(base_url=srv.url, timeout=60) as c:
        yield c
    srv.stop()


@pytest.fixture
def decoded(monkeypatch):
    """Counts images decoded (pixels loaded) anywhere in this process, the server included."""
    calls = []
    load = ImageFile.ImageFile.load

    def counting(self):
        calls.append(self.size)
        return load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", counting)
    return calls


def refused(r, param, text):
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and text in err["message"], err


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "BMP"])
def test_formats_that_state_their_size_decode(http, fmt):
    r = http.post("/v1/chat/completions", json=chat_with(url_of(small(fmt), fmt.lower())))
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("fmt", ["TIFF", "ICO", "PPM", "TGA"])
def test_other_formats_are_refused(http, fmt):
    r = http.post("/v1/chat/completions", json=chat_with(url_of(small(fmt))))
    refused(r, "messages[0].content[0].image_url", "expected a PNG, JPEG, WebP, GIF or BMP image")


def test_icon_hiding_a_larger_png_is_never_decoded(http, decoded):
    """The header says 16x16; the PNG inside is 300x300, over the 200x200 limit."""
    r = http.post("/v1/chat/completions", json=chat_with(url_of(ico_holding(small("PNG", 300, 300)), "x-icon")))
    refused(r, "messages[0].content[0].image_url", "expected a PNG, JPEG, WebP, GIF or BMP image")
    assert decoded == []


def test_images_per_request_are_capped(http, decoded):
    r = http.post("/v1/chat/completions", json=chat_with(*[url_of(small())] * 4))
    refused(r, "messages", "expected at most 3 images per request, got 4")
    assert decoded == []


def test_pixels_per_request_are_counted_before_decoding(http, decoded):
    ok = http.post("/v1/chat/completions", json=chat_with(*[url_of(small("PNG", 100, 100))] * 3))  # 30,000
    assert ok.status_code == 200, ok.text
    decoded.clear()
    r = http.post("/v1/chat/completions", json=chat_with(*[url_of(small("PNG", 101, 100))] * 3))  # 30,300
    refused(r, "messages", "expected at most 30000 pixels of images per request, got 3 images of 30300")
    assert decoded == []


def test_frames_count_their_pixels_together(http, decoded):
    sid = http.post("/v1/sessions", json={"max_new_tokens": 2}).json()["id"]
    frames = [{"time": k, "image_url": url_of(small("PNG", 100, 100))} for k in range(4)]  # 40,000
    r = http.post(f"/v1/sessions/{sid}/frames", json={"frames": frames})
    refused(r, "frames", "pixels of images per request")
    assert decoded == [] and http.get(f"/v1/sessions/{sid}").json()["frames"] == 0


def test_many_large_frames_in_a_small_body_are_refused_undecoded(engine, decoded):
    """The probe's attack at default limits: 4096x4096 frames compress to a few KB each."""
    big = url_of(encode(Image.new("RGB", (4096, 4096), (90, 90, 90)), "PNG"))
    srv = start_in_thread(engine)
    try:
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            sid = c.post("/v1/sessions", json={"max_new_tokens": 2}).json()["id"]
            r = c.post(f"/v1/sessions/{sid}/frames", json={"frames": [{"time": k, "image_url": big} for k in range(5)]})
            refused(r, "frames", f"expected at most {ServerLimits().max_request_pixels} pixels")
            assert decoded == []
    finally:
        srv.stop()
