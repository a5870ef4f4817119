"""One suite for both store backends: what a user relies on, whether the store is SQLite (the
default, a file in the gate's data directory) or PostgreSQL (a database several gates share).

Every test takes `backend`, a factory that opens a `Store` on SQLite (in tmp_path) or on a
fresh PostgreSQL database (`pg_url`, tests/postgres.py; skipped with a reason where PostgreSQL
is absent). Vectors are synthetic L2-normalised float32 512-d. What only SQLite has (its
pragmas, file permissions, read-only openers, damaged files) is in tests/test_store.py.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import sqlite3
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest

from facegate.identity import store_postgres, store_schema
from facegate.identity.store import (
    APPLICATION_ID,
    DB_NAME,
    MIGRATIONS,
    SCHEMA_VERSION,
    AuditEntry,
    GateActivity,
    LastSeen,
    LoggedEvent,
    Store,
    StoreError,
    UnknownPersonError,
)
from postgres import PostgresServer, free_port
from synthetic import FakeClock, emb, unit

PACK = "faceplugin"
DIM = 512
T0 = 1_700_000_000.0


# -- helpers ---------------------------------------------------------------------------------
class Backend:
    """Opens stores of one backend; every store it opened is closed after the test."""

    def __init__(self, kind: str, tmp_path: Path, url: str, server: PostgresServer | None):
        self.kind = kind
        self.tmp_path = tmp_path
        self.url = url
        self.server = server
        self.opened: list[Store] = []

    def __call__(
        self,
        data_dir: Path | None = None,
        *,
        gate: str = "a",
        clock: Callable[[], float] | None = None,
    ) -> Store:
        store = Store.open(
            data_dir or self.tmp_path / "data",
            url=self.url,
            gate=gate,
            clock=clock or FakeClock(),
        )
        self.opened.append(store)
        return store

    def close_all(self) -> None:
        for store in self.opened:
            store.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "postgresql":
        url: str = request.getfixturevalue("pg_url")
        server: PostgresServer | None = request.getfixturevalue("pg_server")
    else:
        url, server = "", None
    opener = Backend(request.param, tmp_path, url, server)
    yield opener
    opener.close_all()


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20240611)


def count(store: Store, table: str, where: str = "", params: tuple[Any, ...] = ()) -> int:
    sql = f"SELECT count(*) FROM {table}" + (f" WHERE {where}" if where else "")
    return int(store._db.query(sql, params)[0][0])


def table_counts(store: Store) -> dict[str, int]:
    return {t: count(store, t) for t in ("persons", "embeddings", "thumbnails", "audit", "events")}


def db_name(url: str) -> str:
    return url.split("?", maxsplit=1)[0].rsplit("/", 1)[1]


# -- persons ---------------------------------------------------------------------------------
def test_backend_is_the_one_asked_for(backend: Backend) -> None:
    store = backend()
    assert store.kind == backend.kind
    assert store.shared == (backend.kind == "postgresql")
    assert store.generation() == 0
    assert store.persons() == []
    assert store.model_pack() is None and store.dim() is None
    assert store.integrity_check() == "ok"


def test_create_person_and_read_it_back(backend: Backend, rng: np.random.Generator) -> None:
    store = backend()
    vecs = [unit(rng) for _ in range(3)]
    thumb = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4
    person, ids = store.create_person(
        "  Ada    Lovelace ",
        [
            emb(vecs[0], "front", 0.91, "photo"),
            emb(vecs[1], "left", 0.52, "registration"),
            emb(vecs[2], "right", 0.77, "registration"),
        ],
        pack=PACK,
        actor="tester",
        thumbnail=thumb,
        note="n1",
    )
    assert (person.name, person.note, person.embeddings) == ("Ada Lovelace", "n1", 3)
    assert person.poses == ["front", "left", "right"]
    assert person.created_at == person.updated_at
    assert len(set(ids)) == 3 and ids == sorted(ids)
    assert store.person(person.id) == person
    assert store.find_person(person.id) == person
    assert store.persons() == [person]
    infos = store.embeddings_of(person.id)
    assert [i.id for i in infos] == ids
    assert [(i.pose, i.source) for i in infos] == [
        ("front", "photo"),
        ("left", "registration"),
        ("right", "registration"),
    ]
    assert [i.quality for i in infos] == pytest.approx([0.91, 0.52, 0.77])
    assert store.thumbnail(person.id) == thumb
    assert (store.model_pack(), store.dim(), store.embedding_count()) == (PACK, DIM, 3)


def test_persons_are_listed_in_creation_order(backend: Backend, rng: np.random.Generator) -> None:
    store = backend()
    made = []
    for name in ["Zoe", "Adam", "Mia", "Bo"]:  # not alphabetical: the order is creation's
        p, _ = store.create_person(name, [emb(unit(rng))], pack=PACK, actor="t")
        made.append(p)
    listed = store.persons()
    assert [p.name for p in listed] == ["Zoe", "Adam", "Mia", "Bo"]
    assert listed == made
    assert [p.created_at for p in listed] == sorted(p.created_at for p in listed)


def test_persons_created_at_the_same_time_keep_a_stable_order(
    backend: Backend, rng: np.random.Generator
) -> None:
    store = backend(clock=lambda: T0)  # every timestamp equal: ties broken by id
    for name in ["C", "A", "B"]:
        store.create_person(name, [emb(unit(rng))], pack=PACK, actor="t")
    listed = store.persons()
    assert [p.id for p in listed] == sorted(p.id for p in listed)
    assert listed == store.persons()


def test_unknown_person_raises(backend: Backend, rng: np.random.Generator) -> None:
    store = backend()
    store.create_person("Someone", [emb(unit(rng))], pack=PACK, actor="t")
    before = (store.generation(), table_counts(store))
    calls: dict[str, Callable[[], object]] = {
        "person": lambda: store.person("nobody"),
        "rename": lambda: store.rename("nobody", "X", actor="t"),
        "delete_person": lambda: store.delete_person("nobody", actor="t"),
        "add_embeddings": lambda: store.add_embeddings(
            "nobody", [emb(unit(rng))], pack=PACK, actor="t"
        ),
        "thumbnail": lambda: store.thumbnail("nobody"),
        "embeddings_of": lambda: store.embeddings_of("nobody"),
    }
    for name, call in calls.items():
        with pytest.raises(UnknownPersonError) as info:
            call()
            pytest.fail(f"{name} of an unknown person did not raise")
        assert isinstance(info.value, KeyError) and isinstance(info.value, StoreError)
        assert info.value.person_id == "nobody"
        assert str(info.value) == "no person with id 'nobody'"
        assert (store.generation(), table_counts(store)) == before, name
    assert store.find_person("nobody") is None


BAD_NAMES = [
    ("", "empty"),
    ("   ", "empty"),
    ("Ada\nLovelace", "control character"),
    ("A\u202eB", "format character"),
    ("x" * 201, "this one has 201"),
]


def test_names_are_validated(backend: Backend, rng: np.random.Generator) -> None:
    store = backend()
    for name, why in BAD_NAMES:
        with pytest.raises(StoreError, match=why):
            store.create_person(name, [emb(unit(rng))], pack=PACK, actor="t")
    assert table_counts(store) == dict.fromkeys(table_counts(store), 0)
    assert store.generation() == 0
    p, _ = store.create_person("Ada", [emb(unit(rng))], pack=PACK, actor="t")
    for name, why in BAD_NAMES:
        with pytest.raises(StoreError, match=why):
            store.rename(p.id, name, actor="t")
        with pytest.raises(StoreError, match=why), store.batch() as batch:
            batch.create_person("b1", name, "", 1.0, [emb(unit(rng))], pack=PACK, thumbnail=None)
    assert store.persons() == [p]
    assert store.generation() == 1
    assert len(store.audit()) == 1


def test_names_are_stored_in_their_clean_form(backend: Backend, rng: np.random.Generator) -> None:
    store = backend()
    decomposed = "Zoe\u0301 \u00a0  O\u2019Brien  "  # e + combining acute, no-break space
    p, _ = store.create_person(decomposed, [emb(unit(rng))], pack=PACK, actor="t")
    assert p.name == "Zo\u00e9 O\u2019Brien"  # NFC, white space collapsed, trimmed
    renamed = store.rename(p.id, "  \u738b\u5c0f\u660e  \U0001f600 ", actor="t")
    assert renamed.name == "\u738b\u5c0f\u660e \U0001f600"
    assert store.person(p.id).name == renamed.name
    assert renamed.updated_at > p.updated_at
    long, _ = store.create_person("x" * 200, [emb(unit(rng))], pack=PACK, actor="t")
    assert len(store.person(long.id).name) == 200


# -- embeddings ------------------------------------------------------------------------------
def test_add_embeddings(backend: Backend, rng: np.random.Generator) -> None:
    store = backend()
    p, first = store.create_person("Ada", [emb(unit(rng), "front")], pack=PACK, actor="t")
    q, other = store.create_person("Bob", [emb(unit(rng))], pack=PACK, actor="t")
    more = store.add_embeddings(
        p.id, [emb(unit(rng), "left"), emb(unit(rng), "left")], pack=PACK, actor="t"
    )
    assert len(more) == 2 and min(more) > max(first + other)  # row ids only grow
    after = store.person(p.id)
    assert after.embeddings == 3
    assert after.poses == ["front", "left"]
    assert after.updated_at > p.updated_at and after.created_at == p.created_at
    assert [e.id for e in store.embeddings_of(p.id)] == first + more
    assert store.person(q.id) == q
    assert store.vectors().person_ids == [p.id, q.id, p.id, p.id]
    with pytest.raises(StoreError, match="no embeddings"):
        store.add_embeddings(p.id, [], pack=PACK, actor="t")


def test_vectors_round_trip_bit_exact(backend: Backend, rng: np.random.Generator) -> None:
    store = backend()
    plain = unit(rng)
    odd = unit(rng)
    odd[5] = np.float32(-0.0)  # a negative zero, a subnormal and a tiny value: exact bytes
    odd[6] = np.float32(1e-40)
    odd[7] = np.float32(np.nextafter(np.float32(0), np.float32(1)))
    big_endian = unit(rng).astype(">f4")  # stored as little-endian float32 whatever the input
    a, ids_a = store.create_person("A", [emb(plain), emb(odd)], pack=PACK, actor="t")
    b, ids_b = store.create_person("B", [emb(big_endian)], pack=PACK, actor="t")
    vs = store.vectors()
    assert vs.ids.tolist() == ids_a + ids_b
    assert vs.person_ids == [a.id, a.id, b.id]
    assert vs.matrix.dtype == np.float32 and vs.matrix.shape == (3, DIM)
    expected = [plain, odd, big_endian.astype("<f4")]
    for row, v in zip(vs.matrix, expected, strict=True):
        assert row.tobytes() == v.astype("<f4").tobytes()
    assert np.signbit(vs.matrix[1, 5]) and vs.matrix[1, 6] == np.float32(1e-40)
    one = store.vectors(b.id)
    assert one.ids.tolist() == ids_b
    assert one.matrix[0].tobytes() == big_endian.astype("<f4").tobytes()
    raw = store._db.query("SELECT vector FROM embeddings WHERE id = ?", (ids_a[1],))[0][0]
    assert bytes(raw) == odd.astype("<f4").tobytes()


def _bad(rng: np.random.Generator, case: str) -> list[np.ndarray]:
    nan = unit(rng)
    nan[3] = np.nan
    return {
        "wrong_dim_inside": [unit(rng), unit(rng, 256)],
        "norm_2": [unit(rng) * np.float32(2.0)],
        "norm_0.99": [unit(rng), unit(rng), unit(rng) * np.float32(0.99)],
        "zero": [np.zeros(DIM, np.float32)],
        "nan": [nan],
    }[case]


def test_bad_vectors_refused_and_nothing_written(
    backend: Backend, rng: np.random.Generator
) -> None:
    store = backend()
    cases = ["wrong_dim_inside", "norm_2", "norm_0.99", "zero", "nan"]
    refused = r"dimensions|non-finite|not L2-normalised"
    for case in cases:
        with pytest.raises(StoreError, match=refused):
            store.create_person(
                "Ada", [emb(v) for v in _bad(rng, case)], pack=PACK, actor="t", thumbnail=b"jpg"
            )
            pytest.fail(case)
        assert table_counts(store) == dict.fromkeys(table_counts(store), 0), case
        assert store.generation() == 0
        assert (store.model_pack(), store.dim()) == (None, None)  # not stamped by a failure
    p, _ = store.create_person("Ada", [emb(unit(rng))], pack=PACK, actor="t")
    before = (store.generation(), table_counts(store))
    for case in cases:
        with pytest.raises(StoreError, match=refused + "|mixed"):
            store.add_embeddings(
                p.id, [emb(v) for v in _bad(rng, case)], pack=PACK, actor="t", thumbnail=b"new"
            )
            pytest.fail(case)
        assert (store.generation(), table_counts(store)) == before, case
    assert store.thumbnail(p.id) is None


def test_other_dimensions_and_model_packs_are_refused(
    backend: Backend, rng: np.random.Generator
) -> None:
    store = backend()
    p, _ = store.create_person("Ada", [emb(unit(rng))], pack=PACK, actor="t")
    before = (store.generation(), table_counts(store))
    attempts: list[Callable[[], object]] = [
        lambda: store.create_person("Bob", [emb(unit(rng, 256))], pack=PACK, actor="t"),
        lambda: store.add_embeddings(p.id, [emb(unit(rng, 128))], pack=PACK, actor="t"),
        lambda: store.create_person("Bob", [emb(unit(rng))], pack="buffalo_l", actor="t"),
        lambda: store.add_embeddings(p.id, [emb(unit(rng))], pack="buffalo_l", actor="t"),
    ]
    for attempt in attempts:
        with pytest.raises(StoreError, match="cannot be mixed") as info:
            attempt()
        assert PACK in str(info.value)
    assert (store.generation(), table_counts(store)) == before
    assert (store.model_pack(), store.dim()) == (PACK, DIM)
    assert [q.id for q in store.persons()] == [p.id]


# -- thumbnails ------------------------------------------------------------------------------
def test_thumbnails_set_replace_and_none(backend: Backend, rng: np.random.Generator) -> None:
    store = backend()
    jpeg = bytes(range(256)) * 40  # binary, with NULs, 10 KiB
    p, _ = store.create_person("Ada", [emb(unit(rng))], pack=PACK, actor="t", thumbnail=jpeg)
    q, _ = store.create_person("Bob", [emb(unit(rng))], pack=PACK, actor="t")
    assert store.thumbnail(p.id) == jpeg
    assert store.thumbnail(q.id) is None
    store.add_embeddings(p.id, [emb(unit(rng))], pack=PACK, actor="t")  # None: kept
    assert store.thumbnail(p.id) == jpeg
    store.add_embeddings(p.id, [emb(unit(rng))], pack=PACK, actor="t", thumbnail=b"\x00second")
    assert store.thumbnail(p.id) == b"\x00second"
    store.add_embeddings(q.id, [emb(unit(rng))], pack=PACK, actor="t", thumbnail=b"bob")
    assert store.thumbnail(q.id) == b"bob"
    assert count(store, "thumbnails") == 2  # replaced in place, one per person


# -- audit -----------------------------------------------------------------------------------
def test_audit_records_who_did_what_never_vectors_or_names(
    backend: Backend, rng: np.random.Generator
) -> None:
    store = backend()
    v1, v2, v3 = unit(rng), unit(rng), unit(rng)
    p, _ = store.create_person(
        "Secret Name",
        [emb(v1), emb(v2, source="registration")],
        pack=PACK,
        actor="alice",
        thumbnail=b"THUMBNAIL-BYTES",
    )
    store.rename(p.id, "Other Secret", actor="bob")
    store.add_embeddings(p.id, [emb(v3)], pack=PACK, actor="carol")
    store.delete_person(p.id, actor="dave")
    store.record("erin", "export", None, persons=0)
    entries = list(reversed(store.audit()))
    assert [(e.action, e.actor, e.person_id) for e in entries] == [
        ("enrol", "alice", p.id),
        ("rename", "bob", p.id),
        ("add_embeddings", "carol", p.id),
        ("delete", "dave", p.id),
        ("export", "erin", None),
    ]
    assert all(isinstance(e, AuditEntry) for e in entries)
    assert entries[0].detail == {"embeddings": 2, "sources": ["photo", "registration"]}
    assert entries[1].detail == {}
    assert entries[2].detail == {"embeddings": 1}
    assert entries[3].detail == {"embeddings": 3}
    assert [e.at for e in entries] == sorted(e.at for e in entries)
    assert store.audit(limit=2) == list(reversed(entries))[:2]
    rows = store._db.query("SELECT id, at, actor, action, person_id, detail FROM audit")
    assert len(rows) == 5
    for row in rows:
        assert not any(isinstance(c, bytes | memoryview) for c in row)
        assert set(json.loads(row[5])) <= {"embeddings", "sources", "persons"}
    text = json.dumps([[str(c) for c in r] for r in rows])
    for secret in ["Secret", "Name", "THUMBNAIL"]:
        assert secret not in text
    for v in (v1, v2, v3):
        assert v.tobytes().hex() not in text
        assert repr(float(v[0]))[:8] not in text


def test_prune_audit_by_age_and_by_count(backend: Backend, rng: np.random.Generator) -> None:
    clock = FakeClock()
    store = backend(clock=clock)
    for i in range(6):
        store.record("t", "export", None, n=i)
    ats = sorted(e.at for e in store.audit())
    assert len(ats) == 6
    # The next clock reading is now + 1: keep entries from ats[3] on.
    retention = (clock.now + 1.0) - ats[3] + 0.5
    assert store.prune_audit(retention_seconds=retention, max_rows=100) == 3
    assert sorted(e.at for e in store.audit()) == ats[3:]
    assert store.prune_audit(retention_seconds=1e9, max_rows=2) == 1
    assert [e.detail["n"] for e in store.audit()] == [5, 4]  # the newest two
    assert store.prune_audit(retention_seconds=1e9, max_rows=2) == 0
    assert store.prune_audit(retention_seconds=1e9, max_rows=0) == 2
    assert store.audit() == []
    assert store.generation() == 0  # the audit is not the gallery


# -- event history ---------------------------------------------------------------------------
def ev(gate: str, seq: int, at: float, type_: str = "system_ready", person: str | None = None):
    return LoggedEvent(
        seq=seq, at=at, type=type_, person_id=person, data=json.dumps({"n": seq}), gate=gate
    )


RET = 1e9  # a retention that keeps everything


def test_events_per_gate_and_across_gates(backend: Backend) -> None:
    store = backend()
    a = [ev("a", s, T0 + 10 * s) for s in range(1, 6)]  # a1..a5 at T0+10..T0+50
    b = [ev("b", s, T0 + 10 * s + 5, "person_recognized", "p1") for s in range(1, 4)]
    store.log_events([*a, *b], retention_seconds=RET, max_rows=100)
    # One gate's: after `since`, oldest first; before `before`, newest first.
    assert store.events(gate="a") == a
    assert store.events(gate="a", since=2) == a[2:]
    assert store.events(gate="a", since=2, limit=2) == a[2:4]
    assert store.events(gate="a", before=4) == [a[2], a[1], a[0]]
    assert store.events(gate="a", before=4, limit=1) == [a[2]]
    assert store.events(gate="b") == b
    assert store.events(gate="nobody") == []
    # Every gate's: newest first by time, older than `until`.
    every = store.events(gate=None)
    assert [(e.gate, e.seq) for e in every] == [
        ("a", 5),
        ("a", 4),
        ("b", 3),
        ("a", 3),
        ("b", 2),
        ("a", 2),
        ("b", 1),
        ("a", 1),
    ]
    assert store.events() == every
    assert store.events(gate=None, until=T0 + 25) == [a[1], b[0], a[0]]  # before, not at
    assert store.events(gate=None, until=T0 + 25.5, limit=2) == [b[1], a[1]]
    with pytest.raises(ValueError, match="name the gate"):
        store.events(since=2)
    with pytest.raises(ValueError, match="name the gate"):
        store.events(before=3)
    # Filters.
    assert store.events(types=["person_recognized"]) == list(reversed(b))
    assert store.events(gate="a", types=["person_recognized"]) == []
    assert store.events(types=["person_recognized", "system_ready"]) == every
    assert store.events(person_id="p1", gate="b", since=1) == b[1:]
    assert store.events(person_id="nobody") == []
    # Values are bound, never spliced into the SQL.
    assert store.events(types=["x' OR '1'='1"], gate="a' OR '1'='1") == []
    assert store.gates() == [
        GateActivity("a", 5, T0 + 50),
        GateActivity("b", 3, T0 + 35),
    ]
    assert store.last_event_seq("a") == 5
    assert store.last_event_seq("b") == 3
    assert store.last_event_seq("nobody") == 0
    assert store.last_event_seq() == 5
    assert store.generation() == 0  # history is not the gallery


def test_an_event_logged_again_replaces_the_first(backend: Backend) -> None:
    store = backend()
    store.log_events([ev("a", 1, T0), ev("a", 2, T0 + 1)], retention_seconds=RET, max_rows=10)
    again = LoggedEvent(2, T0 + 2, "person_recognized", "p9", '{"again": true}', "a")
    store.log_events([again], retention_seconds=RET, max_rows=10)
    assert store.events(gate="a") == [ev("a", 1, T0), again]
    store.log_events([], retention_seconds=0, max_rows=0)  # nothing to log: nothing pruned
    assert count(store, "events") == 2


def test_event_retention_and_max_rows_per_gate(backend: Backend) -> None:
    clock = FakeClock()
    store = backend(clock=clock)
    now = clock.now
    old = [ev("a", 1, now - 500), ev("b", 1, now - 500)]
    store.log_events(old, retention_seconds=RET, max_rows=100)
    recent_a = [ev("a", s, now + s) for s in range(2, 7)]  # a2..a6
    recent_b = [ev("b", s, now + s) for s in range(2, 5)]  # b2..b4
    # Logging at gate a prunes everyone's old events, but a's row limit only at a.
    store.log_events(recent_a, retention_seconds=100, max_rows=100)
    assert [e.seq for e in store.events(gate="b")] == []
    store.log_events(recent_b, retention_seconds=100, max_rows=100)
    assert [e.seq for e in store.events(gate="a")] == [2, 3, 4, 5, 6]
    store.log_events([ev("a", 7, now + 7)], retention_seconds=100, max_rows=3)
    assert [e.seq for e in store.events(gate="a")] == [5, 6, 7]  # the newest 3 of a
    assert [e.seq for e in store.events(gate="b")] == [2, 3, 4]  # b untouched
    store.log_events([ev("b", 5, now + 8)], retention_seconds=100, max_rows=1)
    assert [e.seq for e in store.events(gate="b")] == [5]
    assert [e.seq for e in store.events(gate="a")] == [5, 6, 7]


def test_last_seen_is_the_latest_recognition_at_any_gate(backend: Backend) -> None:
    store = backend()
    rows = [
        ev("a", 1, T0 + 1, "person_recognized", "p1"),
        ev("b", 1, T0 + 5, "person_recognized", "p1"),
        ev("a", 2, T0 + 9, "unknown_face", "p1"),  # not a recognition
        ev("a", 3, T0 + 3, "person_recognized", "p2"),
        ev("c", 1, T0 + 4, "person_recognized", "p1"),
    ]
    store.log_events(rows, retention_seconds=RET, max_rows=100)
    seen = store.last_seen("p1")
    assert seen == LastSeen(T0 + 5, "b")
    assert isinstance(seen, LastSeen)
    assert store.last_seen("p2") == LastSeen(T0 + 3, "a")
    assert store.last_seen("nobody") is None
    assert [g.gate for g in store.gates()] == ["a", "b", "c"]


# -- generation ------------------------------------------------------------------------------
def test_generation_one_step_per_transaction(backend: Backend, rng: np.random.Generator) -> None:
    store = backend()
    assert store.generation() == 0
    p, _ = store.create_person("A", [emb(unit(rng)), emb(unit(rng))], pack=PACK, actor="t")
    assert store.generation() == 1
    store.add_embeddings(p.id, [emb(unit(rng))], pack=PACK, actor="t")
    assert store.generation() == 2
    store.rename(p.id, "B", actor="t")
    assert store.generation() == 3  # a name is part of the gallery other gates follow
    store.record("t", "export")
    store.log_events([ev("a", 1, T0)], retention_seconds=RET, max_rows=10)
    store.prune_audit(retention_seconds=RET, max_rows=100)
    assert store.generation() == 3  # audit and history alone are not
    with store.batch() as batch:  # two persons, one transaction: one step
        batch.create_person("x1", "X1", "", 1.0, [emb(unit(rng))], pack=PACK, thumbnail=None)
        batch.create_person("x2", "X2", "", 2.0, [emb(unit(rng))], pack=PACK, thumbnail=None)
    assert store.generation() == 4
    with pytest.raises(StoreError):
        store.create_person("C", [emb(unit(rng) * 2)], pack=PACK, actor="t")
    with pytest.raises(UnknownPersonError):
        store.rename("nobody", "D", actor="t")
    assert store.generation() == 4  # refused writes are not steps
    store.delete_person("x1", actor="t")
    assert store.generation() == 5
    store.delete_person(p.id, actor="t")
    assert store.generation() == 6
    with store.enrolling():
        pass  # leaving without creating writes nothing
    assert store.generation() == 6


# -- erasure ---------------------------------------------------------------------------------
def _probes(data: bytes) -> list[bytes]:
    """Pieces of a 2048-byte vector that every stored copy holds whole (in SQLite's pages and
    in PostgreSQL's heap or TOAST chunks of 1996 + 52 bytes)."""
    return [data[:32], data[1000:1032], data[-32:]]


class DiskScan:
    """The files a backend keeps a store's data in, and which of some byte strings they hold."""

    def __init__(self, backend: Backend, store: Store) -> None:
        self.backend = backend
        self.store = store
        if backend.kind == "postgresql":
            assert backend.server is not None
            oid = store._db.query("SELECT oid FROM pg_database WHERE datname = current_database()")
            self.folder = backend.server.data_dir / "base" / str(oid[0][0])
        else:
            self.folder = store.data_dir

    def flush(self) -> None:
        if self.backend.kind == "postgresql":
            assert self.backend.server is not None
            admin = self.backend.server.admin_url(db_name(self.backend.url))
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute("CHECKPOINT")

    def holding(self, needle: bytes) -> list[str]:
        self.flush()
        return sorted(
            str(p.relative_to(self.folder))
            for p in self.folder.rglob("*")
            if p.is_file() and needle in p.read_bytes()
        )

    def vector_found(self, vector: np.ndarray) -> bool:
        self.flush()
        blobs = [p.read_bytes() for p in self.folder.rglob("*") if p.is_file()]
        data = vector.astype("<f4").tobytes()
        return any(probe in blob for blob in blobs for probe in _probes(data))


def test_erasure_removes_the_person_and_their_bytes(
    backend: Backend, rng: np.random.Generator
) -> None:
    store = backend()
    a_vecs = [unit(rng) for _ in range(3)]
    b_vecs = [unit(rng) for _ in range(2)]
    a, a_ids = store.create_person(
        "Zebulon Erasable",
        [emb(v) for v in a_vecs],
        pack=PACK,
        actor="t",
        thumbnail=b"THUMB-OF-ZEBULON" * 8,
    )
    b, b_ids = store.create_person(
        "Kept Person", [emb(v) for v in b_vecs], pack=PACK, actor="t", thumbnail=b"THUMB-KEPT" * 8
    )
    added = store.add_embeddings(a.id, [emb(a_vecs[0], "left")], pack=PACK, actor="t")
    store.log_events(
        [
            ev("a", 1, T0 + 1, "person_recognized", a.id),
            ev("b", 1, T0 + 2, "person_recognized", b.id),
            ev("a", 2, T0 + 3, "person_recognized", a.id),
            LoggedEvent(3, T0 + 4, "note", a.id, '{"marker": "EVENT-OF-ZEBULON"}', "a"),
            ev("a", 4, T0 + 5),
        ],
        retention_seconds=RET,
        max_rows=100,
    )
    scan = DiskScan(backend, store)
    assert all(scan.vector_found(v) for v in a_vecs)  # the scan finds them while they exist
    assert scan.holding(b"THUMB-OF-ZEBULON") != []

    removed = store.delete_person(a.id, actor="t")
    assert sorted(removed) == sorted(a_ids + added)
    assert store.erasure_pending is False
    with pytest.raises(UnknownPersonError):
        store.person(a.id)
    with pytest.raises(UnknownPersonError):
        store.thumbnail(a.id)
    assert count(store, "embeddings", "person_id = ?", (a.id,)) == 0
    assert count(store, "thumbnails", "person_id = ?", (a.id,)) == 0
    assert store.events(person_id=a.id) == []
    assert store.last_seen(a.id) is None
    # the others are untouched, their history and the person-less events too
    assert store.persons() == [b]
    assert store.vectors().ids.tolist() == b_ids
    assert store.thumbnail(b.id) == b"THUMB-KEPT" * 8
    assert [(e.gate, e.seq) for e in store.events()] == [("a", 4), ("b", 1)]
    assert store.last_seen(b.id) == LastSeen(T0 + 2, "b")
    assert store.audit(limit=1)[0].action == "delete"
    # ... and their bytes left the files
    for v in a_vecs:
        assert not scan.vector_found(v), "an erased vector is still on disk"
    for needle in (b"THUMB-OF-ZEBULON", b"Zebulon Erasable", b"EVENT-OF-ZEBULON"):
        assert scan.holding(needle) == [], f"{needle!r} is still on disk"
    assert all(scan.vector_found(v) for v in b_vecs)  # so the scan can fail
    assert scan.holding(b"Kept Person") != []
    # later writes bring nothing back
    store.rename(b.id, "Renamed", actor="t")
    store.close()
    for v in a_vecs:
        assert not scan.vector_found(v)


def test_postgres_erasure_leaves_no_name_in_the_planner_statistics(
    pg_server: PostgresServer, pg_url: str, tmp_path: Path, rng: np.random.Generator
) -> None:
    """PostgreSQL's ANALYZE, which autovacuum runs by itself once enough rows of a table
    changed, copies sample values of each column (up to 1 kB each: names, ids, small
    thumbnails; not the 2 kB vectors) into pg_statistic, a table in the database's own
    files that the erasure's VACUUM (FULL) of the store's tables does not touch. An erased
    person's name must not stay there (readable in pg_stats, and on disk)."""
    backend = Backend("postgresql", tmp_path, pg_url, pg_server)
    try:
        store = backend()
        vectors = [unit(rng) for _ in range(30)]
        persons = [
            store.create_person(f"Person {i:02d} Quixote", [emb(v)], pack=PACK, actor="t")[0]
            for i, v in enumerate(vectors)
        ]
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute("ANALYZE")  # what autovacuum does on its own, sooner or later
        gone = persons[5]
        store.delete_person(gone.id, actor="t")
        scan = DiskScan(backend, store)
        assert not scan.vector_found(vectors[5])
        assert scan.vector_found(vectors[6])
        stats = store._db.query(
            "SELECT attname, most_common_vals::text, histogram_bounds::text FROM pg_stats"
            " WHERE schemaname = current_schema() AND tablename = 'persons'"
        )
        # ANALYZE ran (the times have statistics), but no column that names a person does:
        # without `SET STATISTICS 0` on them, every name here is in pg_stats.
        assert "1700000001" in str(stats)
        assert "Quixote" not in str(stats), "names are kept in pg_stats"
        assert scan.holding(b"Person 05 Quixote") == [], "an erased name is still on disk"
    finally:
        backend.close_all()


# -- atomicity -------------------------------------------------------------------------------
class BoomError(Exception):
    pass


def test_an_exception_inside_batch_leaves_nothing(
    backend: Backend, rng: np.random.Generator
) -> None:
    store = backend()
    kept, _ = store.create_person("Kept", [emb(unit(rng))], pack=PACK, actor="t", thumbnail=b"k")
    before = (store.generation(), table_counts(store), store.model_pack())
    with pytest.raises(BoomError), store.batch() as batch:
        batch.create_person("p1", "One", "", 1.0, [emb(unit(rng))], pack=PACK, thumbnail=b"x")
        batch.create_person("p2", "Two", "", 2.0, [emb(unit(rng))] * 2, pack=PACK, thumbnail=None)
        batch.audit("importer", "import", None, persons=2)
        raise BoomError
    assert (store.generation(), table_counts(store), store.model_pack()) == before
    assert store.persons() == [kept]
    with pytest.raises(StoreError, match="already exists"), store.batch() as batch:
        batch.create_person("p1", "One", "", 1.0, [emb(unit(rng))], pack=PACK, thumbnail=b"x")
        batch.create_person(kept.id, "Two", "", 1.0, [emb(unit(rng))], pack=PACK, thumbnail=None)
    assert (store.generation(), table_counts(store)) == (before[0], before[1])
    with store.batch() as batch:
        batch.create_person("p1", " One ", "n", 1.0, [emb(unit(rng))], pack=PACK, thumbnail=b"x")
    assert [(p.id, p.name, p.note, p.created_at) for p in store.persons()] == [
        ("p1", "One", "n", 1.0),
        (kept.id, "Kept", "", kept.created_at),
    ]


def test_an_exception_inside_enrolling_leaves_nothing(
    backend: Backend, rng: np.random.Generator
) -> None:
    store = backend()
    kept, kept_ids = store.create_person("Kept", [emb(unit(rng))], pack=PACK, actor="t")
    before = (store.generation(), table_counts(store))
    with pytest.raises(BoomError), store.enrolling() as enrolment:
        assert enrolment.vectors_after(0).ids.tolist() == kept_ids
        assert enrolment.vectors_after(max(kept_ids)).ids.tolist() == []
        assert enrolment.names([kept.id, "nobody"]) == {kept.id: "Kept"}
        pid, _ = enrolment.create_person(
            "Ghost", [emb(unit(rng))], pack=PACK, actor="t", thumbnail=b"g"
        )
        raise BoomError
    assert (store.generation(), table_counts(store)) == before
    assert store.find_person(pid) is None
    # the store is usable afterwards, and the same id can be taken
    with store.enrolling() as enrolment:
        again, _ = enrolment.create_person(
            "Real", [emb(unit(rng))], pack=PACK, actor="t", person_id=pid
        )
    assert again == pid and store.person(pid).name == "Real"
    assert store.generation() == before[0] + 1


def test_a_failure_midway_through_a_creation_leaves_nothing(
    backend: Backend, rng: np.random.Generator
) -> None:
    store = backend()
    store.create_person("Other", [emb(unit(rng))], pack=PACK, actor="t", thumbnail=b"o")
    before = (store.generation(), table_counts(store))
    items = [emb(unit(rng)) for _ in range(5)]
    items[3] = emb(unit(rng) * np.float32(1.5))  # the 4th of 5, after three were inserted
    with pytest.raises(StoreError, match="not L2-normalised"):
        store.create_person("Ada", items, pack=PACK, actor="t", thumbnail=b"t", person_id="ada")
    assert (store.generation(), table_counts(store)) == before
    assert store.find_person("ada") is None


# -- migrations ------------------------------------------------------------------------------
def schema_of(backend: Backend, store: Store) -> list[tuple[Any, ...]]:
    if backend.kind == "postgresql":
        return store._db.query(
            "SELECT table_name, column_name, data_type, is_nullable FROM"
            " information_schema.columns WHERE table_schema = current_schema()"
            " ORDER BY table_name, ordinal_position"
        )
    return store._db.query("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY name")


def schema_version(backend: Backend, store: Store) -> int:
    if backend.kind == "postgresql":
        rows = store._db.query("SELECT version FROM facegate_schema")
        assert len(rows) == 1
        return int(rows[0][0])
    return int(store._db.query("PRAGMA user_version")[0][0])


def test_an_empty_database_opens_at_the_newest_schema_and_reopening_changes_nothing(
    backend: Backend, rng: np.random.Generator
) -> None:
    newest = store_schema.PG_SCHEMA_VERSION if backend.kind == "postgresql" else SCHEMA_VERSION
    store = backend()
    assert schema_version(backend, store) == newest
    if backend.kind == "sqlite":
        assert store._db.query("PRAGMA application_id")[0][0] == APPLICATION_ID
    tables = {r[0] for r in schema_of(backend, store)} | {r[2] for r in schema_of(backend, store)}
    assert {"meta", "persons", "embeddings", "thumbnails", "audit", "events"} <= tables
    p, _ = store.create_person("Ada", [emb(unit(rng))], pack=PACK, actor="t")
    schema = schema_of(backend, store)
    state = (store.generation(), table_counts(store), store.persons())
    store.close()
    again = backend()
    assert schema_version(backend, again) == newest
    assert schema_of(backend, again) == schema
    assert (again.generation(), table_counts(again), again.persons()) == state
    assert again.person(p.id).name == "Ada"


def test_postgres_database_of_another_program_is_refused_untouched(
    backend: Backend, rng: np.random.Generator
) -> None:
    if backend.kind != "postgresql":
        pytest.skip("SQLite's foreign files: tests/test_store.py")
    with psycopg.connect(backend.url, autocommit=True) as conn:
        conn.execute("CREATE TABLE persons (id int PRIMARY KEY, name text)")
        conn.execute("INSERT INTO persons VALUES (1, 'theirs')")
    with pytest.raises(StoreError, match="another program") as info:
        backend()
    assert "refusing" in str(info.value)
    with psycopg.connect(backend.url) as conn:
        tables = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename"
        ).fetchall()
        rows = conn.execute("SELECT * FROM persons").fetchall()
    assert tables == [("persons",)]
    assert rows == [(1, "theirs")]


