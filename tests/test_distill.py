"""Tests of minillm.distill: the loss against hand-written references, the loop against a plain
hand-written training loop, learning from a teacher, and clear errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from minillm.distill import DistillConfig, distill, distillation_loss
from minillm.errors import ConfigError, DataError
from minillm.model import GPT, GPTConfig
from minillm.optim import clip_grad_norm, cosine_lr, make_optimizer
from minillm.tokens import get_batch


def tiny(seed: int = 0, **kw) -> GPT:
    torch.manual_seed(seed)
    config = GPTConfig(**{"vocab_size": 64, "context_length": 32, "d_model": 32, "n_layer": 2, "n_head": 4, **kw})
    return GPT(config)


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def random_case(seed: int = 0, b: int = 3, t: int = 5, v: int = 11):
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(b, t, v, generator=g) * 2
    teacher = torch.randn(b, t, v, generator=g) * 2
    targets = torch.randint(0, v, (b, t), generator=g)
    targets[0, 1] = targets[2, 4] = targets[1, 0] = -100
    return student, teacher, targets


def reference_loss(student, teacher, targets, temperature, alpha):
    """Written out: explicit sums of p log(p / q) over the kept positions, and an explicit -log q[target]."""
    kl_terms, ce_terms = [], []
    for b in range(targets.size(0)):
        for t in range(targets.size(1)):
            if targets[b, t] == -100:
                continue
            p = torch.softmax(teacher[b, t].double() / temperature, -1)
            q = torch.softmax(student[b, t].double() / temperature, -1)
            kl_terms.append((p * (p / q).log()).sum())
            ce_terms.append(-torch.log_softmax(student[b, t].double(), -1)[targets[b, t]])
    kl, ce = torch.stack(kl_terms).mean(), torch.stack(ce_terms).mean()
    return alpha * temperature**2 * kl + (1 - alpha) * ce


@pytest.mark.parametrize("temperature,alpha", [(1.0, 0.5), (2.0, 0.5), (4.0, 0.9), (0.5, 0.2), (3.0, 1.0)])
def test_distillation_loss_matches_a_written_out_reference(temperature, alpha):
    student, teacher, targets = random_case()
    got = distillation_loss(student, teacher, targets, temperature, alpha)
    torch.testing.assert_close(got.double(), reference_loss(student, teacher, targets, temperature, alpha),
                               rtol=1e-5, atol=1e-6)  # fmt: skip


def test_kl_term_against_torch_kl_div_and_its_t_squared_scale():
    student, teacher, targets = random_case(1)
    keep = targets != -100
    for temperature in (1.0, 2.0, 5.0):
        kl = F.kl_div(F.log_softmax(student[keep] / temperature, -1), F.log_softmax(teacher[keep] / temperature, -1),
                      reduction="batchmean", log_target=True)  # fmt: skip
        got = distillation_loss(student, teacher, targets, temperature, alpha=1.0)
        torch.testing.assert_close(got, temperature**2 * kl, rtol=1e-5, atol=1e-6)
    # without T^2 the soft term would shrink as T grows; with it, it stays of the hard term's order
    big_t = distillation_loss(student, teacher, targets, 20.0, 1.0)
    assert 0.1 < float(big_t) / float(distillation_loss(student, teacher, targets, 1.0, 1.0)) < 10


def test_alpha_zero_is_cross_entropy_and_alpha_one_ignores_the_targets():
    student, teacher, targets = random_case(2)
    ce = F.cross_entropy(student.reshape(-1, 11), targets.reshape(-1), ignore_index=-100)
    assert torch.equal(distillation_loss(student, teacher, targets, 2.0, 0.0), ce)
    assert torch.equal(distillation_loss(student, None, targets, 2.0, 0.0), ce)  # no teacher needed
    other = torch.where(targets == -100, targets, (targets + 3) % 11)  # same ignored positions, other tokens
    a = distillation_loss(student, teacher, targets, 2.0, 1.0)
    assert torch.equal(a, distillation_loss(student, teacher, other, 2.0, 1.0))
    assert not torch.equal(distillation_loss(student, teacher, targets, 2.0, 0.5),
                           distillation_loss(student, teacher, other, 2.0, 0.5))  # fmt: skip
    # the ignored positions are ignored in both terms: changing their logits changes nothing
    changed_s, changed_t = student.clone(), teacher.clone()
    changed_s[0, 1] += 5
    changed_t[2, 4] -= 5
    assert torch.equal(distillation_loss(changed_s, changed_t, targets, 2.0, 0.5),
                       distillation_loss(student, teacher, targets, 2.0, 0.5))  # fmt: skip
    # identical distributions: the soft term is zero
    assert float(distillation_loss(student, student, targets, 3.0, 1.0)) == pytest.approx(0.0, abs=1e-6)


def test_distillation_loss_bad_inputs():
    student, teacher, targets = random_case()
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="temperature"):
            distillation_loss(student, teacher, targets, temperature=bad)
    for bad in (-0.1, 1.1, float("nan")):
        with pytest.raises(ConfigError, match="alpha"):
            distillation_loss(student, teacher, targets, alpha=bad)
    with pytest.raises(ConfigError, match="teacher logits"):
        distillation_loss(student, teacher[..., :10], targets)
    with pytest.raises(ConfigError, match="teacher logits"):
        distillation_loss(student, None, targets, alpha=0.5)
    with pytest.raises(ConfigError, match="targets"):
        distillation_loss(student, teacher, targets[:, :3])
    for alpha in (0.0, 0.5, 1.0):  # every position ignored: an error whichever terms are computed (not a NaN)
        with pytest.raises(DataError, match="-100"):
            distillation_loss(student, teacher, torch.full_like(targets, -100), alpha=alpha)


# ---------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------

PATTERN = np.tile(np.arange(16, dtype=np.int64) * 3 % 64, 200)  # a learnable toy stream: a cycle of 16 tokens


def plain_loop(model: GPT, tokens, c: DistillConfig) -> list[float]:
    """Next-token training written out with the model's own loss: what alpha=0 must be."""
    torch.manual_seed(c.seed)
    rng = torch.Generator().manual_seed(c.seed)
    opt = make_optimizer(model, lr=c.lr, weight_decay=c.weight_decay)
    model.train()
    losses = []
    for step in range(c.steps):
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, c.lr, c.steps, c.warmup, c.min_lr)
        x, y = get_batch(tokens, c.batch_size, model.config.context_length, generator=rng)
        _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        clip_grad_norm(model.parameters(), c.grad_clip)
        opt.step()
        losses.append(loss.item())
    return losses


