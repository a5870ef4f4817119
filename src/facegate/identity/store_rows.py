"""Row writes inside a transaction the caller already holds.

`Rows` is what the store's own changes (`Store.create_person`, `add_embeddings`, ...) and a
batch import (`BatchWriter`, store_batch.py) have in common: inserting a person, their
embeddings (checked: finite, unit length, the data directory's model pack and dimension) and
thumbnail, bumping the generation the index follows, and writing an audit entry. It never
begins, commits or rolls back: `Store` opens the transaction and hands a `Rows` over it.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from facegate.identity.names import InvalidNameError, clean_name
from facegate.identity.store_types import Clock, NewEmbedding, StoreError


class Rows:
    """Writes on `conn`, inside its open transaction; timestamps from `clock`."""

    def __init__(self, conn: sqlite3.Connection, clock: Clock) -> None:
        self.conn = conn
        self.clock = clock

    def person_exists(self, person_id: str) -> bool:
        row = self.conn.execute("SELECT 1 FROM persons WHERE id = ?", (person_id,)).fetchone()
        return row is not None

    def new_person_id(self) -> str:
        while True:
            pid = secrets.token_hex(6)
            if not self.person_exists(pid):
                return pid

    def insert_person(
        self, person_id: str, name: str, note: str, created_at: float, updated_at: float
    ) -> None:
        """A person row (`name` already through `valid_name`)."""
        self.conn.execute(
            "INSERT INTO persons (id, name, note, created_at, updated_at) VALUES (?,?,?,?,?)",
            (person_id, name, note, created_at, updated_at),
        )

    def insert_embeddings(
        self, person_id: str, items: Sequence[NewEmbedding], pack: str
    ) -> list[int]:
        """The embeddings' row ids; the first ones fix the data directory's model pack and
        dimension, which later ones must match. Bumps the generation."""
        if not items:
            return []
        dim = int(items[0].vector.shape[-1])
        self._check_model(pack, dim)
        ids: list[int] = []
        now = self.clock()
        for item in items:
            vector = checked_vector(item.vector, dim)
            cur = self.conn.execute(
                "INSERT INTO embeddings (person_id, vector, pose, quality, source, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (person_id, vector.tobytes(), item.pose, float(item.quality), item.source, now),
            )
            assert cur.lastrowid is not None
            ids.append(int(cur.lastrowid))
        self.bump_generation()
        return ids

    def set_thumbnail(self, person_id: str, jpeg: bytes | None) -> None:
        """Replace the person's thumbnail (nothing when `jpeg` is None)."""
        if jpeg is not None:
            self.conn.execute(
                "INSERT OR REPLACE INTO thumbnails (person_id, jpeg, updated_at) VALUES (?, ?, ?)",
                (person_id, jpeg, self.clock()),
            )

    def bump_generation(self) -> None:
        """The embeddings changed: an index built before is out of date."""
        self.conn.execute(
            "UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'"
        )

    def audit(self, actor: str, action: str, person_id: str | None, **detail: Any) -> None:
        """Who did what to which person id, and when: never vectors, images or names."""
        self.conn.execute(
            "INSERT INTO audit (at, actor, action, person_id, detail) VALUES (?, ?, ?, ?, ?)",
            (self.clock(), actor, action, person_id, json.dumps(detail, sort_keys=True)),
        )

    def _meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _check_model(self, pack: str, dim: int) -> None:
        stored_pack, stored = self._meta("model_pack"), self._meta("embedding_dim")
        stored_dim = None if stored is None else int(stored)
        if stored_pack is None:
            self.conn.execute("INSERT OR REPLACE INTO meta VALUES ('model_pack', ?)", (pack,))
            self.conn.execute(
                "INSERT OR REPLACE INTO meta VALUES ('embedding_dim', ?)", (str(dim),)
            )
        elif stored_pack != pack or stored_dim != dim:
            raise StoreError(
                f"this data directory holds {stored_dim}-d embeddings of model pack"
                f" {stored_pack}; pack {pack} ({dim}-d) cannot be mixed with them. Switch"
                f" models.pack back to {stored_pack}, or use another --data directory"
            )


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
