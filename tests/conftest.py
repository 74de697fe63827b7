"""Shared fixtures: real worker processes on free loopback ports, sockets that wait with timeouts."""
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import zmq

from zfraud import protocol as P
from zfraud.local import LocalMesh
from zfraud.sockets import configure

# Tests send SIGINT to the processes they start, as Ctrl-C would. A shell that starts the run in
# the background (`pytest &`, or a CI step in a non-interactive shell) ignores SIGINT, the
# processes inherit that across exec, and Python then never raises KeyboardInterrupt in them.
# A handler here is reset to the default across exec, so the processes get Ctrl-C again.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


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


def run_cli(*args, timeout=120, input=None, cwd=None, env=None):
    """Run `python -m zfraud ARGS` in a subprocess (env: variables to add); returns the CompletedProcess."""
    return subprocess.run([sys.executable, "-m", "zfraud", *args], capture_output=True, text=True, timeout=timeout,
                          input=input, cwd=cwd, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})


def start_send(endpoint, *args):
    """`zfraud send --json ARGS` to `endpoint`, started in the background."""
    return subprocess.Popen([sys.executable, "-m", "zfraud", "send", "--connect", endpoint, "--json", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc, timeout=120):
    """(exit status, the JSON summary, stderr) of a start_send process."""
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        proc.kill()
    return proc.returncode, json.loads(out.strip().splitlines()[-1]), err


def gen_stream(customers=300, terminals=400, days=40, seed=3) -> dict:
    """A `zfraud gen` history as the columns `train`'s replay and a worker take, time-sorted."""
    from zfraud.gen import generate

    g = generate(customers, terminals, days, seed=seed)
    d = {"tx_id": g["TRANSACTION_ID"].astype(np.uint64), "card": g["CUSTOMER_ID"].astype(np.uint64),
         "terminal": g["TERMINAL_ID"].astype(np.uint64),
         "ts_ms": g["TX_DATETIME"].astype("datetime64[ms]").astype(np.int64),
         "amount": g["TX_AMOUNT"].astype(np.float64), "fraud": g["TX_FRAUD"].astype(np.uint8)}
    d["day"] = d["ts_ms"] // 86_400_000
    return d


@pytest.fixture(scope="module")
def data():
    """gen_stream's history, once per test module."""
    return gen_stream()


@pytest.fixture(scope="module")
def model_path(data, tmp_path_factory):
    """A probe model of `data` (probe_model): no score saturates, so equal scores <=> equal features."""
    path = tmp_path_factory.mktemp("probe") / "probe.json"
    probe_model(path, data)
    return path


def probe_model(path, data):
    """Write a logistic model on zfraud-v6 that tells features apart by its score: every
    coefficient non-zero and scaled by the feature's spread in `data` (train's replay of it), so
    that the logit stays near -3 and no score saturates at 0 or 1 in float32. Equal scores then
    mean equal features, the premise of the bit-identity tests. Returns the model's scores of the
    replayed rows (what a worker must reproduce)."""
    from zfraud.features import FULL, FeatureEngine
    from zfraud.model import LogisticModel, save_model
    from zfraud.train import replay

    X = replay(data, np.ones(len(data["tx_id"]), bool), delay_days=7)
    names = FeatureEngine(FULL).names
    spread = np.nan_to_num(np.nanstd(X, axis=0), nan=1.0) + 1e-3
    rng = np.random.default_rng(0)
    coef = rng.uniform(0.05, 0.3, len(names)) * rng.choice([-1, 1], len(names)) / spread / 4
    m = LogisticModel(names, coef, np.nan_to_num(np.nanmean(X, axis=0)), -3.0, version="probe-1", feature_set=FULL)
    save_model(m, path)
    scores = m.predict_proba(X).astype(np.float32)
    assert 0 < scores.min() and scores.max() < 1 and len(np.unique(scores)) > 0.9 * len(scores)
    return scores
