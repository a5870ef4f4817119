"""`make bench`: facegate and a peer, face_recognition 1.3 (dlib), side by side in one run.

Both systems see the same LFW pairs (../shared/data/faces/lfw_devtrain/pairs.csv) and the same
decoded frames of the ../shared/data/video clips. Printed for each, with the ratios:
accuracy at the system's own default threshold (facegate: cosine >= recognition.threshold;
face_recognition: Euclidean distance <= 0.6, its default tolerance), best accuracy over all
thresholds (chosen on the same pairs: an optimistic ceiling), ROC AUC, TAR at FAR 1e-2 (the
facegate.identity.verification helpers; face_recognition's score is -distance), pairs with no face,
seconds per image (detection + embedding of the photo's face; decoding not timed) and seconds
per video frame (detect every face + embed each).

One thread each: OMP/OpenBLAS/MKL threads = 1 in both processes, onnxruntime intra-op threads =
1 and cv2.setNumThreads(1) for facegate; dlib's HOG and its DNN (dlib-bin is built without
BLAS) run on one thread. The systems run one after the other, never at once.

face_recognition runs as a subprocess in its own venv (never in facegate's dependencies),
made on first use under ~/.cache/facegate/bench-venv-face_recognition and reused after
(see PEER_INSTALL); when it cannot be installed, a skip line says why and facegate's figures
are still printed. facegate runs in-process: open_analyzer(load_settings()) and main_face.

    python bench/peers.py [--quick] [--pairs N] [--python python3.11]

--quick: 200 pairs (sampled with seed 0) and one clip, for development.
"""

from __future__ import annotations

import os

# One thread for every numeric library, in this process and in the peer's (which inherits it).
os.environ.update(
    {
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "NUMEXPR_NUM_THREADS": "1",
        "VECLIB_MAXIMUM_THREADS": "1",
    }
)

import argparse
import json
import math
import random
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import msgspec
import numpy as np
import numpy.typing as npt

from facegate.identity.verification import Pair, VerificationReport, read_pairs, report
from facegate.settings import load_settings
from facegate.vision.analyzers import open_analyzer
from facegate.vision.face import FaceAnalyzer, main_face
from facegate.vision.images import ImageError, read_image

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1] / "shared" / "data"
LFW = DATA / "faces" / "lfw_devtrain"
VIDEO = DATA / "video"
WORKER = HERE / "peers" / "fr_worker.py"
QUICK_PAIRS = 200
QUICK_CLIP = "intel_face-demographics-walking-and-pause.mp4"
SEED = 0
FR_TOLERANCE = 0.6  # face_recognition.compare_faces: same person when distance <= 0.6
FAR = 1e-2

PEER = "face_recognition"
# What the bench installs into the peer's venv. face_recognition 1.3.0 asks for `dlib`, which
# PyPI only has as source (a long C++ build): it is installed without its dependencies, and
# dlib comes from dlib-bin (the same dlib, prebuilt). face_recognition_models reads its model
# files with pkg_resources, which setuptools 81 dropped.
PEER_NO_DEPS = ["face_recognition==1.3.0"]
PEER_DEPS = [
    "dlib-bin==20.0.1.post1",
    "face_recognition_models==0.3.0",
    "numpy",
    "Pillow",
    "Click>=6.0",
    "setuptools<81",
]
SMOKE = "import dlib, face_recognition; print('peer-ok', dlib.__version__)"


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "facegate"


def peer_install(python: str, venv: Path) -> list[tuple[str, list[str]]]:
    """(what, command) for each step of making the peer's venv."""
    py = str(venv / "bin" / "python")
    pip = [py, "-m", "pip", "install", "--disable-pip-version-check"]
    return [
        (f"{python} -m venv", [python, "-m", "venv", "--clear", str(venv)]),
        ("pip install --no-deps " + " ".join(PEER_NO_DEPS), [*pip, "--no-deps", *PEER_NO_DEPS]),
        ("pip install " + " ".join(PEER_DEPS), [*pip, *PEER_DEPS]),
        ("import dlib, face_recognition", [py, "-c", SMOKE]),
    ]


