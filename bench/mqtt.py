"""MQTT bridge through a real Mosquitto (issue 13): event -> MQTT message latency, and what the
bridge costs the engine.

    .venv/bin/python bench/mqtt.py [--events 1000] [--rate 100] [--burst 2000] [--rounds 3]
        [--seconds 8] [--clip hamilton_short_clip.mp4] [--only latency|fps]

Needs Debian's mosquitto (`make setup`); the fps part also needs ../shared/data and the model
pack. The broker is started by tests/mosquitto.py on a free loopback port (no persistence).

1. **Latency.** The gate's pipeline (store, bus, engine; the engine is not run) with the real
   `MqttBridge` connected to Mosquitto, and a real MQTT subscriber (aiomqtt, in a thread of this
   process) on `P/G/events`. A thread plays the engine: it hands `system_ready` events to the
   bus with `publish_threadsafe`, each stamped with time.perf_counter_ns() in its message, at
   `--rate` a second (paced), then `--burst` at once. Latency = arrival at the subscriber -
   hand-over to the bus: bus -> bridge -> outbox -> aiomqtt -> Mosquitto -> subscriber. Prints
   p50/p95/p99/max and whether every event arrived.
2. **Engine fps.** The Hamilton clip looped for `--seconds`, as fast as possible (lockstep
   capture, one inference thread), lin_manuel_miranda enrolled, in `--rounds` rounds of three
   runs (after one warm-up run): MQTT off, MQTT on (bridge connected), broker down (the
   bridge's URL points at the stopped broker: it keeps retrying while events queue).
   Processed fps per run, and the median per mode. After each "down" run the broker is started
   again and a subscriber counts the events the bridge delivers from its outbox once it
   reconnects (no event lost while the broker was away, up to `mqtt.queue`).

No assertions: figures to read (docs/ or the issue).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import msgspec
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the broker fixture and the no-face analyzer

from facegate.events import SystemReady  # noqa: E402
from facegate.live.pipeline import Pipeline  # noqa: E402
from facegate.live.sources import ImageFolderSource, VideoFileSource  # noqa: E402
from facegate.server.mqtt import MqttBridge  # noqa: E402
from facegate.settings import GateSettings, MqttSettings, Settings, load_settings  # noqa: E402
from fakes import NoFaces  # noqa: E402
from mosquitto import Broker, Subscriber, find_mosquitto  # noqa: E402

VIDEO = REPO.parent / "shared" / "data" / "video"
PREFIX, GATE = "facegate", "bench"
EVENTS = f"{PREFIX}/{GATE}/events"


def percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def settings_for(url: str) -> Settings:
    base = load_settings(environ={})
    mqtt = MqttSettings(url=url, topic_prefix=PREFIX, reconnect_max_seconds=2.0, queue=100_000)
    # Short clips: strangers are offered after 0.5 s still (as bench/engine.py).
    engine = msgspec.structs.replace(base.engine, stable_seconds=0.5)
    return msgspec.structs.replace(base, gate=GateSettings(id=GATE), mqtt=mqtt, engine=engine)


async def wait_connected(bridge: MqttBridge, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not bridge.connected:
        if time.monotonic() > deadline:
            raise SystemExit(f"the bridge did not connect within {timeout:.0f} s")
        await asyncio.sleep(0.02)


# -- 1. latency ----------------------------------------------------------------------------------
async def latency(broker: Broker, tmp: Path, events: int, rate: float, burst: int) -> None:
    folder = tmp / "blank"
    folder.mkdir()
    cv2.imwrite(str(folder / "blank.jpg"), np.full((480, 640, 3), 128, np.uint8))
    settings = settings_for(broker.url())
    pipeline = Pipeline.open(
        settings,
        tmp / "latency-data",
        ImageFolderSource(folder, fps=5),
        NoFaces(),
        realtime=True,
        loop_source=True,
    )
    bridge = MqttBridge.for_pipeline(settings, pipeline)
    await bridge.start()
    await wait_connected(bridge)
    with Subscriber(broker, [EVENTS]) as sub:
        await asyncio.sleep(0.5)  # the bridge's republication goes first

        def play(count: int, per_second: float | None) -> None:
            start = time.perf_counter()
            for i in range(count):
                if per_second:
                    delay = start + i / per_second - time.perf_counter()
                    if delay > 0:
                        time.sleep(delay)
                stamp = time.perf_counter_ns()
                pipeline.bus.publish_threadsafe(SystemReady(message=f"t={stamp} i={i}"))

        for label, count, per_second in (
            (f"paced {rate:g}/s", events, rate),
            ("burst", burst, None),
        ):
            mark = sub.mark()
            began = time.perf_counter()
            await asyncio.to_thread(play, count, per_second)
            deadline = time.monotonic() + 30
            while len(stamped(sub, mark)) < count and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            took = time.perf_counter() - began
            lat = sorted(stamped(sub, mark))
            ms = [x / 1e6 for x in lat]
            print(
                f"  {label}: {len(lat)}/{count} delivered in {took:.2f} s;"
                f" latency p50 {percentile(ms, 50):.2f} ms, p95 {percentile(ms, 95):.2f} ms,"
                f" p99 {percentile(ms, 99):.2f} ms, max {ms[-1] if ms else float('nan'):.2f} ms"
            )
    stats = bridge.stats()
    print(f"  bridge: {stats['published']} published, {stats['dropped']} dropped")
    await bridge.stop()
    await pipeline.halt()
    await pipeline.close()


def stamped(sub: Subscriber, after: int) -> list[int]:
    """Latencies (ns) of the stamped system_ready messages from index `after` on."""
    out = []
    for m in sub.received()[after:]:
        data = json.loads(m.payload).get("data", {})
        text = data.get("message", "")
        if text.startswith("t="):
            out.append(m.at_ns - int(text[2:].split(" ", 1)[0]))
    return out


# -- 2. engine fps -------------------------------------------------------------------------------
def enrol(data: Path, analyzer: Any) -> None:
    from facegate.identity.gallery import Gallery
    from facegate.identity.store import NewEmbedding, Store
    from facegate.vision.face import main_face
    from facegate.vision.images import read_image

    with Store.open(data) as store:
        gallery = Gallery.open(store, Settings())
        face, _ = main_face(analyzer, read_image(VIDEO / "enrol" / "lin_manuel_miranda.png"))
        assert face is not None and face.embedding is not None
        gallery.create_person("lin_manuel_miranda", [NewEmbedding(face.embedding)], actor="bench")


async def engine_run(
    mode: str, broker: Broker, data: Path, clip: Path, analyzer: Any, *, seconds: float
) -> dict[str, Any]:
    """The clip in a loop, as fast as possible, for `seconds`; `mode` off | on | down."""
    settings = settings_for(broker.url() if mode != "off" else "")
    if mode == "down":
        broker.stop()
    elif not broker.running:
        broker.start()
    pipeline = Pipeline.open(
        settings, data, VideoFileSource(clip), analyzer, realtime=False, loop_source=True
    )
    counter = pipeline.bus.subscribe("bench", maxsize=1_000_000)
    bridge = MqttBridge.for_pipeline(settings, pipeline) if mode != "off" else None
    if bridge is not None:
        await bridge.start()
        if mode == "on":
            await wait_connected(bridge)
    began = time.perf_counter()
    pipeline.start()
    await asyncio.sleep(seconds)
    frames = pipeline.monitor.snapshot().frames_processed
    wall = time.perf_counter() - began
    await pipeline.halt(settle=0.05)
    events = 0
    while counter.get_nowait() is not None:
        events += 1
    out: dict[str, Any] = {
        "mode": mode,
        "fps": frames / wall,
        "frames": frames,
        "events": events,
    }
    if bridge is not None and mode == "down":
        # The broker comes back: what waited in the outbox reaches a subscriber.
        queued = bridge.stats()["queued"]
        broker.start()
        with Subscriber(broker, [EVENTS]) as sub:
            await wait_connected(bridge, timeout=30)
            deadline = time.monotonic() + 15
            while len(sub.received()) < events and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)
            delivered = sub.received()
            greeted = sum(
                1 for m in delivered if json.loads(m.payload)["type"] == "person_recognized"
            )
        out |= {"queued": queued, "delivered_after": len(delivered), "greeted_after": greeted}
    if bridge is not None:
        out["dropped"] = bridge.stats()["dropped"]
        await bridge.stop()
    counter.close()
    await pipeline.close()
    return out


async def fps(broker: Broker, tmp: Path, clip: Path, rounds: int, seconds: float) -> None:
    from facegate.settings import models_dir
    from facegate.vision.faceplugin import FacepluginAnalyzer

    analyzer = FacepluginAnalyzer(models_dir(load_settings()) / "faceplugin", threads=1)
    data = tmp / "fps-data"
    enrol(data, analyzer)
    # One warm-up pass (models, caches) not counted.
    await engine_run("off", broker, data, clip, analyzer, seconds=3.0)
    by_mode: dict[str, list[float]] = {"off": [], "on": [], "down": []}
    for r in range(rounds):
        for mode in ("off", "on", "down"):
            result = await engine_run(mode, broker, data, clip, analyzer, seconds=seconds)
            by_mode[mode].append(result["fps"])
            extra = ""
            if mode == "down":
                extra = (
                    f"; queued {result['queued']} while down, {result['delivered_after']}"
                    f" of {result['events']} events delivered after reconnecting"
                    f" ({result['greeted_after']} person_recognized)"
                )
            if "dropped" in result:
                extra += f"; dropped {result['dropped']}"
            print(
                f"  round {r + 1} MQTT {mode:>4}: {result['fps']:.1f} fps"
                f" ({result['frames']} frames, {result['events']} events){extra}"
            )
    off = statistics.median(by_mode["off"])
    for mode in ("off", "on", "down"):
        med = statistics.median(by_mode[mode])
        print(
            f"  median MQTT {mode:>4}: {med:.1f} fps ({100 * (med / off - 1):+.1f}% vs off;"
            f" runs {', '.join(f'{x:.1f}' for x in by_mode[mode])})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1000, help="paced events (latency)")
    parser.add_argument("--rate", type=float, default=100.0, help="paced events a second")
    parser.add_argument("--burst", type=int, default=2000, help="events handed over at once")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of off/on/down fps runs")
    parser.add_argument("--clip", default="hamilton_short_clip.mp4")
    parser.add_argument("--seconds", type=float, default=8.0, help="each fps run (clip looped)")
    parser.add_argument("--only", choices=["latency", "fps"])
    args = parser.parse_args()
    # The bridge's own lines (e.g. "cannot connect ... retrying" in the broker-down runs).
    logging.basicConfig(level=logging.WARNING, format="    log: %(message)s", stream=sys.stdout)
    if find_mosquitto() is None:
        sys.exit("mosquitto is not installed (`make setup` installs Debian's mosquitto)")
    with tempfile.TemporaryDirectory() as name, Broker(Path(name) / "broker") as broker:
        tmp = Path(name)
        if args.only in (None, "latency"):
            print(f"== event -> MQTT message latency through Mosquitto ({broker.url()}) ==")
            asyncio.run(latency(broker, tmp, args.events, args.rate, args.burst))
        if args.only in (None, "fps"):
            clip = VIDEO / args.clip
            if not clip.is_file():
                print(f"(engine fps skipped: {clip} not found)")
                return
            print(f"== engine fps on {clip.name}, as fast as possible: MQTT off / on / down ==")
            asyncio.run(fps(broker, tmp, clip, args.rounds, args.seconds))


if __name__ == "__main__":
    main()
