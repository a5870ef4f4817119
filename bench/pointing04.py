"""Pointing'04 (persons 01-10) through the default pack: samples for pose fitting and the bench."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from facegate.vision.faceplugin import FacepluginAnalyzer
from facegate.vision.images import read_image

ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "pose" / "pointing04"


@dataclass
class Sample:
    path: str
    series: int
    yaw: float  # label
    pitch: float  # label
    detected: bool
    net: tuple[float, float, float] = (0.0, 0.0, 0.0)
    points68: npt.NDArray[np.float32] | None = None
    fused: tuple[float, float, float] = (0.0, 0.0, 0.0)


def in_range(s: Sample, max_yaw: float = 45, max_pitch: float = 30) -> bool:
    return abs(s.yaw) <= max_yaw and abs(s.pitch) <= max_pitch


def samples(analyzer: FacepluginAnalyzer, root: Path = ROOT, max_yaw: float = 60) -> list[Sample]:
    """Every labelled image with |yaw| <= max_yaw; the face is the detection covering the
    labelled face centre (other detections are background)."""
    out: list[Sample] = []
    with (root / "manifest.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        yaw, pitch = float(row["yaw"]), float(row["pitch"])
        if abs(yaw) > max_yaw or abs(pitch) > 30:
            continue
        frame = read_image(root / row["path"])
        cx, cy = float(row["face_cx"]), float(row["face_cy"])
        hit = next(
            (
                d
                for d in analyzer.detect(frame)
                if d.bbox[0] <= cx <= d.bbox[2] and d.bbox[1] <= cy <= d.bbox[3]
            ),
            None,
        )
        sample = Sample(row["path"], int(row["series"]), yaw, pitch, hit is not None)
        if hit is not None:
            sample.net = analyzer.pose_net(frame, hit.bbox)
            sample.points68 = hit.dense_landmarks
            sample.fused = analyzer.head_pose(frame, hit)
        out.append(sample)
    return out
