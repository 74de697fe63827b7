"""Readers: Handbook CSV and JSON lines; a bad record is reported, its neighbours are kept."""
import json
import re
import warnings

import numpy as np
import pytest

from zfraud.dataset import read_labelled
from zfraud.sources import InputError, open_source, parse_ts_ms

from conftest import run_cli

HEADER = "TRANSACTION_ID,TX_DATETIME,CUSTOMER_ID,TERMINAL_ID,TX_AMOUNT,TX_TIME_SECONDS,TX_TIME_DAYS,TX_FRAUD,TX_FRAUD_SCENARIO\n"


def test_handbook_csv(tmp_path):
    p = tmp_path / "tx.csv"
    p.write_text(HEADER + "0,2018-04-01 00:00:31,596,3156,57.16,31,0,0,0\n"
                          "1,2018-04-01 00:02:10,4961,3412,81.51,130,0,0,0\n"
                          "2,2018-04-01 00:07:56,oops,1365,146.00,476,0,0,0\n"
                          "3,2018-04-01 00:09:29,4128,8737,64.49,569,0,0,0\n")
    reader = open_source(p, batch=2)
    chunks = list(reader)
    cols = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
    assert cols["tx_id"].tolist() == [0, 1, 3]
    assert cols["card"].tolist() == [596, 4961, 4128]
    assert cols["ts_ms"].tolist() == [1522540831000, 1522540930000, 1522541369000]
    assert cols["amount"].tolist() == [57.16, 81.51, 64.49]
    assert reader.error_count == 1 and reader.errors[0][0] == 4


def test_missing_column(tmp_path):
    p = tmp_path / "tx.csv"
    p.write_text("TRANSACTION_ID,TX_AMOUNT\n1,2\n")
    with pytest.raises(InputError, match="no column card or CUSTOMER_ID"):
        list(open_source(p))


@pytest.mark.parametrize("fmt", ["csv", "labelled"])
def test_a_header_with_spaces_after_the_commas_is_read(tmp_path, fmt):
    """As the README writes the columns: "TRANSACTION_ID, TX_DATETIME, ..."."""
    p = tmp_path / "spaced.csv"
    p.write_text("TRANSACTION_ID, TX_DATETIME, CUSTOMER_ID, TERMINAL_ID, TX_AMOUNT, TX_FRAUD\n"
                 "0, 2018-04-01 00:00:31, 596, 3156, 57.16, 1\n1,2018-04-01 00:02:10,4961,3412,81.51,0\n")
    if fmt == "csv":
        reader = open_source(p)
        (cols,) = list(reader)
        assert reader.errors == []
    else:
        cols = read_labelled(p)
        assert cols["fraud"].tolist() == [1, 0]
    assert cols["tx_id"].tolist() == [0, 1] and cols["card"].tolist() == [596, 4961]
    assert cols["ts_ms"].tolist() == [1522540831000, 1522540930000] and cols["amount"].tolist() == [57.16, 81.51]


@pytest.mark.parametrize("first", ['{"tx_id": 1, "card": 2}', '  {"tx_id": 1}', '\ufeff{"tx_id": 1}',
                                   '{"tx_id":1,"card":2}', '{"a":"x,y"}'])  # compact: the csv module failed first
def test_json_lines_read_as_csv_say_to_use_format_jsonl(tmp_path, first):
    p = tmp_path / "tx.csv"
    p.write_text(first + "\n")
    with pytest.raises(InputError) as e:
        list(open_source(p))
    assert str(e.value) == f"{p}: the first line looks like JSON lines, not a CSV header: use --format jsonl"


def test_a_csv_header_whose_first_column_starts_with_a_brace_is_read_as_csv(tmp_path):
    p = tmp_path / "tx.csv"
    p.write_text("{meta},TRANSACTION_ID,TX_DATETIME,CUSTOMER_ID,TERMINAL_ID,TX_AMOUNT\n"
                 "x,1,2018-04-01 00:00:31,7,3,12.5\n")
    chunks = list(open_source(p))
    assert [c["tx_id"].tolist() for c in chunks] == [[1]] and chunks[0]["amount"].tolist() == [12.5]


def test_send_says_json_lines_on_standard_input_need_format_jsonl(mesh2):
    r = run_cli("send", "-", "--connect", mesh2.endpoint, input='{"tx_id": 1, "ts_ms": 1522540831000}\n')
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == ["Error: -: the first line looks like JSON lines, not a CSV header: "
                                             "use --format jsonl"], r.stderr


@pytest.mark.parametrize("text", ["", "\n", "\nTRANSACTION_ID\n"])
def test_an_empty_or_headerless_csv_is_not_taken_for_json(tmp_path, text):
    p = tmp_path / "tx.csv"
    p.write_text(text)
    try:
        list(open_source(p))
    except InputError as e:
        assert "JSON" not in str(e) and "no column" in str(e)


def test_json_lines(tmp_path):
    p = tmp_path / "tx.jsonl"
    lines = [{"tx_id": 1, "card": 2, "terminal": 3, "ts_ms": 1522540831000, "amount": 5.5},
             {"TRANSACTION_ID": 2, "CUSTOMER_ID": 9, "TERMINAL_ID": 1, "TX_DATETIME": "2018-04-01 00:00:31", "TX_AMOUNT": 7},
             "not an object", {"tx_id": 4}]
    p.write_text("\n".join(json.dumps(x) for x in lines) + "\n{broken\n")
    reader = open_source(p)
    (chunk,) = list(reader)
    assert chunk["tx_id"].tolist() == [1, 2] and chunk["ts_ms"].tolist() == [1522540831000] * 2
    assert [line for line, _ in reader.errors] == [3, 4, 5]


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_an_id_that_is_not_a_whole_number_in_range_is_refused_not_cast(tmp_path, fmt):
    """numpy alone would truncate 1.5 to card 1, wrap -1 to card 2**64 - 1 (another card on
    another owner) and take true as 1: each is an error naming the column, its neighbours kept."""
    cards = [5, 1.5, -1, 2**64 - 1, 2**64, "abc", 7.0, True]
    if fmt == "csv":
        lines = [f"{i},2018-04-01 00:00:{i:02d},{c},3,10.5,0,0,0,0" for i, c in enumerate(cards)]
        text = HEADER + "\n".join(lines) + "\n"
        cards[6] = "7.0"  # a CSV's digits are strings: "7.0" is not a whole number's digits
    else:
        text = "".join(json.dumps({"tx_id": i, "card": c, "terminal": 3, "ts_ms": 1522540831000, "amount": 10.5}) + "\n"
                       for i, c in enumerate(cards))
    p = tmp_path / f"tx.{fmt}"
    p.write_text(text)
    reader = open_source(p)
    (chunk,) = list(reader)
    ok = [0, 3, 6] if fmt == "jsonl" else [0, 3]
    assert chunk["tx_id"].tolist() == ok
    assert chunk["card"].tolist() == [5, 2**64 - 1, 7][:len(ok)]
    bad = [i for i in range(len(cards)) if i not in ok]
    assert [line - (2 if fmt == "csv" else 1) for line, _ in reader.errors] == bad
    for (_, message), i in zip(reader.errors, bad):
        assert message == f"card must be a whole number from 0 to 2**64 - 1, got {cards[i]!r}" or (
            fmt == "csv" and message == f"card must be a whole number from 0 to 2**64 - 1, got {str(cards[i])!r}")