def peer_venv(python: str) -> tuple[Path | None, str]:
    """The peer's venv, made (or reused) here; (None, why) when it cannot be installed."""
    venv = cache_dir() / f"bench-venv-{PEER}"
    marker = venv / ".facegate-bench"
    want = json.dumps(PEER_NO_DEPS + PEER_DEPS)
    if marker.is_file() and marker.read_text() == want:
        return venv, f"reusing {venv}"
    print(f"installing {PEER} into {venv}:")
    for what, cmd in peer_install(python, venv):
        print("  $ " + shlex.join(cmd))
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, check=False)
        except OSError as exc:
            return None, f"cannot run {cmd[0]}: {exc}"
        if out.returncode != 0 or (cmd[1] == "-c" and "peer-ok" not in out.stdout):
            text = (out.stdout + out.stderr).strip().splitlines()
            errors = [line for line in text if line.startswith("ERROR")] or text[-12:]
            return None, f"`{what}` failed (exit {out.returncode}): " + " | ".join(errors)
    marker.write_text(want)
    return venv, f"installed into {venv}"


@dataclass
class Timed:
    """Wall and CPU seconds per item (image or frame), and faces found in it."""

    seconds: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    faces: list[int] = field(default_factory=list)


@dataclass
class Run:
    """One system's results: an embedding (or None) per image, timings, face counts."""

    embeddings: list[npt.NDArray[np.float64] | None] = field(default_factory=list)
    images: Timed = field(default_factory=Timed)
    clips: dict[str, Timed] = field(default_factory=dict)
    total: float = 0.0  # wall seconds of the whole run, loading and decoding included
    note: str = ""

    def frames(self) -> Timed:
        return Timed(
            [x for t in self.clips.values() for x in t.seconds],
            [x for t in self.clips.values() for x in t.cpu],
            [x for t in self.clips.values() for x in t.faces],
        )


def read_clip(path: Path) -> list[npt.NDArray[np.uint8]]:
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, img = cap.read()
        if not ok:
            break
        frames.append(np.asarray(img, np.uint8))
    cap.release()
    return frames


def run_facegate(
    analyzer: FaceAnalyzer, images: list[Path], clips: dict[str, list[npt.NDArray[np.uint8]]]
) -> Run:
    start = time.perf_counter()
    run = Run()
    main_face(analyzer, read_image(images[0]), pose=False)  # warm-up, untimed (as the peer's)
    for path in images:
        try:
            img = read_image(path)
        except ImageError:
            run.embeddings.append(None)
            run.images.faces.append(0)
            continue
        c0, t0 = time.process_time(), time.perf_counter()
        face, n = main_face(analyzer, img, pose=False)
        t1, c1 = time.perf_counter(), time.process_time()
        run.images.seconds.append(t1 - t0)
        run.images.cpu.append(c1 - c0)
        run.images.faces.append(n)
        emb = None if face is None else face.embedding
        run.embeddings.append(None if emb is None else emb.astype(np.float64))
    for name, frames in clips.items():
        timed = run.clips[name] = Timed()
        for frame in frames:
            c0, t0 = time.process_time(), time.perf_counter()
            found = analyzer.analyze(frame, embed=True, pose=False)
            t1, c1 = time.perf_counter(), time.process_time()
            timed.seconds.append(t1 - t0)
            timed.cpu.append(c1 - c0)
            timed.faces.append(len(found))
    run.total = time.perf_counter() - start
    return run


