"""Tree-ensemble models: the zfraud model-file form, its validation, and the compiled kernel.

A tree model file holds every tree's nodes in one set of flat arrays, the same whatever library
trained the model (zfraud.importers converts LightGBM text dumps and XGBoost JSON):

    {"format": "zfraud-model", "format_version": 1, "kind": "trees", "version": "...",
     "feature_set": "basic-v1", "features": [...], "source": "...",
     "objective": "binary",    # probability = sigmoid(base_score + sum of the trees' leaf values)
     "base_score": 0.0,        # margin offset
     "tree_start": [...],      # (T + 1,) tree t owns nodes tree_start[t] .. tree_start[t + 1] - 1
     "split_feature": [...],   # (N,) feature index of an internal node, -1 for a leaf
     "threshold": [...],       # (N,) numerical split: go left iff float32(x) <= threshold, a
                               #      float32 value; categorical split: its bitset number
     "decision": [...],        # (N,) bits: 1 categorical, 2 missing goes left, 4 zero is missing
     "left_child": [...],      # (N,) child index within the tree (root = 0), -1 for a leaf
     "right_child": [...],
     "value": [...],           # (N,) leaf output, or an internal node's value (for reasons)
     "leaf_id": [...],         # (N,) the source library's number of a leaf, -1 for internal
     "cat_start": [...],       # (S + 1,) bitset s is cat_bits[cat_start[s] : cat_start[s + 1]]
     "cat_bits": [...]}        # (W,) uint32 words; category c is bit c % 32 of word c // 32

Missing values: NaN goes left iff bit 2 is set. With "zero is missing" (LightGBM's
zero_as_missing) a value with |x| <= 1e-35 goes where NaN goes. A categorical split sends a row
left iff int(x) is in its bitset; NaN, negative and out-of-range values go right (LightGBM).
The importers fold each library's comparison (LightGBM `x <= double`, XGBoost `x < float32`,
the tiny-value rule) into the float32 threshold, so the kernel needs one rule only.
"""
from __future__ import annotations

import numpy as np

from . import _trees
from .model import FORMAT, FORMAT_VERSION, ModelError, _check_matrix, check_margin, check_name

KIND = "trees"
CATEGORICAL, MISSING_LEFT, ZERO_MISSING = 1, 2, 4
MAX_DEPTH = 1000  # deeper trees are refused: no trained model needs them, a hostile file might
_T_VALUE, _T_NEGATED, _T_ZERO = (_trees.TRANSFORMS[k] for k in ("value", "negated", "zero_missing"))

# name -> (dtype kind the JSON list must convert to, numpy dtype we keep)
_ARRAYS = {
    "tree_start": ("i", np.int64),
    "split_feature": ("i", np.int64),
    "threshold": ("f", np.float64),
    "decision": ("i", np.int64),
    "left_child": ("i", np.int64),
    "right_child": ("i", np.int64),
    "value": ("f", np.float64),
    "leaf_id": ("i", np.int64),
    "cat_start": ("i", np.int64),
    "cat_bits": ("i", np.int64),
}


def _array(name, v) -> np.ndarray:
    kind, dtype = _ARRAYS[name]
    try:
        a = np.asarray(v)
    except (ValueError, TypeError):
        raise ModelError(f"{name}: expected a flat list of numbers, got {type(v).__name__}") from None
    if a.ndim != 1:
        raise ModelError(f"{name}: expected a flat list of numbers, got shape {a.shape}")
    if a.size == 0:
        return np.zeros(0, dtype)
    ok = a.dtype.kind in ("iu" if kind == "i" else "iuf")
    if not ok:
        what = "integers" if kind == "i" else "numbers"
        raise ModelError(f"{name}: expected a list of {what}, got {a.dtype} values")
    if kind == "i" and a.dtype.kind == "u" and a.size and a.max() > np.iinfo(np.int64).max:
        raise ModelError(f"{name}: expected integers below 2**63, got {a.max()}")
    return a.astype(dtype)


