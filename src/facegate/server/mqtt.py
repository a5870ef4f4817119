"""The MQTT bridge: the gate's events to a broker (and Home Assistant), commands back.

`MqttBridge` runs on the server's event loop beside the other bus subscribers (it is started by
`Runtime.start` when `mqtt.url` is set, and by `facegate run --mqtt URL`). What it publishes is
built by the pure `homeassistant.py`; this module owns the broker's address (`parse_url`) and
the bridge: when to publish, and the connection. Its parts: what waits in `mqtt_outbox.py`, the
gate's state in `mqtt_status.py`, the persons and people topics in `mqtt_persons.py`, the
commands in `mqtt_commands.py`.

- **Never slows the gate.** It consumes its own bus subscription (`live.bus`): the engine only
  hands events to the bus. Each event becomes messages at once (the WebSocket JSON on
  `P/G/events`; the retained `P/G/state` when the gate's state changes; `P/people/<slug>`, a
  JPEG on `P/G/snapshot` and a Frigate-shaped update for a recognition or a stranger; the
  people and state topics again when a liveness_result settles the access) and goes
  into the `Outbox` (`mqtt_outbox.py`): retained messages (availability, state, people,
  recognition, diagnostics, discovery) are coalesced by topic (only the latest of each waits)
  and never dropped; the others are bounded by `mqtt.queue`, the oldest dropped first. One
  sender task publishes from it while connected; with the broker away the gate goes on and the
  outbox holds what waits.
- **Connection.** aiomqtt with the last will "offline" (retained) on `P/G/availability`, a fixed
  client id per gate (`facegate-<prefix>-<gate>`: a restarted gate takes over its old session
  at once), TLS for `mqtts://` (the system's CAs, or `mqtt.tls_ca`). A lost or refused
  connection is retried with exponential backoff (1 s doubling to `reconnect_max_seconds`).
  One log line per change of the connection's state, the URL always with its password masked.
- **Republication.** After every (re)connect, and when Home Assistant announces itself
  (`<discovery>/status` = "online", not retained): availability "online", every discovery
  config (the device, one per enrolled person), the switch's state, the gate's state and the
  diagnostics go out before anything else. People topics are shared by every gate on the
  broker, so after a (re)connect a person's last seen is published again only when the broker
  has none, or an older one, a moment after subscribing (`PEOPLE_CHECK_SECONDS`); a newer one
  heard from another gate is adopted. Discovery configs under this gate's node that it no
  longer publishes (a person erased while the broker was away) are emptied when heard.
- **Persons.** Enrolments, renames and erasures (`Gallery.version`) become discovery configs
  and people topics: `mqtt_persons.Persons` (see there).
- **Commands.** `P/G/recognition/set` and `P/G/registration/decision` are routed to
  `mqtt_commands.Commands` (see there).
- **Stopping.** `stop` takes the events already handed over, publishes what waits (for up to
  `FLUSH_SECONDS`), then "offline" (retained), then disconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
import urllib.parse
from typing import TYPE_CHECKING, Any, Final

import aiomqtt
import msgspec

from facegate import __version__
from facegate.events import (
    Event,
    LivenessResult,
    PersonRecognized,
    UnknownPersonDetected,
    type_name,
)
from facegate.live.sources import mask_url
from facegate.server import homeassistant as ha
from facegate.server.homeassistant import Message
from facegate.server.mqtt_commands import Commands, QuietWarnings
from facegate.server.mqtt_outbox import Outbox
from facegate.server.mqtt_persons import Persons
from facegate.server.mqtt_status import GateStatus, face_jpeg, now_iso
from facegate.server.throttle import RateLimiter
from facegate.settings import Settings

if TYPE_CHECKING:
    from facegate.identity.gallery import Gallery
    from facegate.identity.store import Store
    from facegate.live.bus import EventBus, Subscription
    from facegate.live.engine import Engine
    from facegate.live.monitor import Monitor
    from facegate.live.pipeline import Pipeline
    from facegate.live.registrar import Registrar
    from facegate.live.unknowns import RecentUnknowns

log = logging.getLogger(__name__)

KEEPALIVE_SECONDS: Final = 30
CONNECT_TIMEOUT_SECONDS: Final = 10.0  # CONNACK, SUBACK, PUBACK
STABLE_SECONDS: Final = 10.0  # a connection that lasted this long resets the backoff
PEOPLE_CHECK_SECONDS: Final = 1.5  # after subscribing: the broker's retained people arrived
# The state is published again this often while the gate is not idle: Home Assistant's
# occupancy sensor turns itself off `OCCUPANCY_OFF_DELAY` s after the last "ON".
STATE_REFRESH_SECONDS: Final = ha.OCCUPANCY_OFF_DELAY / 2
DIAGNOSTICS_SECONDS: Final = 30.0
FLUSH_SECONDS: Final = 2.0  # at stop: time to publish what still waits
STOP_SECONDS: Final = 5.0
SUBSCRIPTION_QUEUE: Final = 4096
MAX_INCOMING: Final = 1000  # received messages waiting to be handled
# Connection refusals that mean "your credentials": MQTT 3.1.1 codes 4, 5; MQTT 5 134, 135.
REFUSED_CREDENTIALS: Final = frozenset({4, 5, 134, 135})


class MqttConfigError(ValueError):
    """`mqtt.url` cannot be used; the message says why (never with the password)."""


class BrokerAddress(msgspec.Struct, frozen=True, kw_only=True):
    tls: bool
    host: str
    port: int
    username: str | None
    password: str | None
    masked: str  # the URL for messages: the password is `***`


def parse_url(url: str) -> BrokerAddress:
    """`mqtt://[user[:password]@]host[:port]` or `mqtts://...` (ports 1883 and 8883 by
    default; user and password percent-decoded). Raises MqttConfigError."""
    masked = mask_url(url)
    parts = urllib.parse.urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in ("mqtt", "mqtts"):
        raise MqttConfigError(f"mqtt.url {masked!r}: use mqtt://host[:port] or mqtts://host[:port]")
    try:
        port = parts.port
    except ValueError:
        raise MqttConfigError(f"mqtt.url {masked!r}: the port is not a number 1-65535") from None
    host = parts.hostname
    if not host:
        raise MqttConfigError(f"mqtt.url {masked!r}: no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise MqttConfigError(f"mqtt.url {masked!r}: only scheme, user, password, host and port")

    def unquote(value: str | None) -> str | None:
        return None if value is None else urllib.parse.unquote(value)

    return BrokerAddress(
        tls=scheme == "mqtts",
        host=host,
        port=port or (8883 if scheme == "mqtts" else 1883),
        username=unquote(parts.username),
        password=unquote(parts.password),
        masked=masked,
    )


# -- the bridge ------------------------------------------------------------------------------------
class MqttBridge:
    """The gate on an MQTT broker (see the module docstring). `start` and `stop` on the loop."""

    def __init__(
        self,
        settings: Settings,
        *,
        bus: EventBus,
        gallery: Gallery,
        store: Store,
        engine: Engine,
        unknowns: RecentUnknowns,
        monitor: Monitor,
        registrar: Registrar | None = None,
        version: str = __version__,
    ) -> None:
        """Raises MqttConfigError for an unusable `mqtt.url`."""
        self.cfg = ha.mqtt_config(settings)  # [mqtt] with the gate's id (gate.id)
        self.address = parse_url(self.cfg.url)
        self.topics = ha.topics(self.cfg)
        self.bus = bus
        self.gallery = gallery
        self.store = store
        self.engine = engine
        self.unknowns = unknowns
        self.monitor = monitor
        self.registrar = registrar
        self.version = version
        self.identifier = f"facegate-{self.cfg.topic_prefix}-{self.cfg.gate_id}"
        self.outbox = Outbox(self.cfg.queue)
        self.status = GateStatus(now_iso())
        self.limiter = RateLimiter(
            settings.server.commands_per_second, settings.server.command_burst
        )
        self.quiet = QuietWarnings()
        self.commands = Commands(
            self.cfg,
            self.topics,
            engine=engine,
            registrar=registrar,
            limiter=self.limiter,
            outbox=self.outbox,
            quiet=self.quiet,
        )
        self.connected = False
        self.connections = 0  # successful connections so far
        self.published = 0  # messages the broker took
        self._device_configs = ha.device_discovery(self.cfg, version)
        self.persons = Persons(
            self.cfg,
            store=store,
            gallery=gallery,
            outbox=self.outbox,
            status=self.status,
            quiet=self.quiet,
            device_configs=self._device_configs,
        )
        self._diagnostics: Message | None = None
        self._sub: Subscription | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._connection: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()
        self._flush_until = 0.0
        self._stopped = False
        self._reported: tuple[str, str] | None = None  # the connection state last logged
        self._session = 0  # the current connection's number (for delayed checks)
        self._tls: ssl.SSLContext | None = None

    @classmethod
    def for_pipeline(
        cls, settings: Settings, pipeline: Pipeline, registrar: Registrar | None = None
    ) -> MqttBridge:
        return cls(
            settings,
            bus=pipeline.bus,
            gallery=pipeline.gallery,
            store=pipeline.store,
            engine=pipeline.engine,
            unknowns=pipeline.unknowns,
            monitor=pipeline.monitor,
            registrar=registrar,
        )

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Subscribe to the bus (call it before the engine starts: no event is missed), read
        the persons, and connect in the background."""
        if self._sub is not None:
            raise RuntimeError("MQTT bridge already started")
        # Drained at once into the outbox (which bounds what waits): only a burst within one
        # turn of the loop could fill it.
        self._sub = self.bus.subscribe("mqtt", maxsize=max(SUBSCRIPTION_QUEUE, self.cfg.queue))
        await self.persons.load()
        self._diagnostics = self._diagnostics_message()
        log.info(
            "mqtt: publishing to %s as %s/%s%s",
            self.address.masked,
            self.cfg.topic_prefix,
            self.cfg.gate_id,
            "" if self.cfg.discovery_prefix else " (Home Assistant discovery off)",
        )
        self._tasks = [
            asyncio.create_task(self._consume(self._sub), name="mqtt-consume"),
            asyncio.create_task(self.persons.watch(), name="mqtt-gallery"),
            asyncio.create_task(self._periodic(), name="mqtt-periodic"),
        ]
        self._connection = asyncio.create_task(self._connect_forever(), name="mqtt-connection")

    async def stop(self, timeout: float = STOP_SECONDS) -> None:
        """Publish the events already handed over and what waits (up to FLUSH_SECONDS), then
        "offline" (retained), then disconnect. Without a connection: stop trying."""
        if self._stopped or self._sub is None:
            return
        self._stopped = True
        sub = self._sub
        while (event := sub.get_nowait()) is not None:
            self._handle_event(event)
        sub.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._flush_until = asyncio.get_running_loop().time() + FLUSH_SECONDS
        self._closing.set()
        self.outbox.wake()
        connection = self._connection
        if connection is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(connection), timeout)
        except TimeoutError:
            connection.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await connection
        except Exception:  # the connection task's own failure, already logged
            pass

    @property
    def dropped(self) -> int:
        """Events lost to a full queue: the outbox's, and the bus subscription's."""
        return self.outbox.dropped + (self._sub.dropped if self._sub is not None else 0)

    def stats(self) -> dict[str, Any]:
        return {
            "url": self.address.masked,
            "connected": self.connected,
            "connections": self.connections,
            "published": self.published,
            "queued": len(self.outbox),
            "dropped": self.dropped,
            "recognition": self.engine.recognition_enabled,
        }

    # -- events -> messages ----------------------------------------------------------------------
    async def _consume(self, sub: Subscription) -> None:
        async for event in sub:
            self._handle_event(event)

    def _handle_event(self, event: Event) -> None:
        try:
            self.on_event(event)
        except Exception:  # a bug here must not end the bridge: say it (once a minute)
            if self.quiet.may_warn("event"):
                log.exception("mqtt: could not turn a %s event into messages", type_name(event))

    def on_event(self, event: Event) -> None:
        """One event of the bus: its messages into the outbox."""
        cfg = self.cfg
        # The name of the person it is about: removed from its text when names are not
        # published, even where the event carries no `name` (liveness_pose_feedback's hint).
        person = getattr(event, "person_id", None)
        name = self.gallery.name_of(person) if isinstance(person, str) else None
        self.outbox.put(ha.event_message(cfg, event, () if name is None else (name,)))
        # A person erased meanwhile is not published again.
        erased = (
            isinstance(event, PersonRecognized | LivenessResult) and bool(person) and name is None
        )
        if not erased and self.status.apply(event):
            self.outbox.put(self.status.message(cfg))
        if isinstance(event, PersonRecognized) and not erased:
            seen = ha.people_payload(cfg, event)
            self.persons.people[event.person_id] = seen
            self.outbox.put(seen)
        if isinstance(event, LivenessResult) and not erased:
            self.persons.verdict(event)
        if isinstance(event, PersonRecognized | UnknownPersonDetected):
            if cfg.snapshots and (jpeg := self._snapshot(event)) is not None:
                self.outbox.put(ha.snapshot_message(cfg, jpeg))
            if cfg.frigate:
                self.outbox.put(ha.frigate_payload(cfg, event, now=time.time()))

    def _snapshot(self, event: PersonRecognized | UnknownPersonDetected) -> bytes | None:
        """The face as a JPEG: a stranger's best view from the recent unknowns, else the
        face cropped from the engine's latest frame (its box there, else the event's)."""
        track = event.track_id
        if isinstance(event, UnknownPersonDetected) and track is not None:
            thumbnail = self.unknowns.thumbnail(track)
            if thumbnail is not None:
                return thumbnail
        latest = self.engine.latest
        if latest is None:
            return None
        frame, view = latest
        bbox = next((t.bbox for t in view.tracks if t.track_id == track), event.bbox)
        return face_jpeg(frame.image, bbox)

    def _diagnostics_message(self) -> Message:
        snap = self.monitor.snapshot()
        latency = snap.frame_to_event
        return ha.diagnostics_payload(
            self.cfg,
            processed_fps=round(snap.processed_fps, 2),
            frame_to_event_p95_ms=round(latency.p95_ms, 1) if latency.count else None,
            capture_fps=round(snap.capture_fps, 2),
        )

    async def _periodic(self) -> None:
        """The state again while not idle (Home Assistant's occupancy off_delay), and the
        diagnostics every DIAGNOSTICS_SECONDS."""
        ticks = 0
        per_diagnostics = max(1, round(DIAGNOSTICS_SECONDS / STATE_REFRESH_SECONDS))
        while True:
            await asyncio.sleep(STATE_REFRESH_SECONDS)
            ticks += 1
            if self.status.busy:
                self.outbox.put(self.status.message(self.cfg))
            if ticks % per_diagnostics == 0:
                self._diagnostics = self._diagnostics_message()
                self.outbox.put(self._diagnostics)

    # -- persons -------------------------------------------------------------------------------
    @property
    def people(self) -> dict[str, Message]:
        """Person id -> their last seen (retained)."""
        return self.persons.people

    def republication(self) -> list[Message]:
        """What every (re)connect and Home Assistant's birth publish first."""
        cfg = self.cfg
        out = [ha.availability(cfg, True), *self._device_configs]
        out += self.persons.discovery()
        out.append(ha.recognition_state(cfg, self.engine.recognition_enabled))
        out.append(self.status.message(cfg))
        if self._diagnostics is not None:
            out.append(self._diagnostics)
        return out

    # -- the connection ----------------------------------------------------------------------------
    def _client(self) -> aiomqtt.Client:
        cfg, address = self.cfg, self.address
        return aiomqtt.Client(
            address.host,
            address.port,
            username=address.username,
            password=address.password,
            identifier=self.identifier,
            will=aiomqtt.Will(self.topics.availability, b"offline", cfg.qos, retain=True),
            tls_context=self._tls,
            keepalive=KEEPALIVE_SECONDS,
            timeout=CONNECT_TIMEOUT_SECONDS,
            max_queued_incoming_messages=MAX_INCOMING,
        )

    def _subscriptions(self) -> list[tuple[str, int]]:
        t, qos = self.topics, self.cfg.qos
        topics = [t.recognition_set, t.registration_decision, f"{t.people}/+"]
        if t.ha_status:
            topics.append(t.ha_status)
            discovery = self.cfg.discovery_prefix.strip("/")
            topics.append(f"{discovery}/+/{t.node_id}/+/config")
        return [(topic, qos) for topic in topics]

    async def _connect_forever(self) -> None:
        loop = asyncio.get_running_loop()
        delay = 1.0
        while not self._closing.is_set():
            began = loop.time()
            connected_at: float | None = None
            try:
                if self.address.tls and self._tls is None:
                    self._tls = await asyncio.to_thread(self._tls_context)
                async with self._client() as client:
                    connected_at = loop.time()
                    await self._run_session(client)
            except aiomqtt.MqttError as exc:
                self._failed(exc, connected_at is not None)
            except (OSError, ValueError) as exc:  # the CA file, or the socket outside aiomqtt
                self._failed(exc, connected_at is not None)
            except Exception:  # a bug: said (once a minute), and the bridge goes on
                if self.quiet.may_warn("connection"):
                    log.exception("mqtt: unexpected error in the connection to the broker")
            finally:
                self.connected = False
            if self._closing.is_set():
                break
            if connected_at is not None and loop.time() - connected_at >= STABLE_SECONDS:
                delay = 1.0
            wait = max(0.0, delay - (loop.time() - began)) if connected_at is None else delay
            delay = min(delay * 2, self.cfg.reconnect_max_seconds)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), wait)

    def _tls_context(self) -> ssl.SSLContext:
        try:
            return ssl.create_default_context(cafile=self.cfg.tls_ca or None)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"mqtt.tls_ca {self.cfg.tls_ca!r} cannot be used: {exc}") from None

    async def _run_session(self, client: aiomqtt.Client) -> None:
        self.connected = True
        self.connections += 1
        self._session += 1
        self.persons.session_started()
        self._report(
            "connected",
            "",
            logging.INFO,
            f"mqtt: connected to {self.address.masked} (client id {self.identifier})",
        )
        await client.subscribe(self._subscriptions())
        self.outbox.put_all(self.republication(), urgent=True)
        session = self._session
        asyncio.get_running_loop().call_later(PEOPLE_CHECK_SECONDS, self._republish_people, session)
        sender = asyncio.create_task(self._send(client), name="mqtt-send")
        receiver = asyncio.create_task(self._receive(client), name="mqtt-receive")
        try:
            done, _ = await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sender, receiver):
                task.cancel()
            await asyncio.gather(sender, receiver, return_exceptions=True)
        for task in done:
            if not task.cancelled() and (exc := task.exception()) is not None:
                raise exc

    async def _send(self, client: aiomqtt.Client) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if self._closing.is_set() and (not len(self.outbox) or loop.time() > self._flush_until):
                break
            entry = self.outbox.pop()
            if entry is None:
                await self.outbox.wait()
                continue
            message = entry.message
            try:
                await client.publish(
                    message.topic, message.payload, qos=message.qos, retain=message.retain
                )
            except BaseException:
                self.outbox.requeue(entry)
                raise
            self.published += 1
        offline = ha.availability(self.cfg, False)
        await client.publish(offline.topic, offline.payload, qos=offline.qos, retain=True)
        self.published += 1
        log.info("mqtt: published offline; disconnecting from %s", self.address.masked)

    def _failed(self, exc: BaseException, was_connected: bool) -> None:
        retry = (
            f"retrying with backoff (up to {self.cfg.reconnect_max_seconds:g} s);"
            " the gate keeps running"
        )
        code = getattr(exc, "rc", None)
        code = getattr(code, "value", code)
        if was_connected:
            kind, detail = "lost", str(exc.__cause__ or exc)  # aiomqtt's cause says why
            text = f"mqtt: lost the connection to {self.address.masked} ({detail}); reconnecting"
        elif isinstance(exc, aiomqtt.MqttCodeError) and code in REFUSED_CREDENTIALS:
            kind, detail = "refused", str(code)
            reason = getattr(exc, "rc", None) or "not authorised"
            text = (
                f"mqtt: the broker at {self.address.masked} refused the connection ({reason}):"
                f" check the user name and password in mqtt.url; {retry}"
            )
        else:
            kind, detail = "unreachable", str(exc)
            text = f"mqtt: cannot connect to {self.address.masked}: {exc}; {retry}"
        self._report(kind, detail, logging.WARNING, text)

    def _report(self, kind: str, detail: str, level: int, text: str) -> None:
        """One log line per change of the connection's state."""
        if self._reported == (kind, detail):
            return
        self._reported = (kind, detail)
        log.log(level, "%s", text)

    # -- what the broker sends -------------------------------------------------------------------
    async def _receive(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            payload = message.payload
            data = payload if isinstance(payload, bytes) else str(payload or "").encode()
            try:
                self.on_message(message.topic.value, data, retained=bool(message.retain))
            except Exception:
                if self.quiet.may_warn("message"):
                    log.exception("mqtt: could not handle a message on %s", message.topic.value)

    def on_message(self, topic: str, payload: bytes, *, retained: bool = False) -> None:
        t = self.topics
        if topic == t.recognition_set:
            self.commands.recognition(payload)
        elif topic == t.registration_decision:
            self.commands.decision(payload, retained)
        elif topic == t.ha_status and t.ha_status:
            if payload.strip() == b"online" and not retained:
                log.info("mqtt: Home Assistant is online: publishing discovery and state again")
                self.outbox.put_all(self.republication(), urgent=True)
        elif topic.startswith(t.people + "/"):
            self.persons.heard(topic, payload)
        elif (
            topic.endswith("/config")
            and f"/{t.node_id}/" in topic
            and payload
            and topic not in self.persons.config_topics()
        ):
            # A config under this gate's node that it no longer publishes: remove the entity.
            self.outbox.put(Message(topic, b"", True, self.cfg.qos))

    def _republish_people(self, session: int) -> None:
        """After a (re)connect: the last seen the broker lacks (or has older)."""
        if session != self._session or not self.connected:
            return
        self.persons.republish()


def bridge_for(
    settings: Settings, pipeline: Pipeline, registrar: Registrar | None = None
) -> MqttBridge | None:
    """The bridge when `mqtt.url` is set and usable; None when it is not set. Raises
    MqttConfigError for a URL that cannot be used."""
    if not settings.mqtt.url:
        return None
    return MqttBridge.for_pipeline(settings, pipeline, registrar)


__all__ = ["BrokerAddress", "MqttBridge", "MqttConfigError", "bridge_for", "parse_url"]
