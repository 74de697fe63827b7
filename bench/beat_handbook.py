"""zfraud against the Fraud Detection Handbook's own method, on one file, in one run.

    python bench/beat_handbook.py DATA.csv [--json]           # an existing `zfraud gen` file
    python bench/beat_handbook.py --gen --seed 1 [--json]      # generate one first

Both sides get the same split: train on 2018-07-04..2018-07-31, a 7-day label delay, test on
2018-08-08..2018-08-14, known-compromised cards (frauds from 2018-07-25 on, the book's one-week
rule) removed from the test days and detected cards removed on later days (zfraud.evaluate).
zfraud: `zfraud train --algo gbdt` then `zfraud backtest` through a real 2-worker mesh.
The book: bench/handbook_baseline.py (its 15 features, exact rolling windows; logistic
regression, random forest 100/20, XGBoost 100/0.1/3). Needs the `train` and `bench` extras.
"""
import argparse
import ctypes
import json
import os
import signal
import subprocess
import sys
import tempfile

import handbook_baseline as hb

HERE = os.path.dirname(os.path.abspath(__file__))
SPLIT = {"train_from": "2018-07-04", "train_to": "2018-07-31", "test_from": "2018-08-08", "test_to": "2018-08-14",
         "known_from": "2018-07-25", "delay": "7"}


def _stop_with(parent: int):
    """For the child, before it runs: SIGTERM from Linux when this script dies (PR_SET_PDEATHSIG),
    even by SIGKILL, or at once if it already has. A backtest and its workers outlived a killed
    script, for minutes."""
    def arm():
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGTERM)
    return arm


def _interrupt(signum, frame):
    stop = KeyboardInterrupt()  # SIGTERM, SIGHUP as Ctrl-C: run() stops the child, tmp is removed
    stop.status = 128 + signum
    raise stop


def run(cmd, cwd):
    """Run cmd in cwd (not the caller's: `python -m` puts its cwd first on sys.path, and from a
    source checkout that would import the uncompiled source tree instead of the installed zfraud).
    Interrupted, the child gets SIGTERM and up to 30 s to clean up (a backtest stops its workers
    and removes its mesh's directory), not subprocess.run's SIGKILL after 0.25 s."""
    print("$", " ".join(cmd), file=sys.stderr, flush=True)
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd,
                             preexec_fn=_stop_with(os.getpid()) if sys.platform == "linux" else None)
    try:
        out, err = child.communicate()
    except KeyboardInterrupt:
        child.terminate()
        try:
            child.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()
        raise
    if child.returncode != 0:
        sys.exit(f"failed ({child.returncode}): {' '.join(cmd)}\n{err[-2000:]}")
    return json.loads(out.strip().splitlines()[-1]) if "--json" in cmd else out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", nargs="?", help="a CSV written by `zfraud gen`")
    ap.add_argument("--gen", action="store_true", help="generate the data first (book scale)")
    ap.add_argument("--seed", type=int, default=0, help="simulator seed for --gen")
    ap.add_argument("--json", action="store_true", help="print the comparison as one JSON object (last line)")
    args = ap.parse_args(argv)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    if args.data is not None and not args.gen:  # before a minute of training
        hb.check_data(args.data, SPLIT["train_from"], SPLIT["test_to"])
    z = [sys.executable, "-m", "zfraud"]
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if args.gen or data is None:
            data = os.path.join(tmp, f"gen-seed{args.seed}.csv")
            run(z + ["gen", data, "--seed", str(args.seed)], tmp)
        path = os.path.abspath(data)  # the commands run in tmp
        model = os.path.join(tmp, "zfraud-gbdt.json")
        run(z + ["train", path, "--from", SPLIT["train_from"], "--to", SPLIT["train_to"], "--delay", SPLIT["delay"],
                 "--algo", "gbdt", "-o", model], tmp)
        ours = run(z + ["backtest", path, "--model", model, "--from", SPLIT["test_from"], "--to", SPLIT["test_to"],
                        "--delay", SPLIT["delay"], "--known-from", SPLIT["known_from"], "--json"], tmp)
        book = run([sys.executable, os.path.join(HERE, "handbook_baseline.py"), path, "--train-from", SPLIT["train_from"],
                    "--train-to", SPLIT["train_to"], "--test-from", SPLIT["test_from"], "--test-to", SPLIT["test_to"],
                    "--delay", SPLIT["delay"], "--known-from", SPLIT["known_from"], "--json"], tmp)
    rows = [("zfraud (gbdt, streaming features, real mesh)", ours)] + \
           [(f"book: {name}", m) for name, m in book["models"].items()]
    print(f"{'model':<46} {'AUC':>6} {'AP':>6} {'CP@100':>7}   recall@100 cards/day s1 s2 s3")
    for name, m in rows:
        rec = m.get("recall_by_scenario") or {}
        print(f"{name:<46} {m['auc']:6.3f} {m['ap']:6.3f} {m['cp100']:7.3f}   "
              + " ".join(f"{rec.get(k, float('nan')):.3f}" for k in ("1", "2", "3")))
    best = book["best"]
    delta = {k: round(ours[k] - best[k], 4) for k in ("auc", "ap", "cp100")}
    verdict = all(v > 0 for v in delta.values()) and delta["ap"] >= 0.03
    print(f"zfraud minus the book's best: AUC {delta['auc']:+.3f}, AP {delta['ap']:+.3f}, CP@100 {delta['cp100']:+.3f}"
          f" -> {'beats it on all three, AP by >= 0.03' if verdict else 'does NOT beat it on all three with AP +0.03'}")
    if args.json:
        print(json.dumps({"zfraud": {k: ours[k] for k in ("auc", "ap", "cp100", "tx", "frauds", "recall_by_scenario")},
                          "book": book["models"], "book_best": best, "delta": delta, "beats": verdict, "data": data}))
    return 0 if verdict else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt as e:
        print("interrupted", file=sys.stderr)
        sys.exit(getattr(e, "status", 130))
