"""Feature sets: from a batch's transaction columns to the float32 matrix a model scores.

A feature set has a name (stored in every model file) and an ordered tuple of feature names.
The loops live in ext/features.pyx; this module checks inputs, allocates and calls.
"""
from __future__ import annotations

import numpy as np

from . import _features

BASIC = "basic-v1"
FEATURE_SETS = {BASIC: tuple(_features.BASIC_NAMES)}


class FeatureEngine:
    """Turns transaction columns into features. Stateless for the basic set; the seam for the
    stateful per-card and shared-terminal features (they keep their state on this object)."""

    def __init__(self, feature_set: str = BASIC):
        if feature_set not in FEATURE_SETS:
            raise ValueError(f"unknown feature set {feature_set!r}; known: {', '.join(FEATURE_SETS)}")
        self.feature_set = feature_set
        self.names = FEATURE_SETS[feature_set]

    def state_info(self) -> dict:
        """Size of the streaming state: cards and shared keys tracked, bytes used."""
        return {"cards": 0, "bytes": 0}

    def transform(self, columns: dict, update=None) -> np.ndarray:
        """columns: "ts_ms" (n,) int64 and "amount" (n,) float64 -> (n, len(names)) float32.
        update: bool per row; False reads state without adding the row (stateful sets only)."""
        ts = np.ascontiguousarray(columns["ts_ms"], dtype=np.int64)
        amount = np.ascontiguousarray(columns["amount"], dtype=np.float64)
        out = np.empty((len(ts), len(self.names)), dtype=np.float32)
        _features.basic_features(ts, amount, out)
        return out
