"""Import tree models trained elsewhere into zfraud's tree model form (zfraud.trees).

- `from_lightgbm_text`: LightGBM's text model (`Booster.save_model("m.txt")`), binary objective.
- `from_xgboost_json`: XGBoost's JSON model (`Booster.save_model("m.json")`), binary:logistic.

Each library's split rule becomes zfraud's single rule, "float32(x) <= threshold, missing goes
the flagged way", without changing a single branch for any float32 input:
- LightGBM compares the double value with a double threshold (`x <= t`), reads NaN as 0.0 unless
  the split's missing type is NaN, and reads |x| <= 1e-35 as 0.0 (its predictor drops such
  values). For a float32 x, `x <= t` equals `x <= t32`, t32 the largest float32 <= t; a t within
  [-1e-35, 1e-35] becomes 1e-35 or the float32 just below -1e-35, which sends tiny values where
  0.0 goes. Zero-as-missing splits keep their flag; categorical splits keep their bitsets.
- XGBoost compares float32 `x < t` with float32 t: that is `x <= nextbelow(t)`; NaN goes to the
  default child. The margin offset is logit(base_score).
Anything else (multiclass, other objectives, linear trees, XGBoost categorical splits, DART)
raises ModelError naming what is not supported.

Early stopping: an XGBoost model keeps every round in its file and records best_iteration;
XGBClassifier.predict_proba (fitted or loaded) uses only rounds 0..best_iteration, and so does the
import (`Booster.predict` without iteration_range uses them all). A LightGBM text file records no
best_iteration: training with early stopping drops the later trees (keep_training_booster=False,
the sklearn API's way) and `save_model` writes only those up to best_iteration by default; a file
written with num_iteration=-1 holds all the trees, and LightGBM's Booster loaded from it uses them
all, as the import does.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import numpy as np

from .model import ModelError
from .trees import CATEGORICAL, MISSING_LEFT, ZERO_MISSING, TreeEnsemble

ZERO_THRESHOLD = float(np.float32(1e-35))  # LightGBM's kZeroThreshold (a float constant)
MAX_UNNAMED = 1 << 16  # features an XGBoost model without feature_names may declare (num_feature)


def _f32_at_most(t: np.ndarray) -> np.ndarray:
    """The largest float32 <= t, elementwise (t float64; -inf for t below -FLT_MAX)."""
    with np.errstate(over="ignore"):
        f = t.astype(np.float32)
    above = f.astype(np.float64) > t
    f[above] = np.nextafter(f[above], np.float32(-np.inf))
    return f


def _read(path_or_text, is_text, not_text: str = "") -> tuple[str, str]:
    """(content, where) for a path or the content itself: a str that names an existing file is
    that file (`{xgb}.json` looks like JSON text), else it is the content if is_text(it) says so.
    `not_text` ends the error of a file that is not text."""
    if isinstance(path_or_text, bytes):
        path_or_text = path_or_text.decode("utf-8", "replace")
    if isinstance(path_or_text, str) and is_text(path_or_text) and not os.path.exists(path_or_text):
        return path_or_text, "<text>"
    path = Path(path_or_text)
    try:
        return path.read_text(), str(path)
    except OSError as e:
        raise ModelError(f"cannot read model file {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ModelError(f"{path}: not a text file{not_text}") from None


def _digest(content: str) -> str:
    return hashlib.sha256(content.encode()).hexdigest()[:12]


# -- LightGBM -------------------------------------------------------------------------------

# The line after the last tree: "end of trees" (with tree_sizes=, one size per tree, in the
# header); the oldest text files (version=v2) have neither, and go on with the importances.
_LGB_ENDS = ("end of trees", "feature importances:")


def _lgb_sections(text: str, where: str):
    """Header dict and one dict per tree from LightGBM's `key=value` text format.

    A file cut short is refused: the trees must be followed by their end line, and be as many
    as tree_sizes lists when the header has one.
    """
    lines = text.splitlines()
    if not lines or lines[0].strip() != "tree":
        raise ModelError(f"{where}: expected a LightGBM text model (first line 'tree'), got "
                         f"{(lines[0][:40] if lines else '')!r}")
    header, trees, current, ended = {}, [], None, False
    for line in lines[1:]:
        line = line.strip()
        if line in _LGB_ENDS:
            ended = True
            break
        if line.startswith("Tree="):
            current = {}
            trees.append(current)
            continue
        key, eq, value = line.partition("=")
        if not line:
            continue
        target = header if current is None else current
        target[key] = value if eq else True
    sizes = header.get("tree_sizes")
    listed = len(sizes.split()) if isinstance(sizes, str) else None
    n = len(trees)
    if not ended and listed is not None:
        raise ModelError(f"{where}: {n} of {listed} trees (tree_sizes lists {listed}; no 'end of "
                         f"trees' line): the file is truncated; save or copy it again")
    if not ended:
        raise ModelError(f"{where}: {n} trees and no 'end of trees' line: the file is truncated; "
                         f"save or copy it again")
    if listed is not None and listed != n:
        raise ModelError(f"{where}: {n} trees, but tree_sizes lists {listed}: the file is "
                         f"incomplete; save or copy it again")
    return header, trees


def _scalar(section: dict, key: str, default: str, where: str, kind=int):
    """The `key=` value of a header or tree section (default when absent) read as `kind`."""
    raw = section.get(key, default)
    raw = "" if raw is True else raw  # a `key` line without '='
    try:
        return kind(raw)
    except (TypeError, ValueError, OverflowError):  # (OverflowError: int() of an infinity)
        what = "an integer" if kind is int else "a number"
        raise ModelError(f"{where}: {key} is {raw!r}, expected {what}") from None


def _numbers(tree: dict, key: str, n: int, dtype, t: int, where: str,
             lo: int = -2**31, hi: int = 2**31) -> np.ndarray:
    """The n numbers of a tree's `key=` line (integers in [lo, hi) unless dtype is float64)."""
    raw = tree.get(key)
    if raw is None or raw is True:
        raise ModelError(f"{where}: tree {t}: expected a {key}= line, got none")
    try:
        a = np.array([float(v) for v in raw.split()], dtype=np.float64)
    except ValueError as e:
        raise ModelError(f"{where}: tree {t}: {key}: expected numbers, got {e}") from None
    if a.size != n:
        raise ModelError(f"{where}: tree {t}: {key}: expected {n} values, got {a.size}")
    if dtype is not np.float64:
        if not np.all(np.isfinite(a) & (a == np.round(a)) & (a >= lo) & (a < hi)):
            raise ModelError(f"{where}: tree {t}: {key}: expected integers in [{lo}, {hi})")
        a = a.astype(dtype)
    return a


