"""Open-set identification on ../shared/data/faces/deepface with the default settings.

Identities are the connected components of the pairs files' "same" pairs. For each half of
the identities in turn: enrol one photo per person (through the real photo enrolment, so the
quality gates apply; the next photo is tried if one is refused), then identify every other
photo: an enrolled person's photos must come out `known` as that person, everyone else's
`unknown`.
"""

from __future__ import annotations

import csv
import sys
import tempfile
from collections import Counter
from pathlib import Path

from facegate.identity.enrolment import PhotoEnroller
from facegate.identity.gallery import Gallery
from facegate.identity.store import Store
from facegate.settings import Settings, load_settings, models_dir
from facegate.vision.face import main_face
from facegate.vision.faceplugin import FacepluginAnalyzer
from facegate.vision.images import read_image
from facegate.vision.quality import QualityValidator

DEEPFACE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "faces" / "deepface"


def identities() -> list[list[str]]:
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            x = parent[x]
        return x

    for name in ("pairs_master.csv", "pairs_pivot.csv"):
        with (DEEPFACE / name).open() as fh:
            for row in csv.DictReader(fh):
                a, b = find(row["file_x"]), find(row["file_y"])
                if (row.get("Decision") or row.get("decision") or "").lower() == "yes":
                    parent[a] = b
    groups: dict[str, list[str]] = {}
    for x in list(parent):
        groups.setdefault(find(x), []).append(x)
    return sorted((sorted(g) for g in groups.values()), key=lambda g: g[0])


def main() -> None:
    if not DEEPFACE.is_dir():
        sys.exit(f"{DEEPFACE} not found")
    settings = Settings()
    analyzer = FacepluginAnalyzer(models_dir(load_settings()) / "faceplugin")
    groups = identities()
    print("== open-set on deepface (one enrolment photo per person, half the identities) ==")
    for half in (0, 1):
        enrolled, others = groups[half::2], groups[1 - half :: 2]
        tally: Counter[str] = Counter()
        with tempfile.TemporaryDirectory() as tmp, Store.open(Path(tmp) / "d") as store:
            gallery = Gallery.open(store, settings)
            enroller = PhotoEnroller(gallery, analyzer, QualityValidator(settings.quality))
            used: dict[str, str] = {}
            enrol_photo: dict[str, str] = {}
            for group in enrolled:
                for photo in group:
                    res = enroller.enrol([(photo, read_image(DEEPFACE / photo))], name=group[0])
                    if res.person_id:
                        used[group[0]] = res.person_id
                        enrol_photo[group[0]] = photo
                        break
            for group in groups:
                pid = used.get(group[0])
                for photo in group:
                    if photo == enrol_photo.get(group[0]):
                        continue
                    face, _ = main_face(analyzer, read_image(DEEPFACE / photo), pose=False)
                    assert face is not None and face.embedding is not None
                    result = gallery.identify(face.embedding[None, :])[0]
                    if group in enrolled and pid is not None:
                        if result.person_id == pid:
                            tally["known right"] += 1
                        else:
                            tally[f"enrolled person: {result.decision} (wrong)"] += 1
                    elif group in others:
                        tally[
                            "unknown right"
                            if result.decision == "unknown"
                            else f"stranger: {result.decision} (wrong)"
                        ] += 1
        print(
            f"half {half}: {len(used)}/{len(enrolled)} persons enrolled; "
            + ", ".join(f"{k} {v}" for k, v in sorted(tally.items()))
        )


if __name__ == "__main__":
    main()
