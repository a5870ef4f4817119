"""registration.step: every transition of the pure state machine, then a stateful model test.

The machine never does I/O, so these tests drive it with a fake clock (`now`), synthetic unit
embeddings and observations placed inside or outside the current pose window. Observations
carry a stream time (`frame_time`) of FRAME_DT per frame unless a test says otherwise.
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import replace

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

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
    POSE_TIPS,
    RECENT_MAX,
    direction_hint,
    front_reading,
    next_step,
)
from facegate.live.registration import (
    Effect,
    IllegalTransitionError,
    Input,
    Observation,
    Offer,
    OperatorDecision,
    PersonLeft,
    Phase,
    PoseSample,
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
    progress,
    step,
    target,
)
from facegate.settings import POSE_ORDER, PoseWindow, RegistrationSettings

Vector = npt.NDArray[np.float32]

DIM = 16
T0 = 1000.0
FRAME_DT = 0.1  # stream seconds per frame in these tests (10 fps)
TRACK = 7
CFG = RegistrationSettings()
TRANSIENT = (Phase.COMPLETED, Phase.FAILED, Phase.CANCELLED)


# -- helpers -----------------------------------------------------------------------------------
def unit(person: int = 0, jitter: int = 0, noise: float = 0.02) -> Vector:
    """A synthetic unit embedding: person's base direction plus a little noise."""
    base = np.random.default_rng(person).standard_normal(DIM)
    if jitter:
        base = base / np.linalg.norm(base)
        base = base + noise * np.random.default_rng(10_000 + jitter).standard_normal(DIM)
    return (base / np.linalg.norm(base)).astype(np.float32)


def axis(i: int) -> Vector:
    v = np.zeros(DIM, dtype=np.float32)
    v[i] = 1.0
    return v


def middle(state: State, cfg: RegistrationSettings, pose: str | None = None) -> tuple[float, float]:
    """Yaw, pitch in the middle of the (current) pose window."""
    yaw, pitch = target(state, cfg, pose or state.pose or "front")
    return (yaw[0] + yaw[1]) / 2, (pitch[0] + pitch[1]) / 2


def obs(
    state: State,
    cfg: RegistrationSettings,
    frame: int,
    *,
    track: int = TRACK,
    at: tuple[float | None, float | None] | None = None,
    usable: bool = True,
    embedding: Vector | str | None = "auto",
    bbox: tuple[float, float, float, float] | None = None,
    t: float | str | None = "auto",
) -> Observation:
    yaw, pitch = middle(state, cfg) if at is None else at
    emb = unit(0, jitter=frame) if isinstance(embedding, str) else embedding
    frame_time = frame * FRAME_DT if isinstance(t, str) else t
    return Observation(track, frame, yaw, pitch, usable, emb, bbox, frame_time=frame_time)


def published(effects: list[Effect]) -> list[Event]:
    return [e.event for e in effects if isinstance(e, Publish)]


def of(effects: list[Effect], kind: type) -> list:  # type: ignore[type-arg]
    return [e for e in published(effects) if isinstance(e, kind)]


def kinds(effects: list[Effect]) -> list[str]:
    return [type(e.event).__name__ if isinstance(e, Publish) else type(e).__name__ for e in effects]


def offered(cfg: RegistrationSettings = CFG, track: int = TRACK, now: float = T0) -> State:
    state, effects = step(State(), UnknownOffered(track), now, cfg)
    assert state.phase is Phase.AWAITING_DECISION and kinds(effects) == ["RegistrationWaiting"]
    return state


def approved(cfg: RegistrationSettings = CFG, name: str | None = "Ada", now: float = T0) -> State:
    state, _ = step(offered(cfg, now=now), OperatorDecision(True, name, "op"), now, cfg)
    assert state.phase is Phase.CAPTURING
    return state


class Run:
    """Feeds the registering person's frames, keeping the frame counter and all effects."""

    def __init__(self, state: State, cfg: RegistrationSettings, now: float = T0) -> None:
        self.state, self.cfg, self.now, self.frame = state, cfg, now, 100
        self.effects: list[Effect] = []

    def feed(self, event: Input) -> list[Effect]:
        self.state, effects = step(self.state, event, self.now, self.cfg)
        self.effects += effects
        return effects

    def capture_pose(self, at: tuple[float, float] | None = None) -> list[Effect]:
        """Frames in the window, min_frames_apart apart, until the pose is done."""
        pose, out = self.state.pose, list[Effect]()
        for _ in range(1000):
            if self.state.phase is not Phase.CAPTURING or self.state.pose != pose:
                return out
            self.frame += self.cfg.min_frames_apart
            out += self.feed(obs(self.state, self.cfg, self.frame, at=at))
        raise AssertionError(f"the {pose} pose was never captured at {at}")

    def look(
        self, at: tuple[float | None, float | None], seconds: float, **kw: object
    ) -> list[Effect]:
        """One frame after another (FRAME_DT of stream time each) at `at` for `seconds`."""
        out: list[Effect] = []
        for _ in range(round(seconds / FRAME_DT)):
            self.frame += 1
            out += self.feed(obs(self.state, self.cfg, self.frame, at=at, **kw))  # type: ignore[arg-type]
        return out

    def settle(self, at: tuple[float, float] = (0.0, 0.0)) -> list[Effect]:
        """Hold the front at `at` (frames without embeddings: nothing captured) until it is
        the person's steady front."""
        out = self.look(at, self.cfg.front_settle_seconds + 2 * FRAME_DT, embedding=None)
        assert self.state.front == at and self.state.captures == ()
        return out

    def capture_all(self) -> list[Effect]:
        out = []
        while self.state.phase is Phase.CAPTURING:
            out += self.capture_pose()
        return out


def validating(cfg: RegistrationSettings = CFG, name: str | None = "Ada") -> State:
    run = Run(approved(cfg, name), cfg)
    run.capture_all()
    assert run.state.phase is Phase.VALIDATING
    return run.state


# -- idle --------------------------------------------------------------------------------------
def test_idle_unknown_offered_awaits_decision_with_a_countdown() -> None:
    cfg = RegistrationSettings(decision_timeout_seconds=12.5)
    state, effects = step(State(), UnknownOffered(3), T0, cfg)
    assert state.phase is Phase.AWAITING_DECISION
    assert state.track_id == 3
    assert state.deadline == T0 + 12.5
    assert state.extended is False
    (waiting,) = published(effects)
    assert isinstance(waiting, RegistrationWaiting)
    assert waiting.track_id == 3 and waiting.extended is False
    assert waiting.seconds_left == 12.5 and waiting.timeout_seconds == 12.5
    assert waiting.message


def test_idle_decision_is_refused_without_state_change() -> None:
    state = State()
    nxt, effects = step(state, OperatorDecision(True, "Ada", "op1"), T0, CFG)
    assert nxt == state
    assert effects == [Reply("op1", False, "no registration is waiting for a decision")]


@pytest.mark.parametrize(
    "event",
    [Tick(), PersonLeft(TRACK), Observation(TRACK, 1, 0.0, 0.0, True, unit())],
    ids=["tick", "person_left", "observation"],
)
def test_idle_ignores_tick_observation_person_left(event: Input) -> None:
    state, effects = step(State(), event, T0, CFG)
    assert state.phase is Phase.IDLE and state.track_id is None
    assert effects == []


def test_idle_stored_is_illegal() -> None:
    with pytest.raises(IllegalTransitionError, match="idle cannot take Stored"):
        step(State(), Stored(True, "p1", "Ada"), T0, CFG)


def test_reset_in_idle_only_announces_ready() -> None:
    state, effects = step(State(), Reset(), T0, CFG)
    assert state.phase is Phase.IDLE
    assert kinds(effects) == ["SystemReady"]


# -- awaiting a decision -----------------------------------------------------------------------
def test_approve_starts_the_capture_with_the_front_instruction() -> None:
    cfg = RegistrationSettings(angle_timeout_seconds=9.0)
    state, effects = step(offered(cfg), OperatorDecision(True, "Ada", "op1"), T0 + 2, cfg)
    assert state.phase is Phase.CAPTURING
    assert state.pose == "front" and state.pose_index == 0
    assert state.name == "Ada" and state.track_id == TRACK
    assert state.deadline == T0 + 2 + 9.0
    assert state.captures == ()
    assert effects[0] == Reply("op1", True, "approved")
    assert kinds(effects) == [
        "Reply",
        "RegistrationApproved",
        "RegistrationStart",
        "RegistrationAngleInstruction",
    ]
    approved_ev, start, instruction = published(effects)
    assert isinstance(approved_ev, RegistrationApproved)
    assert approved_ev.track_id == TRACK and approved_ev.name == "Ada"
    assert "Ada" in approved_ev.message
    assert isinstance(start, RegistrationStart)
    assert start.angles == ["front", "left", "right", "up", "down"] == list(POSE_ORDER)
    assert start.total_angles == 5
    assert isinstance(instruction, RegistrationAngleInstruction)
    assert instruction.angle_name == "front"
    assert instruction.angle_number == 1 and instruction.total_angles == 5
    assert instruction.instruction == INSTRUCTIONS["front"] == "Look straight at the camera"
    assert instruction.progress == 0.0
    assert instruction.message == "Pose 1 of 5: Look straight at the camera"


def test_approve_without_name_keeps_none_for_the_runtime_to_name() -> None:
    state, effects = step(offered(), OperatorDecision(True, None, "op"), T0, CFG)
    assert state.phase is Phase.CAPTURING and state.name is None
    (ev,) = of(effects, RegistrationApproved)
    assert ev.name == "" and ev.message == "Registering the new person"
    run = Run(state, CFG)
    run.capture_all()
    (job,) = [e for e in run.effects if isinstance(e, ValidateAndStore)]
    assert job.name is None


