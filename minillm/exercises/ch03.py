"""Chapter 03's exercises: the causal mask, attention, heads, RoPE and the KV cache's memory.

Every check compares the reader's function with `minillm.attention` (and, for
attention itself, with PyTorch's fused kernel) on shapes, seeds and edge cases
the reader did not choose.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from minillm.attention import (
    AttentionConfig,
    CausalSelfAttention,
    KVCache,
    RotaryEmbedding,
    causal_mask,
    scaled_dot_product_attention,
)
from minillm.exercises import as_tensor, assert_close, exercise, expect
from minillm.model import GPTConfig


@exercise("3.1", "the causal mask, with a cache")
def grade_causal_mask(answer: Callable[[int, int], torch.Tensor]) -> str:
    """answer(T, S) -> (T, S) bool, True where query i (at position S - T + i) may attend to key j."""
    gen = torch.Generator().manual_seed(31)
    cases = [(1, 1), (5, 5), (1, 6), (3, 6), (4, 9)]
    for t in torch.randint(2, 12, (3,), generator=gen).tolist():  # and three drawn at random
        cases.append((t, t + int(torch.randint(0, 6, (), generator=gen))))
    for t, s in cases:
        mask = as_tensor(answer(t, s), f"causal_mask({t}, {s})")
        expect(mask.dtype == torch.bool, f"causal_mask({t}, {s}) has dtype {mask.dtype}; return a bool tensor "
                                         "(True = may attend), e.g. a comparison like `k_pos <= q_pos`.")
        expect(tuple(mask.shape) == (t, s), f"causal_mask({t}, {s}) has shape {tuple(mask.shape)}, expected "
                                            f"({t}, {s}): one row per query, one column per key.")
        hint = ("The T queries are the last T of the S positions: query i sits at position S - T + i and sees "
                "keys 0 .. S - T + i, itself included.")
        if s == t:
            hint = "With S == T, query i sees keys 0 .. i: the diagonal is True (a token sees itself)."
        assert_close(mask, causal_mask(t, s), f"causal_mask({t}, {s})", hint=hint)
    return f"equals minillm.attention.causal_mask for {len(cases)} (T, S) pairs, S = T and S > T."


@exercise("3.2", "scaled dot-product attention")
def grade_attention(answer: Callable[..., torch.Tensor]) -> str:
    """answer(q, k, v, mask=None) -> softmax(q kᵀ/√D, masked) v, compared with the package and torch's SDPA."""
    gen = torch.Generator().manual_seed(32)
    b, h, t, s, dim = 2, 3, 5, 7, 16
    q, k, v = (torch.randn(b, h, n, dim, generator=gen) for n in (t, s, s))
    random_mask = torch.rand(t, s, generator=gen) > 0.5
    random_mask[:, -1] = True  # every query keeps at least one key
    cases = [
        ("no mask, T = S", (q, k[:, :, :t], v[:, :, :t], None),
         "Divide the scores q kᵀ by √D (the head size, q.shape[-1]) and take the softmax over the keys (dim=-1)."),
        ("no mask, T < S", (q, k, v, None),
         "k and v have S rows, q has T: scores are q @ k.transpose(-2, -1), shape (..., T, S)."),
        ("causal mask, T < S", (q, k, v, causal_mask(t, s)),
         "Where the mask is False, set the score to -inf *before* the softmax (masked_fill(~mask, -inf))."),
        ("random boolean mask", (q, k, v, random_mask),
         "True in the mask means 'may attend': fill the scores where the mask is False."),
        ("large scores", (40 * q, 40 * k, v, causal_mask(t, s)),
         "exp overflows float32 above about 88: subtract each row's maximum before exp (or use torch.softmax)."),
    ]
    for name, (qq, kk, vv, mask), hint in cases:
        out = as_tensor(answer(qq, kk, vv, mask), "your attention")
        expect(tuple(out.shape) == (b, h, t, dim), f"{name}: output shape {tuple(out.shape)}, expected "
                                                   f"{(b, h, t, dim)} (one output row of size D per query).")
        expect(bool(torch.isfinite(out).all()), f"{name}: the output holds nan or inf. {hint}")
        reference = scaled_dot_product_attention(qq, kk, vv, mask)
        assert_close(out, reference, f"{name}: the output", hint=hint, atol=1e-4, rtol=1e-4)
        assert_close(out, F.scaled_dot_product_attention(qq, kk, vv, attn_mask=mask), f"{name}: vs torch's SDPA",
                     hint=hint, atol=1e-4, rtol=1e-4)
    return (f"matches minillm.attention.scaled_dot_product_attention and F.scaled_dot_product_attention in "
            f"{len(cases)} cases (no mask, causal with a cache, a random mask, large scores).")


