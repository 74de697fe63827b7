"""CURVE + ZAP on real sockets (127.0.0.1, random ports); every wait has a timeout."""
import os
import shutil
import socket
import stat
import time

import pytest
import zmq

from zfraud.security import (MSG_AUTH, MSG_ENCRYPTION, Curve, Policy, SecurityError, check_handshake,
                             describe_handshake_failure, keys_init)

LOOPBACK = "tcp://127.0.0.1"


@pytest.fixture
def ctx():
    c = zmq.Context()
    yield c
    c.destroy(linger=0)


@pytest.fixture
def keydir(tmp_path):
    d = tmp_path / "mesh"
    keys_init(d)
    return d


@pytest.fixture
def worker(ctx, keydir):
    """A worker's Curve with its authenticator running on `ctx`; stopped before ctx goes."""
    curve = Curve.from_dir(keydir, "worker")
    curve.start_authenticator(ctx)
    yield curve
    curve.stop()


def sock(ctx, kind):
    s = ctx.socket(kind)
    s.linger = 0
    s.sndtimeo = s.rcvtimeo = 3000  # a blocking call that would hang fails instead
    return s


def try_send(s, body):
    """Send without blocking. After an AUTH or PROTOCOL handshake failure libzmq drops the
    connection's pipe and never reconnects: a DEALER then has no peer and a blocking send waits
    forever (zmq.Again here), or, if the pipe is not gone yet, the message is queued and lost."""
    try:
        s.send(body, zmq.NOBLOCK)
    except zmq.Again:
        pass


def router(ctx, curve):
    """A CURVE-server ROUTER on a random loopback port; returns (socket, endpoint)."""
    s = curve.server(sock(ctx, zmq.ROUTER))
    port = s.bind_to_random_port(LOOPBACK)
    return s, f"{LOOPBACK}:{port}"


def nothing_arrives(s, seconds=2.0):
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if s.poll(int(left * 1000) + 1):
            return False
    return True


def echo_round_trip(ctx, server, client_sock, timeout_ms=3000):
    client_sock.send(b"ping")
    assert server.poll(timeout_ms), "the worker got nothing"
    ident, body = server.recv_multipart()
    assert body == b"ping"
    server.send_multipart([ident, b"pong"])
    assert client_sock.poll(timeout_ms), "the client got no reply"
    return client_sock.recv()


# -- keys_init ------------------------------------------------------------------------------
def test_keys_init_files_and_modes(tmp_path):
    d = tmp_path / "new" / "keys"
    paths = keys_init(d)
    assert set(paths) == {"worker.key", "worker.key_secret", "client.key", "client.key_secret"}
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    for name, path in paths.items():
        assert os.path.dirname(path) == str(d)
        mode = stat.S_IMODE(os.stat(path).st_mode)
        assert mode == (0o600 if name.endswith("_secret") else 0o644), (name, oct(mode))
    assert sorted(os.listdir(d)) == sorted(paths)  # no scratch directory left behind
    for role in ("worker", "client"):  # readable by pyzmq, and the pairs belong together
        public, secret = zmq.auth.load_certificate(paths[f"{role}.key_secret"])
        assert zmq.auth.load_certificate(paths[f"{role}.key"]) == (public, None)
        assert zmq.curve_public(secret) == public


def test_keys_init_refuses_to_overwrite(keydir):
    before = {f: (keydir / f).read_bytes() for f in os.listdir(keydir)}
    with pytest.raises(SecurityError, match=r"worker\.key already exists"):
        keys_init(keydir)
    assert {f: (keydir / f).read_bytes() for f in os.listdir(keydir)} == before
    (keydir / "worker.key").unlink()
    (keydir / "worker.key_secret").unlink()
    with pytest.raises(SecurityError, match=r"client\.key already exists"):  # any one file is enough
        keys_init(keydir)
    keys_init(keydir, force=True)
    assert (keydir / "client.key_secret").read_bytes() != before["client.key_secret"]
    assert stat.S_IMODE(os.stat(keydir / "client.key_secret").st_mode) == 0o600


