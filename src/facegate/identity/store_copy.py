"""Copying one store into another: `facegate store migrate` moves a gate's SQLite gallery
into the PostgreSQL database that several gates share.

`copy_store` reads everything of the source first (persons, embeddings, thumbnails, the event
history, the audit log), checked against the source's own counts, then writes all of it in
ONE transaction of the target, holding the gallery's writer lock (`Tx.exclusive`):
- refused, with nothing written, when the target already holds one of the persons (same
  id), embeddings of another model pack or dimension, or history rows of the same gate with
  the same sequence numbers;
- persons keep their ids, names, notes and times; embeddings their vectors (bit for bit),
  pose, quality, source and time (with the target's row ids, in the source's order);
  thumbnails their bytes; history rows their gate and `seq` (rows without a gate get
  `gate`); audit entries their time, actor, action, person id and detail (new ids);
- before committing, the rows the copy wrote are counted again on the target inside the same
  transaction: any difference from the source raises StoreError and nothing lands;
- one generation step (`Rows.finish`) announces the new persons to the other gates, and an
  `import_store` audit entry records the counts (never names, images or vectors).
The source is only read. Messages name the target by `where` (its URL without password).
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec
import psycopg

from facegate.identity.store import (
    AuditEntry,
    EmbeddingInfo,
    LoggedEvent,
    Person,
    Store,
    StoreError,
)
from facegate.identity.store_db import Tx
from facegate.identity.store_rows import Rows, checked_vector

T = TypeVar("T")

PAGE = 5000  # history rows read per query
CHUNK = 500  # values per `IN (...)`, rows per multi-row INSERT
EVERYTHING = 2**62  # `LIMIT` for "all of them"
NO_SEQ = -(2**62)  # below every sequence number


class CopyReport(msgspec.Struct, frozen=True):
    """What a copy wrote to the target (all zero: the source had nothing to move)."""

    persons: int
    embeddings: int
    thumbnails: int
    events: int
    audit: int  # the source's audit entries copied (besides the `import_store` entry)
    model_pack: str | None = None
    embedding_dim: int | None = None
    generation: int | None = None  # the target's generation after the copy


@dataclass(frozen=True)
class _Embedding:
    person_id: str
    vector: bytes  # little-endian float32, as stored
    pose: str
    quality: float
    source: str
    created_at: float


@dataclass(frozen=True)
class _Snapshot:
    """Everything of the source that the copy writes."""

    persons: list[Person]
    embeddings: list[_Embedding]  # in the source's row-id order
    thumbnails: dict[str, bytes]
    events: list[LoggedEvent]  # every row named by its gate
    audit: list[AuditEntry]  # oldest first
    model_pack: str | None
    dim: int | None
    generation: int


def copy_store(source: Store, target: Store, *, gate: str, actor: str) -> CopyReport:
    """Copy every person, embedding, thumbnail, history row and audit entry of `source` into
    `target` in one transaction of the target, or nothing (StoreError says why). History
    rows without a gate are `gate`'s; `actor` signs the `import_store` audit entry."""
    snap = _read(source, gate)
    if not snap.persons and not snap.events:
        return CopyReport(0, 0, 0, 0, 0, snap.model_pack, snap.dim, target.generation())
    try:
        with target._rows() as rows:
            rows.tx.exclusive()  # the gallery's writer lock, before anything is read
            _check_target(rows.tx, snap, target.where)
            audit_ids = _write(rows, snap)
            report = _verify(rows.tx, snap, audit_ids, target.where)
            rows.audit(
                actor,
                "import_store",
                None,
                source=source.kind,
                persons=report.persons,
                embeddings=report.embeddings,
                thumbnails=report.thumbnails,
                events=report.events,
                audit=report.audit,
            )
            if snap.persons:
                _raise_generation(rows.tx, snap.generation)
            # Leaving the block: `Rows.finish` steps the generation once and announces the
            # new persons to the other gates; then the transaction commits.
    except (psycopg.Error, sqlite3.Error) as exc:
        raise StoreError(f"copying to {target.where} failed, nothing was written: {exc}") from None
    generation = rows.generation if rows.generation is not None else target.generation()
    return msgspec.structs.replace(report, generation=generation)


# -- reading the source ----------------------------------------------------------------------
def _changed(source: Store) -> StoreError:
    return StoreError(
        f"{source.where} changed while it was being read (is `facegate serve` running on"
        " it?); nothing was copied. Stop it and try again"
    )


