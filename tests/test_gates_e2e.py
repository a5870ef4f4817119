"""Several gates, one PostgreSQL store, end to end: real `facegate serve` subprocesses (each
its own data dir, port, `FACEGATE_GATE_ID` and source) on one database of a real PostgreSQL
(tests/postgres.py), driven over HTTP and the WebSocket as an operator would.

- Enrolled at gate a -> recognised at gate b (its event says gate b; a's history shows it).
- Erased at gate b -> gone at gate a: not listed, not identified, not greeted, no history.
- PostgreSQL restarted under both gates: both keep serving, reconnect and resync; a person
  enrolled at a afterwards reaches b's index.
- PostgreSQL away for 5 s: both gates keep answering while events happen, and follow again.
- A gate killed (SIGKILL) in the middle of a guided registration: nothing half-written, the
  other gate unaffected, the killed gate starts again on the same data dir.

The gates of the first four watch the Hamilton clip (looped). Lin-Manuel Miranda is the person
enrolled: he is greeted ~3 s into every loop with the default pack. (Alex Lacamoire, whose
photos are in enrol/ too, is never recognised in this clip with the faceplugin pack: his best
similarity there is about 0.17 against a threshold of 0.44.) The registration gate watches a
folder of Pointing'04 frames: one person looking ahead, then turning through the five poses.

Needs ../shared/data, the model pack and Debian's PostgreSQL server binaries (each skipped with
a reason when absent).
"""

from __future__ import annotations

import contextlib
import csv
import functools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import cv2
import httpx2 as httpx
import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from facegate.identity.store import Store
from facegate.vision.images import read_image
from postgres import PostgresServer, free_port

pytestmark = [pytest.mark.shared_data, pytest.mark.models]

CLIP = "hamilton_short_clip.mp4"  # 10 s; Lin-Manuel Miranda greeted ~3 s into every loop
PERSON = "lin_manuel_miranda"
REGISTERING = "Half Written"  # the name typed for the registration that is killed
Message = dict[str, Any]


# == a gate ======================================================================================
class Gate:
    """One `facegate serve` subprocess (stdout and stderr to files in `folder`)."""

    def __init__(
        self, gate_id: str, folder: Path, source: Path, url: str, env: dict[str, str] | None = None
    ) -> None:
        self.id = gate_id
        self.folder = folder
        self.data = folder / "data"
        self.source = source
        self.url = url
        self.extra_env = env or {}
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.health_path = "/healthz"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def spawn(self) -> Gate:
        """Start the process (see `wait_ready`)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        cmd = [sys.executable, "-m", "facegate.cli", "serve", "--source", str(self.source)]
        cmd += ["--loop", "--port", str(self.port), "--data", str(self.data)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("FACEGATE_")}
        env["FACEGATE_HOME"] = str(self.folder / "home")
        env["FACEGATE_GATE_ID"] = self.id
        env["FACEGATE_STORE_URL"] = self.url
        env.update(self.extra_env)
        starts = len(list(self.folder.glob("serve*.stderr")))
        self.stderr_path = self.folder / f"serve{starts}.stderr"
        out_path = self.folder / f"serve{starts}.stdout"
        with out_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                cmd, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL
            )
        return self

    def wait_ready(self, timeout: float = 90.0) -> Gate:
        """Until it serves HTTP and its source is open."""
        deadline = time.monotonic() + timeout
        while True:
            assert self.alive(), f"gate {self.id} exited ({self.returncode}):\n{self.log()}"
            assert time.monotonic() < deadline, f"gate {self.id} did not come up:\n{self.log()}"
            with contextlib.suppress(httpx.HTTPError):
                r = self.get("/")
                if r.status_code == 200 and r.json()["system_status"]["source_state"] != "starting":
                    break
            time.sleep(0.1)
        # /healthz where the gate has one; else the cheapest status page.
        if self.get(self.health_path).status_code == 404:
            self.health_path = "/system_status"
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self, lines: int = 60) -> str:
        text = self.stderr_path.read_text(errors="replace") if self.proc else "(never started)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"gate {self.id} ignored SIGTERM for {timeout} s") from None
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL, by the process id of the gate this test started."""
        os.kill(self.pid, signal.SIGKILL)
        assert self.proc is not None
        self.proc.wait(10)

    # -- HTTP --------------------------------------------------------------------------------
    def get(self, path: str, timeout: float = 10.0) -> httpx.Response:
        return httpx.get(self.http + path, timeout=timeout)

    def json(self, path: str) -> Any:
        r = self.get(path)
        assert r.status_code == 200, (self.id, path, r.status_code, r.text)
        return r.json()

    def reset(self) -> int | str:
        """POST /reset_system (operator): publishes `system_ready` ("System reset")."""
        try:
            return httpx.post(self.http + "/reset_system", json={}, timeout=5).status_code
        except httpx.HTTPError as exc:
            return type(exc).__name__

    def health(self, timeout: float = 2.0) -> int:
        return self.get(self.health_path, timeout=timeout).status_code

    def enrol(self, name: str, photos: list[Path]) -> httpx.Response:
        files = [("files", (p.name, p.read_bytes())) for p in photos]
        return httpx.post(self.http + "/api/persons", data={"name": name}, files=files, timeout=60)

    def delete(self, person_id: str) -> httpx.Response:
        return httpx.delete(f"{self.http}/api/persons/{person_id}", timeout=60)

    def identify(self, photo: Path) -> list[dict[str, Any]]:
        r = httpx.post(
            self.http + "/api/identify",
            files={"file": (photo.name, photo.read_bytes())},
            timeout=60,
        )
        assert r.status_code == 200, r.text
        faces: list[dict[str, Any]] = r.json()["faces"]
        return faces

    def person_ids(self) -> set[str]:
        return {p["person_id"] for p in self.json("/api/persons")}

    def indexed_persons(self) -> int:
        """The persons in this gate's own gallery (its index, not the database)."""
        return int(self.json("/api/stats")["persons"])


