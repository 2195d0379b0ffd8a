"""GPT-2 and Llama-style language models from one config (chapter 04).

Chapter 04 (`04_gpt_model`) assembles the blocks of `minillm.layers` into a
decoder-only language model, counts its parameters and FLOPs, initializes it
like GPT-2, and loads published weights. Everything here is one class, `GPT`,
configured by a `GPTConfig`:

    token ids (B, T) -> embeddings (+ positions) -> n_layer blocks -> norm -> logits (B, T, V)

* `GPTConfig.from_preset("gpt2" | "gpt2-medium" | "gpt2-large" | "gpt2-xl" |
  "llama-110m" | "llama2-7b")` gives the published shapes;
* `GPT.from_pretrained(dir_or_name)` loads a Hugging Face GPT-2 or Llama
  checkpoint (the name mapping lives in `hf_state_dict`);
* `model.save(dir)` / `GPT.load(dir)` write and read minillm's own checkpoints
  (`config.json` + `model.safetensors`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from minillm.attention import AttentionConfig, KVCache, sinusoidal_positions
from minillm.errors import CheckpointError, CheckpointNotFoundError, ConfigError, StorageError
from minillm.fileio import atomic_path, atomic_write
from minillm.layers import MLPS, NORMS, Block, make_norm


@dataclass
class GPTConfig:
    """Shape and variant choices of a `GPT` model; validated on creation."""

    vocab_size: int = 50257
    context_length: int = 1024  # longest sequence the model accepts
    d_model: int = 768  # width of the residual stream
    n_layer: int = 12
    n_head: int = 12
    n_kv_head: int | None = None  # None: n_head; fewer = grouped-query attention; 1 = multi-query
    d_ff: int | None = None  # MLP width; None: 4*d_model (gelu), 8/3*d_model rounded up to 256 (swiglu)
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    norm_eps: float = 1e-5
    mlp: Literal["gelu", "gelu_exact", "swiglu"] = "gelu"  # GPT-2's tanh GELU, the exact GELU, Llama's
    positions: Literal["learned", "sinusoidal", "rope", "none"] = "learned"
    rope_theta: float = 10000.0
    bias: bool = True  # biases in linear layers and LayerNorms
    dropout: float = 0.0
    tie_embeddings: bool = True  # output head shares the token embedding matrix
    pre_norm: bool = True  # False: post-LN (original transformer)
    attn_impl: Literal["sdpa", "manual"] = "sdpa"  # fused PyTorch kernel | written out
    vocab_multiple: int = 1  # pad the embedding rows to a multiple of this (64 helps GPUs)
    init_std: float = 0.02
    d_head: int | None = None  # head size D; None: d_model // n_head (pruned heads keep their size)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "context_length", "d_model", "n_layer", "n_head", "ff_width", "vocab_multiple"):
            value = getattr(self, name)  # d_model before ff_width: a zero width is blamed on d_model
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.d_head is not None and (isinstance(self.d_head, bool) or not isinstance(self.d_head, int)
                                        or self.d_head <= 0):
            raise ConfigError(f"d_head must be a positive integer or None (d_model // n_head), got {self.d_head!r}")
        if self.norm not in NORMS:
            raise ConfigError(f"norm must be one of {NORMS}, got {self.norm!r}")
        if self.mlp not in MLPS:
            raise ConfigError(f"mlp must be one of {MLPS}, got {self.mlp!r}")
        if self.positions == "sinusoidal" and self.d_model % 2:
            raise ConfigError(f"sinusoidal positions need an even d_model, got {self.d_model}")
        self.attention()  # validates d_model, heads, positions, dropout, attn_impl

    @classmethod
    def from_preset(cls, name: str, **overrides) -> GPTConfig:
        """A named configuration (see `MODEL_SHAPES`), optionally with fields overridden."""
        if name not in MODEL_SHAPES:
            raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(MODEL_SHAPES)}")
        return cls(**{**MODEL_SHAPES[name], **overrides})

    def attention(self) -> AttentionConfig:
        """The `AttentionConfig` of every block."""
        return AttentionConfig(
            d_model=self.d_model, n_head=self.n_head, n_kv_head=self.n_kv_head,
            context_length=self.context_length, bias=self.bias, dropout=self.dropout,
            positions=self.positions, rope_theta=self.rope_theta, attn_impl=self.attn_impl, d_head=self.d_head,
        )  # fmt: skip

    @property
    def head_dim(self) -> int:
        """D, the size of each attention head: `d_head`, or d_model // n_head when that is None."""
        return self.attention().head_dim

    def to_dict(self) -> dict:
        """The fields as a dict, `d_head` left out while it is None (so configs, and the digests of runs,
        written before the field existed read and hash as they did)."""
        fields = dataclasses.asdict(self)
        if fields["d_head"] is None:
            del fields["d_head"]
        return fields

    @property
    def kv_heads(self) -> int:
        """Key/value heads: `n_kv_head`, or `n_head` when that is None (derived, never stored)."""
        return self.n_head if self.n_kv_head is None else self.n_kv_head

    @property
    def ff_width(self) -> int:
        """The MLP's hidden width: `d_ff`, or by default 4*d_model (gelu, gelu_exact) / 8/3*d_model rounded up to 256 (swiglu).

        A property, not a value filled in at creation, so that
        `dataclasses.replace(config, mlp="swiglu")` gets the SwiGLU default.
        """
        if self.d_ff is not None:
            return self.d_ff
        return 256 * math.ceil(8 * self.d_model / 3 / 256) if self.mlp == "swiglu" else 4 * self.d_model

    def resolved(self) -> dict:
        """The fields with derived values filled in (`n_kv_head`, `d_ff`, `d_head`): equal dicts mean equal models."""
        return {**dataclasses.asdict(self), "n_kv_head": self.kv_heads, "d_ff": self.ff_width, "d_head": self.head_dim}

    def differences(self, other: GPTConfig, ignore: tuple[str, ...] = ()) -> dict:
        """{field: (self's value, other's value)} where the two configs give different models."""
        mine, theirs = self.resolved(), other.resolved()
        return {k: (v, theirs[k]) for k, v in mine.items() if theirs[k] != v and k not in ignore}

    @property
    def padded_vocab_size(self) -> int:
        """Rows of the embedding / output matrices: vocab_size rounded up to `vocab_multiple`."""
        return self.vocab_multiple * math.ceil(self.vocab_size / self.vocab_multiple)


