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


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG or JPEG header without decoding, else None.

    Lets a decompression bomb (a tiny file that decodes to gigapixels) be refused before
    OpenCV allocates it."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if data[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        # SOF0..SOF15 carry the frame size; C4 (DHT), C8 (JPG) and CC (DAC) do not.
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height = int.from_bytes(data[i + 5 : i + 7], "big")
            width = int.from_bytes(data[i + 7 : i + 9], "big")
            return width, height
        i += 2 + length
    return None


def _check_pixels(width: int, height: int, name: str) -> None:
    if width * height > MAX_PIXELS:
        raise ImageError(
            f"{name}: {width}x{height} is over the {MAX_PIXELS // 1_000_000} megapixel limit"
        )


def decode_image(data: bytes, name: str = "image") -> ImageArray:
    """Decode JPEG/PNG/... bytes to a BGR array; refuses empty, corrupt and huge images."""
    if not data:
        raise ImageError(f"{name}: empty file")
    if data[:2] == b"\xff\xd8" and data.rfind(b"\xff\xd9") < 2:
        # OpenCV decodes a truncated JPEG into a half-grey picture without failing.
        raise ImageError(f"{name}: truncated JPEG (no end-of-image marker)")
    size = header_size(data)
    if size is not None:
        _check_pixels(*size, name)
    buf = np.frombuffer(data, np.uint8)
    try:
        decoded = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    except cv2.error:
        decoded = None
    if decoded is None:
        raise ImageError(f"{name}: not a readable image (corrupt or unsupported format)")
    img = np.asarray(decoded, np.uint8)
    _check_pixels(img.shape[1], img.shape[0], name)
    return img
