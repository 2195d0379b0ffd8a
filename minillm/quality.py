"""Normalization and heuristic quality filters: the per-document steps of curation.

Chapter 01 (data) teaches this module; :func:`minillm.curation.curate` runs it
as the first two steps of its pipeline.

* :func:`normalize` applies Unicode NFC, removes control characters and HTML
  markup, and tidies whitespace.
* :func:`quality_failures` applies heuristic rules in the spirit of Gopher (Rae
  et al., 2021) and C4 (Raffel et al., 2020). Each rule is small, configurable
  in :class:`QualityConfig`, and names itself when a document fails it.
* :func:`code_quality_failures` is the same idea for source code (the book's
  Python corpus): generated files, files that do not parse, data tables.
* :class:`CharNGramLM` is a small byte-level n-gram model whose perplexity can
  serve as an optional quality score.
"""

from __future__ import annotations

import ast
import html
import math
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import regex

from minillm.errors import DataError

# ---------------------------------------------------------------------------
# 1. Normalization
# ---------------------------------------------------------------------------

_HTML_DROP = regex.compile(r"<(script|style|noscript|head)\b[^>]*>.*?</\1\s*>|<!--.*?-->|<!DOCTYPE[^>]*>",
                           regex.S | regex.I)
_HTML_BLOCK = regex.compile(r"</?(?:p|div|br|li|ul|ol|h[1-6]|tr|table|section|article|header|footer|nav|"
                            r"blockquote|pre|hr|body|html|main|aside|form)\b[^>]*>", regex.I)
_HTML_INLINE = regex.compile(r"</?(?:a|abbr|b|code|em|font|i|img|meta|link|span|strong|sub|sup|td|th|tbody|"
                             r"thead|title|u|small|label|input|button|iframe|time|mark)\b[^>]*>", regex.I)
_INVISIBLE = regex.compile(r"[[\p{Cc}\u200b\u2060\ufeff\u00ad]--[\n\t]]", regex.V1)
_SPACES = regex.compile(r"[\p{Zs}\t]+")
_BLANKS = regex.compile(r"\n{3,}")


@dataclass
class NormalizeConfig:
    """What :func:`normalize` does; every switch is on by default."""

    nfc: bool = True  # Unicode canonical composition: "e" + U+0301 -> "é"
    strip_html: bool = True  # drop script/style/comments, block tags -> newlines, unescape entities
    remove_control: bool = True  # control characters (except \n, \t), zero-width spaces, BOM, soft hyphens
    whitespace: bool = True  # \r\n -> \n, collapse inner spaces, strip trailing spaces, <= 1 blank line


def strip_html(text: str) -> str:
    """Text of an HTML fragment: scripts, styles and comments dropped, tags removed, entities decoded.

    Only known HTML tag names are removed, so ``a < b`` or ``List<int>`` survive.
    Text without any known tag is returned unchanged (entities included).
    """
    if not (_HTML_BLOCK.search(text) or _HTML_INLINE.search(text) or _HTML_DROP.search(text)):
        return text
    text = _HTML_DROP.sub("", text)
    text = _HTML_BLOCK.sub("\n", text)
    return html.unescape(_HTML_INLINE.sub("", text))


def normalize(text: str, config: NormalizeConfig | None = None) -> str:
    """Normalize one document (see :class:`NormalizeConfig`). Leading indentation is kept (code)."""
    if not isinstance(text, str):
        raise TypeError(f"normalize expects a str, got {type(text).__name__}")
    cfg = config or NormalizeConfig()
    if cfg.nfc:
        text = unicodedata.normalize("NFC", text)
    if cfg.strip_html:
        text = strip_html(text)
    if cfg.whitespace:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if cfg.remove_control:
        text = _INVISIBLE.sub("", text)
    if cfg.whitespace:
        lines = []
        for line in text.split("\n"):
            body = line.lstrip(" \t")
            indent = line[: len(line) - len(body)]
            lines.append((indent + _SPACES.sub(" ", body)).rstrip())
        text = _BLANKS.sub("\n\n", "\n".join(lines)).strip("\n")
    return text


