"""The MQTT bridge's outbox: what waits to be published while the broker is slow or away.

Retained messages (availability, state, people, recognition, diagnostics, discovery) are
coalesced by topic: only the latest of each waits, and none is ever dropped. The others (events,
snapshots, Frigate updates) are bounded by `mqtt.queue`, the oldest dropped first. Messages put
`urgent` (the republication after a (re)connect) go before everything else.
"""

from __future__ import annotations

import asyncio
import heapq
from collections import deque
from collections.abc import Iterable
from typing import NamedTuple

from facegate.server.homeassistant import Message


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


__all__ = ["Entry", "Outbox"]
