"""Hot reload and shadow on a live mesh of real worker processes."""
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from zfraud import Client, load_model
from zfraud import protocol as P
from zfraud.deploy import deploy
from zfraud.local import LocalMesh, free_port
from zfraud.model import LogisticModel, save_model
from zfraud.scoring import Scorer
from zfraud.sockets import configure
from zfraud.synthetic import synthetic

from conftest import request, run_cli


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    with LocalMesh(2, log_dir=str(tmp_path_factory.mktemp("deploy"))) as m:
        yield m


def second_model(tmp_path, version="default-3", scale=1.1, shift=0.5):
    m = load_model()
    m2 = LogisticModel(m.features, m.coef * scale, m.center, m.intercept + shift, version=version)
    path = tmp_path / f"{version}.json"
    save_model(m2, path)
    return m2, path


def versions(mesh):
    with Client(mesh.endpoint) as c:
        return {n: (s["model"], s["rules"], s["shadow"]) for n in c.members
                for s in [c.control(n, "status")["status"]]}


def test_deploy_during_a_send_loses_nothing_and_switches_cleanly(mesh, tmp_path):
    m2, path = second_model(tmp_path)
    out = tmp_path / "verdicts.jsonl"
    send = subprocess.Popen([sys.executable, "-m", "zfraud", "send", "--connect", mesh.endpoint, "--synthetic",
                             "150000", "--rate", "50000", "--json", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.2)
        r = run_cli("deploy", "--connect", mesh.endpoint, "--model", str(path))
        assert r.returncode == 0, r.stderr
        assert r.stdout.count("model=default-3") == 2 and r.stdout.count("shadow=none") == 2  # as status says it
        stdout, stderr = send.communicate(timeout=60)
    finally:
        send.kill()
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert send.returncode == 0, stderr
    assert (summary["verdicts"], summary["lost"]) == (150000, 0)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["model"] for r in rows} == {"default-2", "default-3"}
    for worker in ("w1", "w2"):  # per worker, answers arrive in order: old, then new, never back
        seq = [r["model"] for r in rows if r["worker"] == worker]
        switch = seq.index("default-3")
        assert set(seq[switch:]) == {"default-3"} and set(seq[:switch]) == {"default-2"}
    # every score is exactly the one the model it names would give: nothing half-loaded
    b = {k: np.concatenate(v) for k, v in _columns(150000).items()}
    old, _ = Scorer(load_model()).score(b)
    new, _ = Scorer(m2).score(b)
    got = np.array([r["score"] for r in rows])
    ids = np.array([r["tx_id"] for r in rows])
    is_new = np.array([r["model"] == "default-3" for r in rows])
    np.testing.assert_allclose(got[~is_new], old["score"][ids[~is_new]], rtol=0, atol=1e-6)
    np.testing.assert_allclose(got[is_new], new["score"][ids[is_new]], rtol=0, atol=1e-6)
    assert versions(mesh) == {"w1": ("default-3", "none", None), "w2": ("default-3", "none", None)}


def test_deploy_of_an_empty_rules_file_removes_the_rules_as_a_worker_started_with_it_has_none(tmp_path):
    """`deploy --rules empty.toml` (0 bytes) was checked here as no rules and reported a success,
    but went out as the empty frame, which means "keep the current rules" on the wire: every worker
    kept its rules. A file of one newline removed them, and `worker --rules empty.toml` starts
    with none; `deploy --rules FILE` now deploys FILE's rules, none for an empty one."""
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    example = Path(__file__).parents[1] / "conf" / "rules.toml"
    with LocalMesh(1, extra_args=["--rules", str(example)], log_dir=str(tmp_path / "a")) as mesh:
        assert versions(mesh) == {"w1": ("default-2", "example-1", None)}
        r = run_cli("deploy", "--connect", mesh.endpoint, "--rules", str(empty))
        assert (r.returncode, r.stdout) == (0, "w1           model=default-2  rules=unversioned  shadow=none\n"), r.stderr
        assert versions(mesh) == {"w1": ("default-2", "unversioned", None)}
        with Client(mesh.endpoint) as c:  # a blocked terminal's transaction: no rule declines it now
            v = c.score({"tx_id": [1], "card": [7], "terminal": [9001], "ts_ms": [1_522_540_800_000], "amount": [10.0]})
        assert (v["decision"].tolist(), v["fired"].tolist()) == ([P.APPROVE], [()])
    with LocalMesh(1, extra_args=["--rules", str(empty)], log_dir=str(tmp_path / "b")) as mesh:
        assert versions(mesh) == {"w1": ("default-2", "unversioned", None)}


