"""Reading images: real JPEGs decode; every unusable file fails with an ImageError naming it."""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from facegate.vision.images import (
    ACCEPTED_FORMATS,
    MAX_PIXELS,
    ImageError,
    UnsupportedImageError,
    decode_image,
    header_size,
    image_format,
    read_image,
)


@pytest.mark.shared_data
def test_real_jpeg_decodes_to_bgr(deepface: Path) -> None:
    path = deepface / "img1.jpg"
    img = read_image(path)
    assert img.dtype == np.uint8
    assert img.ndim == 3
    assert img.shape[2] == 3
    assert min(img.shape[:2]) > 100
    # The same picture as OpenCV reads it directly.
    reference = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert reference is not None
    assert img.shape == reference.shape
    assert np.array_equal(img, reference)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.jpg"
    with pytest.raises(ImageError, match="no such file") as info:
        read_image(path)
    assert str(path) in str(info.value)


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="directory") as info:
        read_image(tmp_path)
    assert str(tmp_path) in str(info.value)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads anything")
def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "secret.jpg"
    path.write_bytes(b"\xff\xd8")
    path.chmod(0)
    with pytest.raises(ImageError, match="permission denied") as info:
        read_image(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty file"),
        (np.random.default_rng(0).bytes(4096), "not a readable image"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, "cannot read the image size"),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 64, "truncated JPEG"),
    ],
    ids=["empty", "random-bytes", "png-header-only", "jpeg-header-only"],
)
def test_unusable_bytes_in_a_file(tmp_path: Path, data: bytes, message: str) -> None:
    path = tmp_path / "broken.jpg"
    path.write_bytes(data)
    with pytest.raises(ImageError, match=message) as info:
        read_image(path)
    assert str(path) in str(info.value)


@pytest.mark.shared_data
@pytest.mark.parametrize("name", ["img2.jpg", "img1.jpg"])  # img1 carries an EXIF thumbnail
@pytest.mark.parametrize("fraction", [0.5, 0.9])
def test_truncated_jpeg(deepface: Path, tmp_path: Path, name: str, fraction: float) -> None:
    data = (deepface / name).read_bytes()
    path = tmp_path / f"cut-{name}"
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(ImageError, match=r"truncated JPEG|not a readable image") as info:
        read_image(path)
    assert str(path) in str(info.value)


def test_decode_names_the_source() -> None:
    with pytest.raises(ImageError, match=r"^upload\.jpg: empty file"):
        decode_image(b"", "upload.jpg")


