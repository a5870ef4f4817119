"""Reading images: real JPEGs decode; every unusable file fails with an ImageError naming it."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from facegate.images import MAX_PIXELS, ImageError, decode_image, read_image


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
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, "not a readable image"),
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
    from facegate.images import header_size

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