def _columns(n):
    cols = {}
    for c in synthetic(n, batch=1024):
        for k, v in c.items():
            cols.setdefault(k, []).append(v)
    return cols


def test_rules_deploy_changes_decisions_and_names_the_rule(mesh):
    with Client(mesh.endpoint) as c:
        answers = deploy(c, rules_path="conf/rules.toml")
        assert {a["rules"] for a in answers.values()} == {"example-1"}
        b = next(synthetic(400, batch=400, seed=9))
        b["terminal"][:50] = 9002
        v = c.score(b)
    assert (v["decision"][:50] == P.DECLINE).all()
    assert v["fired"][:50].tolist() == [("blocked_terminals",)] * 50


def test_shadow_scores_beside_the_live_model_without_changing_decisions(mesh, tmp_path, ctx):
    m3, path = second_model(tmp_path, "challenger-1", scale=0.9, shift=-0.3)
    sub = configure(ctx.socket(zmq.SUB))
    sub.setsockopt(zmq.SUBSCRIBE, b"shadow")
    for pub in mesh.pubs.values():
        sub.connect(pub)
    r = run_cli("deploy", "--connect", mesh.endpoint, "--model", str(path), "--shadow")
    assert r.returncode == 0, r.stderr
    assert {v[2] for v in versions(mesh).values()} == {"challenger-1"}
    time.sleep(0.5)  # slow joiner
    b = next(synthetic(2000, batch=2000, seed=12))
    with Client(mesh.endpoint) as c:
        live = c.score(b)
    shadow_scores = {}
    end = time.monotonic() + 10
    while len(shadow_scores) < 2000 and time.monotonic() < end:
        if sub.poll(200):
            frames = sub.recv_multipart()
            h = P.unpack(frames[2])
            assert h["model"] == "challenger-1" and h["live_model"] != "challenger-1"
            cols = P.read_columns(frames[3:], h["rows"], P.VERDICT_COLUMNS)
            shadow_scores.update(zip(cols["tx_id"].tolist(), cols["score"].tolist()))
    sub.close()
    assert len(shadow_scores) == 2000
    expected, _ = Scorer(m3).score(b)
    got = np.array([shadow_scores[t] for t in b["tx_id"].tolist()], dtype=np.float32)
    np.testing.assert_array_equal(got, expected["score"])
    assert not np.array_equal(got, live["score"])  # the live decisions came from the live model


@pytest.mark.parametrize("model, rules, message", [
    (b"{not json", b"", "deploy refused: deployed model is not valid JSON: Expecting property name enclosed in "
                        "double quotes: line 1 column 2 (char 1)"),
    (b"\xff\xfe", b"", "deploy refused: deployed model is not valid JSON: "),
    (b"", b"\xff", "deploy refused: deployed rules: not UTF-8 text (byte 0xff at offset 0)"),
])
def test_a_deploy_refused_names_the_part_that_failed(mesh, ctx, model, rules, message):
    """json's own message ("Expecting value: line 1 column 1 (char 0)") named neither the model nor the rules."""
    reply = request(ctx, mesh.endpoint, P.encode(P.CONTROL, {"op": "deploy"}, [model, rules]))
    assert reply.command == P.ERROR and reply.header["code"] == P.BAD_CONTROL
    assert reply.header["message"].startswith(message), reply.header["message"]