def test_png_round_trips(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    original = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    path = tmp_path / "noise.png"
    assert cv2.imwrite(str(path), original)
    assert np.array_equal(read_image(path), original)
    assert np.array_equal(read_image(str(path)), original)  # str paths too


def test_grey_png_decodes_to_three_channels(tmp_path: Path) -> None:
    path = tmp_path / "grey.png"
    assert cv2.imwrite(str(path), np.full((10, 20), 77, np.uint8))
    img = read_image(path)
    assert img.shape == (10, 20, 3)
    assert (img == 77).all()


def black_png(width: int, height: int) -> bytes:
    ok, buf = cv2.imencode(".png", np.zeros((height, width), np.uint8))
    assert ok
    return buf.tobytes()


def test_image_over_the_pixel_limit_is_refused(tmp_path: Path) -> None:
    width, height = 8000, 5001
    assert width * height > MAX_PIXELS
    path = tmp_path / "huge.png"
    path.write_bytes(black_png(width, height))
    with pytest.raises(ImageError, match="megapixel") as info:
        read_image(path)
    assert str(path) in str(info.value)
    assert f"{width}x{height}" in str(info.value)


def test_image_at_the_pixel_limit_is_accepted() -> None:
    width, height = 8000, 5000
    assert width * height == MAX_PIXELS
    assert decode_image(black_png(width, height)).shape == (height, width, 3)


def test_header_size_reads_png_and_jpeg_without_decoding(deepface: Path, tmp_path: Path) -> None:
    data = (deepface / "img1.jpg").read_bytes()
    img = decode_image(data)
    assert header_size(data) == (img.shape[1], img.shape[0])
    ok, png = cv2.imencode(".png", np.zeros((7, 11, 3), np.uint8))
    assert ok and header_size(png.tobytes()) == (11, 7)
    assert header_size(b"GIF89a....") is None


def test_a_decompression_bomb_is_refused_before_decoding() -> None:
    # A PNG header that claims 100000 x 100000 pixels: refused from the header alone.
    ok, png = cv2.imencode(".png", np.zeros((2, 2, 3), np.uint8))
    assert ok
    data = bytearray(png.tobytes())
    data[16:24] = (100_000).to_bytes(4, "big") + (100_000).to_bytes(4, "big")
    with pytest.raises(ImageError, match="megapixel"):
        decode_image(bytes(data), "bomb.png")


# --- One rule for every format: magic bytes, then the header's pixel count, then decoding ---

SEND = "send JPEG, PNG, WebP or BMP"
BIG = 16383  # 16383 x 16383 = 268 megapixels: ~800 MB once decoded to BGR


def noise(channels: int = 3) -> np.ndarray:
    return np.random.default_rng(7).integers(0, 256, (48, 64, channels), dtype=np.uint8)


def encode(ext: str, img: np.ndarray, *params: int) -> bytes:
    ok, buf = cv2.imencode(ext, img, list(params))
    assert ok
    return buf.tobytes()


def core_bmp(img: np.ndarray) -> bytes:
    """A 24-bit BMP with the 12-byte BITMAPCOREHEADER, which OpenCV reads but never writes."""
    height, width = img.shape[:2]
    stride = (width * 3 + 3) & ~3
    rows = b"".join(img[y].tobytes().ljust(stride, b"\0") for y in reversed(range(height)))
    le = int.to_bytes
    file_header = b"BM" + le(26 + len(rows), 4, "little") + bytes(4) + le(26, 4, "little")
    core = le(12, 4, "little") + le(width, 2, "little") + le(height, 2, "little")
    return file_header + core + le(1, 2, "little") + le(24, 2, "little") + rows


def animation(ext: str) -> bytes:
    anim = cv2.Animation()
    anim.frames = [np.roll(noise(4), 8 * i, axis=1) for i in range(3)]
    anim.durations = [100, 100, 100]
    ok, buf = cv2.imencodeanimation(ext, anim)
    assert ok
    return bytes(buf)


def top_down_bmp(img: np.ndarray) -> bytes:
    data = bytearray(encode(".bmp", img))
    data[22:26] = (-img.shape[0]).to_bytes(4, "little", signed=True)
    return bytes(data)


# Small real images of every accepted format and its header variants, all 64x48.
GOOD: dict[str, tuple[str, bytes]] = {
    "jpeg": ("JPEG", encode(".jpg", noise())),
    "jpeg-progressive": ("JPEG", encode(".jpg", noise(), cv2.IMWRITE_JPEG_PROGRESSIVE, 1)),
    "png": ("PNG", encode(".png", noise())),
    "png-16bit-grey": ("PNG", encode(".png", noise(1).astype(np.uint16) * 257)),
    "png-animated": ("PNG", animation(".png")),
    "webp-lossy": ("WebP", encode(".webp", noise(), cv2.IMWRITE_WEBP_QUALITY, 80)),
    "webp-lossless": ("WebP", encode(".webp", noise(), cv2.IMWRITE_WEBP_QUALITY, 101)),
    "webp-extended": ("WebP", encode(".webp", noise(4), cv2.IMWRITE_WEBP_QUALITY, 80)),
    "webp-animated": ("WebP", animation(".webp")),
    "bmp": ("BMP", encode(".bmp", noise())),
    "bmp-v5-alpha": ("BMP", encode(".bmp", noise(4))),
    "bmp-top-down": ("BMP", top_down_bmp(noise())),
    "bmp-core": ("BMP", core_bmp(noise())),
}


def test_the_sample_images_use_the_header_they_are_named_after() -> None:
    assert GOOD["webp-lossy"][1][12:16] == b"VP8 "
    assert GOOD["webp-lossless"][1][12:16] == b"VP8L"
    assert GOOD["webp-extended"][1][12:16] == b"VP8X"
    assert GOOD["webp-animated"][1][12:16] == b"VP8X" and b"ANMF" in GOOD["webp-animated"][1]
    assert b"acTL" in GOOD["png-animated"][1]
    assert GOOD["bmp"][1][14] == 40 and GOOD["bmp-v5-alpha"][1][14] == 124
    assert GOOD["bmp-core"][1][14] == 12
    assert GOOD["jpeg-progressive"][1].find(b"\xff\xc2") > 0


@pytest.mark.parametrize("source", GOOD)
def test_good_images_decode_exactly_as_opencv_does(source: str) -> None:
    fmt, data = GOOD[source]
    assert image_format(data) == fmt
    assert fmt in ACCEPTED_FORMATS
    assert header_size(data) == (64, 48)
    reference = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert reference is not None
    img = decode_image(data, "x")
    assert img.dtype == np.uint8 and img.shape == reference.shape == (48, 64, 3)
    assert img.tobytes() == reference.tobytes()


def test_accepted_formats() -> None:
    assert ACCEPTED_FORMATS == ("JPEG", "PNG", "WebP", "BMP")


def _set(data: bytes, at: int, value: bytes) -> bytes:
    return data[:at] + value + data[at + len(value) :]


def _forge_png(data: bytes, width: int, height: int) -> bytes:
    data = _set(data, 16, width.to_bytes(4, "big") + height.to_bytes(4, "big"))
    return _set(data, 29, zlib.crc32(data[12:29]).to_bytes(4, "big"))  # a valid IHDR CRC


def _forge_jpeg(data: bytes, width: int, height: int) -> bytes:
    sof = data.find(b"\xff\xc0")
    assert sof > 0
    return _set(data, sof + 5, height.to_bytes(2, "big") + width.to_bytes(2, "big"))


def _forge_vp8(data: bytes, width: int, height: int) -> bytes:
    return _set(data, 26, width.to_bytes(2, "little") + height.to_bytes(2, "little"))


def _forge_vp8l(data: bytes, width: int, height: int) -> bytes:
    bits = int.from_bytes(data[21:25], "little") & ~0x0FFF_FFFF
    bits |= (width - 1) | (height - 1) << 14
    return _set(data, 21, bits.to_bytes(4, "little"))


def _forge_vp8x(data: bytes, width: int, height: int) -> bytes:
    return _set(data, 24, (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little"))


def _forge_bmp_info(data: bytes, width: int, height: int) -> bytes:
    size = width.to_bytes(4, "little", signed=True) + (-height).to_bytes(4, "little", signed=True)
    return _set(data, 18, size)  # a negative height: rows stored top-down


def _forge_bmp_core(data: bytes, width: int, height: int) -> bytes:
    return _set(data, 18, width.to_bytes(2, "little") + height.to_bytes(2, "little"))


FORGERS: dict[str, tuple[str, Callable[[bytes, int, int], bytes]]] = {
    "png": ("png", _forge_png),
    "jpeg": ("jpeg", _forge_jpeg),
    "webp-lossy": ("webp-lossy", _forge_vp8),
    "webp-lossless": ("webp-lossless", _forge_vp8l),
    "webp-extended": ("webp-extended", _forge_vp8x),
    "bmp-info-top-down": ("bmp", _forge_bmp_info),
    "bmp-core": ("bmp-core", _forge_bmp_core),
}


@pytest.fixture
def no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fails the test if the bytes reach OpenCV's decoder."""

    def refuse(*args: object) -> None:
        raise AssertionError("cv2.imdecode was called")

    monkeypatch.setattr(cv2, "imdecode", refuse)


@pytest.mark.parametrize("kind", FORGERS)
def test_the_forgers_change_only_the_size(kind: str) -> None:
    source, forge = FORGERS[kind]
    data = forge(GOOD[source][1], 63, 47)
    assert header_size(data) == (63, 47)
    assert decode_image(forge(GOOD[source][1], 64, 48)).shape == (48, 64, 3)


@pytest.mark.parametrize("kind", FORGERS)
@pytest.mark.usefixtures("no_decoding")
def test_a_forged_header_over_the_limit_is_refused_before_decoding(kind: str) -> None:
    source, forge = FORGERS[kind]
    data = forge(GOOD[source][1], BIG, BIG)
    assert len(data) < 20_000
    assert header_size(data) == (BIG, BIG)
    with pytest.raises(ImageError, match=rf"^bomb: {BIG}x{BIG} is over the 40 megapixel limit$"):
        decode_image(data, "bomb")
    with pytest.raises(ImageError) as info:
        decode_image(data, "bomb")
    assert not isinstance(info.value, UnsupportedImageError)


def _tem_then(sof_width: int, sof_height: int) -> bytes:
    # A TEM marker (no length field) right after SOI, which libjpeg skips.
    data = _forge_jpeg(GOOD["jpeg"][1], sof_width, sof_height)
    return data[:2] + b"\xff\x01" + data[2:]


@pytest.mark.parametrize(
    "insert",
    [
        pytest.param(lambda d: d[:2] + b"\xff\x01" + d[2:], id="TEM-marker"),
        pytest.param(lambda d: d[:2] + b"\xff\xff\xff" + d[2:], id="fill-bytes"),
        pytest.param(lambda d: d[:158] + b"\xff\xd3" + d[158:], id="RST-marker"),
        pytest.param(lambda d: d[:158] + b"xyz" + d[158:], id="stray-bytes"),
    ],
)
def test_the_jpeg_marker_walk_agrees_with_libjpeg(insert: Callable[[bytes], bytes]) -> None:
    original = GOOD["jpeg"][1]
    assert original[158:160] == b"\xff\xc0"  # the frame header of the sample
    data = insert(original)
    reference = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert reference is not None and reference.shape == (48, 64, 3)
    assert header_size(data) == (64, 48)
    assert decode_image(data).tobytes() == reference.tobytes()


@pytest.mark.usefixtures("no_decoding")
def test_a_jpeg_bomb_behind_a_marker_without_length_is_refused() -> None:
    with pytest.raises(ImageError, match="megapixel"):
        decode_image(_tem_then(BIG, BIG), "bomb.jpg")


def _grey() -> np.ndarray:
    return noise(1)[:, :, 0]


REFUSED: dict[str, tuple[str, bytes]] = {
    "tiff": ("TIFF", encode(".tif", noise())),
    "tiff-big-endian": ("TIFF", b"MM\x00*\x00\x00\x00\x08" + bytes(64)),
    "bigtiff": ("TIFF", b"II+\x00\x08\x00\x00\x00" + bytes(64)),
    "gif": ("GIF", encode(".gif", noise())),
    "ppm": ("PPM/PGM/PBM", encode(".ppm", noise())),
    "pgm": ("PPM/PGM/PBM", encode(".pgm", _grey())),
    "pbm": ("PPM/PGM/PBM", encode(".pbm", _grey())),
    "pam": ("PPM/PGM/PBM", encode(".pam", noise())),
    "pfm": ("PFM", encode(".pfm", noise().astype(np.float32))),
    "jpeg-2000": ("JPEG 2000", encode(".jp2", noise())),
    "jpeg-2000-codestream": ("JPEG 2000", b"\xff\x4f\xff\x51" + bytes(64)),
    "jpeg-xl": ("JPEG XL", b"\xff\x0a" + bytes(64)),
    "openexr": ("OpenEXR", b"v/1\x01\x02\x00\x00\x00" + bytes(64)),
    "radiance-hdr": ("Radiance HDR", encode(".hdr", noise().astype(np.float32))),
    "psd": ("PSD", b"8BPS\x00\x01" + bytes(64)),
    "sun-raster": ("Sun raster", encode(".ras", noise())),
    "avif": ("AVIF", encode(".avif", noise())),
}


@pytest.mark.parametrize("kind", REFUSED)
def test_other_formats_are_refused_by_name(kind: str) -> None:
    fmt, data = REFUSED[kind]
    assert image_format(data) == fmt
    assert header_size(data) is None
    with pytest.raises(UnsupportedImageError) as info:
        decode_image(data, "x.img")
    assert str(info.value) == f"x.img: {fmt} images are not accepted; {SEND}"


@pytest.mark.parametrize("kind", ["tiff", "gif", "ppm", "jpeg-2000", "radiance-hdr", "avif"])
@pytest.mark.usefixtures("no_decoding")
def test_formats_opencv_decodes_are_still_refused_without_decoding(kind: str) -> None:
    with pytest.raises(UnsupportedImageError, match="images are not accepted"):
        decode_image(REFUSED[kind][1], "x")


def test_opencv_could_decode_the_refused_samples() -> None:
    for kind in ["tiff", "gif", "ppm", "jpeg-2000", "radiance-hdr", "sun-raster", "avif"]:
        decoded = cv2.imdecode(np.frombuffer(REFUSED[kind][1], np.uint8), cv2.IMREAD_COLOR)
        assert decoded is not None and decoded.shape == (48, 64, 3), kind


@pytest.mark.parametrize(
    "data",
    [
        np.random.default_rng(3).bytes(4096),
        b"this is not an image at all",
        b"<html><body>hello</body></html>",
        b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(32),
        b"\xff\xd8\x00\x00" + bytes(32),  # SOI, then no marker
        b"PNG" + bytes(32),
        b"P9\n" + bytes(32),
        bytes(100),
        b"B",
    ],
    ids=["random", "text", "html", "wave", "soi-only", "png-word", "p9", "zeros", "one-byte"],
)
@pytest.mark.usefixtures("no_decoding")
def test_unrecognised_bytes_are_unsupported(data: bytes) -> None:
    assert image_format(data) is None
    with pytest.raises(UnsupportedImageError) as info:
        decode_image(data, "up.jpg")
    assert str(info.value) == f"up.jpg: not a readable image (unrecognised format); {SEND}"


# The length of the magic and of the header that carries the size in each sample.
HEADER_SPAN = {
    "png": (8, 24),
    "png-16bit-grey": (8, 24),
    "png-animated": (8, 24),
    "webp-lossy": (12, 30),
    "webp-lossless": (12, 25),
    "webp-extended": (12, 30),
    "webp-animated": (12, 30),
    "bmp": (2, 26),
    "bmp-v5-alpha": (2, 26),
    "bmp-top-down": (2, 26),
    "bmp-core": (2, 22),
    "jpeg": (3, 158 + 9),
    "jpeg-progressive": (3, GOOD["jpeg-progressive"][1].find(b"\xff\xc2") + 9),
}


@pytest.mark.parametrize("source", GOOD)
def test_every_truncation_is_an_image_error(source: str) -> None:
    fmt, data = GOOD[source]
    magic, header = HEADER_SPAN[source]
    assert header_size(data[:header]) == (64, 48)
    for cut in range(1, len(data)):
        if cut > 300 and cut % 97:
            continue  # every cut through the headers, a sample of the rest
        part = data[:cut]
        with pytest.raises(ImageError) as info:
            decode_image(part, "cut")
        message = str(info.value)
        if cut < magic:
            assert isinstance(info.value, UnsupportedImageError), (cut, message)
        elif fmt == "JPEG":
            assert "truncated JPEG" in message, (cut, message)
        elif cut < header:
            assert message == f"cut: cannot read the image size from its {fmt} header", cut
        else:
            assert not isinstance(info.value, UnsupportedImageError), (cut, message)


@pytest.mark.parametrize("source", ["jpeg", "jpeg-progressive"])
def test_a_jpeg_cut_inside_its_headers_has_no_size(source: str) -> None:
    data = GOOD[source][1]
    header = HEADER_SPAN[source][1]
    for cut in range(3, header):
        assert header_size(data[:cut]) is None, cut
    for cut in range(3, header - 2):  # (the 2 bytes added must not become the frame width)
        with pytest.raises(ImageError, match=r"^x: cannot read the image size from its JPEG"):
            decode_image(data[:cut] + b"\xff\xd9", "x")  # an end marker, to pass that check


def _jpeg_segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big") + payload


UNREADABLE_SIZE: dict[str, bytes] = {
    "png-zero-width": _forge_png(GOOD["png"][1], 0, 48),
    "png-zero-height": _forge_png(GOOD["png"][1], 64, 0),
    "png-ihdr-not-first": _set(GOOD["png"][1], 12, b"tEXt"),
    "jpeg-zero-height": _forge_jpeg(GOOD["jpeg"][1], 64, 0),
    "jpeg-zero-width": _forge_jpeg(GOOD["jpeg"][1], 0, 48),
    "jpeg-scan-before-frame": b"\xff\xd8" + _jpeg_segment(0xDA, bytes(10)) + b"\xff\xd9",
    "jpeg-end-before-frame": b"\xff\xd8\xff\xd9" + GOOD["jpeg"][1][2:],
    "jpeg-segment-length-1": b"\xff\xd8\xff\xe0\x00\x01" + bytes(30) + b"\xff\xd9",
    "vp8-no-start-code": _set(GOOD["webp-lossy"][1], 23, b"\0\0\0"),
    "vp8-zero-size": _forge_vp8(GOOD["webp-lossy"][1], 0, 0),
    "vp8l-no-signature": _set(GOOD["webp-lossless"][1], 20, b"\0"),
    "webp-unknown-first-chunk": _set(GOOD["webp-lossy"][1], 12, b"ALPH"),
    "webp-raw-bitstream": b"RIFF\x20\x00\x00\x00WEBP" + GOOD["webp-lossless"][1][20:],
    "bmp-negative-width": _forge_bmp_info(GOOD["bmp"][1], -64, 48),
    "bmp-zero-height": _forge_bmp_info(GOOD["bmp"][1], 64, 0),
    "bmp-zero-width-core": _forge_bmp_core(GOOD["bmp-core"][1], 0, 48),
    "bmp-header-size-20": _set(GOOD["bmp"][1], 14, b"\x14"),
    "bmp-header-size-negative": _set(GOOD["bmp"][1], 14, b"\x28\x00\x00\x80"),
}


@pytest.mark.parametrize("kind", UNREADABLE_SIZE)
@pytest.mark.usefixtures("no_decoding")
def test_a_header_without_a_usable_size_is_refused_before_decoding(kind: str) -> None:
    data = UNREADABLE_SIZE[kind]
    fmt = image_format(data)
    assert fmt in ACCEPTED_FORMATS
    with pytest.raises(ImageError) as info:
        decode_image(data, "x")
    assert str(info.value) == f"x: cannot read the image size from its {fmt} header"


def test_read_image_applies_the_same_rule(tmp_path: Path) -> None:
    tiff = tmp_path / "scan.tif"
    tiff.write_bytes(REFUSED["tiff"][1])
    with pytest.raises(UnsupportedImageError, match=f"^{tiff}: TIFF images are not accepted"):
        read_image(tiff)
    bomb = tmp_path / "bomb.webp"
    bomb.write_bytes(_forge_vp8l(GOOD["webp-lossless"][1], BIG, BIG))
    with pytest.raises(ImageError, match=f"^{bomb}: {BIG}x{BIG} is over the 40 megapixel"):
        read_image(bomb)
    for source in ["webp-lossy", "bmp-core"]:
        path = tmp_path / source
        path.write_bytes(GOOD[source][1])
        assert read_image(path).tobytes() == decode_image(GOOD[source][1]).tobytes()


def _png_chunk(tag: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(tag + payload).to_bytes(4, "big")
    return len(payload).to_bytes(4, "big") + tag + payload + crc


def _declare_length(data: bytes, at: int, length: int) -> bytes:
    return _set(data, at, length.to_bytes(4, "big"))


PNG = GOOD["png"][1]
assert PNG[37:41] == b"IDAT"  # the first chunk after IHDR starts at byte 33
PNG_CHUNK_BOMBS = {
    # OpenCV allocates a chunk's declared length before reading it (2 GB for the first two).
    "idat-claims-2GB": _declare_length(PNG[:2000], 33, 2**31 - 1),
    "text-claims-2GB": PNG[:33] + _declare_length(_png_chunk(b"tEXt", b"a\0b"), 0, 2**31 - 1),
    "idat-claims-more-than-the-file": _declare_length(PNG, 33, len(PNG)),
    "cut-inside-a-chunk": PNG[: len(PNG) // 2],
    "cut-inside-a-chunk-header": PNG[:41],
}


@pytest.mark.parametrize("kind", PNG_CHUNK_BOMBS)
@pytest.mark.usefixtures("no_decoding")
def test_a_png_chunk_running_past_the_end_is_refused_before_decoding(kind: str) -> None:
    data = PNG_CHUNK_BOMBS[kind]
    assert len(data) < 10_000 and header_size(data) == (64, 48)
    with pytest.raises(ImageError) as info:
        decode_image(data, "p.png")
    assert str(info.value) == "p.png: truncated PNG (a chunk runs past the end of the file)"


def test_a_png_with_bytes_after_its_end_chunk_still_decodes() -> None:
    data = PNG + b"\xff\xff\xff\xf0IDAT trailing bytes"
    assert decode_image(data).tobytes() == decode_image(PNG).tobytes()
    extra_chunk = PNG[:33] + _png_chunk(b"tEXt", b"Comment\0hello") + PNG[33:]
    assert decode_image(extra_chunk).tobytes() == decode_image(PNG).tobytes()


@pytest.mark.parametrize(("segments", "readable"), [(50, True), (1000, False)])
def test_comment_segments_before_the_jpeg_frame_header(segments: int, readable: bool) -> None:
    data = GOOD["jpeg"][1]
    data = data[:2] + _jpeg_segment(0xFE, b"hi") * segments + data[2:]
    if readable:
        assert decode_image(data).tobytes() == decode_image(GOOD["jpeg"][1]).tobytes()
    else:  # a walk that long is refused rather than spent time on
        with pytest.raises(ImageError, match="cannot read the image size from its JPEG header"):
            decode_image(data)
