"""The Fraud Detection Handbook's transaction simulator, vectorised with numpy.

A re-implementation of the simulator of *Reproducible Machine Learning for Credit Card Fraud
Detection - Practical Handbook*, Ch. 3.2 (see ../shared/reference/handbook.md, section 1), used
by `zfraud gen`. At the book's scale (5000 customers, 10000 terminals, 183 days, r=5) it produces
about 1.75 M transactions with about 0.84 % fraud, in a few seconds on one core.

The book's logic, all kept:

1. Customer profiles: location x, y ~ U(0, 100), mean_amount ~ U(5, 100),
   std_amount = mean_amount / 2, mean_nb_tx_per_day ~ U(0, 4).
2. Terminal profiles: location x, y ~ U(0, 100).
3. A customer's available terminals: every terminal at Euclidean distance strictly less than r.
4. Transactions, per customer and day: Poisson(mean_nb_tx_per_day) of them; time of day
   int(N(43200, 20000)) seconds (truncated toward zero), the transaction being dropped, not redrawn,
   unless 0 < t < 86400; amount N(mean_amount, std_amount), a negative draw replaced by
   U(0, 2 * mean_amount), rounded to 2 decimals; terminal uniform among the available ones (no
   transaction for a customer without any). TX_TIME_SECONDS = t + day * 86400,
   TX_DATETIME = start + TX_TIME_SECONDS, rows sorted by time, TRANSACTION_ID = row index.
5. Fraud, in the book's order, later scenarios overwriting earlier labels:
   - scenario 1: every TX_AMOUNT > 220 (checked before scenario 3 changes amounts);
   - scenario 2: for each day in range(max TX_TIME_DAYS), 2 distinct terminals drawn among all
     terminals; all their transactions on days [day, day + 28) are fraud;
   - scenario 3: for each day in range(max TX_TIME_DAYS), 3 distinct customers drawn among all
     customers; of the n transactions of these customers on days [day, day + 14), floor(n / 3)
     are sampled without replacement, their amount multiplied by 5 and they are fraud. As in the
     book a transaction sampled on several days is multiplied by 5 each time.

Deliberate differences from the book:

- Random numbers come from numpy's `Generator` (PCG64) seeded from `seed` through
  `SeedSequence(seed).spawn(...)`: one independent stream each for customer profiles, terminal
  profiles, transactions, scenario-2 draws, scenario-3 customer draws and scenario-3 sampling.
  The book seeds the legacy global RandomState (0 for customers, 1 for terminals, the customer id
  per customer, the day for each fraud draw, and Python's `random` for terminal choice and the
  scenario-3 sample). The distributions are the same, the numbers are not: output is not
  bit-identical to the book's dataset, and label counts differ from the book's by sampling noise
  (mostly scenario 2, which depends on how busy the 364 drawn terminals are).
- Transactions are drawn for blocks of customers at once (all days, all counts, then times,
  amounts and terminals), and draws that the book would not make (amount and terminal of a
  transaction whose time is out of range) are made and discarded. Same distribution, different
  consumption of the stream.
- Ties in time (same second) are broken by customer id then generation order (stable sort); the
  book's pandas quicksort leaves them in an unspecified order.
- After scenario 3's x5 the amount is rounded to 2 decimals again. The value is the same; only
  floating-point noise such as 12.350000000000001 is removed.
- The scenario-3 pool is the compromised customers' transactions in time order (the book's frame
  order), sampled with the Generator instead of `random.sample`.
- `write_csv` writes TX_AMOUNT with exactly two decimals (57.10, not 57.1).
"""
from __future__ import annotations

import io
import os
from typing import Callable, Optional

import numpy as np

from .files import replacing, write_all

COLUMNS = ("TRANSACTION_ID", "TX_DATETIME", "CUSTOMER_ID", "TERMINAL_ID", "TX_AMOUNT",
           "TX_TIME_SECONDS", "TX_TIME_DAYS", "TX_FRAUD", "TX_FRAUD_SCENARIO")
