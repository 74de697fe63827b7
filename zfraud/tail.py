"""Following the verdict stream: subscribe to every member's verdict.<decision> topics.

The member list comes from the worker given (HELLO -> MEMBERS), then from any member, and is
refreshed every second, so a worker that joins later is followed too, also after the first one
has gone. PUB/SUB is best-effort fan-out: each publisher numbers its
messages (`seq`, per topic, from 1 in each process, which `boot` names), and `Tail.gaps` counts
the messages known to be missed: a jump in a process's `seq`, and, for a new process under a
worker's name (it restarted) or a worker that joined after this tail started, its messages before
the first one seen (they went out before this SUB connected: a worker numbers every verdict
message, also those it does not build because no one follows their topic yet). A worker's
MEMBERS reply, asked for at start (before this SUB connects to it: what it numbers after that
either arrives or is missed) and every second, carries its numbering so far: what it
published and never arrived counts too, once the report is 1 s old and that worker has been
quiet for 1 s (and, after a --timeout silence, as every member reports it then), so that a tail
that was stopped (Ctrl-Z), and dropped by the worker with all that was queued for it, learns of
it without waiting for a next message.
"""
from __future__ import annotations

import time

import zmq

from . import protocol as P
from .client import MeshError
from .security import Curve, check_handshake
from .sockets import configure


def records(cols: dict, h: dict):
    """One dict per verdict: tx_id, score, decision, reason (text), fired (a list of the names of the
    rules that fired), worker, model, rules (the rule set's version),
    seq (the number of the message it came in, per worker process and decision) and boot (the worker
    process; see the module's docstring)."""
    for tx, score, d, r, fired in zip(cols["tx_id"].tolist(), cols["score"].tolist(), cols["decision"].tolist(),
                                      P.reason_texts(cols["reason"], h).tolist(),
                                      P.fired_names(cols["rules"], h).tolist()):
        yield {"tx_id": tx, "score": round(score, 6) if score == score else None,
               "decision": P.DECISIONS[d] if d < len(P.DECISIONS) else str(d),
               "reason": r,
               "fired": list(fired),
               "worker": h.get("worker"), "model": h.get("model"), "rules": h.get("rules"), "seq": h.get("seq"),
               "boot": h.get("boot")}


