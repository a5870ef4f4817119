"""Reading images from files and bytes: one decoding path, one clear error per failure.

Every upload and every file goes through :func:`decode_image` (:func:`read_image` reads the
file, then calls it), which applies one rule:

1. The format is taken from the magic bytes, never from the name or the content type, and
   only JPEG, PNG, WebP and BMP are accepted. Anything else, even a format OpenCV could
   decode (TIFF, GIF, PPM, JPEG 2000, ...), is an :class:`UnsupportedImageError`.
2. The pixel size is read from that format's header, without decoding. A header that gives
   no usable size (truncated, forged, zero or negative) and a size over :data:`MAX_PIXELS`
   are refused before OpenCV sees the bytes, so a decompression bomb (a few kilobytes that
   decode to gigapixels) is never allocated. A JPEG without its end marker and a PNG with
   a chunk running past the end of the file (OpenCV would allocate the chunk's declared
   length: gigabytes) are refused as truncated.
3. Only then ``cv2.imdecode(..., IMREAD_COLOR)`` decodes it, and the decoded shape is
   checked against the limit once more.

Each header parser reads what the decoder will read (libjpeg's marker walk, the first
chunk of a WebP, OpenCV's BMP header rules), so the size checked is the size allocated;
tests/test_fuzz_images.py checks that on mutated files of every accepted format.

The one encoder is :func:`thumbnail_jpeg`: a face's aligned crop as the JPEG stored and shown
as its thumbnail.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from facegate.vision.face import Face, ImageArray

MAX_PIXELS = 40_000_000
ACCEPTED_FORMATS = ("JPEG", "PNG", "WebP", "BMP")
_SEND = "send JPEG, PNG, WebP or BMP"
_UNRECOGNISED = "not a readable image (unrecognised format)"


class ImageError(ValueError):
    """An image that cannot be used; the message says why, without a traceback."""


class UnsupportedImageError(ImageError):
    """Bytes that are not in an accepted format (a server answers 415, not 400)."""


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


# Formats recognised only to name them when they are refused.
_REFUSED_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"II+\x00", "TIFF"),  # BigTIFF
    (b"MM\x00+", "TIFF"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),  # bare codestream
    (b"\x00\x00\x00\x0cJXL \r\n\x87\n", "JPEG XL"),
    (b"\xff\x0a", "JPEG XL"),
    (b"v/1\x01", "OpenEXR"),
    (b"#?RADIANCE", "Radiance HDR"),
    (b"#?RGBE", "Radiance HDR"),
    (b"8BPS", "PSD"),
    (b"\x59\xa6\x6a\x95", "Sun raster"),
)
# ISO media files ("....ftyp" + brand) that hold a still image.
_HEIF_BRANDS = {b"avif": "AVIF", b"avis": "AVIF", b"heic": "HEIC", b"heix": "HEIC", b"mif1": "HEIF"}


def image_format(data: bytes) -> str | None:
    """The format its magic bytes name: one of ACCEPTED_FORMATS, the name of a refused
    format recognised cheaply ("TIFF", "GIF", ...), or None."""
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    if data.startswith(b"BM"):
        return "BMP"
    for magic, fmt in _REFUSED_MAGIC:
        if data.startswith(magic):
            return fmt
    if data[:1] == b"P" and len(data) >= 3 and data[2] in b" \t\r\n":
        if data[1] in b"1234567":
            return "PPM/PGM/PBM"
        if data[1] in b"Ff":
            return "PFM"
    if data[4:8] == b"ftyp":
        return _HEIF_BRANDS.get(data[8:12])
    return None


def _le(data: bytes, start: int, size: int) -> int:
    return int.from_bytes(data[start : start + size], "little")


def _be(data: bytes, start: int, size: int) -> int:
    return int.from_bytes(data[start : start + size], "big")


_PNG_CHUNK = struct.Struct(">I4s")  # a chunk's length and type


def _png_size(data: bytes) -> tuple[int, int] | None:
    """IHDR, which must be the first chunk: big-endian width then height."""
    if len(data) < 24 or data[12:16] != b"IHDR":
        return None
    return _be(data, 16, 4), _be(data, 20, 4)


def _png_chunks_fit(data: bytes) -> bool:
    """Whether every chunk up to IEND lies inside the file. OpenCV allocates a chunk's
    declared length before reading it: a 150-byte PNG whose IDAT claims 2 GB costs 2 GB."""
    i, end = 8, len(data)
    length: int
    while i + 12 <= end:  # length (4), type (4), data, CRC (4)
        length, kind = _PNG_CHUNK.unpack_from(data, i)
        i += 12 + length
        if kind == b"IEND":
            return i <= end
    return i == end


# SOF0..SOF15 carry the frame size; C4 (DHT), C8 (JPG) and CC (DAC) do not.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# libjpeg's search for the next marker: stray bytes and 0xFF fill bytes are skipped, and so
# are FF 00 (a stuffed zero), TEM and RSTn, which have no length. Possessive: linear time.
_JPEG_NEXT_MARKER = re.compile(
    rb"[^\xff]*+(?:\xff++[\x00\x01\xd0-\xd7][^\xff]*+)*+\xff++([^\x00\x01\xd0-\xd7\xff])"
)
_JPEG_MAX_SEGMENTS = 1000  # before the frame header; real files have a few dozen at most


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """The first SOFn frame header, walking the markers after SOI the way libjpeg does."""
    i = 2
    for _ in range(_JPEG_MAX_SEGMENTS):
        found = _JPEG_NEXT_MARKER.match(data, i)
        if found is None:
            return None
        marker, i = found[1][0], found.end()
        if marker in _JPEG_SOF:
            if i + 7 > len(data):  # length (2), precision (1), height (2), width (2)
                return None
            return _be(data, i + 5, 2), _be(data, i + 3, 2)
        if marker in (0xD8, 0xD9, 0xDA):
            return None  # a second SOI, EOI or a scan before any frame header
        length = _be(data, i, 2)
        if i + 2 > len(data) or length < 2:
            return None
        i += length
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    """The first chunk after RIFF/WEBP: VP8 (lossy), VP8L (lossless) or VP8X (extended),
    whose canvas bounds every frame. Chunk payloads start at byte 20."""
    chunk, size = data[12:16], len(data)
    if chunk == b"VP8 " and size >= 30 and data[23:26] == b"\x9d\x01\x2a":
        return _le(data, 26, 2) & 0x3FFF, _le(data, 28, 2) & 0x3FFF  # 2 top bits: scale hint
    if chunk == b"VP8L" and size >= 25 and data[20] == 0x2F:
        bits = _le(data, 21, 4)  # 14 bits width - 1, 14 bits height - 1
        return (bits & 0x3FFF) + 1, (bits >> 14 & 0x3FFF) + 1
    if chunk == b"VP8X" and size >= 30:
        return _le(data, 24, 3) + 1, _le(data, 27, 3) + 1  # 24 bits each, minus one
    return None


def _bmp_size(data: bytes) -> tuple[int, int] | None:
    """As OpenCV reads it: a 12-byte BITMAPCOREHEADER has unsigned 16-bit sizes; any header
    of 36 bytes or more (BITMAPINFOHEADER and later) signed 32-bit ones, where a negative
    height means top-down rows."""
    header = _le(data, 14, 4) if len(data) >= 18 else 0
    if header == 12 and len(data) >= 22:
        return _le(data, 18, 2), _le(data, 20, 2)
    if 36 <= header < 2**31 and len(data) >= 26:
        width = int.from_bytes(data[18:22], "little", signed=True)
        return width, abs(int.from_bytes(data[22:26], "little", signed=True))
    return None


_HEADER_SIZE: dict[str, Callable[[bytes], tuple[int, int] | None]] = {
    "JPEG": _jpeg_size,
    "PNG": _png_size,
    "WebP": _webp_size,
    "BMP": _bmp_size,
}


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the header of an accepted format without decoding, else None."""
    parse = _HEADER_SIZE.get(image_format(data) or "")
    return parse(data) if parse else None


