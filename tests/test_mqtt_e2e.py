"""MQTT and Home Assistant end to end (issue 13): Debian's Mosquitto on a free port (tests/
mosquitto.py; anonymous, password file, TLS with a CA made here), a real `facegate serve
--source <Hamilton clip> --loop` subprocess with FACEGATE_MQTT_URL set and lin_manuel_miranda
enrolled (`facegate enroll`), and a real MQTT subscriber checking what reaches the broker:
discovery configs, availability (graceful stop, SIGKILL -> last will), the recognition event,
the retained state and people topics, a broker restart (reconnection and republication),
erasure, the command topics, and a broker that refuses the gate's credentials.

The broker self-tests need only mosquitto; the rest also need ../shared/data and the model pack
(skipped with a reason when absent). Mosquitto runs without persistence, so a retained message
that a NEW subscriber finds after a broker restart was published again by the gate.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
import websockets

from facegate import __version__
from mosquitto import (
    DEFAULT_PASSWORD,
    Broker,
    Received,
    Subscriber,
    find_mosquitto,
    free_port,
    missing_tools,
    publish,
    refusal,
    retained,
)

pytestmark = pytest.mark.skipif(
    find_mosquitto() is None,
    reason="mosquitto is not installed (`make setup` installs Debian's mosquitto)",
)


def e2e(func: Callable[..., Any]) -> Callable[..., Any]:
    """The markers of the tests that run the real gate (shared data and the model pack)."""
    return pytest.mark.shared_data(pytest.mark.models(func))


CLIP = "hamilton_short_clip.mp4"  # 9.2 s; Lin-Manuel Miranda greeted ~3 s into every loop
PERSON = "lin_manuel_miranda"
# The gate is named by gate.id (FACEGATE_GATE_ID): its topics, device and events say it.
PREFIX, GATE, DISCOVERY = "facegate", "front-door", "homeassistant"
NODE = f"facegate_{GATE}"
EVENT_TYPES = {
    "recognized",
    "stranger",
    "left",
    "registered",
    "liveness_challenge",
    "liveness_passed",
    "liveness_failed",
}


def t(name: str) -> str:
    """A topic of the gate: P/G/name."""
    return f"{PREFIX}/{GATE}/{name}"


PEOPLE = f"{PREFIX}/people/{PERSON}"


def need(variant: str) -> None:
    reason = missing_tools(variant)  # type: ignore[arg-type]
    if reason is not None:
        pytest.skip(reason)


# == the broker itself ==========================================================================
@pytest.mark.parametrize("variant", ["anonymous", "password", "tls"])
def test_mosquitto_round_trip_and_retained_across_reconnect(tmp_path: Path, variant: str) -> None:
    need(variant)
    with Broker(tmp_path, variant) as broker:  # type: ignore[arg-type]
        with Subscriber(broker, ["selftest/#"]) as sub:
            publish(broker, "selftest/live", "hello")
            publish(broker, "selftest/kept", b"\x00\x01 kept", retain=True)
            live = sub.wait_for("selftest/live", timeout=5)
            kept = sub.wait_for("selftest/kept", timeout=5)
        assert live.payload == b"hello" and not live.retain
        assert kept.payload == b"\x00\x01 kept" and not kept.retain  # delivered live
        # A client that connects again is given the retained message, flagged as retained.
        again = retained(broker, ["selftest/#"], settle=0.5)
        assert set(again) == {"selftest/kept"}
        assert again["selftest/kept"].payload == b"\x00\x01 kept"
        # Restarted on the same port without persistence: nothing retained any more.
        port = broker.port
        broker.restart()
        assert broker.port == port and broker.running
        assert retained(broker, ["selftest/#"], settle=0.5) == {}


def test_mosquitto_password_refuses_wrong_and_missing_credentials(tmp_path: Path) -> None:
    need("password")
    with Broker(tmp_path, "password") as broker:
        assert broker.url().startswith(f"mqtt://gate:{DEFAULT_PASSWORD}@127.0.0.1:")
        for creds in ({"username": "gate", "password": "wrong"}, {"username": None}):
            error = refusal(broker, **creds)
            assert error is not None and "authori" in error.lower(), error
        assert refusal(broker) is None
        assert "not authorised" in broker.log()


def test_mosquitto_tls_refuses_a_client_without_the_ca(tmp_path: Path) -> None:
    need("tls")
    with Broker(tmp_path, "tls") as broker:
        assert broker.url() == f"mqtts://127.0.0.1:{broker.port}"
        assert broker.ca_file is not None and broker.ca_file.is_file()
        assert refusal(broker) is None  # with the test CA
        # The system's CAs only: the server's certificate does not verify.
        error = refusal(broker, tls_context=ssl.create_default_context())
        assert error is not None and "certificate verify failed" in error, error
        # Plain MQTT on the TLS port does not get through either.
        assert refusal(broker, tls_context=None, timeout=3) is not None


# == the gate ===================================================================================
class Gate:
    """One `facegate serve` subprocess (stdout and stderr to files)."""

    def __init__(
        self, proc: subprocess.Popen[bytes], port: int, folder: Path, data: Path, broker: Broker
    ) -> None:
        self.proc = proc
        self.port = port
        self.http = f"http://127.0.0.1:{port}"
        self.folder = folder
        self.data = data
        self.broker = broker

    @property
    def stderr_path(self) -> Path:
        return self.folder / "serve.stderr"

    def log(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"facegate serve ignored {sig.name} for {timeout} s") from None
        return self.proc.returncode

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.http + path, timeout=5)


def gate_env(folder: Path, url: str, **mqtt: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACEGATE_")}
    env["FACEGATE_HOME"] = str(folder / "home")
    env["FACEGATE_ENGINE__STABLE_SECONDS"] = "0.5"
    env["FACEGATE_GATE_ID"] = GATE
    env["FACEGATE_MQTT_URL"] = url
    env["FACEGATE_MQTT_RECONNECT_MAX_SECONDS"] = "2"  # the restart test: back within ~3 s
    for key, value in mqtt.items():
        env[f"FACEGATE_MQTT_{key.upper()}"] = value
    return env


def enrol(shared_data: Path, folder: Path) -> tuple[Path, str]:
    """A data dir with lin_manuel_miranda enrolled from his photo by the CLI: (dir, id)."""
    data = folder / "data"
    photo = shared_data / "video" / "enrol" / f"{PERSON}.png"
    cmd = [sys.executable, "-m", "facegate.cli", "enroll", PERSON, str(photo)]
    cmd += ["--data", str(data), "--json"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACEGATE_")}
    env["FACEGATE_HOME"] = str(folder / "home")
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    person_id: str = json.loads(done.stdout.splitlines()[-1])["person_id"]
    return data, person_id


def start_gate(
    folder: Path,
    broker: Broker,
    data: Path,
    shared_data: Path,
    url: str | None = None,
    **mqtt: str,
) -> Gate:
    """`facegate serve` on the looping clip, reporting to `broker`; returns once it serves HTTP
    and the video is open."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cmd = [sys.executable, "-m", "facegate.cli", "serve", "--source"]
    cmd += [str(shared_data / "video" / CLIP), "--loop", "--port", str(port), "--data", str(data)]
    env = gate_env(folder, url or broker.url(), **mqtt)
    with (folder / "serve.stdout").open("wb") as out, (folder / "serve.stderr").open("wb") as err:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
    gate = Gate(proc, port, folder, data, broker)
    deadline = time.monotonic() + 60
    while True:
        assert gate.alive(), f"facegate serve exited ({proc.returncode}):\n{gate.log()}"
        assert time.monotonic() < deadline, f"facegate serve did not come up:\n{gate.log()}"
        with contextlib.suppress(httpx.HTTPError):
            r = gate.get("/")
            if r.status_code == 200 and r.json()["system_status"]["source_state"] != "starting":
                return gate
        time.sleep(0.1)


