"""A zfraud worker: one process, one thread, one poll loop (and, with --state-dir, a short-lived
child that writes each periodic snapshot: zfraud.snapshots).

Sockets:
    ROUTER (bound, --bind)  BATCH -> RESULT, HELLO -> MEMBERS, HEARTBEAT -> HEARTBEAT, CONTROL
                            (status, deploy; from peers intel_sync and cards)
    PUB    (bound, --pub)   verdict.<decision> for every scored batch; mesh.hello every heartbeat;
                            mesh.bye on shutdown
    SUB    (connected)      mesh.* from every other member's PUB
    DEALER (one per seed, lost member, or member that no longer lists this worker)
                            HELLO until it answers with MEMBERS, then closed (a member: until
                            it answers, refuses, or MAX_REJOIN newer ones push it out)
    DEALER (one per member) the cards it now owns (zfraud.handover); intel_sync, one at a time

A message that breaks the protocol gets an ERROR reply naming the problem; nothing a peer sends
can stop the loop. Verdicts are published before the RESULT is sent: a crash between the two
means a resend and a repeated verdict, never a lost one.
"""
from __future__ import annotations

import contextlib
import errno
import functools
import json
import logging
import os
import resource
import socket
import stat
import tempfile
import time
import traceback
from collections import defaultdict, deque
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import zmq
from zmq.utils.monitor import parse_monitor_message

from . import __version__
from . import protocol as P
from ._dedup import SeenSet
from .mesh import Member, Membership, check_binds, check_endpoint, check_member, same_endpoint
from .features import TERMINAL_BUCKET_HOURS, FeatureEngine
from .handover import ACK_S, EVERY_S, STALE_S, Handover, Taken, take_over
from .model import check_delay, load_model, model_from_dict
from .rules import RuleSet, decode as rules_text
from .scoring import MIN_TS_MS, Scorer, Thresholds, ahead_ts_ms
from .security import Curve, SecurityError
from .snapshots import BackgroundSave
from .state import remove_unfinished
from .recurring import Every, Recurring
from .sockets import configure, descriptor_limit, out_of_descriptors, recv_frames, send_frames

log = logging.getLogger("zfraud.worker")

INTEL_BUCKET_MS = TERMINAL_BUCKET_HOURS * 3_600_000
VERDICT_TOPICS = tuple(b"verdict." + d.encode() for d in P.DECISIONS)
MAX_RUN = 16            # BATCH requests scored in one pass at most ...
MAX_RUN_ROWS = 4096     # ... and rows (a run stops once it holds this many)
# Rows of each table in one intel piece: a key frame of 32 MB, half of what a peer accepts in one
# frame (protocol.MAX_MESSAGE_BYTES; a bigger frame would make it drop the connection). The
# book's scale holds 0.36 M rows per worker; a mesh scoring ~1 M transactions a day over 100 000
# terminals would hold tens of millions.
INTEL_CHUNK_ROWS = 1 << 22
# How long a worker keeps following the PUB of a member that said goodbye: its drain (at most
# drain_max_s, 10 s by default) and its final counts, published as it closes, must still arrive.
DEPARTED_FOLLOW_S = 15.0
# A turn of the loop that took longer than STALL_S (SIGSTOP, a VM or GC pause) means the batches
# queued meanwhile may have passed their deadline_ms, and clients have then sent them elsewhere:
# for STALE_S after it, such a batch is answered EXPIRED, not scored, so that its transactions are
# not counted twice (the backlog is read well within that; the ROUTER can look empty for a moment
# after a resume, while the I/O thread reads what the kernel buffered). Only then is deadline_ms
# read, so a worker whose clock is off by more than the clients' deadline still scores normally.
# deadline_ms is compared with this worker's wall clock: a current client writes it in that clock,
# from the clock_ms of this worker's HEARTBEAT replies (client._Clock); an older client, in its own.
# Card handovers read in that time are refused too (_take_over). STALE_S is handover's.
STALL_S = 1.0
# A worker keeps saying HELLO to a member it dropped for silence (a stopped process, a partition,
# a long pause), and to one whose member list no longer names it: that member drops this worker
# too, or already has, and then neither follows the other's PUB; only a HELLO to the ROUTER brings
# them back together, however long the partition lasted (a time limit would split the mesh for
# good after one that outlasted it). Whichever side comes back first finds the other. It stops
# when the member answers, when another worker answers at that address, or when MAX_REJOIN newer
# ones push the oldest out (crashed members never answer; a HELLO to a dead address costs nothing:
# IMMEDIATE drops it at once).
MAX_REJOIN = 64
# Descriptors a worker needs to start: alone it holds about 20 (19 measured: its sockets' mailboxes,
# ZeroMQ's I/O thread, the two listeners, stdio), and about 5 more per other member. Below this
# libzmq can abort (an assertion on EMFILE as it binds) or the start fails half-way.
MIN_DESCRIPTORS = 24
# A worker whose HELLO is refused because a live member has its name at other endpoints stops
# (Worker.fatal) without joining, saving or saying goodbye under that name. It asks again for
# NAME_WAIT_TIMEOUTS membership timeouts first, unless the refusal came from the namesake itself:
# a member may still list this worker's own previous process (killed, restarted on new ports) for
# up to one timeout.
NAME_WAIT_TIMEOUTS = 2


@contextlib.contextmanager
def _forgotten_unless_counted(seen: SeenSet, added: np.ndarray, features: FeatureEngine):
    """Undo the ids just remembered in `seen` (added: check_and_add's out_new) if the block raises
    before the streaming state began to count them (features.changes did not move): the error
    reply asks for the rows again, and a resend must be counted then, not taken for a repeat of
    what was never counted."""
    changes = features.changes
    try:
        yield
    except BaseException:
        if features.changes == changes:
            seen.forget_newest(int(added.sum()))
        raise


def _who(ident: bytes) -> str:
    """A ROUTER routing id, short, for a log line: libzmq's own are 5 bytes (10 hex digits)."""
    return ident.hex() if len(ident) <= 8 else ident[:8].hex() + "..."


def _printable(text: str, limit: int = 64) -> str:
    """A peer's string (a topic, a name) for a log line: short, on one line (escaped)."""
    short = text[:limit].encode("unicode_escape").decode("ascii")
    return short + "..." if len(text) > limit else short


def _malformed(e: Exception) -> str:
    """What was wrong with a mesh message, never a bare KeyError ("'name'")."""
    if isinstance(e, KeyError):
        return f"missing field {e.args[0]!r}" if e.args else "a missing field"
    return f"{e}" or type(e).__name__


