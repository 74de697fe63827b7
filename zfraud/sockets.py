"""Socket options set deliberately, in one place (../shared/reference/zeromq.md, section 6).

- MAXMSGSIZE bounds what a peer can make us allocate (protocol.MAX_MESSAGE_BYTES).
- ZMTP heartbeats (1 s interval, 3 s timeout and TTL) prove the link; the application
  heartbeat (mesh.hello) and per-batch deadlines prove the scoring loop makes progress.
- LINGER is short: a process that exits must not hang on unsent messages; sockets that carry
  replies get long enough to flush them.
- RECONNECT_IVL starts at 250 ms and backs off to 8 s.

And one way to send and to receive a message on the hot path (send_frames, recv_frames).
"""
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
    sock.setsockopt(zmq.HEARTBEAT_IVL, 1000)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3000)
    sock.setsockopt(zmq.HEARTBEAT_TTL, 3000)
    return sock


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
