"""The chapters' exercises and their automatic checks.

Each chapter ends with at least three exercises. A graded one gives the reader a
stub that raises ``NotImplementedError`` and a cell that runs ``check("3.1", answer)``:

- while the stub is untouched, `check` prints that the exercise is not attempted
  yet and returns False, so an unsolved exercise never breaks the chapter's
  own run (nor its nbval check);
- a correct answer prints what was checked and returns True;
- a wrong one raises `ExerciseFailed` (an ``AssertionError``) saying what
  differed and what to look at.

The checks compare the reader's answer with the package (the reference each
chapter built), on inputs the reader did not choose. Chapter ``NN``'s checks live
in ``minillm.exercises.chNN``, registered with `@exercise`; the worked solutions
are the notebooks in ``appendix/solutions/``, executed under nbval, so each
solution is proven to pass its own check.
"""

from __future__ import annotations

import dis
import importlib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

ID = re.compile(r"^(\d|[A-E])\.\d+$")


class ExerciseFailed(AssertionError):
    """The answer to an exercise is not right yet; the message says what differed."""


@dataclass(frozen=True)
class Exercise:
    """One graded exercise: its id ("3.1"), a short title, and the check of an answer."""

    id: str
    title: str
    grade: Callable[[Any], str]  # returns what was checked; raises ExerciseFailed or NotImplementedError


EXERCISES: dict[str, Exercise] = {}


def exercise(id: str, title: str) -> Callable[[Callable[[Any], str]], Callable[[Any], str]]:
    """Register the decorated function as the check of exercise `id` ("3.1": chapter 3, exercise 1)."""
    if not ID.match(id):
        raise ValueError(f"exercise ids look like '3.1' (chapter, then number) or 'A.2'; got {id!r}")

    def register(grade: Callable[[Any], str]) -> Callable[[Any], str]:
        EXERCISES[id] = Exercise(id, title, grade)
        return grade

    return register


def _module_of(id: str) -> str:
    chapter = id.split(".")[0]
    return f"minillm.exercises.ch{int(chapter):02d}" if chapter.isdigit() else f"minillm.exercises.{chapter.lower()}"


def get(id: str) -> Exercise:
    """The registered exercise `id`, importing its chapter's checks on first use."""
    if not isinstance(id, str) or not ID.match(id):
        raise ValueError(f"exercise ids look like '3.1'; got {id!r}")
    if id not in EXERCISES:
        try:
            importlib.import_module(_module_of(id))
        except ModuleNotFoundError as err:
            if err.name != _module_of(id):
                raise
    if id not in EXERCISES:
        raise KeyError(f"no exercise {id}; chapter {id.split('.')[0]} has "
                       f"{sorted(k for k in EXERCISES if k.split('.')[0] == id.split('.')[0]) or 'none'}")
    return EXERCISES[id]


def check(id: str, answer: Any) -> bool:
    """Check the reader's `answer` to exercise `id`: True if right, False if not attempted; raises if wrong.

    `answer` is whatever the exercise asks for (usually the function the reader
    wrote). An answer that is still the stub (it raises ``NotImplementedError``,
    or is ``...``) counts as not attempted.
    """
    ex = get(id)
    try:
        if answer is ...:
            raise NotImplementedError
        if answer is None or isinstance(answer, (bool, int, float, str, bytes)):
            raise ExerciseFailed(f"the answer is the function (or functions) the exercise asks for; "
                                 f"got {type(answer).__name__} {answer!r:.40}.")
        what = ex.grade(answer)
    except NotImplementedError:
        print(f"Exercise {id} ({ex.title}): not attempted yet. Replace the `raise NotImplementedError` "
              f"(or the `...`) above with your answer and run the cell again.")
        return False
    except ExerciseFailed as err:
        raise ExerciseFailed(f"Exercise {id} ({ex.title}): not right yet. {err}") from None
    print(f"Exercise {id} ({ex.title}): correct. {what}")
    return True


def assert_close(actual: Any, expected: Any, what: str, hint: str = "", **tolerances: float) -> None:
    """`torch.testing.assert_close`, raising `ExerciseFailed` that names `what` was compared (plus a hint)."""
    if not isinstance(actual, torch.Tensor) and isinstance(expected, torch.Tensor):
        raise ExerciseFailed(f"{what}: expected a torch.Tensor, got {type(actual).__name__}. {hint}".strip())
    try:
        torch.testing.assert_close(actual, expected, **tolerances)
    except AssertionError as err:
        first = str(err).strip().splitlines()
        raise ExerciseFailed(f"{what} differs from the reference: {' '.join(first[:4])} {hint}".strip()) from None


def expect(condition: bool, message: str) -> None:
    """Raise `ExerciseFailed(message)` unless `condition` holds (for checks that are not tensor comparisons)."""
    if not condition:
        raise ExerciseFailed(message)


def as_tensor(value: Any, what: str) -> torch.Tensor:
    """`value` if it is a tensor; else `ExerciseFailed` saying that `what` should have been one."""
    expect(isinstance(value, torch.Tensor), f"{what} should be a torch.Tensor, got {type(value).__name__}.")
    return value


def as_number(value: Any, what: str) -> float:
    """`value` (a number or a one-element tensor) as a finite float; else `ExerciseFailed` naming `what`."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ExerciseFailed(f"{what}: expected a number, got {type(value).__name__}") from None
    expect(math.isfinite(out), f"{what}: expected a finite number, got {out}")
    return out


def _stub(*args: Any, **kwargs: Any) -> Any:
    ...


def _instructions(fn: Callable[..., Any]) -> list[tuple[str, object]]:
    return [(i.opname, i.argval) for i in dis.get_instructions(fn) if i.opname not in ("RESUME", "NOP")]


def is_stub(fn: Any) -> bool:
    """Whether fn's body is only `...` (or `pass`, after an optional docstring): an exercise not started."""
    return getattr(fn, "__code__", None) is not None and _instructions(fn) == _instructions(_stub)


def call_answer(fn: Callable[..., Any], *args: Any, what: str, hint: str = "") -> Any:
    """The reader's fn(*args): a stub is not attempted (NotImplementedError); any other error becomes
    ExerciseFailed, saying what was called (and `hint`)."""
    if is_stub(fn):
        raise NotImplementedError
    try:
        return fn(*args)
    except (NotImplementedError, ExerciseFailed):
        raise
    except Exception as err:  # noqa: BLE001 - the reader's code may raise anything
        raise ExerciseFailed(f"{what} raised {type(err).__name__}: {err}. {hint}".strip()) from None