@contextlib.contextmanager
def running(gate: Gate) -> Iterator[Gate]:
    try:
        yield gate
    finally:
        if gate.alive():
            with contextlib.suppress(AssertionError):
                gate.stop(signal.SIGTERM, timeout=10)


@contextlib.contextmanager
def diagnose(gate: Gate | None, *brokers: Broker) -> Iterator[None]:
    """An assertion or timeout inside gets the gate's stderr and the brokers' logs appended."""
    try:
        yield
    except (AssertionError, TimeoutError) as exc:
        parts = [str(exc)]
        if gate is not None:
            parts.append(f"== facegate serve stderr (tail) ==\n{tail(gate.log(), 60)}")
        parts += [f"== {b} log (tail) ==\n{b.log(40)}" for b in brokers]
        raise AssertionError("\n".join(parts)) from exc


def tail(text: str, lines: int) -> str:
    return "\n".join(text.splitlines()[-lines:])


def as_json(m: Received) -> Any:
    return json.loads(m.payload)


def event_of(kind: str, **data: Any) -> Callable[[Received], bool]:
    def test(m: Received) -> bool:
        with contextlib.suppress(ValueError):
            msg = json.loads(m.payload)
            return bool(
                msg.get("type") == kind and all(msg["data"].get(k) == v for k, v in data.items())
            )
        return False

    return test


