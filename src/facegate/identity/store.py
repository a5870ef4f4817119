"""The identity store: persons, embeddings, thumbnails and an audit log in one SQLite file.

SQLite is the single source of truth; the FAISS index (`index.py`) is rebuilt from it.
- WAL journal, `synchronous=FULL`, `secure_delete=ON`, foreign keys on. Every multi-row change
  (a person with all its embeddings) is one transaction; a kill -9 at any moment leaves either
  all of it or none of it.
- The schema is versioned (`PRAGMA user_version`) with forward-only migrations, and stamped
  with facegate's `application_id`: a file that is not SQLite, or another program's SQLite
  database, is refused and never written to.
- One writer per data directory, enforced with an exclusive `flock` on `<data>/store.lock`;
  readers (`identify`, `persons list`) open the database read-only beside a running writer.
- Deleting a person is erasure: rows deleted with `secure_delete` (freed space zeroed), then
  the WAL checkpointed and truncated, so the vectors' bytes are gone from the files.
- The data directory is created 0700 and the files 0600. The audit log never holds vectors,
  images or names: who did what to which person id, and when.

`Store` is the one public class, and this module exports every name of the store. Beside it:
store_types.py (the records and errors), store_schema.py (versions, migrations, which files
are ours), store_files.py (directory and file permissions, the writer's lock, connections and
their durability settings, WAL truncation), store_rows.py (the row writes a transaction is
made of) and store_batch.py (several persons in one transaction, for imports).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from facegate.identity import store_files, store_schema
from facegate.identity.store_batch import BatchWriter
from facegate.identity.store_files import (
    BUSY_TIMEOUT_S,
    DB_NAME,
    LOCK_NAME,
    PAGE_SIZE,
    SQLITE_HEADER,
)
from facegate.identity.store_rows import Rows, valid_name
from facegate.identity.store_schema import APPLICATION_ID, MIGRATIONS, SCHEMA_VERSION
from facegate.identity.store_types import (
    AuditEntry,
    Clock,
    EmbeddingInfo,
    ErasurePendingError,
    LoggedEvent,
    NewEmbedding,
    Person,
    Source,
    StoreError,
    StoreLockedError,
    UnknownPersonError,
    Vectors,
)

__all__ = [
    "APPLICATION_ID",
    "BUSY_TIMEOUT_S",
    "CHECKPOINT_WAIT_S",
    "DB_NAME",
    "LOCK_NAME",
    "MIGRATIONS",
    "PAGE_SIZE",
    "SCHEMA_VERSION",
    "SQLITE_HEADER",
    "AuditEntry",
    "BatchWriter",
    "Clock",
    "EmbeddingInfo",
    "ErasurePendingError",
    "LoggedEvent",
    "NewEmbedding",
    "Person",
    "Source",
    "Store",
    "StoreError",
    "StoreLockedError",
    "UnknownPersonError",
    "Vectors",
]

# How long erasure waits for readers to finish before reporting it could not complete yet.
CHECKPOINT_WAIT_S = 3.0

# The old name of `store_schema.statements`, for tests that build old databases by hand.
_statements = store_schema.statements


class _Fetched:
    def __init__(self, rows: list[Any]) -> None:
        self._rows = rows

    def fetchall(self) -> list[Any]:
        return self._rows

    def fetchone(self) -> Any:
        return self._rows[0] if self._rows else None


class Store:
    """The SQLite identity store of one data directory. Use `Store.open`."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        data_dir: Path,
        lock: IO[bytes] | None,
        clock: Clock,
    ) -> None:
        self._conn = conn
        self.data_dir = data_dir
        self._lock = lock
        self._clock = clock
        self.erasure_pending = False
        # Serialises use of the connection: the server's loop, its worker threads (uploads)
        # and the registration take turns. Reentrant: writes call reads.
        self._mutex = threading.RLock()

    # -- opening ---------------------------------------------------------------------------
    @classmethod
    def open(cls, data_dir: Path, *, readonly: bool = False, clock: Clock = time.time) -> Store:
        db = data_dir / DB_NAME
        if readonly:
            if not db.exists():
                raise StoreError(f"no facegate data in {data_dir} (no {DB_NAME}); enrol someone")
            store_files.check_header(db)
            reader = store_files.connect(f"file:{urllib.parse.quote(str(db))}?mode=ro", uri=True)
            try:
                store_schema.check_schema(reader, db, readonly=True)
            except BaseException:
                reader.close()
                raise
            return cls(reader, data_dir, None, clock)
        store_files.secure_dir(data_dir)
        lock = store_files.take_lock(data_dir)
        conn: sqlite3.Connection | None = None
        try:
            if db.exists():
                store_files.check_header(db)
            else:
                store_files.create_private(db)
            conn = store_files.connect(str(db))
            # Look before touching: a foreign or newer database is refused unchanged.
            version = store_schema.check_schema(conn, db, readonly=False)
            store_files.make_private(db)
            store_files.configure_writer(conn)
            store = cls(conn, data_dir, lock, clock)
            for target in range(version + 1, SCHEMA_VERSION + 1):
                with store._transaction() as tx:
                    store_schema.migrate_to(tx, target)
        except BaseException:
            if conn is not None:
                conn.close()
            lock.close()
            raise
        return store

    @property
    def path(self) -> Path:
        return self.data_dir / DB_NAME

    @property
    def readonly(self) -> bool:
        return self._lock is None

    def close(self) -> None:
        with self._mutex:
            self._close_locked()

    def _close_locked(self) -> None:
        if self.erasure_pending:
            with contextlib.suppress(sqlite3.Error):
                self.checkpoint(wait=0.5)
        with contextlib.suppress(sqlite3.Error):
            self._conn.close()
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading ---------------------------------------------------------------------------
    def _execute(self, sql: str, params: Sequence[Any] = ()) -> _Fetched:
        """A read, under the store's mutex: one thread at a time uses the connection."""
        with self._mutex:
            return _Fetched(self._conn.execute(sql, params).fetchall())

    def _scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        row = self._execute(sql, params).fetchone()
        return None if row is None else row[0]

    def generation(self) -> int:
        return int(self._scalar("SELECT value FROM meta WHERE key = 'generation'"))

    def meta(self, key: str) -> str | None:
        value = self._scalar("SELECT value FROM meta WHERE key = ?", (key,))
        return None if value is None else str(value)

    def embedding_count(self) -> int:
        return int(self._scalar("SELECT count(*) FROM embeddings"))

    def persons(self) -> list[Person]:
        rows = self._execute(
            "SELECT p.id, p.name, p.note, p.created_at, p.updated_at, count(e.id),"
            " group_concat(e.pose) FROM persons p LEFT JOIN embeddings e ON e.person_id = p.id"
            " GROUP BY p.id ORDER BY p.created_at, p.id"
        ).fetchall()
        return [_person(row) for row in rows]

    def person(self, person_id: str) -> Person:
        row = self._execute(
            "SELECT p.id, p.name, p.note, p.created_at, p.updated_at, count(e.id),"
            " group_concat(e.pose) FROM persons p LEFT JOIN embeddings e ON e.person_id = p.id"
            " WHERE p.id = ? GROUP BY p.id",
            (person_id,),
        ).fetchone()
        if row is None:
            raise UnknownPersonError(person_id)
        return _person(row)

    def embeddings_of(self, person_id: str) -> list[EmbeddingInfo]:
        self.person(person_id)
        rows = self._execute(
            "SELECT id, pose, quality, source, created_at FROM embeddings WHERE person_id = ?"
            " ORDER BY id",
            (person_id,),
        ).fetchall()
        return [EmbeddingInfo(*row) for row in rows]

    def vectors(self, person_id: str | None = None) -> Vectors:
        """All embeddings (or one person's), in row-id order."""
        sql = "SELECT id, person_id, vector FROM embeddings"
        params: tuple[str, ...] = ()
        if person_id is not None:
            sql += " WHERE person_id = ?"
            params = (person_id,)
        rows = self._execute(sql + " ORDER BY id", params).fetchall()
        dim = self.dim() or 0
        bad = [r[0] for r in rows if len(r[2]) != dim * 4]
        if bad:
            raise StoreError(f"{self.path}: embedding rows {bad[:5]} have the wrong size (damaged)")
        blob = b"".join(r[2] for r in rows)
        matrix = np.frombuffer(blob, "<f4").astype(np.float32).reshape(len(rows), dim)
        # SQLite keeps no checksums of row data: a damaged vector would be returned as is.
        norms = np.sqrt(np.einsum("ij,ij->i", matrix, matrix, dtype=np.float64))
        damaged = np.flatnonzero(~np.isfinite(norms) | (np.abs(norms - 1.0) > 1e-3))
        if damaged.size:
            ids = [rows[i][0] for i in damaged[:5].tolist()]
            raise StoreError(f"{self.path}: embedding rows {ids} are damaged (not unit vectors)")
        return Vectors(
            ids=np.array([r[0] for r in rows], np.int64),
            person_ids=[r[1] for r in rows],
            matrix=matrix,
        )

    def dim(self) -> int | None:
        value = self.meta("embedding_dim")
        return None if value is None else int(value)

    def model_pack(self) -> str | None:
        return self.meta("model_pack")

    def thumbnail(self, person_id: str) -> bytes | None:
        self.person(person_id)
        value = self._scalar("SELECT jpeg FROM thumbnails WHERE person_id = ?", (person_id,))
        return None if value is None else bytes(value)

    def audit(self, limit: int = 100) -> list[AuditEntry]:
        rows = self._execute(
            "SELECT id, at, actor, action, person_id, detail FROM audit ORDER BY id DESC LIMIT ?",
            (limit,),
        ).fetchall()
        return [AuditEntry(r[0], r[1], r[2], r[3], r[4], json.loads(r[5])) for r in rows]

    def integrity_check(self) -> str:
        return str(self._scalar("PRAGMA integrity_check"))

    # -- writing ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        if self.readonly:
            raise StoreError("this store was opened read-only")
        with self._mutex:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except sqlite3.IntegrityError as exc:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise StoreError(f"refused by the database: {exc}") from None
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
            if self.erasure_pending:
                self.checkpoint(wait=0.0)

    @contextlib.contextmanager
    def _rows(self) -> Iterator[Rows]:
        """A transaction, and the row writes it is made of."""
        with self._transaction() as conn:
            yield Rows(conn, self._clock)

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
    ) -> tuple[Person, list[int]]:
        """A new person with all its embeddings and thumbnail, in one transaction."""
        name = valid_name(name)
        if not embeddings:
            raise StoreError("a person needs at least one embedding")
        with self._rows() as rows:
            pid = person_id or rows.new_person_id()
            now = self._clock()
            rows.insert_person(pid, name, note, now, now)
            ids = rows.insert_embeddings(pid, embeddings, pack)
            rows.set_thumbnail(pid, thumbnail)
            sources = sorted({e.source for e in embeddings})
            rows.audit(actor, "enrol", pid, embeddings=len(ids), sources=sources)
        return self.person(pid), ids

    def add_embeddings(
        self,
        person_id: str,
        embeddings: Sequence[NewEmbedding],
        *,
        pack: str,
        actor: str,
        thumbnail: bytes | None = None,
    ) -> list[int]:
        if not embeddings:
            raise StoreError("no embeddings to add")
        with self._rows() as rows:
            self.person(person_id)
            ids = rows.insert_embeddings(person_id, embeddings, pack)
            rows.set_thumbnail(person_id, thumbnail)
            rows.conn.execute(
                "UPDATE persons SET updated_at = ? WHERE id = ?", (self._clock(), person_id)
            )
            rows.audit(actor, "add_embeddings", person_id, embeddings=len(ids))
        return ids

    def rename(self, person_id: str, name: str, *, actor: str) -> Person:
        name = valid_name(name)
        with self._rows() as rows:
            self.person(person_id)
            rows.conn.execute(
                "UPDATE persons SET name = ?, updated_at = ? WHERE id = ?",
                (name, self._clock(), person_id),
            )
            rows.audit(actor, "rename", person_id)
        return self.person(person_id)

    def delete_person(self, person_id: str, *, actor: str) -> list[int]:
        """Erase a person: rows, thumbnail and (after a WAL checkpoint) their bytes on disk.

        Returns the removed embedding row ids (for the index)."""
        with self._rows() as rows:
            self.person(person_id)
            ids = [
                int(r[0])
                for r in rows.conn.execute(
                    "SELECT id FROM embeddings WHERE person_id = ?", (person_id,)
                ).fetchall()
            ]
            rows.conn.execute("DELETE FROM persons WHERE id = ?", (person_id,))
            # The event history names them too: erased with them.
            rows.conn.execute("DELETE FROM events WHERE person_id = ?", (person_id,))
            rows.bump_generation()
            rows.audit(actor, "delete", person_id, embeddings=len(ids))
        self.erasure_pending = True
        if not self.checkpoint():
            raise ErasurePendingError(person_id, ids)
        return ids

    # -- event history ---------------------------------------------------------------------
    def log_events(
        self, rows: Sequence[LoggedEvent], *, retention_seconds: float, max_rows: int
    ) -> None:
        """Append events to the history and prune it to the retention limits. History is
        not biometric data: written without waiting for fsync (synchronous=NORMAL)."""
        if not rows:
            return
        with self._mutex:
            self._log_events_locked(rows, retention_seconds, max_rows)

    def _log_events_locked(
        self, rows: Sequence[LoggedEvent], retention_seconds: float, max_rows: int
    ) -> None:
        self._conn.execute("PRAGMA synchronous = NORMAL")
        try:
            with self._transaction() as conn:
                conn.executemany(
                    "INSERT OR REPLACE INTO events (seq, at, type, person_id, data)"
                    " VALUES (?, ?, ?, ?, ?)",
                    [(r.seq, r.at, r.type, r.person_id, r.data) for r in rows],
                )
                conn.execute(
                    "DELETE FROM events WHERE at < ?", (self._clock() - retention_seconds,)
                )
                conn.execute(
                    "DELETE FROM events WHERE seq <= (SELECT seq FROM events ORDER BY seq DESC"
                    " LIMIT 1 OFFSET ?)",
                    (max_rows,),
                )
        finally:
            self._conn.execute("PRAGMA synchronous = FULL")

    def events(
        self,
        since: int = 0,
        limit: int = 500,
        *,
        before: int | None = None,
        types: Sequence[str] = (),
        person_id: str | None = None,
    ) -> list[LoggedEvent]:
        """Up to `limit` events: those after `since`, oldest first; or with `before`, those
        before it, newest first (paging back through the history). `types` (any of these
        type names) and `person_id` narrow them. Every value is a bound parameter."""
        where = ["seq < ?" if before is not None else "seq > ?"]
        params: list[Any] = [before if before is not None else since]
        kinds = list(dict.fromkeys(types))
        if kinds:
            where.append(f"type IN ({', '.join('?' * len(kinds))})")
            params += kinds
        if person_id is not None:
            where.append("person_id = ?")
            params.append(person_id)
        order = "DESC" if before is not None else "ASC"
        rows = self._execute(
            "SELECT seq, at, type, person_id, data FROM events WHERE "
            + " AND ".join(where)
            + f" ORDER BY seq {order} LIMIT ?",
            (*params, limit),
        ).fetchall()
        return [LoggedEvent(*row) for row in rows]

    def last_seen(self, person_id: str) -> float | None:
        """When the person was last recognised (unix time of the latest `person_recognized`
        in the history), or None: never, or no longer in the history."""
        value = self._scalar(
            "SELECT max(at) FROM events WHERE person_id = ? AND type = 'person_recognized'",
            (person_id,),
        )
        return None if value is None else float(value)

    def last_event_seq(self) -> int:
        return int(self._scalar("SELECT coalesce(max(seq), 0) FROM events"))

    def checkpoint(self, wait: float = CHECKPOINT_WAIT_S) -> bool:
        """Copy the WAL into the database and truncate it, waiting at most `wait` seconds for
        readers; False if a reader still holds old pages (retried at the next write/close)."""
        with self._mutex:
            done = store_files.truncate_wal(self._conn, wait)
            if done:
                self.erasure_pending = False
            return done

    def prune_audit(self, *, retention_seconds: float, max_rows: int) -> int:
        """Drop audit entries older than the retention or beyond the newest `max_rows`."""
        with self._transaction() as conn:
            cur = conn.execute(
                "DELETE FROM audit WHERE at < ?", (self._clock() - retention_seconds,)
            )
            removed = cur.rowcount
            cur = conn.execute(
                "DELETE FROM audit WHERE id <= (SELECT id FROM audit ORDER BY id DESC"
                " LIMIT 1 OFFSET ?)",
                (max_rows,),
            )
            return removed + cur.rowcount

    def record(self, actor: str, action: str, person_id: str | None = None, **detail: Any) -> None:
        """An audit entry on its own (exports, imports, refused attempts)."""
        with self._rows() as rows:
            rows.audit(actor, action, person_id, **detail)

    @contextlib.contextmanager
    def batch(self) -> Iterator[BatchWriter]:
        """Several creations in one transaction (imports): all land or none do."""
        with self._rows() as rows:
            yield BatchWriter(rows)


def _person(row: tuple[Any, ...]) -> Person:
    poses = sorted(set(row[6].split(","))) if row[6] else []
    return Person(
        id=row[0],
        name=row[1],
        note=row[2],
        created_at=row[3],
        updated_at=row[4],
        embeddings=int(row[5]),
        poses=poses,
    )