def test_decline_cancels_and_replies() -> None:
    state, effects = step(offered(), OperatorDecision(False, None, "op2"), T0 + 1, CFG)
    assert state.phase is Phase.IDLE and state.track_id is None
    assert effects[0] == Reply("op2", True, "declined")
    (cancelled,) = published(effects)
    assert isinstance(cancelled, RegistrationCancelled)
    assert cancelled.reason == "declined"


def test_declined_track_not_offered_again_until_cooldown_passes() -> None:
    cfg = RegistrationSettings(decline_cooldown_seconds=60.0)
    state, _ = step(offered(cfg), OperatorDecision(False, None, "op"), T0, cfg)
    for now in (T0, T0 + 30, T0 + 59.9):
        nxt, effects = step(state, UnknownOffered(TRACK), now, cfg)
        assert nxt.phase is Phase.IDLE and effects == []
    # another face is offered meanwhile
    other, _ = step(state, UnknownOffered(TRACK + 1), T0 + 1, cfg)
    assert other.phase is Phase.AWAITING_DECISION and other.track_id == TRACK + 1
    after, _ = step(state, UnknownOffered(TRACK), T0 + 60.0, cfg)
    assert after.phase is Phase.AWAITING_DECISION and after.track_id == TRACK


def test_decline_cooldown_survives_a_later_registration_and_expires() -> None:
    cfg = RegistrationSettings(decline_cooldown_seconds=60.0)
    state, _ = step(offered(cfg), OperatorDecision(False, None, "op"), T0, cfg)
    state, _ = step(state, UnknownOffered(TRACK + 1), T0 + 1, cfg)
    state, _ = step(state, PersonLeft(TRACK + 1), T0 + 2, cfg)
    assert state.phase is Phase.IDLE
    assert step(state, UnknownOffered(TRACK), T0 + 3, cfg)[0].phase is Phase.IDLE
    state, _ = step(state, Tick(), T0 + 61, cfg)  # idle ticks prune expired entries
    assert state.declined == ()


def test_declined_track_zero_is_not_offered_again() -> None:
    state, _ = step(offered(track=0), OperatorDecision(False, None, "op"), T0, CFG)
    nxt, _ = step(state, UnknownOffered(0), T0 + 1, CFG)
    assert nxt.phase is Phase.IDLE


def test_decision_timeout_cancels_at_the_deadline_not_before() -> None:
    cfg = RegistrationSettings(decision_timeout_seconds=30.0)
    state = offered(cfg)
    early, effects = step(state, Tick(), T0 + 29.999, cfg)
    assert early == state and effects == []
    late, effects = step(state, Tick(), T0 + 30.0, cfg)
    assert late.phase is Phase.IDLE
    (cancelled,) = published(effects)
    assert isinstance(cancelled, RegistrationCancelled)
    assert cancelled.reason == "decision_timeout"


def test_decision_after_the_deadline_is_refused() -> None:
    cfg = RegistrationSettings(decision_timeout_seconds=30.0)
    state, effects = step(offered(cfg), OperatorDecision(True, "Ada", "op"), T0 + 31.0, cfg)
    assert state.phase is Phase.IDLE
    assert next(e for e in effects if isinstance(e, Reply)).ok is False


def test_awaiting_person_left_cancels_but_another_track_is_ignored() -> None:
    state = offered()
    same, effects = step(state, PersonLeft(TRACK + 1), T0, CFG)
    assert same == state and effects == []
    gone, effects = step(state, PersonLeft(TRACK), T0, CFG)
    assert gone.phase is Phase.IDLE
    (cancelled,) = published(effects)
    assert isinstance(cancelled, RegistrationCancelled)
    assert cancelled.reason == "person_left"


def test_awaiting_ignores_another_unknown_and_observations() -> None:
    state = offered()
    for event in (UnknownOffered(TRACK + 1), obs(state, CFG, 5)):
        nxt, effects = step(state, event, T0 + 1, CFG)
        assert nxt == state and effects == []


def test_awaiting_stored_is_illegal() -> None:
    with pytest.raises(IllegalTransitionError):
        step(offered(), Stored(True, "p1", "Ada"), T0, CFG)


def test_second_decision_is_already_decided() -> None:
    state = approved()
    for decision in (OperatorDecision(True, "Bo", "op2"), OperatorDecision(False, None, "op3")):
        nxt, effects = step(state, decision, T0 + 1, CFG)
        assert nxt == state
        assert effects == [Reply(decision.client, False, "already decided")]


# -- capturing ---------------------------------------------------------------------------------
def test_capturing_ignores_other_tracks() -> None:
    state = approved()
    for event in (
        obs(state, CFG, 10, track=TRACK + 1),
        PersonLeft(TRACK + 1),
        UnknownOffered(TRACK + 1),
    ):
        nxt, effects = step(state, event, T0 + 1, CFG)
        assert nxt == state and effects == []


def test_captures_only_frames_min_frames_apart() -> None:
    cfg = RegistrationSettings(captures_per_pose=3, min_frames_apart=3)
    run = Run(approved(cfg), cfg)
    run.settle()
    state, counts = run.state, []
    for frame in (200, 201, 202, 203, 205, 206):
        state, _ = step(state, obs(state, cfg, frame), T0, cfg)
        counts.append(len(state.captures))
    assert counts == [1, 1, 1, 2, 2, 3]
    assert [c.pose for c in state.captures] == ["front"] * 3
    assert state.pose == "left"


@pytest.mark.parametrize(
    ("where", "usable", "embedding"),
    [
        ((6.5, 0.0), True, "auto"),  # yaw outside the tolerance box of the front (0, 0)
        ((0.0, -6.5), True, "auto"),  # pitch outside
        ((None, 0.0), True, "auto"),  # no head pose
        ((0.0, None), True, "auto"),
        ((0.0, 0.0), False, "auto"),  # fails the quality gate
        ((0.0, 0.0), True, None),  # no embedding
    ],
    ids=["yaw_out", "pitch_out", "no_yaw", "no_pitch", "unusable", "no_embedding"],
)
def test_not_held_is_not_captured_and_feedback_says_so(
    where: tuple[float | None, float | None], usable: bool, embedding: Vector | str | None
) -> None:
    run = Run(approved(), CFG)
    run.settle((0.0, 0.0))
    run.now += 1.0  # past the feedback interval
    effects = run.feed(obs(run.state, CFG, 300, at=where, usable=usable, embedding=embedding))
    assert run.state.captures == ()
    (fb,) = published(effects)
    assert isinstance(fb, RegistrationPoseFeedback)
    assert fb.held is False and fb.captured == 0


def test_nothing_is_held_before_the_front_is_steady() -> None:
    run = Run(approved(), CFG)
    effects = run.feed(obs(run.state, CFG, 10, at=(0.0, 0.0)))
    assert run.state.captures == () and run.state.front is None
    (fb,) = of(effects, RegistrationPoseFeedback)
    assert fb.held is False and fb.hint == HOLD_STILL
    assert fb.target_yaw == [-20.0, 20.0] and fb.target_pitch == [-15.0, 15.0]


def test_tolerance_box_edges_are_inside() -> None:
    run = Run(approved(), CFG)
    run.settle((0.0, 0.0))
    state, _ = step(run.state, obs(run.state, CFG, 300, at=(-6.0, 6.0)), T0, CFG)
    assert len(state.captures) == 1


def test_pose_feedback_fields_and_throttle() -> None:
    cfg = RegistrationSettings(
        feedback_interval_seconds=0.5, captures_per_pose=20, angle_timeout_seconds=15.0
    )
    run = Run(approved(cfg, now=T0 - 100), cfg, now=T0 - 100)
    run.settle((1.0, 2.0))
    state = run.state
    times = [T0, T0 + 0.2, T0 + 0.49, T0 + 0.99, T0 + 1.0, T0 + 1.2, T0 + 1.6]
    sent = []
    for i, now in enumerate(times):
        o = obs(state, cfg, 200 + 5 * i, at=(1.0, 2.0), bbox=(1.0, 2.0, 3.0, 4.0))
        state, effects = step(state, o, now, cfg)
        sent += [(now, fb) for fb in of(effects, RegistrationPoseFeedback)]
    assert [now for now, _ in sent] == [T0, T0 + 0.99, T0 + 1.6]
    now, fb = sent[0]
    assert fb.angle_name == "front" and fb.held is True and fb.hint is None
    assert (fb.yaw, fb.pitch) == (1.0, 2.0)
    # the tolerance box around the person's steady front
    assert fb.target_yaw == [-5.0, 7.0] and fb.target_pitch == [-4.0, 8.0]
    assert fb.captured == 1 and fb.needed == 20
    assert fb.track_id == TRACK and fb.bbox == [1.0, 2.0, 3.0, 4.0]
    # stream time of the frame, not the runtime's clock
    assert fb.frame_time == 200 * FRAME_DT
    # the pose deadline was set at approval (T0 - 100 + 15): nothing left, never negative
    assert fb.seconds_left == 0.0
    assert sent[-1][1].captured == 7


