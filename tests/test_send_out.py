"""`zfraud send`'s files: --out holds a finished send's verdicts, and a send that fails first (or
is pointed at its own input) leaves every file as it was."""
import json
import os
import subprocess
import sys

from conftest import run_cli

HEADER = "TRANSACTION_ID,TX_DATETIME,CUSTOMER_ID,TERMINAL_ID,TX_AMOUNT\n"
ROWS = "".join(f"{i},2018-04-01 00:00:{i:02d},{i % 7},{i % 5},{10 + i}.5\n" for i in range(20))
OLD = '{"tx_id": 999, "kept": true}\n'


def test_out_is_replaced_with_every_verdict_once(mesh2, tmp_path):
    data, out = tmp_path / "tx.csv", tmp_path / "verdicts.jsonl"
    data.write_text(HEADER + ROWS)
    out.write_text(OLD * 50)  # longer than what replaces it: nothing of it may be left
    r = run_cli("send", str(data), "--connect", mesh2.endpoint, "--out", str(out), "--json", timeout=60)
    assert r.returncode == 0, r.stderr
    assert sorted(json.loads(line)["tx_id"] for line in out.read_text().splitlines()) == list(range(20))
    assert sorted(os.listdir(tmp_path)) == ["tx.csv", "verdicts.jsonl"]  # no temporary file left


def test_out_that_is_the_input_is_refused_and_the_input_kept(tmp_path):
    data = tmp_path / "tx.csv"
    data.write_text(HEADER + ROWS)
    os.symlink(data, tmp_path / "link.csv")
    for out in (data, tmp_path / "link.csv", tmp_path / "sub" / os.pardir / "tx.csv"):
        (tmp_path / "sub").mkdir(exist_ok=True)
        r = run_cli("send", str(data), "--connect", "tcp://127.0.0.1:9", "--out", str(out), timeout=30)
        assert r.returncode == 2, r.stderr
        assert f"FILE and --out are the same file ({out}): give another" in r.stderr
        assert data.read_text() == HEADER + ROWS
    r = run_cli("send", str(data), "--connect", "tcp://127.0.0.1:9", "--dead-letter", str(data), timeout=30)
    assert r.returncode == 2 and "FILE and --dead-letter are the same file" in r.stderr
    out = tmp_path / "v.jsonl"
    r = run_cli("send", str(data), "--connect", "tcp://127.0.0.1:9", "--out", str(out), "--dead-letter", str(out),
                timeout=30)
    assert r.returncode == 2 and "--out and --dead-letter are the same file" in r.stderr
    assert data.read_text() == HEADER + ROWS


def test_a_send_that_fails_before_its_summary_leaves_out_as_it_was(mesh2, tmp_path):
    """No mesh at the endpoint, or an input without a needed column: the previous verdicts stay."""
    data, out = tmp_path / "tx.csv", tmp_path / "verdicts.jsonl"
    out.write_text(OLD)
    data.write_text(HEADER + ROWS)
    r = run_cli("send", str(data), "--connect", "tcp://127.0.0.1:9", "--out", str(out), timeout=60)
    assert r.returncode == 1 and "no zfraud worker answered" in r.stderr, r.stderr
    assert out.read_text() == OLD
    data.write_text("TRANSACTION_ID,TX_DATETIME,CUSTOMER_ID,TX_AMOUNT\n1,2018-04-01 00:00:01,2,4.5\n")
    r = run_cli("send", str(data), "--connect", mesh2.endpoint, "--out", str(out), timeout=60)
    assert r.returncode == 1 and "no column terminal or TERMINAL_ID" in r.stderr, r.stderr
    assert out.read_text() == OLD
    assert sorted(os.listdir(tmp_path)) == ["tx.csv", "verdicts.jsonl"]


def test_a_missing_input_is_a_usage_error_before_connecting(tmp_path):
    r = run_cli("send", str(tmp_path / "nope.csv"), "--connect", "tcp://127.0.0.1:9", timeout=30)
    assert r.returncode == 2 and "does not exist" in r.stderr, r.stderr
    assert "no zfraud worker answered" not in r.stderr  # it did not wait for the mesh first


def test_an_empty_input_says_nothing_was_sent(mesh2, tmp_path):
    data = tmp_path / "tx.csv"
    for text in ("", HEADER):
        data.write_text(text)
        r = run_cli("send", str(data), "--connect", mesh2.endpoint, "--json", timeout=60)
        assert r.returncode == 0 and json.loads(r.stdout.splitlines()[-1])["sent"] == 0, r.stderr
        assert "the input held no transaction: nothing was sent" in r.stderr


def test_a_host_name_that_does_not_resolve_is_named_as_the_reason():
    r = run_cli("status", "--connect", "tcp://nohost.invalid:5555", timeout=60)
    assert r.returncode == 1 and "the host name nohost.invalid does not resolve" in r.stderr, r.stderr
    assert "is a worker listening there?" not in r.stderr
    r = run_cli("status", "--connect", "tcp://127.0.0.1:9", timeout=60)  # resolves: nobody listens
    assert r.returncode == 1 and "(is a worker listening there?)" in r.stderr, r.stderr


def test_tail_without_a_decision_and_keys_without_a_directory_are_usage_errors():
    r = run_cli("tail", "--connect", "tcp://127.0.0.1:9", "--decision", ",", timeout=30)
    assert r.returncode == 2 and "no decision given in ','" in r.stderr, r.stderr
    r = run_cli("keys", "init", "", timeout=30)
    assert r.returncode == 2 and "empty: give the directory to create the keys in" in r.stderr, r.stderr


