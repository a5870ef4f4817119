"""Registration: operator approval, then a guided five-pose capture. A pure state machine.

`step(state, event, now, cfg) -> (state, effects)` never does I/O: the runtime
(`registrar.py`) feeds it what happens (an unknown person offered, the operator typing a name,
a decision, the operator asking to register a face, the registering face in each frame, a
departure, the validation result, a reset, the clock) and carries out the effects it returns
(events to publish, replies to a client, the validation and storage of the captures). Illegal
transitions raise `IllegalTransitionError`. `now` is the runtime's clock (deadlines); an
observation's `frame_time` is stream time (pose steadiness, feedback).

    idle --unknown--> awaiting_decision --approve--> capturing(front..down) --5 poses-->
    validating --stored--> completed -> idle
                        \\--decline/timeout/left--> cancelled -> idle
    idle --offer--> capturing (the operator asked to register a face: no question)
    capturing --pose timeout--> failed -> idle;  validating --refused--> failed -> idle
    any --reset--> idle

The front pose is the person's own steady front (`front_reading`), not an absolute window:
the other poses are measured from it. Every failure and cancellation says what to do next.

The runtime refuses the captures (`Stored(False, reason=...)`) as `not_live` when they moved as
one plane, a photo or a screen swept in front of the camera (`parallax`), then as
`inconsistent_identity` when they are not all one person (`consistent`), then as
`already_registered`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from facegate.events import (
    Event,
    RegistrationAngleComplete,
    RegistrationAngleInstruction,
    RegistrationApproved,
    RegistrationCancelled,
    RegistrationComplete,
    RegistrationFailed,
    RegistrationPoseFeedback,
    RegistrationStart,
    RegistrationWaiting,
    SystemReady,
)
from facegate.live.pose_guide import (
    HOLD_STILL,
    INSTRUCTIONS,
    direction_hint,
    front_reading,
    next_step,
    remember,
)
from facegate.settings import POSE_ORDER, RegistrationSettings
from facegate.vision.planarity import planarity


class Phase(enum.Enum):
    IDLE = "idle"
    AWAITING_DECISION = "awaiting_decision"
    CAPTURING = "capturing"
    VALIDATING = "validating"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class IllegalTransitionError(Exception):
    """An event that the current state cannot take (a bug in the caller)."""


# -- what goes in ----------------------------------------------------------------------------
@dataclass(frozen=True)
class UnknownOffered:
    track_id: int


@dataclass(frozen=True)
class Typing:
    """The operator is typing a name: the question's deadline is extended, once."""

    client: str = ""


@dataclass(frozen=True)
class OperatorDecision:
    """The operator's answer to "register this face?" (yes with an optional name, or no)."""

    register: bool
    name: str | None = None
    client: str = ""  # who answered, for the reply


@dataclass(frozen=True)
class Offer:
    """The operator asks to register this face now (the runtime checked that the track is in
    view and not known)."""

    track_id: int
    name: str | None = None
    client: str = ""


@dataclass(frozen=True)
class Observation:
    """The registering face in one frame."""

    track_id: int
    frame: int
    yaw: float | None
    pitch: float | None
    usable: bool  # passes the enrolment quality gate
    embedding: npt.NDArray[np.float32] | None
    bbox: tuple[float, float, float, float] | None = None
    quality: float = 0.0  # 0..1, see vision.quality.quality_score
    frame_time: float | None = None  # stream time of the frame (None: use the runtime's clock)
    # The 68 iBUG landmarks (frame pixels) where the analyzer has them: the planarity check
    # between the front and the turned captures (a photo swept in front of the camera).
    landmarks: npt.NDArray[np.float32] | None = None


@dataclass(frozen=True)
class PersonLeft:
    track_id: int


@dataclass(frozen=True)
class Stored:
    """The runtime validated and stored the captures (or refused them)."""

    ok: bool
    person_id: str | None = None
    name: str | None = None
    # not_live | inconsistent_identity | already_registered | store_error | error text
    reason: str = ""
    message: str = ""


