"""The registration runtime: feeds the pure machine of `registration.py` and carries out its
effects (publish events, answer clients, validate and store the captures).

It runs where the server's event loop runs. It never sees the engine: both hold the same
`RegistrationFocus` (focus.py). After every step of the machine the registrar leaves there
which track is being captured (the engine then describes that face with its full pose model
on every frame and hands it back through the focus: `observe`) and whether prompts are paused
(no other unknown face is offered while a registration is under way). The focus keeps the
face's most frontal view, stored as the person's thumbnail; a completed registration is
adopted through it (the registered face is that person from the engine's next frame: greeted
at once); and it says whether a face the operator offers is in view and not yet known.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import msgspec

from facegate.events import (
    Event,
    PersonLeftArea,
    PersonRecognized,
    RegistrationComplete,
    UnknownPersonDetected,
)
from facegate.identity.gallery import Gallery
from facegate.identity.names import clean_name
from facegate.identity.store import DuplicatePersonError, NewEmbedding, StoreError
from facegate.live.focus import RegistrationFocus
from facegate.live.registration import (
    Input,
    Observation,
    Offer,
    OperatorDecision,
    PersonLeft,
    Phase,
    Publish,
    Reply,
    Reset,
    State,
    Stored,
    Tick,
    Typing,
    UnknownOffered,
    ValidateAndStore,
    consistent,
    parallax,
    progress,
    step,
    target,
)
from facegate.settings import Settings

log = logging.getLogger(__name__)
ACTOR = "registration"


class Status(msgspec.Struct, frozen=True):
    """The original design's `/system_status` fields about registration."""

    current_event: str
    registration_in_progress: bool
    waiting_for_user_response: bool
    current_registration_angle: str | None
    registration_progress: float
    person_in_detection_area: bool
    person_data: dict[str, object] | None


