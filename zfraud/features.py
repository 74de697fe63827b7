"""Feature sets: from a batch's transaction columns to the float32 matrix a model scores.

A feature set has a name (stored in every model file) and an ordered tuple of feature names.

- "basic-v1": amount, log amount, hour, night, weekend. Stateless.
- "zfraud-v4" (the default for trained models): basic-v1, then per-card windows (counts and
  average amounts over 1, 7 and 30 days, the amount relative to the card's own 7- and 30-day
  averages, time since the card's previous transaction, the card's recent peak amount ratio),
  then per-terminal counts and fraud risk over 1, 7 and 30 days shifted back by the label delay,
  in 4-hour buckets, two averages derived from the card windows, and the terminal's fraud run
  (TerminalState.read_runs: the confirmed frauds in the terminal's latest stretch of buckets
  that all had fraud, and the days since it began). It contains the Fraud Detection Handbook's
  15 inputs (../shared/reference/handbook.md, section 2) computed online, plus the card-relative
  and run features the book lacks. The windows' exact semantics are in ext/state.pyx.
  History: zfraud-v1 had daily terminal buckets, which missed up to a day of labels that were
  already `delay` days old (the 4-hour buckets of v2 raised average precision by 0.01-0.02 on
  `zfraud gen` data). v3 added card_peak_amount_ratio_7d: the largest of the card's earlier amounts
  relative to its 8-30-day average, decayed over 7 days, so that the spends after a compromised
  card's first large one stand out (+0.005 to +0.006 AP on the test weeks of two `zfraud gen`
  seeds; chosen on earlier validation weeks, docs/ARCHITECTURE.md section 3). v4 added the
  terminal fraud run, which tells a compromised terminal from a one-off fraud and says how long
  the compromise has lasted (+0.009 to +0.030 AP on six validation folds of three `zfraud gen`
  files; +0.008 to +0.015 on their test weeks through the mesh).

The loops live in ext/features.pyx and ext/state.pyx; this module checks inputs, allocates and calls.
"""
from __future__ import annotations

import numpy as np

from . import _features
from .state import (CARD_FEATURES, RUN_FEATURES, TERMINAL_FEATURES, FeatureState, TerminalState,
                    check_finite_amount, load_npz, mix_keys, save_npz, update_mask_u8)

BASIC = "basic-v1"
FULL = "zfraud-v4"
BASIC_FEATURES = tuple(_features.BASIC_NAMES)
# Derived from the card windows (in ext/features.pyx, window_features): the card's average amount
# over days 8..30 back (before the most recent week, so a fresh compromise does not inflate it)
# and the amount relative to it. NaN when the card has no transaction in that span (trees and the
# logistic kernel handle NaN).
DERIVED_FEATURES = ("card_avg_amount_8_30d", "amount_over_card_avg_8_30d")
FEATURE_SETS = {
    BASIC: BASIC_FEATURES,
    FULL: BASIC_FEATURES + CARD_FEATURES + TERMINAL_FEATURES + DERIVED_FEATURES + RUN_FEATURES,
}
TERMINAL_BUCKET_HOURS = 4
MAX_SOURCES = 16   # source slots per terminal table: this worker and up to 15 peers
FIRST_SOURCES = 4  # slots allocated at first; doubled (up to MAX_SOURCES) when peers need more


