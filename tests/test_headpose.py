"""Head pose: bin decoding, landmark geometry, fusion, and signs on real Pointing'04 photos."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from facegate.vision.headpose import (
    LandmarkGeometry,
    bins_to_degrees,
    decode_bins,
    fuse,
    softmax,
)
from facegate.vision.images import read_image

Points = npt.NDArray[np.float64]

# -- a synthetic symmetric 68-point face ---------------------------------------------------------
# Image-left half (the subject's right) in a frame centred between the eyes, y down; the
# image-right half is its mirror. iBUG-300W numbering.
_LEFT_HALF = {
    **{i: (-70.0 * math.cos(i / 8 * math.pi / 2), -10.0 + 110.0 * math.sin(i / 8 * math.pi / 2))
       for i in range(9)},  # jaw 0..8, 8 = chin
    17: (-60.0, -25.0), 18: (-50.0, -30.0), 19: (-38.0, -32.0), 20: (-26.0, -30.0),
    21: (-15.0, -26.0),  # brow
    27: (0.0, -5.0), 28: (0.0, 12.0), 29: (0.0, 28.0), 30: (0.0, 45.0),  # nose bridge, tip
    31: (-15.0, 50.0), 32: (-8.0, 53.0), 33: (0.0, 55.0),  # nostrils
    36: (-48.0, 0.0), 37: (-40.0, -5.0), 38: (-30.0, -5.0), 39: (-22.0, 0.0),
    40: (-30.0, 4.0), 41: (-40.0, 4.0),  # subject's right eye
    48: (-28.0, 75.0), 49: (-18.0, 70.0), 50: (-8.0, 68.0), 51: (0.0, 69.0),
    57: (0.0, 85.0), 58: (-8.0, 84.0), 59: (-18.0, 81.0),  # outer lip
    60: (-24.0, 75.0), 61: (-10.0, 73.0), 62: (0.0, 73.0), 66: (0.0, 78.0),
    67: (-10.0, 78.0),  # inner lip
}  # fmt: skip
_MIRROR = {
    **{i: 16 - i for i in range(8)},
    **{17 + i: 26 - i for i in range(5)},
    31: 35, 32: 34, 36: 45, 37: 44, 38: 43, 39: 42, 40: 47, 41: 46,
    48: 54, 49: 53, 50: 52, 59: 55, 58: 56, 60: 64, 61: 63, 67: 65,
}  # fmt: skip


def symmetric_face(centre: tuple[float, float] = (200.0, 150.0)) -> Points:
    p = np.full((68, 2), np.nan)
    for i, (x, y) in _LEFT_HALF.items():
        p[i] = (x, y)
    for i, j in _MIRROR.items():
        p[j] = (-p[i][0], p[i][1])
    assert not np.isnan(p).any()
    return p + np.asarray(centre)


def turned_face(toward: str = "left") -> Points:
    """Nose tip and chin moved toward the image's left (yaw > 0) or right (yaw < 0)."""
    p = symmetric_face()
    p[30] += (-9.0, 2.0)
    p[8] += (-6.0, 0.0)
    p[0:8] += (5.0, 0.0)
    if toward == "left":
        return p
    mirrored = p.copy()
    mirrored[:, 0] = 2 * 200.0 - p[:, 0]
    for i, j in _MIRROR.items():
        mirrored[[i, j]] = mirrored[[j, i]]
    return mirrored


def rotate(points: Points, degrees: float, about: tuple[float, float]) -> Points:
    """Rotate by `degrees` clockwise as seen in an image (y down)."""
    a = math.radians(degrees)
    r = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    c = np.asarray(about)
    return (points - c) @ r.T + c


RATIOS = ("nose_offset", "jaw_asymmetry", "nose_height", "chin_drop", "bridge_height")


def ratios(points: Points) -> dict[str, float]:
    geo = LandmarkGeometry(points.astype(np.float32))
    return {name: getattr(geo, name) for name in RATIOS}


# -- softmax and bins --------------------------------------------------------------------------


@pytest.mark.parametrize("i", [0, 1, 10, 33, 50, 65])
def test_one_hot_bin_decodes_to_its_angle(i: int) -> None:
    bins = np.zeros(66, np.float32)
    bins[i] = 1000.0
    assert bins_to_degrees(bins) == pytest.approx(3 * i - 99, abs=1e-9)


def test_uniform_bins_decode_to_the_middle() -> None:
    # Mean bin index 32.5 -> 32.5 * 3 - 99.
    assert bins_to_degrees(np.full(66, 4.2, np.float32)) == pytest.approx(-1.5)


