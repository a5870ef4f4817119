"""The passive liveness score (facegate.vision.passive_liveness) with the real fr_liveness.onnx.

The score is uncalibrated, so nothing here checks a threshold; the one behavioural check is
the direction the measurements of the module's docstring support: real photos score higher
than the same photos shown on a screen (made by tests/spoofs.py) and filmed again.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

import spoofs
from facegate.vision.faceplugin import FacepluginAnalyzer
from facegate.vision.images import read_image
from facegate.vision.modelpack import ModelPackError
from facegate.vision.passive_liveness import INPUT_SIZE, PassiveLiveness, crop

FRAME_SIDE = 640  # photos are shrunk to a webcam frame's size first (and to keep this fast)


@pytest.fixture(scope="module")
def liveness(faceplugin_dir: Path) -> PassiveLiveness:
    return PassiveLiveness(faceplugin_dir)


def _photo(path: Path) -> np.ndarray:
    img = read_image(path)
    f = FRAME_SIDE / max(img.shape[:2])
    if f < 1.0:
        img = np.asarray(cv2.resize(img, None, fx=f, fy=f, interpolation=cv2.INTER_AREA), np.uint8)
    return img


def test_missing_model_names_the_file_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ModelPackError) as err:
        PassiveLiveness(tmp_path)
    assert str(tmp_path / "fr_liveness.onnx") in str(err.value)
    assert "facegate models fetch" in str(err.value)


def test_scores_are_probabilities_and_deterministic(
    liveness: PassiveLiveness, faceplugin_dir: Path, analyzer: FacepluginAnalyzer, deepface: Path
) -> None:
    img = read_image(deepface / "img1.jpg")
    box = analyzer.detect(img)[0].bbox
    first = liveness.score(img, box)
    assert isinstance(first, float) and 0.0 <= first <= 1.0
    assert liveness.score(img, box) == first
    assert PassiveLiveness(faceplugin_dir, threads=2).score(img, box) == pytest.approx(first)
    # Any box on any picture gives a probability, faces or not.
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    for frame, bbox in [
        (noise, (10.0, 10.0, 60.0, 60.0)),
        (np.zeros((480, 640, 3), np.uint8), (300.0, 200.0, 400.0, 300.0)),
        (noise, (-50.0, -50.0, 500.0, 500.0)),  # larger than the frame
        (np.full((1, 1, 3), 200, np.uint8), (0.0, 0.0, 1.0, 1.0)),
    ]:
        assert 0.0 <= liveness.score(frame, bbox) <= 1.0


@pytest.mark.parametrize(
    ("frame", "bbox", "message"),
    [
        (np.zeros((0, 0, 3), np.uint8), (0.0, 0.0, 10.0, 10.0), "empty"),
        (np.zeros((100, 0, 3), np.uint8), (0.0, 0.0, 10.0, 10.0), "empty"),
        (np.zeros((100, 100), np.uint8), (0.0, 0.0, 10.0, 10.0), "H x W x 3"),
        (np.zeros((100, 100, 4), np.uint8), (0.0, 0.0, 10.0, 10.0), "H x W x 3"),
        (np.zeros((100, 100, 3), np.float32), (0.0, 0.0, 10.0, 10.0), "uint8"),
        (np.zeros((100, 100, 3), np.uint8), (10.0, 10.0, 10.0, 50.0), "empty"),
        (np.zeros((100, 100, 3), np.uint8), (50.0, 50.0, 10.0, 10.0), "empty"),
        (np.zeros((100, 100, 3), np.uint8), (0.0, float("nan"), 10.0, 10.0), "finite"),
        (np.zeros((100, 100, 3), np.uint8), (0.0, 0.0, float("inf"), 10.0), "finite"),
        (np.zeros((100, 100, 3), np.uint8), (0.0, 0.0, 10.0), "4 finite"),
        (np.zeros((100, 100, 3), np.uint8), (100.0, 0.0, 150.0, 50.0), "outside"),
        (np.zeros((100, 100, 3), np.uint8), (-60.0, -60.0, -10.0, -10.0), "outside"),
    ],
)
def test_bad_frame_or_box_is_a_clear_value_error(
    liveness: PassiveLiveness, frame: np.ndarray, bbox: tuple[float, ...], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        liveness.score(frame, bbox)  # type: ignore[arg-type]


def test_crop_widens_the_box_but_never_pads() -> None:
    # Black beyond the frame reads as a screen's bezel to the network, so the crop stays in it.
    frame = np.full((240, 320, 3), 230, np.uint8)
    frame[100:140, 140:180] = (0, 0, 255)  # a 40 px red "face" in the middle
    centred = crop(frame, (140.0, 100.0, 180.0, 140.0))
    assert centred.shape == (INPUT_SIZE, INPUT_SIZE, 3) and centred.dtype == np.uint8
    red = (centred[..., 2] > 200) & (centred[..., 1] < 50)
    # Widened 2.7x: the face is the middle 1/2.7 of the crop's side.
    assert red.mean() == pytest.approx((1 / 2.7) ** 2, abs=0.02)
    assert red[INPUT_SIZE // 2, INPUT_SIZE // 2]
    corner = crop(frame, (0.0, 0.0, 40.0, 40.0))  # widened, it would leave the frame
    assert corner.min() == 230
    whole = crop(frame, (-20.0, -20.0, 400.0, 300.0))  # larger than the frame
    assert (whole[..., 2] > 200).all() and whole[..., 0].min() == 0  # shrunk, not padded


def test_real_photos_score_higher_than_the_same_photos_on_a_screen(
    liveness: PassiveLiveness, analyzer: FacepluginAnalyzer, deepface: Path
) -> None:
    real: list[float] = []
    shown: list[float] = []
    for seed, path in enumerate(sorted(deepface.glob("img*.jpg"))):
        img = _photo(path)
        faces = analyzer.detect(img)
        if not faces:
            continue
        rng = np.random.default_rng(seed)
        device = spoofs.on_screen(img, rng)
        fit = min(600 / device.shape[1], 440 / device.shape[0])  # the screen fills the view
        frame = spoofs.perspective_warp(device, 0.0, 0.0, rng, scale=fit, jpeg_noise=True)
        seen = analyzer.detect(frame)
        if not seen:
            continue
        real.append(liveness.score(img, faces[0].bbox))
        shown.append(liveness.score(frame, seen[0].bbox))
    assert len(real) >= 40, f"only {len(real)} deepface photos gave a face in both views"
    real_a, shown_a = np.array(real), np.array(shown)
    # Measured: 62 pairs, mean 0.999 vs 0.714, real higher in 95% of pairs, AUC 0.95.
    assert real_a.mean() - shown_a.mean() > 0.1
    assert float(np.mean(real_a > shown_a)) > 0.75
    auc = float(np.mean(real_a[:, None] > shown_a[None, :]))  # ROC AUC, real vs screen
    assert auc > 0.75