# ---------------------------------------------------------------------------
# 2. Heuristic quality rules
# ---------------------------------------------------------------------------

STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")
BOILERPLATE_PHRASES = ("lorem ipsum", "cookie", "javascript", "terms of use", "privacy policy",
                       "all rights reserved", "click here", "subscribe to our newsletter", "sign up for",
                       "log in to", "accept all", "powered by")
BULLETS = ("•", "-", "*", "·", "‣", "–", "◦", "▪")


@dataclass
class QualityConfig:
    """Thresholds of the quality rules (defaults after Gopher and C4). ``rules`` picks which run.

    Word counts use whitespace-separated words; fractions are in [0, 1].
    """

    min_words: int = 50
    max_words: int = 100_000
    min_mean_word_length: float = 3.0
    max_mean_word_length: float = 10.0
    max_symbol_word_ratio: float = 0.1  # ("#" + "..." + "…") per word
    max_ellipsis_line_fraction: float = 0.3
    max_bullet_line_fraction: float = 0.9
    max_duplicate_line_fraction: float = 0.3
    max_top_ngram_fraction: dict[int, float] = field(default_factory=lambda: {2: 0.20, 3: 0.18, 4: 0.16})
    max_duplicate_ngram_fraction: dict[int, float] = field(
        default_factory=lambda: {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10})
    min_stop_words: int = 2
    min_alpha_word_fraction: float = 0.8
    max_boilerplate_line_fraction: float = 0.2
    boilerplate_phrases: tuple[str, ...] = BOILERPLATE_PHRASES
    rules: tuple[str, ...] | None = None  # None: all of RULES, in order

    def __post_init__(self) -> None:
        if self.rules is not None:
            unknown = [r for r in self.rules if r not in RULES]
            if unknown:
                raise DataError(f"unknown quality rules {unknown}; choose from {list(RULES)}")
        if self.min_words > self.max_words:
            raise DataError(f"min_words ({self.min_words}) is larger than max_words ({self.max_words})")


@dataclass
class _Doc:
    """What the rules look at, computed once per document."""

    words: list[str]
    lines: list[str]  # non-empty lines, stripped

    @classmethod
    def of(cls, text: str) -> "_Doc":
        return cls(text.split(), [ln.strip() for ln in text.split("\n") if ln.strip()])


def _frac(part: float, whole: float) -> float:
    return part / whole if whole else 0.0


def _top_ngram(d: _Doc, c: QualityConfig) -> str | None:
    w = [x.lower() for x in d.words]
    chars = sum(map(len, w))
    for n, limit in sorted(c.max_top_ngram_fraction.items()):
        grams = Counter(zip(*(w[i:] for i in range(n))))
        if grams:
            gram, count = grams.most_common(1)[0]
            value = _frac(count * sum(map(len, gram)), chars)
            if count > 1 and value > limit:
                return f"most frequent {n}-gram covers {value:.2f} of characters > {limit}"
    return None


def _duplicate_ngrams(d: _Doc, c: QualityConfig) -> str | None:
    w = [x.lower() for x in d.words]
    chars = sum(map(len, w))
    for n, limit in sorted(c.max_duplicate_ngram_fraction.items()):
        grams = list(zip(*(w[i:] for i in range(n))))
        counts = Counter(grams)
        covered = np.zeros(len(w), dtype=bool)
        for i, g in enumerate(grams):
            if counts[g] > 1:
                covered[i : i + n] = True
        value = _frac(sum(len(x) for x, hit in zip(w, covered) if hit), chars)
        if value > limit:
            return f"duplicated {n}-grams cover {value:.2f} of characters > {limit}"
    return None


def _check(value: float, ok: bool, message: str) -> str | None:
    return None if ok else message.format(value)


