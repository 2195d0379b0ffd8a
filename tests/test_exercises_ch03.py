"""Chapter 03's exercises: a right answer passes, typical mistakes fail, the untouched stub is not attempted."""

from __future__ import annotations

import math

import pytest
import torch

from minillm.exercises import ExerciseFailed, check

# -- 3.1 the causal mask, with a cache -------------------------------------------------------


def mask_right(t: int, s: int) -> torch.Tensor:
    return torch.ones(t, s, dtype=torch.bool).tril(diagonal=s - t)


def mask_strict(t: int, s: int) -> torch.Tensor:  # forgets that a token sees itself
    return torch.ones(t, s, dtype=torch.bool).tril(diagonal=s - t - 1)


def mask_top_left(t: int, s: int) -> torch.Tensor:  # ignores the cached keys' offset
    return torch.ones(t, s, dtype=torch.bool).tril()


def mask_float(t: int, s: int) -> torch.Tensor:  # a 0/1 float mask, not a bool one
    return mask_right(t, s).float()


def mask_upper(t: int, s: int) -> torch.Tensor:  # the future instead of the past
    return torch.ones(t, s, dtype=torch.bool).triu(diagonal=s - t)


def test_3_1():
    assert check("3.1", mask_right) is True
    for wrong in (mask_strict, mask_top_left, mask_float, mask_upper):
        with pytest.raises(ExerciseFailed):
            check("3.1", wrong)


# -- 3.2 scaled dot-product attention ---------------------------------------------------------


def attention_right(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def attention_no_scale(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def attention_wrong_axis(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-2).nan_to_num() @ v


def attention_ignores_mask(q, k, v, mask=None):
    return attention_right(q, k, v, None)


def attention_inverted_mask(q, k, v, mask=None):
    if mask is None:
        return attention_right(q, k, v)
    return attention_right(q, k, v, ~mask | (~mask).all(-1, keepdim=True))


def attention_naive_softmax(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    e = scores.exp()
    return e / e.sum(-1, keepdim=True) @ v


def test_3_2():
    assert check("3.2", attention_right) is True
    for wrong in (attention_no_scale, attention_wrong_axis, attention_ignores_mask, attention_inverted_mask,
                  attention_naive_softmax):
        with pytest.raises(ExerciseFailed):
            check("3.2", wrong)


# -- 3.3 split and merge heads ----------------------------------------------------------------


def split_right(x, n_head):
    b, t, c = x.shape
    return x.reshape(b, t, n_head, c // n_head).permute(0, 2, 1, 3)


def merge_right(z):
    b, h, t, d = z.shape
    return z.permute(0, 2, 1, 3).reshape(b, t, h * d)


def split_direct_view(x, n_head):  # mixes tokens: no transpose
    b, t, c = x.shape
    return x.reshape(b, n_head, t, c // n_head)


def merge_no_transpose(z):
    b, h, t, d = z.shape
    return z.reshape(b, t, h * d)


def test_3_3():
    assert check("3.3", (split_right, merge_right)) is True
    for wrong in [(split_direct_view, merge_right), (split_right, merge_no_transpose),
                  (split_direct_view, merge_no_transpose), split_right]:
        with pytest.raises(ExerciseFailed):
            check("3.3", wrong)


# -- 3.4 RoPE without complex numbers ---------------------------------------------------------


def rope_right(x, start=0, base=10000.0):
    t, d = x.shape[-2], x.shape[-1]
    angles = torch.arange(start, start + t, dtype=torch.float32)[:, None] * base ** (-torch.arange(d // 2) * 2 / d)
    cos, sin = angles.cos(), angles.sin()
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def rope_adjacent_pairs(x, start=0, base=10000.0):  # the original paper's (2i, 2i+1) layout
    t, d = x.shape[-2], x.shape[-1]
    angles = torch.arange(start, start + t, dtype=torch.float32)[:, None] * base ** (-torch.arange(d // 2) * 2 / d)
    cos, sin = angles.cos(), angles.sin()
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).flatten(-2)


def rope_ignores_start(x, start=0, base=10000.0):
    return rope_right(x, 0, base)


def rope_wrong_sign(x, start=0, base=10000.0):  # rotates the other way
    return _rotate(x, start, base, sign=-1)


def _rotate(x, start, base, sign):
    t, d = x.shape[-2], x.shape[-1]
    positions = sign * torch.arange(start, start + t, dtype=torch.float32)[:, None]
    angles = positions * base ** (-torch.arange(d // 2) * 2 / d)
    cos, sin = angles.cos(), angles.sin()
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def rope_wrong_frequencies(x, start=0, base=10000.0):  # base^(-i/D) instead of base^(-2i/D)
    t, d = x.shape[-2], x.shape[-1]
    angles = torch.arange(start, start + t, dtype=torch.float32)[:, None] * base ** (-torch.arange(d // 2) / d)
    cos, sin = angles.cos(), angles.sin()
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def test_3_4():
    assert check("3.4", rope_right) is True
    for wrong in (rope_adjacent_pairs, rope_ignores_start, rope_wrong_sign, rope_wrong_frequencies):
        with pytest.raises(ExerciseFailed):
            check("3.4", wrong)


# -- 3.5 the longest context that fits --------------------------------------------------------


def max_context_right(config, memory_bytes, batch_size, bytes_per_number=2):
    per_position = 2 * config.n_layer * config.kv_heads * (config.d_model // config.n_head) * bytes_per_number
    return memory_bytes // (batch_size * per_position)


def max_context_all_heads(config, memory_bytes, batch_size, bytes_per_number=2):  # ignores GQA
    per_position = 2 * config.n_layer * config.n_head * (config.d_model // config.n_head) * bytes_per_number
    return memory_bytes // (batch_size * per_position)


def max_context_keys_only(config, memory_bytes, batch_size, bytes_per_number=2):  # forgets the values
    return 2 * max_context_right(config, memory_bytes, batch_size, bytes_per_number)


def max_context_float(config, memory_bytes, batch_size, bytes_per_number=2):
    per_position = 2 * config.n_layer * config.kv_heads * (config.d_model // config.n_head) * bytes_per_number
    return memory_bytes / (batch_size * per_position)


def max_context_one_sequence(config, memory_bytes, batch_size, bytes_per_number=2):
    return max_context_right(config, memory_bytes, 1, bytes_per_number)


def test_3_5():
    assert check("3.5", max_context_right) is True
    for wrong in (max_context_all_heads, max_context_keys_only, max_context_float, max_context_one_sequence):
        with pytest.raises(ExerciseFailed):
            check("3.5", wrong)


# -- the stubs ----------------------------------------------------------------------------------


def test_stubs_are_not_attempted(capsys):
    def stub(*args, **kwargs):
        raise NotImplementedError

    for id in ("3.1", "3.2", "3.4", "3.5"):
        assert check(id, stub) is False
    assert check("3.3", (stub, stub)) is False
    assert capsys.readouterr().out.count("not attempted yet") == 5