def test_postgres_newer_schema_is_refused(backend: Backend, rng: np.random.Generator) -> None:
    if backend.kind != "postgresql":
        pytest.skip("SQLite's newer schema: tests/test_store.py")
    store = backend()
    store.create_person("Ada", [emb(unit(rng))], pack=PACK, actor="t")
    store.close()
    newer = store_schema.PG_SCHEMA_VERSION + 1
    with psycopg.connect(backend.url, autocommit=True) as conn:
        conn.execute("UPDATE facegate_schema SET version = %s", (newer,))
    with pytest.raises(StoreError, match=f"schema version {newer}, newer"):
        backend(backend.tmp_path / "other")
    with psycopg.connect(backend.url) as conn:
        assert conn.execute("SELECT version FROM facegate_schema").fetchall() == [(newer,)]
        assert conn.execute("SELECT name FROM persons").fetchall() == [("Ada",)]


def _open_at_the_same_moment(url: str, data_dir: str, barrier: Any, out: str) -> None:
    """In a spawned process: open the store at `url` at the barrier, then report."""
    try:
        barrier.wait(timeout=60)
        with Store.open(Path(data_dir), url=url, gate=Path(data_dir).name) as store:
            result = {"ok": True, "generation": store.generation()}
    except BaseException:  # reported to the test, which fails on it
        result = {"ok": False, "error": traceback.format_exc()}
    Path(out).write_text(json.dumps(result))


