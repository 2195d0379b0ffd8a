"""Tests for minillm.codedata: docstring -> code pairs (hand-written sources, expected text stated
literally), their dedup, decontamination and encoding for masked fine-tuning; fill-in-the-middle
(literal transforms with a scripted rng, a property-based round trip, rates, sentinels as tokens)."""

from __future__ import annotations

import ast
import math
import random

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from minillm.codedata import (FIM_PREFIX, FIM_TOKENS, CodePair, decontaminate_pairs, dedup_pairs,
                              documented_functions, encode_fim, encode_pairs, fim_documents, fim_prompt, fim_split,
                              from_fim, function_pairs, license_header, pairs_to_examples, strip_license_header,
                              to_fim)  # fmt: skip
from minillm.dedup import Decontaminator
from minillm.errors import ConfigError, DataError
from minillm.instruct import IGNORE_INDEX, add_special_tokens, instruction_collate
from minillm.skills import function_prompts
from minillm.tokenizer import ENDOFTEXT, BPETokenizer, CharTokenizer

SOURCE = '''"""Module doc."""
import os


def join(a, b):
    """Join two paths."""
    # a comment stays in the body
    return os.path.join(a, b)


@cache
def decorated():
    """Skipped: decorated."""
    return 1


def only_doc():
    """Skipped: nothing after the docstring."""


def no_doc():
    return 2


def two_lines(
    x,
):
    """Header over
    two lines."""
    if x:

        return x
    return -x


class Box:
    """A box."""

    def size(self):
        """How big."""
        return 3

    @property
    def skipped(self):
        """Decorated."""
        return 0

    def text(self):
        """Skipped: a string line at column 0."""
        s = """
left"""
        return s


def outer():
    """Nested functions are not pairs of their own."""
    def inner():
        """Inner."""
        return 1
    return inner
'''
LINES = SOURCE.split("\n")
JOIN = CodePair('def join(a, b):\n    """Join two paths."""',
                "\n    # a comment stays in the body\n    return os.path.join(a, b)\n",
                "join", 1, LINES.index("def join(a, b):") + 1)  # fmt: skip
TWO_LINES = CodePair('def two_lines(\n    x,\n):\n    """Header over\n    two lines."""',
                     "\n    if x:\n\n        return x\n    return -x\n", "two_lines", 1,
                     LINES.index("def two_lines(") + 1)  # fmt: skip
OUTER = CodePair('def outer():\n    """Nested functions are not pairs of their own."""',
                 '\n    def inner():\n        """Inner."""\n        return 1\n    return inner\n', "outer", 1,
                 LINES.index("def outer():") + 1)  # fmt: skip
SIZE = CodePair('def size(self):\n    """How big."""', "\n    return 3\n", "Box.size", 1,
                LINES.index("    def size(self):") + 1)  # fmt: skip


# -- pairs -----------------------------------------------------------------------------------------


def test_function_pairs_cut_documented_functions_into_header_and_body():
    assert function_pairs(["def broken(:", SOURCE]) == [JOIN, TWO_LINES, OUTER]
    assert function_pairs(["def broken(:", SOURCE], methods=True) == [JOIN, TWO_LINES, OUTER, SIZE]


def test_prompt_plus_body_is_the_functions_source():
    start, end = LINES.index("def two_lines("), LINES.index("    return -x")
    assert TWO_LINES.source == "\n".join(LINES[start : end + 1]) + "\n"
    for pair in function_pairs([SOURCE], methods=True):
        assert pair.source == pair.prompt + pair.body
        ast.parse(pair.source)  # a whole function, dedented for a method


def test_limits_leave_long_pairs_out():
    docs = ["def broken(:", SOURCE]  # the pairs' doc index is 1
    assert function_pairs(docs, max_prompt_chars=len(JOIN.prompt)) == [JOIN]
    assert function_pairs(docs, max_body_chars=len("\n    return 3\n"), methods=True) == [SIZE]
    assert function_pairs(docs, max_prompt_chars=None, max_body_chars=None) == [JOIN, TWO_LINES, OUTER]


def test_a_body_on_the_docstrings_line_is_no_pair():
    src = 'def f(): """Doc."""; return 1\n'
    assert [(p.prompt, p.body) for p in documented_functions([src])] == [(src[:-1], "\n")]
    assert function_pairs([src]) == []


def test_skills_prompts_follow_the_same_rule():
    docs = [SOURCE, "def broken(:", 'def f(x):\n    """F."""\n    return x\n']
    assert function_prompts(docs) == [JOIN.prompt, TWO_LINES.prompt, OUTER.prompt, 'def f(x):\n    """F."""']
    assert function_prompts(docs, max_chars=len(JOIN.prompt), limit=1) == [JOIN.prompt]


