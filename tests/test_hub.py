"""The WebSocket hub on its own: fake sockets (a send that can be made to block), an injected
clock, plain asyncio. No assertion on speed: the clock decides who is stalled, and real time
only bounds how long a test waits for something that must happen."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine
from typing import Any

from facegate.events import SystemReady
from facegate.server.hub import CLOSE_TOO_SLOW, REPLY_QUEUE, Hub
from facegate.server.protocol import Pong


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeWebSocket:
    """`send_text` waits while `gate` is clear (a client that does not read); `log`, when
    given, records (name, message) across sockets, in the order sent."""

    def __init__(self, name: str = "", log: list[tuple[str, str]] | None = None) -> None:
        self.name = name
        self.sent: list[str] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.closed_with: tuple[int, str] | None = None
        self.log = log

    async def send_text(self, text: str) -> None:
        await self.gate.wait()
        self.sent.append(text)
        if self.log is not None:
            self.log.append((self.name, text))

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self.gate.wait()  # the close frame waits behind the unread backlog, too
        self.closed_with = (code, reason)

    def messages(self) -> list[dict[str, Any]]:
        return [json.loads(text) for text in self.sent]


def event(text: str = "", size: int = 0) -> SystemReady:
    return SystemReady(message=text + "x" * max(0, size - len(text)))


async def until(condition: Callable[[], bool], timeout: float = 2.0) -> bool:
    """Let the loop run until `condition` holds (True) or `timeout` real seconds pass."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)
    return True


async def turns(n: int = 10) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(test())


# -- bounded queues ----------------------------------------------------------------------------
def test_the_byte_budget_refuses_events_and_counts_them() -> None:
    async def scenario() -> None:
        clock = Clock()
        hub = Hub(maxsize=100, max_bytes=10_000, clock=clock)
        client = hub.add(FakeWebSocket())  # its writer has not run yet: nothing is sent
        text = '{"pad": "' + "x" * 2_989 + '"}'  # 3000 bytes
        assert [client.offer(text, clock()) for _ in range(4)] == [True, True, True, False]
        assert client.queued_bytes == 9_000 and len(client.queue) == 3
        assert client.dropped == 1 and client.full_since == clock.now
        assert client.offer("{}", clock())  # a small one still fits
        clock.now += 1
        assert not client.offer(text, clock())
        assert client.dropped == 2 and client.full_since == clock.now - 1  # full since the first
        await hub.remove(client)

    run(scenario)


def test_the_byte_budget_counts_utf8_bytes_and_takes_one_big_event_when_empty() -> None:
    async def scenario() -> None:
        clock = Clock()
        hub = Hub(maxsize=100, max_bytes=1_000, clock=clock)
        ws = FakeWebSocket()
        ws.gate.clear()
        client = hub.add(ws)
        hub.broadcast(event(size=5_000))  # bigger than the whole budget: taken, the queue empty
        assert client.dropped == 0 and client.queued_bytes > 5_000
        hub.broadcast(event("é" * 300))  # 300 characters, 600 bytes: over the budget
        assert client.dropped == 1
        await hub.remove(client)

    run(scenario)


def test_the_count_limit_refuses_events_too() -> None:
    async def scenario() -> None:
        clock = Clock()
        hub = Hub(maxsize=2, clock=clock)
        client = hub.add(FakeWebSocket())
        for i in range(3):
            hub.broadcast(event(str(i)))
        assert len(client.queue) == 2 and client.dropped == 1
        assert client.full_since == clock.now
        await hub.remove(client)

    run(scenario)


def test_replies_are_bounded_by_count() -> None:
    async def scenario() -> None:
        hub = Hub(clock=Clock())
        client = hub.add(FakeWebSocket())
        for _ in range(REPLY_QUEUE + 3):
            hub.send(client, Pong())
        assert len(client.replies) == REPLY_QUEUE and client.dropped == 3
        await hub.remove(client)

    run(scenario)


# -- who gets dropped --------------------------------------------------------------------------
def test_a_client_whose_send_blocks_is_dropped_at_a_low_event_rate() -> None:
    """One small event, then nothing: its queue never fills, but its send never finishes."""

    async def scenario() -> None:
        clock = Clock()
        hub = Hub(stall_seconds=1.0, clock=clock)
        reaper = asyncio.create_task(hub.reap())
        ws = FakeWebSocket()
        ws.gate.clear()
        client = hub.add(ws)
        hub.broadcast(event("the only one"))
        await turns()  # the writer is now inside send_text, blocked
        clock.now += 0.99
        await asyncio.sleep(0.3)  # the reaper looks a few times
        assert client in hub.clients, "dropped before stall_seconds"
        clock.now += 0.01
        await until(lambda: client not in hub.clients)
        assert hub.disconnected_slow == 1 and client.closed
        assert client.writer is not None and client.writer.done()
        assert ws.closed_with is None  # the close frame waits behind the unread message ...
        ws.gate.set()  # ... until the client reads
        await until(lambda: ws.closed_with is not None)
        assert ws.closed_with == (CLOSE_TOO_SLOW, "client too slow")
        reaper.cancel()

    run(scenario)


def test_a_client_whose_queue_stays_full_is_dropped() -> None:
    async def scenario() -> None:
        clock = Clock()
        hub = Hub(maxsize=2, stall_seconds=5.0, clock=clock)
        ws = FakeWebSocket()
        ws.gate.clear()
        client = hub.add(ws)
        for i in range(3):
            hub.broadcast(event(str(i)))  # full at 1000.0, the writer not started yet
        clock.now += 1.0
        await turns()  # the writer takes a message and blocks in its send at 1001.0
        assert client.full_since == 1000.0 and client.sending_since == 1001.0
        clock.now += 4.0  # full for 5 s, blocked for 4 s: the full queue decides
        assert await hub.reap_once() == 1
        assert client not in hub.clients and hub.disconnected_slow == 1
        assert client.queued_bytes == 0 and not client.queue

    run(scenario)