def from_lightgbm_text(path_or_text, version=None, feature_set="basic-v1") -> TreeEnsemble:
    """A TreeEnsemble from a LightGBM text model: a path, or the text itself (first line 'tree').

    Supports the binary objective (any sigmoid parameter, folded into the values), numerical
    splits with every missing type, and categorical splits.
    """
    text, where = _read(path_or_text, lambda s: s.lstrip().startswith("tree\n") or "\nTree=" in s)
    h, trees = _lgb_sections(text, where)
    num_class = _scalar(h, "num_class", "1", where)
    per_iter = _scalar(h, "num_tree_per_iteration", "1", where)
    if num_class != 1 or per_iter != 1:
        raise ModelError(f"{where}: expected a binary model (num_class=1), got num_class={num_class} "
                         f"(multiclass models are not supported)")
    objective = str(h.get("objective", "")).split()
    if not objective or objective[0] != "binary":
        raise ModelError(f"{where}: expected objective 'binary', got {' '.join(objective)!r}")
    options = dict(opt.partition(":")[::2] for opt in objective[1:])
    alpha = _scalar(options, "sigmoid", "1", where, float)
    if not (math.isfinite(alpha) and alpha > 0):
        raise ModelError(f"{where}: expected a positive sigmoid parameter, got {alpha}")
    if "average_output" in h:
        raise ModelError(f"{where}: random-forest models (average_output) are not supported")
    if "feature_names" not in h or h["feature_names"] is True:
        raise ModelError(f"{where}: expected a feature_names= line, got none")
    features = h["feature_names"].split()
    n_features = _scalar(h, "max_feature_idx", str(len(features) - 1), where) + 1
    if len(features) != n_features:
        raise ModelError(f"{where}: expected {n_features} feature names "
                         f"(max_feature_idx), got {len(features)}")
    if not trees:
        raise ModelError(f"{where}: expected at least one tree, got none")

    cols = {k: [] for k in ("split_feature", "threshold", "decision", "left_child", "right_child",
                            "value", "leaf_id")}
    tree_start, cat_start, cat_bits = [0], [0], []
    for t, tree in enumerate(trees):
        if str(tree.get("is_linear", "0")) != "0":
            raise ModelError(f"{where}: tree {t}: linear trees (linear_tree=true) are not supported")
        L = _scalar(tree, "num_leaves", "0", f"{where}: tree {t}")
        if L < 1:
            raise ModelError(f"{where}: tree {t}: expected num_leaves >= 1, got {L}")
        leaf_value = _numbers(tree, "leaf_value", L, np.float64, t, where)
        leaf_ids = np.arange(L, dtype=np.int64)
        if L == 1:
            feat, thr, dec = np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int64)
            left = right = np.zeros(0, np.int64)
            inner_value = np.zeros(0)
        else:
            n = L - 1
            feat = _numbers(tree, "split_feature", n, np.int64, t, where)
            thr = _numbers(tree, "threshold", n, np.float64, t, where)
            dtype_ = _numbers(tree, "decision_type", n, np.int64, t, where)
            lc = _numbers(tree, "left_child", n, np.int64, t, where)
            rc = _numbers(tree, "right_child", n, np.int64, t, where)
            inner_value = _numbers(tree, "internal_value", n, np.float64, t, where)
            # LightGBM numbers internal nodes 0..L-2 and leaves ~child; zfraud puts leaf j at L-1+j.
            left = np.where(lc >= 0, lc, n + ~lc)
            right = np.where(rc >= 0, rc, n + ~rc)
            is_cat = dtype_ & 1 > 0
            default_left = dtype_ & 2 > 0
            missing = (dtype_ >> 2) & 3
            if np.any(missing == 3) or np.any((dtype_ < 0) | (dtype_ > 15)):
                raise ModelError(f"{where}: tree {t}: expected decision_type in [0, 15] with "
                                 f"missing type 0-2, got {dtype_.tolist()}")
            t32 = _f32_at_most(thr).astype(np.float64)
            tiny = ~is_cat & (missing != 1) & (np.abs(thr) <= ZERO_THRESHOLD)
            t32[tiny & (thr >= 0)] = ZERO_THRESHOLD
            t32[tiny & (thr < 0)] = float(np.nextafter(np.float32(-ZERO_THRESHOLD), np.float32(-np.inf)))
            nan_left = np.where(missing == 0, thr >= 0, default_left)
            dec = np.where(nan_left, MISSING_LEFT, 0) | np.where(missing == 1, ZERO_MISSING, 0)
            dec = np.where(is_cat, CATEGORICAL, dec)
            if is_cat.any():
                n_cat = _scalar(tree, "num_cat", "0", f"{where}: tree {t}")
                bounds = _numbers(tree, "cat_boundaries", n_cat + 1, np.int64, t, where)
                words = _numbers(tree, "cat_threshold", int(bounds[-1]), np.int64, t, where,
                                 lo=0, hi=2**32)
                if bounds[0] != 0 or np.any(np.diff(bounds) < 0):
                    raise ModelError(f"{where}: tree {t}: expected non-decreasing cat_boundaries from 0")
                idx = thr[is_cat]
                if np.any((idx < 0) | (idx >= n_cat) | (idx != np.round(idx))):
                    raise ModelError(f"{where}: tree {t}: expected categorical thresholds in "
                                     f"[0, {n_cat}), got {idx.tolist()}")
                t32[is_cat] = idx + (len(cat_start) - 1)
                cat_start.extend((bounds[1:] + cat_start[-1]).tolist())
                cat_bits.extend(words.tolist())
            thr = t32
        cols["split_feature"].append(np.concatenate([feat, np.full(L, -1)]))
        cols["threshold"].append(np.concatenate([thr, np.zeros(L)]))
        cols["decision"].append(np.concatenate([dec, np.zeros(L, np.int64)]))
        cols["left_child"].append(np.concatenate([left, np.full(L, -1)]))
        cols["right_child"].append(np.concatenate([right, np.full(L, -1)]))
        cols["value"].append(alpha * np.concatenate([inner_value, leaf_value]))
        cols["leaf_id"].append(np.concatenate([np.full(L - 1, -1), leaf_ids]))
        tree_start.append(tree_start[-1] + 2 * L - 1)

    version = version if version is not None else f"lgb-{_digest(text)}"
    source = (f"LightGBM text model {where} ({h.get('version', '?')}, {len(trees)} trees"
              + (f", sigmoid {alpha}" if alpha != 1.0 else "") + ")")
    try:
        return TreeEnsemble(features, tree_start=tree_start, cat_start=cat_start, cat_bits=cat_bits,
                            base_score=0.0, version=version, feature_set=feature_set, source=source,
                            **{k: np.concatenate(v) for k, v in cols.items()})
    except ModelError as e:
        raise ModelError(f"{where}: {e}") from None


