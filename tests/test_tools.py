"""The Handbook tools end to end, the way other tools call them: `zfraud gen`, then `zfraud train`
with either algorithm, then `zfraud backtest --json` through a real local mesh, all with paths
relative to the working directory."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import click
import numpy as np
import pytest

from zfraud import load_model
from zfraud.dataset import date_of, day_of, read_labelled
from zfraud.evaluate import known_compromised_mask
from zfraud.features import FEATURE_SETS, FULL
from zfraud.local import LocalMesh
from zfraud.sources import CsvReader

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
    # decisions count the rows the metrics are of (they counted the removed known-compromised cards' too)
    assert sum(res["decisions"].values()) == (test & ~known).sum() and res["models"] == [algo]
    assert res["resent"] == 0
    assert set(res["recall_by_scenario"]) == {str(s) for s in np.unique(d["scenario"][test & ~known & fraud])}
    # A model that learned something (on this small file the logistic regression gets AUC 0.72 and
    # AP 0.54, LightGBM more): chance is AUC 0.5 and AP the fraud share, about 0.13.
    assert res["auc"] > 0.65 and res["ap"] > 3 * res["frauds"] / res["tx"], res


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=["SIGINT", "SIGTERM", "SIGHUP"])
def test_ctrl_c_during_a_backtest_stops_its_workers_and_exits_130(workdir, tmp_path, sig):
    """It printed click's bare "Aborted!" with status 1, unlike every other command. SIGTERM (a
    supervisor) and SIGHUP (the terminal closed) killed it outright, with nothing said and the
    local mesh's directory left behind (the workers stopped only through PR_SET_PDEATHSIG)."""
    r = run_cli("train", "data.csv", *TRAIN, "--algo", "logistic", "-o", "int.json", cwd=workdir)
    assert r.returncode == 0, r.stderr
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    bt = subprocess.Popen([sys.executable, "-m", "zfraud", "backtest", "data.csv", "--model", "int.json", *TEST],
                          cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env={**os.environ, "TMPDIR": str(tmp)})
    children = f"/proc/{bt.pid}/task/{bt.pid}/children"
    try:
        workers, deadline = [], time.monotonic() + 60
        while time.monotonic() < deadline and bt.poll() is None and len(workers) < 2:
            with open(children) as f:
                workers = [int(p) for p in f.read().split()]
            time.sleep(0.05)
        assert len(workers) == 2, "the back-test's two workers never started"
        assert list(tmp.iterdir()), "the local mesh's directory is not under TMPDIR"
        bt.send_signal(sig)
        out, err = bt.communicate(timeout=60)
    finally:
        bt.kill()
    assert bt.returncode == 128 + sig and err.strip().splitlines()[-1] == "interrupted", err
    assert list(tmp.iterdir()) == [], "the local mesh's directory was left"
    assert out == "" and "Aborted" not in err and "Traceback" not in err, err
    for pid in workers:  # stopped and reaped by the back-test
        assert not os.path.exists(f"/proc/{pid}"), f"worker {pid} outlived the back-test"


@pytest.mark.parametrize("status", [130, 128 + signal.SIGTERM])
def test_a_ctrl_c_while_click_reads_the_command_line_says_interrupted(status):
    """A backtest interrupted about half a second after it started (the imports done, its options
    being read) said click's "Aborted!" with status 1: 2 of 9 Ctrl-Cs sent at 0.1-1.5 s. An option
    whose check is interrupted stands in for that moment here."""
    from click.testing import CliRunner

    from zfraud.cli import main

    def interrupted(ctx, param, value):
        stop = KeyboardInterrupt()
        if status != 130:
            stop.status = status  # as zfraud's SIGTERM handler raises it
        raise stop

    cmd = click.Command("slow-to-parse", params=[click.Option(["--x"], default="1", callback=interrupted)],
                        callback=lambda x: None)
    main.add_command(cmd)
    try:
        r = CliRunner().invoke(main, ["slow-to-parse"])
    finally:
        del main.commands["slow-to-parse"]
    assert (r.exit_code, r.stderr) == (status, "interrupted\n"), (r.exit_code, r.output)


