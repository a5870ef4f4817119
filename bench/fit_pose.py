"""Fit the pose fusion of `facegate.vision.headpose` on Pointing'04 series 1; report series 2.

.venv/bin/python bench/fit_pose.py   # prints the weights to paste into vision/headpose.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from facegate.settings import load_settings, models_dir
from facegate.vision.faceplugin import FacepluginAnalyzer
from facegate.vision.headpose import LandmarkGeometry
from pointing04 import ROOT, Sample, in_range, samples

RIDGE = 1e-3


def design(data: list[Sample]) -> tuple[np.ndarray, np.ndarray]:
    xy, xp = [], []
    for s in data:
        assert s.points68 is not None
        geo = LandmarkGeometry(s.points68)
        xy.append(geo.yaw_features(s.net[0]))
        xp.append(geo.pitch_features(s.net[1]))
    return np.array(xy), np.array(xp)


def ridge(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.linalg.solve(x.T @ x + RIDGE * np.eye(x.shape[1]), x.T @ y)


def main() -> None:
    if not ROOT.is_dir():
        sys.exit(f"Pointing'04 not found at {ROOT}")
    model_dir = models_dir(load_settings()) / "faceplugin"
    data = [s for s in samples(FacepluginAnalyzer(model_dir)) if s.detected]
    train = [s for s in data if s.series == 1]
    xy, xp = design(train)
    wy = ridge(xy, np.array([s.yaw for s in train]))
    wp = ridge(xp, np.array([s.pitch for s in train]))
    gy = ridge(xy[:, 1:], np.array([s.yaw for s in train]))
    gp = ridge(xp[:, 1:], np.array([s.pitch for s in train]))
    for name, w in (
        ("YAW_WEIGHTS", wy),
        ("PITCH_WEIGHTS", wp),
        ("YAW_GEOMETRY_WEIGHTS", gy),
        ("PITCH_GEOMETRY_WEIGHTS", gp),
    ):
        print(name, "=", tuple(round(float(v), 3) for v in w))
    for series in (1, 2):
        test = [s for s in data if s.series == series and in_range(s)]
        ty, tp = design(test)
        yaw_err = np.abs(ty @ wy - np.array([s.yaw for s in test])).mean()
        pitch_err = np.abs(tp @ wp - np.array([s.pitch for s in test])).mean()
        print(
            f"series {series}: linear fusion alone: yaw MAE {yaw_err:.2f}  "
            f"pitch MAE {pitch_err:.2f}  (n={len(test)}; `make bench` reports the shipped rule)"
        )


if __name__ == "__main__":
    main()