def test_a_csv_with_a_byte_order_mark_is_read(tmp_path):
    """Excel's "CSV UTF-8" starts with a byte-order mark: it is not part of the first column's name."""
    p = tmp_path / "tx.csv"
    p.write_bytes(b"\xef\xbb\xbf" + (HEADER + "0,2018-04-01 00:00:31,596,3156,57.16,31,0,0,1\n").encode())
    reader = open_source(p)
    (chunk,) = list(reader)
    assert chunk["tx_id"].tolist() == [0] and chunk["card"].tolist() == [596] and reader.errors == []
    d = read_labelled(p)
    assert d["tx_id"].tolist() == [0] and d["scenario"].tolist() == [1]


def rows(n, first=0):
    """n good Handbook CSV rows, tx_id first, first + 1, ..."""
    return [f"{i},2018-04-01 {i // 3600 % 24:02d}:{i // 60 % 60:02d}:{i % 60:02d},{i % 97},{i % 13},{10 + i % 300}.5,0,0,0,0"
            for i in range(first, first + n)]


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_a_byte_that_is_not_utf8_is_a_bad_line_not_the_end_of_the_file(tmp_path, fmt):
    """A Latin-1 "café" used to stop the read where the decoder met it (no line, no summary)."""
    if fmt == "csv":
        lines = [HEADER.strip().encode(), *(r.encode() for r in rows(5))]
        lines[4] += b" caf\xe9"  # tx 3, in a column zfraud does not read
    else:
        lines = [json.dumps({"tx_id": i, "card": 1, "terminal": 2, "ts_ms": 1522540831000, "amount": 5.5}).encode()
                 for i in range(5)]
        lines[4] = lines[4][:-1] + b', "note": "caf\xe9"}'  # tx 4
    p = tmp_path / f"tx.{fmt}"
    p.write_bytes(b"\n".join(lines) + b"\n")
    reader = open_source(p, batch=2)
    ids = np.concatenate([c["tx_id"] for c in reader]).tolist()
    assert ids == ([0, 1, 2, 4] if fmt == "csv" else [0, 1, 2, 3])
    assert reader.errors == [(5, "not UTF-8 text (byte 0xe9): save the file as UTF-8")]


def test_read_labelled_names_the_line_of_a_byte_that_is_not_utf8(tmp_path):
    p = tmp_path / "tx.csv"
    p.write_bytes((HEADER + "\n".join(rows(3)) + "\n").encode().replace(b",0,0\n2,", b",0,\xe9\n2,"))
    errors = []
    assert read_labelled(p, errors)["tx_id"].tolist() == [0, 2]
    assert errors == [(3, "not UTF-8 text (byte 0xe9): save the file as UTF-8")]
    with pytest.raises(InputError) as e:
        read_labelled(p)
    assert str(e.value) == f"{p}, line 3: not UTF-8 text (byte 0xe9): save the file as UTF-8"


def send(mesh, path):
    r = run_cli("send", str(path), "--connect", mesh.endpoint, "--json")
    return r, json.loads(r.stdout.strip().splitlines()[-1]) if r.stdout.strip() else None


def test_send_reports_a_byte_that_is_not_utf8_and_sends_every_other_row(mesh2, tmp_path):
    p = tmp_path / "latin.csv"  # the bad byte far in: 2,000 rows were sent when it stopped the read
    p.write_bytes("\n".join([HEADER.strip(), *rows(2000)]).encode() + b" caf\xe9\n"
                  + "\n".join(rows(1000, 2000)).encode() + b"\n")
    r, s = send(mesh2, p)
    assert r.returncode == 3, r.stderr
    assert "input line 2001: not UTF-8 text (byte 0xe9): save the file as UTF-8" in r.stderr
    assert (s["sent"], s["verdicts"], s["errors"], s["lost"]) == (3000, 2999, 1, 0)


OPEN_QUOTE = "a quote opened on this line runs on over the lines after it ({}): the rest of the file is not read"


@pytest.mark.parametrize("after, why", [(10, "unexpected end of data"), (4000, "field larger than field limit (131072)")])
def test_an_unterminated_quote_is_reported_at_its_line_and_the_rows_before_it_are_kept(tmp_path, after, why):
    """The quote swallows the lines after it into one field: up to the csv module's field limit it
    used to pass for one short row (the rows it took silently gone), beyond it raise a traceback."""
    p = tmp_path / "tx.csv"
    p.write_text("\n".join([HEADER.strip(), *rows(3), '9,"2018-04-01 00:00:09,1,2,3.5,0,0,0,0', *rows(after, 10)]) + "\n")
    reader = open_source(p, batch=2)
    assert np.concatenate([c["tx_id"] for c in reader]).tolist() == [0, 1, 2]
    assert reader.errors == [(5, OPEN_QUOTE.format(why))]
    errors = []
    assert read_labelled(p, errors)["tx_id"].tolist() == [0, 1, 2] and errors == [(5, OPEN_QUOTE.format(why))]
    with pytest.raises(InputError) as e:
        read_labelled(p)
    assert str(e.value) == f"{p}, line 5: {OPEN_QUOTE.format(why)}"


