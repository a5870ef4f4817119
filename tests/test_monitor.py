"""The monitor: rates over the window, percentiles, latency, counters, Prometheus text."""

from __future__ import annotations

import re
import threading

import msgspec
import numpy as np
import pytest

from facegate.live.monitor import Monitor, MonitorSnapshot, StageLatency


class FakeClock:
    def __init__(self, t: float = 100.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_fps_over_the_window() -> None:
    clock = FakeClock(0.0)
    mon = Monitor(clock, window_s=5.0)
    assert mon.snapshot().capture_fps == 0.0
    for k in range(40):  # 4 frames a second for 10 s, every other one processed
        clock.t = k * 0.25
        mon.frame_captured()
        if k % 2 == 0:
            mon.frame_processed()
        if k == 3:  # under a second of uptime: over one second
            assert mon.snapshot().capture_fps == pytest.approx(4.0)
        if k == 11:  # during the first window: over the uptime
            assert mon.snapshot().capture_fps == pytest.approx(12 / 2.75)
    clock.t = 10.0
    snap = mon.snapshot()
    assert snap.capture_fps == pytest.approx(4.0)
    assert snap.processed_fps == pytest.approx(2.0)
    assert (snap.frames_captured, snap.frames_processed) == (40, 20)
    assert snap.uptime_s == 10.0
    mon.frame_captured(n=10)  # a burst
    assert mon.snapshot().capture_fps == pytest.approx(6.0)
    clock.t = 30.0  # idle: the window empties, the totals stay
    snap = mon.snapshot()
    assert (snap.capture_fps, snap.processed_fps, snap.frames_captured) == (0.0, 0.0, 50)


def test_percentiles_match_numpy() -> None:
    rng = np.random.default_rng(7)
    values = rng.gamma(2.0, 5.0, size=300).tolist()
    mon = Monitor(FakeClock(), samples=100)
    for v in values:
        mon.stage("detect", v)
    mon.stage("embed", 3.0)
    stages = mon.snapshot().stages
    recent = values[-100:]
    assert stages["detect"].p50_ms == pytest.approx(float(np.percentile(recent, 50)))
    assert stages["detect"].p95_ms == pytest.approx(float(np.percentile(recent, 95)))
    assert stages["detect"].count == 300
    assert stages["embed"] == StageLatency(p50_ms=3.0, p95_ms=3.0, count=1)
    for n in (2, 3, 10, 11):
        mon = Monitor(FakeClock())
        for v in values[:n]:
            mon.stage("s", v)
        lat = mon.snapshot().stages["s"]
        assert lat.p50_ms == pytest.approx(float(np.percentile(values[:n], 50)))
        assert lat.p95_ms == pytest.approx(float(np.percentile(values[:n], 95)))


def test_events_and_frame_to_event_latency() -> None:
    clock = FakeClock(50.0)
    mon = Monitor(clock)
    assert mon.snapshot().frame_to_event == StageLatency(0.0, 0.0, 0)
    mon.frame_to_event("person_recognized", 49.95)
    mon.frame_to_event("unknown_person_detected", 49.99)
    for kind in ("person_recognized", "unknown_person_detected", "unknown_person_detected"):
        mon.published(kind)
    mon.published("system_ready")
    snap = mon.snapshot()
    assert (snap.events, snap.recognitions, snap.unknowns) == (4, 1, 2)
    assert snap.frame_to_event.count == 2
    assert snap.frame_to_event.p50_ms == pytest.approx(30.0)
    assert snap.frame_to_event.p95_ms == pytest.approx(48.0)


def test_counters_and_source_state() -> None:
    mon = Monitor(FakeClock())
    assert mon.snapshot().source_state == "starting"
    mon.frames_dropped(7)
    mon.frames_dropped(9)  # the capture's running total, not an increment
    mon.source_state("unavailable")
    snap = mon.snapshot()
    assert (snap.frames_dropped, snap.source_state) == (9, "unavailable")
    with pytest.raises(ValueError, match="source state"):
        mon.source_state("sleeping")


def test_snapshot_is_frozen_and_encodable() -> None:
    mon = Monitor(FakeClock())
    mon.stage("detect", 12.5)
    mon.published("person_recognized")
    snap = mon.snapshot()
    with pytest.raises(AttributeError):
        snap.uptime_s = 1.0  # type: ignore[misc]
    raw = msgspec.json.encode(snap)
    assert msgspec.json.decode(raw, type=MonitorSnapshot) == snap
    assert msgspec.json.decode(raw)["stages"]["detect"]["count"] == 1


SAMPLE = re.compile(
    r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)"
    r'(?:\{(?P<labels>[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*"'
    r'(?:,[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*")*)?\})?'
    r" (?P<value>\S+)$"
)


def test_prometheus_text_parses() -> None:
    clock = FakeClock(0.0)
    mon = Monitor(clock)
    for k in range(10):
        clock.t = k * 0.5
        mon.frame_captured()
        mon.frame_processed()
        mon.stage("detect", 10.0 + k)
        mon.stage('odd"stage\\', 1.0)
        mon.frame_to_event("person_recognized", clock.t - 0.02)
        mon.published("person_recognized")
    mon.frames_dropped(3)
    mon.source_state("connected")
    text = mon.prometheus()
    assert text.endswith("\n")

    types: dict[str, str] = {}
    samples: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            kind, name, rest = line[2:].split(" ", 2)
            assert kind in ("HELP", "TYPE") and name.startswith("facegate_") and rest
            if kind == "TYPE":
                assert rest in ("counter", "gauge", "summary")
                types[name] = rest
            continue
        m = SAMPLE.match(line)
        assert m, line
        value = float(m["value"])
        base = re.sub(r"_(sum|count)$", "", m["name"])
        assert m["name"] in types or types.get(base) == "summary", line
        samples[m["name"], m["labels"] or ""] = value

    assert {n for n, t in types.items() if t == "counter"} >= {
        "facegate_frames_captured_total",
        "facegate_events_total",
    }
    assert all(n.endswith("_total") for n, t in types.items() if t == "counter")
    assert samples["facegate_frames_captured_total", ""] == 10
    assert samples["facegate_frames_dropped_total", ""] == 3
    assert samples["facegate_recognitions_total", ""] == 10
    assert samples["facegate_stage_latency_seconds", 'stage="detect",quantile="0.5"'] == (
        pytest.approx(0.0145)
    )
    assert samples["facegate_stage_latency_seconds_count", 'stage="detect"'] == 10
    assert samples["facegate_stage_latency_seconds_sum", 'stage="detect"'] == pytest.approx(0.145)
    assert ("facegate_stage_latency_seconds_count", 'stage="odd\\"stage\\\\"') in samples
    assert samples["facegate_frame_to_event_seconds", 'quantile="0.95"'] == pytest.approx(0.02)
    assert samples["facegate_source_state", 'state="connected"'] == 1
    assert samples["facegate_source_state", 'state="starting"'] == 0
    assert samples["facegate_capture_fps", ""] == pytest.approx(10 / 4.5)


def test_thread_safety_smoke() -> None:
    mon = Monitor()
    n = 20_000

    def hammer(name: str) -> None:
        for i in range(n):
            mon.stage(name, float(i % 97))
            mon.stage("shared", 1.0)

    threads = [threading.Thread(target=hammer, args=(f"t{k}",)) for k in range(2)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        mon.snapshot()
        mon.prometheus()
    for t in threads:
        t.join()
    stages = mon.snapshot().stages
    assert stages["shared"].count == 2 * n
    assert stages["t0"].count == stages["t1"].count == n
