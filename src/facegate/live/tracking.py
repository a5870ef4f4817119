"""Face tracks across frames: association, identity by vote, and the stability of unknowns.

- Association: greedy by box overlap (IoU); where a detection could belong to more than one
  track (people close or crossing), embeddings decide, and a detection whose embedding does not
  resemble a track's is never given that track however the boxes overlap.
- Identity: each identification of a track is a vote (a person, or "nobody") weighted by face
  size and quality; a track's identity settles when enough recent votes agree, so one blurry
  frame cannot flip a name.
- Scene cuts: when the picture changes at once (a camera cut, or most faces lost while new
  ones appear), the old tracks are frozen: no detection is ever associated with them again, so
  a name cannot jump to whoever stands where its face was. They expire as usual.
- Stability: the face's speed (centre movement plus change of size, in face widths per second,
  smoothed: walking past and walking up both count); a face that is
  usable, still and clear of the frame's edges accumulates stable time, and anything else
  resets it.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from facegate.settings import EngineSettings
from facegate.vision.face import BBox, Detection

MOTION_SMOOTHING = 0.5  # EMA factor per second-normalised update


def shape(det: Detection) -> tuple[float, ...]:
    """The five landmarks relative to the face box (0..1): how the face is turned and posed
    there. A face whose shape has not moved since it was identified still looks the same."""
    x1, y1, x2, y2 = det.bbox
    w, h = max(x2 - x1, 1.0), max(y2 - y1, 1.0)
    return tuple(v for x, y in det.landmarks for v in ((x - x1) / w, (y - y1) / h))


def drift(a: tuple[float, ...] | None, b: tuple[float, ...]) -> float:
    """How far a face's shape moved (the largest landmark shift, in box sizes); inf if unknown."""
    if a is None:
        return math.inf
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


def iou(a: BBox, b: BBox) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@dataclass
class Vote:
    person_id: str | None  # None: identified as nobody known (unknown or ambiguous)
    similarity: float  # best similarity seen for this probe
    weight: float


@dataclass
class Track:
    id: int
    bbox: BBox
    first_seen: float
    last_seen: float
    detection: Detection
    embedding: npt.NDArray[np.float32] | None = None
    embedded_at: float = -math.inf
    embedded_size: float = 0.0
    yaw: float | None = None
    pitch: float | None = None
    usable: bool = False  # passed the recognition gate at its last description
    votes: deque[Vote] = field(default_factory=deque)
    identity: str | None = None  # settled person id
    identity_similarity: float = 0.0
    settled_unknown: bool = False  # settled as nobody known
    best_similarity: float = -1.0  # best similarity to anyone, over the track's life
    # The latest identification of this face: its similarity to the settled identity (or to
    # the best candidate), and whether it agreed with the identity. A name is shown only
    # while the latest check agrees.
    checked_similarity: float | None = None
    confirmed: bool = False
    checked_shape: tuple[float, ...] | None = None  # `shape` of the face when last identified
    announced: bool = False  # person_recognized / unknown_person_detected sent
    greeted: str | None = None  # the person id announced on this track
    frozen: bool = False  # left behind by a scene cut: never associated again
    motion: float = 0.0  # smoothed face widths per second
    stable_since: float | None = None
    hits: int = 1

    @property
    def size(self) -> float:
        return min(self.bbox[2] - self.bbox[0], self.bbox[3] - self.bbox[1])

    @property
    def centre(self) -> tuple[float, float]:
        return ((self.bbox[0] + self.bbox[2]) / 2, (self.bbox[1] + self.bbox[3]) / 2)


