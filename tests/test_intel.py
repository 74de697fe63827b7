"""Shared intelligence and state on real worker processes: terminal counts converge across
workers, a worker's features equal train's replay bit for bit, state survives a restart."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import zmq

from zfraud import Client
from zfraud import protocol as P
from zfraud.backtest import stream_with_labels
from zfraud.features import FULL, FeatureEngine
from zfraud.gen import generate
from zfraud.local import LocalMesh
from zfraud.model import LogisticModel
from zfraud.state import mix_keys
from zfraud.train import replay

from conftest import run_cli


T0 = 17_800 * 86_400_000  # the terminal streams' first event time


def terminal_stream(n, seed):
    """n transactions of random cards at 40 terminals, one a second from T0."""
    rng = np.random.default_rng(seed)
    return {"tx_id": np.arange(1, n + 1, dtype=np.uint64), "card": rng.integers(1, 10**9, n).astype(np.uint64),
            "terminal": rng.integers(0, 40, n).astype(np.uint64), "ts_ms": T0 + np.arange(n, dtype=np.int64) * 1000,
            "amount": rng.uniform(1, 200, n)}


def state_args(model_path, state):
    return ["--model", str(model_path), "--cards", "4096", "--terminals", "4096", "--heartbeat", "0.2",
            "--state-dir", str(state)]


def saved_counts_equal_the_stream(path, tx) -> FeatureEngine:
    """Load a worker's snapshot and check its 30-day transaction count at each of the 40
    terminals, 8 days after T0, is every transaction of tx there; returns the engine."""
    e = FeatureEngine(FULL, 7, 4096, 4096)
    e.load(path)
    probe = {"terminal": np.arange(40, dtype=np.uint64), "ts_ms": np.full(40, T0 + 8 * 86_400_000, np.int64)}
    np.testing.assert_array_equal(e.state.terminal_counts(probe)[:, 2],
                                  np.bincount(tx["terminal"].astype(np.int64), minlength=40), err_msg=str(path))
    return e


def test_worker_features_equal_train_replay_bit_for_bit(data, model_path, tmp_path):
    n = len(data["tx_id"])
    X = replay(data, np.ones(n, bool), delay_days=7)
    expected = LogisticModel.from_dict(json.loads(model_path.read_text())).predict_proba(X).astype(np.float32)
    extra = ["--model", str(model_path), "--cards", "4096", "--terminals", "4096"]
    with LocalMesh(2, extra_args=extra, log_dir=str(tmp_path)) as mesh, Client(mesh.endpoint) as c:
        score, decision, models = stream_with_labels(c, data, delay_days=7, batch=1024)
    assert models == {"probe-1"} and not np.isnan(score).any()
    assert (data["fraud"] == 1).sum() > 50  # labels did flow into terminal risk
    names = FeatureEngine(FULL).names
    for name in ("terminal_risk_30d", "terminal_fraud_run_frauds", "terminal_fraud_avg_amount_30d",
                 "terminal_card_linked_frauds_30d", "terminal_unlinked_frauds_30d"):
        assert (X[:, names.index(name)] > 0).sum() > 100, name  # every label-fed column is exercised
    np.testing.assert_array_equal(score, expected)


def test_two_workers_that_each_saw_half_of_a_terminal_converge(data, model_path, tmp_path):
    extra = ["--model", str(model_path), "--cards", "4096", "--terminals", "4096", "--state-dir", str(tmp_path / "s")]
    sub = {k: v[:20000] for k, v in data.items()}
    with LocalMesh(2, extra_args=extra, log_dir=str(tmp_path)) as mesh, Client(mesh.endpoint) as c:
        stream_with_labels(c, sub, delay_days=7, batch=1024)
        time.sleep(2.5)  # a heartbeat or two: the last counts go out
    engines = {}
    for w in ("w1", "w2"):
        e = FeatureEngine(FULL, 7, 4096, 4096)
        e.load(tmp_path / "s" / f"{w}.state.npz")
        engines[w] = e
    terms = np.unique(sub["terminal"])
    last = int(sub["day"][-1])
    for day in range(int(sub["day"][0]) + 8, last + 9):
        cols = {"terminal": terms, "ts_ms": np.full(len(terms), day * 86_400_000, np.int64)}
        a = engines["w1"].state.terminal_counts(cols)
        b = engines["w2"].state.terminal_counts(cols)
        np.testing.assert_array_equal(a, b)  # the same counts on both workers
    total = sum(int(e.state.terminal_counts(cols)[:, 2].sum()) for e in engines.values()) / 2
    assert total > 0
    # The label-fed tables too: each label went to one worker (its card's owner), and both
    # workers read the same frauds, fraud amounts and card-linked frauds, some from each worker.
    ts = np.full(len(terms), (last + 8) * 86_400_000, np.int64)
    keys = mix_keys(terms)
    for name in ("frauds", "fraud_amounts", "linked"):
        got = []
        for e in engines.values():
            out = np.empty((len(terms), 3), np.float32)
            getattr(e, name).read(keys, ts, 7, out)
            got.append(out)
        np.testing.assert_array_equal(got[0], got[1])
        assert got[0][:, 2].sum() > 0, name
    for e in engines.values():
        counts = e.frauds.snapshot()["tx"]
        assert counts[:, :, 0].sum() > 0 and counts[:, :, 1:].sum() > 0  # its own labels and its peer's


def test_a_restarted_worker_restores_its_cards(data, model_path, tmp_path):
    extra = ["--model", str(model_path), "--cards", "4096", "--terminals", "4096", "--state-dir", str(tmp_path / "s")]
    first = {k: v[:15000] for k, v in data.items()}
    probe = {k: v[15000:15500] for k, v in data.items()}
    with LocalMesh(1, extra_args=extra, log_dir=str(tmp_path)) as mesh:
        with Client(mesh.endpoint) as c:
            stream_with_labels(c, first, delay_days=7)
        assert mesh.stop_worker("w1") == 0  # SIGTERM: drain and snapshot
        assert (tmp_path / "s" / "w1.state.npz").exists()
        mesh.start_worker("w1")
        mesh.wait_members(["w1"])
        assert "restored state" in mesh.log("w1")
        with Client(mesh.endpoint) as c:
            # Transactions and labels counted before the stop, sent again (a client that missed
            # their replies): repeats, as they would have been without the restart.
            c.score({k: first[k][-500:] for k, _ in P.TX_COLUMNS})
            frauds = np.flatnonzero(first["fraud"][:5000])
            assert len(frauds) > 5
            again = c.label({k: first[k][frauds] for k, _ in P.LABEL_COLUMNS})
            after_restart = c.score({k: probe[k] for k, _ in P.TX_COLUMNS})["score"]
            status = c.control("w1", "status")["status"]
    assert status["state"]["cards"] > 250
    assert status["repeats"] == 500 and again == {"w1": 0}
    # the same probe scored by a worker that never stopped
    with LocalMesh(1, extra_args=extra[:-2], log_dir=str(tmp_path / "b")) as mesh, Client(mesh.endpoint) as c:
        stream_with_labels(c, first, delay_days=7)
        c.score({k: first[k][-500:] for k, _ in P.TX_COLUMNS})
        uninterrupted = c.score({k: probe[k] for k, _ in P.TX_COLUMNS})["score"]
    np.testing.assert_array_equal(after_restart, uninterrupted)


def test_more_peer_names_than_slots_over_a_workers_life_all_stay_counted(model_path, tmp_path):
    """A worker has MAX_SOURCES - 1 (15) peer slots, and every peer incarnation needs its own
    (a worker restarted without --state-dir comes back under a new name, counting from zero).
    Three rounds of six peers (18 names) join a long-lived worker, score their share of a batch
    and leave: the long-lived worker ends with every transaction counted exactly once, departed
    peers retired into one slot as newcomers needed theirs."""
    from zfraud.features import MAX_SOURCES

    rounds, per_round, rows = 3, 6, 600
    assert rounds * per_round > MAX_SOURCES - 1
    tx = terminal_stream(rounds * rows, seed=7)
    extra = state_args(model_path, tmp_path / "s")
    with LocalMesh(1, extra_args=extra, log_dir=str(tmp_path)) as mesh:
        for r in range(rounds):
            names = [f"r{r}p{p}" for p in range(per_round)]
            for name in names:
                mesh.start_worker(name, seed=mesh.routers["w1"])
            mesh.wait_members(["w1", *names])
            time.sleep(0.6)  # a few heartbeats: every worker subscribes to the newcomers
            with Client(mesh.endpoint) as c:
                assert c.members == sorted(["w1", *names])
                v = c.score({k: a[r * rows:(r + 1) * rows] for k, a in tx.items()})
            assert len(set(v["worker"])) == per_round + 1  # each peer scored some
            time.sleep(0.6)  # their last counts reach w1
            for name in names:
                mesh.signal(name, signal.SIGTERM)
            assert [mesh.stop_worker(name, signalled=True) for name in names] == [0] * per_round
            mesh.wait_members(["w1"])
        status = Client(mesh.endpoint).control("w1", "status")["status"]
        assert mesh.stop_worker("w1") == 0
        log = mesh.log("w1")
    assert "not merged" not in log and "peer slots full: retired" in log
    assert status["state"]["peer_slots"] == MAX_SOURCES - 2  # 14 names and the retired slot
    assert status["state"]["retired_peers"] == rounds * per_round - (MAX_SOURCES - 2) == 4
    e = saved_counts_equal_the_stream(tmp_path / "s" / "w1.state.npz", tx)
    assert len(e.retired) == 4 and all(name.startswith("r0") for name in e.retired)  # the least recent


@pytest.mark.parametrize("comes_back_as", ["w2b", "w2"])
def test_a_worker_restarted_without_its_state_converges_with_its_peer(model_path, tmp_path, comes_back_as):
    """w2 is killed and its snapshot lost, then comes back under a new name (the default names
    change with the PID) or under its own. Either way it gets from w1 what w1 held for the old
    w2 (intel_sync's `more`), so both end with every transaction counted once."""
    n = 2000
    tx = terminal_stream(n, seed=11)
    state = tmp_path / "s"
    extra = state_args(model_path, state)
    with LocalMesh(2, extra_args=extra, log_dir=str(tmp_path)) as mesh:
        time.sleep(0.6)
        with Client(mesh.endpoint) as c:
            first = c.score({k: a[:n // 2] for k, a in tx.items()})
        assert set(first["worker"]) == {"w1", "w2"}
        time.sleep(0.6)  # w2's counts reach w1
        mesh.signal("w2", signal.SIGKILL)
        mesh.procs["w2"].wait(5)
        (state / "w2.state.npz").unlink(missing_ok=True)  # a periodic snapshot, lost with the disk
        mesh.wait_members(["w1"])
        mesh.start_worker(comes_back_as, seed=mesh.routers["w1"])
        mesh.wait_members(["w1", comes_back_as])
        time.sleep(1.0)  # it subscribes, hears w1's counts and asks w1 for everything
        with Client(mesh.endpoint) as c:
            second = c.score({k: a[n // 2:] for k, a in tx.items()})
        assert set(second["worker"]) == {"w1", comes_back_as}
        time.sleep(0.6)
        assert mesh.stop_worker(comes_back_as) == 0 and mesh.stop_worker("w1") == 0
        assert "synced terminal counts from w1 (" in mesh.log(comes_back_as)
    for name in ("w1", comes_back_as):
        saved_counts_equal_the_stream(state / f"{name}.state.npz", tx)


def test_label_command(data, model_path, tmp_path):
    from zfraud.gen import write_csv

    g = generate(100, 200, 12, seed=5)
    path = tmp_path / "labels.csv"
    write_csv(g, str(path))
    extra = ["--model", str(model_path), "--cards", "4096", "--terminals", "4096"]
    with LocalMesh(2, extra_args=extra, log_dir=str(tmp_path)) as mesh:
        r = run_cli("label", str(path), "--connect", mesh.endpoint)
        assert r.returncode == 0, r.stderr
        frauds = int(g["TX_FRAUD"].sum())
        assert f"{frauds:,} frauds counted" in r.stdout
        with Client(mesh.endpoint) as c:
            labels = sum(c.control(w, "status")["status"]["labels"] for w in ("w1", "w2"))
            old = {k: np.zeros(1, np.uint64) for k in ("tx_id", "card", "terminal")}
            old.update(ts_ms=np.zeros(1, np.int64), fraud=np.ones(1, np.uint8))
            with pytest.raises(ValueError, match="missing amount"):
                c.label(old)  # a label without the amount a fraud's terminal features need
            # A client from before zfraud-v5 sends five columns: the worker refuses them, clearly.
            sock = c.ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(c.routers["w1"])
            five = tuple((name, dtype) for name, dtype in P.LABEL_COLUMNS if name != "amount")
            sock.send_multipart(P.encode(P.LABEL, {"rows": 1, "columns": P.schema(five)}, P.column_frames(old, five)))
            try:
                assert sock.poll(5000)
                reply = P.parse(sock.recv_multipart())
            finally:
                sock.close()
    assert reply.command == P.ERROR and reply.header["code"] == P.BAD_SCHEMA
    assert '"amount"' in reply.header["message"] or "'amount'" in reply.header["message"]
    assert labels == len(g["TRANSACTION_ID"])  # each label applied once, by its card's owner


def test_a_fraud_label_after_a_genuine_one_counts_and_a_resent_fraud_does_not(model_path, tmp_path):
    """A transaction cleared as genuine, then charged back as fraud: the fraud label was dropped as
    a repeat of the genuine one (`1 labels sent; 0 frauds counted`), so the terminal never saw it."""
    def label(tx_id, fraud):
        return {"tx_id": np.array([tx_id], np.uint64), "card": np.array([7], np.uint64),
                "terminal": np.array([3], np.uint64), "ts_ms": np.array([T0], np.int64),
                "amount": np.array([50.0]), "fraud": np.array([fraud], np.uint8)}

    extra = ["--model", str(model_path), "--cards", "4096", "--terminals", "4096"]
    with LocalMesh(1, extra_args=extra, log_dir=str(tmp_path)) as mesh, Client(mesh.endpoint) as c:
        counted = [sum(c.label(label(tx_id, fraud)).values())
                   for tx_id, fraud in ((1, 0), (1, 1), (1, 1), (2, 1), (2, 0), (2, 1))]
        labels = c.control("w1", "status")["status"]["labels"]
    assert counted == [0, 1, 0, 1, 0, 0]
    assert labels == 4  # the genuine labels (which count nothing) and the first fraud label of each id


def test_status_counts_the_cards_and_terminals_evicted_from_full_tables(model_path, tmp_path):
    """--terminals 1024 under traffic at 3,000 terminals: status said `terminals: 1024` and nothing
    else, so an undersized table, which loses terminals' history, showed nowhere."""
    n = 3000
    tx = {"tx_id": np.arange(1, n + 1, dtype=np.uint64), "card": np.arange(n, dtype=np.uint64),
          "terminal": np.arange(n, dtype=np.uint64), "ts_ms": T0 + np.arange(n, dtype=np.int64) * 1000,
          "amount": np.full(n, 20.0)}
    extra = ["--model", str(model_path), "--cards", "1024", "--terminals", "1024"]
    with LocalMesh(1, extra_args=extra, log_dir=str(tmp_path)) as mesh, Client(mesh.endpoint) as c:
        c.score(tx)
        state = c.control("w1", "status")["status"]["state"]
    assert (state["card_capacity"], state["terminal_capacity"]) == (1024, 1024)
    assert (state["cards"], state["terminals"]) == (1024, 1024)
    assert (state["card_evictions"], state["terminal_evictions"]) == (n - 1024, n - 1024)  # one per newcomer


def test_counts_bigger_than_a_frame_travel_in_pieces_and_merge_whole(model_path, ctx, monkeypatch):
    """An export with more rows per table than INTEL_CHUNK_ROWS goes out in pieces, each a
    valid export: intel.terminal messages one after the other, and an intel_sync reply whose
    `more` continues the sender's own counts. No frame is over the piece size, and the
    receiver ends with exactly the sender's counts (here also those it held for a departed peer)."""
    import zfraud.worker as W
    from zfraud.model import load_model

    monkeypatch.setattr(W, "INTEL_CHUNK_ROWS", 64)
    rng = np.random.default_rng(31)
    n, day = 3000, 17_800 * 86_400_000
    tx = {"tx_id": np.arange(n, dtype=np.uint64), "card": rng.integers(1, 500, n).astype(np.uint64),
          "terminal": rng.integers(0, 300, n).astype(np.uint64),
          "ts_ms": day + np.sort(rng.integers(0, 20 * 86_400_000, n)), "amount": rng.uniform(1, 100, n)}
    model = load_model(model_path)
    a, b = (W.Worker(name, "tcp://127.0.0.1:*", "tcp://127.0.0.1:*", model=model, cards=4096, terminals=4096,
                     context=ctx) for name in ("a", "b"))
    try:
        fa = a.scorer.features
        fa.transform(tx)
        gone = FeatureEngine(FULL, 7, 4096, 4096)  # a peer that has left: a still holds its counts
        gone.transform({k: v[:1000] for k, v in tx.items()})
        assert fa.merge_intel("gone", gone.export_intel(0))
        own = fa.export_intel(-1)
        assert len(own["tx_key"]) > 3 * 64
        pieces = list(W.intel_chunks(own, 64))
        assert len(pieces) == -(-len(own["tx_key"]) // 64)
        for col in ("tx_key", "tx_bucket", "tx_count", "fraud_key"):
            np.testing.assert_array_equal(np.concatenate([p[col] for p in pieces]), own[col])
        reply = P.parse(a._intel_sync("b"))
        assert max(len(f) for f in reply.frames) <= 64 * 8
        sources = [e["source"] for e in reply.header["more"]]
        assert sources.count("a") == len(pieces) - 1 and sources.count("gone") >= 2
        b._merge_sync("a", reply)

        def cells(export):
            return sorted(zip(export["tx_key"].tolist(), export["tx_bucket"].tolist(), export["tx_count"].tolist()))

        fb = b.scorer.features
        assert cells(fb.export_peer("a")) == cells(fa.export_intel(0))
        assert cells(fb.export_peer("gone")) == cells(gone.export_intel(0))
    finally:
        a._close()
        b._close()


def test_what_a_draining_worker_scores_after_its_goodbye_still_reaches_its_peers(model_path, tmp_path, ctx):
    """A client with a stale member list sends w1 a batch after w1 said goodbye (it drains: it
    still answers). w2 keeps following w1's PUB for a while after the goodbye, so the terminal
    counts of that batch, published as w1 closes, reach it: w2 ends with every transaction counted."""
    from conftest import request

    tx = terminal_stream(1200, seed=13)
    state = tmp_path / "s"
    extra = state_args(model_path, state)
    with LocalMesh(2, extra_args=extra, log_dir=str(tmp_path)) as mesh:
        with Client(mesh.endpoint) as c:
            c.score({k: a[:600] for k, a in tx.items()})
        mesh.signal("w1", signal.SIGTERM)
        end = time.monotonic() + 10
        while mesh.members_of("w2") != ["w2"]:  # w2 has had w1's goodbye
            assert time.monotonic() < end
            time.sleep(0.05)
        late = request(ctx, mesh.routers["w1"], P.batch_message(1, 0, {k: a[600:] for k, a in tx.items()}))
        assert late.command == P.RESULT and late.header["rows"] == 600
        assert mesh.stop_worker("w1", signalled=True) == 0
        time.sleep(0.5)
        assert mesh.stop_worker("w2") == 0
    saved_counts_equal_the_stream(state / "w2.state.npz", tx)


def test_a_transaction_dated_ahead_of_the_workers_clock_is_rejected_and_blinds_nothing(data, model_path, tmp_path):
    """A row dated in 2199 (inside the 2000..2200 check) was scored: its card's and terminal's
    time rings moved 180 years ahead for good, so every later transaction of them read no
    history, and the other worker merged the terminal's new bucket. Now such a row, and one two
    days ahead, is rejected with its own reason and changes nothing."""
    extra = ["--model", str(model_path), "--cards", "4096", "--terminals", "4096", "--heartbeat", "0.2"]
    hist = {k: data[k][:20000] for k, _ in P.TX_COLUMNS}
    # the cards and terminals of the history's last 500 rows, an hour after its end
    probe = {k: hist[k][-500:].copy() for k, _ in P.TX_COLUMNS}
    probe["tx_id"] += np.uint64(10**9)
    probe["ts_ms"][:] = hist["ts_ms"][-1] + 3_600_000
    now = int(time.time() * 1000)
    poison = {k: hist[k][-3:].copy() for k, _ in P.TX_COLUMNS}
    poison["tx_id"] += np.uint64(2 * 10**9)
    poison["ts_ms"][:] = [7_258_118_400_000 - 86_400_000, now + 2 * 86_400_000, now + 2 * 86_400_000]
    answers = []
    with LocalMesh(2, extra_args=extra, log_dir=str(tmp_path)) as mesh, Client(mesh.endpoint) as c:
        c.score(hist)
        c.score(probe)
        time.sleep(1.5)  # each worker merges the other's counts (published every 0.2 s)
        before = c.score(probe)  # repeats: read, not counted again
        summary = c.stream([poison], on_verdicts=lambda v, h: answers.append((v, h)))
        time.sleep(1.5)  # had a worker counted them, the other would have merged it by now
        after = c.score(probe)
    assert sorted(set(before["worker"])) == ["w1", "w2"] and np.isfinite(before["score"]).all()
    np.testing.assert_array_equal(after["score"], before["score"])
    assert summary.errors == 3 and summary.verdicts == 0
    reasons = [h["reasons"][r] for v, h in answers for r in v["reason"]]
    assert reasons == ["error: ts_ms is more than 1 day ahead of this worker's clock"] * 3


def test_labels_dated_outside_2000_to_tomorrow_are_refused_and_the_others_applied(data, model_path, tmp_path):
    """One label in microseconds moved its terminal's fraud rings ~50 000 years ahead: every later
    label there was too old and terminal risk read 0 for good. The worker refuses such labels (and
    forgets them: a corrected one is applied), applies the others of the message, and says how
    many it refused, in its reply and in one warning."""
    extra = ["--model", str(model_path), "--cards", "4096", "--terminals", "4096"]
    sub = {k: v[:20000] for k, v in data.items()}
    probe = {k: sub[k][-500:].copy() for k, _ in P.TX_COLUMNS}  # the last rows' cards and terminals, an hour on
    probe["tx_id"] += np.uint64(10**9)
    probe["ts_ms"][:] = sub["ts_ms"][-1] + 3_600_000
    day, now = 86_400_000, int(time.time() * 1000)
    fraud_ts = probe["ts_ms"] - 10 * day  # frauds in the probe's terminal risk window, at their terminals
    bad = {k: probe[k] for k in ("card", "terminal", "amount")}
    bad.update(tx_id=probe["tx_id"] + np.uint64(10**9), fraud=np.ones(500, np.uint8),
               ts_ms=np.choose(np.arange(500) % 5, [fraud_ts * 1000, fraud_ts * 1_000_000, fraud_ts // 1000,
                                                   np.full(500, 7_258_118_400_000 - day), np.full(500, now + 2 * day)]))
    mixed = {k: v[:2].copy() for k, v in bad.items()}
    mixed["tx_id"][1] += np.uint64(10**9)
    mixed["ts_ms"][1] = fraud_ts[1]  # a good label next to a bad one
    with LocalMesh(1, extra_args=extra, log_dir=str(tmp_path)) as mesh, Client(mesh.endpoint) as c:
        stream_with_labels(c, sub, delay_days=7)
        labels = c.control("w1", "status")["status"]["labels"]
        c.score(probe)
        before = c.score(probe)  # repeats: read, not counted again
        all_bad = c.label(bad)
        after = c.score(probe)
        one_bad = c.label(mixed)
        corrected = c.label({**mixed, "ts_ms": fraud_ts[:2]})  # the refused one, now in milliseconds
        labels = c.control("w1", "status")["status"]["labels"] - labels
        log = mesh.log("w1")
    assert np.isfinite(before["score"]).all()
    np.testing.assert_array_equal(after["score"], before["score"])
    assert (all_bad, all_bad.refused) == ({"w1": 0}, 500)
    assert (one_bad, one_bad.refused) == ({"w1": 1}, 1)
    assert (corrected, corrected.refused) == ({"w1": 1}, 0)  # the other one was applied before
    assert labels == 2
    warnings = [line for line in log.splitlines() if "labels: ts_ms" in line]
    assert [w[w.index("refused"):] for w in warnings] == [
        f"refused {n} of {m} labels: ts_ms before 2000 or more than 1 day ahead of this worker's clock (epoch "
        f"milliseconds expected)" for n, m in ((500, 500), (1, 2))]


def _ip(*args):
    subprocess.run(["ip", *args], check=True, capture_output=True)


def test_counts_missed_across_a_healed_link_reach_an_idle_peer(model_path, tmp_path):
    """Only the w1-w2 link is cut (network namespaces and veth pairs): w3 and the client reach
    both, so w3's gossip keeps both members. What each scores meanwhile goes out on
    intel.terminal and is lost on that link; then traffic stops and the link heals. With no
    later intel message from either to show the gap, their mesh.hello's intel_seq must."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 (network namespaces)")
    from zfraud.gen import generate, write_csv

    tag = f"zfh{os.getpid() % 100000}"
    nss = {k: f"{tag}{k}" for k in ("1", "2", "3", "c")}
    addr = {"1": "10.79.0.1", "2": "10.79.0.2", "3": "10.79.0.3", "c": "10.79.0.10"}
    pairs = [(a, b) for a in nss for b in nss if a < b]
    procs, created = [], []
    try:
        for k, ns in nss.items():
            _ip("netns", "add", ns)
            created.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "addr", "add", f"{addr[k]}/32", "dev", "lo")
            subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0",
                            "net.ipv4.conf.default.rp_filter=0"], check=True, capture_output=True)
        for a, b in pairs:  # a point-to-point link per pair, a /32 route over it each way
            _ip("link", "add", f"{tag}{a}{b}", "netns", nss[a], "type", "veth", "peer", "name", f"{tag}{b}{a}",
                "netns", nss[b])

        def link_up(a, b):
            for x, y in ((a, b), (b, a)):
                _ip("-n", nss[x], "link", "set", f"{tag}{x}{y}", "up")
            for x, y in ((a, b), (b, a)):
                _ip("-n", nss[x], "route", "replace", f"{addr[y]}/32", "dev", f"{tag}{x}{y}", "src", addr[x])

        for a, b in pairs:
            link_up(a, b)
        csv = tmp_path / "g.csv"
        write_csv(generate(300, 200, 20, seed=11), str(csv))
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        seeds = ["--seed", "tcp://10.79.0.1:39101", "--seed", "tcp://10.79.0.2:39101"]
        for k in ("1", "2", "3"):
            log = open(tmp_path / f"w{k}.log", "w")
            procs.append(subprocess.Popen(
                ["ip", "netns", "exec", nss[k], sys.executable, "-m", "zfraud", "worker", "--name", f"w{k}",
                 "--bind", f"tcp://{addr[k]}:39101", "--pub", f"tcp://{addr[k]}:39102", *seeds,
                 *state_args(model_path, tmp_path / "s"), "--heartbeat", "0.5", "--snapshot-every", "3600"],
                stdout=log, stderr=subprocess.STDOUT, env=env))
        time.sleep(4)
        _ip("-n", nss["1"], "link", "set", f"{tag}12", "down")  # the cut
        time.sleep(4)  # TCP_MAXRT (3 s unacknowledged) drops the w1-w2 connections: what they publish now is lost
        w3 = f"tcp://{addr['3']}:39101"
        for cmd in ("send", "label"):
            r = subprocess.run(["ip", "netns", "exec", nss["c"], sys.executable, "-m", "zfraud", cmd, str(csv),
                                "--connect", w3], capture_output=True, text=True, timeout=60, env=env)
            assert r.returncode == 0, r.stderr
        time.sleep(1.5)  # their last counts go out (to w3), then no traffic
        link_up("1", "2")  # the heal
        time.sleep(12)  # SUB reconnects back off up to 8 s, then a heartbeat or two
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for ns in created:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    saved = {w: np.load(tmp_path / "s" / f"{w}.state.npz") for w in ("w1", "w2", "w3")}

    def held(w, source, table):  # what w holds in source's slot of a table, summed
        z = saved[w]
        slots = [w] + [str(s) for s in z["meta.sources"]]
        return int(z[f"{table}.tx"][:, :, slots.index(source)].sum()) if source in slots else 0

    for table in ("terminal", "frauds"):
        own = {w: held(w, w, table) for w in ("w1", "w2")}
        assert own["w1"] > 0 and own["w2"] > 0, (table, own)
        assert (held("w1", "w2", table), held("w2", "w1", table)) == (own["w2"], own["w1"]), table
        assert (held("w3", "w1", table), held("w3", "w2", table)) == (own["w1"], own["w2"]), table


GROW_OUT_OF_MEMORY = r'''
import resource, sys
import numpy as np
from zfraud.features import FULL, FeatureEngine
e = FeatureEngine(FULL, card_capacity=1024, terminal_capacity=50_000)
vm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmSize:")) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + 200 * 2**20, resource.RLIM_INFINITY))  # room for 4 slots, not 8
peers = ["p1", "p2", "p3", "p4"]
merged = [e.merge_intel(p, {"bucket_hours": 4}, live=peers) for p in peers]
print(merged, e.frauds.max_sources, e.state.terminals.max_sources, e.slot_refusal("p4", peers))
batch = {"tx_id": np.arange(3, dtype=np.uint64), "card": np.arange(3, dtype=np.uint64),
         "terminal": np.arange(3, dtype=np.uint64), "ts_ms": np.full(3, 1_530_000_000_000, np.int64),
         "amount": np.ones(3)}
print(e.transform(batch).shape)
'''


def test_a_worker_whose_terminal_tables_cannot_grow_for_a_fifth_member_keeps_scoring():
    """The tables start with 4 source slots and double as peers join. Out of memory for 8, the
    worker died (`Error: out of memory: Unable to allocate 732. MiB`) as the 5th member joined,
    and again at each restart while the peers were up: now that peer's counts wait, as at the
    15-peer limit, and the reason names --terminals. A real allocation failure (RLIMIT_AS)."""
    r = subprocess.run([sys.executable, "-c", GROW_OUT_OF_MEMORY], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == ("[True, True, True, False] 4 4 this worker's terminal tables could not grow to 8 peer "
                        "slots: out of memory; restart it with a lower --terminals or with more memory"), lines
    assert lines[1] == "(3, 28)", lines


BAD_INTS = (float("inf"), float("nan"), 2**64 - 1, -1, [4], "4", None)


def test_header_values_a_peer_sends_in_terminal_counts_never_stop_a_worker(model_path, tmp_path, ctx):
    """A peer's intel.terminal, and its intel_sync replies, with rows or bucket_hours of inf (int()
    raised OverflowError, which left the loop: the worker exited 1), nan, a huge int, a list, a
    string: each is logged (one line per kind) and ignored, and the worker keeps scoring."""
    from conftest import request
    from zfraud.local import free_port

    me = {"name": "rogue", "router": f"tcp://127.0.0.1:{free_port()}", "pub": f"tcp://127.0.0.1:{free_port()}"}
    empty = {"source": "rogue", "rows": 0, "fraud_rows": 0, "bucket_hours": 4}
    bad = [{**empty, key: v} for key in ("rows", "fraud_rows", "bucket_hours") for v in BAD_INTS]
    with LocalMesh(1, extra_args=["--model", str(model_path)], log_dir=str(tmp_path)) as mesh:
        pub = ctx.socket(zmq.XPUB)
        pub.setsockopt(zmq.SNDHWM, 0)
        pub.bind(me["pub"])
        router = ctx.socket(zmq.ROUTER)
        router.bind(me["router"])
        assert request(ctx, mesh.endpoint, P.encode(P.HELLO, {"role": "worker", **me})).command == P.MEMBERS
        deadline, wanted = time.monotonic() + 10, {b"\x01mesh.", b"\x01intel."}
        while wanted and time.monotonic() < deadline:  # the worker follows our PUB
            if pub.poll(200):
                wanted.discard(pub.recv())
        assert not wanted, f"the worker did not subscribe to the peer's {wanted}"
        time.sleep(0.3)
        # Its replies to intel_sync (asked at the join, then at each gap in seq): the same bad
        # values, in our own counts and in those held for w1 itself (merged into its own slot)
        replies = [{**h, "more": []} for h in bad] + [{**empty, "more": [{**h, "source": "w1"}]} for h in bad]
        sent, answered, seq = 0, 0, 0
        deadline = time.monotonic() + 30
        while (sent < len(bad) or answered < len(replies)) and time.monotonic() < deadline:
            assert mesh.procs["w1"].poll() is None, "the worker stopped"
            seq += 2  # a gap: the worker asks for intel_sync again
            pub.send_multipart([b"mesh.hello", P.VERSION, P.pack({**me, "members": [], "seq": seq})])
            pub.send_multipart([b"intel.terminal", P.VERSION, P.pack({**bad[sent % len(bad)], "seq": seq}),
                                *[b""] * 6])
            sent += 1
            while router.poll(50):
                ident, *frames = router.recv_multipart()
                if P.parse(frames).header.get("op") == "intel_sync":
                    h = {"op": "intel_sync", "ok": True, **replies[answered % len(replies)]}
                    router.send_multipart([ident, *P.encode(P.CONTROL, h, [b""] * (6 + 6 * len(h["more"])))])
                    answered += 1
        assert sent >= len(bad) and answered >= len(replies), (sent, answered)
        time.sleep(0.5)
        assert mesh.procs["w1"].poll() is None, "the worker stopped"
        tx = terminal_stream(50, seed=3)
        reply = request(ctx, mesh.endpoint, P.batch_message(1, 0, tx))
        assert reply.command == P.RESULT and reply.header["rows"] == 50
        assert mesh.stop_worker("w1") == 0
        pub.close()
        router.close()
        with open(os.path.join(mesh.log_dir, "w1.log")) as f:
            text = f.read()
    assert "Traceback" not in text and "Error" not in text.replace("ProtocolError", ""), text
    assert "ignored a malformed mesh message topic=intel.terminal from=rogue: header field 'rows' must be" in text
    assert "bad intel sync reply from rogue: header field 'rows' must be" in text
    assert "terminal counts from rogue not merged: terminal counts in inf-hour buckets" in text


def test_a_peer_that_came_and_went_leaves_no_entry_behind(model_path, tmp_path):
    """Peers restarted under new names (--name HOSTNAME-PID) came and went for as long as a worker
    and a client lived, and each left an entry in the worker's _sync_sent and _unmerged (counts
    that found no slot) and the client's inflight and _down_at, never removed."""
    import threading

    from zfraud.local import free_port
    from zfraud.model import load_model
    from zfraud.worker import Worker

    router, pub = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    w = Worker("a", router, pub, model=load_model(model_path), cards=4096, terminals=4096, heartbeat=0.2,
               drain_quiet_s=0.3, drain_max_s=2.0)
    w.scorer.features.merge_intel = lambda *args, **kwargs: False  # no slot for anyone: each is unmerged
    t = threading.Thread(target=w.run, daemon=True)
    t.start()
    client = Client(router, deadline_s=2.0)

    def wait(cond):
        end = time.monotonic() + 20
        while time.monotonic() < end:
            client.poll(20)
            if cond():
                return True
        return False

    try:
        for k in range(2):
            name = f"b-{k}"
            with open(tmp_path / f"{name}.log", "w") as log:
                p = subprocess.Popen([sys.executable, "-m", "zfraud", "worker", "--name", name, "--bind",
                                      f"tcp://127.0.0.1:{free_port()}", "--pub", f"tcp://127.0.0.1:{free_port()}",
                                      "--model", str(model_path), "--heartbeat", "0.2", "--seed", router],
                                     stdout=log, stderr=subprocess.STDOUT)
            try:
                assert wait(lambda: name in w.members.members and name in client.peers and name in w._unmerged)
                p.send_signal(signal.SIGTERM)
                assert p.wait(20) == 0
            finally:
                p.kill()
                p.wait()
            assert wait(lambda: name not in w.members.members and name not in client.peers)
            time.sleep(0.5)  # a heartbeat or two of a's
            for gone in ("b-0", "b-1")[:k + 1]:  # (w's thread changes these: membership tests only)
                assert gone not in w._sync_sent and gone not in w._unmerged
                assert gone not in client.inflight and gone not in client._down_at
    finally:
        client.close()
        w.stop()
        t.join(20)