# -- loading --------------------------------------------------------------------------------
@pytest.mark.parametrize("role, missing", [("worker", "worker.key_secret"), ("worker", "worker.key"),
                                           ("client", "client.key_secret"), ("client", "client.key"),
                                           ("client", "worker.key")])
def test_missing_file_names_it(keydir, role, missing):
    (keydir / missing).unlink()
    with pytest.raises(SecurityError) as err:
        Curve.from_dir(keydir, role)
    assert str(keydir / missing) in str(err.value)
    assert "zfraud keys init" in str(err.value)


def test_missing_directory(tmp_path):
    with pytest.raises(SecurityError, match="zfraud keys init"):
        Curve.from_dir(tmp_path / "nowhere", "client")


@pytest.mark.parametrize("text, problem", [
    ("not a certificate\n", "no public key"),
    ('curve\n    public-key = "tooshort"\n', "malformed public key"),
    ('curve\n    public-key = "' + "~" * 40 + '"\n', "malformed public key"),
])
def test_malformed_public_key(keydir, text, problem):
    (keydir / "worker.key").write_text(text)
    with pytest.raises(SecurityError, match=problem) as err:
        Curve.from_dir(keydir, "client")
    assert str(keydir / "worker.key") in str(err.value)


def test_mismatched_keypair(keydir, tmp_path):
    keys_init(tmp_path / "other")
    shutil.copy(tmp_path / "other" / "client.key", keydir / "client.key")
    with pytest.raises(SecurityError, match="does not match"):
        Curve.from_dir(keydir, "client")


def test_secret_file_without_secret(keydir):
    shutil.copy(keydir / "client.key", keydir / "client.key_secret")
    with pytest.raises(SecurityError, match="no secret key") as err:
        Curve.from_dir(keydir, "client")
    assert "client.key_secret" in str(err.value)


def test_unknown_role(keydir):
    with pytest.raises(SecurityError, match="unknown CURVE role"):
        Curve.from_dir(keydir, "admin")


def test_repr_hides_secret(keydir):
    curve = Curve.from_dir(keydir, "client")
    _, secret = zmq.auth.load_certificate(keydir / "client.key_secret")
    assert secret.decode() not in repr(curve)


def test_policy_admits_every_public_key(keydir, tmp_path):
    keys_init(tmp_path / "other")
    shutil.copy(tmp_path / "other" / "client.key", keydir / "partner.key")
    admitted = Policy(str(keydir)).admitted()
    expected = {zmq.auth.load_certificate(keydir / f)[0] for f in ("worker.key", "client.key", "partner.key")}
    assert admitted == expected
    (keydir / "broken.key").write_text("garbage\n")
    with pytest.raises(SecurityError, match="broken.key"):
        Policy(str(keydir)).admitted()


def test_hidden_key_files_are_ignored(ctx, keydir, tmp_path):
    """pyzmq's loader globs *.key, which skips hidden files: zfraud must list the same files, else
    the two sets never agree and the authenticator refuses to start ("keys changed while loading")."""
    bob = tmp_path / "bob"
    keys_init(bob)
    shutil.copy(keydir / "worker.key", bob / "worker.key")
    shutil.copy(bob / "client.key", keydir / ".bob.key")  # a valid key under a hidden name
    expected = {zmq.auth.load_certificate(keydir / f)[0] for f in ("worker.key", "client.key")}
    assert Policy(str(keydir)).admitted() == expected
    with Curve.from_dir(keydir, "worker") as curve:
        curve.start_authenticator(ctx)
        assert curve.reload() == expected
        server, endpoint = router(ctx, curve)
        assert check_handshake(Curve.from_dir(bob, "client").client(sock(ctx, zmq.DEALER)), endpoint) == MSG_AUTH
        assert check_handshake(Curve.from_dir(keydir, "client").client(sock(ctx, zmq.DEALER)), endpoint) is None


