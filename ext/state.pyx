# cython: language_level=3
"""Streaming per-card and per-terminal state, in event time (epoch ms UTC, never the wall clock).

Storage. Each table is a dense block of `capacity` rows held in numpy arrays that the object owns,
plus an open-addressing index from key to row. Card rows are one record per card (CardRec below,
384 bytes; its numpy dtype CARD_DTYPE is derived from the struct), because a card's rings are read
whole on every transaction: one record is 6-7 cache lines where one array per field was ~13.
Terminal rows are one array per field. A snapshot is a dict of plain arrays, one per field, of
the used rows; the index is derived from the rows' keys and rebuilt on restore.

Index. Linear probing over 2 slots per row, so the load never exceeds 1/2 and every probe ends at
an empty slot. A slot holds (key's top 32 bits << 32) | (row + 1), 0 = empty; a candidate is
confirmed against the full key in its row. A key's home slot is its top 32 bits scaled to the
table size, so keys must arrive well mixed: zfraud.state passes them through `mix_keys`
(splitmix64's finaliser). No key value is reserved.

Capacity policy (EVICTION_POLICY), applied only when every row is in use and a new key arrives:
1. expire idle: a clock hand inspects at most 64 rows for one idle longer than the table keeps
   (cards: last event more than 31 days before the newest event time the table has seen;
   terminals: no bucket left in the ring, i.e. idle for `days` days); the first found is reused
   (counted as an expiry);
2. otherwise evict the stalest key (oldest last event; ties: smallest key) among the keys whose
   home lies in the new key's 64-slot probe window (an eviction; an expiry if it was idle);
3. a window without keys (possible only in tiny tables) gives up the row under the clock hand.
Victims depend only on the stored keys and times, not on the index layout, so a restored
snapshot evicts what the original would have. Every loop is bounded; nothing grows or waits.

CardState: per card an hourly ring of 24 buckets and a daily ring of 32 buckets (each bucket a
uint16 count, saturating at 65 535, and a float32 amount sum, which stops growing with the count
so that the bucket's average is that of the transactions it counted; a handover merge past 65 535
keeps the older record's transactions and the share of the newer's that fits, at their average),
the newest event time (which stamps both rings: its hour and day are the newest buckets), the
event time before it and the newest amount.
- update_and_read processes rows in order: if update[i], add the transaction, then read. Rows
  with update[i] == 0 (duplicates already counted) only read. One loop in row order, so a batch
  gives exactly what one-row calls give.
- Windows include the current transaction, as in the Handbook, whose windows are the exact
  rolling (t - n days, t]. Here, at bucket granularity:
    1 day  = the row's UTC hour bucket and the 23 before it ((t - 1 day, t] less up to an
             hour at its start);
    n days = the row's UTC day bucket and the n - 1 before it, n = 7, 30 (calendar days: from
             midnight n - 1 days back, so between n - 1 and n days).
  A bucket holds every event of its hour or day seen so far, so after out-of-order arrivals a
  row's window can include events of its own bucket that are later than the row.
- Out of order: an event older than the card's newest goes into its bucket while that bucket is
  still in the ring (24 hours / 32 days back from the newest), otherwise it is not added (stats
  hour_dropped / too_old); a ring never moves backward. A window only counts buckets still in the
  ring, so a late row's window misses the buckets the ring has recycled since.
- Seconds since the card's previous transaction, -1 if none is known: for a row newer than the
  card's newest (or at the same ms, when added) the gap to the newest; for a re-read of the
  newest (update 0, same time) the gap it had; for a late row the gap to the event before the
  newest if that one is older, else -1. Idle cards keep their last time until their row is reused.
- Ratios are amount / window average, 0 when that average is not positive (a window of 0.00
  spends, which holds the row itself, so its amount is 0 too; or an empty one), and saturate at
  the largest finite float32 (FLT_MAX) over a tiny positive average (e.g. 1e-40), so every
  feature is finite or NaN (window_features' 8-30-day ratio, whose window does not hold the row,
  is FLT_MAX over an average of 0 instead, and NaN for 0 / 0: see there). Averages are 0 for an
  empty window: a read-only row's, and a counted row's whose
  own bucket the ring no longer holds (more than 23 hours older than the card's newest hour:
  an empty 1-day window; more than 31 days older than its newest day: every window empty, the
  row itself not added). Amounts must be finite (the caller checks).
- Peak amount ratio (card_peak): one float per card, max over its counted rows of amount / the
  card's average over days 8..30 back at the time (0 over an average of 0 or no such day,
  saturating at FLT_MAX), decayed by exp(-age / 7 days) from the card's newest event; a row
  reads it before its own ratio is folded in (NaN for a card's first row).
  A late row (older than the card's newest) reads the peak as of the newest (undecayed, its
  later rows included), and its ratio goes in decayed by its lateness, exp(-(newest - t) / 7
  days), into the peak and into what the newest read (peak_read), as in time order: the peak
  does not depend on the order rows arrive in, within float32 rounding.
  A handover merge computes again the ratios of a record that began without the card's history
  (card_merge_peak says when that is exact).
- Fraud memory (label_frauds): the card's latest confirmed fraud, its hour and terminal, and
  whether it is card-linked (another fraud of the card at another terminal within 7 days).
  Labels only read and update cards the table holds; they never add one.

TerminalState: per terminal a ring of buckets covering `days` days (daily buckets by default;
`bucket_hours` makes them 1, 2, 3, 4, 6, 8 or 12 hours), each with one uint32 transaction
count per source slot (a G-counter: worker s only increments slot s, merge takes the max per
slot, so merges commute and may repeat; windows sum over the slots). A table counts one thing:
zfraud.features keeps one of transactions and, fed by labels, one each of confirmed frauds,
their amounts and the card-linked frauds, all with the same ring.
read() gives the counts behind the Handbook's terminal features (handbook.md 2.3) at bucket
granularity: for the row's UTC bucket b the n-day window is buckets (b - delay - n, b - delay]
over all slots (delay and n counted in buckets): it ends with the bucket holding t - delay days,
so every label already `delay` days old is in it, as in the book's (t - delay - n days,
t - delay days]. That newest bucket is partly labelled (its transactions after t - delay days
are counted, their labels are not in yet); risk is the fraud table's count over the transaction
table's (features.pyx, window_features). Buckets older than the ring
(`days` back from the terminal's newest bucket) are gone; days >= delay + 31 keeps every window
of an in-order stream inside the ring. Indices passed to and returned by add/merge/export are
bucket indices, floor(ts_ms / bucket length).
add_tx() adds 1 per row, or a given count (the label-fed tables of zfraud.features count fraud
amounts the same way), saturating: each slot's count and the sum over the slots stop at 2**32 - 1,
in add_tx and merge alike (the slots of a bucket may sum past it; restore saturates the sum too).
add_read() is add_tx, read and read_runs in one loop in row order (each row counted, then read,
before the next is counted), so that, as for the cards, a batch gives exactly what one-row calls
give: FeatureEngine.transform uses it.
read_runs() gives a row's fraud run from two tables with the same ring, one of transactions and
one of confirmed frauds: from bucket b - delay (partly labelled: counted only if it has a fraud)
backwards, buckets with a fraud extend the run, empty buckets are skipped, and the first bucket
with transactions and no fraud ends it (so does the oldest bucket both rings hold). It reads the
frauds in the run and the days from its first bucket to b. A walk starts no later than the
newest bucket either ring holds (a row dated far ahead skips the empty buckets in between), so
it is at most one ring long; it stops at the first genuine bucket, so it is a few buckets for a
terminal without fraud; it allocates nothing and keeps no state of its own.
"""
from libc.float cimport FLT_MAX
from libc.math cimport NAN, exp, log1p
from libc.stdint cimport (INT32_MIN, INT64_MIN, UINT16_MAX, UINT32_MAX, int32_t, int64_t, uint8_t, uint16_t,
                          uint32_t, uint64_t)
from libc.string cimport memset

import numpy as np

cdef extern from *:
    """
    #if defined(__GNUC__) || defined(__clang__)
    #define ZF_PREFETCH(p) __builtin_prefetch((const void *)(p))
    #else
    #define ZF_PREFETCH(p) ((void)0)
    #endif
    #define ZF_GOLDEN 0x9E3779B97F4A7C15ULL
    #define ZF_MIX1 0xBF58476D1CE4E5B9ULL
    #define ZF_MIX2 0x94D049BB133111EBULL
    #define ZF_UNMIX1 0x96DE1B173F119089ULL
    #define ZF_UNMIX2 0x319642B2D24D8EC3ULL
    #define ZF_LOW32 0xFFFFFFFFULL
    """
    void ZF_PREFETCH(const void* p) noexcept nogil
    const uint64_t ZF_GOLDEN
    const uint64_t ZF_MIX1
    const uint64_t ZF_MIX2
    const uint64_t ZF_UNMIX1
    const uint64_t ZF_UNMIX2
    const uint64_t ZF_LOW32

cdef enum:
    HOURS = 24            # hourly ring of a card: the 1-day window
    DAYS = 32             # daily ring of a card: the 30-day window and 2 days of slack
    K_CARD = 10           # columns of CardState.update_and_read's output
    K_TERMINAL = 3        # columns of TerminalState.read's output
    K_RUN = 2             # columns of TerminalState.read_runs's output
    MAX_FRESH_ROWS = 2 * HOURS   # rows card_fresh_rows gives at most (two an hour bucket)
    PROBE_WINDOW = 64     # index slots whose keys compete for eviction
    SWEEP = 64            # rows the idle-expiry clock hand inspects per new key
    AHEAD = 8             # rows of prefetch look-ahead in the card loop
    # Compile-time constants, so that divisions by them compile to multiplications.
    MS_PER_HOUR = 3600000
    MS_PER_DAY = 86400000

cdef int64_t CARD_IDLE_MS = <int64_t>31 * MS_PER_DAY   # idle longer than this: free for reuse
cdef int64_t NONE = INT64_MIN                          # "no event" in a time field
cdef int32_t FRAUD_NONE = INT32_MIN                    # CardRec.fraud_mark: no fraud remembered
FRAUD_LINK_HOURS = 7 * 24     # label_frauds: two frauds of a card this close are linked

EVICTION_POLICY = ("expire-idle (clock sweep of 64 rows), else evict-stalest in the 64-slot "
                   "probe window")

# Column order of CardState.update_and_read, and the terminal features window_features makes
# from two TerminalState.read calls; zfraud.state mirrors these.
CARD_NAMES = ("card_nb_tx_1d", "card_avg_amount_1d", "card_nb_tx_7d", "card_avg_amount_7d",
              "card_nb_tx_30d", "card_avg_amount_30d", "amount_over_card_avg_7d",
              "amount_over_card_avg_30d", "log1p_seconds_since_card_last_tx",
              "card_peak_amount_ratio_7d")
