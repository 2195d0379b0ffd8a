"""LoRA, low-rank adaptation, written from scratch (chapter 07).

Chapter 07 (`07_finetuning`) fine-tunes a model by training a small number of
new weights instead of all of them. LoRA (Hu et al., 2021) freezes a linear
layer's weight W (out, in) and learns a low-rank change to it:

    y = x W^T + b + (alpha / r) * dropout(x) A^T B^T      A: (r, in), B: (out, r)

With r much smaller than in and out, A and B hold r * (in + out) numbers
instead of in * out. B starts at zero, so the adapted model starts out equal to
the base model; A starts random (Kaiming-uniform, as in the paper's code and
`peft`), so gradients reach B from the first step. After training, the change
can be *merged*, W <- W + (alpha / r) B A, giving a plain linear layer that is
exactly as fast as the original (and *unmerged* again).

* `LoRAConfig`: rank, alpha, dropout and which layers (`targets`, name patterns);
* `LoRALinear`: an `nn.Linear` plus its adapter (rank r <= min(in, out));
* `inject_lora(model, config)`: wrap the matching linear layers, freeze the rest;
* `merge_lora` / `unmerge_lora` / `remove_lora`: fold the adapters in or out;
* `lora_state_dict`, `save_adapter`, `load_adapter`: only A and B (safetensors);
* `count_parameters`: trainable and total parameters of any module.
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from minillm.errors import ConfigError
from minillm.fileio import atomic_path

#: Attention and MLP projections of a GPT-2-style `minillm.model.GPT`.
GPT2_TARGETS = ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj")
ADAPTER_FORMAT = "minillm-lora"


@dataclass
class LoRAConfig:
    """Which linear layers get an adapter, and its shape.

    `targets`: module-name patterns. A linear layer is adapted when its full name
    (as in `model.named_modules()`, e.g. "blocks.3.attn.qkv") equals a pattern,
    ends with "." + pattern, or matches it as a shell-style glob
    ("blocks.*.mlp.fc", "blocks.1[01].*"). The default adapts the query, key and
    value projection of every attention layer, as the LoRA paper does.
    """

    rank: int = 8
    alpha: float = 16.0  # the update is scaled by alpha / rank
    dropout: float = 0.0  # applied to the adapter's input only
    targets: tuple[str, ...] = ("attn.qkv",)

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ConfigError(f"LoRA rank must be a positive integer, got {self.rank!r}")
        if not self.alpha > 0:
            raise ConfigError(f"LoRA alpha must be > 0, got {self.alpha!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"LoRA dropout must be in [0, 1), got {self.dropout!r}")
        if isinstance(self.targets, str):
            self.targets = (self.targets,)
        self.targets = tuple(self.targets)
        if not self.targets or not all(isinstance(t, str) and t for t in self.targets):
            raise ConfigError(f"targets must be non-empty module-name patterns, got {self.targets!r}")

    @property
    def scaling(self) -> float:
        """alpha / rank, the factor on B A."""
        return self.alpha / self.rank


class LoRALinear(nn.Module):
    """A frozen `nn.Linear` plus a trainable low-rank update (alpha / r) B A.

    x: (..., in) -> (..., out). `base` is the wrapped layer (its weight and bias
    are set to `requires_grad=False`); `lora_A` (r, in) and `lora_B` (out, r) are
    the adapter. While `merged`, the update lives inside `base.weight` and the
    forward pass is the plain linear layer.
    """

    def __init__(self, base: nn.Linear, rank: int = 8, alpha: float = 16.0, dropout: float = 0.0) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRALinear wraps an nn.Linear, got {type(base).__name__}")
        LoRAConfig(rank=rank, alpha=alpha, dropout=dropout)  # validates the numbers
        _check_rank(rank, base)  # before A and B are allocated
        self.base = base
        self.rank, self.alpha, self.scaling = rank, alpha, alpha / rank
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, device=w.device, dtype=w.dtype))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=w.device, dtype=w.dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # nn.Linear's default init
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        for p in base.parameters():
            p.requires_grad_(False)

    def delta_weight(self) -> torch.Tensor:
        """The update (alpha / r) B A, shaped like the base weight (out, in)."""
        return (self.lora_B @ self.lora_A) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., in) -> (..., out): base(x) + (alpha / r) dropout(x) A^T B^T."""
        y = self.base(x)
        if self.merged:
            return y
        return y + F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B) * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into the base weight: W <- W + (alpha / r) B A (no-op if merged)."""
        if not self.merged:
            self.base.weight += self.delta_weight().to(self.base.weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take the update out of the base weight again: W <- W - (alpha / r) B A."""
        if self.merged:
            self.base.weight -= self.delta_weight().to(self.base.weight.dtype)
            self.merged = False

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha}, merged={self.merged}"


def _check_rank(rank: int, layer: nn.Linear, name: str = "the layer") -> None:
    """Raise ConfigError unless `rank` <= min(in, out) of `layer`: B A can have no higher rank than that,
    so a larger rank only costs memory (and a huge one allocates until the machine gives up)."""
    width = min(layer.in_features, layer.out_features)
    if rank > width:
        raise ConfigError(f"LoRA rank {rank} is larger than {name} ({layer.in_features} -> {layer.out_features}) "
                          f"allows: an update B A of it has rank at most {width}; choose a rank <= {width} "
                          "(typically 4 to 64)")  # fmt: skip