@contextlib.contextmanager
def diagnose(*gates: Gate, pg: PostgresServer | None = None) -> Iterator[None]:
    """An assertion or timeout inside gets the gates' stderr (and PostgreSQL's log) appended."""
    try:
        yield
    except (AssertionError, TimeoutError) as exc:
        parts = [str(exc)]
        parts += [f"== gate {g.id} stderr (tail) ==\n{g.log(40)}" for g in gates]
        if pg is not None:
            parts.append(f"== PostgreSQL log (tail) ==\n{pg.log(20)}")
        raise AssertionError("\n".join(parts)) from exc


def wait_until(what: str, check: Callable[[], Any], timeout: float, every: float = 0.2) -> Any:
    """`check()`'s first truthy value, polled; TimeoutError naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        time.sleep(every)


# == a WebSocket client on a thread of its own ===================================================
class Feed:
    """Every message of a gate's /ws but `tracks`, kept with its arrival (time.time())."""

    def __init__(self, gate: Gate) -> None:
        self.gate = gate
        self._stack = contextlib.ExitStack()
        self.ws: ClientConnection = self._stack.enter_context(
            connect(f"ws://127.0.0.1:{gate.port}/ws", max_size=None)
        )
        self._got: list[tuple[float, Message]] = []
        self._cond = threading.Condition()
        self.closed = False
        self._thread = threading.Thread(target=self._read, name=f"feed-{gate.id}", daemon=True)
        self._thread.start()
        hello = self.wait_for(lambda m: m["type"] == "connected", timeout=10)
        assert hello["data"].get("gate_id") == gate.id, hello

    def _read(self) -> None:
        try:
            for raw in self.ws:
                msg: Message = json.loads(raw)
                if msg["type"] != "tracks":
                    with self._cond:
                        self._got.append((time.time(), msg))
                        self._cond.notify_all()
        except (ConnectionClosed, OSError):
            pass
        finally:
            with self._cond:
                self.closed = True
                self._cond.notify_all()

    def mark(self) -> int:
        with self._cond:
            return len(self._got)

    def since(self, mark: int = 0) -> list[tuple[float, Message]]:
        with self._cond:
            return list(self._got[mark:])

    def wait_for(self, test: Callable[[Message], bool], timeout: float, after: int = 0) -> Message:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for _, msg in self._got[after:]:
                    if test(msg):
                        return msg
                left = deadline - time.monotonic()
                if left <= 0 or self.closed:
                    kinds = [m["type"] for _, m in self._got[after:]][-15:]
                    state = "closed" if self.closed else f"not within {timeout:.0f} s"
                    raise TimeoutError(f"gate {self.gate.id} /ws {state}; last: {kinds}")
                self._cond.wait(min(left, 0.5))

    def send(self, kind: str, data: dict[str, Any]) -> None:
        self.ws.send(json.dumps({"type": kind, "data": data}))

    def close(self) -> None:
        with contextlib.suppress(ConnectionClosed, OSError):
            self._stack.close()
        self._thread.join(5)


