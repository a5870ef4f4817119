"""Re-derive the defaults of recognition.threshold and recognition.duplicate_threshold.

Run: .venv/bin/python bench/calibrate.py   (part of `make bench`; 2-3 minutes on 2 cores)

Procedure (the numbers in settings.toml's [recognition] comments come from this script):

1. Pairs: ../shared/data/faces/lfw_devtrain/pairs.csv (917 same-person, 1,052 different-person
   pairs of LFW photos) and both deepface pair files (pairs_master.csv 300, pairs_pivot.csv 280
   pairs). A pair listed twice (the two deepface files share some) is counted once.
2. Embeddings: every image once, with the default model pack and default settings through
   facegate's own path, `main_face(open_analyzer(Settings()), read_image(path), pose=False)`:
   exactly what `facegate verify-pairs` does, so a change to how the main face is chosen shows
   up here when this is run again. An image without a face, or unreadable, drops its pairs
   (counted per set).
3. Scores: the cosine of the two embeddings; genuine (same person) and impostor (different
   people) scores of the three sets are pooled.
4. Threshold: the higher of two points, rounded UP to 0.01 (the conservative direction, a
   higher threshold accepts no more impostors):
   a. the pair files' FAR 1e-3 point, `facegate.identity.verification.operating_point(genuine,
      impostor, 1e-3)` -- the same code as `verify-pairs`' recommendation (the lowest 4-decimal
      threshold whose measured false-accept rate is <= 1e-3);
   b. the gallery point: a gate compares a stranger with each of its enrolled people, so with
      GALLERY = 100 people a pair FAR f takes a stranger for someone about 100 f of the time.
      At most one visit in 300 (STRANGER_FAR): f = 3.3e-5, measured on every different-person
      pair of the LFW photos (step 6's 4.7 million pairs, ~155 false accepts at that rate).
   The live engine settles an identity by votes over several frames, so a per-frame TAR a
   little lower costs a known person a few frames, while a false accept opens the door.
   Point a: FAR 1e-3 needs >= 1,000 impostor pairs; the pool has ~1,450, so it allows exactly
   one false accept and the threshold sits just above
   the second-highest impostor score. That is a thin estimate: a bootstrap over the impostor
   pairs gives its spread, printed beside it.
5. Printed: the FAR-1e-3 threshold and the default it rounds to; accuracy, TAR and FAR at the
   default per set and pooled (and at the current setting, for comparison); the equal-error
   threshold (where the false-accept and false-reject rates cross) and the EER; the
   duplicate_threshold recommendation (argued below); a block to paste into settings.toml.
6. Cross-check (not used for the defaults): every pair of LFW photos of two different people
   (LFW names each photo's person; ~4.6 million pairs, scored from the same embeddings) is an
   impostor pair, so FAR 1e-3 is measured on thousands of false accepts instead of one. A
   threshold far from step 4's says the pair files' one or two highest impostors decided it.

duplicate_threshold: a registration whose captures score at or above it against an existing
person is refused as a duplicate. Recommended: the same FAR-1e-3 point as `threshold`.
- Not above it: registration is offered for a face recognition called unknown; a duplicate
  threshold above `threshold` would let a person whose captures score like a match (at
  the recognition's own standard) register a second time.
- Not below it, unless the data show it pays. Below the threshold would catch a duplicate
  recognition just missed, and a missed duplicate is the worse error (one person's two
  records compete as best and runner-up, so the margin rule calls their face `ambiguous`;
  erasure must find both), whereas a false refusal is visible and an operator can resolve it.
  But the check compares a registrant with every enrolled person: its false refusals grow
  with the gallery (1 - (1 - FAR)^N, printed for N = 100), the duplicates it catches do not.
  And a duplicate at the camera is scored over several enrolment-quality captures (the mean
  of the best half), so it sits higher above the single-pair genuine scores measured here.
  The script prints the trade of lowering it (to the FAR-2e-3 point and 0.01-0.03 below the
  threshold): genuine pairs newly caught against impostor pairs newly refused. On the
  preliminary run lowering it by 0.01 caught no genuine pair and tripled the pair FAR; if a
  rerun shows genuine pairs gained at least as fast as impostors (as rates), revisit this.
"""

from __future__ import annotations