def test_postgres_two_processes_open_a_fresh_database_at_once(
    backend: Backend, tmp_path: Path
) -> None:
    if backend.kind != "postgresql":
        pytest.skip("SQLite has one writing process per data directory")
    assert backend.server is not None
    ctx = multiprocessing.get_context("spawn")
    for round_ in range(3):
        url = backend.url if round_ == 0 else backend.server.database()
        barrier = ctx.Barrier(2)
        outs = [tmp_path / f"r{round_}-{i}.json" for i in range(2)]
        procs = [
            ctx.Process(
                target=_open_at_the_same_moment,
                args=(url, str(tmp_path / f"r{round_}-gate{i}"), barrier, str(outs[i])),
            )
            for i in range(2)
        ]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(60)
            assert proc.exitcode == 0
        results = [json.loads(out.read_text()) for out in outs]
        for result in results:
            assert result["ok"], result.get("error")
            assert result["generation"] == 0
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT version FROM facegate_schema").fetchall() == [
                (store_schema.PG_SCHEMA_VERSION,)
            ]
            assert conn.execute("SELECT key, value FROM meta").fetchall() == [("generation", "0")]


def test_postgres_a_gate_that_waited_for_another_gates_migration_skips_it(
    backend: Backend,
) -> None:
    """Two gates start on a fresh database: both read "no schema yet", one takes the migration
    lock and migrates; the other waits for the lock inside its migration transaction and must
    then see the schema the first committed and leave it be. (The race of the test above, step
    by step: the first gate is played by hand here, holding the lock until the second waits.)"""
    if backend.kind != "postgresql":
        pytest.skip("SQLite has one writing process per data directory")
    late, version = store_postgres.PostgresDatabase.open(backend.url, readonly=False)
    failure: list[BaseException] = []

    def migrate_late() -> None:
        try:
            late.migrate(version)
        except BaseException as exc:  # reported below
            failure.append(exc)

    try:
        assert version == 0
        with psycopg.connect(backend.url, autocommit=True) as first, first.transaction():
            first.execute("SELECT pg_advisory_xact_lock(%s)", (store_postgres.MIGRATE_LOCK,))
            waiter = threading.Thread(target=migrate_late)
            waiter.start()
            deadline = time.monotonic() + 10
            while not first.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                " AND objid = %s AND database = (SELECT oid FROM pg_database"
                " WHERE datname = current_database())",
                (store_postgres.MIGRATE_LOCK,),
            ).fetchone()[0]:  # type: ignore[index]
                assert time.monotonic() < deadline, "the second gate never waited for the lock"
                time.sleep(0.01)
            for target, script in sorted(store_schema.PG_MIGRATIONS.items()):
                for statement in store_schema.statements(script):
                    first.execute(statement.encode())
                first.execute("UPDATE facegate_schema SET version = %s", (target,))
        waiter.join(30)
        assert not waiter.is_alive()
        assert failure == [], "".join(traceback.format_exception(failure[0]))
        assert late.query("SELECT version FROM facegate_schema") == [
            (store_schema.PG_SCHEMA_VERSION,)
        ]
    finally:
        late.close()


