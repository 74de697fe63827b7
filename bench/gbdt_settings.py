"""Other LightGBM settings against `zfraud train`'s, on the validation folds of several files.

    python bench/gbdt_settings.py FILE [FILE ...] --try NAME='{"params": {...}, "rounds": N}' [--try ...]

Each file (written by `zfraud gen`) is replayed once through the workers' streaming features
(`zfraud train`'s replay, 7-day delay). Three folds per file, each 4 weeks of training and, after a
7-day gap, a test week with known-compromised cards removed, as in bench/beat_handbook.py:

    val2   train 2018-05-30..06-26, test 2018-07-04..07-10
    val1   train 2018-06-06..07-03, test 2018-07-11..07-17
    test   train 2018-07-04..07-31, test 2018-08-08..08-14   (the issue's split)

Settings are chosen on the two validation folds; the test weeks are shown only to report what the
choice does there. For each candidate: its mean change against zfraud.train.GBDT_PARAMS and
GBDT_ROUNDS in AUC, AP and CP@100 (and on how many folds it is up). A candidate is a JSON object:
"params" (merged over GBDT_PARAMS), "rounds", "bag" (models with seeds 0..bag-1, log-odds averaged).
Scores are LightGBM's own (the kernel's equal them: bench/RESULTS.md). About 10 s a fold and model.
Needs the `train` extra.
"""
import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from handbook_baseline import check_data  # noqa: E402
from kernel import require  # noqa: E402

from zfraud.dataset import day_of as day
from zfraud.dataset import read_labelled
from zfraud.evaluate import evaluate, known_compromised_mask
from zfraud.train import GBDT_PARAMS, GBDT_ROUNDS, replay

FOLDS = {"val2": ("2018-05-30", "2018-06-26", "2018-07-04", "2018-07-10"),
         "val1": ("2018-06-06", "2018-07-03", "2018-07-11", "2018-07-17"),
         "test": ("2018-07-04", "2018-07-31", "2018-08-08", "2018-08-14")}
METRICS = ("auc", "ap", "cp100")


def folds(path: str) -> list:
    """[(fold name, X_train, y_train, X_test, (days, cards, y) of the test rows)] of one file."""
    d = read_labelled(path)
    first, last = day(FOLDS["val2"][0]), day(FOLDS["test"][3])
    keep = (d["day"] >= first) & (d["day"] <= last)
    X = replay(d, keep, 7)
    cols = {k: d[k][keep] for k in ("day", "card", "fraud")}
    fraud = d["fraud"] == 1
    out = []
    for name, (a, b, c, e) in FOLDS.items():
        known = known_compromised_mask(d["day"], d["card"], d["day"][fraud], d["card"][fraud], 7, day(c) - 14)[keep]
        tr = (cols["day"] >= day(a)) & (cols["day"] <= day(b))
        te = (cols["day"] >= day(c)) & (cols["day"] <= day(e)) & ~known
        out.append((name, X[tr], cols["fraud"][tr], X[te], (cols["day"][te], cols["card"][te], cols["fraud"][te])))
    return out


def fit_score(X, y, Xt, cand: dict) -> np.ndarray:
    import lightgbm as lgb

    s = np.zeros(len(Xt))
    for b in range(cand.get("bag", 1)):
        params = {**GBDT_PARAMS, **cand.get("params", {})}
        params["seed"] = params.get("seed", 0) + b
        s += lgb.train(params, lgb.Dataset(X, y), cand.get("rounds", GBDT_ROUNDS)).predict(Xt, raw_score=True)
    return s


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", nargs="+", help="CSV files written by `zfraud gen`")
    ap.add_argument("--try", dest="tries", action="append", default=[], metavar="NAME=JSON",
                    help="a candidate (repeatable), e.g. lr015='{\"params\": {\"learning_rate\": 0.015}, \"rounds\": 800}'")
    a = ap.parse_args(argv)
    cands = {"shipped": {}}
    for t in a.tries:
        name, _, text = t.partition("=")
        try:
            cands[name] = json.loads(text)
        except ValueError as e:
            ap.error(f"--try {name}: not JSON: {e}")
    require("bench/gbdt_settings.py", "train", lightgbm="LightGBM")
    for path in a.data:  # every file, before the first is replayed
        check_data(path, FOLDS["val2"][0], FOLDS["test"][3])
    res = {n: {} for n in cands}  # candidate -> {(file, fold): (auc, ap, cp100)}
    t0 = time.perf_counter()
    for path in a.data:
        for fold, X, y, Xt, (days, cards, yt) in folds(path):
            for n, cand in cands.items():
                r = evaluate(days, cards, yt, fit_score(X, y, Xt, cand))
                res[n][path, fold] = tuple(r[m] for m in METRICS)
                print(f"{n:<12} {path} {fold}: AUC {r['auc']:.4f}  AP {r['ap']:.4f}  CP@100 {r['cp100']:.4f}  "
                      f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    print(f"{'candidate':<12} {'validation folds: AUC':>22} {'AP':>8} {'CP@100':>8} {'folds up':>10}   "
          f"{'test weeks: AUC':>16} {'AP':>8} {'CP@100':>8}   (mean change against the shipped settings)")
    for n in cands:
        d = {k: np.subtract(v, res["shipped"][k]) for k, v in res[n].items()}
        val = np.array([v for (_, fold), v in d.items() if fold != "test"])
        test = np.array([v for (_, fold), v in d.items() if fold == "test"])
        up = "/".join(str(int((val[:, j] > 0).sum())) for j in range(3))
        print(f"{n:<12} {val[:, 0].mean():+22.4f} {val[:, 1].mean():+8.4f} {val[:, 2].mean():+8.4f} {up:>10}   "
              f"{test[:, 0].mean():+16.4f} {test[:, 1].mean():+8.4f} {test[:, 2].mean():+8.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