@dataclass(frozen=True)
class Tick:
    """Time passes (timeouts)."""


@dataclass(frozen=True)
class Reset:
    pass


Input = (
    UnknownOffered
    | Typing
    | OperatorDecision
    | Offer
    | Observation
    | PersonLeft
    | Stored
    | Tick
    | Reset
)


# -- what comes out --------------------------------------------------------------------------
@dataclass(frozen=True)
class Publish:
    event: Event


@dataclass(frozen=True)
class Reply:
    client: str
    ok: bool
    message: str


@dataclass(frozen=True)
class PoseSample:
    """One captured view of a pose: its embedding, the head pose it was read at and, where the
    analyzer has them, its 68 landmarks (frame pixels; for `parallax`). A guided capture
    collects `captures_per_pose` of them per pose (`State.captures`)."""

    pose: str
    embedding: npt.NDArray[np.float32]
    yaw: float | None
    pitch: float | None
    quality: float = 0.0
    landmarks: npt.NDArray[np.float32] | None = None


@dataclass(frozen=True)
class ValidateAndStore:
    """Check the captures (liveness: `parallax`; consistency: `consistent`; duplicates) and
    store them in one transaction; the runtime answers with `Stored`."""

    name: str | None
    captures: tuple[PoseSample, ...]


Effect = Publish | Reply | ValidateAndStore


# -- the state -------------------------------------------------------------------------------
@dataclass(frozen=True)
class State:
    phase: Phase = Phase.IDLE
    track_id: int | None = None
    name: str | None = None
    deadline: float = 0.0  # decision or current pose
    extended: bool = False  # the decision's deadline was extended (once per question)
    pose_index: int = 0
    captures: tuple[PoseSample, ...] = ()
    last_capture_frame: int = -(10**9)
    last_feedback: float = -1e18
    # The front pose's usable readings (time, yaw, pitch): the last front_settle_seconds and
    # the latest one before them, at most RECENT_MAX.
    recent: tuple[tuple[float, float, float], ...] = ()
    front: tuple[float, float] | None = None  # the person's steady front (yaw, pitch)
    baseline: tuple[float, float] = (0.0, 0.0)  # the front captures' mean yaw, pitch
    declined: tuple[tuple[int, float], ...] = ()  # (track id, until)

    @property
    def pose(self) -> str | None:
        if self.phase is not Phase.CAPTURING:
            return None
        return POSE_ORDER[self.pose_index]

    def captured(self, pose: str) -> int:
        return sum(1 for c in self.captures if c.pose == pose)


def progress(state: State, cfg: RegistrationSettings) -> float:
    """Percent of the capture done."""
    total = len(POSE_ORDER) * cfg.captures_per_pose
    return round(100.0 * min(len(state.captures), total) / total, 1)


def _idle(state: State, now: float) -> State:
    declined = tuple((t, until) for t, until in state.declined if until > now)
    return State(declined=declined)


def _instruction(state: State, cfg: RegistrationSettings) -> Publish:
    pose = POSE_ORDER[state.pose_index]
    return Publish(
        RegistrationAngleInstruction(
            angle_name=pose,
            instruction=INSTRUCTIONS[pose],
            angle_number=state.pose_index + 1,
            total_angles=len(POSE_ORDER),
            progress=progress(state, cfg),
            message=f"Pose {state.pose_index + 1} of {len(POSE_ORDER)}: {INSTRUCTIONS[pose]}",
            timeout_seconds=cfg.angle_timeout_seconds,
        )
    )


def _waiting(state: State, seconds_left: float, cfg: RegistrationSettings) -> Publish:
    message = (
        "The operator is typing a name: more time to answer"
        if state.extended
        else "Register this face? Waiting for the operator's answer"
    )
    return Publish(
        RegistrationWaiting(
            message=message,
            track_id=state.track_id,
            seconds_left=seconds_left,
            timeout_seconds=cfg.decision_timeout_seconds,
            extended=state.extended,
        )
    )


