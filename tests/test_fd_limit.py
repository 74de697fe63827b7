"""Out of file descriptors (`ulimit -n`): clients say so in one line, a worker keeps scoring and
says so in its log, at most once per 10 s. Real processes started under a low RLIMIT_NOFILE."""
import resource
import subprocess
import sys

import pytest

from zfraud.local import LocalMesh


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


@pytest.mark.parametrize("n", [14, 16])
def test_tail_out_of_descriptors_says_so_in_one_line(mesh6, n):
    assert_one_line(run_limited(n, "tail", "--connect", mesh6.endpoint, "--timeout", "2"), n)
