"""Transaction sources: the Handbook's CSV schema, JSON lines, or the synthetic generator, each
yielding dicts of TX_COLUMNS arrays of at most `batch` rows.

A record that cannot be read is counted and reported with its line number (`reader.errors`) and
never takes the records around it down: good records are still yielded.

Field names: the Handbook's raw schema (TRANSACTION_ID, TX_DATETIME, CUSTOMER_ID, TERMINAL_ID,
TX_AMOUNT; DESIGN.md "Evaluation and data") or zfraud's own (tx_id, ts_ms, card, terminal, amount).
TX_DATETIME is read as UTC, "YYYY-MM-DD HH:MM:SS" (or ISO 8601's "YYYY-MM-DDTHH:MM:SSZ", or with
an offset such as +02:00, converted to UTC) or as Unix epoch milliseconds; `train` and `backtest`
read it the same way (parse_ts_ms). Files are UTF-8, with or without a byte-order mark.

A regular file is read in the caller's thread, `batch` records to a chunk. A live input (standard
input or a path that is a pipe, FIFO, terminal or socket: records may come slowly, or stop coming
for a while) is read by a thread of its own instead, and its records are yielded at most
`linger_s` (LINGER_S, 10 ms) after the oldest of them was read, `batch` at a time when they come
faster; while it is idle, the iterator yields an empty chunk every TICK_S (0.1 s), so that its
caller can read its replies and see a Ctrl-C.
"""
from __future__ import annotations

import bisect
import codecs
import csv
import io
import itertools
import json
import math
import os
import re
import select
import stat
import sys
import threading
import time
import warnings
from collections import Counter

import numpy as np

from .synthetic import synthetic

FIELDS = {  # zfraud column -> accepted field names, in order of preference
    "tx_id": ("tx_id", "TRANSACTION_ID"),
    "card": ("card", "CUSTOMER_ID"),
    "terminal": ("terminal", "TERMINAL_ID"),
    "ts_ms": ("ts_ms", "TX_DATETIME"),
    "amount": ("amount", "TX_AMOUNT"),
}
MAX_REPORTED = 1000
MAX_TIME_CHARS = 40  # a longer value is no time ("2018-04-01T00:00:31.123456+05:30" has 32)
MAX_LINE = 1 << 20  # characters a line may hold (a transaction takes about 100): a longer one is skipped
LINGER_S = 0.01  # a live input's records wait at most this long after the oldest was read to be yielded
TICK_S = 0.1     # an idle live input yields an empty chunk this often
FEED_BATCHES = 8  # converted batches a live input's thread may hold ahead of its caller (40 bytes a row)


BYTE = re.compile(r" \(byte 0x[0-9a-f]+\)")
VALUE = re.compile(r"(, got .*|: line \d+ column \d+ \(char \d+\))$")


def _reason(message: str) -> str:
    """An error message without the value, byte or JSON position it names: what rows share."""
    head, got, _ = message.partition(", got ")
    if got and "(byte 0x" not in head:  # (a bad value's: a regex per row cost more than the rest of it)
        return head
    return VALUE.sub("", BYTE.sub("", message))


