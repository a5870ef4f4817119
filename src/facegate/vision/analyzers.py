"""Open the analyzer of the configured model pack (the one place that knows every family)."""

from __future__ import annotations

import msgspec

from facegate.settings import Settings, models_dir
from facegate.vision.face import Detection, Face, FaceAnalyzer, ImageArray
from facegate.vision.headpose import geometry_pose
from facegate.vision.modelpack import require_pack


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
