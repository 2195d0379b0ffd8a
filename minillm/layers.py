"""The parts of a transformer block: norms, MLPs and the block itself (chapter 04).

Chapter 04 (`04_gpt_model`) compares the variants that GPT-2 and Llama-style
models choose between; `minillm.model.GPTConfig` picks them by name:

* norm: `"layernorm"` (subtract the mean, divide by the standard deviation,
  scale and shift; GPT-2) or `"rmsnorm"` (divide by the root mean square and
  scale; Llama);
* MLP: `"gelu"` (C -> d_ff -> C with GELU, tanh approximation as in GPT-2) or
  `"swiglu"` (down(silu(gate(x)) * up(x)); Llama);
* placement: pre-LN (x + f(norm(x)), the default since GPT-2) or post-LN
  (norm(x + f(x)), the original transformer).

Shapes: (B, T, C) in and out, C = d_model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from minillm.attention import AttentionConfig, CausalSelfAttention, KVCache
from minillm.errors import ConfigError

NORMS = ("layernorm", "rmsnorm")
MLPS = ("gelu", "swiglu")


class RMSNorm(nn.Module):
    """Root-mean-square norm: x / sqrt(mean(x^2) + eps) * weight, computed in float32."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., C) -> (..., C)."""
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def make_norm(kind: str, dim: int, eps: float = 1e-5, bias: bool = True) -> nn.Module:
    """A norm layer by name: "layernorm" (`nn.LayerNorm`, with a bias if `bias`) or "rmsnorm"."""
    if kind == "layernorm":
        return nn.LayerNorm(dim, eps=eps, bias=bias)
    if kind == "rmsnorm":
        return RMSNorm(dim, eps=eps)
    raise ConfigError(f"norm must be one of {NORMS}, got {kind!r}")


class GeluMLP(nn.Module):
    """GPT-2's MLP: proj(gelu(fc(x))), C -> d_ff -> C, GELU with the tanh approximation."""

    def __init__(self, d_model: int, d_ff: int, bias: bool = True, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc = nn.Linear(d_model, d_ff, bias=bias)
        self.proj = nn.Linear(d_ff, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, T, C) -> (B, T, C)."""
        return self.dropout(self.proj(F.gelu(self.fc(x), approximate="tanh")))


class SwiGLU(nn.Module):
    """Llama's gated MLP: down(silu(gate(x)) * up(x)), C -> d_ff -> C."""

    def __init__(self, d_model: int, d_ff: int, bias: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        self.gate = nn.Linear(d_model, d_ff, bias=bias)
        self.up = nn.Linear(d_model, d_ff, bias=bias)
        self.down = nn.Linear(d_ff, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, T, C) -> (B, T, C)."""
        return self.dropout(self.down(F.silu(self.gate(x)) * self.up(x)))


def make_mlp(kind: str, d_model: int, d_ff: int, bias: bool = True, dropout: float = 0.0) -> nn.Module:
    """An MLP by name: "gelu" (`GeluMLP`) or "swiglu" (`SwiGLU`)."""
    if kind == "gelu":
        return GeluMLP(d_model, d_ff, bias, dropout)
    if kind == "swiglu":
        return SwiGLU(d_model, d_ff, bias, dropout)
    raise ConfigError(f"mlp must be one of {MLPS}, got {kind!r}")


class Block(nn.Module):
    """One transformer block: attention then MLP, each with a norm and a residual path.

    Pre-LN:  x = x + attn(norm1(x));  x = x + mlp(norm2(x))
    Post-LN: x = norm1(x + attn(x));  x = norm2(x + mlp(x))
    """

    def __init__(
        self,
        attn: AttentionConfig,
        d_ff: int,
        norm: str = "layernorm",
        mlp: str = "gelu",
        norm_eps: float = 1e-5,
        pre_norm: bool = True,
    ) -> None:
        super().__init__()
        self.pre_norm = pre_norm
        self.norm1 = make_norm(norm, attn.d_model, norm_eps, attn.bias)
        self.attn = CausalSelfAttention(attn)
        self.norm2 = make_norm(norm, attn.d_model, norm_eps, attn.bias)
        self.mlp = make_mlp(mlp, attn.d_model, d_ff, attn.bias, attn.dropout)

    def forward(self, x: torch.Tensor, kv_cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        """x: (B, T, C) -> (B, T, C); `kv_cache`/`layer` as in `CausalSelfAttention.forward`."""
        if self.pre_norm:
            x = x + self.attn(self.norm1(x), kv_cache, layer)
            return x + self.mlp(self.norm2(x))
        x = self.norm1(x + self.attn(x, kv_cache, layer))
        return self.norm2(x + self.mlp(x))
