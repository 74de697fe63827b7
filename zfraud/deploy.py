"""Hot reload: validate a model and/or rule set locally, then ship it to every member.

Each worker rebuilds its Scorer from the artefact, validating everything, and swaps it in between
two batches: a batch is scored wholly by the old or wholly by the new one. Every verdict names
the model and rules versions that produced it. With shadow=True the model scores beside the live
one and publishes on the `shadow` topic without changing any decision.
"""
from __future__ import annotations

import json

from .client import Client, MeshError
from .features import FEATURE_SETS
from .model import load_model
from .protocol import MAX_MESSAGE_BYTES
from .rules import RuleSet, read as read_rules
from .scoring import Scorer


def artefact(model_path=None, rules_path=None, shadow: bool = False) -> list[bytes]:
    """Validate locally and return the CONTROL payload frames [model JSON, rules TOML]. Raises
    ValueError for a bad file, or a model too big for one message frame (MAX_MESSAGE_BYTES)."""
    if model_path is None and rules_path is None:
        raise ValueError("nothing to deploy: give a model, rules, or both")
    if shadow and (model_path is None or rules_path is not None):
        raise ValueError("a shadow deploy takes a model and no rules")
    model = load_model(model_path) if model_path else None
    rules_text = read_rules(rules_path) if rules_path else ""
    if model is not None:
        rules = RuleSet.from_toml(rules_text, model.features, str(rules_path)) if rules_path else None
        Scorer(model, rules=rules)  # refuses a model whose features the workers do not compute
    elif rules_path:  # the workers check names against their own features; here, against any known
        RuleSet.from_toml(rules_text, {n for names in FEATURE_SETS.values() for n in names}, str(rules_path))
    model_frame = json.dumps(model.to_dict()).encode() if model else b""
    if len(model_frame) > MAX_MESSAGE_BYTES:  # libzmq drops a bigger frame without a word: no answer, ever
        raise ValueError(
            f"{model_path}: the model is {len(model_frame) / 2**20:.1f} MiB ({len(model_frame)} bytes) as a deploy "
            f"message, over the {MAX_MESSAGE_BYTES // 2**20} MiB ({MAX_MESSAGE_BYTES} bytes) a worker accepts in one "
            f"frame: it cannot be deployed. Start the workers with --model {model_path} instead (one at a time)")
    # An empty rules frame keeps a worker's rules (PROTOCOL §4.7); an empty file holds none, as for
    # `worker --rules`: it goes as the same TOML document, one newline, so that it removes them.
    rules = (rules_text or "\n").encode() if rules_path else b""
    return [model_frame, rules]


def deploy(client: Client, model_path=None, rules_path=None, shadow: bool = False,
           timeout_s: float = 10.0) -> dict:
    """Ship to every member; returns {worker: answer header} and raises MeshError naming the
    workers that refused or did not answer."""
    payload = artefact(model_path, rules_path, shadow)
    answers, failures = {}, []
    for name in client.members:
        try:
            answers[name] = client.control(name, "deploy", timeout_s, payload=payload, shadow=shadow)
        except MeshError as e:
            failures.append(str(e))
    if failures:
        raise MeshError("; ".join(failures))
    return answers
