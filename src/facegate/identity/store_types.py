"""What the identity store takes and gives: its records and its errors.

Import them from `facegate.identity.store`, which re-exports every name here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import msgspec
import numpy as np
import numpy.typing as npt

Source = Literal["photo", "registration"]
Clock = Callable[[], float]


# -- errors ----------------------------------------------------------------------------------
class StoreError(Exception):
    """The store cannot be used as asked; the message says why and what to do."""


class StoreUnavailableError(StoreError):
    """The shared store cannot be reached now (PostgreSQL away): nothing was written; try
    again in a moment."""


class StoreLockedError(StoreError):
    """Another process holds the data directory for writing."""


class UnknownPersonError(StoreError, KeyError):
    def __init__(self, person_id: str) -> None:
        super().__init__(f"no person with id {person_id!r}")
        self.person_id = person_id

    def __str__(self) -> str:
        return str(self.args[0])


class ErasurePendingError(StoreError):
    """The person is deleted, but a reader still holds a snapshot with their data: the bytes
    leave the files when it finishes (retried at every later write and at close)."""

    def __init__(self, person_id: str, removed_ids: list[int]) -> None:
        super().__init__(
            f"person {person_id} is deleted, but another process is still reading the old"
            " data; it will be wiped from disk as soon as that read ends (or at the next"
            " write or close)"
        )
        self.person_id = person_id
        self.removed_ids = removed_ids


# -- records ---------------------------------------------------------------------------------
class NewEmbedding(msgspec.Struct, frozen=True):
    vector: npt.NDArray[np.float32]
    pose: str = "front"
    quality: float = 0.0
    source: Source = "photo"


class EmbeddingInfo(msgspec.Struct, frozen=True):
    id: int
    pose: str
    quality: float
    source: str
    created_at: float


class Person(msgspec.Struct, frozen=True):
    id: str
    name: str
    note: str
    created_at: float
    updated_at: float
    embeddings: int
    poses: list[str]


class AuditEntry(msgspec.Struct, frozen=True):
    id: int
    at: float
    actor: str
    action: str
    person_id: str | None
    detail: dict[str, Any]


class LoggedEvent(msgspec.Struct, frozen=True):
    seq: int  # the gate's own sequence number
    at: float  # unix time
    type: str
    person_id: str | None
    data: str  # the event's data as JSON
    gate: str = ""  # the gate that saw it (`[gate] id`)


class GateActivity(msgspec.Struct, frozen=True):
    """A gate as the shared history knows it."""

    gate: str
    events: int
    last_at: float


class LastSeen(msgspec.Struct, frozen=True):
    """When and where a person was last recognised."""

    at: float
    gate: str


class DuplicatePersonError(StoreError):
    """A new person was refused: they match someone already stored (found in the same
    transaction as the insert would have been, so that two gates cannot both add them)."""

    def __init__(self, matches: list[tuple[str, str, float]]) -> None:
        pid, name, similarity = matches[0]
        super().__init__(f"already registered as {name} ({pid}) at similarity {similarity:.2f}")
        self.matches = matches  # (person_id, name, similarity), best first


class GalleryChange(msgspec.Struct, frozen=True):
    """A committed change of the gallery (persons, names, embeddings), as another gate hears
    it: the store's generation after it, and the persons it touched (None: too many to name;
    reload everything)."""

    generation: int
    persons: list[str] | None


class Vectors(msgspec.Struct, frozen=True):
    """Every embedding, for building the index: row ids, their persons and the matrix."""

    ids: npt.NDArray[np.int64]
    person_ids: list[str]
    matrix: npt.NDArray[np.float32]  # (n, dim)
