"""The recent unknown faces: bounded, in memory, forgotten after they left, honest about who
is in view now."""

from __future__ import annotations

from facegate.live.unknowns import PRESENT_WITHIN, RecentUnknowns


class Clock:
    def __init__(self) -> None:
        self.t = 1_000.0

    def __call__(self) -> float:
        return self.t


def test_a_face_is_listed_most_recent_first_with_how_long_it_was_seen() -> None:
    clock = Clock()
    faces = RecentUnknowns(clock=clock)
    faces.frame(0.0)
    faces.seen(1, 0.0, None)
    clock.t += 1
    faces.frame(2.5)
    faces.seen(2, 2.5, 0.21)
    faces.seen(1, 2.5, None)
    faces.offered(1)
    listed = faces.list()
    assert [f.track_id for f in listed] == [1, 2]  # 1 was seen last
    one = listed[0]
    assert (one.seconds_seen, one.present, one.offered, one.similarity) == (2.5, True, True, None)
    assert listed[1].similarity == 0.21 and not listed[1].offered


def test_in_view_means_detected_in_the_latest_frames_not_just_not_expired() -> None:
    faces = RecentUnknowns(clock=Clock())
    faces.frame(10.0)
    faces.seen(3, 10.0, None)
    faces.frame(10.0 + PRESENT_WITHIN)
    assert faces.list()[0].present  # missed for a moment: still in view
    faces.frame(10.0 + PRESENT_WITHIN + 0.1)
    assert not faces.list()[0].present  # e.g. left behind by a camera cut
    faces.seen(3, 11.0, None)
    assert faces.list()[0].present


def test_the_thumbnail_is_the_best_view_and_made_only_when_better() -> None:
    faces = RecentUnknowns(clock=Clock())
    made: list[float] = []

    def view(score: float) -> bytes:
        made.append(score)
        return f"jpeg {score}".encode()

    faces.seen(4, 0.0, None, score=0.5, thumbnail=lambda: view(0.5))
    faces.seen(4, 0.1, None, score=0.3, thumbnail=lambda: view(0.3))
    faces.seen(4, 0.2, None, score=0.9, thumbnail=lambda: view(0.9))
    assert made == [0.5, 0.9]
    assert faces.thumbnail(4) == b"jpeg 0.9" and faces.list()[0].has_thumbnail


def test_dismissed_and_known_faces_leave_the_list_and_their_pictures_go() -> None:
    faces = RecentUnknowns(clock=Clock())
    faces.seen(5, 0.0, None, score=1.0, thumbnail=lambda: b"face five")
    faces.seen(6, 0.0, None)
    assert faces.dismiss(5) and not faces.dismiss(5) and not faces.dismiss(99)
    assert faces.dismissed(5) and faces.thumbnail(5) is None
    faces.known(6)  # identified (registered or enrolled meanwhile)
    assert faces.list() == [] and faces.get(6) is None


def test_forgotten_after_keep_seconds_and_bounded_by_capacity() -> None:
    clock = Clock()
    faces = RecentUnknowns(capacity=3, keep_seconds=60.0, clock=clock)
    for track in (1, 2, 3):
        faces.seen(track, 0.0, None)
    faces.left(1)
    faces.seen(4, 0.0, None)  # full: the oldest face no longer in view goes first
    assert sorted(f.track_id for f in faces.list()) == [2, 3, 4]
    faces.left(2)
    clock.t += 59.0
    assert 2 in [f.track_id for f in faces.list()]
    clock.t += 1.0
    assert sorted(f.track_id for f in faces.list()) == [3, 4]  # kept 60 s after it left
    for track in (5, 6):
        faces.seen(track, 0.0, None)  # none left: the oldest goes
    assert sorted(f.track_id for f in faces.list()) == [4, 5, 6]