def payload_is(text: str) -> Callable[[Received], bool]:
    return lambda m: m.payload == text.encode()


def wait_retained(
    broker: Broker, wanted: dict[str, Callable[[Received], bool] | None], timeout: float
) -> dict[str, Received]:
    """Fresh subscribers, one after another, until each wanted topic is retained (and passes
    its test); returns the last snapshot of everything retained."""
    deadline = time.monotonic() + timeout
    while True:
        snap = retained(broker, ["#"], settle=0.6)
        missing = [
            topic
            for topic, test in wanted.items()
            if topic not in snap or (test is not None and not test(snap[topic]))
        ]
        if not missing:
            return snap
        if time.monotonic() > deadline:
            raise TimeoutError(f"not retained within {timeout:.0f} s: {missing}")
        time.sleep(0.4)


# -- Home Assistant discovery ------------------------------------------------------------------
ABBREVIATIONS = {
    "avty_t": "availability_topic",
    "avty": "availability",
    "cmd_t": "command_topic",
    "cont_type": "content_type",
    "dev": "device",
    "dev_cla": "device_class",
    "ent_cat": "entity_category",
    "evt_typ": "event_types",
    "img_t": "image_topic",
    "json_attr_t": "json_attributes_topic",
    "off_dly": "off_delay",
    "pl_avail": "payload_available",
    "pl_not_avail": "payload_not_available",
    "pl_on": "payload_on",
    "pl_off": "payload_off",
    "stat_t": "state_topic",
    "uniq_id": "unique_id",
    "val_tpl": "value_template",
    "ids": "identifiers",
    "mf": "manufacturer",
    "mdl": "model",
    "sw": "sw_version",
}


def expand(config: dict[str, Any]) -> dict[str, Any]:
    """A discovery payload with HA's abbreviations and `~` base topic expanded."""
    base = config.get("~")
    out: dict[str, Any] = {}
    for short, raw in config.items():
        key = ABBREVIATIONS.get(short, short)
        value = raw
        if isinstance(raw, dict):
            value = {ABBREVIATIONS.get(k, k): v for k, v in raw.items()}
        elif base and isinstance(raw, str) and key.endswith("_topic"):
            value = raw.replace("~", base)
        out[key] = value
    return out


def availability_topics(config: dict[str, Any]) -> set[str]:
    topics = {config["availability_topic"]} if "availability_topic" in config else set()
    for item in config.get("availability", []):
        topics.add(item.get("topic") or item.get("t"))
    return topics


def is_config(topic: str) -> bool:
    return topic.startswith(f"{DISCOVERY}/") and topic.endswith("/config")


def discovery(messages: Iterator[Received] | list[Received]) -> dict[str, dict[str, Any]]:
    """The latest non-empty config per discovery topic, expanded."""
    configs: dict[str, dict[str, Any]] = {}
    for m in messages:
        if is_config(m.topic):
            if m.payload:
                configs[m.topic] = expand(json.loads(m.payload))
            else:
                configs.pop(m.topic, None)
    return configs


