"""Failures on real processes: killed, hung, drained and restarted workers; nothing is lost."""
import itertools
import json
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest
import zmq

from zfraud import Client
from zfraud import protocol as P
from zfraud.client import MeshError
from zfraud.local import LocalMesh
from zfraud.synthetic import synthetic

from conftest import finish, request, start_send


def rows_of(mesh, name):
    with Client(mesh.endpoint) as c:
        return c.control(name, "status")["status"]["rows"]


def test_sigkill_one_of_three_workers_mid_send_loses_nothing(tmp_path):
    with LocalMesh(3, log_dir=str(tmp_path)) as mesh:
        send = start_send(mesh.endpoint, "--synthetic", "300000", "--rate", "100000")
        time.sleep(1.0)
        mesh.signal("w3", signal.SIGKILL)
        rc, s, err = finish(send)
    assert rc == 0, err
    assert (s["sent"], s["verdicts"], s["lost"], s["dead_letter"]) == (300000, 300000, 0, 0)
    assert s["resent"] > 0  # w3's unanswered batches went to w1 and w2


def test_a_hung_worker_is_detected_by_deadline_and_rejoins_after_sigcont(tmp_path):
    with LocalMesh(2, log_dir=str(tmp_path)) as mesh:
        mesh.signal("w2", signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            rc, s, err = finish(start_send(mesh.endpoint, "--synthetic", "20000", "--deadline", "1"))
            assert rc == 0, err
            assert (s["verdicts"], s["lost"]) == (20000, 0) and s["resent"] > 0
            assert time.monotonic() - t0 < 20
        finally:
            mesh.signal("w2", signal.SIGCONT)
        mesh.wait_members(["w1", "w2"], timeout_s=15)
        before = rows_of(mesh, "w2")
        rc, s, err = finish(start_send(mesh.endpoint, "--synthetic", "20000"))
        assert rc == 0 and s["lost"] == 0, err
        assert rows_of(mesh, "w2") - before > 5000  # given traffic again


def test_a_stopped_worker_does_not_blame_its_healthy_peers_when_it_wakes(tmp_path):
    """After SIGCONT, w2's first heartbeat ran before the peers' hellos of the stop had come in
    (libzmq's I/O thread stood still too), so it logged w1 lost, then joined again, and for a moment
    owned every card. The time it stood still is not the others' silence."""
    with LocalMesh(2, extra_args=["--heartbeat", "0.3"], log_dir=str(tmp_path)) as mesh:
        for _ in range(3):
            mesh.signal("w2", signal.SIGSTOP)
            time.sleep(2.0)  # over STALL_S (1 s) and three heartbeats (0.9 s)
            mesh.signal("w2", signal.SIGCONT)
            time.sleep(1.0)
        mesh.wait_members(["w1", "w2"], timeout_s=15)
    w1, w2 = mesh.log("w1"), mesh.log("w2")
    assert w2.count("the loop stood still") == 3, w2
    assert "member lost name=w1" not in w2, w2
    assert w1.count("member lost name=w2") == 3, w1  # w2's silence was real: w1 saw it


@pytest.mark.parametrize("load", [False, True])
def test_a_worker_stopped_longer_than_the_liveness_window_rejoins_after_sigcont(tmp_path, load):
    """Stopped for 6 s (3 s is three missed heartbeats), w2 is dropped by w1 and w3, who stop
    following its PUB; it may drop them too when it wakes. Only a HELLO to a ROUTER can bring
    them together again, so whoever dropped a member (or sees its list without itself) asks."""
    with LocalMesh(3, log_dir=str(tmp_path)) as mesh:
        send = start_send(mesh.endpoint, "--synthetic", "60000", "--rate", "6000") if load else None
        time.sleep(1.0)
        mesh.signal("w2", signal.SIGSTOP)
        try:
            mesh.wait_members(["w1", "w3"], timeout_s=10)
            time.sleep(2.0)
        finally:
            mesh.signal("w2", signal.SIGCONT)
        if send is not None:
            rc, s, err = finish(send)
            assert rc == 0 and (s["verdicts"], s["lost"]) == (60000, 0), err
        mesh.wait_members(["w1", "w2", "w3"], timeout_s=10)
        before = {w: rows_of(mesh, w) for w in ("w1", "w2", "w3")}
        rc, s, err = finish(start_send(mesh.routers["w2"], "--synthetic", "30000"))
        assert rc == 0 and (s["verdicts"], s["lost"]) == (30000, 0), err
        assert all(rows_of(mesh, w) - before[w] > 5000 for w in ("w1", "w2", "w3"))  # one mesh, not two
        assert "member lost name=w2" in mesh.log("w1")


def test_batches_a_stopped_worker_finds_past_their_deadline_are_expired_not_counted_twice(tmp_path):
    """w2 stops (2.5 s: it stays a member) while a client sends; its batches miss their 1 s
    deadline and go to w1, which scores them. When w2 resumes it finds them queued: scoring them
    would count their transactions in card and terminal state a second time, so it answers
    EXPIRED. Every transaction is counted exactly once across the mesh."""
    with LocalMesh(2, log_dir=str(tmp_path)) as mesh, Client(mesh.endpoint, deadline_s=1.0) as c:
        assert c.members == ["w1", "w2"]
        t0 = time.monotonic()
        mesh.signal("w2", signal.SIGSTOP)
        try:
            s = c.stream(synthetic(20000, batch=1000), rate=20000)
            time.sleep(max(0.0, 2.5 - (time.monotonic() - t0)))
        finally:
            mesh.signal("w2", signal.SIGCONT)
        end = time.monotonic() + 10
        while c.control("w2", "status")["status"]["expired"] == 0 and time.monotonic() < end:
            time.sleep(0.1)
        st = {w: c.control(w, "status")["status"] for w in ("w1", "w2")}
    assert (s.verdicts, s.lost) == (20000, 0) and s.resent > 0
    assert sum(st[w]["rows"] - st[w]["repeats"] for w in st) == 20000  # none counted twice
    assert st["w2"]["expired"] > 0 and "answered EXPIRED" in mesh.log("w2")


class _SkewedTime:
    """The time module as a process whose wall clock is skew_s off the workers' sees it: time()
    is off, the monotonic clocks are the machine's (as libfaketime's FAKETIME_DONT_FAKE_MONOTONIC
    sets a process's clocks)."""

    def __init__(self, skew_s: float):
        self.skew_s = skew_s

    def time(self) -> float:
        return time.time() + self.skew_s

    def __getattr__(self, name):
        return getattr(time, name)


@pytest.mark.parametrize("skew_s", [-6.0, 60.0])
def test_a_client_whose_clock_is_off_neither_loses_nor_double_counts_what_a_stopped_worker_finds(
        tmp_path, monkeypatch, skew_s):
    """The client's wall clock is skew_s off the workers'. w2 stops for 2.5 s while the client
    sends for 5 s with 1 s deadlines; what it had in flight goes to w1 at its deadline, and it
    gets batches again once it answers. It must answer EXPIRED exactly to the batches queued
    past their deadline. Deadlines written in the client's clock got it wrong both ways: 6 s
    behind, every batch w2 read in the 5 s after it resumed, fresh ones and resends too, looked
    past its deadline (three EXPIRED answers, then dead-lettered); 60 s ahead, none did, and the
    batches resent to w1 were counted twice."""
    import zfraud.client
    monkeypatch.setattr(zfraud.client, "time", _SkewedTime(skew_s))
    with LocalMesh(2, log_dir=str(tmp_path)) as mesh, Client(mesh.endpoint, deadline_s=1.0) as c:
        assert c.members == ["w1", "w2"]
        resume = threading.Timer(2.5, mesh.signal, ("w2", signal.SIGCONT))
        mesh.signal("w2", signal.SIGSTOP)
        resume.start()
        try:
            s = c.stream(synthetic(20000, batch=500), rate=4000)
        finally:
            resume.cancel()
            mesh.signal("w2", signal.SIGCONT)
        st = {w: c.control(w, "status")["status"] for w in ("w1", "w2")}
    assert (s.verdicts, s.lost, s.dead_letter) == (20000, 0, 0) and s.resent > 0, c.dead_letters[:1]
    assert sum(st[w]["rows"] - st[w]["repeats"] for w in st) == 20000  # none counted twice
    assert st["w2"]["expired"] > 0


def test_a_stopped_worker_goes_down_and_one_whose_answers_wait_unread_does_not(tmp_path):
    """w2 is stopped; w1 answers in time, but the client reads nothing until the deadline has
    passed. Only w2, whose batches are unanswered, is marked down: its rows go to w1, and w1,
    whose answers were waiting, stays a member."""
    with LocalMesh(2, log_dir=str(tmp_path)) as mesh, Client(mesh.endpoint, deadline_s=0.5) as c:
        answered = {}  # tx_id -> the worker that answered it
        c.on_result = lambda v, h: answered.update(dict.fromkeys(v["tx_id"].tolist(), h["worker"]))
        mesh.signal("w2", signal.SIGSTOP)
        try:
            for b in synthetic(8000, batch=2000, seed=41, first_id=20 * 10**9):
                c.submit(b)
            to_w2 = sum(len(p.arrays["tx_id"]) for p in c.pending.values() if p.worker == "w2")
            time.sleep(1.0)
            c.poll(0)
            assert (c.members, c.down, c.resent) == (["w1"], {"w2"}, to_w2)
            assert {p.worker for p in c.pending.values()} <= {"w1"}
            assert c.drain(10) and not c.dead_letters
        finally:
            mesh.signal("w2", signal.SIGCONT)
    assert 0 < to_w2 < 8000 and len(answered) == 8000 and set(answered.values()) == {"w1"}


def test_new_rows_wait_up_to_the_deadline_for_a_worker_to_come_back(tmp_path):
    """Both workers stopped and marked down: a batch waits deadline_s for one to answer a probe,
    and is dead-lettered saying so. Each batch waits so until the outage is OUTAGE_DEADLINES
    deadlines old; the batches after that are dead-lettered at once (a file sent to a mesh that
    is gone took one deadline per batch), until a worker answers. The next outage gets its waits
    again: resumed while a batch waits, the workers answer and take it."""
    from zfraud.client import OUTAGE_DEADLINES

    with LocalMesh(2, log_dir=str(tmp_path)) as mesh, Client(mesh.endpoint, deadline_s=0.25) as c:
        answered = []
        c.on_result = lambda v, h: answered.extend(v["tx_id"].tolist())
        batches = synthetic(10**8, batch=100, seed=42, first_id=21 * 10**9)
        reason = "no live workers: none of w1, w2 answered within 0.25 s"
        resume = threading.Timer(0.1, lambda: [mesh.signal(n, signal.SIGCONT) for n in ("w1", "w2")])
        waits = []
        try:
            for name in ("w1", "w2"):
                mesh.signal(name, signal.SIGSTOP)
            c.down.update(c.peers)  # (stopped, they would miss any deadline)
            start = time.monotonic()
            while time.monotonic() - start < OUTAGE_DEADLINES * 0.25 + 0.3:
                t0 = time.monotonic()
                c.submit(next(batches))
                waits.append((t0 - start, time.monotonic() - t0))
            assert all(0.25 <= w < 0.5 for t, w in waits if t < OUTAGE_DEADLINES * 0.25 - 0.3)
            assert [w for t, w in waits if t > OUTAGE_DEADLINES * 0.25 + 0.05 and w < 0.05]  # at once
            assert c.dead_lettered == 100 * len(waits) and {d["reason"] for d in c.dead_letters} == {reason}
            for name in ("w1", "w2"):  # (stopped 1.8 s in all: less than the 3 s after which they drop each other)
                mesh.signal(name, signal.SIGCONT)
            end = time.monotonic() + 5
            while not c.members and time.monotonic() < end:
                c.poll(50)  # the client asks every worker once a second
            third = next(batches)
            c.submit(third)
            assert c.drain(10)
            for name in ("w1", "w2"):
                mesh.signal(name, signal.SIGSTOP)
            c.down.update(c.peers)
            resume.start()
            fourth = next(batches)
            c.submit(fourth)
            assert c.members and c.pending
            assert c.drain(10)
        finally:
            resume.cancel()
            for name in ("w1", "w2"):
                mesh.signal(name, signal.SIGCONT)
        assert (c.dead_lettered, c.resent) == (100 * len(waits), 0)
        assert sorted(answered) == third["tx_id"].tolist() + fourth["tx_id"].tolist()


def test_after_an_outage_a_client_finds_its_worker_back_within_a_second(tmp_path):
    """Past its waits (OUTAGE_DEADLINES deadlines: 3 s here), the batches of an outage are
    dead-lettered at once: then the client must find a worker that comes back at once, not when a
    socket's reconnection backoff (up to 8 s) ends. It took 5-6 s, every call meanwhile
    dead-lettered (a tester: 122 calls)."""
    with LocalMesh(1, log_dir=str(tmp_path)) as mesh, Client(mesh.endpoint, deadline_s=0.5) as c:
        batches = synthetic(200 * 1000, batch=200, seed=7, first_id=31 * 10**9)
        assert (c.score(next(batches))["decision"] != P.REJECTED).all()
        mesh.signal("w1", signal.SIGTERM)  # drains, says goodbye, exits
        assert mesh.procs["w1"].wait(15) == 0
        with pytest.raises(MeshError, match="no live workers"):
            c.score(next(batches))  # one deadline's wait
        end = time.monotonic() + 4  # an outage of 4 s: past the waits, and a reconnection backoff of 2-4 s
        while time.monotonic() < end:
            with pytest.raises(MeshError, match="no live workers"):
                c.score(next(batches))
            time.sleep(0.05)
        mesh.start_worker("w1")  # the same name and endpoints
        mesh.wait_members(["w1"], timeout_s=15)
        with Client(mesh.endpoint) as fresh:
            assert (fresh.score(next(batches))["decision"] != P.REJECTED).all()
        back = time.monotonic()
        while True:
            try:
                v = c.score(next(batches))
                break
            except MeshError:
                assert time.monotonic() - back < 10
                time.sleep(0.05)
        assert time.monotonic() - back < 1.0
        assert (v["decision"] != P.REJECTED).all() and c.resent == 0


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_second_signal_stops_send_at_once_with_that_signals_status(tmp_path, sig):
    """The first signal lets what was sent be answered (up to --deadline); a second stops at once.
    Two SIGTERMs (a supervisor that repeats its stop) exited 130, Ctrl-C's status, not 143."""
    with LocalMesh(1, log_dir=str(tmp_path)) as mesh:
        send = start_send(mesh.endpoint, "--synthetic", "1000000", "--rate", "2000", "--deadline", "30")
        time.sleep(2.0)
        mesh.signal("w1", signal.SIGSTOP)  # what was sent stays unanswered: send waits for it
        try:
            time.sleep(0.3)
            send.send_signal(sig)
            time.sleep(0.5)
            assert send.poll() is None  # still waiting for its answers
            t0 = time.monotonic()
            send.send_signal(sig)
            out, err = send.communicate(timeout=20)
        finally:
            send.kill()
            mesh.signal("w1", signal.SIGCONT)
    assert send.returncode == 128 + sig and time.monotonic() - t0 < 5, err
    assert err.strip().splitlines()[-1] == "interrupted" and "Traceback" not in err


def send_then_signal(mesh, dead, sig, *args):
    """`zfraud send ARGS --dead-letter DEAD` to a one-worker mesh, and `sig` to the worker mid-send:
    1 s in, once the worker has scored some of it. On a busy machine the send can take more than
    a second to start (its imports alone took 1.3 s): signalled 1 s in, the worker had scored
    nothing, and the test's `verdicts > 0` failed."""
    send = start_send(mesh.endpoint, *args, "--dead-letter", str(dead))
    time.sleep(1.0)
    end = time.monotonic() + 30
    while rows_of(mesh, "w1") == 0 and send.poll() is None and time.monotonic() < end:
        time.sleep(0.05)
    mesh.signal("w1", sig)
    return send


def test_a_send_whose_only_worker_leaves_dead_letters_the_rest_at_once(tmp_path):
    """The mesh's only worker stops for good mid-send: the rest of the input is dead-lettered
    once the outage's waits are over (6 --deadlines), and send ends with status 1. It took one
    --deadline per batch (about 190 s for these 200,000 rows; hours for a Handbook file),
    printing nothing."""
    with LocalMesh(1, log_dir=str(tmp_path)) as mesh:
        dead = tmp_path / "dead.jsonl"
        send = send_then_signal(mesh, dead, signal.SIGTERM, "--synthetic", "200000", "--rate", "50000",
                                "--deadline", "1")
        assert mesh.procs["w1"].wait(15) == 0
        t0 = time.monotonic()
        rc, s, err = finish(send, timeout=60)
    assert rc == 1, err
    assert time.monotonic() - t0 < 30
    assert s["verdicts"] > 0 and s["dead_letter"] > 100_000
    assert (s["sent"], s["verdicts"] + s["dead_letter"], s["errors"], s["lost"]) == (200000, 200000, 0, 0)
    reasons = {json.loads(line)["reason"] for line in dead.read_text().splitlines()}
    assert reasons == {f"no live workers: none at {mesh.endpoint} answered within 1 s"}  # w1 said goodbye
    assert f"transactions were given up on (dead-lettered): {dead} has each with the reason" in err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_sigterm_drains_a_worker_mid_send_without_loss_or_double_count(tmp_path, sig):
    """A draining worker answers what it was sent, so the client waits for those answers instead
    of sending them again elsewhere, where they would be scored and counted a second time.
    SIGHUP (its terminal closed) drains it too: it killed the worker, with no goodbye or snapshot."""
    with LocalMesh(3, log_dir=str(tmp_path)) as mesh:
        send = start_send(mesh.endpoint, "--synthetic", "200000", "--rate", "80000")
        time.sleep(1.0)
        mesh.signal("w2", sig)
        rc, s, err = finish(send)
        assert mesh.procs["w2"].wait(15) == 0
        scored = rows_of(mesh, "w1") + rows_of(mesh, "w3")
    assert rc == 0, err
    assert (s["verdicts"], s["lost"], s["resent"]) == (200000, 0, 0)
    log = mesh.log("w2")
    assert "draining name=w2" in log and "stopped name=w2" in log
    scored += int(re.search(r"stopped name=w2 batches=\d+ rows=(\d+)", log).group(1))
    assert scored == 200000  # each transaction scored (and counted in its card's windows) once


def test_a_draining_worker_that_stops_answering_has_its_batches_resent(tmp_path):
    """The client leaves a draining worker's batches with it, but not forever: when it stops
    answering (here SIGSTOP right after its goodbye) their deadline sends them elsewhere."""
    with LocalMesh(3, log_dir=str(tmp_path)) as mesh:
        # Unpaced, with a deep window: the client keeps w2 busy until it learns (at its next
        # member-list refresh, within 1 s) that w2 left, so w2 still holds batches when it is
        # stopped just after its goodbye.
        send = start_send(mesh.endpoint, "--synthetic", "1000000", "--window", "64", "--deadline", "1")
        # Not after a fixed time: under load the client process took up to 1 s to start, and
        # asked for the member list after w2's goodbye (nothing was ever sent to w2), or after it
        # was stopped before it could say it (a hung worker, not a draining one). First the
        # client must be scoring on w2.
        end = time.monotonic() + 30
        while (scored := rows_of(mesh, "w2")) == 0 and send.poll() is None and time.monotonic() < end:
            time.sleep(0.05)
        if scored:
            mesh.signal("w2", signal.SIGTERM)
            # Stopped once it drains and the mesh has its goodbye (w1 dropped it as having left).
            end = time.monotonic() + 10
            while not ("draining name=w2" in mesh.log("w2") and "member left name=w2" in mesh.log("w1")) \
                    and time.monotonic() < end:
                time.sleep(0.01)
            mesh.signal("w2", signal.SIGSTOP)
        said_bye = "member left name=w2" in mesh.log("w1")
        try:
            rc, s, err = finish(send)
        finally:
            mesh.signal("w2", signal.SIGCONT)
        status, log = mesh.procs["w2"].wait(15), mesh.log("w2")
    assert scored > 0, "the client sent w2 nothing"
    assert said_bye, log[-2000:]  # stopped while draining, not before its goodbye (a hung worker)
    assert rc == 0, err
    assert (s["verdicts"], s["lost"], s["dead_letter"]) == (1000000, 0, 0)
    assert s["resent"] > 0  # what w2 held when it stopped went to w1 and w3
    # Not SIGABRT (`Assertion failed: !_io_error`, zeromq/libzmq#4841) either: that took a ZMTP
    # heartbeat timer, and the sockets set none now (OPERATIONS §6.1).
    assert status == 0, log[-2000:]


def test_clients_that_flood_a_worker_and_hang_up_unanswered_do_not_kill_it(tmp_path, ctx):
    """libzmq 4.3.5 aborts the process (`Assertion failed: !_io_error`, zeromq/libzmq#4841) when a
    ZMTP heartbeat timer fires on a connection whose receive pipe is full (RCVHWM, 10 000) and
    whose peer has hung up meanwhile. Four clients each queue more requests than that at a worker
    without reading an answer and hang up together (LINGER 0: a reset), leaving it more than a
    heartbeat interval (1 s) of requests to get through. With ZMTP heartbeats on its sockets the
    worker died in the first round in 11 runs of 11 (OPERATIONS §6.1); without, it lives."""
    status = P.encode(P.CONTROL, {"op": "status"})  # costs the worker more than it costs a client
    with LocalMesh(1, log_dir=str(tmp_path)) as mesh:
        for _ in range(3):
            socks = []
            for _ in range(4):
                s = ctx.socket(zmq.DEALER)
                s.setsockopt(zmq.SNDHWM, 0)
                s.setsockopt(zmq.LINGER, 0)
                s.connect(mesh.endpoint)
                socks.append(s)
            for _ in range(12_000):
                for s in socks:
                    s.send_multipart(status)
            time.sleep(0.3)  # the worker's pipes fill up
            for s in socks:
                s.close()
            time.sleep(1.5)  # a heartbeat interval passes while the worker works through them
            assert mesh.procs["w1"].poll() is None, mesh.log("w1")[-2000:]
        reply = request(ctx, mesh.endpoint, P.encode(P.HEARTBEAT, {"t": 1}), timeout_s=20)
        assert reply.command == P.HEARTBEAT
    assert "Assertion failed" not in mesh.log("w1")


def test_a_killed_worker_restarted_rejoins_and_gets_traffic(tmp_path):
    with LocalMesh(2, log_dir=str(tmp_path)) as mesh:
        mesh.signal("w2", signal.SIGKILL)
        mesh.procs["w2"].wait(5)
        mesh.wait_members(["w1"], timeout_s=15)
        with Client(mesh.endpoint) as c:
            s = c.stream(synthetic(10000, batch=1000))
            assert (s.verdicts, s.lost) == (10000, 0)
            mesh.start_worker("w2", seed=mesh.routers["w1"])  # same name, same endpoints
            mesh.wait_members(["w1", "w2"], timeout_s=15)
            end = time.monotonic() + 10
            while c.members != ["w1", "w2"] and time.monotonic() < end:
                c.poll(100)  # the client notices the member list change by itself
            assert c.members == ["w1", "w2"]
            s = c.stream(synthetic(10000, batch=1000, seed=1, first_id=10**6))
            assert (s.verdicts, s.lost) == (10000, 0)
        assert rows_of(mesh, "w2") > 2000


def test_send_counts_dead_letters_and_exits_non_zero(tmp_path):
    with LocalMesh(1, log_dir=str(tmp_path)) as mesh:
        dead = tmp_path / "dead.jsonl"
        send = send_then_signal(mesh, dead, signal.SIGSTOP, "--synthetic", "40000", "--rate", "20000",
                                "--deadline", "0.5")
        try:
            rc, s, err = finish(send, timeout=90)
        finally:
            mesh.signal("w1", signal.SIGCONT)
    assert rc == 1
    assert s["dead_letter"] > 0 and s["verdicts"] > 0 and s["lost"] == 0
    # every transaction is counted once: a dead letter is not an error (no worker gave a reason)
    assert (s["errors"], s["verdicts"] + s["dead_letter"]) == (0, 40000)
    assert f"transactions were given up on (dead-lettered): {dead} has each with the reason" in err
    assert sum(len(json.loads(line)["tx_id"]) for line in dead.read_text().splitlines()) == s["dead_letter"]


def test_dead_letters_through_the_api(tmp_path):
    with LocalMesh(1, log_dir=str(tmp_path)) as mesh:
        dead = tmp_path / "dead.jsonl"
        with Client(mesh.endpoint, deadline_s=0.5, max_attempts=2, dead_letter_path=str(dead)) as c:
            mesh.signal("w1", signal.SIGSTOP)
            try:
                s = c.stream(synthetic(3000, batch=1000), drain_timeout_s=30)
            finally:
                mesh.signal("w1", signal.SIGCONT)
    assert (s.sent, s.verdicts, s.errors, s.dead_letter, s.lost) == (3000, 0, 0, 3000, 0)
    entries = [json.loads(line) for line in dead.read_text().splitlines()]
    assert sum(len(e["tx_id"]) for e in entries) == 3000
    assert all(e["reason"] for e in entries)


def test_a_new_name_on_a_departed_members_endpoints_stays_followed(tmp_path):
    """A worker that left is still followed for DEPARTED_FOLLOW_S (15 s) at its PUB endpoint. A new
    process there under another name (--name HOSTNAME-PID under a supervisor) was cut off when
    that ended, since the SUB disconnects by endpoint: 'member lost' 15-18 s after it joined."""
    from zfraud.worker import DEPARTED_FOLLOW_S

    with LocalMesh(2, log_dir=str(tmp_path), extra_args=("--heartbeat", "0.2")) as mesh:
        router, pub = mesh.routers["w2"], mesh.pubs["w2"]
        assert mesh.stop_worker("w2") == 0
        mesh.start_worker("n2", seed=mesh.routers["w1"], router=router, pub=pub)
        mesh.wait_members(["n2", "w1"], timeout_s=15)
        time.sleep(DEPARTED_FOLLOW_S + 3)  # past the end of following w2, and 3 s more: 15 heartbeats
        log = mesh.log("w1")
        mesh.wait_members(["n2", "w1"], timeout_s=1)
    assert "member left name=w2" in log and "member joined name=n2" in log
    assert "member lost" not in log and log.count("member joined name=n2") == 1, log[-3000:]


def test_a_tail_follows_the_members_that_answer_while_one_is_slow_to(tmp_path):
    """w2 is stopped but still listed (5 s heartbeats) as a tail starts: the tail waits up to 2 s
    for w2's numbering. It connected to no PUB until then, so w1's verdicts of those 2 s were
    dropped (and counted missed: 1,814 at 15,000 tx/s in a tester's run)."""
    from zfraud.tail import Tail

    with LocalMesh(2, extra_args=("--heartbeat", "5"), log_dir=str(tmp_path)) as mesh:
        send = start_send(mesh.endpoint, "--synthetic", "150000", "--rate", "15000", "--deadline", "1")
        try:
            time.sleep(2.0)
            mesh.signal("w2", signal.SIGSTOP)
            t = Tail(mesh.endpoint)
            try:
                read, end = 0, time.monotonic() + 3
                for h, _ in t.batches(timeout_s=2):
                    read += h.get("worker") == "w1"
                    if time.monotonic() > end:
                        break
                missed = t.gaps
            finally:
                t.close()
        finally:
            mesh.signal("w2", signal.SIGCONT)
            finish(send)
    assert read > 100 and missed < 20, (read, missed)  # 922 missed before


def test_a_member_back_under_its_name_is_not_lost_again_at_once(tmp_path):
    """w2 stops and starts again on its endpoints within the 15 s its peers still follow it: w1
    kept the connection to the gone process, backing off, heard nothing of the new one, and
    dropped it a heartbeat timeout after it rejoined ('member lost', then a join again)."""
    with LocalMesh(2, log_dir=str(tmp_path), extra_args=("--heartbeat", "0.2")) as mesh:
        for down_s in (0.5, 1.5, 2.5, 3.5):  # where the new process lands in w1's reconnect back-off varies
            old = mesh.procs["w2"]
            mesh.signal("w2", signal.SIGTERM)
            time.sleep(down_s)  # as a supervisor restarts it
            assert old.wait(10) == 0
            mesh.start_worker("w2", seed=mesh.routers["w1"])
            mesh.wait_members(["w1", "w2"], timeout_s=15)
            time.sleep(2)  # 10 heartbeats
        log = mesh.log("w1")
    assert log.count("member left name=w2") == 4 and log.count("member joined name=w2") == 5
    assert "member lost" not in log, log[-3000:]


def test_a_long_lived_clients_dead_letters_stay_bounded_and_counted(tmp_path):
    """Client.dead_letters grew for the life of a Client: 38 bytes a transaction given up on, for
    ever, in an application that keeps one Client open."""
    from zfraud.client import DEAD_LETTER_IDS

    n = 60_000
    with LocalMesh(1, log_dir=str(tmp_path)) as mesh:
        with Client(mesh.endpoint, deadline_s=0.2, max_attempts=1) as c:
            mesh.signal("w1", signal.SIGSTOP)
            try:
                for k in range(5):
                    batch = next(synthetic(n, batch=n, seed=k, first_id=k * n))
                    with pytest.raises(MeshError):
                        c.score(batch, timeout_s=10)
                s = c.stream(synthetic(1000, batch=1000, seed=9, first_id=10**7), drain_timeout_s=10)
            finally:
                mesh.signal("w1", signal.SIGCONT)
    kept = [i for e in c.dead_letters for i in e["tx_id"]]
    assert c.dead_lettered == 5 * n + 1000 and s.dead_letter == 1000
    assert 1000 < len(kept) <= 2 * DEAD_LETTER_IDS  # 301,000 given up on
    assert kept == list(range(5 * n - (len(kept) - 1000), 5 * n)) + list(range(10**7, 10**7 + 1000))  # the latest


def test_a_snapshot_that_cannot_be_written_is_logged_and_scoring_goes_on(tmp_path):
    """A full disk or a state directory gone must not stop scoring: the failed save is logged and
    counted, the next interval tries again, and only a failed save at the end makes the worker
    exit non-zero (its state since the last good snapshot is lost, and a supervisor should know)."""
    import numpy as np

    from zfraud.features import FULL, FeatureEngine
    from zfraud.model import LogisticModel, save_model

    names = FeatureEngine(FULL).names
    save_model(LogisticModel(names, np.zeros(len(names)), np.zeros(len(names)), -3.0, version="v6-flat",
                             feature_set=FULL), tmp_path / "m.json")
    state = tmp_path / "state"
    extra = ["--model", str(tmp_path / "m.json"), "--state-dir", str(state), "--snapshot-every", "1",
             "--cards", "4096", "--terminals", "4096"]
    batch = next(synthetic(2000, batch=2000))
    with LocalMesh(1, extra_args=extra, log_dir=str(tmp_path)) as mesh, Client(mesh.endpoint) as c:
        assert (c.score(batch)["decision"] != P.REJECTED).all()
        end = time.monotonic() + 10
        while not (state / "w1.state.npz").exists() and time.monotonic() < end:
            time.sleep(0.1)
        end = time.monotonic() + 10
        while True:  # a save every second may have its temporary file in the directory just then
            try:
                shutil.rmtree(state)
                state.write_text("not a directory any more")
                break
            except OSError:
                if time.monotonic() > end:
                    raise
                time.sleep(0.05)
        end = time.monotonic() + 10
        while c.control("w1", "status")["status"]["state"]["snapshot_failures"] < 2 and time.monotonic() < end:
            time.sleep(0.2)
        st = c.control("w1", "status")["status"]
        assert st["state"]["snapshot_failures"] >= 2 and st["state"]["snapshot_age_s"] > 1
        second = next(synthetic(2000, batch=2000, seed=1, first_id=10**6))
        assert (c.score(second)["decision"] != P.REJECTED).all() and mesh.procs["w1"].poll() is None
        assert mesh.stop_worker("w1") == 1
        log = mesh.log("w1")
    assert re.search(rf"cannot save state to {re.escape(str(state))}/w1.state.npz: \[Errno 20\] Not a directory.* "
                     r"\(there is no snapshot there\)$", log, re.M), log
    assert "could not save its state" in log and "Traceback" not in log


def test_labels_for_a_killed_workers_cards_go_to_their_new_owners(tmp_path):
    """`zfraud label` just after a worker is killed, before the mesh has noticed (the member list
    still names it): the labels of its cards wait for its answer, then go to the cards' new owners,
    and every label is applied once."""
    from conftest import run_cli
    from zfraud.gen import generate, write_csv

    g = generate(100, 200, 12, seed=5)
    write_csv(g, str(tmp_path / "labels.csv"))
    n = len(g["TRANSACTION_ID"])
    with LocalMesh(3, log_dir=str(tmp_path)) as mesh:
        mesh.signal("w3", signal.SIGKILL)
        t0 = time.monotonic()
        r = run_cli("label", str(tmp_path / "labels.csv"), "--connect", mesh.endpoint)
        took = time.monotonic() - t0
        with Client(mesh.endpoint) as c:
            applied = {w: c.control(w, "status")["status"]["labels"] for w in ("w1", "w2")}
    assert r.returncode == 0, r.stderr
    assert f"{n:,} labels sent" in r.stdout
    assert sum(applied.values()) == n and min(applied.values()) > 0, applied
    assert 10 <= took < 60, took  # one 10 s wait for w3's answer, then the resend


def test_labels_nobody_acknowledges_end_in_one_line_saying_what_to_do(tmp_path):
    """A worker that answers HELLO but never acknowledges labels (as a hung one would): after its
    10 s the command gives up with one line that says what may have been applied and what to do."""
    import zmq

    from conftest import run_cli
    from zfraud.gen import generate, write_csv

    g = generate(50, 100, 5, seed=6)
    write_csv(g, str(tmp_path / "labels.csv"))
    n = len(g["TRANSACTION_ID"])
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    ep, stop, labels = f"tcp://127.0.0.1:{port}", threading.Event(), []

    def hung_worker():
        while not stop.is_set():
            if router.poll(50):
                ident, *body = router.recv_multipart()
                msg = P.parse(body)
                if msg.command == P.HELLO:
                    router.send_multipart([ident] + P.encode(P.MEMBERS, {"worker": "w1", "members": [
                        {"name": "w1", "router": ep, "pub": "tcp://127.0.0.1:1"}]}))
                elif msg.command == P.LABEL:
                    labels.append(msg.header["rows"])  # taken, never acknowledged

    t = threading.Thread(target=hung_worker, daemon=True)
    t.start()
    try:
        r = run_cli("label", str(tmp_path / "labels.csv"), "--connect", ep)
    finally:
        stop.set()
        t.join(5)
        router.close()
        ctx.term()
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert labels == [n]  # sent once: with no other worker there is nowhere to send them again
    assert r.stderr.strip() == (
        f"Error: no live workers to take the labels (w1 did not acknowledge labels within 10 s). Some of the "
        f"{n:,} labels may have been applied; sending the file again to the same workers applies only the "
        f"others (each owner skips the labels it holds)"), r.stderr


def send_then_stop(tail, endpoint: str, settle_s: float) -> str:
    """After settle_s, 2000 more transactions (which every followed worker publishes), then the
    tail's end: it was started with --timeout TAIL_QUIET_S, and on that silence it asks each worker
    where its numbering stands and counts what never came (a Ctrl-C would not: what it had not
    read yet was not missed); its stderr."""
    time.sleep(settle_s)
    assert finish(start_send(endpoint, "--synthetic", "2000"))[0] == 0
    return tail.communicate(timeout=60)[1]


TAIL_QUIET_S = "6"  # longer than any pause of these tests' traffic while the tail runs


def tail_runs(path) -> dict:
    """(worker, decision) -> {boot: [first seq, last seq, messages]}, in the order the processes
    came, from `tail`'s JSON lines (checking that seq only goes up within one process)."""
    runs = {}
    records = map(json.loads, path.read_text().splitlines())
    for (seq, *key, boot), _ in itertools.groupby((v["seq"], v["worker"], v["decision"], v["boot"]) for v in records):
        r = runs.setdefault(tuple(key), {}).setdefault(boot, [seq, seq, 0])
        assert seq > r[1] or r[2] == 0  # in one process, seq only goes up
        r[1:] = [seq, r[2] + 1]
    return runs


def published(ctx, mesh) -> dict:
    """(worker, decision) -> (boot, seq): where each live worker's numbering stands, from its MEMBERS."""
    out = {}
    for name, router in mesh.routers.items():
        h = request(ctx, router, P.encode(P.HELLO, {"role": "client"})).header
        out.update({(name, t.removeprefix("verdict.")): (h["boot"], n) for t, n in h["seq"].items()})
    return out


def missed_of(runs: dict, numbering: dict) -> int:
    """Messages a tail that started before any traffic never received: per worker process and
    decision, its last seq (the live process's as it reports it, a gone one's last seen) minus
    the messages received."""
    missed = 0
    for key in set(runs) | set(numbering):
        procs = {boot: [last, n] for boot, (_, last, n) in runs.get(key, {}).items()}
        if key in numbering:
            boot, seq = numbering[key]
            procs.setdefault(boot, [0, 0])[0] = seq
        missed += sum(last - n for last, n in procs.values())
    return missed


@pytest.mark.parametrize("new_numbering", ["behind", "past"])
def test_tail_counts_what_it_missed_of_a_worker_restarted_under_its_name(tmp_path, ctx, new_numbering):
    """A restarted worker numbers its messages from 1 again. Those it publishes (for other
    subscribers) before this tail's SUB reconnects are gone; tail counts them when the next one
    comes, also when the new process has already published more messages than the old one did
    ("past": its seq then looked like a plain jump). For every worker process and decision,
    messages seen + counted missed = the last seq seen."""
    cmd = [sys.executable, "-m", "zfraud", "tail", "--timeout", TAIL_QUIET_S, "--connect"]
    many = ["--synthetic", "20000", "--batch", "256", "--rate", "20000"]  # paced small batches: many messages
    few = ["--synthetic", "2000"]
    before, during = (many, few) if new_numbering == "behind" else (few, many)
    with LocalMesh(2, log_dir=str(tmp_path)) as mesh, open(tmp_path / "tail.out", "w") as out:
        tail = subprocess.Popen(cmd + [mesh.endpoint], stdout=out, stderr=subprocess.PIPE, text=True)
        other = subprocess.Popen(cmd + [mesh.endpoint], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(1.5)  # subscriptions reach both workers
            assert finish(start_send(mesh.endpoint, *before))[0] == 0
            mesh.signal("w2", signal.SIGKILL)
            mesh.procs["w2"].wait(5)
            tail.send_signal(signal.SIGSTOP)
            try:
                mesh.start_worker("w2", seed=mesh.routers["w1"])
                mesh.wait_members(["w1", "w2"], timeout_s=15)
                time.sleep(1.5)  # the other tail follows the new w2, so it publishes
                assert finish(start_send(mesh.routers["w2"], *during))[0] == 0
            finally:
                tail.send_signal(signal.SIGCONT)
            err = send_then_stop(tail, mesh.endpoint, settle_s=2.0)  # after its SUB reconnects to the new w2
            numbering = published(ctx, mesh)
        finally:
            tail.kill()
            other.kill()
    assert tail.returncode == 0, err
    runs = tail_runs(tmp_path / "tail.out")
    w2 = [list(p.values()) for (w, _), p in runs.items() if w == "w2" and len(p) > 1]  # decisions both published
    assert w2 and all(len(p) == 2 for p in w2)  # w2's two processes, told apart by boot
    assert len({b for p in runs.values() for b in p}) == 3 and all(isinstance(b, int) for p in runs.values() for b in p)
    assert sum(new[0] - 1 for _, new in w2) > 0  # the stop hid the new w2's first messages
    if new_numbering == "past":
        assert all(new[0] > old[1] for old, new in w2)  # what a seq going back cannot show
    else:
        assert all(new[0] <= old[1] for old, new in w2)
    missed = missed_of(runs, numbering)  # the new w2's decisions none of whose messages came too
    assert missed > 0 and f"missed {missed:,} verdict messages" in err, err


def test_tail_counts_what_a_restarted_or_new_worker_sent_before_it_was_followed(tmp_path, ctx):
    """With no other subscriber, a restarted w2 and a new w3 score while this tail is stopped, so
    they publish nothing: their first messages are not built at all. They still take their seq,
    so tail counts them when it hears the next ones (it used to report nothing missed)."""
    cmd = [sys.executable, "-m", "zfraud", "tail", "--timeout", TAIL_QUIET_S, "--connect"]
    with LocalMesh(2, log_dir=str(tmp_path)) as mesh, open(tmp_path / "tail.out", "w") as out:
        tail = subprocess.Popen(cmd + [mesh.endpoint], stdout=out, stderr=subprocess.PIPE, text=True)
        try:
            time.sleep(1.5)  # subscriptions reach both workers
            assert finish(start_send(mesh.endpoint, "--synthetic", "2000"))[0] == 0
            mesh.signal("w2", signal.SIGKILL)
            mesh.procs["w2"].wait(5)
            tail.send_signal(signal.SIGSTOP)
            try:
                mesh.start_worker("w2", seed=mesh.routers["w1"])
                mesh.start_worker("w3", seed=mesh.routers["w1"])
                mesh.wait_members(["w1", "w2", "w3"], timeout_s=15)
                rc, s, _ = finish(start_send(mesh.endpoint, "--synthetic", "20000", "--batch", "256"))
                assert rc == 0 and s["verdicts"] == 20000
            finally:
                tail.send_signal(signal.SIGCONT)
            err = send_then_stop(tail, mesh.endpoint, settle_s=2.5)  # after its SUB connects to the new w2 and w3
            numbering = published(ctx, mesh)
        finally:
            tail.kill()
    assert tail.returncode == 0, err
    runs = tail_runs(tmp_path / "tail.out")
    late = [first for (w, _), p in runs.items() for i, (first, _, _) in enumerate(p.values()) if w == "w3" or i]
    assert late and any(first > 1 for first in late)  # the new processes' first messages were missed
    missed = missed_of(runs, numbering)
    assert missed > 0 and f"missed {missed:,} verdict messages" in err, err


def test_a_stopped_tail_counts_what_it_missed_without_waiting_for_another_message(tmp_path, ctx):
    """Stopped (Ctrl-Z) for 6 s while the mesh scores, the tail is dropped by the workers (3 s of
    a full receive window: TCP_MAXRT) with everything queued for it. Resumed after the traffic, it
    printed part of it and exited 0 saying nothing: a gap showed only with a next message. Now
    the workers' MEMBERS replies carry their numbering, so messages received + counted missed =
    messages published, for every worker and decision."""
    cmd = [sys.executable, "-m", "zfraud", "tail", "--timeout", "4", "--connect"]
    with LocalMesh(2, log_dir=str(tmp_path)) as mesh, open(tmp_path / "tail.out", "w") as out:
        tail = subprocess.Popen(cmd + [mesh.endpoint], stdout=out, stderr=subprocess.PIPE, text=True)
        try:
            time.sleep(1.5)  # subscriptions reach both workers
            tail.send_signal(signal.SIGSTOP)
            try:
                rc, s, _ = finish(start_send(mesh.endpoint, "--synthetic", "100000", "--batch", "256",
                                             "--rate", "25000"))
                assert rc == 0 and s["verdicts"] == 100000
                time.sleep(2)  # stopped for the 4 s send and 2 s more: past the 3 s TCP_MAXRT
            finally:
                tail.send_signal(signal.SIGCONT)
            err = tail.communicate(timeout=60)[1]
        finally:
            tail.kill()
        numbering = published(ctx, mesh)
    assert tail.returncode == 0, err
    missed = missed_of(tail_runs(tmp_path / "tail.out"), numbering)
    assert sum(seq for _, seq in numbering.values()) > 200 and missed > 0  # the workers dropped the stopped tail
    assert f"missed {missed:,} verdict messages" in err, err


def test_a_tail_stopped_at_its_count_or_by_ctrl_c_under_load_counts_only_the_holes_it_saw(tmp_path):
    """Under steady load (many small messages), `tail --count 100` and a tail stopped by Ctrl-C
    said "missed 4/5/8 verdict messages" with no hole in the seq numbers they printed: they
    counted what the workers published after they stopped reading (tester's report). Both follow
    the workers before the load starts (a tail started under load also counts what the workers
    published before its subscriptions took effect: see the next test)."""
    outs = {how: tmp_path / f"tail-{how}.jsonl" for how in ("count", "ctrl-c")}
    with LocalMesh(2, log_dir=str(tmp_path)) as mesh:
        tails, load = {}, None
        try:
            for how, out in outs.items():
                with open(out, "w") as f:
                    args = ["--count", "100"] if how == "count" else []
                    tails[how] = subprocess.Popen([sys.executable, "-m", "zfraud", "tail", "--connect", mesh.endpoint,
                                                   *args], stdout=f, stderr=subprocess.PIPE, text=True)
            time.sleep(2.0)  # both follow both workers
            load = start_send(mesh.endpoint, "--synthetic", "300000", "--rate", "20000", "--batch", "8")
            time.sleep(3)
            tails["ctrl-c"].send_signal(signal.SIGINT)
            errs = {how: tail.communicate(timeout=60)[1] for how, tail in tails.items()}
        finally:
            for tail in tails.values():
                tail.kill()
                tail.wait()
            if load is not None:
                load.send_signal(signal.SIGINT)
                finish(load)
    for how, out in outs.items():
        holes = sum(last - first + 1 - n for p in tail_runs(out).values() for first, last, n in p.values())
        rc, err = tails[how].returncode, errs[how]
        assert rc == 0, (how, err)
        said = re.search(r"missed ([\d,]+) verdict messages", err)
        assert (int(said.group(1).replace(",", "")) if said else 0) == holes, (how, holes, err)


def test_a_tail_started_under_traffic_counts_what_went_out_before_its_subscriptions_took_effect(tmp_path, ctx):
    """`tail` started with `send`: the first verdicts never reached it and it said nothing
    (tester's report). It connected its SUB and then asked where the worker's numbering stood, so
    the answer came after what the worker published while the subscriptions were on their way.
    Now the numbering of its first MEMBERS reply is its start, and it subscribes after: messages
    printed + counted missed = messages the worker published after that reply (which a relay
    between tail and the worker reads, and hands on 0.1 s late so that some are always dropped)."""
    replies, stop = [], threading.Event()
    front = ctx.socket(zmq.ROUTER)
    relay_endpoint = f"tcp://127.0.0.1:{front.bind_to_random_port('tcp://127.0.0.1')}"

    def relay(worker):  # tail's --connect: each request to the worker, each reply back (the first 0.1 s late)
        back = ctx.socket(zmq.DEALER)
        back.connect(worker)
        poller = zmq.Poller()
        poller.register(front, zmq.POLLIN)
        poller.register(back, zmq.POLLIN)
        try:
            while not stop.is_set():
                for sock, _ in poller.poll(100):
                    if sock is front:
                        peer, *frames = front.recv_multipart()
                        back.send_multipart(frames)
                    else:
                        frames = back.recv_multipart()
                        replies.append(P.parse(frames).header)
                        if len(replies) == 1:
                            time.sleep(0.1)  # a slow start: what the worker publishes meanwhile is dropped
                        front.send_multipart([peer, *frames])
        finally:
            back.close(linger=0)
            front.close(linger=0)

    with LocalMesh(1, log_dir=str(tmp_path)) as mesh, open(tmp_path / "tail.out", "w") as out:
        thread = threading.Thread(target=relay, args=(mesh.endpoint,), daemon=True)
        thread.start()
        send = start_send(mesh.endpoint, "--synthetic", "150000", "--batch", "16", "--rate", "50000")  # 3 s
        tail = None
        try:
            time.sleep(1.0)
            tail = subprocess.Popen([sys.executable, "-m", "zfraud", "tail", "--timeout", "3", "--connect",
                                     relay_endpoint], stdout=out, stderr=subprocess.PIPE, text=True)
            rc, s, _ = finish(send, timeout=60)
            assert rc == 0 and s["verdicts"] == 150000
            err = tail.communicate(timeout=60)[1]
            numbering = published(ctx, mesh)
        finally:
            stop.set()
            thread.join(5)
            for proc in (tail, send):
                if proc is not None:
                    proc.kill()
                    proc.wait()
    assert tail.returncode == 0, err
    first = replies[0]  # tail's first MEMBERS reply: where w1's numbering stood as it started
    start = {("w1", t.removeprefix("verdict.")): (first["boot"], n) for t, n in first["seq"].items()}
    assert sum(n for _, n in start.values()) > 0  # it started under traffic
    assert {k: b for k, (b, _) in numbering.items()} == {k: b for k, (b, _) in start.items()}
    printed = sum(n for procs in tail_runs(tmp_path / "tail.out").values() for _, _, n in procs.values())
    after = sum(seq - start[key][1] for key, (_, seq) in numbering.items())
    said = re.search(r"missed ([\d,]+) verdict messages", err)
    missed = int(said.group(1).replace(",", "")) if said else 0
    assert printed + missed == after, (printed, missed, after, err)
    assert printed > 0 and missed > 0, err  # PUB/SUB dropped its first ones: published before it subscribed


def test_workers_of_a_local_mesh_whose_parent_is_killed_stop_too(tmp_path):
    """SIGKILL gives `zfraud demo`, a back-test or a test run no chance to stop its workers; they
    get SIGTERM from Linux instead (PR_SET_PDEATHSIG), drain and stop, freeing their ports."""
    parent = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\n"
        "from zfraud.local import LocalMesh\n"
        f"with LocalMesh(2, log_dir={str(tmp_path)!r}) as mesh:\n"
        "    print(*(p.pid for p in mesh.procs.values()), flush=True)\n"
        "    time.sleep(120)\n")], stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(p) for p in parent.stdout.readline().split()]
        assert len(pids) == 2
        parent.kill()
        parent.wait(10)
        end = time.monotonic() + 20

        def alive(pid):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited
            except FileNotFoundError:
                return False

        while any(map(alive, pids)) and time.monotonic() < end:
            time.sleep(0.2)
        assert not any(map(alive, pids))
    finally:
        parent.kill()
    logs = [(tmp_path / f"w{i}.log").read_text() for i in (1, 2)]
    assert all("stopped name=" in log for log in logs), logs  # a clean stop, not a kill


