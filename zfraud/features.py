"""Feature sets: from a batch's transaction columns to the float32 matrix a model scores.

A feature set has a name (stored in every model file) and an ordered tuple of feature names.

- "basic-v1": amount, log amount, hour, night, weekend. Stateless.
- "zfraud-v6" (the default for trained models): basic-v1, then per-card windows (counts and
  average amounts over 1, 7 and 30 days, the amount relative to the card's own 7- and 30-day
  averages, time since the card's previous transaction, the card's recent peak amount ratio),
  then per-terminal counts and fraud risk over 1, 7 and 30 days shifted back by the label delay,
  in 4-hour buckets, two averages derived from the card windows, and the terminal's fraud run
  (TerminalState.read_runs: the confirmed frauds in the terminal's latest stretch of buckets
  that all had fraud, and the days since it began), then what the terminal's confirmed frauds
  in the 30-day risk window were (their mean amount, and how many were card-linked or not). It
  contains the Fraud Detection Handbook's 15 inputs (../shared/reference/handbook.md, section 2)
  computed online, plus the card-relative, run and fraud-detail features the book lacks. The
  windows' exact semantics are in ext/state.pyx.
  History: zfraud-v1 had daily terminal buckets, which missed up to a day of labels that were
  already `delay` days old (the 4-hour buckets of v2 raised average precision by 0.01-0.02 on
  `zfraud gen` data). v3 added card_peak_amount_ratio_7d: the largest of the card's earlier amounts
  relative to its 8-30-day average, decayed over 7 days, so that the spends after a compromised
  card's first large one stand out (+0.005 to +0.006 AP on the test weeks of two `zfraud gen`
  seeds; chosen on earlier validation weeks, docs/ARCHITECTURE.md section 3). v4 added the
  terminal fraud run, which tells a compromised terminal from a one-off fraud and says how long
  the compromise has lasted (+0.009 to +0.030 AP on six validation folds of three `zfraud gen`
  files; +0.008 to +0.015 on their test weeks through the mesh). v5 added the fraud detail
  (FRAUD_DETAIL_FEATURES below; docs/ARCHITECTURE.md section 3 has its gains), which needs the
  labels' amounts and a 12-byte memory of each card's latest fraud (400 bytes per card). v6
  ended the terminal windows with the bucket holding t - delay instead of the one before it
  (v5 left out up to 4 hours of labels already `delay` days old, and a compromise showed up to
  4 hours late), and `train`'s replay and `backtest` reveal labels hourly, each once it is more
  than `delay` days old (v5 revealed 4-hour steps, up to 4 hours early, which the windows then
  left out). On 18 validation folds of nine `zfraud gen` files v6 added +0.0025 AP on average
  (15 up, 3 down); bench/RESULTS.md has the figures.

The loops live in ext/features.pyx and ext/state.pyx; this module checks inputs, allocates and calls.
"""
from __future__ import annotations

import numpy as np

from . import _features
from .state import (CARD_DTYPE, CARD_FEATURES, RUN_FEATURES, TERMINAL_FEATURES, FeatureState, TerminalState,
                    check_finite_amount, load_npz, mix_keys, save_npz, unmix_keys, update_mask_u8)

BASIC = "basic-v1"
FULL = "zfraud-v6"
BASIC_FEATURES = tuple(_features.BASIC_NAMES)
# From the card windows (CardState.update_and_read's exact float64 read of the daily ring, put in
# the row by ext/features.pyx's window_features): the card's average amount over days 8..30 back
# (before the most recent week, so a fresh compromise does not inflate it) and the amount relative
# to it. NaN when the card has no transaction in that span (trees and the logistic kernel handle
# NaN); over an average of 0 (spends of 0.00 only) the ratio is the largest finite float32 (0 / 0:
# NaN), and over a tiny positive one it saturates there too.
DERIVED_FEATURES = ("card_avg_amount_8_30d", "amount_over_card_avg_8_30d")
MAX_FRAUD_UNITS = 2**32 - 1  # the most a confirmed fraud's amount counts for, and a bucket's sum (apply_labels)

