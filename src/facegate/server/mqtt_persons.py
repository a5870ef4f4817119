"""The enrolled persons as the MQTT bridge publishes them: discovery configs and people topics.

- **Persons.** `watch` follows `Gallery.version` (bumped by every enrolment, rename and erasure,
  whoever made it) and compares the persons of the store: a new person gets their discovery
  config; an erased one `person_removed` (empty retained config and people topic) and leaves the
  gate's state; a renamed one their config again (and their last seen moved to the new topic).
- **People topics** (`P/people/<slug>`, a person's last seen) are shared by every gate on the
  broker: a newer one heard from another gate is adopted (`heard`), and after a (re)connect
  `republish` publishes again only what the broker lacks, or has older. A liveness_result
  gives this gate's last seen of its person the verdict (`verdict`: access "pending" becomes
  "granted" or "denied").
- **Discovery configs** this gate publishes now (`config_topics`): the bridge empties any other
  one it hears under its node (a person erased while the broker was away).

`MqttBridge` (mqtt.py) owns the connection and calls these; the lines are logged under its
logger's name.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import TYPE_CHECKING, Final

import msgspec

from facegate.server import homeassistant as ha
from facegate.server.homeassistant import Message, MqttConfig
from facegate.server.mqtt_commands import QuietWarnings
from facegate.server.mqtt_outbox import Outbox
from facegate.server.mqtt_status import GateStatus, iso_time, now_iso

if TYPE_CHECKING:
    from facegate.events import LivenessResult
    from facegate.identity.gallery import Gallery
    from facegate.identity.store import Store

log = logging.getLogger("facegate.server.mqtt")  # the bridge's: one logger for all its lines

GALLERY_POLL_SECONDS: Final = 0.5


class Persons:
    """The persons of the store and their last seen, as published (see the module docstring).
    Use on the loop thread (`read` runs in a worker thread)."""

    def __init__(
        self,
        cfg: MqttConfig,
        *,
        store: Store,
        gallery: Gallery,
        outbox: Outbox,
        status: GateStatus,
        quiet: QuietWarnings,
        device_configs: list[Message],
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.gallery = gallery
        self.outbox = outbox
        self.status = status
        self.quiet = quiet
        self.device_configs = device_configs
        self.names: dict[str, str] = {}  # person id -> name, as last read from the store
        self.people: dict[str, Message] = {}  # person id -> their last seen (retained)
        self._gallery_version = -1
        self._broker_people: dict[str, datetime] = {}  # topic -> its retained time, this session
        self._configs: set[str] | None = None  # `config_topics`, until the persons change

    def read(self) -> dict[str, str] | None:
        try:
            return {p.id: p.name for p in self.store.persons()}
        except Exception as exc:  # the store is closing, or busy: next time
            if self.quiet.may_warn("persons"):
                log.warning("mqtt: could not read the persons: %s", exc)
            return None

    async def load(self) -> None:
        """The persons at start (the gallery's version first: no change is missed)."""
        self._gallery_version = self.gallery.version
        persons = await asyncio.to_thread(self.read)
        self.names = persons or {}
        self._configs = None

    async def watch(self) -> None:
        while True:
            await asyncio.sleep(GALLERY_POLL_SECONDS)
            version = self.gallery.version
            if version == self._gallery_version:
                continue
            persons = await asyncio.to_thread(self.read)
            if persons is None:
                continue  # read again at the next poll
            self._gallery_version = version
            self.changed(persons)

    def changed(self, persons: dict[str, str]) -> None:
        """The store's persons now: discovery for new ones, removal for erased ones, both
        for renamed ones."""
        cfg = self.cfg
        old, self.names = self.names, dict(persons)
        self._configs = None
        for person_id, name in old.items():
            if person_id in persons:
                continue
            self.outbox.put_all(ha.person_removed(cfg, person_id, name))
            self.people.pop(person_id, None)
            if self.status.forget(person_id, now_iso()):
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

    def verdict(self, result: LivenessResult) -> None:
        """The verdict of a liveness challenge on its person's last seen, when that is this
        gate's sighting (`ha.people_verdict`): published at once (retained, same topic)."""
        if result.person_id is None or (seen := self.people.get(result.person_id)) is None:
            return
        settled = ha.people_verdict(self.cfg, seen, result)
        if settled is not None:
            self.people[result.person_id] = settled
            self.outbox.put(settled)

    def config_topics(self) -> set[str]:
        """The discovery config topics this gate publishes now (kept per persons' version)."""
        if self._configs is None:
            topics = {m.topic for m in self.device_configs}
            for person_id, name in self.names.items():
                topics |= {m.topic for m in ha.person_discovery(self.cfg, person_id, name)}
            self._configs = topics
        return self._configs

    def discovery(self) -> list[Message]:
        """Every person's discovery config."""
        out: list[Message] = []
        for person_id, name in self.names.items():
            out += ha.person_discovery(self.cfg, person_id, name)
        return out

    def session_started(self) -> None:
        """A new connection: nothing heard from the broker yet."""
        self._broker_people = {}

    def heard(self, topic: str, payload: bytes) -> None:
        """A person's last seen on the broker (retained, or from another gate)."""
        person_id, when = iso_time(payload)
        if person_id is None or when is None:
            return
        name = self.names.get(person_id)
        if name is None or ha.people_topic(self.cfg, person_id, name) != topic:
            return  # not one of ours (or an old topic of theirs)
        self._broker_people[topic] = max(when, self._broker_people.get(topic, when))
        ours = self.people.get(person_id)
        _, our_time = iso_time(ours.payload) if ours is not None else (None, None)
        if our_time is None or when > our_time:
            self.people[person_id] = Message(topic, payload, True, self.cfg.qos)

    def republish(self) -> None:
        """After a (re)connect: the last seen the broker lacks (or has older)."""
        for seen in list(self.people.values()):
            _, ours = iso_time(seen.payload)
            theirs = self._broker_people.get(seen.topic)
            if ours is not None and (theirs is None or theirs < ours):
                self.outbox.put(seen)


__all__ = ["Persons"]
