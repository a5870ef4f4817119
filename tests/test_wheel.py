"""The wheel is complete (issue 16): built from the working tree, installed into a fresh venv
outside the repository, it runs `facegate models list` and `facegate serve` from another folder
and serves the panel, its scripts and styles, `/healthz` and `/api/schema` from the package.

The wheel is built from a copy of the files the build reads (pyproject.toml, README.md, src/,
static/), not in place: an in-tree setuptools build writes build/ into the checkout and packs
whatever a previous build left in build/lib, which would hide a file the wheel really lacks.
The venv gets the wheel and its runtime dependencies from the package index, as `pipx install`
does (about 40 s here, pip's cache warm); nothing of the checkout or the dev venv is on its path.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx2 as httpx
import pytest

from ports import free_port

REPO = Path(__file__).resolve().parents[1]
PANEL = REPO / "static"
VIDEO = "intel_face-demographics-walking-and-pause.mp4"
# The inputs of the build: the package's code and panel, its metadata and any licence file.
BUILD_DIRS = ("src", "static")
JUNK = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", ".*")


@dataclass(frozen=True)
class Wheel:
    path: Path
    names: list[str]  # its members
    scratch: Path  # a temp dir outside the repository


@dataclass(frozen=True)
class Installed:
    wheel: Wheel
    venv: Path
    elsewhere: Path  # the working directory the commands run in
    env: dict[str, str]
    logs: Path

    @property
    def facegate(self) -> str:
        return str(self.venv / "bin" / "facegate")


def run(
    cmd: list[str], *, timeout: float, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, check=False, cwd=cwd, env=env
    )
    assert done.returncode == 0, f"{cmd} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


def build_wheel(out: Path, scratch: Path) -> Path:
    """`pip wheel --no-deps` of a copy of the working tree's packaging inputs."""
    tree = scratch / "facegate-src"
    tree.mkdir()
    for item in REPO.iterdir():
        if item.is_file() and not item.name.startswith("."):
            shutil.copy2(item, tree / item.name)
    for name in BUILD_DIRS:
        shutil.copytree(REPO / name, tree / name, ignore=JUNK)
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out)]
    run([*pip_wheel, str(tree)], timeout=180)
    (wheel,) = out.glob("facegate-*.whl")
    return wheel


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Wheel:
    root = tmp_path_factory.mktemp("wheel")
    assert not root.resolve().is_relative_to(REPO), f"{root} is inside the repository"
    path = build_wheel(root / "dist", root)
    with zipfile.ZipFile(path) as zf:
        return Wheel(path, zf.namelist(), root)


@pytest.fixture(scope="module")
def installed(wheel: Wheel, shared_data: Path, faceplugin_dir: Path) -> Iterator[Installed]:
    root = wheel.scratch
    venv = root / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], timeout=60)
    # The dev venv's pip installs into the new venv (--python): the wheel and, from the index,
    # its runtime dependencies.
    pip = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python")]
    run([*pip, "install", "-q", str(wheel.path)], timeout=300)
    elsewhere = root / "elsewhere"
    elsewhere.mkdir()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("FACEGATE_") and k not in {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"}
    }
    env["FACEGATE_HOME"] = str(root / "home")
    env["FACEGATE_MODELS__DIR"] = str(faceplugin_dir.parent)
    try:
        yield Installed(wheel, venv, elsewhere, env, root)
    finally:
        # About 900 MB (onnxruntime, OpenCV, SciPy...): not kept with pytest's last temp dirs.
        shutil.rmtree(venv, ignore_errors=True)


# -- the wheel's contents ----------------------------------------------------------------------
def test_the_wheel_holds_the_code_and_the_panel_and_nothing_else(wheel: Wheel) -> None:
    names = set(wheel.names)
    assert "facegate/static/index.html" in names
    panel = sorted(p.relative_to(PANEL).as_posix() for p in PANEL.rglob("*") if p.is_file())
    assert any(p.endswith(".js") for p in panel) and any(p.endswith(".css") for p in panel)
    missing = [p for p in panel if f"facegate/static/{p}" not in names]
    assert not missing, f"panel files not in the wheel: {missing}"
    # The packages are listed in pyproject.toml: a new module or sub-package must be in it.
    code = REPO / "src" / "facegate"
    modules = sorted(p.relative_to(code).as_posix() for p in code.rglob("*.py"))
    missing = [m for m in modules if f"facegate/{m}" not in names]
    assert not missing, f"modules not in the wheel (add the sub-package to pyproject): {missing}"
    assert "facegate/py.typed" in names
    # Only the package and its metadata: no model, no tests, no checkout files.
    (record,) = [n for n in names if n.endswith(".dist-info/RECORD")]
    dist_info = record.removesuffix("RECORD")
    strays = [n for n in names if not n.startswith(("facegate/", dist_info))]
    assert not strays, f"files outside the package: {strays}"
    assert not [n for n in names if n.endswith(".onnx")]
    assert not [n for n in names if re.search(r"(^|/)(tests?|conftest)(/|\.py$)|/test_", n)]
    with zipfile.ZipFile(wheel.path) as zf:
        entry_points = zf.read(f"{dist_info}entry_points.txt").decode()
    assert re.search(r"^facegate = facegate\.cli:main$", entry_points, re.MULTILINE)


