"""The MQTT bridge's own logic (server/mqtt.py) against a real Mosquitto started here, with the
gate's real bus, store, gallery, engine object and registrar (the engine is not run: events are
published on the bus as the engine would), and the engine's recognition switch with the real
models. The end-to-end tests with `facegate serve` are tests/test_mqtt_e2e.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiomqtt
import msgspec
import numpy as np
import pytest

from facegate import __version__
from facegate.events import (
    Access,
    Event,
    LivenessChallenge,
    LivenessPoseFeedback,
    LivenessResult,
    PersonLeftArea,
    PersonRecognized,
    RegistrationCancelled,
    RegistrationStart,
    SourceStatus,
    SystemReady,
    Tracks,
    UnknownPersonDetected,
    to_wire,
)
from facegate.identity.gallery import Gallery
from facegate.identity.store import NewEmbedding, Store
from facegate.live.bus import EventBus
from facegate.live.engine import Engine
from facegate.live.pipeline import BUS_CAPACITY
from facegate.live.registrar import Registrar
from facegate.live.registration import Phase
from facegate.live.sources import Frame
from facegate.server import homeassistant as ha
from facegate.server.homeassistant import Message, MqttConfig
from facegate.server.mqtt import MqttBridge, MqttConfigError, parse_url
from facegate.server.mqtt_outbox import Outbox
from facegate.server.mqtt_status import GateStatus, face_jpeg
from facegate.settings import GateSettings, MqttSettings, Settings
from fakes import NoFaces
from ports import free_port

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
HAVE_MOSQUITTO = os.access(MOSQUITTO, os.X_OK)
broker_needed = pytest.mark.skipif(
    not HAVE_MOSQUITTO, reason="mosquitto is not installed (`make setup` installs it)"
)
LOGGER = "facegate.server.mqtt"
T = TypeVar("T")


# -- a real broker -----------------------------------------------------------------------------


class Mosquitto:
    """Mosquitto on 127.0.0.1:`port` (no persistence: a restart forgets everything retained),
    anonymous, or with a password file for `users`."""

    def __init__(self, folder: Path, users: dict[str, str] | None = None) -> None:
        self.folder = folder
        self.port = free_port()
        self.users = users
        self.log_path = folder / "mosquitto.log"
        self.proc: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)
        lines = [f"listener {self.port} 127.0.0.1", "persistence false", "log_dest stderr"]
        lines += ["log_type all", "connection_messages true"]
        if os.geteuid() == 0:
            lines.append("user root")  # else it switches to `mosquitto`, who cannot read tmp
        if users:
            passwd = folder / "passwd"
            for i, (user, password) in enumerate(users.items()):
                create = ["-c"] if i == 0 else []
                subprocess.run(
                    ["mosquitto_passwd", "-b", *create, str(passwd), user, password],
                    check=True,
                    capture_output=True,
                )
            lines += ["allow_anonymous false", f"password_file {passwd}"]
        else:
            lines.append("allow_anonymous true")
        self.conf = folder / "mosquitto.conf"
        self.conf.write_text("\n".join(lines) + "\n")

    def url(self, user: str | None = None, password: str | None = None) -> str:
        auth = f"{user}:{password}@" if user is not None else ""
        return f"mqtt://{auth}127.0.0.1:{self.port}"

    def start(self) -> Mosquitto:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [MOSQUITTO, "-c", str(self.conf)], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 10
        while True:
            assert self.proc.poll() is None, self.log()
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                return self
            assert time.monotonic() < deadline, f"mosquitto did not listen:\n{self.log()}"
            time.sleep(0.02)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    if not HAVE_MOSQUITTO:
        pytest.skip("mosquitto is not installed (`make setup` installs it)")
    b = Mosquitto(tmp_path / "broker").start()
    try:
        yield b
    finally:
        b.stop()


# -- a real subscriber (on the test's loop) ------------------------------------------------------
@dataclass
class Heard:
    topic: str
    payload: bytes
    retain: bool

    def json(self) -> Any:
        return json.loads(self.payload)


@dataclass
class Listener:
    port: int
    topics: tuple[str, ...] = ("#",)
    messages: list[Heard] = field(default_factory=list)
    _client: aiomqtt.Client | None = None
    _task: asyncio.Task[None] | None = None
    _new: asyncio.Event = field(default_factory=asyncio.Event)

    async def __aenter__(self) -> Listener:
        self._client = aiomqtt.Client("127.0.0.1", self.port)
        await self._client.__aenter__()
        for topic in self.topics:
            await self._client.subscribe(topic, qos=1)
        self._task = asyncio.create_task(self._read(self._client))
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None and self._client is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
            await self._task
        with contextlib.suppress(aiomqtt.MqttError):
            await self._client.__aexit__(None, None, None)

    async def _read(self, client: aiomqtt.Client) -> None:
        async for m in client.messages:
            payload = m.payload if isinstance(m.payload, bytes) else str(m.payload).encode()
            self.messages.append(Heard(m.topic.value, payload, bool(m.retain)))
            self._new.set()

    def mark(self) -> int:
        return len(self.messages)

    def on(self, topic: str, after: int = 0) -> list[Heard]:
        return [m for m in self.messages[after:] if m.topic == topic]

    async def wait_for(
        self,
        topic: str,
        test: Callable[[Heard], bool] | None = None,
        *,
        after: int = 0,
        timeout: float = 5.0,
    ) -> Heard:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            for m in self.messages[after:]:
                if m.topic == topic and (test is None or test(m)):
                    return m
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                seen = sorted({m.topic for m in self.messages[after:]})
                raise TimeoutError(f"nothing on {topic} in {timeout} s; heard {seen}")
            self._new.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._new.wait(), min(left, 0.2))


async def retained(port: int, topic: str = "#", settle: float = 0.5) -> dict[str, bytes]:
    """What a NEW subscriber is given as retained."""
    async with Listener(port, (topic,)) as listener:
        await asyncio.sleep(settle)
        return {m.topic: m.payload for m in listener.messages if m.retain}


async def publish(port: int, topic: str, payload: bytes | str, retain: bool = False) -> None:
    async with aiomqtt.Client("127.0.0.1", port) as client:
        await client.publish(topic, payload, qos=1, retain=retain)


async def eventually(check: Callable[[], T | None], timeout: float = 5.0, what: str = "") -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.05)


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())


# -- the gate around the bridge ----------------------------------------------------------------
def vector(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(512).astype(np.float32)
    return v / np.linalg.norm(v)


@dataclass
class Gate:
    settings: Settings
    store: Store
    gallery: Gallery
    bus: EventBus
    engine: Engine
    registrar: Registrar
    bridge: MqttBridge
    ids: dict[str, str]

    @property
    def cfg(self) -> MqttConfig:
        return ha.mqtt_config(self.settings)

    def topic(self, name: str) -> str:
        return f"{self.cfg.topic_prefix}/{self.cfg.gate_id}/{name}"

    def recognized(
        self, name: str, track: int = 1, similarity: float = 0.71, access: Access = "granted"
    ) -> Event:
        return self.bus.publish(
            PersonRecognized(
                person_id=self.ids[name],
                name=name,
                message=f"Welcome, {name}!",
                similarity=similarity,
                threshold=0.44,
                confidence=similarity,
                distance=round(1 - similarity, 4),
                track_id=track,
                bbox=[200.0, 100.0, 300.0, 220.0],
                frame_time=1.0,
                access=access,
            )
        )

    def challenge(self, name: str, track: int = 1) -> Event:
        """The head-turn challenge and one pose feedback, the name in their texts."""
        self.bus.publish(
            LivenessChallenge(
                person_id=self.ids[name],
                name=name,
                direction="right",
                instruction=f"{name}, turn your head to your right",
                message=f"{name}, turn your head to your right, then back",
                target_yaw=[-90.0, -25.0],
                target_pitch=[-30.0, 30.0],
                timeout_seconds=8.0,
                track_id=track,
            )
        )
        return self.bus.publish(
            LivenessPoseFeedback(
                person_id=self.ids[name],
                direction="right",
                phase="turn",
                yaw=-4.0,
                pitch=0.0,
                target_yaw=[-90.0, -25.0],
                target_pitch=[-30.0, 30.0],
                seconds_left=7.0,
                hint=f"{name}, a little more to your right",
                track_id=track,
            )
        )

    def verdict(
        self, name: str | None, passed: bool, access: Access, reason: str, track: int = 1
    ) -> Event:
        """The liveness_result of the challenge on `track` (`name` None: an unknown face)."""
        who = name or "Stranger"
        return self.bus.publish(
            LivenessResult(
                person_id=self.ids[name] if name else None,
                name=name,
                passed=passed,
                reason=reason,
                message=f"{who} passed" if passed else f"{who} failed the liveness check",
                residual=0.3 if passed else 0.04,
                cutoff=0.128,
                seconds=2.2,
                access=access,
                next_step="" if passed else f"{who}: face the camera and try again",
                track_id=track,
            )
        )

    def left(self, name: str | None, track: int = 1) -> Event:
        person = self.ids[name] if name else None
        return self.bus.publish(PersonLeftArea(person_id=person, name=name, track_id=track))

    def stranger(self, track: int = 2) -> Event:
        return self.bus.publish(
            UnknownPersonDetected(
                threshold=0.44, enrolled=1, similarity=0.2, track_id=track, bbox=[10, 10, 90, 100]
            )
        )


@contextlib.asynccontextmanager
async def gate(
    tmp_path: Path,
    url: str,
    persons: tuple[str, ...] = ("Ada Lovelace",),
    gate_id: str = "gate",
    **mqtt: Any,
) -> AsyncIterator[Gate]:
    settings = Settings(gate=GateSettings(id=gate_id), mqtt=MqttSettings(url=url, **mqtt))
    store = Store.open(tmp_path / "data")
    gallery = Gallery.open(store, settings)
    ids = {
        name: gallery.create_person(name, [NewEmbedding(vector(i))], actor="test").id
        for i, name in enumerate(persons)
    }
    bus = EventBus(capacity=BUS_CAPACITY, gate_id=gate_id)  # as the pipeline's
    bus.attach(asyncio.get_running_loop())
    engine = Engine(NoFaces(), gallery, settings, bus.publish_threadsafe)  # type: ignore[arg-type]
    registrar = Registrar(gallery, settings, bus.publish, focus=engine.focus)
    bridge = MqttBridge(
        settings,
        bus=bus,
        gallery=gallery,
        store=store,
        engine=engine,
        unknowns=engine.unknowns,
        monitor=engine.monitor,
        registrar=registrar,
    )
    await bridge.start()
    try:
        yield Gate(settings, store, gallery, bus, engine, registrar, bridge, ids)
    finally:
        await bridge.stop()
        bus.close()
        store.close()


def mqtt_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


# == pure parts ==================================================================================
def test_parse_url_defaults_ports_decodes_credentials_and_masks_the_password() -> None:
    plain = parse_url("mqtt://broker.lan")
    assert (plain.tls, plain.host, plain.port, plain.username, plain.password) == (
        False,
        "broker.lan",
        1883,
        None,
        None,
    )
    tls = parse_url("mqtts://gate:p%40ss%2Fw0rd@10.0.0.2")
    assert (tls.tls, tls.port, tls.username, tls.password) == (True, 8883, "gate", "p@ss/w0rd")
    assert "p%40ss" not in tls.masked and "***" in tls.masked
    assert parse_url("mqtt://[::1]:1884").host == "::1"
    for bad in ("http://host", "mqtt://", "mqtt://host:99999", "mqtt://host/path", "host:1883"):
        with pytest.raises(MqttConfigError):
            parse_url(bad)
    with pytest.raises(MqttConfigError) as refused:
        parse_url("tcp://user:hunter2@host")
    assert "hunter2" not in str(refused.value)


def msg(topic: str, payload: str = "x", retain: bool = False) -> Message:
    return Message(topic, payload.encode(), retain, 1)


def drain(box: Outbox) -> list[tuple[str, str]]:
    out = []
    while (entry := box.pop()) is not None:
        out.append((entry.message.topic, entry.message.payload.decode()))
    return out


def test_outbox_coalesces_retained_by_topic_and_drops_the_oldest_events_only() -> None:
    box = Outbox(limit=3)
    box.put(msg("state", "idle", retain=True))
    for i in range(5):
        box.put(msg("events", str(i)))
    box.put(msg("state", "recognized", retain=True))  # replaces "idle", in its own place
    box.put(msg("people/ada", "1", retain=True))
    assert box.dropped == 2 and len(box) == 5
    assert drain(box) == [
        ("events", "2"),
        ("events", "3"),
        ("events", "4"),
        ("state", "recognized"),
        ("people/ada", "1"),
    ]
    # However many updates of one retained topic wait, only the latest goes out.
    for i in range(10_000):
        box.put(msg("state", str(i), retain=True))
    assert box.dropped == 2 and drain(box) == [("state", "9999")]


def test_outbox_urgent_first_and_requeue_keeps_the_place_unless_superseded() -> None:
    box = Outbox(limit=100)
    box.put(msg("events", "a"))
    box.put(msg("state", "old", retain=True))
    box.put_all([msg("availability", "online", True), msg("state", "now", True)], urgent=True)
    first = box.pop()
    assert first is not None and first.message.topic == "availability"
    box.requeue(first)  # the publication failed: first again
    assert drain(box) == [("availability", "online"), ("state", "now"), ("events", "a")]
    box.put(msg("state", "1", retain=True))
    failed = box.pop()
    assert failed is not None
    box.put(msg("state", "2", retain=True))
    box.requeue(failed)  # a newer one came meanwhile: the failed one is not sent again
    assert drain(box) == [("state", "2")]
    box.put(msg("events", "b"))
    event = box.pop()
    assert event is not None
    box.requeue(event)
    assert drain(box) == [("events", "b")]


def recognized(person: str, name: str, track: int, at: str) -> PersonRecognized:
    return PersonRecognized(
        person_id=person,
        name=name,
        message="",
        similarity=0.6,
        threshold=0.44,
        confidence=0.6,
        distance=0.4,
        track_id=track,
        timestamp=at,
    )


def test_gate_status_follows_presence_strangers_and_registration() -> None:
    status = GateStatus("2025-01-01T00:00:00.000+00:00")
    t = [f"2025-01-01T00:00:0{i}.000+00:00" for i in range(10)]
    assert status.key.state == "idle"
    assert status.apply(
        UnknownPersonDetected(threshold=0.44, enrolled=1, track_id=5, timestamp=t[1])
    )
    assert status.key == ("stranger", None, 5) and status.since == t[1]
    assert status.apply(recognized("p1", "Ada", 1, t[2]))
    assert status.key == ("recognized", "p1", None)
    assert not status.apply(SourceStatus(state="connected", source="x", message="", timestamp=t[3]))
    assert status.apply(RegistrationStart(message="", total_angles=5, angles=[], timestamp=t[3]))
    assert status.key.state == "registering"
    assert status.apply(RegistrationCancelled(message="", reason="timeout", timestamp=t[4]))
    assert status.key == ("recognized", "p1", None) and status.since == t[4]
    body = json.loads(status.message(MqttConfig()).payload)
    assert body == {
        "state": "recognized",
        "person": "Ada",
        "person_id": "p1",
        "similarity": 0.6,
        "access": "granted",
        "since": t[4],
        "gate": "gate",
    }
    assert status.apply(PersonLeftArea(person_id="p1", name="Ada", track_id=1, timestamp=t[5]))
    assert status.key == ("stranger", None, 5)
    assert status.apply(PersonLeftArea(track_id=5, timestamp=t[6]))
    assert status.key.state == "idle"
    assert not status.apply(SystemReady(timestamp=t[7]))
    # An erased person leaves the state at once.
    status.apply(recognized("p2", "Bob", 3, t[8]))
    assert status.forget("p2", t[9]) and status.key.state == "idle"
    names_off = json.loads(status.message(MqttConfig(publish_names=False)).payload)
    assert names_off["person"] is None


def result(person: str | None, passed: bool, access: Access, track: int, at: str) -> LivenessResult:
    reason = "passed" if passed else "planar"
    return LivenessResult(
        person_id=person,
        passed=passed,
        reason=reason,
        message="",
        cutoff=0.128,
        seconds=2.0,
        access=access,
        track_id=track,
        timestamp=at,
    )


def test_gate_status_access_waits_for_the_liveness_verdict() -> None:
    status = GateStatus("2025-01-01T00:00:00.000+00:00")
    t = [f"2025-01-01T00:00:0{i}.000+00:00" for i in range(10)]

    def body() -> dict[str, Any]:
        payload: dict[str, Any] = json.loads(status.message(MqttConfig()).payload)
        return payload

    pending = msgspec.structs.replace(recognized("p1", "Ada", 1, t[1]), access="pending")
    assert status.apply(pending)
    assert (body()["state"], body()["access"], body()["since"]) == ("recognized", "pending", t[1])
    # Only the verdict grants: the state message changes, `since` stays.
    assert status.apply(result("p1", True, "granted", 1, t[2]))
    assert (body()["access"], body()["since"]) == ("granted", t[1])
    assert not status.apply(result("p1", True, "granted", 1, t[3]))  # the same: nothing new
    # Bob, shown now, is denied; Ada keeps her own verdict for when she is shown again.
    bob = msgspec.structs.replace(recognized("p2", "Bob", 2, t[4]), access="pending")
    assert status.apply(bob)
    assert (body()["person_id"], body()["access"]) == ("p2", "pending")
    assert status.apply(result("p2", False, "denied", 2, t[5]))
    assert (body()["person_id"], body()["access"]) == ("p2", "denied")
    assert status.apply(PersonLeftArea(person_id="p2", track_id=2, timestamp=t[6]))
    assert (body()["person_id"], body()["access"]) == ("p1", "granted")
    # Verdicts for nobody present (an unknown face, someone who left) change nothing.
    assert not status.apply(result(None, True, "denied", 9, t[7]))
    assert not status.apply(result("p2", True, "granted", 2, t[7]))
    assert status.access == {"p1": "granted"}
    # A new greeting is pending again until its own verdict.
    again = msgspec.structs.replace(recognized("p1", "Ada", 3, t[8]), access="pending")
    assert status.apply(again)
    assert body()["access"] == "pending"
    assert status.apply(PersonLeftArea(person_id="p1", track_id=3, timestamp=t[9]))
    assert (body()["state"], body()["access"]) == ("idle", None)


def test_face_jpeg_crops_the_box_with_a_margin_and_bounds_its_size() -> None:
    image = np.zeros((1080, 1920, 3), np.uint8)
    image[400:800, 800:1200] = 200
    jpeg = face_jpeg(image, [800.0, 400.0, 1200.0, 800.0])
    assert jpeg is not None and jpeg[:3] == b"\xff\xd8\xff"
    import cv2

    decoded = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert max(decoded.shape[:2]) == 320
    assert face_jpeg(image, [5000.0, 5000.0, 5100.0, 5100.0]) is None  # outside the frame
    assert face_jpeg(image, None) is None


# == against Mosquitto =============================================================================
@broker_needed
def test_connect_publishes_discovery_state_and_every_event(
    broker: Mosquitto, tmp_path: Path
) -> None:
    async def scenario() -> None:
        # The gate's id (gate.id) names its topics, client id and device.
        async with Listener(broker.port) as sub, gate(tmp_path, broker.url(), gate_id="porch") as g:
            t = g.topic
            assert t("availability") == "facegate/porch/availability"
            assert g.bridge.identifier == "facegate-facegate-porch"
            online = await sub.wait_for(t("availability"))
            assert online.payload == b"online"
            (person,) = ha.person_discovery(g.cfg, g.ids["Ada Lovelace"], "Ada Lovelace")
            await sub.wait_for(person.topic)
            await sub.wait_for(t("recognition"), lambda m: m.payload == b"ON")
            idle = await sub.wait_for(t("state"))
            assert idle.json()["state"] == "idle"
            configs = {m.topic: m.payload for m in sub.messages if m.topic.endswith("/config")}
            expected = [*ha.device_discovery(g.cfg, __version__), person]
            assert configs == {m.topic: m.payload for m in expected}
            assert all("/facegate_porch/" in topic for topic in configs)
            # A frame, so the snapshot is cut from it.
            frame = np.full((480, 640, 3), 120, np.uint8)
            g.engine.process(Frame(image=frame, number=0, captured_at=0.0, position=None))
            mark = sub.mark()
            greeted = g.recognized("Ada Lovelace")
            event = await sub.wait_for(t("events"), after=mark)
            assert event.payload == to_wire(greeted) and not event.retain
            assert event.json()["data"]["gate_id"] == "porch"
            state = await sub.wait_for(t("state"), after=mark)
            assert state.json()["state"] == "recognized"
            assert state.json()["person"] == "Ada Lovelace"
            seen = await sub.wait_for("facegate/people/ada_lovelace", after=mark)
            assert seen.json()["gate"] == "porch" and seen.json()["similarity"] == 0.71
            jpeg = await sub.wait_for(t("snapshot"), after=mark)
            assert jpeg.payload[:3] == b"\xff\xd8\xff"
            # Every event goes out in order, the registration ones too.
            mark = sub.mark()
            sent = [g.stranger(), g.left(None, 2), g.left("Ada Lovelace")]
            await sub.wait_for(t("state"), lambda m: m.json()["state"] == "idle", after=mark)
            await eventually(lambda: len(sub.on(t("events"), mark)) >= 3)
            assert [m.payload for m in sub.on(t("events"), mark)] == [to_wire(e) for e in sent]
            states = [m.json()["state"] for m in sub.on(t("state"), mark)]
            assert states == ["idle"]  # Ada was there all along: recognized, then idle
        snap = await retained(broker.port)
        assert snap[t("availability")] == b"offline"  # graceful stop
        assert json.loads(snap[t("state")])["state"] == "idle"
        assert snap["facegate/people/ada_lovelace"]
        assert sum(topic.endswith("/config") for topic in snap) == 8

    run(scenario())


@broker_needed
def test_broker_away_never_blocks_the_bus_and_queued_messages_go_out_later(
    broker: Mosquitto, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With the broker down the engine's hand-off to the bus stays as fast as ever; the
    outbox keeps the newest `queue` events and every retained topic; once the broker is
    back it connects, republishes and sends what waited."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    broker.stop()

    async def scenario() -> None:
        async with gate(tmp_path, broker.url(), queue=10, reconnect_max_seconds=1.0) as g:
            await eventually(
                lambda: any("cannot connect" in line for line in mqtt_lines(caplog)),
                what="a line about the broker being away",
            )
            # The engine thread hands over many events while nobody can take them.
            done = threading.Event()
            took: list[float] = []

            def engine_thread() -> None:
                t0 = time.perf_counter()
                for i in range(2000):
                    g.bus.publish_threadsafe(PersonLeftArea(track_id=1000 + i))
                took.append(time.perf_counter() - t0)
                done.set()

            threading.Thread(target=engine_thread).start()
            await eventually(done.is_set)
            assert took[0] < 0.5, took
            g.recognized("Ada Lovelace")
            await eventually(lambda: g.bridge.dropped >= 1991, what="events dropped")
            await asyncio.sleep(2.5)  # a few more attempts: still one line
            assert sum("cannot connect" in line for line in mqtt_lines(caplog)) == 1
            assert not g.bridge.connected
            broker.start()
            await eventually(lambda: g.bridge.connected and not len(g.bridge.outbox), 10)
            snap = await retained(broker.port)
            t = g.topic
            assert snap[t("availability")] == b"online"
            assert json.loads(snap[t("state")])["state"] == "recognized"
            assert snap[t("recognition")] == b"ON"
            assert any(topic.endswith("/config") for topic in snap)
            assert json.loads(snap["facegate/people/ada_lovelace"])["gate"] == "gate"
            assert g.bridge.dropped == 2001 - 10  # 2000 departures + the greeting
        lines = mqtt_lines(caplog)
        assert sum(line.startswith("mqtt: connected") for line in lines) == 1, lines

    run(scenario())


@broker_needed
def test_broker_restart_reconnects_and_republishes_retained_and_people(
    broker: Mosquitto, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)

    async def scenario() -> None:
        async with gate(tmp_path, broker.url(), reconnect_max_seconds=1.0) as g:
            t = g.topic
            await eventually(lambda: g.bridge.connected)
            g.recognized("Ada Lovelace")
            await eventually(lambda: not len(g.bridge.outbox) and g.bridge.published > 10)
            broker.stop()
            await eventually(lambda: not g.bridge.connected)
            g.left("Ada Lovelace")  # while away
            broker.start()  # nothing retained any more
            await eventually(lambda: g.bridge.connected, 10)
            wanted = {t("availability"), t("state"), t("recognition"), t("diagnostics")}
            wanted.add("facegate/people/ada_lovelace")
            snap: dict[str, bytes] = {}

            def complete() -> bool:
                return wanted <= set(snap)

            deadline = time.monotonic() + 10
            while not complete() and time.monotonic() < deadline:
                snap = await retained(broker.port)
            assert complete(), sorted(snap)
            assert json.loads(snap[t("state")])["state"] == "idle"
            assert sum(topic.endswith("/config") for topic in snap) == 8
        lines = mqtt_lines(caplog)
        assert sum("lost the connection" in line for line in lines) == 1, lines
        assert sum(line.startswith("mqtt: connected") for line in lines) == 2, lines

    run(scenario())


@broker_needed
def test_people_heard_newer_from_another_gate_are_not_overwritten(
    broker: Mosquitto, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with gate(tmp_path, broker.url(), reconnect_max_seconds=1.0) as g:
            await eventually(lambda: g.bridge.connected)
            g.recognized("Ada Lovelace")
            topic = "facegate/people/ada_lovelace"
            await eventually(lambda: not len(g.bridge.outbox))
            other = {
                "person_id": g.ids["Ada Lovelace"],
                "name": "Ada Lovelace",
                "gate": "back_door",
                "time": "2999-01-01T00:00:00.000+00:00",
                "similarity": 0.8,
            }
            await publish(broker.port, topic, json.dumps(other), retain=True)
            await eventually(
                lambda: (
                    json.loads(g.bridge.people[g.ids["Ada Lovelace"]].payload)["gate"]
                    == "back_door"
                )
            )
            # A restarted broker gets the newest last seen again: the other gate's.
            broker.stop()
            await eventually(lambda: not g.bridge.connected)
            broker.start()
            await eventually(lambda: g.bridge.connected, 10)
            await asyncio.sleep(2.0)
            snap = await retained(broker.port, "facegate/people/#")
            assert json.loads(snap[topic])["gate"] == "back_door"

    run(scenario())


@broker_needed
def test_recognition_switch_and_invalid_commands(
    broker: Mosquitto, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)

    async def scenario() -> None:
        async with Listener(broker.port) as sub, gate(tmp_path, broker.url()) as g:
            t = g.topic
            await sub.wait_for(t("recognition"), lambda m: m.payload == b"ON")
            mark = sub.mark()
            await publish(broker.port, t("recognition/set"), "off")
            echo = await sub.wait_for(t("recognition"), after=mark)
            assert echo.payload == b"OFF" and not g.engine.recognition_enabled
            for _ in range(3):
                await publish(broker.port, t("recognition/set"), "maybe")
            await asyncio.sleep(0.3)
            assert not g.engine.recognition_enabled
            mark = sub.mark()
            await publish(broker.port, t("recognition/set"), "ON")
            await sub.wait_for(t("recognition"), lambda m: m.payload == b"ON", after=mark)
            assert g.engine.recognition_enabled
            snap = await retained(broker.port, t("recognition"))
            assert snap[t("recognition")] == b"ON"
        said = [line for line in mqtt_lines(caplog) if "maybe" in line]
        assert len(said) == 1, said

    run(scenario())


@broker_needed
def test_registration_decisions_only_when_enabled(
    broker: Mosquitto, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    decision = json.dumps({"register": False})

    async def ask(g: Gate) -> None:
        g.registrar.on_event(g.stranger(track=7))
        assert g.registrar.state.phase is Phase.AWAITING_DECISION

    async def disabled() -> None:
        async with gate(tmp_path / "off", broker.url()) as g:
            await eventually(lambda: g.bridge.connected)
            await ask(g)
            for _ in range(2):
                await publish(broker.port, g.topic("registration/decision"), decision)
            await asyncio.sleep(0.5)
            assert g.registrar.state.phase is Phase.AWAITING_DECISION
            assert g.registrar.last_decision is None

    run(disabled())
    said = [line for line in mqtt_lines(caplog) if "registration_commands" in line]
    assert len(said) == 1, said
    caplog.clear()

    async def enabled() -> None:
        topic = "facegate/gate/registration/decision"
        await publish(broker.port, topic, decision, retain=True)  # left there: stale
        async with gate(tmp_path / "on", broker.url(), registration_commands=True) as g:
            await eventually(lambda: g.bridge.connected)
            await ask(g)
            await asyncio.sleep(0.3)  # the retained one arrives (ignored)
            await publish(broker.port, topic, b"", retain=True)  # cleared
            await publish(broker.port, topic, b'{"register": "yes"}')  # invalid: ignored
            await publish(broker.port, topic, b'{"register": true, "name": "\\u001b[31m"}')
            await asyncio.sleep(0.5)
            assert g.registrar.state.phase is Phase.AWAITING_DECISION
            await publish(broker.port, topic, decision)
            await eventually(lambda: g.registrar.state.phase is Phase.IDLE)
            assert g.registrar.last_decision == {"register": False, "name": None, "client": "mqtt"}

    run(enabled())
    lines = mqtt_lines(caplog)
    assert any("retained" in line for line in lines), lines
    assert any("expected" in line and "register" in line for line in lines), lines
    assert any("refused" in line for line in lines), lines  # the name with an escape
    assert any("register=False" in line for line in lines), lines


@broker_needed
def test_home_assistant_birth_republishes_but_a_retained_status_does_not(
    broker: Mosquitto, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with Listener(broker.port) as sub, gate(tmp_path, broker.url()) as g:
            t = g.topic
            await sub.wait_for(t("state"))
            await asyncio.sleep(0.3)
            mark = sub.mark()
            await publish(broker.port, "homeassistant/status", "online")
            await sub.wait_for(t("availability"), after=mark)
            await sub.wait_for(t("state"), after=mark)
            await sub.wait_for(t("recognition"), after=mark)
            await asyncio.sleep(0.3)
            again = {m.topic for m in sub.messages[mark:] if m.topic.endswith("/config")}
            assert len(again) == 8
            # A retained "online" (left by someone) does not count as a birth at connect.
            await publish(broker.port, "homeassistant/status", "online", retain=True)
            await asyncio.sleep(0.3)
            mark = sub.mark()
            g.bridge.on_message("homeassistant/status", b"online", retained=True)
            await asyncio.sleep(0.3)
            assert sub.on(t("availability"), mark) == []
            await publish(broker.port, "homeassistant/status", b"", retain=True)

    run(scenario())


@broker_needed
def test_erasure_renaming_and_stale_configs(broker: Mosquitto, tmp_path: Path) -> None:
    async def scenario() -> None:
        ghost = "homeassistant/sensor/facegate_gate/person_ghost/config"
        await publish(broker.port, ghost, json.dumps({"name": "ghost last gate"}), retain=True)
        persons = ("Ada Lovelace", "Bob")
        async with Listener(broker.port) as sub, gate(tmp_path, broker.url(), persons) as g:
            ada, bob = g.ids["Ada Lovelace"], g.ids["Bob"]
            ada_config = f"homeassistant/sensor/facegate_gate/person_{ada}/config"
            bob_config = f"homeassistant/sensor/facegate_gate/person_{bob}/config"
            # A config under this gate's node that it does not publish is removed.
            await sub.wait_for(ghost, lambda m: m.payload == b"")
            await sub.wait_for(ada_config)
            g.recognized("Ada Lovelace")
            g.recognized("Bob", track=2)
            await sub.wait_for("facegate/people/ada_lovelace")
            await sub.wait_for("facegate/people/bob")
            await sub.wait_for(g.topic("state"), lambda m: m.json()["person"] == "Bob")
            mark = sub.mark()
            await asyncio.to_thread(g.gallery.delete_person, bob, actor="test")
            await sub.wait_for(bob_config, lambda m: m.payload == b"", after=mark)
            await sub.wait_for("facegate/people/bob", lambda m: m.payload == b"", after=mark)
            state = await sub.wait_for(g.topic("state"), after=mark)
            assert state.json()["person_id"] == ada  # Bob is no longer the gate's state
            mark = sub.mark()
            g.gallery.rename(ada, "Ada King", actor="test")
            renamed = await sub.wait_for(ada_config, after=mark)
            assert renamed.json()["name"] == "Ada King last gate"
            assert renamed.json()["state_topic"] == "facegate/people/ada_king"
            await sub.wait_for(
                "facegate/people/ada_lovelace", lambda m: m.payload == b"", after=mark
            )
            moved = await sub.wait_for("facegate/people/ada_king", after=mark)
            assert moved.json()["name"] == "Ada King" and moved.json()["person_id"] == ada
            await asyncio.sleep(0.3)
            snap = await retained(broker.port)
            assert ghost not in snap and bob_config not in snap
            assert "facegate/people/bob" not in snap and "facegate/people/ada_lovelace" not in snap
            assert ada_config in snap and "facegate/people/ada_king" in snap

    run(scenario())


@broker_needed
def test_names_stay_off_the_broker_when_publish_names_is_false(
    broker: Mosquitto, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with (
            Listener(broker.port) as sub,
            gate(tmp_path, broker.url(), publish_names=False) as g,
        ):
            ada = g.ids["Ada Lovelace"]
            await sub.wait_for(g.topic("state"))
            g.recognized("Ada Lovelace", access="pending")
            await sub.wait_for(f"facegate/people/{ada}")
            await sub.wait_for(g.topic("state"), lambda m: m.json()["state"] == "recognized")
            # The liveness events name her in their texts (the pose feedback has no `name`).
            g.challenge("Ada Lovelace")
            g.verdict("Ada Lovelace", False, "denied", "timeout")
            settled = await sub.wait_for(
                f"facegate/people/{ada}", lambda m: m.json()["access"] == "denied"
            )
            assert settled.json()["name"] is None and settled.json()["liveness"] == "timeout"
            await asyncio.sleep(0.3)
            events = {m.json()["type"]: m.json()["data"] for m in sub.on(g.topic("events"))}
            assert {"liveness_challenge", "liveness_pose_feedback", "liveness_result"} <= set(
                events
            )
            assert events["liveness_challenge"]["message"] == "Liveness check: turn your head"
            assert (
                events["liveness_challenge"]["instruction"]
                == "someone, turn your head to your right"
            )
            assert (
                events["liveness_pose_feedback"]["hint"] == "someone, a little more to your right"
            )
            assert (
                events["liveness_result"]["next_step"] == "someone: face the camera and try again"
            )
            assert events["liveness_result"]["person_id"] == ada
            assert (events["liveness_result"]["access"], events["liveness_result"]["reason"]) == (
                "denied",
                "timeout",
            )
            for m in sub.messages:
                assert b"Ada" not in m.payload and b"Lovelace" not in m.payload, m
                assert "ada" not in m.topic, m

    run(scenario())


def home_assistant_event(entity: dict[str, Any], heard: Heard) -> dict[str, Any] | None:
    """What Home Assistant's event entity (its discovery config) makes of a message on its
    state topic: the value_template rendered as HA renders it (None: ignored, or no Jinja)."""
    try:
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:  # not a dependency: the pure tests render it where it is installed
        return None
    env = ImmutableSandboxedEnvironment()
    env.filters["to_json"] = json.dumps
    out = env.from_string(entity["value_template"]).render(value_json=heard.json())
    return json.loads(out) if out else None


@broker_needed
def test_liveness_verdicts_settle_access_in_events_state_and_people(
    broker: Mosquitto, tmp_path: Path
) -> None:
    """challenge = "known": a recognition is "pending" everywhere it is published until its
    liveness_result says "granted" or "denied" (events, the state, the people topic)."""

    async def scenario() -> None:
        persons = ("Ada Lovelace", "Bob")
        async with Listener(broker.port) as sub, gate(tmp_path, broker.url(), persons) as g:
            t = g.topic
            ada_topic, bob_topic = "facegate/people/ada_lovelace", "facegate/people/bob"
            entity = (
                await sub.wait_for("homeassistant/event/facegate_gate/face_event/config")
            ).json()
            assert {"liveness_challenge", "liveness_passed", "liveness_failed"} <= set(
                entity["event_types"]
            )
            await sub.wait_for(t("state"))

            def event(kind: str, after: int) -> Awaitable[Heard]:
                return sub.wait_for(t("events"), lambda m: m.json()["type"] == kind, after=after)

            # Ada is recognised: pending, everywhere.
            mark = sub.mark()
            g.recognized("Ada Lovelace", access="pending")
            greeting = await event("person_recognized", mark)
            assert greeting.json()["data"]["access"] == "pending"
            state = await sub.wait_for(t("state"), after=mark)
            assert (state.json()["state"], state.json()["access"]) == ("recognized", "pending")
            since = state.json()["since"]
            seen = (await sub.wait_for(ada_topic, after=mark)).json()
            assert (seen["access"], seen["liveness"]) == ("pending", None)
            # The challenge: an event, and nothing granted before the verdict.
            mark = sub.mark()
            g.challenge("Ada Lovelace")
            asked = await event("liveness_challenge", mark)
            assert asked.json()["data"]["direction"] == "right"
            await event("liveness_pose_feedback", mark)
            await asyncio.sleep(0.3)
            # (The state is refreshed while someone is there, a last seen may be republished
            # after the connect: the same, pending.)
            again = sub.on(ada_topic, mark) + sub.on(t("state"), mark)
            assert all(m.json()["access"] == "pending" for m in again), again
            # She passes: granted.
            mark = sub.mark()
            g.verdict("Ada Lovelace", True, "granted", "passed")
            passed = await event("liveness_result", mark)
            data = passed.json()["data"]
            assert (data["passed"], data["access"], data["name"]) == (
                True,
                "granted",
                "Ada Lovelace",
            )
            assert ha.event_type("liveness_result", passed=data["passed"]) == "liveness_passed"
            settled = (await sub.wait_for(ada_topic, after=mark)).json()
            assert (settled["access"], settled["liveness"]) == ("granted", "passed")
            assert settled["time"] == seen["time"] and settled["gate"] == "gate"
            state = await sub.wait_for(t("state"), after=mark)
            assert (state.json()["person"], state.json()["access"]) == ("Ada Lovelace", "granted")
            assert state.json()["since"] == since  # still the same recognition
            # Bob is recognised, then fails: denied (the gate shows him, the latest).
            mark = sub.mark()
            g.recognized("Bob", track=2, access="pending")
            await sub.wait_for(t("state"), lambda m: m.json()["person"] == "Bob", after=mark)
            g.verdict("Bob", False, "denied", "planar", track=2)
            failed = await event("liveness_result", mark)
            assert failed.json()["data"]["access"] == "denied"
            bob = await sub.wait_for(
                bob_topic, lambda m: m.json()["access"] != "pending", after=mark
            )
            assert (bob.json()["access"], bob.json()["liveness"]) == ("denied", "planar")
            state = await sub.wait_for(
                t("state"), lambda m: m.json()["access"] != "pending", after=mark
            )
            assert (state.json()["person"], state.json()["access"]) == ("Bob", "denied")
            # Home Assistant's event entity (where Jinja is installed to render its template).
            rendered = [home_assistant_event(entity, m) for m in (greeting, asked, passed, failed)]
            if rendered[0] is not None:
                assert [(r or {}).get("event_type") for r in rendered] == [
                    "recognized",
                    "liveness_challenge",
                    "liveness_passed",
                    "liveness_failed",
                ]
                assert [(r or {}).get("access") for r in rendered] == [
                    "pending",
                    None,
                    "granted",
                    "denied",
                ]
                assert rendered[2] is not None and rendered[2]["person"] == "Ada Lovelace"
                assert rendered[3] is not None and rendered[3]["reason"] == "planar"
            # Bob leaves: Ada is shown again, with her own verdict.
            mark = sub.mark()
            g.left("Bob", track=2)
            state = await sub.wait_for(t("state"), after=mark)
            assert (state.json()["person"], state.json()["access"]) == ("Ada Lovelace", "granted")
            # An unknown face's verdict (challenge "always"): denied, no person, no people topic.
            mark = sub.mark()
            g.stranger(track=3)
            g.verdict(None, True, "denied", "passed", track=3)
            stranger = await event("liveness_result", mark)
            assert stranger.json()["data"]["person_id"] is None
            assert stranger.json()["data"]["access"] == "denied"
            await asyncio.sleep(0.3)
            assert [m for m in sub.messages[mark:] if m.topic.startswith("facegate/people/")] == []
            shown = [(m.json()["person"], m.json()["access"]) for m in sub.on(t("state"), mark)]
            assert set(shown) <= {("Ada Lovelace", "granted")}, shown  # still Ada, granted
            snap = await retained(broker.port)
            assert json.loads(snap[ada_topic])["access"] == "granted"
            assert json.loads(snap[bob_topic])["access"] == "denied"
            assert json.loads(snap[t("state")])["access"] == "granted"

    run(scenario())


@broker_needed
def test_refused_credentials_one_line_no_password_and_retries(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "Wr0ng-hunter2"
    broker = Mosquitto(tmp_path / "broker", users={"gate": "right-one"}).start()
    try:

        async def scenario() -> None:
            url = broker.url("gate", secret)
            async with gate(tmp_path, url, reconnect_max_seconds=1.0) as g:
                await asyncio.sleep(4.0)
                assert not g.bridge.connected and g.bridge.connections == 0
                t0 = time.monotonic()
            assert time.monotonic() - t0 < 2.0  # stopping does not wait for a broker

        run(scenario())
        lines = mqtt_lines(caplog)
        refused = [line for line in lines if "refused" in line]
        assert len(refused) == 1, lines
        assert "authori" in refused[0].lower() and "mqtt://gate:***@" in refused[0]
        assert all(secret not in r.getMessage() for r in caplog.records)
        assert broker.log().count("not authorised") >= 3  # it kept trying
    finally:
        broker.stop()


@broker_needed
def test_stop_publishes_the_last_events_then_offline(broker: Mosquitto, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Listener(broker.port) as sub:
            async with gate(tmp_path, broker.url()) as g:
                await sub.wait_for(g.topic("state"))
                # Handed over by the engine thread just before the stop.
                for i in range(50):
                    g.bus.publish_threadsafe(PersonLeftArea(track_id=i))
                await asyncio.sleep(0)  # as `Pipeline.halt`: the hand-over reaches the bus
            offline = await sub.wait_for(g.topic("availability"), lambda m: m.payload == b"offline")
            assert offline.payload == b"offline"
            events = [m.json()["data"]["track_id"] for m in sub.on(g.topic("events"))]
            assert events[-50:] == list(range(50))
            last = sub.messages[-1]
            assert last.topic == g.topic("availability")

    run(scenario())


class BlankCamera:
    """A live camera showing nobody (10 fps)."""

    live = True
    fps: float | None = 10.0
    name = "blank camera"

    def open(self) -> None:
        pass

    def read(self) -> np.ndarray:
        time.sleep(0.1)
        return np.full((240, 320, 3), 60, np.uint8)

    def close(self) -> None:
        pass


@broker_needed
def test_runtime_starts_the_bridge_with_the_gate_and_stops_it_with_offline(
    broker: Mosquitto, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`serve`'s runtime: the bridge when mqtt.url is set (it hears the engine's first event),
    an unusable URL logged once with MQTT off and the gate running; "offline" at stop."""
    from facegate.server.runtime import Runtime

    caplog.set_level(logging.INFO)

    def runtime(url: str, folder: str) -> Runtime:
        settings = Settings(mqtt=MqttSettings(url=url))
        return Runtime(settings, tmp_path / folder, BlankCamera(), NoFaces)  # type: ignore[arg-type]

    async def scenario() -> None:
        bad = runtime("ftp://gate:hunter2@127.0.0.1", "bad")
        await bad.start()
        try:
            assert bad.mqtt is None
        finally:
            await bad.stop()
        async with Listener(broker.port) as sub:
            good = runtime(broker.url(), "good")
            await good.start()
            try:
                assert good.mqtt is not None
                await sub.wait_for(
                    "facegate/gate/events", lambda m: m.json()["type"] == "system_ready"
                )
                await sub.wait_for("facegate/gate/availability", lambda m: m.payload == b"online")
            finally:
                await good.stop()
            await sub.wait_for("facegate/gate/availability", lambda m: m.payload == b"offline")

    run(scenario())
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "MQTT is off" in errors[0], errors
    assert all("hunter2" not in r.getMessage() for r in caplog.records)


