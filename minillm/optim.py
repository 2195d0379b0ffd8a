"""Optimizers, learning-rate schedules and gradient clipping, written out (chapter 05).

Chapter 05 (`05_pretraining`) opens the black box of `torch.optim.AdamW` and
then uses it. Everything here is small enough to read against the equations:

* `AdamW`: Adam's running averages of the gradient and its square, with bias
  correction, plus *decoupled* weight decay (Loshchilov & Hutter 2019): the
  weights shrink by `lr * weight_decay` directly instead of through the gradient.
  It matches `torch.optim.AdamW` step for step; `make_optimizer` returns
  torch's fused (CUDA, CPU) or foreach (MPS) implementation as the fast default.
* `param_groups`: decay only the weight matrices of linear layers; norms, biases
  and (unless asked) embeddings are not pulled towards zero.
* schedules: plain functions of the step, `cosine_lr` (linear warmup + cosine
  decay to a floor), `wsd_lr` (warmup-stable-decay) and `constant_lr`; `lr_at`
  picks one by name.
* `clip_grad_norm`: rescale all gradients together so that their global L2 norm
  is at most `max_norm`, like `torch.nn.utils.clip_grad_norm_`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from minillm.errors import ConfigError

# ---------------------------------------------------------------------------
# AdamW
# ---------------------------------------------------------------------------


class AdamW(torch.optim.Optimizer):
    """AdamW written out; the same updates as `torch.optim.AdamW` (no amsgrad).

    For each parameter p with gradient g, at step t = 1, 2, ...:

        p  <- p * (1 - lr * weight_decay)            decoupled weight decay
        m  <- beta1 * m + (1 - beta1) * g             first moment (mean)
        v  <- beta2 * v + (1 - beta2) * g^2           second moment (uncentred variance)
        m^ = m / (1 - beta1^t),  v^ = v / (1 - beta2^t)   bias correction (m, v start at 0)
        p  <- p - lr * m^ / (sqrt(v^) + eps)

    State per parameter: `step` (a float tensor), `exp_avg` (m), `exp_avg_sq` (v),
    named like torch's so checkpoints look alike.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
    ) -> None:
        _check_hyper(lr, betas, eps, weight_decay)
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                t = state["step"].item()
                m, v = state["exp_avg"], state["exp_avg_sq"]
                p.mul_(1 - lr * wd)
                m.lerp_(g, 1 - beta1)  # m + (1 - beta1) (g - m) = beta1 m + (1 - beta1) g
                v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                bias1, bias2 = 1 - beta1**t, 1 - beta2**t
                denom = (v.sqrt() / math.sqrt(bias2)).add_(eps)  # sqrt(v^) + eps
                p.addcdiv_(m, denom, value=-lr / bias1)  # p - lr * m^ / (sqrt(v^) + eps)
        return loss


def _check_hyper(lr: float, betas: tuple[float, float], eps: float, weight_decay: float) -> None:
    if not lr >= 0:
        raise ConfigError(f"learning rate must be >= 0, got {lr}")
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        raise ConfigError(f"betas must be two numbers in [0, 1), got {betas}")
    if not eps >= 0:
        raise ConfigError(f"eps must be >= 0, got {eps}")
    if not weight_decay >= 0:
        raise ConfigError(f"weight_decay must be >= 0, got {weight_decay}")


def param_groups(model: nn.Module, weight_decay: float, decay_embeddings: bool = False) -> list[dict]:
    """Two optimizer groups: weight matrices decay, everything else does not.

    Decayed: parameters with >= 2 dimensions (the weights of linear layers),
    except embedding tables (`nn.Embedding` weights, including an output head
    tied to one) unless `decay_embeddings`. Not decayed: biases and norm gains
    (1-D). Tied weights appear once. Returns
    `[{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]`.
    """
    if weight_decay < 0:
        raise ConfigError(f"weight_decay must be >= 0, got {weight_decay}")
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, rest = [], []
    for p in model.parameters():  # yields each (tied) tensor once
        if not p.requires_grad:
            continue
        is_matrix = p.dim() >= 2 and (decay_embeddings or id(p) not in embeddings)
        (decay if is_matrix else rest).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def make_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float = 0.1,
    betas: tuple[float, float] = (0.9, 0.95),
    eps: float = 1e-8,
    impl: str = "torch",
    decay_embeddings: bool = False,
) -> torch.optim.Optimizer:
    """AdamW over `param_groups(model, ...)`.

    `impl="torch"` (default): `torch.optim.AdamW`, fused (one kernel for all
    parameters) on CUDA and CPU, else the multi-tensor `foreach` version.
    `impl="minillm"`: the written-out `AdamW` above (same numbers, slower).
    """
    groups = param_groups(model, weight_decay, decay_embeddings)
    if impl == "minillm":
        return AdamW(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    if impl != "torch":
        raise ConfigError(f"optimizer impl must be 'torch' or 'minillm', got {impl!r}")
    _check_hyper(lr, betas, eps, weight_decay)
    devices = {p.device.type for g in groups for p in g["params"]}
    fast = {"fused": True} if devices <= {"cuda", "cpu"} else {"foreach": True}
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, **fast)


