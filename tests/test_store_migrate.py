"""Moving a gate: `copy_store` and `facegate store migrate` copy a data directory's SQLite
gallery into a real PostgreSQL (tests/postgres.py; skipped where PostgreSQL is absent).

The SQLite gallery is built in tmp_path: persons with synthetic unit 512-d float32 vectors of
pack "faceplugin", thumbnails, a history of two gates (and rows of before gates had names) and
an audit log. After the copy, the PostgreSQL store must hold all of it, bit for bit."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import psycopg
import pytest

from facegate.cli import main
from facegate.identity import store_copy, store_postgres
from facegate.identity.store import (
    DB_NAME,
    LoggedEvent,
    NewEmbedding,
    Store,
    StoreError,
)
from facegate.identity.store_copy import CopyReport, copy_store
from facegate.identity.store_rows import Rows
from postgres import free_port

PACK = "faceplugin"
DIM = 512
GATE = "gate"
PASSWORD = "Sup3r-Secret-Pw"
EXE = Path(sys.executable).parent / "facegate"


class Clock:
    """Ticks 1.25 s per call from a time with a fraction: distinct, exactly comparable times."""

    def __init__(self, start: float = 1_700_000_000.123456) -> None:
        self.now = start

    def __call__(self) -> float:
        self.now += 1.25
        return self.now


def unit(rng: np.random.Generator) -> np.ndarray:
    v = rng.standard_normal(DIM).astype(np.float32)
    return (v / np.linalg.norm(v)).astype(np.float32)


def jpeg(n: int) -> bytes:
    return b"\xff\xd8\xff\xe0" + bytes(range(256)) * (n + 1) + b"\xff\xd9"


def build_gallery(data: Path, *, seed: int = 7) -> None:
    """A gate's SQLite data directory with persons, thumbnails, history and audit entries."""
    rng = np.random.default_rng(seed)
    with Store.open(data, clock=Clock()) as store:
        ids = []
        for n, name in enumerate(["Ada Lovelace", "Émile Zola", "Grace Hopper", "Alan Turing"]):
            embeddings = [
                NewEmbedding(unit(rng), pose, 0.5 + 0.1 * k, "photo" if k else "registration")
                for k, pose in enumerate(["front", "left", "right"][: 1 + n % 3])
            ]
            person, _ = store.create_person(
                name,
                embeddings,
                pack=PACK,
                actor="test",
                thumbnail=jpeg(n) if n != 2 else None,
                note=f"note {n}",
            )
            ids.append(person.id)
        # Later embeddings of an earlier person, a rename, and an erased person: row ids with
        # gaps and interleaved persons, times that differ between created and updated.
        store.add_embeddings(ids[0], [NewEmbedding(unit(rng), "up", 0.77)], pack=PACK, actor="t")
        store.rename(ids[1], "Emile Zola", actor="test")
        erased, _ = store.create_person(
            "Erased", [NewEmbedding(unit(rng))], pack=PACK, actor="test"
        )
        store.delete_person(erased.id, actor="test")
        store.record("test", "export", persons=4, embeddings=8)
        events = [
            LoggedEvent(
                seq,
                1_700_000_100.5 + seq,
                "person_recognized",
                ids[seq % 4],
                json.dumps({"n": seq}),
                GATE,
            )
            for seq in range(3, 11)
        ] + [
            LoggedEvent(11, 1_700_000_200.25, "unknown_face", None, '{"x": 1}', GATE),
            LoggedEvent(5, 1_700_000_150.0, "person_recognized", ids[1], "{}", "porch"),
        ]
        store.log_events(events, retention_seconds=1e12, max_rows=100_000)
        # Rows of before gates had names (an old store): they are this gate's.
        store._conn.executemany(
            "INSERT INTO events (gate, seq, at, type, person_id, data) VALUES ('', ?, ?, ?, ?, ?)",
            [
                (1, 1_600_000_000.0, "person_recognized", ids[2], "{}"),
                (2, 1_600_000_001.0, "unknown_face", None, "{}"),
            ],
        )


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def data(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    build_gallery(folder)
    return folder


@pytest.fixture
def open_pg(tmp_path: Path) -> Iterator[Any]:
    """`open_pg(url)`: the PostgreSQL store at `url` (its own scratch data directory)."""
    stores: list[Store] = []

    def opener(url: str) -> Store:
        store = Store.open(tmp_path / f"pg{len(stores)}", url=url, gate=GATE)
        stores.append(store)
        return store

    yield opener
    for store in stores:
        store.close()


def copy(data: Path, target: Store) -> CopyReport:
    with Store.open(data, gate=GATE) as source:
        return copy_store(source, target, gate=GATE, actor="test")


def all_events(store: Store) -> list[LoggedEvent]:
    rows: list[LoggedEvent] = []
    for activity in store.gates():
        rows += store.events(-1, 100_000, gate=activity.gate)
    return sorted(rows, key=lambda e: (e.gate, e.seq))


def audit_rows(store: Store) -> list[tuple[Any, ...]]:
    """Oldest first, without ids."""
    return [(a.at, a.actor, a.action, a.person_id, a.detail) for a in reversed(store.audit(10**6))]


def snapshot(store: Store) -> dict[str, Any]:
    """Everything a copy must carry over, in a form to compare (embedding row ids left out)."""
    persons = store.persons()
    return {
        "persons": persons,
        "embeddings": {
            p.id: [(e.pose, e.quality, e.source, e.created_at) for e in store.embeddings_of(p.id)]
            for p in persons
        },
        "vectors": {p.id: store.vectors(p.id).matrix.astype("<f4").tobytes() for p in persons},
        "thumbnails": {p.id: store.thumbnail(p.id) for p in persons},
        "events": [
            LoggedEvent(e.seq, e.at, e.type, e.person_id, e.data, e.gate or GATE)
            for e in all_events(store)
        ],
        "meta": (store.model_pack(), store.dim()),
    }


def counts(url: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        return {
            table: int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # type: ignore[index]
            for table in ("persons", "embeddings", "thumbnails", "events", "audit")
        }


def empty(url: str) -> bool:
    return counts(url) == dict.fromkeys(
        ("persons", "embeddings", "thumbnails", "events", "audit"), 0
    )


def with_password(url: str) -> str:
    parts = urlsplit(url)
    user, host = parts.netloc.split("@")
    return urlunsplit(parts._replace(netloc=f"{user}:{PASSWORD}@{host}"))


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("FACEGATE_")}


# -- the copy --------------------------------------------------------------------------------
def test_the_copy_carries_everything_over_bit_exact(data: Path, pg_url: str, open_pg: Any) -> None:
    with Store.open(data, readonly=True) as source:
        before = snapshot(source)
        source_audit = audit_rows(source)
        source_generation = source.generation()
    db_digest = digest(data / DB_NAME)
    target = open_pg(pg_url)

    report = copy(data, target)

    assert report.persons == 4 and report.embeddings == 8 and report.thumbnails == 3
    assert report.events == 12 and report.audit == len(source_audit)
    assert (report.model_pack, report.embedding_dim) == (PACK, DIM)
    after = snapshot(target)
    assert after == before
    assert sum(len(v) for v in after["vectors"].values()) == 8 * DIM * 4
    # The history keeps its gates and sequence numbers; rows of before gates had names are
    # this gate's; the gate carries on from its last number.
    assert {e.gate for e in after["events"]} == {GATE, "porch"}
    assert [e.seq for e in after["events"] if e.gate == GATE] == list(range(1, 12))
    assert target.last_event_seq(GATE) == 11
    # The audit log, then one entry for the copy: counts, never names.
    copied = audit_rows(target)
    assert copied[:-1] == source_audit
    _, actor, action, person_id, detail = copied[-1]
    assert (actor, action, person_id) == ("test", "import_store", None)
    assert detail == {
        "source": "sqlite",
        "persons": 4,
        "embeddings": 8,
        "thumbnails": 3,
        "events": 12,
        "audit": len(source_audit),
    }
    assert "Ada" not in json.dumps(detail)
    # One step, above the source's (the gate's saved index is stamped with that).
    assert report.generation == target.generation() > source_generation
    assert target.integrity_check() == "ok"
    # The source was only read.
    assert digest(data / DB_NAME) == db_digest
    with Store.open(data, readonly=True) as source:
        assert snapshot(source) == before


def test_other_gates_hear_of_the_copied_persons(data: Path, pg_url: str, open_pg: Any) -> None:
    import threading

    target = open_pg(pg_url)
    listener = open_pg(pg_url)
    stop = threading.Event()
    changes = listener.follow(stop)
    assert next(changes) is None  # listening
    report = copy(data, target)
    change = next(changes)
    stop.set()
    assert change is not None and change.generation == report.generation
    assert change.persons == sorted(p.id for p in target.persons())


def test_copying_twice_is_refused_and_duplicates_nothing(
    data: Path, pg_url: str, open_pg: Any
) -> None:
    target = open_pg(pg_url)
    copy(data, target)
    before, generation = counts(pg_url), target.generation()
    with pytest.raises(StoreError, match="already holds 4 of these persons") as exc:
        copy(data, target)
    assert "copied there before" in str(exc.value)
    assert counts(pg_url) == before and target.generation() == generation


def test_a_target_of_another_model_pack_is_refused(data: Path, pg_url: str, open_pg: Any) -> None:
    target = open_pg(pg_url)
    other, _ = target.create_person(
        "Someone", [NewEmbedding(unit(np.random.default_rng(1)))], pack="buffalo_l", actor="x"
    )
    before, generation = counts(pg_url), target.generation()
    with pytest.raises(StoreError, match="model pack buffalo_l") as exc:
        copy(data, target)
    assert "faceplugin" in str(exc.value) and "Nothing was copied" in str(exc.value)
    assert counts(pg_url) == before and target.generation() == generation
    assert [p.id for p in target.persons()] == [other.id]


def test_the_same_gates_history_on_the_target_is_refused(
    data: Path, pg_url: str, open_pg: Any
) -> None:
    """The gate already ran on the shared store (or another gate has its id)."""
    target = open_pg(pg_url)
    target.log_events(
        [LoggedEvent(4, 1.0, "unknown_face", None, "{}", GATE)],
        retention_seconds=1e12,
        max_rows=1000,
    )
    with pytest.raises(StoreError, match="1 history rows of gate 'gate'"):
        copy(data, target)
    assert counts(pg_url) == {**dict.fromkeys(counts(pg_url), 0), "events": 1}


def test_joining_a_store_other_gates_already_use(
    data: Path, pg_url: str, open_pg: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small pages and chunks: the history is read in several pages, counted in several parts.
    monkeypatch.setattr(store_copy, "PAGE", 3)
    monkeypatch.setattr(store_copy, "CHUNK", 2)
    target = open_pg(pg_url)
    rng = np.random.default_rng(99)
    first, _ = target.create_person("Porch Person", [NewEmbedding(unit(rng))], pack=PACK, actor="x")
    target.log_events(
        [LoggedEvent(n, 2.0 + n, "unknown_face", None, "{}", "hall") for n in range(1, 4)],
        retention_seconds=1e12,
        max_rows=1000,
    )
    report = copy(data, target)
    assert report.persons == 4 and report.events == 12
    assert len(target.persons()) == 5 and target.find_person(first.id) is not None
    assert {g.gate: g.events for g in target.gates()} == {GATE: 11, "porch": 1, "hall": 3}


def test_a_failure_half_way_leaves_the_target_empty(
    data: Path, pg_url: str, open_pg: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = open_pg(pg_url)
    real = Rows.insert_person
    calls = []

    def failing(self: Rows, *args: Any) -> None:
        calls.append(args[0])
        if len(calls) == 3:
            raise RuntimeError("the machine fell over")
        real(self, *args)

    monkeypatch.setattr(Rows, "insert_person", failing)
    with pytest.raises(RuntimeError, match="fell over"):
        copy(data, target)
    assert len(calls) == 3
    assert empty(pg_url) and target.generation() == 0 and target.model_pack() is None


def test_counts_that_do_not_add_up_roll_everything_back(
    data: Path, pg_url: str, open_pg: Any
) -> None:
    """A row that silently does not land (here a trigger drops one embedding) is caught by
    the count inside the transaction."""
    target = open_pg(pg_url)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(
            "CREATE FUNCTION drop_one() RETURNS trigger LANGUAGE plpgsql AS $$"
            " BEGIN IF NEW.pose = 'up' THEN RETURN NULL; END IF; RETURN NEW; END $$"
        )
        conn.execute(
            "CREATE TRIGGER drop_one BEFORE INSERT ON embeddings"
            " FOR EACH ROW EXECUTE FUNCTION drop_one()"
        )
    with pytest.raises(StoreError, match=r"does not add up: embeddings 7 \(source 8\)"):
        copy(data, target)
    assert empty(pg_url) and target.generation() == 0


def test_a_source_with_nothing_to_move_reports_zeros(
    tmp_path: Path, pg_url: str, open_pg: Any
) -> None:
    data = tmp_path / "empty"
    with Store.open(data) as store:
        person, _ = store.create_person(
            "Gone", [NewEmbedding(unit(np.random.default_rng(3)))], pack=PACK, actor="t"
        )
        store.delete_person(person.id, actor="t")
    target = open_pg(pg_url)
    report = copy(data, target)
    assert (report.persons, report.embeddings, report.events, report.audit) == (0, 0, 0, 0)
    assert empty(pg_url) and target.generation() == 0


def test_a_history_without_persons_moves_without_a_gallery_change(
    tmp_path: Path, pg_url: str, open_pg: Any
) -> None:
    data = tmp_path / "strangers"
    with Store.open(data) as store:
        store.log_events(
            [LoggedEvent(n, 10.0 + n, "unknown_face", None, "{}", GATE) for n in range(1, 6)],
            retention_seconds=1e12,
            max_rows=1000,
        )
    target = open_pg(pg_url)
    report = copy(data, target)
    assert (report.persons, report.events, report.generation) == (0, 5, 0)
    assert target.generation() == 0 and target.last_event_seq(GATE) == 5
    assert [a.action for a in target.audit()] == ["import_store"]


# -- the command -----------------------------------------------------------------------------
def run_cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(EXE), *argv],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        env=clean_env(),
    )


def test_the_command_moves_the_gallery_and_hides_the_password(
    data: Path, pg_url: str, open_pg: Any
) -> None:
    assert EXE.exists(), "the console script `facegate` is not installed in the venv"
    url = with_password(pg_url)  # trust authentication: the password is not needed
    with Store.open(data, readonly=True) as source:
        before = snapshot(source)
        audit = len(source.audit(10**6))

    done = run_cli("store", "migrate", "--to", url, "--data", str(data), "--json")

    assert done.returncode == 0, done.stderr
    assert PASSWORD not in done.stdout + done.stderr
    [line] = [json.loads(text) for text in done.stdout.splitlines()]
    assert line["to"] == store_postgres.redact(url) and ":***@" in line["to"]
    assert line["from"] == str(data / DB_NAME)
    assert (line["persons"], line["embeddings"], line["thumbnails"], line["events"]) == (
        4,
        8,
        3,
        12,
    )
    assert line["audit"] == audit and line["history_gates"] == [GATE, "porch"]
    assert any("[store] url" in step for step in line["next"])
    assert any("unchanged" in step for step in line["next"])
    target = open_pg(pg_url)
    assert snapshot(target) == before
    copied = counts(pg_url)

    again = run_cli("store", "migrate", "--to", url, "--data", str(data), "--json")
    assert again.returncode == 2
    assert PASSWORD not in again.stdout + again.stderr
    assert "already holds 4 of these persons" in json.loads(again.stdout)["error"]
    assert counts(pg_url) == copied


def test_the_command_as_text(data: Path, pg_url: str) -> None:
    done = run_cli("store", "migrate", "--to", pg_url, "--data", str(data))
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert f"to {pg_url}: 4 person(s), 8 embedding(s), 3 thumbnail(s), 12 history row(s)" in text
    assert "restart `facegate serve`" in text and "delete facegate.db" in text


@pytest.fixture
def cli(
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> Any:
    """`cli(*argv)`: the command in this process: (exit code, stdout, stderr and log)."""
    for name in [n for n in os.environ if n.startswith("FACEGATE_")]:
        monkeypatch.delenv(name)
    monkeypatch.setattr(store_postgres, "CONNECT_SECONDS", 1.0)
    caplog.set_level(logging.DEBUG)

    def run(*argv: str) -> tuple[int, str, str]:
        caplog.clear()
        code = main(list(argv))
        out = capsys.readouterr()
        return code, out.out, out.err + caplog.text

    return run


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://facegate:{PASSWORD}@127.0.0.1:{{port}}/facegate",
        f"postgresql://facegate@127.0.0.1:{{port}}/facegate?password={PASSWORD}",
    ],
    ids=["in-netloc", "in-query"],
)
def test_an_unreachable_store_is_named_without_its_password(data: Path, cli: Any, url: str) -> None:
    url = url.format(port=free_port())
    code, out, err = cli("store", "migrate", "--to", url, "--data", str(data), "--json")
    assert code == 2
    error = json.loads(out)["error"]
    assert "cannot connect to the shared store postgresql://facegate" in error
    assert "***" in error
    assert PASSWORD not in out + err


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://facegate:pa%zz{pw}@127.0.0.1:5432/facegate",  # a bad escape
        "postgresql://facegate:{pw}@[::1/facegate",  # an unclosed IPv6 address
        "postgresql://facegate@127.0.0.1/facegate?password=%zz{pw}",
    ],
)
def test_a_url_postgresql_cannot_parse_is_refused_without_its_password(
    data: Path, cli: Any, url: str
) -> None:
    """libpq quotes the part of the URL it cannot parse: it may be the password."""
    url = url.format(pw=PASSWORD)
    code, out, err = cli("store", "migrate", "--to", url, "--data", str(data), "--json")
    assert code == 2
    assert "not a URL PostgreSQL can use" in json.loads(out)["error"]
    assert PASSWORD not in out + err


