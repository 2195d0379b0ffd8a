"""Chapter 02's exercises: count byte pairs, apply one merge, cut sliding windows, decode ids.

Each check runs the reader's function on inputs the reader did not choose
(non-ASCII text, repeated letters, random id sequences, random lengths) and
compares it with the package: `minillm.bpe.BPETokenizer` (its training
and its decoder) and `minillm.tokens.SlidingWindowDataset`.
"""

from __future__ import annotations

import random
from collections import Counter
from functools import lru_cache

import regex
import torch

from minillm.exercises import ExerciseFailed, assert_close, exercise, expect
from minillm.tokenizer import GPT2_PATTERN, BPETokenizer
from minillm.tokens import SlidingWindowDataset

#: Texts the checks use: English, repeated letters (overlapping pairs), accents, CJK, emoji, code, digits.
TEXTS = (
    "low low low low low lower lower newest newest newest newest newest newest widest widest widest",
    "aaaa aaa baaab aa a",
    "naïve café, déjà vu: the café's crème brûlée",
    "中文 中文字 😀😀 🤖 rocket 🚀",
    "def f(x):\n    return x + 1\n\n\n# 2024-01-31 1,000,000\n",
)


def _call(fn, *args):
    """The reader's fn(*args); an exception other than NotImplementedError becomes ExerciseFailed."""
    try:
        return fn(*args)
    except NotImplementedError:
        raise
    except ExerciseFailed:
        raise
    except Exception as err:  # noqa: BLE001 - the reader's code may raise anything
        raise ExerciseFailed(f"calling it raised {type(err).__name__}: {err}") from None


def reference_pair_counts(text: str) -> dict[tuple[int, int], int]:
    """Adjacent byte pairs of `text`, counted inside each GPT-2 chunk (overlaps count, chunk edges do not)."""
    counts: Counter = Counter()
    for chunk in regex.findall(GPT2_PATTERN, text):
        b = chunk.encode("utf-8")
        counts.update(zip(b, b[1:]))
    return dict(counts)


@exercise("2.1", "count byte pairs")
def _count_pairs(count_pairs) -> str:
    for text in TEXTS:
        got = _call(count_pairs, text)
        expect(isinstance(got, dict), f"count_pairs({text[:20]!r}...) should return a dict (a Counter is fine), "
                                      f"got {type(got).__name__}")
        got = {tuple(int(i) for i in k): int(v) for k, v in got.items() if v}
        want = reference_pair_counts(text)
        if got != want:
            missing = sorted(set(want) - set(got))[:3]
            extra = sorted(set(got) - set(want))[:3]
            wrong = sorted(p for p in set(got) & set(want) if got[p] != want[p])[:3]
            raise ExerciseFailed(
                f"on {text[:40]!r}: missing pairs {missing}, pairs that should not be there {extra}, "
                f"wrong counts {[(p, got[p], want[p]) for p in wrong]} (pair, yours, expected). Hints: pairs are of "
                "UTF-8 bytes (chunk.encode('utf-8')), not characters; a pair never spans two chunks of "
                "regex.findall(GPT2_PATTERN, text); overlapping pairs all count ('aaa' holds (97, 97) twice).")
        # the most frequent pair, ties to the smallest, is the first merge the package learns
        best = min(got, key=lambda p: (-got[p], p))
        first = BPETokenizer.train(text, 257, special_tokens=()).merges[0]
        expect(best == first[:2], f"the most frequent pair {best} should be BPETokenizer.train's first merge "
                                  f"{first[:2]}")
    return (f"Your counts match on {len(TEXTS)} texts (accents, emoji, code), and each text's most frequent pair is "
            "the first merge BPETokenizer.train learns.")


