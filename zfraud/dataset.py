"""Labelled history in the Fraud Detection Handbook's raw CSV schema, read whole into numpy columns
(for `train`, `backtest` and `label`; `send` streams instead).

Columns returned: tx_id, card, terminal (uint64), ts_ms (int64, UTC), amount (float64),
day (int64 days since the epoch, UTC), fraud (uint8), scenario (uint8; 0 when the file has none).
Rows come back sorted by event time (stable), as the streaming features need.
"""
from __future__ import annotations

import datetime as dt

import numpy as np

from .scoring import MAX_AMOUNT, MAX_TS_MS, MIN_TS_MS
from .sources import (InputError, csv_rows, failing, lines as text_lines, open_input, parse_amounts, parse_ids,
                      parse_ts_ms)

DAY_MS = 86_400_000
REQUIRED = ("TRANSACTION_ID", "TX_DATETIME", "CUSTOMER_ID", "TERMINAL_ID", "TX_AMOUNT", "TX_FRAUD")


def date_of(day: int) -> str:
    """The YYYY-MM-DD date of a day since the epoch (UTC)."""
    return (dt.date(1970, 1, 1) + dt.timedelta(days=int(day))).isoformat()


# What the workers accept (zfraud.scoring): a row they would reject is refused here, at its line.
DATES = f"from {date_of(MIN_TS_MS // DAY_MS)} to {date_of((MAX_TS_MS - 1) // DAY_MS)}"

# column -> (its name in the file, the dtype it is parsed as, what a good value is)
COLUMNS = {
    "tx_id": ("TRANSACTION_ID", np.uint64, "a whole number from 0 to 2**64 - 1"),
    "ts_ms": ("TX_DATETIME", "datetime64[ms]", f"a date and time {DATES}, such as 2018-04-01 00:00:31, or epoch milliseconds"),
    "card": ("CUSTOMER_ID", np.uint64, "a whole number from 0 to 2**64 - 1"),
    "terminal": ("TERMINAL_ID", np.uint64, "a whole number from 0 to 2**64 - 1"),
    "amount": ("TX_AMOUNT", np.float64, f"a number from 0 to {MAX_AMOUNT:.0e}"),
    "fraud": ("TX_FRAUD", np.uint8, "0 or 1"),
    "scenario": ("TX_FRAUD_SCENARIO", np.uint8, "a whole number from 0 to 255"),
}


def _parse(values: list, column: str) -> np.ndarray:
    """One column's strings as its dtype; ValueError (or OverflowError) if any is not a good value."""
    _, dtype, _ = COLUMNS[column]
    if dtype is np.uint64:
        return parse_ids(values, column)  # what an id is, as zfraud send reads it
    if column == "ts_ms":
        a = parse_ts_ms(values)  # as zfraud send reads it: a date (UTC, Z or an offset) or epoch ms
        if ((a < MIN_TS_MS) | (a >= MAX_TS_MS)).any():
            raise ValueError("out of range")
        return a
    a = parse_amounts(values) if column == "amount" else np.array(values, dtype=dtype)  # amounts as send reads them
    if (column == "amount" and not ((a >= 0) & (a <= MAX_AMOUNT)).all()) or (column == "fraud" and (a > 1).any()):
        raise ValueError("out of range")
    return a


def read_labelled(path, errors: list | None = None) -> dict:
    """The file's rows as columns, sorted by event time. A row with a value that cannot be read
    raises InputError naming the line, the column and the value; with `errors` (a list) such rows
    are left out instead and reported there as (line, message)."""
    try:
        f = open_input(path)
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror}") from None
    with f:
        rows = csv_rows(text_lines(f))
        _, header, why = next(rows, (1, [], None))
        if why:
            raise InputError(f"{path}, line 1: {why}")
        header = [name.strip() for name in header]  # "TRANSACTION_ID, TX_DATETIME, ...", as people write it
        missing = [c for c in REQUIRED if c not in header]
        if missing:
            raise InputError(f"{path}: missing column(s) {', '.join(missing)}; expected the Handbook's schema "
                             f"({', '.join(REQUIRED)}; TX_FRAUD_SCENARIO may be left out)")
        idx = [header.index(name) if name in header else None for name, _, _ in COLUMNS.values()]
        cols = {c: [] for c in COLUMNS}
        lines = []
        width = max(i for i in idx if i is not None) + 1
        for line, row, why in rows:
            if why is None and len(row) < width:
                why = f"expected {len(header)} fields, got {len(row)}"
            if why:
                if errors is None:
                    raise InputError(f"{path}, line {line}: {why}")
                errors.append((line, why))
                continue
            for c, i in zip(cols, idx):
                cols[c].append(row[i] if i is not None else "0")  # no TX_FRAUD_SCENARIO: 0
            lines.append(line)
    out, bad = {}, {}
    for c, values in cols.items():
        try:
            out[c] = _parse(values, c)
        except (ValueError, OverflowError):  # find the rows, only for this column
            name, _, good = COLUMNS[c]
            for k in failing(values, lambda part: _parse(part, c)):
                bad.setdefault(k, f"{name} {values[k]!r} is not {good}")
    if bad:
        first = min(bad)
        if errors is None:
            raise InputError(f"{path}, line {lines[first]}: {bad[first]}"
                             + (f" (and {len(bad) - 1} more rows like it)" if len(bad) > 1 else ""))
        errors.extend((lines[k], bad[k]) for k in sorted(bad))
        keep = np.setdiff1d(np.arange(len(lines)), sorted(bad))
        out = {c: _parse([values[k] for k in keep], c) for c, values in cols.items()}
    if errors is not None:
        errors.sort()
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


def check_dates(date_from: int, date_to: int, what: str) -> None:
    """ValueError if [date_from, date_to] (days since the epoch) runs backwards."""
    if date_from > date_to:
        raise ValueError(f"the {what} dates run backwards: --from {date_of(date_from)} is after --to {date_of(date_to)}")


def refuse_repeated_ids(data: dict, path) -> None:
    """InputError if a TRANSACTION_ID appears on more than one row. Labelled history holds each
    transaction once; a worker counts a repeated id once (zfraud.dedup) where a replay would count
    each row, so `train` and `backtest` would each see another file."""
    ids = np.sort(data["tx_id"])
    repeated = ids[1:][ids[1:] == ids[:-1]]
    if len(repeated):
        distinct = np.unique(repeated)
        raise InputError(f"{path}: {len(repeated):,} rows repeat the TRANSACTION_ID of another row ({len(distinct):,} "
                         f"ids, the first {int(distinct[0])}); labelled history must hold each transaction once")


def rows_between(data: dict, date_from: int, date_to: int, what: str) -> np.ndarray:
    """The mask of data's rows dated in [date_from, date_to] (days since the epoch, inclusive);
    ValueError saying why when there are none, e.g. the dates the file does hold."""
    check_dates(date_from, date_to, what)
    keep = (data["day"] >= date_from) & (data["day"] <= date_to)
    if not keep.any():
        held = (f"the file holds {date_of(data['day'].min())} to {date_of(data['day'].max())}" if len(data["day"])
                else "the file holds no transactions")
        raise ValueError(f"no transactions in the {what} dates {date_of(date_from)} to {date_of(date_to)}: {held}")
    return keep
