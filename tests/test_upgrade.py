"""Upgrades (facegate.identity.upgrade, issue 16): a data directory made by an older facegate
is copied, then migrated; an older facegate refuses a newer data directory, untouched, and says
what to do; erasing a person deletes the upgrade backups (they hold everyone's data).

The old data directories are built with the real migration code of the versions before
(`store_schema.migrate_to` up to the old version; PostgreSQL: `PG_MIGRATIONS[1]`) and persons
inserted as that schema took them. A newer facegate is simulated: a schema version one past
this facegate's, and a version record (or `facegate_schema.facegate`) naming a future facegate.
PostgreSQL tests use the real server of tests/postgres.py (skipped where it is absent).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest

from facegate import __version__
from facegate.identity import store_postgres, store_schema, upgrade
from facegate.identity.store import (
    APPLICATION_ID,
    DB_NAME,
    SCHEMA_VERSION,
    Store,
    StoreError,
)
from facegate.identity.store_schema import PG_MIGRATIONS, PG_SCHEMA_VERSION
from facegate.identity.upgrade import BACKUP_DIR, RECORD_NAME
from postgres import PostgresServer
from synthetic import FakeClock, emb, unit

PACK = "faceplugin"
DIM = 512
FUTURE = "9.0.0"  # the facegate of a newer data directory
OLD_ID, OLD_NAME = "old1", "Old Timer"


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(160516)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def files_holding(folder: Path, needle: bytes) -> list[str]:
    return sorted(
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.is_file() and needle in p.read_bytes()
    )


def tree(folder: Path) -> dict[str, str]:
    """Every file under `folder` by its hash (what a refusal must leave as it was)."""
    return {
        str(p.relative_to(folder)): sha(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
        and p.name != "store.lock"  # the lock names the last pid that held it
        # SQLite's shared-memory index, and an empty WAL, that a read-only reader leaves
        and not p.name.endswith("-shm")
        and not (p.name.endswith("-wal") and p.stat().st_size == 0)
    }


# -- SQLite: a data directory of a previous schema -------------------------------------------
def make_old_sqlite(data_dir: Path, version: int, vector: np.ndarray) -> sqlite3.Connection:
    """A data directory as facegate left it at schema `version` (WAL, as facegate's are): the
    schema made by the real migrations 1..version, one person with one embedding (and what
    that schema had besides). Returns the connection, still open: the data stays in the WAL
    (no checkpoint) while it is open; close it to checkpoint."""
    data_dir.mkdir(mode=0o700)
    conn = sqlite3.connect(data_dir / DB_NAME, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    conn.execute("BEGIN")
    for target in range(1, version + 1):
        store_schema.migrate_to(conn, target)
    conn.execute("COMMIT")
    conn.execute("BEGIN")
    conn.execute("INSERT INTO meta VALUES ('model_pack', ?)", (PACK,))
    conn.execute("INSERT INTO meta VALUES ('embedding_dim', ?)", (str(DIM),))
    conn.execute("UPDATE meta SET value = '1' WHERE key = 'generation'")
    conn.execute(
        "INSERT INTO persons (id, name, created_at, updated_at) VALUES (?, ?, 5, 6)",
        (OLD_ID, OLD_NAME),
    )
    conn.execute(
        "INSERT INTO embeddings (person_id, vector, pose, quality, source, created_at)"
        " VALUES (?, ?, 'left', 0.5, 'registration', 5)",
        (OLD_ID, vector.astype("<f4").tobytes()),
    )
    if version >= 2:
        conn.execute(
            "INSERT INTO thumbnails (person_id, jpeg, updated_at) VALUES (?, ?, 6)",
            (OLD_ID, b"OLD-THUMB"),
        )
    if version >= 3:
        conn.execute(
            "INSERT INTO events (seq, at, type, person_id, data) VALUES (1, 7,"
            " 'person_recognized', ?, '{}')",
            (OLD_ID,),
        )
    conn.execute(
        "INSERT INTO audit (at, actor, action, person_id) VALUES (5, 'old', 'enrol', ?)",
        (OLD_ID,),
    )
    conn.execute("COMMIT")
    return conn


def read_person(db: Path) -> tuple[Any, ...]:
    """The old person's row and embedding bytes, straight from a database file."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        person = conn.execute(
            "SELECT id, name, created_at FROM persons WHERE id = ?", (OLD_ID,)
        ).fetchone()
        vectors = conn.execute(
            "SELECT vector FROM embeddings WHERE person_id = ? ORDER BY id", (OLD_ID,)
        ).fetchall()
        return person, [bytes(v[0]) for v in vectors]
    finally:
        conn.close()


