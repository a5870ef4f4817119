"""Upgrades of a data directory: which facegate used it last, a copy before every migration,
and a refusal that says what to do when a facegate meets data newer than it knows.

- **The version record** `<data>/facegate-version.json` (`write_record`, `read_record`): the
  facegate version that last opened the data directory for writing, its store (`sqlite` or
  `postgresql`), that store's schema version and when. Written atomically (a temporary file,
  fsync, rename, fsync of the directory), 0600, at every successful writable open; a reader
  never writes it. A PostgreSQL database keeps its own record as well: `facegate_schema`
  holds its version and the facegate that migrated it (store_postgres.py).
- **A backup before migrating** (`backup_sqlite`): when the file's schema is older than this
  facegate's, SQLite's online backup API copies it (a consistent snapshot, WAL included) to
  `<data>/backups/store-schema<old>-<UTC time>.sqlite3` (the folder 0700, the file 0600, a
  rollback-journal database on its own, checked and fsynced) before anything is changed.
  PostgreSQL's copy is a schema `facegate_backup_<old>_<time>` in the same database, made in
  the migration's transaction (store_postgres.py).
- **Erasure deletes the backups** (`erase_backups`): they hold biometric data, and were only
  made to go back on an upgrade. Erasing any person overwrites every upgrade backup of the
  data directory with zeros and deletes it before the person's rows go (and drops
  PostgreSQL's backup schemas in the erasure's transaction): no erased person survives in a
  backup.
- **A newer data directory is refused** (`newer_sqlite_message`, `newer_postgres_message`):
  the message names the facegate and schema that made it, this facegate and the schema it
  knows, and the two ways on: upgrade facegate, or restore the backup of before the upgrade.

docs/upgrades.md says the same for the people who run gates.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sqlite3
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from facegate import __version__
from facegate.identity import store_files
from facegate.identity.store_files import DB_NAME
from facegate.identity.store_types import StoreError

log = logging.getLogger(__name__)

RECORD_NAME = "facegate-version.json"
RECORD_FORMAT = 1
BACKUP_DIR = "backups"
BACKUP_PREFIX = "store-schema"  # every file of BACKUP_DIR that erasure deletes starts so
_BACKUP_FILE = re.compile(r"store-schema(\d+)-(\d{8}T\d{6}Z)(?:-(\d+))?\.sqlite3")
PG_BACKUP_PREFIX = "facegate_backup_"
_PG_BACKUP = re.compile(r"facegate_backup_(\d+)_(\d{8}t\d{6}z)(?:_(\d+))?")
_FIELD_MAX = 64  # what of a record's text a message repeats
_ZEROS = bytes(1 << 20)


@dataclass(frozen=True)
class VersionRecord:
    """What `<data>/facegate-version.json` says."""

    facegate: str  # the facegate version that last opened the data directory for writing
    store: str  # "sqlite" | "postgresql"
    schema: int  # that store's schema version then
    written_at: str  # UTC, ISO 8601


@dataclass(frozen=True)
class Upgrade:
    """What opening a store migrated, and where the copy of before is."""

    from_schema: int
    to_schema: int
    backup: str  # a file (SQLite) or a schema of the database (PostgreSQL)


def utc_stamp(now: float) -> str:
    """`20250601T120000Z`: a backup's time, in its name."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))


def utc_iso(now: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))


def _clip(text: str) -> str:
    return text[:_FIELD_MAX]


