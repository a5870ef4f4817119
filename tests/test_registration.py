"""registration.step: every transition of the pure state machine, then a stateful model test.

The machine never does I/O, so these tests drive it with a fake clock (`now`), synthetic unit
embeddings and observations placed inside or outside the current pose window.
"""

from __future__ import annotations

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
    SystemReady,
)
from facegate.registration import (
    INSTRUCTIONS,
    Capture,
    Decision,
    Effect,
    IllegalTransitionError,
    Input,
    Observation,
    PersonLeft,
    Phase,
    Publish,
    Reply,
    Reset,
    State,
    Stored,
    Tick,
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
) -> Observation:
    yaw, pitch = middle(state, cfg) if at is None else at
    emb = unit(0, jitter=frame) if isinstance(embedding, str) else embedding
    return Observation(track, frame, yaw, pitch, usable, emb, bbox)


def published(effects: list[Effect]) -> list[Event]:
    return [e.event for e in effects if isinstance(e, Publish)]


def of(effects: list[Effect], kind: type) -> list:  # type: ignore[type-arg]
    return [e for e in published(effects) if isinstance(e, kind)]


def kinds(effects: list[Effect]) -> list[str]:
    return [type(e.event).__name__ if isinstance(e, Publish) else type(e).__name__ for e in effects]


def offered(cfg: RegistrationSettings = CFG, track: int = TRACK, now: float = T0) -> State:
    state, effects = step(State(), UnknownOffered(track), now, cfg)
    assert state.phase is Phase.AWAITING_DECISION and effects == []
    return state


def approved(cfg: RegistrationSettings = CFG, name: str | None = "Ada", now: float = T0) -> State:
    state, _ = step(offered(cfg, now=now), Decision(True, name, "op"), now, cfg)
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
        pose, out = self.state.pose, []
        while self.state.phase is Phase.CAPTURING and self.state.pose == pose:
            self.frame += self.cfg.min_frames_apart
            out += self.feed(obs(self.state, self.cfg, self.frame, at=at))
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
def test_idle_unknown_offered_awaits_decision_with_deadline() -> None:
    cfg = RegistrationSettings(decision_timeout_seconds=12.5)
    state, effects = step(State(), UnknownOffered(3), T0, cfg)
    assert effects == []
    assert state.phase is Phase.AWAITING_DECISION
    assert state.track_id == 3
    assert state.deadline == T0 + 12.5


def test_idle_decision_is_refused_without_state_change() -> None:
    state = State()
    nxt, effects = step(state, Decision(True, "Ada", "op1"), T0, CFG)
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
    state, effects = step(offered(cfg), Decision(True, "Ada", "op1"), T0 + 2, cfg)
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
    state, effects = step(offered(), Decision(True, None, "op"), T0, CFG)
    assert state.phase is Phase.CAPTURING and state.name is None
    (ev,) = of(effects, RegistrationApproved)
    assert ev.name == "" and ev.message == "Registering the new person"
    run = Run(state, CFG)
    run.capture_all()
    (job,) = [e for e in run.effects if isinstance(e, ValidateAndStore)]
    assert job.name is None


def test_decline_cancels_and_replies() -> None:
    state, effects = step(offered(), Decision(False, None, "op2"), T0 + 1, CFG)
    assert state.phase is Phase.IDLE and state.track_id is None
    assert effects[0] == Reply("op2", True, "declined")
    (cancelled,) = published(effects)
    assert isinstance(cancelled, RegistrationCancelled)
    assert cancelled.reason == "declined"


def test_declined_track_not_offered_again_until_cooldown_passes() -> None:
    cfg = RegistrationSettings(decline_cooldown_seconds=60.0)
    state, _ = step(offered(cfg), Decision(False, None, "op"), T0, cfg)
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
    state, _ = step(offered(cfg), Decision(False, None, "op"), T0, cfg)
    state, _ = step(state, UnknownOffered(TRACK + 1), T0 + 1, cfg)
    state, _ = step(state, PersonLeft(TRACK + 1), T0 + 2, cfg)
    assert state.phase is Phase.IDLE
    assert step(state, UnknownOffered(TRACK), T0 + 3, cfg)[0].phase is Phase.IDLE
    state, _ = step(state, Tick(), T0 + 61, cfg)  # idle ticks prune expired entries
    assert state.declined == ()


