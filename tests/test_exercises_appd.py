"""Appendix D's exercises: a right answer passes, typical mistakes fail with their hint, wrong types are clear."""

from __future__ import annotations

import ast
import math
import random
import re

import numpy as np
import pytest
import torch

from minillm.codedata import FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX, documented_functions, fim_prompt
from minillm.codeeval import pass_at_k, truncate_completion
from minillm.exercises import ExerciseFailed, check
from minillm.tokenizer import ENDOFTEXT

# -- D.1 pass@k without bias and without overflow ----------------------------------------------


def pass_at_k_product(n, c, k):
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def pass_at_k_exact_ints(n, c, k):  # Python divides two huge ints correctly
    return 1 - math.comb(n - c, k) / math.comb(n, k)


def pass_at_k_numpy(n, c, k):  # openai/human-eval's own code: a numpy float64 is a number too
    if n - c < k:
        return 1.0
    return 1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1))


def pass_at_k_log_gamma(n, c, k):  # binomials through lgamma: a little rounding, within the tolerance
    if n - c < k:
        return 1.0

    def log_comb(a, b):
        return math.lgamma(a + 1) - math.lgamma(b + 1) - math.lgamma(a - b + 1)

    return 1.0 - math.exp(log_comb(n - c, k) - log_comb(n, k))


def pass_at_k_biased(n, c, k):
    return 1 - (1 - c / n) ** k


def pass_at_k_c_over_n(n, c, k):
    return c / n


def pass_at_k_all_fail(n, c, k):  # forgot the "1 -"
    return math.comb(n - c, k) / math.comb(n, k)


def pass_at_k_float_factorials(n, c, k):
    def comb(a, b):
        if b > a:
            return 0.0
        return float(math.factorial(a)) / (float(math.factorial(b)) * float(math.factorial(a - b)))

    return 1 - comb(n - c, k) / comb(n, k)


def pass_at_k_floor_division(n, c, k):
    return 1 - math.comb(n - c, k) // math.comb(n, k)