class Tail:
    def __init__(self, connect: str, decisions=P.DECISIONS, hello_timeout_s: float = 5.0, curve_dir=None,
                 context: zmq.Context | None = None):
        if isinstance(decisions, str):  # "decline" or "decline,review", as the command line takes them
            decisions = [d.strip() for d in decisions.split(",") if d.strip()]
        unknown = set(decisions) - set(P.DECISIONS)
        if unknown:
            raise ValueError(f"unknown decision {', '.join(sorted(unknown))}; choose from {', '.join(P.DECISIONS)}")
        self.ctx = context or zmq.Context()
        self._own_ctx = context is None
        curve = Curve.from_dir(curve_dir, "client") if curve_dir else None
        self.sub = configure(self.ctx.socket(zmq.SUB), rcvhwm=100_000)
        self.hello = configure(self.ctx.socket(zmq.DEALER))
        self.hello.setsockopt(zmq.IMMEDIATE, 1)  # refreshes go only to members that are up
        if curve is not None:
            curve.client(self.sub)
            curve.client(self.hello)
        for d in decisions:
            self.sub.setsockopt(zmq.SUBSCRIBE, b"verdict." + d.encode())
        problem = check_handshake(self.hello, connect, hello_timeout_s)
        if problem is not None:
            self.close()
            raise MeshError(f"cannot follow the mesh at {connect}: {problem}")
        self.connect = connect
        self.pubs: dict[str, str] = {}  # worker name -> PUB endpoint we are connected to
        self.routers: dict[str, str] = {}  # worker name -> its ROUTER endpoint
        self.asking = {connect}  # the endpoints the member-list requests go to (round-robin)
        self.last_seq: dict[tuple, tuple] = {}  # (worker, topic) -> (its process's boot, last seq seen)
        self.reported: dict[tuple, tuple] = {}  # (worker, topic) -> (boot, seq published, when reported)
        self.heard_at: dict[str, float] = {}  # worker -> when its last message was read
        self.topics = {b"verdict." + d.encode() for d in decisions}
        self.gaps = 0
        self._ask()
        if not self.hello.poll(int(hello_timeout_s * 1000)):
            self.close()
            raise MeshError(f"no zfraud worker answered at {connect} within {hello_timeout_s:g} s: "
                            f"check that `zfraud worker` runs there and the endpoint is right")
        # Where each first member's numbering stands, then the SUB connections to them: what they
        # number after that start either comes or is counted missed. (Connected first, the
        # numbering was taken once the subscriptions took effect, and what the workers published
        # while they were on their way was dropped by PUB/SUB and not counted.)
        self.first_members = None  # starting: the replier's numbering is its start
        self._on_hello()
        connected = self._start_numbering(curve, min(hello_timeout_s, 2.0))
        self.first_members = set(self.pubs)  # a worker seen later: its messages before the first one heard are missed
        for pub in set(self.pubs.values()) - connected:  # those that did not answer in time
            self.sub.connect(pub)
        self._next_refresh = time.monotonic() + 1.0

    def _ask(self) -> None:
        try:
            self.hello.send_multipart(P.encode(P.HELLO, {"role": "client"}), zmq.NOBLOCK)
        except zmq.Again:
            pass

    def _on_hello(self) -> None:
        try:
            msg = P.parse(self.hello.recv_multipart())
        except P.ProtocolError:
            return
        if msg.command != P.MEMBERS:
            return
        members = {str(m["name"]): (str(m["router"]), str(m["pub"])) for m in msg.header.get("members") or []}
        # Follow the verdicts of every member, and ask any of them (round-robin) for the member
        # list, so that tail outlives the worker it was pointed at. A member missing from one
        # list stays connected (lists differ for a moment while gossip spreads; a reconnect
        # would miss verdicts); ZeroMQ retries a gone one's endpoints in the background.
        for name, (router, pub) in members.items():
            if self.pubs.get(name) != pub:
                if self.first_members is not None:  # not while starting: see __init__
                    if name in self.pubs:
                        self.sub.disconnect(self.pubs[name])
                    self.sub.connect(pub)
                self.pubs[name] = pub
            if self.routers.get(name) != router:
                if name in self.routers:
                    self._ask_at(self.routers[name], False)
                self._ask_at(router, True)
                self.routers[name] = router
        replier = str(msg.header.get("worker", ""))
        if replier in self.routers and replier not in members and len(self.asking) > 1:
            self._ask_at(self.routers.pop(replier), False)  # draining: asking it would keep it busy
        self._note_numbering(msg.header)

    def _numbering(self, header: dict) -> list:
        """((worker, topic), boot, seq) for each followed topic of a MEMBERS reply's numbering."""
        seqs, boot, replier = header.get("seq"), header.get("boot"), str(header.get("worker", ""))
        if not isinstance(seqs, dict) or not isinstance(boot, int) or replier not in self.pubs:
            return []  # an older worker, or one this tail does not follow
        return [((replier, str(t).encode()), boot, n) for t, n in seqs.items()
                if str(t).encode() in self.topics and isinstance(n, int)]

    def _note_numbering(self, header: dict) -> None:
        for key, boot, seq in self._numbering(header):
            if key not in self.last_seq and (self.first_members is None or key[0] in self.first_members):
                self.last_seq[key] = boot, seq  # its start numbering (or none came from it: take this one)
            else:
                self.reported[key] = boot, seq, time.monotonic()

    def _start_numbering(self, curve, wait_s: float) -> set:
        """Where each member's numbering stands as this tail starts following it: what it publishes
        from then on and never arrives is missed (asked of each on a DEALER of its own, at once).
        The SUB connects to a member's PUB as soon as it has answered, not once all have (a member
        slow to answer would cost the others' verdicts meanwhile); returns the PUBs connected."""
        pub_of = {router: self.pubs[name] for name, router in self.routers.items() if name in self.pubs}
        connected = set()
        socks = {}
        for router in self.routers.values():
            sock = configure(self.ctx.socket(zmq.DEALER))
            if curve is not None:
                curve.client(sock)
            sock.connect(router)
            sock.send_multipart(P.encode(P.HELLO, {"role": "client"}), zmq.NOBLOCK)  # queued until connected
            socks[sock] = router
        poller = zmq.Poller()
        for sock in socks:
            poller.register(sock, zmq.POLLIN)
        end = time.monotonic() + wait_s
        try:
            while socks and (left := end - time.monotonic()) > 0:
                for sock, _ in poller.poll(max(1, int(left * 1000))):
                    try:
                        header = P.parse(sock.recv_multipart()).header
                    except P.ProtocolError:
                        header = {}
                    for key, boot, seq in self._numbering(header):
                        self.last_seq.setdefault(key, (boot, seq))
                    pub = pub_of.get(socks[sock])
                    if pub is not None and pub not in connected:
                        self.sub.connect(pub)
                        connected.add(pub)
                    poller.unregister(sock)
                    del socks[sock]
                    sock.close()
        finally:
            for sock in socks:
                sock.close()
        return connected

    def finish(self, wait_s: float = 1.0) -> int:
        """After a silence (batches' timeout_s without a message from any worker): ask every
        member for its numbering (up to wait_s for the answers), count what it published and this
        tail never read, and return the gaps in all. Not after a stop at --count or Ctrl-C: what
        the workers published after the last message read was not missed, only not read."""
        asked = len(self.asking)
        for _ in range(asked):
            self._ask()  # the DEALER deals them out: one to each member
        end = time.monotonic() + wait_s
        while asked and (left := end - time.monotonic()) > 0 and self.hello.poll(max(1, int(left * 1000))):
            self._on_hello()
            asked -= 1
        self._count_unreceived(settle_s=0.0)
        return self.gaps

    def _count_unreceived(self, settle_s: float = 1.0) -> None:
        """Count as missed what a worker reported published, settle_s ago or more, and never
        arrived, once that worker has been quiet for settle_s (no message from it: its messages
        come in order on one connection, so a tail that is behind still has them coming; call it
        when the SUB socket is empty)."""
        now = time.monotonic()
        for key, (boot, seq, at) in list(self.reported.items()):
            if now - at < settle_s or now - self.heard_at.get(key[0], float("-inf")) < settle_s:
                continue
            del self.reported[key]
            last_boot, last = self.last_seq.get(key, (None, None))
            if last_boot != boot and self.heard_at.get(key[0], 0.0) > at:
                continue  # the report came from a process before the one heard since (a restart)
            if last_boot != boot:
                self.gaps += seq  # a process none of whose messages arrived
            elif last is not None and seq > last:
                self.gaps += seq - last
            else:
                continue
            self.last_seq[key] = boot, seq

    def _ask_at(self, router: str, ask: bool) -> None:
        if ask and router not in self.asking:
            self.hello.connect(router)
            self.asking.add(router)
        elif not ask and router in self.asking:
            self.hello.disconnect(router)
            self.asking.discard(router)

    def batches(self, timeout_s: float | None = None):
        """Yield (header, verdict columns) per published message; stop after timeout_s of silence."""
        poller = zmq.Poller()
        poller.register(self.sub, zmq.POLLIN)
        poller.register(self.hello, zmq.POLLIN)
        silent_since = last_turn = time.monotonic()
        while True:
            now = time.monotonic()
            if now - last_turn > 1.0:  # this process did not run (stopped, Ctrl-Z): not a silence it heard
                silent_since += now - last_turn
                self.reported = {k: (b, n, at + now - last_turn) for k, (b, n, at) in self.reported.items()}
            last_turn = now
            if now >= self._next_refresh:
                self._ask()
                self._next_refresh = now + 1.0
            if timeout_s is not None and now - silent_since > timeout_s:
                self.finish()  # silent: what the workers published since never came
                return
            events = dict(poller.poll(200))
            if self.hello in events:
                self._on_hello()
            if self.sub not in events:
                self._count_unreceived()
                continue
            frames = self.sub.recv_multipart()
            try:
                if len(frames) < 3 or frames[1] != P.VERSION:
                    raise P.ProtocolError(P.BAD_VERSION, "not a zfraud verdict message")
                h = P.unpack(frames[2])
                cols = P.read_columns(frames[3:], int(h["rows"]), P.VERDICT_COLUMNS)
            except (P.ProtocolError, KeyError, TypeError, ValueError):
                continue
            key, seq, boot = (str(h.get("worker")), frames[0]), h.get("seq"), h.get("boot")
            if isinstance(seq, int):
                last_boot, last = self.last_seq.get(key, (None, None) if key[0] not in self.first_members else (boot, None))
                if last_boot != boot or (boot is None and last is not None and seq <= last):
                    self.gaps += seq - 1  # a new process (seq counts per process): its messages before this one
                elif last is not None and seq > last + 1:
                    self.gaps += seq - last - 1
                self.last_seq[key] = boot, seq
            silent_since = self.heard_at[key[0]] = time.monotonic()
            yield h, cols

    def verdicts(self, timeout_s: float | None = None):
        """Yield one dict per verdict (see `records`)."""
        for h, cols in self.batches(timeout_s):
            yield from records(cols, h)

    def close(self) -> None:
        self.sub.close()
        self.hello.close()
        if self._own_ctx:
            self.ctx.term()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
