"""The rules language: whitelist parsing, vectorised evaluation, clear load-time errors."""
import numpy as np
import pytest

from zfraud import Client, load_model
from zfraud import protocol as P
from zfraud.local import LocalMesh
from zfraud.rules import RuleSet, RulesError, tomllib  # (tomli before Python 3.11)
from zfraud.scoring import Scorer
from zfraud.synthetic import synthetic

from conftest import request, run_cli

NAMES = ("amount", "log_amount", "hour", "is_night", "is_weekend")


def rules(*entries, version="t1"):
    body = "".join(f'[[rule]]\nname = "{n}"\nwhen = "{w}"\naction = "{a}"\n\n' for n, w, a in entries)
    return RuleSet.from_toml(f'version = "{version}"\n\n' + body, NAMES)


ENV = {"amount": np.array([10.0, 600.0, 1500.0, 3000.0]), "hour": np.array([1.0, 3.0, 12.0, 23.0]),
       "is_night": np.array([1.0, 1.0, 0.0, 0.0]), "terminal": np.array([5, 9001, 7, 2**63 + 1], dtype=np.uint64),
       "card": np.array([1, 2, 3, 4], dtype=np.uint64)}


@pytest.mark.parametrize("expr, expected", [
    ("amount > 500", [0, 1, 1, 1]),
    ("amount > 500 and is_night == 1", [0, 1, 0, 0]),
    ("not (amount > 500) or hour >= 23", [1, 0, 0, 1]),
    ("500 < amount <= 1500", [0, 1, 1, 0]),
    ("amount * 2 - 100 >= 2900", [0, 0, 1, 1]),
    ("amount / hour > 100", [0, 1, 1, 1]),
    ("amount % 1000 == 500", [0, 0, 1, 0]),
    ("-amount < -1000", [0, 0, 1, 1]),
    ("terminal in (9001, 9223372036854775809)", [0, 1, 0, 1]),
    ("terminal not in [9001]", [1, 0, 1, 1]),
    ("hour in (1, 23.0)", [1, 0, 0, 1]),
    ("card == 3", [0, 0, 1, 0]),
    ("terminal < 1000000", [1, 1, 1, 0]),
    ("terminal % 2 == 1", [1, 1, 1, 1]),  # exact for ids above 2**53
    ("card % 4 - 2 < 0", [1, 0, 0, 1]),  # the remainder is signed: no wrap-around
    ("terminal % 9223372036854775807 == 2", [0, 0, 0, 1]),
])
def test_expressions(expr, expected):
    action, fired = rules(("r", expr, "review")).evaluate(ENV, 4)
    assert fired.tolist() == expected
    assert action.tolist() == expected  # review = 1


def test_most_severe_action_wins_and_all_fired_rules_are_named():
    rs = rules(("big", "amount > 500", "review"), ("huge", "amount > 2000", "decline"), ("night", "is_night == 1", "review"))
    action, fired = rs.evaluate(ENV, 4)
    assert action.tolist() == [1, 1, 1, 2]
    assert fired.tolist() == [0b100, 0b101, 0b001, 0b011]
    assert rs.names == ["big", "huge", "night"] and rs.version == "t1"


