"""Causal self-attention, position encodings and the KV cache (chapter 03).

Chapter 03 (`03_attention`) builds attention step by step; this module is the
version the rest of the book uses:

* `softmax`, `causal_mask`, `attention_weights` and `scaled_dot_product_attention`:
  attention written out, with a numerically stable softmax and a boolean mask
  where True means "may attend". `CausalSelfAttention` can use it, or PyTorch's
  fused `torch.nn.functional.scaled_dot_product_attention` (flash /
  memory-efficient kernels on GPU); `AttentionConfig.attn_impl` picks the path.
* `sinusoidal_positions` (added to the token embeddings) and `RotaryEmbedding`
  (RoPE, rotates queries and keys). Learned absolute positions are an
  `nn.Embedding` in `minillm.model`; "none" relies on the causal mask alone.
* `CausalSelfAttention`: multi-head attention with grouped-query attention
  (`n_kv_head` key/value heads shared by groups of query heads; 1 = multi-query).
  Causal self-attention is its default and its fast path; the appendix
  (`A_transformer_family`) switches on the rest: `causal=False` (an encoder's
  bidirectional attention), a padding `mask`, an additive `position_bias`, and
  a `context` whose keys and values the queries read (cross-attention).
* `relative_position_bucket` and `RelativePositionBias`: T5's relative positions,
  a learned bias per head and distance bucket added to the attention scores.
* `KVCache`: preallocated keys and values of every layer for incremental
  decoding, with `reset` and `rewind`.

Shapes: B batch, T new tokens (queries), S keys (cached + new), C = d_model,
H query heads, Hkv key/value heads, D = C // H head size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from minillm.errors import ConfigError

POSITIONS = ("learned", "sinusoidal", "rope", "none")
ATTN_IMPLS = ("sdpa", "manual")


# ---------------------------------------------------------------------------
# Attention written out
# ---------------------------------------------------------------------------


def softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Numerically stable softmax: exp(x - max) / sum(exp(x - max)).

    Subtracting the row maximum leaves the result unchanged (it cancels in the
    ratio) but keeps `exp` from overflowing for large logits. Entries equal to
    -inf (masked) get probability 0; the row must keep at least one finite entry.
    """
    shifted = x - x.amax(dim=dim, keepdim=True).detach()
    e = shifted.exp()
    return e / e.sum(dim=dim, keepdim=True)


def causal_mask(
    t_query: int, t_key: int | None = None, device: torch.device | str | None = None
) -> torch.Tensor:
    """Boolean causal mask of shape (T, S), True where a query may attend to a key.

    The T queries are the *last* T of the S positions (S >= T: earlier keys come
    from a KV cache), so query i sits at absolute position S - T + i and sees keys
    0 .. S - T + i. With S == T this is the usual lower-triangular matrix.
    """
    t_key = t_query if t_key is None else t_key
    if t_key < t_query:
        raise ConfigError(f"causal_mask needs at least as many keys as queries, got T={t_query}, S={t_key}")
    q_pos = torch.arange(t_key - t_query, t_key, device=device)[:, None]  # (T, 1)
    k_pos = torch.arange(t_key, device=device)[None, :]  # (1, S)
    return k_pos <= q_pos