# -- XGBoost --------------------------------------------------------------------------------

_XGB_JSON_ONLY = (": only XGBoost's JSON model format is supported (not UBJSON, XGBoost's default, or the "
                  "old binary format): save it with save_model(\"m.json\")")
_REQUIRED = object()
_JSON_TYPES = {dict: "an object", list: "an array", str: "a string"}


def _json_type(value) -> str:
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    return _JSON_TYPES.get(type(value), "a number")


def _at(doc: dict, path: str, kind: type, where: str, default=_REQUIRED):
    """The value at `path` (keys joined by dots) in an XGBoost JSON model, checked to be a `kind`
    (dict, list or str); ModelError naming the place in the file if it is missing (without a
    `default`, which null gives too) or of another type."""
    value, keys = doc, path.split(".")
    for i, key in enumerate(keys):
        if not isinstance(value, dict):
            raise ModelError(f"{where}: expected an XGBoost JSON model, got {'.'.join(keys[:i]) or 'the file'} "
                             f"as {_json_type(value)}, not an object")
        value = value.get(key)
        if value is None:
            if default is _REQUIRED:
                raise ModelError(f"{where}: expected an XGBoost JSON model, got no {path}")
            return default
    if not isinstance(value, kind):
        raise ModelError(f"{where}: {path}: expected {_JSON_TYPES[kind]}, got {_json_type(value)}")
    return value


