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

With an output folder, `finetune` checkpoints like pretraining does, through
the one commit path of `minillm.checkpoint` (`out/checkpoints/step_N/`, `latest`):

    model.safetensors       the whole trained module (classifier head, LoRA adapters included)
    finetune_config.json    the FinetuneConfig
    trainer.pt              step, optimizer state, RNG states and the data position
                            (epoch, batches taken, the RNG states its order came from)

Ctrl-C finishes the step, saves and stops; `resume=True` continues on exactly
the loss curve of an uninterrupted run (on a CPU: equal losses).

The command `python -m minillm finetune --task classify|instruct`
(`minillm.cli.finetune`) puts them together.

Batches are dicts of the model's keyword arguments, so one loop trains both a
`GPTClassifier` (`idx`, `targets` (B,), `lengths` (B,)) and a plain `GPT` on
instruction data (`idx`, `targets` (B, T) with -100 where the loss ignores a
position), and the appendix's encoder and encoder-decoder models
(`input_ids`, `attention_mask`, `labels`, Hugging Face's names).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_model as save_module_weights
from torch import nn
from torch.utils.data import DataLoader


from minillm import checkpoint as ckpt
from minillm.classify import GPTClassifier
from minillm.device import autocast, resolve_device, resolve_precision
from minillm.errors import CheckpointError, CheckpointNotFoundError, ConfigError, DataError, RunFolderError
from minillm.fileio import atomic_path, atomic_write
from minillm.lora import count_parameters
from minillm.model import GPT
from minillm.monitor import MetricsLog, plot_metrics, progress_bar
from minillm.optim import SCHEDULES, clip_grad_norm, lr_at, make_optimizer
from minillm.train import StopRequest, forward_backward

log = logging.getLogger(__name__)

CONFIG_FILE = "finetune_config.json"  # the FinetuneConfig, in each checkpoint
#: FinetuneConfig fields a resumed run may change; any other difference is a mismatched checkpoint.
RESUMABLE = frozenset({"eval_interval", "eval_batches", "keep_checkpoints", "device"})

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


def _batch_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Real (unpadded) input tokens of a batch, for tokens/s."""
    if "lengths" in batch:
        return int(batch["lengths"].sum())
    if "attention_mask" in batch:
        return int(batch["attention_mask"].sum())
    return batch["idx" if "idx" in batch else "input_ids"].numel()


@torch.no_grad()
def evaluate_loader(model: nn.Module, loader: DataLoader, max_batches: int | None = None,
                    precision: str = "fp32") -> dict[str, float]:  # fmt: skip
    """Mean loss over (up to `max_batches` of) a loader; for a classifier also the accuracy.

    Returns {"loss": ...} or, when the model gives one score row per sequence
    (logits (B, K) with `targets` or `labels` (B,), a classifier), {"loss": ..., "accuracy": ...}.
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
        targets = batch["targets"] if "targets" in batch else batch["labels"]
        n = targets.size(0)
        classifier = targets.dim() == 1
        if classifier:
            correct += int((logits.argmax(-1) == targets).sum())
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
    eval_interval: int = 50  # steps between validation passes and checkpoints (and at the end)
    eval_batches: int = 0  # validation batches per pass (0: all)
    keep_checkpoints: int = 1  # newest checkpoints kept in out_dir/checkpoints
    device: str = "auto"
    precision: str = "auto"
    seed: int = 123

    def __post_init__(self) -> None:
        for name in ("epochs", "eval_interval", "keep_checkpoints"):
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
    """What `finetune` returns: the model (eval mode), this call's metrics records and the wall time."""

    model: nn.Module
    history: list[dict] = field(default_factory=list)  # the metrics.jsonl records of this call
    steps: int = 0  # optimizer steps done in the run (a resumed run counts those before the checkpoint)
    seconds: float = 0.0
    interrupted: bool = False  # stopped early by Ctrl-C or `stop_after`, with a checkpoint if out_dir


def finetune(
    model: nn.Module,
    train_loader: DataLoader,
    val_loader: DataLoader | None,
    config: FinetuneConfig,
    out_dir: str | os.PathLike | None = None,
    progress: bool = True,
    *,
    resume: bool = False,
    stop_after: int | None = None,
    break_lock: bool = False,
) -> FinetuneResult:
    """Train the parameters of `model` that require gradients; return the metrics.

    Each step: learning rate from `minillm.optim.lr_at`, forward and backward
    (`minillm.train.forward_backward`), gradient clipping (`clip_grad_norm`), an
    AdamW step over `minillm.optim.param_groups` (frozen parameters are left out).
    Every `eval_interval` steps and at the end: validation loss (and accuracy for
    a classifier).

    With `out_dir` (locked while the run lasts; `break_lock` removes a stale
    lock): `metrics.jsonl`, `loss.png`, and a checkpoint `checkpoints/step_N`
    every `eval_interval` steps, at the end and when the run stops early (see
    the module docstring). Ctrl-C finishes the step, saves and stops (a second
    Ctrl-C aborts); so does `stop_after` (a step number). `resume=True`
    continues from the latest checkpoint on exactly the loss curve of an
    uninterrupted run: build the model (LoRA adapters, head, frozen layers) and
    the loaders as before, and keep the config (only `RESUMABLE` fields may
    change). The fine-tuned model itself is saved by the caller
    (`minillm.checkpoint.save_model_folder`, `minillm.lora.save_adapter`).
    """
    out = None if out_dir is None else Path(out_dir)
    if out is None and resume:
        raise ConfigError("resume=True continues the run in out_dir: pass out_dir")
    if out is not None and out.exists() and not out.is_dir():
        raise RunFolderError(f"{out} exists and is not a directory; choose another out_dir")
    with ckpt.locked(out, break_lock) if out is not None else contextlib.nullcontext():
        return _finetune(model, train_loader, val_loader, config, out, progress, resume, stop_after)


def _finetune(model: nn.Module, train_loader: DataLoader, val_loader: DataLoader | None, config: FinetuneConfig,
              out: Path | None, progress: bool, resume: bool, stop_after: int | None) -> FinetuneResult:  # fmt: skip
    """The loop of `finetune` (the run folder, if any, is locked)."""
    t0 = time.perf_counter()
    device = resolve_device(config.device)
    precision = resolve_precision(config.precision, device)
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("no parameter requires a gradient; unfreeze some (set_trainable) or inject LoRA adapters")
    if len(train_loader) == 0:
        raise DataError("the training loader gives no batches; give it at least one example")
    torch.manual_seed(config.seed)
    optimizer = make_optimizer(model, config.lr, config.weight_decay, (config.beta1, config.beta2))
    total = config.max_steps or config.epochs * len(train_loader)
    warmup = min(config.warmup_steps, total)
    checkpoint = _checkpoint_to_resume(out, resume)
    step, position = 0, _DataPosition(train_loader)
    if checkpoint is not None:
        step = _restore(checkpoint, model, optimizer, config, position, val_loader)
    result = FinetuneResult(model, steps=step)
    metrics = MetricsLog(out, step)

    def evaluate(record: dict) -> None:
        if val_loader is not None:
            stats = evaluate_loader(model, val_loader, config.eval_batches or None, precision)
            record.update({f"val_{k}": v for k, v in stats.items()})

    def save() -> None:
        tmp = ckpt.staging_folder(out / ckpt.CHECKPOINTS, ckpt.checkpoint_name(step))
        try:
            save_module_weights(model, str(tmp / "model.safetensors"))  # the whole module: head, adapters
            atomic_write(tmp / CONFIG_FILE, json.dumps(dataclasses.asdict(config), indent=1) + "\n")
            state = {"format": ckpt.TRAINER_FORMAT, "version": 2, "kind": "finetune", "step": step,
                     "optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state(),
                     "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                     "val_data_rng": _generator_state(val_loader), **position.state()}  # fmt: skip
            with atomic_path(tmp / ckpt.TRAINER_FILE) as path:
                torch.save(state, path)
            ckpt.commit(tmp, keep=config.keep_checkpoints)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    stop = StopRequest()
    tokens, t_last = 0, time.perf_counter()
    bar = progress_bar(total, step, progress, desc="finetune")
    batches = position.batches()
    try:
        with stop.on_sigint():
            if step < total:
                log.info("fine-tuning steps %d to %d%s", step + 1, total, f" (resumed from {checkpoint})"
                         if checkpoint is not None else "")  # fmt: skip
            model.train()
            while step < total:
                lr = lr_at(step, config.schedule, config.lr, total, warmup, config.min_lr)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                batch = _to(next(batches), device)
                # chapter 05's step (autocast, backward); our batches are keyword dicts, so adapt the call
                loss = float(forward_backward(lambda kwargs, _: model(**kwargs), [(batch, None)], device, precision))
                if not math.isfinite(loss):
                    raise FloatingPointError(f"fine-tuning loss is {loss} at step {step + 1} (lr {lr:.3g}); "
                                             "lower the learning rate or keep grad_clip on")  # fmt: skip
                norm = clip_grad_norm(params, config.grad_clip) if config.grad_clip > 0 else None
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                tokens += _batch_tokens(batch)
                record = {"step": step, "train_loss": loss, "lr": lr}
                if norm is not None:
                    record["grad_norm"] = float(norm)
                evaluating = step % config.eval_interval == 0 or step == total
                stopping = step < total and (stop.requested or (stop_after is not None and step >= stop_after))
                if evaluating:
                    record["tokens_per_s"] = tokens / (time.perf_counter() - t_last)
                    evaluate(record)
                    model.train()
                    tokens, t_last = 0, time.perf_counter()
                result.history.append(record)
                metrics.write(record)
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
                if out is not None and (evaluating or stopping):
                    save()
                if stopping:
                    result.interrupted = True
                    break
    finally:
        bar.close()
        metrics.close()
    result.steps, result.seconds = step, time.perf_counter() - t0
    model.eval()
    if out is not None and metrics.records:
        plot_metrics(metrics.records, out / "loss.png", title="fine-tuning loss")
    if result.interrupted and out is not None:
        log.info("stopped at step %d; checkpoint saved in %s; continue with resume=True (--resume)", step, out)
    return result


# ---------------------------------------------------------------------------
# Checkpoints: where the run is, and how to get back there
# ---------------------------------------------------------------------------


def _generator_state(loader: DataLoader | None) -> torch.Tensor | None:
    gen = getattr(loader, "generator", None)
    return gen.get_state() if gen is not None else None


class _DataPosition:
    """Where fine-tuning is in its training loader: the epoch, the batches taken from it, and the RNG
    states the epoch's order was drawn from (torch's global RNG and the loader's generator).

    A resumed run draws the epoch's order again from the saved states and skips
    the batches already trained on, so it sees exactly the batches an
    uninterrupted run would, whatever the loader's sampler is.
    """

    def __init__(self, loader: DataLoader) -> None:
        self.loader, self.epoch, self.taken = loader, 0, 0
        self.start: tuple[torch.Tensor, torch.Tensor | None] | None = None  # None: the epoch has not begun

    def state(self) -> dict:
        """What a checkpoint saves of the position."""
        rng, data_rng = self.start if self.start is not None else (None, None)
        return {"epoch": self.epoch, "batches": self.taken, "batches_per_epoch": len(self.loader),
                "epoch_rng": rng, "epoch_data_rng": data_rng}  # fmt: skip

    def load(self, state: dict) -> None:
        """Go back to a saved position (the next `batches()` replays its epoch's start)."""
        self.epoch, self.taken = int(state["epoch"]), int(state["batches"])
        self.start = None if state["epoch_rng"] is None else (state["epoch_rng"], state["epoch_data_rng"])

    def batches(self) -> Iterator[dict]:
        """The loader's batches, epoch after epoch, from the current position."""
        gen = getattr(self.loader, "generator", None)  # a DataLoader's (None: torch's global RNG), or none
        while True:
            skip, now = 0, None
            if self.start is None:  # a new epoch: remember the states its order comes from
                self.start = (torch.get_rng_state(), gen.get_state() if gen is not None else None)
            else:  # a resumed epoch: draw its order again, skip what was trained on, then continue
                now, skip = torch.get_rng_state(), self.taken
                torch.set_rng_state(self.start[0])
                if gen is not None and self.start[1] is not None:
                    gen.set_state(self.start[1])
            batches = iter(self.loader)
            for _ in range(skip):
                next(batches)
            if now is not None:
                torch.set_rng_state(now)
            self.taken = skip
            for batch in batches:
                self.taken += 1
                yield batch
            self.epoch, self.taken, self.start = self.epoch + 1, 0, None


def _checkpoint_to_resume(out: Path | None, resume: bool) -> Path | None:
    """The checkpoint a run continues from (None: a new run); refuses to mix two runs in one folder."""
    found = ckpt.latest_checkpoint(out) if out is not None else None
    if resume and found is None:
        raise CheckpointNotFoundError(f"no checkpoint in {out / ckpt.CHECKPOINTS} to resume from; start without "
                                      "resume (--resume)")  # fmt: skip
    if not resume and found is not None:
        raise RunFolderError(f"{out} holds the checkpoints of a fine-tuning run (latest: {found.name}); continue "
                             "it with resume=True (--resume), or choose another output folder")  # fmt: skip
    return found


def _restore(checkpoint: Path, model: nn.Module, optimizer: torch.optim.Optimizer, config: FinetuneConfig,
             position: _DataPosition, val_loader: DataLoader | None) -> int:  # fmt: skip
    """Load a fine-tuning checkpoint into the model, optimizer, RNGs and data position; return its step."""
    try:
        saved = json.loads((checkpoint / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{checkpoint / CONFIG_FILE} cannot be read ({err}); is {checkpoint} a "
                              "fine-tuning checkpoint?") from err  # fmt: skip
    now = dataclasses.asdict(config)
    diff = {k: (v, now.get(k)) for k, v in saved.items() if k not in RESUMABLE and now.get(k) != v}
    if diff:
        raise CheckpointError(f"{checkpoint} was fine-tuned with other settings, (saved, requested): {diff}; "
                              f"resume with the saved ones (only {sorted(RESUMABLE)} may change)")  # fmt: skip
    state = ckpt.read_trainer_state(checkpoint)
    if state.get("kind") != "finetune":
        raise CheckpointError(f"{checkpoint} is not a fine-tuning checkpoint")
    if state["batches_per_epoch"] != len(position.loader):
        raise CheckpointError(f"{checkpoint} was saved with {state['batches_per_epoch']} training batches per "
                              f"epoch, the loader now gives {len(position.loader)}: resume with the same data "
                              "and batch size")  # fmt: skip
    try:
        ckpt.load_checkpoint(checkpoint, model, optimizer)
    except CheckpointError:
        raise
    except ValueError as err:  # the optimizer's parameter groups differ
        raise CheckpointError(f"the optimizer state of {checkpoint} does not fit ({err}); train the same "
                              "parameters as the run did (layers, LoRA settings)") from err  # fmt: skip
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] and torch.cuda.is_available() and len(state["cuda_rng"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    gen = getattr(val_loader, "generator", None)
    if gen is not None and state["val_data_rng"] is not None:
        gen.set_state(state["val_data_rng"])
    position.load(state)
    return int(state["step"])
