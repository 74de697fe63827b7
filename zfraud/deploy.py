"""Hot reload: validate a model and/or rule set locally, then ship it to every member.

Each worker rebuilds its Scorer from the artefact, validating everything, and swaps it in between
two batches: a batch is scored wholly by the old or wholly by the new one. Every verdict names
the model and rules versions that produced it. With shadow=True the model scores beside the live
one and publishes on the `shadow` topic without changing any decision.

There is no mesh-wide transaction: each worker swaps on its own. So deploy() does not trust the
member list it started with (a worker may join, or come back from a pause that dropped it, while
the others are reached), and does not trust the answers either (another deploy may overwrite one,
a worker may restart): it deploys until a fresh member list holds no worker it has not tried,
then asks every member what it runs, and that is what it reports.
"""
from __future__ import annotations

import json
import time

from .client import Client, MeshError
from .features import FEATURE_SETS
from .model import load_model
from .protocol import MAX_MESSAGE_BYTES
from .rules import RuleSet, read as read_rules
from .scoring import Scorer

SETTLE_S = 0.5  # a member list with no newcomer is asked again after this (a few gossip rounds), once


class DeployError(MeshError):
    """A deploy that did not leave every member running what was deployed. `running`: worker ->
    {"model", "rules", "shadow"} as its status said after the deploy (None: it did not answer);
    `failures`: worker -> why it does not run the deployment (every worker not in it does)."""

    def __init__(self, message: str, running: dict, failures: dict):
        super().__init__(message)
        self.running, self.failures = running, failures


def _build(model_path, rules_path, shadow: bool) -> tuple[list[bytes], dict]:
    """(the CONTROL payload frames, what a worker that took them runs: the fields they set)."""
    if model_path is None and rules_path is None:
        raise ValueError("nothing to deploy: give a model, rules, or both")
    if shadow and (model_path is None or rules_path is not None):
        raise ValueError("a shadow deploy takes a model and no rules")
    model = load_model(model_path) if model_path else None
    rules_text = read_rules(rules_path) if rules_path else ""
    rules = None
    if model is not None:
        rules = RuleSet.from_toml(rules_text, model.features, str(rules_path)) if rules_path else None
        Scorer(model, rules=rules)  # refuses a model whose features the workers do not compute
    elif rules_path:  # the workers check names against their own features; here, against any known
        rules = RuleSet.from_toml(rules_text, {n for names in FEATURE_SETS.values() for n in names}, str(rules_path))
    model_frame = json.dumps(model.to_dict()).encode() if model else b""
    if len(model_frame) > MAX_MESSAGE_BYTES:  # libzmq drops a bigger frame without a word: no answer, ever
        raise ValueError(
            f"{model_path}: the model is {len(model_frame) / 2**20:.1f} MiB ({len(model_frame)} bytes) as a deploy "
            f"message, over the {MAX_MESSAGE_BYTES // 2**20} MiB ({MAX_MESSAGE_BYTES} bytes) a worker accepts in one "
            f"frame: it cannot be deployed. Start the workers with --model {model_path} instead (one at a time)")
    # An empty rules frame keeps a worker's rules (PROTOCOL §4.7); an empty file holds none, as for
    # `worker --rules`: it goes as the same TOML document, one newline, so that it removes them.
    rules_frame = (rules_text or "\n").encode() if rules_path else b""
    # A non-shadow deploy removes any shadow model (worker._deployed); rules-only keeps the model
    want = {"shadow": model.version if shadow else None}
    if model is not None and not shadow:
        want["model"] = model.version
    if rules is not None:
        want["rules"] = rules.version
    return [model_frame, rules_frame], want


def artefact(model_path=None, rules_path=None, shadow: bool = False) -> list[bytes]:
    """Validate locally and return the CONTROL payload frames [model JSON, rules TOML]. Raises
    ValueError for a bad file, or a model too big for one message frame (MAX_MESSAGE_BYTES)."""
    return _build(model_path, rules_path, shadow)[0]


def _running(status: dict) -> dict:
    return {"model": status.get("model"), "rules": status.get("rules"), "shadow": status.get("shadow")}


def deploy(client: Client, model_path=None, rules_path=None, shadow: bool = False,
           timeout_s: float = 10.0) -> dict:
    """Ship to every member, and to every worker that joins (or comes back) meanwhile; then ask
    every member what it runs. Returns {worker: {"model", "rules", "shadow"}} as each said then.
    Raises DeployError (a MeshError) naming each worker that refused, did not answer, or does not
    run what was deployed (another deploy at the same time, a restart), with what each runs.

    timeout_s: per worker and request; and how long newcomers are looked for after the first round
    (a mesh whose list keeps changing is reported as it stands then)."""
    payload, want = _build(model_path, rules_path, shadow)
    tried: dict[str, str | None] = {}  # worker -> None once it took the deploy, else why not
    end = None  # when the search for newcomers stops: timeout_s after the first round
    while True:
        for name in [n for n in client.members if n not in tried]:
            try:
                client.control(name, "deploy", timeout_s, payload=payload, shadow=shadow)
                tried[name] = None
            except MeshError as e:
                tried[name] = _why(name, e)
        end = end or time.monotonic() + timeout_s
        if time.monotonic() >= end:
            break
        if all(n in tried for n in client.refresh_members(min(1.0, timeout_s))):
            time.sleep(SETTLE_S)  # nobody new: once more, after a few gossip rounds
            if all(n in tried for n in client.refresh_members(min(1.0, timeout_s))):
                break
    # What every member, and every worker reached that has left since, runs now
    running: dict[str, dict | None] = {}
    failures: dict[str, str] = {}
    members = client.refresh_members(min(1.0, timeout_s))
    for name in sorted({*members, *tried}):
        try:
            running[name] = _running(client.control(name, "status", timeout_s)["status"])
        except MeshError as e:
            if name not in members and tried.get(name) is None:
                continue  # took it, and left the mesh since (stopped): it runs nothing now
            running[name] = None
            failures[name] = (tried.get(name) or "took the deploy") + \
                f"; and {_why(name, e)} after it: check `zfraud status`, it may still apply or lose it"
            continue
        wrong = {k: v for k, v in want.items() if running[name][k] != v}
        if name not in tried:
            failures[name] = "joined the mesh too late for this deploy: deploy again"
        elif tried[name] is not None:
            failures[name] = tried[name] + ("; it has applied it since" if not wrong else "")
        elif wrong:
            failures[name] = "took the deploy, but runs " + ", ".join(
                f"{k}={running[name][k] or 'none'} (not {v or 'none'})" for k, v in wrong.items()) + \
                " now: another deploy since, or a restart"
    if failures:
        raise DeployError(f"{len(failures)} of {len(running)} workers do not run what was deployed: "
                          + "; ".join(f"{w} {why}" for w, why in sorted(failures.items())), running, failures)
    return running


def _why(name: str, e: MeshError) -> str:
    """'did not answer deploy within 1 s', from the client's 'worker w2 did not answer ...'."""
    return str(e).removeprefix(f"worker {name} ")
