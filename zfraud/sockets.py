"""Socket options set deliberately, in one place (../shared/reference/zeromq.md, section 6).

- MAXMSGSIZE bounds what a peer can make us allocate (protocol.MAX_MESSAGE_BYTES).
- ZMTP heartbeats (1 s interval, 3 s timeout and TTL) prove the link; the application
  heartbeat (mesh.hello) and per-batch deadlines prove the scoring loop makes progress.
- LINGER is short: a process that exits must not hang on unsent messages; sockets that carry
  replies get long enough to flush them.
- RECONNECT_IVL starts at 250 ms and backs off to 8 s.
"""
import zmq

from .protocol import MAX_MESSAGE_BYTES


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
