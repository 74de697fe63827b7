"""Offline evaluation with the Fraud Detection Handbook's metrics and test-set rule.

Numpy only. The definitions follow *Reproducible Machine Learning for Credit Card Fraud Detection -
Practical Handbook*, Ch. 3.4 and 4.3 (see ../shared/reference/handbook.md, sections 3.1 and 4):

- `auc`: ROC AUC on transactions, equal to scikit-learn's `roc_auc_score` (tied scores count 1/2,
  i.e. the trapezoidal ROC curve through tie groups).
- `average_precision`: scikit-learn's `average_precision_score`, sum over distinct score
  thresholds of (R_n - R_{n-1}) * P_n, a tie group being one threshold.
- `card_precision_top_k`: the book's CP@k with removal of detected compromised cards.
- `known_compromised_mask`: the book's split-level removal of cards already known to be
  compromised, for any train length and delay.
- `evaluate`: all of the above in one dict, plus recall per fraud scenario at the top-k budget.

Inputs are array-likes of equal length, one entry per transaction: `days` is the integer day index
(TX_TIME_DAYS), `cards` the card / customer id (CUSTOMER_ID), `y` the 0/1 label (TX_FRAUD; any
non-zero value counts as fraud) and `score` the model's score (higher = more suspicious; NaN is
refused).
"""
from __future__ import annotations

import numpy as np

__all__ = ["auc", "average_precision", "card_precision_top_k", "known_compromised_mask", "evaluate"]


def _labels_scores(y, score, weights=None):
    y = np.asarray(y).ravel() != 0
    s = np.asarray(score, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"y and score differ in length: {y.size} != {s.size}")
    if np.isnan(s).any():
        raise ValueError("score contains NaN")
    if weights is None:
        return y, s, np.ones(y.size)
    w = np.asarray(weights, dtype=np.float64).ravel()
    if w.shape != y.shape or not (np.isfinite(w) & (w >= 0)).all():
        raise ValueError(f"weights must be {y.size} finite values >= 0")
    return y, s, w


def auc(y, score, weights=None) -> float:
    """ROC AUC (area under the ROC curve) of `score` for the binary labels `y`.

    Computed as the Mann-Whitney statistic with mid-ranks, P(score+ > score-) + P(score+ == score-)/2,
    which is exactly what scikit-learn's `roc_auc_score` gives (its trapezoidal curve joins tie
    groups by a straight line). Returns NaN when `y` has a single class (scikit-learn 1.9 also
    returns NaN there, with a warning). `weights`: one per row (scikit-learn's `sample_weight`;
    a bootstrap resample's counts), default 1.
    """
    y, s, w = _labels_scores(y, score, weights)
    if y.size == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ss, ys, ws = s[order], y[order], w[order]
    new = np.r_[True, ss[1:] != ss[:-1]]           # first element of each tie group
    group = np.cumsum(new) - 1                      # tie group of each sorted element
    pos = np.bincount(group, ws * ys)               # weight of the positives in each group
    neg = np.bincount(group, ws * ~ys)
    if pos.sum() == 0 or neg.sum() == 0:
        return float("nan")
    below = np.cumsum(neg) - neg                    # negative weight in the groups below
    return float(np.sum(pos * (below + 0.5 * neg)) / (pos.sum() * neg.sum()))


def average_precision(y, score, weights=None) -> float:
    """Average precision, exactly scikit-learn's `average_precision_score` (binary case).

    Sort by score descending; each distinct score value is one threshold, which takes its whole
    tie group. With TP_n, FP_n the counts at or above threshold n, P_n = TP_n / (TP_n + FP_n),
    R_n = TP_n / P: AP = sum_n (R_n - R_{n-1}) P_n, R_0 = 0 (no interpolation). Returns 0.0 when
    there is no positive, like scikit-learn. `weights` as in `auc` (counts become weight sums).
    """
    y, s, w = _labels_scores(y, score, weights)
    if y.size == 0:
        return float("nan")
    order = np.argsort(-s, kind="mergesort")
    ss = s[order]
    last = np.r_[np.flatnonzero(ss[1:] != ss[:-1]), ss.size - 1]   # last index of each tie group
    tps = np.cumsum(w[order] * y[order])[last]
    every = np.cumsum(w[order])[last]
    if tps[-1] == 0:
        return 0.0
    precision = np.divide(tps, every, out=np.zeros_like(tps), where=every > 0)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def _card_top_k(days, cards, y, score, k=100, known=None):
    """CP@k internals: (per-day CP@k list, {day: top-k card ids}, sorted days)."""
    if k < 1:
        raise ValueError("k must be >= 1")
    y, s, _ = _labels_scores(y, score)
    days = np.asarray(days).ravel()
    cards = np.asarray(cards).ravel()
    if not (days.size == cards.size == y.size):
        raise ValueError("days, cards, y and score must have the same length")
    keep = np.ones(y.size, dtype=bool)
    detected = np.empty(0, dtype=cards.dtype)
    if known is not None:
        if isinstance(known, (set, frozenset, dict)):
            known = list(known)
        kn = np.asarray(known)
        if kn.dtype == bool and kn.shape == keep.shape:
            keep &= ~kn
        else:
            detected = np.unique(kn.ravel().astype(cards.dtype))
    per_day, tops = [], {}
    day_list = np.unique(days[keep])
    for d in day_list:
        m = keep & (days == d)
        if detected.size:
            m &= ~np.isin(cards, detected)
        c, sc, lab = cards[m], s[m], y[m]
        if c.size == 0:
            per_day.append(0.0)
            tops[d.item()] = c
            continue
        o = np.argsort(c, kind="mergesort")
        c, sc, lab = c[o], sc[o], lab[o]
        first = np.r_[0, np.flatnonzero(c[1:] != c[:-1]) + 1]
        uc = c[first]
        card_score = np.maximum.reduceat(sc, first)
        card_label = np.maximum.reduceat(lab.astype(np.int8), first) > 0
        rank = np.lexsort((uc, -card_score))[:k]    # score descending, ties: smaller card id first
        top, hit = uc[rank], card_label[rank]
        per_day.append(float(hit.sum()) / k)
        tops[d.item()] = top
        if hit.any():
            detected = np.union1d(detected, top[hit])
    return per_day, tops, day_list


