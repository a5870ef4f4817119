"""The gallery: the store of known persons with its search index, and open-set decisions.

Open-set identification answers "who is this, if anyone": each known person gets one score
for a probe (the best of their embeddings, or the mean of the best two), and
- `known` when the best person reaches the threshold and leads the runner-up person by the
  margin,
- `ambiguous` when the best person reaches the threshold but another is within the margin,
- `unknown` otherwise.
The same search answers duplicate checks: which persons are similar to a set of embeddings.

The index is always rebuilt from the store (or loaded from a saved copy whose stamp matches
the store's generation and row count); every change goes to the store first, then the index.

Several gates may share one store (PostgreSQL). Each keeps its own index and follows the
others (`apply`, fed by `GalleryFollower` in follower.py): a change names the persons it
touched and the store's generation after it; the persons are re-read from the store and the
index brought to match (idempotent: a gate's own changes come back to it harmlessly). A change
that does not follow the generation the index reflects, or a reconnection, means something
may have been missed: the index is rebuilt from the store when the generations differ. Only
`apply` and a full load move the index's generation; this gate's own writes reach its index at
once but wait for their notification to count as followed.

A new person is checked for duplicates inside the transaction that inserts them, under the
gallery's writer lock (`create_person(..., refuse_similar=True)`): against this index and the
embeddings stored after the last id it is known to reflect fully (`watermark`), so two gates
registering the same stranger at the same moment produce one person.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import msgspec
import numpy as np
import numpy.typing as npt

from facegate.identity.index import VectorIndex
from facegate.identity.store import (
    DuplicatePersonError,
    ErasurePendingError,
    GalleryChange,
    NewEmbedding,
    Person,
    Store,
    StoreError,
    Vectors,
)
from facegate.settings import Settings

INDEX_NAME = "index.faiss"
SEARCH_DEPTH = 64  # nearest embeddings looked at per probe, grouped into persons

# One nearest embedding of a probe: its person (None: not known to this index) and similarity.
_Hit = tuple[str | None, float]

# The open-set answer for one probe (see the module docstring).
Verdict = Literal["known", "ambiguous", "unknown"]


class Candidate(msgspec.Struct, frozen=True):
    person_id: str
    name: str
    similarity: float


class Identification(msgspec.Struct, frozen=True):
    decision: Verdict
    person_id: str | None
    name: str | None
    similarity: float | None  # the best person's score, whatever the decision
    runner_up: Candidate | None
    candidates: list[Candidate]  # best first, at most a few


def person_score(similarities: Sequence[float], mode: str) -> float:
    """One person's score for a probe from the similarities of their embeddings."""
    ordered = sorted(similarities, reverse=True)
    if mode == "mean_top2" and len(ordered) >= 2:
        return (ordered[0] + ordered[1]) / 2.0
    return ordered[0]


def decide(candidates: Sequence[Candidate], threshold: float, margin: float) -> Identification:
    """The open-set decision over candidates sorted best first."""
    best = candidates[0] if candidates else None
    runner = candidates[1] if len(candidates) > 1 else None
    if best is None or best.similarity < threshold:
        decision: Verdict = "unknown"
    elif runner is not None and best.similarity - runner.similarity < margin:
        decision = "ambiguous"
    else:
        decision = "known"
    known = decision == "known"
    return Identification(
        decision=decision,
        person_id=best.person_id if known and best else None,
        name=best.name if known and best else None,
        similarity=best.similarity if best else None,
        runner_up=runner,
        candidates=list(candidates[:5]),
    )


