# cython: language_level=3
"""The per-row steps around the model: which rows of a batch can be scored, and the decision a
score gets.

One pass each, no allocation, no Python object inside the loops. The Python side
(zfraud.scoring) owns the limits and the thresholds, turns an error code into its reason text,
and combines decisions with the rules' actions.
"""
from libc.math cimport isfinite
from libc.stdint cimport int64_t, uint8_t

# Error codes, in the order the checks run: a row gets the code of the first check it fails.
cpdef enum RowError:
    OK = 0
    AMOUNT_NOT_FINITE = 1   # NaN or infinite
    AMOUNT_NEGATIVE = 2
    AMOUNT_TOO_LARGE = 3    # above max_amount
    TS_OUT_OF_RANGE = 4     # outside [min_ts_ms, max_ts_ms): seconds or microseconds for
                            # milliseconds, or garbage
    TS_AHEAD = 5            # at or after ahead_ts_ms (the worker's clock + 1 day): time only moves
                            # forward in the state, so such a row would blind its card and terminal


def check_rows(const int64_t[::1] ts_ms, const double[::1] amount, int64_t min_ts_ms, int64_t max_ts_ms,
               int64_t ahead_ts_ms, double max_amount, uint8_t[::1] out):
    """out[i] = the error code of row i (OK = 0 for a row that can be scored); returns how many
    rows failed a check.

    ts_ms: (n,) int64 epoch milliseconds, valid in [min_ts_ms, max_ts_ms) and below ahead_ts_ms;
    amount: (n,) float64, valid when finite and in [0, max_amount]; out: (n,) uint8.
    """
    cdef Py_ssize_t n = ts_ms.shape[0], i, bad = 0
    if amount.shape[0] != n or out.shape[0] != n:
        raise ValueError(f"expected ts_ms, amount and out of length {n}, got {amount.shape[0]} "
                         f"and {out.shape[0]}")
    cdef double a
    cdef uint8_t code
    with nogil:
        for i in range(n):
            a = amount[i]
            if not isfinite(a):
                code = AMOUNT_NOT_FINITE
            elif a < 0:
                code = AMOUNT_NEGATIVE
            elif a > max_amount:
                code = AMOUNT_TOO_LARGE
            elif ts_ms[i] < min_ts_ms or ts_ms[i] >= max_ts_ms:
                code = TS_OUT_OF_RANGE
            elif ts_ms[i] >= ahead_ts_ms:
                code = TS_AHEAD
            else:
                code = OK
            out[i] = code
            bad += code != OK
    return bad


def decide(const double[::1] proba, double review, double decline, uint8_t[::1] out):
    """out[i] = (proba[i] >= review) + (proba[i] >= decline): 0 approve, 1 review, 2 decline.
    A NaN score is reviewed, never approved: a score nobody can read must not let a payment
    through. proba: (n,) float64; out: (n,) uint8."""
    cdef Py_ssize_t n = proba.shape[0], i
    if out.shape[0] != n:
        raise ValueError(f"expected out of length {n}, got {out.shape[0]}")
    with nogil:
        for i in range(n):
            if proba[i] != proba[i]:
                out[i] = 1
            else:
                out[i] = (proba[i] >= review) + (proba[i] >= decline)