def test_pose_complete_announces_next_pose_and_resets_its_deadline() -> None:
    cfg = RegistrationSettings(angle_timeout_seconds=15.0, feedback_interval_seconds=5.0)
    run = Run(approved(cfg), cfg)
    run.now = T0 + 10.0
    effects = run.capture_pose()
    assert run.state.pose == "left" and run.state.pose_index == 1
    assert run.state.deadline == T0 + 10.0 + 15.0
    assert kinds(effects)[-2:] == ["RegistrationAngleComplete", "RegistrationAngleInstruction"]
    done, nxt = published(effects)[-2:]
    assert isinstance(done, RegistrationAngleComplete)
    assert (done.angle_name, done.angle_number, done.total_angles) == ("front", 1, 5)
    assert done.progress == 20.0
    assert isinstance(nxt, RegistrationAngleInstruction)
    assert (nxt.angle_name, nxt.angle_number, nxt.total_angles) == ("left", 2, 5)
    assert nxt.instruction == INSTRUCTIONS["left"] and nxt.progress == 20.0
    # the new pose gets feedback at once, although the interval has not passed
    run.frame += 10
    effects = run.feed(obs(run.state, cfg, run.frame, at=(0.0, 0.0)))
    (fb,) = of(effects, RegistrationPoseFeedback)
    assert fb.angle_name == "left" and fb.held is False


def relative_cfg(relative: bool = True) -> RegistrationSettings:
    poses = dict(RegistrationSettings().poses)
    poses["front"] = PoseWindow(yaw=[-10.0, 10.0], pitch=[-20.0, 20.0])
    return RegistrationSettings(poses=poses, relative_to_front=relative)


def test_windows_are_relative_to_the_front_baseline() -> None:
    cfg = relative_cfg()
    run = Run(approved(cfg), cfg)
    assert target(run.state, cfg, "front") == ([-10.0, 10.0], [-20.0, 20.0])
    run.capture_pose(at=(4.0, -12.0))
    assert run.state.baseline == (4.0, -12.0)
    assert target(run.state, cfg, "left") == ([-41.0, -16.0], [-27.0, 3.0])
    assert target(run.state, cfg, "up") == ([-26.0, 34.0], [3.0, 23.0])
    assert target(run.state, cfg, "down") == ([-26.0, 34.0], [-47.0, -27.0])
    # the front's own target is the tolerance box around the person's steady front
    assert target(run.state, cfg, "front") == ([-2.0, 10.0], [-18.0, -6.0])
    # left (yaw -45..-20 absolute) at yaw -18 only counts because of the baseline
    run.capture_pose(at=(-18.0, -12.0))
    run.capture_pose(at=(28.0, -12.0))
    assert run.state.pose == "up"
    # pitch 25 is inside the absolute up window [15, 35] but above the shifted [3, 23]
    run.frame += 10
    run.feed(obs(run.state, cfg, run.frame, at=(4.0, 25.0)))
    assert run.state.captured("up") == 0
    for pitch in (3.0, 23.0, 13.0):
        run.frame += 10
        run.feed(obs(run.state, cfg, run.frame, at=(4.0, pitch)))
    assert run.state.pose == "down"
    assert [c.pitch for c in run.state.captures if c.pose == "up"] == [3.0, 23.0, 13.0]


def test_windows_are_absolute_without_relative_to_front() -> None:
    cfg = relative_cfg(relative=False)
    run = Run(approved(cfg), cfg)
    run.capture_pose(at=(4.0, -12.0))
    assert target(run.state, cfg, "up") == ([-30.0, 30.0], [15.0, 35.0])


def test_all_five_poses_lead_to_validate_and_store() -> None:
    cfg = RegistrationSettings(captures_per_pose=3)
    run = Run(approved(cfg, name="Ada"), cfg)
    effects = run.capture_all()
    assert run.state.phase is Phase.VALIDATING
    assert isinstance(effects[-1], ValidateAndStore)
    job = effects[-1]
    assert job.name == "Ada"
    assert len(job.captures) == 15
    assert [c.pose for c in job.captures] == [p for p in POSE_ORDER for _ in range(3)]
    assert job.captures == run.state.captures
    for c in job.captures:
        yaw, pitch = target(run.state, cfg, c.pose)
        assert c.yaw is not None and c.pitch is not None
        assert yaw[0] <= c.yaw <= yaw[1] and pitch[0] <= c.pitch <= pitch[1]
        assert c.embedding.shape == (DIM,)


def test_the_captures_carry_the_observations_landmarks() -> None:
    """Each capture keeps the 68 landmarks of the frame it was taken from (for the liveness
    check at validation); frames without them give captures without them."""
    cfg = RegistrationSettings(captures_per_pose=3)
    run = Run(approved(cfg), cfg)
    seen: dict[int, npt.NDArray[np.float32] | None] = {}
    while run.state.phase is Phase.CAPTURING:
        run.frame += cfg.min_frames_apart
        points = None if run.frame % 2 else np.full((68, 2), run.frame, np.float32)
        seen[run.frame] = points
        run.feed(replace(obs(run.state, cfg, run.frame), landmarks=points))
    (job,) = [e for e in run.effects if isinstance(e, ValidateAndStore)]
    assert len(job.captures) == 15
    with_points = [c for c in job.captures if c.landmarks is not None]
    assert 0 < len(with_points) < 15  # both kinds were captured
    for c in job.captures:
        frames = [f for f, p in seen.items() if p is c.landmarks]
        assert c.landmarks is None or len(frames) == 1


def test_progress_goes_from_0_to_100() -> None:
    run = Run(approved(), CFG)
    run.capture_all()
    instructions = of(run.effects, RegistrationAngleInstruction)
    completes = of(run.effects, RegistrationAngleComplete)
    assert [e.progress for e in instructions] == [20.0, 40.0, 60.0, 80.0]
    assert [e.progress for e in completes] == [20.0, 40.0, 60.0, 80.0, 100.0]
    assert [e.angle_number for e in completes] == [1, 2, 3, 4, 5]
    assert progress(State(), CFG) == 0.0 and progress(run.state, CFG) == 100.0


@pytest.mark.parametrize("poses_done", [0, 1, 4])
def test_angle_timeout_fails_at_the_pose_deadline(poses_done: int) -> None:
    cfg = RegistrationSettings(angle_timeout_seconds=15.0)
    run = Run(approved(cfg), cfg)
    for _ in range(poses_done):
        run.now += 5.0
        run.capture_pose()
    pose = POSE_ORDER[poses_done]
    assert run.state.pose == pose and run.state.deadline == run.now + 15.0
    before = run.state
    nxt, effects = step(before, Tick(), run.now + 14.99, cfg)
    assert nxt == before and effects == []
    nxt, effects = step(before, Tick(), run.now + 15.0, cfg)
    assert nxt.phase is Phase.IDLE
    (failed,) = published(effects)
    assert isinstance(failed, RegistrationFailed)
    assert failed.reason == f"angle_timeout_{pose}"
    assert pose in failed.message


def test_capturing_person_left_cancels() -> None:
    run = Run(approved(), CFG)
    run.capture_pose()
    state, effects = step(run.state, PersonLeft(TRACK), T0, CFG)
    assert state.phase is Phase.IDLE and state.captures == ()
    (cancelled,) = published(effects)
    assert isinstance(cancelled, RegistrationCancelled)
    assert cancelled.reason == "person_left"


def test_capturing_stored_is_illegal() -> None:
    with pytest.raises(IllegalTransitionError):
        step(approved(), Stored(True, "p1", "Ada"), T0, CFG)


# -- validating --------------------------------------------------------------------------------
def test_stored_ok_completes() -> None:
    state, effects = step(validating(), Stored(True, "p-1", "Ada", message="done"), T0, CFG)
    assert state.phase is Phase.IDLE and state.captures == ()
    (complete,) = published(effects)
    assert complete == RegistrationComplete(
        person_id="p-1", name="Ada", success=True, message="done", track_id=TRACK
    )
    _, effects = step(validating(), Stored(True, "p-1", "Ada"), T0, CFG)
    assert published(effects)[0].message == "Ada registered"


def test_stored_already_registered_fails_naming_the_person() -> None:
    refusal = Stored(
        False,
        person_id="p-9",
        name="Bo",
        reason="already_registered",
        message="Already registered as Bo (p-9)",
    )
    state, effects = step(validating(), refusal, T0, CFG)
    assert state.phase is Phase.IDLE
    (failed,) = published(effects)
    assert isinstance(failed, RegistrationFailed)
    assert failed.reason == "already_registered"
    assert (failed.person_id, failed.name) == ("p-9", "Bo")
    assert failed.message == "Already registered as Bo (p-9)"


def test_stored_inconsistent_fails_without_a_person() -> None:
    state, effects = step(validating(), Stored(False, reason="inconsistent_identity"), T0, CFG)
    assert state.phase is Phase.IDLE
    (failed,) = published(effects)
    assert isinstance(failed, RegistrationFailed)
    assert failed.reason == "inconsistent_identity" == failed.message
    assert failed.person_id is None and failed.name is None


def test_validating_ignores_frames_time_and_departures() -> None:
    state = validating()
    for event in (
        obs(state, CFG, 10_000),
        Tick(),
        PersonLeft(TRACK),
        UnknownOffered(TRACK + 1),
    ):
        nxt, effects = step(state, event, T0 + 10_000, CFG)
        assert nxt == state and effects == []
    nxt, effects = step(state, OperatorDecision(True, "Bo", "op"), T0, CFG)
    assert nxt == state and effects == [Reply("op", False, "already decided")]


# -- reset and transient phases ----------------------------------------------------------------
@pytest.mark.parametrize("phase", ["awaiting", "capturing", "validating"])
def test_reset_cancels_a_registration_in_progress(phase: str) -> None:
    state = {"awaiting": offered, "capturing": approved, "validating": validating}[phase]()
    nxt, effects = step(state, Reset(), T0, CFG)
    assert nxt == State()
    assert kinds(effects) == ["RegistrationCancelled", "SystemReady"]
    cancelled, ready = published(effects)
    assert isinstance(cancelled, RegistrationCancelled) and cancelled.reason == "reset"
    assert isinstance(ready, SystemReady)