def check_discovery(configs: dict[str, dict[str, Any]], person_id: str | None) -> None:
    """The fields Home Assistant requires per component, and the contract's entities."""
    by_component: dict[str, list[dict[str, Any]]] = {}
    unique_ids = []
    for topic, cfg in configs.items():
        parts = topic.split("/")
        assert len(parts) == 5 and parts[2] == NODE, topic
        component = parts[1]
        by_component.setdefault(component, []).append(cfg)
        assert isinstance(cfg.get("unique_id"), str) and cfg["unique_id"].startswith("facegate_")
        unique_ids.append(cfg["unique_id"])
        assert availability_topics(cfg) == {t("availability")}, (topic, cfg)
        assert cfg.get("payload_available", "online") == "online"
        assert cfg.get("payload_not_available", "offline") == "offline"
        device = cfg.get("device")
        assert isinstance(device, dict) and NODE in device.get("identifiers", []), (topic, cfg)
        # Required by component (HA's MQTT platforms).
        if component in ("sensor", "binary_sensor", "event"):
            assert isinstance(cfg.get("state_topic"), str), (topic, cfg)
        if component == "switch":
            assert isinstance(cfg.get("command_topic"), str), (topic, cfg)
        if component == "image":
            assert cfg.get("image_topic") or cfg.get("url_topic"), (topic, cfg)
        if component == "event":
            assert isinstance(cfg.get("event_types"), list) and cfg["event_types"], (topic, cfg)
    assert len(unique_ids) == len(set(unique_ids)), f"duplicate unique_ids: {unique_ids}"
    expected = {"sensor", "binary_sensor", "event", "image", "switch"}
    assert expected <= set(by_component), f"components: {sorted(by_component)}"
    device = next(c["device"] for c in configs.values() if "person_" not in c["unique_id"])
    assert device.get("name") == f"facegate {GATE}" and device.get("manufacturer") == "facegate"
    assert device.get("sw_version") == __version__, device
    sensors = by_component["sensor"]
    last = [c for c in sensors if c.get("state_topic") == t("state")]
    assert last and "person" in last[0].get("value_template", ""), sensors
    assert last[0].get("json_attributes_topic") == t("state")
    (occupancy,) = by_component["binary_sensor"]
    assert occupancy.get("device_class") == "occupancy" and occupancy["state_topic"] == t("state")
    (event,) = by_component["event"]
    assert event["state_topic"] == t("events") and set(event["event_types"]) == EVENT_TYPES
    template = event.get("value_template", "")
    for source in (
        "person_recognized",
        "unknown_person_detected",
        "person_left_area",
        "registration_complete",
        "liveness_challenge",
        "liveness_result",
    ):
        assert source in template, f"the event template does not map {source}: {template}"
    (image,) = by_component["image"]
    assert image.get("image_topic") == t("snapshot") and image.get("content_type") == "image/jpeg"
    (switch,) = by_component["switch"]
    assert switch["command_topic"] == t("recognition/set")
    assert switch.get("state_topic") == t("recognition")
    assert switch.get("payload_on", "ON") == "ON" and switch.get("payload_off", "OFF") == "OFF"
    diagnostics = [c for c in sensors if c.get("entity_category") == "diagnostic"]
    assert len(diagnostics) >= 2 and all(c["state_topic"] == t("diagnostics") for c in diagnostics)
    people = [c for c in sensors if "_person_" in c["unique_id"]]
    if person_id is None:
        assert people == []
        return
    assert len(people) == 1, people
    (person,) = people
    assert person["unique_id"] in person_unique_ids(person_id)
    assert person["state_topic"] == PEOPLE and "gate" in person.get("value_template", "")
    assert "last gate" in person.get("name", "").lower(), person


def person_unique_ids(person_id: str) -> set[str]:
    """The contract says facegate_person_<id>; homeassistant.py makes it per gate
    (facegate_<G>_person_<id>: two gates sharing a gallery would otherwise collide in HA)."""
    return {f"facegate_person_{person_id}", f"facegate_{GATE}_person_{person_id}"}


def person_config_topic(configs: dict[str, dict[str, Any]], person_id: str) -> str:
    ids = person_unique_ids(person_id)
    return next(topic for topic, cfg in configs.items() if cfg.get("unique_id") in ids)


# -- the main scenario: one gate, tests in order ------------------------------------------------
class Scenario:
    def __init__(self, broker: Broker, gate: Gate, sub: Subscriber, person_id: str) -> None:
        self.broker = broker
        self.gate = gate
        self.sub = sub
        self.person_id = person_id
        self.first_configs: dict[str, dict[str, Any]] = {}

    def diagnose(self) -> contextlib.AbstractContextManager[None]:
        return diagnose(self.gate, self.broker)


