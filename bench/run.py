"""zfraud's scoreboard: every number measured side by side in one run, with ratios to baselines
measured in the same run (the machine is shared and noisy: absolute rates drift, ratios hold).

    python bench/run.py --quick --json-out r.json      # a couple of minutes
    python bench/run.py --json-out r.json              # the full sweep

Sections (keys of the JSON):
  kernel    zfraud's tree kernel against LightGBM's own predict, one thread (bench/kernel.py)
  mesh      end-to-end tx/s with 1, 2, 3 local workers across batch sizes (closed loop), and
            open-loop latency at fixed offered rates, timed per transaction from when it was due
  baseline  the seed's design: Twisted servers taking one JSON transaction per line and scoring
            it in plain Python; and the same servers calling zfraud's pipeline per transaction
  ceiling   the same pipeline (columns -> features -> kernel -> decisions) in one process with no
            messaging, one core; and raw ZeroMQ moving the same bytes with no work
  memory    bytes of worker state per card

All models are a 100-tree LightGBM model on the full zfraud-v6 feature set, trained here on the
Handbook simulator's data (zfraud.gen). Requires the `train` and `bench` extras.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import zmq

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "baselines"))

import kernel  # noqa: E402

from zfraud import Client  # noqa: E402
from zfraud import protocol as P  # noqa: E402
from zfraud.features import FULL, FeatureEngine  # noqa: E402
from zfraud.local import LocalMesh, free_port  # noqa: E402
from zfraud.model import load_model, save_model  # noqa: E402
from zfraud.scoring import Scorer  # noqa: E402
from zfraud.sockets import configure  # noqa: E402

TARGETS = {"speedup_vs_twisted": 30, "speedup_vs_twisted_kernel": 8, "efficiency": 0.4, "p99_ms_at_20k": 5.0,
           "bytes_per_card": 400, "speedup_vs_lightgbm": 4}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- data and model ---------------------------------------------------------------------------
def make_data(customers: int, terminals: int, days: int) -> dict:
    from zfraud.gen import generate

    g = generate(customers, terminals, days, seed=0)
    return {"tx_id": g["TRANSACTION_ID"].astype(np.uint64), "card": g["CUSTOMER_ID"].astype(np.uint64),
            "terminal": g["TERMINAL_ID"].astype(np.uint64),
            "ts_ms": g["TX_DATETIME"].astype("datetime64[ms]").astype(np.int64),
            "amount": g["TX_AMOUNT"].astype(np.float64), "fraud": g["TX_FRAUD"].astype(np.uint8)}


def make_model(data: dict, path: str, trees: int = 100) -> None:
    import lightgbm as lgb

    from zfraud.importers import from_lightgbm_text

    engine = FeatureEngine(FULL)
    X = np.vstack([engine.transform(chunk) for chunk in chunks(data, 4096)])
    params = {"objective": "binary", "num_leaves": 31, "learning_rate": 0.1, "verbose": -1, "num_threads": 2,
              "seed": 0, "min_data_in_leaf": 20}
    booster = lgb.train(params, lgb.Dataset(X, data["fraud"], feature_name=list(engine.names)), trees)
    save_model(from_lightgbm_text(booster.model_to_string(), version="bench-100", feature_set=FULL), path)


def chunks(data: dict, size: int, id_offset: int = 0):
    n = len(data["tx_id"])
    for lo in range(0, n, size):
        c = {k: data[k][lo:lo + size] for k in ("tx_id", "card", "terminal", "ts_ms", "amount")}
        if id_offset:
            c["tx_id"] = c["tx_id"] + np.uint64(id_offset)
        yield c


# -- sections ---------------------------------------------------------------------------------
def bench_kernel(quick: bool) -> dict:
    r = kernel.run(quick)
    return {"speedup_vs_lightgbm": r["speedup_vs_lightgbm"], "batch_256": r["batch_256"],
            "batch_4096": r["batch_4096"], "model": r["model"]}


def bench_ceiling(data: dict, model_path: str, batch: int = 1024, repeats: int = 3) -> dict:
    """The whole pipeline in this process, one core, no messaging: best of `repeats` passes over
    the data after one untimed pass, as the mesh's workers are warm (their tables' pages touched,
    their cards known) when their throughput is timed."""
    model = load_model(model_path)
    scorer = Scorer(model, features=FeatureEngine(FULL))
    for c in chunks(data, batch):
        scorer.score(c)
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        n = 0
        for c in chunks(data, batch):
            scorer.score(c)
            n += len(c["tx_id"])
        best = max(best, n / (time.perf_counter() - t0))
    return {"inprocess_tx_per_s": round(best, 1), "batch": batch}


def bench_zmq(batch: int = 1024, messages: int = 3000, window: int = 8) -> dict:
    """Raw ZeroMQ, DEALER -> ROUTER echo over loopback TCP, the same frames as a BATCH: records/s."""
    ctx = zmq.Context()
    router = configure(ctx.socket(zmq.ROUTER))
    port = free_port()
    router.bind(f"tcp://127.0.0.1:{port}")
    dealer = configure(ctx.socket(zmq.DEALER))
    dealer.connect(f"tcp://127.0.0.1:{port}")
    cols = next(chunks({"tx_id": np.arange(batch, dtype=np.uint64), "card": np.arange(batch, dtype=np.uint64),
                        "terminal": np.arange(batch, dtype=np.uint64), "ts_ms": np.arange(batch, dtype=np.int64),
                        "amount": np.ones(batch)}, batch))
    frames = P.batch_message(1, 0, cols)
    import threading

    def echo():
        for _ in range(messages):
            router.send_multipart(router.recv_multipart())

    t = threading.Thread(target=echo)
    t.start()
    t0 = time.perf_counter()
    sent = got = 0
    while got < messages:
        while sent < messages and sent - got < window:
            dealer.send_multipart(frames)
            sent += 1
        dealer.recv_multipart()
        got += 1
    elapsed = time.perf_counter() - t0
    t.join()
    dealer.close()
    router.close()
    ctx.term()
    return {"zmq_records_per_s": round(messages * batch / elapsed, 1), "zmq_batch": batch}


def bench_mesh(data: dict, model_path: str, workers_list, batches, rates, quick: bool) -> dict:
    out = {"throughput": {}, "latency": {}}
    run = 0
    for w in workers_list:
        with LocalMesh(w, extra_args=["--model", model_path]) as mesh, Client(mesh.endpoint) as c:
            for b in batches:
                run += 1
                s = c.stream(chunks(data, b, id_offset=run * 10**9))
                out["throughput"][f"{w}w_batch{b}"] = {"workers": w, "batch": b, "tx_per_s": s.tx_per_s,
                                                       "p50_ms": s.p50_ms, "p99_ms": s.p99_ms, "lost": s.lost}
                log(f"mesh {w} workers, batch {b}: {s.tx_per_s:,.0f} tx/s (lost {s.lost})")
            if w == 2:
                for rate in rates:
                    run += 1
                    n = int(rate * (3 if quick else 8))
                    sub = {k: v[:n] for k, v in data.items()}
                    s = c.stream(chunks(sub, 1024, id_offset=run * 10**9), rate=rate)
                    out["latency"][str(rate)] = {"offered_tx_per_s": rate, "achieved_tx_per_s": s.tx_per_s,
                                                 "p50_ms": s.p50_ms, "p99_ms": s.p99_ms, "p999_ms": s.p999_ms,
                                                 "lost": s.lost}
                    log(f"open loop {rate:,} tx/s: p50 {s.p50_ms} p99 {s.p99_ms} p99.9 {s.p999_ms} ms")
    two = [v for v in out["throughput"].values() if v["workers"] == 2]
    best = max(two, key=lambda v: v["tx_per_s"])
    out["tx_per_s"], out["best_batch"] = best["tx_per_s"], best["batch"]
    out["p99_ms_at_20k"] = out["latency"].get("20000", {}).get("p99_ms")
    out["by_workers"] = {w: max(v["tx_per_s"] for v in out["throughput"].values() if v["workers"] == w)
                         for w in workers_list}
    return out


def bench_baseline(data: dict, model_path: str, n: int, workers: int = 2) -> dict:
    from driver import drive

    out = {}
    sub = {k: v[:n] for k, v in data.items()}
    for mode in ("python", "kernel"):
        ports = [free_port() for _ in range(workers)]
        procs = [subprocess.Popen([sys.executable, os.path.join(HERE, "baselines", "twisted_server.py"),
                                   "--port", str(p), "--model", model_path, "--mode", mode],
                                  stdout=subprocess.PIPE, text=True) for p in ports]
        try:
            for p in procs:
                line = p.stdout.readline()
                if not line.startswith("ready"):
                    raise RuntimeError(f"baseline server did not start: {line!r}")
            r = drive(ports, chunks(sub, 4096))
        finally:
            for p in procs:
                p.kill()
                p.wait(10)
        out[mode] = r
        log(f"baseline {mode}: {r['tx_per_s']:,.0f} tx/s over {r['tx']:,} transactions")
    return out


def bench_memory() -> dict:
    e = FeatureEngine(FULL, card_capacity=1 << 16)
    return {"bytes_per_card": round(float(e.state.bytes_per_card), 1)}


# -- report -----------------------------------------------------------------------------------
def report(r: dict) -> str:
    checks = [
        ("kernel speed-up vs LightGBM (4096 rows)", r["kernel"]["speedup_vs_lightgbm"], ">=", TARGETS["speedup_vs_lightgbm"], "x"),
        ("mesh tx/s, 2 workers (best batch)", r["mesh"]["tx_per_s"], None, None, "tx/s"),
        ("open-loop p99 at 20 000 tx/s", r["mesh"]["p99_ms_at_20k"], "<", TARGETS["p99_ms_at_20k"], "ms"),
        ("speed-up over the seed's design", r["baseline"]["speedup_vs_twisted"], ">=", TARGETS["speedup_vs_twisted"], "x"),
        ("speed-up over the per-transaction kernel", r["baseline"]["speedup_vs_twisted_kernel"], ">=",
         TARGETS["speedup_vs_twisted_kernel"], "x"),
        (f"in-process ceiling, one core, batch {r['ceiling']['batch']}", r["ceiling"]["inprocess_tx_per_s"], None, None, "tx/s"),
        ("efficiency = mesh / (2 x ceiling)", r["ceiling"]["efficiency"], ">=", TARGETS["efficiency"], ""),
        ("raw ZeroMQ, same bytes, no work", r["ceiling"]["zmq_records_per_s"], None, None, "records/s"),
        ("worker state per card", r["memory"]["bytes_per_card"], "<=", TARGETS["bytes_per_card"], "bytes"),
    ]
    lines = ["| measure | value | target | met |", "|---|---:|---:|:---:|"]
    for name, value, op, target, unit in checks:
        met = "" if op is None or value is None else (
            "yes" if {"<": value < target, "<=": value <= target, ">=": value >= target}[op] else "**no**")
        shown = "n/a" if value is None else (f"{value:,.0f}" if value >= 1000 else f"{value:,.2f}")
        lines.append(f"| {name} | {shown} {unit} | {'' if op is None else f'{op} {target}'} | {met} |")
    lines += ["", "| workers | batch | tx/s | p50 ms | p99 ms |", "|---:|---:|---:|---:|---:|"]
    for v in r["mesh"]["throughput"].values():
        lines.append(f"| {v['workers']} | {v['batch']} | {v['tx_per_s']:,.0f} | {v['p50_ms']:.2f} | {v['p99_ms']:.2f} |")
    lines += ["", "| offered tx/s | achieved | p50 ms | p99 ms | p99.9 ms |", "|---:|---:|---:|---:|---:|"]
    for v in r["mesh"]["latency"].values():
        lines.append(f"| {v['offered_tx_per_s']:,} | {v['achieved_tx_per_s']:,.0f} | {v['p50_ms']:.2f} | "
                     f"{v['p99_ms']:.2f} | {v['p999_ms']:.2f} |")
    return "\n".join(lines)


def plot(r: dict, path: str) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for w in sorted({v["workers"] for v in r["mesh"]["throughput"].values()}):
        pts = sorted((v["batch"], v["tx_per_s"]) for v in r["mesh"]["throughput"].values() if v["workers"] == w)
        a.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{w} worker{'s' * (w > 1)}")
    a.axhline(r["baseline"]["python"]["tx_per_s"], ls="--", c="grey", label="seed design (Twisted, Python)")
    a.set(xscale="log", yscale="log", xlabel="batch size (transactions)", ylabel="tx/s", title="Throughput, closed loop")
    a.legend(fontsize=8)
    lat = sorted(r["mesh"]["latency"].values(), key=lambda v: v["offered_tx_per_s"])
    for q in ("p50_ms", "p99_ms", "p999_ms"):
        b.plot([v["offered_tx_per_s"] for v in lat], [v[q] for v in lat], marker="o", label=q.replace("_ms", ""))
    b.set(xscale="log", xlabel="offered load (tx/s)", ylabel="latency (ms)", title="Open-loop latency, 2 workers")
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a couple of minutes instead of the full sweep")
    ap.add_argument("--json-out", default=None, help="write the results as JSON here")
    ap.add_argument("--md-out", default=None, help="write the Markdown table here (default: print it)")
    ap.add_argument("--plot", default=None, help="write a PNG plot here (needs matplotlib)")
    args = ap.parse_args(argv)
    kernel.require("bench/run.py", "bench", lightgbm="LightGBM", twisted="Twisted")  # before measuring anything
    quick = args.quick
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        model_path = os.path.join(tmp, "bench-100.json")
        log("generating data (zfraud.gen) and training the 100-tree model")
        data = make_data(2000, 4000, 60 if quick else 120)
        make_model({k: v[:100_000] for k, v in data.items()}, model_path)
        log(f"{len(data['tx_id']):,} transactions")
        r = {"quick": quick}
        log("kernel vs LightGBM")
        r["kernel"] = bench_kernel(quick)
        log("mesh")
        # This process is the mesh's client, and LightGBM, scikit-learn and SciPy (imported above to
        # train the model and time the kernel) left ~90 000 GC-tracked objects in it: a full (gen-2)
        # collection took 35-65 ms here, and the bursts below promote enough objects to set one off
        # around their end, often in the first open-loop run: the client sent nothing meanwhile, and
        # that run's p99 / p99.9 measured this process's pause (27 / 54 ms at 5 000 tx/s), not the
        # mesh. Frozen, they are not scanned again; what the mesh section allocates still is.
        gc.collect()
        gc.freeze()
        r["mesh"] = bench_mesh(data, model_path, [1, 2, 3], [256, 1024, 4096] if quick else [64, 256, 1024, 4096, 8192],
                               [5000, 20000, 50000] if quick else [2000, 5000, 10000, 20000, 50000, 100000], quick)
        gc.unfreeze()  # the sections below as they were measured before
        # The ceiling at the batch size of the best 2-worker run, so that the efficiency compares
        # the same per-batch costs (a ceiling at a smaller batch made the efficiency exceed 1).
        log(f"ceiling: in-process pipeline, one core, batch {r['mesh']['best_batch']}")
        r["ceiling"] = bench_ceiling(data, model_path, batch=r["mesh"]["best_batch"])
        r["ceiling"].update(bench_zmq())
        log("baselines (Twisted)")
        r["baseline"] = bench_baseline(data, model_path, 20_000 if quick else 60_000)
        r["memory"] = bench_memory()
    b = r["baseline"]
    b["speedup_vs_twisted"] = round(r["mesh"]["tx_per_s"] / b["python"]["tx_per_s"], 1)
    b["speedup_vs_twisted_kernel"] = round(r["mesh"]["tx_per_s"] / b["kernel"]["tx_per_s"], 1)
    c = r["ceiling"]
    c["efficiency"] = round(r["mesh"]["tx_per_s"] / (2 * c["inprocess_tx_per_s"]), 3)
    r["elapsed_s"] = round(time.perf_counter() - t0, 1)
    r["targets"] = TARGETS
    md = report(r)
    if args.md_out:
        with open(args.md_out, "w") as f:
            f.write(md + "\n")
    print(md)
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(r, f, indent=1)
    if args.plot and plot(r, args.plot):
        log(f"plot written to {args.plot}")
    log(f"done in {r['elapsed_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
