"""Streaming feature state of a worker: per-card windows and replicated per-terminal risk.

The loops and the exact semantics (bucket windows, out-of-order events, the capacity policy, the
G-counters) live in ext/state.pyx, whose module docstring is the reference; this module checks
columns, mixes keys, allocates outputs, and saves and loads snapshots.

    state = FeatureState(card_capacity=1 << 20, terminal_capacity=1 << 18)
    X_card = state.card_features(cols, update_mask)    # (n, 10) float32, CARD_FEATURES order
    counts = state.terminal_counts(cols)               # (n, 3) float32: 1, 7 and 30 days
    state.record_terminal(cols, update_mask)           # count own transactions (source slot)
    deltas = state.export_deltas(since)                # publish; peers call merge_deltas(deltas)

Frauds are counted in tables of their own (zfraud.features.FeatureEngine), which turns the
two tables' counts into the terminal features (TERMINAL_FEATURES: counts and risks).

`cols` is a dict of equal-length numpy columns: "card" and "terminal" (uint64 ids), "ts_ms"
(int64 epoch ms UTC, event time) and "amount" (float64, finite). Ids are mixed with splitmix64
before they reach the tables, so keys inside snapshots and deltas are mixed ids; every worker
mixes the same way, so deltas from any peer merge directly.
"""
from __future__ import annotations

import os
import tempfile
import zipfile

import numpy as np

from . import _state
from .files import remove_unfinished  # noqa: F401 (the worker's, and save_npz's files)
from ._state import CARD_DTYPE, EVICTION_POLICY, CardState, TerminalState

CARD_FEATURES = tuple(_state.CARD_NAMES)
TERMINAL_FEATURES = tuple(_state.TERMINAL_NAMES)
RUN_FEATURES = tuple(_state.RUN_NAMES)
FORMAT = "zfraud.FeatureState/1"
DELTA_KEYS = ("slot", "version", "tx_key", "tx_bucket", "tx_count")

__all__ = ["CARD_FEATURES", "TERMINAL_FEATURES", "RUN_FEATURES", "CARD_DTYPE", "EVICTION_POLICY",
           "CardState", "TerminalState", "FeatureState", "mix_keys", "unmix_keys"]


def mix_keys(ids) -> np.ndarray:
    """(n,) uint64 ids -> (n,) uint64 table keys (splitmix64's finaliser, a bijection)."""
    ids = np.ascontiguousarray(ids, dtype=np.uint64)
    out = np.empty_like(ids)
    _state.mix_keys(ids, out)
    return out


def unmix_keys(keys) -> np.ndarray:
    """(n,) uint64 table keys -> the ids they were mixed from (mix_keys's inverse)."""
    keys = np.ascontiguousarray(keys, dtype=np.uint64)
    out = np.empty_like(keys)
    _state.unmix_keys(keys, out)
    return out


def _column(cols, name, dtype, n=None):
    if name not in cols:
        raise ValueError(f"expected a column {name!r}, got columns {sorted(cols)}")
    a = np.ascontiguousarray(cols[name], dtype=dtype)
    if a.ndim != 1 or (n is not None and a.shape[0] != n):
        want = "n" if n is None else n
        raise ValueError(f"column {name!r}: expected shape ({want},), got {a.shape}")
    return a


def check_finite_amount(amount: np.ndarray) -> np.ndarray:
    """amount, if every value is finite (the card windows need it); else ValueError naming the row."""
    finite = np.isfinite(amount)
    if not finite.all():
        i = int(np.argmin(finite))
        raise ValueError(f"column 'amount': expected finite values, got {amount[i]} at row {i}")
    return amount


def update_mask_u8(update_mask, n):
    """update_mask (None = all rows) as an (n,) uint8 view or copy."""
    if update_mask is None:
        return np.ones(n, np.uint8)
    m = np.ascontiguousarray(update_mask)
    if m.shape != (n,):
        raise ValueError(f"update_mask: expected shape ({n},), got {m.shape}")
    return m.view(np.uint8) if m.dtype == np.bool_ else (m != 0).view(np.uint8)