def run_peer(
    venv: Path, images: list[Path], clips: dict[str, list[npt.NDArray[np.uint8]]], tmp: Path
) -> Run | str:
    """face_recognition in its venv, through bench/peers/fr_worker.py; a string says why not."""
    start = time.perf_counter()
    job_clips = []
    for name, frames in clips.items():
        npy = tmp / f"{Path(name).stem}.rgb.npy"
        np.save(npy, np.ascontiguousarray(np.stack(frames)[..., ::-1]))  # the same pixels, RGB
        job_clips.append({"name": name, "frames": str(npy)})
    job = tmp / "fr_job.json"
    job.write_text(
        json.dumps({"images": [str(p) for p in images], "clips": job_clips, "out": str(tmp)})
    )
    out = subprocess.run(
        [str(venv / "bin" / "python"), str(WORKER), str(job)],
        capture_output=True,
        text=True,
        check=False,
        env=os.environ.copy(),
    )
    if out.returncode != 0 or not (tmp / "fr_result.json").is_file():
        tail = " | ".join(out.stderr.strip().splitlines()[-6:])
        return f"worker exited {out.returncode}: {tail}"
    res = json.loads((tmp / "fr_result.json").read_text())
    emb = np.load(tmp / "fr_embeddings.npy")
    run = Run(
        [None if np.isnan(row).any() else row for row in emb],
        Timed(res["image_seconds"], res["image_cpu"], res["image_faces"]),
        {c["name"]: Timed(c["seconds"], c["cpu"], c["faces"]) for c in res["clips"]},
    )
    versions = ", ".join(f"{k} {v}" for k, v in res["versions"].items())
    dlib = res["dlib"]
    run.note = f"{versions}; dlib AVX {dlib['avx']}, BLAS {dlib['blas']}, CUDA {dlib['cuda']}"
    run.total = time.perf_counter() - start
    return run


def pair_scores(
    run: Run, index: dict[Path, int], pairs: list[Pair], score: str
) -> list[float | None]:
    out: list[float | None] = []
    for p in pairs:
        a, b = run.embeddings[index[LFW / p.file_x]], run.embeddings[index[LFW / p.file_y]]
        if a is None or b is None:
            out.append(None)
        elif score == "cosine":
            out.append(float(a @ b))
        else:  # -Euclidean distance, as face_recognition.face_distance
            out.append(-float(np.linalg.norm(a - b)))
    return out


def best_accuracy(scores: list[float | None], pairs: list[Pair]) -> tuple[float, float]:
    """(best accuracy over all thresholds "same when score >= t", that threshold)."""
    scored = [(s, p.same) for s, p in zip(scores, pairs, strict=True) if s is not None]
    if not scored:
        return math.nan, math.nan
    s = np.array([x for x, _ in scored])
    same = np.array([y for _, y in scored])
    order = np.argsort(-s, kind="mergesort")
    s, same = s[order], same[order]
    impostors = int((~same).sum())
    # Threshold at s[k] accepts s[0..k]: right are the genuine accepted + impostors rejected.
    correct = np.cumsum(same) + impostors - np.cumsum(~same)
    last_of_tie = np.r_[s[1:] != s[:-1], True]
    k = int(np.argmax(np.where(last_of_tie, correct, -1)))
    if impostors >= correct[k]:  # accepting nothing is at least as good
        return impostors / len(s), math.inf
    return float(correct[k]) / len(s), float(s[k])


@dataclass
class Quality:
    rep: VerificationReport
    best: float
    best_threshold: float
    common_auc: float  # over the pairs that both systems scored
    common_best: float
    tar: float  # at the system's default threshold: same-person pairs accepted
    far: float  # ... and different-person pairs accepted


def quality(
    scores: list[float | None], common: list[bool], pairs: list[Pair], threshold: float
) -> Quality:
    rep = report(scores, pairs, threshold, FAR)
    best, best_t = best_accuracy(scores, pairs)
    cs = [s if c else None for s, c in zip(scores, common, strict=True)]
    genuine = [x for x, p in zip(scores, pairs, strict=True) if x is not None and p.same]
    impostor = [x for x, p in zip(scores, pairs, strict=True) if x is not None and not p.same]
    return Quality(
        rep,
        best,
        best_t,
        report(cs, pairs, threshold, FAR).auc,
        best_accuracy(cs, pairs)[0],
        tar=sum(x >= threshold for x in genuine) / max(1, len(genuine)),
        far=sum(x >= threshold for x in impostor) / max(1, len(impostor)),
    )


def row(label: str, a: str, b: str, rel: str = "") -> None:
    print(f"  {label:<40} {a:>16} {b:>18}   {rel}".rstrip())


def num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def pick(fr: object, text: str) -> str:
    return text if fr is not None else "skipped"


def ratio(fr: float, fg: float) -> str:
    return f"{fr / fg:.1f}x" if fg > 0 and not math.isnan(fr) else ""


def diff(fr: float, fg: float) -> str:
    return "" if math.isnan(fr) else f"{fr - fg:+.4f}"


