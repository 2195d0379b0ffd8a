"""Appendix D's exercises: pass@k, where a HumanEval completion ends, fill-in-the-middle, docstring-to-code pairs.

The checks compare the reader's function with the package on inputs the reader
did not choose: `minillm.codeeval.pass_at_k` (and, for n up to 12, a count of
every k-subset of the samples; n = 200 and 2000 where binomials or factorials
as floats overflow), `minillm.codeeval.truncate_completion` on completions that
end in every way HumanEval's rule knows, `minillm.codedata.fim_prompt` followed
by the middle (and `from_fim` on the reader's text) for fill-in-the-middle, and
the `CodePair` of `minillm.codedata.documented_functions` for a module's one
documented function. The sandbox exercise (D.5) is open. The random cases come
from private generators: the reader's random state is left alone.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable

from minillm.codedata import FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX, documented_functions, fim_prompt, fim_split, from_fim
from minillm.codeeval import pass_at_k, truncate_completion
from minillm.errors import DataError
from minillm.exercises import ExerciseFailed, as_number, call_answer, exercise, expect


def _show(text: str, limit: int = 400) -> str:
    """`text` as a repr, cut to about `limit` characters (the start and the end kept)."""
    shown = repr(text)
    return shown if len(shown) <= limit else f"{shown[: limit // 2]} ... {shown[-limit // 2 :]}"


def _first_difference(got: str, expected: str) -> str:
    """Where two strings first differ, with a little context of each."""
    i = next((j for j, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))
    lo = max(0, i - 20)
    return (f"they first differ at character {i}: yours has {got[lo : i + 30]!r} there, the package "
            f"{expected[lo : i + 30]!r}")  # fmt: skip


# -- D.1: pass@k without bias and without overflow ------------------------------------------------


def _by_enumeration(n: int, c: int, k: int) -> tuple[int, int]:
    """(k-subsets of n samples, the first c of which passed, that hold a passing sample; all k-subsets)."""
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(i < c for i in s) for s in subsets), len(subsets)


def _pass_cases() -> list[tuple[int, int, int]]:
    """(n, c, k): every case with n <= 6, some drawn with n <= 12, then n = 200 and n = 2000."""
    rng = random.Random(401)
    cases = [(10, 3, 1), (10, 3, 2), (10, 3, 5)]  # the typical ones first
    cases += [(n, c, k) for n in range(1, 7) for c in range(n + 1) for k in range(1, n + 1)]
    for _ in range(12):
        n = rng.randint(7, 12)
        cases.append((n, rng.randint(0, n), rng.randint(1, n)))
    cases += [(200, 1, 1), (200, 0, 100), (200, 150, 100), (200, 100, 100), (200, 10, 100), (200, 3, 100),
              (200, 37, 10), (2000, 5, 1000), (2000, 1, 1)]  # fmt: skip
    for _ in range(6):
        n = rng.randint(20, 400)
        cases.append((n, rng.randint(0, n // 4), rng.randint(1, n)))
    return cases


@exercise("D.1", "pass@k without bias and without overflow")
def grade_pass_at_k(answer: Callable[[int, int, int], float]) -> str:
    """answer(n, c, k) -> float: 1 - C(n - c, k) / C(n, k), as `minillm.codeeval.pass_at_k`."""
    rule = ("pass@k = 1 - C(n - c, k) / C(n, k): one minus the share of the C(n, k) ways to choose k of the n samples "
            "that hold no passing one (there are C(n - c, k) of those; when n - c < k there are none and pass@k = 1). "
            "For large n write the ratio as a product, 1 - prod over i from n - c + 1 to n of (1 - k / i), or divide "
            "the exact integers of math.comb.")
    cases = _pass_cases()
    overflow = ("For n = 200 or 2000 the factorials (and C(2000, 1000) ~ 2e600) are far beyond a float's largest "
                "number, 1.8e308: compute the ratio as the product 1 - prod_{i=n-c+1}^{n} (1 - k/i), or divide the "
                "exact integers of math.comb (Python divides two ints correctly however large). ")
    small = 0
    for n, c, k in cases:
        what = f"n = {n} samples, c = {c} passed, k = {k}"
        if n >= 200:
            if_raises = overflow
        elif n - c < k:
            if_raises = ("When n - c < k every choice of k samples holds a passing one: pass@k = 1 (and "
                         "math.comb(n - c, k) is 0 there). ")
        else:
            if_raises = ""
        raw = call_answer(answer, n, c, k, what=f"your my_pass_at_k({n}, {c}, {k})", hint=if_raises)
        try:
            if isinstance(raw, (str, bytes, bool)):
                raise TypeError
            value = float(raw)
        except (TypeError, ValueError):
            raise ExerciseFailed(f"{what}: my_pass_at_k returned {type(raw).__name__} {raw!r:.60}; return a "
                                 "float.") from None  # fmt: skip
        if not math.isfinite(value):
            raise ExerciseFailed(f"{what}: your pass@k is {value}. {overflow}{rule}")
        got = as_number(value, f"my_pass_at_k({n}, {c}, {k})")
        expected = pass_at_k(n, c, k)
        counted = ""
        if n <= 12:
            hit, total = _by_enumeration(n, c, k)
            assert math.isclose(hit / total, expected, abs_tol=1e-12), (n, c, k)  # the reference itself
            counted = f" (of the C({n}, {k}) = {total} ways to choose k of the n samples, {hit} hold a passing one)"
            small += 1
        if math.isclose(got, expected, rel_tol=1e-9, abs_tol=1e-9):
            continue
        biased = 1 - (1 - c / n) ** k
        candidates = [
            (biased, "That is 1 - (1 - c/n)^k, the chance of a pass in k draws *with replacement* from the n "
             "samples: it may draw the same sample twice, so it comes out lower than pass@k (the bias that Chen et "
             "al.'s estimator removes). Choose k distinct samples of the n: C(n - c, k) / C(n, k) of the ways hold "
             "no passing one. "),
            (c / n, "c / n is pass@1; for k > 1 you need the chance that at least one of k samples passes. "),
            (1 - expected, "That is the chance that all k samples fail, C(n - c, k) / C(n, k): pass@k is one minus "
             "it. "),
            (1.0 if c > 0 else 0.0, "Did an integer division (//) round the ratio C(n - c, k) / C(n, k) down to 0? "
             "Divide with /. "),
            (1 - (n - c) / n, "The ratio C(n - c, k) / C(n, k) is not (n - c) / n: it has k factors. "),
        ]
        hint = next((h for v, h in candidates if math.isclose(got, v, rel_tol=1e-9, abs_tol=1e-12)), "")
        if not hint and n >= 200:
            hint = overflow
        raise ExerciseFailed(f"{what}: your pass@k is {got:.10g}, expected {expected:.10g}{counted}. {hint}{rule}")
    return (f"equals minillm.codeeval.pass_at_k in {len(cases)} cases, and a count of every k-subset in the {small} "
            "with n <= 12: c = 0, c = n, n - c < k, and n = 200 and 2000 with k up to 1000.")


# -- D.2: where a HumanEval completion ends -------------------------------------------------------

_TRUNCATE_RULE = ("The rule: split the completion into lines at each '\\n'; the first line that is not blank (it has "
                  "a character that is not whitespace) and starts at column 0 (its first character is not whitespace: "
                  "not a space, not a tab) ends the body; return everything before that line, so the body keeps its "
                  "last newline and any blank lines before the stop. Every line counts: the first, the last (with or "
                  "without a final newline), and lines inside a multi-line string (the rule reads text, not Python). "
                  "No such line: return the completion unchanged.")

_STOP_WORDS = ("\nclass", "\ndef", "\n#", "\n@", "\nprint", "\nif")  # Codex's and bigcode's stop sequences


def _truncate_cases() -> list[tuple[str, str]]:
    """(what, completion): the handwritten ones, then ones put together at random."""
    string_body = ('    def twice(y):\n        return 2 * y\n    text = """\nnot indented\n'
                   '    but inside a string\n"""\n    return twice(len(text))\n')  # fmt: skip
    cases = [
        ("a body followed by another def",
         "    return a + b\n\n\ndef main():\n    print(add(1, 2))\n"),
        ("a body followed by if __name__ == '__main__'",
         '    total = sum(xs)\n    return total / len(xs)\n\nif __name__ == "__main__":\n    main()\n'),
        ("a body followed by a print, with no final newline", "    return sorted(xs)\nprint(f([3, 1, 2]))"),
        ("a body followed by a class", "    return [x for x in xs if x]\n\nclass Stack:\n    pass\n"),
        ("a body followed by a comment at column 0", "    return n % 2 == 0\n# tests\nassert f(2)\n"),
        ("a body followed by an assert (no stop word: any line at column 0 ends the body)",
         "    return s[::-1]\n\nassert f('ab') == 'ba'\n"),
        ("a body followed by an assignment at column 0", "    return x * x\nresult = f(3)\n"),
        ("a body followed by a decorator", "    return 1\n\n@property\ndef g(self):\n    return 2\n"),
        ("blank lines and lines of only spaces inside the body (they do not end it)",
         "    a = 1\n\n    \n    b = 2\n  \n    return a + b\n\nx = 3\n"),
        ("a body indented with tabs (a tab is whitespace too)",
         "\tif x:\n\t\treturn 1\n\treturn 0\ndef g():\n\tpass\n"),
        ("nested defs and a multi-line string with a line at column 0 (the rule reads text: that line ends the body)",
         string_body),
        ("a body with a nested def and no stop at all (returned unchanged)",
         "    def inner(y):\n        return y + 1\n\n    return inner(x)\n"),
        ("a body with no stop and no final newline (returned unchanged)", "    return 42"),
        ("a body that ends in blank lines and no stop (returned unchanged)", "    return 42\n\n\n"),
        ("a completion whose first line is at column 0 (the whole completion goes)", "def other():\n    return 1\n"),
        ("a body followed by two stops (the first one cuts)", "    return 0\nprint(1)\ndef h():\n    pass\n"),
        ("a stop line right after the body, no blank line between", "    return x\nx = f(1)"),
        ("a body whose last line is only spaces, then a stop", "    return x\n    \nf(1)\n"),
        ("an empty completion", ""),
    ]
    rng = random.Random(402)
    body_lines = ["    x = 1", "    for i in range(n):", "        total += i", "    return total", "\tresult = []",
                  "        # a comment inside", "    if not xs:", "        return None", "    s = '''", "    '''",
                  "    return [y for y in ys]", "", "   ", "\t", "        "]  # fmt: skip
    stops = ["def g(x):", "class A:", "print(f(1))", "if __name__ == '__main__':", "# a comment", "assert f(0) == 0",
             "x = f(2)", "@decorator", "f(3)", "import os", "main()", "for i in range(3):"]  # fmt: skip
    after = ["    return x", "    pass", "", "print(2)", "\tpass"]
    for _ in range(16):
        lines = [rng.choice(body_lines) for _ in range(rng.randint(0, 6))]
        if rng.random() < 0.8:
            lines.append(rng.choice(stops))
            lines += [rng.choice(after) for _ in range(rng.randint(0, 3))]
        text = "\n".join(lines) + ("\n" if rng.random() < 0.7 else "")
        cases.append((f"a completion put together at random ({len(lines)} lines)", text))
    return cases