TERMINAL_NAMES = ("terminal_nb_tx_1d", "terminal_risk_1d", "terminal_nb_tx_7d",
                  "terminal_risk_7d", "terminal_nb_tx_30d", "terminal_risk_30d")
RUN_NAMES = ("terminal_fraud_run_frauds", "terminal_fraud_run_days")   # TerminalState.read_runs
CARD_STATS = ("evictions", "expiries", "late", "hour_dropped", "too_old", "read_missing")
TERMINAL_STATS = ("evictions", "expiries", "too_old", "read_missing", "merged")

# One card's state. Ring position of an hour (day) index is the index mod HOURS (DAYS).
ctypedef struct CardRec:
    uint64_t key                  # the (mixed) card key
    int64_t last_ts               # newest event time (ms); its hour and day stamp the rings
    int64_t prev_ts               # event time before last_ts, NONE if none
    float last_amount             # amount of the newest event
    float peak                    # peak amount ratio (see card_peak) as of last_ts, newest included
    float peak_read               # the peak the newest event read, for a re-read of it
    float hour_sum[HOURS]         # amount sum per hour bucket
    float day_sum[DAYS]           # amount sum per day bucket
    uint16_t hour_count[HOURS]    # transactions per hour bucket (saturating)
    uint16_t day_count[DAYS]      # transactions per day bucket (saturating)
    int32_t fraud_mark            # the card's latest confirmed fraud: hour index * 2 + 1 if it
                                  # is card-linked; FRAUD_NONE without one (label_frauds)
    uint64_t fraud_terminal       # ... and its (mixed) terminal key

cdef CardRec _card_rec
CARD_DTYPE = np.asarray(<CardRec[:1]>(&_card_rec)).dtype   # the numpy view of CardRec


def terminal_row(ring, max_sources):
    """Per-row arrays of a TerminalState: (name, dtype, shape after the row axis). Ring position
    of a bucket index is the index mod `ring`."""
    return (
        ("key", np.uint64, ()),                       # the (mixed) terminal key
        ("last_bucket", np.int64, ()),                # newest bucket index; stamps the ring
        ("tx", np.uint32, (ring, max_sources)),       # counts per bucket per source slot
        ("stamp", np.uint32, (ring,)),                # version of the bucket's last local change
    )


# ------------------------------------------------------------------------------------------------
# Shared by both tables: key mixing, the index, row allocation and the capacity policy.

ctypedef struct Table:
    uint64_t* slots        # index: (key >> 32 << 32) | (row + 1), 0 = empty
    uint64_t m             # index slots (2 x capacity)
    char* keys             # key of row r at keys + r * key_stride
    char* ages             # newest event time of row r (int64) at ages + r * age_stride
    size_t key_stride
    size_t age_stride
    uint64_t capacity
    uint64_t used          # rows 0..used-1 hold keys
    uint64_t cursor        # clock hand of the idle sweep
    int64_t evicted
    int64_t expired


cdef inline uint64_t splitmix64(uint64_t x) noexcept nogil:
    cdef uint64_t z = x + ZF_GOLDEN
    z = (z ^ (z >> 30)) * ZF_MIX1
    z = (z ^ (z >> 27)) * ZF_MIX2
    return z ^ (z >> 31)


def mix_keys(const uint64_t[::1] keys, uint64_t[::1] out):
    """splitmix64's finaliser of each key (the function zfraud.mesh.mix64 computes).

    keys: (n,) uint64; out: (n,) uint64, may be the same array."""
    cdef Py_ssize_t n = keys.shape[0], i
    if out.shape[0] != n:
        raise ValueError(f"expected out of length {n}, got {out.shape[0]}")
    with nogil:
        for i in range(n):
            out[i] = splitmix64(keys[i])


cdef inline uint64_t unmix64(uint64_t z) noexcept nogil:
    # splitmix64's finaliser backwards: each xor-shift undone by repeating it, each multiply by
    # the constant's inverse mod 2**64 (ZF_UNMIX1 * ZF_MIX1 == 1).
    z = z ^ (z >> 31) ^ (z >> 62)
    z *= ZF_UNMIX2
    z = z ^ (z >> 27) ^ (z >> 54)
    z *= ZF_UNMIX1
    z = z ^ (z >> 30) ^ (z >> 60)
    return z - ZF_GOLDEN


def unmix_keys(const uint64_t[::1] keys, uint64_t[::1] out):
    """The ids whose mix_keys are `keys` (mix_keys is a bijection): a card's id from its table
    key, which is what ownership is computed on (zfraud.mesh.owners).

    keys: (n,) uint64; out: (n,) uint64, may be the same array."""
    cdef Py_ssize_t n = keys.shape[0], i
    if out.shape[0] != n:
        raise ValueError(f"expected out of length {n}, got {out.shape[0]}")
    with nogil:
        for i in range(n):
            out[i] = unmix64(keys[i])


cdef inline int64_t floor_div(int64_t a, int64_t b) noexcept nogil:
    cdef int64_t q = a // b
    if (a % b != 0) and ((a < 0) != (b < 0)):
        q -= 1
    return q


cdef inline int64_t pmod(int64_t a, int64_t m) noexcept nogil:
    cdef int64_t r = a % m
    if r < 0:
        r += m
    return r


cdef inline uint64_t row_key(const Table* tb, uint64_t r) noexcept nogil:
    return (<const uint64_t*>(tb.keys + r * tb.key_stride))[0]


cdef inline int64_t row_age(const Table* tb, uint64_t r) noexcept nogil:
    return (<const int64_t*>(tb.ages + r * tb.age_stride))[0]


cdef inline uint64_t home(const Table* tb, uint64_t key_or_slot) noexcept nogil:
    # The top 32 bits scaled to [0, m): no modulo, and m need not be a power of two.
    return ((key_or_slot >> 32) * tb.m) >> 32


cdef inline uint64_t slot_row(uint64_t e) noexcept nogil:
    return (e & ZF_LOW32) - 1


cdef inline int64_t tb_find(const Table* tb, uint64_t key) noexcept nogil:
    """Index slot of key, or -1 - (the empty slot where it would go). At most m steps, as the
    index is at most half full (-1 - m would mean a full index: impossible by construction)."""
    cdef uint64_t s = home(tb, key), top = key >> 32, step, e
    for step in range(tb.m):
        e = tb.slots[s]
        if e == 0:
            return -1 - <int64_t>s
        if (e >> 32) == top and row_key(tb, slot_row(e)) == key:
            return <int64_t>s
        s += 1
        if s == tb.m:
            s = 0
    return -1 - <int64_t>tb.m


cdef void tb_delete(Table* tb, uint64_t i) noexcept nogil:
    """Empty slot i by backward shift: later slots of its run move up unless their home lies
    cyclically in (i, j]. No tombstones, so probes stay short and the load exact."""
    cdef uint64_t j = i, h, step
    for step in range(tb.m):
        j += 1
        if j == tb.m:
            j = 0
        if tb.slots[j] == 0:
            break
        h = home(tb, tb.slots[j])
        if i <= j:
            if i < h <= j:
                continue
        elif h > i or h <= j:
            continue
        tb.slots[i] = tb.slots[j]
        i = j
    tb.slots[i] = 0


cdef int64_t tb_stalest(const Table* tb, uint64_t key) noexcept nogil:
    """Slot of the stalest key whose home is among the PROBE_WINDOW slots from key's home (ties:
    smallest key), -1 if none. Those keys all sit before the first empty slot past the window."""
    cdef uint64_t h = home(tb, key), w = PROBE_WINDOW, s = h, step, e, eh, dist, k
    cdef uint64_t best_key = 0
    cdef int64_t best = -1, best_age = 0, a
    if w > tb.m:
        w = tb.m
    for step in range(tb.m):
        e = tb.slots[s]
        if e == 0:
            if step >= w:
                break
        else:
            eh = home(tb, e)
            dist = eh - h if eh >= h else eh + tb.m - h
            if dist < w:
                a = row_age(tb, slot_row(e))
                k = row_key(tb, slot_row(e))
                if best < 0 or a < best_age or (a == best_age and k < best_key):
                    best = <int64_t>s
                    best_age = a
                    best_key = k
        s += 1
        if s == tb.m:
            s = 0
    return best


cdef inline uint64_t tb_hand(Table* tb) noexcept nogil:
    cdef uint64_t r = tb.cursor
    tb.cursor += 1
    if tb.cursor >= tb.used:
        tb.cursor = 0
    return r


cdef uint64_t tb_acquire(Table* tb, uint64_t key, int64_t ins,
                         int64_t expire_before) noexcept nogil:
    """A row for a key not in the index (ins: its insertion slot from tb_find), entered in the
    index under key. The caller resets the row's data (and writes its key)."""
    cdef uint64_t r = 0, step
    cdef int64_t s = -1
    if tb.used < tb.capacity:
        r = tb.used
        tb.used += 1
    else:
        for step in range(SWEEP if SWEEP < tb.used else tb.used):
            r = tb_hand(tb)
            if row_age(tb, r) < expire_before:
                s = tb_find(tb, row_key(tb, r))
                break
        if s < 0:
            s = tb_stalest(tb, key)
            if s >= 0:
                r = slot_row(tb.slots[s])
            else:
                r = tb_hand(tb)
                s = tb_find(tb, row_key(tb, r))
        if row_age(tb, r) < expire_before:
            tb.expired += 1
        else:
            tb.evicted += 1
        tb_delete(tb, <uint64_t>s)
        ins = -1 - tb_find(tb, key)
    tb.slots[ins] = ((key >> 32) << 32) | (r + 1)
    return r


cdef int64_t tb_rebuild(Table* tb) noexcept nogil:
    """Enter rows 0..used-1 in an empty index: -1 on success, else the first row whose key
    repeats an earlier row's."""
    cdef uint64_t r, key
    cdef int64_t s
    for r in range(tb.used):
        key = row_key(tb, r)
        s = tb_find(tb, key)
        if s >= 0:
            return <int64_t>r
        tb.slots[-1 - s] = ((key >> 32) << 32) | (r + 1)
    return -1


cdef inline char* data_of(a) except NULL:
    cdef uint8_t[::1] v = a.reshape(-1).view(np.uint8)
    return <char*>&v[0]


def _check_capacity(capacity):
    if not 1 <= capacity <= (1 << 31):
        raise ValueError(f"expected a capacity in [1, 2**31], got {capacity}")
    return int(capacity)


