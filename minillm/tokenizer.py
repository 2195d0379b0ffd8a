"""Tokenizers: from characters to bytes to byte-level BPE (chapter 02, tokenization).

A language model reads integers, not text. The book turns text into token ids
and back in two ways, one file each, as minbpe does:

* :class:`CharTokenizer` (here), the baseline: one id per distinct character of
  a corpus. Simple, but it fails on any character it has not seen.
* :class:`~minillm.bpe.BPETokenizer` (:mod:`minillm.bpe`), byte-level byte-pair
  encoding as in GPT-2: every text is UTF-8 bytes, so nothing is ever unknown,
  and training merges the most frequent adjacent pair into a new token until the
  vocabulary has the requested size.

Both satisfy the :class:`~minillm.tokenizer_base.Tokenizer` protocol, which is
what code that only needs *a* tokenizer (the data pipeline, generation,
fine-tuning) takes. :func:`load_tokenizer` reads either back from its JSON file
or from a checkpoint or corpus folder (:func:`tokenizer_path`).

This module is where they are imported from: ``from minillm.tokenizer import
BPETokenizer, CharTokenizer, Tokenizer, load_tokenizer, ENDOFTEXT``, and the
patterns and byte spellings of :mod:`minillm.pretokenize` (``GPT2_PATTERN``,
``GPT4_PATTERN``, ``bytes_to_text``, ``text_to_bytes``, ``gpt2_bytes_to_unicode``).
What both tokenizers build on lives in :mod:`minillm.tokenizer_base`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from minillm.bpe import BPETokenizer
from minillm.errors import DataError
from minillm.fileio import atomic_write
from minillm.pretokenize import GPT2_PATTERN, GPT4_PATTERN, bytes_to_text, gpt2_bytes_to_unicode, text_to_bytes
from minillm.tokenizer_base import (
    ENDOFTEXT,
    LEGACY_TOKENIZER_FILE,
    TOKENIZER_FILE,
    SpecialNames,
    Tokenizer,
    as_int_list,
    read_state,
    special_names,
)

#: What readers import from here: its own names, and those of minillm.bpe, minillm.pretokenize and minillm.tokenizer_base.
__all__ = ["BPETokenizer", "CharTokenizer", "ENDOFTEXT", "GPT2_PATTERN", "GPT4_PATTERN", "LEGACY_TOKENIZER_FILE",
           "TOKENIZER_FILE", "SpecialNames", "Tokenizer", "bytes_to_text", "gpt2_bytes_to_unicode",
           "load_tokenizer", "text_to_bytes", "tokenizer_path"]  # fmt: skip


class CharTokenizer:
    """Character-level tokenizer: one id per distinct character of a corpus.

    Ids are assigned in sorted character order, so the same text always gives the
    same vocabulary. Build it with :meth:`from_text`. It has no special tokens, so
    :meth:`encode` and :meth:`encode_ordinary` give the same ids; ``encode`` takes
    (and checks) the same keywords as :meth:`BPETokenizer.encode`.
    """

    def __init__(self, chars: Iterable[str]):
        chars = list(chars)
        if not chars or any(not isinstance(c, str) or len(c) != 1 for c in chars):
            raise DataError("CharTokenizer needs a non-empty list of single characters")
        if len(set(chars)) != len(chars):
            raise DataError("CharTokenizer characters must be distinct")
        self.chars = chars
        self._stoi = {c: i for i, c in enumerate(chars)}

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        """The vocabulary of every distinct character in ``text``, sorted."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        if not text:
            raise DataError("cannot build a vocabulary from an empty text")
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        """Number of distinct characters (ids are 0..vocab_size-1)."""
        return len(self.chars)

    @property
    def special_tokens(self) -> dict[str, int]:
        """Always ``{}``: a character tokenizer has no special tokens."""
        return {}

    def encode(self, text: str, *, allowed_special: SpecialNames = frozenset(),
               disallowed_special: SpecialNames = "all") -> list[int]:
        """Ids of the characters of ``text``; raises ValueError on unseen characters.

        ``allowed_special``/``disallowed_special`` are checked as in
        :meth:`BPETokenizer.encode`; only "all" and empty sets are valid here.
        """
        special_names(allowed_special, {}, "allowed_special")
        special_names(disallowed_special, {}, "disallowed_special")
        return self.encode_ordinary(text)

    def encode_ordinary(self, text: str) -> list[int]:
        """Ids of the characters of ``text`` (the same as :meth:`encode`: there are no special tokens)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        try:
            return [self._stoi[c] for c in text]
        except KeyError:
            unknown = sorted({c for c in text if c not in self._stoi})
            raise DataError(
                f"{len(unknown)} character(s) not in the vocabulary: {unknown[:10]!r}; a "
                "character tokenizer only knows the text it was built from (rebuild it "
                "from a text that contains them, or use the byte-level BPETokenizer)"
            ) from None

    def decode(self, ids: Iterable[int]) -> str:
        """The text of a sequence of ids; raises ValueError on ids out of range."""
        ids = as_int_list(ids)
        bad = [i for i in ids if not 0 <= i < len(self.chars)]
        if bad:
            raise DataError(f"token id {bad[0]} is out of range for vocab_size {self.vocab_size}")
        return "".join(self.chars[i] for i in ids)

    def save(self, path: str | os.PathLike) -> None:
        """Write the vocabulary as JSON (``{"format": "minillm-char", "chars": [...]}``), atomically."""
        state = {"format": "minillm-char", "version": 1, "chars": self.chars}
        atomic_write(path, json.dumps(state, ensure_ascii=False, indent=1) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> CharTokenizer:
        """Read a tokenizer written by :meth:`save`."""
        state = read_state(path, "minillm-char", "CharTokenizer.save")
        return cls(state["chars"])


def tokenizer_path(directory: str | os.PathLike) -> Path | None:
    """The minillm tokenizer file of a checkpoint or corpus folder (new or legacy name), or None."""
    directory = Path(directory)
    if (directory / TOKENIZER_FILE).is_file():
        return directory / TOKENIZER_FILE
    legacy = directory / LEGACY_TOKENIZER_FILE
    if legacy.is_file():
        try:  # a Hugging Face tokenizer.json is not ours
            if json.loads(legacy.read_text(encoding="utf-8")).get("format") in ("minillm-char", "minillm-bpe"):
                return legacy
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            return None
    return None


def load_tokenizer(path: str | os.PathLike) -> CharTokenizer | BPETokenizer:
    """Load a tokenizer saved by :meth:`CharTokenizer.save` or :meth:`BPETokenizer.save`.

    `path` is the file, or a folder holding one (`TOKENIZER_FILE`, or the legacy `tokenizer.json`).
    """
    if Path(path).is_dir():
        found = tokenizer_path(path)
        if found is None:
            raise FileNotFoundError(f"{path} holds no minillm tokenizer ({TOKENIZER_FILE})")
        path = found
    state = read_state(path, None, "CharTokenizer.save or BPETokenizer.save")
    kinds = {"minillm-char": CharTokenizer, "minillm-bpe": BPETokenizer}
    if state.get("format") not in kinds:
        raise DataError(f"{path} is not a minillm tokenizer file (format {state.get('format')!r})")
    return kinds[state["format"]].load(path)