def test_start_skips_a_malformed_client_key_and_reload_keeps_the_keys(ctx, keydir, tmp_path, caplog):
    """Starting, a malformed client key file is logged and left out (that client is refused, the
    others are admitted); a reload that meets it raises and keeps the keys in force."""
    carol = tmp_path / "carol"
    keys_init(carol)
    shutil.copy(keydir / "worker.key", carol / "worker.key")
    (keydir / "carol.key").write_text("# half-copied certificate\nmetadata\n")
    expected = {zmq.auth.load_certificate(keydir / f)[0] for f in ("worker.key", "client.key")}
    with Curve.from_dir(keydir, "worker") as curve, caplog.at_level("WARNING", "zfraud.security"):
        curve.start_authenticator(ctx)
        assert [r.getMessage() for r in caplog.records] == [
            f"{keydir / 'carol.key'}: no public key found; expected a zmq certificate (`zfraud keys init "
            f"{keydir}` writes them); that key is not admitted, the others are"]
        assert {d: set(c) for d, c in curve.authenticator.certs.items()} == {"*": expected, "zfraud": expected}
        server, endpoint = router(ctx, curve)
        assert check_handshake(Curve.from_dir(carol, "client").client(sock(ctx, zmq.DEALER)), endpoint) == MSG_AUTH
        client = Curve.from_dir(keydir, "client").client(sock(ctx, zmq.DEALER))
        assert check_handshake(client, endpoint) is None
        assert echo_round_trip(ctx, server, client) == b"pong"
        with pytest.raises(SecurityError, match="carol.key: no public key"):
            curve.reload()
        assert set(curve.authenticator.certs["zfraud"]) == expected


@pytest.mark.parametrize("broken", ["worker.key", "worker.key_secret"])
def test_start_stops_at_a_malformed_worker_key(ctx, keydir, broken):
    (keydir / broken).write_text("# half-copied certificate\n")
    with pytest.raises(SecurityError, match=f"{broken}: no public key found"):
        Curve.from_dir(keydir, "worker").start_authenticator(ctx)


# -- order of operations ------------------------------------------------------------------------
def test_server_needs_an_authenticator(ctx, keydir):
    curve = Curve.from_dir(keydir, "worker")
    with pytest.raises(SecurityError, match="start_authenticator"):
        curve.server(sock(ctx, zmq.ROUTER))
    with pytest.raises(SecurityError, match="only the worker"):
        Curve.from_dir(keydir, "client").server(sock(ctx, zmq.ROUTER))


def test_one_authenticator_per_context(ctx, keydir, worker):
    assert worker.start_authenticator(ctx) is worker.authenticator  # idempotent for its owner
    with pytest.raises(SecurityError, match="one per context"):
        Curve.from_dir(keydir, "worker").start_authenticator(ctx)


def test_configure_before_bind_or_connect(ctx, keydir, worker):
    s = sock(ctx, zmq.ROUTER)
    s.bind_to_random_port(LOOPBACK)
    with pytest.raises(SecurityError, match="before the socket binds or connects"):
        worker.server(s)
    c = sock(ctx, zmq.DEALER)
    c.connect(f"{LOOPBACK}:1")
    with pytest.raises(SecurityError, match="before the socket binds or connects"):
        Curve.from_dir(keydir, "client").client(c)


# -- handshakes on real sockets ----------------------------------------------------------------
def test_mesh_keys_round_trip(ctx, keydir, worker):
    server, endpoint = router(ctx, worker)
    client = Curve.from_dir(keydir, "client").client(sock(ctx, zmq.DEALER))
    assert check_handshake(client, endpoint, timeout_s=5) is None
    assert echo_round_trip(ctx, server, client) == b"pong"
    # the worker sees who it talks to: User-Id is the client's Z85 public key
    client.send(b"who")
    assert server.poll(3000)
    frames = server.recv_multipart(copy=False)
    assert frames[-1].get("User-Id") == zmq.auth.load_certificate(keydir / "client.key")[0].decode()


def test_worker_to_worker_uses_worker_keys(ctx, keydir, worker):
    server, endpoint = router(ctx, worker)
    peer = worker.client(sock(ctx, zmq.DEALER))  # a worker's DEALER to another worker
    assert check_handshake(peer, endpoint, timeout_s=5) is None
    assert echo_round_trip(ctx, server, peer) == b"pong"


