"""Encoder-only models: BERT's masked language model and a classifier on top (appendix A).

A GPT reads left to right and predicts the next token. BERT (Devlin et al.,
2019) reads the whole text at once (bidirectional attention, no causal mask)
and is trained to fill in blanks: 15% of the tokens are chosen, and of those 80%
become [MASK], 10% a random token and 10% stay, and the model predicts the
originals (`mask_tokens`). What it learns is a representation of each token in
its full context, which a small head turns into a classifier
(`EncoderClassifier`, on the first token's vector as BERT's [CLS]).

    input_ids (B, T) -> token + position + segment embeddings -> norm -> n post-LN blocks
        -> MLM head: dense -> GELU -> norm -> (tied) token embeddings^T + bias -> logits (B, T, V)

`MaskedLM.from_pretrained(dir)` loads a Hugging Face `BertForMaskedLM` folder
(safetensors). Both models follow the book's convention, shared with `GPT`: the
forward pass returns `(logits, loss)`, with loss None without `labels`, so the
fine-tuning loop of chapter 07 (`minillm.finetune.finetune`) trains them.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from minillm.errors import ConfigError
from minillm.family import FamilyConfig, Stack, check_ids, init_weights, load_state, padding_mask
from minillm.layers import ACTIVATIONS, FAMILY_MLPS, make_norm
from minillm.model import hf_config_errors, read_hf_config, read_hf_weights, resolve_hf_directory


class MaskedLM(nn.Module):
    """A BERT-style encoder with its masked-language-model head (`FamilyConfig`, `n_decoder_layer=0`)."""

    def __init__(self, config: FamilyConfig) -> None:
        super().__init__()
        if config.is_encoder_decoder:
            raise ConfigError("MaskedLM is encoder-only: n_decoder_layer must be 0 (Seq2SeqLM has a decoder)")
        self.config = c = config
        self.tok_emb = nn.Embedding(c.vocab_size, c.d_model)
        self.encoder = Stack(c)
        self.head_dense = nn.Linear(c.d_model, c.d_model)
        self.head_act = ACTIVATIONS[FAMILY_MLPS[c.mlp][1]]
        self.head_norm = make_norm(c.norm, c.d_model, c.norm_eps, c.bias)
        self.head_bias = nn.Parameter(torch.zeros(c.vocab_size))
        init_weights(self, c.init_std)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               token_type_ids: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        """Token ids (B, T) -> contextual vectors (B, T, C); attention_mask (B, T) is 1 at tokens, 0 at padding."""
        check_ids(input_ids, self.config.vocab_size)
        mask = padding_mask(attention_mask, input_ids)
        return self.encoder(self.tok_emb(input_ids), mask, token_type_ids)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Token ids (B, T) -> (logits (B, T, V), loss).

        loss: mean cross-entropy over the positions where `labels` (B, T) is not
        -100 (the masked ones, see `mask_tokens`), None without labels.
        """
        h = self.encode(input_ids, attention_mask, token_type_ids)  # (B, T, C)
        h = self.head_norm(self.head_act(self.head_dense(h)))
        logits = h @ self.tok_emb.weight.t() + self.head_bias  # (B, T, V), tied to the input embedding
        loss = None
        if labels is not None:
            if labels.shape != input_ids.shape:
                raise ConfigError(f"labels must have the shape of input_ids {tuple(input_ids.shape)}, "
                                  f"got {tuple(labels.shape)}")  # fmt: skip
            loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)
        return logits, loss

    def num_parameters(self) -> int:
        """Number of (unique) parameters."""
        return sum(p.numel() for p in self.parameters())

    @classmethod
    def from_pretrained(cls, name_or_directory: str | os.PathLike,
                        device: torch.device | str | None = None) -> MaskedLM:  # fmt: skip
        """Load a Hugging Face `BertForMaskedLM` folder (config.json + model.safetensors) or hub name."""
        directory = resolve_hf_directory(name_or_directory)
        hf = read_hf_config(directory)
        with hf_config_errors(directory):
            config = config_from_bert(hf)
        model = cls(config)
        load_state(model, bert_state_dict(read_hf_weights(directory), model.config), f"{directory} (bert)")
        return model.to(device) if device is not None else model


