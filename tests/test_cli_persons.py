"""The gallery commands end to end: enroll, identify, persons, export/import, with real models
on real photos and a real data directory."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from facegate.cli import main

# Same person in each tuple (pairs_master.csv: Yes); different persons across tuples.
PERSON_A = ("img1.jpg", "img2.jpg", "img4.jpg")
PERSON_B = ("img20.jpg", "img21.jpg")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[dict]]:  # type: ignore[type-arg]
    code = main([*argv, "--json"])
    out = capsys.readouterr().out
    return code, [json.loads(line) for line in out.splitlines() if line.strip()]


@pytest.fixture
def data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, faceplugin_dir: Path) -> Path:
    for name in list(os.environ):
        if name.startswith("FACEGATE_"):
            monkeypatch.delenv(name)
    d = tmp_path / "data"
    monkeypatch.setenv("FACEGATE_HOME", str(d))
    return d


def photos(deepface: Path, names: tuple[str, ...]) -> list[str]:
    return [str(deepface / n) for n in names]


def test_enroll_identify_list_show_rename_rm(
    capsys: pytest.CaptureFixture[str], data: Path, deepface: Path
) -> None:
    code, out = run(capsys, "enroll", "Ada", *photos(deepface, PERSON_A[:2]))
    assert code == 0
    ada = out[0]
    assert ada["name"] == "Ada" and ada["embeddings"] == 2 and ada["refused"] == []
    pid = ada["person_id"]

    code, out = run(capsys, "identify", str(deepface / PERSON_A[2]), str(deepface / PERSON_B[0]))
    assert code == 0
    assert out[0]["path"] == str(deepface / PERSON_A[2])
    face = out[0]["faces"][0]
    assert face["decision"] == "known" and face["person_id"] == pid and face["name"] == "Ada"
    assert {"bbox", "similarity", "runner_up"} <= face.keys()
    assert out[1]["faces"][0]["decision"] == "unknown"

    code, out = run(capsys, "persons", "list")
    assert code == 0 and len(out) == 1
    assert out[0]["person_id"] == pid and out[0]["embeddings"] == 2
    assert {"name", "poses", "created_at"} <= out[0].keys()
    code, out = run(capsys, "persons", "show", pid)
    assert code == 0 and len(out[0]["embeddings"]) == 2
    assert {"pose", "source", "quality"} <= out[0]["embeddings"][0].keys()
    assert out[0]["embeddings"][0]["source"] == "photo"

    code, out = run(capsys, "persons", "rename", pid, "Ada Lovelace")
    assert code == 0 and out[0]["name"] == "Ada Lovelace"
    code, out = run(capsys, "persons", "rm", pid)
    assert code == 0 and out[0]["deleted"] is True
    code, out = run(capsys, "identify", str(deepface / PERSON_A[2]))
    assert out[0]["faces"][0]["decision"] == "unknown"


@pytest.mark.parametrize("action", [["persons", "show"], ["persons", "rm"], ["persons", "rename"]])
def test_unknown_person_id(
    capsys: pytest.CaptureFixture[str], data: Path, deepface: Path, action: list[str]
) -> None:
    run(capsys, "enroll", "Ada", str(deepface / PERSON_A[0]))
    argv = [*action, "nosuchid"] + (["X"] if action[-1] == "rename" else [])
    code, out = run(capsys, *argv)
    assert code == 2 and "nosuchid" in out[0]["error"]


def test_enroll_refuses_bad_photos_per_photo(
    capsys: pytest.CaptureFixture[str], data: Path, deepface: Path, tmp_path: Path
) -> None:
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((300, 300, 3), 128, np.uint8))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really")
    tiny = tmp_path / "tiny.jpg"
    img = cv2.imread(str(deepface / PERSON_A[1]))
    cv2.imwrite(str(tiny), cv2.resize(img, None, fx=0.08, fy=0.08, interpolation=cv2.INTER_AREA))
    code, out = run(
        capsys,
        "enroll",
        "Ada",
        str(deepface / PERSON_A[0]),
        str(blank),
        str(broken),
        str(tmp_path / "missing.jpg"),
        str(tiny),
    )
    assert code == 1
    res = out[0]
    assert res["embeddings"] == 1 and res["person_id"]
    reasons = {r["path"]: r["reason"] for r in res["refused"]}
    assert reasons[str(blank)] == "no face found"
    assert "not a readable image" in reasons[str(broken)] or "truncated" in reasons[str(broken)]
    assert "no such file" in reasons[str(tmp_path / "missing.jpg")]
    tiny_reason = reasons.get(str(tiny), "")
    assert "too small" in tiny_reason or "no face" in tiny_reason


def test_enroll_refuses_a_duplicate_unless_forced(
    capsys: pytest.CaptureFixture[str], data: Path, deepface: Path
) -> None:
    code, out = run(capsys, "enroll", "Ada", str(deepface / PERSON_A[0]))
    pid = out[0]["person_id"]
    # Adding photos of the same person to her own record is not a duplicate.
    code, out = run(capsys, "enroll", "--person", pid, str(deepface / PERSON_A[2]))
    assert code == 0 and out[0]["person_id"] == pid and out[0]["embeddings"] == 1
    code, out = run(capsys, "enroll", "Someone", str(deepface / PERSON_A[1]))
    assert code == 1 and out[0]["person_id"] is None
    assert "already enrolled" in out[0]["refused"][0]["reason"]
    assert pid in out[0]["refused"][0]["reason"]
    code, out = run(capsys, "enroll", "Someone", str(deepface / PERSON_A[1]), "--force")
    assert code == 0 and out[0]["person_id"] not in (None, pid)
    assert any("forced" in w for w in out[0]["warnings"])
    code, out = run(capsys, "persons", "list")
    assert len(out) == 2


def test_enroll_several_faces_takes_the_main_one_with_a_warning(
    capsys: pytest.CaptureFixture[str], data: Path, deepface: Path
) -> None:
    # img41: the subject in focus, a larger blurred person behind (two faces of similar size
    # side by side are refused instead: tests/test_enrolment_identity.py).
    code, out = run(capsys, "enroll", "Subject", str(deepface / "img41.jpg"))
    assert code == 0 and out[0]["embeddings"] == 1
    (warning,) = out[0]["warnings"]
    assert "2 faces; used face #2 of 2" in warning


def test_enroll_from_csv_many_people_and_bad_rows(
    capsys: pytest.CaptureFixture[str], data: Path, deepface: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in (*PERSON_A[:2], PERSON_B[0]):
        shutil.copy(deepface / name, folder / name)
    table = folder / "people.csv"
    table.write_text(
        f"path,name\n{PERSON_A[0]},Ada\n{PERSON_A[1]},Ada\n{PERSON_B[0]},Bob\n,Nobody\n"
        "nothere.jpg,Carl\n"
    )
    code, out = run(capsys, "enroll", "--from-csv", str(table))
    assert code == 1
    bad_rows = [o for o in out if "line" in o]
    assert [o["line"] for o in bad_rows] == [5]
    people = {o["name"]: o for o in out if "line" not in o}
    assert people["Ada"]["embeddings"] == 2 and people["Bob"]["embeddings"] == 1
    assert people["Carl"]["person_id"] is None
    assert "no such file" in people["Carl"]["refused"][0]["reason"]
    code, out = run(capsys, "persons", "list")
    assert sorted(o["name"] for o in out) == ["Ada", "Bob"]


def test_enroll_from_csv_without_the_columns(
    capsys: pytest.CaptureFixture[str], data: Path, tmp_path: Path
) -> None:
    table = tmp_path / "x.csv"
    table.write_text("file,who\na.jpg,A\n")
    code, out = run(capsys, "enroll", "--from-csv", str(table))
    assert code == 2 and "path,name" in out[0]["error"]


def test_export_import_round_trip_and_refusals(
    capsys: pytest.CaptureFixture[str],
    data: Path,
    deepface: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run(capsys, "enroll", "Ada", *photos(deepface, PERSON_A[:2]))
    run(capsys, "enroll", "Bob", str(deepface / PERSON_B[0]))
    archive = tmp_path / "gallery.fgz"
    code, out = run(capsys, "export", str(archive))
    assert code == 0 and out[0]["persons"] == 2 and out[0]["embeddings"] == 3
    assert (archive.stat().st_mode & 0o777) == 0o600

    other = tmp_path / "other"
    code, out = run(capsys, "import", str(archive), "--data", str(other))
    assert code == 0 and out[0]["persons"] == 2
    code, out = run(capsys, "identify", str(deepface / PERSON_A[2]), "--data", str(other))
    assert out[0]["faces"][0]["name"] == "Ada"
    # Importing again clashes on ids: refused, nothing half-imported.
    code, out = run(capsys, "import", str(archive), "--data", str(other))
    assert code == 2 and "already exist" in out[0]["error"]
    code, out = run(capsys, "persons", "list", "--data", str(other))
    assert len(out) == 2

    # An archive of another embedding model is refused.
    foreign = tmp_path / "foreign.fgz"
    with zipfile.ZipFile(archive) as src, zipfile.ZipFile(foreign, "w") as dst:
        for item in src.namelist():
            data_bytes = src.read(item)
            if item == "manifest.json":
                manifest = json.loads(data_bytes)
                manifest["model_pack"] = "buffalo_l"
                data_bytes = json.dumps(manifest).encode()
            dst.writestr(item, data_bytes)
    code, out = run(capsys, "import", str(foreign), "--data", str(tmp_path / "third"))
    assert code == 2 and "buffalo_l" in out[0]["error"]

    # A damaged archive is refused and imports nothing.
    damaged = tmp_path / "damaged.fgz"
    damaged.write_bytes(archive.read_bytes()[:-200])
    code, out = run(capsys, "import", str(damaged), "--data", str(tmp_path / "fourth"))
    assert code == 2 and "archive" in out[0]["error"]
    code, out = run(capsys, "import", str(tmp_path / "none.fgz"), "--data", str(tmp_path / "f"))
    assert code == 2


def test_reading_commands_work_while_another_process_holds_the_store(
    capsys: pytest.CaptureFixture[str], data: Path, deepface: Path
) -> None:
    run(capsys, "enroll", "Ada", str(deepface / PERSON_A[0]))
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; "
            "from facegate.identity.store import Store; "
            f"s = Store.open(Path({str(data)!r})); print('ready', flush=True); time.sleep(30)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        code, out = run(capsys, "persons", "list")
        assert code == 0 and out[0]["name"] == "Ada"
        code, out = run(capsys, "identify", str(deepface / PERSON_A[1]))
        assert code == 0 and out[0]["faces"][0]["name"] == "Ada"
        code, out = run(capsys, "enroll", "Bob", str(deepface / PERSON_B[0]))
        assert code == 2 and "in use" in out[0]["error"]
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()


def test_identify_without_any_data(
    capsys: pytest.CaptureFixture[str], data: Path, deepface: Path
) -> None:
    code, out = run(capsys, "identify", str(deepface / PERSON_A[0]))
    assert code == 2 and "no facegate data" in out[0]["error"]
