"""The pure MQTT / Home Assistant module: topics, discovery configs, payloads, redaction."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest

from facegate.events import (
    Access,
    Event,
    LivenessChallenge,
    LivenessPoseFeedback,
    LivenessResult,
    PersonLeftArea,
    PersonRecognized,
    RegistrationApproved,
    RegistrationComplete,
    RegistrationFailed,
    RegistrationStart,
    SystemReady,
    Tracks,
    TrackView,
    UnknownPersonDetected,
    stamp,
    to_wire,
)
from facegate.server import homeassistant as ha
from facegate.server.homeassistant import Message, MqttConfig
from facegate.settings import GateSettings, MqttSettings, Settings

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC).timestamp()
NAME = "Zelda Quixote"  # distinctive: found by a substring search if it leaks
PID = "a1b2c3d4e5f6"

# What Home Assistant needs of each component (beside unique_id, device, availability).
REQUIRED: dict[str, set[str]] = {
    "sensor": {"state_topic"},
    "binary_sensor": {"state_topic"},
    "event": {"state_topic", "event_types"},
    "image": {"image_topic"},
    "switch": {"command_topic", "state_topic"},
}


def settings(**kw: Any) -> MqttConfig:
    return msgspec.structs.replace(MqttConfig(url="mqtt://broker:1883"), **kw)


def config(message: Message) -> dict[str, Any]:
    body = json.loads(message.payload)
    assert isinstance(body, dict)
    return body


def component(message: Message) -> str:
    return message.topic.split("/")[-4]


def recognized(
    name: str = NAME, track: int | None = 7, access: Access = "granted"
) -> PersonRecognized:
    event = PersonRecognized(
        person_id=PID,
        name=name,
        message=f"Welcome, {name}!",
        similarity=0.8123,
        threshold=0.44,
        confidence=0.8123,
        distance=0.1877,
        track_id=track,
        bbox=[1.0, 2.0, 3.0, 4.0],
        frame_time=1.5,
        access=access,
    )
    stamped = stamp(event, seq=12, now=NOW)
    assert isinstance(stamped, PersonRecognized)
    return stamped


def challenge(name: str | None = NAME) -> LivenessChallenge:
    """The head-turn challenge, worded as the engine words it (the name in its texts)."""
    person = PID if name is not None else None
    who = f"{name}, turn" if name is not None else "Turn"
    return LivenessChallenge(
        person_id=person,
        name=name,
        direction="left",
        instruction=f"{who} your head to your left",
        message=f"{who} your head to your left, then back",
        target_yaw=[25.0, 90.0],
        target_pitch=[-30.0, 30.0],
        timeout_seconds=8.0,
        track_id=7,
    )


def verdict(
    passed: bool, access: Access, reason: str = "passed", name: str | None = NAME
) -> LivenessResult:
    """A liveness_result, stamped a second after `recognized()`."""
    event = LivenessResult(
        person_id=PID if name is not None else None,
        name=name,
        passed=passed,
        reason=reason,
        message=f"Thank you, {name}" if passed else f"{name} moved like a picture",
        residual=0.31 if passed else 0.05,
        cutoff=0.128,
        seconds=2.4,
        passive_score=0.9,
        access=access,
        next_step="" if passed else f"{name}: look at the camera and try again",
        track_id=7,
    )
    stamped = stamp(event, seq=14, now=NOW + 1)
    assert isinstance(stamped, LivenessResult)
    return stamped


def stranger() -> UnknownPersonDetected:
    event = stamp(
        UnknownPersonDetected(similarity=0.31, threshold=0.44, enrolled=3, track_id=9), 13, NOW
    )
    assert isinstance(event, UnknownPersonDetected)
    return event


def named_events(name: str = NAME) -> list[Event]:
    """Every kind of event that carries a person's name, as the engine words them."""
    return [
        recognized(name),
        PersonLeftArea(person_id=PID, name=name, message=f"{name} left the area", track_id=7),
        RegistrationApproved(message=f"Registering {name}", track_id=4, name=name),
        RegistrationComplete(person_id=PID, name=name, message=f"{name} is registered"),
        RegistrationFailed(
            message=f"Already registered as {name} ({PID})",
            reason="already_registered",
            person_id=PID,
            name=name,
            next_step=f"They are already registered as {name}: nothing to do",
        ),
        challenge(name),
        verdict(True, "granted", name=name),
        verdict(False, "denied", "planar", name=name),
        Tracks(
            frame=3,
            frame_time=0.1,
            width=640,
            height=480,
            threshold=0.44,
            tracks=[
                TrackView(track_id=7, bbox=[0, 0, 1, 1], state="known", person_id=PID, name=name)
            ],
        ),
    ]