def target(state: State, cfg: RegistrationSettings, pose: str) -> tuple[list[float], list[float]]:
    """The yaw and pitch windows a pose's readings are checked against, in absolute angles.

    front: the tolerance box around the person's steady front once it is known, else
    poses.front (where that front must lie). The others: their windows, shifted to the front
    baseline when relative_to_front."""
    if pose == "front" and state.front is not None:
        yaw, pitch = state.front
        tol = cfg.front_tolerance_degrees
        return [yaw - tol, yaw + tol], [pitch - tol, pitch + tol]
    window = cfg.poses[pose]
    dy, dp = state.baseline if (cfg.relative_to_front and pose != "front") else (0.0, 0.0)
    return [window.yaw[0] + dy, window.yaw[1] + dy], [window.pitch[0] + dp, window.pitch[1] + dp]


def _end(state: State, now: float, event: Event) -> tuple[State, list[Effect]]:
    return _idle(state, now), [Publish(event)]


def _cancel(state: State, now: float, reason: str, message: str) -> tuple[State, list[Effect]]:
    return _end(
        state,
        now,
        RegistrationCancelled(
            message=message,
            reason=reason,
            track_id=state.track_id,
            next_step=next_step(reason),
        ),
    )


def step(
    state: State, event: Input, now: float, cfg: RegistrationSettings
) -> tuple[State, list[Effect]]:
    """The next state and the effects to carry out. Pure."""
    if isinstance(event, Reset):
        effects: list[Effect] = []
        if state.phase in (Phase.AWAITING_DECISION, Phase.CAPTURING, Phase.VALIDATING):
            effects += _cancel(state, now, "reset", "Registration reset")[1]
        effects.append(Publish(SystemReady(message="System reset; ready")))
        return _idle(state, now), effects
    match state.phase:
        case Phase.IDLE:
            return _step_idle(state, event, now, cfg)
        case Phase.AWAITING_DECISION:
            return _step_awaiting(state, event, now, cfg)
        case Phase.CAPTURING:
            return _step_capturing(state, event, now, cfg)
        case Phase.VALIDATING:
            return _step_validating(state, event, now)
        case _:
            raise IllegalTransitionError(
                f"{state.phase.value} is transient; the machine never rests in it"
            )


NOT_WAITING = "no registration is waiting for a decision"
UNDER_WAY = "a registration is under way"


def _refuse(event: Input, why: str) -> list[Effect]:
    assert isinstance(event, OperatorDecision | Typing | Offer)
    return [Reply(event.client, False, why)]


def _start_capture(
    state: State,
    track: int,
    now: float,
    cfg: RegistrationSettings,
    *,
    name: str | None,
    client: str,
) -> tuple[State, list[Effect]]:
    """The operator approved (or asked for) the registration of `track`: the first pose."""
    capturing = replace(
        state,
        phase=Phase.CAPTURING,
        track_id=track,
        name=name,
        extended=False,
        pose_index=0,
        captures=(),
        recent=(),
        front=None,
        deadline=now + cfg.angle_timeout_seconds,
    )
    shown = name or "the new person"
    return capturing, [
        Reply(client, True, "approved"),
        Publish(
            RegistrationApproved(message=f"Registering {shown}", track_id=track, name=name or "")
        ),
        Publish(
            RegistrationStart(
                message="Follow the instructions on the screen",
                total_angles=len(POSE_ORDER),
                angles=list(POSE_ORDER),
            )
        ),
        _instruction(capturing, cfg),
    ]


