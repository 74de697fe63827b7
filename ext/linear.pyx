# cython: language_level=3
"""Logistic-regression scoring over a C-contiguous float32 feature matrix.

The model is stored centred: logit = intercept + sum_j coef[j] * (x[j] - center[j]), so the
per-feature contribution coef[j] * (x[j] - center[j]) is the reason a row scored as it did.
A NaN feature contributes nothing (it is treated as the centre value).
Accumulation is in double; one pass, no Python objects, no allocation.
"""
from libc.math cimport exp, isnan


cdef inline double sigmoid(double z) noexcept nogil:
    if z >= 0:
        return 1.0 / (1.0 + exp(-z))
    cdef double e = exp(z)
    return e / (1.0 + e)


def predict_linear(const float[:, ::1] X, const double[::1] coef, const double[::1] center,
                   double intercept, double[::1] out_proba, int[::1] out_top):
    """Fraud probability and top contributing feature of each row.

    X: (n, f) float32; coef, center: (f,) float64; out_proba: (n,) float64;
    out_top: (n,) int32, the feature index with the largest positive contribution, or -1 when
    no feature pushed the score up.
    """
    cdef Py_ssize_t n = X.shape[0], f = X.shape[1], i, j
    if coef.shape[0] != f or center.shape[0] != f:
        raise ValueError(f"expected coef and center of length {f}, got {coef.shape[0]} and {center.shape[0]}")
    if out_proba.shape[0] != n or out_top.shape[0] != n:
        raise ValueError(f"expected outputs of length {n}, got {out_proba.shape[0]} and {out_top.shape[0]}")
    cdef double z, c, best
    cdef int top
    with nogil:
        for i in range(n):
            z = intercept
            best = 0.0
            top = -1
            for j in range(f):
                if isnan(X[i, j]):
                    continue
                c = coef[j] * (X[i, j] - center[j])
                z += c
                if c > best:
                    best = c
                    top = <int>j
            out_proba[i] = sigmoid(z)
            out_top[i] = top
