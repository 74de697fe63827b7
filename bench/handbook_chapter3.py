"""zfraud against the book's chapter-3 models as well as its tuned ones, on one or more files.

    python bench/handbook_chapter3.py FILE [FILE ...]

Issue 4 names "the book's own method ... as in the book's chapter 3". bench/handbook_baseline.py
(and so bench/beat_handbook.py) fits the book's tuned models of chapter 5 (random forest 100/20,
XGBoost 100/0.1/3), which beat chapter 3's defaults on most files. This script fits both sets on
the same 15 features and split, next to zfraud's offline fit (bench/handbook_noise.fit_all, which
equals the mesh's figures to four decimals), and prints zfraud minus the best of each set per
metric. Chapter 3 (../shared/reference/handbook.md 3.1): LogisticRegression(),
RandomForestClassifier() (100 trees, no depth limit) and XGBClassifier() with the defaults of the
xgboost the book ran (tree_method='exact', base_score=0.5; learning rate 0.3, depth 6, 100 trees),
all random_state=0. Needs the `train` and `bench` extras and xgboost. About 1-4 minutes a file.
"""
import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import handbook_baseline as hb  # noqa: E402
import handbook_noise as hn  # noqa: E402
from zfraud.evaluate import evaluate  # noqa: E402

METRICS = ("auc", "ap", "cp100")


def both_sets(jobs: int, which: str) -> dict:
    """The tuned models (as bench/handbook_baseline.py fits them) and chapter 3's, by name."""
    import xgboost
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    models = {f"tuned {k}": v for k, v in hb.make_models(jobs, which).items()}
    models["chapter3 logistic"] = ("LogisticRegression()", LogisticRegression(random_state=0))
    models["chapter3 random_forest"] = ("RandomForestClassifier()", RandomForestClassifier(random_state=0, n_jobs=jobs))
    models["chapter3 gbdt"] = ("XGBClassifier(tree_method='exact', base_score=0.5)",
                               xgboost.XGBClassifier(tree_method="exact", base_score=0.5, random_state=0, n_jobs=jobs))
    return models


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", nargs="+", help="CSV files written by `zfraud gen`")
    paths = ap.parse_args(argv).data
    for path in paths:  # all of them before the first fit
        hb.check_data(path, hn.SPLIT["train_from"], hn.SPLIT["test_to"])
    for path in paths:
        t0 = time.perf_counter()
        d, test, scores = hn.fit_all(path, both_sets)
        y = d["fraud"][test]
        r = {name: evaluate(d["day"][test], d["card"][test], y, s) for name, s in scores.items()}
        out = {"file": path, "seconds": round(time.perf_counter() - t0), "zfraud": {m: round(r["zfraud"][m], 4) for m in METRICS}}
        for group in ("tuned", "chapter3"):
            names = [n for n in r if n.startswith(group + " ")]
            best = {m: max(names, key=lambda n: r[n][m]) for m in METRICS}
            out[group] = {m: {"best": best[m].split(" ", 1)[1], "value": round(r[best[m]][m], 4),
                              "zfraud_minus": round(r["zfraud"][m] - r[best[m]][m], 4)} for m in METRICS}
            print(f"{os.path.basename(path)}: zfraud minus the book's {group} best: "
                  + ", ".join(f"{m} {out[group][m]['zfraud_minus']:+.4f} ({out[group][m]['best']})" for m in METRICS))
        print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
