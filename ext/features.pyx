# cython: language_level=3
"""Feature kernels: transaction columns in, a C-contiguous float32 feature matrix out.

Each function takes read-only typed memoryviews of the batch's columns and a caller-allocated
`out` of shape (n, n_features); it allocates nothing and never touches a Python object inside
the loop. The Python side (zfraud.features) checks shapes and owns the feature names and order.

Time is event time: everything derives from the transaction's own timestamp (epoch
milliseconds, UTC), never from the wall clock.

Every feature is finite or NaN (NaN: missing, e.g. no transaction in a span) for valid rows
(amounts finite, in [0, 1e12]): ratios saturate at the largest finite float32, which
zfraud.model's MAX_MARGIN bound assumes.
"""
from libc.float cimport FLT_MAX
from libc.math cimport NAN, log1p
from libc.stdint cimport int64_t

cdef enum:
    MS_PER_HOUR = 3600000
    MS_PER_DAY = 86400000
    # 1970-01-01 was a Thursday; with Monday = 0 that is weekday 3.
    EPOCH_WEEKDAY = 3

# Column order of basic_features' output; zfraud.features.BASIC_FEATURES mirrors it and a test
# checks the two agree.
BASIC_NAMES = ("amount", "log_amount", "hour", "is_night", "is_weekend")


cdef inline int64_t floor_div(int64_t a, int64_t b) noexcept nogil:
    cdef int64_t q = a // b
    if (a % b != 0) and ((a < 0) != (b < 0)):
        q -= 1
    return q


cdef inline void basic_row(int64_t ts_ms, double amount, float* o) noexcept nogil:
    """The BASIC_NAMES features of one transaction into o[0:5]."""
    cdef int64_t day = floor_div(ts_ms, MS_PER_DAY)
    cdef int64_t hour = floor_div(ts_ms - day * MS_PER_DAY, MS_PER_HOUR)
    o[0] = <float>amount
    o[1] = <float>log1p(amount)
    o[2] = <float>hour
    o[3] = 1.0 if hour <= 6 else 0.0
    o[4] = 1.0 if (day + EPOCH_WEEKDAY) % 7 >= 5 else 0.0


def basic_features(const int64_t[::1] ts_ms, const double[::1] amount, float[:, ::1] out):
    """Stateless features of each transaction.

    ts_ms: (n,) int64 epoch milliseconds (UTC); amount: (n,) float64;
    out: (n, 5) float32, written in BASIC_NAMES order:
    amount, log1p(amount), hour of day (0-23), night (hour <= 6, the Handbook's rule),
    weekend (Saturday or Sunday).
    """
    cdef Py_ssize_t n = ts_ms.shape[0], i
    if amount.shape[0] != n or out.shape[0] != n or out.shape[1] != 5:
        raise ValueError(f"expected ts_ms ({n},), amount ({n},), out ({n}, 5); "
                         f"got amount ({amount.shape[0]},), out ({out.shape[0]}, {out.shape[1]})")
    with nogil:
        for i in range(n):
            basic_row(ts_ms[i], amount[i], &out[i, 0])


