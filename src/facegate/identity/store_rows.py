"""Row writes inside a transaction the caller already holds.

`Rows` is what the store's own changes (`Store.create_person`, `add_embeddings`, ...) and a
batch import (`BatchWriter`, store_batch.py) have in common: inserting a person, their
embeddings (checked: finite, unit length, the store's model pack and dimension) and
thumbnail, noting which persons changed, and writing an audit entry. It never begins, commits
or rolls back: `Store` opens the transaction, hands a `Rows` over it and, before committing,
calls `finish`: one generation step for the whole transaction, announced to the other gates.
Writing embeddings takes the gallery's writer lock (`Tx.exclusive`) first.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from facegate.identity.names import InvalidNameError, clean_name
from facegate.identity.store_db import Tx
from facegate.identity.store_types import Clock, GalleryChange, NewEmbedding, StoreError, Vectors

INSERT_ROWS = 100  # embeddings per INSERT statement (one round trip to PostgreSQL)


class Rows:
    """Writes in the open transaction `tx`; timestamps from `clock`."""

    def __init__(self, tx: Tx, clock: Clock) -> None:
        self.tx = tx
        self.clock = clock
        self.changed: set[str] = set()  # persons whose gallery entry this transaction changed
        self.generation: int | None = None  # after `finish`, if anything changed
        self._model: tuple[str, int] | None = None  # the model pack checked in this transaction

    def person_exists(self, person_id: str) -> bool:
        return bool(self.tx.query("SELECT 1 FROM persons WHERE id = ?", (person_id,)))

    def new_person_id(self) -> str:
        while True:
            pid = secrets.token_hex(6)
            if not self.person_exists(pid):
                return pid

    def insert_person(
        self, person_id: str, name: str, note: str, created_at: float, updated_at: float
    ) -> None:
        """A person row (`name` already through `valid_name`)."""
        self.tx.run(
            "INSERT INTO persons (id, name, note, created_at, updated_at) VALUES (?,?,?,?,?)",
            (person_id, name, note, created_at, updated_at),
        )
        self.changed.add(person_id)

    def insert_embeddings(
        self, person_id: str, items: Sequence[NewEmbedding], pack: str
    ) -> list[int]:
        """The embeddings' row ids; the first ones fix the store's model pack and dimension,
        which later ones must match."""
        if not items:
            return []
        self.tx.exclusive()
        dim = int(items[0].vector.shape[-1])
        self._check_model(pack, dim)
        now = self.clock()
        values = [
            (
                person_id,
                checked_vector(i.vector, dim).tobytes(),
                i.pose,
                float(i.quality),
                i.source,
                now,
            )
            for i in items
        ]
        ids: list[int] = []
        for start in range(0, len(values), INSERT_ROWS):
            chunk = values[start : start + INSERT_ROWS]
            rows = self.tx.query(
                "INSERT INTO embeddings (person_id, vector, pose, quality, source, created_at)"
                f" VALUES {', '.join(['(?, ?, ?, ?, ?, ?)'] * len(chunk))} RETURNING id",
                [v for row in chunk for v in row],
            )
            # Ids are handed out in the order of the VALUES (RETURNING's order is not).
            ids += sorted(int(r[0]) for r in rows)
        self.changed.add(person_id)
        return ids

    def set_thumbnail(self, person_id: str, jpeg: bytes | None) -> None:
        """Replace the person's thumbnail (nothing when `jpeg` is None)."""
        if jpeg is not None:
            self.tx.run(
                "INSERT INTO thumbnails (person_id, jpeg, updated_at) VALUES (?, ?, ?)"
                " ON CONFLICT (person_id) DO UPDATE SET jpeg = excluded.jpeg,"
                " updated_at = excluded.updated_at",
                (person_id, jpeg, self.clock()),
            )

    def touched(self, person_id: str) -> None:
        """The person's gallery entry (name, embeddings, existence) changed."""
        self.tx.exclusive()
        self.changed.add(person_id)

    def finish(self) -> None:
        """Before commit: one generation step for everything this transaction changed (an
        index built before is out of date), announced to the other gates."""
        if not self.changed:
            return
        self.tx.exclusive()
        row = self.tx.query(
            "UPDATE meta SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT)"
            " WHERE key = 'generation' RETURNING value"
        )
        self.generation = int(row[0][0])
        self.tx.notify(GalleryChange(self.generation, sorted(self.changed)))

    def audit(self, actor: str, action: str, person_id: str | None, **detail: Any) -> None:
        """Who did what to which person id, and when: never vectors, images or names."""
        self.tx.run(
            "INSERT INTO audit (at, actor, action, person_id, detail) VALUES (?, ?, ?, ?, ?)",
            (self.clock(), actor, action, person_id, json.dumps(detail, sort_keys=True)),
        )

    def _meta(self, key: str) -> str | None:
        rows = self.tx.query("SELECT value FROM meta WHERE key = ?", (key,))
        return str(rows[0][0]) if rows else None

    def _check_model(self, pack: str, dim: int) -> None:
        if self._model == (pack, dim):
            return
        stored_pack, stored = self._meta("model_pack"), self._meta("embedding_dim")
        stored_dim = None if stored is None else int(stored)
        if stored_pack is None:
            for key, value in (("model_pack", pack), ("embedding_dim", str(dim))):
                self.tx.run(
                    "INSERT INTO meta (key, value) VALUES (?, ?)"
                    " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (key, value),
                )
        elif stored_pack != pack or stored_dim != dim:
            raise StoreError(
                f"this store holds {stored_dim}-d embeddings of model pack"
                f" {stored_pack}; pack {pack} ({dim}-d) cannot be mixed with them. Switch"
                f" models.pack back to {stored_pack}, or use another --data directory"
            )
        self._model = (pack, dim)


