"""Enrolment from photos: create a person from photos, or add photos to one.

Each photo is checked in turn, and refused with the reason (similarities included):
- it must hold a face; with several, the one `vision.face.choose_face` picks is taken and a warning
  says which. A photo with two faces of similar size and place (an ambiguous choice) is
  refused: crop it, or name the face (`face`: its 1-based number in the detector's order,
  as `facegate analyze` and `POST /api/identify` list them);
- the face must pass the enrolment quality gate;
- it must not be the very same face again (similarity >= DUPLICATE_SIMILARITY) as one
  already stored for the person, or as another photo of the same call: nothing would be
  added. Forcing does not override this;
- added to a known person, it must look like them: similarity >= recognition.threshold to
  the L2-normalised mean of their stored embeddings. Forcing overrides this (someone whose
  look changed), with a warning and an audit row (`enrol_forced`, check `identity`, with
  the similarity);
- it must not match another known person at the duplicate threshold. Forcing overrides this
  too, with a warning and an audit row (check `other_person`).
All accepted photos of one call land in one transaction; a call with no accepted photo stores
nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import msgspec
import numpy as np
import numpy.typing as npt

from facegate.identity.gallery import Gallery
from facegate.identity.store import DuplicatePersonError, NewEmbedding, Source
from facegate.vision.face import Face, FaceAnalyzer, ImageArray, NoSuchFaceError, photo_face
from facegate.vision.images import thumbnail_jpeg
from facegate.vision.quality import QualityValidator, quality_score

# Pose labels of enrolled views. Inside FRONT_LIMIT on both axes is `front`; otherwise the
# axis turned furthest names the view (the subject's own left/right; see vision/face.py).
FRONT_LIMIT = 12.0
# Two embeddings this similar are the same photo (or a copy of it), not two views of a face.
DUPLICATE_SIMILARITY = 0.999


class Refusal(msgspec.Struct, frozen=True):
    path: str
    reason: str


class Wording(msgspec.Struct, frozen=True):
    """How the caller's user names a face or forces an enrolment (a CLI flag, a form field)."""

    face: str
    force: str


CLI_WORDING = Wording(
    face="pass --face N (faces numbered as `facegate analyze` lists them)", force="use --force"
)


class Forced(msgspec.Struct, frozen=True):
    """A check overridden by force, for the audit log."""

    label: str
    check: str  # "identity" or "other_person"
    similarity: float
    threshold: float
    other_person: str | None = None


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


class _Known(msgspec.Struct, frozen=True):
    """What a photo added to a known person is checked against: their stored embeddings."""

    person_id: str
    name: str
    vectors: npt.NDArray[np.float32]  # (n, dim), unit rows
    mean: npt.NDArray[np.float32] | None  # L2-normalised mean; None with no embeddings