def reference_merge(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """`ids` with every occurrence of `pair`, scanned left to right, replaced by `new_id` (a new list)."""
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == tuple(pair):
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def _train_with(merge, text: str, n_merges: int) -> list[tuple[int, int, int]]:
    """Naive BPE training (the chapter's mini_bpe) with the reader's `merge` for the merging step."""
    chunks = Counter(regex.findall(GPT2_PATTERN, text))
    words = [(list(c.encode("utf-8")), n) for c, n in chunks.items()]
    merges = []
    for k in range(n_merges):
        pairs: Counter = Counter()
        for w, n in words:
            for p in zip(w, w[1:]):
                pairs[p] += n
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        words = [(list(_call(merge, list(w), best, 256 + k)), n) for w, n in words]
        merges.append((*best, 256 + k))
    return merges


@exercise("2.2", "one merge step")
def _merge(merge) -> str:
    rng = random.Random(2)
    cases = [([1, 2, 1, 2, 1], (1, 2), 9), ([5, 5, 5], (5, 5), 7), ([5, 5, 5, 5], (5, 5), 7), ([3], (3, 3), 4),
             ([], (1, 2), 3), ([1, 2], (1, 2), 300), ([2, 1, 2, 1], (1, 2), 8)]
    for _ in range(40):
        ids = [rng.randrange(3) for _ in range(rng.randrange(0, 12))]
        cases.append((ids, (rng.randrange(3), rng.randrange(3)), 256 + rng.randrange(50)))
    for ids, pair, new in cases:
        before = list(ids)
        got = _call(merge, ids, pair, new)
        expect(ids == before, f"merge changed its input list {before} in place; return a new list instead")
        want = reference_merge(ids, pair, new)
        expect(isinstance(got, (list, tuple)) and [int(i) for i in got] == want,
               f"merge({before}, {pair}, {new}) returned {got}, expected {want}. Hints: scan left to right, "
               "replace a matched pair by new_id and skip both of its ids; overlapping matches ((5, 5) in "
               "[5, 5, 5]) are merged from the left, once; keep the last id when it is not part of a pair.")
    text = TEXTS[0] + " " + TEXTS[2]
    ours = _train_with(merge, text, 30)
    theirs = BPETokenizer.train(text, 256 + 30, special_tokens=()).merges
    expect(ours == theirs, f"training with your merge learned {ours[:5]}..., BPETokenizer.train learned "
                           f"{theirs[:5]}...")
    return (f"Your merge is right on {len(cases)} id lists (overlaps, empty, random), and BPE training with it learns "
            "the same 30 merges as BPETokenizer.train.")


@exercise("2.3", "sliding windows")
def _windows(windows) -> str:
    gen = torch.Generator().manual_seed(3)
    cases = [(10, 3, 3), (10, 3, 1), (9, 4, 4), (5, 4, 4), (13, 4, 2), (20, 5, 7)]
    for _ in range(6):
        T = int(torch.randint(1, 9, (1,), generator=gen))
        n = T + 1 + int(torch.randint(0, 30, (1,), generator=gen))
        cases.append((n, T, int(torch.randint(1, T + 3, (1,), generator=gen))))
    for n, T, stride in cases:
        toks = torch.randint(0, 1000, (n,), generator=gen)
        got = _call(windows, toks.clone(), T, stride)
        expect(isinstance(got, tuple) and len(got) == 2,
               f"windows should return a tuple (x, y), got {type(got).__name__}")
        ds = SlidingWindowDataset(toks, context_length=T, stride=stride)
        want_x = torch.stack([ds[i][0] for i in range(len(ds))])
        want_y = torch.stack([ds[i][1] for i in range(len(ds))])
        x, y = got
        what = f"windows(tokens of length {n}, context_length={T}, stride={stride})"
        expect(isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor), f"{what}: x and y should be tensors")
        expect(tuple(x.shape) == tuple(want_x.shape) and tuple(y.shape) == tuple(want_y.shape),
               f"{what}: shapes x {tuple(x.shape)}, y {tuple(y.shape)}; expected {tuple(want_x.shape)} each "
               f"({len(ds)} windows of {T}). Hint: the last window needs T + 1 tokens (x plus the one target after "
               f"it), and window i starts at i * stride: there are (n - T - 1) // stride + 1 windows.")
        assert_close(x.long(), want_x, f"{what}: x", hint="Window i starts at i * stride.")
        assert_close(y.long(), want_y, f"{what}: y",
                     hint="y is x shifted by one token: tokens[start + 1 : start + T + 1].")
    return f"Your x and y match SlidingWindowDataset on {len(cases)} token sequences, context lengths and strides."


@lru_cache(maxsize=1)
def _decode_tokenizer() -> BPETokenizer:
    """A small BPE whose merges split multi-byte characters across tokens (learned on a few texts)."""
    return BPETokenizer.train(" ".join(TEXTS * 3), 256 + 80)


@exercise("2.4", "decode ids")
def _decode(decode) -> str:
    tok = _decode_tokenizer()
    vocab = [tok.token_bytes(i) for i in range(tok.vocab_size)]
    eot = "<|endoftext|>"
    texts = [TEXTS[2] + eot + TEXTS[3], "🤖" + eot, TEXTS[4], "", eot + eot]
    gpt2_robot = [b"\xf0\x9f", b"\xa4", b"\x96"]  # how GPT-2 cuts 🤖: the bytes of one character in three tokens
    for text in texts:
        ids = tok.encode(text, allowed_special="all")
        got = _call(decode, list(vocab), list(ids))
        expect(got == text, f"decode of the ids of {text!r} gave {got!r}. Hint: join the bytes of all ids first, "
                            "then decode the whole with .decode('utf-8', errors='replace'): a character's bytes "
                            "may be split between tokens.")
    rng = random.Random(4)
    ids = tok.encode(texts[0], allowed_special="all")
    for _ in range(20):  # arbitrary slices can cut a character in half: U+FFFD, as the package
        i = rng.randrange(len(ids))
        j = rng.randrange(i, len(ids) + 1)
        got = _call(decode, list(vocab), ids[i:j])
        expect(got == tok.decode(ids[i:j]), f"decode of ids[{i}:{j}] gave {got!r}, BPETokenizer.decode gives "
                                            f"{tok.decode(ids[i:j])!r}. Hint: errors='replace' turns bytes that "
                                            "are not valid UTF-8 into '\\ufffd', as tiktoken does.")
    robot = _call(decode, gpt2_robot, [0, 1, 2])
    expect(robot == "🤖", f"with GPT-2's three tokens of 🤖 as the vocabulary, decode([0, 1, 2]) gave {robot!r}")
    return (f"Your decode matches BPETokenizer.decode on {len(texts)} texts with <|endoftext|> (exact round trips) "
            "and on 20 slices that cut characters in half.")
