"""Several gates on one PostgreSQL store: how fast a change reaches the other gates, how long a
gate takes to start, and how many persons four gates can enrol together.

    .venv/bin/python bench/gates.py [--writes 200] [--rate 20] [--sizes 10000,100000]
        [--gates 4] [--seconds 10] [--only latency|startup|enrol]

Needs Debian's PostgreSQL server binaries (`make setup`): a throw-away cluster is started by
tests/postgres.py on a free port (fsync, synchronous_commit and full_page_writes off: commits
cost less than on a durable server). No models and no shared data: the embeddings are random
512-d unit vectors under the pack name "faceplugin", as the real pack's are.

1. **Propagation.** Gate A (this process: a Store on the database and a Gallery over it) creates
   `--writes` persons (5 embeddings each) at `--rate` a second; gate B is another process with
   its own Store, Gallery and GalleryFollower (LISTEN/NOTIFY), stamping when each new person's
   name is set in its gallery (`Gallery.apply` returned with `name_of(pid)` set). Latency = B's
   stamp - A's stamp taken just before `create_person`: two processes on one machine comparing
   time.time(). It includes A's transaction (also shown on its own).
2. **Start-up.** `Store.open` + `Gallery.open` (index built from the rows; no saved index file:
   a fresh data directory each time), with `--sizes` embeddings (5 per person), from PostgreSQL
   and from SQLite filled with the same vectors by `Store.batch()`. Best and median of 3.
3. **Enrolment throughput.** `--gates` processes, each a gate (own Store, Gallery and
   GalleryFollower on one new database), create persons (distinct random vectors, 5 each) as fast
   as they can for `--seconds`, all starting together: once with `refuse_similar=True` (the
   duplicate check and insert in one transaction under the gallery's writer lock, as photo
   enrolment and registration do) and once with `refuse_similar=False`. Persons/s in total and
   per gate, and the latency of one `create_person`.

No assertions: figures to read.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from multiprocessing.synchronize import Event as EventType
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the PostgreSQL fixture

from facegate.identity.follower import GalleryFollower  # noqa: E402
from facegate.identity.gallery import INDEX_NAME, Gallery  # noqa: E402
from facegate.identity.store import NewEmbedding, Store, StoreError  # noqa: E402
from facegate.settings import Settings  # noqa: E402
from postgres import PostgresServer, find_pg_bin  # noqa: E402

DIM = 512
PER_PERSON = 5
PACK = "faceplugin"


def percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def unit_vectors(rng: np.random.Generator, n: int) -> np.ndarray[Any, np.dtype[np.float32]]:
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v


def embeddings(rng: np.random.Generator) -> list[NewEmbedding]:
    return [NewEmbedding(v) for v in unit_vectors(rng, PER_PERSON)]


def settings() -> Settings:
    return Settings()  # pack "faceplugin", default index settings


def wait_connected(follower: GalleryFollower, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not follower.connected:
        if time.monotonic() > deadline:
            raise SystemExit("the follower did not connect to PostgreSQL")
        time.sleep(0.01)


# == 1. propagation ==============================================================================
@dataclass(frozen=True)
class Follow:
    """What gate B's process is given."""

    url: str
    data_dir: str
    expected: int  # new persons to wait for
    ready: EventType  # set once B listens
    out: Any  # a Queue for B's stamps
    timeout: float


def follower_process(job: Follow) -> None:
    """Gate B: follow the store; stamp when each new person's name is in the gallery."""
    stamps: dict[str, float] = {}
    with Store.open(Path(job.data_dir), url=job.url, gate="b") as store:
        gallery = Gallery.open(store, settings())
        apply = gallery.apply

        def stamped_apply(change: Any) -> bool:
            changed = apply(change)
            now = time.time()
            if change is not None and change.persons:
                for pid in change.persons:
                    if pid not in stamps and gallery.name_of(pid) is not None:
                        stamps[pid] = now
            return changed

        gallery.apply = stamped_apply  # type: ignore[method-assign]
        follower = GalleryFollower(gallery)
        follower.start()
        wait_connected(follower)
        job.ready.set()
        deadline = time.monotonic() + job.timeout
        while len(stamps) < job.expected and time.monotonic() < deadline:
            time.sleep(0.05)
        follower.stop()
        job.out.put({"stamps": stamps, "followed": gallery.followed, "reloads": gallery.reloads})


