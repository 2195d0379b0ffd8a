"""Encoder-decoder models: T5, BART and the original Transformer's shape (appendix A).

An encoder reads the whole input with bidirectional attention; a decoder
writes the output one token at a time with causal self-attention, and in each
block *cross-attention* lets every output position read the encoder's vectors
(queries from the decoder, keys and values from the encoder):

    input_ids (B, S) -> encoder stack -> memory (B, S, C)
    decoder_input_ids (B, T) -> decoder stack (causal self-attn, cross-attn on memory, MLP) -> logits (B, T, V)

Training is teacher forcing: the decoder reads the target shifted right by one
(`shift_right`, starting with `decoder_start_token_id`) and predicts it.
`Seq2SeqLM.generate` decodes greedily or with beam search; the decoder's
self-attention keeps a KV cache that grows by one position per step, and the
cross-attention keys and values are computed once from the memory.

`Seq2SeqLM.from_pretrained(dir)` loads Hugging Face `T5ForConditionalGeneration`
(relative position buckets, RMS norm, pre-LN, ReLU or gated-GELU MLP, unscaled
attention) and `BartForConditionalGeneration` (learned positions offset by 2,
post-LN, GELU, a final logits bias) folders. The forward pass returns
`(logits, loss)` like every model of the book.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from minillm.errors import ConfigError
from minillm.attention import KVCache
from minillm.family import FamilyConfig, Stack, check_ids, init_weights, load_state, padding_mask
from minillm.model import hf_config_errors, read_hf_config, read_hf_weights, resolve_hf_directory


def shift_right(labels: torch.Tensor, start_id: int, pad_id: int) -> torch.Tensor:
    """Decoder inputs for teacher forcing: (B, T) labels -> [start, labels[:, :-1]], -100 replaced by pad."""
    shifted = torch.full_like(labels, start_id)
    shifted[:, 1:] = labels[:, :-1]
    return shifted.masked_fill(shifted == -100, pad_id)


class Seq2SeqLM(nn.Module):
    """An encoder-decoder language model (`FamilyConfig` with `n_decoder_layer > 0`)."""

    def __init__(self, config: FamilyConfig) -> None:
        super().__init__()
        if not config.is_encoder_decoder:
            raise ConfigError("Seq2SeqLM needs a decoder: set n_decoder_layer > 0 (MaskedLM is encoder-only)")
        self.config = c = config
        self.tok_emb = nn.Embedding(c.vocab_size, c.d_model)  # shared by encoder, decoder and (tied) head
        self.encoder = Stack(c)
        self.decoder = Stack(c, decoder=True)
        self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        if c.final_logits_bias:
            self.register_buffer("final_logits_bias", torch.zeros(c.vocab_size))
        init_weights(self, c.init_std)
        if c.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Input ids (B, S) -> memory (B, S, C); attention_mask (B, S) is 1 at tokens, 0 at padding."""
        check_ids(input_ids, self.config.vocab_size)
        return self.encoder(self.tok_emb(input_ids), padding_mask(attention_mask, input_ids))

    def decode(
        self,
        decoder_input_ids: torch.Tensor,
        memory: torch.Tensor | list[tuple[torch.Tensor, torch.Tensor]],
        memory_mask: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
    ) -> torch.Tensor:
        """Decoder ids (B, T) and the encoder's memory -> logits (B, T, V).

        memory: (B, S, C) or its cross-attention keys and values per block
        (`decoder.memory_kv(memory)`); memory_mask: bool (B, S).
        """
        c = self.config
        check_ids(decoder_input_ids, c.vocab_size, "decoder_input_ids")
        mask = padding_mask(decoder_attention_mask, decoder_input_ids, "decoder_attention_mask")
        h = self.decoder(self.tok_emb(decoder_input_ids), mask, memory=memory, memory_mask=memory_mask,
                         kv_cache=kv_cache)  # fmt: skip
        if c.scale_logits:
            h = h * c.d_model**-0.5
        logits = self.lm_head(h)
        return logits + self.final_logits_bias if c.final_logits_bias else logits

    def forward(
        self,
        input_ids: torch.Tensor,
        decoder_input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(input ids (B, S), decoder ids (B, T)) -> (logits (B, T, V), loss).

        Without `decoder_input_ids`, they are `labels` shifted right (teacher
        forcing). loss: mean cross-entropy against labels (B, T), -100 ignored.
        """
        c = self.config
        if decoder_input_ids is None:
            if labels is None:
                raise ConfigError("pass decoder_input_ids, or labels to derive them from (shifted right)")
            check_ids(labels.masked_fill(labels == -100, 0), c.vocab_size, "labels")
            decoder_input_ids = shift_right(labels, c.decoder_start_token_id, c.pad_token_id)
        memory_mask = padding_mask(attention_mask, input_ids)
        memory = self.encode(input_ids, attention_mask)
        logits = self.decode(decoder_input_ids, memory, memory_mask, decoder_attention_mask)
        loss = None
        if labels is not None:
            if labels.shape != decoder_input_ids.shape:
                raise ConfigError(f"labels must have the shape of decoder_input_ids "
                                  f"{tuple(decoder_input_ids.shape)}, got {tuple(labels.shape)}")  # fmt: skip
            loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)
        return logits, loss

    def num_parameters(self) -> int:
        """Number of (unique) parameters; a tied head counts once."""
        return sum(p.numel() for p in self.parameters())

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        max_new_tokens: int = 20,
        num_beams: int = 1,
        length_penalty: float = 1.0,
    ) -> torch.Tensor:
        """Decode an output for each input: (B, S) -> (B, 1 + n) ids, starting with `decoder_start_token_id`.

        Greedy (`num_beams=1`) takes the most likely token at each step; beam
        search keeps the `num_beams` best partial outputs and returns the
        finished one with the best log-probability / length**length_penalty.
        A sequence ends at `eos_token_id` (later positions hold `pad_token_id`);
        decoding stops when all have ended or after `max_new_tokens`.
        """
        c = self.config
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        if max_new_tokens + 1 > c.context_length:
            raise ConfigError(f"max_new_tokens={max_new_tokens} (+1 start token) is longer than the decoder's "
                              f"maximum {c.context_length}")  # fmt: skip
        if isinstance(num_beams, bool) or not isinstance(num_beams, int) or num_beams < 1:
            raise ConfigError(f"num_beams must be a positive integer, got {num_beams!r}")
        was_training = self.training
        self.eval()
        try:
            memory_mask = padding_mask(attention_mask, input_ids)
            memory = self.encode(input_ids, attention_mask)
            if num_beams == 1:
                return self._greedy(memory, memory_mask, max_new_tokens)
            return self._beam(memory, memory_mask, max_new_tokens, num_beams, length_penalty)
        finally:
            self.train(was_training)

    def _greedy(self, memory: torch.Tensor, memory_mask: torch.Tensor | None, n: int) -> torch.Tensor:
        c = self.config
        b = memory.size(0)
        memory_kv = self.decoder.memory_kv(memory)  # cross-attention keys/values, once
        cache = self.decoder.new_kv_cache(b, n + 1)
        out = torch.full((b, 1), c.decoder_start_token_id, dtype=torch.long, device=memory.device)
        done = torch.zeros(b, dtype=torch.bool, device=memory.device)
        step_ids = out
        for _ in range(n):
            logits = self.decode(step_ids, memory_kv, memory_mask, kv_cache=cache)[:, -1]  # (B, V)
            token = logits.argmax(-1).masked_fill(done, c.pad_token_id)
            out = torch.cat([out, token[:, None]], dim=1)
            done |= token == c.eos_token_id
            if done.all():
                break
            step_ids = token[:, None]
        return out

    def _beam(self, memory: torch.Tensor, memory_mask: torch.Tensor | None, n: int, k: int,
              length_penalty: float) -> torch.Tensor:  # fmt: skip
        """Beam search: the B * k live beams are batch rows; each step keeps the k best continuations."""
        c = self.config
        b, device = memory.size(0), memory.device
        memory = memory.repeat_interleave(k, dim=0)  # (B k, S, C): beam j of input i is row i k + j
        memory_mask = None if memory_mask is None else memory_mask.repeat_interleave(k, dim=0)
        memory_kv = self.decoder.memory_kv(memory)
        cache = self.decoder.new_kv_cache(b * k, n + 1)
        seqs = torch.full((b * k, 1), c.decoder_start_token_id, dtype=torch.long, device=device)
        scores = torch.zeros(b, k, device=device)
        scores[:, 1:] = float("-inf")  # all beams start equal: keep only the first
        finished: list[list[tuple[float, torch.Tensor]]] = [[] for _ in range(b)]
        for step in range(1, n + 1):
            logp = self.decode(seqs[:, -1:], memory_kv, memory_mask, kv_cache=cache)[:, -1].float().log_softmax(-1)
            vocab = logp.size(-1)
            total = (scores[:, :, None] + logp.view(b, k, vocab)).view(b, k * vocab)  # (B, k V)
            top_scores, top_ids = total.topk(2 * k, dim=-1)  # enough to find k that are not eos
            next_rows, next_tokens, next_scores = [], [], []
            for i in range(b):
                alive = []
                for score, flat in zip(top_scores[i].tolist(), top_ids[i].tolist()):
                    beam, token = divmod(flat, vocab)
                    if score == float("-inf"):
                        break
                    if token == c.eos_token_id:  # a finished output, scored by its length
                        seq = torch.cat([seqs[i * k + beam], torch.tensor([token], device=device)])
                        finished[i].append((score / step**length_penalty, seq))
                    else:
                        alive.append((score, i * k + beam, token))
                    if len(alive) == k:
                        break
                alive += [(float("-inf"), i * k, c.pad_token_id)] * (k - len(alive))
                next_scores += [a[0] for a in alive]
                next_rows += [a[1] for a in alive]
                next_tokens += [a[2] for a in alive]
            rows = torch.tensor(next_rows, device=device)
            cache.reorder(rows)
            seqs = torch.cat([seqs[rows], torch.tensor(next_tokens, device=device)[:, None]], dim=1)
            scores = torch.tensor(next_scores, device=device).view(b, k)
            if all(self._beam_done(finished[i], scores[i], step, n, k, length_penalty) for i in range(b)):
                break
        for i in range(b):  # outputs still alive at the end compete with the finished ones
            for j in range(k):
                if scores[i, j] > float("-inf"):
                    finished[i].append((float(scores[i, j]) / (seqs.size(1) - 1) ** length_penalty, seqs[i * k + j]))
        best = [max(f, key=lambda pair: pair[0])[1] for f in finished]
        out = torch.full((b, max(len(s) for s in best)), c.pad_token_id, dtype=torch.long, device=device)
        for i, seq in enumerate(best):
            out[i, : len(seq)] = seq
        return out

    @staticmethod
    def _beam_done(finished: list, alive: torch.Tensor, step: int, n: int, k: int, length_penalty: float) -> bool:
        """True when k outputs have finished and no live beam can beat the worst of the best k."""
        if len(finished) < k:
            return False
        worst_kept = sorted(s for s, _ in finished)[-k]
        best_alive = float(alive.max())
        if best_alive == float("-inf"):
            return True
        # log-probabilities only fall, so a live beam's best possible normalized score is
        # its current sum over the length that maximizes it (the longest if penalty > 0)
        best_possible = best_alive / (n if length_penalty > 0 else step) ** length_penalty
        return worst_kept >= best_possible

    @classmethod
    def from_pretrained(cls, name_or_directory: str | os.PathLike,
                        device: torch.device | str | None = None) -> Seq2SeqLM:  # fmt: skip
        """Load a Hugging Face `T5ForConditionalGeneration` or `BartForConditionalGeneration` folder (or hub name)."""
        directory = resolve_hf_directory(name_or_directory)
        hf = read_hf_config(directory)
        weights = read_hf_weights(directory)
        with hf_config_errors(directory):
            config = config_from_hf_seq2seq(hf, weights)
        model = cls(config)
        rename = t5_state_dict if hf["model_type"] == "t5" else bart_state_dict
        load_state(model, rename(weights, config), f"{directory} ({hf['model_type']})")
        return model.to(device) if device is not None else model


# ---------------------------------------------------------------------------
# Hugging Face T5 and BART checkpoints
# ---------------------------------------------------------------------------


def config_from_hf_seq2seq(hf: dict, weights: dict[str, torch.Tensor]) -> FamilyConfig:
    """A `FamilyConfig` from a Hugging Face T5 or BART `config.json` (and its weights, for the tied head)."""
    kind = hf.get("model_type")
    head = weights.get("lm_head.weight")
    shared = weights.get("shared.weight", weights.get("model.shared.weight"))
    tied = head is None or (shared is not None and torch.equal(head, shared))
    if kind == "t5":
        mlp = {"relu": "relu", "gated-gelu": "geglu", "gated-silu": "swiglu"}.get(hf.get("feed_forward_proj", "relu"))
        if mlp is None:
            raise ConfigError(f"T5 feed_forward_proj {hf['feed_forward_proj']!r} is not supported "
                              "(relu, gated-gelu, gated-silu)")  # fmt: skip
        scale = hf.get("scale_decoder_outputs", hf.get("tie_word_embeddings", True) is not False)
        return FamilyConfig(
            vocab_size=hf["vocab_size"], context_length=hf.get("n_positions", 512), d_model=hf["d_model"],
            n_head=hf["num_heads"], d_head=hf["d_kv"], d_ff=hf["d_ff"], n_layer=hf["num_layers"],
            n_decoder_layer=hf.get("num_decoder_layers") or hf["num_layers"], norm="rmsnorm",
            norm_eps=hf.get("layer_norm_epsilon", 1e-6), mlp=mlp, pre_norm=True, bias=False,
            positions="relative", relative_buckets=hf.get("relative_attention_num_buckets", 32),
            relative_max_distance=hf.get("relative_attention_max_distance", 128), attn_scale=1.0,
            tie_embeddings=tied, scale_logits=scale, pad_token_id=_token(hf, "pad_token_id", 0),
            eos_token_id=_token(hf, "eos_token_id", 1), decoder_start_token_id=_token(hf, "decoder_start_token_id", 0),
        )  # fmt: skip
    if kind == "bart":
        act = {"gelu": "gelu_exact", "relu": "relu", "gelu_new": "gelu"}.get(hf.get("activation_function", "gelu"))
        for mine, theirs in (("encoder_attention_heads", "decoder_attention_heads"),
                             ("encoder_ffn_dim", "decoder_ffn_dim")):  # fmt: skip
            if hf[mine] != hf[theirs]:
                raise ConfigError(f"BART configs with {mine} != {theirs} are not supported")
        if act is None:
            raise ConfigError(f"BART activation {hf['activation_function']!r} is not supported")
        return FamilyConfig(
            vocab_size=hf["vocab_size"], context_length=hf["max_position_embeddings"], d_model=hf["d_model"],
            n_head=hf["encoder_attention_heads"], d_ff=hf["encoder_ffn_dim"], n_layer=hf["encoder_layers"],
            n_decoder_layer=hf["decoder_layers"], norm="layernorm", norm_eps=1e-5, mlp=act, pre_norm=False,
            positions="learned", position_offset=2, embed_norm=True, embed_scale=hf.get("scale_embedding", False),
            tie_embeddings=tied, final_logits_bias=True, pad_token_id=_token(hf, "pad_token_id", 1),
            eos_token_id=_token(hf, "eos_token_id", 2), decoder_start_token_id=_token(hf, "decoder_start_token_id", 2),
        )  # fmt: skip
    raise ConfigError(f"Seq2SeqLM.from_pretrained reads T5 and BART folders (model_type 't5' or 'bart'), got "
                      f"{kind!r}; BERT loads with MaskedLM.from_pretrained, GPT-2/Llama with GPT.from_pretrained")


def _token(hf: dict, name: str, default: int) -> int:
    """A special token id of a config.json (missing or null: the model family's default)."""
    value = hf.get(name)
    if isinstance(value, list):  # several end tokens: the first is the one the model writes
        value = value[0] if value else None
    return default if value is None else value


def _fuse(out: dict, qkv: dict[str, dict[str, torch.Tensor]], names: tuple[str, str, str]) -> None:
    """Concatenate collected q, k, v pieces into the fused `qkv` weights (and biases)."""
    for key, pieces in qkv.items():
        if set(pieces) != set(names):
            raise ConfigError(f"the checkpoint lacks some of {names} for {key}: has {sorted(pieces)}")
        out[key] = torch.cat([pieces[n] for n in names], dim=0)


def t5_state_dict(hf: dict[str, torch.Tensor], config: FamilyConfig) -> dict[str, torch.Tensor]:
    """Rename Hugging Face T5 weights to `Seq2SeqLM`'s (q, k, v fused; the bias table of block 0 is the stack's)."""
    out = {"tok_emb.weight": hf["shared.weight"], "lm_head.weight": hf.get("lm_head.weight", hf["shared.weight"])}
    mlp = {"wi": "fc", "wo": "proj"} if config.mlp == "relu" else {"wi_0": "gate", "wi_1": "up", "wo": "down"}
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in hf.items():
        parts = key.split(".")  # {encoder|decoder}.block.{i}.layer.{j}.{module}.{name}.weight
        if key in ("shared.weight", "lm_head.weight") or parts[1:] == ["embed_tokens", "weight"]:
            continue
        stack = parts[0]
        if parts[1:] == ["final_layer_norm", "weight"]:
            out[f"{stack}.norm_f.weight"] = value
            continue
        if len(parts) < 7 or parts[1] != "block" or parts[3] != "layer":
            out[key] = value  # reported as unexpected
            continue
        block, sub, module, name = f"{stack}.blocks.{parts[2]}", int(parts[4]), parts[5], parts[6]
        mlp_sub = 2 if stack == "decoder" else 1
        if module == "layer_norm":
            norm = "norm1" if sub == 0 else "norm2" if sub == mlp_sub else "norm_cross"
            out[f"{block}.{norm}.weight"] = value
        elif module in ("SelfAttention", "EncDecAttention") and name == "relative_attention_bias":
            out[f"{stack}.rel_bias.table.weight"] = value
        elif module in ("SelfAttention", "EncDecAttention"):
            attn = "attn" if module == "SelfAttention" else "cross_attn"
            if name == "o":
                out[f"{block}.{attn}.proj.weight"] = value
            else:
                qkv.setdefault(f"{block}.{attn}.qkv.weight", {})[name] = value
        elif module == "DenseReluDense" and name in mlp:
            out[f"{block}.mlp.{mlp[name]}.weight"] = value
        else:
            out[key] = value
    _fuse(out, qkv, ("q", "k", "v"))
    return out


def bart_state_dict(hf: dict[str, torch.Tensor], config: FamilyConfig) -> dict[str, torch.Tensor]:
    """Rename Hugging Face BART weights to `Seq2SeqLM`'s (q, k, v fused into `qkv`)."""
    hf = {k.removeprefix("model."): v for k, v in hf.items()}
    out = {"tok_emb.weight": hf["shared.weight"], "lm_head.weight": hf.get("lm_head.weight", hf["shared.weight"])}
    if "final_logits_bias" in hf:
        out["final_logits_bias"] = hf["final_logits_bias"].reshape(-1)
    layer = {"self_attn.out_proj": "attn.proj", "self_attn_layer_norm": "norm1", "encoder_attn.out_proj":
             "cross_attn.proj", "encoder_attn_layer_norm": "norm_cross", "fc1": "mlp.fc", "fc2": "mlp.proj",
             "final_layer_norm": "norm2"}  # fmt: skip
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in hf.items():
        parts = key.split(".")
        if key in ("shared.weight", "lm_head.weight", "final_logits_bias") or parts[1:2] == ["embed_tokens"]:
            continue
        stack = parts[0]
        if parts[1] == "embed_positions":
            out[f"{stack}.pos_emb.weight"] = value
        elif parts[1] == "layernorm_embedding":
            out[f"{stack}.embed_norm.{parts[-1]}"] = value
        elif parts[1] == "layers" and len(parts) >= 5:
            block, module = f"{stack}.blocks.{parts[2]}", ".".join(parts[3:-1])
            if module in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                          "encoder_attn.q_proj", "encoder_attn.k_proj", "encoder_attn.v_proj"):  # fmt: skip
                attn = "attn" if module.startswith("self") else "cross_attn"
                qkv.setdefault(f"{block}.{attn}.qkv.{parts[-1]}", {})[module[-6]] = value
            elif module in layer:
                out[f"{block}.{layer[module]}.{parts[-1]}"] = value
            else:
                out[key] = value
        else:
            out[key] = value
    _fuse(out, qkv, ("q", "k", "v"))
    return out
