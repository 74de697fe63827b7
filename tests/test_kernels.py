"""The Cython kernels against numpy/datetime references."""
import datetime as dt

import numpy as np
import pytest

from zfraud import _features, _linear
from zfraud.features import BASIC, FEATURE_SETS, FeatureEngine


def reference_basic(ts_ms, amount):
    rows = []
    for t, a in zip(ts_ms, amount):
        d = dt.datetime.fromtimestamp(t / 1000, tz=dt.timezone.utc)
        rows.append([a, np.log1p(a), d.hour, float(d.hour <= 6), float(d.weekday() >= 5)])
    return np.array(rows, dtype=np.float32)


def test_basic_features_match_the_calendar():
    rng = np.random.default_rng(1)
    ts = rng.integers(0, 4_000_000_000_000, 2000).astype(np.int64)
    ts[:4] = [0, 1_522_540_800_000 - 1, 1_522_540_800_000, 1_522_562_400_000]  # 1970; 2018-03-31 23:59:59.999 (Sat); 2018-04-01 00:00 (Sun); 06:00
    amount = rng.uniform(0, 500, 2000)
    got = FeatureEngine(BASIC).transform({"ts_ms": ts, "amount": amount})
    np.testing.assert_array_equal(got, reference_basic(ts, amount))
    assert got[1, 2] == 23 and got[1, 4] == 1 and got[2, 2] == 0 and got[3, 3] == 1


def test_feature_names_agree_with_the_kernel():
    assert FEATURE_SETS[BASIC] == ("amount", "log_amount", "hour", "is_night", "is_weekend")
    assert tuple(_features.BASIC_NAMES) == FEATURE_SETS[BASIC]


def test_basic_features_check_shapes():
    with pytest.raises(ValueError, match="expected"):
        _features.basic_features(np.zeros(3, np.int64), np.zeros(2), np.zeros((3, 5), np.float32))


def test_linear_matches_numpy_and_names_the_top_contribution():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(500, 5)).astype(np.float32)
    X[0, 2] = np.nan
    coef, center = rng.normal(size=5), rng.normal(size=5)
    proba = np.empty(500)
    top = np.empty(500, np.int32)
    _linear.predict_linear(X, coef, center, -1.5, proba, top)
    contrib = np.where(np.isnan(X), 0.0, coef * (X.astype(np.float64) - center))
    z = -1.5 + contrib.sum(axis=1)
    np.testing.assert_allclose(proba, 1 / (1 + np.exp(-z)), rtol=1e-12)
    best = np.where(contrib.max(axis=1) > 0, contrib.argmax(axis=1), -1)
    np.testing.assert_array_equal(top, best)


def test_linear_sigmoid_is_stable_for_huge_logits():
    X = np.array([[1e30], [-1e30]], dtype=np.float32)
    proba, top = np.empty(2), np.empty(2, np.int32)
    _linear.predict_linear(X, np.ones(1), np.zeros(1), 0.0, proba, top)
    assert proba.tolist() == [1.0, 0.0]
    assert top.tolist() == [0, -1]


def reference_windows(term, frauds, amount, older):
    """The terminal (count, risk) pairs and the 8-30-day card columns, as numpy computes them."""
    risk = np.empty((len(term), 6), np.float32)
    for j in range(3):
        tx, fr = term[:, j].astype(np.float64), frauds[:, j].astype(np.float64)
        risk[:, 2 * j] = term[:, j]
        risk[:, 2 * j + 1] = np.divide(fr, tx, out=np.zeros_like(tx), where=tx > 0)
    derived = np.empty((len(older), 2), np.float32)
    derived[:, 0] = older
    top = float(np.finfo(np.float32).max)
    with np.errstate(divide="ignore", invalid="ignore"):
        derived[:, 1] = np.clip(amount / older, -top, top)  # saturated, never inf; 0 / 0 is NaN
    return risk, derived


