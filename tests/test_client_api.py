"""The Python client API: a failed call leaves the client clean, arguments are checked up front,
a closed client says so. Against real workers (the mesh2 fixture)."""
import numpy as np
import pytest

from zfraud import protocol as P


# -- 3. ranges of integer columns ------------------------------------------------------------------
def _labels(**change):
    cols = {"tx_id": [1, 2], "card": [3, 4], "terminal": [5, 6], "ts_ms": [7, 8], "amount": [1.0, 2.0],
            "fraud": [1, 0]}
    return {**cols, **change}


@pytest.mark.parametrize("change, message", [
    ({"fraud": [1, 256]}, "labels: column fraud must hold whole numbers in [0, 255]; row 1 is 256"),
    ({"fraud": np.array([0, -1], np.int8)}, "labels: column fraud must hold whole numbers >= 0; row 1 is -1"),
    ({"fraud": [0.0, 255.5]}, "labels: column fraud must hold whole numbers >= 0; row 1 is 255.5"),
    ({"fraud": [256.0, 0.5]}, "labels: column fraud must hold whole numbers in [0, 255]; row 0 is 256.0"),
    ({"fraud": np.array([300, -1], np.int16)}, "labels: column fraud must hold whole numbers in [0, 255]; row 0 is 300"),
    ({"card": np.array([2**64 + 10.0, 3e19])},
     "labels: column card must hold whole numbers in [0, 18446744073709551615]; row 0 is 1.8446744073709552e+19"),
    ({"card": np.array([5.0, 2.0**64])},
     "labels: column card must hold whole numbers in [0, 18446744073709551615]; row 1 is 1.8446744073709552e+19"),
    ({"tx_id": [1, 2**64]},
     "labels: column tx_id must hold whole numbers in [0, 18446744073709551615]; row 1 is 18446744073709551616"),
    ({"tx_id": [2**63 + 1, -1]}, "labels: column tx_id must hold whole numbers >= 0; row 1 is -1"),
    ({"ts_ms": [-1, 2**63]},
     "labels: column ts_ms must hold whole numbers in [-9223372036854775808, 9223372036854775807]; "
     "row 1 is 9223372036854775808"),
    ({"ts_ms": np.array([0, 2**63 + 5], np.uint64)},
     "labels: column ts_ms must hold whole numbers in [-9223372036854775808, 9223372036854775807]; "
     "row 1 is 9223372036854775813"),
    ({"ts_ms": np.array([0, 2.0**63])},
     "labels: column ts_ms must hold whole numbers in [-9223372036854775808, 9223372036854775807]; "
     "row 1 is 9.223372036854776e+18"),
    ({"ts_ms": np.array([0, -2.0**63 * 1.5])},
     "labels: column ts_ms must hold whole numbers in [-9223372036854775808, 9223372036854775807]; row 1 is "),
])
def test_as_columns_refuses_integers_out_of_their_columns_range(change, message):
    with pytest.raises(ValueError) as e:
        P.as_columns(_labels(**change), P.LABEL_COLUMNS, "labels")
    assert str(e.value).startswith(message)


def test_as_columns_keeps_integers_at_the_ends_of_their_range():
    top = float(2**64 - 2048)  # the largest float64 below 2**64
    out = P.as_columns(_labels(card=np.array([0.0, top]), ts_ms=np.array([-2.0**63, 2.0**62]),
                               tx_id=np.array([0, 2**64 - 1], np.uint64), fraud=np.array([0, 255], np.int64),
                               terminal=np.array([0, 2**63 - 1], np.int64)),
                       P.LABEL_COLUMNS, "labels")
    assert P.as_columns(_labels(tx_id=[1, 2**64 - 1], ts_ms=[-1, 2**63 - 1]), P.LABEL_COLUMNS, "labels")["tx_id"].tolist() \
        == [1, 2**64 - 1]  # mixed Python ints, that numpy would round to floats
    assert P.as_columns(_labels(ts_ms=[-1, 2**63 - 1]), P.LABEL_COLUMNS, "labels")["ts_ms"].tolist() == [-1, 2**63 - 1]
    assert out["card"].tolist() == [0, 2**64 - 2048]
    assert out["ts_ms"].tolist() == [-2**63, 2**62]
    assert out["tx_id"].tolist() == [0, 2**64 - 1]
    assert out["fraud"].tolist() == [0, 255] and out["fraud"].dtype == np.uint8
    assert out["terminal"].tolist() == [0, 2**63 - 1]