def _matches(name: str, pattern: str) -> bool:
    return name == pattern or name.endswith("." + pattern) or fnmatch.fnmatchcase(name, pattern)


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def inject_lora(model: nn.Module, config: LoRAConfig, freeze: bool = True) -> list[str]:
    """Replace each linear layer matching `config.targets` by a `LoRALinear`; return their names.

    With `freeze` (default), every other parameter of `model` stops receiving
    gradients, so only the adapters train (`count_parameters` shows how few).
    Raises ConfigError when no linear layer matches, listing the ones that exist,
    when the model already has adapters, or when the rank exceeds a chosen
    layer's smaller dimension; the model is then left unchanged.
    """
    if any(isinstance(m, LoRALinear) for m in model.modules()):
        raise ConfigError("the model already has LoRA adapters; call remove_lora first or load into it")
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    chosen = [name for name in linears if any(_matches(name, p) for p in config.targets)]
    if not chosen:
        examples = sorted({n.split(".", 2)[-1] if n.startswith("blocks.") else n for n in linears})
        raise ConfigError(f"no linear layer matches targets {config.targets}; linear layers are named like "
                         f"{examples[:12]} (patterns match a full name, a '.'-suffix or a glob)")  # fmt: skip
    for name in chosen:  # every layer is checked before any is changed
        _check_rank(config.rank, model.get_submodule(name), name)
    if freeze:
        for p in model.parameters():
            p.requires_grad_(False)
    for name in chosen:
        base = model.get_submodule(name)
        _set_submodule(model, name, LoRALinear(base, config.rank, config.alpha, config.dropout))
    return chosen


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """The `LoRALinear` modules of `model` by name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def _require_lora(model: nn.Module) -> dict[str, LoRALinear]:
    layers = lora_layers(model)
    if not layers:
        raise ConfigError("the model has no LoRA adapters; add them with inject_lora(model, LoRAConfig(...))")
    return layers


def merge_lora(model: nn.Module) -> None:
    """Merge every adapter into its base weight (forward is then the plain, fast linear layers)."""
    for layer in _require_lora(model).values():
        layer.merge()


def unmerge_lora(model: nn.Module) -> None:
    """Undo `merge_lora`: take every adapter's update out of its base weight."""
    for layer in _require_lora(model).values():
        layer.unmerge()


def remove_lora(model: nn.Module, merge: bool = True) -> nn.Module:
    """Put plain `nn.Linear` layers back: merged with their adapters (default) or the original base.

    Returns `model`, which then has its original module names again (so
    `GPT.save` writes an ordinary checkpoint). The base weights keep
    `requires_grad=False`; call `requires_grad_(True)` to train them.
    """
    for name, layer in _require_lora(model).items():
        if merge:
            layer.merge()
        else:
            layer.unmerge()
        _set_submodule(model, name, layer.base)
    return model


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapter tensors: {"<layer>.lora_A": (r, in), "<layer>.lora_B": (out, r), ...}."""
    out = {}
    for name, layer in _require_lora(model).items():
        out[f"{name}.lora_A"] = layer.lora_A.detach()
        out[f"{name}.lora_B"] = layer.lora_B.detach()
    return out


def save_adapter(model: nn.Module, path: str | os.PathLike, config: LoRAConfig) -> Path:
    """Write the adapter weights (and `config` as metadata) to a safetensors file, atomically.

    The file holds r * (in + out) numbers per adapted layer, a small fraction of
    the model; `load_adapter` puts them back on the same base model.
    """
    from safetensors.torch import save_file

    layers = _require_lora(model)
    if any(layer.merged for layer in layers.values()):
        raise ConfigError("unmerge_lora(model) before saving: merged adapters cannot be told apart from the base")
    state = {k: v.contiguous().cpu() for k, v in lora_state_dict(model).items()}
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(state, tmp, metadata={"format": ADAPTER_FORMAT, "config": json.dumps(asdict(config))})
    return path


def read_adapter_config(path: str | os.PathLike) -> LoRAConfig:
    """The `LoRAConfig` stored in an adapter file written by `save_adapter`."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no adapter file at {path}; write one with save_adapter(model, path, config)")
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
    if meta.get("format") != ADAPTER_FORMAT:
        raise ConfigError(f"{path} is not a minillm LoRA adapter (written by minillm.lora.save_adapter)")
    fields = json.loads(meta["config"])
    return LoRAConfig(**{**fields, "targets": tuple(fields["targets"])})


def load_adapter(model: nn.Module, path: str | os.PathLike) -> LoRAConfig:
    """Load an adapter file into `model`; inject the adapters first if the model has none.

    Every adapted layer of the file must exist in the model with the same shapes
    (the same base architecture), otherwise ValueError. Returns the file's config.
    """
    from safetensors.torch import load_file

    config = read_adapter_config(path)
    if not lora_layers(model):
        inject_lora(model, config)
    own = lora_state_dict(model)
    state = load_file(str(path))
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    wrong = [f"{k}: {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
             for k in own if k in state and state[k].shape != own[k].shape]  # fmt: skip
    if missing or unexpected or wrong:
        raise ConfigError(f"adapter {path} does not fit this model: missing {missing[:6]}, unexpected "
                         f"{unexpected[:6]}, wrong shapes {wrong[:6]}; was it trained on another base model?")  # fmt: skip
    layers = lora_layers(model)
    with torch.no_grad():
        for name, layer in layers.items():
            was_merged = layer.merged
            layer.unmerge()
            layer.lora_A.copy_(state[f"{name}.lora_A"])
            layer.lora_B.copy_(state[f"{name}.lora_B"])
            if was_merged:
                layer.merge()
    return config


def count_parameters(model: nn.Module) -> dict[str, int | float]:
    """{"trainable": n, "total": n, "fraction": trainable / total}; tied tensors count once."""
    params = list(model.parameters())  # each (tied) tensor once
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    return {"trainable": trainable, "total": total, "fraction": trainable / total if total else 0.0}
