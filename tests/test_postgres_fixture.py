"""The real-PostgreSQL fixture itself (tests/postgres.py): a fresh database per test, databases
kept apart, TCP and Unix-socket URLs, a restart that clients survive by reconnecting; and what
erasing an embedding takes on disk (VACUUM (FULL), not a plain VACUUM)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import psycopg
import pytest

from postgres import PostgresServer


def test_a_fresh_database_takes_a_table(pg_url: str) -> None:
    with psycopg.connect(pg_url) as conn:
        assert conn.execute(
            "SELECT current_user, count(*) FROM pg_tables WHERE schemaname = 'public'"
        ).fetchone() == ("facegate", 0)
        conn.execute("CREATE TABLE people (id serial PRIMARY KEY, name text NOT NULL)")
        conn.execute("INSERT INTO people (name) VALUES (%s), (%s)", ("Ada", "Émile"))
        conn.commit()
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute("SELECT name FROM people ORDER BY id").fetchall()
    assert rows == [("Ada",), ("Émile",)]


def test_each_url_is_its_own_database(pg_server: PostgresServer, pg_url: str) -> None:
    other = pg_server.database()
    assert other != pg_url
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE only_here (x int)")
    with psycopg.connect(other, autocommit=True) as conn:
        found = conn.execute("SELECT to_regclass('only_here')").fetchone()
        owner = conn.execute(
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()"
        ).fetchone()
    assert found == (None,)
    assert owner == ("facegate",)


def test_tcp_url_reaches_the_same_server(pg_server: PostgresServer) -> None:
    with psycopg.connect(pg_server.tcp_url) as conn:
        row = conn.execute("SELECT inet_server_addr()::text, inet_server_port()").fetchone()
    assert row == ("127.0.0.1/32", pg_server.port)


def test_restart_breaks_connections_and_new_ones_work(
    pg_server: PostgresServer, pg_url: str
) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (x int)")
        conn.execute("INSERT INTO kept VALUES (7)")
        pid_before = conn.info.backend_pid
        pg_server.restart()
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT x FROM kept").fetchall() == [(7,)]
        assert conn.info.backend_pid != pid_before


def _probes(vector: bytes) -> list[bytes]:
    """Three 32-byte pieces that every stored copy of a 2048-byte value holds whole: inline in
    the heap, or out of line in TOAST chunks of 1996 + 52 bytes (the last piece lies in the
    second chunk)."""
    return [vector[:32], vector[1000:1032], vector[-32:]]


def _on_disk(folder: Path, vectors: list[bytes]) -> int:
    """How many of `vectors` have any probe in any file under `folder`."""
    blobs = [p.read_bytes() for p in folder.rglob("*") if p.is_file()]
    return sum(any(probe in blob for blob in blobs for probe in _probes(v)) for v in vectors)


def test_vacuum_full_removes_deleted_vectors_from_the_database_files(
    pg_server: PostgresServer, pg_url: str
) -> None:
    """A deleted embedding stays in the table's files until VACUUM (FULL) rewrites the table
    (a plain VACUUM leaves most of the bytes in the freed space); after VACUUM (FULL) and a
    CHECKPOINT no file of the database (base/<its oid>/: tables, TOAST, free space maps, the
    old files of the rewritten table) holds them. The WAL still does, until its segments are
    removed or overwritten."""
    rng = np.random.default_rng(20240611)
    vectors = [rng.random(512, dtype=np.float32).tobytes() for _ in range(50)]
    persons = [f"p{i % 10}" for i in range(50)]
    gone = [v for v, p in zip(vectors, persons, strict=True) if p in ("p1", "p2")]
    kept = [v for v, p in zip(vectors, persons, strict=True) if p not in ("p1", "p2")]
    dbname = pg_url.split("?", maxsplit=1)[0].rsplit("/", 1)[1]
    with psycopg.connect(pg_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT oid FROM pg_database WHERE datname = current_database()"
        ).fetchone()
        assert row is not None
        files = pg_server.data_dir / "base" / str(row[0])
        conn.execute(
            "CREATE TABLE embeddings (id bigint generated always as identity primary key,"
            " person_id text, vector bytea not null)"
        )
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO embeddings (person_id, vector) VALUES (%s, %s)",
                list(zip(persons, vectors, strict=True)),
            )
    with psycopg.connect(pg_server.admin_url(dbname), autocommit=True) as admin:
        admin.execute("CHECKPOINT")
        assert _on_disk(files, gone) == len(gone)  # the probes find them (stored uncompressed)
        with psycopg.connect(pg_url, autocommit=True) as conn:
            deleted = conn.execute(
                "DELETE FROM embeddings WHERE person_id IN ('p1', 'p2')"
            ).rowcount
            conn.execute("VACUUM (FULL) embeddings")
        admin.execute("CHECKPOINT")
    assert deleted == len(gone) == 10
    assert _on_disk(files, gone) == 0
    assert _on_disk(files, kept) == len(kept)