def every_message(cfg: MqttConfig, name: str = NAME) -> list[Message]:
    """Everything the module builds, for one person called `name`."""
    out = [
        *ha.device_discovery(cfg, "0.1.0"),
        *ha.person_discovery(cfg, PID, name),
        *ha.person_removed(cfg, PID, name),
        ha.state_payload(
            cfg, state="recognized", person=name, person_id=PID, similarity=0.8, since="t"
        ),
        ha.people_payload(cfg, recognized(name)),
        ha.people_payload(cfg, recognized(name, access="pending")),
        ha.frigate_payload(cfg, recognized(name)),
        ha.frigate_payload(cfg, stranger()),
        ha.availability(cfg, True),
        ha.recognition_state(cfg, False),
    ]
    out += [ha.event_message(cfg, event) for event in named_events(name)]
    # An event about a person without a `name` field: the bridge gives the name to remove.
    out.append(ha.event_message(cfg, pose_feedback(name), (name,)))
    seen = ha.people_payload(cfg, recognized(name, access="pending"))
    settled = ha.people_verdict(cfg, seen, verdict(True, "granted", name=name))
    assert settled is not None
    out.append(settled)
    return out


def pose_feedback(name: str) -> LivenessPoseFeedback:
    return LivenessPoseFeedback(
        person_id=PID,
        direction="left",
        phase="turn",
        yaw=-3.0,
        pitch=1.0,
        target_yaw=[25.0, 90.0],
        target_pitch=[-30.0, 30.0],
        seconds_left=6.5,
        hint=f"A little more, {name}: turn to your left",
        track_id=7,
    )


# -- topics ------------------------------------------------------------------------------------
def test_the_gate_is_named_by_gate_id_not_by_an_mqtt_key() -> None:
    mqtt = MqttSettings(url="mqtt://broker:1883", topic_prefix="fg", qos=0)
    cfg = ha.mqtt_config(Settings(gate=GateSettings(id="porch"), mqtt=mqtt))
    assert cfg.gate_id == "porch"
    assert (cfg.url, cfg.topic_prefix, cfg.qos) == (mqtt.url, "fg", 0)  # the rest as it is
    assert ha.topics(cfg).base == "fg/porch" and ha.topics(cfg).node_id == "facegate_porch"
    device = config(ha.device_discovery(cfg, "1.2.3")[0])["device"]
    assert device["name"] == "facegate porch" and device["identifiers"] == ["facegate_porch"]
    assert ha.mqtt_config(Settings(mqtt=mqtt)).gate_id == "gate"  # the default gate.id
    assert "gate_id" not in msgspec.structs.asdict(MqttSettings())


def test_topics_follow_the_spec() -> None:
    t = ha.topics(settings(topic_prefix="fg", gate_id="front-door"))
    assert t == ha.Topics(
        base="fg/front-door",
        availability="fg/front-door/availability",
        state="fg/front-door/state",
        events="fg/front-door/events",
        snapshot="fg/front-door/snapshot",
        recognition="fg/front-door/recognition",
        recognition_set="fg/front-door/recognition/set",
        registration_decision="fg/front-door/registration/decision",
        diagnostics="fg/front-door/diagnostics",
        people="fg/people",
        frigate="fg/tracked_object_update",
        ha_status="homeassistant/status",
        node_id="facegate_front-door",
    )
    assert ha.topics(settings(discovery_prefix="")).ha_status == ""
    assert ha.topics(settings(discovery_prefix="ha/disc/")).ha_status == "ha/disc/status"


def test_people_topic_uses_the_slug_or_the_id() -> None:
    assert ha.people_topic(settings(), PID, "Ada Lovelace") == "facegate/people/ada_lovelace"
    assert ha.people_topic(settings(publish_names=False), PID, "Ada") == f"facegate/people/{PID}"
    assert ha.people_topic(settings(), PID, "李明") == f"facegate/people/{PID}"


