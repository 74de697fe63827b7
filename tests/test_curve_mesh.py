"""CURVE on a live mesh: served with the right keys, refused without or with a foreign key, with a
one-line message and no hang."""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from zfraud.local import LocalMesh

from conftest import run_cli


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("curve") / "mesh"
    r = run_cli("keys", "init", str(d))
    assert r.returncode == 0, r.stderr
    return d


@pytest.fixture(scope="module")
def secure_mesh(keys, tmp_path_factory):
    with LocalMesh(2, extra_args=["--curve-dir", str(keys)], log_dir=str(tmp_path_factory.mktemp("cm"))) as mesh:
        yield mesh


def test_keys_init_modes_and_refusal(keys):
    assert sorted(p.name for p in keys.iterdir()) == ["client.key", "client.key_secret", "worker.key",
                                                      "worker.key_secret"]
    assert (keys / "client.key_secret").stat().st_mode & 0o777 == 0o600
    r = run_cli("keys", "init", str(keys))
    assert r.returncode != 0 and "Traceback" not in r.stderr and "--force" in r.stderr


def test_served_with_the_mesh_keys(secure_mesh, keys):
    r = run_cli("send", "--connect", secure_mesh.endpoint, "--synthetic", "20000", "--json", "--curve-dir", str(keys))
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout.strip().splitlines()[-1])
    assert (s["verdicts"], s["lost"], s["workers"]) == (20000, 0, 2)


