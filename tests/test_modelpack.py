"""Model packs on disk: the real npm fetch of the default pack, its verification and repair,
and the InsightFace packs' checks and (offline) download failure."""

from __future__ import annotations

import io
import os
import shutil
import socket
import stat
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest
from insightface.utils import storage

from facegate.vision.modelpack import (
    FACEPLUGIN_FILES,
    ModelPackError,
    fetch_faceplugin,
    fix_command,
    list_packs,
    pack_status,
    require_pack,
    verify_faceplugin,
)

needs_npm = pytest.mark.skipif(
    shutil.which("npm") is None,
    reason="npm is not on PATH: the default pack is fetched with `npm pack` from the npm registry",
)


def leftovers(root: Path) -> list[str]:
    """Files a fetch or download must never leave behind: tarballs, zips, partial files."""
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.suffix in {".tgz", ".zip", ".part"} or p.name.startswith(".")
    )


@pytest.fixture(scope="session")
def fetched(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("npm") is None:
        pytest.skip("npm is not on PATH: the default pack is fetched with `npm pack`")
    root = tmp_path_factory.mktemp("fetched")
    messages: list[str] = []
    try:
        status = fetch_faceplugin(root, log=messages.append)
    except ModelPackError as exc:
        if "failed with exit code" in str(exc):
            pytest.skip(f"npm could not fetch from the registry: {exc}")
        raise
    assert status.verified, status.problems
    assert any("npm pack" in m for m in messages)
    return root


@pytest.fixture
def pack(fetched: Path, tmp_path: Path) -> Path:
    """A private copy of the fetched default pack, to damage."""
    shutil.copytree(fetched / "faceplugin", tmp_path / "faceplugin")
    return tmp_path


# -- default pack ---------------------------------------------------------------------------
@needs_npm
def test_fetch_installs_the_five_verified_files(fetched: Path) -> None:
    status = verify_faceplugin(fetched)
    assert status.verified and status.problems == []
    assert status.family == "faceplugin" and status.name == "faceplugin"
    assert status.files == sorted(FACEPLUGIN_FILES)
    folder = fetched / "faceplugin"
    assert sorted(p.name for p in folder.iterdir()) == sorted(FACEPLUGIN_FILES)
    for name, (size, _) in FACEPLUGIN_FILES.items():
        st = (folder / name).stat()
        assert st.st_size == size
        assert stat.S_IMODE(st.st_mode) == 0o644
    assert leftovers(fetched) == []
    assert require_pack(fetched, "faceplugin", allow_download=False) == folder


@needs_npm
def test_second_fetch_makes_no_npm_call(pack: Path) -> None:
    messages: list[str] = []
    status = fetch_faceplugin(pack, npm="/nonexistent/npm", log=messages.append)
    assert status.verified
    assert messages == ["faceplugin: all 5 models present and verified"]


@needs_npm
def test_corrupt_file_is_named_and_repaired(pack: Path) -> None:
    target = pack / "faceplugin" / "fr_pose.onnx"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    status = verify_faceplugin(pack)
    assert not status.verified
    assert len(status.problems) == 1
    assert status.problems[0].startswith("fr_pose.onnx has sha256 ")
    assert status.problems[0].endswith(f"expected {FACEPLUGIN_FILES['fr_pose.onnx'][1]}")
    with pytest.raises(ModelPackError) as info:
        require_pack(pack, "faceplugin", allow_download=False)
    assert "fr_pose.onnx" in str(info.value)
    assert "facegate models fetch" in str(info.value)
    untouched = (pack / "faceplugin" / "fr_detect.onnx").stat().st_ino
    messages: list[str] = []
    assert fetch_faceplugin(pack, log=messages.append).verified
    assert any("installed fr_pose.onnx" in m for m in messages)
    assert not any("installed fr_detect.onnx" in m for m in messages)
    assert (pack / "faceplugin" / "fr_detect.onnx").stat().st_ino == untouched
    assert leftovers(pack) == []


@needs_npm
def test_missing_file_is_named_and_repaired(pack: Path) -> None:
    (pack / "faceplugin" / "fr_liveness.onnx").unlink()
    status = verify_faceplugin(pack)
    assert status.problems == ["fr_liveness.onnx is missing"]
    with pytest.raises(ModelPackError, match=r"fr_liveness\.onnx is missing") as info:
        require_pack(pack, "faceplugin", allow_download=True)
    assert "facegate models fetch" in str(info.value)
    assert fetch_faceplugin(pack).verified
    assert leftovers(pack) == []


def test_truncated_file_reports_its_size(tmp_path: Path) -> None:
    folder = tmp_path / "faceplugin"
    folder.mkdir()
    (folder / "fr_detect.onnx").write_bytes(b"x" * 10)
    problems = verify_faceplugin(tmp_path).problems
    assert problems[0] == "fr_detect.onnx has 10 bytes, expected 1217758"
    assert len(problems) == 5


def test_missing_npm_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelPackError) as info:
        fetch_faceplugin(tmp_path, npm="/nonexistent/npm")
    message = str(info.value)
    assert "npm (/nonexistent/npm) not found" in message
    assert "install Node.js" in message
    assert leftovers(tmp_path) == []