def test_a_worker_that_dies_during_a_backtest_fails_it_with_no_metrics(workdir):
    """kill -9 of one of the two workers mid-stream: the client resent its batches to the other, and
    the back-test printed metrics of a different run (the dead worker's card state gone) with status 0."""
    import shutil

    from zfraud.backtest import backtest
    from zfraud.client import MeshError

    r = run_cli("train", "data.csv", *TRAIN, "--algo", "logistic", "-o", "die.json", cwd=workdir)
    assert r.returncode == 0, r.stderr
    me, scored, killed = os.getpid(), [0], []

    def kill_w2_once_scoring_is_under_way(rows):
        scored[0] += rows
        if killed or scored[0] < 5000:
            return
        with open(f"/proc/{me}/task/{me}/children") as f:
            for pid in map(int, f.read().split()):
                with open(f"/proc/{pid}/cmdline", "rb") as g:
                    if b"\0--name\0w2\0" in g.read():
                        os.kill(pid, signal.SIGKILL)
                        killed.append(pid)

    with pytest.raises(MeshError) as e:
        backtest(str(workdir / "data.csv"), str(workdir / "die.json"), day_of("2018-08-08"), day_of("2018-08-14"),
                 progress=kill_w2_once_scoring_is_under_way)
    assert killed and str(e.value).startswith("worker w2 of the back-test's mesh exited (status -9), and the state "
                                              "of its cards with it"), e.value
    log = str(e.value).split("Its log: ")[1]
    assert os.path.exists(log)  # kept, to be read
    shutil.rmtree(os.path.dirname(log))