def test_window_features_match_numpy_bit_for_bit():
    rng = np.random.default_rng(3)
    n, k = 3000, 9
    ts = rng.integers(0, 4_000_000_000_000, n).astype(np.int64)
    amount = rng.uniform(0, 500, n)
    amount[:5] = 0
    card = rng.uniform(0, 300, (n, k)).astype(np.float32)
    older = rng.uniform(0, 300, n)               # CardState's exact average over days 8..30 back
    older[::7] = np.nan  # no transaction between 8 and 30 days back: NaN
    older[:10] = 0       # an older average of 0 (spends of 0.00): amount / 0 (0 / 0 for the first 5)
    older[10:15] = 1e-40
    older[15:20] = 1e-300  # positive in float64, 0 in float32: the ratio still saturates
    term = rng.integers(0, 50, (n, 3)).astype(np.float32)
    term[::5, :] = 0  # a terminal without transactions: risk 0
    frauds = np.minimum(rng.integers(0, 5, (n, 3)), term).astype(np.float32)
    runs = rng.uniform(0, 40, (n, 2)).astype(np.float32)
    # TerminalState.read of the fraud-amount and card-linked tables: only the 30-day column is used
    amount_counts = rng.uniform(0, 900, (n, 3)).astype(np.float32)
    amount_counts[:, 2] = frauds[:, 2] * rng.uniform(0, 300, n)
    linked_counts = rng.integers(0, 9, (n, 3)).astype(np.float32)
    linked_counts[:, 2] = np.minimum(rng.integers(0, 4, n), frauds[:, 2] + rng.integers(0, 2, n))
    fraud_amount, linked = amount_counts[:, 2], linked_counts[:, 2]
    out = np.empty((n, 5 + k + 13), np.float32)
    _features.window_features(ts, amount, card, term, frauds, runs, amount_counts, linked_counts,
                              older, out)
    risk, derived = reference_windows(term, frauds, amount, older)
    basic = np.empty((n, 5), np.float32)
    _features.basic_features(ts, amount, basic)
    f30 = frauds[:, 2].astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        detail = np.column_stack([np.where(f30 > 0, fraud_amount / f30, 0), linked,
                                  np.maximum(f30 - linked, 0)]).astype(np.float32)
    expected = np.hstack([basic, card, risk, derived, runs, detail])
    top = np.finfo(np.float32).max
    assert np.isnan(expected[:, -7]).any() and np.isnan(expected[:, -6]).any()
    assert (expected[5:20, -6] == top).all()  # never inf
    assert not np.isinf(out).any()
    assert (linked > f30).any() and (detail[:, 0] > 0).any()  # linked above the count: 0 others
    np.testing.assert_array_equal(out.view(np.uint32), expected.view(np.uint32))


def test_window_features_check_shapes():
    z = np.zeros
    good = dict(ts_ms=z(2, np.int64), amount=z(2), card=z((2, 9), np.float32), terminal=z((2, 3), np.float32),
                frauds=z((2, 3), np.float32), runs=z((2, 2), np.float32), fraud_amount=z((2, 3), np.float32),
                linked=z((2, 3), np.float32), older=z(2), out=z((2, 27), np.float32))

    def call(**bad):
        a = {**good, **bad}
        _features.window_features(a["ts_ms"], a["amount"], a["card"], a["terminal"], a["frauds"], a["runs"],
                                  a["fraud_amount"], a["linked"], a["older"], a["out"])

    call()  # the shapes above are accepted
    for bad, match in [({"out": z((2, 26), np.float32)}, "expected"),
                       ({"runs": z((2, 1), np.float32)}, "expected"),
                       ({"terminal": z((2, 6), np.float32), "frauds": z((2, 6), np.float32)},
                        "terminal and frauds"),  # (count, risk) pairs: not any more
                       ({"linked": z((3, 3), np.float32)}, "linked"),
                       ({"fraud_amount": z((2, 1), np.float32)}, "fraud_amount"),
                       ({"older": z(3)}, "older")]:
        with pytest.raises(ValueError, match=match):
            call(**bad)


def test_row_checks_name_the_first_check_a_row_fails():
    from zfraud import _verdicts as V

    amount = np.array([1.0, np.nan, -np.inf, -1.0, 2e12, 1.0, 1.0, 1.0, 0.0, 1e12, 1.0, 1.0, -1.0])
    lo, hi = 946_684_800_000, 7_258_118_400_000  # 2000-01-01, 2200-01-01
    ahead = 1_800_000_000_000  # 2027-01-15, as if the worker's clock + 1 day
    ts = np.array([lo, lo + 1, lo + 1, lo - 5, lo + 1, lo - 1, hi, ahead - 1, lo + 5, lo + 5, ahead, hi - 1, hi - 1],
                  np.int64)
    out = np.empty(len(ts), np.uint8)
    assert V.check_rows(ts, amount, lo, hi, hi, 1e12, out) == 7  # ahead at the end of the range: no effect
    R = V.RowError
    assert out.tolist() == [R.OK, R.AMOUNT_NOT_FINITE, R.AMOUNT_NOT_FINITE, R.AMOUNT_NEGATIVE, R.AMOUNT_TOO_LARGE,
                            R.TS_OUT_OF_RANGE, R.TS_OUT_OF_RANGE, R.OK, R.OK, R.OK, R.OK, R.OK, R.AMOUNT_NEGATIVE]
    assert V.check_rows(ts, amount, lo, hi, ahead, 1e12, out) == 9
    assert out.tolist() == [R.OK, R.AMOUNT_NOT_FINITE, R.AMOUNT_NOT_FINITE, R.AMOUNT_NEGATIVE, R.AMOUNT_TOO_LARGE,
                            R.TS_OUT_OF_RANGE, R.TS_OUT_OF_RANGE, R.OK, R.OK, R.OK, R.TS_AHEAD, R.TS_AHEAD,
                            R.AMOUNT_NEGATIVE]


def test_decide_follows_the_thresholds_and_reviews_nan():
    from zfraud import _verdicts as V

    proba = np.array([0.0, 0.19999, 0.2, 0.5, 0.8, 1.0, np.nan])
    out = np.empty(len(proba), np.uint8)
    V.decide(proba, 0.2, 0.8, out)
    assert out.tolist() == [0, 0, 1, 1, 2, 2, 1]  # NaN: review, never approve
