"""Several persons written in one transaction: all land or none do (archive imports).

`Store.batch()` opens the transaction and yields a `BatchWriter` over its `Rows`
(store_rows.py); an exception anywhere in the `with` block rolls every person back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from facegate.identity.store_rows import Rows, valid_name
from facegate.identity.store_types import NewEmbedding, StoreError


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