def test_a_quote_that_does_not_split_is_a_bad_line(tmp_path):
    p = tmp_path / "tx.csv"
    p.write_text("\n".join([HEADER.strip(), *rows(2), '2,"2018-04-01 00:00:02"x,1,2,3.5,0,0,0,0', *rows(2, 3)]) + "\n")
    reader = open_source(p)
    assert np.concatenate([c["tx_id"] for c in reader]).tolist() == [0, 1, 3, 4]
    assert reader.errors == [(4, "cannot split the line into fields: ',' expected after '\"'")]


def test_send_scores_the_rows_before_an_unterminated_quote_and_says_where_it_stopped(mesh2, tmp_path):
    p = tmp_path / "quote.csv"
    p.write_text("\n".join([HEADER.strip(), *rows(99), '99,"2018-04-01 00:01:39,1,2,3.5,0,0,0,0', *rows(4000, 100)]) + "\n")
    r, s = send(mesh2, p)
    assert r.returncode == 3 and "Traceback" not in r.stderr, r.stderr
    assert f"input line 101: {OPEN_QUOTE.format('field larger than field limit (131072)')}" in r.stderr, r.stderr
    assert (s["sent"], s["verdicts"], s["errors"], s["lost"]) == (100, 99, 1, 0)


TS = "ts_ms must be epoch milliseconds or a date and time such as 2018-04-01 00:00:31"


@pytest.mark.parametrize("column, good, bad, message", [
    ("amount", [10.5, 7, "3.25", 10**30], [[1], {"a": 1}, True, None, "abc", 10**400], "amount must be a number"),
    ("ts_ms", [1522540831000, 1522540831000.0, "1522540831000", "2018-04-01 00:00:31"],
     [[1], {"a": 1}, True, None, "abc", 1.5, 1e300, 2**70], TS),
])
def test_a_json_value_of_the_wrong_type_is_refused_naming_its_column(tmp_path, column, good, bad, message):
    """numpy alone would read true as 1, null as NaN, wrap 1e300 to -2**63 ms, and for a list stop
    the whole send ("setting an array element with a sequence"), the good rows with it."""
    values = good + bad
    p = tmp_path / "tx.jsonl"
    p.write_text("".join(json.dumps({"tx_id": i, "card": 1, "terminal": 2, "ts_ms": 1522540831000, "amount": 10.5,
                                     column: v}) + "\n" for i, v in enumerate(values)))
    reader = open_source(p)
    (chunk,) = list(reader)
    assert chunk["tx_id"].tolist() == list(range(len(good)))
    want = [10.5, 7.0, 3.25, 1e30] if column == "amount" else [1522540831000] * 4
    assert chunk[column].tolist() == want
    assert reader.errors == [(len(good) + 1 + k, f"{message}, got {v!r}") for k, v in enumerate(bad)]


def test_send_scores_the_good_json_line_beside_one_with_a_list_for_an_amount(mesh2, tmp_path):
    p = tmp_path / "j2.jsonl"
    p.write_text('{"tx_id":1,"ts_ms":1522540831000,"card":1,"terminal":2,"amount":10.5}\n'
                 '{"tx_id":7,"ts_ms":1522540831000,"card":1,"terminal":2,"amount":[1]}\n')
    r, s = send(mesh2, p)
    assert r.returncode == 3, r.stderr
    assert "input line 2: amount must be a number, got [1]" in r.stderr, r.stderr
    assert (s["sent"], s["verdicts"], s["errors"], s["lost"]) == (2, 1, 1, 0)


JSONL_EXPECTED = ('JSON lines: one object per line, such as {"tx_id": 1, "ts_ms": "2018-04-01 00:00:31", "card": 7, '
                  '"terminal": 3, "amount": 12.5} (or the Handbook\'s field names)')
CSV_EXPECTED = ("a CSV file with the Handbook's header (TRANSACTION_ID, TX_DATETIME, CUSTOMER_ID, TERMINAL_ID, "
                "TX_AMOUNT, ...) and times as YYYY-MM-DD HH:MM:SS in UTC")


@pytest.mark.parametrize("name, text, sent, reason, expected", [
    ("array.json", json.dumps([{"tx_id": i, "ts_ms": 1522540831000, "card": 1, "terminal": 2, "amount": 5.5}
                               for i in range(3)], indent=2), 23, "(15 of 23 rows): Extra data", JSONL_EXPECTED),
    ("dates.csv", HEADER + "".join(f"{i},01/04/2018 10:00:0{i},1,2,5.5,0,0,0,0\n" for i in range(4)), 4,
     f"(4 of 4 rows): {TS}", CSV_EXPECTED),
], ids=["json-array", "day-first-dates"])
def test_send_says_in_one_line_that_no_row_was_scored_why_and_what_it_expects(mesh2, tmp_path, name, text, sent,
                                                                               reason, expected):
    """A JSON array instead of JSON lines, or day-first dates: every row rejected, which the
    summary alone (status 3, as when a few are) did not make plain."""
    p = tmp_path / name
    p.write_text(text)
    r, s = send(mesh2, p)
    assert r.returncode == 3, r.stderr
    assert (s["sent"], s["verdicts"], s["errors"], s["lost"]) == (sent, 0, sent, 0)
    assert r.stderr.splitlines()[-1] == f"no row was scored; the most common reason {reason}. Expected {expected}"


def test_send_says_in_one_line_that_no_row_was_scored_when_the_workers_rejected_every_one(mesh2, tmp_path):
    p = tmp_path / "negative.jsonl"  # read, but no amount is valid
    p.write_text("".join(json.dumps({"tx_id": i, "ts_ms": 1522540831000, "card": i, "terminal": 2, "amount": -5})
                         + "\n" for i in range(6)))
    r, s = send(mesh2, p)
    assert r.returncode == 3, r.stderr
    assert (s["sent"], s["verdicts"], s["errors"], s["lost"]) == (6, 0, 6, 0)
    assert r.stderr.splitlines()[-1] == ("no row was scored: the workers rejected all 6 they answered; the most "
                                         "common reason (6 of 6): amount is negative "
                                         "(--out FILE writes each verdict with its reason)")