class FeatureState:
    """The streaming state of one worker: a CardState for the cards it owns and a TerminalState
    replicated across the mesh (this worker counts its own transactions in `source_slot`).

    card_capacity, terminal_capacity: rows of each table, allocated zeroed up front (pages
    cost memory once used): 400 bytes per card, 44 + 8 x b + 4 x b x max_sources bytes per
    terminal, b = terminal_days x 24 / terminal_bucket_hours buckets (2924 at the defaults);
    delay_days: the label delay of the terminal windows (the Handbook's 7);
    terminal_days: days each terminal keeps, at least delay_days + 31;
    terminal_bucket_hours: the terminal windows' resolution (a divisor of 24).
    """

    def __init__(self, card_capacity: int = 1 << 20, terminal_capacity: int = 1 << 18,
                 delay_days: int = 7, source_slot: int = 0, max_sources: int = 16,
                 terminal_days: int = 40, terminal_bucket_hours: int = 24):
        if delay_days < 0:
            raise ValueError(f"expected delay_days >= 0, got {delay_days}")
        if terminal_days < delay_days + 31:
            raise ValueError(f"expected terminal_days >= delay_days + 31 = {delay_days + 31} "
                             f"(the 30-day window ends delay_days back), got {terminal_days}")
        if not 0 <= source_slot < max_sources:
            raise ValueError(f"expected source_slot in [0, {max_sources}), got {source_slot}")
        self.delay_days = int(delay_days)
        self.source_slot = int(source_slot)
        self.cards = CardState(card_capacity)
        self.terminals = TerminalState(terminal_capacity, max_sources, terminal_days, terminal_bucket_hours)

    @property
    def bytes_per_card(self) -> float:
        return self.cards.bytes_per_card

    def card_features(self, cols: dict, update_mask=None) -> np.ndarray:
        """Add each row to its card's windows (where update_mask, default all rows; False for a
        transaction already counted), then read them: (n, 10) float32, CARD_FEATURES order."""
        ts = _column(cols, "ts_ms", np.int64)
        n = ts.shape[0]
        amount = check_finite_amount(_column(cols, "amount", np.float64, n))
        keys = mix_keys(_column(cols, "card", np.uint64, n))
        out = np.empty((n, len(CARD_FEATURES)), np.float32)
        self.cards.update_and_read(keys, ts, amount, update_mask_u8(update_mask, n), out)
        return out

    def terminal_counts(self, cols: dict) -> np.ndarray:
        """Each row's terminal transaction counts over the delayed 1, 7 and 30-day windows,
        summed over every source: (n, 3) float32."""
        ts = _column(cols, "ts_ms", np.int64)
        keys = mix_keys(_column(cols, "terminal", np.uint64, ts.shape[0]))
        out = np.empty((ts.shape[0], 3), np.float32)
        self.terminals.read(keys, ts, self.delay_days, out)
        return out

    def record_terminal(self, cols: dict, update_mask=None) -> None:
        """Count this worker's transactions (rows where update_mask, default all) in its slot."""
        ts = _column(cols, "ts_ms", np.int64)
        n = ts.shape[0]
        keys = mix_keys(_column(cols, "terminal", np.uint64, n))
        self.terminals.add_tx(keys, ts, self.source_slot, update_mask_u8(update_mask, n))

    def export_deltas(self, since: int = 0) -> dict:
        """Cumulative counts changed locally since version `since` (0: everything counted here;
        -1: every nonzero bucket, merged ones included, for a new peer): this worker's slot.
        Pass the returned "version" as `since` next time."""
        tx_key, tx_bucket, tx_count, version = self.terminals.export(self.source_slot, since)
        return {"slot": self.source_slot, "version": version,
                "tx_key": tx_key, "tx_bucket": tx_bucket, "tx_count": tx_count}

    def merge_deltas(self, deltas: dict) -> None:
        """Merge a peer's export_deltas() (max per bucket: order and repeats do not matter)."""
        missing = [k for k in DELTA_KEYS if k not in deltas]
        if missing:
            raise ValueError(f"deltas: expected keys {DELTA_KEYS}, missing {missing}")
        self.terminals.merge(int(deltas["slot"]), np.ascontiguousarray(deltas["tx_key"], dtype=np.uint64),
                             np.ascontiguousarray(deltas["tx_bucket"], dtype=np.int32),
                             np.ascontiguousarray(deltas["tx_count"], dtype=np.uint32))

    def stats(self) -> dict:
        return {"cards": self.cards.stats(), "terminals": self.terminals.stats()}

    def snapshot(self) -> dict:
        """Both tables' snapshots in one flat dict of arrays ("card.*", "terminal.*", "meta.*")."""
        arrays = {f"card.{k}": v for k, v in self.cards.snapshot().items()}
        arrays.update({f"terminal.{k}": v for k, v in self.terminals.snapshot().items()})
        arrays["meta.format"] = np.array(FORMAT)
        arrays["meta.delay_days"] = np.array(self.delay_days, np.int64)
        arrays["meta.source_slot"] = np.array(self.source_slot, np.int64)
        return arrays

    def restore(self, arrays: dict) -> None:
        """Restore from snapshot(); ValueError if it is not one or does not fit these tables."""
        fmt = arrays.get("meta.format")
        if fmt is None or str(fmt) != FORMAT:
            raise ValueError(f"state: expected format {FORMAT!r}, got {fmt!r}")
        # Restore into fresh tables and swap them in only when both succeeded. delay_days and
        # source_slot stay as configured: they are settings, not state.
        cards = CardState(self.cards.capacity)
        cards.restore({k[5:]: v for k, v in arrays.items() if k.startswith("card.")})
        t = self.terminals
        terminals = TerminalState(t.capacity, t.max_sources, t.days, t.bucket_hours)
        terminals.restore({k[9:]: v for k, v in arrays.items() if k.startswith("terminal.")})
        self.cards, self.terminals = cards, terminals

    def save(self, path) -> None:
        """Write the state to `path` (numpy .npz) atomically (see save_npz)."""
        save_npz(path, self.snapshot())

    def load(self, path) -> None:
        """Restore the state saved at `path` (never unpickles; a bad file raises ValueError)."""
        self.restore(load_npz(path))


def save_npz(path, arrays: dict) -> None:
    """Write arrays to `path` (numpy .npz) atomically: a temporary file in the same directory
    (named after `path`, see remove_unfinished), flushed to disk, then renamed over `path`."""
    path = os.fspath(path)
    directory, base = os.path.split(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.{os.getpid()}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def load_npz(path) -> dict:
    """The arrays saved at `path` (never unpickles; a missing file raises FileNotFoundError, a bad
    one ValueError)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(path)
    try:
        with open(path, "rb") as f:
            zipped = f.read(4) == b"PK\x03\x04"  # else np.load takes it for a .npy or a pickle
        if zipped:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"state file {path!r}: expected a numpy .npz of arrays, got {e}") from e
    raise ValueError(f"state file {path!r}: not a zfraud snapshot (not an .npz archive)")