@exercise("D.2", "where a HumanEval completion ends")
def grade_truncate(answer: Callable[[str], str]) -> str:
    """answer(completion) -> str, as `minillm.codeeval.truncate_completion(completion, "humaneval")`."""
    cases = _truncate_cases()
    for what, completion in cases:
        got = call_answer(answer, completion, what=f"your my_truncate on {what} ({_show(completion, 200)})")
        expect(isinstance(got, str), f"{what}: my_truncate returned {type(got).__name__} {got!r:.60}; return the "
                                     "completion's kept part, a str.")
        expected = truncate_completion(completion, "humaneval")
        if got == expected:
            continue
        words = [i for i in (("\n" + completion).find(w) for w in _STOP_WORDS) if i >= 0]
        by_words = completion[: min(words)] if words else completion
        if expected == "" and completion.strip() and got != "":
            hint = ("The completion's first line counts too: HumanEval's prompt ends with a newline, so a completion "
                    "that starts at column 0 has left the function at once, and nothing of it is kept. ")
        elif got == by_words:
            hint = ("Not only def, class, if, print, # and @: any line that is not blank and starts at column 0 ends "
                    "the body (an assert, an assignment, a call, an import...). ")
        elif got and expected.startswith(got) and expected[len(got) :].strip() == "":
            hint = ("Keep what comes before the stop line exactly: the body's last newline and the blank lines "
                    "(or lines of spaces) before the stop are part of it (a blank line does not end the body). ")
        elif got.startswith(expected) and len(got) > len(expected):
            hint = "You kept the stop line (or what follows it): cut before it. "
        elif len(got) < len(expected):
            hint = "You cut too early: a blank line, or one that starts with a space or a tab, does not end the body. "
        else:
            hint = ""
        raise ExerciseFailed(f"on {what}: the completion {_show(completion)} should become {_show(expected)}, your "
                             f"my_truncate returned {_show(got)}. {hint}{_TRUNCATE_RULE}")
    return (f"equals minillm.codeeval.truncate_completion(completion, 'humaneval') on {len(cases)} completions: "
            "every kind of line at column 0, tabs, blank lines, a string with an unindented line, no stop at all.")