def failing(items: list, check) -> dict[int, str]:
    """{index: why} for the items that check([item]) refuses (ValueError, TypeError or
    OverflowError), in order, found by splitting a part that check() refuses in up to 16: a part
    that it passes is cleared at once, so a few bad items among millions cost a few dozen checks
    of large parts, not one check per item, and items that are all bad are checked in bulk about
    three times each (halving took seven for 1,024), then one by one."""
    bad, todo = {}, [(0, len(items))]
    while todo:
        lo, hi = todo.pop()
        try:
            check(items[lo:hi])
            continue
        except (ValueError, TypeError, OverflowError):
            if hi - lo > 16:
                step = max(16, -(-(hi - lo) // 16))
                todo += [(k, min(k + step, hi)) for k in range(lo, hi, step)][::-1]
                continue
        for k in range(lo, hi):  # a small part that failed: item by item
            try:
                check(items[k:k + 1])
            except (ValueError, TypeError, OverflowError) as e:
                bad[k] = str(e)
    return bad


class InputError(ValueError):
    """The input as a whole cannot be read (missing columns, unknown format)."""


def _whole_floats(values: list, low: int) -> tuple[list, set]:
    """JSON from a writer that prints whole numbers as 5.0: those (from `low` up, exact below
    2**53) as ints. Returns the values and the set of their types."""
    kinds = {type(v) for v in values}
    if float in kinds:
        values = [int(v) if type(v) is float and v.is_integer() and low <= v < 2**53 else v for v in values]
        kinds = {type(v) for v in values}
    return values, kinds


def _array(values: list, kinds: set, allowed: set, dtype, why: str) -> np.ndarray:
    """np.array(values, dtype) if every value's type is allowed and numpy takes them all, else
    ValueError(why), with the value when there is one."""
    if kinds <= allowed:
        try:
            return np.array(values, dtype=dtype)
        except (ValueError, OverflowError):
            pass
    got = f", got {values[0]!r}" if len(values) == 1 else ""
    raise ValueError(f"{why}{got}")


OFFSET = re.compile(r"(.*\d)([+-])(\d\d)(?::?(\d\d))?")  # ISO 8601's +HH:MM, +HHMM or +HH after a time


def split_offsets_ms(dates: np.ndarray) -> np.ndarray:
    """Each date's time-zone offset in ms (0 for none), removed from `dates` in place: numpy
    parses one but warns that it is deprecated. ValueError for one that is not +HH:MM, +HHMM or +HH
    (- too) up to 23:59. Only the dates with a + or - after the date's YYYY-MM-DD are looked at."""
    offsets = np.zeros(len(dates), np.int64)
    for i in np.flatnonzero((np.char.find(dates, "+", 10) >= 0) | (np.char.find(dates, "-", 10) >= 0)):
        m = OFFSET.fullmatch(dates[i])
        if m is None or int(m[3]) > 23 or int(m[4] or 0) > 59:
            raise ValueError(f"bad time zone offset in {dates[i]!r}")
        dates[i] = m[1]
        offsets[i] = (int(m[3]) * 60 + int(m[4] or 0)) * 60_000 * (1 if m[2] == "+" else -1)
    return offsets


def _codes(a: np.ndarray) -> np.ndarray:
    """A str array's characters as code points, one row per string, padded with 0 (no copy)."""
    return a.view(np.uint32).reshape(len(a), a.itemsize // 4)


def _is_digit(codes: np.ndarray) -> np.ndarray:
    return (codes >= 48) & (codes <= 57)


def _strip(a: np.ndarray) -> np.ndarray:
    """np.char.strip, done only when some string starts or ends with white space (ASCII, or
    perhaps other: a spreadsheet's no-break space), since it is slow on millions."""
    if not len(a):
        return a
    codes = _codes(a)
    ends = np.stack([codes[:, 0], codes[np.arange(len(a)), np.maximum(np.strings.str_len(a) - 1, 0)]])
    if ((ends <= 32) | (ends >= 128)).any():
        return np.char.strip(a)
    return a


def dates_ms(dates: np.ndarray) -> np.ndarray:
    """Epoch milliseconds (int64) of ISO 8601 date strings, with Z or an offset taken exactly (numpy
    parses both but warns). ValueError for a bad offset or any other zone (UTC, CET); NaT for an
    empty string."""
    if (_codes(dates) == ord("Z")).any():
        dates = np.char.rstrip(dates, "Z")  # ISO 8601's UTC: numpy warns of it as of any zone
    offsets = split_offsets_ms(dates)
    with warnings.catch_warnings():  # what numpy still warns of is a zone it cannot read either
        warnings.simplefilter("error", UserWarning)
        warnings.simplefilter("error", DeprecationWarning)
        try:
            ms = dates.astype("datetime64[ms]").astype(np.int64)
        except (UserWarning, DeprecationWarning):
            raise ValueError("a time zone other than Z or an offset such as +02:00") from None
    return ms - offsets


def parse_ts_ms(values: list) -> np.ndarray:
    """Epoch milliseconds (int64) from whole numbers, digit strings, or "YYYY-MM-DD HH:MM:SS"
    strings (UTC, or with ISO 8601's Z or an offset such as +02:00 or -0530). ValueError naming the
    column for anything else: numpy alone would take true as 1 ms, wrap 1e300 to -2**63, stop at
    a list ("setting an array element with a sequence"), or read +1522540831000 as a year.
    `zfraud send`, `train` and `backtest` all read times with this."""
    if len(values) == 1 and type(values[0]) is str:  # one by one (failing()): without numpy's fixed costs
        v = values[0].strip()
        if len(v) <= MAX_TIME_CHARS and v.isascii() and v[:1].isdigit():
            try:
                if v.isdigit():
                    return np.array([int(v)], dtype=np.int64)
                if v[4:5] == "-":
                    return dates_ms(np.array([v]))
            except (ValueError, OverflowError):
                pass
        raise ValueError(f"ts_ms must be epoch milliseconds or a date and time such as 2018-04-01 00:00:31, got {values[0]!r}")
    values, kinds = _whole_floats(values, -2**53)
    try:
        if kinds <= {int}:
            return np.array(values, dtype=np.int64)
        if kinds == {int, str}:
            # each kind as it would be read alone: a number that was a string here ("-1") is not a
            # time string, and one such record stopped the whole input (a number alone is taken
            # as it is; the worker judges its time)
            numbers = np.array([type(v) is int for v in values])
            out = np.empty(len(values), dtype=np.int64)
            out[numbers] = np.array([v for v in values if type(v) is int], dtype=np.int64)
            out[~numbers] = parse_ts_ms([v for v in values if type(v) is str])
            return out
        if kinds <= {str}:
            # no time is that long: a garbled field must not size the array of the whole column
            if max(map(len, values)) > MAX_TIME_CHARS:
                raise ValueError("too long")
            a = _strip(np.array(values, dtype=str))  # numpy reads " 1522540831000" as a year
            codes = _codes(a)
            if codes.shape[1] < 5:
                codes = np.pad(codes, ((0, 0), (0, 5 - codes.shape[1])))
            first = _is_digit(codes[:, 0])
            # a date has a "-" after its four-digit year: only a string whose fifth character is
            # a digit or missing can be all digits
            maybe = first & (_is_digit(codes[:, 4]) | (codes[:, 4] == 0))
            digits = np.zeros(len(a), bool)
            digits[maybe] = (_is_digit(codes[maybe]) | (codes[maybe] == 0)).all(1)
            # else numpy would also read a sign, a word (now, today, NaT), nothing (NaT), a year of
            # five digits or more, or 1522540831000Z (the year 1522540831000)
            if not (first[~digits] & (codes[~digits, 4] == ord("-"))).all():
                raise ValueError("not a date")
            if not digits.any():
                return dates_ms(a)
            out = np.empty(len(a), dtype=np.int64)
            out[digits] = a[digits].astype(np.int64)
            out[~digits] = dates_ms(a[~digits])
            return out
    except (ValueError, OverflowError):
        pass
    got = f", got {values[0]!r}" if len(values) == 1 else ""
    raise ValueError(f"ts_ms must be epoch milliseconds or a date and time such as 2018-04-01 00:00:31{got}")


def _note(value: str) -> str:
    """What makes a number string that Python's int() or float() would take no number here: a
    digit separator (1_000), a digit of another script (٣, ５), or a + (an id's; a - says itself)."""
    if "_" in value:
        return " (_ is no digit separator here)"
    if not value.isascii():
        return " (only the digits 0-9)"
    if "+" in value:
        return " (no sign)"
    return ""


def _refused(why: str, values: list, strings: list, signs: str) -> None:
    """ValueError(why) if a number string holds _, a character that is not ASCII, or a sign from
    `signs`: checked on them joined, once for the whole column."""
    text = "".join(strings)
    if not text.isascii() or "_" in text or any(c in text for c in signs):
        raise ValueError(why + (f", got {values[0]!r}{_note(values[0])}" if len(values) == 1 else ""))


def parse_amounts(values: list) -> np.ndarray:
    """float64 amounts from numbers or numeric strings. A string is what a number in CSV is: digits
    0-9, an optional point and exponent, white space around it and a leading + or - (CSV writers
    put a +; the worker rejects a negative amount), and nan or inf, which the worker rejects with
    its reason; not Python's 1_000 or digits of other scripts. ValueError naming the column for
    anything else: numpy alone would take true as 1.0 and null as NaN, or stop at a list."""
    why = "amount must be a number"
    if len(values) == 1 and type(values[0]) is str:  # one by one (failing()): without numpy's fixed costs
        _refused(why, values, values, "")
        try:
            return np.array([float(values[0])])
        except ValueError:
            raise ValueError(f"{why}, got {values[0]!r}") from None
    kinds = {type(v) for v in values}
    if str in kinds:
        _refused(why, values, values if kinds == {str} else [v for v in values if type(v) is str], "")
    return _array(values, kinds, {int, float, str}, np.float64, why)


def parse_ids(values: list, name: str) -> np.ndarray:
    """Unsigned 64-bit ids from whole numbers or digit strings (all of 0 .. 2**64 - 1): the digits
    0-9 only, with white space around them: no sign (+7, -0), no 1_000, no digits of other scripts,
    all of which Python's int() takes. ValueError naming the column for anything else: numpy alone
    would truncate 1.5 to 1, wrap -1 to 2**64 - 1, take true as 1, or say only "Python int too
    large to convert to C long"."""
    why = f"{name} must be a whole number from 0 to 2**64 - 1"
    if len(values) == 1 and type(values[0]) is str:  # one by one (failing()): without numpy's fixed costs
        _refused(why, values, values, "+-")
        v = values[0].strip()
        digits = v.lstrip("0") or "0"
        if v.isdigit() and len(digits) <= 20 and int(digits) < 2**64:
            return np.array([int(digits)], dtype=np.uint64)
        raise ValueError(f"{why}, got {values[0]!r}")
    values, kinds = _whole_floats(values, 0)  # CSV gives digit strings, JSON ints: numpy parses and range-checks them
    if str in kinds:
        _refused(why, values, values if kinds == {str} else [v for v in values if type(v) is str], "+-")
    return _array(values, kinds, {int, str}, np.uint64, why)


def parse_column(column: str, values: list) -> np.ndarray:
    """One TX_COLUMNS column from its raw values; ValueError (TypeError, OverflowError) if any is bad."""
    if column == "ts_ms":
        return parse_ts_ms(values)
    if column == "amount":
        return parse_amounts(values)
    return parse_ids(values, column)


def _convert(cols: dict) -> dict:
    """Lists of raw values -> TX_COLUMNS arrays; raises ValueError if any value is bad."""
    return {c: parse_column(c, cols[c]) for c in FIELDS}


def convert_rows(cols: dict) -> tuple[dict, dict[int, str]]:
    """Lists of raw values -> the TX_COLUMNS arrays of the rows whose values are all good, and
    {row: why} for the others (the first bad column's why, in FIELDS order). Column by column: a
    column that parses whole costs one call, and only a column that does not is searched, by
    halving (failing), so a batch of bad rows costs about what a good batch does."""
    n = len(cols["tx_id"])
    out, bad = {}, {}
    for c in FIELDS:
        values = cols[c]
        try:
            out[c] = parse_column(c, values)
            continue
        except (ValueError, TypeError, OverflowError):
            pass
        refused = failing(values, lambda part: parse_column(c, part))
        for k, why in refused.items():
            bad.setdefault(k, why)
        keep = np.ones(n, bool)
        keep[list(refused)] = False
        good = [v for v, ok in zip(values, keep) if ok]
        try:
            parsed = parse_column(c, good)
        except (ValueError, TypeError, OverflowError):
            # values that each parse alone but not together (a parser misreading a value by the
            # company it keeps) must not stop the whole input: each is parsed on its own
            parsed = np.concatenate([parse_column(c, [v]) for v in good] or [parse_column(c, [])])
        out[c] = np.zeros(n, parsed.dtype)
        out[c][keep] = parsed
    if bad:
        keep = np.ones(n, bool)
        keep[list(bad)] = False
        out = {c: a[keep] for c, a in out.items()}
    return out, dict(sorted(bad.items()))


class Reader:
    """Base: turns records into column chunks, isolating bad records. Iterating it yields the
    chunks (see chunks())."""

    def __init__(self, batch: int = 1024, linger_s: float = LINGER_S):
        self.batch = batch
        self.linger_s = linger_s
        self.tick_s = TICK_S
        self.errors: list[tuple[int, str]] = []  # (line number, message), the first MAX_REPORTED, in line order
        self.error_count = 0
        self.reasons: Counter = Counter()  # every error's message without its value or position
        self._errors_lock = threading.Lock()  # a live input's thread reports the lines it cannot split

    def _error(self, line: int, message: str) -> None:
        """A record that cannot be read. A line that cannot be split is reported as it is read, a
        bad value when its batch is converted, after the lines read since: insort keeps line order."""
        with self._errors_lock:
            self.error_count += 1
            self.reasons[_reason(message)] += 1
            if len(self.errors) < MAX_REPORTED:
                bisect.insort(self.errors, (line, message))

    def _chunk(self, records: list[tuple[int, dict]]):
        """records: (line number, {column: raw value}). Returns the arrays of the good ones."""
        if not records:
            return None
        out, bad = convert_rows({c: [r[c] for _, r in records] for c in FIELDS})
        for k, why in bad.items():
            self._error(records[k][0], why)
        return out if len(out["tx_id"]) else None

    def _records(self, opener=None):
        """(line number, {column: raw value}) for each record, from the input opened by
        opener(path) (default open_input)."""
        raise NotImplementedError

    def __iter__(self):
        return self.chunks()

    def chunks(self, idle=None):
        """The column chunks. A live input (see the module docstring) yields as it reads, and an
        empty chunk every tick_s while it is idle; idle(fd, timeout_s), if given, is how it waits
        for its next records: it must return by timeout_s, and may return earlier, when fd is
        readable or at will (Client.stream reads the mesh's replies meanwhile). A regular file is
        read here, a whole batch to a chunk."""
        live = self._live_path()
        if live is not None:
            return self._live_chunks(live, idle)
        return self._file_chunks()

    def _live_path(self):
        """What to read in a thread (see _open_live) if the input is live, else None."""
        return None

    def _file_chunks(self):
        buf = []
        try:
            for rec in self._records():
                buf.append(rec)
                if len(buf) >= self.batch:
                    chunk, buf = self._chunk(buf), []
                    if chunk is not None:
                        yield chunk
        except Exception:  # a read error: the rows read before it go first
            chunk = self._chunk(buf)
            if chunk is not None:
                yield chunk
            raise
        chunk = self._chunk(buf)
        if chunk is not None:
            yield chunk

    def _live_chunks(self, source, idle):
        """chunks() of a live input, read and converted by a thread into a _Feed: the chunks it
        hands over, joined up to `batch` rows, go when they hold `batch` rows or the oldest has
        waited linger_s; an empty one each tick_s without either. An exception that ends the
        thread's reading is raised here, where reading the file would have raised it, after every
        row read before it. Closing the iterator stops the thread."""
        feed = _Feed(FEED_BATCHES * self.batch)
        thread = threading.Thread(target=self._feed, args=(feed, source), name="zfraud-input", daemon=True)
        thread.start()
        wait = idle or _wait_readable
        pending, rows, oldest, last = [], 0, 0.0, time.monotonic()
        try:
            while True:
                with feed.cond:
                    items, feed.items, feed.rows = feed.items, [], 0
                    first_at, done, error = feed.first_at, feed.done, feed.error
                    if items:
                        feed.cond.notify()  # room for the thread's next chunks
                for chunk in items:
                    n = len(chunk["tx_id"])
                    if rows + n > self.batch:  # a batch at most: what is pending goes first
                        yield _join(pending)
                        pending, rows, last = [], 0, time.monotonic()
                    if not pending:
                        oldest = first_at
                    pending.append(chunk)
                    rows += n
                    if rows >= self.batch:
                        yield _join(pending)
                        pending, rows, last = [], 0, time.monotonic()
                if error is not None:  # after the rows read before it
                    if pending:
                        yield _join(pending)
                    raise error
                if done:
                    if pending:
                        yield _join(pending)
                    return
                now = time.monotonic()
                if pending and now - oldest >= self.linger_s:
                    yield _join(pending)
                    pending, rows, last = [], 0, time.monotonic()
                    continue
                if not pending and now - last >= self.tick_s:
                    yield _convert({c: [] for c in FIELDS})  # idle: the caller's turn
                    last = time.monotonic()
                    continue
                with feed.cond:
                    if feed.items or feed.done:
                        continue
                    feed.need = self.batch - rows if pending else 1
                    feed.waiting = True
                wait(feed.wake_r, (oldest + self.linger_s if pending else last + self.tick_s) - now)
                feed.drain_wake()
        finally:
            feed.stop()
            if feed.opened:  # it stops within TICK_S; opening a FIFO no one writes to, it waits on
                thread.join(1.0)
            feed.close()

    def _feed(self, feed: "_Feed", source) -> None:
        """The live input's thread: its records, converted as a file's are, to feed, a batch at
        a time, and whatever was read before each read that would wait. Converting here leaves
        the caller's thread free to send: both need the GIL, and handing it over for every batch
        cost more than the conversion."""
        local = []

        def hand_over():
            nonlocal local
            if local:
                records, local = local, []
                chunk = self._chunk(records)
                if chunk is not None:
                    feed.put(chunk)

        error = None
        try:
            for rec in self._records(lambda path: _open_live(source, hand_over, feed)):
                local.append(rec)
                if len(local) >= self.batch:
                    hand_over()
            hand_over()
        except _Stopped:
            pass
        except BaseException as e:  # the iterator raises it, after the rows read before it
            error = e
            try:
                hand_over()
            except _Stopped:
                pass
        finally:
            feed.finish(error)


def _join(chunks: list) -> dict:
    """One chunk of the rows of several, in order."""
    if len(chunks) == 1:
        return chunks[0]
    return {c: np.concatenate([chunk[c] for chunk in chunks]) for c in chunks[0]}


class _Stopped(Exception):
    """A live input's records are no longer wanted: its thread stops reading."""


class _Feed:
    """A live input's chunks, from its reader thread to the iterator, handed over under `cond`
    (a lock per chunk, not per record), at most `limit` rows held (the thread waits), and a pipe
    that wakes the iterator when it waits for them."""

    def __init__(self, limit: int):
        self.cond = threading.Condition()
        self.limit = limit
        self.items: list = []   # chunks handed over and not yet taken
        self.rows = 0           # their rows
        self.first_at = 0.0     # time.monotonic() when the oldest of them was handed over
        self.need = 1           # rows that wake the iterator while it waits
        self.waiting = False
        self.done = False
        self.error = None       # what ended the thread's reading
        self.stopped = False
        self.opened = False     # the thread has opened the input
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)

    def put(self, chunk: dict) -> None:
        """Hand a chunk over, waiting while more than the limit of rows would be held."""
        n = len(chunk["tx_id"])
        with self.cond:
            while self.items and self.rows + n > self.limit and not self.stopped:
                self.cond.wait()
            if self.stopped:
                raise _Stopped
            if not self.items:
                self.first_at = time.monotonic()
            self.items.append(chunk)
            self.rows += n
            if self.rows >= self.need:
                self._wake()

    def finish(self, error) -> None:
        with self.cond:
            self.done, self.error = True, error
            self._wake()

    def _wake(self) -> None:
        """(Under cond.) Wake the iterator if it waits."""
        if self.waiting and self.wake_w >= 0:
            self.waiting = False
            try:
                os.write(self.wake_w, b"!")
            except BlockingIOError:  # full: it is awake anyway
                pass

    def drain_wake(self) -> None:
        try:
            while os.read(self.wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def stop(self) -> None:
        """The records are no longer wanted: the thread stops at its next hand-over or wait."""
        with self.cond:
            self.stopped = True
            self.cond.notify_all()

    def close(self) -> None:
        with self.cond:
            os.close(self.wake_r)
            os.close(self.wake_w)
            self.wake_r = self.wake_w = -1


def _wait_readable(fd: int, timeout_s: float) -> None:
    """Wait until fd is readable, or timeout_s."""
    if timeout_s <= 0:
        return
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        poller.poll(math.ceil(timeout_s * 1000))
    else:
        select.select([fd], [], [], timeout_s)


class _LiveInput(io.RawIOBase):
    """A live input's bytes, for its reader thread: before a read that would wait, what was read
    so far is handed over (before_wait()), and the wait ends when the feed is stopped. Raw, on a
    descriptor of its own (a dup of standard input's), so that no buffered object's lock is held
    by a thread left blocked in a read at exit: Python stops with "Fatal Python error:
    _enter_buffered_busy" when its exit finds one (sys.stdin's)."""

    def __init__(self, fd: int, before_wait, feed: _Feed):
        super().__init__()
        self._fd, self._before_wait, self._feed = fd, before_wait, feed
        try:
            self._poller = select.poll()
            self._poller.register(fd, select.POLLIN)
        except (AttributeError, OSError, ValueError):  # no poll() on this system: reads block
            self._poller = None

    def readable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd

    def read1(self, size: int = -1) -> bytes:
        """What one read gives (lines() reads a file's bytes with read1)."""
        return self.read(size)

    def readinto(self, b) -> int:
        if self._poller is not None and not self._poller.poll(0):
            self._before_wait()
            while not self._poller.poll(int(TICK_S * 1000)):
                if self._feed.stopped:
                    raise _Stopped
        data = os.read(self._fd, len(b))
        b[:len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
        super().close()


def live_input(path):
    """For an input that is live (see the module docstring): the descriptor of standard input
    (path - or None), or the path. None for a regular file (or one that cannot be looked at: it is
    opened as today, which says why), and for a standard input that has no descriptor."""
    try:
        if path in (None, "-"):
            fd = sys.stdin.fileno()
            mode, source = os.fstat(fd).st_mode, fd
        else:
            mode, source = os.stat(path).st_mode, path
    except (OSError, ValueError, TypeError, AttributeError):  # io.UnsupportedOperation is an OSError
        return None
    return source if stat.S_ISFIFO(mode) or stat.S_ISCHR(mode) or stat.S_ISSOCK(mode) else None


def _open_live(source, before_wait, feed: _Feed):
    """A live input (a descriptor of standard input, dup'd, or a path) as open_input opens a file."""
    fd = os.dup(source) if isinstance(source, int) else os.open(source, os.O_RDONLY)
    feed.opened = True
    return _LiveInput(fd, before_wait, feed)


def open_input(path):
    """The file (- or None: standard input) as bytes, for lines() to read."""
    if path in (None, "-"):
        if sys.stdin is None:
            raise InputError("standard input is closed: nothing to read")
        return sys.stdin.buffer
    return open(path, "rb")


def not_utf8(text: str) -> str | None:
    """Why text read by lines() is not UTF-8 (its first byte that is not), or None."""
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:  # a surrogate escape U+DC80..U+DCFF stands for the byte 0x80..0xFF
        return f"not UTF-8 text (byte 0x{ord(text[e.start]) - 0xDC00:02x}): save the file as UTF-8"
    return None


CHUNK = 1 << 16  # bytes lines() reads at a time: what a pipe holds
LONG_LINE = f"the line is longer than 1 MiB ({MAX_LINE:,} characters)"
CUT = "\ud800"  # lines() puts it for a line cut short: decoding never gives a lone U+D800
LONG = CUT + "\n"  # what lines() gives for a line longer than MAX_LINE
ODD_BREAKS = "\v\f\x1c\x1d\x1e\x85\u2028\u2029"  # str.splitlines ends a line at these too; a file does not
BREAK = re.compile(r"(?<=\n)|(?<=\r)(?!\n)")  # after \n, \r\n or a \r alone


def _split(text: str) -> list[str]:
    """text's lines, each with its \n, \r\n or \r; the last may have none."""
    if not any(c in text for c in ODD_BREAKS):
        return text.splitlines(True)
    return [part for part in BREAK.split(text) if part]


def lines(f):
    """The lines of a file opened by open_input, as text: UTF-8 without the byte-order mark
    Excel puts first (it would be read as part of the first column's name), each line with its
    \n, \r\n or \r, as a text file opened with newline="" gives them. A byte that is not UTF-8
    is kept as a surrogate escape for not_utf8 to find in its line: decoding strictly would stop
    the whole read at it, with no line number, in the middle of the file.

    Read CHUNK bytes at a time (a live input: what one read gives) and split in bulk; a line
    longer than MAX_LINE characters is given as LONG, and no more than MAX_LINE of it is held at
    a time (the rest is read and dropped), so that memory stays bounded whatever the input: a
    JSON array on one line, /dev/zero."""
    decode = codecs.getincrementaldecoder("utf-8-sig")(errors="surrogateescape").decode
    tail = ""  # the last line read, if its end has not been: CUT + its last character once it is too long
    while True:
        data = f.read1(CHUNK)
        parts = _split(tail + decode(data, final=not data))
        # a line whose end is not read yet, or a \r that may be the first half of a \r\n
        tail = parts.pop() if data and parts and parts[-1][-1] != "\n" else ""
        if len(tail) - (tail[-1:] == "\r") > MAX_LINE or tail[:1] == CUT:
            tail = CUT + tail[-1]  # its last character: a \r that a \n may follow
        if parts and (parts[0][:1] == CUT or max(map(len, parts)) > MAX_LINE):
            parts = [LONG if p[:1] == CUT or len(p.rstrip("\r\n")) > MAX_LINE else p for p in parts]
        yield from parts
        if not data:
            return


def csv_rows(lines):
    """(line number, fields, None) for each row of CSV text (lines()), the header first; (line
    number, None, why) for a row that cannot be read. A quote left open takes the lines after it
    into its field, up to the end of the file or the csv module's field limit: it is reported at
    its line and nothing after it is read, as which lines it took cannot be told. strict, or the
    end of the file would close such a quote without a word; a quote out of place within a line
    ("a"b) is then that line's error. A line longer than MAX_LINE is its row's error; within a
    quoted field over several lines, as a quote left open. A line that is empty or white space
    is no row, as in JSON lines: it is skipped, not counted."""
    rows = csv.reader(lines, strict=True)
    line = 1  # where the next row starts
    while True:
        try:
            for row in rows:
                text = "".join(row)
                if len(row) <= 1 and not text.strip():  # a line of white space, or none: no row
                    line = rows.line_num + 1
                    continue
                if text.isascii():
                    yield line, row, None
                elif CUT not in text:
                    why = not_utf8(text)
                    yield line, (None if why else row), why
                elif rows.line_num == line:
                    yield line, None, LONG_LINE
                else:
                    yield line, None, (f"a quote opened on this line runs on over the lines after it ({LONG_LINE}): "
                                       "the rest of the file is not read")
                    return
                line = rows.line_num + 1
            return
        except csv.Error as e:
            if rows.line_num == line:  # a quote out of place within the line: go on at the next
                yield line, None, f"cannot split the line into fields: {e}"
                line += 1
                continue
            yield line, None, (f"a quote opened on this line runs on over the lines after it ({e}): "
                               "the rest of the file is not read")
            return


class _FileReader(Reader):
    """A reader of a path (- for standard input), live or not (live_input)."""

    def __init__(self, path, batch: int = 1024, linger_s: float = LINGER_S):
        super().__init__(batch, linger_s)
        self.path = path

    def _live_path(self):
        return live_input(self.path)


def _json_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


class CsvReader(_FileReader):
    expected = ("a CSV file with the Handbook's header (TRANSACTION_ID, TX_DATETIME, CUSTOMER_ID, TERMINAL_ID, "
                "TX_AMOUNT, ...) and times as YYYY-MM-DD HH:MM:SS in UTC")

    def _records(self, opener=None):
        with (opener or open_input)(self.path) as f:
            text = lines(f)
            first = next(text, "")  # (lines() drops a byte-order mark)
            if first.lstrip().startswith("{") and _json_object(first):  # '{"tx_id":1,...' fails in csv first
                raise InputError(f"{self.path}: the first line looks like JSON lines, not a CSV header: "
                                 "use --format jsonl")
            rows = csv_rows(itertools.chain([first], text) if first else text)
            _, header, why = next(rows, (1, None, None))
            if why:
                raise InputError(f"{self.path}, line 1: {why}")
            if header is None:
                return
            header = [name.strip() for name in header]  # "TRANSACTION_ID, TX_DATETIME, ...", as people write it
            index = {}
            for col, names in FIELDS.items():
                found = [header.index(n) for n in names if n in header]
                if not found:
                    raise InputError(f"{self.path}: no column {' or '.join(names)} in the header {header}")
                index[col] = found[0]
            width = max(index.values()) + 1
            for line, row, why in rows:
                if why:
                    self._error(line, why)
                    continue
                if len(row) < width:
                    self._error(line, f"expected at least {width} fields, got {len(row)}")
                    continue
                yield line, {c: row[i] for c, i in index.items()}


class JsonLinesReader(_FileReader):
    expected = ('JSON lines: one object per line, such as {"tx_id": 1, "ts_ms": "2018-04-01 00:00:31", '
                '"card": 7, "terminal": 3, "amount": 12.5} (or the Handbook\'s field names)')

    def _records(self, opener=None):
        with (opener or open_input)(self.path) as f:
            for line, text in enumerate(lines(f), start=1):
                if text == LONG:
                    self._error(line, LONG_LINE)
                    continue
                if not text.strip():
                    continue
                try:
                    why = not_utf8(text)
                    if why:
                        raise ValueError(why)
                    try:
                        obj = json.loads(text)
                    except RecursionError:  # json's parser recurses once per level
                        raise ValueError("JSON nested too deeply") from None
                    if not isinstance(obj, dict):
                        raise ValueError("a line must be a JSON object")
                    rec = {}
                    for col, names in FIELDS.items():
                        key = next((n for n in names if n in obj), None)
                        if key is None:
                            raise ValueError(f"missing field {' or '.join(names)}")
                        rec[col] = obj[key]
                except ValueError as e:
                    self._error(line, str(e))
                    continue
                yield line, rec


class SyntheticReader(Reader):
    def __init__(self, n: int, batch: int = 1024, seed: int = 0):
        super().__init__(batch)
        self.n, self.seed = n, seed

    def chunks(self, idle=None):
        return synthetic(self.n, batch=self.batch, seed=self.seed)


def open_source(path=None, synthetic_n: int | None = None, batch: int = 1024, fmt: str | None = None,
                linger_s: float = LINGER_S) -> Reader:
    """Pick a reader: synthetic if synthetic_n, else by `fmt` ("csv" or "jsonl") or the file suffix.
    linger_s: how long a live input's oldest record read waits for more to make a batch."""
    if synthetic_n is not None:
        return SyntheticReader(synthetic_n, batch)
    if fmt is None:
        fmt = "jsonl" if str(path).endswith((".jsonl", ".json", ".ndjson")) else "csv"
    if fmt == "jsonl":
        return JsonLinesReader(path, batch, linger_s)
    if fmt == "csv":
        return CsvReader(path, batch, linger_s)
    raise InputError(f"unknown input format {fmt!r}: use csv or jsonl")