@pytest.fixture(scope="module")
def scenario(
    tmp_path_factory: pytest.TempPathFactory, shared_data: Path, faceplugin_dir: Path
) -> Iterator[Scenario]:
    folder = tmp_path_factory.mktemp("mqtt_e2e")
    data, person_id = enrol(shared_data, folder)
    # The subscriber listens before the gate starts: everything it publishes is heard.
    with Broker(folder / "broker") as broker, Subscriber(broker, ["#"], reconnect=True) as sub:
        gate = start_gate(folder / "gate", broker, data, shared_data)
        with running(gate):
            yield Scenario(broker, gate, sub, person_id)


@e2e
def test_availability_online_and_retained(scenario: Scenario) -> None:
    with scenario.diagnose():
        first = scenario.sub.wait_for(t("availability"), timeout=15)
        assert first.payload == b"online"
        snap = retained(scenario.broker, [t("availability")], settle=0.5)
        assert snap[t("availability")].payload == b"online"
        # No password, nothing secret: the URL, if logged, is the plain one here.
        assert scenario.gate.get("/").status_code == 200


@e2e
def test_discovery_configs_are_retained_json_with_what_home_assistant_requires(
    scenario: Scenario,
) -> None:
    with scenario.diagnose():
        person = f"_person_{scenario.person_id}".encode()
        scenario.sub.wait_for(is_config, lambda m: person in m.payload, timeout=15)
        time.sleep(0.5)  # the rest of the batch
        heard = discovery(scenario.sub.received())
        check_discovery(heard, scenario.person_id)
        # Retained: a new subscriber gets exactly the same configs.
        snap = retained(scenario.broker, [f"{DISCOVERY}/#"], settle=0.8)
        assert all(m.retain for m in snap.values())
        assert discovery(list(snap.values())) == heard
        scenario.first_configs = heard


@e2e
def test_recognition_event_state_people_and_snapshot(scenario: Scenario) -> None:
    """person_recognized on P/G/events is the WebSocket's JSON; P/G/state and
    P/people/<slug> are retained; a JPEG on P/G/snapshot."""
    gate, sub = scenario.gate, scenario.sub

    async def websocket_greeting() -> dict[str, Any]:
        async with websockets.connect(f"ws://127.0.0.1:{gate.port}/ws") as ws:
            async with asyncio.timeout(25):
                while True:
                    msg: dict[str, Any] = json.loads(await ws.recv())
                    if msg["type"] == "person_recognized":
                        return msg

    with scenario.diagnose():
        mark = sub.mark()
        on_ws = asyncio.run(websocket_greeting())
        assert on_ws["data"]["name"] == PERSON and on_ws["data"]["gate_id"] == GATE
        assert on_ws["data"]["access"] == "granted"  # no liveness challenge by default
        seq = on_ws["data"]["seq"]
        got = sub.wait_for(t("events"), event_of("person_recognized", seq=seq), timeout=5)
        assert as_json(got) == on_ws, "the MQTT event is not the WebSocket's JSON"
        assert not got.retain
        data = on_ws["data"]
        # The retained state of the gate.
        state = sub.wait_for(
            t("state"), lambda m: as_json(m)["state"] == "recognized", timeout=5, after=mark
        )
        st = as_json(state)
        assert st["person"] == PERSON and st["person_id"] == scenario.person_id
        assert st["gate"] == GATE and st["similarity"] == pytest.approx(data["similarity"])
        assert st["access"] == "granted"
        datetime.fromisoformat(st["since"])
        # Last seen, per person.
        seen = as_json(sub.wait_for(PEOPLE, timeout=5, after=mark))
        assert seen["person_id"] == scenario.person_id and seen["name"] == PERSON
        assert seen["gate"] == GATE and seen["similarity"] == pytest.approx(data["similarity"])
        assert (seen["access"], seen["liveness"]) == ("granted", None)
        datetime.fromisoformat(seen["time"])
        # The face as a JPEG.
        snapshot = sub.wait_for(t("snapshot"), timeout=5, after=mark)
        assert snapshot.payload[:3] == b"\xff\xd8\xff" and len(snapshot.payload) > 500
        # Retained for a new subscriber (the state may have moved on since: still a valid one).
        snap = retained(scenario.broker, [t("state"), PEOPLE], settle=0.6)
        assert set(snap) == {t("state"), PEOPLE}
        now = as_json(snap[t("state")])
        assert now["state"] in {"idle", "recognized", "stranger", "registering"}
        assert set(now) >= {"state", "person", "person_id", "similarity", "access", "since", "gate"}
        assert as_json(snap[PEOPLE])["person_id"] == scenario.person_id


