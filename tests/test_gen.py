"""Tests for zfraud.gen, the Handbook's transaction simulator (handbook.md section 1)."""
import io
import os
import stat
import threading
from math import erf, sqrt

import numpy as np
import pytest

from zfraud import gen
from zfraud.gen import COLUMNS, HEADER, compromise_schedule, generate, profiles, write_csv

SMALL = dict(customers=500, terminals=1000, days=60)
P_IN_DAY = erf(43200 / 20000 / sqrt(2))   # P(0 < t < 86400) for t ~ N(43200, 20000): 0.9692


@pytest.fixture(scope="module")
def small():
    return generate(**SMALL, seed=7)


@pytest.fixture(scope="module")
def default_scale():
    return generate(seed=0)


def _csv_bytes(cols):
    b = io.BytesIO()
    write_csv(cols, b)
    return b.getvalue()


# ---------------------------------------------------------------------------- schema

def test_csv_header_and_column_order(small):
    assert HEADER == ("TRANSACTION_ID,TX_DATETIME,CUSTOMER_ID,TERMINAL_ID,TX_AMOUNT,"
                      "TX_TIME_SECONDS,TX_TIME_DAYS,TX_FRAUD,TX_FRAUD_SCENARIO")
    lines = _csv_bytes(small).decode().split("\n")
    assert lines[0] == HEADER
    assert lines[-1] == ""                        # file ends with a newline
    assert len(lines) == len(small["TRANSACTION_ID"]) + 2
    assert all(line.count(",") == 8 for line in lines[1:-1])
    assert tuple(small) == COLUMNS


def test_dtypes(small):
    expected = {"TRANSACTION_ID": np.int64, "TX_DATETIME": np.dtype("M8[s]"),
                "CUSTOMER_ID": np.int64, "TERMINAL_ID": np.int64, "TX_AMOUNT": np.float64,
                "TX_TIME_SECONDS": np.int64, "TX_TIME_DAYS": np.int64, "TX_FRAUD": np.int8,
                "TX_FRAUD_SCENARIO": np.int8}
    for name, dt in expected.items():
        assert small[name].dtype == dt, name
    n = len(small["TRANSACTION_ID"])
    assert all(len(v) == n for v in small.values())
    np.testing.assert_array_equal(small["TX_AMOUNT"], np.round(small["TX_AMOUNT"], 2))


def test_csv_rows_match_python_formatting(small):
    lines = _csv_bytes(small).decode().split("\n")[1:-1]
    c = small
    for i in list(range(50)) + list(range(len(lines) - 50, len(lines))) + \
            list(np.nonzero(c["TX_FRAUD_SCENARIO"] == 3)[0][:50]):
        expect = ",".join([
            str(c["TRANSACTION_ID"][i]), str(c["TX_DATETIME"][i]).replace("T", " "),
            str(c["CUSTOMER_ID"][i]), str(c["TERMINAL_ID"][i]), "%.2f" % c["TX_AMOUNT"][i],
            str(c["TX_TIME_SECONDS"][i]), str(c["TX_TIME_DAYS"][i]), str(c["TX_FRAUD"][i]),
            str(c["TX_FRAUD_SCENARIO"][i])])
        assert lines[i] == expect


def test_csv_edge_values_and_text_file():
    cols = {
        "TRANSACTION_ID": np.array([0, 9, 10, 10**12], np.int64),
        "TX_DATETIME": np.array(["2018-04-01T00:00:00", "2020-02-29T23:59:59",
                                 "1999-12-31T09:05:07", "2018-09-30T12:00:00"], "M8[s]"),
        "CUSTOMER_ID": np.array([0, 4999, 7, 123456], np.int64),
        "TERMINAL_ID": np.array([9999, 0, 100, 5], np.int64),
        "TX_AMOUNT": np.array([0.0, 5.0, -0.5, 1234.567]),
        "TX_TIME_SECONDS": np.array([0, 86399, -3, 15_811_100], np.int64),
        "TX_TIME_DAYS": np.array([0, 182, -1, 182], np.int64),
        "TX_FRAUD": np.array([0, 1, 0, 1], np.int8),
        "TX_FRAUD_SCENARIO": np.array([0, 2, 0, 3], np.int8),
    }
    expect = HEADER + "\n" + (
        "0,2018-04-01 00:00:00,0,9999,0.00,0,0,0,0\n"
        "9,2020-02-29 23:59:59,4999,0,5.00,86399,182,1,2\n"
        "10,1999-12-31 09:05:07,7,100,-0.50,-3,-1,0,0\n"
        "1000000000000,2018-09-30 12:00:00,123456,5,1234.57,15811100,182,1,3\n")
    assert _csv_bytes(cols).decode() == expect
    s = io.StringIO()
    assert write_csv(cols, s) == 4
    assert s.getvalue() == expect


