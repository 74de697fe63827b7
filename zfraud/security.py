"""CURVE encryption and client authentication for the mesh (ZMTP 3 CURVE + ZAP, "ironhouse").

One directory holds the mesh's keys, in the files `zmq.auth.create_certificates` writes:

    worker.key          public key of the workers (every worker shares one keypair)     0644
    worker.key_secret   public + secret key of the workers; only on worker machines     0600
    client.key          public key of the clients                                        0644
    client.key_secret   public + secret key of the clients; only on client machines      0600
    <other>.key         any further public key the workers should admit                   0644

`zfraud keys init DIR` (`keys_init`) writes the four files. Sockets that bind (a worker's ROUTER
and PUB) are CURVE servers; sockets that connect (DEALER, SUB; also a worker's own DEALER/SUB to
other workers, with the worker keypair) are CURVE clients of `worker.key`:

    curve = Curve.from_dir(DIR, "worker")
    curve.start_authenticator(ctx)         # before the first bind: one per context
    curve.server(router); router.bind(...)
    ...
    curve.stop()                           # before ctx.term(); or use `with curve:`

Who is admitted is decided by `Policy` (a plain object): every public key in DIR/*.key (hidden
files, whose names start with a dot, are ignored, as pyzmq's loader does), for the ZAP domain
"zfraud" and the default domain. A ZAP handler is what turns CURVE from "encrypted" into
"encrypted and authenticated": without one libzmq admits any client that knows worker.key, so
`server()` refuses to configure a socket whose context has no running authenticator.

Handshake outcomes, observed with libzmq 4.3.5 / pyzmq 27.3 on loopback (tests/test_security.py),
as socket-monitor events on the *connecting* side:

    * mesh keys, admitted:                   HANDSHAKE_SUCCEEDED (value 0), ~2-3 ms after connect.
    * CURVE client, key not in DIR/*.key:    HANDSHAKE_FAILED_AUTH, value 400 (the ZAP status
      code), ~2-4 ms. The worker sees the same event. libzmq treats it as a protocol error: the
      client does NOT reconnect, so anything queued on that pipe is never delivered.
    * plain (NULL) client -> CURVE worker,   HANDSHAKE_FAILED_PROTOCOL, value 0x11000002
      or CURVE client -> plain worker:       (PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH), ~1 ms, on
      both sides; no reconnect either.
    * CURVE client with another mesh's       client: HANDSHAKE_FAILED_NO_DETAIL (value = errno,
      worker.key (wrong server key):         e.g. 32 EPIPE); worker: HANDSHAKE_FAILED_PROTOCOL
                                             0x11000001 (ZMTP_CRYPTOGRAPHIC, it cannot open the
      HELLO box). ~1 ms, and the client DOES reconnect, failing again every RECONNECT_IVL.

`describe_handshake_failure(event)` turns any of these events into a one-line explanation;
`check_handshake(sock, endpoint, timeout_s)` connects a fresh socket and waits for the verdict.
"""
from __future__ import annotations

import itertools
import logging
import os
import shutil
import socket
import stat
import tempfile
import time
import weakref
from dataclasses import dataclass
from urllib.parse import urlsplit

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85
from zmq.utils.monitor import recv_monitor_message

from .mesh import check_endpoint

__all__ = ["Curve", "Policy", "SecurityError", "keys_init", "load_public", "load_keypair",
           "describe_handshake_failure", "check_handshake", "HANDSHAKE_EVENTS", "ZAP_DOMAIN",
           "MSG_AUTH", "MSG_ENCRYPTION"]

log = logging.getLogger("zfraud.security")

ROLES = ("worker", "client")
ZAP_DOMAIN = "zfraud"  # set on every server socket; the policy covers it and the default domain
SECRET_MODE, PUBLIC_MODE, DIR_MODE = 0o600, 0o644, 0o700

# Monitor events that end a handshake, for sockets that keep a monitor of their own.
HANDSHAKE_EVENTS = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
                    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)

MSG_AUTH = ("the mesh does not know this client's key: add its client.key to the workers' curve "
            "directory or use the mesh's keys")
MSG_ENCRYPTION = ("CURVE handshake failed: the worker and this client disagree on encryption "
                  "(is --curve-dir given on both sides, with the same worker.key?)")


class SecurityError(ValueError):
    """Keys are missing, malformed or in the way, or CURVE is set up in the wrong order.
    The message names the file and what to run."""


