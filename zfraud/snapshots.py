"""Periodic snapshots written by a forked child, so that scoring does not wait for the disk.

A worker's state at the default sizes is 100-200 MB. Writing it (numpy .npz, fsync, rename)
stopped the scoring loop for 822 ms in bench/snapshot_pause.py (131 071 cards, 163 MB), and
copying it to write it from a thread would still stop it for about 115 ms. os.fork() gives the
child a copy-on-write image of this moment in about 3 ms; the child writes that image and exits,
while the parent goes on scoring and reads the child's exit status at its next heartbeats
(Redis's BGSAVE does the same). Pages the parent changes meanwhile are copied once, so memory
grows by what the scoring loop touches during the write, at most the state's size.

The child only writes a file: it touches no socket, logs nothing, runs no garbage collection (a
finalizer could close one of the parent's ZeroMQ sockets) and leaves with os._exit (no atexit
handler, no buffer flush, no ZeroMQ teardown). It closes every inherited descriptor first thing,
so a listening port is not held by a child that outlives a killed parent. An error comes back on
a pipe, as one line. The child takes no lock another thread could hold (ZeroMQ's I/O threads, an
HTTP metrics thread): it runs numpy and file writes only, and glibc's malloc is fork-safe. Python
3.12 and later warn about fork in a process with threads all the same (a DeprecationWarning,
hidden by default). Where fork does not exist or fails (no memory for the image under strict
overcommit), the save runs in the caller, as before.
"""
from __future__ import annotations

import gc
import os
import time
from dataclasses import dataclass

NICE = 10  # the child yields the CPU to scoring (bench/RESULTS.md: on the busy 2-core host, p99
           # 10-22 ms at 20,000 tx/s with it, 20-50 ms without, over 950 ms saving in the loop)


@dataclass
class Outcome:
    ok: bool
    error: str           # why it failed ("" if ok)
    taken_at: float      # time.monotonic() of the image that was saved (ages survive a clock step)
    write_s: float       # from the fork to the end of the write (as the child measured it, if it succeeded)
    pause_ms: float      # how long the parent stopped: for the fork, or for the whole save in place
    in_place: str = ""   # why the save ran in the parent ("" when a child wrote it)


class BackgroundSave:
    """At most one child writing at a time: start() a save, poll() for how it ended."""

    def __init__(self):
        self.pid: int | None = None
        self._pipe: int | None = None
        self._done: Outcome | None = None  # the outcome of a save run in place, until polled
        self._taken_at = self._started = self._pause_ms = 0.0

    @property
    def busy(self) -> bool:
        return self.pid is not None

    def start(self, save) -> bool:
        """Run save() in a child on an image of this moment. False if a save is still running.
        Where there is no fork, or it fails, save() runs here and poll() reports it (an OSError
        as a failed save; anything else propagates)."""
        if self.pid is not None:
            return False
        self._taken_at, t0 = time.monotonic(), time.perf_counter()
        if not hasattr(os, "fork"):
            return self._in_place(save, t0, "this platform has no fork")
        try:
            r, w = os.pipe()
        except OSError as e:  # out of descriptors
            return self._in_place(save, t0, f"no pipe: {e}")
        try:
            pid = os.fork()
        except OSError as e:  # e.g. ENOMEM under strict overcommit: the image would not fit
            os.close(r)
            os.close(w)
            return self._in_place(save, t0, f"cannot fork: {e}")
        if pid == 0:  # the child
            code = 1
            try:
                gc.disable()  # no finalizer of the parent's objects (a ZeroMQ socket's) runs here
                _close_inherited(keep=w)
                os.nice(NICE)
                save()
                os.write(w, f"{time.perf_counter() - t0:.6f}".encode())
                code = 0
            except BaseException as e:  # noqa: BLE001 - whatever it is, the parent hears of it
                try:
                    os.write(w, (str(e) or type(e).__name__).encode("utf-8", "replace")[:4000])
                except OSError:
                    pass
            finally:
                os._exit(code)
        os.close(w)
        self._started = time.perf_counter()
        self.pid, self._pipe, self._pause_ms = pid, r, (self._started - t0) * 1000
        return True

    def _in_place(self, save, t0: float, why: str) -> bool:
        """No child: save here, the scoring loop waiting (as it did before background saves)."""
        try:
            save()
            ok, error = True, ""
        except OSError as e:
            ok, error = False, str(e)
        took = time.perf_counter() - t0
        self._done = Outcome(ok, error, self._taken_at, took, took * 1000, in_place=why)
        return True

    def poll(self, block: bool = False) -> Outcome | None:
        """How the last save ended, once (None while it runs, or if there is none)."""
        if self._done is not None:
            done, self._done = self._done, None
            return done
        if self.pid is None:
            return None
        pid, status = os.waitpid(self.pid, 0 if block else os.WNOHANG)
        if pid == 0:
            return None
        try:
            said = os.read(self._pipe, 4096).decode("utf-8", "replace")  # the write's seconds, or the error
        finally:
            os.close(self._pipe)
        self.pid = self._pipe = None
        code = os.waitstatus_to_exitcode(status)
        if code == 0:
            return Outcome(True, "", self._taken_at, float(said or time.perf_counter() - self._started), self._pause_ms)
        return Outcome(False, said or f"the saving process ended with status {code}", self._taken_at,
                       time.perf_counter() - self._started, self._pause_ms)


def _close_inherited(keep: int) -> None:
    """In a forked child: close every descriptor but stdin/out/err and `keep`."""
    os.closerange(3, keep)
    os.closerange(keep + 1, max(os.sysconf("SC_OPEN_MAX"), keep + 1))  # close_range(2) on Linux
