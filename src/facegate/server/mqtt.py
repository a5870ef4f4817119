"""The MQTT bridge: the gate's events to a broker (and Home Assistant), commands back.

`MqttBridge` runs on the server's event loop beside the other bus subscribers (it is started by
`Runtime.start` when `mqtt.url` is set, and by `facegate run --mqtt URL`). What it publishes is
built by the pure `homeassistant.py`; this module only decides when, and carries it out:

- **Never slows the gate.** It consumes its own bus subscription (`live.bus`): the engine only
  hands events to the bus. Each event becomes messages at once (the WebSocket JSON on
  `P/G/events`; the retained `P/G/state` when the gate's state changes; `P/people/<slug>`, a
  JPEG on `P/G/snapshot` and a Frigate-shaped update for a recognition or a stranger) and goes
  into the `Outbox`: retained messages (availability, state, people, recognition, diagnostics,
  discovery) are coalesced by topic (only the latest of each waits) and never dropped; the
  others are bounded by `mqtt.queue`, the oldest dropped first. One sender task publishes from
  it while connected; with the broker away the gate goes on and the outbox holds what waits.
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
- **Persons.** The bridge watches `Gallery.version` (bumped by every enrolment, rename and
  erasure, whoever made it) and compares the persons of the store: a new person gets their
  discovery config; an erased one `person_removed` (empty retained config and people topic)
  and leaves the gate's state; a renamed one their config again (and their last seen moved to
  the new topic).
- **Commands.** `P/G/recognition/set` "ON"/"OFF" switches the engine's recognition
  (`Engine.set_recognition`) and echoes the state, retained, on `P/G/recognition`.
  `P/G/registration/decision` (`{"register": true, "name": "Ada"}`, validated like the
  WebSocket's `registration_decision` data) is acted on only with `mqtt.registration_commands`
  (whoever can publish there can approve a stranger) and never when retained; otherwise it is
  ignored with one log line (then at most one a minute, with a count).
- **Stopping.** `stop` takes the events already handed over, publishes what waits (for up to
  `FLUSH_SECONDS`), then "offline" (retained), then disconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import ssl
import time
import urllib.parse
from collections import deque
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, NamedTuple

import aiomqtt
import cv2
import msgspec

from facegate import __version__
from facegate.events import (
    Event,
    PersonLeftArea,
    PersonRecognized,
    RegistrationAngleComplete,
    RegistrationAngleInstruction,
    RegistrationApproved,
    RegistrationCancelled,
    RegistrationComplete,
    RegistrationFailed,
    RegistrationPoseFeedback,
    RegistrationStart,
    SystemReady,
    UnknownPersonDetected,
    type_name,
)
from facegate.identity.names import InvalidNameError
from facegate.live.sources import mask_url
from facegate.server import homeassistant as ha
from facegate.server.homeassistant import Message
from facegate.server.protocol import DecisionData
from facegate.server.throttle import RateLimiter
from facegate.settings import MqttSettings, Settings
from facegate.vision.face import ImageArray

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
GALLERY_POLL_SECONDS: Final = 0.5
PEOPLE_CHECK_SECONDS: Final = 1.5  # after subscribing: the broker's retained people arrived
# The state is published again this often while the gate is not idle: Home Assistant's
# occupancy sensor turns itself off `OCCUPANCY_OFF_DELAY` s after the last "ON".
STATE_REFRESH_SECONDS: Final = ha.OCCUPANCY_OFF_DELAY / 2
DIAGNOSTICS_SECONDS: Final = 30.0
FLUSH_SECONDS: Final = 2.0  # at stop: time to publish what still waits
STOP_SECONDS: Final = 5.0
MAX_COMMAND_BYTES: Final = 64 * 1024
SUBSCRIPTION_QUEUE: Final = 4096
MAX_INCOMING: Final = 1000  # received messages waiting to be handled
QUIET_SECONDS: Final = 60.0  # a repeated warning about commands: at most once this often
SNAPSHOT_MARGIN: Final = 0.25  # around the face box, in box sizes
SNAPSHOT_MAX_SIDE: Final = 320
SNAPSHOT_QUALITY: Final = 85
CLIENT: Final = "mqtt"  # the registrar's name for decisions from the broker
# Connection refusals that mean "your credentials": MQTT 3.1.1 codes 4, 5; MQTT 5 134, 135.
REFUSED_CREDENTIALS: Final = frozenset({4, 5, 134, 135})
REGISTERING: Final = (
    RegistrationApproved,
    RegistrationStart,
    RegistrationAngleInstruction,
    RegistrationPoseFeedback,
    RegistrationAngleComplete,
)
REGISTRATION_OVER: Final = (RegistrationComplete, RegistrationFailed, RegistrationCancelled)


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


# -- the outbox ----------------------------------------------------------------------------------
class Entry(NamedTuple):
    seq: int  # publication order: the lowest goes first
    message: Message


class Outbox:
    """What waits to be published. Retained messages are coalesced by topic and never dropped
    (the latest of each topic keeps the place of its latest `put`); the others are bounded by
    `limit`, the oldest dropped first (`dropped`). `urgent` messages go before everything put
    without it. Use on the loop thread."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.dropped = 0
        self._seq = 0
        self._urgent_seq = -(2**62)
        self._retained: dict[str, Entry] = {}
        self._heap: list[tuple[int, str]] = []  # (seq, topic) of retained entries; stale too
        self._events: deque[Entry] = deque()
        self._ready = asyncio.Event()

    def __len__(self) -> int:
        return len(self._retained) + len(self._events)

    def put(self, message: Message, *, urgent: bool = False) -> None:
        if urgent:
            self._urgent_seq += 1
            seq = self._urgent_seq
        else:
            self._seq += 1
            seq = self._seq
        self._add(Entry(seq, message))

    def put_all(self, messages: Iterable[Message], *, urgent: bool = False) -> None:
        for message in messages:
            self.put(message, urgent=urgent)

    def _add(self, entry: Entry, *, front: bool = False) -> None:
        message = entry.message
        if message.retain:
            self._retained[message.topic] = entry
            heapq.heappush(self._heap, (entry.seq, message.topic))
            if len(self._heap) > 4 * len(self._retained) + 64:
                self._heap = [(e.seq, t) for t, e in self._retained.items()]
                heapq.heapify(self._heap)
        else:
            if front:
                self._events.appendleft(entry)
            else:
                self._events.append(entry)
            while len(self._events) > self.limit:
                self._events.popleft()
                self.dropped += 1
        self._ready.set()

    def _retained_head(self) -> Entry | None:
        while self._heap:
            seq, topic = self._heap[0]
            entry = self._retained.get(topic)
            if entry is not None and entry.seq == seq:
                return entry
            heapq.heappop(self._heap)  # superseded (or sent)
        return None

    def pop(self) -> Entry | None:
        """The next message to publish (removed), or None."""
        kept = self._retained_head()
        event = self._events[0] if self._events else None
        if kept is not None and (event is None or kept.seq < event.seq):
            heapq.heappop(self._heap)
            del self._retained[kept.message.topic]
            return kept
        if event is not None:
            return self._events.popleft()
        return None

    def requeue(self, entry: Entry) -> None:
        """A popped entry that could not be published: first again (a retained one only if no
        newer message for its topic came meanwhile)."""
        if entry.message.retain and entry.message.topic in self._retained:
            return
        self._add(entry, front=True)

    def wake(self) -> None:
        self._ready.set()

    async def wait(self) -> None:
        """Until something is put (or `wake`); returns at once when not empty."""
        self._ready.clear()
        if not len(self):
            await self._ready.wait()