def _read(source: Store, gate: str) -> _Snapshot:
    """All of the source, checked against its own counts (a source that changes while it is
    read is refused: its writer must be stopped)."""
    persons = source.persons()
    pack, dim = source.model_pack(), source.dim()
    generation = source.generation()
    vectors = source.vectors()
    infos: dict[int, tuple[str, EmbeddingInfo]] = {}
    for person in persons:
        for info in source.embeddings_of(person.id):
            infos[info.id] = (person.id, info)
    embeddings: list[_Embedding] = []
    for row_id, person_id, vector in zip(
        vectors.ids.tolist(), vectors.person_ids, vectors.matrix, strict=True
    ):
        found = infos.pop(int(row_id), None)
        if found is None or found[0] != person_id:
            raise _changed(source)
        info = found[1]
        embeddings.append(
            _Embedding(
                person_id=person_id,
                vector=checked_vector(vector, dim or 0).tobytes(),
                pose=info.pose,
                quality=info.quality,
                source=info.source,
                created_at=info.created_at,
            )
        )
    if infos or len(embeddings) != source.embedding_count():
        raise _changed(source)
    thumbnails: dict[str, bytes] = {}
    for person in persons:
        jpeg = source.thumbnail(person.id)
        if jpeg is not None:
            thumbnails[person.id] = jpeg
    events: list[LoggedEvent] = []
    for activity in source.gates():
        history = _history(source, activity.gate)
        if len(history) != activity.events:
            raise _changed(source)
        name = activity.gate or gate
        events += [msgspec.structs.replace(row, gate=name) for row in history]
    twice = [key for key, n in Counter((e.gate, e.seq) for e in events).items() if n > 1]
    if twice:
        raise StoreError(
            f"{source.where}: {len(twice)} history rows of gate {twice[0][0]!r} are there"
            " twice (with and without the gate's name); nothing was copied"
        )
    audit = source.audit(limit=EVERYTHING)
    audit.reverse()
    if generation != source.generation() or len(persons) != len(source.persons()):
        raise _changed(source)
    return _Snapshot(persons, embeddings, thumbnails, events, audit, pack, dim, generation)


def _history(source: Store, gate: str) -> list[LoggedEvent]:
    """The gate's history rows, oldest first."""
    rows: list[LoggedEvent] = []
    since = NO_SEQ
    while True:
        page = source.events(since, PAGE, gate=gate)
        rows += page
        if len(page) < PAGE:
            return rows
        since = page[-1].seq


# -- writing the target ----------------------------------------------------------------------
def _chunks(values: Sequence[T]) -> Iterator[Sequence[T]]:
    for start in range(0, len(values), CHUNK):
        yield values[start : start + CHUNK]


def _marks(n: int) -> str:
    return ", ".join("?" * n)


def _meta(tx: Tx, key: str) -> str | None:
    rows = tx.query("SELECT value FROM meta WHERE key = ?", (key,))
    return str(rows[0][0]) if rows else None


