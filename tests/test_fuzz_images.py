"""Fuzzing the image loader: whatever the bytes, decode_image returns a BGR uint8 image no
larger than MAX_PIXELS, of the size its header claimed, or raises ImageError. Nothing else.

The inputs are arbitrary bytes, bytes behind each format's magic, and small valid images of
every accepted format mutated (bytes flipped, cut, inserted or removed, header fields
overwritten with large values). FACEGATE_FUZZ_EXAMPLES sets the examples per test: 200 by
default so the suite stays fast, 10000 under `make fuzz`.
"""

from __future__ import annotations

import os
import re
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from facegate.vision.images import MAX_PIXELS, ImageError, decode_image, header_size

EXAMPLES = int(os.environ.get("FACEGATE_FUZZ_EXAMPLES", "200"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    database=None,  # no .hypothesis/ folder in the repo; a failure prints its example
)


# The most one decode may add to the memory in use: a 40-megapixel image is 120 MB of BGR,
# plus the decoder's own buffers. (A 150-byte PNG declaring a 2 GB chunk once cost 2 GB.)
MAX_MEMORY_RISE_MB = 1024
_STATUS, _CLEAR_REFS = Path("/proc/self/status"), Path("/proc/self/clear_refs")


def reset_peak_memory() -> int | None:
    """Resets the process's peak resident size (Linux) and returns it in MB, else None."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return None
    return peak_memory()


def peak_memory() -> int:
    line = next(x for x in _STATUS.read_text().splitlines() if x.startswith("VmHWM:"))
    return int(line.split()[1]) // 1024


def check(data: bytes) -> str:
    """The property every input must satisfy; returns the outcome, for the statistics that
    `pytest --hypothesis-show-statistics` reports."""
    before = reset_peak_memory()
    try:
        img = decode_image(data, "fuzz")
    except ImageError as exc:
        error: ImageError | None = exc
    else:
        error = None
    if before is not None:
        assert peak_memory() - before < MAX_MEMORY_RISE_MB, "a huge allocation"
    claimed = header_size(data)
    if error is not None:
        if "megapixel" in str(error):  # refused from the header, not after decoding
            assert claimed is not None and claimed[0] * claimed[1] > MAX_PIXELS
        reason = str(error).removeprefix("fuzz: ").split(";")[0]
        return re.sub(r"\d+", "N", f"{type(error).__name__}: {reason}")
    assert isinstance(img, np.ndarray)
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    height, width = img.shape[:2]
    assert 0 < height * width <= MAX_PIXELS
    # The size checked before decoding is the size decoded (either way round: EXIF rotation).
    assert claimed is not None and sorted(claimed) == sorted((width, height))
    return "decoded"


# --- Valid 64x48 sources of every accepted format and header variant ---


def picture(channels: int) -> np.ndarray:
    """A gradient with some grain: compresses like a photo, not like noise or a flat colour."""
    y, x = np.indices((48, 64))
    grain = np.random.default_rng(11).integers(0, 32, (48, 64, channels))
    return np.asarray(((x * 4 + y * 2)[:, :, None] + grain) % 256, np.uint8)


def encode(ext: str, img: np.ndarray, *params: int) -> bytes:
    ok, buf = cv2.imencode(ext, img, list(params))
    assert ok
    return buf.tobytes()


def animation(ext: str) -> bytes:
    """Three frames: an animated WebP (VP8X canvas, ANMF frames) or PNG (acTL, fcTL, fdAT)."""
    anim = cv2.Animation()
    anim.frames = [np.roll(ALPHA, 8 * i, axis=1) for i in range(3)]
    anim.durations = [100, 100, 100]
    ok, buf = cv2.imencodeanimation(ext, anim)
    assert ok
    return bytes(buf)


def le(value: int, size: int) -> bytes:
    return value.to_bytes(size, "little")


def bmp_core(img: np.ndarray) -> bytes:
    """24-bit BMP with the 12-byte BITMAPCOREHEADER (OpenCV reads it, never writes it)."""
    height, width = img.shape[:2]
    stride = (width * 3 + 3) & ~3
    rows = b"".join(img[y].tobytes().ljust(stride, b"\0") for y in reversed(range(height)))
    header = b"BM" + le(26 + len(rows), 4) + bytes(4) + le(26, 4)
    return header + le(12, 4) + le(width, 2) + le(height, 2) + le(1, 2) + le(24, 2) + rows


def bmp_rle8(grey: np.ndarray) -> bytes:
    """8-bit run-length-encoded BMP with a grey palette, runs of up to 255 pixels."""
    height, width = grey.shape
    runs = bytearray()
    for y in reversed(range(height)):
        x = 0
        while x < width:
            n = 1
            while x + n < width and n < 255 and grey[y, x + n] == grey[y, x]:
                n += 1
            runs += bytes([n, grey[y, x]])
            x += n
        runs += b"\x00\x00"  # end of line
    runs += b"\x00\x01"  # end of bitmap
    palette = b"".join(bytes([v, v, v, 0]) for v in range(256))
    offset = 14 + 40 + len(palette)
    info = le(40, 4) + le(width, 4) + le(height, 4) + le(1, 2) + le(8, 2) + le(1, 4)
    info += le(len(runs), 4) + bytes(16)
    return b"BM" + le(offset + len(runs), 4) + bytes(4) + le(offset, 4) + info + palette + runs


def top_down(bmp: bytes) -> bytes:
    return bmp[:22] + (-48).to_bytes(4, "little", signed=True) + bmp[26:]


COLOUR, ALPHA, GREY = picture(3), picture(4), picture(1)[:, :, 0]
SOURCES: dict[str, list[bytes]] = {
    "JPEG": [
        encode(".jpg", COLOUR),
        encode(".jpg", COLOUR, cv2.IMWRITE_JPEG_PROGRESSIVE, 1),
        encode(".jpg", GREY, cv2.IMWRITE_JPEG_QUALITY, 50),
    ],
    "PNG": [
        encode(".png", COLOUR),
        encode(".png", ALPHA),
        encode(".png", GREY.astype(np.uint16) * 257),
        animation(".png"),
    ],
    "WebP": [
        encode(".webp", COLOUR, cv2.IMWRITE_WEBP_QUALITY, 80),  # VP8
        encode(".webp", COLOUR, cv2.IMWRITE_WEBP_QUALITY, 101),  # VP8L
        encode(".webp", ALPHA, cv2.IMWRITE_WEBP_QUALITY, 80),  # VP8X
        animation(".webp"),
    ],
    "BMP": [
        encode(".bmp", COLOUR),
        encode(".bmp", ALPHA),  # BITMAPV5HEADER
        encode(".bmp", GREY),  # 8-bit palette
        top_down(encode(".bmp", COLOUR)),
        bmp_core(COLOUR),
        bmp_rle8(GREY // 32 * 32),
    ],
}


def header_fields(data: bytes) -> list[int]:
    """Offsets of the header fields that size something (pixels, chunks, segments, palettes),
    to aim overwrites at."""
    if data.startswith(b"\xff\xd8"):
        sof = max(data.find(b"\xff\xc0"), data.find(b"\xff\xc2"))
        return [4, sof + 2, sof + 5, sof + 7, sof + 9]  # APP0 length; SOF length, size, components
    if data.startswith(b"\x89PNG"):
        return [8, 16, 20, 24, 33]  # IHDR length, width, height, depth; next chunk's length
    if data.startswith(b"RIFF"):
        return [4, 16, 21, 24, 26, 27, 28]  # RIFF size, chunk size, VP8L/VP8X/VP8 sizes
    return [2, 10, 14, 18, 20, 22, 28, 30, 46]  # file size, offset, header size, w, h, bpp, ...


def fix_png_crcs(data: bytes) -> bytes:
    """Recomputes the CRC of every whole PNG chunk, so a changed IHDR passes libpng's check."""
    out, i = bytearray(data), 8
    while i + 12 <= len(out):
        length = int.from_bytes(out[i : i + 4], "big")
        if i + 12 + length > len(out):
            break
        out[i + 8 + length : i + 12 + length] = zlib.crc32(out[i + 4 : i + 8 + length]).to_bytes(
            4, "big"
        )
        i += 12 + length
    return bytes(out)


# --- Strategies ---

LARGE = st.sampled_from(
    [0, 1, 0x7F, 0xFF, 0x3FFF, 0x4000, 0x7FFF, 0xFFFF, 0xFF_FFFF, 2**31 - 1, 2**31, 2**32 - 1]
)


@st.composite
def mutated(draw: st.DrawFn, fmt: str) -> bytes:
    data = bytearray(draw(st.sampled_from(SOURCES[fmt])))
    hot = header_fields(bytes(data))
    for _ in range(draw(st.integers(1, 4))):
        n = len(data)
        # Mostly past the magic bytes (12 covers RIFF....WEBP), so most inputs reach a parser.
        header, rest = st.integers(min(12, n), min(80, n)), st.integers(min(12, n), n)
        at = min(n, draw(st.one_of(st.sampled_from(hot), header, rest, st.integers(0, n))))
        kind = draw(st.sampled_from(["flip", "cut", "field", "insert", "delete"]))
        if kind == "flip" and at < n:
            data[at] ^= draw(st.integers(1, 255))
        elif kind == "cut":
            del data[at:]
        elif kind == "field":
            width = draw(st.sampled_from([1, 2, 3, 4]))
            value = draw(st.one_of(LARGE, st.integers(0, 2**32 - 1))) % 256**width
            order = draw(st.sampled_from(["little", "big"]))
            data[at : at + width] = value.to_bytes(width, order)
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 16))]
    if fmt == "PNG" and draw(st.booleans()):
        return fix_png_crcs(bytes(data))
    return bytes(data)


