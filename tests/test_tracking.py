"""Tracking's pure logic (facegate.live.tracking) on synthetic detections and a fake clock.

No models and no pictures: detections are boxes with five landmarks built by hand, embeddings
are unit vectors (orthogonal per person, plus a little noise), and time is a clock the test
advances frame by frame (10 fps). The engine's part is played by the helpers: it stores each
described face's embedding on its track after association, and votes with `Tracker.vote`.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pytest

from facegate.live.tracking import Track, Tracker, drift, iou, shape
from facegate.settings import EngineSettings
from facegate.vision.face import BBox, Detection, Point

Vec = npt.NDArray[np.float32]
DIM = 16
FRAME = (720, 1280)  # h, w
FPS = 10.0


# -- helpers ---------------------------------------------------------------------------------
class FakeClock:
    """Stream time in seconds, advanced by the test: one frame at a time by default."""

    def __init__(self, start: float = 100.0) -> None:
        self.now = start

    def tick(self, seconds: float = 1 / FPS) -> float:
        self.now += seconds
        return self.now


def box(x: float, y: float = 300.0, size: float = 100.0) -> BBox:
    return (x, y, x + size, y + size)


def det(bbox: BBox, *, nose: float = 0.5, score: float = 0.9) -> Detection:
    """A detection with the five landmarks where a frontal face has them; `nose` is the nose
    tip's x across the box (0.5 frontal, more or less when the head turns)."""
    x1, y1, x2, y2 = bbox
    w, h = x2 - x1, y2 - y1

    def at(fx: float, fy: float) -> Point:
        return (x1 + fx * w, y1 + fy * h)

    marks = (at(0.3, 0.4), at(0.7, 0.4), at(nose, 0.6), at(0.35, 0.8), at(0.65, 0.8))
    return Detection(bbox=bbox, det_score=score, landmarks=marks)


def person(k: int) -> Vec:
    """Person k's embedding: the k-th basis vector (persons are orthogonal)."""
    v = np.zeros(DIM, np.float32)
    v[k] = 1.0
    return v


def toward(a: Vec, b: Vec, cosine: float) -> Vec:
    """The unit vector at exactly `cosine` to `a`, turned toward `b` (orthogonal to `a`)."""
    return (cosine * a + math.sqrt(1.0 - cosine**2) * b).astype(np.float32)


def noisy(v: Vec, rng: np.random.Generator, amount: float = 0.15) -> Vec:
    """Another view of the same face: `v` plus noise, normalised (similarity about 0.9)."""
    out = v + amount * rng.standard_normal(DIM).astype(np.float32)
    return np.asarray(out / np.linalg.norm(out), np.float32)


def step(
    tracker: Tracker,
    now: float,
    faces: list[tuple[BBox, Vec | None]],
) -> tuple[list[Track], list[Track]]:
    """One frame: associate the detections (with the embeddings given), then keep each
    embedding on its track, as the engine does after identifying a described face."""
    detections = [det(b) for b, _ in faces]
    embeddings = {i: e for i, (_, e) in enumerate(faces) if e is not None}
    seen, created = tracker.associate(detections, embeddings, now)
    for i, track in enumerate(seen):
        if i in embeddings:
            track.embedding = embeddings[i]
    return seen, created


def tracker(**settings: float) -> Tracker:
    return Tracker(EngineSettings(**settings))  # type: ignore[arg-type]


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


# -- geometry --------------------------------------------------------------------------------
def test_iou() -> None:
    assert iou(box(0), box(0)) == 1.0
    assert iou(box(0), box(200)) == 0.0
    assert iou(box(0), box(50)) == pytest.approx(5000 / 15000)  # half a box over: 1/3
    assert iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0  # no area, no overlap


def test_shape_is_the_landmarks_within_the_box_and_drift_their_largest_shift() -> None:
    front = shape(det(box(100)))
    assert len(front) == 10
    assert all(0.0 <= v <= 1.0 for v in front)
    assert front[:4] == pytest.approx((0.3, 0.4, 0.7, 0.4))
    # The same face elsewhere and larger has the same shape: nothing to re-check.
    assert drift(front, shape(det(box(600, 50, size=250)))) == pytest.approx(0.0, abs=1e-9)
    # A head that turns moves the nose within the box: the drift is that shift.
    assert drift(front, shape(det(box(100), nose=0.62))) == pytest.approx(0.12)
    assert drift(front, front) == 0.0
    # Never identified: the drift is unknown, hence larger than any limit.
    assert drift(None, front) == math.inf


