"""Tree kernel throughput: zfraud's Cython kernel vs LightGBM's own predict, same model, same rows.

    python bench/kernel.py [--quick] [--json]

Trains a 200-tree, 31-leaf LightGBM binary model on synthetic card-fraud-like features (20 of
them: amounts, counts with many zeros, flags, ratios that are NaN without history), saves it as
a text model, imports it with zfraud.importers and reloads it into a lightgbm.Booster from the
same file. Then, for batches of 256 and 4096 float32 rows, it times alternately
- LightGBM: Booster.predict(X, num_threads=1),
- zfraud: TreeEnsemble.predict_proba(X) (probabilities) and TreeEnsemble.score(X)
  (probabilities and the top contributing feature, what a worker calls),
and reports rows/s (best and median of the repeats) and the speed-ups. Before timing it checks
that both give the same leaves and probabilities. Everything runs in one thread of one process,
so compare the ratios, which are measured side by side, rather than absolute numbers.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np

N_TREES, N_LEAVES, BATCHES = 200, 31, (256, 4096)
FEATURES = (
    "amount", "log_amount", "hour", "is_night", "is_weekend",
    "card_count_1h", "card_count_1d", "card_count_7d", "card_count_30d",
    "card_mean_amount_1d", "card_mean_amount_7d", "card_mean_amount_30d",
    "amount_to_card_mean_30d",
    "terminal_count_1d", "terminal_count_7d", "terminal_count_28d",
    "terminal_risk_1d", "terminal_risk_7d", "terminal_risk_28d",
    "seconds_since_last_tx",
)


def synthetic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(X float32 (n, 20), y int (n,)): card-fraud-like features and a ~5% fraud label."""
    rng = np.random.default_rng(seed)
    amount = rng.lognormal(3.5, 1.0, n)
    hour = rng.integers(0, 24, n).astype(float)
    rate = rng.gamma(2.0, 1.5, n)  # a card's activity level
    counts = [rng.poisson(rate * k) for k in (0.04, 1.0, 7.0, 30.0)]
    means = []
    for c, spread in zip(counts[1:], (0.6, 0.4, 0.3)):
        mean = amount * rng.lognormal(0.0, spread, n)
        means.append(np.where(c > 0, mean, np.nan))
    t_counts = [rng.poisson(lam, n) for lam in (3.0, 21.0, 84.0)]
    t_risk_level = rng.beta(0.3, 12.0, n)
    t_risk = [np.where(c > 0, rng.binomial(c, t_risk_level) / np.maximum(c, 1), np.nan) for c in t_counts]
    since_last = np.where(counts[3] > 0, rng.exponential(86400.0 / (rate + 0.1), n), np.nan)
    X = np.column_stack([
        amount, np.log1p(amount), hour, (hour <= 6).astype(float), rng.integers(0, 2, n) * (rng.random(n) < 0.3),
        *counts, *means, amount / means[2], *t_counts, *t_risk, since_last,
    ]).astype(np.float32)
    logit = (-4.2 + 1.1 * (amount > 150) + 0.9 * (hour <= 6) + 0.35 * np.minimum(counts[0], 4)
             + 1.8 * np.nan_to_num(np.log(X[:, 12]), nan=0.0).clip(0, 3) + 18.0 * np.nan_to_num(t_risk[1])
             - 0.4 * (since_last > 3600))
    y = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(int)
    return X, y


def train_model(path: str, n_rows: int) -> None:
    import lightgbm as lgb

    X, y = synthetic(n_rows, seed=0)
    params = dict(objective="binary", num_leaves=N_LEAVES, learning_rate=0.05, verbose=-1,
                  num_threads=1, seed=0, deterministic=True)
    booster = lgb.train(params, lgb.Dataset(X, y, feature_name=list(FEATURES)), N_TREES)
    booster.save_model(path)


def timed(fn, batches, inner: int) -> float:
    """Rows per second of `inner` calls of fn over the batches, one pass."""
    t0 = time.perf_counter()
    rows = 0
    for i in range(inner):
        b = batches[i % len(batches)]
        fn(b)
        rows += len(b)
    return rows / (time.perf_counter() - t0)


