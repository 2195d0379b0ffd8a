"""The parts of a transformer block: norms, MLPs and the block itself (chapter 04).

Chapter 04 (`04_gpt_model`) compares the variants that GPT-2 and Llama-style
models choose between; `minillm.model.GPTConfig` picks them by name:

* norm: `"layernorm"` (subtract the mean, divide by the standard deviation,
  scale and shift; GPT-2) or `"rmsnorm"` (divide by the root mean square and
  scale; Llama);
* MLP: `"gelu"` (C -> d_ff -> C with GELU, tanh approximation as in GPT-2),
  `"gelu_exact"` (the same with the exact, erf GELU, as nanoGPT's `nn.GELU()`) or
  `"swiglu"` (down(silu(gate(x)) * up(x)); Llama);
* placement: pre-LN (x + f(norm(x)), the default since GPT-2) or post-LN
  (norm(x + f(x)), the original transformer).

The appendix (`A_transformer_family`) builds BERT, T5 and BART from the same
parts: `MLP` and `GatedMLP` take any activation of `ACTIVATIONS` (BERT's exact
GELU, T5's ReLU and gated GELU), and a `Block` made with `cross=True` is an
encoder-decoder's decoder block (a cross-attention sublayer between attention
and MLP).

Shapes: (B, T, C) in and out, C = d_model.
"""

from __future__ import annotations

import dataclasses
import functools

import torch
import torch.nn.functional as F
from torch import nn

from minillm.attention import AttentionConfig, CausalSelfAttention, KVCache
from minillm.errors import ConfigError

NORMS = ("layernorm", "rmsnorm")
MLPS = ("gelu", "gelu_exact", "swiglu")  # the decoder-only models' MLPs (GPTConfig.mlp)
#: Every MLP by name: (gated?, activation). "gelu_exact": BERT, BART; "relu": T5; "geglu": T5 v1.1.
FAMILY_MLPS = {"gelu": (False, "gelu_tanh"), "swiglu": (True, "silu"), "gelu_exact": (False, "gelu"),
               "relu": (False, "relu"), "geglu": (True, "gelu_tanh")}  # fmt: skip
ACTIVATIONS = {"gelu_tanh": functools.partial(F.gelu, approximate="tanh"), "gelu": F.gelu,
               "relu": F.relu, "silu": F.silu}  # fmt: skip


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


class MLP(nn.Module):
    """Two linear layers with an activation between: proj(act(fc(x))), C -> d_ff -> C."""

    def __init__(self, d_model: int, d_ff: int, bias: bool = True, dropout: float = 0.0,
                 act: str = "gelu_tanh") -> None:  # fmt: skip
        super().__init__()
        if act not in ACTIVATIONS:
            raise ConfigError(f"act must be one of {sorted(ACTIVATIONS)}, got {act!r}")
        self.act = ACTIVATIONS[act]
        self.fc = nn.Linear(d_model, d_ff, bias=bias)
        self.proj = nn.Linear(d_ff, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, T, C) -> (B, T, C)."""
        return self.dropout(self.proj(self.act(self.fc(x))))


class GeluMLP(MLP):
    """GPT-2's MLP: proj(gelu(fc(x))), C -> d_ff -> C, GELU with the tanh approximation."""

    def __init__(self, d_model: int, d_ff: int, bias: bool = True, dropout: float = 0.0) -> None:
        super().__init__(d_model, d_ff, bias, dropout, act="gelu_tanh")


class GatedMLP(nn.Module):
    """A gated MLP: down(act(gate(x)) * up(x)), C -> d_ff -> C."""

    def __init__(self, d_model: int, d_ff: int, bias: bool = False, dropout: float = 0.0,
                 act: str = "silu") -> None:  # fmt: skip
        super().__init__()
        if act not in ACTIVATIONS:
            raise ConfigError(f"act must be one of {sorted(ACTIVATIONS)}, got {act!r}")
        self.act = ACTIVATIONS[act]
        self.gate = nn.Linear(d_model, d_ff, bias=bias)
        self.up = nn.Linear(d_model, d_ff, bias=bias)
        self.down = nn.Linear(d_ff, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, T, C) -> (B, T, C)."""
        return self.dropout(self.down(self.act(self.gate(x)) * self.up(x)))


class SwiGLU(GatedMLP):
    """Llama's gated MLP: down(silu(gate(x)) * up(x)), C -> d_ff -> C."""

    def __init__(self, d_model: int, d_ff: int, bias: bool = False, dropout: float = 0.0) -> None:
        super().__init__(d_model, d_ff, bias, dropout, act="silu")


