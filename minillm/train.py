"""The pretraining loop: batches in, a trained model, checkpoints and metrics out (chapter 05).

Chapter 05 (`05_pretraining`) trains a real model on a CPU with this module.
One `TrainConfig` (a dataclass; `minillm.config` names a few presets) says what to
train on, which model, and how; `train(config, out_dir)` runs the loop:

    for step in 1 .. max_steps:
        lr = schedule(step)                          minillm.optim.lr_at
        grad_accum micro-batches: loss / k, backward forward_backward
        clip the gradient norm, AdamW step           minillm.optim
        every eval_interval steps: val loss and perplexity, a sample, a checkpoint

and writes into `out_dir`: `metrics.jsonl` (one JSON object per logged step:
`step`, `train_loss`, `lr`, `grad_norm`, `tokens_per_s`, `mfu` when the device's
peak is known, and `val_loss`/`val_ppl` at evaluations; the first record,
step 0, holds only the initial validation loss), `loss.png`, `samples.txt`
(see `minillm.monitor`), `train_config.json` and `checkpoints/` (see
`minillm.checkpoint`). Step k's record describes the k-th update: its batch's
loss (before the update), its learning rate, and the validation loss after it.

Resuming (`resume=True`) restores the model, the optimizer, the step, the RNG
states and the data sampler's generator, so on a CPU the resumed run's losses
equal those of an uninterrupted run. Ctrl-C finishes the current step, saves a
checkpoint and stops. A NaN or infinite loss stops the run with
`NonFiniteLossError` and leaves the last good checkpoint as it was.

Devices: "auto" picks CUDA, then MPS, then the CPU; precision "auto" is bf16
autocast on CUDA and fp32 elsewhere.

Chapter 06 (`06_scaling`) scales the same loop out. `strategy` "ddp" or "fsdp"
runs one process per device under `torchrun`; whatever differs between one
process and many lives in a `minillm.strategy.Strategy`, not in the loop: each
rank trains on its share of every global batch (`grad_accum` counts the
micro-batches of all ranks together, so the tokens per step stay the same),
only rank 0 logs, and checkpoints are sharded (`torch.distributed.checkpoint`)
with the full weights beside them.
`precision` "fp16" adds a gradient scaler (steps with inf/NaN gradients are
skipped and counted in `skipped_steps`), `activation_checkpointing` recomputes
each block in backward (`minillm.memory.checkpoint_blocks`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from minillm import checkpoint as ckpt
from minillm.config import TrainConfig
from minillm.corpus import TrainData
from minillm.device import autocast, resolve_precision, set_matmul_precision
from minillm.distributed import grad_sync, make_grad_scaler
from minillm.errors import DataError
from minillm.generate import complete
from minillm.memory import checkpoint_blocks
from minillm.model import GPT
from minillm.monitor import MetricsLog, device_peak_flops, mfu, plot_metrics, progress_bar
from minillm.optim import lr_at, make_optimizer
from minillm.strategy import Strategy
from minillm.tokenizer import Tokenizer, load_tokenizer


log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the run stopped without saving."""


@dataclass
class TrainResult:
    """What `train` returns: the model (on its device, eval mode), its tokenizer and the metrics."""

    model: GPT
    tokenizer: Tokenizer
    history: list[dict] = field(default_factory=list)  # the metrics.jsonl records of this call
    samples: list[tuple[int, str]] = field(default_factory=list)  # (step, generated text)
    step: int = 0  # optimizer steps done
    val_loss: float | None = None  # the last validation loss
    seconds: float = 0.0  # wall time of this call, evaluation included
    interrupted: bool = False  # stopped early by Ctrl-C or `stop_after`
    out_dir: Path | None = None
    skipped_steps: int = 0  # fp16: steps the gradient scaler skipped (inf/NaN gradients)
    config: TrainConfig | None = None  # the run's config (with a prepared corpus' data settings)


# ---------------------------------------------------------------------------
# One step, evaluation, samples
# ---------------------------------------------------------------------------


