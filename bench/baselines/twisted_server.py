"""The seed's design, as a baseline: a Twisted TCP server that receives one JSON transaction per
line and answers one JSON verdict per line.

    python bench/baselines/twisted_server.py --port 7000 --model MODEL --mode python|kernel

--mode python  scores each transaction in plain Python: the same streaming features and the same
               trees as zfraud (bench/baselines/pyscore.py), one transaction at a time.
--mode kernel  calls zfraud's own pipeline (features, Cython kernel, decisions) once per
               transaction, i.e. zfraud without batching and without the mesh.

Prints "ready PORT" on stdout when listening. Runs until killed.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from twisted.internet import protocol, reactor  # noqa: E402
from twisted.protocols.basic import LineReceiver  # noqa: E402


def make_scorer(mode: str, model_path: str):
    if mode == "python":
        from pyscore import PyScorer
        return PyScorer(model_path).score
    import numpy as np

    from zfraud.model import load_model
    from zfraud.scoring import Scorer

    scorer = Scorer(load_model(model_path))
    dtypes = {"tx_id": np.uint64, "card": np.uint64, "terminal": np.uint64, "ts_ms": np.int64, "amount": np.float64}

    def score(tx):
        cols = {k: np.array([tx[k]], dtype=dt) for k, dt in dtypes.items()}
        v, _ = scorer.score(cols)
        return float(v["score"][0]), int(v["decision"][0])
    return score


class Scoring(LineReceiver):
    delimiter = b"\n"
    MAX_LENGTH = 1 << 16

    def lineReceived(self, line):
        tx = json.loads(line)
        score, decision = self.factory.score(tx)
        self.sendLine(json.dumps({"tx_id": tx["tx_id"], "score": score, "decision": decision}).encode())


class Factory(protocol.ServerFactory):
    protocol = Scoring

    def __init__(self, score):
        self.score = score


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--mode", choices=["python", "kernel"], required=True)
    args = ap.parse_args()
    reactor.listenTCP(args.port, Factory(make_scorer(args.mode, args.model)), interface="127.0.0.1")
    print(f"ready {args.port}", flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
