"""minillm.optim against torch: AdamW, weight-decay groups, schedules, gradient clipping."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from minillm.model import GPT, GPTConfig
from minillm.optim import (
    AdamW,
    clip_grad_norm,
    constant_lr,
    cosine_lr,
    lr_at,
    make_optimizer,
    param_groups,
    wsd_lr,
)


pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny_net() -> nn.Module:
    return nn.Sequential(nn.Linear(5, 7), nn.LayerNorm(7), nn.GELU(), nn.Linear(7, 3))


def test_adamw_matches_torch_over_1000_steps():
    torch.manual_seed(0)
    ours, ref = _tiny_net(), _tiny_net()
    ref.load_state_dict(ours.state_dict())
    kw = dict(lr=3e-3, betas=(0.9, 0.95), eps=1e-8)
    def groups(m: nn.Module) -> list[dict]:  # two groups with different decay, like training
        return [
            {"params": [m[0].weight, m[3].weight], "weight_decay": 0.1},
            {"params": [m[0].bias, m[1].weight, m[1].bias, m[3].bias], "weight_decay": 0.0},
        ]

    opt_ours = AdamW(groups(ours), **kw)
    opt_ref = torch.optim.AdamW(groups(ref), foreach=False, **kw)
    gen = torch.Generator().manual_seed(1)
    for step in range(1000):
        x = torch.randn(16, 5, generator=gen)
        y = torch.randn(16, 3, generator=gen)
        for model, opt in ((ours, opt_ours), (ref, opt_ref)):
            opt.zero_grad()
            ((model(x) - y) ** 2).mean().backward()
            if step % 7 == 3:  # a parameter without a gradient is left alone by both
                model[1].bias.grad = None
            opt.step()
    for p, q in zip(ours.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    state_ours, state_ref = opt_ours.state[ours[0].weight], opt_ref.state[ref[0].weight]
    assert float(state_ours["step"]) == float(state_ref["step"]) == 1000
    torch.testing.assert_close(state_ours["exp_avg_sq"], state_ref["exp_avg_sq"], rtol=1e-5, atol=1e-10)


def test_adamw_first_step_by_hand():
    # After one step m^ = g and v^ = g^2, so the update is lr * g / (|g| + eps) ~ lr * sign(g).
    p = nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))
    p.grad = torch.tensor([0.5, -4.0, 0.0])
    AdamW([p], lr=0.1, weight_decay=0.5, eps=1e-8).step()
    decayed = torch.tensor([1.0, -2.0, 3.0]) * (1 - 0.1 * 0.5)
    expected = decayed - 0.1 * torch.tensor([0.5 / (0.5 + 1e-8), -4.0 / (4.0 + 1e-8), 0.0])
    torch.testing.assert_close(p.detach(), expected)


def test_adamw_rejects_bad_hyperparameters():
    p = [nn.Parameter(torch.zeros(2))]
    with pytest.raises(ValueError, match="betas"):
        AdamW(p, betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="learning rate"):
        AdamW(p, lr=-1.0)


def test_param_groups_decay_only_matrices():
    model = GPT(GPTConfig(vocab_size=50, context_length=8, d_model=16, n_layer=2, n_head=2))
    decay, rest = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and rest["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    kept = {names[id(p)] for p in rest["params"]}
    assert "blocks.0.attn.qkv.weight" in decayed and "blocks.1.mlp.fc.weight" in decayed
    assert "tok_emb.weight" in kept and "pos_emb.weight" in kept  # embeddings (tied head too)
    assert "blocks.0.norm1.weight" in kept and "blocks.0.attn.qkv.bias" in kept
    assert all(p.dim() >= 2 for p in decay["params"])
    assert len(decay["params"]) + len(rest["params"]) == len(list(model.parameters()))
    decay_all, _ = param_groups(model, 0.1, decay_embeddings=True)
    assert {names[id(p)] for p in decay_all["params"]} == decayed | {"tok_emb.weight", "pos_emb.weight"}


def test_make_optimizer_default_is_torch_and_minillm_agrees():
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=40, context_length=8, d_model=16, n_layer=1, n_head=2)
    models = [GPT(cfg) for _ in range(3)]
    for m in models[1:]:
        m.load_state_dict(models[0].state_dict())
    fused = make_optimizer(models[0], lr=1e-2, weight_decay=0.1)
    assert type(fused) is torch.optim.AdamW and fused.defaults["fused"] is True  # CPU: the fused kernel
    foreach = torch.optim.AdamW(param_groups(models[1], 0.1), lr=1e-2, betas=(0.9, 0.95), foreach=True)
    ours = make_optimizer(models[2], lr=1e-2, weight_decay=0.1, impl="minillm")
    assert isinstance(ours, AdamW)
    x = torch.randint(40, (2, 8))
    for _ in range(5):
        for model, opt in zip(models, (fused, foreach, ours)):
            opt.zero_grad()
            model(x, x)[1].backward()
            opt.step()
    for p, q, r in zip(*(m.parameters() for m in models)):
        torch.testing.assert_close(r, q, rtol=1e-6, atol=1e-7)  # the same arithmetic as torch's foreach
        torch.testing.assert_close(r, p, rtol=0, atol=1e-4)  # the fused kernel rounds differently (< 1% of a step)
    with pytest.raises(ValueError, match="impl"):
        make_optimizer(models[0], lr=1e-3, impl="sgd")


def _torch_lrs(scheduler_factory, steps: int, base_lr: float) -> list[float]:
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=base_lr)
    sched = scheduler_factory(opt)
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_cosine_schedule_matches_torch_schedulers():
    max_lr, min_lr, warmup, total = 1e-3, 1e-4, 10, 100
    warm = _torch_lrs(lambda o: torch.optim.lr_scheduler.LinearLR(o, 1 / warmup, 1.0, total_iters=warmup - 1),
                      warmup, max_lr)  # fmt: skip
    decay = _torch_lrs(lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=total - warmup, eta_min=min_lr),
                       total - warmup, max_lr)  # fmt: skip
    ours = [cosine_lr(s, max_lr, total, warmup, min_lr) for s in range(total)]
    assert ours == pytest.approx(warm + decay, rel=1e-9, abs=1e-15)
    assert cosine_lr(total, max_lr, total, warmup, min_lr) == min_lr
    assert cosine_lr(10 * total, max_lr, total, warmup, min_lr) == min_lr
    assert cosine_lr(0, 6e-4, 1000, 0, 0.0) == 6e-4  # no warmup: starts at the peak


def test_wsd_and_constant_by_hand():
    # total 10, warmup 2, decay the last 30% (3 steps: 7, 8, 9) from 1.0 to 0.1.
    lrs = [wsd_lr(s, 1.0, 10, warmup_steps=2, min_lr=0.1, decay_fraction=0.3) for s in range(11)]
    expected = [0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0 - 0.9 / 3, 1.0 - 1.8 / 3, 0.1]
    assert lrs == pytest.approx(expected)
    assert [constant_lr(s, 2.0, warmup_steps=4) for s in range(6)] == pytest.approx([0.5, 1.0, 1.5, 2.0, 2.0, 2.0])
    assert lr_at(3, "constant", 2.0, 100) == 2.0
    assert lr_at(50, "cosine", 1.0, 100, 0, 0.0) == pytest.approx(0.5)
    assert lr_at(5, "wsd", 1.0, 10, 0, 0.0, 0.5) == pytest.approx(1.0)


def test_schedules_reject_bad_input():
    with pytest.raises(ValueError, match="unknown schedule.*cosine"):
        lr_at(0, "linear", 1.0, 10)
    with pytest.raises(ValueError, match="total_steps"):
        cosine_lr(0, 1.0, total_steps=5, warmup_steps=10)
    with pytest.raises(ValueError, match="step must be"):
        constant_lr(-1, 1.0)


@pytest.mark.parametrize("max_norm", [0.5, 100.0])
def test_clip_grad_norm_matches_torch(max_norm):
    torch.manual_seed(0)
    ours, ref = _tiny_net(), _tiny_net()
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(8, 5)
    for model in (ours, ref):
        model(x).pow(2).sum().backward()
        model[1].bias.grad = None  # a parameter without a gradient
    norm_ours = clip_grad_norm(ours.parameters(), max_norm)
    norm_ref = torch.nn.utils.clip_grad_norm_(ref.parameters(), max_norm)
    torch.testing.assert_close(norm_ours, norm_ref)
    for p, q in zip(ours.parameters(), ref.parameters()):
        assert (p.grad is None) == (q.grad is None)
        if p.grad is not None:
            torch.testing.assert_close(p.grad, q.grad)
    total = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in ours.parameters() if p.grad is not None))
    assert total == pytest.approx(min(float(norm_ref), max_norm), rel=1e-5)


def test_clip_grad_norm_without_gradients_and_bad_max_norm():
    p = nn.Parameter(torch.ones(3))
    assert float(clip_grad_norm([p], 1.0)) == 0.0
    with pytest.raises(ValueError, match="max_norm"):
        clip_grad_norm([p], 0.0)
