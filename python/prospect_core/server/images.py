"""image_url -> an HxWx3 uint8 array: data URLs always, local files only under a directory the
operator allowed, remote URLs never (the server fetches nothing)."""

import base64
import binascii
import io
from pathlib import Path

import numpy as np

from prospect_core.server.errors import APIError


def _decode(data: bytes, param: str, max_pixels: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(io.BytesIO(data))
        w, h = img.size  # from the header, before any pixel is decoded
        if w * h > max_pixels:
            raise APIError(400, f"{param}: image of {w}x{h} pixels exceeds the limit of {max_pixels} pixels", param)
        img.load()
        return np.array(img.convert("RGB"))  # a writable copy
    except APIError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise APIError(400, f"{param}: not a decodable image ({type(e).__name__}: {e})", param) from None


def load_image(url: str, param: str, max_bytes: int, max_pixels: int, local_dir: Path | None) -> np.ndarray:
    if url.startswith("data:"):
        head, sep, payload = url.partition(",")
        if not sep or not head.endswith(";base64") or not head[5:].startswith("image/"):
            raise APIError(400, f"{param}: expected a data URL 'data:image/<type>;base64,<data>', got "
                                f"'{head[:40]}...'", param)
        if len(payload) * 3 // 4 > max_bytes:
            raise APIError(400, f"{param}: image of about {len(payload) * 3 // 4} bytes exceeds the limit of "
                                f"{max_bytes} bytes", param)
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as e:
            raise APIError(400, f"{param}: the data URL's base64 does not decode ({e})", param) from None
        return _decode(data, param, max_pixels)
    if url.startswith(("http://", "https://")):
        raise APIError(400, f"{param}: remote image URLs are not fetched; send the image as a data URL", param)
    if local_dir is None:
        raise APIError(400, f"{param}: expected a data URL; local image paths are refused unless the server "
                            "was started with --allow-local-images DIR", param)
    path = Path(url.removeprefix("file://")).expanduser()
    path = (local_dir / path if not path.is_absolute() else path).resolve()
    if not path.is_relative_to(local_dir):
        raise APIError(400, f"{param}: '{url}' is outside the allowed directory {local_dir}", param)
    if not path.is_file():
        raise APIError(400, f"{param}: no such image file '{url}'", param)
    if path.stat().st_size > max_bytes:
        raise APIError(400, f"{param}: image of {path.stat().st_size} bytes exceeds the limit of {max_bytes} bytes",
                       param)
    return _decode(path.read_bytes(), param, max_pixels)


def image_url_of(value) -> str:
    """A bare string or an {"url": ...} object, as OpenAI clients send either."""
    return value if isinstance(value, str) else value.url
