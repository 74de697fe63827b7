"""The seed's design: score one transaction at a time in plain Python.

The same zfraud-v6 features (per-card hourly/daily windows, delayed terminal counts; see
ext/state.pyx for the exact semantics, mirrored here with dicts and lists) and the same tree
model (walked node by node from the model file's arrays). Used only as a baseline.
"""
import json
import math

HOUR_MS, DAY_MS = 3_600_000, 86_400_000
BUCKET_MS = 4 * HOUR_MS  # terminal windows in 4-hour buckets, as zfraud.features.TERMINAL_BUCKET_HOURS
PER_DAY = DAY_MS // BUCKET_MS


class Card:
    __slots__ = ("day", "hour", "dn", "ds", "hn", "hs", "last_ts", "peak")

    def __init__(self):
        self.day = self.hour = None
        self.dn, self.ds = [0] * 32, [0.0] * 32
        self.hn, self.hs = [0] * 24, [0.0] * 24
        self.last_ts = None
        self.peak = 0.0


def _advance(ring_n, ring_s, last, now, size):
    if last is None:
        return now
    for k in range(min(now - last, size)):
        i = (last + 1 + k) % size
        ring_n[i] = 0
        ring_s[i] = 0.0
    return max(last, now)


class PyScorer:
    def __init__(self, model_path, delay_days=7):
        m = json.load(open(model_path))
        self.base = m.get("base_score", 0.0)
        self.start = m["tree_start"]
        self.feat, self.thr, self.dec = m["split_feature"], m["threshold"], m["decision"]
        self.left, self.right, self.value = m["left_child"], m["right_child"], m["value"]
        self.cards, self.terminals = {}, {}
        self.delay = delay_days

    def features(self, tx):
        ts, amount = tx["ts_ms"], tx["amount"]
        day, hour = ts // DAY_MS, ts // HOUR_MS
        h = hour - day * 24
        x = [amount, math.log1p(amount), float(h), 1.0 if h <= 6 else 0.0, 1.0 if (day + 3) % 7 >= 5 else 0.0]
        c = self.cards.get(tx["card"])
        if c is None:
            c = self.cards[tx["card"]] = Card()
        c.day = _advance(c.dn, c.ds, c.day, day, 32)
        c.hour = _advance(c.hn, c.hs, c.hour, hour, 24)
        c.dn[day % 32] += 1
        c.ds[day % 32] += amount
        c.hn[hour % 24] += 1
        c.hs[hour % 24] += amount
        n1, s1 = sum(c.hn), sum(c.hs)
        out = [n1, s1 / n1]
        for w in (7, 30):
            n = sum(c.dn[(day - k) % 32] for k in range(w))
            s = sum(c.ds[(day - k) % 32] for k in range(w))
            out += [n, s / n]
        gap = -1.0 if c.last_ts is None else math.log1p((ts - c.last_ts) / 1000)
        peak = float("nan") if c.last_ts is None else c.peak * math.exp(-max(ts - c.last_ts, 0) / (7 * DAY_MS))
        n_old = out[4] - out[2]
        s_old = sum(c.ds[(day - k) % 32] for k in range(7, 30))
        ratio = amount / (s_old / n_old) if n_old > 0 and s_old > 0 else 0.0
        c.peak = max(0.0 if c.last_ts is None else peak, ratio)
        c.last_ts = ts
        x += out + [amount / out[3], amount / out[5], gap, peak]
        t = self.terminals.setdefault(tx["terminal"], {})
        b = ts // BUCKET_MS
        t[b] = t.get(b, 0) + 1
        back = [t.get(b - self.delay * PER_DAY - k, 0) for k in range(30 * PER_DAY)]
        for w in (1, 7, 30):
            x += [float(sum(back[:w * PER_DAY])), 0.0]  # no labels in the bench
        older = out[4] - out[2]
        avg = (out[4] * out[5] - out[2] * out[3]) / older if older > 0 else float("nan")
        x += [avg, amount / avg]
        x += [0.0, 0.0]  # terminal fraud runs: none without labels
        x += [0.0, 0.0, 0.0]  # the 30-day frauds' mean amount, card-linked and other: none either
        return x

    def score(self, tx):
        x = self.features(tx)
        z = self.base
        for t in range(len(self.start) - 1):
            node = 0
            base = self.start[t]
            while self.left[base + node] >= 0:
                i = base + node
                v = x[self.feat[i]]
                if v != v:
                    go_left = self.dec[i] & 2
                else:
                    go_left = v <= self.thr[i]
                node = self.left[i] if go_left else self.right[i]
            z += self.value[base + node]
        p = 1.0 / (1.0 + math.exp(-z))
        return p, 2 if p >= 0.8 else 1 if p >= 0.2 else 0