class Tracker:
    """The live tracks of one video stream (the engine thread owns it)."""

    def __init__(self, settings: EngineSettings) -> None:
        self.settings = settings
        self.tracks: dict[int, Track] = {}
        self._next_id = 1

    # -- association -------------------------------------------------------------------------
    def live(self) -> list[Track]:
        """The tracks a detection may still be associated with (not frozen by a cut)."""
        return [t for t in self.tracks.values() if not t.frozen]

    def likely(self, det: Detection) -> Track | None:
        """The live track this detection most overlaps (at least `min_iou`), if any."""
        best, best_iou = None, self.settings.min_iou
        for track in self.live():
            overlap = iou(track.bbox, det.bbox)
            if overlap >= best_iou:
                best, best_iou = track, overlap
        return best

    def cut(self) -> int:
        """The scene changed at once: freeze every track. Returns how many were frozen."""
        live = self.live()
        for track in live:
            track.frozen = True
        return len(live)

    def replaces_faces(self, detections: Sequence[Detection], previous: Sequence[int]) -> bool:
        """Most of the faces of the previous frame (at least two) are gone while new faces
        appear elsewhere: a cut the picture alone may not show (same set, other people)."""
        prior = [self.tracks[t] for t in previous if t in self.tracks and not self.tracks[t].frozen]
        if len(prior) < 2:
            return False
        minimum = self.settings.min_iou
        lost = sum(1 for t in prior if all(iou(t.bbox, d.bbox) < minimum for d in detections))
        new = sum(1 for d in detections if all(iou(t.bbox, d.bbox) < minimum for t in self.live()))
        return lost * 2 > len(prior) and new > 0

    def ambiguous(self, detections: Sequence[Detection]) -> set[int]:
        """Indexes of detections that overlap more than one track, or share a track with
        another detection: these need embeddings to be associated safely."""
        minimum = self.settings.min_iou
        out: set[int] = set()
        per_track: dict[int, list[int]] = {}
        for i, det in enumerate(detections):
            hits = [t.id for t in self.live() if iou(t.bbox, det.bbox) >= minimum]
            if len(hits) > 1:
                out.add(i)
            for tid in hits:
                per_track.setdefault(tid, []).append(i)
        for members in per_track.values():
            if len(members) > 1:
                out.update(members)
        return out

    def associate(
        self,
        detections: Sequence[Detection],
        embeddings: dict[int, npt.NDArray[np.float32]],
        now: float,
    ) -> tuple[list[Track], list[Track]]:
        """Match detections to tracks; returns (tracks seen this frame in detection order,
        tracks created). `embeddings` holds the embeddings computed for some detections."""
        cfg = self.settings
        pairs: list[tuple[float, int, int]] = []
        for i, det in enumerate(detections):
            for track in self.live():
                overlap = iou(track.bbox, det.bbox)
                if overlap < cfg.min_iou:
                    continue
                score = overlap
                emb = embeddings.get(i)
                if emb is not None and track.embedding is not None:
                    similarity = float(emb @ track.embedding)
                    if similarity < cfg.min_track_similarity:
                        continue  # not this face, however the boxes overlap
                    score += similarity
                pairs.append((score, i, track.id))
        pairs.sort(reverse=True)
        assigned: dict[int, Track] = {}
        used: set[int] = set()
        for _, i, tid in pairs:
            if i in assigned or tid in used:
                continue
            assigned[i] = self.tracks[tid]
            used.add(tid)
        seen: list[Track] = []
        created: list[Track] = []
        for i, det in enumerate(detections):
            match = assigned.get(i)
            if match is None:
                match = Track(self._next_id, det.bbox, now, now, det)
                self._next_id += 1
                self.tracks[match.id] = match
                created.append(match)
            else:
                self._move(match, det, now)
            seen.append(match)
        return seen, created

    def _move(self, track: Track, det: Detection, now: float) -> None:
        dt = now - track.last_seen
        old_centre, old_size = track.centre, max(track.size, 1.0)
        track.bbox = det.bbox
        track.detection = det
        track.hits += 1
        if dt > 0:
            cx, cy = track.centre
            # Sideways movement and approach (the face growing or shrinking) both count.
            shift = math.hypot(cx - old_centre[0], cy - old_centre[1]) / old_size
            scale = abs(track.size - old_size) / old_size
            speed = (shift + scale) / dt
            alpha = 1.0 - math.exp(-dt / MOTION_SMOOTHING)
            track.motion = (1 - alpha) * track.motion + alpha * speed
        track.last_seen = now

    def expire(self, now: float) -> list[Track]:
        """Remove and return tracks not seen for `left_after_seconds`."""
        gone = [
            t for t in self.tracks.values() if now - t.last_seen >= self.settings.left_after_seconds
        ]
        for track in gone:
            del self.tracks[track.id]
        return gone

    # -- identity ------------------------------------------------------------------------------
    def forget_identity(self, track: Track) -> None:
        """Start the track's identification over (the gallery changed, or a cut)."""
        track.votes.clear()
        track.identity = None
        track.settled_unknown = False
        track.confirmed = False
        track.checked_similarity = None
        track.embedded_at = -math.inf

    def adopt(self, track: Track, person_id: str, similarity: float) -> None:
        """The track is this person (it was just registered): settled, confirmed."""
        track.votes.clear()
        track.votes.extend(Vote(person_id, similarity, 1.0) for _ in range(self.settings.min_votes))
        track.identity = person_id
        track.identity_similarity = similarity
        track.checked_similarity = similarity
        track.settled_unknown = False
        track.confirmed = True

    def vote(self, track: Track, person_id: str | None, similarity: float, weight: float) -> None:
        """Add one identification and settle the track's identity if the votes agree."""
        cfg = self.settings
        track.votes.append(Vote(person_id, similarity, weight))
        while len(track.votes) > cfg.vote_window:
            track.votes.popleft()
        track.best_similarity = max(track.best_similarity, similarity)
        total = sum(v.weight for v in track.votes) or 1.0
        tally: dict[str | None, list[Vote]] = {}
        for v in track.votes:
            tally.setdefault(v.person_id, []).append(v)
        leader, votes = max(tally.items(), key=lambda item: sum(v.weight for v in item[1]))
        share = sum(v.weight for v in votes) / total
        if len(votes) >= cfg.min_votes and share >= cfg.vote_share:
            if leader is None:
                track.settled_unknown = True
                track.identity = None
            else:
                track.identity = leader
                track.settled_unknown = False
                track.identity_similarity = max(v.similarity for v in votes)

    # -- stability -----------------------------------------------------------------------------
    def update_stability(self, track: Track, frame_size: tuple[int, int], now: float) -> float:
        """Seconds the track has been usable, still and clear of the edges (0 when not)."""
        cfg = self.settings
        h, w = frame_size
        margin_x, margin_y = cfg.edge_margin * w, cfg.edge_margin * h
        x1, y1, x2, y2 = track.bbox
        at_edge = x1 < margin_x or y1 < margin_y or x2 > w - margin_x or y2 > h - margin_y
        steady = track.usable and not at_edge and track.motion <= cfg.max_motion
        if not steady:
            track.stable_since = None
            return 0.0
        if track.stable_since is None:
            track.stable_since = now
        return now - track.stable_since
