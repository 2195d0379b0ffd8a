"""Pre-tokenization (chapter 02): the regexes that cut text into chunks, and token bytes as text.

Step 2 of encoding with :class:`minillm.bpe.BPETokenizer`: a regular
expression cuts the text into chunks (``" the"``, ``"'s"``, ``"  "``) and BPE
merges never cross a chunk boundary. This module holds that step's pieces and
the spellings of bytes as text, none of which depends on a vocabulary:

* :data:`GPT2_PATTERN`, :data:`GPT4_PATTERN` and :data:`PATTERNS` (their
  names), checked by ``_compile_pattern``; ``_gpt2_pattern_re``: GPT-2's pattern
  for Python's built-in ``re`` (same chunks, faster) on text without characters
  beyond U+FFFF (``_ASTRAL``);
* ``_SAFE_CUT`` and ``_inside_special``: where
  :meth:`minillm.bpe.BPETokenizer.encode_iterable` may cut a stream of text;
* ``_utf8``: a chunk's bytes (lone surrogates become U+FFFD, as in tiktoken);
  :func:`bytes_to_text` / :func:`text_to_bytes`: a token's bytes as readable,
  reversible text (the saved tokenizer file); :func:`gpt2_bytes_to_unicode`:
  GPT-2's own spelling of bytes as characters.

The tokenizer imports them, so ``from minillm.tokenizer import GPT2_PATTERN``
(or ``bytes_to_text``, ...) works as well.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable

import regex

from minillm.errors import DataError

# GPT-2's pre-tokenizer: contractions, optional space + letters, optional space +
# digits, optional space + other symbols, then whitespace runs (a run followed by
# a word leaves its last space to that word).
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
# GPT-4 (cl100k) style: case-insensitive contractions, at most 3 digits per chunk,
# newlines kept apart from other whitespace, one leading symbol glued to a word.
GPT4_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
PATTERNS = {"gpt2": GPT2_PATTERN, "gpt4": GPT4_PATTERN}
# Any character beyond U+FFFF (emoji, rare scripts): text without one can be split by
# Python's built-in re instead of the regex module (see _gpt2_pattern_re).
_ASTRAL = re.compile("[\U00010000-\U0010ffff]")

# BPETokenizer.encode_iterable may cut its buffer right after a letter/digit followed
# by any whitespace, or after any non-space followed by a space or tab: neither
# pattern above has a chunk that spans such a position, nor looks past it (see that
# method).
_SAFE_CUT = regex.compile(r"[\p{L}\p{N}]\s|\S[ \t]", flags=regex.REVERSE)


def _compile_pattern(pattern: str) -> regex.Pattern:
    """Compile a pre-tokenization regex; findall must return whole matches."""
    if not isinstance(pattern, str):
        raise TypeError(f"pattern must be 'gpt2', 'gpt4' or a regex string, got {type(pattern).__name__}")
    try:
        compiled = regex.compile(pattern)
    except regex.error as e:
        raise DataError(f"invalid pre-tokenization pattern {pattern!r}: {e}") from None
    if compiled.groups:
        raise DataError("the pre-tokenization pattern must not have capturing groups; "
                         "write (?:...) instead of (...)")
    return compiled


@functools.cache
def _gpt2_pattern_re() -> re.Pattern:
    """:data:`GPT2_PATTERN` for Python's built-in ``re``, which finds the same chunks on
    any text without characters beyond U+FFFF, about twice as fast as ``regex``.

    ``re`` knows no ``\\p{L}`` (letter) or ``\\p{N}`` (number), and its ``\\s`` also
    matches U+001C..U+001F, which ``regex``'s does not. So the three classes are
    spelled out as the ranges of characters U+0000..U+FFFF that ``regex`` itself
    puts in them, and ``\\S`` becomes ``[^\\s]``. Beyond U+FFFF the ranges would be
    checked one by one, which is slow: :meth:`minillm.bpe.BPETokenizer.pre_tokenize`
    sends such text to ``regex``. The possessive ``++`` (Python 3.11+) become ``+``: nothing
    follows them in their alternative but ``$``, so ``re`` never backtracks into
    them. ``tests/test_tokenizer.py`` checks the two on random text.
    """
    bmp = "".join(map(chr, range(0x10000)))

    def ranges(cls: str) -> str:  # e.g. r"\u0041-\u005a\u0061-\u007a..." (in bmp, index = code point)
        return "".join(f"\\u{m.start():04x}-\\u{m.end() - 1:04x}" for m in regex.finditer(cls + "+", bmp))

    letter, number, space = ranges(r"\p{L}"), ranges(r"\p{N}"), ranges(r"\s")
    return re.compile(rf"""'(?:[sdmt]|ll|ve|re)| ?[{letter}]+| ?[{number}]+| ?[^{space}{letter}{number}]+"""
                      rf"""|[{space}]+$|[{space}]+(?![^{space}])|[{space}]""")


def _inside_special(buffer: str, cut: int, specials: Iterable[str]) -> bool:
    """Whether position ``cut`` of ``buffer`` may fall inside a special token: one that
    starts before ``cut`` and either ends after it or runs past the buffer's end."""
    for s in specials:
        for start in range(max(cut - len(s) + 1, 0), cut):
            if buffer.startswith(s, start) or (start + len(s) > len(buffer) and s.startswith(buffer[start:])):
                return True
    return False


def _utf8(text: str) -> bytes:
    """UTF-8 bytes of ``text``; lone surrogates (not encodable) become U+FFFD, as in tiktoken."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace").encode("utf-8")


def bytes_to_text(b: bytes) -> str:
    """Readable, reversible text for a token's bytes: UTF-8 where valid, ``\\xNN`` for
    other bytes, and ``\\\\`` for a backslash (the inverse is :func:`text_to_bytes`)."""
    return b.replace(b"\\", b"\\\\").decode("utf-8", errors="backslashreplace")


_ESCAPE = regex.compile(r"\\(\\|x[0-9a-f]{2})")


def text_to_bytes(s: str) -> bytes:
    """Inverse of :func:`bytes_to_text`."""
    out, pos = bytearray(), 0
    for m in _ESCAPE.finditer(s):
        out += s[pos : m.start()].encode("utf-8")
        out += b"\\" if m.group(1) == "\\" else bytes([int(m.group(1)[1:], 16)])
        pos = m.end()
    out += s[pos:].encode("utf-8")
    return bytes(out)


def gpt2_bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map from each byte to a printable character, used in ``encoder.json``
    and ``vocab.bpe``: printable Latin-1 bytes stand for themselves, the other 68
    (control characters, space, ...) are shifted to U+0100 and up, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    mapping, shifted = {}, 0
    for b in range(256):
        if b in printable:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + shifted)
            shifted += 1
    return mapping
