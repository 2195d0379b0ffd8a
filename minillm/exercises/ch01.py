"""Chapter 01's exercises: a quality rule, shingle Jaccard and an IPv4 finder, checked against the package."""

from __future__ import annotations

import numpy as np

from minillm.dedup import jaccard, shingle_hashes, words
from minillm.exercises import ExerciseFailed, assert_close, exercise, expect
from minillm.pii import find_pii
from minillm.quality import QualityConfig, quality_failures

_VOCAB = ("the data model token train text page code line word rule copy hash band java crawl "
          "filter shingle signature bucket river fox lazy dog cat sat mat over and of to").split()


def _duplicate_line_docs(rng: np.random.Generator):
    """Documents whose share of repeated lines falls below, at and above 0.3, with blank and indented lines."""
    docs = []
    for n_lines, n_repeats in [(10, 3), (10, 4), (10, 2), (7, 2), (20, 6), (20, 7), (3, 1), (1, 0), (6, 2)]:
        unique = [" ".join(rng.choice(_VOCAB, 6)) + f" {i}" for i in range(n_lines - n_repeats)]
        lines = unique + [unique[int(rng.integers(len(unique)))] for _ in range(n_repeats)]
        rng.shuffle(lines)
        out = []
        for ln in lines:
            out.append(("    " if rng.random() < 0.3 else "") + ln + (" " if rng.random() < 0.3 else ""))
            if rng.random() < 0.4:
                out.append("")
        docs.append("\n".join(out))
    docs += ["", "\n\n\n", "same\nsame\nsame\nsame"]
    return docs


@exercise("1.1", "the duplicate-lines rule")
def grade_duplicate_lines(duplicate_lines_ok) -> str:
    """Check exercise 1.1 (the duplicate-lines rule) against the package; returns what was checked."""
    cfg = QualityConfig(rules=("duplicate_lines",))
    docs = [d for seed in range(3) for d in _duplicate_line_docs(np.random.default_rng(seed))]
    for doc in docs:
        got = duplicate_lines_ok(doc)
        expected = quality_failures(doc, cfg) == {}
        expect(isinstance(got, (bool, np.bool_)), f"duplicate_lines_ok should return True or False, got {got!r}")
        if bool(got) != expected:
            lines = [ln.strip() for ln in doc.split("\n") if ln.strip()]
            share = (len(lines) - len(set(lines))) / len(lines) if lines else 0.0
            raise ExerciseFailed(
                f"on a document of {len(lines)} non-blank lines of which {len(lines) - len(set(lines))} repeat an "
                f"earlier line (share {share:.2f}), you said {bool(got)}, the package says {expected}. Count only "
                "non-blank lines, strip them before comparing, count each repeat once (not the first occurrence), "
                "and keep a document whose share is at most 0.3; an empty document passes.")
    return f"agrees with minillm.quality's duplicate_lines rule on {len(docs)} documents, boundary cases included."


def _text_pairs(rng: np.random.Generator):
    pairs = []
    for _ in range(12):
        a = [str(w) for w in rng.choice(_VOCAB, int(rng.integers(12, 40)))]
        b = list(a)
        for i in rng.choice(len(b), int(rng.integers(0, 5)), replace=False):
            b[i] = str(rng.choice(_VOCAB)).upper() if rng.random() < 0.3 else str(rng.choice(_VOCAB))
        if rng.random() < 0.5:
            b = b + [str(w) for w in rng.choice(_VOCAB, 5)]
        pairs.append((" ".join(a).capitalize() + ".", ", ".join(b[:3]) + " " + " ".join(b[3:]) + "!"))
    return pairs


@exercise("1.2", "Jaccard similarity of word shingles")
def grade_jaccard(shingle_jaccard) -> str:
    """Check exercise 1.2 (Jaccard similarity of word shingles) against the package; returns what was checked."""
    checked = 0
    for seed in range(3):
        rng = np.random.default_rng(seed)
        for a, b in _text_pairs(rng):
            for k in (2, 3, 5):
                if min(len(words(a)), len(words(b))) < k:
                    continue
                expected = jaccard(shingle_hashes(a, k), shingle_hashes(b, k))
                got = shingle_jaccard(a, b, k)
                try:
                    got = float(got)
                except (TypeError, ValueError):
                    raise ExerciseFailed(f"shingle_jaccard should return a number, got {got!r}") from None
                assert_close(got, expected, f"shingle_jaccard(a, b, k={k}) on {a[:40]!r}... and {b[:40]!r}...",
                             hint="Words are minillm.dedup.words(text) (lower-cased \\w+ runs); a shingle is k "
                                  "consecutive words; J = |A ∩ B| / |A ∪ B| of the two *sets* of shingles.",
                             rtol=1e-9, atol=1e-9)
                checked += 1
    return f"matches jaccard(shingle_hashes(a, k), shingle_hashes(b, k)) on {checked} pairs of texts."


_IP_TEXTS = [
    "server 10.0.0.7 is down",
    "ping 192.168.17.42, then 8.8.8.8.",
    "connect to 172.16.254.1:8080 (the proxy)",
    "Python 3.12.1 was released; so was 2.7.18",
    "bad address 999.1.1.1 and 256.0.0.1 here",
    "a long number 1.2.3.4.5 is not an address",
    "routers: '10.1.1.1' and \"10.1.1.2\"",
    "nothing to see, just 2024-01-15 and $1,299.99",
    "edge values 0.0.0.0 and 255.255.255.255 are valid",
    "an address at the end: 127.0.0.1",
]


@exercise("1.3", "an IPv4 finder for redaction")
def grade_ipv4(find_ipv4) -> str:
    """Check exercise 1.3 (an IPv4 finder for redaction) against the package; returns what was checked."""
    for text in _IP_TEXTS:
        expected = [m.text for m in find_pii(text, kinds=("ip_address",)) if "." in m.text]
        got = find_ipv4(text)
        expect(isinstance(got, list), f"find_ipv4 should return a list of strings, got {type(got).__name__}")
        if got != expected:
            extra = sorted(set(got) - set(expected))
            missed = sorted(set(expected) - set(got))
            hint = ("Each part must be 0-255: let ipaddress.ip_address decide." if any(
                    any(int(p) > 255 for p in x.split(".") if p.isdigit()) for x in extra) else
                    "A dotted number with more than four parts is not an address: refuse a match that a '.' "
                    "and a digit continue, or that a digit or '.' precedes (lookarounds)." if extra else
                    "Look for four dot-separated groups of one to three digits; keep them in order of appearance.")
            raise ExerciseFailed(f"in {text!r} you found {got}, expected {expected}"
                                 f"{f' (extra: {extra})' if extra else ''}{f' (missed: {missed})' if missed else ''}. "
                                 f"{hint}")
    return f"finds the same IPv4 addresses as minillm.pii on {len(_IP_TEXTS)} texts, versions and dates left alone."