RULES: dict[str, Callable[[_Doc, QualityConfig], str | None]] = {
    "too_few_words": lambda d, c: _check(len(d.words), len(d.words) >= c.min_words,
                                         "{} words < " + str(c.min_words)),
    "too_many_words": lambda d, c: _check(len(d.words), len(d.words) <= c.max_words,
                                          "{} words > " + str(c.max_words)),
    "mean_word_length": lambda d, c: _check(
        m := _frac(sum(map(len, d.words)), len(d.words)),
        c.min_mean_word_length <= m <= c.max_mean_word_length,
        "mean word length {:.1f} outside " + f"[{c.min_mean_word_length}, {c.max_mean_word_length}]"),
    "symbol_ratio": lambda d, c: _check(
        r := _frac(sum(w.count("#") + w.count("...") + w.count("…") for w in d.words), len(d.words)),
        r <= c.max_symbol_word_ratio, "{:.2f} symbols per word > " + str(c.max_symbol_word_ratio)),
    "ellipsis_lines": lambda d, c: _check(
        f := _frac(sum(ln.endswith(("...", "…")) for ln in d.lines), len(d.lines)),
        f <= c.max_ellipsis_line_fraction, "{:.2f} of lines end in an ellipsis > " + str(c.max_ellipsis_line_fraction)),
    "bullet_lines": lambda d, c: _check(
        f := _frac(sum(ln.startswith(BULLETS) for ln in d.lines), len(d.lines)),
        f <= c.max_bullet_line_fraction, "{:.2f} of lines are bullets > " + str(c.max_bullet_line_fraction)),
    "duplicate_lines": lambda d, c: _check(
        f := _frac(len(d.lines) - len(set(d.lines)), len(d.lines)),
        f <= c.max_duplicate_line_fraction, "{:.2f} of lines are repeats > " + str(c.max_duplicate_line_fraction)),
    "top_ngram": _top_ngram,
    "duplicate_ngrams": _duplicate_ngrams,
    "stop_words": lambda d, c: _check(
        k := len({w.strip(".,;:!?\"'()").lower() for w in d.words} & set(STOP_WORDS)),
        k >= c.min_stop_words, "{} distinct stop words < " + str(c.min_stop_words)),
    "alpha_words": lambda d, c: _check(
        f := _frac(sum(any(ch.isalpha() for ch in w) for w in d.words), len(d.words)),
        f >= c.min_alpha_word_fraction, "{:.2f} of words have a letter < " + str(c.min_alpha_word_fraction)),
    "boilerplate": lambda d, c: _check(
        f := _frac(sum(any(p in ln.lower() for p in c.boilerplate_phrases) for ln in d.lines), len(d.lines)),
        f <= c.max_boilerplate_line_fraction,
        "{:.2f} of lines contain boilerplate phrases > " + str(c.max_boilerplate_line_fraction)),
}
"""Quality rules by name, in the order they run: ``rule(doc, config) -> reason or None``."""


def quality_failures(text: str, config: QualityConfig | None = None, first_only: bool = False) -> dict[str, str]:
    """The rules ``text`` fails, as ``{rule name: reason}`` (empty: the document passes).

    With ``first_only`` the check stops at the first failing rule (what the
    pipeline records, so that every removed document has exactly one reason).
    """
    if not isinstance(text, str):
        raise TypeError(f"quality_failures expects a str, got {type(text).__name__}")
    cfg = config or QualityConfig()
    doc, failures = _Doc.of(text), {}
    for name in cfg.rules or RULES:
        reason = RULES[name](doc, cfg)
        if reason is not None:
            failures[name] = reason
            if first_only:
                break
    return failures


@dataclass
class CodeQualityConfig:
    """Thresholds of :func:`code_quality_failures` (Python source files)."""

    generated_markers: tuple[str, ...] = ("generated by", "generated from", "do not edit", "automatically generated",
                                          "auto-generated")  # fmt: skip
    marker_chars: int = 2000  # markers are looked for in the file's first characters (its header)
    min_lines: int = 5  # non-blank lines
    max_line_length: int = 1000  # one very long line: a data blob, not code
    max_mean_line_length: float = 100.0
    min_alnum_fraction: float = 0.25  # letters and digits among non-space characters; lower: tables of symbols