# -- the gate's state ------------------------------------------------------------------------------
class StateKey(NamedTuple):
    state: ha.GateState
    person_id: str | None
    track_id: int | None


class GateStatus:
    """`idle | recognized | stranger | registering` from the events: registering while a
    registration is under way; else recognized while a greeted person is present (the most
    recent one); else stranger while an offered stranger is present; else idle."""

    def __init__(self, since: str) -> None:
        self.present: dict[str, PersonRecognized] = {}  # by person id, latest last
        self.strangers: dict[int, UnknownPersonDetected] = {}  # by track id
        self.registering = False
        self.key = StateKey("idle", None, None)
        self.since = since

    def apply(self, event: Event) -> bool:
        """Follow one event; True when the state changed."""
        match event:
            case PersonRecognized(person_id=person, track_id=track):
                self.present.pop(person, None)
                self.present[person] = event
                if track is not None:
                    self.strangers.pop(track, None)
            case UnknownPersonDetected(track_id=track) if track is not None:
                self.strangers[track] = event
            case PersonLeftArea(person_id=person, track_id=track):
                if person is not None:
                    self.present.pop(person, None)
                if track is not None:
                    self.strangers.pop(track, None)
            case SystemReady():
                self.registering = False
            case _ if isinstance(event, REGISTERING):
                self.registering = True
            case _ if isinstance(event, REGISTRATION_OVER):
                self.registering = False
        return self._settle(event.timestamp)

    def forget(self, person_id: str, now: str) -> bool:
        """An erased person: no longer the state's. True when the state changed."""
        if self.present.pop(person_id, None) is None:
            return False
        return self._settle(now)

    def _settle(self, when: str) -> bool:
        key = self._key()
        if key == self.key:
            return False
        self.key = key
        self.since = when or _now_iso()
        return True

    def _key(self) -> StateKey:
        if self.registering:
            return StateKey("registering", None, None)
        if self.present:
            person = next(reversed(self.present.values()))
            return StateKey("recognized", person.person_id, None)
        if self.strangers:
            return StateKey("stranger", None, next(reversed(self.strangers)))
        return StateKey("idle", None, None)

    @property
    def busy(self) -> bool:
        return self.key.state != "idle"

    def message(self, cfg: MqttSettings) -> Message:
        key = self.key
        person: str | None = None
        similarity: float | None = None
        if key.state == "recognized" and key.person_id is not None:
            seen = self.present[key.person_id]
            person, similarity = seen.name, seen.similarity
        elif key.state == "stranger" and key.track_id is not None:
            similarity = self.strangers[key.track_id].similarity
        return ha.state_payload(
            cfg,
            state=key.state,
            person=person,
            person_id=key.person_id,
            similarity=similarity,
            since=self.since,
        )


