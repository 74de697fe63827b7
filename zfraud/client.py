"""The zfraud client: partitions batches by card owner, keeps a ledger, collects verdicts.

    with Client("tcp://127.0.0.1:5555") as client:
        verdicts = client.score(columns)            # one batch, verdicts in input order
        summary = client.stream(chunks, rate=50_000) # many batches, pipelined, with a summary

The ledger (`self.pending`, keyed by batch id) holds every sub-batch sent and not yet answered,
with the worker it went to, its deadline and its attempt count. Only a RESULT (or an ERROR naming
the batch) takes an entry out. A worker that misses a deadline or leaves the member list is
marked down and its entries are re-partitioned over the remaining owners and resent; after
`max_attempts` an entry goes to the dead-letter list (and file), with the reason. A batch that
finds every worker down probes them at once and waits up to deadline_s for one to answer before
it is dead-lettered; if none is back, the --connect endpoints and the workers dropped from the
member list are asked too, and the first member list one of them answers with is taken. Credit: at
most `window` sub-batches are in flight per worker, so a slow mesh slows the sender.

The member list: every second the client asks every worker it knows for its member list, and
routes by the list the most of them answer with (a tie: the longest, then the first in name
order), among the workers not marked down. In a partition the workers' lists differ; asking one of
them would take that one's side, however few workers it has: a worker cut off from the others
(its list: itself) had every healthy worker dropped from the client, and when it then died nothing
was left to send to. Clients that reach every worker so all take the same, the majority's, list,
which is the one its workers own cards by.

score() and stream() tag the entries they send with the call; a RESULT goes to the call that sent
its batch (other entries' RESULTs to `on_result`), and when the call ends, returning or raising,
its entries still unanswered are forgotten: their credit is returned and their late RESULTs are
ignored, as those of a batch resent elsewhere are.
"""
from __future__ import annotations

import functools
import json
import math
import numbers
import os
import random
import select
import threading
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import zmq
from zmq.utils.monitor import recv_monitor_message

from . import protocol as P
from ._dedup import SeenSet
from .mesh import check_endpoint, owners
from .security import HANDSHAKE_EVENTS, Curve, check_handshake, describe_handshake_failure
from .sockets import configure, descriptor_limit, out_of_descriptors, recv_frames, send_frames
from .sources import Reader


_FD_SETSIZE = 1024  # select() watches descriptors below this


class MeshError(RuntimeError):
    """The mesh cannot be reached or cannot take the work; the message says what to check."""


@dataclass
class Pending:
    batch: int
    worker: str
    arrays: dict          # the TX_COLUMNS arrays of this sub-batch
    origin: np.ndarray    # row positions in the caller's batch (for score())
    sent_at: float        # perf_counter when first sent (kept across resends)
    deadline: float       # monotonic deadline for the RESULT
    attempt: int
    call: object = None   # the score()/stream() call that sent it (None: submit() called directly)


REMEMBER_IDS = 1 << 20  # a stream's `repeated` looks this many distinct ids back (a worker remembers as many)
FOLD_ROWS = 1 << 18      # rows of RESULTs read before they are folded into a stream's counts
_AS_SENT = ("tx_id", "score", "decision")  # the VERDICT columns score() returns as they came
DEAD_LETTER_IDS = 100_000  # Client.dead_letters keeps the latest entries, about this many ids (the file keeps all)
OUTAGE_DEADLINES = 6  # with no worker live, batches wait up to a deadline each for this many deadlines (30 s)
PROBE_EVERY_S = 0.25  # after that: how often a batch asks every worker again
PROBE_WAIT_S = 0.1    # ... and how long it waits for an answer; the batches in between are dead-lettered at once


CLOCK_SAMPLES = 8     # a worker's clock offset: the sample with the smallest round trip of the last this many
CLOCK_WAIT_S = 0.25   # a new client waits this long at most for its workers' clocks
CLOCK_SLACK_S = 0.002  # ... and how far two samples may disagree beyond their round trips (clock_ms is whole ms)


class _Clock:
    """Where one worker's clock stands against this client's monotonic clock, so that a BATCH's
    deadline_ms can be written in the clock the worker reads it in (its wall clock), whatever
    this client's wall clock says. Measured as NTP does: a HEARTBEAT sent at monotonic `sent`,
    answered with the worker's `clock_ms` and read at `received`, says that the worker's clock
    read clock_ms at some moment in between, so offset = clock_ms - the midpoint, give or take
    half the round trip. Of the last CLOCK_SAMPLES (one a second), the one with the smallest
    round trip is used: on a loaded host a heartbeat waits behind batches, and only widens its
    own margin. Samples that cannot all hold (their margins do not overlap: the worker's clock
    was stepped, or a new process answers) or a new `boot` start the window afresh."""

    def __init__(self):
        self.samples: list[tuple[float, float]] = []  # (round trip, offset), seconds, oldest first
        self.boot = None

    def add(self, sent: float, received: float, clock_ms, boot) -> None:
        rtt = received - sent
        if not isinstance(clock_ms, int) or isinstance(clock_ms, bool):
            self.samples, self.boot = [], boot  # a worker from before clock_ms answers: not known
            return
        if rtt < 0:
            return
        offset = clock_ms / 1000 - (sent + received) / 2
        if boot != self.boot:
            self.samples, self.boot = [], boot
        if self.samples:
            best_rtt, best = min(self.samples)
            if abs(offset - best) > (rtt + best_rtt) / 2 + CLOCK_SLACK_S:
                self.samples = []  # stepped: the samples before it describe another clock
        self.samples = [*self.samples[-(CLOCK_SAMPLES - 1):], (rtt, offset)]

    @property
    def offset(self) -> float | None:
        """Worker clock - our monotonic clock, seconds, from the sample with the smallest round
        trip; None while not known."""
        return min(self.samples)[1] if self.samples else None


class Sample:
    """An evenly spaced sample of a sequence of numbers, bounded: every `stride`-th value, the
    stride doubling (and every other value kept dropped) whenever more than `capacity` are kept.
    Exact up to `capacity` values; after that, at least capacity / 2 of them, spread evenly
    over the whole sequence."""

    def __init__(self, capacity: int = 1 << 20):
        self.capacity, self.stride, self.seen, self.kept = capacity, 1, 0, 0
        self._parts: list[np.ndarray] = []

    def add(self, values: np.ndarray) -> None:
        first = -self.seen % self.stride  # the first value whose position in the sequence is a multiple of stride
        self.seen += len(values)
        part = np.asarray(values, dtype=np.float64)[first::self.stride]
        self._parts.append(part)
        self.kept += len(part)
        while self.kept > self.capacity:  # kept: positions 0, stride, 2 stride, ...; keep the even ones
            whole = np.concatenate(self._parts)[::2]
            self._parts, self.kept, self.stride = [whole], len(whole), self.stride * 2

    def percentiles(self, q) -> np.ndarray:
        return np.percentile(np.concatenate(self._parts), q)


