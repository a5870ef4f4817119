"""Model packs on disk: where they live, whether they are intact, and how to fetch them.

Layout, under the models dir (`facegate.settings.models_dir`):
- `faceplugin/fr_*.onnx`: the default pack, five ONNX files taken from the npm package
  `faceplugin-face-recognition-js@0.0.1` (see `../shared/docs/model-pack-faceplugin.md`), each
  pinned by size and sha256, and the tarball itself pinned by sha256.
- `buffalo_l/`, `buffalo_s/`, `antelopev2/`: InsightFace packs, the `.onnx` files of the
  pack's zip directly in that folder or one level down (antelopev2's zip historically extracts
  into `antelopev2/antelopev2/`).

Every failure is a `ModelPackError` whose message names the bad file or pack and the command
that fixes it. Nothing here prints; progress goes to an optional `log` callback.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Literal, get_args

import msgspec
from insightface.utils import storage

from facegate import settings as _settings
from facegate.settings import PackName, Settings

Log = Callable[[str], None]

NPM_SPEC = "faceplugin-face-recognition-js@0.0.1"
NPM_TARBALL_SHA256 = "7ea06031d9a3f83753254fcff60506a07b81b46fc84d4ee024cd041f260ec1ba"
NPM_TIMEOUT_S = 600.0

FACEPLUGIN = "faceplugin"
# file -> (bytes, sha256), from ../shared/docs/model-pack-faceplugin.md
FACEPLUGIN_FILES: dict[str, tuple[int, str]] = {
    "fr_detect.onnx": (1217758, "6c0256ccd3164f844736a401faf936ec2930764a87ae39442180887d0c5c8854"),
    "fr_landmark.onnx": (
        1163742,
        "f10b0ba1d2a8a099adefede1ebf3733e44fe370715e7303dbeb7f59c02142258",
    ),
    "fr_feature.onnx": (
        4884269,
        "87aacdfe57510db2af90c0251df680e8eec88f122ee94712121d09bcaaaf3581",
    ),
    "fr_pose.onnx": (5811723, "72d032ec941b7153bf8d3f2c03a4c165453cc7e63d479041ec7c6ef087e5839d"),
    "fr_liveness.onnx": (
        1886811,
        "afa783b7e902fdfcf323a7240cac2a1c580c25314ea4161129dc1b0d100dc32d",
    ),
}

# The detection and recognition models each InsightFace pack must hold (its zip also has
# 1k3d68.onnx, 2d106det.onnx and genderage.onnx, which are optional here).
INSIGHTFACE_PACKS: dict[str, tuple[str, str]] = {
    "buffalo_l": ("det_10g.onnx", "w600k_r50.onnx"),
    "buffalo_s": ("det_500m.onnx", "w600k_mbf.onnx"),
    "antelopev2": ("scrfd_10g_bnkps.onnx", "glintr100.onnx"),
}
PACK_NAMES: tuple[str, ...] = get_args(PackName)

Family = Literal["faceplugin", "insightface"]


class ModelPackError(Exception):
    """A model pack that is missing, damaged or cannot be fetched; the message says the fix."""


class PackStatus(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    family: Family
    path: str  # <models dir>/<name>
    verified: bool
    problems: list[str]  # one line per bad file, empty when verified
    files: list[str]  # .onnx files found, relative to `path`
    model_dir: str = ""  # the folder holding the .onnx files ("" when there is none)


# -- commands and messages ------------------------------------------------------------------
def fix_command(models_dir: Path, name: str) -> str:
    """The shell command that fetches pack `name` into `models_dir` (naming a non-default dir)."""
    command = "facegate models fetch" + ("" if name == FACEPLUGIN else f" --pack {name}")
    if _is_default_dir(models_dir):
        return command
    return f"FACEGATE_MODELS__DIR={shlex.quote(str(models_dir))} {command}"


def _is_default_dir(models_dir: Path) -> bool:
    default = _settings.models_dir(Settings())
    return models_dir.expanduser().resolve() == default.expanduser().resolve()


def _where_hint(models_dir: Path) -> str:
    if _is_default_dir(models_dir):
        return ""
    return (
        f" ({models_dir} is not the default models dir: point facegate at it with"
        f" FACEGATE_MODELS__DIR={shlex.quote(str(models_dir))} or `dir` under [models] in"
        " settings.toml)"
    )


def _one_line(exc: BaseException) -> str:
    text = str(getattr(exc, "reason", None) or exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


# -- hashing and status ---------------------------------------------------------------------
def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _faceplugin_problems(folder: Path) -> list[tuple[str, str]]:
    """(file, problem) for every default-pack file that is missing or differs from the table."""
    bad: list[tuple[str, str]] = []
    for fname, (size, sha) in FACEPLUGIN_FILES.items():
        path = folder / fname
        if not path.is_file():
            bad.append((fname, f"{fname} is missing"))
        elif (actual_size := path.stat().st_size) != size:
            bad.append((fname, f"{fname} has {actual_size} bytes, expected {size}"))
        elif (actual := sha256_file(path)) != sha:
            bad.append((fname, f"{fname} has sha256 {actual}, expected {sha}"))
    return bad


def verify_faceplugin(models_dir: Path) -> PackStatus:
    """Size and streamed sha256 of each of the five default-pack files (nothing is cached)."""
    folder = models_dir / FACEPLUGIN
    bad = _faceplugin_problems(folder)
    files = sorted(p.name for p in folder.glob("*.onnx")) if folder.is_dir() else []
    return PackStatus(
        name=FACEPLUGIN,
        family="faceplugin",
        path=str(folder),
        verified=not bad,
        problems=[problem for _, problem in bad],
        files=files,
        model_dir=str(folder) if folder.is_dir() else "",
    )


def onnx_folder(pack_dir: Path, name: str) -> Path | None:
    """The folder holding the pack's .onnx files: the pack dir itself or one level down."""
    if not pack_dir.is_dir():
        return None
    if any(pack_dir.glob("*.onnx")):
        return pack_dir
    nested = sorted(d for d in pack_dir.iterdir() if d.is_dir() and any(d.glob("*.onnx")))
    named = [d for d in nested if d.name == name]
    if named:
        return named[0]
    return nested[0] if len(nested) == 1 else None