def pragma(db: Path, name: str) -> Any:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute(f"PRAGMA {name}").fetchone()[0]
    finally:
        conn.close()


def backups_of(data_dir: Path) -> list[Path]:
    folder = data_dir / BACKUP_DIR
    return sorted(folder.iterdir()) if folder.is_dir() else []


def record_of(data_dir: Path) -> dict[str, Any]:
    body: dict[str, Any] = json.loads((data_dir / RECORD_NAME).read_text())
    return body


@pytest.mark.parametrize("old", range(1, SCHEMA_VERSION))
def test_sqlite_previous_schema_is_backed_up_then_migrated(
    data_dir: Path, rng: np.random.Generator, caplog: pytest.LogCaptureFixture, old: int
) -> None:
    v = unit(rng)
    old_conn = make_old_sqlite(data_dir, old, v)
    try:
        # The person is in the WAL only: a copy of facegate.db alone would miss them.
        assert files_holding(data_dir, v.tobytes()) == [f"{DB_NAME}-wal"]
        with caplog.at_level(logging.WARNING), Store.open(data_dir, clock=FakeClock()) as s:
            assert s.upgrade is not None
            backup = Path(s.upgrade.backup)
            assert (s.upgrade.from_schema, s.upgrade.to_schema) == (old, SCHEMA_VERSION)
            # migrated, data intact
            assert s._conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
            p = s.person(OLD_ID)
            assert (p.name, p.embeddings, p.poses) == (OLD_NAME, 1, ["left"])
            assert s.vectors().matrix[0].tobytes() == v.tobytes()
            assert s.thumbnail(OLD_ID) == (b"OLD-THUMB" if old >= 2 else None)
            assert s.integrity_check() == "ok"
            s.create_person("New", [emb(unit(rng))], pack=PACK, actor="t")
    finally:
        old_conn.close()
    # where the copy is was said
    assert str(backup) in caplog.text and "upgraded" in caplog.text
    # the backup: private, one self-contained file, the old schema, the same person
    assert backups_of(data_dir) == [backup]
    assert backup.name.startswith(f"store-schema{old}-") and backup.suffix == ".sqlite3"
    assert mode_of(data_dir / BACKUP_DIR) == 0o700
    assert mode_of(backup) == 0o600
    assert pragma(backup, "user_version") == old
    assert pragma(backup, "application_id") == APPLICATION_ID
    assert pragma(backup, "journal_mode") == "delete"
    assert pragma(backup, "integrity_check") == "ok"
    assert read_person(backup) == ((OLD_ID, OLD_NAME, 5.0), [v.tobytes()])
    conn = sqlite3.connect(f"file:{backup}?mode=ro", uri=True)
    assert conn.execute("SELECT name FROM persons").fetchall() == [(OLD_NAME,)]  # not "New"
    conn.close()
    # the version record
    record = record_of(data_dir)
    assert record["facegate"] == __version__
    assert (record["store"], record["schema"], record["format"]) == ("sqlite", SCHEMA_VERSION, 1)
    assert record["written_at"].endswith("Z")
    assert mode_of(data_dir / RECORD_NAME) == 0o600
    assert [p.name for p in data_dir.iterdir() if p.name.endswith(".tmp")] == []
    # opened again: nothing to migrate, no second copy
    with Store.open(data_dir) as s:
        assert s.upgrade is None
        assert s.person(OLD_ID).embeddings == 1
    assert backups_of(data_dir) == [backup]


