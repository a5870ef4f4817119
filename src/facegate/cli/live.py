"""`facegate run` (the live engine, headless, events as lines; `--mqtt URL`: also to a broker)
and `facegate schema`."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from typing import TYPE_CHECKING

import msgspec

from facegate.cli.common import EXIT_OK, Context
from facegate.events import Event, Tracks, data_of, to_wire, type_name
from facegate.identity.store import StoreError

if TYPE_CHECKING:
    from facegate.live.bus import Subscription
    from facegate.server.mqtt import MqttBridge


def _line(event: Event, as_json: bool) -> str:
    if as_json:
        return to_wire(event).decode()
    if isinstance(event, Tracks):
        faces = ", ".join(
            f"#{t.track_id} {t.name if t.name else t.state}"
            + (f" {t.similarity:.2f}" if t.similarity is not None else "")
            + (f" liveness {t.liveness}" if t.liveness is not None else "")
            for t in event.tracks
        )
        return f"frame {event.frame} t={event.frame_time:.3f}s tracks: {faces or '-'}"
    data = data_of(event)
    what = data.get("message") or data.get("state") or ""
    track = f" (track {data['track_id']})" if data.get("track_id") is not None else ""
    return f"{data['timestamp']} #{event.seq} {type_name(event)}: {what}{track}"


def _write_line(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


async def _print(sub: Subscription, as_json: bool) -> None:
    async for event in sub:
        sys.stdout.write(_line(event, as_json) + "\n")
        sys.stdout.flush()


async def _run(ctx: Context) -> int:
    from facegate.live.pipeline import Pipeline
    from facegate.live.sources import SourceError, open_source

    args = ctx.args
    settings = ctx.settings
    if args.mqtt:  # only when asked: MQTT settings in the environment are `serve`'s
        from facegate.server.mqtt import MqttConfigError, parse_url

        settings = msgspec.structs.replace(
            settings, mqtt=msgspec.structs.replace(settings.mqtt, url=args.mqtt)
        )
        try:
            parse_url(args.mqtt)
        except MqttConfigError as exc:
            return ctx.out.fail(str(exc))
    try:
        source = open_source(args.source)
    except SourceError as exc:
        return ctx.out.fail(str(exc))
    loop = asyncio.get_running_loop()
    on_tracks = None
    if args.tracks:
        as_json = ctx.out.as_json

        def on_tracks(view: Tracks) -> None:  # the engine thread -> the loop, in order
            loop.call_soon_threadsafe(_write_line, _line(view, as_json))

    # The data directory for writing (events are logged), or read-only beside a running
    # `serve` (recognition works; history is not written).
    pipeline = Pipeline.open(
        settings,
        ctx.data_dir,
        source,
        ctx.analyzer(),
        realtime=args.realtime,
        loop_source=args.loop,
        readonly_fallback=True,
        on_tracks=on_tracks,
    )
    if not pipeline.writable:
        print("facegate: data directory in use; running without event history", file=sys.stderr)
    printer = pipeline.bus.subscribe("stdout", maxsize=100_000)
    printing = asyncio.create_task(_print(printer, ctx.out.as_json))
    bridge: MqttBridge | None = None
    if args.mqtt:
        from facegate.server.mqtt import MqttBridge

        bridge = MqttBridge.for_pipeline(settings, pipeline)  # no registrar: `run` registers nobody
        await bridge.start()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, pipeline.engine.stop)
    pipeline.start()
    try:
        await pipeline.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        # Let events handed over by the engine thread reach the subscribers, then finish.
        await pipeline.halt(settle=0.05)
        if bridge is not None:  # the last events, "offline", disconnect
            await bridge.stop()
        while (event := printer.get_nowait()) is not None:
            sys.stdout.write(_line(event, ctx.out.as_json) + "\n")
        printer.close()
        sys.stdout.flush()
        await asyncio.gather(printing, return_exceptions=True)
        await pipeline.close()
    return EXIT_OK


def cmd_run(ctx: Context) -> int:
    try:
        return asyncio.run(_run(ctx))
    except StoreError as exc:
        return ctx.out.fail(str(exc))


def cmd_schema(ctx: Context) -> int:
    """Every message the server sends: the events, `tracks` and the replies (as /api/schema)."""
    from facegate.server.protocol import wire_schema

    sys.stdout.write(json.dumps(wire_schema(), indent=None if ctx.out.as_json else 2) + "\n")
    return EXIT_OK
