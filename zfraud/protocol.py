"""zfraud wire protocol, version 1 (docs/PROTOCOL.md is the spec; this module is its code).

Every message is a ZeroMQ multipart message. On ROUTER/DEALER (after the ROUTER's routing-id
frame, which the sockets add and remove):

    frame 0   b"ZF1"                  protocol and version
    frame 1   command                 b"HELLO", b"MEMBERS", b"BATCH", b"RESULT", b"HEARTBEAT",
                                      b"ERROR" or b"CONTROL"
    frame 2   header                  a msgpack map (string keys), at most MAX_HEADER_BYTES
    frame 3+  columns                 one raw little-endian array per column, in the order the
                                      header's "columns" list gives, each exactly rows x itemsize

On PUB/SUB the first frame is the topic (b"verdict.approve", b"mesh.hello", ...) and the rest is
the same layout without the command frame: [topic, b"ZF1", header, columns...].

Column sets are defined once, here, as (name, numpy dtype string) pairs; the header names them so
a receiver can check them, and numpy views the frames without a copy.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import msgpack
import numpy as np

VERSION = b"ZF1"

HELLO = b"HELLO"
MEMBERS = b"MEMBERS"
BATCH = b"BATCH"
RESULT = b"RESULT"
HEARTBEAT = b"HEARTBEAT"
ERROR = b"ERROR"
CONTROL = b"CONTROL"
LABEL = b"LABEL"
COMMANDS = frozenset({HELLO, MEMBERS, BATCH, RESULT, HEARTBEAT, ERROR, CONTROL, LABEL})

# A transaction batch (BATCH). The card is the unit of ownership; ids are opaque 64-bit integers.
TX_COLUMNS = (
    ("tx_id", "<u8"),     # transaction id, unique per transaction
    ("card", "<u8"),      # card (customer) id: decides which worker owns the row
    ("terminal", "<u8"),  # terminal (merchant point of sale) id
    ("ts_ms", "<i8"),     # event time, epoch milliseconds UTC
    ("amount", "<f8"),    # amount in the card's currency
)

# Verdicts (RESULT and verdict.* topics): one row per transaction of the batch, in batch order.
VERDICT_COLUMNS = (
    ("tx_id", "<u8"),
    ("score", "<f4"),     # fraud probability in [0, 1]; NaN for a rejected row
    ("decision", "u1"),   # index into DECISIONS
    ("reason", "<i2"),    # index into the header's "reasons" list, -1 for none
    ("rules", "<u8"),     # bit k set: rule k of the header's "rule_names" fired
)

# Confirmed labels (LABEL, client -> the card's owner): feed terminal risk once revealed.
LABEL_COLUMNS = (
    ("tx_id", "<u8"),     # the labelled transaction (a fraud label counts once per tx_id)
    ("card", "<u8"),
    ("terminal", "<u8"),
    ("ts_ms", "<i8"),     # the transaction's event time: the label counts on that day
    ("amount", "<f8"),    # the transaction's amount (a fraud's amount feeds terminal features)
    ("fraud", "u1"),      # 1 confirmed fraud, 0 confirmed genuine
)
LABEL_NAMES = tuple(name for name, _ in LABEL_COLUMNS)


def _counts(prefix: str) -> tuple:
    """One table's columns on intel.terminal: TerminalState.export's keys, buckets and counts."""
    return ((f"{prefix}_key", "<u8"), (f"{prefix}_bucket", "<i4"), (f"{prefix}_count", "<u4"))


# Terminal counters shared on intel.terminal (worker PUB -> every worker SUB): cumulative counts
# per (terminal key, bucket) of the publisher's own transactions, and of the confirmed frauds,
# their amounts (whole units) and the card-linked frauds it applied (zfraud.features). The
# frames: (header field with the rows, column set) in frame order. A message may stop after any
# whole set (a peer from before the later sets existed).
INTEL_SETS = (("rows", _counts("tx")), ("fraud_rows", _counts("fraud")), ("amount_rows", _counts("amount")),
              ("linked_rows", _counts("linked")))

DECISIONS = ("approve", "review", "decline", "rejected")
APPROVE, REVIEW, DECLINE, REJECTED = range(4)

# Error codes carried by ERROR messages ("code"). A rejected row carries a reason text instead
# (the header's "reasons" list; scoring.ROW_ERRORS).
BAD_VERSION = "BAD_VERSION"
BAD_COMMAND = "BAD_COMMAND"
BAD_FRAMES = "BAD_FRAMES"
BAD_HEADER = "BAD_HEADER"
BAD_SCHEMA = "BAD_SCHEMA"
BAD_COLUMN = "BAD_COLUMN"
TOO_LARGE = "TOO_LARGE"
BAD_CONTROL = "BAD_CONTROL"
INTERNAL = "INTERNAL"
EXPIRED = "EXPIRED"  # a BATCH that waited past its deadline_ms in a stopped worker: not scored
NAME_TAKEN = "NAME_TAKEN"  # a worker HELLO under the name of a live member at other endpoints

# Limits. A receiver checks them before it unpacks anything.
MAX_HEADER_BYTES = 64 * 1024
MAX_ROWS = 65536
MAX_LABEL_ROWS = MAX_ROWS * 16  # rows in one LABEL message
MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # ZMQ_MAXMSGSIZE on every socket


class ProtocolError(ValueError):
    """A message that does not follow the protocol. `code` is one of the error codes above."""

    def __init__(self, code: str, message: str, batch: int | None = None):
        super().__init__(message)
        self.code = code
        self.batch = batch


def pack(header: dict) -> bytes:
    return msgpack.packb(header, use_bin_type=True)


class HeaderPrefix:
    """Header fields that many messages repeat, packed once (every verdict message of a scorer
    carries its reason table): `prefix.pack(extra)` is `pack({**fields, **extra})`, byte for byte.
    Not for use from several threads at once."""

    def __init__(self, fields: dict):
        self.fields = dict(fields)
        self._packer = p = msgpack.Packer(use_bin_type=True)  # packs as pack() does
        self._packed = b"".join(p.pack(k) + p.pack(v) for k, v in self.fields.items())

    def pack(self, extra: dict) -> bytes:
        if not extra.keys().isdisjoint(self.fields):
            return pack({**self.fields, **extra})
        p = self._packer
        return b"".join([p.pack_map_header(len(self.fields) + len(extra)), self._packed,
                         *(p.pack(k) + p.pack(v) for k, v in extra.items())])


# msgpack's FormatError and StackError carry no message: "header is not valid msgpack: " said nothing.
_UNPACK_FAILURES = {msgpack.exceptions.FormatError: "a byte that starts no msgpack value (e.g. 0xc1, reserved)",
                    msgpack.exceptions.StackError: "nested too deeply"}


def _unpack_failure(e: Exception) -> str:
    """Why msgpack refused a header, never empty."""
    return str(e) or _UNPACK_FAILURES.get(type(e)) or type(e).__name__


def unpack(raw: bytes) -> dict:
    """Decode a header frame, refusing anything that is not a small msgpack map."""
    if len(raw) > MAX_HEADER_BYTES:
        raise ProtocolError(TOO_LARGE, f"header is {len(raw)} bytes, the limit is {MAX_HEADER_BYTES}")
    try:
        header = msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except Exception as e:  # msgpack raises several unrelated types for garbage
        raise ProtocolError(BAD_HEADER, f"header is not valid msgpack: {_unpack_failure(e)}") from None
    if not isinstance(header, dict):
        raise ProtocolError(BAD_HEADER, f"header must be a msgpack map, got {type(header).__name__}")
    return header


@functools.lru_cache(maxsize=64)
def schema(columns) -> list:
    """The header form of a column set: [[name, dtype], ...] (one shared list per column set:
    do not modify it)."""
    return [[name, dtype] for name, dtype in columns]


_dtype = functools.lru_cache(maxsize=64)(np.dtype)  # a column's dtype string -> numpy dtype


def column_frames(arrays, columns) -> list:
    """Little-endian, contiguous buffers of `arrays` in the order of `columns` (no copy if possible)."""
    return [np.ascontiguousarray(arrays[name], dtype=dtype) for name, dtype in columns]


def read_columns(frames, rows: int, columns, batch: int | None = None) -> dict:
    """View each frame as its column's dtype; every frame must hold exactly `rows` values."""
    if len(frames) != len(columns):
        raise ProtocolError(BAD_FRAMES, f"expected {len(columns)} column frames, got {len(frames)}", batch)
    out = {}
    for (name, dtype), frame in zip(columns, frames):
        dt = _dtype(dtype)
        buf = frame if type(frame) is bytes else memoryview(getattr(frame, "buffer", frame))  # bytes or zmq.Frame
        nbytes = len(buf) if type(buf) is bytes else buf.nbytes
        if nbytes != rows * dt.itemsize:
            raise ProtocolError(
                BAD_COLUMN,
                f"column {name!r} has {nbytes} bytes, expected {rows} rows x {dt.itemsize} = {rows * dt.itemsize}",
                batch,
            )
        out[name] = np.frombuffer(buf, dtype=dt)
    return out


