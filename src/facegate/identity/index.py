"""The in-memory vector index over the store's embeddings: exact below a size, IVF above.

SQLite is the source of truth: this index is built from it, or loaded from a file whose stamp
matches the store, and is never the only copy. Cosine search is inner product on L2-normalised
float32 vectors; callers normalise and the index stores vectors as given. Ids are the int64
embedding row ids (>= 0; -1 marks "no result").

- `exact`: `IndexIDMap2(IndexFlatIP)`, a memory-bound scan of every vector. Measured with
  bench/gallery.py on this 2-core machine, top-1 on one thread: p50 0.7 ms at 10k, 14.9 ms
  at 100k, 155 ms at 1M vectors; building from a float32 matrix takes 0.2 s at 100k, 2 s at 1M.
- `ivf`, from `IndexSettings.approximate_above` vectors: IVF-Flat, inner product, 4 sqrt(n)
  lists (4000 at 1M). Centroids by two-level spherical k-means on 40 samples per list (fixed
  seed): ~7 s at 1M where one flat k-means took ~130 s, with the same recall. Building at 1M
  takes ~2-3 min on 2 threads, nearly all of it assigning each vector to its list; 6 s at 100k.
  IVF rather than HNSW: IVF adds and removes ids in place (FAISS's HNSW cannot remove at all)
  and builds far faster than HNSW on 1M x 512. On face-like data at 1M, one thread, recall@1
  against exact (in brackets: the top-1 is the exact top-1's person): nprobe 32 2.5 ms, 0.95
  (0.993); nprobe 64 5.0 ms, 0.975 (0.994); nprobe 128 8.4 ms, 0.991 (0.998). At 100k,
  nprobe 32: 0.7 ms, 0.995. IVF only misses neighbours: its scores never exceed exact ones.

`faiss.omp_set_num_threads(settings.threads)` is applied before each build, add and search.
It is process-global: the last index to set it wins (facegate has one index per process).
Every method takes the instance lock: FAISS indexes must not be changed while searched.
"""

from __future__ import annotations

import math
import os
import struct
import threading
import time
import zlib
from pathlib import Path
from typing import Any, BinaryIO, Literal

import faiss as _faiss
import numpy as np
from numpy.typing import NDArray

from facegate.settings import IndexSettings

# FAISS's typing is partial in 1.15 (no PyCallbackIOWriter) and absent before: `Any` here.
faiss: Any = _faiss

Kind = Literal["exact", "ivf"]
FORMAT_VERSION = 1
MAGIC = b"FGINDEX\x00"
# magic, format version, kind, dim, generation, count, payload bytes, then the CRC-32 of the
# payload (the FAISS bytes that follow) and of these fields: a torn write cannot load.
_STAMP = struct.Struct("<8sI8sIqqQ")
_CRC = struct.Struct("<I")
HEADER_SIZE = _STAMP.size + _CRC.size
_IO_CHUNK = 1 << 22
_ROWS_CHUNK = 1 << 16
IVF_TRAIN_PER_LIST = 40
IVF_TRAIN_ITERATIONS = 10
IVF_SEED = 1234