def _xgb_base_score(raw) -> float:
    s = str(raw).strip()
    if s.startswith("["):
        s = s.strip("[]").split(",")
        if len(s) != 1:
            raise ValueError(f"expected one base_score, got {len(s)}")
        s = s[0]
    return float(np.float32(float(s)))


def _xgb_best_trees(learner: dict, model: dict, n_trees: int, where: str) -> tuple[int, int, int | None]:
    """(trees to keep, boosting rounds, best_iteration or None) of an XGBoost model.

    A model saved after early stopping records best_iteration (learner.attributes): its rounds
    beyond it stay in the file, and XGBClassifier.predict_proba (fitted, or loaded from the file)
    uses only the trees of rounds 0..best_iteration. A round holds num_parallel_tree trees
    (iteration_indptr, since XGBoost 2, gives each round's first tree).
    """
    try:
        param = model.get("gbtree_model_param") or {}
        per = int(param.get("num_parallel_tree", "1"))
        indptr = model.get("iteration_indptr")
        indptr = [int(i) for i in indptr] if indptr else list(range(0, n_trees + 1, max(per, 1)))
        best = (learner.get("attributes") or {}).get("best_iteration")
        best = None if best is None else int(best)
    except (TypeError, ValueError, AttributeError) as e:
        raise ModelError(f"{where}: expected an XGBoost JSON model, got {type(e).__name__}: {e}") from None
    rounds = len(indptr) - 1
    if per < 1 or rounds < 1 or indptr[0] != 0 or indptr[-1] != n_trees or any(
            b < a for a, b in zip(indptr, indptr[1:])):
        raise ModelError(f"{where}: expected {n_trees} trees in rounds of num_parallel_tree={per} "
                         f"(iteration_indptr), got {indptr[:5]}{'...' if len(indptr) > 5 else ''}")
    if best is None or best >= rounds - 1:
        return n_trees, rounds, best
    if best < 0:
        raise ModelError(f"{where}: expected best_iteration in [0, {rounds}), got {best}")
    return indptr[best + 1], rounds, best