# -- D.3: a fill-in-the-middle example ------------------------------------------------------------

_SNIPPETS = [
    'def add(a, b):\n    """Return a + b."""\n    return a + b\n',
    "for i in range(10):\n    if i % 3 == 0:\n        print(i)\n",
    "import json\n\n\ndef load(path):\n    with open(path) as f:\n        return json.load(f)\n",
    'class Point:\n    def __init__(self, x, y):\n        self.x, self.y = x, y\n\n    def norm(self):\n'
    '        return (self.x ** 2 + self.y ** 2) ** 0.5\n',
]


def _fim_cases() -> list[tuple[str, str, str, str, str]]:
    """(what, prefix, middle, suffix, mode)."""
    rng = random.Random(403)
    s = _SNIPPETS[0]
    cases = [
        ("a function cut inside its body", s[:34], s[34:48], s[48:], mode) for mode in ("psm", "spm")
    ]
    cases += [
        ("an empty middle", s[:20], "", s[20:], "psm"),
        ("an empty middle", s[:20], "", s[20:], "spm"),
        ("an empty prefix", "", s[:15], s[15:], "spm"),
        ("an empty suffix", s[:30], s[30:], "", "psm"),
        ("an empty suffix", s[:30], s[30:], "", "spm"),
        ("the whole text in the middle", "", s, "", "psm"),
    ]
    for i in range(10):
        text = _SNIPPETS[i % len(_SNIPPETS)]
        prefix, middle, suffix = fim_split(text, rng)
        cases.append(("a random cut of a snippet", prefix, middle, suffix, ("psm", "spm")[i % 2]))
    return cases