def test_the_no_row_was_scored_count_covers_every_row_not_the_first_1000_kept(mesh2, tmp_path):
    """It counted the reason among the 1,000 errors kept for printing: "999 of 1,500"."""
    p = tmp_path / "many.csv"
    p.write_text("x,y\n" + "1,2\n" * 1500)
    r = run_cli("send", str(p), "--connect", mesh2.endpoint, "--format", "jsonl")
    assert r.returncode == 3, r.stderr
    assert "the most common reason (1,500 of 1,501 rows): Extra data." in r.stderr.splitlines()[-1], r.stderr


def test_send_names_the_workers_reasons_when_it_exits_3_for_their_rejections(mesh2, tmp_path):
    """Status 3 says to see the messages on stderr: there were none when the rows were read but a
    worker rejected some of them."""
    p = tmp_path / "some.jsonl"
    p.write_text("".join(json.dumps({"tx_id": i, "ts_ms": 1522540831000, "card": i, "terminal": 2,
                                     "amount": -5 if i < 2 else 5}) + "\n" for i in range(5)))
    r, s = send(mesh2, p)
    assert r.returncode == 3 and (s["verdicts"], s["errors"]) == (3, 2), r.stderr
    assert ("the workers rejected 2 of the records: amount is negative (2) (--out FILE writes each with its reason)"
            in r.stderr.splitlines()), r.stderr


def test_no_row_was_scored_names_the_workers_reason_when_it_is_the_most_common(mesh2, tmp_path):
    """200 unreadable amounts and 1,800 rows the workers rejected: the line named the 200."""
    p = tmp_path / "mixed.jsonl"
    p.write_text("".join(json.dumps({"tx_id": i, "ts_ms": 1522540831000, "card": i, "terminal": 2,
                                     "amount": "x" if i % 10 == 0 else -5}) + "\n" for i in range(2000)))
    r, s = send(mesh2, p)
    assert r.returncode == 3 and (s["sent"], s["verdicts"], s["errors"]) == (2000, 0, 2000), r.stderr
    assert r.stderr.splitlines()[-1] == ("no row was scored: the workers rejected all 1,800 they answered, and 200 "
                                         "rows could not be read; the most common reason (1,800 of 1,800): amount "
                                         "is negative (--out FILE writes each verdict with its reason)"), r.stderr


def test_a_timestamp_in_utc_with_a_z_is_read_without_a_warning(tmp_path):
    """numpy parses "...Z" but warns of any time zone, even UTC's, with a line of our source."""
    p = tmp_path / "tx.jsonl"
    p.write_text("".join(json.dumps({"tx_id": i, "card": 1, "terminal": 2, "ts_ms": ts, "amount": 5.5}) + "\n"
                         for i, ts in enumerate(["2018-04-01T00:00:31Z", "2018-04-01 00:00:32Z", "2018-04-01T00:00:33"])))
    reader = open_source(p)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (chunk,) = list(reader)
    assert chunk["ts_ms"].tolist() == [1522540831000, 1522540832000, 1522540833000] and reader.errors == []


def test_a_timestamp_with_an_offset_is_converted_to_utc_without_a_warning(tmp_path):
    """numpy parses +02:00 but warns that it is deprecated (a UserWarning naming our source)."""
    times = ["2018-04-01T10:00:00+02:00", "2018-04-01 10:00:00+0200", "2018-04-01T10:00:00.250-05:30",
             "2018-04-01T10:00:00+02", "2018-04-01T00:30:00-00:00", "2018-04-01T10:00:00+24:00",
             "2018-04-01T10:00:00+02:60", "2018-04-01T10:00:00+2:00", "2018-04-01T10:00:00+02:"]
    p = tmp_path / "tx.csv"
    p.write_text(HEADER + "".join(f"{i},{t},1,2,5.5,0,0,0,0\n" for i, t in enumerate(times)))
    reader = open_source(p)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (chunk,) = list(reader)
    assert chunk["tx_id"].tolist() == [0, 1, 2, 3, 4]
    assert chunk["ts_ms"].tolist() == [1522569600000, 1522569600000, 1522596600250, 1522569600000, 1522542600000]
    assert reader.errors == [(7 + k, f"{TS}, got {t!r}") for k, t in enumerate(times[5:])]
    errors = []  # train, backtest and label read the same file the same way
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        d = read_labelled(p, errors)
    assert d["tx_id"].tolist() == [4, 0, 1, 3, 2]  # sorted by event time, in UTC
    assert d["ts_ms"].tolist() == [1522542600000, 1522569600000, 1522569600000, 1522569600000, 1522596600250]
    assert [line for line, _ in errors] == [7, 8, 9, 10]


ZONES = ["2018-04-01 00:00:01 UTC", "2018-04-01 00:00:02 CET", "2018-04-01T00:00:03 +02:00", "2018-04-01 00:00:04 Z"]


def read_both(p):
    """The file through send's reader and the labelled reader, with the warnings either gave:
    (send's one chunk, its reader, the labelled columns, their (line, message) errors, warnings)."""
    errors = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reader = open_source(p)
        (chunk,) = list(reader)
        d = read_labelled(p, errors)
    return chunk, reader, d, errors, caught


def test_a_time_zone_name_is_that_rows_error_without_a_warning(tmp_path):
    """numpy warns of a zone it cannot read (a UserWarning with a line of our source on stderr)
    before failing; the labelled reader let that warning out as a traceback."""
    p = tmp_path / "tx.csv"
    p.write_text(HEADER + "".join(f"{i},{t},1,2,5.5,0,0,0,0\n" for i, t in enumerate(["2018-04-01 00:00:00", *ZONES])))
    chunk, reader, d, errors, caught = read_both(p)
    assert caught == []
    assert chunk["tx_id"].tolist() == [0] and reader.errors == [(3 + k, f"{TS}, got {t!r}") for k, t in enumerate(ZONES)]
    assert d["tx_id"].tolist() == [0] and [line for line, _ in errors] == [3, 4, 5, 6]
    assert errors[0][1].startswith("TX_DATETIME '2018-04-01 00:00:01 UTC' is not a date and time")


