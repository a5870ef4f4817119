"""Alignment: 68 -> 5 points, similarity alignment onto the ArcFace template, crop measures."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import pytest
from insightface.utils.face_align import arcface_dst

from facegate.vision.alignment import (
    ALIGNED_SIZE,
    align,
    brightness,
    crop_box,
    five_points_from_68,
    quality,
    sharpness,
)

# -- five_points_from_68 -----------------------------------------------------------------------


def test_five_points_from_68() -> None:
    rng = np.random.default_rng(3)
    p = rng.uniform(0, 300, (68, 2)).astype(np.float32)
    five = np.array(five_points_from_68(p))
    expected = np.array(
        [
            p[36:42].mean(axis=0),
            p[42:48].mean(axis=0),
            p[30],
            (p[48] + p[60]) / 2,
            (p[54] + p[64]) / 2,
        ]
    )
    np.testing.assert_allclose(five, expected, rtol=0, atol=1e-4)


def test_five_points_accepts_a_flat_array_and_returns_floats() -> None:
    p = np.arange(136, dtype=np.float32)
    five = five_points_from_68(p)
    assert len(five) == 5
    assert all(isinstance(c, float) for pt in five for c in pt)
    assert five[2] == (60.0, 61.0)  # point 30 of the flat (x0, y0, x1, y1, ...) layout


# -- align -------------------------------------------------------------------------------------


def similarity(scale: float, degrees: float, tx: float, ty: float) -> npt.NDArray[np.float64]:
    a = math.radians(degrees)
    c, s = scale * math.cos(a), scale * math.sin(a)
    return np.array([[c, -s, tx], [s, c, ty]])


def dots_image(points: npt.NDArray[np.float64], shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian dots at sub-pixel positions, on black, as a BGR image."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    img = np.zeros(shape, np.float64)
    for x, y in points:
        img = np.maximum(img, np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2)))
    grey = np.round(img * 255).astype(np.uint8)
    return cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)


def centroid_near(grey: np.ndarray, point: npt.NDArray[np.float64], radius: int = 6) -> np.ndarray:
    x0, y0 = (round(float(v)) for v in point)
    win = grey[y0 - radius : y0 + radius + 1, x0 - radius : x0 + radius + 1].astype(np.float64)
    assert win.sum() > 0, f"no dot near {point}"
    yy, xx = np.mgrid[y0 - radius : y0 + radius + 1, x0 - radius : x0 + radius + 1]
    return np.array([(xx * win).sum(), (yy * win).sum()]) / win.sum()


@pytest.mark.parametrize(
    ("scale", "degrees", "tx", "ty"),
    [(1.0, 0.0, 0.0, 0.0), (2.5, 0.0, 150.0, 90.0), (3.0, 20.0, 220.0, 60.0),
     (1.7, -35.0, 90.0, 210.0)],
)  # fmt: skip
def test_align_maps_the_five_landmarks_onto_the_template(
    scale: float, degrees: float, tx: float, ty: float
) -> None:
    m = similarity(scale, degrees, tx, ty)
    template = np.asarray(arcface_dst, np.float64)
    points = template @ m[:, :2].T + m[:, 2]
    frame = dots_image(points, (480, 560), sigma=1.2 * scale)
    landmarks = tuple((float(x), float(y)) for x, y in points)
    crop = align(frame, landmarks)  # type: ignore[arg-type]
    assert crop.shape == (ALIGNED_SIZE, ALIGNED_SIZE, 3)
    assert crop.dtype == np.uint8
    grey = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY)
    for ref in template:
        found = centroid_near(grey, ref)
        assert np.linalg.norm(found - ref) < 1.5, (ref, found)


def test_align_keeps_the_channel_order() -> None:
    m = similarity(2.0, 10.0, 100.0, 80.0)
    template = np.asarray(arcface_dst, np.float64)
    points = template @ m[:, :2].T + m[:, 2]
    frame = np.zeros((400, 400, 3), np.uint8)
    frame[..., 0] = 200  # blue only
    crop = align(frame, tuple((float(x), float(y)) for x, y in points))  # type: ignore[arg-type]
    centre = crop[40:72, 40:72]
    assert (centre[..., 0] == 200).all()
    assert (centre[..., 1:] == 0).all()


# -- crop_box ----------------------------------------------------------------------------------


def test_crop_box_inside_the_frame_is_a_resized_crop() -> None:
    frame = np.zeros((100, 100, 3), np.uint8)
    frame[20:60, 30:70] = (10, 20, 30)
    out = crop_box(frame, (30.0, 20.0, 70.0, 60.0), 64)
    assert out.shape == (64, 64, 3)
    assert (out[2:-2, 2:-2] == (10, 20, 30)).all()


@pytest.mark.parametrize("size", [32, 64, 224])
def test_crop_box_partly_outside_fills_black(size: int) -> None:
    frame = np.full((100, 120, 3), 255, np.uint8)
    # The left half of the box is outside the frame (x < 0), the bottom quarter too (y > 100).
    out = crop_box(frame, (-40.0, 40.0, 40.0, 120.0), size)
    assert out.shape == (size, size, 3)
    assert out.dtype == np.uint8
    half, three_quarters = size // 2, size * 3 // 4
    margin = max(2, size // 16)
    assert (out[:, : half - margin] == 0).all()  # left of x = 0
    assert (out[three_quarters + margin :, :] == 0).all()  # below y = 100
    assert (out[margin : three_quarters - margin, half + margin : -margin] == 255).all()


def test_crop_box_entirely_outside_is_black() -> None:
    frame = np.full((50, 50, 3), 200, np.uint8)
    out = crop_box(frame, (100.0, 100.0, 150.0, 150.0), 16)
    assert out.shape == (16, 16, 3)
    assert not out.any()


# -- sharpness, brightness, quality ------------------------------------------------------------


def test_sharpness_drops_when_blurred() -> None:
    checker = (np.indices((112, 112)).sum(axis=0) // 8 % 2 * 255).astype(np.uint8)
    sharp = cv2.cvtColor(checker, cv2.COLOR_GRAY2BGR)
    blurred = cv2.GaussianBlur(sharp, (0, 0), 3.0)
    assert sharpness(sharp) > 10 * sharpness(blurred)
    assert sharpness(blurred) > 0
    assert sharpness(np.full((112, 112, 3), 128, np.uint8)) == 0.0


@pytest.mark.parametrize("grey", [0, 37, 128, 255])
def test_brightness_of_uniform_grey(grey: int) -> None:
    assert brightness(np.full((112, 112, 3), grey, np.uint8)) == pytest.approx(grey)


def test_brightness_ignores_the_black_border() -> None:
    crop = np.zeros((112, 112, 3), np.uint8)
    crop[16:104, 16:96] = 150
    assert brightness(crop) == pytest.approx(150)


def test_quality_face_px_is_the_shorter_box_side() -> None:
    crop = np.full((112, 112, 3), 90, np.uint8)
    q = quality((10.0, 20.0, 110.0, 80.0), crop)
    assert q.face_px == 60.0
    assert q.brightness == pytest.approx(90)
    assert q.sharpness == 0.0


def test_a_large_face_aligns_like_the_same_face_photographed_smaller(deepface: Path) -> None:
    """Anti-aliasing: aligning a face 16x the template size gives (nearly) the crop of the same
    picture area-downscaled 8x first, unlike the aliased crop of a direct 16x warp."""
    from insightface.utils import face_align

    from facegate.vision.alignment import align
    from facegate.vision.images import read_image

    img = read_image(deepface / "img40.jpg")  # 1700 px face: detail a direct warp would alias
    big = arcface_dst * 16.0 + np.array([455.0, 1055.0], np.float32)
    small_img = cv2.resize(img, None, fx=0.125, fy=0.125, interpolation=cv2.INTER_AREA)
    reference = align(small_img, tuple(map(tuple, big * 0.125)))  # type: ignore[arg-type]
    ours = align(img, tuple(map(tuple, big)))  # type: ignore[arg-type]
    direct = face_align.norm_crop(img, big, 112)

    def mean_abs(a: npt.NDArray[np.uint8], b: npt.NDArray[np.uint8]) -> float:
        return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean())

    assert mean_abs(ours, reference) < 0.5 * mean_abs(direct, reference)
