"""Export and import: a versioned, portable archive of persons, embeddings and thumbnails.

The archive is a zip file:
- `manifest.json`: format name and version, the model pack and embedding size the vectors
  belong to, counts, and the sha256 of every other member;
- `persons.json`: persons (id, name, note, created time) with their embeddings' metadata;
- `embeddings.npy`: all vectors, float32 little-endian, one row per embedding;
- `thumbnails/<person id>.jpg`.
An archive made with another embedding model is refused (vectors of different models cannot
be compared), and an import lands in one transaction: all persons or none. The file holds
biometric data: it is written 0600, atomically (temporary file, then rename).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import tempfile
import time
import zipfile
from pathlib import Path
from typing import TypeVar

import msgspec
import numpy as np

from facegate import __version__
from facegate.identity.store import NewEmbedding, Source, Store, StoreError

T = TypeVar("T")

FORMAT = "facegate-archive"
FORMAT_VERSION = 1
MAX_MEMBER_BYTES = 4 << 30  # a member claiming more than this is not one of ours


class ArchiveError(Exception):
    """An archive that cannot be written or imported; nothing was changed."""


class ArchivedEmbedding(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    row: int
    pose: str
    quality: float
    source: Source
    created_at: float


class ArchivedPerson(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    id: str
    name: str
    note: str
    created_at: float
    embeddings: list[ArchivedEmbedding]
    thumbnail: str | None = None


class Manifest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    format: str
    version: int
    created_at: float
    facegate_version: str
    model_pack: str
    embedding_dim: int
    persons: int
    embeddings: int
    files: dict[str, str]  # member name -> sha256


class ImportResult(msgspec.Struct, frozen=True):
    persons: int
    embeddings: int


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def export_archive(store: Store, path: Path, *, actor: str) -> Manifest:
    """Write every person of the store to `path` (replaced atomically), and audit it."""
    pack = store.model_pack() or "none"
    dim = store.dim() or 0
    vectors = store.vectors()
    row_of = {int(i): n for n, i in enumerate(vectors.ids.tolist())}
    members: dict[str, bytes] = {}
    persons: list[ArchivedPerson] = []
    for person in store.persons():
        thumb = store.thumbnail(person.id)
        thumb_name = None
        if thumb is not None:
            thumb_name = f"thumbnails/{person.id}.jpg"
            members[thumb_name] = thumb
        embeddings = [
            ArchivedEmbedding(row_of[e.id], e.pose, e.quality, e.source, e.created_at)  # type: ignore[arg-type]
            for e in store.embeddings_of(person.id)
        ]
        persons.append(
            ArchivedPerson(
                person.id, person.name, person.note, person.created_at, embeddings, thumb_name
            )
        )
    buf = io.BytesIO()
    np.save(buf, vectors.matrix.astype("<f4"), allow_pickle=False)
    members["embeddings.npy"] = buf.getvalue()
    members["persons.json"] = msgspec.json.encode(persons)
    manifest = Manifest(
        format=FORMAT,
        version=FORMAT_VERSION,
        created_at=time.time(),
        facegate_version=__version__,
        model_pack=pack,
        embedding_dim=dim,
        persons=len(persons),
        embeddings=len(vectors.ids),
        files={name: _sha(data) for name, data in members.items()},
    )
    _write_atomically(path, {"manifest.json": msgspec.json.encode(manifest), **members})
    store.record(actor, "export", persons=len(persons), embeddings=len(vectors.ids))
    return manifest


def _write_atomically(path: Path, members: dict[str, bytes]) -> None:
    folder = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=folder)
    except OSError as exc:
        raise ArchiveError(f"cannot write {path}: {exc.strerror}") from None
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as fh:
            with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_DEFLATED) as zf:
                for name, data in members.items():
                    zf.writestr(name, data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise ArchiveError(f"cannot write {path}: {exc.strerror or exc}") from None


def read_archive(path: Path) -> tuple[Manifest, list[ArchivedPerson], np.ndarray, dict[str, bytes]]:
    """Read and verify an archive completely, before anything is stored."""
    try:
        zf = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise ArchiveError(f"{path}: no such file") from None
    except (zipfile.BadZipFile, OSError) as exc:
        raise ArchiveError(f"{path}: not a facegate archive ({exc})") from None
    with zf:
        names = set(zf.namelist())
        if "manifest.json" not in names:
            raise ArchiveError(f"{path}: not a facegate archive (no manifest.json)")
        manifest = _decode(path, _member(zf, "manifest.json"), Manifest)
        if manifest.format != FORMAT:
            raise ArchiveError(f"{path}: not a facegate archive (format {manifest.format!r})")
        if manifest.version != FORMAT_VERSION:
            raise ArchiveError(
                f"{path}: archive format version {manifest.version}; this facegate reads"
                f" version {FORMAT_VERSION}"
            )
        members: dict[str, bytes] = {}
        for name, digest in manifest.files.items():
            if name not in names:
                raise ArchiveError(f"{path}: {name} is missing from the archive")
            data = _member(zf, name)
            if _sha(data) != digest:
                raise ArchiveError(f"{path}: {name} is damaged (checksum mismatch)")
            members[name] = data
    persons = _decode(path, members.get("persons.json", b"[]"), list[ArchivedPerson])
    try:
        matrix = np.load(io.BytesIO(members["embeddings.npy"]), allow_pickle=False)
    except (KeyError, ValueError, OSError) as exc:
        raise ArchiveError(f"{path}: embeddings.npy unreadable ({exc})") from None
    rows = sum(len(p.embeddings) for p in persons)
    if matrix.ndim != 2 or matrix.shape != (manifest.embeddings, manifest.embedding_dim):
        raise ArchiveError(f"{path}: embeddings.npy has shape {matrix.shape}, manifest disagrees")
    if rows != manifest.embeddings or len(persons) != manifest.persons:
        raise ArchiveError(f"{path}: persons.json and the manifest disagree on counts")
    return manifest, persons, matrix.astype(np.float32), members


def _member(zf: zipfile.ZipFile, name: str) -> bytes:
    if zf.getinfo(name).file_size > MAX_MEMBER_BYTES:
        raise ArchiveError(f"{name} in the archive is implausibly large")
    return zf.read(name)


def _decode(path: Path, data: bytes, kind: type[T]) -> T:
    try:
        return msgspec.json.decode(data, type=kind)
    except msgspec.DecodeError as exc:
        raise ArchiveError(f"{path}: invalid archive contents: {exc}") from None


def import_archive(store: Store, path: Path, *, pack: str, actor: str) -> ImportResult:
    """Add every person of the archive to the store in one transaction, or none of them."""
    manifest, persons, matrix, members = read_archive(path)
    stored_pack, stored_dim = store.model_pack(), store.dim()
    if manifest.model_pack != pack or (
        stored_pack is not None and stored_pack != manifest.model_pack
    ):
        raise ArchiveError(
            f"{path} holds embeddings of model pack {manifest.model_pack}"
            f" ({manifest.embedding_dim}-d); this data directory uses"
            f" {stored_pack or pack} ({stored_dim or '512'}-d). Faces from different models"
            " cannot be compared: re-enrol these persons from photos instead"
        )
    existing = {p.id for p in store.persons()}
    clashes = sorted(existing & {p.id for p in persons})
    if clashes:
        raise ArchiveError(
            f"{path}: {len(clashes)} person(s) already exist here (e.g. {clashes[0]});"
            " nothing imported. Delete them first to replace them"
        )
    try:
        with store.batch() as batch:
            for person in persons:
                items = [
                    NewEmbedding(matrix[e.row], e.pose, e.quality, e.source)
                    for e in person.embeddings
                ]
                thumb = members.get(person.thumbnail) if person.thumbnail else None
                batch.create_person(
                    person.id,
                    person.name,
                    person.note,
                    person.created_at,
                    items,
                    pack=pack,
                    thumbnail=thumb,
                )
            batch.audit(actor, "import", persons=len(persons), embeddings=len(matrix))
    except (StoreError, IndexError) as exc:
        raise ArchiveError(f"{path}: nothing imported: {exc}") from None
    return ImportResult(persons=len(persons), embeddings=len(matrix))
