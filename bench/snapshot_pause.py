"""How long a periodic snapshot stops a worker's scoring loop: written in the loop (the baseline,
what a worker still does at a clean stop) against forked to a child (zfraud.snapshots).

    python bench/snapshot_pause.py [--cards 262144] [--terminals 32768] [--tx 2000000] [--repeat 5]

Fills a zfraud-v6 FeatureEngine of the worker's default capacities with --tx random
transactions (about half of --cards distinct cards over 20,000 terminals), then saves it to a
temporary directory --repeat times each way, alternating. The pause of the baseline is the
whole save; the pause of the background save is the fork, and the child's write time is
reported beside it. Prints the medians and their ratio (both measured in this run).
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np

from zfraud.features import FULL, FeatureEngine
from zfraud.snapshots import BackgroundSave


def filled(cards: int, terminals: int, n: int) -> FeatureEngine:
    fe = FeatureEngine(FULL, 7, cards, terminals)
    rng = np.random.default_rng(0)
    t0 = 17_800 * 86_400_000
    for lo in range(0, n, 500_000):
        m = min(500_000, n - lo)
        fe.transform({"tx_id": np.arange(lo, lo + m, dtype=np.uint64),
                      "card": rng.integers(1, max(2, cards // 2), m).astype(np.uint64),
                      "terminal": rng.integers(0, min(terminals, 20_000), m).astype(np.uint64),
                      "ts_ms": t0 + (lo + np.arange(m, dtype=np.int64)) * 10, "amount": rng.uniform(1, 100, m)})
    return fe


def count(s: str) -> int:
    n = int(s)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cards", type=count, default=1 << 18,
                    help="card capacity of the state, in cards (default: %(default)s, a worker's); "
                         "the transactions use about half of them")
    ap.add_argument("--terminals", type=count, default=1 << 15,
                    help="terminal capacity of the state, in terminals (default: %(default)s, a worker's); "
                         "the transactions use up to 20,000")
    ap.add_argument("--tx", type=count, default=2_000_000,
                    help="random transactions put through the state before it is saved (default: %(default)s)")
    ap.add_argument("--repeat", type=count, default=5,
                    help="saves timed each way, in the loop and forked, alternating; the medians are printed "
                         "(default: %(default)s)")
    args = ap.parse_args(argv)
    for flag, n in (("--cards", args.cards), ("--terminals", args.terminals)):
        if n > 1 << 31:
            ap.error(f"argument {flag}: at most 2**31 (a state table's largest capacity), got {n}")
    if not hasattr(os, "fork"):
        print("this platform has no fork: snapshots are written in the loop there", file=sys.stderr)
        return 1
    try:
        fe = filled(args.cards, args.terminals, args.tx)
    except MemoryError:
        need = (args.cards * 400 + args.terminals * 10_200) / 2**30
        print(f"Error: out of memory: --cards {args.cards:,} and --terminals {args.terminals:,} need about "
              f"{need:.1f} GiB", file=sys.stderr)
        return 1
    ids = np.arange(1 << 20, dtype=np.uint64)  # the seen and labelled id memories, full
    info = fe.state_info()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "w.state.npz")

        def save():
            fe.save(path, {"seen": ids, "labels_seen": ids})

        inline, fork, write = [], [], []
        saver = BackgroundSave()
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            save()
            inline.append((time.perf_counter() - t0) * 1000)
            saver.start(save)
            done = saver.poll(block=True)
            assert done.ok, done.error
            fork.append(done.pause_ms)
            write.append(done.write_s * 1000)
        size = os.path.getsize(path) / 1e6
    a, b, w = (float(np.median(x)) for x in (inline, fork, write))
    print(f"state: {info['cards']:,} cards, {size:.0f} MB on disk; {args.repeat} saves each way, medians")
    print(f"scoring loop stopped by a save in the loop (baseline): {a:8.1f} ms")
    print(f"scoring loop stopped by a background save (the fork):  {b:8.1f} ms  (child's write {w:.0f} ms)")
    print(f"pause ratio, baseline / background: {a / b:.0f} x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
