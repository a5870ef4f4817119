"""The child process of tests/test_crash_safety.py (defines no tests): writes until SIGKILLed.

    python tests/crash_child.py DATA_DIR SEED

Opens `Store.open(DATA_DIR)` and loops forever: creates persons with 3-8 embeddings and a
thumbnail of a few KB, sometimes adds embeddings to an existing person, sometimes deletes one.
Around each store call it prints one line to stdout and flushes it:

    begin create <person_id> <n>      committed create <person_id> <n>
    begin add <person_id> <n>         committed add <person_id> <n>
    begin delete <person_id>          committed delete <person_id>

A `begin` without its `committed` is a call the kill interrupted (it may or may not have landed).
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import numpy as np

from facegate.identity.store import NewEmbedding, Store

DIM = 512
PACK = "faceplugin"
ACTOR = "crash-child"
POSES = ("front", "left", "right", "up", "down")


def say(line: str) -> None:
    # One write of a short line: atomic on a pipe, so the parent never sees half a line.
    os.write(sys.stdout.fileno(), (line + "\n").encode())


def embeddings(rnd: random.Random, rng: np.random.Generator, n: int) -> list[NewEmbedding]:
    matrix = rng.standard_normal((n, DIM)).astype(np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    return [
        NewEmbedding(
            vector=row,
            pose=rnd.choice(POSES),
            quality=rnd.random(),
            source=rnd.choice(("photo", "registration")),
        )
        for row in matrix
    ]


def main(argv: list[str]) -> None:
    data_dir, seed = Path(argv[1]), int(argv[2])
    rnd = random.Random(seed)
    rng = np.random.default_rng(seed)
    store = Store.open(data_dir)
    persons = [p.id for p in store.persons()]
    say(f"ready {len(persons)}")
    while True:
        roll = rnd.random()
        if persons and roll < 0.2:
            pid = rnd.choice(persons)
            n = rnd.randint(1, 3)
            items = embeddings(rnd, rng, n)
            thumbnail = rng.bytes(rnd.randint(2048, 8192)) if rnd.random() < 0.5 else None
            say(f"begin add {pid} {n}")
            store.add_embeddings(pid, items, pack=PACK, actor=ACTOR, thumbnail=thumbnail)
            say(f"committed add {pid} {n}")
        elif persons and roll < 0.35:
            pid = persons.pop(rnd.randrange(len(persons)))
            say(f"begin delete {pid}")
            store.delete_person(pid, actor=ACTOR)
            say(f"committed delete {pid}")
        else:
            pid = f"{seed:x}-{rnd.getrandbits(48):012x}"
            n = rnd.randint(3, 8)
            items = embeddings(rnd, rng, n)
            thumbnail = rng.bytes(rnd.randint(2048, 8192))
            say(f"begin create {pid} {n}")
            store.create_person(
                f"Person {pid}", items, pack=PACK, actor=ACTOR, thumbnail=thumbnail, person_id=pid
            )
            say(f"committed create {pid} {n}")
            persons.append(pid)


if __name__ == "__main__":
    main(sys.argv)
