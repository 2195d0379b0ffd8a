"""The pretraining loop: batches in, a trained model, checkpoints and metrics out (chapter 05).

Chapter 05 (`05_pretraining`) trains a real model on a CPU with this module.
One `TrainConfig` (a dataclass; `minillm.presets` names a few) says what to
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
runs one process per device under `torchrun` (see `minillm.distributed`): each
rank trains on its share of every global batch (`grad_accum` counts the
micro-batches of all ranks together, so the tokens per step stay the same),
only rank 0 logs, and checkpoints are sharded (`torch.distributed.checkpoint`).
`precision` "fp16" adds a gradient scaler (steps with inf/NaN gradients are
skipped and counted in `skipped_steps`), `activation_checkpointing` recomputes
each block in backward (`minillm.memory.checkpoint_blocks`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from minillm import distributed as dist_
from minillm.device import PRECISIONS, autocast, resolve_precision, set_matmul_precision
from minillm.model import GPT, GPTConfig
from minillm.monitor import MetricsLog, device_peak_flops, mfu, plot_metrics
from minillm.optim import SCHEDULES, lr_at, make_optimizer

TOKENIZERS = ("char", "bpe", "gpt2")
STRATEGIES = dist_.STRATEGIES  # "single", "ddp", "fsdp" (chapter 06)
#: Fields added after `pretrained_tiny`'s cache keys were made; left out of the key at their defaults.
_LATER_FIELDS = {"activation_checkpointing": False, "reshard_after_forward": True}


@dataclass
class TrainConfig:
    """Everything a pretraining run needs; the defaults are the `shakespeare-char` baby GPT."""

    # data: minillm.presets.load_data turns these into a tokenizer and train/val tokens
    data: str = "tinyshakespeare"  # a minillm.data.read_text name, "files" or "fineweb-edu"
    data_files: str = ""  # data="files": glob(s) of UTF-8 text files, separated by commas
    max_chars: int = 0  # use only this many characters of the corpus (0: all)
    exclude_files: str = ""  # python-stdlib: comma-separated globs of files to leave out, e.g. "encodings/*"
    tokenizer: str = "char"  # "char" | "bpe" (trained on the corpus) | "gpt2"
    vocab_size: int = 4096  # bpe: vocabulary size to learn
    tokenizer_chars: int = 1_000_000  # bpe: characters, spread over the corpus, to learn it from
    val_fraction: float = 0.1  # the corpus' last fraction is held out for validation
    # model: a minillm.model.GPTConfig (vocab_size comes from the tokenizer)
    n_layer: int = 4
    n_head: int = 4
    d_model: int = 128
    context_length: int = 64
    dropout: float = 0.0
    bias: bool = True
    norm: str = "layernorm"
    mlp: str = "gelu"
    positions: str = "learned"
    vocab_multiple: int = 1  # pad the vocabulary (64 suits GPUs)
    # optimization
    batch_size: int = 12  # sequences per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    max_steps: int = 2000  # optimizer steps; the schedule ends here
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100  # capped at max_steps
    schedule: str = "cosine"  # "cosine" | "wsd" | "constant"
    decay_fraction: float = 0.2  # wsd: the last fraction of steps decays
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    optimizer: str = "torch"  # "torch" (fused/foreach AdamW) | "minillm" (written out)
    # evaluation, logging, checkpoints
    eval_interval: int = 250  # evaluate (and checkpoint, sample) every this many steps and at the end
    eval_batches: int = 20  # validation batches of batch_size windows each
    log_interval: int = 1  # write a metrics record every this many steps
    keep_checkpoints: int = 1  # newest checkpoints kept on disk
    sample_prompt: str = "\n"
    sample_tokens: int = 200  # generated at every evaluation (0: none)
    # system
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:1" | "mps"
    precision: str = "auto"  # "auto" (bf16 on CUDA, else fp32) | "fp32" | "tf32" | "bf16" | "fp16"
    compile: bool = False  # torch.compile the model
    strategy: str = "single"  # "single" (one process) | "ddp" | "fsdp" (under torchrun; chapter 06)
    seed: int = 1337
    peak_tflops: float = 0.0  # your device's peak, for MFU where minillm.scaling has none
    activation_checkpointing: bool = False  # recompute each block's activations in backward
    reshard_after_forward: bool = True  # fsdp: free gathered weights after forward (ZeRO-3); False: ZeRO-2-like

    def __post_init__(self) -> None:
        for name in ("max_steps", "batch_size", "grad_accum", "eval_interval", "eval_batches",
                     "log_interval", "keep_checkpoints"):  # fmt: skip
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.tokenizer not in TOKENIZERS:
            raise ValueError(f"tokenizer must be one of {TOKENIZERS}, got {self.tokenizer!r}")
        if self.optimizer not in ("torch", "minillm"):
            raise ValueError(f"optimizer must be 'torch' (fused) or 'minillm' (written out), got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.precision == "fp16" and self.strategy == "fsdp":
            raise ValueError("precision fp16 with strategy fsdp is not supported; use precision bf16 "
                             "(fp32's range, no loss scaling) or strategy ddp")  # fmt: skip
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if not (self.lr > 0 and 0 <= self.min_lr <= self.lr):
            raise ValueError(f"need lr > 0 and 0 <= min_lr <= lr, got lr={self.lr}, min_lr={self.min_lr}")

    def model_config(self, vocab_size: int) -> GPTConfig:
        """The `GPTConfig` of this run's model for a tokenizer of `vocab_size` tokens."""
        return GPTConfig(
            vocab_size=vocab_size, context_length=self.context_length, d_model=self.d_model,
            n_layer=self.n_layer, n_head=self.n_head, dropout=self.dropout, bias=self.bias, norm=self.norm,
            mlp=self.mlp, positions=self.positions, vocab_multiple=self.vocab_multiple,
        )  # fmt: skip

    @property
    def tokens_per_step(self) -> int:
        """Tokens per optimizer step: batch_size * grad_accum * context_length (all ranks together)."""
        return self.batch_size * self.grad_accum * self.context_length


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the run stopped without saving."""


@dataclass
class TrainResult:
    """What `train` returns: the model (on its device, eval mode), its tokenizer and the metrics."""

    model: GPT
    tokenizer: Any
    history: list[dict] = field(default_factory=list)  # the metrics.jsonl records of this call
    samples: list[tuple[int, str]] = field(default_factory=list)  # (step, generated text)
    step: int = 0  # optimizer steps done
    val_loss: float | None = None  # the last validation loss
    seconds: float = 0.0  # wall time of this call, evaluation included
    interrupted: bool = False  # stopped early by Ctrl-C or `stop_after`
    out_dir: Path | None = None
    skipped_steps: int = 0  # fp16: steps the gradient scaler skipped (inf/NaN gradients)


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
        raise ValueError("forward_backward needs at least one micro-batch")
    total = torch.zeros((), device=device)
    for i, (x, y) in enumerate(micro_batches):
        with dist_.grad_sync(model, sync=i == k - 1):
            with autocast(torch.device(device), precision):
                _, loss = model(x, y)
            (loss / k if scaler is None else scaler.scale(loss / k)).backward()
        total += loss.detach()
    return total / k


def eval_windows(n_tokens: int, context_length: int, n_windows: int) -> list[int]:
    """Start offsets of `n_windows` validation windows spread evenly over the tokens."""
    last = n_tokens - context_length - 1
    if last < 0:
        raise ValueError(f"{n_tokens} validation tokens are fewer than context_length + 1 = {context_length + 1}")
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


def sample_text(model: GPT, tokenizer: Any, prompt: str, max_new_tokens: int = 200, temperature: float = 0.8,
                top_k: int | None = 50, seed: int = 0) -> str:  # fmt: skip
    """The prompt continued by `max_new_tokens` sampled tokens (own generator: global RNG untouched)."""
    from minillm.generate import generate

    device = next(model.parameters()).device
    ids = tokenizer.encode(prompt) if not hasattr(tokenizer, "special_tokens") else \
        tokenizer.encode(prompt, disallowed_special=())  # fmt: skip
    if not ids:
        raise ValueError("the prompt encodes to no tokens; give at least one character")
    idx = torch.tensor([ids[-model.config.context_length :]], dtype=torch.long, device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    out = generate(model, idx, max_new_tokens, temperature=temperature, top_k=top_k, generator=gen)
    return prompt + tokenizer.decode(out[0, idx.size(1) :].tolist())


# ---------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------


def train(
    config: TrainConfig,
    out_dir: str | os.PathLike | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    data: Any = None,
    stop_after: int | None = None,
    progress: bool = True,
    verbose: bool = True,
    on_step: Callable[[dict], None] | None = None,
) -> TrainResult:
    """Train a GPT as `config` says; write metrics, plots and checkpoints to `out_dir`.

    `out_dir=None` keeps everything in memory (no checkpoints). An existing
    non-empty `out_dir` is an error unless `resume` (continue from its latest
    checkpoint; `config` may differ only in `minillm.checkpoint.RESUMABLE` fields)
    or `overwrite` (delete the run's files first). `data`: a
    `minillm.presets.TrainData` to reuse (else loaded from the config).
    `stop_after`: stop (with a checkpoint) after this many steps, the schedule
    still spanning `max_steps`. `on_step(record)` sees each metrics record.
    Seeds torch's global RNG with `config.seed` (model initialization, dropout).
    """
    t_start = time.perf_counter()
    ctx = dist_.init_distributed(config.device, config.strategy)  # strategy "single": no process group
    try:
        return _train(config, None if out_dir is None else Path(out_dir), ctx, resume, overwrite, data, stop_after,
                      progress and ctx.is_main, verbose and ctx.is_main, on_step, t_start)  # fmt: skip
    finally:
        dist_.teardown(ctx)


def _train(config: TrainConfig, out: Path | None, ctx: dist_.DistContext, resume: bool, overwrite: bool, data: Any,
           stop_after: int | None, progress: bool, verbose: bool, on_step: Callable[[dict], None] | None,
           t_start: float) -> TrainResult:  # fmt: skip
    """The loop of `train`, in the process context `ctx` (one of `ctx.world_size` ranks)."""
    from minillm import checkpoint as ckpt
    from minillm.presets import load_data

    state = _prepare_run_dir(out, config, resume, overwrite, ctx) if out is not None else None
    torch.manual_seed(config.seed)
    device = ctx.device
    precision = resolve_precision(config.precision, device)
    set_matmul_precision(device, precision)
    micro_steps = dist_.local_accumulation(config.grad_accum, ctx.world_size)  # this rank's micro-batches
    if data is None:
        data = load_data(config, tokenizer=state["tokenizer"] if state else None)
    model = GPT(config.model_config(data.tokenizer.vocab_size)).to(device)
    if config.activation_checkpointing:
        from minillm.memory import checkpoint_blocks

        checkpoint_blocks(model)
    flops_per_token = model.flops_per_token(config.context_length)
    net = dist_.wrap_model(model, config.strategy, ctx, precision, config.reshard_after_forward, config.compile)
    optimizer = make_optimizer(model, config.lr, config.weight_decay, (config.beta1, config.beta2),
                               impl=config.optimizer)  # fmt: skip
    scaler = dist_.make_grad_scaler(precision, config.strategy, device)
    data_rng = torch.Generator().manual_seed(config.seed)
    step = 0
    sharded = config.strategy != "single"
    if state is not None and state["checkpoint"] is not None:
        if sharded:
            step = dist_.restore_checkpoint(state["checkpoint"], model, optimizer, data_rng, ctx, scaler)
        else:
            step = ckpt.restore(state["checkpoint"], model, optimizer, data_rng, device, scaler=scaler)
    elif out is not None and ctx.is_main:
        ckpt.write_run_files(out, config, data.tokenizer)
    peak = device_peak_flops(device, "bf16" if precision == "fp16" else precision, config.peak_tflops)
    result = TrainResult(model, data.tokenizer, step=step, out_dir=out)
    log = MetricsLog(out if ctx.is_main else None, step)

    def save_checkpoint(step: int) -> None:
        if out is not None and step > 0:
            if sharded:
                dist_.save_checkpoint(out, step, model, optimizer, data_rng, config, data.tokenizer, ctx, scaler)
            else:
                ckpt.save(out, step, model, optimizer, data_rng, config, data.tokenizer, scaler=scaler)

    def write(record: dict) -> None:
        result.history.append(record)
        log.write(record, on_step)
        if out is not None and ctx.is_main and "val_loss" in record and record["step"] > 0:
            plot_metrics(log.records, out / "loss.png")  # refreshed at every evaluation

    def evaluate_into(step: int, record: dict) -> None:
        # FSDP: every rank takes part in each forward; DDP: rank 0 evaluates the (whole) plain model.
        evaluator = net if config.strategy != "ddp" else model
        if config.strategy != "ddp" or ctx.is_main:
            record["val_loss"] = evaluate(evaluator, data.val, config.context_length, config.batch_size,
                                          config.eval_batches, device, precision)  # fmt: skip
        if config.strategy == "ddp":
            record["val_loss"] = ctx.broadcast(record.get("val_loss"))
        record["val_ppl"] = math.exp(min(record["val_loss"], 50.0))
        result.val_loss = record["val_loss"]
        if config.sample_tokens > 0 and (config.strategy != "ddp" or ctx.is_main):
            text = sample_text(evaluator, data.tokenizer, config.sample_prompt, config.sample_tokens,
                               seed=config.seed)  # fmt: skip
            result.samples.append((step, text))
            log.sample(step, text, verbose)
        model.train()

    stop = _StopRequest()
    bar = _progress(config.max_steps, step, progress)
    try:
        with stop.on_sigint():
            if step == 0:
                record = {"step": 0}
                evaluate_into(0, record)
                write(record)
            model.train()
            warmup = min(config.warmup_steps, config.max_steps)
            t_last, tokens_since = time.perf_counter(), 0
            while step < config.max_steps:
                lr = lr_at(step, config.schedule, config.lr, config.max_steps, warmup, config.min_lr,
                           config.decay_fraction)  # fmt: skip
                for group in optimizer.param_groups:
                    group["lr"] = lr
                if sharded:  # every rank draws the global batch, keeps its share
                    batches = [_batch(data.train, config, torch.device("cpu"), data_rng)
                               for _ in range(config.grad_accum)]  # fmt: skip
                    batches = [(x.to(device), y.to(device))
                               for x, y in dist_.shard_micro_batches(batches, ctx.rank, ctx.world_size)]  # fmt: skip
                else:
                    batches = [_batch(data.train, config, device, data_rng) for _ in range(micro_steps)]
                loss = ctx.all_reduce_mean(forward_backward(net, batches, device, precision, scaler))
                if not math.isfinite(loss):
                    raise NonFiniteLossError(_nan_message(loss, step + 1, lr, out))
                if scaler is not None:
                    scaler.unscale_(optimizer)  # clip the true gradients
                norm = dist_.clip_grad_norm(model.parameters(), config.grad_clip) if config.grad_clip > 0 else None
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
                stopping = stop_after is not None and step >= stop_after and step < config.max_steps
                evaluating = step % config.eval_interval == 0 or step == config.max_steps or stopping
                if evaluating or step % config.log_interval == 0:
                    elapsed = time.perf_counter() - t_last
                    record = {"step": step, "train_loss": loss, "lr": lr, "tokens_per_s": tokens_since / elapsed}
                    if norm is not None and math.isfinite(float(norm)):
                        record["grad_norm"] = float(norm)
                    if scaler is not None:
                        record["loss_scale"] = scaler.get_scale()
                        record["skipped_steps"] = result.skipped_steps
                    if peak is not None:
                        record["mfu"] = mfu(flops_per_token, record["tokens_per_s"], peak)
                    if evaluating:
                        evaluate_into(step, record)
                    write(record)
                    bar.set_postfix(_postfix(record, result.val_loss), refresh=False)
                requested = ctx.any(stop.requested) if ctx.distributed else stop.requested
                if evaluating or requested:
                    save_checkpoint(step)
                if evaluating or step % config.log_interval == 0:  # time the next interval from here
                    t_last, tokens_since = time.perf_counter(), 0
                if stopping or requested:
                    result.interrupted = step < config.max_steps
                    break
    finally:
        bar.close()
        log.close()
    if out is not None and ctx.is_main and log.records:
        plot_metrics(log.records, out / "loss.png")
    if result.interrupted and verbose and out is not None:
        print(f"stopped at step {step}; checkpoint saved in {out}; continue with resume=True (--resume)")
    result.seconds = time.perf_counter() - t_start
    model.eval()
    return result


def _prepare_run_dir(out: Path, config: TrainConfig, resume: bool, overwrite: bool, ctx: dist_.DistContext) -> dict:
    """`checkpoint.prepare_run_dir` on rank 0 first (it may create or clean `out`), then on the others."""
    from minillm import checkpoint as ckpt

    if not ctx.distributed:
        return ckpt.prepare_run_dir(out, config, resume, overwrite)
    error, state = None, {"checkpoint": None, "tokenizer": None}
    if ctx.is_main:
        try:
            state = ckpt.prepare_run_dir(out, config, resume, overwrite)
        except (OSError, ValueError) as err:
            error = err
    error = ctx.broadcast(None if error is None else f"{type(error).__name__}: {error}")
    if error is not None:
        raise RuntimeError(f"rank 0 could not prepare {out}: {error}")
    if resume and not ctx.is_main:  # read-only: finds the same checkpoint and tokenizer
        state = ckpt.prepare_run_dir(out, config, resume, False)
    return state


def _batch(tokens: Any, config: TrainConfig, device: torch.device, rng: torch.Generator):
    from minillm.tokens import get_batch

    return get_batch(tokens, config.batch_size, config.context_length, device, generator=rng)


def _nan_message(loss: float, step: int, lr: float, out: Path | None) -> str:
    from minillm.checkpoint import latest_checkpoint

    kept = latest_checkpoint(out) if out is not None else None
    where = f"the last good checkpoint, {kept}, is kept" if kept else "no checkpoint was written"
    return (f"training loss is {loss} at step {step} (lr {lr:.3g}); stopped without saving, {where}. "
            "Lower the learning rate, raise warmup_steps, keep grad_clip on, or use fp32 precision.")  # fmt: skip


class _StopRequest:
    """Ctrl-C (SIGINT) sets `requested`; the loop finishes its step, saves and stops. A second Ctrl-C aborts."""

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
            print("\nCtrl-C: finishing this step and saving a checkpoint (press again to abort)", flush=True)

        previous = signal.signal(signal.SIGINT, handler)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)


def _progress(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc="train", unit="step", dynamic_ncols=True)


def _postfix(record: dict, val_loss: float | None) -> dict:
    post = {"loss": f"{record['train_loss']:.3f}", "tok/s": f"{record['tokens_per_s']:,.0f}"}
    if val_loss is not None:
        post["val"] = f"{val_loss:.3f}"
    if "mfu" in record:
        post["mfu"] = f"{100 * record['mfu']:.1f}%"
    return post


# ---------------------------------------------------------------------------
# A small base model for later chapters
# ---------------------------------------------------------------------------


def pretrained_tiny(name: str = "shakespeare-char", cache: bool = True, progress: bool = False) -> tuple[GPT, Any]:
    """A small pretrained (model, tokenizer), trained once and cached under `minillm.data.cache_dir()`.

    `name` is a key of `minillm.presets.TINY`: a preset shortened to about a
    minute on a laptop CPU (deterministic: fixed seed). The first call trains and
    stores the checkpoint in `<cache>/pretrained/<name>-<hash of its config>/`;
    later calls load it in a second. `cache=False` always trains, in memory.
    """
    from minillm.checkpoint import load_model, write_checkpoint_files
    from minillm.data import cache_dir
    from minillm.presets import TINY, tiny_config

    if name not in TINY:
        raise KeyError(f"unknown tiny model {name!r}; choose one of {sorted(TINY)}")
    config = tiny_config(name)
    if not cache:
        result = train(config, None, progress=progress, verbose=False)
        return result.model, result.tokenizer
    digest = _config_digest(config)
    target = cache_dir() / "pretrained" / f"{name}-{digest}"
    if not (target / "model.safetensors").is_file():
        result = train(config, None, progress=progress, verbose=False)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        write_checkpoint_files(tmp, result.model, result.tokenizer, config)
        try:
            os.replace(tmp, target)
        except OSError:  # another process got there first
            shutil.rmtree(tmp, ignore_errors=True)
    return load_model(target)


def _config_digest(config: TrainConfig) -> str:
    fields = {k: v for k, v in dataclasses.asdict(config).items() if not (k in _LATER_FIELDS and v == _LATER_FIELDS[k])}
    text = json.dumps(fields, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]
