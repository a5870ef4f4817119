"""Gates sharing one PostgreSQL store: each gate's gallery follows the others' changes, and a new
person is refused as a duplicate whichever gate registered them first.

Two gates are two `Store`s on the same database (`pg_url`, tests/postgres.py) with their own
data directories, each with its own `Gallery` (default settings, model pack "faceplugin");
gate B follows with a `GalleryFollower` where a test says so. Embeddings are random 512-d unit
vectors. Racing registrations run in two spawned OS processes. Skipped with a reason where
PostgreSQL is absent.
"""

from __future__ import annotations

import json
import multiprocessing
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest

from facegate.identity import store_postgres
from facegate.identity.follower import GalleryFollower
from facegate.identity.gallery import Gallery
from facegate.identity.store import (
    DuplicatePersonError,
    GalleryChange,
    NewEmbedding,
    Store,
)
from facegate.settings import Settings
from postgres import PostgresServer

DIM = 512
PACK = "faceplugin"


def unit(rng: np.random.Generator) -> np.ndarray:
    v = rng.standard_normal(DIM).astype(np.float32)
    return (v / np.linalg.norm(v)).astype(np.float32)


def near(v: np.ndarray, rng: np.random.Generator, scale: float = 1e-3) -> np.ndarray:
    """`v` plus a little noise, renormalised: another capture of the same face."""
    w = v + scale * rng.standard_normal(DIM).astype(np.float32)
    return (w / np.linalg.norm(w)).astype(np.float32)


def emb(v: np.ndarray, pose: str = "front") -> NewEmbedding:
    return NewEmbedding(vector=v, pose=pose, quality=0.9, source="registration")


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll `check` until it holds; the seconds it took (fails after `timeout`)."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            pytest.fail(f"{what}: not within {timeout} s")
        time.sleep(0.005)
    return time.monotonic() - start


class Gate:
    """One gate: its store on the shared database, its gallery, maybe a follower."""

    def __init__(self, name: str, store: Store) -> None:
        self.name = name
        self.store = store
        self.gallery = Gallery.open(store, Settings())
        self.follower: GalleryFollower | None = None

    def follow(self) -> GalleryFollower:
        follower = GalleryFollower(self.gallery)
        self.follower = follower
        follower.start()
        wait_for(lambda: follower.connected, 10.0, f"gate {self.name} listening")
        return follower

    def who(self, v: np.ndarray) -> str | None:
        """The person this gate identifies `v` as (None: unknown or ambiguous)."""
        found = self.gallery.identify(v[None, :])[0]
        return found.person_id if found.decision == "known" else None

    def close(self) -> None:
        if self.follower is not None:
            self.follower.stop()
        self.store.close()


@pytest.fixture
def gates(pg_url: str, tmp_path: Path) -> Iterator[Callable[[str], Gate]]:
    opened: list[Gate] = []

    def open_gate(name: str) -> Gate:
        store = Store.open(tmp_path / name, url=pg_url, gate=name)
        try:
            gate = Gate(name, store)
        except BaseException:
            store.close()
            raise
        opened.append(gate)
        return gate

    yield open_gate
    for gate in opened:
        gate.close()


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


# -- following ---------------------------------------------------------------------------------
def test_a_person_created_at_a_is_identified_at_b_within_a_second(
    gates: Callable[[str], Gate], rng: np.random.Generator
) -> None:
    a, b = gates("a"), gates("b")
    follower = b.follow()
    v = unit(rng)
    assert b.who(v) is None
    person = a.gallery.create_person("Ada", [emb(v), emb(near(v, rng), "left")], actor="a")
    wait_for(lambda: b.who(v) == person.id, 1.0, "B identifies the person A created")
    assert b.who(near(v, rng)) == person.id
    assert b.gallery.name_of(person.id) == "Ada"
    assert len(b.gallery) == 2 and b.gallery.person_count == 1
    # followed person by person, not reloaded; the index reflects A's generation
    assert (b.gallery.followed, b.gallery.reloads) == (1, 0)
    wait_for(lambda: b.gallery.generation == a.store.generation(), 1.0, "B's generation")
    assert follower.last_change_at is not None
    assert follower.reconnections == 0


