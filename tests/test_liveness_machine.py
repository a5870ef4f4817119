"""The liveness challenge's state machine (facegate.live.liveness), fed scripted views.

The planarity measure is injected: here a stand-in that returns what the test says the turned
view's landmarks measured (the real measure is vision.planarity's, tested on real turns and
photo attacks in test_planarity.py)."""

from __future__ import annotations

import numpy as np
import pytest

from facegate.live.liveness import (
    Asked,
    Config,
    IllegalTransitionError,
    Missed,
    Phase,
    Reset,
    Start,
    State,
    Tick,
    Verdict,
    View,
    step,
)

CFG = Config(
    challenge_seconds=5.0,
    turn_degrees=25.0,
    front_degrees=10.0,
    planarity_cutoff=0.02,
    identity_threshold=0.44,
)


def unit(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(512).astype(np.float32)
    return v / np.linalg.norm(v)


ME = unit(1)
SOMEONE_ELSE = unit(2)


def marks(value: float) -> np.ndarray:
    """Landmarks that carry the residual the stand-in measure will report for them."""
    return np.full((68, 2), value, np.float32)


def residual_of(front: np.ndarray, turned: np.ndarray) -> float:
    return float(turned[0, 0])


class Script:
    """Drives the machine the way the engine would: one view per frame, the clock ticking."""

    def __init__(self, direction: str = "left", track: int = 7) -> None:
        self.state = State()
        self.now = 100.0
        self.frame = 0
        self.track = track
        self.effects: list[object] = []
        self.feed(Start(track, "p1", direction))

    def feed(self, event: object) -> list[object]:
        self.state, effects = step(self.state, event, self.now, CFG, residual_of)  # type: ignore[arg-type]
        self.effects += effects
        return list(effects)

    def view(
        self, yaw: float, pitch: float = 0.0, *, residual: float = 0.0, who: np.ndarray = ME
    ) -> list[object]:
        self.frame += 1
        self.now += 0.1
        return self.feed(View(self.track, self.frame, yaw, pitch, marks(residual), who))

    def verdict(self) -> Verdict:
        found = [e for e in self.effects if isinstance(e, Verdict)]
        assert len(found) == 1, self.effects
        return found[0]


def turn(script: Script, yaws: list[float], residual: float, pitch: float = 0.0) -> None:
    for yaw in yaws:
        script.view(yaw, pitch, residual=residual)


def test_a_real_turn_and_back_passes() -> None:
    s = Script("left")
    asked = s.view(2.0)  # the front the turn is measured from
    assert [type(e) for e in asked] == [Asked]
    assert asked[0].target_yaw[1] == pytest.approx(2.0 - 25.0)  # type: ignore[attr-defined]
    turn(s, [-5, -15, -25, -35, -30, -12, 0], residual=0.08)
    v = s.verdict()
    assert (v.passed, v.reason) == (True, "passed")
    assert v.residual == pytest.approx(0.08)
    assert v.seconds == pytest.approx(0.8)
    assert s.state.phase is Phase.IDLE


def test_a_photo_moving_as_a_plane_fails() -> None:
    s = Script("right")
    s.view(0.0)
    turn(s, [10, 20, 30, 28, 10, 2], residual=0.004)
    v = s.verdict()
    assert (v.passed, v.reason) == (False, "planar")


def test_the_median_of_the_turned_views_decides() -> None:
    s = Script("right")
    s.view(0.0)
    s.view(26.0, residual=0.5)  # one odd landmark fit does not pass a plane
    s.view(40.0, residual=0.01)
    s.view(38.0, residual=0.01)
    s.view(3.0)
    v = s.verdict()
    assert (v.passed, v.residual) == (False, pytest.approx(0.01))
    s = Script("right")
    s.view(0.0)
    turn(s, [30.0, 40.0, 35.0], residual=0.09)
    s.view(26.0, residual=0.001)  # nor does it fail a head
    s.view(3.0)
    assert s.verdict().passed


def test_a_turn_too_small_never_passes_and_times_out() -> None:
    s = Script("left")
    s.view(0.0)
    for _ in range(60):  # a photo tilted 50 deg reads about 18 deg of yaw: never the target
        s.view(-18.0, residual=0.5)
    s.now += 1.0
    s.feed(Tick())
    assert s.verdict().reason == "timeout"


def test_a_gap_in_the_track_fails_the_challenge() -> None:
    s = Script("left")
    s.view(0.0)
    s.view(-30.0, residual=0.1)
    s.frame += 1  # a frame without this face: the photo was swapped, the head went away
    s.view(0.0)
    assert s.verdict().reason == "track_lost"
    s2 = Script("left")
    s2.view(0.0)
    s2.feed(Missed(7))
    assert s2.verdict().reason == "track_lost"


def test_another_face_during_the_turn_fails() -> None:
    s = Script("left")
    s.view(0.0)
    s.view(-30.0, residual=0.1, who=SOMEONE_ELSE)
    assert s.verdict().reason == "identity_changed"


def test_only_the_challenged_track_counts() -> None:
    s = Script("left", track=7)
    s.view(0.0)
    s.feed(View(8, 99, -40.0, 0.0, marks(0.5), ME))
    s.feed(Missed(8))
    assert not [e for e in s.effects if isinstance(e, Verdict)]
    assert s.state.phase is Phase.TURNING


def test_up_and_down_are_measured_from_the_persons_own_front() -> None:
    s = Script("up")
    s.view(yaw=3.0, pitch=-8.0)  # a camera above eye level: their front reads -8
    turn(s, [3.0], residual=0.1, pitch=10.0)  # 18 deg up from their front: not yet
    assert s.state.phase is Phase.TURNING
    turn(s, [3.0, 3.0], residual=0.1, pitch=20.0)
    turn(s, [3.0], residual=0.0, pitch=-6.0)
    assert s.verdict().passed


def test_illegal_and_unknown_inputs() -> None:
    s = Script("left")
    with pytest.raises(IllegalTransitionError):
        s.feed(Start(9, None, "left"))
    with pytest.raises(ValueError, match="direction"):
        step(State(), Start(1, None, "sideways"), 0.0, CFG, residual_of)
    s.feed(Reset())
    assert s.state == State()