@pytest.mark.parametrize("phase", TRANSIENT)
def test_transient_phases_are_never_stepped(phase: Phase) -> None:
    with pytest.raises(IllegalTransitionError, match="transient"):
        step(State(phase=phase), Tick(), T0, CFG)


# -- consistency of the captures ---------------------------------------------------------------
def captures(vectors: list[Vector]) -> tuple[PoseSample, ...]:
    poses = [p for p in POSE_ORDER for _ in range(3)]
    return tuple(PoseSample(p, v, 0.0, 0.0) for p, v in zip(poses, vectors, strict=True))


def test_consistent_when_all_captures_are_one_person() -> None:
    ok, worst = consistent(captures([unit(1, jitter=i, noise=0.05) for i in range(1, 16)]), 0.45)
    assert ok and worst > 0.9


def test_inconsistent_with_one_capture_of_another_person() -> None:
    vectors = [axis(0)] * 15
    vectors[13] = axis(1)  # a "down" capture of someone else
    ok, worst = consistent(captures(vectors), 0.45)
    assert not ok and worst == pytest.approx(0.0, abs=1e-6)


def test_inconsistent_when_a_front_capture_is_another_person() -> None:
    vectors = [axis(0)] * 15
    vectors[2] = axis(1)  # front mean is (2 e0 + e1) / sqrt(5): e1 scores 1 / sqrt(5) = 0.447
    ok, worst = consistent(captures(vectors), 0.45)
    assert not ok and worst == pytest.approx(1 / np.sqrt(5), abs=1e-6)


# -- a whole registration ----------------------------------------------------------------------
def test_happy_path_event_sequence() -> None:
    cfg = RegistrationSettings()
    run = Run(State(), cfg)
    run.feed(UnknownOffered(TRACK))
    run.feed(OperatorDecision(True, "Ada", "op"))
    run.capture_all()  # the clock stands still: one feedback per pose
    job = run.effects[-1]
    assert isinstance(job, ValidateAndStore)
    run.feed(Stored(True, "p-1", "Ada"))
    per_pose = ["RegistrationPoseFeedback", "RegistrationAngleComplete"]
    expected = ["RegistrationWaiting", "Reply", "RegistrationApproved", "RegistrationStart"]
    expected += ["RegistrationAngleInstruction"]
    for _ in POSE_ORDER[:-1]:
        expected += [*per_pose, "RegistrationAngleInstruction"]
    expected += [*per_pose, "ValidateAndStore", "RegistrationComplete"]
    assert kinds(run.effects) == expected
    assert run.state == State()
    assert [e.angle_name for e in of(run.effects, RegistrationAngleInstruction)] == list(POSE_ORDER)


# -- the decision's countdown and the operator typing ------------------------------------------
def test_typing_extends_the_decision_deadline_once() -> None:
    cfg = RegistrationSettings(decision_timeout_seconds=30.0)
    state = offered(cfg)
    state, effects = step(state, Typing("op"), T0 + 20.0, cfg)
    assert state.phase is Phase.AWAITING_DECISION and state.extended is True
    assert state.deadline == T0 + 50.0
    assert effects[0] == Reply("op", True, "extended")
    (waiting,) = published(effects)
    assert isinstance(waiting, RegistrationWaiting)
    assert waiting.extended is True and waiting.track_id == TRACK
    assert waiting.seconds_left == 30.0 and waiting.timeout_seconds == 30.0
    # once per question: more typing changes nothing
    again, effects = step(state, Typing("op2"), T0 + 40.0, cfg)
    assert again == state
    assert effects == [Reply("op2", False, "already extended")]
    # the extended deadline holds
    assert step(state, Tick(), T0 + 49.9, cfg)[0] == state
    late, effects = step(state, Tick(), T0 + 50.0, cfg)
    assert late.phase is Phase.IDLE
    (cancelled,) = published(effects)
    assert isinstance(cancelled, RegistrationCancelled) and cancelled.reason == "decision_timeout"


def test_typing_never_shortens_the_deadline() -> None:
    cfg = RegistrationSettings(decision_timeout_seconds=30.0)
    state = replace(offered(cfg), deadline=T0 + 100.0)  # (a deadline further than a full turn)
    state, effects = step(state, Typing("op"), T0 + 1.0, cfg)
    assert state.deadline == T0 + 100.0 and state.extended is True
    (waiting,) = published(effects)
    assert isinstance(waiting, RegistrationWaiting) and waiting.seconds_left == 99.0


def test_the_extension_is_per_question() -> None:
    cfg = RegistrationSettings(decline_cooldown_seconds=0.0)
    state, _ = step(offered(cfg), Typing("op"), T0 + 1.0, cfg)
    state, _ = step(state, OperatorDecision(False, None, "op"), T0 + 2.0, cfg)
    assert state.extended is False
    state, _ = step(state, UnknownOffered(TRACK + 1), T0 + 3.0, cfg)
    assert state.extended is False
    _, effects = step(state, Typing("op"), T0 + 4.0, cfg)
    assert effects[0] == Reply("op", True, "extended")
    # and it ends with the question when the capture starts
    capturing, _ = step(state, Typing("op"), T0 + 4.0, cfg)
    capturing, _ = step(capturing, OperatorDecision(True, "Ada", "op"), T0 + 5.0, cfg)
    assert capturing.phase is Phase.CAPTURING and capturing.extended is False


def test_typing_after_the_deadline_is_too_late() -> None:
    cfg = RegistrationSettings(decision_timeout_seconds=30.0)
    state, effects = step(offered(cfg), Typing("op"), T0 + 30.0, cfg)
    assert state.phase is Phase.IDLE
    assert effects[0] == Reply("op", False, "too late to extend")
    (cancelled,) = published(effects)
    assert isinstance(cancelled, RegistrationCancelled) and cancelled.reason == "decision_timeout"


@pytest.mark.parametrize("phase", ["idle", "capturing", "validating"])
def test_typing_without_a_question_is_refused(phase: str) -> None:
    state = State() if phase == "idle" else approved() if phase == "capturing" else validating()
    nxt, effects = step(state, Typing("op"), T0 + 1.0, CFG)
    assert nxt == state
    assert effects == [Reply("op", False, "no registration is waiting for a decision")]


# -- the operator asks to register a face --------------------------------------------------------
def test_offer_in_idle_starts_capturing_like_an_approval() -> None:
    cfg = RegistrationSettings(angle_timeout_seconds=9.0)
    state, effects = step(State(), Offer(TRACK + 2, "Bo", "op"), T0, cfg)
    assert state.phase is Phase.CAPTURING and state.pose == "front"
    assert state.track_id == TRACK + 2 and state.name == "Bo"
    assert state.deadline == T0 + 9.0
    assert kinds(effects) == [
        "Reply",
        "RegistrationApproved",
        "RegistrationStart",
        "RegistrationAngleInstruction",
    ]
    assert effects[0] == Reply("op", True, "approved")
    (approved_ev,) = of(effects, RegistrationApproved)
    assert approved_ev.track_id == TRACK + 2 and approved_ev.name == "Bo"
    run = Run(state, cfg)
    run.state = replace(run.state, track_id=TRACK)  # the Run's frames are TRACK's
    run.capture_all()
    assert run.state.phase is Phase.VALIDATING


def test_offer_after_a_decline_starts_capturing_and_forgets_the_decline() -> None:
    cfg = RegistrationSettings(decline_cooldown_seconds=60.0)
    state, _ = step(offered(cfg), OperatorDecision(False, None, "op"), T0, cfg)
    state, _ = step(state, UnknownOffered(TRACK + 1), T0, cfg)
    state, _ = step(state, OperatorDecision(False, None, "op"), T0, cfg)
    assert {t for t, _ in state.declined} == {TRACK, TRACK + 1}
    state, effects = step(state, Offer(TRACK, None, "op"), T0 + 1.0, cfg)
    assert state.phase is Phase.CAPTURING and state.track_id == TRACK
    assert effects[0] == Reply("op", True, "approved")
    assert [t for t, _ in state.declined] == [TRACK + 1]
    # once this registration ends, the face may be asked about again
    state, _ = step(state, PersonLeft(TRACK), T0 + 2.0, cfg)
    state, _ = step(state, UnknownOffered(TRACK), T0 + 3.0, cfg)
    assert state.phase is Phase.AWAITING_DECISION and state.track_id == TRACK


def test_offer_of_the_face_in_question_is_an_approval() -> None:
    for now in (T0 + 1.0, T0 + 31.0):  # even past the question's deadline: a request of its own
        state, effects = step(offered(), Offer(TRACK, "Ada", "op"), now, CFG)
        assert state.phase is Phase.CAPTURING and state.name == "Ada"
        assert state.track_id == TRACK and state.deadline == now + CFG.angle_timeout_seconds
        assert kinds(effects) == kinds(
            step(offered(), OperatorDecision(True, "Ada", "op"), T0, CFG)[1]
        )


def test_offer_of_another_face_while_one_is_in_question_is_refused() -> None:
    state = offered()
    nxt, effects = step(state, Offer(TRACK + 1, None, "op"), T0 + 1.0, CFG)
    assert nxt == state
    assert effects == [Reply("op", False, "another face is waiting for a decision")]


@pytest.mark.parametrize("phase", ["capturing", "validating"])
def test_offer_during_a_registration_is_refused(phase: str) -> None:
    state = {"capturing": approved, "validating": validating}[phase]()
    for track in (TRACK, TRACK + 1):
        nxt, effects = step(state, Offer(track, None, "op"), T0 + 1.0, CFG)
        assert nxt == state
        assert effects == [Reply("op", False, "a registration is under way")]


