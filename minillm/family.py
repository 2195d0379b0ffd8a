"""The encoder and decoder stacks of the transformer family (appendix A).

The book's GPT is one kind of transformer: a stack of *causal* blocks that
predicts the next token. The appendix (`A_transformer_family`) builds the other
two from the same parts (`minillm.attention`, `minillm.layers`):

* encoder-only (BERT): a stack of *bidirectional* blocks, every token sees every
  other, trained to fill in masked tokens (`minillm.masked_lm.MaskedLM`);
* encoder-decoder (T5, BART, the original Transformer): an encoder stack reads
  the input, a decoder stack of causal blocks *with cross-attention* writes the
  output, each new token reading the encoder's output (`minillm.seq2seq.Seq2SeqLM`).

This module holds what both share: `FamilyConfig` (the shape and the variant
choices of BERT, T5 and BART in one dataclass) and `Stack`, the rest of the
embedding followed by n blocks (the models own the token embedding, which the
encoder, the decoder and the output head share):

    token embeddings (B, T, C) (+ position, + segment) [-> norm] -> blocks -> [norm] -> (B, T, C)

Positions are "learned" (BERT, BART: a table, optionally offset by 2 as in
BART), "sinusoidal" (the original Transformer) or "relative" (T5: no position
in the embeddings, a learned bias per head and distance bucket added to the
attention scores of every layer, `minillm.attention.RelativePositionBias`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from minillm.attention import AttentionConfig, KVCache, RelativePositionBias, sinusoidal_positions
from minillm.errors import ConfigError
from minillm.layers import FAMILY_MLPS, NORMS, Block, make_norm

FAMILY_POSITIONS = ("learned", "sinusoidal", "relative")


@dataclass
class FamilyConfig:
    """Shape and variant choices of an encoder-only or encoder-decoder model (BERT, T5, BART)."""

    vocab_size: int = 30522
    context_length: int = 512  # longest input (and output) sequence
    d_model: int = 768
    n_head: int = 12
    d_head: int | None = None  # None: d_model // n_head (T5's d_kv may differ)
    d_ff: int = 3072
    n_layer: int = 12  # encoder blocks
    n_decoder_layer: int = 0  # decoder blocks; 0 = encoder-only
    norm: str = "layernorm"  # "layernorm" | "rmsnorm" (T5)
    norm_eps: float = 1e-12
    mlp: str = "gelu_exact"  # a minillm.layers.FAMILY_MLPS name: BERT/BART "gelu_exact", T5 "relu"/"geglu"
    pre_norm: bool = False  # BERT, BART: post-LN; T5: pre-LN (with a final norm per stack)
    bias: bool = True  # biases in linear layers and LayerNorms (T5: none)
    positions: str = "learned"  # FAMILY_POSITIONS
    position_offset: int = 0  # BART's learned table starts at row 2
    relative_buckets: int = 32  # T5 relative positions
    relative_max_distance: int = 128
    n_segments: int = 0  # BERT's token types (sentence A / B); 0 = none
    embed_norm: bool = False  # a norm right after the embeddings (BERT, BART)
    embed_scale: bool = False  # multiply token embeddings by sqrt(d_model) (the original Transformer)
    attn_scale: float | None = None  # None: 1/sqrt(head size); T5: 1.0 (folded into its initialization)
    dropout: float = 0.0
    tie_embeddings: bool = True  # the output head reuses the token embeddings
    scale_logits: bool = False  # T5 with tied embeddings: decoder output * d_model**-0.5 before the head
    final_logits_bias: bool = False  # BART: a (V,) bias added to the logits
    pad_token_id: int = 0
    eos_token_id: int = 1
    decoder_start_token_id: int = 0  # the first decoder input (T5: pad; BART: eos)
    init_std: float = 0.02

    def __post_init__(self) -> None:
        for name in ("vocab_size", "context_length", "d_model", "n_head", "d_ff", "n_layer"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.n_decoder_layer, int) or self.n_decoder_layer < 0:
            raise ConfigError(f"n_decoder_layer must be an integer >= 0, got {self.n_decoder_layer!r}")
        if self.norm not in NORMS:
            raise ConfigError(f"norm must be one of {NORMS}, got {self.norm!r}")
        if self.mlp not in FAMILY_MLPS:
            raise ConfigError(f"mlp must be one of {tuple(FAMILY_MLPS)}, got {self.mlp!r}")
        if self.positions not in FAMILY_POSITIONS:
            raise ConfigError(f"positions must be one of {FAMILY_POSITIONS}, got {self.positions!r}")
        for name in ("pad_token_id", "eos_token_id", "decoder_start_token_id"):
            if not 0 <= getattr(self, name) < self.vocab_size:
                raise ConfigError(f"{name} must be a token id in [0, {self.vocab_size}), got {getattr(self, name)}")
        self.attention(causal=False)  # validates heads, head size, dropout

    def attention(self, causal: bool) -> AttentionConfig:
        """The `AttentionConfig` of every block: bidirectional (encoder) or causal (decoder)."""
        return AttentionConfig(
            d_model=self.d_model, n_head=self.n_head, context_length=self.context_length, bias=self.bias,
            dropout=self.dropout, positions="none", causal=causal, scale=self.attn_scale, d_head=self.d_head,
        )  # fmt: skip

    @property
    def is_encoder_decoder(self) -> bool:
        """True when the model has a decoder stack (`n_decoder_layer > 0`)."""
        return self.n_decoder_layer > 0


class Stack(nn.Module):
    """Position (and segment) embeddings and n blocks: an encoder, or a decoder (causal, with cross-attention).

    It starts from token embeddings, so that an encoder-decoder's two stacks and
    its output head can share one matrix (BERT's, T5's and BART's convention).
    """

    def __init__(self, config: FamilyConfig, decoder: bool = False) -> None:
        super().__init__()
        c = config
        self.config, self.decoder = c, decoder
        self.embed_scale = math.sqrt(c.d_model) if c.embed_scale else 1.0
        if c.positions == "learned":
            self.pos_emb = nn.Embedding(c.context_length + c.position_offset, c.d_model)
        elif c.positions == "sinusoidal":
            self.register_buffer("pos_table", sinusoidal_positions(c.context_length, c.d_model), persistent=False)
        else:  # T5: encoder buckets look both ways, decoder buckets only back
            self.rel_bias = RelativePositionBias(c.n_head, c.relative_buckets, c.relative_max_distance,
                                                 bidirectional=not decoder)  # fmt: skip
        if c.n_segments and not decoder:
            self.seg_emb = nn.Embedding(c.n_segments, c.d_model)
        self.embed_norm = make_norm(c.norm, c.d_model, c.norm_eps, c.bias) if c.embed_norm else nn.Identity()
        self.dropout = nn.Dropout(c.dropout)
        attn = c.attention(causal=decoder)
        n = c.n_decoder_layer if decoder else c.n_layer
        self.blocks = nn.ModuleList(
            Block(attn, c.d_ff, c.norm, c.mlp, c.norm_eps, c.pre_norm, cross=decoder) for _ in range(n)
        )
        self.norm_f = make_norm(c.norm, c.d_model, c.norm_eps, c.bias) if c.pre_norm else nn.Identity()

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        segments: torch.Tensor | None = None,
        *,
        memory: torch.Tensor | list[tuple[torch.Tensor, torch.Tensor]] | None = None,
        memory_mask: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
    ) -> torch.Tensor:
        """Token embeddings (B, T, C) -> hidden states (B, T, C).

        mask: bool (B, T), False at padding (keys there are ignored). segments:
        (B, T) token types (BERT). A decoder also takes the encoder's `memory`
        (B, S, C), or its cross-attention keys and values per block
        (`memory_kv`), its `memory_mask` (B, S) and, when generating, a
        `kv_cache` of its self-attention (the ids continue the cached ones).
        """
        c = self.config
        b, t, _ = x.shape
        start = kv_cache.length if kv_cache is not None else 0
        if start + t > c.context_length:
            raise ConfigError(f"a sequence of {start + t} tokens is longer than the model's maximum "
                              f"{c.context_length} (context_length); shorten it")  # fmt: skip
        if self.decoder and memory is None:
            raise ConfigError("a decoder stack needs the encoder's output: pass memory=")
        x = x * self.embed_scale
        positions = torch.arange(start, start + t, device=x.device)
        if c.positions == "learned":
            x = x + self.pos_emb(positions + c.position_offset)
        elif c.positions == "sinusoidal":
            x = x + self.pos_table[positions].to(x.dtype)
        if segments is not None:
            if not hasattr(self, "seg_emb"):
                raise ConfigError("this model has no segment (token type) embeddings; leave segments=None")
            if segments.shape != (b, t):
                raise ConfigError(f"segments must have the shape of the ids {(b, t)}, "
                                  f"got {tuple(segments.shape)}")  # fmt: skip
            check_ids(segments, c.n_segments, "segments")
            x = x + self.seg_emb(segments)
        elif hasattr(self, "seg_emb"):
            x = x + self.seg_emb.weight[0]  # every token in segment 0
        x = self.dropout(self.embed_norm(x))
        bias = self.rel_bias(t, start + t, start) if c.positions == "relative" else None  # (1, H, T, S)
        if kv_cache is not None and mask is not None:
            raise ConfigError("a decoder mask with a KV cache is not supported; generate without padding")
        layer_memory = memory if isinstance(memory, list) else [memory] * len(self.blocks)
        for layer, block in enumerate(self.blocks):
            x = block(x, kv_cache, layer, mask=mask, position_bias=bias, memory=layer_memory[layer],
                      memory_mask=memory_mask)  # fmt: skip
        if kv_cache is not None:
            kv_cache.advance(t)
        return self.dropout(self.norm_f(x))

    def memory_kv(self, memory: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each decoder block's cross-attention keys and values of `memory` (B, S, C), computed once."""
        return [block.cross_attn.context_kv(memory) for block in self.blocks]

    def new_kv_cache(self, batch_size: int, max_len: int) -> KVCache:
        """An empty self-attention cache for this (decoder) stack."""
        attn = self.config.attention(causal=True)
        w = next(self.parameters())
        return KVCache(len(self.blocks), batch_size, attn.kv_heads, attn.head_dim, max_len, w.device, w.dtype)


def check_ids(ids: torch.Tensor, limit: int, name: str = "input_ids") -> None:
    """Raise a clear error unless `ids` is an integer (B, T) tensor of values in [0, limit)."""
    if not isinstance(ids, torch.Tensor) or ids.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"{name} must be an integer tensor, got {getattr(ids, 'dtype', type(ids).__name__)}")
    if ids.dim() != 2 or 0 in ids.shape:
        raise ConfigError(f"{name} must have shape (B, T) with at least one sequence of one token, "
                          f"got {tuple(ids.shape)}")
    if ids.numel() and not torch.compiler.is_compiling():
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= limit:
            raise ConfigError(f"{name} must be in [0, {limit}), got values in [{lo}, {hi}]")