HEADER = ",".join(COLUMNS)

DAY = 86_400
TIME_MEAN = DAY / 2
TIME_STD = 20_000
SCENARIO1_THRESHOLD = 220
SCENARIO2_TERMINALS, SCENARIO2_DAYS = 2, 28
SCENARIO3_CUSTOMERS, SCENARIO3_DAYS = 3, 14

_CUSTOMER_BLOCK = 500        # customers per vectorised block (fixed: the output depends on it)
_CSV_CHUNK = 200_000         # rows formatted at once by write_csv

Progress = Optional[Callable[[int, int], None]]


def _streams(seed: int):
    """Independent generators: customers, terminals, transactions, scenario 2, scenario 3
    customers, scenario 3 sample."""
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(6)]


def _customer_profiles(n: int, rng: np.random.Generator) -> dict:
    # one row of 4 uniforms per customer, in the book's draw order (x, y, mean amount, mean count)
    u = rng.random((n, 4))
    mean_amount = 5 + 95 * u[:, 2]
    return {"x": 100 * u[:, 0], "y": 100 * u[:, 1], "mean_amount": mean_amount,
            "std_amount": mean_amount / 2, "mean_nb_tx_per_day": 4 * u[:, 3]}


def _available_terminals(cx, cy, tx, ty, r: float, progress=None):
    """CSR (indptr, indices) of the terminals at distance < r of each customer, ascending ids."""
    n = len(cx)
    ptr = np.zeros(n + 1, dtype=np.int64)
    idx = []
    for lo in range(0, n, _CUSTOMER_BLOCK):
        hi = min(n, lo + _CUSTOMER_BLOCK)
        d = np.sqrt((cx[lo:hi, None] - tx[None, :]) ** 2 + (cy[lo:hi, None] - ty[None, :]) ** 2)
        rows, cols = np.nonzero(d < r)  # row-major: grouped by customer, terminals ascending
        ptr[lo + 1:hi + 1] = np.bincount(rows, minlength=hi - lo)
        idx.append(cols.astype(np.int64))
        if progress:
            progress(hi - lo)
    np.cumsum(ptr, out=ptr)
    return ptr, (np.concatenate(idx) if idx else np.zeros(0, np.int64))


def profiles(customers: int = 5000, terminals: int = 10000, seed: int = 0, r: float = 5,
             progress=None) -> dict:
    """The customer and terminal profiles `generate` uses for this seed.

    Returns x, y, mean_amount, std_amount, mean_nb_tx_per_day (per customer), terminal_x,
    terminal_y (per terminal), and the available terminals as CSR: customer c's are
    available_indices[available_indptr[c]:available_indptr[c + 1]]; nb_terminals per customer."""
    rc, rt = _streams(seed)[:2]
    p = _customer_profiles(customers, rc)
    t = rt.random((terminals, 2)) * 100
    p["terminal_x"], p["terminal_y"] = t[:, 0].copy(), t[:, 1].copy()
    ptr, ind = _available_terminals(p["x"], p["y"], p["terminal_x"], p["terminal_y"], r, progress)
    p["available_indptr"], p["available_indices"] = ptr, ind
    p["nb_terminals"] = np.diff(ptr)
    return p


def compromise_schedule(customers: int, terminals: int, n_days: int, seed: int = 0):
    """The fraud draws of scenarios 2 and 3 for days 0..n_days-1: (terminals, customers), arrays
    of shape (n_days, 2) and (n_days, 3), row d being the day-d draw (distinct within a day).
    Row d does not depend on n_days."""
    streams = _streams(seed)
    r2, r3 = streams[3], streams[4]
    k2, k3 = min(SCENARIO2_TERMINALS, terminals), min(SCENARIO3_CUSTOMERS, customers)
    t = np.zeros((n_days, k2), np.int64)
    c = np.zeros((n_days, k3), np.int64)
    for d in range(n_days):
        t[d] = r2.choice(terminals, k2, replace=False)
        c[d] = r3.choice(customers, k3, replace=False)
    return t, c