def of(kind: str, **data: Any) -> Callable[[Message], bool]:
    return lambda m: m["type"] == kind and all(m["data"].get(k) == v for k, v in data.items())


# == sources =====================================================================================
def pose_folder(pointing: Path, folder: Path, identity: str = "p04_person01") -> Path:
    """A Pointing'04 person on 640x480 frames (as a webcam sees them; see test_registrar.Person):
    looking ahead for 6 s (at the folder source's 10 fps), then 2 s at each pose the guided
    capture asks for, in its order (left, right, up, down: yaw < 0 is the person's own left)."""
    with (pointing / "manifest.csv").open() as fh:
        rows = [r for r in csv.DictReader(fh) if r["identity"] == identity and r["series"] == "2"]
    images = {(int(r["yaw"]), int(r["pitch"])): pointing / r["path"] for r in rows}
    look = {"front": (0, 0), "left": (-30, 0), "right": (30, 0), "up": (0, 30), "down": (0, -30)}
    script = [("front", 60), ("left", 20), ("right", 20), ("up", 20), ("down", 20)]
    folder.mkdir(parents=True)
    n = 0
    for pose, frames in script:
        want = look[pose]
        key = min(images, key=lambda k: abs(k[0] - want[0]) + abs(k[1] - want[1]))
        img = read_image(images[key])
        frame = np.full((480, 640, 3), 60, np.uint8)
        frame[120 : 120 + img.shape[0], 128 : 128 + img.shape[1]] = img
        encoded = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
        for _ in range(frames):
            n += 1
            (folder / f"{n:04d}_{pose}.jpg").write_bytes(encoded)
    return folder


def blank_folder(folder: Path) -> Path:
    folder.mkdir(parents=True)
    cv2.imwrite(str(folder / "blank.jpg"), np.full((480, 640, 3), 128, np.uint8))
    return folder


# == the pair of gates on the clip ===============================================================
class Pair:
    def __init__(self, pg: PostgresServer, url: str, a: Gate, b: Gate, enrol: Path) -> None:
        self.pg = pg
        self.url = url
        self.a = a
        self.b = b
        self.photo = enrol / f"{PERSON}.png"

    def diagnose(self) -> contextlib.AbstractContextManager[None]:
        return diagnose(self.a, self.b, pg=self.pg)

    def find(self) -> str | None:
        """Lin's person id in the shared store, if enrolled."""
        found = [p["person_id"] for p in self.a.json("/api/persons") if p["name"] == PERSON]
        return found[0] if found else None

    def enrol_at_a(self) -> str:
        r = self.a.enrol(PERSON, [self.photo])
        assert r.status_code == 201, r.text
        person_id: str = r.json()["person_id"]
        return person_id


@pytest.fixture(scope="module")
def pair(
    tmp_path_factory: pytest.TempPathFactory,
    shared_data: Path,
    faceplugin_dir: Path,
    pg_server: PostgresServer,
) -> Iterator[Pair]:
    folder = tmp_path_factory.mktemp("gates_e2e")
    url = pg_server.database()
    clip = shared_data / "video" / CLIP
    a = Gate("a", folder / "a", clip, url)
    b = Gate("b", folder / "b", clip, url)
    try:
        with diagnose(a, b, pg=pg_server):
            # Started together on a new database: one creates the schema, the other waits for
            # it (the migration lock) and finds it there.
            a.spawn()
            b.spawn()
            a.wait_ready()
            b.wait_ready()
        yield Pair(pg_server, url, a, b, shared_data / "video" / "enrol")
    finally:
        for gate in (a, b):
            with contextlib.suppress(AssertionError):
                gate.stop(10)


