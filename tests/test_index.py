"""VectorIndex: exact = brute force, IVF recall, add/remove in place, save/load and its stamp."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faiss as _faiss
import numpy as np
import numpy.typing as npt
import pytest

from facegate.identity.index import HEADER_SIZE, VectorIndex
from facegate.settings import IndexSettings

Floats = npt.NDArray[np.float32]
Ints = npt.NDArray[np.int64]
faiss: Any = _faiss  # partial stubs (1.15) or none
DIM = 64
EXACT = IndexSettings()
IVF = IndexSettings(approximate_above=1_000)


def unit(x: npt.NDArray[np.floating]) -> Floats:
    out: Floats = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    return out


def random_unit(n: int, seed: int, dim: int = DIM) -> Floats:
    return unit(np.random.default_rng(seed).standard_normal((n, dim)))


def clustered(n_ids: int, per: int, seed: int, dim: int = DIM) -> tuple[Floats, Floats]:
    """Face-like data: identity centres sharing a mean and a decaying spectrum, and noisy
    samples (at 64-d: genuine cosine ~0.73, impostor ~0.03 +- 0.19); (samples, centres)."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    spectrum = np.sqrt(np.arange(1, dim) ** -0.9 / np.sum(np.arange(1, dim) ** -0.9))
    centres = unit(
        0.2 * basis[:, 0] + (rng.standard_normal((n_ids, dim - 1)) * spectrum) @ basis[:, 1:].T
    )
    return noisy(np.repeat(centres, per, axis=0), rng), centres


def noisy(centres: Floats, rng: np.random.Generator) -> Floats:
    scale = 0.55 * np.exp(0.3 * rng.standard_normal((len(centres), 1)))
    noise = rng.standard_normal(centres.shape) / np.sqrt(centres.shape[1])
    return unit(centres + scale * noise)


def brute_force(data: Floats, ids: Ints, queries: Floats, k: int) -> tuple[Floats, Ints]:
    scores = queries @ data.T
    top = np.argsort(-scores, axis=1)[:, :k]
    return np.take_along_axis(scores, top, axis=1), ids[top]


@pytest.fixture(scope="module")
def ivf_data() -> tuple[Floats, Ints, Floats]:
    data, centres = clustered(3_000, 7, seed=1)  # 21k vectors
    ids = np.arange(len(data), dtype=np.int64) * 3 + 5  # row ids are not positions
    queries = noisy(
        centres[np.random.default_rng(2).choice(len(centres), 500)], np.random.default_rng(3)
    )
    return data, ids, queries


def test_exact_equals_brute_force() -> None:
    data, ids = random_unit(3_000, seed=1), np.random.default_rng(0).permutation(10_000)[:3_000]
    queries = random_unit(40, seed=2)
    index = VectorIndex.build(DIM, ids, data, EXACT, generation=7)
    assert (index.kind, index.dim, index.generation, len(index)) == ("exact", DIM, 7, 3_000)
    assert index.build_seconds > 0
    scores, found = index.search(queries, 10)
    want_scores, want_ids = brute_force(data, ids.astype(np.int64), queries, 10)
    assert scores.dtype == np.float32 and found.dtype == np.int64
    np.testing.assert_array_equal(found, want_ids)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)
    assert (np.diff(scores, axis=1) <= 0).all()


def test_fewer_than_k_and_empty() -> None:
    empty = VectorIndex.build(DIM, np.zeros(0, np.int64), np.zeros((0, DIM), np.float32), EXACT, 0)
    scores, found = empty.search(random_unit(2, seed=1), 3)
    assert len(empty) == 0 and (found == -1).all() and np.isneginf(scores).all()
    assert found.shape == scores.shape == (2, 3)
    empty.add(np.array([4, 9]), random_unit(2, seed=2))
    scores, found = empty.search(random_unit(1, seed=3), 5)
    assert sorted(found[0, :2]) == [4, 9] and (found[0, 2:] == -1).all()
    assert np.isfinite(scores[0, :2]).all() and np.isneginf(scores[0, 2:]).all()
    assert empty.search(np.zeros((0, DIM), np.float32), 2)[1].shape == (0, 2)