# -- countdowns during the capture --------------------------------------------------------------
def test_instructions_carry_the_pose_timeout() -> None:
    cfg = RegistrationSettings(angle_timeout_seconds=12.0)
    run = Run(approved(cfg), cfg)
    run.capture_all()
    instructions = of(run.effects, RegistrationAngleInstruction)
    assert len(instructions) == 4
    assert {i.timeout_seconds for i in instructions} == {12.0}
    _, effects = step(offered(cfg), OperatorDecision(True, None, "op"), T0, cfg)
    (first,) = of(effects, RegistrationAngleInstruction)
    assert first.timeout_seconds == 12.0


def test_pose_feedback_counts_down_to_the_pose_deadline() -> None:
    cfg = RegistrationSettings(angle_timeout_seconds=15.0, feedback_interval_seconds=0.0)
    run = Run(approved(cfg), cfg)
    seconds = []
    for now in (T0, T0 + 2.04, T0 + 14.96, T0 + 20.0):
        run.now = now
        (fb,) = of(run.look((0.0, 0.0), FRAME_DT), RegistrationPoseFeedback)
        seconds.append(fb.seconds_left)
    assert seconds == [15.0, 13.0, 0.0, 0.0]


def test_feedback_frame_time_is_the_observations_stream_time() -> None:
    run = Run(approved(), CFG, now=T0 + 500.0)
    (fb,) = of(run.feed(obs(run.state, CFG, 10, t=12.34)), RegistrationPoseFeedback)
    assert fb.frame_time == 12.34
    run.now += 1.0
    (fb,) = of(run.feed(obs(run.state, CFG, 11, t=None)), RegistrationPoseFeedback)
    assert fb.frame_time is None  # not the runtime's clock


# -- the person's own front --------------------------------------------------------------------
def test_a_front_that_reads_yaw_13_passes_and_sets_the_baseline() -> None:
    """The natural straight ahead of some faces reads 13 deg of yaw: they register all the same,
    with the other poses measured from their own front."""
    cfg = RegistrationSettings()
    run = Run(approved(cfg), cfg)
    run.capture_pose(at=(13.0, 2.0))
    assert run.state.pose == "left"
    fronts = [c for c in run.state.captures if c.pose == "front"]
    assert [(c.yaw, c.pitch) for c in fronts] == [(13.0, 2.0)] * cfg.captures_per_pose
    assert run.state.front == (13.0, 2.0) and run.state.baseline == (13.0, 2.0)
    assert target(run.state, cfg, "left") == ([-32.0, -7.0], [-13.0, 17.0])
    run.capture_all()
    assert run.state.phase is Phase.VALIDATING


def test_the_old_absolute_front_window_would_have_refused_yaw_13() -> None:
    poses = dict(RegistrationSettings().poses)
    poses["front"] = PoseWindow(yaw=[-10.0, 10.0], pitch=[-10.0, 10.0])
    cfg = RegistrationSettings(poses=poses, feedback_interval_seconds=0.0)
    run = Run(approved(cfg), cfg)
    effects = run.look((13.0, 2.0), 3.0)
    assert run.state.captures == () and run.state.front is None
    assert of(effects, RegistrationPoseFeedback)[-1].hint == "turn a little to your left"


@pytest.mark.parametrize(
    ("at", "hint"),
    [
        ((30.0, 0.0), "turn a little to your left"),  # turned to their own right
        ((-30.0, 0.0), "turn a little to your right"),
        ((0.0, 30.0), "tilt your head down a little"),  # looking up
        ((0.0, -30.0), "tilt your head up a little"),
        ((40.0, -30.0), "turn a little to your left"),  # the axis furthest out first
    ],
)
def test_a_steady_front_outside_the_front_window_gets_a_hint_and_no_capture(
    at: tuple[float, float], hint: str
) -> None:
    cfg = RegistrationSettings(feedback_interval_seconds=0.0)
    run = Run(approved(cfg), cfg)
    effects = run.look(at, 3.0)
    feedback = of(effects, RegistrationPoseFeedback)
    assert run.state.captures == () and run.state.front is None
    # held still for the settle time: told which way to move
    assert feedback[-1].hint == hint and feedback[-1].held is False
    assert feedback[0].hint == HOLD_STILL  # before that, to hold still
    # the target shown is poses.front, where their front must come
    assert feedback[-1].target_yaw == [-20.0, 20.0] and feedback[-1].target_pitch == [-15.0, 15.0]


def test_a_front_brought_into_the_window_is_then_captured() -> None:
    run = Run(approved(), CFG)
    run.look((30.0, 0.0), 2.0)
    assert run.state.captures == ()
    run.look((20.0, 0.0), 0.5)  # on the way: not steady over the settle time yet
    assert run.state.captures == () and run.state.front is None
    run.capture_pose(at=(18.0, 0.0))
    assert run.state.pose == "left" and run.state.baseline == (18.0, 0.0)


def test_an_unsteady_front_is_told_to_hold_still() -> None:
    cfg = RegistrationSettings(feedback_interval_seconds=0.0)
    run = Run(approved(cfg), cfg)
    effects: list[Effect] = []
    for i in range(40):  # yaw swinging 10 deg to and fro: a spread above 8 deg
        effects += run.look((-5.0 if i % 2 else 5.0, 0.0), FRAME_DT)
    assert run.state.captures == () and run.state.front is None
    assert {fb.hint for fb in of(effects, RegistrationPoseFeedback)} == {HOLD_STILL}


def test_steadiness_is_the_spread_of_yaw_and_of_pitch() -> None:
    cfg = RegistrationSettings(front_steadiness_degrees=8.0)
    for spread, steady in ((8.0, True), (8.5, False)):
        for axis_ in (0, 1):
            run = Run(approved(cfg), cfg)
            for i in range(20):
                at = [1.0, 1.0]
                at[axis_] += spread if i % 2 else 0.0
                run.look((at[0], at[1]), FRAME_DT, embedding=None)
            assert (run.state.front is not None) is steady, (spread, axis_)


def test_the_front_is_the_median_of_the_settle_time() -> None:
    cfg = RegistrationSettings(front_settle_seconds=1.0)
    run = Run(approved(cfg), cfg)
    for yaw in (10.0, 11.0, 16.0, 12.0, 10.0, 11.0, 12.0, 16.0, 11.0, 10.0, 11.0):
        run.look((yaw, -3.0), FRAME_DT, embedding=None)
    assert run.state.front == (11.0, -3.0)
    assert target(run.state, cfg, "front") == ([5.0, 17.0], [-9.0, 3.0])
    # captures only from frames within front_tolerance_degrees of it (the next frames, which
    # leave the median where it is)
    run.frame += 1
    run.feed(obs(run.state, cfg, run.frame, at=(11.0, 3.5)))  # pitch 6.5 away: not taken
    assert run.state.captures == () and run.state.front == (11.0, -3.0)
    run.frame += 1
    run.feed(obs(run.state, cfg, run.frame, at=(17.0, 3.0)))  # 6 away in both: taken
    assert [(c.yaw, c.pitch) for c in run.state.captures] == [(17.0, 3.0)]


def test_steadiness_needs_the_whole_settle_time_of_stream_time() -> None:
    cfg = RegistrationSettings(front_settle_seconds=1.0)
    state = approved(cfg)

    def feed(state: State, frame: int, t: float | None, now: float = T0) -> State:
        return step(state, obs(state, cfg, frame, at=(3.0, 4.0), t=t), now, cfg)[0]

    for frame, t in enumerate((50.0, 50.25, 50.5, 50.75)):
        state = feed(state, frame, t)
    assert state.front is None and state.captures == ()
    state = feed(state, 10, 51.0)  # one second of stream time
    assert state.front == (3.0, 4.0) and len(state.captures) == 1


def test_steadiness_goes_by_stream_time_not_the_runtime_clock() -> None:
    cfg = RegistrationSettings(front_settle_seconds=1.0)
    state = approved(cfg)
    for i in range(30):  # the runtime's clock runs, the stream stands still (a frozen source)
        state, _ = step(state, obs(state, cfg, i, at=(0.0, 0.0), t=7.0), T0 + i, cfg)
    assert state.front is None and state.captures == ()
    state = approved(cfg)
    for i in range(12):  # the stream runs while the runtime's clock stands still
        state, _ = step(state, obs(state, cfg, i, at=(0.0, 0.0), t=7.0 + i * 0.1), T0, cfg)
    assert state.front == (0.0, 0.0)


def test_without_stream_time_the_runtime_clock_measures_steadiness() -> None:
    cfg = RegistrationSettings(front_settle_seconds=1.0)
    state = approved(cfg)
    for i in range(12):
        state, _ = step(state, obs(state, cfg, i, at=(0.0, 0.0), t=None), T0 + i * 0.1, cfg)
    assert state.front == (0.0, 0.0)


def test_a_gap_or_a_stream_going_back_restarts_the_settle_time() -> None:
    cfg = RegistrationSettings(front_settle_seconds=1.0)
    run = Run(approved(cfg), cfg)

    def at_time(state: State, frame: int, t: float) -> State:
        return step(state, obs(state, cfg, frame, at=(0.0, 0.0), t=t, embedding=None), T0, cfg)[0]

    state = run.state
    state = at_time(state, 1, 10.0)
    state = at_time(state, 2, 11.5)  # 1.5 s without a reading: no proof of holding still
    assert state.front is None and len(state.recent) == 1
    state = at_time(state, 3, 12.0)
    state = at_time(state, 4, 12.5)
    assert state.front == (0.0, 0.0)
    state = replace(state, front=None)
    state = at_time(state, 5, 3.0)  # a looped file: back to the start
    assert state.front is None and state.recent == ((3.0, 0.0, 0.0),)


