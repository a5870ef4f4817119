"""The `facegate` command line: outputs, exit codes and every error path."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from facegate.cli import main

BLANK = np.full((240, 320, 3), 128, np.uint8)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[dict], str]:  # type: ignore[type-arg]
    code = main(list(argv))
    out = capsys.readouterr()
    lines = [json.loads(line) for line in out.out.splitlines() if line.strip()]
    return code, lines, out.err


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A clean environment: no FACEGATE_* from the caller; data dir in tmp."""
    for name in list(os.environ):
        if name.startswith("FACEGATE_"):
            monkeypatch.delenv(name)
    data = tmp_path / "data"
    monkeypatch.setenv("FACEGATE_HOME", str(data))
    return data


@pytest.fixture
def images(tmp_path: Path, deepface: Path) -> dict[str, Path]:
    folder = tmp_path / "imgs"
    folder.mkdir()
    good = folder / "good.jpg"
    shutil.copy(deepface / "img1.jpg", good)
    corrupt = folder / "corrupt.jpg"
    corrupt.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    noise = folder / "noise.png"
    noise.write_bytes(os.urandom(2048))
    blank = folder / "blank.png"
    cv2.imwrite(str(blank), BLANK)
    return {"good": good, "corrupt": corrupt, "noise": noise, "blank": blank, "dir": folder}


def test_analyze_reports_each_file_and_keeps_going(
    capsys: pytest.CaptureFixture[str], env: Path, images: dict[str, Path], faceplugin_dir: Path
) -> None:
    missing = str(images["dir"] / "nope.jpg")
    # The path is echoed exactly as given, however it is spelled.
    odd = str(images["dir"]) + "/../imgs/good.jpg"
    code, lines, _ = run(
        capsys,
        "analyze",
        odd,
        missing,
        str(images["corrupt"]),
        str(images["noise"]),
        str(images["dir"]),
        str(images["blank"]),
        "--json",
    )
    assert code == 1
    assert [line["path"] for line in lines] == [
        odd,
        missing,
        str(images["corrupt"]),
        str(images["noise"]),
        str(images["dir"]),
        str(images["blank"]),
    ]
    good, nofile, corrupt, noise, directory, blank = lines
    assert good["error"] is None and len(good["faces"]) == 1
    face = good["faces"][0]
    assert {"bbox", "det_score", "yaw", "pitch", "roll", "quality"} <= face.keys()
    assert "embedding" not in face
    assert {"face_px", "sharpness", "brightness"} <= face["quality"].keys()
    assert "no such file" in nofile["error"]
    assert "truncated" in corrupt["error"] or "corrupt" in corrupt["error"]
    assert "not a readable image" in noise["error"]
    assert "directory" in directory["error"]
    assert blank["error"] is None and blank["faces"] == []


def test_analyze_embeddings_flag_adds_unit_vectors(
    capsys: pytest.CaptureFixture[str], env: Path, images: dict[str, Path], faceplugin_dir: Path
) -> None:
    code, lines, _ = run(capsys, "--json", "analyze", "--embeddings", str(images["good"]))
    assert code == 0
    emb = np.array(lines[0]["faces"][0]["embedding"])
    assert emb.shape == (512,) and abs(np.linalg.norm(emb) - 1) < 1e-4


def test_compare_same_and_different(
    capsys: pytest.CaptureFixture[str], env: Path, deepface: Path, faceplugin_dir: Path
) -> None:
    code, lines, _ = run(
        capsys, "compare", str(deepface / "img1.jpg"), str(deepface / "img2.jpg"), "--json"
    )
    assert code == 0 and lines[0]["same_person"] is True
    assert lines[0]["similarity"] >= lines[0]["threshold"]
    assert lines[0]["path_a"] == str(deepface / "img1.jpg")
    code, lines, _ = run(
        capsys, "compare", str(deepface / "img1.jpg"), str(deepface / "img20.jpg"), "--json"
    )
    assert code == 0 and lines[0]["same_person"] is False


def test_compare_errors(
    capsys: pytest.CaptureFixture[str], env: Path, images: dict[str, Path], faceplugin_dir: Path
) -> None:
    code, lines, _ = run(capsys, "compare", str(images["good"]), str(images["blank"]), "--json")
    assert code == 1 and "no face found in" in lines[0]["error"]
    assert str(images["blank"]) in lines[0]["error"]
    code, lines, _ = run(capsys, "compare", str(images["good"]), "/no/such.jpg", "--json")
    assert code == 1 and "no such file" in lines[0]["error"]


def test_verify_pairs_on_deepface(
    capsys: pytest.CaptureFixture[str], env: Path, deepface: Path, faceplugin_dir: Path
) -> None:
    pairs = str(deepface / "pairs_master.csv")
    code, lines, _ = run(capsys, "verify-pairs", pairs, "--root", str(deepface), "--json")
    assert code == 0
    rep = lines[-1]
    assert rep["path"] == pairs and rep["pairs"] == 300 and rep["no_face"] == 0
    for key in (
        "accuracy",
        "threshold",
        "auc",
        "tar_at_far_1e-2",
        "tar_at_far_1e-3",
        "recommended_threshold",
    ):
        assert key in rep
    assert rep["accuracy"] >= 0.98 and rep["auc"] >= 0.99


