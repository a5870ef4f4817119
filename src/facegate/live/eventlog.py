"""The event history: every published event (never frames or vectors) kept in the store.

A bus subscriber that writes events in small batches and prunes to the retention limits
(`[events]` settings), each under the gate that saw it (the event's `gate_id`: several gates
may share one store). `/api/events?since=SEQ` and history queries read it back.

A name typed for a registration is kept only once it belongs to a stored person: the
history's copy of `registration_approved` leaves the name out (the live event has it), and
`registration_complete` carries it with the person's id, so erasing the person erases it.
A registration that never completes leaves no name behind.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import datetime

import msgspec

from facegate.events import Event, RegistrationApproved, data_of, to_wire, type_name
from facegate.identity.store import LoggedEvent, Store, StoreError
from facegate.live.bus import Subscription
from facegate.settings import EventLogSettings

log = logging.getLogger(__name__)
BATCH = 200


def redacted(event: Event) -> Event:
    """The event as the history keeps it (see the module docstring)."""
    if isinstance(event, RegistrationApproved) and event.name:
        return msgspec.structs.replace(event, name="", message="Registering a new person")
    return event


def event_time(event: Event, default: float) -> float:
    """When the event was published (its `timestamp`, unix seconds), else `default`."""
    if event.timestamp:
        try:
            return datetime.fromisoformat(event.timestamp).timestamp()
        except ValueError:
            pass
    return default


def logged(event: Event, now: float) -> LoggedEvent:
    """The history's row of a published event: under the gate that saw it (`gate_id`), at its
    own time (`timestamp`; `now` for one the bus did not stamp). Not the time of writing: the
    events of one batch would share it, and paging every gate's history by time (`until=`)
    could not cut between them."""
    event = redacted(event)
    data = data_of(event)
    person = data.get("person_id")
    return LoggedEvent(
        seq=event.seq,
        at=event_time(event, now),
        type=type_name(event),
        person_id=person if isinstance(person, str) else None,
        data=to_wire(event).decode(),
        gate=event.gate_id,
    )


class EventLog:
    """Consumes a subscription and appends its events to the store's history."""

    def __init__(
        self,
        store: Store,
        settings: EventLogSettings,
        subscription: Subscription,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.settings = settings
        self.subscription = subscription
        self.clock = clock
        self.written = 0

    def write(self, events: list[Event]) -> None:
        now = self.clock()
        try:
            self.store.log_events(
                [logged(e, now) for e in events],
                retention_seconds=self.settings.retention_days * 86400.0,
                max_rows=self.settings.max_rows,
            )
            self.written += len(events)
        except StoreError as exc:  # history is best effort; never stops the gate
            log.warning("event history not written: %s", exc)

    async def run(self) -> None:
        async for event in self.subscription:
            batch = [event]
            while len(batch) < BATCH and (more := self.subscription.get_nowait()) is not None:
                batch.append(more)
            # Off the loop: a shared store may be slow or away, and the loop serves everyone.
            await asyncio.to_thread(self.write, batch)