def attention_weights(
    q: torch.Tensor,
    k: torch.Tensor,
    mask: torch.Tensor | None = None,
    scale: float | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention probabilities softmax(q k^T * scale + bias), masked.

    q: (..., T, D), k: (..., S, D), mask: bool broadcastable to (..., T, S), True =
    may attend; bias: float broadcastable to (..., T, S) (relative positions).
    scale defaults to 1/sqrt(D). Returns (..., T, S), rows sum to 1. The scores
    are computed in float32 or wider for the softmax.
    """
    scale = 1.0 / math.sqrt(q.size(-1)) if scale is None else scale
    scores = (q @ k.transpose(-2, -1)) * scale  # (..., T, S)
    if bias is not None:
        scores = scores + bias
    if mask is not None:
        if mask.dtype != torch.bool:
            raise TypeError(f"mask must be a bool tensor (True = may attend), got {mask.dtype}")
        scores = scores.masked_fill(~mask, float("-inf"))
    return softmax(scores.float(), dim=-1).to(q.dtype)


def scaled_dot_product_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    scale: float | None = None,
    generator: torch.Generator | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention written out: dropout(softmax(q k^T / sqrt(D) + bias + mask)) v.

    q: (..., T, D), k and v: (..., S, D), mask: bool broadcastable to (..., T, S)
    with True = may attend, bias: float broadcastable to (..., T, S). Returns
    (..., T, D). Matches `F.scaled_dot_product_attention(q, k, v, attn_mask=mask)`
    (dropout off).
    Dropout zeroes attention probabilities with probability `dropout_p` and
    rescales the rest by 1 / (1 - dropout_p).
    """
    if not 0.0 <= dropout_p < 1.0:
        raise ConfigError(f"dropout_p must be in [0, 1), got {dropout_p}")
    weights = attention_weights(q, k, mask, scale, bias)  # (..., T, S)
    if dropout_p > 0.0:
        keep = torch.rand(weights.shape, device=weights.device, generator=generator) >= dropout_p
        weights = weights * keep / (1.0 - dropout_p)
    return weights @ v


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """Grouped-query attention: (B, Hkv, S, D) -> (B, Hkv * n_rep, S, D).

    Query head h uses key/value head h // n_rep (consecutive query heads share).
    """
    if n_rep == 1:
        return x
    b, h_kv, s, d = x.shape
    return x[:, :, None].expand(b, h_kv, n_rep, s, d).reshape(b, h_kv * n_rep, s, d)


# ---------------------------------------------------------------------------
# Position information
# ---------------------------------------------------------------------------


def sinusoidal_positions(n_positions: int, d_model: int, base: float = 10000.0) -> torch.Tensor:
    """The fixed sinusoidal table of "Attention Is All You Need", shape (n_positions, d_model).

    PE[p, 2i] = sin(p / base^(2i/d)), PE[p, 2i+1] = cos(p / base^(2i/d)).
    """
    if d_model % 2:
        raise ConfigError(f"sinusoidal positions need an even d_model, got {d_model}")
    pos = torch.arange(n_positions, dtype=torch.float32)[:, None]  # (P, 1)
    inv_freq = base ** (-torch.arange(0, d_model, 2, dtype=torch.float32) / d_model)  # (d/2,)
    angles = pos * inv_freq  # (P, d/2)
    pe = torch.empty(n_positions, d_model)
    pe[:, 0::2] = angles.sin()
    pe[:, 1::2] = angles.cos()
    return pe


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (RoPE) in the "rotate-half" convention.

    Dimension i of a head is paired with dimension i + D/2, and the pair is
    rotated by the angle p * theta^(-2i/D) at position p. Because rotations
    compose, the dot product of a rotated query at position m and a rotated key
    at position n depends only on m - n. The original RoPE paper pairs adjacent
    dimensions (2i, 2i+1) instead; the two are the same up to a fixed permutation
    of the q/k projection rows, and this is the layout of Hugging Face Llama
    checkpoints, so they load without any permutation.
    """

    def __init__(self, head_dim: int, max_positions: int, theta: float = 10000.0) -> None:
        super().__init__()
        if head_dim % 2:
            raise ConfigError(f"RoPE needs an even head size, got {head_dim}")
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        angles = torch.arange(max_positions, dtype=torch.float32)[:, None] * inv_freq  # (P, D/2)
        angles = torch.cat((angles, angles), dim=-1)  # (P, D)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: torch.Tensor, start: int | torch.Tensor = 0) -> torch.Tensor:
        """Rotate x: (B, H, T, D) whose tokens sit at positions start .. start + T - 1.

        `start` is one int for the whole batch, or a (B,) tensor: row b starts at
        start[b] (continuous batching, `minillm.batching.SlotKVCache`).
        """
        t = x.size(-2)
        if isinstance(start, torch.Tensor):
            where = start[:, None] + torch.arange(t, device=start.device)  # (B, T)
            cos, sin = self.cos[where][:, None].to(x.dtype), self.sin[where][:, None].to(x.dtype)  # (B, 1, T, D)
        else:
            cos = self.cos[start : start + t].to(x.dtype)  # (T, D)
            sin = self.sin[start : start + t].to(x.dtype)
        return x * cos + rotate_half(x) * sin


def relative_position_bucket(
    relative_position: torch.Tensor, bidirectional: bool = True, num_buckets: int = 32, max_distance: int = 128
) -> torch.Tensor:
    """T5's bucket of each relative position (key position - query position), same shape, int64.

    Small distances get a bucket each; from `num_buckets // 2` on, buckets widen
    logarithmically up to `max_distance`, and everything farther shares the last
    one. Bidirectional (encoder) buckets split in two halves: keys before and
    keys after the query. Causal (decoder) buckets only count keys before it.
    """
    buckets = torch.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (relative_position > 0).long() * num_buckets  # keys after the query: upper half
        distance = relative_position.abs()
    else:
        distance = (-relative_position).clamp(min=0)  # keys after the query cannot be seen
    exact = num_buckets // 2
    # log-spaced buckets exact .. num_buckets - 1 for distances exact .. max_distance
    # (computed in this order, in float32, so the buckets are those of T5 checkpoints)
    far = exact + (
        torch.log(distance.clamp(min=exact).float() / exact) / math.log(max_distance / exact) * (num_buckets - exact)
    ).long()
    far = far.clamp(max=num_buckets - 1)
    return buckets + torch.where(distance < exact, distance, far)


class RelativePositionBias(nn.Module):
    """T5's relative positions: a learned scalar per (distance bucket, head) added to the scores.

    No position enters the embeddings; instead every attention layer of a stack
    adds `bias[h, i, j] = table[bucket(j - i), h]` to its scores (the first layer
    owns the table, the others reuse its output).
    """

    def __init__(self, n_head: int, num_buckets: int = 32, max_distance: int = 128,
                 bidirectional: bool = True) -> None:  # fmt: skip
        super().__init__()
        if num_buckets < 4 or max_distance <= num_buckets // 2:
            raise ConfigError(f"need num_buckets >= 4 and max_distance > num_buckets / 2, "
                              f"got {num_buckets} and {max_distance}")  # fmt: skip
        self.num_buckets, self.max_distance, self.bidirectional = num_buckets, max_distance, bidirectional
        self.table = nn.Embedding(num_buckets, n_head)

    def forward(self, t_query: int, t_key: int, start: int = 0) -> torch.Tensor:
        """Bias (1, H, T, S) for queries at positions start .. start + T - 1 and keys 0 .. S - 1."""
        device = self.table.weight.device
        q_pos = torch.arange(start, start + t_query, device=device)[:, None]  # (T, 1)
        k_pos = torch.arange(t_key, device=device)[None, :]  # (1, S)
        buckets = relative_position_bucket(k_pos - q_pos, self.bidirectional, self.num_buckets, self.max_distance)
        return self.table(buckets).permute(2, 0, 1)[None]  # (T, S, H) -> (1, H, T, S)


# ---------------------------------------------------------------------------
# KV cache
# ---------------------------------------------------------------------------


class KVCache:
    """Preallocated keys and values of every layer for incremental decoding.

    `k` and `v` have shape (n_layer, B, Hkv, max_len, D); the first `length`
    positions are filled. During a forward pass each layer calls `update`, which
    writes its new keys/values at positions length .. length + T - 1 and returns
    everything so far; the model then calls `advance(T)` once. Keys are stored
    *after* RoPE, so they never need re-rotating.
    """

    def __init__(
        self,
        n_layer: int,
        batch_size: int,
        n_kv_head: int,
        head_dim: int,
        max_len: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        shape = (n_layer, batch_size, n_kv_head, max_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.max_len = max_len
        self.length = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v: (B, Hkv, T, D) of `layer`; return all keys, values (B, Hkv, length + T, D)."""
        end = self.end_after(k.size(-2))
        self.k[layer, :, :, self.length : end] = k
        self.v[layer, :, :, self.length : end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def end_after(self, t: int) -> int:
        """length + t, the end of the next t positions; a ConfigError if the cache cannot hold them."""
        end = self.length + t
        if end > self.max_len:
            raise ConfigError(
                f"KV cache is full: it holds {self.max_len} positions, {self.length} are used and "
                f"{t} more were given; make a larger cache or reset()/rewind() it"
            )
        return end

    def advance(self, n: int) -> None:
        """Mark n more positions as filled (called once per forward pass)."""
        self.length += n

    def rewind(self, n: int) -> None:
        """Forget the last n positions (e.g. rejected draft tokens); the next write goes there."""
        if not 0 <= n <= self.length:
            raise ConfigError(f"can rewind between 0 and {self.length} positions, got {n}")
        self.length -= n

    def reset(self) -> None:
        """Forget everything (start a new sequence); the memory is kept."""
        self.length = 0

    def key_mask(self) -> torch.Tensor | None:
        """Which cached keys each row may see beyond causality: None, all of them (one shared length)."""
        return None

    def reorder(self, rows: torch.Tensor) -> None:
        """Keep batch rows `rows` (B',) in that order: in beam search each beam continues one of the previous ones."""
        self.k, self.v = self.k.index_select(1, rows), self.v.index_select(1, rows)

    @property
    def nbytes(self) -> int:
        """Bytes the cache allocated (`minillm.memory.kv_cache_bytes` for its shape and dtype)."""
        return self.k.numel() * self.k.element_size() + self.v.numel() * self.v.element_size()


# ---------------------------------------------------------------------------
# Multi-head causal self-attention
# ---------------------------------------------------------------------------


@dataclass
class AttentionConfig:
    """Settings of one `CausalSelfAttention` layer (a `GPTConfig` makes one with `.attention()`)."""

    d_model: int = 768
    n_head: int = 12
    n_kv_head: int | None = None  # None: n_head (multi-head); 1: multi-query
    context_length: int = 1024  # positions RoPE tables cover
    bias: bool = True
    dropout: float = 0.0  # on attention probabilities and on the output (residual)
    positions: str = "learned"  # only "rope" changes this layer; others are added to embeddings
    rope_theta: float = 10000.0
    attn_impl: str = "sdpa"  # "sdpa": torch fused kernel, "manual": written out
    causal: bool = True  # False: every query sees every key (encoders, cross-attention)
    scale: float | None = None  # score scale; None: 1/sqrt(head_dim) (T5 uses 1.0)
    d_head: int | None = None  # head size D; None: d_model // n_head (T5 may choose another)

    def __post_init__(self) -> None:
        for name in ("d_model", "n_head", "kv_heads", "context_length", "head_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.d_head is None and self.d_model % self.n_head:
            raise ConfigError(
                f"d_model ({self.d_model}) must be divisible by n_head ({self.n_head}); "
                "pick a head count that divides the width"
            )
        if self.n_head % self.kv_heads:
            raise ConfigError(
                f"n_head ({self.n_head}) must be divisible by n_kv_head ({self.kv_heads}): "
                "each key/value head serves an equal group of query heads"
            )
        if self.positions not in POSITIONS:
            raise ConfigError(f"positions must be one of {POSITIONS}, got {self.positions!r}")
        if self.attn_impl not in ATTN_IMPLS:
            raise ConfigError(f"attn_impl must be one of {ATTN_IMPLS}, got {self.attn_impl!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.positions == "rope" and self.head_dim % 2:
            raise ConfigError(f"RoPE needs an even head size, got {self.head_dim}")

    @property
    def head_dim(self) -> int:
        """D: `d_head`, or d_model // n_head when that is None."""
        return self.d_model // self.n_head if self.d_head is None else self.d_head

    @property
    def kv_heads(self) -> int:
        """Hkv, the number of key/value heads: `n_kv_head`, or `n_head` when that is None."""
        return self.n_head if self.n_kv_head is None else self.n_kv_head


class CausalSelfAttention(nn.Module):
    """Multi-head attention with grouped-query attention and optional RoPE; causal self-attention by default.

    One fused projection `qkv` (C -> (H + 2 Hkv) D) makes queries, keys and values;
    `proj` (H D -> C) mixes the heads' outputs. Dropout acts on the attention
    probabilities and on the output (before it is added to the residual stream).

    The decoder-only models use it as it is named. The appendix's encoders set
    `AttentionConfig(causal=False)`; cross-attention passes a `context`: the
    queries come from x through the first H D rows of `qkv`, the keys and values
    from the context through the rest, so the parameters are the same.
    """

    def __init__(self, config: AttentionConfig) -> None:
        super().__init__()
        self.config = config
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.kv_heads, config.head_dim
        qkv_out = (config.n_head + 2 * config.kv_heads) * config.head_dim
        self.qkv = nn.Linear(config.d_model, qkv_out, bias=config.bias)
        self.proj = nn.Linear(config.n_head * config.head_dim, config.d_model, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.rotary = (
            RotaryEmbedding(config.head_dim, config.context_length, config.rope_theta)
            if config.positions == "rope"
            else None
        )

    def context_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values (B, Hkv, S, D) of a context (B, S, C), for cross-attention.

        A decoder computes them once per encoded input and passes them as
        `context=(k, v)` at every generation step.
        """
        b, s, _ = context.shape
        h, h_kv, d = self.n_head, self.n_kv_head, self.head_dim
        w, bias = self.qkv.weight[h * d :], None if self.qkv.bias is None else self.qkv.bias[h * d :]
        k, v = F.linear(context, w, bias).split([h_kv * d, h_kv * d], dim=-1)
        return k.view(b, s, h_kv, d).transpose(1, 2), v.view(b, s, h_kv, d).transpose(1, 2)

    def forward(
        self,
        x: torch.Tensor,
        kv_cache: KVCache | None = None,
        layer: int = 0,
        *,
        mask: torch.Tensor | None = None,
        position_bias: torch.Tensor | None = None,
        context: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """x: (B, T, C) -> (B, T, C).

        With a `kv_cache`, x holds the T tokens after the `kv_cache.length` cached
        ones; this layer stores its keys/values in slot `layer` (the caller
        advances the cache after the last layer).

        The appendix's options: `mask` bool (B, S) (True = a real key, False =
        padding) or anything broadcastable to (B, H, T, S), combined with the
        causal mask when the layer is causal; `position_bias` float broadcastable
        to (B, H, T, S), added to the scores; `context` (B, S, C), or its
        `context_kv`, makes this cross-attention (keys and values from it).
        """
        b, t, _ = x.shape
        h, h_kv, d = self.n_head, self.n_kv_head, self.head_dim
        if context is None:
            q, k, v = self.qkv(x).split([h * d, h_kv * d, h_kv * d], dim=-1)
            k = k.view(b, t, h_kv, d).transpose(1, 2)  # (B, Hkv, T, D)
            v = v.view(b, t, h_kv, d).transpose(1, 2)
        else:  # cross-attention: queries from x, keys and values from the context
            if kv_cache is not None:
                raise ConfigError("cross-attention keeps no KV cache: pass context_kv(context) as context instead")
            q = F.linear(x, self.qkv.weight[: h * d], None if self.qkv.bias is None else self.qkv.bias[: h * d])
            k, v = self.context_kv(context) if isinstance(context, torch.Tensor) else context
        q = q.view(b, t, h, d).transpose(1, 2)  # (B, H, T, D)
        start = kv_cache.length if kv_cache is not None else 0
        if self.rotary is not None and context is None:  # a context's positions are not the queries'
            q, k = self.rotary(q, start), self.rotary(k, start)
        if kv_cache is not None:
            k, v = kv_cache.update(layer, k, v)  # (B, Hkv, S, D), S = start + T
            if mask is None:
                mask = kv_cache.key_mask()  # None, or (B, S) for a cache whose rows have their own lengths
        s = k.size(2)
        k, v = repeat_kv(k, h // h_kv), repeat_kv(v, h // h_kv)  # (B, H, S, D)
        p, scale, causal = self.config.dropout if self.training else 0.0, self.config.scale, self.config.causal
        if mask is None and position_bias is None and self.config.attn_impl == "sdpa":
            # the decoder-only path: is_causal aligns the mask top-left, which is only right
            # when S == T; a single new token may see every key; otherwise pass the mask.
            if not causal or t == 1:
                y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, scale=scale)
            elif s == t:
                y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True, scale=scale)
            else:
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(t, s, device=x.device),
                                                   dropout_p=p, scale=scale)  # fmt: skip
        else:
            allowed = self._mask(mask, b, t, s, x.device)  # (B or 1, H or 1, T, S) bool, or None
            if self.config.attn_impl == "manual":
                y = scaled_dot_product_attention(q, k, v, allowed, dropout_p=p, scale=scale, bias=position_bias)
            else:
                attn_mask = allowed
                if position_bias is not None:  # one float mask: the bias where allowed, -inf elsewhere
                    attn_mask = position_bias.to(q.dtype)
                    if allowed is not None:
                        attn_mask = attn_mask.masked_fill(~allowed, float("-inf"))
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p, scale=scale)
        y = y.transpose(1, 2).reshape(b, t, h * d)  # (B, T, H D)
        return self.resid_dropout(self.proj(y))

    def _mask(self, mask: torch.Tensor | None, b: int, t: int, s: int, device: torch.device) -> torch.Tensor | None:
        """The bool mask (B or 1, H or 1, T, S) of padding and causality, or None when everything is allowed.

        A query whose every key is masked (a padding position) is let see all
        keys instead: its output is never used, and a row of -inf would be NaN.
        """
        allowed = None
        if mask is not None:
            if mask.dtype != torch.bool:
                raise TypeError(f"mask must be a bool tensor (True = may attend), got {mask.dtype}")
            if mask.dim() == 2:
                if mask.shape != (b, s):
                    raise ConfigError(f"a padding mask must have shape (B, S) = ({b}, {s}), got {tuple(mask.shape)}")
                mask = mask[:, None, None, :]  # (B, 1, 1, S)
            elif mask.dim() != 4 or any(m not in (1, n) for m, n in zip(mask.shape, (b, self.n_head, t, s))):
                raise ConfigError(f"mask must be (B, S) = ({b}, {s}) or broadcastable to (B, H, T, S) = "
                                  f"({b}, {self.n_head}, {t}, {s}), got {tuple(mask.shape)}")  # fmt: skip
            allowed = mask.to(device)
        if self.config.causal:
            causal = causal_mask(t, s, device=device)  # (T, S)
            allowed = causal if allowed is None else allowed & causal
        if allowed is None:
            return None
        return allowed | ~allowed.any(dim=-1, keepdim=True)