def test_the_front_readings_kept_are_bounded() -> None:
    cfg = RegistrationSettings(front_settle_seconds=1.0)
    state = approved(cfg)
    for i in range(RECENT_MAX + 100):  # 1000 fps
        state, _ = step(
            state, obs(state, cfg, i, at=(0.0, 0.0), t=i / 1000, embedding=None), T0, cfg
        )
    assert len(state.recent) == RECENT_MAX
    assert state.front == (0.0, 0.0)  # a full buffer of still readings is steady


def test_front_reading_directly() -> None:
    cfg = RegistrationSettings(front_settle_seconds=1.0, front_steadiness_degrees=8.0)
    assert front_reading((), 5.0, cfg) is None
    still = ((4.0, 1.0, 2.0), (4.5, 3.0, 2.0), (5.0, 2.0, 9.0))
    assert front_reading(still, 5.0, cfg) == (2.0, 2.0)
    assert front_reading(still[1:], 5.0, cfg) is None  # covers only 0.5 s
    assert front_reading((*still, (5.0, 10.0, 2.0)), 5.0, cfg) is None  # yaw spread 9


# -- up and down for a cooperative person ------------------------------------------------------
def test_up_and_down_accept_the_turn_people_add_when_they_tilt() -> None:
    cfg = RegistrationSettings()
    run = Run(approved(cfg), cfg)
    run.capture_pose(at=(0.0, 0.0))
    run.capture_pose(at=(-30.0, 0.0))
    run.capture_pose(at=(30.0, 0.0))
    assert run.state.pose == "up"
    run.capture_pose(at=(27.0, 25.0))  # looking straight up, reading 27 deg of yaw
    assert run.state.pose == "down"
    run.capture_pose(at=(-27.0, -25.0))
    assert run.state.phase is Phase.VALIDATING
    assert INSTRUCTIONS["up"] == "Tilt your head slowly up, keeping your face towards the camera"
    assert (
        INSTRUCTIONS["down"] == "Tilt your head slowly down, keeping your face towards the camera"
    )
    assert INSTRUCTIONS["left"] == "Turn your head slowly to your left"
    assert INSTRUCTIONS["right"] == "Turn your head slowly to your right"


# -- hints for the other poses -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("pose", "at", "hint"),
    [
        ("left", (-10.0, 0.0), "turn further to your left"),
        ("left", (-50.0, 0.0), "turn back a little to your right"),
        ("right", (10.0, 0.0), "turn further to your right"),
        ("right", (50.0, 0.0), "turn back a little to your left"),
        ("up", (0.0, 5.0), "tilt your head further up"),
        ("up", (0.0, 40.0), "tilt your head back down a little"),
        ("down", (0.0, -5.0), "tilt your head further down"),
        ("down", (0.0, -40.0), "tilt your head back up a little"),
        ("left", (-30.0, 20.0), "tilt your head down a little"),  # across the pose's own axis
        ("up", (35.0, 25.0), "turn a little to your left"),
        ("down", (-35.0, -25.0), "turn a little to your right"),
        ("left", (-30.0, 0.0), None),  # inside
        ("up", (None, 25.0), None),  # no reading
    ],
)
def test_pose_feedback_says_which_way_to_move(
    pose: str, at: tuple[float | None, float | None], hint: str | None
) -> None:
    cfg = RegistrationSettings(feedback_interval_seconds=0.0)
    run = Run(approved(cfg), cfg)
    while run.state.pose != pose:  # front (0, 0): the windows are the defaults
        run.capture_pose(at=(0.0, 0.0) if run.state.pose == "front" else None)
    run.frame += 10
    (fb,) = of(run.feed(obs(run.state, cfg, run.frame, at=at)), RegistrationPoseFeedback)
    assert fb.hint == hint
    assert fb.held is (hint is None and at[0] is not None)


def test_direction_hint_follows_the_windows_given() -> None:
    assert direction_hint("left", -14.0, 3.0, [-32.0, -7.0], [-13.0, 17.0]) is None
    assert direction_hint("left", -5.0, 3.0, [-32.0, -7.0], [-13.0, 17.0]) == (
        "turn further to your left"
    )
    assert direction_hint("front", 0.0, None, [-6.0, 6.0], [-6.0, 6.0]) is None


def test_no_head_pose_in_the_front_gives_no_hint() -> None:
    run = Run(approved(), CFG)
    (fb,) = of(run.feed(obs(run.state, CFG, 10, at=(None, None))), RegistrationPoseFeedback)
    assert fb.hint is None and fb.held is False


# -- what to do next ---------------------------------------------------------------------------
def ending(effects: list[Effect]) -> RegistrationFailed | RegistrationCancelled:
    (ev,) = [
        e for e in published(effects) if isinstance(e, RegistrationFailed | RegistrationCancelled)
    ]
    return ev


@pytest.mark.parametrize("pose", POSE_ORDER)
def test_a_pose_timeout_says_what_to_do(pose: str) -> None:
    run = Run(approved(), CFG)
    while run.state.pose != pose:
        run.capture_pose()
    _, effects = step(run.state, Tick(), run.now + CFG.angle_timeout_seconds, CFG)
    failed = ending(effects)
    assert failed.reason == f"angle_timeout_{pose}" and failed.track_id == TRACK
    assert failed.next_step.endswith(
        "Ask them to face the camera and click Register on their face to try again"
    )
    assert failed.next_step.startswith(POSE_TIPS[pose])


def test_every_cancellation_names_the_face_and_the_next_step() -> None:
    cfg = RegistrationSettings(decision_timeout_seconds=30.0)
    cases = {
        "declined": step(offered(cfg), OperatorDecision(False, None, "op"), T0, cfg)[1],
        "decision_timeout": step(offered(cfg), Tick(), T0 + 30.0, cfg)[1],
        "person_left": step(offered(cfg), PersonLeft(TRACK), T0, cfg)[1],
        "reset": step(offered(cfg), Reset(), T0, cfg)[1],
    }
    cases["late"] = step(offered(cfg), OperatorDecision(True, None, "op"), T0 + 31.0, cfg)[1]
    cases["left_capturing"] = step(approved(cfg), PersonLeft(TRACK), T0, cfg)[1]
    cases["reset_validating"] = step(validating(cfg), Reset(), T0, cfg)[1]
    steps = {}
    for case, effects in cases.items():
        ev = ending(effects)
        assert isinstance(ev, RegistrationCancelled)
        assert ev.track_id == TRACK, case
        assert ev.next_step == next_step(ev.reason), case
        steps[ev.reason] = ev.next_step
    assert steps["declined"] == "Click Register on their face if you change your mind"
    assert steps["decision_timeout"] == "Click Register on their face to register them"
    assert steps["person_left"] == "Click Register on their face when they are back in view"
    assert steps["reset"] == "Click Register on a face to start a registration"


@pytest.mark.parametrize(
    ("stored", "expected"),
    [
        (
            Stored(False, "p-9", "Bo", reason="already_registered"),
            "They are already registered as Bo: nothing to do",
        ),
        (
            Stored(False, reason="inconsistent_identity"),
            "Make sure only the person registering faces the camera, then click Register on"
            " their face to try again",
        ),
        (
            Stored(False, reason="store_error", message="disk full"),
            "Nothing was stored: check the server's log and disk, then click Register on their"
            " face to try again",
        ),
        (
            Stored(False, reason="not_live", message="a photo"),
            "Only a live person standing in front of the camera can be registered, not a photo"
            " or a screen: ask the person to come to the camera themselves, then click Register"
            " on their face",
        ),
        (Stored(False, reason="something else"), "Click Register on their face to try again"),
    ],
    ids=["already_registered", "inconsistent_identity", "store_error", "not_live", "other"],
)
def test_every_refusal_names_the_face_and_the_next_step(stored: Stored, expected: str) -> None:
    _, effects = step(validating(), stored, T0, CFG)
    failed = ending(effects)
    assert isinstance(failed, RegistrationFailed)
    assert failed.track_id == TRACK and failed.next_step == expected


def test_complete_names_the_registered_face() -> None:
    state = replace(validating(), track_id=42)
    _, effects = step(state, Stored(True, "p-1", "Ada"), T0, CFG)
    (complete,) = published(effects)
    assert isinstance(complete, RegistrationComplete) and complete.track_id == 42


# -- stateful model test -----------------------------------------------------------------------
TRACKS = (1, 2, 3)
IN_PROGRESS = (Phase.AWAITING_DECISION, Phase.CAPTURING, Phase.VALIDATING)
REACHED: Counter[str] = Counter()  # how the model runs ended, to check their coverage


