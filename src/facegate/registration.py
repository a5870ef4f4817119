"""Registration: operator approval, then a guided five-pose capture. A pure state machine.

`step(state, event, now) -> (state, effects)` never does I/O: the runtime
(`registrar.py`) feeds it what happens (an unknown person offered, a decision, the
registering face in each frame, a departure, the validation result, a reset, the clock) and
carries out the effects it returns (events to publish, replies to a client, the validation
and storage of the captures). Illegal transitions raise `IllegalTransitionError`.

    idle --unknown--> awaiting_decision --approve--> capturing(front..down) --5 poses-->
    validating --stored--> completed -> idle
                        \\--decline/timeout/left--> cancelled -> idle
    capturing --pose timeout--> failed -> idle;  validating --refused--> failed -> idle
    any --reset--> idle
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
    SystemReady,
)
from facegate.settings import POSE_ORDER, RegistrationSettings

INSTRUCTIONS = {
    "front": "Look straight at the camera",
    "left": "Turn your head slowly to your left",
    "right": "Turn your head slowly to your right",
    "up": "Tilt your head slowly up",
    "down": "Tilt your head slowly down",
}


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
class Decision:
    register: bool
    name: str | None = None
    client: str = ""  # who answered, for the reply


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
    quality: float = 0.0  # 0..1, see enrolment.quality_score


@dataclass(frozen=True)
class PersonLeft:
    track_id: int


@dataclass(frozen=True)
class Stored:
    """The runtime validated and stored the captures (or refused them)."""

    ok: bool
    person_id: str | None = None
    name: str | None = None
    reason: str = ""  # inconsistent_identity | already_registered | error text
    message: str = ""


@dataclass(frozen=True)
class Tick:
    """Time passes (timeouts)."""


@dataclass(frozen=True)
class Reset:
    pass


Input = UnknownOffered | Decision | Observation | PersonLeft | Stored | Tick | Reset


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
class Capture:
    pose: str
    embedding: npt.NDArray[np.float32]
    yaw: float | None
    pitch: float | None
    quality: float = 0.0


@dataclass(frozen=True)
class ValidateAndStore:
    """Check the captures (consistency, duplicates) and store them in one transaction; the
    runtime answers with `Stored`."""

    name: str | None
    captures: tuple[Capture, ...]


Effect = Publish | Reply | ValidateAndStore


# -- the state -------------------------------------------------------------------------------
@dataclass(frozen=True)
class State:
    phase: Phase = Phase.IDLE
    track_id: int | None = None
    name: str | None = None
    deadline: float = 0.0  # decision or current pose
    pose_index: int = 0
    captures: tuple[Capture, ...] = ()
    last_capture_frame: int = -(10**9)
    last_feedback: float = -1e18
    baseline: tuple[float, float] = (0.0, 0.0)  # the front pose's mean yaw, pitch
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
        )
    )


def target(state: State, cfg: RegistrationSettings, pose: str) -> tuple[list[float], list[float]]:
    """The pose's yaw and pitch windows in absolute angles (shifted to the front baseline)."""
    window = cfg.poses[pose]
    dy, dp = state.baseline if (cfg.relative_to_front and pose != "front") else (0.0, 0.0)
    return [window.yaw[0] + dy, window.yaw[1] + dy], [window.pitch[0] + dp, window.pitch[1] + dp]


def _end(state: State, now: float, event: Event) -> tuple[State, list[Effect]]:
    return _idle(state, now), [Publish(event)]


def step(
    state: State, event: Input, now: float, cfg: RegistrationSettings
) -> tuple[State, list[Effect]]:
    """The next state and the effects to carry out. Pure."""
    if isinstance(event, Reset):
        effects: list[Effect] = []
        if state.phase in (Phase.AWAITING_DECISION, Phase.CAPTURING, Phase.VALIDATING):
            effects.append(
                Publish(RegistrationCancelled(message="Registration reset", reason="reset"))
            )
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


def _refuse_decision(event: Input, why: str) -> list[Effect]:
    assert isinstance(event, Decision)
    return [Reply(event.client, False, why)]


def _step_idle(
    state: State, event: Input, now: float, cfg: RegistrationSettings
) -> tuple[State, list[Effect]]:
    match event:
        case UnknownOffered(track_id=track):
            if any(t == track and until > now for t, until in state.declined):
                return state, []  # declined recently: not asked again
            deadline = now + cfg.decision_timeout_seconds
            return replace(
                state, phase=Phase.AWAITING_DECISION, track_id=track, deadline=deadline
            ), []
        case Decision():
            return state, _refuse_decision(event, "no registration is waiting for a decision")
        case Tick() | Observation() | PersonLeft():
            return _idle(state, now), []
    raise IllegalTransitionError(f"idle cannot take {type(event).__name__}")