@pytest.mark.parametrize("expr, message", [
    ("amount > limit", "unknown name 'limit'"),
    ("__import__('os').system('true')", "Call is not allowed"),
    ("amount.real > 1", "Attribute is not allowed"),
    ("amount > 'x'", "only numbers are allowed"),
    ("amount >", "cannot parse"),
    ("terminal in (1, card)", "`in` lists may hold numbers only"),
    ("terminal in ()", "non-empty list"),
    ("amount if amount else 1", "IfExp is not allowed"),
    ("[x for x in amount]", "ListComp is not allowed"),
    ("amount ** 2 > 1", "BinOp is not allowed"),
    ("amount is 1", "operator Is is not allowed"),
    ("terminal - 1000000 < 0", "terminal is an identifier: compare it"),  # uint64: it would wrap
    ("-card > 0", "card is an identifier"),
    ("tx_id * 2 > 10", "tx_id is an identifier"),
    ("card % amount == 0", "card is an identifier"),
    ("card % 0 == 0", "card is an identifier"),
    ("1 + terminal > 2", "terminal is an identifier"),
    # Numbers numpy cannot put next to a 64-bit column: these loaded, and then every batch of a
    # deployed mesh was answered INTERNAL (OverflowError), or loading died with a traceback.
    ("ts_ms + 100000000000000000000 > 0", "a whole number in it is too large for the 64-bit column it meets"),
    ("ts_ms - 10000000000000000000 > 0", "a whole number in it is too large for the 64-bit column it meets"),
    ("terminal in (9002, 184467440737095516160)", "184467440737095516160 is too large: whole numbers in `in` lists"),
])
def test_bad_expressions_are_named_at_load(expr, message):
    with pytest.raises(RulesError, match="rule 'bad'") as e:
        rules(("bad", expr, "review"))
    assert message in str(e.value)


@pytest.mark.parametrize("expr, part, column", [
    ("amount * 2", "amount * 2", 1),
    ("amount", "amount", 1),
    ("1", "1", 1),
    ("hour", "hour", 1),  # hours 1 to 23 fired, hour 0 did not
    ("is_night == 1 and amount", "amount", 19),
    ("amount > 1000 or not hour - 12", "hour - 12", 22),
    ("-is_night", "-is_night", 1),
    ("(amount > 5) * amount", "(amount > 5) * amount", 1),
])
def test_a_when_that_is_not_a_condition_is_refused_at_load(expr, part, column):
    """`amount * 2` loaded (a deploy took it too) and then fired on every transaction of a non-zero
    amount: numpy took the number for a truth value."""
    with pytest.raises(RulesError) as e:
        rules(("bad", expr, "review"))
    assert str(e.value) == (f"rules: rule 'bad' at column {column}: {part!r} is not a condition (it would fire "
                            f"wherever it is not 0): compare it, as in amount * 2 > 100, or use and / or / not "
                            f"on comparisons or on the 0/1 features is_night, is_weekend")


@pytest.mark.parametrize("expr, expected", [
    ("is_night", [1, 1, 0, 0]),
    ("not is_night", [0, 0, 1, 1]),
    ("is_night and amount > 500", [0, 1, 0, 0]),
    ("not is_night and amount > 2000", [0, 0, 0, 1]),
    ("(amount > 500) * (is_night == 1)", [0, 1, 0, 0]),  # conditions multiplied: and (it loaded before)
    ("(amount > 2000) + is_night", [1, 1, 0, 1]),  # added: or
])
def test_a_0_1_feature_alone_is_a_condition(expr, expected):
    assert rules(("r", expr, "review")).evaluate(ENV, 4)[1].tolist() == expected


def test_the_0_1_features_rules_take_as_conditions_are_0_or_1():
    from zfraud import _features
    from zfraud.rules import FLAGS

    ts = np.arange(0, 14 * 86_400_000, 600_000, dtype=np.int64)  # two weeks, every 10 minutes
    out = np.empty((len(ts), len(_features.BASIC_NAMES)), dtype=np.float32)
    _features.basic_features(ts, np.full(len(ts), 10.0), out)
    for name in FLAGS:
        assert set(out[:, _features.BASIC_NAMES.index(name)].tolist()) == {0.0, 1.0}, name


@pytest.mark.parametrize("expr, where", [
    ("amount >", "at the end (column 9)"),
    ("amount > 1 and", "at the end (column 15)"),
    ("amount 5", "at column 8"),
])
def test_a_when_that_cannot_be_parsed_says_where(expr, where):
    """An error at the end of the expression said "at column 0"."""
    with pytest.raises(RulesError) as e:
        rules(("bad", expr, "review"))
    assert str(e.value) == f"rules: rule 'bad': cannot parse {expr!r}: invalid syntax {where}"


