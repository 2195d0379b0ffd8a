"""Generated instructions with checkable answers: what a small model can learn to follow (chapter 07).

The Alpaca-style set of chapter 07 (1,100 open-ended instructions) asks for
knowledge and fluency that a model of a million parameters trained for minutes
does not have, and its answers cannot be checked by a program. These tasks can:
each is an instruction about a short Python list of small integers, and the
answer is the Python literal a program computes, so exact match is the score.

    >>> list_tasks(1, seed=0)[0]
    {'instruction': 'Return the last item of the list.', 'input': '[0, 4, 8, 7, 6]', 'output': '6', 'task': 'last'}

`TASKS` maps each task name to its instruction and its answer function. The
rows are in the Alpaca format (`instruction`, `input`, `output`) that
`minillm.instruct.format_prompt` turns into a prompt.
"""

from __future__ import annotations

import random
from typing import Callable

from minillm.errors import DataError

#: task name -> (instruction, answer function of the list)
TASKS: dict[str, tuple[str, Callable[[list[int]], object]]] = {
    "sort": ("Sort the list.", sorted),
    "reverse": ("Reverse the list.", lambda xs: xs[::-1]),
    "max": ("Return the largest item of the list.", max),
    "min": ("Return the smallest item of the list.", min),
    "len": ("Return the number of items in the list.", len),
    "first": ("Return the first item of the list.", lambda xs: xs[0]),
    "last": ("Return the last item of the list.", lambda xs: xs[-1]),
    "sum": ("Return the sum of the list.", sum),
}


def list_tasks(n: int, seed: int = 0, tasks: tuple[str, ...] | None = None, min_len: int = 2,
               max_len: int = 6, max_value: int = 9, exclude: set[str] | None = None) -> list[dict]:  # fmt: skip
    """`n` instruction rows, tasks and lists drawn with `seed` (reproducible).

    Lists have `min_len`..`max_len` integers in 0..`max_value`. `exclude`: prompts
    (instruction + input) that must not appear, e.g. a training set's, so that a
    held-out set never repeats a training example.
    """
    names = tuple(tasks or TASKS)
    unknown = [t for t in names if t not in TASKS]
    if unknown:
        raise DataError(f"unknown tasks {unknown}; choose from {sorted(TASKS)}")
    if not 1 <= min_len <= max_len or max_value < 0 or n < 0:
        raise DataError(f"need n >= 0, 1 <= min_len <= max_len and max_value >= 0; got n={n}, "
                        f"min_len={min_len}, max_len={max_len}, max_value={max_value}")  # fmt: skip
    rng, rows, seen = random.Random(seed), [], set(exclude or ())
    for _ in range(n * 100):
        if len(rows) == n:
            break
        task = rng.choice(names)
        xs = [rng.randint(0, max_value) for _ in range(rng.randint(min_len, max_len))]
        instruction, answer = TASKS[task]
        key = f"{instruction}\n{xs}"
        if key in seen:
            continue
        seen.add(key)
        rows.append({"instruction": instruction, "input": str(xs), "output": str(answer(xs)), "task": task})
    if len(rows) < n:
        raise DataError(f"only {len(rows)} distinct examples exist for these settings, {n} were asked for")
    return rows


def prompt_key(row: dict) -> str:
    """The identity of a row's question (instruction + input), for `list_tasks(exclude=...)`."""
    return f"{row['instruction']}\n{row['input']}"


# Function-writing tasks (appendix D): a docstring in the standard library's style, a body
# of one line, and tests. Each template: function-name stem, docstring, body, argument kind,
# and the answer as a Python function (the tests are computed from it, not from the body).
_ARGS = {"int": ("n", "x", "value", "number"), "list": ("xs", "items", "values", "numbers"),
         "str": ("s", "text", "word", "name")}  # fmt: skip
_CODE_TEMPLATES: dict[str, tuple[str, str, str, str, Callable[[object, int], object]]] = {
    "add": ("add_{k}", "Return {a} plus {k}.", "return {a} + {k}", "int", lambda v, k: v + k),
    "sub": ("subtract_{k}", "Return {a} minus {k}.", "return {a} - {k}", "int", lambda v, k: v - k),
    "mul": ("times_{k}", "Return {a} times {k}.", "return {a} * {k}", "int", lambda v, k: v * k),
    "mod": ("mod_{k}", "Return the remainder of {a} divided by {k}.", "return {a} % {k}", "int", lambda v, k: v % k),
    "div": ("divisible_by_{k}", "Return True if {a} is divisible by {k}.", "return {a} % {k} == 0", "int",
            lambda v, k: v % k == 0),
    "gt": ("greater_than_{k}", "Return the items of {a} greater than {k}.", "return [x for x in {a} if x > {k}]",
           "list", lambda v, k: [x for x in v if x > k]),
    "lt": ("less_than_{k}", "Return the items of {a} less than {k}.", "return [x for x in {a} if x < {k}]",
           "list", lambda v, k: [x for x in v if x < k]),
    "map_add": ("add_{k}_to_each", "Return a list with {k} added to each item of {a}.",
                "return [x + {k} for x in {a}]", "list", lambda v, k: [x + k for x in v]),
    "map_mul": ("scale_by_{k}", "Return a list with each item of {a} multiplied by {k}.",
                "return [x * {k} for x in {a}]", "list", lambda v, k: [x * k for x in v]),
    "count": ("count_{k}", "Return how many items of {a} are equal to {k}.", "return {a}.count({k})", "list",
              lambda v, k: v.count(k)),
    "head": ("first_{k}", "Return the first {k} items of {a}.", "return {a}[:{k}]", "list", lambda v, k: v[:k]),
    "tail": ("last_{k}", "Return the last {k} items of {a}.", "return {a}[-{k}:]", "list", lambda v, k: v[-k:]),
    "sum": ("total", "Return the sum of the items of {a}.", "return sum({a})", "list", lambda v, k: sum(v)),
    "max": ("largest", "Return the largest item of {a}.", "return max({a})", "list", lambda v, k: max(v)),
    "min": ("smallest", "Return the smallest item of {a}.", "return min({a})", "list", lambda v, k: min(v)),
    "sorted": ("sort_items", "Return the items of {a} in sorted order.", "return sorted({a})", "list",
               lambda v, k: sorted(v)),
    "reversed": ("reverse_items", "Return the items of {a} in reverse order.", "return {a}[::-1]", "list",
                 lambda v, k: v[::-1]),
    "upper": ("shout", "Return {a} in upper case.", "return {a}.upper()", "str", lambda v, k: v.upper()),
    "words": ("split_words", "Return the list of words in {a}.", "return {a}.split()", "str", lambda v, k: v.split()),
    "repeat": ("repeat_{k}", "Return {a} repeated {k} times.", "return {a} * {k}", "str", lambda v, k: v * k),
    "prefix": ("starts_with_{c}", "Return True if {a} starts with '{c}'.", "return {a}.startswith('{c}')", "str",
               lambda v, k: v.startswith(chr(ord("a") + k))),
}
_WORDS = ("apple", "bird", "cat", "dog", "egg", "fish", "gate", "hat", "ink", "jam", "kite", "lamp")