def test_send_reports_a_time_zone_name_at_its_line_and_nothing_else(mesh2, tmp_path):
    p = tmp_path / "utc.csv"
    p.write_text(HEADER + f"1,{ZONES[0]},1,2,5.5,0,0,0,0\n2,2018-04-01 00:00:02,1,2,5.5,0,0,0,0\n")
    r, s = send(mesh2, p)
    assert r.returncode == 3 and (s["sent"], s["verdicts"], s["errors"]) == (2, 1, 1), r.stderr
    assert r.stderr.splitlines()[0] == f"input line 2: {TS}, got {ZONES[0]!r}", r.stderr  # then the summary
    assert "Warning" not in r.stderr and "sources.py" not in r.stderr, r.stderr


def test_a_time_with_spaces_around_it_is_read_without_a_warning(tmp_path):
    """numpy reads " 1522540831000" as the year 1522540831000 (garbage ms, that the workers then
    reject with no line), and a space after a date as a time zone (a warning)."""
    times = [" 1522540831000", "1522540832000 ", " 2018-04-01 00:00:33", "2018-04-01 00:00:34 ", " 2018-04-01T00:00:35Z "]
    p = tmp_path / "tx.csv"
    p.write_text("TRANSACTION_ID,TX_DATETIME,CUSTOMER_ID,TERMINAL_ID,TX_AMOUNT,TX_FRAUD\n"
                 + "".join(f"{i},{t},1,2,5.5,0\n" for i, t in enumerate(times)))
    chunk, reader, d, errors, caught = read_both(p)
    want = [1522540831000, 1522540832000, 1522540833000, 1522540834000, 1522540835000]
    assert chunk["ts_ms"].tolist() == want and reader.errors == [] and caught == []
    assert d["ts_ms"].tolist() == want and errors == []  # train reads times as send does


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_an_empty_line_is_skipped_by_train_backtest_and_label_as_by_send(tmp_path, newline):
    """send skipped an empty line, but the labelled reader took it for a row of 0 fields: `train`
    and `backtest` refused the whole file ("expected 6 fields, got 0") for a trailing empty line,
    and `zfraud label` exited 3 for it."""
    lines = ["TRANSACTION_ID,TX_DATETIME,CUSTOMER_ID,TERMINAL_ID,TX_AMOUNT,TX_FRAUD",
             "1,2018-04-01 00:00:01,1,2,10.0,0", "", "2,2018-04-02 00:00:01,1,2,10.0,1",
             "3,2018-04-02 00:00:02,x,2,10.0,0", "4,2018-04-02 00:00:03,1,2,10.0,0", ""]
    p = tmp_path / "blank.csv"
    p.write_bytes((newline.join(lines) + newline).encode())
    chunk, reader, d, errors, caught = read_both(p)
    assert chunk["tx_id"].tolist() == [1, 2, 4] and reader.errors == [(5, "card must be a whole number from 0 to "
                                                                           "2**64 - 1, got 'x'")] and caught == []
    assert d["tx_id"].tolist() == [1, 2, 4] and errors == [(5, "CUSTOMER_ID 'x' is not a whole number from 0 to "
                                                              "2**64 - 1")]
    del lines[4]  # without the bad row, train and backtest read the file (they stop at a bad row)
    p.write_bytes((newline.join(lines) + newline).encode())
    assert read_labelled(p)["tx_id"].tolist() == [1, 2, 4]


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_now_and_today_are_not_times(tmp_path, fmt):
    """numpy reads "now" and "today" as the clock's time and date (and "NaT" as -2**63 ms)."""
    times = ["2018-04-01 00:00:31", "now", "today", "NOW", "Today", "NaT", "2018-04-01 00:00:32"]
    p = tmp_path / f"tx.{fmt}"
    if fmt == "csv":
        p.write_text(HEADER + "".join(f"{i},{t},1,2,5.5,0,0,0,0\n" for i, t in enumerate(times)))
    else:
        p.write_text("".join(json.dumps({"tx_id": i, "card": 1, "terminal": 2, "ts_ms": t, "amount": 5.5}) + "\n"
                             for i, t in enumerate(times)))
    reader = open_source(p)
    (chunk,) = list(reader)
    assert chunk["tx_id"].tolist() == [0, 6] and chunk["ts_ms"].tolist() == [1522540831000, 1522540832000]
    first = 3 if fmt == "csv" else 2
    assert reader.errors == [(first + k, f"{TS}, got {t!r}") for k, t in enumerate(times[1:6])]


def test_send_reports_an_empty_time_at_its_line_and_scores_the_rows_around_it(mesh2, tmp_path):
    """numpy reads an empty time as NaT (-2**63 ms): the worker rejected it, with no line to find it by."""
    lines = rows(5)
    lines[2] = "2,,1,2,5.5,0,0,0,0"
    p = tmp_path / "empty.csv"
    p.write_text("\n".join([HEADER.strip(), *lines]) + "\n")
    r, s = send(mesh2, p)
    assert r.returncode == 3, r.stderr
    assert f"input line 4: {TS}, got ''" in r.stderr.splitlines(), r.stderr
    assert (s["sent"], s["verdicts"], s["errors"], s["lost"]) == (5, 4, 1, 0)


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_send_lists_the_input_errors_in_line_order(mesh2, tmp_path, fmt):
    """A line that cannot be split (or parsed) is found as it is read, a bad value when its batch
    is converted: the first used to be listed before the second however late it came."""
    p = tmp_path / f"order.{fmt}"
    if fmt == "csv":
        lines = [HEADER.strip(), *rows(6)]
        lines[2], lines[5] = "1,2018-04-01 00:00:01,1,2,abc,0,0,0,0", "4,2018"  # a bad amount, then a short row
        want = ["input line 3: amount must be a number, got 'abc'", "input line 6: expected at least 5 fields, got 2"]
    else:
        lines = [json.dumps({"tx_id": i, "card": 1, "terminal": 2, "ts_ms": 1522540831000, "amount": 5.5})
                 for i in range(6)]
        lines[1], lines[4] = lines[1].replace("5.5", '"abc"'), "{broken"
        want = ["input line 2: amount must be a number, got 'abc'",
                "input line 5: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"]
    p.write_text("\n".join(lines) + "\n")
    r, s = send(mesh2, p)
    assert r.returncode == 3, r.stderr
    assert [line for line in r.stderr.splitlines() if line.startswith("input line")] == want
    assert (s["sent"], s["verdicts"], s["errors"]) == (6, 4, 2)