def _step_awaiting(
    state: State, event: Input, now: float, cfg: RegistrationSettings
) -> tuple[State, list[Effect]]:
    if isinstance(event, Decision) and now >= state.deadline:  # the answer came too late
        nxt, effects = _end(
            state,
            now,
            RegistrationCancelled(
                message="No answer in time; registration not started", reason="decision_timeout"
            ),
        )
        return nxt, [Reply(event.client, False, "the decision came too late"), *effects]
    match event:
        case Decision(register=False, client=client):
            until = now + cfg.decline_cooldown_seconds
            track = state.track_id if state.track_id is not None else -1
            declined = (*state.declined, (track, until))
            nxt, effects = _end(
                replace(state, declined=declined),
                now,
                RegistrationCancelled(message="Registration declined", reason="declined"),
            )
            return nxt, [Reply(client, True, "declined"), *effects]
        case Decision(register=True, name=name, client=client):
            capturing = replace(
                state,
                phase=Phase.CAPTURING,
                name=name,
                pose_index=0,
                captures=(),
                deadline=now + cfg.angle_timeout_seconds,
            )
            shown = name or "the new person"
            return capturing, [
                Reply(client, True, "approved"),
                Publish(
                    RegistrationApproved(
                        message=f"Registering {shown}", track_id=state.track_id, name=name or ""
                    )
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
        case PersonLeft(track_id=track) if track == state.track_id:
            return _end(
                state,
                now,
                RegistrationCancelled(
                    message="The person left before a decision", reason="person_left"
                ),
            )
        case Tick() if now >= state.deadline:
            return _end(
                state,
                now,
                RegistrationCancelled(
                    message="No answer; registration not started", reason="decision_timeout"
                ),
            )
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
            return _end(
                state,
                now,
                RegistrationCancelled(
                    message="The person left during the capture", reason="person_left"
                ),
            )
        case Tick() if now >= state.deadline:
            pose = state.pose or "?"
            return _end(
                state,
                now,
                RegistrationFailed(
                    message=f"The {pose} pose was not reached in {cfg.angle_timeout_seconds:.0f} s",
                    reason=f"angle_timeout_{pose}",
                ),
            )
        case Decision():
            return state, _refuse_decision(event, "already decided")
        case UnknownOffered() | Observation() | PersonLeft() | Tick():
            return state, []
    raise IllegalTransitionError(f"capturing cannot take {type(event).__name__}")


def _observe(
    state: State, obs: Observation, now: float, cfg: RegistrationSettings
) -> tuple[State, list[Effect]]:
    pose = POSE_ORDER[state.pose_index]
    yaw_win, pitch_win = target(state, cfg, pose)
    inside = (
        obs.yaw is not None
        and obs.pitch is not None
        and yaw_win[0] <= obs.yaw <= yaw_win[1]
        and pitch_win[0] <= obs.pitch <= pitch_win[1]
    )
    held = inside and obs.usable and obs.embedding is not None
    effects: list[Effect] = []
    if held and obs.frame - state.last_capture_frame >= cfg.min_frames_apart:
        assert obs.embedding is not None
        cap = Capture(pose, obs.embedding, obs.yaw, obs.pitch, obs.quality)
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
                    frame_time=now,
                )
            )
        )
    if state.captured(pose) < cfg.captures_per_pose:
        return state, effects
    if pose == "front":
        fronts = [c for c in state.captures if c.pose == "front"]
        state = replace(
            state,
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
                    person_id=pid, name=name, message=message or f"{name} registered"
                ),
            )
        case Stored(ok=False, person_id=pid, name=name, reason=reason, message=message):
            return _end(
                state,
                now,
                RegistrationFailed(
                    message=message or reason, reason=reason, person_id=pid, name=name
                ),
            )
        case Decision():
            return state, _refuse_decision(event, "already decided")
        case UnknownOffered() | Observation() | PersonLeft() | Tick():
            return state, []  # the captures are complete: leaving now changes nothing
    raise IllegalTransitionError(f"validating cannot take {type(event).__name__}")


def consistent(captures: tuple[Capture, ...], threshold: float) -> tuple[bool, float]:
    """Every capture matches the mean of the front captures (one person throughout)."""
    fronts = np.stack([c.embedding for c in captures if c.pose == "front"])
    mean = fronts.mean(axis=0)
    mean /= np.linalg.norm(mean) or 1.0
    worst = min(float(c.embedding @ mean) for c in captures)
    return worst >= threshold, worst