def _code_input(kind: str, rng: random.Random, k: int, edge: bool) -> object:
    """A test input; `edge`: one that holds the constant itself (a list with k in it, a multiple of k),
    so that a body off at the boundary (`>=` for `>`) fails."""
    if kind == "int":
        return k * rng.randint(-3, 6) if edge else rng.randint(-20, 50)
    if kind == "list":
        xs = [rng.randint(0, 9) for _ in range(rng.randint(3, 7))]
        return xs[:-1] + [k] if edge else xs
    return " ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 3)))


def _code_prompt(template: str, k: int, arg: str) -> tuple[str, str]:
    """(function name, prompt) of a template with constant `k` and argument `arg`."""
    stem, doc, *_ = _CODE_TEMPLATES[template]
    c = chr(ord("a") + k)
    name = stem.format(k=k, c=c)
    return name, f'def {name}({arg}):\n    """{doc.format(a=arg, k=k, c=c)}"""'


def code_tasks(n: int, seed: int = 0, templates: tuple[str, ...] | None = None, n_tests: int = 4,
               exclude: set[str] | None = None) -> list[dict]:  # fmt: skip
    """`n` generated function-writing tasks in HumanEval's format, drawn with `seed` (reproducible).

    Each row: ``task_id`` ("synthetic/<i>"), ``prompt`` (the `def` line and a
    one-line docstring, ending at the closing quotes as `minillm.skills`'
    prompts do), ``canonical_solution`` (the body: one ``return`` line),
    ``entry_point``, ``test`` (a ``check(candidate)`` function with `n_tests`
    asserts whose expected values come from each template's answer function;
    the first input holds the constant, a boundary case)
    and ``template``. The constant (1-9), the argument's name and the inputs
    vary, so a held-out set (`exclude`: the training rows' prompts) asks for
    combinations never seen in training.

        >>> print(code_tasks(1, seed=3)[0]["prompt"])
        def add_9_to_each(items):
            \"\"\"Return a list with 9 added to each item of items.\"\"\"
    """
    names = tuple(templates or _CODE_TEMPLATES)
    unknown = [t for t in names if t not in _CODE_TEMPLATES]
    if unknown:
        raise DataError(f"unknown templates {unknown}; choose from {sorted(_CODE_TEMPLATES)}")
    if any(isinstance(v, bool) or not isinstance(v, int) for v in (n, n_tests)) or n < 0 or n_tests < 1:
        raise DataError(f"need whole numbers n >= 0 and n_tests >= 1; got n={n!r}, n_tests={n_tests!r}")
    rng, rows, seen = random.Random(seed), [], set(exclude or ())
    possible = {_code_prompt(t, k, a)[1] for t in names for k in range(1, 10) for a in _ARGS[_CODE_TEMPLATES[t][3]]}
    if n > len(possible - seen):  # at once, not after n * 100 draws
        raise DataError(f"only {len(possible - seen)} distinct tasks exist for these settings, {n} were asked for")
    for _ in range(n * 100):
        if len(rows) == n:
            break
        template = rng.choice(names)
        stem, doc, body, kind, answer = _CODE_TEMPLATES[template]
        k, arg = rng.randint(1, 9), rng.choice(_ARGS[kind])
        c = chr(ord("a") + k)
        name, prompt = _code_prompt(template, k, arg)
        if prompt in seen:
            continue
        seen.add(prompt)
        inputs = [_code_input(kind, rng, k, edge=i == 0) for i in range(n_tests)]
        asserts = "".join(f"    assert candidate({v!r}) == {answer(v, k)!r}\n" for v in inputs)
        rows.append({"task_id": f"synthetic/{len(rows)}", "prompt": prompt, "entry_point": name,
                     "canonical_solution": "\n    " + body.format(a=arg, k=k, c=c) + "\n",
                     "test": f"def check(candidate):\n{asserts}", "template": template})  # fmt: skip
    if len(rows) < n:
        raise DataError(f"only {len(rows)} distinct tasks exist for these settings, {n} were asked for")
    return rows
