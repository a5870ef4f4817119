"""Open-set decisions, the gallery's store/index consistency, and open-set on real photos."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from facegate.identity.gallery import Candidate, Gallery, decide, person_score
from facegate.identity.store import NewEmbedding, Store
from facegate.settings import IndexSettings, ModelSettings, RecognitionSettings, Settings
from facegate.vision.face import main_face
from facegate.vision.faceplugin import FacepluginAnalyzer
from facegate.vision.images import read_image

DIM = 512


def unit(rng: np.random.Generator, n: int = 1) -> np.ndarray:
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def near(base: np.ndarray, rng: np.random.Generator, noise: float = 0.02) -> np.ndarray:
    v = base + noise * rng.standard_normal(base.shape).astype(np.float32)
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


# -- pure decisions --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("scores", "decision"),
    [
        ([], "unknown"),
        ([0.30], "unknown"),
        ([0.80], "known"),
        ([0.80, 0.40], "known"),
        ([0.80, 0.78], "ambiguous"),
        ([0.46, 0.44], "ambiguous"),  # above the threshold, runner-up within the margin
        ([0.44, 0.43], "unknown"),
    ],
)
def test_decide(scores: list[float], decision: str) -> None:
    cands = [Candidate(f"p{i}", f"n{i}", s) for i, s in enumerate(scores)]
    expected = decision
    ident = decide(cands, threshold=0.45, margin=0.05)
    assert ident.decision == expected
    if expected == "known":
        assert ident.person_id == "p0" and ident.name == "n0"
    else:
        assert ident.person_id is None and ident.name is None
    assert ident.similarity == (scores[0] if scores else None)
    assert (ident.runner_up is not None) == (len(scores) > 1)


def test_person_score_modes() -> None:
    assert person_score([0.2, 0.9, 0.5], "max") == 0.9
    assert person_score([0.2, 0.9, 0.5], "mean_top2") == pytest.approx(0.7)
    assert person_score([0.6], "mean_top2") == 0.6


# -- gallery over a real store ---------------------------------------------------------------
@pytest.fixture
def gallery(tmp_path: Path):  # type: ignore[no-untyped-def]
    with Store.open(tmp_path / "data") as store:
        yield Gallery.open(store, Settings())


def test_identify_known_ambiguous_unknown(gallery: Gallery) -> None:
    rng = np.random.default_rng(0)
    ada, bob = unit(rng), unit(rng)
    a = gallery.create_person(
        "Ada", [NewEmbedding(near(ada[0], rng)) for _ in range(3)], actor="test"
    )
    b = gallery.create_person("Bob", [NewEmbedding(near(bob[0], rng))], actor="test")
    # A probe halfway between Ada and Bob scores both alike: ambiguous, if above threshold.
    mix = (ada[0] + bob[0]) / np.linalg.norm(ada[0] + bob[0])
    results = gallery.identify(np.stack([near(ada[0], rng), near(bob[0], rng), unit(rng)[0], mix]))
    assert [r.decision for r in results] == ["known", "known", "unknown", "ambiguous"]
    assert results[0].person_id == a.id and results[0].name == "Ada"
    assert results[1].person_id == b.id
    assert results[0].runner_up is not None and results[0].runner_up.person_id == b.id


def test_changes_reach_the_index_and_survive_a_reopen(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    base = unit(rng, 3)
    with Store.open(tmp_path / "d") as store:
        g = Gallery.open(store, Settings())
        people = [g.create_person(f"P{i}", [NewEmbedding(base[i])], actor="t") for i in range(3)]
        g.add_embeddings(people[0].id, [NewEmbedding(near(base[0], rng))], actor="t")
        assert len(g) == 4
        assert g.delete_person(people[1].id, actor="t") == 1
        assert len(g) == 3
        assert g.identify(base[1:2])[0].decision == "unknown"
        g.rename(people[2].id, "Pat", actor="t")
        assert g.identify(base[2:3])[0].name == "Pat"
    with Store.open(tmp_path / "d", readonly=True) as store:
        g = Gallery.open(store, Settings())
        assert len(g) == store.embedding_count() == 3
        assert g.identify(base[0:1])[0].person_id == people[0].id


def test_a_reader_refreshes_after_a_writer_changes_the_store(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    v = unit(rng)
    with Store.open(tmp_path / "d") as writer:
        wg = Gallery.open(writer, Settings())
        wg.create_person("First", [NewEmbedding(unit(rng)[0])], actor="t")
        with Store.open(tmp_path / "d", readonly=True) as reader:
            rg = Gallery.open(reader, Settings())
            assert rg.identify(v)[0].decision == "unknown"
            wg.create_person("Later", [NewEmbedding(v[0])], actor="t")
            assert rg.refresh() is True
            assert rg.identify(v)[0].name == "Later"
            assert rg.refresh() is False


def test_similar_persons_is_the_duplicate_check(gallery: Gallery) -> None:
    rng = np.random.default_rng(3)
    base = unit(rng, 2)
    p = gallery.create_person("Ada", [NewEmbedding(base[0])], actor="t")
    probes = np.stack([near(base[0], rng), near(base[0], rng), unit(rng)[0]])
    found = gallery.similar_persons(probes)
    assert [c.person_id for c in found] == [p.id]
    assert gallery.similar_persons(probes, exclude=p.id) == []
    assert gallery.similar_persons(base[1:2]) == []


def test_a_saved_index_is_reused_only_while_its_stamp_matches(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    settings = Settings(index=IndexSettings(save_after_build_seconds=0.0))
    with Store.open(tmp_path / "d") as store:
        g = Gallery.open(store, settings)
        p = g.create_person("A", [NewEmbedding(v) for v in unit(rng, 5)], actor="t")
    with Store.open(tmp_path / "d") as store:
        g = Gallery.open(store, settings)  # builds (stamp from before the enrolment) and saves
        assert (tmp_path / "d" / "index.faiss").exists()
    with Store.open(tmp_path / "d") as store:
        g = Gallery.open(store, settings)
        assert g.loaded_from_disk
        g.delete_person(p.id, actor="t")
        # Erasure removes the saved copy too: it held the vectors.
        assert not (tmp_path / "d" / "index.faiss").exists()


def test_mixing_model_packs_is_refused(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    with Store.open(tmp_path / "d") as store:
        Gallery.open(store, Settings()).create_person("A", [NewEmbedding(unit(rng)[0])], actor="t")
        other = Settings(models=ModelSettings(pack="buffalo_l"))
        with pytest.raises(Exception, match="model pack faceplugin"):
            Gallery.open(store, other)


# -- open-set on real photos -----------------------------------------------------------------
def identities(deepface: Path) -> list[list[str]]:
    """Identities of the deepface photos: connected components of the 'same' pairs."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for name in ("pairs_master.csv", "pairs_pivot.csv"):
        with (deepface / name).open() as fh:
            for row in csv.DictReader(fh):
                a, b = row["file_x"], row["file_y"]
                same = (row.get("Decision") or row.get("decision") or "").lower() == "yes"
                find(a)
                find(b)
                if same:
                    parent[find(a)] = find(b)
    groups: dict[str, list[str]] = {}
    for x in list(parent):
        groups.setdefault(find(x), []).append(x)
    return sorted((sorted(g) for g in groups.values()), key=lambda g: g[0])


