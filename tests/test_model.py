"""Model files: the default loads, round-trips, and every corruption gives a clear ModelError."""
import json
import subprocess
import sys

import numpy as np
import pytest

from zfraud import load_model
from zfraud.model import DEFAULT_MODEL, LogisticModel, ModelError, save_model

from conftest import run_cli


def same_model(a: dict, b: dict) -> bool:
    """Model files equal key for key, their numbers to 1e-12 relative: another numpy build sums
    in another order and changes a fitted coefficient's last digits (1e-15 relative, in CI after
    a numpy release), while any change to how the model is made moves them by far more."""
    assert a.keys() == b.keys(), (a.keys(), b.keys())
    for k in a:
        if isinstance(a[k], list) and all(isinstance(x, float) for x in a[k]):
            assert a[k] == pytest.approx(b[k], rel=1e-12, abs=0), k
        elif isinstance(a[k], float):
            assert a[k] == pytest.approx(b[k], rel=1e-12, abs=0), k
        else:
            assert a[k] == b[k], k
    return True


def test_default_model_loads_and_scores():
    m = load_model()
    assert m.kind == "logistic" and m.version == "default-2"
    X = np.array([[20.0, np.log1p(20.0), 12, 0, 0], [900.0, np.log1p(900.0), 3, 1, 0]], dtype=np.float32)
    p = m.predict_proba(X)
    assert p.shape == (2,) and p[0] < 0.05 < 0.9 < p[1]


