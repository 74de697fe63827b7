"""Out of file descriptors (`ulimit -n`): clients say so in one line, a worker keeps scoring and
says so in its log, at most once per 10 s. Real processes started under a low RLIMIT_NOFILE."""
import os
import resource
import subprocess
import sys
import time

import pytest
import zmq

from zfraud import protocol as P
from zfraud.local import PARENT_ENV, LocalMesh, free_port
from zfraud.sockets import configure
from zfraud.synthetic import synthetic


def limited(n):
    """A preexec_fn: the child may open n descriptors (soft and hard, as `ulimit -n n` sets them)."""
    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))


def run_limited(n, *args, timeout=30):
    return subprocess.run([sys.executable, "-m", "zfraud", *args], capture_output=True, text=True,
                          timeout=timeout, preexec_fn=limited(n), stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def mesh6(tmp_path_factory):
    with LocalMesh(6, log_dir=str(tmp_path_factory.mktemp("mesh6"))) as mesh:
        yield mesh


def assert_one_line(r, n):
    assert r.returncode == 1, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.stderr[-2000:]
    assert "out of file descriptors" in lines[0] and f"the limit (ulimit -n) is {n}" in lines[0], lines[0]


@pytest.mark.parametrize("n", [12, 24])
def test_send_out_of_descriptors_says_so_in_one_line(mesh6, n):
    """12: too few to import what it needs; 24: too few for a socket to each of 6 workers."""
    assert_one_line(run_limited(n, "send", "--connect", mesh6.endpoint, "--synthetic", "2000", "--json"), n)


def test_send_raises_its_soft_limit_to_the_hard_one(mesh6):
    """A soft limit of 24 (and a hard one of 4096, as a login shell's defaults may be 1024 and
    more) does not stop a client: it raises its own, as servers commonly do."""
    r = subprocess.run([sys.executable, "-m", "zfraud", "send", "--connect", mesh6.endpoint, "--synthetic", "2000",
                        "--json"], capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
                       preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (24, 4096)))
    assert r.returncode == 0, r.stderr[-2000:]
    assert '"verdicts": 2000' in r.stdout.splitlines()[-1]


@pytest.mark.parametrize("n", [14, 16])
def test_tail_out_of_descriptors_says_so_in_one_line(mesh6, n):
    assert_one_line(run_limited(n, "tail", "--connect", mesh6.endpoint, "--timeout", "2"), n)


@pytest.mark.parametrize("n", [12, 16, 23])
def test_a_worker_with_too_few_descriptors_to_start_says_so_in_one_line(mesh6, n):
    """Checked before any socket is made: with 12, libzmq can abort as it binds (ip_resolver.cpp:
    Too many open files); with more, a socket fails half-way through the start."""
    router, pub = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    r = run_limited(n, "worker", "--name", "z", "--bind", router, "--pub", pub, "--seed", mesh6.endpoint, timeout=20)
    assert_one_line(r, n)
    assert "a worker needs at least 24 to start" in r.stderr


