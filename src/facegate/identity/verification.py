"""Pair verification metrics: accuracy at a threshold, ROC AUC, TAR at a FAR, threshold advice.

Used by `facegate verify-pairs`, the tool a user runs to calibrate the threshold on their own
photos, and by bench/calibrate.py, which derives the shipped defaults.

A FAR is only measured, and a threshold only recommended for it, when there are at least 1/FAR
scored impostor pairs (one false accept among them is a rate of FAR); below that the report
gives null and a note saying how many more impostor pairs are needed. Every TAR at a FAR comes
from `operating_point`: the threshold first (rounded up to 4 decimals), then the TAR at exactly
that threshold, so `tar_at_far_1e-3` and `tar_at_recommended` agree when target_far is 1e-3.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
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


def far_label(far: float) -> str:
    """A FAR as people write it: 0.001 -> "1e-3", 0.025 -> "2.5e-2"."""
    mantissa, _, exponent = f"{far:e}".partition("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def impostors_needed(far: float) -> int:
    """Impostor pairs needed to measure a FAR of `far`: with n impostor pairs the smallest
    non-zero measured FAR is 1/n (one false accept), so n >= 1/far."""
    if not 0.0 < far <= 1.0:
        raise ValueError(f"FAR {far} is not in (0, 1]")
    # 1e-9: 1/far computed a hair above an integer (e.g. 1/0.01) is still that integer.
    return max(1, math.ceil(1.0 / far - 1e-9))


class OperatingPoint(msgspec.Struct, frozen=True):
    """The lowest 4-decimal threshold whose measured FAR is <= `far`, and the TAR there.

    Not measurable (threshold, tar and measured_far None, `note` says why) when there are
    fewer than 1/far impostor pairs; tar alone is None (with a note) without genuine pairs."""

    far: float
    threshold: float | None
    tar: float | None
    measured_far: float | None
    note: str | None


class ImageFailure(msgspec.Struct, frozen=True):
    path: str  # as written in the pairs file
    error: str


# JSON names of the fields whose Python names cannot hold them.
_RENAME = {
    "tar_far_2": "tar_at_far_1e-2",
    "tar_far_2_note": "tar_at_far_1e-2_note",
    "tar_far_3": "tar_at_far_1e-3",
    "tar_far_3_note": "tar_at_far_1e-3_note",
}


class VerificationReport(msgspec.Struct, frozen=True, rename=_RENAME):
    """What `facegate verify-pairs` prints (its JSON fields are these names, `_RENAME`d).

    pairs == genuine_pairs + impostor_pairs + no_face + errors. A rate that the pairs cannot
    measure is null with a `..._note` field saying why (e.g. "FAR 1e-3 needs >= 1,000
    impostor pairs; this file has 580 scored: 420 more needed"); the note is null when the
    rate was measured.
    """

    pairs: int  # pairs in the file
    # Pairs left out because an image was read but no usable face (with an embedding) was
    # found in it; `no_face_images` lists those images.
    no_face: int
    # Pairs left out because an image could not be read (missing, not an image, truncated...);
    # `error_images` lists those images with the reason. Counted here, never in `no_face`.
    errors: int
    accuracy: float  # at `threshold`, over the pairs that were scored (NaN/null if none)
    threshold: float  # the configured recognition.threshold
    auc: float  # ROC AUC (NaN/null without both genuine and impostor pairs)
    # TAR at the lowest 4-decimal threshold whose measured FAR <= 1e-2 / 1e-3: the same
    # computation as `recommended_threshold` / `tar_at_recommended` (equal when target_far is
    # that FAR). null when there are fewer than 100 / 1,000 scored impostor pairs.
    tar_far_2: float | None
    tar_far_2_note: str | None
    tar_far_3: float | None
    tar_far_3_note: str | None
    target_far: float  # recognition.target_far
    # The lowest 4-decimal threshold whose measured FAR <= target_far, and the TAR and FAR
    # measured at exactly that threshold. null when the impostor pairs cannot measure
    # target_far (fewer than `impostor_pairs_needed`): no threshold is recommended then.
    recommended_threshold: float | None
    tar_at_recommended: float | None
    far_at_recommended: float | None
    recommended_threshold_note: str | None
    impostor_pairs_needed: int  # scored impostor pairs needed to measure target_far (1/FAR)
    # The smallest FAR these impostor pairs can measure (1 / impostor pairs).
    far_resolution: float
    genuine_pairs: int  # scored genuine pairs
    impostor_pairs: int  # scored impostor pairs
    no_face_images: list[str] = msgspec.field(default_factory=list)
    error_images: list[ImageFailure] = msgspec.field(default_factory=list)


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


def operating_point(
    genuine: npt.NDArray[np.float64], impostor: npt.NDArray[np.float64], far: float
) -> OperatingPoint:
    """The one path from a FAR to a threshold and its TAR: `threshold_at_far`, rounded up to
    4 decimals (a rounded threshold still rejects the impostor it was set just above), then
    `tar_at` that very threshold. Refuses (a note, no numbers) a FAR the impostors cannot
    measure."""
    needed = impostors_needed(far)
    if impostor.size < needed:
        note = (
            f"FAR {far_label(far)} needs >= {needed:,} impostor pairs; this file has "
            f"{impostor.size:,} scored: {needed - impostor.size:,} more needed"
        )
        return OperatingPoint(far, None, None, None, note)
    threshold = _round_up(threshold_at_far(impostor, far))
    measured = float((impostor >= threshold).mean())
    if genuine.size == 0:
        return OperatingPoint(far, threshold, None, measured, "no genuine pairs scored")
    return OperatingPoint(far, threshold, tar_at(genuine, threshold), measured, None)


def report(
    scores: list[float | None],
    pairs: list[Pair],
    threshold: float,
    target_far: float,
    *,
    image_errors: Mapping[str, str] | None = None,
    no_face_images: Sequence[str] = (),
) -> VerificationReport:
    """Metrics over the scored pairs. A None score is a pair left out: an `errors` pair when
    one of its images is in `image_errors` (path -> why it could not be read), else a
    `no_face` pair."""
    failed = dict(image_errors or {})
    scored = [(s, p.same) for s, p in zip(scores, pairs, strict=True) if s is not None]
    errors = sum(
        1
        for s, p in zip(scores, pairs, strict=True)
        if s is None and (p.file_x in failed or p.file_y in failed)
    )
    genuine = np.array([s for s, same in scored if same], np.float64)
    impostor = np.array([s for s, same in scored if not same], np.float64)
    correct = sum(bool(s >= threshold) == same for s, same in scored)
    far_2 = operating_point(genuine, impostor, 1e-2)
    far_3 = operating_point(genuine, impostor, 1e-3)
    target = operating_point(genuine, impostor, target_far)
    return VerificationReport(
        pairs=len(pairs),
        no_face=len(pairs) - len(scored) - errors,
        errors=errors,
        accuracy=correct / len(scored) if scored else math.nan,
        threshold=threshold,
        auc=roc_auc(genuine, impostor),
        tar_far_2=far_2.tar,
        tar_far_2_note=far_2.note,
        tar_far_3=far_3.tar,
        tar_far_3_note=far_3.note,
        target_far=target_far,
        recommended_threshold=target.threshold,
        tar_at_recommended=target.tar,
        far_at_recommended=target.measured_far,
        recommended_threshold_note=target.note,
        impostor_pairs_needed=impostors_needed(target_far),
        far_resolution=1.0 / impostor.size if impostor.size else math.nan,
        genuine_pairs=int(genuine.size),
        impostor_pairs=int(impostor.size),
        no_face_images=list(no_face_images),
        error_images=[ImageFailure(path, why) for path, why in failed.items()],
    )
