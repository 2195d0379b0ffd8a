"""Where training memory goes: an estimator, measurements, and activation checkpointing (chapter 06).

Chapter 06 (`06_scaling`) counts the bytes of a training run before spending
them. Per rank, with mixed-precision autocast (the weights stay fp32):

    parameters   4 N bytes        fp32 weights
    gradients    4 N bytes        fp32, one per weight
    optimizer    8 N bytes        AdamW's two moments, fp32
    activations  what backward needs from the forward pass, per layer and token

for N parameters: 16 bytes per parameter before a single activation. Data
parallelism replicates all of it on every rank. ZeRO (Rajbhandari et al., 2020)
shards it over the W ranks instead: stage 1 the optimizer state, stage 2 also
the gradients, stage 3 also the parameters (FSDP's `fully_shard`):

    ddp     4N + 4N + 8N
    zero1   4N + 4N + 8N/W
    zero2   4N + (4N + 8N)/W
    zero3   (4N + 4N + 8N)/W   (= fsdp)

Activations grow with micro-batch B and context T. For one pre-norm GPT block,
autograd keeps 16 values of width C per token: the residual stream at the
block's input and at its middle (fp32), both norm outputs, q, k, v, the
attention output, and the 4C-wide MLP hidden layer before and after GELU
(4 + 4), plus a few numbers per token for the norms' statistics and attention's
log-sum-exp. SDPA/flash attention keeps no T x T matrix. The head keeps its
input and the log-softmax of the logits (V values per token, fp32).
Activation checkpointing (`checkpoint_blocks`) keeps only each block's input
and recomputes the rest during backward: one layer's worth at a time.

`estimate_memory` applies these rules; `state_bytes` and `saved_activation_bytes`
measure the same quantities on a real model, and the tests check that they agree.
`kv_cache_bytes` counts what generation keeps instead (appendix B): the keys and
values of every token so far, fewer with grouped-query attention or int8.
`check_fits` compares the estimate with what the device has free
(`available_memory`) before a run allocates anything: `python -m minillm train`
refuses a batch that would get the process killed for lack of memory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from minillm.errors import ConfigError
from minillm.model import GPT, GPTConfig

MEMORY_STRATEGIES = ("single", "ddp", "zero1", "zero2", "zero3", "fsdp")


@dataclass
class MemoryEstimate:
    """Bytes per rank of a training run, by kind."""

    params: int
    grads: int
    optimizer: int
    activations: int

    @property
    def states(self) -> int:
        """Parameters + gradients + optimizer state: what ZeRO shards."""
        return self.params + self.grads + self.optimizer

    @property
    def total(self) -> int:
        """States + activations (framework buffers, fragmentation and temporaries not included)."""
        return self.states + self.activations

    def gib(self) -> dict[str, float]:
        """The same numbers in GiB (2^30 bytes), with `total`."""
        parts = {"params": self.params, "grads": self.grads, "optimizer": self.optimizer,
                 "activations": self.activations, "total": self.total}  # fmt: skip
        return {k: v / 2**30 for k, v in parts.items()}


def count_parameters(config: GPTConfig) -> int:
    """Exact (unique) parameter count of `GPT(config)`, built on the meta device: no memory used."""
    return _parameter_counts(config)[0]


def _parameter_counts(config: GPTConfig) -> tuple[int, int]:
    """(all parameters, one block's); a one-block meta-device model: shapes only, built in milliseconds
    whatever `n_layer` is (every block has the same parameters)."""
    with torch.device("meta"):
        model = GPT(dataclasses.replace(config, n_layer=1))
    per_block = sum(p.numel() for p in model.blocks[0].parameters())
    return model.num_parameters() + (config.n_layer - 1) * per_block, per_block


def block_activation_bytes(config: GPTConfig, micro_batch: int, context: int | None = None,
                           precision: str = "fp32") -> int:  # fmt: skip
    """Bytes one block keeps for backward: the fp32 residual stream at its two adds, 14 more values of
    width C per token in the compute precision (GELU MLP; SwiGLU keeps 4 d_ff-wide values), norm
    statistics and attention's log-sum-exp (fp32)."""
    if micro_batch < 1:
        raise ConfigError(f"micro_batch must be >= 1, got {micro_batch}")
    t = config.context_length if context is None else context
    if not 0 < t <= config.context_length:
        raise ConfigError(f"context must be in [1, {config.context_length}], got {t}")
    width = 2 if precision in ("bf16", "fp16") else 4
    d = config.d_model
    mlp = 4 * config.ff_width if config.mlp == "swiglu" else 2 * config.ff_width  # hidden values kept by the MLP
    per_token = 2 * d * 4 + (6 * d + mlp) * width + (4 + config.n_head) * 4
    return micro_batch * t * per_token


def activation_bytes(config: GPTConfig, micro_batch: int, context: int | None = None, precision: str = "fp32",
                     activation_checkpointing: bool = False) -> int:  # fmt: skip
    """Peak bytes autograd keeps for backward after the forward pass of `micro_batch` sequences (SDPA).

    All blocks (`block_activation_bytes` each) plus the head (final norm input,
    the head's input, the fp32 log-softmax over the vocabulary). Under bf16/fp16
    autocast add the low-precision weight copies autocast keeps (2 bytes per
    parameter). With activation checkpointing the blocks keep only their fp32
    inputs, plus one block's activations while it is recomputed in backward.
    """
    block = block_activation_bytes(config, micro_batch, context, precision)
    t = config.context_length if context is None else context
    tokens = micro_batch * t
    width = 2 if precision in ("bf16", "fp16") else 4
    head = tokens * (config.d_model * (4 + width) + 2 * 4 + config.vocab_size * 4)
    blocks = config.n_layer * tokens * config.d_model * 4 + block if activation_checkpointing \
        else config.n_layer * block  # fmt: skip
    copies = 0
    if width == 2:  # checkpointed blocks drop their copies; the recomputed block and the head keep theirs
        n, per_block = _parameter_counts(config)
        copies = 2 * (per_block + config.padded_vocab_size * config.d_model) if activation_checkpointing else 2 * n
    return blocks + head + copies


def estimate_memory(
    config: GPTConfig,
    *,
    strategy: str = "ddp",
    world_size: int = 1,
    micro_batch: int = 1,
    context: int | None = None,
    precision: str = "bf16",
    activation_checkpointing: bool = False,
    param_bytes: int = 4,
    grad_bytes: int = 4,
    optimizer_bytes: int = 8,
) -> MemoryEstimate:
    """Bytes per rank for training `GPT(config)` with AdamW; see the module docstring for the rules.

    `strategy`: "single"/"ddp" (everything replicated), "zero1", "zero2",
    "zero3" or "fsdp" (= zero3). `param_bytes`, `grad_bytes` and
    `optimizer_bytes` are per parameter (defaults: fp32 weights and gradients,
    AdamW's two fp32 moments; pure bf16 training would be 2, 2, 4 or 8).
    """
    if strategy not in MEMORY_STRATEGIES:
        raise ConfigError(f"strategy must be one of {MEMORY_STRATEGIES}, got {strategy!r}")
    if not isinstance(world_size, int) or world_size < 1:
        raise ConfigError(f"world_size must be a positive integer, got {world_size!r}")
    if strategy == "single" and world_size != 1:
        raise ConfigError("strategy 'single' is one process; use 'ddp' or a ZeRO stage for world_size > 1")
    n = count_parameters(config)
    stage = {"single": 0, "ddp": 0, "zero1": 1, "zero2": 2, "zero3": 3, "fsdp": 3}[strategy]
    w = world_size
    return MemoryEstimate(
        params=n * param_bytes // (w if stage >= 3 else 1),
        grads=n * grad_bytes // (w if stage >= 2 else 1),
        optimizer=n * optimizer_bytes // (w if stage >= 1 else 1),
        activations=activation_bytes(config, micro_batch, context, precision, activation_checkpointing),
    )


# ---------------------------------------------------------------------------
# Will it fit?
# ---------------------------------------------------------------------------


#: Bytes of one cached key or value number, by the cache's format. An int8 cache
#: also keeps one fp32 scale per head vector (absmax over its head_dim numbers).
KV_FORMATS = {"fp32": 4, "bf16": 2, "fp16": 2, "int8": 1}


def kv_cache_bytes(config: GPTConfig, batch_size: int = 1, seq_len: int | None = None, kv_format: str = "fp32") -> int:
    """Bytes a KV cache holds for `batch_size` sequences of `seq_len` tokens (appendix B).

    Per token and layer: keys and values, n_kv_head vectors of head_dim numbers
    each (grouped-query attention stores fewer heads than it queries with), plus
    one fp32 scale per vector in the int8 format. `seq_len` defaults to the
    context length (a preallocated cache, as `GPT.new_kv_cache` makes).
    """
    if kv_format not in KV_FORMATS:
        raise ConfigError(f"kv_format must be one of {sorted(KV_FORMATS)}, got {kv_format!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be an int >= 1, got {batch_size!r}")
    t = config.context_length if seq_len is None else seq_len
    if isinstance(t, bool) or not isinstance(t, int) or not 0 < t <= config.context_length:
        raise ConfigError(f"seq_len must be an int in [1, {config.context_length}], got {seq_len!r}")
    head_dim = config.head_dim
    per_vector = head_dim * KV_FORMATS[kv_format] + (4 if kv_format == "int8" else 0)
    return batch_size * t * 2 * config.n_layer * config.kv_heads * per_vector


def max_kv_batch(config: GPTConfig, memory_bytes: int, seq_len: int | None = None, kv_format: str = "fp32",
                 weight_bytes: int = 0) -> int:  # fmt: skip
    """How many sequences of `seq_len` tokens fit their KV caches in `memory_bytes` after `weight_bytes` of weights."""
    for name, value in (("memory_bytes", memory_bytes), ("weight_bytes", weight_bytes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"{name} must be an int >= 0 (bytes), got {value!r}")
    room = memory_bytes - weight_bytes
    per_sequence = kv_cache_bytes(config, 1, seq_len, kv_format)
    return max(0, room // per_sequence)


def available_memory(device: torch.device | str = "cpu") -> int | None:
    """Bytes `device` has free for a new run: CUDA's free memory (`torch.cuda.mem_get_info`), or for the
    CPU the machine's available RAM (/proc/meminfo MemAvailable, or `os.sysconf`), capped by the
    memory limit of this process' cgroup (a container). None where it cannot be known (MPS, ...)."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type != "cpu":
        return None
    free = None
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            free = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        with contextlib.suppress(ValueError, OSError, AttributeError):
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    room = _cgroup_room()
    return room if free is None else free if room is None else min(free, room)


def _cgroup_room() -> int | None:
    """Bytes left under this process' cgroup memory limit (v2, then v1); None without a limit."""
    for limit, usage, stat in (("memory.max", "memory.current", "memory.stat"),
                               ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes",
                                "memory/memory.stat")):  # fmt: skip
        try:
            root = "/sys/fs/cgroup/"
            with open(root + limit, encoding="ascii") as fh:
                text = fh.read().strip()
            if text == "max" or int(text) >= 2**60:
                return None
            with open(root + usage, encoding="ascii") as fh:
                used = int(fh.read())
            with open(root + stat, encoding="ascii") as fh:  # page cache the kernel can drop counts as free
                cache = next((int(line.split()[1]) for line in fh if line.split()[0] in
                              ("inactive_file", "total_inactive_file")), 0)  # fmt: skip
            return max(int(text) - used + cache, 0)
        except (OSError, ValueError, IndexError):
            continue
    return None


def _size(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB" if n >= 2**30 else f"{n / 2**20:,.1f} MiB"


def check_fits(
    config: GPTConfig,
    *,
    micro_batch: int,
    context: int | None = None,
    precision: str = "fp32",
    device: torch.device | str = "cpu",
    strategy: str = "single",
    world_size: int = 1,
    activation_checkpointing: bool = False,
    processes: int = 1,
    available: int | None = None,
    fraction: float = 0.9,
) -> MemoryEstimate:
    """The `estimate_memory` of one training step; `ConfigError` if it needs more than `fraction` of the
    memory `device` has free (`available` bytes, or `available_memory(device)`).

    Call it before allocating anything: a run that does not fit is killed by the
    operating system (or fails with CUDA out-of-memory) only after it has started.
    `processes`: how many processes of the run share this memory (the ranks of a
    CPU run on one machine). Where the free memory cannot be known, nothing is refused.
    The estimate leaves out the framework's own buffers, so a run it lets through
    can still be too big; one it refuses cannot fit.
    """
    estimate = estimate_memory(config, strategy=strategy, world_size=world_size, micro_batch=micro_batch,
                               context=context, precision=precision,
                               activation_checkpointing=activation_checkpointing)  # fmt: skip
    free = available_memory(device) if available is None else available
    need = estimate.total * processes
    if free is not None and need > fraction * free:
        t = config.context_length if context is None else context
        each = f" per process, {processes} processes" if processes > 1 else ""
        raise ConfigError(
            f"one training step needs about {_size(need)} (weights, gradients and optimizer state "
            f"{_size(estimate.states)}, activations {_size(estimate.activations)} for a micro-batch of "
            f"{micro_batch:,} x {t:,} tokens{each}), more than {fraction:.0%} of the {_size(free)} available on "
            f"{torch.device(device)}. Lower batch_size (raise grad_accum to keep the tokens per step), shorten "
            "context_length, use a smaller model, or turn on activation_checkpointing"
        )
    return estimate


# ---------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t  # a DTensor's shard on this rank


def state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict[str, int]:
    """Bytes this rank holds for parameters, gradients and optimizer state (FSDP: its shards only).

    Tied parameters count once; gradients that do not exist (yet) count zero.
    """
    params = list(model.parameters())  # unique tensors
    out = {"params": 0, "grads": 0, "optimizer": 0}
    for p in params:
        out["params"] += _local(p).numel() * p.element_size()  # an FSDP shard: its local part
        if p.grad is not None:
            out["grads"] += _local(p.grad).numel() * p.grad.element_size()
    if optimizer is not None:
        for state in optimizer.state.values():
            for v in state.values():
                if isinstance(v, torch.Tensor):
                    out["optimizer"] += _local(v).numel() * v.element_size()
    return out


@contextlib.contextmanager
def saved_activation_bytes(model: nn.Module | None = None) -> Iterator[dict[str, int]]:
    """Count the bytes autograd saves for backward inside the `with` block: `{"bytes": n}`.

    Each distinct storage counts once; `model`'s parameters (kept anyway) are
    excluded, so are views of them. Under activation checkpointing only what the
    checkpoints keep is counted (not the block recomputed during backward).
    """
    seen: set[int] = set() if model is None else {p.untyped_storage().data_ptr() for p in model.parameters()}
    result = {"bytes": 0}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.device.type != "meta":
            key = t.untyped_storage().data_ptr()
            if key not in seen:
                seen.add(key)
                result["bytes"] += t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield result


# ---------------------------------------------------------------------------
# Activation checkpointing
# ---------------------------------------------------------------------------


def _checkpointed(forward, x: torch.Tensor, kv_cache=None, layer: int = 0) -> torch.Tensor:
    if kv_cache is not None or not torch.is_grad_enabled():  # generation / evaluation: nothing to save
        return forward(x, kv_cache, layer)
    from torch.utils.checkpoint import checkpoint

    return checkpoint(forward, x, kv_cache, layer, use_reentrant=False)


def checkpoint_blocks(model: GPT) -> GPT:
    """Activation checkpointing per block, in place: each block keeps only its input for backward.

    The backward pass runs each block's forward again (with the same dropout
    masks) to get what it needs: about a third more compute for activations of
    one block instead of all. Parameter names and checkpoints are unchanged.
    Apply before `torch.compile` and before wrapping for DDP/FSDP. Returns `model`.
    """
    if not hasattr(model, "blocks"):
        raise TypeError(f"checkpoint_blocks needs a model with .blocks (a minillm GPT), got {type(model).__name__}")
    for block in model.blocks:
        if not getattr(block, "_minillm_checkpointed", False):
            block.forward = functools.partial(_checkpointed, block.forward)
            block._minillm_checkpointed = True
    return model
