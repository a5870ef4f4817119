"""The SQLite backend of the store: one file in the data directory (the embedded default).

- WAL journal, `synchronous=FULL` (the event history: NORMAL), `secure_delete=ON`, foreign
  keys on; transactions are `BEGIN IMMEDIATE`, so a kill -9 leaves all of one or none of it.
- The file is stamped with facegate's `application_id` and its schema version; a file that is
  not SQLite, or another program's database, or a newer facegate's, is refused untouched (the
  message names the facegate the version record says made it, and the backup to go back to).
- An older file is copied to `<data>/backups` (upgrade.py) before it is migrated; every pending
  migration is one transaction, so a failure leaves the file as it was.
- One writing process per data directory (the `flock` the store takes): its transactions are
  the only writers, so `exclusive` has nothing to add and there is no one to `notify`. A
  read-only opener (a `run` beside a `serve`) follows the writer by polling the generation.
- Erasure: the WAL is checkpointed and truncated, so the deleted rows' bytes leave the files
  (`secure_delete` zeroes them in the database file).
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import urllib.parse
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from facegate.identity import store_files, store_schema, upgrade
from facegate.identity.store_db import Row
from facegate.identity.store_files import DB_NAME
from facegate.identity.store_schema import SCHEMA_VERSION, NewerSchemaError
from facegate.identity.store_types import GalleryChange, StoreError

log = logging.getLogger(__name__)

POLL_SECONDS = 1.0  # how often a read-only opener looks for the writer's changes


class SqliteTx:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return self.conn.execute(sql, params).fetchall()

    def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self.conn.execute(sql, params).rowcount

    def run_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self.conn.executemany(sql, rows)

    def exclusive(self) -> None:
        """`BEGIN IMMEDIATE` of the only writing process already excludes every writer."""

    def notify(self, change: GalleryChange) -> None:
        """No other writer to tell; readers poll the generation."""


class SqliteDatabase:
    kind = "sqlite"

    def __init__(self, conn: sqlite3.Connection, path: Path, *, readonly: bool) -> None:
        self.conn = conn
        self.path = path
        self.where = str(path)
        self.readonly = readonly
        # One thread at a time uses the connection: the server's loop, its worker threads and
        # the registration take turns. Reentrant: a transaction's code may read.
        self.mutex = threading.RLock()

    @classmethod
    def open(cls, data_dir: Path, *, readonly: bool) -> tuple[SqliteDatabase, int]:
        """The database of `data_dir` and the schema version it had (0: new); the caller
        migrates it. The writer's caller holds the data directory's lock."""
        db = data_dir / DB_NAME
        if readonly:
            if not db.exists():
                raise StoreError(f"no facegate data in {data_dir} (no {DB_NAME}); enrol someone")
            store_files.check_header(db)
            reader = store_files.connect(f"file:{urllib.parse.quote(str(db))}?mode=ro", uri=True)
            try:
                version = _check_schema(reader, db, readonly=True)
            except BaseException:
                reader.close()
                raise
            return cls(reader, db, readonly=True), version
        if db.exists():
            store_files.check_header(db)
        else:
            store_files.create_private(db)
        conn = store_files.connect(str(db))
        try:
            # Look before touching: a foreign or newer database is refused unchanged.
            version = _check_schema(conn, db, readonly=False)
            store_files.make_private(db)
            store_files.configure_writer(conn)
        except BaseException:
            conn.close()
            raise
        return cls(conn, db, readonly=False), version

    def migrate(self, version: int) -> upgrade.Upgrade | None:
        """Bring the file from `version` to SCHEMA_VERSION in one transaction; a file that
        held data (`version` > 0) is first copied to `<data>/backups` (what is returned)."""
        if version >= SCHEMA_VERSION:
            return None
        backup = None
        if version > 0:
            backup = upgrade.backup_sqlite(self.conn, self.path, version, SCHEMA_VERSION)
        try:
            with self.transaction() as tx:
                for target in range(version + 1, SCHEMA_VERSION + 1):
                    store_schema.migrate_to(tx.conn, target)
        except (sqlite3.Error, StoreError) as exc:
            if backup is None:
                raise
            raise StoreError(
                f"migrating {self.path} from schema {version} to {SCHEMA_VERSION} failed:"
                f" {exc}; the file is unchanged (still schema {version}), and its copy of"
                f" before is {backup}"
            ) from None
        if backup is None:
            return None
        log.warning(
            "upgraded %s from schema %d to %d; the data of before is in %s (deleted at the"
            " next erasure of a person)",
            self.path,
            version,
            SCHEMA_VERSION,
            backup,
        )
        return upgrade.Upgrade(version, SCHEMA_VERSION, str(backup))

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        with self.mutex:
            return self.conn.execute(sql, params).fetchall()

    @contextlib.contextmanager
    def transaction(self, *, durable: bool = True) -> Iterator[SqliteTx]:
        """`durable=False`: committed without waiting for fsync (the event history)."""
        if self.readonly:
            raise StoreError("this store was opened read-only")
        with self.mutex:
            if not durable:
                self.conn.execute("PRAGMA synchronous = NORMAL")
            try:
                self.conn.execute("BEGIN IMMEDIATE")
                try:
                    yield SqliteTx(self.conn)
                    self.conn.execute("COMMIT")
                except sqlite3.IntegrityError as exc:
                    if self.conn.in_transaction:
                        self.conn.execute("ROLLBACK")
                    raise StoreError(f"refused by the database: {exc}") from None
                except BaseException:
                    if self.conn.in_transaction:
                        self.conn.execute("ROLLBACK")
                    raise
            finally:
                if not durable:
                    self.conn.execute("PRAGMA synchronous = FULL")

    def agg(self, column: str) -> str:
        return f"group_concat({column})"

    def reclaim(self, wait: float) -> bool:
        with self.mutex:
            return store_files.truncate_wal(self.conn, wait)

    def integrity_check(self) -> str:
        return str(self.query("PRAGMA integrity_check")[0][0])

    def follow(self, stop: threading.Event) -> Iterator[GalleryChange | None]:
        if not self.readonly:
            return  # the only writer: nothing changes that this process did not do
        yield None
        last = self._generation()
        while not stop.wait(POLL_SECONDS):
            with contextlib.suppress(sqlite3.Error):
                now = self._generation()
                if now != last:
                    last = now
                    yield GalleryChange(now, None)

    def _generation(self) -> int:
        return int(self.query("SELECT value FROM meta WHERE key = 'generation'")[0][0])

    def close(self) -> None:
        with self.mutex, contextlib.suppress(sqlite3.Error):
            self.conn.close()


def _check_schema(conn: sqlite3.Connection, db: Path, *, readonly: bool) -> int:
    """`store_schema.check_schema`, whose refusal of a newer file names what made it and the
    backup to go back to (the data directory's version record and backups)."""
    try:
        return store_schema.check_schema(conn, db, readonly=readonly)
    except NewerSchemaError as exc:
        message = upgrade.newer_sqlite_message(db, exc.found, SCHEMA_VERSION)
        raise NewerSchemaError(message, exc.found) from None
