"""Recent unknown faces: strangers the engine settled as nobody known, for the operator.

The engine thread records each unknown track while it is in view (its best view as a small
JPEG, when it was first and last seen, how long); the server's API lists them, serves their
thumbnails and lets the operator dismiss one (no more prompts for that face) or offer it for
registration. Kept in memory only and bounded: a stranger's face is never written to disk,
and an entry is forgotten `keep_seconds` after the face left (or when the list is full, the
oldest first). A face that becomes known (registered, or enrolled from photos) leaves the list.

A face is "present" (in view) when it was detected within `PRESENT_WITHIN` seconds of stream
time before the latest processed frame (`frame`): a face missed for a frame or two is still in
view, one left behind by a camera cut is not, even before its track expires.

Thread-safe: one lock guards everything.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import msgspec

PRESENT_WITHIN = 0.5  # seconds of stream time


class UnknownFace(msgspec.Struct, frozen=True, kw_only=True):
    track_id: int
    first_seen: float  # wall clock (Unix seconds)
    last_seen: float
    seconds_seen: float  # stream time from the first to the last detection
    present: bool  # still in view
    similarity: float | None  # best similarity to anyone known; None with an empty gallery
    offered: bool  # unknown_person_detected was sent for it
    has_thumbnail: bool


@dataclass
class _Entry:
    track_id: int
    first_seen: float
    last_seen: float
    first_stream: float
    last_stream: float
    present: bool = True
    similarity: float | None = None
    offered: bool = False
    thumbnail: bytes | None = None
    thumbnail_score: float = -1.0
    dismissed: bool = False
    left_at: float | None = None


class RecentUnknowns:
    def __init__(
        self,
        capacity: int = 50,
        keep_seconds: float = 600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.capacity = capacity
        self.keep_seconds = keep_seconds
        self.clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[int, _Entry] = OrderedDict()
        self._stream_now = -float("inf")  # stream time of the latest processed frame

    # -- the engine's side ---------------------------------------------------------------------
    def frame(self, stream_time: float) -> None:
        """A frame was processed at this stream time (call before `seen` for its faces)."""
        with self._lock:
            self._stream_now = stream_time

    def seen(
        self,
        track_id: int,
        stream_time: float,
        similarity: float | None,
        *,
        score: float = 0.0,
        thumbnail: Callable[[], bytes | None] | None = None,
    ) -> None:
        """An unknown track seen in a frame. `thumbnail` is called (on this thread) only when
        `score` (how good this view is) beats the kept view's."""
        now = self.clock()
        with self._lock:
            entry = self._entries.get(track_id)
            if entry is None:
                entry = _Entry(track_id, now, now, stream_time, stream_time)
                self._entries[track_id] = entry
            entry.last_seen, entry.last_stream = now, stream_time
            entry.present, entry.left_at = True, None
            self._stream_now = max(self._stream_now, stream_time)
            if similarity is not None:
                entry.similarity = similarity
            self._entries.move_to_end(track_id)
            better = thumbnail is not None and score > entry.thumbnail_score
            self._prune(now)
        if better and thumbnail is not None:
            data = thumbnail()
            if data is not None:
                with self._lock:
                    if (kept := self._entries.get(track_id)) is not None:
                        kept.thumbnail, kept.thumbnail_score = data, score

    def offered(self, track_id: int) -> None:
        with self._lock:
            if (entry := self._entries.get(track_id)) is not None:
                entry.offered = True

    def left(self, track_id: int) -> None:
        now = self.clock()
        with self._lock:
            if (entry := self._entries.get(track_id)) is not None:
                entry.present, entry.left_at = False, now
            self._prune(now)

    def known(self, track_id: int) -> None:
        """The face was identified (or registered): it is no stranger; forget it."""
        with self._lock:
            self._entries.pop(track_id, None)

    # -- the operator's side -------------------------------------------------------------------
    def list(self) -> list[UnknownFace]:
        """Not dismissed, most recently seen first."""
        now = self.clock()
        with self._lock:
            self._prune(now)
            return [
                UnknownFace(
                    track_id=e.track_id,
                    first_seen=e.first_seen,
                    last_seen=e.last_seen,
                    seconds_seen=round(max(0.0, e.last_stream - e.first_stream), 2),
                    present=e.present and self._stream_now - e.last_stream <= PRESENT_WITHIN,
                    similarity=e.similarity,
                    offered=e.offered,
                    has_thumbnail=e.thumbnail is not None,
                )
                for e in reversed(self._entries.values())
                if not e.dismissed
            ]

    def get(self, track_id: int) -> UnknownFace | None:
        return next((u for u in self.list() if u.track_id == track_id), None)

    def thumbnail(self, track_id: int) -> bytes | None:
        with self._lock:
            entry = self._entries.get(track_id)
            return None if entry is None or entry.dismissed else entry.thumbnail

    def dismiss(self, track_id: int) -> bool:
        """Hide the face from the list and from registration prompts; False if unknown."""
        with self._lock:
            entry = self._entries.get(track_id)
            if entry is None or entry.dismissed:
                return False
            entry.dismissed, entry.thumbnail = True, None
            return True

    def dismissed(self, track_id: int) -> bool:
        with self._lock:
            entry = self._entries.get(track_id)
            return entry is not None and entry.dismissed

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def _prune(self, now: float) -> None:
        for tid in [
            tid
            for tid, e in self._entries.items()
            if e.left_at is not None and now - e.left_at >= self.keep_seconds
        ]:
            del self._entries[tid]
        while len(self._entries) > self.capacity:
            # The oldest face that is no longer in view goes first; else the oldest.
            gone = next((t for t, e in self._entries.items() if not e.present), None)
            self._entries.pop(gone if gone is not None else next(iter(self._entries)))