@exercise("D.3", "a fill-in-the-middle example")
def grade_fim(answer: Callable[[str, str, str, str], str]) -> str:
    """answer(prefix, middle, suffix, mode) -> str: fim_prompt(prefix, suffix, mode) + middle; from_fim undoes it."""
    rule = (f"PSM: {FIM_PREFIX} + prefix + {FIM_SUFFIX} + suffix + {FIM_MIDDLE} + middle; SPM: {FIM_PREFIX} + "
            f"{FIM_SUFFIX} + suffix + {FIM_MIDDLE} + prefix + middle. Nothing between the pieces, nothing after the "
            "middle.")
    cases = _fim_cases()
    for what, prefix, middle, suffix, mode in cases:
        shown = f"{what} ({mode}: prefix {prefix!r:.60}, middle {middle!r:.60}, suffix {suffix!r:.60})"
        got = call_answer(answer, prefix, middle, suffix, mode, what=f"your my_fim on {shown}")
        expect(isinstance(got, str), f"{shown}: my_fim returned {type(got).__name__} {got!r:.60}; return the "
                                     "FIM text, a str.")
        expected = fim_prompt(prefix, suffix, mode) + middle
        assert from_fim(expected) == prefix + middle + suffix  # so a text equal to it round-trips too
        if got == expected:
            continue
        other = fim_prompt(prefix, suffix, "spm" if mode == "psm" else "psm") + middle
        hints = [
            (other, f"That is the other order: mode {mode!r} asked for {mode.upper()}, you wrote "
                    f"{'SPM' if mode == 'psm' else 'PSM'}. "),
            (f"{FIM_SUFFIX}{suffix}{FIM_PREFIX}{prefix}{FIM_MIDDLE}{middle}",
             f"The book's SPM (the paper's) still starts with {FIM_PREFIX}, at once followed by {FIM_SUFFIX} and the "
             f"suffix; prefix and middle come after {FIM_MIDDLE}, so that the prefix runs straight into the middle "
             "as in ordinary text. "),
            (f"{FIM_PREFIX}{prefix}{FIM_MIDDLE}{middle}{FIM_SUFFIX}{suffix}",
             "That keeps the document's order; the point of FIM is that the middle comes last, after the suffix, so "
             "a left-to-right model writes it having read both sides. "),
        ]
        hint = next((h for v, h in hints if got == v), "")
        if not hint and got.startswith(expected):
            hint = ("Nothing after the middle: no end marker (the end-of-text token that closes a document in "
                    "training is added when it is encoded), no newline. ")
        try:
            back = from_fim(got)
        except DataError as err:
            back = None
            hint += f"from_fim cannot read your text ({err}). "
        if back is not None and back != prefix + middle + suffix:
            hint += f"from_fim turns your text into {_show(back, 160)}, not the document prefix + middle + suffix. "
        raise ExerciseFailed(f"{shown}: your text is {_show(got)}, expected {_show(expected)}: "
                             f"{_first_difference(got, expected)}. {hint}{rule}")
    return (f"equals fim_prompt(prefix, suffix, mode) + middle in {len(cases)} cases, PSM and SPM, empty prefixes, "
            "middles and suffixes included; from_fim gives back prefix + middle + suffix from each.")