@pytest.mark.parametrize("docs, error", [("def f(): pass", DataError), ([b"def f(): pass"], DataError),
                                         ([SOURCE, None], DataError)])  # fmt: skip
def test_function_pairs_reject_what_is_not_a_list_of_str(docs, error):
    with pytest.raises(error):
        function_pairs(docs)


@pytest.mark.parametrize("kwargs", [{"max_prompt_chars": 0}, {"max_body_chars": -1}, {"max_body_chars": 2.5}])
def test_function_pairs_reject_bad_limits(kwargs):
    with pytest.raises(ConfigError):
        function_pairs([SOURCE], **kwargs)


def _pair(prompt: str, body: str, name: str = "f") -> CodePair:
    return CodePair(prompt, body, name, 0, 1)


def test_dedup_pairs_drops_repeated_bodies_and_prompts():
    a = _pair("def a():\n    '''A.'''", "\n    return  x \n")
    same_body = _pair("def b():\n    '''B.'''", "\n\n    return x\n\n")  # only whitespace differs
    same_prompt = _pair("def a():\n    '''A.'''", "\n    return y\n")
    nested = _pair("def c():\n    '''C.'''", "\n    if a:\n        b\n    c\n")
    flat = _pair("def d():\n    '''D.'''", "\n    if a:\n        b\n        c\n")  # indentation matters
    assert dedup_pairs([a, same_body, same_prompt, nested, flat]) == [a, nested, flat]
    assert dedup_pairs([]) == []
    assert dedup_pairs([nested, flat, a], against=[same_body]) == [nested, flat]  # a's body is in `against`
    assert dedup_pairs([nested, a], against=[same_prompt]) == [nested]  # and so is a's prompt


def test_decontaminate_pairs_removes_pairs_sharing_an_ngram():
    bench = Decontaminator({"humaneval": ["def add(a, b): return a plus b times two"], "mbpp": ["nothing here"]}, n=4)
    leaked = _pair('def f(a, b):\n    """Add."""', "\n    return a plus b times two\n")
    clean = _pair('def g(a, b):\n    """Add."""', "\n    return a minus b\n")
    kept, removed = decontaminate_pairs([leaked, clean], bench)
    # shared 4-grams: "return a plus b", "a plus b times", "plus b times two"
    assert kept == [clean] and removed == [(leaked, {"humaneval": 3})]


def test_pairs_to_examples_are_prompt_completion_dicts():
    assert pairs_to_examples([JOIN]) == [{"prompt": 'def join(a, b):\n    """Join two paths."""',
                                          "completion": "\n    # a comment stays in the body\n"
                                                        "    return os.path.join(a, b)\n"}]  # fmt: skip


@pytest.fixture(scope="module")
def tok() -> BPETokenizer:
    return BPETokenizer.train(SOURCE * 5, 300)


def test_encode_pairs_masks_the_prompt_for_instruction_collate(tok):
    [(ids, n)] = encode_pairs([JOIN], tok)
    prompt, body = tok.encode_ordinary(JOIN.prompt), tok.encode_ordinary(JOIN.body)
    assert n == len(prompt) and ids == prompt + body + [tok.special_tokens[ENDOFTEXT]]
    batch = instruction_collate([(ids, n)], pad_id=0)
    targets = batch["targets"][0].tolist()
    assert targets[: n - 1] == [IGNORE_INDEX] * (n - 1)  # no loss on the prompt
    assert targets[n - 1 :] == body + [tok.special_tokens[ENDOFTEXT]]  # the body and its end


def test_encode_pairs_leaves_out_pairs_longer_than_the_context(tok):
    [(ids, _)] = encode_pairs([JOIN], tok)
    assert encode_pairs([JOIN], tok, max_length=len(ids) - 1) != []  # inputs are ids[:-1]
    assert encode_pairs([JOIN], tok, max_length=len(ids) - 2) == []
    with pytest.raises(DataError, match="endoftext"):
        encode_pairs([JOIN], CharTokenizer.from_text(SOURCE))
    with pytest.raises(ConfigError):
        encode_pairs([JOIN], tok, max_length=0)


# -- fill-in-the-middle ----------------------------------------------------------------------------


class Scripted(random.Random):
    """An rng that returns given numbers: random() from `floats`, randint() from `ints`."""

    def __init__(self, floats=(), ints=()):
        super().__init__(0)
        self.floats, self.ints = list(floats), list(ints)

    def random(self):
        return self.floats.pop(0)

    def randint(self, a, b):
        value = self.ints.pop(0)
        assert a <= value <= b
        return value


