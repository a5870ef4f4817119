"""The live engine on real clips and on scripted sources, with the real models."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import numpy as np
import pytest

from facegate.events import (
    Event,
    PersonLeftArea,
    PersonRecognized,
    SourceStatus,
    SystemReady,
    Tracks,
    UnknownPersonDetected,
)
from facegate.identity.enrolment import PhotoEnroller
from facegate.identity.gallery import Gallery
from facegate.identity.store import NewEmbedding, Store
from facegate.live.engine import Engine
from facegate.live.sources import Capture, Frame, SourceError, VideoFileSource
from facegate.live.tracking import iou
from facegate.settings import EngineSettings, Settings
from facegate.vision.face import ImageArray
from facegate.vision.faceplugin import FacepluginAnalyzer
from facegate.vision.images import read_image
from facegate.vision.quality import QualityValidator


def settings(**engine: float) -> Settings:
    return msgspec.structs.replace(Settings(), engine=EngineSettings(**engine))  # type: ignore[arg-type]


@pytest.fixture
def gallery(tmp_path: Path) -> Iterator[Gallery]:
    with Store.open(tmp_path / "data") as store:
        yield Gallery.open(store, Settings())


def run_engine(
    analyzer: FacepluginAnalyzer,
    gallery: Gallery,
    source: object,
    cfg: Settings,
    on_tracks: Callable[[Engine, Tracks], None] | None = None,
) -> tuple[list[Event], Engine]:
    events: list[Event] = []
    capture = Capture(source, on_status=events.append)  # type: ignore[arg-type]
    engine = Engine(analyzer, gallery, cfg, events.append)
    if on_tracks is not None:
        engine.on_tracks = lambda view: on_tracks(engine, view)
    capture.start()
    try:
        engine.run(capture)
    finally:
        capture.stop()
    return events, engine


def of(events: list[Event], kind: type[Event]) -> list[Event]:
    return [e for e in events if isinstance(e, kind)]


# -- real clips ------------------------------------------------------------------------------
def enrol_hamilton_cast(
    analyzer: FacepluginAnalyzer, gallery: Gallery, shared_data: Path
) -> dict[str, str]:
    folder = shared_data / "video" / "enrol"
    with (folder / "manifest.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    enroller = PhotoEnroller(gallery, analyzer, QualityValidator(Settings().quality))
    ids = {}
    for identity in sorted({r["identity"] for r in rows}):
        photos = [
            (r["path"], read_image(folder / r["path"])) for r in rows if r["identity"] == identity
        ]
        result = enroller.enrol(photos, name=identity)
        assert result.person_id is not None, result.refused
        ids[result.person_id] = identity
    return ids


def test_hamilton_clip_recognises_the_enrolled_and_nobody_else(
    analyzer: FacepluginAnalyzer, gallery: Gallery, shared_data: Path
) -> None:
    """Both people of the clip are enrolled from their photos. Lin-Manuel Miranda, on stage,
    is recognised once per appearance; the audience is never taken for either of them.
    (Alex Lacamoire appears only at the piano in the first second, a 34 px face turned 36 deg,
    similarity 0.24 to his photos: below what this model can recognise; see the issue note.)"""
    ids = enrol_hamilton_cast(analyzer, gallery, shared_data)
    source = VideoFileSource(shared_data / "video" / "hamilton_short_clip.mp4")
    events, _ = run_engine(analyzer, gallery, source, Settings())
    assert isinstance(events[0], SourceStatus | SystemReady)
    recognised = of(events, PersonRecognized)
    assert {e.name for e in recognised} == {"lin_manuel_miranda"}  # type: ignore[attr-defined]
    # One greeting per appearance: greetings and departures of a person alternate.
    for person in ids:
        seq = [
            type(e).__name__
            for e in events
            if isinstance(e, PersonRecognized | PersonLeftArea)
            and getattr(e, "person_id", None) == person
        ]
        assert seq == ["PersonRecognized", "PersonLeftArea"] * (len(seq) // 2)
    assert len(recognised) == 1
    assert of(events, SourceStatus)[-1].state == "ended"  # type: ignore[attr-defined]


def test_hamilton_no_box_outlives_its_face_and_no_name_lands_on_another_face(
    analyzer: FacepluginAnalyzer, gallery: Gallery, shared_data: Path
) -> None:
    """Every `tracks` view of the clip (its three camera cuts included) is audited against the
    frame it describes: each box is a detection of that very frame (no ghost), and each named
    box's own face, embedded afresh, reaches the threshold for the person it is named."""
    ids = enrol_hamilton_cast(analyzer, gallery, shared_data)
    threshold = Settings().recognition.threshold
    audit = {"views": 0, "boxes": 0, "ghosts": 0, "named": 0, "wrong": 0}
    worst: list[float] = []

    def check(engine: Engine, view: Tracks) -> None:
        frame = engine.latest_frame
        assert frame is not None and frame.number == view.frame
        detections = analyzer.detect(frame.image)
        audit["views"] += 1
        for track in view.tracks:
            audit["boxes"] += 1
            det = max(detections, key=lambda d: iou(d.bbox, tuple(track.bbox)), default=None)
            if det is None or iou(det.bbox, tuple(track.bbox)) < 0.99:
                audit["ghosts"] += 1
                continue
            if track.person_id is None:
                assert track.state != "known" and track.name is None
                continue
            audit["named"] += 1
            assert track.state == "known" and track.name == ids[track.person_id]
            face = analyzer.describe(frame.image, det, embed=True, pose=False)
            assert face.embedding is not None
            found = gallery.identify(face.embedding[None, :])[0]
            own = next(
                (c.similarity for c in found.candidates if c.person_id == track.person_id), -1.0
            )
            worst.append(own)
            if own < threshold:
                audit["wrong"] += 1

    source = VideoFileSource(shared_data / "video" / "hamilton_short_clip.mp4")
    _, engine = run_engine(analyzer, gallery, source, Settings(), on_tracks=check)
    print(
        f"\nhamilton: {audit['views']} views, {audit['boxes']} boxes, {audit['ghosts']} ghost"
        f" boxes, {audit['named']} named boxes, {audit['wrong']} named below the threshold"
        f" (lowest own similarity {min(worst, default=float('nan')):.3f}), {engine.cuts} scene cuts"
    )
    assert audit["views"] >= 250 and audit["named"] > 0
    assert audit["ghosts"] == 0
    assert audit["wrong"] == 0
    assert engine.cuts >= 3  # the clip's three camera cuts