# -- the installed package ---------------------------------------------------------------------
@pytest.mark.shared_data
@pytest.mark.models
def test_the_venv_runs_the_wheels_code_and_panel(installed: Installed) -> None:
    probe = (
        "import json, facegate, facegate.server.panel as p;"
        "print(json.dumps([facegate.__file__, str(p.static_dir()), str(p.editable_project())]))"
    )
    out = run(
        [str(installed.venv / "bin" / "python"), "-c", probe],
        timeout=60,
        cwd=installed.elsewhere,
        env=installed.env,
    )
    package, static, editable = json.loads(out.stdout)
    site = installed.venv / "lib"
    assert Path(package).is_relative_to(site), f"facegate imported from {package}, not the venv"
    assert Path(static).is_relative_to(site) and Path(static).name == "static"
    assert (Path(static) / "index.html").read_bytes() == (PANEL / "index.html").read_bytes()
    assert editable == "None"


@pytest.mark.shared_data
@pytest.mark.models
def test_models_list_from_the_installed_cli(installed: Installed) -> None:
    out = run(
        [installed.facegate, "models", "list", "--json"],
        timeout=60,
        cwd=installed.elsewhere,
        env=installed.env,
    )
    packs = {row["name"]: row for row in map(json.loads, out.stdout.splitlines())}
    assert packs["faceplugin"]["verified"] is True, packs["faceplugin"]
    assert Path(packs["faceplugin"]["path"]).parent == Path(installed.env["FACEGATE_MODELS__DIR"])


def panel_references(index: str) -> list[str]:
    """The scripts and stylesheets index.html loads (local ones)."""
    found = re.findall(r"<script\b[^>]*\bsrc=\"([^\"]+)\"", index)
    found += re.findall(r"<link\b[^>]*\brel=\"stylesheet\"[^>]*\bhref=\"([^\"]+)\"", index)
    return [ref for ref in found if "://" not in ref and not ref.startswith("data:")]


def venv_files(venv: Path) -> set[str]:
    """Every file of the venv but Python's bytecode caches."""
    return {
        p.relative_to(venv).as_posix()
        for p in venv.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }


def module_imports(script: str) -> list[str]:
    """The relative ES-module imports of a script (`import ... from "./x.js"`)."""
    return re.findall(r"""\bfrom\s+["'](\./[^"']+)["']""", script)


@pytest.mark.shared_data
@pytest.mark.models
def test_serve_from_the_installed_cli(installed: Installed, shared_data: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = installed.logs / "serve.log"
    venv_before = venv_files(installed.venv)
    cmd = [installed.facegate, "serve", "--source", str(shared_data / "video" / VIDEO)]
    cmd += ["--loop", "--port", str(port)]
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            cmd, cwd=installed.elsewhere, env=installed.env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 40
        with httpx.Client(base_url=base, timeout=5) as client:
            while True:
                assert proc.poll() is None, f"facegate serve exited: {log_path.read_text()}"
                assert time.monotonic() < deadline, f"not up in 40 s: {log_path.read_text()}"
                with contextlib.suppress(httpx.HTTPError):
                    if client.get("/", headers={"accept": "application/json"}).status_code == 200:
                        break
                time.sleep(0.2)

            r = client.get("/", headers={"accept": "application/json"})
            assert r.json()["server"] == "facegate"
            r = client.get("/", headers={"accept": "text/html"})
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
            assert r.content == (PANEL / "index.html").read_bytes()
            refs = panel_references(r.text)
            assert any(ref.endswith(".js") for ref in refs), refs
            assert any(ref.endswith(".css") for ref in refs), refs

            # Every script and stylesheet the page loads, and the modules those scripts import.
            pending, served = list(refs), set()
            while pending:
                ref = pending.pop().removeprefix("./").lstrip("/")
                if ref in served:
                    continue
                r = client.get(f"/{ref}")
                assert r.status_code == 200, f"/{ref}: {r.status_code}"
                assert r.content == (PANEL / ref).read_bytes(), f"/{ref} is not static/{ref}"
                kind = "javascript" if ref.endswith(".js") else "css"
                assert kind in r.headers["content-type"], (ref, r.headers["content-type"])
                served.add(ref)
                if ref.endswith(".js"):
                    pending += module_imports(r.text)
            # And the rest of static/: the panel's files are the package's, byte for byte.
            for path in sorted(p for p in PANEL.rglob("*") if p.is_file()):
                ref = path.relative_to(PANEL).as_posix()
                if ref not in served:
                    r = client.get(f"/{ref}")
                    assert r.status_code == 200 and r.content == path.read_bytes(), ref

            r = client.get("/healthz")
            assert r.status_code == 200, f"/healthz: {r.status_code} {r.text[:200]}"
            r = client.get("/api/schema")
            assert r.status_code == 200
            schema = r.json()
            assert schema["title"] == "facegate server messages"
            assert schema["oneOf"] and schema["$defs"]

        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=15)
        assert code == 0, f"facegate serve exited {code} on SIGTERM: {log_path.read_text()}"
        # State lives in the data dir (FACEGATE_HOME, else XDG), never in the venv (pipx's).
        assert venv_files(installed.venv) == venv_before
        home = Path(installed.env["FACEGATE_HOME"])
        assert (home / "facegate.db").is_file(), list(home.rglob("*"))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
