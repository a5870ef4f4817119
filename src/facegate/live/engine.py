"""The live engine: frames in, typed events out, on one inference thread.

Per processed frame: detect; associate detections with tracks; embed only the faces that
need it (a new track, an identity not yet settled, a clearly better view, a periodic
re-check, or an ambiguous association); identify through the gallery; settle identities by
vote; time the stability of unknown faces. Events:
- `person_recognized` once per appearance of a known person (a track, or the same person
  coming back before `left_after_seconds`), also when a track first settled as unknown turns
  out to be someone (just registered on it: `RegistrationFocus.adopt`; or enrolled from
  photos meanwhile: every unidentified track is identified afresh when the gallery changes),
- `unknown_person_detected` once per track that is settled as nobody known and has been
  usable and still for `stable_seconds`,
- `person_left_area` when a track has not been seen for `left_after_seconds`,
- `source_status` from the capture.

Every processed frame also yields a `Tracks` view (`latest_view`, and `on_tracks` when set):
only the tracks matched to a detection in that frame, each named only while its latest check
agrees with its identity. A scene cut (vision/scene.py, or most faces replaced at once) freezes the
old tracks, so no name continues onto whoever appears where a face was.

Recognition can be switched off and on (`set_recognition`, from any thread; the MQTT switch
`<prefix>/<gate>/recognition/set`). It takes effect at the next processed frame. Switching it
off: every person present leaves at once (`person_left_area`, named), every track forgets who
it was. While off the engine still detects and tracks faces (boxes, `tracks` views with every
face `pending`, or `registering`) but embeds and identifies nobody, greets nobody and offers
nobody; strangers already offered still leave when they go, and a registration under way still
captures its face (a face registered meanwhile is adopted, and greeted when recognition is on
again). Switching it on: the faces in view are identified afresh and greeted as on arrival.
Settings changed at run time (`update_settings`, any thread: `facegate serve`'s SIGHUP) are
taken the same way, before the next frame.

The liveness challenge (`[liveness] challenge`) is the engine's `Challenger` (challenge.py):
a known person is greeted with access "pending", the challenged face is described in full in
every frame and its views go to the challenge, which adds `liveness_challenge`,
`liveness_pose_feedback` and `liveness_result`; with "always" an unknown face is offered only
once it passed. Off, nothing of it runs (access "granted").

Registration talks to the engine only through its `RegistrationFocus` (focus.py), given at
construction: the face being registered is described with the full pose model on every frame
and handed on, prompts wait while a registration is under way, a registered track is adopted
as its person at the next frame, and each frame's track statuses are left there.
"""

from __future__ import annotations

import functools
import math
import threading
import time
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from facegate.events import (
    Event,
    PersonLeftArea,
    PersonRecognized,
    SystemReady,
    Tracks,
    TrackView,
    UnknownPersonDetected,
    type_name,
)
from facegate.identity.gallery import Gallery
from facegate.live.challenge import Challenger
from facegate.live.focus import RegistrationFocus, TrackStatus
from facegate.live.monitor import Monitor
from facegate.live.registration import Observation
from facegate.live.sources import Capture, Frame
from facegate.live.tracking import Track, Tracker, drift, shape
from facegate.live.unknowns import RecentUnknowns
from facegate.settings import Settings
from facegate.vision.analyzers import describe_cheaply
from facegate.vision.face import Detection, Face, FaceAnalyzer
from facegate.vision.images import thumbnail_jpeg
from facegate.vision.quality import QualityValidator, quality_score
from facegate.vision.scene import SceneCuts

