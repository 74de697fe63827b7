"""The zfraud command line: a thin layer over the library. Commands parse, call, print.

Every option can also come from the environment as ZFRAUD_<COMMAND>_<OPTION> (click's
auto_envvar_prefix), e.g. ZFRAUD_SEND_CONNECT. Library errors become one-line messages.
"""
from __future__ import annotations

import errno
import functools
import json
import logging
import math
import os
import signal
import socket
import sys
import threading
import time
from contextlib import nullcontext

import click
from click.core import ParameterSource

from . import __version__
from .__main__ import _handle, _interrupt, _restore  # (the entry point's: it needs them before this imports)
from . import protocol as P

class FloatRange(click.FloatRange):
    """click.FloatRange, NaN and infinity refused: NaN passes every comparison's "not out of
    range", so `--heartbeat nan` was taken, and that worker gossiped once and never again; and
    infinity passes a range with no maximum, as `send --deadline inf` did, to end in a traceback
    (OverflowError). Every option of seconds has a maximum too: 1e20 s overflowed the same way."""

    def convert(self, value, param, ctx):
        rv = super().convert(value, param, ctx)
        if math.isnan(rv):
            self.fail(f"{value!r} is not a number", param, ctx)
        if math.isinf(rv):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return rv


DAY_S = 86_400.0  # the most an option of seconds takes: a deadline, timeout or interval of a day


CONNECT_HELP = ("Endpoint of any one worker's ROUTER, tcp://HOST:PORT (IPv4 or a name) or ipc://PATH, e.g. "
                "tcp://127.0.0.1:5555; the rest are found from it.")

curve_option = click.option(
    "--curve-dir", type=click.Path(file_okay=False), default=None,
    help="CURVE keys made by `zfraud keys init DIR`: encrypt every socket and, on workers, admit only "
         "the public keys in DIR. Give the same directory (or a copy) to every worker and client.")


def friendly_errors(fn):
    """Turn the library's expected errors into a one-line message and exit status 1."""
    from .client import MeshError
    from .model import ModelError
    from .sources import InputError

    import zmq

    from .sockets import descriptor_limit, out_of_descriptors

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except BrokenPipeError:
            if not _stdout_unread():
                raise click.ClickException("a pipe this command writes to was closed by its reader") from None
            # The reader of our output stopped (`| head`): quietly, with the status of a command
            # that SIGPIPE ended (141; a shell without pipefail looks only at head's)
            _discard_stdout()
            sys.exit(128 + signal.SIGPIPE)
        except (OSError, zmq.ZMQError) as e:
            if out_of_descriptors(e):  # whatever failed (a socket, a module's file), the limit is the cause
                raise click.ClickException(
                    f"out of file descriptors: {descriptor_limit()}; each worker of the mesh takes a few. Raise "
                    f"the limit, e.g. `ulimit -n 4096`, and start this again") from None
            if not isinstance(e, OSError):
                raise
            # "cannot use PATH: No such file or directory", not "[Errno 2] ..."
            where = f"cannot use {e.filename}: " if e.filename else ""
            raise click.ClickException(f"{where}{e.strerror or e}") from None
        except (MeshError, ModelError, InputError, ValueError) as e:
            raise click.ClickException(str(e)) from None
        except MemoryError as e:  # numpy's message goes on to list the array's whole dtype
            raise click.ClickException(f"out of memory: {str(e).split(' for an array')[0] or 'an allocation failed'}") from None
    return wrapper


class Progress:
    """A one-line live counter on stderr when it is a terminal; silent otherwise. With a total, the
    line is finished when the count reaches it, and `then` (what comes next, e.g. a fit that shows
    no progress) is said on the next line. The rate is the count over the time to its last step."""

    def __init__(self, total: int | None = None, label: str = "answered", enabled: bool | None = None,
                 then: str = ""):
        self.total, self.label, self.then = total, label, then
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.done = 0
        self.t0 = self._last = time.perf_counter()
        self._next = 0.0
        self._closed = False

    def __call__(self, rows: int) -> None:
        self.done += rows
        now = self._last = time.perf_counter()
        if self.total and self.done >= self.total:
            self.close()
        elif self.enabled and now >= self._next:
            self._next = now + 0.1
            self._draw(now)

    def _draw(self, now: float) -> None:
        rate = self.done / max(now - self.t0, 1e-9)
        if self.total:
            frac = min(self.done / self.total, 1.0)
            bar = "#" * int(frac * 30)
            text = f"[{bar:<30}] {frac:6.1%}  {self.done:,}/{self.total:,} tx {self.label}  {rate:,.0f} tx/s"
        else:
            text = f"{self.done:,} tx {self.label}  {rate:,.0f} tx/s"
        sys.stderr.write("\r" + text)
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and not self._closed:
            self._draw(self._last)
            sys.stderr.write("\n")
            if self.then and self.total and self.done >= self.total:
                sys.stderr.write(self.then + "\n")
            sys.stderr.flush()
        self._closed = True


def _date(ctx, param, value):
    """A YYYY-MM-DD option as days since the epoch; a usage error (status 2) for anything else."""
    from .dataset import date_of, day_of

    if value is None:
        return None
    try:
        day = day_of(value)
        if date_of(day) != value:  # day_of takes other ISO forms too (20180401, 2018-W13-7)
            raise ValueError(f"expected a date as YYYY-MM-DD, got {value!r}")
        return day
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


def _dates_in_order(date_from: int, date_to: int, what: str) -> None:
    """--from after --to is a usage error (status 2), found before the file is read."""
    from .dataset import check_dates

    try:
        check_dates(date_from, date_to, what)
    except ValueError as e:
        raise click.UsageError(str(e)) from None


def _connected(make, endpoint: str, *args, **kwargs):
    """make(endpoint, ...): a Client or a Tail, which first reaches the mesh. A Ctrl-C meanwhile
    (in every command that connects) is one line saying so and status 130, not click's bare
    "Aborted!" (status 1)."""
    try:
        return make(endpoint, *args, **kwargs)
    except KeyboardInterrupt as e:
        click.echo(f"interrupted while connecting to {endpoint}", err=True)
        sys.exit(getattr(e, "status", 130))


def _endpoint(ctx, param, value):
    """--connect: a usage error (status 2) for an endpoint that cannot be one, as for any bad
    option, not status 1, which the commands give to what was lost or refused; and for a second
    --connect, which click would take in place of the first without a word (the rest of the mesh
    is found from any one worker)."""
    if len(value) > 1:
        raise click.BadParameter(f"given {len(value)} times ({', '.join(value)}): give one, any worker's ROUTER; "
                                 f"the rest of the mesh is found from it")
    return _check(value[0], "endpoint") if value else None


