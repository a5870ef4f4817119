"""The liveness challenge through the live path, per person: real turns against photo attacks.

    .venv/bin/python bench/liveness_live.py [--persons 10] [--series 1 2] [--seed 0]

For each Pointing'04 person (enrolled from the other series' front and 15 deg images), an
Engine with the real faceplugin models and `[liveness] challenge = "known"` (defaults
otherwise: challenge_seconds 8, turn 25 deg, cut-off 0.128) is fed frame by frame at 10 fps
by a scripted subject that answers the challenge (tests/challenge_rig.py):
- real: the person's own images turning as asked to 45 deg (and, separately, to only 30 deg)
  and back, left and right;
- photo N: the frontal photo held up with hand shake and JPEG noise, turned as a plane to N
  deg (30, 45, 60) toward the asked side and back, again and again;
- moved: the frontal photo held flat, moved nearer, further and sideways;
- screen N: the frontal photo on a synthetic phone, turned to N deg (45, 60).

Printed: per person and subject, pass/total and the reasons of the failures; the pass rate of
real turns (and within 5 s), the reject rate of each attack; the planarity scores (residual)
of the real turns and of the attacks that reached the target pose; the passive model's
scores (uncalibrated) for real and attack front views. A few minutes per person.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import challenge_rig as cr
from facegate.identity.gallery import Gallery
from facegate.identity.store import Store
from facegate.settings import Settings, models_dir
from facegate.vision.analyzers import open_analyzer
from facegate.vision.passive_liveness import PassiveLiveness

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "pose" / "pointing04"


def subjects(person: cr.Pointing, seed: int) -> list[tuple[str, cr.Subject]]:
    out: list[tuple[str, cr.Subject]] = []
    for direction in ("left", "right"):
        out.append((direction, cr.RealTurn(person, 45)))
        turn30 = cr.RealTurn(person, 30)
        turn30.name = "real 30"
        out.append((direction, turn30))
        for i, angle in enumerate((30, 45, 60)):
            out.append((direction, cr.PhotoTurn(person, angle, seed + i)))
        for i, angle in enumerate((45, 60)):
            out.append((direction, cr.PhotoTurn(person, angle, seed + 10 + i, screen=True)))
    out.append(("left", cr.PhotoMoved(person, seed + 20)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--persons", type=int, default=10)
    parser.add_argument("--series", nargs="+", default=["2"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not DATA.is_dir():
        sys.exit(f"Pointing'04 not found at {DATA}")
    settings = cr.rig_settings("known")
    analyzer = open_analyzer(Settings())
    passive = PassiveLiveness(models_dir(Settings()) / "faceplugin")
    rows: dict[tuple[str, str], list[cr.Outcome]] = defaultdict(list)
    t0 = time.perf_counter()
    for n in range(1, args.persons + 1):
        identity = f"p04_person{n:02d}"
        for series in args.series:
            enrol_series = "1" if series == "2" else "2"
            person = cr.Pointing(DATA, identity, series)
            for direction, subject in subjects(person, args.seed + 100 * n):
                with tempfile.TemporaryDirectory() as tmp, Store.open(Path(tmp) / "d") as store:
                    gallery = Gallery.open(store, settings)
                    cr.enrol(gallery, analyzer, cr.Pointing(DATA, identity, enrol_series), "Pat")
                    rig = cr.Rig(
                        analyzer,
                        gallery,
                        settings,
                        choose=lambda _d, d=direction: d,
                        passive=passive.score,
                    )
                    rows[(identity, subject.name)].append(cr.run(rig, subject))
        print(f"{identity}: done ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    report(rows)


def report(rows: dict[tuple[str, str], list[cr.Outcome]]) -> None:
    names = sorted({s for _, s in rows}, key=lambda s: (not s.startswith("real"), s))
    persons = sorted({p for p, _ in rows})
    print("\n## Per person: passed / runs (failure reasons)\n")
    print("| person | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for p in persons:
        cells = []
        for s in names:
            outs = rows.get((p, s), [])
            passed = sum(o.passed for o in outs)
            reasons = Counter(o.result.reason if o.result else "none" for o in outs if not o.passed)
            why = ", ".join(f"{r} {c}" for r, c in sorted(reasons.items()))
            cells.append(f"{passed}/{len(outs)}" + (f" ({why})" if why else ""))
        print(f"| {p} | " + " | ".join(cells) + " |")
    print("\n## Totals\n")
    for s in names:
        outs = [o for (_, name), v in rows.items() if name == s for o in v]
        passed = sum(o.passed for o in outs)
        fast = sum(o.passed and o.result is not None and o.result.seconds <= 5.0 for o in outs)
        reasons = Counter(o.result.reason if o.result else "none" for o in outs)
        kind = "pass" if s.startswith("real") else "reject"
        rate = passed if kind == "pass" else len(outs) - passed
        extra = f", within 5 s {fast}/{len(outs)}" if kind == "pass" else ""
        print(
            f"- {s}: {kind} {rate}/{len(outs)} ({100 * rate / max(1, len(outs)):.1f}%){extra};"
            f" reasons {dict(sorted(reasons.items()))}"
        )
    print("\n## Planarity scores (the median over each challenge's turned views)\n")
    for s in names:
        vals = figures(rows, s, "residual")
        if vals:
            print(
                f"- {s}: n={len(vals)} min {min(vals):.3f} median {statistics.median(vals):.3f}"
                f" max {max(vals):.3f}"
            )
        else:
            print(f"- {s}: never reached the target pose")
    print("\n## Passive score (fr_liveness P(live) on the front view; uncalibrated)\n")
    for s in names:
        vals = figures(rows, s, "passive_score")
        if vals:
            print(f"- {s}: n={len(vals)} median {statistics.median(vals):.3f} min {min(vals):.3f}")


def figures(rows: dict[tuple[str, str], list[cr.Outcome]], subject: str, field: str) -> list[float]:
    """One figure of every `subject` run's liveness_result (where it has one)."""
    out = []
    for (_, name), outcomes in rows.items():
        for o in outcomes:
            value = None if o.result is None or name != subject else getattr(o.result, field)
            if value is not None:
                out.append(float(value))
    return out


if __name__ == "__main__":
    main()