def test_gen_refuses_a_negative_seed_as_a_usage_error(tmp_path):
    r = run_cli("gen", str(tmp_path / "x.csv"), "--seed", "-1", "--days", "1", timeout=30)
    assert r.returncode == 2 and "--seed" in r.stderr and "-1 is not in the range x>=0" in r.stderr, r.stderr


def test_bytes_that_are_not_utf8_are_one_reason_whatever_the_byte(mesh2, tmp_path):
    data = tmp_path / "garbage.jsonl"
    data.write_bytes(b"".join(bytes([b]) + b"xyz\n" for b in (0xe9, 0xac, 0xff, 0xac)))
    r = run_cli("send", str(data), "--connect", mesh2.endpoint, timeout=60)
    assert r.returncode == 3, r.stderr
    assert r.stderr.splitlines()[-1].startswith(
        "no row was scored; the most common reason (4 of 4 rows): not UTF-8 text: save the file as UTF-8."), r.stderr


def test_send_from_a_closed_standard_input_is_a_usage_error():
    """`zfraud send - <&-` connected, then ended in AttributeError: 'NoneType' object has no
    attribute 'buffer' (tester's report)."""
    r = subprocess.run([sys.executable, "-m", "zfraud", "send", "-", "--connect", "tcp://127.0.0.1:9"],
                       capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
                       preexec_fn=lambda: os.close(0))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "standard input is closed: give a FILE, or pipe the transactions in" in r.stderr, r.stderr


def test_a_closed_standard_output_is_a_usage_error_and_nothing_is_sent(mesh2):
    """`zfraud send --json >&-` sent everything and exited 0: its summary, the one thing asked of it,
    went nowhere (click.echo writes nothing when sys.stdout is None)."""
    r = subprocess.run([sys.executable, "-m", "zfraud", "send", "--synthetic", "100", "--connect", mesh2.endpoint,
                        "--json"], stderr=subprocess.PIPE, text=True, timeout=60, stdout=subprocess.DEVNULL,
                       preexec_fn=lambda: os.close(1))
    assert r.returncode == 2, r.stderr
    assert r.stderr.splitlines()[-1] == ("Error: standard output is closed, and this command prints its result "
                                         "there: redirect it instead (> FILE, or > /dev/null)"), r.stderr


def test_out_dash_writes_every_verdict_to_stdout_and_the_summary_to_stderr(mesh2, tmp_path):
    """`--out -` wrote a file named "-" in the current directory (37 MB of it, in a tester's /tmp)."""
    data = tmp_path / "tx.csv"
    data.write_text(HEADER + ROWS)
    r = subprocess.run([sys.executable, "-m", "zfraud", "send", str(data), "--connect", mesh2.endpoint, "--out", "-",
                        "--json"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert sorted(json.loads(line)["tx_id"] for line in r.stdout.splitlines()) == list(range(20))
    summary = json.loads(r.stderr.splitlines()[-1])
    assert (summary["sent"], summary["verdicts"], summary["lost"]) == (20, 20, 0)
    assert sorted(os.listdir(tmp_path)) == ["tx.csv"]


def test_a_reader_that_stops_early_ends_the_command_quietly_with_sigpipes_status(mesh2, tmp_path):
    """`zfraud send ... --out - | head -1` (and demo, status, gen): "Error: Broken pipe", status 1."""
    cmd = [sys.executable, "-m", "zfraud", "send", "--synthetic", "200000", "--connect", mesh2.endpoint, "--out", "-"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
    first = p.stdout.readline()
    p.stdout.close()  # the reader goes away with most of the verdicts unread
    _, err = p.communicate(timeout=60)
    assert json.loads(first)["tx_id"] >= 0
    assert p.returncode == 141, err
    assert b"Error" not in err and b"Traceback" not in err, err


def test_a_signal_while_out_dash_waits_on_a_slow_reader_loses_no_verdict(mesh2, tmp_path):
    """SIGTERM (Ctrl-C takes the same handler) while `send --out -` is blocked writing to a reader
    that is slow to read. Standard output is a raw file under PYTHONUNBUFFERED: its write returns
    short when a signal's handler returns, and the rest of that batch's verdicts went nowhere
    (stdout held 1838 lines and a line cut in half, for a summary of 2048 verdicts)."""
    import fcntl
    import signal
    import struct
    import termios
    import time

    data = tmp_path / "tx.csv"
    data.write_text(HEADER + "".join(f"{i},2018-04-01 10:00:00,{i % 100},3,10\n" for i in range(50_000)))
    p = subprocess.Popen([sys.executable, "-m", "zfraud", "send", str(data), "--connect", mesh2.endpoint, "--out", "-",
                          "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        fd = p.stdout.fileno()
        full, end = fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ), time.monotonic() + 60
        while time.monotonic() < end and p.poll() is None:  # a full pipe: send is blocked writing verdicts
            if struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0" * 4))[0] >= full:
                break
            time.sleep(0.05)
        time.sleep(0.2)
        p.send_signal(signal.SIGTERM)
        time.sleep(0.5)  # still not read: a reader that made room at once would let the write go on
        out, err = p.communicate(timeout=120)
    finally:
        p.kill()
    assert p.returncode == 143, err
    summary = json.loads(err.splitlines()[-1])
    ids, broken = [], []
    for line in out.splitlines():
        try:
            ids.append(json.loads(line)["tx_id"])
        except ValueError:
            broken.append(line)
    assert broken == [], broken[0][:200]
    assert 0 < summary["verdicts"] < 50_000 and summary["lost"] == 0, summary
    assert len(ids) == len(set(ids)) == summary["verdicts"], (len(ids), summary)
