"""Ownership by rendezvous hashing and membership by gossip, in one process."""
import numpy as np
import pytest

from zfraud.mesh import Member, Membership, mix64, name_seed, owners


def test_owners_are_deterministic_and_balanced():
    cards = np.arange(100_000, dtype=np.uint64)
    names = ["w1", "w2", "w3"]
    a = owners(cards, names)
    np.testing.assert_array_equal(a, owners(cards.copy(), list(names)))
    share = np.bincount(a, minlength=3) / len(cards)
    assert np.all(np.abs(share - 1 / 3) < 0.01), share


def test_a_leaving_member_moves_only_its_own_cards():
    cards = np.arange(50_000, dtype=np.uint64) * 7919
    before = np.array(["w1", "w2", "w3"])[owners(cards, ["w1", "w2", "w3"])]
    after = np.array(["w1", "w3"])[owners(cards, ["w1", "w3"])]
    moved = before != after
    assert np.all(before[moved] == "w2")
    assert np.all(after[before == "w2"] != "w2")


def test_hashes_are_stable_across_versions():
    # Pinned values: every client, in any language, must compute the same owners (docs/PROTOCOL.md).
    assert int(mix64(np.array([0], np.uint64))[0]) == 0xE220A8397B1DCDAF
    assert int(name_seed("w1")) == 0xb8398c5e8a843cf2
    assert owners(np.arange(8, dtype=np.uint64), ["w1", "w2", "w3"]).tolist() == [2, 0, 0, 2, 0, 1, 0, 0]


def test_membership_joins_ages_and_refuses_stale_gossip():
    ms = Membership(Member("a", "tcp://a:1", "tcp://a:2", 0.0), timeout=3.0)
    assert ms.heard("b", "tcp://b:1", "tcp://b:2", now=10.0) == "joined"
    events = ms.gossip([{"name": "c", "router": "tcp://c:1", "pub": "tcp://c:2", "age_ms": 500},
                        {"name": "d", "router": "tcp://d:1", "pub": "tcp://d:2", "age_ms": 5000},
                        {"name": "broken"}], now=10.0)
    assert [(e, m.name) for e, m in events] == [("joined", "c")]
    assert sorted(ms.members) == ["a", "b", "c"]
    # c was heard second-hand, 0.5 s before 10.0: it ages out first.
    assert [m.name for m in ms.expire(now=12.8)] == ["c"]
    assert [m.name for m in ms.expire(now=13.2)] == ["b"]
    assert "a" in ms.members


def test_a_member_that_moved_is_followed():
    ms = Membership(Member("a", "tcp://a:1", "tcp://a:2", 0.0))
    ms.heard("b", "tcp://b:1", "tcp://b:2", now=1.0)
    assert ms.heard("b", "tcp://b:9", "tcp://b:8", now=2.0) == "moved"
    assert ms.members["b"].router == "tcp://b:9"
    assert ms.heard("b", "tcp://b:1", "tcp://b:2", now=3.0, age=2.5) is None  # older news of the old address


def test_a_name_is_taken_while_its_member_is_live_at_other_endpoints():
    ms = Membership(Member("a", "tcp://a:1", "tcp://a:2", 0.0), timeout=3.0)
    ms.heard("b", "tcp://b:1", "tcp://b:2", now=10.0)
    assert ms.taken("a", "tcp://x:1", "tcp://x:2", now=100.0) is ms.me  # this worker: always live
    assert ms.taken("a", "tcp://a:1", "tcp://a:2", now=100.0) is None  # its own endpoints
    assert ms.taken("b", "tcp://x:1", "tcp://b:2", now=12.9).router == "tcp://b:1"  # heard 2.9 s ago
    assert ms.taken("b", "tcp://b:1", "tcp://b:2", now=12.9) is None  # the same process
    assert ms.taken("b", "tcp://x:1", "tcp://x:2", now=13.0) is None  # silent for the timeout: maybe gone
    assert ms.taken("c", "tcp://c:1", "tcp://c:2", now=10.0) is None  # unknown


def test_a_stream_sample_is_exact_up_to_its_capacity_then_evenly_spaced_and_bounded():
    """Client.stream's latencies: a send of any length keeps at most `capacity` numbers."""
    from zfraud.client import Sample

    s = Sample(capacity=100)
    for lo in range(0, 90, 7):
        s.add(np.arange(lo, min(lo + 7, 90), dtype=float))
    assert (s.stride, s.kept) == (1, 90) and s.percentiles([50]).tolist() == [np.percentile(np.arange(90), 50)]
    for lo in range(90, 100_000, 37):  # chunks that do not line up with any stride
        s.add(np.arange(lo, min(lo + 37, 100_000), dtype=float))
        assert s.kept <= 100
    kept = np.concatenate(s._parts)
    assert s.stride == 1024 and kept.tolist() == list(range(0, 100_000, 1024))  # every stride-th, from the first
    assert abs(s.percentiles([50])[0] - 50_000) < 1024
    one = Sample(capacity=100)
    one.add(np.arange(1000, dtype=float))  # more than twice the capacity at once
    assert one.stride == 16 and np.concatenate(one._parts).tolist() == list(range(0, 1000, 16))


