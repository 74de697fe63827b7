"""Rules: a small, safe expression language compiled to vectorised numpy evaluation.

A rule set is TOML (conf/rules.toml is the example):

    version = "2026-11-28.1"

    [[rule]]
    name = "very_large_amount"         # what a verdict names when the rule fires
    when = "amount > 5000"
    action = "decline"                 # or "review"

A rule has no reason text: a verdict carries the model's reason (its top feature), and the names
of the rules that fired (the `rules` bits, resolved through `rule_names`), which say why a rule
decided it. A `reason` key, which the example rules once had and nothing read, is taken and ignored.

Expressions: numbers, names (the model's features and the batch's columns: tx_id, card, terminal,
ts_ms, amount), arithmetic (+ - * / % and unary -), comparisons (< <= > >= == !=, chained),
`and` / `or` / `not`, `in` / `not in` with a list or tuple of numbers (each compared as `==` would),
and parentheses. The id columns (tx_id, card, terminal) take comparisons, `in` and `% N` (N a whole
number) only (IDS). A `when` is a condition: a comparison, a 0/1 feature (FLAGS), or and / or / not
of those (or their product or sum); a number alone is refused (numpy would take it as true wherever it is not 0).

Limits (every verdict header carries the rule names and the version): the file is UTF-8 with a
top-level `version` and `[[rule]]` tables only; at most MAX_RULES rules, each `name` 1 to MAX_NAME
characters of A-Z a-z 0-9 _ . -; a `version` of 1 to MAX_VERSION printable characters; a `when`
nested at most MAX_DEPTH levels deep.

The text is parsed by Python's own parser into a syntax tree and every node is checked against a
whitelist before anything runs; nothing is ever passed to eval. Each rule compiles to a closure that
takes the batch's columns (name -> numpy array) and returns a boolean array, so a rule costs a
handful of numpy operations per batch, never a Python step per transaction.
"""
from __future__ import annotations

import ast
import operator
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, from PyPI (a dependency there)
    import tomli as tomllib

ACTIONS = ("review", "decline")  # in increasing severity; values match protocol.REVIEW/DECLINE
MAX_RULES = 64  # fired rules travel as a 64-bit mask per verdict
# Every verdict header (RESULT, verdict.*, shadow) carries the rule names and the rules version, and a
# client drops a header over protocol.MAX_HEADER_BYTES (65 536): 40 rules named with 2000 characters
# each made every batch a dead letter. The worst case allowed here, 64 names of 64 ASCII characters
# (66 bytes each in msgpack: 64 + a 2-byte str8 prefix, so 4 227 bytes with the array's prefix) and a
# version of 128 characters (at most 4 bytes each in UTF-8: 515 bytes), is under 5 KB, well inside
# the limit next to the reason table, the model version and the worker's name.
MAX_NAME = 64
NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")
NAME_RULE = f"a rule name is 1 to {MAX_NAME} characters of A-Z a-z 0-9 _ . -"
# The version is printed in `status` and `deploy` lines and labels a Prometheus metric: a newline in
# it forged extra lines there.
MAX_VERSION = 128
VERSION_RULE = f"a rules version is 1 to {MAX_VERSION} printable characters (no newline or control characters)"
# How deep a `when` may nest (a + b + c nests one level per +; and/or, chained comparisons and `in`
# lists do not nest). Parsing, compiling and evaluating recurse once or twice per level: 1 500 terms
# died with a RecursionError. Evaluation runs deeper in a worker's stack than the check at load, so
# the limit is far below Python's recursion limit (1 000) rather than whatever happened to fit.
MAX_DEPTH = 100
COLUMNS = ("tx_id", "card", "terminal", "ts_ms", "amount")
# Identifiers, not quantities: unsigned 64-bit, where a subtraction or a minus sign wraps around
# (terminal - 1000000 < 0 would never fire). A rule compares them, or takes them modulo a whole
# number (to sample cards, say), exactly; any other arithmetic on them is refused.
IDS = ("tx_id", "card", "terminal")
# The features that are 0 or 1 (ext/features.pyx basic_row): a `when` may name one alone, as a
# condition. Any other number alone is not one: numpy would take it as true wherever it is not 0.
FLAGS = ("is_night", "is_weekend")
CONDITION = (f"compare it, as in amount * 2 > 100, or use and / or / not on comparisons or on the 0/1 "
             f"features {', '.join(FLAGS)}")