def test_shape_is_relative_to_width_and_height() -> None:
    tall = shape(det((100.0, 100.0, 200.0, 300.0)))  # 100 wide, 200 tall
    assert tall == pytest.approx(shape(det(box(0))))


def test_shape_of_a_degenerate_box_does_not_divide_by_zero() -> None:
    flat = Detection(bbox=(10, 10, 10, 10), det_score=0.5, landmarks=((10, 10),) * 5)
    assert shape(flat) == (0.0,) * 10


# -- association -----------------------------------------------------------------------------
def test_a_face_that_moves_a_little_keeps_its_track_and_a_new_face_starts_one() -> None:
    t, clock = tracker(), FakeClock()
    (first,), created = step(t, clock.now, [(box(100), None)])
    assert created == [first]
    for n in range(1, 11):
        seen, created = step(t, clock.tick(), [(box(100 + 8 * n), None)])
        assert seen == [first]
        assert created == []
    assert first.hits == 11
    assert first.bbox == box(180)
    assert first.first_seen == 100.0
    assert first.last_seen == clock.now
    # A face far from every track is a new track; each returned in detection order.
    seen, created = step(t, clock.tick(), [(box(900), None), (box(188), None)])
    assert seen[1] is first
    assert created == [seen[0]]
    assert seen[0].id != first.id


def test_a_detection_whose_embedding_is_unlike_the_track_never_gets_it(
    rng: np.random.Generator,
) -> None:
    """Even at the very same box, and even as the only candidate: a stranger is a new track."""
    t, clock = tracker(), FakeClock()
    (ada,), _ = step(t, clock.now, [(box(400), person(0))])
    stranger = noisy(person(1), rng)
    (other,), created = step(t, clock.tick(), [(box(400), stranger)])
    assert created == [other]
    assert other is not ada
    assert ada.hits == 1
    assert ada.last_seen == 100.0  # not moved, not refreshed
    for _ in range(5):  # the stranger stays: their own track follows them, never Ada's
        (again,), created = step(t, clock.tick(), [(box(400), noisy(person(1), rng))])
        assert again is other
        assert created == []
    assert ada.hits == 1


@pytest.mark.parametrize(("cosine", "same"), [(0.29, False), (0.31, True)])
def test_min_track_similarity_is_the_limit_of_resemblance(cosine: float, same: bool) -> None:
    t, clock = tracker(min_track_similarity=0.3), FakeClock()
    (track,), _ = step(t, clock.now, [(box(400), person(0))])
    (seen,), _ = step(t, clock.tick(), [(box(400), toward(person(0), person(1), cosine))])
    assert (seen is track) == same


def test_without_embeddings_overlap_decides() -> None:
    t, clock = tracker(), FakeClock()
    (track,), _ = step(t, clock.now, [(box(400), person(0))])
    # No embedding computed for this detection this frame (the engine embeds few per frame).
    (seen,), _ = step(t, clock.tick(), [(box(410), None)])
    assert seen is track
    # A track never described yet has no embedding: overlap alone, whatever the detection's.
    (fresh,), _ = step(t, clock.tick(), [(box(50), None)])
    (seen,), _ = step(t, clock.tick(), [(box(55), person(3))])
    assert seen is fresh


def swap_frame(t: Tracker, embed: tuple[bool, bool]) -> tuple[Track, Track, list[Track]]:
    """Ada (person 0) at x=200 and Bo (person 1) at x=230 pass each other between two
    frames: Ada is now at 232, Bo at 198, each where the other's box was. Returns Ada's and
    Bo's tracks and the tracks seen in the second frame (Ada's detection first); `embed`
    says which of the two detections of the second frame were described."""
    clock = FakeClock()
    ada, bo = step(t, clock.now, [(box(200), person(0)), (box(230), person(1))])[0]
    faces: list[tuple[BBox, Vec | None]] = [
        (box(232), person(0) if embed[0] else None),
        (box(198), person(1) if embed[1] else None),
    ]
    seen, created = step(t, clock.tick(), faces)
    assert created == []
    return ada, bo, seen