def make_v3_db(data_dir: Path, vector: np.ndarray) -> None:
    """A store as facegate wrote it at schema version 3: events without gates."""
    data_dir.mkdir(mode=0o700)
    conn = sqlite3.connect(data_dir / DB_NAME, isolation_level=None)
    for version in (1, 2, 3):
        for statement in store_schema.statements(MIGRATIONS[version]):
            conn.execute(statement)
    conn.execute("PRAGMA user_version = 3")
    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    conn.execute("INSERT INTO meta VALUES ('model_pack', ?)", (PACK,))
    conn.execute("INSERT INTO meta VALUES ('embedding_dim', ?)", (str(DIM),))
    conn.execute("UPDATE meta SET value = '4' WHERE key = 'generation'")
    conn.execute(
        "INSERT INTO persons (id, name, note, created_at, updated_at)"
        " VALUES ('old1', 'Old Timer', 'hi', 5, 6)"
    )
    conn.execute(
        "INSERT INTO embeddings (person_id, vector, pose, quality, source, created_at)"
        " VALUES ('old1', ?, 'left', 0.5, 'registration', 5)",
        (vector.tobytes(),),
    )
    conn.executemany(
        "INSERT INTO events (seq, at, type, person_id, data) VALUES (?, ?, ?, ?, ?)",
        [
            (1, T0 + 1, "system_ready", None, '{"n": 1}'),
            (2, T0 + 2, "person_recognized", "old1", '{"n": 2}'),
            (3, T0 + 3, "unknown_face", None, '{"n": 3}'),
        ],
    )
    conn.close()