def valid_name(name: str) -> str:
    """The name as `names.clean_name` cleans it, or a StoreError saying why it is refused."""
    try:
        return clean_name(name)
    except InvalidNameError as exc:
        raise StoreError(str(exc)) from None


def checked_vector(vector: npt.NDArray[np.float32], dim: int) -> npt.NDArray[np.float32]:
    """The vector as little-endian float32 of `dim` values, finite and L2-normalised."""
    v = np.asarray(vector, dtype="<f4").reshape(-1)
    if v.shape[0] != dim:
        raise StoreError(f"embedding has {v.shape[0]} dimensions, expected {dim}")
    if not np.isfinite(v).all():
        raise StoreError("embedding has non-finite values")
    norm = float(np.linalg.norm(v))
    if abs(norm - 1.0) > 1e-3:
        raise StoreError(f"embedding is not L2-normalised (norm {norm:.4f})")
    return v


def read_vectors(
    rows: Sequence[tuple[Any, ...]], dim: int, where: str, *, ordered: bool = False
) -> Vectors:
    """`(id, person_id, vector bytes)` rows as Vectors (`ordered`: sorted by id), refusing
    damaged ones: neither SQLite nor PostgreSQL checksums row data, so a damaged vector would
    be returned as is."""
    size = dim * 4
    bad = [r[0] for r in rows if len(r[2]) != size]
    if bad:
        raise StoreError(f"{where}: embedding rows {bad[:5]} have the wrong size (damaged)")
    ids = np.fromiter((r[0] for r in rows), np.int64, len(rows))
    order = np.argsort(ids, kind="stable") if ordered else np.arange(len(rows))
    blob = b"".join(rows[i][2] for i in order.tolist())
    matrix = np.frombuffer(blob, "<f4").astype(np.float32).reshape(len(rows), dim)
    norms = np.sqrt(np.einsum("ij,ij->i", matrix, matrix))
    damaged = np.flatnonzero(~np.isfinite(norms) | (np.abs(norms - 1.0) > 1e-3))
    if damaged.size:
        bad_ids = ids[order[damaged[:5]]].tolist()
        raise StoreError(f"{where}: embedding rows {bad_ids} are damaged (not unit vectors)")
    return Vectors(
        ids=ids[order],
        person_ids=[rows[i][1] for i in order.tolist()],
        matrix=matrix,
    )
