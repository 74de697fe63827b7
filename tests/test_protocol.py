"""Protocol encoding and validation, without sockets."""
import msgpack
import numpy as np
import pytest

from zfraud import protocol as P


def arrays(n=4):
    return {"tx_id": np.arange(n, dtype=np.uint64), "card": np.arange(n, dtype=np.uint64) % 3,
            "terminal": np.arange(n, dtype=np.uint64), "ts_ms": np.full(n, 1_522_540_800_000, np.int64),
            "amount": np.linspace(1, 100, n)}


def test_batch_round_trip():
    frames = P.batch_message(7, 1, arrays(), deadline_ms=123)
    assert frames[0] == b"ZF1" and frames[1] == b"BATCH" and len(frames) == 3 + len(P.TX_COLUMNS)
    batch, attempt, cols = P.parse_batch(P.parse([bytes(f) for f in frames]))
    assert (batch, attempt) == (7, 1)
    for name, dtype in P.TX_COLUMNS:
        assert cols[name].dtype == np.dtype(dtype)
        np.testing.assert_array_equal(cols[name], arrays()[name])


def good():
    return [bytes(f) for f in P.batch_message(1, 0, arrays())]


@pytest.mark.parametrize("mutate, code, message", [
    (lambda f: f.__setitem__(0, b"ZF9"), P.BAD_VERSION, "unsupported protocol version"),
    (lambda f: f.__setitem__(1, b"NOPE"), P.BAD_COMMAND, "unknown command"),
    (lambda f: f.__setitem__(2, b"\xc1\xc1"), P.BAD_HEADER, "not valid msgpack"),
    (lambda f: f.__setitem__(2, msgpack.packb([1, 2])), P.BAD_HEADER, "must be a msgpack map"),
    (lambda f: f.__setitem__(2, b"\x00" * (P.MAX_HEADER_BYTES + 1)), P.TOO_LARGE, "header is 65537 bytes"),
    (lambda f: f.pop(), P.BAD_FRAMES, "expected 5 column frames, got 4"),
    (lambda f: f.append(b"x"), P.BAD_FRAMES, "expected 5 column frames, got 6"),
    (lambda f: f.__setitem__(7, f[7][:-8]), P.BAD_COLUMN, "column 'amount' has 24 bytes, expected 4 rows"),
    (lambda f: f.__setitem__(2, P.pack({**msgpack.unpackb(f[2]), "rows": 0})), P.BAD_HEADER, "'rows' must be an integer in \\[1, 65536\\]"),
    (lambda f: f.__setitem__(2, P.pack({**msgpack.unpackb(f[2]), "rows": 10**9})), P.BAD_HEADER, "'rows'"),
    (lambda f: f.__setitem__(2, P.pack({**msgpack.unpackb(f[2]), "batch": "x"})), P.BAD_HEADER, "'batch'"),
    (lambda f: f.__setitem__(2, P.pack({**msgpack.unpackb(f[2]), "columns": [["tx_id", "<f8"]]})), P.BAD_SCHEMA, "columns must be"),
])
def test_bad_batches_are_named(mutate, code, message):
    frames = good()
    mutate(frames)
    with pytest.raises(P.ProtocolError, match=message) as e:
        P.parse_batch(P.parse(frames))
    assert e.value.code == code


def test_too_few_frames():
    with pytest.raises(P.ProtocolError, match="at least 3 frames") as e:
        P.parse([b"ZF1", b"BATCH"])
    assert e.value.code == P.BAD_FRAMES


def test_a_header_prefix_packs_like_the_whole_header():
    fields = {"worker": "w1", "reasons": [f"feature {i}" for i in range(30)], "columns": P.schema(P.VERDICT_COLUMNS)}
    prefix = P.HeaderPrefix(fields)
    for extra in ({}, {"rows": 3, "seq": 1}, {"batch": 2**64 - 1, "attempt": 0, "rows": 65536},
                  {"worker": "w2", "rows": 1}):  # a repeated key: the later value wins, as in a dict
        assert prefix.pack(extra) == P.pack({**fields, **extra})
        assert P.unpack(prefix.pack(extra)) == {**fields, **extra}


