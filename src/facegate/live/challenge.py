"""The liveness challenge at the gate: who is challenged, what they see, what the door does.

The engine (its thread) owns one `Challenger` and talks to it at four points of a frame:
- `greet` when it greets a known person (`person_recognized`): with `[liveness] challenge` on,
  the person's access is "pending" and their challenge is queued; off (or a face that was
  just registered, whose captures passed the registration's own planarity check) it is
  "granted" at once. With challenge "always", `settled_unknown` queues an unknown face too,
  and `may_offer` holds back its registration offer until it has passed;
- `track` before describing the frame: the track whose face must be described in full (pose,
  embedding, landmarks) in this frame, the one being challenged (or the next in the queue);
- `frame` after identifying: the challenged face's view goes to the pure machine of
  `liveness.py` (or `Missed` when it has no detection in this frame: a detection gap fails the
  challenge), then the clock; what the machine returns becomes `liveness_challenge`,
  `liveness_pose_feedback` (at most every `registration.feedback_interval_seconds`) and
  `liveness_result` events;
- `track_gone` / `person_left` / `reset` as tracks expire, people leave and recognition is
  switched off.

One challenge runs at a time (the person must follow an instruction on the screen; the others
wait, shown as "waiting"). A result stands for the person's whole appearance: a known person
who failed is denied until they have left (`left_after_seconds`) and come back, so a photo
gets one try per appearance. The direction is drawn with `secrets.choice` (a replayed video of
a turn must guess it). The passive model (`fr_liveness.onnx`), when given, scores the front
view once per challenge; the score is reported, never used.
"""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from facegate.events import (
    Access,
    Event,
    LivenessChallenge,
    LivenessPoseFeedback,
    LivenessResult,
)
from facegate.live import liveness as machine
from facegate.live.pose_guide import direction_hint
from facegate.live.tracking import Track
from facegate.settings import LivenessSettings
from facegate.vision.face import BBox, Detection, Face, ImageArray
from facegate.vision.planarity import planarity

log = logging.getLogger(__name__)

Points = npt.NDArray[np.float32]
# The 68 landmarks of a detection when the pack's detections do not carry them.
LandmarkFn = Callable[[ImageArray, Detection], Points]
PassiveFn = Callable[[ImageArray, BBox], float]
TrackLiveness = Literal["waiting", "asked", "passed", "failed"]

MESSAGES = {
    "passed": "Liveness check passed",
    "planar": "Not live: the face moved like a flat picture (a photo or a screen)",
    "timeout": "Not live: the head turn was not made in time",
    "track_lost": "Not live: the face was lost during the check",
    "identity_changed": "Not live: another face appeared during the check",
    "no_landmarks": "Not checked: this model pack gives no 68-point landmarks",
    "left": "Not checked: the person left before the check ended",
}
TRY_AGAIN = "Step out of view for a few seconds and come back to try again"
NEXT_STEPS = {
    "passed": "",
    "planar": "A live person must stand in front of the camera; a photo or a screen cannot pass",
    "timeout": f"Turn the head as asked when the instruction appears. {TRY_AGAIN}",
    "track_lost": f"Keep the face in view while turning. {TRY_AGAIN}",
    "identity_changed": f"Only the person checked should face the camera. {TRY_AGAIN}",
    "no_landmarks": "Install the faceplugin pack beside it (facegate models fetch faceplugin)",
    "left": "The check starts again when they come back",
}


def planarity_score(front: Points, turned: Points) -> float:
    """The planarity score of a turn (vision.planarity); landmarks too degenerate to fit
    count as a plane (the challenge fails safe)."""
    try:
        return planarity(front, turned).score
    except ValueError:
        return 0.0


@dataclass
class _Waiting:
    track_id: int
    person_id: str | None
    name: str | None


@dataclass
class _Running:
    track_id: int
    person_id: str | None
    name: str | None
    asked: LivenessChallenge | None = None
    passive: float | None = None
    last_feedback: float = -math.inf