import math
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from facegate.identity.verification import (
    Pair,
    far_label,
    operating_point,
    read_pairs,
    threshold_at_far,
)
from facegate.settings import Settings
from facegate.vision.analyzers import open_analyzer
from facegate.vision.face import FaceAnalyzer, main_face
from facegate.vision.images import ImageError, read_image

Scores = npt.NDArray[np.float64]
FACES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "faces"
LFW = FACES / "lfw_devtrain"
DEEPFACE = FACES / "deepface"
SETS = (
    ("lfw_devtrain", LFW / "pairs.csv", LFW),
    ("deepface/pairs_master", DEEPFACE / "pairs_master.csv", DEEPFACE),
    ("deepface/pairs_pivot", DEEPFACE / "pairs_pivot.csv", DEEPFACE),
)
TARGET_FAR = 1e-3  # recognition.target_far: the recognition threshold's operating point
DUPLICATE_FAR = 2e-3  # twice that budget: the duplicate threshold's operating point
GALLERY = 100  # persons enrolled at a gate (a home, a small office)
# A gate compares a stranger with every enrolled person, so the chance that one of them takes
# the stranger is about GALLERY x the pair FAR. At most one stranger's visit in 300 may be
# taken for someone: a pair FAR of 1/300/100 = 3.3e-5, which the pair files (~1,400 impostor
# pairs) cannot measure but the 4.7 million different-person LFW pairs can (~155 accepts).
STRANGER_FAR = 1 / 300
GALLERY_FAR = STRANGER_FAR / GALLERY
BOOTSTRAP = 2000
Embedding = npt.NDArray[np.float32] | None | ImageError  # None: no face found


@dataclass
class PairSet:
    name: str
    genuine: list[float] = field(default_factory=list)
    impostor: list[float] = field(default_factory=list)
    pairs: int = 0
    repeated: int = 0  # pairs already counted in an earlier set
    no_face: int = 0
    errors: int = 0

    def arrays(self) -> tuple[Scores, Scores]:
        return np.array(self.genuine, np.float64), np.array(self.impostor, np.float64)


def embed(analyzer: FaceAnalyzer, path: Path) -> Embedding:
    try:
        face, _ = main_face(analyzer, read_image(path), pose=False)
    except ImageError as exc:
        return exc
    return None if face is None else face.embedding


def collect(analyzer: FaceAnalyzer) -> tuple[list[PairSet], dict[Path, Embedding]]:
    cache: dict[Path, Embedding] = {}
    seen: dict[frozenset[Path], bool] = {}
    sets: list[PairSet] = []
    for name, csv_path, root in SETS:
        s = PairSet(name)
        pairs: list[Pair] = read_pairs(csv_path)
        for p in pairs:
            s.pairs += 1
            x, y = (root / p.file_x).resolve(), (root / p.file_y).resolve()
            key = frozenset((x, y))
            if key in seen:
                if seen[key] != p.same:
                    sys.exit(f"{csv_path}: {p.file_x},{p.file_y} labelled both ways")
                s.repeated += 1
                continue
            seen[key] = p.same
            ex = cache[x] if x in cache else cache.setdefault(x, embed(analyzer, x))
            ey = cache[y] if y in cache else cache.setdefault(y, embed(analyzer, y))
            if isinstance(ex, ImageError) or isinstance(ey, ImageError):
                s.errors += 1
            elif ex is None or ey is None:
                s.no_face += 1
            else:
                (s.genuine if p.same else s.impostor).append(float(ex @ ey))
        sets.append(s)
    return sets, cache


def lfw_all_impostors(cache: dict[Path, Embedding]) -> Scores:
    """Scores of every pair of embedded LFW photos of two different people (the folder
    images/<Name>/ names the person)."""
    items = [
        (path.parent.name, e)
        for path, e in cache.items()
        if path.is_relative_to(LFW.resolve()) and isinstance(e, np.ndarray)
    ]
    names = np.array([n for n, _ in items])
    matrix = np.stack([e for _, e in items]).astype(np.float32)
    sims = matrix @ matrix.T
    upper = np.triu(np.ones(sims.shape, bool), k=1) & (names[:, None] != names[None, :])
    scores: Scores = sims[upper].astype(np.float64)
    return scores


def far_frr(genuine: Scores, impostor: Scores, t: float) -> tuple[float, float]:
    return float((impostor >= t).mean()), float((genuine < t).mean())