def int_field(header: dict, key: str, lo: int, hi: int, batch: int | None = None) -> int:
    """A header's integer, checked as it is read: a peer's inf, nan, list or string would raise
    something else from int() (OverflowError for inf), which no caller expects."""
    value = header.get(key)
    if type(value) is not int or not lo <= value <= hi:
        raise ProtocolError(BAD_HEADER, f"header field {key!r} must be an integer in [{lo}, {hi}], got {value!r}", batch)
    return value


@dataclass(frozen=True)
class Message:
    command: bytes
    header: dict
    frames: list  # the column frames, still raw


def reason_texts(codes: np.ndarray, header: dict) -> np.ndarray:
    """A verdict message's reason column as text: each index resolved through the same message's
    `reasons` table (§5.4: an index means another thing under another model); -1, or an index
    past the table, is None, and a table that is not a list names nothing. An object array, made
    without per-row Python."""
    reasons = header.get("reasons")
    reasons = reasons if isinstance(reasons, list) else []  # a peer's junk: TypeError out of Client.score's poll
    table = np.empty(len(reasons) + 1, dtype=object)  # None past the table
    for i, text in enumerate(reasons):  # (one entry per reason of the model, not per row)
        table[i] = text
    r = np.asarray(codes).astype(np.intp)
    return table[np.where((r >= 0) & (r < len(table) - 1), r, len(table) - 1)]