@pytest.mark.parametrize("settings", [EXACT, IVF], ids=["exact", "ivf"])
def test_add_and_remove_without_rebuild(
    settings: IndexSettings, ivf_data: tuple[Floats, Ints, Floats]
) -> None:
    data, ids, _ = ivf_data
    index = VectorIndex.build(DIM, ids[:5_000], data[:5_000], settings, generation=1)
    inner = index._index
    # Added vectors are found as themselves.
    index.add(ids[5_000:5_100], data[5_000:5_100])
    assert len(index) == 5_100
    _, found = index.search(data[5_000:5_100], 1)
    np.testing.assert_array_equal(found[:, 0], ids[5_000:5_100])
    # Removed ids are never returned, even for their own vectors.
    gone = ids[np.r_[0:50, 5_000:5_050]]
    assert index.remove(np.r_[gone, [-3, 10**12]]) == 100  # absent ids are ignored
    assert index.remove(gone) == 0
    assert len(index) == 5_000
    _, found = index.search(data[np.r_[0:50, 5_000:5_050]], 20)
    assert not np.isin(found, gone).any()
    assert index._index is inner  # updated in place, not rebuilt
    with pytest.raises(ValueError, match=r"already in the index: 185$"):
        index.add(np.array([1, ids[60]]), data[[60, 61]])  # ids[60] = 185 is there, 1 is not
    index.add(gone[:1], data[:1])  # a removed id can come back
    assert index.search(data[:1], 1)[1][0, 0] == gone[0] and len(index) == 5_001


def test_ivf_recall_against_exact(ivf_data: tuple[Floats, Ints, Floats]) -> None:
    data, ids, queries = ivf_data
    ivf = VectorIndex.build(DIM, ids, data, IVF, generation=3)
    assert ivf.kind == "ivf" and len(ivf) == len(data) and 100 <= ivf.nlist <= 600
    exact = VectorIndex.build(DIM, ids, data, EXACT, generation=3)
    recall = (ivf.search(queries, 1)[1] == exact.search(queries, 1)[1]).mean()
    assert recall >= 0.99
    # After removing a fifth of the vectors (including many true answers), still.
    gone = np.r_[exact.search(queries[:200], 1)[1][:, 0], ids[::5]]
    ivf.remove(gone)
    exact.remove(gone)
    assert len(ivf) == len(exact)
    top_ivf, top_exact = ivf.search(queries, 1)[1], exact.search(queries, 1)[1]
    assert not np.isin(top_ivf, gone).any()
    assert (top_ivf == top_exact).mean() >= 0.99


@pytest.mark.parametrize("settings", [EXACT, IVF], ids=["exact", "ivf"])
def test_save_load_round_trip(
    tmp_path: Path, settings: IndexSettings, ivf_data: tuple[Floats, Ints, Floats]
) -> None:
    data, ids, queries = ivf_data
    index = VectorIndex.build(DIM, ids[:8_000], data[:8_000], settings, generation=11)
    index.remove(ids[:10])
    index.generation = 12
    path = tmp_path / "index.faiss"
    index.save(path)
    loaded = VectorIndex.load(path, generation=12, count=7_990, dim=DIM, settings=settings)
    assert loaded is not None
    assert (loaded.kind, loaded.dim, loaded.generation, len(loaded)) == (index.kind, DIM, 12, 7_990)
    assert loaded.nlist == index.nlist
    for got, want in zip(loaded.search(queries, 5), index.search(queries, 5), strict=True):
        np.testing.assert_array_equal(got, want)
    loaded.add(ids[:1], data[:1])  # the loaded index knows its ids
    with pytest.raises(ValueError, match="already in the index"):
        loaded.add(ids[10:11], data[10:11])


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    path = tmp_path / "index.faiss"
    VectorIndex.build(DIM, np.arange(500), random_unit(500, seed=1), EXACT, generation=4).save(path)
    return path


def load(path: Path, generation: int = 4, count: int = 500, dim: int = DIM) -> VectorIndex | None:
    return VectorIndex.load(path, generation=generation, count=count, dim=dim, settings=EXACT)


def test_load_checks_the_stamp(saved: Path, tmp_path: Path) -> None:
    assert load(saved) is not None
    assert load(tmp_path / "missing.faiss") is None
    assert load(tmp_path) is None  # a directory
    assert load(saved, generation=5) is None
    assert load(saved, count=499) is None
    assert load(saved, dim=128) is None