def _seqs_by_gate(events: Sequence[LoggedEvent]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for event in events:
        out.setdefault(event.gate, []).append(event.seq)
    return out


def _check_target(tx: Tx, snap: _Snapshot, where: str) -> None:
    """Refuse a target the source cannot join (raised inside the transaction: nothing lands)."""
    pack, stored = _meta(tx, "model_pack"), _meta(tx, "embedding_dim")
    dim = None if stored is None else int(stored)
    if (
        snap.model_pack is not None
        and pack is not None
        and (pack, dim)
        != (
            snap.model_pack,
            snap.dim,
        )
    ):
        raise StoreError(
            f"{where} holds {dim}-d embeddings of model pack {pack}; this gallery's are"
            f" {snap.dim}-d of pack {snap.model_pack}, and embeddings of different models"
            " cannot be compared. Nothing was copied: use a store of the same model pack"
            " (or another database)"
        )
    clash: list[str] = []
    for chunk in _chunks([p.id for p in snap.persons]):
        found = tx.query(f"SELECT id FROM persons WHERE id IN ({_marks(len(chunk))})", chunk)
        clash += sorted(str(r[0]) for r in found)
    if clash:
        raise StoreError(
            f"{where} already holds {len(clash)} of these persons (ids"
            f" {', '.join(clash[:5])}{', ...' if len(clash) > 5 else ''}): was this gallery"
            " copied there before? Nothing was copied"
        )
    for gate, seqs in _seqs_by_gate(snap.events).items():
        taken = _count_in(tx, "SELECT count(*) FROM events WHERE gate = ? AND seq IN", seqs, gate)
        if taken:
            raise StoreError(
                f"{where} already holds {taken} history rows of gate {gate!r} with the same"
                " sequence numbers (another gate with that [gate] id, or this gate already ran"
                " on it?). Nothing was copied: every gate sharing a store needs its own [gate] id"
            )


def _write(rows: Rows, snap: _Snapshot) -> list[int]:
    """Insert the snapshot's rows; the new audit rows' ids."""
    tx = rows.tx
    if snap.model_pack is not None and _meta(tx, "model_pack") is None:
        for key, value in (("model_pack", snap.model_pack), ("embedding_dim", str(snap.dim))):
            tx.run(
                "INSERT INTO meta (key, value) VALUES (?, ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )
    for person in snap.persons:
        rows.insert_person(
            person.id, person.name, person.note, person.created_at, person.updated_at
        )
    if snap.embeddings:
        tx.run_many(
            "INSERT INTO embeddings (person_id, vector, pose, quality, source, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            [
                (e.person_id, e.vector, e.pose, e.quality, e.source, e.created_at)
                for e in snap.embeddings
            ],
        )
    if snap.thumbnails:
        now = rows.clock()
        tx.run_many(
            "INSERT INTO thumbnails (person_id, jpeg, updated_at) VALUES (?, ?, ?)",
            [(pid, jpeg, now) for pid, jpeg in snap.thumbnails.items()],
        )
    if snap.events:
        tx.run_many(
            "INSERT INTO events (gate, seq, at, type, person_id, data) VALUES (?, ?, ?, ?, ?, ?)",
            [(e.gate, e.seq, e.at, e.type, e.person_id, e.data) for e in snap.events],
        )
    ids: list[int] = []
    for chunk in _chunks(snap.audit):
        params: list[Any] = []
        for entry in chunk:
            detail = json.dumps(entry.detail, sort_keys=True)  # as `Rows.audit` writes it
            params += [entry.at, entry.actor, entry.action, entry.person_id, detail]
        values = ", ".join(["(?, ?, ?, ?, ?)"] * len(chunk))
        found = tx.query(
            f"INSERT INTO audit (at, actor, action, person_id, detail) VALUES {values}"
            " RETURNING id",
            params,
        )
        ids += [int(r[0]) for r in found]
    return ids


def _count_in(tx: Tx, sql: str, values: Sequence[Any], *before: Any) -> int:
    """`sql` (a count ending in `IN`) summed over chunks of `values`."""
    total = 0
    for chunk in _chunks(values):
        total += int(tx.query(f"{sql} ({_marks(len(chunk))})", (*before, *chunk))[0][0])
    return total


def _verify(tx: Tx, snap: _Snapshot, audit_ids: list[int], where: str) -> CopyReport:
    """Count on the target, in the copy's transaction, what belongs to the copied persons,
    history and audit; StoreError (the transaction rolls back) unless it is the source's."""
    pids = [p.id for p in snap.persons]
    found = CopyReport(
        persons=_count_in(tx, "SELECT count(*) FROM persons WHERE id IN", pids),
        embeddings=_count_in(tx, "SELECT count(*) FROM embeddings WHERE person_id IN", pids),
        thumbnails=_count_in(tx, "SELECT count(*) FROM thumbnails WHERE person_id IN", pids),
        events=sum(
            _count_in(tx, "SELECT count(*) FROM events WHERE gate = ? AND seq IN", seqs, gate)
            for gate, seqs in _seqs_by_gate(snap.events).items()
        ),
        audit=_count_in(tx, "SELECT count(*) FROM audit WHERE id IN", audit_ids),
        model_pack=snap.model_pack,
        embedding_dim=snap.dim,
    )
    expected = CopyReport(
        persons=len(snap.persons),
        embeddings=len(snap.embeddings),
        thumbnails=len(snap.thumbnails),
        events=len(snap.events),
        audit=len(snap.audit),
        model_pack=snap.model_pack,
        embedding_dim=snap.dim,
    )
    if found != expected:
        wrong = [
            f"{field} {getattr(found, field)} (source {getattr(expected, field)})"
            for field in ("persons", "embeddings", "thumbnails", "events", "audit")
            if getattr(found, field) != getattr(expected, field)
        ]
        raise StoreError(
            f"the copy to {where} does not add up: {', '.join(wrong)}; rolled back, nothing"
            " was written"
        )
    return found


def _raise_generation(tx: Tx, source_generation: int) -> None:
    """Move the target's generation to at least the source's, so that the step `finish`
    takes lands above it. The gate's saved index (in its data directory) is stamped with the
    source's generation and row count, and holds the source's row ids: a target generation
    that could equal that stamp would make the gate load it as the target's index."""
    current = int(_meta(tx, "generation") or 0)
    if current < source_generation:
        tx.run("UPDATE meta SET value = ? WHERE key = 'generation'", (str(source_generation),))
