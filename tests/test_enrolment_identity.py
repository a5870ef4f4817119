# ruff: noqa: F811  (the fixtures imported below are named again as test arguments)
"""Enrolment checks who is in each photo: a photo added to a person must look like them, the
same photo is never stored twice, a photo of two similar faces needs the face named, and force
is audited. Real models on real photos, through the CLI and the HTTP API."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from facegate.identity.store import AuditEntry, Store
from facegate.settings import Settings
from test_cli_persons import data, run  # noqa: F401  (the CLI helpers and data-dir fixture)
from test_server import (
    Serve,
    analyzer_pool,  # noqa: F401
    blank_dir,  # noqa: F401
    enrol,
    photo,
    serve,  # noqa: F401
)
from test_server import uploads as needs_multipart

ADA = ("img1.jpg", "img2.jpg", "img4.jpg")  # one person (pairs_master.csv: Yes)
SOMEONE_ELSE = "img20.jpg"  # another person
THRESHOLD = Settings().recognition.threshold


def audit_rows(data: Path, action: str) -> list[AuditEntry]:
    with Store.open(data, readonly=True) as store:
        return [e for e in store.audit(1000) if e.action == action]


def similarity_in(reason: str) -> float:
    found = re.search(r"similarity (-?[0-9.]+)", reason)
    assert found, reason
    return float(found.group(1))


def embeddings_of(capsys: pytest.CaptureFixture[str], pid: str) -> int:
    _, out = run(capsys, "persons", "show", pid)
    return len(out[0]["embeddings"])


# -- the CLI -----------------------------------------------------------------------------------
def test_a_photo_of_someone_else_is_refused_then_forced_and_audited(
    capsys: pytest.CaptureFixture[str], data: Path, deepface: Path
) -> None:
    code, out = run(capsys, "enroll", "Ada", str(deepface / ADA[0]), str(deepface / ADA[1]))
    assert code == 0
    pid = out[0]["person_id"]
    other = str(deepface / SOMEONE_ELSE)

    code, out = run(capsys, "enroll", "--person", pid, other)
    assert code == 1 and out[0]["person_id"] is None and out[0]["embeddings"] == 0
    (refusal,) = out[0]["refused"]
    assert refusal["path"] == other
    assert f"does not look like Ada ({pid})" in refusal["reason"]
    assert "--force" in refusal["reason"]
    refused_at = similarity_in(refusal["reason"])
    assert refused_at < THRESHOLD
    assert embeddings_of(capsys, pid) == 2
    assert audit_rows(data, "enrol_forced") == []

    code, out = run(capsys, "enroll", "--person", pid, other, "--force")
    assert code == 0 and out[0]["person_id"] == pid and out[0]["embeddings"] == 1
    assert any(other in w and "forced" in w for w in out[0]["warnings"])
    assert embeddings_of(capsys, pid) == 3
    (row,) = audit_rows(data, "enrol_forced")
    assert row.actor == "cli" and row.person_id == pid
    assert row.detail["force"] is True and row.detail["check"] == "identity"
    assert row.detail["photo"] == other and row.detail["threshold"] == THRESHOLD
    assert round(row.detail["similarity"], 2) == refused_at


def test_another_photo_of_the_same_person_is_added_without_force(
    capsys: pytest.CaptureFixture[str], data: Path, deepface: Path
) -> None:
    _, out = run(capsys, "enroll", "Ada", str(deepface / ADA[0]))
    pid = out[0]["person_id"]
    code, out = run(capsys, "enroll", "--person", pid, str(deepface / ADA[2]))
    assert code == 0 and out[0]["embeddings"] == 1
    assert out[0]["refused"] == [] and out[0]["warnings"] == []
    assert audit_rows(data, "enrol_forced") == []


def test_the_same_photo_is_never_stored_twice_even_forced(
    capsys: pytest.CaptureFixture[str], data: Path, deepface: Path, tmp_path: Path
) -> None:
    _, out = run(capsys, "enroll", "Ada", str(deepface / ADA[0]))
    pid = out[0]["person_id"]
    copy = tmp_path / "copy_of_img1.jpg"
    shutil.copy(deepface / ADA[0], copy)
    for extra in ([], ["--force"]):
        code, out = run(capsys, "enroll", "--person", pid, str(copy), *extra)
        assert code == 1 and out[0]["embeddings"] == 0
        reason = out[0]["refused"][0]["reason"]
        assert f"the same photo as one already stored for Ada ({pid})" in reason
        assert similarity_in(reason) >= 0.999
    assert embeddings_of(capsys, pid) == 1

    # Within one call: the first is stored, its copy refused and named.
    shutil.copy(deepface / SOMEONE_ELSE, tmp_path / "b.jpg")
    code, out = run(capsys, "enroll", "Bea", str(deepface / SOMEONE_ELSE), str(tmp_path / "b.jpg"))
    assert code == 1 and out[0]["embeddings"] == 1
    (refusal,) = out[0]["refused"]
    assert refusal["path"] == str(tmp_path / "b.jpg")
    assert f"the same photo as {deepface / SOMEONE_ELSE} in this call" in refusal["reason"]


def test_a_photo_of_two_similar_faces_needs_the_face_named(
    capsys: pytest.CaptureFixture[str], data: Path, deepface: Path
) -> None:
    couple = str(deepface / "couple.jpg")
    code, out = run(capsys, "enroll", "Couple", couple)
    assert code == 1 and out[0]["person_id"] is None
    reason = out[0]["refused"][0]["reason"]
    assert reason.startswith("2 faces of similar size") and "--face N" in reason

    code, out = run(capsys, "enroll", "Right", couple, "--face", "3")
    assert (
        code == 1
        and "there is no face #3: the photo has 2 face(s)" in out[0]["refused"][0]["reason"]
    )
    code, out = run(capsys, "enroll", "Right", couple, str(deepface / ADA[0]), "--face", "2")
    assert code == 2 and "exactly one photo" in out[0]["error"]

    code, out = run(capsys, "enroll", "Right", couple, "--face", "2")
    assert code == 0 and out[0]["embeddings"] == 1 and out[0]["warnings"] == []
    right = out[0]["person_id"]
    code, out = run(capsys, "enroll", "Left", couple, "--face", "1")
    assert code == 0 and out[0]["person_id"] not in (None, right)
    # The two faces are two people: each photo face identifies its own person.
    code, out = run(capsys, "identify", couple)
    assert sorted(f["name"] for f in out[0]["faces"]) == ["Left", "Right"]


# -- the HTTP API ------------------------------------------------------------------------------
@needs_multipart
def test_api_adding_someone_else_is_refused_then_forced_and_audited(
    serve: Serve, deepface: Path
) -> None:
    with serve() as (client, runtime):
        created = enrol(client, "Ada", photo(deepface, ADA[0]), photo(deepface, ADA[1]))
        assert created.status_code == 201, created.text
        pid = created.json()["person_id"]
        url = f"/api/persons/{pid}/photos"

        r = client.post(url, files=[("files", photo(deepface, SOMEONE_ELSE))])
        assert r.status_code == 409
        (refusal,) = r.json()["refused"]
        assert refusal["path"] == SOMEONE_ELSE
        assert f"does not look like Ada ({pid})" in refusal["reason"]
        assert "force=1" in refusal["reason"]
        refused_at = similarity_in(refusal["reason"])
        assert refused_at < THRESHOLD

        r = client.post(url, files=[("files", photo(deepface, ADA[0]))], data={"force": "1"})
        assert r.status_code == 409 and "the same photo" in r.json()["refused"][0]["reason"]

        r = client.post(url, files=[("files", photo(deepface, SOMEONE_ELSE))], data={"force": "1"})
        assert r.status_code == 201 and r.json()["embeddings"] == 1
        assert client.get(f"/api/persons/{pid}").json()["embeddings"] == 3
        assert runtime.store is not None
        (row,) = [e for e in runtime.store.audit(100) if e.action == "enrol_forced"]
        assert row.actor == "api" and row.person_id == pid and row.detail["force"] is True
        assert row.detail["check"] == "identity" and row.detail["photo"] == SOMEONE_ELSE
        assert round(row.detail["similarity"], 2) == refused_at


@needs_multipart
def test_api_a_photo_of_two_similar_faces_needs_the_face_field(
    serve: Serve, deepface: Path
) -> None:
    couple = photo(deepface, "couple.jpg")
    with serve() as (client, _):
        r = enrol(client, "Couple", couple)
        assert r.status_code == 409
        reason = r.json()["refused"][0]["reason"]
        assert reason.startswith("2 faces of similar size") and "face=N" in reason

        for bad in ("0", "x", "-1", "1.5", "²"):
            r = client.post(
                "/api/persons", data={"name": "R", "face": bad}, files=[("files", couple)]
            )
            assert r.status_code == 400 and "`face`" in r.json()["error"], bad
        two = [("files", couple), ("files", photo(deepface, ADA[0]))]
        r = client.post("/api/persons", data={"name": "R", "face": "1"}, files=two)
        assert r.status_code == 400 and "exactly one photo" in r.json()["error"]
        r = client.post("/api/persons", data={"name": "R", "face": "3"}, files=[("files", couple)])
        assert r.status_code == 409 and "no face #3" in r.json()["refused"][0]["reason"]

        r = client.post("/api/persons", data={"name": "R", "face": "2"}, files=[("files", couple)])
        assert r.status_code == 201 and r.json()["embeddings"] == 1
        pid = r.json()["person_id"]
        # Identification still reports every face of the photo.
        r = client.post("/api/identify", files=[("file", couple)])
        faces = r.json()["faces"]
        assert len(faces) == 2
        assert [f["person_id"] for f in faces].count(pid) == 1