def _bind_endpoint(ctx, param, value):
    """A worker's --bind and --pub: a malformed endpoint is a usage error (status 2)."""
    return _check(value, f"--{param.name}", bind=True)


def _seed_endpoints(ctx, param, value):
    """A worker's --seed endpoints: each malformed one is a usage error (status 2)."""
    return tuple(_check(v, "--seed") for v in value)


def _check(value: str, what: str, bind: bool = False) -> str:
    from .mesh import check_endpoint

    try:
        check_endpoint(what, value, bind=bind)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    return value


def _writable(ctx, param, value):
    """A file to be written (or only appended to if need be), checked now without creating it: a
    usage error (status 2) if it could not be written, rather than after all the work."""
    if value is None or value == "-":  # none, or standard output
        return value
    if not os.path.isabs(value):
        try:
            os.getcwd()
        except FileNotFoundError:  # (the directory this was started in was deleted)
            raise click.BadParameter(f"cannot use {value}: the current directory no longer exists; give an "
                                     f"absolute path, or start from a directory that exists") from None
    directory = os.path.dirname(value) or "."
    if os.path.exists(value):
        error = None if os.access(value, os.W_OK) else errno.EACCES
    elif not os.path.exists(directory):
        error = errno.ENOENT
    elif not os.path.isdir(directory):
        error = errno.ENOTDIR
    else:
        error = None if os.access(directory, os.W_OK | os.X_OK) else errno.EACCES
    if error is not None:
        raise click.BadParameter(f"cannot use {value}: {os.strerror(error)}")
    return value


def _distinct_files(**paths) -> None:
    """A usage error if two of the named files (None and - skipped) are one file: `--out` the
    input would empty the input before it is read."""
    seen = {}
    for option, path in paths.items():
        if path in (None, "-"):
            continue
        key = os.path.realpath(path)
        for other, other_key in seen.items():
            if key == other_key or (os.path.exists(path) and os.path.exists(paths[other])
                                    and os.path.samefile(path, paths[other])):
                names = [n.upper() if n in ("file", "source", "data") else "--" + n.replace("_", "-")
                         for n in (other, option)]
                raise click.UsageError(f"{names[0]} and {names[1]} are the same file ({path}): give another")
        seen[option] = key


def _model_version(ctx, param, value):
    """A usage error (status 2) for a --version a model file cannot hold (zfraud.model.check_name)."""
    from .model import ModelError, check_name

    try:
        return check_name(value) if value else value  # (none or empty: the default)
    except ModelError as e:
        raise click.BadParameter(str(e)) from None


def _version_or_stem(version, path, what: str) -> str:
    """--version, else `path`'s file name without its extension: a usage error if that cannot be one."""
    from pathlib import Path

    from .model import ModelError, check_name

    if version:
        return version
    try:
        return check_name(Path(path).stem)
    except ModelError as e:
        raise click.UsageError(f"{what}'s file name cannot be the model version: {e}; give --version") from None


class _Commands(click.Group):
    """click's group, but a Ctrl-C (or SIGTERM, SIGHUP) while click reads the command line, or
    between that and a command's own handling, ends as one inside a command does: "interrupted"
    and 128 + the signal, where click said "Aborted!" with status 1 (a backtest interrupted about
    half a second after it started, just after the imports: 2 of 9 such Ctrl-Cs)."""

    def make_context(self, *args, **kwargs):
        try:
            return super().make_context(*args, **kwargs)
        except KeyboardInterrupt as e:
            _interrupted(e)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as e:
            _interrupted(e)


def _interrupted(e: KeyboardInterrupt):
    click.echo(("\n" if sys.stderr.isatty() else "") + "interrupted", err=True)
    sys.exit(getattr(e, "status", 130))


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"], "auto_envvar_prefix": "ZFRAUD",
                                              "show_default": True})
@click.version_option(__version__, prog_name="zfraud")
def main():
    """zfraud: real-time card-fraud scoring on a broker-less ZeroMQ mesh.

    Start workers with `zfraud worker`, push transactions with `zfraud send`, follow verdicts
    with `zfraud tail`. `zfraud demo` does all of it on this machine in one command.
    """
    from .sockets import raise_descriptor_limit

    if sys.stdout is None and click.get_current_context().invoked_subcommand != "worker":
        # started with `>&-`: click.echo writes nothing then, so a summary or a status went nowhere, status 0
        raise click.UsageError("standard output is closed, and this command prints its result there: "
                               "redirect it instead (> FILE, or > /dev/null)")
    raise_descriptor_limit()  # each worker of the mesh costs a worker and a client a few descriptors
    ctx = click.get_current_context()
    if ctx.invoked_subcommand != "worker" and threading.current_thread() is threading.main_thread():
        # (a worker drains on them instead); put back as they were when the command ends (a
        # program that runs it in-process)
        previous = _handle((signal.SIGTERM, signal.SIGHUP), _interrupt)
        ctx.call_on_close(lambda: _restore(previous))


def _stdout_unread() -> bool:
    """Whether standard output is a pipe that nobody reads any more (POLLERR on its write end)."""
    import select
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(ev & select.POLLERR for _, ev in poller.poll(0))
    except (OSError, ValueError):
        return False