def _now_iso() -> str:
    return datetime.now().astimezone().isoformat(timespec="milliseconds")


def face_jpeg(image: ImageArray, bbox: list[float] | None) -> bytes | None:
    """The face at `bbox` (x1, y1, x2, y2) with a margin, at most SNAPSHOT_MAX_SIDE px, as JPEG."""
    if bbox is None or len(bbox) != 4:
        return None
    h, w = image.shape[:2]
    x1, y1, x2, y2 = bbox
    mx, my = (x2 - x1) * SNAPSHOT_MARGIN, (y2 - y1) * SNAPSHOT_MARGIN
    left, top = max(0, int(x1 - mx)), max(0, int(y1 - my))
    right, bottom = min(w, int(x2 + mx + 1)), min(h, int(y2 + my + 1))
    if right - left < 2 or bottom - top < 2:
        return None
    crop = image[top:bottom, left:right]
    side = max(crop.shape[:2])
    if side > SNAPSHOT_MAX_SIDE:
        scale = SNAPSHOT_MAX_SIDE / side
        size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
        face = cv2.resize(crop, size, interpolation=cv2.INTER_AREA)
    else:
        face = crop
    ok, data = cv2.imencode(".jpg", face, [cv2.IMWRITE_JPEG_QUALITY, SNAPSHOT_QUALITY])
    return data.tobytes() if ok else None


