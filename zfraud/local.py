"""A local mesh of real worker processes on loopback: for `zfraud demo`, tests and benchmarks.

    with LocalMesh(2) as mesh:
        with Client(mesh.endpoint) as client: ...

Each worker is `python -m zfraud worker` in its own process with free loopback ports. Start-up
waits (with a deadline) until every worker lists every other as a member; shutdown sends SIGTERM,
waits, and kills whatever has not gone. A worker also gets SIGTERM when the process that started
it dies (on Linux: `stop_with_parent`), so a killed demo, back-test or test run leaves none behind.
"""
from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import deque

import zmq

from . import protocol as P
from .security import Curve
from .sockets import configure

START_ATTEMPTS = 3  # a mesh whose port another process took starts again on new ports, this often in all
PARENT_ENV = "ZFRAUD_STOP_WITH_PARENT"  # set for the workers LocalMesh starts: the starter's pid
PR_SET_PDEATHSIG = 1  # prctl(2)


def stop_with_parent() -> None:
    """In a worker LocalMesh started: ask Linux for SIGTERM (a drain and a clean stop) when the
    thread that started it exits, so that a killed parent leaves no worker holding its ports. If
    that parent is already gone, stop now. Elsewhere, LocalMesh's own shutdown is all there is."""
    parent = os.environ.get(PARENT_ENV)
    if not parent:
        return
    try:
        if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM) != 0:
            return
    except (OSError, AttributeError):  # no prctl: not Linux
        return
    if os.getppid() != int(parent):
        os.kill(os.getpid(), signal.SIGTERM)


_handed_out: deque = deque(maxlen=256)  # the ports free_port returned last


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on `host` now (nothing reserves it), and not one of the last 256 this process
    was given: the kernel can give the same one twice, and a worker's --bind and --pub must differ."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if port not in _handed_out:
            break
    _handed_out.append(port)
    return port