def _expect(snap, name, dtype, shape):
    """snap[name] as an ndarray of exactly this dtype and shape, else ValueError."""
    if name not in snap:
        raise ValueError(f"snapshot: expected array {name!r}, got keys {sorted(snap)}")
    a = snap[name]
    if not isinstance(a, np.ndarray) or a.dtype != np.dtype(dtype) or a.shape != tuple(shape):
        got = f"{a.dtype} {a.shape}" if isinstance(a, np.ndarray) else type(a).__name__
        raise ValueError(f"snapshot {name!r}: expected {np.dtype(dtype)} {tuple(shape)}, got {got}")
    return a


def _expect_rows(snap, kind, record, capacity):
    """Check a snapshot's kind and per-row arrays; returns (rows, {name: array})."""
    if not isinstance(snap, dict):
        raise ValueError(f"snapshot: expected a dict of arrays, got {type(snap).__name__}")
    k = snap.get("kind")
    if not isinstance(k, np.ndarray) or k.shape != () or str(k) != kind:
        raise ValueError(f"snapshot 'kind': expected {kind!r}, got {k!r}")
    key = snap.get("key")
    if not isinstance(key, np.ndarray) or key.ndim != 1:
        raise ValueError(f"snapshot 'key': expected a 1-d uint64 array, got {key!r:.60}")
    n = key.shape[0]
    if n > capacity:
        raise ValueError(f"snapshot: expected at most {capacity} rows (the capacity), got {n}")
    return n, {name: _expect(snap, name, dtype, (n,) + tuple(shape))
               for name, dtype, shape in record}


def _expect_scalars(snap, names, rows):
    out = [int(_expect(snap, name, np.int64, ())) for name in names]
    cursor = int(_expect(snap, "cursor", np.int64, ()))
    if not 0 <= cursor < max(rows, 1):
        raise ValueError(f"snapshot 'cursor': expected 0 <= cursor < {max(rows, 1)}, got {cursor}")
    return out, cursor


# ------------------------------------------------------------------------------------------------
# Cards.

ctypedef struct CardStats:
    int64_t late              # added while older than the card's newest event
    int64_t hour_dropped      # too old for the hourly ring (still counted by day if in range)
    int64_t too_old           # too old for the daily ring: not added at all
    int64_t read_missing      # read-only rows of unknown cards


cdef inline void card_reset(CardRec* c, uint64_t key) noexcept nogil:
    memset(c, 0, sizeof(CardRec))
    c.key = key
    c.last_ts = NONE
    c.prev_ts = NONE
    c.fraud_mark = FRAUD_NONE


cdef inline int64_t card_gap(const CardRec* c, int64_t t, bint upd) noexcept nogil:
    """Milliseconds since the card's transaction before one at t, -1 if none is known."""
    if c.last_ts == NONE:
        return -1
    if t > c.last_ts or (t == c.last_ts and upd):
        return t - c.last_ts
    # A re-read of the newest (t == last_ts) gets the gap the newest had; a late row the gap to
    # the event before the newest, when that one is older.
    if c.prev_ts != NONE and (t > c.prev_ts or t == c.last_ts):
        return t - c.prev_ts
    return -1


cdef inline void card_add(CardRec* c, CardStats* st, int64_t t, double amount) noexcept nogil:
    cdef int64_t h = floor_div(t, MS_PER_HOUR), d = floor_div(t, MS_PER_DAY), nh = h, nd = d, k, j
    cdef float a = <float>amount
    if c.last_ts == NONE:
        c.last_ts = t
        c.last_amount = a
    else:
        nh = floor_div(c.last_ts, MS_PER_HOUR)
        nd = floor_div(c.last_ts, MS_PER_DAY)
        if t >= c.last_ts:
            # Move the rings forward to t, clearing the buckets they wrap onto.
            if h - nh >= HOURS:
                memset(c.hour_count, 0, sizeof(c.hour_count))
                memset(c.hour_sum, 0, sizeof(c.hour_sum))
            else:
                j = pmod(nh, HOURS)
                for k in range(h - nh):
                    j = j + 1 if j + 1 < HOURS else 0
                    c.hour_count[j] = 0
                    c.hour_sum[j] = 0
            if d - nd >= DAYS:
                memset(c.day_count, 0, sizeof(c.day_count))
                memset(c.day_sum, 0, sizeof(c.day_sum))
            else:
                j = nd & (DAYS - 1)
                for k in range(d - nd):
                    j = (j + 1) & (DAYS - 1)
                    c.day_count[j] = 0
                    c.day_sum[j] = 0
            c.prev_ts = c.last_ts
            c.last_ts = t
            c.last_amount = a
            nh = h
            nd = d
        else:
            st.late += 1
    # A saturated bucket stops its sum with its count, so its average stays that of the
    # transactions it counted (the sum of 70 000 spends of 1.00 over a count of 65 535 read 1.068).
    if h > nh - HOURS:
        j = pmod(h, HOURS)
        if c.hour_count[j] != UINT16_MAX:
            c.hour_count[j] += 1
            c.hour_sum[j] = c.hour_sum[j] + a
    else:
        st.hour_dropped += 1
    if d > nd - DAYS:
        j = pmod(d, DAYS)
        if c.day_count[j] != UINT16_MAX:
            c.day_count[j] += 1
            c.day_sum[j] = c.day_sum[j] + a
    else:
        st.too_old += 1


cdef inline void span_sum(const uint16_t* cnt, const float* sm, int64_t a, int64_t b,
                          int64_t* c, double* s) noexcept nogil:
    # Buckets a..b-1 of one ring; two accumulators halve the chain of dependent adds.
    cdef int64_t k, cc = 0
    cdef double s0 = 0, s1 = 0
    for k in range(a, b):
        cc += cnt[k]
    k = a
    while k + 1 < b:
        s0 += sm[k]
        s1 += sm[k + 1]
        k += 2
    if k < b:
        s0 += sm[k]
    c[0] += cc
    s[0] += s0 + s1


cdef inline void ring_sum(const uint16_t* cnt, const float* sm, int64_t ring, int64_t lo,
                          int64_t hi, int64_t* c, double* s) noexcept nogil:
    # Buckets of absolute indices lo..hi (inclusive, at most `ring` of them): one or two spans.
    if hi < lo:
        return
    cdef int64_t a = pmod(lo, ring), b = a + (hi - lo + 1)
    if b <= ring:
        span_sum(cnt, sm, a, b, c, s)
    else:
        span_sum(cnt, sm, a, ring, c, s)
        span_sum(cnt, sm, 0, b - ring, c, s)


cdef inline void days_back(const CardRec* c, int64_t nd, int first, int last, int64_t* cnt,
                           double* sm) noexcept nogil:
    """Count and amount sum of days nd-first..nd-last back (last - first even) into *cnt, *sm,
    in two interleaved accumulators (days first, first+2, ... and first+1, first+3, ...) joined
    at day last: the fixed order every read of the newest day has used, so sums are repeatable."""
    cdef int64_t ca = 0, cb = 0, j
    cdef double sa = 0, sb = 0
    cdef int a
    for a in range(first, last, 2):
        j = (nd - a) & (DAYS - 1)
        ca += c.day_count[j]
        sa += c.day_sum[j]
        j = (nd - a - 1) & (DAYS - 1)
        cb += c.day_count[j]
        sb += c.day_sum[j]
    j = (nd - last) & (DAYS - 1)
    cnt[0] = ca + (c.day_count[j] + cb)
    sm[0] = sa + (c.day_sum[j] + sb)


cdef inline double sat_f32(double x) noexcept nogil:
    """x within the finite float32 range (NaN stays NaN): a ratio over a tiny or zero average
    saturates at the largest finite float32 instead of becoming infinite."""
    if x > FLT_MAX:
        return FLT_MAX
    if x < -FLT_MAX:
        return -FLT_MAX
    return x


cdef inline void card_read(const CardRec* c, int64_t t, double amount, int64_t gap,
                           float* o, double* ratio_8_30, double* older) noexcept nogil:
    """The K_CARD features of a row at time t (after any add), from the buckets still in the
    rings; *older: the average amount over days 8..30 back (the exact float64 sum of those days'
    buckets over their count; NaN without a transaction there), *ratio_8_30: amount / *older
    (0 unless *older > 0). The common case, a row in the card's newest hour (day), sums fixed
    sets of ring positions without branches; any other row clips its window to the ring's range
    first."""
    cdef int64_t nh = floor_div(c.last_ts, MS_PER_HOUR), nd = floor_div(c.last_ts, MS_PER_DAY)
    cdef int64_t rh = floor_div(t, MS_PER_HOUR), rd = floor_div(t, MS_PER_DAY), lo, hi, j
    cdef int64_t c1 = 0, c7 = 0, cold = 0, c30, c1b = 0
    cdef double s1 = 0, s7 = 0, sold = 0, s30, avg1 = 0, avg7 = 0, avg30 = 0
    cdef double s1b = 0
    if rh == nh:
        # The window is the whole hourly ring (the ring holds exactly hours nh-23..nh).
        for j in range(0, HOURS, 2):
            c1 += c.hour_count[j]
            c1b += c.hour_count[j + 1]
            s1 += c.hour_sum[j]
            s1b += c.hour_sum[j + 1]
        c1 += c1b
        s1 += s1b
    else:
        lo = rh - (HOURS - 1) if rh > nh else nh - (HOURS - 1)
        hi = rh if rh < nh else nh
        ring_sum(c.hour_count, c.hour_sum, HOURS, lo, hi, &c1, &s1)
    if rd == nd:
        # Days nd-6..nd make the 7-day window; with nd-29..nd-7 ("cold") the 30-day one.
        days_back(c, nd, 0, 6, &c7, &s7)
        days_back(c, nd, 7, 29, &cold, &sold)
    else:
        lo = rd - 29 if rd - 29 > nd - (DAYS - 1) else nd - (DAYS - 1)
        hi = rd if rd < nd else nd
        ring_sum(c.day_count, c.day_sum, DAYS, lo if lo > rd - 6 else rd - 6, hi, &c7, &s7)
        ring_sum(c.day_count, c.day_sum, DAYS, lo, hi if hi < rd - 7 else rd - 7, &cold, &sold)
    c30 = c7 + cold
    s30 = s7 + sold
    if c1 > 0:
        avg1 = s1 / c1
    if c7 > 0:
        avg7 = s7 / c7
    if c30 > 0:
        avg30 = s30 / c30
    o[0] = <float>c1
    o[1] = <float>avg1
    o[2] = <float>c7
    o[3] = <float>avg7
    o[4] = <float>c30
    o[5] = <float>avg30
    o[6] = <float>sat_f32(amount / avg7) if avg7 > 0 else 0
    o[7] = <float>sat_f32(amount / avg30) if avg30 > 0 else 0
    o[8] = <float>log1p(gap / 1000.0) if gap >= 0 else -1
    ratio_8_30[0] = sat_f32(amount / (sold / cold)) if cold > 0 and sold > 0 else 0
    older[0] = sold / cold if cold > 0 else NAN