# -- slugs -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Ada", "ada"),
        ("Ada Lovelace", "ada_lovelace"),
        ("  Ada   Lovelace  ", "ada_lovelace"),
        ("Zoë O'Brien-Smith", "zoe_o_brien_smith"),
        ("José García", "jose_garcia"),
        ("ÅNGSTRÖM", "angstrom"),
        ("Ada!", "ada"),
        ("R2-D2 #3", "r2_d2_3"),
        ("ﬁona", "fiona"),  # NFKD: the ligature is two letters
        ("Ada/#/+", "ada"),  # MQTT wildcards and separators never reach a topic
    ],
)
def test_slug(name: str, expected: str) -> None:
    assert ha.slug(name) == expected
    assert ha.slug(name, PID) == expected


@pytest.mark.parametrize("name", ["", "   ", "李明", "!!!", "Олег", "—"])
def test_slug_falls_back_when_nothing_is_left(name: str) -> None:
    assert ha.slug(name) == ""
    assert ha.slug(name, PID) == PID
    assert ha.person_slug(settings(), PID, name) == PID


def test_slug_is_bounded_and_clean() -> None:
    out = ha.slug("a" * 63 + " b" + "c" * 100)
    assert len(out) <= ha.SLUG_MAX
    assert not out.endswith("_")
    assert ha.slug("Ada Lovelace") == ha.slug("ada  lovelace")  # same input form, same topic


def test_person_slug_without_names_is_the_id() -> None:
    assert ha.person_slug(settings(publish_names=False), PID, "Ada") == PID


# -- discovery ---------------------------------------------------------------------------------
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_every_config_is_what_home_assistant_requires(qos: int) -> None:
    cfg = settings(qos=qos)
    t = ha.topics(cfg)
    messages = [*ha.device_discovery(cfg, "1.2.3"), *ha.person_discovery(cfg, PID, "Ada")]
    components = {component(m) for m in messages}
    assert components == set(REQUIRED)
    for message in messages:
        body = config(message)
        # Compact JSON (no spaces between tokens), retained, the configured QoS.
        assert message.payload == msgspec.json.encode(body)
        assert message.retain
        assert message.qos == qos
        assert body["qos"] == qos
        assert REQUIRED[component(message)] <= body.keys(), message.topic
        assert body["unique_id"]
        assert body["name"]
        assert body["device"]["identifiers"] == ["facegate_gate"]
        assert body["availability_topic"] == t.availability
        assert (body["payload_available"], body["payload_not_available"]) == ("online", "offline")
        assert body["origin"]["name"] == "facegate"
        # Every topic it names is one of the gate's.
        for key in ("state_topic", "command_topic", "image_topic", "json_attributes_topic"):
            if key in body:
                assert body[key].startswith("facegate/"), (key, body[key])


def test_device_config() -> None:
    messages = ha.device_discovery(settings(gate_id="porch"), "1.2.3")
    device = config(messages[0])["device"]
    assert device == {
        "identifiers": ["facegate_porch"],
        "name": "facegate porch",
        "manufacturer": "facegate",
        "model": "face gate",
        "sw_version": "1.2.3",
    }
    assert all(config(m)["device"] == device for m in messages)
    # A person's sensor joins the same device and leaves its version alone.
    person = config(ha.person_discovery(settings(gate_id="porch"), PID, "Ada")[0])["device"]
    assert person["identifiers"] == device["identifiers"]
    assert "sw_version" not in person