MAGICS = [
    b"\xff\xd8\xff",
    b"\xff\xd8\xff\xc0",
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR",
    b"RIFF\x00\x10\x00\x00WEBPVP8 ",
    b"RIFF\x00\x10\x00\x00WEBPVP8L",
    b"RIFF\x00\x10\x00\x00WEBPVP8X",
    b"BM",
    b"BM\x00\x10\x00\x00\x00\x00\x00\x00\x1a\x00\x00\x00\x0c\x00\x00\x00",
    b"BM\x00\x10\x00\x00\x00\x00\x00\x00\x36\x00\x00\x00\x28\x00\x00\x00",
    b"II*\x00",
    b"GIF89a",
    b"P6\n",
]


# --- Targets ---


@FUZZ
@given(st.binary(max_size=4096))
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    event(check(data))


@FUZZ
@given(st.sampled_from(MAGICS), st.binary(max_size=512))
def test_fuzz_bytes_behind_a_magic(magic: bytes, rest: bytes) -> None:
    event(check(magic + rest))


@pytest.mark.parametrize("fmt", SOURCES)
@FUZZ
@given(data=st.data())
def test_fuzz_mutated_images(fmt: str, data: st.DataObject) -> None:
    event(check(data.draw(mutated(fmt))))


def test_the_sources_are_valid() -> None:
    for images in SOURCES.values():
        for source in images:
            assert check(source) == "decoded"
            assert header_size(source) == (64, 48)
            assert decode_image(source).shape == (48, 64, 3)