def padding_mask(attention_mask: torch.Tensor | None, ids: torch.Tensor, name: str = "attention_mask"
                 ) -> torch.Tensor | None:  # fmt: skip
    """A Hugging Face style attention mask (B, T) of 1 (token) / 0 (padding) as bool, checked; None stays None."""
    if attention_mask is None:
        return None
    if not isinstance(attention_mask, torch.Tensor) or attention_mask.shape != ids.shape:
        shape = tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else type(attention_mask)
        raise ConfigError(f"{name} must have the shape of its ids {tuple(ids.shape)} (1 = token, 0 = padding), "
                          f"got {shape}")  # fmt: skip
    if attention_mask.dtype != torch.bool and not ((attention_mask == 0) | (attention_mask == 1)).all():
        raise ConfigError(f"{name} must hold only 0 (padding) and 1 (token)")
    return attention_mask.bool()


def init_weights(model: nn.Module, std: float) -> None:
    """GPT-2/BERT-style initialization: normal(0, std) weights and embeddings, zero biases, unit norms."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)


def load_state(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Copy `state` into `model`; every key and shape must match, else a ConfigError naming the differences."""
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    wrong = [f"{k}: {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
             for k in own if k in state and state[k].shape != own[k].shape]  # fmt: skip
    if missing or unexpected or wrong:
        raise ConfigError(f"{source} does not match the model: missing keys {missing[:6]}, "
                          f"unexpected keys {unexpected[:6]}, wrong shapes {wrong[:6]}")  # fmt: skip
    with torch.no_grad():
        for k, v in own.items():
            v.copy_(state[k])