# == scenarios ===================================================================================
def test_enrolled_at_a_is_recognised_at_b_and_in_the_shared_history(pair: Pair) -> None:
    a, b = pair.a, pair.b
    with pair.diagnose():
        assert pair.find() is None
        feed = Feed(b)
        try:
            mark = feed.mark()
            person_id = pair.enrol_at_a()
            # b's own index follows (NOTIFY) well within a clip loop.
            wait_until("b's gallery holds the person", lambda: b.indexed_persons() == 1, 5)
            seen = feed.wait_for(of("person_recognized", person_id=person_id), 30, after=mark)
        finally:
            feed.close()
        data = seen["data"]
        assert data["gate_id"] == "b" and data["name"] == PERSON, data
        assert data["similarity"] >= data["threshold"]
        # One history: gate a reads gate b's event, under gate b, by b's numbers or by time.

        def in_a_history(query: str) -> list[Message]:
            """b's event among the events a's API answers (each gate numbers its own)."""
            rows: list[Message] = a.json(f"/api/events?{query}")
            key = (seen["type"], "b", data["seq"])
            return [r for r in rows if (r["type"], r["data"]["gate_id"], r["data"]["seq"]) == key]

        rows = wait_until(
            "b's event in the history a reads",
            lambda: in_a_history(f"gate=b&type=person_recognized&person_id={person_id}"),
            5,
        )
        assert rows[0] == seen, "the history's copy differs from the live event"
        assert in_a_history("gate=all&type=person_recognized&limit=1000") == [seen]
        # a's own events (no `gate`) are a's only.
        own = a.json("/api/events?limit=1000")
        assert {r["data"]["gate_id"] for r in own} == {"a"}
        gates = {g["gate"]: g for g in a.json("/api/gates")}
        assert gates["a"]["this"] and not gates["b"]["this"] and gates["b"]["events"] > 0
        # Both gates' person lists say where he was last seen.
        detail = b.json(f"/api/persons/{person_id}")
        assert detail["last_seen"] is not None and detail["last_seen_gate"] in {"a", "b"}
        # b followed a's enrolment change by change, at a's generation, no password shown.
        store = b.json("/api/stats")["store"]
        assert store["kind"] == "postgresql" and store["changes_followed"] >= 1, store
        assert store["generation"] == a.json("/api/stats")["store"]["generation"] >= 1


def test_erased_at_b_is_gone_at_a(pair: Pair) -> None:
    a, b = pair.a, pair.b
    with pair.diagnose():
        person_id = pair.find() or pair.enrol_at_a()
        wait_until("b's gallery holds the person", lambda: b.indexed_persons() == 1, 5)
        # a recognises him (its clip shows him too) before the erasure.
        feed = Feed(a)
        try:
            (face,) = a.identify(pair.photo)
            assert face["decision"] == "known" and face["person_id"] == person_id, face
            feed.wait_for(of("person_recognized", person_id=person_id), 30)
            wait_until(
                "his events in the history",
                lambda: a.json(f"/api/events?gate=all&person_id={person_id}"),
                5,
            )

            r = b.delete(person_id)
            assert r.status_code == 200 and r.json()["deleted"], r.text
            erased_at = time.time()
            assert r.json().get("erased_on_disk") is True, r.json()
            # Gone from the list at once (one store) and from a's own index within a second.
            assert person_id not in a.person_ids()
            assert person_id not in b.person_ids()
            wait_until("a's gallery forgets him", lambda: a.indexed_persons() == 0, 3, every=0.1)
            (face,) = a.identify(pair.photo)
            assert face["decision"] == "unknown" and face["person_id"] is None, face
            assert a.get(f"/api/persons/{person_id}").status_code == 404
            # a greets him no more: a whole loop of the clip (he is on stage ~3 s into each).
            time.sleep(11.5)
            late = [
                (at - erased_at, m["data"]["gate_id"])
                for at, m in feed.since()
                if m["type"] == "person_recognized"
                and m["data"]["person_id"] == person_id
                and at > erased_at + 1.5
            ]
            assert late == [], f"recognised after the erasure (seconds after, gate): {late}"
        finally:
            feed.close()
        # His events are gone from the one history, whichever gate wrote them; nothing written
        # after the erasure brought any back.
        for gate in (a, b):
            left = gate.json(f"/api/events?gate=all&person_id={person_id}&limit=1000")
            shown = [(r["type"], r["data"]["gate_id"], r["data"]["timestamp"]) for r in left]
            assert left == [], f"events of the erased person in the history: {shown}"
        with Store.open(a.folder / "inspect", readonly=True, url=pair.url) as store:
            assert store.find_person(person_id) is None
            assert store.vectors(person_id).ids.size == 0
            assert store.events(gate=None, person_id=person_id, limit=1000) == []
            assert next(e.action for e in store.audit() if e.person_id == person_id) == "delete"


