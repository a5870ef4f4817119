"""`facegate enroll`, `identify`, `persons ...`, `export` and `import`: the gallery commands.

Reading commands (`identify`, `persons list/show`) open the store read-only and work while
`facegate serve` holds the data directory; the others need it for writing.
"""

from __future__ import annotations

import argparse
import csv
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from facegate.cli.common import EXIT_OK, EXIT_SOME_FAILED, Context, rounded
from facegate.identity.archive import export_archive, import_archive
from facegate.identity.enrolment import EnrolResult, PhotoEnroller, Refusal
from facegate.identity.names import InvalidNameError, clean_name
from facegate.identity.store import ErasurePendingError, UnknownPersonError
from facegate.vision.face import ImageArray
from facegate.vision.images import ImageError, read_image
from facegate.vision.quality import QualityValidator

ACTOR = "cli"
AddCommand = Callable[..., argparse.ArgumentParser]


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


# -- enroll ----------------------------------------------------------------------------------
def _load(paths: list[str]) -> tuple[list[tuple[str, ImageArray]], list[Refusal]]:
    photos: list[tuple[str, ImageArray]] = []
    refused: list[Refusal] = []
    for path in paths:
        try:
            photos.append((path, read_image(path)))
        except ImageError as exc:
            refused.append(Refusal(path, str(exc)))
    return photos, refused


def _emit_result(ctx: Context, result: EnrolResult) -> None:
    obj = msgspec.to_builtins(result)
    lines = [
        f"{result.name}: "
        + (
            f"{result.embeddings} embedding(s) stored as {result.person_id}"
            if result.person_id
            else "nothing stored"
        )
    ]
    lines += [f"  warning: {w}" for w in result.warnings]
    lines += [f"  refused {r.path}: {r.reason}" for r in result.refused]
    ctx.out.emit(obj, "\n".join(lines))


def _csv_groups(ctx: Context, path: Path) -> tuple[dict[str, list[str]], int]:
    """Rows of a `path,name` CSV grouped by name (paths relative to the CSV's folder)."""
    try:
        rows = list(csv.DictReader(path.read_text(encoding="utf-8-sig").splitlines()))
    except OSError as exc:
        raise _CsvError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise _CsvError(f"{path}: not a UTF-8 text file") from None
    if not rows or not {"path", "name"} <= set(rows[0]):
        raise _CsvError(f"{path}: need a header with columns path,name")
    groups: dict[str, list[str]] = {}
    bad = 0
    for line, row in enumerate(rows, start=2):
        photo, raw_name = (row.get("path") or "").strip(), row.get("name") or ""
        problem = "" if photo and raw_name.strip() else "row needs both a path and a name"
        if not problem:
            try:
                name = clean_name(raw_name)
            except InvalidNameError as exc:
                problem = str(exc)
        if problem:
            bad += 1
            ctx.out.emit(
                {"path": str(path), "line": line, "error": problem}, f"{path}:{line}: {problem}"
            )
            continue
        full = Path(photo) if Path(photo).is_absolute() else path.parent / photo
        groups.setdefault(name, []).append(str(full))
    return groups, bad


def _face_number(text: str) -> int:
    try:
        number = int(text)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"a face number 1, 2, ... (not {text!r})")
    return number


class _CsvError(Exception):
    """A CSV file that cannot be used at all."""


