"""The store's files on disk: private, held by one writer, checked before use, durable.

- The data directory is created 0700 and the database 0600 (`secure_dir`, `create_private`).
- One writer per data directory: an exclusive `flock` on `<data>/store.lock` (`take_lock`),
  which names the holder's pid for whoever is refused.
- A file that is not SQLite is refused before SQLite touches it (`check_header`).
- Connections have foreign keys on; the writer's has WAL, `synchronous=FULL` and
  `secure_delete=ON` (`connect`, `configure_writer`).
- Erasure leaves no bytes behind: the WAL is checkpointed and truncated (`truncate_wal`).

Functions only, on paths and connections: the `Store` (store.py) decides when each runs.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import time
from pathlib import Path
from typing import IO

from facegate.identity.store_types import StoreError, StoreLockedError

DB_NAME = "facegate.db"
LOCK_NAME = "store.lock"
SQLITE_HEADER = b"SQLite format 3\x00"
PAGE_SIZE = 16384
BUSY_TIMEOUT_S = 10.0


def secure_dir(path: Path) -> None:
    """Create the directory 0700 (parents too), or take group and other access away."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o700)


def create_private(path: Path) -> None:
    """Create an empty file readable by its owner only; fails if it exists."""
    os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))


def make_private(path: Path) -> None:
    os.chmod(path, 0o600)


def take_lock(data_dir: Path) -> IO[bytes]:
    """Hold the data directory for writing until the returned handle is closed."""
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


def check_header(db: Path) -> None:
    """Refuse a non-empty file that is not an SQLite database (never overwrite it)."""
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


def connect(target: str, *, uri: bool = False) -> sqlite3.Connection:
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


def configure_writer(conn: sqlite3.Connection) -> None:
    try:
        # A 2 KiB embedding row leaves half of a 4 KiB page empty; 16 KiB pages hold seven.
        # (Takes effect only on a new, empty database.)
        conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA secure_delete = ON")
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"cannot configure the database: {exc}") from None


def truncate_wal(conn: sqlite3.Connection, wait: float) -> bool:
    """Copy the WAL into the database and truncate it, waiting at most `wait` seconds for
    readers; False if a reader still holds old pages."""
    deadline = time.monotonic() + wait
    conn.execute("PRAGMA busy_timeout = 50")
    try:
        while True:
            busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if not busy:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
    finally:
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