def test_sqlite_v3_store_migrates_and_its_events_get_the_gate(
    backend: Backend, rng: np.random.Generator
) -> None:
    if backend.kind != "sqlite":
        pytest.skip("PostgreSQL stores began at their own schema version 1, with gates")
    assert SCHEMA_VERSION == 4
    data_dir = backend.tmp_path / "data"
    v = unit(rng)
    make_v3_db(data_dir, v)
    store = backend(data_dir, gate="porch")
    assert schema_version(backend, store) == 4
    assert store._db.query("PRAGMA application_id")[0][0] == APPLICATION_ID
    assert [(e.gate, e.seq, e.type, e.person_id) for e in store.events(gate="porch")] == [
        ("porch", 1, "system_ready", None),
        ("porch", 2, "person_recognized", "old1"),
        ("porch", 3, "unknown_face", None),
    ]
    assert store.events(gate="") == []
    assert store.last_seen("old1") == LastSeen(T0 + 2, "porch")
    assert store.last_event_seq("porch") == 3
    assert store.gates() == [GateActivity("porch", 3, T0 + 3)]
    p = store.person("old1")
    assert (p.name, p.note, p.poses, p.embeddings) == ("Old Timer", "hi", ["left"], 1)
    assert store.vectors().matrix[0].tobytes() == v.tobytes()
    assert store.generation() == 4
    # the history goes on under the gate's name, and (gate, seq) is the key now
    store.log_events(
        [ev("porch", 4, T0 + 4), ev("door", 1, T0 + 5)], retention_seconds=RET, max_rows=100
    )
    assert [e.seq for e in store.events(gate="porch")] == [1, 2, 3, 4]
    store.close()
    # reopening under another gate name does not rename the history
    again = backend(data_dir, gate="elsewhere")
    assert [g.gate for g in again.gates()] == ["door", "porch"]
    assert again.integrity_check() == "ok"


