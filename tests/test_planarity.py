"""Liveness by parallax (`facegate.vision.planarity`): geometry on synthetic points, the attack
generators of tests/spoofs.py, and real Pointing'04 head turns against photos and screens."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from insightface.data import get_object

import spoofs
from facegate.vision.images import read_image
from facegate.vision.planarity import (
    ALL,
    CUTOFF_POINTING04,
    INNER,
    JAW,
    NOSE,
    Planarity,
    is_planar,
    planarity,
    planarity_residual,
)

Points = npt.NDArray[np.float64]
FOCAL = 640.0
CENTRE = np.array([320.0, 240.0])


# -- synthetic geometry ----------------------------------------------------------------------
def head() -> Points:
    """insightface's 3D mean shape of the 68 iBUG points (unit: about half a face width),
    centred, x right, y down, z toward the camera negative (the nose tip nearest)."""
    shape: Points = np.asarray(get_object("meanshape_68.pkl"), np.float64).reshape(68, 3)
    shape = shape - shape.mean(axis=0)
    shape[:, 2] *= -1.0  # its z grows toward the viewer; the camera's grows away from it
    return shape


def turn(points: Points, yaw: float, pitch: float) -> Points:
    y, p = math.radians(yaw), math.radians(pitch)
    ry = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
    rx = np.array([[1, 0, 0], [0, math.cos(p), math.sin(p)], [0, -math.sin(p), math.cos(p)]])
    turned: Points = points @ (ry @ rx).T
    return turned


def seen(points: Points, distance: float = 4.0) -> Points:
    """Pinhole projection of points centred `distance` units in front of the camera."""
    cam = points + np.array([0.0, 0.0, distance])
    image: Points = FOCAL * cam[:, :2] / cam[:, 2:3] + CENTRE
    return image


def mapped(h: npt.NDArray[np.float64], points: Points) -> Points:
    q = np.column_stack([points, np.ones(len(points))]) @ h.T
    result: Points = q[:, :2] / q[:, 2:3]
    return result


def test_a_plane_under_any_homography_is_planar() -> None:
    rng = np.random.default_rng(1)
    flat = seen(head() * [1.0, 1.0, 0.0])  # the face printed: every point at one depth
    for _ in range(25):
        h = spoofs.plane_homography(
            (384, 288),
            float(rng.uniform(-60, 60)),
            float(rng.uniform(-60, 60)),
            float(rng.uniform(-20, 20)),
            scale=float(rng.uniform(0.5, 1.5)),
            centre=(float(rng.uniform(200, 440)), float(rng.uniform(150, 330))),
        )
        result = planarity(flat, mapped(h, flat))
        assert result.residual < 1e-6
        assert result.score < 1e-5
        assert is_planar(result)
        assert result.planar()


def test_foreshortening_is_how_far_a_plane_turned() -> None:
    flat = head() * [1.0, 1.0, 0.0]
    front = seen(flat, distance=40.0)  # far away: nearly orthographic
    for angle in (15.0, 30.0, 45.0, 60.0):
        result = planarity(front, seen(turn(flat, angle, 0.0), distance=40.0))
        assert result.tilt == pytest.approx(angle, abs=1.0)
    moved = planarity(front, front * 1.7 + [25.0, -40.0])
    assert moved.foreshortening == pytest.approx(0.0, abs=1e-4)
    assert moved.tilt < 0.5


@pytest.mark.parametrize(("yaw", "pitch"), [(30, 0), (-30, 0), (45, 0), (-45, 0), (0, 30)])
def test_a_head_that_turns_is_not_planar(yaw: float, pitch: float) -> None:
    face = head()
    front, turned = seen(face), seen(turn(face, yaw, pitch))
    result = planarity(front, turned)
    assert result.score > 1.3 * CUTOFF_POINTING04, result
    assert not is_planar(result)
    # With landmark noise of 0.1% of the face's size on every coordinate, as well.
    rng = np.random.default_rng(2)
    sigma = 0.001 * float(np.ptp(front, axis=0).max())
    noisy = planarity(
        front + rng.normal(0, sigma, front.shape), turned + rng.normal(0, sigma, front.shape)
    )
    assert not is_planar(noisy), noisy


def test_landmark_noise_alone_on_a_plane_stays_planar() -> None:
    rng = np.random.default_rng(3)
    flat = seen(head() * [1.0, 1.0, 0.0])
    sigma = 0.001 * float(np.ptp(flat, axis=0).max())
    h = spoofs.plane_homography((384, 288), 40.0, 0.0)
    for _ in range(10):
        result = planarity(
            flat + rng.normal(0, sigma, flat.shape),
            mapped(h, flat) + rng.normal(0, sigma, flat.shape),
        )
        assert is_planar(result), result


def test_distance_position_and_roll_do_not_matter() -> None:
    face = head()
    front, turned = seen(face), seen(turn(face, 30, 0))
    base = planarity(front, turned)
    angle = math.radians(20)
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    for f, t in (
        (front * 0.3, turned * 0.3),  # the whole scene further away
        (front * 2.5 + [100.0, -50.0], turned * 2.5 + [100.0, -50.0]),
        (front, turned * 0.6 + [40.0, 10.0]),  # stepped back and aside between the views
        (front @ rot.T, turned),  # the head rolled in the front view
        (front, turned @ rot.T + [5.0, 5.0]),
    ):
        other = planarity(f, t)
        assert other.residual == pytest.approx(base.residual, rel=1e-4)
        assert other.score == pytest.approx(base.score, rel=1e-4)
    assert planarity_residual(front, turned) == pytest.approx(base.residual)


def test_point_sets() -> None:
    face = head()
    front, turned = seen(face), seen(turn(face, 30, 0))
    for points in (ALL, INNER, JAW + NOSE):
        assert planarity(front, turned, points).residual > 0.005
    with pytest.raises(ValueError, match="at least 5"):
        planarity(front, turned, (27, 30, 33))
    with pytest.raises(ValueError, match="at least 5"):
        planarity(front, turned, (*NOSE, 68))


def degenerate(kind: str) -> npt.NDArray[np.float64]:
    good = seen(head())
    if kind == "nan":
        good[30] = np.nan
    elif kind == "inf":
        good[8, 1] = np.inf
    elif kind == "point":
        good[:] = (320.0, 240.0)
    elif kind == "line":
        good[:, 1] = 2.0 * good[:, 0] + 1.0
    elif kind == "short":
        return good[:67]
    elif kind == "3d":
        return np.column_stack([good, np.zeros(68)])
    return good


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("nan", "NaN or infinity"),
        ("inf", "NaN or infinity"),
        ("point", "collapsed"),
        ("line", "collapsed"),
        ("short", "expected 68"),
        ("3d", "expected 68"),
    ],
)
@pytest.mark.parametrize("which", ["front", "turned"])
def test_degenerate_landmarks_are_refused(kind: str, message: str, which: str) -> None:
    good = seen(head())
    bad = degenerate(kind)
    args = (bad, good) if which == "front" else (good, bad)
    with pytest.raises(ValueError, match=message) as caught:
        planarity(*args)
    assert which in str(caught.value)


def test_score_and_tilt_of_a_result() -> None:
    result = Planarity(residual=0.02, foreshortening=0.5)
    assert result.tilt == pytest.approx(60.0)
    assert result.score == pytest.approx(0.02 / 0.7)


# -- the attack generators ---------------------------------------------------------------------
def picture() -> npt.NDArray[np.uint8]:
    """A 288x384 test card: a checkerboard with a bright disc, no real face needed."""
    yy, xx = np.mgrid[0:288, 0:384]
    card = (((yy // 24) + (xx // 24)) % 2 * 160 + 40).astype(np.uint8)
    card[(yy - 144) ** 2 + (xx - 192) ** 2 < 60**2] = 230
    return np.repeat(card[..., None], 3, axis=2)


def test_generators_are_deterministic() -> None:
    img = picture()

    def make(seed: int) -> list[npt.NDArray[np.uint8]]:
        rng = np.random.default_rng(seed)
        screen = spoofs.on_screen(img, rng)
        return [
            spoofs.perspective_warp(img, 40, -20, rng, shake=True, jpeg_noise=True),
            spoofs.scaled_translated(img, rng, shake=True, jpeg_noise=True),
            screen,
            spoofs.perspective_warp(screen, -50, 0, rng, shake=True),
            *spoofs.photo_turn(img, 30, 0, rng, frames=5),
        ]

    first, again, other = make(5), make(5), make(6)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))
    frames = [f for i, f in enumerate(first) if i != 2]  # all but the device's own picture
    assert all(f.shape == (480, 640, 3) and f.dtype == np.uint8 for f in frames)


def test_a_photo_facing_the_camera_is_placed_in_the_middle() -> None:
    img = picture()
    back = np.zeros((480, 640, 3), np.uint8)
    frame = spoofs.perspective_warp(img, 0, 0, np.random.default_rng(0), background=back)

    def difference(dx: int, dy: int) -> float:
        y, x = 96 + dy, 128 + dx
        shown = frame[y + 4 : y + 284, x + 4 : x + 380].astype(float)
        return float(np.abs(shown - img[4:284, 4:380]).mean())

    here = difference(0, 0)
    assert here < 8.0  # the same picture, softened by the resampling only
    assert all(difference(dx, dy) > 2 * here for dx, dy in ((1, 0), (-1, 0), (0, 1), (0, -1)))
    assert frame[:90].max() == 0  # the backdrop above it


def test_a_turned_photo_foreshortens() -> None:
    img = np.full((288, 384, 3), 255, np.uint8)
    back = np.zeros((480, 640, 3), np.uint8)
    rng = np.random.default_rng(0)
    for yaw, pitch in ((60, 0), (0, 60)):
        frame = spoofs.perspective_warp(img, yaw, pitch, rng, background=back)
        ys, xs = np.nonzero(frame[..., 0] > 128)
        width, height = np.ptp(xs) + 1, np.ptp(ys) + 1
        if yaw:
            assert 0.4 * 384 < width < 0.65 * 384  # cos 60 = 0.5, plus perspective
        else:
            assert 0.4 * 288 < height < 0.65 * 288
    with pytest.raises(ValueError, match="60"):
        spoofs.perspective_warp(img, 70, 0, rng)


def test_photo_turn_goes_out_and_back() -> None:
    img = np.full((288, 384, 3), 255, np.uint8)
    frames = spoofs.photo_turn(img, 50, 0, np.random.default_rng(0), frames=7, shake=False)
    widths = [int(np.ptp(np.nonzero(f[..., 0] > 250)[1])) for f in frames]
    assert widths[0] == widths[-1] == max(widths)
    assert widths[3] == min(widths)
    with pytest.raises(ValueError, match="3 frames"):
        spoofs.photo_turn(img, 30, 0, np.random.default_rng(0), frames=2)


def test_on_screen_has_a_bezel_moire_and_gamma() -> None:
    img = np.full((288, 384, 3), 128, np.uint8)
    device = spoofs.on_screen(img, np.random.default_rng(0), bezel=0.05, moire=0.1, gamma=1.3)
    margin = round(0.05 * 384)
    assert device.shape == (288 + 2 * margin, 384 + 2 * margin, 3)
    assert device[:margin].max() < 20  # the black bezel
    shown = device[margin:-margin, margin:-margin].astype(float)
    assert shown.mean() < 110  # gamma 1.3 darkens mid-grey
    assert shown[..., 1].std() > 2  # the moire pattern on a flat grey


# -- real turns and attacks (Pointing'04, the default pack) -----------------------------------
PERSONS = ["p04_person01", "p04_person02", "p04_person03", "p04_person04"]
REAL = [(-45, 0), (-30, 0), (30, 0), (45, 0)]
ATTACK_TURNS = (
    [(y, 0) for y in (-60, -45, -30, -15, 15, 30, 45, 60)]
    + [(0, p) for p in (-60, -45, -30, -15, 15, 30, 45, 60)]
    + [(y, p) for y in (-45, 45) for p in (-30, 30)]
)
SCREEN_TURNS = [(y, 0) for y in (-60, -45, -30, 30, 45, 60)] + [(0, p) for p in (-45, 45)]
POSE_WINDOW = 25.0  # a yaw challenge's window starts at this read yaw toward the turn


@dataclass
class Measured:
    what: str  # "real", "photo", "move", "screen"
    where: str  # person, series, angles: for messages
    target: tuple[int, int]
    result: Planarity
    read_yaw: float


def landmarks(analyzer: Any, frame: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    detections = analyzer.detect(frame)
    assert detections, "no face found"
    points: npt.NDArray[np.float32] = detections[0].dense_landmarks
    return points


def read_yaw(analyzer: Any, frame: npt.NDArray[np.uint8]) -> float:
    face = analyzer.describe(frame, analyzer.detect(frame)[0], embed=False, pose=True)
    return float(face.yaw)


def held_up(
    shown: npt.NDArray[np.uint8],
    yaw: float,
    pitch: float,
    rng: np.random.Generator,
    *,
    scale: float,
    background: npt.NDArray[np.uint8],
) -> npt.NDArray[np.uint8]:
    """`shown` (a photo or a device) held up at (yaw, pitch), with hand shake and JPEG."""
    return spoofs.perspective_warp(
        shown, yaw, pitch, rng, shake=True, jpeg_noise=True, scale=scale, background=background
    )


def pasted(img: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    frame = np.full((480, 640, 3), 60, np.uint8)
    frame[96 : 96 + img.shape[0], 128 : 128 + img.shape[1]] = img
    return frame


@pytest.fixture(scope="module")
def measured(shared_data: Path, analyzer: Any) -> list[Measured]:
    root = shared_data / "pose" / "pointing04"
    with (root / "manifest.csv").open() as fh:
        paths = {
            (r["identity"], r["series"], int(r["yaw"]), int(r["pitch"])): root / r["path"]
            for r in csv.DictReader(fh)
        }
    out: list[Measured] = []
    for n, person in enumerate(PERSONS):
        for series in ("1", "2"):
            rng = np.random.default_rng([11, n, int(series)])
            photo = read_image(paths[(person, series, 0, 0)])
            front = landmarks(analyzer, pasted(photo))
            for yaw, pitch in REAL:
                frame = pasted(read_image(paths[(person, series, yaw, pitch)]))
                out.append(
                    Measured(
                        "real",
                        f"{person} series {series} turned {yaw:+d}/{pitch:+d}",
                        (yaw, pitch),
                        planarity(front, landmarks(analyzer, frame)),
                        read_yaw(analyzer, frame),
                    )
                )
            for what, shown, scale, turns in (
                ("photo", photo, 1.25, ATTACK_TURNS),
                ("screen", spoofs.on_screen(photo, rng), 1.1, SCREEN_TURNS),
            ):
                back = spoofs.backdrop(rng)

                held_front = landmarks(
                    analyzer, held_up(shown, 0, 0, rng, scale=scale, background=back)
                )
                for yaw, pitch in turns:
                    frame = held_up(shown, yaw, pitch, rng, scale=scale, background=back)
                    out.append(
                        Measured(
                            what,
                            f"{person} series {series} {what} turned {yaw:+d}/{pitch:+d}",
                            (yaw, pitch),
                            planarity(held_front, landmarks(analyzer, frame)),
                            read_yaw(analyzer, frame),
                        )
                    )
                if what == "photo":
                    for i in range(3):
                        frame = spoofs.scaled_translated(
                            photo, rng, shake=True, jpeg_noise=True, background=back
                        )
                        out.append(
                            Measured(
                                "move",
                                f"{person} series {series} photo moved ({i})",
                                (0, 0),
                                planarity(held_front, landmarks(analyzer, frame)),
                                read_yaw(analyzer, frame),
                            )
                        )
    return out


def describe(items: list[Measured]) -> str:
    return "; ".join(
        f"{m.where}: score {m.result.score:.4f} (tilt {m.result.tilt:.0f}, reads yaw "
        f"{m.read_yaw:+.0f})"
        for m in items
    )


@pytest.mark.shared_data
@pytest.mark.models
def test_real_head_turns_are_not_planar(measured: list[Measured]) -> None:
    real = [m for m in measured if m.what == "real"]
    assert len(real) == len(PERSONS) * 2 * len(REAL)
    planar = [m for m in real if is_planar(m.result)]
    assert not planar, describe(planar)


@pytest.mark.shared_data
@pytest.mark.models
def test_attacks_turned_up_to_45_deg_are_planar(measured: list[Measured]) -> None:
    attacks = [m for m in measured if m.what != "real" and max(map(abs, m.target)) <= 45]
    assert len(attacks) > 150
    live = [m for m in attacks if not is_planar(m.result)]
    assert not live, describe(live)


@pytest.mark.shared_data
@pytest.mark.models
def test_attacks_turned_60_deg_rarely_look_3d_and_then_not_turned(
    measured: list[Measured],
) -> None:
    """At 60 deg the landmarks degrade and a few frames look 3D: in bench/liveness.py 18 of
    4,320 attack frames score above the cut-off, all turned 60 deg (10 of them person03's photo
    tilted downward), and 1 of those also reads a yaw of 25 deg toward the turn, as a yaw
    challenge requires. Here: most are planar, and at most one passes both."""
    attacks = [m for m in measured if m.what != "real" and max(map(abs, m.target)) == 60]
    assert len(attacks) == len(PERSONS) * 2 * 6
    live = [m for m in attacks if not is_planar(m.result)]
    assert len(live) <= 0.15 * len(attacks), describe(live)

    def toward_turn(m: Measured) -> bool:
        yaw = m.target[0]
        sides = (math.copysign(1.0, yaw),) if yaw else (1.0, -1.0)
        return any(s * m.read_yaw >= POSE_WINDOW for s in sides)

    through = [m for m in live if toward_turn(m)]
    assert len(through) <= 1, describe(through)