def test_discovery_topics_and_entities() -> None:
    cfg = settings()
    t = ha.topics(cfg)
    by_topic = {m.topic: config(m) for m in ha.device_discovery(cfg, "0.1.0")}
    node = "homeassistant/{}/facegate_gate/{}/config"
    assert set(by_topic) == {
        node.format("sensor", "last_person"),
        node.format("binary_sensor", "occupancy"),
        node.format("event", "face_event"),
        node.format("image", "snapshot"),
        node.format("switch", "recognition"),
        node.format("sensor", "processed_fps"),
        node.format("sensor", "frame_to_event_p95"),
    }
    last = by_topic[node.format("sensor", "last_person")]
    assert (last["name"], last["state_topic"]) == ("Last person", t.state)
    assert last["json_attributes_topic"] == t.state

    occupancy = by_topic[node.format("binary_sensor", "occupancy")]
    assert occupancy["device_class"] == "occupancy"
    assert occupancy["state_topic"] == t.state
    assert isinstance(occupancy["off_delay"], int)
    assert occupancy["off_delay"] > 0
    assert (occupancy["payload_on"], occupancy["payload_off"]) == ("ON", "OFF")

    event = by_topic[node.format("event", "face_event")]
    assert event["state_topic"] == t.events
    assert event["event_types"] == [
        "recognized",
        "stranger",
        "left",
        "registered",
        "liveness_challenge",
        "liveness_passed",
        "liveness_failed",
    ]
    assert event["value_template"] == ha.EVENT_VALUE_TEMPLATE

    image = by_topic[node.format("image", "snapshot")]
    assert (image["image_topic"], image["content_type"]) == (t.snapshot, "image/jpeg")

    switch = by_topic[node.format("switch", "recognition")]
    assert (switch["command_topic"], switch["state_topic"]) == (t.recognition_set, t.recognition)
    assert (switch["payload_on"], switch["payload_off"]) == ("ON", "OFF")

    for obj in ("processed_fps", "frame_to_event_p95"):
        diagnostic = by_topic[node.format("sensor", obj)]
        assert diagnostic["entity_category"] == "diagnostic"
        assert diagnostic["state_topic"] == t.diagnostics
    assert "processed_fps" in by_topic[node.format("sensor", "processed_fps")]["value_template"]
    latency = by_topic[node.format("sensor", "frame_to_event_p95")]
    assert "frame_to_event_p95_ms" in latency["value_template"]
    assert latency["unit_of_measurement"] == "ms"


def test_unique_ids_are_stable_and_distinct() -> None:
    def ids(gate: str, names: dict[str, str]) -> list[str]:
        cfg = settings(gate_id=gate)
        messages = list(ha.device_discovery(cfg, "0.1.0"))
        for pid, name in names.items():
            messages += ha.person_discovery(cfg, pid, name)
        return [config(m)["unique_id"] for m in messages]

    people = {PID: "Ada", "0f0f0f0f0f0f": "Ada", "ffffffffffff": "Bob"}
    first = ids("gate", people)
    assert first == ids("gate", people)  # a restart gives the same ids
    assert len(set(first)) == len(first)  # two people called Ada are two entities
    assert ids("gate", {})[0] == "facegate_gate_last_person"
    # Another gate on the same Home Assistant: different device entities.
    assert not set(ids("gate", {})) & set(ids("porch", {}))
    # Versions, names and the publish_names setting never change an id.
    again = [config(m)["unique_id"] for m in ha.device_discovery(settings(), "9.9")]
    assert again == ids("gate", {})
    renamed = config(ha.person_discovery(settings(publish_names=False), PID, "Other")[0])
    assert renamed["unique_id"] == f"facegate_gate_person_{PID}"
    # The same person at two gates sharing a gallery: two entities, one per gate.
    porch = config(ha.person_discovery(settings(gate_id="porch"), PID, "Ada")[0])
    assert porch["unique_id"] == f"facegate_porch_person_{PID}" != renamed["unique_id"]


def test_person_discovery() -> None:
    cfg = settings()
    [message] = ha.person_discovery(cfg, PID, "Ada Lovelace")
    assert message.topic == f"homeassistant/sensor/facegate_gate/person_{PID}/config"
    body = config(message)
    assert body["name"] == "Ada Lovelace last gate"
    assert body["unique_id"] == f"facegate_gate_person_{PID}"
    assert body["state_topic"] == "facegate/people/ada_lovelace"
    assert body["json_attributes_topic"] == "facegate/people/ada_lovelace"
    assert body["value_template"] == "{{ value_json.gate }}"
    # A name with nothing left to slug: the id names the topic, the name the entity.
    [unicode] = ha.person_discovery(cfg, PID, "李明")
    assert config(unicode)["state_topic"] == f"facegate/people/{PID}"
    assert config(unicode)["name"] == "李明 last gate"


def test_person_removed_empties_the_config_and_the_people_topic() -> None:
    cfg = settings(qos=2)
    [added] = ha.person_discovery(cfg, PID, "Ada Lovelace")
    removed = ha.person_removed(cfg, PID, "Ada Lovelace")
    assert removed == [
        Message(added.topic, b"", True, 2),
        Message("facegate/people/ada_lovelace", b"", True, 2),
    ]
    # The people topic removed is the one the payloads were published on.
    assert removed[1].topic == ha.people_payload(cfg, recognized("Ada Lovelace")).topic
    assert removed[1].topic == config(added)["state_topic"]
    quiet = settings(publish_names=False)
    assert [m.topic for m in ha.person_removed(quiet, PID, "Ada")] == [
        f"homeassistant/sensor/facegate_gate/person_{PID}/config",
        f"facegate/people/{PID}",
    ]