@exercise("3.3", "split and merge heads")
def grade_heads(answer) -> str:
    """answer = (split_heads, merge_heads): (B, T, C) <-> (B, H, T, D); rebuilds CausalSelfAttention's output."""
    expect(isinstance(answer, tuple) and len(answer) == 2 and all(callable(f) for f in answer),
           "Pass the two functions as a pair: check('3.3', (split_heads, merge_heads)).")
    split_heads, merge_heads = answer
    gen = torch.Generator().manual_seed(33)
    for b, t, n_head, dim in [(2, 5, 4, 6), (1, 7, 3, 8), (3, 4, 1, 5)]:
        c = n_head * dim
        x = torch.randn(b, t, c, generator=gen)
        heads = as_tensor(split_heads(x, n_head), "split_heads")
        expect(tuple(heads.shape) == (b, n_head, t, dim),
               f"split_heads of {(b, t, c)} with {n_head} heads has shape {tuple(heads.shape)}, "
               f"expected {(b, n_head, t, dim)}.")
        assert_close(heads, x.view(b, t, n_head, dim).transpose(1, 2), f"split_heads of {(b, t, c)}",
                     hint="Head h owns channels h*D .. (h+1)*D - 1 of every token: view the last axis as "
                          "(H, D), then transpose(1, 2). A direct view to (B, H, T, D) mixes tokens.")
        z = torch.randn(b, n_head, t, dim, generator=gen)
        merged = as_tensor(merge_heads(z), "merge_heads")
        assert_close(merged, z.transpose(1, 2).reshape(b, t, c), f"merge_heads of {(b, n_head, t, dim)}",
                     hint="Undo split_heads: transpose(1, 2) back to (B, T, H, D), then reshape to (B, T, C). "
                          "A reshape without the transpose concatenates tokens, not heads.")
        assert_close(merge_heads(split_heads(x, n_head)), x, "merge_heads(split_heads(x))")
    with torch.random.fork_rng():  # the layer's random weights leave the reader's random state alone
        torch.manual_seed(33)
        layer = CausalSelfAttention(AttentionConfig(d_model=24, n_head=4, context_length=16, attn_impl="manual"))
    layer.eval()
    x = torch.randn(2, 9, 24, generator=gen)
    with torch.no_grad():
        q, k, v = layer.qkv(x).split(24, dim=-1)
        q, k, v = (split_heads(z, 4) for z in (q, k, v))
        rebuilt = layer.proj(merge_heads(scaled_dot_product_attention(q, k, v, causal_mask(9))))
        assert_close(rebuilt, layer(x), "a CausalSelfAttention layer rebuilt with your functions")
    return "split_heads and merge_heads match view/transpose/reshape and rebuild a CausalSelfAttention layer's output."