def test_crossing_faces_by_overlap_alone_would_swap_tracks() -> None:
    """The control: with no embedding, each box goes to the track it overlaps most."""
    ada, bo, seen = swap_frame(tracker(), (False, False))
    assert seen == [bo, ada]


@pytest.mark.parametrize("embed", [(True, True), (True, False), (False, True)])
def test_crossing_faces_keep_their_tracks_when_embeddings_decide(
    embed: tuple[bool, bool],
) -> None:
    """Where a detection overlaps both tracks, its embedding excludes the other person's;
    one described face is enough to keep both straight."""
    ada, bo, seen = swap_frame(tracker(), embed)
    assert seen == [ada, bo]


def test_two_people_walking_through_each_other_keep_their_tracks(
    rng: np.random.Generator,
) -> None:
    """Ada walks right and Bo left along the same line, through each other (the boxes
    coincide midway), in whatever order the detector lists them; both embedded each frame."""
    t, clock = tracker(), FakeClock()
    ada, bo = step(t, clock.now, [(box(100), person(0)), (box(500), person(1))])[0]
    for n in range(1, 21):
        faces: list[tuple[BBox, Vec | None]] = [
            (box(100 + 20 * n), noisy(person(0), rng)),
            (box(500 - 20 * n), noisy(person(1), rng)),
        ]
        order = [1, 0] if rng.random() < 0.5 else [0, 1]
        seen, created = step(t, clock.tick(), [faces[i] for i in order])
        assert created == []
        assert dict(zip(order, seen, strict=True)) == {0: ada, 1: bo}, n
    assert ada.bbox == box(500)
    assert bo.bbox == box(100)
    assert (ada.hits, bo.hits) == (21, 21)


def test_ambiguous_detections_overlap_two_tracks_or_share_one() -> None:
    t, clock = tracker(), FakeClock()
    step(t, clock.now, [(box(200), None), (box(260), None), (box(900), None)])
    # Between the first two tracks: overlaps both (IoU 0.54 and 0.54).
    assert t.ambiguous([det(box(230))]) == {0}
    # Two faces over one track: each could be it.
    assert t.ambiguous([det(box(880)), det(box(920))]) == {0, 1}
    # One face over its own track only: no doubt.
    assert t.ambiguous([det(box(905)), det(box(600))]) == set()


def test_likely_is_the_live_track_a_detection_overlaps_most() -> None:
    t, clock = tracker(min_iou=0.3), FakeClock()
    left, right = step(t, clock.now, [(box(200), None), (box(260), None)])[0]
    assert t.likely(det(box(210))) is left
    assert t.likely(det(box(255))) is right
    assert t.likely(det(box(400))) is None  # overlaps nothing
    assert t.likely(det(box(340))) is None  # IoU 0.11 < min_iou


# -- votes -----------------------------------------------------------------------------------
def voted(t: Tracker, track: Track, votes: list[tuple[str | None, float]]) -> list[str | None]:
    """Cast the votes (person, weight) and return the track's identity after each."""
    out = []
    for person_id, weight in votes:
        t.vote(track, person_id, 0.6, weight)
        out.append(track.identity)
    return out


def identity(track: Track) -> str | None:
    return track.identity  # (read afresh: a vote changes it)


def checked(track: Track) -> float | None:
    return track.checked_similarity


def fresh_track(t: Tracker) -> Track:
    return t.associate([det(box(400))], {}, 100.0)[1][0]


def test_a_name_settles_once_enough_votes_agree() -> None:
    t = tracker(min_votes=2, vote_share=0.6, vote_window=7)
    track = fresh_track(t)
    t.vote(track, "ada", 0.55, 1.0)
    assert track.identity is None  # one identification is not enough
    t.vote(track, "ada", 0.71, 0.8)
    assert identity(track) == "ada"
    assert track.identity_similarity == 0.71  # the best of the agreeing votes
    assert not track.settled_unknown
    assert track.best_similarity == 0.71