class EncoderClassifier(nn.Module):
    """A classifier on an encoder: the first token's vector -> dense + tanh (BERT's pooler) -> K scores.

    The encoder sees the whole text from every position, so the first token
    (BERT's [CLS]) can summarize it; a decoder-only classifier must read the
    last token instead (`minillm.classify.GPTClassifier`).
    """

    def __init__(self, encoder: MaskedLM, num_classes: int = 2) -> None:
        super().__init__()
        if not isinstance(encoder, MaskedLM):
            raise TypeError(f"EncoderClassifier wraps a MaskedLM, got {type(encoder).__name__}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ConfigError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        c = encoder.config
        self.encoder = encoder
        self.pooler = nn.Linear(c.d_model, c.d_model)
        self.dropout = nn.Dropout(c.dropout)
        self.classifier = nn.Linear(c.d_model, num_classes)
        init_weights(self.pooler, c.init_std)
        init_weights(self.classifier, c.init_std)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Token ids (B, T) -> (class scores (B, K), cross-entropy against labels (B,) or None)."""
        h = self.encoder.encode(input_ids, attention_mask)[:, 0]  # (B, C)
        logits = self.classifier(self.dropout(torch.tanh(self.pooler(h))))  # (B, K)
        loss = None if labels is None else F.cross_entropy(logits.float(), labels.to(logits.device))
        return logits, loss


def mask_tokens(
    input_ids: torch.Tensor,
    mask_token_id: int,
    vocab_size: int,
    p: float = 0.15,
    special_ids: tuple[int, ...] = (),
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking recipe: (corrupted inputs (B, T), labels (B, T)).

    Each token not in `special_ids` is chosen with probability `p`; a chosen
    token becomes `mask_token_id` with probability 0.8, a uniformly random
    token with 0.1, and stays itself with 0.1. labels hold the original token
    at chosen positions and -100 (ignored by the loss) elsewhere. Random
    replacements never draw a special token.
    """
    if not 0.0 < p < 1.0:
        raise ConfigError(f"the masking probability p must be in (0, 1), got {p}")
    check_ids(input_ids, vocab_size)
    if not 0 <= mask_token_id < vocab_size:
        raise ConfigError(f"mask_token_id must be in [0, {vocab_size}), got {mask_token_id}")
    device = input_ids.device

    def uniform() -> torch.Tensor:
        return torch.rand(input_ids.shape, generator=generator, device=device)

    special = torch.isin(input_ids, torch.tensor([*special_ids, mask_token_id], device=device))
    chosen = (uniform() < p) & ~special
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, -100))
    action = uniform()
    to_mask, to_random = chosen & (action < 0.8), chosen & (action >= 0.8) & (action < 0.9)
    allowed = torch.ones(vocab_size, dtype=torch.bool)
    allowed[[*special_ids, mask_token_id]] = False
    pool = allowed.nonzero().flatten().to(device)  # the tokens a random replacement may draw
    random_tokens = pool[torch.randint(len(pool), input_ids.shape, generator=generator, device=device)]
    inputs = torch.where(to_mask, torch.full_like(input_ids, mask_token_id), input_ids)
    return torch.where(to_random, random_tokens, inputs), labels


# ---------------------------------------------------------------------------
# Hugging Face BERT checkpoints
# ---------------------------------------------------------------------------


