"""The `facegate` command line.

Every subcommand takes `--json` (one JSON object per line on stdout), `--data DIR` (the data
directory; default $FACEGATE_HOME or ~/.local/share/facegate) and `--settings FILE`.
Exit status: 0 all good; 1 some inputs failed (each reported, the others still processed);
2 the command could not run at all (bad settings, missing model pack, unreadable pairs file).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec

from facegate import __version__
from facegate.face import Face, FaceAnalyzer, primary
from facegate.images import ImageError, read_image
from facegate.modelpack import ModelPackError, fetch_faceplugin, list_packs, require_pack
from facegate.quality import QualityValidator
from facegate.settings import Settings, SettingsError, default_data_dir, load_settings, models_dir
from facegate.verification import PairsError, read_pairs, report

EXIT_OK, EXIT_SOME_FAILED, EXIT_CANNOT_RUN = 0, 1, 2
log = logging.getLogger("facegate")
_encoder = msgspec.json.Encoder()


class Output:
    """Writes results as JSON lines (--json) or as text for a person at a terminal."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json

    def emit(self, obj: dict[str, Any], text: str) -> None:
        if self.as_json:
            sys.stdout.buffer.write(_encoder.encode(obj) + b"\n")
            sys.stdout.buffer.flush()
        else:
            print(text, flush=True)

    def fail(self, message: str) -> int:
        if self.as_json:
            self.emit({"error": message}, message)
        print(f"facegate: {message}", file=sys.stderr)
        return EXIT_CANNOT_RUN


class Context:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = Output(bool(getattr(args, "json", False)))
        data = getattr(args, "data", None)
        self.data_dir = Path(data).expanduser() if data else default_data_dir()
        settings_file = getattr(args, "settings", None)
        self.settings: Settings = load_settings(
            Path(settings_file) if settings_file else None, self.data_dir
        )

    def analyzer(self) -> FaceAnalyzer:
        from facegate.analyzers import open_analyzer

        return open_analyzer(self.settings)


# -- analyze ---------------------------------------------------------------------------------
def _r(value: float | None, places: int = 2) -> float | None:
    return None if value is None else round(float(value), places)


def face_json(face: Face, validator: QualityValidator, embeddings: bool) -> dict[str, Any]:
    rec = validator.for_recognition(face)
    enrol = validator.for_enrolment(face)
    obj: dict[str, Any] = {
        "bbox": [round(v, 1) for v in face.bbox],
        "det_score": _r(face.det_score, 3),
        "landmarks": [[round(x, 1), round(y, 1)] for x, y in face.landmarks],
        "yaw": _r(face.yaw, 1),
        "pitch": _r(face.pitch, 1),
        "roll": _r(face.roll, 1),
        "quality": {
            "face_px": _r(face.quality.face_px, 1),
            "sharpness": _r(face.quality.sharpness, 1),
            "brightness": _r(face.quality.brightness, 1),
            "usable_for_recognition": rec.usable,
            "usable_for_enrolment": enrol.usable,
            "reasons": enrol.reasons,
        },
    }
    if embeddings and face.embedding is not None:
        obj["embedding"] = face.embedding.tolist()
    return obj


def cmd_analyze(ctx: Context) -> int:
    analyzer = ctx.analyzer()
    validator = QualityValidator(ctx.settings.quality)
    failed = 0
    for path in ctx.args.images:
        try:
            faces = analyzer.analyze(read_image(path), embed=ctx.args.embeddings)
        except ImageError as exc:
            failed += 1
            ctx.out.emit({"path": path, "faces": [], "error": str(exc)}, f"{path}: ERROR {exc}")
            continue
        items = [face_json(f, validator, ctx.args.embeddings) for f in faces]
        lines = [f"{path}: {len(faces)} face(s)"]
        for i, item in enumerate(items):
            q = item["quality"]
            enrolment = "ok" if q["usable_for_enrolment"] else "; ".join(q["reasons"])
            lines.append(
                f"  #{i} box={item['bbox']} score={item['det_score']} yaw={item['yaw']} "
                f"pitch={item['pitch']} roll={item['roll']} size={q['face_px']}px "
                f"sharpness={q['sharpness']} enrolment: {enrolment}"
            )
        ctx.out.emit({"path": path, "faces": items, "error": None}, "\n".join(lines))
    return EXIT_SOME_FAILED if failed else EXIT_OK


# -- compare ---------------------------------------------------------------------------------
def main_face(analyzer: FaceAnalyzer, path: str) -> tuple[Face | None, int]:
    """The primary face of an image (largest in focus) with its embedding, and the face count."""
    frame = read_image(path)
    detections = analyzer.detect(frame)
    faces = [analyzer.describe(frame, d, embed=False, pose=False) for d in detections]
    chosen = primary(faces)
    if chosen is None:
        return None, 0
    detection = detections[faces.index(chosen)]
    return analyzer.describe(frame, detection, embed=True, pose=False), len(detections)