def cmd_enroll(ctx: Context) -> int:
    args = ctx.args
    if args.face is not None:
        photos_given = len(args.images) + (1 if args.person and args.name else 0)
        if args.from_csv or photos_given != 1:
            return ctx.out.fail("--face N takes exactly one photo (faces differ photo to photo)")
    if args.from_csv:
        if args.name or args.images or args.person:
            return ctx.out.fail("--from-csv takes no NAME, IMG or --person")
        try:
            groups, bad = _csv_groups(ctx, Path(args.from_csv))
        except _CsvError as exc:
            return ctx.out.fail(str(exc))
    elif args.person:
        groups, bad = {args.person: ([args.name] if args.name else []) + args.images}, 0
    else:
        if not args.name or not args.images:
            return ctx.out.fail("usage: facegate enroll NAME IMG... (or --from-csv FILE)")
        try:
            groups, bad = {clean_name(args.name): args.images}, 0
        except InvalidNameError as exc:
            return ctx.out.fail(str(exc))
    analyzer = ctx.analyzer()
    with ctx.store(readonly=False) as store:
        gallery = ctx.gallery(store)
        enroller = PhotoEnroller(
            gallery,
            analyzer,
            QualityValidator(ctx.settings.quality),
            thumbnails=ctx.settings.store.thumbnails,
        )
        failed = bad
        for key, paths in groups.items():
            photos, refused = _load(paths)
            result = enroller.enrol(
                photos,
                name=None if args.person else key,
                person_id=key if args.person else None,
                force=args.force,
                actor=ACTOR,
                refused=refused,
                face=args.face,
            )
            failed += len(result.refused) + (result.person_id is None)
            _emit_result(ctx, result)
    return EXIT_SOME_FAILED if failed else EXIT_OK


# -- identify --------------------------------------------------------------------------------
def cmd_identify(ctx: Context) -> int:
    analyzer = ctx.analyzer()
    validator = QualityValidator(ctx.settings.quality)
    failed = 0
    with ctx.store(readonly=True) as store:
        gallery = ctx.gallery(store)
        for path in ctx.args.images:
            try:
                image = read_image(path)
            except ImageError as exc:
                failed += 1
                ctx.out.emit({"path": path, "faces": [], "error": str(exc)}, f"{path}: ERROR {exc}")
                continue
            faces = analyzer.analyze(image)
            found = gallery.identify(_matrix([f.embedding for f in faces])) if faces else []
            items: list[dict[str, Any]] = []
            for face, ident in zip(faces, found, strict=True):
                gate = validator.for_recognition(face)
                runner = ident.runner_up
                items.append(
                    {
                        "bbox": [round(v, 1) for v in face.bbox],
                        "decision": ident.decision,
                        "person_id": ident.person_id,
                        "name": ident.name,
                        "similarity": rounded(ident.similarity, 4),
                        "runner_up": msgspec.to_builtins(runner) if runner else None,
                        "usable": gate.usable,
                        "reasons": gate.reasons,
                    }
                )
            text = [f"{path}: {len(items)} face(s)"] + [
                f"  {i['decision']}: {i['name'] or '-'} ({i['person_id'] or '-'})"
                f" similarity {i['similarity']}"
                for i in items
            ]
            ctx.out.emit({"path": path, "faces": items, "error": None}, "\n".join(text))
    return EXIT_SOME_FAILED if failed else EXIT_OK


def _matrix(vectors: list[Any]) -> Any:
    import numpy as np

    return np.stack(vectors).astype(np.float32)


# -- persons ---------------------------------------------------------------------------------
def cmd_persons_list(ctx: Context) -> int:
    with ctx.store(readonly=True) as store:
        for p in store.persons():
            obj = {
                "person_id": p.id,
                "name": p.name,
                "embeddings": p.embeddings,
                "poses": p.poses,
                "created_at": _iso(p.created_at),
            }
            ctx.out.emit(obj, f"{p.id}  {p.name}  {p.embeddings} embedding(s) {','.join(p.poses)}")
    return EXIT_OK


def cmd_persons_show(ctx: Context) -> int:
    with ctx.store(readonly=True) as store:
        try:
            p = store.person(ctx.args.id)
        except UnknownPersonError as exc:
            return ctx.out.fail(str(exc))
        embeddings = [
            {
                "id": e.id,
                "pose": e.pose,
                "source": e.source,
                "quality": e.quality,
                "created_at": _iso(e.created_at),
            }
            for e in store.embeddings_of(p.id)
        ]
        obj = {
            "person_id": p.id,
            "name": p.name,
            "note": p.note,
            "embeddings": embeddings,
            "poses": p.poses,
            "created_at": _iso(p.created_at),
            "updated_at": _iso(p.updated_at),
            "thumbnail": store.thumbnail(p.id) is not None,
        }
        text = [f"{p.id}  {p.name}  created {obj['created_at']}"] + [
            f"  #{e['id']} {e['pose']:<6} {e['source']:<12} quality {e['quality']}"
            for e in embeddings
        ]
        ctx.out.emit(obj, "\n".join(text))
    return EXIT_OK