def equal_error(genuine: Scores, impostor: Scores) -> tuple[float, float]:
    """The threshold where FAR and FRR cross (over every score as a candidate) and the EER."""
    candidates = np.unique(np.concatenate([genuine, impostor]))
    far = (impostor[None, :] >= candidates[:, None]).mean(axis=1)
    frr = (genuine[None, :] < candidates[:, None]).mean(axis=1)
    i = int(np.argmin(np.abs(far - frr)))
    return float(candidates[i]), float((far[i] + frr[i]) / 2)


def round_to_cent(value: float, *, up: bool) -> float:
    scaled = round(value * 100, 6)  # 0.31 * 100 is 31.000000000000004
    return (math.ceil(scaled) if up else math.floor(scaled)) / 100


def bootstrap_spread(impostor: Scores, far: float, seed: int = 0) -> tuple[float, float]:
    """5th and 95th percentile of the FAR threshold over impostor sets resampled with
    replacement: how much the threshold owes to the one or two highest impostor pairs."""
    rng = np.random.default_rng(seed)
    ts = [threshold_at_far(rng.choice(impostor, impostor.size), far) for _ in range(BOOTSTRAP)]
    lo, hi = np.percentile(ts, [5, 95])
    return float(lo), float(hi)


def line(name: str, genuine: Scores, impostor: Scores, t: float) -> str:
    far, frr = far_frr(genuine, impostor, t)
    fa, fr = int((impostor >= t).sum()), int((genuine < t).sum())
    acc = 1 - (fa + fr) / (genuine.size + impostor.size)
    return (
        f"  {name:<22} accuracy {acc:.4f}  TAR {1 - frr:.4f} ({genuine.size - fr}/"
        f"{genuine.size})  FAR {far:.4f} ({fa}/{impostor.size})"
    )