Publish = Callable[[Event], None]
# A view at least this much larger than the last embedded one is worth embedding again.
BETTER_VIEW = 1.25
# Until settled, a track is embedded at most this often (seconds of stream time); a track
# whose last view was unusable (too small, dark, blurred, turned away) waits longer.
UNSETTLED_INTERVAL = 0.1
UNUSABLE_INTERVAL = 0.5
# A named face whose landmarks moved more than this (in face-box sizes) since it was last
# identified is identified again before its name is shown again: it may look different now.
SHAPE_DRIFT = 0.04


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
        unknowns: RecentUnknowns | None = None,
        on_tracks: Callable[[Tracks], None] | None = None,
        focus: RegistrationFocus | None = None,
        challenger: Challenger | None = None,
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
        # The hand-off with the registration runtime (which track is registered, where its
        # observations go, its thumbnail, paused prompts, adoptions): see focus.py.
        self.focus = focus if focus is not None else RegistrationFocus()
        # The liveness challenge (challenge.py): who turns their head before access is granted.
        self.challenger = challenger or Challenger(
            settings.liveness, feedback_interval=settings.registration.feedback_interval_seconds
        )
        # The latest processed frame with its faces, set together (readers on other threads
        # always get a frame and the view of that very frame).
        self.latest: tuple[Frame, Tracks] | None = None
        self._time_offset = 0.0
        self._last_time = -math.inf
        cfg = settings.engine
        self.unknowns = unknowns or RecentUnknowns(cfg.unknowns_kept, cfg.unknowns_keep_seconds)
        self.on_tracks = on_tracks
        self.scene = SceneCuts(cfg.scene_cut_distance)
        self.cuts = 0  # scene cuts seen
        self._previous: list[int] = []  # ids of the tracks seen in the previous frame
        self._gallery_version = gallery.version
        self._adopted: set[int] = set()  # tracks registered as a person (greeted as such)
        # Recognition on/off: asked for from any thread (`set_recognition`), applied by the
        # engine thread at its next frame (`_recognizing` is the engine thread's own).
        self._recognition_wanted = threading.Event()
        self._recognition_wanted.set()
        self._recognizing = True
        # New settings (`update_settings`, any thread), taken by the engine thread before a frame.
        self._settings_lock = threading.Lock()
        self._settings_wanted: Settings | None = None

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
                    self._follow_settings()
                    self._expire(self.clock())
                continue
            self.process(frame)
        # Everyone still in view leaves with the end of the stream.
        self._expire(math.inf)

    def stop(self) -> None:
        self.stop_event.set()

    # -- recognition on/off ------------------------------------------------------------------
    @property
    def recognition_enabled(self) -> bool:
        """Whether recognition is on (as last asked: applied from the engine's next frame)."""
        return self._recognition_wanted.is_set()

    def set_recognition(self, enabled: bool) -> None:
        """Switch recognition on or off (any thread); see the module docstring."""
        if enabled:
            self._recognition_wanted.set()
        else:
            self._recognition_wanted.clear()

    def _follow_switch(self) -> None:
        """Apply a change of `set_recognition` (the engine thread, before a frame)."""
        wanted = self._recognition_wanted.is_set()
        if wanted == self._recognizing:
            return
        self._recognizing = wanted
        if wanted:
            return  # the unidentified tracks are identified afresh from this frame on
        for person_id, track in list(self._present.items()):
            del self._present[person_id]
            for event in self.challenger.person_left(person_id, self._last_time):
                self._emit(event, None)
            self._left(track, person_id)
        self._person_seen.clear()
        self.challenger.reset()
        for track in self.tracker.tracks.values():
            if track.identity is not None or track.greeted is not None:
                track.announced = False  # greeted (and now gone), not offered: nothing to undo
            track.greeted = None
            self.tracker.forget_identity(track)

    # -- settings changed at run time ----------------------------------------------------------
    def update_settings(self, settings: Settings) -> None:
        """New settings (any thread; server/reload.py says which keys may change), taken at the
        next frame with what is derived from them: the tracker, the quality gates, the scene
        cuts, the recent unknowns' limits and the liveness challenge's."""
        with self._settings_lock:
            self._settings_wanted = settings

    def _follow_settings(self) -> None:
        """Take settings given by `update_settings` (the engine thread, before a frame)."""
        if self._settings_wanted is None:
            return
        with self._settings_lock:  # (this thread is the only one that empties it)
            settings, self._settings_wanted = self._settings_wanted, None
        cfg = settings.engine
        self.settings = settings
        self.tracker.settings = cfg
        self.validator = QualityValidator(settings.quality)
        self.scene.max_distance = cfg.scene_cut_distance
        self.unknowns.capacity = cfg.unknowns_kept
        self.unknowns.keep_seconds = cfg.unknowns_keep_seconds
        self.challenger.update_settings(
            settings.liveness, feedback_interval=settings.registration.feedback_interval_seconds
        )

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
        self._follow_settings()
        now = self.frame_time(frame)
        t0 = time.perf_counter()
        detections = self.analyzer.detect(frame.image)
        timings = self.analyzer.timings
        self.monitor.stage("detect", timings.detect + timings.landmarks)
        cut = self.scene.is_cut(frame.image)
        if (cut or self.tracker.replaces_faces(detections, self._previous)) and self.tracker.cut():
            self.cuts += 1
        self._follow_gallery()
        self._follow_switch()
        recognizing = self._recognizing
        registering = self._registering_index(detections)
        # The face being challenged (liveness), described in full in every frame like the
        # registering one.
        challenged = self._index_of(self.challenger.track, detections) if recognizing else None
        full = {i for i in (registering, challenged) if i is not None}
        need = self._needs_embedding(detections, now) if recognizing else []
        need = [i for i in need if i not in full]  # described below, with the full pose model
        embeddings: dict[int, npt.NDArray[np.float32]] = {}
        described: dict[int, Face] = {}
        for i in [*need, *sorted(full)]:
            t_embed = time.perf_counter()
            if i in full:
                face = self.analyzer.describe(frame.image, detections[i], embed=True, pose=True)
            else:
                face = describe_cheaply(self.analyzer, frame.image, detections[i])
            self.monitor.stage("embed", (time.perf_counter() - t_embed) * 1e3)
            if face.embedding is not None:
                embeddings[i] = face.embedding
                described[i] = face
        seen, _ = self.tracker.associate(detections, embeddings, now)
        search_ms = 0.0
        for i, track in enumerate(seen):
            if i in described and recognizing:
                t_search = time.perf_counter()
                self._identify(track, described[i], now)
                search_ms += (time.perf_counter() - t_search) * 1e3
        self._apply_adoptions()
        self.unknowns.frame(now)
        for i, track in enumerate(seen):
            if not recognizing:
                continue  # tracked, not identified: no greeting, no offer
            if track.identity is not None:
                self._person_seen[track.identity] = now
            self._note_unknown(track, described.get(i), now)
            if track.settled_unknown and track.identity is None and track.id != self.focus.track:
                self.challenger.settled_unknown(track.id)
            self._announce(track, frame, now)
        if recognizing:
            for event in self.challenger.frame(
                frame.image,
                seen,
                detections,
                described,
                now,
                described_in_full=None if challenged is None else seen[challenged].id,
                busy_track=self.focus.track,
            ):
                self._emit(event, frame.captured_at)
        if described:
            self.monitor.stage("search", search_ms)
        self._observe_registering(frame, seen, described, now)
        self._expire(now)
        self.monitor.stage("frame", (time.perf_counter() - t0) * 1e3)
        self.monitor.frame_processed()
        self._previous = [t.id for t in seen]
        view = self._view(frame, seen, now)
        self.latest = (frame, view)
        if self.on_tracks is not None:
            self.on_tracks(view)
        return seen

    @property
    def latest_frame(self) -> Frame | None:
        latest = self.latest
        return None if latest is None else latest[0]

    @property
    def latest_view(self) -> Tracks | None:
        """The faces of the latest processed frame (tracks matched to a detection in it)."""
        latest = self.latest
        return None if latest is None else latest[1]

    # -- what the frame shows ----------------------------------------------------------------
    def _view(self, frame: Frame, seen: list[Track], now: float) -> Tracks:
        h, w = frame.image.shape[:2]
        threshold = self.settings.recognition.threshold
        registering = self.focus.track
        views = []
        for track in seen:
            person = name = None
            similarity = None if track.best_similarity <= -1.0 else track.best_similarity
            if track.id == registering:
                state = "registering"
            elif not self._recognizing:
                state, similarity = "pending", None
            elif self._name_holds(track, now):
                assert track.identity is not None
                state, person = "known", track.identity
                name = self.gallery.name_of(person) or person
                similarity = track.checked_similarity
            elif track.settled_unknown:
                state = "unknown"
            else:
                state = "pending"
            if not self.gallery.person_count and state != "known":
                similarity = None
            liveness, instruction = self.challenger.view_of(track)
            views.append(
                TrackView(
                    track_id=track.id,
                    bbox=[round(v, 1) for v in track.bbox],
                    state=state,  # type: ignore[arg-type]
                    person_id=person,
                    name=name,
                    similarity=None if similarity is None else round(similarity, 4),
                    liveness=liveness,
                    instruction=instruction,
                )
            )
        return Tracks(
            frame=frame.number,
            frame_time=round(now, 3),
            scene=self.cuts,
            width=int(w),
            height=int(h),
            threshold=threshold,
            tracks=views,
        )

    @staticmethod
    def _name_holds(track: Track, now: float) -> bool:
        """Whether the track's name may be shown on its face in this frame: its latest check
        agreed, and the face was checked in this frame or has not changed since."""
        if track.identity is None or not track.confirmed:
            return False
        return track.embedded_at == now or (
            drift(track.checked_shape, shape(track.detection)) <= SHAPE_DRIFT
        )

    # -- identities that change outside the video ----------------------------------------------
    def _follow_gallery(self) -> None:
        """Someone was enrolled, renamed or erased: identify the unidentified tracks afresh
        (a person enrolled from photos while in view is greeted within a few frames) and
        forget an erased person wherever they are."""
        version = self.gallery.version
        if version == self._gallery_version:
            return
        self._gallery_version = version
        for track in self.tracker.tracks.values():
            erased = track.identity is not None and self.gallery.name_of(track.identity) is None
            if track.identity is None or erased:
                self.tracker.forget_identity(track)
        for person_id in [p for p in self._present if self.gallery.name_of(p) is None]:
            del self._present[person_id]  # erased: no departure under their id either
            self._person_seen.pop(person_id, None)
            self.challenger.person_left(person_id, math.inf)  # erased: nothing to tell

    def _apply_adoptions(self) -> None:
        """Tracks just registered as a person (`RegistrationFocus.adopt`): that person from
        now on, greeted at once and named when they leave."""
        for track_id, person_id in self.focus.take_adoptions().items():
            track = self.tracker.tracks.get(track_id)
            if track is None or self.gallery.name_of(person_id) is None:
                continue  # gone meanwhile (or already erased)
            similarity = self._similarity_to(track.embedding, person_id)
            self.tracker.adopt(track, person_id, similarity if similarity is not None else 1.0)
            self._adopted.add(track_id)

    def _similarity_to(
        self, embedding: npt.NDArray[np.float32] | None, person_id: str
    ) -> float | None:
        if embedding is None:
            return None
        result = self.gallery.identify(embedding[None, :])[0]
        return next((c.similarity for c in result.candidates if c.person_id == person_id), None)

    def _registering_index(self, detections: list[Detection]) -> int | None:
        """The detection of the face being registered, if a registration is capturing."""
        return self._index_of(self.focus.capturing, detections)

    def _index_of(self, track_id: int | None, detections: list[Detection]) -> int | None:
        """The detection that likely continues track `track_id` in this frame, if any."""
        if track_id is None:
            return None
        for i, det in enumerate(detections):
            track = self.tracker.likely(det)
            if track is not None and track.id == track_id:
                return i
        return None

    def _observe_registering(
        self, frame: Frame, seen: list[Track], described: dict[int, Face], now: float
    ) -> None:
        """The registering face (described with the full pose model) to the registration, and
        its view to the focus as a thumbnail candidate."""
        registering = self.focus.capturing
        for i, track in enumerate(seen):
            if registering is None or track.id != registering or i not in described:
                continue
            face = described[i]
            usable = self.validator.for_enrolment(face).usable
            self.focus.offer_view(
                track.id,
                usable=usable,
                yaw=face.yaw,
                pitch=face.pitch,
                jpeg=functools.partial(thumbnail_jpeg, face),
            )
            self.focus.observe(
                Observation(
                    track_id=track.id,
                    frame=frame.number,
                    yaw=face.yaw,
                    pitch=face.pitch,
                    usable=usable,
                    embedding=face.embedding,
                    bbox=face.bbox,
                    quality=quality_score(face),
                    frame_time=round(now, 3),
                    landmarks=track.detection.dense_landmarks,
                )
            )
            return

    def _needs_embedding(self, detections: list[Detection], now: float) -> list[int]:
        """Which detections to embed this frame (not every face on every frame), most urgent
        first, at most `max_embeddings_per_frame`: ambiguous associations, then new faces,
        then unsettled tracks, better views and re-checks; the rest wait for later frames
        (their tracks are still followed by their boxes)."""
        cfg = self.settings.engine
        close = self.settings.recognition.threshold + cfg.confirm_margin
        urgent = set(self.tracker.ambiguous(detections))
        need = set(urgent)
        new: set[int] = set()
        for i, det in enumerate(detections):
            track = self.tracker.likely(det)
            if track is None:
                new.add(i)  # a new face
            elif track.identity is None and not track.settled_unknown:
                wait = UNSETTLED_INTERVAL if track.usable else UNUSABLE_INTERVAL
                if now - track.embedded_at >= wait:
                    need.add(i)  # not settled yet
            elif (
                track.identity is not None and drift(track.checked_shape, shape(det)) > SHAPE_DRIFT
            ):
                need.add(i)  # a named face that turned or moved: check before naming it again
            elif track.identity is not None and (
                not track.confirmed or (track.checked_similarity or -1.0) < close
            ):
                need.add(i)  # a name near its limit (or in doubt): checked in every frame
            elif det.size >= BETTER_VIEW * track.embedded_size:
                need.add(i)  # a clearly better view
            elif now - track.embedded_at >= cfg.recheck_seconds:
                need.add(i)  # periodic re-check
        need |= new

        def urgency(i: int) -> tuple[bool, bool, float]:
            return (i not in urgent, i not in new, -detections[i].size)

        return sorted(need, key=urgency)[: cfg.max_embeddings_per_frame]

    def _identify(self, track: Track, face: Face, now: float) -> None:
        assert face.embedding is not None
        gate = self.validator.for_recognition(face)
        track.embedding = face.embedding
        track.embedded_at = now
        track.embedded_size = face.size
        track.yaw, track.pitch = face.yaw, face.pitch
        track.usable = gate.usable
        track.checked_shape = shape(track.detection)
        if not gate.usable and track.identity is None:
            return  # a poor view is not a vote, and there is no name to check
        result = self.gallery.identify(face.embedding[None, :])[0]
        if gate.usable:  # a poor view is not a vote
            similarity = result.similarity if result.similarity is not None else -1.0
            weight = min(1.0, face.size / 112.0) * float(face.det_score)
            self.tracker.vote(track, result.person_id, similarity, weight)
        # Even a poor view checks the name: it is shown only while the face still matches.
        if track.identity is not None:
            best = result.candidates[0] if result.candidates else None
            own = next(
                (c.similarity for c in result.candidates if c.person_id == track.identity), None
            )
            track.checked_similarity = own
            track.confirmed = (
                own is not None
                and own >= self.settings.recognition.threshold
                and best is not None
                and best.person_id == track.identity
            )

    def _note_unknown(self, track: Track, face: Face | None, now: float) -> None:
        """A face settled as nobody known, for the operator's list of recent unknowns."""
        if not track.settled_unknown or track.identity is not None:
            return
        similarity = (
            round(track.best_similarity, 4)
            if self.gallery.person_count and track.best_similarity > -1.0
            else None
        )
        if face is None or not track.usable:
            self.unknowns.seen(track.id, now, similarity)
            return
        self.unknowns.seen(
            track.id,
            now,
            similarity,
            score=quality_score(face),
            thumbnail=lambda: thumbnail_jpeg(face),
        )

    def _announce(self, track: Track, frame: Frame, now: float) -> None:
        bbox = [round(v, 1) for v in track.bbox]
        threshold = self.settings.recognition.threshold
        if track.identity is not None:
            if track.greeted == track.identity:
                return
            track.greeted, track.announced = track.identity, True
            self.unknowns.known(track.id)
            if track.identity in self._present:
                return  # already greeted in this appearance (e.g. a new track after a gap)
            self._present[track.identity] = track
            name = self.gallery.name_of(track.identity) or track.identity
            sim = round(track.identity_similarity, 4)
            registered = track.id in self._adopted
            access = self.challenger.greet(track.id, track.identity, name, registered=registered)
            self._emit(
                PersonRecognized(
                    person_id=track.identity,
                    name=name,
                    message=(
                        f"Welcome, {name}!"
                        if access == "granted"
                        else f"{name} recognised: checking liveness"
                    ),
                    similarity=sim,
                    threshold=threshold,
                    confidence=sim,
                    distance=round(1 - sim, 4),
                    via="registration" if registered else "vote",
                    access=access,
                    track_id=track.id,
                    bbox=bbox,
                    frame_time=round(now, 3),
                ),
                frame.captured_at,
            )
            return
        if track.announced:
            return
        h, w = frame.image.shape[:2]
        stable = self.tracker.update_stability(track, (h, w), now)
        if (
            track.settled_unknown
            and stable >= self.settings.engine.stable_seconds
            and not self.focus.prompts_paused
            and not self.unknowns.dismissed(track.id)
            and self.challenger.may_offer(track.id)
        ):
            track.announced = True
            self.unknowns.offered(track.id)
            enrolled = self.gallery.person_count
            best = round(track.best_similarity, 4) if enrolled else None
            if best is None:
                message = "Unknown person (no one enrolled yet). Would you like to register?"
            else:
                message = (
                    f"Unknown person (closest similarity {best:.2f}, threshold"
                    f" {threshold:.2f}). Would you like to register?"
                )
            self._emit(
                UnknownPersonDetected(
                    message=message,
                    similarity=best,
                    threshold=threshold,
                    enrolled=enrolled,
                    distance=None if best is None else round(1 - best, 4),
                    track_id=track.id,
                    bbox=bbox,
                    frame_time=round(now, 3),
                ),
                frame.captured_at,
            )

    def _expire(self, now: float) -> None:
        left_after = self.settings.engine.left_after_seconds
        for track in self.tracker.expire(now):
            self.unknowns.left(track.id)
            self.challenger.track_gone(track.id)
            self._adopted.discard(track.id)
            if track.announced and track.identity is None:
                self._left(track, None)
        for person_id, track in list(self._present.items()):
            if now - self._person_seen.get(person_id, -math.inf) >= left_after:
                del self._present[person_id]
                for event in self.challenger.person_left(person_id, now):
                    self._emit(event, None)
                self._left(track, person_id)
        self.focus.show_tracks(self._statuses())

    def _statuses(self) -> dict[int, TrackStatus]:
        """Each live track as the registration sees it (a frozen track is gone)."""
        return {
            t.id: "known" if t.identity is not None else "unknown"
            for t in self.tracker.tracks.values()
            if not t.frozen
        }

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
        if captured_at is not None:
            self.monitor.frame_to_event(type_name(event), captured_at)
        self.publish(event)