def _seed_answering(ctx, members: list) -> tuple:
    """A ROUTER on a free port that answers one HELLO with MEMBERS listing `members`: what a
    client was told before a partition split the mesh. (endpoint, thread)."""
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 1000)
    port = sock.bind_to_random_port("tcp://127.0.0.1", 38000, 39000)

    def answer():
        try:
            if sock.poll(10_000):
                frames = sock.recv_multipart()
                sock.send_multipart([frames[0], *P.encode(P.MEMBERS, {"worker": "seed", "members": members})])
        finally:
            sock.close()

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    return f"tcp://127.0.0.1:{port}", thread


def _cut_off_w1(mesh) -> list:
    """Start w1 on its own (no seed: its member list is [w1]), beside the mesh's workers, which
    do not know it: w1 cut off from them, the client reaching all. Their member list entries."""
    mesh.start_worker("w1")
    end = time.monotonic() + 30
    while mesh.members_of("w1", 0.5) != ["w1"]:
        assert time.monotonic() < end, mesh.log("w1")[-2000:]
        time.sleep(0.1)
    return [{"name": n, "router": mesh.routers[n], "pub": mesh.pubs[n]} for n in ["w1", *mesh.names]]


def test_a_worker_cut_off_from_the_others_does_not_take_the_clients_member_list(tmp_path):
    """w1 is cut off from w2 and w3; the client reaches all three. It asked one worker, the first
    in name order, for the member list and dropped every worker that list lacked: w2 and w3, all
    healthy. When w1 died, every batch was dead-lettered ("none of w1 answered"), for good (a
    tester's partition: 32,582 of 57,960 transactions in 60 s). It asks every worker and
    routes by the list the most of them answer with, which is also the one their cards go by."""
    ctx = zmq.Context.instance()
    with LocalMesh(2, log_dir=str(tmp_path), names=["w2", "w3"]) as mesh:
        seed, thread = _seed_answering(ctx, _cut_off_w1(mesh))
        with Client(seed, deadline_s=1.0) as c:
            thread.join(5)
            end = time.monotonic() + 3
            while time.monotonic() < end:
                c.poll(50)  # three member-list refreshes
            members = c.members
            mesh.signal("w1", signal.SIGKILL)
            mesh.procs["w1"].wait(5)
            s = c.stream(synthetic(20000, batch=1000))
    assert (s.sent, s.verdicts, s.dead_letter, s.lost) == (20000, 20000, 0, 0)
    assert members == ["w2", "w3"]


def test_with_no_live_worker_the_client_asks_the_workers_it_dropped_and_its_seeds(tmp_path):
    """A 1:1 split (w1 | w2, the client reaching both) is a tie, which the first list in name
    order wins, so the client routes by [w1] and drops w2. When w1 dies, the batches that find no
    live worker ask w2, which was dropped from the list, and take its list: none is dead-lettered."""
    ctx = zmq.Context.instance()
    with LocalMesh(1, log_dir=str(tmp_path), names=["w2"]) as mesh:
        seed, thread = _seed_answering(ctx, _cut_off_w1(mesh))
        with Client(seed, deadline_s=1.0) as c:
            thread.join(5)
            end = time.monotonic() + 3
            while time.monotonic() < end:
                c.poll(50)
            members = c.members
            mesh.signal("w1", signal.SIGKILL)
            mesh.procs["w1"].wait(5)
            s = c.stream(synthetic(20000, batch=1000))
            after = c.members
    assert (s.sent, s.verdicts, s.dead_letter, s.lost) == (20000, 20000, 0, 0)
    assert (members, after) == (["w1"], ["w2"])
