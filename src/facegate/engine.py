"""The live engine: frames in, typed events out, on one inference thread.

Per processed frame: detect; associate detections with tracks; embed only the faces that
need it (a new track, an identity not yet settled, a clearly better view, a periodic
re-check, or an ambiguous association); identify through the gallery; settle identities by
vote; time the stability of unknown faces. Events:
- `person_recognized` once per appearance of a known person (a track, or the same person
  coming back before `left_after_seconds`),
- `unknown_person_detected` once per track that is settled as nobody known and has been
  usable and still for `stable_seconds`,
- `person_left_area` when a track has not been seen for `left_after_seconds`,
- `source_status` from the capture.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

import msgspec
import numpy as np
import numpy.typing as npt

from facegate.enrolment import quality_score, thumbnail_jpeg
from facegate.events import (
    Event,
    PersonLeftArea,
    PersonRecognized,
    SystemReady,
    UnknownPersonDetected,
)
from facegate.face import Detection, Face, FaceAnalyzer
from facegate.gallery import Gallery
from facegate.headpose import geometry_pose
from facegate.monitor import Monitor
from facegate.quality import QualityValidator
from facegate.registration import Observation
from facegate.settings import Settings
from facegate.sources import Capture, Frame
from facegate.tracking import Track, Tracker, iou

Publish = Callable[[Event], None]
# A view at least this much larger than the last embedded one is worth embedding again.
BETTER_VIEW = 1.25
# Until settled, a track is embedded at most this often (seconds of stream time); a track
# whose last view was unusable (too small, dark, blurred, turned away) waits longer.
UNSETTLED_INTERVAL = 0.1
UNUSABLE_INTERVAL = 0.5


class Engine:
    """Processes frames from a Capture and publishes events. Owns a stop event."""

    def __init__(
        self,
        analyzer: FaceAnalyzer,
        gallery: Gallery,
        settings: Settings,
        publish: Publish,
        *,
        monitor: Monitor | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.analyzer = analyzer
        self.gallery = gallery
        self.settings = settings
        self.publish = publish
        self.monitor = monitor or Monitor(clock=clock)
        self.clock = clock
        self.tracker = Tracker(settings.engine)
        self.validator = QualityValidator(settings.quality)
        self.stop_event = threading.Event()
        # person id -> last time seen in any track; greeted persons are "present" until
        # unseen for left_after_seconds: one greeting per appearance, across tracks.
        self._person_seen: dict[str, float] = {}
        self._present: dict[str, Track] = {}
        # When set (by the registration machine), no unknown is offered for registration.
        self.prompts_paused = threading.Event()
        self.latest_frame: Frame | None = None
        # Registration: the track being captured (set by the registrar), where its face of
        # every frame goes, and a JPEG of its most frontal view for the thumbnail.
        self.registering: int | None = None
        self.on_observation: Callable[[Observation], None] | None = None
        self.registration_thumbnail: bytes | None = None
        self._thumbnail_offset = math.inf
        self._time_offset = 0.0
        self._last_time = -math.inf
        self.latest_tracks: list[Track] = []

    # -- the loop ----------------------------------------------------------------------------
    def run(self, capture: Capture) -> None:
        """Process frames until stopped or the source ends (a finished file)."""
        self._emit(SystemReady(message="System ready"), None)
        counted = 0
        while not self.stop_event.is_set():
            frame = capture.next_frame(timeout=0.1)
            self.monitor.frames_dropped(capture.dropped)
            if capture.captured > counted:
                self.monitor.frame_captured(capture.captured - counted)
                counted = capture.captured
            if frame is None:
                if capture.ended:
                    break
                if self._last_time == -math.inf:  # live source: the capture clock
                    self._expire(self.clock())
                continue
            self.process(frame)
        # Everyone still in view leaves with the end of the stream.
        self._expire(math.inf)

    def stop(self) -> None:
        self.stop_event.set()

    # -- one frame ---------------------------------------------------------------------------
    def frame_time(self, frame: Frame) -> float:
        """The stream's own time: a file's position (monotonic across loops) when it has one,
        so a file processed as fast as possible still times stability in video seconds;
        else the capture clock."""
        if frame.position is None:
            return frame.captured_at
        if frame.position + self._time_offset < self._last_time:
            self._time_offset = self._last_time - frame.position + 1e-3  # the file looped
        self._last_time = frame.position + self._time_offset
        return self._last_time

    def process(self, frame: Frame) -> list[Track]:
        now = self.frame_time(frame)
        t0 = time.perf_counter()
        detections = self.analyzer.detect(frame.image)
        timings = self.analyzer.timings
        self.monitor.stage("detect", timings.detect + timings.landmarks)
        registering = self._registering_index(detections)
        need = self._needs_embedding(detections, now)
        if registering is not None:  # described below, with the full pose model
            need = [i for i in need if i != registering]
        embeddings: dict[int, npt.NDArray[np.float32]] = {}
        described: dict[int, Face] = {}
        for i in [*need, *([registering] if registering is not None else [])]:
            t_embed = time.perf_counter()
            if i == registering:
                face = self.analyzer.describe(frame.image, detections[i], embed=True, pose=True)
            else:
                face = self._describe(frame, detections[i])
            self.monitor.stage("embed", (time.perf_counter() - t_embed) * 1e3)
            if face.embedding is not None:
                embeddings[i] = face.embedding
                described[i] = face
        seen, _ = self.tracker.associate(detections, embeddings, now)
        search_ms = 0.0
        for i, track in enumerate(seen):
            if i in described:
                t_search = time.perf_counter()
                self._identify(track, described[i], now)
                search_ms += (time.perf_counter() - t_search) * 1e3
            if track.identity is not None:
                self._person_seen[track.identity] = now
            self._announce(track, frame, now)
        if described:
            self.monitor.stage("search", search_ms)
        self._observe_registering(frame, seen, described)
        self._expire(now)
        self.monitor.stage("frame", (time.perf_counter() - t0) * 1e3)
        self.monitor.frame_processed()
        self.latest_frame = frame
        self.latest_tracks = list(self.tracker.tracks.values())
        return seen

    def _registering_index(self, detections: list[Detection]) -> int | None:
        """The detection of the face being registered, if a registration is capturing."""
        if self.registering is None or self.on_observation is None:
            self._thumbnail_offset = math.inf
            return None
        for i, det in enumerate(detections):
            track = self._likely_track(det)
            if track is not None and track.id == self.registering:
                return i
        return None

    def _observe_registering(
        self, frame: Frame, seen: list[Track], described: dict[int, Face]
    ) -> None:
        """The registering face (described with the full pose model) to the registration."""
        callback = self.on_observation
        for i, track in enumerate(seen):
            if callback is None or track.id != self.registering or i not in described:
                continue
            face = described[i]
            usable = self.validator.for_enrolment(face).usable
            if usable and face.yaw is not None and face.pitch is not None:
                offset = abs(face.yaw) + abs(face.pitch)
                if offset < self._thumbnail_offset:
                    self._thumbnail_offset = offset
                    self.registration_thumbnail = thumbnail_jpeg(face)
            callback(
                Observation(
                    track_id=track.id,
                    frame=frame.number,
                    yaw=face.yaw,
                    pitch=face.pitch,
                    usable=usable,
                    embedding=face.embedding,
                    bbox=face.bbox,
                    quality=quality_score(face),
                )
            )
            return

    def _describe(self, frame: Frame, detection: Detection) -> Face:
        """Embedding plus a pose for the quality gate: from the dense landmarks where the pack
        has them (free), else from the pack's pose model."""
        points = detection.dense_landmarks
        if points is None:
            return self.analyzer.describe(frame.image, detection, embed=True, pose=True)
        face = self.analyzer.describe(frame.image, detection, embed=True, pose=False)
        yaw, pitch, roll = geometry_pose(points)
        return msgspec.structs.replace(face, yaw=yaw, pitch=pitch, roll=roll)

    def _needs_embedding(self, detections: list[Detection], now: float) -> list[int]:
        """Which detections to embed this frame (not every face on every frame), most urgent
        first, at most `max_embeddings_per_frame`: ambiguous associations, then new faces,
        then unsettled tracks, better views and re-checks; the rest wait for later frames
        (their tracks are still followed by their boxes)."""
        cfg = self.settings.engine
        urgent = set(self.tracker.ambiguous(detections))
        need = set(urgent)
        new: set[int] = set()
        for i, det in enumerate(detections):
            track = self._likely_track(det)
            if track is None:
                new.add(i)  # a new face
            elif track.identity is None and not track.settled_unknown:
                wait = UNSETTLED_INTERVAL if track.usable else UNUSABLE_INTERVAL
                if now - track.embedded_at >= wait:
                    need.add(i)  # not settled yet
            elif det.size >= BETTER_VIEW * track.embedded_size:
                need.add(i)  # a clearly better view
            elif now - track.embedded_at >= cfg.recheck_seconds:
                need.add(i)  # periodic re-check
        need |= new

        def urgency(i: int) -> tuple[bool, bool, float]:
            return (i not in urgent, i not in new, -detections[i].size)

        return sorted(need, key=urgency)[: cfg.max_embeddings_per_frame]

    def _likely_track(self, det: Detection) -> Track | None:
        best, best_iou = None, self.settings.engine.min_iou
        for track in self.tracker.tracks.values():
            overlap = iou(track.bbox, det.bbox)
            if overlap >= best_iou:
                best, best_iou = track, overlap
        return best

    def _identify(self, track: Track, face: Face, now: float) -> None:
        assert face.embedding is not None
        gate = self.validator.for_recognition(face)
        track.embedding = face.embedding
        track.embedded_at = now
        track.embedded_size = face.size
        track.yaw, track.pitch = face.yaw, face.pitch
        track.usable = gate.usable
        if not gate.usable:
            return  # a poor view is not a vote
        result = self.gallery.identify(face.embedding[None, :])[0]
        similarity = result.similarity if result.similarity is not None else -1.0
        weight = min(1.0, face.size / 112.0) * float(face.det_score)
        self.tracker.vote(track, result.person_id, similarity, weight)

    def _announce(self, track: Track, frame: Frame, now: float) -> None:
        if track.announced:
            return
        bbox = [round(v, 1) for v in track.bbox]
        if track.identity is not None:
            track.announced = True
            if track.identity in self._present:
                return  # already greeted in this appearance (e.g. a new track after a gap)
            self._present[track.identity] = track
            name = self.gallery.name_of(track.identity) or track.identity
            sim = round(track.identity_similarity, 4)
            self._emit(
                PersonRecognized(
                    person_id=track.identity,
                    name=name,
                    message=f"Welcome, {name}!",
                    confidence=sim,
                    distance=round(1 - sim, 4),
                    track_id=track.id,
                    bbox=bbox,
                    frame_time=round(now, 3),
                ),
                frame.captured_at,
            )
            return
        h, w = frame.image.shape[:2]
        stable = self.tracker.update_stability(track, (h, w), now)
        if (
            track.settled_unknown
            and stable >= self.settings.engine.stable_seconds
            and not self.prompts_paused.is_set()
        ):
            track.announced = True
            best = max(track.best_similarity, 0.0) if self.gallery.person_count else 0.0
            self._emit(
                UnknownPersonDetected(
                    confidence=round(1 - best, 4),
                    distance=round(1 - best, 4),
                    track_id=track.id,
                    bbox=bbox,
                    frame_time=round(now, 3),
                ),
                frame.captured_at,
            )

    def _expire(self, now: float) -> None:
        left_after = self.settings.engine.left_after_seconds
        for track in self.tracker.expire(now):
            if track.announced and track.identity is None:
                self._left(track, None)
        for person_id, track in list(self._present.items()):
            if now - self._person_seen.get(person_id, -math.inf) >= left_after:
                del self._present[person_id]
                self._left(track, person_id)

    def _left(self, track: Track, person_id: str | None) -> None:
        name = self.gallery.name_of(person_id) if person_id else None
        self._emit(
            PersonLeftArea(
                message=f"{name} left the area" if name else "Person left the area",
                person_id=person_id,
                name=name,
                track_id=track.id,
                bbox=[round(v, 1) for v in track.bbox],
                frame_time=track.last_seen,
            ),
            None,
        )

    def _emit(self, event: Event, captured_at: float | None) -> None:
        self.monitor.event(event.__struct_config__.tag or "", captured_at)  # type: ignore[arg-type]
        self.publish(event)