def _step_idle(
    state: State, event: Input, now: float, cfg: RegistrationSettings
) -> tuple[State, list[Effect]]:
    match event:
        case UnknownOffered(track_id=track):
            if any(t == track and until > now for t, until in state.declined):
                return state, []  # declined recently: not asked again
            asking = replace(
                state,
                phase=Phase.AWAITING_DECISION,
                track_id=track,
                deadline=now + cfg.decision_timeout_seconds,
                extended=False,
            )
            return asking, [_waiting(asking, cfg.decision_timeout_seconds, cfg)]
        case Offer(track_id=track, name=name, client=client):
            declined = tuple((t, until) for t, until in state.declined if t != track)
            return _start_capture(
                replace(state, declined=declined), track, now, cfg, name=name, client=client
            )
        case OperatorDecision() | Typing():
            return state, _refuse(event, NOT_WAITING)
        case Tick() | Observation() | PersonLeft():
            return _idle(state, now), []
    raise IllegalTransitionError(f"idle cannot take {type(event).__name__}")


def _step_awaiting(
    state: State, event: Input, now: float, cfg: RegistrationSettings
) -> tuple[State, list[Effect]]:
    if isinstance(event, OperatorDecision | Typing) and now >= state.deadline:  # too late
        nxt, effects = _cancel(
            state, now, "decision_timeout", "No answer in time; registration not started"
        )
        late = (
            "the decision came too late"
            if isinstance(event, OperatorDecision)
            else "too late to extend"
        )
        return nxt, [Reply(event.client, False, late), *effects]
    match event:
        case OperatorDecision(register=False, client=client):
            until = now + cfg.decline_cooldown_seconds
            track = state.track_id if state.track_id is not None else -1
            declined = (*state.declined, (track, until))
            nxt, effects = _cancel(
                replace(state, declined=declined), now, "declined", "Registration declined"
            )
            return nxt, [Reply(client, True, "declined"), *effects]
        case OperatorDecision(register=True, name=name, client=client):
            assert state.track_id is not None
            return _start_capture(state, state.track_id, now, cfg, name=name, client=client)
        case Offer(track_id=track, name=name, client=client) if track == state.track_id:
            # The operator asks for the face in question: an approval (even past the deadline,
            # since it is a request of its own, not a late answer).
            return _start_capture(state, track, now, cfg, name=name, client=client)
        case Offer():
            return state, _refuse(event, "another face is waiting for a decision")
        case Typing(client=client) if state.extended:
            return state, [Reply(client, False, "already extended")]
        case Typing(client=client):
            deadline = max(state.deadline, now + cfg.decision_timeout_seconds)
            left = max(cfg.decision_timeout_seconds, state.deadline - now)
            extended = replace(state, deadline=deadline, extended=True)
            return extended, [Reply(client, True, "extended"), _waiting(extended, left, cfg)]
        case PersonLeft(track_id=track) if track == state.track_id:
            return _cancel(state, now, "person_left", "The person left before a decision")
        case Tick() if now >= state.deadline:
            return _cancel(state, now, "decision_timeout", "No answer; registration not started")
        case UnknownOffered() | Observation() | PersonLeft() | Tick():
            return state, []  # one registration at a time
    raise IllegalTransitionError(f"awaiting_decision cannot take {type(event).__name__}")


def _step_capturing(
    state: State, event: Input, now: float, cfg: RegistrationSettings
) -> tuple[State, list[Effect]]:
    match event:
        case Observation() if event.track_id == state.track_id:
            return _observe(state, event, now, cfg)
        case PersonLeft(track_id=track) if track == state.track_id:
            return _cancel(state, now, "person_left", "The person left during the capture")
        case Tick() if now >= state.deadline:
            pose = state.pose or "?"
            reason = f"angle_timeout_{pose}"
            return _end(
                state,
                now,
                RegistrationFailed(
                    message=f"The {pose} pose was not reached in {cfg.angle_timeout_seconds:.0f} s",
                    reason=reason,
                    track_id=state.track_id,
                    next_step=next_step(reason),
                ),
            )
        case OperatorDecision():
            return state, _refuse(event, "already decided")
        case Typing():
            return state, _refuse(event, NOT_WAITING)
        case Offer():
            return state, _refuse(event, UNDER_WAY)
        case UnknownOffered() | Observation() | PersonLeft() | Tick():
            return state, []
    raise IllegalTransitionError(f"capturing cannot take {type(event).__name__}")