def fake_npm(tmp_path: Path, body: str) -> str:
    script = tmp_path / "fake-npm"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(0o755)
    return str(script)


def test_npm_failure_shows_its_stderr(tmp_path: Path) -> None:
    npm = fake_npm(
        tmp_path, 'echo "npm error code E404" >&2\necho "npm error 404 Not Found" >&2\nexit 1\n'
    )
    with pytest.raises(ModelPackError) as info:
        fetch_faceplugin(tmp_path / "models", npm=npm)
    message = str(info.value)
    assert "failed with exit code 1" in message
    assert "npm error code E404 | npm error 404 Not Found" in message
    assert "npm ping" in message


def test_tarball_with_the_wrong_sha256_is_refused(tmp_path: Path) -> None:
    # Writes a junk .tgz into the --pack-destination directory, as a tampered mirror might.
    npm = fake_npm(
        tmp_path,
        'while [ "$#" -gt 0 ]; do\n'
        '  if [ "$1" = "--pack-destination" ]; then echo junk > "$2/pkg-0.0.1.tgz"; fi\n'
        "  shift\ndone\n",
    )
    with pytest.raises(ModelPackError, match="refusing to install"):
        fetch_faceplugin(tmp_path / "models", npm=npm)
    assert list((tmp_path / "models" / "faceplugin").iterdir()) == []


# -- listing and InsightFace packs ----------------------------------------------------------
def test_list_packs_on_an_empty_dir(tmp_path: Path) -> None:
    packs = list_packs(tmp_path)
    assert [p.name for p in packs] == ["faceplugin", "buffalo_l", "buffalo_s", "antelopev2"]
    assert not any(p.verified for p in packs)
    assert [p.family for p in packs] == ["faceplugin"] + ["insightface"] * 3
    assert all(p.problems and p.files == [] for p in packs)
    assert packs[1].problems == [
        f"buffalo_l is not installed: {tmp_path / 'buffalo_l'} does not exist"
    ]
    assert list(tmp_path.iterdir()) == []  # looking creates nothing


def test_unknown_pack_name(tmp_path: Path) -> None:
    with pytest.raises(ModelPackError, match="unknown model pack 'buffalo_xl'"):
        pack_status(tmp_path, "buffalo_xl")


def test_fix_command_names_a_non_default_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    default = tmp_path / "cache" / "facegate" / "models"
    assert fix_command(default, "faceplugin") == "facegate models fetch"
    assert fix_command(default, "buffalo_s") == "facegate models fetch --pack buffalo_s"
    other = tmp_path / "my models"
    assert fix_command(other, "buffalo_s") == (
        f"FACEGATE_MODELS__DIR='{other}' facegate models fetch --pack buffalo_s"
    )


def touch_models(folder: Path, *names: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"onnx")


def test_insightface_pack_flat_and_nested(tmp_path: Path) -> None:
    touch_models(tmp_path / "buffalo_l", "det_10g.onnx", "w600k_r50.onnx", "1k3d68.onnx")
    touch_models(tmp_path / "antelopev2" / "antelopev2", "scrfd_10g_bnkps.onnx", "glintr100.onnx")
    flat = pack_status(tmp_path, "buffalo_l")
    assert flat.verified and flat.model_dir == str(tmp_path / "buffalo_l")
    assert flat.files == ["1k3d68.onnx", "det_10g.onnx", "w600k_r50.onnx"]
    nested = pack_status(tmp_path, "antelopev2")
    assert nested.verified
    assert nested.files == ["antelopev2/glintr100.onnx", "antelopev2/scrfd_10g_bnkps.onnx"]
    assert require_pack(tmp_path, "antelopev2", allow_download=False) == (
        tmp_path / "antelopev2" / "antelopev2"
    )
    assert require_pack(tmp_path, "buffalo_l", allow_download=False) == tmp_path / "buffalo_l"


def test_incomplete_insightface_pack_names_the_missing_model(tmp_path: Path) -> None:
    touch_models(tmp_path / "buffalo_s", "det_500m.onnx")
    (tmp_path / "buffalo_s" / "empty.onnx").write_bytes(b"")
    status = pack_status(tmp_path, "buffalo_s")
    assert not status.verified
    assert status.problems == [
        f"buffalo_s: w600k_mbf.onnx (recognition model) is missing from {tmp_path / 'buffalo_s'}"
    ]
    with pytest.raises(ModelPackError, match="incomplete") as info:
        require_pack(tmp_path, "buffalo_s", allow_download=True)
    assert "w600k_mbf.onnx" in str(info.value)
    assert sorted(p.name for p in (tmp_path / "buffalo_s").iterdir()) == [
        "det_500m.onnx",
        "empty.onnx",
    ]


