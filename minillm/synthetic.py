"""Generated instructions with checkable answers: what a small model can learn to follow (chapter 07).

The Alpaca-style set of chapter 07 (1,100 open-ended instructions) asks for
knowledge and fluency that a model of a million parameters trained for minutes
does not have, and its answers cannot be checked by a program. These tasks can:
each is an instruction about a short Python list of small integers, and the
answer is the Python literal a program computes, so exact match is the score.

    >>> list_tasks(1, seed=0)[0]
    {'instruction': 'Sort the list.', 'input': '[5, 0, 3]', 'output': '[0, 3, 5]', 'task': 'sort'}

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
