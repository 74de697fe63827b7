"""Background snapshots (zfraud.snapshots): a forked child writes the state of one moment while
the parent goes on."""
import os
import socket
import time

import numpy as np
import pytest

from zfraud.snapshots import BackgroundSave


def wait(saver, timeout_s=10.0):
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        done = saver.poll()
        if done is not None:
            return done
        time.sleep(0.01)
    raise AssertionError("the background save did not end")


def test_the_child_writes_the_state_of_the_moment_it_started(tmp_path):
    state = np.arange(1_000_000, dtype=np.int64)
    path = tmp_path / "s.npy"

    def save():
        time.sleep(0.3)  # the parent changes its state meanwhile
        np.save(path, state)

    saver = BackgroundSave()
    t0 = time.monotonic()
    assert saver.start(save) and saver.busy
    state += 1  # after the fork: the child does not see this
    assert not saver.start(save)  # one save at a time
    done = wait(saver)
    assert done.ok and done.error == "" and t0 <= done.taken_at <= time.monotonic()
    assert done.write_s >= 0.3 and done.pause_ms < done.write_s * 1000
    np.testing.assert_array_equal(np.load(path), np.arange(1_000_000))
    assert not saver.busy and saver.poll() is None  # reported once


def test_a_failed_save_comes_back_as_its_error(tmp_path):
    saver = BackgroundSave()
    saver.start(lambda: open(tmp_path / "no-such-dir" / "s.npy", "wb"))
    done = wait(saver)
    assert not done.ok and "No such file or directory" in done.error and "no-such-dir" in done.error
    saver.start(lambda: os._exit(7))  # however it ends, the parent hears of it
    done = wait(saver)
    assert not done.ok and done.error == "the saving process ended with status 7"


def test_poll_can_wait_for_the_end(tmp_path):
    saver = BackgroundSave()
    saver.start(lambda: time.sleep(0.2))
    done = saver.poll(block=True)
    assert done is not None and done.ok and done.write_s >= 0.2


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork only")
def test_the_child_holds_none_of_the_parents_descriptors(tmp_path):
    """Once the child runs, a listening port closed by the parent is free, although the child
    is still writing: a worker restarted after a crash can bind its port while the save of the
    crashed one finishes."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    saver = BackgroundSave()
    saver.start(lambda: time.sleep(1.0))
    time.sleep(0.2)  # the child closes them first thing
    listener.close()
    again = socket.socket()
    try:
        again.bind(("127.0.0.1", port))  # EADDRINUSE if the child still held the listener
        again.listen()
    finally:
        again.close()
    assert saver.busy and wait(saver).ok


def test_without_a_fork_the_save_runs_in_place(tmp_path, monkeypatch):
    """Under strict overcommit, fork fails with ENOMEM for a large worker: the save must still
    happen (in the loop, as before background saves) and say why."""
    def no_fork():
        raise OSError(12, "Cannot allocate memory")

    monkeypatch.setattr(os, "fork", no_fork)
    saver = BackgroundSave()
    assert saver.start(lambda: np.save(tmp_path / "s.npy", np.arange(3)))
    assert not saver.busy
    done = saver.poll()
    assert done.ok and done.in_place == "cannot fork: [Errno 12] Cannot allocate memory"
    assert done.pause_ms == done.write_s * 1000 and saver.poll() is None
    np.testing.assert_array_equal(np.load(tmp_path / "s.npy"), np.arange(3))
    saver.start(lambda: open(tmp_path / "no-such-dir" / "s.npy", "wb"))
    done = saver.poll()
    assert not done.ok and "No such file or directory" in done.error


@pytest.mark.parametrize("named", [False, True])
def test_a_state_dir_under_the_default_name_is_warned_of(tmp_path, named):
    """The default name is HOSTNAME-PID: the next process has another, so it never finds the
    snapshot this one saves (OPERATIONS §2.3), and each restart leaves one more file."""
    import signal
    import subprocess
    import sys

    from zfraud.local import free_port

    args = [sys.executable, "-m", "zfraud", "worker", "--bind", f"tcp://127.0.0.1:{free_port()}",
            "--pub", f"tcp://127.0.0.1:{free_port()}", "--state-dir", str(tmp_path / "s"),
            *(["--name", "a"] if named else [])]
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
    lines = []
    try:
        for line in proc.stderr:
            lines.append(line)
            if " ready name=" in line:
                break
    finally:
        proc.send_signal(signal.SIGTERM)
        lines += proc.stderr.readlines()
        proc.wait(15)
    pid_name = f"{socket.gethostname()}-{proc.pid}"
    assert proc.returncode == 0 and any(" ready name=" in line for line in lines), "".join(lines)
    warned = [line for line in lines if "--state-dir without --name" in line]
    assert len(warned) == (0 if named else 1), "".join(lines)
    if not named:
        assert f"saves under {pid_name}, a name its next process (another pid) will not have" in warned[0]
