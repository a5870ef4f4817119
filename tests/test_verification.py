"""Pair verification: reading pairs files, ROC AUC, threshold at a FAR, and the report."""

from __future__ import annotations

import math
from pathlib import Path

import msgspec
import numpy as np
import pytest

from facegate.verification import (
    Pair,
    PairsError,
    VerificationReport,
    read_pairs,
    report,
    roc_auc,
    threshold_at_far,
)

SEEDS = range(8)


def write_csv(tmp_path: Path, text: str, *, bom: bool = False) -> Path:
    path = tmp_path / "pairs.csv"
    path.write_bytes(("\ufeff" if bom else "").encode() + text.encode("utf-8"))
    return path


# -- read_pairs --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("yes", "no"),
    [("Yes", "No"), ("yes", "NO"), ("1", "0"), ("true", "false"), ("True", "False"),
     ("same", "different"), ("y", "n")],
)  # fmt: skip
def test_read_pairs_accepts_decision_words(tmp_path: Path, yes: str, no: str) -> None:
    path = write_csv(tmp_path, f"file_x,file_y,decision\na.jpg,b.jpg,{yes}\nc.jpg,d.jpg,{no}\n")
    assert read_pairs(path) == [Pair("a.jpg", "b.jpg", True), Pair("c.jpg", "d.jpg", False)]


@pytest.mark.parametrize(
    "header", ["file_x,file_y,Decision", "file_x,file_y,decision", "File_X, file_y ,DECISION"]
)
@pytest.mark.parametrize("bom", [False, True])
def test_read_pairs_header_is_case_free_and_bom_is_skipped(
    tmp_path: Path, header: str, bom: bool
) -> None:
    path = write_csv(tmp_path, f"{header}\na.jpg,b.jpg,Yes\n", bom=bom)
    assert read_pairs(path) == [Pair("a.jpg", "b.jpg", True)]


def test_read_pairs_ignores_extra_columns_and_trims_names(tmp_path: Path) -> None:
    path = write_csv(tmp_path, "id,decision,file_y,file_x\n7, No , b.jpg ,a.jpg\n")
    assert read_pairs(path) == [Pair("a.jpg", "b.jpg", False)]


@pytest.mark.parametrize(
    ("header", "missing"),
    [("file_x,file_y", "decision"), ("file_x,decision", "file_y"), ("a,b,c", "file_x")],
)
def test_read_pairs_rejects_missing_column(tmp_path: Path, header: str, missing: str) -> None:
    path = write_csv(tmp_path, f"{header}\na.jpg,b.jpg,Yes\n")
    with pytest.raises(PairsError, match="missing column") as info:
        read_pairs(path)
    assert missing in str(info.value)
    assert str(path) in str(info.value)


def test_read_pairs_rejects_unknown_decision_with_file_and_line(tmp_path: Path) -> None:
    path = write_csv(tmp_path, "file_x,file_y,decision\na,b,Yes\nc,d,maybe\n")
    with pytest.raises(PairsError, match="maybe") as info:
        read_pairs(path)
    assert f"{path}:3:" in str(info.value)


def test_read_pairs_line_number_counts_blank_lines(tmp_path: Path) -> None:
    path = write_csv(tmp_path, "file_x,file_y,decision\na,b,Yes\n\nc,d,maybe\n")
    with pytest.raises(PairsError) as info:
        read_pairs(path)
    assert f"{path}:4:" in str(info.value)


def test_read_pairs_rejects_empty_file_name(tmp_path: Path) -> None:
    path = write_csv(tmp_path, "file_x,file_y,decision\na,,Yes\n")
    with pytest.raises(PairsError, match="empty file name") as info:
        read_pairs(path)
    assert f"{path}:2:" in str(info.value)


@pytest.mark.parametrize("text", ["", "file_x,file_y,decision\n"])
def test_read_pairs_rejects_empty_file(tmp_path: Path, text: str) -> None:
    path = write_csv(tmp_path, text)
    with pytest.raises(PairsError) as info:
        read_pairs(path)
    assert str(path) in str(info.value)


