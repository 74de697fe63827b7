"""Feature sets: from a batch's transaction columns to the float32 matrix a model scores.

A feature set has a name (stored in every model file) and an ordered tuple of feature names.

- "basic-v1": amount, log amount, hour, night, weekend. Stateless.
- "zfraud-v1" (the default for trained models): basic-v1, then per-card windows (counts and
  average amounts over 1, 7 and 30 days, the amount relative to the card's own 7- and 30-day
  averages, time since the card's previous transaction), then per-terminal counts and fraud risk
  over 1, 7 and 30 days shifted back by the label delay. It contains the Fraud Detection
  Handbook's 15 inputs (../shared/reference/handbook.md, section 2) computed online, plus the
  card-relative features the book lacks. The windows' exact semantics are in ext/state.pyx.

The loops live in ext/features.pyx and ext/state.pyx; this module checks inputs, allocates and calls.
"""
from __future__ import annotations

import numpy as np

from . import _features
from .state import CARD_FEATURES, TERMINAL_FEATURES, FeatureState

BASIC = "basic-v1"
FULL = "zfraud-v1"
BASIC_FEATURES = tuple(_features.BASIC_NAMES)
FEATURE_SETS = {
    BASIC: BASIC_FEATURES,
    FULL: BASIC_FEATURES + CARD_FEATURES + TERMINAL_FEATURES,
}
MAX_SOURCES = 16


class FeatureEngine:
    """Turns transaction columns into features, keeping the streaming state a feature set needs.

    In a mesh each worker counts its own transactions at each terminal in its own slot (0) and
    merges every peer's counts into a slot of their own (a G-counter: max per bucket), so the
    sum over slots is the terminal's whole traffic. Slots are local: a peer's slot number here
    means nothing to the peer."""

    def __init__(self, feature_set: str = BASIC, delay_days: int = 7, card_capacity: int = 1 << 18,
                 terminal_capacity: int = 1 << 15):
        if feature_set not in FEATURE_SETS:
            raise ValueError(f"unknown feature set {feature_set!r}; known: {', '.join(FEATURE_SETS)}")
        self.feature_set = feature_set
        self.names = FEATURE_SETS[feature_set]
        self.state = None
        if feature_set == FULL:
            self.state = FeatureState(card_capacity, terminal_capacity, delay_days, source_slot=0,
                                      max_sources=MAX_SOURCES)
        self.sources: dict[str, int] = {}  # peer name -> local terminal slot (1..MAX_SOURCES-1)

    def transform(self, columns: dict, update=None) -> np.ndarray:
        """columns: TX_COLUMNS arrays of one batch (rows valid, in event-time order within a card)
        -> (n, len(names)) float32. update: bool per row, False for a transaction already counted
        (read without adding it again); default all True."""
        ts = np.ascontiguousarray(columns["ts_ms"], dtype=np.int64)
        amount = np.ascontiguousarray(columns["amount"], dtype=np.float64)
        out = np.empty((len(ts), len(self.names)), dtype=np.float32)
        b = len(BASIC_FEATURES)
        if self.state is None:
            _features.basic_features(ts, amount, out)
            return out
        basic = np.empty((len(ts), b), dtype=np.float32)
        _features.basic_features(ts, amount, basic)
        c = b + len(CARD_FEATURES)
        out[:, :b] = basic
        out[:, b:c] = self.state.card_features(columns, update)
        self.state.record_terminal(columns, update)
        out[:, c:] = self.state.terminal_features(columns)
        return out

    # -- shared state ------------------------------------------------------------------------
    def apply_labels(self, terminal, ts_ms, fraud) -> int:
        """Confirmed labels (deduplicated by transaction id): frauds count towards terminal risk."""
        return self.state.apply_labels(terminal, ts_ms, fraud) if self.state is not None else 0

    def export_intel(self, since: int) -> dict | None:
        """This worker's terminal counts changed since version `since` (0: all), or None."""
        return self.state.export_deltas(since) if self.state is not None else None

    def merge_intel(self, source: str, deltas: dict) -> bool:
        """Merge a peer's export; False when there is no free slot for a new peer."""
        if self.state is None:
            return True
        slot = self.sources.get(source)
        if slot is None:
            if len(self.sources) >= MAX_SOURCES - 1:
                return False
            slot = self.sources[source] = len(self.sources) + 1
        self.state.merge_deltas({**deltas, "slot": slot})
        return True

    # -- persistence and size ----------------------------------------------------------------
    def save(self, path) -> None:
        if self.state is not None:
            self.state.save(path)

    def load(self, path) -> None:
        if self.state is not None:
            self.state.load(path)

    def state_info(self) -> dict:
        """Size of the streaming state: cards and terminals tracked, bytes allocated."""
        if self.state is None:
            return {"cards": 0, "terminals": 0, "bytes": 0, "bytes_per_card": 0}
        s = self.state
        return {"cards": len(s.cards), "terminals": len(s.terminals),
                "bytes": int(s.bytes_per_card * s.cards.capacity + s.terminals.bytes_per_terminal * s.terminals.capacity),
                "bytes_per_card": round(float(s.bytes_per_card), 1)}
