"""Reading images from files and bytes, with one clear error per failure."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from facegate.face import ImageArray

MAX_PIXELS = 40_000_000


class ImageError(ValueError):
    """An image that cannot be used; the message says why, without a traceback."""


def read_image(path: str | Path) -> ImageArray:
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a directory, not an image") from None
    except PermissionError:
        raise ImageError(f"{path}: permission denied") from None
    except OSError as exc:
        raise ImageError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return decode_image(data, str(path))


def decode_image(data: bytes, name: str = "image") -> ImageArray:
    """Decode JPEG/PNG/... bytes to a BGR array; refuses empty, corrupt and huge images."""
    if not data:
        raise ImageError(f"{name}: empty file")
    if data[:2] == b"\xff\xd8" and data.rfind(b"\xff\xd9") < 2:
        # OpenCV decodes a truncated JPEG into a half-grey picture without failing.
        raise ImageError(f"{name}: truncated JPEG (no end-of-image marker)")
    buf = np.frombuffer(data, np.uint8)
    try:
        img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    except cv2.error:
        img = None
    if img is None:
        raise ImageError(f"{name}: not a readable image (corrupt or unsupported format)")
    h, w = img.shape[:2]
    if h * w > MAX_PIXELS:
        raise ImageError(f"{name}: {w}x{h} is over the {MAX_PIXELS // 1_000_000} megapixel limit")
    result: ImageArray = img
    return result