def test_csv_chunking_path_and_progress(small, tmp_path, monkeypatch):
    whole = _csv_bytes(small)
    monkeypatch.setattr(gen, "_CSV_CHUNK", 997)
    calls = []
    path = tmp_path / "tx.csv"
    n = write_csv(small, str(path), progress=lambda d, t: calls.append((d, t)))
    assert n == len(small["TRANSACTION_ID"])
    assert path.read_bytes() == whole
    assert calls[-1] == (n, n)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    assert len(calls) == -(-n // 997)


@pytest.mark.parametrize("existing", [b"old contents\n", None])
def test_a_csv_path_is_written_whole_or_left_as_it_was(small, tmp_path, monkeypatch, existing):
    """Interrupted after its first chunk (Ctrl-C), write_csv leaves the file as it was, or
    absent, and no temporary file; done, it holds the CSV, with the mode a plain open gives
    (the file's own, or the umask's)."""
    monkeypatch.setattr(gen, "_CSV_CHUNK", 997)
    path = tmp_path / "tx.csv"
    if existing is not None:
        path.write_bytes(existing)

    def interrupt(done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_csv(small, path, progress=interrupt)
    assert [f.name for f in tmp_path.iterdir()] == (["tx.csv"] if existing else [])
    assert existing is None or path.read_bytes() == existing
    if existing is not None:
        path.chmod(0o640)
    write_csv(small, path)
    assert [f.name for f in tmp_path.iterdir()] == ["tx.csv"] and path.read_bytes() == _csv_bytes(small)
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == (0o640 if existing else 0o666 & ~umask)


def test_a_csv_path_that_is_a_pipe_or_a_link_stays_one(small, tmp_path):
    fifo, link, real = tmp_path / "fifo", tmp_path / "link.csv", tmp_path / "real.csv"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    write_csv(small, fifo)
    reader.join(10)
    assert got == [_csv_bytes(small)] and stat.S_ISFIFO(fifo.stat().st_mode)
    real.write_bytes(b"old")
    link.symlink_to(real.name)
    write_csv(small, link)
    assert link.is_symlink() and real.read_bytes() == _csv_bytes(small)
    assert sorted(f.name for f in tmp_path.iterdir()) == ["fifo", "link.csv", "real.csv"]


# ---------------------------------------------------------------------------- determinism

def test_a_write_killed_mid_way_leaves_a_file_the_next_write_removes(tmp_path):
    """`zfraud gen OUT` killed with SIGKILL (no handler runs) left .OUT.PID.RANDOM.tmp, and no
    later run removed it: each killed run's partial CSV stayed, hidden. The next write of OUT
    removes those of writers that are gone; one whose writer lives, and any other file, stay."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "tx.csv"
    p = subprocess.Popen([sys.executable, "-m", "zfraud", "gen", str(out), "--seed", "1"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    end = time.monotonic() + 60
    while time.monotonic() < end and not any(f.stat().st_size > 0 for f in tmp_path.glob(".tx.csv.*.tmp")):
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait(10)
    left = [f.name for f in tmp_path.glob(".tx.csv.*.tmp")]
    assert len(left) == 1 and left[0].startswith(f".tx.csv.{p.pid}."), left
    live, other = f".tx.csv.{os.getpid()}.abcd1234.tmp", ".tx.csv.notes.tmp"
    (tmp_path / live).write_text("a write running now")
    (tmp_path / other).write_text("someone else's")
    r = subprocess.run([sys.executable, "-m", "zfraud", "gen", str(out), "--customers", "20", "--terminals", "40",
                        "--days", "3"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert sorted(f.name for f in tmp_path.iterdir()) == sorted([live, other, "tx.csv"])
    assert out.read_text().startswith(",".join(COLUMNS))


def test_deterministic_for_a_seed(small):
    again = generate(**SMALL, seed=7)
    for name in COLUMNS:
        np.testing.assert_array_equal(small[name], again[name])


def test_different_seeds_differ(small):
    other = generate(**SMALL, seed=8)
    assert len(other["TRANSACTION_ID"]) != len(small["TRANSACTION_ID"]) or \
        not np.array_equal(other["TX_AMOUNT"], small["TX_AMOUNT"])
    m = min(len(other["TX_AMOUNT"]), len(small["TX_AMOUNT"]))
    assert np.mean(other["TX_AMOUNT"][:m] == small["TX_AMOUNT"][:m]) < 0.01
    assert np.mean(other["CUSTOMER_ID"][:m] == small["CUSTOMER_ID"][:m]) < 0.05


def test_start_only_shifts_datetime(small):
    shifted = generate(**SMALL, seed=7, start="2019-01-01")
    for name in COLUMNS:
        if name != "TX_DATETIME":
            np.testing.assert_array_equal(small[name], shifted[name])
    np.testing.assert_array_equal(
        shifted["TX_DATETIME"] - small["TX_DATETIME"],
        np.datetime64("2019-01-01", "s") - np.datetime64("2018-04-01", "s"))


def test_schedule_prefix_and_distinct():
    t10, c10 = compromise_schedule(500, 1000, 10, seed=3)
    t40, c40 = compromise_schedule(500, 1000, 40, seed=3)
    assert t10.shape == (10, 2) and c10.shape == (10, 3)
    np.testing.assert_array_equal(t40[:10], t10)
    np.testing.assert_array_equal(c40[:10], c10)
    assert all(len(set(row)) == 2 for row in t40)
    assert all(len(set(row)) == 3 for row in c40)
    assert t40.min() >= 0 and t40.max() < 1000 and c40.min() >= 0 and c40.max() < 500


def test_progress_reports(small):
    calls = []
    generate(**SMALL, seed=7, progress=lambda d, t: calls.append((d, t)))
    done = [d for d, _ in calls]
    total = calls[-1][1]
    assert calls[-1] == (total, total)
    assert done == sorted(done)
    assert len(calls) > 5


# ---------------------------------------------------------------------------- book's rules

def test_time_columns(small):
    c = small
    n = len(c["TRANSACTION_ID"])
    np.testing.assert_array_equal(c["TRANSACTION_ID"], np.arange(n))
    s = c["TX_TIME_SECONDS"]
    assert np.all(np.diff(s) >= 0)                                   # sorted by time
    np.testing.assert_array_equal(c["TX_TIME_DAYS"], s // 86400)
    sod = s % 86400
    assert sod.min() > 0                                             # 0 < t < 86400, strictly
    assert c["TX_TIME_DAYS"].min() == 0 and c["TX_TIME_DAYS"].max() == SMALL["days"] - 1
    np.testing.assert_array_equal(
        c["TX_DATETIME"], np.datetime64("2018-04-01T00:00:00") + s.astype("m8[s]"))


def test_terminals_within_radius(small):
    p = profiles(SMALL["customers"], SMALL["terminals"], seed=7)
    cu, te = small["CUSTOMER_ID"], small["TERMINAL_ID"]
    d = np.hypot(p["x"][cu] - p["terminal_x"][te], p["y"][cu] - p["terminal_y"][te])
    assert d.max() < 5
    # the CSR lists are exactly the terminals at distance < r
    for c in range(0, SMALL["customers"], 37):
        dd = np.hypot(p["x"][c] - p["terminal_x"], p["y"][c] - p["terminal_y"])
        lo, hi = p["available_indptr"][c], p["available_indptr"][c + 1]
        np.testing.assert_array_equal(p["available_indices"][lo:hi], np.nonzero(dd < 5)[0])


def test_fraud_labels_follow_the_rules(small):
    c = small
    amount, scen, fraud = c["TX_AMOUNT"], c["TX_FRAUD_SCENARIO"], c["TX_FRAUD"]
    term, cust, day = c["TERMINAL_ID"], c["CUSTOMER_ID"], c["TX_TIME_DAYS"]
    np.testing.assert_array_equal(fraud, (scen > 0).astype(np.int8))
    assert set(np.unique(scen)) == {0, 1, 2, 3}

    # scenario 1: amount > 220; nothing above 220 stays genuine
    assert np.all(amount[scen == 1] > 220)
    assert np.all(amount[scen == 0] <= 220)

    n_draw = int(day.max())                       # the book's range(max TX_TIME_DAYS)
    comp_t, comp_c = compromise_schedule(SMALL["customers"], SMALL["terminals"], n_draw, seed=7)

    # scenario 2: exactly the transactions on a terminal drawn on a day in [day - 27, day]
    hit2 = np.zeros(len(day), bool)
    for d in range(n_draw):
        hit2 |= np.isin(term, comp_t[d]) & (day >= d) & (day < d + 28)
    assert np.all(hit2[scen == 2])
    assert np.all(np.isin(scen[hit2], [2, 3]))    # only scenario 3 may overwrite scenario 2
    assert hit2.sum() > 0

    # scenario 3: only on customers drawn on a day in [day - 13, day]; amount is 5x (cents % 5)
    exposed = np.zeros(len(day), bool)
    pools = []
    for d in range(n_draw):
        in_pool = np.isin(cust, comp_c[d]) & (day >= d) & (day < d + 14)
        exposed |= in_pool
        pools.append(int(in_pool.sum()))
    s3 = scen == 3
    assert np.all(exposed[s3])
    cents = np.rint(amount[s3] * 100).astype(np.int64)
    assert np.all(cents % 5 == 0)
    # floor(n/3) sampled per day; overlaps between days can only reduce the distinct count
    assert max(p // 3 for p in pools) <= s3.sum() <= sum(p // 3 for p in pools)
    # about a third of exposed transactions (more through overlapping draws)
    assert 0.25 < s3.sum() / exposed.sum() < 0.5


def test_scenario3_scales_amounts(small):
    # the x5 amounts of scenario 3 make them ~5x the customers' usual amounts
    c = small
    cust, amount, scen = c["CUSTOMER_ID"], c["TX_AMOUNT"], c["TX_FRAUD_SCENARIO"]
    s3 = np.nonzero(scen == 3)[0]
    genuine = scen == 0
    sums = np.bincount(cust[genuine], amount[genuine], minlength=SMALL["customers"])
    cnts = np.bincount(cust[genuine], minlength=SMALL["customers"])
    base = sums[cust[s3]] / np.maximum(cnts[cust[s3]], 1)
    ratio = amount[s3].sum() / base.sum()
    assert 4.5 < ratio < 6.0


# ---------------------------------------------------------------------------- statistics

def test_transactions_per_customer_per_day(small):
    n = len(small["TRANSACTION_ID"])
    per_cust_day = n / SMALL["customers"] / SMALL["days"]
    # against this seed's own profiles: sum(mean_nb_tx_per_day) * P(0 < t < 86400) per day
    p = profiles(SMALL["customers"], SMALL["terminals"], seed=7)
    has = p["nb_terminals"] > 0
    expected = p["mean_nb_tx_per_day"][has].sum() * P_IN_DAY * SMALL["days"]
    assert abs(n - expected) / expected < 0.02
    # against the book: 1,754,155 / 5000 / 183 = 1.917 (sampling spread of 500 profiles ~3 %)
    assert abs(per_cust_day - 1.917) / 1.917 < 0.1


def test_amount_and_time_distributions(small):
    c = small
    scen = c["TX_FRAUD_SCENARIO"]
    amount = c["TX_AMOUNT"][scen != 3]
    assert amount.min() >= 0
    assert amount.max() < 400                     # mean <= 100, sd <= 50: 220 is > 2.4 sd
    # E[amount] per customer: m*(Phi(2) + 0.5*phi(2)) + m*(1 - Phi(2)) = 1.0271 m
    p = profiles(SMALL["customers"], SMALL["terminals"], seed=7)
    cu = c["CUSTOMER_ID"][scen != 3]
    expected = 1.0271 * p["mean_amount"][cu].mean()
    assert abs(amount.mean() - expected) / expected < 0.02
    sod = c["TX_TIME_SECONDS"] % 86400
    assert abs(sod.mean() - 43200) < 400
    assert 18000 < sod.std() < 20000              # truncated N(43200, 20000)


def test_default_scale_matches_book(default_scale, tmp_path):
    c = default_scale
    n = len(c["TRANSACTION_ID"])
    assert abs(n - 1_754_155) / 1_754_155 < 0.03
    rate = c["TX_FRAUD"].mean()
    assert abs(rate - 0.0084) < 0.0015
    counts = np.bincount(c["TX_FRAUD_SCENARIO"], minlength=4)
    book = {1: 973, 2: 9077, 3: 4631}
    assert abs(counts[1] - book[1]) / book[1] < 0.3
    assert abs(counts[2] - book[2]) / book[2] < 0.2
    assert abs(counts[3] - book[3]) / book[3] < 0.15
    assert len(np.unique(c["TX_TIME_DAYS"])) == 183
    assert len(np.unique(c["TERMINAL_ID"])) == 10000
    assert len(np.unique(c["CUSTOMER_ID"])) >= 4950        # the book: 4,990
    per_day = np.bincount(c["TX_TIME_DAYS"])
    assert abs(per_day.mean() - 9585.5) / 9585.5 < 0.03
    assert c["TX_DATETIME"][-1] < np.datetime64("2018-10-01")
    path = tmp_path / "default.csv"
    assert write_csv(c, path) == n
    with open(path, "rb") as f:
        assert sum(1 for _ in f) == n + 1


def test_gen_to_a_reader_that_stops_early_ends_quietly_with_sigpipes_status():
    """README: a command whose reader stops early (`zfraud gen - | head`) ends quietly as SIGPIPE
    would, status 141. gen exited 0 with its success line: under PYTHONUNBUFFERED its raw standard
    output's write returned short when the reader went, and the rest was never tried (no EPIPE)."""
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-m", "zfraud", "gen", "-", "--days", "20", "--customers", "500",
                          "--terminals", "1000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env={**os.environ, "PYTHONUNBUFFERED": "1"})
    head = [p.stdout.readline() for _ in range(2)]
    p.stdout.close()
    try:
        _, err = p.communicate(timeout=120)
    finally:
        p.kill()
    assert head[0].decode().rstrip("\n") == HEADER and head[1].count(b",") == len(COLUMNS) - 1
    assert (p.returncode, err) == (141, b"")
