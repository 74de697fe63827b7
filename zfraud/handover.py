"""Card handover: when the mesh changes, a card's state follows the card to its new owner.

Ownership is rendezvous hashing over the member names (zfraud.mesh): a worker that joins takes a
share of every member's cards, one that leaves gives its share to the others. Clients route a
card to its new owner as soon as they see the new member list (within a second), and without
the card's record that owner would score it as a card with no history until its windows
refilled: 30 days for the 30-day windows.

So a worker that holds cards it no longer owns takes their records out of its table and sends
them to their owners (CONTROL op "cards": a header and one frame of raw CardRec records, 384
bytes each), which add them, or merge them with the record each started for the card meanwhile
(ext/state.pyx, card_merge: the rings are summed, so no transaction is lost or counted twice,
and the peak amount ratios of the record started without the history are computed again).
A record stays pending until its owner acknowledges it; a refusal puts it back into the sender's
table (merged the same way) for a later sweep. No answer within ACK_S does not say the owner did
not take it: one that stood still (a pause, SIGSTOP, swapping) takes the message when it runs
again, after the sender gave up. So an unanswered message is kept aside as it was and sent again,
the same message under the same number, to the same owner at the next sweep; an owner takes a
message once (Taken) and acknowledges a repeat without adding it again. Were it put back and
sent anew, merged with what came meanwhile, the owner would add those cards' history twice. Only
when that member has left the mesh is it put back and swept anew; for that case (a member paused
past the member timeout is dropped) a worker that stood still refuses the cards it reads in the
next STALE_S seconds (worker._take_over): the sender gave up on them, or will, and keeps them
aside until then. The owner's memory
of what it took is saved in its snapshot with the cards. What a member dropped for silence took,
over a network that held the message (a partition longer than the member timeout), can still be
counted twice: the sender cannot tell it from a member that died. A member that leaves names in
its goodbye (mesh.bye) the last messages it took (Taken.recent): a sender that stood still for
its whole drain has lost the answer (its socket, IMMEDIATE, drops an unread answer when that
connection closes), and learns it there.

Sweeps run at the first heartbeat after the member list changes, again SETTLE_S later (for what
reached the old owner while clients were switching), every EVERY_S (for a client that kept a
stale list), and when a worker leaves: at the start of its drain and at its end, when it waits up
to ACK_S for the answers (up to STALE_S + ACK_S more for an owner that refused them for now or is
not connected yet, or for cards that came in meanwhile, swept a second later: worker._handed_over)
before it saves what is left in its snapshot.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import zmq

from . import protocol as P
from .mesh import owners
from .state import CARD_DTYPE, unmix_keys

log = logging.getLogger("zfraud.worker")

RECORD = "zfraud.CardState/1"  # the record layout: CardRec, as in a snapshot of that kind
CHUNK = 32_768       # records per message: 12.6 MB, well under the 64 MB message limit
SETTLE_S = 3.0       # a second sweep this long after a change of members
EVERY_S = 30.0       # and one this often in any case
ACK_S = 5.0          # a message unanswered this long is kept aside, to be sent again (expire)
STALE_S = 5.0        # how long a worker that stood still refuses cards, and expires late batches (worker)
SWEEPING = "kept here, sent again at the next sweep"  # Handover.fate while the worker runs


@dataclass
class _Pending:
    to: str
    records: np.ndarray
    sent: float
    seq: int = 0
    not_before: float = 0.0  # kept aside: not sent again before (an owner that stood still said when)


class Taken:
    """The receiving side's memory of the messages it took: (sender, its boot, seq) of the last
    `capacity`. A sender from before `boot` is not remembered: its seq restarts with it."""

    def __init__(self, capacity: int = 4096):
        self.capacity = capacity
        self.keys: dict[tuple, None] = {}  # in insertion order: the oldest first

    @staticmethod
    def key(header: dict) -> tuple | None:
        worker, boot, seq = header.get("worker"), header.get("boot"), header.get("seq")
        if isinstance(worker, str) and type(boot) is int and type(seq) is int:
            return worker, boot, seq
        return None

    def __contains__(self, key) -> bool:
        return key is not None and key in self.keys

    def add(self, key) -> None:
        if key is None:
            return
        self.keys[key] = None
        while len(self.keys) > self.capacity:
            del self.keys[next(iter(self.keys))]

    def recent(self, n: int = 1024, budget: int = 16384) -> dict:
        """The last `n` keys by sender, {sender: [[boot, seq], ...]}, newest first, in about
        `budget` bytes of msgpack (a header holds 64 KB), for this worker's goodbye (mesh.bye): a
        sender that has not read our answers yet learns there what we took."""
        out: dict[str, list] = {}
        for worker, boot, seq in list(reversed(self.keys))[:n]:
            budget -= 16 + (len(worker) + 3) * (worker not in out)  # a pair of ints; a name once
            if budget < 0:
                break
            out.setdefault(worker, []).append([boot, seq])
        return out

    def arrays(self) -> dict:
        """The memory as snapshot arrays (oldest first). A snapshot holds the cards of the messages
        taken, so it holds their keys too: a restored owner acknowledges a message it took before
        its restart, which a sender with no answer sends again, instead of adding it twice."""
        keys = list(self.keys)
        return {"taken_worker": np.array([k[0] for k in keys], dtype=str),
                "taken_boot": np.array([k[1] for k in keys], dtype=np.int64),
                "taken_seq": np.array([k[2] for k in keys], dtype=np.int64)}

    def restore(self, arrays: dict) -> None:
        """Remember the keys of arrays() (a snapshot from before them holds none). ValueError if
        they are malformed."""
        worker, boot, seq = (arrays.get(f"taken_{k}") for k in ("worker", "boot", "seq"))
        if worker is None and boot is None and seq is None:
            return
        if (worker is None or boot is None or seq is None or worker.dtype.kind != "U"
                or boot.dtype.kind != "i" or seq.dtype.kind != "i" or worker.ndim != 1
                or not worker.shape == boot.shape == seq.shape):
            raise ValueError("state: the card messages taken (taken_worker, taken_boot, taken_seq) are not "
                             "three arrays of names and numbers of one length")
        for key in zip(worker.tolist(), boot.tolist(), seq.tolist()):
            self.add(key)


class Handover:
    """The sending side: one DEALER per member (IMMEDIATE: nothing queues for a member not yet
    connected), the records in flight, and when the next sweep is due."""

    def __init__(self, name: str, new_socket, poller: zmq.Poller | None = None, boot: int = 0):
        self.name = name
        self.boot = boot  # with seq, names each message for the owner's Taken
        # (member name) -> a configured, secured DEALER, or None when none can be made now (out of
        # descriptors: the worker says so); follow() asks again at the next tick
        self.new_socket = new_socket
        self.poller = poller
        self.socks: dict[str, zmq.Socket] = {}
        self.routers: dict[str, str] = {}
        self.pending: dict[int, _Pending] = {}
        self.doubt: dict[int, _Pending] = {}  # unanswered within ACK_S: sent again as they were (expire)
        self.hold_until = 0.0  # a drain waits until then at most for what an owner refused for now
        self.seq = 0
        self.view: list[str] | None = None  # the owners the last sweep placed cards by
        self.due: list[float] = []  # when further sweeps are due, in no order (retries are appended)
        self.next_sweep = 0.0
        self.handed = self.taken_back = 0  # cards acknowledged by their owners; put back here
        # Members that refused op "cards" as unknown (workers of a zfraud from before it) -> when:
        # their cards stay here, and they are asked again only after EVERY_S (an upgrade in place
        # keeps the name and the endpoints); before, every retry was one more warning, every few seconds
        self.refused: dict[str, float] = {}
        # What becomes of records put back, as the log says it: the worker changes it when it
        # sweeps no more (stopping: kept in its snapshot, or lost with the process)
        self.fate = SWEEPING

    # -- sockets ----------------------------------------------------------------------------
    def follow(self, routers: dict[str, str]) -> None:
        """Keep one socket per other member (name -> ROUTER endpoint). A member that left with
        messages unanswered keeps its socket until they are answered or expire: its answers may
        be on their way (this worker stood still, say), and closed, the socket lost them."""
        for name in [n for n, r in self.routers.items() if routers.get(n) != r]:
            if name not in routers and any(p.to == name for p in self.pending.values()):
                continue
            self._close(name)
        for name, router in routers.items():
            if name not in self.socks:
                sock = self.new_socket(name)
                if sock is None:
                    continue
                sock.setsockopt(zmq.IMMEDIATE, 1)
                sock.connect(router)
                self.socks[name], self.routers[name] = sock, router
                if self.poller is not None:
                    self.poller.register(sock, zmq.POLLIN)

    def _close(self, name: str) -> None:
        sock = self.socks.pop(name)
        del self.routers[name]
        self.refused.pop(name, None)  # gone (an upgrade stops it) or moved: what comes back is asked at once
        if self.poller is not None:
            self.poller.unregister(sock)
        sock.close(linger=0)  # what it still holds comes back by timeout (expire)

    def close(self) -> None:
        for name in list(self.socks):
            self._close(name)

    # -- sweeps -----------------------------------------------------------------------------
    def tick(self, features, routers: dict[str, str], names: list[str], now: float, force: bool = False) -> None:
        """Every heartbeat: follow the other members (name -> ROUTER endpoint), take back what
        went unanswered, then sweep if one is due. names: the owners, sorted (this worker is
        not among them while it drains)."""
        self.expire(features, now)
        self.follow(routers)
        if names != self.view:
            self.view = list(names)
            self.soon(now)
        if not (force or now >= self.next_sweep or (self.due and min(self.due) <= now)):
            return
        self.due = [t for t in self.due if t > now]
        self.next_sweep = now + EVERY_S
        if names:
            self.sweep(features, names, now)

    def soon(self, now: float) -> None:
        """Sweep at the next tick, and SETTLE_S later, as after a change of members."""
        self.due = [now, now + SETTLE_S]

    def restarted(self, name: str, now: float) -> None:
        """A member's process changed (worker._check_boot): what it refused, it may take now (an
        upgrade, or a feature set with card state); its cards go at once."""
        self.refused.pop(name, None)
        self.soon(now)

    def sweep(self, features, names: list[str], now: float) -> int:
        """Send every card held here whose owner among `names` is another worker; returns the
        cards sent. A member not connected yet keeps its cards here, and is tried again 1 s later.
        First the messages kept aside go again, each as it was (_resend)."""
        self._resend(features, names, now)
        ids = features.card_ids()
        if not len(ids):
            return 0
        owner = owners(ids, names)
        mine = names.index(self.name) if self.name in names else -1
        sent = 0
        for k in np.unique(owner[owner != mine]).tolist():
            name, todo = names[k], ids[owner == k]
            if now - self.refused.get(name, -EVERY_S) < EVERY_S:
                # asked again EVERY_S after it refused, not at the regular sweep after that (a
                # change of members moves that one on: a refusal just before a join waited a minute)
                self.due.append(self.refused[name] + EVERY_S)
                continue
            sock = self.socks.get(name)
            for lo in range(0, len(todo), CHUNK):
                if sock is None or not self._send(sock, name, features.take_cards(todo[lo:lo + CHUNK]), features, now):
                    self.due.append(now + 1.0)
                    break
                sent += min(CHUNK, len(todo) - lo)
        return sent

    def _send(self, sock, name: str, records: np.ndarray, features, now: float) -> bool:
        if not len(records):
            return True
        self.seq += 1
        if not self._transmit(sock, _Pending(name, records, now, self.seq)):
            features.put_cards(records)  # not connected (yet), or its queue is full
            return False
        return True

    def _transmit(self, sock, p: _Pending) -> bool:
        """Send p's message (again, for one in doubt: the same number, the same records)."""
        header = {"op": "cards", "worker": self.name, "boot": self.boot, "seq": p.seq, "record": RECORD,
                  "itemsize": p.records.itemsize, "rows": len(p.records)}
        try:
            sock.send_multipart(P.encode(P.CONTROL, header, [p.records.view(np.uint8)]), zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return False
        self.pending[p.seq] = p
        return True

    def _resend(self, features, names: list[str], now: float) -> None:
        """Each message kept aside goes again, as it was, to the member it went to while that one
        is a member (owner of its cards or not: it took the message already, or takes it now, and
        passes on what it does not own); put back here only once that member has left."""
        for seq, p in list(self.doubt.items()):
            if now < p.not_before:
                self.due.append(p.not_before)
            elif p.to in names:
                sock = self.socks.get(p.to)
                if sock is not None and self._transmit(sock, _Pending(p.to, p.records, now, seq)):
                    del self.doubt[seq]
                else:
                    self.due.append(now + 1.0)  # not connected yet: the next tick after 1 s
            else:  # it left: the records go to their owners now, swept anew
                del self.doubt[seq]
                self._take_back(features, p, "it left the mesh")

    # -- answers ----------------------------------------------------------------------------
    def on_reply(self, name: str, features) -> None:
        """Read the owner's answers: an acknowledgement drops the records, a refusal puts them back."""
        sock = self.socks[name]
        while sock.poll(0):
            try:
                msg = P.parse(sock.recv_multipart(zmq.NOBLOCK))
            except (zmq.Again, P.ProtocolError) as e:
                log.warning("bad answer to a card handover from %s: %s", name, e)
                continue
            h = msg.header
            seq = h.get("seq")
            if type(seq) is not int:  # an ERROR (a peer that does not know the op): the oldest
                seq = min((s for s, p in self.pending.items() if p.to == name), default=None)
            if self.pending.get(seq) is None or self.pending[seq].to != name:
                continue  # a message answered already, or another member's: not this answer's to settle
            p = self.pending.pop(seq)
            if msg.command == P.CONTROL and h.get("ok"):
                self.handed += len(p.records)
                self.refused.pop(name, None)
                if h.get("repeat"):
                    log.info("handed over %d cards to %s, their owner now: it had taken them already, from the "
                             "same message sent before it answered", len(p.records), name)
                else:
                    log.info("handed over %d cards to %s, their owner now (%s of them merged with cards "
                             "it had started)", len(p.records), name, h.get("merged", 0))
            elif msg.command == P.CONTROL and h.get("stood_still") is True:
                # Refused for now (zfraud.worker._take_over): the same message goes again once the
                # owner takes cards again; a drain waits for it (hold_until), up to a bound
                wait = h.get("retry_after_s")
                wait = float(wait) if isinstance(wait, (int, float)) and 0 <= wait <= STALE_S else STALE_S
                p.not_before = time.monotonic() + wait
                self.doubt[seq] = p
                self.due.append(p.not_before)
                self.hold_until = max(self.hold_until, p.not_before + ACK_S)
                log.info("%d cards refused by %s for %.1f s (it stood still a moment ago): kept aside, and sent "
                         "again then as the same message", len(p.records), name, wait)
            elif ((msg.command == P.ERROR and h.get("code") == P.BAD_CONTROL and "'cards'" in str(h.get("message")))
                  or (msg.command == P.CONTROL and h.get("keeps_no_cards") is True)):
                # A worker of a zfraud from before the handover, or of a feature set without card
                # state (a deploy that reached it and not us): refuses while it runs as it is
                again = name in self.refused
                self.refused[name] = p.sent
                kept = (f"{name} runs a feature set without card state; asked again every {EVERY_S:g} s, in case "
                        f"a deploy changes it" if msg.command == P.CONTROL else
                        f"{name} is a worker of a zfraud from before the card handover; asked again every "
                        f"{EVERY_S:g} s, in case it is upgraded")
                self._take_back(features, p, h.get("error") or h.get("message"), quiet=again, kept=kept)
            else:
                self._take_back(features, p, h.get("error") or h.get("message") or "refused")

    def on_goodbye(self, name: str, taken) -> None:
        """A member's goodbye (mesh.bye) names the messages it took (Taken.recent): those of ours
        to it still unanswered, or kept aside, are handed over. Their answers may be lost: this
        socket (IMMEDIATE) drops an unread answer when the member's connection closes, and had
        we put the cards back, the member having passed them on as it drained, their next owner
        counted them twice."""
        mine = taken.get(self.name) if isinstance(taken, dict) else None
        if not isinstance(mine, list):
            return
        seqs = {k[1] for k in mine if isinstance(k, list) and len(k) == 2 and k[0] == self.boot
                and type(k[0]) is int and type(k[1]) is int}
        for box in (self.pending, self.doubt):
            for seq in [s for s, p in box.items() if p.to == name and s in seqs]:
                p = box.pop(seq)
                self.handed += len(p.records)
                log.info("handed over %d cards to %s, their owner until it left: its goodbye says it took them "
                         "(their answer did not come)", len(p.records), name)

    def expire(self, features, now: float) -> None:
        """Keep aside, as they were, the messages of a member that left one unanswered for
        ACK_S (they go again at the next sweep: _resend), and close its socket (the next tick
        connects afresh). Once this worker sweeps no more (it stops), they are put back here.
        Answers already queued on a late member's socket are read first: closed unread, they were
        lost, and a member that took the message and then left had its cards put back here,
        though it had passed them on as it drained (their next owner then counted them twice)."""
        for name in {p.to for p in self.pending.values() if now - p.sent > ACK_S} & set(self.socks):
            self.on_reply(name, features)
        late = {p.to for p in self.pending.values() if now - p.sent > ACK_S}
        for seq in [s for s, p in self.pending.items() if p.to in late]:
            p = self.pending.pop(seq)
            if self.fate != SWEEPING:
                self._take_back(features, p, f"no answer within {ACK_S:g} s")
                continue
            self.doubt[seq] = p
            log.warning("%d cards not acknowledged by %s within %g s: kept aside, and sent again at the next "
                        "sweep as the same message, which it takes only once", len(p.records), p.to, ACK_S)
            self.due.append(now + 1.0)
        for name in late & set(self.socks):
            self._close(name)

    def pardon(self, gap: float, now: float) -> None:
        """This worker stood still for `gap` seconds: that time does not count as waiting for an
        answer. The owners' answers may still be in the kernel, for libzmq's I/O thread, which
        stood still too, to read: expired at once, such a message was kept aside with its answer
        unread (and put back here once its owner had left, though it had taken the cards)."""
        for p in self.pending.values():
            p.sent = min(p.sent + gap, now)  # (one sent in the turn that stood still: not later than now)

    def held_for_others(self, features) -> int:
        """Cards held here whose owner, by the last sweep's view, is another worker: those its
        sends could not deliver (an owner not connected yet), not those awaiting an answer."""
        ids = features.card_ids()
        if not len(ids) or not self.view:
            return 0
        mine = self.view.index(self.name) if self.name in self.view else -1
        return int((owners(ids, self.view) != mine).sum())

    def take_back_all(self, features) -> None:
        """Put back every record still awaiting an answer, or kept aside (a worker about to stop)."""
        for seq in list(self.pending):
            self._take_back(features, self.pending.pop(seq), "the worker is stopping")
        for seq in list(self.doubt):
            self._take_back(features, self.doubt.pop(seq), "the worker is stopping")

    def _take_back(self, features, p: _Pending, why: str, quiet: bool = False, kept: str | None = None) -> None:
        """Put p's records back here. kept: why they stay (a member that refuses while it runs as
        it is: no retry, the sweeps ask again); else another sweep soon."""
        try:
            features.put_cards(p.records)
        except ValueError as e:  # a deploy changed the feature set meanwhile: nothing to keep them in
            log.warning("%d cards handed to %s came back (%s) and were dropped: %s", len(p.records), p.to, why, e)
            return
        self.taken_back += len(p.records)
        fate = f"kept here: {kept}" if kept is not None and self.fate == SWEEPING else self.fate
        (log.debug if quiet else log.warning)("%d cards not taken by %s (%s): %s", len(p.records), p.to, why, fate)
        if kept is None:
            self.due.append(p.sent + ACK_S + 1.0)


def take_over(features, header: dict, payload: list, taken: Taken | None = None) -> dict:
    """The receiving side of op "cards": add a peer's card records, unless `taken` says this
    message was taken already (sent again by a sender that had no answer in time: acknowledged,
    not added twice). Returns the reply header."""
    reply = {"op": "cards", "seq": header.get("seq")}
    key = Taken.key(header)
    if taken is not None and key in taken:
        return {**reply, "ok": True, "added": 0, "merged": 0, "repeat": True}
    rows, itemsize = header.get("rows"), header.get("itemsize")
    size = memoryview(payload[0]).nbytes if len(payload) == 1 else None
    if header.get("record") != RECORD or itemsize != CARD_DTYPE.itemsize:
        why = (f"expected {RECORD} records of {CARD_DTYPE.itemsize} bytes, got {header.get('record')!r} "
               f"of {itemsize!r} (a worker of another zfraud version)")
    elif not isinstance(rows, int) or size != rows * CARD_DTYPE.itemsize:
        why = f"expected one frame of {rows!r} records, got {len(payload)} frame(s) of {size} bytes"
    else:
        if features.state is None:  # basic-v1: refused while it runs so (the sender asks again now and then)
            return {**reply, "ok": False, "keeps_no_cards": True,
                    "error": f"cards not taken: feature set {features.feature_set} keeps no card state"}
        try:
            added, merged = features.put_cards(np.frombuffer(payload[0], CARD_DTYPE))
            if taken is not None:
                taken.add(key)
            return {**reply, "ok": True, "added": added, "merged": merged}
        except ValueError as e:
            why = str(e)
    return {**reply, "ok": False, "error": f"cards not taken: {why}"}
