"""Appendix A's exercises: a right answer passes, typical mistakes fail, the untouched stub is not attempted."""

from __future__ import annotations

import math

import pytest
import torch

from minillm.exercises import ExerciseFailed, check

# -- A.1 the padding mask, causal or not -------------------------------------------------------


def padding_mask_right(key_padding, causal, T):
    S = key_padding.shape[1]
    allowed = key_padding[:, None, None, :]  # (B, 1, 1, S)
    if causal:
        allowed = allowed & (torch.arange(S)[None, :] <= torch.arange(S - T, S)[:, None])
    return allowed | ~allowed.any(dim=-1, keepdim=True)


def padding_mask_no_rule(key_padding, causal, T):  # a query that sees only padding keeps a row of False
    S = key_padding.shape[1]
    allowed = key_padding[:, None, None, :]
    if causal:
        allowed = allowed & (torch.arange(S)[None, :] <= torch.arange(S - T, S)[:, None])
    return allowed


def padding_mask_ignores_causal(key_padding, causal, T):
    return padding_mask_right(key_padding, False, T)


def padding_mask_top_left(key_padding, causal, T):  # ignores the cached keys' offset
    S = key_padding.shape[1]
    allowed = key_padding[:, None, None, :]
    if causal:
        allowed = allowed & torch.ones(T, S, dtype=torch.bool).tril()
    return allowed | ~allowed.any(dim=-1, keepdim=True)


def padding_mask_queries_too(key_padding, causal, T):  # also masks the padding queries (only fits T = S)
    allowed = key_padding[:, None, None, :] & key_padding[:, None, -T:, None]
    return padding_mask_right(key_padding, causal, T) & allowed


def padding_mask_no_head_axis(key_padding, causal, T):  # (B, T, S): broadcasts the batch over the heads
    return padding_mask_right(key_padding, causal, T)[:, 0]


def test_a_1():
    assert check("A.1", padding_mask_right) is True
    for wrong in (padding_mask_no_rule, padding_mask_ignores_causal, padding_mask_top_left,
                  padding_mask_queries_too, padding_mask_no_head_axis):
        with pytest.raises(ExerciseFailed):
            check("A.1", wrong)
    with pytest.raises(ExerciseFailed, match="every key is masked"):
        check("A.1", padding_mask_no_rule)
    with pytest.raises(ExerciseFailed, match="causal_mask"):
        check("A.1", padding_mask_ignores_causal)
    with pytest.raises(ExerciseFailed, match="does not broadcast"):
        check("A.1", padding_mask_no_head_axis)


# -- A.2 T5's relative position buckets --------------------------------------------------------


def bucket_right(relative_position, bidirectional=True, num_buckets=32, max_distance=128):
    buckets = torch.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets += (relative_position > 0).long() * num_buckets
        distance = relative_position.abs()
    else:
        distance = (-relative_position).clamp(min=0)
    exact = num_buckets // 2
    log_ratio = torch.log(distance.clamp(min=1).float() / exact) / math.log(max_distance / exact)
    far = (exact + (log_ratio * (num_buckets - exact)).long()).clamp(max=num_buckets - 1)
    return buckets + torch.where(distance < exact, distance, far)


def bucket_no_halves(relative_position, bidirectional=True, num_buckets=32, max_distance=128):
    return bucket_right(relative_position.abs().neg(), bidirectional, num_buckets, max_distance)


def bucket_wrong_sign(relative_position, bidirectional=True, num_buckets=32, max_distance=128):  # query - key
    return bucket_right(-relative_position, bidirectional, num_buckets, max_distance)


def bucket_no_clamp(relative_position, bidirectional=True, num_buckets=32, max_distance=128):
    n = num_buckets // 2 if bidirectional else num_buckets
    buckets = (relative_position > 0).long() * n if bidirectional else torch.zeros_like(relative_position)
    distance = relative_position.abs() if bidirectional else (-relative_position).clamp(min=0)
    exact = n // 2
    far = exact + (torch.log(distance.clamp(min=1).float() / exact) / math.log(max_distance / exact)
                   * (n - exact)).long()
    return buckets + torch.where(distance < exact, distance, far)


def bucket_float(relative_position, bidirectional=True, num_buckets=32, max_distance=128):
    return bucket_right(relative_position, bidirectional, num_buckets, max_distance).float()


def test_a_2():
    assert check("A.2", bucket_right) is True
    for wrong in (bucket_no_halves, bucket_wrong_sign, bucket_no_clamp, bucket_float):
        with pytest.raises(ExerciseFailed):
            check("A.2", wrong)
    with pytest.raises(ExerciseFailed, match="two halves"):
        check("A.2", bucket_no_halves)
    with pytest.raises(ExerciseFailed, match="clamp"):
        check("A.2", bucket_no_clamp)


def test_a_2_a_float64_logarithm_passes_too():
    def bucket_float64(relative_position, bidirectional=True, num_buckets=32, max_distance=128):
        out = []
        for r in relative_position.flatten().tolist():
            n = num_buckets // 2 if bidirectional else num_buckets
            side = n if bidirectional and r > 0 else 0
            d = abs(r) if bidirectional else max(-r, 0)
            exact = n // 2
            far = min(n - 1, exact + int(math.log(max(d, 1) / exact) / math.log(max_distance / exact) * (n - exact)))
            out.append(side + (d if d < exact else far))
        return torch.tensor(out).view(relative_position.shape)

    assert check("A.2", bucket_float64) is True


