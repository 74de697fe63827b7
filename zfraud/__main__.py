"""`zfraud` and `python -m zfraud`: the command line (zfraud.cli). A Ctrl-C, SIGTERM or SIGHUP
while it imports (numpy, pyzmq, the kernels: about half a second) is taken as the commands take
one: a line saying so and 128 + the signal's number, not a traceback or a silent death."""
import signal
import sys


def _handle(signals, handler) -> dict:
    """Set `handler` for each of `signals` that is not ignored (`nohup`: the job outlives its
    terminal); returns the handlers before, for _restore."""
    previous = {sig: signal.getsignal(sig) for sig in signals}
    for sig, before in previous.items():
        if before is not signal.SIG_IGN:
            signal.signal(sig, handler)
    return previous


def _restore(previous: dict) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def _interrupt(signum, frame):
    """A signal handler that raises KeyboardInterrupt, to exit with 128 + signum: SIGTERM (a
    supervisor, `timeout`) and SIGHUP (the terminal closed) then clean up as Ctrl-C does (the
    local mesh of `demo` and `backtest` stopped and its directory removed, a half-written output
    file removed), where they killed the command with nothing said and its files left."""
    stop = KeyboardInterrupt()
    stop.status = 128 + signum
    raise stop


def main():
    previous = _handle((signal.SIGTERM, signal.SIGHUP), _interrupt)
    try:
        from .cli import main as cli
    except KeyboardInterrupt as e:
        sys.stderr.write("interrupted\n")
        sys.exit(getattr(e, "status", 130))
    finally:
        _restore(previous)
    return cli()


if __name__ == "__main__":
    main()
