"""Membership by gossip, and card ownership by rendezvous hashing.

Every worker keeps a `Membership`: itself plus the peers it has heard from. A peer is *heard*
when its own `mesh.hello` arrives (first-hand) and *reported* when another member lists it
(second-hand, with the age the reporter last heard it). A peer silent for `timeout` seconds is
dropped, and a second-hand report older than that cannot bring it back.

Ownership: each card is owned by the live member with the highest hash of (card, member name).
Every process that sees the same member list computes the same owner, and a member that comes or
goes moves only its own share of the cards.
"""
from __future__ import annotations

import functools
import hashlib
import re
import time
from dataclasses import dataclass, field

import numpy as np

from ._state import mix_keys

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, vectorised over a uint64 array (wrapping arithmetic)."""
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = x + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


@functools.lru_cache(maxsize=4096)
def name_seed(name: str) -> np.uint64:
    """A stable 64-bit seed for a member name (the same in every process and on every machine)."""
    return np.uint64(int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little"))


def owners(cards: np.ndarray, names: list[str]) -> np.ndarray:
    """Index into `names` of the member owning each card (rendezvous hashing). `names` must be
    given in the same order by every caller; sorted order is the convention."""
    if not names:
        raise ValueError("no live members to own the cards")
    cards = np.ascontiguousarray(cards, dtype=np.uint64)
    if len(names) == 1:
        return np.zeros(len(cards), dtype=np.intp)
    weights = np.empty((len(names), len(cards)), dtype=np.uint64)
    for k, name in enumerate(names):
        mix_keys(cards ^ name_seed(name), weights[k])  # mix64, compiled (a test checks they agree)
    return weights.argmax(axis=0)


ENDPOINT = re.compile(r"^(tcp://[A-Za-z0-9_.\-:\[\]*]+:(\d{1,5}|\*)|ipc://[^\s]+|inproc://[^\s]+)$")
NAME = re.compile(r"^[A-Za-z0-9_.@:\-]{1,64}$")
IPC_PATH_MAX = 107  # bytes in an ipc path: a Unix socket address holds 108, the closing NUL included


def check_endpoint(what: str, ep: str, bind: bool = False) -> None:
    """Refuse an endpoint libzmq would reject with a bare EINVAL or ENAMETOOLONG, or silently
    change: it reads a tcp port modulo 65536 (tcp://h:99999 binds port 34463). To bind, a host or
    port may be * (any interface, any free port); to connect, both must be real. inproc:// is
    refused: it reaches only sockets of the same process, and every worker and client is its own."""
    ok = isinstance(ep, str) and ENDPOINT.fullmatch(ep) is not None
    if ok and ep.startswith("tcp://"):
        host, port = ep[6:].rsplit(":", 1)
        if bind:
            ok = port == "*" or int(port) <= 65535
        else:
            ok = "*" not in host and port != "*" and 1 <= int(port) <= 65535
            if ok and host.startswith("["):
                raise ValueError(f"{what} {ep[:80]!r}: IPv6 is not enabled; give an IPv4 address or a host name")
    elif ok and ep == "ipc://@":
        raise ValueError(f"{what} 'ipc://@': an abstract ipc name needs at least one character after the @")
    elif ok and ep.startswith("ipc://") and len(ep[6:].encode()) > IPC_PATH_MAX:
        raise ValueError(f"{what} {ep[:80]!r}...: an ipc path is at most {IPC_PATH_MAX} bytes (the system's "
                         f"limit for a Unix socket), this one is {len(ep[6:].encode())}; use a shorter one")
    elif ok and ep.startswith("inproc://"):
        raise ValueError(f"{what} {ep[:80]!r}: inproc:// reaches only sockets of the same process, and each "
                         f"worker and client is a process of its own; use ipc://PATH on one machine")
    if not ok:
        form = "tcp://HOST:PORT (PORT 1-65535, or * for any free one)" if bind else "tcp://HOST:PORT (PORT 1-65535)"
        space = " (no spaces)" if isinstance(ep, str) and ep.startswith("ipc://") else ""
        raise ValueError(f"{what} {str(ep)[:80]!r} is not {form} or ipc://PATH{space}")


def same_endpoint(a: str, b: str) -> bool:
    """Whether two endpoints name one socket as far as can be told without a name lookup: the
    same string, or tcp on one port at hosts that are the same once `localhost` is read as
    127.0.0.1 (a seed written tcp://localhost:P, a member advertised as tcp://127.0.0.1:P). No
    lookup: a name can stand for many machines (round-robin DNS, one seed name for a whole
    mesh), and a slow one would hold up the worker's loop."""
    if a == b:
        return True
    if not (a.startswith("tcp://") and b.startswith("tcp://")):
        return False
    (host_a, port_a), (host_b, port_b) = a[6:].rsplit(":", 1), b[6:].rsplit(":", 1)
    loopback = {"localhost": "127.0.0.1"}
    return port_a == port_b and loopback.get(host_a.lower(), host_a) == loopback.get(host_b.lower(), host_b)


def check_name(name: str) -> None:
    if not NAME.fullmatch(name):
        raise ValueError(f"member name {name[:80]!r} must be 1-64 characters of letters, digits, _ . @ : -")


def check_binds(bind: str, pub: str) -> None:
    """A worker's ROUTER and PUB need endpoints of their own (a wildcard port picks two)."""
    if bind == pub and "*" not in bind and not bind.endswith(":0"):
        raise ValueError(f"--bind and --pub are both {bind}: each needs an endpoint of its own")


def check_member(name: str, router: str, pub: str) -> None:
    """Refuse names and endpoints that cannot be real before anything connects to them."""
    check_name(name)
    for what, ep in (("router", router), ("pub", pub)):
        check_endpoint(f"member {name}: {what} endpoint", ep)


@dataclass
class Member:
    name: str
    router: str
    pub: str
    last_heard: float = field(default_factory=time.monotonic)
    info: dict = field(default_factory=dict)  # the latest load/status the member announced

    def public(self, now: float) -> dict:
        return {"name": self.name, "router": self.router, "pub": self.pub,
                "age_ms": int((now - self.last_heard) * 1000)}


class Membership:
    """The members one worker knows of, itself included."""

    def __init__(self, me: Member, timeout: float = 3.0):
        self.me = me
        self.timeout = timeout
        self.members: dict[str, Member] = {me.name: me}  # keyed by member name
        self.left: dict[str, float] = {}  # name -> when it said goodbye; older news of it is ignored

    def heard(self, name: str, router: str, pub: str, info: dict | None = None, now: float | None = None,
              age: float = 0.0) -> str | None:
        """Record news of a member; returns "joined", "moved" (new endpoints) or None.
        Raises ValueError for a malformed name or endpoint."""
        check_member(name, router, pub)
        now = time.monotonic() if now is None else now
        if name == self.me.name or age >= self.timeout:
            return None
        if router == self.me.router or pub == self.me.pub:
            return None  # a process gone from endpoints this worker holds now (killed; started anew under another name)
        heard_at = now - age
        if heard_at <= self.left.get(name, float("-inf")):
            return None  # news from before it left: it must speak for itself to come back
        self.left.pop(name, None)
        m = self.members.get(name)
        if m is None:
            self.members[name] = Member(name, router, pub, heard_at, info or {})
            return "joined"
        if (m.router, m.pub) != (router, pub):
            if heard_at < m.last_heard:
                return None  # an older report of endpoints it has since left
            m.router, m.pub = router, pub
            m.last_heard = heard_at
            return "moved"
        if heard_at > m.last_heard:
            m.last_heard = heard_at
            if info:
                m.info = info
        return None

    def taken(self, name: str, router: str, pub: str, now: float | None = None) -> Member | None:
        """The live member (this worker, or one heard within the timeout) that has `name` at other
        endpoints than these, or None. Two processes under one name would both own that name's
        cards, and their news would move the name between their endpoints at every heartbeat."""
        m = self.members.get(name)
        if m is None or (m.router, m.pub) == (router, pub):
            return None
        now = time.monotonic() if now is None else now
        return m if m is self.me or now - m.last_heard < self.timeout else None

    def gossip(self, members: list, now: float | None = None) -> list[tuple[str, Member]]:
        """Merge a member list received from another member; returns [(event, member)]."""
        now = time.monotonic() if now is None else now
        events = []
        for entry in members:
            try:
                name, router, pub = str(entry["name"]), str(entry["router"]), str(entry["pub"])
                age = max(0.0, float(entry.get("age_ms", 0)) / 1000)
                event = self.heard(name, router, pub, now=now, age=age)
            except (KeyError, TypeError, ValueError):
                continue  # a malformed entry is skipped, never trusted
            if event:
                events.append((event, self.members[name]))
        return events

    def pardon(self, gap: float, now: float) -> None:
        """This worker stood still for `gap` seconds (stopped, paused): it heard no one then, so
        that time does not count as the others' silence (each is moved `gap` later, up to `now`)."""
        for m in self.members.values():
            m.last_heard = min(now, m.last_heard + gap)

    def expire(self, now: float | None = None) -> list[Member]:
        """Drop members not heard from within the timeout; returns them."""
        now = time.monotonic() if now is None else now
        self.me.last_heard = now
        gone = [m for m in self.members.values() if now - m.last_heard > self.timeout]
        for m in gone:
            del self.members[m.name]
        return gone

    def leave(self, name: str, now: float | None = None) -> Member | None:
        if name == self.me.name:
            return None
        self.left[name] = time.monotonic() if now is None else now
        if len(self.left) > 1024:  # bounded: forget the oldest goodbyes
            for old in sorted(self.left, key=self.left.get)[:512]:
                del self.left[old]
        return self.members.pop(name, None)

    def public(self, now: float | None = None) -> list[dict]:
        now = time.monotonic() if now is None else now
        self.me.last_heard = now
        return [m.public(now) for m in sorted(self.members.values(), key=lambda m: m.name)]
