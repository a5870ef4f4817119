"""Liveness by parallax: a real head turn against a photo or a screen turned as a plane.

    .venv/bin/python bench/liveness.py [--persons 10] [--seed 0]

For every Pointing'04 person (01-10) and series (1, 2), with the faceplugin analyzer's 68
landmarks (`facegate.vision.planarity`):

- real turns: the series' frontal image (yaw 0, pitch 0) -> the same series' image at yaw
  +-30, +-45 (pitch 0) and at pitch +-30 (yaw 0), each pasted in a 640x480 frame;
- attacks, made from that same frontal image (tests/spoofs.py), each frame with hand shake and
  JPEG re-encoding (quality 50-90), measured against a frame of the same thing held facing the
  camera:
  - photo: the photo turned as a plane to yaw +-15, 30, 45, 50, 60; pitch +-15, 30, 45, 60;
    and yaw +-45 with pitch +-30;
  - move: the photo held flat, scaled 0.7-1.4 and moved up to 15% of the frame;
  - screen: the photo on a synthetic phone (bezel, moire, gamma, blur) turned to yaw +-30,
    45, 60 and pitch +-30, 45.

Printed: how the candidate statistics separate real yaw turns from every attack (the one kept
in `facegate.vision.planarity` is the score on the inner points 17-67); per person, the score's
min/median/max for real turns and each attack family; the residual, foreshortening and score
per family; the pose the analyzer reads on the turned photos (a plane foreshortens instead of
turning: a photo turned 50 deg reads far less); the cut-off with the largest margin (midway in
log space between the attacks' highest score and the real yaw turns' lowest), and the pass
and reject rates there and at the module's CUTOFF_POINTING04. About half a minute.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # spoofs

import numpy as np
import numpy.typing as npt

import spoofs
from facegate.settings import load_settings
from facegate.vision import planarity as pl
from facegate.vision.analyzers import open_analyzer
from facegate.vision.face import FaceAnalyzer, ImageArray
from facegate.vision.images import read_image

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "pose" / "pointing04"
FRAME = (640, 480)
PASTE = (128, 96)  # where a 384x288 Pointing'04 image goes in the frame (as a webcam sees it)
PHOTO_SCALE = 1.25  # frame px per photo px: the printed face a little larger than the real one
SCREEN_SCALE = 1.1

REAL_YAW = [(-45, 0), (-30, 0), (30, 0), (45, 0)]
REAL_PITCH = [(0, -30), (0, 30)]
PHOTO_TURNS = (
    [(y, 0) for y in (-60, -50, -45, -30, -15, 15, 30, 45, 50, 60)]
    + [(0, p) for p in (-60, -45, -30, -15, 15, 30, 45, 60)]
    + [(y, p) for y in (-45, 45) for p in (-30, 30)]
)
SCREEN_TURNS = [(y, 0) for y in (-60, -45, -30, 30, 45, 60)] + [(0, p) for p in (-45, -30, 30, 45)]
MOVES = 4
FAMILIES = ("real yaw", "real pitch", "photo", "move", "screen")
ATTACKS = ("photo", "move", "screen")
# A challenge's pose window: the turned view must read at least this far in the asked
# direction (for the "would the pose check alone stop it" count).
POSE_WINDOW = 25.0
LISTED = 20  # attacks above the cut-off listed, highest first

Points = npt.NDArray[np.float32]


@dataclass
class Pair:
    family: str
    person: str
    series: str
    target: tuple[int, int]  # (yaw, pitch) asked (real) or turned (attack), degrees
    front: Points
    turned: Points
    read: tuple[float, float]  # (yaw, pitch) the analyzer reads on the turned view

    def planarity(self, points: Sequence[int] = pl.INNER) -> pl.Planarity:
        return pl.planarity(self.front, self.turned, points)


class Looker:
    """Landmarks (and pose) of the largest face in a frame; counts frames with none."""

    def __init__(self, analyzer: FaceAnalyzer) -> None:
        self.analyzer = analyzer
        self.missed: dict[str, int] = defaultdict(int)
        self.seen: dict[str, int] = defaultdict(int)

    def __call__(
        self, frame: ImageArray, family: str, pose: bool = False
    ) -> tuple[Points, tuple[float, float]] | None:
        self.seen[family] += 1
        detections = [d for d in self.analyzer.detect(frame) if d.dense_landmarks is not None]
        if not detections:
            self.missed[family] += 1
            return None
        det = detections[0]
        assert det.dense_landmarks is not None
        read = (math.nan, math.nan)
        if pose:
            face = self.analyzer.describe(frame, det, embed=False, pose=True)
            read = (face.yaw or 0.0, face.pitch or 0.0)
        return det.dense_landmarks, read


def pasted(img: ImageArray) -> ImageArray:
    frame = np.full((FRAME[1], FRAME[0], 3), 60, np.uint8)
    x, y = PASTE
    frame[y : y + img.shape[0], x : x + img.shape[1]] = img
    return frame


def held(
    shown: ImageArray,
    yaw: float,
    pitch: float,
    rng: np.random.Generator,
    *,
    scale: float,
    back: ImageArray,
) -> ImageArray:
    """`shown` held up at (yaw, pitch), with hand shake and JPEG re-encoding."""
    return spoofs.perspective_warp(
        shown, yaw, pitch, rng, shake=True, jpeg_noise=True, scale=scale, background=back
    )


def collect(look: Looker, persons: int, seed: int) -> list[Pair]:
    with (DATA / "manifest.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    paths = {
        (r["identity"], r["series"], int(r["yaw"]), int(r["pitch"])): DATA / r["path"] for r in rows
    }
    people = sorted({r["identity"] for r in rows})[:persons]
    pairs: list[Pair] = []
    for n, person in enumerate(people):
        for series in ("1", "2"):
            rng = np.random.default_rng([seed, n, int(series)])
            photo = read_image(paths[(person, series, 0, 0)])
            real_front = look(pasted(photo), "real front")
            if real_front is not None:
                for family, poses in (("real yaw", REAL_YAW), ("real pitch", REAL_PITCH)):
                    for yaw, pitch in poses:
                        path = paths.get((person, series, yaw, pitch))
                        got = look(pasted(read_image(path)), family, pose=True) if path else None
                        if got is not None:
                            pairs.append(
                                Pair(family, person, series, (yaw, pitch), real_front[0], *got)
                            )
            for family, shown, scale, turns in (
                ("photo", photo, PHOTO_SCALE, PHOTO_TURNS),
                ("screen", spoofs.on_screen(photo, rng), SCREEN_SCALE, SCREEN_TURNS),
            ):
                back = spoofs.backdrop(rng)
                front = look(held(shown, 0, 0, rng, scale=scale, back=back), family + " front")
                if front is None:
                    continue
                for yaw, pitch in turns:
                    got = look(
                        held(shown, yaw, pitch, rng, scale=scale, back=back), family, pose=True
                    )
                    if got is not None:
                        pairs.append(Pair(family, person, series, (yaw, pitch), front[0], *got))
                if family == "photo":
                    for _ in range(MOVES):
                        moved = spoofs.scaled_translated(
                            photo, rng, shake=True, jpeg_noise=True, background=back
                        )
                        got = look(moved, "move", pose=True)
                        if got is not None:
                            pairs.append(Pair("move", person, series, (0, 0), front[0], *got))
        print(f"  {person}: {len(pairs)} pairs so far", file=sys.stderr, flush=True)
    return pairs


def table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def spread(values: Sequence[float], fmt: str = ".3f") -> str:
    if not values:
        return "-"
    return (
        f"{min(values):{fmt}} / {statistics.median(values):{fmt}} / {max(values):{fmt}}"
        f" ({len(values)})"
    )


def margin_cutoff(real: Sequence[float], attacks: Sequence[float]) -> tuple[float, float]:
    """(cut-off, margin): midway in log space between the attacks' max and the real turns'
    min, and their ratio (a margin < 1 is an overlap: then the cut-off is midway between the
    attacks' 99th percentile and the real turns' min, see `robust_cutoff`)."""
    lo, hi = max(attacks), min(real)
    if hi > lo:
        return math.sqrt(lo * hi), hi / lo
    return robust_cutoff(real, attacks), hi / lo


def robust_cutoff(real: Sequence[float], attacks: Sequence[float]) -> float:
    """Midway in log space between the attacks' 99th percentile and the real turns' min."""
    return math.sqrt(float(np.percentile(attacks, 99)) * min(real))


# -- candidate statistics ----------------------------------------------------------------------
def plain_residual(pair: Pair) -> float:
    """The brief's first form: RMS error / the turned landmarks' box diagonal."""
    f = pl.landmarks(pair.front, "front")
    t = pl.landmarks(pair.turned, "turned")
    h = pl.fit_homography(f, t)
    rms = math.sqrt(float(((pl.project(h, f) - t) ** 2).sum(axis=1).mean()))
    width, height = np.ptp(t, axis=0)
    return rms / math.hypot(width, height)


def with_floor(floor: float, points: Sequence[int]) -> Callable[[Pair], float]:
    def score(pair: Pair) -> float:
        p = pair.planarity(points)
        return p.residual / (floor + p.foreshortening)

    return score


VARIANTS: list[tuple[str, Callable[[Pair], float]]] = [
    ("residual / turned box diagonal (all 68)", plain_residual),
    ("residual (all 68)", lambda p: p.planarity(pl.ALL).residual),
    ("residual (inner 17-67)", lambda p: p.planarity().residual),
    ("score, floor 0.1 (all 68)", with_floor(0.1, pl.ALL)),
    ("score, floor 0.2 (all 68)", with_floor(0.2, pl.ALL)),
    ("score, floor 0.3 (all 68)", with_floor(0.3, pl.ALL)),
    ("score, floor 0.1, inner 17-67", with_floor(0.1, pl.INNER)),
    ("score, floor 0.2, inner 17-67 [kept]", with_floor(pl.FORESHORTENING_FLOOR, pl.INNER)),
    ("score, floor 0.3, inner 17-67", with_floor(0.3, pl.INNER)),
    ("score, floor 0.2, jaw + nose", with_floor(0.2, pl.JAW + pl.NOSE)),
    ("score, floor 0.2, no mouth 0-47", with_floor(0.2, pl.JAW + pl.BROWS + pl.NOSE + pl.EYES)),
    ("score, floor 0.2, nose + eyes 27-47", with_floor(0.2, pl.NOSE + pl.EYES)),
]


def variants(pairs: list[Pair]) -> str:
    rows = []
    for name, fn in VARIANTS:
        values: dict[str, list[float]] = defaultdict(list)
        for pair in pairs:
            values[pair.family].append(fn(pair))
        real = values["real yaw"]
        attacks = [v for f in ATTACKS for v in values[f]]
        pitch = values["real pitch"]
        cut, margin = margin_cutoff(real, attacks)
        p1, p99 = float(np.percentile(real, 1)), float(np.percentile(attacks, 99))
        rows.append(
            [
                name,
                f"{min(real):.4f}",
                f"{max(attacks):.4f}",
                f"{margin:.2f}",
                f"{p1 / p99:.2f}",
                f"{np.mean(np.array(real) >= cut):.3f}",
                f"{np.mean(np.array(attacks) < cut):.3f}",
                f"{np.mean(np.array(pitch) >= cut):.2f}",
            ]
        )
    return table(
        [
            "statistic",
            "real yaw min",
            "attacks max",
            "margin (min/max)",
            "p1 real / p99 attacks",
            "real yaw pass",
            "attacks rejected",
            "real pitch pass",
        ],
        rows,
    )


# -- the kept statistic ------------------------------------------------------------------------
def scores(pairs: list[Pair]) -> dict[int, pl.Planarity]:
    return {id(p): p.planarity() for p in pairs}


def per_person(pairs: list[Pair], result: dict[int, pl.Planarity]) -> str:
    people = sorted({p.person for p in pairs})
    rows = []
    for person in people:
        mine = [p for p in pairs if p.person == person]
        by = {f: [result[id(p)].score for p in mine if p.family == f] for f in FAMILIES}
        attacks = [v for f in ATTACKS for v in by[f]]
        margin = min(by["real yaw"]) / max(attacks) if by["real yaw"] and attacks else math.nan
        rows.append(
            [person.removeprefix("p04_"), *(spread(by[f]) for f in FAMILIES), f"{margin:.2f}"]
        )
    return table(["person", *FAMILIES, "margin"], rows)


def per_family(pairs: list[Pair], result: dict[int, pl.Planarity]) -> str:
    rows = []
    for family in FAMILIES:
        mine = [result[id(p)] for p in pairs if p.family == family]
        rows.append(
            [
                family,
                spread([r.residual for r in mine], ".4f"),
                spread([r.tilt for r in mine], ".0f"),
                spread([r.score for r in mine]),
            ]
        )
    return table(
        ["family", "residual min / median / max", "tilt (deg)", "score min / median / max"], rows
    )


def per_angle(pairs: list[Pair], result: dict[int, pl.Planarity]) -> str:
    rows = []
    for family in ("real yaw", "real pitch", "photo", "screen"):
        targets = sorted({p.target for p in pairs if p.family == family})
        for target in targets:
            mine = [p for p in pairs if p.family == family and p.target == target]
            rows.append(
                [
                    family,
                    f"{target[0]:+d} / {target[1]:+d}",
                    spread([p.read[0] for p in mine], "+.0f"),
                    spread([p.read[1] for p in mine], "+.0f"),
                    spread([result[id(p)].tilt for p in mine], ".0f"),
                    spread([result[id(p)].score for p in mine]),
                ]
            )
    return table(
        [
            "family",
            "turned yaw / pitch (deg)",
            "yaw read min / med / max",
            "pitch read",
            "tilt of the fit",
            "score",
        ],
        rows,
    )


def reaches(pair: Pair) -> bool:
    """The read pose reaches POSE_WINDOW in the direction turned (the challenge's (a))."""
    yaw, pitch = pair.target
    ry, rp = pair.read
    if yaw:
        return math.copysign(1.0, yaw) * ry >= POSE_WINDOW
    if pitch:
        return math.copysign(1.0, pitch) * rp >= POSE_WINDOW
    return abs(ry) >= POSE_WINDOW or abs(rp) >= POSE_WINDOW


def rates(pairs: list[Pair], result: dict[int, pl.Planarity], cutoff: float) -> str:
    rows = []
    for family in FAMILIES:
        mine = [p for p in pairs if p.family == family]
        live = [not pl.is_planar(result[id(p)], cutoff) for p in mine]
        reached = [reaches(p) for p in mine]
        both = [a and b for a, b in zip(live, reached, strict=True)]
        real = family.startswith("real")
        rows.append(
            [
                family,
                str(len(mine)),
                f"{np.mean(live):.3f} pass" if real else f"{1 - np.mean(live):.3f} rejected",
                f"{np.mean(reached):.2f}",
                f"{np.mean(both):.3f} pass" if real else f"{1 - np.mean(both):.3f} rejected",
            ]
        )
    return table(
        [
            "family",
            "pairs",
            f"parallax check at {cutoff:.4f}",
            f"pose reads >= {POSE_WINDOW:g} deg toward the turn",
            "both (pose window and parallax)",
        ],
        rows,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--persons", type=int, default=10, help="Pointing'04 persons (1-10)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the attack generators")
    args = parser.parse_args()
    if not (DATA / "manifest.csv").is_file():
        sys.exit(f"Pointing'04 not found at {DATA} (../shared/data beside the repo)")
    started = time.perf_counter()
    look = Looker(open_analyzer(load_settings(environ={})))
    pairs = collect(look, args.persons, args.seed)
    collected = time.perf_counter() - started
    result = scores(pairs)
    real = [result[id(p)].score for p in pairs if p.family == "real yaw"]
    attacks = [result[id(p)].score for p in pairs if p.family in ATTACKS]
    cutoff, margin = margin_cutoff(real, attacks)

    print("== Faces found (frames without a face are skipped)")
    print(
        table(
            ["frames", "seen", "no face"],
            [[k, str(look.seen[k]), str(look.missed[k])] for k in sorted(look.seen)],
        )
    )
    print("\n== Candidate statistics: real yaw turns (+-30, +-45) against every attack")
    print(variants(pairs))
    print("\n== The kept score per person (both series): min / median / max (count)")
    print(per_person(pairs, result))
    print("\n== Residual, tilt of the fitted homography and score per family")
    print(per_family(pairs, result))
    print("\n== Per angle: the pose the analyzer reads on the turned view, the fit's tilt, score")
    print(per_angle(pairs, result))
    p99 = float(np.percentile(attacks, 99))
    verdict = (
        f"separated: real yaw min {min(real):.4f} / attacks max {max(attacks):.4f} = "
        f"margin {margin:.2f}; cut-off midway in log space {cutoff:.4f}"
        if margin > 1
        else f"OVERLAP: real yaw min {min(real):.4f} < attacks max {max(attacks):.4f} "
        f"(ratio {margin:.2f}); attacks' 99th percentile {p99:.4f} (margin "
        f"{min(real) / p99:.2f}); cut-off midway in log space between the two {cutoff:.4f}"
    )
    print(f"\n== Cut-off on the score: {verdict}")
    print(rates(pairs, result, cutoff))
    if abs(cutoff - pl.CUTOFF_POINTING04) > 1e-4:
        print(f"\n== At the module's CUTOFF_POINTING04 = {pl.CUTOFF_POINTING04}")
        print(rates(pairs, result, pl.CUTOFF_POINTING04))
    over = sorted(
        (p for p in pairs if p.family in ATTACKS and not pl.is_planar(result[id(p)])),
        key=lambda p: -result[id(p)].score,
    )
    print(f"\n== Attacks at or above CUTOFF_POINTING04 = {pl.CUTOFF_POINTING04}: {len(over)}")
    for p in over[:LISTED]:
        r = result[id(p)]
        print(
            f"  {p.person} series {p.series} {p.family} turned {p.target}: score {r.score:.3f}"
            f" (residual {r.residual:.4f}, tilt {r.tilt:.0f}), reads yaw {p.read[0]:+.0f}"
            f" pitch {p.read[1]:+.0f}{'' if reaches(p) else ': short of the pose window'}"
        )
    if len(over) > LISTED:
        print(f"  ... and {len(over) - LISTED} more")
    total = time.perf_counter() - started
    print(f"\n({len(pairs)} pairs; {collected:.0f} s analysing, {total:.0f} s in all)")


if __name__ == "__main__":
    main()