def _observe(
    state: State, obs: Observation, now: float, cfg: RegistrationSettings
) -> tuple[State, list[Effect]]:
    pose = POSE_ORDER[state.pose_index]
    steady: tuple[float, float] | None = None
    if pose == "front" and obs.usable and obs.yaw is not None and obs.pitch is not None:
        t = obs.frame_time if obs.frame_time is not None else now
        recent = remember(state.recent, t, obs.yaw, obs.pitch, cfg)
        steady = front_reading(recent, t, cfg)
        front = state.front
        if steady is not None:  # the person's front now; captured only inside poses.front
            window = cfg.poses["front"]
            inside_window = (
                window.yaw[0] <= steady[0] <= window.yaw[1]
                and window.pitch[0] <= steady[1] <= window.pitch[1]
            )
            front = steady if inside_window else None
        state = replace(state, recent=recent, front=front)
    yaw_win, pitch_win = target(state, cfg, pose)
    inside = (
        (pose != "front" or state.front is not None)
        and obs.yaw is not None
        and obs.pitch is not None
        and yaw_win[0] <= obs.yaw <= yaw_win[1]
        and pitch_win[0] <= obs.pitch <= pitch_win[1]
    )
    if pose != "front":
        hint = direction_hint(pose, obs.yaw, obs.pitch, yaw_win, pitch_win)
    elif obs.yaw is None or obs.pitch is None:
        hint = None
    elif steady is not None and state.front is None:  # steady, but outside poses.front
        window = cfg.poses["front"]
        hint = direction_hint("front", *steady, window.yaw, window.pitch)
    else:
        hint = None if inside else HOLD_STILL
    held = inside and obs.usable and obs.embedding is not None
    effects: list[Effect] = []
    if held and obs.frame - state.last_capture_frame >= cfg.min_frames_apart:
        assert obs.embedding is not None
        cap = PoseSample(pose, obs.embedding, obs.yaw, obs.pitch, obs.quality, obs.landmarks)
        state = replace(state, captures=(*state.captures, cap), last_capture_frame=obs.frame)
    if now - state.last_feedback >= cfg.feedback_interval_seconds:
        state = replace(state, last_feedback=now)
        effects.append(
            Publish(
                RegistrationPoseFeedback(
                    angle_name=pose,
                    yaw=obs.yaw,
                    pitch=obs.pitch,
                    target_yaw=yaw_win,
                    target_pitch=pitch_win,
                    held=held,
                    captured=state.captured(pose),
                    needed=cfg.captures_per_pose,
                    track_id=obs.track_id,
                    bbox=list(obs.bbox) if obs.bbox else None,
                    frame_time=obs.frame_time,
                    seconds_left=round(max(0.0, state.deadline - now), 1),
                    hint=hint,
                )
            )
        )
    if state.captured(pose) < cfg.captures_per_pose:
        return state, effects
    if pose == "front":
        fronts = [c for c in state.captures if c.pose == "front"]
        state = replace(
            state,
            recent=(),
            baseline=(
                float(np.mean([c.yaw or 0.0 for c in fronts])),
                float(np.mean([c.pitch or 0.0 for c in fronts])),
            ),
        )
    effects.append(
        Publish(
            RegistrationAngleComplete(
                angle_name=pose,
                angle_number=state.pose_index + 1,
                total_angles=len(POSE_ORDER),
                progress=progress(state, cfg),
                message=f"{pose.capitalize()} pose captured",
            )
        )
    )
    if state.pose_index + 1 < len(POSE_ORDER):
        state = replace(
            state,
            pose_index=state.pose_index + 1,
            deadline=now + cfg.angle_timeout_seconds,
            last_feedback=-1e18,
        )
        return state, [*effects, _instruction(state, cfg)]
    state = replace(state, phase=Phase.VALIDATING)
    return state, [*effects, ValidateAndStore(state.name, state.captures)]