def test_no_discovery_without_a_discovery_prefix() -> None:
    cfg = settings(discovery_prefix="")
    assert ha.device_discovery(cfg, "0.1.0") == []
    assert ha.person_discovery(cfg, PID, "Ada") == []
    assert ha.person_removed(cfg, PID, "Ada") == [
        Message("facegate/people/ada", b"", True, cfg.qos)
    ]
    assert ha.discovery_topic(cfg, "sensor", "x") == ""


def test_event_type() -> None:
    assert ha.event_type("person_recognized") == "recognized"
    assert ha.event_type("unknown_person_detected") == "stranger"
    assert ha.event_type("person_left_area") == "left"
    assert ha.event_type("registration_complete") == "registered"
    assert ha.event_type("liveness_challenge") == "liveness_challenge"
    assert ha.event_type("liveness_result", passed=True) == "liveness_passed"
    assert ha.event_type("liveness_result", passed=False) == "liveness_failed"
    assert ha.event_type("liveness_result") == "liveness_failed"
    others = ("system_ready", "registration_start", "tracks", "liveness_pose_feedback", "")
    for other in others:
        assert ha.event_type(other) is None
        assert ha.event_type(other, passed=True) is None


# -- payloads ----------------------------------------------------------------------------------
def test_state_payload() -> None:
    message = ha.state_payload(
        settings(gate_id="porch"),
        state="recognized",
        person="Ada",
        person_id=PID,
        similarity=0.81,
        since="2026-03-01T12:00:00.000+00:00",
        access="pending",
    )
    assert (message.topic, message.retain) == ("facegate/porch/state", True)
    assert json.loads(message.payload) == {
        "state": "recognized",
        "person": "Ada",
        "person_id": PID,
        "similarity": 0.81,
        "access": "pending",
        "since": "2026-03-01T12:00:00.000+00:00",
        "gate": "porch",
    }
    idle = ha.state_payload(
        settings(), state="idle", person=None, person_id=None, similarity=None, since="t"
    )
    assert json.loads(idle.payload)["person"] is None
    assert json.loads(idle.payload)["access"] is None  # no person, no decision


def test_people_payload() -> None:
    event = recognized("Ada Lovelace")
    message = ha.people_payload(settings(gate_id="porch", qos=0), event)
    assert message == Message("facegate/people/ada_lovelace", message.payload, True, 0)
    assert json.loads(message.payload) == {
        "person_id": PID,
        "name": "Ada Lovelace",
        "gate": "porch",
        "time": event.timestamp,
        "similarity": 0.8123,
        "access": "granted",  # no liveness challenge: granted at once
        "liveness": None,
    }
    pending = ha.people_payload(settings(), recognized("Ada", access="pending"))
    assert json.loads(pending.payload)["access"] == "pending"


@pytest.mark.parametrize(
    ("passed", "access", "reason"),
    [(True, "granted", "passed"), (False, "denied", "planar"), (False, "denied", "timeout")],
)
def test_people_verdict_settles_the_access_of_this_gates_last_seen(
    passed: bool, access: Access, reason: str
) -> None:
    cfg = settings(gate_id="porch", qos=2)
    event = recognized("Ada Lovelace", access="pending")
    seen = ha.people_payload(cfg, event)
    settled = ha.people_verdict(cfg, seen, verdict(passed, access, reason))
    assert settled is not None
    assert (settled.topic, settled.retain, settled.qos) == ("facegate/people/ada_lovelace", True, 2)
    assert json.loads(settled.payload) == {
        "person_id": PID,
        "name": "Ada Lovelace",
        "gate": "porch",
        "time": event.timestamp,  # the sighting's: the verdict does not make it newer
        "similarity": 0.8123,
        "access": access,
        "liveness": reason,
    }
    # Another gate's last seen (a later sighting there) is not this verdict's to settle.
    other = ha.people_payload(settings(gate_id="garage"), event)
    assert ha.people_verdict(cfg, other, verdict(passed, access, reason)) is None
    assert (
        ha.people_verdict(cfg, Message(seen.topic, b"", True, 2), verdict(True, "granted")) is None
    )
    # Without names the payload stays nameless.
    quiet = settings(gate_id="porch", publish_names=False)
    settled = ha.people_verdict(quiet, ha.people_payload(quiet, event), verdict(True, "granted"))
    assert settled is not None and settled.topic == f"facegate/people/{PID}"
    assert json.loads(settled.payload)["name"] is None
    assert json.loads(settled.payload)["access"] == "granted"