# -- key files ---------------------------------------------------------------------------------
def _key_files(name: str) -> tuple[str, str]:
    return f"{name}.key", f"{name}.key_secret"


def keys_init(directory, force: bool = False) -> dict[str, str]:
    """Create the mesh's keypairs in `directory`: worker.key / worker.key_secret and
    client.key / client.key_secret (zmq.auth.create_certificates format).

    The directory is created with mode 0700 if missing; secret files get 0600, public ones 0644.
    The files are written in a private (0700) scratch directory and renamed into place, so no
    secret is ever readable by others, whatever the umask. Existing keys are never overwritten
    unless `force` (which locks out every process that holds the old keys).

    Returns {file name: path} for the four files.
    """
    directory = os.fspath(directory)
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise SecurityError(f"{directory} exists and is not a directory; give `zfraud keys init` a directory")
    names = [f for role in ROLES for f in _key_files(role)]
    paths = {f: os.path.join(directory, f) for f in names}
    if not force:
        for f, path in paths.items():
            if os.path.lexists(path):
                raise SecurityError(f"{path} already exists: refusing to overwrite the mesh's keys "
                                    f"(use `zfraud keys init --force {directory}` to replace them; "
                                    f"every worker and client must then get the new files)")
    if not os.path.isdir(directory):
        os.makedirs(directory, mode=DIR_MODE)
        os.chmod(directory, DIR_MODE)  # makedirs honours the umask; the mode must not
    scratch = tempfile.mkdtemp(prefix=".keys-", dir=directory)  # mkdtemp: mode 0700
    try:
        for role in ROLES:
            public, secret = zmq.auth.create_certificates(scratch, role)
            os.chmod(secret, SECRET_MODE)  # create_certificates leaves the mode to the umask
            os.chmod(public, PUBLIC_MODE)
        for f, path in paths.items():
            os.replace(os.path.join(scratch, f), path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    log.info("wrote CURVE keys to %s", directory)
    return paths


def _missing(path: str, directory: str) -> SecurityError:
    return SecurityError(f"{path} is missing: run `zfraud keys init {directory}` to create the mesh's "
                         f"keys, or copy {os.path.basename(path)} from the machine that did")


def _z85_key(raw, path: str, what: str, directory: str) -> bytes:
    """A Z85 key as read from `path`, checked: 40 Z85 characters that decode to 32 bytes."""
    if raw is None:
        raise SecurityError(f"{path}: no {what} found; expected a zmq certificate "
                            f"(`zfraud keys init {directory}` writes them)")
    try:
        ok = len(raw) == 40 and len(z85.decode(raw)) == 32
    except (ValueError, KeyError, IndexError, TypeError):
        ok = False
    if not ok:
        raise SecurityError(f"{path}: malformed {what}: expected 40 Z85 characters, got {raw[:48]!r} "
                            f"({len(raw)} characters); rewrite it with `zfraud keys init --force {directory}`")
    return bytes(raw)


def _unreadable(path: str, e: OSError) -> SecurityError:
    """A key file or directory there but not ours to read (its mode, a disk error): a
    SecurityError, which a running worker's reload logs while it keeps its keys (an OSError
    stopped the worker)."""
    return SecurityError(f"cannot read {path}: {e.strerror or e}")


def public_key_files(directory: str) -> list[str]:
    """The names of the public key files in `directory`, sorted: `*.key`, hidden files excluded.
    The rule of pyzmq's loader (zmq.auth.load_certificates globs `*.key`, and a glob skips
    names that start with a dot), so that what zfraud checks is what pyzmq loads."""
    try:
        names = os.listdir(directory)
    except OSError as e:
        raise _unreadable(directory, e) from None
    return sorted(f for f in names if f.endswith(".key") and not f.startswith("."))


def load_public(path: str, directory: str) -> bytes:
    """The Z85 public key in a certificate file, checked; SecurityError naming the file if not."""
    try:
        regular = stat.S_ISREG(os.stat(path).st_mode)
    except FileNotFoundError:
        regular = False
    except OSError as e:  # not "missing": there, but not ours to read (a directory without x, say)
        raise _unreadable(path, e) from None
    if not regular:
        raise _missing(path, directory)
    try:
        public, _ = zmq.auth.load_certificate(path)
    except ValueError:  # pyzmq: "No public key found in ..."
        public = None
    except (OSError, IndexError) as e:  # IndexError: a "public-key" line without "="
        raise SecurityError(f"{path}: unreadable certificate ({type(e).__name__}: {e}); expected the "
                            f"format `zfraud keys init {directory}` writes") from None
    return _z85_key(public, path, "public key", directory)


def load_keypair(path: str, directory: str) -> tuple[bytes, bytes]:
    """(public, secret), Z85, from a *.key_secret file; checks that the two belong together."""
    public = load_public(path, directory)
    try:
        _, secret = zmq.auth.load_certificate(path)
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError as e:
        raise _unreadable(path, e) from None
    secret = _z85_key(secret, path, "secret key", directory)
    if zmq.curve_public(secret) != public:
        raise SecurityError(f"{path}: the public key does not match the secret key; "
                            f"rewrite it with `zfraud keys init --force {directory}`")
    if mode & 0o077:
        log.warning("%s is readable by others (mode %o); run `chmod 600 %s`", path, mode, path)
    return public, secret


# -- who is admitted -------------------------------------------------------------------------
@dataclass(frozen=True)
class Policy:
    """The authentication policy, as data: admit exactly the public keys in `directory`/*.key
    (the czmq/pyzmq convention; hidden files such as `.alice.key` are ignored) for each ZAP domain
    in `domains`.

    pyzmq's Authenticator looks the domain up literally: `configure_curve(domain='*')` covers
    only sockets whose ZAP_DOMAIN is empty, so a socket with zap_domain "zfraud" would get
    "Unknown domain" (ZAP 400) for every client. Hence both domains are configured.
    """
    directory: str
    domains: tuple[str, ...] = ("*", ZAP_DOMAIN)

    def admitted(self, skip_malformed: bool = False) -> frozenset[bytes]:
        """The Z85 public keys admitted, each file checked: a malformed *.key raises here, rather
        than making pyzmq log an error and refuse every client. With `skip_malformed` (a worker
        starting) a malformed key file other than worker.key is logged as a warning and left out
        instead: the client it was meant for is not admitted (fail closed), every other key is."""
        if not os.path.isdir(self.directory):
            raise SecurityError(f"{self.directory} is not a directory: run `zfraud keys init {self.directory}`")
        keys = set()
        for name in public_key_files(self.directory):
            try:
                keys.add(load_public(os.path.join(self.directory, name), self.directory))
            except SecurityError as e:
                if not skip_malformed or name == "worker.key":  # worker.key admits the other workers
                    raise
                log.warning("%s; that key is not admitted, the others are", e)
        return frozenset(keys)

    def install(self, authenticator, keys: frozenset[bytes]) -> frozenset[bytes]:
        """Make a pyzmq Authenticator admit exactly `keys` (from admitted()) for each domain.
        This stores what `configure_curve(domain, location=directory)` would, {key: True}, but of
        the keys checked here: pyzmq's own loader gives up on the whole directory at one malformed
        file (it logs an error and leaves the domain unset, so every client is refused)."""
        for domain in self.domains:
            authenticator.certs[domain] = dict.fromkeys(keys, True)
        return keys

    def apply(self, authenticator) -> frozenset[bytes]:
        """Install the policy in a pyzmq Authenticator; call again after keys are added or removed.
        Strict: a malformed *.key raises SecurityError and the keys installed before stay."""
        return self.install(authenticator, self.admitted())


# -- sockets ---------------------------------------------------------------------------------
_authenticators: "weakref.WeakKeyDictionary[zmq.Context, ThreadAuthenticator]" = weakref.WeakKeyDictionary()


def _unused(sock, what: str) -> None:
    if sock.getsockopt(zmq.LAST_ENDPOINT):
        raise SecurityError(f"{what} must be called before the socket binds or connects "
                            f"(it is already at {sock.getsockopt_string(zmq.LAST_ENDPOINT)})")


class Curve:
    """One process's CURVE identity: its keypair (`role`.key_secret) and the workers' public key.

    `server(sock)` / `client(sock)` configure a socket before bind / connect;
    `start_authenticator(ctx)` runs the ZAP handler for `Policy(directory)`; `stop()` ends it.
    """

    def __init__(self, role: str, public: bytes, secret: bytes, server_key: bytes, directory: str | None = None):
        if role not in ROLES:
            raise SecurityError(f"unknown CURVE role {role!r}; expected one of {', '.join(ROLES)}")
        self.role, self.public, self._secret, self.server_key = role, public, secret, server_key
        self.directory = directory
        self.policy = Policy(directory) if directory is not None else None
        self.authenticator: ThreadAuthenticator | None = None

    @classmethod
    def from_dir(cls, directory, role: str) -> "Curve":
        """Load `role`.key + `role`.key_secret and worker.key from `directory`."""
        if role not in ROLES:
            raise SecurityError(f"unknown CURVE role {role!r}; expected one of {', '.join(ROLES)}")
        directory = os.fspath(directory)
        if not os.path.isdir(directory):
            raise SecurityError(f"{directory} is not a directory of CURVE keys: "
                                f"run `zfraud keys init {directory}` to create one")
        public_file, secret_file = (os.path.join(directory, f) for f in _key_files(role))
        public, secret = load_keypair(secret_file, directory)
        if load_public(public_file, directory) != public:
            raise SecurityError(f"{public_file} does not match {secret_file}: they must come from the same "
                                f"`zfraud keys init {directory}`")
        server_key = public if role == "worker" else load_public(os.path.join(directory, "worker.key"), directory)
        return cls(role, public, secret, server_key, directory)

    def __repr__(self) -> str:  # never the secret key
        return f"Curve(role={self.role!r}, public={self.public.decode()!r}, directory={self.directory!r})"

    # sockets
    def server(self, sock):
        """Make `sock` a CURVE server (before bind). Refuses unless an authenticator runs in the
        socket's context: without one, any client that knows worker.key would be admitted."""
        _unused(sock, "Curve.server()")
        if self.role != "worker":
            raise SecurityError("only the worker keypair can serve CURVE: clients hold no worker.key_secret")
        auth = _authenticators.get(sock.context)
        if auth is None or not auth.is_alive():
            raise SecurityError("start_authenticator(context) must run before Curve.server(): without a ZAP "
                                "handler a CURVE server admits any client that knows worker.key")
        sock.curve_secretkey = self._secret
        sock.curve_publickey = self.public
        sock.curve_server = True
        sock.zap_domain = ZAP_DOMAIN.encode()
        return sock

    def client(self, sock):
        """Make `sock` a CURVE client of the workers (before connect), with this process's keypair."""
        _unused(sock, "Curve.client()")
        sock.curve_secretkey = self._secret
        sock.curve_publickey = self.public
        sock.curve_serverkey = self.server_key
        return sock

    # authenticator
    def start_authenticator(self, context: zmq.Context) -> ThreadAuthenticator:
        """Start a ThreadAuthenticator on `context` admitting only `Policy(directory)`; returns it.
        ZAP is bound per context (inproc://zeromq.zap.01), so there can be one per context."""
        if self.policy is None:
            raise SecurityError("this Curve was built without a key directory; use Curve.from_dir(DIR, role)")
        running = _authenticators.get(context)
        if running is not None and running.is_alive():
            if running is self.authenticator:
                return running
            raise SecurityError("a ZAP authenticator already runs in this context; only one per context "
                                "(share that Curve, or use another zmq.Context)")
        # Every key file is read before a thread starts. A malformed client key is logged and
        # skipped, as a running worker's reload keeps going past one: a restart must not stop at
        # a file that a reload tolerated. worker.key and the keypair (from_dir) are never skipped.
        keys = self.policy.admitted(skip_malformed=True)
        auth = ThreadAuthenticator(context, log=logging.getLogger("zfraud.security.zap"))
        auth.start()
        try:
            self.policy.install(auth, keys)
        except BaseException:
            auth.stop()
            raise
        self.authenticator = _authenticators[context] = auth
        log.info("ZAP authenticator admits %d key(s) from %s", len(keys), self.directory)
        return auth

    def reload(self) -> frozenset[bytes]:
        """Re-read the key directory after a *.key was added or removed. A malformed *.key raises
        SecurityError and leaves the keys in force unchanged (unlike start_authenticator, which
        skips it: a reload has keys to keep)."""
        if self.authenticator is None:
            raise SecurityError("no authenticator to reload: call start_authenticator(context) first")
        return self.policy.apply(self.authenticator)

    def stop(self) -> None:
        """Stop the authenticator (before the context terminates, or term() waits on its sockets)."""
        auth, self.authenticator = self.authenticator, None
        if auth is not None:
            ctx = auth.context
            auth.stop()
            if _authenticators.get(ctx) is auth:
                del _authenticators[ctx]

    def __enter__(self) -> "Curve":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


# -- handshake diagnosis -----------------------------------------------------------------------
_monitor_ids = itertools.count()
_PROTOCOL_ERRORS = {getattr(zmq, n): n[len("PROTOCOL_ERROR_"):] for n in dir(zmq) if n.startswith("PROTOCOL_ERROR_")}


def describe_handshake_failure(event: dict) -> str | None:
    """Explain a monitor event (a `recv_monitor_message` dict) that ends a failed handshake;
    None for any other event, including HANDSHAKE_SUCCEEDED.

    HANDSHAKE_FAILED_AUTH carries the ZAP status code (400: key not admitted).
    HANDSHAKE_FAILED_PROTOCOL carries a PROTOCOL_ERROR_* code (plain vs CURVE gives
    ZMTP_MECHANISM_MISMATCH); HANDSHAKE_FAILED_NO_DETAIL carries an errno: the peer hung up
    (EPIPE/ECONNRESET), which is what a client holding the wrong worker.key sees, and also what
    an invalid socket pair (SUB -> ROUTER) gives, with CURVE or without.
    """
    kind, value = event.get("event"), event.get("value")
    if kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        if value == 400:
            return MSG_AUTH
        return f"the worker's authenticator did not admit this client (ZAP status {value})"
    if kind == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
        if value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
            return MSG_ENCRYPTION + " [one side uses CURVE, the other does not]"
        return MSG_ENCRYPTION + f" [libzmq: {_PROTOCOL_ERRORS.get(value, hex(value or 0))}]"
    if kind == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
        why = os.strerror(value) if value else "no detail"
        return MSG_ENCRYPTION + (f" [the peer hung up during the handshake ({why}); a wrong worker.key "
                                 f"and a socket-type mismatch look the same]")
    return None


def _unreachable_why(endpoint: str) -> str:
    """The likelier reason nothing answered at a tcp endpoint: its host name does not resolve, or
    no worker listens there."""
    parts = urlsplit(endpoint)
    if parts.scheme == "tcp" and parts.hostname:
        try:
            socket.getaddrinfo(parts.hostname, None)
        except (socket.gaierror, UnicodeError) as e:
            return f"the host name {parts.hostname} does not resolve: {getattr(e, 'strerror', None) or e}"
    return "is a worker listening there?"


def check_handshake(sock, endpoint: str, timeout_s: float = 2.0) -> str | None:
    """Connect `sock` to `endpoint` and wait up to `timeout_s` for the handshake's outcome:
    None if it succeeded, otherwise a one-line explanation (see describe_handshake_failure).

    The monitor is attached before connecting: a handshake on loopback ends within a few ms, and
    after an AUTH or PROTOCOL failure libzmq never retries, so a monitor attached after connect()
    could wait for an event that has already gone. After a failure, close the socket. libzmq
    allows one monitor per socket; a socket that keeps its own should pass its events to
    describe_handshake_failure instead (monitor with HANDSHAKE_EVENTS). libzmq ignores a second
    connect() of a DEALER/SUB/PUB/REQ to an endpoint it is already connected to, so checking such
    an endpoint again reports a timeout, not the earlier outcome.
    """
    check_endpoint("endpoint", endpoint)  # ValueError for what libzmq would refuse with a bare EINVAL
    if getattr(sock, "_monitor_socket", None) is not None:  # pyzmq would hand back that monitor
        raise ValueError("check_handshake: this socket already has a monitor; pass its events to "
                         "describe_handshake_failure() instead")
    # A fresh inproc address each time: libzmq releases a monitor's endpoint asynchronously, so
    # re-monitoring a socket at pyzmq's default address (derived from its FD) can fail EADDRINUSE.
    monitor = sock.get_monitor_socket(HANDSHAKE_EVENTS | zmq.EVENT_CONNECTED,
                                      addr=f"inproc://zfraud.handshake.{next(_monitor_ids)}")
    connected, want = False, endpoint.encode()
    try:
        sock.connect(endpoint)
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            if not monitor.poll(max(1, int(left * 1000))):
                continue
            event = recv_monitor_message(monitor)
            if event["endpoint"] and event["endpoint"] != want:
                continue  # another connection of this socket (libzmq reports the connect string as given)
            if event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                return None
            connected = connected or event["event"] == zmq.EVENT_CONNECTED
            problem = describe_handshake_failure(event)
            if problem is not None:
                return problem
        if connected:
            return f"connected to {endpoint} but no handshake finished within {timeout_s:g} s"
        return f"could not connect to {endpoint} within {timeout_s:g} s ({_unreachable_why(endpoint)})"
    finally:
        sock.disable_monitor()
        monitor.close(linger=0)
