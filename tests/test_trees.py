"""Tree models: exact agreement with the library that trained them, and refusal of bad files.

The oracle is always the library's Booster reloaded from the file zfraud imported: leaves must
be identical first (a wrong branch can hide inside a probability tolerance), then probabilities
within 1e-6, on rows made of NaN, +-inf, +-0, tiny values and floats at and next to every
threshold of the model.
"""
import json
import re

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
lgb = pytest.importorskip("lightgbm")
xgb = pytest.importorskip("xgboost")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from zfraud import _trees  # noqa: E402
from zfraud.importers import from_lightgbm_text, from_xgboost_json  # noqa: E402
from zfraud.model import ModelError  # noqa: E402
from zfraud.trees import TreeEnsemble  # noqa: E402

F = 5
KZ = float(np.float32(1e-35))  # LightGBM's kZeroThreshold
SPECIAL = [np.nan, np.inf, -np.inf, 0.0, -0.0, KZ, -KZ, 1e-36, -1e-36, 1e-30, -1e-30, 3e38, -3e38,
           0.5, -0.5, 1.0, 2.0, 39.5, -1.0, 1e10, 2.0**31, 3e9]
EXAMPLES = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def training_data(n, seed, inf=True, categorical=False):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, F))
    X[:, 1] = np.where(rng.random(n) < 0.3, 0.0, X[:, 1])  # many exact zeros
    X[:, 2] = np.round(X[:, 2], 1)  # few distinct values: thresholds between them
    if categorical:
        X[:, 0] = rng.integers(0, 40, n)
    X[rng.random((n, F)) < 0.08] = np.nan
    if inf:
        X[rng.random((n, F)) < 0.02] = np.inf
        X[rng.random((n, F)) < 0.02] = -np.inf
        if categorical:
            X[:, 0] = np.where(np.isinf(X[:, 0]), np.nan, X[:, 0])
    c = np.nan_to_num(X, nan=0.3, posinf=3.0, neginf=-3.0)
    y = ((c[:, 0] % 7 < 3 if categorical else c[:, 0] > 0.2) ^ (c[:, 1] > 0.1) ^ (c[:, 2] * c[:, 3] > 0.2))
    return X.astype(np.float32), y.astype(int)


def threshold_pool(values):
    """float32 values at and next to each threshold (given as float64), plus special values."""
    t = np.asarray([v for v in values if np.isfinite(v)], dtype=np.float64)
    with np.errstate(over="ignore"):
        f = t.astype(np.float32)
    f = f[np.isfinite(f)]
    near = np.concatenate([f, np.nextafter(f, np.float32(np.inf)), np.nextafter(f, np.float32(-np.inf))])
    return sorted(set(near.tolist()) | set(SPECIAL), key=repr)


def rows(pool, width=F):
    """Hypothesis: a float32 (n, width) matrix drawn from the pool and from arbitrary float32s."""
    element = st.one_of(st.sampled_from(pool), st.floats(width=32))
    return st.lists(st.lists(element, min_size=width, max_size=width), min_size=1, max_size=48).map(
        lambda r: np.array(r, dtype=np.float32))


# -- LightGBM -----------------------------------------------------------------------------

LGB_KINDS = {
    "numerical": {},
    "categorical": {"categorical_feature": [0]},
    "zero_as_missing": {"zero_as_missing": True},
    "no_missing": {"use_missing": False},
}


@pytest.fixture(scope="module", params=sorted(LGB_KINDS))
def lgb_model(request, tmp_path_factory):
    """(zfraud model, Booster reloaded from the same file, threshold pool) for each kind."""
    kind = request.param
    extra = dict(LGB_KINDS[kind])
    cat = extra.pop("categorical_feature", "auto")
    X, y = training_data(6000, seed=0, categorical=kind == "categorical")
    params = dict(objective="binary", num_leaves=15, learning_rate=0.2, verbose=-1, num_threads=1,
                  seed=0, min_data_per_group=5, cat_smooth=1, max_cat_to_onehot=2, **extra)
    booster = lgb.train(params, lgb.Dataset(X, y, categorical_feature=cat), 30)
    path = tmp_path_factory.mktemp("lgb") / f"{kind}.txt"
    booster.save_model(str(path))
    text = path.read_text()
    thresholds = [float(v) for line in re.findall(r"^threshold=(.*)$", text, re.M) for v in line.split()]
    return from_lightgbm_text(path, version="test"), lgb.Booster(model_file=str(path)), threshold_pool(thresholds)


def test_lightgbm_import_reads_the_header(lgb_model):
    model, booster, _ = lgb_model
    assert model.kind == "trees" and model.version == "test" and model.feature_set == "basic-v1"
    assert model.features == tuple(booster.feature_name())
    assert model.n_trees == booster.num_trees() == 30
    assert model.source.startswith("LightGBM text model")