def test_alpha_zero_is_exactly_plain_training_and_learns_the_pattern():
    c = DistillConfig(steps=40, batch_size=4, lr=1e-2, warmup=5, alpha=0.0, seed=3)
    reference = plain_loop(tiny(dropout=0.1), PATTERN, c)
    student = tiny(dropout=0.1)
    result = distill(student, None, PATTERN, c)
    assert result.losses == reference  # bit for bit, dropout included
    assert result.losses[-1] < 0.3 * result.losses[0]
    assert result.lrs == [cosine_lr(s, c.lr, c.steps, c.warmup, c.min_lr) for s in range(c.steps)]
    teacher = tiny(seed=9)
    assert distill(tiny(dropout=0.1), teacher, PATTERN, c).losses == reference  # the teacher is never used


def test_the_same_call_gives_the_same_losses_and_validation_is_recorded():
    c = DistillConfig(steps=6, batch_size=2, warmup=1, eval_every=2, eval_batches=2, seed=5)
    runs = [distill(tiny(dropout=0.1), tiny(seed=1), PATTERN, c, val_tokens=PATTERN[::-1].copy()) for _ in range(2)]
    assert runs[0].losses == runs[1].losses and runs[0].val_losses == runs[1].val_losses
    assert [step for step, _ in runs[0].val_losses] == [2, 4, 6]
    other = distill(tiny(dropout=0.1), tiny(seed=1), PATTERN, DistillConfig(**{**c.__dict__, "seed": 6}))
    assert other.losses != runs[0].losses


