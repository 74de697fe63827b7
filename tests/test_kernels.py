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