def test_verify_pairs_reports_bad_images_and_still_scores(
    capsys: pytest.CaptureFixture[str],
    env: Path,
    images: dict[str, Path],
    tmp_path: Path,
    faceplugin_dir: Path,
) -> None:
    csv = tmp_path / "pairs.csv"
    csv.write_text(
        "file_x,file_y,decision\ngood.jpg,good.jpg,yes\ngood.jpg,corrupt.jpg,no\n"
        "good.jpg,blank.png,no\n"
    )
    code, lines, _ = run(capsys, "verify-pairs", str(csv), "--root", str(images["dir"]), "--json")
    assert code == 1
    errors = [line for line in lines if "error" in line]
    assert [e["path"] for e in errors] == ["corrupt.jpg"]
    rep = lines[-1]
    # The corrupt file is an error, the blank image has no face: both left out of the scores.
    assert rep["pairs"] == 3 and rep["errors"] == 1 and rep["no_face"] == 1
    assert rep["accuracy"] == 1.0


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read"),
        ("a,b,c\n1,2,3\n", "missing column"),
        ("file_x,file_y,decision\na.jpg,b.jpg,maybe\n", ":2: decision 'maybe'"),
    ],
)
def test_verify_pairs_bad_pairs_file_cannot_run(
    capsys: pytest.CaptureFixture[str],
    env: Path,
    tmp_path: Path,
    content: str | None,
    message: str,
) -> None:
    csv = tmp_path / "pairs.csv"
    if content is not None:
        csv.write_text(content)
    code, lines, err = run(capsys, "verify-pairs", str(csv), "--root", str(tmp_path), "--json")
    assert code == 2
    assert message in lines[0]["error"] and message in err


def test_bad_setting_stops_with_the_key_path(
    capsys: pytest.CaptureFixture[str], env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = tmp_path / "s.toml"
    settings.write_text("[recognition]\nthreshold = 1.5\n")
    code, _, err = run(capsys, "models", "list", "--settings", str(settings))
    assert code == 2 and "recognition.threshold" in err
    monkeypatch.setenv("FACEGATE_DETECTION_MIN_SCOR", "0.5")
    code, lines, err = run(capsys, "models", "list", "--json")
    assert code == 2 and "FACEGATE_DETECTION_MIN_SCOR" in lines[0]["error"]


def test_data_dir_settings_file_is_used_and_data_flag_works_everywhere(
    capsys: pytest.CaptureFixture[str], env: Path, tmp_path: Path
) -> None:
    data = tmp_path / "elsewhere"
    data.mkdir()
    (data / "settings.toml").write_text(f'[models]\ndir = "{tmp_path / "nomodels"}"\n')
    for argv in (
        ["--data", str(data), "models", "list", "--json"],
        ["models", "list", "--json", "--data", str(data)],
        ["models", "--data", str(data), "list", "--json"],
    ):
        code, lines, _ = run(capsys, *argv)
        assert code == 0
        assert all(line["path"].startswith(str(tmp_path / "nomodels")) for line in lines)


def test_missing_model_pack_names_the_fix(
    capsys: pytest.CaptureFixture[str],
    env: Path,
    tmp_path: Path,
    images: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FACEGATE_MODELS_DIR", str(tmp_path / "empty"))
    code, lines, err = run(capsys, "analyze", str(images["good"]), "--json")
    assert code == 2
    assert "fr_" in lines[0]["error"] and "facegate models fetch" in lines[0]["error"]
    assert "Traceback" not in err


def test_models_list_json(
    capsys: pytest.CaptureFixture[str], env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FACEGATE_MODELS_DIR", str(tmp_path / "m"))
    code, lines, _ = run(capsys, "models", "list", "--json")
    assert code == 0
    assert [line["name"] for line in lines] == [
        "faceplugin",
        "buffalo_l",
        "buffalo_s",
        "antelopev2",
    ]
    assert all(line["verified"] is False for line in lines)
    assert [line["selected"] for line in lines] == [True, False, False, False]


def test_console_script_is_installed(faceplugin_dir: Path, deepface: Path) -> None:
    exe = Path(sys.executable).parent / "facegate"
    assert exe.exists(), "the console script `facegate` is not installed in the venv"
    out = subprocess.run(
        [str(exe), "analyze", str(deepface / "img1.jpg"), "--json"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.splitlines()[0])["faces"]


def test_usage_error_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["analyze"])
    assert exc.value.code == 2


def test_schema_command_prints_what_the_server_serves(
    capsys: pytest.CaptureFixture[str], env: Path
) -> None:
    """`facegate schema` is the same document as `GET /api/schema`: events, tracks, replies."""
    from facegate.server.protocol import wire_schema

    code, lines, _ = run(capsys, "schema", "--json")
    assert code == 0 and lines == [json.loads(json.dumps(wire_schema()))]
    names = {v["properties"]["type"]["const"] for v in lines[0]["oneOf"]}
    assert {"person_recognized", "tracks", "connected", "decision_result", "pong", "error"} <= names
