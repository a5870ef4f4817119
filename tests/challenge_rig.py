"""The liveness challenge through the live path: an Engine with the real models, fed frame by
frame (10 fps of stream time) by a scripted subject that answers the challenge it is asked.

Subjects (each from one Pointing'04 person, frames 640x480 as a webcam sees them):
- `RealTurn`: the person's own images: front until asked, then (after a reaction time) a
  turn in the asked direction through 15, 30, 45 deg and back to the front, as a cooperative
  person does; once back they look at the camera.
- `PhotoTurn`: the person's frontal photo held up (hand shake, JPEG noise), turned as a plane
  toward the asked direction to `angle` deg and back, again and again until the verdict.
- `PhotoMoved`: the frontal photo held flat, moved nearer, further and sideways.
- `ScreenTurn`: the frontal photo shown on a synthetic phone, turned like `PhotoTurn`.

`run(rig, subject)` plays one challenge and returns its `Outcome` (the `liveness_result`, or
none when no challenge ended). Used by tests/test_liveness_live.py and bench/liveness_live.py.
"""

from __future__ import annotations

import csv
import math
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

import msgspec
import numpy as np

import spoofs
from facegate.events import (
    Event,
    LivenessChallenge,
    LivenessResult,
    PersonRecognized,
)
from facegate.identity.gallery import Gallery
from facegate.identity.store import NewEmbedding
from facegate.live.challenge import Challenger, PassiveFn
from facegate.live.engine import Engine
from facegate.live.sources import Frame
from facegate.settings import EngineSettings, LivenessSettings, Settings
from facegate.vision.face import FaceAnalyzer, ImageArray
from facegate.vision.images import read_image

FPS = 10.0
FRAME = (640, 480)
PASTE = (128, 120)
REACTION_SECONDS = 0.6  # from the instruction to the first move
STEP_SECONDS = 0.2  # each 15 deg step of a real turn is held this long
E = TypeVar("E", bound=Event)
SIGN = {"left": (-1, 0), "right": (1, 0), "up": (0, 1), "down": (0, -1)}


class Pointing:
    """One Pointing'04 person's images by (yaw, pitch), of one series."""

    def __init__(self, root: Path, identity: str, series: str) -> None:
        with (root / "manifest.csv").open() as fh:
            rows = [
                r for r in csv.DictReader(fh) if r["identity"] == identity and r["series"] == series
            ]
        self.identity = identity
        self.images = {(int(r["yaw"]), int(r["pitch"])): root / r["path"] for r in rows}
        self._frames: dict[tuple[int, int], ImageArray] = {}

    def photo(self, yaw: int = 0, pitch: int = 0) -> ImageArray:
        """The image itself (the photo an attacker prints)."""
        return read_image(self.images[(yaw, pitch)])

    def frame(self, yaw: int, pitch: int = 0) -> ImageArray:
        """The person at (yaw, pitch), as a webcam sees them (pasted in a 640x480 frame)."""
        key = min(self.images, key=lambda k: abs(k[0] - yaw) + abs(k[1] - pitch))
        if key not in self._frames:
            img = read_image(self.images[key])
            frame = np.full((FRAME[1], FRAME[0], 3), 60, np.uint8)
            x, y = PASTE
            frame[y : y + img.shape[0], x : x + img.shape[1]] = img[: FRAME[1] - y]
            self._frames[key] = frame
        return self._frames[key]


class Subject(Protocol):
    name: str

    def look(self, asked: LivenessChallenge | None, since: float) -> ImageArray:
        """The frame shown `since` seconds after the instruction (`asked`; None: not yet)."""
        ...


class RealTurn:
    """The person turns as asked: 15, 30, 45 deg, then back through 30, 15 to the front."""

    name = "real"

    def __init__(self, person: Pointing, depth: int = 45) -> None:
        self.person = person
        self.path = [*range(15, depth + 1, 15), *range(depth - 15, -1, -15)]

    def look(self, asked: LivenessChallenge | None, since: float) -> ImageArray:
        if asked is None or since < REACTION_SECONDS:
            return self.person.frame(0, 0)
        step = int((since - REACTION_SECONDS) / STEP_SECONDS)
        angle = self.path[step] if step < len(self.path) else 0
        sy, sp = SIGN[asked.direction]
        return self.person.frame(sy * angle, sp * angle)


