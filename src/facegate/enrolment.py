"""Enrolment from photos: create a person from photos, or add photos to one.

Each photo must hold a usable face (the enrolment quality gate); with several faces the main
one (largest in focus) is taken and a warning says so; a photo whose face matches another
known person at the duplicate threshold is refused unless forced. All accepted photos of one
call land in one transaction; a call with no accepted photo stores nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import cv2
import msgspec
import numpy as np

from facegate.face import Face, FaceAnalyzer, ImageArray, main_face
from facegate.gallery import Gallery
from facegate.quality import QualityValidator
from facegate.store import NewEmbedding, Source

# Pose labels of enrolled views. Inside FRONT_LIMIT on both axes is `front`; otherwise the
# axis turned furthest names the view (the subject's own left/right; see face.py).
FRONT_LIMIT = 12.0
THUMBNAIL_QUALITY = 90


class Refusal(msgspec.Struct, frozen=True):
    path: str
    reason: str


class EnrolResult(msgspec.Struct, frozen=True):
    person_id: str | None  # None when nothing was stored
    name: str | None
    embeddings: int  # stored by this call
    warnings: list[str]
    refused: list[Refusal]


def pose_label(yaw: float | None, pitch: float | None) -> str:
    if yaw is None or pitch is None:
        return "unknown"
    if abs(yaw) <= FRONT_LIMIT and abs(pitch) <= FRONT_LIMIT:
        return "front"
    if abs(yaw) >= abs(pitch):
        return "right" if yaw > 0 else "left"
    return "up" if pitch > 0 else "down"


def quality_score(face: Face) -> float:
    """0..1: detector confidence scaled down for small or soft faces."""
    size = min(1.0, face.quality.face_px / 112.0)
    sharp = min(1.0, face.quality.sharpness / 100.0)
    return round(float(face.det_score) * size * sharp, 4)


def thumbnail_jpeg(face: Face) -> bytes | None:
    if face.aligned is None:
        return None
    ok, data = cv2.imencode(".jpg", face.aligned, [cv2.IMWRITE_JPEG_QUALITY, THUMBNAIL_QUALITY])
    return data.tobytes() if ok else None


class PhotoEnroller:
    """Turns photos into a stored person (or more views of one), refusing what is unusable."""

    def __init__(
        self,
        gallery: Gallery,
        analyzer: FaceAnalyzer,
        validator: QualityValidator,
        *,
        thumbnails: bool = True,
    ) -> None:
        self.gallery = gallery
        self.analyzer = analyzer
        self.validator = validator
        self.thumbnails = thumbnails

    def enrol(
        self,
        photos: Iterable[tuple[str, ImageArray]],
        *,
        name: str | None = None,
        person_id: str | None = None,
        force: bool = False,
        actor: str = "cli",
        source: Source = "photo",
        refused: Sequence[Refusal] = (),
    ) -> EnrolResult:
        """New person `name`, or more photos of `person_id` (exactly one of the two).

        `refused` carries photos the caller could not even read, to report them together;
        `photos` may be a generator that decodes each photo when it is reached (and adds to
        `refused` those it cannot), so that one decoded image is in memory at a time."""
        if (name is None) == (person_id is None):
            raise ValueError("give either a name (new person) or a person_id (add photos)")
        target_name = name if person_id is None else self.gallery.store.person(person_id).name
        warnings: list[str] = []
        checked: list[Refusal] = []
        accepted: list[tuple[str, Face]] = []
        for label, image in photos:
            face, reason = self._check(label, image, person_id, force, warnings)
            if face is None:
                checked.append(Refusal(label, reason))
            else:
                accepted.append((label, face))
        refusals = [*refused, *checked]
        warnings += self._consistency(accepted)
        if not accepted:
            return EnrolResult(None, target_name, 0, warnings, refusals)
        items = [
            NewEmbedding(
                vector=face.embedding,
                pose=pose_label(face.yaw, face.pitch),
                quality=quality_score(face),
                source=source,
            )
            for _, face in accepted
            if face.embedding is not None
        ]
        best = max((face for _, face in accepted), key=quality_score)
        thumb = thumbnail_jpeg(best) if self.thumbnails else None
        if person_id is None:
            assert name is not None
            person = self.gallery.create_person(name, items, actor=actor, thumbnail=thumb)
        else:
            person = self.gallery.add_embeddings(person_id, items, actor=actor, thumbnail=thumb)
        return EnrolResult(person.id, person.name, len(items), warnings, refusals)

    def _check(
        self,
        label: str,
        image: ImageArray,
        person_id: str | None,
        force: bool,
        warnings: list[str],
    ) -> tuple[Face | None, str]:
        face, count = main_face(self.analyzer, image)
        if face is None or face.embedding is None:
            return None, "no face found"
        if count > 1:
            warnings.append(f"{label}: {count} faces; used the largest face in focus")
        gate = self.validator.for_enrolment(face)
        if not gate.usable:
            return None, "; ".join(gate.reasons)
        matches = self.gallery.similar_persons(face.embedding[None, :], exclude=person_id)
        if matches:
            top = matches[0]
            what = f"matches {top.name} ({top.person_id}) at similarity {top.similarity:.2f}"
            if not force:
                return None, f"already enrolled: {what}; use --force to enrol anyway"
            warnings.append(f"{label}: {what}; enrolled anyway (forced)")
        return face, ""

    def _consistency(self, accepted: list[tuple[str, Face]]) -> list[str]:
        """Warn about a photo that does not look like the others of the same call."""
        if len(accepted) < 2:
            return []
        vectors = np.stack([f.embedding for _, f in accepted if f.embedding is not None])
        threshold = self.gallery.settings.recognition.threshold
        out: list[str] = []
        for i, (label, _) in enumerate(accepted):
            others = np.delete(vectors, i, axis=0).mean(axis=0)
            others /= np.linalg.norm(others) or 1.0
            similarity = float(vectors[i] @ others)
            if similarity < threshold:
                out.append(
                    f"{label}: looks unlike the other photos (similarity {similarity:.2f});"
                    " check it shows the same person"
                )
        return out