def _first_code_failure(text: str, c: CodeQualityConfig) -> tuple[str, str] | None:
    head = text[: c.marker_chars].lower()
    marker = next((m for m in c.generated_markers if m in head), None)
    if marker:
        return "generated", f"its header says {marker!r}"
    try:
        ast.parse(text)
    except (SyntaxError, ValueError) as err:
        return "syntax_error", f"does not parse: {type(err).__name__} at line {getattr(err, 'lineno', '?')}"
    lines = [ln for ln in text.split("\n") if ln.strip()]
    if len(lines) < c.min_lines:
        return "too_few_lines", f"{len(lines)} non-blank lines < {c.min_lines}"
    longest = max(map(len, lines))
    if longest > c.max_line_length:
        return "long_line", f"a line of {longest} characters > {c.max_line_length}"
    if (mean := sum(map(len, lines)) / len(lines)) > c.max_mean_line_length:
        return "mean_line_length", f"mean line length {mean:.0f} > {c.max_mean_line_length:.0f}"
    visible = [ch for ch in text if not ch.isspace()]
    if (f := _frac(sum(ch.isalnum() for ch in visible), len(visible))) < c.min_alnum_fraction:
        return "alnum_fraction", f"{f:.2f} of characters are letters or digits < {c.min_alnum_fraction}"
    return None


CODE_RULES = ("generated", "syntax_error", "too_few_lines", "long_line", "mean_line_length", "alnum_fraction")
"""The rules of :func:`code_quality_failures`, in the order they run."""


def code_quality_failures(text: str, config: CodeQualityConfig | None = None) -> dict[str, str]:
    """The first rule a Python source file fails, as ``{rule name: reason}`` (empty: it passes)."""
    if not isinstance(text, str):
        raise TypeError(f"code_quality_failures expects a str, got {type(text).__name__}")
    failure = _first_code_failure(text, config or CodeQualityConfig())
    return dict([failure]) if failure else {}


class CharNGramLM:
    """A byte-level n-gram language model with recursive additive (Dirichlet) smoothing.

    ``P(c | h) = (count(h c) + alpha * P(c | h')) / (count(h) + alpha)``, where
    ``h'`` drops the oldest byte of the context ``h``; the order-0 model is
    uniform over 256 bytes. Small and fast enough to train on a reference
    corpus in seconds; its perplexity is high on gibberish and on text unlike
    the reference, which makes it a cheap quality signal.
    """

    def __init__(self, order: int = 4, alpha: float = 1.0):
        if order < 1 or alpha <= 0:
            raise DataError(f"need order >= 1 and alpha > 0, got order={order}, alpha={alpha}")
        self.order, self.alpha = order, alpha
        self.counts: Counter[bytes] = Counter()  # n-grams of length 1..order, and their contexts

    def fit(self, text: str) -> "CharNGramLM":
        """Count every byte n-gram (lengths 1..order) of ``text``; returns self."""
        data = text.encode("utf-8")
        for n in range(1, self.order + 1):
            self.counts.update(data[i : i + n] for i in range(len(data) - n + 1))
        self.counts[b""] += len(data)
        return self

    def log_prob(self, context: bytes, byte: int) -> float:
        """Natural log of ``P(byte | context)``; the context is cut to ``order - 1`` bytes."""
        p = 1.0 / 256
        context = context[len(context) - self.order + 1 :] if self.order > 1 else b""
        for k in range(len(context) + 1):
            h = context[len(context) - k :]
            p = (self.counts.get(h + bytes([byte]), 0) + self.alpha * p) / (self.counts.get(h, 0) + self.alpha)
        return math.log(p)

    def perplexity(self, text: str) -> float:
        """``exp`` of the mean negative log-probability per byte (``inf`` for empty text)."""
        data = text.encode("utf-8")
        if not data:
            return math.inf
        nll = -sum(self.log_prob(data[max(0, i - self.order + 1) : i], data[i]) for i in range(len(data)))
        return math.exp(nll / len(data))
