"""From a batch of transaction columns to verdicts: validate rows, build features, score, decide.

Bad rows never take good ones down with them: each invalid row gets decision "rejected" and a
reason naming the problem; the rest of the batch is scored as usual. All of it is vectorised:
no per-row Python.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import protocol as P
from .features import FeatureEngine

# Event times must fall in [1970, 2200): anything else is a unit mistake (seconds vs ms) or garbage.
MAX_TS_MS = 7_258_118_400_000
MAX_AMOUNT = 1e12

# Row checks, in order: (reason text, predicate that is True for a *bad* row).
ROW_CHECKS = (
    ("error: amount is NaN or infinite", lambda c: ~np.isfinite(c["amount"])),
    ("error: amount is negative", lambda c: c["amount"] < 0),
    (f"error: amount is over {MAX_AMOUNT:.0e}", lambda c: c["amount"] > MAX_AMOUNT),
    ("error: ts_ms is outside 1970..2200 (epoch milliseconds expected)",
     lambda c: (c["ts_ms"] < 0) | (c["ts_ms"] >= MAX_TS_MS)),
)


@dataclass(frozen=True)
class Thresholds:
    """score >= review -> review; score >= decline -> decline."""

    review: float = 0.2
    decline: float = 0.8

    def __post_init__(self):
        if not 0.0 <= self.review <= self.decline <= 1.0:
            raise ValueError(f"thresholds must satisfy 0 <= review <= decline <= 1, got review={self.review}, "
                             f"decline={self.decline}")


class Scorer:
    """Scores batches with one model and one set of thresholds. Swappable as a whole."""

    def __init__(self, model, thresholds: Thresholds = Thresholds()):
        self.model = model
        self.thresholds = thresholds
        self.features = FeatureEngine(getattr(model, "feature_set", "basic-v1"))
        if tuple(self.features.names) != tuple(model.features):
            raise ValueError(f"model {model.version} expects features {list(model.features)}, "
                             f"the worker computes {list(self.features.names)}")
        # The reason table: model features first (index = feature index), then row errors.
        self.reasons = [*model.features, *(text for text, _ in ROW_CHECKS)]
        self._error_base = len(model.features)
        self.model_version = model.version
        self.rules_version = "none"

    def score(self, cols: dict) -> dict:
        """cols: the TX_COLUMNS arrays of one batch -> the VERDICT_COLUMNS arrays, in batch order."""
        n = len(cols["tx_id"])
        score = np.full(n, np.nan, dtype=np.float32)
        decision = np.full(n, P.REJECTED, dtype=np.uint8)
        reason = np.full(n, -1, dtype=np.int16)

        bad = np.zeros(n, dtype=bool)
        for k, (_, check) in enumerate(ROW_CHECKS):
            hit = check(cols) & ~bad
            if hit.any():
                reason[hit] = self._error_base + k
                bad |= hit
        if bad.any():
            good = np.flatnonzero(~bad)
            sub = {name: cols[name][good] for name in ("ts_ms", "amount", "card", "terminal")}
        else:
            good = slice(None)
            sub = cols

        if n - int(bad.sum()):
            X = self.features.transform(sub)
            proba, top = self.model.score(X)
            t = self.thresholds
            score[good] = proba
            decision[good] = (proba >= t.review).astype(np.uint8) + (proba >= t.decline)
            reason[good] = top
        return {"tx_id": cols["tx_id"], "score": score, "decision": decision, "reason": reason}