def fired_names(masks: np.ndarray, header: dict) -> np.ndarray:
    """A verdict message's rules column as the names of the rules that fired: per row a tuple of
    names, in the order of the same message's `rule_names` table (bit k is its name k; which rule
    a bit means changes with each rule set deployed, §4.4, §5.4), () when none fired; a bit past
    the table is left out, and a table that is not a list names nothing. An object array; the
    tuples are made once per distinct mask (rows that fired the same rules share one), not per row."""
    names = header.get("rule_names")
    names = names if isinstance(names, list) else []  # a peer's junk: no names, and nothing raised
    m = np.asarray(masks, dtype=np.uint64)
    out = np.empty(len(m), dtype=object)
    if not m.any():  # no rules, or none fired: the usual case
        out.fill(())
        return out
    distinct, inverse = np.unique(m, return_inverse=True)
    table = np.empty(len(distinct), dtype=object)
    for i, mask in enumerate(distinct.tolist()):  # (a list of tuples would be read as a 2-d array)
        table[i] = tuple(name for k, name in enumerate(names) if mask >> k & 1)
    out[:] = table[inverse.reshape(-1)]
    return out


def parse(frames) -> Message:
    """Check version, command and header of a DEALER/ROUTER message (routing id already removed)."""
    if len(frames) < 3:
        raise ProtocolError(BAD_FRAMES, f"a message has at least 3 frames (version, command, header), got {len(frames)}")
    version, command = bytes(frames[0]), bytes(frames[1])
    if version != VERSION:
        raise ProtocolError(BAD_VERSION, f"unsupported protocol version {version[:16]!r}, this peer speaks {VERSION!r}")
    if command not in COMMANDS:
        raise ProtocolError(BAD_COMMAND, f"unknown command {command[:16]!r}")
    return Message(command, unpack(bytes(frames[2])), list(frames[3:]))


def parse_batch(msg: Message) -> tuple[int, int, dict]:
    """Validate a BATCH: returns (batch id, attempt, columns as numpy views)."""
    h = msg.header
    batch = int_field(h, "batch", 0, 2**64 - 1)
    attempt = int_field(h, "attempt", 0, 1000, batch)
    rows = int_field(h, "rows", 1, MAX_ROWS, batch)
    if h.get("columns") != schema(TX_COLUMNS):
        raise ProtocolError(BAD_SCHEMA, f"columns must be {schema(TX_COLUMNS)}, got {h.get('columns')!r}", batch)
    return batch, attempt, read_columns(msg.frames, rows, TX_COLUMNS, batch)


def parse_columns(msg: Message, columns) -> dict:
    """Validate a message whose header says rows and columns, e.g. LABEL: returns the arrays."""
    rows = int_field(msg.header, "rows", 0, MAX_LABEL_ROWS)
    if msg.header.get("columns") != schema(columns):
        raise ProtocolError(BAD_SCHEMA, f"columns must be {schema(columns)}, got {msg.header.get('columns')!r}")
    return read_columns(msg.frames, rows, columns)


def encode(command: bytes, header: dict | bytes, columns: list = ()) -> list:
    """A ROUTER/DEALER message; `header` is a dict, or one already packed (HeaderPrefix.pack)."""
    return [VERSION, command, header if type(header) is bytes else pack(header), *columns]