def forward_backward(
    model: torch.nn.Module,
    micro_batches: list[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    scaler: Any = None,
) -> torch.Tensor:
    """Accumulate the gradient of the mean loss over k micro-batches of (x, y), each (B, T).

    Each micro-batch's loss is divided by k before `backward`, so the gradients
    add up to those of one batch k times larger. Returns the mean loss (detached).
    A DDP model all-reduces the gradients only in the last backward
    (`minillm.distributed.grad_sync`). `scaler` (fp16): backward of the scaled loss.
    """
    k = len(micro_batches)
    if k == 0:
        raise DataError("forward_backward needs at least one micro-batch")
    total = torch.zeros((), device=device)
    for i, (x, y) in enumerate(micro_batches):
        with grad_sync(model, sync=i == k - 1):
            with autocast(torch.device(device), precision):
                _, loss = model(x, y)
            (loss / k if scaler is None else scaler.scale(loss / k)).backward()
        total += loss.detach()
    return total / k


def eval_windows(n_tokens: int, context_length: int, n_windows: int) -> list[int]:
    """Start offsets of `n_windows` validation windows spread evenly over the tokens."""
    last = n_tokens - context_length - 1
    if last < 0:
        raise DataError(f"{n_tokens} validation tokens are fewer than context_length + 1 = {context_length + 1}")
    n = min(n_windows, last + 1)
    return np.linspace(0, last, n).round().astype(np.int64).tolist()


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    tokens: Any,
    context_length: int,
    batch_size: int = 12,
    max_batches: int = 20,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
) -> float:
    """Mean next-token loss (nats) over up to `max_batches * batch_size` windows of held-out tokens.

    The windows (`eval_windows`) are the same at every call, so evaluations are
    comparable and consume no random numbers. Perplexity is exp(loss).
    """
    starts = eval_windows(len(tokens), context_length, max_batches * batch_size)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(starts), batch_size):
        rows = [np.asarray(tokens[s : s + context_length + 1], dtype=np.int64) for s in starts[i : i + batch_size]]
        xy = torch.from_numpy(np.stack(rows)).to(device)  # (B, T+1)
        with autocast(torch.device(device), precision):
            _, loss = model(xy[:, :-1], xy[:, 1:])
        total += float(loss) * len(rows)
        count += len(rows)
    model.train(was_training)
    return total / count


def sample(model: torch.nn.Module, tokenizer: Tokenizer, config: TrainConfig) -> str:
    """The run's sample prompt continued by `config.sample_tokens` tokens (temperature 0.8, top-k 50, own seed)."""
    return config.sample_prompt + complete(model, tokenizer, config.sample_prompt, config.sample_tokens,
                                           temperature=0.8, top_k=50, seed=config.seed)  # fmt: skip


# ---------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------


def train(
    config: TrainConfig,
    out_dir: str | os.PathLike | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    data: TrainData | None = None,
    stop_after: int | None = None,
    progress: bool = True,
    verbose: bool = True,
    on_step: Callable[[dict], None] | None = None,
    break_lock: bool = False,
) -> TrainResult:
    """Train a GPT as `config` says; write metrics, plots and checkpoints to `out_dir`.

    `out_dir=None` keeps everything in memory (no checkpoints). An existing
    non-empty `out_dir` is an error unless `resume` (continue from its latest
    checkpoint; `config` may differ only in `minillm.checkpoint.RESUMABLE` fields)
    or `overwrite` (delete the run's files first). A live run holds a lock on
    `out_dir`; `break_lock` removes a stale one. `data`: a
    `minillm.corpus.TrainData` to train on (else the config's corpus, prepared
    once and memory-mapped). `stop_after`: stop (with a checkpoint) after this
    many steps, the schedule still spanning `max_steps`. `on_step(record)` sees
    each metrics record. Seeds torch's global RNG with `config.seed`.
    """
    t_start = time.perf_counter()
    strategy = Strategy.start(config)  # one process, or one of torchrun's (chapter 06)
    out = None if out_dir is None else Path(out_dir)
    try:
        with ckpt.locked(out, break_lock) if out is not None and strategy.is_main else contextlib.nullcontext():
            return _train(strategy, out, resume, overwrite, data, stop_after, progress and strategy.is_main,
                          verbose and strategy.is_main, on_step, t_start)  # fmt: skip
    finally:
        strategy.close()


