"""Contract tests of the streaming state (ext/state.pyx, zfraud/state.py).

Card windows are checked against a plain-Python model of the same bucket semantics (dicts keyed
by absolute hour and day, no rings); terminal features against the Handbook's definition at day
granularity, computed from the raw events; plus batch == one-by-one, G-counter convergence,
snapshot round trips, snapshot validation and the capacity policy.
"""
import math
import os
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

from zfraud import _features, _state
from zfraud.mesh import mix64
from zfraud.state import (CARD_DTYPE, CARD_FEATURES, TERMINAL_FEATURES, CardState, FeatureState,
                          TerminalState, mix_keys, unmix_keys)

HOUR = 3_600_000
DAY = 86_400_000
F32_MAX = float(np.finfo(np.float32).max)  # ratios saturate there
COUNTS = [0, 2, 4]            # count columns of the card features: compared exactly
OTHERS = [1, 3, 5, 6, 7, 8, 9]   # averages, ratios, log gap, peak ratio: sums may add in another order


# ------------------------------------------------------------------------------------------------
# Plain-Python references.

class RefCards:
    """CardState's semantics on dicts keyed by absolute hour / day: a bucket lives while it is
    within 24 hours / 32 days of its card's newest event, counts saturate at 65535 (and sums
    with them), sums are float32 added in arrival order. The peak amount ratio is one float32
    per card: the largest ratio of a counted amount to its card's average over days 8..30 back,
    decayed by exp(-age / 7 days) from the card's newest event (a late row's by its lateness when
    it is folded in). No capacity limit."""

    def __init__(self):
        self.cards = {}

    def step(self, key, t, amount, update):
        c = self.cards.get(key)
        if c is None:
            if not update:
                return [0.0] * 8 + [-1.0, math.nan]
            c = self.cards[key] = {"last": None, "prev": None, "hours": {}, "days": {},
                                   "peak": np.float32(0), "peak_read": np.float32(0)}
        gap = self.gap(c, t, update)
        last = c["last"]
        if last is None:
            peak = math.nan
        elif not update and t == last:
            peak = float(c["peak_read"])
        elif t > last:
            peak = float(c["peak"]) * math.exp(-(t - last) / (7 * DAY))
        else:
            peak = float(c["peak"])
        if update:
            self.add(c, t, amount)
        row = self.read(c, t, amount, gap)
        if update:
            old = sorted(k for k in c["days"] if t // DAY - 29 <= k <= t // DAY - 7)
            n, s = sum(c["days"][k][0] for k in old), sum(float(c["days"][k][1]) for k in old)
            ratio = min(amount / (s / n), F32_MAX) if n and s > 0 else 0.0
            if last is not None and t < last:   # a late row: its ratio decayed by its lateness
                v = np.float32(min(float(np.float32(ratio)) * math.exp(-(last - t) / (7 * DAY)), F32_MAX))
                c["peak"] = max(c["peak"], v)
                if v > c["peak_read"] or np.isnan(c["peak_read"]):
                    c["peak_read"] = v
            else:
                c["peak_read"] = np.float32(peak)
                c["peak"] = np.float32(max(0.0 if last is None else peak, ratio))
        return row + [peak]

    @staticmethod
    def gap(c, t, update):
        if c["last"] is None:
            return -1
        if t > c["last"] or (t == c["last"] and update):
            return t - c["last"]
        if c["prev"] is not None and (t > c["prev"] or t == c["last"]):
            return t - c["prev"]
        return -1

    @staticmethod
    def add(c, t, amount):
        if c["last"] is None or t >= c["last"]:
            c["prev"], c["last"] = c["last"], t
        nh, nd = c["last"] // HOUR, c["last"] // DAY
        c["hours"] = {k: v for k, v in c["hours"].items() if k > nh - 24}
        c["days"] = {k: v for k, v in c["days"].items() if k > nd - 32}
        for buckets, k, keep in ((c["hours"], t // HOUR, t // HOUR > nh - 24),
                                 (c["days"], t // DAY, t // DAY > nd - 32)):
            if keep:
                n, s = buckets.get(k, (0, np.float32(0)))
                if n < 65535:   # a saturated bucket's sum stops with its count
                    buckets[k] = (n + 1, np.float32(s + np.float32(amount)))

    @staticmethod
    def read(c, t, amount, gap):
        def window(buckets, lo, hi):
            ks = sorted(k for k in buckets if lo <= k <= hi)
            return sum(buckets[k][0] for k in ks), sum(float(buckets[k][1]) for k in ks)

        rh, rd = t // HOUR, t // DAY
        row = []
        avgs = []
        for buckets, lo, hi in ((c["hours"], rh - 23, rh), (c["days"], rd - 6, rd),
                                (c["days"], rd - 29, rd)):
            n, s = window(buckets, lo, hi)
            avgs.append(s / n if n else 0.0)
            row += [n, avgs[-1]]
        row += [min(amount / avgs[k], F32_MAX) if avgs[k] > 0 else 0.0 for k in (1, 2)]
        row.append(math.log1p(gap / 1000.0) if gap >= 0 else -1.0)
        return row


def book_terminal(txs: Counter, frauds: Counter, term, t, delay, per_day=1):
    """Handbook 2.3 at bucket granularity (per_day buckets a day): buckets (b - delay - n,
    b - delay] over all sources, delay and n in buckets."""
    d = t // (DAY // per_day)
    row = []
    for n in (1, 7, 30):
        days = range(d - (delay + n) * per_day + 1, d - delay * per_day + 1)
        nt = sum(txs[(term, x)] for x in days)
        nf = sum(frauds[(term, x)] for x in days)
        row += [nt, np.float32(nf / nt) if nt else 0.0]
    return row


def reference_run(txs: Counter, frauds: Counter, newest: dict, term, t, delay, per_day, ring):
    """TerminalState.read_runs from the raw per-bucket counts: walking back from bucket
    b - delay, buckets with a fraud extend the run, empty ones are skipped, one with
    transactions and no fraud ends it unless it is b - delay itself (partly labelled); only
    buckets both rings hold (newest[table] - ring < k)."""
    b = t // (DAY // per_day)
    if term not in newest["fraud"]:
        return [0.0, 0.0]
    lo = max(newest[name][term] - ring + 1 for name in ("tx", "fraud") if term in newest[name])
    found, start = 0, None
    for k in range(b - delay * per_day, lo - 1, -1):
        if frauds[(term, k)]:
            found, start = found + frauds[(term, k)], k
        elif txs[(term, k)] and k < b - delay * per_day:
            break
    return [float(found), np.float32((b - start) / per_day)] if found else [0.0, 0.0]


# ------------------------------------------------------------------------------------------------
# Streams.

def card_stream(seed, n=4000, n_cards=40, start=0):
    """Random card rows: bursts and quiet hours, idle gaps of 31-60 days, late events (some older
    than the rings), duplicates re-read with update 0, and reads of never-seen cards."""
    rng = np.random.default_rng(seed)
    t = start
    keys, ts, amount, update = [], [], [], []
    for i in range(n):
        r = rng.random()
        if r < 0.005:
            t += int(rng.integers(31, 60)) * DAY + int(rng.integers(0, DAY))
        else:
            t += int(rng.exponential(2 * HOUR if r < 0.5 else 10 * 60_000))
        row_t = t
        late = rng.random()
        if late < 0.06:
            row_t = t - int(rng.integers(0, 40 * DAY))          # up to beyond the daily ring
        elif late < 0.12:
            row_t = t - int(rng.integers(0, 3 * HOUR))
        elif late < 0.18:
            row_t = t - int(rng.integers(22 * HOUR, 26 * HOUR))  # around the hourly ring's edge
        elif late < 0.22:
            row_t = t - int(rng.integers(30 * DAY, 34 * DAY))    # around the daily ring's edge
        card = int(rng.integers(0, n_cards))
        upd = 1
        kind = rng.random()
        if i > 0 and kind < 0.05:                                  # a duplicate: re-read a row
            j = int(rng.integers(0, len(keys)))
            card, row_t, amt, upd = keys[j], ts[j], amount[j], 0
        else:
            amt = float(np.round(rng.gamma(2.0, 40.0), 2))
            if kind < 0.08:
                upd = 0
                card = n_cards + int(rng.integers(0, 5))           # never updated: a missing card
            elif kind < 0.12:
                upd = 0                                            # a read without an update
        keys.append(card)
        ts.append(row_t)
        amount.append(amt)
        update.append(upd)
    raw = np.array(keys, np.uint64) + np.uint64(1000)
    return (mix_keys(raw), np.array(ts, np.int64), np.array(amount, np.float64),
            np.array(update, np.uint8))


def run_cards(state, keys, ts, amount, update, batch_sizes):
    out = np.empty((len(keys), len(CARD_FEATURES)), np.float32)
    lo = 0
    for size in batch_sizes:
        hi = min(lo + size, len(keys))
        state.update_and_read(keys[lo:hi], ts[lo:hi], amount[lo:hi], update[lo:hi], out[lo:hi])
        lo = hi
        if lo == len(keys):
            break
    assert lo == len(keys)
    return out


def random_batches(rng, n):
    sizes = []
    while sum(sizes) < n:
        sizes.append(int(rng.choice([1, 2, 7, 64, 333, 1024])))
    return sizes


# ------------------------------------------------------------------------------------------------
# Cards.

def test_feature_names_agree_with_the_kernel():
    assert CARD_FEATURES == tuple(_state.CARD_NAMES) and len(CARD_FEATURES) == 10
    assert TERMINAL_FEATURES == tuple(_state.TERMINAL_NAMES) and len(TERMINAL_FEATURES) == 6
    assert CARD_FEATURES[-2:] == ("log1p_seconds_since_card_last_tx", "card_peak_amount_ratio_7d")


def test_key_mixing_is_the_mesh_splitmix64():
    ids = np.random.default_rng(0).integers(0, 2**63, 1000, dtype=np.uint64)
    ids[:3] = [0, 1, 2**64 - 1]
    np.testing.assert_array_equal(mix_keys(ids), mix64(ids))


@pytest.mark.parametrize("capacity", [1, 1000, 1 << 16])
def test_bytes_per_card_within_budget(capacity):
    assert CardState(capacity).bytes_per_card <= 400
    assert _state.CARD_DTYPE.itemsize == 384
    # key, last bucket, 2 index slots, row stamp, row low-water bucket; per bucket: total and
    # stamp; per bucket and source: tx
    assert TerminalState(capacity).bytes_per_terminal == 8 + 8 + 16 + 4 + 8 + 8 * 40 + 4 * 40 * 16


@pytest.mark.parametrize("seed,start", [(1, 1_600_000_000_000), (2, -5 * DAY - 1234), (3, 0)])
def test_card_windows_match_the_bucket_reference(seed, start):
    keys, ts, amount, update = card_stream(seed, start=start)
    got = run_cards(CardState(1000), keys, ts, amount, update, [1024] * 10)
    ref = RefCards()
    want = np.array([ref.step(int(k), int(t), float(a), bool(u))
                     for k, t, a, u in zip(keys, ts, amount, update)], np.float64)
    np.testing.assert_array_equal(got[:, COUNTS], want[:, COUNTS].astype(np.float32))
    np.testing.assert_allclose(got[:, OTHERS], want[:, OTHERS].astype(np.float32), rtol=1e-6)
    # The stream exercised what it was meant to.
    st = CardState(1000)
    run_cards(st, keys, ts, amount, update, [len(keys)])
    s = st.stats()
    assert s["late"] > 0 and s["too_old"] > 0 and s["hour_dropped"] > 0 and s["read_missing"] > 0
    assert (got[:, 8] == -1).any() and (got[:, 0] == 0).any()
    assert np.isnan(got[:, 9]).any() and (got[:, 9] > 1).any()


@pytest.mark.parametrize("capacity", [1000, 16])
def test_batch_equals_one_by_one(capacity):
    keys, ts, amount, update = card_stream(4)
    rng = np.random.default_rng(5)
    one = run_cards(CardState(capacity), keys, ts, amount, update, [1] * len(keys))
    batched = run_cards(CardState(capacity), keys, ts, amount, update,
                        random_batches(rng, len(keys)))
    whole = run_cards(CardState(capacity), keys, ts, amount, update, [len(keys)])
    np.testing.assert_array_equal(batched, one)
    np.testing.assert_array_equal(whole, one)


def test_windows_are_hour_and_day_buckets_including_the_current_transaction():
    st = CardState(10)
    key = mix_keys([7])
    t0 = 10 * HOUR                                    # day 0, 10:00
    rows = [(t0, 10.0), (t0 + 30 * 60_000, 20.0),      # 10:00, 10:30
            (t0 + 24 * HOUR - 1, 30.0),                # day 1, 09:59:59.999: day 0's 10:00 still in
            (t0 + 24 * HOUR, 40.0)]                    # day 1, 10:00: hour 10 of day 0 drops out
    got = [run_cards(st, key, np.array([t], np.int64), np.array([a]), np.ones(1, np.uint8), [1])[0]
           for t, a in rows]
    assert [g[0] for g in got] == [1, 2, 3, 2]        # 1 day = 24 hour buckets
    assert got[3][1] == pytest.approx(35.0)
    assert [g[2] for g in got] == [1, 2, 3, 4]        # 7 days = 7 calendar-day buckets
    assert got[3][3] == pytest.approx(25.0) and got[3][6] == pytest.approx(40 / 25)
    assert got[0][8] == -1 and got[1][8] == pytest.approx(math.log1p(1800))


def test_peak_ratio_remembers_a_large_spend_and_decays_over_seven_days():
    st = CardState(10)
    key = mix_keys([9])
    one = np.ones(1, np.uint8)

    def spend(t, amount):
        return run_cards(st, key, np.array([t], np.int64), np.array([amount]), one, [1])[0]

    assert np.isnan(spend(0, 10.0)[9])                     # a card's first row has no peak
    for day in range(1, 31):                               # a month of 10.0 a day
        spend(day * DAY, 10.0)
    assert spend(31 * DAY, 50.0)[9] == pytest.approx(np.exp(-1 / 7))  # 10 / avg 10, a day old
    got = spend(31 * DAY + HOUR, 10.0)[9]                  # the 50.0 (5x) an hour ago
    assert got == pytest.approx(5 * np.exp(-1 / 24 / 7), rel=1e-6)
    assert spend(38 * DAY + HOUR, 10.0)[9] == pytest.approx(got * np.exp(-1), rel=1e-5)


def test_ratios_over_a_tiny_or_zero_average_saturate_instead_of_becoming_infinite():
    """Valid amounts (finite, >= 0) never make a feature infinite: a ratio over an average of 0
    or 1e-40 saturates at the largest finite float32 (zfraud.model's bound assumes it), for the
    card kernel's ratios and peak and for the 8-30-day ratio of window_features."""
    from zfraud.features import FEATURE_SETS, FULL, FeatureEngine
    top = np.finfo(np.float32).max
    names = FEATURE_SETS[FULL]
    j8, jr, jp = (names.index(n) for n in ("card_avg_amount_8_30d", "amount_over_card_avg_8_30d",
                                           "card_peak_amount_ratio_7d"))
    t0 = 19_000 * DAY

    def rows(card, ts, amounts):
        n = len(ts)
        return {"tx_id": np.arange(n, dtype=np.uint64), "card": np.full(n, card, np.uint64),
                "terminal": np.full(n, 9, np.uint64), "ts_ms": np.array(ts, np.int64),
                "amount": np.array(amounts, np.float64)}
    e = FeatureEngine(FULL, card_capacity=64, terminal_capacity=64)
    X = e.transform(rows(1, [t0, t0 + 10 * DAY], [0.0, 25.0]))  # a 0.00 verification, then 25.00
    assert X[1, j8] == 0 and X[1, jr] == top
    X = e.transform(rows(3, [t0, t0 + 10 * DAY, t0 + 10 * DAY + 60_000], [1e-40, 50.0, 25.0]))
    assert (X[1:, jr] == top).all()
    assert X[2, jp] == pytest.approx(top * np.exp(-60_000 / (7 * DAY)), rel=1e-6)  # decays from top
    X = e.transform(rows(3, [t0 + 12 * DAY], [25.0]))
    assert 0 < X[0, jp] < top
    # The card kernel's 7- and 30-day ratios: a read-only row over a window of tiny amounts.
    st, key = CardState(4), mix_keys([5])
    out = run_cards(st, key, np.array([t0], np.int64), np.array([1e-40]), np.ones(1, np.uint8), [1])
    out = run_cards(st, key, np.array([t0 + HOUR], np.int64), np.array([50.0]), np.zeros(1, np.uint8), [1])
    assert out[0, 6] == top and out[0, 7] == top
    for X in (X, out):
        assert not np.isinf(X).any()


def test_an_older_sum_of_zero_is_zero_not_float32_rounding_below_it():
    """A card whose spends 8-30 days back were all 0.00 (verifications) has an older average of
    0, so a new spend is larger than anything before it (the largest ratio), whatever its recent
    spends: the difference of the float32 7- and 30-day sums came out -3.8e-06 here, and the
    ratio -2.6e6, the smallest there is. Real older spends keep their average."""
    from zfraud.features import FEATURE_SETS, FULL, FeatureEngine
    top = np.finfo(np.float32).max
    names = FEATURE_SETS[FULL]
    j8, jr = names.index("card_avg_amount_8_30d"), names.index("amount_over_card_avg_8_30d")
    t0 = 19_000 * DAY
    e = FeatureEngine(FULL, card_capacity=64, terminal_capacity=64)
    for card, older, recent, want in ((1, [0.0], [42.33, 82.77], 0.0),
                                      (2, [0.0, 0.0], [98.07, 96.17, 72.48], 0.0),
                                      (3, [0.01], [98.07, 96.17, 72.48], 0.01)):
        amounts = older + recent + [10.0]
        ts = ([t0 + i * 1000 for i in range(len(older))]
              + [t0 + 15 * DAY + i * 1000 for i in range(len(recent) + 1)])
        n = len(ts)
        X = e.transform({"tx_id": np.arange(n, dtype=np.uint64), "card": np.full(n, card, np.uint64),
                         "terminal": np.full(n, 9, np.uint64), "ts_ms": np.array(ts, np.int64),
                         "amount": np.array(amounts, np.float64)})
        if want == 0:
            assert X[-1, j8] == 0 and X[-1, jr] == top, card
        else:  # float32 averages of 98-ish amounts leave the 0.01 right to 2e-06
            assert X[-1, j8] == pytest.approx(want, rel=1e-3) and X[-1, jr] == pytest.approx(1000, rel=1e-3)


def test_a_reread_duplicate_gets_the_features_of_its_first_read():
    keys, ts, amount, _ = card_stream(6, n=600, n_cards=30)
    order = np.argsort(ts, kind="stable")
    keys, ts, amount = keys[order], ts[order], amount[order]
    st = CardState(100)
    for i in range(len(keys)):
        k, t, a = keys[i:i + 1], ts[i:i + 1], amount[i:i + 1]
        first = run_cards(st, k, t, a, np.ones(1, np.uint8), [1])
        again = run_cards(st, k, t, a, np.zeros(1, np.uint8), [1])
        np.testing.assert_array_equal(again, first)


def test_events_older_than_the_rings_are_counted_not_added():
    st = CardState(10)
    key = mix_keys([1])
    one = np.ones(1, np.uint8)
    run_cards(st, key, np.array([40 * DAY], np.int64), np.array([5.0]), one, [1])
    late = run_cards(st, key, np.array([40 * DAY - 33 * DAY], np.int64), np.array([7.0]), one, [1])
    assert st.stats()["too_old"] == 1 and st.stats()["late"] == 1
    assert late[0, 0] == 0 and late[0, 4] == 0       # its own window holds nothing in the rings
    now = run_cards(st, key, np.array([40 * DAY + 1], np.int64), np.array([5.0]), one, [1])
    assert now[0, 4] == 2                             # the dropped event never counts


# ------------------------------------------------------------------------------------------------
# Capacity policy.

@pytest.mark.timeout(60)
def test_a_full_table_evicts_and_keeps_working():
    st = CardState(64)
    n = 20_000
    keys = mix_keys(np.arange(1, n + 1, dtype=np.uint64))
    ts = np.arange(n, dtype=np.int64) * 1000
    got = run_cards(st, keys, ts, np.full(n, 10.0), np.ones(n, np.uint8), [1024] * 20)
    assert (got[:, 0] == 1).all()                   # every new card starts fresh
    s = st.stats()
    assert len(st) == 64 and s["evictions"] == n - 64 and s["expiries"] == 0
    # The card just added is still there.
    again = run_cards(st, keys[-1:], ts[-1:], np.array([10.0]), np.zeros(1, np.uint8), [1])
    assert again[0, 0] == 1


@pytest.mark.timeout(60)
def test_adversarial_keys_with_one_home_slot_terminate_and_evict_the_stalest():
    # Keys sharing their top 32 bits all hash to the same slot: one long probe run.
    n, cap = 5000, 128
    keys = (np.uint64(0xDEADBEEF) << np.uint64(32)) | np.arange(n, dtype=np.uint64)
    st = CardState(cap)
    ts = np.arange(n, dtype=np.int64) * 1000
    run_cards(st, keys, ts, np.ones(n), np.ones(n, np.uint8), [1000] * 5)
    assert st.stats()["evictions"] == n - cap
    # Every key competes in the one window, so eviction was least-recently-seen: the last
    # `cap` keys are held and an older one is not.
    out = run_cards(st, keys[-cap:], ts[-cap:], np.ones(cap), np.zeros(cap, np.uint8), [cap])
    assert (out[:, 0] == 1).all()
    run_cards(st, keys[:1], ts[:1], np.ones(1), np.zeros(1, np.uint8), [1])
    assert st.stats()["read_missing"] == 1


def test_idle_cards_expire_before_active_ones_are_evicted():
    st = CardState(64)
    one = lambda k, t: run_cards(st, mix_keys(k), np.full(len(k), t, np.int64),
                                 np.ones(len(k)), np.ones(len(k), np.uint8), [len(k)])
    one(np.arange(1, 65, dtype=np.uint64), 0)
    one(np.arange(101, 165, dtype=np.uint64), 32 * DAY)     # all 64 first cards idle > 31 days
    s = st.stats()
    assert (s["expiries"], s["evictions"]) == (64, 0)
    one(np.arange(201, 265, dtype=np.uint64), 32 * DAY + HOUR)
    s = st.stats()
    assert (s["expiries"], s["evictions"]) == (64, 64)


def test_the_idle_sweep_reclaims_rows_outside_the_probe_window():
    # Keys chosen by home slot (capacity 64: 128 index slots, home = top 32 bits scaled to 128).
    def at(homes):
        homes = np.asarray(homes, np.uint64)
        return (homes << np.uint64(57)) | np.arange(1, len(homes) + 1, dtype=np.uint64)

    st = CardState(64)
    put = lambda k, t: run_cards(st, k, np.full(len(k), t, np.int64), np.ones(len(k)),
                                 np.ones(len(k), np.uint8), [len(k)])
    idle, active = at(range(0, 32)), at(range(64, 96)) + np.uint64(100)
    put(idle, 0)
    put(active, 40 * DAY)
    put(at([64]) + np.uint64(200), 40 * DAY + HOUR)   # its window holds only active cards
    s = st.stats()
    assert (s["expiries"], s["evictions"]) == (1, 0)
    out = run_cards(st, active, np.full(32, 40 * DAY, np.int64), np.ones(32),
                    np.zeros(32, np.uint8), [32])
    assert (out[:, 0] == 1).all()


# ------------------------------------------------------------------------------------------------
# Terminals.

def terminal_stream(seed, n=3000, n_terms=12, days=80, start_day=19000):
    rng = np.random.default_rng(seed)
    ts = np.sort(rng.integers(start_day * DAY, (start_day + days) * DAY, n)).astype(np.int64)
    terms = rng.integers(0, n_terms, n).astype(np.uint64) + np.uint64(500)
    fraud = rng.random(n) < 0.1
    return terms, ts, fraud


def terminal_features(tx_table, fraud_table, keys, ts, delay):
    """TERMINAL_FEATURES from a transaction table and a fraud table, through the feature kernel
    (window_features' terminal columns: counts, and risk = frauds / transactions)."""
    n = len(keys)
    t, f = np.empty((n, 3), np.float32), np.empty((n, 3), np.float32)
    tx_table.read(keys, ts, delay, t)
    fraud_table.read(keys, ts, delay, f)
    out = np.empty((n, 5 + 4 + 13), np.float32)
    _features.window_features(ts, np.ones(n), np.ones((n, 4), np.float32), t, f, np.zeros((n, 2), np.float32),
                              np.zeros((n, 3), np.float32), np.zeros((n, 3), np.float32), np.ones(n), out)
    return out[:, 9:15]


@pytest.mark.parametrize("delay,bucket_hours", [(7, 24), (0, 24), (3, 24), (7, 4), (3, 1)])
def test_terminal_features_match_the_book_at_bucket_granularity(delay, bucket_hours):
    terms, ts, fraud = terminal_stream(7)
    keys = mix_keys(terms)
    per_day = 24 // bucket_hours
    tx_table, fraud_table = (TerminalState(100, max_sources=2, days=delay + 33, bucket_hours=bucket_hours)
                             for _ in range(2))
    txs, frauds = Counter(), Counter()
    got, want = [], []
    for i in range(len(ts)):
        got.append(terminal_features(tx_table, fraud_table, keys[i:i + 1], ts[i:i + 1], delay)[0])
        want.append(book_terminal(txs, frauds, int(terms[i]), int(ts[i]), delay, per_day))
        tx_table.add_tx(keys[i:i + 1], ts[i:i + 1], 0)
        txs[(int(terms[i]), int(ts[i]) // (DAY // per_day))] += 1
        if fraud[i]:
            fraud_table.add_tx(keys[i:i + 1], ts[i:i + 1], 0)
            frauds[(int(terms[i]), int(ts[i]) // (DAY // per_day))] += 1
    np.testing.assert_array_equal(np.array(got), np.array(want, np.float32))
    assert np.array(got)[:, 4].max() > 0 and np.array(got)[:, 5].max() > 0


def compromised_stream(seed, n=4000, n_terms=10, days=90, start_day=19000):
    """terminal_stream with stretches of all-fraud traffic: terminal k is compromised for
    3 + 3k days from a random day, plus 2 % one-off frauds everywhere."""
    rng = np.random.default_rng(seed)
    ts = np.sort(rng.integers(start_day * DAY, (start_day + days) * DAY, n)).astype(np.int64)
    terms = rng.integers(0, n_terms, n).astype(np.uint64)
    fraud = rng.random(n) < 0.02
    for k in range(n_terms):
        first = (start_day + int(rng.integers(0, days - 3 - 3 * k))) * DAY
        fraud |= (terms == k) & (ts >= first) & (ts < first + (3 + 3 * k) * DAY)
    return terms + np.uint64(700), ts, fraud


@pytest.mark.parametrize("delay,bucket_hours", [(7, 4), (0, 24), (3, 1)])
def test_fraud_runs_match_the_raw_counts(delay, bucket_hours):
    terms, ts, fraud = compromised_stream(11)
    keys = mix_keys(terms)
    per_day = 24 // bucket_hours
    tx_table = TerminalState(32, max_sources=2, days=40, bucket_hours=bucket_hours)
    fraud_table = TerminalState(32, max_sources=2, days=40, bucket_hours=bucket_hours)
    txs, frauds, newest = Counter(), Counter(), {"tx": {}, "fraud": {}}
    out = np.empty((1, 2), np.float32)
    got, want = [], []
    for i in range(len(ts)):
        term, t, bucket = int(terms[i]), int(ts[i]), int(ts[i]) // (DAY // per_day)
        tx_table.add_tx(keys[i:i + 1], ts[i:i + 1], 0)
        txs[(term, bucket)] += 1
        newest["tx"][term] = max(newest["tx"].get(term, bucket), bucket)
        tx_table.read_runs(fraud_table, keys[i:i + 1], ts[i:i + 1], delay, out)
        got.append(out[0].copy())
        want.append(reference_run(txs, frauds, newest, term, t, delay, per_day, 40 * per_day))
        if fraud[i]:  # the label arrives at once; the delay shifts what reads see
            fraud_table.add_tx(keys[i:i + 1], ts[i:i + 1], 0)
            frauds[(term, bucket)] += 1
            newest["fraud"][term] = max(newest["fraud"].get(term, bucket), bucket)
    got, want = np.array(got), np.array(want, np.float32)
    np.testing.assert_array_equal(got, want)
    assert got[:, 0].max() >= 20 and (got[:, 0] == 0).mean() > 0.5  # long runs and no runs both seen
    batch = np.empty((len(ts), 2), np.float32)  # a batch read after the stream: the same walk per row
    tx_table.read_runs(fraud_table, keys, ts, delay, batch)
    one = np.empty((1, 2), np.float32)
    for i in range(0, len(ts), 97):
        tx_table.read_runs(fraud_table, keys[i:i + 1], ts[i:i + 1], delay, one)
        np.testing.assert_array_equal(batch[i], one[0])


def test_a_run_counts_a_compromise_until_genuine_traffic_is_revealed():
    """Days 0-9 genuine, 10-19 all fraud, 20- genuine, a transaction every 6 hours; delay 7."""
    tx_table, fraud_table = TerminalState(4, 1, 40, 4), TerminalState(4, 1, 40, 4)
    key = mix_keys([5])
    day0 = 19000 * DAY
    for q in range(4 * 30):
        t = np.array([day0 + q * 6 * HOUR], np.int64)
        tx_table.add_tx(key, t, 0)
        if 40 <= q < 80:
            fraud_table.add_tx(key, t, 0)

    def run(day):
        out = np.empty((1, 2), np.float32)
        tx_table.read_runs(fraud_table, key, np.array([day0 + day * DAY], np.int64), 7, out)
        return out[0].tolist()

    assert run(16.9) == [0, 0]            # sees up to 21:36 of day 9: no fraud yet
    assert run(17) == [1, 7]              # the bucket of day 10 00:00 holds the first fraud
    assert run(17.5) == [3, 7.5]          # frauds at 00:00, 06:00 and 12:00 of day 10
    assert run(25) == [33, 15]            # days 10-17 and 18 00:00, 4 a day; began 15 days ago
    assert run(26.5) == [39, 16.5]        # up to 12:00 of day 19
    assert run(27) == [40, 17]            # the whole compromise: day 20 00:00's genuine transaction
                                          # is in the newest bucket, whose later labels may still come
    assert run(27 + 1 / 6) == [0, 0]      # once a later bucket is read, that genuine one ends it
    out = np.empty((1, 2), np.float32)
    TerminalState(4, 1, 40, 4).read_runs(fraud_table, key, np.array([day0 + 35 * DAY], np.int64), 7, out)
    assert out[0].tolist() == [40, 25]    # without transaction counts nothing ends the run
    with pytest.raises(ValueError, match="same buckets"):
        tx_table.read_runs(TerminalState(4, 1, 40, 24), key, np.array([day0], np.int64), 7, out)


def test_a_run_read_far_ahead_walks_at_most_one_ring():
    """A read-only row dated far after the terminal's newest bucket walks back from that bucket,
    not from its own: one ring at most (it walked every bucket in between, 265 us per row for
    a row in 2199; here 10**9 days ahead, seconds per row)."""
    import time
    tx_table, fraud_table = TerminalState(4, 1, 40, 4), TerminalState(4, 1, 40, 4)
    key = mix_keys([5])
    day0 = 19000 * DAY
    for q in range(10):                                   # 10 frauds, 6 hours apart
        t = np.array([day0 + q * 6 * HOUR], np.int64)
        tx_table.add_tx(key, t, 0)
        fraud_table.add_tx(key, t, 0)
    far = day0 + 10**9 * DAY
    ts = np.array([day0 + 30 * DAY, far, far + DAY], np.int64)
    out = np.empty((3, 2), np.float32)
    start = time.perf_counter()
    tx_table.read_runs(fraud_table, np.repeat(key, 3), ts, 7, out)
    assert time.perf_counter() - start < 1.0
    assert out[:, 0].tolist() == [10, 10, 10]
    assert out[:, 1].tolist() == [30, np.float32(10**9), np.float32(10**9 + 1)]


def _engine_rows(terms, ts, cards, amounts):
    n = len(ts)
    return {"tx_id": np.arange(n, dtype=np.uint64), "card": np.asarray(cards, np.uint64),
            "terminal": np.asarray(terms, np.uint64), "ts_ms": np.asarray(ts, np.int64),
            "amount": np.asarray(amounts, np.float64)}


def test_a_batch_reads_each_terminal_row_before_the_next_is_counted():
    """FeatureEngine.transform counts and reads the terminal row by row, as one-row calls do:
    no row of a batch sees the rows after it (before, add_tx ran over the whole batch first)."""
    from zfraud.features import FEATURE_SETS, FULL, FeatureEngine
    names = FEATURE_SETS[FULL]
    j1, j30 = names.index("terminal_nb_tx_1d"), names.index("terminal_nb_tx_30d")
    t0 = 19_000 * DAY
    e = FeatureEngine(FULL, delay_days=0, card_capacity=64, terminal_capacity=64)
    e.transform(_engine_rows([9], [t0], [1000], [10.0]))
    X = e.transform(_engine_rows([9] * 3, t0 + DAY + np.arange(3) * 60_000, [1, 2, 3], [10.0] * 3))
    assert X[:, j1].tolist() == [1, 2, 3]                  # was 3, 3, 3: one bucket, delay 0
    assert X[:, j30].tolist() == [2, 3, 4]
    # Delay 7: a row 5 days later in the same batch moved the ring on before the first row read.
    hist = t0 + np.arange(0, 30 * DAY, 6 * HOUR)
    e = FeatureEngine(FULL, delay_days=7, card_capacity=256, terminal_capacity=64)
    e.transform(_engine_rows(np.full(len(hist), 9), hist, 1000 + np.arange(len(hist)), np.full(len(hist), 10.0)))
    t = int(hist[-1]) + 12 * DAY
    X = e.transform(_engine_rows([9, 9], [t, t + 5 * DAY], [1, 2], [10.0, 10.0]))
    assert X[:, j30].tolist() == [100, 80]                 # was 92, 80


@pytest.mark.parametrize("delay", [0, 7])
def test_engine_batches_equal_one_by_one(delay):
    """Every zfraud-v6 feature of a stream with labels, repeats (update False) and evictions is
    the same whether the stream arrives whole, in random batches or one row at a time."""
    from zfraud.features import FEATURE_SETS, FULL, FeatureEngine
    terms, ts, fraud = compromised_stream(12, n=1500, n_terms=15, days=60)
    rng = np.random.default_rng(13)
    cols = _engine_rows(terms, ts, rng.integers(0, 60, len(ts)), rng.uniform(1, 100, len(ts)))
    update = rng.random(len(ts)) > 0.1
    labels = {k: cols[k][fraud] for k in ("card", "terminal", "ts_ms", "amount")}
    labels["fraud"] = np.ones(int(fraud.sum()), np.uint8)

    def run(sizes):
        e = FeatureEngine(FULL, delay_days=delay, card_capacity=256, terminal_capacity=12)
        e.apply_labels(labels)   # the label tables do not change during the stream
        out, lo = [], 0
        for size in sizes:
            hi = min(lo + size, len(ts))
            out.append(e.transform({k: v[lo:hi] for k, v in cols.items()}, update[lo:hi]))
            lo = hi
        assert lo == len(ts)
        return np.vstack(out)
    one = run([1] * len(ts))
    np.testing.assert_array_equal(run([len(ts)]), one)
    np.testing.assert_array_equal(run(random_batches(rng, len(ts))), one)
    assert one[:, FEATURE_SETS[FULL].index("terminal_fraud_run_frauds")].max() > 0
    e = FeatureEngine(FULL, delay_days=delay, card_capacity=256, terminal_capacity=12)
    e.transform(cols, update)
    assert e.state.terminals.stats()["evictions"] > 0


def test_unknown_terminal_reads_zeros():
    out = np.full((2, 3), 9, np.float32)
    TerminalState(4).read(mix_keys([1, 2]), np.array([0, DAY], np.int64), 7, out)
    assert (out == 0).all()


def deliver(dst, slot, msg):
    keys, days, counts, _ = msg
    dst.merge(slot, keys, days, counts)


def two_workers(seed):
    """Two workers, each a transaction table and a fraud table, that each saw part of the
    traffic (A in slot 0, B in slot 1 of both); the frauds are split between them too (each
    labels its own side). Returns {name: (tx table, fraud table)}, every delta message they
    published during the stream, and the raw events."""
    terms, ts, fraud = terminal_stream(seed)
    keys = mix_keys(terms)
    rng = np.random.default_rng(seed + 100)
    w = {name: (TerminalState(64, max_sources=4, days=40), TerminalState(64, max_sources=4, days=40))
         for name in "ab"}
    side = rng.random(len(ts)) < 0.5
    since = {(name, k): 0 for name in "ab" for k in range(2)}
    msgs = []                                   # (destination, table 0 tx / 1 fraud, slot, message)
    for lo in range(0, len(ts), 250):
        sl = slice(lo, lo + 250)
        for name, slot, m in (("a", 0, side[sl]), ("b", 1, ~side[sl])):
            f = m & fraud[sl]
            w[name][0].add_tx(keys[sl][m], ts[sl][m], slot)
            w[name][1].add_tx(keys[sl][f], ts[sl][f], slot)
            for k in range(2):
                e = w[name][k].export(slot, since[(name, k)])
                since[(name, k)] = e[3]
                msgs.append(("b" if name == "a" else "a", k, slot, e))
    return w, msgs, terms, ts, fraud


def final_reads(worker, terms, ts):
    q_terms = np.unique(terms)
    q_ts = np.array([ts.max() - k * DAY // 3 for k in range(6)], np.int64)
    keys = np.repeat(mix_keys(q_terms), len(q_ts))
    tq = np.tile(q_ts, len(q_terms))
    return terminal_features(*worker, keys, tq, 7), np.repeat(q_terms, len(q_ts)), tq


@pytest.mark.parametrize("order", ["in_order", "reversed", "shuffled_repeated", "b_first"])
def test_two_halves_converge_after_exchanging_deltas(order):
    w, msgs, terms, ts, fraud = two_workers(8)
    a, b = w["a"], w["b"]
    rng = np.random.default_rng(9)
    if order == "reversed":
        msgs = msgs[::-1]
    elif order == "shuffled_repeated":
        msgs = [msgs[i] for i in rng.integers(0, len(msgs), 3 * len(msgs))] + msgs
        rng.shuffle(msgs)
    elif order == "b_first":
        msgs = sorted(msgs, key=lambda m: m[0] != "a")
    for dst, k, slot, msg in msgs:
        deliver(w[dst][k], slot, msg)
    ra, qt, qts = final_reads(a, terms, ts)
    rb, _, _ = final_reads(b, terms, ts)
    np.testing.assert_array_equal(ra, rb)
    txs = Counter((int(t), int(x) // DAY) for t, x in zip(terms, ts))
    frauds = Counter((int(t), int(x) // DAY) for t, x, f in zip(terms, ts, fraud) if f)
    want = np.array([book_terminal(txs, frauds, int(t), int(x), 7) for t, x in zip(qt, qts)],
                    np.float32)
    np.testing.assert_array_equal(ra, want)
    assert ra[:, 4].min() > 0


def test_full_exports_converge_in_either_order_and_repeat():
    w, _, terms, ts, _ = two_workers(10)
    results = []
    for first in ("a", "b"):
        x, y = [], []
        for k in range(2):
            x.append(TerminalState(64, 4, 40))
            x[k].restore(w["a"][k].snapshot())
            y.append(TerminalState(64, 4, 40))
            y[k].restore(w["b"][k].snapshot())
        full_x = [(k, 0, x[k].export(0, -1)) for k in range(2)]
        full_y = [(k, 1, y[k].export(1, -1)) for k in range(2)]
        for _ in range(2):
            if first == "a":
                [deliver(y[k], s, m) for k, s, m in full_x]
                [deliver(x[k], s, m) for k, s, m in full_y]
            else:
                [deliver(x[k], s, m) for k, s, m in full_y]
                [deliver(y[k], s, m) for k, s, m in full_x]
        rx, ry = final_reads(x, terms, ts)[0], final_reads(y, terms, ts)[0]
        np.testing.assert_array_equal(rx, ry)
        results.append(rx)
    np.testing.assert_array_equal(results[0], results[1])


def test_export_returns_only_local_changes_since_a_version():
    st = TerminalState(8, max_sources=2, days=40)
    k = mix_keys([3])
    st.add_tx(k, np.array([5 * DAY], np.int64), 0)
    keys, days, counts, v = st.export(0, 0)
    assert list(days) == [5] and list(counts) == [1] and keys[0] == k[0]
    assert len(st.export(0, v)[0]) == 0
    st.merge(1, k, np.array([5], np.int32), np.array([4], np.uint32))      # a peer's count
    assert len(st.export(0, v)[0]) == 0                                    # merges are not echoed
    st.add_tx(k, np.array([5 * DAY + 1], np.int64), 0)
    keys, days, counts, _ = st.export(0, v)
    assert list(counts) == [2]                                             # cumulative, not +1
    assert list(st.export(1, -1)[2]) == [4]                                # full export has it
    with pytest.raises(ValueError, match="expected a source slot"):
        st.export(2, 0)



def reference_export(st, slot, since):
    """export()'s answer computed from a snapshot's raw arrays, bucket by bucket."""
    snap = st.snapshot()
    ring = snap["stamp"].shape[1]
    values = snap["tx"][:, :, slot]
    out = set()
    for r in range(len(snap["key"])):
        last = int(snap["last_bucket"][r])
        for j in range(ring):
            if values[r, j] and (since < 0 or snap["stamp"][r, j] > since):
                out.add((int(snap["key"][r]), last - (last - j) % ring, int(values[r, j])))
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_export_since_any_version_matches_the_stamps(seed):
    """Exports since the last version read only the buckets changed since (row_low); any other
    `since` reads every bucket. Both must agree with the stamps, with late (older-bucket)
    changes, ring moves and reloaded snapshots in between."""
    rng = np.random.default_rng(seed)
    st = TerminalState(16, max_sources=2, days=3, bucket_hours=4)   # an 18-bucket ring
    versions = [0]
    now = 100 * DAY
    for step in range(60):
        n = int(rng.integers(1, 30))
        keys = mix_keys(rng.integers(0, 24, n).astype(np.uint64))  # more keys than rows: evictions
        ts = now - rng.integers(0, 4 * DAY, n)                       # some beyond the ring
        if rng.random() < 0.3:
            st.add_tx(keys, ts, 0, None, rng.integers(0, 50, n).astype(np.uint32))  # counts, some 0
        else:
            st.add_tx(keys, ts, 0)
        now += int(rng.integers(0, DAY // 2))
        if step % 17 == 16:
            again = TerminalState(16, max_sources=2, days=3, bucket_hours=4)
            again.restore(st.snapshot())
            st = again
        since = versions[-1] if rng.random() < 0.6 else int(rng.choice(versions + [-1]))
        slot = 0
        want = reference_export(st, slot, since)
        keys_out, buckets, counts, v = st.export(slot, since)
        assert set(zip(keys_out.tolist(), buckets.tolist(), counts.tolist())) == want
        assert len(keys_out) == len(want)
        versions.append(v)


# ------------------------------------------------------------------------------------------------
# Snapshots.

def test_unmix_keys_inverts_the_mixing():
    ids = np.random.default_rng(1).integers(0, 2**63, 1000, dtype=np.uint64) * np.uint64(2)
    ids[:3] = [0, 1, 2**64 - 1]
    np.testing.assert_array_equal(unmix_keys(mix_keys(ids)), ids)


def sorted_records(recs):
    return recs[np.argsort(recs["key"])]


def card_reads(state, keys, t):
    """Read-only features of `keys` at time t: what the rings say, nothing added."""
    out = np.empty((len(keys), len(CARD_FEATURES)), np.float32)
    state.update_and_read(keys, np.full(len(keys), t, np.int64), np.full(len(keys), 50.0),
                          np.zeros(len(keys), np.uint8), out)
    return out


@pytest.mark.parametrize("into", ["newer", "older"])
def test_a_card_split_between_two_owners_merges_into_its_whole_history(into):
    """The first half of a stream (late and repeated rows included) on one table, the second half
    on another, then one's records put into the other (a handover, either way round): the rings
    hold what one table that saw everything holds. Amount sums may round differently (they are
    added in another order). The peak ratio is not rebuilt: both halves hold days of
    transactions, so neither began without the other's history (card_merge_peak), and each
    side's ratios stay as computed without the other's transactions."""
    keys, ts, amount, update = card_stream(21)
    half = len(keys) // 2
    whole, first, second = CardState(64), CardState(64), CardState(64)
    run_cards(whole, keys, ts, amount, update, [512] * 8)
    run_cards(first, keys[:half], ts[:half], amount[:half], update[:half], [512] * 4)
    run_cards(second, keys[half:], ts[half:], amount[half:], update[half:], [512] * 4)
    src, dst = (first, second) if into == "newer" else (second, first)
    moving, there = set(src.keys().tolist()), set(dst.keys().tolist())
    assert dst.put(src.take(src.keys())) == (len(moving - there), len(moving & there))
    assert len(src) == 0 and len(moving & there) > 10 and len(dst) == len(whole)
    a, b = sorted_records(whole.take(whole.keys())), sorted_records(dst.take(dst.keys()))
    for field in ("key", "last_ts", "last_amount", "hour_count", "day_count"):
        np.testing.assert_array_equal(a[field], b[field], err_msg=field)
    for field in ("hour_sum", "day_sum"):
        np.testing.assert_allclose(a[field], b[field], rtol=1e-5, err_msg=field)


def card_rows(state, t, amount, update=1, card=7):
    """Rows of one card through update_and_read, in order: its features."""
    n = len(t)
    out = np.empty((n, len(CARD_FEATURES)), np.float32)
    state.update_and_read(mix_keys(np.full(n, card, np.uint64)), np.asarray(t, np.int64),
                          np.asarray(amount, np.float64), np.full(n, update, np.uint8), out)
    return out


def card_record(state, card=7):
    rec = state.take(mix_keys(np.array([card], np.uint64)))
    state.put(rec)
    return rec[0]


T0 = 17_622 * DAY  # 2018-04-01, a midnight


def card_history(seed, days=20, n=40):
    """A card's first `days` days: n amounts of 10-60 with cents, one of them 400."""
    rng = np.random.default_rng(seed)
    t = T0 + np.sort(rng.integers(0, days * DAY, n))
    amount = rng.uniform(10, 60, n).round(2)
    amount[int(0.75 * n)] = 400.0
    return t, amount


@pytest.mark.parametrize("later", [[(5, 250.0)], [(1, 30.0), (5, 250.0)], [(5, 250.0), (5.5, 20.0)],
                                   [(1, 30.0), (5, 250.0), (9, 20.0)]],
                         ids=["one", "two", "two-in-an-hour", "three"])
@pytest.mark.parametrize("into", ["new owner", "old owner"])
def test_a_merged_record_reads_like_one_engine_when_one_side_began_after_the_other(later, into):
    """Handover: the old owner holds a card's 20 days of history, the new owner the
    transactions it scored before that record reached it (hours later here). Merged either
    way round, the next transactions read what one engine that saw everything reads, bit for
    bit, the peak amount ratio included: the new owner computed its rows' ratios against no
    history (0), so the merge computes them again against the merged history (the tester's
    figures: 4.797 where one engine reads 6.191)."""
    hist_t, hist_a = card_history(1)
    late_t = T0 + 20 * DAY + np.array([int(h * HOUR) for h, _ in later])
    late_a = np.array([a for _, a in later])
    whole, old, new = CardState(16), CardState(16), CardState(16)
    card_rows(whole, hist_t, hist_a)
    card_rows(whole, late_t, late_a)
    card_rows(old, hist_t, hist_a)
    card_rows(new, late_t, late_a)
    key = mix_keys(np.array([7], np.uint64))
    src, dst = (old, new) if into == "new owner" else (new, old)
    assert dst.put(src.take(key)) == (0, 1)
    a, b = card_record(whole), card_record(dst)
    for field in CARD_DTYPE.names:
        np.testing.assert_array_equal(a[field], b[field], err_msg=field)
    nxt = T0 + 20 * DAY + np.array([12 * HOUR, 12 * HOUR, 3 * DAY])
    for update in (1, 0):  # the next row; a re-read of the newest (its peak_read)
        rows = [nxt[:1], [35.0]] if update else [late_t[-1:], late_a[-1:]]
        np.testing.assert_array_equal(card_rows(whole, *rows, update), card_rows(dst, *rows, update))
    np.testing.assert_array_equal(card_rows(whole, nxt[1:], [20.0, 90.0]), card_rows(dst, nxt[1:], [20.0, 90.0]))


def test_a_transaction_a_stale_client_sent_to_the_old_owner_counts_in_the_merged_peak():
    """The new owner holds the card's history (handed over) and goes on scoring it; a client with
    a stale member list sends one transaction (the largest) to the old owner, which starts a
    record for it with no history, and hands that over at its next sweep. The merged record's
    peak includes that transaction's ratio against the history, decayed to the newest
    transaction: what one engine reads, within float32 rounding (the one engine rounds the
    decayed peak at each later transaction, the merge once)."""
    hist_t, hist_a = card_history(2)
    t = T0 + 20 * DAY + np.array([1, 5, 9, 13]) * HOUR
    a = np.array([30.0, 250.0, 20.0, 41.5])
    whole, old, new = CardState(16), CardState(16), CardState(16)
    card_rows(whole, hist_t, hist_a)
    card_rows(whole, t, a)
    card_rows(old, hist_t, hist_a)
    key = mix_keys(np.array([7], np.uint64))
    assert new.put(old.take(key)) == (1, 0)                 # the handover
    stale = np.arange(4) == 1
    card_rows(new, t[~stale], a[~stale])
    card_rows(old, t[stale], a[stale])                      # the stale client's transaction
    assert new.put(old.take(key)) == (0, 1)
    nxt = T0 + 21 * DAY
    want, got = card_rows(whole, [nxt], [35.0])[0], card_rows(new, [nxt], [35.0])[0]
    np.testing.assert_array_equal(want[:9], got[:9])
    assert got[9] == pytest.approx(want[9], rel=1e-6) and want[9] > 6  # the 250.0 (the old merge: 5.24)


def test_take_removes_only_the_cards_asked_for_and_put_restores_them():
    keys, ts, amount, update = card_stream(22)
    state = CardState(64)
    run_cards(state, keys, ts, amount, update, [1024] * 4)
    held = state.keys()
    t = int(ts.max()) + HOUR
    before = card_reads(state, held, t)
    gone = np.ascontiguousarray(held[::3])
    recs = state.take(np.concatenate([gone, mix_keys(np.array([7, 8], np.uint64))]))  # 2 not held
    assert len(recs) == len(gone) and len(state) == len(held) - len(gone)
    assert set(state.keys().tolist()) == set(held.tolist()) - set(gone.tolist())
    kept = np.isin(held, gone, invert=True)
    np.testing.assert_array_equal(card_reads(state, held[kept], t), before[kept])  # the rest unharmed
    missing = state.stats()["read_missing"]
    card_reads(state, gone, t)
    assert state.stats()["read_missing"] == missing + len(gone)
    assert state.put(recs) == (len(gone), 0)
    np.testing.assert_array_equal(card_reads(state, held, t), before)  # back exactly as they were
    with pytest.raises(ValueError, match="CARD_DTYPE"):
        state.put(np.zeros(3, np.float64))


def test_handed_over_records_with_arbitrary_bytes_add_merge_and_run_without_harm():
    """A peer's records are trusted no more than a snapshot: any bytes of the right size are
    added, merged again into themselves, and the table keeps working."""
    rng = np.random.default_rng(23)
    junk = np.frombuffer(rng.bytes(200 * CARD_DTYPE.itemsize), CARD_DTYPE).copy()
    junk["key"][:100] = junk["key"][100:]  # half of them twice: the second put merges
    state = CardState(128)
    keys, ts, amount, update = card_stream(24, n=1000)
    run_cards(state, keys, ts, amount, update, [100] * 10)
    added, merged = state.put(junk)
    assert added + merged == (junk["last_ts"] != np.iinfo(np.int64).min).sum()
    state.put(junk)
    out = run_cards(state, keys, ts, amount, update, [100] * 10)
    assert out.shape == (1000, len(CARD_FEATURES)) and len(state) == 128


def test_card_snapshot_round_trip_gives_identical_features():
    keys, ts, amount, update = card_stream(11)
    half = len(keys) // 2
    a = CardState(24)                                   # small: evictions before and after
    run_cards(a, keys[:half], ts[:half], amount[:half], update[:half], [500] * 10)
    snap = a.snapshot()
    b = CardState(24)
    b.restore(snap)
    assert b.stats() == a.stats()
    rest = (keys[half:], ts[half:], amount[half:], update[half:])
    np.testing.assert_array_equal(run_cards(b, *rest, [700] * 10), run_cards(a, *rest, [700] * 10))
    assert b.stats() == a.stats() and a.stats()["evictions"] > 0


def test_terminal_snapshot_round_trip_gives_identical_features_and_exports():
    w, _, terms, ts, _ = two_workers(12)
    restored = []
    for table in w["a"]:
        copy = TerminalState(64, 4, 40)
        copy.restore(table.snapshot())
        restored.append(copy)
    np.testing.assert_array_equal(final_reads(restored, terms, ts)[0], final_reads(w["a"], terms, ts)[0])
    a, b = w["a"][0], restored[0]
    more = mix_keys(terms[:50])
    for st in (a, b):
        st.add_tx(more, ts[-50:], 0)
    for since in (-1, 0, a.current_version - 1):
        for x, y in zip(a.export(0, since), b.export(0, since)):
            np.testing.assert_array_equal(x, y)
    assert a.stats() == b.stats()


def card_snapshot():
    st = CardState(50)
    keys, ts, amount, update = card_stream(13, n=300)
    run_cards(st, keys, ts, amount, update, [300])
    return st, st.snapshot(), (keys, ts, amount)


def _set(snap, name, value):
    snap = dict(snap)
    snap[name] = value
    return snap


CARD_CORRUPTIONS = {
    "short ring": lambda s: _set(s, "day_count", s["day_count"][:, :31].copy()),
    "wrong dtype": lambda s: _set(s, "last_ts", s["last_ts"].astype(np.float64)),
    "ragged rows": lambda s: _set(s, "hour_sum", s["hour_sum"][:-1].copy()),
    "missing array": lambda s: {k: v for k, v in s.items() if k != "prev_ts"},
    "not an array": lambda s: _set(s, "last_amount", list(s["last_amount"])),
    "wrong kind": lambda s: _set(s, "kind", np.array("zfraud.TerminalState/1")),
    "cursor out of range": lambda s: _set(s, "cursor", np.array(10**6, np.int64)),
    "stats shape": lambda s: _set(s, "stats", np.zeros(2, np.int64)),
    "repeated key": lambda s: _set(s, "key", np.concatenate([s["key"][:1], s["key"][:-1]])),
}


@pytest.mark.parametrize("corruption", sorted(CARD_CORRUPTIONS))
def test_card_restore_rejects_a_bad_snapshot_and_keeps_its_state(corruption):
    st, snap, (keys, ts, amount) = card_snapshot()
    probe = lambda: run_cards(st, keys[:50], ts[:50], amount[:50], np.zeros(50, np.uint8), [50])
    before = probe()
    with pytest.raises(ValueError, match="expected"):
        st.restore(CARD_CORRUPTIONS[corruption](snap))
    np.testing.assert_array_equal(probe(), before)


def test_card_restore_rejects_more_rows_than_capacity():
    _, snap, _ = card_snapshot()
    with pytest.raises(ValueError, match="expected at most 10 rows"):
        CardState(10).restore(snap)


@pytest.mark.parametrize("corruption", ["days", "sources", "bucket_hours", "version", "repeated key"])
def test_terminal_restore_rejects_a_bad_snapshot(corruption):
    a = two_workers(14)[0]["a"][0]
    snap = a.snapshot()
    target = TerminalState(64, 4, 40)
    if corruption == "days":
        target = TerminalState(64, 4, 41)
    elif corruption == "sources":
        target = TerminalState(64, 8, 40)
    elif corruption == "bucket_hours":
        target = TerminalState(64, 4, 40, bucket_hours=4)
    elif corruption == "version":
        snap = _set(snap, "version", np.array(int(snap["stamp"].max()) - 1, np.int64))
    else:
        snap = _set(snap, "key", np.concatenate([snap["key"][:1], snap["key"][:-1]]))
    with pytest.raises(ValueError, match="expected"):
        target.restore(snap)
    assert len(target) == 0


def test_snapshots_with_arbitrary_values_restore_and_run_without_harm():
    # Shapes and dtypes are checked; values are not, so any value must be safe to run on.
    rng = np.random.default_rng(18)

    def garble(snap):
        out = {}
        for name, a in snap.items():
            if name in ("kind", "cursor", "version") or a.dtype.kind not in "iuf":
                out[name] = a
            elif a.dtype.kind == "f":
                out[name] = rng.normal(0, 1e6, a.shape).astype(a.dtype)
            else:
                info = np.iinfo(a.dtype)
                out[name] = rng.integers(info.min, info.max, a.shape, dtype=a.dtype, endpoint=True)
        out["key"] = np.unique(out["key"])[: len(snap["key"])]
        out["key"] = np.concatenate([out["key"], snap["key"][len(out["key"]):]])
        return out

    st, snap, (keys, ts, amount) = card_snapshot()
    for _ in range(20):
        bad = garble(snap)
        fresh = CardState(50)
        fresh.restore(bad)
        ks = np.concatenate([bad["key"][:20], keys[:20]])
        tt = rng.integers(-2**62, 2**62, 40, dtype=np.int64)
        out = run_cards(fresh, ks, tt, np.ones(40), (rng.random(40) < 0.5).astype(np.uint8), [40])
        assert out.shape == (40, len(CARD_FEATURES))
    a = two_workers(19)[0]["a"][0]
    tsnap = a.snapshot()
    for _ in range(20):
        bad = garble(tsnap)
        bad["version"] = np.array(int(bad["stamp"].max()) + 1 if bad["stamp"].size else 1, np.int64)
        bad["tx"] = (bad["tx"] >> np.uint32(8)).astype(np.uint32)      # keep daily totals < 2**32
        bad["bucket_hours"] = tsnap["bucket_hours"]  # a setting, checked (see the test below)
        t = TerminalState(64, 4, 40)
        t.restore(bad)
        out = np.empty((10, 3), np.float32)
        kk = bad["key"][:10].copy()
        t.read(kk, rng.integers(-2**62, 2**62, 10, dtype=np.int64), 7, out)
        t.add_tx(kk, rng.integers(-2**40, 2**40, 10, dtype=np.int64), 1)
        t.merge(2, kk, rng.integers(-2**31, 2**31 - 1, 10, dtype=np.int32),
                rng.integers(0, 2**32 - 1, 10, dtype=np.uint32))
        for slot in (0, 3):
            t.export(slot, -1)
            t.export(slot, 0)


# ------------------------------------------------------------------------------------------------
# The Python wrapper.

def columns(seed, n=2000):
    keys, ts, amount, _ = card_stream(seed, n=n)
    order = np.argsort(ts, kind="stable")
    rng = np.random.default_rng(seed)
    return {"card": rng.integers(0, 300, n).astype(np.uint64),
            "terminal": rng.integers(0, 20, n).astype(np.uint64),
            "ts_ms": ts[order] + 19000 * DAY, "amount": amount[order]}


def drive(state, cols, lo, hi):
    part = {k: v[lo:hi] for k, v in cols.items()}
    x = np.hstack([state.card_features(part), state.terminal_counts(part)])
    state.record_terminal(part)
    return x


def test_feature_state_save_and_load_round_trip(tmp_path):
    cols = columns(15)
    a = FeatureState(card_capacity=200, terminal_capacity=32, source_slot=2)
    drive(a, cols, 0, 1000)
    path = tmp_path / "state.npz"
    a.save(path)
    a.save(path)                                       # replaces atomically
    assert sorted(os.listdir(tmp_path)) == ["state.npz"]
    b = FeatureState(card_capacity=200, terminal_capacity=32, source_slot=2)
    b.load(path)
    np.testing.assert_array_equal(drive(b, cols, 1000, 2000), drive(a, cols, 1000, 2000))
    assert b.stats() == a.stats()
    for x, y in zip(a.export_deltas(0).values(), b.export_deltas(0).values()):
        np.testing.assert_array_equal(x, y)


def test_feature_state_load_rejects_other_files(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    st = FeatureState(card_capacity=10, terminal_capacity=10)
    with pytest.raises(ValueError, match=r"not a zfraud snapshot \(not an \.npz archive\)"):
        st.load(bad)
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="expected format"):
        st.load(tmp_path / "other.npz")
    small = FeatureState(card_capacity=10, terminal_capacity=10)
    drive(small, columns(16, n=300), 0, 300)
    small.save(tmp_path / "small.npz")
    with pytest.raises(ValueError, match="expected"):
        other = FeatureState(card_capacity=10, terminal_capacity=10, max_sources=8)
        other.load(tmp_path / "small.npz")


@pytest.mark.parametrize("key, value, why", [
    ("meta.sources", np.array("w2"), r"meta.sources is not a list of names \(\(\) <U2\)"),
    ("meta.retired", np.array("w9"), r"meta.retired is not a list of names"),
    ("meta.retired_slot", np.array([1, 2]), r"meta.retired_slot is not a slot number"),
    ("meta.sources", np.array([f"w{k}" for k in range(20)]), r"20 peer slots \(retired: slot 0\) do not fit its 4 "
                                                              r"source slots"),
    ("meta.retired_slot", np.array(3), r"1 peer slots \(retired: slot 3\) do not fit"),
    ("meta.retired_bucket", np.array([1, 2]), r"meta.retired_bucket is not one bucket number per retired name"),
    ("meta.retired_bucket", np.array(["x"]), r"meta.retired_bucket is not one bucket number per retired name"),
])
def test_engine_load_names_a_malformed_peer_list(tmp_path, key, value, why):
    """A 0-d name list or a vector slot was a TypeError traceback at the worker's start (it turns
    ValueError into one line), and 20 peer names for 4 slots loaded, then broke each sync."""
    from zfraud.features import FULL, FeatureEngine
    path = tmp_path / "w.state.npz"
    a = FeatureEngine(FULL, 7, 64, 64)
    a.sources = {"w2": 1}
    a.save(path)
    arrays = dict(np.load(path))
    arrays[key] = value
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=why):
        FeatureEngine(FULL, 7, 64, 64).load(path)


def test_engine_load_says_a_snapshot_was_saved_under_another_delay(tmp_path):
    """It said: snapshot 'tx': expected uint32 (0, 246, 4), got uint32 (0, 240, 4)."""
    from zfraud.features import FULL, FeatureEngine
    path = tmp_path / "w.state.npz"
    FeatureEngine(FULL, 7, 64, 64).save(path)
    with pytest.raises(ValueError, match=r"^state: its terminal rings keep 40 days, this worker's 41 \(the label delay "
                                         r"\+ 31, at least 40: it was saved under another --delay\)$"):
        FeatureEngine(FULL, 10, 64, 64).load(path)
    FeatureEngine(FULL, 5, 64, 64).load(path)  # the same 40-day rings: the counts do not depend on the delay


def test_unfinished_saves_of_a_path_are_removed_and_no_one_elses(tmp_path):
    """A save killed mid-write (OOM, kill -9) left a .zfraud-state-*.tmp of 2-19 MB that nothing
    removed: each one named after its snapshot can be, by the one worker that writes it."""
    from zfraud.state import remove_unfinished, save_npz
    path = tmp_path / "w1.state.npz"
    save_npz(path, {"x": np.arange(3)})
    assert sorted(os.listdir(tmp_path)) == ["w1.state.npz"]  # its own temporary file is gone
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a writer killed mid-write: its pid names no process now
    alive = f".w1.state.npz.{os.getpid()}.x9.tmp"  # a save running now (a namesake's, about to be refused)
    for name in (f".w1.state.npz.{dead.pid}.k3j4.tmp", ".w1.state.npz.a.tmp", alive,
                 f".w10.state.npz.{dead.pid}.b.tmp", f".w2.state.npz.{dead.pid}.c.tmp",
                 ".w1.state.npz.99999999999999999999.x.tmp"):  # no pid is that large (os.kill: OverflowError)
        (tmp_path / name).write_bytes(b"PK partial")
    assert remove_unfinished(path) == 2  # not .w1.state.npz.a.tmp: no writer names its files so
    assert sorted(os.listdir(tmp_path)) == sorted([alive, ".w1.state.npz.a.tmp", f".w10.state.npz.{dead.pid}.b.tmp",
                                                   f".w2.state.npz.{dead.pid}.c.tmp", "w1.state.npz"])
    assert remove_unfinished(path) == 0
    (tmp_path / "gone").write_text("a file where the state directory was")
    assert remove_unfinished(tmp_path / "gone" / "w1.state.npz") == 0  # in the worker's loop: it must not raise


def test_feature_state_checks_columns_and_settings():
    st = FeatureState(card_capacity=10, terminal_capacity=10)
    cols = {"card": np.arange(3, dtype=np.uint64), "ts_ms": np.zeros(3, np.int64),
            "amount": np.array([1.0, np.nan, 2.0])}
    with pytest.raises(ValueError, match="finite"):
        st.card_features(cols)
    with pytest.raises(ValueError, match="'amount': expected shape"):
        st.card_features({**cols, "amount": np.ones(2)})
    with pytest.raises(ValueError, match="expected a column 'terminal'"):
        st.terminal_counts(cols)
    with pytest.raises(ValueError, match="update_mask"):
        st.card_features({**cols, "amount": np.ones(3)}, np.ones(2, bool))
    with pytest.raises(ValueError, match="terminal_days"):
        FeatureState(card_capacity=10, terminal_capacity=10, terminal_days=30)
    with pytest.raises(ValueError, match="source_slot"):
        FeatureState(card_capacity=10, terminal_capacity=10, source_slot=16)


def test_feature_state_update_mask_and_deltas_between_workers():
    cols = columns(17, n=1200)
    mask = np.arange(1200) % 3 != 0
    # Rows outside the mask are read without being added: the masked-in rows see exactly what a
    # state that only ever saw them sees.
    w0 = FeatureState(card_capacity=400, terminal_capacity=32, source_slot=0)
    only = FeatureState(card_capacity=400, terminal_capacity=32, source_slot=0)
    x = w0.card_features(cols, mask)
    y = only.card_features({k: v[mask] for k, v in cols.items()})
    assert x.shape == (1200, len(CARD_FEATURES)) and x.dtype == np.float32
    np.testing.assert_array_equal(x[mask], y)
    # Two workers count their own halves; after exchanging deltas (twice: repeats are harmless)
    # they read the same terminal counts, the sum of both halves.
    w1 = FeatureState(card_capacity=400, terminal_capacity=32, source_slot=1)
    alone = FeatureState(card_capacity=400, terminal_capacity=32, source_slot=0)
    for st, m in ((w0, mask), (w1, ~mask)):
        st.record_terminal(cols, m)
    alone.record_terminal(cols)
    d0, d1 = w0.export_deltas(0), w1.export_deltas(0)
    for _ in range(2):
        w1.merge_deltas(d0)
        w0.merge_deltas(d1)
    probe = {k: v[-100:] for k, v in cols.items()}
    t0 = w0.terminal_counts(probe)
    np.testing.assert_array_equal(t0, w1.terminal_counts(probe))
    np.testing.assert_array_equal(t0, alone.terminal_counts(probe))
    assert t0[:, 2].max() > 0
    assert w1.export_deltas(d1["version"])["tx_key"].size == 0     # nothing new counted locally


def test_feature_engine_grows_its_source_slots_and_keeps_every_count(tmp_path):
    """Terminal tables start with 4 slots (this worker and 3 peers) and double when a fifth
    source arrives: counts already merged survive the growth, the new peer's are added, and a
    snapshot taken after growth loads into a fresh engine."""
    from zfraud.features import FULL, MAX_SOURCES, FeatureEngine

    def engine():
        return FeatureEngine(FULL, card_capacity=1024, terminal_capacity=1024)

    day = 17_800 * DAY
    cols = {"tx_id": np.arange(6, dtype=np.uint64), "card": np.arange(6, dtype=np.uint64),
            "terminal": np.full(6, 42, np.uint64), "ts_ms": np.full(6, day, np.int64), "amount": np.ones(6)}
    later = {**cols, "ts_ms": np.full(6, day + 7 * DAY, np.int64)}  # its 1-day window ends with that bucket
    peers = []
    for p in range(6):  # six peers, each counted 1 + p transactions at terminal 42
        e = engine()
        e.transform({k: v[:1 + p] for k, v in cols.items()})
        peers.append(e.export_intel(0))
    me = engine()
    assert me.frauds.max_sources == 4
    for p, deltas in enumerate(peers[:3]):
        assert me.merge_intel(f"peer{p}", deltas)
    assert me.transform(later)[0, me.names.index("terminal_nb_tx_1d")] == 1 + 2 + 3
    for p, deltas in enumerate(peers[3:], start=3):
        assert me.merge_intel(f"peer{p}", deltas)
    assert me.frauds.max_sources == me.state.terminals.max_sources == 8 <= MAX_SOURCES
    x = me.transform(later)
    assert x[0, me.names.index("terminal_nb_tx_1d")] == sum(range(1, 7))
    me.save(tmp_path / "s.npz")
    again = engine()
    again.load(tmp_path / "s.npz")
    assert again.frauds.max_sources == 8
    np.testing.assert_array_equal(again.transform({**later, "tx_id": later["tx_id"] + 100}),
                                  me.transform({**later, "tx_id": later["tx_id"] + 100}))


def test_terminal_fold_moves_a_slot_into_another_and_keeps_every_read():
    t = TerminalState(64, max_sources=4, days=40, bucket_hours=4)
    keys = mix_keys(np.arange(10, dtype=np.uint64))
    ts = 17_800 * DAY + np.arange(10, dtype=np.int64) * 3 * HOUR
    t.add_tx(keys, ts, 0)
    t.add_tx(keys[:6], ts[:6], 1, None, np.full(6, 5, np.uint32))
    t.add_tx(keys[3:], ts[3:], 2)
    later = ts + 8 * DAY
    before = np.empty((10, 3), np.float32)
    t.read(keys, later, 7, before)
    t.fold(1, 2)
    after = np.empty((10, 3), np.float32)
    t.read(keys, later, 7, after)
    np.testing.assert_array_equal(before, after)
    tx = t.snapshot()["tx"]
    assert tx[:, :, 1].sum() == 0 and tx[:, :, 2].sum() == 6 * 5 + 7 and tx[:, :, 0].sum() == 10
    assert t.export(1, -1)[0].size == 0 and t.export(0, 0)[0].size == 10  # nothing new to export
    with pytest.raises(ValueError, match="into itself"):
        t.fold(2, 2)
    with pytest.raises(ValueError, match=r"source slot in \[0, 4\)"):
        t.fold(4, 0)


def test_merged_slots_saturate_the_total_and_the_snapshot_loads(tmp_path):
    """Two workers each count 3e9 (a fraud amount) at one terminal in one bucket: the sum over
    the slots saturates at 2**32 - 1 in merge as in add_tx, and the snapshot restores."""
    top = np.float32(2**32 - 1)
    key, ts = mix_keys([9]), np.array([19_000 * DAY], np.int64)
    later = ts + 8 * DAY
    a, b = (TerminalState(8, max_sources=2, days=40, bucket_hours=4) for _ in range(2))
    a.add_tx(key, ts, 0, None, np.array([3_000_000_000], np.uint32))
    b.add_tx(key, ts + 60_000, 0, None, np.array([3_000_000_000], np.uint32))
    b.merge(1, *a.export(0, 0)[:3])
    out = np.empty((1, 3), np.float32)
    b.read(key, later, 7, out)
    assert out[0].tolist() == [0, top, top]   # it wrapped to 1.705e9
    b.merge(1, *a.export(0, -1)[:3])          # repeats change nothing
    b.read(key, later, 7, out)
    assert out[0].tolist() == [0, top, top]
    c = TerminalState(8, max_sources=2, days=40, bucket_hours=4)
    c.restore(b.snapshot())                   # was refused: totals of 6e9
    c.read(key, later, 7, out)
    assert out[0].tolist() == [0, top, top]
    c.add_tx(key, ts, 0)                      # a saturated bucket stays saturated
    c.read(key, later, 7, out)
    assert out[0].tolist() == [0, top, top]

    def worker(card, t):
        from zfraud.features import FeatureEngine
        e = FeatureEngine("zfraud-v6", card_capacity=64, terminal_capacity=64)
        e.apply_labels({"card": np.array([card], np.uint64), "terminal": np.array([9], np.uint64),
                        "ts_ms": np.array([t], np.int64), "amount": np.array([3e9]),
                        "fraud": np.array([1], np.uint8)})
        return e
    wa, wb = worker(100, int(ts[0])), worker(200, int(ts[0]) + 60_000)
    wb.merge_intel("a", wa.export_intel(0))
    wb.save(tmp_path / "b.npz")
    wc = worker(300, int(ts[0]))
    wc.load(tmp_path / "b.npz")
    wc.fraud_amounts.read(key, later, 7, out)
    assert out[0, 2] == top


def test_departed_peers_slots_are_reused_and_their_counts_kept(tmp_path):
    """A worker has MAX_SOURCES - 1 peer slots. Peers that are no longer members (`live`) are
    retired, least recently heard first, when a newcomer needs a slot: their counts stay in
    every read (all four tables), the newcomer's are added, a retired name is never merged
    again (it would count twice), and a peer still in the mesh is never retired."""
    from zfraud.features import FULL, MAX_SOURCES, FeatureEngine

    def engine():
        return FeatureEngine(FULL, card_capacity=1024, terminal_capacity=1024)

    day = 17_800 * DAY
    n_peers = MAX_SOURCES + 4
    exports = []
    for p in range(n_peers):  # peer p counted 1 + p % 3 transactions at terminal 42, one a fraud
        e = engine()
        k = 1 + p % 3
        cols = {"tx_id": np.arange(k, dtype=np.uint64) + 10 * p, "card": np.arange(k, dtype=np.uint64) + 10 * p,
                "terminal": np.full(k, 42, np.uint64), "ts_ms": np.full(k, day + p * HOUR, np.int64),
                "amount": np.full(k, 20.0)}
        e.transform(cols)
        e.apply_labels({k_: v[:1] for k_, v in cols.items()} | {"fraud": np.ones(1, np.uint8)})
        exports.append(e.export_intel(0))
    probe = {"tx_id": np.array([999], np.uint64), "card": np.array([999], np.uint64),
             "terminal": np.array([42], np.uint64), "ts_ms": np.array([day + 8 * DAY], np.int64),
             "amount": np.array([20.0])}
    me = engine()

    def read():
        x = me.transform(probe, update=np.zeros(1, bool))[0]
        return {n: float(x[me.names.index(n)]) for n in
                ("terminal_nb_tx_30d", "terminal_risk_30d", "terminal_fraud_avg_amount_30d", "terminal_unlinked_frauds_30d")}

    members = set()
    for p in range(MAX_SOURCES - 1):
        assert me.merge_intel(f"peer{p}", exports[p], live=members)
    assert me.merge_intel("peer0", exports[0], live=members)  # heard again: now the most recent
    full = read()
    assert full["terminal_nb_tx_30d"] == sum(1 + p % 3 for p in range(MAX_SOURCES - 1))
    # Every slot taken by a current member: the newcomer waits, nothing changes.
    members = {f"peer{p}" for p in range(MAX_SOURCES - 1)}
    assert not me.merge_intel("new0", exports[MAX_SOURCES - 1], live=members)
    assert read() == full and "new0" not in me.sources
    # A copy of peer1's counts relayed by another peer says nothing about when peer1 was heard.
    assert me.merge_intel("peer1", exports[1], live=members, relayed=True)
    # peer1 and peer2 left: the first retirement takes both (one slot keeps departed counts).
    members -= {"peer0", "peer1", "peer2"}
    assert me.merge_intel("new0", exports[MAX_SOURCES - 1], live=members)
    assert list(me.retired) == ["peer1", "peer2"] and me.retirements == 2 and "peer0" in me.sources
    expected = sum(1 + p % 3 for p in range(MAX_SOURCES))
    assert read()["terminal_nb_tx_30d"] == expected
    # The next newcomer retires peer0, the only other non-member.
    assert me.merge_intel("new1", exports[MAX_SOURCES], live=members | {"new0"})
    assert list(me.retired) == ["peer1", "peer2", "peer0"]
    expected += 1 + MAX_SOURCES % 3
    got = read()
    frauds = MAX_SOURCES + 1
    assert got["terminal_nb_tx_30d"] == expected
    assert got["terminal_risk_30d"] == pytest.approx(frauds / expected)
    assert got["terminal_unlinked_frauds_30d"] == frauds and got["terminal_fraud_avg_amount_30d"] == 20.0
    # A retired name is not merged again, even with larger counts.
    assert not me.merge_intel("peer1", exports[MAX_SOURCES + 1], live=members)
    assert read() == got
    # No departed peer left to retire: the newcomer waits.
    assert not me.merge_intel("new2", exports[MAX_SOURCES + 2], live=members | {"new0", "new1"})
    # Saved and loaded: slots, the retired slot and the retired names come back.
    me.save(tmp_path / "s.npz")
    again = engine()
    again.load(tmp_path / "s.npz")
    assert (again.sources, again.retired_slot, list(again.retired)) == (me.sources, me.retired_slot, list(me.retired))
    assert again.state_info()["peer_slots"] == MAX_SOURCES - 2 and again.state_info()["retired_peers"] == 3
    me = again
    assert read() == got and not me.merge_intel("peer0", exports[0])
    assert me.merge_intel("new3", exports[MAX_SOURCES + 3], live={"new0", "new1"})  # retires peer3
    assert read()["terminal_nb_tx_30d"] == expected + 1 + (MAX_SOURCES + 3) % 3


def test_peer_slots_hold_15_live_peers_until_the_first_retirement_and_14_after():
    """The numbers PROTOCOL 6.2 and 10, ARCHITECTURE 4.3 and 8 and OPERATIONS 2.3 give (tester's
    repro 08): 15 peer slots. With 15 live peers, one leaving and one joining makes 16 sets of
    peer counts: the newcomer waits, nothing is retired, until a second peer leaves; the first
    retirement then takes both departed peers (one's slot becomes the retired slot). From then on
    14 live peers hold slots, and one departed peer is enough to make room for a newcomer."""
    from zfraud.features import FULL, MAX_SOURCES, FeatureEngine

    day = 17_800 * DAY

    def counts(p):  # peer p counted 1 + p transactions at terminal 42
        e = FeatureEngine(FULL, card_capacity=1024, terminal_capacity=1024)
        k = 1 + p
        e.transform({"tx_id": np.arange(k, dtype=np.uint64), "card": np.arange(k, dtype=np.uint64),
                     "terminal": np.full(k, 42, np.uint64), "ts_ms": np.full(k, day, np.int64),
                     "amount": np.full(k, 10.0)})
        return e.export_intel(0)

    me = FeatureEngine(FULL, card_capacity=1024, terminal_capacity=1024)
    probe = {"tx_id": np.array([999], np.uint64), "card": np.array([999], np.uint64),
             "terminal": np.array([42], np.uint64), "ts_ms": np.array([day + 8 * DAY], np.int64),
             "amount": np.array([20.0])}

    def total():
        return me.transform(probe, update=np.zeros(1, bool))[0][me.names.index("terminal_nb_tx_30d")]

    peers = [f"p{i:02d}" for i in range(1, 20)]
    live = set(peers[:MAX_SOURCES - 1])                     # p01..p15
    for i, p in enumerate(peers[:MAX_SOURCES - 1]):
        assert me.merge_intel(p, counts(i + 1), live=live)
    assert len(me.sources) == MAX_SOURCES - 1 == 15 and me.retired_slot == 0
    before = total()
    assert before == sum(1 + i for i in range(1, 16))
    live = live - {"p01"} | {"p16"}                        # 15 live again, p01 departed
    assert not me.merge_intel("p16", counts(16), live=live)
    assert not me.retired and me.retirements == 0 and "p16" not in me.sources and total() == before
    assert "only p01 has left" in me.slot_refusal("p16", live)
    live -= {"p02"}                                         # a second one leaves: room
    assert me.merge_intel("p16", counts(16), live=live)
    assert list(me.retired) == ["p01", "p02"] and me.retired_slot
    assert len(me.sources) == MAX_SOURCES - 2 == 14 and total() == before + 17
    live |= {"p17"}                                         # 15 live peers, 14 slots: p17 waits
    assert not me.merge_intel("p17", counts(17), live=live)
    assert me.slot_refusal("p17", live) == ("all 14 peer slots belong to current members "
                                            "(the 15th keeps departed peers' counts)")
    live -= {"p03"}                                         # one departure is enough now
    assert me.merge_intel("p17", counts(17), live=live)
    assert list(me.retired) == ["p01", "p02", "p03"] and len(me.sources) == 14
    assert total() == before + 17 + 18
    assert sum(1 for n in me.sources if n in live) == 14
    assert me.slot_refusal("p01", live).startswith("its name was retired")


def test_a_retired_name_is_remembered_until_every_bucket_it_held_has_left_the_ring(tmp_path):
    """N counted 10 transactions at terminal 777 and left; 4,200 more departed names each take a
    slot and retire the least recent, N first. N's counts come back unchanged (a G-counter: N
    restored from its snapshot publishes its slot again, or a peer relays it). A worker forgot
    the oldest names past 4,096 retirements, and merged them again: 10 -> 20 (a reviewer's run
    on a real worker). Now a retired name is forgotten only once the newest bucket is a whole
    ring past the one it was retired at; its old counts are then too old for the ring, and what
    it counts from then on is merged. Snapshots keep each name's bucket (one from before them
    keeps its names a whole ring from its load)."""
    from zfraud.features import FULL, FeatureEngine

    day = 17_800 * DAY

    def engine():
        return FeatureEngine(FULL, card_capacity=1024, terminal_capacity=1024)

    def counts(terminal, k, at):
        e = engine()
        e.transform({"tx_id": np.arange(k, dtype=np.uint64), "card": np.arange(k, dtype=np.uint64),
                     "terminal": np.full(k, terminal, np.uint64), "ts_ms": np.full(k, at, np.int64),
                     "amount": np.full(k, 10.0)})
        return e.export_intel(0)

    def total(e, at):
        probe = {"tx_id": np.array([999], np.uint64), "card": np.array([999], np.uint64),
                 "terminal": np.array([777], np.uint64), "ts_ms": np.array([at], np.int64),
                 "amount": np.array([20.0])}
        return e.transform(probe, update=np.zeros(1, bool))[0][e.names.index("terminal_nb_tx_30d")]

    me = engine()
    n_old = counts(777, 10, day)
    assert me.merge_intel("N", n_old)
    other = counts(778, 1, day)
    for i in range(4200):  # every name departed (live: none): each newcomer retires the least recent
        assert me.merge_intel(f"P{i}", other)
    assert total(me, day + 8 * DAY) == 10
    merged = me.merge_intel("N", n_old)
    assert total(me, day + 8 * DAY) == 10 and not merged  # it was 20
    assert list(me.retired)[0] == "N" and len(me.retired) == 4200 - 14 + 1
    assert me.slot_refusal("N", ()).startswith("its name was retired")

    me.save(tmp_path / "s.npz")
    again = engine()
    again.load(tmp_path / "s.npz")
    assert again.retired == me.retired and not again.merge_intel("N", n_old)
    # A snapshot from before the buckets, saved when the newest was 10 days later: its names are
    # kept a whole ring from that
    me.transform({"tx_id": np.array([4000], np.uint64), "card": np.array([4000], np.uint64),
                  "terminal": np.array([779], np.uint64), "ts_ms": np.array([day + 10 * DAY], np.int64),
                  "amount": np.array([1.0])})
    me.save(tmp_path / "later.npz")
    arrays = dict(np.load(tmp_path / "later.npz"))
    del arrays["meta.retired_bucket"]
    np.savez(tmp_path / "old.npz", **arrays)
    old = engine()
    old.load(tmp_path / "old.npz")
    assert list(old.retired) == list(me.retired) and not old.merge_intel("N", n_old)
    assert set(old.retired.values()) == {(day + 10 * DAY) // (4 * HOUR)} == {me._newest_bucket()}

    # A ring later (40 days at delay 7: 240 buckets of 4 hours), N is forgotten; its old counts
    # are too old to be stored, its new ones count.
    ring = me.frauds.buckets * 4 * HOUR
    for e in (me, old):
        e.transform({"tx_id": np.array([5000], np.uint64), "card": np.array([5000], np.uint64),
                     "terminal": np.array([777], np.uint64), "ts_ms": np.array([day + ring - 4 * HOUR], np.int64),
                     "amount": np.array([1.0])})
        assert not e.merge_intel("N", n_old)  # its bucket is still one ring back: not forgotten yet
        e.transform({"tx_id": np.array([5001], np.uint64), "card": np.array([5001], np.uint64),
                     "terminal": np.array([777], np.uint64), "ts_ms": np.array([day + ring], np.int64),
                     "amount": np.array([1.0])})
    assert me.merge_intel("N", n_old) and "N" not in me.retired
    assert total(me, day + ring + 8 * DAY) == 2  # the ring's two newest; N's old 10 not stored
    assert me.merge_intel("N", counts(777, 3, day + ring + 7 * DAY))
    assert total(me, day + ring + 14 * DAY) == 5
    assert not old.merge_intel("N", n_old)  # kept a whole ring from its load's newest bucket, 10 days later


def test_a_restarted_engine_continues_its_counter_from_what_a_peer_held_for_it():
    """merge_own puts a peer's copy of this worker's counts back into its own slot: the next
    count continues from there (so the peer's max-merge keeps every count), and a full export
    (-1) carries the restored counts on to newcomers, where a plain export (0) has only its own."""
    from zfraud.features import FULL, FeatureEngine

    day = 17_800 * DAY
    cols = {"tx_id": np.arange(5, dtype=np.uint64), "card": np.arange(5, dtype=np.uint64),
            "terminal": np.full(5, 42, np.uint64), "ts_ms": np.full(5, day, np.int64), "amount": np.ones(5)}
    before = FeatureEngine(FULL, card_capacity=1024, terminal_capacity=1024)
    before.transform(cols)
    peer = FeatureEngine(FULL, card_capacity=1024, terminal_capacity=1024)
    assert peer.merge_intel("w2", before.export_intel(0))
    after = FeatureEngine(FULL, card_capacity=1024, terminal_capacity=1024)  # w2 again, state lost
    after.merge_own(peer.export_peer("w2"))
    assert after.export_intel(0)["tx_count"].size == 0
    np.testing.assert_array_equal(after.export_intel(-1)["tx_count"], [5])
    since = after.export_intel(0)["version"]
    after.transform({k: v[:1] + 100 if k == "tx_id" else v[:1] for k, v in cols.items()})
    np.testing.assert_array_equal(after.export_intel(since)["tx_count"], [6])
    with pytest.raises(ValueError, match="24-hour buckets; this worker keeps 4-hour"):
        after.merge_own({**peer.export_peer("w2"), "bucket_hours": 24})


def test_a_model_on_an_older_feature_set_is_refused_with_a_retrain_hint():
    from zfraud.features import FEATURE_SETS, FULL, FeatureEngine
    assert FULL == "zfraud-v6" and len(FEATURE_SETS[FULL]) == 28
    with pytest.raises(ValueError, match=r"'zfraud-v5' .*basic-v1, zfraud-v6.*retrain the model with `zfraud train`"):
        FeatureEngine("zfraud-v5")
    with pytest.raises(ValueError, match=r"unknown feature set 'other'") as e:
        FeatureEngine("other")
    assert "retrain" not in str(e.value)


# -- label-fed terminal tables (zfraud-v5) --------------------------------------------------------

HOUR = 3_600_000


def _label_frauds(state, cards, terminals, hours):
    n = len(cards)
    out = np.empty(n, np.uint8), np.empty(n, np.uint64), np.empty(n, np.int64)
    state.label_frauds(mix_keys(np.array(cards, np.uint64)), mix_keys(np.array(terminals, np.uint64)),
                       np.array(hours, np.int64) * HOUR + 1234, *out)
    return out


def test_label_frauds_links_a_cards_frauds_at_other_terminals_within_7_days():
    cards = CardState(64)
    seen = np.array([1, 2, 4], np.uint64)  # card 3 was never seen here: its frauds are not linked
    cards.update_and_read(mix_keys(seen), np.zeros(3, np.int64), np.ones(3), np.ones(3, np.uint8),
                          np.empty((3, len(CARD_FEATURES)), np.float32))
    h0 = 500_000  # hours since the epoch
    rows = [  # (card, terminal, hour, driven): bit 0 this fraud is linked, bit 1 the remembered one now is
        (1, 10, h0, 0),               # the card's first fraud
        (1, 11, h0 + 48, 3),          # another terminal two days later: both linked
        (1, 11, h0 + 72, 1),          # the same terminal, but the remembered fraud is linked
        (1, 12, h0 + 72 + 169, 0),    # more than 7 days after the last one
        (2, 20, h0, 0), (2, 20, h0 + 5, 0),   # one terminal, twice: a compromised terminal's pattern
        (2, 21, h0 + 5 + 168, 3),     # exactly 7 days later, elsewhere: linked (prev: the h0 + 5 one)
        (3, 30, h0, 0), (3, 31, h0 + 1, 0),
        (4, 40, h0 + 200, 0),
        (4, 41, h0 + 190, 3),         # an older fraud, labelled late: links, the newer stays remembered
        (4, 40, h0 + 200 + 160, 1),   # so 160 h after the remembered (linked) one links too
    ]
    card, term, hour, want = (list(c) for c in zip(*rows))
    driven, prev_terminal, prev_ts = _label_frauds(cards, card, term, hour)
    assert driven.tolist() == want
    back = driven == 3
    assert prev_terminal[back].tolist() == mix_keys(np.array([10, 20, 40], np.uint64)).tolist()
    assert prev_ts[back].tolist() == [h0 * HOUR, (h0 + 5) * HOUR, (h0 + 200) * HOUR]  # the hour's start
    assert not prev_terminal[~back].any() and not prev_ts[~back].any()
    # Row order is the only order: the same labels one by one give the same answers.
    again = CardState(64)
    again.update_and_read(mix_keys(seen), np.zeros(3, np.int64), np.ones(3), np.ones(3, np.uint8),
                          np.empty((3, len(CARD_FEATURES)), np.float32))
    one = [_label_frauds(again, [c], [t], [h])[0][0] for c, t, h in zip(card, term, hour)]
    assert one == want
    with pytest.raises(ValueError, match="length 2"):
        cards.label_frauds(mix_keys(seen[:2]), mix_keys(seen[:2]), np.zeros(2, np.int64), np.empty(2, np.uint8),
                           np.empty(1, np.uint64), np.empty(2, np.int64))


def _labelled_stream(seed, days=60, cards=300, terminals=40):
    """A time-sorted labelled stream with random frauds plus compromised cards that spend at
    many terminals over 10 days, so that linked and unlinked frauds both occur."""
    rng = np.random.default_rng(seed)
    n = days * 400
    ts = np.sort(rng.integers(0, days * DAY, n)) + 17_600 * DAY
    card = rng.integers(0, cards, n).astype(np.uint64)
    fraud = rng.random(n) < 0.01
    for c in rng.choice(cards, 12, replace=False):
        start = rng.integers(0, days - 10) * DAY + 17_600 * DAY
        fraud |= (card == c) & (ts >= start) & (ts < start + 10 * DAY)
    amount = np.round(rng.uniform(1, 300, n), 2)
    amount[rng.random(n) < 0.02] *= -1  # refunds: a negative amount counts 0 towards the fraud sum
    return {"tx_id": np.arange(n, dtype=np.uint64), "card": card,
            "terminal": rng.integers(0, terminals, n).astype(np.uint64), "ts_ms": ts.astype(np.int64),
            "amount": amount, "fraud": fraud.astype(np.uint8)}


def reference_fraud_detail(d, delay_days=7, bucket_hours=4):
    """The three fraud-detail features from the raw labels, in plain Python: a label of hour x is
    applied before the rows of hour x + delay + 1 (train.replay's schedule), linking is decided
    per card in label order (CardState.label_frauds' rule), and a row in bucket b reads the
    frauds applied by then in buckets (b - delay - 30 days, b - delay], with their links."""
    per_day = 24 // bucket_hours
    delay, window = delay_days * per_day, 30 * per_day
    bucket = (d["ts_ms"] // (bucket_hours * 3_600_000)).tolist()
    frauds = np.flatnonzero(d["fraud"]).tolist()
    linked_at = {}     # fraud row -> hour of the label that linked it
    memory = {}        # card -> (row of its remembered fraud, linked?)
    hour = lambda i: int(d["ts_ms"][i]) // 3_600_000  # noqa: E731
    for i in frauds:  # labels are applied in bucket order, rows in stream order within a bucket
        c = int(d["card"][i])
        m = memory.get(c)
        linked = False
        if m is not None:
            j, marked = m
            if abs(hour(i) - hour(j)) <= 168 and (marked or d["terminal"][j] != d["terminal"][i]):
                linked = True
                linked_at[i] = hour(i)
                linked_at.setdefault(j, hour(i))
                marked = True
                memory[c] = (j, True)
            if hour(i) < hour(j):
                continue
        memory[c] = (i, linked)
    by_terminal = {}
    for i in frauds:
        by_terminal.setdefault(int(d["terminal"][i]), []).append(i)
    out = np.zeros((len(bucket), 3), np.float32)
    for r, b in enumerate(bucket):
        due = hour(r) - 24 * delay_days - 1   # labels of this hour or older are in
        got = [i for i in by_terminal.get(int(d["terminal"][r]), [])
               if b - delay - window < bucket[i] <= b - delay and hour(i) <= due]
        if not got:
            continue
        units = sum(int(np.rint(max(d["amount"][i], 0.0))) for i in got)
        linked = sum(1 for i in got if linked_at.get(i, 1 << 60) <= due)
        out[r] = (np.float32(units) / np.float64(len(got)), linked, len(got) - linked)
    return out


def test_fraud_detail_features_match_the_raw_labels():
    """zfraud-v5's last three columns, streamed by train.replay, equal a plain-Python reference
    built from the labels: mean fraud amount, card-linked and other frauds over 30 days."""
    from zfraud.features import FRAUD_DETAIL_FEATURES, FULL, FeatureEngine
    from zfraud.train import replay

    d = _labelled_stream(5)
    engine = FeatureEngine(FULL, 7, 4096, 1024)
    X = replay(d, np.ones(len(d["tx_id"]), bool), engine=engine)
    cols = [engine.names.index(name) for name in FRAUD_DETAIL_FEATURES]
    expected = reference_fraud_detail(d)
    assert (expected[:, 1] > 0).mean() > 0.2 and (expected[:, 2] > 0).mean() > 0.2  # both kinds occur
    np.testing.assert_array_equal(X[:, cols], expected)


def test_label_schedule_reveals_every_label_once_even_across_gaps():
    """A label is revealed before the first step `delay` or more after its own, and exactly once,
    also when the step exactly `delay` later has no transactions (a quiet night, a gap)."""
    from zfraud.train import label_schedule

    step = 4 * HOUR
    buckets = np.array([0, 0, 1, 3, 3, 50, 51, 51, 90, 200])  # gaps, and nothing at 1 + 42 or 3 + 42
    ts = buckets * step + 17_000 * DAY
    plan = label_schedule(ts, 7)
    assert [(s, e) for s, e, _ in plan] == [(0, 2), (2, 3), (3, 5), (5, 6), (6, 8), (8, 9), (9, 10)]
    reveals = {int(buckets[s]): r for s, e, r in plan}
    assert reveals == {0: None, 1: None, 3: None, 50: (0, 5), 51: None, 90: None, 200: (5, 9)}
    revealed = np.concatenate([np.arange(*r) for _, _, r in plan if r is not None])
    assert revealed.tolist() == list(range(9))  # the last row's labels are not due yet
    # hourly steps by default: a label exactly `delay` old is not in yet, an hour later it is
    ts = np.array([0, 7 * DAY, 7 * DAY + HOUR - 1, 7 * DAY + HOUR]) + 17_000 * DAY + 600_000
    assert [r for _, _, r in label_schedule(ts, 7)] == [None, None, (0, 1)]


def test_counts_from_a_peer_without_the_newer_tables_still_merge():
    """A peer from before zfraud-v5 sends transaction and fraud counts only: they merge, and the
    fraud-amount and card-linked tables are left as they are."""
    from zfraud.features import FULL, FeatureEngine

    day = 17_800 * DAY
    peer = FeatureEngine(FULL, 7, 1024, 1024)
    cols = {"tx_id": np.arange(4, dtype=np.uint64), "card": np.arange(4, dtype=np.uint64),
            "terminal": np.full(4, 42, np.uint64), "ts_ms": np.full(4, day, np.int64), "amount": np.full(4, 80.0)}
    peer.transform(cols)
    peer.apply_labels({**cols, "fraud": np.array([1, 1, 0, 0], np.uint8)})
    full = peer.export_intel(0)
    old = {k: v for k, v in full.items() if not k.startswith(("amount_", "linked_"))}
    me = FeatureEngine(FULL, 7, 1024, 1024)
    assert me.merge_intel("old-peer", old)
    later = {**cols, "tx_id": cols["tx_id"] + 10, "ts_ms": np.full(4, day + 7 * DAY, np.int64)}
    x = me.transform(later)[0]
    names = me.names
    assert x[names.index("terminal_nb_tx_1d")] == 4 and x[names.index("terminal_risk_1d")] == 0.5
    assert x[names.index("terminal_fraud_avg_amount_30d")] == 0   # no amounts from this peer
    assert me.merge_intel("old-peer", full)  # the same peer, upgraded: its frauds count once
    x = me.transform(later)[0]
    assert x[names.index("terminal_fraud_avg_amount_30d")] == 80 and x[names.index("terminal_risk_1d")] == 0.5


def test_a_saturated_bucket_keeps_the_average_of_the_transactions_it_counts():
    """Counts stop at 65 535 per bucket; the sums stop with them, so an average stays right
    (70 000 spends of 1.00 in an hour read an average of 1.068 and a ratio of 0.936), in a
    handover merge too (the share of the other record that fits, at its average)."""
    n = 70_000
    st, key = CardState(4), mix_keys([3])
    out = run_cards(st, np.full(n, key[0], np.uint64), T0 + np.arange(n, dtype=np.int64) * 10,
                    np.ones(n), np.ones(n, np.uint8), [8192] * 9)
    assert out[-1, 0] == 65535 and out[-1, 2] == 65535 and out[-1, 4] == 65535
    assert out[-1, 1] == 1.0 and out[-1, 3] == 1.0 and out[-1, 5] == 1.0
    assert out[-1, 6] == 1.0 and out[-1, 7] == 1.0
    # Two owners, 40 000 spends each in one hour: 1.00 at one, 3.00 at the other.
    a, b, m = CardState(4), CardState(4), 40_000
    card_rows(a, T0 + np.arange(m, dtype=np.int64), np.ones(m))
    card_rows(b, T0 + m + np.arange(m, dtype=np.int64), np.full(m, 3.0))
    key = mix_keys(np.array([7], np.uint64))
    assert a.put(b.take(key)) == (0, 1)
    got = card_rows(a, [T0 + 2 * m], [0.0], update=0)[0]
    want = (m * 1.0 + (65535 - m) * 3.0) / 65535    # the 25 535 that fit, at 3.00
    assert got[0] == 65535 and got[4] == 65535
    assert got[1] == np.float32(want) and got[3] == np.float32(want) and got[5] == np.float32(want)


@pytest.mark.parametrize("big", [1e7, 1e8, 1e9])
def test_the_8_30_day_average_survives_a_large_recent_spend(big):
    """card_avg_amount_8_30d is the exact older sum over its count (CardState's float64 read of
    days 8..30 back), not the difference of the float32 7- and 30-day sums, which lost the older
    weeks after a large recent spend (3.00 on day 0, then 1e8 and 20.00 on day 10: an average of
    0.0 and a ratio of FLT_MAX; 1.4 % off at 1e7). The peak ratio reads the same average."""
    from zfraud.features import FEATURE_SETS, FULL, FeatureEngine
    names = FEATURE_SETS[FULL]
    j8, jr, jp = (names.index(n) for n in ("card_avg_amount_8_30d", "amount_over_card_avg_8_30d",
                                           "card_peak_amount_ratio_7d"))
    e = FeatureEngine(FULL, card_capacity=64, terminal_capacity=64)
    ts = np.array([T0, T0 + 10 * DAY, T0 + 10 * DAY + 1000, T0 + 10 * DAY + 2000], np.int64)
    X = e.transform({"tx_id": np.arange(4, dtype=np.uint64), "card": np.ones(4, np.uint64),
                     "terminal": np.ones(4, np.uint64), "ts_ms": ts,
                     "amount": np.array([3.0, big, 20.0, 1.0])})
    assert np.isnan(X[0, j8]) and np.isnan(X[0, jr])       # no transaction 8-30 days back yet
    assert (X[1:, j8] == 3.0).all()
    assert X[1, jr] == np.float32(big / 3) and X[2, jr] == np.float32(20 / 3)
    assert X[3, jp] == pytest.approx(big / 3 * math.exp(-2000 / (7 * DAY)), rel=1e-6)



def test_the_8_30_day_ratio_over_0_00_history_is_what_zfraud_v6_models_learned():
    """A card whose earlier spends were 0.00 (verifications), then 5.00: the 7- and 30-day
    ratios, whose windows hold the row, are amount / average; the 8-30-day ratio over an average
    of 0 is the largest finite float32, as zfraud-v6 has always computed it. A fix made it 0 for a
    while: a model trained before then scored such a card 0.98 (decline) and after it 0.13
    (approve), the same model on the same history (the rolling-upgrade tester, helper-70)."""
    from zfraud.features import FEATURE_SETS, FULL, FeatureEngine
    top = np.finfo(np.float32).max
    names = FEATURE_SETS[FULL]
    cols = [names.index(n) for n in ("amount_over_card_avg_7d", "amount_over_card_avg_30d",
                                     "card_avg_amount_8_30d", "amount_over_card_avg_8_30d")]
    e = FeatureEngine(FULL, card_capacity=64, terminal_capacity=64)
    ts = np.array([T0, T0 + 1000, T0 + 10 * DAY, T0 + 10 * DAY + 1000, T0 + 20 * DAY], np.int64)
    X = e.transform({"tx_id": np.arange(5, dtype=np.uint64), "card": np.ones(5, np.uint64),
                     "terminal": np.ones(5, np.uint64), "ts_ms": ts,
                     "amount": np.array([0.0, 0.0, 0.0, 5.0, 5.0])})[:, cols]
    np.testing.assert_array_equal(X[:2], [[0, 0, np.nan, np.nan]] * 2)  # nothing 8-30 days back
    np.testing.assert_array_equal(X[2], [0, 0, 0, np.nan])     # 0.00 over 0.00 history: 0 / 0
    np.testing.assert_array_equal(X[3], [2, 4, 0, top])        # 5.00 over 0.00 history: above all
    np.testing.assert_array_equal(X[4], [1, 2.5, 1.25, 4])