class Repeats:
    """Counts the ids that are among the last `capacity` distinct ids counted before, in bounded
    memory. A stream whose ids only go up (generated, or a file in id order: the common case)
    costs a comparison and a copy per id; its first id out of order switches to a hash set
    (zfraud._dedup.SeenSet, what workers use), seeded with the ids remembered so far."""

    def __init__(self, capacity: int = REMEMBER_IDS):
        self.capacity, self.head, self.count = capacity, 0, 0
        self.top = None      # the largest id so far, while every id has been larger than the ones before
        self.ring = None     # the last `capacity` ids, while they go up
        self.seen = None     # the hash set, once they have not

    def __call__(self, ids) -> int:
        ids = np.ascontiguousarray(ids, dtype=np.uint64)
        if not len(ids):
            return 0
        if self.seen is None:
            if (self.top is None or ids[0] > self.top) and bool((ids[1:] > ids[:-1]).all()):
                self.top = ids[-1]
                self._remember(ids)
                return 0
            self.seen, before = SeenSet(self.capacity), self._remembered()
            self.seen.check_and_add(before, np.empty(len(before), np.uint8))
            self.ring = None
        new = np.empty(len(ids), np.uint8)
        self.seen.check_and_add(ids, new)
        return len(ids) - int(new.sum())

    def _remember(self, ids: np.ndarray) -> None:
        if self.ring is None:
            self.ring = np.empty(self.capacity, np.uint64)
        ids = ids[-self.capacity:]
        first = min(len(ids), self.capacity - self.head)
        self.ring[self.head:self.head + first] = ids[:first]
        self.ring[:len(ids) - first] = ids[first:]
        self.head = (self.head + len(ids)) % self.capacity
        self.count = min(self.count + len(ids), self.capacity)

    def _remembered(self) -> np.ndarray:
        """The ids remembered, oldest first."""
        if self.ring is None:
            return np.zeros(0, np.uint64)
        if self.count < self.capacity:
            return self.ring[:self.count]
        return np.concatenate([self.ring[self.head:], self.ring[:self.head]])


class _Tally:
    """A stream's decisions and latencies, folded in from the RESULTs read (see Client.stream)."""

    def __init__(self, t0: float, rate: float | None):
        self.rate = rate
        # open loop: row j (stream position) is due at t0s[k] + j / rate, k the last of starts <= j
        self.starts, self.t0s = [0], [t0]
        self.decisions = np.zeros(len(P.DECISIONS), dtype=np.int64)
        self.latency = Sample()

    def reschedule(self, position: int, t0: float) -> None:
        """Rows from `position` on are due from t0 (a live input was late with them)."""
        self.starts.append(position)
        self.t0s.append(t0)

    def fold(self, results: list) -> None:
        """Fold in and clear (when it was read, decisions, stream positions, round trip ms) tuples."""
        if not results:
            return
        read_at, decision, origin, round_trip = zip(*results)
        self.decisions += np.bincount(np.concatenate(decision), minlength=len(P.DECISIONS))
        if self.rate and len(self.starts) == 1:  # open loop: from when each row was due
            lat = np.concatenate([(t - self.t0s[0]) * 1000 - o * (1000 / self.rate) for t, o in zip(read_at, origin)])
        elif self.rate:  # ... on a schedule a live input pushed back
            starts, t0s = np.array(self.starts), np.array(self.t0s)
            lat = np.concatenate([(t - t0s[np.searchsorted(starts, o, side="right") - 1]) * 1000 - o * (1000 / self.rate)
                                  for t, o in zip(read_at, origin)])
        else:
            lat = np.repeat(round_trip, [len(o) for o in origin])
        self.latency.add(lat)
        results.clear()


@dataclass
class Summary:
    """What a stream did, counted in rows of the input (a tx_id the input repeats counts each
    time). `lost` = sent - verdicts - errors - dead_letter: transactions with no answer at all,
    and in no dead-letter entry."""

    sent: int = 0
    repeated: int = 0     # of those sent, the transactions whose tx_id is among the last 2**20 distinct ones
    verdicts: int = 0     # transactions answered with approve/review/decline
    errors: int = 0       # transactions rejected with a reason (a worker's, or unreadable input)
    lost: int = 0
    resent: int = 0       # transactions sent again after a worker missed a deadline or its connection closed
    dead_letter: int = 0  # transactions given up on: unanswered, no live worker, or refused whole
    decisions: dict = field(default_factory=dict)
    elapsed_s: float = 0.0
    tx_per_s: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    p999_ms: float = 0.0
    workers: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


class Labelled(dict):
    """What Client.label returns: {worker: frauds it applied}, and in `refused` how many labels
    the workers refused and did not apply (ts_ms before 2000, or more than 1 day ahead of the
    worker's clock: a unit or date mistake that would switch its terminal's risk off)."""

    refused: int = 0


def _one_thread(method):
    """Refuse a call while another thread is inside one: a Client's sockets and ledger belong to
    one thread at a time. Two threads in one Client mixed their frames on the wire and handed one
    thread the other's verdicts, with no error. (An RLock taken without waiting: the methods call
    each other, and a thread may hand its Client to another between calls.)"""
    @functools.wraps(method)
    def guarded(self, *args, **kwargs):
        if not self._user.acquire(blocking=False):
            raise MeshError(f"Client.{method.__name__}() was called while another thread is using this Client: "
                            f"a Client is not thread-safe, use one Client per thread")
        try:
            return method(self, *args, **kwargs)
        finally:
            self._user.release()
    return guarded


def _not_a_workers(h: dict) -> bool:
    """A reply whose worker or batch no worker sends (a list, say: as a key it would raise
    TypeError, unhashable, out of poll()): ignored, as a reply that does not parse is."""
    return not isinstance(h.get("worker"), (str, type(None))) or isinstance(h.get("batch"), (list, dict))


