"""Fitting models with numpy alone.

`python -m zfraud.train` regenerates the default model shipped in zfraud/models/default.json:
a logistic regression on the basic feature set, fitted to 400 000 synthetic transactions
(zfraud.synthetic, seed 0). The result is deterministic.
"""
from __future__ import annotations

import numpy as np

from .features import BASIC, FeatureEngine
from .model import DEFAULT_MODEL, LogisticModel, save_model
from .synthetic import synthetic


def fit_logistic(X: np.ndarray, y: np.ndarray, l2: float = 1e-4, iters: int = 50, tol: float = 1e-8):
    """L2-regularised logistic regression by Newton's method on standardised features.

    Returns (coef, center, intercept) in the centred form LogisticModel stores:
    logit = intercept + sum_j coef[j] * (x[j] - center[j]).
    """
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    center = X.mean(axis=0)
    scale = X.std(axis=0)
    scale[scale == 0] = 1.0
    Z = np.hstack([np.ones((len(X), 1)), (X - center) / scale])
    w = np.zeros(Z.shape[1])
    reg = np.full(Z.shape[1], l2 * len(X))
    reg[0] = 0.0  # never shrink the intercept
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-(Z @ w)))
        grad = Z.T @ (p - y) + reg * w
        hess = (Z * (p * (1 - p))[:, None]).T @ Z + np.diag(reg)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < tol:
            break
    return w[1:] / scale, center, float(w[0])


def default_model(n: int = 400_000) -> LogisticModel:
    engine = FeatureEngine(BASIC)
    chunks = list(synthetic(n, batch=65536, seed=0))
    X = np.vstack([engine.transform(c) for c in chunks])
    y = np.concatenate([c["label"] for c in chunks])
    coef, center, intercept = fit_logistic(X, y)
    return LogisticModel(engine.names, coef, center, intercept, version="default-1", feature_set=BASIC,
                         source=f"python -m zfraud.train: logistic regression on {n} synthetic transactions, seed 0")


if __name__ == "__main__":
    model = default_model()
    save_model(model, DEFAULT_MODEL)
    print(f"wrote {DEFAULT_MODEL} (version {model.version})")