_GPT2 = {"vocab_size": 50257, "context_length": 1024, "norm": "layernorm", "mlp": "gelu", "positions": "learned"}
_LLAMA = {"vocab_size": 32000, "norm": "rmsnorm", "mlp": "swiglu", "positions": "rope", "bias": False}
MODEL_SHAPES: dict[str, dict] = {
    "gpt2": dict(_GPT2, d_model=768, n_layer=12, n_head=12),
    "gpt2-medium": dict(_GPT2, d_model=1024, n_layer=24, n_head=16),
    "gpt2-large": dict(_GPT2, d_model=1280, n_layer=36, n_head=20),
    "gpt2-xl": dict(_GPT2, d_model=1600, n_layer=48, n_head=25),
    # llama2.c's "stories110M" shapes (tied embeddings).
    "llama-110m": dict(_LLAMA, context_length=1024, d_model=768, n_layer=12, n_head=12, d_ff=2048),
    "llama2-7b": dict(_LLAMA, context_length=4096, d_model=4096, n_layer=32, n_head=32, d_ff=11008,
                      tie_embeddings=False),
}  # fmt: skip


class GPT(nn.Module):
    """A decoder-only transformer language model (GPT-2 or Llama style, per `GPTConfig`)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        c, v = config, config.padded_vocab_size
        self.tok_emb = nn.Embedding(v, c.d_model)
        self.pos_emb = nn.Embedding(c.context_length, c.d_model) if c.positions == "learned" else None
        if c.positions == "sinusoidal":
            self.register_buffer("pos_table", sinusoidal_positions(c.context_length, c.d_model), persistent=False)
        self.dropout = nn.Dropout(c.dropout)
        attn = c.attention()
        self.blocks = nn.ModuleList(
            Block(attn, c.ff_width, c.norm, c.mlp, c.norm_eps, c.pre_norm) for _ in range(c.n_layer)
        )
        # Post-LN blocks already end in a norm; pre-LN needs one before the head.
        self.norm_f = make_norm(c.norm, c.d_model, c.norm_eps, c.bias) if c.pre_norm else nn.Identity()
        self.lm_head = nn.Linear(c.d_model, v, bias=False)
        if c.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        self.apply(self._init_weights)
        # GPT-2: each block adds two projections to the residual stream; scale them
        # so the stream's variance does not grow with depth.
        for name, p in self.named_parameters():
            if name.endswith(("attn.proj.weight", "mlp.proj.weight", "mlp.down.weight")):
                nn.init.normal_(p, mean=0.0, std=c.init_std / math.sqrt(2 * c.n_layer))

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.init_std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    # -- forward ------------------------------------------------------------

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
        only_last: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Token ids (B, T) -> (logits, loss).

        logits: (B, T, vocab_size), or (B, 1, vocab_size) with `only_last` (generation).
        loss: mean cross-entropy against `targets` (B, T) (entries -100 ignored), or
        None without targets. With a `kv_cache`, idx continues the cached sequence
        and the cache is advanced by T.
        """
        c = self.config
        if idx.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"token ids must be an integer tensor, got {idx.dtype}")
        if idx.dim() != 2:
            raise ConfigError(f"token ids must have shape (B, T), got {tuple(idx.shape)}")
        b, t = idx.shape
        start = kv_cache.length if kv_cache is not None else 0  # an int, or (B,) when each row has its own
        if isinstance(start, torch.Tensor) and start.shape != (b,):
            raise ConfigError(f"the KV cache has {start.numel()} rows in use, the batch has {b} sequences")
        longest = int(start.max()) + t if isinstance(start, torch.Tensor) else start + t
        if longest > c.context_length:
            raise ConfigError(
                f"sequence of {longest} tokens is longer than the context length {c.context_length}; "
                "crop the input (e.g. idx[:, -context_length:]) or reset the KV cache"
            )
        if not torch.compiler.is_compiling() and idx.numel():
            lo, hi = int(idx.min()), int(idx.max())
            if lo < 0 or hi >= c.vocab_size:
                raise ConfigError(f"token ids must be in [0, {c.vocab_size}), got values in [{lo}, {hi}]")
        x = self.tok_emb(idx)  # (B, T, C)
        if isinstance(start, torch.Tensor):  # row b at positions start[b] .. start[b] + t - 1
            where = start[:, None].to(idx.device) + torch.arange(t, device=idx.device)  # (B, T)
        else:
            where = torch.arange(start, start + t, device=idx.device)  # (T,)
        if self.pos_emb is not None:
            x = x + self.pos_emb(where)
        elif c.positions == "sinusoidal":
            x = x + self.pos_table[where].to(x.dtype)
        x = self.dropout(x)
        for layer, block in enumerate(self.blocks):
            x = block(x, kv_cache, layer)
        if kv_cache is not None:
            kv_cache.advance(t)
        x = self.norm_f(x)
        if only_last:
            x = x[:, -1:]
        logits = self.lm_head(x)[..., : c.vocab_size]  # (B, T, V); drops padded rows
        loss = None
        if targets is not None:
            if targets.shape != idx.shape:
                raise ConfigError(f"targets must have the shape of idx {tuple(idx.shape)}, got {tuple(targets.shape)}")
            if only_last:
                raise ConfigError("only_last=True drops the logits a loss needs; leave it False with targets")
            loss = F.cross_entropy(logits.float().reshape(b * t, -1), targets.reshape(b * t), ignore_index=-100)
        return logits, loss

    def new_kv_cache(
        self, batch_size: int, max_len: int | None = None, dtype: torch.dtype | None = None,
        kind: type[KVCache] = KVCache,
    ) -> KVCache:
        """An empty `KVCache` for this model on its device (max_len defaults to the context length).

        `kind`: a `KVCache` class with its constructor, e.g. appendix B's
        `minillm.quantize_kv.Int8KVCache`; `dtype` (default: the weights') is
        the float type its keys and values come back in.
        """
        c = self.config
        max_len = c.context_length if max_len is None else max_len
        if isinstance(max_len, bool) or not isinstance(max_len, int) or not 0 < max_len <= c.context_length:
            raise ConfigError(f"max_len must be an int in [1, {c.context_length}], got {max_len!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be an int >= 1, got {batch_size!r}")
        w = self.tok_emb.weight
        return kind(c.n_layer, batch_size, c.kv_heads, c.head_dim, max_len, w.device, dtype or w.dtype)

    # -- counting -----------------------------------------------------------

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Number of (unique) parameters; tied weights count once.

        `exclude_embeddings=True` leaves out the token and learned position
        embeddings (Kaplan et al.'s N); an untied output head is kept.
        """
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            n -= self.tok_emb.weight.numel()
            if self.pos_emb is not None:
                n -= self.pos_emb.weight.numel()
        return n

    def flops_per_token(self, seq_len: int | None = None, training: bool = True) -> int:
        """Approximate FLOPs per token: 6 N + 12 n_layer T H D for training (H D = d_model unless `d_head` is set).

        N counts the weights used in matrix multiplies (everything except the
        embedding look-ups, including the output head even when tied). A forward
        pass costs 2 FLOPs per weight per token (multiply + add), the backward pass
        twice that: 6 N. Attention adds q k^T and probabilities @ v: 2 * 2 T H D
        per layer forward, times 3 for training: 12 n_layer T H D, with T the
        sequence length (`seq_len`, default the context length). Forward only
        (`training=False`) is a third of it.
        """
        c = self.config
        t = c.context_length if seq_len is None else seq_len
        n = self.num_parameters(exclude_embeddings=True) + (self.lm_head.weight.numel() if c.tie_embeddings else 0)
        total = 6 * n + 12 * c.n_layer * t * c.n_head * c.head_dim
        return total if training else total // 3

    # -- checkpoints --------------------------------------------------------

    def save(self, directory: str | os.PathLike) -> Path:
        """Write `config.json` and `model.safetensors` to `directory` (atomically); returns it."""
        return save_weights(directory, self.config, self.state_dict())

    @classmethod
    def load(cls, directory: str | os.PathLike, device: torch.device | str | None = None) -> GPT:
        """Load a folder written by `save`; raises CheckpointError if it is incomplete, corrupt or inconsistent."""
        directory = Path(directory)
        config_path, weights_path = directory / "config.json", directory / "model.safetensors"
        for path in (config_path, weights_path):
            if not path.is_file():
                raise CheckpointNotFoundError(f"{path} not found; a minillm model folder holds config.json and "
                                              "model.safetensors (written by GPT.save)")  # fmt: skip
        try:
            fields = json.loads(config_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise CheckpointError(f"{config_path} is not valid JSON ({err}); the folder is damaged") from err
        if not isinstance(fields, dict):
            raise CheckpointError(f"{config_path} does not hold a GPTConfig object")
        unknown = set(fields) - {f.name for f in dataclasses.fields(GPTConfig)}
        if unknown:
            raise CheckpointError(f"{config_path} has unknown GPTConfig fields {sorted(unknown)}")
        try:
            config = GPTConfig(**fields)
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"{config_path} holds an invalid model config: {err}") from err
        model = cls(config)
        model.load_weights(read_safetensors(weights_path), source=str(weights_path))
        return model.to(device) if device is not None else model

    def load_weights(self, state: dict[str, torch.Tensor], source: str = "state dict") -> None:
        """Copy `state` into the model; every key and shape must match (tied head may be absent)."""
        own = self.state_dict()
        if self.config.tie_embeddings:
            own.pop("lm_head.weight")
            state = {k: v for k, v in state.items() if k != "lm_head.weight"}
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        wrong = [f"{k}: {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                 for k in own if k in state and state[k].shape != own[k].shape]  # fmt: skip
        if missing or unexpected or wrong:
            raise CheckpointError(
                f"{source} does not match the model config: missing keys {missing[:8]}, "
                f"unexpected keys {unexpected[:8]}, wrong shapes {wrong[:8]}"
            )
        with torch.no_grad():
            for k, v in own.items():
                v.copy_(state[k])

    # -- published weights --------------------------------------------------

    @classmethod
    def from_pretrained(cls, name_or_directory: str | os.PathLike, device: torch.device | str | None = None) -> GPT:
        """Load a Hugging Face GPT-2 (`GPT2LMHeadModel`) or Llama (`LlamaForCausalLM`) checkpoint.

        `name_or_directory` is a directory with `config.json` and
        `model.safetensors` (or sharded safetensors with an index), or a hub name
        such as "gpt2" / "gpt2-medium", downloaded with `huggingface_hub` (online
        only). Weights are loaded in float32.
        """
        directory = resolve_hf_directory(name_or_directory)
        hf = read_hf_config(directory)
        with hf_config_errors(directory):
            config = config_from_hf(hf)
        model = cls(config)
        model.load_weights(hf_state_dict(read_hf_weights(directory), model.config, hf["model_type"]),
                           source=f"{directory} ({hf['model_type']})")  # fmt: skip
        return model.to(device) if device is not None else model


# ---------------------------------------------------------------------------
# Weights on disk (safetensors: tensors only, nothing executable)
# ---------------------------------------------------------------------------


def save_weights(directory: str | os.PathLike, config: GPTConfig, state: dict[str, torch.Tensor]) -> Path:
    """Write a model's `state` (a full, unsharded state dict) and `config` as `model.safetensors` + `config.json`.

    A tied head is stored once (as `tok_emb.weight`). Each file is written atomically.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    if config.tie_embeddings:
        tensors.pop("lm_head.weight", None)  # the same tensor as tok_emb.weight
    write_safetensors(directory / "model.safetensors", tensors)
    atomic_write(directory / "config.json", json.dumps(config.to_dict(), indent=2) + "\n")
    return directory


def write_safetensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor]) -> Path:
    """Write `tensors` (contiguous, on the CPU) to a safetensors file atomically; a full disk raises StorageError."""
    with atomic_path(path) as tmp:
        try:
            save_file(tensors, tmp, metadata={"format": "pt"})
        except Exception as err:  # safetensors reports a full disk as its own SafetensorError
            if isinstance(err, OSError) or "I/O error" in str(err):
                raise StorageError(f"could not write {path} ({err})") from err
            raise
    return Path(path)


