"""`facegate run` (the live engine, headless, events as lines) and `facegate schema`."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from typing import TYPE_CHECKING

from facegate.cli.common import EXIT_OK, Context
from facegate.events import Event, Tracks, data_of, json_schema, to_wire, type_name
from facegate.store import Store, StoreError, StoreLockedError

if TYPE_CHECKING:
    from facegate.bus import Subscription


def open_store_for_run(ctx: Context) -> tuple[Store, bool]:
    """The data directory for writing (events are logged), or read-only beside a running
    `serve` (recognition works; history is not written)."""
    try:
        return ctx.store(readonly=False), True
    except StoreLockedError:
        print("facegate: data directory in use; running without event history", file=sys.stderr)
        return ctx.store(readonly=True), False


def _line(event: Event, as_json: bool) -> str:
    if as_json:
        return to_wire(event).decode()
    if isinstance(event, Tracks):
        faces = ", ".join(
            f"#{t.track_id} {t.name if t.name else t.state}"
            + (f" {t.similarity:.2f}" if t.similarity is not None else "")
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


async def _run(ctx: Context, store: Store, writable: bool) -> int:
    from facegate.bus import EventBus
    from facegate.engine import Engine
    from facegate.eventlog import EventLog
    from facegate.gallery import Gallery
    from facegate.monitor import Monitor
    from facegate.sources import Capture, SourceError, open_source

    args = ctx.args
    try:
        source = open_source(args.source)
    except SourceError as exc:
        return ctx.out.fail(str(exc))
    analyzer = ctx.analyzer()
    gallery = Gallery.open(store, ctx.settings)
    loop = asyncio.get_running_loop()
    monitor = Monitor()
    bus = EventBus(
        first_seq=store.last_event_seq() + 1,
        on_publish=lambda event: monitor.published(type_name(event)),
    )
    bus.attach(loop)
    printer = bus.subscribe("stdout", maxsize=100_000)
    tasks = [asyncio.create_task(_print(printer, ctx.out.as_json))]
    history = None
    if writable and ctx.settings.events.enabled:
        history = EventLog(store, ctx.settings.events, bus.subscribe("history", maxsize=10_000))
        tasks.append(asyncio.create_task(history.run()))
    capture = Capture(
        source, realtime=args.realtime, loop=args.loop, on_status=bus.publish_threadsafe
    )
    on_tracks = None
    if args.tracks:
        as_json = ctx.out.as_json

        def on_tracks(view: Tracks) -> None:  # the engine thread -> the loop, in order
            loop.call_soon_threadsafe(_write_line, _line(view, as_json))

    engine = Engine(
        analyzer,
        gallery,
        ctx.settings,
        bus.publish_threadsafe,
        monitor=monitor,
        on_tracks=on_tracks,
    )
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, engine.stop)
    capture.start()
    try:
        await loop.run_in_executor(None, engine.run, capture)
    finally:
        capture.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    # Let events handed over by the engine thread reach the subscribers, then finish.
    await asyncio.sleep(0.05)
    for sub in [printer] + ([history.subscription] if history else []):
        while (event := sub.get_nowait()) is not None:
            if sub is printer:
                sys.stdout.write(_line(event, ctx.out.as_json) + "\n")
            elif history is not None:
                history.write([event])
        sub.close()
    sys.stdout.flush()
    await asyncio.gather(*tasks, return_exceptions=True)
    return EXIT_OK


def cmd_run(ctx: Context) -> int:
    store, writable = open_store_for_run(ctx)
    try:
        return asyncio.run(_run(ctx, store, writable))
    except StoreError as exc:
        return ctx.out.fail(str(exc))
    finally:
        store.close()


def cmd_schema(ctx: Context) -> int:
    sys.stdout.write(json.dumps(json_schema(), indent=None if ctx.out.as_json else 2) + "\n")
    return EXIT_OK