def config_from_bert(hf: dict) -> FamilyConfig:
    """A `FamilyConfig` from a Hugging Face BERT `config.json`."""
    if hf.get("model_type") != "bert":
        raise ConfigError(f"MaskedLM.from_pretrained reads BERT folders (model_type 'bert'), got "
                          f"{hf.get('model_type')!r}; a GPT-2 or Llama folder loads with GPT.from_pretrained, "
                          "T5 and BART with Seq2SeqLM.from_pretrained")  # fmt: skip
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise ConfigError(f"BERT position_embedding_type {hf['position_embedding_type']!r} is not supported")
    act = {"gelu": "gelu_exact", "relu": "relu", "gelu_new": "gelu"}.get(hf.get("hidden_act", "gelu"))
    if act is None:
        raise ConfigError(f"BERT activation {hf['hidden_act']!r} is not supported (gelu, gelu_new, relu)")
    return FamilyConfig(
        vocab_size=hf["vocab_size"], context_length=hf["max_position_embeddings"], d_model=hf["hidden_size"],
        n_head=hf["num_attention_heads"], d_ff=hf["intermediate_size"], n_layer=hf["num_hidden_layers"],
        norm="layernorm", norm_eps=hf.get("layer_norm_eps", 1e-12), mlp=act, pre_norm=False,
        positions="learned", n_segments=hf.get("type_vocab_size", 2), embed_norm=True,
        pad_token_id=hf.get("pad_token_id") or 0, eos_token_id=hf.get("pad_token_id") or 0,
        decoder_start_token_id=hf.get("pad_token_id") or 0, init_std=hf.get("initializer_range", 0.02),
    )  # fmt: skip


def bert_state_dict(hf: dict[str, torch.Tensor], config: FamilyConfig) -> dict[str, torch.Tensor]:
    """Rename Hugging Face BERT weights to `MaskedLM`'s; q, k and v are fused into `qkv`."""
    hf = {k.removeprefix("bert."): v for k, v in hf.items()}
    names = {"embeddings.word_embeddings.weight": "tok_emb.weight",
             "embeddings.position_embeddings.weight": "encoder.pos_emb.weight",
             "embeddings.token_type_embeddings.weight": "encoder.seg_emb.weight",
             "embeddings.LayerNorm.weight": "encoder.embed_norm.weight",
             "embeddings.LayerNorm.bias": "encoder.embed_norm.bias",
             "cls.predictions.transform.dense.weight": "head_dense.weight",
             "cls.predictions.transform.dense.bias": "head_dense.bias",
             "cls.predictions.transform.LayerNorm.weight": "head_norm.weight",
             "cls.predictions.transform.LayerNorm.bias": "head_norm.bias",
             "cls.predictions.bias": "head_bias"}  # fmt: skip
    layer = {"attention.output.dense": "attn.proj", "attention.output.LayerNorm": "norm1",
             "intermediate.dense": "mlp.fc", "output.dense": "mlp.proj", "output.LayerNorm": "norm2"}  # fmt: skip
    out: dict[str, torch.Tensor] = {}
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in hf.items():
        if key in ("embeddings.position_ids", "cls.predictions.decoder.weight", "cls.predictions.decoder.bias"):
            continue  # a buffer, and the head tied to the embeddings and to cls.predictions.bias
        if key in names:
            out[names[key]] = value
            continue
        parts = key.split(".")  # encoder.layer.{i}.{module...}.{weight|bias}
        module = ".".join(parts[3:-1])
        prefix = f"encoder.blocks.{parts[2]}." if parts[:2] == ["encoder", "layer"] else None
        if prefix and module in ("attention.self.query", "attention.self.key", "attention.self.value"):
            qkv.setdefault(f"{prefix}attn.qkv.{parts[-1]}", {})[module.rsplit(".", 1)[1]] = value
        elif prefix and module in layer:
            out[f"{prefix}{layer[module]}.{parts[-1]}"] = value
        else:
            out[key] = value  # reported as unexpected
    for key, pieces in qkv.items():
        out[key] = torch.cat([pieces[n] for n in ("query", "key", "value")], dim=0)
    return out