# -- D.4: a docstring-to-code pair ----------------------------------------------------------------

_PAIR_RULE = ("Cut the source's lines (source.split('\\n')); with node the module's top-level ast.FunctionDef: "
              "prompt = the lines from node.lineno (the def line) through node.body[0].end_lineno (where the "
              "docstring ends), joined with '\\n', no final newline; body = '\\n' + every following line up to "
              "node.end_lineno, each followed by '\\n'. A decorated function (node.decorator_list not empty) gives "
              "None.")


def _pair_cases() -> list[tuple[str, str]]:
    """(what, module source with one top-level function)."""
    cases = [
        ("a function alone", 'def add(a, b):\n    """Return a + b."""\n    return a + b\n'),
        ("a function after imports and a constant, before a main block",
         'import math\nfrom collections import Counter\n\nLIMIT = 10\n\n\n# the norm\ndef norm(xs):\n'
         '    """The Euclidean norm of xs.\n\n    An empty list has norm 0.\n    """\n    # sum of squares\n'
         '    total = sum(x * x for x in xs)\n\n    return math.sqrt(total)\n\n\nif __name__ == "__main__":\n'
         '    print(norm([3, 4]))\n'),
        ("a signature over several lines",
         'def clip(\n    value: float,\n    low: float = 0.0,\n    high: float = 1.0,\n) -> float:\n'
         '    """Clip value to [low, high]."""\n    return max(low, min(high, value))\n'),
        ("a docstring with quotes inside",
         "def quote(s):\n    '''Wrap s in \"\"\" quotes, or say \"hi\" and 'bye'.'''\n"
         "    return '\"\"\"' + s + '\"\"\"'\n"),
        ('a default value of """ in the signature',
         'def fence(s, mark=\'"""\'):\n    """Put s between two marks."""\n    return mark + s + mark\n'),
        ("a docstring in single quotes on one line",
         "def words(s):\n    'Count the words of s.'\n    return len(s.split())\n"),
        ("a raw docstring", 'def digits(s):\n    r"""The digits of s, found with \\d+."""\n    import re\n'
                            "    return re.findall(r'\\d+', s)\n"),
        ("a decorated function (None)",
         'import functools\n\n\n@functools.cache\ndef fib(n):\n    """The n-th Fibonacci number."""\n'
         '    return n if n < 2 else fib(n - 1) + fib(n - 2)\n'),
        ("a function with two decorators (None)",
         '@staticmethod\n@some.decorator(1)\ndef f():\n    """Nothing."""\n    return None\n'),
        ("a body with a nested documented def and a multi-line string at column 0",
         'def report(rows):\n    """A report of rows."""\n\n    def line(row):\n        """One row."""\n'
         '        return " ".join(map(str, row))\n    head = """\nReport\n======\n"""\n'
         '    return head + "\\n".join(line(r) for r in rows)\n'),
        ("a file without a final newline", 'def one():\n    """One."""\n    x = 1\n    return x'),
        ("a class with a documented method before the function (methods do not count)",
         'class Box:\n    def size(self):\n        """How big."""\n        return 1\n\n\n'
         'def area(w, h):\n    """w times h."""\n    return w * h\n\n\nprint(area(2, 3))\n'),
    ]
    rng = random.Random(404)
    names = ["mean", "total", "first", "longest", "count_vowels", "is_even", "merge"]
    bodies = [["result = 0", "for x in xs:", "    result += x", "return result"], ["return xs[0] if xs else None"],
              ["if not xs:", "    return []", "", "return sorted(xs)"], ["n = len(xs)  # the length", "return n"],
              ['text = """', "no indent", '"""', "return text"]]  # fmt: skip
    for i in range(10):
        name = rng.choice(names)
        signature = (f"def {name}(xs):" if rng.random() < 0.6 else
                     f"def {name}(\n    xs,\n    key=None,\n):")  # fmt: skip
        doc = rng.choice([f'"""The {name} of xs."""', f"'''The {name} of xs.\n\n    Returns a value.\n    '''",
                          f'"""\n    {name}: see "the book".\n    """'])
        lines = [f"    {line}" if line and not line.startswith("no") else line for line in rng.choice(bodies)]
        head = rng.choice(["", "import os\n\n", "# a comment\nX = 1\n\n\n", '"""A module."""\n\n'])
        decorated = "@cache\n" if rng.random() < 0.2 else ""
        tail = rng.choice(["", "\n", "\n\nprint(1)\n", "\n\n\n"])
        source = f"{head}{decorated}{signature}\n    {doc}\n" + "\n".join(lines) + tail
        cases.append((f"a module put together at random{' (decorated: None)' if decorated else ''}", source))
    return cases