def window_features(const int64_t[::1] ts_ms, const double[::1] amount, const float[:, ::1] card,
                    const float[:, ::1] terminal, const float[:, ::1] frauds,
                    const float[:, ::1] runs, const float[:, ::1] fraud_amount,
                    const float[:, ::1] linked, const double[::1] older, float[:, ::1] out):
    """The rows of the windowed feature set (zfraud-v6), assembled from the state's reads.

    ts_ms: (n,) int64; amount: (n,) float64;
    card: (n, k) float32, the card windows (CardState.update_and_read);
    terminal, frauds: (n, 3) float32, TerminalState.read of the transaction counts and of the
    fraud counts over 1, 7 and 30 days;
    runs: (n, 2) float32, TerminalState.read_runs;
    fraud_amount, linked: (n, 3) float32, TerminalState.read of the confirmed frauds' amounts and
    of the card-linked frauds (CardState.label_frauds); only the 30-day column is used;
    older: (n,) float64, the card's average amount over days 8..30 back (CardState.update_and_read's
    `older`: the exact sum over the count of those days' buckets, NaN when they hold no
    transaction);
    out: (n, 5 + k + 6 + 2 + 2 + 3) float32, written as
      [0, 5)            basic_features;
      [5, 5 + k)        card, as is;
      then 6 columns    (count, risk) over 1, 7 and 30 days: count = terminal's, risk =
                        frauds' count / terminal's count in float64, 0 without transactions;
      then 2 columns    the card's average amount over days 8..30 back (older, as is; it is
                        not derived from the float32 7- and 30-day columns, whose difference
                        loses the older weeks after a large recent spend); and amount / that
                        average, within +-FLT_MAX: over an average of 0 (spends of 0.00 only)
                        or a tiny one (1e-40) FLT_MAX, not inf, and 0 / 0 NaN, as zfraud-v6
                        has always computed it (unlike the 7- and 30-day ratios, whose
                        windows hold the row itself: see ext/state.pyx); NaN too without a
                        transaction in days 8..30 back;
      then 2 columns    runs, as is;
      then 3 columns    the 30-day window's mean fraud amount (fraud_amount / frauds' 30-day
                        count in float64, 0 without frauds), its card-linked frauds (linked) and
                        its other frauds (the 30-day count - linked, at least 0).
    """
    cdef Py_ssize_t n = ts_ms.shape[0], k = card.shape[1], i, j
    cdef Py_ssize_t c = 5 + k, t = c + 6
    if (amount.shape[0] != n or card.shape[0] != n or terminal.shape[0] != n
            or frauds.shape[0] != n or terminal.shape[1] != 3 or frauds.shape[1] != 3
            or runs.shape[0] != n or runs.shape[1] != 2 or fraud_amount.shape[0] != n
            or fraud_amount.shape[1] != 3 or linked.shape[0] != n or linked.shape[1] != 3
            or older.shape[0] != n or out.shape[0] != n or out.shape[1] != t + 7):
        raise ValueError(f"expected amount ({n},), card ({n}, k), terminal and frauds ({n}, 3), "
                         f"runs ({n}, 2), fraud_amount and linked ({n}, 3), older ({n},), "
                         f"out ({n}, k + 18); "
                         f"got amount ({amount.shape[0]},), card "
                         f"({card.shape[0]}, {k}), terminal ({terminal.shape[0]}, "
                         f"{terminal.shape[1]}), frauds ({frauds.shape[0]}, {frauds.shape[1]}), "
                         f"runs ({runs.shape[0]}, {runs.shape[1]}), fraud_amount "
                         f"({fraud_amount.shape[0]}, {fraud_amount.shape[1]}), linked "
                         f"({linked.shape[0]}, {linked.shape[1]}), older ({older.shape[0]},), out "
                         f"({out.shape[0]}, {out.shape[1]})")
    cdef double tx, avg, f30, ratio
    cdef float* o
    with nogil:
        for i in range(n):
            o = &out[i, 0]
            basic_row(ts_ms[i], amount[i], o)
            for j in range(k):
                o[5 + j] = card[i, j]
            for j in range(3):
                tx = terminal[i, j]
                o[c + 2 * j] = terminal[i, j]
                o[c + 2 * j + 1] = <float>(frauds[i, j] / tx) if tx > 0 else 0
            avg = older[i]
            o[t] = <float>avg
            # saturated: an average of 0 or 1e-40 gives FLT_MAX, not inf (the amount is above every
            # spend of those weeks, which models trained on zfraud-v6 learned); 0 / 0 is NaN
            ratio = amount[i] / avg
            o[t + 1] = <float>(FLT_MAX if ratio > FLT_MAX else (-FLT_MAX if ratio < -FLT_MAX else ratio))
            o[t + 2] = runs[i, 0]
            o[t + 3] = runs[i, 1]
            f30 = frauds[i, 2]
            o[t + 4] = <float>(fraud_amount[i, 2] / f30) if f30 > 0 else 0
            o[t + 5] = linked[i, 2]
            o[t + 6] = <float>(f30 - linked[i, 2]) if f30 > linked[i, 2] else 0