@e2e
def test_registration_decisions_from_mqtt_are_ignored_by_default(scenario: Scenario) -> None:
    """A stranger (the audience, ~8 s into the clip) is offered; a decision published on
    P/G/registration/decision does not approve them (registration_commands is off)."""
    gate, sub = scenario.gate, scenario.sub
    with scenario.diagnose():
        mark = sub.mark()
        waiting = sub.wait_for(
            t("events"), event_of("registration_waiting"), timeout=25, after=mark
        )
        assert as_json(waiting)["data"]["track_id"] is not None
        decision = json.dumps({"register": True, "name": "Mallory"})
        publish(scenario.broker, t("registration/decision"), decision)
        ended = sub.wait_for(
            t("events"),
            lambda m: (
                event_of("registration_cancelled")(m)
                or event_of("registration_failed")(m)
                or event_of("registration_approved")(m)
                or event_of("registration_start")(m)
            ),
            timeout=40,
            after=mark,
        )
        assert as_json(ended)["type"] in {"registration_cancelled", "registration_failed"}, (
            f"the MQTT decision was acted on: {ended.text}"
        )
        types = [as_json(m)["type"] for m in sub.received(t("events"))[mark:]]
        assert "registration_approved" not in types and "registration_start" not in types
        names = [p["name"] for p in gate.get("/api/persons").json()]
        assert names == [PERSON], names
        # Logged, once, so whoever expected it to work finds out why it does not.
        publish(scenario.broker, t("registration/decision"), decision)
        time.sleep(0.5)
        said = [
            line
            for line in gate.log().splitlines()
            if re.search(r"registration[_/ ]?(commands|decision)", line)
        ]
        assert len(said) == 1, said


@e2e
def test_recognition_switch_off_names_nobody_and_on_again(scenario: Scenario) -> None:
    sub = scenario.sub
    with scenario.diagnose():
        mark = sub.mark()
        publish(scenario.broker, t("recognition/set"), "OFF")
        echo = sub.wait_for(t("recognition"), payload_is("OFF"), timeout=5, after=mark)
        assert echo.payload == b"OFF"
        off_from = sub.mark()
        time.sleep(10.5)  # more than one loop of the clip: Lin is on stage during it
        heard = [as_json(m)["type"] for m in sub.received(t("events"))[off_from:]]
        assert "person_recognized" not in heard, heard
        assert "registration_waiting" not in heard, heard
        snap = retained(scenario.broker, [t("recognition")], settle=0.5)
        assert snap[t("recognition")].payload == b"OFF"
        mark = sub.mark()
        publish(scenario.broker, t("recognition/set"), "ON")
        sub.wait_for(t("recognition"), payload_is("ON"), timeout=5, after=mark)
        sub.wait_for(
            t("events"), event_of("person_recognized", name=PERSON), timeout=25, after=mark
        )


@e2e
def test_home_assistant_birth_republishes_discovery_and_state(scenario: Scenario) -> None:
    sub = scenario.sub
    with scenario.diagnose():
        mark = sub.mark()
        publish(scenario.broker, f"{DISCOVERY}/status", "online")
        sub.wait_for(t("availability"), payload_is("online"), timeout=10, after=mark)
        sub.wait_for(t("state"), timeout=10, after=mark)
        sub.wait_for(t("recognition"), timeout=10, after=mark)
        time.sleep(1.0)
        again = discovery(sub.received()[mark:])
        assert set(again) == set(scenario.first_configs or discovery(sub.received()))