def test_people_who_stop_are_offered_registration_walkers_are_not(
    analyzer: FacepluginAnalyzer, gallery: Gallery, shared_data: Path
) -> None:
    """Three people walk up to the camera (about 2 s) and pause. With an empty gallery,
    unknown_person_detected comes only once they have paused, once per person."""
    source = VideoFileSource(
        shared_data / "video" / "intel_face-demographics-walking-and-pause.mp4"
    )
    events, _ = run_engine(analyzer, gallery, source, settings(stable_seconds=0.5))
    unknowns = of(events, UnknownPersonDetected)
    assert len(unknowns) >= 2
    assert all(e.frame_time is not None and e.frame_time >= 2.0 for e in unknowns)  # type: ignore[attr-defined]
    tracks = [e.track_id for e in unknowns]  # type: ignore[attr-defined]
    assert len(tracks) == len(set(tracks))
    assert of(events, PersonRecognized) == []
    # Everyone announced leaves when the clip ends.
    left = {e.track_id for e in of(events, PersonLeftArea)}  # type: ignore[attr-defined]
    assert set(tracks) <= left


# -- scripted sources ------------------------------------------------------------------------
class ScriptedSource:
    """Frames from a list (None = a frame with nobody), at a fixed fps; may fail at a frame."""

    live = False

    def __init__(self, frames: list[ImageArray], fps: float = 10.0, fail_at: int | None = None):
        self.frames = frames
        self.fps = fps
        self.fail_at = fail_at
        self.name = "scripted"
        self._i = 0

    def open(self) -> None:
        self._i = 0

    def read(self) -> ImageArray | None:
        if self._i == self.fail_at:
            raise SourceError("scripted: the camera died")
        if self._i >= len(self.frames):
            return None
        frame = self.frames[self._i]
        self._i += 1
        return frame

    def close(self) -> None:
        pass


