"""Log lines for failures that can recur at any rate (a client or peer that floods a worker with
bad input, a descriptor limit hit at every attempt): each is said once, then counted, and the
count said at most once per interval, so that a flood costs a few lines, not one per event, and
no occurrence goes uncounted."""
from __future__ import annotations

import time


class Every:
    """A log line for a failure that recurs, at most one per `every_s`, saying how many there were
    since the last line: call(log_fn, fmt, *args); the count comes after the message."""

    def __init__(self, every_s: float = 10.0):
        self.every_s = every_s
        self.count = 0          # failures since the last line
        self.next_at = 0.0      # monotonic time before which no line is written

    def __call__(self, log_fn, fmt: str, *args) -> None:
        self.count += 1
        now = time.monotonic()
        if now < self.next_at:
            return
        if self.count > 1:
            fmt, args = fmt + " (seen %d times since the last line about it)", (*args, self.count)
        log_fn(fmt, *args)
        self.count, self.next_at = 0, now + self.every_s


# How often a kind of bad input from outside (error replies by code, malformed mesh messages by
# topic) is logged at most; the kinds kept at once (a peer picks its topics: the rest share one).
RECURRING_S = 10.0
MAX_KINDS = 64


class Recurring:
    """The log of bad input that can come at any rate (a broken or hostile client or peer), one
    Every per kind, as for the worker's out-of-descriptors lines: the first of a kind is
    logged in full and those within every_s of a line are only counted. flush(), at each
    heartbeat, writes one line for those counted once every_s has passed: "... and N more <what>
    in the last 10 s; the last: <its line>" (at once with final=True, as the worker stops), so a
    flood costs a line or two per kind per 10 s, not one per message, and no count is lost. A
    kind silent for every_s is forgotten: its next one is logged in full again."""

    def __init__(self, log_fn, every_s: float = RECURRING_S):
        self.log_fn, self.every_s = log_fn, every_s
        self.kinds: dict = {}  # kind -> [Every, what (a plural noun phrase), (fmt, args) of the last one]

    def __call__(self, kind, what: str, fmt: str, *args) -> None:
        k = self.kinds.get(kind)
        if k is None:
            if len(self.kinds) >= MAX_KINDS:
                kind, what = "other", "lines of other kinds"
                k = self.kinds.get(kind)
            if k is None:
                k = self.kinds[kind] = [Every(self.every_s), what, None]
        else:
            self._summarise(kind, k, time.monotonic())  # one that comes first after every_s counts on
        k[2] = (fmt, args)
        k[0](self.log_fn, fmt, *args)

    def flush(self, final: bool = False) -> None:
        now = time.monotonic()
        for kind, k in list(self.kinds.items()):
            self._summarise(kind, k, now, final)

    def _summarise(self, kind, k: list, now: float, final: bool = False) -> None:
        every, what, (fmt, args) = k
        if now < every.next_at and not final:
            return
        if every.count:
            self.log_fn("... and %d more %s in the last %.0f s; the last: " + fmt, every.count, what,
                        now - (every.next_at - self.every_s), *args)
            every.count, every.next_at = 0, now + self.every_s
        else:
            del self.kinds[kind]
