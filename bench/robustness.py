"""`make bench`: how recognition falls with face size and head turn, and what helps at no
model change. Writes the tables of docs/accuracy.md (`--write`) and prints them.

    .venv/bin/python bench/robustness.py [--write] [--pairs 300]

1. Head turn, labelled: Pointing'04 (10 people). Each person's template is their series-1
   frontal photo (or, "all poses", the mean of their series-1 photos at yaw 0, +-30 and pitch
   +-30, as a guided registration captures); probes are their series-2 photos at each yaw
   (pitch 0). Per yaw: the share of probes whose similarity to their own template reaches the
   threshold, and the share identified as the right person among the ten (rank 1, above the
   threshold).
2. Face size: LFW pairs (lfw_devtrain, `--pairs` of them, half genuine), the second photo
   shrunk so the face is S px wide and placed in a 640x480 frame (a webcam seeing a person
   further away). Per S: faces found, accuracy at the threshold, TAR (genuine pairs at or above
   the threshold).
3. Video: the clips of ../shared/data/video with one labelled person (intel_female: a yaw sweep
   from near profile to frontal; intel_male: mostly frontal). Template: the clip's most frontal
   face; every other face by |yaw| bin (the pose model's estimate): count, median similarity,
   share at or above the threshold.
4. At no model change, on all lfw_devtrain pairs: flip-averaged embeddings (the mean of the
   embeddings of the aligned face and of its mirror image) against the plain embedding:
   accuracy at the threshold, AUC, TAR at FAR 1e-3, and the time of the embedding step.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import cv2
import numpy as np
import numpy.typing as npt

from facegate.identity.verification import roc_auc, tar_at, threshold_at_far
from facegate.live.sources import VideoFileSource
from facegate.settings import load_settings
from facegate.vision.analyzers import open_analyzer
from facegate.vision.face import FaceAnalyzer, ImageArray, main_face
from facegate.vision.images import read_image

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
Vector = npt.NDArray[np.float32]


def unit(v: Vector) -> Vector:
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else v


def embed(analyzer: FaceAnalyzer, image: ImageArray) -> Vector | None:
    face, _ = main_face(analyzer, image, pose=False)
    return None if face is None or face.embedding is None else face.embedding


def table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


# -- 1. head turn (Pointing'04) ----------------------------------------------------------------
def head_turn(analyzer: FaceAnalyzer, threshold: float) -> str:
    root = DATA / "pose" / "pointing04"
    with (root / "manifest.csv").open() as fh:
        rows = list(csv.DictReader(fh))

    def photo(identity: str, series: str, yaw: int, pitch: int) -> Path | None:
        for r in rows:
            if (r["identity"], r["series"], int(r["yaw"]), int(r["pitch"])) == (
                identity,
                series,
                yaw,
                pitch,
            ):
                return root / r["path"]
        return None

    people = sorted({r["identity"] for r in rows})
    front: dict[str, Vector] = {}
    poses: dict[str, Vector] = {}
    for person in people:
        views = []
        for yaw, pitch in ((0, 0), (-30, 0), (30, 0), (0, 30), (0, -30)):
            path = photo(person, "1", yaw, pitch)
            vec = embed(analyzer, read_image(path)) if path else None
            if vec is not None:
                views.append(vec)
                if (yaw, pitch) == (0, 0):
                    front[person] = vec
        if views:
            poses[person] = unit(np.mean(views, axis=0).astype(np.float32))
    out = []
    for yaw in range(-90, 91, 15):
        found = 0
        counts = {"front": [0, 0], "poses": [0, 0]}  # [reaches threshold, rank-1 right]
        sims: list[float] = []
        for person in people:
            path = photo(person, "2", yaw, 0)
            probe = embed(analyzer, read_image(path)) if path else None
            if probe is None or person not in front:
                continue
            found += 1
            for name, templates in (("front", front), ("poses", poses)):
                scores = {p: float(probe @ t) for p, t in templates.items()}
                own = scores[person]
                if name == "front":
                    sims.append(own)
                counts[name][0] += own >= threshold
                best = max(scores, key=lambda p: scores[p])
                counts[name][1] += best == person and scores[best] >= threshold
        n = len(people)
        out.append(
            [
                f"{yaw:+d}",
                f"{found}/{n}",
                f"{statistics.median(sims):.2f}" if sims else "-",
                f"{counts['front'][0]}/{n}",
                f"{counts['front'][1]}/{n}",
                f"{counts['poses'][0]}/{n}",
                f"{counts['poses'][1]}/{n}",
            ]
        )
    return table(
        [
            "yaw (deg)",
            "face found",
            "median similarity",
            "reaches threshold (front template)",
            "identified (front)",
            "reaches threshold (5-pose template)",
            "identified (5 poses)",
        ],
        out,
    )


# -- 2. face size (LFW pairs, shrunk) ------------------------------------------------------------
def lfw_pairs(limit: int | None, seed: int = 7) -> list[tuple[str, str, bool]]:
    root = DATA / "faces" / "lfw_devtrain"
    with (root / "pairs.csv").open() as fh:
        pairs = [
            (r["file_x"], r["file_y"], r["decision"].strip().lower() in ("yes", "1", "true"))
            for r in csv.DictReader(fh)
        ]
    if limit is None:
        return pairs
    rng = random.Random(seed)
    same = [p for p in pairs if p[2]]
    other = [p for p in pairs if not p[2]]
    return rng.sample(same, limit // 2) + rng.sample(other, limit - limit // 2)


def shrunk(image: ImageArray, face_px: float, width: float) -> ImageArray:
    """The photo scaled so its face is `face_px` wide, centred in a 640x480 grey frame."""
    scale = face_px / width
    small = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    frame = np.full((480, 640, 3), 90, np.uint8)
    h, w = small.shape[:2]
    y, x = (480 - h) // 2, (640 - w) // 2
    frame[y : y + h, x : x + w] = small
    return frame


def face_size(analyzer: FaceAnalyzer, threshold: float, limit: int) -> str:
    root = DATA / "faces" / "lfw_devtrain"
    pairs = lfw_pairs(limit)
    refs: dict[str, Vector | None] = {}
    widths: dict[str, float] = {}
    for a, b, _ in pairs:
        if a not in refs:
            refs[a] = embed(analyzer, read_image(root / a))
        if b not in widths:
            face, _ = main_face(analyzer, read_image(root / b), pose=False)
            widths[b] = 0.0 if face is None else face.bbox[2] - face.bbox[0]
    out = []
    for px in (112, 80, 64, 48, 40, 32, 24, 20):
        found = right = genuine = genuine_ok = scored = 0
        for a, b, same in pairs:
            ref = refs[a]
            if ref is None or not widths[b]:
                continue
            probe = embed(analyzer, shrunk(read_image(root / b), px, widths[b]))
            if probe is None:
                genuine += same
                continue
            found += 1
            scored += 1
            sim = float(ref @ probe)
            right += (sim >= threshold) == same
            if same:
                genuine += 1
                genuine_ok += sim >= threshold
        total = sum(1 for a, b, _ in pairs if refs[a] is not None and widths[b])
        out.append(
            [
                str(px),
                f"{found}/{total}",
                f"{right / scored:.3f}" if scored else "-",
                f"{genuine_ok / genuine:.3f}" if genuine else "-",
            ]
        )
    return table(
        ["face width (px)", "face found", "accuracy (found)", "TAR at threshold (all genuine)"],
        out,
    )


# -- 3. video clips --------------------------------------------------------------------------------
def video(analyzer: FaceAnalyzer, threshold: float) -> str:
    out = []
    for who in ("female", "male"):
        clip = f"intel_head-pose-face-detection-{who}.mp4"
        source = VideoFileSource(DATA / "video" / clip)
        source.open()
        faces = []
        while (image := source.read()) is not None:
            for det in analyzer.detect(image):
                face = analyzer.describe(image, det, embed=True, pose=True)
                if face.embedding is not None and face.yaw is not None:
                    faces.append(face)
        source.close()
        if not faces:
            continue
        anchor = min(faces, key=lambda f: abs(f.yaw or 0) + abs(f.pitch or 0))
        assert anchor.embedding is not None
        bins: dict[str, list[float]] = {}
        for face in faces:
            if face is anchor or face.embedding is None:
                continue
            yaw = abs(face.yaw or 0.0)
            key = "<15" if yaw < 15 else "15-30" if yaw < 30 else "30-45" if yaw < 45 else ">=45"
            bins.setdefault(key, []).append(float(face.embedding @ anchor.embedding))
        for key in ("<15", "15-30", "30-45", ">=45"):
            sims = bins.get(key, [])
            if sims:
                out.append(
                    [
                        who,
                        key,
                        str(len(sims)),
                        f"{statistics.median(sims):.2f}",
                        f"{sum(s >= threshold for s in sims) / len(sims):.2f}",
                    ]
                )
    return table(
        ["clip", "abs(yaw) (deg)", "faces", "median similarity", "at or above threshold"], out
    )


# -- 4. flip-averaged embeddings -------------------------------------------------------------------
def flip_average(analyzer: FaceAnalyzer, threshold: float) -> str:
    root = DATA / "faces" / "lfw_devtrain"
    pairs = lfw_pairs(None)
    embedder: Callable[[ImageArray], Vector] = analyzer.embed_aligned  # type: ignore[attr-defined]
    plain: dict[str, Vector | None] = {}
    flipped: dict[str, Vector | None] = {}
    t_plain = t_flip = 0.0
    for name in dict.fromkeys(n for a, b, _ in pairs for n in (a, b)):
        face, _ = main_face(analyzer, read_image(root / name), pose=False)
        if face is None or face.aligned is None:
            plain[name] = flipped[name] = None
            continue
        t0 = time.perf_counter()
        one = embedder(face.aligned)
        t1 = time.perf_counter()
        mirror = embedder(np.ascontiguousarray(face.aligned[:, ::-1]))
        t2 = time.perf_counter()
        t_plain += t1 - t0
        t_flip += t2 - t0
        plain[name], flipped[name] = one, unit(one + mirror)
    out = []
    n = len(plain)
    for label, vectors, seconds in (("plain", plain, t_plain), ("flip-averaged", flipped, t_flip)):
        genuine, impostor = [], []
        for a, b, same in pairs:
            va, vb = vectors[a], vectors[b]
            if va is None or vb is None:
                continue
            (genuine if same else impostor).append(float(va @ vb))
        g, i = np.array(genuine), np.array(impostor)
        accuracy = (np.sum(g >= threshold) + np.sum(i < threshold)) / (len(g) + len(i))
        tar3 = tar_at(g, threshold_at_far(i, 1e-3))
        out.append(
            [
                label,
                f"{accuracy:.4f}",
                f"{roc_auc(g, i):.4f}",
                f"{tar3:.4f}",
                f"{1000 * seconds / n:.1f}",
            ]
        )
    return table(
        ["embedding", "accuracy at threshold", "AUC", "TAR at FAR 1e-3", "embedding ms per face"],
        out,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--write", action="store_true", help="write docs/accuracy.md's tables")
    parser.add_argument("--pairs", type=int, default=300, help="LFW pairs for the size table")
    args = parser.parse_args()
    settings = load_settings(environ={})
    analyzer = open_analyzer(settings)
    threshold = settings.recognition.threshold
    started = time.perf_counter()
    sections = [
        ("Head turn: Pointing'04, series-2 probes against series-1 templates", head_turn),
        ("Face size: LFW pairs, the probe shrunk into a 640x480 frame", None),
        ("Video: the labelled one-person clips, against the clip's most frontal face", video),
        ("Flip-averaged embeddings: all lfw_devtrain pairs", flip_average),
    ]
    text = [f"Threshold {threshold} (recognition.threshold); pack {settings.models.pack}.\n"]
    for title, fn in sections:
        body = face_size(analyzer, threshold, args.pairs) if fn is None else fn(analyzer, threshold)
        text.append(f"### {title}\n\n{body}\n")
        print(f"== {title}\n{body}\n", flush=True)
    print(f"({time.perf_counter() - started:.0f} s)")
    if args.write:
        doc = REPO / "docs" / "accuracy.md"
        head = doc.read_text().split("<!-- tables -->")[0] if doc.is_file() else "# Accuracy\n\n"
        doc.write_text(head + "<!-- tables -->\n\n" + "\n".join(text))


if __name__ == "__main__":
    main()