def print_table(
    *,
    fg: Run,
    fr: Run | None,
    qg: Quality,
    qr: Quality | None,
    n_pairs: int,
    clips: dict[str, list[npt.NDArray[np.uint8]]],
) -> None:
    nan = math.nan
    row("", "facegate", PEER, f"{PEER} vs facegate")
    metrics: tuple[tuple[str, Callable[[Quality], float | None]], ...] = (
        ("accuracy at default threshold", lambda q: q.rep.accuracy),
        ("  TAR at default threshold", lambda q: q.tar),
        ("  FAR at default threshold", lambda q: q.far),
        ("best accuracy (threshold fit on pairs)", lambda q: q.best),
        ("ROC AUC", lambda q: q.rep.auc),
        # None where the impostor pairs are too few to measure it (the report says why)
        ("TAR at FAR 1e-2", lambda q: q.rep.tar_far_2),
    )
    for label, get in metrics:
        a, b = get(qg), get(qr) if qr else nan
        if a is None or b is None:
            why = getattr(qg.rep, "tar_far_2_note", None) or "not measurable"
            row(label, num(a), pick(qr, num(b)), f"({why})")
        else:
            row(label, num(a), pick(qr, num(b)), diff(b, a))
    row(
        "  the best threshold",
        f"cos >= {qg.best_threshold:.3f}",
        pick(qr, f"dist <= {-qr.best_threshold:.3f}" if qr else ""),
    )
    row(
        "pairs with no face found",
        f"{qg.rep.no_face} of {n_pairs}",
        pick(qr, f"{qr.rep.no_face} of {n_pairs}" if qr else ""),
    )
    if qr is not None:
        row(
            "ROC AUC, pairs both scored",
            f"{qg.common_auc:.4f}",
            f"{qr.common_auc:.4f}",
            diff(qr.common_auc, qg.common_auc),
        )
        row(
            "best accuracy, pairs both scored",
            f"{qg.common_best:.4f}",
            f"{qr.common_best:.4f}",
            diff(qr.common_best, qg.common_best),
        )

    def speed(label: str, a: Timed, b: Timed | None) -> None:
        for what, fn in (("wall", statistics.fmean), ("median wall", statistics.median)):
            x, y = fn(a.seconds), fn(b.seconds) if b else nan
            row(f"{label}, {what}", f"{x:.4f}", pick(b, f"{y:.4f}"), ratio(y, x))
        x, y = statistics.fmean(a.cpu), statistics.fmean(b.cpu) if b else nan
        row(f"{label}, CPU", f"{x:.4f}", pick(b, f"{y:.4f}"), ratio(y, x))

    speed("s per image", fg.images, fr.images if fr else None)
    for name, frames in clips.items():
        h, w = frames[0].shape[:2]
        tg, tr = fg.clips[name], fr.clips[name] if fr else None
        x, y = statistics.fmean(tg.seconds), statistics.fmean(tr.seconds) if tr else nan
        fa, fb = statistics.fmean(tg.faces), statistics.fmean(tr.faces) if tr else nan
        print(f"  {name} ({len(frames)} frames, {w}x{h})")
        row("  s per frame, wall", f"{x:.4f}", pick(tr, f"{y:.4f}"), ratio(y, x))
        row("  faces per frame", f"{fa:.2f}", pick(tr, f"{fb:.2f}"))
    frames_fg = fg.frames()
    speed(f"s per frame, all {len(frames_fg.seconds)}", frames_fg, fr.frames() if fr else None)
    fa = statistics.fmean(frames_fg.faces)
    fb = statistics.fmean(fr.frames().faces) if fr else nan
    row("faces per frame, all", f"{fa:.2f}", pick(fr, f"{fb:.2f}"))

    def busy(r: Run) -> float:
        return (sum(r.images.cpu) + sum(r.frames().cpu)) / (
            sum(r.images.seconds) + sum(r.frames().seconds)
        )

    row(
        "CPU / wall, timed parts",
        f"{busy(fg):.2f}",
        pick(fr, f"{busy(fr):.2f}" if fr else ""),
        "(1.00: one thread, never waiting)",
    )
    row(
        "wall s of the system's whole part",
        f"{fg.total:.0f}",
        pick(fr, f"{fr.total:.0f}" if fr else ""),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="200 pairs and one clip")
    ap.add_argument("--pairs", type=int, help="sample this many pairs (seed 0)")
    ap.add_argument("--python", default="python3.11", help="python that makes the peer's venv")
    args = ap.parse_args()
    if not LFW.is_dir() or not VIDEO.is_dir():
        sys.exit(f"shared data not found at {DATA}")
    t_start = time.perf_counter()
    cv2.setNumThreads(1)

    all_pairs = read_pairs(LFW / "pairs.csv")
    n_pairs = QUICK_PAIRS if args.quick and args.pairs is None else args.pairs
    if n_pairs is not None and n_pairs < len(all_pairs):
        keep = sorted(random.Random(SEED).sample(range(len(all_pairs)), n_pairs))
        pairs = [all_pairs[i] for i in keep]
        sampled = f"{len(pairs)} of {len(all_pairs)} pairs, sampled with seed {SEED}"
    else:
        pairs = all_pairs
        sampled = f"all {len(pairs)} pairs"
    images = list(dict.fromkeys(LFW / n for p in pairs for n in (p.file_x, p.file_y)))
    index = {path: i for i, path in enumerate(images)}
    names = [QUICK_CLIP] if args.quick else sorted(p.name for p in VIDEO.glob("*.mp4"))
    clips = {name: read_clip(VIDEO / name) for name in names}

    print(
        f"== peers: facegate vs {PEER} on LFW devtrain ({sampled}, {len(images)} images)"
        f" and {len(clips)} clip(s) of ../shared/data/video =="
    )
    venv, how = peer_venv(args.python)
    if venv is not None:
        print(f"{PEER}: {how}")

    settings = load_settings()
    settings = msgspec.structs.replace(
        settings, models=msgspec.structs.replace(settings.models, threads=1)
    )
    analyzer = open_analyzer(settings)
    threshold = settings.recognition.threshold
    fg = run_facegate(analyzer, images, clips)

    fr: Run | None = None
    with tempfile.TemporaryDirectory(prefix="facegate-peers-") as tmp:
        if venv is not None:
            got = run_peer(venv, images, clips, Path(tmp))
            if isinstance(got, str):
                how = got
            else:
                fr = got
    if fr is None:
        print(f"SKIP {PEER}: {how}")

    fg_scores = pair_scores(fg, index, pairs, "cosine")
    fr_scores: list[float | None] = [None] * len(pairs)
    if fr is not None:
        fr_scores = pair_scores(fr, index, pairs, "distance")
    common = [a is not None and b is not None for a, b in zip(fg_scores, fr_scores, strict=True)]
    qg = quality(fg_scores, common, pairs, threshold)
    qr = quality(fr_scores, common, pairs, -FR_TOLERANCE) if fr else None

    print(
        f"\nfacegate: pack {settings.models.pack}, main_face (pose off), analyze(pose off) per"
        f" frame; same person when cosine >= {threshold} (recognition.threshold)"
    )
    several = sum(n > 1 for n in fg.images.faces)
    print(f"  several faces in {several} of {len(images)} LFW images: main_face chooses")
    if fr:
        print(
            f"{PEER}: {fr.note}; library defaults: face_locations (HOG, upsample 1),"
            f" face_encodings (5-point landmarks, 1 jitter); same person when distance <="
            f" {FR_TOLERANCE} (its default tolerance), score = -distance"
        )
        several = sum(n > 1 for n in fr.images.faces)
        print(
            f"  several faces in {several} of {len(images)} LFW images: the one nearest the"
            " image centre is embedded (LFW centres its subject)"
        )
    print(
        "one thread each: OMP/OPENBLAS/MKL_NUM_THREADS=1, onnxruntime intra-op threads 1,"
        " cv2.setNumThreads(1); run one after the other; decoding not timed;"
        f" pairs both scored: {sum(common)}\n"
    )
    print_table(fg=fg, fr=fr, qg=qg, qr=qr, n_pairs=len(pairs), clips=clips)
    print(f"\n(cpu count {os.cpu_count()}; bench wall time {time.perf_counter() - t_start:.0f} s)")


if __name__ == "__main__":
    main()