_ARITH = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: np.true_divide,
          ast.Mod: np.mod}
_COMPARE = {ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
            ast.Eq: operator.eq, ast.NotEq: operator.ne}


class RulesError(ValueError):
    """A rule set that cannot be loaded; the message names the rule and the problem."""


def _short(text: str, keep: int = 20) -> str:
    """`text` for an error message: its repr (one line, whatever it holds), cut after `keep` characters."""
    return repr(text[:keep]) + ("..." if len(text) > keep else "")


def _check_label(text: str, limit: int, ok, rule: str, what: str) -> None:
    if not text:
        raise RulesError(f"{what} is empty; {rule}")
    if len(text) > limit:
        raise RulesError(f"{what} {_short(text)} is {len(text)} characters; {rule}")
    bad = next((c for c in text if not ok(c)), None)
    if bad is not None:
        raise RulesError(f"{what} {_short(text)} has the character {bad!r}; {rule}")


def check_name(name: str, where: str, i: int) -> None:
    _check_label(name, MAX_NAME, lambda c: NAME_RE.fullmatch(c) is not None, NAME_RULE, f"{where}: rule #{i} name")


def check_version(version: str, where: str) -> None:
    _check_label(version, MAX_VERSION, str.isprintable, VERSION_RULE, f"{where}: version")


def _depth(tree: ast.AST) -> int:
    """How deep the expressions of a syntax tree nest (`amount > 1`: 2), walked without recursion."""
    deepest, todo = 0, [(tree, 0)]
    while todo:
        node, d = todo.pop()
        d += isinstance(node, ast.expr)
        deepest = max(deepest, d)
        todo.extend((child, d) for child in ast.iter_child_nodes(node))
    return deepest


def decode(data: bytes, where: str) -> str:
    """A rules file's bytes -> text, or a RulesError naming the file."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RulesError(f"{where}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); "
                         f"save the rules file as UTF-8") from None


def read(path) -> str:
    """The text of a rules file, or a RulesError naming the file."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise RulesError(f"cannot read rules file {path}: {e.strerror}") from None
    return decode(data, str(path))


