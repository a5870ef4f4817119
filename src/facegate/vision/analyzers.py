"""Open the analyzer of the configured model pack (the one place that knows every family)."""

from __future__ import annotations

from facegate.settings import Settings, models_dir
from facegate.vision.face import FaceAnalyzer
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