def _step_validating(state: State, event: Input, now: float) -> tuple[State, list[Effect]]:
    match event:
        case Stored(ok=True, person_id=pid, name=name, message=message) if pid and name:
            return _end(
                state,
                now,
                RegistrationComplete(
                    person_id=pid,
                    name=name,
                    message=message or f"{name} registered",
                    track_id=state.track_id,
                ),
            )
        case Stored(ok=False, person_id=pid, name=name, reason=reason, message=message):
            return _end(
                state,
                now,
                RegistrationFailed(
                    message=message or reason,
                    reason=reason,
                    person_id=pid,
                    name=name,
                    track_id=state.track_id,
                    next_step=next_step(reason, name),
                ),
            )
        case OperatorDecision():
            return state, _refuse(event, "already decided")
        case Typing():
            return state, _refuse(event, NOT_WAITING)
        case Offer():
            return state, _refuse(event, UNDER_WAY)
        case UnknownOffered() | Observation() | PersonLeft() | Tick():
            return state, []  # the captures are complete: leaving now changes nothing
    raise IllegalTransitionError(f"validating cannot take {type(event).__name__}")


def consistent(captures: tuple[PoseSample, ...], threshold: float) -> tuple[bool, float]:
    """Every capture matches the mean of the front captures (one person throughout)."""
    fronts = np.stack([c.embedding for c in captures if c.pose == "front"])
    mean = fronts.mean(axis=0)
    mean /= np.linalg.norm(mean) or 1.0
    worst = min(float(c.embedding @ mean) for c in captures)
    return worst >= threshold, worst


# The turned poses whose captures are judged against the front ones for liveness: the yaw turns.
# Up and down are left out: a real head tilted into the down window can show as little parallax
# as a plane (Pointing'04: 2 of 25 real captures there score at most 0.128) and a photo tilted
# away into it can show more (4 of 80 attack frames above 0.128, up to 0.156).
PARALLAX_POSES = ("left", "right")


def parallax(captures: tuple[PoseSample, ...]) -> float | None:
    """How much the captures moved like a head rather than a plane: the median planarity score
    (`facegate.vision.planarity`) over every pair (front capture, left or right capture). A
    photo or a screen swept in front of the camera moves as one plane and scores low: at or
    below settings.liveness.planarity_cutoff the runtime refuses the captures as `not_live`.

    None when no such pair has landmarks (an analyzer without the 68 points, e.g. the
    InsightFace packs): the check is skipped, the captures are not refused. A pair whose
    landmarks are degenerate (on a line) is left out.

    Why the median over both sides: the left/right windows start 20 deg from the front, lower
    than the 30-45 deg turns the cut-off was calibrated on, and a real head captured near that
    edge shows less parallax. Measured with the faceplugin landmarks on Pointing'04 persons
    01-10, both series (the front image against every image of the same series whose read pose
    falls in the default left/right windows relative to the read front; captures as near the
    windows' edge as the 15 deg steps allow, and every other choice): single captures at
    15 deg turns reading 20-38 deg score 0.107-0.306 (3 of 36 at most 0.128), so a rule per side
    would refuse real people (the lower side's score: 10 of 286 choices at most 0.128); the
    median over both sides scores 0.165-0.328 (every person's lowest at least 0.165). Photos and
    phone screens of the same frontal image turned as planes up to 60 deg (hand shake, JPEG; 9
    seeds; most never read inside these windows: 14 of 360 sweeps reach both) score at most
    0.113 in every pair whose turned view reads inside them, so no choice of captures passes
    (the median at most 0.080)."""
    fronts = [c.landmarks for c in captures if c.pose == "front" and c.landmarks is not None]
    turned = [c.landmarks for c in captures if c.pose in PARALLAX_POSES and c.landmarks is not None]
    scores: list[float] = []
    for front in fronts:
        for view in turned:
            try:
                scores.append(planarity(front, view).score)
            except ValueError:
                continue  # degenerate landmarks: no homography to judge
    return float(np.median(scores)) if scores else None