cdef inline void card_missing(float* o) noexcept nogil:
    cdef int j
    for j in range(8):
        o[j] = 0
    o[8] = -1
    o[9] = NAN


cdef double PEAK_TAU_MS = 7.0 * MS_PER_DAY   # the peak amount ratio's decay time constant


cdef inline double card_peak(const CardRec* c, int64_t t, bint upd) noexcept nogil:
    """The card's peak amount ratio before a row at t: the largest amount relative to the card's
    average over days 8..30 back (at its time) among the card's earlier transactions, each
    decayed by exp(-age / 7 days); NaN for a card's first row. A compromised card's first large
    spend raises it for the spends that follow. Kept as one value updated per transaction
    (peak = max(peak decayed to now, this ratio); a late row's ratio decayed by its lateness, see
    card_peak_add), so a late row reads it undecayed (as of the newest, later rows included) and
    a re-read of the newest row gets what that row read, plus any late row's decayed ratio."""
    if c.last_ts == NONE:
        return NAN
    if not upd and t == c.last_ts:
        return c.peak_read
    if t > c.last_ts:
        return c.peak * exp(-<double>(t - c.last_ts) / PEAK_TAU_MS)
    return c.peak


cdef inline void card_peak_add(CardRec* c, int64_t last, int64_t t, double peak,
                               double ratio) noexcept nogil:
    """Fold a counted row's ratio into the peak; last: the card's newest time before the row.
    A late row (t < last) enters decayed by its lateness, exp(-(last - t) / 7 days), into both
    the peak and peak_read (what the newest read), where one engine that saw the rows in time
    order has it (card_merge_peak folds a record's earlier rows the same way), so the peak does
    not depend on the order rows arrive in (within float32 rounding of the decayed chain)."""
    cdef double v
    if last != NONE and t < last:
        v = sat_f32(<float>ratio * exp(-<double>(last - t) / PEAK_TAU_MS))
        if v > c.peak:
            c.peak = <float>v
        if v > c.peak_read or c.peak_read != c.peak_read:
            c.peak_read = <float>v
        return
    c.peak_read = <float>peak
    if last == NONE:
        peak = 0
    c.peak = <float>(ratio if ratio > peak else peak)


cdef inline void merge_bucket(uint16_t* cnt, float* sm, uint16_t oc, float os) noexcept nogil:
    """Add an older record's bucket (count oc, sum os) into the newer one's *cnt, *sm, saturating
    as card_add does: past 65 535 the older record's transactions count first (they are likely
    the earlier ones), then the share of the newer's that fits, at their average amount, so the
    bucket's average stays that of the transactions it counts."""
    cdef uint16_t room = UINT16_MAX - oc
    if cnt[0] <= room:
        cnt[0] = cnt[0] + oc
        sm[0] = sm[0] + os
    else:   # cnt[0] > room >= 0
        sm[0] = os + <float>(<double>sm[0] * room / cnt[0])
        cnt[0] = UINT16_MAX


cdef inline double card_ratio_at(const CardRec* c, int64_t t, double amount) noexcept nogil:
    """The 8-30-day amount ratio (card_read's ratio_8_30) that a counted row at t computed when it
    was the card's newest, from c's rings (c's newest day no earlier than the row's): the days of
    its window summed in card_read's order for the newest day when the ring still holds them all
    (the row's day no more than 2 days before c's newest), else what is left of them."""
    cdef int64_t nd = floor_div(c.last_ts, MS_PER_DAY), rd = floor_div(t, MS_PER_DAY), cold = 0, lo
    cdef double sold = 0
    if nd - 2 <= rd <= nd:
        days_back(c, rd, 7, 29, &cold, &sold)
    else:
        lo = rd - 29 if rd - 29 > nd - (DAYS - 1) else nd - (DAYS - 1)
        ring_sum(c.day_count, c.day_sum, DAYS, lo, rd - 7 if rd - 7 < nd else nd, &cold, &sold)
    return sat_f32(amount / (sold / cold)) if cold > 0 and sold > 0 else 0


cdef int card_fresh_rows(const CardRec* f, int64_t* ts, double* amount) noexcept nogil:
    """If record f began with no history (its peak is 0: every ratio it computed was 0) and
    every transaction its daily ring holds is in its hourly ring (the last 24 hours), its
    transactions as card_merge replays them, in time order, into ts and amount (at most
    MAX_FRESH_ROWS), and their number; else -1. The newest is exact (time, float32 amount); the
    others of each hour bucket are one row of their average amount at the bucket's start, or at
    the previous event time when that falls in the bucket (they are then that one transaction,
    exactly when it is alone there)."""
    cdef int64_t fh, k, hc = 0, dc = 0, t
    cdef int j, n = 0, cnt
    cdef double s
    if f.last_ts == NONE or not (f.peak == 0):
        return -1
    for j in range(HOURS):
        if f.hour_count[j] == UINT16_MAX:
            return -1
        hc += f.hour_count[j]
    for j in range(DAYS):
        dc += f.day_count[j]
    if hc != dc:
        return -1
    fh = floor_div(f.last_ts, MS_PER_HOUR)
    for k in range(fh - (HOURS - 1), fh + 1):
        j = <int>pmod(k, HOURS)
        cnt = f.hour_count[j]
        s = f.hour_sum[j]
        if k == fh:  # the newest, added below
            cnt -= 1
            s -= f.last_amount
        if cnt > 0:
            t = k * MS_PER_HOUR
            if f.prev_ts != NONE and floor_div(f.prev_ts, MS_PER_HOUR) == k and f.prev_ts <= f.last_ts:
                t = f.prev_ts
            ts[n] = t
            amount[n] = s / cnt
            n += 1
    ts[n] = f.last_ts
    amount[n] = f.last_amount
    return n + 1


cdef void card_merge_peak(CardRec* c, const CardRec* n, const CardRec* o) noexcept nogil:
    """The merged record c's peak and peak_read, from the newer record n and the older o as they
    were (c holds the summed rings and n's times).

    The common case of a handover: one record holds the card's history and the other began
    without it (card_fresh_rows: its peak is 0, i.e. every ratio it computed was 0, and its
    transactions are all within the 24 hours before its newest; n is tried first). That one's
    ratios are computed again against c's rings (card_ratio_at), which hold the history, and go
    into the other's peak as one engine that saw every transaction in time order puts them: one
    after the other's newest continues its chain (decay, then max, as card_peak and
    card_peak_add do), an earlier one (a stale client's transaction at the old owner) is added
    decayed to the other's newest time (what card_peak_add does with a late row). What this
    gives, against that one engine:
    - bit for bit when the record without history holds at most two transactions, all after the
      other's newest, with amounts float32 holds exactly, as whole units below 2**24 (their
      times are its newest and previous ones; amounts with cents: a ratio can differ in the
      last bit, computed from the float32 amount);
    - its other transactions are known only by hour bucket (count and sum): one alone in its
      hour counts from the hour's start (if it set the peak: up to an hour's decay, 0.6 %, low),
      several sharing an hour as transactions of their average amount (if one of them set the
      peak: low, by up to the share of the others, e.g. -49 % for 3 in one minute);
    - an earlier one is exact within float32 rounding (the one engine rounds the decayed peak at
      each of the other's later transactions, this once);
    - the other's ratios are right only if it saw every transaction before its newest; those of
      its transactions that have the other record's in their 8-30-day window (7 days later or
      more) were computed without them, and stay so; a transaction more than 2 days older than
      c's newest is measured against what c's daily ring still holds of its window.
    Otherwise (neither began without history: both hold more than 24 hours of transactions, or
    nonzero ratios) nothing can be computed again: the larger of both peaks, the older decayed
    to the newer time, each side's ratios as computed without the other's transactions."""
    cdef int64_t ts[MAX_FRESH_ROWS + 1]
    cdef double amount[MAX_FRESH_ROWS + 1]
    cdef const CardRec* h = o   # the record whose peak the other's transactions go into
    cdef int m = card_fresh_rows(n, ts, amount), j
    cdef double p, pr, ratio, v, decayed
    cdef int64_t tp
    if m < 0:
        h = n
        m = card_fresh_rows(o, ts, amount)
    if m < 0:
        decayed = o.peak * exp(-<double>(n.last_ts - o.last_ts) / PEAK_TAU_MS)
        if decayed > c.peak:
            c.peak = <float>decayed
        return
    p, pr, tp = h.peak, h.peak_read, h.last_ts
    for j in range(m):
        ratio = card_ratio_at(c, ts[j], amount[j])
        if ts[j] < h.last_ts:  # before the other's newest, which read it decayed
            v = sat_f32(<float>ratio * exp(-<double>(h.last_ts - ts[j]) / PEAK_TAU_MS))
            if v > p:
                p = v
            if v > pr or pr != pr:
                pr = v
        else:
            pr = sat_f32(<float>p * exp(-<double>(ts[j] - tp) / PEAK_TAU_MS))
            p = <float>(ratio if ratio > pr else pr)
            tp = ts[j]
    c.peak = <float>p
    c.peak_read = <float>pr


cdef void card_merge(CardRec* c, const CardRec* o) noexcept nogil:
    """Add record o's transactions into c, both of the same card (a handover: the two saw
    disjoint sets of its transactions). The rings are summed over the buckets both still hold,
    aligned to the newer record's time (a bucket past 65 535 transactions saturates as
    merge_bucket says); a bucket only the older record still holds is older than every window of
    the newer one. Newest and previous times and amount come from the newer record, the peak
    from card_merge_peak; the fraud memory is the later of both. c keeps its key."""
    cdef CardRec old, new
    cdef uint64_t key = c.key
    cdef int64_t nh, nd, oh, od, k, lo
    if o.last_ts == NONE:
        return
    if c.last_ts == NONE or o.last_ts > c.last_ts:
        old = c[0]   # c becomes the newer record, old the one added into it
        c[0] = o[0]
        c.key = key
    else:
        old = o[0]
    if old.last_ts == NONE:
        return
    new = c[0]
    nh, nd = floor_div(c.last_ts, MS_PER_HOUR), floor_div(c.last_ts, MS_PER_DAY)
    oh, od = floor_div(old.last_ts, MS_PER_HOUR), floor_div(old.last_ts, MS_PER_DAY)
    lo = nh - HOURS + 1 if nh - HOURS > oh - HOURS else oh - HOURS + 1
    for k in range(lo, oh + 1):
        merge_bucket(&c.hour_count[pmod(k, HOURS)], &c.hour_sum[pmod(k, HOURS)],
                     old.hour_count[pmod(k, HOURS)], old.hour_sum[pmod(k, HOURS)])
    lo = nd - DAYS + 1 if nd - DAYS > od - DAYS else od - DAYS + 1
    for k in range(lo, od + 1):
        merge_bucket(&c.day_count[pmod(k, DAYS)], &c.day_sum[pmod(k, DAYS)],
                     old.day_count[pmod(k, DAYS)], old.day_sum[pmod(k, DAYS)])
    if old.last_ts > c.prev_ts:
        c.prev_ts = old.last_ts
    card_merge_peak(c, &new, &old)
    if old.fraud_mark > c.fraud_mark:  # a later hour (or the same, card-linked)
        c.fraud_mark = old.fraud_mark
        c.fraud_terminal = old.fraud_terminal