def _insightface_status(pack_dir: Path, name: str) -> PackStatus:
    """InsightFace publishes no checksums we can pin, so "verified" only means that the pack
    dir holds the pack's detection and recognition models as non-empty files."""
    detector, recognizer = INSIGHTFACE_PACKS[name]
    folder = onnx_folder(pack_dir, name)
    problems: list[str] = []
    files: list[str] = []
    if not pack_dir.is_dir():
        problems.append(f"{name} is not installed: {pack_dir} does not exist")
    elif folder is None:
        problems.append(f"{name}: no .onnx files in {pack_dir} or one folder below it")
    else:
        files = sorted(str(p.relative_to(pack_dir)) for p in folder.glob("*.onnx"))
        for fname, role in ((detector, "detection"), (recognizer, "recognition")):
            path = folder / fname
            if not path.is_file():
                problems.append(f"{name}: {fname} ({role} model) is missing from {folder}")
            elif path.stat().st_size == 0:
                problems.append(f"{name}: {fname} ({role} model) in {folder} is empty")
    return PackStatus(
        name=name,
        family="insightface",
        path=str(pack_dir),
        verified=not problems,
        problems=problems,
        files=files,
        model_dir=str(folder) if folder is not None else "",
    )


def _check_name(name: str) -> None:
    if name not in PACK_NAMES:
        raise ModelPackError(f"unknown model pack {name!r}; known packs: {', '.join(PACK_NAMES)}")


def pack_status(models_dir: Path, name: str) -> PackStatus:
    _check_name(name)
    if name == FACEPLUGIN:
        return verify_faceplugin(models_dir)
    return _insightface_status(models_dir / name, name)


def list_packs(models_dir: Path) -> list[PackStatus]:
    return [pack_status(models_dir, name) for name in PACK_NAMES]


