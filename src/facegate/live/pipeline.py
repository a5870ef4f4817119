"""The live pipeline, assembled in one place for `facegate run` and `facegate serve`:

    source -> Capture (its thread) -> Engine (an executor thread; the Gallery over the Store)
           -> EventBus (the loop) -> the event history, and each command's own subscribers

`Pipeline.open` opens the store (read-only beside a running `serve` when asked to) and the
gallery over it, makes the bus (counted by the monitor; sequence numbers continue the
history's, so `/api/events?since=SEQ` spans restarts), the engine with its registration focus
and recent unknowns, the event history (only when the store is writable and `events.enabled`)
and the capture. Every service is there from `open` on: nothing optional. `start` runs them;
`halt` stops the engine and the capture and lets the events already handed over arrive;
`close` writes the rest of the history and closes the bus and the store.

What each command adds: `run` (cli/live.py) a printer and its signal handlers; `serve`
(server/runtime.py) the registrar on the focus, its feed and ticker, and (server/app.py) the
WebSocket hub.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path

from facegate.events import Event, SourceStatus, Tracks, type_name
from facegate.identity.follower import GalleryFollower
from facegate.identity.gallery import Gallery
from facegate.identity.store import Store, StoreLockedError
from facegate.live.bus import EventBus
from facegate.live.challenge import Challenger
from facegate.live.engine import Engine
from facegate.live.eventlog import EventLog
from facegate.live.focus import RegistrationFocus
from facegate.live.monitor import Monitor
from facegate.live.sources import Capture, FrameSource
from facegate.live.unknowns import RecentUnknowns
from facegate.settings import Settings
from facegate.vision.analyzers import liveness_models
from facegate.vision.face import FaceAnalyzer

BUS_CAPACITY = 4096  # the engine's events waiting for the loop
HISTORY_QUEUE = 10_000  # events waiting for the history writer
ENGINE_STOP_SECONDS = 3.0
CAPTURE_STOP_SECONDS = 1.0


def open_store(
    settings: Settings, data_dir: Path, *, readonly_fallback: bool = False
) -> tuple[Store, bool]:
    """The gate's store (`[store] url`, else SQLite in `data_dir`) for writing, and whether it
    is writable: with `readonly_fallback`, read-only when another process (a running `serve`)
    holds the data directory."""
    url, gate = settings.store.url, settings.gate.id
    try:
        return Store.open(data_dir, url=url, gate=gate), True
    except StoreLockedError:
        if not readonly_fallback:
            raise
        return Store.open(data_dir, readonly=True, url=url, gate=gate), False


class Pipeline:
    """The live gate's services, every one of them there from construction on. Use
    `Pipeline.open`; `start` runs them."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        gallery: Gallery,
        source: FrameSource,
        analyzer: FaceAnalyzer,
        *,
        writable: bool,
        realtime: bool,
        loop_source: bool,
        monitor: Monitor | None = None,
        unknowns: RecentUnknowns | None = None,
        on_tracks: Callable[[Tracks], None] | None = None,
    ) -> None:
        cfg = settings.engine
        self.settings = settings
        self.store = store
        self.writable = writable  # False: read-only beside a running `serve`, no history
        self.gallery = gallery
        self.monitor = monitor if monitor is not None else Monitor()
        self.unknowns = (
            unknowns
            if unknowns is not None
            else RecentUnknowns(cfg.unknowns_kept, cfg.unknowns_keep_seconds)
        )
        self.source_state = "starting"  # the capture's latest `source_status`
        self._loop = asyncio.get_running_loop()
        self.bus = EventBus(
            capacity=BUS_CAPACITY,
            gate_id=settings.gate.id,
            first_seq=store.last_event_seq(settings.gate.id) + 1,
            on_publish=self._count,
        )
        self.bus.attach(self._loop)
        self.focus = RegistrationFocus()  # the registrar's side is `serve`'s (or nobody's)
        landmarks, passive = liveness_models(settings, analyzer)
        challenger = Challenger(
            settings.liveness,
            feedback_interval=settings.registration.feedback_interval_seconds,
            landmarks=landmarks,
            passive=passive,
        )
        self.engine = Engine(
            analyzer,
            gallery,
            settings,
            self.bus.publish_threadsafe,
            monitor=self.monitor,
            unknowns=self.unknowns,
            on_tracks=on_tracks,
            focus=self.focus,
            challenger=challenger,
        )
        self.capture = Capture(source, realtime=realtime, loop=loop_source, on_status=self._status)
        # What other processes change in the store reaches this gallery (a shared store's
        # other gates; a `serve` beside a read-only `run`).
        self.follower = GalleryFollower(gallery)
        self._histories: list[EventLog] = []  # one when the history is kept, else none
        if writable and settings.events.enabled:
            sub = self.bus.subscribe("history", maxsize=HISTORY_QUEUE)
            self._histories.append(EventLog(store, settings.events, sub))
        self._tasks: list[asyncio.Task[None]] = []
        self._engine_done: asyncio.Future[None] | None = None

    @classmethod
    def open(
        cls,
        settings: Settings,
        data_dir: Path,
        source: FrameSource,
        analyzer: FaceAnalyzer,
        *,
        realtime: bool,
        loop_source: bool,
        readonly_fallback: bool = False,
        monitor: Monitor | None = None,
        unknowns: RecentUnknowns | None = None,
        on_tracks: Callable[[Tracks], None] | None = None,
    ) -> Pipeline:
        """The store of `data_dir` and the gallery over it, and the pipeline around them:
        everything built, nothing running. Call it on the loop that will run it. Raises
        StoreError (e.g. StoreLockedError) when the store or the gallery cannot be opened.

        `realtime`: a file is played at its own pace (as a camera would deliver it), else as
        fast as the engine takes it; `loop_source`: a file starts again at its end;
        `readonly_fallback`: see `open_store`; `on_tracks`: each processed frame's faces, on
        the engine thread."""
        store, writable = open_store(settings, data_dir, readonly_fallback=readonly_fallback)
        try:
            gallery = Gallery.open(store, settings)
            return cls(
                settings,
                store,
                gallery,
                source,
                analyzer,
                writable=writable,
                realtime=realtime,
                loop_source=loop_source,
                monitor=monitor,
                unknowns=unknowns,
                on_tracks=on_tracks,
            )
        except BaseException:
            store.close()
            raise

    @property
    def source(self) -> FrameSource:
        return self.capture.source

    @property
    def running(self) -> bool:
        """The engine runs: started, and not stopped, ended or failed."""
        return self._engine_done is not None and not self._engine_done.done()

    def update_settings(self, settings: Settings) -> None:
        """Settings changed at run time (on the loop): the gallery and the history take them
        now, the engine at its next frame."""
        self.settings = settings
        self.gallery.settings = settings
        for history in self._histories:
            history.settings = settings.events
        self.engine.update_settings(settings)

    def _count(self, event: Event) -> None:
        self.monitor.published(type_name(event))

    def _status(self, status: SourceStatus) -> None:
        """The capture's state (its thread): kept, counted and published."""
        self.source_state = status.state
        self.monitor.source_state(status.state)
        self.bus.publish_threadsafe(status)

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Run the history writer (a task), the capture (its thread) and the engine (an
        executor thread), on the loop the pipeline was opened on."""
        if self._engine_done is not None:
            raise RuntimeError("pipeline already started")
        self._tasks += [self._loop.create_task(h.run()) for h in self._histories]
        self.follower.start()
        self.capture.start()
        self._engine_done = self._loop.run_in_executor(None, self.engine.run, self.capture)

    async def wait(self) -> None:
        """Until the engine ends: the source ended (a finished file) or `engine.stop()`."""
        if self._engine_done is None:
            raise RuntimeError("pipeline not started")
        await self._engine_done

    async def halt(self, settle: float = 0.0) -> None:
        """Stop the engine (waiting for it a few seconds) and the capture, then let the
        events the engine thread handed over reach the subscribers (`settle` seconds)."""
        self.engine.stop()
        self.follower.stop(timeout=0.0)
        if self._engine_done is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._engine_done, timeout=ENGINE_STOP_SECONDS)
        await asyncio.to_thread(self.capture.stop, CAPTURE_STOP_SECONDS)
        await asyncio.sleep(settle)

    async def close(self) -> None:
        """After `halt`: the history writes what it still holds, the bus (every subscription)
        and the store are closed."""
        for history in self._histories:
            queued: list[Event] = []
            while (event := history.subscription.get_nowait()) is not None:
                queued.append(event)
            if queued:
                history.write(queued)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.bus.close()
        await asyncio.to_thread(self.follower.stop)
        self.store.close()