def pass_at_k_factorials_unguarded(n, c, k):  # factorial(n - c - k) of a negative number when n - c < k
    f = math.factorial
    return 1 - (f(n - c) // (f(k) * f(n - c - k))) / math.comb(n, k)


def pass_at_k_forgets_return(n, c, k):
    pass_at_k_product(n, c, k)


def pass_at_k_string(n, c, k):
    return f"{pass_at_k_product(n, c, k):.3f}"


def test_d_1():
    for right in (pass_at_k_product, pass_at_k_exact_ints, pass_at_k_numpy, pass_at_k_log_gamma, pass_at_k):
        assert check("D.1", right) is True
    wrong = {
        pass_at_k_biased: "with replacement",
        pass_at_k_c_over_n: "c / n is pass@1",
        pass_at_k_all_fail: "one minus it",
        pass_at_k_float_factorials: "n = 200.*largest number, 1.8e308",
        pass_at_k_floor_division: "integer division",
        pass_at_k_factorials_unguarded: "raised ValueError.*n - c < k.*pass@k = 1",
        pass_at_k_string: "returned str.*return a float",
        pass_at_k_forgets_return: "returned NoneType.*return a float",
    }
    for answer, hint in wrong.items():
        with pytest.raises(ExerciseFailed, match=hint):
            check("D.1", answer)


def test_d_1_explains_with_the_count_of_subsets():
    with pytest.raises(ExerciseFailed, match=r"n = 10 samples, c = 3 passed, k = 2: .*C\(10, 2\) = 45 ways.*24 hold"):
        check("D.1", pass_at_k_biased)


# -- D.2 where a HumanEval completion ends -----------------------------------------------------


def truncate_lines(completion):
    lines = completion.split("\n")
    for i, line in enumerate(lines):
        if line.strip() and not line[0].isspace():
            return "".join(line + "\n" for line in lines[:i])
    return completion


def truncate_regex(completion):
    found = re.search(r"^\S", completion, re.M)
    return completion[: found.start()] if found else completion


def truncate_stop_words(completion):  # Codex's stop sequences: an assert or an assignment goes on
    cuts = [i for i in (("\n" + completion).find(w) for w in ("\nclass", "\ndef", "\n#", "\n@", "\nprint", "\nif"))
            if i >= 0]  # fmt: skip
    return completion[: min(cuts)] if cuts else completion


def truncate_stripped(completion):
    kept = truncate_lines(completion)
    return kept.rstrip() + "\n" if kept.strip() and kept != completion else kept


def truncate_keeps_stop_line(completion):
    lines = completion.split("\n")
    for i, line in enumerate(lines):
        if line.strip() and not line[0].isspace():
            return "".join(line + "\n" for line in lines[: i + 1])
    return completion


def truncate_spaces_only(completion):  # a tab-indented line taken for column 0
    lines = completion.split("\n")
    for i, line in enumerate(lines):
        if line.strip() and not line.startswith(" "):
            return "".join(line + "\n" for line in lines[:i])
    return completion


def truncate_at_blank_line(completion):
    lines = completion.split("\n")
    for i, line in enumerate(lines):
        if not line.strip() and i < len(lines) - 1 or line and not line[0].isspace():
            return "".join(line + "\n" for line in lines[:i])
    return completion


def truncate_skips_first_line(completion):
    found = re.search(r"\n(?=\S)", completion)
    return completion[: found.start() + 1] if found else completion


def truncate_returns_lines(completion):
    return truncate_lines(completion).split("\n")


def test_d_2():
    for right in (truncate_lines, truncate_regex, lambda c: truncate_completion(c, "humaneval")):
        assert check("D.2", right) is True
    wrong = {
        truncate_stop_words: "Not only def, class",
        truncate_stripped: "Keep what comes before the stop line exactly",
        truncate_keeps_stop_line: "You kept the stop line",
        truncate_spaces_only: "tabs.*cut too early",
        truncate_at_blank_line: "a blank line does not end the body",
        truncate_skips_first_line: "first line counts too",
        truncate_returns_lines: "returned list.*a str",
    }
    for answer, hint in wrong.items():
        with pytest.raises(ExerciseFailed, match=hint):
            check("D.2", answer)


def test_d_2_states_the_rule_it_checks():
    with pytest.raises(ExerciseFailed, match="starts at column 0.*the rule reads text, not Python"):
        check("D.2", truncate_stop_words)


# -- D.3 a fill-in-the-middle example ----------------------------------------------------------


def fim_right(prefix, middle, suffix, mode):
    if mode == "psm":
        return FIM_PREFIX + prefix + FIM_SUFFIX + suffix + FIM_MIDDLE + middle
    return FIM_PREFIX + FIM_SUFFIX + suffix + FIM_MIDDLE + prefix + middle


def fim_always_psm(prefix, middle, suffix, mode):
    return fim_right(prefix, middle, suffix, "psm")


def fim_suffix_first(prefix, middle, suffix, mode):  # an SPM that starts with the suffix's sentinel
    if mode == "psm":
        return fim_right(prefix, middle, suffix, mode)
    return FIM_SUFFIX + suffix + FIM_PREFIX + prefix + FIM_MIDDLE + middle


def fim_document_order(prefix, middle, suffix, mode):
    return FIM_PREFIX + prefix + FIM_MIDDLE + middle + FIM_SUFFIX + suffix


def fim_prefix_and_suffix_swapped(prefix, middle, suffix, mode):
    return fim_right(suffix, middle, prefix, mode)


def fim_with_end(prefix, middle, suffix, mode):
    return fim_right(prefix, middle, suffix, mode) + ENDOFTEXT


def fim_parts(prefix, middle, suffix, mode):
    return (FIM_PREFIX + prefix, FIM_SUFFIX + suffix, FIM_MIDDLE + middle)


def test_d_3():
    assert check("D.3", fim_right) is True
    assert check("D.3", lambda p, m, s, mode: fim_prompt(p, s, mode) + m) is True
    wrong = {
        fim_always_psm: "That is the other order: mode 'spm'",
        fim_suffix_first: r"still starts with <\|fim_prefix\|>.*from_fim cannot read your text",
        fim_document_order: "keeps the document's order.*from_fim cannot read your text",
        fim_prefix_and_suffix_swapped: "from_fim turns your text into",
        fim_with_end: "Nothing after the middle",
        fim_parts: "returned tuple.*a str",
    }
    for answer, hint in wrong.items():
        with pytest.raises(ExerciseFailed, match=hint):
            check("D.3", answer)


# -- D.4 a docstring-to-code pair --------------------------------------------------------------


def _function(source):
    return next(node for node in ast.parse(source).body if isinstance(node, ast.FunctionDef))


def pair_right(source):
    node = _function(source)
    if node.decorator_list:
        return None
    lines = source.split("\n")
    end_of_doc = node.body[0].end_lineno
    prompt = "\n".join(lines[node.lineno - 1 : end_of_doc])
    body = "\n" + "".join(line + "\n" for line in lines[end_of_doc : node.end_lineno])
    return prompt, body


def pair_by_package(source):
    pairs = list(documented_functions([source]))
    return (pairs[0].prompt, pairs[0].body) if pairs else None


def pair_cut_after_newline(source):
    got = pair_right(source)
    return None if got is None else (got[0] + "\n", got[1][1:])


def pair_rest_of_module(source):
    node = _function(source)
    if node.decorator_list:
        return None
    lines = source.split("\n")
    prompt = "\n".join(lines[node.lineno - 1 : node.body[0].end_lineno])
    return prompt, "\n" + "\n".join(lines[node.body[0].end_lineno :])


def pair_keeps_decorated(source):
    node = _function(source)
    lines = source.split("\n")
    prompt = "\n".join(lines[node.lineno - 1 : node.body[0].end_lineno])
    return prompt, "\n" + "".join(line + "\n" for line in lines[node.body[0].end_lineno : node.end_lineno])


def pair_body_without_last_newline(source):
    got = pair_right(source)
    return None if got is None else (got[0], got[1][:-1])


def pair_from_the_top(source):  # the module's lines before the def too
    got = pair_right(source)
    if got is None:
        return None
    return "\n".join(source.split("\n")[: _function(source).lineno - 1] + [got[0]]), got[1]


def pair_first_line_only(source):  # the signature is its first line
    node = _function(source)
    if node.decorator_list:
        return None
    lines = source.split("\n")
    doc = node.body[0]
    prompt = "\n".join([lines[node.lineno - 1]] + lines[doc.lineno - 1 : doc.end_lineno])
    return prompt, "\n" + "".join(line + "\n" for line in lines[doc.end_lineno : node.end_lineno])


def pair_unparsed(source):  # rebuilt by ast: quotes and spacing change
    node = _function(source)
    if node.decorator_list:
        return None
    body = node.body[1:]
    node.body = node.body[:1]
    prompt = ast.unparse(node)
    return prompt, "\n" + "".join("    " + ast.unparse(stmt).replace("\n", "\n    ") + "\n" for stmt in body)


def pair_always_none(source):  # (a body of only `return None` would read as the untouched stub)
    ast.parse(source)
    return None


def pair_as_dict(source):
    got = pair_right(source)
    return None if got is None else {"prompt": got[0], "body": got[1]}


def test_d_4():
    assert check("D.4", pair_right) is True
    assert check("D.4", pair_by_package) is True
    wrong = {
        pair_cut_after_newline: "prompt \\+ body is right, but the cut is not",
        pair_rest_of_module: "what follows the function",
        pair_keeps_decorated: "should give None.*leaves decorated functions out",
        pair_body_without_last_newline: "The body ends with a newline, even when the file does not",
        pair_from_the_top: "The prompt starts at the def line",
        pair_first_line_only: "a signature may take several lines",
        pair_unparsed: "do not rebuild them",
        pair_always_none: "only a decorated function gives None",
        pair_as_dict: "returned dict.*a pair of strs",
    }
    for answer, hint in wrong.items():
        with pytest.raises(ExerciseFailed, match=hint):
            check("D.4", answer)


def test_d_4_every_module_has_one_top_level_function():
    from minillm.exercises.d import _pair_cases

    for _, source in _pair_cases():
        assert sum(isinstance(n, ast.FunctionDef) for n in ast.parse(source).body) == 1, source


# -- all of them -------------------------------------------------------------------------------

RIGHT = {"D.1": pass_at_k_product, "D.2": truncate_lines, "D.3": fim_right, "D.4": pair_right}


def test_the_checks_leave_the_random_states_alone():
    state, py_state, np_state = torch.random.get_rng_state(), random.getstate(), np.random.get_state()
    for id, answer in RIGHT.items():
        assert check(id, answer) is True
    assert torch.equal(torch.random.get_rng_state(), state)
    assert random.getstate() == py_state
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), np_state))


def test_untouched_stubs_are_not_attempted(capsys):
    def raising(*args):
        raise NotImplementedError  # your code here

    def dots(*args):
        """A body of `...`."""
        ...

    for id in RIGHT:
        assert check(id, raising) is False
        assert check(id, dots) is False
    assert capsys.readouterr().out.count("not attempted yet") == 2 * len(RIGHT)


def test_an_answer_that_raises_says_where():
    def broken(completion):
        return completion.splitlines()[5]

    with pytest.raises(ExerciseFailed, match="your my_truncate on .* raised IndexError"):
        check("D.2", broken)