def test_send_frames_checks_every_frame_before_sending_any():
    import zmq

    from zfraud.sockets import recv_frames, send_frames

    ctx = zmq.Context()
    a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    try:
        a.bind("inproc://send-frames")
        b.connect("inproc://send-frames")
        with pytest.raises(TypeError, match="C-contiguous"):
            send_frames(a, [b"ZF1", np.arange(10)[::2]])
        with pytest.raises(TypeError, match="bytes or"):
            send_frames(a, [b"ZF1", "text"])
        send_frames(a, [b"ZF1", np.arange(3, dtype=np.uint8)])
        send_frames(a, [b"one"])
        assert b.poll(1000)
        assert recv_frames(b) == [b"ZF1", b"\x00\x01\x02"]  # the refused messages left nothing behind
        assert recv_frames(b) == [b"one"]
    finally:
        a.close(0)
        b.close(0)
        ctx.term()


@pytest.mark.parametrize("raw, why", [
    (b"\xc1\xc1", "a byte that starts no msgpack value (e.g. 0xc1, reserved)"),  # FormatError()
    (b"\x91" * 5000, "nested too deeply"),                                         # StackError()
    (b"\xd9", "Unpack failed: incomplete input"),                                  # msgpack's own words
], ids=["FormatError", "StackError", "incomplete"])
def test_a_header_msgpack_refuses_says_why_after_the_colon(raw, why):
    """msgpack's FormatError and StackError have an empty message: the reason ended at its colon."""
    with pytest.raises(P.ProtocolError) as e:
        P.unpack(raw)
    assert e.value.code == P.BAD_HEADER and str(e.value) == f"header is not valid msgpack: {why}"


def test_fired_names_reads_each_rows_bits_through_the_messages_own_rule_table():
    """A verdict's `rules` column is a bitmask over its header's `rule_names` (bit k: name k), and
    which rule a bit means changes with the rule set deployed: Client.score and tail name the
    fired rules through this one lookup, a tuple per row, () when none fired."""
    h = {"rule_names": ["big", "night", "blocked"]}
    masks = np.array([0, 0b001, 0b101, 0b110, 0b101, 0b1000, 2**63 | 0b010], dtype="<u8")
    got = P.fired_names(masks, h)
    assert got.dtype == object and got.tolist() == [(), ("big",), ("big", "blocked"), ("night", "blocked"),
                                                    ("big", "blocked"), (), ("night",)]  # bits past the table: left out
    assert got[2] is got[4]  # one tuple per distinct mask
    assert P.fired_names(np.array([0b11], "<u8"), {"rule_names": ["blocked", "big"]}).tolist() == [("blocked", "big")]
    assert P.fired_names(masks[:2], {}).tolist() == [(), ()]  # no table: no names
    assert P.fired_names(np.zeros(0, "<u8"), h).tolist() == []
    # many rows, up to 64 rules: the same as naming them row by row
    names = [f"r{k}" for k in range(64)]
    many = np.random.default_rng(3).integers(0, 2**64, 5000, dtype=np.uint64)
    many[::3] = many[1::3][:len(many[::3])]  # repeated masks
    many[::7] = 0
    assert P.fired_names(many, {"rule_names": names}).tolist() == [
        tuple(n for k, n in enumerate(names) if m >> k & 1) for m in many.tolist()]
    # tail's records (and send --out) name them from the same lookup, as JSON lists
    from zfraud.tail import records
    cols = {"tx_id": np.arange(7, dtype="<u8"), "score": np.zeros(7, "<f4"), "decision": np.zeros(7, "u1"),
            "reason": np.full(7, -1, "<i2"), "rules": masks}
    assert [r["fired"] for r in records(cols, h)] == [list(t) for t in got.tolist()]


@pytest.mark.parametrize("reasons", [5, "amount", {"a": 1}, None], ids=["int", "str", "dict", "absent"])
def test_reason_texts_names_nothing_through_a_reasons_table_that_is_not_a_list(reasons):
    """A peer's `reasons` of 5 raised TypeError (`[*5]`) out of Client.score's poll, and a string
    was read letter by letter ("a", "m", ...); as fired_names does with its table, nothing is named."""
    h = {} if reasons is None else {"reasons": reasons}
    got = P.reason_texts(np.array([-1, 0, 1, 9], "<i2"), h)
    assert got.dtype == object and got.tolist() == [None, None, None, None]


def test_reason_texts_resolves_each_index_through_the_messages_own_table():
    got = P.reason_texts(np.array([0, 2, -1, 3, 1, 2], "<i2"), {"reasons": ["amount", "terminal_risk_7d", "night"]})
    assert got.tolist() == ["amount", "night", None, None, "terminal_risk_7d", "night"]
