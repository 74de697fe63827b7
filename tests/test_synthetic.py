"""The synthetic generator's promises: event-time order across batches, and rows that do not depend
on the batch size (`send --synthetic --batch 500` and `--batch 1000` send the same transactions)."""
import numpy as np
import pytest

from zfraud.synthetic import DAY_MS, START_MS, TX_PER_DAY, synthetic

N = 7 * TX_PER_DAY + 123  # a week and a part of a day


def joined(n, batch, **kw):
    chunks = list(synthetic(n, batch=batch, **kw))
    assert [len(c["tx_id"]) for c in chunks] == [batch] * (n // batch) + ([n % batch] if n % batch else [])
    return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}


@pytest.mark.parametrize("batch", [1, 7, 1000])
def test_rows_are_in_event_time_order_across_batches(batch):
    """Each batch used to draw its own times within the day and sort only those: the next batch of
    the same day went back to the morning (a reviewer counted 19 steps back, up to 24 h, in one run)."""
    rows = joined(N, batch, seed=3, first_id=10**9)
    ts = rows["ts_ms"]
    assert (np.diff(ts) >= 0).all()
    day = (ts - START_MS) // DAY_MS
    np.testing.assert_array_equal(day, np.arange(N) // TX_PER_DAY)  # 9 500 a day, each day whole
    np.testing.assert_array_equal(rows["tx_id"], 10**9 + np.arange(N, dtype=np.uint64))


def test_the_rows_do_not_depend_on_the_batch_size():
    ref = joined(N, 65536, seed=5, first_id=7)
    for batch in (1, 7, 1000):
        rows = joined(N, batch, seed=5, first_id=7)
        assert rows.keys() == ref.keys()
        for k in ref:
            assert rows[k].dtype == ref[k].dtype, (batch, k)
            np.testing.assert_array_equal(rows[k], ref[k], err_msg=f"batch {batch}, column {k}")


def test_more_days_than_one_batch_holds_do_not_depend_on_the_batch_size():
    n = 65536 + 9000  # two batches of 65 536, the first cut across the end of day 6
    ref = joined(n, 65536, seed=1)
    rows = joined(n, 7, seed=1)
    assert all(np.array_equal(rows[k], ref[k]) for k in ref)
    assert (np.diff(ref["ts_ms"]) >= 0).all()


@pytest.mark.parametrize("batch", [0, -5])
def test_a_batch_under_one_row_is_refused_not_looped_on_forever(batch):
    with pytest.raises(ValueError, match="at least 1 row"):
        next(synthetic(10, batch=batch))