def test_the_default_models_command_explains_itself_and_writes_where_it_is_told(tmp_path):
    """`python -m zfraud.train --help` ignored --help and rewrote the package's default model."""
    before = DEFAULT_MODEL.stat().st_mtime_ns
    r = subprocess.run([sys.executable, "-m", "zfraud.train", "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "Regenerate the default model" in r.stdout, r.stderr
    assert DEFAULT_MODEL.stat().st_mtime_ns == before
    r = subprocess.run([sys.executable, "-m", "zfraud.train", "-o", str(tmp_path / "d.json")], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0 and DEFAULT_MODEL.stat().st_mtime_ns == before, r.stderr
    assert same_model(json.loads((tmp_path / "d.json").read_text()), json.loads(DEFAULT_MODEL.read_text()))
    r = subprocess.run([sys.executable, "-m", "zfraud.train", "-o", str(tmp_path / "no-dir" / "d.json")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.splitlines()[-1].endswith(f"cannot write {tmp_path / 'no-dir' / 'd.json'}: No such file or directory")


def test_the_shipped_default_model_is_what_its_command_writes():
    """`python -m zfraud.train` regenerates zfraud/models/default.json (README): the shipped file
    must be its output, key for key (it lacked "delay_days", added to model files since)."""
    from zfraud.train import default_model
    assert same_model(json.loads(DEFAULT_MODEL.read_text()), json.loads(json.dumps(default_model().to_dict())))


def test_round_trip(tmp_path):
    m = load_model()
    save_model(m, tmp_path / "m.json")
    m2 = load_model(tmp_path / "m.json")
    X = np.random.default_rng(0).uniform(0, 300, (100, 5)).astype(np.float32)
    np.testing.assert_array_equal(m.predict_proba(X), m2.predict_proba(X))


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(format="other"), "not a zfraud model file"),
    (lambda d: d.update(format_version=99), "format_version 99 is not supported"),
    (lambda d: d.update(kind="forest"), "unknown model kind 'forest'"),
    (lambda d: d.update(coef=d["coef"][:3]), "expected coef and center of length 5"),
    (lambda d: d.update(intercept=float("nan")), "must be finite"),
    (lambda d: d.pop("center"), "malformed logistic model: KeyError"),
])
def test_corrupt_model_files_are_refused(tmp_path, change, message):
    d = json.loads(DEFAULT_MODEL.read_text())
    change(d)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(d))
    with pytest.raises(ModelError, match=message):
        load_model(path)


def test_a_model_whose_logit_can_overflow_is_refused(tmp_path):
    """coef 1e308 is finite, but coef x feature is not: the kernel's sum became inf - inf, a NaN
    score (which approved every payment; now each is reviewed). Refused when loaded, by the library
    and the CLI."""
    d = json.loads(DEFAULT_MODEL.read_text())
    d["coef"] = [1e308] * len(d["coef"])
    path = tmp_path / "huge.json"
    path.write_text(json.dumps(d))
    message = r"huge\.json: a row's logit can reach inf \(\|intercept\| \+ the sum of \|coef\| x .*\), " \
              r"expected at most 8\.99e\+307: float64 sums overflow there and the row scores NaN"
    with pytest.raises(ModelError, match=message):
        load_model(path)
    r = run_cli("model", "info", str(path))
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "the row scores NaN" in r.stderr.replace("\n", " "), r.stderr


def test_a_model_just_inside_the_logit_bound_loads_and_scores_every_row():
    """Just below the bound a model still loads, and scores every float32 row (both extremes,
    NaN) with a probability; just above it, it is refused."""
    m = load_model()
    big = np.finfo(np.float32).max
    room = np.finfo(np.float64).max / 2 - abs(m.intercept)  # the bound: half of DBL_MAX
    coef = np.where(np.arange(5) % 2, 1.0, -1.0) * room / np.sum(float(big) + np.abs(m.center))
    edge = LogisticModel(m.features, coef * (1 - 1e-9), m.center, m.intercept)
    X = np.array([[big] * 5, [-big] * 5, [big, -big] * 2 + [big], [-big, big] * 2 + [-big],
                  [np.nan] * 5, [0.0] * 5], np.float32)
    p = edge.predict_proba(X)
    assert np.all((p >= 0) & (p <= 1)), p
    assert p[2] == 0.0 and p[3] == 1.0  # each row pushed to the extreme its signs give
    with pytest.raises(ModelError, match=r"logit can reach 9\.\d+e\+307"):
        LogisticModel(m.features, coef * 1.01, m.center, m.intercept)


def test_unreadable_files(tmp_path):
    with pytest.raises(ModelError, match="cannot read model file"):
        load_model(tmp_path / "missing.json")
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        load_model(tmp_path / "junk.json")


def test_predict_checks_the_feature_count():
    with pytest.raises(ValueError, match=r"expected a \(n, 5\) float32 matrix"):
        load_model().predict_proba(np.zeros((2, 4), np.float32))


@pytest.fixture(scope="module")
def lgb_files(tmp_path_factory):
    """LightGBM text models fitted on a 5-column matrix: unnamed (Column_0...), and named as the
    basic-v1 features."""
    lgb = pytest.importorskip("lightgbm")
    d = tmp_path_factory.mktemp("import")
    rng = np.random.default_rng(0)
    X = rng.uniform(0, 300, (2000, 5))
    y = (X[:, 0] > 150).astype(int)
    from zfraud.features import BASIC_FEATURES
    for name, names in (("unnamed", "auto"), ("named", list(BASIC_FEATURES))):
        params = dict(objective="binary", num_leaves=4, verbose=-1, num_threads=1)
        lgb.train(params, lgb.Dataset(X, y, feature_name=names), 5).save_model(str(d / f"{name}.txt"))
    return d


@pytest.mark.parametrize("source", ["unnamed", "named"])
def test_model_import_gives_a_model_a_worker_can_score_with(lgb_files, source):
    from zfraud.features import BASIC_FEATURES
    from zfraud.scoring import Scorer

    out = lgb_files / f"{source}.json"
    r = run_cli("model", "import", "lightgbm", str(lgb_files / f"{source}.txt"), "-o", str(out))
    assert r.returncode == 0, r.stderr
    m = load_model(out)
    assert m.features == BASIC_FEATURES and m.feature_set == "basic-v1"
    Scorer(m)  # what a worker builds: it refuses a model whose features are not the set's


@pytest.mark.parametrize("args, message", [
    (["--feature-set", "zfraud-v6"], "has 5 features (Column_0, Column_1, Column_2, ...); feature set zfraud-v6 has 28"),
    (["--feature-set", "zfraud-v9"], "'zfraud-v9' is not one of basic-v1, zfraud-v6"),
])
def test_model_import_refuses_a_model_workers_would_refuse(lgb_files, tmp_path, args, message):
    r = run_cli("model", "import", "lightgbm", str(lgb_files / "unnamed.txt"), "-o", str(tmp_path / "m.json"), *args)
    assert r.returncode != 0 and "Traceback" not in r.stderr and not (tmp_path / "m.json").exists()
    assert message in r.stderr.replace("\n", " "), r.stderr


def test_model_info_warns_of_a_feature_set_this_zfraud_does_not_compute(tmp_path):
    """A file from another zfraud is still shown (it may be inspected before an upgrade), with a
    warning that workers refuse it; a known feature set gets no warning."""
    d = json.loads(DEFAULT_MODEL.read_text())
    d["feature_set"] = "zfraud-v99"
    path = tmp_path / "newer.json"
    path.write_text(json.dumps(d))
    r = run_cli("model", "info", str(path), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.splitlines()[-1])["feature_set"] == "zfraud-v99"
    assert "this zfraud computes no feature set 'zfraud-v99'" in r.stderr and "refuses this model" in r.stderr
    r = run_cli("model", "info", str(DEFAULT_MODEL))
    assert r.returncode == 0 and "Warning" not in r.stderr, r.stderr


LIMIT = "expected 1 to 128 printable characters (no control characters)"


@pytest.mark.parametrize("field, value, got", [
    ("version", "x" * 100_000, "got 100,000 characters"),
    ("version", "evil\nworker2      model=fake", "got '\\n' at position 4"),
    ("version", "", "got 0 characters"),
    ("feature_set", "basic-v1\r", "got '\\r' at position 8"),
    ("features", ["amount", "log_amount", "hour", "is_night", "y" * 129], "got 129 characters"),
])
def test_a_model_file_with_a_version_or_name_workers_cannot_send_is_refused_wherever_it_is_loaded(
        tmp_path, field, value, got):
    """A 100,000-character version was deployed: the worker's replies outgrew a client's 65,536-byte
    header limit (status failed for the whole mesh, the deploy stopped half-way); a newline forged
    lines in `model info`, `deploy` and `status`. Refused by load_model (worker --model, deploy's
    local check) and by model_from_dict (a worker's check of a deploy), for both kinds."""
    from zfraud.model import model_from_dict

    what = "feature name" if field == "features" else field
    for d in (load_model().to_dict(), tree_dict()):
        d[field] = value
        path = tmp_path / "long.json"
        path.write_text(json.dumps(d))
        with pytest.raises(ModelError) as e:
            load_model(path)
        assert str(e.value) == f"{path}: {what}: {LIMIT}, {got}"
        with pytest.raises(ModelError, match="^deployed model: " + what):
            model_from_dict(json.loads(path.read_text()), "deployed model")
    r = run_cli("worker", "--name", "v", "--bind", "tcp://127.0.0.1:50991", "--pub", "tcp://127.0.0.1:50992",
                "--model", str(path), timeout=30)
    assert r.returncode == 1 and r.stderr.splitlines()[-1] == f"Error: {path}: {what}: {LIMIT}, {got}", r.stderr
    r = run_cli("deploy", "--connect", "tcp://127.0.0.1:50993", "--model", str(path), "--timeout", "1", timeout=30)
    assert r.returncode == 1 and r.stderr.splitlines()[-1] == f"Error: {path}: {what}: {LIMIT}, {got}", r.stderr


def tree_dict() -> dict:
    """A one-tree model of the basic-v1 features, as a model file's dict."""
    from zfraud.features import BASIC_FEATURES
    from zfraud.trees import TreeEnsemble

    return TreeEnsemble(BASIC_FEATURES, tree_start=[0, 3], split_feature=[0, -1, -1], threshold=[100.0, 0, 0],
                        decision=[0, 0, 0], left_child=[1, -1, -1], right_child=[2, -1, -1],
                        value=[0.0, -1.0, 1.0], leaf_id=[-1, 0, 1]).to_dict()


@pytest.mark.parametrize("version, got", [("x" * 129, "got 129 characters"), ("a\nb", "got '\\n' at position 1")])
def test_model_import_and_train_refuse_a_version_a_model_file_cannot_hold(lgb_files, tmp_path, version, got):
    """`model import --version` took 100,000 characters, and a newline."""
    r = run_cli("model", "import", "lightgbm", str(lgb_files / "named.txt"), "-o", str(tmp_path / "m.json"),
                "--version", version)
    assert r.returncode == 2 and not (tmp_path / "m.json").exists()
    assert r.stderr.splitlines()[-1] == f"Error: Invalid value for '--version': {LIMIT}, {got}", r.stderr
    data = tmp_path / "h.csv"
    data.write_text("TRANSACTION_ID,TX_DATETIME,CUSTOMER_ID,TERMINAL_ID,TX_AMOUNT,TX_FRAUD\n")
    r = run_cli("train", str(data), "--from", "2018-04-01", "--to", "2018-04-02", "--algo", "logistic",
                "-o", str(tmp_path / "m.json"), "--version", version)
    assert r.returncode == 2 and not (tmp_path / "m.json").exists()
    assert r.stderr.splitlines()[-1] == f"Error: Invalid value for '--version': {LIMIT}, {got}", r.stderr
    long = tmp_path / ("y" * 130 + ".json")
    r = run_cli("train", str(data), "--from", "2018-04-01", "--to", "2018-04-02", "--algo", "logistic", "-o", str(long))
    assert r.returncode == 2 and not long.exists()
    assert r.stderr.splitlines()[-1] == (f"Error: --out's file name cannot be the model version: {LIMIT}, got 130 "
                                         f"characters; give --version"), r.stderr


def test_model_import_and_train_refuse_to_write_over_their_source(lgb_files, tmp_path):
    """`model import lightgbm SRC -o SRC` and `train DATA -o DATA` replaced the source with the
    zfraud model, exit 0."""
    src = tmp_path / "m.txt"
    src.write_text((lgb_files / "named.txt").read_text())
    before = src.read_text()
    r = run_cli("model", "import", "lightgbm", str(src), "-o", str(src))
    assert r.returncode == 2 and src.read_text() == before
    assert r.stderr.splitlines()[-1] == f"Error: SOURCE and --out are the same file ({src}): give another", r.stderr
    data = tmp_path / "h.csv"
    data.write_text("TRANSACTION_ID,TX_DATETIME,CUSTOMER_ID,TERMINAL_ID,TX_AMOUNT,TX_FRAUD\n")
    r = run_cli("train", str(data), "--from", "2018-04-01", "--to", "2018-04-02", "--algo", "logistic", "-o", str(data))
    assert r.returncode == 2 and data.read_text().startswith("TRANSACTION_ID,")
    assert r.stderr.splitlines()[-1] == f"Error: DATA and --out are the same file ({data}): give another", r.stderr


@pytest.mark.parametrize("forest", [1, 2])
def test_an_xgboost_model_saved_after_early_stopping_imports_the_trees_predict_proba_uses(tmp_path, forest):
    """The file keeps the rounds after best_iteration; XGBClassifier.predict_proba (fitted, or loaded
    from the file) uses the trees up to it, and the import took them all: scores differed by up to
    0.149. With num_parallel_tree=2 a round is 2 trees."""
    xgb = pytest.importorskip("xgboost")
    from zfraud.features import BASIC_FEATURES

    rng = np.random.default_rng(0)
    X = rng.uniform(0, 300, (3000, 5)).astype(np.float32)
    y = ((X[:, 0] > 150) ^ (rng.random(3000) < 0.2)).astype(int)
    clf = xgb.XGBClassifier(n_estimators=200, max_depth=6, learning_rate=0.5, early_stopping_rounds=3,
                            num_parallel_tree=forest, n_jobs=1, random_state=0)
    clf.fit(X[:2000], y[:2000], eval_set=[(X[2000:], y[2000:])], verbose=False)
    clf.get_booster().feature_names = list(BASIC_FEATURES)
    src, out = tmp_path / "m.json", tmp_path / "m.zf.json"
    clf.save_model(src)
    best, rounds = clf.best_iteration, clf.get_booster().num_boosted_rounds()
    assert best < rounds - 1  # (else the test shows nothing)
    r = run_cli("model", "import", "xgboost", str(src), "-o", str(out))
    assert r.returncode == 0, r.stderr
    keep, total = (best + 1) * forest, rounds * forest
    assert r.stderr.splitlines() == [
        f"{src}: kept the first {keep} of its {total} trees (rounds 0-{best} of {rounds}): it was saved after early "
        f"stopping with best_iteration {best}, and XGBClassifier.predict_proba uses only those"]
    m = load_model(out)
    assert m.n_trees == keep and m.source.endswith(f"({keep} of {total} trees, up to best_iteration {best})")
    loaded = xgb.XGBClassifier()
    loaded.load_model(src)
    np.testing.assert_allclose(m.predict_proba(X), loaded.predict_proba(X)[:, 1], rtol=0, atol=1e-6)
    np.testing.assert_allclose(m.predict_proba(X), clf.predict_proba(X)[:, 1], rtol=0, atol=1e-6)


def test_an_xgboost_model_not_in_json_says_only_json_is_supported_and_how_to_save_it(tmp_path):
    """`model import xgboost m.ubj` said only 'not a text file'."""
    xgb = pytest.importorskip("xgboost")
    X = np.random.default_rng(0).random((200, 5)).astype(np.float32)
    booster = xgb.train({"objective": "binary:logistic", "nthread": 1}, xgb.DMatrix(X, (X[:, 0] > 0.5).astype(int)), 3)
    booster.save_model(str(tmp_path / "m.ubj"))
    r = run_cli("model", "import", "xgboost", str(tmp_path / "m.ubj"), "-o", str(tmp_path / "o.json"))
    assert r.returncode == 1 and not (tmp_path / "o.json").exists()
    assert r.stderr.splitlines() == [
        f"Error: {tmp_path / 'm.ubj'}: not a text file: only XGBoost's JSON model format is supported (not UBJSON, "
        f"XGBoost's default, or the old binary format): save it with save_model(\"m.json\")"]


def test_malformed_model_files_are_one_line_errors_in_every_command(tmp_path):
    """`model import xgboost` of a file with `"gradient_booster": []`, and `model info` or `worker
    --model` of a zfraud model with `"kind": []`, printed a traceback (AttributeError, TypeError:
    unhashable type). An XGBoost file named `{xgb}.json` was read as JSON text."""
    xgb = pytest.importorskip("xgboost")
    X = np.random.default_rng(0).random((200, 5)).astype(np.float32)
    booster = xgb.train({"objective": "binary:logistic", "nthread": 1}, xgb.DMatrix(X, (X[:, 0] > 0.5).astype(int)), 3)
    booster.save_model(str(tmp_path / "{xgb}.json"))
    r = run_cli("model", "import", "xgboost", "{xgb}.json", "-o", "imported.json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "wrote imported.json: trees, 3 trees, 5 features, version {xgb}\n"
    d = json.loads((tmp_path / "{xgb}.json").read_text())
    d["learner"]["gradient_booster"] = []
    (tmp_path / "bad.json").write_text(json.dumps(d))
    r = run_cli("model", "import", "xgboost", str(tmp_path / "bad.json"), "-o", str(tmp_path / "o.json"))
    assert (r.returncode, r.stderr) == (1, f"Error: {tmp_path / 'bad.json'}: learner.gradient_booster: expected an "
                                           f"object, got an array\n")
    m = json.loads(DEFAULT_MODEL.read_text())
    m["kind"] = []
    (tmp_path / "kind.json").write_text(json.dumps(m))
    line = f"Error: {tmp_path / 'kind.json'}: unknown model kind []; known: logistic, trees\n"
    r = run_cli("model", "info", str(tmp_path / "kind.json"))
    assert (r.returncode, r.stderr) == (1, line)
    r = run_cli("worker", "--model", str(tmp_path / "kind.json"), "--bind", "tcp://127.0.0.1:9", "--pub",
                "tcp://127.0.0.1:10", timeout=60)
    assert (r.returncode, r.stderr) == (1, line)


def test_another_librarys_model_where_a_zfraud_model_is_expected_says_to_import_it(lgb_files, tmp_path):
    """`worker --model` or `deploy --model` given a LightGBM text file said only 'not valid JSON'."""
    raw = lgb_files / "named.txt"
    hint = f"(a LightGBM text model? import it first with `zfraud model import lightgbm {raw} -o MODEL`)"
    with pytest.raises(ModelError) as e:
        load_model(raw)
    assert str(e.value) == f"{raw}: not valid JSON: Expecting value: line 1 column 1 (char 0) {hint}"
    r = run_cli("deploy", "--connect", "tcp://127.0.0.1:50994", "--model", str(raw), "--timeout", "1", timeout=30)
    assert r.returncode == 1 and r.stderr.splitlines()[-1].endswith(f"(char 0) {hint}"), r.stderr
    xgb = pytest.importorskip("xgboost")
    X = np.random.default_rng(0).random((200, 5)).astype(np.float32)
    booster = xgb.train({"objective": "binary:logistic", "nthread": 1}, xgb.DMatrix(X, (X[:, 0] > 0.5).astype(int)), 3)
    booster.save_model(str(tmp_path / "x.json"))
    with pytest.raises(ModelError) as e:
        load_model(tmp_path / "x.json")
    assert str(e.value) == (f"{tmp_path / 'x.json'}: not a zfraud model file (expected \"format\": \"zfraud-model\") "
                            f"(an XGBoost JSON model? import it first with `zfraud model import xgboost "
                            f"{tmp_path / 'x.json'} -o MODEL`)")


def test_a_workers_refusal_of_a_model_with_other_features_names_at_most_64_of_them():
    """The refusal goes into a deploy's ERROR reply header: 3,000 names of 128 characters listed in
    full made it 390 KB, past the 65,536 bytes a client reads."""
    from zfraud.scoring import Scorer

    names = [f"{i:0128d}" for i in range(3000)]
    m = LogisticModel(names, np.zeros(3000), np.zeros(3000), 0.0, version="wide-1")
    with pytest.raises(ValueError) as e:
        Scorer(m)
    assert str(e.value) == (f"model wide-1 expects features {names[:3] + ['... 3,000 in all']}, the worker computes "
                            f"['amount', 'log_amount', 'hour', 'is_night', 'is_weekend']")


SAVE_UNDER_A_FILE_SIZE_LIMIT = r'''
import resource, sys
from zfraud.model import load_model, save_model
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), resource.RLIM_INFINITY))  # a disk that fills up
try:
    save_model(load_model(), sys.argv[1])
except OSError as e:
    print(e.strerror)
'''


def test_a_model_that_cannot_be_saved_whole_leaves_the_last_one_as_it_was(tmp_path):
    """save_model wrote in place: a full disk (here a file-size limit) or a kill while saving left
    a truncated file where the last good model was, for `train -o` and `model import -o`."""
    path = tmp_path / "m.json"
    save_model(load_model(), path)
    good = path.read_bytes()
    r = subprocess.run([sys.executable, "-c", SAVE_UNDER_A_FILE_SIZE_LIMIT, str(path), str(len(good) // 2)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "File too large", r.stdout + r.stderr
    assert path.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]  # nor a temporary file beside it


def test_a_model_file_in_a_directory_where_nothing_can_be_created_is_written_in_place(tmp_path):
    """Written whole through a temporary file and a rename, a model in a read-only directory
    (here an immutable one: root ignores modes) that could be written in place failed after all
    of train's work: `cannot use m.json: Operation not permitted`."""
    d = tmp_path / "ro"
    d.mkdir()
    save_model(LogisticModel(["a"], np.array([1.0]), np.array([0.0]), 0.5, version="old"), d / "m.json")
    if subprocess.run(["chattr", "+i", str(d)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available here")
    try:
        save_model(load_model(), d / "m.json")
        assert load_model(d / "m.json").version == "default-2"
        assert [p.name for p in d.iterdir()] == ["m.json"]
    finally:
        subprocess.run(["chattr", "-i", str(d)])