def test_decode_bins_order_is_yaw_pitch_roll() -> None:
    def one_hot(i: int) -> npt.NDArray[np.float32]:
        b = np.full(66, -500.0, np.float32)
        b[i] = 500.0
        return b

    assert decode_bins(one_hot(40), one_hot(20), one_hot(33)) == pytest.approx((21, -39, 0))


@pytest.mark.parametrize(
    "logits",
    [
        [1.0, 2.0, 3.0],
        [1000.0, 999.0, -1000.0],
        [3e38, 3e38, -3e38],
        [-1e30, -1e30 + 1e24, -2e30],
    ],
)
def test_softmax_sums_to_one_and_is_stable(logits: list[float]) -> None:
    x = np.array(logits, np.float32)
    p = softmax(x)
    assert np.isfinite(p).all()
    assert p.sum() == pytest.approx(1.0)
    assert (p >= 0).all()
    assert int(np.argmax(p)) == int(np.argmax(x))


def test_softmax_matches_the_textbook_formula_for_small_logits() -> None:
    x = np.array([0.5, -1.0, 2.0, 0.0], np.float32)
    expected = np.exp(x.astype(np.float64)) / np.exp(x.astype(np.float64)).sum()
    np.testing.assert_allclose(softmax(x), expected, rtol=1e-12)


# -- landmark geometry -------------------------------------------------------------------------


def test_symmetric_face_has_no_roll_offset_or_asymmetry() -> None:
    geo = LandmarkGeometry(symmetric_face().astype(np.float32))
    assert geo.roll == pytest.approx(0.0, abs=1e-6)
    assert geo.nose_offset == pytest.approx(0.0, abs=1e-6)
    assert geo.jaw_asymmetry == pytest.approx(0.0, abs=1e-6)
    # Nose tip below the eye line, above the mouth; chin below the mouth.
    assert 0.0 < geo.nose_height < 1.0
    assert geo.chin_drop > 0.0


@pytest.mark.parametrize("degrees", [10.0, -10.0, 30.0, -45.0, 80.0])
@pytest.mark.parametrize("make", [symmetric_face, turned_face])
def test_rotation_sets_roll_and_keeps_the_ratios(degrees: float, make: Any) -> None:
    points = make()
    rotated = rotate(points, degrees, about=(173.0, 91.0))
    geo = LandmarkGeometry(rotated.astype(np.float32))
    # Clockwise in the image: the eye on the image's right goes down, roll > 0.
    assert geo.roll == pytest.approx(degrees, abs=1e-3)
    assert ratios(rotated) == pytest.approx(ratios(points), abs=1e-4)


def test_turned_face_ratios_are_not_trivial() -> None:
    # Otherwise the invariance tests above would hold for any constant.
    r = ratios(turned_face())
    assert abs(r["nose_offset"]) > 0.05
    assert abs(r["jaw_asymmetry"]) > 0.01


@pytest.mark.parametrize("scale", [0.25, 1.0, 3.0, 12.0])
def test_scaling_keeps_the_ratios(scale: float) -> None:
    points = turned_face()
    scaled = points * scale + (17.0, -4.0)
    assert ratios(scaled) == pytest.approx(ratios(points), rel=1e-4, abs=1e-5)
    assert LandmarkGeometry(scaled.astype(np.float32)).roll == pytest.approx(0.0, abs=1e-3)


@pytest.mark.parametrize(("dx", "sign"), [(-8.0, -1.0), (8.0, 1.0)])
def test_nose_shift_sets_the_nose_offset_sign(dx: float, sign: float) -> None:
    points = symmetric_face()
    points[30, 0] += dx
    assert math.copysign(1.0, LandmarkGeometry(points.astype(np.float32)).nose_offset) == sign


# -- fuse --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("net_yaw", "toward"), [(60.5, "left"), (75.0, "left"), (-70.0, "right"), (-89.0, "right")]
)
def test_fuse_trusts_the_network_beyond_60_on_the_side_the_landmarks_see(
    net_yaw: float, toward: str
) -> None:
    yaw, _, _ = fuse((net_yaw, 0.0, 0.0), turned_face(toward).astype(np.float32))
    assert yaw == net_yaw


@pytest.mark.parametrize(("net_yaw", "toward"), [(75.0, "right"), (-70.0, "left"), (-64.0, "left")])
def test_fuse_overrules_a_network_contradicting_the_landmarks(net_yaw: float, toward: str) -> None:
    yaw, _, _ = fuse((net_yaw, 0.0, 0.0), turned_face(toward).astype(np.float32))
    # The landmarks' side wins: yaw > 0 for a face turned toward the image's left.
    assert math.copysign(1.0, yaw) == (1.0 if toward == "left" else -1.0)