def test_read_pairs_rejects_missing_and_binary_files(tmp_path: Path) -> None:
    with pytest.raises(PairsError, match="cannot read"):
        read_pairs(tmp_path / "absent.csv")
    binary = tmp_path / "pairs.csv"
    binary.write_bytes(b"\xff\xfe\x00\x81\x90")
    with pytest.raises(PairsError, match="not a UTF-8"):
        read_pairs(binary)


# -- roc_auc -----------------------------------------------------------------------------------


def brute_force_auc(genuine: np.ndarray, impostor: np.ndarray) -> float:
    wins = sum((g > i) + 0.5 * (g == i) for g in genuine for i in impostor)
    return float(wins) / (genuine.size * impostor.size)


@pytest.mark.parametrize("seed", SEEDS)
def test_roc_auc_matches_pairwise_count_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    # Coarse scores so that ties within and across the two sets are frequent.
    genuine = np.round(rng.normal(0.6, 0.2, rng.integers(1, 60)), 1)
    impostor = np.round(rng.normal(0.3, 0.2, rng.integers(1, 80)), 1)
    assert roc_auc(genuine, impostor) == pytest.approx(brute_force_auc(genuine, impostor))


@pytest.mark.parametrize(
    ("genuine", "impostor", "auc"),
    [
        ([0.9, 0.8], [0.1, 0.2], 1.0),
        ([0.1, 0.2], [0.9, 0.8], 0.0),
        ([0.5, 0.5], [0.5], 0.5),
        ([0.7, 0.3], [0.5], 0.5),
    ],
)
def test_roc_auc_known_values(genuine: list[float], impostor: list[float], auc: float) -> None:
    assert roc_auc(np.array(genuine), np.array(impostor)) == auc


def test_roc_auc_is_nan_without_one_class() -> None:
    assert math.isnan(roc_auc(np.array([]), np.array([0.1])))
    assert math.isnan(roc_auc(np.array([0.1]), np.array([])))


# -- threshold_at_far --------------------------------------------------------------------------


def measured_far(impostor: np.ndarray, threshold: float) -> float:
    return float((impostor >= threshold).mean())


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("far", [1e-3, 1e-2, 0.05, 0.1, 0.25, 0.5])
def test_threshold_at_far_is_the_lowest_meeting_the_far(seed: int, far: float) -> None:
    rng = np.random.default_rng(seed)
    # Rounded scores: many ties, which is where an off-by-one would show.
    impostor = np.round(rng.normal(0.2, 0.15, rng.integers(20, 1500)), 2)
    t = threshold_at_far(impostor, far)
    assert measured_far(impostor, t) <= far
    # Any lower threshold that changes the decision (an impostor score below t) exceeds it.
    for lower in np.unique(impostor[impostor < t]):
        assert measured_far(impostor, float(lower)) > far


def test_threshold_at_far_lowest_when_far_times_n_is_inexact() -> None:
    impostor = np.arange(100) / 100.0
    t = threshold_at_far(impostor, 0.29)
    assert measured_far(impostor, t) <= 0.29
    assert t <= np.nextafter(0.70, np.inf)  # 29 impostors accepted is 0.29, allowed


def test_threshold_at_far_edge_cases() -> None:
    assert math.isnan(threshold_at_far(np.array([]), 0.01))
    scores = np.array([0.1, 0.4, 0.3])
    # Fewer impostors than one false accept: the threshold sits just above the highest.
    t = threshold_at_far(scores, 0.01)
    assert 0.4 < t < 0.4 + 1e-12
    # A FAR of 1 accepts every impostor.
    assert threshold_at_far(scores, 1.0) == 0.1


# -- report ------------------------------------------------------------------------------------


