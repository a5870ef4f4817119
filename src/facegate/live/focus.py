"""The registration focus: the one hand-off between the engine thread and the registration
runtime (`registrar.py`), created once and given to both at construction.

It holds what crosses between them, under one lock:
- set by the registrar (after every step of its machine): which track is being registered
  (`track`), and whether prompts are paused (no other unknown face is offered while a
  registration is under way);
- where the registering face's observations go (`listen`: the registrar's `observe`, or a hop
  to the loop it runs on); the engine describes that face with its full pose model on every
  frame only while someone listens;
- the registering face's thumbnail: the engine offers each usable view (`offer_view`), the
  focus keeps the most frontal one, the registrar stores it with the person;
- the tracks registered as a person (`adopt`), which the engine takes at its next frame
  (`take_adoptions`): greeted at once, named when they leave;
- what the engine last saw of each track (`show_tracks`), so the registrar can tell whether
  a face offered by the operator is in view and not yet known (`track_status`).

Neither side reaches into the other: the engine never sees the registrar, the registrar never
sees the engine.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping
from typing import Literal

from facegate.live.registration import Observation

TrackStatus = Literal["unknown", "known", "gone"]


class RegistrationFocus:
    """Thread-safe: every method may be called from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._track: int | None = None
        self._paused = False
        self._listener: Callable[[Observation], None] | None = None
        self._thumbnail: bytes | None = None
        self._thumbnail_offset = math.inf
        self._adoptions: dict[int, str] = {}
        self._statuses: dict[int, TrackStatus] = {}

    # -- wiring ------------------------------------------------------------------------------
    def listen(self, deliver: Callable[[Observation], None]) -> None:
        """Where the registering face's observations go (called on the engine thread: hop to
        another thread inside `deliver` if needed). Set once, when the gate is assembled."""
        with self._lock:
            self._listener = deliver

    # -- the registrar's side ----------------------------------------------------------------
    def update(self, *, track: int | None, paused: bool) -> None:
        """The registration's state: the track being captured (None: none) and whether
        prompts are paused. A new registered track starts with no thumbnail."""
        with self._lock:
            if track is not None and track != self._track:
                self._thumbnail, self._thumbnail_offset = None, math.inf
            self._track, self._paused = track, paused

    @property
    def thumbnail(self) -> bytes | None:
        """The JPEG of the most frontal usable view of the registering face so far."""
        with self._lock:
            return self._thumbnail

    def adopt(self, track_id: int, person_id: str) -> None:
        """Track `track_id` was just registered as `person_id`: from the engine's next frame
        on it is that person."""
        with self._lock:
            self._adoptions[track_id] = person_id

    def track_status(self, track_id: int) -> TrackStatus:
        """As of the engine's latest frame: "unknown" (in view, not recognised: may be
        registered), "known" (recognised as someone) or "gone"."""
        with self._lock:
            return self._statuses.get(track_id, "gone")

    # -- the engine's side -------------------------------------------------------------------
    @property
    def track(self) -> int | None:
        """The track being registered (shown as `registering`), whether or not anyone listens."""
        with self._lock:
            return self._track

    @property
    def capturing(self) -> int | None:
        """The track whose every frame the engine describes and hands on: the registered
        track while someone listens, else None."""
        with self._lock:
            return self._track if self._listener is not None else None

    @property
    def prompts_paused(self) -> bool:
        with self._lock:
            return self._paused

    def observe(self, observation: Observation) -> None:
        """The registering face in one frame, to the listener (outside the lock)."""
        with self._lock:
            deliver = self._listener
        if deliver is not None:
            deliver(observation)

    def offer_view(
        self,
        track_id: int,
        *,
        usable: bool,
        yaw: float | None,
        pitch: float | None,
        jpeg: Callable[[], bytes | None],
    ) -> None:
        """A view of the registering face: kept as the thumbnail when it is usable and more
        frontal (smallest |yaw| + |pitch|) than the one kept. `jpeg` is called only then (None:
        no picture, the one kept stays)."""
        if not usable or yaw is None or pitch is None:
            return
        offset = abs(yaw) + abs(pitch)
        with self._lock:
            if track_id != self._track or offset >= self._thumbnail_offset:
                return
            self._thumbnail_offset = offset
        data = jpeg()  # encoded outside the lock
        with self._lock:
            if data is not None and track_id == self._track and offset <= self._thumbnail_offset:
                self._thumbnail = data

    def take_adoptions(self) -> dict[int, str]:
        """The adoptions since the last call (track id -> person id)."""
        with self._lock:
            pending, self._adoptions = self._adoptions, {}
        return pending

    def show_tracks(self, statuses: Mapping[int, TrackStatus]) -> None:
        """What the engine sees now: each live track's status (absent: gone)."""
        snapshot = dict(statuses)
        with self._lock:
            self._statuses = snapshot