def _first_and_last_line(text: str) -> tuple[str, str]:
    lines = text.split("\n")
    return lines[0], lines[-1]


def _expected_pair(source: str) -> tuple[str, str] | None:
    """The package's (prompt, body) of the module's one top-level function, None if it leaves it out."""
    pairs = list(documented_functions([source]))
    assert len(pairs) <= 1, source
    return (pairs[0].prompt, pairs[0].body) if pairs else None


@exercise("D.4", "a docstring-to-code pair")
def grade_pair(answer: Callable[[str], tuple[str, str] | None]) -> str:
    """answer(source) -> (prompt, body) as `documented_functions([source])`'s one CodePair, or None if it has none."""
    cases = _pair_cases()
    for what, source in cases:
        got = call_answer(answer, source, what=f"your my_pair on {what} ({_show(source, 200)})")
        expected = _expected_pair(source)
        if expected is None:
            expect(got is None, f"on {what}: the source {_show(source)} should give None, your my_pair returned "
                                f"{_show(str(got), 200)}. documented_functions leaves decorated functions out: the "
                                "decorator's line would come before the prompt, and a decorator changes what the "
                                f"function is (it may wrap, replace or register it). {_PAIR_RULE}")
            continue
        expect(got is not None, f"on {what}: your my_pair returned None for {_show(source)}, expected "
                                f"{expected!r:.300}: only a decorated function gives None. {_PAIR_RULE}")
        expect(isinstance(got, (tuple, list)) and len(got) == 2 and all(isinstance(x, str) for x in got),
               f"on {what}: my_pair returned {type(got).__name__} {got!r:.80}; return a pair of strs (prompt, body), "
               "or None.")
        prompt, body = got
        exp_prompt, exp_body = expected
        if (prompt, body) == expected:
            continue
        if prompt + body == exp_prompt + exp_body:
            hint = ("prompt + body is right, but the cut is not: the prompt ends at the docstring's closing quotes "
                    "(the end of node.body[0].end_lineno's line) without a newline, and the body starts with that "
                    "newline. ")
        elif prompt == exp_prompt and body.startswith(exp_body):
            hint = ("The body ends with the function's last line (node.end_lineno) and its newline: what follows the "
                    "function (blank lines, other statements) is not part of it. ")
        elif prompt == exp_prompt and body + "\n" == exp_body:
            hint = "The body ends with a newline, even when the file does not: each kept line is followed by '\\n'. "
        elif prompt == exp_prompt:
            hint = ("The body is '\\n' and then the function's lines after the docstring's last line, each with its "
                    "newline, exactly as in the source: cut its lines, do not rebuild them (ast.unparse drops comments "
                    "and blank lines and changes spacing). ")
        elif prompt.endswith(exp_prompt):
            hint = ("The prompt starts at the def line (node.lineno; with a multi-line signature, the line of 'def'): "
                    "imports, comments or code before the function are not part of it. ")
        elif prompt.startswith(exp_prompt):
            hint = ("The prompt ends with the line where the docstring ends, at its closing quotes: no newline, "
                    "nothing of the body. ")
        elif exp_prompt.startswith(prompt) or _first_and_last_line(prompt) == _first_and_last_line(exp_prompt):
            hint = ("The prompt runs through the whole signature and the whole docstring, down to the line where "
                    "the docstring ends (node.body[0].end_lineno): a signature may take several lines, a docstring "
                    'may hold quotes, even """. ')
        else:
            hint = ("Cut the source's own lines; do not rebuild them (ast.unparse or ast.get_docstring change quotes, "
                    "spacing and comments): the prompt must be exactly what a model sees in the file. ")
        part, mine, theirs = (("prompt", prompt, exp_prompt) if prompt != exp_prompt else ("body", body, exp_body))
        raise ExerciseFailed(f"on {what}: for the source {_show(source)} your {part} is {_show(mine, 300)}, expected "
                             f"{_show(theirs, 300)}: {_first_difference(mine, theirs)}. {hint}{_PAIR_RULE}")
    n_none = sum(_expected_pair(s) is None for _, s in cases)
    return (f"equals the CodePair of minillm.codedata.documented_functions on {len(cases)} modules ({n_none} "
            "decorated, None): signatures over several lines, docstrings with quotes, imports before and code after "
            "the function.")
