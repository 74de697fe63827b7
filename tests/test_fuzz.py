"""Fuzz a live worker with hypothesis-generated frames: it answers everything it can, never dies,
and a normal send afterwards is fully answered."""
import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zfraud import Client
from zfraud import protocol as P
from zfraud.local import LocalMesh
from zfraud.scoring import ahead_ts_ms
from zfraud.sockets import configure
from zfraud.synthetic import synthetic

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    with LocalMesh(1, log_dir=str(tmp_path_factory.mktemp("fuzz"))) as m:
        yield m


@pytest.fixture(scope="module")
def dealer(mesh):
    ctx = zmq.Context()
    sock = configure(ctx.socket(zmq.DEALER))
    sock.connect(mesh.endpoint)
    yield sock
    sock.close()
    ctx.term()


def exchange(sock, frames, timeout_ms=3000):
    """Send frames; return the parsed reply (every request the worker can read gets exactly one)."""
    sock.send_multipart(frames)
    assert sock.poll(timeout_ms), f"no reply to {[bytes(f)[:20] for f in frames]}"
    return P.parse(sock.recv_multipart())


scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70).filter(lambda x: -2**63 <= x < 2**64),
                    st.floats(allow_nan=True), st.text(max_size=20), st.binary(max_size=20))
headers = st.dictionaries(st.sampled_from(["batch", "attempt", "rows", "columns", "op", "role", "name", "router",
                                           "pub", "t", "deadline_ms", "x"]),
                          st.one_of(scalars, st.lists(scalars, max_size=6)), max_size=8)


@SETTINGS
@given(frames=st.lists(st.binary(max_size=64), min_size=1, max_size=8))
def test_random_bytes(mesh, dealer, frames):
    if len(frames) >= 2 and frames[0] == P.VERSION and frames[1] in P.COMMANDS:
        frames[1] = b"X" + frames[1]
    reply = exchange(dealer, frames)
    assert reply.command == P.ERROR and reply.header["code"] in (P.BAD_FRAMES, P.BAD_VERSION, P.BAD_COMMAND)


@SETTINGS
@given(command=st.sampled_from(sorted(P.COMMANDS)), header=headers,
       extra=st.lists(st.binary(max_size=80), max_size=7))
def test_random_headers_and_columns(mesh, dealer, command, header, extra):
    if header.get("role") == "worker":
        header["role"] = "client"  # do not let the fuzzer invent members that clients would route to
    reply = exchange(dealer, [P.VERSION, command, P.pack(header), *extra])
    assert reply.command in (P.ERROR, P.MEMBERS, P.HEARTBEAT, P.CONTROL, P.RESULT)
    if reply.command == P.ERROR:
        assert reply.header["code"] and reply.header["message"]


values = st.floats(allow_nan=True, allow_infinity=True, width=64)


@SETTINGS
@given(n=st.integers(1, 300), amounts=st.lists(values, min_size=1, max_size=300),
       ts=st.lists(st.integers(-2**63, 2**63 - 1), min_size=1, max_size=300),
       rows_delta=st.sampled_from([0, 0, 0, -1, 1, 10**6]), dtype_swap=st.booleans())
def test_hostile_batches(mesh, dealer, n, amounts, ts, rows_delta, dtype_swap):
    cols = next(synthetic(n, batch=n, seed=n))
    cols["amount"] = np.resize(np.array(amounts, dtype=np.float64), n)
    cols["ts_ms"] = np.resize(np.array(ts, dtype=np.int64), n)
    frames = P.batch_message(n, 0, cols)
    header = P.unpack(frames[2])
    header["rows"] = n + rows_delta
    if dtype_swap:
        header["columns"][4][1] = "<f4"
    frames[2] = P.pack(header)
    ahead = ahead_ts_ms()  # (the worker's, a moment later, is at most a few ms more)
    reply = exchange(dealer, frames)
    if rows_delta or dtype_swap:
        assert reply.command == P.ERROR and reply.header["code"] in (P.BAD_COLUMN, P.BAD_HEADER, P.BAD_SCHEMA)
        return
    assert reply.command == P.RESULT and reply.header["rows"] == n
    v = P.read_columns(reply.frames, n, P.VERDICT_COLUMNS)
    amount, t = cols["amount"], cols["ts_ms"]
    bad = ~np.isfinite(amount) | (amount < 0) | (amount > 1e12) | (t < 946_684_800_000) | (t >= ahead)
    np.testing.assert_array_equal(v["decision"] == P.REJECTED, bad)  # exactly the bad rows, no others
    np.testing.assert_array_equal(v["tx_id"], cols["tx_id"])


def test_still_serving_after_the_fuzzing(mesh):
    with Client(mesh.endpoint) as c:
        s = c.stream(synthetic(20000, batch=1000))
        status = c.control("w1", "status")["status"]
    assert (s.verdicts, s.lost) == (20000, 0)
    assert status["errors"] > 100  # the fuzzing reached it, and it kept going
    assert mesh.procs["w1"].poll() is None