class Challenger:
    """The challenges of one engine (its thread only)."""

    def __init__(
        self,
        cfg: LivenessSettings,
        *,
        feedback_interval: float = 0.2,
        landmarks: LandmarkFn | None = None,
        passive: PassiveFn | None = None,
        choose: Callable[[Sequence[str]], str] = secrets.choice,
    ) -> None:
        self.update_settings(cfg, feedback_interval=feedback_interval)
        self.landmarks = landmarks
        self.passive = passive
        self.choose = choose
        self.state = machine.State()
        self._running: _Running | None = None
        self._queue: list[_Waiting] = []
        self._track_results: dict[int, bool] = {}  # track id -> passed
        self._person_results: dict[str, bool] = {}  # this appearance's verdict, by person
        self._frames = 0  # processed frames: a gap in them is a gap in the track

    def update_settings(self, cfg: LivenessSettings, *, feedback_interval: float) -> None:
        """The limits (the engine's thread, between frames): a challenge under way goes on
        under the new ones. (`challenge` itself changes only with a restart: its models are
        loaded at start.)"""
        self.cfg = cfg
        self.machine_cfg = machine.Config(
            challenge_seconds=cfg.challenge_seconds,
            turn_degrees=cfg.turn_degrees,
            front_degrees=cfg.return_degrees,
            planarity_cutoff=cfg.planarity_cutoff,
            identity_threshold=cfg.identity_threshold,
        )
        self.feedback_interval = feedback_interval

    @property
    def enabled(self) -> bool:
        return self.cfg.challenge != "off"

    # -- what the engine asks ------------------------------------------------------------------
    def greet(self, track_id: int, person_id: str, name: str, *, registered: bool) -> Access:
        """A known person is greeted on `track_id`: their access, and their challenge queued
        when one is due. `registered`: the face was just registered (its captures were
        checked for planarity then): granted."""
        if not self.enabled or registered:
            return "granted"
        if person_id in self._person_results:  # decided in this appearance
            return "granted" if self._person_results[person_id] else "denied"
        if not self._queued(track_id):
            self._queue.append(_Waiting(track_id, person_id, name))
        return "pending"

    def settled_unknown(self, track_id: int) -> None:
        """A face settled as nobody known: challenged too when challenge is "always"."""
        if self.cfg.challenge != "always" or track_id in self._track_results:
            return
        if not self._queued(track_id):
            self._queue.append(_Waiting(track_id, None, None))

    def may_offer(self, track_id: int) -> bool:
        """Whether an unknown face may be offered for registration: always, unless the
        challenge is "always", then only once it has passed."""
        return self.cfg.challenge != "always" or self._track_results.get(track_id, False)

    @property
    def track(self) -> int | None:
        """The track to describe in full in this frame (the challenged one)."""
        if self._running is not None:
            return self._running.track_id
        return self._queue[0].track_id if self._queue else None

    def view_of(self, track: Track) -> tuple[TrackLiveness | None, str | None]:
        """The challenge state of a face for the panel, and the instruction while asked."""
        running = self._running
        if running is not None and running.track_id == track.id:
            if running.asked is None:
                return "waiting", None
            return "asked", running.asked.instruction
        if track.id in self._track_results:
            return ("passed" if self._track_results[track.id] else "failed"), None
        if track.identity is not None and track.identity in self._person_results:
            return ("passed" if self._person_results[track.identity] else "failed"), None
        if self._queued(track.id):
            return "waiting", None
        return None, None

    # -- one frame -----------------------------------------------------------------------------
    def frame(
        self,
        image: ImageArray,
        seen: Sequence[Track],
        detections: Sequence[Detection],
        described: Mapping[int, Face],
        now: float,
        *,
        described_in_full: int | None = None,
        busy_track: int | None = None,
    ) -> list[Event]:
        """After the engine identified the frame's faces (seen[i] is detections[i]): the
        challenged face's view to the machine, then the clock. `described_in_full`: the track
        the engine described with its full pose model in this frame (the `track` it was
        given); `busy_track`: the track being registered (never challenged: its registration
        checks it)."""
        self._frames += 1
        if not self.enabled:
            return []
        events: list[Event] = []
        running = self._running
        if running is None:
            running = self._start_next(seen, now)
            if running is None or running.track_id != described_in_full:
                return events  # its first view is the next frame's, described in full
        index = next((i for i, t in enumerate(seen) if t.id == running.track_id), None)
        if running.track_id == busy_track:
            self._drop_running()
            return events
        if index is None:
            events += self._step(machine.Missed(running.track_id), now, image)
        else:
            track = seen[index]
            if running.person_id is not None and track.identity != running.person_id:
                events += self._step(machine.Abort(track.id, "identity_changed"), now, image)
            else:
                events += self._view(image, track, detections[index], described.get(index), now)
        if self._running is not None:
            events += self._step(machine.Tick(), now, image)
        return events

    def track_gone(self, track_id: int) -> None:
        """The track expired: a queued challenge of an unknown face is dropped (a known
        person's moves to their new track, if any, when it starts)."""
        self._track_results.pop(track_id, None)
        self._queue = [w for w in self._queue if w.track_id != track_id or w.person_id]

    def person_left(self, person_id: str, now: float) -> list[Event]:
        """The person left the area: their verdict ends with the appearance. One greeted with
        access "pending" whose challenge never ended is denied now (reason `left`): a door
        waiting on the verdict is never left waiting."""
        self._person_results.pop(person_id, None)
        events: list[Event] = []
        for waiting in [w for w in self._queue if w.person_id == person_id]:
            self._queue.remove(waiting)
            events.append(self._left_unchecked(waiting.track_id, person_id, waiting.name, now))
        running = self._running
        if running is not None and running.person_id == person_id:
            self._drop_running()
            events.append(self._left_unchecked(running.track_id, person_id, running.name, now))
        return events

    def _left_unchecked(
        self, track_id: int, person_id: str, name: str | None, now: float
    ) -> LivenessResult:
        return LivenessResult(
            person_id=person_id,
            name=name,
            passed=False,
            reason="left",
            message=MESSAGES["left"],
            cutoff=self.cfg.planarity_cutoff,
            seconds=0.0,
            access="denied",
            next_step=NEXT_STEPS["left"],
            track_id=track_id,
            frame_time=None if math.isinf(now) else round(now, 3),
        )

    def reset(self) -> None:
        """Recognition was switched off: every challenge is forgotten (everyone left)."""
        self._drop_running()
        self._queue.clear()
        self._track_results.clear()
        self._person_results.clear()

    # -- inside --------------------------------------------------------------------------------
    def _queued(self, track_id: int) -> bool:
        return any(w.track_id == track_id for w in self._queue)

    def _drop_running(self) -> None:
        self._running = None
        self.state = machine.State()

    def _start_next(self, seen: Sequence[Track], now: float) -> _Running | None:
        """Start the first queued challenge whose face is in this frame (a known person's
        on whichever track now carries them)."""
        for waiting in list(self._queue):
            track = next((t for t in seen if t.id == waiting.track_id), None)
            if track is None and waiting.person_id is not None:
                track = next((t for t in seen if t.identity == waiting.person_id), None)
            if track is None:
                continue
            self._queue.remove(waiting)
            direction = self.choose(list(self.cfg.directions))
            self.state, _ = machine.step(
                machine.State(),
                machine.Start(track.id, waiting.person_id, direction),
                now,
                self.machine_cfg,
                planarity_score,
            )
            self._running = _Running(track.id, waiting.person_id, waiting.name)
            return self._running
        return None

    def _view(
        self,
        image: ImageArray,
        track: Track,
        detection: Detection,
        face: Face | None,
        now: float,
    ) -> list[Event]:
        points = detection.dense_landmarks
        if points is None and self.landmarks is not None:
            points = self.landmarks(image, detection)
        if points is None:
            log.error("liveness challenge without 68-point landmarks: not checked")
            return self._step(machine.Abort(track.id, "no_landmarks"), now, image)
        yaw = face.yaw if face is not None and face.yaw is not None else math.nan
        pitch = face.pitch if face is not None and face.pitch is not None else math.nan
        view = machine.View(
            track_id=track.id,
            frame=self._frames,
            yaw=yaw,
            pitch=pitch,
            landmarks=points,
            embedding=None if face is None else face.embedding,
        )
        events = self._step(view, now, image, bbox=detection.bbox)
        running = self._running
        due = running is not None and now - running.last_feedback >= self.feedback_interval
        if running is not None and running.asked is not None and due:
            running.last_feedback = now
            events.append(self._feedback(running, track, yaw, pitch, now))
        return events

    def _feedback(
        self, running: _Running, track: Track, yaw: float, pitch: float, now: float
    ) -> LivenessPoseFeedback:
        assert running.asked is not None
        turning = self.state.phase is machine.Phase.TURNING
        known = not (math.isnan(yaw) or math.isnan(pitch))
        ryaw, rpitch = (yaw, pitch) if known else (None, None)
        if turning:
            target_yaw, target_pitch = running.asked.target_yaw, running.asked.target_pitch
            hint = direction_hint(running.asked.direction, ryaw, rpitch, target_yaw, target_pitch)
        else:
            tol = self.cfg.return_degrees
            y0, p0 = self.state.front_yaw, self.state.front_pitch
            target_yaw, target_pitch = [y0 - tol, y0 + tol], [p0 - tol, p0 + tol]
            hint = direction_hint("front", ryaw, rpitch, target_yaw, target_pitch)
            hint = hint or "hold still, looking at the camera"
        left = self.cfg.challenge_seconds - (now - self.state.started)
        return LivenessPoseFeedback(
            person_id=running.person_id,
            direction=running.asked.direction,
            phase="turn" if turning else "return",
            yaw=round(yaw, 1) if known else None,
            pitch=round(pitch, 1) if known else None,
            target_yaw=[round(v, 1) for v in target_yaw],
            target_pitch=[round(v, 1) for v in target_pitch],
            seconds_left=round(max(0.0, left), 1),
            hint=hint,
            track_id=track.id,
            bbox=[round(v, 1) for v in track.bbox],
            frame_time=round(now, 3),
        )

    def _step(
        self, event: machine.Input, now: float, image: ImageArray, bbox: BBox | None = None
    ) -> list[Event]:
        running = self._running
        assert running is not None
        self.state, effects = machine.step(
            self.state, event, now, self.machine_cfg, planarity_score
        )
        out: list[Event] = []
        for effect in effects:
            match effect:
                case machine.Asked():
                    if self.passive is not None and bbox is not None:
                        running.passive = round(float(self.passive(image, bbox)), 4)
                    running.asked = self._asked(effect, running, bbox, now)
                    out.append(running.asked)
                case machine.Verdict():
                    out.append(self._verdict(effect, running, bbox, now))
        return out

    def _asked(
        self, asked: machine.Asked, running: _Running, bbox: BBox | None, now: float
    ) -> LivenessChallenge:
        left = self.cfg.challenge_seconds - (now - self.state.started)
        return LivenessChallenge(
            person_id=running.person_id,
            name=running.name,
            direction=asked.direction,  # type: ignore[arg-type]
            instruction=asked.instruction,
            message=f"{running.name or 'Unknown person'}: {asked.instruction.lower()}",
            target_yaw=[round(v, 1) for v in asked.target_yaw],
            target_pitch=[round(v, 1) for v in asked.target_pitch],
            timeout_seconds=round(max(0.0, left), 1),
            track_id=asked.track_id,
            bbox=None if bbox is None else [round(v, 1) for v in bbox],
            frame_time=round(now, 3),
        )

    def _verdict(
        self, verdict: machine.Verdict, running: _Running, bbox: BBox | None, now: float
    ) -> LivenessResult:
        self._running = None
        self._track_results[verdict.track_id] = verdict.passed
        if running.person_id is not None:
            self._person_results[running.person_id] = verdict.passed
        granted = verdict.passed and running.person_id is not None
        message = MESSAGES.get(verdict.reason, f"Not live: {verdict.reason}")
        if verdict.passed:
            message = (
                f"{running.name}: live, access granted"
                if running.person_id is not None
                else "Unknown person: live"
            )
        residual = verdict.residual
        return LivenessResult(
            person_id=running.person_id,
            name=running.name,
            passed=verdict.passed,
            reason=verdict.reason,
            message=message,
            residual=None if residual is None else round(residual, 4),
            cutoff=self.cfg.planarity_cutoff,
            seconds=verdict.seconds,
            passive_score=running.passive,
            access="granted" if granted else "denied",
            next_step=NEXT_STEPS.get(verdict.reason, TRY_AGAIN),
            track_id=verdict.track_id,
            bbox=None if bbox is None else [round(v, 1) for v in bbox],
            frame_time=round(now, 3),
        )