def test_the_command_wants_the_data_directory_to_itself(data: Path, pg_url: str, cli: Any) -> None:
    with Store.open(data):  # as `facegate serve` would
        code, out, _ = cli("store", "migrate", "--to", pg_url, "--data", str(data), "--json")
    assert code == 2
    error = json.loads(out)["error"]
    assert f"in use by pid {os.getpid()}" in error and "stop `facegate serve` first" in error
    with psycopg.connect(pg_url) as conn:  # the target was not even opened
        assert conn.execute("SELECT to_regclass('persons')").fetchone() == (None,)


def test_the_command_refuses_a_directory_without_a_gallery(tmp_path: Path, cli: Any) -> None:
    missing = tmp_path / "nothing"
    code, _, err = cli("store", "migrate", "--to", "postgresql://h/db", "--data", str(missing))
    assert code == 2 and "nothing to move" in err
    assert not missing.exists()  # not created either


def test_the_command_needs_a_postgresql_url(data: Path, cli: Any) -> None:
    code, out, _ = cli("store", "migrate", "--data", str(data), "--json")
    assert code == 2 and "--to postgresql://" in json.loads(out)["error"]
    code, out, err = cli(
        "store", "migrate", "--to", f"mysql://u:{PASSWORD}@h/db", "--data", str(data)
    )
    assert code == 2 and "postgresql://" in err and PASSWORD not in out + err
