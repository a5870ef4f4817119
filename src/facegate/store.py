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
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, Literal

import msgspec
import numpy as np
import numpy.typing as npt

from facegate.names import InvalidNameError, clean_name

DB_NAME = "facegate.db"
LOCK_NAME = "store.lock"
APPLICATION_ID = 0x46474154  # "FGAT"
SQLITE_HEADER = b"SQLite format 3\x00"
PAGE_SIZE = 16384
BUSY_TIMEOUT_S = 10.0
# How long erasure waits for readers to finish before reporting it could not complete yet.
CHECKPOINT_WAIT_S = 3.0

Source = Literal["photo", "registration"]
Clock = Callable[[], float]

# Forward-only migrations: MIGRATIONS[v] takes a database from version v-1 to v.
MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE persons (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE embeddings (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        person_id TEXT NOT NULL REFERENCES persons(id) ON DELETE CASCADE,
        vector BLOB NOT NULL,
        pose TEXT NOT NULL,
        quality REAL NOT NULL,
        source TEXT NOT NULL CHECK (source IN ('photo', 'registration')),
        created_at REAL NOT NULL
    );
    CREATE INDEX embeddings_person ON embeddings(person_id);
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at REAL NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        person_id TEXT,
        detail TEXT NOT NULL DEFAULT '{}'
    );
    INSERT INTO meta (key, value) VALUES ('generation', '0');
    """,
    2: """
    ALTER TABLE persons ADD COLUMN note TEXT NOT NULL DEFAULT '';
    CREATE TABLE thumbnails (
        person_id TEXT PRIMARY KEY REFERENCES persons(id) ON DELETE CASCADE,
        jpeg BLOB NOT NULL,
        updated_at REAL NOT NULL
    );
    """,
    3: """
    CREATE TABLE events (
        seq INTEGER PRIMARY KEY,
        at REAL NOT NULL,
        type TEXT NOT NULL,
        person_id TEXT,
        data TEXT NOT NULL
    );
    CREATE INDEX events_at ON events(at);
    CREATE INDEX events_person ON events(person_id);
    """,
}
SCHEMA_VERSION = max(MIGRATIONS)


class _Fetched:
    def __init__(self, rows: list[Any]) -> None:
        self._rows = rows

    def fetchall(self) -> list[Any]:
        return self._rows

    def fetchone(self) -> Any:
        return self._rows[0] if self._rows else None


class StoreError(Exception):
    """The store cannot be used as asked; the message says why and what to do."""


class StoreLockedError(StoreError):
    """Another process holds the data directory for writing."""


class UnknownPersonError(StoreError, KeyError):
    def __init__(self, person_id: str) -> None:
        super().__init__(f"no person with id {person_id!r}")
        self.person_id = person_id

    def __str__(self) -> str:
        return str(self.args[0])


class ErasurePendingError(StoreError):
    """The person is deleted, but a reader still holds a snapshot with their data: the bytes
    leave the files when it finishes (retried at every later write and at close)."""

    def __init__(self, person_id: str, removed_ids: list[int]) -> None:
        super().__init__(
            f"person {person_id} is deleted, but another process is still reading the old"
            " data; it will be wiped from disk as soon as that read ends (or at the next"
            " write or close)"
        )
        self.person_id = person_id
        self.removed_ids = removed_ids


class NewEmbedding(msgspec.Struct, frozen=True):
    vector: npt.NDArray[np.float32]
    pose: str = "front"
    quality: float = 0.0
    source: Source = "photo"


class EmbeddingInfo(msgspec.Struct, frozen=True):
    id: int
    pose: str
    quality: float
    source: str
    created_at: float


class Person(msgspec.Struct, frozen=True):
    id: str
    name: str
    note: str
    created_at: float
    updated_at: float
    embeddings: int
    poses: list[str]


class AuditEntry(msgspec.Struct, frozen=True):
    id: int
    at: float
    actor: str
    action: str
    person_id: str | None
    detail: dict[str, Any]


class LoggedEvent(msgspec.Struct, frozen=True):
    seq: int
    at: float  # unix time
    type: str
    person_id: str | None
    data: str  # the event's data as JSON


class Vectors(msgspec.Struct, frozen=True):
    """Every embedding, for building the index: row ids, their persons and the matrix."""

    ids: npt.NDArray[np.int64]
    person_ids: list[str]
    matrix: npt.NDArray[np.float32]  # (n, dim)


def _secure_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o700)


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
            _check_header(db)
            reader = _connect(f"file:{urllib.parse.quote(str(db))}?mode=ro", uri=True)
            store = cls(reader, data_dir, None, clock)
            try:
                store._check_schema(readonly=True)
            except BaseException:
                reader.close()
                raise
            return store
        _secure_dir(data_dir)
        lock = _take_lock(data_dir)
        conn: sqlite3.Connection | None = None
        try:
            if db.exists():
                _check_header(db)
            else:
                os.close(os.open(db, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            conn = _connect(str(db))
            store = cls(conn, data_dir, lock, clock)
            # Look before touching: a foreign or newer database is refused unchanged.
            version = store._check_schema(readonly=False)
            os.chmod(db, 0o600)
            _configure_writer(conn)
            if version < SCHEMA_VERSION:
                store._migrate(version)
        except BaseException:
            if conn is not None:
                conn.close()
            lock.close()
            raise
        return store

    def _check_schema(self, *, readonly: bool) -> int:
        """The schema version to migrate from; raises for files that are not ours."""
        try:
            app_id = self._scalar("PRAGMA application_id")
            version = self._scalar("PRAGMA user_version")
            tables = self._scalar("SELECT count(*) FROM sqlite_master")
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path} is damaged or not a database: {exc}") from None
        if app_id == 0 and version == 0 and tables == 0:
            if readonly:
                raise StoreError(f"{self.path} is empty; enrol someone first")
            return 0
        if app_id != APPLICATION_ID:
            raise StoreError(
                f"{self.path} is an SQLite database of another program (application_id"
                f" {app_id:#x}); refusing to use or change it. Point --data at another directory."
            )
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} has schema version {version}, newer than this facegate knows"
                f" ({SCHEMA_VERSION}); upgrade facegate"
            )
        if version < SCHEMA_VERSION and readonly:
            raise StoreError(
                f"{self.path} has schema version {version}; open it once for writing (any"
                " writing command, or `facegate serve`) to migrate it"
            )
        return int(version)

    def _migrate(self, current: int) -> None:
        for version in range(current + 1, SCHEMA_VERSION + 1):
            with self._transaction():
                for statement in _statements(MIGRATIONS[version]):
                    self._conn.execute(statement)
                self._conn.execute(f"PRAGMA user_version = {version}")
                self._conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")

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

    def _bump_generation(self, conn: sqlite3.Connection) -> None:
        conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")

    def _audit(
        self,
        conn: sqlite3.Connection,
        actor: str,
        action: str,
        person_id: str | None,
        **detail: Any,
    ) -> None:
        conn.execute(
            "INSERT INTO audit (at, actor, action, person_id, detail) VALUES (?, ?, ?, ?, ?)",
            (self._clock(), actor, action, person_id, json.dumps(detail, sort_keys=True)),
        )

    def _check_model(self, conn: sqlite3.Connection, pack: str, dim: int) -> None:
        stored_pack, stored_dim = self.model_pack(), self.dim()
        if stored_pack is None:
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('model_pack', ?)", (pack,))
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('embedding_dim', ?)", (str(dim),))
        elif stored_pack != pack or stored_dim != dim:
            raise StoreError(
                f"this data directory holds {stored_dim}-d embeddings of model pack"
                f" {stored_pack}; pack {pack} ({dim}-d) cannot be mixed with them. Switch"
                f" models.pack back to {stored_pack}, or use another --data directory"
            )

    def _insert_embeddings(
        self, conn: sqlite3.Connection, person_id: str, items: Sequence[NewEmbedding], pack: str
    ) -> list[int]:
        if not items:
            return []
        dim = int(items[0].vector.shape[-1])
        self._check_model(conn, pack, dim)
        ids: list[int] = []
        now = self._clock()
        for item in items:
            vector = _checked_vector(item.vector, dim)
            cur = conn.execute(
                "INSERT INTO embeddings (person_id, vector, pose, quality, source, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (person_id, vector.tobytes(), item.pose, float(item.quality), item.source, now),
            )
            assert cur.lastrowid is not None
            ids.append(int(cur.lastrowid))
        self._bump_generation(conn)
        return ids

    def _set_thumbnail(self, conn: sqlite3.Connection, person_id: str, jpeg: bytes | None) -> None:
        if jpeg is not None:
            conn.execute(
                "INSERT OR REPLACE INTO thumbnails (person_id, jpeg, updated_at) VALUES (?, ?, ?)",
                (person_id, jpeg, self._clock()),
            )

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
        name = _clean_name(name)
        if not embeddings:
            raise StoreError("a person needs at least one embedding")
        with self._transaction() as conn:
            pid = person_id or self._new_id(conn)
            now = self._clock()
            conn.execute(
                "INSERT INTO persons (id, name, note, created_at, updated_at) VALUES (?,?,?,?,?)",
                (pid, name, note, now, now),
            )
            ids = self._insert_embeddings(conn, pid, embeddings, pack)
            self._set_thumbnail(conn, pid, thumbnail)
            sources = sorted({e.source for e in embeddings})
            self._audit(conn, actor, "enrol", pid, embeddings=len(ids), sources=sources)
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
        with self._transaction() as conn:
            self.person(person_id)
            ids = self._insert_embeddings(conn, person_id, embeddings, pack)
            self._set_thumbnail(conn, person_id, thumbnail)
            conn.execute(
                "UPDATE persons SET updated_at = ? WHERE id = ?", (self._clock(), person_id)
            )
            self._audit(conn, actor, "add_embeddings", person_id, embeddings=len(ids))
        return ids

    def rename(self, person_id: str, name: str, *, actor: str) -> Person:
        name = _clean_name(name)
        with self._transaction() as conn:
            self.person(person_id)
            conn.execute(
                "UPDATE persons SET name = ?, updated_at = ? WHERE id = ?",
                (name, self._clock(), person_id),
            )
            self._audit(conn, actor, "rename", person_id)
        return self.person(person_id)

    def delete_person(self, person_id: str, *, actor: str) -> list[int]:
        """Erase a person: rows, thumbnail and (after a WAL checkpoint) their bytes on disk.

        Returns the removed embedding row ids (for the index)."""
        with self._transaction() as conn:
            self.person(person_id)
            ids = [
                int(r[0])
                for r in conn.execute(
                    "SELECT id FROM embeddings WHERE person_id = ?", (person_id,)
                ).fetchall()
            ]
            conn.execute("DELETE FROM persons WHERE id = ?", (person_id,))
            # The event history names them too: erased with them.
            conn.execute("DELETE FROM events WHERE person_id = ?", (person_id,))
            self._bump_generation(conn)
            self._audit(conn, actor, "delete", person_id, embeddings=len(ids))
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
            return self._checkpoint_locked(wait)

    def _checkpoint_locked(self, wait: float) -> bool:
        deadline = time.monotonic() + wait
        self._conn.execute("PRAGMA busy_timeout = 50")
        try:
            while True:
                busy, _, _ = self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                if not busy:
                    self.erasure_pending = False
                    return True
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.05)
        finally:
            self._conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")

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
        with self._transaction() as conn:
            self._audit(conn, actor, action, person_id, **detail)

    @contextlib.contextmanager
    def batch(self) -> Iterator[BatchWriter]:
        """Several creations in one transaction (imports): all land or none do."""
        with self._transaction() as conn:
            yield BatchWriter(self, conn)

    def _new_id(self, conn: sqlite3.Connection) -> str:
        while True:
            pid = secrets.token_hex(6)
            if conn.execute("SELECT 1 FROM persons WHERE id = ?", (pid,)).fetchone() is None:
                return pid


class BatchWriter:
    def __init__(self, store: Store, conn: sqlite3.Connection) -> None:
        self._store = store
        self._conn = conn

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
        s = self._store
        if not embeddings:
            raise StoreError(f"person {person_id} has no embeddings")
        if self._conn.execute("SELECT 1 FROM persons WHERE id = ?", (person_id,)).fetchone():
            raise StoreError(f"a person with id {person_id} already exists")
        self._conn.execute(
            "INSERT INTO persons (id, name, note, created_at, updated_at) VALUES (?,?,?,?,?)",
            (person_id, _clean_name(name), note, created_at, s._clock()),
        )
        ids = s._insert_embeddings(self._conn, person_id, embeddings, pack)
        s._set_thumbnail(self._conn, person_id, thumbnail)
        return ids

    def audit(self, actor: str, action: str, person_id: str | None = None, **detail: Any) -> None:
        self._store._audit(self._conn, actor, action, person_id, **detail)


# -- helpers ---------------------------------------------------------------------------------
def _connect(target: str, *, uri: bool = False) -> sqlite3.Connection:
    try:
        # One thread at a time (the server's loop, or a CLI command); the engine thread never
        # touches SQL. check_same_thread=False lets the loop's worker threads take turns.
        conn = sqlite3.connect(
            target, uri=uri, isolation_level=None, timeout=BUSY_TIMEOUT_S, check_same_thread=False
        )
        conn.execute("PRAGMA foreign_keys = ON")
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{target} is damaged or not a database: {exc}") from None
    return conn


def _configure_writer(conn: sqlite3.Connection) -> None:
    try:
        # A 2 KiB embedding row leaves half of a 4 KiB page empty; 16 KiB pages hold seven.
        # (Takes effect only on a new, empty database.)
        conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA secure_delete = ON")
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"cannot configure the database: {exc}") from None


def _check_header(db: Path) -> None:
    try:
        with db.open("rb") as fh:
            header = fh.read(len(SQLITE_HEADER))
    except OSError as exc:
        raise StoreError(f"cannot read {db}: {exc.strerror}") from None
    if header and header != SQLITE_HEADER:
        raise StoreError(
            f"{db} is not an SQLite database (damaged, or another file); refusing to use or"
            " overwrite it. Restore it from a backup or move it away."
        )


def _take_lock(data_dir: Path) -> IO[bytes]:
    fd = os.open(data_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    handle = os.fdopen(fd, "r+b")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = handle.read().decode(errors="replace").strip() or "another process"
        handle.close()
        raise StoreLockedError(
            f"{data_dir} is in use by {holder}: only one facegate process may write to a data"
            " directory. Stop it first, or use a reading command (identify, persons list)."
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}".encode())
    handle.flush()
    return handle


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]


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


def _clean_name(name: str) -> str:
    try:
        return clean_name(name)
    except InvalidNameError as exc:
        raise StoreError(str(exc)) from None


def _checked_vector(vector: npt.NDArray[np.float32], dim: int) -> npt.NDArray[np.float32]:
    v = np.asarray(vector, dtype="<f4").reshape(-1)
    if v.shape[0] != dim:
        raise StoreError(f"embedding has {v.shape[0]} dimensions, expected {dim}")
    if not np.isfinite(v).all():
        raise StoreError("embedding has non-finite values")
    norm = float(np.linalg.norm(v))
    if abs(norm - 1.0) > 1e-3:
        raise StoreError(f"embedding is not L2-normalised (norm {norm:.4f})")
    return v