def cmd_compare(ctx: Context) -> int:
    analyzer = ctx.analyzer()
    a, b = ctx.args.image_a, ctx.args.image_b
    threshold = ctx.settings.recognition.threshold
    result: dict[str, Any] = {
        "path_a": a,
        "path_b": b,
        "similarity": None,
        "threshold": threshold,
        "same_person": None,
        "faces_a": 0,
        "faces_b": 0,
        "error": None,
    }
    try:
        face_a, result["faces_a"] = main_face(analyzer, a)
        face_b, result["faces_b"] = main_face(analyzer, b)
    except ImageError as exc:
        result["error"] = str(exc)
        ctx.out.emit(result, f"ERROR {exc}")
        return EXIT_SOME_FAILED
    missing = [p for p, f in ((a, face_a), (b, face_b)) if f is None]
    if missing or face_a is None or face_b is None:
        result["error"] = f"no face found in {', '.join(missing)}"
        ctx.out.emit(result, f"ERROR {result['error']}")
        return EXIT_SOME_FAILED
    assert face_a.embedding is not None and face_b.embedding is not None
    sim = float(face_a.embedding @ face_b.embedding)
    result["similarity"] = round(sim, 4)
    result["same_person"] = sim >= threshold
    verdict = "same person" if sim >= threshold else "different people"
    ctx.out.emit(result, f"similarity {sim:.4f} (threshold {threshold}): {verdict}")
    return EXIT_OK


# -- verify-pairs ----------------------------------------------------------------------------
def cmd_verify_pairs(ctx: Context) -> int:
    try:
        pairs = read_pairs(Path(ctx.args.pairs))
    except PairsError as exc:
        return ctx.out.fail(str(exc))
    analyzer = ctx.analyzer()
    root = Path(ctx.args.root)
    embeddings: dict[str, Face | None] = {}
    errors = 0
    for name in dict.fromkeys(n for p in pairs for n in (p.file_x, p.file_y)):
        try:
            embeddings[name], _ = main_face(analyzer, str(root / name))
        except ImageError as exc:
            errors += 1
            embeddings[name] = None
            ctx.out.emit({"path": name, "error": str(exc)}, f"{name}: ERROR {exc}")
    scores: list[float | None] = []
    for p in pairs:
        fx, fy = embeddings[p.file_x], embeddings[p.file_y]
        if fx is None or fy is None or fx.embedding is None or fy.embedding is None:
            scores.append(None)
        else:
            scores.append(float(fx.embedding @ fy.embedding))
    rec = ctx.settings.recognition
    rep = report(scores, pairs, rec.threshold, rec.target_far)
    obj: dict[str, Any] = {
        "path": ctx.args.pairs,
        "root": ctx.args.root,
        **msgspec.to_builtins(rep),
    }
    text = "\n".join(f"{k}: {v}" for k, v in obj.items())
    ctx.out.emit(obj, text)
    return EXIT_SOME_FAILED if errors else EXIT_OK


# -- models ----------------------------------------------------------------------------------
def cmd_models_fetch(ctx: Context) -> int:
    pack = ctx.args.pack or ctx.settings.models.pack
    where = models_dir(ctx.settings)
    progress = _to_stderr
    if pack == "faceplugin":
        path = fetch_faceplugin(where, log=progress).path
    else:
        path = str(require_pack(where, pack, allow_download=True, log=progress))
    ctx.out.emit({"name": pack, "path": path, "verified": True}, f"{pack}: ready in {path}")
    return EXIT_OK


def _to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cmd_models_list(ctx: Context) -> int:
    for status in list_packs(models_dir(ctx.settings)):
        obj = msgspec.to_builtins(status)
        obj["selected"] = status.name == ctx.settings.models.pack
        mark = "*" if obj["selected"] else " "
        state = "verified" if status.verified else "not ready: " + "; ".join(status.problems)
        ctx.out.emit(obj, f"{mark} {status.name:<11} {status.path}  {state}")
    return EXIT_OK


# -- parser ----------------------------------------------------------------------------------
def _common(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS: the option may be given before or after the subcommand without one erasing
    # the other.
    parser.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="one JSON object per line on stdout",
    )
    parser.add_argument(
        "--data",
        metavar="DIR",
        default=argparse.SUPPRESS,
        help="data directory (default: $FACEGATE_HOME or ~/.local/share/facegate)",
    )
    parser.add_argument(
        "--settings",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help="settings file (default: $FACEGATE_SETTINGS or DIR/settings.toml)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="facegate", description="A face-recognition gate.")
    parser.add_argument("--version", action="version", version=f"facegate {__version__}")
    _common(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(
        name: str, func: Callable[[Context], int], help_: str, into: Any = sub
    ) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = into.add_parser(name, help=help_, description=help_)
        _common(p)
        p.set_defaults(func=func)
        return p

    p = add("analyze", cmd_analyze, "detect faces; print boxes, pose and quality per image")
    p.add_argument("images", nargs="+", metavar="IMG")
    p.add_argument("--embeddings", action="store_true", help="add each face's embedding")
    p = add("compare", cmd_compare, "cosine similarity of the main faces of two images")
    p.add_argument("image_a", metavar="IMG_A")
    p.add_argument("image_b", metavar="IMG_B")
    p = add(
        "verify-pairs",
        cmd_verify_pairs,
        "accuracy, AUC, TAR@FAR and a threshold from labelled pairs",
    )
    p.add_argument("pairs", metavar="PAIRS.csv", help="CSV with columns file_x,file_y,decision")
    p.add_argument("--root", required=True, metavar="DIR", help="folder the file names are in")

    models = sub.add_parser("models", help="fetch, verify and list model packs")
    _common(models)
    msub = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    p = add(
        "fetch",
        cmd_models_fetch,
        "fetch and verify a model pack (default: the configured one)",
        msub,
    )
    p.add_argument("--pack", choices=["faceplugin", "buffalo_l", "buffalo_s", "antelopev2"])
    add("list", cmd_models_list, "list model packs, where they live and whether they verify", msub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="facegate: %(message)s", stream=sys.stderr)
    args = build_parser().parse_args(argv)
    out = Output(bool(getattr(args, "json", False)))
    try:
        ctx = Context(args)
        code: int = args.func(ctx)
    except (SettingsError, ModelPackError) as exc:
        return out.fail(str(exc))
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