class Client:
    """A connection to the mesh (see the module docstring). Not thread-safe: its sockets and its
    ledger belong to one thread at a time, so use one Client per thread (a call while another
    thread is inside one raises MeshError)."""

    def __init__(self, connect, window: int = 8, deadline_s: float = 5.0, max_attempts: int = 3,
                 hello_timeout_s: float = 5.0, dead_letter_path=None, curve_dir=None,
                 context: zmq.Context | None = None):
        endpoints = [connect] if isinstance(connect, str) else list(connect)
        for ep in endpoints:  # each refused at once, not after those before it have timed out
            check_endpoint("endpoint", ep)
        self._user = threading.RLock()  # held by the thread inside a call (_one_thread)
        self.window = window
        self.deadline_s = deadline_s
        self.max_attempts = max_attempts
        self.dead_letter_path = dead_letter_path
        self.ctx = context or zmq.Context()
        self._own_ctx = context is None
        self.curve = Curve.from_dir(curve_dir, "client") if curve_dir else None
        self.peers: dict[str, zmq.Socket] = {}       # worker name -> DEALER connected to its ROUTER
        self.clocks: dict[str, _Clock] = {}          # worker name -> its clock, from its HEARTBEAT replies
        self.routers: dict[str, str] = {}            # worker name -> ROUTER endpoint
        self.pubs: dict[str, str] = {}               # worker name -> PUB endpoint
        self.monitors: dict[zmq.Socket, str] = {}    # monitor socket of a peer's DEALER -> worker name
        self.down: set[str] = set()                  # workers that missed a deadline, until they answer again
        self._down_at: dict[str, float] = {}         # ... and when (monotonic) they were marked down
        self.leaving: set[str] = set()               # workers that said goodbye: no new batches, answers awaited
        self.pending: dict[int, Pending] = {}        # batch id -> unanswered sub-batch
        self.inflight: dict[str, set] = {}           # worker name -> batch ids in flight there
        self.dead_letters: list[dict] = []           # the latest sub-batches given up on, with the reason
        self.dead_lettered = 0                       # transactions given up on, all told
        self._dead_kept = 0                          # ... of them in dead_letters
        self.resent = 0                              # transactions sent again
        self.poller = zmq.Poller()
        self._ids = iter(range(random.getrandbits(31) << 32, 1 << 64))
        self._next_refresh = 0.0
        self._polled_at = self._members_at = time.monotonic()  # the last poll(), the last MEMBERS
        self._views: dict[str, list] = {}    # worker name -> the member list it answered with last
        self._routed: list = []              # the member list routed by (_on_members)
        self._awaiting: set[str] = set()     # workers asked for their member list, not answered yet
        self._seeds: list[str] = []          # the --connect endpoints
        self._former: dict[str, str] = {}    # worker dropped from the member list -> its ROUTER (the last 64)
        self._outage = None                  # with no worker live: (since when, the reason to dead-letter with)
        self._waited_out = False             # ... and a wait went unanswered (_await_member)
        self._probes: list = []              # ... its sockets to every worker known, dropped, or a seed
        self._probe_at = 0.0                 # ... and when a batch asks them again (PROBE_EVERY_S)
        self.on_result = None  # callable(verdicts: dict, header: dict) for each RESULT
        self._call = None      # the score()/stream() call sending now: its tag for the ledger
        self._sinks = {}       # call -> its callable(verdicts, header), instead of on_result
        self._closed = False
        self._bootstrap(endpoints, hello_timeout_s)

    # -- membership -------------------------------------------------------------------------
    def _dealer(self, linger_ms: int = 0) -> zmq.Socket:
        """A DEALER with our options, and our CURVE keys when the mesh uses them."""
        sock = configure(self.ctx.socket(zmq.DEALER), linger_ms=linger_ms)
        sock.setsockopt(zmq.SNDTIMEO, 2000)  # a send never blocks forever, even with no peer
        return self.curve.client(sock) if self.curve is not None else sock

    def _bootstrap(self, endpoints: list[str], timeout_s: float) -> None:
        """Ask the first endpoint that completes a handshake for the member list."""
        problems = []
        self._seeds = list(endpoints)
        for ep in endpoints:
            sock = self._dealer()
            try:
                problem = check_handshake(sock, ep, timeout_s)
                if problem is None:
                    sock.send_multipart(P.encode(P.HELLO, {"role": "client", "pid": os.getpid()}), zmq.NOBLOCK)
                    if sock.poll(int(timeout_s * 1000)):
                        msg = P.parse(sock.recv_multipart())
                        if msg.command == P.ERROR:
                            raise MeshError(f"the worker at {ep} refused us: {msg.header.get('message')}")
                        if msg.command != P.MEMBERS:
                            raise MeshError(f"expected MEMBERS from {ep}, got {msg.command.decode()}")
                        self._on_members(msg.header)
                        self._await_clocks()
                        return
                    problem = f"no answer to HELLO within {timeout_s:g} s"
            except P.ProtocolError as e:
                problem = f"it does not speak the zfraud protocol: {e}"
            except zmq.Again:
                problem = "cannot send to it"
            finally:
                sock.close()
            problems.append(f"{ep}: {problem}")
        if len(problems) == 1 and ("key" in problems[0] or "encryption" in problems[0]):
            raise MeshError(f"cannot join the mesh at {problems[0]}")
        raise MeshError(f"no zfraud worker answered at {'; '.join(problems)}. Check that `zfraud worker` runs "
                        f"there and the endpoint is right")

    def _await_clocks(self) -> None:
        """Wait (CLOCK_WAIT_S at most: a worker stopped now does not hold the client up) for the
        answers to the HEARTBEATs _add_peer sent, so that the first batches' deadlines are
        already written in their workers' clocks (_deadline_ms). poll() does not ask for member
        lists meanwhile: answers left unread would bring back a worker marked down later as if it
        had answered then."""
        end, refresh, self._next_refresh = time.monotonic() + CLOCK_WAIT_S, self._next_refresh, math.inf
        try:
            while any(n not in self.clocks for n in self.peers) and (left := end - time.monotonic()) > 0:
                self.poll(max(1, min(10, math.ceil(left * 1000))))
        finally:
            self._next_refresh = refresh

    def _on_members(self, h: dict) -> None:
        """A worker's member list: record it, and route by the list the most workers not marked
        down answer with (see the module docstring). A worker that has not answered yet counts
        for the list routed by now: one answer alone does not drop the workers not asked yet."""
        who = str(h.get("worker"))
        self._awaiting.discard(who)
        self._views[who] = [m for m in (h.get("members") or []) if isinstance(m, dict) and "name" in m]
        votes: dict[frozenset, list] = {}  # the names a list holds -> the lists answered with it
        for name in {who, *(n for n in self.peers if n not in self.down)}:
            view = self._views.get(name, self._routed)
            votes.setdefault(frozenset(str(m["name"]) for m in view), []).append(view)
        best = min(votes, key=lambda k: (-len(votes[k]), -len(k), sorted(k)))
        self._routed = self._views[who] if frozenset(str(m["name"]) for m in self._views[who]) == best else votes[best][0]
        self._update_members(self._routed)

    def _update_members(self, members: list) -> None:
        self._members_at = time.monotonic()
        seen = set()
        for m in members:
            try:
                name, router, pub = str(m["name"]), str(m["router"]), str(m["pub"])
            except (KeyError, TypeError):
                continue
            seen.add(name)
            self.leaving.discard(name)
            if self.routers.get(name) != router:
                if name in self.peers:  # it moved: what it had in flight goes elsewhere
                    self._worker_down(name, f"moved to {router}")
                    self._drop_peer(name)
                self._add_peer(name, router)
            self.pubs[name] = pub
        for name in list(self.peers):
            if name not in seen:
                self._leave(name)

    def _leave(self, name: str) -> None:
        """`name` left the member list. A worker that leaves drains: it answers what it was sent
        (and its card state follows its cards to their new owners). Resending that elsewhere now
        would count those transactions twice, so no new batch goes to it, and it is dropped once
        its batches are answered, or when it misses their deadline or its connection closes
        (_worker_down then resends them)."""
        if self.inflight.get(name):
            self.leaving.add(name)
        else:
            self._drop_peer(name)

    def _add_peer(self, name: str, router: str) -> None:
        sock = None
        try:
            sock = self._dealer()
            # Connection events tell us at once when a worker's process dies (the kernel closes its
            # sockets), long before a deadline would.
            monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED | HANDSHAKE_EVENTS)
        except zmq.ZMQError as e:
            if sock is not None:
                sock.close()
            if not out_of_descriptors(e):
                raise
            raise MeshError(f"cannot connect to worker {name} at {router}: out of file descriptors: "
                            f"{descriptor_limit()}; each worker of the mesh takes a few. Raise the limit, "
                            f"e.g. `ulimit -n 4096`, and start this again") from None
        sock.connect(router)
        self.peers[name], self.routers[name] = sock, router
        self.inflight.setdefault(name, set())
        self.monitors[monitor] = name
        self.poller.register(sock, zmq.POLLIN)
        self.poller.register(monitor, zmq.POLLIN)
        self._probe(name)  # its clock, before the first batch if it answers in time (_send)

    def _connect_afresh(self, name: str) -> None:
        """A new socket to `name` at once, not after the old one's reconnection backoff (up to 8 s)."""
        router = self.routers[name]
        self._close_peer_socket(name, self.peers.pop(name))
        self._add_peer(name, router)

    def _drop_peer(self, name: str) -> None:
        sock = self.peers.pop(name, None)
        self._down_at.pop(name, None)  # a client outlives many workers' names (restarts under new ones)
        if not self.inflight.get(name):
            self.inflight.pop(name, None)
        self.clocks.pop(name, None)  # (a socket made afresh for it keeps it: _reachable)
        self._views.pop(name, None)
        if name in self.routers:
            self._former.pop(name, None)
            self._former[name] = self.routers[name]
            while len(self._former) > 64:
                self._former.pop(next(iter(self._former)))
        if sock is not None:
            self._close_peer_socket(name, sock)

    def _close_peer_socket(self, name: str, sock) -> None:
        for monitor in [mon for mon, n in self.monitors.items() if n == name]:
            self.poller.unregister(monitor)
            del self.monitors[monitor]
            sock.disable_monitor()
            monitor.close()
        self.poller.unregister(sock)
        sock.close()
        self.routers.pop(name, None)
        self.pubs.pop(name, None)
        self.down.discard(name)
        self.leaving.discard(name)

    def _on_monitor(self, monitor) -> None:
        """A peer connection's events, all those queued, in order. A connection lost and made
        again before this client looked (it was idle: the worker restarted, or was stopped for a
        while), with nothing in flight there, loses nothing: the worker is not marked down, so
        the rows sent next still go to their cards' owner."""
        name = self.monitors.get(monitor)
        events = []
        while not monitor.closed:
            try:
                events.append(recv_monitor_message(monitor, zmq.NOBLOCK))
            except zmq.Again:
                break
        for i, event in enumerate(events):
            if name not in self.peers:
                return
            problem = describe_handshake_failure(event)
            event = event["event"]
            if problem is not None:
                self._worker_down(name, problem)
            elif event == zmq.EVENT_DISCONNECTED:
                back = any(e["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED for e in events[i + 1:])
                if not (back and not self.inflight.get(name)):
                    self._worker_down(name, "connection lost")
            elif event == zmq.EVENT_HANDSHAKE_SUCCEEDED and name in self.down:
                self._probe(name)  # (re)connected: it is back if it answers

    def _catch_up(self) -> None:
        """Before rows or labels are routed: if this client has not polled for a while (idle
        between calls), read the connection events and replies that came meanwhile, and if its
        member list is older than the 1 s refresh, ask for it now and wait for every live
        worker's answer (up to 1 s).
        Else an idle client routes by what it knew at its last call: a worker that joined since
        got none of its cards, and a connection lost and made again since (a restart) was only
        noticed after new rows had gone to it, which were then resent and counted twice.
        A connection lost meanwhile and not made again yet, with nothing in flight, is made
        afresh and waited for as long: its socket may be waiting out its reconnection backoff
        (a retry at 3.75 s, the next at 7.75 s) while the worker, restarted, is back already.
        Else its cards went to another worker until the next retry.
        The list's age is taken before what came meanwhile is read: those member lists answer
        the refresh of the last call, and say how the mesh was then (a worker that restarts
        leaves itself out of its list while it drains, and the others drop it), not now."""
        if time.monotonic() - self._polled_at < 0.5:
            return  # busy: poll() keeps up with both
        stale = time.monotonic() - self._members_at > 1.0
        while self.poll(0):
            pass
        lost = [n for n in sorted(self.down) if n in self.peers and not self.inflight.get(n)]
        for name in lost:
            self._down_at[name] = time.monotonic()
            self._connect_afresh(name)
            self.down.add(name)  # until it answers the probe _add_peer sent
        if lost or stale:
            end = time.monotonic() + 1.0
            self._next_refresh = 0.0
            self.poll(0)  # asks every worker
            while ((any(self._live(n) for n in self._awaiting) or any(n in self.down for n in lost))
                   and time.monotonic() < end):
                self.poll(10)  # every live worker's list: one alone may not be the one routed by

    def _probe(self, name: str) -> None:
        """A HEARTBEAT: its answer says that the worker's loop runs, and where its clock stands
        (_on_heartbeat). `t`, echoed, is our monotonic clock at the send."""
        try:
            self.peers[name].send_multipart(P.encode(P.HEARTBEAT, {"t": time.monotonic()}), zmq.NOBLOCK)
        except zmq.Again:
            pass

    def _on_heartbeat(self, h: dict) -> None:
        name, sent = h.get("worker"), h.get("t")
        if name in self.peers and isinstance(sent, float):
            self.clocks.setdefault(name, _Clock()).add(sent, time.monotonic(), h.get("clock_ms"), h.get("boot"))

    def _deadline_ms(self, name: str) -> int:
        """deadline_s from now, in the clock the worker reads a BATCH's deadline_ms in (its wall
        clock: _Clock). A worker that does not say what its clock reads (older than clock_ms), or
        has not answered a HEARTBEAT yet, gets it in our wall clock, as before."""
        clock = self.clocks.get(name)
        if clock is None or clock.offset is None:
            return int((time.time() + self.deadline_s) * 1000)
        return int((time.monotonic() + self.deadline_s + clock.offset) * 1000)

    @property
    def members(self) -> list[str]:
        """Live workers, sorted: the order every client uses for rendezvous hashing."""
        return sorted(n for n in self.peers if n not in self.down and n not in self.leaving)

    @_one_thread
    def refresh_members(self, timeout_s: float = 1.0) -> list[str]:
        """Ask every worker for its member list now, wait for every live worker's answer (up to
        timeout_s), and return the members then. Between calls the list is only as fresh as the
        last poll(): a worker that joined since, or came back, is not in it yet."""
        self._check_open()
        end = time.monotonic() + timeout_s
        self._next_refresh = 0.0
        self.poll(0)  # what came meanwhile, then asks every worker
        while any(self._live(n) for n in self._awaiting) and (left := end - time.monotonic()) > 0:
            self.poll(max(1, min(10, math.ceil(left * 1000))))
        return self.members

    def _live(self, name: str) -> bool:
        """name in self.members, without building the list."""
        return name in self.peers and name not in self.down and name not in self.leaving

    def _refresh(self) -> None:
        """Ask every worker known for its member list (answered asynchronously, as MEMBERS,
        _on_members); a worker marked down that answers is back (_on_answer)."""
        hello = P.encode(P.HELLO, {"role": "client"})
        self._awaiting = set()
        for name, sock in self.peers.items():
            try:
                sock.send_multipart(hello, zmq.NOBLOCK)
                self._awaiting.add(name)
            except zmq.Again:
                continue
            self._probe(name)  # a sample of its clock a second
        for sock in self._probes:
            try:
                sock.send_multipart(hello, zmq.NOBLOCK)
            except zmq.Again:
                continue

    def _await_member(self) -> str | None:
        """No worker is live: each is marked down (all missed a deadline, or lost their
        connection for a moment) or leaving. Probe them now rather than at the next refresh (a
        reply naming a down worker brings it back, _on_answer), and read replies until one is
        back, for deadline_s at most: what a batch sent to a worker gets. The workers dropped
        from the member list and the --connect endpoints are asked too, and the first list one
        answers with is taken. None once one is back; else the reason to dead-letter with.

        An outage gets OUTAGE_DEADLINES deadlines of such waits (30 s by default), one batch at
        a time, which is what a restarted worker needs. After that the batches are dead-lettered
        at once with the same reason: a file sent to a mesh that is gone took one deadline per
        batch (hours). Then every PROBE_EVERY_S a batch asks again and waits PROBE_WAIT_S for
        an answer. The probes are sockets of their own to every worker known, dropped or seed,
        which reconnect every 100 ms (a peer's back off to 8 s), so a worker that comes back is
        found within about 0.3 s of binding its port. The first answer ends the outage
        (_reachable)."""
        now = time.monotonic()
        if self._outage is None:  # it starts: whom to ask, and the reason to give if none answers
            # A leaving worker said goodbye: it is asked at its endpoint, as a dropped one is, not
            # named. Its last answers may still be on their way (it stays a peer until then), and
            # the reason, which lasts the outage, must not depend on whether they came first.
            asked = sorted(n for n in self.peers if n not in self.leaving)
            known = {self.routers[n] for n in asked}
            leaving = [self.routers[n] for n in sorted(self.leaving) if n in self.routers]
            others = [ep for ep in dict.fromkeys([*self._former.values(), *leaving, *self._seeds]) if ep not in known]
            if not asked and not others:
                return "no live workers"  # none known: nobody to ask
            also = f" (nor {len(others)} other endpoint{'s' * (len(others) > 1)})" if others else ""
            whom = (f"none of {', '.join(asked)}{also}" if asked else
                    f"none at {', '.join(others[:3])}{f' and {len(others) - 3} more' * (len(others) > 3)}")
            self._outage = (now, f"no live workers: {whom} answered within {self.deadline_s:g} s")
            # A worker whose list the client followed may have been cut off from the others, which
            # are still there: the dropped workers and the seeds are asked too
            for ep in [*others, *sorted(known)]:
                sock = self._dealer()
                sock.setsockopt(zmq.RECONNECT_IVL, 100)
                sock.setsockopt(zmq.RECONNECT_IVL_MAX, 100)
                self._probes.append(sock)
                sock.connect(ep)
                self.poller.register(sock, zmq.POLLIN)
        since, reason = self._outage
        if now - since < OUTAGE_DEADLINES * self.deadline_s:
            wait_s = self.deadline_s
        elif now >= self._probe_at:
            wait_s = min(PROBE_WAIT_S, self.deadline_s)
            self._probe_at = now + PROBE_EVERY_S
        else:
            wait_s = 0.0
        if wait_s:
            end, self._next_refresh = now + wait_s, now + 1.0
            self._refresh()  # every worker known, and every probe
            while not self.members and (left := end - time.monotonic()) > 0:
                self.poll(max(1, min(100, math.ceil(left * 1000))))  # (poll() probes again every second)
        else:
            self.poll(0)  # replies (and poll()'s per-second refresh)
        if not self.members:
            self._waited_out = True
            return reason
        self._reachable(recovered=True)
        return None

    def _reachable(self, recovered: bool = False) -> None:
        """A worker answered after all (or the client closes): the outage is over. recovered:
        after a wait that went unanswered (_waited_out), every worker's socket with nothing in
        flight is made afresh: one that lost its connection may be waiting out its reconnection
        backoff (up to 8 s), and what is sent to it would wait as long."""
        if recovered and self._waited_out:
            for name in [n for n in self.peers if not self.inflight.get(n)]:
                self._connect_afresh(name)
        self._outage, self._waited_out = None, False
        for sock in self._probes:
            self.poller.unregister(sock)
            sock.close()
        self._probes = []

    # -- sending ----------------------------------------------------------------------------
    @_one_thread
    def submit(self, arrays: dict, origin: np.ndarray | None = None, attempt: int = 0,
               first_sent: float | None = None) -> None:
        """Partition one batch by card owner and send each part (in sub-batches of at most
        protocol.MAX_ROWS rows, what a worker takes), waiting for credit if needed, and for a
        live worker if there is none (up to deadline_s; then the batch is dead-lettered)."""
        self._check_open()
        if attempt == 0:  # a resend's arrays are already checked
            arrays = P.as_columns(arrays, P.TX_COLUMNS)
            self._catch_up()
        n = len(arrays["tx_id"])
        if n == 0:
            return
        if origin is None:
            origin = np.arange(n)
        if not self.members:
            problem = self._await_member()
            if problem:
                self._dead_letter(arrays, attempt, problem)
                return
        elif self._outage is not None:  # a worker answered poll()'s refresh
            self._reachable(recovered=True)
        names = self.members
        owner = owners(arrays["card"], names)
        order = np.argsort(owner, kind="stable")
        bounds = np.searchsorted(owner[order], np.arange(len(names) + 1)).tolist()
        by_owner = {col: arrays[col][order] for col, _ in P.TX_COLUMNS}  # each owner's rows in a run
        origin = origin[order]
        for k, name in enumerate(names):
            for lo in range(bounds[k], bounds[k + 1], P.MAX_ROWS):
                hi = min(lo + P.MAX_ROWS, bounds[k + 1])
                self._send(name, {col: a[lo:hi] for col, a in by_owner.items()}, origin[lo:hi], attempt, first_sent)

    def _send(self, name: str, part: dict, origin: np.ndarray, attempt: int, first_sent: float | None) -> None:
        while len(self.inflight.get(name, ())) >= self.window and self._live(name):
            self.poll(50)  # wait for credit: a RESULT from this worker, or its deadline
        if not self._live(name):  # it went down while we waited: route again
            self.submit(part, origin, attempt, first_sent)
            return
        batch = next(self._ids)
        now = time.monotonic()
        deadline_ms = self._deadline_ms(name)
        try:
            send_frames(self.peers[name], P.batch_message(batch, attempt, part, deadline_ms))
        except zmq.Again:
            self._worker_down(name, "not accepting batches")
            self.submit(part, origin, attempt, first_sent)
            return
        sent_at = time.perf_counter() if first_sent is None else first_sent
        self.pending[batch] = Pending(batch, name, part, origin, sent_at, now + self.deadline_s, attempt, self._call)
        self.inflight[name].add(batch)

    # -- receiving --------------------------------------------------------------------------
    @_one_thread
    def poll(self, timeout_ms: int = 0) -> int:
        """Handle replies that arrive within timeout_ms, and deadlines. Returns messages handled."""
        self._check_open()
        handled = 0
        for sock, _ in self.poller.poll(timeout_ms):
            if sock in self.monitors:
                self._on_monitor(sock)
                continue
            # One reply per socket and poll: more queued replies make the next poll return at
            # once, which costs less than the exception that ends a read of an empty socket.
            if sock.closed:  # a handler may drop this peer (it left or moved)
                continue
            try:
                frames = recv_frames(sock, zmq.NOBLOCK)
            except zmq.Again:
                continue
            self._on_reply(frames)
            handled += 1
        now = self._polled_at = time.monotonic()
        if now >= self._next_refresh:
            self._next_refresh = now + 1.0
            self._refresh()
        for p in [p for p in self.pending.values() if p.deadline <= now]:
            if p.batch in self.pending:  # an earlier _worker_down may have moved it already
                self._worker_down(p.worker, f"no RESULT for batch {p.batch} within {self.deadline_s:g} s", p.batch)
        return handled

    @_one_thread
    def wait(self, timeout_s: float, fds=()) -> bool:
        """Return True as soon as a worker's reply (or a connection event) may be waiting (read
        it with poll(0)), or one of `fds` (other descriptors) is readable, False after timeout_s
        without either, to the microsecond: zmq_poll counts whole (and coarse) milliseconds, too
        long a wait for a sender that lingers 1 ms. A socket's ZMQ_FD signals edge-triggered:
        reading ZMQ_EVENTS resets it, so a message that arrives after that read wakes the select."""
        self._check_open()
        socks, extra, fds = (*self.peers.values(), *self.monitors), tuple(fds), list(fds)
        for sock in socks:
            if sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                return True
            fds.append(sock.getsockopt(zmq.FD))
        if timeout_s <= 0:
            return False
        if max(fds, default=0) < _FD_SETSIZE:
            return bool(select.select(fds, [], [], timeout_s)[0])
        if not extra:
            return bool(self.poller.poll(math.ceil(timeout_s * 1000)))  # select() cannot watch these fds
        poller = zmq.Poller()
        for sock in (*socks, *extra):
            poller.register(sock, zmq.POLLIN)
        return bool(poller.poll(math.ceil(timeout_s * 1000)))

    def _idle(self, fd: int, timeout_s: float) -> None:
        """How a stream waits for a live input's next records (Reader.chunks' idle): up to
        timeout_s, until fd (the input's) is readable or a reply comes, which is read."""
        if self.wait(timeout_s, (fd,)):
            self.poll(0)

    def _on_reply(self, frames, lists: list | None = None) -> None:
        """A worker's reply. lists: where to put a member list, to be taken later, not at once."""
        try:
            msg = P.parse(frames)
        except P.ProtocolError:
            return
        if _not_a_workers(msg.header):
            return
        if msg.command == P.MEMBERS:
            if lists is not None:
                lists.append(msg.header)
                return
            self._on_members(msg.header)
        elif msg.command == P.HEARTBEAT:
            self._on_heartbeat(msg.header)
            sent, name = msg.header.get("t"), msg.header.get("worker")
            if name in self.down and isinstance(sent, float) and sent < self._down_at.get(name, -math.inf):
                return  # a heartbeat (of those every second, for its clock) answered before it went down
        self._on_answer(msg)

    def _on_answer(self, msg) -> None:
        """A RESULT or ERROR for a batch (anything else is ignored). _on_reply checked its header."""
        h = msg.header
        worker = h.get("worker")
        if worker in self.down:
            self.down.discard(worker)  # it answered: it is alive again
        if msg.command == P.RESULT:
            p = self.pending.pop(h.get("batch"), None)
            if p is None:
                return  # a late answer to a batch already resent elsewhere
            self._answered(p)
            try:
                if h.get("columns") != P.schema(P.VERDICT_COLUMNS):
                    raise P.ProtocolError(P.BAD_SCHEMA, f"verdict columns {h.get('columns')!r} are not this client's")
                v = P.read_columns(msg.frames, P.int_field(h, "rows", 0, P.MAX_ROWS), P.VERDICT_COLUMNS)
            except (P.ProtocolError, KeyError, TypeError, ValueError) as e:
                self._dead_letter(p.arrays, p.attempt, f"unreadable RESULT from {worker}: {e}")
                return
            h["latency_ms"] = (time.perf_counter() - p.sent_at) * 1000
            h["origin"] = p.origin
            sink = self._sinks.get(p.call) if p.call is not None else self.on_result
            if sink is not None:
                sink(v, h)
        elif msg.command == P.ERROR:
            p = self.pending.pop(h.get("batch"), None)
            if p is not None:
                self._answered(p)
                if h.get("code") == P.EXPIRED:  # not scored (usually resent already, on our deadline)
                    self._retry(p, f"{p.worker}: {h.get('code')}: {h.get('message')}")
                else:
                    self._dead_letter(p.arrays, p.attempt, f"{h.get('code')}: {h.get('message')}")

    def _answered(self, p: Pending) -> None:
        self.inflight[p.worker].discard(p.batch)
        if p.worker in self.leaving and not self.inflight[p.worker]:
            self._drop_peer(p.worker)  # its last answer: it is gone from this client

    def _worker_down(self, name: str, reason: str, late: int | None = None) -> None:
        """Stop routing to `name` and resend everything it had in flight to the remaining owners.
        Its answers that arrived before that are read first: those batches are done, and
        resending them would count them twice. `late`: the batch whose deadline passed, if that
        is the reason. poll() reads one reply per socket before it looks at deadlines, so a
        caller that did not poll for a while (a stream waiting for its input) finds deadlines
        passed whose answers came in time and are waiting unread: if that batch's answer is among
        them, the worker is not down (one of its batches still unanswered past its own deadline
        makes it down, when poll() gets to that one). A heartbeat read there counts for its clock,
        and a member list once its batches are settled (_settle_down): one that moved another
        worker resends that one's batches, which must not go to this one before it is decided."""
        sock, lists = self.peers.get(name), []
        while sock is not None and not sock.closed and self.inflight.get(name):
            try:
                frames = recv_frames(sock, zmq.NOBLOCK)
            except zmq.Again:
                break
            self._on_reply(frames, lists)
        try:
            self._settle_down(name, reason, late)
        finally:
            for h in lists:
                if name in self.peers:  # (dropped: it was leaving, and its list with it)
                    self._on_members(h)

    def _settle_down(self, name: str, reason: str, late: int | None) -> None:
        if name not in self.peers:
            return  # it was leaving, and that was its last answer: nothing is stranded
        if late is not None and late not in self.pending:
            return  # it answered in time; we read it late
        self.down.add(name)
        self._down_at[name] = time.monotonic()
        stranded = [self.pending.pop(b) for b in sorted(self.inflight.get(name, ()))]
        self.inflight[name] = set()
        if name in self.leaving:
            self._drop_peer(name)
        for p in stranded:
            self._retry(p, f"{name}: {reason}")

    def _retry(self, p: Pending, reason: str) -> None:
        """Send p's rows again, to their cards' owners now, or dead-letter them after max_attempts."""
        if p.attempt + 1 >= self.max_attempts:
            self._dead_letter(p.arrays, p.attempt, f"{reason}; gave up after {p.attempt + 1} attempts")
        else:
            self.resent += len(p.arrays["tx_id"])
            call, self._call = self._call, p.call  # a resend belongs to the call that sent it
            try:
                self.submit(p.arrays, p.origin, p.attempt + 1, p.sent_at)
            finally:
                self._call = call

    def _forget(self, call) -> None:
        """Take the entries `call` sent out of the ledger and return their credit; a late RESULT
        for one of them is then ignored, as one for a batch resent elsewhere is."""
        for p in [p for p in self.pending.values() if p.call is call]:
            del self.pending[p.batch]
            self._answered(p)

    def _dead_letter(self, arrays: dict, attempt: int, reason: str) -> None:
        entry = {"reason": reason, "attempts": attempt + 1, "tx_id": arrays["tx_id"].tolist()}
        self.dead_letters.append(entry)
        self.dead_lettered += len(entry["tx_id"])
        self._dead_kept += len(entry["tx_id"])
        if self._dead_kept > 2 * DEAD_LETTER_IDS:  # bounded, for a client that lives long (trimmed in bulk)
            old = 0
            while self._dead_kept > DEAD_LETTER_IDS and old < len(self.dead_letters) - 1:
                self._dead_kept -= len(self.dead_letters[old]["tx_id"])
                old += 1
            del self.dead_letters[:old]
        if self.dead_letter_path:
            with open(self.dead_letter_path, "a") as f:
                f.write(json.dumps(entry) + "\n")

    @_one_thread
    def drain(self, timeout_s: float = 60.0, stop=lambda: False) -> bool:
        """Wait until every sent sub-batch is answered or dead-lettered; False on timeout. Once
        stop() is true, wait deadline_s more at most: what was sent by then is due by then."""
        self._check_open()
        end, stopping = time.monotonic() + timeout_s, False
        while self.pending and time.monotonic() < end:
            if not stopping and stop():
                stopping, end = True, min(end, time.monotonic() + self.deadline_s)
            self.poll(50)
        return not self.pending

    # -- convenience APIs -------------------------------------------------------------------
    @_one_thread
    def score(self, arrays: dict, timeout_s: float = 30.0) -> dict:
        """Score one batch; returns, in input order, a dict of arrays: "tx_id", "score" and
        "decision" as the VERDICT columns (PROTOCOL §5.2), and three object arrays:

        - "reason": text, the feature that pushed a row's score up most, the check a rejected row
          failed ("error: ..."), or None;
        - "fired": a tuple of the names of the rules that fired for the row, in the rule set's
          order, () when none did (always for a rejected row);
        - "worker": the name of the worker that scored the row.

        On the wire, reason is an index into each RESULT's own `reasons` table, which changes with
        the model, and the fired rules a bitmask over its `rule_names`, which changes with the rule
        set deployed (PROTOCOL §5.4); both are resolved per RESULT (protocol.reason_texts,
        fired_names). (Earlier versions returned the index as "reason" and the bitmask as "rules",
        with nothing to read them by.) If it raises, the rows it sent and had no answer for are forgotten (see
        the module docstring); the workers may still score them."""
        self._check_open()
        arrays = P.as_columns(arrays, P.TX_COLUMNS)
        n = len(arrays["tx_id"])
        out = {name: np.zeros(n, dtype=dt) for name, dt in P.VERDICT_COLUMNS if name in _AS_SENT}
        out["score"][:] = np.nan
        out["decision"][:] = P.REJECTED
        out["reason"] = np.full(n, None, dtype=object)
        out["fired"] = np.full(n, None, dtype=object)
        out["worker"] = np.full(n, "", dtype=object)
        answered = np.zeros(n, dtype=bool)

        def collect(v, h):
            for name in _AS_SENT:
                out[name][h["origin"]] = v[name]
            out["reason"][h["origin"]] = P.reason_texts(v["reason"], h)
            out["fired"][h["origin"]] = P.fired_names(v["rules"], h)
            out["worker"][h["origin"]] = str(h.get("worker", ""))
            answered[h["origin"]] = True

        call = self._begin(collect)
        try:
            self.submit(arrays)
            if not self.drain(timeout_s):
                raise MeshError(f"{int((~answered).sum())} of {n} transactions unanswered after {timeout_s:g} s")
        finally:
            self._end(call)
        if not answered.all():
            raise MeshError(f"{int((~answered).sum())} of {n} transactions went to the dead-letter list: "
                            f"{self.dead_letters[-1]['reason']}")
        return out

    @_one_thread
    def stream(self, chunks, rate: float | None = None, linger_s: float = 0.001, progress=None,
               on_verdicts=None, drain_timeout_s: float = 120.0, input_errors=lambda: 0,
               stop=lambda: False) -> Summary:
        """Send every chunk (dicts of TX_COLUMNS arrays) and wait for every answer.

        Without `rate`: closed loop, as fast as credit allows; latency is timed per sub-batch
        from its first send to its RESULT. With `rate`: open loop; transaction j is due at
        start + j / rate, a batch goes out when a chunk's worth of rows is due or when the oldest
        due row has waited `linger_s`, and latency is timed per transaction from when it was due,
        so a stall anywhere shows up instead of being hidden.

        A chunk of 0 rows is a tick: the replies waiting are read and stop() is asked. A
        zfraud.sources Reader of a live input (a pipe, a terminal) yields one whenever it has
        been idle for a tick (0.1 s), and waits for its records reading the replies meanwhile.

        progress(rows) is called as answers arrive; on_verdicts(v, header) sees each RESULT;
        input_errors() reports rows the reader could not parse. stop() is asked after each batch
        sent and at each tick (a signal handler may set what it reads): once it is true, no more
        chunks are read, what was sent gets up to deadline_s to be answered, and the summary
        counts what was sent (the rows not answered by then as lost). If it raises (a chunk that
        fails the checks score() makes, or an input that raises), the rows it sent and had no
        answer for are forgotten (see the module docstring); the workers may still score them."""
        self._check_open()
        if rate is not None and (isinstance(rate, bool) or not isinstance(rate, numbers.Real)
                                 or not math.isfinite(rate) or rate <= 0):
            raise ValueError(f"rate must be a positive number of transactions per second, got {rate!r}")
        # What each RESULT brought: (when it was read, decisions, the rows' positions in the
        # stream, round trip in ms). Reading a RESULT only appends to `results`, so that it costs
        # the sending loop as little as possible; every FOLD_ROWS rows they are folded into
        # `tally` (and their frames freed), so that memory stays bounded however long the stream.
        results, unfolded = [], [0]
        resent0 = self.resent
        dead0 = self.dead_lettered
        t0 = start = time.perf_counter()  # t0: the open loop's schedule, which a live input may push back
        tally = _Tally(t0, rate)
        count_repeats = Repeats()  # for `repeated`: the last REMEMBER_IDS distinct ids, as a worker keeps them
        repeated = 0

        def collect(v, h):
            results.append((time.perf_counter(), v["decision"], h["origin"], h["latency_ms"]))
            unfolded[0] += len(v["decision"])
            if unfolded[0] >= FOLD_ROWS:
                tally.fold(results)
                unfolded[0] = 0
            if progress is not None:
                progress(len(v["tx_id"]))
            if on_verdicts is not None:
                on_verdicts(v, h)

        call = self._begin(collect)
        sent = 0
        own, live = None, False  # a Reader's chunks, closed here: the input is read no further once stopped
        if isinstance(chunks, Reader) and type(chunks).__iter__ is Reader.__iter__:  # (not a subclass's own)
            live = chunks._live_path() is not None
            chunks = own = chunks.chunks(idle=self._idle)  # a live input waits reading the replies
        read_error = []

        def reading(chunks):
            """The chunks, up to an error reading them: what was read before it is still sent and
            answered (drained), and the error raised after."""
            try:
                yield from chunks
            except Exception as e:
                read_error.append(e)

        try:
            waited_from = time.perf_counter()
            for chunk in reading(chunks):
                chunk = P.as_columns(chunk, P.TX_COLUMNS)  # as score() checks its batch
                n = len(chunk["tx_id"])
                if not n:  # a live input's tick: it has nothing to send now
                    self.poll(0)
                    if stop():
                        break
                    continue
                if rate and live:  # a row of a live input is due no earlier than it was read
                    now = time.perf_counter()
                    behind = min(now - t0 - sent / rate, now - waited_from)
                    if behind > 0:
                        t0 += behind
                        tally.reschedule(sent, t0)
                if not rate:
                    self.submit(chunk, np.arange(sent, sent + n))
                    sent += n
                    repeated += count_repeats(chunk["tx_id"])
                    self.poll(0)
                    if stop():
                        break
                    continue
                pos = 0
                while pos < n and not stop():
                    now = time.perf_counter() - t0
                    due = min(int(now * rate) + 1 - sent, n - pos)  # rows of this chunk due by now
                    if due == n - pos or (due > 0 and now - sent / rate >= linger_s):
                        part = {k: v[pos:pos + due] for k, v in chunk.items()}
                        self.submit(part, np.arange(sent, sent + due))
                        sent += due
                        pos += due
                        self.poll(0)
                        continue
                    # wait until the chunk is all due, or the oldest due row has lingered enough;
                    # answers are read as they arrive meanwhile
                    if self.wait(min((sent + n - pos - 1) / rate, sent / rate + linger_s) - now):
                        self.poll(0)
                repeated += count_repeats(chunk["tx_id"][:pos])  # the rows sent, once per chunk
                if stop():
                    break
                waited_from = time.perf_counter()
            if own is not None:
                own.close()
            self.drain(drain_timeout_s, stop)
            if read_error:
                raise read_error[0]
        finally:
            if own is not None:
                own.close()
            self._end(call)  # what is still unanswered is counted as lost below
        elapsed = time.perf_counter() - start
        s = Summary(workers=len(self.members))
        s.sent = sent + input_errors()
        s.repeated = repeated
        tally.fold(results)
        # Every row sent is answered at most once: the ledger takes a batch's first RESULT and
        # ignores a late one for a batch resent since. So rows are counted, not tx_ids, which the
        # input may repeat.
        decisions = tally.decisions
        rejected = int(decisions[P.REJECTED])
        s.verdicts = int(decisions.sum()) - rejected
        if tally.latency.kept:
            s.p50_ms, s.p99_ms, s.p999_ms = (round(float(x), 3) for x in tally.latency.percentiles([50, 99, 99.9]))
        s.dead_letter = self.dead_lettered - dead0
        s.errors = rejected + input_errors()
        s.lost = s.sent - s.verdicts - s.errors - s.dead_letter
        s.resent = self.resent - resent0
        s.decisions = dict(zip(P.DECISIONS, decisions.tolist()))
        s.elapsed_s = round(elapsed, 3)
        s.tx_per_s = round(s.verdicts / elapsed, 1) if elapsed > 0 else 0.0
        return s

    def _begin(self, sink) -> tuple:
        """Start a score()/stream() call: the entries it sends are tagged with the token returned,
        and their RESULTs go to sink. Returns (token, the call it runs within, if any)."""
        call, outer = object(), self._call
        self._sinks[call], self._call = sink, call
        return call, outer

    def _end(self, call: tuple) -> None:
        """End a call: forget its unanswered entries (a call that raises leaves the client clean)."""
        token, self._call = call
        self._sinks.pop(token, None)
        self._forget(token)

    # -- labels -------------------------------------------------------------------------------
    @_one_thread
    def label(self, arrays: dict, timeout_s: float = 10.0) -> dict:
        """Send confirmed labels (LABEL_COLUMNS arrays), each to its card's owner, and wait until
        every owner has applied its share. The owner counts the frauds and shares the counts with
        the other workers as terminal intelligence, so each label counts exactly once in the mesh.
        A worker that does not answer within timeout_s is marked down and its share goes to the
        cards' new owners, up to max_attempts sends in all. Returns {worker: frauds applied},
        with the number of labels the workers refused as `.refused` (Labelled)."""
        self._check_open()
        arrays = P.as_columns(arrays, P.LABEL_COLUMNS, "labels")
        n = len(arrays["card"])
        if n > P.MAX_LABEL_ROWS:  # more than one message may carry: in turn, in pieces that fit
            out = Labelled()
            for lo in range(0, n, P.MAX_LABEL_ROWS):
                piece = self.label({c: arrays[c][lo:lo + P.MAX_LABEL_ROWS] for c in P.LABEL_NAMES}, timeout_s)
                for name, frauds in piece.items():
                    out[name] = out.get(name, 0) + frauds
                out.refused += piece.refused
            return out
        out, todo, reason = Labelled(), np.arange(n), ""
        self._catch_up()
        for _ in range(self.max_attempts):
            names = self.members
            if not names:
                raise MeshError("no live workers to take the labels" + (f" ({reason})" if reason else ""))
            owner = owners(arrays["card"][todo], names)
            parts = {name: todo[owner == k] for k, name in enumerate(names)}
            silent = self._send_labels(arrays, {name: idx for name, idx in parts.items() if len(idx)}, timeout_s, out)
            if not silent:
                return out
            # A worker that did not answer (killed, or cut off) is marked down like one that
            # misses a batch's deadline, and its labels go to the new owners of their cards. The
            # owner deduplicates by tx_id, so a label that reached a worker still in the list
            # counts once; one that a silent worker applied after all would count twice.
            for name in silent:
                self._worker_down(name, f"no answer to labels within {timeout_s:g} s")
            reason = f"{', '.join(silent)} did not acknowledge labels within {timeout_s:g} s"
            todo = np.concatenate([parts[name] for name in silent])
        raise MeshError(f"{len(todo):,} labels were not acknowledged after {self.max_attempts} attempts: {reason}")

    def _send_labels(self, arrays: dict, parts: dict, timeout_s: float, out: dict) -> list:
        """Send each worker its rows of `arrays` (parts: name -> row indices) and add the frauds
        each applied to out[name], and the labels it refused to out.refused. Returns the workers
        that did not answer within timeout_s; a worker that refuses a whole message raises
        MeshError (a refusal does not change with a retry)."""
        socks, silent = {}, []
        try:
            for name, idx in parts.items():
                part = {c: np.ascontiguousarray(arrays[c][idx]) for c, _ in P.LABEL_COLUMNS}
                sock = socks[name] = self._dealer()
                sock.connect(self.routers[name])
                try:
                    sock.send_multipart(P.encode(P.LABEL, {"rows": len(idx), "columns": P.schema(P.LABEL_COLUMNS)},
                                                 P.column_frames(part, P.LABEL_COLUMNS)), copy=False)
                except zmq.Again:  # it takes nothing: the same as no answer
                    silent.append(name)
            end = time.monotonic() + timeout_s
            for name, sock in socks.items():
                if name in silent:
                    continue
                if not sock.poll(max(0, int((end - time.monotonic()) * 1000))):
                    silent.append(name)
                    continue
                msg = P.parse(sock.recv_multipart())
                if msg.command == P.ERROR:
                    raise MeshError(f"worker {name} refused labels: {msg.header.get('message')}")
                out[name] = out.get(name, 0) + msg.header.get("frauds", 0)
                out.refused += msg.header.get("refused", 0)  # (a worker from before refuses none)
            return silent
        finally:
            for sock in socks.values():
                sock.close()

    # -- control ------------------------------------------------------------------------------
    @_one_thread
    def control(self, name: str, op: str, timeout_s: float = 5.0, payload=(), **args) -> dict:
        """Send a CONTROL request (header fields `args`, extra frames `payload`) to one worker and
        wait for its answer, on a socket of its own."""
        self._check_open()
        if name not in self.routers:
            raise MeshError(f"no worker {name!r} in the mesh; its members are {', '.join(sorted(self.routers)) or 'none'}")
        sock = self._dealer()
        sock.setsockopt(zmq.SNDTIMEO, int(timeout_s * 1000))
        try:
            sock.connect(self.routers[name])
            try:
                sock.send_multipart(P.encode(P.CONTROL, {"op": op, **args}, list(payload)))
            except zmq.Again:
                raise MeshError(f"worker {name} did not take {op} within {timeout_s:g} s") from None
            if not sock.poll(int(timeout_s * 1000)):
                raise MeshError(f"worker {name} did not answer {op} within {timeout_s:g} s")
            msg = P.parse(sock.recv_multipart())
            if msg.command == P.ERROR:
                why = str(msg.header.get("message")).removeprefix(f"{op} refused: ")  # not "refused deploy: deploy refused: "
                raise MeshError(f"worker {name} refused {op}: {why}")
            return msg.header
        finally:
            sock.close()

    def _check_open(self) -> None:
        if self._closed:
            raise MeshError("the client is closed")

    @_one_thread
    def close(self) -> None:
        """Close the sockets (and the context, if the client made it). Closing twice is fine;
        every other method then raises MeshError("the client is closed").

        The client's sockets linger 0 (sockets.configure): a close drops what they have not sent,
        and loses nothing by it (a batch is in the ledger until answered, a label or a CONTROL
        call waits for its answer), where a lingering socket held the close up for a worker that
        is gone. Then the context's term is waited for up to a second, in a thread: a Ctrl-C that
        struck as the client made a socket (inside pyzmq's Context.socket, or before the client
        kept it) left one that only the exception's traceback holds, and term waits for every
        socket. That one closes itself once the traceback goes (pyzmq closes a socket nothing
        holds), and the term ends then; in this thread it had waited forever (`zfraud backtest`
        hung on about 3 % of Ctrl-Cs)."""
        if self._closed:
            return
        self._closed = True
        for name in list(self.peers):
            self._drop_peer(name)
        self._reachable()
        if self._own_ctx:
            term = threading.Thread(target=self.ctx.term, name="zfraud-client-term", daemon=True)
            term.start()
            term.join(1.0)

    def __enter__(self):
        self._check_open()
        return self

    def __exit__(self, *exc):
        self.close()
