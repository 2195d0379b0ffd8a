"""Training on many processes: process groups, DDP and FSDP2, data sharding, sharded checkpoints (chapter 06).

Chapter 06 (`06_scaling`) runs the trainer of `minillm.train` on several
processes, one per device, started by `torchrun`:

    torchrun --nproc_per_node=2 -m minillm train --preset shakespeare-char --out runs/ddp --strategy ddp

Every process runs the same program. `torchrun` tells each one who it is through
environment variables (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT);
`init_distributed` reads them and joins the process group (NCCL between CUDA
devices, gloo between CPU processes). Then:

* data: every rank draws the same global batch of `grad_accum` micro-batches
  (same seed, same sampler) and keeps its own `grad_accum / world_size` of them
  (`shard_micro_batches`), so the tokens per optimizer step do not depend on the
  number of processes, and a 2-rank run follows the 1-process loss curve;
* `ddp` (`wrap_model`): each rank holds the whole model; after the last
  micro-batch's backward, DistributedDataParallel averages the gradients with an
  all-reduce (`grad_sync` skips it on the earlier micro-batches);
* `fsdp`: FSDP2's `fully_shard` on every block and on the root splits each
  parameter, its gradient and its optimizer state across the ranks (ZeRO-3);
  a block's weights are all-gathered just before it runs and freed after
  (`reshard_after_forward=False` keeps them until the backward: ZeRO-2-like);
  gradients are reduce-scattered, so each rank keeps only its shard;
* checkpoints (`save_checkpoint`): `torch.distributed.checkpoint` writes each
  rank's shards in parallel into one folder; resume on the same world size
  (`restore_checkpoint`); `export_checkpoint` gathers them into one
  `model.safetensors` that `GPT.load` reads in a single process.

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
import json
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

STRATEGIES = ("single", "ddp", "fsdp")
_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")

# FSDP2 warns that GPT returns a view (the logits sliced to the vocabulary); nothing modifies it in place.
warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")


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


def init_distributed(device: str = "auto", strategy: str = "ddp") -> DistContext:
    """Join the process group that `torchrun` describes in the environment; return this process' context.

    `device` "auto" is the GPU `cuda:LOCAL_RANK` when CUDA is available, else the
    CPU; the backend is NCCL on CUDA and gloo on the CPU. An existing process
    group (e.g. a test that made its own) is reused, not owned. `strategy`
    "single" returns the one-process context without touching torch.distributed.
    """
    from minillm.device import resolve_device

    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    dev = resolve_device(device)
    if strategy == "single":
        return DistContext(device=dev)
    missing = [k for k in _ENV if k not in os.environ]
    if missing and not dist.is_initialized():
        raise RuntimeError(
            f"strategy {strategy!r} runs one process per device, started by torchrun, but {missing} "
            f"are not set. Launch with: torchrun --nproc_per_node=N -m minillm train ... --strategy {strategy}"
        )
    if dev.type == "mps":
        raise ValueError("torch.distributed has no MPS backend; use strategy 'single' on a Mac, or device 'cpu'")
    owns = not dist.is_initialized()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    if owns:
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    from torch.distributed.device_mesh import init_device_mesh

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


def local_accumulation(grad_accum: int, world_size: int) -> int:
    """Micro-batches per rank per optimizer step: `grad_accum / world_size`, which must be whole."""
    if grad_accum % world_size:
        raise ValueError(
            f"grad_accum ({grad_accum}) must be a multiple of the world size ({world_size}) so that every rank "
            f"gets whole micro-batches of the same global batch; set --grad-accum {world_size * max(1, grad_accum // world_size)}"
            " (and lower --batch-size to keep the tokens per step)"
        )
    return grad_accum // world_size


def shard_micro_batches(batches: list, rank: int, world_size: int) -> list:
    """Rank `rank`'s contiguous share of a global list of micro-batches: [rank*k, (rank+1)*k), k = n/world."""
    k = local_accumulation(len(batches), world_size)
    return batches[rank * k : (rank + 1) * k]


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
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    net: nn.Module = model
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        net = DistributedDataParallel(model, device_ids=ids, gradient_as_bucket_view=True)
    elif strategy == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        if ctx.mesh is None:
            raise ValueError("fsdp needs a device mesh: create the context with init_distributed(strategy='fsdp')")
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
    from torch.nn.parallel import DistributedDataParallel

    inner = getattr(model, "_orig_mod", model)  # a compiled module
    if not sync and isinstance(inner, DistributedDataParallel):
        return inner.no_sync()
    return contextlib.nullcontext()


