"""Synthetic embeddings and a ticking clock for the store's tests: the store does not care
where vectors come from, only that they are L2-normalised float32 of the pack's dimension."""

from __future__ import annotations

from typing import Any

import numpy as np

from facegate.identity.store import NewEmbedding

DIM = 512


class FakeClock:
    """A clock that ticks one second per call: deterministic timestamps and ordering."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def unit(rng: np.random.Generator, dim: int = DIM) -> np.ndarray:
    v = rng.standard_normal(dim).astype(np.float32)
    return (v / np.linalg.norm(v)).astype(np.float32)


def emb(
    v: np.ndarray, pose: str = "front", quality: float = 0.9, source: Any = "photo"
) -> NewEmbedding:
    return NewEmbedding(vector=v, pose=pose, quality=quality, source=source)
