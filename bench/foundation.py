"""`make bench` for the foundation: verification, pose accuracy and analysis speed.

Prints, on ../shared/data:
- verify-pairs on both deepface pair files (the same code as `facegate verify-pairs`);
- Pointing'04 persons 01-10, |yaw| <= 45 and |pitch| <= 30: detection rate, yaw/pitch mean
  absolute error of the raw pose net and of the fused pose, per series (the fusion was fitted
  on series 1 only, so series 2 is the honest figure), and the pitch sign at |pitch| = 30;
- the median single-thread time of a full analysis (detect, landmarks, pose, embedding) of a
  640x480 frame with one face, per stage.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from facegate.settings import load_settings, models_dir
from facegate.vision.face import StageTimings
from facegate.vision.faceplugin import FacepluginAnalyzer
from facegate.vision.images import read_image
from pointing04 import ROOT as POINTING04
from pointing04 import in_range, samples

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DEEPFACE = DATA / "faces" / "deepface"


def verify_pairs() -> None:
    print("== verify-pairs (facegate verify-pairs --json) ==")
    for name in ("pairs_master.csv", "pairs_pivot.csv"):
        cmd = [
            sys.executable,
            "-m",
            "facegate.cli",
            "verify-pairs",
            str(DEEPFACE / name),
            "--root",
            str(DEEPFACE),
            "--json",
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
        print(
            f"{name}: {out.stdout.strip().splitlines()[-1] if out.stdout.strip() else out.stderr}"
        )


def pose(analyzer: FacepluginAnalyzer) -> None:
    print("\n== Pointing'04 persons 01-10, |yaw| <= 45, |pitch| <= 30 ==")
    data = [s for s in samples(analyzer, max_yaw=45) if in_range(s)]
    for series in (1, 2):
        part = [s for s in data if s.series == series]
        hit = [s for s in part if s.detected]
        rate = len(hit) / len(part)
        lab = np.array([[s.yaw, s.pitch] for s in hit])
        net = np.array([s.net[:2] for s in hit])
        fused = np.array([s.fused[:2] for s in hit])
        raw_mae = np.abs(net - lab).mean(axis=0)
        mae = np.abs(fused - lab).mean(axis=0)
        at30 = np.abs(lab[:, 1]) == 30
        sign = float((np.sign(fused[at30, 1]) == np.sign(lab[at30, 1])).mean())
        bias = (fused - lab).mean(axis=0)
        tag = "fitted on this series" if series == 1 else "held out: the honest figure"
        print(f"series {series} ({tag}): n={len(part)} detection rate {rate:.3f}")
        print(f"  raw net   yaw MAE {raw_mae[0]:.2f}  pitch MAE {raw_mae[1]:.2f}")
        print(
            f"  fused     yaw MAE {mae[0]:.2f}  pitch MAE {mae[1]:.2f}  "
            f"bias yaw {bias[0]:+.2f} pitch {bias[1]:+.2f}  pitch sign right at |30|: {sign:.3f}"
        )


def one_face_frame() -> np.ndarray:
    """A 640x480 frame holding one real face of about 200 px, as a webcam would see it."""
    img = read_image(DEEPFACE / "img1.jpg")
    h, w = img.shape[:2]
    scale = 480 / h
    frame = cv2.resize(img, (round(w * scale), 480), interpolation=cv2.INTER_AREA)
    canvas = np.full((480, 640, 3), 90, np.uint8)
    fw = min(frame.shape[1], 640)
    x0 = (640 - fw) // 2
    canvas[:, x0 : x0 + fw] = frame[:, :fw]
    return canvas


def speed(analyzer: FacepluginAnalyzer, runs: int = 200) -> None:
    print("\n== full analysis of a 640x480 frame with one face, 1 thread ==")
    frame = one_face_frame()
    for _ in range(10):
        analyzer.analyze(frame)
    totals: list[float] = []
    stages: list[StageTimings] = []
    for _ in range(runs):
        t0 = time.perf_counter()
        faces = analyzer.analyze(frame)
        totals.append((time.perf_counter() - t0) * 1e3)
        stages.append(analyzer.timings)
    assert len(faces) == 1, f"expected one face, found {len(faces)}"
    med = {
        k: statistics.median(getattr(s, k) for s in stages)
        for k in ("detect", "landmarks", "align", "pose", "embed")
    }
    print(
        f"median {statistics.median(totals):.1f} ms  p95 {np.percentile(totals, 95):.1f} ms "
        f"(face {faces[0].quality.face_px:.0f} px, {runs} runs)"
    )
    print("  per stage (median ms): " + "  ".join(f"{k} {v:.1f}" for k, v in med.items()))


def main() -> None:
    if not DATA.is_dir():
        sys.exit(f"shared data not found at {DATA}")
    model_dir = models_dir(load_settings()) / "faceplugin"
    analyzer = FacepluginAnalyzer(model_dir, threads=1)
    verify_pairs()
    if POINTING04.is_dir():
        pose(analyzer)
    speed(analyzer)


if __name__ == "__main__":
    main()