def _train(strategy: Strategy, out: Path | None, resume: bool, overwrite: bool, data: TrainData | None,
           stop_after: int | None, progress: bool, verbose: bool, on_step: Callable[[dict], None] | None,
           t_start: float) -> TrainResult:  # fmt: skip
    """The loop of `train`, run by every process of the `strategy`."""
    config = strategy.config
    checkpoint = strategy.prepare_run_dir(out, resume, overwrite) if out is not None else None
    run_tokenizer = load_tokenizer(checkpoint) if checkpoint is not None else None
    if data is None:
        config, data = strategy.load_corpus(run_tokenizer)
    tokenizer = run_tokenizer or data.tokenizer
    if out is not None and checkpoint is None and strategy.is_main:
        ckpt.write_run_files(out, config, tokenizer)

    # the model, its optimizer, the data sampler
    torch.manual_seed(config.seed)
    device = strategy.device
    precision = resolve_precision(config.precision, device)
    set_matmul_precision(device, precision)
    model = GPT(config.model_config(tokenizer.vocab_size)).to(device)
    if config.activation_checkpointing:
        checkpoint_blocks(model)
    net = strategy.wrap(model, precision)
    optimizer = make_optimizer(model, config.lr, config.weight_decay, (config.beta1, config.beta2),
                               impl=config.optimizer)  # fmt: skip
    scaler = make_grad_scaler(precision, strategy.name, device)  # fp16 only
    data_rng = torch.Generator().manual_seed(config.seed)
    step = strategy.restore(checkpoint, model, optimizer, data_rng, scaler) if checkpoint is not None else 0

    result = TrainResult(model, tokenizer, step=step, out_dir=out, config=config)
    metrics = MetricsLog(out if strategy.is_main else None, step)
    peak = device_peak_flops(device, "bf16" if precision == "fp16" else precision, config.peak_tflops)
    flops_per_token = model.flops_per_token(config.context_length)

    def validate(step: int, record: dict) -> None:
        loss = strategy.evaluate(net, model, lambda m: evaluate(m, data.val, config.context_length, config.batch_size,
                                                                config.eval_batches, device, precision))  # fmt: skip
        record.update(val_loss=loss, val_ppl=math.exp(min(loss, 50.0)))
        result.val_loss = loss
        if config.sample_tokens > 0:
            text = strategy.sample(net, model, lambda m: sample(m, tokenizer, config))
            if text is not None:
                result.samples.append((step, text))
                metrics.sample(step, text, verbose)
        model.train()

    def write(record: dict) -> None:
        result.history.append(record)
        metrics.write(record, on_step)
        if out is not None and strategy.is_main and "val_loss" in record and record["step"] > 0:
            _plot(metrics.records, out / "loss.png")  # refreshed at every evaluation

    stop = StopRequest()
    bar = progress_bar(config.max_steps, step, progress, desc="train")
    warmup = min(config.warmup_steps, config.max_steps)
    try:
        with stop.on_sigint():
            if step == 0:
                record = {"step": 0}
                validate(0, record)
                write(record)
            model.train()
            t_last, tokens_since = time.perf_counter(), 0
            while step < config.max_steps:
                # 1. the learning rate of this step
                lr = lr_at(step, config.schedule, config.lr, config.max_steps, warmup, config.min_lr,
                           config.decay_fraction)  # fmt: skip
                for group in optimizer.param_groups:
                    group["lr"] = lr
                # 2. forward and backward over this process' micro-batches (gradients accumulate)
                batches = strategy.micro_batches(data.train, data_rng)
                loss = strategy.mean(forward_backward(net, batches, device, precision, scaler))
                if not math.isfinite(loss):
                    raise NonFiniteLossError(_nan_message(loss, step + 1, lr, out))
                # 3. clip the gradient norm, update the weights, forget the gradients
                if scaler is not None:
                    scaler.unscale_(optimizer)  # clip the true gradients
                norm = strategy.clip_grad_norm(model, config.grad_clip) if config.grad_clip > 0 else None
                if scaler is None:
                    optimizer.step()
                else:
                    scale = scaler.get_scale()
                    scaler.step(optimizer)  # skipped when a gradient is inf/NaN
                    scaler.update()
                    result.skipped_steps += int(scaler.get_scale() < scale)
                optimizer.zero_grad(set_to_none=True)
                step += 1
                result.step = step
                tokens_since += config.tokens_per_step
                bar.update(1)
                # 4. log, evaluate, save
                stopping = stop_after is not None and step >= stop_after and step < config.max_steps
                evaluating = step % config.eval_interval == 0 or step == config.max_steps or stopping
                if evaluating or step % config.log_interval == 0:
                    record = _record(step, loss, lr, norm, tokens_since / (time.perf_counter() - t_last), scaler,
                                     result.skipped_steps, flops_per_token, peak)  # fmt: skip
                    if evaluating:
                        validate(step, record)
                    write(record)
                    bar.set_postfix(_postfix(record, result.val_loss), refresh=False)
                requested = strategy.any(stop.requested)
                if out is not None and (evaluating or requested):
                    strategy.save(out, step, model, optimizer, data_rng, tokenizer, scaler)
                if evaluating or step % config.log_interval == 0:  # time the next interval from here
                    t_last, tokens_since = time.perf_counter(), 0
                if stopping or requested:
                    result.interrupted = step < config.max_steps
                    break
    finally:
        bar.close()
        metrics.close()
    if out is not None and strategy.is_main and metrics.records:
        _plot(metrics.records, out / "loss.png")
    if result.interrupted and out is not None and strategy.is_main:
        log.info("stopped at step %d; checkpoint saved in %s; continue with resume=True (--resume)", step, out)
    result.seconds = time.perf_counter() - t_start
    model.eval()
    return result


