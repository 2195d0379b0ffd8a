"""The chapters' exercises: the check's three outcomes, and every chapter's exercises in place.

Each chapter (and each appendix with exercises, ``appendix/A_*.ipynb``) has at
least three exercises (a markdown heading "Exercise N.k", "Exercise A.k" in an
appendix), most of them graded by `minillm.exercises.check`; every graded
exercise is checked in its chapter (where the stub is left unsolved) and in the
chapter's solutions notebook (where it must pass: nbval runs it). That each
check rejects wrong answers is tested per chapter in
``tests/test_exercises_chNN.py`` (``tests/test_exercises_appa.py`` for appendix A).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from minillm import exercises
from minillm.exercises import ExerciseFailed, check

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = sorted(ROOT.glob("chapters/[0-9][0-9]_*.ipynb"))
APPENDICES = sorted(ROOT.glob("appendix/[A-E]_*.ipynb"))  # exercises "A.1", ... checked in minillm.exercises.a
HEADING = re.compile(r"^#+\s*Exercise ((?:\d+|[A-E])\.\d+)", re.M)
CHECK = re.compile(r"""check\(\s*["']((?:\d+|[A-E])\.\d+)["']""")


def chapter_of(notebook: Path) -> str:
    """The exercise ids' prefix of a chapter or appendix notebook: "3" for 03_attention, "A" for A_transformer_family."""
    prefix = notebook.name.split("_")[0]
    return str(int(prefix)) if prefix.isdigit() else prefix


def sources(notebook: Path, kind: str) -> str:
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    return "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == kind)


@pytest.fixture
def toy():
    """A registered toy exercise: write a function that doubles a tensor."""
    @exercises.exercise("9.9", "double it")
    def grade(answer):
        x = torch.arange(5.0)
        exercises.assert_close(answer(x), 2 * x, "double(arange(5))", hint="Multiply by two.")
        return "double(arange(5)) matches."

    yield "9.9"
    exercises.EXERCISES.pop("9.9")


def test_an_untouched_stub_is_not_attempted_and_does_not_raise(toy, capsys):
    def double(x):
        raise NotImplementedError

    assert check(toy, double) is False
    assert check(toy, ...) is False
    assert "not attempted yet" in capsys.readouterr().out


def test_a_right_answer_passes_and_a_wrong_one_says_what_differed(toy, capsys):
    assert check(toy, lambda x: x + x) is True
    assert "correct" in capsys.readouterr().out
    with pytest.raises(ExerciseFailed, match=r"Exercise 9.9 \(double it\): not right yet. double\(arange\(5\)\) "
                                             r"differs.*Multiply by two"):
        check(toy, lambda x: x * 3)
    with pytest.raises(ExerciseFailed, match="expected a torch.Tensor, got list"):
        check(toy, lambda x: [0.0] * 5)
    for not_a_function in (None, 3, "double"):
        with pytest.raises(ExerciseFailed, match="the answer is the function"):
            check(toy, not_a_function)


def test_unknown_and_malformed_ids_are_clear_errors():
    with pytest.raises(ValueError, match="ids look like"):
        check("three", ...)
    with pytest.raises(KeyError, match="no exercise 3.99"):
        check("3.99", ...)


def test_exercise_ids_of_chapters_and_appendices_are_recognized():
    assert HEADING.findall("### Exercise 3.1: x\n## Exercise A.12: y\nExercise 4.1 in prose") == ["3.1", "A.12"]
    assert CHECK.findall("check(\"A.3\", f)\ncheck( '10.2', g)\nassert check(\"x.1\", h)") == ["A.3", "10.2"]
    assert [chapter_of(Path(n)) for n in ("03_attention.ipynb", "A_transformer_family.ipynb")] == ["3", "A"]


def test_every_module_of_exercises_has_its_notebook():
    """minillm/exercises/chNN.py belongs to chapters/NN_*.ipynb, minillm/exercises/a.py to appendix/A_*.ipynb."""
    modules = sorted(p.stem for p in (ROOT / "minillm" / "exercises").glob("*.py") if p.stem != "__init__")
    notebooks = {exercises._module_of(f"{chapter_of(nb)}.1").rsplit(".", 1)[1]: nb for nb in CHAPTERS + APPENDICES}
    missing = [m for m in modules if m not in notebooks]
    assert not missing, f"exercise checks without their notebook (chapters/NN_*.ipynb or appendix/A_*.ipynb): {missing}"


@pytest.mark.parametrize("notebook", CHAPTERS + APPENDICES, ids=lambda p: p.stem)
def test_each_chapter_has_three_exercises_and_solutions_that_check_them(notebook):
    chapter = chapter_of(notebook)
    headings = HEADING.findall(sources(notebook, "markdown"))
    assert len(headings) >= 3, f"{notebook.name} has {len(headings)} exercises, wants at least 3"
    assert all(h.startswith(f"{chapter}.") for h in headings), headings
    graded = sorted(set(CHECK.findall(sources(notebook, "code"))))
    assert len(graded) * 2 > len(headings), f"most exercises are graded: {graded} of {headings}"
    for id in graded:
        assert id in headings and exercises.get(id)
    solutions = ROOT / "appendix" / "solutions" / notebook.name
    assert solutions.exists(), f"no solutions notebook {solutions.relative_to(ROOT)}"
    solved = sources(solutions, "code")
    assert sorted(set(CHECK.findall(solved))) == graded, "the solutions check every graded exercise"
    assert sorted(set(HEADING.findall(sources(solutions, "markdown")))) == sorted(set(headings))


@pytest.mark.parametrize("notebook", CHAPTERS + APPENDICES, ids=lambda p: p.stem)
def test_an_unsolved_exercise_is_not_attempted(notebook, capsys):
    """Every graded exercise of every notebook: a stub that raises NotImplementedError, as the exercise cells leave
    it, is "not attempted" (False, no exception); in the appendix a body of `...` after a docstring is too."""

    def raising(*args, **kwargs):
        raise NotImplementedError

    def dots(*args, **kwargs):
        """A body of `...`."""
        ...

    stubs = [raising] + ([dots] if notebook in APPENDICES else [])
    code = sources(notebook, "code")
    graded = sorted(set(CHECK.findall(code)))
    for id in graded:
        pair = re.search(rf"check\([\"']{re.escape(id)}[\"'],\s*\(([^)]*)\)", code)  # e.g. (split_heads, merge_heads)
        size = len(pair.group(1).split(",")) if pair else 0
        assert all(check(id, (stub,) * size if size else stub) is False for stub in stubs)
    assert capsys.readouterr().out.count("not attempted yet") == len(stubs) * len(graded)


def chapter_counts(notebook: Path) -> tuple[int, int, int]:
    """(diagrams embedded, exercises, graded exercises) of a chapter notebook."""
    diagrams = len(re.findall(r"!\[[^\]]*\]\(figures/[^)]+\.svg\)", sources(notebook, "markdown")))
    headings = set(HEADING.findall(sources(notebook, "markdown")))
    return diagrams, len(headings), len(set(CHECK.findall(sources(notebook, "code"))) & headings)


def test_the_readme_table_counts_each_chapters_diagrams_and_exercises():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for notebook in CHAPTERS:
        row = next((line for line in readme.splitlines() if f"(chapters/{notebook.name})" in line and
                    line.startswith("|")), None)
        assert row, f"README's chapter table has no row for {notebook.name}"
        d, e, g = chapter_counts(notebook)
        assert f"{d} diagrams, {e} exercises ({g} graded)" in row, f"{notebook.name}: {d}, {e}, {g} in {row[-120:]}"
