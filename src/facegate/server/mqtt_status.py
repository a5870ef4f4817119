"""The gate's retained state on MQTT, and how it is derived from the events.

`GateStatus` follows the bus's events to `idle | recognized | stranger | registering`, with the
door's decision for the person shown (`access`, "pending" until their liveness_result): the
retained `P/G/state`; `face_jpeg` crops the face for `P/G/snapshot`; `now_iso` and `iso_time`
are the times of the state and of a person's last seen (`P/people/<slug>`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Final, NamedTuple

import cv2
import msgspec

from facegate.events import (
    Access,
    Event,
    LivenessResult,
    PersonLeftArea,
    PersonRecognized,
    RegistrationAngleComplete,
    RegistrationAngleInstruction,
    RegistrationApproved,
    RegistrationCancelled,
    RegistrationComplete,
    RegistrationFailed,
    RegistrationPoseFeedback,
    RegistrationStart,
    SystemReady,
    UnknownPersonDetected,
)
from facegate.server import homeassistant as ha
from facegate.server.homeassistant import Message, MqttConfig
from facegate.vision.face import ImageArray

SNAPSHOT_MARGIN: Final = 0.25  # around the face box, in box sizes
SNAPSHOT_MAX_SIDE: Final = 320
SNAPSHOT_QUALITY: Final = 85
REGISTERING: Final = (
    RegistrationApproved,
    RegistrationStart,
    RegistrationAngleInstruction,
    RegistrationPoseFeedback,
    RegistrationAngleComplete,
)
REGISTRATION_OVER: Final = (RegistrationComplete, RegistrationFailed, RegistrationCancelled)


class StateKey(NamedTuple):
    state: ha.GateState
    person_id: str | None
    track_id: int | None


class GateStatus:
    """`idle | recognized | stranger | registering` from the events: registering while a
    registration is under way; else recognized while a greeted person is present (the most
    recent one); else stranger while an offered stranger is present; else idle. With each
    present person, their `access`: the greeting's ("pending" while the liveness challenge
    runs), then the verdict of their liveness_result."""

    def __init__(self, since: str) -> None:
        self.present: dict[str, PersonRecognized] = {}  # by person id, latest last
        self.access: dict[str, Access] = {}  # of the persons present, by person id
        self.strangers: dict[int, UnknownPersonDetected] = {}  # by track id
        self.registering = False
        self.key = StateKey("idle", None, None)
        self.since = since

    def apply(self, event: Event) -> bool:
        """Follow one event; True when the state message changed (the state, or the access of
        its person: `since` stays when only the access changed)."""
        shown = self.shown_access
        match event:
            case PersonRecognized(person_id=person, track_id=track):
                self.present.pop(person, None)
                self.present[person] = event
                self.access[person] = event.access
                if track is not None:
                    self.strangers.pop(track, None)
            case UnknownPersonDetected(track_id=track) if track is not None:
                self.strangers[track] = event
            case LivenessResult(person_id=str(person)) if person in self.present:
                self.access[person] = event.access
            case PersonLeftArea(person_id=person, track_id=track):
                if person is not None:
                    self.present.pop(person, None)
                    self.access.pop(person, None)
                if track is not None:
                    self.strangers.pop(track, None)
            case SystemReady():
                self.registering = False
            case _ if isinstance(event, REGISTERING):
                self.registering = True
            case _ if isinstance(event, REGISTRATION_OVER):
                self.registering = False
        return self._settle(event.timestamp) or self.shown_access != shown

    def forget(self, person_id: str, now: str) -> bool:
        """An erased person: no longer the state's. True when the state changed."""
        self.access.pop(person_id, None)
        if self.present.pop(person_id, None) is None:
            return False
        return self._settle(now)

    @property
    def shown_access(self) -> Access | None:
        """The access of the person the state shows (None when it shows nobody)."""
        person = self.key.person_id
        return None if person is None else self.access.get(person)

    def _settle(self, when: str) -> bool:
        key = self._key()
        if key == self.key:
            return False
        self.key = key
        self.since = when or now_iso()
        return True

    def _key(self) -> StateKey:
        if self.registering:
            return StateKey("registering", None, None)
        if self.present:
            person = next(reversed(self.present.values()))
            return StateKey("recognized", person.person_id, None)
        if self.strangers:
            return StateKey("stranger", None, next(reversed(self.strangers)))
        return StateKey("idle", None, None)

    @property
    def busy(self) -> bool:
        return self.key.state != "idle"

    def message(self, cfg: MqttConfig) -> Message:
        key = self.key
        person: str | None = None
        similarity: float | None = None
        if key.state == "recognized" and key.person_id is not None:
            seen = self.present[key.person_id]
            person, similarity = seen.name, seen.similarity
        elif key.state == "stranger" and key.track_id is not None:
            similarity = self.strangers[key.track_id].similarity
        return ha.state_payload(
            cfg,
            state=key.state,
            person=person,
            person_id=key.person_id,
            similarity=similarity,
            since=self.since,
            access=self.shown_access,
        )


def now_iso() -> str:
    return datetime.now().astimezone().isoformat(timespec="milliseconds")


def face_jpeg(image: ImageArray, bbox: list[float] | None) -> bytes | None:
    """The face at `bbox` (x1, y1, x2, y2) with a margin, at most SNAPSHOT_MAX_SIDE px, as JPEG."""
    if bbox is None or len(bbox) != 4:
        return None
    h, w = image.shape[:2]
    x1, y1, x2, y2 = bbox
    mx, my = (x2 - x1) * SNAPSHOT_MARGIN, (y2 - y1) * SNAPSHOT_MARGIN
    left, top = max(0, int(x1 - mx)), max(0, int(y1 - my))
    right, bottom = min(w, int(x2 + mx + 1)), min(h, int(y2 + my + 1))
    if right - left < 2 or bottom - top < 2:
        return None
    crop = image[top:bottom, left:right]
    side = max(crop.shape[:2])
    if side > SNAPSHOT_MAX_SIDE:
        scale = SNAPSHOT_MAX_SIDE / side
        size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
        face = cv2.resize(crop, size, interpolation=cv2.INTER_AREA)
    else:
        face = crop
    ok, data = cv2.imencode(".jpg", face, [cv2.IMWRITE_JPEG_QUALITY, SNAPSHOT_QUALITY])
    return data.tobytes() if ok else None


def iso_time(payload: bytes) -> tuple[str | None, datetime | None]:
    """(person_id, time) of a people payload; (None, None) when it is not one."""
    try:
        body = msgspec.json.decode(payload)
        person_id, when = body.get("person_id"), body.get("time")
        if isinstance(person_id, str) and isinstance(when, str):
            moment = datetime.fromisoformat(when)
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            return person_id, moment
    except (msgspec.DecodeError, AttributeError, ValueError, TypeError):
        pass
    return None, None


__all__ = ["GateStatus", "StateKey", "face_jpeg", "iso_time", "now_iso"]
