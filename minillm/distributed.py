"""Training on many processes: process groups, DDP and FSDP2, data sharding (chapter 06).

Chapter 06 (`06_scaling`) runs the trainer of `minillm.train` on several
processes, one per device, started by `torchrun`:

    torchrun --nproc_per_node=2 -m minillm train --preset shakespeare-char --out runs/ddp --strategy ddp

Every process runs the same program. `torchrun` tells each one who it is through
environment variables (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT);
`init_distributed` reads them and joins the process group (NCCL between CUDA
devices, gloo between CPU processes). Then:

* data: every rank draws the same global batch of `grad_accum` micro-batches
  (same seed, same sampler) and keeps its own share (`shard_micro_batches`):
  whole micro-batches when there are at least as many as ranks, else an equal
  slice of each micro-batch's rows (`batch_split`), so the tokens per optimizer
  step do not depend on the number of processes, and a 2-rank run follows the
  1-process loss curve;
* `ddp` (`wrap_model`): each rank holds the whole model; after the last
  micro-batch's backward, DistributedDataParallel averages the gradients with an
  all-reduce (`grad_sync` skips it on the earlier micro-batches);
* `fsdp`: FSDP2's `fully_shard` on every block and on the root splits each
  parameter, its gradient and its optimizer state across the ranks (ZeRO-3);
  a block's weights are all-gathered just before it runs and freed after
  (`reshard_after_forward=False` keeps them until the backward: ZeRO-2-like);
  gradients are reduce-scattered, so each rank keeps only its shard;
* checkpoints: `minillm.checkpoint.save` has every rank write its shards with
  `torch.distributed.checkpoint`, plus the gathered full weights, through the
  same commit path as a one-process run.

`minillm.strategy` puts these pieces behind one object per strategy, which is
all the training loop sees.

Only rank 0 logs and writes run files (`DistContext.is_main`, `print0`); metrics
are averaged over ranks (`DistContext.all_reduce_mean`).

Many nodes: the same command on every node, with the node count and a
rendezvous point that all nodes reach (see the README):

    torchrun --nnodes=2 --nproc_per_node=8 --rdzv-backend=c10d --rdzv-endpoint=HOST:29500 \\
        -m minillm train --preset gpt2-124m --out runs/gpt2 --strategy fsdp
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

from minillm.device import resolve_device
from minillm.errors import ConfigError, LaunchError
from minillm.optim import clip_grad_norm as clip_local

STRATEGIES = ("auto", "single", "ddp", "fsdp")
_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


# ---------------------------------------------------------------------------
# The process group
# ---------------------------------------------------------------------------


@dataclass
class DistContext:
    """Who this process is: its rank among `world_size` processes, its device, its device mesh (FSDP)."""

    rank: int = 0
    local_rank: int = 0  # rank among the processes of this node: picks the GPU
    world_size: int = 1
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
    mesh: Any = None  # torch.distributed.device_mesh.DeviceMesh of all ranks (FSDP)
    owns_group: bool = False  # init_distributed created the process group (teardown destroys it)

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that logs and writes run files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when there is a process group of more than one rank."""
        return self.world_size > 1

    def barrier(self) -> None:
        """Wait until every rank gets here (nothing to wait for in one process)."""
        if self.distributed:
            dist.barrier()

    def all_reduce_mean(self, value: float | torch.Tensor) -> float:
        """The mean of a number over all ranks (the number itself in one process)."""
        if not self.distributed:
            return float(value)
        t = torch.as_tensor(value, dtype=torch.float64, device=self.device).detach().clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return float(t) / self.world_size

    def any(self, flag: bool) -> bool:
        """True on every rank when `flag` is true on at least one (e.g. a Ctrl-C seen by one process)."""
        if not self.distributed:
            return bool(flag)
        t = torch.tensor(int(flag), device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t)

    def broadcast(self, value: Any) -> Any:
        """Rank 0's `value` (any picklable object) on every rank."""
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def resolve_strategy(strategy: str) -> str:
    """"auto" is "ddp" when torchrun started more than one process (WORLD_SIZE > 1), else "single"."""
    if strategy != "auto":
        return strategy
    return "ddp" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else "single"