def canvas(face: ImageArray, x: int, y: int, size: tuple[int, int] = (640, 480)) -> ImageArray:
    out = np.full((size[1], size[0], 3), 90, np.uint8)
    h, w = face.shape[:2]
    out[y : y + h, x : x + w] = face
    return out


def pointing_face(
    shared_data: Path, identity: str, series: str = "2", *, crop: bool = True
) -> ImageArray:
    """A frontal Pointing'04 photo of `identity` (yaw 0, pitch 0), cropped around the face."""
    root = shared_data / "pose" / "pointing04"
    with (root / "manifest.csv").open() as fh:
        row = next(
            r
            for r in csv.DictReader(fh)
            if (r["identity"], r["series"], r["yaw"], r["pitch"]) == (identity, series, "0", "0")
        )
    img = read_image(root / row["path"])
    if not crop:
        return img
    cx, cy = int(row["face_cx"]), int(row["face_cy"])
    return np.ascontiguousarray(img[max(0, cy - 110) : cy + 110, max(0, cx - 90) : cx + 90])


@pytest.fixture(scope="module")
def person(shared_data: Path) -> ImageArray:
    """A frontal Pointing'04 face (person 01, series 2), cropped around the face."""
    return pointing_face(shared_data, "p04_person01")


def test_a_still_unknown_face_is_offered_once_after_stable_seconds(
    analyzer: FacepluginAnalyzer, gallery: Gallery, person: ImageArray
) -> None:
    frames = [canvas(person, 230, 130)] * 40  # 4 s at 10 fps
    events, _ = run_engine(analyzer, gallery, ScriptedSource(frames), settings(stable_seconds=2.0))
    unknowns = of(events, UnknownPersonDetected)
    assert len(unknowns) == 1
    assert 2.0 <= unknowns[0].frame_time <= 2.6  # type: ignore[attr-defined]
    assert unknowns[0].person_id is None and unknowns[0].show_registration_dialog  # type: ignore[attr-defined]


def test_a_moving_face_or_one_at_the_edge_is_never_offered(
    analyzer: FacepluginAnalyzer, gallery: Gallery, person: ImageArray
) -> None:
    moving = [canvas(person, 40 + 10 * i, 130) for i in range(40)]  # crossing the frame
    events, _ = run_engine(analyzer, gallery, ScriptedSource(moving), settings(stable_seconds=1.0))
    assert of(events, UnknownPersonDetected) == []
    edge = [canvas(person, 0, 130)] * 40  # touching the left edge
    events, _ = run_engine(analyzer, gallery, ScriptedSource(edge), settings(stable_seconds=1.0))
    assert of(events, UnknownPersonDetected) == []


def test_known_person_greeted_once_per_appearance(
    analyzer: FacepluginAnalyzer, gallery: Gallery, person: ImageArray
) -> None:
    face = analyzer.analyze(canvas(person, 230, 130))[0]
    assert face.embedding is not None
    gallery.create_person("Pat", [NewEmbedding(face.embedding)], actor="test")
    empty = np.full((480, 640, 3), 90, np.uint8)
    present = [canvas(person, 230, 130)] * 15
    gap = [empty] * 3  # 0.3 s: a detection gap, the same appearance
    away = [empty] * 40  # 4 s: gone (left_after_seconds = 3)
    frames = present + gap + present + away + present
    events, _ = run_engine(analyzer, gallery, ScriptedSource(frames), Settings())
    kinds = [type(e).__name__ for e in events if isinstance(e, PersonRecognized | PersonLeftArea)]
    assert kinds == ["PersonRecognized", "PersonLeftArea", "PersonRecognized", "PersonLeftArea"]
    assert all(e.name == "Pat" for e in of(events, PersonRecognized))  # type: ignore[attr-defined]
    assert of(events, UnknownPersonDetected) == []