# -- A.3 teacher forcing: shift right ----------------------------------------------------------


def shift_right_right(labels, start_id, pad_id):
    shifted = torch.cat([torch.full_like(labels[:, :1], start_id), labels[:, :-1]], dim=1)
    return torch.where(shifted == -100, pad_id, shifted)


def shift_right_keeps_minus_100(labels, start_id, pad_id):
    return torch.cat([torch.full_like(labels[:, :1], start_id), labels[:, :-1]], dim=1)


def shift_right_in_place(labels, start_id, pad_id):
    labels.masked_fill_(labels == -100, pad_id)
    return shift_right_right(labels, start_id, pad_id)


def shift_right_pad_first(labels, start_id, pad_id):  # starts with pad_id (right only when they are equal)
    return shift_right_right(labels, pad_id, pad_id)


def shift_right_keeps_last(labels, start_id, pad_id):  # T + 1 inputs
    return torch.cat([torch.full_like(labels[:, :1], start_id), labels.clamp(min=pad_id)], dim=1)


def shift_left(labels, start_id, pad_id):
    return shift_right_right(labels.roll(-2, dims=1), start_id, pad_id)


def test_a_3():
    assert check("A.3", shift_right_right) is True
    for wrong in (shift_right_keeps_minus_100, shift_right_in_place, shift_right_pad_first, shift_right_keeps_last,
                  shift_left):
        with pytest.raises(ExerciseFailed):
            check("A.3", wrong)
    with pytest.raises(ExerciseFailed, match="replace it with pad_id"):
        check("A.3", shift_right_keeps_minus_100)
    with pytest.raises(ExerciseFailed, match="in place"):
        check("A.3", shift_right_in_place)
    with pytest.raises(ExerciseFailed, match="starts with start_id"):
        check("A.3", shift_right_pad_first)


# -- A.4 cross-attention, written out ----------------------------------------------------------


def _linear(x, weight, bias):
    return x @ weight.t() + (0 if bias is None else bias)


def cross_attention_right(x, memory, attn, memory_mask, scaled=True, masked=True, project=True):
    B, T, _ = x.shape
    S = memory.shape[1]
    H, Hkv, D = attn.n_head, attn.n_kv_head, attn.head_dim
    w, b = attn.qkv.weight, attn.qkv.bias
    q = _linear(x, w[: H * D], None if b is None else b[: H * D])
    kv = _linear(memory, w[H * D:], None if b is None else b[H * D:])
    k, v = kv[..., : Hkv * D], kv[..., Hkv * D:]
    q = q.view(B, T, H, D).transpose(1, 2)
    k = k.view(B, S, Hkv, D).transpose(1, 2).repeat_interleave(H // Hkv, dim=1)
    v = v.view(B, S, Hkv, D).transpose(1, 2).repeat_interleave(H // Hkv, dim=1)
    scale = attn.config.scale if attn.config.scale is not None else 1 / math.sqrt(D)
    scores = q @ k.transpose(-2, -1) * (scale if scaled else 1 / math.sqrt(D))
    if masked:
        scores = scores.masked_fill(~memory_mask[:, None, None, :], float("-inf"))
    y = (torch.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(B, T, H * D)
    return attn.proj(y) if project else y


def cross_attention_always_sqrt(x, memory, attn, memory_mask):  # ignores attn.config.scale
    return cross_attention_right(x, memory, attn, memory_mask, scaled=False)


def cross_attention_no_mask(x, memory, attn, memory_mask):
    return cross_attention_right(x, memory, attn, memory_mask, masked=False)


def cross_attention_no_proj(x, memory, attn, memory_mask):
    return cross_attention_right(x, memory, attn, memory_mask, project=False)


def cross_attention_self(x, memory, attn, memory_mask):  # keys and values from x: self-attention
    return cross_attention_right(x, x, attn, torch.ones(x.shape[:2], dtype=torch.bool))


def cross_attention_calls_the_layer(x, memory, attn, memory_mask):
    return attn(x, mask=memory_mask, context=memory)


def test_a_4():
    assert check("A.4", cross_attention_right) is True
    for wrong in (cross_attention_always_sqrt, cross_attention_no_mask, cross_attention_no_proj,
                  cross_attention_self, cross_attention_calls_the_layer):
        with pytest.raises(ExerciseFailed):
            check("A.4", wrong)
    with pytest.raises(ExerciseFailed, match="without the memory mask"):
        check("A.4", cross_attention_no_mask)
    with pytest.raises(ExerciseFailed, match="T5 does not scale"):
        check("A.4", cross_attention_always_sqrt)
    with pytest.raises(ExerciseFailed, match="calling the layer itself"):
        check("A.4", cross_attention_calls_the_layer)


def test_the_checks_leave_the_layer_and_the_random_state_alone():
    state = torch.random.get_rng_state()
    assert check("A.1", padding_mask_right) is True
    assert check("A.4", cross_attention_right) is True
    assert torch.equal(torch.random.get_rng_state(), state)


# -- the stubs ---------------------------------------------------------------------------------


def test_an_answer_that_forgets_to_return_is_wrong_not_unattempted():
    def forgets_return(labels, start_id, pad_id):
        shifted = shift_right_right(labels, start_id, pad_id)  # noqa: F841

    with pytest.raises(ExerciseFailed, match="should be a torch.Tensor, got NoneType"):
        check("A.3", forgets_return)
