"""Shared fixtures: real worker processes on free loopback ports, sockets that wait with timeouts."""
import os
import subprocess
import sys

import pytest
import zmq

from zfraud import protocol as P
from zfraud.local import LocalMesh
from zfraud.sockets import configure


@pytest.fixture(scope="module")
def mesh2(tmp_path_factory):
    """Two real worker processes that have found each other."""
    with LocalMesh(2, log_dir=str(tmp_path_factory.mktemp("mesh2"))) as mesh:
        yield mesh


@pytest.fixture
def ctx():
    c = zmq.Context()
    yield c
    c.destroy(linger=0)


def request(ctx, endpoint, frames, timeout_s=5.0):
    """Send raw frames on a fresh DEALER and return the parsed reply; fail instead of hanging."""
    sock = configure(ctx.socket(zmq.DEALER))
    try:
        sock.connect(endpoint)
        sock.send_multipart(frames)
        assert sock.poll(int(timeout_s * 1000)), f"no reply from {endpoint} within {timeout_s} s"
        return P.parse(sock.recv_multipart())
    finally:
        sock.close()


def run_cli(*args, timeout=120, input=None, cwd=None):
    """Run `python -m zfraud ARGS` in a subprocess; returns the CompletedProcess."""
    return subprocess.run([sys.executable, "-m", "zfraud", *args], capture_output=True, text=True,
                          timeout=timeout, input=input, cwd=cwd, env={**os.environ, "PYTHONUNBUFFERED": "1"})
