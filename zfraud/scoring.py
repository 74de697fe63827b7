"""From a batch of transaction columns to verdicts: validate rows, build features, score, apply
rules, decide.

Bad rows never take good ones down with them: each invalid row gets decision "rejected" and a
reason naming the problem; the rest of the batch is scored as usual. All of it is vectorised:
no per-row Python.

Decision = the most severe of the score thresholds (approve < review < decline) and the actions of
the rules that fired. Reasons: `reason` names the model feature that pushed the score up most (or
the row's error), `rules` is a bit mask of the rules that fired.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import protocol as P
from .features import FeatureEngine
from .rules import RuleSet

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

    def decide(self, proba: np.ndarray) -> np.ndarray:
        return (proba >= self.review).astype(np.uint8) + (proba >= self.decline)


class Scorer:
    """One model, one rule set, one set of thresholds, and optionally a shadow model: the unit a
    deploy swaps. Everything is validated in the constructor, so a Scorer that exists is whole."""

    def __init__(self, model, thresholds: Thresholds = Thresholds(), rules: RuleSet | None = None,
                 shadow=None, features: FeatureEngine | None = None):
        self.model = model
        self.thresholds = thresholds
        self.rules = rules if rules is not None else RuleSet.empty()
        self.shadow = shadow
        self.features = features or FeatureEngine(getattr(model, "feature_set", "basic-v1"))
        for m in (model, shadow):
            if m is not None and tuple(self.features.names) != tuple(m.features):
                raise ValueError(f"model {m.version} expects features {list(m.features)}, "
                                 f"the worker computes {list(self.features.names)}")
        # The reason table: model features first (index = feature index), then row errors.
        self.reasons = [*model.features, *(text for text, _ in ROW_CHECKS)]
        self._error_base = len(model.features)
        self.model_version = model.version
        self.rules_version = self.rules.version
        self.shadow_version = shadow.version if shadow is not None else None

    def score(self, cols: dict, update: np.ndarray | None = None) -> tuple[dict, dict | None]:
        """cols: the TX_COLUMNS arrays of one batch -> (VERDICT_COLUMNS arrays in batch order,
        the shadow model's verdicts or None). The shadow's verdicts never change a decision.
        update: bool per row, False for a transaction already seen (its features are read
        without adding it to the streaming state again); default all True."""
        if update is None:
            update = np.ones(len(cols["tx_id"]), dtype=bool)
        n = len(cols["tx_id"])
        score = np.full(n, np.nan, dtype=np.float32)
        decision = np.full(n, P.REJECTED, dtype=np.uint8)
        reason = np.full(n, -1, dtype=np.int16)
        fired = np.zeros(n, dtype=np.uint64)

        bad = np.zeros(n, dtype=bool)
        for k, (_, check) in enumerate(ROW_CHECKS):
            hit = check(cols) & ~bad
            if hit.any():
                reason[hit] = self._error_base + k
                bad |= hit
        if bad.any():
            good = np.flatnonzero(~bad)
            sub = {name: cols[name][good] for name, _ in P.TX_COLUMNS}
            update = update[good]
        else:
            good = slice(None)
            sub = cols

        shadow = None
        if n - int(bad.sum()):
            X = self.features.transform(sub, update)
            proba, top = self.model.score(X)
            action = np.zeros(len(X), dtype=np.uint8)
            if self.rules.rules:
                env = {**sub, **{name: X[:, j] for j, name in enumerate(self.features.names)}}
                action, fired[good] = self.rules.evaluate(env, len(X))
            score[good] = proba
            decision[good] = np.maximum(self.thresholds.decide(proba), action)
            reason[good] = top
            if self.shadow is not None:
                s_proba, s_top = self.shadow.score(X)
                shadow = {"tx_id": sub["tx_id"], "score": s_proba.astype(np.float32),
                          "decision": np.maximum(self.thresholds.decide(s_proba), action),
                          "reason": s_top.astype(np.int16), "rules": fired[good]}
        return {"tx_id": cols["tx_id"], "score": score, "decision": decision, "reason": reason, "rules": fired}, shadow