def test_one_blurry_or_contrary_frame_cannot_flip_a_settled_name() -> None:
    t = tracker(min_votes=2, vote_share=0.6, vote_window=7)
    track = fresh_track(t)
    assert voted(t, track, [("ada", 1.0), ("ada", 1.0)]) == [None, "ada"]
    # A faint frame for someone else, then even a clear one, then a frame of nobody.
    assert voted(t, track, [("bo", 0.1), ("bo", 1.0), (None, 1.0)]) == ["ada"] * 3
    assert not track.settled_unknown


def test_a_sustained_majority_does_flip_the_name() -> None:
    t = tracker(min_votes=2, vote_share=0.6, vote_window=7)
    track = fresh_track(t)
    voted(t, track, [("ada", 1.0), ("ada", 1.0)])
    # 2:1 and 2:2 keep the name; 3:2 is a 60 % share: the name changes.
    assert voted(t, track, [("bo", 1.0), ("bo", 1.0), ("bo", 1.0)]) == ["ada", "ada", "bo"]
    assert track.identity_similarity == 0.6
    # The window forgets: after seven more for Bo, none of Ada's votes is left.
    voted(t, track, [("bo", 1.0)] * 7)
    assert len(track.votes) == 7
    assert {v.person_id for v in track.votes} == {"bo"}


def test_votes_are_weighted_many_faint_frames_do_not_outvote_a_clear_one() -> None:
    t = tracker(min_votes=2, vote_share=0.6, vote_window=7)
    track = fresh_track(t)
    # Bo has two votes but a sixth of the weight; Ada the weight but one vote: nothing settles.
    assert voted(t, track, [("ada", 1.0), ("bo", 0.1), ("bo", 0.1)]) == [None, None, None]
    assert voted(t, track, [("ada", 0.9)]) == ["ada"]
    # Enough votes but not enough of the weight (1.4 of 2.4, under 60 %): nothing settles.
    track = fresh_track(tracker(min_votes=2, vote_share=0.6, vote_window=7))
    assert voted(t, track, [("bo", 1.0), ("ada", 0.7), ("ada", 0.7)]) == [None, None, None]


def test_a_track_settles_as_unknown_and_a_sustained_majority_names_it() -> None:
    t = tracker(min_votes=2, vote_share=0.6, vote_window=7)
    track = fresh_track(t)
    voted(t, track, [(None, 1.0), (None, 1.0)])
    assert track.settled_unknown
    assert track.identity is None
    voted(t, track, [("ada", 1.0)])  # one match among strangers' votes: still unknown
    assert track.settled_unknown
    assert voted(t, track, [("ada", 1.0), ("ada", 1.0)]) == [None, "ada"]
    assert not track.settled_unknown


def test_forget_identity_starts_identification_over() -> None:
    t = tracker(min_votes=2)
    track = fresh_track(t)
    voted(t, track, [("ada", 1.0), ("ada", 1.0)])
    track.confirmed, track.checked_similarity, track.embedded_at = True, 0.7, 101.0
    t.forget_identity(track)
    assert (track.identity, track.settled_unknown, track.confirmed) == (None, False, False)
    # Embedded again at the next frame, and its name checked again.
    assert (checked(track), track.embedded_at) == (None, -math.inf)
    assert not track.votes
    assert voted(t, track, [("bo", 1.0), ("bo", 1.0)]) == [None, "bo"]  # no old votes left
    voted(t, track, [(None, 1.0)] * 7)
    t.forget_identity(track)
    assert not track.settled_unknown


def test_adopt_settles_and_confirms_the_registered_person() -> None:
    t = tracker(min_votes=3, vote_share=0.6, vote_window=7)
    track = fresh_track(t)
    voted(t, track, [(None, 1.0)] * 3)
    assert track.settled_unknown
    t.adopt(track, "new", 0.93)
    assert (track.identity, track.settled_unknown, track.confirmed) == ("new", False, True)
    assert (track.identity_similarity, track.checked_similarity) == (0.93, 0.93)
    assert [v.person_id for v in track.votes] == ["new"] * 3
    # As settled as any name: one contrary frame does not undo it.
    assert voted(t, track, [(None, 1.0), ("bo", 1.0)]) == ["new", "new"]