class LocalMesh:
    def __init__(self, workers: int = 2, extra_args=(), start_timeout_s: float = 30.0, log_dir=None,
                 names=None):
        if workers < 1 or (names is not None and len(names) != workers):
            raise ValueError(f"a local mesh needs at least 1 worker and one name per worker, got {workers} "
                             f"worker(s) and names {names!r}")
        self.n = workers
        self.extra_args = list(extra_args)
        self.start_timeout_s = start_timeout_s
        self._own_dir = log_dir is None  # a temporary directory: removed when every worker exits cleanly
        self.log_dir = log_dir or tempfile.mkdtemp(prefix="zfraud-mesh-")
        os.makedirs(self.log_dir, exist_ok=True)
        self.names = list(names or [f"w{i + 1}" for i in range(workers)])
        self.procs: dict[str, subprocess.Popen] = {}
        self.routers: dict[str, str] = {}
        self.pubs: dict[str, str] = {}
        # Workers started on ports start_worker picked, and not yet seen up: (seed, extra_args,
        # starts so far). wait_members starts one again on new ports if another process took one.
        self._picked: dict[str, tuple] = {}

    @property
    def endpoint(self) -> str:
        """The ROUTER endpoint of the first worker: the one address a client needs."""
        return self.routers[self.names[0]]

    def start_worker(self, name: str, seed: str | None = None, router: str | None = None,
                     pub: str | None = None, extra_args=()) -> subprocess.Popen:
        """Start worker `name` on the given endpoints, else on those it had, else on free loopback
        ports; wait_members then waits for it (and starts it again on new ports if another process
        took one of those it picked)."""
        picked = not (router or pub or name in self.routers)
        starts = self._picked[name][2] if picked and name in self._picked else 0
        router = router or self.routers.get(name) or f"tcp://127.0.0.1:{free_port()}"
        pub = pub or self.pubs.get(name) or f"tcp://127.0.0.1:{free_port()}"
        cmd = [sys.executable, "-m", "zfraud", "worker", "--name", name, "--bind", router, "--pub", pub,
               *self.extra_args, *extra_args]
        if seed:
            cmd += ["--seed", seed]
        log = open(os.path.join(self.log_dir, f"{name}.log"), "ab")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", PARENT_ENV: str(os.getpid())}
        self.procs[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            env=env, cwd=self.log_dir)
        log.close()
        self.routers[name], self.pubs[name] = router, pub
        if picked:
            self._picked[name] = (seed, list(extra_args), starts + 1)
        else:
            self._picked.pop(name, None)
        return self.procs[name]

    def start(self) -> "LocalMesh":
        """Start every worker and wait until they all see each other. free_port() cannot reserve
        the ports it finds: another process (an outgoing connection's ephemeral port, say) can
        take one before the worker binds it. A worker that cannot bind its port exits at once,
        so then every worker is stopped and the mesh starts again on new ports (not just that one:
        the others name the first as their seed)."""
        for attempt in range(START_ATTEMPTS):
            for i, name in enumerate(self.names):
                self.start_worker(name, seed=self.routers[self.names[0]] if i else None,
                                  router=f"tcp://127.0.0.1:{free_port()}", pub=f"tcp://127.0.0.1:{free_port()}")
            try:
                self.wait_members(self.names)
                return self
            except RuntimeError as e:
                if attempt + 1 == START_ATTEMPTS or "Address already in use" not in str(e):
                    raise
                self._stop_all()
                self.procs.clear()
                self.routers.clear()
                self.pubs.clear()

    def members_of(self, name: str, timeout_s: float = 1.0) -> list[str] | None:
        """The member names worker `name` reports, or None if it does not answer in time."""
        ctx = zmq.Context.instance()
        sock = configure(ctx.socket(zmq.DEALER))
        if "--curve-dir" in self.extra_args:  # a CURVE mesh: ask with the client keys
            Curve.from_dir(self.extra_args[self.extra_args.index("--curve-dir") + 1], "client").client(sock)
        try:
            sock.connect(self.routers[name])
            sock.send_multipart(P.encode(P.HELLO, {"role": "client"}))
            if not sock.poll(int(timeout_s * 1000)):
                return None
            msg = P.parse(sock.recv_multipart())
            return sorted(m["name"] for m in msg.header.get("members", []))
        finally:
            sock.close()

    def wait_members(self, names, timeout_s: float | None = None) -> None:
        """Wait until each named worker lists exactly `names` as members."""
        want = sorted(names)
        end = time.monotonic() + (timeout_s or self.start_timeout_s)
        while time.monotonic() < end:
            for name, proc in list(self.procs.items()):
                if name in names and proc.poll() is not None:
                    if self._start_again(name):
                        continue
                    raise RuntimeError(f"worker {name} exited with {proc.returncode} during start-up:\n{self.log(name)[-4000:]}")
            if all(self.members_of(n, 0.5) == want for n in names):
                for n in names:
                    self._picked.pop(n, None)
                return
            time.sleep(0.1)
        raise TimeoutError(f"workers {want} did not all see each other within {timeout_s or self.start_timeout_s:g} s")

    def _start_again(self, name: str) -> bool:
        """Start again, on new ports, a worker that exited because another process took a port
        start_worker picked for it (free_port() cannot reserve one). False if it exited for
        another reason, or has been started START_ATTEMPTS times."""
        spec = self._picked.get(name)
        if spec is None or spec[2] >= START_ATTEMPTS or "Address already in use" not in self.log(name)[-4000:]:
            return False
        seed, extra_args, _ = spec
        del self.routers[name], self.pubs[name]
        self.start_worker(name, seed=seed, extra_args=extra_args)
        return True

    def log(self, name: str) -> str:
        """Everything worker `name` has logged (all its starts under this mesh)."""
        try:
            with open(os.path.join(self.log_dir, f"{name}.log"), errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def signal(self, name: str, sig: int) -> None:
        self.procs[name].send_signal(sig)

    def stop_worker(self, name: str, timeout_s: float = 10.0, signalled: bool = False) -> int | None:
        """SIGTERM a worker (unless `signalled`: it already has one) and wait for it; its exit code.
        One SIGTERM only: a second can land after the worker has finished and kill it (-15)."""
        proc = self.procs.get(name)
        if proc is None or proc.poll() is not None:
            return proc.returncode if proc else None
        if not signalled:
            proc.send_signal(signal.SIGCONT)  # a stopped process cannot handle SIGTERM
            proc.terminate()
        try:
            return proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait(5)

    def _stop_all(self) -> list:
        for name in list(self.procs):
            proc = self.procs[name]
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.terminate()
        return [self.stop_worker(name, signalled=True) for name in list(self.procs)]

    def stop(self) -> None:
        codes = self._stop_all()
        # Killed by a stop signal (ours, or a hangup or Ctrl-C to the whole process group) while
        # still starting, before its handlers (or stopped by zfraud.__main__'s, as it imports, with
        # 128 + the signal's number): nothing to read (a Ctrl-C in the first second of `demo` or
        # `backtest` left the directory behind)
        stopped = (0, *(s for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT) for s in (-sig, 128 + sig)))
        if self._own_dir and all(code in stopped for code in codes):  # else its logs are kept, to be read
            shutil.rmtree(self.log_dir, ignore_errors=True)

    def __enter__(self) -> "LocalMesh":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()