def test_a_json_line_nested_too_deeply_is_that_lines_error(tmp_path):
    """json's parser recurses once per level: 200,000 '[' raised RecursionError out of the reader."""
    good = '{"tx_id":1,"ts_ms":1522540831000,"card":1,"terminal":2,"amount":10.5}\n'
    p = tmp_path / "deep.jsonl"
    p.write_text(good + "[" * 200_000 + "\n" + good.replace('"tx_id":1', '"tx_id":3'))
    reader = open_source(p)
    (chunk,) = list(reader)
    assert chunk["tx_id"].tolist() == [1, 3] and reader.errors == [(2, "JSON nested too deeply")]


def test_send_refuses_a_file_and_synthetic_together():
    r = run_cli("send", "tx.csv", "--synthetic", "10", "--connect", "tcp://127.0.0.1:9")
    assert r.returncode == 2 and "give a FILE or --synthetic N, not both (FILE tx.csv would not be read)" in r.stderr


def test_the_summary_has_no_latency_to_show_when_nothing_was_answered(mesh2, tmp_path):
    """Rows that all fail at the client reach no worker: 0.00 ms would read as an instant answer."""
    p = tmp_path / "dates.csv"
    p.write_text(HEADER + "".join(f"{i},01/04/2018 10:00:0{i},1,2,5.5,0,0,0,0\n" for i in range(4)))
    r = run_cli("send", str(p), "--connect", mesh2.endpoint, timeout=60)
    assert r.returncode == 3, r.stderr
    assert "latency p50 / p99 / p99.9        none: no transaction was answered" in r.stdout.splitlines(), r.stdout
    p.write_text(HEADER + "0,2018-04-01 10:00:00,1,2,5.5,0,0,0,0\n1,2018-04-01 10:00:01,1,2,-5,0,0,0,0\n")
    r = run_cli("send", str(p), "--connect", mesh2.endpoint, timeout=60)  # one scored, one rejected by its worker
    assert r.returncode == 3 and re.search(r"^latency p50 / p99 / p99\.9 +\d+\.\d\d / \d+\.\d\d / \d+\.\d\d ms$",
                                           r.stdout, re.M), r.stdout


def test_a_negative_epoch_among_date_strings_is_read_as_it_would_be_alone():
    """A column of date strings and the number -1: -1 went through the strings' path as "-1", was
    no date, and the whole column failed although each value alone passed."""
    assert parse_ts_ms(["2026-11-01 00:00:31", -1, "1522540831000", 5]).tolist() == [
        1793491231000, -1, 1522540831000, 5]
    with pytest.raises(ValueError, match="ts_ms must be epoch milliseconds"):
        parse_ts_ms(["2026-11-01 00:00:31", -1, "now"])


def test_a_json_lines_file_of_date_strings_and_a_negative_epoch_is_read_row_by_row(tmp_path):
    p = tmp_path / "neg.jsonl"
    p.write_text("".join(json.dumps({"tx_id": i, "card": 1, "terminal": 2, "ts_ms": t, "amount": 10.0}) + "\n"
                         for i, t in enumerate(["2026-11-01 00:00:31", "2026-11-01 00:01:31", -1], 1)))
    reader = open_source(p)
    (chunk,) = list(reader)
    assert chunk["tx_id"].tolist() == [1, 2, 3] and chunk["ts_ms"].tolist() == [1793491231000, 1793491291000, -1]
    assert reader.errors == []


def test_records_that_convert_alone_but_not_together_do_not_stop_the_input(tmp_path, monkeypatch):
    """Whatever a parser gets wrong about a mix of values, the rows are read (each on its own),
    not the whole input stopped with 'ts_ms must be ...' and no line number."""
    import zfraud.sources as S

    real = S.parse_ts_ms

    def mixed_fails(values):
        if len({type(v) for v in values}) > 1:
            raise ValueError("ts_ms must be epoch milliseconds or a date and time such as 2018-04-01 00:00:31")
        return real(values)

    monkeypatch.setattr(S, "parse_ts_ms", mixed_fails)
    p = tmp_path / "mix.jsonl"
    p.write_text("".join(json.dumps({"tx_id": i, "card": 1, "terminal": 2, "ts_ms": t, "amount": 1.0}) + "\n"
                         for i, t in enumerate(["2026-11-01 00:00:31", 5, "x"], 1)))
    reader = open_source(p)
    (chunk,) = list(reader)
    assert chunk["tx_id"].tolist() == [1, 2] and chunk["ts_ms"].tolist() == [1793491231000, 5]
    assert [line for line, _ in reader.errors] == [3]


def test_send_scores_date_strings_beside_a_negative_epoch_and_the_worker_rejects_it(mesh2, tmp_path):
    p = tmp_path / "neg.jsonl"
    p.write_text("".join(json.dumps({"tx_id": i, "card": 1, "terminal": 2, "ts_ms": t, "amount": 10.0}) + "\n"
                         for i, t in enumerate(["2026-11-01 00:00:31", "2026-11-01 00:01:31", -1], 1)))
    r, s = send(mesh2, p)
    assert r.returncode == 3 and (s["sent"], s["verdicts"], s["errors"]) == (3, 2, 1), r.stderr
    assert "ts_ms is outside 2000..2200" in r.stderr and "Error:" not in r.stderr, r.stderr


LONG_LINE = "the line is longer than 1 MiB (1,048,576 characters)"
MIB = 1 << 20