def test_event_message_is_the_websocket_json() -> None:
    event = recognized("Ada")
    message = ha.event_message(settings(), event)
    assert message == Message("facegate/gate/events", to_wire(event), False, 1)


def test_frigate_payload_shape() -> None:
    cfg = settings(gate_id="porch")
    message = ha.frigate_payload(cfg, recognized("Ada"))
    assert (message.topic, message.retain) == ("facegate/tracked_object_update", False)
    assert json.loads(message.payload) == {
        "type": "face",
        "id": "porch-7",
        "name": "Ada",
        "score": 0.8123,
        "camera": "porch",
        "timestamp": NOW,
    }
    unknown = json.loads(ha.frigate_payload(cfg, stranger()).payload)
    assert (unknown["name"], unknown["id"], unknown["score"]) == (None, "porch-9", 0.31)
    # An event that the bus has not stamped takes the given time.
    raw = UnknownPersonDetected(threshold=0.44, enrolled=0)
    assert json.loads(ha.frigate_payload(cfg, raw, now=5.0).payload)["timestamp"] == 5.0
    assert json.loads(ha.frigate_payload(cfg, raw, now=5.0).payload)["id"] == "porch-none"
    with pytest.raises(ValueError, match="timestamp"):
        ha.frigate_payload(cfg, raw)


def test_small_messages() -> None:
    cfg = settings(qos=0)
    assert ha.availability(cfg, True) == Message("facegate/gate/availability", b"online", True, 0)
    assert ha.availability(cfg, False).payload == b"offline"
    assert ha.recognition_state(cfg, True) == Message("facegate/gate/recognition", b"ON", True, 0)
    assert ha.recognition_state(cfg, False).payload == b"OFF"
    assert ha.snapshot_message(cfg, b"\xff\xd8jpeg") == Message(
        "facegate/gate/snapshot", b"\xff\xd8jpeg", False, 0
    )
    diag = ha.diagnostics_payload(
        cfg, processed_fps=14.5, frame_to_event_p95_ms=61.0, capture_fps=None
    )
    assert (diag.topic, diag.retain) == ("facegate/gate/diagnostics", True)
    assert json.loads(diag.payload) == {
        "processed_fps": 14.5,
        "frame_to_event_p95_ms": 61.0,
        "capture_fps": None,
    }


def test_message_is_frozen() -> None:
    message = ha.availability(settings(), True)
    with pytest.raises(AttributeError):
        message.topic = "x"  # type: ignore[misc]


# -- publish_names = false ---------------------------------------------------------------------
@pytest.mark.parametrize("name", [NAME, "Zoë", "李明"])
def test_no_name_leaks_when_names_are_not_published(name: str) -> None:
    cfg = settings(publish_names=False)
    messages = every_message(cfg, name)
    assert len(messages) > 15
    for message in messages:
        assert name not in message.topic
        text = message.payload.decode()
        assert name not in text, (message.topic, text)
        # Nor its JSON-escaped form, nor its slug.
        assert json.dumps(name)[1:-1] not in text
        for piece in name.split():
            assert piece not in text, (message.topic, text)
        slugged = ha.slug(name)
        if slugged:
            assert slugged not in message.topic
            assert slugged not in text
    # The same messages with names on do carry it (the check above can see a leak).
    assert any(name in m.payload.decode() for m in every_message(settings(), name))


def test_person_entity_is_named_by_id_without_names() -> None:
    [message] = ha.person_discovery(settings(publish_names=False), PID, "Ada")
    body = config(message)
    assert body["name"] == f"{PID} last gate"
    assert body["state_topic"] == f"facegate/people/{PID}"


def test_payloads_keep_ids_without_names() -> None:
    cfg = settings(publish_names=False)
    state = json.loads(
        ha.state_payload(
            cfg, state="recognized", person="Ada", person_id=PID, similarity=0.8, since="t"
        ).payload
    )
    assert (state["person"], state["person_id"]) == (None, PID)
    people = json.loads(ha.people_payload(cfg, recognized("Ada")).payload)
    assert (people["name"], people["person_id"]) == (None, PID)
    frigate = json.loads(ha.frigate_payload(cfg, recognized("Ada")).payload)
    assert frigate["name"] is None