def test_fim_split_cuts_at_two_sorted_character_positions():
    assert fim_split("abcdefgh", Scripted(ints=[5, 2])) == ("ab", "cde", "fgh")
    assert fim_split("日本語🐍", Scripted(ints=[1, 3])) == ("日", "本語", "🐍")  # characters, not bytes
    assert fim_split("abc", Scripted(ints=[3, 3])) == ("abc", "", "")
    assert fim_split("", Scripted(ints=[0, 0])) == ("", "", "")


def test_to_fim_psm_and_spm_layouts():
    assert to_fim("abcdefgh", Scripted([0.1], [5, 2]), 0.5, "psm") == \
        "<|fim_prefix|>ab<|fim_suffix|>fgh<|fim_middle|>cde"
    assert to_fim("abcdefgh", Scripted([0.1], [5, 2]), 0.5, "spm") == \
        "<|fim_prefix|><|fim_suffix|>fgh<|fim_middle|>abcde"
    assert to_fim("abcdefgh", Scripted([0.7]), 0.5) == "abcdefgh"  # not drawn: unchanged
    assert to_fim("", Scripted([0.0], [0, 0]), 1.0) == "<|fim_prefix|><|fim_suffix|><|fim_middle|>"


def test_from_fim_inverts_literal_texts():
    assert from_fim("<|fim_prefix|>ab<|fim_suffix|>fgh<|fim_middle|>cde") == "abcdefgh"
    assert from_fim("<|fim_prefix|><|fim_suffix|>fgh<|fim_middle|>abcde") == "abcdefgh"
    assert from_fim("<|fim_prefix|><|fim_suffix|><|fim_middle|>") == ""
    assert from_fim("plain text") == "plain text"


@pytest.mark.parametrize("text", ["<|fim_suffix|>a<|fim_prefix|>b<|fim_middle|>c",
                                  "<|fim_prefix|>a<|fim_middle|>b<|fim_suffix|>c", "x<|fim_prefix|>a",
                                  "<|fim_prefix|>a<|fim_suffix|>b<|fim_middle|>c<|fim_middle|>"])  # fmt: skip
def test_from_fim_rejects_malformed_texts(text):
    with pytest.raises(DataError, match="not a FIM text"):
        from_fim(text)


PIECES = list("ab \n\té🐍<|>_") + ["<|fim_", "|>", "prefix", "suffix", "middle", "fim", "日本"]
TEXT = st.one_of(st.lists(st.sampled_from(PIECES), max_size=30).map("".join), st.text(max_size=40))


@settings(max_examples=300, deadline=None)
@given(text=TEXT, seed=st.integers(0, 2**32), rate=st.floats(0, 1), mode=st.sampled_from(["psm", "spm"]))
def test_fim_round_trip(text, seed, rate, mode):
    assume(not any(s in text for s in FIM_TOKENS))
    fim = to_fim(text, random.Random(seed), rate, mode)
    assert from_fim(fim) == text
    assert fim == text or sum(fim.count(s) for s in FIM_TOKENS) == 3


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_fim_rate_is_honoured(rate):
    n = 4000
    docs = fim_documents([f"document {i}" for i in range(n)], rate=rate, seed=1)
    k = sum(d.startswith(FIM_PREFIX) for d in docs)
    assert abs(k - n * rate) <= 5 * math.sqrt(n * rate * (1 - rate))  # 5 binomial standard deviations
    if rate in (0.0, 1.0):
        assert k == n * rate


def test_fim_documents_are_deterministic_for_a_seed():
    docs = [f"def f{i}(x):\n    return x + {i}\n" for i in range(50)]
    assert fim_documents(docs, 0.5, seed=3) == fim_documents(docs, 0.5, seed=3)
    assert fim_documents(docs, 0.5, seed=3) != fim_documents(docs, 0.5, seed=4)
    assert [from_fim(d) for d in fim_documents(docs, 0.5, seed=3, mode="spm")] == docs


@pytest.mark.parametrize("sentinel", FIM_TOKENS)
def test_text_with_a_sentinel_is_ambiguous(sentinel):
    with pytest.raises(DataError, match="already contains"):
        to_fim(f"x = '{sentinel}'", random.Random(0), rate=0.0)  # even when it would stay unchanged
    with pytest.raises(DataError):
        fim_documents(["fine", sentinel])
    with pytest.raises(DataError):
        fim_prompt(sentinel, "")