def read_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; a truncated or corrupt file raises CheckpointError."""
    try:
        return load_file(path)
    except FileNotFoundError:
        raise CheckpointNotFoundError(f"{path} not found") from None
    except Exception as err:  # safetensors raises its own SafetensorError (and OSError) for damaged files
        raise CheckpointError(f"{path} is not a readable safetensors file ({type(err).__name__}: {err}); "
                              "it is truncated or corrupt: use another checkpoint or train again") from err


# ---------------------------------------------------------------------------
# Hugging Face checkpoints
# ---------------------------------------------------------------------------


def resolve_hf_directory(name_or_directory: str | os.PathLike) -> Path:
    """A Hugging Face model folder: a local directory with config.json, or a hub name downloaded (online only)."""
    path = Path(name_or_directory)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} has no config.json; expected a Hugging Face model directory")
        return path
    if path.exists():
        raise FileNotFoundError(f"{name_or_directory} is not a model directory (config.json + model.safetensors)")
    try:
        from huggingface_hub import snapshot_download

        patterns = ["config.json", "*.safetensors", "model.safetensors.index.json"]
        return Path(snapshot_download(str(name_or_directory), allow_patterns=patterns))
    except Exception as err:  # offline, unknown repo, no huggingface_hub
        raise FileNotFoundError(
            f"{name_or_directory!r} is not a local directory and could not be fetched from the "
            f"Hugging Face hub ({type(err).__name__}: {err}). Go online (and install huggingface_hub), "
            "or pass a directory holding config.json and model.safetensors."
        ) from err


def read_hf_config(directory: Path) -> dict:
    """The `config.json` of a Hugging Face folder as a dict; damaged JSON raises CheckpointError."""
    path = directory / "config.json"
    try:
        hf = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is not valid JSON ({err}); the folder is damaged") from err
    if not isinstance(hf, dict):
        raise CheckpointError(f"{path} does not hold a model configuration (a JSON object)")
    return hf


@contextlib.contextmanager
def hf_config_errors(directory: Path) -> Iterator[None]:
    """Turn a field missing from (or mistyped in) a Hugging Face config.json into a CheckpointError."""
    try:
        yield
    except (KeyError, TypeError) as err:
        raise CheckpointError(f"{directory / 'config.json'} lacks or mistypes a field the model needs "
                              f"({type(err).__name__}: {err}); the folder is damaged or not a model folder") from err


def read_hf_weights(directory: Path) -> dict[str, torch.Tensor]:
    """The tensors of a Hugging Face folder: one model.safetensors or the shards its index names."""
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (directory / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise CheckpointNotFoundError(f"{directory} has no model.safetensors (minillm reads no pickled "
                                      "pytorch_model.bin); save the model with safe_serialization=True")  # fmt: skip
    state: dict[str, torch.Tensor] = {}
    for name in files:
        state.update(read_safetensors(directory / name))
    return state


def config_from_hf(hf: dict) -> GPTConfig:
    """A `GPTConfig` from a Hugging Face `config.json` (model_type "gpt2" or "llama")."""
    kind = hf.get("model_type")
    if kind == "gpt2":
        act = hf.get("activation_function", "gelu_new")
        mlp = {"gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "gelu": "gelu_exact"}.get(act)
        if mlp is None:
            raise ConfigError(f"GPT-2 activation {act!r} is not supported (only GELU: gelu_new, gelu_pytorch_tanh, gelu)")
        return GPTConfig(
            vocab_size=hf["vocab_size"], context_length=hf["n_positions"], d_model=hf["n_embd"],
            n_layer=hf["n_layer"], n_head=hf["n_head"], d_ff=hf.get("n_inner") or 4 * hf["n_embd"],
            norm_eps=hf.get("layer_norm_epsilon", 1e-5), tie_embeddings=hf.get("tie_word_embeddings", True),
            mlp=mlp, **{k: _GPT2[k] for k in ("norm", "positions")},
        )  # fmt: skip
    if kind == "llama":
        rope = hf.get("rope_parameters") or {}
        rope_type = rope.get("rope_type", "default")
        if hf.get("rope_scaling") or rope_type != "default":
            raise ConfigError(f"Llama RoPE scaling ({hf.get('rope_scaling') or rope_type}) is not supported")
        if hf.get("hidden_act", "silu") != "silu":
            raise ConfigError(f"Llama activation {hf['hidden_act']!r} is not supported (only silu)")
        head_dim = hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"]
        d_head = None if head_dim * hf["num_attention_heads"] == hf["hidden_size"] else head_dim  # e.g. a pruned one
        if hf.get("attention_bias", False) != hf.get("mlp_bias", False):
            raise ConfigError("Llama configs with attention_bias != mlp_bias are not supported")
        return GPTConfig(
            vocab_size=hf["vocab_size"], context_length=hf["max_position_embeddings"], d_model=hf["hidden_size"],
            n_layer=hf["num_hidden_layers"], n_head=hf["num_attention_heads"],
            n_kv_head=hf.get("num_key_value_heads") or hf["num_attention_heads"], d_ff=hf["intermediate_size"],
            norm="rmsnorm", norm_eps=hf.get("rms_norm_eps", 1e-6), mlp="swiglu", positions="rope",
            rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
            bias=hf.get("attention_bias", False), tie_embeddings=hf.get("tie_word_embeddings", False), d_head=d_head,
        )  # fmt: skip
    raise ConfigError(f"model_type {kind!r} is not supported; GPT.from_pretrained reads 'gpt2' and 'llama'")


def hf_state_dict(hf: dict[str, torch.Tensor], config: GPTConfig, kind: str) -> dict[str, torch.Tensor]:
    """Rename (and for GPT-2 transpose) Hugging Face weights to minillm's names.

    GPT-2 stores its linear layers as `Conv1D` with weight (in, out): transposed to
    `nn.Linear`'s (out, in). Llama's separate q/k/v projections are concatenated
    into the fused `qkv`; its rotate-half RoPE layout is ours, so no permutation.
    """
    out: dict[str, torch.Tensor] = {}
    if kind == "gpt2":
        hf = {k.removeprefix("transformer."): v for k, v in hf.items()}
        names = {"wte.weight": "tok_emb.weight", "wpe.weight": "pos_emb.weight", "ln_f.weight": "norm_f.weight",
                 "ln_f.bias": "norm_f.bias", "lm_head.weight": "lm_head.weight"}  # fmt: skip
        layer = {"ln_1": "norm1", "ln_2": "norm2", "attn.c_attn": "attn.qkv", "attn.c_proj": "attn.proj",
                 "mlp.c_fc": "mlp.fc", "mlp.c_proj": "mlp.proj"}  # fmt: skip
        for key, value in hf.items():
            if key.endswith((".attn.bias", ".attn.masked_bias")):  # causal-mask buffers, not weights
                continue
            if key in names:
                out[names[key]] = value
                continue
            parts = key.split(".")  # h.{i}.{module...}.{weight|bias}
            module = ".".join(parts[2:-1])
            if parts[0] != "h" or module not in layer:
                out[key] = value  # reported as unexpected by load_weights
                continue
            conv1d = module != "ln_1" and module != "ln_2" and parts[-1] == "weight"
            out[f"blocks.{parts[1]}.{layer[module]}.{parts[-1]}"] = value.t() if conv1d else value
        return out
    hf = {k.removeprefix("model."): v for k, v in hf.items()}
    names = {"embed_tokens.weight": "tok_emb.weight", "norm.weight": "norm_f.weight",
             "lm_head.weight": "lm_head.weight"}  # fmt: skip
    layer = {"input_layernorm": "norm1", "post_attention_layernorm": "norm2", "self_attn.o_proj": "attn.proj",
             "mlp.gate_proj": "mlp.gate", "mlp.up_proj": "mlp.up", "mlp.down_proj": "mlp.down"}  # fmt: skip
    projections = {"self_attn.q_proj": "q", "self_attn.k_proj": "k", "self_attn.v_proj": "v"}
    qkv: dict[str, dict[str, torch.Tensor]] = {}  # fused key -> {"q": ..., "k": ..., "v": ...}
    for key, value in hf.items():
        if key.endswith("rotary_emb.inv_freq"):
            continue
        if key in names:
            out[names[key]] = value
            continue
        parts = key.split(".")  # layers.{i}.{module...}.{weight|bias}
        module = ".".join(parts[2:-1])
        if parts[0] == "layers" and module in projections:
            qkv.setdefault(f"blocks.{parts[1]}.attn.qkv.{parts[-1]}", {})[projections[module]] = value
        elif parts[0] == "layers" and module in layer:
            out[f"blocks.{parts[1]}.{layer[module]}.{parts[-1]}"] = value
        else:
            out[key] = value
    for key, pieces in qkv.items():
        if set(pieces) != {"q", "k", "v"}:
            raise ConfigError(f"Llama checkpoint lacks some of q_proj/k_proj/v_proj for {key}: has {sorted(pieces)}")
        out[key] = torch.cat([pieces["q"], pieces["k"], pieces["v"]], dim=0)
    return out
