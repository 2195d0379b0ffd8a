"""Chapter 02's exercise checks: a right answer passes, typical mistakes fail, the stub is not attempted."""

from __future__ import annotations

from collections import Counter

import pytest
import regex
import torch

from minillm.exercises import ExerciseFailed, check
from minillm.tokenizer import GPT2_PATTERN


# -- 2.1 count byte pairs ---------------------------------------------------------------------

def count_pairs(text):
    counts = Counter()
    for chunk in regex.findall(GPT2_PATTERN, text):
        b = list(chunk.encode("utf-8"))
        for i in range(len(b) - 1):
            counts[b[i], b[i + 1]] += 1
    return counts


def pairs_across_chunks(text):  # forgets pre-tokenization: pairs span chunk edges
    b = text.encode("utf-8")
    return Counter(zip(b, b[1:]))


def pairs_of_characters(text):  # code points instead of UTF-8 bytes
    counts = Counter()
    for chunk in regex.findall(GPT2_PATTERN, text):
        c = [ord(ch) for ch in chunk]
        counts.update(zip(c, c[1:]))
    return counts


def pairs_without_overlaps(text):  # 'aaa' counted once
    counts = Counter()
    for chunk in regex.findall(GPT2_PATTERN, text):
        b, i = chunk.encode("utf-8"), 0
        while i < len(b) - 1:
            counts[b[i], b[i + 1]] += 1
            i += 2 if b[i] == b[i + 1] else 1
    return counts


def test_2_1_count_pairs():
    assert check("2.1", count_pairs) is True
    for wrong in (pairs_across_chunks, pairs_of_characters, pairs_without_overlaps):
        with pytest.raises(ExerciseFailed):
            check("2.1", wrong)


# -- 2.2 one merge step -----------------------------------------------------------------------

def merge(ids, pair, new_id):
    out, i = [], 0
    while i < len(ids):
        if tuple(ids[i:i + 2]) == tuple(pair):
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def merge_without_skip(ids, pair, new_id):  # replaces the first id but keeps the second
    return [new_id if tuple(ids[i:i + 2]) == tuple(pair) else t for i, t in enumerate(ids)]


def merge_drops_last(ids, pair, new_id):  # a loop to len(ids) - 1 forgets the final id
    out, i = [], 0
    while i < len(ids) - 1:
        if (ids[i], ids[i + 1]) == tuple(pair):
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def merge_in_place(ids, pair, new_id):  # right result, but destroys the caller's list
    i = 0
    while i < len(ids) - 1:
        if (ids[i], ids[i + 1]) == tuple(pair):
            ids[i:i + 2] = [new_id]
        i += 1
    return ids


def test_2_2_merge():
    assert check("2.2", merge) is True
    for wrong in (merge_without_skip, merge_drops_last, merge_in_place):
        with pytest.raises(ExerciseFailed):
            check("2.2", wrong)


# -- 2.3 sliding windows ----------------------------------------------------------------------

def windows(tokens, context_length, stride):
    starts = range(0, len(tokens) - context_length, stride)
    x = torch.stack([tokens[s:s + context_length] for s in starts])
    y = torch.stack([tokens[s + 1:s + context_length + 1] for s in starts])
    return x, y


def windows_unshifted(tokens, context_length, stride):  # y is x: the model would copy its input
    x, _ = windows(tokens, context_length, stride)
    return x, x.clone()


def windows_one_too_few(tokens, context_length, stride):  # range stops one window early
    starts = range(0, len(tokens) - context_length - 1, stride)
    x = torch.stack([tokens[s:s + context_length] for s in starts])
    y = torch.stack([tokens[s + 1:s + context_length + 1] for s in starts])
    return x, y


def windows_ignoring_stride(tokens, context_length, stride):
    return windows(tokens, context_length, context_length)


def test_2_3_windows():
    assert check("2.3", windows) is True
    for wrong in (windows_unshifted, windows_one_too_few, windows_ignoring_stride):
        with pytest.raises(ExerciseFailed):
            check("2.3", wrong)


# -- 2.4 decode ids ---------------------------------------------------------------------------

def decode(vocab, ids):
    return b"".join(vocab[i] for i in ids).decode("utf-8", errors="replace")


def decode_each_token(vocab, ids):  # decodes tokens one by one: a split character becomes several U+FFFD
    return "".join(vocab[i].decode("utf-8", errors="replace") for i in ids)


def decode_strict(vocab, ids):  # raises UnicodeDecodeError on half a character
    return b"".join(vocab[i] for i in ids).decode("utf-8")


def decode_latin1(vocab, ids):
    return b"".join(vocab[i] for i in ids).decode("latin-1")


def test_2_4_decode():
    assert check("2.4", decode) is True
    for wrong in (decode_each_token, decode_strict, decode_latin1):
        with pytest.raises(ExerciseFailed):
            check("2.4", wrong)


@pytest.mark.parametrize("id", ["2.1", "2.2", "2.3", "2.4"])
def test_the_stub_is_not_attempted(id, capsys):
    def stub(*args):
        raise NotImplementedError

    assert check(id, stub) is False
    assert "not attempted yet" in capsys.readouterr().out
