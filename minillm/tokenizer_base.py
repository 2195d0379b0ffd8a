"""What every tokenizer shares (chapter 02): the `Tokenizer` protocol, file names, argument checks.

:mod:`minillm.tokenizer` is where the book's tokenizers are imported from; this
module is the base the two of them build on, like minbpe's ``base.py``:

* :class:`Tokenizer`, the protocol that code needing only *a* tokenizer (the
  data pipeline, generation, fine-tuning) takes;
* the special end-of-text token's text and the tokenizer file's name in a
  checkpoint or corpus folder;
* three checks both tokenizers make: a saved file's JSON and format
  (:func:`read_state`), ``allowed_special``/``disallowed_special`` arguments
  (:func:`special_names`) and the token ids handed to ``decode`` (:func:`as_int_list`).
"""

from __future__ import annotations

import json
import operator
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

from minillm.errors import ConfigError, DataError

ENDOFTEXT = "<|endoftext|>"
#: minillm's own tokenizer file in a checkpoint or corpus folder. Not "tokenizer.json":
#: that name belongs to Hugging Face's tokenizers, and `minillm.hf.export_hf` writes one.
TOKENIZER_FILE = "minillm_tokenizer.json"
LEGACY_TOKENIZER_FILE = "tokenizer.json"  # the name minillm used before; still read

#: What ``allowed_special`` / ``disallowed_special`` accept: "all" or a set of special-token names.
SpecialNames = Literal["all"] | Iterable[str]


@runtime_checkable
class Tokenizer(Protocol):
    """What minillm needs from a tokenizer; :class:`~minillm.tokenizer.CharTokenizer` and :class:`~minillm.bpe.BPETokenizer` have it.

    Ids are ``0..vocab_size-1``. ``encode`` follows tiktoken's rules for special
    tokens: those in ``allowed_special`` ("all" or a set of names) become their
    single id, any in ``disallowed_special`` ("all": every one not allowed) found
    in the text raises ValueError, the rest is encoded as ordinary text.
    ``encode_ordinary`` encodes special-token text as ordinary text.
    """

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included."""

    @property
    def special_tokens(self) -> dict[str, int]:
        """Special token text -> id (empty if the tokenizer has none)."""

    def encode(self, text: str, *, allowed_special: SpecialNames = frozenset(),
               disallowed_special: SpecialNames = "all") -> list[int]:
        """Token ids of ``text``."""

    def encode_ordinary(self, text: str) -> list[int]:
        """Token ids of ``text``, special-token text included as ordinary text."""

    def decode(self, ids: Iterable[int]) -> str:
        """The text of a sequence of ids."""

    def save(self, path: str | os.PathLike) -> None:
        """Write the tokenizer to a JSON file that :func:`minillm.tokenizer.load_tokenizer` reads."""


def read_state(path: str | os.PathLike, fmt: str | None, writer: str) -> dict:
    """The JSON object of a saved tokenizer, checked to be of format ``fmt``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no tokenizer file at {path}")
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path} is not a JSON tokenizer file ({err})") from err
    if not isinstance(state, dict) or (fmt is not None and state.get("format") != fmt):
        raise DataError(f"{path} is not a tokenizer written by {writer}")
    return state


def special_names(names: SpecialNames, known: dict[str, int], argument: str) -> frozenset[str]:
    """Validate an ``allowed_special``/``disallowed_special`` argument against the
    special tokens ``known``; "all" means every one of them."""
    if names == "all":
        return frozenset(known)
    if isinstance(names, str):
        raise TypeError(f"{argument} must be 'all' or a set of special tokens, got the string "
                        f"{names!r}; write {{{names!r}}}")
    names = frozenset(names)
    unknown = names - set(known)
    if unknown:
        has = f"has {sorted(known)}" if known else "has no special tokens"
        raise ConfigError(f"{argument} names unknown special token(s) {sorted(unknown)}; this tokenizer {has}")
    return names


def as_int_list(ids) -> list[int]:
    """A list of Python ints from a list, tuple, tensor or array of integers."""
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    if isinstance(ids, (int, str, bytes)):
        raise TypeError(f"ids must be a sequence of integers, got {type(ids).__name__}")
    try:
        return [operator.index(i) for i in ids]  # also numpy and 0-d torch integers
    except TypeError:
        bad = next(i for i in ids if not hasattr(i, "__index__"))
        raise TypeError(f"token ids must be integers, got {bad!r} ({type(bad).__name__})") from None
