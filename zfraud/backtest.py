"""Back-testing a model on labelled history through a real local mesh.

The whole file is streamed in event-time order through worker processes, one terminal bucket (4
hours) at a time, on zfraud.train's schedule: before bucket b the labels of bucket b - delay go to
their cards' owners (as `zfraud label` would, `delay` days late), then bucket b's transactions
are sent and every verdict is awaited. The verdicts dated in the test
range are then scored with the Fraud Detection Handbook's protocol (zfraud.evaluate): AUC ROC,
average precision and card precision@100, known-compromised cards removed from the test days and
detected cards removed on later days, plus recall per fraud scenario.
"""
from __future__ import annotations

import os
import time

import numpy as np

from . import protocol as P
from .client import Client, MeshError
from .dataset import date_of, read_labelled, refuse_repeated_ids, rows_between
from .evaluate import evaluate, known_compromised_mask
from .local import LocalMesh
from .model import check_delay, load_model
from .scoring import ahead_ts_ms
from .train import _capacity, label_schedule

TX = ("tx_id", "card", "terminal", "ts_ms", "amount")


def known_from_default(test_from: int, delay_days: int) -> int:
    """The Handbook's split: a 7-day training week ending `delay_days` before the test starts.
    Frauds from its first day on make a card known-compromised (handbook.md, 3.1)."""
    return test_from - delay_days - 7


def stream_with_labels(client: Client, data: dict, delay_days: int, batch: int = 4096, progress=None,
                       steps: slice = slice(None), check=None):
    """Send every transaction of `data` (time-sorted) bucket by bucket with labels revealed
    `delay_days` late; returns (score float32, decision uint8, model version per row or None).
    steps: only these steps of the schedule (zfraud.train.label_schedule), to stream a file in
    parts; the rows of the others stay NaN / REJECTED. check: called after each step is answered
    (to raise if the mesh is no longer what the scores need)."""
    n = len(data["tx_id"])
    score = np.full(n, np.nan, dtype=np.float32)
    decision = np.full(n, P.REJECTED, dtype=np.uint8)
    models = set()

    def collect(v, h):
        score[h["origin"]] = v["score"]
        decision[h["origin"]] = v["decision"]
        models.add(h.get("model"))
        if progress is not None:
            progress(len(v["tx_id"]))

    client.on_result = collect
    for s, e, reveal in label_schedule(data["ts_ms"], delay_days)[steps]:
        if reveal is not None:
            lo, hi = reveal
            client.label({k: data[k][lo:hi] for k in P.LABEL_NAMES})
        for lo in range(s, e, batch):
            hi = min(lo + batch, e)
            client.submit({k: data[k][lo:hi] for k in TX}, np.arange(lo, hi))
            client.poll(0)
        if not client.drain(120):
            when = np.datetime64(int(data["ts_ms"][s]), "ms")
            raise MeshError(f"transactions from {when}: the mesh did not answer within 120 s")
        if check is not None:
            check()
    client.on_result = None
    return score, decision, models


def _check_not_ahead(ts_ms: np.ndarray) -> None:
    """ValueError when the file holds rows the workers would reject as dated ahead of their clock
    (zfraud.scoring.MAX_AHEAD_MS): said once here, not as a back-test of rejected rows."""
    ahead = ahead_ts_ms()
    if len(ts_ms) and ts_ms[-1] >= ahead:
        first = int(np.searchsorted(ts_ms, ahead))
        raise ValueError(f"{len(ts_ms) - first:,} transactions, from {np.datetime64(int(ts_ms[first]) // 1000, 's')}, are dated "
                         f"more than 1 day ahead of this machine's clock, and workers reject those: back-test "
                         f"history, not the future (`zfraud gen --start` an earlier date)")


def _every_worker_running(mesh: LocalMesh) -> None:
    """MeshError if a worker of the back-test's mesh has exited. The client resends its batches to
    the others, so every row would still get a score, but the state of its cards (and its share
    of the terminal counts) went with it: the metrics would be of another run than the replay's."""
    for name, proc in mesh.procs.items():
        if proc.poll() is not None:
            raise MeshError(f"worker {name} of the back-test's mesh exited (status {proc.returncode}), and the "
                            f"state of its cards with it: the scores would no longer be a replay of the file, so no "
                            f"metric is given. Its log: {os.path.join(mesh.log_dir, name + '.log')}")


def backtest(path, model_path, test_from: int, test_to: int, delay_days: int = 7, workers: int = 2,
             known_from: int | None = None, k: int = 100, progress=None, data: dict | None = None) -> dict:
    """Run the back-test; dates are days since the epoch (inclusive). Returns the metrics."""
    t0 = time.perf_counter()
    data = data if data is not None else read_labelled(path)
    refuse_repeated_ids(data, path)
    test = rows_between(data, test_from, test_to, "test")
    known_from = known_from if known_from is not None else known_from_default(test_from, delay_days)
    fraud = data["fraud"] == 1
    known = known_compromised_mask(data["day"], data["card"], data["day"][fraud], data["card"][fraud],
                                   delay_days, known_from)
    sel = test & ~known  # the rows the metrics are of: said now if there are none, not after the whole stream
    if not sel.any():
        raise ValueError(f"no test transaction is left: all {int(test.sum()):,} on the test days are of cards known "
                         f"to be compromised (a fraud on them from {date_of(known_from)} on, --known-from)")
    model_path = os.path.abspath(model_path)  # the workers run in the mesh's own directory
    check_delay(load_model(model_path), delay_days, "this back-test")  # one clear error, not workers that fail to start
    _check_not_ahead(data["ts_ms"])
    extra = ["--model", model_path, "--delay", str(delay_days),
             "--cards", str(_capacity(data["card"])), "--terminals", str(_capacity(data["terminal"]))]
    with LocalMesh(workers, extra_args=extra) as mesh, Client(mesh.endpoint, deadline_s=30) as client:
        t1 = time.perf_counter()
        score, decision, models = stream_with_labels(client, data, delay_days, progress=progress,
                                                     check=lambda: _every_worker_running(mesh))
        stream_s = time.perf_counter() - t1
        resent, dead = client.resent, client.dead_lettered
    lost = int(np.isnan(score).sum())
    if lost:  # dead-lettered: a NaN score (evaluate refuses those) or rows left out of the metrics
        raise MeshError(f"{lost:,} of {len(score):,} transactions got no score ({dead:,} of them dead-lettered after "
                        f"every attempt failed, the others rejected by the workers): no metric is given")
    result = evaluate(data["day"][sel], data["card"][sel], data["fraud"][sel], score[sel].astype(np.float64),
                      scenario=data["scenario"][sel], k=k)
    counts = np.bincount(decision[sel], minlength=len(P.DECISIONS))  # of the rows scored, as the metrics
    result.update({
        "decisions": dict(zip(P.DECISIONS, counts.tolist())),
        "removed_known_tx": int((test & known).sum()),
        "known_from_day": known_from,
        "streamed_tx": len(score), "lost": lost, "resent": resent, "workers": workers,
        "models": sorted(m for m in models if m),
        "stream_tx_per_s": round(len(score) / stream_s, 1), "elapsed_s": round(time.perf_counter() - t0, 1),
    })
    return result