def _with_long_lines(fmt: str, big: int) -> tuple[str, list]:
    """An input of 5 good rows (tx_id 0-4) and two lines of `big` characters between them, and
    the lines of those two: one a single number or array, one with a quote open over its whole length."""
    if fmt == "csv":
        good = rows(5)
        lines = [HEADER.strip(), *good[:2], "5,2018-04-01 00:00:05,1,2," + "1" * big, *good[2:4],
                 '6,"' + "z" * big + '",1,2,3.5,0,0,0,0', good[4]]
        return "\n".join(lines) + "\n", [4, 7]
    good = [json.dumps({"tx_id": i, "ts_ms": "2018-04-01 00:00:31", "card": 7, "terminal": 3, "amount": 1.5})
            for i in range(5)]
    lines = [*good[:2], "[" + "1," * (big // 2) + "1]", *good[2:4], '{"tx_id": "' + "z" * big + '"}', good[4]]
    return "\n".join(lines) + "\n", [3, 6]


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
@pytest.mark.parametrize("live", [False, True], ids=["file", "fifo"])
def test_a_line_longer_than_1_mib_is_that_lines_error_and_the_rows_around_it_are_read(tmp_path, fmt, live):
    """A line was read whole before it was judged, so `send` took memory in proportion to the
    longest line (a 191 MB one-line JSON array: 965 MB; /dev/zero: without end). A line is read
    1 MiB at a time now: a longer one is its line's error, the rest of it read and dropped, and
    the next line is read as usual; from a file, and from a live input (a FIFO) alike."""
    import os
    import threading
    import time

    text, long_at = _with_long_lines(fmt, 3 * MIB)
    p = tmp_path / f"tx.{fmt}"
    if live:
        os.mkfifo(p)
        writer = threading.Thread(target=p.write_text, args=(text,), daemon=True)
        writer.start()
    else:
        p.write_text(text)
    reader = open_source(p, batch=2, fmt=fmt)
    ids, end = [], time.monotonic() + 60
    for chunk in reader:
        ids += chunk["tx_id"].tolist()
        if time.monotonic() > end:
            break
    assert ids == [0, 1, 2, 3, 4]
    assert reader.errors == [(n, LONG_LINE) for n in long_at]
    if fmt == "csv" and not live:  # train, backtest (which stop there) and label (which skips it) read it alike
        errors = []
        assert read_labelled(p, errors)["tx_id"].tolist() == [0, 1, 2, 3, 4]
        assert errors == [(n, LONG_LINE) for n in long_at]
        with pytest.raises(InputError, match=f"line 4: {re.escape(LONG_LINE)}$"):
            read_labelled(p)


def test_a_long_line_inside_a_quoted_field_stops_the_read_as_an_open_quote_does(tmp_path):
    p = tmp_path / "tx.csv"
    p.write_text("\n".join([HEADER.strip(), *rows(2), '2,"2018-04-01', "x" * (2 * MIB), '",1,2,3.5,0,0,0,0',
                            *rows(2, 3)]) + "\n")
    reader = open_source(p)
    assert np.concatenate([c["tx_id"] for c in reader]).tolist() == [0, 1]
    assert reader.errors == [(4, OPEN_QUOTE.format(LONG_LINE))]


def test_a_first_line_longer_than_1_mib_is_no_csv_header(tmp_path):
    p = tmp_path / "tx.csv"
    p.write_text("x" * (MIB + 1) + "\n" + "\n".join(rows(2)) + "\n")
    with pytest.raises(InputError) as e:
        list(open_source(p))
    assert str(e.value) == f"{p}, line 1: {LONG_LINE}"


def test_send_scores_the_rows_around_a_100_mb_line_in_bounded_memory(mesh2, tmp_path):
    """README: `send` runs in bounded memory on any input. The line is reported with its number,
    the rows around it are scored, and the peak memory stays that of a send of two rows."""
    import subprocess
    import sys

    p = tmp_path / "tx.jsonl"
    good = [json.dumps({"tx_id": i, "ts_ms": "2018-04-01 00:00:31", "card": 7, "terminal": 3, "amount": 1.5})
            for i in range(2)]
    with open(p, "w") as f:
        f.write(good[0] + "\n[")
        for _ in range(50):
            f.write("1," * (1 << 20))
        f.write("1]\n" + good[1] + "\n")
    # the peak of this process image (VmHWM: ru_maxrss would count the forking pytest's size too)
    peak = ("import re, runpy, sys\nsys.argv[0] = 'zfraud'\ntry:\n    runpy.run_module('zfraud', run_name='__main__')\n"
            "finally:\n    print('peak', re.search(r'VmHWM:\\s*(\\d+)', open('/proc/self/status').read())[1], file=sys.stderr)\n")
    r = subprocess.run([sys.executable, "-c", peak, "send", str(p), "--connect", mesh2.endpoint, "--json"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 3, r.stderr
    assert f"input line 2: {LONG_LINE}" in r.stderr.splitlines()
    s = json.loads(r.stdout.strip().splitlines()[-1])
    assert (s["sent"], s["verdicts"], s["errors"], s["lost"]) == (3, 2, 1, 0)
    peak_kb = int(r.stderr.strip().splitlines()[-1].split()[-1])
    assert peak_kb < 150_000, f"{peak_kb} kB for a file of {p.stat().st_size:,} bytes"


def test_lines_are_a_text_files_lines_whatever_the_chunks(monkeypatch):
    """sources.lines reads CHUNK bytes at a time and splits them in bulk: a line, a \\r\\n, a
    UTF-8 character or a line longer than MAX_LINE cut by a chunk's end comes out as a text file
    opened with newline="" gives it (a long line as LONG); characters str.splitlines would also
    break at (\\x1c, \\u2028, ...) do not end a line."""
    import io
    import random

    from zfraud import sources

    monkeypatch.setattr(sources, "MAX_LINE", 5)
    rng = random.Random(0)
    pieces = ["a", "bb", "aaaa", "\r", "\n", "\r\n", "\x1c", "\u2028", "\x85", "é", "\ufeff"]
    for chunk in (1, 2, 3, 7, 64):
        monkeypatch.setattr(sources, "CHUNK", chunk)
        for _ in range(500):
            data = "".join(rng.choice(pieces) for _ in range(rng.randrange(30))).encode() + rng.choice([b"", b"\xff"])
            text = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8-sig", errors="surrogateescape", newline="")
            want = [sources.LONG if len(line.rstrip("\r\n")) > 5 else line for line in text]
            assert list(sources.lines(io.BytesIO(data))) == want, (chunk, data)


def test_a_crlf_line_of_exactly_1_mib_is_one_line(tmp_path):
    """Read 1 MiB + 1 characters at a time, a line of exactly 1 MiB ending in \\r\\n was split
    between its \\r and its \\n: every line number after it was one too many."""
    good = [json.dumps({"tx_id": i, "ts_ms": "2018-04-01 00:00:31", "card": 7, "terminal": 3, "amount": 1.5})
            for i in (1, 2)]
    p = tmp_path / "tx.jsonl"
    p.write_bytes("\r\n".join([good[0].ljust(MIB), "{broken", good[1], ""]).encode())
    reader = open_source(p)
    assert [c["tx_id"].tolist() for c in reader] == [[1, 2]]
    assert reader.errors == [(2, "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)")]


def test_a_batch_of_bad_rows_costs_a_parse_per_column_not_a_conversion_per_row(tmp_path, monkeypatch):
    """Bad rows were found by converting records whole, halving, then one by one, twice for
    each bad one: 200,000 rows with a bad amount took 15.7 s through `send`, good ones 0.9 s.
    Columns are parsed each on its own now, and only a column that fails is searched: the
    times of a batch whose every amount is bad are parsed once. Every row still gets its own
    error, and the good rows beside bad ones are read."""
    import zfraud.sources as S

    calls = []
    real = S.parse_ts_ms
    monkeypatch.setattr(S, "parse_ts_ms", lambda values: calls.append(len(values)) or real(values))
    amounts = ["n/a", "", "1,5", "x"] * 250 + ["7.5"]
    p = tmp_path / "bad.csv"
    p.write_text(HEADER + "".join(f"{i},2018-04-01 00:00:{i % 60:02d},{i % 7},3,{a},0,0,0,0\n"
                                  if "," not in a else f'{i},2018-04-01 00:00:{i % 60:02d},{i % 7},3,"{a}",0,0,0,0\n'
                                  for i, a in enumerate(amounts)))
    reader = open_source(p, batch=2000)
    (chunk,) = list(reader)
    assert calls == [1001]
    assert chunk["tx_id"].tolist() == [1000] and chunk["amount"].tolist() == [7.5]
    assert reader.error_count == 1000 and len(reader.errors) == 1000
    assert reader.errors[:4] == [(2, "amount must be a number, got 'n/a'"), (3, "amount must be a number, got ''"),
                                 (4, "amount must be a number, got '1,5'"), (5, "amount must be a number, got 'x'")]
    assert reader.reasons == {"amount must be a number": 1000}


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_numbers_are_digits_not_what_python_int_and_float_take(tmp_path, fmt):
    """int() and float() take 1_000, +7 and the digits of other scripts (٣, ５): an id of '1_000'
    was card 1000, '+7' card 7. An id is the digits 0-9; an amount may have a + (CSV writers
    put one), not a _ or other digits. A JSON string is read as a CSV field is."""
    cards = ["5", "1_000", "+7", "٣", " 8 "]
    amounts = ["1.5", "1_000", "+2.5", "５", "-1"]
    cols = list(zip(cards + ["6"] * 5, ["1.0"] * 5 + amounts))
    if fmt == "csv":
        text = HEADER + "".join(f"{i},2018-04-01 00:00:31,{c},3,{a},0,0,0,0\n" for i, (c, a) in enumerate(cols))
    else:
        text = "".join(json.dumps({"tx_id": i, "ts_ms": "2018-04-01 00:00:31", "card": c, "terminal": 3, "amount": a})
                       + "\n" for i, (c, a) in enumerate(cols))
    p = tmp_path / f"tx.{fmt}"
    p.write_text(text)
    reader = open_source(p)
    (chunk,) = list(reader)
    assert chunk["tx_id"].tolist() == [0, 4, 5, 7, 9]
    assert chunk["card"].tolist() == [5, 8, 6, 6, 6] and chunk["amount"].tolist() == [1.0, 1.0, 1.5, 2.5, -1.0]
    first = 2 if fmt == "csv" else 1
    whole = "card must be a whole number from 0 to 2**64 - 1, got "
    assert reader.errors == [(first + 1, whole + "'1_000' (_ is no digit separator here)"),
                             (first + 2, whole + "'+7' (no sign)"),
                             (first + 3, whole + "'٣' (only the digits 0-9)"),
                             (first + 6, "amount must be a number, got '1_000' (_ is no digit separator here)"),
                             (first + 8, "amount must be a number, got '５' (only the digits 0-9)")]


def test_train_reads_numbers_as_send_does(tmp_path):
    p = tmp_path / "l.csv"
    p.write_text("TRANSACTION_ID,TX_DATETIME,CUSTOMER_ID,TERMINAL_ID,TX_AMOUNT,TX_FRAUD\n"
                 "1,2018-04-01 00:00:01,1,2,+10.5,0\n2,2018-04-01 00:00:02,1_0,2,10.0,0\n3,2018-04-01 00:00:03,1,2,1_0,0\n")
    errors = []
    assert read_labelled(p, errors)["amount"].tolist() == [10.5]
    assert errors == [(3, "CUSTOMER_ID '1_0' is not a whole number from 0 to 2**64 - 1"),
                      (4, "TX_AMOUNT '1_0' is not a number from 0 to 1e+12")]


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "labelled"])
def test_a_line_of_white_space_is_no_row_in_either_format(tmp_path, fmt):
    """JSON lines skipped a line of white space; CSV counted it as a row of one field, an error
    ("expected at least 5 fields, got 1"), and train refused the file for it."""
    blank = ["   ", "\t", " \t \r"]
    if fmt == "jsonl":
        good = [json.dumps({"tx_id": i, "ts_ms": 1522540831000, "card": 1, "terminal": 2, "amount": 1.0}) for i in (1, 2)]
        text = "\n".join([good[0], *blank, good[1], "x"]) + "\n"
    else:
        good = ["1,2018-04-01 00:00:01,1,2,10.0,0", "2,2018-04-01 00:00:02,1,2,10.0,0"]
        text = "\n".join(["TRANSACTION_ID,TX_DATETIME,CUSTOMER_ID,TERMINAL_ID,TX_AMOUNT,TX_FRAUD", good[0], *blank,
                          good[1], "x"]) + "\n"
    p = tmp_path / ("tx.jsonl" if fmt == "jsonl" else "tx.csv")
    p.write_text(text)
    if fmt == "labelled":
        errors = []
        assert read_labelled(p, errors)["tx_id"].tolist() == [1, 2]
        assert errors == [(7, "expected 6 fields, got 1")]
        return
    reader = open_source(p)
    assert [c["tx_id"].tolist() for c in reader] == [[1, 2]]
    assert [line for line, _ in reader.errors] == ([6] if fmt == "jsonl" else [7]) and reader.error_count == 1