def _transactions(p: dict, days: int, rng: np.random.Generator, progress=None):
    """Unsorted transactions (customer, terminal, seconds, amount), customer-major."""
    n = len(p["x"])
    lam, mean, std = p["mean_nb_tx_per_day"], p["mean_amount"], p["std_amount"]
    ptr, ind, nterm = p["available_indptr"], p["available_indices"], p["nb_terminals"]
    out = {"c": [], "t": [], "s": [], "a": []}
    for lo in range(0, n, _CUSTOMER_BLOCK):
        hi = min(n, lo + _CUSTOMER_BLOCK)
        counts = rng.poisson(np.repeat(lam[lo:hi], days).reshape(hi - lo, days))
        flat = counts.ravel()
        k = int(flat.sum())
        cell = np.repeat(np.arange(flat.size, dtype=np.int64), flat)
        cust = lo + cell // days
        day = cell % days
        t = rng.normal(TIME_MEAN, TIME_STD, k).astype(np.int64)   # int(): truncation toward 0
        amount = rng.normal(mean[cust], std[cust])
        neg = amount < 0
        amount[neg] = rng.uniform(0, 2 * mean[cust[neg]])
        amount = np.round(amount, 2)
        u = rng.random(k)
        nt = nterm[cust]
        keep = (t > 0) & (t < DAY) & (nt > 0)
        pick = np.minimum((u * nt).astype(np.int64), np.maximum(nt - 1, 0))
        term = ind[np.minimum(ptr[cust] + pick, max(len(ind) - 1, 0))] if len(ind) else pick
        out["c"].append(cust[keep])
        out["t"].append(term[keep])
        out["s"].append(t[keep] + day[keep] * DAY)
        out["a"].append(amount[keep])
        if progress:
            progress(hi - lo)
    return {key: (np.concatenate(v) if v else np.zeros(0)) for key, v in out.items()}


def _check_dates(start64: np.datetime64, days: int) -> None:
    """ValueError unless every time of the `days` days from `start64` is one the workers accept
    (zfraud.scoring): a file they would reject, every row of it, is no use."""
    from .dataset import DATES, DAY_MS
    from .scoring import MAX_TS_MS, MIN_TS_MS

    first = int(start64.astype("datetime64[ms]").astype(np.int64))
    if first < MIN_TS_MS or first + days * DAY_MS > MAX_TS_MS:
        last = np.datetime64(first + (days - 1) * DAY_MS, "ms").astype("datetime64[D]")
        raise ValueError(f"the {days} days {start64.astype('datetime64[D]')} to {last} run outside the dates the "
                         f"workers accept, {DATES}: choose a start and a number of days within them")


