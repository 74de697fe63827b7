"""How much of a test week no method can catch: the Handbook split's ceilings on one file.

    python bench/blind_frauds.py DATA.csv [DATA2.csv ...]

A scenario-2 fraud (a compromised terminal) whose terminal had no fraud at least `delay` (7) days
earlier, within the compromise span, is invisible: no label can exist yet and the simulator changes
nothing else about the transaction (../shared/reference/handbook.md, the scenarios). If those rank
at random and every other fraud ranked first, average precision would be at most the share of the
others. The ceilings printed score every other fraud first and the invisible frauds and the
genuine transactions in one random order (the mean over 5 orders, as any model that cannot see
them ranks them): what a perfect detector of the visible frauds would get on AUC, AP and CP@100.
Test split as bench/beat_handbook.py: 2018-08-08..14, known cards from 2018-07-25.
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import handbook_baseline as hb  # noqa: E402

from zfraud.dataset import day_of, read_labelled  # noqa: E402
from zfraud.evaluate import evaluate, known_compromised_mask  # noqa: E402

DAY_MS = 86_400_000


def blind(path: str, delay: int = 7, span_days: int = 35) -> tuple[int, int, dict]:
    """(test frauds, invisible ones, ceilings {auc, ap, cp100})."""
    d = read_labelled(path)
    y = d["fraud"] == 1
    test = (d["day"] >= day_of("2018-08-08")) & (d["day"] <= day_of("2018-08-14"))
    known = known_compromised_mask(d["day"], d["card"], d["day"][y], d["card"][y], delay, day_of("2018-07-25"))
    sel = np.flatnonzero(test & ~known & y)
    f = np.flatnonzero(y)
    order = np.lexsort((d["ts_ms"][f], d["terminal"][f]))
    ft, fts = d["terminal"][f][order], d["ts_ms"][f][order]
    invisible = []
    for i in sel[d["scenario"][sel] == 2]:
        lo, hi = np.searchsorted(ft, d["terminal"][i], "left"), np.searchsorted(ft, d["terminal"][i], "right")
        t = fts[lo:hi]
        seen = (t <= d["ts_ms"][i] - delay * DAY_MS) & (t > d["ts_ms"][i] - span_days * DAY_MS)
        if not seen.any():
            invisible.append(i)
    rows = np.flatnonzero(test & ~known)
    visible = y[rows] & ~np.isin(rows, invisible)
    runs = []
    for seed in range(5):
        score = np.random.default_rng(seed).random(len(rows)) + 2 * visible
        runs.append(evaluate(d["day"][rows], d["card"][rows], y[rows].astype(np.uint8), score))
    ceiling = {k: float(np.mean([r[k] for r in runs])) for k in ("auc", "ap", "cp100")}
    return len(sel), len(invisible), ceiling


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", nargs="+", help="CSV files written by `zfraud gen`")
    a = ap.parse_args(argv)
    for path in a.data:  # all of them before the first
        hb.check_data(path, "2018-07-25", "2018-08-14")
    for path in a.data:
        n, b, c = blind(path)
        print(f"{path}: {n} test frauds, {b} invisible scenario-2 frauds ({b / n:.1%}); ceilings with "
              f"them at random: AUC {c['auc']:.3f}, AP {c['ap']:.3f}, CP@100 {c['cp100']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