# ---------------------------------------------------------------------------
# Learning-rate schedules: functions of the step (0-based)
# ---------------------------------------------------------------------------


def _warmup(step: int, max_lr: float, warmup_steps: int) -> float:
    """Linear warmup: max_lr * (step + 1) / warmup_steps for step < warmup_steps."""
    return max_lr * (step + 1) / warmup_steps


def _check_schedule(step: int, warmup_steps: int, total_steps: int | None = None) -> None:
    if step < 0:
        raise ConfigError(f"step must be >= 0, got {step}")
    if warmup_steps < 0:
        raise ConfigError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if total_steps is not None and total_steps < warmup_steps:
        raise ConfigError(f"total_steps ({total_steps}) must be >= warmup_steps ({warmup_steps})")


def constant_lr(step: int, max_lr: float, warmup_steps: int = 0) -> float:
    """`max_lr` after an optional linear warmup."""
    _check_schedule(step, warmup_steps)
    return _warmup(step, max_lr, warmup_steps) if step < warmup_steps else max_lr


def cosine_lr(step: int, max_lr: float, total_steps: int, warmup_steps: int = 0, min_lr: float = 0.0) -> float:
    """Linear warmup, then a half cosine from `max_lr` down to `min_lr` at `total_steps`.

    For warmup_steps <= step < total_steps, with progress p = (step - warmup) / (total - warmup):
    lr = min_lr + (max_lr - min_lr) * (1 + cos(pi p)) / 2. From `total_steps` on: `min_lr`.
    """
    _check_schedule(step, warmup_steps, total_steps)
    if step < warmup_steps:
        return _warmup(step, max_lr, warmup_steps)
    if step >= total_steps:
        return min_lr
    progress = (step - warmup_steps) / (total_steps - warmup_steps)
    return min_lr + (max_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def wsd_lr(
    step: int,
    max_lr: float,
    total_steps: int,
    warmup_steps: int = 0,
    min_lr: float = 0.0,
    decay_fraction: float = 0.2,
) -> float:
    """Warmup-stable-decay: warmup, hold `max_lr`, then decay linearly to `min_lr`.

    The decay takes the last `decay_fraction` of `total_steps`
    (D = round(decay_fraction * total_steps) steps starting at total - D):
    lr = max_lr + (min_lr - max_lr) * (step - (total - D)) / D. Unlike cosine, a run can
    be extended by continuing the stable phase and decaying later.
    """
    _check_schedule(step, warmup_steps, total_steps)
    if not 0.0 <= decay_fraction <= 1.0:
        raise ConfigError(f"decay_fraction must be in [0, 1], got {decay_fraction}")
    decay_steps = round(decay_fraction * total_steps)
    decay_start = max(total_steps - decay_steps, warmup_steps)
    if step < warmup_steps:
        return _warmup(step, max_lr, warmup_steps)
    if step >= total_steps:
        return min_lr
    if step < decay_start:
        return max_lr
    return max_lr + (min_lr - max_lr) * (step - decay_start) / (total_steps - decay_start)


SCHEDULES = ("cosine", "wsd", "constant")


def lr_at(
    step: int,
    schedule: str,
    max_lr: float,
    total_steps: int,
    warmup_steps: int = 0,
    min_lr: float = 0.0,
    decay_fraction: float = 0.2,
) -> float:
    """The learning rate at `step` under the schedule named `schedule` (one of `SCHEDULES`)."""
    if schedule == "cosine":
        return cosine_lr(step, max_lr, total_steps, warmup_steps, min_lr)
    if schedule == "wsd":
        return wsd_lr(step, max_lr, total_steps, warmup_steps, min_lr, decay_fraction)
    if schedule == "constant":
        return constant_lr(step, max_lr, warmup_steps)
    raise ConfigError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")


# ---------------------------------------------------------------------------
# Gradient clipping
# ---------------------------------------------------------------------------


@torch.no_grad()
def clip_grad_norm(parameters: Iterable[torch.Tensor] | torch.Tensor, max_norm: float) -> torch.Tensor:
    """Scale every gradient by min(1, max_norm / (norm + 1e-6)); return the norm before clipping.

    norm = sqrt(sum over parameters of sum(g^2)), the L2 norm of all gradients
    seen as one long vector. Parameters without a gradient are skipped (a model
    whose parameters have no gradients at all gives norm 0). The scale factor is
    applied as a tensor (no host sync), like `torch.nn.utils.clip_grad_norm_`.
    """
    if not max_norm > 0:
        raise ConfigError(f"max_norm must be > 0, got {max_norm}")
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    device = grads[0].device
    norms = torch.stack([torch.linalg.vector_norm(g, 2.0, dtype=torch.float32).to(device) for g in grads])
    total = torch.linalg.vector_norm(norms, 2.0)  # sqrt(sum of squared per-tensor norms)
    scale = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for g in grads:
        g.mul_(scale.to(g.device, g.dtype))
    return total
