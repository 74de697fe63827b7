"""`zfraud` and `python -m zfraud`: the command line (zfraud.cli). A Ctrl-C, SIGTERM or SIGHUP
while it imports (numpy, pyzmq, the kernels: about half a second) is taken as the commands take
one: a line saying so and 128 + the signal's number, not a traceback or a silent death."""
import signal
import sys


def _interrupt(signum, frame):
    stop = KeyboardInterrupt()
    stop.status = 128 + signum
    raise stop


def main():
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGHUP)}
    for sig, before in previous.items():
        if before is not signal.SIG_IGN:  # (nohup)
            signal.signal(sig, _interrupt)
    try:
        from .cli import main as cli
    except KeyboardInterrupt as e:
        sys.stderr.write("interrupted\n")
        sys.exit(getattr(e, "status", 130))
    finally:
        for sig, before in previous.items():
            signal.signal(sig, before)
    return cli()


if __name__ == "__main__":
    main()