# What the terminal's confirmed frauds in the 30-day risk window were (window_features): their
# mean amount, and how many were card-linked (CardState.label_frauds: the card had another fraud
# at another terminal within 7 days) or not. A compromised terminal's frauds are ordinary
# purchases from unlinked cards; a compromised card's are large and linked.
FRAUD_DETAIL_FEATURES = ("terminal_fraud_avg_amount_30d", "terminal_card_linked_frauds_30d",
                         "terminal_unlinked_frauds_30d")
FEATURE_SETS = {
    BASIC: BASIC_FEATURES,
    FULL: (BASIC_FEATURES + CARD_FEATURES + TERMINAL_FEATURES + DERIVED_FEATURES + RUN_FEATURES
           + FRAUD_DETAIL_FEATURES),
}
TERMINAL_BUCKET_HOURS = 4
MAX_SOURCES = 16   # source slots per terminal table: this worker and 15 peer slots (_slot_for)
NO_BUCKET = -(2**62)  # a retired name's newest bucket when the tables held none (forgotten at the first)
FIRST_SOURCES = 4  # slots allocated at first; doubled (up to MAX_SOURCES) when peers need more


def _names(arrays: dict, key: str) -> list[str]:
    """A snapshot's list of worker names (meta.sources, meta.retired): a 1-d array of strings."""
    v = np.asarray(arrays.get(key, np.array([""])))
    if v.ndim != 1 or v.dtype.kind != "U":
        raise ValueError(f"state: {key} is not a list of names ({v.shape} {v.dtype})")
    return [str(name) for name in v]