def test_missing_insightface_pack_without_download(tmp_path: Path) -> None:
    with pytest.raises(ModelPackError) as info:
        require_pack(tmp_path, "buffalo_l", allow_download=False)
    message = str(info.value)
    assert "buffalo_l is not installed" in message
    assert "downloads are off" in message
    assert "facegate models fetch --pack buffalo_l" in message
    assert f"{tmp_path / 'buffalo_l'}/" in message
    assert f"FACEGATE_MODELS__DIR={tmp_path}" in message
    assert list(tmp_path.iterdir()) == []


def github_reachable() -> bool:
    try:
        socket.getaddrinfo("github.com", 443)
    except OSError:
        return False
    return True


@pytest.mark.skipif(
    github_reachable(),
    reason="github.com resolves here: this test is for offline machines (online it would"
    " download a 300 MB pack)",
)
def test_download_on_an_offline_machine_fails_cleanly(tmp_path: Path) -> None:
    models = tmp_path / "models"
    start = time.monotonic()
    with pytest.raises(ModelPackError) as info:
        require_pack(models, "buffalo_l", allow_download=True)
    assert time.monotonic() - start < 120
    message = str(info.value)
    assert "could not download InsightFace pack buffalo_l" in message
    assert "Traceback" not in message and "\n" not in message
    assert f"{models / 'buffalo_l'}/" in message
    assert "facegate models fetch --pack buffalo_l" in message
    assert list(models.iterdir()) == []  # no pack dir, no zip, no staging dir


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def serve(monkeypatch: pytest.MonkeyPatch, payload: bytes, seen: list[str]) -> None:
    """insightface's own downloader, with the network scripted: it 'downloads' payload."""

    def download_file(url: str, path: str, overwrite: bool = False, **_: Any) -> str:
        seen.append(url)
        Path(path).write_bytes(payload)
        return path

    monkeypatch.setattr(storage, "download_file", download_file)


def test_download_installs_a_nested_zip_atomically(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[str] = []
    payload = zip_bytes(
        {
            "antelopev2/scrfd_10g_bnkps.onnx": b"det",
            "antelopev2/glintr100.onnx": b"rec",
            "antelopev2/1k3d68.onnx": b"lmk",
        }
    )
    serve(monkeypatch, payload, seen)
    messages: list[str] = []
    got = require_pack(tmp_path, "antelopev2", allow_download=True, log=messages.append)
    assert seen == [
        "https://github.com/deepinsight/insightface/releases/download/model-zoo/antelopev2.zip"
    ]
    assert got == tmp_path / "antelopev2" / "antelopev2"
    assert sorted(os.listdir(got)) == ["1k3d68.onnx", "glintr100.onnx", "scrfd_10g_bnkps.onnx"]
    assert os.listdir(tmp_path) == ["antelopev2"]
    assert leftovers(tmp_path) == []
    assert any("installed" in m for m in messages)


@pytest.mark.parametrize(
    "payload",
    [b"PK\x03\x04 truncated", zip_bytes({"buffalo_l/readme.txt": b"no models here"})],
    ids=["broken-zip", "zip-without-models"],
)
def test_bad_download_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, payload: bytes
) -> None:
    serve(monkeypatch, payload, [])
    (tmp_path / "buffalo_l").mkdir()  # an empty dir (e.g. from an old attempt) counts as missing
    with pytest.raises(ModelPackError, match="could not download InsightFace pack buffalo_l"):
        require_pack(tmp_path, "buffalo_l", allow_download=True)
    assert os.listdir(tmp_path) == ["buffalo_l"]
    assert list((tmp_path / "buffalo_l").iterdir()) == []
    assert not pack_status(tmp_path, "buffalo_l").verified


def test_the_liveness_challenge_asks_for_the_default_pack_beside_another(tmp_path: Path) -> None:
    from facegate.settings import LivenessSettings, ModelSettings, Settings
    from facegate.vision.analyzers import liveness_pack

    def settings(challenge: str) -> Settings:
        return Settings(
            models=ModelSettings(pack="buffalo_l", dir=str(tmp_path), allow_download=False),
            liveness=LivenessSettings(challenge=challenge),  # type: ignore[arg-type]
        )

    assert liveness_pack(settings("off")) is None  # nothing needed, nothing checked
    with pytest.raises(ModelPackError) as info:
        liveness_pack(settings("known"))
    message = str(info.value)
    assert "[liveness] challenge = 'known'" in message and "buffalo_l" in message
    assert "facegate models fetch" in message  # how to get it