@pytest.mark.parametrize("half", [0, 1])
def test_open_set_on_real_photos(
    analyzer: FacepluginAnalyzer, deepface: Path, tmp_path: Path, half: int
) -> None:
    """Enrol one photo per person for half the identities: every other photo of an enrolled
    person is `known` as that person; every photo of anyone else is `unknown`."""
    groups = identities(deepface)
    assert len(groups) >= 10
    embedding: dict[str, np.ndarray] = {}
    for group in groups:
        for name in group:
            face, _ = main_face(analyzer, read_image(deepface / name), pose=False)
            assert face is not None and face.embedding is not None
            embedding[name] = face.embedding
    enrolled = groups[half::2]
    others = groups[1 - half :: 2]
    settings = Settings(recognition=RecognitionSettings())
    with Store.open(tmp_path / "d") as store:
        g = Gallery.open(store, settings)
        ids = {
            grp[0]: g.create_person(grp[0], [NewEmbedding(embedding[grp[0]])], actor="t").id
            for grp in enrolled
        }
        wrong: list[str] = []
        for grp in enrolled:
            for name in grp[1:]:
                r = g.identify(embedding[name][None, :])[0]
                if r.decision != "known" or r.person_id != ids[grp[0]]:
                    wrong.append(f"{name}: {r.decision} {r.name} {r.similarity}")
        for grp in others:
            for name in grp:
                r = g.identify(embedding[name][None, :])[0]
                if r.decision != "unknown":
                    wrong.append(f"{name} (not enrolled): {r.decision} {r.similarity}")
        assert wrong == []
