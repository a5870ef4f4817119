"""The event bus: stamping, fan-out, per-subscriber drops, thread hand-off, intake overflow."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from facegate.events import (
    REGISTRATION,
    Event,
    LivenessChallenge,
    LivenessPoseFeedback,
    LivenessResult,
    PersonLeftArea,
    PersonRecognized,
    RegistrationComplete,
    RegistrationPoseFeedback,
    RegistrationStart,
    SystemReady,
    UnknownPersonDetected,
    stamp,
    to_wire,
)
from facegate.live.bus import (
    NEVER_DROPPED,
    EventBus,
    Subscription,
    SubscriptionClosedError,
    droppable,
)

NOW = 1_700_000_000.25


def recognized(i: int) -> PersonRecognized:
    return PersonRecognized(
        track_id=i,
        person_id="p1",
        name="Ada",
        message="hi",
        similarity=0.9,
        threshold=0.45,
        confidence=0.9,
        distance=0.1,
    )


def unknown(i: int) -> UnknownPersonDetected:
    return UnknownPersonDetected(
        track_id=i, similarity=0.2, threshold=0.45, enrolled=1, distance=0.8
    )


def start() -> RegistrationStart:
    return RegistrationStart(message="go", total_angles=1, angles=["front"])


def drain(sub: Subscription) -> list[Event]:
    out = []
    while (event := sub.get_nowait()) is not None:
        out.append(event)
    return out


def track_ids(items: list[Event]) -> list[Any]:
    return [getattr(e, "track_id", None) for e in items]


def test_stamping() -> None:
    bus = EventBus(clock=lambda: NOW)
    sub = bus.subscribe("a")
    stamped = [bus.publish(SystemReady()) for _ in range(3)]
    assert [e.seq for e in stamped] == [1, 2, 3]
    when = datetime.fromisoformat(stamped[0].timestamp)
    assert when == datetime.fromtimestamp(NOW, UTC)
    assert when.tzinfo is not None and when.utcoffset() == UTC.utcoffset(None)
    assert drain(sub) == stamped
    assert bus.published == 3


def test_every_event_is_stamped_with_the_gate() -> None:
    bus = EventBus(clock=lambda: NOW, gate_id="front-door", first_seq=41)
    sub = bus.subscribe("a")
    stamped = [bus.publish(SystemReady()), bus.publish(recognized(1)), bus.publish(unknown(2))]
    assert [e.gate_id for e in stamped] == ["front-door"] * 3
    assert [e.seq for e in stamped] == [41, 42, 43]  # the gate's own numbering, continued
    assert drain(sub) == stamped
    assert b'"gate_id":"front-door"' in to_wire(stamped[1])
    # An event that claims another gate is still this gate's: the bus names who saw it.
    assert bus.publish(SystemReady(gate_id="elsewhere")).gate_id == "front-door"
    assert EventBus().publish(SystemReady()).gate_id == "gate"  # the default gate.id


def test_a_stamp_without_a_gate_keeps_the_events_own() -> None:
    assert stamp(SystemReady(gate_id="porch"), 0, NOW).gate_id == "porch"
    assert stamp(SystemReady(), 0, NOW).gate_id == ""
    assert stamp(SystemReady(), 3, NOW, "porch").gate_id == "porch"


def test_fan_out_in_order() -> None:
    bus = EventBus(clock=lambda: NOW)
    subs = [bus.subscribe(f"s{i}") for i in range(3)]
    sent = [bus.publish(recognized(i)) for i in range(20)]
    for sub in subs:
        assert drain(sub) == sent
    stats = bus.stats()
    assert [s["delivered"] for s in stats["subscribers"]] == [20, 20, 20]
    assert [s["queued"] for s in stats["subscribers"]] == [0, 0, 0]


def test_slow_subscriber_loses_its_own_oldest_only() -> None:
    bus = EventBus()
    slow = bus.subscribe("slow", maxsize=8)
    fast = bus.subscribe("fast", maxsize=8)
    got: list[Event | None] = []
    for i in range(10_000):  # synchronous publishes: nothing here could wait on `slow`
        bus.publish(recognized(i))
        got.append(fast.get_nowait())
    assert track_ids([e for e in got if e is not None]) == list(range(10_000))
    assert fast.dropped == 0
    assert slow.dropped == 10_000 - 8
    assert track_ids(drain(slow)) == list(range(10_000 - 8, 10_000))
    by_name = {s["name"]: s for s in bus.stats()["subscribers"]}
    assert by_name["slow"] == {
        "name": "slow",
        "queued": 0,
        "delivered": 8,
        "dropped": 10_000 - 8,
        "maxsize": 8,
    }


def test_never_dropped_events() -> None:
    assert set(NEVER_DROPPED) == {
        *REGISTRATION,
        UnknownPersonDetected,
        LivenessChallenge,
        LivenessResult,
    }
    verdict = LivenessResult(
        passed=False, reason="planar", message="m", cutoff=0.1, seconds=1.0, access="denied"
    )
    assert not droppable(verdict) and droppable(
        LivenessPoseFeedback(
            direction="left",
            phase="turn",
            yaw=0.0,
            pitch=0.0,
            target_yaw=[-90.0, -25.0],
            target_pitch=[-90.0, 90.0],
            seconds_left=3.0,
        )
    )
    assert not droppable(unknown(1)) and not droppable(start())
    assert droppable(recognized(1)) and droppable(PersonLeftArea())

    bus = EventBus()
    sub = bus.subscribe("s", maxsize=3)
    keep = [bus.publish(unknown(1)), bus.publish(start())]
    for i in range(10):
        bus.publish(recognized(100 + i))
    keep.append(bus.publish(RegistrationComplete(person_id="p", name="Ada", message="ok")))
    items = drain(sub)
    # The three kept ones, in order; every droppable one was pushed out.
    assert [e for e in items if not droppable(e)] == keep
    assert track_ids([e for e in items if droppable(e)]) == []
    assert sub.dropped == 10

    # A queue full of never-dropped events exceeds its bound instead of losing one.
    sub = bus.subscribe("t", maxsize=2)
    pose = RegistrationPoseFeedback(
        angle_name="front",
        yaw=0.0,
        pitch=0.0,
        target_yaw=[-10, 10],
        target_pitch=[-10, 10],
        held=False,
        captured=0,
        needed=3,
    )
    kept = [bus.publish(e) for e in (unknown(2), start(), pose, pose, unknown(3))]
    assert sub.queued == 5 and sub.dropped == 0
    bus.publish(recognized(7))  # the oldest droppable is the newcomer itself
    assert sub.dropped == 1
    assert drain(sub) == kept


def test_publish_threadsafe_from_a_thread_in_order() -> None:
    n = 1000

    async def main() -> list[Event]:
        bus = EventBus()
        bus.attach(asyncio.get_running_loop())
        sub = bus.subscribe("s", maxsize=n)

        def engine() -> None:
            for i in range(n):
                bus.publish_threadsafe(recognized(i))

        worker = threading.Thread(target=engine)
        worker.start()
        got: list[Event] = []
        async with asyncio.timeout(5):
            async for event in sub:
                got.append(event)
                if len(got) == n:
                    break
        worker.join()
        assert bus.dropped_before_dispatch == 0 and sub.dropped == 0
        return got

    got = asyncio.run(main())
    assert track_ids(got) == list(range(n))
    assert [e.seq for e in got] == list(range(1, n + 1))


def test_intake_overflow_when_the_loop_is_busy() -> None:
    async def main() -> None:
        bus = EventBus(capacity=10)
        bus.attach(asyncio.get_running_loop())
        sub = bus.subscribe("s", maxsize=100)
        go = threading.Event()

        def engine() -> None:
            go.wait()
            for i in range(50):
                bus.publish_threadsafe(start() if i == 5 else recognized(i))

        worker = threading.Thread(target=engine)
        worker.start()

        def busy() -> None:  # a callback hogging the loop while the engine publishes
            go.set()
            worker.join()
            time.sleep(0.01)

        asyncio.get_running_loop().call_soon(busy)
        async with asyncio.timeout(5):
            got = [await sub.get() for _ in range(10)]
        assert isinstance(got[0], RegistrationStart)
        assert track_ids(got[1:]) == list(range(41, 50))
        assert bus.dropped_before_dispatch == 40
        assert bus.published == 10
        assert sub.get_nowait() is None
        assert bus.stats()["intake"] == 0

    asyncio.run(main())


def test_get_wakes_on_publish() -> None:
    async def main() -> None:
        bus = EventBus()
        bus.attach(asyncio.get_running_loop())
        sub = bus.subscribe("s")
        task = asyncio.create_task(sub.get())
        await asyncio.sleep(0)
        assert not task.done()
        sent = bus.publish(recognized(1))
        assert await asyncio.wait_for(task, 1) == sent

        task = asyncio.create_task(sub.get())
        await asyncio.sleep(0)
        threading.Thread(target=bus.publish_threadsafe, args=(recognized(2),)).start()
        assert track_ids([await asyncio.wait_for(task, 1)]) == [2]

        # A cancelled get leaves no waiter behind and loses no event.
        task = asyncio.create_task(sub.get())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert sub._waiters == []
        bus.publish(recognized(3))
        assert track_ids([await sub.get()]) == [3]

    asyncio.run(main())


def test_close_ends_iteration() -> None:
    async def main() -> None:
        bus = EventBus()
        bus.attach(asyncio.get_running_loop())
        sub = bus.subscribe("s")
        other = bus.subscribe("other")

        async def consume() -> list[Event]:
            return [event async for event in sub]

        task = asyncio.create_task(consume())
        sent = [bus.publish(recognized(i)) for i in range(2)]
        while sub.queued:
            await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert not task.done()
        bus.unsubscribe(sub)
        assert await asyncio.wait_for(task, 1) == sent
        assert sub.closed and [s["name"] for s in bus.stats()["subscribers"]] == ["other"]
        sub.close()  # idempotent
        bus.publish(recognized(9))
        assert sub.get_nowait() is None
        with pytest.raises(SubscriptionClosedError):
            await sub.get()
        bus.close()
        assert other.closed and bus.subscribers == ()

    asyncio.run(main())


def test_publish_threadsafe_without_a_live_loop_drops_and_counts() -> None:
    bus = EventBus()
    bus.publish_threadsafe(recognized(0))  # not attached yet
    assert bus.dropped_before_dispatch == 1

    loop = asyncio.new_event_loop()
    bus.attach(loop)
    bus.publish_threadsafe(recognized(1))  # scheduled, but the loop never runs
    loop.close()
    bus.publish_threadsafe(recognized(2))  # counts itself and the one stranded in the intake
    assert bus.dropped_before_dispatch == 3
    assert bus.stats()["intake"] == 0

    class ClosingLoop:  # closes between the is_closed check and the call
        def is_closed(self) -> bool:
            return False

        def call_soon_threadsafe(self, *args: object) -> None:
            raise RuntimeError("Event loop is closed")

    bus.attach(ClosingLoop())  # type: ignore[arg-type]
    bus.publish_threadsafe(recognized(3))
    bus.publish_threadsafe(recognized(4))
    assert bus.dropped_before_dispatch == 5


def test_on_publish_sees_every_published_event_once() -> None:
    """The monitor's counters hang on this hook: they count exactly what the bus published."""
    seen: list[int] = []

    async def main() -> Subscription:
        bus = EventBus(capacity=64, on_publish=lambda e: seen.append(e.seq))
        bus.attach(asyncio.get_running_loop())
        sub = bus.subscribe("slow", maxsize=2)  # drops on its own queue do not matter here
        for i in range(10):
            bus.publish(recognized(i))
        for i in range(5):
            bus.publish_threadsafe(recognized(i))
        await asyncio.sleep(0.01)
        assert bus.stats()["published"] == 15
        return sub

    sub = asyncio.run(main())
    assert seen == list(range(1, 16))
    assert sub.dropped > 0