def init_distributed(device: str = "auto", strategy: str = "ddp") -> DistContext:
    """Join the process group that `torchrun` describes in the environment; return this process' context.

    `device` "auto" is the GPU `cuda:LOCAL_RANK` when CUDA is available, else the
    CPU; the backend is NCCL on CUDA and gloo on the CPU. An existing process
    group (e.g. a test that made its own) is reused, not owned. `strategy`
    "single" returns the one-process context without touching torch.distributed.
    """
    if strategy not in STRATEGIES:
        raise ConfigError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    strategy = resolve_strategy(strategy)
    dev = resolve_device(device)
    if strategy == "single":
        return DistContext(device=dev)
    missing = [k for k in _ENV if k not in os.environ]
    if missing and not dist.is_initialized():
        raise LaunchError(
            f"strategy {strategy!r} runs one process per device, started by torchrun, but {missing} "
            f"are not set. Launch with: torchrun --nproc_per_node=N -m minillm train ... --strategy {strategy}"
        )
    if dev.type == "mps":
        raise ConfigError("torch.distributed has no MPS backend; use strategy 'single' on a Mac, or device 'cpu'")
    owns = not dist.is_initialized()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    if owns:
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    world = dist.get_world_size()
    mesh = init_device_mesh(dev.type, (world,)) if strategy == "fsdp" else None
    return DistContext(dist.get_rank(), local_rank, world, dev, mesh, owns)


def teardown(ctx: DistContext) -> None:
    """Leave the process group if `init_distributed` created it (waits for the other ranks first)."""
    if ctx.owns_group and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
        ctx.owns_group = False


def print0(*args: Any, **kwargs: Any) -> None:
    """`print` on rank 0 only: the group's rank, else torchrun's RANK (0 without torchrun)."""
    rank = dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", "0"))
    if rank == 0:
        print(*args, **kwargs)


# ---------------------------------------------------------------------------
# Data: a disjoint part of every global batch per rank
# ---------------------------------------------------------------------------


def batch_split(grad_accum: int, batch_size: int, world_size: int) -> tuple[int, int]:
    """How `world_size` ranks share a global batch of `grad_accum` micro-batches of `batch_size` rows.

    Returns (micro-batches per rank, row parts per micro-batch). With
    `grad_accum` a multiple of the world size, each rank takes whole
    micro-batches: (grad_accum / world, 1). Otherwise each micro-batch's rows are
    split into `world / grad_accum` equal parts, one per rank: (1, world / grad_accum).
    Either way every rank does the same work and the tokens per step do not
    depend on the number of processes. Anything else raises ConfigError.
    """
    if grad_accum % world_size == 0:
        return grad_accum // world_size, 1
    parts = world_size // grad_accum
    if world_size % grad_accum == 0 and batch_size % parts == 0:
        return 1, parts
    lcm = math.lcm(grad_accum, world_size)
    raise ConfigError(
        f"{world_size} processes cannot share a global batch of grad_accum={grad_accum} micro-batches of "
        f"batch_size={batch_size} equally: use a grad_accum that is a multiple of {world_size} "
        f"(e.g. --grad-accum {lcm} --batch-size {max(1, batch_size * grad_accum // lcm)} keeps about the same "
        f"tokens per step), or a batch_size divisible by {world_size // math.gcd(grad_accum, world_size)}"
    )


def local_accumulation(grad_accum: int, world_size: int, batch_size: int = 1) -> int:
    """Micro-batches per rank per optimizer step (see `batch_split`)."""
    return batch_split(grad_accum, batch_size, world_size)[0]


