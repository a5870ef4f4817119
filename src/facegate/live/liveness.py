"""The liveness challenge: a head turn a photo or a screen cannot make. A pure state machine.

Once a track's identity is settled (and `[liveness] challenge` asks for it), the gate asks the
person to turn their head one way (left or right, optionally up or down, chosen at random by
the runtime) and back. `step(state, event, now, cfg) -> (state, effects)` never does I/O; the
runtime feeds it the challenged track's observations and the clock and publishes what it
returns. It passes only if, on the same track without a detection gap,
- the pose reaches the target window (measured from the person's own front at the start) and
  comes back to the front, within `challenge_seconds`;
- the 68 landmarks moved between the front and the turned view in a way one homography does
  not explain (`vision.planarity`; the median over the turned views): a flat photo or screen
  moves as a plane;
- the turned and returned views are still the same person as the front (embedding similarity).

    idle --Start--> front (a steady front view to measure from) --> turning (target window)
         --> returning (back to the front) --> passed | failed -> idle
    any --timeout / gap / identity changed / planar / Abort--> failed -> idle;  any --Reset--> idle

Illegal transitions raise `IllegalTransitionError`.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

Direction = str  # "left" | "right" | "up" | "down"
# The planarity measure (vision.planarity): front and turned (68, 2) landmarks -> residual.
ResidualFn = Callable[[npt.NDArray[np.float32], npt.NDArray[np.float32]], float]
DIRECTIONS: tuple[Direction, ...] = ("left", "right", "up", "down")

# What the person is asked, in their own terms (yaw < 0: their own left; pitch > 0: up).
INSTRUCTIONS: dict[Direction, str] = {
    "left": "Please turn your head to your left, then back",
    "right": "Please turn your head to your right, then back",
    "up": "Please look up, then back",
    "down": "Please look down, then back",
}


class Phase(enum.Enum):
    IDLE = "idle"
    FRONT = "front"
    TURNING = "turning"
    RETURNING = "returning"


class IllegalTransitionError(Exception):
    """An event that the current state cannot take (a bug in the caller)."""


@dataclass(frozen=True)
class Config:
    challenge_seconds: float
    turn_degrees: float  # the turn the target asks, from the person's own front
    front_degrees: float  # within this of the front counts as front (start and return)
    planarity_cutoff: float  # residuals at or below it move as a plane
    identity_threshold: float  # the same person through the turn


# -- what goes in ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Start:
    track_id: int
    person_id: str | None
    direction: Direction


@dataclass(frozen=True)
class View:
    """The challenged face in one frame."""

    track_id: int
    frame: int  # the engine's frame number: consecutive on the same track, no gap
    yaw: float
    pitch: float
    landmarks: npt.NDArray[np.float32]  # (68, 2)
    embedding: npt.NDArray[np.float32] | None


@dataclass(frozen=True)
class Missed:
    """The challenged track had no detection in a processed frame."""

    track_id: int


@dataclass(frozen=True)
class Abort:
    """The runtime ends the challenge (e.g. the track's identity changed): it fails."""

    track_id: int
    reason: str


@dataclass(frozen=True)
class Tick:
    pass


@dataclass(frozen=True)
class Reset:
    pass


Input = Start | View | Missed | Abort | Tick | Reset


# -- what comes out --------------------------------------------------------------------------
@dataclass(frozen=True)
class Asked:
    """Tell the person what to do (the runtime publishes `liveness_challenge`)."""

    track_id: int
    person_id: str | None
    direction: Direction
    instruction: str
    target_yaw: tuple[float, float]
    target_pitch: tuple[float, float]


@dataclass(frozen=True)
class Verdict:
    """The challenge ended (the runtime publishes `liveness_result`)."""

    track_id: int
    person_id: str | None
    passed: bool
    reason: str  # passed | timeout | track_lost | identity_changed | planar
    residual: float | None  # the median planarity score of the turned views (None: no turn)
    seconds: float


Effect = Asked | Verdict


# -- the state -------------------------------------------------------------------------------
@dataclass(frozen=True)
class State:
    phase: Phase = Phase.IDLE
    track_id: int | None = None
    person_id: str | None = None
    direction: Direction = "left"
    started: float = 0.0
    last_frame: int | None = None
    front_yaw: float = 0.0
    front_pitch: float = 0.0
    front_landmarks: npt.NDArray[np.float32] | None = None
    front_embedding: npt.NDArray[np.float32] | None = None
    scores: tuple[float, ...] = ()  # planarity of each view inside the target window


def target(state: State, cfg: Config) -> tuple[tuple[float, float], tuple[float, float]]:
    """The target windows (yaw, pitch) of the challenge, from the person's own front."""
    y, p, t = state.front_yaw, state.front_pitch, cfg.turn_degrees
    wide = 90.0
    match state.direction:
        case "left":
            return (y - wide, y - t), (p - wide, p + wide)
        case "right":
            return (y + t, y + wide), (p - wide, p + wide)
        case "up":
            return (y - wide, y + wide), (p + t, p + wide)
        case _:
            return (y - wide, y + wide), (p - wide, p - t)


def step(
    state: State,
    event: Input,
    now: float,
    cfg: Config,
    residual_of: ResidualFn,
) -> tuple[State, list[Effect]]:
    """`residual_of(front, turned)`: the planarity residual (vision.planarity)."""
    match event:
        case Reset():
            return State(), []
        case Start(track_id=track, person_id=person, direction=direction):
            if state.phase is not Phase.IDLE:
                raise IllegalTransitionError(f"a challenge is already under way ({state.phase})")
            if direction not in DIRECTIONS:
                raise ValueError(f"unknown direction {direction!r}")
            return State(Phase.FRONT, track, person, direction, started=now), []
        case Tick():
            if state.phase is Phase.IDLE:
                return state, []
            if now - state.started > cfg.challenge_seconds:
                return _end(state, now, False, "timeout")
            return state, []
        case Missed(track_id=track):
            if state.phase is Phase.IDLE or track != state.track_id:
                return state, []
            return _end(state, now, False, "track_lost")
        case Abort(track_id=track, reason=reason):
            if state.phase is Phase.IDLE or track != state.track_id:
                return state, []
            return _end(state, now, False, reason)
        case View() as view:
            return _view(state, view, now, cfg, residual_of)
    raise IllegalTransitionError(f"{type(event).__name__} in {state.phase}")


def _view(
    state: State, view: View, now: float, cfg: Config, residual_of: ResidualFn
) -> tuple[State, list[Effect]]:
    if state.phase is Phase.IDLE or view.track_id != state.track_id:
        return state, []
    if now - state.started > cfg.challenge_seconds:
        return _end(state, now, False, "timeout")
    if state.last_frame is not None and view.frame != state.last_frame + 1:
        return _end(state, now, False, "track_lost")
    state = replace(state, last_frame=view.frame)
    front = state.front_embedding
    if (
        front is not None
        and view.embedding is not None
        and (float(view.embedding @ front) < cfg.identity_threshold)
    ):
        return _end(state, now, False, "identity_changed")
    if state.phase is Phase.FRONT:
        if view.embedding is None or not (math.isfinite(view.yaw) and math.isfinite(view.pitch)):
            return state, []  # the front needs a face and a pose to measure the turn from
        state = replace(
            state,
            phase=Phase.TURNING,
            front_yaw=view.yaw,
            front_pitch=view.pitch,
            front_landmarks=view.landmarks,
            front_embedding=view.embedding,
        )
        yaw, pitch = target(state, cfg)
        asked = Asked(
            state.track_id or 0,
            state.person_id,
            state.direction,
            INSTRUCTIONS[state.direction],
            yaw,
            pitch,
        )
        return state, [asked]
    (y0, y1), (p0, p1) = target(state, cfg)
    assert state.front_landmarks is not None
    if y0 <= view.yaw <= y1 and p0 <= view.pitch <= p1:
        score = residual_of(state.front_landmarks, view.landmarks)
        return replace(state, phase=Phase.RETURNING, scores=(*state.scores, score)), []
    if state.phase is Phase.TURNING:
        return state, []
    back = (
        abs(view.yaw - state.front_yaw) <= cfg.front_degrees
        and abs(view.pitch - state.front_pitch) <= cfg.front_degrees
    )
    if not back:
        return state, []
    # The median over the turned views: one odd landmark fit neither passes nor fails it.
    if _residual(state) <= cfg.planarity_cutoff:
        return _end(state, now, False, "planar")
    return _end(state, now, True, "passed")


def _residual(state: State) -> float:
    return float(np.median(state.scores)) if state.scores else 0.0


def _end(state: State, now: float, passed: bool, reason: str) -> tuple[State, list[Effect]]:
    verdict = Verdict(
        state.track_id or 0,
        state.person_id,
        passed,
        reason,
        _residual(state) if state.scores else None,
        round(now - state.started, 3),
    )
    return State(), [verdict]