def test_a_person_enrolled_from_photos_while_in_view_is_greeted_within_recheck_seconds(
    analyzer: FacepluginAnalyzer, gallery: Gallery, person: ImageArray, shared_data: Path
) -> None:
    """A stranger stands in view (settled as unknown, offered); meanwhile someone enrols
    them from another photo: the engine identifies its unknown faces afresh and greets them."""
    photo = analyzer.analyze(pointing_face(shared_data, "p04_person01", "1", crop=False))[0]
    assert photo.embedding is not None
    events: list[Event] = []
    cfg = settings(stable_seconds=0.5)
    engine = Engine(analyzer, gallery, cfg, events.append)
    frame = canvas(person, 230, 130)
    enrolled_at = None
    for n in range(60):
        engine.process(Frame(image=frame, number=n, captured_at=n / 10, position=n / 10))
        if of(events, UnknownPersonDetected) and enrolled_at is None:
            gallery.create_person("Ada", [NewEmbedding(photo.embedding)], actor="test")
            enrolled_at = n / 10
    assert enrolled_at is not None
    greeted = of(events, PersonRecognized)
    assert [e.name for e in greeted] == ["Ada"]  # type: ignore[attr-defined]
    waited = greeted[0].frame_time - enrolled_at  # type: ignore[attr-defined]
    assert waited <= cfg.engine.recheck_seconds, waited
    unknown_track = of(events, UnknownPersonDetected)[0].track_id  # type: ignore[attr-defined]
    assert greeted[0].track_id == unknown_track  # type: ignore[attr-defined]
    assert engine.unknowns.list() == []  # no longer a stranger


def test_a_face_that_leaves_has_no_box_and_a_cut_carries_no_name(
    analyzer: FacepluginAnalyzer, gallery: Gallery, person: ImageArray, shared_data: Path
) -> None:
    """The view lists a face only in the frames where it is detected. After a scene cut,
    another person at the very place of a named face is not given that name."""
    face = analyzer.analyze(canvas(person, 230, 130))[0]
    assert face.embedding is not None
    gallery.create_person("Pat", [NewEmbedding(face.embedding)], actor="test")
    cut_to = canvas(pointing_face(shared_data, "p04_person09"), 230, 130)
    cut_to[:, :, 0] = 200  # another scene: a blue set
    empty = np.full((480, 640, 3), 90, np.uint8)
    views: list[Tracks] = []
    events: list[Event] = []
    engine = Engine(analyzer, gallery, Settings(), events.append, on_tracks=views.append)
    script = [canvas(person, 230, 130)] * 10 + [empty] * 2 + [canvas(person, 230, 130)] * 5
    script += [cut_to] * 10
    for n, image in enumerate(script):
        engine.process(Frame(image=image, number=n, captured_at=n / 10, position=n / 10))
    states = [[(t.state, t.name) for t in v.tracks] for v in views]
    assert states[9] == [("known", "Pat")]
    assert states[10] == states[11] == []  # gone from the picture: no box at all
    assert states[16] == [("known", "Pat")]
    after = [s for v in states[17:] for s in v]
    assert after and all(name is None for _, name in after), after
    assert engine.cuts == 1
    assert [e.name for e in of(events, PersonRecognized)] == ["Pat"]  # type: ignore[attr-defined]