def test_a_bad_model_is_refused_locally_and_by_the_worker(mesh, tmp_path, ctx):
    bad = tmp_path / "bad.json"
    d = load_model().to_dict()
    d["coef"] = d["coef"][:2]
    bad.write_text(json.dumps(d))
    r = run_cli("deploy", "--connect", mesh.endpoint, "--model", str(bad))
    assert r.returncode != 0 and "expected coef and center of length 5" in r.stderr and "Traceback" not in r.stderr
    before = versions(mesh)
    reply = request(ctx, mesh.endpoint, P.encode(P.CONTROL, {"op": "deploy"}, [json.dumps(d).encode(), b""]))
    assert reply.command == P.ERROR and reply.header["code"] == P.BAD_CONTROL
    assert "deploy refused" in reply.header["message"]
    reply = request(ctx, mesh.endpoint, P.encode(P.CONTROL, {"op": "deploy"}, [b"", b"[[rule]]\nname='x'\nwhen='nope > 1'\naction='review'\n"]))
    assert reply.header["code"] == P.BAD_CONTROL and "unknown name 'nope'" in reply.header["message"]
    assert versions(mesh) == before
    # Rules that pass the local check (names of any feature set) and that the workers refuse:
    # said once, not "refused deploy: deploy refused: ..."
    rules = tmp_path / "card.toml"
    rules.write_text("version = 'c-1'\n[[rule]]\nname='x'\nwhen='card_nb_tx_1d > 5'\naction='review'\nreason='r'\n")
    r = run_cli("deploy", "--connect", mesh.endpoint, "--rules", str(rules))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "refused deploy: deployed rules" in r.stderr and "deploy refused" not in r.stderr, r.stderr
    assert versions(mesh) == before