def _first(mask) -> int:
    return int(np.flatnonzero(mask)[0])


class TreeEnsemble:
    """A validated tree ensemble for binary classification, scored by zfraud._trees.

    Arrays are described in the module docstring; `from_dict(to_dict())` round-trips exactly.
    Every method takes X, a C-contiguous float32 (n, len(features)) matrix.
    """

    kind = KIND
    delay_days = None  # the label delay it was trained with (zfraud.model's docstring)

    def __init__(self, features, *, tree_start, split_feature, threshold, decision, left_child,
                 right_child, value, leaf_id, cat_start=(0,), cat_bits=(), base_score=0.0,
                 objective="binary", version="unversioned", feature_set="basic-v1", source=""):
        if isinstance(features, (str, bytes)) or not hasattr(features, "__iter__"):
            raise ModelError(f"expected a list of feature names, got {features!r}")
        self.features = tuple(features)
        self.version = check_name(version, "version")
        self.feature_set = check_name(feature_set, "feature_set")
        self.source = str(source)
        self.objective = objective
        if objective != "binary":
            raise ModelError(f"expected objective 'binary', got {objective!r}")
        if not self.features or not all(isinstance(f, str) for f in self.features):
            raise ModelError(f"expected a non-empty list of feature names, got {list(self.features)!r}")
        for name in self.features:
            check_name(name, "feature name")
        if len(set(self.features)) != len(self.features):
            raise ModelError("expected unique feature names, got duplicates")
        try:
            self.base_score = float(base_score)
        except (TypeError, ValueError):
            raise ModelError(f"expected a number for base_score, got {base_score!r}") from None
        if not np.isfinite(self.base_score):
            raise ModelError(f"expected a finite base_score, got {self.base_score}")
        a = {k: _array(k, v) for k, v in dict(
            tree_start=tree_start, split_feature=split_feature, threshold=threshold,
            decision=decision, left_child=left_child, right_child=right_child, value=value,
            leaf_id=leaf_id, cat_start=cat_start, cat_bits=cat_bits).items()}
        self._validate(a)
        self.tree_start = a["tree_start"].astype(np.int32)
        self.split_feature = a["split_feature"].astype(np.int32)
        self.threshold = a["threshold"]
        self.decision = a["decision"].astype(np.uint8)
        self.left_child = a["left_child"].astype(np.int32)
        self.right_child = a["right_child"].astype(np.int32)
        self.value = a["value"]
        self.leaf_id = a["leaf_id"].astype(np.int32)
        self.cat_start = a["cat_start"].astype(np.int32)
        self.cat_bits = a["cat_bits"].astype(np.uint32)
        self._forest = self._compile()

    # -- validation ------------------------------------------------------------------------

    def _validate(self, a) -> None:
        F = len(self.features)
        ts = a["tree_start"]
        if ts.size < 2 or ts[0] != 0:
            raise ModelError(f"tree_start: expected [0, ...] with at least one tree, got {ts[:3].tolist()}")
        if np.any(np.diff(ts) < 1):
            t = _first(np.diff(ts) < 1)
            raise ModelError(f"tree_start: expected increasing offsets (a tree has at least one "
                             f"node), got {ts[t]} then {ts[t + 1]} for tree {t}")
        N = int(ts[-1])
        if N >= 2**31 - 1:
            raise ModelError(f"expected fewer than 2**31 - 1 nodes, got {N}")
        for k in ("split_feature", "threshold", "decision", "left_child", "right_child", "value", "leaf_id"):
            if a[k].shape != (N,):
                raise ModelError(f"{k}: expected {N} values (tree_start ends at {N}), got {a[k].size}")
        T = ts.size - 1
        sizes = np.diff(ts)
        tree = np.repeat(np.arange(T), sizes)
        local = np.arange(N) - ts[tree]
        where = lambda i: f"tree {tree[i]}, node {local[i]}"

        left, right, feat, dec = a["left_child"], a["right_child"], a["split_feature"], a["decision"]
        leaf = left == -1
        bad = leaf != (right == -1)
        if bad.any():
            i = _first(bad)
            raise ModelError(f"{where(i)}: expected both children or none (-1), got {left[i]} and {right[i]}")
        n_tree = sizes[tree]
        bad = ~leaf & ((left < 1) | (left >= n_tree) | (right < 1) | (right >= n_tree) | (left == right))
        if bad.any():
            i = _first(bad)
            raise ModelError(f"{where(i)}: expected two different children in [1, {n_tree[i]}), "
                             f"got {left[i]} and {right[i]}")
        bad = np.where(leaf, feat != -1, (feat < 0) | (feat >= F))
        if bad.any():
            i = _first(bad)
            want = "-1 for a leaf" if leaf[i] else f"a feature index in [0, {F})"
            raise ModelError(f"{where(i)}: expected {want}, got split_feature {feat[i]}")
        bad = (dec < 0) | (dec > 7) | ((dec & CATEGORICAL > 0) & (dec & ZERO_MISSING > 0))
        if bad.any():
            i = _first(bad)
            raise ModelError(f"{where(i)}: expected decision bits 1 (categorical), 2 (missing left), "
                             f"4 (zero is missing; not with 1), got {dec[i]}")
        if not np.isfinite(a["value"]).all():
            i = _first(~np.isfinite(a["value"]))
            raise ModelError(f"{where(i)}: expected a finite value, got {float(a['value'][i])!r}")
        with np.errstate(over="ignore"):
            bound = abs(self.base_score) + np.maximum.reduceat(np.abs(a["value"]), ts[:-1]).sum()
        check_margin(bound, "|base_score| + the sum of each tree's largest |value|")
        bad = np.where(leaf, a["leaf_id"] < 0, a["leaf_id"] != -1)
        if bad.any():
            i = _first(bad)
            want = "a leaf_id >= 0 for a leaf" if leaf[i] else "leaf_id -1 for an internal node"
            raise ModelError(f"{where(i)}: expected {want}, got {a['leaf_id'][i]}")

        cs, cb = a["cat_start"], a["cat_bits"]
        if cs.size < 1 or cs[0] != 0 or cs[-1] != cb.size or np.any(np.diff(cs) < 0):
            raise ModelError(f"cat_start: expected non-decreasing offsets from 0 to {cb.size} "
                             f"(the length of cat_bits), got {cs.tolist()[:8]}")
        if cb.size and (cb.min() < 0 or cb.max() > 0xFFFFFFFF):
            raise ModelError(f"cat_bits: expected 32-bit unsigned words, got values in "
                             f"[{cb.min()}, {cb.max()}]")
        th = a["threshold"]
        cat = ~leaf & (dec & CATEGORICAL > 0)
        num = ~leaf & ~cat
        n_sets = cs.size - 1
        bad = cat & ~((th >= 0) & (th < n_sets) & (th == np.floor(th)))
        if bad.any():
            i = _first(bad)
            raise ModelError(f"{where(i)}: expected a categorical threshold naming a bitset in "
                             f"[0, {n_sets}), got {th[i]}")
        if np.any(leaf & ~np.isfinite(th)):
            i = _first(leaf & ~np.isfinite(th))
            raise ModelError(f"{where(i)}: expected a finite threshold, got {float(th[i])!r}")
        with np.errstate(over="ignore", invalid="ignore"):
            as32 = th.astype(np.float32).astype(np.float64)
        bad = num & ((as32 != th) | np.isnan(th))
        if bad.any():
            i = _first(bad)
            raise ModelError(f"{where(i)}: expected a float32 threshold, got {float(th[i])!r}")

        # Structure: every non-root node has exactly one parent in its own tree, and every node
        # is reached from its root within MAX_DEPTH steps; so each tree is a tree (no cycle, no
        # shared or orphan node) and every walk ends.
        inner = np.flatnonzero(~leaf)
        kids = np.concatenate([left[inner], right[inner]]) + np.tile(ts[tree[inner]], 2)
        parents = np.bincount(kids, minlength=N)
        roots = ts[:-1]
        want = np.ones(N, np.int64)
        want[roots] = 0
        if np.any(parents != want):
            i = _first(parents != want)
            raise ModelError(f"{where(i)}: expected {want[i]} parent(s), got {parents[i]} "
                             f"(a node shared, a cycle, or a child pointing at the root)")
        depth = np.full(N, -1, np.int64)
        frontier, d = roots, 0
        while frontier.size:
            if d > MAX_DEPTH:
                raise ModelError(f"tree {tree[frontier[0]]}: expected depth <= {MAX_DEPTH}, got more")
            depth[frontier] = d
            frontier = frontier[~leaf[frontier]]
            frontier = np.concatenate([left[frontier], right[frontier]]) + np.tile(ts[tree[frontier]], 2)
            d += 1
        if np.any(depth < 0):
            i = _first(depth < 0)
            raise ModelError(f"{where(i)}: expected every node reachable from its root, got an "
                             f"unreachable node (a cycle)")
        self._depth = np.maximum.reduceat(depth, ts[:-1])
        self._min_depth = np.minimum.reduceat(np.where(leaf, depth, MAX_DEPTH + 1), ts[:-1])

    # -- compiled kernel arrays ------------------------------------------------------------

    def _compile(self) -> "_trees.Forest":
        """Reorder each tree (internal nodes first, leaves last, pointing to themselves) and fold
        missing-value rules into columns of a prepared row (see ext/trees.pyx)."""
        F, ts = len(self.features), self.tree_start.astype(np.int64)
        N, T = int(ts[-1]), ts.size - 1
        sizes = np.diff(ts)
        tree = np.repeat(np.arange(T), sizes)
        leaf = self.left_child < 0
        order = np.lexsort((np.arange(N), leaf, tree))  # new position -> old index
        new = np.empty(N, np.int64)
        new[order] = np.arange(N)
        # Global new index of each old node's children; a leaf's children are itself.
        left = np.where(leaf, new, new[ts[tree] + np.where(leaf, 0, self.left_child)])
        right = np.where(leaf, new, new[ts[tree] + np.where(leaf, 0, self.right_child)])

        dec = self.decision.astype(np.int64)
        cat = ~leaf & (dec & CATEGORICAL > 0)
        num = ~leaf & ~cat
        miss_left = dec & MISSING_LEFT > 0
        transform = np.where(miss_left, _T_VALUE, _T_NEGATED) | np.where(dec & ZERO_MISSING > 0, _T_ZERO, 0)
        transform = np.where(num, transform, _T_VALUE)
        feat = np.where(leaf, 0, self.split_feature)
        key = transform * F + feat
        used = np.unique(np.concatenate([key[~leaf], [0]]))
        column = np.searchsorted(used, key)

        # Missing goes to child[0], child[1] iff column >= threshold: "x <= t, missing left" is
        # "x >= nextup(t) goes right" (never, for t = +inf); "x <= t, missing right" is
        # "-x >= -t goes left".
        t32 = self.threshold.astype(np.float32)
        with np.errstate(over="ignore"):
            up = np.where(t32 == np.inf, np.float32(np.nan), np.nextafter(t32, np.float32(np.inf)))
        flip = num & ~miss_left
        nodes = np.zeros(N, _trees.NODE_DTYPE)
        nodes["threshold"][new] = np.where(leaf, 0, np.where(flip, -t32, up))
        ncat = np.flatnonzero(cat)
        nodes["column"][new] = column
        nodes["column"][new[ncat]] = ~np.arange(ncat.size)
        swap = flip | cat  # categorical: in the set (left) is child[1]
        nodes["child"][new, 0] = np.where(swap, right, left)
        nodes["child"][new, 1] = np.where(swap, left, right)

        sets = self.threshold[ncat].astype(np.int64)
        cat_splits = np.zeros(ncat.size, _trees.CAT_SPLIT_DTYPE)
        cat_splits["column"] = column[ncat]
        cat_splits["start"] = self.cat_start[sets]
        cat_splits["nwords"] = self.cat_start[sets + 1] - self.cat_start[sets]

        n_inner = np.add.reduceat((~leaf).astype(np.int64), ts[:-1])
        src_feature = np.where(leaf, 0, self.split_feature)[order]
        return _trees.Forest(nodes, self.value[order], self.leaf_id[order], src_feature, ts,
                             ts[:-1] + n_inner, self._min_depth, self._depth, used % F, used // F,
                             cat_splits, self.cat_bits, F, self.base_score)

    # -- scoring ---------------------------------------------------------------------------

    @property
    def n_trees(self) -> int:
        return self.tree_start.size - 1

    def score(self, X) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities (n,) float64, top contributing feature index (n,) int32, -1 for none).

        The top feature is the one whose splits, summed over every tree the row walks through,
        raised its score most (Saabas: each split adds value(child taken) - value(node)).
        """
        X = _check_matrix(X, len(self.features))
        proba = np.empty(len(X), dtype=np.float64)
        top = np.empty(len(X), dtype=np.int32)
        self._forest.explain(X, proba, top)
        return proba, top

    def predict_proba(self, X) -> np.ndarray:
        """Fraud probability of each row: (n,) float64."""
        X = _check_matrix(X, len(self.features))
        out = np.empty(len(X), dtype=np.float64)
        self._forest.predict(X, out)
        return out

    def predict_raw(self, X) -> np.ndarray:
        """Margin (base_score + sum of leaf values) of each row: (n,) float64."""
        X = _check_matrix(X, len(self.features))
        out = np.empty(len(X), dtype=np.float64)
        self._forest.predict(X, out, True)
        return out

    def predict_leaf(self, X) -> np.ndarray:
        """leaf_id reached in each tree: (n, n_trees) int32, numbered as the source library does."""
        X = _check_matrix(X, len(self.features))
        out = np.empty((len(X), self.n_trees), dtype=np.int32)
        self._forest.predict_leaf(X, out)
        return out

    # -- model file ------------------------------------------------------------------------

    def to_dict(self) -> dict:
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": self.kind,
                "version": self.version, "feature_set": self.feature_set,
                "features": list(self.features), "source": self.source, "delay_days": self.delay_days,
                "objective": self.objective, "base_score": self.base_score,
                "tree_start": self.tree_start.tolist(), "split_feature": self.split_feature.tolist(),
                "threshold": self.threshold.tolist(), "decision": self.decision.tolist(),
                "left_child": self.left_child.tolist(), "right_child": self.right_child.tolist(),
                "value": self.value.tolist(), "leaf_id": self.leaf_id.tolist(),
                "cat_start": self.cat_start.tolist(), "cat_bits": self.cat_bits.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "TreeEnsemble":
        if not isinstance(d, dict):
            raise ModelError(f"expected a dict, got {type(d).__name__}")
        if d.get("kind", KIND) != KIND:
            raise ModelError(f"expected kind {KIND!r}, got {d.get('kind')!r}")
        missing = [k for k in ("features", *_ARRAYS) if k not in d and not k.startswith("cat_")]
        if missing:
            raise ModelError(f"expected keys {', '.join(missing)} in a trees model, got none")
        return cls(d["features"], tree_start=d["tree_start"], split_feature=d["split_feature"],
                   threshold=d["threshold"], decision=d["decision"], left_child=d["left_child"],
                   right_child=d["right_child"], value=d["value"], leaf_id=d["leaf_id"],
                   cat_start=d.get("cat_start", (0,)), cat_bits=d.get("cat_bits", ()),
                   base_score=d.get("base_score", 0.0), objective=d.get("objective", "binary"),
                   version=d.get("version", "unversioned"),
                   feature_set=d.get("feature_set", "basic-v1"), source=d.get("source", ""))