def test_a_reading_client_is_never_dropped() -> None:
    async def scenario() -> None:
        clock = Clock()
        hub = Hub(maxsize=4, stall_seconds=0.5, clock=clock)
        reaper = asyncio.create_task(hub.reap())
        ws = FakeWebSocket()
        client = hub.add(ws)
        for round_ in range(10):
            for i in range(10):  # more than the queue holds: some are refused, none stall
                hub.broadcast(event(f"{round_}.{i}"))
            clock.now += 0.3
            await asyncio.sleep(hub.reap_every)
        assert client in hub.clients and hub.disconnected_slow == 0
        assert client.dropped > 0 and client.full_since is None
        assert client.sent == len(ws.sent) == 10 * 10 - client.dropped
        reaper.cancel()

    run(scenario)


def test_a_slow_send_shorter_than_stall_seconds_is_not_a_stall() -> None:
    async def scenario() -> None:
        clock = Clock()
        hub = Hub(stall_seconds=2.0, clock=clock)
        ws = FakeWebSocket()
        ws.gate.clear()
        client = hub.add(ws)
        for round_ in range(5):
            hub.broadcast(event(str(round_)))
            await turns()
            clock.now += 1.9  # blocked for 1.9 s each time, then it reads
            assert await hub.reap_once() == 0
            ws.gate.set()
            await turns()
            ws.gate.clear()
        assert client in hub.clients and len(ws.sent) == 5
        await hub.remove(client)

    run(scenario)


def test_a_dropped_client_takes_nothing_more() -> None:
    async def scenario() -> None:
        clock = Clock()
        hub = Hub(stall_seconds=1.0, clock=clock)
        ws = FakeWebSocket()
        ws.gate.clear()
        client = hub.add(ws)
        hub.broadcast(event())
        await turns()
        clock.now += 1.0
        assert await hub.reap_once() == 1
        hub.send(client, Pong())  # the endpoint still answers what the client sends
        assert not client.replies and not client.queue and client.queued_bytes == 0

    run(scenario)


# -- order and fairness ------------------------------------------------------------------------
def test_replies_overtake_queued_events() -> None:
    async def scenario() -> None:
        hub = Hub(clock=Clock())
        ws = FakeWebSocket()
        client = hub.add(ws)
        for i in range(5):
            hub.broadcast(event(f"e{i}"))
        hub.send(client, Pong())
        await until(lambda: len(ws.sent) == 6)
        kinds = [m["type"] for m in ws.messages()]
        assert kinds == ["pong"] + ["system_ready"] * 5
        assert [m["data"]["message"] for m in ws.messages()[1:]] == [f"e{i}" for i in range(5)]
        await hub.remove(client)

    run(scenario)


def test_a_reply_waits_only_for_the_send_in_progress() -> None:
    async def scenario() -> None:
        hub = Hub(clock=Clock())
        ws = FakeWebSocket()
        ws.gate.clear()
        client = hub.add(ws)
        for i in range(5):
            hub.broadcast(event(f"e{i}"))
        await turns()  # e0 is being sent (blocked)
        hub.send(client, Pong())
        ws.gate.set()
        await until(lambda: len(ws.sent) == 6)
        assert [m["type"] for m in ws.messages()[:2]] == ["system_ready", "pong"]
        await hub.remove(client)

    run(scenario)


def test_writers_with_a_backlog_take_turns() -> None:
    """With `turn_messages` = the number of clients, each writer sends one message per turn."""

    async def scenario() -> None:
        log: list[tuple[str, str]] = []
        hub = Hub(clock=Clock(), turn_messages=2)
        a = hub.add(FakeWebSocket("a", log))
        b = hub.add(FakeWebSocket("b", log))
        for i in range(3):
            hub.broadcast(event(str(i)))
        await until(lambda: len(log) == 6)
        assert [name for name, _ in log] == ["a", "b", "a", "b", "a", "b"]
        await hub.remove(a)
        await hub.remove(b)

    run(scenario)


def test_a_writer_sends_its_share_of_a_turn_then_yields() -> None:
    async def scenario() -> None:
        log: list[tuple[str, str]] = []
        hub = Hub(clock=Clock(), turn_messages=6)  # two clients: three messages each a turn
        a = hub.add(FakeWebSocket("a", log))
        b = hub.add(FakeWebSocket("b", log))
        assert hub.per_turn() == 3
        for i in range(6):
            hub.broadcast(event(str(i)))
        await until(lambda: len(log) == 12)
        assert "".join(name for name, _ in log) == "aaabbbaaabbb"
        await hub.remove(a)
        await hub.remove(b)

    run(scenario)


def test_run_fans_out_a_backlog_of_events_over_several_turns() -> None:
    async def scenario() -> None:
        from facegate.live.bus import EventBus

        bus = EventBus()
        bus.attach(asyncio.get_running_loop())
        hub = Hub(clock=Clock(), turn_messages=4)
        wss = [FakeWebSocket(str(i)) for i in range(4)]
        clients = [hub.add(ws) for ws in wss]  # one event per turn
        runner = asyncio.create_task(hub.run(bus.subscribe("hub", maxsize=100)))
        await turns()
        for i in range(5):
            bus.publish(event(str(i)))
        await asyncio.sleep(0)
        await asyncio.sleep(0)  # the runner's first turn: one event, not five
        assert max(len(c.queue) + c.sent for c in clients) < 5
        await until(lambda: all(len(ws.sent) == 5 for ws in wss))
        runner.cancel()
        for client in clients:
            await hub.remove(client)

    run(scenario)
