"""Quality gates: each check fails on its own measure, with its own reason, and only then."""

from __future__ import annotations

from typing import Any

import pytest

from facegate.settings import QualityGate, QualitySettings, Settings
from facegate.vision.face import Face, Quality
from facegate.vision.quality import QualityValidator, check

GATE = QualityGate(
    min_face_px=80,
    max_abs_yaw=50.0,
    max_abs_pitch=40.0,
    min_sharpness=30.0,
    min_det_score=0.8,
    min_brightness=40.0,
    max_brightness=225.0,
)
LANDMARKS = ((40.0, 50.0), (70.0, 50.0), (55.0, 70.0), (42.0, 90.0), (68.0, 90.0))


def make_face(
    *,
    face_px: float = 120.0,
    sharpness: float = 100.0,
    brightness: float = 120.0,
    det_score: float = 0.95,
    **pose: Any,
) -> Face:
    """A face that passes GATE unless a measure is given that fails it."""
    angles = {"yaw": 0.0, "pitch": 0.0, "roll": 0.0} | pose
    return Face(
        bbox=(0.0, 0.0, face_px, face_px),
        det_score=det_score,
        landmarks=LANDMARKS,
        quality=Quality(face_px=face_px, sharpness=sharpness, brightness=brightness),
        **angles,
    )


def test_good_face_passes_with_no_reasons() -> None:
    result = check(make_face(), GATE)
    assert result.usable
    assert result.reasons == []


@pytest.mark.parametrize(
    ("measure", "reason"),
    [
        ({"face_px": 79.0}, "face too small"),
        ({"det_score": 0.79}, "detection score too low"),
        ({"sharpness": 29.0}, "too blurred"),
        ({"brightness": 39.0}, "too dark"),
        ({"brightness": 226.0}, "too bright"),
        ({"yaw": 51.0}, "head turned too far"),
        ({"yaw": -51.0}, "head turned too far"),
        ({"pitch": 41.0}, "head tilted too far"),
        ({"pitch": -41.0}, "head tilted too far"),
    ],
)
def test_each_failing_measure_gives_exactly_its_reason(
    measure: dict[str, float], reason: str
) -> None:
    result = check(make_face(**measure), GATE)
    assert not result.usable
    assert len(result.reasons) == 1
    assert result.reasons[0].startswith(reason)


@pytest.mark.parametrize(
    "measure",
    [
        {"face_px": 80.0},
        {"det_score": 0.8},
        {"sharpness": 30.0},
        {"brightness": 40.0},
        {"brightness": 225.0},
        {"yaw": 50.0},
        {"yaw": -50.0},
        {"pitch": 40.0},
        {"pitch": -40.0},
        {"roll": 80.0},  # roll is not gated
    ],
)
def test_values_at_the_limit_pass(measure: dict[str, float]) -> None:
    result = check(make_face(**measure), GATE)
    assert result.usable, result.reasons
    assert result.reasons == []


@pytest.mark.parametrize("missing", [{"yaw": None}, {"pitch": None}, {"yaw": None, "pitch": None}])
def test_face_without_pose_fails_with_pose_unknown(missing: dict[str, None]) -> None:
    result = check(make_face(**missing), GATE)
    assert not result.usable
    assert result.reasons == ["head pose unknown"]


def test_several_failures_give_one_reason_each() -> None:
    face = make_face(face_px=10.0, sharpness=1.0, brightness=250.0, yaw=80.0, pitch=-60.0)
    reasons = check(face, GATE).reasons
    assert len(reasons) == 5
    for start in ("face too small", "too blurred", "too bright", "head turned", "head tilted"):
        assert sum(r.startswith(start) for r in reasons) == 1


def test_reason_states_the_measure_and_the_limit() -> None:
    (reason,) = check(make_face(face_px=60.0), GATE).reasons
    assert "60" in reason
    assert "80" in reason
    (reason,) = check(make_face(yaw=-55.0), GATE).reasons
    assert "-55" in reason
    assert "50" in reason


def test_validator_uses_recognition_and_enrolment_gates_of_the_defaults() -> None:
    validator = QualityValidator(Settings().quality)
    small = make_face(face_px=60.0, det_score=0.9, sharpness=50.0)
    assert validator.for_recognition(small).usable
    enrol = validator.for_enrolment(small)
    assert not enrol.usable
    assert len(enrol.reasons) == 1
    assert enrol.reasons[0].startswith("face too small")


def test_validator_follows_its_settings() -> None:
    strict = QualitySettings(recognition=GATE, enrolment=GATE)
    lenient_gate = QualityGate(
        min_face_px=10, max_abs_yaw=90.0, max_abs_pitch=90.0, min_sharpness=0.0, min_det_score=0.0
    )
    lenient = QualitySettings(recognition=lenient_gate, enrolment=lenient_gate)
    face = make_face(face_px=40.0, yaw=70.0)
    assert not QualityValidator(strict).for_recognition(face).usable
    assert QualityValidator(lenient).for_recognition(face).usable
    assert QualityValidator(lenient).for_enrolment(face).usable
