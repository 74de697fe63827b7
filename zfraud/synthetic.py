"""Synthetic card transactions, generated in vectorised chunks (for `send --synthetic`, the demo,
the default model and tests).

A light version of the Fraud Detection Handbook's simulator (../shared/reference/handbook.md,
section 1): each customer has a mean amount drawn uniformly from [5, 100) and a standard deviation
of half of it; transactions arrive around noon (normal, sd 20 000 s); about 9 500 transactions a
day at the default scale. Fraud follows two of the book's scenarios: any amount over 220 (scenario
1) and a small share of transactions on compromised cards whose amount is multiplied by 5
(scenario 3). `zfraud gen` (the full simulator) is the one to use for evaluation.
"""
from __future__ import annotations

import numpy as np

DAY_MS = 86_400_000
START_MS = 1_522_540_800_000  # 2018-04-01T00:00:00Z, the Handbook's first day
TX_PER_DAY = 9_500


def synthetic(n: int, batch: int = 1024, seed: int = 0, customers: int = 5000, terminals: int = 10000,
              start_ms: int = START_MS, compromised_share: float = 0.004, first_id: int = 0):
    """Yield dicts of TX_COLUMNS arrays (plus "label" uint8), `batch` rows each, n rows in all,
    in event-time order."""
    rng = np.random.default_rng(seed)
    mean = rng.uniform(5, 100, customers)
    step_ms = DAY_MS / TX_PER_DAY
    done = 0
    while done < n:
        k = min(batch, n - done)
        idx = np.arange(done, done + k, dtype=np.int64)
        day = (idx * step_ms // DAY_MS).astype(np.int64)
        in_day = np.clip(rng.normal(DAY_MS / 2, 20_000_000, k), 0, DAY_MS - 1).astype(np.int64)
        card = rng.integers(0, customers, k)
        amount = np.abs(rng.normal(mean[card], mean[card] / 2)).round(2)
        scenario3 = rng.random(k) < compromised_share
        amount[scenario3] = (amount[scenario3] * 5).round(2)
        label = ((amount > 220) | scenario3).astype(np.uint8)
        yield {
            "tx_id": (first_id + idx).astype(np.uint64),
            "card": card.astype(np.uint64),
            "terminal": rng.integers(0, terminals, k).astype(np.uint64),
            "ts_ms": start_ms + day * DAY_MS + np.sort(in_day),
            "amount": amount,
            "label": label,
        }
        done += k
