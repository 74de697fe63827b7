"""Prometheus metrics for a worker (`zfraud worker --metrics-port PORT`; the `metrics` extra).

Updated once per scoring pass (a batch, or a run of queued batches scored together), never per
transaction, and the state once per heartbeat:

    zfraud_transactions_total{decision}   counter   verdicts by decision (approve/review/decline/rejected)
    zfraud_repeats_total                  counter   transactions seen before (resent), not re-added to state
    zfraud_batches_total                  counter   batches scored
    zfraud_batch_seconds                  histogram time of one scoring pass, from reading it to the RESULTs
    zfraud_members                        gauge     members this worker knows, itself included
    zfraud_cards                          gauge     cards whose state this worker holds
    zfraud_cards_handed_over_total        counter   cards handed to their new owner (acknowledged)
    zfraud_cards_taken_over_total         counter   cards taken over from the worker that held them
    zfraud_snapshot_failures_total        counter   state snapshots that could not be written
    zfraud_info{worker, model, rules}     gauge     1, labelled with what this worker runs
"""
from __future__ import annotations

from . import protocol as P


class Metrics:
    def __init__(self, port: int, worker: str, host: str = "127.0.0.1"):
        try:
            import prometheus_client as prom
        except ImportError:
            raise ValueError("--metrics-port needs prometheus-client: pip install 'zfraud[metrics]'") from None
        self.registry = prom.CollectorRegistry()
        r = self.registry
        self.transactions = prom.Counter("zfraud_transactions", "Verdicts by decision.", ["decision"], registry=r)
        self.repeats = prom.Counter("zfraud_repeats", "Transactions seen before (resent).", registry=r)
        self.batches = prom.Counter("zfraud_batches", "Batches scored.", registry=r)
        self.batch_seconds = prom.Histogram("zfraud_batch_seconds", "Seconds to score a batch (each of a pass takes its time).",
                                            registry=r,
                                            buckets=(1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 0.1, 1))
        self._members = prom.Gauge("zfraud_members", "Members known, this worker included.", registry=r)
        self._cards = prom.Gauge("zfraud_cards", "Cards whose state this worker holds.", registry=r)
        self._handed = prom.Counter("zfraud_cards_handed_over", "Cards handed to their new owner.", registry=r)
        self._taken = prom.Counter("zfraud_cards_taken_over", "Cards taken over from another worker.", registry=r)
        self.snapshot_failures = prom.Counter("zfraud_snapshot_failures", "State snapshots that could not be written.",
                                              registry=r)
        self._moved = (0, 0)  # (handed, taken) as of the last update
        self.info = prom.Gauge("zfraud_info", "What this worker runs.", ["worker", "model", "rules"], registry=r)
        self.worker = worker
        self._by_decision = [self.transactions.labels(d) for d in P.DECISIONS]
        try:
            self.server, self.thread = prom.start_http_server(port, addr=host, registry=r)
        except OSError as e:
            raise ValueError(f"cannot serve metrics on {host}:{port} (--metrics-port): {e.strerror}") from None

    def batch(self, counts, seconds: float, repeats: int, batches: int = 1) -> None:
        """One scoring pass: verdicts per decision, its time, repeated transactions, batches. The
        time is observed once per batch (each waited for the whole pass), so the histogram's count
        is zfraud_batches_total's."""
        for child, c in zip(self._by_decision, counts):
            if c:
                child.inc(c)
        if repeats:
            self.repeats.inc(repeats)
        self.batches.inc(batches)
        for _ in range(batches):
            self.batch_seconds.observe(seconds)

    def members(self, n: int) -> None:
        self._members.set(n)

    def cards(self, held: int, handed: int, taken: int) -> None:
        """Cards held, and the handover totals since start (the counters add what is new)."""
        self._cards.set(held)
        self._handed.inc(handed - self._moved[0])
        self._taken.inc(taken - self._moved[1])
        self._moved = (handed, taken)

    def running(self, model: str, rules: str) -> None:
        self.info.clear()
        self.info.labels(self.worker, model, rules).set(1)

    def close(self) -> None:
        self.server.shutdown()