@pytest.mark.parametrize("toml, message", [
    ('[[rule]]\nname = "a"\nwhen = "amount > 1"\naction = "block"\n', "action 'block'"),
    ('[[rule]]\nwhen = "amount > 1"\naction = "review"\n', "needs a name"),
    ('[[rule]]\nname = "a"\naction = "review"\n', "needs a `when`"),
    ('[[rule]]\nname = "a"\nwhen = "amount > 1"\naction = "review"\nwhem = 1\n', "unknown keys ['whem']"),
    ('[[rule]]\nname = "a"\nwhen = "amount > 1"\naction = "review"\n' * 2, "used twice"),
    ("version = ", "not valid TOML"),
])
def test_bad_rule_files(toml, message):
    with pytest.raises(RulesError, match=None) as e:
        RuleSet.from_toml(toml, NAMES)
    assert message in str(e.value)


def test_the_example_rule_file_loads():
    rs = RuleSet.load("conf/rules.toml", NAMES)
    assert rs.names == ["very_large_amount", "large_at_night", "blocked_terminals"]


def test_rules_change_decisions_in_the_scorer():
    b = next(synthetic(1000, batch=1000, seed=4))
    b["terminal"][:10] = 9001
    rs = RuleSet.load("conf/rules.toml", NAMES)
    v, _ = Scorer(load_model(), rules=rs).score(b)
    plain, _ = Scorer(load_model()).score(b)
    assert (v["decision"][:10] == P.DECLINE).all()
    assert (v["rules"][:10] & np.uint64(0b100) != 0).all()
    np.testing.assert_array_equal(v["score"], plain["score"])  # rules never change the score
    rest = slice(10, None)
    assert (v["decision"][rest] >= plain["decision"][rest]).all()


def test_an_old_rules_file_with_a_reason_starts_a_worker_whose_rule_verdicts_name_the_rule(tmp_path):
    """conf/rules.toml gave each rule a `reason` that nothing read; the field is gone. A file that
    still has the key must load, with the key ignored (refusing it would stop a worker at its next
    start), and a row its rule declines goes out naming the rule in `fired`, with the model's
    reason, not the rule's text (a reason, PROTOCOL §5.4, is the model's top feature)."""
    rule = 'version = "r-1"\n[[rule]]\nname = "blocked"\nwhen = "terminal == 9001"\naction = "decline"\n'
    old = rule + 'reason = "terminal on the blocklist"\n'
    with_key, without = RuleSet.from_toml(old, NAMES), RuleSet.from_toml(rule, NAMES)
    assert [(r.name, r.when, r.action) for r in with_key.rules] == [(r.name, r.when, r.action) for r in without.rules]
    assert [a.tolist() for a in with_key.evaluate(ENV, 4)] == [a.tolist() for a in without.evaluate(ENV, 4)]
    path = tmp_path / "old.toml"
    path.write_text(old)
    b = next(synthetic(4, batch=4, seed=4))
    b["terminal"][0] = 9001
    plain = Scorer(load_model())
    expected, _ = plain.score(b)
    with LocalMesh(1, extra_args=["--rules", str(path)], log_dir=str(tmp_path)) as mesh, Client(mesh.endpoint) as c:
        v = c.score(b)
    assert v["decision"][0] == P.DECLINE and expected["decision"][0] != P.DECLINE
    assert v["fired"].tolist() == [("blocked",), (), (), ()]
    models = P.reason_texts(expected["reason"], {"reasons": plain.reasons}).tolist()  # the model's, every row
    assert v["reason"].tolist() == models and models[0] in NAMES, (v["reason"], models)
    # and the example file promises no reason text
    with open("conf/rules.toml", "rb") as f:
        assert [sorted(r) for r in tomllib.load(f)["rule"]] == [["action", "name", "when"]] * 3


def test_a_worker_refuses_a_rule_it_could_not_evaluate_in_one_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[rule]]\nname = "over"\nwhen = "ts_ms + 100000000000000000000 > 0"\naction = "review"\n')
    r = run_cli("worker", "--rules", str(bad), "--bind", "tcp://127.0.0.1:0", "--name", "w", timeout=30)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines() == [
        f"Error: {bad}: rule 'over': a whole number in it is too large for the 64-bit column it meets"], r.stderr