def generate(customers: int = 5000, terminals: int = 10000, days: int = 183, seed: int = 0,
             start="2018-04-01", r: float = 5, progress: Progress = None) -> dict:
    """Simulate the Handbook's raw transaction table.

    Returns a dict of numpy arrays in the book's column order (COLUMNS), sorted by time, with
    TRANSACTION_ID = 0..n-1. `progress(done, total)`, if given, is called as work advances.
    ValueError if the days from `start` run outside the dates workers accept."""
    start64 = np.datetime64(start, "s")
    _check_dates(start64, days)
    total = 2 * customers + 2 + max(days - 1, 0)
    state = [0]

    def step(k):
        state[0] += k
        if progress:
            progress(min(state[0], total), total)

    rx = _streams(seed)[2]
    p = profiles(customers, terminals, seed, r, progress=step)
    tx = _transactions(p, days, rx, progress=step)

    order = np.argsort(tx["s"], kind="stable")
    cust = tx["c"][order].astype(np.int64)
    term = tx["t"][order].astype(np.int64)
    secs = tx["s"][order].astype(np.int64)
    amount = tx["a"][order].astype(np.float64)
    tdays = secs // DAY
    n = len(secs)
    step(1)

    fraud = np.zeros(n, np.int8)
    scenario = np.zeros(n, np.int8)

    # scenario 1: amount threshold
    s1 = amount > SCENARIO1_THRESHOLD
    fraud[s1], scenario[s1] = 1, 1

    n_draw_days = int(tdays.max()) if n else 0   # the book's range(TX_TIME_DAYS.max())
    comp_t, comp_c = compromise_schedule(customers, terminals, n_draw_days, seed)

    # scenario 2: transaction (terminal, day) hit if the terminal was drawn on a day in
    # [day - 27, day]; counted with a sorted key terminal * K + draw_day
    if n_draw_days and comp_t.size:
        K = int(tdays.max()) + 1
        keys = np.sort((comp_t * K + np.arange(n_draw_days)[:, None]).ravel())
        lo = term * K + np.maximum(tdays - (SCENARIO2_DAYS - 1), 0)
        hi = term * K + tdays
        s2 = np.searchsorted(keys, hi, "right") > np.searchsorted(keys, lo, "left")
        fraud[s2], scenario[s2] = 1, 2
    step(1)

    # scenario 3: per day, 1/3 of the compromised customers' next-14-day transactions, amount x5
    r3 = _streams(seed)[5]
    by_cust = np.argsort(cust, kind="stable")            # per customer, in time order
    cptr = np.zeros(customers + 1, np.int64)
    np.cumsum(np.bincount(cust, minlength=customers), out=cptr[1:])
    days_by_cust = tdays[by_cust]
    for d in range(n_draw_days):
        pool = []
        for c in comp_c[d]:
            a, b = cptr[c], cptr[c + 1]
            i0 = a + np.searchsorted(days_by_cust[a:b], d, "left")
            i1 = a + np.searchsorted(days_by_cust[a:b], d + SCENARIO3_DAYS, "left")
            pool.append(by_cust[i0:i1])
        pool = np.sort(np.concatenate(pool)) if pool else np.zeros(0, np.int64)
        k = len(pool) // 3
        if k:
            sel = r3.choice(pool, k, replace=False)
            amount[sel] = np.round(amount[sel] * 5, 2)
            fraud[sel], scenario[sel] = 1, 3
        step(1)

    if progress:
        progress(total, total)
    return {
        "TRANSACTION_ID": np.arange(n, dtype=np.int64),
        "TX_DATETIME": start64 + secs.astype("m8[s]"),
        "CUSTOMER_ID": cust,
        "TERMINAL_ID": term,
        "TX_AMOUNT": amount,
        "TX_TIME_SECONDS": secs,
        "TX_TIME_DAYS": tdays,
        "TX_FRAUD": fraud,
        "TX_FRAUD_SCENARIO": scenario,
    }


# ------------------------------------------------------------------------------------- CSV

_COMMA = ord(",")