@e2e
def test_broker_restart_reconnects_and_republishes(scenario: Scenario) -> None:
    """The broker goes away for 2 s and comes back with nothing retained: the gate reconnects
    and a NEW subscriber finds availability, discovery, state and the switch retained again."""
    broker, gate = scenario.broker, scenario.gate
    with scenario.diagnose():
        configs = scenario.first_configs or discovery(scenario.sub.received())
        assert configs, "no discovery before the restart"
        broker.restart(down_seconds=2.0)
        wanted: dict[str, Callable[[Received], bool] | None] = {
            t("availability"): payload_is("online"),
            t("state"): None,
            t("recognition"): payload_is("ON"),
        }
        wanted |= dict.fromkeys(configs)
        snap = wait_retained(broker, wanted, timeout=20)
        assert discovery([snap[topic] for topic in configs]) == configs
        assert gate.alive() and gate.get("/").status_code == 200


@e2e
def test_broker_restart_republishes_people_last_seen(scenario: Scenario) -> None:
    with scenario.diagnose():
        wait_retained(scenario.broker, {PEOPLE: None}, timeout=15)


@e2e
def test_erasing_a_person_removes_their_entity_and_retained_topics(scenario: Scenario) -> None:
    broker, gate, sub = scenario.broker, scenario.gate, scenario.sub
    with scenario.diagnose():
        configs = scenario.first_configs or discovery(sub.received())
        topic = person_config_topic(configs, scenario.person_id)
        mark = sub.mark()
        r = httpx.delete(f"{gate.http}/api/persons/{scenario.person_id}", timeout=10)
        assert r.status_code == 200 and r.json()["deleted"], r.text
        sub.wait_for(topic, payload_is(""), timeout=10, after=mark)
        sub.wait_for(PEOPLE, payload_is(""), timeout=10, after=mark)
        snap = retained(broker, ["#"], settle=0.8)
        assert topic not in snap and PEOPLE not in snap
        left = discovery([m for m in snap.values() if is_config(m.topic)])
        assert set(left) == set(configs) - {topic}
        check_discovery(left, None)


@e2e
def test_graceful_stop_publishes_offline(scenario: Scenario) -> None:
    gate, sub = scenario.gate, scenario.sub
    with scenario.diagnose():
        mark = sub.mark()
        t0 = time.monotonic()
        assert gate.stop(signal.SIGTERM) == 0
        assert time.monotonic() - t0 < 10
        sub.wait_for(t("availability"), payload_is("offline"), timeout=5, after=mark)
        snap = retained(scenario.broker, [t("availability")], settle=0.5)
        assert snap[t("availability")].payload == b"offline"


# -- crashes, credentials, TLS, `facegate run --mqtt` ------------------------------------------
@e2e
def test_sigkill_leaves_the_last_will_and_ids_are_stable_across_restarts(
    tmp_path: Path, shared_data: Path, faceplugin_dir: Path
) -> None:
    data, person_id = enrol(shared_data, tmp_path)
    with Broker(tmp_path / "broker") as broker, Subscriber(broker, ["#"]) as sub:
        gate = start_gate(tmp_path / "gate1", broker, data, shared_data)
        with running(gate), diagnose(gate, broker):
            sub.wait_for(t("availability"), payload_is("online"), timeout=15)
            sub.wait_for(is_config, lambda m: person_id.encode() in m.payload, timeout=15)
            time.sleep(0.5)
            first = discovery(sub.received())
            mark = sub.mark()
            gate.proc.send_signal(signal.SIGKILL)
            gate.proc.wait(10)
            will = sub.wait_for(t("availability"), timeout=10, after=mark)
            assert will.payload == b"offline"
            snap = retained(broker, [t("availability")], settle=0.5)
            assert snap[t("availability")].payload == b"offline"
        # Again on the same data: the same entities, the same unique ids.
        mark = sub.mark()
        gate = start_gate(tmp_path / "gate2", broker, data, shared_data)
        with running(gate), diagnose(gate, broker):
            sub.wait_for(t("availability"), payload_is("online"), timeout=15, after=mark)
            sub.wait_for(
                is_config, lambda m: person_id.encode() in m.payload, timeout=15, after=mark
            )
            time.sleep(0.5)
            second = discovery(sub.received()[mark:])
            assert {c["unique_id"] for c in second.values()} == {
                c["unique_id"] for c in first.values()
            }
            assert second == first
            assert gate.stop() == 0