# -- stability -------------------------------------------------------------------------------
def stable_times(
    t: Tracker, track: Track, clock: FakeClock, boxes: list[BBox], *, usable: bool = True
) -> list[float]:
    """Move the track through `boxes`, one frame each, returning its stable time each frame."""
    out = []
    for b in boxes:
        t.associate([det(b)], {}, clock.tick())
        track.usable = usable
        out.append(t.update_stability(track, FRAME, clock.now))
    return out


def test_a_usable_still_face_clear_of_the_edges_accumulates_stable_time() -> None:
    t, clock = tracker(max_motion=0.35, edge_margin=0.02), FakeClock()
    track = fresh_track(t)
    clock.now = track.last_seen
    track.usable = True
    assert t.update_stability(track, FRAME, clock.now) == 0.0  # from now on
    times = stable_times(t, track, clock, [box(400)] * 20)
    assert times == pytest.approx([(n + 1) / FPS for n in range(20)])
    # A slow drift (1 px a frame: 0.1 face widths a second) is still "still".
    times = stable_times(t, track, clock, [box(401 + n) for n in range(10)])
    assert times == pytest.approx([(n + 21) / FPS for n in range(10)])


def test_a_face_not_usable_has_no_stable_time_and_starts_over() -> None:
    t, clock = tracker(), FakeClock()
    track = fresh_track(t)
    clock.now = track.last_seen
    assert stable_times(t, track, clock, [box(400)] * 5)[-1] == pytest.approx(0.4)
    assert stable_times(t, track, clock, [box(400)], usable=False) == [0.0]
    assert track.stable_since is None
    assert stable_times(t, track, clock, [box(400)] * 3) == pytest.approx([0.0, 0.1, 0.2])


def test_a_moving_face_resets_and_counts_again_only_once_it_has_settled() -> None:
    t, clock = tracker(max_motion=0.35), FakeClock()
    track = fresh_track(t)
    clock.now = track.last_seen
    assert stable_times(t, track, clock, [box(400)] * 10)[-1] == pytest.approx(0.9)
    # Walking past: 30 px a frame, three face widths a second.
    walking = stable_times(t, track, clock, [box(400 + 30 * n) for n in range(1, 11)])
    assert walking[-5:] == [0.0] * 5
    assert track.motion > 1.0
    # Stopped: the smoothed speed takes a while to fall below the limit, then time counts
    # from that moment (not from the stop).
    times, motions = [], []
    for _ in range(30):
        times += stable_times(t, track, clock, [box(700)])
        motions.append(track.motion)
    start = next(n for n, m in enumerate(motions) if m <= 0.35)
    assert start >= 5  # at least half a second to settle
    assert all(m > 0.35 for m in motions[:start])
    assert all(m <= 0.35 for m in motions[start:])  # the smoothed speed only decays
    expected = [0.0] * start + [(n - start) / FPS for n in range(start, 30)]
    assert times == pytest.approx(expected)


def test_a_face_walking_up_to_the_camera_is_moving_too() -> None:
    """Approach counts: a box growing in place (no sideways movement) is not still."""
    t, clock = tracker(max_motion=0.35), FakeClock()
    track = fresh_track(t)
    clock.now = track.last_seen
    # Ten pixels wider a frame (about 0.9 face widths a second), centre unchanged.
    growing = [(400.0 - 5 * n, 300.0 - 5 * n, 500.0 + 5 * n, 400.0 + 5 * n) for n in range(1, 16)]
    times = stable_times(t, track, clock, growing)
    assert times[-5:] == [0.0] * 5