def is_sharded(parameters: Any) -> bool:
    """True when some of the parameters are DTensors (FSDP2 shards)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in parameters)


def clip_grad_norm(parameters: Any, max_norm: float) -> torch.Tensor:
    """Clip the global gradient norm; returns it. FSDP shards: torch's clip (all-reduces the shards' squares)."""
    from minillm.optim import clip_grad_norm as clip_local

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
    if strategy == "fsdp":
        raise ValueError("precision fp16 with strategy fsdp is not supported; use --precision bf16 "
                         "(fp32's range, no loss scaling) or strategy ddp")  # fmt: skip
    return torch.amp.GradScaler(device.type)


# ---------------------------------------------------------------------------
# Sharded checkpoints (torch.distributed.checkpoint) and export to one file
# ---------------------------------------------------------------------------

SHARDS = "dcp"  # the folder of a checkpoint that holds the DCP files (one per rank + .metadata)


def _state_dicts(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(model, optimizer)
    return {"model": model_state, "optim": optim_state}


def save_checkpoint(run_dir: str | os.PathLike, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                    data_rng: torch.Generator, config: Any, tokenizer: Any, ctx: DistContext,
                    scaler: Any = None) -> Path:  # fmt: skip
    """Every rank writes its shards of model and optimizer state; rank 0 the rest. Collective; atomic.

    Layout: `checkpoints/step_N/` with `dcp/` (the shards), `config.json`,
    `tokenizer.json`, `train_config.json` and `trainer.pt` (step, world size,
    RNG and sampler states, as in `minillm.checkpoint`). The folder is written
    under a temporary name and renamed into place by rank 0 when every rank has
    finished; `latest` then points at it. All ranks must see the same file system.
    """
    import torch.distributed.checkpoint as dcp

    from minillm import checkpoint as ckpt
    from minillm.fileio import atomic_write

    root = Path(run_dir) / ckpt.CHECKPOINTS
    final = root / ckpt.checkpoint_name(step)
    tmp = root / f".{final.name}.tmp"
    if ctx.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    ctx.barrier()
    dcp.save(_state_dicts(model, optimizer), checkpoint_id=tmp / SHARDS)
    if ctx.is_main:
        raw = model.config  # the GPT config: FSDP2 keeps the module's attributes
        atomic_write(tmp / "config.json", json.dumps(dataclasses.asdict(raw), indent=2) + "\n")
        tokenizer.save(tmp / "tokenizer.json")
        atomic_write(tmp / "train_config.json", json.dumps(dataclasses.asdict(config), indent=1) + "\n")
        state = {
            "format": ckpt.TRAINER_FORMAT, "version": 1, "step": step, "world_size": ctx.world_size,
            "torch_rng": torch.get_rng_state(), "data_rng": data_rng.get_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }  # fmt: skip
        if scaler is not None:
            state["scaler"] = scaler.state_dict()
        torch.save(state, tmp / ckpt.TRAINER_FILE)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        atomic_write(root / "latest", final.name + "\n")
        keep = sorted(p.name for p in root.glob("step_*") if p.is_dir())[-config.keep_checkpoints :]
        for path in root.glob("step_*"):
            if path.is_dir() and path.name not in keep:
                shutil.rmtree(path, ignore_errors=True)
    ctx.barrier()
    return final


def restore_checkpoint(checkpoint: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                       data_rng: torch.Generator, ctx: DistContext, scaler: Any = None) -> int:  # fmt: skip
    """Load a `save_checkpoint` folder into the wrapped `model` and `optimizer` on every rank; return its step.

    The world size must be the one that saved it (ValueError otherwise).
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    from minillm import checkpoint as ckpt

    if not (checkpoint / SHARDS).is_dir():
        raise ValueError(f"{checkpoint} is a single-process checkpoint; resume it with strategy 'single'")
    state = ckpt.read_trainer_state(checkpoint)
    if state.get("world_size") != ctx.world_size:
        raise ValueError(f"{checkpoint} was saved by {state.get('world_size')} processes; resume it with "
                         f"--nproc_per_node/--nnodes giving that many, not {ctx.world_size}")  # fmt: skip
    _check_config(checkpoint, model.config)
    target = _state_dicts(model, optimizer)
    dcp.load(target, checkpoint_id=checkpoint / SHARDS)
    set_state_dict(model, optimizer, model_state_dict=target["model"], optim_state_dict=target["optim"])
    return ckpt.restore_progress(state, data_rng, scaler)


