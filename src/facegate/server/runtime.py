"""Everything `facegate serve` runs in one process, started and stopped by the app's lifespan.

- the store (held for writing) and the gallery over it;
- the capture thread and the engine, which runs in a thread executor and hands its events to
  the loop through the bus (`call_soon_threadsafe`);
- the registration machine, fed from the bus and from the engine's registering face;
- the event history and the WebSocket hub as bus subscribers; a ticker for timeouts.
Stopping aborts an in-flight registration (nothing half-stored: the store is only written in
one transaction at the very end of a registration) and stops the threads within seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from facegate.bus import EventBus
from facegate.engine import Engine
from facegate.eventlog import EventLog
from facegate.events import Event, SourceStatus, type_name
from facegate.face import FaceAnalyzer
from facegate.gallery import Gallery
from facegate.monitor import Monitor
from facegate.registrar import Registrar
from facegate.registration import Observation
from facegate.settings import Settings
from facegate.sources import Capture, FrameSource
from facegate.store import Store
from facegate.unknowns import RecentUnknowns

log = logging.getLogger(__name__)
TICK_SECONDS = 0.25


class Runtime:
    def __init__(
        self,
        settings: Settings,
        data_dir: Path,
        source: FrameSource,
        analyzer_factory: Callable[[], FaceAnalyzer],
        *,
        loop_source: bool = False,
    ) -> None:
        self.settings = settings
        self.data_dir = data_dir
        self.source = source
        self.analyzer_factory = analyzer_factory
        self.loop_source = loop_source
        self.started = time.monotonic()
        self.monitor = Monitor()
        self.bus = EventBus(capacity=4096, on_publish=self._count)
        # Strangers seen recently (memory only), for the operator.
        self.unknowns = RecentUnknowns(
            settings.engine.unknowns_kept, settings.engine.unknowns_keep_seconds
        )
        self.store: Store | None = None
        self.gallery: Gallery | None = None
        self.engine: Engine | None = None
        self.capture: Capture | None = None
        self.registrar: Registrar | None = None
        self._upload_analyzer: FaceAnalyzer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._engine_done: asyncio.Future[None] | None = None
        self.source_state = "starting"
        # Set when the server begins shutting down: long responses (the MJPEG stream) end.
        self.closing = threading.Event()
        self.on_event: list[Callable[[Event], None]] = []

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.store = Store.open(self.data_dir)
        # Sequence numbers continue the history's, so `/api/events?since=SEQ` spans restarts.
        self.bus = EventBus(
            capacity=4096, first_seq=self.store.last_event_seq() + 1, on_publish=self._count
        )
        self.bus.attach(loop)
        self.gallery = Gallery.open(self.store, self.settings)
        analyzer = self.analyzer_factory()
        self.engine = Engine(
            analyzer,
            self.gallery,
            self.settings,
            self.bus.publish_threadsafe,
            monitor=self.monitor,
            unknowns=self.unknowns,
        )
        self.registrar = Registrar(
            self.gallery, self.settings, self.bus.publish, engine=self.engine
        )
        self.engine.on_observation = lambda obs: self._to_loop(loop, obs)
        self._tasks.append(asyncio.create_task(self._feed_registrar()))
        self._tasks.append(asyncio.create_task(self._ticker()))
        if self.settings.events.enabled:
            history = EventLog(
                self.store, self.settings.events, self.bus.subscribe("history", maxsize=10_000)
            )
            self._tasks.append(asyncio.create_task(history.run()))
        realtime = not self.source.live  # a file plays at its own pace, as a camera would
        self.capture = Capture(
            self.source, realtime=realtime, loop=self.loop_source, on_status=self._status
        )
        self.capture.start()
        self._engine_done = loop.run_in_executor(None, self.engine.run, self.capture)

    def _count(self, event: Event) -> None:
        self.monitor.published(type_name(event))

    def _to_loop(self, loop: asyncio.AbstractEventLoop, obs: Observation) -> None:
        registrar = self.registrar
        if registrar is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(registrar.observe, obs)

    def _status(self, status: SourceStatus) -> None:
        self.source_state = status.state
        self.monitor.source_state(status.state)
        self.bus.publish_threadsafe(status)

    async def _feed_registrar(self) -> None:
        sub = self.bus.subscribe("registrar", maxsize=4096)
        async for event in sub:
            if self.registrar is not None:
                self.registrar.on_event(event)
            for hook in self.on_event:
                hook(event)

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(TICK_SECONDS)
            if self.registrar is not None:
                self.registrar.tick()

    async def stop(self) -> None:
        self.closing.set()
        if self.registrar is not None:
            self.registrar.reset()  # an in-flight registration is dropped, never half-stored
        if self.engine is not None:
            self.engine.stop()
        if self._engine_done is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._engine_done, timeout=3.0)
        if self.capture is not None:
            await asyncio.to_thread(self.capture.stop, 1.0)
        await asyncio.sleep(0)  # let the last handed-over events arrive
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.bus.close()
        if self.store is not None:
            self.store.close()

    # -- services for the API ----------------------------------------------------------------
    def upload_analyzer(self) -> FaceAnalyzer:
        """A second analyzer for uploaded photos: the engine thread owns the first."""
        if self._upload_analyzer is None:
            self._upload_analyzer = self.analyzer_factory()
        return self._upload_analyzer

    @property
    def uptime(self) -> float:
        return time.monotonic() - self.started
