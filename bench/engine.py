"""`make bench`: the live engine on ../shared/data/video, one inference thread.

- as fast as possible (lockstep capture): processed fps of the engine, and of the naive
  pipeline (full analysis with embedding of every face in every frame) on the same clip in the
  same run, and their ratio;
- realtime pacing (the clip played at its own fps, as a camera): frames dropped, processed
  fps, and frame-to-event latency p50/p95 (frame captured -> event handed to the bus).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import msgspec

from facegate.events import Event
from facegate.identity.gallery import Gallery
from facegate.identity.store import NewEmbedding, Store
from facegate.live.engine import Engine
from facegate.live.sources import Capture, VideoFileSource
from facegate.settings import EngineSettings, Settings, load_settings, models_dir
from facegate.vision.faceplugin import FacepluginAnalyzer
from facegate.vision.images import read_image

VIDEO = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "video"
# Short clips: unknowns are offered after 0.5 s still (default 2 s) so that events happen.
SETTINGS = msgspec.structs.replace(Settings(), engine=EngineSettings(stable_seconds=0.5))
CLIPS = ("hamilton_short_clip.mp4", "intel_face-demographics-walking-and-pause.mp4")


def enrol(gallery: Gallery, analyzer: FacepluginAnalyzer) -> None:
    from facegate.vision.face import main_face

    for name in ("lin_manuel_miranda.png", "alex_lacamoire.png"):
        face, _ = main_face(analyzer, read_image(VIDEO / "enrol" / name))
        assert face is not None and face.embedding is not None
        gallery.create_person(name.split(".")[0], [NewEmbedding(face.embedding)], actor="bench")


def engine_run(
    analyzer: FacepluginAnalyzer, gallery: Gallery, clip: Path, *, realtime: bool
) -> tuple[Engine, Capture, float, int]:
    events: list[Event] = []
    capture = Capture(VideoFileSource(clip), realtime=realtime)
    engine = Engine(analyzer, gallery, SETTINGS, events.append)
    capture.start()
    t0 = time.perf_counter()
    engine.run(capture)
    wall = time.perf_counter() - t0
    capture.stop()
    return engine, capture, wall, len(events)


def naive_fps(analyzer: FacepluginAnalyzer, gallery: Gallery, clip: Path) -> float:
    """Every face of every frame: detect, landmarks, pose, embedding, search."""
    import cv2

    cap = cv2.VideoCapture(str(clip))
    frames = []
    while True:
        ok, img = cap.read()
        if not ok:
            break
        frames.append(img)
    t0 = time.perf_counter()
    for img in frames:
        for face in analyzer.analyze(img):
            assert face.embedding is not None
            gallery.identify(face.embedding[None, :])
    return len(frames) / (time.perf_counter() - t0)


def main() -> None:
    if not VIDEO.is_dir():
        sys.exit(f"{VIDEO} not found")
    analyzer = FacepluginAnalyzer(models_dir(load_settings()) / "faceplugin", threads=1)
    print("== live engine, one inference thread (onnxruntime intra-op threads = 1) ==")
    with tempfile.TemporaryDirectory() as tmp, Store.open(Path(tmp) / "d") as store:
        gallery = Gallery.open(store, Settings())
        enrol(gallery, analyzer)
        for name in CLIPS:
            clip = VIDEO / name
            engine, capture, wall, n_events = engine_run(analyzer, gallery, clip, realtime=False)
            snap = engine.monitor.snapshot()
            fps = snap.frames_processed / wall
            naive = naive_fps(analyzer, gallery, clip)
            print(
                f"{name}: as fast as possible {fps:.1f} fps ({snap.frames_processed} frames,"
                f" {n_events} events); naive {naive:.1f} fps; ratio {fps / naive:.2f}x"
            )
            st = snap.stages
            print(
                "  per frame (ms p50/p95): "
                + "  ".join(
                    f"{k} {v.p50_ms:.1f}/{v.p95_ms:.1f} (n={v.count})" for k, v in st.items()
                )
            )
            engine, capture, wall, n_events = engine_run(analyzer, gallery, clip, realtime=True)
            snap = engine.monitor.snapshot()
            total = capture.captured
            dropped = capture.dropped
            f2e = snap.frame_to_event
            print(
                f"  realtime: {total} frames captured in {wall:.1f} s, {dropped} dropped"
                f" ({100 * dropped / max(total, 1):.1f}%), processed {snap.frames_processed};"
                f" frame-to-event p50 {f2e.p50_ms:.1f} ms p95 {f2e.p95_ms:.1f} ms"
                f" ({f2e.count} events)"
            )
    print(f"(cpu count {os.cpu_count()})")


if __name__ == "__main__":
    main()