def test_redact_names() -> None:
    wire = ha.redact_names(to_wire(recognized("Ada")))
    doc = json.loads(wire)
    assert doc["type"] == "person_recognized"
    assert "name" not in doc["data"]
    assert doc["data"]["person_id"] == PID
    assert doc["data"]["message"] == "Person recognized"
    assert doc["data"]["similarity"] == 0.8123
    assert wire == msgspec.json.encode(doc)  # compact

    failed = RegistrationFailed(
        message=f"Already registered as Al ({PID})",
        reason="already_registered",
        person_id=PID,
        name="Al",
        next_step="They are already registered as Al: nothing to do",
    )
    data = json.loads(ha.redact_names(to_wire(failed)))["data"]
    assert data["message"] == "Registration failed"
    # Whole words only, machine fields untouched: "Al" is not taken out of "already".
    assert data["next_step"] == "They are already registered as someone: nothing to do"
    assert data["reason"] == "already_registered"

    left = json.loads(ha.redact_names(to_wire(named_events("Ada")[1])))["data"]
    assert left["message"] == "Person left the area"


def test_redact_names_of_liveness_events() -> None:
    asked = json.loads(ha.redact_names(to_wire(challenge("Ada"))))["data"]
    assert "name" not in asked and asked["person_id"] == PID
    assert asked["message"] == "Liveness check: turn your head"
    assert asked["instruction"] == "someone, turn your head to your left"
    assert asked["direction"] == "left"
    failed = json.loads(ha.redact_names(to_wire(verdict(False, "denied", "planar", "Ada"))))
    data = failed["data"]
    assert "name" not in data and data["message"] == "Liveness check finished"
    assert data["next_step"] == "someone: look at the camera and try again"
    assert (data["passed"], data["access"], data["reason"]) == (False, "denied", "planar")
    # No `name` field, the name in a hint: removed only when the caller names the person.
    leaky = json.loads(ha.redact_names(to_wire(pose_feedback("Ada"))))["data"]
    assert leaky["hint"] == "A little more, Ada: turn to your left"
    hint = json.loads(ha.redact_names(to_wire(pose_feedback("Ada")), ["Ada"]))["data"]
    assert hint["hint"] == "A little more, someone: turn to your left"
    assert hint["person_id"] == PID and hint["direction"] == "left"
    # An unknown face's challenge and verdict hold no name: kept as they are.
    for event in (challenge(None), verdict(False, "denied", "timeout", None)):
        doc = json.loads(to_wire(event))
        doc["data"].pop("name")
        assert json.loads(ha.redact_names(to_wire(event))) == doc


def test_redact_names_leaves_nameless_events_alone() -> None:
    start = RegistrationStart(message="Follow the instructions", total_angles=3, angles=["a"])
    for event in (SystemReady(), stranger(), start, PersonLeftArea(track_id=1)):
        doc = json.loads(to_wire(event))
        doc["data"].pop("name", None)  # a null name field goes too: no `name` key is left
        assert json.loads(ha.redact_names(to_wire(event))) == doc
    # An empty name (a registration without one) is dropped, its message kept.
    approved = RegistrationApproved(message="Registering the new person", name="")
    data = json.loads(ha.redact_names(to_wire(approved)))["data"]
    assert "name" not in data
    assert data["message"] == "Registering the new person"


def test_redact_names_reaches_nested_names() -> None:
    tracks = named_events("Ada")[-1]
    doc = json.loads(ha.redact_names(to_wire(tracks)))
    assert doc["data"]["tracks"] == [
        {
            "track_id": 7,
            "bbox": [0, 0, 1, 1],
            "state": "known",
            "person_id": PID,
            "similarity": None,
            "liveness": None,
            "instruction": None,
        }
    ]


def test_event_message_redacts_without_names() -> None:
    message = ha.event_message(settings(publish_names=False), recognized("Ada"))
    assert message.payload == ha.redact_names(to_wire(recognized("Ada")))


# -- the templates, rendered as Home Assistant would (Jinja, sandboxed) ------------------------
@pytest.fixture
def jinja() -> Any:
    sandbox = pytest.importorskip("jinja2.sandbox")
    env = sandbox.ImmutableSandboxedEnvironment()
    env.filters["to_json"] = json.dumps  # Home Assistant's filter of that name
    return env