def _iso_time(payload: bytes) -> tuple[str | None, datetime | None]:
    """(person_id, time) of a people payload; (None, None) when it is not one."""
    try:
        body = msgspec.json.decode(payload)
        person_id, when = body.get("person_id"), body.get("time")
        if isinstance(person_id, str) and isinstance(when, str):
            moment = datetime.fromisoformat(when)
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            return person_id, moment
    except (msgspec.DecodeError, AttributeError, ValueError, TypeError):
        pass
    return None, None


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
        self.cfg = settings.mqtt
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
        self.status = GateStatus(_now_iso())
        self.persons: dict[str, str] = {}  # person id -> name, as last read from the store
        self.people: dict[str, Message] = {}  # person id -> their last seen (retained)
        self.limiter = RateLimiter(
            settings.server.commands_per_second, settings.server.command_burst
        )
        self.connected = False
        self.connections = 0  # successful connections so far
        self.published = 0  # messages the broker took
        self._device_configs = ha.device_discovery(self.cfg, version)
        self._diagnostics: Message | None = None
        self._sub: Subscription | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._connection: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()
        self._flush_until = 0.0
        self._stopped = False
        self._gallery_version = -1
        self._reported: tuple[str, str] | None = None  # the connection state last logged
        self._session = 0  # the current connection's number (for delayed checks)
        self._broker_people: dict[str, datetime] = {}  # topic -> its retained time, this session
        self._quiet: dict[str, tuple[float, int]] = {}  # warning key -> (last logged, muted)
        self._tls: ssl.SSLContext | None = None
        self._configs: set[str] | None = None  # `_config_topics`, until the persons change

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
        self._gallery_version = self.gallery.version
        persons = await asyncio.to_thread(self._read_persons)
        self.persons = persons or {}
        self._configs = None
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
            asyncio.create_task(self._watch_gallery(), name="mqtt-gallery"),
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
            if self._may_warn("event"):
                log.exception("mqtt: could not turn a %s event into messages", type_name(event))

    def on_event(self, event: Event) -> None:
        """One event of the bus: its messages into the outbox."""
        cfg = self.cfg
        self.outbox.put(ha.event_message(cfg, event))
        erased = (
            isinstance(event, PersonRecognized) and self.gallery.name_of(event.person_id) is None
        )
        if not erased and self.status.apply(event):
            self.outbox.put(self.status.message(cfg))
        if isinstance(event, PersonRecognized) and not erased:
            seen = ha.people_payload(cfg, event)
            self.people[event.person_id] = seen
            self.outbox.put(seen)
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
    def _read_persons(self) -> dict[str, str] | None:
        try:
            return {p.id: p.name for p in self.store.persons()}
        except Exception as exc:  # the store is closing, or busy: next time
            if self._may_warn("persons"):
                log.warning("mqtt: could not read the persons: %s", exc)
            return None

    async def _watch_gallery(self) -> None:
        while True:
            await asyncio.sleep(GALLERY_POLL_SECONDS)
            version = self.gallery.version
            if version == self._gallery_version:
                continue
            persons = await asyncio.to_thread(self._read_persons)
            if persons is None:
                continue  # read again at the next poll
            self._gallery_version = version
            self.persons_changed(persons)

    def persons_changed(self, persons: dict[str, str]) -> None:
        """The store's persons now: discovery for new ones, removal for erased ones, both
        for renamed ones."""
        cfg = self.cfg
        old, self.persons = self.persons, dict(persons)
        self._configs = None
        for person_id, name in old.items():
            if person_id in persons:
                continue
            self.outbox.put_all(ha.person_removed(cfg, person_id, name))
            self.people.pop(person_id, None)
            if self.status.forget(person_id, _now_iso()):
                self.outbox.put(self.status.message(cfg))
            log.info("mqtt: person %s erased: their entity and last seen removed", person_id)
        for person_id, name in persons.items():
            before = old.get(person_id)
            if before == name:
                continue
            if before is not None:
                self._renamed(person_id, before, name)
            self.outbox.put_all(ha.person_discovery(cfg, person_id, name))

    def _renamed(self, person_id: str, before: str, name: str) -> None:
        cfg = self.cfg
        old_topic = ha.people_topic(cfg, person_id, before)
        new_topic = ha.people_topic(cfg, person_id, name)
        seen = self.people.get(person_id)
        if seen is not None and cfg.publish_names:
            body = msgspec.json.decode(seen.payload)
            body["name"] = name
            seen = Message(new_topic, msgspec.json.encode(body), True, cfg.qos)
            self.people[person_id] = seen
            self.outbox.put(seen)
        if old_topic != new_topic:
            self.outbox.put(Message(old_topic, b"", True, cfg.qos))

    def _config_topics(self) -> set[str]:
        """The discovery config topics this gate publishes now (kept per persons' version)."""
        if self._configs is None:
            topics = {m.topic for m in self._device_configs}
            for person_id, name in self.persons.items():
                topics |= {m.topic for m in ha.person_discovery(self.cfg, person_id, name)}
            self._configs = topics
        return self._configs

    def republication(self) -> list[Message]:
        """What every (re)connect and Home Assistant's birth publish first."""
        cfg = self.cfg
        out = [ha.availability(cfg, True), *self._device_configs]
        for person_id, name in self.persons.items():
            out += ha.person_discovery(cfg, person_id, name)
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
                if self._may_warn("connection"):
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
        self._broker_people = {}
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
                if self._may_warn("message"):
                    log.exception("mqtt: could not handle a message on %s", message.topic.value)

    def on_message(self, topic: str, payload: bytes, *, retained: bool = False) -> None:
        t = self.topics
        if topic == t.recognition_set:
            self._recognition_command(payload)
        elif topic == t.registration_decision:
            self._decision_command(payload, retained)
        elif topic == t.ha_status and t.ha_status:
            if payload.strip() == b"online" and not retained:
                log.info("mqtt: Home Assistant is online: publishing discovery and state again")
                self.outbox.put_all(self.republication(), urgent=True)
        elif topic.startswith(t.people + "/"):
            self._heard_people(topic, payload)
        elif (
            topic.endswith("/config")
            and f"/{t.node_id}/" in topic
            and payload
            and topic not in self._config_topics()
        ):
            # A config under this gate's node that it no longer publishes: remove the entity.
            self.outbox.put(Message(topic, b"", True, self.cfg.qos))

    def _recognition_command(self, payload: bytes) -> None:
        command = payload.strip().upper()
        if command not in (b"ON", b"OFF"):
            self._warn_limited(
                "recognition",
                f"mqtt: ignored {payload[:40]!r} on {self.topics.recognition_set}:"
                ' expected "ON" or "OFF"',
            )
            return
        on = command == b"ON"
        if on != self.engine.recognition_enabled:
            log.info("mqtt: recognition switched %s", "on" if on else "off")
        self.engine.set_recognition(on)
        self.outbox.put(ha.recognition_state(self.cfg, on))

    def _decision_command(self, payload: bytes, retained: bool) -> None:
        topic = self.topics.registration_decision
        if not self.cfg.registration_commands:
            self._warn_limited(
                "decision",
                f"mqtt: ignored a message on {topic}: mqtt.registration_commands is off"
                " (whoever can publish there could approve a stranger; turn it on only if you"
                " trust everyone who can write to the broker)",
            )
            return
        if retained:
            self._warn_limited(
                "decision-retained", f"mqtt: ignored a retained message on {topic}: stale"
            )
            return
        registrar = self.registrar
        if registrar is None:
            self._warn_limited(
                "decision-serve",
                f"mqtt: ignored a message on {topic}: only `facegate serve` registers people",
            )
            return
        if len(payload) > MAX_COMMAND_BYTES:
            self._warn_limited("decision-invalid", f"mqtt: ignored a message on {topic}: too big")
            return
        try:
            data = msgspec.json.decode(payload, type=DecisionData)
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError) as exc:
            self._warn_limited(
                "decision-invalid",
                f'mqtt: ignored a message on {topic}: {exc} (expected {{"register": true,'
                ' "name": "Ada"}})',
            )
            return
        if not self.limiter.allow(CLIENT):
            self._warn_limited("decision-rate", f"mqtt: ignored a message on {topic}: too many")
            return
        try:
            reply = registrar.decide(data.register, data.name, CLIENT)
        except InvalidNameError as exc:
            log.warning("mqtt: decision on %s refused: %s", topic, exc)
            return
        log.info(
            "mqtt: decision on %s (register=%s): %s%s",
            topic,
            data.register,
            "" if reply.ok else "not taken: ",
            reply.message,
        )

    def _heard_people(self, topic: str, payload: bytes) -> None:
        """A person's last seen on the broker (retained, or from another gate)."""
        person_id, when = _iso_time(payload)
        if person_id is None or when is None:
            return
        name = self.persons.get(person_id)
        if name is None or ha.people_topic(self.cfg, person_id, name) != topic:
            return  # not one of ours (or an old topic of theirs)
        self._broker_people[topic] = max(when, self._broker_people.get(topic, when))
        ours = self.people.get(person_id)
        _, our_time = _iso_time(ours.payload) if ours is not None else (None, None)
        if our_time is None or when > our_time:
            self.people[person_id] = Message(topic, payload, True, self.cfg.qos)

    def _republish_people(self, session: int) -> None:
        """After a (re)connect: the last seen the broker lacks (or has older)."""
        if session != self._session or not self.connected:
            return
        for seen in list(self.people.values()):
            _, ours = _iso_time(seen.payload)
            theirs = self._broker_people.get(seen.topic)
            if ours is not None and (theirs is None or theirs < ours):
                self.outbox.put(seen)

    # -- quiet warnings ----------------------------------------------------------------------
    def _may_warn(self, key: str) -> bool:
        now = time.monotonic()
        last, muted = self._quiet.get(key, (-1e18, 0))
        if now - last < QUIET_SECONDS:
            self._quiet[key] = (last, muted + 1)
            return False
        self._quiet[key] = (now, 0)
        return True

    def _warn_limited(self, key: str, text: str) -> None:
        """One line; the same again within QUIET_SECONDS is counted, said with the next one."""
        muted = self._quiet.get(key, (0.0, 0))[1]
        if self._may_warn(key):
            more = f" ({muted} more since the last such line)" if muted else ""
            log.warning("%s%s", text, more)


def bridge_for(
    settings: Settings, pipeline: Pipeline, registrar: Registrar | None = None
) -> MqttBridge | None:
    """The bridge when `mqtt.url` is set and usable; None when it is not set. Raises
    MqttConfigError for a URL that cannot be used."""
    if not settings.mqtt.url:
        return None
    return MqttBridge.for_pipeline(settings, pipeline, registrar)


__all__ = [
    "BrokerAddress",
    "Entry",
    "GateStatus",
    "MqttBridge",
    "MqttConfigError",
    "Outbox",
    "bridge_for",
    "face_jpeg",
    "parse_url",
]
