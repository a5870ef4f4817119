"""Fakes that isolate logic from hardware and models (never a stand-in for a feature under
test): an analyzer that finds nobody, and a scripted camera with a cooperative person."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Protocol

import numpy as np

from facegate.live.registration import Phase
from facegate.vision.face import Detection, Face, ImageArray, StageTimings

if TYPE_CHECKING:
    from facegate.server.runtime import Runtime


class Poses(Protocol):
    def looking(self, pose: str) -> ImageArray: ...


class ScriptedPerson:
    """A camera (10 fps, live) in front of which a cooperative person steps in (when `present`
    is set) and, during a registration, looks where the registration currently asks."""

    live = True
    fps: float | None = 10.0
    name = "scripted person"

    def __init__(self, person: Poses) -> None:
        self.person = person
        self.runtime: Runtime | None = None
        self.present = threading.Event()
        self.empty = np.full((480, 640, 3), 60, np.uint8)
        self.poses_shown: set[str] = set()

    def open(self) -> None:
        pass

    def read(self) -> ImageArray | None:
        time.sleep(0.1)
        if not self.present.is_set():
            return self.empty
        registrar = self.runtime.registrar if self.runtime is not None else None
        pose = None
        if registrar is not None and registrar.state.phase is Phase.CAPTURING:
            pose = registrar.state.pose
        pose = pose or "front"
        self.poses_shown.add(pose)
        return self.person.looking(pose)

    def close(self) -> None:
        pass


class NoFaces:
    """An analyzer that finds nobody: the engine loop runs, uploads decode, nothing is matched."""

    name = "none"
    embedding_size = 512
    timings = StageTimings()

    def detect(self, frame_bgr: ImageArray) -> list[Detection]:
        return []

    def describe(
        self, frame_bgr: ImageArray, detection: Detection, *, embed: bool = True, pose: bool = True
    ) -> Face:
        raise AssertionError("no face is ever detected")

    def analyze(
        self, frame_bgr: ImageArray, *, embed: bool = True, pose: bool = True
    ) -> list[Face]:
        return []
