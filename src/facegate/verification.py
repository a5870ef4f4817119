"""Pair verification metrics: accuracy at a threshold, ROC AUC, TAR at a FAR, threshold advice.

Used by `facegate verify-pairs`, the tool a user runs to calibrate the threshold on their own
photos, and by the benchmark.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import msgspec
import numpy as np
import numpy.typing as npt

TRUE_WORDS = frozenset({"yes", "1", "true", "same", "y"})
FALSE_WORDS = frozenset({"no", "0", "false", "different", "n"})


class Pair(msgspec.Struct, frozen=True):
    file_x: str
    file_y: str
    same: bool


class PairsError(ValueError):
    """A pairs file that cannot be read; the message names the file and line."""


class VerificationReport(
    msgspec.Struct,
    frozen=True,
    rename={"tar_far_2": "tar_at_far_1e-2", "tar_far_3": "tar_at_far_1e-3"},
):
    pairs: int  # pairs in the file
    no_face: int  # pairs left out because an image had no usable face or failed to load
    accuracy: float  # at `threshold`, over the pairs that were scored
    threshold: float
    auc: float
    tar_far_2: float
    tar_far_3: float
    target_far: float
    recommended_threshold: float  # the lowest threshold whose measured FAR <= target_far
    tar_at_recommended: float
    # The smallest FAR these impostor pairs can measure (1 / impostor pairs): a target below
    # it is extrapolated, and the advice is only "above every impostor seen".
    far_resolution: float
    genuine_pairs: int
    impostor_pairs: int


def read_pairs(path: Path) -> list[Pair]:
    """CSV with columns file_x,file_y,decision (Yes/No, 1/0, true/false; header case-free)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise PairsError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise PairsError(f"{path}: not a UTF-8 text file") from None
    reader = csv.DictReader(text.splitlines())
    fields = {name.strip().lower(): name for name in (reader.fieldnames or [])}
    missing = [c for c in ("file_x", "file_y", "decision") if c not in fields]
    if missing:
        raise PairsError(
            f"{path}: missing column(s) {', '.join(missing)} (need file_x,file_y,decision)"
        )
    pairs: list[Pair] = []
    for row in reader:
        line_no = reader.line_num
        word = (row.get(fields["decision"]) or "").strip().lower()
        if word in TRUE_WORDS:
            same = True
        elif word in FALSE_WORDS:
            same = False
        else:
            raise PairsError(
                f"{path}:{line_no}: decision {word!r} is not Yes/No, 1/0 or true/false"
            )
        fx = (row.get(fields["file_x"]) or "").strip()
        fy = (row.get(fields["file_y"]) or "").strip()
        if not fx or not fy:
            raise PairsError(f"{path}:{line_no}: empty file name")
        pairs.append(Pair(fx, fy, same))
    if not pairs:
        raise PairsError(f"{path}: no pairs")
    return pairs


def roc_auc(genuine: npt.NDArray[np.float64], impostor: npt.NDArray[np.float64]) -> float:
    """Probability that a genuine pair scores above an impostor pair (ties count half)."""
    if genuine.size == 0 or impostor.size == 0:
        return math.nan
    scores = np.concatenate([genuine, impostor])
    order = scores.argsort(kind="mergesort")
    ranks = np.empty(scores.size, np.float64)
    sorted_scores = scores[order]
    # Average ranks over ties.
    i = 0
    while i < scores.size:
        j = i
        while j + 1 < scores.size and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    u = ranks[: genuine.size].sum() - genuine.size * (genuine.size + 1) / 2.0
    return float(u / (genuine.size * impostor.size))


def threshold_at_far(impostor: npt.NDArray[np.float64], far: float) -> float:
    """The lowest threshold t (accept when score >= t) with measured FAR <= far."""
    if impostor.size == 0:
        return math.nan
    allowed = math.floor(far * impostor.size)  # false accepts we may have
    if (allowed + 1) / impostor.size <= far:  # far * n fell just short of an integer
        allowed += 1
    desc = np.sort(impostor)[::-1]
    if allowed >= desc.size:
        return float(desc[-1])
    # Just above the (allowed+1)-th highest impostor score.
    return float(np.nextafter(desc[allowed], np.inf))


def _round_up(value: float, places: int = 4) -> float:
    """The smallest `places`-decimal number >= value: a rounded threshold that still rejects
    the impostor score it was set just above."""
    if math.isnan(value):
        return value
    scale = 10.0**places
    result = math.floor(value * scale) / scale
    while result < value:
        result = round(result + 1.0 / scale, places)
    return result


def tar_at(genuine: npt.NDArray[np.float64], threshold: float) -> float:
    if genuine.size == 0 or math.isnan(threshold):
        return math.nan
    return float((genuine >= threshold).mean())


def report(
    scores: list[float | None], pairs: list[Pair], threshold: float, target_far: float
) -> VerificationReport:
    """Metrics over the scored pairs; a None score is a pair with a face missing."""
    scored = [(s, p.same) for s, p in zip(scores, pairs, strict=True) if s is not None]
    genuine = np.array([s for s, same in scored if same], np.float64)
    impostor = np.array([s for s, same in scored if not same], np.float64)
    correct = sum(bool(s >= threshold) == same for s, same in scored)
    recommended = _round_up(threshold_at_far(impostor, target_far))
    return VerificationReport(
        pairs=len(pairs),
        no_face=len(pairs) - len(scored),
        accuracy=correct / len(scored) if scored else math.nan,
        threshold=threshold,
        auc=roc_auc(genuine, impostor),
        tar_far_2=tar_at(genuine, threshold_at_far(impostor, 1e-2)),
        tar_far_3=tar_at(genuine, threshold_at_far(impostor, 1e-3)),
        target_far=target_far,
        recommended_threshold=recommended,
        tar_at_recommended=tar_at(genuine, recommended),
        far_resolution=1.0 / impostor.size if impostor.size else math.nan,
        genuine_pairs=int(genuine.size),
        impostor_pairs=int(impostor.size),
    )