class HealthWatch:
    """Polls each gate's health on a thread of its own (`with HealthWatch(a, b) as watch:`): an
    answer other than 200, or none within `timeout` seconds, is a failure."""

    def __init__(self, *gates: Gate, timeout: float = 3.0) -> None:
        self.gates = gates
        self.timeout = timeout
        self.failures: list[str] = []
        self.polls = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="health", daemon=True)

    def _watch(self) -> None:
        while not self._stop.is_set():
            for gate in self.gates:
                t0 = time.monotonic()
                try:
                    code = gate.health(timeout=self.timeout)
                    if code != 200:
                        self.failures.append(f"{gate.id}: {gate.health_path} {code}")
                except httpx.HTTPError as exc:
                    took = time.monotonic() - t0
                    self.failures.append(
                        f"{gate.id}: {gate.health_path} {type(exc).__name__} after {took:.1f} s"
                    )
                self.polls += 1
            self._stop.wait(0.2)

    def __enter__(self) -> HealthWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(2 * self.timeout + 5)


def wrote_after(gate: Gate, since: float) -> bool:
    """Whether the gate's own latest event in the history happened after `since` (unix s)."""
    rows = gate.json(f"/api/events?before={2**63 - 1}&limit=1")
    return bool(rows) and datetime.fromisoformat(rows[0]["data"]["timestamp"]).timestamp() > since


def test_postgres_restart_both_gates_reconnect_and_resync(pair: Pair) -> None:
    a, b = pair.a, pair.b
    with pair.diagnose():
        if (old := pair.find()) is not None:  # run alone: start from no Lin
            assert a.delete(old).status_code == 200
            wait_until("b forgets him", lambda: b.indexed_persons() == 0, 5)
        with HealthWatch(a, b) as watch:
            time.sleep(1.0)
            t0 = time.monotonic()
            pair.pg.restart()
            back_at = time.time()
            down = time.monotonic() - t0
            # Enrolled at a once the server is back: a's pool replaces its broken connections.
            r = wait_until(
                "enrolment at a after the restart",
                lambda: (resp := a.enrol(PERSON, [pair.photo])).status_code == 201 and resp,
                10,
                every=0.5,
            )
            person_id = r.json()["person_id"]
            assert person_id in b.person_ids()
            # b's follower reconnected and resynced: its own index has him.
            t_enrolled = time.monotonic()
            wait_until("b's gallery holds the person", lambda: b.indexed_persons() == 1, 15)
            followed_in = time.monotonic() - t_enrolled
            (face,) = b.identify(pair.photo)
            assert face["decision"] == "known" and face["person_id"] == person_id, face
            feed = Feed(b)
            try:
                feed.wait_for(of("person_recognized", person_id=person_id), 30)
            finally:
                feed.close()
            # The history writers came back too: each gate's events after the restart.
            for gate in (a, b):
                wait_until(
                    f"gate {gate.id}'s history written after the restart",
                    functools.partial(wrote_after, gate, back_at),
                    15,
                )
        print(
            f"PostgreSQL restarted in {down:.1f} s; b's index had the new person"
            f" {followed_in:.1f} s after the enrolment; {watch.polls} health polls"
        )
        assert watch.polls > 10
        assert watch.failures == [], f"health failures during the restart: {watch.failures[:10]}"
        assert a.alive() and b.alive()


def test_postgres_down_for_seconds_the_gates_keep_serving(pair: Pair) -> None:
    """PostgreSQL away for 5 s (not a quick restart): the gates keep answering (the health
    check, the WebSocket) while events happen (an operator's reset publishes one at each gate,
    besides what the clip brings), and follow each other again after."""
    a, b = pair.a, pair.b
    with pair.diagnose():
        person_id = pair.find() or pair.enrol_at_a()
        wait_until("b's gallery holds the person", lambda: b.indexed_persons() == 1, 5)
        with HealthWatch(a, b) as watch:
            time.sleep(1.0)
            feed = Feed(b)
            try:
                pair.pg.stop()
                try:
                    mark = feed.mark()
                    time.sleep(1.0)
                    resets = [gate.reset() for gate in (a, b)]
                    # What needs the store says so at once (503, retry), and nothing hangs.
                    t0 = time.monotonic()
                    away = [a.get("/api/persons").status_code, b.get("/api/events").status_code]
                    waited = time.monotonic() - t0
                    time.sleep(3.0)
                    during = [m["type"] for _, m in feed.since(mark)]
                finally:
                    pair.pg.start()
                back_at = time.time()
            finally:
                feed.close()
            # Afterwards: an erasure at a reaches b's index (b's follower is back).
            r = wait_until(
                "erasure at a after the outage",
                lambda: (resp := a.delete(person_id)).status_code == 200 and resp,
                10,
                every=0.5,
            )
            assert r.json()["deleted"], r.text
            wait_until("b forgets him", lambda: b.indexed_persons() == 0, 15)
            for gate in (a, b):
                wait_until(
                    f"gate {gate.id}'s history written after the outage",
                    functools.partial(wrote_after, gate, back_at),
                    15,
                )
        print(
            f"during the outage: resets answered {resets}, b sent {during};"
            f" {watch.polls} health polls"
        )
        assert watch.failures == [], f"health failures during the outage: {watch.failures[:10]}"
        assert away == [503, 503], f"store-backed requests during the outage: {away}"
        assert waited < 8.0, f"store-backed requests took {waited:.1f} s to fail"
        assert "system_ready" in during, "b's reset did not reach its WebSocket during the outage"
        assert a.alive() and b.alive()