def _check_pixels(width: int, height: int, name: str) -> None:
    if width * height > MAX_PIXELS:
        raise ImageError(
            f"{name}: {width}x{height} is over the {MAX_PIXELS // 1_000_000} megapixel limit"
        )


def accepted_format(data: bytes, name: str = "image") -> str:
    """The accepted format the magic bytes name, else UnsupportedImageError (step 1)."""
    fmt = image_format(data)
    if fmt not in _HEADER_SIZE:
        what = f"{fmt} images are not accepted" if fmt else _UNRECOGNISED
        raise UnsupportedImageError(f"{name}: {what}; {_SEND}")
    return fmt


def decode_image(data: bytes, name: str = "image") -> ImageArray:
    """Decode JPEG/PNG/WebP/BMP bytes to a BGR array; refuses other formats (with an
    UnsupportedImageError), empty, corrupt and huge images (with an ImageError)."""
    if not data:
        raise ImageError(f"{name}: empty file")
    fmt = accepted_format(data, name)
    parse = _HEADER_SIZE[fmt]
    if fmt == "JPEG" and data.rfind(b"\xff\xd9") < 2:
        # OpenCV decodes a truncated JPEG into a half-grey picture without failing.
        raise ImageError(f"{name}: truncated JPEG (no end-of-image marker)")
    size = parse(data)
    if size is None or min(size) <= 0:
        raise ImageError(f"{name}: cannot read the image size from its {fmt} header")
    _check_pixels(*size, name)
    if fmt == "PNG" and not _png_chunks_fit(data):
        raise ImageError(f"{name}: truncated PNG (a chunk runs past the end of the file)")
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


THUMBNAIL_QUALITY = 90  # JPEG quality of face thumbnails


def thumbnail_jpeg(face: Face) -> bytes | None:
    """The face's aligned crop as a JPEG; None when it has no aligned crop."""
    if face.aligned is None:
        return None
    ok, data = cv2.imencode(".jpg", face.aligned, [cv2.IMWRITE_JPEG_QUALITY, THUMBNAIL_QUALITY])
    return data.tobytes() if ok else None