def test_a_source_that_dies_mid_stream_ends_the_run_with_an_event(
    analyzer: FacepluginAnalyzer, gallery: Gallery, person: ImageArray
) -> None:
    frames = [canvas(person, 230, 130)] * 30
    events, engine = run_engine(analyzer, gallery, ScriptedSource(frames, fail_at=12), Settings())
    states = [e.state for e in of(events, SourceStatus)]  # type: ignore[attr-defined]
    assert "unavailable" in states
    assert engine.monitor.snapshot().frames_processed == 12


# -- the headless command --------------------------------------------------------------------
def run_walkers(shared_data: Path, tmp_path: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    """`facegate run --json` on the walking-and-pause clip (stable after 0.5 s), own data dir."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACEGATE_")}
    env["FACEGATE_HOME"] = str(tmp_path / "data")
    env["FACEGATE_ENGINE_STABLE_SECONDS"] = "0.5"
    clip = shared_data / "video" / "intel_face-demographics-walking-and-pause.mp4"
    return subprocess.run(
        [sys.executable, "-m", "facegate.cli", "run", "--source", str(clip), "--json", *flags],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


def test_run_prints_events_and_exits_at_the_end_of_a_file(
    shared_data: Path, tmp_path: Path, faceplugin_dir: Path
) -> None:
    out = run_walkers(shared_data, tmp_path)
    assert out.returncode == 0, out.stderr
    lines = [msgspec.json.decode(line) for line in out.stdout.splitlines()]
    types = [line["type"] for line in lines]
    assert types[0] in ("system_ready", "source_status")
    assert "unknown_person_detected" in types
    seqs = [line["data"]["seq"] for line in lines]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert all(line["data"]["timestamp"] for line in lines)
    assert {line["data"]["gate_id"] for line in lines} == {"gate"}  # the gate's id (gate.id)
    # The history kept them too.
    with Store.open(tmp_path / "data", readonly=True) as store:
        logged = store.events(gate="gate")  # the gate's own, oldest first
    assert [e.seq for e in logged] == seqs


def test_run_tracks_prints_the_faces_of_every_processed_frame(
    shared_data: Path, tmp_path: Path, faceplugin_dir: Path
) -> None:
    out = run_walkers(shared_data, tmp_path, "--tracks")
    assert out.returncode == 0, out.stderr
    lines = [msgspec.json.decode(line) for line in out.stdout.splitlines()]
    views = [line["data"] for line in lines if line["type"] == "tracks"]
    frames = [v["frame"] for v in views]
    assert frames == list(range(len(frames))) and len(frames) == 41  # every processed frame
    assert all(v["width"] > 0 and v["height"] > 0 and v["threshold"] > 0 for v in views)
    times = [v["frame_time"] for v in views]
    assert times == sorted(times)
    faces = [t for v in views for t in v["tracks"]]
    assert faces and all(t["state"] in ("pending", "unknown") for t in faces)  # nobody enrolled
    assert all(t["name"] is None and t["similarity"] is None for t in faces)
    # Events are still there, and frame_time in events is the same stream time.
    unknown = next(line["data"] for line in lines if line["type"] == "unknown_person_detected")
    assert unknown["similarity"] is None and unknown["enrolled"] == 0
    assert "no one enrolled yet" in unknown["message"]
    assert unknown["frame_time"] in times
    # Without --tracks: events only.
    plain = run_walkers(shared_data, tmp_path)
    assert plain.returncode == 0 and '"tracks"' not in plain.stdout


def test_run_stops_cleanly_on_sigterm(
    shared_data: Path, tmp_path: Path, faceplugin_dir: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACEGATE_")}
    env["FACEGATE_HOME"] = str(tmp_path / "data")
    clip = shared_data / "video" / "hamilton_short_clip.mp4"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "facegate.cli",
            "run",
            "--source",
            str(clip),
            "--loop",
            "--realtime",
            "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # the engine is running
        assert first
        time.sleep(1.0)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=5)
        assert time.monotonic() - t0 < 2.0
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
