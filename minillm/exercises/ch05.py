"""Chapter 05's exercises: the next-token loss, the warmup + cosine schedule, Adam with L2, clipping.

Each check compares the reader's function with PyTorch or the package
(`minillm.model.GPT`, `minillm.optim`) on inputs the reader did not choose.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from minillm.exercises import ExerciseFailed, as_tensor, assert_close, exercise, expect
from minillm.model import GPT, GPTConfig
from minillm.optim import clip_grad_norm, cosine_lr


@exercise("5.1", "the next-token loss")
def grade_next_token_loss(next_token_loss) -> str:
    """`next_token_loss(logits, tokens)`: logits (B, T, V) of a model run on tokens (B, T) -> the mean loss of
    predicting tokens[:, t + 1] from logits[:, t], over the T - 1 positions that have a next token."""
    hint_shift = ("Position t predicts token t + 1: use logits[:, :-1] against tokens[:, 1:] (the last "
                  "position has no next token), and take the mean (not the sum) of -ln p(target) in nats.")
    gen = torch.Generator().manual_seed(5)
    for case in range(4):
        b, t, v = (int(torch.randint(lo, hi, (1,), generator=gen)) for lo, hi in ((1, 5), (2, 10), (3, 40)))
        logits = 3 * torch.randn(b, t, v, generator=gen)
        tokens = torch.randint(0, v, (b, t), generator=gen)
        expected = F.cross_entropy(logits[:, :-1].reshape(-1, v), tokens[:, 1:].reshape(-1))
        loss = as_tensor(next_token_loss(logits, tokens), "the loss")
        expect(loss.dim() == 0, f"the loss should be one number (a 0-d tensor), got shape {tuple(loss.shape)}: "
                                "take the mean over all positions.")
        assert_close(loss, expected, f"the loss of random logits {tuple(logits.shape)}", hint=hint_shift)
    # large logits: exp() overflows in float32 unless the log-softmax is computed stably
    logits = 40 * torch.randn(2, 6, 11, generator=gen) + 500.0
    tokens = torch.randint(0, 11, (2, 6), generator=gen)
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, 11), tokens[:, 1:].reshape(-1))
    loss = as_tensor(next_token_loss(logits, tokens), "the loss")
    expect(bool(torch.isfinite(loss)), "with logits around 500 your loss is not finite: exp(500) overflows. "
                                       "Subtract logsumexp (logits.logsumexp(-1, keepdim=True)) instead of "
                                       "dividing by a sum of exponentials.")
    assert_close(loss, expected, "the loss of large logits (around 500)",
                 hint="Compute log p as logits - logsumexp(logits) (numerically safe).")
    # the package's model: its loss on (x, y) = (tokens[:, :-1], tokens[:, 1:]) is the same number,
    # because a causal model's logits at positions 0..T-2 do not depend on the last token
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=23, context_length=16, n_layer=1, n_head=2, d_model=16)).eval()
    tokens = torch.randint(0, 23, (3, 12), generator=gen)
    with torch.no_grad():
        logits, _ = model(tokens)
        _, model_loss = model(tokens[:, :-1], tokens[:, 1:])
        loss = as_tensor(next_token_loss(logits, tokens), "the loss")
    assert_close(loss, model_loss, "the loss of minillm's GPT on 3 windows of 12 tokens", hint=hint_shift,
                 atol=1e-5, rtol=1e-5)
    return ("Matches F.cross_entropy on the shifted logits and targets (random shapes, logits near 500) "
            "and the loss minillm's GPT computes from (tokens[:, :-1], tokens[:, 1:]).")


@exercise("5.2", "warmup + cosine")
def grade_cosine(cosine_schedule) -> str:
    """`cosine_schedule(step, max_lr, total_steps, warmup_steps, min_lr)` equals `minillm.optim.cosine_lr`."""
    settings = [(3e-3, 3000, 100, 3e-4), (1.0, 50, 10, 0.1), (0.5, 40, 0, 0.0), (2e-4, 17, 5, 2e-5)]
    for max_lr, total, warmup, min_lr in settings:
        for step in range(0, total + 5):
            if total > 200 and not (step < warmup + 3 or step % 97 == 0 or step > total - 3):
                continue  # a sample of the long schedule is enough
            got = cosine_schedule(step, max_lr, total, warmup, min_lr)
            want = cosine_lr(step, max_lr, total, warmup, min_lr)
            expect(isinstance(got, (int, float)) or (isinstance(got, torch.Tensor) and got.numel() == 1),
                   f"the learning rate should be a number, got {type(got).__name__}")
            if math.isclose(float(got), want, rel_tol=1e-9, abs_tol=1e-12):
                continue
            where = ("during warmup" if step < warmup else "after the last step" if step >= total
                     else "during the cosine decay")
            hint = {
                "during warmup": "Warmup is linear and 0-based: step s gets max_lr * (s + 1) / warmup_steps, so "
                                 "step warmup_steps - 1 reaches max_lr exactly.",
                "during the cosine decay": "Measure progress from the end of warmup: "
                                           "p = (step - warmup_steps) / (total_steps - warmup_steps), "
                                           "lr = min_lr + (max_lr - min_lr) * (1 + cos(pi p)) / 2, which ends at "
                                           "min_lr, not 0.",
                "after the last step": "From total_steps on the rate stays at min_lr.",
            }[where]
            raise ExerciseFailed(f"with max_lr={max_lr:g}, total_steps={total}, warmup_steps={warmup}, "
                                 f"min_lr={min_lr:g}: step {step} ({where}) gives {float(got):.10g}, "
                                 f"minillm.optim.cosine_lr gives {want:.10g}. {hint}")
    return ("Equals minillm.optim.cosine_lr at every step checked of four schedules (with and without warmup, "
            "with and without a floor, past the last step).")


@exercise("5.3", "Adam with L2 regularization")
def grade_adam_l2(adam_l2_update) -> str:
    """`adam_l2_update(w, g, m, v, t, lr, beta1, beta2, eps, weight_decay) -> (w, m, v)`: one step of
    `torch.optim.Adam(weight_decay=...)`, whose decay is added to the gradient (coupled), unlike AdamW."""
    gen = torch.Generator().manual_seed(53)
    hint = ("Adam's L2 decay is coupled: g <- g + weight_decay * w first, then the usual moments, bias "
            "correction and step (no separate shrinking of w).")
    for case, (t, lr, betas, eps, wd) in enumerate([(1, 0.05, (0.9, 0.999), 1e-8, 0.1),
                                                    (2, 0.1, (0.8, 0.99), 1e-3, 0.5),
                                                    (10, 0.01, (0.9, 0.95), 1e-8, 0.01),
                                                    (300, 0.2, (0.5, 0.9), 1e-2, 1.0)]):
        shape = tuple(int(s) for s in torch.randint(1, 6, (2,), generator=gen))
        w, g = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
        m = 0.1 * torch.randn(shape, generator=gen) if t > 1 else torch.zeros(shape)
        v = 0.1 * torch.rand(shape, generator=gen) if t > 1 else torch.zeros(shape)
        out = adam_l2_update(w.clone(), g.clone(), m.clone(), v.clone(), t, lr, beta1=betas[0], beta2=betas[1],
                             eps=eps, weight_decay=wd)  # first: an untouched stub stops here, at no cost
        p = w.clone().requires_grad_()
        opt = torch.optim.Adam([p], lr=lr, betas=betas, eps=eps, weight_decay=wd, foreach=False)
        p.grad = g.clone()
        opt.state[p] = {"step": torch.tensor(float(t - 1)), "exp_avg": m.clone(), "exp_avg_sq": v.clone()}
        opt.step()
        state = opt.state[p]
        expect(isinstance(out, tuple) and len(out) == 3, "return the new (w, m, v), a tuple of three tensors")
        w_new, m_new, v_new = out
        where = f"step t={t} (lr={lr}, betas={betas}, eps={eps}, weight_decay={wd})"
        assert_close(m_new, state["exp_avg"], f"m after {where}", hint=hint)
        assert_close(v_new, state["exp_avg_sq"], f"v after {where}", hint=hint)
        assert_close(w_new, p.detach(), f"w after {where}",
                     hint="Bias-correct both moments with the step number t (1 for the first step) and "
                          "add eps outside the square root.")
    return "m, v and w equal torch.optim.Adam(weight_decay=...)'s after one step, from four different states."


@exercise("5.4", "clipping by the global norm")
def grade_clip(clip_by_global_norm) -> str:
    """`clip_by_global_norm(grads, max_norm) -> (clipped, norm)`: like `minillm.optim.clip_grad_norm`."""
    gen = torch.Generator().manual_seed(54)
    cases = [([(3, 4), (7,), (2, 2, 2)], 1.0), ([(5,), (4, 3)], 100.0), ([(10, 10)], 0.5),
             ([(2, 3), (3,), (1,), (6, 2)], 2.0)]
    for shapes, max_norm in cases:
        grads = [torch.randn(s, generator=gen) * float(torch.rand((), generator=gen) * 3) for s in shapes]
        params = [torch.zeros(s, requires_grad=True) for s in shapes]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        want_norm = clip_grad_norm(params, max_norm)
        out = clip_by_global_norm([g.clone() for g in grads], max_norm)
        expect(isinstance(out, tuple) and len(out) == 2, "return (clipped gradients, norm before clipping)")
        clipped, norm = out
        expect(len(clipped) == len(grads), f"return one clipped gradient per input: {len(grads)}, "
                                           f"got {len(clipped)}")
        assert_close(torch.as_tensor(norm, dtype=torch.float32), want_norm.float(),
                     f"the norm of {len(grads)} gradients (before clipping)",
                     hint="The global norm is sqrt(sum over tensors of sum(g ** 2)): all gradients seen "
                          "as one long vector.", rtol=1e-5, atol=1e-6)
        for i, (c, p) in enumerate(zip(clipped, params)):
            state = "above" if float(want_norm) > max_norm else "below"
            assert_close(c, p.grad, f"gradient {i} with the global norm {state} max_norm={max_norm:g}",
                         hint="Scale every gradient by the same factor min(1, max_norm / norm): never per "
                              "tensor, and never up when the norm is already small.", rtol=1e-5, atol=1e-6)
    return "Norms and clipped gradients equal minillm.optim.clip_grad_norm's, above and below max_norm."