class PhotoTurn:
    """The frontal photo held up, turned as a plane toward the asked direction and back."""

    def __init__(self, person: Pointing, angle: float, seed: int, *, screen: bool = False) -> None:
        self.rng = np.random.default_rng(seed)
        photo = person.photo()
        self.shown = spoofs.on_screen(photo, self.rng) if screen else photo
        self.angle = angle
        self.back = spoofs.backdrop(self.rng)
        self.name = f"{'screen' if screen else 'photo'} {angle:g}"
        self.scale = 1.1 if screen else 1.25
        self.period = 2.0  # seconds per out-and-back

    def look(self, asked: LivenessChallenge | None, since: float) -> ImageArray:
        turn = 0.0
        if asked is not None and since >= REACTION_SECONDS:
            phase = ((since - REACTION_SECONDS) % self.period) / self.period
            turn = math.sin(math.pi * phase) * self.angle
        sy, sp = SIGN[asked.direction] if asked is not None else (0, 0)
        return spoofs.perspective_warp(
            self.shown,
            sy * turn,
            sp * turn,
            self.rng,
            shake=True,
            jpeg_noise=True,
            scale=self.scale,
            background=self.back,
        )


class PhotoMoved:
    """The frontal photo held flat, moved and scaled around (not turned)."""

    name = "moved"

    def __init__(self, person: Pointing, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.photo = person.photo()
        self.back = spoofs.backdrop(self.rng)

    def look(self, asked: LivenessChallenge | None, since: float) -> ImageArray:
        wave = math.sin(2 * math.pi * since / 2.0) if asked is not None else 0.0
        return spoofs.scaled_translated(
            self.photo,
            self.rng,
            scale=1.25 + 0.25 * wave,
            shift=(80.0 * wave, 20.0 * wave),
            shake=True,
            jpeg_noise=True,
            background=self.back,
        )


def rig_settings(challenge: str = "known", **liveness: object) -> Settings:
    return msgspec.structs.replace(
        Settings(),
        engine=EngineSettings(stable_seconds=1.0),
        liveness=msgspec.structs.replace(
            LivenessSettings(challenge=challenge),  # type: ignore[arg-type]
            **liveness,
        ),
    )


def enrol(gallery: Gallery, analyzer: FaceAnalyzer, person: Pointing, name: str) -> str:
    """The person enrolled from their own images of a series (front and 15 deg turns)."""
    items = []
    for yaw, pitch in ((0, 0), (-15, 0), (15, 0)):
        faces = analyzer.analyze(person.frame(yaw, pitch))
        assert faces and faces[0].embedding is not None, f"no face in {person.identity}"
        items.append(NewEmbedding(faces[0].embedding, pose="front", source="photo"))
    return gallery.create_person(name, items, actor="test").id


class Rig:
    """An Engine (real analyzer and gallery) driven frame by frame on stream time."""

    def __init__(
        self,
        analyzer: FaceAnalyzer,
        gallery: Gallery,
        settings: Settings,
        *,
        choose: Callable[[Sequence[str]], str] = secrets.choice,
        passive: PassiveFn | None = None,
    ) -> None:
        self.events: list[Event] = []
        self.frame_no = 0
        self.now = 0.0
        self.challenger = Challenger(
            settings.liveness,
            feedback_interval=settings.registration.feedback_interval_seconds,
            choose=choose,
            passive=passive,
        )
        self.engine = Engine(
            analyzer, gallery, settings, self.events.append, challenger=self.challenger
        )

    def show(self, image: ImageArray) -> None:
        self.now = self.frame_no / FPS
        self.engine.process(
            Frame(image=image, number=self.frame_no, captured_at=self.now, position=self.now)
        )
        self.frame_no += 1

    def of(self, kind: type[E]) -> list[E]:
        return [e for e in self.events if isinstance(e, kind)]


@dataclass(frozen=True)
class Outcome:
    subject: str
    direction: str | None
    result: LivenessResult | None
    access_on_greeting: str | None

    @property
    def passed(self) -> bool:
        return self.result is not None and self.result.passed


def run(rig: Rig, subject: Subject, *, seconds: float = 15.0) -> Outcome:
    """Show `subject` until its challenge ends (or `seconds` of stream time pass); what
    happened before the call does not count."""
    start, before = rig.now, len(rig.events)
    asked: LivenessChallenge | None = None
    asked_at = 0.0

    def since_start(kind: type[E]) -> list[E]:
        return [e for e in rig.events[before:] if isinstance(e, kind)]

    while rig.now - start < seconds:
        rig.show(subject.look(asked, rig.now - asked_at))
        if asked is None and (challenges := since_start(LivenessChallenge)):
            asked, asked_at = challenges[-1], rig.now
        if since_start(LivenessResult):
            break
    greeted = since_start(PersonRecognized)
    results = since_start(LivenessResult)
    return Outcome(
        subject.name,
        None if asked is None else asked.direction,
        results[-1] if results else None,
        greeted[-1].access if greeted else None,
    )
