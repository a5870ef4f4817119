"""SIGKILL harness: a writer killed at random moments never leaves a half-written store.

Each round starts tests/crash_child.py on the same data directory (it persists across rounds),
lets it write for a random 0.05-0.6 s, kills it with SIGKILL and then checks the store against
what the child reported: every reported commit is there, every interrupted call landed whole or
not at all, nothing is orphaned, the generation only moves forward, and an index rebuilt from
the store holds exactly its embeddings.
"""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from facegate.identity.store import Store, StoreError

CHILD = Path(__file__).with_name("crash_child.py")
ROUNDS = 24
DIM = 512
SEED = 20240611


@dataclass
class Tally:
    rounds: int = 0
    kills: int = 0
    kills_before_ready: int = 0
    kills_mid_call: int = 0  # a `begin` without its `committed`
    interrupted_landed: int = 0  # ... of which the store shows the change
    committed: int = 0  # committed operations reported by the child and checked
    by_op: dict[str, int] = field(default_factory=lambda: {"create": 0, "add": 0, "delete": 0})


def run_child(data_dir: Path, seed: int, seconds: float, *, after_ready: bool) -> list[str]:
    """Start the child, SIGKILL it `seconds` after its start (or after it printed `ready`, so
    a slow start-up cannot eat the window), return the complete lines it printed."""
    proc = subprocess.Popen(
        [sys.executable, str(CHILD), str(data_dir), str(seed)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    head = b""
    try:
        if after_ready:
            fd = proc.stdout.fileno()  # type: ignore[union-attr]
            deadline = time.monotonic() + 30
            while b"\n" not in head and time.monotonic() < deadline:
                if select.select([fd], [], [], 0.1)[0]:
                    chunk = os.read(fd, 65536)
                    if not chunk:
                        break
                    head += chunk
        time.sleep(seconds)
        os.kill(proc.pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    # The child never exits on its own: anything but death by SIGKILL is a failure in it.
    assert proc.returncode == -signal.SIGKILL, err.decode(errors="replace")
    if after_ready:
        assert head.startswith(b"ready "), (head, err)
    text = (head + out).decode()
    complete = text[: text.rfind("\n") + 1] if "\n" in text else ""
    return complete.splitlines()


def index_size(store: Store, ids: np.ndarray, matrix: np.ndarray) -> int:
    """The size of a FAISS index rebuilt from the store (facegate.identity.index when it exists)."""
    try:
        from facegate.identity.index import VectorIndex
        from facegate.settings import IndexSettings
    except ImportError:
        index: Any = faiss.IndexIDMap2(faiss.IndexFlatIP(DIM))
        if len(ids):
            index.add_with_ids(matrix, ids)
        return int(index.ntotal)
    return len(VectorIndex.build(DIM, ids, matrix, IndexSettings(), store.generation()))


def check_store(
    data_dir: Path, expected: dict[str, int], maybe_deleted: str | None
) -> tuple[Store, dict[str, int]]:
    """Open the store for writing after a kill (this needs the dead child's lock released)
    and check what must hold whatever the moment of the kill; returns persons -> embeddings."""
    # A reader copes with the dead writer's WAL and -shm before any writer runs recovery.
    try:
        with Store.open(data_dir, readonly=True) as reader:
            reader_state = {p.id: p.embeddings for p in reader.persons()}
            reader_count = reader.embedding_count()
    except StoreError:
        # Only before anything was committed: no database yet, or killed while initialising
        # it (empty, or not yet migrated to the current schema).
        assert not expected
        reader_state, reader_count = None, None
    store = Store.open(data_dir)
    assert store.integrity_check() == "ok"
    conn = store._conn
    orphans = {
        "persons without embeddings": "SELECT count(*) FROM persons p WHERE NOT EXISTS"
        " (SELECT 1 FROM embeddings e WHERE e.person_id = p.id)",
        "embeddings without a person": "SELECT count(*) FROM embeddings e WHERE NOT EXISTS"
        " (SELECT 1 FROM persons p WHERE p.id = e.person_id)",
        "thumbnails without a person": "SELECT count(*) FROM thumbnails t WHERE NOT EXISTS"
        " (SELECT 1 FROM persons p WHERE p.id = t.person_id)",
        "persons without a thumbnail": "SELECT count(*) FROM persons p WHERE NOT EXISTS"
        " (SELECT 1 FROM thumbnails t WHERE t.person_id = p.id)",
    }
    for what, sql in orphans.items():
        assert conn.execute(sql).fetchone()[0] == 0, what
    assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    state = {p.id: p.embeddings for p in store.persons()}
    if reader_state is not None:
        assert reader_state == state
        assert reader_count == store.embedding_count()
    # No torn vectors: every stored vector is whole and normalised.
    vectors = store.vectors()
    count = store.embedding_count()
    assert vectors.matrix.shape == (count, DIM)
    assert len(set(vectors.ids.tolist())) == count
    assert set(vectors.person_ids) == set(state)
    if count:
        norms = np.linalg.norm(vectors.matrix.astype(np.float64), axis=1)
        assert np.allclose(norms, 1.0, atol=1e-3)
    assert index_size(store, vectors.ids, vectors.matrix) == count
    # Reported-and-still-expected persons exist with at least the reported embeddings.
    for pid, n in expected.items():
        if pid == maybe_deleted:  # its delete was interrupted: it may have committed
            continue
        assert state.get(pid, 0) >= n, f"committed person {pid} lost or short"
    return store, state


def test_sigkill_never_leaves_a_half_written_store(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    rnd = random.Random(SEED)
    tally = Tally()
    expected: dict[str, int] = {}  # person id -> embeddings, from the child's reports
    changes = 0  # committed embedding changes; the generation must equal it
    last_generation = 0
    deleted: set[str] = set()
    started = time.monotonic()

    for round_no in range(ROUNDS):
        seconds = rnd.uniform(0.05, 0.6)
        # Odd rounds time the kill from the start (it can land in start-up, the lock or the
        # schema migration), even rounds from `ready` (it lands among the writes).
        lines = run_child(data_dir, SEED + round_no, seconds, after_ready=round_no % 2 == 0)
        tally.rounds += 1
        tally.kills += 1
        if not lines:
            tally.kills_before_ready += 1

        pending: list[str] | None = None
        for line in lines:
            word, *rest = line.split()
            if word == "ready":
                assert int(rest[0]) == len(expected)
            elif word == "begin":
                assert pending is None, f"two calls at once: {line}"
                pending = rest
            elif word == "committed":
                assert pending == rest, f"commit without its begin: {line}"
                pending = None
                op, pid = rest[0], rest[1]
                tally.committed += 1
                tally.by_op[op] += 1
                changes += 1
                if op == "create":
                    assert pid not in expected
                    assert pid not in deleted
                    expected[pid] = int(rest[2])
                elif op == "add":
                    expected[pid] += int(rest[2])
                else:
                    del expected[pid]
                    deleted.add(pid)
            else:
                raise AssertionError(f"unexpected line from the child: {line!r}")

        interrupted_delete = pending[1] if pending and pending[0] == "delete" else None
        store, state = check_store(data_dir, expected, interrupted_delete)
        try:
            # The interrupted call, if any, landed whole or not at all.
            if pending is not None:
                tally.kills_mid_call += 1
                op, pid = pending[0], pending[1]
                if op == "create":
                    n = int(pending[2])
                    assert state.get(pid) in (None, n), f"create {pid} landed partially"
                    landed = pid in state
                    if landed:
                        expected[pid] = n
                elif op == "add":
                    n = int(pending[2])
                    assert pid in state
                    assert state[pid] in (expected[pid], expected[pid] + n), "partial add"
                    landed = state[pid] == expected[pid] + n
                    if landed:
                        expected[pid] += n
                else:
                    landed = pid not in state
                    if landed:
                        del expected[pid]
                        deleted.add(pid)
                if landed:
                    changes += 1
                    tally.interrupted_landed += 1
            # Now the store holds exactly the persons the child committed, nothing else.
            assert state == expected
            assert not deleted & set(state), "a deleted person came back"
            generation = store.generation()
            assert generation >= last_generation, "the generation went backwards"
            assert generation == changes
            last_generation = generation
        finally:
            store.close()

    elapsed = time.monotonic() - started
    print(
        f"\ncrash harness: {tally.rounds} rounds, {tally.kills} SIGKILLs"
        f" ({tally.kills_before_ready} before the child was ready, {tally.kills_mid_call} in the"
        f" middle of a store call, {tally.interrupted_landed} of those had committed),"
        f" {tally.committed} committed operations checked {tally.by_op},"
        f" {len(expected)} persons / {sum(expected.values())} embeddings at the end,"
        f" {elapsed:.1f} s"
    )
    assert tally.kills >= 20
    assert tally.kills_mid_call > 0, "no kill landed in the middle of a write"
    assert tally.committed > 0
    assert tally.by_op["create"] > 0
    assert tally.by_op["add"] > 0
    assert tally.by_op["delete"] > 0