def shard_micro_batches(batches: list, rank: int, world_size: int) -> list:
    """Rank `rank`'s share of a global list of (x, y) micro-batches, each (B, T) (see `batch_split`).

    Whole micro-batches [rank*k, (rank+1)*k) when there are enough of them;
    else micro-batch rank // p, rows [(rank % p) * B/p, (rank % p + 1) * B/p) with p parts.
    """
    k, parts = batch_split(len(batches), len(batches[0][0]) if batches else 1, world_size)
    if parts == 1:
        return batches[rank * k : (rank + 1) * k]
    x, y = batches[rank // parts]
    rows = len(x) // parts
    part = rank % parts
    return [(x[part * rows : (part + 1) * rows], y[part * rows : (part + 1) * rows])]


# ---------------------------------------------------------------------------
# Wrapping the model; gradient sync, clipping and scaling
# ---------------------------------------------------------------------------


def wrap_model(model: nn.Module, strategy: str, ctx: DistContext, precision: str = "fp32",
               reshard_after_forward: bool = True, compile: bool = False) -> nn.Module:  # fmt: skip
    """The module the training loop calls for `strategy`; `model` must already be on `ctx.device`.

    "single": the model itself. "ddp": a `DistributedDataParallel` around it
    (gradients become views of the all-reduce buckets: no second copy). "fsdp":
    `fully_shard` on each block of `model.blocks`, then on the root (embeddings,
    final norm, head), in place; under bf16 a `MixedPrecisionPolicy` computes in
    bf16 and reduces gradients in fp32. `compile`: `torch.compile` the result.
    """
    if strategy not in STRATEGIES:
        raise ConfigError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    net: nn.Module = model
    if strategy == "ddp":
        ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        net = DistributedDataParallel(model, device_ids=ids, gradient_as_bucket_view=True)
    elif strategy == "fsdp":
        if ctx.mesh is None:
            raise ConfigError("fsdp needs a device mesh: create the context with init_distributed(strategy='fsdp')")
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
            if precision == "bf16" else MixedPrecisionPolicy()  # fmt: skip
        for block in model.blocks:
            fully_shard(block, mesh=ctx.mesh, reshard_after_forward=reshard_after_forward, mp_policy=policy)
        fully_shard(model, mesh=ctx.mesh, reshard_after_forward=reshard_after_forward, mp_policy=policy)
    return torch.compile(net) if compile else net


def grad_sync(model: Any, sync: bool) -> contextlib.AbstractContextManager:
    """The context of one micro-batch's backward: DDP's `no_sync()` when `sync` is False, else nothing.

    Deferring DDP's all-reduce to the last micro-batch of an accumulation sends
    the gradients once per optimizer step instead of once per micro-batch; the
    sum is the same. FSDP reduce-scatters every micro-batch (keeping unsharded
    gradients would cost the memory FSDP saves).
    """
    inner = getattr(model, "_orig_mod", model)  # a compiled module
    if not sync and isinstance(inner, DistributedDataParallel):
        return inner.no_sync()
    return contextlib.nullcontext()


def is_sharded(parameters: Any) -> bool:
    """True when some of the parameters are DTensors (FSDP2 shards)."""
    return any(isinstance(p, DTensor) for p in parameters)


def clip_grad_norm(parameters: Any, max_norm: float) -> torch.Tensor:
    """Clip the global gradient norm; returns it. FSDP shards: torch's clip (all-reduces the shards' squares)."""
    parameters = list(parameters)
    if not is_sharded(parameters):
        return clip_local(parameters, max_norm)
    norm = torch.nn.utils.clip_grad_norm_(parameters, max_norm)
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm


def make_grad_scaler(precision: str, strategy: str, device: torch.device) -> Any:
    """A gradient scaler for fp16 (None for the other precisions).

    fp16 gradients below ~6e-8 flush to zero, so the loss is multiplied by a
    large scale S (2^16 at first) before backward, the gradients divided by S
    before the step. A step whose gradients hold an inf or NaN is skipped and S
    halved; after 2000 good steps S doubles. Under DDP every rank sees the same
    all-reduced gradients, so all ranks skip together. fp16 with FSDP is not
    supported here (use bf16: fp32's range, no scaler needed).
    """
    if precision != "fp16":
        return None
    if strategy == "fsdp":  # TrainConfig refuses this combination with the same words
        raise ConfigError("precision fp16 with strategy fsdp is not supported; use precision bf16 "
                          "(fp32's range, no loss scaling) or strategy ddp")  # fmt: skip
    return torch.amp.GradScaler(device.type)