class PhotoEnroller:
    """Turns photos into a stored person (or more views of one), refusing what is unusable."""

    def __init__(
        self,
        gallery: Gallery,
        analyzer: FaceAnalyzer,
        validator: QualityValidator,
        *,
        thumbnails: bool = True,
        wording: Wording = CLI_WORDING,
    ) -> None:
        self.gallery = gallery
        self.analyzer = analyzer
        self.validator = validator
        self.thumbnails = thumbnails
        self.wording = wording

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
        face: int | None = None,
    ) -> EnrolResult:
        """New person `name`, or more photos of `person_id` (exactly one of the two).

        `face` (1-based, the detector's order) names the face to take from every photo instead
        of choosing it. `refused` carries photos the caller could not even read, to report them
        together; `photos` may be a generator that decodes each photo when it is reached (and
        adds to `refused` those it cannot), so that one decoded image is in memory at a time."""
        if (name is None) == (person_id is None):
            raise ValueError("give either a name (new person) or a person_id (add photos)")
        known = None if person_id is None else self._known(person_id)
        target_name = name if known is None else known.name
        warnings: list[str] = []
        checked: list[Refusal] = []
        accepted: list[tuple[str, Face]] = []
        forced: list[Forced] = []
        for label, image in photos:
            found, reason = self._check(
                label,
                image,
                known,
                accepted,
                number=face,
                force=force,
                warnings=warnings,
                forced=forced,
            )
            if found is None:
                checked.append(Refusal(label, reason))
            else:
                accepted.append((label, found))
        refusals = [*refused, *checked]
        warnings += self._consistency(accepted)
        if not accepted:
            return EnrolResult(None, target_name, 0, warnings, refusals)
        items = [
            NewEmbedding(
                vector=f.embedding,
                pose=pose_label(f.yaw, f.pitch),
                quality=quality_score(f),
                source=source,
            )
            for _, f in accepted
            if f.embedding is not None
        ]
        best = max((f for _, f in accepted), key=quality_score)
        thumb = thumbnail_jpeg(best) if self.thumbnails else None
        if person_id is None:
            assert name is not None
            try:
                # Checked again with the insert, under the gallery's writer lock: someone
                # another gate enrolled since the photos were checked is found too.
                person = self.gallery.create_person(
                    name, items, actor=actor, thumbnail=thumb, refuse_similar=not force
                )
            except DuplicatePersonError as exc:
                pid, other, similarity = exc.matches[0]
                what = f"matches {other} ({pid}) at similarity {similarity:.2f}"
                reason = f"already enrolled: {what}; {self.wording.force} to enrol anyway"
                refusals += [Refusal(label, reason) for label, _ in accepted]
                return EnrolResult(None, target_name, 0, warnings, refusals)
        else:
            person = self.gallery.add_embeddings(person_id, items, actor=actor, thumbnail=thumb)
        # Every forced check belongs to a stored photo (nothing is refused after forcing).
        # A row of its own, right after the photos' own transaction (the store's writes take
        # no extra detail).
        for f in forced:
            self.gallery.store.record(
                actor,
                "enrol_forced",
                person.id,
                photo=f.label,
                check=f.check,
                similarity=round(f.similarity, 4),
                threshold=f.threshold,
                other_person=f.other_person,
                force=True,
            )
        return EnrolResult(person.id, person.name, len(items), warnings, refusals)

    def _known(self, person_id: str) -> _Known:
        store = self.gallery.store
        person = store.person(person_id)
        vectors = store.vectors(person_id).matrix
        mean = None
        if len(vectors):
            total = vectors.mean(axis=0)
            norm = float(np.linalg.norm(total))
            mean = (total / norm).astype(np.float32) if norm > 0 else None
        return _Known(person.id, person.name, vectors, mean)

    def _check(
        self,
        label: str,
        image: ImageArray,
        known: _Known | None,
        accepted: list[tuple[str, Face]],
        *,
        number: int | None,
        force: bool,
        warnings: list[str],
        forced: list[Forced],
    ) -> tuple[Face | None, str]:
        try:
            found = photo_face(self.analyzer, image, number=number)
        except NoSuchFaceError as exc:
            return None, str(exc)
        face, choice = found.face, found.choice
        if face is None or face.embedding is None or choice is None:
            return None, "no face found"
        if choice.ambiguous:
            return None, f"{choice.reason}: crop the photo or {self.wording.face}"
        if found.count > 1 and number is None:
            warnings.append(f"{label}: {found.count} faces; used {choice.reason}")
        gate = self.validator.for_enrolment(face)
        if not gate.usable:
            return None, "; ".join(gate.reasons)
        if (copy := self._duplicate(face.embedding, known, accepted)) is not None:
            return None, copy
        threshold = self.gallery.settings.recognition.threshold
        if known is not None and known.mean is not None:
            similarity = float(face.embedding @ known.mean)
            if similarity < threshold:
                what = (
                    f"does not look like {known.name} ({known.person_id}): similarity"
                    f" {similarity:.2f} to their enrolled faces < threshold {threshold:.2f}"
                )
                if not force:
                    return None, f"{what}; if it is them, {self.wording.force}"
                warnings.append(f"{label}: {what}; added anyway (forced)")
                forced.append(Forced(label, "identity", similarity, threshold))
        exclude = None if known is None else known.person_id
        matches = self.gallery.similar_persons(face.embedding[None, :], exclude=exclude)
        if matches:
            top = matches[0]
            what = f"matches {top.name} ({top.person_id}) at similarity {top.similarity:.2f}"
            if not force:
                return None, f"already enrolled: {what}; {self.wording.force} to enrol anyway"
            warnings.append(f"{label}: {what}; enrolled anyway (forced)")
            limit = self.gallery.settings.recognition.duplicate_threshold
            forced.append(Forced(label, "other_person", top.similarity, limit, top.person_id))
        return face, ""

    def _duplicate(
        self,
        embedding: npt.NDArray[np.float32],
        known: _Known | None,
        accepted: list[tuple[str, Face]],
    ) -> str | None:
        """Why this face is one already stored or given (None when it is new)."""
        if known is not None and len(known.vectors):
            similarity = float(np.max(known.vectors @ embedding))
            if similarity >= DUPLICATE_SIMILARITY:
                return (
                    f"the same photo as one already stored for {known.name}"
                    f" ({known.person_id}): similarity {similarity:.4f}; nothing to add"
                )
        for other, f in accepted:
            if f.embedding is not None:
                similarity = float(f.embedding @ embedding)
                if similarity >= DUPLICATE_SIMILARITY:
                    return f"the same photo as {other} in this call: similarity {similarity:.4f}"
        return None

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