def test_deploy_waits_for_the_mesh_as_long_as_its_timeout():
    """--timeout 1 against no worker said "within 5 s" (the client's own connect timeout)."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    r = run_cli("deploy", "--connect", endpoint, "--rules", "conf/rules.toml", "--timeout", "1")
    assert r.returncode == 1 and f"could not connect to {endpoint} within 1 s" in r.stderr, r.stderr
    assert time.monotonic() - t0 < 4.5  # the command's own start included


def test_after_a_deploy_and_its_rollback_the_new_state_is_shared_with_peers(model_path, tmp_path):
    """zfraud-v6 -> basic-v1 -> zfraud-v6 on both workers: the new state's terminal counts went to
    no peer, because the worker kept the old state's export cursor, which the new one's versions
    had yet to pass. Each worker's snapshot must hold every transaction of the stream sent after,
    and of the one sent before: the rollback saved that state, and the deploy back restored it."""
    from test_intel import saved_counts_equal_the_stream, state_args, terminal_stream

    from zfraud.model import DEFAULT_MODEL

    state = tmp_path / "s"
    with LocalMesh(2, extra_args=state_args(model_path, state), log_dir=str(tmp_path)) as mesh:
        with Client(mesh.endpoint) as c:
            before = terminal_stream(3000, seed=1)
            c.score({k: v + 10**6 if k == "tx_id" else v for k, v in before.items()})
            time.sleep(1.0)  # its counts go out: the export cursor moves on
            for model in (DEFAULT_MODEL, model_path):
                r = run_cli("deploy", "--connect", mesh.endpoint, "--model", str(model))
                assert r.returncode == 0, r.stderr
            tx = terminal_stream(2000, seed=2)
            c.score(tx)
            time.sleep(1.5)  # a few heartbeats (0.2 s): the counts go out
    both = {k: np.concatenate([before[k], tx[k]]) for k in tx}
    for w in ("w1", "w2"):
        saved_counts_equal_the_stream(state / f"{w}.state.npz", both)
        assert "feature set zfraud-v6 -> basic-v1: the zfraud-v6 state is saved to" in mesh.log(w)
        assert "feature set basic-v1 -> zfraud-v6: restored state from" in mesh.log(w)


def test_a_new_state_gets_the_terminal_counts_of_a_member_the_deploy_did_not_reset(model_path, tmp_path):
    """basic-v1 reached w1 only (w2 refused or timed out: OPERATIONS says deploy again), then
    zfraud-v6 went to both: w1's new state read the terminals without w2's counts (a code
    reviewer's repro: 20 of 220 transactions), and w2, max-merging w1's counts started again from
    zero under its old ones, missed w1's news. Each snapshot must hold every transaction."""
    from test_intel import saved_counts_equal_the_stream, state_args, terminal_stream

    from zfraud.deploy import artefact
    from zfraud.model import DEFAULT_MODEL

    state = tmp_path / "s"
    with LocalMesh(2, extra_args=state_args(model_path, state), log_dir=str(tmp_path)) as mesh:
        with Client(mesh.endpoint) as c:
            tx = terminal_stream(3000, seed=3)
            first = {k: v[:2000] for k, v in tx.items()}
            c.score(first)
            time.sleep(1.0)  # a few heartbeats (0.2 s): the counts go out
            assert c.control("w1", "deploy", payload=artefact(DEFAULT_MODEL))["model"] == "default-2"
            assert {w: a["model"] for w, a in deploy(c, model_path=model_path).items()} == {"w1": "probe-1",
                                                                                           "w2": "probe-1"}
            time.sleep(1.0)  # w1 asks w2 for its counts
            c.score({k: v[2000:] for k, v in tx.items()})  # in the same terminal buckets as the first
            time.sleep(1.5)
    assert "feature set zfraud-v6 -> basic-v1" in mesh.log("w1") and "feature set" not in mesh.log("w2")
    for w in ("w1", "w2"):
        saved_counts_equal_the_stream(state / f"{w}.state.npz", tx)


def test_a_deploy_that_changes_the_feature_set_forgets_the_ids_it_had_remembered(data, model_path, tmp_path):
    """basic-v1 -> zfraud-v6 starts a new, empty state, but the worker used to keep its memory of
    the transaction and label ids it had seen: history sent again to warm the new state was all
    'repeats' and the state stayed empty (tester: 58 627 rows, state.cards 0), and the snapshot
    saved with the new state ids it never counted. The ids go with the state they were counted in."""
    from zfraud.state import load_npz

    state = tmp_path / "state"
    n = len(data["tx_id"])
    half = n // 2
    tx = {k: data[k] for k, _ in P.TX_COLUMNS}
    labels = {k: data[k] for k in P.LABEL_NAMES}
    extra = ["--cards", "4096", "--terminals", "4096", "--state-dir", str(state)]
    with LocalMesh(1, extra_args=extra, log_dir=str(tmp_path)) as mesh:
        with Client(mesh.endpoint) as c:
            c.score(tx)  # default-2: basic-v1, no streaming state
            c.label(labels)
            assert c.control("w1", "status")["status"]["state"]["remembered_tx_ids"] == n
            assert deploy(c, model_path=model_path)["w1"]["model"] == "probe-1"  # zfraud-v6
            c.score({k: v[:half] for k, v in tx.items()})  # the history again, to warm the new state
            applied = c.label({k: v[:half] for k, v in labels.items()})
            deploy(c, model_path=model_path)  # the same feature set: the state, and its ids, stay
            st = c.control("w1", "status")["status"]
        assert mesh.stop_worker("w1") == 0  # SIGTERM: saves the state, with the ids it counted
        log = mesh.log("w1")
        snap = load_npz(state / "w1.state.npz")
        # Restarted from that snapshot: the first half is a repeat there, the second half is not
        mesh.start_worker("w1", extra_args=["--model", str(model_path)])
        mesh.wait_members(["w1"])
        with Client(mesh.endpoint) as c:
            c.score(tx)
            again = c.control("w1", "status")["status"]
    assert st["repeats"] == 0 and st["labels"] == n + half
    assert st["state"]["cards"] == len(np.unique(data["card"][:half]))
    assert st["state"]["remembered_tx_ids"] == half
    assert applied["w1"] == int((data["fraud"][:half] != 0).sum()) > 0
    frauds = data["fraud"] != 0  # only fraud labels are remembered: a genuine one counts nothing
    assert (f"feature set basic-v1 -> zfraud-v6: a new, empty streaming state; forgot the {n} transaction ids "
            f"and {int(frauds.sum())} fraud label ids remembered with the old one") in log, log
    np.testing.assert_array_equal(np.sort(snap["extra.seen"]), np.sort(data["tx_id"][:half]))
    np.testing.assert_array_equal(np.sort(snap["extra.labels_seen"]), np.sort(data["tx_id"][:half][frauds[:half]]))
    assert again["repeats"] == half and again["state"]["cards"] == len(np.unique(data["card"]))


def _engine_scores(model_path, parts):
    """The probe model's scores of the last of `parts` (column dicts) after an engine of the
    workers' sizes counted the others: what a worker that kept all their history scores."""
    from zfraud.features import FULL, FeatureEngine

    e, m = FeatureEngine(FULL, 7, 4096, 4096), load_model(model_path)
    for part in parts:
        X = e.transform(part)
    return m.predict_proba(X).astype(np.float32)


def test_a_deploy_back_to_a_stateful_feature_set_restores_the_snapshot_it_finds(data, model_path, tmp_path):
    """A worker deployed to zfraud-v6 saved its state at its stop, came back on the basic-v1
    model of its command line (the file `left as it is`), and was deployed zfraud-v6 again: it
    started empty (cards 0, no ids remembered) and its next save overwrote the snapshot, though
    that matched the new feature set. The deploy restores it now, as a start-up would."""
    state = tmp_path / "state"
    n = len(data["tx_id"])
    half = n // 2
    tx = {k: data[k] for k, _ in P.TX_COLUMNS}
    first, second = ({k: v[s] for k, v in tx.items()} for s in (slice(None, half), slice(half, None)))
    extra = ["--cards", "4096", "--terminals", "4096", "--state-dir", str(state)]
    with LocalMesh(1, extra_args=extra, log_dir=str(tmp_path)) as mesh:
        with Client(mesh.endpoint) as c:
            assert deploy(c, model_path=model_path)["w1"]["model"] == "probe-1"
            c.score(first)
            before = c.control("w1", "status")["status"]["state"]
        assert mesh.stop_worker("w1") == 0  # SIGTERM: saves the state
        mesh.start_worker("w1")  # the command line's model: default-2, basic-v1
        mesh.wait_members(["w1"])
        with Client(mesh.endpoint) as c:
            assert deploy(c, model_path=model_path)["w1"]["model"] == "probe-1"
            after = c.control("w1", "status")["status"]["state"]
            scored = c.score(second)
            again = c.score(first)  # counted before the stop: repeats, as the snapshot remembers them
            end = c.control("w1", "status")["status"]
        log = mesh.log("w1")
    assert before["cards"] == len(np.unique(data["card"][:half])) > 0
    assert {k: after[k] for k in ("cards", "terminals", "remembered_tx_ids")} == \
        {"cards": before["cards"], "terminals": before["terminals"], "remembered_tx_ids": half}, log
    np.testing.assert_array_equal(scored["score"], _engine_scores(model_path, (first, second)))
    assert end["repeats"] == half and not np.isnan(again["score"]).any()
    assert f"state in {state / 'w1.state.npz'} not restored: model default-2" in log
    assert f"feature set basic-v1 -> zfraud-v6: restored state from {state / 'w1.state.npz'} in " in log, log
    assert f"remembers the {half} and 0 counted into the restored one" in log, log


def _wait_for_log(mesh, name, text, timeout_s=15.0):
    end = time.monotonic() + timeout_s
    while text not in mesh.log(name):
        assert time.monotonic() < end, f"{text!r} not logged by {name} within {timeout_s} s:\n{mesh.log(name)}"
        time.sleep(0.1)


def test_a_snapshot_a_deploy_cannot_restore_is_moved_aside_not_overwritten(data, model_path, tmp_path):
    """The start-up leaves a snapshot it does not restore as it is; a deploy to zfraud-v6 must not
    let its first save overwrite one that does not fit (here: not a snapshot at all)."""
    state = tmp_path / "state"
    state.mkdir()
    (state / "w1.state.npz").write_bytes(b"not a snapshot")
    tx = {k: data[k][:5000] for k, _ in P.TX_COLUMNS}
    extra = ["--cards", "4096", "--terminals", "4096", "--state-dir", str(state)]
    with LocalMesh(1, extra_args=extra, log_dir=str(tmp_path)) as mesh:
        with Client(mesh.endpoint) as c:
            assert deploy(c, model_path=model_path)["w1"]["model"] == "probe-1"
            c.score(tx)
            st = c.control("w1", "status")["status"]["state"]
        assert mesh.stop_worker("w1") == 0
        log = mesh.log("w1")
    aside = [p for p in state.iterdir() if p.name.startswith("w1.state.npz.not-restored-")]
    assert len(aside) == 1 and aside[0].read_bytes() == b"not a snapshot", sorted(state.iterdir())
    assert (f"feature set basic-v1 -> zfraud-v6: state in {state / 'w1.state.npz'} not restored: state file "
            f"{str(state / 'w1.state.npz')!r}: not a zfraud snapshot (not an .npz archive); moved to {aside[0]} "
            f"(not overwritten), and a new, empty streaming state") in log, log
    assert st["cards"] == len(np.unique(tx["card"])) and st["remembered_tx_ids"] == 5000  # empty, then counted
    from zfraud.state import load_npz
    assert len(load_npz(state / "w1.state.npz")["extra.seen"]) == 5000


def test_a_deploy_away_from_zfraud_v6_saves_the_state_as_it_is_then(data, model_path, tmp_path):
    """Rolled back to basic-v1 by a deploy, a worker stopped saving, and its last periodic
    snapshot stayed: restored at its next start on zfraud-v6, it lacked what came after that
    save. The deploy saves the state as it is at the switch; a restart restores all of it."""
    from zfraud.model import DEFAULT_MODEL
    from zfraud.state import load_npz

    state = tmp_path / "state"
    tx = {k: data[k][:9000] for k, _ in P.TX_COLUMNS}
    parts = [{k: v[s] for k, v in tx.items()} for s in (slice(0, 3000), slice(3000, 6000), slice(6000, None))]
    extra = ["--cards", "4096", "--terminals", "4096", "--state-dir", str(state), "--model", str(model_path),
             "--snapshot-every", "1"]
    with LocalMesh(1, extra_args=extra, log_dir=str(tmp_path)) as mesh:
        with Client(mesh.endpoint) as c:
            c.score(parts[0])
            _wait_for_log(mesh, "w1", "in the background")  # a periodic save, of the first part
            c.score(parts[1])
            assert deploy(c, model_path=DEFAULT_MODEL)["w1"]["model"] == "default-2"  # at once: no save between
            c.score(parts[2])  # scored with no state: in no snapshot
        assert mesh.stop_worker("w1") == 0
        saved = load_npz(state / "w1.state.npz")
        mesh.start_worker("w1")  # zfraud-v6 again, from its command line
        mesh.wait_members(["w1"])
        with Client(mesh.endpoint) as c:
            st = c.control("w1", "status")["status"]["state"]
        log = mesh.log("w1")
    np.testing.assert_array_equal(np.sort(saved["extra.seen"]), np.sort(tx["tx_id"][:6000]))
    assert st["cards"] == len(np.unique(tx["card"][:6000])) and st["remembered_tx_ids"] == 6000, log
    assert (f"feature set zfraud-v6 -> basic-v1: the zfraud-v6 state is saved to {state / 'w1.state.npz'} as it "
            f"is now") in log, log


# -- what a deploy reaches, and what it reports ------------------------------------------------
def _wait(cond, timeout_s=15.0, what="a condition"):
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"no {what} within {timeout_s:g} s")


