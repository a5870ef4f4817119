"""Pair verification: reading pairs files, ROC AUC, threshold at a FAR, and the report."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import cv2
import msgspec
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from facegate.cli import main
from facegate.identity.verification import (
    Pair,
    PairsError,
    VerificationReport,
    far_label,
    impostors_needed,
    operating_point,
    read_pairs,
    report,
    roc_auc,
    tar_at,
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


# -- how many impostor pairs a FAR needs ------------------------------------------------------


@pytest.mark.parametrize(
    ("far", "needed"),
    [(1e-3, 1000), (1e-2, 100), (0.001, 1000), (1e-4, 10_000), (0.3, 4), (0.5, 2), (1.0, 1),
     (0.0025, 400), (0.003, 334)],
)  # fmt: skip
def test_impostors_needed_is_one_over_far(far: float, needed: int) -> None:
    assert impostors_needed(far) == needed


@pytest.mark.parametrize("far", [0.0, -0.1, 1.5, math.nan])
def test_impostors_needed_rejects_a_far_outside_0_1(far: float) -> None:
    with pytest.raises(ValueError):
        impostors_needed(far)


@pytest.mark.parametrize(
    ("far", "label"), [(1e-3, "1e-3"), (0.01, "1e-2"), (0.025, "2.5e-2"), (0.5, "5e-1")]
)
def test_far_label(far: float, label: str) -> None:
    assert far_label(far) == label


def scored_report(
    genuine: np.ndarray, impostor: np.ndarray, *, threshold: float = 0.45, target_far: float
) -> VerificationReport:
    pairs = [Pair(f"g{i}", "x", True) for i in range(genuine.size)] + [
        Pair(f"i{i}", "x", False) for i in range(impostor.size)
    ]
    scores: list[float | None] = [float(v) for v in (*genuine, *impostor)]
    return report(scores, pairs, threshold=threshold, target_far=target_far)


def test_far_below_what_the_impostors_can_measure_is_refused_with_the_count() -> None:
    rng = np.random.default_rng(1)
    r = scored_report(rng.uniform(0.3, 1, 300), rng.uniform(-0.2, 0.4, 580), target_far=1e-3)
    note = "FAR 1e-3 needs >= 1,000 impostor pairs; this file has 580 scored: 420 more needed"
    assert r.tar_far_3 is None and r.tar_far_3_note == note
    assert r.recommended_threshold is None and r.recommended_threshold_note == note
    assert r.tar_at_recommended is None and r.far_at_recommended is None
    assert r.impostor_pairs_needed == 1000
    # 580 impostors do measure 1e-2.
    assert r.tar_far_2 is not None and r.tar_far_2_note is None
    decoded = msgspec.json.decode(msgspec.json.encode(r))
    assert decoded["tar_at_far_1e-3"] is None
    assert decoded["tar_at_far_1e-3_note"] == note
    assert decoded["tar_at_far_1e-2_note"] is None
    assert decoded["recommended_threshold"] is None


@pytest.mark.parametrize(("n", "measurable"), [(999, False), (1000, True), (1001, True)])
def test_far_1e_3_needs_1000_impostors(n: int, measurable: bool) -> None:
    rng = np.random.default_rng(n)
    genuine, impostor = rng.uniform(0.2, 1, 50), rng.uniform(-0.3, 0.6, n)
    r = scored_report(genuine, impostor, target_far=1e-3)
    assert (r.tar_far_3 is not None) is measurable
    assert (r.recommended_threshold is not None) is measurable
    if r.recommended_threshold is not None:
        # One false accept allowed: the threshold sits just above the second-highest impostor.
        assert measured_far(impostor, r.recommended_threshold) == 1 / n
        assert r.far_at_recommended == 1 / n
        assert r.recommended_threshold > np.sort(impostor)[-2]
    else:
        assert r.tar_far_3_note is not None and f"{1000 - n:,} more needed" in r.tar_far_3_note


def test_measurable_far_without_genuine_pairs_has_a_threshold_but_no_tar() -> None:
    r = scored_report(np.array([]), np.linspace(-0.2, 0.5, 200), target_far=1e-2)
    assert r.recommended_threshold is not None and r.tar_at_recommended is None
    assert r.recommended_threshold_note == "no genuine pairs scored"
    assert r.tar_far_2 is None and r.tar_far_2_note == "no genuine pairs scored"


# -- TAR at a FAR and the recommendation agree by construction --------------------------------


@st.composite
def score_sets(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    """Genuine and impostor cosine scores; rounded to few decimals (ties, and genuine scores
    between a raw threshold and its 4-decimal rounding) or float32 like real embeddings."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    genuine = rng.normal(draw(st.floats(0.2, 0.8)), 0.15, draw(st.integers(0, 300)))
    impostor = rng.normal(draw(st.floats(-0.1, 0.4)), 0.12, draw(st.integers(0, 2500)))
    if impostor.size and draw(st.booleans()):
        # Genuine scores just above the highest impostors: where a threshold and its rounding
        # to 4 decimals fall, so any TAR taken at the unrounded threshold would differ.
        top = np.sort(impostor)[-min(impostor.size, 30) :]
        genuine = np.concatenate([genuine, top + rng.uniform(0.0, 1e-4, top.size)])
    decimals = draw(st.sampled_from([2, 3, 5, None]))
    if decimals is None:
        return genuine.astype(np.float32).astype(np.float64), impostor.astype(np.float32)
    return np.round(genuine, decimals), np.round(impostor, decimals)


@settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(score_sets(), st.sampled_from([1e-3, 1e-2]))
def test_tar_at_far_equals_tar_at_recommended(
    scores: tuple[np.ndarray, np.ndarray], far: float
) -> None:
    genuine, impostor = scores
    r = scored_report(genuine, impostor.astype(np.float64), target_far=far)
    tar, note = (r.tar_far_3, r.tar_far_3_note) if far == 1e-3 else (r.tar_far_2, r.tar_far_2_note)
    assert tar == r.tar_at_recommended or (tar is None and r.tar_at_recommended is None)
    assert note == r.recommended_threshold_note
    if r.recommended_threshold is not None:
        # The TAR is measured at exactly the threshold reported, whose FAR meets the target.
        assert r.tar_at_recommended == (
            tar_at(genuine, r.recommended_threshold) if genuine.size else None
        )
        assert measured_far(impostor, r.recommended_threshold) <= far
        assert r.far_at_recommended == measured_far(impostor, r.recommended_threshold)
        # ... and it is the lowest 4-decimal threshold doing so.
        assert measured_far(impostor, round(r.recommended_threshold - 1e-4, 4)) > far


@settings(max_examples=200, deadline=None, database=None)
@given(score_sets(), st.floats(1e-3, 0.5))
def test_operating_point_is_threshold_then_tar(
    scores: tuple[np.ndarray, np.ndarray], far: float
) -> None:
    genuine, impostor = scores
    point = operating_point(genuine, impostor.astype(np.float64), far)
    if impostor.size < impostors_needed(far):
        assert point.threshold is None and point.tar is None and point.note is not None
        return
    assert point.threshold is not None
    assert measured_far(impostor, point.threshold) <= far
    if genuine.size:
        assert point.tar == tar_at(genuine, point.threshold) and point.note is None


def test_tar_at_far_is_measured_at_the_rounded_threshold() -> None:
    # The old report took TAR at 1e-3 at the raw threshold (just above 0.40001) and the
    # recommendation at its rounding (0.4001): the genuine 0.40005 counted for one, not the other.
    impostor = np.concatenate([[0.9, 0.40001], np.linspace(-0.3, 0.3, 998)])
    r = scored_report(np.array([0.40005, 0.8]), impostor, target_far=1e-3)
    assert r.recommended_threshold == 0.4001
    assert r.tar_far_3 == r.tar_at_recommended == 0.5


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
    assert r.no_face == 2 and r.errors == 0
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
    assert r.recommended_threshold is None
    assert r.recommended_threshold_note is not None
    assert "this file has 0 scored" in r.recommended_threshold_note


def test_report_counts_unreadable_images_as_errors_not_no_face() -> None:
    pairs = [
        Pair("a", "b", True),  # scored
        Pair("a", "bad", True),  # unreadable -> error
        Pair("bad", "c", False),  # unreadable -> error
        Pair("a", "blank", False),  # read, no face -> no_face
        Pair("bad", "blank", False),  # both: the unreadable image makes it an error
        Pair("d", "e", False),  # scored
    ]
    scores: list[float | None] = [0.8, None, None, None, None, 0.1]
    r = report(
        scores,
        pairs,
        threshold=0.5,
        target_far=0.5,
        image_errors={"bad": "bad: not an image"},
        no_face_images=["blank"],
    )
    assert (r.pairs, r.errors, r.no_face, r.genuine_pairs, r.impostor_pairs) == (6, 3, 1, 1, 1)
    assert r.no_face_images == ["blank"]
    decoded = msgspec.json.decode(msgspec.json.encode(r))
    assert decoded["error_images"] == [{"path": "bad", "error": "bad: not an image"}]
    assert decoded["no_face_images"] == ["blank"]


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
    assert decoded["tar_at_far_1e-3"] is None  # 200 impostors cannot measure 1e-3
    assert decoded["tar_at_far_1e-2_note"] is None
    assert decoded["tar_at_far_1e-3_note"] == r.tar_far_3_note
    assert not any(k.startswith("tar_far") for k in decoded)
    # The fields older readers know are all still there.
    for key in (
        "pairs", "no_face", "accuracy", "threshold", "auc", "tar_at_far_1e-2", "tar_at_far_1e-3",
        "target_far", "recommended_threshold", "tar_at_recommended", "far_resolution",
        "genuine_pairs", "impostor_pairs",
    ):  # fmt: skip
        assert key in decoded
    assert msgspec.json.decode(msgspec.json.encode(r), type=VerificationReport) == r


