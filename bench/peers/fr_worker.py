"""The face_recognition side of bench/peers.py, run in the peer's own venv (never facegate's).

    python fr_worker.py JOB.json

JOB.json: {"images": [path, ...], "clips": [{"name": str, "frames": path.npy}], "out": dir}.
Each clip's .npy holds its decoded frames (RGB, uint8, frames x height x width x 3), decoded
once by bench/peers.py so that both systems see the same pixels.

Writes to `out`: fr_embeddings.npy (images x 128, float64, NaN rows where no face was found)
and fr_result.json (per-image seconds and face counts, per-clip per-frame seconds and face
counts, with the CPU time of each, versions). Library defaults throughout:
face_locations(img) (HOG, upsampled once) and face_encodings(img, boxes) (5-point landmarks,
num_jitters=1). Decoding is not timed. When an image holds several faces, the one whose box
centre is nearest the image centre is embedded (LFW centres its subject).
"""

from __future__ import annotations

import json
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import dlib  # type: ignore[import-not-found]
import face_recognition  # type: ignore[import-not-found]
import numpy as np


def nearest_centre(boxes: list[tuple[int, int, int, int]], h: int, w: int) -> int:
    """Index of the (top, right, bottom, left) box whose centre is nearest the image centre."""

    def dist(box: tuple[int, int, int, int]) -> float:
        top, right, bottom, left = box
        return float(((top + bottom) / 2 - h / 2) ** 2 + ((left + right) / 2 - w / 2) ** 2)

    return min(range(len(boxes)), key=lambda i: dist(boxes[i]))


def photo_face(img: Any) -> tuple[Any, int]:
    """Detection + embedding of the photo's face: (128-d encoding or None, faces found)."""
    boxes = face_recognition.face_locations(img)
    if not boxes:
        return None, 0
    chosen = boxes[nearest_centre(boxes, img.shape[0], img.shape[1])]
    return face_recognition.face_encodings(img, [chosen])[0], len(boxes)


def main() -> None:
    job = json.loads(Path(sys.argv[1]).read_text())
    out = Path(job["out"])
    paths = job["images"]
    photo_face(face_recognition.load_image_file(paths[0]))  # warm-up, untimed (as facegate's)
    emb = np.full((len(paths), 128), np.nan)
    seconds: list[float] = []
    cpu_seconds: list[float] = []
    faces: list[int] = []
    for i, path in enumerate(paths):
        img = face_recognition.load_image_file(path)
        c0, t0 = time.process_time(), time.perf_counter()
        enc, n = photo_face(img)
        t1, c1 = time.perf_counter(), time.process_time()
        seconds.append(t1 - t0)
        cpu_seconds.append(c1 - c0)
        faces.append(n)
        if enc is not None:
            emb[i] = enc
    np.save(out / "fr_embeddings.npy", emb)
    clips = []
    for clip in job["clips"]:
        frames = np.load(clip["frames"])
        frame_seconds: list[float] = []
        frame_cpu: list[float] = []
        frame_faces: list[int] = []
        for raw in frames:
            frame = np.ascontiguousarray(raw)
            c0, t0 = time.process_time(), time.perf_counter()
            boxes = face_recognition.face_locations(frame)
            encs = face_recognition.face_encodings(frame, boxes)
            t1, c1 = time.perf_counter(), time.process_time()
            frame_seconds.append(t1 - t0)
            frame_cpu.append(c1 - c0)
            frame_faces.append(len(encs))
        clips.append(
            {"name": clip["name"], "seconds": frame_seconds, "cpu": frame_cpu, "faces": frame_faces}
        )
    result = {
        "image_seconds": seconds,
        "image_cpu": cpu_seconds,
        "image_faces": faces,
        "clips": clips,
        "versions": {
            "face_recognition": metadata.version("face_recognition"),
            "dlib-bin": metadata.version("dlib-bin"),
            "face_recognition_models": metadata.version("face_recognition_models"),
            "numpy": np.__version__,
        },
        "dlib": {
            "avx": bool(dlib.USE_AVX_INSTRUCTIONS),
            "blas": bool(dlib.DLIB_USE_BLAS),
            "cuda": bool(dlib.DLIB_USE_CUDA),
        },
    }
    (out / "fr_result.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