def test_report_counts_accuracy_over_scored_pairs_only() -> None:
    pairs = [
        Pair("a", "b", True),  # 0.8 accepted: right
        Pair("a", "c", True),  # 0.3 rejected: wrong
        Pair("a", "d", True),  # 0.5 == threshold, accepted: right
        Pair("e", "f", False),  # 0.2 rejected: right
        Pair("e", "g", False),  # 0.6 accepted: wrong
        Pair("x", "y", True),  # no face
        Pair("x", "z", False),  # no face
    ]
    scores: list[float | None] = [0.8, 0.3, 0.5, 0.2, 0.6, None, None]
    r = report(scores, pairs, threshold=0.5, target_far=0.1)
    assert r.pairs == 7
    assert r.no_face == 2
    assert r.genuine_pairs == 3
    assert r.impostor_pairs == 2
    assert r.accuracy == pytest.approx(3 / 5)
    assert r.far_resolution == pytest.approx(1 / 2)
    assert r.auc == pytest.approx(brute_force_auc(np.array([0.8, 0.3, 0.5]), np.array([0.2, 0.6])))


def test_report_without_any_scored_pair() -> None:
    pairs = [Pair("a", "b", True), Pair("c", "d", False)]
    r = report([None, None], pairs, threshold=0.4, target_far=0.01)
    assert (r.pairs, r.no_face, r.genuine_pairs, r.impostor_pairs) == (2, 2, 0, 0)
    assert math.isnan(r.accuracy)
    assert math.isnan(r.recommended_threshold)


def test_report_requires_one_score_per_pair() -> None:
    with pytest.raises(ValueError):
        report([0.5], [Pair("a", "b", True), Pair("c", "d", False)], 0.5, 0.01)


def test_report_json_field_names() -> None:
    rng = np.random.default_rng(0)
    pairs = [Pair(f"g{i}", "x", True) for i in range(50)] + [
        Pair(f"i{i}", "x", False) for i in range(200)
    ]
    values = [*rng.uniform(0.4, 1, 50), *rng.uniform(-0.2, 0.5, 200)]
    scores: list[float | None] = [float(v) for v in values]
    r = report(scores, pairs, threshold=0.42, target_far=0.01)
    decoded = msgspec.json.decode(msgspec.json.encode(r))
    assert decoded["tar_at_far_1e-2"] == r.tar_far_2
    assert decoded["tar_at_far_1e-3"] == r.tar_far_3
    assert "tar_far_2" not in decoded
    assert "tar_far_3" not in decoded
    assert msgspec.json.decode(msgspec.json.encode(r), type=VerificationReport) == r


def test_report_with_numpy_float_scores_encodes_to_json() -> None:
    pairs = [Pair("a", "b", True), Pair("c", "d", False)]
    scores: list[float | None] = [np.float64(0.7), np.float64(0.1)]
    r = report(scores, pairs, threshold=0.5, target_far=0.01)
    assert msgspec.json.decode(msgspec.json.encode(r))["accuracy"] == 1.0


def one_impostor_report(impostor: float) -> VerificationReport:
    pairs = [Pair("g", "h", True), Pair("a", "b", False), Pair("c", "d", False)]
    return report([0.99, impostor, impostor - 0.3], pairs, threshold=0.5, target_far=0.001)


@pytest.mark.parametrize("seed", SEEDS)
def test_rounded_recommended_threshold_rejects_the_impostor_random(seed: int) -> None:
    rng = np.random.default_rng(seed)
    # Cosine scores come out of float32 embeddings.
    for impostor in rng.uniform(-0.2, 0.9, 200).astype(np.float32):
        r = one_impostor_report(float(impostor))
        assert r.recommended_threshold > float(impostor)
        assert r.recommended_threshold <= float(impostor) + 1e-4 + 1e-12


@pytest.mark.parametrize(
    "impostor",
    [
        0.5,
        0.123456,
        0.9216,  # nextafter(0.9216) * 1e4 is exactly 9216.0 in floating point
    ],
)
def test_rounded_recommended_threshold_rejects_the_impostor(impostor: float) -> None:
    r = one_impostor_report(impostor)
    assert r.recommended_threshold > impostor


def test_tar_at_recommended_is_measured_at_the_reported_threshold() -> None:
    # Highest impostor 0.40001 -> recommended 0.4001; the genuine 0.40005 is below that.
    pairs = [Pair("g", "h", True), Pair("a", "b", False)]
    r = report([0.40005, 0.40001], pairs, threshold=0.5, target_far=0.001)
    assert r.recommended_threshold == 0.4001
    assert r.tar_at_recommended == 0.0