def _fixed_digits(v: np.ndarray, width: int) -> np.ndarray:
    """Zero-padded decimal digits of non-negative ints, as an (n, width) uint8 array."""
    powers = 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)
    return ((v[:, None] // powers) % 10 + 48).astype(np.uint8)


def _int_digits(v: np.ndarray, neg: Optional[np.ndarray] = None) -> np.ndarray:
    """Decimal text of ints, right-aligned in an (n, w) uint8 array, unused cells 0 (dropped
    later). `neg` marks values to print with a minus sign (v itself must then be >= 0)."""
    v = np.asarray(v, dtype=np.int64)
    if neg is None:
        neg = v < 0
        v = np.abs(v)
    has_neg = bool(neg.any())
    top = int(v.max()) if v.size else 0
    w = len(str(top)) + has_neg
    m = _fixed_digits(v, w)
    powers = 10 ** np.arange(w - 1, -1, -1, dtype=np.int64)
    lead = v[:, None] < powers
    lead[:, -1] = False
    m[lead] = 0
    if has_neg:
        nd = w - lead.sum(axis=1)                       # digits actually printed
        rows = np.nonzero(neg)[0]
        m[rows, w - 1 - nd[rows]] = ord("-")
    return m


def _datetime_chars(dt: np.ndarray) -> np.ndarray:
    """'YYYY-MM-DD hh:mm:ss' as an (n, 19) uint8 array (years 0..9999)."""
    dt = dt.astype("M8[s]")
    d = dt.astype("M8[D]")
    month = d.astype("M8[M]")
    year = d.astype("M8[Y]").astype(np.int64) + 1970
    mon = month.astype(np.int64) - (year - 1970) * 12 + 1
    day = (d - month).astype(np.int64) + 1
    sod = (dt - d).astype(np.int64)
    n = len(dt)
    out = np.empty((n, 19), np.uint8)
    out[:, 0:4] = _fixed_digits(year, 4)
    out[:, 4] = out[:, 7] = ord("-")
    out[:, 5:7] = _fixed_digits(mon, 2)
    out[:, 8:10] = _fixed_digits(day, 2)
    out[:, 10] = ord(" ")
    out[:, 11:13] = _fixed_digits(sod // 3600, 2)
    out[:, 13] = out[:, 16] = ord(":")
    out[:, 14:16] = _fixed_digits(sod // 60 % 60, 2)
    out[:, 17:19] = _fixed_digits(sod % 60, 2)
    return out


def _amount_chars(a: np.ndarray) -> np.ndarray:
    cents = np.rint(np.asarray(a, np.float64) * 100).astype(np.int64)
    neg = cents < 0
    cents = np.abs(cents)
    whole = _int_digits(cents // 100, neg)
    frac = _fixed_digits(cents % 100, 2)
    dot = np.full((len(cents), 1), ord("."), np.uint8)
    return np.concatenate([whole, dot, frac], axis=1)


def format_rows(columns: dict, lo: int = 0, hi: Optional[int] = None) -> bytes:
    """CSV lines (no header) for rows lo..hi-1, each ending with a newline."""
    n = len(columns["TRANSACTION_ID"])
    hi = n if hi is None else min(hi, n)
    if hi <= lo:
        return b""
    k = hi - lo
    sep = np.full((k, 1), _COMMA, np.uint8)
    parts = []
    for name in COLUMNS:
        col = np.asarray(columns[name][lo:hi])
        if name == "TX_DATETIME":
            f = _datetime_chars(col)
        elif name == "TX_AMOUNT":
            f = _amount_chars(col)
        else:
            f = _int_digits(col.astype(np.int64))
        parts += [f, sep]
    parts[-1] = np.full((k, 1), ord("\n"), np.uint8)
    m = np.concatenate(parts, axis=1).ravel()
    return m[m != 0].tobytes()


def write_csv(columns: dict, path_or_file, progress: Progress = None) -> int:
    """Write `columns` (as returned by `generate`) as the book's CSV, header first. Accepts a
    path (written through `replacing`: complete or untouched) or an open file (binary or text).
    Returns the number of rows written."""
    n = len(columns["TRANSACTION_ID"])
    if isinstance(path_or_file, (str, bytes, os.PathLike)):
        with replacing(path_or_file) as f:
            return write_csv(columns, f, progress)
    f = path_or_file
    text = isinstance(f, io.TextIOBase)
    def put(b: bytes):
        if text:
            f.write(b.decode("ascii"))
        else:
            write_all(f, b)  # a raw file (stdout, unbuffered) may take only part of it
    put((HEADER + "\n").encode())
    for lo in range(0, n, _CSV_CHUNK):
        hi = min(n, lo + _CSV_CHUNK)
        put(format_rows(columns, lo, hi))
        if progress:
            progress(hi, n)
    if progress and n == 0:
        progress(0, 0)
    return n
