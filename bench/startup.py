"""Start-up of a gallery from SQLite: read every embedding, build (or load) the index.

    .venv/bin/python bench/startup.py [--sizes 100000,1000000]

Writes synthetic normalised embeddings (10 per person) into a real store in a temporary
data directory, then times `Gallery.open` as `facegate serve` / `identify` do at start:
first with no saved index (rebuild from SQLite), then again (a saved index is reused when
the build was slow enough to be saved and its generation stamp matches).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from facegate.identity.gallery import Gallery
from facegate.identity.store import NewEmbedding, Store
from facegate.settings import Settings

PER_PERSON = 10
DIM = 512


def fill(store: Store, count: int, seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    persons = count // PER_PERSON
    chunk = 2000  # persons per transaction
    for start in range(0, persons, chunk):
        with store.batch() as batch:
            for p in range(start, min(persons, start + chunk)):
                centre = rng.standard_normal(DIM).astype(np.float32)
                vecs = centre + 0.6 * rng.standard_normal((PER_PERSON, DIM)).astype(np.float32)
                vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
                items = [NewEmbedding(v) for v in vecs]
                batch.create_person(
                    f"p{p:07d}", f"Person {p}", "", 0.0, items, pack="faceplugin", thumbnail=None
                )
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="100000,1000000")
    sizes = [int(s) for s in parser.parse_args().sizes.split(",")]
    settings = Settings()
    print("== gallery start-up from SQLite (Gallery.open) ==")
    for size in sizes:
        with tempfile.TemporaryDirectory(prefix="facegate-bench-") as tmp:
            data = Path(tmp) / "data"
            with Store.open(data) as store:
                fill_s = fill(store, size)
            db_mb = (data / "facegate.db").stat().st_size / 2**20
            with Store.open(data) as store:
                t0 = time.perf_counter()
                gallery = Gallery.open(store, settings)
                first = time.perf_counter() - t0
                kind = gallery.index_kind
                saved = gallery.index_path.exists()
            with Store.open(data) as store:
                t0 = time.perf_counter()
                gallery = Gallery.open(store, settings)
                second = time.perf_counter() - t0
                reused = gallery.loaded_from_disk
            print(
                f"{size:>9,} embeddings ({db_mb:,.0f} MiB db, filled in {fill_s:.1f} s):"
                f" first start {first:.2f} s ({kind} index built"
                f"{', saved' if saved else ''}); next start {second:.2f} s"
                f" ({'saved index reused' if reused else 'rebuilt'})"
            )


if __name__ == "__main__":
    main()