def _record(step: int, loss: float, lr: float, norm: torch.Tensor | None, tokens_per_s: float, scaler: Any,
            skipped: int, flops_per_token: int, peak: float | None) -> dict:  # fmt: skip
    """One metrics.jsonl record of a training step."""
    record = {"step": step, "train_loss": loss, "lr": lr, "tokens_per_s": tokens_per_s}
    if norm is not None and math.isfinite(float(norm)):
        record["grad_norm"] = float(norm)
    if scaler is not None:
        record.update(loss_scale=scaler.get_scale(), skipped_steps=skipped)
    if peak is not None:
        record["mfu"] = mfu(flops_per_token, tokens_per_s, peak)
    return record


def _plot(records: list[dict], path: Path) -> None:
    """Refresh the loss plot; a plot that cannot be written (a full disk) is a warning, not the end of the run."""
    try:
        plot_metrics(records, path)
    except OSError as err:
        log.warning("could not write %s (%s); training goes on", path, err)


def _nan_message(loss: float, step: int, lr: float, out: Path | None) -> str:
    kept = ckpt.latest_checkpoint(out) if out is not None else None
    where = f"the last good checkpoint, {kept}, is kept" if kept else "no checkpoint was written"
    return (f"training loss is {loss} at step {step} (lr {lr:.3g}); stopped without saving, {where}. "
            "Lower the learning rate, raise warmup_steps, keep grad_clip on, or use fp32 precision.")  # fmt: skip


class StopRequest:
    """Ctrl-C (SIGINT) sets `requested`; a loop finishes its step, saves and stops. A second Ctrl-C aborts.

    Used by the pretraining loop here and the fine-tuning loop (`minillm.finetune`).
    """

    def __init__(self) -> None:
        self.requested = False

    @contextlib.contextmanager
    def on_sigint(self):
        if threading.current_thread() is not threading.main_thread():
            yield  # signal handlers can only be installed from the main thread
            return

        def handler(signum, frame):
            if self.requested:
                raise KeyboardInterrupt
            self.requested = True
            log.warning("Ctrl-C: finishing this step and saving a checkpoint (press again to abort)")

        previous = signal.signal(signal.SIGINT, handler)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)


def _postfix(record: dict, val_loss: float | None) -> dict:
    post = {"loss": f"{record['train_loss']:.3f}", "tok/s": f"{record['tokens_per_s']:,.0f}"}
    if val_loss is not None:
        post["val"] = f"{val_loss:.3f}"
    if "mfu" in record:
        post["mfu"] = f"{100 * record['mfu']:.1f}%"
    return post