def test_report_with_numpy_float_scores_encodes_to_json() -> None:
    pairs = [Pair("a", "b", True), Pair("c", "d", False)]
    scores: list[float | None] = [np.float64(0.7), np.float64(0.1)]
    r = report(scores, pairs, threshold=0.5, target_far=0.01)
    assert msgspec.json.decode(msgspec.json.encode(r))["accuracy"] == 1.0


def one_impostor_report(impostor: float) -> VerificationReport:
    """Two impostor pairs and a FAR of 1/2: one false accept (the higher one) is allowed, so
    the recommended threshold is set just above `impostor`."""
    pairs = [Pair("g", "h", True), Pair("a", "b", False), Pair("c", "d", False)]
    return report([0.99, impostor + 0.3, impostor], pairs, threshold=0.5, target_far=0.5)


@pytest.mark.parametrize("seed", SEEDS)
def test_rounded_recommended_threshold_rejects_the_impostor_random(seed: int) -> None:
    rng = np.random.default_rng(seed)
    # Cosine scores come out of float32 embeddings.
    for impostor in rng.uniform(-0.2, 0.9, 200).astype(np.float32):
        r = one_impostor_report(float(impostor))
        assert r.recommended_threshold is not None
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
    assert r.recommended_threshold is not None
    assert r.recommended_threshold > impostor


def test_tar_at_recommended_is_measured_at_the_reported_threshold() -> None:
    # Second impostor 0.40001 -> recommended 0.4001; the genuine 0.40005 is below that.
    pairs = [Pair("g", "h", True), Pair("a", "b", False), Pair("c", "d", False)]
    r = report([0.40005, 0.9, 0.40001], pairs, threshold=0.5, target_far=0.5)
    assert r.recommended_threshold == 0.4001
    assert r.tar_at_recommended == 0.0


# -- through the command line, on real photos --------------------------------------------------


def test_verify_pairs_cli_error_rows_no_face_and_unmeasurable_far(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    deepface: Path,
    faceplugin_dir: Path,
) -> None:
    for name in list(os.environ):
        if name.startswith("FACEGATE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("FACEGATE_HOME", str(tmp_path / "data"))
    root = tmp_path / "photos"
    root.mkdir()
    # deepface's pairs_master: img20/img21 the same person, img20/img16 not.
    for name in ("img20.jpg", "img21.jpg", "img16.jpg", "img17.jpg"):
        shutil.copy(deepface / name, root / name)
    data = (deepface / "img1.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (root / "notes.jpg").write_bytes(b"this is not an image\n")
    cv2.imwrite(str(root / "wall.png"), np.full((240, 320, 3), 128, np.uint8))
    csv = tmp_path / "pairs.csv"
    csv.write_text(
        "file_x,file_y,decision\n"
        "img20.jpg,img21.jpg,Yes\n"
        "img16.jpg,img17.jpg,Yes\n"
        "img20.jpg,img16.jpg,No\n"
        "img20.jpg,truncated.jpg,No\n"  # unreadable -> error
        "notes.jpg,img21.jpg,Yes\n"  # unreadable -> error
        "img17.jpg,missing.jpg,No\n"  # no such file -> error
        "img20.jpg,wall.png,No\n"  # readable, no face -> no_face
    )
    assert main(["verify-pairs", str(csv), "--root", str(root), "--json"]) == 1
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    rows, rep = lines[:-1], lines[-1]
    assert sorted(row["path"] for row in rows) == ["missing.jpg", "notes.jpg", "truncated.jpg"]
    assert all(row["error"] for row in rows)
    assert (rep["pairs"], rep["errors"], rep["no_face"]) == (7, 3, 1)
    assert (rep["genuine_pairs"], rep["impostor_pairs"]) == (2, 1)
    assert [e["path"] for e in rep["error_images"]] == ["truncated.jpg", "notes.jpg", "missing.jpg"]
    assert "no such file" in rep["error_images"][2]["error"]
    assert rep["no_face_images"] == ["wall.png"]
    assert rep["accuracy"] == 1.0
    # One impostor pair measures no FAR of 1e-2 or 1e-3: no numbers, and why.
    assert rep["tar_at_far_1e-3"] is None and rep["recommended_threshold"] is None
    assert rep["tar_at_far_1e-3_note"] == (
        "FAR 1e-3 needs >= 1,000 impostor pairs; this file has 1 scored: 999 more needed"
    )
    assert rep["tar_at_far_1e-2"] is None and "99 more needed" in rep["tar_at_far_1e-2_note"]