def _check_config(checkpoint: Path, config: Any) -> None:
    from minillm.model import GPTConfig

    saved = GPTConfig(**json.loads((checkpoint / "config.json").read_text()))
    if saved != config:
        diff = {k: (v, getattr(config, k)) for k, v in dataclasses.asdict(saved).items() if getattr(config, k) != v}
        raise ValueError(f"checkpoint {checkpoint} holds a different model: (saved, requested) = {diff}")


def load_sharded_model(checkpoint: str | os.PathLike, device: torch.device | str | None = None) -> nn.Module:
    """The `GPT` of a `save_checkpoint` folder, read in one process (no process group needed)."""
    import torch.distributed.checkpoint as dcp

    from minillm.model import GPT, GPTConfig

    checkpoint = Path(checkpoint)
    if not (checkpoint / SHARDS / ".metadata").is_file():
        raise FileNotFoundError(f"{checkpoint} holds no distributed checkpoint ({SHARDS}/.metadata is missing)")
    model = GPT(GPTConfig(**json.loads((checkpoint / "config.json").read_text())))
    tied = {"lm_head.weight"} if model.config.tie_embeddings else set()
    state = {k: v for k, v in model.state_dict().items() if k not in tied}  # a tied head is tok_emb.weight
    with warnings.catch_warnings():  # DCP notes that it runs without a process group
        warnings.simplefilter("ignore", UserWarning)
        dcp.load({"model": state}, checkpoint_id=checkpoint / SHARDS, no_dist=True)
    model.load_weights(state, source=str(checkpoint))
    return model.to(device) if device is not None else model


def export_checkpoint(checkpoint: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Gather a distributed checkpoint (or a run folder's latest) into one `model.safetensors` in `out_dir`.

    `out_dir` gets `config.json`, `model.safetensors`, `tokenizer.json` and
    `train_config.json`: `GPT.load(out_dir)` and `minillm.checkpoint.load_model(out_dir)` read it.
    """
    from minillm import checkpoint as ckpt

    checkpoint = Path(checkpoint)
    if not (checkpoint / SHARDS).is_dir():
        latest = ckpt.latest_checkpoint(checkpoint)
        if latest is None or not (latest / SHARDS).is_dir():
            raise FileNotFoundError(f"{checkpoint} is neither a distributed checkpoint nor a run folder with one")
        checkpoint = latest
    out = Path(out_dir)
    load_sharded_model(checkpoint).save(out)
    for name in ("tokenizer.json", "train_config.json"):
        if (checkpoint / name).is_file():
            shutil.copyfile(checkpoint / name, out / name)
    return out