@torch.no_grad()
def kl_to_teacher(student: GPT, teacher: GPT, x: torch.Tensor) -> float:
    """Mean over positions of KL(teacher || student) at temperature 1, written out."""
    student.eval()
    p = torch.softmax(teacher(x)[0], -1)
    q = torch.softmax(student(x)[0], -1)
    return float((p * (p / q).log()).sum(-1).mean())


def test_the_student_learns_from_the_teacher():
    teacher = tiny(seed=11).eval()
    with torch.no_grad():  # large embeddings: confident predictions, mostly from the current token
        teacher.tok_emb.weight.mul_(15)
    stream = np.random.default_rng(0).integers(0, 64, 4000)  # random tokens: the data alone teach ~uniform
    held_out = torch.from_numpy(np.random.default_rng(1).integers(0, 64, (4, 32)))
    c = DistillConfig(steps=40, batch_size=8, lr=1e-2, warmup=5, temperature=1.0, alpha=1.0)
    student = tiny(seed=2)
    before = kl_to_teacher(student, teacher, held_out)
    result = distill(student, teacher, stream, c)
    after = kl_to_teacher(student, teacher, held_out)
    plain = tiny(seed=2)
    distill(plain, None, stream, DistillConfig(**{**c.__dict__, "alpha": 0.0}))
    without_teacher = kl_to_teacher(plain, teacher, held_out)
    assert after < 0.2 * before, (before, after)
    assert after < 0.2 * without_teacher, (after, without_teacher)
    assert result.losses[-1] < result.losses[0]
    assert teacher.training is False and all(p.grad is None for p in teacher.parameters())


def test_after_step_runs_after_every_optimizer_step():
    seen = []
    student = tiny()
    distill(student, None, PATTERN, DistillConfig(steps=3, batch_size=2, warmup=0, alpha=0.0),
            after_step=lambda step: seen.append((step, student.blocks[0].mlp.fc.weight.detach().clone())))  # fmt: skip
    assert [s for s, _ in seen] == [0, 1, 2] and not torch.equal(seen[0][1], seen[2][1])


def test_bad_configs_and_models():
    for kw, match in [({"temperature": 0.0}, "temperature"), ({"temperature": -2.0}, "temperature"),
                      ({"temperature": float("nan")}, "temperature"), ({"alpha": 1.5}, "alpha"),
                      ({"alpha": -0.1}, "alpha"), ({"alpha": float("nan")}, "alpha"), ({"steps": 0}, "steps"),
                      ({"lr": float("nan")}, "lr"), ({"min_lr": 1.0, "lr": 0.1}, "min_lr"),
                      ({"warmup": 300}, "warmup"), ({"batch_size": 1.5}, "batch_size")]:  # fmt: skip
        with pytest.raises(ConfigError, match=match):
            DistillConfig(**kw)
    c = DistillConfig(steps=2, batch_size=2, warmup=0)
    with pytest.raises(ConfigError, match="vocabulary"):
        distill(tiny(), tiny(vocab_size=65), PATTERN, c)
    with pytest.raises(ConfigError, match="needs a teacher"):
        distill(tiny(), None, PATTERN, c)
    with pytest.raises(ConfigError, match="context length"):
        distill(tiny(), tiny(context_length=16), PATTERN, c)
    broken = tiny()
    with torch.no_grad():
        broken.tok_emb.weight.fill_(math.nan)
    with pytest.raises(ConfigError, match="nan at step 0"):
        distill(tiny(), broken, PATTERN, c)
    with pytest.raises(DataError):
        distill(tiny(), tiny(), PATTERN[:10], c)  # shorter than one window
