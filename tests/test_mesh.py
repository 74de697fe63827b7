"""The mesh with real worker processes on loopback, driven through the Python API and the CLI."""
import contextlib
import errno
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
import threading
import time

import numpy as np
import pytest
import zmq

from zfraud import Client, load_model
from zfraud import protocol as P
from zfraud.client import MeshError
from zfraud.local import LocalMesh, free_port
from zfraud.scoring import Scorer
from zfraud.synthetic import synthetic

from conftest import finish, request, run_cli, start_send


def status(mesh, name):
    with Client(mesh.endpoint) as c:
        return c.control(name, "status")["status"]


def test_workers_find_each_other(mesh2):
    assert mesh2.members_of("w1") == ["w1", "w2"]
    assert mesh2.members_of("w2") == ["w1", "w2"]


def test_score_returns_verdicts_in_input_order_equal_to_in_process_scoring(mesh2):
    b = next(synthetic(5000, batch=5000, seed=11))
    order = np.random.default_rng(0).permutation(5000)
    b = {k: v[order] for k, v in b.items()}
    with Client(mesh2.endpoint) as c:
        assert c.members == ["w1", "w2"]
        v = c.score(b)
    scorer = Scorer(load_model())
    expected, _ = scorer.score(b)
    np.testing.assert_array_equal(v["tx_id"], b["tx_id"])
    for col in ("score", "decision"):
        np.testing.assert_array_equal(v[col], expected[col])
    # the reason as the text the index names in the scorer's table (-1, none: None)
    np.testing.assert_array_equal(v["reason"], np.array([*scorer.reasons, None], dtype=object)[expected["reason"]])
    assert (v["decision"] == P.DECLINE).sum() > 0


def test_score_returns_each_rows_reason_as_text_whatever_the_model(mesh2, tmp_path):
    """score() returned `reason` as a bare index into the RESULT's `reasons` table, which it
    dropped: the caller could not tell what [7, 28, 29, 7] meant, and the same index means another
    thing under another model (PROTOCOL §5.4: a receiver MUST resolve it through that table): a
    NaN amount is reason 5 under the default model, 28 under a zfraud-v6 one."""
    from zfraud.features import FEATURE_SETS
    from zfraud.model import LogisticModel, save_model

    b = next(synthetic(6, batch=6, seed=4))
    b["amount"] = b["amount"].astype(float)
    b["amount"][[1, 2]] = [np.nan, -5.0]
    v6 = FEATURE_SETS["zfraud-v6"]
    save_model(LogisticModel(v6, np.linspace(0.1, 1, len(v6)), np.zeros(len(v6)), -3.0, version="v6-1",
                             feature_set="zfraud-v6"), tmp_path / "v6.json")
    with LocalMesh(1, extra_args=["--model", str(tmp_path / "v6.json"), "--cards", "1024", "--terminals", "1024"],
                   log_dir=str(tmp_path)) as mesh:
        for endpoint, features in ((mesh2.endpoint, load_model().features), (mesh.endpoint, v6)):
            with Client(endpoint) as c:
                v = c.score(b)
            assert v["reason"].dtype == object
            assert v["reason"][[1, 2]].tolist() == ["error: amount is NaN or infinite", "error: amount is negative"]
            scored = v["reason"][[0, 3, 4, 5]].tolist()
            assert all(r is None or r in features for r in scored) and set(scored) != {None}, scored


def test_wait_returns_when_a_reply_arrives_or_after_the_timeout(mesh2):
    with Client(mesh2.endpoint) as c:
        for _ in range(20):  # connection events and MEMBERS replies (every worker's, each second) may come first
            c.poll(20)
            t0 = time.perf_counter()
            if not c.wait(0.003):  # nothing in flight: the whole timeout, not a whole millisecond more
                break
        else:
            pytest.fail("a reply came within 3 ms in each of 20 tries")
        assert 0.003 <= time.perf_counter() - t0 < 0.1
        c.submit(next(synthetic(50, batch=50, seed=5)))
        t0 = time.perf_counter()
        while c.pending and time.perf_counter() - t0 < 5:
            if c.wait(10.0):  # wakes for each reply, long before 10 s
                c.poll(0)
        assert not c.pending and time.perf_counter() - t0 < 5


def test_open_loop_stream_answers_everything_and_times_each_transaction(mesh2):
    b = next(synthetic(3000, batch=3000, seed=12))
    with Client(mesh2.endpoint) as c:
        s = c.stream(iter([{k: v[:1000] for k, v in b.items()}, {k: v[1000:] for k, v in b.items()}]),
                     rate=10_000)
    assert s.sent == s.verdicts == 3000 and s.lost == 0 and sum(s.decisions.values()) == 3000
    assert 0 < s.p50_ms <= s.p99_ms <= s.p999_ms and s.elapsed_s >= 0.29


def test_uptime_and_snapshot_age_do_not_follow_a_wall_clock_step(ctx, monkeypatch):
    """After the wall clock stepped back 2 days, `status` said `uptime -172788s` (time.time() - start)."""
    import zfraud.worker as W

    w = W.Worker("w1", "tcp://127.0.0.1:*", "tcp://127.0.0.1:*", context=ctx)
    w.saved_at = w.started  # as a snapshot taken now sets it
    wall = time.time
    monkeypatch.setattr(W.time, "time", lambda: wall() - 2 * 86_400)
    s = w.status()
    monkeypatch.undo()
    assert 0 <= s["uptime_s"] < 60 and 0 <= s["state"]["snapshot_age_s"] < 60, s


def test_a_run_of_queued_batches_is_scored_in_one_pass_with_a_result_each(ctx):
    from zfraud.sockets import configure
    from zfraud.worker import Worker

    w = Worker("w1", "tcp://127.0.0.1:*", "tcp://127.0.0.1:*", context=ctx)
    dealer = configure(ctx.socket(zmq.DEALER))
    try:
        dealer.connect(w.endpoints[0])
        b = next(synthetic(30, batch=30, seed=21))
        parts = [{k: v[i:i + 10] for k, v in b.items()} for i in (0, 10, 20)]
        msgs = [P.batch_message(0, 0, parts[0]), P.batch_message(1, 0, parts[1]),
                P.batch_message(9, 0, parts[2])[:-1],  # a column short: ERROR, the others go on
                P.batch_message(2, 0, parts[2]), P.encode(P.HELLO, {"role": "client"})]
        for m in msgs:
            dealer.send_multipart(m)
        assert w.router.poll(5000)
        time.sleep(0.2)  # all five queued
        assert w._read_requests() == 5
        replies = []
        while len(replies) < 5 and dealer.poll(5000):
            replies.append(P.parse(dealer.recv_multipart()))
        by_command = {}
        for r in replies:
            by_command.setdefault(r.command, []).append(r)
        assert [e.header["batch"] for e in by_command[P.ERROR]] == [9] and len(by_command[P.MEMBERS]) == 1
        results = sorted(by_command[P.RESULT], key=lambda r: r.header["batch"])
        assert [r.header["rows"] for r in results] == [10, 10, 10]
        # one scoring pass, whose time each of the three batches counts (docs: time to score one batch)
        assert w.stats["batches"] == 3 and len(w._batch_ms) == 3 and len(set(w._batch_ms)) == 1
        expected, _ = Scorer(load_model()).score(b)
        for k, r in enumerate(results):
            got = P.read_columns(r.frames, 10, P.VERDICT_COLUMNS)
            for name, _ in P.VERDICT_COLUMNS:
                np.testing.assert_array_equal(got[name], expected[name][k * 10:(k + 1) * 10])
    finally:
        dealer.close(0)
        w._close()