def test_declined_track_zero_is_not_offered_again() -> None:
    state, _ = step(offered(track=0), Decision(False, None, "op"), T0, CFG)
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
    state, effects = step(offered(cfg), Decision(True, "Ada", "op"), T0 + 31.0, cfg)
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
    for decision in (Decision(True, "Bo", "op2"), Decision(False, None, "op3")):
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
    state = approved(cfg)
    counts = []
    for frame in (10, 11, 12, 13, 15, 16):
        state, _ = step(state, obs(state, cfg, frame), T0, cfg)
        counts.append(len(state.captures))
    assert counts == [1, 1, 1, 2, 2, 3]
    assert [c.pose for c in state.captures] == ["front"] * 3
    assert state.pose == "left"


@pytest.mark.parametrize(
    ("where", "usable", "embedding"),
    [
        ((25.0, 0.0), True, "auto"),  # yaw outside the front window
        ((0.0, -11.0), True, "auto"),  # pitch outside
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
    state = approved()
    nxt, effects = step(
        state, obs(state, CFG, 10, at=where, usable=usable, embedding=embedding), T0, CFG
    )
    assert nxt.captures == ()
    (fb,) = published(effects)
    assert isinstance(fb, RegistrationPoseFeedback)
    assert fb.held is False and fb.captured == 0


def test_window_edges_are_inside() -> None:
    state = approved()
    state, _ = step(state, obs(state, CFG, 10, at=(-10.0, 10.0)), T0, CFG)
    assert len(state.captures) == 1


def test_pose_feedback_fields_and_throttle() -> None:
    cfg = RegistrationSettings(feedback_interval_seconds=0.5, captures_per_pose=20)
    state = approved(cfg)
    times = [T0, T0 + 0.2, T0 + 0.49, T0 + 0.99, T0 + 1.0, T0 + 1.2, T0 + 1.6]
    sent = []
    for i, now in enumerate(times):
        o = obs(state, cfg, 10 + 5 * i, at=(1.0, 2.0), bbox=(1.0, 2.0, 3.0, 4.0))
        state, effects = step(state, o, now, cfg)
        sent += [(now, fb) for fb in of(effects, RegistrationPoseFeedback)]
    assert [now for now, _ in sent] == [T0, T0 + 0.99, T0 + 1.6]
    now, fb = sent[0]
    assert fb.angle_name == "front" and fb.held is True
    assert (fb.yaw, fb.pitch) == (1.0, 2.0)
    assert fb.target_yaw == [-10.0, 10.0] and fb.target_pitch == [-10.0, 10.0]
    assert fb.captured == 1 and fb.needed == 20
    assert fb.track_id == TRACK and fb.bbox == [1.0, 2.0, 3.0, 4.0] and fb.frame_time == T0
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
    run.capture_pose(at=(4.0, -12.0))
    assert run.state.baseline == (4.0, -12.0)
    assert target(run.state, cfg, "left") == ([-41.0, -16.0], [-27.0, 3.0])
    assert target(run.state, cfg, "up") == ([-11.0, 19.0], [3.0, 23.0])
    assert target(run.state, cfg, "down") == ([-11.0, 19.0], [-47.0, -27.0])
    assert target(run.state, cfg, "front") == ([-10.0, 10.0], [-20.0, 20.0])
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
    assert target(run.state, cfg, "up") == ([-15.0, 15.0], [15.0, 35.0])


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
        person_id="p-1", name="Ada", success=True, message="done"
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
    nxt, effects = step(state, Decision(True, "Bo", "op"), T0, CFG)
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
def captures(vectors: list[Vector]) -> tuple[Capture, ...]:
    poses = [p for p in POSE_ORDER for _ in range(3)]
    return tuple(Capture(p, v, 0.0, 0.0) for p, v in zip(poses, vectors, strict=True))


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
    run.feed(Decision(True, "Ada", "op"))
    run.capture_all()  # the clock stands still: one feedback per pose
    job = run.effects[-1]
    assert isinstance(job, ValidateAndStore)
    run.feed(Stored(True, "p-1", "Ada"))
    per_pose = ["RegistrationPoseFeedback", "RegistrationAngleComplete"]
    expected = ["Reply", "RegistrationApproved", "RegistrationStart"]
    expected += ["RegistrationAngleInstruction"]
    for _ in POSE_ORDER[:-1]:
        expected += [*per_pose, "RegistrationAngleInstruction"]
    expected += [*per_pose, "ValidateAndStore", "RegistrationComplete"]
    assert kinds(run.effects) == expected
    assert run.state == State()
    assert [e.angle_name for e in of(run.effects, RegistrationAngleInstruction)] == list(POSE_ORDER)


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
        self.store: list[str] = []
        self.store_seen = 0
        self.pending: ValidateAndStore | None = None
        self.reg_track: int | None = None
        self.approved = False  # an approving Decision accepted in this registration
        self.name: str | None = None
        self.jobs = 0  # ValidateAndStore effects in this registration
        self.declined: dict[int, float] = {}
        self.last_progress = 0.0

    @initialize(
        per_pose=st.integers(1, 3),
        apart=st.integers(1, 3),
        interval=st.sampled_from([0.0, 0.2, 1.0]),
        relative=st.booleans(),
        cooldown=st.sampled_from([0.0, 5.0, 60.0]),
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
        )
        # Runs also start part way (through the rules' own code, so every check applies):
        # reaching the late phases from idle by chance alone is rare.
        if start != "idle":
            self.offer(track=TRACKS[0])
        if start in ("capturing", "validating"):
            self.decide(register=True, name="Ada" if held % 2 else None, client="a")
            self._hold(held if start == "capturing" else 100, 0.5, 0.0)

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
        return prev, effects

    @rule(track=st.sampled_from(TRACKS))
    def offer(self, track: int) -> None:
        prev, effects = self._step(UnknownOffered(track))
        assert effects == []
        if prev.phase is Phase.IDLE:
            cooling = self.declined.get(track, -1.0) > self.now
            expected = Phase.IDLE if cooling else Phase.AWAITING_DECISION
            assert self.state.phase is expected
            if not cooling:
                assert self.state.track_id == track
                assert self.state.deadline == self.now + self.cfg.decision_timeout_seconds
        else:
            assert self.state == prev  # one registration at a time

    @rule(
        register=st.booleans(),
        name=st.none() | st.sampled_from(["Ada", "Bo"]),
        client=st.sampled_from(["a", "b"]),
    )
    def decide(self, register: bool, name: str | None, client: str) -> None:
        prev, effects = self._step(Decision(register, name, client))
        replies = [e for e in effects if isinstance(e, Reply)]
        assert len(replies) == 1 and replies[0].client == client
        if prev.phase is not Phase.AWAITING_DECISION:
            assert not replies[0].ok and self.state == prev
            return
        assert replies[0].ok
        if register:
            assert self.state.phase is Phase.CAPTURING
            self.approved, self.name = True, name
        else:
            assert self.state.phase is Phase.IDLE
            assert prev.track_id is not None
            self.declined[prev.track_id] = self.now + self.cfg.decline_cooldown_seconds

    def _observe(
        self, *, track: int, inside: bool, usable: bool, has_embedding: bool, frac: float, gap: int
    ) -> None:
        self.frame += gap
        yaw, pitch = target(self.state, self.cfg, self.state.pose or "front")
        # clamped: lo + 1.0 * (hi - lo) can round one ulp past hi
        inner = min(max(pitch[0] + frac * (pitch[1] - pitch[0]), pitch[0]), pitch[1])
        if inside:
            at = (min(max(yaw[0] + frac * (yaw[1] - yaw[0]), yaw[0]), yaw[1]), inner)
        else:
            at = (yaw[1] + 1.0 + 10 * frac, inner)
        emb = unit(track, jitter=self.frame) if has_embedding else None
        before = self.state
        prev, effects = self._step(Observation(track, self.frame, *at, usable, emb))
        taken = len(self.state.captures) - len(prev.captures)
        should = (
            prev.phase is Phase.CAPTURING
            and track == prev.track_id
            and inside
            and usable
            and has_embedding
            and self.frame - prev.last_capture_frame >= self.cfg.min_frames_apart
        )
        if self.state.phase is not Phase.IDLE:
            assert taken == (1 if should else 0)
        if prev.phase is not Phase.CAPTURING or track != prev.track_id:
            # ignored (idle only forgets expired declines)
            assert replace(self.state, declined=()) == replace(before, declined=())
            assert effects == []

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

    def _hold(self, frames: int, frac: float, dt: float) -> None:
        for _ in range(frames):
            if self.state.phase is not Phase.CAPTURING:
                return
            assert self.state.track_id is not None
            self.now += dt
            self._observe(
                track=self.state.track_id,
                inside=True,
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
        self._hold(frames, frac, 0.0)

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