def _compile(node, names: frozenset, rule: str):
    """A syntax-tree node -> a function(env) -> numpy array (or scalar). Whitelist only."""
    def fail(msg, at=node):
        where = f" at column {at.col_offset + 1}" if hasattr(at, "col_offset") else ""
        raise RulesError(f"rule {rule!r}{where}: {msg}")

    if isinstance(node, ast.Expression):
        return _compile(node.body, names, rule)
    if isinstance(node, ast.Constant):
        if type(node.value) not in (int, float) :
            fail(f"only numbers are allowed as constants, got {node.value!r}")
        value = node.value
        return lambda env: value
    if isinstance(node, ast.Name):
        if node.id not in names:
            fail(f"unknown name {node.id!r}; known: {', '.join(sorted(names))}")
        key = node.id
        return lambda env: env[key]
    operands = ([node.left, node.right] if isinstance(node, ast.BinOp) else
                [node.operand] if isinstance(node, ast.UnaryOp) and not isinstance(node.op, ast.Not) else [])
    ids = [n.id for n in operands if isinstance(n, ast.Name) and n.id in IDS]
    if ids:  # arithmetic on an id: only `id % N`, computed exactly
        right = operands[-1]
        if not (isinstance(node.op, ast.Mod) and ids == [getattr(node.left, "id", None)]
                and isinstance(right, ast.Constant) and type(right.value) is int and 0 < right.value < 2 ** 63):
            fail(f"{ids[0]} is an identifier: compare it (==, <, in ...) or take it modulo a whole number "
                 f"({ids[0]} % 100 < 5), but no other arithmetic (it is unsigned and would wrap around)")
        key, divisor = node.left.id, np.uint64(right.value)
        return lambda env: (np.asarray(env[key], dtype=np.uint64) % divisor).astype(np.int64)
    if isinstance(node, ast.BinOp) and type(node.op) in _ARITH:
        op, a, b = _ARITH[type(node.op)], _compile(node.left, names, rule), _compile(node.right, names, rule)
        if isinstance(node.op, (ast.Div, ast.Mod)):
            def divide(env):
                with np.errstate(divide="ignore", invalid="ignore"):
                    return op(np.asarray(a(env), dtype=np.float64), b(env))
            return divide
        return lambda env: op(a(env), b(env))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        a = _compile(node.operand, names, rule)
        return (lambda env: -a(env)) if isinstance(node.op, ast.USub) else a
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        a = _compile(node.operand, names, rule)
        return lambda env: np.logical_not(a(env))
    if isinstance(node, ast.BoolOp):
        parts = [_compile(v, names, rule) for v in node.values]
        combine = np.logical_and if isinstance(node.op, ast.And) else np.logical_or

        def boolop(env):
            out = np.asarray(parts[0](env), dtype=bool)
            for p in parts[1:]:
                out = combine(out, p(env))
            return out
        return boolop
    if isinstance(node, ast.Compare):
        left = _compile(node.left, names, rule)
        steps = []
        for op, right in zip(node.ops, node.comparators):
            if isinstance(op, (ast.In, ast.NotIn)):
                if not isinstance(right, (ast.List, ast.Tuple)) or not right.elts:
                    fail("`in` needs a non-empty list of numbers, e.g. terminal in (1, 2, 3)")
                ints, floats = [], []
                for elt in right.elts:
                    if isinstance(elt, ast.UnaryOp) and isinstance(elt.op, ast.USub) and isinstance(elt.operand, ast.Constant):
                        elt = ast.Constant(-elt.operand.value, col_offset=elt.col_offset)
                    if not isinstance(elt, ast.Constant) or type(elt.value) not in (int, float):
                        fail("`in` lists may hold numbers only")
                    if type(elt.value) is int and elt.value >= 2 ** 64:
                        fail(f"{elt.value} is too large: whole numbers in `in` lists go up to 2**64 - 1, "
                             f"the largest id", at=elt)
                    if type(elt.value) is int and elt.value < -2 ** 63:
                        fail(f"{elt.value} is too small: whole numbers in `in` lists go down to -2**63", at=elt)
                    (ints if type(elt.value) is int else floats).append(elt.value)
                steps.append(("in", _member(ints, floats), isinstance(op, ast.NotIn)))
            elif type(op) in _COMPARE:
                steps.append(("cmp", _COMPARE[type(op)], _compile(right, names, rule)))
            else:
                fail(f"operator {type(op).__name__} is not allowed")

        def compare(env):
            a = left(env)
            out = None
            for kind, x, y in steps:
                if kind == "in":
                    r = x(a)
                    if y:
                        r = np.logical_not(r)
                    b = a
                else:
                    b = y(env)
                    with np.errstate(invalid="ignore"):
                        r = x(a, b)
                out = r if out is None else np.logical_and(out, r)
                a = b
            return out
        return compare
    fail(f"{type(node).__name__} is not allowed in a rule (allowed: numbers, names, + - * / %, "
         f"comparisons, and/or/not, in lists)")