def test_repeats_are_counted_alike_in_order_and_out_of_order_within_the_ids_remembered():
    """Client.stream's `repeated`: ids going up cost no hash set; the first one out of order
    switches to one, seeded with the ids remembered so far, so the count is the same as a hash
    set's from the start (zfraud._dedup.SeenSet, as a worker remembers ids)."""
    from zfraud._dedup import SeenSet
    from zfraud.client import Repeats

    rng = np.random.default_rng(3)
    ids = np.concatenate([np.arange(1, 5000), np.arange(5000, 9000)[::-1], rng.integers(1, 12000, 3000),
                          np.arange(20000, 23000)]).astype(np.uint64)
    for capacity in (64, 1000, 100_000):
        r, want = Repeats(capacity), SeenSet(capacity)
        got = sum(r(ids[lo:lo + 333]) for lo in range(0, len(ids), 333))
        new = np.empty(len(ids), np.uint8)
        want.check_and_add(ids, new)
        assert got == len(ids) - int(new.sum()) > 0
    increasing = Repeats(1000)
    assert sum(increasing(np.arange(k, k + 100, dtype=np.uint64)) for k in range(0, 10_000, 100)) == 0
    assert increasing.seen is None and increasing.count == 1000  # no hash set; a bounded ring
    assert increasing(np.array([9_950], np.uint64)) == 1 and increasing(np.array([8_999], np.uint64)) == 0


def test_a_seen_set_forgets_the_ids_added_last_and_keeps_the_others():
    """SeenSet.forget_newest undoes a check_and_add whose rows were not counted (a bug's INTERNAL
    reply), also when the add had made room by forgetting the oldest ids, which stay forgotten."""
    from zfraud._dedup import SeenSet

    def add(s, ids):
        new = np.empty(len(ids), np.uint8)
        s.check_and_add(np.array(ids, np.uint64), new)
        return new.tolist()

    s = SeenSet(4)
    assert add(s, [1, 2, 3]) == [1, 1, 1]
    s.forget_newest(2)
    assert s.ids().tolist() == [1] and add(s, [2, 3, 1]) == [1, 1, 0]
    assert add(s, [4, 5, 5]) == [1, 1, 0]  # full at 5: 1 made room
    s.forget_newest(2)
    assert s.ids().tolist() == [2, 3] and len(s) == 2
    assert add(s, [1, 2, 4, 5, 3]) == [1, 0, 1, 1, 0]  # 2 made room for 5
    assert s.ids().tolist() == [3, 1, 4, 5]
    s.forget_newest(10)
    assert len(s) == 0 and add(s, [3]) == [1]
    with pytest.raises(ValueError, match="k must be at least 0"):
        s.forget_newest(-1)


def test_news_of_another_member_at_this_workers_own_endpoints_is_ignored():
    """r3, started on killed r2's ports, listed r2 at its own endpoints (the others still did),
    asked "r2" (itself) to rejoin, and clients sent r2's cards there for a member timeout."""
    ms = Membership(Member("r3", "tcp://h:1", "tcp://h:2", 0.0), timeout=3.0)
    assert ms.heard("r2", "tcp://h:1", "tcp://h:2", now=1.0) is None
    assert ms.heard("r2", "tcp://h:1", "tcp://h:9", now=1.0) is None  # either endpoint is ours
    events = ms.gossip([{"name": "r2", "router": "tcp://h:1", "pub": "tcp://h:2", "age_ms": 100},
                        {"name": "r1", "router": "tcp://g:1", "pub": "tcp://g:2", "age_ms": 100}], now=1.0)
    assert [(e, m.name) for e, m in events] == [("joined", "r1")]
    assert sorted(ms.members) == ["r1", "r3"]


def test_same_endpoint_looks_past_the_spelling_of_a_host_but_not_past_its_port():
    from zfraud.mesh import same_endpoint

    assert same_endpoint("tcp://localhost:5555", "tcp://127.0.0.1:5555")
    assert not same_endpoint("tcp://localhost:5555", "tcp://127.0.0.1:5556")
    assert not same_endpoint("tcp://127.0.0.2:5555", "tcp://127.0.0.1:5555")
    assert same_endpoint("tcp://LOCALHOST:5555", "tcp://localhost:5555")
    assert not same_endpoint("tcp://no-such-host.invalid:5555", "tcp://127.0.0.1:5555")
    # a name is not looked up: it may stand for many machines (one seed name for a whole mesh)
    assert not same_endpoint("tcp://mesh.example:5555", "tcp://127.0.0.1:5555")
    assert same_endpoint("ipc:///tmp/a.sock", "ipc:///tmp/a.sock")
    assert not same_endpoint("ipc:///tmp/a.sock", "tcp://127.0.0.1:5555")
