# cython: language_level=3
"""Feature kernels: transaction columns in, a C-contiguous float32 feature matrix out.

Each function takes read-only typed memoryviews of the batch's columns and a caller-allocated
`out` of shape (n, n_features); it allocates nothing and never touches a Python object inside
the loop. The Python side (zfraud.features) checks shapes and owns the feature names and order.

Time is event time: everything derives from the transaction's own timestamp (epoch
milliseconds, UTC), never from the wall clock.
"""
from libc.math cimport log1p
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
    cdef int64_t day, hour
    with nogil:
        for i in range(n):
            day = floor_div(ts_ms[i], MS_PER_DAY)
            hour = floor_div(ts_ms[i] - day * MS_PER_DAY, MS_PER_HOUR)
            out[i, 0] = <float>amount[i]
            out[i, 1] = <float>log1p(amount[i])
            out[i, 2] = <float>hour
            out[i, 3] = 1.0 if hour <= 6 else 0.0
            out[i, 4] = 1.0 if (day + EPOCH_WEEKDAY) % 7 >= 5 else 0.0
