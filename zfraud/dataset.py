"""Labelled history in the Fraud Detection Handbook's raw CSV schema, read whole into numpy columns
(for `train`, `backtest` and `label`; `send` streams instead).

Columns returned: tx_id, card, terminal (uint64), ts_ms (int64, UTC), amount (float64),
day (int64 days since the epoch, UTC), fraud (uint8), scenario (uint8; 0 when the file has none).
Rows come back sorted by event time (stable), as the streaming features need.
"""
from __future__ import annotations

import csv
import datetime as dt

import numpy as np

from .sources import InputError

DAY_MS = 86_400_000
REQUIRED = ("TRANSACTION_ID", "TX_DATETIME", "CUSTOMER_ID", "TERMINAL_ID", "TX_AMOUNT", "TX_FRAUD")


def read_labelled(path) -> dict:
    try:
        f = open(path, newline="", encoding="utf-8")
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror}") from None
    with f:
        rows = csv.reader(f)
        header = next(rows, None) or []
        missing = [c for c in REQUIRED if c not in header]
        if missing:
            raise InputError(f"{path}: missing column(s) {', '.join(missing)}; expected the Handbook's schema "
                             f"({', '.join(REQUIRED)}, TX_FRAUD_SCENARIO)")
        idx = [header.index(c) for c in REQUIRED]
        sc = header.index("TX_FRAUD_SCENARIO") if "TX_FRAUD_SCENARIO" in header else None
        cols = [[] for _ in range(len(REQUIRED) + 1)]
        for line, row in enumerate(rows, start=2):
            try:
                for k, i in enumerate(idx):
                    cols[k].append(row[i])
                cols[-1].append(row[sc] if sc is not None else "0")
            except IndexError:
                raise InputError(f"{path}, line {line}: expected {len(header)} fields, got {len(row)}") from None
    try:
        out = {
            "tx_id": np.array(cols[0], dtype=np.int64).astype(np.uint64),
            "ts_ms": np.array(cols[1], dtype="datetime64[ms]").astype(np.int64),
            "card": np.array(cols[2], dtype=np.int64).astype(np.uint64),
            "terminal": np.array(cols[3], dtype=np.int64).astype(np.uint64),
            "amount": np.array(cols[4], dtype=np.float64),
            "fraud": np.array(cols[5], dtype=np.int64).astype(np.uint8),
            "scenario": np.array(cols[6], dtype=np.int64).astype(np.uint8),
        }
    except ValueError as e:
        raise InputError(f"{path}: a value cannot be read: {e}") from None
    order = np.argsort(out["ts_ms"], kind="stable")
    out = {k: v[order] for k, v in out.items()}
    out["day"] = out["ts_ms"] // DAY_MS
    return out


def day_of(date: str) -> int:
    """Days since the epoch of a YYYY-MM-DD date (UTC)."""
    try:
        return (dt.date.fromisoformat(date) - dt.date(1970, 1, 1)).days
    except ValueError:
        raise ValueError(f"expected a date as YYYY-MM-DD, got {date!r}") from None
