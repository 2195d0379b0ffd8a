"""Fine-tuning a pretrained GPT: which weights train and the shared loop (chapter 07).

Chapter 07 (`07_finetuning`) adapts a pretrained language model three ways,
each in its own module: a classifier (`minillm.classify`), instruction following
(`minillm.instruct`) and low-rank adapters (`minillm.lora`). They share what
lives here:

* `set_trainable`: freeze everything but the head, the last k blocks, or nothing
  (transfer learning);
* `FinetuneConfig` and `finetune(model, train_loader, val_loader, config)`: the
  loop. It reuses the pretraining machinery of chapter 05 instead of copying it:
  `minillm.optim` (AdamW parameter groups, `lr_at` schedules, `clip_grad_norm`),
  `minillm.train` (devices, precision, `forward_backward`, `plot_metrics`) and
  the `metrics.jsonl` record format;
* `evaluate_loader`: loss, and accuracy for classifiers, over a loader.

The command `python -m minillm finetune --task classify|instruct`
(`minillm.cli.finetune`) puts them together.

Batches are dicts of the model's keyword arguments, so one loop trains both a
`GPTClassifier` (`idx`, `targets` (B,), `lengths` (B,)) and a plain `GPT` on
instruction data (`idx`, `targets` (B, T) with -100 where the loss ignores a
position).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from tqdm.auto import tqdm

from minillm.classify import GPTClassifier
from minillm.device import autocast, resolve_device, resolve_precision
from minillm.errors import ConfigError
from minillm.fileio import atomic_write
from minillm.lora import count_parameters
from minillm.model import GPT
from minillm.monitor import plot_metrics
from minillm.optim import SCHEDULES, clip_grad_norm, lr_at, make_optimizer
from minillm.train import forward_backward

# ---------------------------------------------------------------------------
# Which parameters train
# ---------------------------------------------------------------------------


def _gpt_of(model: nn.Module) -> GPT:
    if isinstance(model, GPTClassifier):
        return model.gpt
    if isinstance(model, GPT):
        return model
    raise TypeError(f"expected a minillm GPT or GPTClassifier, got {type(model).__name__}")


def set_trainable(model: nn.Module, layers: str | int = "all") -> dict[str, int | float]:
    """Choose which parameters train; returns `minillm.lora.count_parameters(model)`.

    `layers`: "all" (full fine-tuning), "none", "head" (the output head only: a
    linear probe on frozen features), or an int k >= 0: the head, the final norm
    and the last k transformer blocks (transfer learning: the early layers keep
    their general features). For a plain GPT with tied embeddings the head is the
    token embedding, so "head" trains the embedding too.
    """
    gpt = _gpt_of(model)
    n_layer = gpt.config.n_layer
    if isinstance(layers, bool) or not (layers in ("all", "none", "head") or (isinstance(layers, int) and
                                                                                0 <= layers <= n_layer)):
        raise ConfigError(f"layers must be 'all', 'none', 'head' or a number of blocks in [0, {n_layer}], "
                         f"got {layers!r}")  # fmt: skip
    model.requires_grad_(layers == "all")
    if layers not in ("all", "none"):
        gpt.lm_head.requires_grad_(True)
        if isinstance(layers, int):
            gpt.norm_f.requires_grad_(True)
            for block in gpt.blocks[n_layer - layers :]:
                block.requires_grad_(True)
    return count_parameters(model)


# ---------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------


def _to(batch: dict[str, torch.Tensor], device: torch.device | str) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


@torch.no_grad()
def evaluate_loader(model: nn.Module, loader: DataLoader, max_batches: int | None = None,
                    precision: str = "fp32") -> dict[str, float]:  # fmt: skip
    """Mean loss over (up to `max_batches` of) a loader; for a classifier also the accuracy.

    Returns {"loss": ...} or, when the model gives one score row per sequence
    (logits (B, K) with targets (B,), a `GPTClassifier`), {"loss": ..., "accuracy": ...}.
    The loss is averaged per sequence (classification) or per batch (language modelling).
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total_loss, correct, count, batches, classifier = 0.0, 0, 0, 0, False
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        batch = _to(batch, device)
        with autocast(device, precision):
            logits, loss = model(**batch)
        n = batch["idx"].size(0)
        classifier = batch["targets"].dim() == 1
        if classifier:
            correct += int((logits.argmax(-1) == batch["targets"]).sum())
        total_loss += float(loss) * (n if classifier else 1)
        count += n
        batches += 1
    model.train(was_training)
    if batches == 0:
        raise ConfigError("the loader gave no batches to evaluate")
    if classifier:
        return {"loss": total_loss / count, "accuracy": correct / count}
    return {"loss": total_loss / batches}


