"""Model files: self-describing JSON, validated when loaded.

    {"format": "zfraud-model", "format_version": 1, "kind": "logistic", "version": "...",
     "feature_set": "basic-v1", "features": [...], "source": "...", "delay_days": 7 or null,
     ...kind-specific arrays}

`version`, `feature_set` and each feature name are 1 to MAX_NAME (128) printable characters
(`check_name`): they go into workers' reply headers and one-per-line output.

`delay_days` is the label delay the model was trained with (`zfraud train --delay`): the terminal
windows of the zfraud-v* feature sets end that many days back, so a worker or back-test with
another `--delay` would feed it features it never learned. They refuse it (`check_delay`). Null
(files written before it was recorded, imported models) means unknown: not checked.

`load_model(path)` returns an object with `features`, `version`, `predict_proba(X)` and
`score(X)` (probabilities and each row's top contributing feature), where X is a float32
(n, len(features)) matrix.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from . import _linear
from .files import replacing

FORMAT = "zfraud-model"
FORMAT_VERSION = 1
DEFAULT_MODEL = Path(__file__).with_name("models") / "default.json"


class ModelError(ValueError):
    """A model file that cannot be used: says which file and what is wrong."""


# A model's version goes into every worker's deploy and status reply header (and its verdicts'),
# and is printed one per line by `model info`, `deploy` and `status`; its feature set and feature
# names go into workers' replies too (refusals, the reasons of results). Each is at most
# MAX_NAME printable characters: a 100,000-character version made a worker's replies larger than
# a client reads (65,536 bytes of header), and a newline forged lines in that output.
MAX_NAME = 128


def check_name(value, what: str = "") -> str:
    """`value` as a string, or ModelError (its message starting with `what`) unless it is 1 to
    MAX_NAME printable characters."""
    value = str(value)
    bad = next((c for c in value if not c.isprintable()), None)
    if 0 < len(value) <= MAX_NAME and bad is None:
        return value
    got = f"{bad!r} at position {value.index(bad)}" if bad is not None else f"{len(value):,} characters"
    raise ModelError(f"{what + ': ' if what else ''}expected 1 to {MAX_NAME} printable characters "
                     f"(no control characters), got {got}")


# A model's largest possible |logit| (logistic) or |margin| (trees) must stay below MAX_MARGIN.
# Both kernels add in float64: a sum past DBL_MAX is +-inf, then inf - inf is a NaN score, and a
# NaN score decides review: a model that reaches it is useless. Half of DBL_MAX leaves room for the rounding of the kernel's sum and
# of the bound itself; trained models stay hundreds of orders of magnitude below it.
MAX_MARGIN = float(np.finfo(np.float64).max) / 2
FLOAT32_MAX = float(np.finfo(np.float32).max)  # the largest finite feature value


def check_margin(bound: float, what: str) -> None:
    """ModelError unless `bound`, the largest |logit| any row can reach (`what` says how it is
    computed), is below MAX_MARGIN."""
    if not bound <= MAX_MARGIN:
        raise ModelError(f"a row's logit can reach {bound:.3g} ({what}), expected at most "
                         f"{MAX_MARGIN:.3g}: float64 sums overflow there and the row scores NaN. "
                         f"Retrain the model or fix the file")


def _check_matrix(X, n_features: int) -> np.ndarray:
    X = np.ascontiguousarray(X, dtype=np.float32)
    if X.ndim != 2 or X.shape[1] != n_features:
        raise ValueError(f"expected a (n, {n_features}) float32 matrix, got shape {X.shape}")
    return X


class LogisticModel:
    """logit = intercept + sum_j coef[j] * (x[j] - center[j])."""

    kind = "logistic"
    delay_days = None  # see the module's docstring

    def __init__(self, features, coef, center, intercept, version="unversioned",
                 feature_set="basic-v1", source=""):
        self.features = tuple(features)
        self.coef = np.ascontiguousarray(coef, dtype=np.float64)
        self.center = np.ascontiguousarray(center, dtype=np.float64)
        self.intercept = float(intercept)
        self.version = check_name(version, "version")
        self.feature_set = check_name(feature_set, "feature_set")
        self.source = source
        for name in self.features:
            check_name(name, "feature name")
        f = len(self.features)
        if self.coef.shape != (f,) or self.center.shape != (f,):
            raise ModelError(f"expected coef and center of length {f} (one per feature), "
                             f"got {self.coef.shape} and {self.center.shape}")
        if not (np.isfinite(self.coef).all() and np.isfinite(self.center).all() and np.isfinite(self.intercept)):
            raise ModelError("coef, center and intercept must be finite numbers")
        with np.errstate(over="ignore"):
            bound = abs(self.intercept) + np.sum(np.abs(self.coef) * (FLOAT32_MAX + np.abs(self.center)))
        check_margin(bound, f"|intercept| + the sum of |coef| x (|center| + {FLOAT32_MAX:.3g}, "
                            f"the largest float32 feature)")

    def score(self, X) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities (n,) float64, top contributing feature index (n,) int32, -1 for none)."""
        X = _check_matrix(X, len(self.features))
        proba = np.empty(len(X), dtype=np.float64)
        top = np.empty(len(X), dtype=np.int32)
        _linear.predict_linear(X, self.coef, self.center, self.intercept, proba, top)
        return proba, top

    def predict_proba(self, X) -> np.ndarray:
        return self.score(X)[0]

    def to_dict(self) -> dict:
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": self.kind,
                "version": self.version, "feature_set": self.feature_set,
                "features": list(self.features), "source": self.source, "delay_days": self.delay_days,
                "coef": self.coef.tolist(), "center": self.center.tolist(), "intercept": self.intercept}

    @classmethod
    def from_dict(cls, d: dict) -> "LogisticModel":
        return cls(d["features"], d["coef"], d["center"], d["intercept"], d.get("version", "unversioned"),
                   d.get("feature_set", "basic-v1"), d.get("source", ""))