def test_load_rejects_torn_and_damaged_files(saved: Path) -> None:
    good = saved.read_bytes()
    damaged = [
        good[:n] for n in (0, 10, HEADER_SIZE - 1, HEADER_SIZE, HEADER_SIZE + 100, len(good) - 1)
    ]
    damaged.append(good + b"\0")
    for at in (
        0,
        9,
        12,
        20,
        30,
        HEADER_SIZE - 1,
        HEADER_SIZE,
        HEADER_SIZE + 40,
        len(good) // 2,
        len(good) - 1,
    ):
        flipped = bytearray(good)
        flipped[at] ^= 0x10
        damaged.append(bytes(flipped))
    for data in damaged:
        saved.write_bytes(data)
        assert load(saved) is None, len(data)
    saved.write_bytes(good)
    assert load(saved) is not None


def test_save_is_atomic_and_private(saved: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    index = load(saved)
    assert index is not None
    os.chmod(saved, 0o644)
    old_umask = os.umask(0)
    try:
        index.save(saved)  # over an existing file
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert sorted(p.name for p in saved.parent.iterdir()) == ["index.faiss"]
    # A failed save leaves the old file whole and no temp file behind.
    before = saved.read_bytes()
    index.generation = 5

    def fail(*_: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(faiss, "write_index", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        index.save(saved)
    assert saved.read_bytes() == before
    assert sorted(p.name for p in saved.parent.iterdir()) == ["index.faiss"]


def test_input_validation() -> None:
    data, ids = random_unit(10, seed=1), np.arange(10)
    index = VectorIndex.build(DIM, ids, data, EXACT, generation=0)
    float_ids: Any = ids * 1.0
    bad_rows = data.copy()
    bad_rows[3, 5] = np.nan
    cases: list[tuple[Callable[[], object], str]] = [
        (lambda: VectorIndex.build(DIM, ids, data[:, :32], EXACT, 0), r"shape \(n, 64\)"),
        (lambda: VectorIndex.build(DIM, ids[:9], data, EXACT, 0), "9 ids, 10 vectors"),
        (lambda: VectorIndex.build(DIM, ids, bad_rows, EXACT, 0), "row 3 has a non-finite"),
        (lambda: VectorIndex.build(DIM, np.r_[ids[:9], 3], data, EXACT, 0), "ids repeat: 3"),
        (lambda: VectorIndex.build(DIM, ids - 1, data, EXACT, 0), "ids must be >= 0"),
        (lambda: VectorIndex.build(DIM, float_ids, data, EXACT, 0), "expected integers"),
        (lambda: VectorIndex.build(DIM, ids, data.astype(np.int32), EXACT, 0), "floating-point"),
        (lambda: VectorIndex.build(0, ids[:0], data[:0, :0], EXACT, 0), "dim must be >= 1"),
        (lambda: index.add(np.array([20]), data[:1, :10]), r"shape \(n, 64\)"),
        (lambda: index.add(np.array([20, 21]), data[:1]), "2 ids, 1 vectors"),
        (lambda: index.add(np.array([20]), np.full((1, DIM), np.inf, np.float32)), "row 0"),
        (lambda: index.search(data[0], 1), r"shape \(n, 64\)"),  # one query still needs (1, d)
        (lambda: index.search(bad_rows, 1), "queries: row 3"),
        (lambda: index.search(data, 0), "k must be a positive integer"),
        (lambda: index.search(data, True), "k must be a positive integer"),
        (lambda: index.remove(np.array([[1]])), "1-d array"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()
    assert len(index) == 10  # nothing half-applied
    float64 = VectorIndex.build(DIM, ids, data.astype(np.float64), EXACT, 0)  # converted, kept
    np.testing.assert_array_equal(float64.search(data, 1)[1][:, 0], ids)


def test_threads_are_applied() -> None:
    index = VectorIndex.build(
        DIM, np.arange(10), random_unit(10, seed=1), IndexSettings(threads=2), 0
    )
    faiss.omp_set_num_threads(1)
    index.search(random_unit(1, seed=2), 1)
    assert faiss.omp_get_max_threads() == 2
    index.settings = IndexSettings(threads=1)
    index.search(random_unit(1, seed=2), 1)
    assert faiss.omp_get_max_threads() == 1


def test_tiny_ivf() -> None:
    data = random_unit(5, seed=1)
    index = VectorIndex.build(DIM, np.arange(5), data, IndexSettings(approximate_above=1), 0)
    assert (index.kind, index.nlist) == ("ivf", 1)
    np.testing.assert_array_equal(index.search(data, 1)[1][:, 0], np.arange(5))
    assert (index.search(data[:1], 8)[1][0, 5:] == -1).all()
