"""Socket options set deliberately, in one place (../shared/reference/zeromq.md, section 6).

- MAXMSGSIZE bounds what a peer can make us allocate (protocol.MAX_MESSAGE_BYTES).
- No ZMTP heartbeats (HEARTBEAT_IVL/TIMEOUT/TTL stay 0). The libzmq that pyzmq bundles (4.3.5)
  aborts the whole process (`Assertion failed: !_io_error (src/stream_engine_base.cpp:310)`,
  zeromq/libzmq#4841) when a heartbeat timer fires on a connection whose receive pipe was full
  (RCVHWM reached, input stopped) and whose peer has since hung up: a client that floods a
  worker's ROUTER and disconnects without reading its answers did that within seconds
  (docs/OPERATIONS.md §6.1). The kernel watches the link instead: TCP keepalive (a probe after
  1 s idle, every 1 s, 3 unanswered probes) and TCP_MAXRT (TCP_USER_TIMEOUT: 3 s without an
  acknowledgement, or of a zero window, closes the connection) drop a dead or stalled
  connection in about 3-4 s, as the 3 s ZMTP timeout did; the application heartbeat
  (mesh.hello) and per-batch deadlines prove the scoring loop makes progress.
- LINGER is short: a process that exits must not hang on unsent messages; sockets that carry
  replies get long enough to flush them.
- RECONNECT_IVL starts at 250 ms and backs off to 8 s.

And one way to send and to receive a message on the hot path (send_frames, recv_frames).

Every socket costs descriptors (its mailbox; each connection; a monitor's pair), so a process
that may open too few (`ulimit -n`) fails to make one with EMFILE: out_of_descriptors() tells
that error apart and descriptor_limit() says the limit, for the message.
"""
import errno
import resource

import numpy as np
import zmq

from .protocol import MAX_MESSAGE_BYTES

_SNDMORE = int(zmq.SNDMORE)


def configure(sock, sndhwm: int = 10_000, rcvhwm: int = 10_000, linger_ms: int = 0):
    sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
    sock.setsockopt(zmq.SNDHWM, sndhwm)
    sock.setsockopt(zmq.RCVHWM, rcvhwm)
    sock.setsockopt(zmq.LINGER, linger_ms)
    sock.setsockopt(zmq.RECONNECT_IVL, 250)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, 8000)
    # No ZMTP heartbeats (module docstring: libzmq#4841 aborts the process); the kernel's instead.
    sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
    sock.setsockopt(zmq.TCP_KEEPALIVE_IDLE, 1)
    sock.setsockopt(zmq.TCP_KEEPALIVE_INTVL, 1)
    sock.setsockopt(zmq.TCP_KEEPALIVE_CNT, 3)
    sock.setsockopt(zmq.TCP_MAXRT, 3000)
    return sock


def out_of_descriptors(e: BaseException) -> bool:
    """True for the error of a process that may open no more descriptors (EMFILE), or of a system
    that may open no more files (ENFILE): from zmq (a socket not made) or from the OS."""
    return isinstance(e, (zmq.ZMQError, OSError)) and e.errno in (errno.EMFILE, errno.ENFILE)


def descriptor_limit() -> str:
    """'the limit (ulimit -n) is N', for a message. How many are open is not said: by the time an
    error reaches its message, what the failed work had open is closed."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return "there is no limit (ulimit -n)" if soft == resource.RLIM_INFINITY else f"the limit (ulimit -n) is {soft}"


def raise_descriptor_limit() -> None:
    """Raise this process's soft limit on open descriptors to its hard limit, as servers commonly
    do: each member of a mesh costs a few. A shell's `ulimit -n N` sets both; then nothing changes."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass  # e.g. a hard limit above what the kernel allows: keep the soft one


def send_frames(sock, frames, flags: int = 0) -> None:
    """sock.send_multipart(frames, flags) for frames that are bytes or C-contiguous numpy arrays
    (what zfraud.protocol builds), at a fraction of its cost for a small message: pyzmq checks
    each frame's buffer and combines enum flags per frame, which costs more than the sends.

    Every frame is checked before the first is sent; libzmq takes the rest of a message once it
    has taken its first frame, so a message goes whole or, raising from the first frame (e.g.
    zmq.Again), not at all."""
    for f in frames:
        if type(f) is not bytes and not (type(f) is np.ndarray and f.flags.c_contiguous):
            raise TypeError(f"a frame must be bytes or a C-contiguous array, got {type(f).__name__}")
    flags = int(flags)
    more = flags | _SNDMORE
    for f in frames[:-1]:
        sock.send(f, more)
    sock.send(frames[-1], flags)


def recv_frames(sock, flags: int = 0) -> list:
    """sock.recv_multipart(flags) as a list of bytes, at a fraction of its cost for a small
    message: it asks getsockopt(RCVMORE) after every frame, which costs an enum conversion each
    time; a received frame knows whether more follow."""
    frame = sock.recv(flags, copy=False)
    frames = [frame.bytes]
    while frame.more:
        frame = sock.recv(flags, copy=False)
        frames.append(frame.bytes)
    return frames