KINDS = {"logistic": LogisticModel}


def model_from_dict(d: dict, where: str = "model"):
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        hint = (f" (an XGBoost JSON model? import it first with `zfraud model import xgboost {where} -o MODEL`)"
                if isinstance(d, dict) and "learner" in d else "")
        raise ModelError(f"{where}: not a zfraud model file (expected \"format\": \"{FORMAT}\"){hint}")
    if d.get("format_version") != FORMAT_VERSION:
        raise ModelError(f"{where}: format_version {d.get('format_version')!r} is not supported (expected {FORMAT_VERSION})")
    kind = d.get("kind")
    if not isinstance(kind, str) or kind not in KINDS:  # (a list is no dict key: TypeError)
        raise ModelError(f"{where}: unknown model kind {kind!r}; known: {', '.join(sorted(KINDS))}")
    try:
        model = KINDS[kind].from_dict(d)
        delay = d.get("delay_days")
        if delay is not None and (type(delay) is not int or not 0 <= delay <= 30):
            raise ModelError(f"delay_days must be a whole number of days from 0 to 30 or null, got {delay!r}")
        model.delay_days = delay
        return model
    except ModelError as e:
        raise ModelError(f"{where}: {e}") from None
    except (KeyError, TypeError, ValueError) as e:
        raise ModelError(f"{where}: malformed {kind} model: {type(e).__name__}: {e}") from None


def check_delay(model, delay_days: int, who: str = "this worker") -> None:
    """ModelError when the model was trained with another label delay than `delay_days`."""
    if model.delay_days is not None and model.delay_days != delay_days:
        raise ModelError(f"model {model.version} was trained with labels {model.delay_days} days late, and {who} "
                         f"runs with --delay {delay_days}: its terminal windows would not be the ones the model "
                         f"learned. Use --delay {model.delay_days}, or retrain with `zfraud train --delay {delay_days}`")


def load_model(path=None):
    """Load and validate a model file; None loads the default model shipped with the package."""
    path = Path(path) if path is not None else DEFAULT_MODEL
    try:
        d = json.loads(path.read_text())
    except OSError as e:
        raise ModelError(f"cannot read model file {path}: {e.strerror}") from None
    except ValueError as e:
        raise ModelError(f"{path}: not valid JSON: {e}{_import_hint(path)}") from None
    return model_from_dict(d, str(path))


def _import_hint(path) -> str:
    """A hint for a LightGBM text model given where a zfraud model file is expected."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return ""
    if not (head.lstrip().startswith(b"tree\n") or b"\nTree=" in head):
        return ""
    return f" (a LightGBM text model? import it first with `zfraud model import lightgbm {path} -o MODEL`)"


def save_model(model, path) -> None:
    """Write the model file whole or not at all (files.replacing): written in place, a full disk
    or a kill while saving left a truncated file where the last good model was."""
    text = json.dumps(model.to_dict(), indent=1) + "\n"
    with replacing(path) as f:
        f.write(text.encode())


# Registered last: zfraud.trees imports ModelError, FORMAT, _check_matrix and check_margin from
# this module, which are all defined by now.
from .trees import TreeEnsemble  # noqa: E402

KINDS["trees"] = TreeEnsemble