def _discard_stdout() -> None:
    """After EPIPE on stdout: what is still buffered for it goes nowhere, so that flushing it as
    Python exits does not fail again ("Exception ignored ... BrokenPipeError", status 120)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


@main.command()
@click.option("--name", default=lambda: f"{socket.gethostname()}-{__import__('os').getpid()}",
              show_default="HOSTNAME-PID", help="Member name; unique in the mesh.")
@click.option("--bind", default="tcp://127.0.0.1:5555", callback=_bind_endpoint,
              help="ROUTER endpoint: batches and control requests. tcp://HOST:PORT (HOST an IPv4 address, a name, "
                   "an interface, or * for all; PORT * or 0 for any free one) or ipc://PATH (at most 107 bytes; "
                   "a path in use by a live process, or a file that is not a socket, is refused).")
@click.option("--pub", default="tcp://127.0.0.1:5556", callback=_bind_endpoint,
              help="PUB endpoint: verdicts and mesh gossip. As --bind.")
@click.option("--seed", "seeds", multiple=True, metavar="ENDPOINT", callback=_seed_endpoints,
              help="ROUTER endpoint of any existing member, tcp://HOST:PORT or ipc://PATH (repeatable). "
                   "Omit for the first worker.")
@click.option("--model", "model_path", type=click.Path(dir_okay=False), default=None,
              help="Model file. Default: the model shipped with zfraud.")
@click.option("--rules", "rules_path", type=click.Path(dir_okay=False), default=None,
              help="Rules file (TOML; its syntax, with an example: `python -m pydoc zfraud.rules`; a fuller example: conf/rules.toml of the source tree). Default: no rules.")
@click.option("--review-at", type=FloatRange(0, 1), default=0.2, help="Score at or above which to review.")
@click.option("--decline-at", type=FloatRange(0, 1), default=0.8, help="Score at or above which to decline.")
@click.option("--heartbeat", type=FloatRange(0.2, 60), default=1.0,
              help="Seconds between gossip heartbeats; a member silent for 3 heartbeats is dropped (below 0.2 s, "
                   "one scoring pass on a busy host outlasts that and members come and go).")
@click.option("--state-dir", type=click.Path(file_okay=False), default=None,
              help="Snapshot the streaming state here on SIGTERM and every --snapshot-every seconds; "
                   "load it on start.")
@click.option("--snapshot-every", type=FloatRange(1, DAY_S), default=60.0,
              help="Seconds between snapshots, at most a day. A forked child writes each one while scoring goes on.")
@click.option("--cards", type=click.IntRange(1024, 1 << 31), default=1 << 18,
              help="Card table capacity (400 bytes each: a 384-byte record and its index).")
@click.option("--terminals", type=click.IntRange(1024, 1 << 31), default=1 << 15,
              help="Terminal table capacity (10.2 KB each at first with a --delay up to 9: transaction and fraud "
                   "counts in 4-hour buckets over 40 days, or --delay + 31; up to 30.3 KB as peers join).")
@click.option("--delay", "delay_days", type=click.IntRange(0, 30), default=7,
              help="Label delay in days: terminal risk uses windows that end this long ago. With 0 the windows "
                   "take the current hours, which reach the other workers a heartbeat late: on a mesh of more "
                   "than one worker, scores can then differ from `train`'s replay (docs/ARCHITECTURE.md 4.3).")
@click.option("--metrics-port", type=click.IntRange(1, 65535), default=None,
              help="Serve Prometheus metrics on 127.0.0.1:PORT (needs the `metrics` extra).")
@curve_option
@click.option("--log-level", type=click.Choice(["debug", "info", "warning"]), default="info",
              help="Least severe level logged on stderr (debug adds replies a client left before they were sent).")
@friendly_errors
def worker(name, bind, pub, seeds, model_path, rules_path, review_at, decline_at, heartbeat, state_dir,
           snapshot_every, cards, terminals, delay_days, metrics_port, curve_dir, log_level):
    """Run a worker: bind a ROUTER and a PUB, join the mesh, score batches until SIGINT, SIGTERM or
    SIGHUP (its terminal closed), each of which drains it: it leaves the mesh, answers what it
    holds, hands its cards over and saves its state (--state-dir) before it exits."""
    from .local import stop_with_parent
    from .model import load_model
    from .rules import RuleSet
    from .scoring import Thresholds
    from .worker import Worker

    if not review_at <= decline_at:
        raise click.UsageError(f"--review-at {review_at:g} and --decline-at {decline_at:g} must satisfy "
                               f"0 <= review <= decline <= 1")
    from .mesh import check_binds, check_name
    try:
        check_name(name)
        check_binds(bind, pub)
    except ValueError as e:
        raise click.UsageError(str(e)) from None

    stop_with_parent()  # a no-op unless LocalMesh started it
    logging.basicConfig(level=log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%Y-%m-%dT%H:%M:%S")
    if state_dir and click.get_current_context().get_parameter_source("name") is ParameterSource.DEFAULT:
        logging.warning("--state-dir without --name: this worker saves under %s, a name its next process "
                        "(another pid) will not have, so a restart will not find this state; give --name", name)
    model = load_model(model_path)
    rules = RuleSet.load(rules_path, model.features) if rules_path else None
    try:
        w = Worker(name, bind, pub, seeds=seeds, model=model, rules=rules,
                   thresholds=Thresholds(review_at, decline_at), heartbeat=heartbeat, metrics_port=metrics_port,
                   state_dir=state_dir, snapshot_every_s=snapshot_every, cards=cards, terminals=terminals,
                   delay_days=delay_days, curve_dir=curve_dir)
    except MemoryError:
        need = (cards * 400 + terminals * 10_200 * max(40, delay_days + 31) / 40) / 2**30  # --terminals' help
        raise click.ClickException(f"out of memory for the state tables: --cards {cards:,} and --terminals "
                                   f"{terminals:,} need about {need:.1f} GiB; lower them") from None
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: w.stop())
    _handle((signal.SIGHUP,), lambda *_: w.stop())  # its terminal closed; unless ignored (nohup)
    w.run()
    if w.fatal is not None:
        raise click.ClickException(w.fatal)
    if not w.saved:
        raise click.ClickException(f"stopped, but could not save its state to {w.state_path} (see the log above)")


def print_summary(s, out=sys.stdout) -> None:
    d = s.decisions
    rows = [
        ("transactions sent", f"{s.sent:,}"),
        ("  with a tx_id sent before", f"{s.repeated:,}"),
        ("verdicts", f"{s.verdicts:,}"),
        ("  approve / review / decline", f"{d.get('approve', 0):,} / {d.get('review', 0):,} / {d.get('decline', 0):,}"),
        ("errors (rejected with a reason)", f"{s.errors:,}"),
        ("dead-lettered (given up on)", f"{s.dead_letter:,}"),
        ("lost", f"{s.lost:,}"),
        ("resent", f"{s.resent:,}"),
        ("workers", f"{s.workers}"),
        ("elapsed", f"{s.elapsed_s:.2f} s"),
        ("throughput", f"{s.tx_per_s:,.0f} tx/s"),
        ("latency p50 / p99 / p99.9", f"{s.p50_ms:.2f} / {s.p99_ms:.2f} / {s.p999_ms:.2f} ms"
         if s.verdicts or d.get("rejected") else "none: no transaction was answered"),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        click.echo(f"{k:<{width}}  {v}", file=out)


def nothing_scored(source, summary, rejected) -> str:
    """The line saying that no row was scored: the most common reason rows were rejected (the
    reader's, without the value or the JSON position it names, else the workers': `rejected`,
    a Counter of their reasons) and the input `source` expects."""
    unreadable = source.reasons.most_common(1)
    if not unreadable or (rejected and rejected.most_common(1)[0][1] > unreadable[0][1]):
        reason, n = rejected.most_common(1)[0] if rejected else ("unknown", 0)
        answered = sum(rejected.values())
        also = f", and {source.error_count:,} rows could not be read" if source.error_count else ""
        return (f"no row was scored: the workers rejected all {answered:,} they answered{also}; the most "
                f"common reason ({n:,} of {answered:,}): {reason.removeprefix('error: ')} "
                f"(--out FILE writes each verdict with its reason)")
    reason, n = unreadable[0]
    return f"no row was scored; the most common reason ({n:,} of {summary.sent:,} rows): {reason}. Expected {source.expected}"


@main.command()
@click.argument("file", required=False, type=click.Path(allow_dash=True, dir_okay=False))
@click.option("--connect", required=True, multiple=True, callback=_endpoint, help=CONNECT_HELP)
@click.option("--synthetic", type=click.IntRange(1), default=None, metavar="N",
              help="Generate N synthetic transactions instead of reading FILE.")
@click.option("--batch", type=click.IntRange(1, P.MAX_ROWS), default=1024,
              help="Transactions per batch before partitioning by card owner. From standard input or "
                   "a pipe, a batch also goes once its oldest transaction has waited 10 ms.")
@click.option("--rate", type=FloatRange(1, 1e9), default=None, metavar="TX_PER_S",
              help="Offered load in transactions per second (at most 1e9). Default: as fast as the mesh answers.")
@click.option("--format", "fmt", type=click.Choice(["csv", "jsonl"]), default=None,
              help="Input format. Default: from the file name (.jsonl/.json/.ndjson, else CSV).")
@click.option("--out", type=click.Path(dir_okay=False, writable=True), default=None, callback=_writable,
              help="Write every verdict as a JSON line to this file (checked before sending). It is "
                   "replaced when the send ends with its summary; a send that fails before leaves it as it was. "
                   "- writes them to standard output as they come, and the summary to standard error.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object (the last line).")
@click.option("--window", type=click.IntRange(1, 1024), default=8, help="Batches in flight per worker (credit).")
@click.option("--deadline", type=FloatRange(0.1, DAY_S), default=5.0,
              help="Seconds a worker has to answer a batch before it is resent elsewhere, at most a day.")
@click.option("--dead-letter", type=click.Path(dir_okay=False), default="zfraud-dead-letter.jsonl",
              callback=_writable,
              help="Where batches that failed every attempt are appended, with the reason (checked before sending).")
@curve_option
@friendly_errors
def send(file, connect, synthetic, batch, rate, fmt, out, as_json, window, deadline, dead_letter, curve_dir):
    """Send transactions (Handbook CSV, JSON lines, or synthetic) and wait for every verdict.

    FILE is a CSV with the Fraud Detection Handbook's columns (TRANSACTION_ID, TX_DATETIME,
    CUSTOMER_ID, TERMINAL_ID, TX_AMOUNT, ...) or JSON lines with the same fields (or tx_id, ts_ms,
    card, terminal, amount); - reads standard input.

    A regular file is sent in whole --batch batches. Standard input, or a FILE that is a pipe, a
    FIFO or a terminal, is a live feed: its transactions are sent as they come, at most 10 ms
    after the oldest of them was read (or as soon as --batch of them have come), and while it is
    idle the answers are still read and Ctrl-C is still seen.

    The summary counts records: one whose tx_id an earlier record had is sent, answered and
    counted again, and also counted in "with a tx_id sent before" (repeated; ids are remembered
    as workers remember them, the last 1,048,576 distinct ones).

    Ctrl-C (SIGINT) stops reading the input: what was sent gets up to --deadline to be answered,
    then the summary is printed (the rest counted as lost), with status 130. SIGTERM does the
    same, with status 143. A second Ctrl-C stops at once, without a summary; one while still
    connecting says so, status 130.

    Exit status: 0 every transaction got a verdict; 1 some were lost or dead-lettered, or the
    command failed (no worker answered, say); 3 all were answered but some were rejected as
    invalid (stderr gives the lines that could not be read and the workers' reasons; when
    none was scored, the last line says so, with the most common reason and the input expected);
    2 a usage error, before anything was sent; 130 interrupted (143 by SIGTERM, 129 by SIGHUP).
    """
    from collections import Counter

    import numpy as np

    from .client import Client
    from .files import replacing, write_all
    from .sources import open_source
    from .tail import records

    if synthetic is None and file is None:
        raise click.UsageError("give a FILE (or - for stdin) or --synthetic N")
    if synthetic is not None and file is not None:
        raise click.UsageError(f"give a FILE or --synthetic N, not both (FILE {file} would not be read)")
    if file == "-" and sys.stdin is None:  # started with standard input closed (<&-)
        raise click.BadParameter("standard input is closed: give a FILE, or pipe the transactions in",
                                 param_hint="'FILE'")
    if file not in (None, "-") and not os.path.exists(file):  # before connecting: the mesh may take 5 s to fail
        raise click.BadParameter(f"{file} does not exist", param_hint="'FILE'")
    _distinct_files(file=file, out=out, dead_letter=dead_letter)
    source = open_source(file, synthetic, batch, fmt)
    progress = Progress(total=synthetic)
    interrupted, rejected = [], Counter()

    def interrupt(signum, _frame):
        if interrupted:  # the second Ctrl-C (or SIGTERM): stop waiting, with that signal's status
            stop = KeyboardInterrupt()
            stop.status = 128 + signum
            raise stop
        interrupted.append(signum)

    previous = {}
    try:
        # --out is replaced only by a send that gets to its summary (files.replacing)
        with _connected(Client, connect, window=window, deadline_s=deadline, dead_letter_path=dead_letter,
                        curve_dir=curve_dir) as client, \
                (nullcontext(sys.stdout.buffer) if out == "-" else replacing(out) if out else nullcontext()) as sink:
            def on_verdicts(v, h):
                if sink:
                    write_all(sink, "".join(json.dumps(r) + "\n" for r in records(v, h)).encode())
                    if out == "-":
                        sink.flush()  # each batch's verdicts as they come (a live feed's reader waits)
                refused = v["reason"][v["decision"] == P.REJECTED]
                if len(refused):  # tallied for the line that says no row was scored, if none was
                    codes, counts = np.unique(refused, return_counts=True)
                    for code, text, n in zip(codes.tolist(), P.reason_texts(codes, h).tolist(), counts.tolist()):
                        rejected[f"reason {code}" if text is None else text] += n  # (an index the table lacks)

            # SIGTERM (a supervisor), SIGHUP as Ctrl-C: the summary, then 128 + sig
            previous = _handle((signal.SIGINT, signal.SIGTERM, signal.SIGHUP), interrupt)
            summary = client.stream(source, rate=rate, progress=progress, on_verdicts=on_verdicts,
                                    input_errors=lambda: source.error_count, stop=lambda: bool(interrupted))
    finally:
        _restore(previous)
        progress.close()
    if interrupted:
        click.echo("interrupted: the input was read no further; the summary counts what was sent", err=True)
    if not summary.sent:
        click.echo("the input held no transaction: nothing was sent", err=True)
    for line, message in source.errors[:10]:
        click.echo(f"input line {line}: {message}", err=True)
    if source.error_count > 10:
        click.echo(f"... and {source.error_count - 10} more unreadable records", err=True)
    if rejected and summary.verdicts:  # (else the line that says no row was scored names the reason)
        common = "; ".join(f"{reason.removeprefix('error: ')} ({n:,})" for reason, n in rejected.most_common(3))
        click.echo(f"the workers rejected {sum(rejected.values()):,} of the records: {common}"
                   + ("; ..." if len(rejected) > 3 else "") + ("" if out else " (--out FILE writes each with its reason)"),
                   err=True)
    if summary.dead_letter:
        click.echo(f"{summary.dead_letter} transactions were given up on (dead-lettered): {dead_letter} has "
                   f"each with the reason", err=True)
    if as_json:
        print_summary(summary, out=sys.stderr)
        click.echo(json.dumps(summary.to_dict()), err=out == "-")
    else:
        print_summary(summary, out=sys.stderr if out == "-" else sys.stdout)
    if not summary.verdicts and summary.errors:  # every row answered was rejected
        click.echo(nothing_scored(source, summary, rejected), err=True)
    if interrupted:
        sys.exit(128 + interrupted[0])
    if summary.lost or summary.dead_letter:
        sys.exit(1)
    if summary.errors:
        sys.exit(3)


@main.command()
@click.option("--connect", required=True, multiple=True, callback=_endpoint, help=CONNECT_HELP)
@click.option("--decision", default="approve,review,decline,rejected",
              help="Comma-separated decisions to follow, from approve, review, decline and rejected.")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "text"]), default="jsonl", show_default=True,
              help="jsonl: one JSON object per verdict, with its seq and boot; text: one aligned line per verdict.")
@click.option("--count", type=click.IntRange(1), default=None, help="Exit after N verdicts.")
@click.option("--timeout", type=FloatRange(0.1, DAY_S), default=None,
              help="Exit after this many seconds without a verdict (at most a day).")
@curve_option
@friendly_errors
def tail(connect, decision, fmt, count, timeout, curve_dir):
    """Follow the verdict stream of every worker in the mesh.

    Ctrl-C (SIGINT), SIGTERM or SIGHUP stops it, with status 0 (saying how many of --count came,
    if given; 128 + the signal's number while still connecting); status 1 when --timeout passes
    without a verdict before --count verdicts came. A reader that stops (`| head -3`) ends it
    quietly, with status 0."""
    from .tail import Tail

    decisions = [d.strip() for d in decision.split(",") if d.strip()]
    unknown = sorted(set(decisions) - set(P.DECISIONS))
    if not decisions or unknown:
        given = f"unknown decision {', '.join(unknown)}" if unknown else f"no decision given in {decision!r}"
        raise click.BadParameter(f"{given}: name one or more of {', '.join(P.DECISIONS)}", param_hint="'--decision'")
    seen, interrupted = 0, False
    t = _connected(Tail, connect, decisions, curve_dir=curve_dir)
    printing = [False, False]  # printing a line; a Ctrl-C came meanwhile

    def interrupt(signum, frame):
        if not printing[0]:
            raise KeyboardInterrupt
        printing[1] = True

    previous = _handle((signal.SIGINT, signal.SIGTERM, signal.SIGHUP), interrupt)
    with t:
        try:
            for v in t.verdicts(timeout_s=timeout):
                if fmt == "jsonl":
                    line = json.dumps(v)
                else:
                    score = "  nan " if v["score"] is None else f"{v['score']:.4f}"
                    fired = f"  rules: {','.join(v['fired'])}" if v["fired"] else ""
                    line = f"{v['tx_id']:>12}  {v['decision']:<8} {score}  {v['worker']:<10} {v['reason']}{fired}"
                printing[0] = True  # a Ctrl-C now waits until the line is out and counted
                try:
                    click.echo(line)
                except BrokenPipeError:  # the reader stopped (`| head -3`): it had what it wanted
                    _discard_stdout()
                    return
                seen += 1
                printing[0] = False
                if printing[1]:
                    raise KeyboardInterrupt
                if count is not None and seen >= count:
                    break
        except KeyboardInterrupt:  # the way to stop following: not a failure
            interrupted = True
        finally:
            _restore(previous)
        if t.gaps:
            click.echo(f"missed {t.gaps:,} verdict messages: their seq numbers never arrived (PUB/SUB drops "
                       f"what a subscriber is not connected for, e.g. a restarted worker's first ones)", err=True)
    if count is not None and seen < count:
        if interrupted:
            click.echo(f"interrupted after {seen} of {count} verdicts", err=True)
        else:
            click.echo(f"stopped after {seen} of {count} verdicts ({timeout:g} s without one)", err=True)
            sys.exit(1)


@main.command()
@click.option("--workers", type=click.IntRange(1, 16), default=2, help="Worker processes to start.")
@click.option("--transactions", type=click.IntRange(1), default=200_000, help="Synthetic transactions to score.")
@click.option("--batch", type=click.IntRange(1, P.MAX_ROWS), default=1024, help="Transactions per batch.")
@friendly_errors
def demo(workers, transactions, batch):
    """Start a local mesh, stream synthetic transactions through it, print what happened."""
    from .client import Client
    from .local import LocalMesh
    from .sources import SyntheticReader

    click.echo(f"starting {workers} workers on 127.0.0.1 ...")
    mesh = LocalMesh(workers)
    try:
        with mesh:
            for name in mesh.names:
                click.echo(f"  {name}: ROUTER {mesh.routers[name]}  PUB {mesh.pubs[name]}")
            click.echo(f"scoring {transactions:,} synthetic transactions in batches of {batch} ...")
            progress = Progress(total=transactions)
            with Client(mesh.endpoint) as client:
                summary = client.stream(SyntheticReader(transactions, batch), progress=progress)
            progress.close()
            click.echo("")
            print_summary(summary)
            click.echo("stopping workers ...")
    finally:
        if os.path.isdir(mesh.log_dir):  # removed after a clean stop, kept when a worker failed
            click.echo(f"the workers' logs are kept in {mesh.log_dir}", err=True)
    click.echo("done.")
    if summary.lost:
        sys.exit(1)


@main.command()
@click.argument("out", type=click.Path(dir_okay=False, allow_dash=True), callback=_writable)
@click.option("--customers", type=click.IntRange(1), default=5000, help="Cards (one per customer).")
@click.option("--terminals", type=click.IntRange(1), default=10000, help="Payment terminals.")
@click.option("--days", type=click.IntRange(1), default=183, help="Days of transactions, from --start.")
@click.option("--seed", type=click.IntRange(0), default=0,
              help="Random seed: the same seed and sizes give the same file.")
@click.option("--start", default="2018-04-01", callback=_date, help="First day, YYYY-MM-DD.")
@friendly_errors
def gen(out, customers, terminals, days, seed, start):
    """Write the Fraud Detection Handbook's simulated transactions to OUT (CSV; - for stdout).

    The defaults reproduce the book's scale: about 1.75 M transactions, about 0.84 % fraud.
    """

    from .dataset import date_of, day_of
    from .files import replacing
    from .gen import generate, write_csv

    if start + days - 1 > day_of("9999-12-31"):  # the last date a TX_DATETIME can hold
        raise click.BadParameter(f"the {days} days from {date_of(start)} run past 9999-12-31", param_hint="'--start'")

    bar = Progress(label="units of work done")
    state = {"done": 0}

    def step(done, total):
        bar.total = total
        bar(done - state["done"])
        state["done"] = done

    t0 = time.perf_counter()
    # OUT is opened first (a bad path fails at once) and only replaced once complete
    try:
        with nullcontext(sys.stdout.buffer) if out == "-" else replacing(out) as f:
            columns = generate(customers, terminals, days, seed, date_of(start), progress=step)
            bar.close()
            n = len(columns["TRANSACTION_ID"])
            rows = Progress(total=n, label="written")
            write_csv(columns, f, progress=lambda done, total: rows(done - rows.done))
            rows.close()
    except KeyboardInterrupt as e:  # (SIGTERM and SIGHUP too: main) the temporary file is removed
        click.echo(f"\ninterrupted: {out} was left as it was" if out != "-" else "\ninterrupted", err=True)
        sys.exit(getattr(e, "status", 130))
    frauds = int(columns["TX_FRAUD"].sum())
    click.echo(f"{n:,} transactions, {frauds:,} fraudulent ({frauds / max(n, 1):.3%}), "
               f"{time.perf_counter() - t0:.1f} s -> {out}", err=True)


@main.command()
@click.option("--connect", required=True, multiple=True, callback=_endpoint, help=CONNECT_HELP)
@click.option("--model", "model_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Model file to deploy (see `zfraud model import`).")
@click.option("--rules", "rules_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Rules file (TOML) to deploy.")
@click.option("--shadow", is_flag=True, help="Score with the model beside the live one, publishing on the "
                                            "`shadow` topic, without changing any decision.")
@click.option("--timeout", type=FloatRange(0.1, DAY_S), default=10.0,
              help="Seconds to wait for each worker, for the first to answer at --connect, and for workers "
                   "joining after the first round (at most a day).")
@curve_option
@friendly_errors
def deploy(connect, model_path, rules_path, shadow, timeout, curve_dir):
    """Validate a model and/or rules here, then swap them in on every worker without a restart."""
    from .client import Client
    from .deploy import DeployError, artefact
    from .deploy import deploy as ship

    if model_path is None and rules_path is None:
        raise click.UsageError("nothing to deploy: give --model, --rules, or both")
    if shadow and (model_path is None or rules_path is not None):
        raise click.UsageError("--shadow takes a --model and no --rules")
    artefact(model_path, rules_path, shadow)  # a bad file is the error, whether or not the mesh answers
    with _connected(Client, connect, curve_dir=curve_dir, hello_timeout_s=timeout) as client:
        try:
            running, failed = ship(client, model_path, rules_path, shadow, timeout), None
        except DeployError as e:  # what each runs, then what failed: some workers may have switched
            running, failed = e.running, e
    for name, a in sorted(running.items()):
        line = "(no answer)" if a is None else f"model={a['model']}  rules={a['rules']}  shadow={a['shadow'] or 'none'}"
        click.echo(f"{name:<12} {line}{'  <- not deployed' * (failed is not None and name in failed.failures)}")
    if failed is not None:
        raise click.ClickException(str(failed))


@main.group()
def model():
    """Import and inspect model files."""


@model.command("import")
@click.argument("kind", type=click.Choice(["lightgbm", "xgboost"]))
@click.argument("source", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False), callback=_writable,
              help="zfraud model file to write.")
@click.option("--version", "version", default=None, callback=_model_version,
              help="Model version to record (at most 128 printable characters). Default: SOURCE's file name "
                   "without its extension.")
@click.option("--feature-set", default="basic-v1", show_default=True,
              help="The worker feature set the model was trained on, in that order (basic-v1 or zfraud-v6).")
@friendly_errors
def model_import(kind, source, out, version, feature_set):
    """Convert a LightGBM text dump or an XGBoost JSON model into a zfraud model file.

    Its features must be the feature set's, in order (`zfraud model info` on a trained model lists
    them): by name, or, for a model fitted on an unnamed matrix (Column_0…, f0…), by count."""
    from .features import FEATURE_SETS
    from .importers import from_lightgbm_text, from_xgboost_json
    from .model import save_model

    if feature_set not in FEATURE_SETS:
        raise click.BadParameter(f"{feature_set!r} is not one of {', '.join(FEATURE_SETS)}", param_hint="--feature-set")
    _distinct_files(source=source, out=out)
    version = _version_or_stem(version, source, "SOURCE")
    notes = []  # (an XGBoost model saved after early stopping: the trees kept)
    if kind == "lightgbm":
        m = from_lightgbm_text(source, version=version, feature_set=feature_set)
    else:
        m = from_xgboost_json(source, version=version, feature_set=feature_set, notes=notes)
    for note in notes:
        click.echo(note, err=True)
    want, got = FEATURE_SETS[feature_set], m.features
    unnamed = got in (tuple(f"Column_{i}" for i in range(len(got))), tuple(f"f{i}" for i in range(len(got))))
    if got != want:
        if not (unnamed and len(got) == len(want)):
            raise click.ClickException(
                f"{source} has {len(got)} features ({', '.join(got[:3])}{', ...' if len(got) > 3 else ''}); "
                f"feature set {feature_set} has {len(want)} ({', '.join(want[:3])}, ...), and workers score with "
                f"exactly those. Train on them (zfraud train, or zfraud.train.replay for the matrix), or name "
                f"the set the model was trained on with --feature-set")
        m.features = want  # fitted on the set's matrix without its names
    save_model(m, out)
    click.echo(f"wrote {out}: {describe(m)}")


def describe(m) -> str:
    trees = f", {m.n_trees} trees" if hasattr(m, "n_trees") else ""
    return f"{m.kind}{trees}, {len(m.features)} features, version {m.version}"


@model.command("info")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@friendly_errors
def model_info(path, as_json):
    """Show a model file's kind, size, features, version and origin, and warn when this zfraud
    cannot score with it (a feature set it does not compute)."""
    from .features import FEATURE_SETS
    from .model import load_model

    m = load_model(path)
    info = {"path": path, "kind": m.kind, "version": m.version, "feature_set": m.feature_set,
            "features": list(m.features), "source": m.source}
    if hasattr(m, "n_trees"):
        info["trees"] = m.n_trees
    if as_json:
        click.echo(json.dumps(info))
    else:
        for k, v in info.items():
            click.echo(f"{k:<12} {', '.join(v) if isinstance(v, list) else v}")
    if m.feature_set not in FEATURE_SETS:
        click.echo(f"Warning: this zfraud computes no feature set {m.feature_set!r} (only {', '.join(FEATURE_SETS)}): "
                   f"a worker, deploy or back-test refuses this model", err=True)


def _statuses(client) -> list[dict]:
    from .client import MeshError

    rows = []
    for name in sorted(client.routers):
        try:
            rows.append(client.control(name, "status", timeout_s=2.0)["status"])
        except MeshError as e:
            rows.append({"name": name, "error": str(e)})
    return rows


def _status_table(rows: list[dict], mix: bool = False) -> str:
    head = f"{'worker':<12} {'tx':>12} {'tx/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'in-flight':>9} " \
           f"{'model':<14} {'rules':<12} {'cards':>9} {'state MB':>9} {'uptime':>9}"
    if mix:
        head += f"  {'approve':>8} {'review':>7} {'decline':>7} {'rejected':>8}"
    lines = [head]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['name']:<12} unreachable: {r['error']}")
            continue
        st = r.get("state", {})
        line = (f"{r['name']:<12} {r['rows']:>12,} {r['rate_tx_per_s']:>10,.0f} {r['batch_ms_p50']:>8.3f} "
                f"{r['batch_ms_p99']:>8.3f} {r['in_flight']:>9} {r['model']:<14} {r['rules']:<12} "
                f"{st.get('cards', 0):>9,} {st.get('bytes', 0) / 1e6:>9.1f} {r['uptime_s']:>8.0f}s")
        if mix:
            d, total = r["decisions"], max(1, sum(r["decisions"].values()))
            line += "  " + " ".join(f"{100 * d[k] / total:>{w - 1}.2f}%" for k, w in
                                    (("approve", 8), ("review", 7), ("decline", 7), ("rejected", 8)))
        lines.append(line)
    return "\n".join(lines)


@main.command()
@click.option("--connect", required=True, multiple=True, callback=_endpoint, help=CONNECT_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object: {\"members\": [...]}.")
@curve_option
@friendly_errors
def status(connect, as_json, curve_dir):
    """One row per member: transactions, rate, batch latency, in-flight, versions, state, uptime.

    Exit status: 0 every member answered; 1 one did not (its row says why; in --json it has
    "error" instead of the fields), so that a script can tell."""
    from .client import Client

    with _connected(Client, connect, curve_dir=curve_dir) as client:
        rows = _statuses(client)
    if as_json:
        click.echo(json.dumps({"members": rows}))
    else:
        click.echo(_status_table(rows))
    if any("error" in r for r in rows):
        sys.exit(1)


@main.command()
@click.option("--connect", required=True, multiple=True, callback=_endpoint, help=CONNECT_HELP)
@click.option("--interval", type=FloatRange(0.2, DAY_S), default=1.0, help="Seconds between refreshes, at most a day.")
@click.option("--iterations", type=click.IntRange(1), default=None, help="Stop after N refreshes.")
@curve_option
@friendly_errors
def top(connect, interval, iterations, curve_dir):
    """`status`, refreshing live, with the decision mix. Ctrl-C to leave."""
    from .client import Client

    with _connected(Client, connect, curve_dir=curve_dir) as client:
        k = 0
        try:
            while iterations is None or k < iterations:
                client.poll(0)  # follow members joining and leaving
                rows = _statuses(client)
                total = sum(r.get("rate_tx_per_s", 0) for r in rows)
                down = sum("error" in r for r in rows)
                screen = (f"zfraud top  {time.strftime('%H:%M:%S')}  {len(rows)} members"
                          + (f" ({down} not answering)" if down else "") + f"  {total:,.0f} tx/s\n\n"
                          + _status_table(rows, mix=True))
                if sys.stdout.isatty():
                    click.clear()
                click.echo(screen)
                k += 1
                if iterations is None or k < iterations:
                    time.sleep(interval)
        except KeyboardInterrupt:
            pass
        except BrokenPipeError:  # the reader stopped (`| head`): as for Ctrl-C, and as tail does
            _discard_stdout()


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--connect", required=True, multiple=True, callback=_endpoint, help=CONNECT_HELP)
@click.option("--batch", type=click.IntRange(1, P.MAX_ROWS), default=65536, help="Labels per message.")
@curve_option
@friendly_errors
def label(file, connect, batch, curve_dir):
    """Publish confirmed fraud / genuine labels (Handbook CSV with TX_FRAUD) to the mesh.

    Terminal risk counts a fraud on the day of its transaction; send labels when they are
    revealed, not before, as a live system would learn them. A row that cannot be read is
    reported (with its line) and not sent; the others are. A label dated more than 1 day ahead
    of its card owner's clock is refused by that worker and not applied (the count is reported);
    the others are. Exit status: 0 every label was acknowledged and none refused; 1 a worker
    refused a whole message (an error), or a share was still unacknowledged after 3 sends (the
    message says how many were applied), or the file could not be read at all (a missing column)
    or no worker answered; 2 a usage error; 3 some rows could not be read, or some labels were
    refused as dated ahead."""
    from .client import Client, MeshError
    from .dataset import read_labelled

    errors = []  # (line, message) of rows that cannot be read: reported, the others sent
    d = read_labelled(file, errors=errors)
    n, frauds, refused = len(d["tx_id"]), 0, 0
    with _connected(Client, connect, curve_dir=curve_dir) as client:
        for lo in range(0, n, batch):
            part = {k: d[k][lo:lo + batch] for k in P.LABEL_NAMES}
            try:
                applied = client.label(part)
                frauds += sum(applied.values())
                refused += applied.refused
            except MeshError as e:
                done = (f"The first {lo:,} of {n:,} labels were applied, and maybe some of the next "
                        f"{len(part['tx_id']):,}" if lo else f"Some of the {n:,} labels may have been applied")
                raise MeshError(f"{e}. {done}; sending the file again to the same workers applies only the "
                                f"others (each owner skips the labels it holds)") from None
    for line, message in errors[:10]:
        click.echo(f"input line {line}: {message}", err=True)
    if len(errors) > 10:
        click.echo(f"... and {len(errors) - 10:,} more unreadable rows", err=True)
    if refused:
        click.echo(f"{refused:,} labels refused by their cards' owners and not applied: dated more than 1 day ahead "
                   f"of the worker's clock (a wrong date or time zone?)", err=True)
    click.echo(f"{n:,} labels sent; {frauds:,} frauds counted by their cards' owners"
               + (f"; {refused:,} refused (dated ahead, above)" if refused else "")
               + (f"; {len(errors):,} rows not sent (cannot be read, above)" if errors else ""))
    if errors or refused:
        sys.exit(3)


@main.group()
def keys():
    """CURVE keys for the mesh."""


@keys.command("init")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--force", is_flag=True, help="Replace existing keys (every worker and client must get the new ones).")
@friendly_errors
def keys_init(directory, force):
    """Create worker.key / worker.key_secret and client.key / client.key_secret in DIRECTORY.

    Secret files are mode 0600. Workers admit any public key (*.key) in their --curve-dir: copy a
    client's .key file there to let it in, remove it to shut it out."""
    from .security import keys_init as make

    if not directory:
        raise click.BadParameter("empty: give the directory to create the keys in", param_hint="'DIRECTORY'")
    for name, path in make(directory, force=force).items():
        click.echo(f"{name:<18} {path}")


