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

import time
from dataclasses import dataclass

import numpy as np

from . import protocol as P
from ._verdicts import RowError, check_rows, decide
from .features import FeatureEngine
from .rules import RuleSet

# Event times must fall in [2000, 2200): anything else is a unit mistake or garbage. Seconds read as
# milliseconds fall in January 1970, microseconds after 2200.
MIN_TS_MS = 946_684_800_000
MAX_TS_MS = 7_258_118_400_000
MAX_AMOUNT = 1e12
# Nor may an event time be more than a day ahead of the worker's clock: a card's and a terminal's
# time rings only move forward, so one row dated years ahead would leave every later transaction of
# them outside their windows (and the terminal's bucket spreads to peers). A day covers time zones
# and clock skew.
MAX_AHEAD_MS = 86_400_000

# The reason of a row that fails a check. ext/verdicts.pyx runs the checks in RowError order and a
# row gets the first it fails.
ROW_ERRORS = {
    RowError.AMOUNT_NOT_FINITE: "error: amount is NaN or infinite",
    RowError.AMOUNT_NEGATIVE: "error: amount is negative",
    RowError.AMOUNT_TOO_LARGE: f"error: amount is over {MAX_AMOUNT:.0e}",
    RowError.TS_OUT_OF_RANGE: "error: ts_ms is outside 2000..2200 (epoch milliseconds expected)",
    RowError.TS_AHEAD: "error: ts_ms is more than 1 day ahead of this worker's clock",
}


def ahead_ts_ms() -> int:
    """The first event time this process refuses as in the future now: its clock + MAX_AHEAD_MS
    (and never past MAX_TS_MS)."""
    return min(int(time.time() * 1000) + MAX_AHEAD_MS, MAX_TS_MS)


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
        """(n,) float64 probabilities -> (n,) uint8 decisions: 0 approve, 1 review, 2 decline."""
        out = np.empty(len(proba), dtype=np.uint8)
        decide(np.ascontiguousarray(proba, dtype=np.float64), self.review, self.decline, out)
        return out


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
                # (at most 64 names: this message goes into a deploy's refusal, a reply header)
                shown = list(m.features) if len(m.features) <= 64 else [*m.features[:3], f"... {len(m.features):,} in all"]
                raise ValueError(f"model {m.version} expects features {shown}, "
                                 f"the worker computes {list(self.features.names)}")
        # The reason table: model features first (index = feature index), then row errors (the
        # reason of error code e is at _error_base + e).
        self.reasons = [*model.features, *(ROW_ERRORS[e] for e in sorted(ROW_ERRORS))]
        self._error_base = len(model.features) - 1
        self.model_version = model.version
        self.rules_version = self.rules.version
        self.shadow_version = shadow.version if shadow is not None else None

    @staticmethod
    def check(cols: dict) -> np.ndarray:
        """(n,) uint8: each row's RowError, OK (0) for a row that can be scored."""
        error = np.empty(len(cols["tx_id"]), dtype=np.uint8)
        check_rows(np.ascontiguousarray(cols["ts_ms"], dtype=np.int64),
                   np.ascontiguousarray(cols["amount"], dtype=np.float64), MIN_TS_MS, MAX_TS_MS, ahead_ts_ms(),
                   MAX_AMOUNT, error)
        return error

    def score(self, cols: dict, update: np.ndarray | None = None,
              error: np.ndarray | None = None) -> tuple[dict, dict | None]:
        """cols: the TX_COLUMNS arrays of one batch -> (VERDICT_COLUMNS arrays in batch order,
        the shadow model's verdicts or None). The shadow's verdicts never change a decision.
        update: bool per row, False for a transaction already seen (its features are read
        without adding it to the streaming state again); default all True. error: check(cols),
        if the caller has it already."""
        n = len(cols["tx_id"])
        error = self.check(cols) if error is None else error
        n_bad = int(np.count_nonzero(error))
        if n_bad:
            good = np.flatnonzero(error == RowError.OK)
            sub = {name: cols[name][good] for name, _ in P.TX_COLUMNS}
            update = update[good] if update is not None else None
        else:  # the common case: every row is scored
            sub = cols

        # The verdicts of the rows that passed the checks, in their order.
        m = n - n_bad
        score = np.empty(m, dtype=np.float32)
        decision = np.empty(m, dtype=np.uint8)
        reason = np.empty(m, dtype=np.int16)
        fired = np.zeros(m, dtype=np.uint64)
        shadow = None
        if m:
            X = self.features.transform(sub, update)
            proba, top = self.model.score(X)
            score[:] = proba
            reason[:] = top
            # on the score as published (float32): decided on the float64 probability, a verdict could
            # say "score": 1.0 with "review" under --decline-at 1 (0.999999976... < 1)
            decision[:] = self.thresholds.decide(score)
            action = None
            if self.rules.rules:
                env = {**sub, **{name: X[:, j] for j, name in enumerate(self.features.names)}}
                action, fired = self.rules.evaluate(env, m)
                np.maximum(decision, action, out=decision)
            if self.shadow is not None:
                s_proba, s_top = self.shadow.score(X)
                s_score = s_proba.astype(np.float32)
                s_decision = self.thresholds.decide(s_score)
                shadow = {"tx_id": sub["tx_id"], "score": s_score,
                          "decision": s_decision if action is None else np.maximum(s_decision, action),
                          "reason": s_top.astype(np.int16), "rules": fired}
        if n_bad:  # rejected rows: no score, their error as the reason
            verdicts = (score, decision, reason, fired)
            score = np.full(n, np.nan, dtype=np.float32)
            decision = np.full(n, P.REJECTED, dtype=np.uint8)
            reason = error.astype(np.int16)
            reason += self._error_base
            fired = np.zeros(n, dtype=np.uint64)
            for full, part in zip((score, decision, reason, fired), verdicts):
                full[good] = part
        return {"tx_id": cols["tx_id"], "score": score, "decision": decision, "reason": reason, "rules": fired}, shadow
