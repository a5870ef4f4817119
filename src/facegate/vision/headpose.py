"""Head pose of the default pack: the pose network's bins fused with 68-point landmark geometry.

The raw network compresses angles (about 0.55x in pitch) and is biased (about -4 deg in
pitch). A linear model over the network's angle and a few scale-free landmark ratios corrects
that; its coefficients below were fitted by `bench/fit_pose.py` on Pointing'04 series 1 only
and are reported on series 2 (`make bench`).

Convention (as `../shared/data/README.md`): yaw > 0 when the face turns toward the image's left
(the subject's own right), pitch > 0 when looking up, roll > 0 when the eye on the image's
right (the subject's left eye) is lower, i.e. the face is rotated clockwise in the image. Roll
is the angle of the eye line: exact for in-plane rotation, unlike the network's roll.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

BIN_DEGREES = 3.0
BIN_OFFSET = 99.0

# Fitted on Pointing'04 series 1, |yaw| <= 60, |pitch| <= 30 (bench/fit_pose.py).
# Fused:     yaw   = w . [net_yaw, nose_offset, jaw_asymmetry, 1]
#            pitch = w . [net_pitch, nose_height, chin_drop, bridge_height, 1]
# Geometry:  the same without the network's angle (the first weight dropped).
YAW_WEIGHTS = (0.436, -34.111, 25.878, -0.84)
PITCH_WEIGHTS = (0.838, -116.849, 8.452, 189.771, 58.72)
YAW_GEOMETRY_WEIGHTS = (-75.774, 28.758, -0.394)
PITCH_GEOMETRY_WEIGHTS = (-193.122, 54.256, 218.887, 63.769)
# The network is sometimes wildly wrong on a face the landmarks read well (a bearded face at
# 25 deg read as -64): when fused and geometry-only estimates differ by more than this, the
# network is the outlier and geometry alone is used. On Pointing'04 series 2 this fires on
# <1% of faces and changes the MAE by < 0.1 deg.
DISAGREEMENT_DEGREES = 20.0
# Near profile the landmark ratios saturate; a network that says |yaw| beyond this, on the
# side the geometry also sees, is trusted as it is.
PROFILE_DEGREES = 60.0


def softmax(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    z = np.asarray(x, np.float64) - float(np.max(x))
    e = np.exp(z)
    result: npt.NDArray[np.float64] = e / e.sum()
    return result


def bins_to_degrees(bins: npt.NDArray[np.float32]) -> float:
    """Expected angle of a 66-bin classification: sum(softmax * i) * 3 - 99."""
    p = softmax(bins)
    return float((p * np.arange(p.size)).sum() * BIN_DEGREES - BIN_OFFSET)


def decode_bins(
    yaw_bins: npt.NDArray[np.float32],
    pitch_bins: npt.NDArray[np.float32],
    roll_bins: npt.NDArray[np.float32],
) -> tuple[float, float, float]:
    return bins_to_degrees(yaw_bins), bins_to_degrees(pitch_bins), bins_to_degrees(roll_bins)


class LandmarkGeometry:
    """Scale- and roll-free ratios of the 68 iBUG points that move with yaw and pitch."""

    __slots__ = (
        "bridge_height",
        "chin_drop",
        "jaw_asymmetry",
        "nose_height",
        "nose_offset",
        "roll",
    )

    def __init__(self, points68: npt.NDArray[np.float32]) -> None:
        p = np.asarray(points68, np.float64).reshape(68, 2)
        right_eye = p[36:42].mean(axis=0)  # subject's right eye, image left
        left_eye = p[42:48].mean(axis=0)
        d = left_eye - right_eye
        angle = math.atan2(d[1], d[0])
        c, s = math.cos(-angle), math.sin(-angle)
        # Rotate about the eye midpoint so the eye line is horizontal.
        q = (p - (right_eye + left_eye) / 2.0) @ np.array([[c, -s], [s, c]]).T
        mouth = (q[48] + q[54] + q[60] + q[64]) / 4.0
        eye_mouth = max(float(mouth[1]), 1e-6 + 0.05 * float(np.ptp(q[:, 1])))
        jaw_r = float(np.linalg.norm(q[0] - q[30]))
        jaw_l = float(np.linalg.norm(q[16] - q[30]))
        self.roll = math.degrees(angle)
        self.nose_offset = float(q[30][0]) / eye_mouth
        self.jaw_asymmetry = (jaw_l - jaw_r) / max(jaw_l + jaw_r, 1e-6)
        self.nose_height = float(q[30][1]) / eye_mouth
        self.chin_drop = float(q[8][1] - mouth[1]) / eye_mouth
        self.bridge_height = float(q[27][1]) / eye_mouth

    def yaw_features(self, net_yaw: float) -> tuple[float, ...]:
        return (net_yaw, self.nose_offset, self.jaw_asymmetry, 1.0)

    def pitch_features(self, net_pitch: float) -> tuple[float, ...]:
        return (net_pitch, self.nose_height, self.chin_drop, self.bridge_height, 1.0)


def _dot(w: tuple[float, ...], x: tuple[float, ...]) -> float:
    return float(sum(a * b for a, b in zip(w, x, strict=True)))


def _clamp(v: float, limit: float = 90.0) -> float:
    return max(-limit, min(limit, v))


def _robust(fused: float, geometry: float) -> float:
    return geometry if abs(fused - geometry) > DISAGREEMENT_DEGREES else fused


def fuse(
    net: tuple[float, float, float], points68: npt.NDArray[np.float32]
) -> tuple[float, float, float]:
    """Calibrated (yaw, pitch, roll) from the network's angles and the 68 landmarks."""
    net_yaw, net_pitch, _ = net
    geo = LandmarkGeometry(points68)
    if not all(math.isfinite(v) for v in (geo.nose_offset, geo.nose_height, geo.chin_drop)):
        return _clamp(net_yaw), _clamp(net_pitch), _clamp(net[2])
    yaw_features = geo.yaw_features(net_yaw)
    pitch_features = geo.pitch_features(net_pitch)
    geo_yaw = _dot(YAW_GEOMETRY_WEIGHTS, yaw_features[1:])
    if abs(net_yaw) > PROFILE_DEGREES and net_yaw * geo_yaw > 0:
        yaw = net_yaw
    else:
        yaw = _robust(_dot(YAW_WEIGHTS, yaw_features), geo_yaw)
    pitch = _robust(
        _dot(PITCH_WEIGHTS, pitch_features), _dot(PITCH_GEOMETRY_WEIGHTS, pitch_features[1:])
    )
    return _clamp(yaw), _clamp(pitch), geo.roll


def geometry_pose(points68: npt.NDArray[np.float32]) -> tuple[float, float, float]:
    """Coarse (yaw, pitch, roll) from the landmarks alone, without the pose network: about
    7.8 deg yaw / 9.4 deg pitch MAE on Pointing'04 series 2, and free. Good enough for a
    quality gate; the guided capture uses `fuse`."""
    geo = LandmarkGeometry(points68)
    yaw = _dot(YAW_GEOMETRY_WEIGHTS, geo.yaw_features(0.0)[1:])
    pitch = _dot(PITCH_GEOMETRY_WEIGHTS, geo.pitch_features(0.0)[1:])
    if not (math.isfinite(yaw) and math.isfinite(pitch)):
        return 0.0, 0.0, geo.roll
    return _clamp(yaw), _clamp(pitch), geo.roll