def _member(ints: list, floats: list):
    """`x in (v1, v2, ...)` as a function(x) -> bool array that is true where `x == v` is for some v,
    with `==`'s own types: numpy compares an array with a Python number in the array's type (NEP 50),
    so amount (float32) meets 250.3 as float32(250.3), and an id column (uint64) meets a whole number
    exactly, a fraction in float64, and a negative number never. Comparing the whole list in one
    type instead made `amount in (250.3,)` miss what `amount == 250.3` hits, and let
    card 12345678901234568 match 12345678901234567 in float64 once the list held a -1. One np.isin per
    kind of number, not one == per element: a blocklist may hold thousands."""
    cache = {}  # the array's dtype -> [(the dtype to compare in, the values in it)]

    def plan(dtype):
        groups = []
        if floats:
            t = np.result_type(dtype, 0.0)  # the type `x == 0.5` compares in
            groups.append((t, np.array(floats, dtype=np.float64).astype(t)))
        if ints:
            t = np.result_type(dtype, 0)  # the type `x == 5` compares in
            if t.kind in "ui":  # exact; a number outside the type's range is never equal
                info = np.iinfo(t)
                groups.append((t, np.array([v for v in ints if info.min <= v <= info.max], dtype=t)))
            else:  # float: each whole number rounded to the type, as == rounds it
                groups.append((t, np.array([t.type(v) for v in ints], dtype=t)))
        return groups

    def member(x):
        arr = np.asarray(x)
        groups = cache.get(arr.dtype)
        if groups is None:
            groups = cache[arr.dtype] = plan(arr.dtype)
        out = None
        for t, values in groups:
            hit = np.isin(arr.astype(t, copy=False), values)
            out = hit if out is None else np.logical_or(out, hit)
        return out
    return member


def _syntax_error_at(e: SyntaxError, text: str) -> str:
    """Where in `text` the parser stopped: "at column 8", or "at the end (column 9)" when the text
    ended before the expression did (the parser's offset is then 0); 1-based, as _compile's columns.
    The line too when `text` has several (a TOML string may hold newlines)."""
    lines = text.split("\n")
    line, column = (e.lineno or 1, e.offset) if e.offset else (len(lines), len(lines[-1]) + 1)
    where = (f"line {line}, " if len(lines) > 1 else "") + f"column {column}"
    return f"at {where}" if e.offset else f"at the end ({where})"


def _not_a_condition(tree: ast.Expression):
    """The first part of a `when` that should be a truth value and is not (`amount * 2`, or the
    `amount` of `is_night == 1 and amount`), or None: a `when` is a comparison, a 0/1 feature
    (FLAGS), or and / or / not of those, or their product (and) or sum (or). A product or sum
    with a number in it is named whole (`amount * 2`, not its `amount`)."""
    todo = [(tree.body, None)]  # (node, the outermost product or sum it is in)
    while todo:  # no recursion: 3 000 `not`s are refused as too deep only after this runs
        node, whole = todo.pop()
        if isinstance(node, ast.BoolOp):
            todo.extend((v, whole) for v in reversed(node.values))
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            todo.append((node.operand, whole))
        elif isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Mult, ast.Add)):
            # conditions multiplied (and) or added (or): still true or false
            todo.extend(((node.right, whole or node), (node.left, whole or node)))
        elif not (isinstance(node, ast.Compare) or isinstance(node, ast.Name) and node.id in FLAGS):
            return whole or node
    return None


# The dtypes a rule sees in a worker: the batch's columns (protocol.TX_COLUMNS) and float32 features.
_DTYPES = {"tx_id": np.uint64, "card": np.uint64, "terminal": np.uint64, "ts_ms": np.int64, "amount": np.float64}


def _probe(test, names: frozenset, rule: str) -> None:
    """Run a compiled rule once on a batch of the workers' dtypes: what numpy refuses for a dtype
    (a constant too large for int64 next to ts_ms, say) fails here, at load, with the rule's name,
    not on every batch once deployed."""
    env = {n: np.zeros(2, dtype=_DTYPES.get(n, np.float32)) for n in names}
    try:
        with np.errstate(all="ignore"):
            np.broadcast_to(np.asarray(test(env), dtype=bool), (2,))
    except OverflowError:
        raise RulesError(f"rule {rule!r}: a whole number in it is too large for the 64-bit column it "
                         f"meets") from None
    except (ArithmeticError, TypeError, ValueError) as e:
        raise RulesError(f"rule {rule!r}: cannot be evaluated on the batch's columns: {e}") from None


@dataclass(frozen=True)
class Rule:
    name: str
    when: str
    action: str
    test: object  # compiled: function(env) -> bool array


