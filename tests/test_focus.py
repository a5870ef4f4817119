"""The registration focus (`facegate.live.focus`): the one hand-off between the engine thread and
the registration runtime."""

from __future__ import annotations

import threading

from facegate.live.focus import RegistrationFocus
from facegate.live.registration import Observation


def observation(track: int, frame: int = 0) -> Observation:
    return Observation(track_id=track, frame=frame, yaw=0.0, pitch=0.0, usable=True, embedding=None)


def test_the_registering_track_is_captured_only_while_someone_listens() -> None:
    focus = RegistrationFocus()
    focus.update(track=3, paused=True)
    assert focus.track == 3 and focus.prompts_paused
    assert focus.capturing is None  # nobody to hand the face to: no full pose model
    heard: list[Observation] = []
    focus.listen(heard.append)
    assert focus.capturing == 3
    focus.observe(observation(3))
    assert [o.track_id for o in heard] == [3]
    focus.update(track=None, paused=False)
    assert focus.track is None and focus.capturing is None and not focus.prompts_paused


def test_the_thumbnail_is_the_most_frontal_usable_view_of_this_registration() -> None:
    focus = RegistrationFocus()
    focus.update(track=1, paused=True)
    encoded: list[bytes] = []

    def offer(
        track: int, yaw: float | None, pitch: float | None, data: bytes, usable: bool = True
    ) -> None:
        def jpeg() -> bytes:
            encoded.append(data)
            return data

        focus.offer_view(track, usable=usable, yaw=yaw, pitch=pitch, jpeg=jpeg)

    offer(1, 20.0, 5.0, b"turned")
    offer(1, 2.0, -1.0, b"frontal")
    offer(1, 10.0, 0.0, b"less frontal")  # not encoded: no better
    offer(1, 0.0, 0.0, b"unusable", usable=False)
    offer(1, None, 0.0, b"no pose")
    offer(2, 0.0, 0.0, b"another face")
    assert focus.thumbnail == b"frontal"
    assert encoded == [b"turned", b"frontal"]
    focus.update(track=None, paused=True)  # validating: the thumbnail stays for the store
    assert focus.thumbnail == b"frontal"
    focus.update(track=1, paused=True)  # a new registration (even of the same track)
    assert focus.thumbnail is None
    offer(1, 30.0, 0.0, b"new")
    assert focus.thumbnail == b"new"


def test_adoptions_are_taken_once_and_track_status_is_the_engines_latest() -> None:
    focus = RegistrationFocus()
    assert focus.track_status(7) == "gone"
    focus.show_tracks({7: "unknown", 8: "known"})
    assert [focus.track_status(t) for t in (7, 8, 9)] == ["unknown", "known", "gone"]
    focus.adopt(7, "p1")
    assert focus.take_adoptions() == {7: "p1"}
    assert focus.take_adoptions() == {}


def test_both_sides_may_use_it_from_their_own_threads() -> None:
    focus = RegistrationFocus()
    heard: list[int] = []
    focus.listen(lambda o: heard.append(o.frame))
    stop = threading.Event()

    def engine() -> None:
        frame = 0
        while not stop.is_set():
            if focus.capturing is not None:
                focus.observe(observation(1, frame))
                frame += 1
            focus.show_tracks({1: "unknown"})
            focus.take_adoptions()

    thread = threading.Thread(target=engine)
    thread.start()
    try:
        for _ in range(2000):
            focus.update(track=1, paused=True)
            focus.adopt(1, "p")
            assert focus.track_status(1) in ("unknown", "gone")
            focus.update(track=None, paused=False)
    finally:
        stop.set()
        thread.join(5)
    assert heard == sorted(heard)
