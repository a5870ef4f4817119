"""Quality gates: is a face usable for recognition, or for enrolment, and if not, why; and
`quality_score`, the one number that ranks views of a face (the best thumbnail, the best
sample of a pose)."""

from __future__ import annotations

import msgspec

from facegate.settings import QualityGate, QualitySettings
from facegate.vision.face import Face


class GateResult(msgspec.Struct, frozen=True):
    usable: bool
    reasons: list[str]  # empty when usable; one short sentence per failed check


def check(face: Face, gate: QualityGate) -> GateResult:
    """Every check of the gate on one face. A face without pose fails the pose checks."""
    reasons: list[str] = []
    q = face.quality
    if q.face_px < gate.min_face_px:
        reasons.append(f"face too small: {q.face_px:.0f} px < {gate.min_face_px} px")
    if face.det_score < gate.min_det_score:
        reasons.append(f"detection score too low: {face.det_score:.2f} < {gate.min_det_score:.2f}")
    if q.sharpness < gate.min_sharpness:
        reasons.append(f"too blurred: sharpness {q.sharpness:.0f} < {gate.min_sharpness:.0f}")
    if q.brightness < gate.min_brightness:
        reasons.append(f"too dark: brightness {q.brightness:.0f} < {gate.min_brightness:.0f}")
    if q.brightness > gate.max_brightness:
        reasons.append(f"too bright: brightness {q.brightness:.0f} > {gate.max_brightness:.0f}")
    if face.yaw is None or face.pitch is None:
        reasons.append("head pose unknown")
    else:
        if abs(face.yaw) > gate.max_abs_yaw:
            reasons.append(
                f"head turned too far: yaw {face.yaw:+.0f} deg (max {gate.max_abs_yaw:.0f})"
            )
        if abs(face.pitch) > gate.max_abs_pitch:
            reasons.append(
                f"head tilted too far: pitch {face.pitch:+.0f} deg (max {gate.max_abs_pitch:.0f})"
            )
    return GateResult(usable=not reasons, reasons=reasons)


class QualityValidator:
    """The two gates of the settings: recognition (lenient) and enrolment (strict)."""

    def __init__(self, settings: QualitySettings) -> None:
        self._settings = settings

    def for_recognition(self, face: Face) -> GateResult:
        return check(face, self._settings.recognition)

    def for_enrolment(self, face: Face) -> GateResult:
        return check(face, self._settings.enrolment)


def quality_score(face: Face) -> float:
    """0..1: detector confidence scaled down for small or soft faces."""
    size = min(1.0, face.quality.face_px / 112.0)
    sharp = min(1.0, face.quality.sharpness / 100.0)
    return round(float(face.det_score) * size * sharp, 4)