def cmd_persons_rename(ctx: Context) -> int:
    try:
        name = clean_name(ctx.args.name)
    except InvalidNameError as exc:
        return ctx.out.fail(str(exc))
    with ctx.store(readonly=False) as store:
        try:
            p = store.rename(ctx.args.id, name, actor=ACTOR)
        except UnknownPersonError as exc:
            return ctx.out.fail(str(exc))
        ctx.out.emit({"person_id": p.id, "name": p.name}, f"{p.id} is now {p.name}")
    return EXIT_OK


def cmd_persons_rm(ctx: Context) -> int:
    with ctx.store(readonly=False) as store:
        gallery = ctx.gallery(store)
        try:
            removed = gallery.delete_person(ctx.args.id, actor=ACTOR)
        except UnknownPersonError as exc:
            return ctx.out.fail(str(exc))
        except ErasurePendingError as exc:
            ctx.out.emit(
                {
                    "person_id": ctx.args.id,
                    "deleted": True,
                    "erased_on_disk": False,
                    "embeddings": len(exc.removed_ids),
                    "warning": str(exc),
                },
                f"warning: {exc}",
            )
            return EXIT_SOME_FAILED
        ctx.out.emit(
            {
                "person_id": ctx.args.id,
                "deleted": True,
                "erased_on_disk": True,
                "embeddings": removed,
            },
            f"{ctx.args.id} erased ({removed} embedding(s))",
        )
    return EXIT_OK


# -- export / import -------------------------------------------------------------------------
def cmd_export(ctx: Context) -> int:
    with ctx.store(readonly=False) as store:
        manifest = export_archive(store, Path(ctx.args.file), actor=ACTOR)
    obj = {
        "path": ctx.args.file,
        "persons": manifest.persons,
        "embeddings": manifest.embeddings,
        "model_pack": manifest.model_pack,
    }
    ctx.out.emit(obj, f"{ctx.args.file}: {manifest.persons} person(s) exported")
    return EXIT_OK


def cmd_import(ctx: Context) -> int:
    with ctx.store(readonly=False) as store:
        result = import_archive(
            store, Path(ctx.args.file), pack=ctx.settings.models.pack, actor=ACTOR
        )
    obj = {"path": ctx.args.file, "persons": result.persons, "embeddings": result.embeddings}
    ctx.out.emit(obj, f"{ctx.args.file}: {result.persons} person(s) imported")
    return EXIT_OK


def add_commands(
    sub: Any, add: AddCommand, common: Callable[[argparse.ArgumentParser], None]
) -> None:
    p = add("enroll", cmd_enroll, "enrol a person from photos (or add photos to one)")
    p.add_argument("name", nargs="?", metavar="NAME")
    p.add_argument("images", nargs="*", metavar="IMG")
    p.add_argument("--from-csv", metavar="FILE", help="CSV with columns path,name")
    p.add_argument("--person", metavar="ID", help="add the photos to this person")
    p.add_argument(
        "--force",
        action="store_true",
        help="enrol even if the face matches someone else, or (with --person) does not look"
        " like that person; audited. Never stores the same photo twice",
    )
    p.add_argument(
        "--face",
        type=_face_number,
        metavar="N",
        help="take face N of the photo (1-based, as `facegate analyze` lists them) instead of"
        " choosing; needs exactly one photo",
    )
    p = add("identify", cmd_identify, "who is in these photos: known, ambiguous or unknown")
    p.add_argument("images", nargs="+", metavar="IMG")
    persons = sub.add_parser("persons", help="list, show, rename and erase persons")
    common(persons)
    psub = persons.add_subparsers(dest="persons_command", required=True, metavar="ACTION")
    add("list", cmd_persons_list, "list persons", psub)
    add("show", cmd_persons_show, "one person with its embeddings", psub).add_argument("id")
    p = add("rename", cmd_persons_rename, "rename a person", psub)
    p.add_argument("id")
    p.add_argument("name")
    add("rm", cmd_persons_rm, "erase a person and all their data", psub).add_argument("id")
    add("export", cmd_export, "write all persons to a portable archive").add_argument("file")
    add("import", cmd_import, "add the persons of an archive").add_argument("file")
