"""What differs between one process, DDP and FSDP, behind one object (chapters 05-06).

The training loop of `minillm.train` is the same for every strategy; whatever
depends on how many processes there are and how the model is split among them
lives in a `Strategy`:

| step of the loop        | `Strategy` (one process)       | `DataParallel` (ddp)             | `FullyShardedDataParallel` (fsdp) |
|-------------------------|--------------------------------|----------------------------------|-----------------------------------|
| corpus                  | prepared once, memory-mapped   | rank 0 prepares, all map it      | same as ddp                       |
| the model               | as is                          | DDP wrapper (all-reduce)         | `fully_shard` per block + root    |
| a step's batches        | all `grad_accum` micro-batches | this rank's share of them        | same as ddp                       |
| gradient clipping       | `minillm.optim.clip_grad_norm` | same (gradients are whole)       | torch's (sharded gradients)       |
| evaluation, samples     | the model                      | rank 0 on the plain model        | every rank (each holds a shard)   |
| checkpoints             | `trainer.pt` + weights         | DCP shards + weights             | DCP shards + gathered weights     |

`Strategy.start(config)` joins the process group `torchrun` describes (or
none) and returns the right object; `close()` leaves it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from minillm import checkpoint as ckpt
from minillm.config import TrainConfig
from minillm.corpus import TrainData, cached_corpus_dir, is_prepared, open_corpus, prepare_corpus, with_corpus_settings
from minillm.distributed import (
    DistContext,
    batch_split,
    clip_grad_norm,
    init_distributed,
    resolve_strategy,
    shard_micro_batches,
    teardown,
    wrap_model,
)
from minillm.errors import CheckpointError, DataError, MinillmError
from minillm.tokenizer import Tokenizer
from minillm.tokens import get_batch

log = logging.getLogger(__name__)


class Strategy:
    """One process: every step's micro-batches, the whole model, `trainer.pt` checkpoints."""

    name = "single"

    def __init__(self, config: TrainConfig, ctx: DistContext) -> None:
        self.config, self.ctx = config, ctx
        self.local_micro_batches, self.row_parts = batch_split(config.grad_accum, config.batch_size, ctx.world_size)
        if self.row_parts > 1:
            log.info("%d processes share each micro-batch of %d sequences (%d each), so the global batch stays %d "
                     "sequences per step, as with one process", ctx.world_size, config.batch_size,
                     config.batch_size // self.row_parts, config.batch_size * config.grad_accum)  # fmt: skip

    @staticmethod
    def start(config: TrainConfig) -> Strategy:
        """The strategy `config.strategy` names ("auto": ddp under torchrun), in torchrun's process group (if any)."""
        name = resolve_strategy(config.strategy)
        if name != config.strategy and name != "single":
            log.info("strategy auto: %s (%s processes)", name, os.environ.get("WORLD_SIZE", "1"))
        ctx = init_distributed(config.device, name)
        try:
            return STRATEGIES[name](config, ctx)
        except BaseException:
            teardown(ctx)
            raise

    def close(self) -> None:
        """Leave the process group if `start` joined it."""
        teardown(self.ctx)

    @property
    def device(self) -> torch.device:
        return self.ctx.device

    @property
    def is_main(self) -> bool:
        """True on the process that logs and writes run files (rank 0)."""
        return self.ctx.is_main

    # -- the run folder and the data ------------------------------------------

    def on_main_first(self, work: Callable[[], Any]) -> Any:
        """Run `work` on rank 0 while the others wait; a failure there is raised on every rank."""
        result, error = None, None
        if self.is_main:
            try:
                result = work()
            except Exception as err:  # noqa: BLE001 - told to every rank, then raised here as it was
                error = err
        if self.ctx.distributed:
            message = self.ctx.broadcast(None if error is None else f"{type(error).__name__}: {error}")
            if message is not None and error is None:
                raise MinillmError(f"rank 0 failed: {message}")
        if error is not None:
            raise error
        return result

    def prepare_run_dir(self, out: Path, resume: bool, overwrite: bool) -> Path | None:
        """The checkpoint to resume from (None: a new run), after checking (or cleaning) `out` on rank 0."""
        checkpoint = self.on_main_first(lambda: ckpt.prepare_run_dir(out, self.config, resume, overwrite))
        if self.ctx.distributed and resume and not self.is_main:
            checkpoint = ckpt.latest_checkpoint(out)
        return checkpoint

    def load_corpus(self, tokenizer: Tokenizer | None = None) -> tuple[TrainConfig, TrainData]:
        """(config with the corpus' data settings, memory-mapped tokens): prepared once, on rank 0.

        A prepared folder (`config.data`) is used as it is; a named corpus is
        prepared into the cache unless already there. `tokenizer` (a resumed
        run's) is used to encode when the corpus has to be prepared again.
        """
        config = self.config
        if is_prepared(config.data):
            config = with_corpus_settings(config, config.data)
            folder = Path(config.data)
        else:
            folder = cached_corpus_dir(config)

            def prepare() -> None:
                if not is_prepared(folder):
                    prepare_corpus(config, folder, overwrite=True, reuse_tokenizer=tokenizer)

            self.on_main_first(prepare)
        data = open_corpus(folder)
        if tokenizer is not None and tokenizer.vocab_size != data.tokenizer.vocab_size:
            raise CheckpointError(f"the run's tokenizer has {tokenizer.vocab_size} tokens but the corpus in {folder} "
                                  f"{data.tokenizer.vocab_size}; prepare it again or start a new run")  # fmt: skip
        for split in (data.train, data.val):
            if len(split) < config.context_length + 1:
                raise DataError(f"{folder} has {len(split)} tokens in a split, too few for context_length "
                                f"{config.context_length}; use more data or a shorter context")  # fmt: skip
        self.config = config
        return config, data

    # -- the model and a step ---------------------------------------------------

    def wrap(self, model: nn.Module, precision: str) -> nn.Module:
        """The module the loop calls: the model itself (here), DDP, or FSDP shards (in place)."""
        return wrap_model(model, self.name, self.ctx, precision, self.config.reshard_after_forward,
                          self.config.compile)  # fmt: skip

    def micro_batches(self, tokens: Any, rng: torch.Generator) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """This process' (x, y) micro-batches, each (B, T), of one step's global batch drawn with `rng`.

        Every rank draws the same `grad_accum` micro-batches and keeps its share,
        so the run follows the one-process run whatever the world size.
        """
        c = self.config
        batches = [get_batch(tokens, c.batch_size, c.context_length, "cpu", generator=rng) for _ in range(c.grad_accum)]
        if self.ctx.distributed:
            batches = shard_micro_batches(batches, self.ctx.rank, self.ctx.world_size)
        non_blocking = self.device.type == "cuda"
        return [(x.to(self.device, non_blocking=non_blocking), y.to(self.device, non_blocking=non_blocking))
                for x, y in batches]  # fmt: skip

    def mean(self, value: float | torch.Tensor) -> float:
        """The mean of a number over all processes."""
        return self.ctx.all_reduce_mean(value)

    def clip_grad_norm(self, model: nn.Module, max_norm: float) -> torch.Tensor:
        """Clip the global gradient norm to `max_norm`; return the norm before clipping."""
        return clip_grad_norm(model.parameters(), max_norm)

    def any(self, flag: bool) -> bool:
        """True everywhere when `flag` is true on any process (a Ctrl-C seen by one of them)."""
        return self.ctx.any(flag)

    # -- evaluation and samples ----------------------------------------------

    def evaluate(self, net: nn.Module, model: nn.Module, fn: Callable[[nn.Module], float]) -> float:
        """`fn(module)` (a validation loss) computed as this strategy needs, the same on every process."""
        return fn(model)

    def sample(self, net: nn.Module, model: nn.Module, fn: Callable[[nn.Module], str]) -> str | None:
        """`fn(module)` (a generated sample) where the strategy can run it; None on processes that skip it."""
        return fn(model)

    # -- checkpoints --------------------------------------------------------

    def save(self, out: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
             data_rng: torch.Generator, tokenizer: Tokenizer, scaler: Any = None) -> Path:  # fmt: skip
        """Save the run's state after `step` steps (collective under torchrun)."""
        return ckpt.save(out, step, model, optimizer, data_rng, self.config, tokenizer, scaler, self.ctx)

    def restore(self, checkpoint: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                data_rng: torch.Generator, scaler: Any = None) -> int:  # fmt: skip
        """Load `checkpoint` into the model, optimizer and RNGs; return its step."""
        return ckpt.restore(checkpoint, model, optimizer, data_rng, scaler)


class DataParallel(Strategy):
    """DDP: each process holds the whole model; gradients are all-reduced after the last micro-batch."""

    name = "ddp"

    def evaluate(self, net: nn.Module, model: nn.Module, fn: Callable[[nn.Module], float]) -> float:
        return self.ctx.broadcast(fn(model) if self.is_main else None)  # rank 0 on the plain model

    def sample(self, net: nn.Module, model: nn.Module, fn: Callable[[nn.Module], str]) -> str | None:
        return fn(model) if self.is_main else None

    def restore(self, checkpoint: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                data_rng: torch.Generator, scaler: Any = None) -> int:  # fmt: skip
        return ckpt.restore_sharded(checkpoint, model, optimizer, data_rng, self.ctx, scaler)


class FullyShardedDataParallel(DataParallel):
    """FSDP2: parameters, gradients and optimizer state sharded across processes (ZeRO-3)."""

    name = "fsdp"

    def evaluate(self, net: nn.Module, model: nn.Module, fn: Callable[[nn.Module], float]) -> float:
        return fn(net)  # every rank takes part in each forward: each holds a shard of every layer

    def sample(self, net: nn.Module, model: nn.Module, fn: Callable[[nn.Module], str]) -> str | None:
        text = fn(net)
        return text if self.is_main else None


STRATEGIES: dict[str, type[Strategy]] = {"single": Strategy, "ddp": DataParallel, "fsdp": FullyShardedDataParallel}