def test_deploy_names_a_bad_rule_before_it_connects(tmp_path):
    """Nothing listens at the endpoint: the rule's error is what deploy says, not the mesh's."""
    bad = tmp_path / "bad.toml"
    bad.write_text('[[rule]]\nname = "ids"\nwhen = "terminal in (9002, 184467440737095516160)"\naction = "review"\n')
    r = run_cli("deploy", "--rules", str(bad), "--connect", "tcp://127.0.0.1:9", timeout=30)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines() == [
        f"Error: {bad}: rule 'ids' at column 20: 184467440737095516160 is too large: whole numbers in `in` lists "
        "go up to 2**64 - 1, the largest id"], r.stderr


# --- `in` compares each number as `==` does -----------------------------------------------------

F32 = {"amount": np.array([0.1, 250.3, 250.0, 16777217.0], dtype=np.float32),
       "card": np.array([12345678901234567, 12345678901234568, 2**64 - 1, 6], dtype=np.uint64)}


@pytest.mark.parametrize("expr, expected", [
    # amount is a float32 feature in a worker; the list was compared in float64 and never matched it
    ("amount in (0.1, 250.3)", [1, 1, 0, 0]),
    ("amount in [16777217, 7]", [0, 0, 0, 1]),  # float32(16777217) == 16777216, as == has it
    ("amount not in (250.3,)", [1, 0, 1, 1]),
    # one negative or fractional number turned the whole list to float64, where
    # 12345678901234568 == 12345678901234567
    ("card in (12345678901234567, -1)", [1, 0, 0, 0]),
    ("card in (12345678901234567, 0.5)", [1, 0, 0, 0]),
    ("card in (18446744073709551615, -5, 6)", [0, 0, 1, 1]),
    ("card % 4 in (3, -1, 2.0)", [1, 0, 1, 1]),
])
def test_in_lists_compare_each_number_as_eq_does(expr, expected):
    op = " not in " if " not in " in expr else " in "
    left, values = expr.split(op)
    eq = " or ".join(f"{left} == {v.strip()}" for v in values.strip("()[]").split(",") if v.strip())
    eq = f"not ({eq})" if op == " not in " else eq
    rs = rules(("in", expr, "review"), ("eq", eq, "review"))
    _, fired = rs.evaluate(F32, 4)
    assert [int(m & 1) for m in fired.tolist()] == expected
    assert [int(m >> 1) for m in fired.tolist()] == expected  # the same rows as the == form


def test_in_list_whole_numbers_below_the_smallest_int64_are_refused():
    with pytest.raises(RulesError) as e:
        rules(("bad", "ts_ms in (1, -9223372036854775809)", "review"))
    assert str(e.value) == ("rules: rule 'bad' at column 14: -9223372036854775809 is too small: whole numbers "
                            "in `in` lists go down to -2**63")


# --- limits on what travels in every verdict header ---------------------------------------------

NAME_LIMIT = "a rule name is 1 to 64 characters of A-Z a-z 0-9 _ . -"
VERSION_LIMIT = "a rules version is 1 to 128 printable characters (no newline or control characters)"


def one_rule(name="r", version="v", when="amount > 1"):
    return f'version = "{version}"\n[[rule]]\nname = "{name}"\nwhen = "{when}"\naction = "review"\n'


@pytest.mark.parametrize("toml, message", [
    (one_rule(name="r" + "n" * 2000), f"rules: rule #1 name 'rnnnnnnnnnnnnnnnnnnn'... is 2001 characters; {NAME_LIMIT}"),
    (one_rule(name="x" * 65), f"rules: rule #1 name 'xxxxxxxxxxxxxxxxxxxx'... is 65 characters; {NAME_LIMIT}"),
    (one_rule(name="large at night"), f"rules: rule #1 name 'large at night' has the character ' '; {NAME_LIMIT}"),
    (one_rule(name="a,b"), f"rules: rule #1 name 'a,b' has the character ','; {NAME_LIMIT}"),
    (one_rule(version="evil\\nworker2      model=fake"),
     f"rules: version 'evil\\nworker2      mo'... has the character '\\n'; {VERSION_LIMIT}"),
    (one_rule(version="x" * 100_000), f"rules: version 'xxxxxxxxxxxxxxxxxxxx'... is 100000 characters; {VERSION_LIMIT}"),
    (one_rule(version="a\\u0007b"), f"rules: version 'a\\x07b' has the character '\\x07'; {VERSION_LIMIT}"),
    (one_rule(version=""), f"rules: version is empty; {VERSION_LIMIT}"),
], ids=["name-2001", "name-65", "name-space", "name-comma", "version-newline", "version-100000", "version-bel",
        "version-empty"])