@pytest.mark.parametrize(
    "edge_box",
    [
        box(10, 300),  # within 2 % of the left edge (25.6 px)
        box(1160, 300, size=100),  # right: 1260 > 1280 - 25.6
        box(400, 5),  # top
        box(400, 610, size=100),  # bottom: 710 > 720 - 14.4
    ],
)
def test_a_face_at_the_edge_of_the_frame_is_never_stable(edge_box: BBox) -> None:
    t, clock = tracker(edge_margin=0.02), FakeClock()
    track = t.associate([det(edge_box)], {}, clock.now)[1][0]
    assert stable_times(t, track, clock, [edge_box] * 10) == [0.0] * 10
    # Just inside the margin (a still face, same size) it counts from its first frame there.
    x1, y1, x2, y2 = edge_box
    dx = 26.0 if x1 < 26 else -26.0 if x2 > 1254 else 0.0
    dy = 15.0 if y1 < 15 else -15.0 if y2 > 705 else 0.0
    inside = (x1 + dx, y1 + dy, x2 + dx, y2 + dy)
    t.associate([det(inside)], {}, clock.tick())  # one frame to move there
    track.motion = 0.0  # (this jump is not what is under test)
    assert stable_times(t, track, clock, [inside] * 3) == pytest.approx([0.0, 0.1, 0.2])


# -- expiry ----------------------------------------------------------------------------------
def test_a_track_not_seen_for_left_after_seconds_expires() -> None:
    t, clock = tracker(left_after_seconds=3.0), FakeClock()
    (gone, stays), _ = step(t, clock.now, [(box(100), None), (box(700), None)])
    step(t, clock.tick(2.0), [(box(700), None)])
    assert t.expire(clock.tick(0.99)) == []  # 2.99 s after the first was last seen
    assert t.expire(clock.tick(0.01)) == [gone]  # 3 s
    assert list(t.tracks) == [stays.id]
    assert t.expire(clock.tick(1.99)) == []
    assert t.expire(clock.tick(0.01)) == [stays]
    assert t.tracks == {}


# -- scene cuts ------------------------------------------------------------------------------
def test_a_cut_freezes_every_track_and_no_name_jumps_to_the_next_face() -> None:
    t, clock = tracker(), FakeClock()
    (ada, bo), _ = step(t, clock.now, [(box(200), None), (box(700), None)])
    voted(t, ada, [("ada", 1.0), ("ada", 1.0)])
    assert ada.identity == "ada"
    assert t.cut() == 2
    assert ada.frozen and bo.frozen
    assert t.cut() == 0  # nothing live left to freeze
    assert t.live() == []
    # Someone else now stands exactly where Ada's face was: a new, unnamed track.
    (other,), created = step(t, clock.tick(), [(box(200), None)])
    assert created == [other]
    assert other.identity is None
    assert ada.hits == 1 and ada.last_seen == 100.0
    assert t.likely(det(box(700))) is None  # frozen tracks are nobody's candidates
    assert t.ambiguous([det(box(200)), det(box(205))]) == {0, 1}  # only `other` counts
    # Frozen tracks stay (and keep their name) until they expire like any other.
    assert ada.identity == "ada"
    step(t, clock.tick(2.9), [(box(200), None)])
    assert {x.id for x in t.expire(clock.tick())} == {ada.id, bo.id}
    assert list(t.tracks) == [other.id]


def test_replaces_faces_sees_a_cut_the_picture_alone_may_not() -> None:
    def setup(n: int) -> tuple[Tracker, list[int]]:
        t = tracker()
        seen, _ = step(t, 100.0, [(box(100 + 300 * i), None) for i in range(n)])
        return t, [s.id for s in seen]

    t, previous = setup(2)
    # Both faces gone while a face appears elsewhere: other people.
    assert t.replaces_faces([det(box(250, 50))], previous)
    # One stays, one gone (half, not most): people coming and going.
    assert not t.replaces_faces([det(box(100)), det(box(250, 50))], previous)
    # Everyone left and nobody came: not a cut.
    assert not t.replaces_faces([], previous)
    # The same faces, moved a little: not a cut.
    assert not t.replaces_faces([det(box(110)), det(box(395))], previous)

    t, previous = setup(3)
    assert t.replaces_faces([det(box(100)), det(box(250, 50))], previous)  # two of three lost

    # A single face replaced is not enough evidence (someone may have stepped in as another
    # left); nor are tracks that are frozen or already gone.
    t, previous = setup(1)
    assert not t.replaces_faces([det(box(250, 50))], previous)
    t, previous = setup(2)
    t.cut()
    assert not t.replaces_faces([det(box(250, 50))], previous)
    t, previous = setup(2)
    t.expire(200.0)
    assert not t.replaces_faces([det(box(250, 50))], previous)
