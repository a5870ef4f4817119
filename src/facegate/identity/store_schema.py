"""The store's schema: its versions, their forward-only migrations, and what a file must be.

The version is `PRAGMA user_version` and the file is stamped with facegate's
`application_id`. Before anything is written, `check_schema` refuses a database of another
program or of a newer facegate; a reader also refuses one that still needs migrating. A
migration (`migrate_to`) runs inside a transaction its caller holds, one version per
transaction, so a kill -9 leaves the file at one version or the next.

To change the schema, add `MIGRATIONS[n + 1]`; never edit a released migration.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from facegate.identity.store_types import StoreError

APPLICATION_ID = 0x46474154  # "FGAT"

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


def statements(script: str) -> list[str]:
    """The SQL statements of a migration script, one by one."""
    return [s.strip() for s in script.split(";") if s.strip()]


def check_schema(conn: sqlite3.Connection, path: Path, *, readonly: bool) -> int:
    """The schema version of the database at `path` (0: new and empty), to migrate from;
    raises for a file that is not ours, is newer, or (read-only) is not yet migrated."""
    try:
        app_id = _scalar(conn, "PRAGMA application_id")
        version = _scalar(conn, "PRAGMA user_version")
        tables = _scalar(conn, "SELECT count(*) FROM sqlite_master")
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{path} is damaged or not a database: {exc}") from None
    if app_id == 0 and version == 0 and tables == 0:
        if readonly:
            raise StoreError(f"{path} is empty; enrol someone first")
        return 0
    if app_id != APPLICATION_ID:
        raise StoreError(
            f"{path} is an SQLite database of another program (application_id"
            f" {app_id:#x}); refusing to use or change it. Point --data at another directory."
        )
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{path} has schema version {version}, newer than this facegate knows"
            f" ({SCHEMA_VERSION}); upgrade facegate"
        )
    if version < SCHEMA_VERSION and readonly:
        raise StoreError(
            f"{path} has schema version {version}; open it once for writing (any"
            " writing command, or `facegate serve`) to migrate it"
        )
    return int(version)


def migrate_to(conn: sqlite3.Connection, version: int) -> None:
    """Apply `MIGRATIONS[version]` and stamp the file with it; the caller holds the
    transaction (the database is at `version - 1`)."""
    for statement in statements(MIGRATIONS[version]):
        conn.execute(statement)
    conn.execute(f"PRAGMA user_version = {version}")
    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")


def _scalar(conn: sqlite3.Connection, sql: str) -> int:
    row = conn.execute(sql).fetchone()
    return int(row[0])
