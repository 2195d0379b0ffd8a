"""Tests of minillm.attention: attention math, masks, GQA, positions, KV cache."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from minillm.attention import (
    AttentionConfig,
    CausalSelfAttention,
    KVCache,
    RotaryEmbedding,
    attention_weights,
    causal_mask,
    repeat_kv,
    rotate_half,
    scaled_dot_product_attention,
    sinusoidal_positions,
    softmax,
)


def test_softmax_matches_torch_and_survives_large_logits():
    x = torch.randn(4, 7, dtype=torch.float64)
    torch.testing.assert_close(softmax(x), torch.softmax(x, dim=-1))
    big = torch.tensor([1000.0, 999.0, -1000.0])
    assert torch.isinf(big.exp()).any()  # the naive formula would give inf / inf = nan
    e = math.exp(-1.0)
    torch.testing.assert_close(softmax(big), torch.tensor([1 / (1 + e), e / (1 + e), 0.0]))
    masked = softmax(torch.tensor([0.0, float("-inf"), 0.0]))
    torch.testing.assert_close(masked, torch.tensor([0.5, 0.0, 0.5]))


def test_causal_mask_by_hand():
    expected_square = torch.tensor([[1, 0, 0], [1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    assert torch.equal(causal_mask(3), expected_square)
    # Two new queries after two cached keys: they sit at positions 2 and 3.
    expected_cached = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(causal_mask(2, 4), expected_cached)
    with pytest.raises(ValueError, match="at least as many keys"):
        causal_mask(3, 2)


@pytest.mark.parametrize("mask_kind", ["none", "causal", "cached", "random"])
def test_written_out_attention_matches_torch_sdpa(mask_kind):
    q = torch.randn(2, 3, 5, 8)
    k = torch.randn(2, 3, 9 if mask_kind == "cached" else 5, 8)
    v = torch.randn_like(k)
    t, s = q.size(-2), k.size(-2)
    mask = {
        "none": None,
        "causal": causal_mask(t),
        "cached": causal_mask(t, s),
        "random": (torch.rand(2, 1, t, s) > 0.5) | torch.eye(t, s, dtype=torch.bool),
    }[mask_kind]
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v, mask), expected, atol=1e-5, rtol=1e-5)


def test_repeat_kv_matches_torch_gqa():
    q = torch.randn(2, 6, 5, 4)
    k, v = torch.randn(2, 2, 5, 4), torch.randn(2, 2, 5, 4)
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    got = scaled_dot_product_attention(q, repeat_kv(k, 3), repeat_kv(v, 3), causal_mask(5))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_attention_weights_are_probabilities_and_mask_is_bool():
    w = attention_weights(torch.randn(3, 4, 8), torch.randn(3, 4, 8), causal_mask(4))
    torch.testing.assert_close(w.sum(-1), torch.ones(3, 4))
    assert torch.all(w.triu(1) == 0)
    with pytest.raises(TypeError, match="bool"):
        attention_weights(torch.randn(4, 8), torch.randn(4, 8), torch.ones(4, 4))


def test_dropout_zeroes_or_rescales_each_weight():
    q, k = torch.randn(1, 1, 6, 4), torch.randn(1, 1, 6, 4)
    eye = torch.eye(6).view(1, 1, 6, 6)  # v = identity: the output *is* the weight matrix
    mask = causal_mask(6)
    plain = scaled_dot_product_attention(q, k, eye, mask)
    dropped = scaled_dot_product_attention(q, k, eye, mask, dropout_p=0.5, generator=torch.Generator().manual_seed(1))
    kept = dropped != 0
    assert kept.any() and (~kept & mask).any()
    torch.testing.assert_close(dropped[kept], plain[kept] * 2.0)
    with pytest.raises(ValueError, match="dropout_p"):
        scaled_dot_product_attention(q, k, eye, dropout_p=1.0)


def _layer(**kw) -> CausalSelfAttention:
    return CausalSelfAttention(AttentionConfig(**{"d_model": 32, "n_head": 4, "context_length": 16, **kw})).eval()


@pytest.mark.parametrize("positions", ["none", "rope"])
def test_manual_and_sdpa_paths_agree(positions):
    fast = _layer(n_kv_head=2, positions=positions, attn_impl="sdpa")
    slow = _layer(n_kv_head=2, positions=positions, attn_impl="manual")
    slow.load_state_dict(fast.state_dict())
    x = torch.randn(3, 10, 32)
    torch.testing.assert_close(slow(x), fast(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("impl", ["sdpa", "manual"])
def test_future_tokens_do_not_change_the_past(impl):
    layer = _layer(positions="rope", n_kv_head=1, attn_impl=impl)
    x = torch.randn(2, 8, 32)
    y = x.clone()
    y[:, 5:] = torch.randn(2, 3, 32)
    out_x, out_y = layer(x), layer(y)
    torch.testing.assert_close(out_x[:, :5], out_y[:, :5])
    assert not torch.allclose(out_x[:, 5:], out_y[:, 5:])


def test_multi_head_attention_matches_torch_multihead_attention():
    layer = _layer(bias=True)
    ref = nn.MultiheadAttention(32, 4, bias=True, batch_first=True).eval()
    with torch.no_grad():
        ref.in_proj_weight.copy_(layer.qkv.weight)  # rows: q, k, v, as in our fused projection
        ref.in_proj_bias.copy_(layer.qkv.bias)
        ref.out_proj.weight.copy_(layer.proj.weight)
        ref.out_proj.bias.copy_(layer.proj.bias)
    x = torch.randn(2, 7, 32)
    blocked = ~causal_mask(7)  # nn.MultiheadAttention: True = may NOT attend
    expected, _ = ref(x, x, x, attn_mask=blocked, need_weights=False)
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)


def test_gqa_equals_mha_with_shared_key_value_heads():
    gqa = _layer(n_kv_head=2, bias=False)
    mha = _layer(n_kv_head=4, bias=False)
    d = 8
    q_w, k_w, v_w = gqa.qkv.weight.split([32, 16, 16])
    # MHA whose heads 0,1 use kv head 0 and heads 2,3 use kv head 1.

    def expand(w: torch.Tensor) -> torch.Tensor:
        return w.view(2, 1, d, 32).expand(2, 2, d, 32).reshape(32, 32)

    with torch.no_grad():
        mha.qkv.weight.copy_(torch.cat([q_w, expand(k_w), expand(v_w)]))
        mha.proj.weight.copy_(gqa.proj.weight)
    x = torch.randn(2, 6, 32)
    torch.testing.assert_close(gqa(x), mha(x), atol=1e-5, rtol=1e-5)


def test_attention_config_validation():
    with pytest.raises(ValueError, match="divisible by n_head"):
        AttentionConfig(d_model=30, n_head=4)
    with pytest.raises(ValueError, match="divisible by n_kv_head"):
        AttentionConfig(d_model=32, n_head=4, n_kv_head=3)
    with pytest.raises(ValueError, match="positions"):
        AttentionConfig(positions="alibi")
    with pytest.raises(ValueError, match="attn_impl"):
        AttentionConfig(attn_impl="flash")
    with pytest.raises(ValueError, match="dropout"):
        AttentionConfig(dropout=1.5)
    assert AttentionConfig(n_head=12).kv_heads == 12


def test_sinusoidal_positions_by_hand():
    pe = sinusoidal_positions(5, 6)
    assert pe.shape == (5, 6)
    torch.testing.assert_close(pe[0], torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0, 1.0]))
    p, i = 3, 1  # the pair (2i, 2i+1) at position p
    angle = p / 10000 ** (2 * i / 6)
    torch.testing.assert_close(pe[p, 2:4], torch.tensor([math.sin(angle), math.cos(angle)]))


def test_rope_dot_product_depends_only_on_offset():
    rope = RotaryEmbedding(head_dim=8, max_positions=32, theta=100.0)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)

    def score(m: int, n: int) -> torch.Tensor:
        return (rope(q, start=m) * rope(k, start=n)).sum()

    torch.testing.assert_close(score(5, 2), score(13, 10))
    torch.testing.assert_close(score(0, 0), (q * k).sum())  # position 0 is no rotation
    assert not torch.allclose(score(5, 2), score(5, 3))
    torch.testing.assert_close(rope(q, 7).norm(), q.norm())  # a rotation keeps lengths


def test_rope_matches_transformers_llama():
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    cfg = LlamaConfig(hidden_size=64, num_attention_heads=4, max_position_embeddings=64, rope_theta=500.0)
    q, k = torch.randn(2, 4, 10, 16), torch.randn(2, 4, 10, 16)
    positions = torch.arange(3, 13)[None].expand(2, 10)
    cos, sin = LlamaRotaryEmbedding(cfg)(q, positions)
    q_ref, k_ref = apply_rotary_pos_emb(q, k, cos, sin)
    rope = RotaryEmbedding(16, 64, theta=500.0)
    torch.testing.assert_close(rope(q, start=3), q_ref, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(rope(k, start=3), k_ref, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("positions", ["none", "rope"])
@pytest.mark.parametrize("impl", ["sdpa", "manual"])
def test_kv_cache_matches_full_forward(positions, impl):
    layer = _layer(n_kv_head=2, positions=positions, attn_impl=impl)
    x = torch.randn(2, 9, 32)
    full = layer(x)
    cache = KVCache(1, 2, 2, 8, max_len=16)
    pieces = []
    for a, b in [(0, 4), (4, 5), (5, 9)]:  # a prompt, one token, then a chunk
        pieces.append(layer(x[:, a:b], kv_cache=cache))
        cache.advance(b - a)
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)


def test_kv_cache_rewind_reset_and_overflow():
    layer = _layer(positions="rope")
    x, y = torch.randn(1, 5, 32), torch.randn(1, 2, 32)
    cache = KVCache(1, 1, 4, 8, max_len=6)
    layer(x, kv_cache=cache)
    cache.advance(5)
    cache.rewind(2)  # forget x[:, 3:]; continue with y instead
    assert cache.length == 3
    out = layer(y, kv_cache=cache)
    cache.advance(2)
    expected = layer(torch.cat([x[:, :3], y], dim=1))[:, 3:]
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="full"):
        layer(x, kv_cache=cache)
    with pytest.raises(ValueError, match="rewind"):
        cache.rewind(9)
    cache.reset()
    assert cache.length == 0
    torch.testing.assert_close(layer(y, kv_cache=cache), layer(y), atol=1e-5, rtol=1e-5)


def test_rotate_half_by_hand():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert torch.equal(rotate_half(x), torch.tensor([-3.0, -4.0, 1.0, 2.0]))
