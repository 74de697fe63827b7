"""The Fraud Detection Handbook's own baseline, run on one of our simulated files.

    python bench/handbook_baseline.py DATA.csv --train-from 2018-07-04 --train-to 2018-07-31 \\
        --test-from 2018-08-08 --test-to 2018-08-14 --delay 7 [--json] [--jobs 2] [--gbdt auto]

DATA.csv is in the book's raw schema, as written by `zfraud gen` (TRANSACTION_ID, TX_DATETIME,
CUSTOMER_ID, TERMINAL_ID, TX_AMOUNT, TX_TIME_SECONDS, TX_TIME_DAYS, TX_FRAUD, TX_FRAUD_SCENARIO).
What it does, following ../shared/reference/handbook.md (sections 2, 3.1, 3.3, 4):

1. The book's 15 features, on the whole file (numpy, vectorised with sorting, searchsorted and
   cumulative sums instead of the book's per-customer pandas rolling):
   TX_AMOUNT; TX_DURING_WEEKEND (weekday >= 5); TX_DURING_NIGHT (hour <= 6); per customer and
   n in {1, 7, 30}: number of transactions and mean amount in (t - n days, t], current
   transaction included; per terminal and n in {1, 7, 30}: number of transactions and fraud
   rate in (t - (delay + n) days, t - delay days], the rate being 0 when the window is empty.
   Rows of one customer (terminal) are ordered by time then TRANSACTION_ID; as in pandas, a
   transaction's customer window ends at itself, so a later one at the same second is not counted.
2. Train set: transactions with TX_DATETIME in [train-from 00:00, train-to + 1 day).
   Test set: transactions dated test-from .. test-to, less those of cards known to be compromised
   (zfraud.evaluate.known_compromised_mask with known_from_day = the day of train-from: a card
   with a fraud on a day in [train-from, d - delay - 1] is removed from test day d; this is the
   book's rule, training frauds plus the frauds of the day `delay + 1` days before each test day).
3. StandardScaler fitted on the train set, then the book's models, random_state=0 everywhere:
   - logistic: LogisticRegression() (book default, C=1);
   - random_forest: RandomForestClassifier(n_estimators=100, max_depth=20), the book's
     best-validation RF (Ch. 5.2, handbook.md 3.3);
   - gbdt: XGBClassifier(n_estimators=100, learning_rate=0.1, max_depth=3), the book's best
     test XGB for AP and CP@100 (Ch. 5.2), with tree_method='exact' and base_score=0.5, the
     settings under which current xgboost reproduces the book's numbers (handbook.md 3.1);
     if xgboost is not importable, LightGBM LGBMClassifier with the same n_estimators,
     learning_rate and max_depth (the report says which one ran).
4. AUC, AP and CP@100 (with removal of detected cards) of predict_proba[:, 1] on the test set,
   with zfraud.evaluate, plus recall per fraud scenario at the 100-cards-a-day budget.

`--known-from DATE` moves known_from_day (default train-from, the book's choice; with a train
period longer than the book's 7 days more cards are known, so the test set loses more
compromised cards and the CP@100 ceiling, also printed, drops). `--delay` is used both for the
terminal features' delay and for the test-set rule (the book uses 7 for both). Prints a table and
timings; with --json the last line is one JSON object: {"models": {"logistic": {...},
"random_forest": {...}, "gbdt": {...}}, "best": {"auc", "ap", "cp100"}, "tx": test transactions,
"frauds": test frauds, "cp100_ceiling", "train_tx", "train_frauds", "timings", ...}.
Needs numpy and scikit-learn, plus xgboost or lightgbm.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
import time
import warnings

import numpy as np

from zfraud.evaluate import evaluate, known_compromised_mask

DAY = 86_400
WINDOWS = (1, 7, 30)
FEATURES = (["TX_AMOUNT", "TX_DURING_WEEKEND", "TX_DURING_NIGHT"]
            + [f"CUSTOMER_ID_{q}_{n}DAY_WINDOW" for n in WINDOWS for q in ("NB_TX", "AVG_AMOUNT")]
            + [f"TERMINAL_ID_{q}_{n}DAY_WINDOW" for n in WINDOWS for q in ("NB_TX", "RISK")])
NUMERIC = ("TRANSACTION_ID", "CUSTOMER_ID", "TERMINAL_ID", "TX_AMOUNT", "TX_TIME_DAYS", "TX_FRAUD",
           "TX_FRAUD_SCENARIO")


def log(msg: str) -> None:
    print(msg, flush=True)


def check_data(path: str, first: str, last: str) -> None:
    """Exit with one line on stderr unless path is a readable CSV in time order (as `zfraud gen`
    writes it) whose transactions run from `first` or earlier to `last` or later (YYYY-MM-DD):
    cheaply, from its header, first and last lines, before anything is loaded or fitted."""
    try:
        with open(path, "rb") as f:
            lines = [f.readline(), f.readline()]
            f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
            lines.append((f.read().splitlines() or [b""])[-1])
    except OSError as e:
        sys.exit(f"Error: cannot read {path}: {e.strerror}")
    header, *rows = (line.decode("utf-8-sig", "replace").strip().split(",") for line in lines)
    try:
        i = header.index("TX_DATETIME")
        held = [_dt.date.fromisoformat(row[i][:10]).isoformat() for row in rows]
    except (ValueError, IndexError):
        sys.exit(f"Error: {path} has no transactions with a TX_DATETIME (a CSV written by `zfraud gen`)")
    if held[0] > first or held[1] < last:
        sys.exit(f"Error: {path} holds {held[0]} to {held[1]}; this split needs {first} to {last}")


def load(path: str) -> dict:
    """The columns needed, as numpy arrays; TX_DATETIME as int64 seconds since the epoch."""
    with open(path) as f:
        header = f.readline().strip().split(",")
    col = {name: i for i, name in enumerate(header)}
    missing = [c for c in NUMERIC + ("TX_DATETIME",) if c not in col]
    if missing:
        raise SystemExit(f"{path}: missing columns {missing}")
    num = np.loadtxt(path, delimiter=",", skiprows=1, usecols=[col[c] for c in NUMERIC],
                     dtype=np.float64, ndmin=2)
    out = {c: num[:, i] for i, c in enumerate(NUMERIC)}
    for c in ("TRANSACTION_ID", "CUSTOMER_ID", "TERMINAL_ID", "TX_TIME_DAYS", "TX_FRAUD",
              "TX_FRAUD_SCENARIO"):
        out[c] = out[c].astype(np.int64)
    dt = np.loadtxt(path, delimiter=",", skiprows=1, usecols=[col["TX_DATETIME"]], dtype="U19",
                    ndmin=1)
    out["TX_DATETIME"] = dt.astype("M8[s]").astype(np.int64)
    return out


def _window_starts(group: np.ndarray, t: np.ndarray, lags_s) -> tuple:
    """Sort by (group, t, tie) and, for each lag L, the sorted position of the first row of the same
    group with time > t - L. Returns (order, {L: starts}) with starts indexing the sorted rows."""
    _, g = np.unique(group, return_inverse=True)
    t0 = t - t.min()
    span = int(t0.max()) + max(lags_s) + 1          # keys of different groups never mix
    key = g.astype(np.int64) * span + t0
    order = np.argsort(key, kind="stable")          # rows come sorted by time, id: stable keeps it
    key = key[order]
    return order, {lag: np.searchsorted(key, key - lag, side="right") for lag in lags_s}


def features(d: dict, delay: int = 7) -> np.ndarray:
    """The book's 15 features (handbook.md 2.4 order), float64, one row per transaction."""
    n = d["TX_AMOUNT"].size
    t = d["TX_DATETIME"]
    # the file is sorted by TX_DATETIME then TRANSACTION_ID; make sure, so stable sorts tie by it
    pre = np.lexsort((d["TRANSACTION_ID"], t))
    if not np.array_equal(pre, np.arange(n)):
        inv = np.empty(n, dtype=np.int64)
        inv[pre] = np.arange(n)
        sub = {k: v[pre] for k, v in d.items()}
        return features(sub, delay)[inv]
    X = np.empty((n, len(FEATURES)), dtype=np.float64)
    amount = d["TX_AMOUNT"]
    X[:, 0] = amount
    days_since_epoch = np.floor_divide(t, DAY)
    X[:, 1] = ((days_since_epoch + 3) % 7 >= 5)      # 1970-01-01 was a Thursday (weekday 3)
    X[:, 2] = (np.mod(t, DAY) // 3600 <= 6)
    pos = np.arange(n)
    # customers: (t - w, t], current transaction included
    order, starts = _window_starts(d["CUSTOMER_ID"], t, [w * DAY for w in WINDOWS])
    csum = np.r_[0.0, np.cumsum(amount[order])]
    for j, w in enumerate(WINDOWS):
        s = starts[w * DAY]
        cnt = pos + 1 - s
        col = np.empty(n)
        col[order] = cnt
        X[:, 3 + 2 * j] = col
        col = np.empty(n)
        col[order] = (csum[pos + 1] - csum[s]) / cnt
        X[:, 4 + 2 * j] = col
    # terminals: (t - (delay + w), t - delay]
    lags = [delay * DAY] + [(delay + w) * DAY for w in WINDOWS]
    order, starts = _window_starts(d["TERMINAL_ID"], t, lags)
    fsum = np.r_[0, np.cumsum(d["TX_FRAUD"][order])]
    s_delay = starts[delay * DAY]
    for j, w in enumerate(WINDOWS):
        s = starts[(delay + w) * DAY]
        cnt = s_delay - s
        frauds = fsum[s_delay] - fsum[s]
        risk = np.divide(frauds, cnt, out=np.zeros(n), where=cnt > 0)
        col = np.empty(n)
        col[order] = cnt
        X[:, 9 + 2 * j] = col
        col = np.empty(n)
        col[order] = risk
        X[:, 10 + 2 * j] = col
    return X


def _day(s: str) -> np.datetime64:
    try:
        return np.datetime64(_dt.date.fromisoformat(s), "D")
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a YYYY-MM-DD date: {s!r}")


def make_models(jobs: int, which: str):
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    models = {
        "logistic": ("LogisticRegression(random_state=0)", LogisticRegression(random_state=0)),
        "random_forest": ("RandomForestClassifier(n_estimators=100, max_depth=20, random_state=0)",
                          RandomForestClassifier(n_estimators=100, max_depth=20, random_state=0,
                                                 n_jobs=jobs)),
    }
    gbdt = None
    if which in ("auto", "xgboost"):
        try:
            import xgboost
            gbdt = (f"xgboost {xgboost.__version__} XGBClassifier(n_estimators=100, learning_rate=0.1, "
                    "max_depth=3, tree_method='exact', base_score=0.5, random_state=0)",
                    xgboost.XGBClassifier(n_estimators=100, learning_rate=0.1, max_depth=3,
                                          tree_method="exact", base_score=0.5, random_state=0,
                                          n_jobs=jobs))
        except ImportError:
            if which == "xgboost":
                raise
    if gbdt is None:
        import lightgbm
        gbdt = (f"lightgbm {lightgbm.__version__} LGBMClassifier(n_estimators=100, learning_rate=0.1, "
                "max_depth=3, random_state=0)",
                lightgbm.LGBMClassifier(n_estimators=100, learning_rate=0.1, max_depth=3,
                                        random_state=0, n_jobs=jobs, verbose=-1))
    models["gbdt"] = gbdt
    return models


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", help="CSV in the book's raw schema (zfraud gen)")
    ap.add_argument("--train-from", type=_day, required=True)
    ap.add_argument("--train-to", type=_day, required=True)
    ap.add_argument("--test-from", type=_day, required=True)
    ap.add_argument("--test-to", type=_day, required=True)
    ap.add_argument("--delay", type=int, default=7, help="label delay in days (features and test rule)")
    ap.add_argument("--known-from", type=_day, default=None,
                    help="first day whose frauds count as known for the test-set removal "
                         "(default: --train-from, as in the book)")
    ap.add_argument("--k", type=int, default=100, help="cards checked per day for CP@k")
    ap.add_argument("--jobs", type=int, default=2, help="threads for the forest and the GBDT")
    ap.add_argument("--gbdt", choices=("auto", "xgboost", "lightgbm"), default="auto")
    ap.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    a = ap.parse_args(argv)
    if not (a.train_from <= a.train_to < a.test_from <= a.test_to):
        ap.error("need train-from <= train-to < test-from <= test-to")
    check_data(a.data, str(a.train_from), str(a.test_to))
    gap = int((a.test_from - a.train_to).astype(int)) - 1
    if gap != a.delay:
        log(f"note: {gap} day(s) between train-to and test-from, delay is {a.delay}")

    timings = {}
    t0 = time.perf_counter()
    d = load(a.data)
    timings["load_s"] = time.perf_counter() - t0
    log(f"loaded {d['TX_AMOUNT'].size:,} transactions in {timings['load_s']:.1f} s")

    t1 = time.perf_counter()
    X = features(d, a.delay)
    timings["features_s"] = time.perf_counter() - t1
    log(f"15 features in {timings['features_s']:.1f} s")

    # calendar day of each row and the day index (TX_TIME_DAYS) of a date
    date = (d["TX_DATETIME"] // DAY).astype("M8[D]")
    base = date - d["TX_TIME_DAYS"].astype("m8[D]")
    if base.size and not np.all(base == base[0]):
        raise SystemExit("TX_TIME_DAYS is not the day of TX_DATETIME counted from one start date")
    base0 = base[0]
    day_of = lambda x: int((x - base0).astype(int))  # noqa: E731
    tr = (date >= a.train_from) & (date <= a.train_to)
    te_all = (date >= a.test_from) & (date <= a.test_to)
    fraud = d["TX_FRAUD"] == 1
    te_idx = np.flatnonzero(te_all)
    known_from = a.train_from if a.known_from is None else a.known_from
    removed = known_compromised_mask(d["TX_TIME_DAYS"][te_idx], d["CUSTOMER_ID"][te_idx],
                                     d["TX_TIME_DAYS"][fraud], d["CUSTOMER_ID"][fraud],
                                     delay=a.delay, known_from_day=day_of(known_from))
    te_idx = te_idx[~removed]
    tr_idx = np.flatnonzero(tr)
    if tr_idx.size == 0 or te_idx.size == 0:
        raise SystemExit("empty train or test set: check the dates against the file")
    y_tr, y_te = d["TX_FRAUD"][tr_idx], d["TX_FRAUD"][te_idx]
    log(f"train {a.train_from}..{a.train_to}: {tr_idx.size:,} tx, {int(y_tr.sum()):,} frauds; "
        f"test {a.test_from}..{a.test_to} (days {day_of(a.test_from)}..{day_of(a.test_to)}): "
        f"{te_idx.size:,} tx, {int(y_te.sum()):,} frauds ({y_te.mean():.4f}), "
        f"{int(removed.sum()):,} tx of cards known compromised (frauds from {known_from}) removed")

    # the ceiling: CP@k of a perfect score (compromised cards available per day, capped at k)
    oracle = evaluate(d["TX_TIME_DAYS"][te_idx], d["CUSTOMER_ID"][te_idx], y_te, y_te.astype(float),
                      k=a.k)
    log(f"CP@{a.k} ceiling (perfect scores): {oracle['cp100']:.3f}, per day "
        + " ".join(f"{v:.2f}" for v in oracle["cp100_per_day"]))

    from sklearn.preprocessing import StandardScaler
    scaler = StandardScaler().fit(X[tr_idx])
    X_tr, X_te = scaler.transform(X[tr_idx]), scaler.transform(X[te_idx])

    results = {}
    for name, (desc, model) in make_models(a.jobs, a.gbdt).items():
        t2 = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.fit(X_tr, y_tr)
        fit_s = time.perf_counter() - t2
        t3 = time.perf_counter()
        p = model.predict_proba(X_te)[:, 1]
        pred_s = time.perf_counter() - t3
        r = evaluate(d["TX_TIME_DAYS"][te_idx], d["CUSTOMER_ID"][te_idx], y_te, p,
                     scenario=d["TX_FRAUD_SCENARIO"][te_idx], k=a.k)
        r.update(model=desc, fit_s=round(fit_s, 2), predict_s=round(pred_s, 2))
        msgs = sorted({f"{w.category.__name__}: {str(w.message).splitlines()[0]}" for w in caught})
        if msgs:
            r["warnings"] = msgs
        results[name] = r
        log(f"{name:14s} fit {fit_s:6.1f} s, predict {pred_s:5.1f} s  [{desc}]"
            + ("".join(f"\n    warning {m}" for m in msgs)))

    log("")
    log(f"{'model':14s} {'AUC':>6s} {'AP':>6s} {'CP@' + str(a.k):>7s}  recall@{a.k} cards/day by scenario")
    for name, r in results.items():
        rec = " ".join(f"s{s}={v:.3f}" for s, v in sorted(r.get("recall_by_scenario", {}).items()))
        log(f"{name:14s} {r['auc']:6.3f} {r['ap']:6.3f} {r['cp100']:7.3f}  {rec}")
    timings["total_s"] = time.perf_counter() - t0
    log(f"total {timings['total_s']:.1f} s")
    if a.json:
        out = {
            "models": results,
            "best": {m: max(r[m] for r in results.values()) for m in ("auc", "ap", "cp100")},
            "tx": int(te_idx.size),
            "frauds": int(y_te.sum()),
            "removed_known_tx": int(removed.sum()),
            "cp100_ceiling": oracle["cp100"],
            "train_tx": int(tr_idx.size),
            "train_frauds": int(y_tr.sum()),
            "split": {"train_from": str(a.train_from), "train_to": str(a.train_to),
                      "test_from": str(a.test_from), "test_to": str(a.test_to), "delay": a.delay,
                      "known_from": str(known_from),
                      "k": a.k},
            "data": os.path.abspath(a.data),
            "timings": {k: round(v, 2) for k, v in timings.items()},
        }
        print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