class RegistrationModel(RuleBasedStateMachine):
    """A model runtime around `step`: a fake clock, frame counter and store."""

    def __init__(self) -> None:
        super().__init__()
        self.cfg = CFG
        self.state = State()
        self.now = T0
        self.frame = 0
        self.stream_time = True  # observations carry a frame_time (else the machine uses now)
        self.store: list[str] = []
        self.store_seen = 0
        self.pending: ValidateAndStore | None = None
        self.reg_track: int | None = None
        self.approved = (
            False  # an approving OperatorDecision (or Offer) accepted in this registration
        )
        self.name: str | None = None
        self.jobs = 0  # ValidateAndStore effects in this registration
        self.declined: dict[int, float] = {}
        self.last_progress = 0.0
        # The registering face's usable readings (time, yaw, pitch) during the front pose.
        self.front_trace: list[tuple[float, float, float]] = []

    @initialize(
        per_pose=st.integers(1, 3),
        apart=st.integers(1, 3),
        interval=st.sampled_from([0.0, 0.2, 1.0]),
        relative=st.booleans(),
        cooldown=st.sampled_from([0.0, 5.0, 60.0]),
        settle=st.sampled_from([0.3, 1.0]),
        stream_time=st.booleans(),
        start=st.sampled_from(["idle", "awaiting", "capturing", "validating"]),
        held=st.integers(0, 12),
    )
    def configure(
        self,
        *,
        per_pose: int,
        apart: int,
        interval: float,
        relative: bool,
        cooldown: float,
        settle: float = 1.0,
        stream_time: bool = True,
        start: str = "idle",
        held: int = 0,
    ) -> None:
        self.cfg = RegistrationSettings(
            captures_per_pose=per_pose,
            min_frames_apart=apart,
            feedback_interval_seconds=interval,
            relative_to_front=relative,
            decline_cooldown_seconds=cooldown,
            decision_timeout_seconds=30.0,
            angle_timeout_seconds=15.0,
            front_settle_seconds=settle,
        )
        self.stream_time = stream_time
        # Runs also start part way (through the rules' own code, so every check applies):
        # reaching the late phases from idle by chance alone is rare.
        if start != "idle":
            self.offer(track=TRACKS[0])
        if start in ("capturing", "validating"):
            self.decide(register=True, name="Ada" if held % 2 else None, client="a")
            self._hold(held if start == "capturing" else 200, 0.5, 0.1)

    # -- driving the machine -------------------------------------------------------------------
    def _step(self, event: Input) -> tuple[State, list[Effect]]:
        prev = self.state
        self.state, effects = step(prev, event, self.now, self.cfg)
        events = published(effects)
        if prev.phase is Phase.IDLE and self.state.phase is not Phase.IDLE:
            self.reg_track, self.approved, self.jobs = self.state.track_id, False, 0
            self.name, self.last_progress = None, 0.0
        for ev in events:
            if isinstance(ev, RegistrationAngleInstruction | RegistrationAngleComplete):
                assert 0.0 <= ev.progress <= 100.0
                assert ev.progress >= self.last_progress
                self.last_progress = ev.progress
            if isinstance(ev, RegistrationAngleInstruction):
                assert ev.timeout_seconds == self.cfg.angle_timeout_seconds
            if isinstance(ev, RegistrationFailed | RegistrationCancelled | RegistrationComplete):
                assert ev.track_id is not None and ev.track_id == prev.track_id
            if isinstance(ev, RegistrationFailed | RegistrationCancelled):
                assert ev.next_step  # what to do now, whatever the reason
            if isinstance(ev, RegistrationWaiting):
                assert self.state.phase is Phase.AWAITING_DECISION
                assert ev.extended is self.state.extended
                assert ev.seconds_left == pytest.approx(self.state.deadline - self.now)
            if isinstance(ev, RegistrationPoseFeedback):
                assert ev.seconds_left is not None and ev.seconds_left >= 0.0
        for job in [e for e in effects if isinstance(e, ValidateAndStore)]:
            assert self.approved, "captures sent for storage without an approval"
            assert prev.phase is Phase.CAPTURING and self.state.phase is Phase.VALIDATING
            self.jobs += 1
            assert self.jobs == 1, "ValidateAndStore twice in one registration"
            per_pose = Counter(c.pose for c in job.captures)
            assert per_pose == dict.fromkeys(POSE_ORDER, self.cfg.captures_per_pose)
            assert [c.pose for c in job.captures] == sorted(
                (c.pose for c in job.captures), key=POSE_ORDER.index
            )
            assert job.name == self.name
            assert self.last_progress == 100.0
            self.pending = job
        completes = [ev for ev in events if isinstance(ev, RegistrationComplete)]
        assert len(completes) <= 1
        assert (len(self.store) != self.store_seen) == bool(completes)
        if completes:
            assert prev.phase is Phase.VALIDATING and self.state.phase is Phase.IDLE
            assert completes[0].person_id == self.store[-1]
        self.store_seen = len(self.store)
        if self.state.phase is Phase.IDLE:
            self.reg_track, self.pending, self.approved = None, None, False
        if self.state.pose != "front":
            self.front_trace = []
        return prev, effects

    @rule(track=st.sampled_from(TRACKS))
    def offer(self, track: int) -> None:
        prev, effects = self._step(UnknownOffered(track))
        if prev.phase is Phase.IDLE:
            cooling = self.declined.get(track, -1.0) > self.now
            expected = Phase.IDLE if cooling else Phase.AWAITING_DECISION
            assert self.state.phase is expected
            if not cooling:
                assert self.state.track_id == track
                assert self.state.deadline == self.now + self.cfg.decision_timeout_seconds
                (waiting,) = published(effects)
                assert isinstance(waiting, RegistrationWaiting) and not waiting.extended
                assert waiting.seconds_left == self.cfg.decision_timeout_seconds
            else:
                assert effects == []
        else:
            assert self.state == prev and effects == []  # one registration at a time

    @rule(
        register=st.booleans(),
        name=st.none() | st.sampled_from(["Ada", "Bo"]),
        client=st.sampled_from(["a", "b"]),
    )
    def decide(self, register: bool, name: str | None, client: str) -> None:
        prev, effects = self._step(OperatorDecision(register, name, client))
        replies = [e for e in effects if isinstance(e, Reply)]
        assert len(replies) == 1 and replies[0].client == client
        if prev.phase is not Phase.AWAITING_DECISION:
            assert not replies[0].ok and self.state == prev
            return
        if self.now >= prev.deadline:
            assert not replies[0].ok and self.state.phase is Phase.IDLE
            return
        assert replies[0].ok
        if register:
            assert self.state.phase is Phase.CAPTURING
            self.approved, self.name = True, name
        else:
            assert self.state.phase is Phase.IDLE
            assert prev.track_id is not None
            self.declined[prev.track_id] = self.now + self.cfg.decline_cooldown_seconds

    @rule(client=st.sampled_from(["a", "b"]))
    def typing(self, client: str) -> None:
        prev, effects = self._step(Typing(client))
        (reply,) = [e for e in effects if isinstance(e, Reply)]
        assert reply.client == client
        if prev.phase is not Phase.AWAITING_DECISION:
            assert reply == Reply(client, False, "no registration is waiting for a decision")
            assert self.state == prev and published(effects) == []
        elif self.now >= prev.deadline:
            assert not reply.ok and self.state.phase is Phase.IDLE
        elif prev.extended:
            assert reply == Reply(client, False, "already extended")
            assert self.state == prev and published(effects) == []
        else:
            assert reply == Reply(client, True, "extended")
            assert self.state.extended
            expected = max(prev.deadline, self.now + self.cfg.decision_timeout_seconds)
            assert self.state.deadline == expected
            (waiting,) = published(effects)
            assert isinstance(waiting, RegistrationWaiting) and waiting.extended

    @rule(
        track=st.sampled_from(TRACKS),
        name=st.none() | st.sampled_from(["Ada", "Bo"]),
        client=st.sampled_from(["a", "b"]),
    )
    def offer_now(self, track: int, name: str | None, client: str) -> None:
        """The operator clicks Register on a face."""
        prev, effects = self._step(Offer(track, name, client))
        (reply,) = [e for e in effects if isinstance(e, Reply)]
        assert reply.client == client
        if prev.phase is Phase.IDLE or (
            prev.phase is Phase.AWAITING_DECISION and prev.track_id == track
        ):
            assert reply == Reply(client, True, "approved")
            assert self.state.phase is Phase.CAPTURING and self.state.track_id == track
            assert track not in (t for t, _ in self.state.declined)
            self.declined.pop(track, None)
            self.approved, self.name = True, name
            assert kinds(effects)[1:] == [
                "RegistrationApproved",
                "RegistrationStart",
                "RegistrationAngleInstruction",
            ]
            return
        assert self.state == prev and published(effects) == []
        if prev.phase is Phase.AWAITING_DECISION:
            assert reply == Reply(client, False, "another face is waiting for a decision")
        else:
            assert reply == Reply(client, False, "a registration is under way")

    def _front_surely_steady(self, t: float) -> tuple[float, float] | None:
        """The reading the registering face has held, without gaps, for the settle time (the
        model's own view: None when it is not obvious)."""
        settle = self.cfg.front_settle_seconds
        before = [i for i, (when, _, _) in enumerate(self.front_trace) if when <= t - settle]
        if not before:
            return None
        held = self.front_trace[before[-1] :]
        if any(b[0] - a[0] > settle for a, b in itertools.pairwise(held)):
            return None
        readings = {(yaw, pitch) for _, yaw, pitch in held}
        return readings.pop() if len(readings) == 1 else None

    def _observe(
        self, *, track: int, inside: bool, usable: bool, has_embedding: bool, frac: float, gap: int
    ) -> None:
        self.frame += gap
        pose = self.state.pose or "front"
        if pose == "front":  # the person looks somewhere in (or beyond) poses.front
            window = self.cfg.poses["front"]
            yaw, pitch = window.yaw, window.pitch
        else:
            yaw, pitch = target(self.state, self.cfg, pose)
        # clamped: lo + 1.0 * (hi - lo) can round one ulp past hi
        inner = min(max(pitch[0] + frac * (pitch[1] - pitch[0]), pitch[0]), pitch[1])
        if inside:
            at = (min(max(yaw[0] + frac * (yaw[1] - yaw[0]), yaw[0]), yaw[1]), inner)
        else:
            at = (yaw[1] + 1.0 + 10 * frac, inner)
        emb = unit(track, jitter=self.frame) if has_embedding else None
        frame_time = self.frame * FRAME_DT if self.stream_time else None
        t = self.now if frame_time is None else frame_time
        before = self.state
        registering = before.phase is Phase.CAPTURING and track == before.track_id
        if registering and before.pose == "front" and usable:
            self.front_trace.append((t, *at))
        # (the machine judges steadiness on usable readings only)
        steady = (
            self._front_surely_steady(t) if registering and pose == "front" and usable else None
        )
        prev, effects = self._step(
            Observation(track, self.frame, *at, usable, emb, frame_time=frame_time)
        )
        taken = len(self.state.captures) - len(prev.captures)
        apart = self.frame - prev.last_capture_frame >= self.cfg.min_frames_apart
        can = registering and usable and has_embedding and apart
        if registering and pose == "front":
            window = self.cfg.poses["front"]
            if taken:  # sound: around the person's steady front, which lies in poses.front
                assert can and self.state.front is not None
                front_yaw, front_pitch = self.state.front
                tol = self.cfg.front_tolerance_degrees
                assert abs(at[0] - front_yaw) <= tol and abs(at[1] - front_pitch) <= tol
                assert window.yaw[0] <= front_yaw <= window.yaw[1]
                assert window.pitch[0] <= front_pitch <= window.pitch[1]
            if steady is not None:  # complete: a front held still is the person's front
                ok = (
                    window.yaw[0] <= steady[0] <= window.yaw[1]
                    and window.pitch[0] <= steady[1] <= window.pitch[1]
                )
                assert self.state.front == (steady if ok else None)
                assert taken == (1 if ok and can else 0)
                REACHED["steady_front" if ok else "steady_elsewhere"] += 1
                for fb in of(effects, RegistrationPoseFeedback):
                    if ok:  # the reading is the steady front itself: inside its box
                        assert fb.hint is None and fb.held is (usable and has_embedding)
                    else:  # which way to move, and nothing held
                        hint = direction_hint("front", *steady, window.yaw, window.pitch)
                        assert hint is not None and fb.hint == hint and fb.held is False
        elif self.state.phase is not Phase.IDLE:
            assert taken == (1 if can and inside else 0)
            for fb in of(effects, RegistrationPoseFeedback):
                assert (fb.hint is None) == inside
        if not registering:
            # ignored (idle only forgets expired declines)
            assert replace(self.state, declined=()) == replace(before, declined=())
            assert effects == []
        for fb in of(effects, RegistrationPoseFeedback):
            assert fb.frame_time == frame_time

    @rule(
        track=st.sampled_from(TRACKS),
        inside=st.booleans(),
        usable=st.booleans(),
        has_embedding=st.booleans(),
        frac=st.floats(0.0, 1.0),
        gap=st.integers(1, 3),
    )
    def observe(
        self, *, track: int, inside: bool, usable: bool, has_embedding: bool, frac: float, gap: int
    ) -> None:
        self._observe(
            track=track,
            inside=inside,
            usable=usable,
            has_embedding=has_embedding,
            frac=frac,
            gap=gap,
        )

    def _hold(self, frames: int, frac: float, dt: float, *, inside: bool = True) -> None:
        for _ in range(frames):
            if self.state.phase is not Phase.CAPTURING:
                return
            assert self.state.track_id is not None
            self.now += dt
            self._observe(
                track=self.state.track_id,
                inside=inside,
                usable=True,
                has_embedding=True,
                frac=frac,
                gap=self.cfg.min_frames_apart,
            )

    # The productive moves get rules of their own (an approval; the registering person holding
    # the pose for a few frames) so that many runs get through all five poses to the store.
    @precondition(lambda self: self.state.phase is Phase.AWAITING_DECISION)
    @rule(name=st.none() | st.sampled_from(["Ada", "Bo"]), client=st.sampled_from(["a", "b"]))
    def approve(self, name: str | None, client: str) -> None:
        self.decide(register=True, name=name, client=client)

    @precondition(lambda self: self.state.phase is Phase.CAPTURING)
    @rule(frames=st.integers(1, 8), frac=st.floats(0.0, 1.0), dt=st.floats(0.0, 0.3))
    def hold_pose(self, frames: int, frac: float, dt: float) -> None:
        self._hold(frames, frac, dt)

    @precondition(lambda self: self.state.phase is Phase.CAPTURING)
    @rule(frames=st.integers(1, 20), frac=st.floats(0.0, 1.0))
    def hold_still(self, frames: int, frac: float) -> None:
        self._hold(frames, frac, 0.0 if self.stream_time else 0.1)

    # A person whose steady front reads outside poses.front: told which way, nothing captured.
    @precondition(lambda self: self.state.pose == "front")
    @rule(frames=st.integers(1, 20), frac=st.floats(0.0, 1.0))
    def hold_elsewhere(self, frames: int, frac: float) -> None:
        self._hold(frames, frac, 0.0 if self.stream_time else 0.1, inside=False)

    @rule(track=st.sampled_from(TRACKS))
    def leave(self, track: int) -> None:
        prev, effects = self._step(PersonLeft(track))
        cancels = prev.phase in (Phase.AWAITING_DECISION, Phase.CAPTURING)
        if cancels and track == prev.track_id:
            assert self.state.phase is Phase.IDLE
            (cancelled,) = published(effects)
            assert isinstance(cancelled, RegistrationCancelled)
            assert cancelled.reason == "person_left"
        else:
            assert effects == [] and self.state.phase is prev.phase

    @rule(dt=st.floats(0.0, 3.0) | st.floats(0.0, 3.0) | st.floats(0.0, 100.0))
    def tick(self, dt: float) -> None:
        self.now += dt
        prev, effects = self._step(Tick())
        if prev.phase in (Phase.AWAITING_DECISION, Phase.CAPTURING):
            expired = self.now >= prev.deadline
            assert (self.state.phase is Phase.IDLE) == expired
            if expired:
                (ev,) = published(effects)
                if prev.phase is Phase.CAPTURING:
                    assert isinstance(ev, RegistrationFailed)
                    assert ev.reason == f"angle_timeout_{prev.pose}"
                else:
                    assert isinstance(ev, RegistrationCancelled)
                    assert ev.reason == "decision_timeout"
        else:
            assert effects == [] and self.state.phase is prev.phase

    @rule()
    def reset(self) -> None:
        prev, effects = self._step(Reset())
        assert self.state.phase is Phase.IDLE
        expected = ["SystemReady"]
        if prev.phase in IN_PROGRESS:
            expected = ["RegistrationCancelled", "SystemReady"]
        assert kinds(effects) == expected

    # The runtime's answer to ValidateAndStore: stored (the only store write), or refused.
    @precondition(lambda self: self.state.phase is Phase.VALIDATING)
    @rule(
        ok=st.booleans(),
        refusal=st.sampled_from(["inconsistent_identity", "already_registered", "store_error"]),
    )
    def answer(self, *, ok: bool, refusal: str) -> None:
        assert self.pending is not None
        if ok:
            assert self.approved, "store write without an approving decision"
            person_id = f"p-{len(self.store) + 1}"
            name = self.pending.name or f"Person {len(self.store) + 1}"
            self.store.append(person_id)
            outcome = Stored(True, person_id=person_id, name=name)
        elif refusal == "already_registered":
            outcome = Stored(False, person_id="p-0", name="Old", reason=refusal)
        else:
            outcome = Stored(False, reason=refusal)
        _, effects = self._step(outcome)
        REACHED["stored" if ok else "refused"] += 1
        assert self.state.phase is Phase.IDLE
        (ev,) = published(effects)
        assert isinstance(ev, RegistrationComplete if ok else RegistrationFailed)

    # -- invariants ----------------------------------------------------------------------------
    @invariant()
    def never_transient(self) -> None:
        assert self.state.phase not in TRANSIENT

    @invariant()
    def one_registration_with_a_fixed_track(self) -> None:
        if self.state.phase is Phase.IDLE:
            assert self.state.track_id is None and self.state.captures == ()
            assert self.reg_track is None
        else:
            assert self.state.track_id is not None
            assert self.state.track_id == self.reg_track

    @invariant()
    def approval_precedes_capture_and_storage(self) -> None:
        if self.state.phase in (Phase.CAPTURING, Phase.VALIDATING):
            assert self.approved
        assert (self.state.phase is Phase.VALIDATING) == (self.pending is not None)
        assert len(self.store) == self.store_seen

    @invariant()
    def captures_follow_the_pose_order(self) -> None:
        got = Counter(c.pose for c in self.state.captures)
        for i, pose in enumerate(POSE_ORDER):
            if self.state.phase is Phase.CAPTURING and i < self.state.pose_index:
                assert got[pose] == self.cfg.captures_per_pose
            assert got[pose] <= self.cfg.captures_per_pose
            if self.state.phase is Phase.CAPTURING and i > self.state.pose_index:
                assert got[pose] == 0


def test_registration_model() -> None:
    REACHED.clear()
    run_state_machine_as_test(
        RegistrationModel,
        settings=settings(
            max_examples=150,
            stateful_step_count=80,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
    # the runs must get through all five poses to storage, both answered and refused
    assert REACHED["stored"] > 0 and REACHED["refused"] > 0, REACHED
    # and front poses held steady inside poses.front (captured) and outside it (a hint)
    assert REACHED["steady_front"] > 0 and REACHED["steady_elsewhere"] > 0, REACHED


def test_model_reaches_storage() -> None:
    """One hand-driven run of the model, as a readable example of its rules."""
    model = RegistrationModel()
    model.configure(per_pose=2, apart=1, interval=0.2, relative=True, cooldown=60.0)
    model.offer(1)
    model.decide(True, None, "a")
    while model.state.phase is Phase.CAPTURING:
        model.hold_pose(1, 0.5, 0.1)
        model.never_transient()
        model.captures_follow_the_pose_order()
    model.answer(ok=True, refusal="")
    assert model.store == ["p-1"] and model.state == State()
    model.offer(1)
    model.decide(False, "Ada", "b")
    model.offer(1)
    assert model.state.phase is Phase.IDLE
    model.teardown()