# == the engine's recognition switch (real models) ===============================================
@pytest.mark.shared_data
@pytest.mark.models
def test_engine_recognition_off_names_nobody_and_on_greets_again(
    analyzer: Any, shared_data: Path, tmp_path: Path
) -> None:
    from test_engine import canvas, pointing_face

    person = pointing_face(shared_data, "p04_person01")
    stranger = pointing_face(shared_data, "p04_person09")
    settings = msgspec.structs.replace(
        Settings(),
        engine=msgspec.structs.replace(Settings().engine, stable_seconds=0.5),
    )
    with Store.open(tmp_path / "data") as store:
        gallery = Gallery.open(store, settings)
        face = analyzer.analyze(canvas(person, 100, 130))[0]
        gallery.create_person("Pat", [NewEmbedding(face.embedding)], actor="test")
        events: list[Event] = []
        views: list[Tracks] = []
        engine = Engine(analyzer, gallery, settings, events.append, on_tracks=views.append)
        scene = canvas(person, 100, 130)
        scene[130 : 130 + stranger.shape[0], 400 : 400 + stranger.shape[1]] = stranger
        n = 0

        def frames(count: int) -> None:
            nonlocal n
            for _ in range(count):
                engine.process(Frame(image=scene, number=n, captured_at=n / 10, position=n / 10))
                n += 1

        frames(20)
        kinds = [type(e).__name__ for e in events]
        assert kinds == ["PersonRecognized", "UnknownPersonDetected"], kinds
        assert {t.state for t in views[-1].tracks} == {"known", "unknown"}
        events.clear()
        engine.set_recognition(False)
        assert not engine.recognition_enabled
        frames(1)  # applied at the next frame: the person present leaves, named
        assert [(type(e).__name__, getattr(e, "name", None)) for e in events] == [
            ("PersonLeftArea", "Pat")
        ]
        frames(40)  # 4 s: nobody named, greeted or offered; both faces still tracked
        assert len(events) == 1
        assert [t.state for t in views[-1].tracks] == ["pending", "pending"]
        assert all(t.name is None and t.similarity is None for t in views[-1].tracks)
        engine.set_recognition(True)
        frames(15)
        greeted = [e for e in events[1:] if isinstance(e, PersonRecognized)]
        assert [e.name for e in greeted] == ["Pat"]
        # The stranger was offered before: not offered again.
        assert not any(isinstance(e, UnknownPersonDetected) for e in events)
        assert {t.state for t in views[-1].tracks} == {"known", "unknown"}
