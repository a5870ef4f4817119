"""The identity store: persons, embeddings, thumbnails, an audit log and the event history.

The store is the single source of truth; each gate's FAISS index (`index.py`) is rebuilt from
it. Two backends behind one `Database` interface (store_db.py), chosen by `[store] url`:
- SQLite (the embedded default, store_sqlite.py): `<data>/facegate.db`, WAL, one writing
  process per data directory; readers (`identify`, `persons list`) open it read-only.
- PostgreSQL (store_postgres.py, `url = "postgresql://..."`): one database several gates
  share; each gate follows the others' changes (`follow`).
For both:
- Every multi-row change (a person with all its embeddings) is one transaction; a kill -9 at
  any moment leaves either all of it or none of it. Writes of persons and embeddings hold the
  gallery's writer lock: a new person's duplicate check and its insert see the same gallery
  (`enrolling`), even with several gates.
- The schema is versioned with forward-only migrations; a database of another program or of
  a newer facegate is refused and never written to. Upgrades (upgrade.py): an older database
  is copied (`<data>/backups`, or a backup schema in PostgreSQL) before it is migrated, and
  every writable open records the facegate and schema versions in
  `<data>/facegate-version.json`.
- One process per data directory, enforced with an exclusive `flock` on `<data>/store.lock`
  (the data directory also holds the gate's saved index).
- Deleting a person is erasure: their rows, embeddings, thumbnail and history, then the
  deleted bytes are made to leave the files (`reclaim`: SQLite's `secure_delete` plus a WAL
  truncation; PostgreSQL's VACUUM (FULL) of the tables involved). The upgrade backups go
  first: every one of them is deleted (they hold everyone's data as it was).
- The data directory is created 0700 and the files 0600. The audit log never holds vectors,
  images or names: who did what to which person id, and when.

`Store` is the one public class, and this module exports every name of the store. Beside it:
store_types.py (the records and errors), store_schema.py (versions and migrations of both
backends), store_files.py (SQLite's files: permissions, the lock, connections, WAL
truncation), store_rows.py (the row writes a transaction is made of) and store_batch.py
(writers holding one transaction: imports, and a new person checked against the gallery).
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from facegate.identity import store_files, store_postgres, store_schema, upgrade
from facegate.identity.store_batch import BatchWriter, Enrolment
from facegate.identity.store_db import Database, Tx
from facegate.identity.store_files import (
    BUSY_TIMEOUT_S,
    DB_NAME,
    LOCK_NAME,
    PAGE_SIZE,
    SQLITE_HEADER,
)
from facegate.identity.store_postgres import (
    PostgresDatabase,
    PostgresTx,
    is_postgres_url,
    redact,
)
from facegate.identity.store_rows import Rows, read_vectors, valid_name
from facegate.identity.store_schema import APPLICATION_ID, MIGRATIONS, SCHEMA_VERSION
from facegate.identity.store_sqlite import SqliteDatabase
from facegate.identity.store_types import (
    AuditEntry,
    Clock,
    DuplicatePersonError,
    EmbeddingInfo,
    ErasurePendingError,
    GalleryChange,
    GateActivity,
    LastSeen,
    LoggedEvent,
    NewEmbedding,
    Person,
    Source,
    StoreError,
    StoreLockedError,
    StoreUnavailableError,
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
    "DuplicatePersonError",
    "EmbeddingInfo",
    "Enrolment",
    "ErasurePendingError",
    "GalleryChange",
    "GateActivity",
    "LastSeen",
    "LoggedEvent",
    "NewEmbedding",
    "Person",
    "Source",
    "Store",
    "StoreError",
    "StoreLockedError",
    "StoreUnavailableError",
    "UnknownPersonError",
    "Vectors",
]

log = logging.getLogger(__name__)

# How long erasure waits for readers to finish before reporting it could not complete yet.
CHECKPOINT_WAIT_S = 3.0
# The schema version from which the event history names its gate (SQLite).
GATED_EVENTS_VERSION = 4

# The old name of `store_schema.statements`, for tests that build old databases by hand.
_statements = store_schema.statements


class Store:
    """The identity store (SQLite or PostgreSQL) of one gate. Use `Store.open`."""

    def __init__(self, db: Database, data_dir: Path, lock: IO[bytes] | None, clock: Clock) -> None:
        self._db = db
        self.data_dir = data_dir
        self._lock = lock
        self._clock = clock
        self.erasure_pending = False
        # What opening this store migrated (None: nothing), and where the copy of before is.
        self.upgrade: upgrade.Upgrade | None = None
        # Serialises this process's writes and their follow-up (erasure's reclaim).
        self._mutex = threading.RLock()

    # -- opening ---------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        data_dir: Path,
        *,
        readonly: bool = False,
        clock: Clock = time.time,
        url: str = "",
        gate: str = "gate",
    ) -> Store:
        """The store of the gate whose data directory is `data_dir`: SQLite in it, or with
        `url` the PostgreSQL database there. `gate` names history rows of before gates had
        names (SQLite stores made by an older facegate)."""
        if url and not is_postgres_url(url):
            raise StoreError(
                "[store] url must be a postgresql:// URL (or empty for SQLite),"
                f" not {redact(url)!r}"
            )
        lock: IO[bytes] | None = None
        if not readonly:
            store_files.secure_dir(data_dir)
            lock = store_files.take_lock(data_dir)
        try:
            db: SqliteDatabase | PostgresDatabase
            if url:
                db, version = PostgresDatabase.open(url, readonly=readonly)
            else:
                db, version = SqliteDatabase.open(data_dir, readonly=readonly)
            try:
                upgraded = None if readonly else db.migrate(version)
                store = cls(db, data_dir, lock, clock)
                store.upgrade = upgraded
                if not url and not readonly and 0 < version < GATED_EVENTS_VERSION:
                    with db.transaction() as tx:
                        tx.run("UPDATE events SET gate = ? WHERE gate = ''", (gate,))
                if not readonly:
                    newest = store_schema.PG_SCHEMA_VERSION if url else SCHEMA_VERSION
                    database = db.where if url else DB_NAME
                    upgrade.write_record(data_dir, store=db.kind, schema=newest, database=database)
            except BaseException:
                db.close()
                raise
        except BaseException:
            if lock is not None:
                lock.close()
            raise
        return store

    @property
    def kind(self) -> str:
        """ "sqlite" or "postgresql"."""
        return self._db.kind

    @property
    def where(self) -> str:
        """Where the store is, for messages: a path, or the URL without its password."""
        return self._db.where

    @property
    def shared(self) -> bool:
        """Other gates may write to this store (PostgreSQL)."""
        return self._db.kind == "postgresql"

    @property
    def path(self) -> Path:
        """The SQLite file (the data directory's, whichever backend is in use)."""
        return self.data_dir / DB_NAME

    @property
    def _conn(self) -> sqlite3.Connection:
        """The SQLite connection (for tests that look at the file's settings)."""
        assert isinstance(self._db, SqliteDatabase)
        return self._db.conn

    @property
    def readonly(self) -> bool:
        return self._db.readonly

    def close(self) -> None:
        with self._mutex:
            if self.erasure_pending and not self.readonly:
                with contextlib.suppress(StoreError, sqlite3.Error):
                    self.checkpoint(wait=0.5)
            self._db.close()
            if self._lock is not None:
                self._lock.close()
                self._lock = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading ---------------------------------------------------------------------------
    def _scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        rows = self._db.query(sql, params)
        return rows[0][0] if rows else None

    def generation(self) -> int:
        return int(self._scalar("SELECT value FROM meta WHERE key = 'generation'"))

    def meta(self, key: str) -> str | None:
        value = self._scalar("SELECT value FROM meta WHERE key = ?", (key,))
        return None if value is None else str(value)

    def embedding_count(self) -> int:
        return int(self._scalar("SELECT count(*) FROM embeddings"))

    def _person_sql(self, where: str) -> str:
        return (
            "SELECT p.id, p.name, p.note, p.created_at, p.updated_at, count(e.id),"
            f" {self._db.agg('e.pose')} FROM persons p"
            f" LEFT JOIN embeddings e ON e.person_id = p.id {where}"
            " GROUP BY p.id, p.name, p.note, p.created_at, p.updated_at"
        )

    def persons(self) -> list[Person]:
        rows = self._db.query(self._person_sql("") + " ORDER BY p.created_at, p.id")
        return [_person(row) for row in rows]

    def person(self, person_id: str) -> Person:
        rows = self._db.query(self._person_sql("WHERE p.id = ?"), (person_id,))
        if not rows:
            raise UnknownPersonError(person_id)
        return _person(rows[0])

    def names(self) -> dict[str, str]:
        """Every person's name by id (what an index needs; cheaper than `persons`)."""
        return {str(r[0]): str(r[1]) for r in self._db.query("SELECT id, name FROM persons")}

    def find_person(self, person_id: str) -> Person | None:
        """The person, or None when there is no such person (any more)."""
        try:
            return self.person(person_id)
        except UnknownPersonError:
            return None

    def embeddings_of(self, person_id: str) -> list[EmbeddingInfo]:
        self.person(person_id)
        rows = self._db.query(
            "SELECT id, pose, quality, source, created_at FROM embeddings WHERE person_id = ?"
            " ORDER BY id",
            (person_id,),
        )
        return [EmbeddingInfo(*row) for row in rows]

    def vectors(self, person_id: str | None = None) -> Vectors:
        """All embeddings (or one person's), in row-id order."""
        sql = "SELECT id, person_id, vector FROM embeddings"
        params: tuple[str, ...] = ()
        if person_id is not None:
            sql += " WHERE person_id = ?"
            params = (person_id,)
        # Put in order here, not by the database: PostgreSQL would sort every vector's bytes
        # (an external sort at 100k embeddings), where the ids alone are enough.
        rows = self._db.query(sql, params)
        return read_vectors(rows, self.dim() or 0, self.where, ordered=True)

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
        rows = self._db.query(
            "SELECT id, at, actor, action, person_id, detail FROM audit ORDER BY id DESC LIMIT ?",
            (limit,),
        )
        return [AuditEntry(r[0], r[1], r[2], r[3], r[4], json.loads(r[5])) for r in rows]

    def integrity_check(self) -> str:
        return self._db.integrity_check()

    def follow(self, stop: threading.Event) -> Iterator[GalleryChange | None]:
        """Gallery changes other processes commit, until `stop` (see `Database.follow`)."""
        return self._db.follow(stop)

    # -- writing ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def _rows(self) -> Iterator[Rows]:
        """A transaction, and the row writes it is made of."""
        with self._mutex:
            with self._db.transaction() as tx:
                rows = Rows(tx, self._clock)
                yield rows
                rows.finish()
            if self.erasure_pending:
                self.checkpoint(wait=0.0)

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
        with self.enrolling() as enrolment:
            pid, ids = enrolment.create_person(
                name,
                embeddings,
                pack=pack,
                actor=actor,
                thumbnail=thumbnail,
                note=note,
                person_id=person_id,
            )
        return self.person(pid), ids

    @contextlib.contextmanager
    def enrolling(self) -> Iterator[Enrolment]:
        """A transaction holding the gallery's writer lock: what it reads of the gallery
        (`Enrolment.vectors_after`, `existing`) stays true until it commits its new person."""
        with self._rows() as rows:
            rows.tx.exclusive()
            yield Enrolment(rows, self.dim(), self.where)

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
            if not rows.person_exists(person_id):
                raise UnknownPersonError(person_id)
            ids = rows.insert_embeddings(person_id, embeddings, pack)
            rows.set_thumbnail(person_id, thumbnail)
            rows.tx.run(
                "UPDATE persons SET updated_at = ? WHERE id = ?", (self._clock(), person_id)
            )
            rows.audit(actor, "add_embeddings", person_id, embeddings=len(ids))
        return ids

    def rename(self, person_id: str, name: str, *, actor: str) -> Person:
        name = valid_name(name)
        with self._rows() as rows:
            if not rows.person_exists(person_id):
                raise UnknownPersonError(person_id)
            rows.tx.run(
                "UPDATE persons SET name = ?, updated_at = ? WHERE id = ?",
                (name, self._clock(), person_id),
            )
            rows.touched(person_id)
            rows.audit(actor, "rename", person_id)
        return self.person(person_id)

    def delete_person(self, person_id: str, *, actor: str) -> list[int]:
        """Erase a person: rows, thumbnail, history and (`reclaim`) their bytes on disk.

        Returns the removed embedding row ids (for the index)."""
        with self._mutex:
            with self._rows() as rows:
                if isinstance(rows.tx, PostgresTx):
                    store_postgres.hold_migrations(rows.tx)  # before reading anything
                if not rows.person_exists(person_id):
                    raise UnknownPersonError(person_id)
                ids = [
                    int(r[0])
                    for r in rows.tx.query(
                        "SELECT id FROM embeddings WHERE person_id = ?", (person_id,)
                    )
                ]
                backups = self._erase_upgrade_backups(rows.tx)
                rows.tx.run("DELETE FROM persons WHERE id = ?", (person_id,))
                # The event history names them too: erased with them.
                rows.tx.run("DELETE FROM events WHERE person_id = ?", (person_id,))
                rows.touched(person_id)
                detail: dict[str, Any] = {"embeddings": len(ids)}
                if backups:
                    detail["upgrade_backups_deleted"] = len(backups)
                rows.audit(actor, "delete", person_id, **detail)
            self.erasure_pending = True
            if not self.checkpoint():
                raise ErasurePendingError(person_id, ids)
        return ids

    def _erase_upgrade_backups(self, tx: Tx) -> list[str]:
        """Before a person's rows go: every upgrade backup, which holds them as they were
        (PostgreSQL's backup schemas in this transaction; the data directory's files now,
        so that a failure to delete one leaves the person unerased, not half-erased)."""
        names = store_postgres.drop_backups(tx) if isinstance(tx, PostgresTx) else []
        names += upgrade.erase_backups(self.data_dir)
        if names:
            log.warning(
                "erasure: deleted the upgrade backup(s) %s, which held the person's data",
                ", ".join(names),
            )
        return names

    # -- event history ---------------------------------------------------------------------
    def log_events(
        self, rows: Sequence[LoggedEvent], *, retention_seconds: float, max_rows: int
    ) -> None:
        """Append events to the history and prune it: events older than the retention (of
        every gate), and beyond the newest `max_rows` of each gate written here. History is
        not biometric data: committed without waiting for the disk."""
        if not rows:
            return
        with self._mutex, self._db.transaction(durable=False) as tx:
            tx.run_many(
                "INSERT INTO events (gate, seq, at, type, person_id, data)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (gate, seq) DO UPDATE SET"
                " at = excluded.at, type = excluded.type, person_id = excluded.person_id,"
                " data = excluded.data",
                [(r.gate, r.seq, r.at, r.type, r.person_id, r.data) for r in rows],
            )
            tx.run("DELETE FROM events WHERE at < ?", (self._clock() - retention_seconds,))
            for gate in sorted({r.gate for r in rows}):
                tx.run(
                    "DELETE FROM events WHERE gate = ? AND seq <= (SELECT seq FROM events"
                    " WHERE gate = ? ORDER BY seq DESC LIMIT 1 OFFSET ?)",
                    (gate, gate, max_rows),
                )
            if self.erasure_pending:
                self.checkpoint(wait=0.0)

    def events(
        self,
        since: int = 0,
        limit: int = 500,
        *,
        before: int | None = None,
        types: Sequence[str] = (),
        person_id: str | None = None,
        gate: str | None = None,
        until: float | None = None,
    ) -> list[LoggedEvent]:
        """Up to `limit` events. With `gate`, that gate's: those after `since`, oldest first;
        or with `before`, those before it, newest first (paging back). Without `gate`, every
        gate's, newest first (by time), older than `until` when given: `since` and `before`
        are one gate's sequence numbers and need it. `types` (any of these type names) and
        `person_id` narrow them. Every value is a bound parameter."""
        where: list[str] = []
        params: list[Any] = []
        if gate is not None:
            where += ["gate = ?", "seq < ?" if before is not None else "seq > ?"]
            params += [gate, before if before is not None else since]
            order = "seq DESC" if before is not None else "seq ASC"
        else:
            if since or before is not None:
                raise ValueError(
                    "`since` and `before` are one gate's sequence numbers: name the gate"
                )
            if until is not None:
                where.append("at < ?")
                params.append(until)
            order = "at DESC, gate DESC, seq DESC"
        kinds = list(dict.fromkeys(types))
        if kinds:
            where.append(f"type IN ({', '.join('?' * len(kinds))})")
            params += kinds
        if person_id is not None:
            where.append("person_id = ?")
            params.append(person_id)
        clause = f"WHERE {' AND '.join(where)} " if where else ""
        rows = self._db.query(
            f"SELECT seq, at, type, person_id, data, gate FROM events {clause}"
            f"ORDER BY {order} LIMIT ?",
            (*params, limit),
        )
        return [LoggedEvent(*row) for row in rows]

    def gates(self) -> list[GateActivity]:
        """Every gate in the history: its events and when it wrote the latest."""
        rows = self._db.query(
            "SELECT gate, count(*), max(at) FROM events GROUP BY gate ORDER BY gate"
        )
        return [GateActivity(str(r[0]), int(r[1]), float(r[2])) for r in rows]

    def last_seen(self, person_id: str) -> LastSeen | None:
        """When and at which gate the person was last recognised (the latest
        `person_recognized` in the history), or None: never, or no longer in the history."""
        rows = self._db.query(
            "SELECT at, gate FROM events WHERE person_id = ? AND type = 'person_recognized'"
            " ORDER BY at DESC LIMIT 1",
            (person_id,),
        )
        return LastSeen(float(rows[0][0]), str(rows[0][1])) if rows else None

    def last_event_seq(self, gate: str | None = None) -> int:
        """The gate's latest sequence number in the history (None: of any gate)."""
        if gate is None:
            return int(self._scalar("SELECT coalesce(max(seq), 0) FROM events"))
        return int(self._scalar("SELECT coalesce(max(seq), 0) FROM events WHERE gate = ?", (gate,)))

    def checkpoint(self, wait: float = CHECKPOINT_WAIT_S) -> bool:
        """Make an erasure's bytes leave the files, waiting at most `wait` seconds for
        readers; False if one still holds old data (retried at the next write/close)."""
        with self._mutex:
            done = self._db.reclaim(wait)
            if done:
                self.erasure_pending = False
            return done

    def prune_audit(self, *, retention_seconds: float, max_rows: int) -> int:
        """Drop audit entries older than the retention or beyond the newest `max_rows`."""
        with self._mutex, self._db.transaction() as tx:
            removed = tx.run("DELETE FROM audit WHERE at < ?", (self._clock() - retention_seconds,))
            return removed + tx.run(
                "DELETE FROM audit WHERE id <= (SELECT id FROM audit ORDER BY id DESC"
                " LIMIT 1 OFFSET ?)",
                (max_rows,),
            )

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