def ivf_lists(n: int) -> int:
    """IVF lists for `n` vectors: 4 sqrt(n), at most one per 40 vectors (k-means samples)."""
    return max(1, min(round(4 * math.sqrt(n)), n // IVF_TRAIN_PER_LIST))


class VectorIndex:
    """Top-k cosine search over (id, vector) pairs; build with `build` or `load`."""

    kind: Kind
    dim: int
    generation: int  # the store generation this index reflects (callers keep it current)
    build_seconds: float  # how long `build` took (0.0 after `load`)
    settings: IndexSettings  # nprobe and threads are read at each call: may be replaced

    def __init__(self, index: Any, kind: Kind, dim: int, settings: IndexSettings) -> None:
        self._index = index
        self._ids = np.sort(_held_ids(index, kind))  # sorted copy, for membership checks
        self._lock = threading.Lock()
        self.kind, self.dim, self.settings = kind, dim, settings
        self.generation = 0
        self.build_seconds = 0.0

    @classmethod
    def build(
        cls,
        dim: int,
        ids: NDArray[np.int64],
        vectors: NDArray[np.float32],
        settings: IndexSettings,
        generation: int,
    ) -> VectorIndex:
        """Exact below `settings.approximate_above` vectors, IVF from there."""
        start = time.perf_counter()
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        vecs = _as_vectors(vectors, dim, "vectors")
        ids64 = _as_ids(ids, len(vecs))
        faiss.omp_set_num_threads(settings.threads)
        n = len(vecs)
        if n >= settings.approximate_above:
            nlist = ivf_lists(n)
            sample = min(n, IVF_TRAIN_PER_LIST * nlist)
            rows = np.sort(np.random.default_rng(IVF_SEED).choice(n, sample, replace=False))
            quantizer = faiss.IndexFlatIP(dim)
            quantizer.add(two_level_centroids(vecs[rows], nlist))
            index: Any = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
            index.is_trained = True  # IVF-Flat's only training is its quantizer's centroids
            kind: Kind = "ivf"
        else:
            index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
            kind = "exact"
        if n:
            index.add_with_ids(vecs, ids64)
        result = cls(index, kind, dim, settings)
        result.generation = generation
        result.build_seconds = time.perf_counter() - start
        return result

    def add(self, ids: NDArray[np.int64], vectors: NDArray[np.float32]) -> None:
        """Add vectors under ids not yet present (no rebuild: IVF keeps its centroids)."""
        vecs = _as_vectors(vectors, self.dim, "vectors")
        ids64 = _as_ids(ids, len(vecs))
        with self._lock:
            present = _members(self._ids, ids64)
            if present.any():
                raise ValueError(f"ids already in the index: {_few(ids64[present])}")
            if len(ids64):
                faiss.omp_set_num_threads(self.settings.threads)
                self._index.add_with_ids(vecs, ids64)
                new = np.sort(ids64)
                self._ids = np.insert(self._ids, np.searchsorted(self._ids, new), new)

    def remove(self, ids: NDArray[np.int64]) -> int:
        """Remove the ids that are present (no rebuild); returns how many were removed."""
        wanted = np.unique(_as_id_array(ids))
        with self._lock:
            gone = wanted[_members(self._ids, wanted)]
            if not len(gone):
                return 0
            removed = int(self._index.remove_ids(gone))
            self._ids = np.delete(self._ids, np.searchsorted(self._ids, gone))
            return removed

    def search(
        self, queries: NDArray[np.float32], k: int
    ) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
        """Per query row the top k (scores descending, ids); -inf / -1 past the last match."""
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        q = _as_vectors(queries, self.dim, "queries")
        with self._lock:
            if not len(self._ids) or not len(q):
                empty = np.full((len(q), int(k)), -np.inf, dtype=np.float32)
                return empty, np.full((len(q), int(k)), -1, dtype=np.int64)
            faiss.omp_set_num_threads(self.settings.threads)
            if self.kind == "ivf":
                self._index.nprobe = self.settings.nprobe
            raw_scores, raw_ids = self._index.search(q, int(k))
        scores = np.asarray(raw_scores, dtype=np.float32)
        found = np.asarray(raw_ids, dtype=np.int64)
        scores[found < 0] = -np.inf
        return scores, found

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def nlist(self) -> int:
        """IVF lists (0 for an exact index)."""
        return int(self._index.nlist) if self.kind == "ivf" else 0

    def save(self, path: Path) -> None:
        """Write atomically (same-directory temp file, fsync, rename), mode 0o600."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            with self._lock, _create_private(tmp) as fh:
                fh.write(bytes(HEADER_SIZE))
                state = [0, 0]  # crc, bytes

                def write(chunk: bytes) -> int:
                    state[0] = zlib.crc32(chunk, state[0])
                    state[1] += len(chunk)
                    return fh.write(chunk)

                faiss.write_index(self._index, faiss.PyCallbackIOWriter(write, _IO_CHUNK))
                fields = (self.kind.encode(), self.dim, self.generation, len(self._ids))
                stamp = _STAMP.pack(MAGIC, FORMAT_VERSION, *fields, state[1])
                fh.seek(0)
                fh.write(stamp + _CRC.pack(zlib.crc32(stamp, state[0])))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fd = os.open(path.parent, os.O_RDONLY)  # make the rename durable
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    @classmethod
    def load(
        cls, path: Path, *, generation: int, count: int, dim: int, settings: IndexSettings
    ) -> VectorIndex | None:
        """The saved index if its stamp matches the store, else None (missing, corrupt, stale)."""
        try:
            with Path(path).open("rb") as fh:
                head = fh.read(HEADER_SIZE)
                if len(head) != HEADER_SIZE:
                    return None
                magic, version, kind_raw, *stamp, nbytes = _STAMP.unpack(head[: _STAMP.size])
                kind = kind_raw.rstrip(b"\0").decode("ascii", "replace")
                if (
                    (magic, version, kind in ("exact", "ivf")) != (MAGIC, FORMAT_VERSION, True)
                    or stamp != [dim, generation, count]
                    or nbytes != os.fstat(fh.fileno()).st_size - HEADER_SIZE
                ):
                    return None
                crc = 0
                while chunk := fh.read(_IO_CHUNK):
                    crc = zlib.crc32(chunk, crc)
                if zlib.crc32(head[: _STAMP.size], crc) != _CRC.unpack(head[_STAMP.size :])[0]:
                    return None
                fh.seek(HEADER_SIZE)
                index = faiss.read_index(faiss.PyCallbackIOReader(fh.read, _IO_CHUNK))
        except (OSError, RuntimeError):  # RuntimeError: FAISS refused the bytes
            return None
        expected = faiss.IndexIVFFlat if kind == "ivf" else faiss.IndexIDMap2
        if not isinstance(index, expected) or index.d != dim or index.ntotal != count:
            return None
        result = cls(index, "ivf" if kind == "ivf" else "exact", dim, settings)
        result.generation = generation
        return result


def two_level_centroids(sample: NDArray[np.float32], nlist: int) -> NDArray[np.float32]:
    """`nlist` unit centroids: sqrt(nlist) coarse spherical k-means clusters, each then split
    in proportion to its size. About sqrt(nlist)/2 times cheaper than one flat k-means."""
    n = len(sample)
    coarse_k = round(math.sqrt(nlist))
    if coarse_k <= 1 or n <= nlist:
        return _kmeans(sample, min(nlist, n))
    coarse = _kmeans(sample, coarse_k)
    near = faiss.knn(sample, coarse, 1, faiss.METRIC_INNER_PRODUCT)[1][:, 0]
    sizes = np.bincount(near, minlength=coarse_k)
    share = sizes * nlist / n
    counts = np.minimum(np.floor(share).astype(np.int64), sizes)
    while (short := nlist - int(counts.sum())) > 0:  # sizes sum to n > nlist: ends
        gap = np.where(counts < sizes, share - counts, -np.inf)
        counts[np.argsort(-gap)[: min(short, int((counts < sizes).sum()))]] += 1
    parts = [_kmeans(sample[near == j], int(c)) for j, c in enumerate(counts) if c]
    return np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)


def _kmeans(points: NDArray[np.float32], k: int) -> NDArray[np.float32]:
    if k == 1:
        mean = points.mean(axis=0, keepdims=True)
        return np.asarray(mean / max(float(np.linalg.norm(mean)), 1e-12), dtype=np.float32)
    options = {"niter": IVF_TRAIN_ITERATIONS, "seed": IVF_SEED, "spherical": True}
    # All the given points (no subsampling) and no warning for < 39 points per centroid.
    options |= {"min_points_per_centroid": 1, "max_points_per_centroid": 1 << 20}
    km: Any = faiss.Kmeans(points.shape[1], k, **options)
    km.train(np.ascontiguousarray(points))
    return np.asarray(km.centroids, dtype=np.float32)


def _create_private(path: Path) -> BinaryIO:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.fchmod(fd, 0o600)  # whatever the umask
    return os.fdopen(fd, "wb")


def _as_vectors(vectors: Any, dim: int, what: str) -> NDArray[np.float32]:
    arr = np.asarray(vectors)
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise ValueError(f"{what}: expected shape (n, {dim}), got {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"{what}: expected floating-point values, got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    for start in range(0, len(arr), _ROWS_CHUNK):
        finite = np.isfinite(arr[start : start + _ROWS_CHUNK]).all(axis=1)
        if not finite.all():
            row = start + int(np.argmin(finite))
            raise ValueError(f"{what}: row {row} has a non-finite value (NaN or infinity)")
    return arr


def _as_id_array(ids: Any) -> NDArray[np.int64]:
    arr = np.asarray(ids)
    if arr.ndim != 1:
        raise ValueError(f"ids: expected a 1-d array, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"ids: expected integers, got dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.int64)


def _as_ids(ids: Any, n: int) -> NDArray[np.int64]:
    arr = _as_id_array(ids)
    if len(arr) != n:
        raise ValueError(f"ids and vectors differ in length: {len(arr)} ids, {n} vectors")
    if n and int(arr.min()) < 0:
        raise ValueError(f"ids must be >= 0 (-1 means no result): {_few(arr[arr < 0])}")
    uniq, counts = np.unique(arr, return_counts=True)
    if len(uniq) != n:
        raise ValueError(f"ids repeat: {_few(uniq[counts > 1])}")
    return arr


def _members(sorted_ids: NDArray[np.int64], ids: NDArray[np.int64]) -> NDArray[np.bool_]:
    if not len(sorted_ids):
        return np.zeros(len(ids), dtype=bool)
    at = np.minimum(np.searchsorted(sorted_ids, ids), len(sorted_ids) - 1)
    hit: NDArray[np.bool_] = sorted_ids[at] == ids
    return hit


def _few(ids: NDArray[np.int64], shown: int = 5) -> str:
    head = ", ".join(str(int(i)) for i in ids[:shown])
    return f"{head}, ... ({len(ids)} in all)" if len(ids) > shown else head


def _held_ids(index: Any, kind: Kind) -> NDArray[np.int64]:
    if kind == "exact":
        return np.asarray(faiss.vector_to_array(index.id_map), dtype=np.int64)
    lists = index.invlists
    parts = [
        faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy()
        for i in range(lists.nlist)
        if lists.list_size(i)
    ]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)