def test_cli_send_synthetic_is_fully_answered_by_both_workers(mesh2):
    before = {n: status(mesh2, n)["rows"] for n in mesh2.names}
    r = run_cli("send", "--connect", mesh2.endpoint, "--synthetic", "30000", "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout.strip().splitlines()[-1])
    assert (s["sent"], s["verdicts"], s["lost"], s["errors"]) == (30000, 30000, 0, 0)
    assert sum(s["decisions"].values()) == 30000
    assert s["tx_per_s"] > 0 and 0 < s["p50_ms"] <= s["p99_ms"]
    done = {n: status(mesh2, n)["rows"] - before[n] for n in mesh2.names}
    assert sum(done.values()) == 30000
    assert all(rows > 5000 for rows in done.values()), done  # both owners got their share


def test_the_same_card_always_goes_to_the_same_worker(mesh2):
    b = next(synthetic(3000, batch=3000, seed=5))
    seen = {}
    with Client(mesh2.endpoint) as c:
        c.on_result = lambda v, h: seen.setdefault(h["worker"], set()).update(b["card"][h["origin"]].tolist())
        c.submit(b)
        assert c.drain(10)
        c.submit(b)
        assert c.drain(10)
    assert set(seen) == {"w1", "w2"} and not (seen["w1"] & seen["w2"])


@pytest.mark.parametrize("frames, code, message", [
    ([b"ZF2", P.BATCH, P.pack({})], P.BAD_VERSION, "unsupported protocol version"),
    ([P.VERSION, b"BOGUS", P.pack({})], P.BAD_COMMAND, "unknown command"),
    ([P.VERSION], P.BAD_FRAMES, "at least 3 frames"),
    ([P.VERSION, P.BATCH, b"\xc1"], P.BAD_HEADER, "not valid msgpack"),
    ([P.VERSION, P.RESULT, P.pack({})], P.BAD_COMMAND, "does not accept RESULT"),
    ([P.VERSION, P.CONTROL, P.pack({"op": "explode"})], P.BAD_CONTROL, "unknown control op"),
])
def test_malformed_messages_get_an_error_and_the_worker_keeps_serving(mesh2, ctx, frames, code, message):
    reply = request(ctx, mesh2.endpoint, frames)
    assert reply.command == P.ERROR and reply.header["code"] == code
    assert message in reply.header["message"]
    with Client(mesh2.endpoint) as c:
        assert len(c.score(next(synthetic(100, batch=100)))["tx_id"]) == 100


def test_wrong_frame_count_and_short_column_name_the_batch(mesh2, ctx):
    frames = [bytes(f) for f in P.batch_message(42, 0, next(synthetic(10, batch=10)))]
    reply = request(ctx, mesh2.endpoint, frames[:-1])
    assert (reply.header["code"], reply.header["batch"]) == (P.BAD_FRAMES, 42)
    frames[4] = frames[4][:-3]
    reply = request(ctx, mesh2.endpoint, frames)
    assert reply.header["code"] == P.BAD_COLUMN and "column 'card' has 77 bytes" in reply.header["message"]
    frames = [bytes(f) for f in P.batch_message(43, 0, next(synthetic(10, batch=10)))]
    reply = request(ctx, mesh2.endpoint, frames)
    assert reply.command == P.RESULT and reply.header["batch"] == 43 and reply.header["rows"] == 10


def test_bad_rows_are_rejected_and_their_neighbours_scored(mesh2):
    b = next(synthetic(200, batch=200, seed=2))
    b["amount"][[5, 6]] = [np.nan, -1]
    with Client(mesh2.endpoint) as c:
        v = c.score(b)
    assert v["decision"][[5, 6]].tolist() == [P.REJECTED, P.REJECTED]
    assert (v["decision"][np.r_[0:5, 7:200]] != P.REJECTED).all()


def start_tail(connect, *args):
    """`zfraud tail --connect CONNECT --timeout 30 ARGS...` in a process of its own, output piped."""
    return subprocess.Popen([sys.executable, "-m", "zfraud", "tail", "--connect", connect, "--timeout", "30", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_tail_follows_verdicts_of_every_worker(mesh2):
    tail = start_tail(mesh2.endpoint, "--count", "5000")
    try:
        time.sleep(1.5)  # let the subscriptions reach both workers (PUB/SUB slow joiner)
        r = run_cli("send", "--connect", mesh2.endpoint, "--synthetic", "5000", "--json")
        assert r.returncode == 0, r.stderr
        out, err = tail.communicate(timeout=60)
    finally:
        tail.kill()
    assert tail.returncode == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert sorted(r["tx_id"] for r in rows) == list(range(5000))  # every verdict, once
    assert {r["worker"] for r in rows} == {"w1", "w2"}
    assert all(r["decision"] in P.DECISIONS and r["model"] == "default-2" for r in rows)


def test_tail_into_a_reader_that_stops_exits_quietly_with_status_0(mesh2):
    """`zfraud tail | head -3`: the reader had what it wanted; tail said "Error: Broken pipe", status 1."""
    tail = subprocess.Popen(f"{sys.executable} -m zfraud tail --connect {mesh2.endpoint} --timeout 30 | head -3; "
                            "exit ${PIPESTATUS[0]}", shell=True, executable="/bin/bash",
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.5)  # let the subscriptions reach both workers (PUB/SUB slow joiner)
        for _ in range(3):  # the verdicts after head exited (each send is seconds apart at most) meet the closed pipe
            assert run_cli("send", "--connect", mesh2.endpoint, "--synthetic", "3000").returncode == 0
            if tail.poll() is not None:
                break
        out, err = tail.communicate(timeout=60)
    finally:
        tail.kill()
    assert len(out.splitlines()) == 3 and all(json.loads(line)["worker"] for line in out.splitlines())
    assert (tail.returncode, err) == (0, "")


def test_tail_filters_by_decision(mesh2):
    tail = start_tail(mesh2.endpoint, "--count", "20", "--decision", "decline", "--format", "text")
    try:
        time.sleep(1.5)
        assert run_cli("send", "--connect", mesh2.endpoint, "--synthetic", "20000").returncode == 0
        out, err = tail.communicate(timeout=60)
    finally:
        tail.kill()
    lines = out.splitlines()
    assert tail.returncode == 0 and len(lines) == 20, err
    assert all(line.split()[1] == "decline" for line in lines)


@pytest.mark.parametrize("args, message", [
    (["--count", "100"], "interrupted after 10 of 100 verdicts"),
    (["--count", "100", "--timeout", "60"], "interrupted after 10 of 100 verdicts"),
    ([], ""),
])
def test_tail_stops_on_sigint_with_status_0_and_says_how_many_of_count_came(mesh2, args, message):
    tail = subprocess.Popen([sys.executable, "-m", "zfraud", "tail", "--connect", mesh2.endpoint, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.5)
        with Client(mesh2.endpoint) as c:
            c.score(next(synthetic(10, batch=10, seed=8, first_id=8_000_000)))
        lines = [tail.stdout.readline() for _ in range(10)]  # it follows: SIGINT lands in its loop
        tail.send_signal(signal.SIGINT)
        out, err = tail.communicate(timeout=30)
    finally:
        tail.kill()
    assert sorted(json.loads(line)["tx_id"] for line in lines) == list(range(8_000_000, 8_000_010)), err
    assert (tail.returncode, out, err.strip()) == (0, "", message)


def test_tail_outlives_the_worker_it_was_pointed_at(tmp_path):
    """tail --connect w1; w1 leaves, then w3 joins through w2: tail learns of w3 from w2 and
    follows its verdicts too. It stops asking w1 once w1 says it is leaving, so w1 drains in
    its quiet time (1.5 s) instead of the 10 s maximum."""
    with LocalMesh(2, log_dir=str(tmp_path)) as mesh:
        tail = start_tail(mesh.routers["w1"], "--count", "3000")
        try:
            time.sleep(1.5)
            t0 = time.monotonic()
            assert mesh.stop_worker("w1") == 0
            assert time.monotonic() - t0 < 6
            mesh.start_worker("w3", seed=mesh.routers["w2"])
            mesh.wait_members(["w2", "w3"])
            time.sleep(2.5)  # a member-list refresh or two, and the subscription to w3
            r = run_cli("send", "--connect", mesh.routers["w2"], "--synthetic", "3000", "--json")
            assert r.returncode == 0, r.stderr
            out, err = tail.communicate(timeout=60)
        finally:
            tail.kill()
    assert tail.returncode == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert sorted(r["tx_id"] for r in rows) == list(range(3000))
    assert {r["worker"] for r in rows} == {"w2", "w3"}


def test_verdicts_reach_a_subscriber_that_arrives_after_an_unfollowed_stretch(mesh2, ctx):
    """Workers publish verdicts only while someone subscribes (XPUB tells them): a subscriber
    that comes after traffic nobody followed, or after another subscriber left, still gets them."""
    def follow(prefix, ids):
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, prefix)
        for pub in mesh2.pubs.values():
            sub.connect(pub)
        got, deadline = set(), time.monotonic() + 20
        with Client(mesh2.endpoint) as c:
            while not ids <= got and time.monotonic() < deadline:  # resend until subscribed
                c.score(next(synthetic(len(ids), batch=len(ids), seed=5, first_id=min(ids))))
                while sub.poll(200):
                    frames = sub.recv_multipart()  # topic, version, header, tx_id, ...
                    got |= set(np.frombuffer(frames[3], np.uint64).tolist())
        sub.close(linger=0)
        return got

    with Client(mesh2.endpoint) as c:
        c.score(next(synthetic(500, batch=500, seed=5, first_id=7_000_000)))  # nobody follows these
    first = set(range(7_100_000, 7_100_200))
    assert first <= follow(b"verdict.", first)
    second = set(range(7_200_000, 7_200_200))
    assert second <= follow(b"verdict", second)                    # after the first one left


def test_send_reads_a_handbook_csv_and_reports_a_bad_line(mesh2, tmp_path):
    path = tmp_path / "tx.csv"
    rows = ["TRANSACTION_ID,TX_DATETIME,CUSTOMER_ID,TERMINAL_ID,TX_AMOUNT,TX_TIME_SECONDS,TX_TIME_DAYS,TX_FRAUD,TX_FRAUD_SCENARIO"]
    rows += [f"{i},2018-04-0{1 + i % 7} 1{i % 10}:00:00,{i % 97},{i % 13},{10 + i % 300}.5,0,0,0,0" for i in range(3000)]
    rows[1500] = "1499,2018-04-01 10:00:00,7,7,not-a-number,0,0,0,0"
    path.write_text("\n".join(rows) + "\n")
    out = tmp_path / "verdicts.jsonl"
    r = run_cli("send", str(path), "--connect", mesh2.endpoint, "--json", "--out", str(out))
    assert r.returncode == 3, r.stderr  # all answered, one rejected
    s = json.loads(r.stdout.strip().splitlines()[-1])
    assert (s["sent"], s["verdicts"], s["errors"], s["lost"]) == (3000, 2999, 1, 0)
    assert "input line 1501" in r.stderr
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(written) == 2999 and len({w["tx_id"] for w in written}) == 2999


def test_send_answers_a_tx_id_the_input_repeats_each_time_and_counts_the_repeats(mesh2, tmp_path):
    """Five rows, then the same five again: ten transactions sent and answered, five of them
    repeats, none lost (the summary counts rows, as the --out file holds them)."""
    path = tmp_path / "dup.csv"
    rows = [f"{i},2018-04-01 0{i}:00:00,{100 + i},{i},{10 + i}.5" for i in range(5)]
    path.write_text("\n".join(["TRANSACTION_ID,TX_DATETIME,CUSTOMER_ID,TERMINAL_ID,TX_AMOUNT", *rows, *rows]) + "\n")
    out = tmp_path / "verdicts.jsonl"
    r = run_cli("send", str(path), "--connect", mesh2.endpoint, "--json", "--out", str(out))
    assert r.returncode == 0, r.stderr + r.stdout
    s = json.loads(r.stdout.strip().splitlines()[-1])
    assert (s["sent"], s["repeated"], s["verdicts"], s["errors"], s["lost"]) == (10, 5, 10, 0, 0)
    assert sum(s["decisions"].values()) == 10 and s["decisions"]["rejected"] == 0
    assert sorted(json.loads(line)["tx_id"] for line in out.read_text().splitlines()) == sorted([0, 1, 2, 3, 4] * 2)
    summary = dict(re.match(r"(.*?\S)\s{2,}(\S.*)$", line).groups() for line in r.stderr.splitlines())
    assert [summary[k] for k in ("transactions sent", "  with a tx_id sent before", "verdicts", "lost")] \
        == ["10", "5", "10", "0"]


@pytest.mark.parametrize("where, why", [("no-such-dir/dl.jsonl", "No such file or directory"),
                                        ("a-file/dl.jsonl", "Not a directory")])
def test_send_checks_the_dead_letter_path_before_it_sends_anything(tmp_path, where, why):
    (tmp_path / "a-file").write_text("")
    dead = tmp_path / where
    r = run_cli("send", "--connect", f"tcp://127.0.0.1:{free_port()}", "--synthetic", "10", "--dead-letter", str(dead),
                timeout=30)  # nothing listens there: a usage error comes before any attempt to connect
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == f"Error: Invalid value for '--dead-letter': cannot use {dead}: {why}"


def test_send_from_a_deleted_directory_names_the_default_dead_letter_file_as_the_problem(tmp_path):
    """The default --dead-letter is relative (zfraud-dead-letter.jsonl): from a directory that was
    deleted, send said only "Error: No such file or directory", with status 1."""
    gone = tmp_path / "gone"
    gone.mkdir()
    r = subprocess.run(["sh", "-c", 'cd "$1" && rmdir "$1" && shift && exec "$@"', "sh", str(gone), sys.executable,
                        "-m", "zfraud", "send", "--connect", f"tcp://127.0.0.1:{free_port()}", "--synthetic", "10"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == (
        "Error: Invalid value for '--dead-letter': cannot use zfraud-dead-letter.jsonl: the current directory no "
        "longer exists; give an absolute path, or start from a directory that exists")


@pytest.mark.parametrize("args", [("send", "--synthetic", "10"), ("tail",), ("status",), ("top",),
                                  ("label", "labels.csv"), ("deploy", "--rules", "rules.toml")])
def test_an_endpoint_that_cannot_be_one_is_a_usage_error(tmp_path, args):
    """Status 1 means lost, dead-lettered or refused: a typo in --connect was status 1 too."""
    (tmp_path / "labels.csv").write_text("TRANSACTION_ID,TX_DATETIME,CUSTOMER_ID,TERMINAL_ID,TX_AMOUNT,TX_FRAUD\n")
    (tmp_path / "rules.toml").write_text("")
    r = run_cli(*args, "--connect", "127.0.0.1:5555", cwd=tmp_path, timeout=30)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines()[-1] == ("Error: Invalid value for '--connect': endpoint '127.0.0.1:5555' is not "
                                                 "tcp://HOST:PORT (PORT 1-65535) or ipc://PATH")


@pytest.mark.parametrize("args, said", [
    (("tail", "--decision", "deny"), "Invalid value for '--decision': unknown decision deny: name one or more of "
                                     "approve, review, decline, rejected"),
    (("deploy",), "nothing to deploy: give --model, --rules, or both"),
    (("deploy", "--shadow", "--rules", "rules.toml"), "--shadow takes a --model and no --rules"),
])
def test_options_that_cannot_work_together_are_a_usage_error(tmp_path, args, said):
    (tmp_path / "rules.toml").write_text("")
    r = run_cli(*args, "--connect", f"tcp://127.0.0.1:{free_port()}", cwd=tmp_path, timeout=30)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1] == f"Error: {said}", r.stderr


def test_a_stream_told_to_stop_reads_no_further_and_counts_what_it_sent(mesh2):
    with Client(mesh2.endpoint) as c:
        s = c.stream(synthetic(100_000, batch=1000, seed=9, first_id=9_000_000), stop=lambda: True)
    assert (s.sent, s.verdicts, s.errors, s.lost) == (1000, 1000, 0, 0)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_send_interrupted_prints_the_summary_of_what_it_sent_and_exits_130(mesh2, tmp_path, sig):
    """Ctrl-C, status 130; SIGTERM (a supervisor, `timeout`) the same, status 143: it killed send
    with no summary and no --out."""
    out = tmp_path / "verdicts.jsonl"
    send = subprocess.Popen([sys.executable, "-m", "zfraud", "send", "--connect", mesh2.endpoint, "--synthetic",
                             "10000000", "--rate", "5000", "--out", str(out), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # until verdicts come back: --out is written to a temporary file next to it, renamed at the summary
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and send.poll() is None and not any(
                f.stat().st_size for f in tmp_path.glob(".verdicts.jsonl.*")):
            time.sleep(0.05)
        assert send.poll() is None and time.monotonic() < deadline, "no verdict came back within 60 s"
        time.sleep(0.5)
        t0 = time.monotonic()
        send.send_signal(sig)
        stdout, err = send.communicate(timeout=60)
    finally:
        send.kill()
    assert send.returncode == 128 + sig, err
    assert time.monotonic() - t0 < 5  # what was in flight, answered within the --deadline (5 s)
    assert err.splitlines()[0] == "interrupted: the input was read no further; the summary counts what was sent"
    s = json.loads(stdout.strip().splitlines()[-1])
    assert 0 < s["sent"] < 10_000_000 and (s["verdicts"], s["errors"], s["lost"]) == (s["sent"], 0, 0)
    assert len(out.read_text().splitlines()) == s["sent"]


def test_send_without_a_mesh_fails_fast_with_one_line():
    t0 = time.monotonic()
    r = run_cli("send", "--connect", f"tcp://127.0.0.1:{free_port()}", "--synthetic", "10", timeout=30)
    assert r.returncode != 0 and time.monotonic() - t0 < 15
    assert "no zfraud worker answered" in r.stderr and "Traceback" not in r.stderr


RULES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "conf", "rules.toml")


@pytest.mark.parametrize("command", [["send", "--synthetic", "10"], ["tail"], ["status"], ["top"],
                                     ["deploy", "--rules", RULES], ["label", "{labels}"]])
def test_ctrl_c_while_connecting_says_so_and_exits_130(command, tmp_path):
    """A listener that never answers holds the handshake; Ctrl-C then printed click's bare "Aborted!" (status 1)."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        silent.settimeout(30)
        endpoint = f"tcp://127.0.0.1:{silent.getsockname()[1]}"
        labels = tmp_path / "labels.csv"
        labels.write_text("TRANSACTION_ID,TX_DATETIME,CUSTOMER_ID,TERMINAL_ID,TX_AMOUNT,TX_FRAUD\n"
                          "1,2018-04-01 00:00:01,2,3,10.5,1\n")
        command = [c.format(labels=labels) for c in command]
        proc = subprocess.Popen([sys.executable, "-m", "zfraud", *command, "--connect", endpoint],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            conn, _ = silent.accept()  # it is connecting
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=30)
            conn.close()
        finally:
            proc.kill()
    assert (proc.returncode, out, err) == (130, "", f"interrupted while connecting to {endpoint}\n")


@pytest.mark.parametrize("args, status, why", [
    (["--bind", "tcp://127.0.0.1:{busy}"], 1, "cannot bind --bind tcp://127.0.0.1:{busy}: Address already in use: another"),
    (["--pub", "tcp://127.0.0.1:{busy}"], 1, "cannot bind --pub tcp://127.0.0.1:{busy}: Address already in use"),
    (["--bind", "tcp://127.0.0.1:99999"], 2, "--bind 'tcp://127.0.0.1:99999' is not tcp://HOST:PORT (PORT 1-65535, or *"),
    (["--bind", "127.0.0.1:5555"], 2, "--bind '127.0.0.1:5555' is not tcp://HOST:PORT"),
    (["--seed", "tcp://127.0.0.1:*"], 2, "--seed 'tcp://127.0.0.1:*' is not tcp://HOST:PORT (PORT 1-65535) or ipc://"),
    (["--metrics-port", "{busy}"], 1, "cannot serve metrics on 127.0.0.1:{busy} (--metrics-port): Address already in use"),
    (["--bind", "tcp://nohost.invalid:5555"], 1, "cannot bind --bind tcp://nohost.invalid:5555: No such device: bind an "
                                                 "IPv4 address or name of this machine, an interface name, or * for all (IPv6"),
])
def test_a_worker_that_cannot_bind_or_reach_its_seed_says_why_in_one_line(args, status, why):
    """libzmq raises a bare EINVAL for a malformed endpoint, and reads a tcp port modulo 65536
    (tcp://127.0.0.1:99999 would bind port 34463): the worker checks first and names the option.
    A malformed endpoint is a usage error (status 2), as it is for --connect; one that cannot be
    bound is status 1."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        args = [a.format(busy=busy) for a in args]
        defaults = {"--bind": f"tcp://127.0.0.1:{free_port()}", "--pub": f"tcp://127.0.0.1:{free_port()}"}
        for opt, ep in defaults.items():
            if opt not in args:
                args += [opt, ep]
        r = run_cli("worker", "--name", "w", *args, timeout=30)
    assert r.returncode == status and "Traceback" not in r.stderr and "ready name" not in r.stderr
    assert why.format(busy=busy) in r.stderr, r.stderr


def test_state_tables_too_large_for_the_machine_get_one_line(model_path):
    """--cards past a table's largest capacity is refused by the option; one within it but past
    the machine's memory (2**31 cards: 800 GiB) was a numpy traceback listing the record's dtype."""
    bind = ["--bind", f"tcp://127.0.0.1:{free_port()}", "--pub", f"tcp://127.0.0.1:{free_port()}"]
    r = run_cli("worker", "--name", "w", *bind, "--model", str(model_path), "--cards", str(3 * 10**9), timeout=30)
    assert r.returncode == 2 and "'--cards': 3000000000 is not in the range 1024<=x<=2147483648" in r.stderr, r.stderr
    if Path("/proc/sys/vm/overcommit_memory").read_text().strip() == "1":
        pytest.skip("vm.overcommit_memory=1: an 800 GiB table is granted, not refused")
    r = run_cli("worker", "--name", "w", *bind, "--model", str(model_path), "--cards", str(1 << 31), timeout=30)
    assert r.returncode == 1 and "Traceback" not in r.stderr and "ready name" not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == ("Error: out of memory for the state tables: --cards 2,147,483,648 "
                                                 "and --terminals 32,768 need about 800.3 GiB; lower them"), r.stderr


@pytest.mark.parametrize("contents", [b"hello\n", b"", b"\x93NUMPY\x01\x00"])
def test_a_snapshot_file_that_is_not_an_npz_archive_is_named_as_such(tmp_path, model_path, contents):
    """Text in the snapshot's place was "pickled (object) data" to np.load, an empty file "No data
    left in file", the start of a .npy a bad array header. (A model with streaming state, or the
    worker has nothing to restore.)"""
    path = tmp_path / "w.state.npz"
    path.write_bytes(contents)
    r = run_cli("worker", "--name", "w", "--bind", f"tcp://127.0.0.1:{free_port()}", "--model", str(model_path),
                "--pub", f"tcp://127.0.0.1:{free_port()}", "--state-dir", str(tmp_path), timeout=30)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == (f"Error: cannot restore {path}: state file '{path}': not a zfraud "
                                                 f"snapshot (not an .npz archive) (move it away to start empty)")


@pytest.mark.parametrize("command", ["send", "tail", "status"])
def test_a_malformed_connect_endpoint_gets_one_line(command):
    r = run_cli(command, "--connect", "tcp://127.0.0.1:70000", *(["--synthetic", "5"] if command == "send" else []),
                timeout=30)
    assert r.returncode == 2 and "Traceback" not in r.stderr  # a usage error (status 1: lost or refused)
    assert "endpoint 'tcp://127.0.0.1:70000' is not tcp://HOST:PORT (PORT 1-65535)" in r.stderr, r.stderr


def test_a_batch_or_labels_bigger_than_one_message_go_in_pieces(tmp_path):
    """A worker takes at most MAX_ROWS transactions (MAX_LABEL_ROWS labels) in one message; the
    client splits what one owner gets, so a caller's batch of any size is scored whole."""
    n = P.MAX_LABEL_ROWS + 1000
    ids = np.arange(n, dtype=np.uint64)
    labels = {"tx_id": ids, "card": ids % 5000, "terminal": ids % 700, "ts_ms": np.full(n, 1_522_540_800_000, np.int64),
              "amount": np.full(n, 10.0), "fraud": np.zeros(n, np.uint8)}
    batch = next(synthetic(3 * P.MAX_ROWS, batch=3 * P.MAX_ROWS))
    with LocalMesh(1, log_dir=str(tmp_path)) as mesh, Client(mesh.endpoint) as c:
        out = c.score(batch)
        assert c.label(labels) == {"w1": 0}
        st = c.control("w1", "status")["status"]
    assert (out["decision"] != P.REJECTED).all() and not c.dead_letters
    assert (st["rows"], st["batches"], st["labels"]) == (3 * P.MAX_ROWS, 3, n)


def test_label_command_reports_the_labels_refused_as_dated_ahead_and_exits_3(mesh2, tmp_path):
    """The worker refuses a label dated more than a day ahead of its clock (2199 is a date the
    file reader takes): `zfraud label` says how many, as `send` does with rejected rows."""
    ahead = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(time.time() + 2 * 86_400))
    labels = tmp_path / "labels.csv"
    labels.write_text("TRANSACTION_ID,TX_DATETIME,CUSTOMER_ID,TERMINAL_ID,TX_AMOUNT,TX_FRAUD\n"
                      "93000001,2018-04-01 00:00:01,2,3,10.5,1\n"
                      "93000002,2199-12-31 23:00:00,2,3,10.5,1\n"
                      f"93000003,{ahead},7,3,10.5,0\n")
    before = status(mesh2, "w1")["labels"] + status(mesh2, "w2")["labels"]
    r = run_cli("label", str(labels), "--connect", mesh2.endpoint, timeout=60)
    after = status(mesh2, "w1")["labels"] + status(mesh2, "w2")["labels"]
    assert (r.returncode, after - before) == (3, 1), r.stderr
    assert r.stdout == "3 labels sent; 0 frauds counted by their cards' owners; 2 refused (dated ahead, above)\n"
    assert r.stderr == ("2 labels refused by their cards' owners and not applied: dated more than 1 day ahead of "
                        "the worker's clock (a wrong date or time zone?)\n")


@pytest.mark.parametrize("change, message", [
    (lambda b: b.pop("terminal"), "a batch: missing terminal; expected the columns tx_id, card, terminal, ts_ms, amount"),
    (lambda b: b.update(card=b["card"][:-1]), "a batch: column card has 9 rows, tx_id has 10"),
    (lambda b: b.update(card=b["card"] + 0.5), "a batch: column card must hold whole numbers >= 0; row 0 is 0.5"),
    (lambda b: b.update(card=b["card"].astype(np.int64) - 3), "column card must hold whole numbers >= 0; row 0 is -3"),
    (lambda b: b.update(ts_ms=b["ts_ms"] + 0.25), "column ts_ms must hold whole numbers; row 0 is "),
    (lambda b: b.update(amount=np.array(["12.5"] * 10)), "column amount must hold numbers, got <U4"),
    (lambda b: b.update(amount=b["amount"].reshape(5, 2)), "column amount must be 1-d (one value per row), got shape (5, 2)"),
])
def test_the_client_api_refuses_a_malformed_batch_naming_the_column(mesh2, change, message):
    """numpy would cast these silently (1.5 -> 1, -3 -> 2**64 - 3) or fail deep inside: the
    client checks a caller's columns first. Lists and other number types are converted."""
    batch = {"tx_id": np.arange(10, dtype=np.uint64), "card": np.arange(10, dtype=np.uint64),
             "terminal": np.arange(10, dtype=np.uint64), "ts_ms": np.full(10, 1_522_540_800_000, np.int64),
             "amount": np.linspace(5, 50, 10)}
    with Client(mesh2.endpoint) as c:
        as_lists = c.score({k: v.tolist() for k, v in batch.items()})
        assert (as_lists["decision"] != P.REJECTED).all()
        np.testing.assert_array_equal(as_lists["tx_id"], batch["tx_id"])
        change(batch)
        with pytest.raises(ValueError) as e:
            c.score(batch)
        with pytest.raises(ValueError):
            c.stream([batch])
    assert message in str(e.value), str(e.value)


def test_client_api_refuses_nothing_listening():
    with pytest.raises(MeshError, match="no zfraud worker answered"):
        Client(f"tcp://127.0.0.1:{free_port()}", hello_timeout_s=0.5)


def test_a_local_mesh_whose_port_is_taken_before_the_worker_binds_it_starts_again(tmp_path, monkeypatch):
    """free_port() cannot reserve a port: here another process takes the first one it finds
    before the worker binds it (as an outgoing connection's ephemeral port can). The worker exits
    at once with `Address already in use`, and the mesh starts again on new ports."""
    import zfraud.local as local

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    ports = iter([port])
    monkeypatch.setattr(local, "free_port", lambda host="127.0.0.1": next(ports, None) or free_port(host))
    try:
        with LocalMesh(2, log_dir=str(tmp_path)) as mesh:
            first = mesh.log("w1")
            with Client(mesh.endpoint) as c:
                v = c.score(next(synthetic(1000, batch=1000)))
    finally:
        taken.close()
    assert f"cannot bind --bind tcp://127.0.0.1:{port}: Address already in use" in first
    assert mesh.routers["w1"] != f"tcp://127.0.0.1:{port}" and sorted(set(v["worker"])) == ["w1", "w2"]


def test_a_worker_added_later_whose_port_is_taken_starts_again_on_new_ports(tmp_path, monkeypatch):
    """The same race for a worker added to a running mesh (tests add them often): only that
    worker starts again, with the seed it was given."""
    import zfraud.local as local

    with LocalMesh(1, log_dir=str(tmp_path)) as mesh, socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ports = iter([port])
        monkeypatch.setattr(local, "free_port", lambda host="127.0.0.1": next(ports, None) or free_port(host))
        w1 = mesh.procs["w1"]
        mesh.start_worker("w2", seed=mesh.routers["w1"])
        mesh.wait_members(["w1", "w2"])
        with Client(mesh.endpoint) as c:
            v = c.score(next(synthetic(1000, batch=1000)))
        assert mesh.log("w2").count(f"cannot bind --bind tcp://127.0.0.1:{port}: Address already in use") == 1
        assert mesh.routers["w2"] != f"tcp://127.0.0.1:{port}" and mesh.procs["w1"] is w1
        assert sorted(set(v["worker"])) == ["w1", "w2"]


def test_a_third_worker_joins_by_seed_and_gets_traffic(tmp_path):
    with LocalMesh(2, log_dir=str(tmp_path)) as mesh:
        mesh.start_worker("w3", seed=mesh.routers["w2"])
        mesh.wait_members(["w1", "w2", "w3"], timeout_s=15)
        with Client(mesh.endpoint) as c:
            assert c.members == ["w1", "w2", "w3"]
            s = c.stream(synthetic(20000, batch=1000))
        assert (s.verdicts, s.lost) == (20000, 0)
        assert status(mesh, "w3")["rows"] > 3000


def test_a_killed_worker_leaves_the_membership(tmp_path):
    with LocalMesh(3, log_dir=str(tmp_path)) as mesh:
        mesh.signal("w3", signal.SIGKILL)
        mesh.procs["w3"].wait(5)
        mesh.wait_members(["w1", "w2"], timeout_s=15)  # aged out after 3 missed heartbeats
        with Client(mesh.endpoint) as c:
            assert c.members == ["w1", "w2"]
            s = c.stream(synthetic(5000, batch=500))
        assert (s.verdicts, s.lost) == (5000, 0)


def test_sigterm_stops_a_worker_cleanly_and_it_says_goodbye(tmp_path):
    with LocalMesh(2, log_dir=str(tmp_path)) as mesh:
        t0 = time.monotonic()
        assert mesh.stop_worker("w2") == 0
        mesh.wait_members(["w1"], timeout_s=2.5)  # mesh.bye: faster than the 3 s age-out
        assert time.monotonic() - t0 < 5
        assert "stopped name=w2" in mesh.log("w2")


def test_demo_runs_end_to_end(tmp_path):
    r = run_cli("demo", "--transactions", "20000", cwd=str(tmp_path), timeout=120)
    assert r.returncode == 0, r.stderr
    assert "verdicts                         20,000" in r.stdout
    assert "lost                             0" in r.stdout
    assert r.stdout.rstrip().endswith("done.")
    # its workers' logs go after a clean stop: it printed their paths, which then named nothing
    workers = re.findall(r"^  (w\d): ROUTER tcp://127\.0\.0\.1:\d+  PUB tcp://127\.0\.0\.1:\d+$", r.stdout, re.M)
    assert workers == ["w1", "w2"] and "log" not in r.stdout + r.stderr, r.stdout


def test_demo_says_where_its_workers_logs_are_kept_when_one_failed():
    demo = subprocess.Popen([sys.executable, "-m", "zfraud", "demo", "--transactions", "2000000"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    workers = []
    try:
        while not demo.stdout.readline().startswith("scoring"):  # the workers are up
            assert demo.poll() is None
        workers = [int(p) for p in subprocess.run(["pgrep", "-P", str(demo.pid)], capture_output=True,
                                                  text=True).stdout.split()]
        assert len(workers) == 2
        os.kill(workers[0], signal.SIGKILL)
        _, err = demo.communicate(timeout=120)
    finally:
        demo.kill()
        for pid in workers[1:]:  # not left behind if the test fails
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    last = err.strip().splitlines()[-1]
    assert re.fullmatch(r"the workers' logs are kept in \S+", last), err
    log_dir = last.rsplit(" ", 1)[1]
    try:
        assert sorted(os.listdir(log_dir)) == ["w1.log", "w2.log"]
    finally:
        shutil.rmtree(log_dir, ignore_errors=True)


def test_a_local_mesh_removes_its_temporary_logs_only_after_a_clean_stop():
    with LocalMesh(1) as mesh:
        clean = mesh.log_dir
        assert os.path.exists(os.path.join(clean, "w1.log"))
    assert not os.path.exists(clean)
    with LocalMesh(1) as mesh:
        kept = mesh.log_dir
        mesh.signal("w1", signal.SIGKILL)
        mesh.procs["w1"].wait(10)
    try:
        assert os.path.exists(os.path.join(kept, "w1.log"))  # a crash leaves its log to be read
    finally:
        shutil.rmtree(kept, ignore_errors=True)


def test_dropped_members_are_asked_to_rejoin_until_they_answer_and_only_the_oldest_of_too_many_is_let_go(ctx):
    """No time limit (a partition that outlasted one would split the mesh for good); crashed
    members never answer, so past MAX_REJOIN the oldest ask makes way. Seeds are never let go."""
    from zfraud.worker import MAX_REJOIN, Worker

    w = Worker("w1", "tcp://127.0.0.1:*", "tcp://127.0.0.1:*", context=ctx)
    try:
        w._ask("tcp://127.0.0.1:9")  # a seed nobody answers at
        for i in range(MAX_REJOIN + 1):
            w._rejoin(f"gone{i}", f"tcp://127.0.0.1:{20000 + i}")
        for _ in range(3):
            w._hello_asking()  # one heartbeat's HELLOs each: nobody is there, nobody is given up on
        names = [name for _, name in w.asking.values()]
        assert names[0] is None and len(names) == 1 + MAX_REJOIN
        assert names[1:] == [f"gone{i}" for i in range(1, MAX_REJOIN + 1)]  # gone0, the oldest, made way
    finally:
        w._close()


def member_routers(mesh, name):
    """{member name: ROUTER endpoint} as worker `name` lists them."""
    reply = request(zmq.Context.instance(), mesh.routers[name], P.encode(P.HELLO, {"role": "client"}))
    return {m["name"]: m["router"] for m in reply.header["members"]}


@pytest.mark.parametrize("seed", ["the namesake", "another member"])
def test_a_second_worker_under_a_live_members_name_stops_and_the_mesh_keeps_the_first(tmp_path, seed, model_path):
    """Two processes under one name would both own its cards, and the mesh would move the name
    between their endpoints at every heartbeat. The second is refused (NAME_TAKEN) and exits 1
    without joining; asked through another member, it asks again for two timeouts first (it could
    be its own previous process, killed and started on new ports, that the member still lists)."""
    with LocalMesh(2, log_dir=str(tmp_path)) as mesh:
        before = member_routers(mesh, "w1")
        via = mesh.routers["w2" if seed == "the namesake" else "w1"]
        t0 = time.monotonic()
        own = f"tcp://127.0.0.1:{free_port()}"
        second = subprocess.Popen([sys.executable, "-m", "zfraud", "worker", "--name", "w2", "--bind", own,
                                   "--pub", f"tcp://127.0.0.1:{free_port()}", "--seed", via, "--state-dir",
                                   str(tmp_path), "--snapshot-every", "1", "--model", str(model_path)],
                                  stderr=subprocess.PIPE, text=True)
        try:
            if seed == "another member":  # a client that finds it meanwhile changes its state: still no snapshot
                time.sleep(2.0)
                assert finish(start_send(own, "--synthetic", "2000"))[:1] == (0,)
            _, err = second.communicate(timeout=60)
        finally:
            second.kill()
        took = time.monotonic() - t0
        r = subprocess.CompletedProcess(second.args, second.returncode, None, err)
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.splitlines()[-1] == (f"Error: worker name w2 is taken by the member at {mesh.routers['w2']}: "
                                             "start this worker under another --name, or stop the other process "
                                             "first (to move a worker to new endpoints, stop it, then start it there)")
        assert "saved state" not in r.stderr and "joined via" not in r.stderr
        assert not list(tmp_path.glob("*.npz"))  # no snapshot under the name, which may be the namesake's
        if seed == "another member":
            assert "asking again for 6 s" in r.stderr and took > 6.0
            # It logged "seed ... has not answered for 6 s ... check --seed" just before the
            # refusal: the seed had answered, with NAME_TAKEN, and keeps answering so
            assert "has not answered" not in r.stderr, r.stderr
        else:
            assert "asking again" not in r.stderr
        time.sleep(1.5)  # a heartbeat: nothing of the second process reached the members' lists
        assert member_routers(mesh, "w1") == member_routers(mesh, "w2") == before
        assert "NAME_TAKEN" in mesh.log("w1" if seed == "another member" else "w2")
        assert finish(start_send(mesh.endpoint, "--synthetic", "5000"))[:1] == (0,)


def _unwritable(directory: str) -> bool:
    try:
        os.close(os.open(os.path.join(directory, ".zfraud-test"), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except OSError as e:
        return e.errno == errno.EACCES
    os.unlink(os.path.join(directory, ".zfraud-test"))
    return False


@pytest.mark.skipif(not _unwritable("/sys/kernel"), reason="needs a directory where no file can be created")
def test_a_state_dir_where_no_snapshot_can_be_written_stops_the_worker_at_its_start(model_path):
    """sysfs refuses new files even to root (chmod does not): the worker used to run, and fail at
    every save."""
    r = run_cli("worker", "--name", "w", "--bind", f"tcp://127.0.0.1:{free_port()}", "--pub",
                f"tcp://127.0.0.1:{free_port()}", "--model", str(model_path), "--state-dir", "/sys/kernel", timeout=30)
    assert r.returncode == 1 and "ready name" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines()[-1] == "Error: cannot write snapshots in /sys/kernel (--state-dir): Permission denied"


def start_and_stop(tmp_path, *args):
    """Run a worker until it is ready, stop it with SIGTERM; returns its log."""
    log = tmp_path / "w.log"
    with open(log, "w") as f:
        w = subprocess.Popen([sys.executable, "-m", "zfraud", "worker", "--name", "w", "--bind",
                              f"tcp://127.0.0.1:{free_port()}", "--pub", f"tcp://127.0.0.1:{free_port()}", *args], stderr=f)
    try:
        end = time.monotonic() + 30
        while time.monotonic() < end and "ready name=w" not in log.read_text() and w.poll() is None:
            time.sleep(0.05)
    finally:
        w.terminate()
        assert w.wait(20) == 0, log.read_text()
    return log.read_text()


def test_a_worker_removes_the_files_of_its_saves_killed_mid_write(model_path, tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its pid names no process now: a save's child, killed writing (save_npz names its file so)
    (state / f".w.state.npz.{dead.pid}.x1y2.tmp").write_bytes(b"PK half a snapshot")
    (state / f".w2.state.npz.{dead.pid}.x1y2.tmp").write_bytes(b"PK")  # another worker's
    text = start_and_stop(tmp_path, "--model", str(model_path), "--state-dir", str(state))
    assert f"removed the unfinished snapshot files of {state / 'w.state.npz'}" in text, text
    assert sorted(os.listdir(state)) == [f".w2.state.npz.{dead.pid}.x1y2.tmp", "w.state.npz"]


def test_a_stateless_model_does_not_claim_to_restore_a_snapshot_and_leaves_it(model_path, tmp_path):
    """Restarted on the default model over a zfraud-v6 snapshot, the worker logged "restored
    state from ...: {'cards': 0, ...}" and had read nothing."""
    state = tmp_path / "state"
    start_and_stop(tmp_path, "--model", str(model_path), "--state-dir", str(state))
    before = (state / "w.state.npz").read_bytes()
    text = start_and_stop(tmp_path, "--state-dir", str(state))  # the default model: basic-v1
    assert "restored state" not in text
    assert (f"state in {state / 'w.state.npz'} not restored: model default-2 (feature set basic-v1) keeps no "
            f"streaming state; the file is left as it is") in text, text
    assert (state / "w.state.npz").read_bytes() == before


def log_until_a_seed_is_silent(tmp_path, *seeds) -> str:
    """The log of a worker started with these seeds, once it says one has not answered (or 20 s)."""
    log = tmp_path / "w.log"
    with open(log, "w") as f:
        w = subprocess.Popen([sys.executable, "-m", "zfraud", "worker", "--name", "w", "--bind",
                              f"tcp://127.0.0.1:{free_port()}", "--pub", f"tcp://127.0.0.1:{free_port()}",
                              *(a for seed in seeds for a in ("--seed", seed)), "--heartbeat", "0.5"], stderr=f)
    try:
        end = time.monotonic() + 20
        while time.monotonic() < end and "has not answered" not in log.read_text():
            time.sleep(0.1)
    finally:
        w.terminate()
        w.wait(10)
    return log.read_text()


def test_a_worker_whose_seed_never_answers_says_so(tmp_path):
    """It runs as a mesh of its own, and used to say nothing about it."""
    seed = f"tcp://127.0.0.1:{free_port()}"
    text = log_until_a_seed_is_silent(tmp_path, seed)
    assert re.search(rf"WARNING seed {seed} has not answered for [3-9] s \(members: 1\); still asking. A worker that "
                     r"reaches no seed scores alone, as a mesh of its own: check --seed", text), text
    assert text.count("has not answered") == 1  # said once


def test_a_worker_that_joined_through_one_seed_says_the_other_is_silent_not_that_it_is_alone(tmp_path):
    """With a dead seed and a live one, the warning for the dead one said "A worker that reaches
    no seed scores alone, as a mesh of its own" after "joined via seed=... members=2"."""
    dead = f"tcp://127.0.0.1:{free_port()}"
    with LocalMesh(1, log_dir=str(tmp_path)) as mesh:
        text = log_until_a_seed_is_silent(tmp_path, dead, mesh.routers["w1"])
    assert re.search(rf"WARNING seed {dead} has not answered for [3-9] s; still asking. This worker joined a mesh "
                     r"of 2 members through another seed: check that this one runs", text), text
    assert "scores alone" not in text


def test_a_worker_that_left_and_is_back_within_seconds_is_logged_as_joined(tmp_path):
    """Its peers still follow a departed worker's PUB for 15 s (what it scored while draining);
    a restart inside that window joined without the log line, so the log showed it leave for good."""
    with LocalMesh(2, log_dir=str(tmp_path)) as mesh:
        assert mesh.stop_worker("w2") == 0  # SIGTERM: a goodbye
        mesh.start_worker("w2", seed=mesh.routers["w1"])
        mesh.wait_members(["w1", "w2"], timeout_s=15)
        end = time.monotonic() + 10
        while time.monotonic() < end and mesh.log("w1").count("member joined name=w2") < 2:
            time.sleep(0.1)
        log = mesh.log("w1")
    assert log.count("member left name=w2") == 1 and log.count("member joined name=w2") == 2, log


def test_a_worker_killed_and_started_on_new_endpoints_under_its_name_joins(tmp_path):
    """The member that still lists the killed process refuses the new one until it drops the old
    (one timeout, 3 s): the new one asks again meanwhile and joins."""
    with LocalMesh(2, log_dir=str(tmp_path)) as mesh:
        mesh.signal("w2", signal.SIGKILL)
        mesh.procs["w2"].wait(5)
        new = f"tcp://127.0.0.1:{free_port()}"
        mesh.start_worker("w2", seed=mesh.routers["w1"], router=new, pub=f"tcp://127.0.0.1:{free_port()}")
        mesh.wait_members(["w1", "w2"], timeout_s=20)
        assert member_routers(mesh, "w1")["w2"] == new
        assert "refuses this worker: worker name w2 is taken" in mesh.log("w2")
        assert finish(start_send(mesh.endpoint, "--synthetic", "5000"))[:1] == (0,)


def test_a_worker_that_cannot_start_releases_its_ports_and_context():
    """In-process: a busy metrics port fails the worker after its ROUTER and PUB were bound; the
    retry on the same ports used to fail with 'Address already in use: another process'."""
    from zfraud import Worker

    threads = threading.active_count()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        router, pub = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
        with pytest.raises(ValueError, match="cannot serve metrics on 127.0.0.1:.*Address already in use"):
            Worker("w", router, pub, metrics_port=busy.getsockname()[1])
    w = Worker("w", router, pub)  # the same ports, free again
    assert w.endpoints == (router, pub)
    w._release()
    assert threading.active_count() == threads  # the failed worker's ZeroMQ context is gone too


def test_tail_takes_decisions_as_a_comma_separated_string_too(mesh2):
    """Tail(ep, decisions="decline") read the string's letters as decisions ('unknown decision c, d, ...')."""
    from zfraud.tail import Tail

    with Tail(mesh2.endpoint, decisions="decline, review") as t:
        assert t.pubs  # it reached the mesh
    with pytest.raises(ValueError, match="unknown decision nope"):
        Tail(mesh2.endpoint, decisions="decline,nope")


@pytest.mark.parametrize("workers, names", [(0, None), (-1, None), (3, ["a"])])
def test_a_local_mesh_of_no_workers_or_the_wrong_number_of_names_is_refused(workers, names):
    with pytest.raises(ValueError, match="a local mesh needs at least 1 worker and one name per worker"):
        LocalMesh(workers, names=names)


def test_a_rejected_rows_id_is_not_remembered_so_it_can_come_again_corrected(tmp_path):
    """A row dated 3 days ahead is rejected; sent again with its time corrected it was a repeat
    (its id remembered), scored but never counted in card or terminal state."""
    with LocalMesh(1, log_dir=str(tmp_path)) as mesh, Client(mesh.endpoint) as c:
        now = int(time.time() * 1000)
        v = c.score({"tx_id": [7, 8], "card": [1, 1], "terminal": [2, 2], "ts_ms": [now + 3 * 86_400_000, now],
                     "amount": [10.0, 10.0]})
        assert v["decision"][0] == P.REJECTED and v["decision"][1] != P.REJECTED
        v = c.score({"tx_id": [7, 8], "card": [1, 1], "terminal": [2, 2], "ts_ms": [now, now], "amount": [10.0, 10.0]})
        assert P.REJECTED not in v["decision"].tolist()
        (name,) = c.members
        status = c.control(name, "status")["status"]
        assert (status["rows"], status["repeats"]) == (4, 1)  # tx 8 only: tx 7 is counted once, corrected