def label_capacity(terminal_capacity: int) -> int:
    """Rows of each label-fed terminal table: a quarter of the terminal table, at least 1024.
    They hold the terminals with a confirmed fraud in the last 40 days (12-13 % of the
    terminals in `zfraud gen` data at the book's fraud rate); when one is full, the terminal
    whose newest fraud is oldest gives up its row (ext/state.pyx, the capacity policy)."""
    return max(1024, terminal_capacity // 4)


class FeatureEngine:
    """Turns transaction columns into features, keeping the streaming state a feature set needs.

    In a mesh each worker counts its own transactions at each terminal in its own slot (0) and
    merges every peer's counts into a slot of their own (a G-counter: max per bucket), so the
    sum over slots is the terminal's whole traffic. Confirmed frauds are counted the same way,
    in three label-fed tables (frauds, their amounts, the card-linked ones): each label is
    applied by exactly one worker (the card's owner, which alone holds the card's fraud memory)
    and reaches the others as that worker's counts, so no fraud is counted twice however the
    messages interleave. Slots are local: a peer's slot number here means nothing to the peer."""

    def __init__(self, feature_set: str = BASIC, delay_days: int = 7, card_capacity: int = 1 << 18,
                 terminal_capacity: int = 1 << 15):
        if feature_set not in FEATURE_SETS:
            hint = "; retrain the model with `zfraud train`" if str(feature_set).startswith("zfraud-v") else ""
            raise ValueError(f"unknown feature set {feature_set!r} (this zfraud computes "
                             f"{', '.join(FEATURE_SETS)}){hint}")
        self.feature_set = feature_set
        self.names = FEATURE_SETS[feature_set]
        self.state = None
        self.delay_days = delay_days
        if feature_set == FULL:
            self.state = FeatureState(card_capacity, terminal_capacity, delay_days, source_slot=0,
                                      max_sources=FIRST_SOURCES, terminal_days=max(40, delay_days + 31),
                                      terminal_bucket_hours=TERMINAL_BUCKET_HOURS)
            t = self.state.terminals
            # Fed by labels, per source slot like the transactions: confirmed frauds, their
            # amounts (whole currency units) and the card-linked ones (label_frauds). They hold
            # only terminals with a confirmed fraud in their ring: a quarter of the terminals.
            for name, _ in self._LABEL_TABLES:
                setattr(self, name, TerminalState(label_capacity(t.capacity), FIRST_SOURCES, t.days, t.bucket_hours))
        # peer name -> local terminal slot (1..MAX_SOURCES-1), least recently heard first
        self.sources: dict[str, int] = {}
        self.retired_slot = 0  # the slot holding departed peers' counts (0: none yet)
        # departed peers' names -> the newest bucket any terminal table held when each was retired
        # (retired first, first): not merged again while their counts can be in a ring (_forget_retired)
        self.retired: dict[str, int] = {}
        self.grow_failed: str | None = None  # why the tables could not grow for more peers (out of memory)
        self.retirements = 0  # peers retired by this process (not saved)
        # Calls that began to change the streaming state (transform, apply_labels): a caller whose
        # call raised tells from it whether the rows were counted (then a resend is a repeat).
        self.changes = 0

    def transform(self, columns: dict, update=None) -> np.ndarray:
        """columns: TX_COLUMNS arrays of one batch (rows valid, in event-time order within a card)
        -> (n, len(names)) float32. update: bool per row, False for a transaction already counted
        (read without adding it again); default all True."""
        ts = np.ascontiguousarray(columns["ts_ms"], dtype=np.int64)
        amount = np.ascontiguousarray(columns["amount"], dtype=np.float64)
        n = len(ts)
        out = np.empty((n, len(self.names)), dtype=np.float32)
        if self.state is None:
            _features.basic_features(ts, amount, out)
            return out
        # The state's kernels are called directly (FeatureState's methods check and mix keys
        # per call): a small batch is mostly per-call cost.
        check_finite_amount(amount)
        mask = update_mask_u8(update, n)
        cards = mix_keys(columns["card"])
        terminals = mix_keys(columns["terminal"])
        s = self.state
        card = np.empty((n, len(CARD_FEATURES)), dtype=np.float32)
        older = np.empty(n, dtype=np.float64)   # the card's exact average over days 8..30 back
        self.changes += 1
        s.cards.update_and_read(cards, ts, amount, mask, card, older)
        # Count each row, then read its windows and run, before the next row is counted: a batch
        # reads what one-row calls would (the worker joins queued batches into one pass).
        term = np.empty((n, 3), dtype=np.float32)  # counts over 1, 7 and 30 days
        runs = np.empty((n, len(RUN_FEATURES)), dtype=np.float32)
        s.terminals.add_read(self.frauds, terminals, ts, s.source_slot, mask, self.delay_days, term, runs)
        frauds = np.empty_like(term)
        self.frauds.read(terminals, ts, self.delay_days, frauds)
        fraud_amount = np.empty_like(term)
        self.fraud_amounts.read(terminals, ts, self.delay_days, fraud_amount)
        linked = np.empty_like(term)
        self.linked.read(terminals, ts, self.delay_days, linked)
        # Terminal risk = frauds / transactions; the derived card averages: see window_features.
        _features.window_features(ts, amount, card, term, frauds, runs, fraud_amount, linked, older, out)
        return out

    # -- shared state ------------------------------------------------------------------------
    def apply_labels(self, labels: dict) -> int:
        """Confirmed labels (LABEL_COLUMNS arrays: card, terminal, ts_ms, amount, fraud), each
        fraud once (a worker skips the fraud labels of ids it counted before), applied here only
        (in a mesh: by the card's owner, which holds the card's memory of its frauds). A fraud counts on its transaction's bucket, with
        its amount (whole units; a negative or non-finite amount counts 0, one over MAX_FRAUD_UNITS
        counts MAX_FRAUD_UNITS), and as card-linked
        when CardState.label_frauds says so. Returns the frauds counted."""
        if self.state is None:
            return 0
        hit = np.asarray(labels["fraud"]).astype(bool)
        if not hit.any():
            return 0
        terminals = mix_keys(np.asarray(labels["terminal"])[hit])
        ts = np.ascontiguousarray(np.asarray(labels["ts_ms"])[hit], dtype=np.int64)
        amount = np.asarray(labels["amount"], dtype=np.float64)[hit]
        # The fraud-amount table holds uint32 counts (AMOUNT's `<u4` on intel.terminal, the
        # snapshot's tables): a fraud's amount counts at most 2**32 - 1 units, and a bucket's sum
        # saturates there, though MAX_AMOUNT (1e12) is valid. Widening it is a protocol change.
        units = np.rint(np.clip(np.nan_to_num(amount, nan=0.0, posinf=0.0, neginf=0.0), 0, MAX_FRAUD_UNITS))
        self.changes += 1
        self.frauds.add_tx(terminals, ts, 0)
        self.fraud_amounts.add_tx(terminals, ts, 0, None, units.astype(np.uint32))
        n = len(ts)
        flags, prev_terminal, prev_ts = np.empty(n, np.uint8), np.empty(n, np.uint64), np.empty(n, np.int64)
        self.state.cards.label_frauds(mix_keys(np.asarray(labels["card"])[hit]), terminals, ts,
                                      flags, prev_terminal, prev_ts)
        now, before = (flags & 1) != 0, (flags & 2) != 0
        if now.any():
            self.linked.add_tx(np.concatenate([prev_terminal[before], terminals[now]]),
                               np.concatenate([prev_ts[before], ts[now]]), 0)
        return n

    # The label-fed tables: (attribute and snapshot prefix, intel prefix), in intel frame order.
    _LABEL_TABLES = (("frauds", "fraud"), ("fraud_amounts", "amount"), ("linked", "linked"))

    def _shared(self) -> list:
        """(intel prefix, table) of every table shared on intel.terminal, in frame order."""
        labels = [(prefix, getattr(self, name)) for name, prefix in self._LABEL_TABLES]
        return [("tx", self.state.terminals)] + labels

    def export_intel(self, since=0) -> dict | None:
        """This worker's own counts changed since `since`: 0 for all it counted, -1 for all it
        holds (merge_own's included: a full copy for a peer), or the "version" an earlier export
        returned (one version per table). Keys <prefix>_key, _bucket, _count per table of
        _shared(), plus version and bucket_hours."""
        if self.state is None:
            return None
        return self._export(0, since)

    def export_peer(self, source: str) -> dict:
        """Everything held in a peer's slot, as export_intel returns it: what a newcomer cannot
        get from a peer that has left (see the worker's intel_sync)."""
        return self._export(self.sources[source], -1)

    def _export(self, slot: int, since) -> dict:
        tables = self._shared()
        versions = since if isinstance(since, tuple) else (since,) * len(tables)
        out = {"bucket_hours": self.frauds.bucket_hours}
        new_versions = []
        for (prefix, table), v in zip(tables, versions):
            key, bucket, count, version = table.export(slot, v)
            out.update({f"{prefix}_key": key, f"{prefix}_bucket": bucket, f"{prefix}_count": count})
            new_versions.append(version)
        out["version"] = tuple(new_versions)
        return out

    def merge_own(self, deltas: dict) -> None:
        """Merge counts a peer held for this worker's name into this worker's own slot (max per
        bucket): a worker restarted without its snapshot continues its counter instead of
        restarting it from zero under the same name."""
        if self.state is not None:
            self._check_buckets(deltas)
            self._merge(0, deltas)

    def _check_buckets(self, deltas: dict) -> None:
        """Compared as it is, not through int(): a peer's inf would raise OverflowError."""
        if deltas.get("bucket_hours", 0) != self.frauds.bucket_hours:
            raise ValueError(f"terminal counts in {deltas.get('bucket_hours')}-hour buckets; "
                             f"this worker keeps {self.frauds.bucket_hours}-hour buckets")

    def _merge(self, slot: int, deltas: dict) -> None:
        for prefix, table in self._shared():
            if f"{prefix}_key" in deltas:
                table.merge(slot, np.ascontiguousarray(deltas[f"{prefix}_key"], dtype=np.uint64),
                            np.ascontiguousarray(deltas[f"{prefix}_bucket"], dtype=np.int32),
                            np.ascontiguousarray(deltas[f"{prefix}_count"], dtype=np.uint32))

    def merge_intel(self, source: str, deltas: dict, live=(), relayed: bool = False) -> bool:
        """Merge a peer's export (max per bucket, into the peer's local slot). ValueError when its
        buckets are not ours. A table the peer did not send (a peer from before it existed) is
        left as it is. False, and nothing merged, when the peer has no slot: its name was retired,
        or every slot is taken by a peer in `live` (the current members). See _slot_for.
        relayed: the counts come from another peer's copy (intel_sync's `more`), which says
        nothing about when `source` itself was last heard."""
        if self.state is None:
            return True
        self._check_buckets(deltas)
        known = source in self.sources
        slot = self._slot_for(source, live)
        if slot is None:
            return False
        if not relayed:
            self.sources[source] = self.sources.pop(source)  # now the most recently heard
        elif not known:
            self.sources = {source: self.sources.pop(source), **self.sources}  # never heard itself
        self._merge(slot, deltas)
        return True

    def _slot_for(self, source: str, live) -> int | None:
        """The peer's slot, a new one, or None. Slots are a G-counter's replicas, so one must never
        be reset while its counts are still in the windows, and a new name needs a slot of its own
        (a restarted worker without --state-dir comes back under a new name and counts from zero).
        When all MAX_SOURCES - 1 are taken, the least recently merged peer that is not in `live`
        is retired: its counts are folded into the retired slot, where every read still sums
        them, and its slot goes to the newcomer. The first retirement makes the oldest such
        peer's slot the retired slot, and retires a second peer for the newcomer, so it needs two
        departed peers: with 15 live peers in the 15 slots, one leaving and one joining makes 16
        sets of peer counts for 15 slots, and the newcomer waits (None) until a second one
        leaves (nor can a departed peer's counts go into slot 0, which is exported as this
        worker's own, or into a live peer's slot, whose max-merge would hide them). From then on
        the retired slot takes one of the 15: at most MAX_SOURCES - 2 (14) live peers hold slots,
        and one departed peer is enough to make room. A retired name is not merged again while
        any bucket it held can still be in a ring: its counts up to then are in the retired slot,
        and what it sends again would be counted twice against them (_forget_retired)."""
        slot = self.sources.get(source)
        if slot is not None:
            return slot
        if source in self.retired:
            self._forget_retired()
            if source in self.retired:
                return None
        used = len(self.sources) + (self.retired_slot > 0)
        if used < MAX_SOURCES - 1:
            slot = used + 1
            if slot >= self.frauds.max_sources:
                if self.grow_failed:
                    return None
                try:
                    self._grow(min(MAX_SOURCES, 2 * self.frauds.max_sources))
                except MemoryError:  # the worker scores on; this peer's counts wait, as at 15 peers
                    self.grow_failed = (f"this worker's terminal tables could not grow to "
                                        f"{min(MAX_SOURCES, 2 * self.frauds.max_sources)} peer slots: out of "
                                        f"memory; restart it with a lower --terminals or with more memory")
                    return None
        else:
            gone = [n for n in self.sources if n not in live]  # least recently heard first
            if len(gone) < (1 if self.retired_slot else 2):
                return None
            if not self.retired_slot:
                self.retired_slot = self._retire(gone.pop(0))
            slot = self._retire(gone[0])
            for _, table in self._shared():
                table.fold(slot, self.retired_slot)
        self.sources[source] = slot
        return slot

    def slot_refusal(self, source: str, live) -> str:
        """Why merge_intel(source, ..., live) found no slot for `source` (see _slot_for)."""
        if source in self.retired:
            return "its name was retired after it left the mesh; restart it (a new name gets a slot)"
        if self.grow_failed and len(self.sources) + (self.retired_slot > 0) < MAX_SOURCES - 1:
            return self.grow_failed
        gone = [n for n in self.sources if n not in live]
        if gone and not self.retired_slot:
            return (f"all {len(self.sources)} peer slots are taken and only {gone[0]} has left the mesh: "
                    f"making room the first time takes two departed peers (one's slot keeps the departed "
                    f"peers' counts), so {source} waits until another leaves")
        why = f"all {len(self.sources)} peer slots belong to current members"
        if self.retired_slot:
            why += f" (the {MAX_SOURCES - 1}th keeps departed peers' counts)"
        return why

    def _retire(self, name: str) -> int:
        self.retirements += 1
        self._forget_retired()
        newest = self._newest_bucket()
        self.retired[name] = NO_BUCKET if newest is None else newest  # None: it held nothing
        return self.sources.pop(name)

    def _newest_bucket(self) -> int | None:
        """The newest bucket any terminal table has seen (None: none yet); no slot holds a later one."""
        newest = [t.stats()["newest_bucket"] for _, t in self._shared()]
        return max((b for b in newest if b is not None), default=None)

    def _forget_retired(self) -> None:
        """Forget the retired names whose every bucket has left the ring: those retired when the
        newest bucket was a whole ring (self.frauds.buckets: 40 days at the default delay) or more
        before today's newest. Their old counts, should they come back, are older than the ring
        of every terminal that has moved on since (not stored; the retired slot's copy went the
        same way), so nothing is counted twice, and their new ones were never counted. Pruned by
        event time, not by count: a mesh retiring names faster than a fixed count in one ring
        merged old counts again (4,096 did). So the memory is the names retired within one ring
        of event time, about 150 bytes each: a worker replaced by a new name every minute for 40
        days makes about 58,000 (under 11 MB). A terminal with no transaction since keeps the
        retired slot's copy, and would take the old counts again, until its next transaction;
        only a row dated ring - delay - 30 days (3 at the defaults) or more before the newest
        reads them there. Names are in retirement order, so the oldest bucket first."""
        newest = self._newest_bucket()
        if newest is None:
            return
        horizon = newest - self.frauds.buckets
        while self.retired:
            name, bucket = next(iter(self.retired.items()))
            if bucket > horizon:
                break
            del self.retired[name]

    def _grow(self, sources: int) -> None:
        """Every terminal table with `sources` slots, counts kept (memory grows with the mesh).
        All or nothing: MemoryError leaves every table as it was."""
        def grown(table):
            snap = table.snapshot()
            snap["tx"] = np.pad(snap["tx"], ((0, 0), (0, 0), (0, sources - table.max_sources)))
            new = TerminalState(table.capacity, sources, table.days, table.bucket_hours)
            new.restore(snap)
            return new
        names = [name for name, _ in self._LABEL_TABLES]
        tables = [grown(self.state.terminals)] + [grown(getattr(self, name)) for name in names]
        self.state.terminals = tables[0]
        for name, table in zip(names, tables[1:]):
            setattr(self, name, table)

    # -- card handover -----------------------------------------------------------------------
    def card_ids(self) -> np.ndarray:
        """The ids of the cards held (what ownership is computed on), in no particular order."""
        if self.state is None:
            return np.zeros(0, np.uint64)
        return unmix_keys(self.state.cards.keys())

    def take_cards(self, ids) -> np.ndarray:
        """Remove these cards (ids; those not held are skipped) and return their records: what a
        worker hands to a card's new owner when the mesh changes (CARD_DTYPE, 384 bytes each)."""
        if self.state is None:
            return np.zeros(0, CARD_DTYPE)
        return self.state.cards.take(mix_keys(ids))

    def put_cards(self, records) -> tuple[int, int]:
        """Add handed-over card records (take_cards's): (cards added, cards merged with one held
        here). ValueError for records of another layout."""
        if self.state is None:
            raise ValueError(f"feature set {self.feature_set} keeps no card state")
        return self.state.cards.put(records)

    # -- persistence and size ----------------------------------------------------------------
    def save(self, path, extra: dict | None = None) -> None:
        """Snapshot cards, terminal counts, the label-fed tables and the peer slots, atomically,
        with the caller's `extra` arrays (load returns them)."""
        if self.state is not None:
            arrays = self.state.snapshot()
            arrays.update({f"extra.{k}": np.asarray(v) for k, v in (extra or {}).items()})
            for name, _ in self._LABEL_TABLES:
                arrays.update({f"{name}.{k}": v for k, v in getattr(self, name).snapshot().items()})
            by_slot = [""] * (len(self.sources) + (self.retired_slot > 0))  # "": the retired slot
            for name, slot in self.sources.items():
                by_slot[slot - 1] = name
            arrays["meta.sources"] = np.array(by_slot or [""])
            arrays["meta.retired_slot"] = np.array(self.retired_slot, np.int64)
            arrays["meta.retired"] = np.array(list(self.retired) or [""])
            arrays["meta.retired_bucket"] = np.array(list(self.retired.values()) or [NO_BUCKET], np.int64)
            save_npz(path, arrays)

    def load(self, path) -> dict:
        """Restore a snapshot of save(); returns its `extra` arrays."""
        if self.state is None:
            return {}
        arrays = load_npz(path)
        t = self.state.terminals
        snaps = {name: {k[len(name) + 1:]: v for k, v in arrays.items() if k.startswith(name + ".")}
                 for name, _ in self._LABEL_TABLES}
        for name, snap in snaps.items():
            if not snap:
                raise ValueError(f"state: no {name} table (a snapshot from an older zfraud)")
        ring = np.shape(arrays.get("terminal.tx", np.zeros((0, t.buckets, 1))))
        if len(ring) == 3 and ring[1] != t.buckets:
            per_day = 24 // t.bucket_hours
            raise ValueError(f"state: its terminal rings keep {ring[1] / per_day:g} days, this worker's "
                             f"{t.days} (the label delay + 31, at least 40: it was saved under another --delay)")
        sources = int(np.shape(snaps["frauds"].get("tx", np.zeros((0, 0, t.max_sources))))[-1])
        if not 1 <= sources <= MAX_SOURCES:
            raise ValueError(f"state: expected 1..{MAX_SOURCES} terminal source slots, got {sources}")
        names = {key: _names(arrays, key) for key in ("meta.sources", "meta.retired")}
        retired_slot = arrays.get("meta.retired_slot", np.array(0))
        if np.ndim(retired_slot) != 0 or np.asarray(retired_slot).dtype.kind not in "iu":
            raise ValueError(f"state: meta.retired_slot is not a slot number ({np.shape(retired_slot)} "
                             f"{np.asarray(retired_slot).dtype})")
        retired_slot = int(retired_slot)
        if len(names["meta.sources"]) > sources - 1 or not 0 <= retired_slot <= len(names["meta.sources"]):
            raise ValueError(f"state: {len(names['meta.sources'])} peer slots (retired: slot {retired_slot}) "
                             f"do not fit its {sources} source slots (the first is the worker's own)")
        retired_buckets = arrays.get("meta.retired_bucket")  # None: a snapshot from before them
        if retired_buckets is not None and (np.ndim(retired_buckets) != 1 or retired_buckets.dtype.kind not in "iu"
                                            or len(retired_buckets) != len(names["meta.retired"])):
            raise ValueError(f"state: meta.retired_bucket is not one bucket number per retired name "
                             f"({np.shape(retired_buckets)} {retired_buckets.dtype}, {len(names['meta.retired'])} names)")
        if sources != t.max_sources:  # the snapshot was taken after the tables grew
            self.state.terminals = TerminalState(t.capacity, sources, t.days, t.bucket_hours)
            t = self.state.terminals
        tables = {}
        for name, snap in snaps.items():
            tables[name] = TerminalState(label_capacity(t.capacity), sources, t.days, t.bucket_hours)
            tables[name].restore(snap)
        self.state.restore({k: v for k, v in arrays.items()
                            if not k.startswith(tuple(f"{n}." for n in snaps) + ("meta.sources", "meta.retired",
                                                                                  "extra."))})
        for name, table in tables.items():
            setattr(self, name, table)
        self.sources = {name: k + 1 for k, name in enumerate(names["meta.sources"]) if name}
        self.retired_slot = retired_slot
        if retired_buckets is None:  # kept a whole ring from now: their own buckets are not known
            newest = self._newest_bucket()
            retired_buckets = [NO_BUCKET if newest is None else newest] * len(names["meta.retired"])
        self.retired = {name: int(bucket) for name, bucket in zip(names["meta.retired"], retired_buckets) if name}
        return {k[6:]: v for k, v in arrays.items() if k.startswith("extra.")}

    def state_info(self) -> dict:
        """Size of the streaming state: cards and terminals tracked, bytes allocated."""
        if self.state is None:
            return {"cards": 0, "terminals": 0, "peer_slots": 0, "retired_peers": 0, "bytes": 0, "bytes_per_card": 0,
                    "card_capacity": 0, "card_evictions": 0, "terminal_capacity": 0, "terminal_evictions": 0}
        s = self.state
        tables = [table for _, table in self._shared()]
        # Evictions: a table too small for the traffic (--cards, --terminals) evicts a held card
        # or terminal with its history for each new one, and nothing else shows it.
        cards, terminals = s.cards.stats(), s.terminals.stats()
        return {"cards": len(s.cards), "terminals": len(s.terminals), "peer_slots": len(self.sources),
                "card_capacity": cards["capacity"], "card_evictions": cards["evictions"],
                "terminal_capacity": terminals["capacity"], "terminal_evictions": terminals["evictions"],
                "retired_peers": len(self.retired),
                "bytes": int(s.bytes_per_card * s.cards.capacity
                             + sum(t.bytes_per_terminal * t.capacity for t in tables)),
                "bytes_per_card": round(float(s.bytes_per_card), 1)}

