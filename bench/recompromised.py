"""Frauds at terminals compromised a second time, and what they do to one file's comparison.

    python bench/recompromised.py DATA.csv [--json]

The simulator draws its compromised terminals uniformly every day (scenario 2), so now and then it
draws a terminal whose earlier compromise ended a few weeks before. The revealed labels then show a
compromise and its end, and no fraud since. zfraud's fraud-run features read exactly that ("the
compromise is over"); in the training weeks such a terminal served only genuine traffic afterwards,
so the model ranks it below ordinary traffic. A second compromise there is as invisible as a first
one for 7 days, but starts from a low score instead of the median. The book's features see only
the high 30-day risk, so its models rank the same frauds higher.

This script finds the episodes in the file (a terminal's scenario-2 frauds more than 27 days after
the start of its previous episode begin a new one), counts the re-compromises that start in each
week, and scores the split of bench/beat_handbook.py as bench/handbook_noise.py does: zfraud's
offline fit and the book's three models, with and without the test frauds of re-compromised
terminals. Needs the `train` and `bench` extras.
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from beat_handbook import SPLIT  # noqa: E402
from handbook_noise import day, fit_all, log  # noqa: E402

from zfraud.evaluate import evaluate  # noqa: E402

EPISODE_DAYS = 28  # the simulator's compromise length (handbook.md, scenario 2)


def episodes(terminal, days, scenario) -> tuple[np.ndarray, np.ndarray]:
    """For every row: the start day of its terminal's scenario-2 episode (-1 when the row is not a
    scenario-2 fraud) and whether that episode is the terminal's second or later."""
    start = np.full(terminal.size, -1, np.int64)
    again = np.zeros(terminal.size, bool)
    s2 = np.flatnonzero(scenario == 2)
    order = s2[np.lexsort((days[s2], terminal[s2]))]
    last_t, first = None, None
    for i in order:
        t, d = int(terminal[i]), int(days[i])
        if t != last_t:
            last_t, first, n = t, d, 0
        elif d > first + EPISODE_DAYS - 1:
            first, n = d, n + 1
        start[i], again[i] = first, n > 0
    return start, again


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", help="a CSV written by `zfraud gen`")
    ap.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    a = ap.parse_args(argv)
    d, test, scores = fit_all(a.data)
    start, again = episodes(d["terminal"], d["day"], d["scenario"])
    starts = np.unique(np.c_[d["terminal"][again], start[again]], axis=0)[:, 1] if again.any() else np.zeros(0)
    t0 = day(SPLIT["test_from"])
    weeks = (int(d["day"].max()) - int(d["day"].min()) + 1) / 7
    in_week = int(((starts >= t0) & (starts <= day(SPLIT["test_to"]))).sum())
    y = d["fraud"][test]
    hit = again[test] & (y == 1)
    print(f"re-compromises in the file: {starts.size} in {weeks:.0f} weeks ({starts.size / weeks:.2f} a week); "
          f"starting in the test week: {in_week}; their test frauds: {int(hit.sum())} of {int(y.sum())}")
    result = {"recompromises": int(starts.size), "weeks": round(weeks, 1), "in_test_week": in_week,
              "their_test_frauds": int(hit.sum()), "test_frauds": int(y.sum()), "models": {}}
    days, cards, sc = d["day"][test], d["card"][test], d["scenario"][test]
    print(f"{'model':<14} {'AUC / AP / CP@100, all test rows':>34} {'without those frauds':>26}")
    for name, s in scores.items():
        full = evaluate(days, cards, y, s, scenario=sc)
        k = ~hit
        rest = evaluate(days[k], cards[k], y[k], s[k])
        row = {m: [round(full[m], 4), round(rest[m], 4)] for m in ("auc", "ap", "cp100")}
        result["models"][name] = row
        print(f"{name:<14} {full['auc']:>14.4f} / {full['ap']:.4f} / {full['cp100']:.4f}"
              f" {rest['auc']:>12.4f} / {rest['ap']:.4f} / {rest['cp100']:.4f}")
    if a.json:
        print(json.dumps(result))
    log("(CP@100 without them drops those frauds' rows only; their cards stay in the ranking)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