@main.command()
@click.argument("data", type=click.Path(exists=True, dir_okay=False))
@click.option("--from", "date_from", required=True, callback=_date, help="First training day, YYYY-MM-DD.")
@click.option("--to", "date_to", required=True, callback=_date, help="Last training day, YYYY-MM-DD (inclusive).")
@click.option("--delay", "delay_days", type=click.IntRange(0, 30), default=7, help="Label delay in days.")
@click.option("--algo", type=click.Choice(["gbdt", "logistic"]), default="gbdt",
              help="gbdt needs LightGBM (the `train` extra); logistic needs only numpy.")
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False), callback=_writable,
              help="Model file to write (checked before training).")
@click.option("--version", "version", default=None, callback=_model_version,
              help="Model version (at most 128 printable characters). Default: the -o file's name without "
                   "its extension.")
@friendly_errors
def train(data, date_from, date_to, delay_days, algo, out, version):
    """Replay DATA (Handbook CSV) through the workers' streaming features, labels revealed
    --delay days late, and fit a model on the rows dated in [--from, --to]."""
    from .dataset import read_labelled, refuse_repeated_ids
    from .model import save_model
    from .train import train as fit

    _dates_in_order(date_from, date_to, "training")
    _distinct_files(data=data, out=out)
    version = _version_or_stem(version, out, "--out")
    t0 = time.perf_counter()
    d = read_labelled(data)
    refuse_repeated_ids(d, data)
    bar = Progress(total=len(d["tx_id"]), label="replayed",
                   then=f"fitting {'LightGBM' if algo == 'gbdt' else 'the logistic regression'} (no progress shown) ...")
    model = fit(d, date_from, date_to, delay_days, algo, version, progress=bar)
    bar.close()
    save_model(model, out)
    click.echo(f"wrote {out}: {describe(model)}; {model.source}; {time.perf_counter() - t0:.1f} s")


