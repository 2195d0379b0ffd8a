"""The byte-level BPE tokenizer of GPT-2 (chapter 02), trained here or read from GPT-2's files.

:class:`BPETokenizer` is byte-level byte-pair encoding as in GPT-2. Every text is a
sequence of UTF-8 bytes (ids 0..255 in a trained vocabulary), so nothing is ever
unknown; training then *merges* the most frequent adjacent pair of tokens into a
new token, again and again, until the vocabulary has the requested size.

Encoding a text with BPE takes four steps:

1. split off the special tokens (``<|endoftext|>``...) that the caller allows;
2. pre-tokenize each remaining part with a regular expression (:data:`GPT2_PATTERN`
   or the GPT-4 style ``GPT4_PATTERN``) into chunks such as ``" the"``,
   ``"'s"``, ``"  "``; merges never cross a chunk boundary;
3. turn each chunk into its UTF-8 bytes, one token per byte;
4. apply the learned merges, lowest rank (earliest learned) first, until no
   adjacent pair has a merge. A chunk that is itself a token (most are) is that
   token, without merging (:func:`minillm.bpe_merges.tokens_that_come_back` says
   why that is exact), and a per-chunk cache makes repeated words cost a dict lookup.

The same class serves a vocabulary trained here (:meth:`BPETokenizer.train`) and
GPT-2's published one (:meth:`BPETokenizer.from_gpt2`), whose ids are *not* in byte
order: a tokenizer is a table ``id -> bytes`` plus a list of merges
``(left id, right id, merged id)`` in priority order, plus the special tokens.
:meth:`BPETokenizer.save` writes that as human-readable JSON, and
:meth:`BPETokenizer.to_tiktoken` hands it to tiktoken (same ids, encoded in Rust).

What needs no tokenizer state lives in modules beside this one:
:mod:`minillm.pretokenize` (step 2's patterns, and bytes spelled as text),
:mod:`minillm.bpe_merges` (training's merge loop, step 4's merge loops and its table
of whole tokens) and :mod:`minillm.tokenizer_base` (the protocol and the checks every
tokenizer makes). Readers import the class from :mod:`minillm.tokenizer`, with
the character tokenizer and the loader.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

import regex
import tiktoken

from minillm import data
from minillm.bpe_merges import learn_merges, merge_long_piece, merge_piece, tokens_that_come_back, whole_tokens
from minillm.errors import ConfigError, DataError
from minillm.fileio import atomic_write
from minillm.pretokenize import (
    _ASTRAL,
    _SAFE_CUT,
    GPT2_PATTERN,
    PATTERNS,
    _compile_pattern,
    _gpt2_pattern_re,
    _inside_special,
    _utf8,
    bytes_to_text,
    gpt2_bytes_to_unicode,
    text_to_bytes,
)
from minillm.tokenizer_base import ENDOFTEXT, SpecialNames, as_int_list, read_state, special_names

#: Pieces of more bytes than this are merged by BPETokenizer._bpe_long (a heap), the
#: rest by BPETokenizer._bpe (two short lists), which is faster for short pieces.
_LONG_PIECE = 64


class BPETokenizer:
    """Byte-level BPE tokenizer with tiktoken's encode/decode semantics.

    Args:
        vocab: ``vocab[i]`` is the bytes of token ``i`` (for special tokens: their
            UTF-8 text). Must contain every single byte among its non-special ids.
        merges: ``(left, right, merged)`` id triples in priority order (first =
            applied first); ``vocab[merged] == vocab[left] + vocab[right]``.
        special_tokens: special token text -> id; never produced by merges.
        pattern: ``"gpt2"``, ``"gpt4"`` or a custom pre-tokenization regex (with
            non-capturing groups only) for the ``regex`` module.
        cache_size: at most this many chunk encodings are cached (then the cache
            is emptied and refilled).
    """

    def __init__(self, vocab: list[bytes], merges: list[tuple[int, int, int]],
                 special_tokens: dict[str, int] | None = None, pattern: str = "gpt2",
                 cache_size: int = 100_000):
        special_tokens = dict(special_tokens or {})
        self.pattern = PATTERNS.get(pattern, pattern)
        self._pat = _compile_pattern(self.pattern)
        self._vocab = [bytes(b) for b in vocab]
        n = len(self._vocab)
        for name, i in special_tokens.items():
            if not isinstance(name, str) or not name:
                raise DataError(f"special tokens must be non-empty strings, got {name!r}")
            if not 0 <= i < n or self._vocab[i] != name.encode("utf-8"):
                raise DataError(f"special token {name!r} needs vocab[{i}] == its UTF-8 bytes")
        special_ids = set(special_tokens.values())
        if len(special_ids) != len(special_tokens):
            raise DataError(f"special tokens need distinct ids, got {special_tokens}")
        byte_ids = {b[0]: i for i, b in enumerate(self._vocab) if len(b) == 1 and i not in special_ids}
        if len(byte_ids) != 256:
            missing = sorted(set(range(256)) - set(byte_ids))[:5]
            raise DataError(f"a byte-level vocabulary needs all 256 single bytes; missing e.g. {missing}")
        self._byte_ids = [byte_ids[b] for b in range(256)]
        self.merges = [tuple(m) for m in merges]
        self._ranks: dict[tuple[int, int], int] = {}
        for rank, (a, b, m) in enumerate(self.merges):
            if not all(0 <= i < n for i in (a, b, m)) or self._vocab[m] != self._vocab[a] + self._vocab[b]:
                raise DataError(f"merge #{rank} {(a, b, m)} does not match the vocabulary")
            self._ranks.setdefault((a, b), rank)
        self._merged = [m for _, _, m in self.merges]
        if special_ids & set(self._merged):
            raise DataError("a special token's id is also the result of a merge; give it its own id")
        self.special_tokens = special_tokens
        if not isinstance(cache_size, int) or cache_size < 0:
            raise DataError(f"cache_size must be a non-negative int, got {cache_size!r}")
        self.cache_size = cache_size
        self._cache: dict[str, tuple[int, ...]] = {}
        self._special_res: dict[frozenset[str], regex.Pattern] = {}
        self._back = tokens_that_come_back(self._byte_ids, self.merges, self._ranks)  # None: not known
        self._whole = whole_tokens(self._vocab, self._back)
        self._re = _gpt2_pattern_re() if self.pattern == GPT2_PATTERN else None

    # ----------------------------------------------------------------- training
    @classmethod
    def train(cls, text: str | Iterable[str], vocab_size: int,
              special_tokens: Iterable[str] = (ENDOFTEXT,), pattern: str = "gpt2") -> BPETokenizer:
        """Learn a byte-level BPE vocabulary of ``vocab_size`` tokens from ``text``.

        ``text`` is one string or an iterable of strings (documents). The training
        text is first split on the special tokens (so they are never merged or
        learned across), then pre-tokenized with ``pattern``; training works on
        the unique chunks and their counts. Ids: 0..255 are the bytes, then one id
        per merge in the order learned, then the special tokens.

        Each step merges the most frequent adjacent pair (overlapping pairs such
        as the two ``aa`` in ``aaa`` both count); **ties go to the smallest
        (left id, right id) pair**. Pair counts are updated incrementally: only
        the chunks that contain the merged pair are revisited (pair -> chunk ids),
        and a heap with lazy invalidation finds the next best pair. If fewer
        pairs remain than requested merges, training stops early with a warning.
        """
        texts = [text] if isinstance(text, str) else text
        if isinstance(texts, (bytes, bytearray)) or not isinstance(texts, Iterable):
            raise TypeError(f"text must be a str or an iterable of str, got {type(text).__name__}")
        if isinstance(special_tokens, str):
            raise TypeError(f"special_tokens must be a list of strings; write [{special_tokens!r}]")
        specials = list(special_tokens)
        if any(not isinstance(s, str) or not s for s in specials) or len(set(specials)) != len(specials):
            raise DataError(f"special_tokens must be distinct non-empty strings, got {specials!r}")
        if not isinstance(vocab_size, int) or vocab_size < 256 + len(specials):
            raise DataError(f"vocab_size must be an int >= 256 + {len(specials)} special token(s) "
                             f"= {256 + len(specials)}, got {vocab_size!r}")
        pat = _compile_pattern(PATTERNS.get(pattern, pattern))
        split = regex.compile("|".join(map(regex.escape, sorted(specials, key=len, reverse=True))))
        chunk_counts: Counter[str] = Counter()
        for doc in texts:
            if not isinstance(doc, str):
                raise TypeError(f"training texts must be str, got {type(doc).__name__}")
            for part in split.split(doc) if specials else [doc]:
                chunk_counts.update(pat.findall(part))
        if not chunk_counts:
            raise DataError("the training text is empty (after removing special tokens)")
        words = [list(_utf8(chunk)) for chunk in chunk_counts]
        freqs = list(chunk_counts.values())
        merges = learn_merges(words, freqs, vocab_size - 256 - len(specials))
        vocab = [bytes([b]) for b in range(256)]
        for a, b, _ in merges:
            vocab.append(vocab[a] + vocab[b])
        special_ids = {s: len(vocab) + k for k, s in enumerate(specials)}
        vocab += [s.encode("utf-8") for s in specials]
        return cls(vocab, merges, special_ids, pattern)

    # ------------------------------------------------------------ GPT-2 loading
    @classmethod
    def from_gpt2(cls, directory: str | os.PathLike | None = None) -> BPETokenizer:
        """GPT-2's tokenizer from ``encoder.json`` and ``vocab.bpe`` in ``directory``
        (default: the ``gpt2`` data set of :func:`minillm.data.download`).

        Both files spell bytes with :func:`gpt2_bytes_to_unicode`; ids come from
        ``encoder.json`` and merge priority from the line order of ``vocab.bpe``.
        """
        if directory is None:
            directory = data.download("gpt2")
        directory = Path(directory)
        paths = [directory / "encoder.json", directory / "vocab.bpe"]
        for p in paths:
            if not p.is_file():
                raise FileNotFoundError(f"{p} not found; pass the folder holding GPT-2's encoder.json "
                                        "and vocab.bpe, or None to use minillm.data.download('gpt2')")
        encoder: dict[str, int] = json.loads(paths[0].read_text(encoding="utf-8"))
        byte_of = {ch: b for b, ch in gpt2_bytes_to_unicode().items()}
        specials = {s: i for s, i in encoder.items() if s == ENDOFTEXT}
        vocab = [b""] * (max(encoder.values()) + 1)
        for s, i in encoder.items():
            vocab[i] = s.encode("utf-8") if s in specials else bytes(byte_of[ch] for ch in s)
        merges = []
        for line in paths[1].read_text(encoding="utf-8").split("\n")[1:]:  # line 0: "#version"
            if line:
                left, right = line.split(" ")
                merges.append((encoder[left], encoder[right], encoder[left + right]))
        return cls(vocab, merges, specials, "gpt2")

    # ---------------------------------------------------------------- encoding
    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included (ids are 0..vocab_size-1)."""
        return len(self._vocab)

    def _bpe(self, piece: bytes) -> tuple[int, ...]:
        """Token ids of one pre-tokenized chunk (step 4): its bytes, then the merges, lowest rank first.

        :func:`~minillm.bpe_merges.merge_piece` on this tokenizer's merges, or for a
        piece of more than ``_LONG_PIECE`` bytes :meth:`_bpe_long` (same result).
        """
        if len(piece) > _LONG_PIECE:
            return self._bpe_long(piece)
        return merge_piece(piece, self._byte_ids, self._ranks, self._merged)

    def _bpe_long(self, piece: bytes) -> tuple[int, ...]:
        """:meth:`_bpe` in O(n log n) for a piece of n bytes: :func:`~minillm.bpe_merges.merge_long_piece`."""
        return merge_long_piece(piece, self._byte_ids, self._ranks, self._merged)

    def pre_tokenize(self, text: str) -> list[str]:
        """The chunks of ``text`` (step 2 of encoding), e.g. ``["Hello", ",", " world"]``.

        With GPT-2's pattern, text without characters beyond U+FFFF is split by
        the built-in ``re`` (:func:`_gpt2_pattern_re`, same chunks, faster).
        """
        if self._re is not None and (text.isascii() or not _ASTRAL.search(text)):
            return self._re.findall(text)
        return self._pat.findall(text)

    def encode_ordinary(self, text: str) -> list[int]:
        """Ids of ``text`` with special-token text encoded as ordinary text.

        Each chunk is, in this order: a token itself
        (:func:`~minillm.bpe_merges.whole_tokens`), in the cache, or run through
        :meth:`_bpe` and cached.
        """
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        ids: list[int] = []
        cache, cache_size, bpe = self._cache, self.cache_size, self._bpe
        whole, cached = self._whole.get, cache.get
        for chunk in self.pre_tokenize(text):
            toks = whole(chunk) or cached(chunk)
            if toks is None:
                toks = bpe(_utf8(chunk))
                if len(cache) >= cache_size:
                    cache.clear()
                if cache_size:
                    cache[chunk] = toks
            ids += toks
        return ids

    def clear_cache(self) -> None:
        """Forget the cached chunk encodings (e.g. to time a cold encode)."""
        self._cache.clear()

    def _special_re(self, names: frozenset[str]) -> regex.Pattern:
        if names not in self._special_res:
            alternation = "|".join(map(regex.escape, sorted(names, key=len, reverse=True)))
            self._special_res[names] = regex.compile(alternation)
        return self._special_res[names]

    def _resolve(self, allowed_special, disallowed_special) -> tuple[frozenset[str], frozenset[str]]:
        allowed = special_names(allowed_special, self.special_tokens, "allowed_special")
        if disallowed_special == "all":
            return allowed, frozenset(self.special_tokens) - allowed
        return allowed, special_names(disallowed_special, self.special_tokens, "disallowed_special")

    def encode(self, text: str, *, allowed_special: SpecialNames = frozenset(),
               disallowed_special: SpecialNames = "all") -> list[int]:
        """Token ids of ``text``, with tiktoken's rules for special tokens.

        ``allowed_special`` ("all" or a set) are encoded as their single id. Any
        ``disallowed_special`` ("all" = every special token not allowed; ``()`` =
        none) found in ``text`` raises ValueError; other special-token text is
        encoded as ordinary text.
        """
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        allowed, disallowed = self._resolve(allowed_special, disallowed_special)
        if disallowed and (m := self._special_re(disallowed).search(text)):
            raise DataError(
                f"the text contains the special token {m.group()!r}, which is disallowed. To "
                f"encode it as its special id pass allowed_special={{{m.group()!r}}} (or 'all'); "
                "to encode it as ordinary text pass disallowed_special=() (or a set without it)"
            )
        if not allowed:
            return self.encode_ordinary(text)
        ids: list[int] = []
        start = 0
        for m in self._special_re(allowed).finditer(text):
            ids += self.encode_ordinary(text[start : m.start()])
            ids.append(self.special_tokens[m.group()])
            start = m.end()
        return ids + self.encode_ordinary(text[start:])

    def encode_iterable(self, texts: Iterable[str], *, allowed_special: SpecialNames = frozenset(),
                        disallowed_special: SpecialNames = "all") -> Iterator[int]:
        """Yield the ids of the concatenation of ``texts`` (e.g. the lines of a file),
        exactly as :meth:`encode` would give them for the whole text.

        The text is buffered and encoded up to the last *safe cut*: right after a
        letter or digit followed by whitespace, or after a non-space followed by a
        space or tab. No chunk of the GPT-2 or GPT-4 pattern spans such a position
        and neither looks past it, so cutting there cannot change the result (a
        custom pattern must have the same property). A cut inside a special token
        is skipped. Memory is bounded by the longest piece plus the longest stretch
        of text without a safe cut, not by the total size.
        """
        allowed, disallowed = self._resolve(allowed_special, disallowed_special)
        specials = allowed | disallowed
        buffer = ""
        for piece in texts:
            if not isinstance(piece, str):
                raise TypeError(f"encode_iterable needs str pieces, got {type(piece).__name__}")
            searched_from = max(len(buffer) - 1, 0)  # earlier text held no safe cut
            buffer += piece
            m = _SAFE_CUT.search(buffer, searched_from)
            if m is None:
                continue
            cut = m.start() + 1
            if specials and _inside_special(buffer, cut, specials):
                continue
            yield from self.encode(buffer[:cut], allowed_special=allowed, disallowed_special=disallowed)
            buffer = buffer[cut:]
        if buffer:
            yield from self.encode(buffer, allowed_special=allowed, disallowed_special=disallowed)

    # ---------------------------------------------------------------- decoding
    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The raw bytes of a sequence of ids (list, tuple, tensor or array)."""
        ids = as_int_list(ids)
        n = len(self._vocab)
        if ids and not (0 <= min(ids) and max(ids) < n):
            bad = next(i for i in ids if not 0 <= i < n)
            raise DataError(f"token id {bad} is out of range for vocab_size {n} (valid ids: 0..{n - 1})")
        return b"".join([self._vocab[i] for i in ids])

    def decode(self, ids: Iterable[int]) -> str:
        """The text of a sequence of ids; byte sequences that are not valid UTF-8
        (e.g. half a character) become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes of one token."""
        return self.decode_bytes([token_id])

    def visualize(self, text: str, **encode_kwargs) -> list[tuple[int, bytes]]:
        """``(id, bytes)`` for every token of ``text``: shows where tokens begin and end."""
        return [(i, self._vocab[i]) for i in self.encode(text, **encode_kwargs)]

    # ------------------------------------------------------------ export
    def mergeable_ranks(self) -> dict[bytes, int]:
        """``token bytes -> id`` of every ordinary (non-special) token.

        This is the table tiktoken calls *mergeable ranks*, and (spelled with
        :func:`gpt2_bytes_to_unicode`) the vocabulary of a Hugging Face BPE
        tokenizer. Raises ConfigError if two tokens have the same bytes: a table
        keyed by bytes cannot hold both.
        """
        specials = set(self.special_tokens.values())
        ranks: dict[bytes, int] = {}
        for i, b in enumerate(self._vocab):
            if i in specials:
                continue
            if b in ranks:
                raise ConfigError(f"tokens {ranks[b]} and {i} have the same bytes {b!r}; a table keyed by "
                                  "token bytes (tiktoken, Hugging Face) cannot hold both")
            ranks[b] = i
        return ranks

    def to_tiktoken(self, name: str = "minillm") -> tiktoken.Encoding:
        """This tokenizer as a ``tiktoken.Encoding`` that gives the same ids (and encodes in Rust).

        tiktoken keeps no list of merges: within a chunk it repeatedly merges the
        adjacent pair whose *concatenated bytes* have the lowest rank, a token's
        rank is its id, and a chunk whose bytes are a token is that token at
        once. That reproduces our rule (lowest merge rank first) when

        * ordinary tokens have distinct bytes (see :meth:`mergeable_ranks`);
        * every ordinary token is a single byte or made by exactly one merge
          (tiktoken would also build a token that no merge makes);
        * merged ids increase with merge rank (tiktoken's priority is the id),
          and a merged token's id is greater than its parts' ids;
        * every ordinary token comes back: our merge loop turns its bytes into
          that one token (with ``b c``, ``a b``, ``ab c`` it turns ``abc`` into
          ``a`` + ``bc``, tiktoken into ``abc``). This is the set of
          :func:`~minillm.bpe_merges.tokens_that_come_back`, computed once per
          tokenizer; where it is not known (a merge with a special token as a
          part; the conditions above rule out every other cause) the merge loop
          runs on each token's bytes instead. Tokens that are not valid UTF-8
          are checked too, as they can be the middle of a chunk; so is a token
          that no chunk can hold (there the check refuses more than it must).

        Why these suffice, mid-chunk too: merges of listed pairs come in the same
        order under both rules (a merge creates only pairs of later rank), so the
        two part only where tiktoken would join adjacent x, y whose bytes form a
        token t not made by ``(x, y)``. No token then crosses the edges of t's
        bytes, so our loop on t's bytes alone makes the same merges inside them,
        reaches x, y and stops: t would not come back.

        Vocabularies learned by BPE (:meth:`train`, GPT-2's) meet these; any
        other raises ConfigError saying which condition fails. So does a custom
        ``pattern`` that tiktoken's regex engine (fancy-regex) does not accept.
        """
        ranks = self.mergeable_ranks()
        made = Counter(self._merged)
        twice = [m for m, k in made.items() if k > 1]
        if twice:
            raise ConfigError(f"token {twice[0]} is made by {made[twice[0]]} merges; tiktoken ranks a token "
                              "once, by its bytes, so it can only have one")
        singles = {self._byte_ids[b] for b in range(256)}
        unmade = sorted(set(ranks.values()) - singles - set(made))
        if unmade:
            raise ConfigError(f"token {unmade[0]} ({self._vocab[unmade[0]]!r}) is neither a byte nor made by a "
                              "merge: our encoder never produces it, tiktoken would (it merges by bytes)")
        previous = -1
        for rank, (a, b, m) in enumerate(self.merges):
            if m <= max(a, b, previous):
                raise ConfigError(
                    f"merge #{rank} {(a, b, m)} gives token {m}, which is not greater than its parts' ids and the "
                    f"ids made by earlier merges ({max(a, b, previous)}); tiktoken applies merges in the order of "
                    "the merged token's id, so a tokenizer whose merged ids do not grow with merge rank cannot be "
                    "expressed")
            previous = m
        back = self._back
        if back is None:  # not known without running the merge loop (see the docstring)
            back = {t for t in ranks.values() if self._bpe(self._vocab[t]) == (t,)}
        lost = sorted(set(ranks.values()) - back)
        if lost:
            t = lost[0]
            raise ConfigError(
                f"token {t} ({self._vocab[t]!r}) does not come back: our encoder splits its bytes into the tokens "
                f"{list(self._bpe(self._vocab[t]))}, tiktoken would give the token itself (it merges any adjacent "
                "pair whose bytes are a token)")
        try:
            return tiktoken.Encoding(name, pat_str=self.pattern, mergeable_ranks=ranks,
                                     special_tokens=dict(self.special_tokens), explicit_n_vocab=self.vocab_size)
        except ValueError as err:  # tiktoken's regex engine rejects the pattern
            raise ConfigError(f"tiktoken cannot use this tokenizer's pattern {self.pattern!r}: {err}") from err

    # ------------------------------------------------------------- save / load
    def save(self, path: str | os.PathLike) -> None:
        """Write the tokenizer as JSON, one token and one merge per line; tokens are
        written with :func:`bytes_to_text`. The write is atomic."""
        head = {"format": "minillm-bpe", "version": 1, "pattern": self.pattern,
                "special_tokens": self.special_tokens}
        tokens = ",\n".join(json.dumps(bytes_to_text(b), ensure_ascii=False) for b in self._vocab)
        merges = ",\n".join(json.dumps(list(m)) for m in self.merges)
        body = json.dumps(head, ensure_ascii=False, indent=1)[:-2]
        text = f'{body},\n "tokens": [\n{tokens}\n],\n "merges": [\n{merges}\n]\n}}\n'
        atomic_write(path, text)

    @classmethod
    def load(cls, path: str | os.PathLike) -> BPETokenizer:
        """Read a tokenizer written by :meth:`save`."""
        state = read_state(path, "minillm-bpe", "BPETokenizer.save")
        vocab = [text_to_bytes(t) for t in state["tokens"]]
        return cls(vocab, [tuple(m) for m in state["merges"]], state["special_tokens"], state["pattern"])

    def __repr__(self) -> str:
        return (f"BPETokenizer(vocab_size={self.vocab_size}, merges={len(self.merges)}, "
                f"special_tokens={sorted(self.special_tokens)})")