def test_a_test_week_left_empty_by_known_compromised_cards_says_so_before_any_worker_starts(tmp_path):
    """One customer, whose card is known to be compromised from before the test days: every test row
    is removed, and the back-test ended after the whole stream in "The weights and list don't have the
    same length" (numpy's words, from auc of no rows)."""
    from zfraud.evaluate import auc, evaluate

    r = run_cli("gen", "one.csv", "--customers", "1", "--terminals", "10000", "--days", "90", "--seed", "2", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    (tmp_path / "empty.json").write_text("")  # never read: the test set is checked first
    # (awk: 90 rows have TX_TIME_DAYS 39 to 80; the card had a fraud on day 0)
    r = run_cli("backtest", "one.csv", "--model", "empty.json", "--from", "2018-05-10", "--to", "2018-06-20",
                cwd=tmp_path)
    assert r.returncode == 1 and r.stderr.strip().splitlines() == [
        "Error: no test transaction is left: all 90 on the test days are of cards known to be compromised (a fraud "
        "on them from 2018-04-26 on, --known-from)"], r.stderr
    assert np.isnan(auc([], [])) and evaluate([], [], [], [])["tx"] == 0


@pytest.mark.parametrize("fraud, missing", [("0", "no frauds"), ("1", "no genuine transactions")])
def test_a_backtest_whose_test_days_hold_one_class_prints_json_null_and_says_the_auc_is_undefined(tmp_path, fraud,
                                                                                                  missing):
    """AUC ROC needs a fraud and a genuine transaction in the test days. Without one, `backtest --json`
    printed a bare NaN, which is not JSON (jq and most parsers refuse the line), exited 0 and said
    "AUC ROC nan"."""
    from zfraud.model import DEFAULT_MODEL

    r = run_cli("gen", "g.csv", "--customers", "20", "--terminals", "40", "--days", "20", "--seed", "1", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = (tmp_path / "g.csv").read_text().splitlines()
    at = lines[0].split(",").index("TX_FRAUD")
    rows = [x.split(",") for x in lines[1:]]
    for row in rows:
        row[at] = fraud  # every row one class; TX_FRAUD_SCENARIO is left as it was (not read for the AUC)
    (tmp_path / "one.csv").write_text("\n".join([lines[0], *(",".join(x) for x in rows)]) + "\n")
    # --known-from after the test days: no card is removed as known-compromised, even when every row is a fraud
    r = run_cli("backtest", "one.csv", "--model", str(DEFAULT_MODEL), "--from", "2018-04-15", "--to", "2018-04-20",
                "--known-from", "2018-04-21", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout.strip().splitlines()[-1], parse_constant=lambda c: pytest.fail(f"bare {c} in the JSON"))
    d = read_labelled(str(tmp_path / "one.csv"))
    test = int(((d["day"] >= day_of("2018-04-15")) & (d["day"] <= day_of("2018-04-20"))).sum())
    assert res["auc"] is None and (res["tx"], res["frauds"]) == (test, test * int(fraud)), res
    assert f"AUC ROC undefined ({missing} in the test days)" in r.stderr, r.stderr


def test_train_and_backtest_refuse_a_file_that_repeats_a_transaction_id(workdir, tmp_path):
    """Workers count a repeated id once, the replay each time: train and backtest saw two different
    files, and both went ahead without a word (59,546 of 64,489 scores differed from the replay)."""
    lines = (workdir / "data.csv").read_text().splitlines(keepends=True)
    (tmp_path / "dup.csv").write_text("".join(lines[:1] + [x for i, x in enumerate(lines[1:]) for _ in range(1 + (i % 10 == 3))]))
    (tmp_path / "empty.json").write_text("")
    repeated = len(range(3, len(lines) - 1, 10))
    first = lines[4].split(",")[0]
    for command, args in (("train", (*TRAIN, "-o", "m.json")), ("backtest", ("--model", "empty.json", *TEST))):
        r = run_cli(command, "dup.csv", *args, cwd=tmp_path)
        assert r.returncode == 1 and r.stderr.strip().splitlines() == [
            f"Error: dup.csv: {repeated:,} rows repeat the TRANSACTION_ID of another row ({repeated:,} ids, the first "
            f"{first}); labelled history must hold each transaction once"], (command, r.stderr)
    assert not (tmp_path / "m.json").exists()


def test_a_bad_model_file_is_one_line_before_any_worker_starts(workdir):
    (workdir / "bad.json").write_text('{"x": 1}')
    r = run_cli("backtest", "data.csv", "--model", "bad.json", *TEST, cwd=workdir)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "bad.json: not a zfraud model file" in r.stderr, r.stderr


def test_a_model_trained_with_another_delay_is_refused_by_backtest_workers_and_deploy(workdir, tmp_path):
    """The terminal windows end --delay days back: a model trained with 5 would be fed windows it
    never learned by a worker running with the default 7, so nothing runs it there."""
    r = run_cli("train", "data.csv", *TRAIN, "--algo", "logistic", "--delay", "5", "-o", "d5.json", cwd=workdir)
    assert r.returncode == 0, r.stderr
    assert load_model(str(workdir / "d5.json")).delay_days == 5
    said = "model d5 was trained with labels 5 days late, and {} runs with --delay 7"
    r = run_cli("backtest", "data.csv", "--model", "d5.json", *TEST, cwd=workdir)
    assert r.returncode == 1 and said.format("this back-test") in r.stderr and "Traceback" not in r.stderr, r.stderr
    with socket.socket() as taken:  # a port in use: a worker that got past the model check stops at its bind
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = f"tcp://127.0.0.1:{taken.getsockname()[1]}"
        r = run_cli("worker", "--model", str(workdir / "d5.json"), "--bind", busy)
        assert r.returncode == 1 and said.format("this worker") in r.stderr and "Traceback" not in r.stderr, r.stderr
        with LocalMesh(1, log_dir=str(tmp_path)) as mesh:
            r = run_cli("deploy", "--connect", mesh.endpoint, "--model", str(workdir / "d5.json"))
            assert r.returncode == 1 and said.format("this worker") in r.stderr, r.stderr
        r = run_cli("worker", "--model", str(workdir / "d5.json"), "--delay", "5", "--bind", busy)
        assert r.returncode == 1 and f"cannot bind --bind {busy}" in r.stderr and "trained with" not in r.stderr, r.stderr


BAD_ROWS = [(3, "1.5", "CUSTOMER_ID '1.5' is not a whole number from 0 to 2**64 - 1"),
            (5, "2018-02-30 10:00:00", "TX_DATETIME '2018-02-30 10:00:00' is not a date and time from 2000-01-01 to 2199-12-31"),
            (6, "", "TX_AMOUNT '' is not a number from 0 to 1e+12"), (8, "2", "TX_FRAUD '2' is not 0 or 1")]


def labelled_file(path, rows=9):
    """A small Handbook CSV with the BAD_ROWS values put in at their lines."""
    header = "TRANSACTION_ID,TX_DATETIME,CUSTOMER_ID,TERMINAL_ID,TX_AMOUNT,TX_FRAUD"
    lines = [[str(i), f"2018-04-01 00:00:{i:02d}", str(i), "3", "10.5", "1"] for i in range(rows)]
    for line, value, message in BAD_ROWS:
        column = message.split()[0]
        lines[line - 2][header.split(",").index(column)] = value
    path.write_text("\n".join([header, *(",".join(r) for r in lines)]) + "\n")


def test_train_names_the_line_and_column_of_a_value_it_cannot_read(tmp_path):
    labelled_file(tmp_path / "bad.csv")
    r = run_cli("train", str(tmp_path / "bad.csv"), *TRAIN, "-o", str(tmp_path / "m.json"))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert f"bad.csv, line 3: {BAD_ROWS[0][2]} (and 3 more rows like it)" in r.stderr, r.stderr


@pytest.mark.parametrize("word", ["now", "today"])
def test_a_word_for_a_time_is_that_rows_error_in_labelled_files(tmp_path, word):
    """numpy reads "now" and "today" as times (the moment the file is read): not in a history."""
    (tmp_path / "words.csv").write_text("TRANSACTION_ID,TX_DATETIME,CUSTOMER_ID,TERMINAL_ID,TX_AMOUNT,TX_FRAUD\n"
                                        "0,2018-04-01 00:00:00,1,2,10.5,0\n"
                                        f"1,{word},1,2,10.5,0\n"
                                        "2,2018-04-01 00:00:02,1,2,10.5,0\n")
    errors = []
    d = read_labelled(str(tmp_path / "words.csv"), errors)
    assert (3, f"TX_DATETIME {word!r} is not a date and time from 2000-01-01 to 2199-12-31, such as "
               "2018-04-01 00:00:31, or epoch milliseconds") in errors
    assert 1 not in d["tx_id"].tolist() and d["ts_ms"].max() < 1_600_000_000_000  # no row dated today


def test_train_reads_times_as_send_does(tmp_path):
    """One parser for both: train refused epoch milliseconds that send took, and send read
    +1522540831000 as a year (a time ~10**11 years away, for the worker to reject) where train
    refused it."""
    values = ["2018-04-01 00:00:31", "1522540831000", " 2018-04-01T00:00:31Z", "2018-04-01 02:00:31+02:00",
              "+1522540831000", "+2018-04-01 00:00:31", "-1522540831000", "now", "", "1e12"]
    header = "TRANSACTION_ID,TX_DATETIME,CUSTOMER_ID,TERMINAL_ID,TX_AMOUNT,TX_FRAUD"
    p = tmp_path / "times.csv"
    p.write_text("\n".join([header, *(f'{i},"{v}",1,2,10.5,0' for i, v in enumerate(values))]) + "\n")
    errors = []
    d = read_labelled(str(p), errors)
    assert d["tx_id"].tolist() == [0, 1, 2, 3] and d["ts_ms"].tolist() == [1522540831000] * 4
    assert [line for line, _ in errors] == list(range(6, 12))
    reader = CsvReader(str(p))
    sent = [c for c in reader]
    assert np.concatenate([c["tx_id"] for c in sent]).tolist() == [0, 1, 2, 3]
    assert np.concatenate([c["ts_ms"] for c in sent]).tolist() == [1522540831000] * 4
    assert [line for line, _ in reader.errors] == list(range(6, 12)), reader.errors


def test_gen_to_standard_output_needs_no_writable_directory():
    """OUT - is standard output: it was checked as a file in the working directory."""
    r = subprocess.run([sys.executable, "-m", "zfraud", "gen", "-", "--customers", "50", "--terminals", "100", "--days",
                        "2"], capture_output=True, text=True, timeout=60, cwd="/proc/self")  # not writable, even by root
    assert r.returncode == 0 and r.stdout.startswith("TRANSACTION_ID,TX_DATETIME,"), r.stderr
    assert len(r.stdout.splitlines()) > 2


def test_times_numpy_would_misread_are_refused_at_their_line_and_padded_ones_read(tmp_path):
    """numpy reads 1522540831000Z and 12018-04-01 as years (garbage ms for the worker to reject,
    with no line); a spreadsheet pads with no-break spaces, which strip() takes off."""
    values = ["1522540831000Z", "12018-04-01 00:00:31", "2018-04-01 00:00:31\xa0", "\u30002018-04-01 00:00:31",
              "2018-04-01 00:00:31"]
    header = "TRANSACTION_ID,TX_DATETIME,CUSTOMER_ID,TERMINAL_ID,TX_AMOUNT,TX_FRAUD"
    p = tmp_path / "times.csv"
    p.write_text("\n".join([header, *(f"{i},{v},1,2,10.5,0" for i, v in enumerate(values))]) + "\n")
    errors = []
    assert read_labelled(str(p), errors)["ts_ms"].tolist() == [1522540831000] * 3 and [e[0] for e in errors] == [2, 3]
    reader = CsvReader(str(p))
    assert np.concatenate([c["ts_ms"] for c in reader]).tolist() == [1522540831000] * 3
    assert [e[0] for e in reader.errors] == [2, 3]


def test_a_garbled_time_does_not_size_the_whole_column(tmp_path):
    """One 20,000-character TX_DATETIME among 100,000 rows: the column became one array of
    100,000 x 20,000 characters (7.5 GiB), "out of memory" with no line. Under a 2 GiB limit
    the row is named and the others read."""
    header = "TRANSACTION_ID,TX_DATETIME,CUSTOMER_ID,TERMINAL_ID,TX_AMOUNT,TX_FRAUD"
    rows = [f"{i},2018-04-01 00:00:{i % 60:02d},1,2,10.5,0" for i in range(100_000)]
    rows[500] = "500," + "7" * 20_000 + ",1,2,10.5,0"
    p = tmp_path / "long.csv"
    p.write_text("\n".join([header, *rows]) + "\n")
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30)); "
            "from zfraud.dataset import read_labelled; e = []; d = read_labelled(sys.argv[1], e); "
            "print(len(d['tx_id']), e[0][0], e[0][1][:40])")
    r = subprocess.run([sys.executable, "-c", code, str(p)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["99999", "502", "TX_DATETIME", "'" + "7" * 27]


@pytest.mark.parametrize("value", [
    "1522540831000", " 1522540831000 ", "2018-04-01 00:00:31", " 2018-04-01T00:00:31Z ", "2018-04-01 02:00:31+02:00",
    "2018-04-01 00:00:31.5Z", "2018-04-01 00:00:31\xa0", "2018-04-01", "12", "0", "+1522540831000", "-5",
    "1522540831000Z", "12018-04-01 00:00:31", "now", "NaT", "", " ", "2018-02-30 10:00:00", "2018-04-01 00:00:31 UTC",
    "2018-04-01 00:00:31+25:00", "\uff12\uff10\uff11\uff18-04-01 00:00:31", "1" * 25, "7" * 41])
def test_one_time_alone_reads_as_it_does_among_others(value):
    """parse_ts_ms reads a single value (failing() checks bad rows one by one) without numpy's
    column machinery: the two must agree on every value."""
    from zfraud.sources import parse_ts_ms

    def read(values):
        try:
            return int(parse_ts_ms(values)[0])
        except ValueError:
            return "refused"

    assert read([value]) == read([value, "2018-04-01 00:00:31"])


def test_failing_finds_every_refused_item_in_order():
    from zfraud.sources import failing

    rng = np.random.default_rng(0)

    def check(part):
        if any(part):
            raise ValueError("refused")

    for n in (0, 1, 2, 17, 1000, 5000):
        for share in (0.0, 0.001, 0.1, 1.0):
            items = (rng.random(n) < share).tolist()
            assert list(failing(items, check)) == [k for k, x in enumerate(items) if x], (n, share)


OUT_OF_RANGE = [("TX_AMOUNT", "-5", "TX_AMOUNT '-5' is not a number from 0 to 1e+12"),
                ("TX_AMOUNT", "1e300", "TX_AMOUNT '1e300' is not a number from 0 to 1e+12"),
                ("TX_AMOUNT", "1000000000000.01", "TX_AMOUNT '1000000000000.01' is not a number from 0 to 1e+12"),
                ("TX_DATETIME", "1999-12-31 23:59:59", "TX_DATETIME '1999-12-31 23:59:59' is not a date and time "
                                                       "from 2000-01-01 to 2199-12-31, such as 2018-04-01 00:00:31, "
                                                       "or epoch milliseconds"),
                ("TX_DATETIME", "2200-01-01 00:00:00", "TX_DATETIME '2200-01-01 00:00:00' is not a date and time "
                                                       "from 2000-01-01 to 2199-12-31, such as 2018-04-01 00:00:31, "
                                                       "or epoch milliseconds")]


@pytest.mark.parametrize("column, value, message", OUT_OF_RANGE)
def test_a_value_the_workers_would_reject_is_that_rows_error_in_labelled_files(tmp_path, column, value, message):
    """Such a row trained (a warning and a useless model for 1e300) and made backtest fail at the
    end with "score contains NaN", with no line to find it by."""
    header = "TRANSACTION_ID,TX_DATETIME,CUSTOMER_ID,TERMINAL_ID,TX_AMOUNT,TX_FRAUD"
    rows = [[str(i), f"2018-04-01 00:00:{i:02d}", "1", "2", "10.5", "0"] for i in range(3)]
    rows[1][header.split(",").index(column)] = value
    p = tmp_path / "range.csv"
    p.write_text("\n".join([header, *(",".join(r) for r in rows)]) + "\n")
    errors = []
    assert read_labelled(str(p), errors)["tx_id"].tolist() == [0, 2] and errors == [(3, message)]
    with pytest.raises(ValueError) as e:
        read_labelled(str(p))
    assert str(e.value) == f"{p}, line 3: {message}"


@pytest.mark.parametrize("command, column, value, message", [
    ("train", "TX_AMOUNT", "1e300", OUT_OF_RANGE[1][2]),  # was a RuntimeWarning and "coef ... must be finite"
    ("backtest", "TX_AMOUNT", "-5", OUT_OF_RANGE[0][2]),  # was "score contains NaN", after the whole run
    ("backtest", "TX_DATETIME", "1999-12-31 23:59:59", OUT_OF_RANGE[3][2]),
])
def test_train_and_backtest_stop_at_the_line_of_a_value_the_workers_would_reject(tmp_path, command, column, value,
                                                                                  message):
    header = "TRANSACTION_ID,TX_DATETIME,CUSTOMER_ID,TERMINAL_ID,TX_AMOUNT,TX_FRAUD"
    days = range(day_of("2018-07-01"), day_of("2018-08-15"))  # TRAIN and TEST
    rows = [[str(i), f"{date_of(day)} 10:00:00", str(i % 7), "3", "10.5", str(i % 2)] for i, day in enumerate(days)]
    rows[3][header.split(",").index(column)] = value
    (tmp_path / "bad.csv").write_text("\n".join([header, *(",".join(r) for r in rows)]) + "\n")
    (tmp_path / "empty.json").write_text("")  # backtest reads the data before the model
    model = ("--algo", "logistic", "-o", "m.json") if command == "train" else ("--model", "empty.json")
    r = run_cli(command, "bad.csv", *(TRAIN if command == "train" else TEST), *model, cwd=tmp_path)
    assert r.returncode == 1 and r.stderr.strip().splitlines() == [f"Error: bad.csv, line 5: {message}"], r.stderr


def test_label_sends_the_rows_it_can_read_and_reports_the_others(tmp_path):
    from zfraud import Client
    from zfraud.local import LocalMesh

    labelled_file(tmp_path / "labels.csv")
    with LocalMesh(1, log_dir=str(tmp_path)) as mesh:
        r = run_cli("label", str(tmp_path / "labels.csv"), "--connect", mesh.endpoint)
        with Client(mesh.endpoint) as c:
            applied = c.control("w1", "status")["status"]["labels"]
    assert r.returncode == 3, r.stderr
    for line, _, message in BAD_ROWS:
        assert f"input line {line}: {message}" in r.stderr, r.stderr
    assert "5 labels sent" in r.stdout and "4 rows not sent" in r.stdout and applied == 5


def test_a_path_that_cannot_be_written_is_one_line_naming_it(tmp_path):
    out = tmp_path / "no-such-dir" / "data.csv"
    r = run_cli("gen", str(out), "--days", "1")  # a usage error (status 2), as train's -o is
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == f"Error: Invalid value for 'OUT': cannot use {out}: No such file or directory", r.stderr


@pytest.mark.parametrize("command, option", [
    (["send", "--synthetic", "10", "--connect", "tcp://127.0.0.1:9"], "'--out'"),  # nothing listens: not reached
    (["train", "data.csv", "--from", "2018-04-01", "--to", "2018-04-02"], "'-o' / '--out'"),
    (["model", "import", "lightgbm", "data.csv"], "'-o' / '--out'"),
])
@pytest.mark.parametrize("where, why", [("no-such-dir/f", "No such file or directory"), ("a-file/f", "Not a directory")])
def test_an_out_path_that_cannot_be_written_is_a_usage_error_before_any_work(tmp_path, command, option, where, why):
    """It was found only when the file was opened, after connecting, or after the training: status 1."""
    (tmp_path / "a-file").write_text("")
    (tmp_path / "data.csv").write_text("not read\n")
    out = tmp_path / where
    r = run_cli(*command, "--out", str(out), cwd=tmp_path, timeout=30)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == f"Error: Invalid value for {option}: cannot use {out}: {why}"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_gen_interrupted_while_writing_leaves_out_as_it_was(tmp_path, sig):
    """SIGINT, SIGTERM or SIGHUP once the CSV's first rows are on disk: OUT keeps its old
    contents, nothing else is left (SIGTERM, then SIGHUP, used to leave the temporary file), and
    the status says which signal it was (128 + its number)."""
    out = tmp_path / "data.csv"
    out.write_text("old\n")
    gen = subprocess.Popen([sys.executable, "-m", "zfraud", "gen", str(out)], stderr=subprocess.PIPE, text=True)
    def writing():  # a file in the directory starts with the CSV's header
        for f in tmp_path.iterdir():
            with f.open("rb") as h:
                if h.read(14) == b"TRANSACTION_ID":
                    return True
        return False

    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and gen.poll() is None and not writing():
            time.sleep(0.01)
        gen.send_signal(sig)
        _, err = gen.communicate(timeout=60)
    finally:
        gen.kill()
    assert [f.name for f in tmp_path.iterdir()] == ["data.csv"] and out.read_text() == "old\n"
    assert gen.returncode == 128 + sig and err.strip().splitlines()[-1] == f"interrupted: {out} was left as it was", err


@pytest.mark.parametrize("start, message", [
    ("20180401", "expected a date as YYYY-MM-DD, got '20180401'"),
    ("2018", "expected a date as YYYY-MM-DD, got '2018'"),
    ("2018-04-01 12:00", "expected a date as YYYY-MM-DD, got '2018-04-01 12:00'"),
    ("9999-12-30", "the 40 days from 9999-12-30 run past 9999-12-31"),
])
def test_gen_refuses_a_start_that_is_not_a_date_or_runs_past_year_9999(tmp_path, start, message):
    r = run_cli("gen", "out.csv", "--customers", "20", "--terminals", "40", "--days", "40", "--start", start,
                cwd=tmp_path)
    assert r.returncode == 2 and not (tmp_path / "out.csv").exists()
    assert r.stderr.strip().splitlines()[-1] == f"Error: Invalid value for '--start': {message}", r.stderr


@pytest.mark.parametrize("start, days, message", [
    ("1990-01-01", "20", "the 20 days 1990-01-01 to 1990-01-20"),
    ("1999-12-31", "20", "the 20 days 1999-12-31 to 2000-01-19"),
    ("2199-12-20", "20", "the 20 days 2199-12-20 to 2200-01-08"),
])
def test_gen_refuses_dates_the_workers_would_reject(tmp_path, start, days, message):
    """Such a file trained, and backtest then failed with "score contains NaN"."""
    r = run_cli("gen", "out.csv", "--customers", "20", "--terminals", "40", "--days", days, "--start", start,
                cwd=tmp_path)
    assert r.returncode == 1 and not (tmp_path / "out.csv").exists()
    assert r.stderr.strip().splitlines() == [f"Error: {message} run outside the dates the workers accept, from "
                                             "2000-01-01 to 2199-12-31: choose a start and a number of days "
                                             "within them"], r.stderr


def test_gen_goes_up_to_the_last_day_workers_accept_and_train_takes_only_yyyy_mm_dd(tmp_path):
    r = run_cli("gen", "out.csv", "--customers", "200", "--terminals", "300", "--days", "30",
                "--start", "2199-12-02", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    d = read_labelled(str(tmp_path / "out.csv"))
    assert (d["day"].min(), d["day"].max()) == (day_of("2199-12-02"), day_of("2199-12-31"))
    r = run_cli("train", "out.csv", "--from", "99991202", "--to", "9999-12-31", "-o", "m.json", cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == "Error: Invalid value for '--from': expected a date as YYYY-MM-DD, " \
                                                "got '99991202'", r.stderr


def test_backtest_refuses_a_file_dated_ahead_of_the_clock_before_starting_a_mesh(tmp_path):
    """Workers reject rows dated more than 1 day ahead of their clock: a back-test of such a file
    was a back-test of rejected rows ("score contains NaN"). One clear error instead."""
    from zfraud.model import DEFAULT_MODEL

    r = run_cli("gen", "out.csv", "--customers", "20", "--terminals", "40", "--days", "30", "--start", "2199-12-02",
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    d = read_labelled(str(tmp_path / "out.csv"))
    n, first = len(d["tx_id"]), np.datetime64(int(d["ts_ms"][0]) // 1000, "s")
    t0 = time.monotonic()
    r = run_cli("backtest", "out.csv", "--model", str(DEFAULT_MODEL), "--from", "2199-12-20", "--to", "2199-12-25",
                cwd=tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines()[-1] == (
        f"Error: {n:,} transactions, from {first}, are dated more than 1 day ahead of this machine's clock, and "
        "workers reject those: back-test history, not the future (`zfraud gen --start` an earlier date)"), r.stderr
    assert time.monotonic() - t0 < 20  # refused before any worker started


@pytest.mark.parametrize("command, dates, status, message", [
    # dates that run backwards are a usage error (2), found before the file is read: it was 1
    ("train", ("--from", "2018-07-31", "--to", "2018-07-04"), 2,
     "the training dates run backwards: --from 2018-07-31 is after --to 2018-07-04"),
    ("backtest", ("--from", "2018-08-14", "--to", "2018-08-08"), 2,
     "the test dates run backwards: --from 2018-08-14 is after --to 2018-08-08"),
    ("train", ("--from", "2019-01-01", "--to", "2019-01-31"), 1,
     "no transactions in the training dates 2019-01-01 to 2019-01-31: the file holds 2018-04-01 to 2018-08-18"),
    ("backtest", ("--from", "2017-01-01", "--to", "2017-01-07"), 1,
     "no transactions in the test dates 2017-01-01 to 2017-01-07: the file holds 2018-04-01 to 2018-08-18"),
])
def test_dates_outside_the_file_say_which_dates_it_holds(workdir, command, dates, status, message):
    (workdir / "empty.json").write_text("")  # backtest checks the dates before it reads the model
    model = ("-o", "out.json") if command == "train" else ("--model", "empty.json")
    r = run_cli(command, "data.csv", *dates, *model, cwd=workdir)
    assert r.returncode == status and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == f"Error: {message}", r.stderr


@pytest.mark.parametrize("thresholds", [("--review-at", "nan"), ("--decline-at", "nan"),
                                        ("--review-at", "0.9", "--decline-at", "0.5")])
def test_a_worker_with_thresholds_out_of_order_is_a_usage_error(thresholds):
    """click.FloatRange(0, 1) lets NaN through, and review above decline was found by the worker:
    status 1 with no usage line. Both are usage errors now (2), before anything binds (NaN as
    for every number option: test_ops)."""
    r = run_cli("worker", *thresholds, "--bind", "tcp://127.0.0.1:9", timeout=60)
    review, decline = (dict(zip(thresholds[::2], thresholds[1::2])).get(k, d)
                       for k, d in (("--review-at", "0.2"), ("--decline-at", "0.8")))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    if "nan" in thresholds:
        option = thresholds[thresholds.index("nan") - 1]
        assert r.stderr.strip().splitlines()[-1] == f"Error: Invalid value for '{option}': 'nan' is not a number"
    else:
        assert r.stderr.strip().splitlines()[-1] == (f"Error: --review-at {review} and --decline-at {decline} must "
                                                     f"satisfy 0 <= review <= decline <= 1")


def test_a_progress_bar_finishes_at_its_total_says_what_comes_next_and_keeps_its_rate(capsys):
    """train's bar reached 100 % and then nothing was said during the fit; closed after it, the bar
    redrew its rate over the fit's time too (2,168 tx/s for a replay of 500,000 tx/s)."""
    from zfraud.cli import Progress

    bar = Progress(total=1000, label="replayed", enabled=True, then="fitting ...")
    bar(400)
    bar(600)  # the total: the line is finished, and what follows is said
    line = capsys.readouterr().err.split("\r")[-1]
    assert line.startswith("[" + "#" * 30 + "] 100.0%  1,000/1,000 tx replayed  "), line
    assert line.endswith(" tx/s\nfitting ...\n"), line
    rate = float(line.split("replayed  ")[1].split(" tx/s")[0].replace(",", ""))
    time.sleep(0.3)  # the fit
    bar.close()  # nothing more: the line was finished at the total
    assert capsys.readouterr().err == ""
    assert rate > 1000 / 0.3, rate  # over the time to the last step, not to close()