class RuleSet:
    """Compiled rules. `evaluate(env, n)` -> (action code per row, 64-bit fired mask per row)."""

    def __init__(self, rules: list[Rule], version: str = "none", source: str = ""):
        self.rules = rules
        self.version = version
        self.source = source  # the TOML text, so the rule set can be shipped to other workers
        self.names = [r.name for r in rules]

    @classmethod
    def empty(cls) -> "RuleSet":
        return cls([], "none", "")

    @classmethod
    def from_toml(cls, text: str, names, where: str = "rules") -> "RuleSet":
        """Parse and compile; `names` are the names a rule may use (features and columns)."""
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise RulesError(f"{where}: not valid TOML: {e}") from None
        unknown = set(doc) - {"version", "rule"}
        if unknown:  # `[[rules]]` for `[[rule]]` deployed an empty rule set
            raise RulesError(f"{where}: unknown top-level keys {sorted(unknown)}; known: version, rule "
                             f"(each rule a [[rule]] table)")
        allowed = frozenset(names) | frozenset(COLUMNS)
        version = str(doc.get("version", "unversioned"))
        check_version(version, where)
        entries = doc.get("rule", [])
        if not isinstance(entries, list):
            raise RulesError(f"{where}: rules are written as [[rule]] tables")
        if len(entries) > MAX_RULES:
            raise RulesError(f"{where}: {len(entries)} rules, at most {MAX_RULES} are supported")
        rules, seen = [], set()
        for i, entry in enumerate(entries, start=1):
            if not isinstance(entry, dict):
                raise RulesError(f"{where}: rule #{i} is not a table")
            name = entry.get("name")
            if not isinstance(name, str) or not name:
                raise RulesError(f"{where}: rule #{i} needs a name")
            check_name(name, where, i)
            if name in seen:
                raise RulesError(f"{where}: rule name {name!r} is used twice")
            seen.add(name)
            unknown = set(entry) - {"name", "when", "action", "reason"}  # (reason: ignored, see the docstring)
            if unknown:
                raise RulesError(f"{where}: rule {name!r} has unknown keys {sorted(unknown)}")
            when, action = entry.get("when"), entry.get("action")
            if not isinstance(when, str) or not when.strip():
                raise RulesError(f"{where}: rule {name!r} needs a `when` expression")
            if action not in ACTIONS:
                raise RulesError(f"{where}: rule {name!r} has action {action!r}; use one of {', '.join(ACTIONS)}")
            too_deep = RulesError(f"{where}: rule {name!r}: expression too long or too deeply nested "
                                  f"(limit {MAX_DEPTH} levels; a + b + c nests one level per operator)")
            try:
                tree = ast.parse(when.strip(), mode="eval")
            except SyntaxError as e:
                raise RulesError(f"{where}: rule {name!r}: cannot parse {when!r}: {e.msg} "
                                 f"{_syntax_error_at(e, when.strip())}") from None
            except (RecursionError, MemoryError):  # the parser's own stack: 5 000 unary minus signs
                raise too_deep from None
            if _depth(tree) > MAX_DEPTH:
                raise too_deep
            try:
                test = _compile(tree, allowed, name)
                loose = _not_a_condition(tree)
                if loose is not None:
                    raise RulesError(f"rule {name!r} at column {loose.col_offset + 1}: "
                                     f"{ast.get_source_segment(when.strip(), loose)!r} is not a condition (it "
                                     f"would fire wherever it is not 0): {CONDITION}")
                _probe(test, allowed, name)
            except RulesError as e:
                raise RulesError(f"{where}: {e}") from None
            rules.append(Rule(name, when.strip(), action, test))
        return cls(rules, version, text)

    @classmethod
    def load(cls, path, names) -> "RuleSet":
        return cls.from_toml(read(path), names, str(path))

    def evaluate(self, env: dict, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Returns (action per row: 0 none, 1 review, 2 decline; uint64 mask of the rules that fired)."""
        action = np.zeros(n, dtype=np.uint8)
        fired = np.zeros(n, dtype=np.uint64)
        for bit, rule in enumerate(self.rules):
            hit = np.broadcast_to(np.asarray(rule.test(env), dtype=bool), (n,))
            if hit.any():
                fired[hit] |= np.uint64(1 << bit)
                np.maximum(action, np.uint8(ACTIONS.index(rule.action) + 1), out=action, where=hit)
        return action, fired