def _start_deploy(endpoint, *args):
    return subprocess.Popen([sys.executable, "-m", "zfraud", "deploy", "--connect", endpoint, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _rules_of(mesh, name):
    with Client(mesh.endpoint) as c:
        return c.control(name, "status")["status"]["rules"]


@pytest.mark.parametrize("how", ["joins", "comes back"])
def test_a_worker_that_joins_or_comes_back_during_a_deploy_gets_it(tmp_path, how):
    """The deploy went to the members as of its start only: w3, starting (a scale-out) or back from
    a pause that had dropped it from the member list while the deploy waited on a slow w2, kept its
    rules, and `deploy` exited 0 naming w1 and w2 (a third of the next send: no rules)."""
    names = ["w1", "w2", "w3"] if how == "comes back" else ["w1", "w2"]
    with LocalMesh(len(names), log_dir=str(tmp_path), names=names) as mesh:
        if how == "comes back":
            mesh.signal("w3", signal.SIGSTOP)  # dropped after 3 s of silence
            _wait(lambda: "w3" not in (mesh.members_of("w1") or ["w3"]), what="w3 dropped")
        mesh.signal("w2", signal.SIGSTOP)  # slow to answer: the deploy waits on it
        d = _start_deploy(mesh.endpoint, "--rules", "conf/rules.toml")
        try:
            time.sleep(0.5)
            if how == "comes back":
                mesh.signal("w3", signal.SIGCONT)
            else:
                mesh.start_worker("w3", seed=mesh.endpoint)
            _wait(lambda: "w3" in (mesh.members_of("w1") or []), what="w3 in w1's member list")
        finally:
            mesh.signal("w2", signal.SIGCONT)
            if how == "comes back":
                mesh.signal("w3", signal.SIGCONT)
        out, err = d.communicate(timeout=60)
        assert (d.returncode, out) == (0, "".join(f"{w:<12} model=default-2  rules=example-1  shadow=none\n"
                                                  for w in ("w1", "w2", "w3"))), err
        assert {w: _rules_of(mesh, w) for w in ("w1", "w2", "w3")} == dict.fromkeys(("w1", "w2", "w3"), "example-1")


def test_two_deploys_at_once_each_report_what_the_workers_run(tmp_path):
    """Two deploys at once both exited 0, each printing every worker on its own model, while the
    mesh ended as the last writer to each worker left it. Here mA reaches w1 first, then mB does:
    w1 runs mB, and the deploy of mA must say so and fail."""
    _, a = second_model(tmp_path, "mA")
    _, b = second_model(tmp_path, "mB", scale=1.2)
    with LocalMesh(2, log_dir=str(tmp_path)) as mesh:
        def model_of(name):
            with Client(mesh.endpoint) as c:
                return c.control(name, "status")["status"]["model"]

        mesh.signal("w2", signal.SIGSTOP)  # both deploys wait on w2, after w1
        try:
            da = _start_deploy(mesh.endpoint, "--model", str(a))
            _wait(lambda: model_of("w1") == "mA", what="mA on w1")
            db = _start_deploy(mesh.endpoint, "--model", str(b))
            _wait(lambda: model_of("w1") == "mB", what="mB on w1")
        finally:
            mesh.signal("w2", signal.SIGCONT)
        out_a, err_a = da.communicate(timeout=60)
        out_b, err_b = db.communicate(timeout=60)
        final = {w: model_of(w) for w in ("w1", "w2")}
    assert da.returncode == 1 and "Traceback" not in err_a, err_a
    assert out_a.splitlines()[0] == "w1           model=mB  rules=none  shadow=none  <- not deployed", out_a
    assert "w1 took the deploy, but runs model=mB (not mA) now: another deploy since, or a restart" in err_a
    # the deploy that ended last read the mesh as it stays: its lines are `zfraud status`'s models
    got_b = dict(line.split()[:2] for line in out_b.splitlines())
    assert got_b == {w: f"model={m}" for w, m in final.items()}, (out_b, final)
    assert db.returncode == (0 if set(final.values()) == {"mB"} else 1), err_b


def test_a_model_too_big_for_one_message_is_refused_at_once(mesh, tmp_path, monkeypatch):
    """A valid model whose deploy frame is over MAX_MESSAGE_BYTES went out anyway: libzmq drops
    such a frame without a word, and `deploy` said 'did not answer deploy within 10 s' (after
    31 s, for 77 MiB). It is refused before anything is sent, naming the size, the limit, and the
    way that works (a worker's --model)."""
    from zfraud import deploy as deploy_mod

    _, small = second_model(tmp_path, "small-1")
    size = len(json.dumps(load_model(small).to_dict()).encode())
    monkeypatch.setattr(deploy_mod, "MAX_MESSAGE_BYTES", size - 1)
    with pytest.raises(ValueError) as e:
        deploy_mod.artefact(small)
    assert str(e.value) == (f"{small}: the model is 0.0 MiB ({size} bytes) as a deploy message, over the 0 MiB "
                            f"({size - 1} bytes) a worker accepts in one frame: it cannot be deployed. Start the "
                            f"workers with --model {small} instead (one at a time)")
    monkeypatch.setattr(deploy_mod, "MAX_MESSAGE_BYTES", size)
    assert len(deploy_mod.artefact(small)[0]) == size  # the limit itself is allowed (libzmq: > max)
    # One real file over 64 MiB: the cheapest valid one is a logistic model with a long `source`
    big = tmp_path / "big.json"
    d = load_model().to_dict() | {"version": "big-1", "source": "x" * P.MAX_MESSAGE_BYTES}
    big.write_text(json.dumps(d))
    before = versions(mesh)
    t0 = time.monotonic()
    r = run_cli("deploy", "--connect", mesh.endpoint, "--model", str(big), "--timeout", "20")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    said = re.search(r"the model is 64\.0 MiB \((\d+) bytes\) as a deploy message, over the 64 MiB "
                     r"\((\d+) bytes\) a worker accepts in one frame", r.stderr)
    assert said and int(said[1]) > int(said[2]) == P.MAX_MESSAGE_BYTES, r.stderr
    assert f"Start the workers with --model {big} instead" in r.stderr and r.stdout == ""
    assert time.monotonic() - t0 < 15  # before any worker was asked (it never answers: 20 s)
    assert versions(mesh) == before


def test_a_deploy_that_some_workers_missed_prints_those_that_switched(tmp_path):
    """w2 did not answer in time: `deploy` exited 1 with w2's error only, not saying that w1 had
    switched. It prints every worker with what it runs, marks those that do not run the deploy,
    and names why."""
    _, a = second_model(tmp_path, "dA")
    with LocalMesh(2, log_dir=str(tmp_path)) as mesh:
        mesh.signal("w2", signal.SIGSTOP)
        try:
            r = run_cli("deploy", "--connect", mesh.endpoint, "--model", str(a), "--timeout", "1")
        finally:
            mesh.signal("w2", signal.SIGCONT)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stdout == ("w1           model=dA  rules=none  shadow=none\n"
                        "w2           (no answer)  <- not deployed\n"), r.stdout
    assert r.stderr == ("Error: 1 of 2 workers do not run what was deployed: w2 did not answer deploy within 1 s; "
                        "and did not answer status within 1 s after it: check `zfraud status`, it may still apply or "
                        "lose it\n"), r.stderr