def run(quick: bool) -> dict:
    import lightgbm as lgb

    from zfraud.importers import from_lightgbm_text

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.txt")
        train_model(path, 20_000 if quick else 100_000)
        booster = lgb.Booster(model_file=path)
        model = from_lightgbm_text(path, version="bench")

    X, _ = synthetic(16 * 4096, seed=1)
    # Same model, same rows: leaves and probabilities must agree before anything is timed.
    leaves = booster.predict(X[:4096], pred_leaf=True, num_threads=1)
    exact = {"leaf_mismatches": int((model.predict_leaf(X[:4096]) != leaves).sum()),
             "max_abs_diff": float(np.abs(model.predict_proba(X) - booster.predict(X, num_threads=1)).max())}
    if exact["leaf_mismatches"] or exact["max_abs_diff"] > 1e-9:
        raise SystemExit(f"zfraud and LightGBM disagree: {exact}")

    repeats = 3 if quick else 9
    result = {"model": {"trees": model.n_trees, "leaves": N_LEAVES, "features": len(FEATURES),
                        "lightgbm": lgb.__version__}, "exact": exact, "repeats": repeats}
    for size in BATCHES:
        batches = [np.ascontiguousarray(X[i:i + size]) for i in range(0, len(X) - size + 1, size)][:16]
        inner = max(1, (20_000 if quick else 60_000) // size)
        runs = {"lightgbm": lambda b: booster.predict(b, num_threads=1),
                "zfraud_proba": model.predict_proba,
                "zfraud_score": model.score}
        for fn in runs.values():  # warm up
            fn(batches[0])
        rates = {k: [] for k in runs}
        for _ in range(repeats):  # alternate, so a noisy neighbour hits all three alike
            for k, fn in runs.items():
                rates[k].append(timed(fn, batches, inner))
        entry = {f"{k}_rows_per_s": {"best": round(max(v)), "median": round(statistics.median(v))}
                 for k, v in rates.items()}
        for k in ("zfraud_proba", "zfraud_score"):
            entry[f"speedup_{k.split('_')[1]}"] = round(max(rates[k]) / max(rates["lightgbm"]), 2)
            entry[f"speedup_{k.split('_')[1]}_median"] = round(
                statistics.median(rates[k]) / statistics.median(rates["lightgbm"]), 2)
        result[f"batch_{size}"] = entry
    result["speedup_vs_lightgbm"] = result["batch_4096"]["speedup_proba"]
    return result


def table(r: dict) -> str:
    lines = [f"model: {r['model']['trees']} trees x {r['model']['leaves']} leaves, "
             f"{r['model']['features']} features, LightGBM {r['model']['lightgbm']}; "
             f"exact: {r['exact']['leaf_mismatches']} leaf mismatches, "
             f"max |p - p_lgb| = {r['exact']['max_abs_diff']:.1e}",
             f"{'batch':>6} {'lightgbm rows/s':>16} {'zfraud proba':>14} {'speed-up':>9} "
             f"{'zfraud score':>14} {'speed-up':>9}   (best of {r['repeats']}; median ratio)"]
    for size in BATCHES:
        e = r[f"batch_{size}"]
        lines.append(
            f"{size:>6} {e['lightgbm_rows_per_s']['best']:>16,} {e['zfraud_proba_rows_per_s']['best']:>14,} "
            f"{e['speedup_proba']:>8.2f}x {e['zfraud_score_rows_per_s']['best']:>14,} {e['speedup_score']:>8.2f}x"
            f"   ({e['speedup_proba_median']:.2f}x, {e['speedup_score_median']:.2f}x)")
    lines.append(f"speed-up vs LightGBM at 4096 rows (predict_proba): {r['speedup_vs_lightgbm']:.2f}x")
    return "\n".join(lines)


def require(script: str, extra: str, **packages: str) -> None:
    """Exit with one line unless every module of `packages` (module=name) imports: the script
    needs them, named, and the pip command of pyproject.toml's extra that brings them."""
    missing = []
    for module, name in packages.items():
        try:
            __import__(module)
        except ImportError:
            missing.append(name)
    if missing:
        sys.exit(f"Error: {script} needs {' and '.join(missing)}: pip install 'zfraud[{extra}]'")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller training set, fewer repeats")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = ap.parse_args(argv)
    require("bench/kernel.py", "train", lightgbm="LightGBM")
    r = run(args.quick)
    print(json.dumps(r) if args.json else table(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