class FeatureEngine:
    """Turns transaction columns into features, keeping the streaming state a feature set needs.

    In a mesh each worker counts its own transactions at each terminal in its own slot (0) and
    merges every peer's counts into a slot of their own (a G-counter: max per bucket), so the
    sum over slots is the terminal's whole traffic. Confirmed frauds are counted the same way,
    in a second table: each label is applied by exactly one worker (the card's owner) and
    reaches the others as that worker's counts, so no fraud is counted twice however the
    messages interleave. Slots are local: a peer's slot number here means nothing to the peer."""

    def __init__(self, feature_set: str = BASIC, delay_days: int = 7, card_capacity: int = 1 << 18,
                 terminal_capacity: int = 1 << 15):
        if feature_set not in FEATURE_SETS:
            hint = "; retrain the model with `zfraud train`" if str(feature_set).startswith("zfraud-v") else ""
            raise ValueError(f"unknown feature set {feature_set!r} (this zfraud computes "
                             f"{', '.join(FEATURE_SETS)}){hint}")
        self.feature_set = feature_set
        self.names = FEATURE_SETS[feature_set]
        self.state = None
        self.delay_days = delay_days
        if feature_set == FULL:
            self.state = FeatureState(card_capacity, terminal_capacity, delay_days, source_slot=0,
                                      max_sources=FIRST_SOURCES, terminal_days=max(40, delay_days + 31),
                                      terminal_bucket_hours=TERMINAL_BUCKET_HOURS)
            t = self.state.terminals
            self.frauds = TerminalState(t.capacity, FIRST_SOURCES, t.days, t.bucket_hours)  # frauds per source slot
        self.sources: dict[str, int] = {}  # peer name -> local terminal slot (1..MAX_SOURCES-1)

    def transform(self, columns: dict, update=None) -> np.ndarray:
        """columns: TX_COLUMNS arrays of one batch (rows valid, in event-time order within a card)
        -> (n, len(names)) float32. update: bool per row, False for a transaction already counted
        (read without adding it again); default all True."""
        ts = np.ascontiguousarray(columns["ts_ms"], dtype=np.int64)
        amount = np.ascontiguousarray(columns["amount"], dtype=np.float64)
        n = len(ts)
        out = np.empty((n, len(self.names)), dtype=np.float32)
        if self.state is None:
            _features.basic_features(ts, amount, out)
            return out
        # The state's kernels are called directly (FeatureState's methods check and mix keys
        # per call): a small batch is mostly per-call cost.
        check_finite_amount(amount)
        mask = update_mask_u8(update, n)
        cards = mix_keys(columns["card"])
        terminals = mix_keys(columns["terminal"])
        s = self.state
        card = np.empty((n, len(CARD_FEATURES)), dtype=np.float32)
        s.cards.update_and_read(cards, ts, amount, mask, card)
        s.terminals.add_tx(terminals, ts, s.source_slot, mask)
        term = np.empty((n, len(TERMINAL_FEATURES)), dtype=np.float32)
        s.terminals.read(terminals, ts, self.delay_days, term)  # counts; its risk columns are not used
        frauds = np.empty_like(term)
        self.frauds.read(terminals, ts, self.delay_days, frauds)
        runs = np.empty((n, len(RUN_FEATURES)), dtype=np.float32)
        s.terminals.read_runs(self.frauds, terminals, ts, self.delay_days, runs)
        # Terminal risk = frauds / transactions; the derived card averages: see window_features.
        _features.window_features(ts, amount, card, term, frauds, runs, _N7, _AVG7, _N30, _AVG30, out)
        return out

    # -- shared state ------------------------------------------------------------------------
    def apply_labels(self, terminal, ts_ms, fraud) -> int:
        """Confirmed labels, deduplicated by transaction id, applied here only (in a mesh: by the
        card's owner). Frauds count towards terminal risk on their transaction's day."""
        if self.state is None:
            return 0
        hit = np.asarray(fraud).astype(bool)
        if hit.any():
            self.frauds.add_tx(mix_keys(np.asarray(terminal)[hit]), np.ascontiguousarray(np.asarray(ts_ms)[hit],
                                                                                         dtype=np.int64), 0)
        return int(hit.sum())

    def export_intel(self, since=0) -> dict | None:
        """This worker's own terminal transaction and fraud counts changed since `since`: 0 for
        all, or the "version" an earlier export returned (one version per table)."""
        if self.state is None:
            return None
        tx_since, fr_since = since if since else (0, 0)
        bucket_hours = self.frauds.bucket_hours
        tx_key, tx_bucket, tx_count, tx_version = self.state.terminals.export(0, tx_since)
        fr_key, fr_bucket, fr_count, fr_version = self.frauds.export(0, fr_since)
        return {"version": (tx_version, fr_version), "bucket_hours": bucket_hours,
                "tx_key": tx_key, "tx_bucket": tx_bucket, "tx_count": tx_count,
                "fraud_key": fr_key, "fraud_bucket": fr_bucket, "fraud_count": fr_count}

    def merge_intel(self, source: str, deltas: dict) -> bool:
        """Merge a peer's export (max per bucket, into the peer's local slot); False when there is
        no free slot for a new peer. ValueError when its buckets are not ours."""
        if self.state is None:
            return True
        if int(deltas.get("bucket_hours", 0)) != self.frauds.bucket_hours:
            raise ValueError(f"terminal counts in {deltas.get('bucket_hours')}-hour buckets; "
                             f"this worker keeps {self.frauds.bucket_hours}-hour buckets")
        slot = self.sources.get(source)
        if slot is None:
            if len(self.sources) >= MAX_SOURCES - 1:
                return False
            slot = self.sources[source] = len(self.sources) + 1
            if slot >= self.frauds.max_sources:
                self._grow(min(MAX_SOURCES, 2 * self.frauds.max_sources))
        for table, prefix in ((self.state.terminals, "tx"), (self.frauds, "fraud")):
            table.merge(slot, np.ascontiguousarray(deltas[f"{prefix}_key"], dtype=np.uint64),
                        np.ascontiguousarray(deltas[f"{prefix}_bucket"], dtype=np.int32),
                        np.ascontiguousarray(deltas[f"{prefix}_count"], dtype=np.uint32))
        return True

    def _grow(self, sources: int) -> None:
        """Both terminal tables with `sources` slots, counts kept (memory grows with the mesh)."""
        def grown(table):
            snap = table.snapshot()
            snap["tx"] = np.pad(snap["tx"], ((0, 0), (0, 0), (0, sources - table.max_sources)))
            new = TerminalState(table.capacity, sources, table.days, table.bucket_hours)
            new.restore(snap)
            return new
        self.state.terminals = grown(self.state.terminals)
        self.frauds = grown(self.frauds)

    # -- persistence and size ----------------------------------------------------------------
    def save(self, path) -> None:
        """Snapshot cards, terminal counts, fraud counts and the peer slots, atomically."""
        if self.state is not None:
            arrays = self.state.snapshot()
            arrays.update({f"frauds.{k}": v for k, v in self.frauds.snapshot().items()})
            arrays["meta.sources"] = np.array(sorted(self.sources, key=self.sources.get) or [""])
            save_npz(path, arrays)

    def load(self, path) -> None:
        if self.state is None:
            return
        arrays = load_npz(path)
        t = self.state.terminals
        fraud_snap = {k[7:]: v for k, v in arrays.items() if k.startswith("frauds.")}
        sources = int(np.shape(fraud_snap.get("tx", np.zeros((0, 0, t.max_sources))))[-1])
        if not 1 <= sources <= MAX_SOURCES:
            raise ValueError(f"state: expected 1..{MAX_SOURCES} terminal source slots, got {sources}")
        if sources != t.max_sources:  # the snapshot was taken after the tables grew
            self.state.terminals = TerminalState(t.capacity, sources, t.days, t.bucket_hours)
            t = self.state.terminals
        frauds = TerminalState(t.capacity, sources, t.days, t.bucket_hours)
        frauds.restore(fraud_snap)
        self.state.restore({k: v for k, v in arrays.items() if not k.startswith(("frauds.", "meta.sources"))})
        self.frauds = frauds
        names = [str(x) for x in arrays.get("meta.sources", np.array([""])) if str(x)]
        self.sources = {name: k + 1 for k, name in enumerate(names)}

    def state_info(self) -> dict:
        """Size of the streaming state: cards and terminals tracked, bytes allocated."""
        if self.state is None:
            return {"cards": 0, "terminals": 0, "bytes": 0, "bytes_per_card": 0}
        s = self.state
        per_terminal = s.terminals.bytes_per_terminal + self.frauds.bytes_per_terminal
        return {"cards": len(s.cards), "terminals": len(s.terminals),
                "bytes": int(s.bytes_per_card * s.cards.capacity + per_terminal * s.terminals.capacity),
                "bytes_per_card": round(float(s.bytes_per_card), 1)}


_N7, _AVG7, _N30, _AVG30 = (CARD_FEATURES.index(n) for n in (
    "card_nb_tx_7d", "card_avg_amount_7d", "card_nb_tx_30d", "card_avg_amount_30d"))
