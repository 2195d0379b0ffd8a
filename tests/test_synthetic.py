"""Generated function-writing tasks (`minillm.synthetic.code_tasks`): each canonical body passes its own
tests, wrong bodies fail them, held-out sets never repeat a training prompt."""

from __future__ import annotations

import ast
import re

import pytest

from minillm.errors import DataError
from minillm.synthetic import code_tasks


def _passes(row: dict, body: str) -> bool:
    scope: dict = {}
    try:
        exec(row["prompt"] + body + "\n" + row["test"] + f"\ncheck({row['entry_point']})\n", scope)
    except AssertionError:
        return False
    return True


def test_every_canonical_body_passes_its_tests_and_the_prompt_is_a_docstring_function():
    rows = code_tasks(300, seed=1)
    assert len({r["prompt"] for r in rows}) == 300
    for row in rows:
        tree = ast.parse(row["prompt"] + row["canonical_solution"])
        fn = tree.body[0]
        assert isinstance(fn, ast.FunctionDef) and fn.name == row["entry_point"]
        assert ast.get_docstring(fn).startswith("Return ")
        assert row["prompt"].endswith('"""') and row["test"].count("assert candidate(") == 4
        assert _passes(row, row["canonical_solution"]), row


def test_the_expected_values_follow_the_docstring_not_the_body():
    """For "plus k" and "items greater than k", recompute each assert from the docstring's words."""
    checked = 0
    for row in code_tasks(400, seed=2):
        doc = row["prompt"].split('"""')[1]
        plus, greater = re.fullmatch(r"Return \w+ plus (\d)\.", doc), re.fullmatch(r"Return the items of \w+ greater than (\d)\.", doc)
        for arg, want in re.findall(r"assert candidate\((.*)\) == (.*)\n", row["test"]):
            value = ast.literal_eval(arg)
            if plus:
                assert ast.literal_eval(want) == value + int(plus.group(1))
                checked += 1
            elif greater:
                assert ast.literal_eval(want) == [v for v in value if v > int(greater.group(1))]
                checked += 1
    assert checked > 40


@pytest.mark.parametrize("template, wrong", [
    ("add", "\n    return {a} + {k} + 1\n"),
    ("gt", "\n    return [x for x in {a} if x >= {k}]\n"),
    ("tail", "\n    return {a}[{k}:]\n"),
    ("upper", "\n    return {a}.lower()\n"),
])
def test_a_wrong_body_fails_its_tests(template, wrong):
    rows = code_tasks(4 if template == "upper" else 12, seed=3, templates=(template,))
    for row in rows:
        header = row["prompt"].split("\n")[0]
        arg = header[header.index("(") + 1 : header.index(")")]
        k = re.search(r"\d", row["prompt"].split('"""')[1])
        body = wrong.format(a=arg, k=k.group() if k else 0)
        assert not _passes(row, body), (row["prompt"], body)


def test_same_seed_same_rows_and_exclude_keeps_held_out_prompts_apart():
    assert code_tasks(50, seed=7) == code_tasks(50, seed=7)
    assert code_tasks(50, seed=7) != code_tasks(50, seed=8)
    train = code_tasks(300, seed=0)
    held_out = code_tasks(100, seed=1, exclude={r["prompt"] for r in train})
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in held_out}


def test_bad_settings_are_clear_errors():
    with pytest.raises(DataError, match="unknown templates"):
        code_tasks(3, templates=("nope",))
    with pytest.raises(DataError, match="n_tests"):
        code_tasks(3, n_tests=0)
    with pytest.raises(DataError, match="distinct tasks exist"):
        code_tasks(10, templates=("sum",))  # 4 argument names: 4 distinct prompts
    for bad in ({"n": 1.5}, {"n": "3"}, {"n": None}, {"n": 2, "n_tests": 2.5}):
        with pytest.raises(DataError, match="whole numbers"):
            code_tasks(**bad)
    with pytest.raises(DataError, match="only 532 distinct tasks exist"):
        code_tasks(10**9)  # at once: it once drew n * 100 times first