@exercise("3.4", "RoPE without complex numbers")
def grade_rope(answer: Callable[..., torch.Tensor]) -> str:
    """answer(x, start, base) rotates x (..., T, D) like RotaryEmbedding (rotate-half pairs i, i + D/2)."""
    gen = torch.Generator().manual_seed(34)
    cases = [(8, 0, 10000.0), (16, 0, 10000.0), (16, 37, 10000.0), (32, 5, 500000.0)]
    for dim, start, base in cases:
        x = torch.randn(2, 3, 6, dim, generator=gen)
        out = as_tensor(answer(x, start, base), "your rope")
        expect(tuple(out.shape) == tuple(x.shape), f"rope changed the shape {tuple(x.shape)} to {tuple(out.shape)}.")
        reference = RotaryEmbedding(dim, start + 6, theta=base)(x, start=start)
        hint = ("Pair dimension i with i + D/2 (the two halves of the last axis), angle p * base^(-2i/D) at "
                "position p: x1' = x1 cos - x2 sin, x2' = x2 cos + x1 sin.")
        if start:
            hint = f"The T tokens sit at positions start .. start + T - 1 (here {start} .. {start + 5}). " + hint
        assert_close(out, reference, f"rope of shape {tuple(x.shape)}, start={start}, base={base:,.0f}",
                     hint=hint, atol=1e-5, rtol=1e-4)
    return f"matches minillm.attention.RotaryEmbedding in {len(cases)} cases (head sizes 8 to 32, offsets, two bases)."


def _allocated(config: GPTConfig, batch_size: int, n_tokens: int, bytes_per_number: int) -> int:
    """Bytes the package's KVCache allocates (on the meta device: nothing is really allocated)."""
    dtype = {1: torch.uint8, 2: torch.bfloat16, 4: torch.float32, 8: torch.float64}[bytes_per_number]
    cache = KVCache(config.n_layer, batch_size, config.kv_heads, config.d_model // config.n_head, n_tokens,
                    device="meta", dtype=dtype)
    return (cache.k.numel() + cache.v.numel()) * cache.k.element_size()


@exercise("3.5", "the longest context that fits")
def grade_max_context(answer: Callable[..., int]) -> str:
    """answer(config, memory_bytes, batch_size, bytes_per_number) -> the most positions whose KV cache fits."""
    seventy_b = dict(vocab_size=32000, context_length=4096, d_model=8192, n_layer=80, n_head=64, norm="rmsnorm",
                     mlp="swiglu", positions="rope", bias=False)
    configs = {
        "gpt2": GPTConfig.from_preset("gpt2"),
        "llama2-7b": GPTConfig.from_preset("llama2-7b"),
        "70B-style, GQA 8": GPTConfig(**seventy_b, n_kv_head=8),
        "a small GQA model": GPTConfig(vocab_size=100, context_length=64, d_model=96, n_layer=3, n_head=6,
                                       n_kv_head=2),
    }
    cases = [("gpt2", 2**30, 1, 2), ("llama2-7b", 40 * 10**9, 8, 2), ("70B-style, GQA 8", 80 * 2**30, 4, 2),
             ("70B-style, GQA 8", 10**9 + 7, 3, 1), ("a small GQA model", 5_000_003, 5, 4)]
    for name, memory, batch, width in cases:
        config = configs[name]
        got = answer(config, memory, batch, width)
        expect(isinstance(got, int) and not isinstance(got, bool),
               f"{name}: return a whole number of positions (an int), got {got!r}; use // to round down.")
        where = f"{name}, {memory:,} bytes, batch {batch}, {width} bytes per number"
        hint = ("Per position and sequence the cache holds keys and values (2) for every layer, of n_kv_head "
                "heads (config.kv_heads, not n_head) of size D = d_model // n_head.")
        expect(got >= 0 and _allocated(config, batch, got, width) <= memory,
               f"{where}: a cache of {got:,} positions needs {_allocated(config, batch, got, width):,} bytes, "
               f"more than the memory. {hint}")
        expect(_allocated(config, batch, got + 1, width) > memory,
               f"{where}: {got + 1:,} positions still fit ({_allocated(config, batch, got + 1, width):,} bytes); "
               f"return the largest number that fits. {hint}")
    return f"the largest number of positions whose KVCache fits, for {len(cases)} models, memories and batch sizes."

