"""Knowledge distillation: a small student learns from a large teacher's predictions (appendix B).

Appendix B (`B_inference_compression`) trains a smaller model (or a pruned one,
`minillm.prune`) to imitate a larger one. The teacher's next-token
distribution says more than the one observed token: which other tokens were
plausible, and how plausible. Hinton, Vinyals & Dean (2015), "Distilling the
Knowledge in a Neural Network", soften both distributions with a temperature T
and train the student on a mix of two losses:

    loss = alpha * T^2 * KL(softmax(z_teacher / T) || softmax(z_student / T))
         + (1 - alpha) * cross-entropy(z_student, observed next token)

The T^2 keeps the soft term's gradients on the same scale as the hard term's
when T changes (the gradient of the softened KL shrinks like 1 / T^2). Both
terms are means over the positions whose target is not -100.

* `distillation_loss`: the loss above, for logits (B, T, V) and targets (B, T);
* `DistillConfig` and `distill`: a short training loop (AdamW from
  `minillm.optim.make_optimizer`, warmup + cosine learning rate, gradient
  clipping) on random windows of a 1-D token array (`minillm.tokens.get_batch`),
  with the teacher frozen in eval mode. With `alpha=0` the teacher is never
  run and the loop is plain next-token training: "the same student without
  the teacher" is the same call with `alpha=0`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from minillm.errors import ConfigError, DataError
from minillm.model import GPT
from minillm.monitor import progress_bar
from minillm.optim import clip_grad_norm, cosine_lr, make_optimizer
from minillm.tokens import get_batch


def _check_mix(temperature: float, alpha: float) -> None:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 < temperature < math.inf:
        raise ConfigError(f"temperature must be a finite number > 0, got {temperature!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha (the weight of the teacher's term) must be in [0, 1], got {alpha!r}")


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    targets: torch.Tensor,
    temperature: float = 2.0,
    alpha: float = 0.5,
) -> torch.Tensor:
    """alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * cross-entropy(student, targets); a scalar.

    student_logits, teacher_logits: (B, T, V); targets: (B, T) token ids, -100 =
    ignore that position in both terms. Computed in float32. A term whose
    weight is 0 is not computed: alpha=0 is exactly `F.cross_entropy` (and
    `teacher_logits` may be None), alpha=1 never reads the targets' values.
    """
    _check_mix(temperature, alpha)
    if student_logits.dim() != 3 or targets.shape != student_logits.shape[:2]:
        raise ConfigError(f"need student logits (B, T, V) and targets (B, T), got {tuple(student_logits.shape)} "
                          f"and {tuple(targets.shape)}")  # fmt: skip
    if alpha > 0 and (teacher_logits is None or teacher_logits.shape != student_logits.shape):
        got = None if teacher_logits is None else tuple(teacher_logits.shape)
        raise ConfigError(f"teacher logits must have the student's shape {tuple(student_logits.shape)} "
                          f"(same vocabulary), got {got}")  # fmt: skip
    v = student_logits.size(-1)
    flat_targets = targets.reshape(-1)  # (N,)
    keep = flat_targets != -100  # (N,)
    if not bool(keep.any()):
        raise DataError("every target is -100 (ignored): the loss of an empty set of positions is undefined")
    loss = torch.zeros((), device=student_logits.device)
    if alpha < 1:  # hard term: the model's own loss, F.cross_entropy over float32 logits
        ce = F.cross_entropy(student_logits.float().reshape(-1, v), flat_targets, ignore_index=-100)
        if alpha == 0:
            return ce
        loss = (1 - alpha) * ce
    log_q = F.log_softmax(student_logits.float().reshape(-1, v)[keep] / temperature, dim=-1)  # student (n, V)
    log_p = F.log_softmax(teacher_logits.float().reshape(-1, v)[keep] / temperature, dim=-1)  # teacher (n, V)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1).mean()  # mean over kept positions of sum_v p log(p / q)
    return loss + alpha * temperature**2 * kl


@dataclass
class DistillConfig:
    """Settings of `distill`; validated on creation."""

    steps: int = 200
    batch_size: int = 16
    lr: float = 1e-3
    min_lr: float = 1e-4  # the cosine schedule's floor
    warmup: int = 20  # linear warmup steps
    temperature: float = 2.0
    alpha: float = 0.5  # weight of the teacher's (soft) term; 0 = plain training
    weight_decay: float = 0.1
    grad_clip: float = 1.0  # 0 = no clipping
    context_length: int | None = None  # window length; None: the student's context length
    eval_every: int = 0  # steps between validation losses (0: only at the end); needs val_tokens
    eval_batches: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "eval_batches"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        for name in ("warmup", "eval_every", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name} must be an integer >= 0, got {value!r}")
        if self.warmup > self.steps:
            raise ConfigError(f"warmup ({self.warmup}) must not exceed steps ({self.steps})")
        if not (0 < self.lr < math.inf and 0 <= self.min_lr <= self.lr):
            raise ConfigError(f"need 0 < lr (finite) and 0 <= min_lr <= lr, got lr={self.lr!r}, min_lr={self.min_lr!r}")
        if not (0 <= self.weight_decay < math.inf and 0 <= self.grad_clip < math.inf):
            raise ConfigError(f"weight_decay and grad_clip must be finite and >= 0, got {self.weight_decay!r}, "
                              f"{self.grad_clip!r}")  # fmt: skip
        if self.context_length is not None and (not isinstance(self.context_length, int) or self.context_length < 1):
            raise ConfigError(f"context_length must be a positive integer or None, got {self.context_length!r}")
        _check_mix(self.temperature, self.alpha)


@dataclass
class DistillResult:
    """What `distill` recorded: the training loss and learning rate of every step, validation losses."""

    losses: list[float] = field(default_factory=list)  # distillation loss per step (cross-entropy when alpha=0)
    lrs: list[float] = field(default_factory=list)
    val_losses: list[tuple[int, float]] = field(default_factory=list)  # (steps done, mean val cross-entropy)


@torch.no_grad()
def _val_loss(model: GPT, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    was_training = model.training
    model.eval()
    loss = sum(float(model(x, y)[1]) for x, y in batches) / len(batches)
    model.train(was_training)
    return loss


def distill(
    student: GPT,
    teacher: GPT | None,
    train_tokens: Any,
    config: DistillConfig,
    val_tokens: Any = None,
    progress: bool = False,
    after_step: Callable[[int], None] | None = None,
) -> DistillResult:
    """Train `student` in place on `distillation_loss` against a frozen `teacher`; returns the history.

    Each step: lr from `cosine_lr`, a batch of `batch_size` random windows (B,
    T) of `train_tokens` (a 1-D token array), the student's logits (B, T, V)
    and, when alpha > 0, the teacher's (eval mode, no gradients), the loss,
    backward, gradient clipping, AdamW step, then `after_step(step)` if given
    (e.g. `lambda s: minillm.prune.apply_masks(student, masks)`). Batches and
    dropout follow `config.seed`: the same call gives the same losses. With
    alpha=0 `teacher` may be None.
    """
    c = config
    if c.alpha > 0:
        if teacher is None:
            raise ConfigError("alpha > 0 needs a teacher; pass one, or set alpha=0 for plain training")
        if teacher.config.vocab_size != student.config.vocab_size:
            raise ConfigError(f"teacher and student must share a vocabulary: teacher has "
                              f"{teacher.config.vocab_size} tokens, student {student.config.vocab_size}")  # fmt: skip
    t = student.config.context_length if c.context_length is None else c.context_length
    limits = [student.config.context_length] + ([teacher.config.context_length] if c.alpha > 0 else [])
    if t > min(limits):
        raise ConfigError(f"window of {t} tokens is longer than a model's context length ({min(limits)})")
    device = next(student.parameters()).device
    torch.manual_seed(c.seed)  # dropout
    data_rng = torch.Generator().manual_seed(c.seed)
    val_batches = []
    if val_tokens is not None:
        val_rng = torch.Generator().manual_seed(c.seed + 1)  # fixed batches: comparable from step to step
        val_batches = [get_batch(val_tokens, c.batch_size, t, device, val_rng) for _ in range(c.eval_batches)]
    optimizer = make_optimizer(student, lr=c.lr, weight_decay=c.weight_decay)
    teacher_was_training = teacher.training if teacher is not None else False
    if teacher is not None:
        teacher.eval()
    student.train()
    result = DistillResult()
    try:
        with progress_bar(c.steps, enabled=progress, desc="distill") as bar:
            for step in range(c.steps):
                lr = cosine_lr(step, c.lr, c.steps, c.warmup, c.min_lr)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                x, y = get_batch(train_tokens, c.batch_size, t, device, data_rng)  # (B, T) each
                logits, _ = student(x)  # (B, T, V)
                teacher_logits = None
                if c.alpha > 0:
                    with torch.no_grad():
                        teacher_logits, _ = teacher(x)
                loss = distillation_loss(logits, teacher_logits, y, c.temperature, c.alpha)
                value = loss.item()
                if not math.isfinite(value):
                    raise ConfigError(f"the loss is {value} at step {step}: check that the teacher's outputs are "
                                      "finite, or lower the learning rate")  # fmt: skip
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if c.grad_clip > 0:
                    clip_grad_norm(student.parameters(), c.grad_clip)
                optimizer.step()
                if after_step is not None:
                    after_step(step)
                result.losses.append(value)
                result.lrs.append(lr)
                done = step + 1
                if val_batches and ((c.eval_every and done % c.eval_every == 0) or done == c.steps):
                    result.val_losses.append((done, _val_loss(student, val_batches)))
                bar.update(1)
                bar.set_postfix(loss=f"{value:.3f}")
    finally:
        if teacher is not None:
            teacher.train(teacher_was_training)
    return result