def card_precision_top_k(days, cards, y, score, k: int = 100, known=None):
    """The book's Card Precision@k with removal of detected compromised cards.

    Days are processed in increasing order (the distinct values of `days` among the rows kept).
    On each day: the day's transactions of cards not yet detected are grouped by card; a card's
    score is the max of its transaction scores and its label the max of its labels (compromised
    if any transaction that day is fraud); cards are ranked by score, descending, ties broken by
    the smaller card id (the book's pandas sort leaves tie order unspecified); CP@k(d) = number of
    compromised cards in the top k / k, the denominator being k even when the day has fewer than
    k cards or fewer than k compromised ones. The compromised cards of that top k are then
    "detected" and removed from every later day before ranking.

    `known` (optional) is either a boolean mask over the transactions (True = drop the
    transaction before anything else, e.g. the output of `known_compromised_mask`) or a
    collection of card ids that count as already detected before the first day.

    Returns (mean of CP@k(d) over the days, [CP@k(d) for each day in order]); (nan, []) when
    there is no transaction.
    """
    per_day, _, _ = _card_top_k(days, cards, y, score, k, known)
    return (float(np.mean(per_day)) if per_day else float("nan")), per_day


def known_compromised_mask(days, cards, fraud_days, fraud_cards, delay: int,
                           known_from_day: int) -> np.ndarray:
    """Boolean mask over the transactions (`days`, `cards`): True = the card is already known to be
    compromised on that transaction's day, so the book removes the transaction from the test set.

    General rule: a transaction on day d is removed when its card had a fraud (an entry of
    `fraud_days`, `fraud_cards`, i.e. the day and card of every fraudulent transaction in the
    data) on some day in [known_from_day, d - delay - 1]: labels become known `delay` days after
    the fact, counting the day itself (the fraud of day d - delay - 1 is known when day d starts).

    The book's rule (handbook.md 3.1, `get_train_test_set`) with training start day s, train
    length T (7) and delay D (7): test day i (i = 0..6) is day d = s + T + D + i, and the known
    cards are those with a fraud in the training days [s, s + T - 1] plus those with a fraud on
    day s + T + i' - 1 for every i' = 0..i, i.e. days [s + T - 1, s + T + i - 1]. The union is
    [s, s + T + i - 1] = [s, d - D - 1], which is the general rule with known_from_day = s and
    delay = D. (Day s + T - 1, added before test day 0, is already a training day.)
    """
    days = np.asarray(days).ravel()
    cards = np.asarray(cards).ravel()
    fd = np.asarray(fraud_days).ravel()
    fc = np.asarray(fraud_cards).ravel()
    if days.size != cards.size or fd.size != fc.size:
        raise ValueError("days/cards and fraud_days/fraud_cards must have equal lengths")
    sel = fd >= known_from_day
    fd, fc = fd[sel], fc[sel]
    if fd.size == 0 or days.size == 0:
        return np.zeros(days.size, dtype=bool)
    # first fraud day (>= known_from_day) per card
    o = np.lexsort((fd, fc))
    fc, fd = fc[o], fd[o]
    first = np.r_[0, np.flatnonzero(fc[1:] != fc[:-1]) + 1]
    ucard, first_day = fc[first], fd[first]
    pos = np.searchsorted(ucard, cards)
    pos_c = np.minimum(pos, ucard.size - 1)
    has = ucard[pos_c] == cards
    return has & (first_day[pos_c] <= days - delay - 1)


def evaluate(days, cards, y, score, scenario=None, k: int = 100) -> dict:
    """AUC, AP and CP@k of one set of predictions, as the book reports them.

    Returns {"auc", "ap", "cp100" (CP@k, named for the book's k=100 whatever k is), "cp100_per_day",
    "k", "tx" (number of transactions), "frauds" (number of fraudulent ones)}, and when `scenario`
    (TX_FRAUD_SCENARIO per transaction) is given, "recall_by_scenario": {scenario: share of that
    scenario's fraudulent transactions whose card is in the top k of the transaction's day}, the
    top k being the CP@k ranking (after removal of detected cards). Kept simple on purpose: a fraud
    of a card already detected on an earlier day counts as missed, since that card is no longer
    ranked, so this is a lower bound on what the alert budget catches.
    """
    y_arr = np.asarray(y).ravel() != 0
    per_day, tops, _ = _card_top_k(days, cards, y_arr, score, k)
    out = {
        "auc": auc(y_arr, score),
        "ap": average_precision(y_arr, score),
        "cp100": float(np.mean(per_day)) if per_day else float("nan"),
        "cp100_per_day": per_day,
        "k": int(k),
        "tx": int(y_arr.size),
        "frauds": int(y_arr.sum()),
    }
    if scenario is not None:
        sc = np.asarray(scenario).ravel()
        d = np.asarray(days).ravel()
        c = np.asarray(cards).ravel()
        in_top = np.zeros(y_arr.size, dtype=bool)
        for day, top in tops.items():
            m = d == day
            in_top[m] = np.isin(c[m], top)
        rec = {}
        for s_val in np.unique(sc[y_arr]):
            m = y_arr & (sc == s_val)
            rec[int(s_val)] = float(in_top[m].mean())
        out["recall_by_scenario"] = rec
    return out