def test_a_new_data_dir_gets_a_record_and_no_backup(data_dir: Path) -> None:
    with Store.open(data_dir) as s:
        assert s.upgrade is None
    assert not (data_dir / BACKUP_DIR).exists()
    assert record_of(data_dir)["schema"] == SCHEMA_VERSION


def test_readers_never_write_the_record(data_dir: Path, rng: np.random.Generator) -> None:
    with Store.open(data_dir) as s:
        s.create_person("A", [emb(unit(rng))], pack=PACK, actor="t")
    (data_dir / RECORD_NAME).unlink()
    with Store.open(data_dir, readonly=True) as r:
        assert [p.name for p in r.persons()] == ["A"]
    assert not (data_dir / RECORD_NAME).exists()
    with Store.open(data_dir):
        pass
    before = ((data_dir / RECORD_NAME).read_bytes(), (data_dir / RECORD_NAME).stat().st_mtime_ns)
    with Store.open(data_dir, readonly=True):
        pass
    after = ((data_dir / RECORD_NAME).read_bytes(), (data_dir / RECORD_NAME).stat().st_mtime_ns)
    assert after == before


def test_sqlite_failed_migration_leaves_the_file_and_names_the_backup(
    data_dir: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = SCHEMA_VERSION - 1
    v = unit(rng)
    make_old_sqlite(data_dir, old, v).close()
    db = data_dir / DB_NAME

    def dump() -> list[str]:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            return list(conn.iterdump())
        finally:
            conn.close()

    before = dump()
    # The newest migration fails halfway: its first statement runs, the second cannot.
    broken = "CREATE TABLE half_done (x INTEGER); INSERT INTO no_such_table VALUES (1)"
    monkeypatch.setitem(store_schema.MIGRATIONS, SCHEMA_VERSION, broken)
    with pytest.raises(StoreError) as info:
        Store.open(data_dir)
    [backup] = backups_of(data_dir)
    message = str(info.value)
    assert str(backup) in message
    assert f"still schema {old}" in message and "unchanged" in message
    assert pragma(db, "user_version") == old
    assert dump() == before  # nothing of the failed migration, not even its first step
    assert read_person(backup) == ((OLD_ID, OLD_NAME, 5.0), [v.tobytes()])
    monkeypatch.undo()
    with Store.open(data_dir) as s:  # the real migration still works afterwards
        assert s.vectors().matrix[0].tobytes() == v.tobytes()
    assert len(backups_of(data_dir)) == 2


def test_sqlite_without_a_backup_nothing_is_migrated(
    data_dir: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = SCHEMA_VERSION - 1
    make_old_sqlite(data_dir, old, unit(rng)).close()
    db_before = sha(data_dir / DB_NAME)

    def disk_full(path: Path) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(upgrade.store_files, "create_private", disk_full)
    with pytest.raises(StoreError, match=r"cannot make a backup in .*nothing was changed"):
        Store.open(data_dir)
    assert pragma(data_dir / DB_NAME, "user_version") == old
    assert sha(data_dir / DB_NAME) == db_before
    assert backups_of(data_dir) == []
    assert not (data_dir / RECORD_NAME).exists()


# -- SQLite: an older facegate meets a newer data directory ------------------------------------
def make_future_sqlite(data_dir: Path, rng: np.random.Generator) -> tuple[Path, np.ndarray]:
    """A data directory a future facegate (FUTURE) upgraded from this facegate's schema to
    the next: its backup of before (made by the real backup code), the schema version one
    past this facegate's, and its version record. Returns the backup and a stored vector."""
    v = unit(rng)
    with Store.open(data_dir) as s:
        s.create_person("A", [emb(v)], pack=PACK, actor="t")
        backup = upgrade.backup_sqlite(s._conn, data_dir / DB_NAME, SCHEMA_VERSION, 99)
    conn = sqlite3.connect(data_dir / DB_NAME, isolation_level=None)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    (data_dir / RECORD_NAME).write_text(
        json.dumps(
            {
                "format": 1,
                "facegate": FUTURE,
                "store": "sqlite",
                "schema": SCHEMA_VERSION + 1,
                "database": DB_NAME,
                "written_at": "2031-01-02T03:04:05Z",
            }
        )
    )
    return backup, v


@pytest.mark.parametrize("readonly", [False, True])
def test_older_facegate_refuses_a_newer_sqlite_data_dir_untouched(
    data_dir: Path, rng: np.random.Generator, readonly: bool
) -> None:
    backup, _ = make_future_sqlite(data_dir, rng)
    before = tree(data_dir)
    with pytest.raises(StoreError) as info:
        Store.open(data_dir, readonly=readonly)
    message = str(info.value)
    assert f"schema version {SCHEMA_VERSION + 1}, newer than this facegate knows" in message
    assert f"last used by facegate {FUTURE} on 2031-01-02T03:04:05Z" in message
    assert f"this is facegate {__version__}, which knows schema {SCHEMA_VERSION}" in message
    assert f"upgrade facegate to {FUTURE} or newer" in message
    assert str(backup) in message and "Nothing was changed" in message
    assert tree(data_dir) == before  # database, record and backups: byte for byte
    assert pragma(data_dir / DB_NAME, "user_version") == SCHEMA_VERSION + 1


def test_newer_sqlite_data_dir_without_record_or_backup(
    data_dir: Path, rng: np.random.Generator
) -> None:
    backup, _ = make_future_sqlite(data_dir, rng)
    backup.unlink()
    (data_dir / RECORD_NAME).write_text("{not json")
    with pytest.raises(StoreError) as info:
        Store.open(data_dir)
    message = str(info.value)
    assert "a newer facegate" in message and "does not say which" in message
    assert "upgrade facegate," in message
    assert "no backup of before that upgrade" in message
    assert (data_dir / RECORD_NAME).read_text() == "{not json"


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACEGATE_")}
    return subprocess.run(
        [sys.executable, "-m", "facegate.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )


def test_cli_says_why_a_newer_data_dir_is_refused(data_dir: Path, rng: np.random.Generator) -> None:
    backup, _ = make_future_sqlite(data_dir, rng)
    before = tree(data_dir)
    for args in (["persons", "list"], ["persons", "rename", "nobody", "X"]):
        done = run_cli(*args, "--data", str(data_dir))
        assert done.returncode == 2, done.stderr
        assert done.stdout == ""
        assert f"last used by facegate {FUTURE}" in done.stderr
        assert f"this is facegate {__version__}, which knows schema {SCHEMA_VERSION}" in done.stderr
        assert f"upgrade facegate to {FUTURE} or newer" in done.stderr
        assert backup.name in done.stderr
        assert "Traceback" not in done.stderr
    assert tree(data_dir) == before


# -- SQLite: erasure deletes the backups -----------------------------------------------------
def test_erasing_a_person_after_an_upgrade_leaves_them_in_no_backup(
    data_dir: Path, rng: np.random.Generator, caplog: pytest.LogCaptureFixture
) -> None:
    old_vector = unit(rng)
    make_old_sqlite(data_dir, SCHEMA_VERSION - 1, old_vector).close()
    with Store.open(data_dir, clock=FakeClock()) as s:
        assert s.upgrade is not None
        backup = Path(s.upgrade.backup)
        kept = unit(rng)
        k, _ = s.create_person("Kept", [emb(kept)], pack=PACK, actor="t")
        assert files_holding(data_dir, old_vector.tobytes()) != []
        assert f"{BACKUP_DIR}/{backup.name}" in files_holding(data_dir, old_vector.tobytes())
        with caplog.at_level(logging.WARNING):
            s.delete_person(OLD_ID, actor="t")
        entry = s.audit(limit=1)[0]
        assert (entry.action, entry.person_id) == ("delete", OLD_ID)
        assert entry.detail == {"embeddings": 1, "upgrade_backups_deleted": 1}
        assert backup.name in caplog.text
        assert files_holding(data_dir, old_vector.tobytes()) == []
        assert files_holding(data_dir, kept.tobytes()) != []  # the scan does find bytes
        assert backups_of(data_dir) == []
        # a later erasure, with no backup left, says nothing of backups
        s.delete_person(k.id, actor="t")
        assert s.audit(limit=1)[0].detail == {"embeddings": 1}
    assert files_holding(data_dir, old_vector.tobytes()) == []


def test_erasing_an_unknown_person_keeps_the_backups(
    data_dir: Path, rng: np.random.Generator
) -> None:
    make_old_sqlite(data_dir, SCHEMA_VERSION - 1, unit(rng)).close()
    with Store.open(data_dir) as s:
        with pytest.raises(StoreError):
            s.delete_person("nobody", actor="t")
        assert len(backups_of(data_dir)) == 1


def test_a_backup_that_cannot_be_deleted_stops_the_erasure(
    data_dir: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_old_sqlite(data_dir, SCHEMA_VERSION - 1, unit(rng)).close()
    with Store.open(data_dir) as s:
        [backup] = backups_of(data_dir)

        def stuck(path: Path) -> None:
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(path))

        monkeypatch.setattr(upgrade, "_shred", stuck)
        with pytest.raises(StoreError) as info:
            s.delete_person(OLD_ID, actor="t")
        assert str(backup) in str(info.value) and "not erased" in str(info.value)
        assert s.person(OLD_ID).embeddings == 1  # all of the erasure, or none of it
        assert [e.action for e in s.audit()] == ["enrol"]
        monkeypatch.undo()
        s.delete_person(OLD_ID, actor="t")
        assert backups_of(data_dir) == []


# -- PostgreSQL ------------------------------------------------------------------------------
def make_old_postgres(url: str, vector: np.ndarray) -> None:
    """A database as facegate left it at PostgreSQL schema 1 (the real PG_MIGRATIONS[1]), with
    one person, their embedding, thumbnail, history and audit entry."""
    assert PG_SCHEMA_VERSION >= 2
    with psycopg.connect(url) as conn, conn.transaction():
        for statement in store_schema.statements(PG_MIGRATIONS[1]):
            conn.execute(statement.encode())
        conn.execute("UPDATE facegate_schema SET version = 1")
        conn.execute("INSERT INTO meta VALUES ('model_pack', %s)", (PACK,))
        conn.execute("INSERT INTO meta VALUES ('embedding_dim', %s)", (str(DIM),))
        conn.execute("UPDATE meta SET value = '1' WHERE key = 'generation'")
        conn.execute(
            "INSERT INTO persons (id, name, created_at, updated_at) VALUES (%s, %s, 5, 6)",
            (OLD_ID, OLD_NAME),
        )
        conn.execute(
            "INSERT INTO embeddings (person_id, vector, pose, quality, source, created_at)"
            " VALUES (%s, %s, 'left', 0.5, 'registration', 5)",
            (OLD_ID, vector.astype("<f4").tobytes()),
        )
        conn.execute("INSERT INTO thumbnails VALUES (%s, %s, 6)", (OLD_ID, b"OLD-THUMB"))
        conn.execute(
            "INSERT INTO events VALUES ('porch', 1, 7, 'person_recognized', %s, '{}')", (OLD_ID,)
        )
        conn.execute(
            "INSERT INTO audit (at, actor, action, person_id) VALUES (5, 'old', 'enrol', %s)",
            (OLD_ID,),
        )


def backup_schemas(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'facegate_backup_%'"
            " ORDER BY nspname"
        ).fetchall()
    return [str(r[0]) for r in rows]


def test_postgres_previous_schema_is_backed_up_then_migrated(
    pg_url: str, data_dir: Path, rng: np.random.Generator
) -> None:
    v = unit(rng)
    make_old_postgres(pg_url, v)
    with Store.open(data_dir, url=pg_url, clock=FakeClock()) as s:
        assert s.upgrade is not None
        assert (s.upgrade.from_schema, s.upgrade.to_schema) == (1, PG_SCHEMA_VERSION)
        name = s.upgrade.backup
        assert s.person(OLD_ID).name == OLD_NAME
        assert s.vectors().matrix[0].tobytes() == v.tobytes()
        assert s.thumbnail(OLD_ID) == b"OLD-THUMB"
        s.create_person("New", [emb(unit(rng))], pack=PACK, actor="t")
    assert name.startswith("facegate_backup_1_")
    assert backup_schemas(pg_url) == [name]
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT version, facegate FROM facegate_schema").fetchall() == [
            (PG_SCHEMA_VERSION, __version__)
        ]
        q = f'"{name}"'
        assert conn.execute(f"SELECT version FROM {q}.facegate_schema").fetchall() == [(1,)]
        assert conn.execute(f"SELECT id, name FROM {q}.persons").fetchall() == [(OLD_ID, OLD_NAME)]
        assert conn.execute(f"SELECT vector FROM {q}.embeddings").fetchall() == [(v.tobytes(),)]
        tables = conn.execute(
            "SELECT c.relname, c.reloptions FROM pg_class c JOIN pg_namespace n ON"
            " n.oid = c.relnamespace WHERE n.nspname = %s AND c.relkind = 'r' ORDER BY 1",
            (name,),
        ).fetchall()
        assert [t[0] for t in tables] == sorted(
            ["audit", "embeddings", "events", "facegate_schema", "meta", "persons", "thumbnails"]
        )
        assert all(t[1] == ["autovacuum_enabled=false"] for t in tables)
    record = record_of(data_dir)
    assert (record["store"], record["schema"], record["facegate"]) == (
        "postgresql",
        PG_SCHEMA_VERSION,
        __version__,
    )
    assert record["database"] == store_postgres.redact(pg_url)
    with Store.open(data_dir, url=pg_url) as s:  # again: nothing to migrate, no second copy
        assert s.upgrade is None
    assert backup_schemas(pg_url) == [name]


def test_postgres_failed_migration_changes_nothing(
    pg_url: str, data_dir: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_old_postgres(pg_url, unit(rng))
    broken = "CREATE TABLE half_done (x integer); INSERT INTO no_such_table VALUES (1)"
    monkeypatch.setitem(store_schema.PG_MIGRATIONS, PG_SCHEMA_VERSION, broken)
    with pytest.raises(StoreError, match=r"from schema 1 to \d+ failed: .*; nothing was changed"):
        Store.open(data_dir, url=pg_url)
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT version FROM facegate_schema").fetchall() == [(1,)]
        assert conn.execute("SELECT to_regclass('half_done')").fetchall() == [(None,)]
    assert backup_schemas(pg_url) == []  # the copy went with the failed transaction
    monkeypatch.undo()
    with Store.open(data_dir, url=pg_url) as s:
        assert s.person(OLD_ID).name == OLD_NAME


@pytest.mark.parametrize("readonly", [False, True])
def test_older_facegate_refuses_a_newer_postgres_database_untouched(
    pg_url: str, data_dir: Path, rng: np.random.Generator, readonly: bool
) -> None:
    make_old_postgres(pg_url, unit(rng))
    with Store.open(data_dir, url=pg_url) as s:
        assert s.upgrade is not None
        name = s.upgrade.backup
    newer = PG_SCHEMA_VERSION + 1
    with psycopg.connect(pg_url) as conn:
        conn.execute("UPDATE facegate_schema SET version = %s, facegate = %s", (newer, FUTURE))

    def state() -> Any:
        with psycopg.connect(pg_url) as conn:
            return (
                conn.execute("SELECT * FROM facegate_schema").fetchall(),
                conn.execute("SELECT * FROM persons ORDER BY id").fetchall(),
                conn.execute("SELECT * FROM meta ORDER BY key").fetchall(),
                backup_schemas(pg_url),
            )

    before = state()
    with pytest.raises(StoreError) as info:
        Store.open(data_dir / "other", url=pg_url, readonly=readonly)
    message = str(info.value)
    assert f"schema version {newer}, newer than this facegate knows" in message
    assert f"facegate {FUTURE} migrated it to schema {newer}" in message
    assert f"this is facegate {__version__}, which knows schema {PG_SCHEMA_VERSION}" in message
    assert f"upgrade facegate to {FUTURE} or newer" in message
    assert name in message
    assert state() == before
    assert not (data_dir / "other" / RECORD_NAME).exists()


def test_postgres_erasing_a_person_drops_the_backup_schemas_and_their_files(
    pg_server: PostgresServer, pg_url: str, data_dir: Path, rng: np.random.Generator
) -> None:
    v = unit(rng)
    make_old_postgres(pg_url, v)
    # An SQLite upgrade backup of this gate from before it moved to PostgreSQL: erased too.
    (data_dir / BACKUP_DIR).mkdir(parents=True, mode=0o700)
    (data_dir / BACKUP_DIR / "store-schema3-20240101T000000Z.sqlite3").write_bytes(
        b"SQLite format 3\x00" + v.tobytes()
    )
    dbname = pg_url.split("?", 1)[0].rsplit("/", 1)[1]
    admin = pg_server.admin_url(dbname)

    def files_with_vector() -> list[str]:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute("CHECKPOINT")
            oid = conn.execute(
                "SELECT oid FROM pg_database WHERE datname = current_database()"
            ).fetchone()
        assert oid is not None
        folder = pg_server.data_dir / "base" / str(oid[0])
        data = v.astype("<f4").tobytes()
        probes = [data[:32], data[1000:1032], data[-32:]]  # whole in any heap or TOAST copy
        return sorted(
            p.name
            for p in folder.iterdir()
            if p.is_file() and any(probe in p.read_bytes() for probe in probes)
        )

    with Store.open(data_dir, url=pg_url, clock=FakeClock()) as s:
        assert s.upgrade is not None
        name = s.upgrade.backup
        assert len(files_with_vector()) >= 2  # the store's table and the backup's
        s.delete_person(OLD_ID, actor="t")
        assert s.audit(limit=1)[0].detail == {"embeddings": 1, "upgrade_backups_deleted": 2}
    assert backup_schemas(pg_url) == []
    assert files_with_vector() == []
    assert backups_of(data_dir) == []
    assert name not in json.dumps(record_of(data_dir))


def test_postgres_backup_restores_as_docs_upgrades_md_says(
    pg_url: str, data_dir: Path, rng: np.random.Generator
) -> None:
    """The restore of docs/upgrades.md, step by step: the tables of the newer schema dropped,
    the older facegate's schema made afresh (here: its migrations), the rows copied back."""
    v = unit(rng)
    make_old_postgres(pg_url, v)
    with Store.open(data_dir, url=pg_url, clock=FakeClock()) as s:
        assert s.upgrade is not None
        name = s.upgrade.backup
        s.create_person("After", [emb(unit(rng))], pack=PACK, actor="t")  # lost by a restore
    doc = (Path(__file__).resolve().parents[1] / "docs" / "upgrades.md").read_text()
    drop = "DROP TABLE events, audit, thumbnails, embeddings, persons, meta, facegate_schema;"
    assert drop in doc
    copy_back = doc.split("```sql restore-postgres\n", 1)[1].split("```", 1)[0]
    with psycopg.connect(pg_url) as conn, conn.transaction():
        conn.execute(drop)
        for statement in store_schema.statements(PG_MIGRATIONS[1]):  # the old facegate, at start
            conn.execute(statement.encode())
        conn.execute("UPDATE facegate_schema SET version = 1")
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(copy_back.replace("facegate_backup_1_20250601t120000z", name).encode())
        assert conn.execute("SELECT version FROM facegate_schema").fetchall() == [(1,)]
        assert conn.execute("SELECT id, name FROM persons").fetchall() == [(OLD_ID, OLD_NAME)]
        assert conn.execute("SELECT vector FROM embeddings").fetchall() == [(v.tobytes(),)]
        assert conn.execute("SELECT value FROM meta WHERE key = 'generation'").fetchall() == [
            ("1",)
        ]
        # new rows get ids after the restored ones
        conn.execute(
            "INSERT INTO audit (at, actor, action) VALUES (1, 't', 'x') RETURNING id"
        ).fetchall()
    # and this facegate upgrades the restored database again
    with Store.open(data_dir, url=pg_url) as s:
        assert s.upgrade is not None
        assert s.vectors().matrix[0].tobytes() == v.tobytes()
        assert [e.action for e in reversed(s.audit())] == ["enrol", "x"]
        assert len({e.id for e in s.audit()}) == 2