def intel_chunks(deltas: dict, rows: int | None = None):
    """An export (FeatureEngine.export_intel) in pieces of at most `rows` rows per table, each a
    valid export: merging takes the max per bucket, so the pieces merge in any order."""
    rows = rows or INTEL_CHUNK_ROWS
    columns = [c for _, cols in P.INTEL_SETS for c, _ in cols if c in deltas]
    longest = max((len(deltas[c]) for c in columns), default=0)
    for k in range(max(1, -(-longest // rows))):
        yield {**deltas, **{c: deltas[c][k * rows:(k + 1) * rows] for c in columns}}


def _is_batch(frames) -> bool:
    """A ROUTER message [routing id, version, command, ...] that says it is a BATCH."""
    return len(frames) > 2 and frames[2] == P.BATCH


def _rows(frames) -> int:
    """Rows a BATCH message says it carries, by its first column's size (checked when parsed)."""
    return len(frames[4]) // 8 if len(frames) > 4 else 0


def _absolute(endpoint: str) -> str:
    """A relative ipc path (ipc://w1.sock, or the one ipc://* made) as the absolute path it names
    from this directory: peers and clients run in other directories. Joined, not normalised: the
    kernel follows a symlink before a "..", and os.path.abspath would drop both."""
    if endpoint.startswith("ipc://") and not endpoint.startswith(("ipc:///", "ipc://@")) and endpoint != "ipc://*":
        return "ipc://" + os.path.join(os.getcwd(), endpoint[6:])
    return endpoint


def _advertised(endpoint: str) -> str:
    """The endpoint peers should connect to: a wildcard host becomes this machine's name, and a
    relative ipc path an absolute one (_absolute)."""
    if endpoint.startswith("ipc://"):
        return _absolute(endpoint)
    parts = urlsplit(endpoint)
    if parts.hostname in ("0.0.0.0", "*", "::"):
        return f"{parts.scheme}://{socket.getfqdn()}:{parts.port}"
    return endpoint


def _check_writable(directory: Path) -> None:
    """Create `directory` if need be and write a file in it, or ValueError saying why: a worker
    whose snapshots cannot be written says so at its start, not at its first save."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".zfraud-probe-", dir=directory)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ValueError(f"cannot write snapshots in {directory} (--state-dir): {e.strerror or e}") from None


def _ipc_taken(path: str) -> str | None:
    """Why an ipc path must not be bound, or None. libzmq deletes whatever is at the path before
    it binds: a file (a typo naming the model) would be lost, and a live worker's socket taken
    over without a word (its clients then reach the newcomer). A socket nobody listens at (left
    by a worker that stopped or was killed) is free."""
    if path.startswith("@") or path == "*":  # the abstract namespace; a fresh temporary path
        return None
    try:
        st = os.lstat(path)
    except OSError:
        return None  # nothing there (or a directory missing: bind says so)
    if not stat.S_ISSOCK(st.st_mode):
        return "a file that is not a socket is there, and binding would delete it"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except OSError:
            return None  # ECONNREFUSED: a stale socket file
    return "another process (another worker?) listens there"


def _bind(sock, endpoint: str, what: str, also=None) -> None:
    """sock.bind(endpoint), or ValueError saying why (a port or ipc path in use, an address not
    on this machine), after closing sock and `also`: a worker that cannot bind cannot start."""
    why = _ipc_taken(endpoint[6:]) if endpoint.startswith("ipc://") else None
    if why is None:
        try:
            sock.bind(endpoint)
            return
        except zmq.ZMQError as e:
            why = zmq.strerror(e.errno) + {
                zmq.EADDRINUSE: ": another process (another worker?) listens there",
                zmq.EADDRNOTAVAIL: ": that address is not one of this machine's",
                errno.ENODEV: ": bind an IPv4 address or name of this machine, an interface name, or * for "
                            "all (IPv6 is not enabled)"}.get(e.errno, "")
    for s in (sock, also):
        if s is not None:
            s.close(linger=0)
    raise ValueError(f"cannot bind {what} {endpoint}: {why}")


def _released_on_error(init):
    """A constructor that, if it raises, first closes what it had opened (sockets, the ZeroMQ
    context, the metrics server): a worker that cannot start leaves no port bound."""
    @functools.wraps(init)
    def wrapper(self, *args, **kwargs):
        try:
            init(self, *args, **kwargs)
        except BaseException:
            self._release()
            raise
    return wrapper


class Worker:
    """Scores batches and takes part in the mesh. `run()` blocks until `stop()` or a signal."""

    @_released_on_error
    def __init__(self, name: str, bind: str, pub: str, seeds=(), model=None, thresholds: Thresholds = Thresholds(),
                 rules: RuleSet | None = None, heartbeat: float = 1.0, liveness: int = 3,
                 remember: int = 1 << 20, drain_quiet_s: float = 1.5, drain_max_s: float = 10.0,
                 metrics_port: int | None = None, delay_days: int = 7, cards: int = 1 << 18,
                 terminals: int = 1 << 15, state_dir=None, snapshot_every_s: float = 60.0,
                 curve_dir=None, context: zmq.Context | None = None):
        if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < MIN_DESCRIPTORS:
            raise ValueError(f"out of file descriptors: {descriptor_limit()}; a worker needs at least "
                             f"{MIN_DESCRIPTORS} to start, and about 5 more per other member of the mesh. Raise the "
                             f"limit, e.g. `ulimit -n 4096`, and start it again")
        self.name = name
        self.seen = SeenSet(remember)  # recent transaction ids: a resent one never updates state twice
        self.labels_seen = SeenSet(remember)  # labels already applied here (a resent label counts once)
        self.taken = Taken()  # the card messages taken, so that one sent again is not added twice
        self.engine_args = (delay_days, cards, terminals)
        model = model if model is not None else load_model()
        check_delay(model, delay_days)
        features = FeatureEngine(model.feature_set, *self.engine_args)
        self.state_path = Path(state_dir) / f"{name}.state.npz" if state_dir else None
        if self.state_path is not None:
            _check_writable(self.state_path.parent)
            if remove_unfinished(self.state_path):  # a save killed mid-write left its temporary file
                log.info("removed the unfinished snapshot files of %s", self.state_path)
            if self.state_path.exists() and features.state is None:
                log.info("state in %s not restored: model %s (feature set %s) keeps no streaming state; "
                         "the file is left as it is", self.state_path, model.version, model.feature_set)
            elif self.state_path.exists():
                try:
                    self.seen, self.labels_seen, self.taken = self._restored(features)
                except ValueError as e:
                    raise ValueError(f"cannot restore {self.state_path}: {e} (move it away to start empty)") from None
                log.info("restored state from %s: %s", self.state_path, features.state_info())
        self.snapshot_every_s = snapshot_every_s
        self._next_snapshot = time.monotonic() + snapshot_every_s
        self._moved_at_save = (0, 0, 0)  # cards handed over, taken back, taken over: as of the last save
        self._intel_since = 0      # export versions already published (0: publish everything)
        self._intel_bucket = None  # newest terminal bucket published; a new one publishes at once
        self._intel_due = False    # a batch brought a new terminal bucket: publish after its reply
        self._intel_seq: dict[str, int] = {}  # peer name -> seq of its last intel.terminal message
        self._unmerged: set[str] = set()  # members whose counts found no slot (warned once; synced once they do)
        self.sync_socks: dict[str, zmq.Socket] = {}  # peer name -> DEALER awaiting its full counts
        self._sync_sent: dict[str, float] = {}       # peer name -> when that request went out
        self.drain_quiet_s, self.drain_max_s = drain_quiet_s, drain_max_s
        self.scorer = Scorer(model, thresholds, rules, features=features)
        check_endpoint("--bind", bind, bind=True)
        check_endpoint("--pub", pub, bind=True)
        check_binds(bind, pub)
        for what, ep in (("--bind", bind), ("--pub", pub)):
            if _absolute(ep) != ep:  # advertised absolute: that path must fit in a Unix socket too
                check_endpoint(f"{what} {ep}, as an absolute path,", _absolute(ep))
        seeds = [_absolute(seed) for seed in seeds]  # as a member lists them, and compared with ours
        for seed in seeds:
            check_endpoint("--seed", seed)
        self.heartbeat = heartbeat
        self.ctx = context or zmq.Context()
        self._own_ctx = context is None
        # CURVE: encryption on every socket; the authenticator (started before anything binds)
        # admits only the public keys found in the curve directory.
        self.curve = Curve.from_dir(curve_dir, "worker") if curve_dir else None
        self._next_key_reload = time.monotonic() + 5.0
        self._key_problem = None  # the last key reload's error, logged once until it changes
        if self.curve is not None:
            self.curve.start_authenticator(self.ctx)
        self.router = self._secure(configure(self.ctx.socket(zmq.ROUTER), linger_ms=1000), server=True)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a reply to a vanished client raises, not vanishes
        _bind(self.router, bind, "--bind")
        # XPUB: a PUB that hears its subscribers' subscriptions, so verdicts nobody follows are
        # not published (a heavy share of a small batch's cost, ../shared/reference/zeromq.md).
        self.pub = self._secure(configure(self.ctx.socket(zmq.XPUB), sndhwm=100_000, linger_ms=200), server=True)
        _bind(self.pub, pub, "--pub", also=self.router)
        self._prefixes: set[bytes] = set()  # topic prefixes subscribed to, by anyone
        self._followed = dict.fromkeys((*VERDICT_TOPICS, b"shadow"), False)  # topic -> anyone subscribed
        # A connection the kernel took and libzmq could not accept (EMFILE: out of descriptors)
        # shows only on a socket monitor: without one, a worker at its limit turns clients and
        # peers away without a word. Monitor socket -> the option its socket is bound by.
        self.accept_monitors: dict[zmq.Socket, str] = {}
        for sock, what in ((self.router, "--bind"), (self.pub, "--pub")):  # one by one: _release closes those made
            self.accept_monitors[sock.get_monitor_socket(zmq.EVENT_ACCEPT_FAILED)] = what
        self._not_accepted = Every(10.0)  # the log of those failures
        self.sub = self._secure(configure(self.ctx.socket(zmq.SUB), rcvhwm=100_000))
        self.sub.setsockopt(zmq.SUBSCRIBE, b"mesh.")
        self.sub.setsockopt(zmq.SUBSCRIBE, b"intel.")
        me = Member(name, _advertised(self.router.getsockopt_string(zmq.LAST_ENDPOINT)),
                    _advertised(self.pub.getsockopt_string(zmq.LAST_ENDPOINT)))
        check_member(me.name, me.router, me.pub)  # a name peers would refuse is an error here, now
        self.members = Membership(me, timeout=heartbeat * liveness)
        self.subscribed: dict[str, str] = {}  # member name -> PUB endpoint our SUB is connected to
        self._departed: dict[str, tuple] = {}  # name -> (PUB, until when) of members that said goodbye
        # ROUTER endpoint -> (DEALER, the member expected there, or None for a seed): _ask
        self.asking: dict[str, tuple] = {}
        self._no_socket = Every(10.0)  # the log of sockets not made for want of descriptors (_dealer)
        self._bad_input = Recurring(log.warning)  # the log of error replies and malformed mesh messages
        self._internal = Recurring(log.error)  # the log of bugs met while handling a request
        for seed in seeds:
            if not same_endpoint(seed, me.router):
                self._ask(seed, retried=False)  # out of descriptors already: nothing would ask it again
        self._stopping = False
        self._draining_since = None  # set when stop() is first noticed: leaving, still answering
        self._last_request = time.monotonic()
        self._listed: set[str] = set()  # the other members as of the last _sync_subscriptions
        # seed -> when first asked (None: warned it is silent, or it answered refusing our name)
        self._seeds_asked: dict[str, float | None] = {}
        self._boots: dict[str, int] = {}  # member name -> the boot of its process, from its mesh.hello
        self._seq = defaultdict(int)  # topic -> last seq given (published or not), for gap detection
        self.boot = int.from_bytes(os.urandom(6), "big")  # this process, in its verdict messages: seq restarts with it
        self.started = time.monotonic()  # for uptime_s: a wall-clock step back made it negative
        self.stats = {"batches": 0, "rows": 0, "repeats": 0, "errors": 0, "undelivered": 0, "labels": 0,
                      "cards_taken_over": 0, "snapshot_failures": 0, "expired": 0, "decisions": [0] * len(P.DECISIONS)}
        self.saved_at = None  # time.monotonic() of the state in the last snapshot saved
        self.saver = BackgroundSave()
        self.saved = True  # False when the snapshot at the end failed: the CLI exits 1
        self.fatal: str | None = None  # why the worker stopped without joining (its name is taken): the CLI exits 1
        self._name_refused_at: float | None = None
        self.handover = Handover(name, lambda to: self._dealer(f"member {to}"), boot=self.boot)
        self._final_until = None  # set when the drain is over: the last handover's answers are awaited
        self._batch_ms = deque(maxlen=2048)  # recent batches' scoring times (a run of batches scored in one pass: its time each)
        self._header_of, self._header = None, None  # _verdict_header's scorer and its fields
        self._rows_at = deque(maxlen=6)  # (monotonic, rows) at recent heartbeats, for the rate
        self._backlog = 0       # most requests found queued in a row since the last heartbeat
        self._queued = 0        # requests handled since the router was last found empty
        self._in_flight = 0     # ... as of the last heartbeat
        self._stale_until = 0.0  # after a stall: until when batches past their deadline expire
        self.metrics = None     # zfraud.metrics.Metrics when --metrics-port is given
        if metrics_port is not None:
            from .metrics import Metrics
            self.metrics = Metrics(metrics_port, name)
            self.metrics.running(self.scorer.model_version, self.scorer.rules_version)

    def _release(self) -> None:
        """Close whatever a failed __init__ had opened."""
        metrics = getattr(self, "metrics", None)
        if metrics is not None:
            metrics.close()
        handover = getattr(self, "handover", None)
        if handover is not None:
            handover.close()
        for sock, _ in getattr(self, "asking", {}).values():
            sock.close(linger=0)
        for monitor in getattr(self, "accept_monitors", {}):
            monitor.close(linger=0)
        for name in ("sub", "pub", "router"):
            sock = getattr(self, name, None)
            if sock is not None:
                sock.close(linger=0)
        if getattr(self, "curve", None) is not None:
            self.curve.stop()
        if getattr(self, "_own_ctx", False):
            self.ctx.term()

    # -- life cycle -------------------------------------------------------------------------
    @property
    def endpoints(self) -> tuple[str, str]:
        return self.members.me.router, self.members.me.pub

    def stop(self) -> None:
        """Ask the loop to drain and finish: safe from a signal handler or another thread.

        Draining: say goodbye (mesh.bye; MEMBERS no longer lists this worker), keep answering
        what is still sent or queued until `drain_quiet_s` pass without a request (clients
        re-read the member list every second) or `drain_max_s` in all, then close."""
        self._stopping = True

    def _drained(self, now: float) -> bool:
        if self._draining_since is None:
            self._draining_since = now
            log.info("draining name=%s: leaving the mesh, answering what is in flight", self.name)
            self._publish_intel()  # what we counted since the last heartbeat, before the goodbye
            self._publish(b"mesh.bye", self._goodbye())
            self._tick_handover(now, force=True)  # the cards go now; what comes meanwhile, at the end
        return now - self._last_request > self.drain_quiet_s or now - self._draining_since > self.drain_max_s

    def run(self) -> None:
        log.info("ready name=%s router=%s pub=%s model=%s pid=%d", self.name, *self.endpoints,
                 self.scorer.model_version, os.getpid())
        self.poller = poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        poller.register(self.sub, zmq.POLLIN)
        poller.register(self.pub, zmq.POLLIN)
        self.handover.poller = poller
        next_beat = 0.0
        next_ask = 0.0
        last_poll = time.monotonic()
        try:
            while True:
                now = time.monotonic()
                if now - last_poll > STALL_S + 0.1:  # stopped after the last poll: said before _beat drops anyone
                    self._stalled(now - last_poll, now)
                    last_poll = now
                if self.fatal is not None or (self._stopping and self._drained(now) and self._handed_over(now)):
                    break
                if now >= next_beat:
                    self._beat(now)
                    next_beat = now + self.heartbeat
                if self.asking and now >= next_ask:
                    self._hello_asking()
                    next_ask = now + self.heartbeat
                events = dict(poller.poll(timeout=100))
                polled = time.monotonic()
                if polled - last_poll > STALL_S + 0.1:  # 0.1: the poll's own timeout
                    self._stalled(polled - last_poll, polled)
                last_poll = polled
                if self.sub in events:
                    self._read_all(self.sub, self._on_mesh)
                if self.pub in events:
                    self._read_all(self.pub, self._on_subscription)
                # One request per turn of the loop (or one run of queued batches, see
                # _read_requests), the peers' news in between: shared state (intel) must not
                # wait behind a long queue of batches.
                if self.router in events:
                    self._queued += self._read_requests()
                    self._backlog = max(self._backlog, self._queued)
                    if not self.router.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                        self._queued = 0  # found empty: a poll woken by the next request starts a new run
                else:
                    self._queued = 0
                for router, (sock, _) in list(self.asking.items()):
                    if sock.poll(0):
                        self._on_hello_answer(router, sock)
                for name, sock in list(self.sync_socks.items()):
                    if sock in events:
                        self._on_sync_reply(name, sock)
                for name, sock in list(self.handover.socks.items()):
                    if sock in events:
                        self.handover.on_reply(name, self.scorer.features)
        finally:
            self._close()

    def _on_accept_failed(self, what: str, frames) -> None:
        """A monitor's EVENT_ACCEPT_FAILED: its value is the errno. libzmq tries again at once, as
        long as the connection waits in the kernel's queue, so one client makes a great many (its
        I/O thread spins meanwhile): the monitors are read at each heartbeat, not polled, which
        would keep this thread as busy; their high-water mark drops what comes in between."""
        event = parse_monitor_message(frames)
        if not out_of_descriptors(OSError(event["value"], "")):
            return
        self._not_accepted(log.warning, "cannot accept a connection on %s %s: out of file descriptors (%s); "
                           "clients and peers that connect get no answer until descriptors are free. Start "
                           "the worker with a higher `ulimit -n`: each member of the mesh and each client takes "
                           "a few. (libzmq tries a waiting connection again and again: a count is of tries)",
                           what, event["endpoint"].decode(errors="replace"), descriptor_limit())

    def _stalled(self, gap: float, now: float) -> None:
        self._stale_until = now + STALE_S
        # The peers' hellos of the stop are still on their way in (libzmq's I/O thread stood still
        # too): without this, the next beat logged every healthy peer lost, then joined again.
        self.members.pardon(gap, now)
        self.handover.pardon(gap, now)  # and the answers to its card messages are still coming in
        log.warning("the loop stood still for %.1f s (stopped or paused): batches found waiting past "
                    "their deadline are answered EXPIRED, not scored (their clients have sent them again)", gap)

    def _expired(self, header: dict) -> bool:
        deadline = header.get("deadline_ms")
        return (self._stale_until > 0 and type(deadline) is int and deadline < time.time() * 1000
                and time.monotonic() < self._stale_until)

    def _expired_reply(self, batch: int) -> list:
        self.stats["expired"] += 1
        return P.error_message(P.EXPIRED, f"batch {batch} waited past its deadline while this worker stood "
                                          "still; not scored: send it again", batch, self.name)

    def _handed_over(self, now: float) -> bool:
        """At the end of a drain: hand every card to its owner among the others, then wait up to
        ACK_S for their answers (still serving requests); True once none is awaited."""
        if self._final_until is None:
            self._final_until = now + ACK_S
            self.handover.fate = self._fate_of_cards_kept()  # the last sweep: what comes back stays here
            self._tick_handover(now, force=True)
        if now >= self._final_until + STALE_S + ACK_S:
            return True
        if self.handover.pending or self.handover.doubt:
            # ACK_S for the oldest message unanswered (one of a later sweep, below, as for the last one's)
            oldest = min((p.sent for p in self.handover.pending.values()), default=0.0)
            return now >= max(self._final_until, self.handover.hold_until, oldest + ACK_S)
        # Cards still held for others: an owner not connected yet (back in the member list a
        # moment ago) gets them at a retry 1 s later, and an owner that stood still refuses them
        # for STALE_S; cards that came after the last sweep (the drain still answers a BATCH or a
        # `cards` message: a sender with a stale member list) go at a sweep 1 s later, nothing
        # else would sweep them before the end. The drain waits for these, up to STALE_S + ACK_S
        # after the first wait
        held = self.handover.held_for_others(self.scorer.features)
        if held and min(self.handover.due, default=now + EVERY_S) > now + 1.0:
            self.handover.due.append(now + 1.0)
        return not held

    def _fate_of_cards_kept(self) -> str:
        return (f"kept here and saved in the snapshot {self.state_path} as this worker stops"
                if self._has_state() else "lost with this process (no --state-dir)")

    def _tick_handover(self, now: float, force: bool = False) -> None:
        names = sorted(self.members.members)
        if self._draining_since is not None:
            names.remove(self.name)
        routers = {m.name: m.router for m in self.members.members.values() if m is not self.members.me}
        self.handover.tick(self.scorer.features, routers, names, now, force)

    def _goodbye(self) -> dict:
        """mesh.bye: the name, and the card messages taken lately (Handover.on_goodbye)."""
        return {"name": self.name, "taken": self.taken.recent()}

    def _close(self) -> None:
        if self.fatal is None:  # else the name is another process's: no goodbye, no snapshot under it
            self._publish_intel()  # what we counted while draining: the peers still follow us a while
            self._publish(b"mesh.bye", self._goodbye())  # again: what it took while draining
            unsent = self.handover.held_for_others(self.scorer.features)
            if unsent:  # the last sweep could not send them (an owner not connected yet)
                log.warning("%d cards owned by other members were not handed over: %s", unsent,
                            self._fate_of_cards_kept())
            self.handover.take_back_all(self.scorer.features)  # unanswered: saved here instead
        self.handover.close()
        if self.fatal is None:
            self.saved = self._snapshot()
        for sock in (*self.accept_monitors, *(s for s, _ in self.asking.values()), *self.sync_socks.values(),
                     self.sub, self.pub, self.router):
            sock.close()
        if self.curve is not None:
            self.curve.stop()  # before the context ends: the authenticator thread lives in it
        if self._own_ctx:
            self.ctx.term()
        if self.metrics is not None:
            self.metrics.close()
        self._bad_input.flush(final=True)
        self._internal.flush(final=True)
        log.info("stopped name=%s batches=%d rows=%d", self.name, self.stats["batches"], self.stats["rows"])

    @staticmethod
    def _read_all(sock, handler, limit: int = 256) -> int:
        """Handle up to `limit` queued messages; returns how many there were."""
        for k in range(limit):
            try:
                frames = recv_frames(sock, zmq.NOBLOCK)
            except zmq.Again:
                return k
            handler(frames)
        return limit

    def _read_requests(self) -> int:
        """Handle the request a poll found and, if it is a BATCH, the BATCHes queued right behind
        it (up to MAX_RUN of them, MAX_RUN_ROWS rows): scoring a run of batches in one pass costs
        little more than scoring one, so a worker that fell behind catches up at once instead of
        paying every batch's fixed cost. Any other request ends the run and is handled after
        it, in order. (A poll, or ZMQ_EVENTS, costs less than the exception that ends a read of
        an empty socket.) Returns the requests handled."""
        try:
            frames = recv_frames(self.router, zmq.NOBLOCK)
        except zmq.Again:
            return 0
        if not _is_batch(frames):
            self._on_request(frames)
            return 1
        run, rows = [frames], _rows(frames)
        while len(run) < MAX_RUN and rows < MAX_RUN_ROWS and self.router.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            try:
                frames = recv_frames(self.router, zmq.NOBLOCK)
            except zmq.Again:
                break
            if not _is_batch(frames):
                self._on_batches(run)
                self._on_request(frames)
                return len(run) + 1
            run.append(frames)
            rows += _rows(frames)
        self._on_batches(run)
        return len(run)

    # -- membership -------------------------------------------------------------------------
    def _secure(self, sock, server: bool = False):
        if self.curve is None:
            return sock
        return self.curve.server(sock) if server else self.curve.client(sock)

    def _hello_message(self, to: str | None = None) -> list:
        me = self.members.me
        h = {"role": "worker", "name": me.name, "router": me.router, "pub": me.pub}
        if to is not None:
            h["to"] = to  # a process that has taken over that address since refuses it
        return P.encode(P.HELLO, h)

    def _dealer(self, to: str, retried: bool = True) -> zmq.Socket | None:
        """A DEALER for talking to `to` (a member's name or an endpoint), or None when this process
        may open no more descriptors. A worker must not stop scoring for that: it says so (at most
        once per 10 s) and the caller's own retry asks again (the next heartbeat, hello or sweep).
        retried False: there is no such retry (a seed, as the worker starts); the error propagates."""
        try:
            return self._secure(configure(self.ctx.socket(zmq.DEALER)))
        except zmq.ZMQError as e:
            if not out_of_descriptors(e) or not retried:
                raise
            self._no_socket(log.error, "cannot open a socket to %s: out of file descriptors (%s); still scoring, "
                            "trying again later, but cards, counts and members are not shared with it meanwhile. "
                            "Start the worker with a higher `ulimit -n`: each member of the mesh takes a few",
                            to, descriptor_limit())
            return None

    def _ask(self, router: str, name: str | None = None, retried: bool = True) -> None:
        """Say HELLO to the ROUTER at `router` at each heartbeat until the worker there answers
        with MEMBERS: a seed (name None: any worker), or member `name` (a rejoin: that member only;
        see MAX_REJOIN). retried: as _dealer's."""
        if router in self.asking:
            return
        sock = self._dealer(router if name is None else f"member {name} at {router}", retried)
        if sock is None:
            return
        self.asking[router] = (sock, name)  # first: closed with the others if connect raises
        if name is not None:
            sock.setsockopt(zmq.IMMEDIATE, 1)  # no HELLOs queued for a member not there: one per heartbeat
        sock.connect(router)

    def _rejoin(self, name: str, router: str) -> None:
        """Ask member `name` to rejoin (see MAX_REJOIN); not while leaving."""
        if self._draining_since is not None or router in self.asking:
            return
        rejoins = [r for r, (_, n) in self.asking.items() if n is not None]  # oldest first
        if len(rejoins) >= MAX_REJOIN:
            log.info("stopped asking member %s to rejoin: %d newer ones are asked", self.asking[rejoins[0]][1],
                     MAX_REJOIN)
            self._stop_asking(rejoins[0])
        self._ask(router, name)

    def _hello_asking(self) -> None:
        now = time.monotonic()
        routers = {m.router: n for n, m in self.members.members.items() if n != self.name}
        for router, (sock, name) in list(self.asking.items()):
            if name is not None and self._draining_since is not None:
                continue  # leaving: a rejoin would bring us back into its member list
            member = next((n for r, n in routers.items() if same_endpoint(router, r)), None) if name is None else None
            if member is not None:
                # the seed joined us (it started later, seeded with us) while our DEALER to it was
                # in its reconnect backoff (up to 8 s): it is a member, and was not silent
                self._stop_asking(router)
                self._seeds_asked.pop(router, None)
                log.info("joined: seed %s is member %s", router, member)
                continue
            silent = self._seed_silent(router, now) if name is None else None
            if silent is not None:
                # A worker with --curve-dir and one without cannot connect, and nothing else says so:
                # the failed handshake shows only on socket monitors, which these DEALERs do not keep.
                curve = (f"with CURVE, as this worker does (--curve-dir {self.curve.directory})"
                         if self.curve is not None else "without CURVE, as this worker does (no --curve-dir)")
                members = len(self.members.members)
                if members == 1:
                    log.warning("seed %s has not answered for %.0f s (members: 1); still asking. A worker that "
                                "reaches no seed scores alone, as a mesh of its own: check --seed, and that the "
                                "seed runs %s: a worker with --curve-dir and one without cannot connect, nor can "
                                "two with different worker keys", router, silent, curve)
                else:  # joined through another seed: this one is down, misspelt, or keyed otherwise
                    log.warning("seed %s has not answered for %.0f s; still asking. This worker joined a mesh of "
                                "%d members through another seed: check that this one runs, at that endpoint, "
                                "%s", router, silent, members, curve)
            try:
                sock.send_multipart(self._hello_message(to=name), zmq.NOBLOCK)
            except zmq.Again:
                pass  # not there yet: the next heartbeat tries again

    def _seed_silent(self, router: str, now: float) -> float | None:
        """Seconds a seed has not answered HELLO, once per seed, when that passes two member
        timeouts; else None."""
        since = self._seeds_asked.setdefault(router, now)
        if since is None or now - since < 2 * self.members.timeout:
            return None
        self._seeds_asked[router] = None  # said once
        return now - since

    def _on_hello_answer(self, router: str, sock) -> None:
        try:
            msg = P.parse(sock.recv_multipart())
        except P.ProtocolError as e:
            log.warning("%s answered HELLO badly: %s", router, e)
            return
        name = self.asking[router][1]
        if msg.command == P.MEMBERS and name in (None, msg.header.get("worker")):
            self._stop_asking(router)
            self._name_refused_at = None
            self._merge(msg.header.get("members") or [])
            if name is None:
                self._seeds_asked.pop(router, None)
                log.info("joined via seed=%s members=%d", router, len(self.members.members))
        elif msg.command == P.ERROR and msg.header.get("code") == P.NAME_TAKEN:
            if name is None:  # the seed answers: it is not silent, whatever happens next
                self._seeds_asked[router] = None
            self._name_refused(router, msg.header)
        elif msg.command == P.ERROR and name is not None:  # another worker has that address now (_hello's "to")
            log.info("stopped asking member %s to rejoin: %s", name, msg.header.get("message"))
            self._stop_asking(router)

    def _name_refused(self, router: str, h: dict) -> None:
        now = time.monotonic()
        if self._name_refused_at is None:
            self._name_refused_at = now
        wait_s = NAME_WAIT_TIMEOUTS * self.members.timeout
        if h.get("worker") == self.name or now - self._name_refused_at > wait_s:
            self.fatal = (f"{h.get('message')}: start this worker under another --name, or stop the other "
                          f"process first (to move a worker to new endpoints, stop it, then start it there)")
            log.error("not joining the mesh: %s", self.fatal)
        elif self._name_refused_at == now:
            log.warning("%s refuses this worker: %s; asking again for %g s, in case it is this worker's "
                        "own previous process", router, h.get("message"), wait_s)

    def _stop_asking(self, router: str) -> None:
        self.asking.pop(router)[0].close()

    def _restored(self, features: FeatureEngine) -> tuple[SeenSet, SeenSet, Taken]:
        """Load the snapshot at state_path into `features`, a new engine (ValueError if it does
        not fit), and return what was counted into it: the transaction and fraud label ids (a
        resend of one after the restore is a repeat, as it would have been without it) and the
        card messages taken (a sender that had no answer sends one again, and the restored owner
        must not add it a second time). At start-up, and at a deploy that switches to its
        feature set (_restore_at_deploy)."""
        extra = features.load(self.state_path)
        seen, labels_seen, taken = SeenSet(self.seen.capacity), SeenSet(self.labels_seen.capacity), Taken()
        for key, into in (("seen", seen), ("labels_seen", labels_seen)):
            if key in extra:
                ids = np.ascontiguousarray(extra[key], dtype=np.uint64)
                into.check_and_add(ids, np.empty(len(ids), np.uint8))
        taken.restore(extra)
        return seen, labels_seen, taken

    def _save(self) -> None:
        self.scorer.features.save(self.state_path, {"seen": self.seen.ids(), "labels_seen": self.labels_seen.ids(),
                                                    **self.taken.arrays()})

    def _has_state(self) -> bool:
        return self.state_path is not None and self.scorer.features.state is not None

    def _snapshot_failed(self, error) -> None:
        self.stats["snapshot_failures"] += 1
        if self.metrics is not None:
            self.metrics.snapshot_failures.inc()
        log.error("cannot save state to %s: %s (%s)", self.state_path, error,
                  "the last good snapshot there is kept" if self.state_path.exists() else "there is no snapshot there")

    def _reap_snapshot(self, block: bool = False) -> None:
        """Log and count how a background save ended (once it has). A failed one (a full disk, a
        directory gone) leaves the last good snapshot on disk (saves are atomic); the worker
        keeps scoring and the next interval tries again."""
        done = self.saver.poll(block)
        if done is None:
            return
        if not done.ok:
            self._snapshot_failed(done.error)
            remove_unfinished(self.state_path)  # a child killed mid-write leaves its temporary file
            return
        self.saved_at = done.taken_at
        if done.in_place:
            log.warning("saved state to %s in %.0f ms in the loop (%s)", self.state_path, done.write_s * 1000,
                        done.in_place)
        else:
            log.info("saved state to %s in %.0f ms in the background (scoring paused %.1f ms)",
                     self.state_path, done.write_s * 1000, done.pause_ms)

    def _snapshot(self) -> bool:
        """Save the state now, in this process (a clean stop); False if that failed."""
        self._reap_snapshot(block=True)  # a background save must not land after this one
        if not self._has_state():
            return True  # nothing to save: no --state-dir, or no streaming state (yet)
        t0 = time.perf_counter()
        try:
            self._save()
        except OSError as e:
            self._snapshot_failed(e)
            return False
        self.saved_at = time.monotonic()
        log.info("saved state to %s in %.0f ms", self.state_path, (time.perf_counter() - t0) * 1000)
        return True

    def _beat(self, now: float) -> None:
        self._bad_input.flush()
        self._internal.flush()
        for monitor, what in self.accept_monitors.items():  # not polled: see _on_accept_failed
            self._read_all(monitor, functools.partial(self._on_accept_failed, what), limit=1024)
        for name in [n for n, t in self._sync_sent.items() if now - t > 5.0 and n in self.sync_socks]:
            sock = self.sync_socks.pop(name)  # unanswered: drop it, the next gap or message asks again
            del self._sync_sent[name]
            self.poller.unregister(sock)
            sock.close()
            self._intel_seq.pop(name, None)
        if self.curve is not None and now >= self._next_key_reload:
            self._next_key_reload = now + 5.0
            try:
                self.curve.reload()  # keys copied into or removed from the directory take effect
            except SecurityError as e:  # a malformed or half-copied *.key: keep the keys in force
                if str(e) != self._key_problem:
                    log.error("keys not reloaded: %s (the keys loaded before stay in force)", e)
                self._key_problem = str(e)
            else:
                self._key_problem = None
        self._publish_intel()
        # The periodic save, in a forked child (zfraud.snapshots): scoring pauses for the fork, a
        # few ms, not for the write. One at a time: a save still running defers the next.
        # Also at once after cards changed hands: a snapshot that still held cards since handed
        # over would, after a crash, hand them over again and their owner would count their
        # history twice; one without cards taken over (or back) would lose them. None while the
        # mesh refuses this worker's name: the file under that name may be its namesake's.
        self._reap_snapshot()
        moved = (self.handover.handed, self.handover.taken_back, self.stats["cards_taken_over"])
        if (self._has_state() and (now >= self._next_snapshot or moved != self._moved_at_save) and not self.saver.busy
                and self._name_refused_at is None):
            self.saver.start(self._save)
            self._next_snapshot = now + self.snapshot_every_s
            self._moved_at_save = moved
        self._rows_at.append((now, self.stats["rows"]))
        self._in_flight, self._backlog = self._backlog, 0
        if self.metrics is not None:
            self.metrics.cards(self.scorer.features.state_info()["cards"], self.handover.handed,
                               self.stats["cards_taken_over"])
        for m in self.members.expire(now):
            log.warning("member lost name=%s (silent for over %gs)", m.name, round(self.members.timeout, 3))
            self._rejoin(m.name, m.router)
        self._sync_subscriptions()
        self._tick_handover(now)
        if self._draining_since is not None:
            return  # leaving: a hello would bring us back into the others' member lists
        me = self.members.me
        # intel_seq: the seq of our last intel.terminal, so a peer that missed it while we are idle
        # (a healed partition) need not wait for our next one to see the gap (_check_intel_seq)
        self._publish(b"mesh.hello", {"name": me.name, "router": me.router, "pub": me.pub, "boot": self.boot,
                                      "members": self.members.public(now), "load": self._load(),
                                      "intel_seq": self._seq[b"intel.terminal"]})

    def _sync_subscriptions(self) -> None:
        """Make the SUB socket follow the member list: the one place that connects and disconnects."""
        want = {m.name: m.pub for m in self.members.members.values() if m is not self.members.me}
        now = time.monotonic()
        self._departed = {n: (pub, until) for n, (pub, until) in self._departed.items() if until > now}
        # A member that said goodbye is still followed for a while: the counts of what it scored
        # while draining come after its goodbye (their merge needs no membership). Not once a
        # member lists its PUB endpoint: that process is gone (a new one bound it, under another
        # name: --name HOSTNAME-PID under a supervisor), and the new one gets a connection of its
        # own at once, rather than the old one's, which may be backing off for up to 8 s.
        listed = set(want.values())
        following = {**{n: pub for n, (pub, _) in self._departed.items() if n not in want and pub not in listed},
                     **want}
        for name in [n for n in self.sync_socks if n not in want]:
            sock = self.sync_socks.pop(name)
            del self._sync_sent[name]
            self.poller.unregister(sock)
            sock.close()
        for name in [n for n in self._intel_seq if n not in want]:
            del self._intel_seq[name]  # if it comes back, its first message triggers a full sync
        self._unmerged &= want.keys()  # if it comes back, it joins: warned again, synced in full
        for name in [n for n in self._boots if n not in want]:
            del self._boots[name]  # if it comes back, it joins: that is not a restart
        # One connection per endpoint: disconnect(pub) cuts every connection to it.
        for name, pub in list(self.subscribed.items()):
            if following.get(name) != pub:
                del self.subscribed[name]
                if pub not in self.subscribed.values():
                    try:
                        self.sub.disconnect(pub)
                    except zmq.ZMQError:
                        pass
        # A member back under its name (a restart) was still followed, on a connection to its gone
        # process that may be backing off for up to 8 s: connect it again, or it reads as silent
        for name in [n for n in want if n not in self._listed and self.subscribed.get(n) == want[n]]:
            try:
                self.sub.disconnect(want[name])
                self.sub.connect(want[name])
            except zmq.ZMQError:
                pass
        for name, pub in want.items():
            if name not in self.subscribed:
                if pub not in self.subscribed.values():
                    try:
                        self.sub.connect(pub)
                    except zmq.ZMQError as e:  # an endpoint that passed the checks but cannot be used
                        log.warning("cannot follow member %s at %s: %s; dropping it", name, pub, e.strerror)
                        self.members.leave(name)
                        continue
                self.subscribed[name] = pub
        # A member that said goodbye and is back within DEPARTED_FOLLOW_S was still followed: it
        # joins all the same (a restart), so a join is a name new to the member list, not a connect
        for name in [n for n in want if n not in self._listed and n in self.subscribed]:
            m = self.members.members[name]
            log.info("member joined name=%s router=%s pub=%s", name, m.router, m.pub)
            self._exchange_counts(name)
        self._listed = {n for n in want if n in self.subscribed}
        if self.metrics is not None:  # at once: a scrape right after a join must not see the old count
            self.metrics.members(len(self.members.members))

    def _on_subscription(self, frames) -> None:
        """XPUB's news: b"\\x01" + prefix when the first subscriber of a prefix arrives, b"\\x00" +
        prefix when its last one leaves (libzmq counts the subscribers per prefix)."""
        event = frames[0]
        if not event or event[0] > 1:
            return
        prefix = event[1:]
        if event[0]:
            self._prefixes.add(prefix)
        else:
            self._prefixes.discard(prefix)
        self._followed = {t: any(t.startswith(p) for p in self._prefixes) for t in self._followed}

    def _merge(self, members: list) -> None:
        if self.members.gossip(members):
            self._sync_subscriptions()

    # -- shared intelligence ----------------------------------------------------------------
    def _publish_intel(self) -> None:
        deltas = self.scorer.features.export_intel(self._intel_since)
        if deltas is None or not any(len(deltas[columns[0][0]]) for _, columns in P.INTEL_SETS):
            return  # every set's first column (its keys) is empty: nothing changed
        for part in intel_chunks(deltas):
            self._publish(b"intel.terminal", *self._intel_frames(part))
        self._intel_since = deltas["version"]

    def _intel_frames(self, deltas: dict, source: str | None = None) -> tuple[dict, list]:
        header = {"source": source or self.name, "bucket_hours": deltas["bucket_hours"]}
        frames = []
        for rows, columns in P.INTEL_SETS:
            header[rows] = len(deltas[columns[0][0]])
            frames += P.column_frames(deltas, columns)
        return header, frames

    def _on_intel(self, h: dict, frames, seq_checked: bool = True, relayed: bool = False) -> None:
        """Merge a peer's counts. PUB/SUB loses messages (while subscriptions propagate, at a
        high-water mark), so each publisher numbers them: on the first message from a peer or a
        gap in its numbers we ask it, over ROUTER/DEALER, for all its counts (the Clone
        pattern's snapshot). Max-merge makes the overlap harmless."""
        source = str(h["source"])
        if len(frames) % 3 or not 6 <= len(frames) <= 3 * len(P.INTEL_SETS):
            return
        if source == self.name:
            if not seq_checked:  # an intel_sync reply's copy of what a peer held under our name
                self.scorer.features.merge_own(self._intel_deltas(h, frames))
            return
        if seq_checked:
            seq, last = h.get("seq"), self._intel_seq.get(source)
            if isinstance(seq, int):
                if (last is None or seq != last + 1) and source in self.members.members:
                    self._request_sync(source)
                self._intel_seq[source] = seq
        deltas = self._intel_deltas(h, frames)
        features = self.scorer.features
        retired = features.retirements
        try:
            merged = features.merge_intel(source, deltas, live=self.members.members, relayed=relayed)
        except ValueError as e:  # a peer can send these at any rate: said once, then counted
            who = _printable(str(source))
            self._bad_input(("intel", who), f"unmerged terminal counts from {who}",
                            "terminal counts from %s not merged: %s", who, e)
            return
        if features.retirements != retired:
            log.info("peer slots full: retired %s (gone from the mesh; counts kept), %s took a slot",
                     " and ".join(list(features.retired)[retired - features.retirements:]), source)
        if merged:
            if source in self._unmerged and source in self.members.members and not relayed:
                self._unmerged.discard(source)  # it has a slot now: it needs what it sent before
                self._request_sync(source)
        elif source in self.members.members and source not in self._unmerged and not relayed:
            self._unmerged.add(source)
            log.warning("terminal counts from %s not merged: %s", source,
                        features.slot_refusal(source, self.members.members))

    @staticmethod
    def _intel_deltas(h: dict, frames) -> dict:
        deltas = {"bucket_hours": h.get("bucket_hours")}
        for k, (rows, columns) in enumerate(P.INTEL_SETS[:len(frames) // 3]):
            n = P.int_field(h, rows, 0, P.MAX_MESSAGE_BYTES)  # a frame holds no more rows than bytes
            deltas.update(P.read_columns(frames[3 * k:3 * k + 3], n, columns))
        return deltas

    def _request_sync(self, name: str) -> None:
        if name in self.sync_socks:
            return  # one request at a time per peer
        sock = self._dealer(f"member {name}")
        if sock is None:
            return  # a next mesh.hello of it asks again (_check_intel_seq)
        sock.connect(self.members.members[name].router)
        try:
            sock.send_multipart(P.encode(P.CONTROL, {"op": "intel_sync", "worker": self.name}), zmq.NOBLOCK)
        except zmq.Again:
            sock.close()
            return
        self.sync_socks[name] = sock
        self._sync_sent[name] = time.monotonic()
        self.poller.register(sock, zmq.POLLIN)

    def _on_sync_reply(self, name: str, sock) -> None:
        self.poller.unregister(sock)
        del self.sync_socks[name], self._sync_sent[name]  # one entry per request outstanding
        try:
            self._merge_sync(name, P.parse(sock.recv_multipart(zmq.NOBLOCK)))
        except (zmq.Again, P.ProtocolError) as e:
            self._bad_sync_reply(name, e)
        finally:
            sock.close()

    def _bad_sync_reply(self, name: str, e: Exception) -> None:
        """A peer answers as often as its gaps make us ask: said once, then counted."""
        who = _printable(name)
        self._bad_input(("sync", who), f"bad intel sync replies from {who}", "bad intel sync reply from %s: %s",
                        who, _malformed(e))

    def _merge_sync(self, name: str, msg) -> None:
        """Merge an intel_sync reply: the peer's own counts (the main frames, then any further
        pieces of them in `more` under its name), and what it held for others, in `more`."""
        try:
            if msg.command == P.CONTROL and msg.header.get("ok"):
                h, per = msg.header, 3 * len(P.INTEL_SETS)
                more = h.get("more") or []
                first = len(msg.frames) - per * len(more)  # a peer from before `more`: all of them
                self._on_intel(h, msg.frames[:first], seq_checked=False)
                for k, extra in enumerate(more):
                    self._on_intel({**extra, "bucket_hours": h.get("bucket_hours")},
                                   msg.frames[first + k * per:first + (k + 1) * per], seq_checked=False,
                                   relayed=True)
                others = sorted({str(e.get("source")) for e in more} - {name})
                buckets = sum(P.int_field(e, "rows", 0, P.MAX_MESSAGE_BYTES) if "rows" in e else 0
                              for e in [h, *(e for e in more if e.get("source") == name)])
                log.info("synced terminal counts from %s (%d buckets; and those it held for %s)", name,
                         buckets, ", ".join(others) or "no other")
        except (P.ProtocolError, KeyError, TypeError, ValueError) as e:
            self._bad_sync_reply(name, e)

    def _on_label(self, msg) -> list:
        cols = P.parse_columns(msg, P.LABEL_COLUMNS)
        rows = len(cols["tx_id"])
        # A label's time moves its terminal's fraud rings forward for good, as a transaction's
        # does: one in microseconds, or years ahead, would switch terminal risk off. Such rows are
        # refused (and not remembered: the label can be sent again with its time corrected).
        ts = cols["ts_ms"]
        ok = (ts >= MIN_TS_MS) & (ts < ahead_ts_ms())
        refused = rows - int(ok.sum())
        if refused:
            log.warning("refused %d of %d labels: ts_ms before 2000 or more than 1 day ahead of this worker's "
                        "clock (epoch milliseconds expected)", refused, rows)
            cols = {k: v[ok] for k, v in cols.items()}
        # Only a fraud label counts (in the terminal's rings), so only fraud labels are remembered: a
        # genuine label then a fraud one for the same transaction (a chargeback after it was cleared)
        # counts the fraud; a resent fraud label counts once.
        fraud = cols["fraud"] != 0
        fresh = np.ones(len(fraud), dtype=np.uint8)
        fresh_frauds = np.empty(int(fraud.sum()), dtype=np.uint8)
        self.labels_seen.check_and_add(cols["tx_id"][fraud], fresh_frauds)
        fresh[fraud] = fresh_frauds
        new = fresh.view(bool)
        features = self.scorer.features
        with _forgotten_unless_counted(self.labels_seen, fresh_frauds, features):
            frauds = features.apply_labels({k: v[new] for k, v in cols.items()})
        self.stats["labels"] += int(new.sum())
        if frauds:
            self._publish_intel()  # before the acknowledgement: the sender may rely on it
        return P.encode(P.LABEL, {"worker": self.name, "rows": rows, "applied": int(new.sum()), "frauds": frauds,
                                  "refused": refused})

    def _on_mesh(self, frames) -> None:
        if len(frames) < 3 or frames[1] != P.VERSION:
            return  # not ours; PUB/SUB cannot answer, so it is dropped
        h = None
        try:
            h = P.unpack(frames[2])
            if frames[0] == b"intel.terminal":
                self._on_intel(h, frames[3:])
                return
            name = str(h["name"])
            if frames[0] == b"mesh.bye":
                self.handover.on_goodbye(name, h.get("taken"))
                m = self.members.leave(name)
                if m is not None:
                    log.info("member left name=%s", name)
                    self._departed[name] = (m.pub, time.monotonic() + DEPARTED_FOLLOW_S)
                    self._sync_subscriptions()
                return
            if frames[0] == b"mesh.hello":
                if self.members.heard(name, str(h["router"]), str(h["pub"]), h.get("load")):
                    self._sync_subscriptions()
                self._check_boot(name, h.get("boot"))
                self._check_intel_seq(name, h.get("intel_seq"))
                members = h.get("members") or []
                self._merge(members)
                if not any(isinstance(m, dict) and m.get("name") == self.name for m in members):
                    self._rejoin(name, str(h["router"]))  # it dropped us, or has not heard us yet
        except (P.ProtocolError, KeyError, TypeError, ValueError) as e:
            topic = _printable(frames[0].decode(errors="replace"))  # any topic under mesh. or intel.
            sender = h.get("name", h.get("source")) if isinstance(h, dict) else None
            self._bad_input(("mesh", topic), f"malformed {topic} messages",
                            "ignored a malformed mesh message topic=%s from=%s: %s", topic,
                            _printable(sender) if isinstance(sender, str) else "unknown", _malformed(e))

    def _check_boot(self, name: str, boot) -> None:
        """A member whose process changed without leaving the member list (killed and started
        again within the member timeout): what it needs from a joiner, it needs now. The records
        of its cards started here meanwhile go back at once, not at the next periodic sweep, and
        terminal counts are exchanged in full."""
        if not isinstance(boot, int) or name not in self.members.members:
            return
        last, self._boots[name] = self._boots.get(name), boot
        if last is None or last == boot:
            return
        log.info("member restarted name=%s (a new process at the same endpoints)", name)
        self._exchange_counts(name)
        self.handover.restarted(name, time.monotonic())

    def _check_intel_seq(self, name: str, seq) -> None:
        """A member's mesh.hello names the seq of its last intel.terminal: one beyond the last we
        got from it is a gap that no message of its shows while it is idle (a partition between
        us healed, the mesh around us kept both as members). Repaired like one, with intel_sync.
        Its reply, made after this hello, holds every message up to `seq`, and the PUB stream is
        in order, so its next message is seq + 1. Not while a request is outstanding: the reply
        may come from before this hello, and when it is dropped (5 s) the next hello asks again."""
        if (not isinstance(seq, int) or isinstance(seq, bool) or name not in self.members.members
                or name in self.sync_socks):
            return
        if seq > self._intel_seq.get(name, 0):
            self._request_sync(name)
            if name in self.sync_socks:
                self._intel_seq[name] = seq

    def _exchange_counts(self, name: str) -> None:
        """A member new to us, or a new process of one, needs all our terminal counts, not just
        news (at our next publish), and we need all of its: now, not at its next news."""
        self._intel_since = 0
        self._request_sync(name)

    # -- requests ---------------------------------------------------------------------------
    def _on_request(self, frames) -> None:
        ident, body = frames[0], frames[1:]
        if len(body) > 1 and body[1] in (P.BATCH, P.LABEL):
            self._last_request = time.monotonic()  # only work keeps a draining worker waiting
        batch = None
        try:
            msg = P.parse(body)
            if msg.command == P.BATCH:
                batch, attempt, cols = P.parse_batch(msg)
                reply = self._expired_reply(batch) if self._expired(msg.header) else self._score([(batch, attempt, cols)])[0]
            elif msg.command == P.HELLO:
                reply = self._hello(msg.header)
            elif msg.command == P.LABEL:
                reply = self._on_label(msg)
            elif msg.command == P.HEARTBEAT:
                # clock_ms: the clock _expired reads deadline_ms in, so that a client can write
                # deadlines in it, whatever its own clock says (client._Clock)
                reply = P.encode(P.HEARTBEAT, {"worker": self.name, "t": msg.header.get("t"), "load": self._load(),
                                               "clock_ms": int(time.time() * 1000), "boot": self.boot})
            elif msg.command == P.CONTROL:
                reply = self._control(msg.header, msg.frames)
            else:
                raise P.ProtocolError(P.BAD_COMMAND, f"a worker does not accept {msg.command.decode()}")
        except P.ProtocolError as e:
            reply = self._error_reply(e, ident)
        except Exception as e:  # a bug must cost one reply, not the worker
            reply = self._internal_error_reply(e, batch, ident)
        self._reply(ident, reply)
        self._after_replies()

    def _on_batches(self, run: list) -> None:
        """Answer a run of BATCH requests (ROUTER messages) read together: the valid ones are
        scored in one pass, in order, and each gets its own RESULT."""
        if len(run) == 1:
            self._on_request(run[0])
            return
        self._last_request = time.monotonic()
        replies, batches = [], []  # (routing id, reply frames); (routing id, (batch, attempt, cols))
        for frames in run:
            try:
                msg = P.parse(frames[1:])
                item = P.parse_batch(msg)
            except P.ProtocolError as e:
                replies.append((frames[0], self._error_reply(e, frames[0])))
                continue
            if self._expired(msg.header):
                replies.append((frames[0], self._expired_reply(item[0])))
            else:
                batches.append((frames[0], item))
        if batches:
            try:
                results = self._score([b for _, b in batches])
            except Exception as e:  # a bug must cost these replies, not the worker
                results = [self._internal_error_reply(e, b[0], ident) for ident, b in batches]
            replies += zip([ident for ident, _ in batches], results)
        for ident, reply in replies:
            self._reply(ident, reply)
        self._after_replies()

    def _error_reply(self, e: P.ProtocolError, ident: bytes) -> list:
        self.stats["errors"] += 1
        self._bad_input(("error", e.code), f"error replies of code {e.code}",
                        "error reply code=%s client=%s batch=%s: %s", e.code, _who(ident), e.batch, e)
        return P.error_message(e.code, str(e), e.batch, self.name)

    def _internal_error_reply(self, e: Exception, batch, ident: bytes) -> list:
        """A bug's reply. Its traceback is logged in full once per kind (exception type and the
        line that raised it) per 10 s, then counted: a request that trips it can come at any rate."""
        self.stats["errors"] += 1
        tb = traceback.extract_tb(e.__traceback__)
        kind = ("internal", type(e).__name__, *((tb[-1].filename, tb[-1].lineno) if tb else ()))
        self._internal(kind, f"internal errors ({type(e).__name__})",
                       "internal error while handling a request client=%s batch=%s\n%s", _who(ident), batch,
                       "".join(traceback.format_exception(e)).rstrip())
        return P.error_message(P.INTERNAL, f"internal error: {type(e).__name__}: {e}", batch, self.name)

    def _reply(self, ident: bytes, reply: list) -> None:
        try:
            send_frames(self.router, [ident, *reply], zmq.NOBLOCK)
        except zmq.ZMQError as e:  # gone (EHOSTUNREACH) or not reading (EAGAIN): its ledger resends
            self.stats["undelivered"] += 1
            log.debug("reply not delivered (%s)", e.strerror)

    def _after_replies(self) -> None:
        if self._intel_due:  # after the replies: an export takes milliseconds, the client need not wait
            self._intel_due = False
            self._publish_intel()

    def _score(self, batches: list) -> list:
        """Score (batch id, attempt, columns) items as one batch, rows in order; publish the
        verdicts; return each item's RESULT."""
        t0 = time.perf_counter()
        scorer = self.scorer  # one scorer for the whole run, even if a deploy lands meanwhile
        if len(batches) == 1:
            cols = batches[0][2]
        else:
            cols = {name: np.concatenate([c[name] for _, _, c in batches]) for name, _ in P.TX_COLUMNS}
        n = len(cols["tx_id"])
        error = scorer.check(cols)
        fresh = np.ones(n, dtype=np.uint8)
        if error.any():  # a rejected row's id is not remembered: it may come again, corrected
            good = np.flatnonzero(error == 0)
            part = np.empty(len(good), dtype=np.uint8)
            self.seen.check_and_add(cols["tx_id"][good], part)
            fresh[good] = part
            added = part
        else:
            self.seen.check_and_add(cols["tx_id"], fresh)
            added = fresh
        with _forgotten_unless_counted(self.seen, added, scorer.features):
            v, shadow = scorer.score(cols, update=fresh.view(bool), error=error)
        counts = np.bincount(v["decision"], minlength=len(P.DECISIONS)).tolist()
        base = self._verdict_header(scorer)
        frames = P.column_frames(v, P.VERDICT_COLUMNS)
        followed = self._followed
        # A message no one follows is not built, but it takes its seq: a subscriber that comes
        # later sees that it missed it (tail counts what a restarted or new worker sent before)
        if max(counts) == n:  # the common case: one decision for every row
            d = counts.index(n)
            if followed[VERDICT_TOPICS[d]]:
                self._publish(VERDICT_TOPICS[d], {"rows": n}, frames, base)
            else:
                self._seq[VERDICT_TOPICS[d]] += 1
        else:
            for d, c in enumerate(counts):
                if c and followed[VERDICT_TOPICS[d]]:
                    idx = np.flatnonzero(v["decision"] == d)
                    self._publish(VERDICT_TOPICS[d], {"rows": c}, [f[idx] for f in frames], base)
                elif c:
                    self._seq[VERDICT_TOPICS[d]] += 1
        if counts[P.REJECTED] < n:
            ts = cols["ts_ms"] if not counts[P.REJECTED] else cols["ts_ms"][v["decision"] != P.REJECTED]
            bucket = int(ts.max()) // INTEL_BUCKET_MS
            if self._intel_bucket is None or bucket > self._intel_bucket:
                self._intel_bucket = bucket
                self._intel_due = True  # a new terminal bucket: peers need the last one's counts now
        if shadow is not None and followed[b"shadow"]:
            self._publish(b"shadow", {**base.fields, "model": scorer.shadow_version, "live_model": scorer.model_version,
                                      "rows": len(shadow["tx_id"])}, P.column_frames(shadow, P.VERDICT_COLUMNS))
        repeats = n - int(fresh.sum())
        stats = self.stats
        stats["batches"] += len(batches)
        stats["rows"] += n
        stats["repeats"] += repeats
        for d, c in enumerate(counts):
            stats["decisions"][d] += c
        elapsed = time.perf_counter() - t0
        self._batch_ms.extend([elapsed * 1000] * len(batches))  # each batch of the pass waited for all of it
        if self.metrics is not None:
            self.metrics.batch(counts, elapsed, repeats, len(batches))
        results, lo = [], 0
        for batch, attempt, c in batches:
            hi = lo + len(c["tx_id"])
            results.append(P.encode(P.RESULT, base.pack({"batch": batch, "attempt": attempt, "rows": hi - lo}),
                                    [f[lo:hi] for f in frames]))
            lo = hi
        return results

    def _verdict_header(self, scorer: Scorer) -> P.HeaderPrefix:
        """The header fields every verdict message of `scorer` carries (packed once per scorer)."""
        if self._header_of is not scorer:
            self._header = P.HeaderPrefix({"worker": self.name, "boot": self.boot, "model": scorer.model_version,
                                           "rules": scorer.rules_version, "reasons": scorer.reasons,
                                           "rule_names": scorer.rules.names, "columns": P.schema(P.VERDICT_COLUMNS)})
            self._header_of = scorer
        return self._header

    def _publish(self, topic: bytes, header: dict, columns=(), prefix: P.HeaderPrefix | None = None) -> None:
        """Publish on `topic`; the header is prefix's fields (if given), then `header`, then "seq"."""
        header["seq"] = self._seq[topic] = self._seq[topic] + 1
        raw = P.pack(header) if prefix is None else prefix.pack(header)
        try:
            send_frames(self.pub, [topic, P.VERSION, raw, *columns], zmq.NOBLOCK)
        except zmq.Again:
            pass  # PUB is best-effort fan-out; the RESULT is the authoritative answer

    def _hello(self, h: dict) -> list:
        if h.get("role") == "worker":
            if h.get("to", self.name) != self.name:
                raise P.ProtocolError(P.BAD_HEADER, f"this is worker {self.name}, not {h.get('to')}")
            try:
                name, router, pub = str(h["name"]), str(h["router"]), str(h["pub"])
                check_member(name, router, pub)
            except KeyError as e:
                raise P.ProtocolError(P.BAD_HEADER, f"a worker HELLO needs name, router and pub; missing {e}") from None
            except ValueError as e:
                raise P.ProtocolError(P.BAD_HEADER, f"bad worker HELLO: {e}") from None
            namesake = self.members.taken(name, router, pub)
            if namesake is not None:
                raise P.ProtocolError(P.NAME_TAKEN, f"worker name {name} is taken by the member at {namesake.router}")
            event = self.members.heard(name, router, pub)
            if event:
                self._sync_subscriptions()
        members = self.members.public()
        if self._draining_since is not None:
            members = [m for m in members if m["name"] != self.name]
        # This process's verdict numbering so far (tail: messages it never received, also when
        # none follows them, e.g. after it was stopped and this worker dropped its subscription).
        seq = {t.decode(): self._seq[t] for t in VERDICT_TOPICS}
        return P.encode(P.MEMBERS, {"worker": self.name, "members": members, "boot": self.boot, "seq": seq})

    def _load(self) -> dict:
        return {"batches": self.stats["batches"], "rows": self.stats["rows"]}

    def status(self) -> dict:
        ms = np.array(self._batch_ms) if self._batch_ms else np.zeros(1)
        (t0, r0), (t1, r1) = (self._rows_at[0], self._rows_at[-1]) if self._rows_at else ((0, 0), (0, 0))
        return {"name": self.name, "router": self.members.me.router, "pub": self.members.me.pub,
                "version": __version__, "pid": os.getpid(), "uptime_s": round(time.monotonic() - self.started, 3),
                "model": self.scorer.model_version, "rules": self.scorer.rules_version,
                "shadow": self.scorer.shadow_version,
                "batches": self.stats["batches"], "rows": self.stats["rows"], "errors": self.stats["errors"],
                "repeats": self.stats["repeats"], "undelivered": self.stats["undelivered"],
                "expired": self.stats["expired"],
                "labels": self.stats["labels"],
                "rate_tx_per_s": round((r1 - r0) / (t1 - t0), 1) if t1 > t0 else 0.0,
                "in_flight": self._in_flight,
                "decisions": dict(zip(P.DECISIONS, self.stats["decisions"])),
                "batch_ms_p50": round(float(np.percentile(ms, 50)), 4),
                "batch_ms_p99": round(float(np.percentile(ms, 99)), 4),
                "state": self.scorer.features.state_info() | {
                    "remembered_tx_ids": len(self.seen), "snapshot_failures": self.stats["snapshot_failures"],
                    "snapshot_age_s": round(time.monotonic() - self.saved_at, 3) if self.saved_at else None},
                "handover": {"cards_handed_over": self.handover.handed, "cards_taken_over": self.stats["cards_taken_over"],
                             "cards_taken_back": self.handover.taken_back,
                             "cards_in_flight": sum(len(p.records) for p in (*self.handover.pending.values(),
                                                                             *self.handover.doubt.values()))},
                "members": [m["name"] for m in self.members.public()]}

    def _control(self, h: dict, payload: list) -> list:
        op = h.get("op")
        if op == "status":
            return P.encode(P.CONTROL, {"op": "status", "ok": True, "status": self.status()})
        if op == "intel_sync":
            return self._intel_sync(str(h.get("worker", "")))
        if op == "cards":
            return self._take_over(h, payload)
        if op == "deploy":
            old = self.scorer
            s = self._deployed(h, payload)  # validated whole first; swapped between batches
            # Before the swap: a snapshot that does not fit refuses the deploy if it cannot be moved
            # aside, and a final save of the old state forks while that state is still in place
            new_state = self._state_at_deploy(old, s) if s.features is not old.features else None
            self.scorer = s
            if new_state is not None:
                self._state_replaced(old.features.feature_set, s.features.feature_set, new_state)
            if self.metrics is not None:
                self.metrics.running(s.model_version, s.rules_version)
            log.info("deployed model=%s rules=%s shadow=%s", s.model_version, s.rules_version, s.shadow_version)
            return P.encode(P.CONTROL, {"op": "deploy", "ok": True, "worker": self.name, "model": s.model_version,
                                        "rules": s.rules_version, "shadow": s.shadow_version})
        raise P.ProtocolError(P.BAD_CONTROL, f"unknown control op {op!r}; known: status, deploy, intel_sync, cards")

    def _state_at_deploy(self, old: Scorer, new: Scorer) -> tuple[str, tuple | None]:
        """A deploy changes the feature set, from `old` to `new` (not swapped in yet): what becomes
        of the snapshot at state_path. Returns what to log, and the ids and card messages counted
        into the restored state (_restored), or None for a new, empty state.

        To a feature set that keeps state: the snapshot there is restored into the new engine when
        it fits, with the checks and everything a start-up restores (a worker restarted on the
        basic-v1 model of its command line and deployed zfraud-v6 again used to start empty and
        overwrite its snapshot at the next save). One that does not fit is moved aside under a
        name the log gives, before the first save could overwrite it, and the state starts empty;
        if it cannot be moved, the deploy is refused and nothing changes. The restore runs in the
        loop: about 0.5-1.3 s for a 163 MB snapshot (131 071 cards) on a busy 2-core host.

        From a feature set that keeps state to one that does not: the state is saved (forked, as a
        periodic save) as it is at the switch. Else the last periodic save, up to --snapshot-every
        old, would stay: restored by a later deploy or restart, it would lack that time's history
        and hold cards since handed over to other members, which they would get a second time."""
        if self.state_path is None:
            return "", None
        if new.features.state is None:
            if old.features.state is None or self._name_refused_at is not None:
                return "", None
            self._reap_snapshot(block=True)  # one at a time
            self.saver.start(self._save)  # self.scorer is still `old`: the child saves its image
            return (f"the {old.features.feature_set} state is saved to {self.state_path} as it is now, and a "
                    f"deploy back to it or a restart on it restores it (what this worker scores meanwhile is "
                    f"in no state); "), None
        self._reap_snapshot(block=True)  # a save still running must land first
        if not self.state_path.exists():
            return "", None
        t0 = time.perf_counter()
        try:
            counted = self._restored(new.features)
        except (ValueError, OSError) as e:
            aside = self.state_path.with_name(
                f"{self.state_path.name}.not-restored-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
            try:
                os.replace(self.state_path, aside)
            except OSError as e2:
                raise P.ProtocolError(P.BAD_CONTROL, f"deploy refused: the state in {self.state_path} does not fit "
                                                     f"{new.features.feature_set} ({e}) and cannot be moved aside "
                                                     f"({e2}); move it away to start empty") from None
            new.features = FeatureEngine(new.features.feature_set, *self.engine_args)  # not half-loaded
            return (f"state in {self.state_path} not restored: {e}; moved to {aside} (not overwritten), and "), None
        age = time.time() - self.state_path.stat().st_mtime
        return (f"restored state from {self.state_path} in {(time.perf_counter() - t0) * 1000:.0f} ms, saved "
                f"{age:.0f} s ago (what this worker scored since is not in it): {new.features.state_info()}; "), counted

    def _state_replaced(self, was: str, now: str, new_state: tuple[str, tuple | None] = ("", None)) -> None:
        """A deploy replaced the streaming state with a new one, empty or restored from the
        snapshot (_state_at_deploy): the transaction and label ids remembered so far were counted
        in the old state only, so they go with it, and the restored state's come with it. Else
        history sent again to warm the new state would count as repeats and leave it empty (and the next
        snapshot would save, with the new state, ids it never counted). The new state's export
        versions start again, so its counts are published from the first (else none went out
        until they passed the old state's: a zfraud-v6 -> basic-v1 -> zfraud-v6 rollback).
        Terminal counts are the mesh's, and the members keep theirs and ours under this worker's
        name (a member the deploy did not reach, or reached later): so, as a worker restarted
        without its snapshot does, the new state asks every member for all of its counts, ours
        included (else it read the terminal's traffic without theirs, and they, max-merging our
        counts started again from zero under the old ones, without our news)."""
        self._intel_since, self._intel_bucket = 0, None
        what, counted = new_state
        if counted is None:
            log.info("feature set %s -> %s: %sa new, empty streaming state; forgot the %d transaction ids and %d "
                     "fraud label ids remembered with the old one (sent again, they count in the new one)", was, now,
                     what, len(self.seen), len(self.labels_seen))
            counted = SeenSet(self.seen.capacity), SeenSet(self.labels_seen.capacity), Taken()
        else:
            log.info("feature set %s -> %s: %sforgot the %d transaction ids and %d fraud label ids remembered with "
                     "the old one, remembers the %d and %d counted into the restored one", was, now, what,
                     len(self.seen), len(self.labels_seen), len(counted[0]), len(counted[1]))
            self.handover.soon(time.monotonic())  # cards restored that other members own now go to them
        # and the card messages taken into the old state: sent again, they count in the new one
        self.seen, self.labels_seen, self.taken = counted
        if self.scorer.features.state is not None:
            for name in sorted(self.members.members):
                if name != self.name:
                    self._request_sync(name)

    def _take_over(self, h: dict, payload: list) -> list:
        """Cards a peer hands over: this worker owns them now (zfraud.handover). Not just after
        this worker stood still: the message may have waited longer than the sender waits for an
        answer (ACK_S), and a sender that gave up has kept the cards and sends them again; had
        we taken them too, their history would count twice."""
        now = time.monotonic()
        if now < self._stale_until:
            reply = {"op": "cards", "seq": h.get("seq"), "ok": False, "stood_still": True,
                     "retry_after_s": round(self._stale_until - now, 3),
                     "error": "cards not taken: this worker stood still (stopped or paused) a moment ago, and "
                              "their sender may have given up waiting for its answer; send them again"}
            log.warning("%s from %s", reply["error"], h.get("worker"))
            return P.encode(P.CONTROL, {**reply, "worker": self.name})
        reply = take_over(self.scorer.features, h, payload, self.taken)
        if reply.get("repeat"):
            log.info("cards from %s: message %s again, taken already (it had no answer in time); not added twice",
                     h.get("worker"), h.get("seq"))
        elif reply["ok"]:
            self.stats["cards_taken_over"] += reply["added"] + reply["merged"]
            log.info("took over %d cards from %s (%d merged with cards already here)",
                     reply["added"] + reply["merged"], h.get("worker"), reply["merged"])
        else:
            log.warning("%s from %s", reply["error"], h.get("worker"))
        return P.encode(P.CONTROL, {**reply, "worker": self.name})

    def _intel_sync(self, requester: str) -> list:
        """All our own counts for a peer, and what we hold for peers it cannot ask: those that
        left the mesh (a worker restarted under a new name, whose counts are still in the
        windows) and the requester's own name (restarted without its snapshot), in `more`."""
        features = self.scorer.features
        deltas = features.export_intel(-1)
        if deltas is None:
            return P.encode(P.CONTROL, {"op": "intel_sync", "ok": False})
        own = intel_chunks(deltas)
        header, columns = self._intel_frames(next(own))
        more = []
        if requester:  # a requester from before `more` has no name (and gets the first piece only)
            pieces = [(self.name, part) for part in own]  # the rest of our counts, if in pieces
            for name in features.sources:
                if name == requester or name not in self.members.members:
                    pieces += [(name, part) for part in intel_chunks(features.export_peer(name))]
            for name, part in pieces:
                extra, frames = self._intel_frames(part, source=name)
                del extra["bucket_hours"]
                more.append(extra)
                columns += frames
        return P.encode(P.CONTROL, {"op": "intel_sync", "ok": True, **header, "more": more}, columns)

    def _deployed(self, h: dict, payload: list) -> Scorer:
        """The Scorer a deploy asks for: payload = [model JSON or b"", rules TOML or b""]."""
        if len(payload) != 2:
            raise P.ProtocolError(P.BAD_FRAMES, f"deploy carries 2 payload frames (model, rules), got {len(payload)}")
        cur = self.scorer
        try:
            try:  # json's message alone ("Expecting value: line 1 ...") names neither part
                spec = json.loads(bytes(payload[0])) if len(payload[0]) else None
            except ValueError as e:  # UnicodeDecodeError too
                raise ValueError(f"deployed model is not valid JSON: {e}") from None
            model = model_from_dict(spec, "deployed model") if len(payload[0]) else None
            if model is not None:
                check_delay(model, self.engine_args[0])
            if h.get("shadow"):
                if model is None:
                    raise ValueError("a shadow deploy needs a model")
                if model.feature_set != cur.features.feature_set:
                    raise ValueError(f"a shadow model must use the live feature set {cur.features.feature_set}, "
                                     f"not {model.feature_set}")
                return Scorer(cur.model, cur.thresholds, cur.rules, shadow=model, features=cur.features)
            model = model or cur.model
            features = cur.features if model.feature_set == cur.features.feature_set else \
                FeatureEngine(model.feature_set, *self.engine_args)  # a new feature set starts empty
            names = features.names if features else model.features
            text = rules_text(bytes(payload[1]), "deployed rules") if len(payload[1]) else cur.rules.source
            rules = RuleSet.from_toml(text, names, "deployed rules") if text else cur.rules  # re-checked
            return Scorer(model, cur.thresholds, rules, features=features)
        except (ValueError, UnicodeDecodeError) as e:  # ModelError and RulesError are ValueErrors
            raise P.ProtocolError(P.BAD_CONTROL, f"deploy refused: {e}") from None