def test_a_follower_survives_a_failure_while_applying_a_change(
    gates: Callable[[str], Gate],
    rng: np.random.Generator,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An unexpected error while applying one change (a bug) is logged; the follower
    reconnects, resyncs by generation, and follows the changes after it."""
    a, b = gates("a"), gates("b")
    follower = b.follow()
    wait_for(lambda: follower.connected, 2.0, "B listening")
    real_apply = b.gallery.apply
    failed: list[object] = []

    def apply_once_broken(change: Any) -> bool:
        if change is not None and not failed:
            failed.append(change)
            raise RuntimeError("a bug while applying")
        return real_apply(change)

    monkeypatch.setattr(b.gallery, "apply", apply_once_broken)
    v, w = unit(rng), unit(rng)
    first = a.gallery.create_person("First", [emb(v)], actor="a")
    # The failed change is found again by the generation comparison after reconnecting.
    wait_for(lambda: b.who(v) == first.id, 5.0, "B recovers the change it failed on")
    second = a.gallery.create_person("Second", [emb(w)], actor="a")
    wait_for(lambda: b.who(w) == second.id, 2.0, "B follows the next change")
    assert failed and "gallery follower failed" in caplog.text


def test_a_rename_at_a_reaches_b(gates: Callable[[str], Gate], rng: np.random.Generator) -> None:
    a, b = gates("a"), gates("b")
    b.follow()
    v = unit(rng)
    person = a.gallery.create_person("Old Name", [emb(v)], actor="a")
    wait_for(lambda: b.gallery.name_of(person.id) == "Old Name", 1.0, "B knows the person")
    a.gallery.rename(person.id, "  New   Name ", actor="a")
    wait_for(lambda: b.gallery.name_of(person.id) == "New Name", 1.0, "B has the new name")
    found = b.gallery.identify(v[None, :])[0]
    assert (found.decision, found.person_id, found.name) == ("known", person.id, "New Name")
    assert b.gallery.reloads == 0


def test_an_erasure_at_a_removes_them_from_b_and_bs_saved_index(
    gates: Callable[[str], Gate], rng: np.random.Generator
) -> None:
    a, b = gates("a"), gates("b")
    b.follow()
    gone, kept = unit(rng), unit(rng)
    erased = a.gallery.create_person("Erased", [emb(gone), emb(near(gone, rng))], actor="a")
    other = a.gallery.create_person("Kept", [emb(kept)], actor="a")
    wait_for(lambda: b.who(gone) == erased.id and b.who(kept) == other.id, 2.0, "B knows both")
    b.gallery.index_path.write_bytes(b"x")  # a saved index holds their vectors too
    assert a.gallery.delete_person(erased.id, actor="a") == 2
    wait_for(lambda: b.who(gone) is None, 2.0, "B no longer identifies the erased person")
    wait_for(lambda: not b.gallery.index_path.exists(), 1.0, "B's saved index deleted")
    assert b.gallery.identify(gone[None, :])[0].decision == "unknown"
    assert erased.id not in [c.person_id for c in b.gallery.identify(gone[None, :])[0].candidates]
    assert b.gallery.name_of(erased.id) is None
    assert b.who(kept) == other.id
    assert (len(b.gallery), b.gallery.person_count) == (1, 1)
    assert b.gallery.reloads == 0


def test_a_generation_gap_means_a_full_reload(
    gates: Callable[[str], Gate], rng: np.random.Generator
) -> None:
    a, b = gates("a"), gates("b")  # B does not follow: the changes are handed over by hand
    vp, vq = unit(rng), unit(rng)
    p = a.gallery.create_person("P", [emb(vp)], actor="a")  # generation 1: B misses it
    q = a.gallery.create_person("Q", [emb(vq)], actor="a")  # generation 2
    assert b.gallery.generation == 0
    assert b.gallery.apply(GalleryChange(2, [q.id]))  # 2 does not follow 0: reload
    assert (b.gallery.reloads, b.gallery.followed) == (1, 0)
    assert b.gallery.generation == 2
    assert b.who(vp) == p.id and b.who(vq) == q.id  # the missed change too
    assert not b.gallery.apply(GalleryChange(2, [q.id]))  # already reflected
    assert not b.gallery.apply(None)  # nothing unseen: no reload
    assert b.gallery.reloads == 1
    a.gallery.rename(p.id, "P2", actor="a")  # generation 3: the next one, followed
    assert b.gallery.apply(GalleryChange(3, [p.id]))
    assert (b.gallery.reloads, b.gallery.followed) == (1, 1)
    assert b.gallery.name_of(p.id) == "P2"
    # a change that skips ahead (a notification lost in between): reload from the store
    a.gallery.rename(q.id, "Q2", actor="a")  # 4, never told
    a.gallery.rename(q.id, "Q3", actor="a")  # 5
    assert b.gallery.apply(GalleryChange(5, [q.id]))
    assert b.gallery.reloads == 2 and b.gallery.generation == 5
    assert b.gallery.name_of(q.id) == "Q3"
    # a change too big to name its persons: reload
    a.gallery.rename(q.id, "Q4", actor="a")  # 6
    assert b.gallery.apply(GalleryChange(6, None))
    assert b.gallery.reloads == 3 and b.gallery.name_of(q.id) == "Q4"
    # the store moved on without a word (a reconnection asks): reload
    a.gallery.rename(q.id, "Q5", actor="a")  # 7
    assert b.gallery.apply(None)
    assert b.gallery.reloads == 4 and b.gallery.generation == 7


def test_a_change_too_big_to_name_its_persons_reloads_the_follower(
    gates: Callable[[str], Gate], rng: np.random.Generator
) -> None:
    a, b = gates("a"), gates("b")
    b.follow()
    vectors = [unit(rng) for _ in range(520)]  # > 7000 bytes of person ids in one NOTIFY
    with a.store.batch() as batch:
        for i, v in enumerate(vectors):
            batch.create_person(
                f"imported{i:04d}", f"Imported {i}", "", 1.0, [emb(v)], pack=PACK, thumbnail=None
            )
    wait_for(lambda: b.gallery.person_count == 520, 5.0, "B has the whole import")
    assert b.gallery.reloads == 1 and b.gallery.followed == 0
    assert b.who(vectors[0]) == "imported0000" and b.who(vectors[-1]) == "imported0519"


def test_followers_catch_up_after_postgres_restarts(
    gates: Callable[[str], Gate], pg_server: PostgresServer, rng: np.random.Generator
) -> None:
    a, b = gates("a"), gates("b")
    follower = b.follow()
    v0 = unit(rng)
    first = a.gallery.create_person("Before", [emb(v0)], actor="a")
    wait_for(lambda: b.who(v0) == first.id, 1.0, "B follows before the restart")
    # A restart: B's listener is lost; once it is back, A's changes reach it again.
    pg_server.restart()
    wait_for(lambda: follower.reconnections >= 1, 20.0, "B's follower reconnects")
    v1 = unit(rng)
    second = a.gallery.create_person("After", [emb(v1)], actor="a")  # A's pool reconnects too
    wait_for(lambda: b.who(v1) == second.id, 2.0, "B identifies a person made after the restart")
    # Down for a while, and A writes the moment it is back, before B's listener has
    # reconnected (it is backing off): the notification is lost, the generations tell.
    reconnected, reloads = follower.reconnections, b.gallery.reloads
    pg_server.stop()
    time.sleep(1.6)  # B's reconnection backoff grows while the server is down
    pg_server.start()
    v2 = unit(rng)
    third = a.gallery.create_person("While away", [emb(v2)], actor="a")
    missed = follower.reconnections == reconnected  # B was not listening yet at the commit
    wait_for(lambda: b.who(v2) == third.id, 20.0, "B picks up the change made while away")
    if missed:
        assert b.gallery.reloads > reloads, "found by comparing generations"
    assert b.who(v0) == first.id and b.who(v1) == second.id
    assert b.gallery.generation == a.store.generation()


def test_a_change_that_was_never_announced_is_found_at_reconnection(
    gates: Callable[[str], Gate], pg_server: PostgresServer, pg_url: str, rng: np.random.Generator
) -> None:
    """A change committed without NOTIFY (as if B's listener had been away) is found when
    B's listener reconnects: by comparing generations."""
    a, b = gates("a"), gates("b")
    follower = b.follow()
    v0 = unit(rng)
    a.gallery.create_person("Normal", [emb(v0)], actor="a")
    wait_for(lambda: b.who(v0) is not None, 1.0, "B follows")
    reloads = b.gallery.reloads
    v = unit(rng)
    with psycopg.connect(pg_url) as conn:  # one transaction, no pg_notify
        conn.execute(
            "INSERT INTO persons (id, name, note, created_at, updated_at)"
            " VALUES ('silent1', 'Silent', '', 1, 1)"
        )
        conn.execute(
            "INSERT INTO embeddings (person_id, vector, pose, quality, source, created_at)"
            " VALUES ('silent1', %s, 'front', 0.9, 'photo', 1)",
            (v.astype("<f4").tobytes(),),
        )
        conn.execute(
            "UPDATE meta SET value = CAST(CAST(value AS integer) + 1 AS text)"
            " WHERE key = 'generation'"
        )
    time.sleep(0.5)
    assert b.who(v) is None  # nobody told B
    dbname = pg_url.split("?", maxsplit=1)[0].rsplit("/", 1)[1]
    with psycopg.connect(pg_server.admin_url(dbname), autocommit=True) as admin:
        cut = admin.execute(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()
    assert cut is not None and cut[0] >= 1
    wait_for(lambda: b.who(v) == "silent1", 10.0, "B finds the unannounced person")
    assert b.gallery.reloads == reloads + 1
    assert follower.reconnections >= 1
    assert b.gallery.name_of("silent1") == "Silent"


# -- duplicates across gates -------------------------------------------------------------------
def test_a_person_registered_at_a_is_a_duplicate_at_b_that_does_not_follow(
    gates: Callable[[str], Gate], rng: np.random.Generator
) -> None:
    a, b = gates("a"), gates("b")  # B's follower is not running: its index never hears of A's
    mine = b.gallery.create_person("B's own", [emb(unit(rng))], actor="b")
    v = unit(rng)
    captures = [emb(v), emb(near(v, rng), "left"), emb(near(v, rng), "right")]
    person = a.gallery.create_person("Ada", captures, actor="a")
    assert b.who(v) is None  # B's index does not know her
    generation = a.store.generation()
    with pytest.raises(DuplicatePersonError, match="already registered as Ada") as info:
        b.gallery.create_person("Ada again", captures, actor="b", refuse_similar=True)
    pid, name, similarity = info.value.matches[0]
    assert (pid, name) == (person.id, "Ada") and similarity > 0.99
    # the same person captured anew is refused too
    with pytest.raises(DuplicatePersonError):
        b.gallery.create_person(
            "Ada again", [emb(near(v, rng, 0.01))], actor="b", refuse_similar=True
        )
    assert sorted(p.id for p in a.store.persons()) == sorted([mine.id, person.id])
    assert a.store.generation() == generation  # refused: nothing written
    assert b.who(v) is None and b.gallery.person_count == 1
    # someone else is not refused
    other = b.gallery.create_person("Bob", [emb(unit(rng))], actor="b", refuse_similar=True)
    assert other.name == "Bob" and len(a.store.persons()) == 3


def test_someone_erased_elsewhere_is_no_duplicate_in_a_stale_index(
    gates: Callable[[str], Gate], rng: np.random.Generator
) -> None:
    a, b = gates("a"), gates("b")
    follower = b.follow()
    v = unit(rng)
    person = a.gallery.create_person("Ada", [emb(v)], actor="a")
    wait_for(lambda: b.who(v) == person.id, 1.0, "B knows her")
    follower.stop()
    a.gallery.delete_person(person.id, actor="a")
    assert b.who(v) == person.id  # B's index is stale: it still holds her
    again = b.gallery.create_person("Ada", [emb(v)], actor="b", refuse_similar=True)
    assert [p.id for p in a.store.persons()] == [again.id]


def _register_in_rounds(job: dict[str, Any], barrier: Any) -> None:
    """A spawned process: one gate registering round after round, each at the barrier,
    the same face as the other gate (its own capture of it). Results written to `out`."""
    url, data_dir, gate, out = job["url"], job["data_dir"], job["gate"], job["out"]
    rounds, refuse = job["rounds"], job["refuse"]
    if job["without_writer_lock"]:  # the control: what the race does without the lock
        store_postgres.PostgresTx.exclusive = lambda self: None  # type: ignore[method-assign]
    results: list[list[str]] = []
    try:
        with Store.open(Path(data_dir), url=url, gate=gate) as store:
            gallery = Gallery.open(store, Settings())
            for round_ in range(rounds):
                face = unit(np.random.default_rng(1000 + round_))  # both gates see this face
                capture = near(face, np.random.default_rng([round_, ord(gate[-1])]))
                barrier.wait(timeout=60)
                try:
                    person = gallery.create_person(
                        f"round {round_} {gate}",
                        [emb(capture)],
                        actor=gate,
                        refuse_similar=refuse,
                    )
                    results.append(["created", person.id])
                except DuplicatePersonError as exc:
                    results.append(["duplicate", exc.matches[0][0]])
    except BaseException:  # reported to the test, which fails on it
        results.append(["error", traceback.format_exc()])
        barrier.abort()
    Path(out).write_text(json.dumps(results))


@pytest.mark.parametrize(
    ("refuse", "without_writer_lock"),
    [(True, False), (False, False), (True, True)],
    ids=["refuse_similar", "control_no_refusal", "control_without_writer_lock"],
)
def test_two_processes_racing_to_register_the_same_face(
    pg_url: str, tmp_path: Path, refuse: bool, without_writer_lock: bool
) -> None:
    """Two gates (OS processes) register the same face at the same moment, five times. With
    refuse_similar, exactly one person per round: the other gate gets DuplicatePersonError
    naming them. The controls show the race is real: without refusal, two persons per round;
    with refusal but the writer lock switched off (in the children), the checks overlap and
    let both through."""
    rounds = 5
    with Store.open(tmp_path / "setup", url=pg_url) as setup:  # the schema, before the race
        if without_writer_lock:  # without the lock, the first embedding's dimension races too
            seed = unit(np.random.default_rng(1))
            setup.create_person("seed", [emb(seed)], pack=PACK, actor="setup")
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    names = ["g0", "g1"]
    outs = {g: tmp_path / f"{g}.json" for g in names}
    procs = [
        ctx.Process(
            target=_register_in_rounds,
            args=(
                {
                    "url": pg_url,
                    "data_dir": str(tmp_path / g),
                    "gate": g,
                    "rounds": rounds,
                    "refuse": refuse,
                    "without_writer_lock": without_writer_lock,
                    "out": str(outs[g]),
                },
                barrier,
            ),
        )
        for g in names
    ]
    for proc in procs:
        proc.start()
    try:
        for proc in procs:
            proc.join(120)
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
                proc.join()
    assert [proc.exitcode for proc in procs] == [0, 0]
    results = {g: json.loads(outs[g].read_text()) for g in names}
    for g in names:
        errors = [r[1] for r in results[g] if r[0] == "error"]
        assert not errors, f"gate {g} failed:\n{errors[0]}"
        assert len(results[g]) == rounds
    with Store.open(tmp_path / "check", url=pg_url, gate="check") as store:
        persons = store.persons()
    per_round = [
        sorted(p.id for p in persons if p.name.startswith(f"round {round_} "))
        for round_ in range(rounds)
    ]
    outcomes = [{g: results[g][round_] for g in names} for round_ in range(rounds)]
    if without_writer_lock:
        # The duplicate check alone, each gate in its own transaction, lets both through
        # when they overlap: the test above would fail without the lock.
        assert any(len(ids) == 2 for ids in per_round), outcomes
        return
    for round_, (ids, outcome) in enumerate(zip(per_round, outcomes, strict=True)):
        if refuse:
            kinds = sorted(o[0] for o in outcome.values())
            assert kinds == ["created", "duplicate"], (round_, outcome)
            winner = next(o[1] for o in outcome.values() if o[0] == "created")
            loser = next(o[1] for o in outcome.values() if o[0] == "duplicate")
            assert loser == winner, "the refusal names the person the other gate made"
            assert ids == [winner], (round_, outcome)
        else:
            assert [o[0] for o in outcome.values()] == ["created", "created"], outcome
            assert len(ids) == 2, (round_, outcome)
    assert len(persons) == (rounds if refuse else 2 * rounds)
