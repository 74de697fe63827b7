"""zfraud.evaluate: AUC/AP against scikit-learn, CP@k and the known-compromised rule by hand."""
import numpy as np
import pytest

from zfraud.evaluate import (auc, average_precision, card_precision_top_k, evaluate,
                             known_compromised_mask)


def _random_cases():
    rng = np.random.default_rng(12345)
    for i in range(40):
        n = int(rng.integers(2, 400))
        y = (rng.random(n) < rng.uniform(0.02, 0.6)).astype(int)
        if i % 4 == 0:
            s = rng.integers(0, 5, n).astype(float)          # heavy ties
        elif i % 4 == 1:
            s = np.round(rng.random(n), 1)                   # ties on 11 values
        elif i % 4 == 2:
            s = rng.random(n) + 2.0 * y * rng.random(n)      # informative, no ties
        else:
            s = np.where(rng.random(n) < 0.5, 0.5, rng.random(n))   # a big tie block
        yield y, s


def test_auc_and_ap_match_sklearn_with_ties():
    metrics = pytest.importorskip("sklearn.metrics")
    checked = 0
    for y, s in _random_cases():
        if 0 < y.sum() < y.size:
            assert auc(y, s) == pytest.approx(metrics.roc_auc_score(y, s), rel=1e-12, abs=1e-12)
            checked += 1
        assert average_precision(y, s) == pytest.approx(
            metrics.average_precision_score(y, s), rel=1e-12, abs=1e-12)
    assert checked > 30
    # a large case, like a test week
    rng = np.random.default_rng(7)
    y = (rng.random(60_000) < 0.007).astype(int)
    s = np.round(rng.random(60_000) * 0.3 + 0.7 * y * rng.random(60_000), 3)
    assert auc(y, s) == pytest.approx(metrics.roc_auc_score(y, s), rel=1e-12)
    assert average_precision(y, s) == pytest.approx(metrics.average_precision_score(y, s), rel=1e-12)


def test_weighted_auc_and_ap_match_sklearn_and_repeated_rows():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(3)
    checked = 0
    for y, s in _random_cases():
        w = rng.integers(0, 4, y.size)  # a bootstrap's counts, zeros included
        if 0 < (w * y).sum() < w.sum() and (w * (1 - y)).sum() > 0:
            assert auc(y, s, w) == pytest.approx(metrics.roc_auc_score(y, s, sample_weight=w), rel=1e-12, abs=1e-12)
            assert average_precision(y, s, w) == pytest.approx(
                metrics.average_precision_score(y, s, sample_weight=w), rel=1e-12, abs=1e-12)
            rows = np.repeat(np.arange(y.size), w)  # weight k = the row k times
            assert auc(y, s, w) == pytest.approx(auc(y[rows], s[rows]), rel=1e-12)
            assert average_precision(y, s, w) == pytest.approx(average_precision(y[rows], s[rows]), rel=1e-12)
            checked += 1
    assert checked > 30
    with pytest.raises(ValueError, match="weights must be 3 finite values >= 0"):
        auc([0, 1, 1], [0.1, 0.2, 0.3], [1, -1, 1])


def test_auc_ap_small_cases_by_hand():
    # pairs (pos, neg): (0.8>0.3)=1, (0.8>0.5)=1, (0.5 vs 0.5)=1/2, (0.5>0.3)=1  -> 3.5/4
    y = [1, 0, 1, 0]
    s = [0.8, 0.5, 0.5, 0.3]
    assert auc(y, s) == pytest.approx(0.875)
    # thresholds 0.8: P=1 R=1/2; 0.5 (tie group of 2): P=2/3 R=1; 0.3: R unchanged
    assert average_precision(y, s) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert np.isnan(auc([0, 0], [0.1, 0.2]))
    assert average_precision([0, 0], [0.1, 0.2]) == 0.0
    with pytest.raises(ValueError):
        auc([0, 1], [0.1, float("nan")])


# Hand example for CP@2. Cards: A=1, B=2, C=3, D=4, E=5.
# day 0: A 0.9 (genuine) + A 0.2 (fraud) -> A scores 0.9, compromised; B 0.8 genuine; C 0.7 fraud;
#        D 0.1 fraud. Top 2 = A, B -> 1/2. Detected: {A}.
# day 1: A 0.95 fraud (detected -> removed), E 0.6, D 0.5, C 0.3 fraud.
#        Top 2 = E, D -> 0/2 (without removal it would be A, E -> 1/2).
# day 2: C 0.9 fraud only. Top 2 = C alone -> 1/2 (denominator stays k). Detected: {A, C}.
DAYS = [0, 0, 0, 0, 0, 1, 1, 1, 1, 2]
CARDS = [1, 1, 2, 3, 4, 1, 5, 4, 3, 3]
Y = [0, 1, 0, 1, 1, 1, 0, 0, 1, 1]
SCORE = [0.9, 0.2, 0.8, 0.7, 0.1, 0.95, 0.6, 0.5, 0.3, 0.9]
SCEN = [0, 2, 0, 3, 3, 2, 0, 0, 3, 3]