# -- URLs ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "url",
    [
        "postgresql://facegate:s3cret-pw@127.0.0.1:{port}/facegate",
        "postgres://facegate:s3cret-pw@127.0.0.1:{port}/facegate?sslmode=disable",
        "postgresql://facegate@127.0.0.1:{port}/facegate?password=s3cret-pw",
    ],
)
def test_the_password_never_appears_in_errors(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    url: str,
) -> None:
    monkeypatch.setattr(store_postgres, "CONNECT_SECONDS", 1.0)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(StoreError, match="cannot connect to the shared store") as info:
        Store.open(tmp_path / "data", url=url.format(port=free_port()))
    message = "".join(traceback.format_exception(info.value))
    assert "s3cret-pw" not in message
    assert "***" in str(info.value)
    assert "s3cret-pw" not in caplog.text
    Store.open(tmp_path / "data").close()  # the data directory's lock was let go


def test_the_password_stays_out_of_messages_of_a_reachable_store(
    pg_url: str, tmp_path: Path
) -> None:
    # Trust authentication ignores the password; the store must still never show it.
    with_password = pg_url.replace("facegate@", "facegate:s3cret-pw@", 1)
    assert "s3cret-pw" in with_password
    with Store.open(tmp_path / "data", url=with_password) as store:
        assert store.kind == "postgresql"
        assert "s3cret-pw" not in store.where
        assert "***" in store.where
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE facegate_schema SET version = 99")
    with pytest.raises(StoreError, match="newer") as info:
        Store.open(tmp_path / "data", url=with_password)
    assert "s3cret-pw" not in "".join(traceback.format_exception(info.value))


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://facegate:s3cret-pw%@127.0.0.1:5/facegate",  # a bad % escape
        "postgresql://facegate:s3cret-pw@[::1/facegate",  # an unclosed IPv6 bracket
    ],
)
def test_a_malformed_url_is_refused_without_its_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    monkeypatch.setattr(store_postgres, "CONNECT_SECONDS", 1.0)
    with pytest.raises(StoreError) as info:
        Store.open(tmp_path / "data", url=url)
    assert "s3cret-pw" not in "".join(traceback.format_exception(info.value))


