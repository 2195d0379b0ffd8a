"""Chapter 01's exercise checks: a right answer passes, typical mistakes fail, the stub is not attempted."""

from __future__ import annotations

import ipaddress
import re

import pytest

from minillm.dedup import words
from minillm.exercises import ExerciseFailed, check


def duplicate_lines_ok(text, max_fraction=0.3):
    lines = [ln.strip() for ln in text.split("\n") if ln.strip()]
    if not lines:
        return True
    return (len(lines) - len(set(lines))) / len(lines) <= max_fraction


def shingle_jaccard(a, b, k):
    def shingles(t):
        w = words(t)
        return {tuple(w[i:i + k]) for i in range(len(w) - k + 1)}
    sa, sb = shingles(a), shingles(b)
    return len(sa & sb) / len(sa | sb)


def find_ipv4(text):
    found = []
    for m in re.finditer(r"(?<![\d.])\d{1,3}(?:\.\d{1,3}){3}(?![\d.]*\d)", text):
        try:
            ipaddress.IPv4Address(m.group())
        except ValueError:
            continue
        found.append(m.group())
    return found


def stub(*args):
    raise NotImplementedError


def test_right_answers_pass():
    assert check("1.1", duplicate_lines_ok) is True
    assert check("1.2", shingle_jaccard) is True
    assert check("1.3", find_ipv4) is True


def _strict(text):  # < instead of <=
    lines = [ln.strip() for ln in text.split("\n") if ln.strip()]
    return not lines or (len(lines) - len(set(lines))) / len(lines) < 0.3


def _blank_lines_count(text):  # blank lines are lines too
    lines = [ln.strip() for ln in text.split("\n")]
    return not lines or (len(lines) - len(set(lines))) / len(lines) <= 0.3


def _every_occurrence(text):  # counts the first occurrence of a repeated line as well
    lines = [ln.strip() for ln in text.split("\n") if ln.strip()]
    return not lines or sum(lines.count(x) > 1 for x in lines) / len(lines) <= 0.3


def _unstripped(text):  # indentation makes a repeat look new
    lines = [ln for ln in text.split("\n") if ln.strip()]
    return not lines or (len(lines) - len(set(lines))) / len(lines) <= 0.3


@pytest.mark.parametrize("wrong", [_strict, _blank_lines_count, _every_occurrence, _unstripped])
def test_duplicate_lines_mistakes_fail(wrong):
    with pytest.raises(ExerciseFailed):
        check("1.1", wrong)


def _chars(a, b, k):  # character shingles
    sa = {a.lower()[i:i + k] for i in range(len(a) - k + 1)}
    sb = {b.lower()[i:i + k] for i in range(len(b) - k + 1)}
    return len(sa & sb) / len(sa | sb)


def _case_sensitive(a, b, k):
    def shingles(t):
        w = re.findall(r"\w+", t)
        return {tuple(w[i:i + k]) for i in range(len(w) - k + 1)}
    sa, sb = shingles(a), shingles(b)
    return len(sa & sb) / len(sa | sb)


def _over_first(a, b, k):  # |A ∩ B| / |A|
    def shingles(t):
        w = words(t)
        return {tuple(w[i:i + k]) for i in range(len(w) - k + 1)}
    sa, sb = shingles(a), shingles(b)
    return len(sa & sb) / len(sa)


@pytest.mark.parametrize("wrong", [_chars, _case_sensitive, _over_first])
def test_jaccard_mistakes_fail(wrong):
    with pytest.raises(ExerciseFailed):
        check("1.2", wrong)


@pytest.mark.parametrize("wrong", [
    lambda t: re.findall(r"\b(?:\d{1,3}\.){3}\d{1,3}\b", t),                   # no 0-255 check
    lambda t: [x for x in re.findall(r"\b(?:\d{1,3}\.){3}\d{1,3}\b", t)         # validated, but inside 1.2.3.4.5
               if all(int(p) < 256 for p in x.split("."))],
    lambda t: [x for x in re.findall(r"\b\d{1,3}(?:\.\d{1,3}){2,3}\b", t)       # three parts (versions) too
               if all(int(p) < 256 for p in x.split("."))],
])
def test_ipv4_mistakes_fail(wrong):
    with pytest.raises(ExerciseFailed):
        check("1.3", wrong)


def test_stubs_are_not_attempted(capsys):
    for id in ("1.1", "1.2", "1.3"):
        assert check(id, stub) is False
    assert "not attempted yet" in capsys.readouterr().out