def test_tail_with_keys(secure_mesh, keys):
    tail = subprocess.Popen([sys.executable, "-m", "zfraud", "tail", "--connect", secure_mesh.endpoint, "--count", "2000",
                             "--curve-dir", str(keys), "--timeout", "30"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.5)
        assert run_cli("send", "--connect", secure_mesh.endpoint, "--synthetic", "2000", "--curve-dir",
                       str(keys)).returncode == 0
        out, err = tail.communicate(timeout=60)
    finally:
        tail.kill()
    assert tail.returncode == 0 and len(out.splitlines()) == 2000, err


def test_refused_without_keys(secure_mesh):
    t0 = time.monotonic()
    r = run_cli("send", "--connect", secure_mesh.endpoint, "--synthetic", "10", timeout=30)
    assert r.returncode != 0 and time.monotonic() - t0 < 15
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "encryption" in lines[0] and "--curve-dir" in lines[0], r.stderr


def test_refused_with_a_foreign_key(secure_mesh, tmp_path):
    foreign = tmp_path / "foreign"
    assert run_cli("keys", "init", str(foreign)).returncode == 0
    mesh_keys = Path(secure_mesh.extra_args[1])
    (foreign / "worker.key").write_bytes((mesh_keys / "worker.key").read_bytes())  # knows the server, not known to it
    t0 = time.monotonic()
    r = run_cli("status", "--connect", secure_mesh.endpoint, "--curve-dir", str(foreign), timeout=30)
    assert r.returncode != 0 and time.monotonic() - t0 < 15
    assert "does not know this client's key" in r.stderr and "Traceback" not in r.stderr


def test_keys_added_at_run_time_are_admitted_and_a_malformed_one_is_logged_not_fatal(keys, tmp_path):
    """Workers re-read the key directory every 5 s. A malformed or half-copied *.key must not stop
    them: the keys in force stay, the error is logged, and the next good reload admits the new key."""
    import shutil

    mesh_keys = tmp_path / "mesh"
    shutil.copytree(keys, mesh_keys)
    new = tmp_path / "new"
    assert run_cli("keys", "init", str(new)).returncode == 0
    (new / "worker.key").write_bytes((mesh_keys / "worker.key").read_bytes())

    def status_with_new_key():
        return run_cli("status", "--connect", mesh.endpoint, "--curve-dir", str(new), "--json", timeout=30)

    with LocalMesh(1, extra_args=["--curve-dir", str(mesh_keys)], log_dir=str(tmp_path)) as mesh:
        assert "does not know this client's key" in status_with_new_key().stderr
        (mesh_keys / "bad.key").write_text("metadata\ncurve\n    public-key = \"short\"\n")
        (mesh_keys / "new.key").write_bytes((new / "client.key").read_bytes())
        time.sleep(6.5)  # a reload (every 5 s) that meets the bad key
        r = status_with_new_key()
        assert "does not know this client's key" in r.stderr and mesh.procs["w1"].poll() is None
        assert "keys not reloaded" in mesh.log("w1") and "bad.key" in mesh.log("w1")
        (mesh_keys / "bad.key").unlink()
        time.sleep(6.5)
        r = status_with_new_key()
    assert r.returncode == 0, r.stderr
    assert [m["name"] for m in json.loads(r.stdout)["members"]] == ["w1"]


def test_a_running_worker_keeps_its_keys_when_its_key_directory_cannot_be_read(keys, tmp_path):
    """OPERATIONS §4.2: a key problem makes a running worker log `keys not reloaded` and keep its
    keys; it never stops for it. A --curve-dir made unreadable (chmod 000) stopped it at the next
    reload, status 1 and undrained (`Error: cannot use DIR: Permission denied`): os.listdir's
    PermissionError is not the SecurityError that a reload catches."""
    from zfraud.local import free_port

    mesh_keys = tmp_path / "mesh"
    shutil.copytree(keys, mesh_keys)
    run_as = []
    if os.geteuid() == 0:  # root reads through any mode: run the worker as root without that power
        if shutil.which("setpriv") is None:
            pytest.skip("running as root, and no setpriv to drop CAP_DAC_OVERRIDE: chmod 000 would not bite")
        run_as = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]
    router, pub = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    log = tmp_path / "w1.log"
    with open(log, "wb") as out:
        w = subprocess.Popen([*run_as, sys.executable, "-m", "zfraud", "worker", "--name", "w1", "--bind", router,
                              "--pub", pub, "--curve-dir", str(mesh_keys)], stdout=out, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        end = time.monotonic() + 30
        while "ready name=w1" not in log.read_text() and w.poll() is None and time.monotonic() < end:
            time.sleep(0.1)
        assert "ready name=w1" in log.read_text(), log.read_text()
        mesh_keys.chmod(0)
        time.sleep(6.5)  # a reload (every 5 s) that cannot read the directory
        alive = w.poll() is None
        mesh_keys.chmod(0o700)
        assert alive, log.read_text()
        assert f"keys not reloaded: cannot read {mesh_keys}: Permission denied" in log.read_text(), log.read_text()
        r = run_cli("status", "--connect", router, "--curve-dir", str(mesh_keys), "--json", timeout=30)
        assert r.returncode == 0, r.stderr
        assert [m["name"] for m in json.loads(r.stdout)["members"]] == ["w1"]
        w.terminate()
        assert w.wait(30) == 0, log.read_text()  # drained and stopped as usual
    finally:
        mesh_keys.chmod(0o700)
        w.kill()
        w.wait(10)


def test_a_hidden_key_file_is_ignored_by_a_worker(keys, tmp_path):
    """A valid key saved as `.bob.key` (a hidden copy, a tool's temporary file): the worker starts
    (it used to refuse for ever with "keys changed while loading"), and bob is not admitted."""
    import shutil

    mesh_keys, bob = tmp_path / "mesh", tmp_path / "bob"
    shutil.copytree(keys, mesh_keys)
    assert run_cli("keys", "init", str(bob)).returncode == 0
    (bob / "worker.key").write_bytes((mesh_keys / "worker.key").read_bytes())
    (mesh_keys / ".bob.key").write_bytes((bob / "client.key").read_bytes())
    with LocalMesh(1, extra_args=["--curve-dir", str(mesh_keys)], log_dir=str(tmp_path)) as mesh:
        r = run_cli("status", "--connect", mesh.endpoint, "--curve-dir", str(bob), timeout=30)
        assert r.returncode != 0 and "does not know this client's key" in r.stderr, r.stderr
        assert "ZAP authenticator admits 2 key(s)" in mesh.log("w1")
        r = run_cli("status", "--connect", mesh.endpoint, "--curve-dir", str(mesh_keys), "--json", timeout=30)
    assert r.returncode == 0, r.stderr
    assert [m["name"] for m in json.loads(r.stdout)["members"]] == ["w1"]


def test_a_worker_restarts_past_a_malformed_client_key_but_not_a_malformed_worker_key(keys, tmp_path):
    """OPERATIONS §4.2's rolling restart with a malformed *.key in --curve-dir: the running worker
    tolerates it at reload, so the restarted one must too (logged, that client refused, the others
    admitted). A malformed worker.key, the worker's own, still stops it with a message naming it."""
    import shutil

    mesh_keys, carol = tmp_path / "mesh", tmp_path / "carol"
    shutil.copytree(keys, mesh_keys)
    assert run_cli("keys", "init", str(carol)).returncode == 0
    (carol / "worker.key").write_bytes((mesh_keys / "worker.key").read_bytes())
    with LocalMesh(1, extra_args=["--curve-dir", str(mesh_keys)], log_dir=str(tmp_path)) as mesh:
        (mesh_keys / "carol.key").write_text("# half-copied certificate\nmetadata\n")
        assert mesh.stop_worker("w1") == 0
        mesh.start_worker("w1")  # same endpoints, same directory
        mesh.wait_members(["w1"])
        restart_log = mesh.log("w1").split("ZAP authenticator admits")[-2:]
        assert (f"WARNING {mesh_keys / 'carol.key'}: no public key found" in restart_log[0]
                and "that key is not admitted, the others are" in restart_log[0]), mesh.log("w1")
        assert restart_log[1].startswith(" 2 key(s)")
        r = run_cli("status", "--connect", mesh.endpoint, "--curve-dir", str(carol), timeout=30)
        assert r.returncode != 0 and "does not know this client's key" in r.stderr, r.stderr
        r = run_cli("status", "--connect", mesh.endpoint, "--curve-dir", str(mesh_keys), "--json", timeout=30)
        assert r.returncode == 0, r.stderr
        assert [m["name"] for m in json.loads(r.stdout)["members"]] == ["w1"]
        router, pub = mesh.routers["w1"], mesh.pubs["w1"]
    (mesh_keys / "worker.key").write_text("# half-copied certificate\n")
    r = run_cli("worker", "--name", "w1", "--bind", router, "--pub", pub, "--curve-dir", str(mesh_keys), timeout=30)
    assert r.returncode == 1
    assert f"{mesh_keys / 'worker.key'}: no public key found" in r.stderr.strip().splitlines()[-1], r.stderr


def test_a_mixed_mesh_names_curve_in_the_seed_warning(keys, tmp_path):
    """A worker with --curve-dir and one without cannot connect: each scores alone, and the seed
    warning was the only log line ("check --seed"), with no word of CURVE. It now names this
    worker's CURVE setting and says that both ends must agree."""
    mesh = LocalMesh(3, log_dir=str(tmp_path))
    try:
        mesh.start_worker("a", extra_args=["--curve-dir", str(keys), "--heartbeat", "0.3"])  # CURVE
        mesh.start_worker("b", seed=mesh.routers["a"], extra_args=["--heartbeat", "0.3"])  # NULL, seeds a
        mesh.start_worker("c", seed=mesh.routers["b"], extra_args=["--curve-dir", str(keys), "--heartbeat", "0.3"])
        end = time.monotonic() + 30
        while time.monotonic() < end and not all("has not answered" in mesh.log(n) for n in "bc"):
            time.sleep(0.2)
        logs = {n: mesh.log(n) for n in "abc"}
    finally:
        mesh.stop()
    tail = ("check --seed, and that the seed runs {}: a worker with --curve-dir and one without cannot connect, "
            "nor can two with different worker keys")
    assert f"WARNING seed {mesh.routers['a']} has not answered" in logs["b"], logs["b"]
    assert tail.format("without CURVE, as this worker does (no --curve-dir)") in logs["b"], logs["b"]
    assert f"WARNING seed {mesh.routers['b']} has not answered" in logs["c"], logs["c"]
    assert tail.format(f"with CURVE, as this worker does (--curve-dir {keys})") in logs["c"], logs["c"]
    assert "has not answered" not in logs["a"]  # no seed: nothing to say