class Registrar:
    def __init__(
        self,
        gallery: Gallery,
        settings: Settings,
        publish: Callable[[Event], object],
        *,
        focus: RegistrationFocus,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.gallery = gallery
        self.settings = settings
        self.cfg = settings.registration
        self.publish = publish
        self.focus = focus
        self.clock = clock
        self.state = State()
        self.stored: list[str] = []  # person ids this runtime stored (for tests and stats)
        self.last_event = "system_ready"
        self.present_tracks: set[int] = set()
        self.last_decision: dict[str, object] | None = None
        self._next_settings: Settings | None = None  # `update_settings`, taken when idle

    # -- inputs ----------------------------------------------------------------------------
    def on_event(self, event: Event) -> None:
        """Every event of the bus passes here (the registrar is a subscriber)."""
        self.last_event = event.__struct_config__.tag or ""  # type: ignore[assignment]
        match event:
            case UnknownPersonDetected(track_id=track) if track is not None:
                self.present_tracks.add(track)
                self.handle(UnknownOffered(track))
            case PersonRecognized(track_id=track) if track is not None:
                self.present_tracks.add(track)
            case PersonLeftArea(track_id=track) if track is not None:
                self.present_tracks.discard(track)
                self.handle(PersonLeft(track))
            case _:
                pass

    def decide(self, register: bool, name: str | None, client: str) -> Reply:
        """An operator's answer (WebSocket or REST). The first decision wins.

        Raises InvalidNameError for a name that breaks the rule (`facegate.identity.names`), before
        anything happens; no name (or only white space) means a default name."""
        cleaned = clean_name(name) if register and name and name.strip() else None
        replies = self.handle(OperatorDecision(register, cleaned or None, client))
        reply = next((r for r in replies if r.client == client), None)
        if reply is not None and reply.ok:
            self.last_decision = {"register": register, "name": cleaned, "client": client}
        return next((r for r in replies if r.client == client), Reply(client, False, "ignored"))

    def offer(self, track_id: int, name: str | None, client: str) -> Reply:
        """The operator asks to register the face of track `track_id` now (a "Register" on a
        face; again after "Not now", a timeout or a failed capture).

        Raises InvalidNameError for a bad name. Refused (ok False) with a message starting
        "not in view" when no such face is in view, "already recognised" when it is someone
        known, else the machine's reason (busy, another face waiting)."""
        cleaned = clean_name(name) if name and name.strip() else None
        status = self.focus.track_status(track_id)
        if status == "gone":
            return Reply(client, False, f"not in view: no face with track id {track_id} now")
        if status == "known":
            return Reply(
                client, False, f"already recognised: the face of track {track_id} is known"
            )
        replies = self.handle(Offer(track_id, cleaned, client))
        reply = next((r for r in replies if r.client == client), Reply(client, False, "ignored"))
        if reply.ok:
            self.last_decision = {"register": True, "name": cleaned, "client": client}
        return reply

    def typing(self, client: str) -> Reply:
        """The operator is typing a name: the prompt's deadline is extended once."""
        replies = self.handle(Typing(client))
        return next((r for r in replies if r.client == client), Reply(client, False, "ignored"))

    def observe(self, obs: Observation) -> None:
        self.handle(obs)

    def tick(self) -> None:
        """Time passes (the machine's deadlines). And a face being captured that the engine
        no longer follows (its track expired, or ended at a scene cut) has left: a face the
        operator asked to register before it was ever offered has no `person_left_area` to
        say so, and would otherwise hold the capture until its pose timed out."""
        track = self.state.track_id
        if (
            self.state.phase is Phase.CAPTURING
            and track is not None
            and self.focus.track_status(track) == "gone"
        ):
            self.handle(PersonLeft(track))
        self.handle(Tick())

    def update_settings(self, settings: Settings) -> None:
        """Settings changed at run time: taken now when no registration is under way, else
        when it ends (a registration finishes under the rules it started with)."""
        self._next_settings = settings
        self._follow_settings()

    def _follow_settings(self) -> None:
        if self._next_settings is not None and self.state.phase is Phase.IDLE:
            self.settings, self._next_settings = self._next_settings, None
            self.cfg = self.settings.registration

    def reset(self) -> None:
        self.handle(Reset())

    # -- the machine -------------------------------------------------------------------------
    def handle(self, event: Input) -> list[Reply]:
        self._follow_settings()
        replies: list[Reply] = []
        pending: list[Input] = [event]
        while pending:
            track = self.state.track_id
            self.state, effects = step(self.state, pending.pop(0), self.clock(), self.cfg)
            for effect in effects:
                match effect:
                    case Publish(event=RegistrationComplete() as done):
                        # The registered face is that person from the next frame on: greeted
                        # at once, and named when it leaves.
                        registered = done.track_id if done.track_id is not None else track
                        if registered is not None:
                            self.focus.adopt(registered, done.person_id)
                        self.publish(done)
                    case Publish(event=out):
                        self.publish(out)
                    case Reply():
                        replies.append(effect)
                    case ValidateAndStore():
                        pending.append(self._validate_and_store(effect))
        self.focus.update(
            track=self.state.track_id if self.state.phase is Phase.CAPTURING else None,
            paused=self.state.phase is not Phase.IDLE,
        )
        return replies

    def _validate_and_store(self, job: ValidateAndStore) -> Stored:
        """Liveness, consistency, then duplicates, then one transaction: nothing is stored
        otherwise.

        Liveness: the captures' `parallax` (the front captures against the left and right
        ones) at or below settings.liveness.planarity_cutoff moved as one plane, a photo or a
        screen swept in front of the camera: refused as `not_live`. Skipped where the captures
        carry no landmarks (the InsightFace packs)."""
        score = parallax(job.captures)
        cutoff = self.settings.liveness.planarity_cutoff
        if score is not None and score <= cutoff:
            log.warning("registration refused: parallax %.3f <= %.3f (not live)", score, cutoff)
            return Stored(
                False,
                reason="not_live",
                message=(
                    "The face moved like a flat picture, not a head turning (parallax"
                    f" {score:.3f}, at most {cutoff:.3f}): a photo or a screen cannot be"
                    " registered; nothing was stored"
                ),
            )
        ok, worst = consistent(job.captures, self.cfg.consistency_threshold)
        if not ok:
            return Stored(
                False,
                reason="inconsistent_identity",
                message=(
                    f"The captures do not all show the same person (lowest similarity {worst:.2f});"
                    " nothing was stored"
                ),
            )
        name = job.name or f"Person {self.gallery.person_count + 1}"
        items = [
            NewEmbedding(c.embedding, pose=c.pose, quality=c.quality, source="registration")
            for c in job.captures
        ]
        try:
            # The duplicate check and the insert are one transaction under the gallery's
            # writer lock: a person another gate stored a moment ago is found too.
            person = self.gallery.create_person(
                name,
                items,
                actor=ACTOR,
                thumbnail=self._thumbnail(),
                refuse_similar=True,
            )
        except DuplicatePersonError as exc:
            pid, known, _ = exc.matches[0]
            return Stored(
                False,
                person_id=pid,
                name=known,
                reason="already_registered",
                message=f"Already registered as {known} ({pid})",
            )
        except StoreError as exc:
            log.error("registration not stored: %s", exc)
            return Stored(False, reason="store_error", message=str(exc))
        self.stored.append(person.id)
        return Stored(
            True, person_id=person.id, name=person.name, message=f"{person.name} is registered"
        )

    def _thumbnail(self) -> bytes | None:
        """The JPEG of the most frontal usable view of the registering face (the focus's)."""
        if not self.settings.store.thumbnails:
            return None
        return self.focus.thumbnail

    # -- status ------------------------------------------------------------------------------
    def status(self) -> Status:
        s = self.state
        pose = s.pose
        data: dict[str, object] | None = None
        if s.phase is not Phase.IDLE:
            data = {"track_id": s.track_id, "name": s.name, "phase": s.phase.value}
            if pose:
                yaw, pitch = target(s, self.cfg, pose)
                data.update(target_yaw=yaw, target_pitch=pitch, captured=s.captured(pose))
        return Status(
            current_event=self.last_event,
            registration_in_progress=s.phase in (Phase.CAPTURING, Phase.VALIDATING),
            waiting_for_user_response=s.phase is Phase.AWAITING_DECISION,
            current_registration_angle=pose,
            registration_progress=progress(s, self.cfg) if s.phase is not Phase.IDLE else 0.0,
            person_in_detection_area=bool(self.present_tracks),
            person_data=data,
        )
