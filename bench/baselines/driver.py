"""Drive the line-per-transaction baseline servers as hard as they go: each server gets the
transactions of the cards it owns (the same rendezvous hashing as zfraud), pipelined with a
bounded window of unanswered lines, over one TCP connection each."""
import json
import selectors
import socket
import time

from zfraud.mesh import owners


def drive(ports: list[int], chunks, window: int = 2048, timeout_s: float = 300.0) -> dict:
    names = [f"w{i + 1}" for i in range(len(ports))]
    socks = []
    for port in ports:
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        socks.append(s)
    queues = [[] for _ in ports]  # encoded lines not yet written, per server
    for chunk in chunks:
        own = owners(chunk["card"], names)
        for tx, card, term, ts, amount, o in zip(chunk["tx_id"].tolist(), chunk["card"].tolist(),
                                                 chunk["terminal"].tolist(), chunk["ts_ms"].tolist(),
                                                 chunk["amount"].tolist(), own.tolist()):
            queues[o].append(json.dumps({"tx_id": tx, "card": card, "terminal": term, "ts_ms": ts,
                                         "amount": amount}).encode() + b"\n")
    total = sum(len(q) for q in queues)
    sel = selectors.DefaultSelector()
    state = [{"next": 0, "answered": 0, "out": b"", "in": b""} for _ in ports]
    for i, s in enumerate(socks):
        sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE, i)
    answered = 0
    t0 = time.perf_counter()
    while answered < total and time.perf_counter() - t0 < timeout_s:
        for key, events in sel.select(timeout=1.0):
            i, s, st, q = key.data, key.fileobj, state[key.data], queues[key.data]
            if events & selectors.EVENT_WRITE:
                room = window - (st["next"] - st["answered"])
                if not st["out"] and room > 0 and st["next"] < len(q):
                    k = min(room, 256, len(q) - st["next"])
                    st["out"] = b"".join(q[st["next"]:st["next"] + k])
                    st["next"] += k
                if st["out"]:
                    sent = s.send(st["out"])
                    st["out"] = st["out"][sent:]
            if events & selectors.EVENT_READ:
                data = s.recv(1 << 20)
                if not data:
                    raise RuntimeError(f"baseline server {ports[i]} closed the connection")
                buf = st["in"] + data
                lines = buf.count(b"\n")
                st["in"] = buf[buf.rfind(b"\n") + 1:]
                st["answered"] += lines
                answered += lines
    elapsed = time.perf_counter() - t0
    for s in socks:
        s.close()
    if answered < total:
        raise RuntimeError(f"baseline answered {answered} of {total} within {timeout_s} s")
    return {"tx": total, "elapsed_s": round(elapsed, 3), "tx_per_s": round(total / elapsed, 1)}
