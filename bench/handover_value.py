"""What handing card state over is worth when the mesh changes in the middle of a test week.

    python bench/handover_value.py DATA.csv [--at 2018-08-08] [--json]

The split of bench/beat_handbook.py (train 2018-07-04..07-31, 7-day delay, test 2018-08-08..08-14,
known-compromised cards removed), zfraud's features and LightGBM fit as `zfraud train` makes them,
in process. The test week is scored three ways, each from the same replay of the file:

- unchanged: the features of a mesh that never changes. With the handover, a mesh that gains or
  loses a worker scores exactly this (tests/test_handover.py checks it bit for bit through real
  worker processes), so this is also "with handover";
- join, no handover: at --at (default: the test week's first hour) a third worker joins a mesh of
  two, and the cards it wins (about a third) start empty on it, as they did before zfraud
  handed cards over;
- leave, no handover: at --at one of two workers leaves and its cards (about a half) start empty
  on the other.

Terminal state is replicated and unaffected. Prints AUC, average precision and card precision@100
for each, and the difference from the unchanged mesh. Needs the `train` extra.
"""
import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import handbook_baseline as hb  # noqa: E402
from beat_handbook import SPLIT  # noqa: E402

from zfraud.dataset import read_labelled  # noqa: E402
from zfraud.evaluate import evaluate, known_compromised_mask  # noqa: E402
from zfraud.features import FULL, FeatureEngine  # noqa: E402
from zfraud.mesh import owners  # noqa: E402
from zfraud.train import _capacity, fit_gbdt, replay  # noqa: E402

# (name, member names before the change, after; the cards whose owner changes lose their state)
CHANGES = (("unchanged", None, None), ("join, no handover", ["w1", "w2"], ["w1", "w2", "w3"]),
           ("leave, no handover", ["w1", "w2"], ["w1"]))


def day(s: str) -> int:
    return int(np.datetime64(s, "D").astype(np.int64))


def replay_with_change(d: dict, keep: np.ndarray, delay: int, at_ms: int, before, after) -> tuple:
    """zfraud.train.replay, and before its first step at or after at_ms the cards whose owner
    differs between the member lists `before` and `after` are dropped (a new owner without their
    state). Returns (features of the rows where keep, cards dropped)."""
    e = FeatureEngine(FULL, delay, _capacity(d["card"]), _capacity(d["terminal"]))
    done, dropped = [0], [0]

    def after_step(rows: int) -> None:  # replay's progress callback: the next step starts at row done
        done[0] += rows
        if before is not None and not dropped[0] and done[0] < len(d["ts_ms"]) and d["ts_ms"][done[0]] >= at_ms:
            ids = e.card_ids()
            moved = owners(ids, before) != owners(ids, after)  # index into the same sorted names
            dropped[0] = len(e.take_cards(ids[moved]))

    return replay(d, keep, delay, engine=e, progress=after_step), dropped[0]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", help="a CSV written by `zfraud gen`")
    ap.add_argument("--at", default=SPLIT["test_from"], help="when the mesh changes (a date, or date and time)")
    ap.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    a = ap.parse_args(argv)
    hb.check_data(a.data, SPLIT["train_from"], SPLIT["test_to"])
    t0 = time.perf_counter()
    d = read_labelled(a.data)
    delay = int(SPLIT["delay"])
    at_ms = int(np.datetime64(a.at, "ms").astype(np.int64))
    train = (d["day"] >= day(SPLIT["train_from"])) & (d["day"] <= day(SPLIT["train_to"]))
    fraud = d["fraud"] == 1
    known = known_compromised_mask(d["day"], d["card"], d["day"][fraud], d["card"][fraud], delay,
                                   day(SPLIT["known_from"]))
    test = (d["day"] >= day(SPLIT["test_from"])) & (d["day"] <= day(SPLIT["test_to"])) & ~known
    if at_ms > int(d["ts_ms"][test].max()):
        sys.exit(f"--at {a.at} is after the test week: nothing to compare")
    y = d["fraud"][test]
    result, model = {"tx": int(test.sum()), "frauds": int(y.sum()), "at": a.at}, None
    print(f"{'mesh':<20} {'cards reset':>11} {'AUC':>7} {'AP':>7} {'CP@100':>7}   minus unchanged")
    for name, before, after in CHANGES:
        print(f"{name} ...", file=sys.stderr, flush=True)
        X, dropped = replay_with_change(d, train | test, delay, at_ms, before, after)
        in_train = train[train | test]
        if model is None:  # fitted once, on the unchanged replay (training ends before any change)
            model = fit_gbdt(X[in_train], d["fraud"][train], FeatureEngine(FULL).names, "handover", FULL,
                             "bench/handover_value.py")
        m = evaluate(d["day"][test], d["card"][test], y, model.predict_proba(X[~in_train]),
                     scenario=d["scenario"][test])
        row = {"cards_reset": dropped, **{k: round(m[k], 4) for k in ("auc", "ap", "cp100")}}
        base = result.get("unchanged", row)
        diff = {k: round(row[k] - base[k], 4) for k in ("auc", "ap", "cp100")}
        row["minus_unchanged"] = diff
        result[name] = row
        print(f"{name:<20} {dropped:>11,} {row['auc']:7.4f} {row['ap']:7.4f} {row['cp100']:7.4f}   "
              + " / ".join(f"{diff[k]:+.4f}" for k in ("auc", "ap", "cp100")))
    result["seconds"] = round(time.perf_counter() - t0, 1)
    print(f"({result['tx']:,} test transactions, {result['frauds']} frauds; {result['seconds']:.0f} s)")
    if a.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