class Gallery:
    """Known persons: the store plus an index over their embeddings. Use `Gallery.open`."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self.pack = settings.models.pack
        self._index: VectorIndex | None = None
        self._person_of: dict[int, str] = {}
        self._ids_of: dict[str, set[int]] = {}
        self._names: dict[str, str] = {}
        # Every embedding with an id up to this is in the index (see the module docstring).
        self.watermark = 0
        # Counters of `apply`, for stats: changes followed person by person, full reloads.
        self.followed = 0
        self.reloads = 0
        self.loaded_from_disk = False
        self.start_seconds = 0.0
        # Bumped by every change of persons or embeddings (the engine re-identifies then).
        self.version = 0
        # The engine thread searches while the server's loop enrols and erases.
        self._lock = threading.RLock()
        self._sync_lock = threading.Lock()  # one `apply` at a time

    @classmethod
    def open(cls, store: Store, settings: Settings) -> Gallery:
        stored = store.model_pack()
        if stored is not None and stored != settings.models.pack:
            raise StoreError(
                f"{store.where} holds embeddings of model pack {stored}, but models.pack is"
                f" {settings.models.pack}: faces from different models cannot be compared."
                f" Set models.pack = {stored!r}, or use another --data directory"
            )
        gallery = cls(store, settings)
        gallery._load()
        return gallery

    @property
    def index_path(self) -> Path:
        return self.store.data_dir / INDEX_NAME

    def _load(self) -> None:
        """Build the index from the store, then swap it in (searches go on meanwhile)."""
        t0 = time.perf_counter()
        # The generation first: a change committed while the rest is read is then either in
        # what is read or not, and in both cases comes through `apply` again (idempotent).
        generation = self.store.generation()
        vectors = self.store.vectors()
        names = self.store.names()
        dim = self.store.dim() or 512
        person_of = dict(zip(vectors.ids.tolist(), vectors.person_ids, strict=True))
        ids_of: dict[str, set[int]] = {}
        for emb_id, pid in person_of.items():
            ids_of.setdefault(pid, set()).add(emb_id)
        cfg = self.settings.index
        index = VectorIndex.load(
            self.index_path, generation=generation, count=len(vectors.ids), dim=dim, settings=cfg
        )
        loaded_from_disk = index is not None
        if index is None:
            matrix = vectors.matrix.reshape(len(vectors.ids), dim)
            index = VectorIndex.build(dim, vectors.ids, matrix, cfg, generation)
            if not self.store.readonly and index.build_seconds > cfg.save_after_build_seconds:
                index.save(self.index_path)
        with self._lock:
            self._index = index
            self._person_of, self._ids_of, self._names = person_of, ids_of, names
            self.watermark = int(vectors.ids.max()) if len(vectors.ids) else 0
            self.loaded_from_disk = loaded_from_disk
            self.version += 1
        self.start_seconds = time.perf_counter() - t0

    def refresh(self) -> bool:
        """Rebuild from the store if another process changed it; True if it did."""
        return self.apply(None)

    @property
    def generation(self) -> int:
        """The store generation the index reflects."""
        return 0 if self._index is None else self._index.generation

    def apply(self, change: GalleryChange | None) -> bool:
        """Follow a change another process committed (None: it may have changed unseen);
        True if the index changed or was rebuilt."""
        with self._sync_lock:
            current = self.generation
            if change is not None and change.generation <= current:
                return False  # already reflected (this gate's own change, or a reload)
            if change is None or change.persons is None or change.generation != current + 1:
                if change is None and self.store.generation() == current:
                    return False
                self._load()
                self.reloads += 1
                return True
            for person_id in change.persons:
                self._sync_person(person_id)
            with self._lock:
                assert self._index is not None
                self._index.generation = change.generation
            self.followed += 1
            return True

    def _sync_person(self, person_id: str) -> None:
        """Make the index hold exactly what the store holds of this person now."""
        person = self.store.find_person(person_id)
        vectors = self.store.vectors(person_id) if person is not None else None
        if person is None or vectors is None:
            self._forget(person_id)
            # A saved index holds their vectors too: erased with them.
            with contextlib.suppress(FileNotFoundError):
                self.index_path.unlink()
            return
        with self._lock:
            stored = set(vectors.ids.tolist())
            gone = self._ids_of.get(person_id, set()) - stored
            self._remove_ids(gone)
            self._add_ids(person, vectors)
            if stored:
                self.watermark = max(self.watermark, *stored)
            self.version += 1

    def _add_ids(self, person: Person, vectors: Vectors) -> None:
        """Add the vectors the index lacks (the caller holds the lock)."""
        assert self._index is not None
        new = np.array([i not in self._person_of for i in vectors.ids.tolist()], bool)
        ids = vectors.ids[new]
        if len(ids):
            self._index.add(ids, vectors.matrix[new])
        self._person_of.update(dict.fromkeys(ids.tolist(), person.id))
        self._ids_of.setdefault(person.id, set()).update(ids.tolist())
        self._names[person.id] = person.name

    def _remove_ids(self, ids: set[int]) -> None:
        assert self._index is not None
        if ids:
            self._index.remove(np.array(sorted(ids), np.int64))
        for emb_id in ids:
            person = self._person_of.pop(emb_id, None)
            if person is not None:
                self._ids_of.get(person, set()).discard(emb_id)

    def _forget(self, person_id: str) -> None:
        with self._lock:
            self._remove_ids(set(self._ids_of.pop(person_id, set())))
            self._names.pop(person_id, None)
            self.version += 1

    def __len__(self) -> int:
        return 0 if self._index is None else len(self._index)

    @property
    def index_kind(self) -> str:
        return "none" if self._index is None else self._index.kind

    def name_of(self, person_id: str) -> str | None:
        return self._names.get(person_id)

    @property
    def person_count(self) -> int:
        return len(self._names)

    # -- search ----------------------------------------------------------------------------
    def _index_hits(self, probes: npt.NDArray[np.float32]) -> list[dict[int, _Hit]]:
        """Per probe, the index's nearest embeddings: id -> (person, similarity)."""
        assert self._index is not None
        hits: list[dict[int, _Hit]] = [{} for _ in range(len(probes))]
        with self._lock:
            if len(self._index):
                k = min(SEARCH_DEPTH, len(self._index))
                scores, ids = self._index.search(probes, k)
                for row, row_scores, row_ids in zip(hits, scores, ids, strict=True):
                    for score, emb_id in zip(row_scores.tolist(), row_ids.tolist(), strict=True):
                        if emb_id >= 0 and math.isfinite(score):
                            row[emb_id] = (self._person_of.get(emb_id), score)
        return hits

    def _person_scores(
        self,
        probes: npt.NDArray[np.float32],
        recent: Vectors | None = None,
        hits: list[dict[int, _Hit]] | None = None,
    ) -> list[dict[str, float]]:
        """Per probe, each near person's score; `recent`: stored embeddings the index may
        not hold yet, compared one by one; `hits`: the index's, if already searched."""
        probes = np.ascontiguousarray(np.atleast_2d(probes), np.float32)
        if hits is None:
            hits = self._index_hits(probes)
        if recent is not None and len(recent.ids):
            hits = [dict(row) for row in hits]
            similarity = probes @ recent.matrix.T
            for row, values in zip(hits, similarity.tolist(), strict=True):
                for emb_id, owner, score in zip(
                    recent.ids.tolist(), recent.person_ids, values, strict=True
                ):
                    row[emb_id] = (owner, score)
        mode = self.settings.recognition.aggregate
        out: list[dict[str, float]] = []
        for row in hits:
            per_person: dict[str, list[float]] = {}
            for person, score in row.values():
                if person is not None:
                    per_person.setdefault(person, []).append(score)
            out.append({p: person_score(s, mode) for p, s in per_person.items()})
        return out

    def _candidates(self, scores: dict[str, float]) -> list[Candidate]:
        ranked = sorted(scores.items(), key=lambda item: item[1], reverse=True)
        return [Candidate(p, self._names.get(p, p), round(s, 4)) for p, s in ranked]

    def identify(self, probes: npt.NDArray[np.float32]) -> list[Identification]:
        """One open-set decision per probe embedding."""
        rec = self.settings.recognition
        return [
            decide(self._candidates(scores), rec.threshold, rec.margin)
            for scores in self._person_scores(probes)
        ]

    def similar_persons(
        self,
        embeddings: npt.NDArray[np.float32],
        threshold: float | None = None,
        exclude: str | None = None,
        recent: Vectors | None = None,
        hits: list[dict[int, _Hit]] | None = None,
    ) -> list[Candidate]:
        """Persons whose score against these embeddings reaches the threshold (duplicate check).

        A person's score is the mean of their best half of per-embedding scores, so one odd
        capture neither hides nor creates a match. `recent` and `hits`: see `_person_scores`."""
        limit = self.settings.recognition.duplicate_threshold if threshold is None else threshold
        per_probe = self._person_scores(embeddings, recent, hits)
        persons = {p for scores in per_probe for p in scores} - {exclude}
        result: dict[str, float] = {}
        for person in persons:
            values = sorted((s.get(person, -1.0) for s in per_probe), reverse=True)
            top = values[: max(1, math.ceil(len(values) / 2))]
            score = float(np.mean(top))
            if score >= limit:
                result[person] = score
        return self._candidates(result)

    # -- changes (store first, then index) ---------------------------------------------------
    def create_person(
        self,
        name: str,
        embeddings: Sequence[NewEmbedding],
        *,
        actor: str,
        thumbnail: bytes | None = None,
        refuse_similar: bool = False,
    ) -> Person:
        """A new person. `refuse_similar`: unless they match someone already stored (the
        duplicate check and the insert in one transaction under the gallery's writer lock:
        whichever gate added that someone, even a moment ago), else DuplicatePersonError."""
        matrix = np.stack([np.asarray(e.vector, np.float32).reshape(-1) for e in embeddings])
        # The index is searched before the lock (every gate's writers wait for it); inside,
        # only what was stored after the index's watermark, as it stood for that search.
        watermark = self.watermark
        hits = self._index_hits(matrix) if refuse_similar else None
        with self.store.enrolling() as enrolment:
            if refuse_similar:
                recent = enrolment.vectors_after(watermark)
                matches = self.similar_persons(matrix, recent=recent, hits=hits)
                names = enrolment.names(c.person_id for c in matches)
                alive = [
                    (c.person_id, names[c.person_id], c.similarity)
                    for c in matches
                    if c.person_id in names
                ]
                if alive:
                    raise DuplicatePersonError(alive)
            pid, ids = enrolment.create_person(
                name, embeddings, pack=self.pack, actor=actor, thumbnail=thumbnail
            )
        person = self.store.person(pid)
        self._added(person, ids, embeddings)
        return person

    def add_embeddings(
        self,
        person_id: str,
        embeddings: Sequence[NewEmbedding],
        *,
        actor: str,
        thumbnail: bytes | None = None,
    ) -> Person:
        ids = self.store.add_embeddings(
            person_id, embeddings, pack=self.pack, actor=actor, thumbnail=thumbnail
        )
        person = self.store.person(person_id)
        self._added(person, ids, embeddings)
        return person

    def _added(self, person: Person, ids: list[int], embeddings: Sequence[NewEmbedding]) -> None:
        """This gate's own write, in its index at once (the generation moves when the
        change comes back through `apply`, or at the next load)."""
        matrix = np.stack([np.asarray(e.vector, np.float32).reshape(-1) for e in embeddings])
        vectors = Vectors(np.array(ids, np.int64), [person.id] * len(ids), matrix)
        with self._lock:
            self._add_ids(person, vectors)
            self.version += 1

    def rename(self, person_id: str, name: str, *, actor: str) -> Person:
        person = self.store.rename(person_id, name, actor=actor)
        with self._lock:
            if person_id in self._names:
                self._names[person_id] = person.name
            self.version += 1
        return person

    def delete_person(self, person_id: str, *, actor: str) -> int:
        """Erase a person everywhere: store rows, index entries, and the saved index file."""
        assert self._index is not None
        pending: ErasurePendingError | None = None
        try:
            ids = self.store.delete_person(person_id, actor=actor)
        except ErasurePendingError as exc:  # deleted; the bytes go when a reader finishes
            ids, pending = exc.removed_ids, exc
        # The saved index holds the vectors too: remove it (rebuilt at the next slow start).
        with contextlib.suppress(FileNotFoundError):
            self.index_path.unlink()
        with self._lock:
            self._remove_ids(set(ids))
        self._forget(person_id)
        if pending is not None:
            raise pending
        return len(ids)