def from_xgboost_json(path, version=None, feature_set="basic-v1", notes=None) -> TreeEnsemble:
    """A TreeEnsemble from an XGBoost JSON model (`save_model("m.json")`): a path or the JSON text.

    Supports gbtree and dart boosters with objective binary:logistic and numerical splits. A
    DART model's trees carry weights (`weight_drop`: beside the trees under booster "dart" up to
    XGBoost 3.2; in the model of a "gbtree" booster trained with `rate_drop` since): each tree's
    values are scaled by its weight, as XGBoost's prediction does. A model saved after early
    stopping keeps only the trees up to its best_iteration, as XGBClassifier.predict_proba does;
    a line saying so is appended to the list `notes` if one is given.
    """
    text, where = _read(path, lambda s: s.lstrip().startswith("{"), _XGB_JSON_ONLY)
    try:
        d = json.loads(text)
    except ValueError as e:
        raise ModelError(f"{where}: not valid JSON ({e}){_XGB_JSON_ONLY}") from None
    learner = _at(d, "learner", dict, where)
    objective = _at(d, "learner.objective.name", str, where)
    mp = _at(d, "learner.learner_model_param", dict, where)
    booster = _at(d, "learner.gradient_booster", dict, where)
    if objective != "binary:logistic":
        raise ModelError(f"{where}: expected objective 'binary:logistic', got {objective!r}")
    if _scalar(mp, "num_class", "0", where) > 1 or _scalar(mp, "num_target", "1", where) != 1:
        raise ModelError(f"{where}: expected a single-output binary model, got num_class="
                         f"{mp.get('num_class')}, num_target={mp.get('num_target')}")
    if booster.get("name") not in ("gbtree", "dart"):
        raise ModelError(f"{where}: expected a gbtree or dart booster, got {booster.get('name')!r} "
                         f"(gblinear is not supported)")
    try:
        base = _xgb_base_score(mp.get("base_score", "0.5"))
    except ValueError as e:
        raise ModelError(f"{where}: base_score: {e}") from None
    if not 0.0 < base < 1.0:
        raise ModelError(f"{where}: expected a base_score in (0, 1) for binary:logistic, got {base}")
    n_features = _scalar(mp, "num_feature", "0", where)
    names = _at(d, "learner.feature_names", list, where, default=[])
    if not names and not 0 <= n_features <= MAX_UNNAMED:  # (f0, f1, ... are made up for an unnamed matrix)
        raise ModelError(f"{where}: num_feature is {n_features}, expected 0 to {MAX_UNNAMED}")
    features = names or [f"f{i}" for i in range(n_features)]
    if len(features) != n_features:
        raise ModelError(f"{where}: expected {n_features} feature names, got {len(features)}")
    if any(ft == "c" for ft in _at(d, "learner.feature_types", list, where, default=[])):
        raise ModelError(f"{where}: categorical features are not supported for XGBoost models")
    at = "learner.gradient_booster." + ("gbtree.model" if booster["name"] == "dart" else "model")
    model, trees = _at(d, at, dict, where), _at(d, at + ".trees", list, where)
    try:
        weights = booster.get("weight_drop") if booster["name"] == "dart" else model.get("weight_drop")
        weights = np.ones(len(trees)) if weights is None else np.asarray(weights, np.float64)
    except (TypeError, ValueError, OverflowError) as e:
        raise ModelError(f"{where}: weight_drop: expected an array of numbers, got {type(e).__name__}: {e}") from None
    if not trees:
        raise ModelError(f"{where}: expected at least one tree, got none")
    if weights.shape != (len(trees),) or not np.all(np.isfinite(weights)):
        raise ModelError(f"{where}: expected a finite weight_drop for each of the {len(trees)} trees, "
                         f"got {weights.size} values")
    keep, rounds, best = _xgb_best_trees(learner, model, len(trees), where)
    kept = f"{len(trees)} trees"
    if keep < len(trees):
        kept = f"{keep} of {len(trees)} trees, up to best_iteration {best}"
        if notes is not None:
            notes.append(f"{where}: kept the first {keep} of its {len(trees)} trees (rounds 0-{best} of {rounds}): "
                         f"it was saved after early stopping with best_iteration {best}, and "
                         f"XGBClassifier.predict_proba uses only those")
        trees, weights = trees[:keep], weights[:keep]

    cols = {k: [] for k in ("split_feature", "threshold", "decision", "left_child", "right_child",
                            "value", "leaf_id")}
    tree_start = [0]
    for t, tree in enumerate(trees):
        try:
            lc = np.asarray(tree["left_children"], np.int64)
            rc = np.asarray(tree["right_children"], np.int64)
            feat = np.asarray(tree["split_indices"], np.int64)
            cond = np.asarray(tree["split_conditions"], np.float64).astype(np.float32)
            dleft = np.asarray(tree["default_left"], np.int64)
            hess = np.asarray(tree["sum_hessian"], np.float64)
            stype = np.asarray(tree.get("split_type", np.zeros(lc.size)), np.int64)
            leaf_size = int(tree.get("tree_param", {}).get("size_leaf_vector", "1"))
        except (KeyError, TypeError, ValueError, OverflowError, AttributeError) as e:  # (OverflowError: a
            # number past int64; AttributeError: a tree or its tree_param that is not an object)
            raise ModelError(f"{where}: tree {t}: malformed: {type(e).__name__}: {e}") from None
        n = lc.size
        if n < 1 or any(a.shape != (n,) for a in (rc, feat, cond, dleft, hess, stype)):
            raise ModelError(f"{where}: tree {t}: expected node arrays of one length >= 1")
        if leaf_size > 1:
            raise ModelError(f"{where}: tree {t}: vector leaves (multi-target trees) are not supported")
        if np.any(stype != 0):
            raise ModelError(f"{where}: tree {t}: categorical splits are not supported for XGBoost models")
        # Pre-order from the root keeps only the live nodes (pruned ones stay in the arrays).
        order, stack = [], [0]
        while stack:
            i = stack.pop()
            if not (0 <= i < n) or len(order) >= n:
                raise ModelError(f"{where}: tree {t}: expected a tree with child indices in "
                                 f"[0, {n}), got child {i} or a cycle")
            order.append(i)
            if lc[i] != -1:
                stack.extend((int(rc[i]), int(lc[i])))
        order = np.asarray(order)
        if np.unique(order).size != order.size:
            raise ModelError(f"{where}: tree {t}: expected every node reached once, got a shared node")
        local = np.full(n, -1, np.int64)
        local[order] = np.arange(order.size)
        leaf = lc[order] == -1
        if not np.all(np.isfinite(cond[order])):
            raise ModelError(f"{where}: tree {t}: expected finite split conditions and leaf values")
        # Values for reasons: a leaf's output, and the cover-weighted mean of an internal node's
        # leaves, as XGBoost's approximate contributions use.
        mean = cond.astype(np.float64)
        for i in order[::-1]:
            if lc[i] != -1:
                hl, hr = hess[lc[i]], hess[rc[i]]
                mean[i] = ((mean[lc[i]] * hl + mean[rc[i]] * hr) / (hl + hr) if hl + hr > 0
                           else 0.5 * (mean[lc[i]] + mean[rc[i]]))
        with np.errstate(over="ignore"):
            below = np.nextafter(cond, np.float32(-np.inf)).astype(np.float64)
        cols["split_feature"].append(np.where(leaf, -1, feat[order]))
        cols["threshold"].append(np.where(leaf, 0.0, below[order]))
        cols["decision"].append(np.where(~leaf & (dleft[order] != 0), MISSING_LEFT, 0))
        cols["left_child"].append(np.where(leaf, -1, local[np.where(leaf, 0, lc[order])]))
        cols["right_child"].append(np.where(leaf, -1, local[np.where(leaf, 0, rc[order])]))
        cols["value"].append(np.where(leaf, cond[order].astype(np.float64), mean[order]) * weights[t])
        cols["leaf_id"].append(np.where(leaf, order, -1))
        tree_start.append(tree_start[-1] + order.size)

    version = version if version is not None else f"xgb-{_digest(text)}"
    xgb_version = d.get("version")
    xgb_version = ".".join(str(v) for v in xgb_version) if isinstance(xgb_version, list) else "?"
    source = f"XGBoost {xgb_version} JSON model {where} ({kept})"
    try:
        return TreeEnsemble(features, tree_start=tree_start, base_score=math.log(base / (1.0 - base)),
                            version=version, feature_set=feature_set, source=source,
                            **{k: np.concatenate(v) for k, v in cols.items()})
    except ModelError as e:
        raise ModelError(f"{where}: {e}") from None