def test_fuse_returns_the_geometric_roll() -> None:
    points = rotate(symmetric_face(), 12.0, about=(200.0, 150.0))
    _, _, roll = fuse((0.0, 0.0, -40.0), points.astype(np.float32))
    assert roll == pytest.approx(12.0, abs=1e-3)


def test_fuse_yaw_follows_the_nose_toward_the_image_left() -> None:
    # yaw > 0 is the face turned toward the image's left, which moves the nose tip that way.
    straight = symmetric_face()
    turned = symmetric_face()
    turned[30, 0] -= 10.0
    yaw_straight, _, _ = fuse((0.0, 0.0, 0.0), straight.astype(np.float32))
    yaw_turned, _, _ = fuse((0.0, 0.0, 0.0), turned.astype(np.float32))
    assert yaw_turned > yaw_straight + 1.0


def test_fuse_pitch_follows_the_nose_down() -> None:
    # Looking down (pitch < 0) brings the nose tip down toward the mouth.
    level = symmetric_face()
    down = symmetric_face()
    down[30, 1] += 8.0
    _, pitch_level, _ = fuse((0.0, 0.0, 0.0), level.astype(np.float32))
    _, pitch_down, _ = fuse((0.0, 0.0, 0.0), down.astype(np.float32))
    assert pitch_down < pitch_level - 1.0


@pytest.mark.parametrize("seed", range(5))
def test_fused_yaw_and_pitch_stay_within_90(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(200):
        net = (float(rng.uniform(-99, 96)), float(rng.uniform(-99, 96)), 0.0)
        if rng.random() < 0.5:
            points = rng.uniform(0, 400, (68, 2))
        else:  # a plausible face, perturbed and rotated
            points = rotate(
                symmetric_face() + rng.normal(0, 15, (68, 2)), rng.uniform(-80, 80), (200, 150)
            )
        yaw, pitch, roll = fuse(net, points.astype(np.float32))
        assert -90.0 <= yaw <= 90.0
        assert -90.0 <= pitch <= 90.0
        assert math.isfinite(roll)


def test_fused_angles_stay_within_90_for_non_finite_landmarks() -> None:
    points = np.full((68, 2), np.nan, np.float32)
    yaw, pitch, _ = fuse((-99.0, 96.0, 0.0), points)
    assert -90.0 <= yaw <= 90.0
    assert -90.0 <= pitch <= 90.0


# -- the real pack on Pointing'04 ----------------------------------------------------------------

POSES = [(0, 0), (45, 0), (-45, 0), (0, 30), (0, -30)]  # (yaw, pitch) labels
PERSONS = ["p04_person01", "p04_person02"]


def pointing04_rows(shared_data: Path) -> dict[tuple[str, int, int], dict[str, str]]:
    manifest = shared_data / "pose" / "pointing04" / "manifest.csv"
    with manifest.open(newline="") as fh:
        return {
            (row["identity"], int(row["yaw"]), int(row["pitch"])): row
            for row in csv.DictReader(fh)
            if row["series"] == "2"
        }


@pytest.mark.shared_data
@pytest.mark.models
@pytest.mark.parametrize("person", PERSONS)
@pytest.mark.parametrize(("yaw", "pitch"), POSES)
def test_pose_signs_on_pointing04(
    shared_data: Path, analyzer: Any, person: str, yaw: int, pitch: int
) -> None:
    row = pointing04_rows(shared_data)[(person, yaw, pitch)]
    img = read_image(shared_data / "pose" / "pointing04" / row["path"])
    cx, cy = float(row["face_cx"]), float(row["face_cy"])
    faces = [
        f
        for f in analyzer.analyze(img)
        if f.bbox[0] <= cx <= f.bbox[2] and f.bbox[1] <= cy <= f.bbox[3]
    ]
    assert len(faces) == 1, f"{row['path']}: {len(faces)} faces over the labelled face centre"
    face = faces[0]
    assert face.yaw is not None
    assert face.pitch is not None
    got = f"{row['path']}: yaw {face.yaw:+.1f} pitch {face.pitch:+.1f}"
    for label, measured in ((yaw, face.yaw), (pitch, face.pitch)):
        if label == 0:
            assert abs(measured) < 15.0, got
        else:
            assert math.copysign(1.0, measured) == math.copysign(1.0, label), got