def test_card_precision_top_k_by_hand():
    mean, per_day = card_precision_top_k(DAYS, CARDS, Y, SCORE, k=2)
    assert per_day == pytest.approx([0.5, 0.0, 0.5])
    assert mean == pytest.approx(1 / 3)
    # k larger than the number of cards: denominator is still k
    mean, per_day = card_precision_top_k(DAYS, CARDS, Y, SCORE, k=10)
    # day 0: A, C, D compromised -> 3/10, all detected; day 1: only E left, genuine -> 0;
    # day 2: C already detected, nothing left -> 0
    assert per_day == pytest.approx([0.3, 0.0, 0.0])


def test_card_precision_order_and_known():
    # rows given out of day order: same result
    p = np.random.default_rng(0).permutation(len(DAYS))
    a = lambda v: np.asarray(v)[p]
    assert card_precision_top_k(a(DAYS), a(CARDS), a(Y), a(SCORE), k=2)[1] == pytest.approx([0.5, 0, 0.5])
    # card A already known: day 0 top 2 = B, C -> 1/2, detected {A, C}; day 1 -> 0; day 2: nothing left -> 0
    mean, per_day = card_precision_top_k(DAYS, CARDS, Y, SCORE, k=2, known={1})
    assert per_day == pytest.approx([0.5, 0.0, 0.0])
    assert mean == pytest.approx(1 / 6)
    # known as a transaction mask: drop day 2 entirely -> two days
    mask = np.asarray(DAYS) == 2
    assert card_precision_top_k(DAYS, CARDS, Y, SCORE, k=2, known=mask)[1] == pytest.approx([0.5, 0.0])


def test_card_precision_ties_smaller_card_first():
    mean, _ = card_precision_top_k([3, 3], [7, 6], [0, 1], [0.5, 0.5], k=1)
    assert mean == 1.0
    mean, _ = card_precision_top_k([3, 3], [7, 6], [1, 0], [0.5, 0.5], k=1)
    assert mean == 0.0


def test_evaluate_dict():
    r = evaluate(DAYS, CARDS, Y, SCORE, scenario=SCEN, k=2)
    assert r["tx"] == 10 and r["frauds"] == 6 and r["k"] == 2
    assert r["cp100"] == pytest.approx(1 / 3)
    assert r["auc"] == pytest.approx(auc(Y, SCORE))
    assert r["ap"] == pytest.approx(average_precision(Y, SCORE))
    # tops: day 0 {A, B}, day 1 {E, D}, day 2 {C}
    # scenario 2 frauds: (0, A) in top, (1, A) not (removed) -> 1/2
    # scenario 3 frauds: (0, C) no, (0, D) no, (1, C) no, (2, C) yes -> 1/4
    assert r["recall_by_scenario"] == {2: pytest.approx(0.5), 3: pytest.approx(0.25)}


def test_known_compromised_mask_small():
    # frauds: card 10 on day 0 (before known_from_day=1: ignored), card 11 on day 2, card 12 on days 5, 6
    fraud_days = [0, 2, 5, 6]
    fraud_cards = [10, 11, 12, 12]
    days = [4, 4, 5, 7, 8, 9, 3]
    cards = [10, 11, 11, 12, 12, 13, 11]
    # delay 2: tx on day d removed if fraud in [1, d - 3]
    m = known_compromised_mask(days, cards, fraud_days, fraud_cards, delay=2, known_from_day=1)
    assert m.tolist() == [False, False, True, False, True, False, False]


def test_known_compromised_mask_matches_book_loop():
    """The book's get_train_test_set loop, written literally, on random data."""
    rng = np.random.default_rng(3)
    n = 20_000
    days = rng.integers(0, 40, n)
    cards = rng.integers(0, 300, n)
    fraud = rng.random(n) < 0.02
    s, T, D = 10, 7, 7
    known = set(cards[(days >= s) & (days < s + T) & fraud].tolist())
    expected_removed = np.zeros(n, dtype=bool)
    for i in range(7):
        known |= set(cards[(days == s + T + i - 1) & fraud].tolist())
        on_day = days == s + T + D + i
        expected_removed[on_day] = np.isin(cards[on_day], list(known))
    test = (days >= s + T + D) & (days < s + T + D + 7)
    m = known_compromised_mask(days[test], cards[test], days[fraud], cards[fraud], delay=D,
                               known_from_day=s)
    assert np.array_equal(m, expected_removed[test])
    assert 0 < m.sum() < m.size