def test_rule_names_and_the_version_are_limited_at_load(toml, message):
    with pytest.raises(RulesError) as e:
        RuleSet.from_toml(toml, NAMES)
    assert str(e.value) == message


def test_the_largest_rule_set_allowed_fits_well_inside_a_verdict_header():
    """64 names of 64 characters and a version of 128 four-byte characters: the verdict header the
    worker builds stays under an eighth of the 65 536 bytes a client accepts."""
    body = "".join(f'[[rule]]\nname = "{i:02d}{"n" * 62}"\nwhen = "amount > {i}"\naction = "review"\n' for i in range(64))
    card = "\U0001F4B3"  # four bytes in UTF-8
    rs = RuleSet.from_toml(f'version = "{card * 128}"\n' + body, NAMES)
    assert len(rs.names) == 64 and {len(n) for n in rs.names} == {64} and len(rs.version) == 128
    scorer = Scorer(load_model(), rules=rs)
    header = P.HeaderPrefix({"worker": "w" * 64, "boot": 2**48 - 1, "model": scorer.model_version,
                             "rules": scorer.rules_version, "reasons": scorer.reasons, "rule_names": rs.names,
                             "columns": P.schema(P.VERDICT_COLUMNS)}).pack({"batch": 2**64 - 1, "attempt": 1000,
                                                                           "rows": P.MAX_ROWS, "seq": 2**63})
    assert len(header) < P.MAX_HEADER_BYTES // 8, len(header)
    assert P.unpack(header)["rule_names"] == rs.names


# --- unknown top-level keys, deep expressions, files that are not UTF-8 -------------------------

@pytest.mark.parametrize("toml, key", [
    ('version = "typo"\n[[rules]]\nname = "b"\nwhen = "terminal in (9001, 9002)"\naction = "decline"\n', "rules"),
    ('versoin = "x"\n', "versoin"),
    ('version = "x"\nname = "a"\n[[rule]]\nname = "r"\nwhen = "amount > 1"\naction = "review"\n', "name"),
], ids=["rules-table", "versoin", "stray-name"])
def test_unknown_top_level_keys_are_refused(toml, key):
    with pytest.raises(RulesError) as e:
        RuleSet.from_toml(toml, NAMES)
    assert str(e.value) == f"rules: unknown top-level keys [{key!r}]; known: version, rule (each rule a [[rule]] table)"


TOO_DEEP = "expression too long or too deeply nested (limit 100 levels; a + b + c nests one level per operator)"


@pytest.mark.parametrize("when", [
    " + ".join(["amount"] * 1500) + " > 0",
    "-" * 5000 + "amount > 0",
    "not " * 3000 + "amount > 0",
    " + ".join(["amount"] * 100) + " > 0",  # 101 levels: the comparison, 99 additions, a name
], ids=["1500-terms", "5000-minus", "3000-not", "100-terms"])
def test_a_too_deep_expression_is_one_error_not_a_recursion_error(when):
    with pytest.raises(RulesError) as e:
        rules(("deep", when, "review"))
    assert str(e.value) == f"rules: rule 'deep': {TOO_DEEP}"


def test_the_deepest_expression_allowed_loads_and_evaluates_far_down_the_stack():
    rs = rules(("deep", " + ".join(["amount"] * 99) + " > 1000", "review"))

    def down(k):  # a worker evaluates rules deeper in its stack than the check at load ran
        return down(k - 1) if k else rs.evaluate(ENV, 4)
    assert down(700)[1].tolist() == [0, 1, 1, 1]


