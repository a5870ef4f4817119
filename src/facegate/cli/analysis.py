"""`facegate analyze`, `compare` and `verify-pairs`: face analysis without a gallery.

All three use the face a photo is "of" by one rule (`vision.face.choose_face`: visible size x
focus x centrality). `analyze` lists every face, numbered from 1 in the detector's order (the
numbers `enroll --face N` takes), and marks the chosen one (`main`, `main_face`) and any face as
likely (`ambiguous_with`). `compare` and `verify-pairs` use the chosen face even when the choice
is ambiguous (two faces of similar size and place): `compare` says which face it used of each
photo (`face_a`, `face_b`) and its rivals (`ambiguous_a`, `ambiguous_b`); `verify-pairs` lists
such photos (`ambiguous_images`). Crop such photos to compare the face you mean.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

from facegate.cli.common import EXIT_OK, EXIT_SOME_FAILED, Context, rounded
from facegate.identity.verification import PairsError, read_pairs, report
from facegate.vision.face import Choice, Face, choose_face, photo_face
from facegate.vision.images import ImageError, read_image
from facegate.vision.quality import QualityValidator

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
            image = read_image(path)
            faces = analyzer.analyze(image, embed=ctx.args.embeddings)
        except ImageError as exc:
            failed += 1
            ctx.out.emit({"path": path, "faces": [], "error": str(exc)}, f"{path}: ERROR {exc}")
            continue
        height, width = image.shape[:2]
        choice = choose_face(faces, (width, height))
        items = [face_json(f, validator, ctx.args.embeddings) for f in faces]
        lines = [f"{path}: {len(faces)} face(s)"]
        for i, item in enumerate(items):
            item["number"] = i + 1
            item["main"] = choice is not None and i == choice.index
            q = item["quality"]
            enrolment = "ok" if q["usable_for_enrolment"] else "; ".join(q["reasons"])
            mark = " (main)" if item["main"] else ""
            lines.append(
                f"  #{i + 1}{mark} box={item['bbox']} score={item['det_score']} yaw={item['yaw']}"
                f" pitch={item['pitch']} roll={item['roll']} size={q['face_px']}px "
                f"sharpness={q['sharpness']} enrolment: {enrolment}"
            )
        if choice is not None:
            lines.append(f"  main face: {_said(choice)}")
        obj = {"path": path, "faces": items, "error": None, **_choice_json(choice)}
        ctx.out.emit(obj, "\n".join(lines))
    return EXIT_SOME_FAILED if failed else EXIT_OK


def _choice_json(choice: Choice | None) -> dict[str, Any]:
    """The chosen face's 1-based number, its rivals' and why (all None without a face)."""
    return {
        "main_face": None if choice is None else choice.number,
        "ambiguous_with": [] if choice is None else [i + 1 for i in choice.ambiguous_with],
        "choice": None if choice is None else choice.reason,
    }


def _said(choice: Choice) -> str:
    if choice.ambiguous:
        return f"{choice.reason}; used #{choice.number} (crop the photo to choose)"
    return choice.reason


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
        "face_a": None,  # the 1-based number of the face used (see `analyze`)
        "face_b": None,
        "ambiguous_a": [],  # faces as likely as the one used: the choice is a guess
        "ambiguous_b": [],
        "error": None,
    }
    notes: list[str] = []
    try:
        found_a = photo_face(analyzer, read_image(a), pose=False)
        found_b = photo_face(analyzer, read_image(b), pose=False)
    except ImageError as exc:
        result["error"] = str(exc)
        ctx.out.emit(result, f"ERROR {exc}")
        return EXIT_SOME_FAILED
    for key, path, found in (("a", a, found_a), ("b", b, found_b)):
        result[f"faces_{key}"] = found.count
        if found.choice is not None:
            result[f"face_{key}"] = found.choice.number
            result[f"ambiguous_{key}"] = [i + 1 for i in found.choice.ambiguous_with]
            if found.choice.ambiguous:
                notes.append(f"{path}: {_said(found.choice)}")
    face_a, face_b = found_a.face, found_b.face
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
    text = f"similarity {sim:.4f} (threshold {threshold}): {verdict}"
    ctx.out.emit(result, "\n".join([text, *(f"  note: {n}" for n in notes)]))
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
    errors: dict[str, str] = {}  # unreadable image -> why
    # Scored with the chosen face although another is as likely (see `analyze`).
    ambiguous: list[dict[str, str]] = []
    for name in dict.fromkeys(n for p in pairs for n in (p.file_x, p.file_y)):
        try:
            found = photo_face(analyzer, read_image(root / name), pose=False)
            embeddings[name] = found.face
            if found.choice is not None and found.choice.ambiguous:
                ambiguous.append({"path": name, "choice": _said(found.choice)})
        except ImageError as exc:
            errors[name] = str(exc)
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
    # Read, but no usable face: left out as `no_face`, not as an error.
    no_face = [
        n for n, f in embeddings.items() if n not in errors and (f is None or f.embedding is None)
    ]
    rep = report(
        scores,
        pairs,
        rec.threshold,
        rec.target_far,
        image_errors=errors,
        no_face_images=no_face,
    )
    obj: dict[str, Any] = {
        "path": ctx.args.pairs,
        "root": ctx.args.root,
        **msgspec.to_builtins(rep),
        "ambiguous_images": ambiguous,
    }
    # Text: one line per number; a rate the pairs cannot measure shows "-" and its note.
    notes = {k.removesuffix("_note"): v for k, v in obj.items() if k.endswith("_note") and v}
    lines = [
        f"{k}: {'-' if v is None else v}" + (f"  ({notes[k]})" if k in notes else "")
        for k, v in obj.items()
        if not k.endswith("_note") and not isinstance(v, list)
    ]
    lines += [f"unreadable: {e['path']}: {e['error']}" for e in obj["error_images"]]
    lines += [f"no face: {n}" for n in obj["no_face_images"]]
    lines += [f"ambiguous: {a['path']}: {a['choice']}" for a in ambiguous]
    ctx.out.emit(obj, "\n".join(lines))
    return EXIT_SOME_FAILED if errors else EXIT_OK