def propagation(server: PostgresServer, tmp: Path, writes: int, rate: float) -> None:
    url = server.database()
    ctx = mp.get_context("spawn")
    ready, out = ctx.Event(), ctx.Queue()
    with Store.open(tmp / "prop-a", url=url, gate="a") as store:  # creates the schema first
        gallery = Gallery.open(store, settings())
        job = Follow(url, str(tmp / "prop-b"), writes, ready, out, 60.0 + writes / rate)
        child = ctx.Process(target=follower_process, args=(job,))
        child.start()
        if not ready.wait(60):
            raise SystemExit("gate B did not start")
        rng = np.random.default_rng(1)
        sent: dict[str, float] = {}
        took: list[float] = []
        start = time.perf_counter()
        for i in range(writes):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            items = embeddings(rng)
            t0 = time.time()
            p0 = time.perf_counter()
            person = gallery.create_person(f"Person {i}", items, actor="bench")
            took.append(time.perf_counter() - p0)
            sent[person.id] = t0
        result = out.get(timeout=120)
        child.join(30)
    stamps: dict[str, float] = result["stamps"]
    lat = sorted((stamps[pid] - t0) * 1000 for pid, t0 in sent.items() if pid in stamps)
    own = sorted(t * 1000 for t in took)
    print(
        f"  {len(lat)}/{writes} writes reached gate B ({result['followed']} changes followed"
        f" one by one, {result['reloads']} full reloads)"
    )
    print(
        f"  A create_person -> B gallery.name_of set: p50 {percentile(lat, 50):.1f} ms,"
        f" p95 {percentile(lat, 95):.1f} ms, max {lat[-1] if lat else float('nan'):.1f} ms"
    )
    print(
        f"  (of which A's own create_person, commit included: p50 {percentile(own, 50):.1f} ms,"
        f" p95 {percentile(own, 95):.1f} ms)"
    )


# == 2. start-up =================================================================================
def fill(store: Store, count: int, seed: int = 0) -> float:
    """`count` embeddings, PER_PERSON per person, the same for the same seed."""
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    persons = count // PER_PERSON
    chunk = 2000  # persons per transaction
    for first in range(0, persons, chunk):
        with store.batch() as batch:
            for p in range(first, min(persons, first + chunk)):
                items = [NewEmbedding(v) for v in unit_vectors(rng, PER_PERSON)]
                batch.create_person(
                    f"p{p:07d}", f"Person {p}", "", 0.0, items, pack=PACK, thumbnail=None
                )
    return time.perf_counter() - t0


def time_start(data: Path, url: str, runs: int = 3) -> tuple[list[float], int, str]:
    """Store.open + Gallery.open on `data` (SQLite's data dir, or PostgreSQL's with `url`),
    the saved index (if any) removed before each run: the index is built from the rows."""
    times: list[float] = []
    count, kind = 0, ""
    for _ in range(runs):
        (data / INDEX_NAME).unlink(missing_ok=True)
        t0 = time.perf_counter()
        with Store.open(data, url=url) as store:
            gallery = Gallery.open(store, settings())
            times.append(time.perf_counter() - t0)
            count, kind = len(gallery), gallery.index_kind
            assert not gallery.loaded_from_disk
    return times, count, kind


def startup(server: PostgresServer, tmp: Path, sizes: list[int]) -> None:
    rows: list[tuple[str, int, float, float, float, str]] = []
    for size in sizes:
        folder = tmp / f"startup-{size}"
        folder.mkdir()
        url = server.database()
        with Store.open(folder / "pg", url=url) as store:
            pg_fill = fill(store, size)
        with Store.open(folder / "sqlite") as store:
            sqlite_fill = fill(store, size)
        for label, where, data in (("PostgreSQL", url, "pg"), ("SQLite", "", "sqlite")):
            times, count, kind = time_start(folder / data, where)
            rows.append(
                (label, count, min(times), statistics.median(times),
                 pg_fill if where else sqlite_fill, kind)
            )  # fmt: skip
    print(f"  {'store':<11} {'embeddings':>10} {'best':>8} {'median':>8} {'filled in':>10}  index")
    for label, count, best, median, filled, kind in rows:
        print(f"  {label:<11} {count:>10,} {best:>7.2f}s {median:>7.2f}s {filled:>9.1f}s  {kind}")


# == 3. enrolment throughput =====================================================================
@dataclass(frozen=True)
class Write:
    """What one writing gate's process is given."""

    url: str
    data_dir: str
    gate: str
    seed: int
    refuse: bool  # refuse_similar
    ready: Any  # a Queue: the gate's id once it listens
    go: EventType  # all start together
    seconds: float
    out: Any  # a Queue for its figures


