"""Events from facegate to its clients: one tagged union of frozen msgspec Structs.

On the wire every event is `{"type": <name>, "data": {...}}`, the envelope of the original
design, whose type names and fields stay valid (`person_recognized`, `unknown_person_detected`,
`person_left_area`, `system_ready`, `registration_*`). Every event's data also carries:
`seq` (monotonic per gate, continued across restarts from the history), `timestamp` (ISO 8601,
UTC), `gate_id` (the gate that saw it: its `gate.id`; several gates may share one store and
history), and, where a face is concerned,
`track_id`, `bbox` and `frame_time` (stream time: a video file's position, or the capture clock
of a live source, in seconds; the same clock in every event and in `tracks`).

One vocabulary: `similarity` is the cosine similarity of two faces' embeddings (-1..1; the
same person scores high), and wherever a decision was made the `threshold` it was compared
with stands beside it. The original design's `confidence` of `person_recognized` is kept as
another name for that similarity (and `distance` as 1 - similarity).

`tracks` (the faces of one processed frame, sent to WebSocket clients a few times a second and
printed by `facegate run --json --tracks`) is not an event: it has no `seq`, is never kept in
the history and may be dropped; see `Tracks`.

`seq`, `timestamp` and `gate_id` are stamped by the bus when the event is published (`stamp`).
The JSON Schema of the wire format is generated from these Structs (`json_schema`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

import msgspec

BBoxList = list[float]
Access = Literal["granted", "denied", "pending"]


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """Fields every event has."""

    seq: int = 0
    timestamp: str = ""
    gate_id: str = ""  # the gate that saw it (`gate.id`)


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
    similarity: float  # of this face to the person (the best of the votes that settled it)
    threshold: float  # recognition.threshold, which it reached
    confidence: float  # the original design's name for `similarity` (the same value)
    distance: float  # 1 - similarity
    # How the identity was settled: "vote" (identified in the live video), "registration"
    # (this face was just registered as the person).
    via: str = "vote"
    # What a door should do: "granted", or "pending" while the liveness challenge
    # (`[liveness] challenge`) runs: its `liveness_result` then grants or denies.
    access: Access = "granted"


class UnknownPersonDetected(FaceEvent, frozen=True, kw_only=True, tag="unknown_person_detected"):
    message: str = "Unknown person detected. Would you like to register?"
    person_id: None = None
    # Best similarity of this face to anyone known (below `threshold`, or ambiguous between
    # two people); None when no one is enrolled yet.
    similarity: float | None = None
    threshold: float
    enrolled: int  # persons in the gallery when the face was judged
    distance: float | None = None  # 1 - similarity; None when no one is enrolled
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
class RegistrationWaiting(Event, frozen=True, kw_only=True, tag="registration_waiting"):
    """The operator is asked whether to register this face: a countdown for the answer.
    Sent when the question opens and again when the deadline is extended (the operator
    started typing a name: once per question)."""

    message: str
    track_id: int | None = None
    seconds_left: float  # from this event's timestamp
    timeout_seconds: float  # the full time given for an answer
    extended: bool = False


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
    timeout_seconds: float = 0.0  # time given to reach this pose, from this event


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
    seconds_left: float | None = None  # until this pose times out
    # What to do to reach the target, in the person's own terms ("turn a little to your
    # right"), when the face is outside it; None when inside or no face.
    hint: str | None = None


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
    track_id: int | None = None  # the face that was registered (greeted next)


class RegistrationFailed(Event, frozen=True, kw_only=True, tag="registration_failed"):
    message: str
    reason: str
    person_id: str | None = None  # the existing person, for reason `already_registered`
    name: str | None = None
    track_id: int | None = None
    next_step: str = ""  # what the operator or the person can do now


class RegistrationCancelled(Event, frozen=True, kw_only=True, tag="registration_cancelled"):
    message: str
    reason: str
    track_id: int | None = None
    next_step: str = ""


# -- liveness (live/challenge.py) ------------------------------------------------------------
class LivenessChallenge(FaceEvent, frozen=True, kw_only=True, tag="liveness_challenge"):
    """The person on `track_id` is asked to turn their head (a photo or a screen cannot)."""

    person_id: str | None = None  # None: an unknown face (`challenge = "always"`)
    name: str | None = None
    direction: Literal["left", "right", "up", "down"]
    instruction: str  # in the person's own terms
    message: str
    # The windows the turn must reach, in absolute degrees (from the person's front).
    target_yaw: list[float]
    target_pitch: list[float]
    timeout_seconds: float  # the whole challenge, from the greeting


class LivenessPoseFeedback(FaceEvent, frozen=True, kw_only=True, tag="liveness_pose_feedback"):
    """The challenged face's pose, a few times a second (like registration_pose_feedback)."""

    person_id: str | None = None
    direction: Literal["left", "right", "up", "down"]
    phase: Literal["turn", "return"]  # turning toward the target, or coming back to the front
    yaw: float | None
    pitch: float | None
    target_yaw: list[float]
    target_pitch: list[float]
    seconds_left: float
    hint: str | None = None  # what to do now, in the person's own terms


