"""`facegate analyze`, `compare` and `verify-pairs`: face analysis without a gallery."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

from facegate.cli.common import EXIT_OK, EXIT_SOME_FAILED, Context, rounded
from facegate.face import Face, main_face
from facegate.images import ImageError, read_image
from facegate.quality import QualityValidator
from facegate.verification import PairsError, read_pairs, report

# -- analyze ---------------------------------------------------------------------------------


def face_json(face: Face, validator: QualityValidator, embeddings: bool) -> dict[str, Any]:
    rec = validator.for_recognition(face)
    enrol = validator.for_enrolment(face)
    obj: dict[str, Any] = {
        "bbox": [round(v, 1) for v in face.bbox],
        "det_score": rounded(face.det_score, 3),
        "landmarks": [[round(x, 1), round(y, 1)] for x, y in face.landmarks],
        "yaw": rounded(face.yaw, 1),
        "pitch": rounded(face.pitch, 1),
        "roll": rounded(face.roll, 1),
        "quality": {
            "face_px": rounded(face.quality.face_px, 1),
            "sharpness": rounded(face.quality.sharpness, 1),
            "brightness": rounded(face.quality.brightness, 1),
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
        face_a, result["faces_a"] = main_face(analyzer, read_image(a), pose=False)
        face_b, result["faces_b"] = main_face(analyzer, read_image(b), pose=False)
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
            embeddings[name], _ = main_face(analyzer, read_image(root / name), pose=False)
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