class This:
    def __init__(self, state: str) -> None:
        self.state = state


def test_event_template_maps_the_types(jinja: Any) -> None:
    template = jinja.from_string(ha.EVENT_VALUE_TEMPLATE)

    def render(payload: bytes) -> str:
        return str(template.render(value=payload.decode(), value_json=json.loads(payload)))

    out = json.loads(render(to_wire(recognized('Ada "A" O\'Hara'))))
    assert out == {
        "event_type": "recognized",
        "person": 'Ada "A" O\'Hara',
        "person_id": PID,
        "similarity": 0.8123,
        "track_id": 7,
        "access": "granted",
        "reason": None,
        "direction": None,
    }
    assert json.loads(render(to_wire(stranger())))["event_type"] == "stranger"
    left = PersonLeftArea(person_id=PID, name="Ada", message="Ada left the area")
    assert json.loads(render(to_wire(left)))["event_type"] == "left"
    done = RegistrationComplete(person_id=PID, name="Ada", message="Ada is registered")
    assert json.loads(render(to_wire(done)))["event_type"] == "registered"
    quiet = json.loads(render(ha.redact_names(to_wire(recognized("Ada")))))
    assert (quiet["person"], quiet["person_id"]) == (None, PID)
    # A door opens on access granted: never on a recognition pending its liveness verdict.
    pending = json.loads(render(to_wire(recognized("Ada", access="pending"))))
    assert (pending["event_type"], pending["access"]) == ("recognized", "pending")
    asked = json.loads(render(to_wire(challenge("Ada"))))
    assert (asked["event_type"], asked["direction"], asked["person"]) == (
        "liveness_challenge",
        "left",
        "Ada",
    )
    passed = json.loads(render(to_wire(verdict(True, "granted", name="Ada"))))
    assert passed == {
        "event_type": "liveness_passed",
        "person": "Ada",
        "person_id": PID,
        "similarity": None,
        "track_id": 7,
        "access": "granted",
        "reason": "passed",
        "direction": None,
    }
    failed = json.loads(render(to_wire(verdict(False, "denied", "planar", "Ada"))))
    assert (failed["event_type"], failed["access"], failed["reason"]) == (
        "liveness_failed",
        "denied",
        "planar",
    )
    # An unknown face that turned its head passed, yet is denied: no person, no access.
    stranger_passed = json.loads(render(to_wire(verdict(True, "denied", name=None))))
    assert stranger_passed["event_type"] == "liveness_passed"
    assert (stranger_passed["access"], stranger_passed["person_id"]) == ("denied", None)
    quiet = json.loads(render(ha.redact_names(to_wire(verdict(True, "granted", name="Ada")))))
    assert (quiet["event_type"], quiet["person"], quiet["person_id"]) == (
        "liveness_passed",
        None,
        PID,
    )
    # Every event_type the template gives is one the entity declares.
    [entity] = [m for m in ha.device_discovery(settings(), "0.1.0") if component(m) == "event"]
    declared = set(config(entity)["event_types"])
    assert {"recognized", "liveness_challenge", "liveness_passed", "liveness_failed"} <= declared
    # Other messages render nothing, which Home Assistant ignores.
    assert render(to_wire(SystemReady())) == ""
    assert render(to_wire(named_events()[-1])) == ""
    assert render(to_wire(pose_feedback("Ada"))) == ""
    assert str(template.render(value="x")) == ""  # not JSON: value_json undefined


def test_state_templates(jinja: Any) -> None:
    last = jinja.from_string(ha.LAST_PERSON_TEMPLATE)
    assert last.render(value_json={"person": "Ada", "person_id": PID}, this=This("Bob")) == "Ada"
    assert last.render(value_json={"person": None, "person_id": PID}, this=This("Bob")) == PID
    assert last.render(value_json={"person": None, "person_id": None}, this=This("Bob")) == "Bob"
    for state in ("unknown", "unavailable"):
        assert last.render(value_json={"person": None}, this=This(state)) == "None"
    occupancy = jinja.from_string(ha.OCCUPANCY_TEMPLATE)
    assert occupancy.render(value_json={"state": "idle"}) == "OFF"
    for state in ("recognized", "stranger", "registering"):
        assert occupancy.render(value_json={"state": state}) == "ON"
