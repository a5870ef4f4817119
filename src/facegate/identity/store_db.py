"""What the store needs of a database engine: the two Protocols its backends implement.

`Store` (store.py) writes its SQL once, with `?` placeholders and the SQL that SQLite and
PostgreSQL share (`INSERT ... ON CONFLICT`, `RETURNING`, `CAST`), and asks a `Database` for
what differs between engines:
- `SqliteDatabase` (store_sqlite.py): one file in the data directory, one writing process;
- `PostgresDatabase` (store_postgres.py): one database that several gates share.

A `Tx` is one open transaction. Besides running SQL it can serialise the gallery's writers
across every process sharing the database (`exclusive`: the duplicate check and the insert of
a new person happen under it) and announce a committed change to the other gates (`notify`,
delivered only if the transaction commits).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

from facegate.identity.store_types import GalleryChange

Row = tuple[Any, ...]


class Tx(Protocol):
    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...

    def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Execute; the number of rows it changed."""
        ...

    def run_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...

    def exclusive(self) -> None:
        """Hold, until the transaction ends, the lock every writer of persons and embeddings
        takes (a no-op where the transaction is already the only writer)."""
        ...

    def notify(self, change: GalleryChange) -> None:
        """Tell the other gates about this change once the transaction commits."""
        ...


class Database(Protocol):
    kind: str  # "sqlite" | "postgresql"
    where: str  # where it is, for messages (a path, or the URL without its password)
    readonly: bool

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...

    def transaction(self, *, durable: bool = True) -> AbstractContextManager[Tx]:
        """`durable=False` may commit without waiting for the disk (the event history)."""
        ...

    def agg(self, column: str) -> str:
        """SQL for the comma-joined values of `column` in a GROUP BY."""
        ...

    def reclaim(self, wait: float) -> bool:
        """After an erasure: make the deleted rows' bytes leave the database's files; False
        if that has to wait (readers); retried at the next write and at close."""
        ...

    def integrity_check(self) -> str: ...

    def follow(self, stop: threading.Event) -> Iterator[GalleryChange | None]:
        """Changes committed by other processes, until `stop` is set: None when the gallery
        may have changed unseen (first connection, reconnection: compare generations)."""
        ...

    def close(self) -> None: ...
