"""An int8 KV cache: keys and values kept as 8-bit codes, one scale per vector (appendix B).

During generation the KV cache, not the weights, is what grows: per token and
layer it holds n_kv_head key vectors and as many value vectors of head_dim
numbers (`minillm.memory.kv_cache_bytes`). `Int8KVCache` stores each of those
vectors the way `minillm.quantize` stores a weight row, absmax with one scale:

    s = max|k| / 127,   q = round(k / s) in [-127, 127],   k ~ q s

so a vector of D numbers takes D bytes plus a 4-byte fp32 scale instead of 4 D
bytes (D = 32 in the book model: 36 bytes instead of 128, 0.28x). A scale per
vector (per token and head) follows the values as they come: a token with large
keys does not spoil the others' precision.

It is a drop-in `minillm.attention.KVCache`: `update(layer, k, v)` quantizes the
new positions and returns every cached key and value *dequantized* to the
model's float type, so attention itself is unchanged; it costs one
multiply per cached number per step. What it saves is memory (more or longer
sequences per device, `minillm.memory.max_kv_batch`), not arithmetic.

    cache = Int8KVCache.for_model(model, batch_size=1)
    logits, _ = model(prompt, kv_cache=cache)           # then one token at a time
"""

from __future__ import annotations

import torch

from minillm.attention import KVCache
from minillm.errors import ConfigError
from minillm.model import GPT
from minillm.qtensor import quantize_tensor


class Int8KVCache(KVCache):
    """A `KVCache` whose keys and values are int8 codes with an fp32 scale per (position, head) vector.

    `k`, `v`: int8 (n_layer, B, Hkv, max_len, D); `k_scale`, `v_scale`: float32
    (n_layer, B, Hkv, max_len, 1). `dtype` is what `update` returns (the model's
    activations). Elementwise the returned keys and values are within half a
    step, scale / 2, of what was stored.
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
        if not dtype.is_floating_point:
            raise ConfigError(f"dtype is the float type update() returns, got {dtype}")
        shape = (n_layer, batch_size, n_kv_head, max_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=torch.int8)
        self.v = torch.zeros(shape, device=device, dtype=torch.int8)
        self.k_scale = torch.zeros(shape[:-1] + (1,), device=device, dtype=torch.float32)
        self.v_scale = torch.zeros(shape[:-1] + (1,), device=device, dtype=torch.float32)
        self.dtype = dtype
        self.max_len = max_len
        self.length = 0

    @classmethod
    def for_model(cls, model: GPT, batch_size: int, max_len: int | None = None) -> Int8KVCache:
        """An empty int8 cache for `model` on its device: `model.new_kv_cache(..., kind=Int8KVCache)`."""
        return model.new_kv_cache(batch_size, max_len, kind=cls)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v: (B, Hkv, T, D) of `layer` as codes; return all keys, values (B, Hkv, length + T, D), dequantized."""
        end = self.end_after(k.size(-2))
        for codes, scales, x, what in ((self.k, self.k_scale, k, "keys"), (self.v, self.v_scale, v, "values")):
            q, s = _quantize_vectors(x, f"the {what} of layer {layer}")
            codes[layer, :, :, self.length : end] = q
            scales[layer, :, :, self.length : end] = s
        return (self._dequantize(self.k, self.k_scale, layer, end),
                self._dequantize(self.v, self.v_scale, layer, end))  # fmt: skip

    def _dequantize(self, codes: torch.Tensor, scales: torch.Tensor, layer: int, end: int) -> torch.Tensor:
        """Positions 0 .. end - 1 of `layer`, (B, Hkv, end, D), as floats: q s."""
        return (codes[layer, :, :, :end].float() * scales[layer, :, :, :end]).to(self.dtype)

    def reorder(self, rows: torch.Tensor) -> None:
        """Keep batch rows `rows` (B',) in that order (beam search), codes and scales alike."""
        self.k, self.v = self.k.index_select(1, rows), self.v.index_select(1, rows)
        self.k_scale, self.v_scale = self.k_scale.index_select(1, rows), self.v_scale.index_select(1, rows)

    @property
    def nbytes(self) -> int:
        """Bytes this cache allocated: codes and scales (`kv_cache_bytes(..., "int8")` for its shape)."""
        return sum(t.numel() * t.element_size() for t in (self.k, self.v, self.k_scale, self.v_scale))


def _quantize_vectors(x: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """x (..., D) float -> int8 codes (..., D) and float32 scales (..., 1): absmax, one scale per vector."""
    qt = quantize_tensor(x.reshape(-1, x.size(-1)), bits=8, granularity="channel", name=name)
    return qt.codes.reshape(x.shape), qt.scale.reshape(*x.shape[:-1], 1)