@dataclass
class FinetuneConfig:
    """How to fine-tune: optimizer, schedule, clipping, evaluation. Defaults suit a small model on a CPU."""

    epochs: int = 3  # passes over the training loader (max_steps > 0 overrides)
    max_steps: int = 0
    lr: float = 5e-4
    min_lr: float = 5e-5
    warmup_steps: int = 10
    schedule: str = "cosine"  # minillm.optim.SCHEDULES
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    grad_clip: float = 1.0  # 0 disables clipping
    eval_interval: int = 50  # steps between validation passes (and at the end)
    eval_batches: int = 0  # validation batches per pass (0: all)
    device: str = "auto"
    precision: str = "auto"
    seed: int = 123

    def __post_init__(self) -> None:
        for name in ("epochs", "eval_interval"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.max_steps < 0 or self.eval_batches < 0 or self.warmup_steps < 0:
            raise ConfigError("max_steps, eval_batches and warmup_steps must be >= 0")
        if not (self.lr > 0 and 0 <= self.min_lr <= self.lr):
            raise ConfigError(f"need lr > 0 and 0 <= min_lr <= lr, got lr={self.lr}, min_lr={self.min_lr}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")


@dataclass
class FinetuneResult:
    """What `finetune` returns: the model (eval mode), the metrics records and the wall time."""

    model: nn.Module
    history: list[dict] = field(default_factory=list)  # metrics.jsonl records
    steps: int = 0
    seconds: float = 0.0


def finetune(
    model: nn.Module,
    train_loader: DataLoader,
    val_loader: DataLoader | None,
    config: FinetuneConfig,
    out_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> FinetuneResult:
    """Train the parameters of `model` that require gradients; return the metrics.

    Each step: learning rate from `minillm.optim.lr_at`, forward and backward
    (`minillm.train.forward_backward`), gradient clipping (`clip_grad_norm`), an
    AdamW step over `minillm.optim.param_groups` (frozen parameters are left out).
    Every `eval_interval` steps and at the end: validation loss (and accuracy for
    a classifier). With `out_dir`, writes `metrics.jsonl` and `loss.png` there
    (`minillm.train.plot_metrics`); the model itself is saved by the caller
    (`GPTClassifier.save`, `GPT.save`, `minillm.lora.save_adapter`).
    """
    t0 = time.perf_counter()
    device = resolve_device(config.device)
    precision = resolve_precision(config.precision, device)
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("no parameter requires a gradient; unfreeze some (set_trainable) or inject LoRA adapters")
    torch.manual_seed(config.seed)
    optimizer = make_optimizer(model, config.lr, config.weight_decay, (config.beta1, config.beta2))
    total = config.max_steps or config.epochs * len(train_loader)
    warmup = min(config.warmup_steps, total)
    result = FinetuneResult(model)
    out = Path(out_dir) if out_dir is not None else None

    def evaluate(record: dict) -> None:
        if val_loader is not None:
            stats = evaluate_loader(model, val_loader, config.eval_batches or None, precision)
            record.update({f"val_{k}": v for k, v in stats.items()})

    step, tokens, t_last = 0, 0, time.perf_counter()
    bar = tqdm(total=total, disable=not progress, desc="finetune", unit="step", dynamic_ncols=True)
    model.train()
    while step < total:
        for batch in train_loader:
            lr = lr_at(step, config.schedule, config.lr, total, warmup, config.min_lr)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = _to(batch, device)
            # chapter 05's step (autocast, backward); our batches are keyword dicts, so adapt the call
            loss = float(forward_backward(lambda kwargs, _: model(**kwargs), [(batch, None)], device, precision))
            if not math.isfinite(loss):
                raise FloatingPointError(f"fine-tuning loss is {loss} at step {step + 1} (lr {lr:.3g}); "
                                         "lower the learning rate or keep grad_clip on")  # fmt: skip
            norm = clip_grad_norm(params, config.grad_clip) if config.grad_clip > 0 else None
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            tokens += int(batch["lengths"].sum()) if "lengths" in batch else batch["idx"].numel()
            record = {"step": step, "train_loss": loss, "lr": lr}
            if norm is not None:
                record["grad_norm"] = float(norm)
            if step % config.eval_interval == 0 or step == total:
                record["tokens_per_s"] = tokens / (time.perf_counter() - t_last)
                evaluate(record)
                model.train()
                tokens, t_last = 0, time.perf_counter()
            result.history.append(record)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
            if step >= total:
                break
    bar.close()
    result.steps, result.seconds = step, time.perf_counter() - t0
    model.eval()
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in result.history))
        plot_metrics(result.history, out / "loss.png", title="fine-tuning loss")
    return result
