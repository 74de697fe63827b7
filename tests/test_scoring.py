"""Row validation and decisions: bad rows are rejected with reasons, their neighbours are scored."""
import time

import numpy as np
import pytest

from zfraud import load_model
from zfraud import protocol as P
from zfraud.scoring import Scorer, Thresholds
from zfraud.synthetic import DAY_MS, synthetic


def batch(n=256):
    return next(synthetic(n, batch=n, seed=3))


def test_bad_rows_do_not_change_good_ones():
    scorer = Scorer(load_model())
    clean = batch()
    expected = scorer.score(clean)[0]
    dirty = {k: v.copy() for k, v in clean.items()}
    dirty["amount"][[3, 10]] = [np.nan, -5.0]
    dirty["ts_ms"][20] = 1_522_540_800  # seconds, not milliseconds: January 1970 read as ms
    dirty["ts_ms"][30] = -1
    dirty["amount"][40] = np.inf
    got = scorer.score(dirty)[0]
    bad = [3, 10, 20, 30, 40]
    assert got["decision"][bad].tolist() == [P.REJECTED] * 5
    assert np.isnan(got["score"][bad]).all()
    reasons = [scorer.reasons[r] for r in got["reason"][bad]]
    ts_reason = "error: ts_ms is outside 2000..2200 (epoch milliseconds expected)"
    assert reasons == ["error: amount is NaN or infinite", "error: amount is negative", ts_reason, ts_reason,
                       "error: amount is NaN or infinite"]
    good = np.setdiff1d(np.arange(256), bad)
    for col in ("score", "decision", "reason"):
        np.testing.assert_array_equal(got[col][good], expected[col][good])
    np.testing.assert_array_equal(got["tx_id"], clean["tx_id"])


def test_a_row_dated_more_than_a_day_ahead_of_the_clock_is_rejected_with_its_own_reason():
    """Time rings only move forward: one row dated in 2199 (the old limit let it through) left its
    card and terminal without history for every later transaction."""
    from zfraud.scoring import MAX_TS_MS

    scorer = Scorer(load_model())
    clean = batch()
    expected = scorer.score(clean)[0]
    now = int(time.time() * 1000)
    dirty = {k: v.copy() for k, v in clean.items()}
    dirty["ts_ms"][[5, 6, 7, 8]] = [MAX_TS_MS - 1, now + 2 * DAY_MS, now + DAY_MS + 60_000, now + DAY_MS - 60_000]
    dirty["ts_ms"][9] = MAX_TS_MS  # out of range: that reason first
    dirty["amount"][5] = -1.0      # an amount check runs before any time check
    got = scorer.score(dirty)[0]
    ahead = "error: ts_ms is more than 1 day ahead of this worker's clock"
    assert scorer.reasons[len(scorer.model.features) + 4] == ahead  # number of features + check index
    assert got["decision"][[5, 6, 7, 9]].tolist() == [P.REJECTED] * 4 and np.isnan(got["score"][[5, 6, 7, 9]]).all()
    assert [scorer.reasons[r] for r in got["reason"][[5, 6, 7, 9]]] == [
        "error: amount is negative", ahead, ahead, "error: ts_ms is outside 2000..2200 (epoch milliseconds expected)"]
    assert got["decision"][8] != P.REJECTED and np.isfinite(got["score"][8])  # within a day: scored
    good = np.setdiff1d(np.arange(256), [5, 6, 7, 8, 9])
    for col in ("score", "decision", "reason"):
        np.testing.assert_array_equal(got[col][good], expected[col][good])


def test_all_rows_bad():
    b = batch(8)
    b["amount"][:] = np.nan
    v, _ = Scorer(load_model()).score(b)
    assert (v["decision"] == P.REJECTED).all()


def test_decisions_follow_thresholds():
    b = batch(2000)
    scorer = Scorer(load_model(), Thresholds(review=0.3, decline=0.6))
    v = scorer.score(b)[0]
    s = v["score"].astype(np.float64)
    expected = np.where(s >= 0.6, P.DECLINE, np.where(s >= 0.3, P.REVIEW, P.APPROVE))
    np.testing.assert_array_equal(v["decision"], expected)
    assert (v["decision"] == P.DECLINE).any() and (v["decision"] == P.APPROVE).any()


def test_a_verdict_at_its_threshold_is_decided_on_the_score_it_publishes():
    """The default model gives an amount of 650 a probability of 0.99999997..., published as the
    float32 score 1.0. Decided on the float64 probability, --decline-at 1 made those "review"
    under "score": 1.0, against the help's "score at or above which to decline"."""
    b = batch(100)
    b["amount"][:] = 650.0
    v = Scorer(load_model(), Thresholds(review=0.2, decline=1.0)).score(b)[0]
    assert (v["score"] == 1.0).all()
    assert (v["decision"] == P.DECLINE).all()


def test_thresholds_must_be_ordered():
    with pytest.raises(ValueError, match="0 <= review <= decline <= 1"):
        Thresholds(review=0.9, decline=0.5)
