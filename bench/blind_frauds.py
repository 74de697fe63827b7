"""How much of a test week no method can catch: the Handbook split's AP ceiling on one file.

    python bench/blind_frauds.py DATA.csv [DATA2.csv ...]

A scenario-2 fraud (a compromised terminal) whose terminal had no fraud at least `delay` (7) days
earlier, within the compromise span, is invisible: no label can exist yet and the simulator changes
nothing else about the transaction (../shared/reference/handbook.md, the scenarios). If those rank
at random and every other fraud ranked first, average precision would be at most the share of the
others. Test split as bench/beat_handbook.py: 2018-08-08..14, known cards from 2018-07-25.
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))
from zfraud.dataset import day_of, read_labelled  # noqa: E402
from zfraud.evaluate import known_compromised_mask  # noqa: E402

DAY_MS = 86_400_000


def blind(path: str, delay: int = 7, span_days: int = 35) -> tuple[int, int]:
    d = read_labelled(path)
    y = d["fraud"] == 1
    test = (d["day"] >= day_of("2018-08-08")) & (d["day"] <= day_of("2018-08-14"))
    known = known_compromised_mask(d["day"], d["card"], d["day"][y], d["card"][y], delay, day_of("2018-07-25"))
    sel = np.flatnonzero(test & ~known & y)
    f = np.flatnonzero(y)
    order = np.lexsort((d["ts_ms"][f], d["terminal"][f]))
    ft, fts = d["terminal"][f][order], d["ts_ms"][f][order]
    n_blind = 0
    for i in sel[d["scenario"][sel] == 2]:
        lo, hi = np.searchsorted(ft, d["terminal"][i], "left"), np.searchsorted(ft, d["terminal"][i], "right")
        t = fts[lo:hi]
        seen = (t <= d["ts_ms"][i] - delay * DAY_MS) & (t > d["ts_ms"][i] - span_days * DAY_MS)
        n_blind += not seen.any()
    return len(sel), n_blind


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    for path in sys.argv[1:]:
        n, b = blind(path)
        print(f"{path}: {n} test frauds, {b} invisible scenario-2 frauds ({b / n:.1%}); AP ceiling ~ {(n - b) / n:.3f}")