REFUSAL = re.compile(r"refused|not authori[sz]ed|bad user ?name|credentials|password", re.I)


@e2e
def test_a_broker_refusing_the_credentials_is_one_clear_line_and_the_gate_serves(
    tmp_path: Path, shared_data: Path, faceplugin_dir: Path
) -> None:
    need("password")
    wrong = "Wr0ng-Secret-xyz"
    with Broker(tmp_path / "broker", "password") as broker:
        url = broker.url("gate", wrong)
        gate = start_gate(tmp_path / "gate", broker, tmp_path / "data", shared_data, url=url)
        with running(gate), diagnose(gate, broker):
            deadline = time.monotonic() + 15
            while not [line for line in gate.log().splitlines() if REFUSAL.search(line)]:
                assert time.monotonic() < deadline, "no log line about the refused credentials"
                assert gate.alive()
                time.sleep(0.2)
            time.sleep(7.0)  # several reconnection attempts (backoff up to 2 s here)
            log = gate.log()
            said = [line for line in log.splitlines() if REFUSAL.search(line)]
            assert len(said) == 1, f"expected one line about the refusal, got {said}"
            assert wrong not in log, "the password is in the log"
            assert "Traceback" not in log
            assert broker.log().count("not authorised") >= 1
            # The gate keeps serving.
            assert gate.alive()
            assert gate.get("/").status_code == 200
            assert gate.get("/api/stats").status_code == 200
            assert gate.stop() == 0


@e2e
def test_password_broker_with_the_right_credentials(
    tmp_path: Path, shared_data: Path, faceplugin_dir: Path
) -> None:
    need("password")
    with Broker(tmp_path / "broker", "password") as broker, Subscriber(broker, ["#"]) as sub:
        gate = start_gate(tmp_path / "gate", broker, tmp_path / "data", shared_data)
        with running(gate), diagnose(gate, broker):
            sub.wait_for(t("availability"), payload_is("online"), timeout=15)
            sub.wait_for(t("state"), timeout=10)
            assert gate.stop() == 0
            sub.wait_for(t("availability"), payload_is("offline"), timeout=5)
            assert DEFAULT_PASSWORD not in gate.log(), "the password is in the log"


@e2e
def test_tls_broker_with_a_private_ca(
    tmp_path: Path, shared_data: Path, faceplugin_dir: Path
) -> None:
    need("tls")
    with Broker(tmp_path / "broker", "tls") as broker, Subscriber(broker, ["#"]) as sub:
        assert broker.ca_file is not None
        gate = start_gate(
            tmp_path / "gate", broker, tmp_path / "data", shared_data, tls_ca=str(broker.ca_file)
        )
        with running(gate), diagnose(gate, broker):
            sub.wait_for(t("availability"), payload_is("online"), timeout=15)
            sub.wait_for(is_config, timeout=10)
            assert gate.stop() == 0
            sub.wait_for(t("availability"), payload_is("offline"), timeout=5)


@e2e
def test_run_with_the_mqtt_option(tmp_path: Path, shared_data: Path, faceplugin_dir: Path) -> None:
    """`facegate run --mqtt URL` (no serve): the events of the clip reach the broker."""
    data, person_id = enrol(shared_data, tmp_path)
    with Broker(tmp_path / "broker") as broker, Subscriber(broker, ["#"]) as sub:
        cmd = [sys.executable, "-m", "facegate.cli", "run", "--source"]
        cmd += [str(shared_data / "video" / CLIP), "--data", str(data), "--mqtt", broker.url()]
        env = gate_env(tmp_path, "")
        del env["FACEGATE_MQTT_URL"]
        done = subprocess.run(
            cmd, capture_output=True, text=True, env=env, timeout=120, check=False
        )
        with diagnose(None, broker):
            assert done.returncode == 0, done.stderr
            sub.wait_for(t("availability"), payload_is("online"), timeout=5)
            got = sub.wait_for(t("events"), event_of("person_recognized", name=PERSON), timeout=5)
            assert as_json(got)["data"]["person_id"] == person_id
            sub.wait_for(PEOPLE, timeout=5)
            sub.wait_for(t("availability"), payload_is("offline"), timeout=5)