def test_plain_client_is_refused(ctx, worker):
    server, endpoint = router(ctx, worker)
    plain = sock(ctx, zmq.DEALER)
    t0 = time.monotonic()
    problem = check_handshake(plain, endpoint, timeout_s=2)
    assert time.monotonic() - t0 < 1.0  # detected at once, not by timeout
    assert problem is not None and problem.startswith(MSG_ENCRYPTION)
    assert "--curve-dir" in problem
    try_send(plain, b"let me in")
    assert nothing_arrives(server, 2.0)


def test_foreign_client_key_is_refused_by_zap(ctx, keydir, worker, tmp_path):
    other = tmp_path / "other"
    keys_init(other)  # a keypair the mesh never saw ...
    shutil.copy(keydir / "worker.key", other / "worker.key")  # ... that knows the worker's public key
    foreign = Curve.from_dir(other, "client").client(sock(ctx, zmq.DEALER))
    server, endpoint = router(ctx, worker)
    t0 = time.monotonic()
    assert check_handshake(foreign, endpoint, timeout_s=2) == MSG_AUTH
    assert time.monotonic() - t0 < 1.0
    try_send(foreign, b"let me in")
    assert nothing_arrives(server, 2.0)


def test_refused_client_does_not_reconnect(ctx, keydir, worker, tmp_path):
    other = tmp_path / "other"
    keys_init(other)
    shutil.copy(keydir / "worker.key", other / "worker.key")
    foreign = Curve.from_dir(other, "client").client(sock(ctx, zmq.DEALER))
    _server, endpoint = router(ctx, worker)
    assert check_handshake(foreign, endpoint, timeout_s=2) == MSG_AUTH
    monitor = foreign.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_CONNECT_RETRIED)
    try:  # libzmq gives up on the endpoint: fixing the keys needs a new socket
        assert not monitor.poll(1000)
    finally:
        foreign.disable_monitor()
        monitor.close(linger=0)


def test_reload_admits_a_new_key(ctx, keydir, worker, tmp_path):
    other = tmp_path / "other"
    keys_init(other)
    shutil.copy(keydir / "worker.key", other / "worker.key")
    server, endpoint = router(ctx, worker)
    assert check_handshake(Curve.from_dir(other, "client").client(sock(ctx, zmq.DEALER)), endpoint) == MSG_AUTH
    shutil.copy(other / "client.key", keydir / "partner.key")
    worker.reload()
    partner = Curve.from_dir(other, "client").client(sock(ctx, zmq.DEALER))
    assert check_handshake(partner, endpoint, timeout_s=5) is None
    assert echo_round_trip(ctx, server, partner) == b"pong"


def test_wrong_worker_key_is_an_encryption_failure(ctx, worker, tmp_path):
    keys_init(tmp_path / "other")  # another mesh altogether
    stranger = Curve.from_dir(tmp_path / "other", "client").client(sock(ctx, zmq.DEALER))
    server, endpoint = router(ctx, worker)
    problem = check_handshake(stranger, endpoint, timeout_s=2)
    assert problem is not None and problem.startswith(MSG_ENCRYPTION)
    try_send(stranger, b"let me in")
    assert nothing_arrives(server, 1.0)


def test_curve_client_to_plain_server(ctx, keydir):
    plain = sock(ctx, zmq.ROUTER)
    port = plain.bind_to_random_port(LOOPBACK)
    client = Curve.from_dir(keydir, "client").client(sock(ctx, zmq.DEALER))
    problem = check_handshake(client, f"{LOOPBACK}:{port}", timeout_s=2)
    assert problem is not None and problem.startswith(MSG_ENCRYPTION)


def test_nobody_listening(ctx, keydir):
    with socket.socket() as probe:  # a free port, released synchronously (a zmq close is not)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = Curve.from_dir(keydir, "client").client(sock(ctx, zmq.DEALER))
    problem = check_handshake(client, f"{LOOPBACK}:{port}", timeout_s=0.5)
    assert "could not connect" in problem


def test_check_handshake_leaves_monitor_slot_free(ctx, keydir, worker):
    routers = router(ctx, worker), router(ctx, worker)  # held to the end: both sockets stay open
    (_, endpoint), (_, second) = routers
    client = Curve.from_dir(keydir, "client").client(sock(ctx, zmq.DEALER))
    assert check_handshake(client, endpoint, timeout_s=5) is None
    assert check_handshake(client, second, timeout_s=5) is None  # the same socket, monitored again
    # Keep a reference to the monitor until after disable_monitor(): pyzmq drops its own first, and
    # a PAIR collected at that moment leaves libzmq's blocking MONITOR_STOPPED send hanging forever.
    own = client.get_monitor_socket()
    try:
        with pytest.raises(ValueError, match="already has a monitor"):
            check_handshake(client, endpoint)
    finally:
        client.disable_monitor()
        own.close(linger=0)


