"""What facegate publishes over MQTT, and the Home Assistant discovery that describes it.

Pure: no I/O, no clock. Every function takes the gate's MQTT configuration (`MqttConfig`: the
`[mqtt]` settings and the gate's id, `gate.id`) and returns `Message`s (topic, payload bytes,
retain, qos) that `server/mqtt.py` publishes as they are. The topics (P = topic_prefix,
G = gate.id):

    P/G/availability            "online" / "offline", retained ("offline" is the last will)
    P/G/state                   retained JSON: state, person, person_id, similarity, access,
                                since, gate
    P/G/events                  every event, the WebSocket JSON ({"type": ..., "data": {...}})
    P/G/snapshot                JPEG of the face (person_recognized, unknown_person_detected)
    P/G/recognition             "ON" / "OFF", retained: whether the gate names people
    P/G/recognition/set         command: "ON" / "OFF"
    P/G/registration/decision   command: {"register": true, "name": "Ada"} (when enabled)
    P/G/diagnostics             retained JSON: processed_fps, frame_to_event_p95_ms, capture_fps
    P/people/<slug>             retained JSON: person_id, name, gate, time, similarity, access,
                                liveness
    P/tracked_object_update     Frigate-shaped face updates (when `frigate`)
    <discovery>/status          Home Assistant's birth message ("online")

Home Assistant discovery: retained configs at `<discovery>/<component>/facegate_G/<object>/config`,
one device per gate (identifiers ["facegate_G"]) holding: sensor "Last person", binary_sensor
"Occupancy", event "Face event" (event_types recognized, stranger, left, registered,
liveness_challenge, liveness_passed, liveness_failed), image "Snapshot", switch "Recognition",
diagnostic sensors "Processed fps" and "Frame to event p95", and one sensor "<Name> last gate"
per enrolled person. Unique ids depend only on the gate id, the object and the person id, so
they are the same at every start. An empty retained config removes an entity (`person_removed`).

What a door should do is `access`: "granted", "denied", or "pending" while the liveness
challenge (`[liveness] challenge`) follows a recognition. It is in the Face event's attributes,
the state (of its person) and the people payload, where a liveness_result turns "pending" into
its verdict: a door opens on access "granted" (`recognized` without a challenge,
`liveness_passed` with one), never on a recognition alone.

With `publish_names = false` no person's name appears anywhere: people topics and person
entities use the person id, `name` fields are dropped from event payloads and `null` in the
state and people payloads, and messages that held a name are replaced by neutral ones.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from datetime import datetime
from typing import Any, Final, Literal

import msgspec

from facegate.events import (
    Access,
    Event,
    LivenessResult,
    PersonRecognized,
    UnknownPersonDetected,
    to_wire,
    type_name,
)
from facegate.settings import MqttSettings, Settings

GateState = Literal["idle", "recognized", "stranger", "registering"]

# The event entity's event_types, from the WebSocket event types that produce them.
EVENT_TYPES: Final[dict[str, str]] = {
    "person_recognized": "recognized",
    "unknown_person_detected": "stranger",
    "person_left_area": "left",
    "registration_complete": "registered",
    "liveness_challenge": "liveness_challenge",
}
# A `liveness_result` is one of two event_types, by its `passed`.
LIVENESS_PASSED: Final = "liveness_passed"
LIVENESS_FAILED: Final = "liveness_failed"
HA_EVENT_TYPES: Final = (*EVENT_TYPES.values(), LIVENESS_PASSED, LIVENESS_FAILED)

# Seconds after the last "ON" state message at which Home Assistant turns the occupancy
# sensor off by itself (a safety net: the gate normally publishes state "idle" first). HA
# restarts this timer at every ON message, so the state must be republished more often than
# this while someone stays in view, or HA shows the gate empty during a long stay.
OCCUPANCY_OFF_DELAY: Final = 30

MANUFACTURER: Final = "facegate"
MODEL: Final = "face gate"
SLUG_MAX: Final = 64

_encoder = msgspec.json.Encoder()


class MqttConfig(MqttSettings, frozen=True, kw_only=True):
    """The `[mqtt]` settings of one gate, with the gate's id (`gate.id`), which names its
    topics, its client id and its Home Assistant device."""

    gate_id: str = "gate"


def mqtt_config(settings: Settings) -> MqttConfig:
    """`settings.mqtt` with `settings.gate.id`."""
    return MqttConfig(**msgspec.structs.asdict(settings.mqtt), gate_id=settings.gate.id)


class Message(msgspec.Struct, frozen=True):
    """One MQTT publication."""

    topic: str
    payload: bytes
    retain: bool
    qos: int


class Topics(msgspec.Struct, frozen=True, kw_only=True):
    """Every topic name of one gate (see the module docstring)."""

    base: str  # P/G
    availability: str
    state: str
    events: str
    snapshot: str
    recognition: str
    recognition_set: str
    registration_decision: str
    diagnostics: str
    people: str  # P/people (a person's topic is people + "/" + slug)
    frigate: str  # P/tracked_object_update
    ha_status: str  # <discovery>/status, "" when discovery is off
    node_id: str  # facegate_G: the discovery node and the device identifier


# -- names -------------------------------------------------------------------------------------
_NOT_SLUG = re.compile(r"[^a-z0-9]+")


def slug(name: str, fallback: str = "") -> str:
    """The topic-safe form of a name: accents removed (NFKD), lower case, every run of
    characters outside [a-z0-9] one "_", no "_" at either end, at most 64 characters.
    `fallback` when nothing is left ("李明", "!!!", "")."""
    plain = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    out = _NOT_SLUG.sub("_", plain.lower()).strip("_")[:SLUG_MAX].rstrip("_")
    return out or fallback


def person_slug(cfg: MqttConfig, person_id: str, name: str) -> str:
    """A person's slug: of the name, or the person id when names are not published (or the
    name has no letter or digit that survives `slug`)."""
    return slug(name, person_id) if cfg.publish_names else person_id


def event_type(event_type: str, *, passed: bool = False) -> str | None:
    """The Home Assistant event_type of a WebSocket event type (`passed`: a liveness_result's),
    None for the others."""
    if event_type == "liveness_result":
        return LIVENESS_PASSED if passed else LIVENESS_FAILED
    return EVENT_TYPES.get(event_type)


# -- topics ------------------------------------------------------------------------------------
def _discovery_prefix(cfg: MqttConfig) -> str:
    return cfg.discovery_prefix.strip("/")


def topics(cfg: MqttConfig) -> Topics:
    p, g = cfg.topic_prefix, cfg.gate_id
    base = f"{p}/{g}"
    dp = _discovery_prefix(cfg)
    return Topics(
        base=base,
        availability=f"{base}/availability",
        state=f"{base}/state",
        events=f"{base}/events",
        snapshot=f"{base}/snapshot",
        recognition=f"{base}/recognition",
        recognition_set=f"{base}/recognition/set",
        registration_decision=f"{base}/registration/decision",
        diagnostics=f"{base}/diagnostics",
        people=f"{p}/people",
        frigate=f"{p}/tracked_object_update",
        ha_status=f"{dp}/status" if dp else "",
        node_id=f"facegate_{g}",
    )


def people_topic(cfg: MqttConfig, person_id: str, name: str) -> str:
    """`P/people/<slug>` of a person."""
    return f"{topics(cfg).people}/{person_slug(cfg, person_id, name)}"


def discovery_topic(cfg: MqttConfig, component: str, object_id: str) -> str:
    """`<discovery>/<component>/facegate_G/<object_id>/config` ("" when discovery is off)."""
    dp = _discovery_prefix(cfg)
    if not dp:
        return ""
    return f"{dp}/{component}/{topics(cfg).node_id}/{object_id}/config"


# -- discovery ---------------------------------------------------------------------------------
def _json(value: Any) -> bytes:
    return _encoder.encode(value)


def _device(cfg: MqttConfig, version: str | None) -> dict[str, Any]:
    device: dict[str, Any] = {
        "identifiers": [topics(cfg).node_id],
        "name": f"facegate {cfg.gate_id}",
        "manufacturer": MANUFACTURER,
        "model": MODEL,
    }
    # Person sensors leave sw_version out: Home Assistant keeps the gate's.
    if version is not None:
        device["sw_version"] = version
    return device


def _origin(version: str | None) -> dict[str, Any]:
    return {"name": "facegate"} if version is None else {"name": "facegate", "sw_version": version}


def _config(
    cfg: MqttConfig,
    component: str,
    object_id: str,
    entity: dict[str, Any],
    *,
    version: str | None,
    unique_id: str | None = None,
) -> Message:
    t = topics(cfg)
    body = {
        "unique_id": unique_id or f"{t.node_id}_{object_id}",
        **entity,
        "availability_topic": t.availability,
        "payload_available": "online",
        "payload_not_available": "offline",
        "qos": cfg.qos,
        "device": _device(cfg, version),
        "origin": _origin(version),
    }
    return Message(discovery_topic(cfg, component, object_id), _json(body), True, cfg.qos)


def _event_template() -> str:
    """Turns the WebSocket JSON on P/G/events into Home Assistant's event JSON (`{"event_type":
    ..., "person": ..., "person_id": ..., "similarity": ..., "track_id": ..., "access": ...,
    "reason": ..., "direction": ...}`, null where the event has no such field) for the mapped
    types and liveness_result (`event_type`), and into "" (which HA ignores) for every other
    message."""
    mapping = _json(EVENT_TYPES).decode()  # a JSON object is a Jinja dict literal
    fields = ", ".join(
        f"'{key}': d.get('{field}')"
        for key, field in (
            ("person", "name"),
            ("person_id", "person_id"),
            ("similarity", "similarity"),
            ("track_id", "track_id"),
            ("access", "access"),
            ("reason", "reason"),
            ("direction", "direction"),
        )
    )
    return (
        "{% if value_json is defined and value_json is mapping %}"
        "{% set d = value_json.data if value_json.data is mapping else {} %}"
        "{% if value_json.type == 'liveness_result' %}"
        f"{{% set e = '{LIVENESS_PASSED}' if d.get('passed') is sameas true"
        f" else '{LIVENESS_FAILED}' %}}"
        f"{{% else %}}{{% set e = {mapping}.get(value_json.type) %}}{{% endif %}}"
        f"{{% if e %}}{{{{ {{'event_type': e, {fields}}} | to_json }}}}{{% endif %}}"
        "{% endif %}"
    )


EVENT_VALUE_TEMPLATE: Final = _event_template()
# The last person named: a state without one (idle, a stranger) keeps the sensor's value
# (`this.state`), unless that is HA's "unknown"/"unavailable", which must not become a value.
LAST_PERSON_TEMPLATE: Final = (
    "{% set p = value_json.person or value_json.person_id %}"
    "{% if p %}{{ p }}"
    "{% elif this.state not in ('unknown', 'unavailable') %}{{ this.state }}"
    "{% else %}None{% endif %}"
)
OCCUPANCY_TEMPLATE: Final = "{{ 'OFF' if value_json.state == 'idle' else 'ON' }}"


def device_discovery(cfg: MqttConfig, version: str) -> list[Message]:
    """The retained discovery configs of the gate's device and its entities ([] when
    discovery_prefix is "")."""
    if not _discovery_prefix(cfg):
        return []
    t = topics(cfg)
    entities: list[tuple[str, str, dict[str, Any]]] = [
        (
            "sensor",
            "last_person",
            {
                "name": "Last person",
                "icon": "mdi:account-check",
                "state_topic": t.state,
                "value_template": LAST_PERSON_TEMPLATE,
                "json_attributes_topic": t.state,
            },
        ),
        (
            "binary_sensor",
            "occupancy",
            {
                "name": "Occupancy",
                "device_class": "occupancy",
                "state_topic": t.state,
                "value_template": OCCUPANCY_TEMPLATE,
                "payload_on": "ON",
                "payload_off": "OFF",
                "off_delay": OCCUPANCY_OFF_DELAY,
                "json_attributes_topic": t.state,
            },
        ),
        (
            "event",
            "face_event",
            {
                "name": "Face event",
                "icon": "mdi:face-recognition",
                "state_topic": t.events,
                "event_types": list(HA_EVENT_TYPES),
                "value_template": EVENT_VALUE_TEMPLATE,
            },
        ),
        (
            "image",
            "snapshot",
            {"name": "Snapshot", "image_topic": t.snapshot, "content_type": "image/jpeg"},
        ),
        (
            "switch",
            "recognition",
            {
                "name": "Recognition",
                "icon": "mdi:face-recognition",
                "command_topic": t.recognition_set,
                "state_topic": t.recognition,
                "payload_on": "ON",
                "payload_off": "OFF",
                "state_on": "ON",
                "state_off": "OFF",
            },
        ),
        (
            "sensor",
            "processed_fps",
            {
                "name": "Processed fps",
                "entity_category": "diagnostic",
                "state_topic": t.diagnostics,
                "value_template": "{{ value_json.processed_fps }}",
                "unit_of_measurement": "fps",
                "state_class": "measurement",
                "json_attributes_topic": t.diagnostics,
            },
        ),
        (
            "sensor",
            "frame_to_event_p95",
            {
                "name": "Frame to event p95",
                "entity_category": "diagnostic",
                "state_topic": t.diagnostics,
                "value_template": "{{ value_json.frame_to_event_p95_ms }}",
                "unit_of_measurement": "ms",
                "device_class": "duration",
                "state_class": "measurement",
            },
        ),
    ]
    return [
        _config(cfg, component, obj, body, version=version) for component, obj, body in entities
    ]


def _person_object(person_id: str) -> str:
    return f"person_{person_id}"


def person_discovery(cfg: MqttConfig, person_id: str, name: str) -> list[Message]:
    """The retained config of the sensor "<Name> last gate" of one enrolled person, on the
    gate's device ([] when discovery is off). Named by the person id when names are not
    published."""
    if not _discovery_prefix(cfg):
        return []
    shown = name if cfg.publish_names and name.strip() else person_id
    topic = people_topic(cfg, person_id, name)
    config = _config(
        cfg,
        "sensor",
        _person_object(person_id),
        {
            "name": f"{shown} last gate",
            "icon": "mdi:door",
            "state_topic": topic,
            "value_template": "{{ value_json.gate }}",
            "json_attributes_topic": topic,
        },
        version=None,
        # Per gate: several gates sharing one gallery each have their own "<Name> last gate".
        unique_id=f"facegate_{cfg.gate_id}_person_{person_id}",
    )
    return [config]


def person_removed(cfg: MqttConfig, person_id: str, name: str) -> list[Message]:
    """What erasing a person publishes: an empty retained config (Home Assistant removes the
    entity; only when discovery is on), then an empty retained payload on their people topic
    (the broker forgets the last seen). `name` is the person's name at erasure (it chose the
    topic)."""
    out: list[Message] = []
    if _discovery_prefix(cfg):
        topic = discovery_topic(cfg, "sensor", _person_object(person_id))
        out.append(Message(topic, b"", True, cfg.qos))
    out.append(Message(people_topic(cfg, person_id, name), b"", True, cfg.qos))
    return out


# -- payloads from events ----------------------------------------------------------------------
def availability(cfg: MqttConfig, online: bool) -> Message:
    """`P/G/availability`, retained; `availability(cfg, False)` is also the last will."""
    return Message(topics(cfg).availability, b"online" if online else b"offline", True, cfg.qos)


def recognition_state(cfg: MqttConfig, on: bool) -> Message:
    """`P/G/recognition`, retained "ON" / "OFF" (the switch's state)."""
    return Message(topics(cfg).recognition, b"ON" if on else b"OFF", True, cfg.qos)


def state_payload(
    cfg: MqttConfig,
    *,
    state: GateState,
    person: str | None,
    person_id: str | None,
    similarity: float | None,
    since: str,
    access: Access | None = None,
) -> Message:
    """`P/G/state`, retained: `since` is the ISO time the gate entered `state`; `person` is
    null when names are not published; `access` is the door's decision for `person_id`
    (null without one)."""
    body = {
        "state": state,
        "person": person if cfg.publish_names else None,
        "person_id": person_id,
        "similarity": similarity,
        "access": access,
        "since": since,
        "gate": cfg.gate_id,
    }
    return Message(topics(cfg).state, _json(body), True, cfg.qos)


def event_message(cfg: MqttConfig, event: Event, names: Iterable[str] = ()) -> Message:
    """`P/G/events`: the event's WebSocket JSON (names removed when not published; `names`,
    the names of the persons it is about, are removed from its text too: see `redact_names`)."""
    wire = to_wire(event)
    payload = wire if cfg.publish_names else redact_names(wire, names)
    return Message(topics(cfg).events, payload, False, cfg.qos)


def people_payload(cfg: MqttConfig, event: PersonRecognized) -> Message:
    """`P/people/<slug>`, retained: where and when the person was last seen, and the door's
    decision (`access`; `liveness`: null until a liveness_result gives its `reason`)."""
    body = {
        "person_id": event.person_id,
        "name": event.name if cfg.publish_names else None,
        "gate": cfg.gate_id,
        "time": event.timestamp,
        "similarity": event.similarity,
        "access": event.access,
        "liveness": None,
    }
    return Message(people_topic(cfg, event.person_id, event.name), _json(body), True, cfg.qos)


def people_verdict(cfg: MqttConfig, seen: Message, result: LivenessResult) -> Message | None:
    """A person's last seen (`seen`, as on their topic) with the verdict of the liveness
    challenge that followed it: `access` granted or denied, `liveness` its reason; `time` stays
    the recognition's. None when `seen` is another gate's (a later sighting there, which this
    gate's verdict does not concern) or not a people payload."""
    try:
        body = msgspec.json.decode(seen.payload)
    except msgspec.DecodeError:
        return None
    if not isinstance(body, dict) or body.get("gate") != cfg.gate_id:
        return None
    body["access"] = result.access
    body["liveness"] = result.reason
    return Message(seen.topic, _json(body), True, cfg.qos)


def snapshot_message(cfg: MqttConfig, jpeg: bytes) -> Message:
    """`P/G/snapshot`: the JPEG bytes as they are, not retained."""
    return Message(topics(cfg).snapshot, jpeg, False, cfg.qos)


def diagnostics_payload(
    cfg: MqttConfig,
    *,
    processed_fps: float | None,
    frame_to_event_p95_ms: float | None,
    capture_fps: float | None,
) -> Message:
    """`P/G/diagnostics`, retained (the diagnostic sensors read it)."""
    body = {
        "processed_fps": processed_fps,
        "frame_to_event_p95_ms": frame_to_event_p95_ms,
        "capture_fps": capture_fps,
    }
    return Message(topics(cfg).diagnostics, _json(body), True, cfg.qos)


def unix_time(iso: str) -> float:
    """Seconds since the epoch of an event's ISO `timestamp` (which carries its offset)."""
    return datetime.fromisoformat(iso).timestamp()


def frigate_payload(
    cfg: MqttConfig, event: PersonRecognized | UnknownPersonDetected, now: float | None = None
) -> Message:
    """`P/tracked_object_update`, shaped like Frigate's face update:
    `{"type": "face", "id": "<G>-<track_id>", "name": name|null, "score": similarity,
    "camera": G, "timestamp": unix seconds}`. The time is the event's `timestamp`, or `now`
    for an event not stamped by the bus (ValueError without either)."""
    if event.timestamp:
        when = unix_time(event.timestamp)
    elif now is not None:
        when = now
    else:
        raise ValueError(f"{type_name(event)} has no timestamp and no `now` was given")
    name = event.name if isinstance(event, PersonRecognized) and cfg.publish_names else None
    track = "none" if event.track_id is None else str(event.track_id)
    body = {
        "type": "face",
        "id": f"{cfg.gate_id}-{track}",
        "name": name,
        "score": event.similarity,
        "camera": cfg.gate_id,
        "timestamp": when,
    }
    return Message(topics(cfg).frigate, _json(body), False, cfg.qos)


# -- publish_names = false ---------------------------------------------------------------------
# The text a message that held a name becomes, by event type.
NEUTRAL_MESSAGES: Final[dict[str, str]] = {
    "person_recognized": "Person recognized",
    "person_left_area": "Person left the area",
    "registration_approved": "Registering a new person",
    "registration_complete": "Person registered",
    "registration_failed": "Registration failed",
    "liveness_challenge": "Liveness check: turn your head",
    "liveness_result": "Liveness check finished",
}
NEUTRAL_MESSAGE: Final = "Name withheld"
# Human-readable fields where a name could have been written into the text.
_TEXT_FIELDS: Final = frozenset({"message", "next_step", "instruction", "hint"})


def _strip_names(node: Any, kind: str, names: set[str]) -> Any:
    """`node` without `name` keys; a dict that had a name gets a neutral `message`."""
    if isinstance(node, list):
        return [_strip_names(item, kind, names) for item in node]
    if not isinstance(node, dict):
        return node
    out = {k: _strip_names(v, kind, names) for k, v in node.items() if k != "name"}
    name = node.get("name")
    if isinstance(name, str) and name.strip():
        names.add(name)
        if isinstance(out.get("message"), str):
            out["message"] = NEUTRAL_MESSAGES.get(kind, NEUTRAL_MESSAGE)
    return out


def _scrub_text(node: Any, pattern: re.Pattern[str]) -> Any:
    """Names written into the text fields of `node` replaced by "someone"."""
    if isinstance(node, list):
        return [_scrub_text(item, pattern) for item in node]
    if not isinstance(node, dict):
        return node
    return {
        k: pattern.sub("someone", v)
        if k in _TEXT_FIELDS and isinstance(v, str)
        else _scrub_text(v, pattern)
        for k, v in node.items()
    }


def redact_names(wire_json: bytes, known: Iterable[str] = ()) -> bytes:
    """A WebSocket JSON message (`{"type": ..., "data": {...}}`) with no person's name left:
    every `name` field is dropped (at any depth; `person_id` stays), the `message` beside a
    name becomes a neutral one (NEUTRAL_MESSAGES: "Welcome, Ada!" -> "Person recognized"),
    and a name written into any other text field (`next_step`, `hint`, ...) becomes "someone",
    as do the `known` names (of the persons the message is about, for events that carry a
    `person_id` but no `name`, like liveness_pose_feedback). Machine fields (`type`, `reason`,
    ids) are never rewritten."""
    doc = msgspec.json.decode(wire_json)
    kind = doc.get("type", "") if isinstance(doc, dict) else ""
    names = {n for n in known if n.strip()}
    doc = _strip_names(doc, kind if isinstance(kind, str) else "", names)
    if names:
        # Longest first, whole words only: "Al" is not removed from "Already".
        alternatives = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
        doc = _scrub_text(doc, re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)"))
    return _json(doc)