def writer_process(job: Write) -> None:
    """One gate enrolling distinct random persons as fast as it can for `seconds`."""
    rng = np.random.default_rng(job.seed)
    took: list[float] = []
    refused = 0
    gate = job.gate
    with Store.open(Path(job.data_dir), url=job.url, gate=gate) as store:
        gallery = Gallery.open(store, settings())
        follower = GalleryFollower(gallery)
        follower.start()
        wait_connected(follower)
        job.ready.put(gate)
        job.go.wait(60)
        end = time.perf_counter() + job.seconds
        i = 0
        while time.perf_counter() < end:
            items = embeddings(rng)
            t0 = time.perf_counter()
            try:
                gallery.create_person(
                    f"{gate} {i}", items, actor="bench", refuse_similar=job.refuse
                )
            except StoreError:  # a DuplicatePersonError would be a false match
                refused += 1
            took.append(time.perf_counter() - t0)
            i += 1
        follower.stop()
        job.out.put({"gate": gate, "took": took, "refused": refused, "index": len(gallery)})


def throughput(server: PostgresServer, tmp: Path, gates: int, seconds: float) -> None:
    ctx = mp.get_context("spawn")
    results: dict[bool, list[dict[str, Any]]] = {}
    for refuse in (True, False):
        url = server.database()
        Store.open(tmp / f"enrol-init-{refuse}", url=url).close()  # the schema, once
        ready, go, out = ctx.Queue(), ctx.Event(), ctx.Queue()
        jobs = [
            Write(url, str(tmp / f"enrol-{refuse}-{g}"), f"g{g}", 100 + g, refuse, ready, go,
                  seconds, out)
            for g in range(gates)
        ]  # fmt: skip
        procs = [ctx.Process(target=writer_process, args=(job,)) for job in jobs]
        for p in procs:
            p.start()
        for _ in procs:
            ready.get(timeout=60)
        go.set()
        results[refuse] = sorted((out.get(timeout=seconds + 120) for _ in procs), key=str)
        for p in procs:
            p.join(30)
    print(
        f"  {'refuse_similar':<15} {'persons/s':>10} {'per gate':>24}"
        f" {'create p50':>11} {'p95':>8} {'refused':>8}"
    )
    totals: dict[bool, float] = {}
    medians: dict[bool, float] = {}
    for refuse, per_gate in results.items():
        rates = [len(r["took"]) / seconds for r in per_gate]
        took = sorted(t * 1000 for r in per_gate for t in r["took"])
        totals[refuse] = sum(rates)
        medians[refuse] = percentile(took, 50)
        print(
            f"  {refuse!s:<15} {sum(rates):>10.1f} {' / '.join(f'{x:.1f}' for x in rates):>24}"
            f" {percentile(took, 50):>9.1f}ms {percentile(took, 95):>6.1f}ms"
            f" {sum(r['refused'] for r in per_gate):>8}"
        )
    if totals[False] > 0:
        print(
            f"  the duplicate check costs {medians[True] - medians[False]:+.1f} ms per person"
            f" (median), {100 * (1 - totals[True] / totals[False]):.0f}% of the throughput;"
            f" gallery at the end ~{sum(len(r['took']) for r in results[True]) * PER_PERSON:,}"
            " embeddings"
        )


# == main ========================================================================================
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writes", type=int, default=200, help="persons written (propagation)")
    parser.add_argument("--rate", type=float, default=20.0, help="writes a second (propagation)")
    parser.add_argument("--sizes", default="10000,100000", help="embeddings (start-up)")
    parser.add_argument("--gates", type=int, default=4, help="writing gates (throughput)")
    parser.add_argument("--seconds", type=float, default=10.0, help="each throughput run")
    parser.add_argument("--only", choices=["latency", "startup", "enrol"])
    args = parser.parse_args()
    if find_pg_bin() is None:
        sys.exit("PostgreSQL server binaries not found (`make setup` installs them)")
    threading.current_thread().name = "bench"
    with tempfile.TemporaryDirectory(prefix="facegate-bench-") as name, PostgresServer() as pg:
        tmp = Path(name)
        print(
            f"PostgreSQL {pg.pg_bin.parent.name} (tests/postgres.py: fsync off) on a Unix socket;"
            f" {os.cpu_count()} CPUs"
        )
        if args.only in (None, "latency"):
            print(
                f"== propagation: gate A writes, gate B (another process) follows;"
                f" {args.writes} persons x {PER_PERSON} embeddings at {args.rate:g}/s =="
            )
            propagation(pg, tmp, args.writes, args.rate)
        if args.only in (None, "startup"):
            print("== gate start-up: Store.open + Gallery.open, index built (no saved index) ==")
            startup(pg, tmp, [int(s) for s in args.sizes.split(",")])
        if args.only in (None, "enrol"):
            print(
                f"== enrolment: {args.gates} gates (processes) on one database for"
                f" {args.seconds:g} s, distinct random persons x {PER_PERSON} embeddings =="
            )
            throughput(pg, tmp, args.gates, args.seconds)


if __name__ == "__main__":
    main()