cdef inline void prefetch_card(const CardRec* c) noexcept nogil:
    cdef const char* p = <const char*>c
    cdef size_t off
    for off in range(0, sizeof(CardRec), 64):
        ZF_PREFETCH(p + off)
    ZF_PREFETCH(p + sizeof(CardRec) - 1)


cdef class CardState:
    """Hourly and daily rings for up to `capacity` cards (see the module docstring).

    CardState(capacity): capacity records of CARD_DTYPE and 2 x capacity index slots, allocated
    zeroed (pages cost memory only once cards reach them).
    """
    cdef Table tb
    cdef CardRec* recs
    cdef CardStats st
    cdef int64_t newest_ts
    cdef object _recs, _slots

    def __init__(self, capacity):
        capacity = _check_capacity(capacity)
        self._bind(np.zeros(capacity, CARD_DTYPE), 0)
        self.newest_ts = NONE

    cdef _bind(self, recs, uint64_t used):
        """Own this record array and a fresh, empty index, and point the table at them."""
        cdef uint64_t capacity = recs.shape[0]
        self._recs = recs
        self._slots = np.zeros(2 * capacity, np.uint64)
        self.recs = <CardRec*>data_of(recs)
        self.tb.slots = <uint64_t*>data_of(self._slots)
        self.tb.m = 2 * capacity
        self.tb.keys = <char*>&self.recs[0].key
        self.tb.ages = <char*>&self.recs[0].last_ts
        self.tb.key_stride = sizeof(CardRec)
        self.tb.age_stride = sizeof(CardRec)
        self.tb.capacity = capacity
        self.tb.used = used
        self.tb.cursor = 0
        self.tb.evicted = 0
        self.tb.expired = 0
        self.st = CardStats(0, 0, 0, 0)

    @property
    def capacity(self):
        return self.tb.capacity

    def __len__(self):
        return self.tb.used

    @property
    def bytes_per_card(self):
        """Bytes of all arrays (records and index) per card of capacity."""
        return (self._recs.nbytes + self._slots.nbytes) / self.tb.capacity

    def update_and_read(self, const uint64_t[::1] keys, const int64_t[::1] ts_ms,
                        const double[::1] amount, const uint8_t[::1] update, float[:, ::1] out,
                        double[::1] older=None):
        """Add (where update[i] != 0) then read each row, in row order.

        keys: (n,) uint64, mixed; ts_ms: (n,) int64 epoch ms; amount: (n,) float64, finite;
        update: (n,) uint8, 0 = read only; out: (n, 10) float32, CARD_NAMES order;
        older: None, or (n,) float64 to receive the card's average amount over days 8..30 back
        (the exact float64 sum of those days' buckets over their count, NaN when they hold no
        transaction or the card is unknown): window_features' card_avg_amount_8_30d, which the
        float32 7- and 30-day columns cannot give (their difference loses the older weeks after
        a large recent spend).
        """
        cdef Py_ssize_t n = keys.shape[0], i
        if (ts_ms.shape[0] != n or amount.shape[0] != n or update.shape[0] != n
                or out.shape[0] != n or out.shape[1] != K_CARD
                or (older is not None and older.shape[0] != n)):
            raise ValueError(
                f"expected keys, ts_ms, amount, update of length {n}, out ({n}, {K_CARD}) and "
                f"older None or ({n},); got {ts_ms.shape[0]}, {amount.shape[0]}, "
                f"{update.shape[0]}, ({out.shape[0]}, {out.shape[1]}) and "
                f"{None if older is None else (older.shape[0],)}")
        if n == 0:
            return
        cdef uint64_t key
        cdef int64_t s, t, gap, last
        cdef double peak, ratio, avg_old
        cdef double* old_out = NULL if older is None else &older[0]
        cdef bint upd
        cdef CardRec* c
        cdef float* o = &out[0, 0]
        with nogil:
            for i in range(n):
                if i + AHEAD < n:
                    ZF_PREFETCH(self.tb.slots + home(&self.tb, keys[i + AHEAD]))
                if i + AHEAD // 2 < n:
                    self._prefetch_row(keys[i + AHEAD // 2])
                key = keys[i]
                t = ts_ms[i]
                upd = update[i] != 0
                if upd and t > self.newest_ts:
                    self.newest_ts = t
                s = tb_find(&self.tb, key)
                if s >= 0:
                    c = &self.recs[slot_row(self.tb.slots[s])]
                elif upd:
                    c = &self.recs[tb_acquire(&self.tb, key, -1 - s, self.newest_ts - CARD_IDLE_MS)]
                    card_reset(c, key)
                else:
                    self.st.read_missing += 1
                    card_missing(o + i * K_CARD)
                    if old_out != NULL:
                        old_out[i] = NAN
                    continue
                gap = card_gap(c, t, upd)
                peak = sat_f32(card_peak(c, t, upd))   # finite even from a snapshot holding inf
                last = c.last_ts
                if upd:
                    card_add(c, &self.st, t, amount[i])
                card_read(c, t, amount[i], gap, o + i * K_CARD, &ratio, &avg_old)
                o[i * K_CARD + 9] = <float>peak
                if old_out != NULL:
                    old_out[i] = avg_old
                if upd:
                    card_peak_add(c, last, t, peak, ratio)

    cdef inline void _prefetch_row(self, uint64_t key) noexcept nogil:
        # The record of a row a few rows on, if its key sits in its home slot (fetched earlier).
        # A hint only: a look-up made stale by the rows in between costs a wasted fetch.
        cdef uint64_t e = self.tb.slots[home(&self.tb, key)]
        if e != 0 and (e >> 32) == (key >> 32):
            prefetch_card(&self.recs[slot_row(e)])

    def label_frauds(self, const uint64_t[::1] keys, const uint64_t[::1] terminals,
                     const int64_t[::1] ts_ms, uint8_t[::1] flags, uint64_t[::1] prev_terminal,
                     int64_t[::1] prev_ts):
        """Classify confirmed frauds as card-linked or not, in row order, remembering each card's
        latest one (a compromised card spends at many terminals; a compromised terminal takes
        one fraud from each of many cards).

        A fraud is card-linked when the card's remembered fraud is within FRAUD_LINK_HOURS of it
        (by UTC hour) and was at another terminal or is itself card-linked; it is then
        remembered as card-linked unless it is older than the remembered one. When the
        remembered fraud was at another terminal and not yet card-linked, it becomes so now:
        flags[i] bit 1 set, prev_terminal[i] / prev_ts[i] (the start of its hour) say which.
        flags[i] bit 0: fraud i is card-linked. Cards the table does not hold are not added:
        flags[i] = 0. The caller counts the results (zfraud.features).

        keys: (n,) uint64 mixed card keys; terminals: (n,) uint64 mixed terminal keys; ts_ms:
        (n,) int64, the frauds' transaction times; flags (n,) uint8, prev_terminal (n,) uint64
        and prev_ts (n,) int64 are written.
        """
        cdef Py_ssize_t n = keys.shape[0], i
        if (terminals.shape[0] != n or ts_ms.shape[0] != n or flags.shape[0] != n
                or prev_terminal.shape[0] != n or prev_ts.shape[0] != n):
            raise ValueError(f"expected terminals, ts_ms, flags, prev_terminal and prev_ts of "
                             f"length {n}, got {terminals.shape[0]}, {ts_ms.shape[0]}, "
                             f"{flags.shape[0]}, {prev_terminal.shape[0]} and {prev_ts.shape[0]}")
        cdef int64_t s, h, mh, link = FRAUD_LINK_HOURS
        cdef bint marked, linked
        cdef CardRec* c
        with nogil:
            for i in range(n):
                flags[i] = 0
                prev_terminal[i] = 0
                prev_ts[i] = 0
                s = tb_find(&self.tb, keys[i])
                if s < 0:
                    continue
                c = &self.recs[slot_row(self.tb.slots[s])]
                h = floor_div(ts_ms[i], MS_PER_HOUR)
                linked = False
                if c.fraud_mark != FRAUD_NONE:
                    mh = floor_div(c.fraud_mark, 2)
                    marked = c.fraud_mark - 2 * mh
                    if -link <= h - mh <= link and (marked or c.fraud_terminal != terminals[i]):
                        linked = True
                        flags[i] = 1
                        if not marked:
                            flags[i] = 3
                            prev_terminal[i] = c.fraud_terminal
                            prev_ts[i] = mh * MS_PER_HOUR
                            c.fraud_mark = <int32_t>(2 * mh + 1)
                    if h < mh:
                        continue  # an older fraud: the newer one stays remembered
                if -(1 << 30) <= h < (1 << 30):  # an hour index fits the mark (+-122 000 years)
                    c.fraud_mark = <int32_t>(2 * h + (1 if linked else 0))
                    c.fraud_terminal = terminals[i]

    def keys(self):
        """The (mixed) keys of the cards held, in row order: a copy."""
        return self._recs["key"][:self.tb.used].copy()

    def take(self, const uint64_t[::1] keys):
        """Remove the cards with these (mixed) keys and return their records (CARD_DTYPE, in the
        order given; keys not held are skipped): a card handed over to its new owner. The last
        row moves into each freed row, so rows stay dense."""
        cdef Py_ssize_t n = keys.shape[0], i, m = 0
        out = np.zeros(n, CARD_DTYPE)
        if n == 0 or self.tb.used == 0:
            return out[:0]
        cdef CardRec* o = <CardRec*>data_of(out)
        cdef int64_t s
        cdef uint64_t r, last
        with nogil:
            for i in range(n):
                s = tb_find(&self.tb, keys[i])
                if s < 0:
                    continue
                r = slot_row(self.tb.slots[s])
                o[m] = self.recs[r]
                m += 1
                tb_delete(&self.tb, <uint64_t>s)
                last = self.tb.used - 1
                if r != last:
                    self.recs[r] = self.recs[last]
                    s = tb_find(&self.tb, self.recs[r].key)  # its slot still names the last row
                    self.tb.slots[s] = (self.tb.slots[s] & ~ZF_LOW32) | (r + 1)
                memset(&self.recs[last], 0, sizeof(CardRec))
                self.tb.used -= 1
            if self.tb.cursor >= self.tb.used:
                self.tb.cursor = 0
        return out[:m]

    def put(self, recs):
        """Add handed-over records (a CARD_DTYPE array, as take returns): a card not held takes
        a row by the capacity policy, a card held gets both records' transactions (card_merge:
        the rings summed, so a card that some transactions reached here before its record did
        loses none of them, and their peak amount ratios computed again against its history,
        card_merge_peak). Records with no transaction are skipped. Returns (added, merged).
        The table's newest event time is not moved: only transactions move it."""
        recs = np.ascontiguousarray(recs)
        if not recs.flags.writeable:  # a view of a received frame
            recs = recs.copy()
        if recs.dtype != CARD_DTYPE or recs.ndim != 1:
            raise ValueError(f"expected a 1-d array of CARD_DTYPE records, got {recs.dtype} {recs.shape}")
        cdef Py_ssize_t n = recs.shape[0], i
        cdef int64_t added = 0, merged = 0, s
        cdef int64_t expire_before = NONE if self.newest_ts == NONE else self.newest_ts - CARD_IDLE_MS
        if n == 0:
            return 0, 0
        cdef const CardRec* src = <const CardRec*>data_of(recs)
        cdef CardRec* c
        with nogil:
            for i in range(n):
                if src[i].last_ts == NONE:
                    continue
                s = tb_find(&self.tb, src[i].key)
                if s >= 0:
                    card_merge(&self.recs[slot_row(self.tb.slots[s])], &src[i])
                    merged += 1
                else:
                    c = &self.recs[tb_acquire(&self.tb, src[i].key, -1 - s, expire_before)]
                    c[0] = src[i]
                    added += 1
        return added, merged

    def stats(self):
        """Counters: cards held, capacity, evictions, expiries and out-of-order outcomes."""
        return {"cards": self.tb.used, "capacity": self.tb.capacity,
                "evictions": self.tb.evicted, "expiries": self.tb.expired,
                "late": self.st.late, "hour_dropped": self.st.hour_dropped,
                "too_old": self.st.too_old, "read_missing": self.st.read_missing,
                "newest_ts": None if self.newest_ts == NONE else self.newest_ts}

    def snapshot(self):
        """The state as a dict of numpy arrays (copies): one per CARD_DTYPE field, of the used
        rows, plus kind, newest_ts, cursor and stats (CARD_STATS order)."""
        n = self.tb.used
        snap = {name: self._recs[name][:n].copy() for name in CARD_DTYPE.names}
        snap["kind"] = np.array("zfraud.CardState/1")
        snap["newest_ts"] = np.array(self.newest_ts, np.int64)
        snap["cursor"] = np.array(self.tb.cursor, np.int64)
        snap["stats"] = np.array([self.tb.evicted, self.tb.expired, self.st.late,
                                  self.st.hour_dropped, self.st.too_old, self.st.read_missing],
                                 np.int64)
        return snap

    def restore(self, snap):
        """Replace the state by a snapshot's (at most `capacity` cards). On a missing array, a
        wrong dtype or shape, or a repeated key: ValueError, and the state is left as it was."""
        record = [(name, CARD_DTYPE.fields[name][0].base, CARD_DTYPE.fields[name][0].shape)
                  for name in CARD_DTYPE.names]
        n, got = _expect_rows(snap, "zfraud.CardState/1", record, self.tb.capacity)
        (newest,), cursor = _expect_scalars(snap, ["newest_ts"], n)
        stats = _expect(snap, "stats", np.int64, (len(CARD_STATS),))
        recs = np.zeros(self.tb.capacity, CARD_DTYPE)
        for name in CARD_DTYPE.names:
            recs[name][:n] = got[name]
        cdef Table saved = self.tb
        cdef CardStats saved_st = self.st
        old_recs, old_slots = self._recs, self._slots
        self._bind(recs, n)
        bad = tb_rebuild(&self.tb)
        if bad >= 0:
            self._recs, self._slots, self.tb, self.st = old_recs, old_slots, saved, saved_st
            self.recs = <CardRec*>data_of(old_recs)
            raise ValueError(f"snapshot 'key': expected distinct keys, got "
                             f"{int(got['key'][bad]):#x} again at row {bad}")
        self.tb.cursor = cursor
        self.newest_ts = newest
        self.tb.evicted, self.tb.expired = stats[0], stats[1]
        self.st = CardStats(stats[2], stats[3], stats[4], stats[5])


# ------------------------------------------------------------------------------------------------
# Terminals.

ctypedef struct TermCols:
    int64_t* last_bucket
    uint32_t* tx              # [(row * ring + pos) * sources + slot]
    uint32_t* total           # [row * ring + pos]: tx summed over the slots (derived)
    uint32_t* stamp           # [row * ring + pos]
    uint32_t* row_stamp       # [row]: max stamp of the row (derived)
    int64_t* row_low          # [row]: oldest bucket changed while row_stamp is the current version
    int64_t ring
    int64_t sources

ctypedef struct TermStats:
    int64_t too_old           # adds, frauds and merges older than the terminal's ring
    int64_t read_missing
    int64_t merged            # bucket values raised by merge


cdef inline void term_reset(TermCols* c, uint64_t r) noexcept nogil:
    c.last_bucket[r] = NONE
    c.row_stamp[r] = 0
    c.row_low[r] = NONE
    memset(c.tx + r * c.ring * c.sources, 0, c.ring * c.sources * sizeof(uint32_t))
    memset(c.total + r * c.ring, 0, c.ring * sizeof(uint32_t))
    memset(c.stamp + r * c.ring, 0, c.ring * sizeof(uint32_t))


cdef inline void term_stamp(TermCols* c, int64_t r, int64_t b, int64_t bucket, uint32_t version) noexcept nogil:
    """Mark bucket `bucket` (at index b) of row r changed in `version`, keeping the row's oldest
    bucket changed in this version, so that export() reads only the buckets after it."""
    c.stamp[b] = version
    if c.row_stamp[r] != version:
        c.row_stamp[r] = version
        c.row_low[r] = bucket
    elif bucket < c.row_low[r]:
        c.row_low[r] = bucket


cdef inline uint64_t ring_total(const uint32_t* ring, int64_t size, int64_t lo, int64_t hi,
                              int64_t oldest, int64_t top) noexcept nogil:
    """Sum of one row's ring buckets for bucket indices [lo, hi) clipped to [oldest, top) (the
    buckets the ring holds): at most two contiguous runs, so the loops vectorise."""
    cdef uint64_t total = 0
    cdef int64_t a, n, first, k
    if lo < oldest:
        lo = oldest
    if hi > top:
        hi = top
    if hi <= lo:
        return 0
    a = pmod(lo, size)
    n = hi - lo
    first = n if n < size - a else size - a
    for k in range(first):
        total += ring[a + k]
    for k in range(n - first):
        total += ring[k]
    return total


cdef inline int64_t term_bucket(TermCols* c, TermStats* st, uint64_t r, int64_t bucket) noexcept nogil:
    """Index (row * ring + pos) of row r's slot for `bucket`, moving the ring forward when bucket
    is newer than its newest; -1 when bucket is older than the ring."""
    cdef int64_t last = c.last_bucket[r], k, j, b
    if last == NONE:
        c.last_bucket[r] = bucket
    elif bucket > last:
        j = pmod(last, c.ring)
        for k in range(bucket - last if bucket - last < c.ring else c.ring):
            j = j + 1 if j + 1 < c.ring else 0
            b = <int64_t>r * c.ring + j
            memset(c.tx + b * c.sources, 0, c.sources * sizeof(uint32_t))
            c.total[b] = 0
            c.stamp[b] = 0
        c.last_bucket[r] = bucket
    elif bucket <= last - c.ring:
        st.too_old += 1
        return -1
    return <int64_t>r * c.ring + pmod(bucket, c.ring)


cdef inline void run_row(const TermCols* tc, int64_t rt, const Table* ftb, const TermCols* fc,
                         uint64_t key, int64_t b, int64_t newest, int64_t pd, float* o) noexcept nogil:
    """read_runs() of one row: rt is key's row in the transaction table (tc; -1: not held), ftb
    and fc the fraud table; b the row's bucket, newest = b - delay (partly labelled: ends no
    run). o[0:2] = (frauds in the run, days from its first bucket to b), (0, 0) without one."""
    cdef int64_t s, rf, k, lo, start = NONE, ring = tc.ring, last_t, last_f
    cdef uint64_t found = 0, tx, fr
    o[0] = 0
    o[1] = 0
    s = tb_find(ftb, key)
    if s < 0:
        return
    rf = <int64_t>slot_row(ftb.slots[s])
    last_f = fc.last_bucket[rf]
    last_t = tc.last_bucket[rt] if rt >= 0 else NONE
    # Buckets [lo, k]: those both rings hold, from the newer ring's newest (later ones are
    # empty) or from newest if earlier: at most one ring, however far ahead the row is dated.
    k = last_f if last_f > last_t else last_t
    lo = k - ring + 1
    if newest < k:
        k = newest
    while k >= lo:
        fr = fc.total[rf * ring + pmod(k, ring)] if k <= last_f else 0
        if fr > 0:
            found += fr
            start = k
        elif k < newest:
            tx = tc.total[rt * ring + pmod(k, ring)] if rt >= 0 and k <= last_t else 0
            if tx > 0:
                break
        k -= 1
    if found:
        o[0] = <float>found
        o[1] = <float>(<double>(b - start) / pd)


cdef _check_read(Py_ssize_t n, Py_ssize_t n_ts, Py_ssize_t rows, Py_ssize_t cols, int k,
                 int delay_days):
    """The arguments of TerminalState's reads: n keys, n times, out (n, k), delay_days >= 0."""
    if n_ts != n or rows != n or cols != k:
        raise ValueError(f"expected ts_ms of length {n} and out ({n}, {k}); got "
                         f"{n_ts} and ({rows}, {cols})")
    if delay_days < 0:
        raise ValueError(f"expected delay_days >= 0, got {delay_days}")


cdef class TerminalState:
    """Daily transaction G-counters and fraud counts for up to `capacity` terminals.

    TerminalState(capacity, max_sources=16, days=40, bucket_hours=24): source slots
    0..max_sources-1 and a ring covering `days` days in buckets of `bucket_hours` hours (a divisor
    of 24) per terminal (see the module docstring). Bucket indices, as add/merge/export use them,
    are floor(ts_ms / bucket length) since the epoch.
    """
    cdef Table tb
    cdef TermCols c
    cdef TermStats st
    cdef int64_t newest_bucket   # newest bucket index seen
    cdef int64_t bucket_ms, per_day
    cdef uint32_t version
    cdef dict _rows
    cdef object _slots, _total, _row_stamp, _row_low
    cdef readonly int days, max_sources, bucket_hours, buckets

    def __init__(self, capacity, max_sources=16, days=40, bucket_hours=24):
        capacity = _check_capacity(capacity)
        if not 1 <= max_sources <= 4096:
            raise ValueError(f"expected max_sources in [1, 4096], got {max_sources}")
        if not 1 <= days <= 4096:
            raise ValueError(f"expected days in [1, 4096], got {days}")
        if not (1 <= bucket_hours <= 24 and 24 % bucket_hours == 0):
            raise ValueError(f"expected bucket_hours dividing 24 (1, 2, 3, 4, 6, 8, 12, 24), got {bucket_hours}")
        self.days = days
        self.max_sources = max_sources
        self.bucket_hours = bucket_hours
        self.per_day = 24 // bucket_hours
        self.buckets = days * self.per_day
        self.bucket_ms = <int64_t>bucket_hours * MS_PER_HOUR
        self._bind({name: np.zeros((capacity,) + shape, dtype)
                    for name, dtype, shape in terminal_row(self.buckets, max_sources)}, capacity, 0)
        self.newest_bucket = NONE
        self.version = 1

    cdef _bind(self, dict rows, uint64_t capacity, uint64_t used):
        """Own these row arrays, fresh derived arrays and index, and point the table at them."""
        self._rows = rows
        self._slots = np.zeros(2 * capacity, np.uint64)
        self._total = np.zeros((capacity, self.buckets), np.uint32)
        self._row_stamp = np.zeros(capacity, np.uint32)
        self._row_low = np.full(capacity, NONE, np.int64)
        self.tb.slots = <uint64_t*>data_of(self._slots)
        self.tb.m = 2 * capacity
        self.tb.keys = data_of(rows["key"])
        self.tb.ages = data_of(rows["last_bucket"])
        self.tb.key_stride = sizeof(uint64_t)
        self.tb.age_stride = sizeof(int64_t)
        self.tb.capacity = capacity
        self.tb.used = used
        self.tb.cursor = 0
        self.tb.evicted = 0
        self.tb.expired = 0
        self.c.last_bucket = <int64_t*>data_of(rows["last_bucket"])
        self.c.tx = <uint32_t*>data_of(rows["tx"])
        self.c.stamp = <uint32_t*>data_of(rows["stamp"])
        self.c.total = <uint32_t*>data_of(self._total)
        self.c.row_stamp = <uint32_t*>data_of(self._row_stamp)
        self.c.row_low = <int64_t*>data_of(self._row_low)
        self.c.ring = self.buckets
        self.c.sources = self.max_sources
        self.st = TermStats(0, 0, 0)

    @property
    def capacity(self):
        return self.tb.capacity

    def __len__(self):
        return self.tb.used

    @property
    def bytes_per_terminal(self):
        total = (sum(a.nbytes for a in self._rows.values()) + self._slots.nbytes
                 + self._total.nbytes + self._row_stamp.nbytes + self._row_low.nbytes)
        return total / self.tb.capacity

    @property
    def current_version(self):
        """The version local changes are stamped with now; export() returns it and moves on."""
        return self.version

    cdef inline int64_t _row(self, uint64_t key, int64_t bucket) noexcept nogil:
        """Row of key (acquired and reset if new); bucket is the event's bucket index."""
        cdef int64_t s
        cdef uint64_t r
        if bucket > self.newest_bucket:
            self.newest_bucket = bucket
        s = tb_find(&self.tb, key)
        if s >= 0:
            return <int64_t>slot_row(self.tb.slots[s])
        r = tb_acquire(&self.tb, key, -1 - s, self.newest_bucket - self.c.ring + 1)
        term_reset(&self.c, r)
        (<uint64_t*>self.tb.keys)[r] = key
        return <int64_t>r

    def _check_slot(self, slot):
        if not 0 <= slot < self.max_sources:
            raise ValueError(f"expected a source slot in [0, {self.max_sources}), got {slot}")

    def add_tx(self, const uint64_t[::1] keys, const int64_t[::1] ts_ms, int slot,
               const uint8_t[::1] update=None, const uint32_t[::1] counts=None):
        """Count this worker's own transactions in its source slot, by their UTC bucket.

        keys: (n,) uint64 mixed terminal keys; ts_ms: (n,) int64; update: optional (n,) uint8,
        rows with 0 are skipped (duplicates); counts: optional (n,) uint32, what each row adds
        (default 1; a table of amounts adds amounts). Counts saturate at 2**32 - 1."""
        self._check_slot(slot)
        cdef Py_ssize_t n = keys.shape[0], i
        if (ts_ms.shape[0] != n or (update is not None and update.shape[0] != n)
                or (counts is not None and counts.shape[0] != n)):
            raise ValueError(f"expected ts_ms, update and counts of length {n}, got {ts_ms.shape[0]}, "
                             f"{update.shape[0] if update is not None else None} and "
                             f"{counts.shape[0] if counts is not None else None}")
        cdef bint masked = update is not None, weighted = counts is not None
        cdef uint32_t v
        with nogil:
            for i in range(n):
                if masked and update[i] == 0:
                    continue
                v = counts[i] if weighted else 1
                if v != 0:
                    self._add(keys[i], floor_div(ts_ms[i], self.bucket_ms), slot, v)

    cdef inline int64_t _add(self, uint64_t key, int64_t bucket, int slot, uint32_t v) noexcept nogil:
        """Add v (> 0) to key's bucket in `slot`, saturating; returns the key's row."""
        cdef int64_t r = self._row(key, bucket), b, idx
        cdef uint32_t room
        b = term_bucket(&self.c, &self.st, r, bucket)
        if b < 0:
            return r
        idx = b * self.c.sources + slot
        room = UINT32_MAX - self.c.tx[idx]
        if v > room:
            v = room
        room = UINT32_MAX - self.c.total[b]
        if v > room:  # the sum over the slots saturates too
            v = room
        if v:
            self.c.tx[idx] += v
            self.c.total[b] += v
        term_stamp(&self.c, r, b, bucket, self.version)
        return r

    def add_read(self, TerminalState frauds, const uint64_t[::1] keys, const int64_t[::1] ts_ms,
                 int slot, const uint8_t[::1] update, int delay_days, float[:, ::1] counts,
                 float[:, ::1] runs):
        """add_tx, read and read_runs in one loop in row order: each row is added (where
        update[i] != 0), then read, before the next row is added, so a batch gives exactly what
        one-row calls give (what FeatureEngine.transform uses; separate calls would let a row
        read the rows after it in its batch).

        frauds: a TerminalState with this one's ring; keys: (n,) uint64 mixed; ts_ms: (n,) int64;
        slot: this worker's source slot; update: (n,) uint8; delay_days >= 0;
        counts: (n, 3) float32, as read(); runs: (n, 2) float32, as read_runs()."""
        self._check_slot(slot)
        cdef Py_ssize_t n = keys.shape[0], i
        _check_read(n, ts_ms.shape[0], counts.shape[0], counts.shape[1], K_TERMINAL, delay_days)
        _check_read(n, ts_ms.shape[0], runs.shape[0], runs.shape[1], K_RUN, delay_days)
        if update.shape[0] != n:
            raise ValueError(f"expected update of length {n}, got {update.shape[0]}")
        if frauds.c.ring != self.c.ring or frauds.bucket_ms != self.bucket_ms:
            raise ValueError("expected a fraud table with the same buckets and ring")
        cdef int64_t s, r, bucket, back = <int64_t>delay_days * self.per_day
        with nogil:
            for i in range(n):
                bucket = floor_div(ts_ms[i], self.bucket_ms)
                if update[i] != 0:
                    r = self._add(keys[i], bucket, slot, 1)
                else:
                    s = tb_find(&self.tb, keys[i])
                    r = <int64_t>slot_row(self.tb.slots[s]) if s >= 0 else -1
                self._read_row(r, bucket - back + 1, &counts[i, 0])
                run_row(&self.c, r, &frauds.tb, &frauds.c, keys[i], bucket, bucket - back,
                        self.per_day, &runs[i, 0])

    cdef inline void _read_row(self, int64_t r, int64_t d, float* o) noexcept nogil:
        """read()'s counts of row r (-1: not held, zeros) for windows ending before bucket d."""
        cdef int64_t ring = self.c.ring, pd = self.per_day, last, oldest, top
        cdef uint64_t t1, t7, t30
        cdef const uint32_t* tot
        if r < 0:
            self.st.read_missing += 1
            o[0] = 0
            o[1] = 0
            o[2] = 0
            return
        tot = self.c.total + <uint64_t>r * ring
        last = self.c.last_bucket[r]
        oldest, top = last - ring + 1, last + 1    # buckets [oldest, top) are in the ring
        t1 = ring_total(tot, ring, d - pd, d, oldest, top)
        t7 = t1 + ring_total(tot, ring, d - 7 * pd, d - pd, oldest, top)
        t30 = t7 + ring_total(tot, ring, d - 30 * pd, d - 7 * pd, oldest, top)
        o[0] = <float>t1
        o[1] = <float>t7
        o[2] = <float>t30

    def read(self, const uint64_t[::1] keys, const int64_t[::1] ts_ms, int delay_days,
             float[:, ::1] out):
        """Each row's counts over 1, 7 and 30 days, summed over the slots, at bucket
        granularity: the n-day window of a row in bucket b is buckets (b - delay - n, b - delay]
        (delay and n in buckets): the book's (t - delay - n days, t - delay days] with both ends
        moved forward to the end of their bucket, the newest bucket partly labelled. Read from a
        table of transactions and one of frauds, they give the Handbook's terminal features
        (features.pyx, window_features).

        keys: (n,) uint64 mixed; ts_ms: (n,) int64; delay_days >= 0; out: (n, 3) float32.
        """
        cdef Py_ssize_t n = keys.shape[0], i
        _check_read(n, ts_ms.shape[0], out.shape[0], out.shape[1], K_TERMINAL, delay_days)
        cdef int64_t s, back = <int64_t>delay_days * self.per_day
        with nogil:
            for i in range(n):
                s = tb_find(&self.tb, keys[i])
                # windows end before bucket d = b - delay + 1
                self._read_row(<int64_t>slot_row(self.tb.slots[s]) if s >= 0 else -1,
                               floor_div(ts_ms[i], self.bucket_ms) - back + 1, &out[i, 0])

    def read_runs(self, TerminalState frauds, const uint64_t[::1] keys, const int64_t[::1] ts_ms,
                  int delay_days, float[:, ::1] out):
        """Each row's terminal fraud run, RUN_NAMES order. This table counts the transactions and
        `frauds` (same ring) the confirmed frauds. Walking back from bucket b - delay
        (b: the row's bucket; where read()'s windows end), buckets with a fraud extend the run,
        buckets without transactions or frauds are skipped, and the first bucket with transactions
        but no fraud ends it, except b - delay itself: its later labels are not in yet, so without
        a fraud it is skipped. Only buckets both rings hold are looked at.
        out[i] = (frauds in the run, days from the run's first bucket to b); (0, 0) without one.
        A terminal whose traffic has been all fraud for weeks reads a long run; a one-off fraud
        followed by genuine traffic reads none.

        frauds: a TerminalState with this one's ring; keys: (n,) uint64 mixed; ts_ms: (n,) int64;
        delay_days >= 0; out: (n, 2) float32.
        """
        cdef Py_ssize_t n = keys.shape[0], i
        _check_read(n, ts_ms.shape[0], out.shape[0], out.shape[1], K_RUN, delay_days)
        if frauds.c.ring != self.c.ring or frauds.bucket_ms != self.bucket_ms:
            raise ValueError("expected a fraud table with the same buckets and ring")
        cdef int64_t s, b, back = <int64_t>delay_days * self.per_day
        with nogil:
            for i in range(n):
                s = tb_find(&self.tb, keys[i])
                b = floor_div(ts_ms[i], self.bucket_ms)
                run_row(&self.c, <int64_t>slot_row(self.tb.slots[s]) if s >= 0 else -1, &frauds.tb,
                        &frauds.c, keys[i], b, b - back, self.per_day, &out[i, 0])

    def export(self, int slot, int64_t since):
        """Cumulative counts of one slot's buckets changed locally after version `since`.

        slot: a source slot; since: the version an earlier export returned (0: all
        counted locally so far), or -1 for every nonzero bucket including values learnt by merge
        (a full transfer, e.g. to a new peer). Merges do not stamp buckets, so peers' counts are
        not echoed back to them.
        Returns (keys uint64 (k,), buckets int32 (k,) bucket indices, counts uint32 (k,), version): pass
        version as `since` next time; local changes after this call get a later version.
        """
        self._check_slot(slot)
        if since < -1:
            raise ValueError(f"expected since >= -1, got {since}")
        if self.version == UINT32_MAX:
            raise OverflowError("export version counter exhausted; restore into a fresh state")
        cdef uint32_t cur = self.version
        self.version += 1
        cdef int64_t ring = self.c.ring, k, b, j, first
        cdef uint64_t r, count = 0, w = 0
        cdef bint every = since < 0
        cdef uint32_t v, after = <uint32_t>(0 if every else min(since, UINT32_MAX))
        # Exporting again since the last export (the common case): every change to report was
        # stamped `cur`, so a row's buckets older than its row_low are not read.
        cdef uint32_t recent = cur if not every and after + 1 == cur else 0
        cdef const uint32_t* src = self.c.tx
        cdef int64_t stride = self.c.sources, off = slot
        with nogil:
            for r in range(self.tb.used):
                if every or self.c.row_stamp[r] > after:
                    first = self._first_changed(r, recent)
                    j = pmod(first, ring)
                    for k in range(first, self.c.last_bucket[r] + 1):  # ring positions j, in bucket order
                        b = <int64_t>r * ring + j
                        if src[b * stride + off] != 0 and (every or self.c.stamp[b] > after):
                            count += 1
                        j = j + 1 if j + 1 < ring else 0
        keys_out = np.empty(count, np.uint64)
        days_out = np.empty(count, np.int32)
        counts_out = np.empty(count, np.uint32)
        if count == 0:
            return keys_out, days_out, counts_out, cur
        cdef uint64_t[::1] ko = keys_out
        cdef int32_t[::1] do = days_out
        cdef uint32_t[::1] co = counts_out
        cdef const uint64_t* row_keys = <const uint64_t*>self.tb.keys
        with nogil:
            for r in range(self.tb.used):
                if every or self.c.row_stamp[r] > after:
                    first = self._first_changed(r, recent)
                    j = pmod(first, ring)
                    for k in range(first, self.c.last_bucket[r] + 1):
                        b = <int64_t>r * ring + j
                        v = src[b * stride + off]
                        if v != 0 and (every or self.c.stamp[b] > after):
                            ko[w] = row_keys[r]
                            do[w] = <int32_t>k
                            co[w] = v
                            w += 1
                        j = j + 1 if j + 1 < ring else 0
        return keys_out, days_out, counts_out, cur

    cdef inline int64_t _first_changed(self, uint64_t r, uint32_t recent) noexcept nogil:
        """The oldest bucket of row r that export() must read: the ring's oldest or, when only
        the changes stamped `recent` count (0: all), the oldest bucket changed then."""
        cdef int64_t last = self.c.last_bucket[r], first
        if last == NONE:
            return last + 1  # no bucket (not reached: a row in use has one)
        first = last - self.c.ring + 1
        if recent and self.c.row_stamp[r] == recent and self.c.row_low[r] > first:
            return self.c.row_low[r]
        return first

    def merge(self, int slot, const uint64_t[::1] keys, const int32_t[::1] buckets,
              const uint32_t[::1] counts):
        """Merge a peer's cumulative counts: count = max(existing, value) per (key, bucket, slot),
        so the order and repetition of merges do not matter; the sum over the slots saturates at
        2**32 - 1 as in add_tx. Arguments as export() returns."""
        self._check_slot(slot)
        cdef Py_ssize_t n = keys.shape[0], i
        if buckets.shape[0] != n or counts.shape[0] != n:
            raise ValueError(f"expected buckets and counts of length {n}, got {buckets.shape[0]} and "
                             f"{counts.shape[0]}")
        cdef int64_t r, b, idx
        cdef uint32_t v, up, room
        with nogil:
            for i in range(n):
                v = counts[i]
                if v == 0:
                    continue
                r = self._row(keys[i], buckets[i])
                b = term_bucket(&self.c, &self.st, r, buckets[i])
                if b < 0:
                    continue
                idx = b * self.c.sources + slot
                if v > self.c.tx[idx]:
                    up = v - self.c.tx[idx]
                    room = UINT32_MAX - self.c.total[b]
                    if up > room:  # the sum over the slots saturates, as in add_tx
                        up = room
                    self.c.total[b] += up
                    self.c.tx[idx] = v
                    self.st.merged += 1

    def fold(self, int src, int dst):
        """Move slot `src`'s counts into slot `dst` (added, saturating) and zero `src`, so that a
        departed peer's counts stay in every read while its slot is reused. Totals, stamps and
        versions are unchanged: nothing is exported and no sum moves."""
        self._check_slot(src)
        self._check_slot(dst)
        if src == dst:
            raise ValueError(f"cannot fold slot {src} into itself")
        cdef int64_t S = self.c.sources, b, cells = <int64_t>self.tb.used * self.c.ring
        cdef uint32_t* tx = self.c.tx
        cdef uint32_t v
        with nogil:
            for b in range(cells):
                v = tx[b * S + src]
                if v:
                    tx[b * S + dst] = UINT32_MAX if tx[b * S + dst] > UINT32_MAX - v else tx[b * S + dst] + v
                    tx[b * S + src] = 0

    def stats(self):
        return {"terminals": self.tb.used, "capacity": self.tb.capacity,
                "evictions": self.tb.evicted, "expiries": self.tb.expired,
                "too_old": self.st.too_old, "read_missing": self.st.read_missing,
                "merged": self.st.merged, "version": self.version,
                "newest_bucket": None if self.newest_bucket == NONE else self.newest_bucket}

    def snapshot(self):
        """The state as a dict of numpy arrays (copies): the used rows of each terminal_row
        array, plus kind, newest_bucket, cursor, version and stats (TERMINAL_STATS order). Index,
        totals and row stamps are derived, and rebuilt by restore."""
        n = self.tb.used
        snap = {name: self._rows[name][:n].copy()
                for name, _, _ in terminal_row(self.buckets, self.max_sources)}
        snap["kind"] = np.array("zfraud.TerminalState/1")
        snap["bucket_hours"] = np.array(self.bucket_hours, np.int64)
        snap["newest_bucket"] = np.array(self.newest_bucket, np.int64)
        snap["cursor"] = np.array(self.tb.cursor, np.int64)
        snap["version"] = np.array(self.version, np.int64)
        snap["stats"] = np.array([self.tb.evicted, self.tb.expired, self.st.too_old,
                                  self.st.read_missing, self.st.merged], np.int64)
        return snap

    def restore(self, snap):
        """Replace the state by a snapshot's, whose days, bucket_hours and max_sources must equal
        this object's. On any mismatch: ValueError, and the state is left as it was."""
        cdef uint64_t cap = self.tb.capacity
        bucket_hours = int(snap.get("bucket_hours", 24))
        if bucket_hours != self.bucket_hours:
            raise ValueError(f"snapshot 'bucket_hours': expected {self.bucket_hours}, got {bucket_hours}")
        record = terminal_row(self.buckets, self.max_sources)
        n, got = _expect_rows(snap, "zfraud.TerminalState/1", record, cap)
        (newest, version), cursor = _expect_scalars(snap, ["newest_bucket", "version"], n)
        stats = _expect(snap, "stats", np.int64, (len(TERMINAL_STATS),))
        top = int(got["stamp"].max()) if n else 0
        if not max(top, 1) <= version < UINT32_MAX:
            raise ValueError(f"snapshot 'version': expected at least every stamp ({top}) and 1, "
                             f"and below 2**32 - 1, got {version}")
        # Each slot's counts are up to 2**32 - 1 and merged slots may sum past it: the total
        # saturates there, as add_tx and merge keep it.
        total = np.minimum(got["tx"].sum(axis=2, dtype=np.uint64), UINT32_MAX)
        rows = {}
        for name, dtype, shape in record:
            rows[name] = np.zeros((cap,) + shape, dtype)
            rows[name][:n] = got[name]
        cdef Table saved = self.tb
        cdef TermCols saved_c = self.c
        cdef TermStats saved_st = self.st
        old = (self._rows, self._slots, self._total, self._row_stamp, self._row_low)
        self._bind(rows, cap, n)
        bad = tb_rebuild(&self.tb)
        if bad >= 0:
            self._rows, self._slots, self._total, self._row_stamp, self._row_low = old
            self.tb, self.c, self.st = saved, saved_c, saved_st
            raise ValueError(f"snapshot 'key': expected distinct keys, got "
                             f"{int(got['key'][bad]):#x} again at row {bad}")
        self._total[:n] = total
        self._row_stamp[:n] = got["stamp"].max(axis=1)
        self._row_low[:n] = got["last_bucket"] - self.buckets + 1  # unknown: the whole ring
        self.tb.cursor = cursor
        self.newest_bucket = newest
        self.version = version
        self.tb.evicted, self.tb.expired = stats[0], stats[1]
        self.st = TermStats(stats[2], stats[3], stats[4])

