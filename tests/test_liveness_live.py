"""The liveness challenge through the live path: the real models, a real SQLite gallery, the
engine fed frame by frame by a scripted subject (tests/challenge_rig.py) that answers the
challenge with Pointing'04 images of a real head turn, or with that person's frontal photo
held up as an attacker would (turned as a plane, moved, on a phone).

The per-person report over all ten persons is bench/liveness_live.py (`make bench`).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import msgspec
import numpy as np
import pytest

import challenge_rig as cr
from facegate.events import (
    LivenessChallenge,
    LivenessPoseFeedback,
    LivenessResult,
    PersonLeftArea,
    PersonRecognized,
    UnknownPersonDetected,
)
from facegate.identity.gallery import Gallery
from facegate.identity.store import Store
from facegate.live.challenge import Challenger
from facegate.live.liveness import INSTRUCTIONS
from facegate.settings import Settings
from facegate.vision.passive_liveness import PassiveLiveness

pytestmark = [pytest.mark.shared_data, pytest.mark.models]


@pytest.fixture(scope="module")
def pointing(shared_data: Path) -> Path:
    return shared_data / "pose" / "pointing04"


def make_rig(
    tmp_path: Path,
    analyzer: Any,
    pointing: Path,
    settings: Settings,
    *,
    direction: str = "left",
    identity: str = "p04_person01",
    enrolled: bool = True,
    **kwargs: Any,
) -> Iterator[cr.Rig]:
    with Store.open(tmp_path / "data") as store:
        gallery = Gallery.open(store, settings)
        if enrolled:
            cr.enrol(gallery, analyzer, cr.Pointing(pointing, identity, "1"), "Pat")
        yield cr.Rig(analyzer, gallery, settings, choose=lambda _options: direction, **kwargs)


@pytest.mark.parametrize(
    "case", [("p04_person01", "left"), ("p04_person04", "right"), ("p04_person07", "left")]
)
def test_a_real_head_turn_passes_and_grants_access(
    tmp_path: Path, analyzer: Any, pointing: Path, faceplugin_dir: Path, case: tuple[str, str]
) -> None:
    identity, direction = case
    passive = PassiveLiveness(faceplugin_dir)
    for rig in make_rig(
        tmp_path,
        analyzer,
        pointing,
        cr.rig_settings("known"),
        direction=direction,
        identity=identity,
        passive=passive.score,
    ):
        person = cr.Pointing(pointing, identity, "2")
        views: list[Any] = []
        asked_seen = False
        start = rig.now
        asked: LivenessChallenge | None = None
        asked_at = 0.0
        subject = cr.RealTurn(person)
        while rig.now - start < 12 and not rig.of(LivenessResult):
            rig.show(subject.look(asked, rig.now - asked_at))
            if asked is None and rig.of(LivenessChallenge):
                asked, asked_at = rig.of(LivenessChallenge)[0], rig.now
            view = rig.engine.latest_view
            assert view is not None
            views += [t for t in view.tracks if t.liveness is not None]
            asked_seen |= any(
                t.liveness == "asked" and t.instruction == INSTRUCTIONS[direction]
                for t in view.tracks
            )
        greeted = rig.of(PersonRecognized)
        assert len(greeted) == 1 and greeted[0].access == "pending"
        (challenge,) = rig.of(LivenessChallenge)
        assert challenge.direction == direction and challenge.person_id == greeted[0].person_id
        assert challenge.instruction == INSTRUCTIONS[direction] and challenge.name == "Pat"
        # Asked to turn toward the person's own side: the window lies beyond the front by 25.
        if direction == "left":
            assert challenge.target_yaw[1] < -15
        else:
            assert challenge.target_yaw[0] > 15
        (result,) = rig.of(LivenessResult)
        assert result.passed and result.reason == "passed" and result.access == "granted"
        assert result.residual is not None and result.residual > result.cutoff == 0.128
        assert 0 < result.seconds <= 5.0
        assert result.passive_score is not None and 0.0 <= result.passive_score <= 1.0
        feedback = rig.of(LivenessPoseFeedback)
        assert {f.phase for f in feedback} == {"turn", "return"}
        # The order a door sees: greeted (pending), asked, fed back, decided.
        order = [type(e).__name__ for e in rig.events]
        assert order.index("PersonRecognized") < order.index("LivenessChallenge")
        assert order.index("LivenessChallenge") < order.index("LivenessResult")
        assert asked_seen
        rig.show(person.frame(0, 0))
        final = rig.engine.latest_view
        assert final is not None and [t.liveness for t in final.tracks] == ["passed"]


@pytest.mark.parametrize(
    ("subject", "direction"),
    [
        ("photo 45", "left"),
        ("photo 60", "right"),
        ("screen 45", "left"),
        ("moved", "right"),
    ],
)
def test_a_photo_of_a_known_person_is_denied(
    tmp_path: Path, analyzer: Any, pointing: Path, subject: str, direction: str
) -> None:
    for rig in make_rig(
        tmp_path, analyzer, pointing, cr.rig_settings("known"), direction=direction
    ):
        person = cr.Pointing(pointing, "p04_person01", "2")
        shown: cr.Subject
        if subject == "moved":
            shown = cr.PhotoMoved(person, seed=3)
        else:
            kind, angle = subject.split()
            shown = cr.PhotoTurn(person, float(angle), seed=5, screen=kind == "screen")
        outcome = cr.run(rig, shown)
        # The photo is recognised as the person (that is the threat), but never let in.
        assert outcome.access_on_greeting == "pending"
        assert outcome.result is not None and not outcome.result.passed
        assert outcome.result.access == "denied"
        assert outcome.result.reason in {"timeout", "planar", "track_lost", "identity_changed"}
        assert outcome.result.next_step
        # The verdict stands for the appearance: the photo is not asked again.
        for _ in range(20):
            rig.show(shown.look(None, 0.0))
        assert len(rig.of(LivenessChallenge)) <= 1 and len(rig.of(LivenessResult)) == 1


def test_a_photo_turned_far_enough_to_read_as_a_turn_is_refused_as_planar(
    tmp_path: Path, analyzer: Any, pointing: Path
) -> None:
    """With a low turn target, a photo turned 60 deg reaches the pose window: the landmarks'
    planarity alone must refuse it."""
    settings = cr.rig_settings("known", turn_degrees=10.0)
    outcomes = []
    for direction, seed in (("left", 1), ("right", 2)):
        where = tmp_path / direction
        for rig in make_rig(
            where, analyzer, pointing, settings, direction=direction, identity="p04_person02"
        ):
            person = cr.Pointing(pointing, "p04_person02", "2")
            outcomes.append(cr.run(rig, cr.PhotoTurn(person, 60.0, seed)))
    reasons = [o.result.reason for o in outcomes if o.result is not None]
    assert not any(o.passed for o in outcomes)
    assert "planar" in reasons, reasons
    for o in outcomes:
        if o.result is not None and o.result.reason == "planar":
            assert o.result.residual is not None and o.result.residual <= o.result.cutoff


class Swap:
    """One person until shortly after the instruction, then another in their place."""

    name = "swap"

    def __init__(self, first: cr.Subject, then: cr.Subject) -> None:
        self.first, self.then = first, then

    def look(self, asked: LivenessChallenge | None, since: float) -> Any:
        return (self.first if asked is None or since < 0.3 else self.then).look(asked, since)


def test_another_face_during_the_turn_fails_the_challenge(
    tmp_path: Path, analyzer: Any, pointing: Path
) -> None:
    """The person is recognised, then someone else turns in their place."""
    for rig in make_rig(tmp_path, analyzer, pointing, cr.rig_settings("known")):
        pat = cr.RealTurn(cr.Pointing(pointing, "p04_person01", "2"))
        other = cr.RealTurn(cr.Pointing(pointing, "p04_person09", "2"))

        outcome = cr.run(rig, Swap(pat, other))
        assert outcome.result is not None and not outcome.result.passed
        assert outcome.result.reason in {"identity_changed", "track_lost"}
        assert outcome.result.access == "denied"


def test_with_the_challenge_off_nothing_changes(
    tmp_path: Path, analyzer: Any, pointing: Path
) -> None:
    for rig in make_rig(tmp_path, analyzer, pointing, cr.rig_settings("off")):
        person = cr.Pointing(pointing, "p04_person01", "2")
        for _ in range(30):
            rig.show(person.frame(0, 0))
        (greeted,) = rig.of(PersonRecognized)
        assert greeted.access == "granted"
        assert not rig.of(LivenessChallenge) and not rig.of(LivenessResult)
        assert rig.challenger.track is None
        view = rig.engine.latest_view
        assert view is not None and [(t.state, t.liveness) for t in view.tracks] == [
            ("known", None)
        ]


def test_a_denied_person_is_challenged_again_after_leaving_and_coming_back(
    tmp_path: Path, analyzer: Any, pointing: Path
) -> None:
    settings = cr.rig_settings("known", challenge_seconds=3.0)
    for rig in make_rig(tmp_path, analyzer, pointing, settings, identity="p04_person03"):
        person = cr.Pointing(pointing, "p04_person03", "2")
        # First appearance: stays frontal, never turns: denied at the deadline.
        while not rig.of(LivenessResult) and rig.now < 10:
            rig.show(person.frame(0, 0))
        (first,) = rig.of(LivenessResult)
        assert first.reason == "timeout" and first.access == "denied"
        empty = cr.Pointing(pointing, "p04_person03", "2").frame(0, 0) * 0 + 60
        while not rig.of(PersonLeftArea):
            rig.show(empty)
        # Back again: greeted again (pending), asked again, and this time turns.
        outcome = cr.run(rig, cr.RealTurn(person))
        assert [e.access for e in rig.of(PersonRecognized)] == ["pending", "pending"]
        assert len(rig.of(LivenessChallenge)) == 2
        assert outcome.result is not None and outcome.result.passed


def test_always_offers_only_a_live_stranger_for_registration(
    tmp_path: Path, analyzer: Any, pointing: Path
) -> None:
    settings = cr.rig_settings("always")
    for rig in make_rig(tmp_path / "photo", analyzer, pointing, settings, enrolled=False):
        photo = cr.PhotoTurn(cr.Pointing(pointing, "p04_person05", "2"), 45.0, seed=9)
        outcome = cr.run(rig, photo)
        assert outcome.result is not None and not outcome.result.passed
        assert outcome.result.person_id is None and outcome.result.access == "denied"
        for _ in range(30):  # still and in view for 3 s: a photo is never offered
            rig.show(photo.look(None, 0.0))
        assert not rig.of(UnknownPersonDetected)
    for rig in make_rig(tmp_path / "real", analyzer, pointing, settings, enrolled=False):
        person = cr.Pointing(pointing, "p04_person05", "2")
        outcome = cr.run(rig, cr.RealTurn(person))
        assert outcome.result is not None and outcome.result.passed
        assert outcome.result.access == "denied"  # a stranger is live, not let in
        for _ in range(30):
            rig.show(person.frame(0, 0))
        assert len(rig.of(UnknownPersonDetected)) == 1


def test_the_challenger_is_idle_when_off() -> None:
    challenger = Challenger(msgspec.structs.replace(Settings().liveness, challenge="off"))
    assert challenger.greet(1, "p1", "Pat", registered=False) == "granted"
    assert challenger.track is None and challenger.may_offer(1)
    on = Challenger(msgspec.structs.replace(Settings().liveness, challenge="known"))
    assert on.greet(1, "p1", "Pat", registered=False) == "pending"
    assert on.greet(2, "p2", "Ada", registered=True) == "granted"  # just registered
    assert on.track == 1 and on.may_offer(3)


def run_folder(tmp_path: Path, frames: list[Any]) -> list[dict[str, Any]]:
    """`facegate run --json` on a folder of frames (10 fps), the challenge on, "left" only."""
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, frame in enumerate(frames):
        cv2.imwrite(str(folder / f"{i:04d}.png"), frame)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACEGATE_")}
    env["FACEGATE_HOME"] = str(tmp_path / "data")
    env["FACEGATE_LIVENESS_CHALLENGE"] = "known"
    env["FACEGATE_LIVENESS_DIRECTIONS"] = '["left"]'
    out = subprocess.run(
        [sys.executable, "-m", "facegate.cli", "run", "--source", str(folder), "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return [msgspec.json.decode(line) for line in out.stdout.splitlines()]


def test_run_json_prints_the_challenge_and_keeps_it_in_the_history(
    tmp_path: Path, analyzer: Any, pointing: Path
) -> None:
    settings = Settings()
    enrolled = cr.Pointing(pointing, "p04_person06", "1")
    with Store.open(tmp_path / "data") as store:
        pid = cr.enrol(Gallery.open(store, settings), analyzer, enrolled, "Pat")
    person = cr.Pointing(pointing, "p04_person06", "2")
    turn = [person.frame(-yaw) for yaw in (15, 15, 30, 30, 45, 45, 30, 30, 15, 15)]
    lines = run_folder(tmp_path, [person.frame(0)] * 12 + turn + [person.frame(0)] * 10)
    by_type = {line["type"]: line["data"] for line in lines}
    types = [line["type"] for line in lines]
    assert by_type["person_recognized"]["access"] == "pending"
    assert by_type["person_recognized"]["person_id"] == pid
    assert by_type["liveness_challenge"]["direction"] == "left"
    result = by_type["liveness_result"]
    assert result["passed"] is True and result["access"] == "granted", result
    assert result["person_id"] == pid and result["name"] == "Pat"
    assert result["passive_score"] is not None  # the pipeline loads the passive model
    assert types.index("person_recognized") < types.index("liveness_challenge")
    assert types.index("liveness_challenge") < types.index("liveness_result")
    with Store.open(tmp_path / "data", readonly=True) as store:
        kept = [e.type for e in store.events(gate="gate")]
    assert "liveness_challenge" in kept and "liveness_result" in kept


def test_one_challenge_at_a_time_and_a_person_who_leaves_while_waiting_is_denied(
    tmp_path: Path, analyzer: Any, pointing: Path
) -> None:
    """Two known people at the gate: one is asked, the other waits; the one waiting walks
    away before their turn: the door gets a verdict for them too (reason `left`)."""
    settings = cr.rig_settings("known")
    with Store.open(tmp_path / "data") as store:
        gallery = Gallery.open(store, settings)
        ids = {
            who: cr.enrol(gallery, analyzer, cr.Pointing(pointing, who, "1"), name)
            for who, name in (("p04_person01", "Ann"), ("p04_person04", "Bob"))
        }
        rig = cr.Rig(analyzer, gallery, settings, choose=lambda _options: "right")
        people = {who: cr.RealTurn(cr.Pointing(pointing, who, "2")) for who in ids}

        def scene(asked: LivenessChallenge | None, since: float, *, both: bool) -> Any:
            """Ann on the left half, Bob on the right; the one asked turns."""
            canvas = np.full((480, 1280, 3), 60, np.uint8)
            for x, who in ((0, "p04_person01"), (640, "p04_person04")):
                mine = asked if asked is not None and asked.person_id == ids[who] else None
                if both or mine is not None:
                    canvas[:, x : x + 640] = people[who].look(mine, since)
            return canvas

        # Both in view, facing the camera, until both are greeted and one is asked.
        while len(rig.of(PersonRecognized)) < 2 or not rig.of(LivenessChallenge):
            assert rig.now < 10, [type(e).__name__ for e in rig.events]
            rig.show(scene(None, 0.0, both=True))
        view = rig.engine.latest_view
        assert view is not None
        assert sorted(str(t.liveness) for t in view.tracks) == ["asked", "waiting"]
        # The one asked turns; the other walks away.
        asked, asked_at = rig.of(LivenessChallenge)[0], rig.now
        while len(rig.of(LivenessResult)) < 2:
            assert rig.now < 20, [type(e).__name__ for e in rig.events]
            rig.show(scene(asked, rig.now - asked_at, both=False))
        assert [e.access for e in rig.of(PersonRecognized)] == ["pending", "pending"]
        assert len(rig.of(LivenessChallenge)) == 1  # the second never started
        results = {e.person_id: e for e in rig.of(LivenessResult)}
        other = next(pid for pid in ids.values() if pid != asked.person_id)
        assert results[asked.person_id].passed and results[asked.person_id].access == "granted"
        assert results[other].reason == "left" and results[other].access == "denied"
        assert not results[other].passed
