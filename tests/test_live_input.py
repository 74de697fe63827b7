"""A live input (standard input, a pipe): its records are yielded as they come, within a short
linger, not once a whole batch has come, and an empty chunk while it is idle."""
import os
import sys
import threading
import time

import pytest

from zfraud.sources import open_source

HEADER = "TRANSACTION_ID,TX_DATETIME,CUSTOMER_ID,TERMINAL_ID,TX_AMOUNT\n"


def row(i: int) -> str:
    return f"{i},2018-04-01 00:00:{i % 60:02d},{i % 7},{i % 5},{10 + i}.5\n"


@pytest.fixture
def pipe_stdin(monkeypatch):
    """Standard input a pipe; returns its write end's descriptor, closed at the latest after 10 s
    (a reader that waited for the end of the input then ends, and the test fails instead of hanging)."""
    r, w = os.pipe()
    monkeypatch.setattr(sys, "stdin", open(r, encoding="utf-8"))
    closed, lock = [], threading.Lock()

    def close():
        with lock:
            if not closed:
                closed.append(True)
                os.close(w)

    timer = threading.Timer(10, close)
    timer.start()
    yield w, close
    timer.cancel()
    close()
    sys.stdin.close()


def test_a_pipe_yields_its_records_within_the_linger_and_an_empty_chunk_while_idle(pipe_stdin):
    w, close = pipe_stdin
    reader = open_source("-", batch=1024, fmt="csv")
    reader.linger_s = 0.02
    os.write(w, (HEADER + row(0)).encode())
    chunks = iter(reader)
    t0 = time.monotonic()
    first = next(chunks)  # one record, not a batch of 1024: it comes after the linger
    assert first["tx_id"].tolist() == [0] and time.monotonic() - t0 < 2
    t0 = time.monotonic()
    tick = next(chunks)  # the input is idle: an empty chunk, the caller's turn to poll
    assert len(tick["tx_id"]) == 0 and set(tick) == set(first)
    assert 0.05 < time.monotonic() - t0 < 2  # after a tick, 0.1 s
    os.write(w, (row(1) + row(2) + "3,2018\n").encode())  # and a short row, reported as it is read
    t0 = time.monotonic()
    got = []
    while not got and time.monotonic() - t0 < 2:
        got = next(chunks)["tx_id"].tolist()
    assert got == [1, 2] and reader.errors == [(5, "expected at least 5 fields, got 2")]
    close()
    assert [c["tx_id"].tolist() for c in chunks if len(c["tx_id"])] == []  # the end: nothing more


def test_a_full_batch_goes_at_once_and_the_end_of_the_input_flushes_the_rest(pipe_stdin):
    w, close = pipe_stdin
    reader = open_source("-", batch=4, fmt="csv")
    reader.linger_s = 5  # too long to matter here
    os.write(w, (HEADER + "".join(row(i) for i in range(10))).encode())
    chunks = iter(reader)
    t0 = time.monotonic()
    assert [next(chunks)["tx_id"].tolist() for _ in range(2)] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert time.monotonic() - t0 < 2
    close()
    assert [c["tx_id"].tolist() for c in chunks if len(c["tx_id"])] == [[8, 9]]
    assert time.monotonic() - t0 < 4


def test_closing_a_live_input_stops_its_thread_while_the_writer_is_idle(pipe_stdin):
    w, close = pipe_stdin
    chunks = iter(open_source("-", fmt="csv"))
    os.write(w, HEADER.encode())
    assert len(next(chunks)["tx_id"]) == 0
    assert any(t.name == "zfraud-input" for t in threading.enumerate())
    chunks.close()
    assert not any(t.name == "zfraud-input" for t in threading.enumerate())
