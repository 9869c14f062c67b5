"""image_url -> an HxWx3 uint8 array: data URLs always, local files only under a directory the
operator allowed, remote URLs never (the server fetches nothing).

Decoded pixels are bounded before any image is decoded: each image's size is read from its header,
and only formats whose header gives the size that will be decoded are opened (an ICO or TIFF can
hold an inner image far larger than its header says). Then the request's images together must fit
the per-request limit, and only then is any one decoded.
"""

import base64
import binascii
import io
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from prospect_core.server.errors import APIError

FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
FORMAT_NAMES = "PNG, JPEG, WebP, GIF or BMP"


def _open(data: bytes, param: str, max_pixels: int):
    """The image, opened lazily: its header read, no pixel decoded."""
    try:
        img = Image.open(io.BytesIO(data), formats=FORMATS)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise APIError(
            400, f"{param}: not a decodable image: expected a {FORMAT_NAMES} image ({type(e).__name__}: {e})", param
        ) from None
    w, h = img.size  # the first frame's, the one decoded
    if w * h > max_pixels:
        raise APIError(400, f"{param}: image of {w}x{h} pixels exceeds the limit of {max_pixels} pixels", param)
    return img


def _decode(img, param: str) -> np.ndarray:
    size = img.size
    try:
        img.load()
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
        raise APIError(400, f"{param}: not a decodable image ({type(e).__name__}: {e})", param) from None
    if img.size != size:  # cannot happen for FORMATS; were it to, the limit would have been checked on a lie
        raise APIError(400, f"{param}: image decoded to {img.size}, its header said {size}", param)
    return np.array(img.convert("RGB"))  # a writable copy


def _read(url: str, param: str, max_bytes: int, local_dir: Path | None) -> bytes:
    if url.startswith("data:"):
        head, sep, payload = url.partition(",")
        if not sep or not head.endswith(";base64") or not head[5:].startswith("image/"):
            raise APIError(
                400, f"{param}: expected a data URL 'data:image/<type>;base64,<data>', got '{head[:40]}...'", param
            )
        if len(payload) * 3 // 4 > max_bytes:
            raise APIError(
                400,
                f"{param}: image of about {len(payload) * 3 // 4} bytes exceeds the limit of {max_bytes} bytes",
                param,
            )
        try:
            return base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as e:
            raise APIError(400, f"{param}: the data URL's base64 does not decode ({e})", param) from None
    if url.startswith(("http://", "https://")):
        raise APIError(400, f"{param}: remote image URLs are not fetched; send the image as a data URL", param)
    if local_dir is None:
        raise APIError(
            400,
            f"{param}: expected a data URL; local image paths are refused unless the server "
            "was started with --allow-local-images DIR",
            param,
        )
    if "\x00" in url:
        raise APIError(400, f"{param}: expected a file path, got one with a NUL character", param)
    try:
        path = Path(url.removeprefix("file://")).expanduser()
        path = (local_dir / path if not path.is_absolute() else path).resolve()
        if not path.is_relative_to(local_dir):
            raise APIError(400, f"{param}: '{url}' is outside the allowed directory {local_dir}", param)
        if not path.is_file():
            raise APIError(400, f"{param}: no such image file '{url}'", param)
        size = path.stat().st_size
        if size > max_bytes:
            raise APIError(400, f"{param}: image of {size} bytes exceeds the limit of {max_bytes} bytes", param)
        return path.read_bytes()
    except (OSError, ValueError, RuntimeError) as e:  # a name too long, a symlink loop, ...
        raise APIError(400, f"{param}: cannot read image file '{url[:200]}' ({type(e).__name__})", param) from None


def load_images(pairs, where: str, max_bytes: int, max_pixels: int, max_total_pixels: int, local_dir: Path | None):
    """[(param, url)] -> [(param, HxWx3 uint8)]; 400 on the first bad one. where: the request's field holding
    them, named when they are too many pixels together."""
    opened = [(param, _open(_read(url, param, max_bytes, local_dir), param, max_pixels)) for param, url in pairs]
    total = sum(img.size[0] * img.size[1] for _, img in opened)
    if total > max_total_pixels:
        raise APIError(
            400,
            f"{where}: expected at most {max_total_pixels} pixels of images per request, got "
            f"{len(opened)} images of {total} pixels together",
            where,
        )
    return [(param, _decode(img, param)) for param, img in opened]


def image_url_of(value) -> str:
    """A bare string or an {"url": ...} object, as OpenAI clients send either."""
    return value if isinstance(value, str) else value.url