def _finite_or_null(value):
    """`value` (dicts and lists of numbers) with every NaN or infinity as None: JSON has no NaN, and
    json.dumps would write a bare `NaN` that other readers refuse (the AUC of one class is NaN)."""
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_null(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@main.command()
@click.argument("data", type=click.Path(exists=True, dir_okay=False))
@click.option("--model", "model_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Model file to score with (from `zfraud train`), loaded by every worker of the mesh.")
@click.option("--from", "date_from", required=True, callback=_date, help="First test day, YYYY-MM-DD.")
@click.option("--to", "date_to", required=True, callback=_date, help="Last test day, YYYY-MM-DD (inclusive).")
@click.option("--delay", "delay_days", type=click.IntRange(0, 30), default=7, help="Label delay in days.")
@click.option("--workers", type=click.IntRange(1, 16), default=2, help="Worker processes in the local mesh.")
@click.option("--known-from", callback=_date, default=None,
              help="Frauds from this day on make a card known-compromised. Default: the Handbook's split, "
                   "a 7-day training week ending --delay days before --from.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object (the last line); an undefined metric is null "
                   "(AUC ROC when the test days hold no fraud, or no genuine transaction).")
@friendly_errors
def backtest(data, model_path, date_from, date_to, delay_days, workers, known_from, as_json):
    """Stream DATA through a local mesh with labels fed back --delay days late; score the verdicts
    dated in [--from, --to] by the Handbook's protocol (AUC, AP, card precision@100)."""
    from .backtest import backtest as run
    from .dataset import read_labelled

    _dates_in_order(date_from, date_to, "test")

    d = read_labelled(data)
    bar = Progress(total=len(d["tx_id"]), label="scored")
    r = run(data, model_path, date_from, date_to, delay_days, workers, known_from, progress=bar, data=d)
    bar.close()
    out = sys.stderr if as_json else sys.stdout
    click.echo(f"test transactions {r['tx']:,} ({r['frauds']:,} frauds; {r['removed_known_tx']:,} of known-compromised "
               f"cards removed)", file=out)
    auc = f"{r['auc']:.4f}"
    if not math.isfinite(r["auc"]):  # NaN: the test days hold one class only (zfraud.evaluate.auc)
        auc = f"undefined ({'no frauds' if r['frauds'] == 0 else 'no genuine transactions'} in the test days)"
    click.echo(f"AUC ROC {auc}   average precision {r['ap']:.4f}   card precision@100 {r['cp100']:.4f}", file=out)
    for sc, rec in sorted((r.get("recall_by_scenario") or {}).items()):
        click.echo(f"  recall at 100 cards/day, scenario {sc}: {rec:.3f}", file=out)
    click.echo(f"decisions {r['decisions']}; streamed {r['streamed_tx']:,} tx through {r['workers']} workers at "
               f"{r['stream_tx_per_s']:,.0f} tx/s; lost {r['lost']}; resent {r['resent']}", file=out)
    if r["resent"]:
        click.echo(f"{r['resent']:,} transactions were resent after a worker missed the 30 s deadline: the state of "
                   f"their cards and terminals may count them twice, so the scores may differ from a replay's", err=True)
    if as_json:
        click.echo(json.dumps(_finite_or_null(r), allow_nan=False))
