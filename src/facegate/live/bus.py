"""The event bus: events from the engine thread to the asyncio side, fanned out to subscribers.

The engine (a worker thread) calls `publish_threadsafe`, which never blocks: the event goes onto
a bounded intake and one drain callback is scheduled with `loop.call_soon_threadsafe`. On the loop
thread the drain `publish`es each event: it is stamped (`seq` from 1, `timestamp` from the bus's
clock, `gate_id` the bus's gate: `events.stamp`) and appended to every subscriber's own bounded
queue.

Back-pressure never reaches the publisher. When the intake is full (the loop is starved) the
oldest droppable event in it is dropped (`dropped_before_dispatch`); when a subscriber's queue is
full, that subscriber loses its own oldest droppable event (`Subscription.dropped`) and nobody
else is affected. Events in `NEVER_DROPPED` (every registration event, `UnknownPersonDetected`,
which starts a registration, and the liveness challenge and its result, which a door acts on) are
never dropped: if a queue holds nothing droppable, the new event
is appended anyway and the queue exceeds its bound rather than losing it. A droppable event that
arrives at a queue full of never-dropped ones is itself the oldest droppable and is dropped.
Each subscriber sees the events in publication order, minus the ones it lost.

Everything except `publish_threadsafe` must be called on the loop thread (the one `attach`ed).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from facegate import events
from facegate.events import Event

NEVER_DROPPED: tuple[type[Event], ...] = (
    *events.REGISTRATION,
    events.UnknownPersonDetected,
    events.LivenessChallenge,
    events.LivenessResult,
)


def droppable(event: Event) -> bool:
    """Whether a full queue may lose this event."""
    return not isinstance(event, NEVER_DROPPED)


def _append_bounded(queue: deque[Event], event: Event, maxsize: int) -> bool:
    """Append; over `maxsize`, remove the oldest droppable event. True when one was removed."""
    queue.append(event)
    if len(queue) <= maxsize:
        return False
    for i, queued in enumerate(queue):
        if droppable(queued):
            del queue[i]
            return True
    return False  # nothing droppable: the bound is exceeded rather than losing an event


class SubscriptionClosedError(Exception):
    """`Subscription.get` on a closed subscription."""


class Subscription:
    """One consumer's bounded queue. Use on the loop thread only."""

    def __init__(self, bus: EventBus, name: str, maxsize: int) -> None:
        self.name = name
        self.maxsize = maxsize
        self.dropped = 0  # events this subscriber lost to a full queue
        self.delivered = 0  # events handed to the consumer
        self._bus = bus
        self._queue: deque[Event] = deque()
        self._waiters: list[asyncio.Future[None]] = []
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def queued(self) -> int:
        return len(self._queue)

    def _put(self, event: Event) -> None:
        if self._closed:
            return
        if _append_bounded(self._queue, event, self.maxsize):
            self.dropped += 1
        self._wake()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def get_nowait(self) -> Event | None:
        """The next event, or None when none is queued (or the subscription is closed)."""
        if not self._queue:
            return None
        self.delivered += 1
        return self._queue.popleft()

    async def get(self) -> Event:
        """The next event, waiting for one; raises `SubscriptionClosedError` once closed."""
        while True:
            event = self.get_nowait()
            if event is not None:
                return event
            if self._closed:
                raise SubscriptionClosedError(self.name)
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        try:
            return await self.get()
        except SubscriptionClosedError:
            raise StopAsyncIteration from None

    def close(self) -> None:
        """Stop receiving: queued events are discarded, waiters wake, iteration ends."""
        if self._closed:
            return
        self._closed = True
        self._queue.clear()
        self._wake()
        self._bus._remove(self)

    def __repr__(self) -> str:
        return f"<Subscription {self.name!r} queued={self.queued} dropped={self.dropped}>"