@pytest.mark.parametrize(
    "url",
    ["mysql://u:s3cret-pw@db/facegate", "sqlite:///tmp/facegate.db", "/var/lib/facegate"],
)
def test_a_url_that_is_not_postgres_is_refused(tmp_path: Path, url: str) -> None:
    with pytest.raises(StoreError, match="must be a postgresql:// URL") as info:
        Store.open(tmp_path / "data", url=url)
    assert "s3cret-pw" not in str(info.value)
    assert not (tmp_path / "data").exists()  # refused before anything was made


# -- a gate killed in the middle of a write --------------------------------------------------
def _hold_a_half_written_person(url: str, data_dir: str, ready: str) -> None:
    """A gate that writes a person and their embeddings, then hangs before committing."""
    rng = np.random.default_rng(7)
    store = Store.open(Path(data_dir), url=url, gate="doomed")
    with store.enrolling() as enrolment:
        enrolment.create_person(
            "Half Written", [emb(unit(rng)) for _ in range(5)], pack=PACK, actor="t"
        )
        Path(ready).write_text("inside the transaction")
        time.sleep(600)  # SIGKILLed here, the transaction open and the writer lock held


def test_postgres_a_gate_killed_mid_write_leaves_nothing_and_frees_the_lock(
    backend: Backend, tmp_path: Path, rng: np.random.Generator
) -> None:
    """kill -9 of a gate inside its transaction (rows written, writer lock held): PostgreSQL
    rolls it back when the connection drops, and the other gates can write at once."""
    if backend.kind != "postgresql":
        pytest.skip("SQLite's kill -9 mid-write is tests/test_crash_safety.py's")
    store = backend()  # the schema exists before the doomed gate starts
    ready = tmp_path / "ready"
    ctx = multiprocessing.get_context("spawn")
    proc = ctx.Process(
        target=_hold_a_half_written_person, args=(backend.url, str(tmp_path / "doomed"), str(ready))
    )
    proc.start()
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert proc.is_alive() and time.monotonic() < deadline, "the doomed gate never wrote"
            time.sleep(0.05)
        # Meanwhile the other gate's write waits for the writer lock (it does not see the
        # uncommitted rows, and does not get in between).
        blocked: list[float] = []

        def write() -> None:
            t0 = time.monotonic()
            store.create_person("After", [emb(unit(rng))], pack=PACK, actor="t")
            blocked.append(time.monotonic() - t0)

        writer = threading.Thread(target=write)
        writer.start()
        time.sleep(1.0)
        assert not blocked, "a write got past another gate's writer lock"
        proc.kill()
        proc.join(10)
        writer.join(15)
        assert blocked and blocked[0] >= 1.0
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join(10)
    assert [p.name for p in store.persons()] == ["After"]
    assert count(store, "embeddings") == 1
    assert count(store, "audit", "action = 'enrol'") == 1
    assert store.generation() == 1
