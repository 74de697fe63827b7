"""The Handbook tools end to end, the way other tools call them: `zfraud gen`, then `zfraud train`
with either algorithm, then `zfraud backtest --json` through a real local mesh, all with paths
relative to the working directory."""
import json

import numpy as np
import pytest

from zfraud import load_model
from zfraud.dataset import day_of, read_labelled
from zfraud.evaluate import known_compromised_mask
from zfraud.features import FEATURE_SETS, FULL

from conftest import run_cli

TRAIN = ("--from", "2018-07-04", "--to", "2018-07-31")
TEST = ("--from", "2018-08-08", "--to", "2018-08-14")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tools")
    r = run_cli("gen", "data.csv", "--customers", "300", "--terminals", "500", "--days", "140", "--seed", "4", cwd=d)
    assert r.returncode == 0, r.stderr
    return d


@pytest.mark.parametrize("algo, kind", [("logistic", "logistic"), ("gbdt", "trees")])
def test_gen_train_backtest(workdir, algo, kind):
    r = run_cli("train", "data.csv", *TRAIN, "--algo", algo, "-o", f"{algo}.json", cwd=workdir)
    assert r.returncode == 0, r.stderr
    model = load_model(str(workdir / f"{algo}.json"))
    assert model.kind == kind and tuple(model.features) == FEATURE_SETS[FULL]

    r = run_cli("backtest", "data.csv", "--model", f"{algo}.json", *TEST, "--json", cwd=workdir, timeout=300)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout.strip().splitlines()[-1])
    d = read_labelled(str(workdir / "data.csv"))
    test = (d["day"] >= day_of("2018-08-08")) & (d["day"] <= day_of("2018-08-14"))
    fraud = d["fraud"] == 1
    known = known_compromised_mask(d["day"], d["card"], d["day"][fraud], d["card"][fraud], 7, res["known_from_day"])
    assert (res["streamed_tx"], res["lost"]) == (len(d["tx_id"]), 0)
    assert (res["tx"], res["frauds"]) == ((test & ~known).sum(), (test & ~known & fraud).sum())
    assert sum(res["decisions"].values()) == test.sum() and res["models"] == [algo]
    assert set(res["recall_by_scenario"]) == {str(s) for s in np.unique(d["scenario"][test & ~known & fraud])}
    # A model that learned something (on this small file the logistic regression gets AUC 0.72 and
    # AP 0.54, LightGBM more): chance is AUC 0.5 and AP the fraud share, about 0.13.
    assert res["auc"] > 0.65 and res["ap"] > 3 * res["frauds"] / res["tx"], res


def test_a_bad_model_file_is_one_line_before_any_worker_starts(workdir):
    (workdir / "bad.json").write_text('{"x": 1}')
    r = run_cli("backtest", "data.csv", "--model", "bad.json", *TEST, cwd=workdir)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "bad.json: not a zfraud model file" in r.stderr, r.stderr