def test_check_handshake_ignores_other_connections(ctx, keydir, tmp_path):
    keys_init(tmp_path / "other")  # another mesh's worker, in a context of its own
    other_ctx = zmq.Context()
    other = Curve.from_dir(tmp_path / "other", "worker")
    try:
        other.start_authenticator(other_ctx)
        stranger, stranger_endpoint = router(other_ctx, other)
        client = Curve.from_dir(keydir, "client").client(sock(ctx, zmq.DEALER))
        client.connect(stranger_endpoint)  # wrong server key: fails again on every reconnect
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            free = f"{LOOPBACK}:{probe.getsockname()[1]}"
        # the stranger's failures are not this endpoint's: the check must not report them
        assert "could not connect" in check_handshake(client, free, timeout_s=0.6)
    finally:
        other.stop()
        other_ctx.destroy(linger=0)


def test_socket_type_mismatch_looks_like_an_encryption_failure(ctx, keydir, worker):
    _server, endpoint = router(ctx, worker)  # SUB -> ROUTER is not a valid pair: the ROUTER hangs up
    sub = Curve.from_dir(keydir, "client").client(sock(ctx, zmq.SUB))
    assert check_handshake(sub, endpoint, timeout_s=2).startswith(MSG_ENCRYPTION)


def test_pub_sub_with_curve(ctx, keydir, worker, tmp_path):
    pub = worker.server(sock(ctx, zmq.PUB))
    endpoint = f"{LOOPBACK}:{pub.bind_to_random_port(LOOPBACK)}"
    sub = Curve.from_dir(keydir, "client").client(sock(ctx, zmq.SUB))
    sub.setsockopt(zmq.SUBSCRIBE, b"verdict.")
    assert check_handshake(sub, endpoint, timeout_s=5) is None
    deadline = time.monotonic() + 5  # the subscription travels after the handshake: publish until seen
    while time.monotonic() < deadline:
        pub.send_multipart([b"verdict.decline", b"tx-1"])
        if sub.poll(50):
            break
    assert sub.recv_multipart(zmq.NOBLOCK) == [b"verdict.decline", b"tx-1"]

    keys_init(tmp_path / "other")
    shutil.copy(keydir / "worker.key", tmp_path / "other" / "worker.key")
    eavesdropper = Curve.from_dir(tmp_path / "other", "client").client(sock(ctx, zmq.SUB))
    eavesdropper.setsockopt(zmq.SUBSCRIBE, b"")
    assert check_handshake(eavesdropper, endpoint, timeout_s=2) == MSG_AUTH
    for _ in range(20):
        pub.send_multipart([b"verdict.decline", b"tx-2"])
    assert nothing_arrives(eavesdropper, 1.0)


# -- describing events ------------------------------------------------------------------------
def test_describe_events():
    assert describe_handshake_failure({"event": zmq.EVENT_HANDSHAKE_FAILED_AUTH, "value": 400}) == MSG_AUTH
    assert "ZAP status 500" in describe_handshake_failure({"event": zmq.EVENT_HANDSHAKE_FAILED_AUTH, "value": 500})
    mismatch = {"event": zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, "value": zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH}
    assert describe_handshake_failure(mismatch).startswith(MSG_ENCRYPTION)
    crypto = {"event": zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, "value": zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC}
    assert "ZMTP_CRYPTOGRAPHIC" in describe_handshake_failure(crypto)
    assert describe_handshake_failure({"event": zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, "value": 32}).startswith(
        MSG_ENCRYPTION)
    assert describe_handshake_failure({"event": zmq.EVENT_HANDSHAKE_SUCCEEDED, "value": 0}) is None
    assert describe_handshake_failure({"event": zmq.EVENT_DISCONNECTED, "value": 7}) is None