def make_mlp(kind: str, d_model: int, d_ff: int, bias: bool = True, dropout: float = 0.0) -> nn.Module:
    """An MLP by name (`FAMILY_MLPS`): "gelu" (`GeluMLP`), "swiglu" (`SwiGLU`), "gelu_exact", "relu", "geglu"."""
    if kind == "gelu":
        return GeluMLP(d_model, d_ff, bias, dropout)
    if kind == "swiglu":
        return SwiGLU(d_model, d_ff, bias, dropout)
    if kind not in FAMILY_MLPS:
        raise ConfigError(f"mlp must be one of {tuple(FAMILY_MLPS)}, got {kind!r}")
    gated, act = FAMILY_MLPS[kind]
    return (GatedMLP if gated else MLP)(d_model, d_ff, bias, dropout, act)


class Block(nn.Module):
    """One transformer block: attention then MLP, each with a norm and a residual path.

    Pre-LN:  x = x + attn(norm1(x));  x = x + mlp(norm2(x))
    Post-LN: x = norm1(x + attn(x));  x = norm2(x + mlp(x))

    With `cross=True` (an encoder-decoder's decoder) a cross-attention sublayer
    with its own norm, `norm_cross`, sits between the two: it reads the
    encoder's output (`memory`), pre-LN x = x + cross(norm_cross(x), memory).
    """

    def __init__(
        self,
        attn: AttentionConfig,
        d_ff: int,
        norm: str = "layernorm",
        mlp: str = "gelu",
        norm_eps: float = 1e-5,
        pre_norm: bool = True,
        cross: bool = False,
    ) -> None:
        super().__init__()
        self.pre_norm = pre_norm
        self.norm1 = make_norm(norm, attn.d_model, norm_eps, attn.bias)
        self.attn = CausalSelfAttention(attn)
        if cross:  # no causal mask and no RoPE: every query reads the whole encoded input
            self.norm_cross = make_norm(norm, attn.d_model, norm_eps, attn.bias)
            self.cross_attn = CausalSelfAttention(dataclasses.replace(attn, causal=False, positions="none"))
        self.norm2 = make_norm(norm, attn.d_model, norm_eps, attn.bias)
        self.mlp = make_mlp(mlp, attn.d_model, d_ff, attn.bias, attn.dropout)

    def forward(
        self,
        x: torch.Tensor,
        kv_cache: KVCache | None = None,
        layer: int = 0,
        *,
        mask: torch.Tensor | None = None,
        position_bias: torch.Tensor | None = None,
        memory: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None = None,
        memory_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x: (B, T, C) -> (B, T, C); `kv_cache`/`layer`/`mask`/`position_bias` as in `CausalSelfAttention.forward`.

        `memory` (B, S, C) (or its cross-attention keys and values,
        `cross_attn.context_kv(memory)`) and `memory_mask` (B, S) are the
        encoder's output and padding for a `cross=True` block.
        """
        cross = hasattr(self, "cross_attn")
        if cross != (memory is not None):
            raise ConfigError("a cross=True block needs the encoder's memory, and only such a block takes one")
        attend = functools.partial(self.attn, kv_cache=kv_cache, layer=layer, mask=mask, position_bias=position_bias)
        if self.pre_norm:
            x = x + attend(self.norm1(x))
            if cross:
                x = x + self.cross_attn(self.norm_cross(x), mask=memory_mask, context=memory)
            return x + self.mlp(self.norm2(x))
        x = self.norm1(x + attend(x))
        if cross:
            x = self.norm_cross(x + self.cross_attn(x, mask=memory_mask, context=memory))
        return self.norm2(x + self.mlp(x))