def refused_by_worker_and_deploy(path, line: str) -> None:
    """`worker --rules PATH` and `deploy --rules PATH` both stop with status 1 and this one line."""
    for args in (("worker", "--rules", str(path), "--bind", "tcp://127.0.0.1:0", "--name", "w"),
                 ("deploy", "--rules", str(path), "--connect", "tcp://127.0.0.1:9")):
        r = run_cli(*args, timeout=30)
        assert r.returncode == 1 and r.stderr.strip().splitlines() == [line], (args[0], r.stderr)


def test_a_worker_and_deploy_name_a_rules_file_that_is_not_utf8(tmp_path):
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(b'\xff\xfe version = "x"\n')
    refused_by_worker_and_deploy(bad, f"Error: {bad}: not UTF-8 text (byte 0xff at offset 0); save the rules "
                                      f"file as UTF-8")


def test_a_worker_and_deploy_refuse_long_rule_names_in_one_line(tmp_path):
    """The tester's file: 40 rules named with some 2000 characters each. Deployed, it made every verdict
    header too large for the clients, and every batch was dead-lettered."""
    long = tmp_path / "longnames.toml"
    long.write_text('version = "names"\n' + "".join(
        f'[[rule]]\nname = "r{i}{"n" * 2000}"\nwhen = "amount > 1e9"\naction = "review"\n' for i in range(40)))
    refused_by_worker_and_deploy(long, f"Error: {long}: rule #1 name 'r0nnnnnnnnnnnnnnnnnn'... is 2002 characters; "
                                       f"{NAME_LIMIT}")


def mesh_versions(endpoint):
    with Client(endpoint) as c:
        return {n: c.control(n, "status")["status"]["rules"] for n in c.members}


@pytest.mark.parametrize("payload, message", [
    ('version = "names"\n' + "".join(f'[[rule]]\nname = "r{i}{"n" * 2000}"\nwhen = "amount > 1e9"\n'
                                      f'action = "review"\n' for i in range(40)),
     f"rule #1 name 'r0nnnnnnnnnnnnnnnnnn'... is 2002 characters; {NAME_LIMIT}"),
    (one_rule(version="x" * 100_000), f"version 'xxxxxxxxxxxxxxxxxxxx'... is 100000 characters; {VERSION_LIMIT}"),
    (one_rule(version="v\\nw2  rules=fake"), f"version 'v\\nw2  rules=fake' has the character '\\n'; {VERSION_LIMIT}"),
    ('version = "typo"\n[[rules]]\nname = "b"\nwhen = "terminal in (9001,)"\naction = "decline"\n',
     "unknown top-level keys ['rules']; known: version, rule (each rule a [[rule]] table)"),
    (one_rule(name="deep", when="-" * 5000 + "amount > 0"), f"rule 'deep': {TOO_DEEP}"),
    (b'\xff\xfe version = "x"\n', "not UTF-8 text (byte 0xff at offset 0); save the rules file as UTF-8"),
], ids=["long-names", "long-version", "version-newline", "rules-typo", "deep", "not-utf8"])
def test_workers_refuse_a_raw_deploy_of_rules_the_local_check_would_refuse(mesh2, ctx, payload, message):
    """A deploy that skips `zfraud deploy`'s local check: each worker checks the rules itself, says why
    in one line, and keeps scoring with what it ran."""
    before = mesh_versions(mesh2.endpoint)
    raw = payload if isinstance(payload, bytes) else payload.encode()
    for endpoint in mesh2.routers.values():  # each worker, not only the one a client asks first
        reply = request(ctx, endpoint, P.encode(P.CONTROL, {"op": "deploy"}, [b"", raw]))
        assert reply.command == P.ERROR and reply.header["code"] == P.BAD_CONTROL
        assert reply.header["message"] == f"deploy refused: deployed rules: {message}"
    assert mesh_versions(mesh2.endpoint) == before
    with Client(mesh2.endpoint) as c:
        v = c.score(next(synthetic(500, batch=500, seed=5)))
    assert len(v["decision"]) == 500
