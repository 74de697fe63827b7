"""Synthetic card transactions, generated a day at a time in vectorised form (for `send --synthetic`,
the demo, the default model and tests).

A light version of the Fraud Detection Handbook's simulator (../shared/reference/handbook.md,
section 1): each customer has a mean amount drawn uniformly from [5, 100) and a standard deviation
of half of it; transactions arrive around noon (normal, sd 20 000 s); 9 500 transactions a day
(the last day holds what is left of n). Fraud follows two of the book's scenarios: any amount over
220 (scenario 1) and a small share of transactions on compromised cards whose amount is multiplied
by 5 (scenario 3). `zfraud gen` (the full simulator) is the one to use for evaluation.

The stream is in event-time order across batches (each day's transactions are drawn together and
sorted, then cut into batches), and the rows are the same whatever the batch size: for one seed,
`send --synthetic N --batch 500` and `--batch 1000` send the same transactions.
"""
from __future__ import annotations

import numpy as np

DAY_MS = 86_400_000
START_MS = 1_522_540_800_000  # 2018-04-01T00:00:00Z, the Handbook's first day
TX_PER_DAY = 9_500


def synthetic(n: int, batch: int = 1024, seed: int = 0, customers: int = 5000, terminals: int = 10000,
              start_ms: int = START_MS, compromised_share: float = 0.004, first_id: int = 0):
    """Yield dicts of TX_COLUMNS arrays (plus "label" uint8), `batch` rows each (the last may be
    shorter), n rows in all, in event-time order across batches. The rows do not depend on `batch`:
    they are made a day at a time and cut into batches."""
    if batch < 1:
        raise ValueError(f"batch must be at least 1 row, not {batch}")
    rng = np.random.default_rng(seed)
    mean = rng.uniform(5, 100, customers)
    days = (_day(rng, mean, d, min(TX_PER_DAY, n - d * TX_PER_DAY), terminals, start_ms, compromised_share, first_id)
            for d in range(-(-n // TX_PER_DAY)))
    held, have = [], 0  # the pieces of the next batch, and their rows
    for day in days:
        pos, size = 0, len(day["tx_id"])
        while pos < size:
            take = min(batch - have, size - pos)
            held.append({c: v[pos:pos + take] for c, v in day.items()})
            pos += take
            have += take
            if have == batch:
                yield _join(held)
                held, have = [], 0
    if held:
        yield _join(held)


def _day(rng, mean, d: int, k: int, terminals: int, start_ms: int, compromised_share: float, first_id: int) -> dict:
    """The k transactions of day d (rows d * TX_PER_DAY onwards), the day's times sorted."""
    in_day = np.clip(rng.normal(DAY_MS / 2, 20_000_000, k), 0, DAY_MS - 1).astype(np.int64)
    card = rng.integers(0, len(mean), k)
    amount = np.abs(rng.normal(mean[card], mean[card] / 2)).round(2)
    scenario3 = rng.random(k) < compromised_share
    amount[scenario3] = (amount[scenario3] * 5).round(2)
    first = first_id + d * TX_PER_DAY
    return {
        "tx_id": np.arange(first, first + k, dtype=np.uint64),
        "card": card.astype(np.uint64),
        "terminal": rng.integers(0, terminals, k).astype(np.uint64),
        "ts_ms": start_ms + d * DAY_MS + np.sort(in_day),
        "amount": amount,
        "label": ((amount > 220) | scenario3).astype(np.uint8),
    }


def _join(pieces: list) -> dict:
    return pieces[0] if len(pieces) == 1 else {c: np.concatenate([p[c] for p in pieces]) for c in pieces[0]}