@pytest.mark.parametrize("kwargs, error", [({"mode": "pms"}, ConfigError), ({"rate": -0.1}, ConfigError),
                                           ({"rate": 1.5}, ConfigError), ({"rate": math.nan}, ConfigError),
                                           ({"rate": "0.5"}, ConfigError), ({"text": 3}, DataError)])  # fmt: skip
def test_to_fim_validates_its_arguments(kwargs, error):
    args = {"text": "abc", "rng": random.Random(0), "rate": 0.5, "mode": "psm", **kwargs}
    with pytest.raises(error):
        to_fim(**args)
    with pytest.raises(DataError):
        fim_documents("one string")


def test_fim_prompt_ends_where_the_middle_starts():
    assert fim_prompt("def f(x):\n    return ", "\n") == \
        "<|fim_prefix|>def f(x):\n    return <|fim_suffix|>\n<|fim_middle|>"
    assert fim_prompt("a", "c", "spm") == "<|fim_prefix|><|fim_suffix|>c<|fim_middle|>a"
    with pytest.raises(ConfigError):
        fim_prompt("a", "c", "psm ")


def test_fim_sentinels_are_single_tokens_after_add_special_tokens(tok):
    fim_tok = add_special_tokens(tok, FIM_TOKENS)
    ids_of = [fim_tok.special_tokens[s] for s in FIM_TOKENS]
    assert sorted(ids_of) == [tok.vocab_size, tok.vocab_size + 1, tok.vocab_size + 2]
    assert len(tok.encode_ordinary(FIM_PREFIX)) > 1  # as plain text a sentinel is several tokens
    doc = SOURCE + "# a literal <|endoftext|> stays text\n"
    text = to_fim(doc, random.Random(0), rate=1.0)
    ids = encode_fim(text, fim_tok, end=True)
    assert [ids.count(i) for i in ids_of] == [1, 1, 1]
    assert ids.index(ids_of[0]) < ids.index(ids_of[1]) < ids.index(ids_of[2])  # PSM order
    assert ids.count(fim_tok.special_tokens[ENDOFTEXT]) == 1 and ids[-1] == fim_tok.special_tokens[ENDOFTEXT]
    assert fim_tok.decode(ids[:-1]) == text and from_fim(fim_tok.decode(ids[:-1])) == doc
    prompt = fim_prompt("def f(x):\n    return ", "\n")
    assert fim_tok.decode(encode_fim(prompt, fim_tok)) == prompt
    with pytest.raises(DataError, match="add_special_tokens"):
        encode_fim(text, tok)


# -- license headers ---------------------------------------------------------------------------------


def test_a_license_notice_at_the_top_is_removed_and_the_code_is_untouched():
    text = ("#!/usr/bin/env python3\n# -*- coding: utf-8 -*-\n# Copyright 2001 A. Author. All Rights Reserved.\n"
            "# Licensed to PSF under a Contributor Agreement.\n\n\"\"\"The module.\"\"\"\nx = 1\n")
    assert license_header(text) == ("# Copyright 2001 A. Author. All Rights Reserved.\n"
                                    "# Licensed to PSF under a Contributor Agreement.\n")
    assert strip_license_header(text) == "#!/usr/bin/env python3\n# -*- coding: utf-8 -*-\n\"\"\"The module.\"\"\"\nx = 1\n"


def test_the_notice_ends_with_the_last_paragraph_that_names_one():
    text = ("# Id: mod.py,v 1.2\n# Author: someone\n\n# ======\n# Copyright 1996 by Someone\n#\n# Permission to use"
            " is granted.\n# ======\n\n# This module should be kept in sync with the spec.\n\ndef f():\n    pass\n")
    assert strip_license_header(text) == "# This module should be kept in sync with the spec.\n\ndef f():\n    pass\n"
    assert license_header(text).endswith("# ======\n") and license_header(text).startswith("# Id:")


@pytest.mark.parametrize("text", [
    "", "x = 1\n", "# a plain comment\nx = 1\n",
    '"""Docstring: Copyright 2001, all rights reserved."""\nx = 1\n',  # a docstring is documentation, kept
    "x = 1\n# Copyright 2001 later in the file\n",  # only a notice at the top counts
    "def f():\n    # License: this comment belongs to the code\n    pass\n",
])
def test_files_without_a_notice_at_the_top_are_unchanged(text):
    assert license_header(text) == "" and strip_license_header(text) == text


def test_a_file_that_is_only_a_notice_becomes_empty_and_non_text_is_refused():
    assert strip_license_header("# SPDX-License-Identifier: MIT\n\n\n") == ""
    assert strip_license_header("# (c) 2024 Someone\r\n\r\nx = 1\r\n") == "x = 1\r\n"
    with pytest.raises(DataError):
        strip_license_header(b"# Copyright")
