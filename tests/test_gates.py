# ruff: noqa: F811  (the fixtures imported below are named again as test arguments)
"""Named gates sharing one store: the history keeps each event under its gate (`gate_id`),
`GET /api/events?gate=` reads this gate's, another gate's or every gate's events, and
`GET /api/gates` lists the gates in the history.

The app is the real one (Guard, routes, a SQLite store in tmp_path, engine thread, bus,
history) with an analyzer that finds no face; another gate's events are written straight into
the same store, as that gate's own history writer would.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from facegate.events import PersonRecognized, RegistrationApproved, SystemReady, stamp, to_wire
from facegate.identity.store import LoggedEvent, Store
from facegate.live.eventlog import EventLog, logged
from facegate.server.access import Role
from facegate.settings import EventLogSettings
from test_security import BEARER, TOKENS, Build, build, frames  # noqa: F401
from test_workspace_api import logged as wait_logged
from test_workspace_api import person_in_store, publish, recognized

MAX_SEQ = 2**63 - 1
T0 = 1_767_262_215.0  # 2026-01-01T10:10:15Z


def other_gate_event(seq: int, at: float, gate: str = "porch", **fields: Any) -> LoggedEvent:
    """An event of another gate, as its history writer logs it."""
    event = stamp(SystemReady(message=f"{gate} {seq}", **fields), seq, at, gate)
    return logged(event, at)


def get(client: TestClient, query: str) -> list[dict[str, Any]]:
    r = client.get(f"/api/events?{query}")
    assert r.status_code == 200, (query, r.text)
    rows: list[dict[str, Any]] = r.json()
    return rows


def keys(rows: list[dict[str, Any]]) -> list[tuple[str, int]]:
    return [(row["data"]["gate_id"], row["data"]["seq"]) for row in rows]


# -- the history writer ----------------------------------------------------------------------
def test_logged_events_carry_their_gate_and_their_own_time() -> None:
    event = stamp(SystemReady(), 7, T0 + 0.341, "porch")
    row = logged(event, now=T0 + 5.0)
    assert (row.gate, row.seq, row.type) == ("porch", 7, "system_ready")
    assert row.at == pytest.approx(T0 + 0.341, abs=1e-6)  # when it happened, not when written
    assert json.loads(row.data)["data"]["gate_id"] == "porch"
    # Not stamped by a bus: no gate, and the time of writing.
    bare = logged(SystemReady(), now=T0)
    assert (bare.gate, bare.at) == ("", T0)
    # The redaction of a typed name keeps the gate.
    approved = stamp(
        RegistrationApproved(name="Ada", message="Registering Ada", track_id=3), 8, T0, "porch"
    )
    kept = logged(approved, T0)
    assert kept.gate == "porch" and "Ada" not in kept.data


def test_the_event_log_writes_each_event_under_its_gate(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "data")
    base = time.time() - 60.0  # within the retention
    try:
        log = EventLog(store, EventLogSettings(), subscription=None)  # type: ignore[arg-type]
        mine = [stamp(SystemReady(message=f"m{i}"), i, base + i, "door") for i in (1, 2, 3)]
        theirs = [stamp(SystemReady(message="p1"), 1, base + 1.5, "porch")]
        log.write([*mine, *theirs])  # one batch: each row keeps its own time
        assert [e.seq for e in store.events(gate="door")] == [1, 2, 3]
        assert [e.gate for e in store.events(gate="porch")] == ["porch"]
        assert store.last_event_seq("door") == 3 and store.last_event_seq("porch") == 1
        every = store.events(gate=None)  # newest first, by the events' own times
        assert [(e.gate, e.seq) for e in every] == [
            ("door", 3),
            ("door", 2),
            ("porch", 1),
            ("door", 1),
        ]
        assert [(e.gate, e.seq) for e in store.events(gate=None, until=base + 1.9)] == [
            ("porch", 1),
            ("door", 1),
        ]
    finally:
        store.close()


# -- GET /api/events?gate= -------------------------------------------------------------------
def test_events_of_this_gate_another_gate_and_all_gates(build: Build) -> None:
    with build(gate={"id": "door"}) as (client, runtime):
        assert runtime.store is not None
        base = time.time() - 60.0
        # Another gate sharing the store: its own numbering, from 1, interleaved in time.
        runtime.store.log_events(
            [other_gate_event(i, base + 2 * i) for i in range(1, 6)],
            retention_seconds=86400.0,
            max_rows=1000,
        )
        mine = [publish(client, runtime, SystemReady(message=f"door {i}")) for i in range(3)]
        wait_logged(runtime, mine[-1].seq)
        assert {e.gate_id for e in mine} == {"door"}

        # No gate: exactly this gate's events, `since`/`before` being its own seqs (the
        # WebSocket's), whatever the other gate's numbers are.
        own = get(client, "limit=1000")
        assert {row["data"]["gate_id"] for row in own} == {"door"}
        assert [row["data"]["seq"] for row in own][-3:] == [e.seq for e in mine]
        after = get(client, f"since={mine[0].seq}")
        assert keys(after) == [("door", mine[1].seq), ("door", mine[2].seq)]
        back = get(client, f"before={mine[2].seq}&limit=1")
        assert keys(back) == [("door", mine[1].seq)]
        assert get(client, "gate=door&limit=1000") == own  # naming this gate: the same

        # gate=porch: that gate's, with the same cursors.
        porch = get(client, "gate=porch")
        assert keys(porch) == [("porch", i) for i in range(1, 6)]
        assert keys(get(client, "gate=porch&since=3")) == [("porch", 4), ("porch", 5)]
        assert keys(get(client, "gate=porch&before=3")) == [("porch", 2), ("porch", 1)]
        assert get(client, "gate=nobody-here") == []

        # gate=all: every gate's, newest first, paged back with until=.
        everything = get(client, "gate=all&limit=1000")
        assert set(keys(everything)) >= {("porch", i) for i in range(1, 6)} | {
            ("door", e.seq) for e in mine
        }
        assert keys(everything)[:3] == [("door", e.seq) for e in reversed(mine)]
        times = [datetime_of(row) for row in everything]
        assert times == sorted(times, reverse=True)
        page = get(client, f"gate=all&until={base + 7.5}")
        assert keys(page) == [("porch", 3), ("porch", 2), ("porch", 1)]
        assert keys(get(client, f"gate=all&until={base + 7.5}&limit=2")) == [
            ("porch", 3),
            ("porch", 2),
        ]
        assert get(client, f"gate=all&until={base}") == []
        assert get(client, "gate=all&type=person_recognized") == []


def datetime_of(row: dict[str, Any]) -> float:
    return datetime.fromisoformat(row["data"]["timestamp"]).timestamp()


def test_rows_written_before_events_named_their_gate_get_it_from_the_history(
    build: Build,
) -> None:
    with build() as (client, runtime):
        assert runtime.store is not None
        wire = to_wire(stamp(SystemReady(message="old"), 1, time.time() - 5)).decode()
        doc = json.loads(wire)
        del doc["data"]["gate_id"]  # as events were before they carried it
        runtime.store.log_events(
            [LoggedEvent(1, time.time() - 5, "system_ready", None, json.dumps(doc), "porch")],
            retention_seconds=86400.0,
            max_rows=1000,
        )
        (row,) = get(client, "gate=porch")
        assert row["data"]["gate_id"] == "porch" and row["data"]["message"] == "old"


@pytest.mark.parametrize(
    ("query", "needle"),
    [
        ("gate=all&since=3", "`since` and `before` are one gate's"),
        ("gate=all&before=3", "until=<unix seconds>"),
        ("gate=all&since=0", "`since` and `before`"),
        ("until=100", "`until` pages `gate=all`"),
        ("gate=porch&until=100", "`until` pages `gate=all`"),
        ("gate=all&until=abc", "`until` must be"),
        ("gate=all&until=nan", "`until` must be"),
        ("gate=all&until=inf", "`until` must be"),
        ("gate=all&until=-1", "`until` must be"),
        ("gate=all&until=" + "9" * 40, "`until` must be"),
        ("gate=", "`gate` must be a gate id"),
        ("gate=a%20b", "`gate` must be a gate id"),
        ("gate=a/b", "`gate` must be a gate id"),
        ("gate=%1b%5b2J", "`gate` must be a gate id"),
        ("gate=" + "g" * 65, "`gate` must be a gate id"),
        ("gate=%C3%A9", "`gate` must be a gate id"),
    ],
)
def test_bad_gate_queries_are_400(build: Build, query: str, needle: str) -> None:
    with build() as (client, _):
        r = client.get(f"/api/events?{query}")
        assert r.status_code == 400, (query, r.text)
        assert needle in r.json()["error"]
        assert "\x1b" not in r.text


# -- GET /api/gates ----------------------------------------------------------------------------
def test_gates_lists_this_gate_first_even_without_events(build: Build) -> None:
    with build(gate={"id": "door"}, events={"enabled": False}) as (client, runtime):
        assert runtime.store is not None
        r = client.get("/api/gates")
        assert r.status_code == 200
        assert r.json() == [{"gate": "door", "events": 0, "last_at": None, "this": True}]


def test_gates_lists_every_gate_in_the_history(build: Build) -> None:
    with build(gate={"id": "door"}) as (client, runtime):
        assert runtime.store is not None
        base = time.time() - 100.0
        runtime.store.log_events(
            [other_gate_event(i, base + i, "porch") for i in (1, 2)]
            + [other_gate_event(1, base + 50, "yard")],
            retention_seconds=86400.0,
            max_rows=1000,
        )
        done = publish(client, runtime, SystemReady(message="door"))
        wait_logged(runtime, done.seq)
        gates = client.get("/api/gates").json()
        assert [g["gate"] for g in gates] == ["door", "yard", "porch"]  # latest first after us
        door, yard, porch = gates
        assert door["this"] is True and door["events"] >= 1
        assert door["last_at"] == pytest.approx(time.time(), abs=30)
        assert yard == {
            "gate": "yard",
            "events": 1,
            "last_at": pytest.approx(base + 50),
            "this": False,
        }
        assert porch["events"] == 2 and porch["last_at"] == pytest.approx(base + 2)
        assert porch["this"] is False


def test_a_viewer_may_read_the_gates_and_everyones_events(build: Build) -> None:
    with build(server=TOKENS) as (client, _):
        assert client.get("/api/gates").status_code == 401
        for url in ("/api/gates", "/api/events?gate=all"):
            r = client.get(url, headers=BEARER[Role.VIEWER])
            assert r.status_code == 200, (url, r.text)


# -- where a person was last seen --------------------------------------------------------------
def test_last_seen_names_the_gate_that_saw_them(build: Build) -> None:
    with build(gate={"id": "door"}) as (client, runtime):
        assert runtime.store is not None
        pid = person_in_store(runtime)
        here = publish(client, runtime, recognized(pid))
        wait_logged(runtime, here.seq)
        detail = client.get(f"/api/persons/{pid}").json()
        assert detail["last_seen_gate"] == "door"
        # Later, at another gate sharing the store.
        later = stamp(recognized(pid), 1, time.time() + 1, "porch")
        assert isinstance(later, PersonRecognized)
        runtime.store.log_events(
            [logged(later, time.time())], retention_seconds=86400.0, max_rows=1000
        )
        detail = client.get(f"/api/persons/{pid}").json()
        assert detail["last_seen_gate"] == "porch"
        listed = {p["person_id"]: p for p in client.get("/api/persons").json()}
        assert listed[pid]["last_seen_gate"] == "porch"
        assert listed[pid]["last_seen"] == detail["last_seen"]


def test_the_websocket_says_which_gate_it_is_on(build: Build) -> None:
    with build(gate={"id": "door"}) as (client, _), client.websocket_connect("/ws") as ws:
        hello = ws.receive_json()
        assert hello["type"] == "connected" and hello["data"]["gate_id"] == "door"
