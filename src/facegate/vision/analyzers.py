"""Open the analyzer of the configured model pack (the one place that knows every family)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import msgspec
import numpy as np
import numpy.typing as npt

from facegate.settings import Settings, models_dir
from facegate.vision.face import BBox, Detection, Face, FaceAnalyzer, ImageArray
from facegate.vision.headpose import geometry_pose
from facegate.vision.modelpack import ModelPackError, require_pack


def open_analyzer(settings: Settings) -> FaceAnalyzer:
    """The configured pack's analyzer; raises ModelPackError with the fixing command."""
    pack = settings.models.pack
    pack_dir = require_pack(
        models_dir(settings), pack, allow_download=settings.models.allow_download
    )
    if pack == "faceplugin":
        from facegate.vision.faceplugin import FacepluginAnalyzer

        return FacepluginAnalyzer(pack_dir, settings.detection, threads=settings.models.threads)
    from facegate.vision.insightface_pack import InsightFaceAnalyzer

    return InsightFaceAnalyzer(
        pack_dir, settings.detection, threads=settings.models.threads, name=pack
    )


def describe_cheaply(analyzer: FaceAnalyzer, image: ImageArray, detection: Detection) -> Face:
    """The embedding plus a pose good enough for the quality gate, as cheaply as the pack
    allows: from the dense landmarks the detection already carries where the pack has them
    (faceplugin's 68 points: no pose model run), else from the pack's own pose estimate.
    (A registration, which needs the accurate pose, calls `describe(..., pose=True)`.)"""
    points = detection.dense_landmarks
    if points is None:
        return analyzer.describe(image, detection, embed=True, pose=True)
    face = analyzer.describe(image, detection, embed=True, pose=False)
    yaw, pitch, roll = geometry_pose(points)
    return msgspec.structs.replace(face, yaw=yaw, pitch=pitch, roll=roll)


LandmarkFn = Callable[[ImageArray, Detection], npt.NDArray[np.float32]]
PassiveFn = Callable[[ImageArray, BBox], float]


def liveness_pack(settings: Settings) -> Path | None:
    """The default pack's folder, which the liveness challenge's models come from (None with
    the challenge off); ModelPackError saying how to get it when it is not installed (`serve`
    and `run` ask before they start, so the gate does not fail halfway through starting)."""
    if settings.liveness.challenge == "off":
        return None
    try:
        return require_pack(models_dir(settings), "faceplugin", allow_download=False)
    except ModelPackError as exc:
        raise ModelPackError(
            f"[liveness] challenge = {settings.liveness.challenge!r} needs the default pack's"
            f" landmark and liveness models beside the {settings.models.pack} pack: {exc}"
        ) from None


def liveness_models(
    settings: Settings, analyzer: FaceAnalyzer
) -> tuple[LandmarkFn | None, PassiveFn | None]:
    """What the liveness challenge needs beside the analyzer: the 68 landmarks where the pack's
    detections lack them, and the passive score's model (when `liveness.passive_score`). Both
    come from the default pack, which must then be installed beside an InsightFace pack
    (ModelPackError with the fixing command otherwise). (None, None) with the challenge off."""
    cfg = settings.liveness
    pack_dir = liveness_pack(settings)
    if pack_dir is None:
        return None, None
    from facegate.vision.faceplugin import Landmarks68
    from facegate.vision.passive_liveness import PassiveLiveness

    own = analyzer.name == "faceplugin"
    threads = settings.models.threads
    landmarks = None if own else Landmarks68(pack_dir, threads)
    passive = PassiveLiveness(pack_dir, threads).score if cfg.passive_score else None
    return landmarks, passive