class LivenessResult(FaceEvent, frozen=True, kw_only=True, tag="liveness_result"):
    """How the challenge ended, and what a door should do."""

    person_id: str | None = None
    name: str | None = None
    passed: bool
    # passed | planar (moved as a flat picture) | timeout | track_lost (a detection gap or
    # the face left) | identity_changed (another face, or the identity changed) | left (the
    # person left before their check ended: queued behind another, or recognition switched off)
    reason: str
    message: str
    # The median planarity score of the turned views (None: the turn was never reached) and
    # the cut-off it was compared with: at or below it the face moved as a plane.
    residual: float | None = None
    cutoff: float
    seconds: float  # from the greeting to the verdict (stream time)
    # fr_liveness.onnx's P(live) on the front view: uncalibrated, decides nothing.
    passive_score: float | None = None
    access: Access  # granted (a known person who passed) or denied
    next_step: str = ""


AnyEvent = (
    SystemReady
    | PersonRecognized
    | UnknownPersonDetected
    | PersonLeftArea
    | SourceStatus
    | RegistrationWaiting
    | RegistrationApproved
    | RegistrationStart
    | RegistrationAngleInstruction
    | RegistrationPoseFeedback
    | RegistrationAngleComplete
    | RegistrationComplete
    | RegistrationFailed
    | RegistrationCancelled
    | LivenessChallenge
    | LivenessPoseFeedback
    | LivenessResult
)

# Registration events are never dropped by the bus (see live.bus.NEVER_DROPPED).
REGISTRATION: tuple[type[Event], ...] = (
    RegistrationWaiting,
    RegistrationApproved,
    RegistrationStart,
    RegistrationAngleInstruction,
    RegistrationPoseFeedback,
    RegistrationAngleComplete,
    RegistrationComplete,
    RegistrationFailed,
    RegistrationCancelled,
)


# -- the faces of a frame (not an event) --------------------------------------------------------
TrackState = Literal["pending", "known", "unknown", "registering"]


class TrackView(msgspec.Struct, frozen=True, kw_only=True):
    """One face matched to a detection in this very frame (tracks not seen in the frame are
    never listed: no box outlives its face)."""

    track_id: int
    bbox: BBoxList  # x1, y1, x2, y2 in the frame's pixels
    # pending: not identified yet; known: identified as `person_id` (its latest check of the
    # face agreed); unknown: settled as nobody known; registering: being registered now.
    state: TrackState
    person_id: str | None = None
    name: str | None = None
    # The face's similarity to `person_id` when known, else its best similarity to anyone
    # known (None before its first identification or with an empty gallery).
    similarity: float | None = None
    # The liveness challenge of this face (None: none asked): waiting (its turn comes),
    # asked (`instruction` says what to do), passed, failed.
    liveness: Literal["waiting", "asked", "passed", "failed"] | None = None
    instruction: str | None = None


class Tracks(Event, frozen=True, kw_only=True, tag="tracks"):
    """The faces of one processed frame. `seq` stays 0: it is not an event of the history."""

    frame: int  # the source's frame number
    frame_time: float  # stream time, as in events
    # Scene cuts seen so far: views of different scenes never describe the same picture (a
    # client matching views to video frames must not draw one scene's boxes on another's).
    scene: int = 0
    width: int  # the frame's size, for drawing the boxes over the video
    height: int
    threshold: float  # recognition.threshold
    tracks: list[TrackView]


_encoder = msgspec.json.Encoder()


def type_name(event: Event) -> str:
    tag: str = event.__struct_config__.tag  # type: ignore[assignment]
    return tag


def stamp(event: Event, seq: int, now: float | None = None, gate_id: str | None = None) -> Event:
    """The event with its sequence number, ISO timestamp (UTC) and, when given, its gate set
    (without `gate_id`, the event keeps the one it has)."""
    when = datetime.fromtimestamp(now, UTC) if now is not None else datetime.now(UTC)
    return msgspec.structs.replace(
        event,
        seq=seq,
        timestamp=when.isoformat(timespec="milliseconds"),
        gate_id=event.gate_id if gate_id is None else gate_id,
    )


def data_of(event: Event) -> dict[str, Any]:
    data: dict[str, Any] = msgspec.to_builtins(event)
    data.pop("type", None)
    return data


def to_wire(event: Event) -> bytes:
    """`{"type": ..., "data": {...}}` as JSON bytes."""
    return _encoder.encode({"type": type_name(event), "data": data_of(event)})


def json_schema(*extra: type[Event], title: str = "facegate events") -> dict[str, Any]:
    """JSON Schema of the wire format, generated from the Structs above: every event and
    `tracks`, plus the `extra` message Structs (the server adds its replies to one client:
    `facegate.server.protocol.wire_schema`)."""
    members = (*AnyEvent.__args__, Tracks, *extra)
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
        "title": title,
        "oneOf": variants,
        "$defs": components,
    }