def test_a_worker_out_of_descriptors_keeps_scoring_and_says_why_once(tmp_path):
    """A worker that may open 30 descriptors joins a mesh of 6 others: it cannot make a socket to
    each of them (it crashed on the first it could not make). It must go on answering the
    connection it has, and log one line per 10 s at most naming the limit."""
    seed = f"tcp://127.0.0.1:{free_port()}"  # w1's ROUTER, once it runs: z keeps asking it till then
    router, pub = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    log_path = tmp_path / "z.log"
    with open(log_path, "wb") as log:
        z = subprocess.Popen([sys.executable, "-m", "zfraud", "worker", "--name", "z", "--bind", router, "--pub", pub,
                              "--seed", seed], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             preexec_fn=limited(30),
                             env={**os.environ, "PYTHONUNBUFFERED": "1", PARENT_ENV: str(os.getpid())})
    ctx = zmq.Context()
    sock = configure(ctx.socket(zmq.DEALER))
    try:
        # Connected (and answered) while z is alone, before it runs out
        sock.connect(router)
        sock.send_multipart(P.encode(P.HELLO, {"role": "client"}))
        assert sock.poll(15_000), f"z did not answer HELLO:\n{log_path.read_text()}"
        assert P.parse(sock.recv_multipart()).command == P.MEMBERS
        mesh = LocalMesh(6, log_dir=str(tmp_path))  # started here, not by `with`: w1 on z's seed
        try:
            mesh.start_worker("w1", router=seed)
            for name in mesh.names[1:]:
                mesh.start_worker(name, seed=seed)
            end = time.monotonic() + 20
            while "out of file descriptors" not in log_path.read_text() and time.monotonic() < end:
                assert z.poll() is None, f"z exited:\n{log_path.read_text()[-3000:]}"
                time.sleep(0.2)
            assert "out of file descriptors" in log_path.read_text(), log_path.read_text()[-3000:]
            time.sleep(3)  # three heartbeats more, each a retry
            batch = next(synthetic(2000, batch=2000, seed=5))
            sock.send_multipart(P.batch_message(1, 1, {k: v for k, v in batch.items() if k != "label"}))
            assert sock.poll(10_000), f"z did not answer the batch:\n{log_path.read_text()[-3000:]}"
            msg = P.parse(sock.recv_multipart())
            assert msg.command == P.RESULT and msg.header["rows"] == 2000, msg.header
            assert z.poll() is None, log_path.read_text()[-3000:]
        finally:
            mesh.stop()
    finally:
        sock.close(linger=0)
        ctx.term()
        z.terminate()
        z.wait(15)
    text = log_path.read_text()
    assert "Traceback" not in text and "ZMQError" not in text, text[-3000:]
    lines = [ln for ln in text.splitlines() if "cannot open a socket to" in ln]
    assert 1 <= len(lines) <= 3, lines  # some 5-10 s of failures: at most once per 10 s
    assert "out of file descriptors (the limit (ulimit -n) is 30)" in lines[0] and "ulimit -n" in lines[0], lines[0]


def test_a_worker_out_of_descriptors_says_it_turns_connections_away(tmp_path):
    """A worker that may open 40 descriptors, and 60 connections to its ROUTER: libzmq's failed
    accepts show only on a socket monitor; the worker logs them, once per 10 s at most."""
    router, pub = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    log_path = tmp_path / "z.log"
    with open(log_path, "wb") as log:
        z = subprocess.Popen([sys.executable, "-m", "zfraud", "worker", "--name", "z", "--bind", router, "--pub", pub],
                             stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=limited(40),
                             env={**os.environ, "PYTHONUNBUFFERED": "1", PARENT_ENV: str(os.getpid())})
    ctx = zmq.Context()
    socks = []
    try:
        first = configure(ctx.socket(zmq.DEALER))
        socks.append(first)
        first.connect(router)
        first.send_multipart(P.encode(P.HELLO, {"role": "client"}))
        assert first.poll(15_000), f"z did not answer HELLO:\n{log_path.read_text()}"
        first.recv_multipart()
        for _ in range(60):
            s = configure(ctx.socket(zmq.DEALER))
            s.connect(router)
            socks.append(s)
        end = time.monotonic() + 10
        while "cannot accept a connection" not in log_path.read_text() and time.monotonic() < end:
            time.sleep(0.2)
        first.send_multipart(P.encode(P.HELLO, {"role": "client"}))  # the connection it has still works
        assert first.poll(10_000), log_path.read_text()[-3000:]
        assert P.parse(first.recv_multipart()).command == P.MEMBERS
    finally:
        for s in socks:
            s.close(linger=0)
        ctx.term()
        z.terminate()
        z.wait(15)
    lines = [ln for ln in log_path.read_text().splitlines() if "cannot accept a connection" in ln]
    assert 1 <= len(lines) <= 2, log_path.read_text()[-3000:]
    assert f"on --bind {router}: out of file descriptors (the limit (ulimit -n) is 40)" in lines[0], lines[0]
    assert "ulimit -n" in lines[0]