class EventBus:
    def __init__(
        self,
        *,
        capacity: int = 1024,
        clock: Callable[[], float] = time.time,
        first_seq: int = 1,
        gate_id: str = "gate",
        on_publish: Callable[[Event], None] | None = None,
    ) -> None:
        """`gate_id` is stamped on every event (the gate's `gate.id`); `first_seq` continues
        that gate's history. `on_publish` sees every event as it is published (stamped), on
        the loop thread: e.g. the monitor's counters, which then count exactly what the bus
        published."""
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._clock = clock  # wall-clock seconds for the ISO timestamps
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()  # guards the intake, its flag and dropped_before_dispatch
        self._intake: deque[Event] = deque()
        self._drain_scheduled = False
        self._subscribers: list[Subscription] = []
        self._seq = first_seq - 1  # e.g. continue after the history's last seq
        self.gate_id = gate_id
        self.published = 0
        self.dropped_before_dispatch = 0
        self._on_publish = on_publish

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Make `loop` the one that owns the bus (where `publish_threadsafe` dispatches)."""
        with self._lock:
            self._loop = loop
            self._drain_scheduled = False
            pending = bool(self._intake)
            if pending:
                self._drain_scheduled = True
        if pending:
            loop.call_soon_threadsafe(self._drain)

    # -- the engine thread's side ----------------------------------------------------------
    def publish_threadsafe(self, event: Event) -> None:
        """Hand `event` to the loop from any thread. Never blocks, never raises for a dead loop:
        without a live attached loop the event (and anything still in the intake) is dropped
        and counted in `dropped_before_dispatch`."""
        with self._lock:
            loop = self._loop
            if loop is None or loop.is_closed():
                self._discard_intake_locked(extra=1)
                return
            if _append_bounded(self._intake, event, self.capacity):
                self.dropped_before_dispatch += 1
            if self._drain_scheduled:
                return
            self._drain_scheduled = True
        try:
            loop.call_soon_threadsafe(self._drain)
        except RuntimeError:  # the loop closed between the check and the call
            with self._lock:
                self._discard_intake_locked(extra=0)

    def _discard_intake_locked(self, extra: int) -> None:
        self.dropped_before_dispatch += extra + len(self._intake)
        self._intake.clear()
        self._drain_scheduled = False

    def _drain(self) -> None:
        with self._lock:
            batch, self._intake = self._intake, deque()
            self._drain_scheduled = False
        for event in batch:
            self.publish(event)

    # -- the loop's side --------------------------------------------------------------------
    def publish(self, event: Event) -> Event:
        """Stamp `event` and append it to every subscriber's queue; the stamped event."""
        self._seq += 1
        stamped = events.stamp(event, self._seq, self._clock(), self.gate_id)
        self.published += 1
        if self._on_publish is not None:
            self._on_publish(stamped)
        for sub in tuple(self._subscribers):
            sub._put(stamped)
        return stamped

    def subscribe(self, name: str, maxsize: int = 256) -> Subscription:
        """A new subscriber receiving every event published from now on."""
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        sub = Subscription(self, name, maxsize)
        self._subscribers.append(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        sub.close()

    def _remove(self, sub: Subscription) -> None:
        with contextlib.suppress(ValueError):
            self._subscribers.remove(sub)

    def close(self) -> None:
        """Close every subscription (their iterations end)."""
        for sub in tuple(self._subscribers):
            sub.close()

    @property
    def subscribers(self) -> tuple[Subscription, ...]:
        return tuple(self._subscribers)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            intake = len(self._intake)
            dropped_before_dispatch = self.dropped_before_dispatch
        return {
            "published": self.published,
            "dropped_before_dispatch": dropped_before_dispatch,
            "intake": intake,
            "capacity": self.capacity,
            "subscribers": [
                {
                    "name": sub.name,
                    "queued": sub.queued,
                    "delivered": sub.delivered,
                    "dropped": sub.dropped,
                    "maxsize": sub.maxsize,
                }
                for sub in self._subscribers
            ],
        }
