"""Everything `facegate serve` runs in one process, started and stopped by the app's lifespan.

- the live pipeline (live/pipeline.py, the same as `facegate run`'s): the store (held for writing)
  and the gallery over it, the capture thread, the engine in a thread executor handing its
  events to the loop through the bus, the event history;
- what `serve` adds: the registration runtime (live/registrar.py) on the pipeline's registration
  focus, fed from the bus and with the registering face of every frame, and a ticker for its
  timeouts. The WebSocket hub is the app's (server/app.py);
- when `mqtt.url` is set, the MQTT bridge (server/mqtt.py): a bus subscriber publishing to the
  broker (an unusable URL is logged and MQTT stays off; a broker that is away never stops the
  gate). It is stopped after the engine, so the last events and "offline" still go out.
Stopping aborts an in-flight registration (nothing half-stored: the store is only written in
one transaction at the very end of a registration) and stops the threads within seconds.

The services (`store`, `gallery`, `engine`, `registrar`, `bus`) exist from `start` on; asking
for one before raises NotStartedError (the app's handlers only run after the lifespan started
the runtime).

`apply_settings` (on the loop; server/reload.py decides which keys may change) hands new
settings to every service that holds them: the pipeline (the gallery, the history, the engine
at its next frame) and the registrar (when no registration is under way).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from facegate.events import Event
from facegate.identity.gallery import Gallery
from facegate.identity.store import Store
from facegate.live.bus import EventBus
from facegate.live.engine import Engine
from facegate.live.monitor import Monitor
from facegate.live.pipeline import Pipeline
from facegate.live.registrar import Registrar
from facegate.live.registration import Observation
from facegate.live.sources import FrameSource
from facegate.live.unknowns import RecentUnknowns
from facegate.server.mqtt import MqttBridge, MqttConfigError, bridge_for
from facegate.settings import Settings
from facegate.vision.face import FaceAnalyzer

log = logging.getLogger(__name__)
TICK_SECONDS = 0.25


class NotStartedError(RuntimeError):
    """A service of the runtime was asked for before `Runtime.start`."""


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
        # Strangers seen recently (memory only), for the operator.
        self.unknowns = RecentUnknowns(
            settings.engine.unknowns_kept, settings.engine.unknowns_keep_seconds
        )
        self._running: tuple[Pipeline, Registrar] | None = None
        self.mqtt: MqttBridge | None = None  # when `mqtt.url` is set, from `start` on
        self._upload_analyzer: FaceAnalyzer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.loop: asyncio.AbstractEventLoop | None = None  # the loop it runs on, from `start`
        # Set when the server begins shutting down: long responses (the MJPEG stream) end.
        self.closing = threading.Event()
        self.on_event: list[Callable[[Event], None]] = []

    # -- the services (from `start` on) ------------------------------------------------------
    @property
    def pipeline(self) -> Pipeline:
        return self._services()[0]

    @property
    def registrar(self) -> Registrar:
        return self._services()[1]

    @property
    def store(self) -> Store:
        return self.pipeline.store

    @property
    def gallery(self) -> Gallery:
        return self.pipeline.gallery

    @property
    def engine(self) -> Engine:
        return self.pipeline.engine

    @property
    def bus(self) -> EventBus:
        return self.pipeline.bus

    @property
    def source_state(self) -> str:
        """The camera's state: "starting" until its first `source_status`."""
        return "starting" if self._running is None else self._running[0].source_state

    def _services(self) -> tuple[Pipeline, Registrar]:
        if self._running is None:
            raise NotStartedError("the gate's services are not running yet (Runtime.start)")
        return self._running

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        loop = self.loop = asyncio.get_running_loop()
        pipeline = Pipeline.open(
            self.settings,
            self.data_dir,
            self.source,
            self.analyzer_factory(),
            realtime=not self.source.live,  # a file plays at its own pace, as a camera would
            loop_source=self.loop_source,
            monitor=self.monitor,
            unknowns=self.unknowns,
        )
        registrar = Registrar(
            pipeline.gallery, self.settings, pipeline.bus.publish, focus=pipeline.focus
        )
        # The registering face of every frame: from the engine thread to the registrar's loop.
        pipeline.focus.listen(functools.partial(_to_loop, loop, registrar.observe))
        self._running = (pipeline, registrar)
        self._tasks.append(asyncio.create_task(self._feed_registrar()))
        self._tasks.append(asyncio.create_task(self._ticker()))
        await self._start_mqtt(pipeline, registrar)
        pipeline.start()

    async def _start_mqtt(self, pipeline: Pipeline, registrar: Registrar) -> None:
        """The MQTT bridge, subscribed before the engine starts (it misses no event)."""
        try:
            bridge = bridge_for(self.settings, pipeline, registrar)
        except MqttConfigError as exc:
            log.error("%s; MQTT is off", exc)
            return
        if bridge is not None:
            await bridge.start()
            self.mqtt = bridge

    async def _feed_registrar(self) -> None:
        sub = self.bus.subscribe("registrar", maxsize=4096)
        async for event in sub:
            self.registrar.on_event(event)
            for hook in self.on_event:
                hook(event)

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(TICK_SECONDS)
            self.registrar.tick()

    async def stop(self) -> None:
        self.closing.set()
        if self._running is None:
            return
        pipeline, registrar = self._running
        registrar.reset()  # an in-flight registration is dropped, never half-stored
        await pipeline.halt()  # the engine, then the capture; handed-over events arrive
        if self.mqtt is not None:  # the last events, then "offline", then disconnect
            await self.mqtt.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await pipeline.close()

    def apply_settings(self, settings: Settings) -> None:
        """New settings for the running gate (on the loop): only keys that may change at run
        time differ from the running ones (server/reload.py)."""
        self.settings = settings
        if self._running is not None:
            pipeline, registrar = self._running
            pipeline.update_settings(settings)
            registrar.update_settings(settings)

    # -- services for the API ----------------------------------------------------------------
    def upload_analyzer(self) -> FaceAnalyzer:
        """A second analyzer for uploaded photos: the engine thread owns the first."""
        if self._upload_analyzer is None:
            self._upload_analyzer = self.analyzer_factory()
        return self._upload_analyzer

    @property
    def uptime(self) -> float:
        return time.monotonic() - self.started


def _to_loop(
    loop: asyncio.AbstractEventLoop,
    deliver: Callable[[Observation], None],
    observation: Observation,
) -> None:
    if not loop.is_closed():
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(deliver, observation)