def as_columns(arrays, columns, what: str = "a batch") -> dict:
    """A caller's arrays (numpy arrays or sequences) as `columns` of the wire: 1-d, of one length,
    each in its column's dtype. ValueError naming the column (and the first bad row) for a missing
    column, unequal lengths, a value that is not a number, or an id or time that is not a whole
    number (negative too, for an unsigned id) or is out of its column's range: numpy would
    truncate 1.5 to 1, wrap -1 to 2**64 - 1 and 256 to 0, and cast 1e20 to 0, without a word.
    Keys that are not columns are ignored; an array already of the right dtype is used as it is
    (no copy)."""
    missing = [name for name, _ in columns if name not in arrays]
    if missing:
        raise ValueError(f"{what}: missing {', '.join(missing)}; expected the columns {', '.join(n for n, _ in columns)}")
    out, n = {}, None
    for name, dtype in columns:
        a = np.asarray(arrays[name])
        if a.ndim != 1:
            raise ValueError(f"{what}: column {name} must be 1-d (one value per row), got shape {a.shape}")
        if n is None:
            n = len(a)
        elif len(a) != n:
            raise ValueError(f"{what}: column {name} has {len(a)} rows, {columns[0][0]} has {n}")
        want = np.dtype(dtype)
        if want.kind in "iu" and not isinstance(arrays[name], np.ndarray) and (
                a.dtype == object or (a.dtype.kind == "f" and n and np.abs(a).max() >= 2**53)):
            a = _exact_ints(arrays[name], want, name, what)  # Python ints numpy could not hold as ints
        if a.dtype != want:
            if a.dtype.kind not in "iuf":  # not bool either: true is no card id
                raise ValueError(f"{what}: column {name} must hold numbers, got {a.dtype}")
            if want.kind in "iu":
                _check_whole(a, want, name, what)
        out[name] = np.ascontiguousarray(a, dtype=want)
    return out


def _exact_ints(values, want: np.dtype, name: str, what: str) -> np.ndarray:
    """A 1-d sequence numpy read as objects (ints beyond 64 bits) or as floats (ints that do not
    all fit one int dtype, e.g. -1 and 2**63), rounding them: checked value by value, exactly."""
    info, out = np.iinfo(want), []
    for i, v in enumerate(values):
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise ValueError(f"{what}: column {name} must hold numbers; row {i} is {v!r}")
        if (isinstance(v, (float, np.floating)) and not (np.isfinite(v) and v == int(v))) or (want.kind == "u" and v < 0):
            raise ValueError(f"{what}: column {name} must hold whole numbers"
                             f"{' >= 0' if want.kind == 'u' else ''}; row {i} is {v!r}")
        if not info.min <= int(v) <= info.max:
            raise ValueError(f"{what}: column {name} must hold whole numbers in [{info.min}, {info.max}]; "
                             f"row {i} is {v!r}")
        out.append(int(v))
    return np.array(out, dtype=want)


def _check_whole(a: np.ndarray, want: np.dtype, name: str, what: str) -> None:
    """ValueError for the first row of `a` (ints or floats) that `want`, an integer dtype, cannot
    hold exactly: not a whole number, negative for an unsigned id, or out of its range."""
    info = np.iinfo(want)
    if a.dtype.kind == "f":
        whole = (a != np.trunc(a)) | ~np.isfinite(a)
        if want.kind == "u":
            whole |= a < 0
        # The bounds as floats: info.min (0 or -2**63) is exact, and so is info.max + 1 (a power
        # of two), where info.max itself would round up to it (2**64 - 1 -> 2.0**64).
        out_of_range = (a < float(info.min)) | (a >= float(info.max + 1))
    else:  # ints: only the bounds inside the input dtype's own range can be crossed
        have = np.iinfo(a.dtype)
        whole = a < 0 if want.kind == "u" and have.min < 0 else None
        out_of_range = None
        if have.min < info.min and info.min < 0:
            out_of_range = a < info.min
        if have.max > info.max:
            out_of_range = a > info.max if out_of_range is None else out_of_range | (a > info.max)
        if whole is None and out_of_range is None:
            return  # every value fits (e.g. uint32 ids as uint64)
    bad = whole if out_of_range is None else out_of_range if whole is None else whole | out_of_range
    if bad.any():
        i = int(np.argmax(bad))
        if whole is not None and whole[i]:
            raise ValueError(f"{what}: column {name} must hold whole numbers"
                             f"{' >= 0' if want.kind == 'u' else ''}; row {i} is {a[i].item()!r}")
        raise ValueError(f"{what}: column {name} must hold whole numbers in [{info.min}, {info.max}]; "
                         f"row {i} is {a[i].item()!r}")


def batch_message(batch: int, attempt: int, arrays: dict, deadline_ms: int | None = None) -> list:
    rows = len(arrays["tx_id"])
    header = {"batch": batch, "attempt": attempt, "rows": rows, "columns": schema(TX_COLUMNS)}
    if deadline_ms is not None:
        header["deadline_ms"] = deadline_ms
    return encode(BATCH, header, column_frames(arrays, TX_COLUMNS))


def error_message(code: str, message: str, batch: int | None = None, worker: str | None = None) -> list:
    return encode(ERROR, {"code": code, "message": message, "batch": batch, "worker": worker})
