"""Live figures of the engine: frame rates, per-stage latency, event counts, source state.

The engine thread writes, the loop reads (`snapshot`, `prometheus`); one lock guards it all.
Every time comes from the injected clock (default `time.monotonic`), the same clock the engine
stamps frames with, so `event(..., frame_captured_at=frame.time)` measures frame-to-event latency.

Rates count the events of the last `window_s` seconds (those at `now - window_s` or later) and
divide by the window, or by the uptime while it is shorter (counted as at least 1 s). Percentiles
(linear interpolation, as numpy's default) are over the last `samples` values of each stage;
`count` is every value ever recorded.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable

import msgspec

SOURCE_STATES = ("starting", "connected", "unavailable", "ended")


class StageLatency(msgspec.Struct, frozen=True):
    p50_ms: float
    p95_ms: float
    count: int


class MonitorSnapshot(msgspec.Struct, frozen=True):
    uptime_s: float
    capture_fps: float
    processed_fps: float
    frames_captured: int
    frames_processed: int
    frames_dropped: int
    stages: dict[str, StageLatency]  # e.g. detect, landmarks, embed, search, pose, frame
    frame_to_event: StageLatency  # frame captured -> event published on the bus
    recognitions: int
    unknowns: int
    events: int
    source_state: str  # "starting" | "connected" | "unavailable" | "ended"


def percentile(ordered: list[float], q: float) -> float:
    """The q-th percentile (0..100) of sorted values, linearly interpolated; 0.0 when empty."""
    if not ordered:
        return 0.0
    rank = q / 100.0 * (len(ordered) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


class _Series:
    """The last `samples` latencies of one stage, with the running count and sum."""

    __slots__ = ("count", "total", "values")

    def __init__(self, samples: int) -> None:
        self.values: deque[float] = deque(maxlen=samples)
        self.count = 0
        self.total = 0.0

    def add(self, ms: float) -> None:
        self.values.append(ms)
        self.count += 1
        self.total += ms

    def latency(self) -> StageLatency:
        ordered = sorted(self.values)
        return StageLatency(
            p50_ms=percentile(ordered, 50), p95_ms=percentile(ordered, 95), count=self.count
        )


class _Rate:
    """Timestamps of the last window (with counts), for events-per-second."""

    __slots__ = ("marks", "window_s")

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self.marks: deque[tuple[float, int]] = deque()

    def add(self, now: float, n: int) -> None:
        self.marks.append((now, n))
        self._prune(now)

    def _prune(self, now: float) -> None:
        start = now - self.window_s
        while self.marks and self.marks[0][0] < start:
            self.marks.popleft()

    def per_second(self, now: float, uptime: float) -> float:
        self._prune(now)
        # Over the uptime while shorter than the window, but at least a second (or the window):
        # one frame just after start is not thousands a second.
        span = min(self.window_s, max(uptime, 1.0))
        return sum(n for _, n in self.marks) / span


class Monitor:
    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        window_s: float = 5.0,
        samples: int = 512,
    ) -> None:
        if window_s <= 0:
            raise ValueError("window_s must be positive")
        if samples < 1:
            raise ValueError("samples must be at least 1")
        self._clock = clock
        self._samples = samples
        self._lock = threading.Lock()
        self._started = clock()
        self._captured = _Rate(window_s)
        self._processed = _Rate(window_s)
        self._frames_captured = 0
        self._frames_processed = 0
        self._frames_dropped = 0
        self._stages: dict[str, _Series] = {}
        self._frame_to_event = _Series(samples)
        self._recognitions = 0
        self._unknowns = 0
        self._events = 0
        self._source_state = "starting"

    # -- the engine's side ------------------------------------------------------------------
    def frame_captured(self, n: int = 1) -> None:
        with self._lock:
            self._frames_captured += n
            self._captured.add(self._clock(), n)

    def frame_processed(self) -> None:
        with self._lock:
            self._frames_processed += 1
            self._processed.add(self._clock(), 1)

    def frames_dropped(self, total: int) -> None:
        """The capture's own running count of frames it dropped."""
        with self._lock:
            self._frames_dropped = total

    def stage(self, name: str, ms: float) -> None:
        with self._lock:
            series = self._stages.get(name)
            if series is None:
                series = self._stages[name] = _Series(self._samples)
            series.add(ms)

    def frame_to_event(self, kind: str, frame_captured_at: float) -> None:
        """The engine made an event of type `kind` from the frame captured at this time (on
        this monitor's clock): the latency from frame to event."""
        with self._lock:
            self._frame_to_event.add((self._clock() - frame_captured_at) * 1000.0)

    # -- the bus's side ------------------------------------------------------------------------
    def published(self, kind: str) -> None:
        """An event of type `kind` was published on the bus (the bus calls this for every
        event it publishes, so the counters are the bus's own)."""
        with self._lock:
            self._events += 1
            if kind == "person_recognized":
                self._recognitions += 1
            elif kind == "unknown_person_detected":
                self._unknowns += 1

    def source_state(self, state: str) -> None:
        if state not in SOURCE_STATES:
            raise ValueError(f"unknown source state {state!r}; expected one of {SOURCE_STATES}")
        with self._lock:
            self._source_state = state

    # -- the reader's side ------------------------------------------------------------------
    def snapshot(self) -> MonitorSnapshot:
        with self._lock:
            return self._snapshot_locked()

    def _snapshot_locked(self) -> MonitorSnapshot:
        now = self._clock()
        uptime = max(0.0, now - self._started)
        return MonitorSnapshot(
            uptime_s=uptime,
            capture_fps=self._captured.per_second(now, uptime),
            processed_fps=self._processed.per_second(now, uptime),
            frames_captured=self._frames_captured,
            frames_processed=self._frames_processed,
            frames_dropped=self._frames_dropped,
            stages={name: s.latency() for name, s in sorted(self._stages.items())},
            frame_to_event=self._frame_to_event.latency(),
            recognitions=self._recognitions,
            unknowns=self._unknowns,
            events=self._events,
            source_state=self._source_state,
        )

    def prometheus(self) -> str:
        """The figures in the Prometheus text exposition format (version 0.0.4)."""
        with self._lock:
            snap = self._snapshot_locked()
            sums = {name: s.total for name, s in self._stages.items()}
            frame_to_event_sum = self._frame_to_event.total
        out: list[str] = []

        def metric(name: str, kind: str, help_: str, samples: list[tuple[str, float]]) -> None:
            out.append(f"# HELP facegate_{name} {help_}")
            out.append(f"# TYPE facegate_{name} {kind}")
            out.extend(f"facegate_{suffix} {_number(value)}" for suffix, value in samples)

        for name, kind, value, help_ in (
            ("uptime_seconds", "gauge", snap.uptime_s, "Seconds since start."),
            ("capture_fps", "gauge", snap.capture_fps, "Frames captured a second, recently."),
            ("processed_fps", "gauge", snap.processed_fps, "Frames processed a second, recently."),
            ("frames_captured_total", "counter", snap.frames_captured, "Frames from the source."),
            ("frames_processed_total", "counter", snap.frames_processed, "Frames processed."),
            ("frames_dropped_total", "counter", snap.frames_dropped, "Frames the capture dropped."),
            ("recognitions_total", "counter", snap.recognitions, "person_recognized events."),
            ("unknowns_total", "counter", snap.unknowns, "unknown_person_detected events."),
            ("events_total", "counter", snap.events, "Events published."),
        ):
            metric(name, kind, help_, [(name, value)])

        stage_samples: list[tuple[str, float]] = []
        for stage, lat in snap.stages.items():
            label = f'stage="{_escape(stage)}"'
            stage_samples += _summary("stage_latency_seconds", label, lat, sums[stage])
        metric(
            "stage_latency_seconds",
            "summary",
            "Latency of each engine stage (recent samples).",
            stage_samples,
        )
        metric(
            "frame_to_event_seconds",
            "summary",
            "From frame capture to the event's publication (recent samples).",
            _summary("frame_to_event_seconds", "", snap.frame_to_event, frame_to_event_sum),
        )
        metric(
            "source_state",
            "gauge",
            "The video source's state (1 for the current one).",
            [
                (f'source_state{{state="{s}"}}', 1.0 if s == snap.source_state else 0.0)
                for s in SOURCE_STATES
            ],
        )
        return "\n".join(out) + "\n"


def _summary(name: str, label: str, lat: StageLatency, total_ms: float) -> list[tuple[str, float]]:
    sep = "," if label else ""
    return [
        (f'{name}{{{label}{sep}quantile="0.5"}}', lat.p50_ms / 1000.0),
        (f'{name}{{{label}{sep}quantile="0.95"}}', lat.p95_ms / 1000.0),
        (f"{name}_sum{{{label}}}" if label else f"{name}_sum", total_ms / 1000.0),
        (f"{name}_count{{{label}}}" if label else f"{name}_count", float(lat.count)),
    ]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, int) or (math.isfinite(value) and value.is_integer()):
        return str(int(value))
    return repr(float(value))
