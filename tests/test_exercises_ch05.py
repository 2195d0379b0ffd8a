"""Chapter 05's exercise checks: a right answer passes, typical mistakes fail, the stub is "not attempted"."""

from __future__ import annotations

import math

import pytest
import torch

from minillm.exercises import ExerciseFailed, check


def stub(*args, **kwargs):
    raise NotImplementedError


@pytest.mark.parametrize("id", ["5.1", "5.2", "5.3", "5.4"])
def test_the_stub_is_not_attempted(id, capsys):
    assert check(id, stub) is False
    assert "not attempted yet" in capsys.readouterr().out


# 5.1 the next-token loss -------------------------------------------------------------------------

def loss_right(logits, tokens):
    logp = logits[:, :-1].log_softmax(-1)  # (B, T-1, V)
    return -logp.gather(-1, tokens[:, 1:, None]).mean()


def loss_no_shift(logits, tokens):
    return -logits.log_softmax(-1).gather(-1, tokens[..., None]).mean()


def loss_wrong_way(logits, tokens):
    return -logits[:, 1:].log_softmax(-1).gather(-1, tokens[:, :-1, None]).mean()


def loss_naive_softmax(logits, tokens):
    p = logits[:, :-1].exp() / logits[:, :-1].exp().sum(-1, keepdim=True)
    return -p.gather(-1, tokens[:, 1:, None]).log().mean()


def loss_bits(logits, tokens):
    return loss_right(logits, tokens) / math.log(2)


def loss_sum(logits, tokens):
    return -logits[:, :-1].log_softmax(-1).gather(-1, tokens[:, 1:, None]).sum()


def test_5_1_right_answer_passes():
    assert check("5.1", loss_right) is True


@pytest.mark.parametrize("wrong", [loss_no_shift, loss_wrong_way, loss_naive_softmax, loss_bits, loss_sum])
def test_5_1_mistakes_fail(wrong):
    with pytest.raises(ExerciseFailed):
        check("5.1", wrong)


# 5.2 warmup + cosine -----------------------------------------------------------------------------

def cosine_right(step, max_lr, total_steps, warmup_steps, min_lr):
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= total_steps:
        return min_lr
    p = (step - warmup_steps) / (total_steps - warmup_steps)
    return min_lr + 0.5 * (max_lr - min_lr) * (1 + math.cos(math.pi * p))


def cosine_warmup_from_zero(step, max_lr, total_steps, warmup_steps, min_lr):
    if step < warmup_steps:
        return max_lr * step / warmup_steps
    return cosine_right(step, max_lr, total_steps, warmup_steps, min_lr)


def cosine_progress_from_zero(step, max_lr, total_steps, warmup_steps, min_lr):
    if step < warmup_steps or step >= total_steps:
        return cosine_right(step, max_lr, total_steps, warmup_steps, min_lr)
    return min_lr + 0.5 * (max_lr - min_lr) * (1 + math.cos(math.pi * step / total_steps))


def cosine_no_floor(step, max_lr, total_steps, warmup_steps, min_lr):
    return cosine_right(step, max_lr, total_steps, warmup_steps, 0.0)


def cosine_no_clamp(step, max_lr, total_steps, warmup_steps, min_lr):
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    p = (step - warmup_steps) / (total_steps - warmup_steps)
    return min_lr + 0.5 * (max_lr - min_lr) * (1 + math.cos(math.pi * p))


def test_5_2_right_answer_passes():
    assert check("5.2", cosine_right) is True


@pytest.mark.parametrize("wrong", [cosine_warmup_from_zero, cosine_progress_from_zero, cosine_no_floor,
                                   cosine_no_clamp])
def test_5_2_mistakes_fail(wrong):
    with pytest.raises(ExerciseFailed):
        check("5.2", wrong)


# 5.3 Adam with L2 --------------------------------------------------------------------------------

def adam_l2_right(w, g, m, v, t, lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01):
    g = g + weight_decay * w
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    m_hat, v_hat = m / (1 - beta1**t), v / (1 - beta2**t)
    return w - lr * m_hat / (v_hat.sqrt() + eps), m, v


def adamw_decoupled(w, g, m, v, t, lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01):
    w = w * (1 - lr * weight_decay)
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g**2
    m_hat, v_hat = m / (1 - beta1**t), v / (1 - beta2**t)
    return w - lr * m_hat / (v_hat.sqrt() + eps), m, v


def adam_l2_no_bias_correction(w, g, m, v, t, lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01):
    g = g + weight_decay * w
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g**2
    return w - lr * m / (v.sqrt() + eps), m, v


def adam_l2_eps_inside(w, g, m, v, t, lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01):
    g = g + weight_decay * w
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g**2
    m_hat, v_hat = m / (1 - beta1**t), v / (1 - beta2**t)
    return w - lr * m_hat / (v_hat + eps).sqrt(), m, v


def adam_l2_decay_in_step_only(w, g, m, v, t, lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01):
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g**2
    m_hat, v_hat = m / (1 - beta1**t), v / (1 - beta2**t)
    return w - lr * (m_hat / (v_hat.sqrt() + eps) + weight_decay * w), m, v


def test_5_3_right_answer_passes():
    assert check("5.3", adam_l2_right) is True


@pytest.mark.parametrize("wrong", [adamw_decoupled, adam_l2_no_bias_correction, adam_l2_eps_inside,
                                   adam_l2_decay_in_step_only])
def test_5_3_mistakes_fail(wrong):
    with pytest.raises(ExerciseFailed):
        check("5.3", wrong)


# 5.4 clipping by the global norm -----------------------------------------------------------------

def clip_right(grads, max_norm):
    norm = torch.sqrt(sum((g**2).sum() for g in grads))
    scale = min(1.0, max_norm / float(norm))
    return [g * scale for g in grads], norm


def clip_per_tensor(grads, max_norm):
    out = [g * min(1.0, max_norm / float(g.norm())) for g in grads]
    return out, torch.sqrt(sum((g**2).sum() for g in grads))


def clip_scales_up(grads, max_norm):
    norm = torch.sqrt(sum((g**2).sum() for g in grads))
    return [g * max_norm / norm for g in grads], norm


def clip_sum_of_norms(grads, max_norm):
    norm = sum(g.norm() for g in grads)
    return [g * min(1.0, max_norm / float(norm)) for g in grads], norm


def test_5_4_right_answer_passes():
    assert check("5.4", clip_right) is True


@pytest.mark.parametrize("wrong", [clip_per_tensor, clip_scales_up, clip_sum_of_norms])
def test_5_4_mistakes_fail(wrong):
    with pytest.raises(ExerciseFailed):
        check("5.4", wrong)