def test_lightgbm_exact_on_training_like_rows(lgb_model):
    model, booster, _ = lgb_model
    X, _ = training_data(3000, seed=1, categorical=True)
    np.testing.assert_array_equal(model.predict_leaf(X), booster.predict(X, pred_leaf=True))
    np.testing.assert_allclose(model.predict_proba(X), booster.predict(X), rtol=0, atol=1e-6)
    np.testing.assert_allclose(model.predict_raw(X), booster.predict(X, raw_score=True), rtol=0, atol=1e-6)


def test_lightgbm_exact_on_adversarial_rows(lgb_model):
    model, booster, pool = lgb_model

    @EXAMPLES
    @given(rows(pool))
    def check(X):
        np.testing.assert_array_equal(model.predict_leaf(X), booster.predict(X, pred_leaf=True))
        np.testing.assert_allclose(model.predict_proba(X), booster.predict(X), rtol=0, atol=1e-6)

    check()


def saabas_top(model, X):
    """Reference for score()'s top feature: walk each tree in Python with the model's rule."""
    top = np.empty(len(X), np.int32)
    for r, x in enumerate(X):
        contrib = np.zeros(len(model.features))
        for t in range(model.n_trees):
            base = model.tree_start[t]
            i = 0
            while model.left_child[base + i] >= 0:
                n = base + i
                v, d = x[model.split_feature[n]], int(model.decision[n])
                if d & 1:
                    c = int(v) if (v > -1.0 and v < 2.0**31) else -1
                    s, e = model.cat_start[int(model.threshold[n])], model.cat_start[int(model.threshold[n]) + 1]
                    left = 0 <= c < 32 * (e - s) and bool(model.cat_bits[s + c // 32] >> (c % 32) & 1)
                elif np.isnan(v) or (d & 4 and abs(v) <= KZ):
                    left = bool(d & 2)
                else:
                    left = v <= model.threshold[n]
                i = model.left_child[n] if left else model.right_child[n]
                contrib[model.split_feature[n]] += model.value[base + i] - model.value[n]
        top[r] = int(np.argmax(contrib)) if contrib.max() > 0 else -1
    return top


def test_lightgbm_score_gives_probabilities_and_the_saabas_top_feature(lgb_model):
    model, booster, pool = lgb_model
    X, _ = training_data(300, seed=2, categorical=True)
    proba, top = model.score(X)
    assert proba.dtype == np.float64 and top.dtype == np.int32 and top.shape == (300,)
    np.testing.assert_array_equal(proba, model.predict_proba(X))
    np.testing.assert_array_equal(top, saabas_top(model, X))
    assert set(top.tolist()) <= {-1, *range(F)} and (top >= 0).any()


def test_handmade_split_matches_lightgbm_for_every_missing_rule():
    """One numerical split, every missing type x default direction x tricky threshold."""
    def text(threshold, decision_type):
        return (f"tree\nversion=v4\nnum_class=1\nnum_tree_per_iteration=1\nlabel_index=0\n"
                f"max_feature_idx=1\nobjective=binary sigmoid:1\nfeature_names=a b\n"
                f"feature_infos=[-10:10] [-10:10]\n\nTree=0\nnum_leaves=2\nnum_cat=0\nsplit_feature=0\n"
                f"split_gain=1\nthreshold={threshold!r}\ndecision_type={decision_type}\nleft_child=-1\n"
                f"right_child=-2\nleaf_value=-1 1\nleaf_weight=1 1\nleaf_count=1 1\ninternal_value=0\n"
                f"internal_weight=2\ninternal_count=2\nis_linear=0\nshrinkage=1\n\n\nend of trees\n")

    thresholds = [0.5, -0.5, 0.0, -0.0, KZ, -KZ, 1e-35, -1e-35, 5e-36, -5e-36, 0.1, 1e-40, 1e300,
                  -1e300, float("inf")]
    X = np.array([[v, 0.0] for v in threshold_pool(thresholds)], dtype=np.float32)
    for t in thresholds:
        for missing in (0, 1, 2):
            for default_left in (0, 1):
                s = text(t, missing << 2 | default_left << 1)
                model = from_lightgbm_text(s)
                booster = lgb.Booster(model_str=s)
                np.testing.assert_array_equal(
                    model.predict_leaf(X)[:, 0], booster.predict(X, pred_leaf=True)[:, 0],
                    err_msg=f"threshold {t!r}, missing type {missing}, default left {default_left}")


def test_lightgbm_sigmoid_parameter_is_applied(tmp_path):
    X, y = training_data(2000, seed=3)
    booster = lgb.train(dict(objective="binary", sigmoid=0.5, num_leaves=7, verbose=-1, num_threads=1),
                        lgb.Dataset(X, y), 10)
    booster.save_model(str(tmp_path / "m.txt"))
    model = from_lightgbm_text(tmp_path / "m.txt")
    np.testing.assert_allclose(model.predict_proba(X), lgb.Booster(model_file=str(tmp_path / "m.txt")).predict(X),
                               rtol=0, atol=1e-6)


# -- XGBoost ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def xgb_model(tmp_path_factory):
    X, y = training_data(6000, seed=0, inf=False)
    params = dict(objective="binary:logistic", max_depth=5, eta=0.3, nthread=1, seed=0)
    booster = xgb.train(params, xgb.DMatrix(X, y), 30)
    path = tmp_path_factory.mktemp("xgb") / "m.json"
    booster.save_model(str(path))
    reloaded = xgb.Booster()
    reloaded.load_model(str(path))
    trees = json.loads(path.read_text())["learner"]["gradient_booster"]["model"]["trees"]
    pool = threshold_pool([c for tr in trees for c, left in zip(tr["split_conditions"], tr["left_children"])
                           if left != -1])
    return from_xgboost_json(path, version="x"), reloaded, pool


def test_xgboost_exact_on_adversarial_rows(xgb_model):
    model, booster, pool = xgb_model
    assert model.n_trees == 30 and model.source.startswith("XGBoost")

    @EXAMPLES
    @given(rows(pool))
    def check(X):
        finite_or_nan = ~np.isinf(X).any(axis=1)  # a DMatrix refuses inf; inplace_predict takes it
        Xd = X[finite_or_nan]
        if len(Xd):
            np.testing.assert_array_equal(model.predict_leaf(Xd),
                                          booster.predict(xgb.DMatrix(Xd), pred_leaf=True).astype(np.int32))
        np.testing.assert_allclose(model.predict_proba(X), booster.inplace_predict(X), rtol=0, atol=1e-6)

    check()


def test_xgboost_top_feature_matches_its_approximate_contributions(xgb_model):
    model, booster, _ = xgb_model
    X, _ = training_data(2000, seed=4, inf=False)
    _, top = model.score(X)
    contrib = booster.predict(xgb.DMatrix(X), pred_contribs=True, approx_contribs=True)[:, :F]
    best = contrib.max(axis=1)
    want = np.where(best > 0, contrib.argmax(axis=1), -1)
    # Same Saabas rule; XGBoost adds in float32, so only near-ties may differ.
    ours = np.where(top >= 0, contrib[np.arange(len(X)), np.maximum(top, 0)], 0.0)
    differ = top != want
    assert differ.mean() < 0.01
    np.testing.assert_allclose(ours[differ], np.maximum(best[differ], 0), atol=1e-5)


def test_xgboost_dart_trees_are_weighted_as_xgboost_weighs_them(tmp_path):
    """DART scales each tree by a weight (weight_drop). XGBoost up to 3.2 saves such a model as
    booster "dart"; later ones as "gbtree" with the weights in the model, which an importer that
    ignores them read as plain trees (probabilities off by 0.1 here)."""
    X, y = training_data(3000, seed=6, inf=False)
    booster = xgb.train(dict(objective="binary:logistic", booster="dart", rate_drop=0.5, max_depth=4, nthread=1,
                             seed=0), xgb.DMatrix(X, y), 20)
    booster.save_model(str(tmp_path / "dart.json"))
    gb = json.loads((tmp_path / "dart.json").read_text())["learner"]["gradient_booster"]
    weights = np.asarray(gb.get("weight_drop") or gb["model"]["weight_drop"])
    assert weights.size == 20 and weights.min() < 0.9  # the case: trees that do not count in full
    model = from_xgboost_json(tmp_path / "dart.json")
    np.testing.assert_array_equal(model.predict_leaf(X), booster.predict(xgb.DMatrix(X), pred_leaf=True).astype(np.int32))
    np.testing.assert_allclose(model.predict_proba(X), booster.predict(xgb.DMatrix(X)), rtol=0, atol=1e-6)


def test_xgboost_base_score_is_a_margin_offset(tmp_path):
    X, y = training_data(2000, seed=5, inf=False)
    booster = xgb.train(dict(objective="binary:logistic", base_score=0.2, max_depth=3, nthread=1),
                        xgb.DMatrix(X, y), 5)
    booster.save_model(str(tmp_path / "m.json"))
    model = from_xgboost_json(tmp_path / "m.json")
    assert model.base_score == pytest.approx(np.log(0.2 / 0.8), abs=1e-6)
    np.testing.assert_allclose(model.predict_raw(X), booster.predict(xgb.DMatrix(X), output_margin=True),
                               rtol=0, atol=1e-5)


# -- the model file -----------------------------------------------------------------------

def small_dict():
    """Two trees on features a, b: a stump-plus-one and a single leaf."""
    #        0: a <= 0.5 (missing left)         tree 1: one leaf
    #      1: leaf 0.25    2: b <= 1 (missing right)
    #                    3: leaf -1    4: leaf 2
    return {"format": "zfraud-model", "format_version": 1, "kind": "trees", "version": "v1",
            "feature_set": "basic-v1", "features": ["a", "b"], "source": "hand-made",
            "objective": "binary", "base_score": 0.125,
            "tree_start": [0, 5, 6],
            "split_feature": [0, -1, 1, -1, -1, -1],
            "threshold": [0.5, 0.0, 1.0, 0.0, 0.0, 0.0],
            "decision": [2, 0, 0, 0, 0, 0],
            "left_child": [1, -1, 3, -1, -1, -1],
            "right_child": [2, -1, 4, -1, -1, -1],
            "value": [0.0, 0.25, 0.5, -1.0, 2.0, 0.75],
            "leaf_id": [-1, 0, -1, 1, 2, 0],
            "cat_start": [0], "cat_bits": []}


def test_hand_made_model_scores_by_its_rule():
    m = TreeEnsemble.from_dict(small_dict())
    X = np.array([[0.5, 9], [np.nan, 9], [0.6, 1.0], [0.6, np.nan], [np.inf, 1.5], [-np.inf, 0]], np.float32)
    np.testing.assert_array_equal(m.predict_leaf(X), [[0, 0], [0, 0], [1, 0], [2, 0], [2, 0], [0, 0]])
    raw = 0.125 + 0.75 + np.array([0.25, 0.25, -1.0, 2.0, 2.0, 0.25])
    np.testing.assert_allclose(m.predict_raw(X), raw, rtol=0, atol=1e-15)
    np.testing.assert_allclose(m.predict_proba(X), 1 / (1 + np.exp(-raw)), rtol=0, atol=1e-15)
    _, top = m.score(X)
    # a: 0.25 - 0 = +0.25 when left; b: +1.5 towards leaf 2, -1.5 towards leaf 3 (a: +0.5).
    np.testing.assert_array_equal(top, [0, 0, 0, 1, 1, 0])


def test_round_trip_through_json_is_exact(lgb_model):
    model, _, pool = lgb_model
    d = model.to_dict()
    assert d["format"] == "zfraud-model" and d["format_version"] == 1 and d["kind"] == "trees"
    again = TreeEnsemble.from_dict(json.loads(json.dumps(d)))
    assert again.to_dict() == d
    X = np.array([pool[i % len(pool):][:F] + [0.0] * (F - len(pool[i % len(pool):][:F]))
                  for i in range(200)], dtype=np.float32)
    np.testing.assert_array_equal(again.predict_leaf(X), model.predict_leaf(X))
    np.testing.assert_array_equal(again.score(X)[0], model.score(X)[0])
    np.testing.assert_array_equal(again.score(X)[1], model.score(X)[1])


def test_inputs_are_checked_and_converted():
    m = TreeEnsemble.from_dict(small_dict())
    with pytest.raises(ValueError, match=r"expected a \(n, 2\) float32 matrix, got shape \(3, 3\)"):
        m.predict_proba(np.zeros((3, 3), np.float32))
    with pytest.raises(ValueError, match=r"expected a \(n, 2\)"):
        m.score(np.zeros(2, np.float32))
    assert m.predict_proba(np.zeros((0, 2), np.float32)).shape == (0,)
    assert m.predict_leaf(np.zeros((0, 2), np.float32)).shape == (0, 2)
    X = np.asfortranarray(np.array([[0.6, 1.5]] * 3, dtype=np.float64))  # converted, not refused
    np.testing.assert_array_equal(m.predict_leaf(X), [[2, 0]] * 3)
    big = np.tile(np.array([[0.6, 0.5], [0.6, 1.5], [0.1, 0.0]], np.float32), (3000, 1))  # > 4096 rows
    np.testing.assert_array_equal(m.predict_leaf(big)[:, 0], np.tile([1, 2, 0], 3000))


# -- validation: one test per check --------------------------------------------------------

def corrupt(*edits, **changes):
    """small_dict() with keys replaced (changes) and in-place edits applied."""
    d = small_dict()
    d.update(changes)
    for edit in edits:
        edit(d)
    return d


@pytest.mark.parametrize("d, message", [
    (corrupt(left_child=[1, -1, 9, -1, -1, -1]),
     r"tree 0, node 2: expected two different children in \[1, 5\), got 9 and 4"),
    (corrupt(right_child=[2, -1, -7, -1, -1, -1]), r"expected two different children in \[1, 5\), got 3 and -7"),
    (corrupt(left_child=[1, -1, 3, -1, -1, -1], right_child=[2, -1, -1, -1, -1, -1]), r"expected both children or none"),
    (corrupt(left_child=[1, -1, 1, -1, -1, -1]), r"node 1: expected 1 parent\(s\), got 2"),
    (corrupt(left_child=[2, -1, 3, -1, -1, -1]), r"expected two different children"),
    (corrupt(split_feature=[0, -1, 2, -1, -1, -1]),
     r"tree 0, node 2: expected a feature index in \[0, 2\), got split_feature 2"),
    (corrupt(features=["a"]), r"expected a feature index in \[0, 1\)"),
    (corrupt(split_feature=[0, 1, 1, -1, -1, -1]), r"node 1: expected -1 for a leaf"),
    (corrupt(threshold=[0.5, 0.0, 1.0, 0.0, 0.0]), r"threshold: expected 6 values \(tree_start ends at 6\), got 5"),
    (corrupt(value=[[0.0] * 6]), r"value: expected a flat list of numbers, got shape \(1, 6\)"),
    (corrupt(left_child=[1.0, -1, 3, -1, -1, -1]), r"left_child: expected a list of integers, got float64"),
    (corrupt(value=["x"] * 6), r"value: expected a list of numbers"),
    (corrupt(tree_start=[0, 5, 5, 6]), r"tree_start: expected increasing offsets"),
    (corrupt(tree_start=[1, 6]), r"tree_start: expected \[0, \.\.\.\]"),
    (corrupt(tree_start=[0, 5, 7]), r"expected 7 values"),
    (corrupt(value=[0.0, float("nan"), 0.5, -1.0, 2.0, 0.75]), r"tree 0, node 1: expected a finite value, got nan"),
    (corrupt(value=[0.0, 0.25, 0.5, -1.0, float("inf"), 0.75]), r"expected a finite value, got inf"),
    (corrupt(threshold=[0.1, 0.0, 1.0, 0.0, 0.0, 0.0]), r"node 0: expected a float32 threshold, got 0.1"),
    (corrupt(threshold=[float("nan"), 0.0, 1.0, 0.0, 0.0, 0.0]), r"expected a float32 threshold, got nan"),
    (corrupt(decision=[9, 0, 0, 0, 0, 0]), r"expected decision bits"),
    (corrupt(decision=[1, 0, 0, 0, 0, 0]), r"expected a categorical threshold naming a bitset in \[0, 0\)"),
    (corrupt(cat_start=[0, 2], cat_bits=[1]), r"cat_start: expected non-decreasing offsets from 0 to 1"),
    (corrupt(cat_start=[0, 1], cat_bits=[2**32]), r"cat_bits: expected 32-bit unsigned words"),
    (corrupt(leaf_id=[-1, -1, -1, 1, 2, 0]), r"node 1: expected a leaf_id >= 0 for a leaf"),
    (corrupt(base_score=float("inf")), r"expected a finite base_score"),
    (corrupt(value=[0.0, 0.25, 0.5, -1.0, 1e308, 1e308]),  # leaf 2 then tree 1: inf
     r"a row's logit can reach inf \(\|base_score\| \+ the sum of each tree's largest \|value\|\), "
     r"expected at most 8\.99e\+307"),
    (corrupt(value=[0.0, 0.25, 0.5, -1.0, 2.0, 0.75], base_score=-1e308),
     r"a row's logit can reach 1e\+308"),
    (corrupt(objective="multiclass"), r"expected objective 'binary', got 'multiclass'"),
    (corrupt(features=["a", "a"]), r"expected unique feature names"),
    (corrupt(features="ab"), r"expected a list of feature names"),
    (corrupt(kind="logistic"), r"expected kind 'trees'"),
    (corrupt(lambda d: d.pop("right_child")), r"expected keys right_child"),
])
def test_corrupt_models_are_refused(d, message):
    with pytest.raises(ModelError, match=message):
        TreeEnsemble.from_dict(d)


def test_a_cycle_is_refused():
    # Tree 0 is fine from its root, but nodes 3 and 4 point at each other, so they (and their
    # leaves) are not reachable: every node has one parent, yet this is not a tree.
    d = small_dict()
    d.update(tree_start=[0, 7], split_feature=[0, -1, -1, 0, 1, -1, -1], threshold=[0.5] * 7,
             decision=[0] * 7, left_child=[1, -1, -1, 4, 3, -1, -1], right_child=[2, -1, -1, 5, 6, -1, -1],
             value=[0.0] * 7, leaf_id=[-1, 0, 1, -1, -1, 2, 3])
    with pytest.raises(ModelError, match=r"expected every node reachable from its root.*cycle"):
        TreeEnsemble.from_dict(d)


def test_too_deep_a_tree_is_refused():
    depth = 1001  # a chain: node 2k tests, 2k+1 is a leaf, 2k+2 continues
    n = 2 * depth + 1
    left = [k + 1 if k % 2 == 0 and k < 2 * depth else -1 for k in range(n)]
    right = [k + 2 if k % 2 == 0 and k < 2 * depth else -1 for k in range(n)]
    d = small_dict()
    d.update(tree_start=[0, n], split_feature=[0 if lc >= 0 else -1 for lc in left], threshold=[0.0] * n,
             decision=[0] * n, left_child=left, right_child=right, value=[0.0] * n,
             leaf_id=[-1 if lc >= 0 else k for k, lc in enumerate(left)])
    with pytest.raises(ModelError, match=r"tree 0: expected depth <= 1000, got more"):
        TreeEnsemble.from_dict(d)
    d["tree_start"] = [0, n - 2]  # depth 1000 is fine
    for k in ("split_feature", "threshold", "decision", "left_child", "right_child", "value", "leaf_id"):
        d[k] = d[k][:n - 2]
    d["left_child"][-1] = d["right_child"][-1] = -1
    d["split_feature"][-1], d["leaf_id"][-1] = -1, 10**6
    m = TreeEnsemble.from_dict(d)
    assert m.predict_leaf(np.array([[1.0, 0.0]], np.float32))[0, 0] == 10**6


def test_the_kernel_checks_its_own_arrays():
    """zfraud._trees.Forest never trusts its caller: bad indices are a ValueError, not a crash."""
    m = TreeEnsemble.from_dict(small_dict())
    captured = {}
    real = _trees.Forest
    try:
        _trees.Forest = lambda *a: captured.setdefault("args", a)
        m._compile()
    finally:
        _trees.Forest = real
    args = list(captured["args"])
    real(*args)  # as built: fine

    def broken(i, fix):
        a = [np.array(x, copy=True) if isinstance(x, np.ndarray) else x for x in args]
        fix(a[i])
        return a

    def bad_child(nodes):
        nodes["child"][0, 1] = 99

    def bad_column(nodes):
        nodes["column"][0] = 7

    def leaf_not_a_fixed_point(nodes):
        nodes["child"][-1, 0] = 0

    for a, message in [(broken(0, bad_child), r"node 0: expected children in \[0, 5\), got"),
                       (broken(0, bad_column), r"node 0: expected a column in \[0, "),
                       (broken(0, leaf_not_a_fixed_point), r"expected a leaf pointing to itself"),
                       (broken(7, lambda depth: depth.__setitem__(0, 99)), r"tree 0: expected 0 <= min depth <= depth <= 5"),
                       (broken(8, lambda col: col.__setitem__(0, 5)), r"column 0: expected a feature in \[0, 2\)")]:
        with pytest.raises(ValueError, match=message):
            real(*a)


def test_random_corruption_never_crashes():
    """Flip integers in a real model's arrays: either ModelError, or a model that still scores."""
    base = small_dict()

    @settings(max_examples=300, deadline=None)
    @given(st.sampled_from(["left_child", "right_child", "split_feature", "leaf_id", "decision", "tree_start"]),
           st.integers(0, 5), st.integers(-3, 9))
    def check(key, index, value):
        d = json.loads(json.dumps(base))
        d[key][index % len(d[key])] = value
        try:
            m = TreeEnsemble.from_dict(d)
        except ModelError:
            return
        p = m.predict_proba(np.array([[0.1, 2.0], [np.nan, np.nan], [1.0, 0.5]], np.float32))
        assert np.all((p >= 0) & (p <= 1))

    check()


# -- importers refuse what they cannot represent --------------------------------------------

def test_lightgbm_importer_refusals(tmp_path):
    X, y = training_data(600, seed=6)
    multi = lgb.train(dict(objective="multiclass", num_class=3, verbose=-1, num_threads=1),
                      lgb.Dataset(X, y + (X[:, 0] > 1)), 2)
    with pytest.raises(ModelError, match=r"expected a binary model \(num_class=1\), got num_class=3"):
        from_lightgbm_text(multi.model_to_string())
    reg = lgb.train(dict(objective="regression", verbose=-1, num_threads=1), lgb.Dataset(X, y.astype(float)), 2)
    with pytest.raises(ModelError, match=r"expected objective 'binary', got 'regression'"):
        from_lightgbm_text(reg.model_to_string())
    linear = lgb.train(dict(objective="binary", linear_tree=True, verbose=-1, num_threads=1),
                       lgb.Dataset(np.nan_to_num(X, posinf=3, neginf=-3), y), 2)
    with pytest.raises(ModelError, match=r"linear trees"):
        from_lightgbm_text(linear.model_to_string())
    with pytest.raises(ModelError, match=r"expected a LightGBM text model"):
        from_lightgbm_text("hello\nTree=0\n")
    with pytest.raises(ModelError, match=r"cannot read model file"):
        from_lightgbm_text(tmp_path / "missing.txt")
    good = lgb.train(dict(objective="binary", verbose=-1, num_threads=1), lgb.Dataset(X, y), 2).model_to_string()
    with pytest.raises(ModelError, match=r"tree 1: left_child: expected"):
        from_lightgbm_text(re.sub(r"(Tree=1\n(?:.*\n)*?left_child=)\S+", r"\g<1>x", good, count=1))
    with pytest.raises(ModelError, match=r"expected two different children|parent"):
        from_lightgbm_text(re.sub(r"(Tree=1\n(?:.*\n)*?left_child=)(\S+)", r"\g<1>0", good, count=1))


@pytest.fixture(scope="module")
def lgb_five_trees(tmp_path_factory):
    """(path, text, Booster) of a 5-tree binary model saved by LightGBM."""
    X, y = training_data(600, seed=8)
    booster = lgb.train(dict(objective="binary", verbose=-1, num_threads=1), lgb.Dataset(X, y), 5)
    path = tmp_path_factory.mktemp("lgb5") / "m.txt"
    booster.save_model(str(path))
    return path, path.read_text(), booster


def test_lightgbm_truncated_file_is_refused(lgb_five_trees, tmp_path):
    _, text, _ = lgb_five_trees
    cut = tmp_path / "t.txt"
    cut.write_text(text[:1500])
    n = text[:1500].count("\nTree=")
    with pytest.raises(ModelError, match=rf"t\.txt: {n} of 5 trees \(tree_sizes lists 5; no 'end of "
                                         rf"trees' line\): the file is truncated"):
        from_lightgbm_text(cut)
    # Cut at every line before "end of trees": each is refused, whatever tree it ends in.
    lines = text.splitlines(keepends=True)
    end = lines.index("end of trees\n")
    first_tree = next(i for i, line in enumerate(lines) if line.startswith("Tree="))
    for k in range(first_tree + 1, end):
        with pytest.raises(ModelError, match=r"no 'end of trees' line\): the file is truncated"):
            from_lightgbm_text("".join(lines[:k]))
    # A tree missing between complete ones: the count disagrees with tree_sizes.
    dropped = re.sub(r"Tree=3\n(?:.+\n)+\n+", "", text, count=1)
    assert dropped.count("\nTree=") == 4
    with pytest.raises(ModelError, match=r"4 trees, but tree_sizes lists 5: the file is incomplete"):
        from_lightgbm_text(dropped)


def test_lightgbm_files_without_tree_sizes_still_import(lgb_five_trees):
    """The oldest text format (version=v2) has no tree_sizes and no "end of trees" line: its trees
    are followed by "feature importances:". Without either end line the file is cut short."""
    _, text, booster = lgb_five_trees
    X, _ = training_data(200, seed=9)
    old = re.sub(r"tree_sizes=.*\n", "", text).replace("end of trees\n", "")
    old = old.replace("feature_importances:", "feature importances:")
    assert "tree_sizes" not in old and "end of trees" not in old
    np.testing.assert_allclose(from_lightgbm_text(old).predict_proba(X), booster.predict(X),
                               rtol=0, atol=1e-6)
    no_size = re.sub(r"tree_sizes=.*\n", "", text)  # tree_sizes alone is not required either
    np.testing.assert_allclose(from_lightgbm_text(no_size).predict_proba(X), booster.predict(X),
                               rtol=0, atol=1e-6)
    trees_only = old[:old.index("feature importances:")]
    with pytest.raises(ModelError, match=r"5 trees and no 'end of trees' line: the file is truncated"):
        from_lightgbm_text(trees_only)


@pytest.mark.parametrize("edit, message", [
    (("num_class=1", "num_class=x"), r"t\.txt: num_class is 'x', expected an integer"),
    (("num_tree_per_iteration=1", "num_tree_per_iteration=1.5"),
     r"t\.txt: num_tree_per_iteration is '1\.5', expected an integer"),
    (("max_feature_idx=4", "max_feature_idx="), r"t\.txt: max_feature_idx is '', expected an integer"),
    (("max_feature_idx=4", "max_feature_idx"), r"t\.txt: max_feature_idx is '', expected an integer"),
    (("objective=binary sigmoid:1", "objective=binary sigmoid:one"),
     r"t\.txt: sigmoid is 'one', expected a number"),
    (("num_leaves=", "num_leaves=x"), r"t\.txt: tree 0: num_leaves is 'x', expected an integer"),
])
def test_lightgbm_malformed_header_numbers_name_the_field(lgb_five_trees, tmp_path, edit, message):
    _, text, _ = lgb_five_trees
    old, new = edit
    assert old in text
    bad = tmp_path / "t.txt"
    bad.write_text(re.sub(re.escape(old) + r"\S*", new, text, count=1))
    with pytest.raises(ModelError, match=message):
        from_lightgbm_text(bad)

def _mutations(doc, path=()):
    """Every place in a JSON document (lists: their first 3 items), as key paths."""
    yield path
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _mutations(v, path + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc[:3]):
            yield from _mutations(v, path + (i,))


def test_xgboost_importer_refuses_every_malformed_value_with_a_model_error(tmp_path):
    """A value of the wrong type anywhere in an XGBoost JSON model, or a number past int64, ended
    in AttributeError, TypeError or OverflowError (11 kinds; a traceback in `zfraud model import`).
    Each place of a small model set to each of these values imports or is a ModelError."""
    X, y = training_data(300, seed=3, inf=False)
    xgb.train(dict(objective="binary:logistic", max_depth=2, nthread=1), xgb.DMatrix(X, y), 3).save_model(
        str(tmp_path / "x.json"))
    base = json.loads((tmp_path / "x.json").read_text())
    uncaught = {}
    for path in list(_mutations(base))[1:]:
        for value in ([], {}, "x", None, 1.5, -1, 10**30, [None], ["a"], float("nan")):
            d = json.loads(json.dumps(base))
            target = d
            for k in path[:-1]:
                target = target[k]
            target[path[-1]] = value
            try:
                from_xgboost_json(json.dumps(d))
            except ModelError:
                pass
            except Exception as e:  # noqa: BLE001 (what the test looks for)
                uncaught.setdefault(type(e).__name__, ("/".join(map(str, path)), repr(value), str(e)))
    assert uncaught == {}

    def refusal(edit):
        d = json.loads(json.dumps(base))
        edit(d)
        with pytest.raises(ModelError) as e:
            from_xgboost_json(json.dumps(d))
        return str(e.value)

    learner = "learner"
    assert refusal(lambda d: d[learner].__setitem__("gradient_booster", [])) == (
        "<text>: learner.gradient_booster: expected an object, got an array")
    assert refusal(lambda d: d[learner].__setitem__("learner_model_param", [])) == (
        "<text>: learner.learner_model_param: expected an object, got an array")
    assert refusal(lambda d: d[learner].__setitem__("feature_names", 1.5)) == (
        "<text>: learner.feature_names: expected an array, got a number")
    assert refusal(lambda d: d[learner]["objective"].__setitem__("name", None)) == (
        "<text>: expected an XGBoost JSON model, got no learner.objective.name")
    assert refusal(lambda d: d[learner]["gradient_booster"]["model"].__setitem__("trees", {})) == (
        "<text>: learner.gradient_booster.model.trees: expected an array, got an object")
    assert refusal(lambda d: d[learner]["gradient_booster"]["model"]["trees"][0]["left_children"].__setitem__(
        0, 10**30)).startswith("<text>: tree 0: malformed: OverflowError")
    assert refusal(lambda d: d[learner]["gradient_booster"]["model"]["trees"][1].__setitem__("tree_param", [])) == (
        "<text>: tree 1: malformed: AttributeError: 'list' object has no attribute 'get'")

    def unnamed(d):  # f0, f1, ... would be made up for each: a list of 10**12 names
        del d[learner]["feature_names"]
        d[learner]["learner_model_param"]["num_feature"] = str(10**12)
    assert refusal(unnamed) == "<text>: num_feature is 1000000000000, expected 0 to 65536"
    base["version"] = None  # (only named in the model's source)
    assert from_xgboost_json(json.dumps(base)).source == "XGBoost ? JSON model <text> (3 trees)"


def test_an_xgboost_file_whose_name_looks_like_json_is_read_as_a_file(tmp_path, monkeypatch):
    """A str that starts with "{" was taken for the JSON text itself: `{xgb}.json` failed with
    "<text>: not valid JSON". A str naming an existing file is that file."""
    X, y = training_data(300, seed=3, inf=False)
    booster = xgb.train(dict(objective="binary:logistic", max_depth=2, nthread=1), xgb.DMatrix(X, y), 3)
    monkeypatch.chdir(tmp_path)
    booster.save_model("{xgb}.json")
    m = from_xgboost_json("{xgb}.json", version="v")
    text = (tmp_path / "{xgb}.json").read_text()
    assert m.source == f"XGBoost {'.'.join(map(str, json.loads(text)['version']))} JSON model {{xgb}}.json (3 trees)"
    assert m.n_trees == 3 and from_xgboost_json(text, version="v").source.endswith(" JSON model <text> (3 trees)")


def test_xgboost_importer_refusals(tmp_path):
    X, y = training_data(600, seed=7, inf=False)
    multi = xgb.train(dict(objective="multi:softprob", num_class=3, nthread=1), xgb.DMatrix(X, y + (X[:, 0] > 1)), 2)
    multi.save_model(str(tmp_path / "multi.json"))
    with pytest.raises(ModelError, match=r"expected objective 'binary:logistic', got 'multi:softprob'"):
        from_xgboost_json(tmp_path / "multi.json")
    linear = xgb.train(dict(objective="binary:logistic", booster="gblinear", nthread=1), xgb.DMatrix(X, y), 2)
    linear.save_model(str(tmp_path / "linear.json"))
    with pytest.raises(ModelError, match=r"expected a gbtree or dart booster, got 'gblinear'"):
        from_xgboost_json(tmp_path / "linear.json")
    with pytest.raises(ModelError, match=r"expected an XGBoost JSON model"):
        from_xgboost_json('{"learner": {}}')
    good = xgb.train(dict(objective="binary:logistic", nthread=1), xgb.DMatrix(X, y), 2)
    good.save_model(str(tmp_path / "good.json"))
    d = json.loads((tmp_path / "good.json").read_text())
    d["learner"]["learner_model_param"]["num_feature"] = "5x"
    (tmp_path / "t.json").write_text(json.dumps(d))
    with pytest.raises(ModelError, match=r"t\.json: num_feature is '5x', expected an integer"):
        from_xgboost_json(tmp_path / "t.json")
