"""Fakes that isolate server logic from the models (never a stand-in for a feature under test)."""

from __future__ import annotations

from facegate.face import Detection, Face, ImageArray, StageTimings


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
