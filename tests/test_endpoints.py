"""The endpoints operators give workers and clients, and what each does when it is wrong: ipc
paths (libzmq deletes whatever is at one before it binds), relative paths, a path too long for a
Unix socket, inproc:// and IPv6, which no zfraud process can use."""
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import run_cli

LONG = "ipc:///tmp/" + "x" * 100 + ".sock"  # 111 bytes of path: a Unix socket holds 107


def start_worker(*args, cwd=None):
    """A `zfraud worker` process, once it has logged ready (or has exited)."""
    proc = subprocess.Popen([sys.executable, "-m", "zfraud", "worker", *args], stderr=subprocess.PIPE, text=True,
                            cwd=cwd, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line or "ready name=" in line:
            return proc, line
    proc.kill()
    pytest.fail("the worker neither started nor exited within 30 s")


def stop(proc, sig=signal.SIGTERM):
    proc.send_signal(sig)
    try:
        proc.communicate(timeout=30)
    finally:
        proc.kill()
    return proc.returncode


def test_binding_an_ipc_path_never_deletes_a_file_or_takes_a_live_workers_socket(tmp_path):
    """A worker given --pub ipc://…/rules.toml turned the rules file into a socket; a second
    worker on a live worker's ipc paths started, and the first could no longer be reached."""
    rules = tmp_path / "rules.toml"
    rules.write_text("# the operator's rules\n")
    r = run_cli("worker", "--name", "w", "--bind", f"ipc://{tmp_path}/r.sock", "--pub", f"ipc://{rules}", timeout=30)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert (f"cannot bind --pub ipc://{rules}: a file that is not a socket is there, and binding would delete it"
            in r.stderr), r.stderr
    assert rules.read_text() == "# the operator's rules\n"

    router, pub = f"ipc://{tmp_path}/r.sock", f"ipc://{tmp_path}/p.sock"
    first, ready = start_worker("--name", "a", "--bind", router, "--pub", pub)
    assert "ready name=a" in ready, ready
    try:
        r = run_cli("worker", "--name", "b", "--bind", router, "--pub", f"ipc://{tmp_path}/p2.sock", timeout=30)
        assert r.returncode == 1, r.stderr
        assert f"cannot bind --bind {router}: another process (another worker?) listens there" in r.stderr, r.stderr
        status = run_cli("status", "--connect", router, "--json", timeout=30)
        assert status.returncode == 0 and '"name": "a"' in status.stdout, status.stdout + status.stderr
    finally:
        assert stop(first, signal.SIGKILL) == -signal.SIGKILL
    # killed: its socket files stay, and nobody listens at them; a worker started there takes them
    assert os.path.exists(f"{tmp_path}/r.sock")
    again, ready = start_worker("--name", "a", "--bind", router, "--pub", pub)
    assert "ready name=a" in ready, ready
    assert stop(again) == 0


def test_one_ipc_path_for_both_bind_and_pub_is_refused(tmp_path):
    r = run_cli("worker", "--name", "w", "--bind", f"ipc://{tmp_path}/s", "--pub", f"ipc://{tmp_path}/s", timeout=30)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr  # a usage error, as OPERATIONS §10 lists it
    assert f"--bind and --pub are both ipc://{tmp_path}/s: each needs an endpoint of its own" in r.stderr, r.stderr


@pytest.mark.parametrize("name", ["a b", "", "x" * 65, "w/1"])
def test_a_member_name_peers_would_refuse_is_a_usage_error(name):
    r = run_cli("worker", "--name", name, "--bind", "tcp://127.0.0.1:*", "--pub", "tcp://127.0.0.1:*", timeout=30)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "must be 1-64 characters of letters, digits, _ . @ : -" in r.stderr, r.stderr


def test_a_relative_ipc_path_is_advertised_absolute(tmp_path):
    """A worker started with --bind ipc://r.sock advertised ipc://r.sock: a client in another
    directory connected by the absolute path, then found no worker at the relative one."""
    (tmp_path / "w").mkdir()
    proc, ready = start_worker("--name", "rel", "--bind", "ipc://r.sock", "--pub", "ipc://p.sock", cwd=tmp_path / "w")
    try:
        assert f"router=ipc://{tmp_path}/w/r.sock pub=ipc://{tmp_path}/w/p.sock" in ready, ready
        r = run_cli("status", "--connect", f"ipc://{tmp_path}/w/r.sock", timeout=30, cwd="/")
        assert r.returncode == 0 and "rel" in r.stdout and "unreachable" not in r.stdout + r.stderr, r.stdout + r.stderr
    finally:
        assert stop(proc) == 0


def test_a_seed_whose_ipc_path_is_too_long_is_one_line_not_a_hang():
    """The worker hung in Context.term(): the DEALER made for the seed was not closed. Now the
    path is refused before anything opens, as a usage error."""
    t0 = time.monotonic()
    r = run_cli("worker", "--name", "w", "--bind", "tcp://127.0.0.1:0", "--pub", "tcp://127.0.0.1:0",
                "--seed", LONG, timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "--seed 'ipc:///tmp/xxx" in r.stderr and "an ipc path is at most 107 bytes" in r.stderr, r.stderr
    assert time.monotonic() - t0 < 30


@pytest.mark.parametrize("endpoint, why", [
    (LONG, "an ipc path is at most 107 bytes (the system's limit for a Unix socket), this one is 110"),
    ("inproc://zfraud", "inproc:// reaches only sockets of the same process"),
    ("tcp://[::1]:5555", "IPv6 is not enabled; give an IPv4 address or a host name"),
    ("ipc:///tmp/a b", "is not tcp://HOST:PORT (PORT 1-65535) or ipc://PATH (no spaces)"),
])
@pytest.mark.parametrize("command", ["status", "tail"])
def test_a_client_endpoint_no_process_can_reach_is_a_usage_error(command, endpoint, why):
    """A long ipc path gave a traceback (ENAMETOOLONG); inproc:// and IPv6 passed the check and
    then found no worker, whatever listened."""
    r = run_cli(command, "--connect", endpoint, timeout=30)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert why in r.stderr, r.stderr


def test_a_second_connect_is_refused_not_taken_in_place_of_the_first():
    """`status --connect LIVE --connect DEAD` said no worker answered at DEAD: click keeps the last."""
    r = run_cli("status", "--connect", "tcp://127.0.0.1:5555", "--connect", "tcp://127.0.0.1:5556", timeout=30)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert ("Invalid value for '--connect': given 2 times (tcp://127.0.0.1:5555, tcp://127.0.0.1:5556): give one, "
            "any worker's ROUTER; the rest of the mesh is found from it") in r.stderr, r.stderr


def test_a_client_endpoint_from_the_environment_is_checked():
    r = run_cli("status", timeout=30, env={"ZFRAUD_STATUS_CONNECT": "inproc://x"})
    assert r.returncode == 2 and "inproc:// reaches only sockets of the same process" in r.stderr, r.stderr



def test_a_relative_ipc_path_too_long_once_absolute_is_refused_naming_the_option(tmp_path):
    """libzmq bound the short relative path, then the absolute one it is advertised as failed the
    107-byte check, blamed on "member a: router endpoint" after the bind had worked."""
    deep = tmp_path / ("d" * 100)
    deep.mkdir()
    r = run_cli("worker", "--name", "a", "--bind", "ipc://a.r", "--pub", "ipc://a.p", cwd=deep, timeout=30)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "--bind ipc://a.r, as an absolute path, 'ipc://" in r.stderr, r.stderr
    assert "an ipc path is at most 107 bytes" in r.stderr, r.stderr


def test_a_relative_ipc_path_through_a_symlink_is_advertised_where_the_socket_is(tmp_path):
    """ipc://lnk/../r.sock with lnk -> ../run/a: the kernel follows the link, then "..", so the
    socket is in run/; os.path.abspath dropped both and advertised w/r.sock."""
    (tmp_path / "w").mkdir()
    (tmp_path / "run" / "a").mkdir(parents=True)
    (tmp_path / "w" / "lnk").symlink_to("../run/a")
    proc, ready = start_worker("--name", "s", "--bind", "ipc://lnk/../r.sock", "--pub", "ipc://p.sock",
                               cwd=tmp_path / "w")
    try:
        assert f"router=ipc://{tmp_path}/w/lnk/../r.sock" in ready, ready
        assert (tmp_path / "run" / "r.sock").is_socket()
        r = run_cli("status", "--connect", f"ipc://{tmp_path}/w/lnk/../r.sock", timeout=30, cwd="/")
        assert r.returncode == 0 and "unreachable" not in r.stdout + r.stderr, r.stdout + r.stderr
    finally:
        assert stop(proc) == 0


def test_an_empty_abstract_ipc_name_is_a_usage_error():
    for args in (("worker", "--seed", "ipc://@"), ("worker", "--bind", "ipc://@"), ("status", "--connect", "ipc://@")):
        r = run_cli(*args, timeout=30)
        assert r.returncode == 2 and "Traceback" not in r.stderr, (args, r.stderr)
        assert "an abstract ipc name needs at least one character after the @" in r.stderr, (args, r.stderr)


def test_a_client_given_a_list_refuses_a_malformed_entry_at_once():
    """It was refused only after the endpoints before it had timed out (5 s each)."""
    from zfraud import Client

    t0 = time.monotonic()
    with pytest.raises(ValueError, match="inproc:// reaches only sockets of the same process"):
        Client(["tcp://127.0.0.1:9", "inproc://x"], hello_timeout_s=5)
    assert time.monotonic() - t0 < 1


def test_free_port_does_not_hand_out_a_port_twice_in_a_row():
    """Two calls could return the same port: a LocalMesh worker's --bind and --pub were then
    equal, which a worker now refuses (and LocalMesh retried only "Address already in use")."""
    from zfraud.local import free_port

    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == 200


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_a_seed_started_later_that_joins_through_us_is_not_reported_silent(tmp_path, host):
    """o2 starts first, seeded with o1; o1 starts 4 s later, seeded with o2, and they form a mesh
    at once. o2's DEALER to o1 was still in its reconnect backoff (up to 8 s), so 6 s after its
    start o2 warned that its seed had not answered, with o1 a member: "start order does not
    matter" (OPERATIONS §2.4). The same with the seed written tcp://localhost:P for a member
    advertised as tcp://127.0.0.1:P: the strings differ, the socket is one."""
    from zfraud.local import free_port

    o1, o2 = (f"tcp://127.0.0.1:{free_port()}" for _ in range(2))
    seed = o1.replace("127.0.0.1", host)
    first, ready = start_worker("--name", "o2", "--bind", o2, "--pub", f"tcp://127.0.0.1:{free_port()}", "--seed", seed)
    assert "ready name=o2" in ready, ready
    t0 = time.monotonic()
    try:
        time.sleep(4)
        second, ready = start_worker("--name", "o1", "--bind", o1, "--pub", f"tcp://127.0.0.1:{free_port()}",
                                     "--seed", o2)
        assert "ready name=o1" in ready, ready
        time.sleep(max(0.0, 9 - (time.monotonic() - t0)))  # past the 6 s warning, within 8 s of backoff
        assert stop(second) == 0
    finally:
        first.send_signal(signal.SIGTERM)
        _, log = first.communicate(timeout=30)
    assert "has not answered" not in log, log
    assert f"member joined name=o1 router={o1}" in log and f"joined: seed {seed} is member o1" in log, log
