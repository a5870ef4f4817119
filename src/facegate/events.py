"""Events from facegate to its clients: one tagged union of frozen msgspec Structs.

On the wire every event is `{"type": <name>, "data": {...}}`, the envelope of the original
design, whose type names and fields stay valid (`person_recognized`, `unknown_person_detected`,
`person_left_area`, `system_ready`, `registration_*`). Every event's data also carries:
`seq` (monotonic per process), `timestamp` (ISO 8601, UTC), and, where a face is concerned,
`track_id`, `bbox` and `frame_time` (seconds on the engine's clock when the frame was captured).

`seq` and `timestamp` are stamped by the bus when the event is published (`stamp`).
The JSON Schema of the wire format is generated from these Structs (`json_schema`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

import msgspec

BBoxList = list[float]


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """Fields every event has."""

    seq: int = 0
    timestamp: str = ""


class FaceEvent(Event, frozen=True, kw_only=True):
    track_id: int | None = None
    bbox: BBoxList | None = None
    frame_time: float | None = None


# -- the original design's events ------------------------------------------------------------
class SystemReady(Event, frozen=True, kw_only=True, tag="system_ready"):
    message: str = "System ready"


class PersonRecognized(FaceEvent, frozen=True, kw_only=True, tag="person_recognized"):
    person_id: str
    name: str
    message: str
    confidence: float  # cosine similarity of the settled identity
    distance: float  # 1 - confidence


class UnknownPersonDetected(FaceEvent, frozen=True, kw_only=True, tag="unknown_person_detected"):
    message: str = "Unknown person detected. Would you like to register?"
    confidence: float  # how sure the engine is this is nobody known: 1 - best similarity
    person_id: None = None
    distance: float  # 1 - best similarity to any known person (1.0 with an empty gallery)
    action_required: bool = True
    show_registration_dialog: bool = True


class PersonLeftArea(FaceEvent, frozen=True, kw_only=True, tag="person_left_area"):
    message: str = "Person left the area"
    show_waiting_message: bool = True
    person_id: str | None = None
    name: str | None = None


# -- source health ---------------------------------------------------------------------------
class SourceStatus(Event, frozen=True, kw_only=True, tag="source_status"):
    state: Literal["connected", "unavailable", "ended"]
    source: str
    message: str
    retry_in_seconds: float | None = None


# -- registration (driven by the registration state machine) ---------------------------------
class RegistrationApproved(Event, frozen=True, kw_only=True, tag="registration_approved"):
    message: str
    track_id: int | None = None
    name: str


class RegistrationStart(Event, frozen=True, kw_only=True, tag="registration_start"):
    message: str
    total_angles: int
    angles: list[str]


class RegistrationAngleInstruction(
    Event, frozen=True, kw_only=True, tag="registration_angle_instruction"
):
    angle_name: str
    instruction: str
    angle_number: int
    total_angles: int
    progress: float  # percent of the whole capture done
    message: str


class RegistrationPoseFeedback(
    FaceEvent, frozen=True, kw_only=True, tag="registration_pose_feedback"
):
    angle_name: str
    yaw: float | None
    pitch: float | None
    target_yaw: list[float]  # [min, max]
    target_pitch: list[float]
    held: bool
    captured: int
    needed: int


class RegistrationAngleComplete(
    Event, frozen=True, kw_only=True, tag="registration_angle_complete"
):
    angle_name: str
    angle_number: int
    total_angles: int
    progress: float
    message: str


class RegistrationComplete(Event, frozen=True, kw_only=True, tag="registration_complete"):
    person_id: str
    name: str
    success: bool = True
    message: str


class RegistrationFailed(Event, frozen=True, kw_only=True, tag="registration_failed"):
    message: str
    reason: str
    person_id: str | None = None  # the existing person, for reason `already_registered`
    name: str | None = None


class RegistrationCancelled(Event, frozen=True, kw_only=True, tag="registration_cancelled"):
    message: str
    reason: str


AnyEvent = (
    SystemReady
    | PersonRecognized
    | UnknownPersonDetected
    | PersonLeftArea
    | SourceStatus
    | RegistrationApproved
    | RegistrationStart
    | RegistrationAngleInstruction
    | RegistrationPoseFeedback
    | RegistrationAngleComplete
    | RegistrationComplete
    | RegistrationFailed
    | RegistrationCancelled
)

# Registration events are never dropped by the bus (see bus.NEVER_DROPPED).
REGISTRATION: tuple[type[Event], ...] = (
    RegistrationApproved,
    RegistrationStart,
    RegistrationAngleInstruction,
    RegistrationPoseFeedback,
    RegistrationAngleComplete,
    RegistrationComplete,
    RegistrationFailed,
    RegistrationCancelled,
)

_encoder = msgspec.json.Encoder()


def type_name(event: Event) -> str:
    tag: str = event.__struct_config__.tag  # type: ignore[assignment]
    return tag


def stamp(event: Event, seq: int, now: float | None = None) -> Event:
    """The event with its sequence number and ISO timestamp (UTC) set."""
    when = datetime.fromtimestamp(now, UTC) if now is not None else datetime.now(UTC)
    return msgspec.structs.replace(
        event, seq=seq, timestamp=when.isoformat(timespec="milliseconds")
    )


def data_of(event: Event) -> dict[str, Any]:
    data: dict[str, Any] = msgspec.to_builtins(event)
    data.pop("type", None)
    return data


def to_wire(event: Event) -> bytes:
    """`{"type": ..., "data": {...}}` as JSON bytes."""
    return _encoder.encode({"type": type_name(event), "data": data_of(event)})


def json_schema() -> dict[str, Any]:
    """JSON Schema of the wire format, generated from the Structs above."""
    members = AnyEvent.__args__
    schemas, components = msgspec.json.schema_components(members, ref_template="#/$defs/{name}")
    variants = []
    for kind, ref in zip(members, schemas, strict=True):
        name = kind.__struct_config__.tag
        # The data object is the Struct without its tag.
        definition = components[ref["$ref"].rsplit("/", 1)[-1]]
        definition.get("properties", {}).pop("type", None)
        if "required" in definition:
            definition["required"] = [r for r in definition["required"] if r != "type"]
        variants.append(
            {
                "type": "object",
                "properties": {"type": {"const": name}, "data": ref},
                "required": ["type", "data"],
                "additionalProperties": False,
            }
        )
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "facegate events",
        "oneOf": variants,
        "$defs": components,
    }