def test_a_gate_killed_mid_registration_leaves_nothing_half_written(
    tmp_path: Path,
    shared_data: Path,
    faceplugin_dir: Path,
    pg_server: PostgresServer,
    pg_url: str,
) -> None:
    frames = pose_folder(shared_data / "pose" / "pointing04", tmp_path / "frames")
    quick = {"FACEGATE_ENGINE__STABLE_SECONDS": "0.5"}
    a = Gate("a", tmp_path / "a", frames, pg_url, quick)
    b = Gate("b", tmp_path / "b", blank_folder(tmp_path / "blank"), pg_url)
    lin = shared_data / "video" / "enrol" / f"{PERSON}.png"
    try:
        with diagnose(a, b, pg=pg_server):
            b.spawn().wait_ready()  # b first: a's stranger is offered soon after a starts
            a.spawn().wait_ready()
            feed = Feed(a)
            try:
                # The stranger is offered (maybe before the feed connected: then the prompt
                # is open all the same), and the operator approves.
                wait_until(
                    "a offers the stranger for registration",
                    lambda: (
                        any(m["type"] == "unknown_person_detected" for _, m in feed.since())
                        or a.json("/get_user_response")["waiting_for_user_response"]
                    ),
                    30,
                )
                feed.send("registration_decision", {"register": True, "name": REGISTERING})
                feed.wait_for(of("registration_start"), 10)
                feed.wait_for(of("registration_angle_instruction", angle_name="front"), 10)
                # The front pose captured (its embeddings held by the registrar, not stored)
                # and the next pose asked for: kill it now.
                feed.wait_for(of("registration_angle_complete", angle_name="front"), 20)
                feed.wait_for(of("registration_angle_instruction", angle_name="left"), 5)
                a.kill()
            finally:
                feed.close()
            kinds = [m["type"] for _, m in feed.since()]
            assert "registration_complete" not in kinds and "registration_failed" not in kinds
            assert a.returncode == -signal.SIGKILL

            # Nothing of the registration in the database: no person, no embedding, no
            # thumbnail, no enrolment audited, no typed name in the history, no lock held.
            with Store.open(tmp_path / "inspect", readonly=True, url=pg_url) as store:
                assert store.persons() == []
                assert store.embedding_count() == 0
                assert [e.action for e in store.audit() if e.action == "enrol"] == []
                assert all(REGISTERING not in e.data for e in store.events(gate=None, limit=1000))
            import psycopg

            with psycopg.connect(pg_url, autocommit=True) as conn:
                assert conn.execute("SELECT count(*) FROM thumbnails").fetchone() == (0,)
                held = conn.execute(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
                ).fetchone()
                assert held == (0,), "an advisory lock outlived the killed gate"

            # The other gate is unaffected: healthy, and enrols someone.
            assert b.alive() and b.health() == 200
            r = b.enrol(PERSON, [lin])
            assert r.status_code == 201, r.text
            person_id = r.json()["person_id"]
            assert b.indexed_persons() == 1

            # a starts again on the same data dir: the dead process's lock is no obstacle.
            a.spawn().wait_ready()
            assert a.health() == 200
            assert a.person_ids() == {person_id}
            assert a.indexed_persons() == 1
            (face,) = a.identify(lin)
            assert face["decision"] == "known" and face["person_id"] == person_id, face
            assert a.stop() == 0
    finally:
        for gate in (a, b):
            with contextlib.suppress(AssertionError):
                gate.stop(10)