def main() -> None:
    if not all(csv.is_file() for _, csv, _ in SETS):
        sys.exit(f"pairs files not found under {FACES} (../shared/data beside the repo)")
    settings = Settings()  # the defaults being re-derived, the default pack
    started = time.perf_counter()
    sets, cache = collect(open_analyzer(settings))
    seconds = time.perf_counter() - started

    print(f"== calibration: pack {settings.models.pack}, {seconds:.0f} s ==")
    for s in sets:
        print(
            f"  {s.name:<22} {s.pairs:>5} pairs: {len(s.genuine):>4} genuine, "
            f"{len(s.impostor):>4} impostor scored; {s.repeated} repeated, "
            f"{s.no_face} no face, {s.errors} unreadable"
        )
    genuine = np.concatenate([s.arrays()[0] for s in sets])
    impostor = np.concatenate([s.arrays()[1] for s in sets])
    print(f"  {'pooled':<22} {genuine.size:>4} genuine, {impostor.size:>4} impostor pairs")

    point = operating_point(genuine, impostor, TARGET_FAR)
    if point.threshold is None:
        sys.exit(f"cannot calibrate: {point.note}")
    cross = lfw_all_impostors(cache)
    gallery_point = threshold_at_far(cross, GALLERY_FAR)
    default = round_to_cent(max(point.threshold, gallery_point), up=True)
    lo, hi = bootstrap_spread(impostor, TARGET_FAR)
    top = np.sort(impostor)[::-1][:3]
    print(f"\n== threshold at FAR {far_label(TARGET_FAR)} (pooled) ==")
    print(
        f"  operating point {point.threshold:.4f}: TAR {point.tar:.4f}, measured FAR "
        f"{point.measured_far:.5f} (highest impostors {', '.join(f'{v:.4f}' for v in top)})"
    )
    print(f"  bootstrap 5-95%: {lo:.4f} .. {hi:.4f}")
    print(
        f"  gallery point (pair FAR {GALLERY_FAR:.2g} on {cross.size:,} LFW impostor pairs: a"
        f" stranger taken for one of {GALLERY} people <= 1 in {round(1 / STRANGER_FAR)}):"
        f" {gallery_point:.4f}"
    )
    print(f"  recommended threshold (the higher, rounded up to 0.01): {default:.2f}")
    current = settings.recognition.threshold
    for t, label in ((default, "recommended"), (current, "current setting")):
        print(f"  at {t:.2f} ({label}):")
        for s in sets:
            print(line(s.name, *s.arrays(), t))
        print(line("pooled", genuine, impostor, t))

    eer_t, eer = equal_error(genuine, impostor)
    print("\n== equal error (pooled) ==")
    print(f"  threshold {eer_t:.4f}: EER {eer:.4f} (FAR = FRR; far too permissive for a gate)")

    duplicate = default  # the same FAR-1e-3 point: see the module docstring
    dup_point = operating_point(genuine, impostor, DUPLICATE_FAR)
    assert dup_point.threshold is not None  # measurable when TARGET_FAR is
    lower = round_to_cent(dup_point.threshold, up=False)
    print("\n== duplicate_threshold: the same point as threshold, or lower? (pooled) ==")
    candidates = [(default, "= threshold (recommended)")]
    candidates += [(lower, f"FAR {far_label(DUPLICATE_FAR)} point {dup_point.threshold:.4f}")]
    candidates += [(round(default - d, 2), f"threshold - {d:.2f}") for d in (0.01, 0.02, 0.03)]
    for t, label in sorted(set(candidates), key=lambda c: -c[0]):
        far, frr = far_frr(genuine, impostor, t)
        gained = int((genuine >= t).sum() - (genuine >= default).sum())
        added = int((impostor >= t).sum() - (impostor >= default).sum())
        print(
            f"  {t:.2f} {label:<30} duplicates caught {1 - frr:.4f} (+{gained}), pair FAR "
            f"{far:.4f} (+{added}); new person refused, {GALLERY} enrolled: "
            f"{1 - (1 - far) ** GALLERY:.1%}"
        )

    check = operating_point(genuine, cross, TARGET_FAR)
    lfw_genuine = sets[0].arrays()[0]
    print("\n== cross-check: every different-person pair of the LFW photos (not used above) ==")
    print(
        f"  {cross.size:,} impostor pairs: FAR {far_label(TARGET_FAR)} at {check.threshold:.4f}"
        f" (TAR on the pooled genuine pairs {check.tar:.4f}); at {default:.2f}: FAR "
        f"{float((cross >= default).mean()):.5f}, LFW TAR "
        f"{float((lfw_genuine >= default).mean()):.4f}"
    )

    far_d, frr_d = far_frr(genuine, impostor, default)
    gained = int((genuine >= lower).sum() - (genuine >= default).sum())
    added = int((impostor >= lower).sum() - (impostor >= default).sum())
    threshold_note = (
        f"Calibrated by bench/calibrate.py ({settings.models.pack} pack) on LFW pairsDevTrain "
        f"and both deepface pair files ({genuine.size:,} genuine / {impostor.size:,} impostor "
        f"pairs): the higher of their FAR {far_label(TARGET_FAR)} point ({point.threshold:.4f}, "
        f"bootstrap 5-95% {lo:.2f}-{hi:.2f}) and the gallery point ({gallery_point:.4f}: a pair "
        f"FAR of {GALLERY_FAR:.2g} over all {cross.size / 1e6:.1f} million different-person LFW "
        f"pairs, so that a gate with {GALLERY} people takes a stranger for one of them at most "
        f"once in {round(1 / STRANGER_FAR)} visits), rounded up to {default:.2f}: TAR "
        f"{1 - frr_d:.3f} and FAR {far_d:.4f} on the pairs, LFW-wide FAR "
        f"{float((cross >= default).mean()):.6f}. The live engine votes over frames, so a "
        f"lower per-frame TAR costs a known person a few frames; a false accept opens the door."
    )
    duplicate_note = (
        "A registration scoring this high against an existing person is refused as a "
        "duplicate: the same point as `threshold` (not above it: someone recognition calls "
        f"known must not register twice); lowering it to {lower:.2f} (the pairs' FAR "
        f"{far_label(DUPLICATE_FAR)} point) caught {gained} more genuine pairs for {added} "
        "more impostor pairs, and false refusals grow with the gallery."
    )
    print("\n== paste into settings.toml [recognition] ==")
    print(textwrap.fill(threshold_note, 94, initial_indent="# ", subsequent_indent="# "))
    print(f"threshold = {default:.2f}")
    print(textwrap.fill(duplicate_note, 94, initial_indent="# ", subsequent_indent="# "))
    print(f"duplicate_threshold = {duplicate:.2f}")


if __name__ == "__main__":
    main()