# -- the version record ----------------------------------------------------------------------
def read_record(data_dir: Path) -> VersionRecord | None:
    """The data directory's version record, or None (absent, unreadable, not ours)."""
    try:
        raw = json.loads((data_dir / RECORD_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(raw, dict):
        return None
    facegate, kind, schema, at = (raw.get(k) for k in ("facegate", "store", "schema", "written_at"))
    if not (isinstance(facegate, str) and isinstance(kind, str)):
        return None
    if not isinstance(schema, int) or isinstance(schema, bool):
        return None
    return VersionRecord(
        _clip(facegate), _clip(kind), schema, _clip(at) if isinstance(at, str) else ""
    )


def write_record(
    data_dir: Path, *, store: str, schema: int, database: str, now: float | None = None
) -> None:
    """Record that this facegate opened the data directory for writing: atomically, 0600.
    A failure is logged, not raised (the record only words messages)."""
    body = {
        "format": RECORD_FORMAT,
        "facegate": __version__,
        "store": store,
        "schema": schema,
        "database": database,
        "written_at": utc_iso(time.time() if now is None else now),
    }
    data = (json.dumps(body, indent=2) + "\n").encode()
    path = data_dir / RECORD_NAME
    tmp = data_dir / f".{RECORD_NAME}.{os.getpid()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            os.fchmod(fd, 0o600)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        _fsync_dir(data_dir)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        log.warning("could not write the version record %s: %s", path, exc.strerror or exc)


# -- SQLite backups --------------------------------------------------------------------------
def backup_sqlite(conn: sqlite3.Connection, db: Path, version: int, target: int) -> Path:
    """A consistent copy of the database `conn` has open (at schema `version`, about to be
    migrated to `target`) in `<data>/backups`: its path. Raises StoreError, having changed
    nothing, when the copy cannot be made whole."""
    folder = db.parent / BACKUP_DIR
    what = f"before migrating {db} from schema {version} to {target}"
    try:
        store_files.secure_dir(folder)
        path = _new_private_file(folder, f"{BACKUP_PREFIX}{version}-{utc_stamp(time.time())}")
    except OSError as exc:
        raise StoreError(
            f"cannot make a backup in {folder} {what}: {exc.strerror or exc}; nothing was changed"
        ) from None
    try:
        copy = sqlite3.connect(path, isolation_level=None)
        try:
            conn.backup(copy)  # one step: a single read snapshot of the whole database
            copy.execute("PRAGMA journal_mode = DELETE")  # one file, no -wal beside it
            check = str(copy.execute("PRAGMA quick_check").fetchone()[0])
            copied = int(copy.execute("PRAGMA user_version").fetchone()[0])
        finally:
            copy.close()
        if check != "ok" or copied != version:
            raise StoreError(f"the copy reads back wrong ({check}, schema {copied})")
        _fsync_file(path)
        _fsync_dir(folder)
    except (sqlite3.Error, OSError, StoreError) as exc:
        with contextlib.suppress(OSError):
            path.unlink()
        raise StoreError(
            f"cannot back up {db} to {path} {what}: {exc}; nothing was changed (is the disk full?)"
        ) from None
    return path


def sqlite_backups(data_dir: Path) -> list[tuple[int, Path]]:
    """The upgrade backups in `<data>/backups` with the schema each holds, oldest first."""
    found: list[tuple[str, int, int, Path]] = []
    with contextlib.suppress(OSError):
        for path in (data_dir / BACKUP_DIR).iterdir():
            m = _BACKUP_FILE.fullmatch(path.name)
            if m and path.is_file():
                found.append((m[2], int(m[3] or 0), int(m[1]), path))
    return [(schema, path) for _, _, schema, path in sorted(found)]


def erase_backups(data_dir: Path) -> list[str]:
    """Overwrite with zeros and delete every upgrade backup in `<data>/backups` (erasure):
    their names. Raises StoreError when one cannot be deleted."""
    folder = data_dir / BACKUP_DIR
    try:
        names = sorted(p.name for p in folder.iterdir() if p.name.startswith(BACKUP_PREFIX))
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise StoreError(f"cannot list the upgrade backups in {folder}: {exc.strerror}") from None
    for name in names:
        path = folder / name
        try:
            _shred(path)
        except OSError as exc:
            raise StoreError(
                f"cannot delete the upgrade backup {path}: {exc.strerror or exc}; it holds"
                " the person's data, so they were not erased. Delete it, then erase again."
            ) from None
    if names:
        with contextlib.suppress(OSError):
            _fsync_dir(folder)
    return names


def _shred(path: Path) -> None:
    """Zeros over a regular file's bytes, on disk, then unlink it (a symlink: unlinked)."""
    info = path.lstat()
    if stat.S_ISREG(info.st_mode):
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
        try:
            left = info.st_size
            while left > 0:
                left -= os.write(fd, _ZEROS[: min(left, len(_ZEROS))])
            os.fsync(fd)
        finally:
            os.close(fd)
    elif stat.S_ISDIR(info.st_mode):
        return  # not one of ours
    path.unlink()


def _new_private_file(folder: Path, stem: str) -> Path:
    for n in range(1000):
        path = folder / (f"{stem}.sqlite3" if n == 0 else f"{stem}-{n}.sqlite3")
        try:
            store_files.create_private(path)
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"too many backups named {stem}")


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- refusing newer data ---------------------------------------------------------------------
def newer_sqlite_message(db: Path, found: int, known: int) -> str:
    """Why this facegate refuses `db` (schema `found` > `known`), and the two ways on."""
    data_dir = db.parent
    record = read_record(data_dir)
    if record is not None and record.store == "sqlite" and record.schema >= found:
        when = f" on {record.written_at}" if record.written_at else ""
        by = f"{data_dir} was last used by facegate {record.facegate}{when}, with schema {found}"
        need = f"upgrade facegate to {record.facegate} or newer"
    else:
        by = f"{data_dir} was last used by a newer facegate (its {RECORD_NAME} does not say which)"
        need = "upgrade facegate"
    older = [path for schema, path in sqlite_backups(data_dir) if schema <= known]
    if older:
        back = (
            f"or go back to the data of before that upgrade: stop facegate, move {DB_NAME}"
            f" (and {DB_NAME}-wal, {DB_NAME}-shm) away and copy the backup {older[-1]} to"
            f" {db} (whatever changed since the upgrade is lost; docs/upgrades.md)"
        )
    else:
        back = (
            f"there is no backup of before that upgrade in {data_dir / BACKUP_DIR} to go back"
            " to (erasing a person deletes them)"
        )
    return (
        f"{db} has schema version {found}, newer than this facegate knows: {by}; this is"
        f" facegate {__version__}, which knows schema {known}: {need}, {back}. Nothing was"
        " changed."
    )


def newer_postgres_message(where: str, found: int, known: int, by: str, backups: list[str]) -> str:
    """Why this facegate refuses the database `where` (schema `found` > `known`), `by` the
    facegate that migrated it ('' unknown), `backups` its backup schemas."""
    by = _clip(by)
    older = sorted(
        (m[2], int(m[3] or 0), name)
        for name in backups
        if (m := _PG_BACKUP.fullmatch(name)) and int(m[1]) <= known
    )
    migrated = f"facegate {by} migrated it" if by else "a newer facegate migrated it"
    need = f"upgrade facegate to {by} or newer" if by else "upgrade facegate"
    if older:
        back = (
            f"or stop every gate and go back to the copy of before that upgrade, the schema"
            f" {older[-1][2]} of the database (docs/upgrades.md says how; whatever changed"
            " since is lost)"
        )
    else:
        back = "there is no copy of before that upgrade in it to go back to"
    return (
        f"{where} has schema version {found}, newer than this facegate knows: {migrated} to"
        f" schema {found}; this is facegate {__version__}, which knows schema {known}: {need}"
        f" on every gate sharing the database, {back}. Nothing was changed."
    )
