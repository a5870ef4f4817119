"""Writers that hold one transaction open for their caller: all of it lands or none does.

- `BatchWriter` (`Store.batch()`): several persons at once (archive imports).
- `Enrolment` (`Store.enrolling()`): one new person, after the caller has checked them against
  the gallery inside the same transaction, under the gallery's writer lock: what the check
  read cannot change before the insert commits, whichever gate writes.
Both work over the transaction's `Rows` (store_rows.py); an exception anywhere in the `with`
block rolls everything back.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from facegate.identity.store_rows import Rows, read_vectors, valid_name
from facegate.identity.store_types import NewEmbedding, StoreError, Vectors


class Enrolment:
    """Inside `with store.enrolling() as enrolment:`: read the gallery as it stands, then
    create the person (or not: leaving the block without creating writes nothing)."""

    def __init__(self, rows: Rows, dim: int | None, where: str) -> None:
        self._rows = rows
        self._dim = dim
        self._where = where

    def vectors_after(self, embedding_id: int) -> Vectors:
        """The embeddings with row ids above `embedding_id` (those an index may not hold
        yet: under the writer lock ids commit in increasing order)."""
        rows = self._rows.tx.query(
            "SELECT id, person_id, vector FROM embeddings WHERE id > ? ORDER BY id",
            (embedding_id,),
        )
        return read_vectors(rows, self._dim or 0, self._where)

    def names(self, person_ids: Iterable[str]) -> dict[str, str]:
        """The names of those of these persons still stored."""
        out: dict[str, str] = {}
        for pid in dict.fromkeys(person_ids):
            rows = self._rows.tx.query("SELECT name FROM persons WHERE id = ?", (pid,))
            if rows:
                out[pid] = str(rows[0][0])
        return out

    def create_person(
        self,
        name: str,
        embeddings: Sequence[NewEmbedding],
        *,
        pack: str,
        actor: str,
        thumbnail: bytes | None = None,
        note: str = "",
        person_id: str | None = None,
    ) -> tuple[str, list[int]]:
        """The new person's id and embedding row ids."""
        rows = self._rows
        name = valid_name(name)
        if not embeddings:
            raise StoreError("a person needs at least one embedding")
        pid = person_id or rows.new_person_id()
        now = rows.clock()
        rows.insert_person(pid, name, note, now, now)
        ids = rows.insert_embeddings(pid, embeddings, pack)
        rows.set_thumbnail(pid, thumbnail)
        sources = sorted({e.source for e in embeddings})
        rows.audit(actor, "enrol", pid, embeddings=len(ids), sources=sources)
        return pid, ids


class BatchWriter:
    """Creates persons with their own ids and creation times (as exported) in one
    transaction the store holds; use it only inside `with store.batch() as batch:`."""

    def __init__(self, rows: Rows) -> None:
        self._rows = rows

    def create_person(
        self,
        person_id: str,
        name: str,
        note: str,
        created_at: float,
        embeddings: Sequence[NewEmbedding],
        *,
        pack: str,
        thumbnail: bytes | None,
    ) -> list[int]:
        """The person's embedding row ids; refuses an id already in the store."""
        rows = self._rows
        if not embeddings:
            raise StoreError(f"person {person_id} has no embeddings")
        if rows.person_exists(person_id):
            raise StoreError(f"a person with id {person_id} already exists")
        rows.insert_person(person_id, valid_name(name), note, created_at, rows.clock())
        ids = rows.insert_embeddings(person_id, embeddings, pack)
        rows.set_thumbnail(person_id, thumbnail)
        return ids

    def audit(self, actor: str, action: str, person_id: str | None = None, **detail: Any) -> None:
        self._rows.audit(actor, action, person_id, **detail)