# -- the default pack: npm --------------------------------------------------------------------
def fetch_faceplugin(models_dir: Path, *, npm: str = "npm", log: Log | None = None) -> PackStatus:
    """Install the five default-pack files from the npm registry, unless all already verify.

    `npm pack` downloads the tarball into a temporary folder (removed afterwards); its sha256
    is checked, only the needed `package/model/fr_*.onnx` members are extracted (tarfile's
    "data" filter), and each file replaces its target atomically once its sha256 matches.
    """
    say: Log = log or (lambda _msg: None)
    bad = _faceplugin_problems(models_dir / FACEPLUGIN)
    if not bad:
        say(f"faceplugin: all {len(FACEPLUGIN_FILES)} models present and verified")
        return verify_faceplugin(models_dir)
    for _, problem in bad:
        say(f"faceplugin: {problem}")
    target = models_dir / FACEPLUGIN
    try:
        target.mkdir(mode=0o755, parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelPackError(f"cannot create {target}: {_one_line(exc)}") from None
    with tempfile.TemporaryDirectory(prefix="facegate-npm-") as tmp:
        tarball = _npm_pack(npm, Path(tmp), say)
        if (digest := sha256_file(tarball)) != NPM_TARBALL_SHA256:
            raise ModelPackError(
                f"the npm tarball of {NPM_SPEC} has sha256 {digest}, expected"
                f" {NPM_TARBALL_SHA256}; refusing to install it (the registry or a mirror"
                " serves different content)"
            )
        _install_members(tarball, target, [fname for fname, _ in bad], say)
    status = verify_faceplugin(models_dir)
    if not status.verified:
        raise ModelPackError(
            f"faceplugin still does not verify after fetching: {status.problems[0]}"
        )
    return status


def _npm_pack(npm: str, dest: Path, say: Log) -> Path:
    exe = shutil.which(npm)
    hint = (
        f"install Node.js with npm (e.g. `sudo apt-get install npm`), or pass the path of npm;"
        f" or copy the five fr_*.onnx files of {NPM_SPEC} (folder package/model/) by hand"
    )
    if exe is None:
        raise ModelPackError(f"cannot fetch the default model pack: npm ({npm}) not found: {hint}")
    say(f"faceplugin: npm pack {NPM_SPEC}")
    cmd = [exe, "pack", NPM_SPEC, "--pack-destination", str(dest), "--ignore-scripts"]
    try:
        proc = subprocess.run(
            cmd, cwd=dest, capture_output=True, text=True, timeout=NPM_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ModelPackError(f"`npm pack {NPM_SPEC}` could not run: {_one_line(exc)}") from None
    if proc.returncode != 0:
        tail = " | ".join(proc.stderr.strip().splitlines()[-5:]) or "(no output)"
        raise ModelPackError(
            f"`npm pack {NPM_SPEC}` failed with exit code {proc.returncode}: {tail}."
            " Check that this machine reaches the npm registry (`npm ping`; proxy settings in"
            " ~/.npmrc), then run it again"
        )
    tarballs = sorted(dest.glob("*.tgz"))
    if len(tarballs) != 1:
        raise ModelPackError(f"`npm pack {NPM_SPEC}` produced no single .tgz in {dest}")
    return tarballs[0]


def _install_members(tarball: Path, target: Path, names: list[str], say: Log) -> None:
    staging = Path(tempfile.mkdtemp(prefix=".fetch-", dir=target))
    try:
        with tarfile.open(tarball, "r:gz") as tar:
            for fname in names:
                member = f"package/model/{fname}"
                try:
                    tar.extract(member, path=staging, filter="data")
                except KeyError:
                    raise ModelPackError(f"{member} is not in the npm tarball") from None
                extracted = staging / member
                expected = FACEPLUGIN_FILES[fname][1]
                if not extracted.is_file() or (actual := sha256_file(extracted)) != expected:
                    raise ModelPackError(f"{member} in the tarball does not have sha256 {expected}")
                extracted.chmod(0o644)
                os.replace(extracted, target / fname)
                say(f"faceplugin: installed {fname} ({actual[:12]}...)")
    except (tarfile.TarError, OSError) as exc:
        raise ModelPackError(f"cannot unpack the npm tarball: {_one_line(exc)}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# -- require ------------------------------------------------------------------------------------
def require_pack(
    models_dir: Path, name: str, *, allow_download: bool, log: Log | None = None
) -> Path:
    """The folder holding the .onnx files of pack `name`, which verifies; else ModelPackError.

    The default pack is never fetched here (`facegate models fetch` does that). A missing
    InsightFace pack is downloaded from insightface's model zoo when `allow_download`.
    """
    _check_name(name)
    say: Log = log or (lambda _msg: None)
    if name == FACEPLUGIN:
        bad = _faceplugin_problems(models_dir / FACEPLUGIN)
        if bad:
            raise ModelPackError(
                f"default model pack in {models_dir / FACEPLUGIN}: {bad[0][1]}"
                f"{f' (and {len(bad) - 1} more)' if len(bad) > 1 else ''};"
                f" run `{fix_command(models_dir, name)}`"
            )
        return models_dir / FACEPLUGIN
    pack_dir = models_dir / name
    status = _insightface_status(pack_dir, name)
    if status.verified:
        return Path(status.model_dir)
    if pack_dir.is_dir() and any(pack_dir.iterdir()):
        raise ModelPackError(
            f"InsightFace pack {name} in {pack_dir} is incomplete: {status.problems[0]}. Put the"
            f" pack's .onnx files there (or remove the folder and run"
            f" `{fix_command(models_dir, name)}`){_where_hint(models_dir)}"
        )
    if not allow_download:
        raise ModelPackError(
            f"InsightFace pack {name} is not installed ({pack_dir} is missing) and downloads are"
            f" off (models.allow_download = false). Run `{fix_command(models_dir, name)}` on a"
            f" machine that is online, or put the pack's .onnx files in {pack_dir}/"
            f"{_where_hint(models_dir)}"
        )
    _download_insightface(models_dir, name, say)
    return Path(_insightface_status(pack_dir, name).model_dir)


def _download_insightface(models_dir: Path, name: str, say: Log) -> None:
    """insightface downloads `<name>.zip` from its model zoo; it lands in `<models_dir>/<name>`.

    insightface's `storage.download` unpacks straight into its target folder and keeps the zip
    beside it, so it is pointed at a hidden staging folder that is renamed into place only when
    the pack verifies, and removed on any failure: an interrupted download never leaves a half
    pack that would later count as present. It prints progress to stdout, which is sent to
    stderr here so `--json` output stays clean. (It calls `requests.get` without a timeout: a
    network that accepts the connection and then stalls makes it wait.)
    """
    url: str = storage.model_zoo_download_url(f"{name}.zip")
    pack_dir = models_dir / name
    say(f"{name}: insightface downloads {url}")
    try:
        models_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}-download-", dir=models_dir))
    except OSError as exc:
        raise ModelPackError(f"cannot write to {models_dir}: {_one_line(exc)}") from None
    try:
        with contextlib.redirect_stdout(sys.stderr):
            storage.download(".", name, force=True, root=str(staging))
        (staging / f"{name}.zip").unlink(missing_ok=True)
        if not _insightface_status(staging / name, name).verified:
            wanted = " and ".join(INSIGHTFACE_PACKS[name])
            raise ValueError(f"the downloaded {name}.zip does not hold {wanted}")
        if pack_dir.is_dir():
            pack_dir.rmdir()  # empty (checked by the caller): e.g. left by an old failed attempt
        os.rename(staging / name, pack_dir)
        say(f"{name}: installed in {pack_dir}")
    except Exception as exc:  # requests, zipfile, OS errors: all mean "not installed"
        raise ModelPackError(
            f"could not download InsightFace pack {name} from {url}: {_one_line(exc)}."
            f" Put the .onnx files of {name}.zip (at least {' and '.join(INSIGHTFACE_PACKS[name])})"
            f" in {pack_dir}/ by hand, or run `{fix_command(models_dir, name)}` when this machine"
            f" is online{_where_hint(models_dir)}"
        ) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
