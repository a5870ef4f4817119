"""The SQLite identity store (facegate.identity.store) on real database files in tmp_path:
what is SQLite's own (files, locks, pragmas, WAL, damaged files, its migrations). What both
backends do alike is tested once for both in test_store_backends.py.

Vectors are synthetic L2-normalised float32 512-d: the store does not care where they come from.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from facegate.identity import store as store_mod
from facegate.identity.store import (
    APPLICATION_ID,
    DB_NAME,
    LOCK_NAME,
    MIGRATIONS,
    SCHEMA_VERSION,
    Store,
    StoreError,
    StoreLockedError,
    UnknownPersonError,
)
from synthetic import FakeClock, emb, unit

PACK = "faceplugin"
DIM = 512


# -- helpers ---------------------------------------------------------------------------------
def files_containing(directory: Path, needle: bytes) -> list[str]:
    """Every regular file under `directory` (db, -wal, -shm, lock, anything) holding `needle`."""
    assert needle
    return sorted(
        str(p.relative_to(directory))
        for p in directory.rglob("*")
        if p.is_file() and needle in p.read_bytes()
    )


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def run_python(code: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """`code` in another Python process (the venv's interpreter), output captured."""
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def store(data_dir: Path) -> Iterator[Store]:
    s = Store.open(data_dir, clock=FakeClock())
    yield s
    s.close()


def table_count(s: Store, table: str) -> int:
    return int(s._conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


# -- create / read ---------------------------------------------------------------------------
def test_round_trip_survives_reopen(data_dir: Path, rng: np.random.Generator) -> None:
    v = unit(rng)
    with Store.open(data_dir) as s:
        person, ids = s.create_person("Grace", [emb(v)], pack=PACK, actor="t", thumbnail=b"T1")
    with Store.open(data_dir, readonly=True) as r:
        assert r.person(person.id).name == "Grace"
        assert r.vectors().ids.tolist() == ids
        assert r.vectors().matrix[0].tobytes() == v.tobytes()
        assert r.thumbnail(person.id) == b"T1"


def test_rename(store: Store, rng: np.random.Generator, data_dir: Path) -> None:
    p, _ = store.create_person("Old Name", [emb(unit(rng))], pack=PACK, actor="t")
    renamed = store.rename(p.id, "  New   Name ", actor="t")
    assert renamed.name == "New Name"
    assert renamed.id == p.id
    assert renamed.embeddings == 1
    assert renamed.updated_at > p.updated_at
    assert store.person(p.id).name == "New Name"
    with pytest.raises(StoreError, match="empty"):
        store.rename(p.id, "   ", actor="t")
    with pytest.raises(StoreError, match="control character"):
        store.rename(p.id, "New\nName", actor="t")
    assert store.person(p.id).name == "New Name"
    store.close()
    with Store.open(data_dir, readonly=True) as r:
        assert r.person(p.id).name == "New Name"


@pytest.mark.parametrize(
    ("name", "why"),
    [("", "empty"), ("   ", "empty"), ("\t\n", "control character"), ("A\u202eB", "format")],
)
def test_empty_or_hostile_name_refused(
    store: Store, rng: np.random.Generator, name: str, why: str
) -> None:
    with pytest.raises(StoreError, match=why):
        store.create_person(name, [emb(unit(rng))], pack=PACK, actor="t")
    assert store.persons() == []
    assert store.generation() == 0


def test_too_long_name_refused(store: Store, rng: np.random.Generator) -> None:
    with pytest.raises(StoreError, match="200 characters"):
        store.create_person("x" * 201, [emb(unit(rng))], pack=PACK, actor="t")
    p, _ = store.create_person("x" * 200, [emb(unit(rng))], pack=PACK, actor="t")
    assert len(p.name) == 200


def test_no_embeddings_refused(store: Store) -> None:
    with pytest.raises(StoreError, match="at least one embedding"):
        store.create_person("Ada", [], pack=PACK, actor="t")
    assert store.persons() == []
    assert store.generation() == 0
    assert store.audit() == []


def _bad_vectors(rng: np.random.Generator) -> dict[str, list[np.ndarray]]:
    nan = unit(rng)
    nan[7] = np.nan
    inf = unit(rng)
    inf[3] = np.inf
    return {
        # the first vector fixes the dimension; a later one of another size is refused
        "wrong_dim_inside": [unit(rng), unit(rng, 256)],
        "nan": [nan],
        "inf": [inf],
        "norm_2": [unit(rng) * np.float32(2.0)],
        "norm_0.99": [unit(rng) * np.float32(0.99)],
        "zero": [np.zeros(DIM, np.float32)],
    }


# -- one transaction -------------------------------------------------------------------------
def test_failure_mid_create_leaves_nothing(store: Store, rng: np.random.Generator) -> None:
    other, _ = store.create_person("Other", [emb(unit(rng))], pack=PACK, actor="t", thumbnail=b"o")
    before = (store.generation(), store.embedding_count(), len(store.audit()))
    items = [emb(unit(rng)) for _ in range(5)]
    items[2] = emb(unit(rng) * np.float32(1.5))  # the 3rd of 5 is not normalised
    with pytest.raises(StoreError, match="not L2-normalised"):
        store.create_person(
            "Ada", items, pack=PACK, actor="t", thumbnail=b"thumb", person_id="ada-1"
        )
    assert [p.id for p in store.persons()] == [other.id]
    assert (store.generation(), store.embedding_count(), len(store.audit())) == before
    assert table_count(store, "thumbnails") == 1
    assert (
        store._conn.execute("SELECT count(*) FROM embeddings WHERE person_id = 'ada-1'").fetchone()[
            0
        ]
        == 0
    )
    with pytest.raises(UnknownPersonError):
        store.person("ada-1")


def test_failure_mid_add_keeps_the_old_embeddings(store: Store, rng: np.random.Generator) -> None:
    p, ids = store.create_person("Ada", [emb(unit(rng))], pack=PACK, actor="t", thumbnail=b"one")
    items = [emb(unit(rng)), emb(unit(rng)), emb(np.full(DIM, np.nan, np.float32))]
    with pytest.raises(StoreError, match="non-finite"):
        store.add_embeddings(p.id, items, pack=PACK, actor="t", thumbnail=b"two")
    assert [e.id for e in store.embeddings_of(p.id)] == ids
    assert store.thumbnail(p.id) == b"one"
    assert store.generation() == 1
    assert store.person(p.id).updated_at == p.updated_at


def test_batch_all_or_nothing(store: Store, rng: np.random.Generator) -> None:
    with pytest.raises(StoreError, match="already exists"), store.batch() as batch:
        batch.create_person("p1", "First", "", 1.0, [emb(unit(rng))], pack=PACK, thumbnail=b"x")
        batch.create_person("p1", "Again", "", 2.0, [emb(unit(rng))], pack=PACK, thumbnail=None)
    assert store.persons() == []
    assert store.embedding_count() == 0
    assert table_count(store, "thumbnails") == 0
    assert store.generation() == 0
    assert store.model_pack() is None

    with store.batch() as batch:
        batch.create_person(
            "p1", " First  One", "note", 1.0, [emb(unit(rng))], pack=PACK, thumbnail=b"x"
        )
        batch.create_person(
            "p2", "Second", "", 2.0, [emb(unit(rng))] * 2, pack=PACK, thumbnail=None
        )
        batch.audit("importer", "import", None, persons=2)
    assert [(p.id, p.name, p.note, p.created_at, p.embeddings) for p in store.persons()] == [
        ("p1", "First One", "note", 1.0, 1),
        ("p2", "Second", "", 2.0, 2),
    ]
    assert store.thumbnail("p1") == b"x"
    assert store.audit()[0].action == "import"


def test_batch_rolls_back_on_any_exception(store: Store, rng: np.random.Generator) -> None:
    with pytest.raises(RuntimeError), store.batch() as batch:
        batch.create_person("p1", "First", "", 1.0, [emb(unit(rng))], pack=PACK, thumbnail=None)
        raise RuntimeError("import aborted")
    assert store.persons() == []
    assert store.generation() == 0


# -- durability settings ---------------------------------------------------------------------
def test_durability_pragmas(store: Store) -> None:
    def pragma(name: str) -> Any:
        return store._conn.execute(f"PRAGMA {name}").fetchone()[0]

    assert pragma("journal_mode") == "wal"
    assert pragma("synchronous") == 2  # FULL
    assert pragma("secure_delete") == 1
    assert pragma("foreign_keys") == 1
    assert pragma("application_id") == APPLICATION_ID
    assert pragma("user_version") == SCHEMA_VERSION


def test_reader_has_foreign_keys_and_wal(data_dir: Path, rng: np.random.Generator) -> None:
    with Store.open(data_dir) as s:
        s.create_person("A", [emb(unit(rng))], pack=PACK, actor="t")
    with Store.open(data_dir, readonly=True) as r:
        assert r._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert r._conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1


# -- erasure ---------------------------------------------------------------------------------
def enrol_pair(s: Store, rng: np.random.Generator) -> dict[str, Any]:
    """A person with distinctive vectors and thumbnails (one replaced), and a second person."""
    a_vecs = [unit(rng) for _ in range(3)]
    a_extra = unit(rng)
    thumb1 = b"THUMB-ONE-" + rng.bytes(6000)
    thumb2 = b"THUMB-TWO-" + rng.bytes(7000)
    a, _ = s.create_person(
        "Erased Person", [emb(v) for v in a_vecs], pack=PACK, actor="t", thumbnail=thumb1
    )
    s.add_embeddings(a.id, [emb(a_extra, "left")], pack=PACK, actor="t", thumbnail=thumb2)
    b_vec = unit(rng)
    b_thumb = b"KEPT-THUMB-" + rng.bytes(3000)
    b, _ = s.create_person("Kept Person", [emb(b_vec)], pack=PACK, actor="t", thumbnail=b_thumb)
    live = [
        *(v.tobytes() for v in [*a_vecs, a_extra]),
        a_vecs[1].tobytes()[992:1056],  # 64 bytes from the middle of a vector
        a_extra.tobytes()[1500:1564],
        thumb2,
        thumb2[3000:3064],
    ]
    return {
        "a": a.id,
        "b": b.id,
        "a_live": live,  # on disk before the delete
        "a_needles": [*live, thumb1, thumb1[3000:3064]],  # + the replaced thumbnail
        "b_needles": [b_vec.tobytes(), b_vec.tobytes()[992:1056], b_thumb],
    }


def assert_erased(data_dir: Path, pair: dict[str, Any]) -> None:
    for needle in pair["a_needles"]:
        assert files_containing(data_dir, needle) == [], "deleted bytes still on disk"
    for needle in pair["b_needles"]:
        assert files_containing(data_dir, needle) != [], (
            "the other person's bytes must still be found (so the scan can fail)"
        )


@pytest.mark.parametrize("where", ["in_wal", "checkpointed"])
def test_delete_erases_bytes_from_every_file(
    data_dir: Path, rng: np.random.Generator, where: str
) -> None:
    s = Store.open(data_dir)
    pair = enrol_pair(s, rng)
    if where == "checkpointed":
        assert s.checkpoint()  # the rows are now in facegate.db itself, the WAL is empty
    for needle in pair["a_live"]:
        found = files_containing(data_dir, needle)
        assert found == ([DB_NAME] if where == "checkpointed" else [f"{DB_NAME}-wal"])
    ids = s.delete_person(pair["a"], actor="t")
    assert len(ids) == 4
    with pytest.raises(UnknownPersonError):
        s.person(pair["a"])
    assert s.embedding_count() == 1
    assert table_count(s, "thumbnails") == 1
    # while the store stays open
    assert_erased(data_dir, pair)
    # more writes after the delete do not bring anything back
    s.rename(pair["b"], "Renamed", actor="t")
    s.close()
    # after close
    assert_erased(data_dir, pair)
    assert sorted(os.listdir(data_dir)) == ["facegate-version.json", DB_NAME, LOCK_NAME]
    with Store.open(data_dir, readonly=True) as r:
        assert [p.id for p in r.persons()] == [pair["b"]]


def test_delete_with_idle_reader_open_erases(data_dir: Path, rng: np.random.Generator) -> None:
    """A reader that is open (and has read) but is not inside a read does not block erasure."""
    s = Store.open(data_dir)
    pair = enrol_pair(s, rng)
    r = Store.open(data_dir, readonly=True)
    try:
        assert {p.id for p in r.persons()} == {pair["a"], pair["b"]}
        assert r.vectors().matrix.shape == (5, DIM)
        t0 = time.monotonic()
        s.delete_person(pair["a"], actor="t")
        assert time.monotonic() - t0 < 2.0
        assert_erased(data_dir, pair)
        assert [p.id for p in r.persons()] == [pair["b"]]  # the reader sees the deletion
        assert r.vectors().matrix.shape == (1, DIM)
        s.close()
        assert_erased(data_dir, pair)
    finally:
        r.close()
        s.close()
    assert_erased(data_dir, pair)


def _delete_in_thread(data_dir: Path, person_id: str, result: dict[str, Any]) -> None:
    try:
        with Store.open(data_dir) as w:
            t0 = time.monotonic()
            result["ids"] = w.delete_person(person_id, actor="t")
            result["seconds"] = time.monotonic() - t0
    except BaseException as exc:  # reported to the test thread
        result["error"] = exc


def test_delete_waits_for_a_reader_inside_a_read(data_dir: Path, rng: np.random.Generator) -> None:
    """Observed: a reader inside a read transaction keeps its snapshot (still sees the person);
    the delete commits, then its WAL checkpoint waits (busy handler) until the read ends, and
    only then returns, with the bytes erased."""
    with Store.open(data_dir) as s:
        pair = enrol_pair(s, rng)
    r = Store.open(data_dir, readonly=True)
    try:
        r._conn.execute("BEGIN")
        assert len(r.persons()) == 2  # the read snapshot starts here
        result: dict[str, Any] = {}
        thread = threading.Thread(target=_delete_in_thread, args=(data_dir, pair["a"], result))
        thread.start()
        time.sleep(1.0)
        assert thread.is_alive(), "delete returned while a reader held the WAL"
        assert len(r.persons()) == 2  # snapshot isolation: the reader still sees the person
        r._conn.execute("COMMIT")  # the read ends
        thread.join(timeout=30)
        assert not thread.is_alive()
        assert "error" not in result, result.get("error")
        assert len(result["ids"]) == 4
        assert result["seconds"] >= 0.9
        assert [p.id for p in r.persons()] == [pair["b"]]
        assert_erased(data_dir, pair)
    finally:
        r.close()
    assert_erased(data_dir, pair)


def test_delete_with_long_reader_is_bounded_and_never_silently_incomplete(
    data_dir: Path, rng: np.random.Generator
) -> None:
    with Store.open(data_dir) as s:
        pair = enrol_pair(s, rng)
    r = Store.open(data_dir, readonly=True)
    result: dict[str, Any] = {}
    thread = threading.Thread(target=_delete_in_thread, args=(data_dir, pair["a"], result))
    try:
        r._conn.execute("BEGIN")
        assert len(r.persons()) == 2
        thread.start()
        thread.join(timeout=5.0)  # the documented budget is 50 x 20 ms
        returned_in_time = not thread.is_alive()
        erased_when_returned = returned_in_time and not any(
            files_containing(data_dir, n) for n in pair["a_needles"]
        )
        signalled = isinstance(result.get("error"), StoreError)
    finally:
        r._conn.execute("COMMIT")  # lets a blocked checkpoint finish
        thread.join(timeout=60)
        r.close()
    assert returned_in_time, "delete_person blocked while a reader held a snapshot"
    # Returning normally means erasure is done; otherwise it must say so (StoreError).
    assert erased_when_returned or signalled


# -- files -----------------------------------------------------------------------------------
def test_file_permissions(data_dir: Path, rng: np.random.Generator) -> None:
    with Store.open(data_dir) as s:
        s.create_person("A", [emb(unit(rng))], pack=PACK, actor="t")
        assert mode_of(data_dir) == 0o700
        assert mode_of(data_dir / DB_NAME) == 0o600
        assert mode_of(data_dir / LOCK_NAME) == 0o600
        wal, shm = data_dir / f"{DB_NAME}-wal", data_dir / f"{DB_NAME}-shm"
        assert wal.exists()
        assert shm.exists()
        assert mode_of(wal) == 0o600
        assert mode_of(shm) == 0o600
        for p in data_dir.iterdir():
            assert mode_of(p) & 0o077 == 0, p
    assert mode_of(data_dir / DB_NAME) == 0o600


def test_nested_data_dir_created(tmp_path: Path) -> None:
    deep = tmp_path / "a" / "b" / "data"
    Store.open(deep).close()
    assert mode_of(deep) == 0o700
    assert mode_of(deep / DB_NAME) == 0o600


def test_existing_loose_dir_and_db_are_tightened(data_dir: Path, rng: np.random.Generator) -> None:
    with Store.open(data_dir) as s:
        s.create_person("A", [emb(unit(rng))], pack=PACK, actor="t")
    os.chmod(data_dir, 0o755)
    os.chmod(data_dir / DB_NAME, 0o644)
    assert mode_of(data_dir) == 0o755
    with Store.open(data_dir) as s:
        assert mode_of(data_dir) == 0o700
        assert mode_of(data_dir / DB_NAME) == 0o600
        assert len(s.persons()) == 1


def test_existing_empty_loose_dir_is_tightened(data_dir: Path) -> None:
    data_dir.mkdir(mode=0o755)
    os.chmod(data_dir, 0o755)
    Store.open(data_dir).close()
    assert mode_of(data_dir) == 0o700


# -- lock ------------------------------------------------------------------------------------
def _open_writer_code(data_dir: Path) -> str:
    return (
        "import sys\n"
        "from pathlib import Path\n"
        "from facegate.identity.store import Store, StoreError\n"
        "try:\n"
        f"    s = Store.open(Path({str(data_dir)!r}))\n"
        "except StoreError as exc:\n"
        "    print(type(exc).__name__, exc)\n"
        "    sys.exit(3)\n"
        "print('opened', len(s.persons()))\n"
        "s.close()\n"
    )


def test_second_writer_in_another_process_refused(data_dir: Path, rng: np.random.Generator) -> None:
    with Store.open(data_dir) as s:
        s.create_person("A", [emb(unit(rng))], pack=PACK, actor="t")
        proc = run_python(_open_writer_code(data_dir))
        assert proc.returncode == 3, proc.stderr
        out = proc.stdout.strip()
        assert out.startswith("StoreLockedError ")
        assert str(data_dir) in out
        assert f"pid {os.getpid()}" in out  # names the holder
        assert "only one facegate process may write" in out
        # the writer is unaffected
        s.create_person("B", [emb(unit(rng))], pack=PACK, actor="t")
        assert len(s.persons()) == 2


def test_second_writer_in_same_process_refused(store: Store, data_dir: Path) -> None:
    with pytest.raises(StoreLockedError, match="in use by"):
        Store.open(data_dir)
    assert store.persons() == []  # still usable


def test_readers_work_while_writer_holds_lock(data_dir: Path, rng: np.random.Generator) -> None:
    reader_code = (
        "from pathlib import Path\n"
        "from facegate.identity.store import Store\n"
        f"with Store.open(Path({str(data_dir)!r}), readonly=True) as r:\n"
        "    print(sorted(p.name for p in r.persons()), r.embedding_count())\n"
    )
    with Store.open(data_dir) as w:
        w.create_person("Alice", [emb(unit(rng))], pack=PACK, actor="t")
        with Store.open(data_dir, readonly=True) as r:
            assert [p.name for p in r.persons()] == ["Alice"]
            proc = run_python(reader_code)
            assert proc.returncode == 0, proc.stderr
            assert proc.stdout.strip() == "['Alice'] 1"
            # a new commit is visible to the open reader and to a new process
            w.create_person("Bob", [emb(unit(rng)), emb(unit(rng))], pack=PACK, actor="t")
            assert sorted(p.name for p in r.persons()) == ["Alice", "Bob"]
            proc = run_python(reader_code)
            assert proc.returncode == 0, proc.stderr
            assert proc.stdout.strip() == "['Alice', 'Bob'] 3"


def test_writer_can_open_after_close(data_dir: Path, rng: np.random.Generator) -> None:
    w = Store.open(data_dir)
    w.create_person("A", [emb(unit(rng))], pack=PACK, actor="t")
    assert run_python(_open_writer_code(data_dir)).returncode == 3
    w.close()
    proc = run_python(_open_writer_code(data_dir))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "opened 1"
    with Store.open(data_dir) as again:
        assert len(again.persons()) == 1


def test_readonly_open_without_data(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no facegate data"):
        Store.open(tmp_path / "nothing", readonly=True)
    assert not (tmp_path / "nothing").exists()


# -- refusal ---------------------------------------------------------------------------------
@pytest.mark.parametrize("readonly", [False, True])
def test_random_bytes_refused_and_untouched(data_dir: Path, readonly: bool) -> None:
    data_dir.mkdir(mode=0o700)
    db = data_dir / DB_NAME
    content = np.random.default_rng(7).bytes(50_000)
    db.write_bytes(content)
    os.chmod(db, 0o644)
    with pytest.raises(StoreError, match="not an SQLite database") as info:
        Store.open(data_dir, readonly=readonly)
    assert "refusing to use or overwrite" in str(info.value)
    assert db.read_bytes() == content
    assert mode_of(db) == 0o644
    assert not (data_dir / f"{DB_NAME}-wal").exists()
    # the lock was released: a second attempt reports the same, not "in use"
    with pytest.raises(StoreError, match="not an SQLite database"):
        Store.open(data_dir, readonly=readonly)


def make_foreign_db(db: Path, application_id: int) -> bytes:
    db.parent.mkdir(mode=0o700, exist_ok=True)
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, amount REAL, customer TEXT)")
    conn.executemany(
        "INSERT INTO invoices (amount, customer) VALUES (?, ?)",
        [(i * 1.5, f"customer {i}") for i in range(500)],
    )
    conn.execute(f"PRAGMA application_id = {application_id}")
    conn.commit()
    conn.close()
    return db.read_bytes()


@pytest.mark.parametrize("application_id", [0, 0x12345678])
@pytest.mark.parametrize("readonly", [False, True])
def test_another_programs_database_refused(
    data_dir: Path, application_id: int, readonly: bool
) -> None:
    db = data_dir / DB_NAME
    make_foreign_db(db, application_id)
    with pytest.raises(StoreError, match="another program") as info:
        Store.open(data_dir, readonly=readonly)
    assert f"{application_id:#x}" in str(info.value)
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        assert conn.execute("SELECT count(*) FROM invoices").fetchone()[0] == 500
        assert "audit" not in {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    finally:
        conn.close()


def test_another_programs_database_untouched_by_readonly_open(data_dir: Path) -> None:
    db = data_dir / DB_NAME
    content = make_foreign_db(db, 0)
    mode = mode_of(db)
    with pytest.raises(StoreError, match="another program"):
        Store.open(data_dir, readonly=True)
    assert db.read_bytes() == content
    assert mode_of(db) == mode


def test_another_programs_database_byte_identical_after_writer_refusal(data_dir: Path) -> None:
    db = data_dir / DB_NAME
    content = make_foreign_db(db, 0)
    os.chmod(db, 0o644)
    with pytest.raises(StoreError, match="another program"):
        Store.open(data_dir)
    assert db.read_bytes() == content
    assert mode_of(db) == 0o644


def many_rows_store(data_dir: Path, n_persons: int = 300) -> dict[str, Any]:
    """A closed store with many rows; returns what it holds, for comparison."""
    rng = np.random.default_rng(99)
    with Store.open(data_dir) as s:
        with s.batch() as batch:
            for i in range(n_persons):
                batch.create_person(
                    f"p{i:04d}",
                    f"Person {i}",
                    "",
                    float(i),
                    [emb(unit(rng)) for _ in range(3)],
                    pack=PACK,
                    thumbnail=None,
                )
        vs = s.vectors()
        return {
            "persons": [(p.id, p.name, p.embeddings) for p in s.persons()],
            "ids": vs.ids.tolist(),
            "matrix": vs.matrix.tobytes(),
            "count": s.embedding_count(),
            "page_size": int(s._conn.execute("PRAGMA page_size").fetchone()[0]),
        }


def read_everything(data_dir: Path, truth: dict[str, Any]) -> tuple[bool, list[str]]:
    """Open a damaged store and read it: (damage detected?, reads that returned wrong data)."""
    errors = (StoreError, sqlite3.DatabaseError)
    try:
        s = Store.open(data_dir, readonly=True)
    except errors:
        return True, []
    detected = False
    wrong: list[str] = []
    try:
        try:
            detected = s.integrity_check() != "ok"
        except errors:
            detected = True

        def persons() -> list[tuple[str, str, int]]:
            return [(p.id, p.name, p.embeddings) for p in s.persons()]

        def ids() -> list[int]:
            return list(s.vectors().ids.tolist())

        def matrix() -> bytes:
            return s.vectors().matrix.tobytes()

        reads = {"persons": persons, "ids": ids, "matrix": matrix, "count": s.embedding_count}
        for key, read in reads.items():
            try:
                value = read()
            except errors:
                detected = True
                continue
            if value != truth[key]:
                wrong.append(key)
    finally:
        s.close()
    return detected, wrong


def test_truncated_database(data_dir: Path) -> None:
    truth = many_rows_store(data_dir)
    db = data_dir / DB_NAME
    size = db.stat().st_size
    assert size > 20 * truth["page_size"]
    with db.open("r+b") as fh:
        fh.truncate(size // 2)
    # Observed: Store.open refuses it ("damaged or not a database: ... malformed").
    with pytest.raises(StoreError, match="damaged or not a database"):
        Store.open(data_dir, readonly=True)
    with pytest.raises(StoreError, match="damaged or not a database"):
        Store.open(data_dir)
    assert db.stat().st_size == size // 2  # not "repaired" by overwriting
    detected, wrong = read_everything(data_dir, truth)
    assert detected
    assert wrong == []


def test_corrupt_page_in_the_middle(data_dir: Path) -> None:
    truth = many_rows_store(data_dir)
    db = data_dir / DB_NAME
    page = truth["page_size"]
    pages = db.stat().st_size // page
    assert pages > 20
    with db.open("r+b") as fh:
        fh.seek((pages // 2) * page)
        fh.write(np.random.default_rng(5).bytes(page))
    # Observed: opening works (page 1 is fine), integrity_check and reads touching the page
    # raise sqlite3.DatabaseError "database disk image is malformed"; no read returns wrong data.
    detected, wrong = read_everything(data_dir, truth)
    assert detected
    assert wrong == []
    with (
        Store.open(data_dir, readonly=True) as s,
        pytest.raises(sqlite3.DatabaseError, match="malformed"),
    ):
        s.vectors()


def test_corrupt_vector_bytes_are_not_returned_silently(data_dir: Path) -> None:
    truth = many_rows_store(data_dir)
    db = data_dir / DB_NAME
    raw = db.read_bytes()
    target = truth["matrix"][150 * DIM * 4 : 151 * DIM * 4]  # embedding row 150
    offset = raw.find(target)
    assert offset > 0
    with db.open("r+b") as fh:
        fh.seek(offset + 1024)
        fh.write(np.full(8, 3.0, "<f4").tobytes())  # finite, but the norm is no longer 1
    detected, wrong = read_everything(data_dir, truth)
    assert wrong == [] or detected, f"silently wrong: {wrong}"
    with Store.open(data_dir, readonly=True) as s, pytest.raises(StoreError):
        s.vectors()


@pytest.mark.parametrize("readonly", [False, True])
def test_newer_schema_refused(data_dir: Path, readonly: bool, rng: np.random.Generator) -> None:
    with Store.open(data_dir) as s:
        s.create_person("A", [emb(unit(rng))], pack=PACK, actor="t")
    conn = sqlite3.connect(data_dir / DB_NAME)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreError, match="newer than this facegate knows") as info:
        Store.open(data_dir, readonly=readonly)
    assert f"schema version {SCHEMA_VERSION + 1}" in str(info.value)
    assert "upgrade facegate" in str(info.value)
    conn = sqlite3.connect(data_dir / DB_NAME)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
    conn.close()


def test_empty_db_file_is_initialised(data_dir: Path) -> None:
    data_dir.mkdir(mode=0o700)
    (data_dir / DB_NAME).touch()
    with Store.open(data_dir) as s:
        assert s._conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert s.generation() == 0


# -- migration -------------------------------------------------------------------------------
def make_v1_db(data_dir: Path, vector: np.ndarray) -> None:
    data_dir.mkdir(mode=0o700)
    conn = sqlite3.connect(data_dir / DB_NAME, isolation_level=None)
    for statement in store_mod._statements(MIGRATIONS[1]):
        conn.execute(statement)
    conn.execute("PRAGMA user_version = 1")
    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    conn.execute("INSERT INTO meta VALUES ('model_pack', ?)", (PACK,))
    conn.execute("INSERT INTO meta VALUES ('embedding_dim', ?)", (str(DIM),))
    conn.execute("UPDATE meta SET value = '1' WHERE key = 'generation'")
    conn.execute(
        "INSERT INTO persons (id, name, created_at, updated_at) VALUES ('old1', 'Old Timer', 5, 6)"
    )
    conn.execute(
        "INSERT INTO embeddings (person_id, vector, pose, quality, source, created_at)"
        " VALUES ('old1', ?, 'left', 0.5, 'registration', 5)",
        (vector.tobytes(),),
    )
    conn.execute(
        "INSERT INTO audit (at, actor, action, person_id, detail) VALUES (5, 'v1', 'enrol',"
        " 'old1', '{}')"
    )
    conn.close()


def test_migration_from_v1_keeps_data(data_dir: Path, rng: np.random.Generator) -> None:
    assert SCHEMA_VERSION >= 2
    v = unit(rng)
    make_v1_db(data_dir, v)
    with Store.open(data_dir) as s:
        assert s._conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert s._conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        assert s._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        p = s.person("old1")
        assert (p.name, p.note, p.created_at, p.updated_at, p.embeddings, p.poses) == (
            "Old Timer",
            "",
            5.0,
            6.0,
            1,
            ["left"],
        )
        assert s.vectors().matrix[0].tobytes() == v.tobytes()
        assert s.generation() == 1
        assert s.model_pack() == PACK
        assert s.thumbnail("old1") is None
        s.add_embeddings("old1", [emb(unit(rng))], pack=PACK, actor="t", thumbnail=b"jpeg")
        assert s.thumbnail("old1") == b"jpeg"
        q, _ = s.create_person("New", [emb(unit(rng))], pack=PACK, actor="t", note="hello")
        assert s.person(q.id).note == "hello"
        assert s.integrity_check() == "ok"
        assert [e.action for e in reversed(s.audit())] == ["enrol", "add_embeddings", "enrol"]
    with Store.open(data_dir, readonly=True) as r:  # readable after migration
        assert r.person("old1").embeddings == 2


def test_v1_readonly_open_asks_for_a_writing_open(data_dir: Path, rng: np.random.Generator) -> None:
    make_v1_db(data_dir, unit(rng))
    before = (data_dir / DB_NAME).read_bytes()
    with pytest.raises(StoreError, match="schema version 1; open it once for writing"):
        Store.open(data_dir, readonly=True)
    assert (data_dir / DB_NAME).read_bytes() == before


# -- audit log -------------------------------------------------------------------------------


# -- readonly store --------------------------------------------------------------------------
def test_readonly_store_refuses_writes(data_dir: Path, rng: np.random.Generator) -> None:
    with Store.open(data_dir) as w:
        p, _ = w.create_person("A", [emb(unit(rng))], pack=PACK, actor="t")
        generation = w.generation()
    with Store.open(data_dir, readonly=True) as r:
        assert r.readonly
        writes: dict[str, Any] = {
            "create_person": lambda: r.create_person("B", [emb(unit(rng))], pack=PACK, actor="t"),
            "add_embeddings": lambda: r.add_embeddings(
                p.id, [emb(unit(rng))], pack=PACK, actor="t"
            ),
            "rename": lambda: r.rename(p.id, "C", actor="t"),
            "delete_person": lambda: r.delete_person(p.id, actor="t"),
            "record": lambda: r.record("t", "export"),
        }
        for name, write in writes.items():
            with pytest.raises(StoreError, match="read-only"):
                write()
                pytest.fail(f"{name} wrote through a read-only store")
        with pytest.raises(StoreError, match="read-only"), r.batch():
            pass
        assert [q.name for q in r.persons()] == ["A"]
        assert r.generation() == generation
        assert len(r.audit()) == 1
    with Store.open(data_dir) as w:
        assert w.person(p.id).name == "A"
        assert w.embedding_count() == 1
