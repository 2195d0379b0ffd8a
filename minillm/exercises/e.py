"""Appendix E's exercises: DPO's loss, group advantages, response log-probs, PPO's clip, a reward that holds.

The checks compare the reader's function with the package on inputs the reader
did not choose: `minillm.dpo.dpo_loss` (values and gradients, margins large
enough to overflow a naive formula), `minillm.grpo.group_advantages` (groups of
equal rewards, G = 2), `minillm.align.sequence_logprobs` on a tiny random GPT,
and `minillm.grpo.grpo_loss` one token at a time for the clipped objective. The
reward of E.5 is checked against a reference written here, on answers to rows of
`minillm.synthetic.list_tasks` (right, partly right, padded, cut, not a list).
The random cases come from private generators: the reader's random state is left alone.
"""

from __future__ import annotations

import ast
import random
from collections import Counter
from collections.abc import Callable

import torch
import torch.nn.functional as F

from minillm.align import exact_match_reward, length_reward, sequence_logprobs
from minillm.dpo import dpo_loss
from minillm.exercises import ExerciseFailed, as_number, as_tensor, assert_close, call_answer, exercise, expect
from minillm.grpo import group_advantages, grpo_loss
from minillm.model import GPT, GPTConfig
from minillm.synthetic import list_tasks


def _close(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-5, rtol: float = 1e-5) -> bool:
    """Whether the reader's `a` equals a candidate `b` (same shape, finite where b is), for the hints."""
    return a.shape == b.shape and bool(torch.allclose(a.detach().double(), b.detach().double(), atol=atol, rtol=rtol))


def _hint(got: torch.Tensor, candidates: list[tuple[torch.Tensor, str]]) -> str:
    """The hint of the first typical mistake whose result `got` equals, else ""."""
    return next((hint for value, hint in candidates if _close(got, value)), "")


# -- E.1: DPO's loss from the Bradley-Terry model -------------------------------------------------


def _dpo_cases() -> list[tuple[str, tuple[torch.Tensor, ...], float]]:
    """(what, (policy chosen, policy rejected, ref chosen, ref rejected) log-probs (B,), beta)."""
    gen = torch.Generator().manual_seed(501)

    def pairs(b: int, spread: float) -> tuple[torch.Tensor, ...]:
        rc, rr = -(5 + 40 * torch.rand(b, generator=gen)), -(5 + 40 * torch.rand(b, generator=gen))
        return rc + spread * torch.randn(b, generator=gen), rr + spread * torch.randn(b, generator=gen), rc, rr

    rc, rr = (t - 200 for t in pairs(5, 0.0)[2:])  # long responses, so that the policy's stay below 0 too
    margin = torch.tensor([-150.0, -110.0, 95.0, 130.0, -40.0])  # beta * margin far beyond where sigmoid rounds to 0
    far = (rc + margin / 2, rr - margin / 2, rc, rr)
    cases = [
        ("8 pairs, beta = 0.1, the policy a little away from the reference", pairs(8, 1.0), 0.1),
        ("5 pairs, beta = 1.0", pairs(5, 2.0), 1.0),
        ("the policy equal to the reference (the loss is log 2 = 0.693)", pairs(4, 0.0), 0.5),
        ("large margins: beta * margin = -150, -110, 95, 130, -40", far, 1.0),
        ("one pair, beta = 2.0", pairs(1, 3.0), 2.0),
    ]
    for _ in range(2):  # and two drawn at random
        b, beta = int(torch.randint(2, 12, (), generator=gen)), float(torch.rand((), generator=gen)) + 0.05
        cases.append((f"drawn at random ({b} pairs, beta = {beta:.3f})", pairs(b, 4.0), beta))
    return cases


@exercise("E.1", "DPO's loss from the Bradley-Terry model")
def grade_dpo_loss(answer: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> str:
    """answer(pc, pr, rc, rr, beta) -> (loss, chosen_rewards (B,), rejected_rewards (B,)), as `dpo_loss`.

    The loss's value and its gradient with respect to the policy's log-probs are
    compared; the rewards by value (detached or not).
    """
    formula = ("loss = mean over the pairs of -logsigmoid(beta * ((pc - rc) - (pr - rr))); chosen_rewards = "
               "beta * (pc - rc), rejected_rewards = beta * (pr - rr).")
    cases = _dpo_cases()
    for what, logps, beta in cases:
        pc, pr, rc, rr = (t.clone() for t in logps)
        pc.requires_grad_(True)
        pr.requires_grad_(True)
        got = call_answer(answer, pc, pr, rc, rr, beta, what=f"your dpo_loss ({what})")
        expect(isinstance(got, (tuple, list)) and len(got) == 3,
               f"{what}: dpo_loss returned {type(got).__name__}; return a tuple of three tensors (loss, "
               "chosen_rewards, rejected_rewards).")
        loss, chosen, rejected = (as_tensor(t, f"{what}: {name}") for t, name in
                                  zip(got, ("the loss", "chosen_rewards", "rejected_rewards")))
        expect(all(torch.equal(a.detach(), b) for a, b in zip((pc, pr, rc, rr), logps)),
               f"{what}: your dpo_loss changed its inputs in place; compute new tensors.")
        expect(loss.dim() == 0, f"{what}: a loss of shape {tuple(loss.shape)}; the loss is one number, the mean "
                                "over the pairs (a 0-dimensional tensor).")
        ref_loss, ref_chosen, ref_rejected = dpo_loss(*(t.detach() for t in (pc, pr, rc, rr)), beta=beta)
        if not bool(torch.isfinite(loss)):
            raise ExerciseFailed(
                f"{what}: your loss is {float(loss.detach())}, the reference {float(ref_loss):.4f}. In float32 "
                "exp(-x) overflows to inf once x < -88.7, so sigmoid(x) = 1 / (1 + exp(-x)) is 0 and its log -inf: "
                "use torch.nn.functional.logsigmoid(x), which computes log(sigmoid(x)) without overflow. " + formula)
        m = beta * ((pc - rc) - (pr - rr)).detach()
        hint = _hint(loss, [
            (-F.logsigmoid(m).sum(), "You summed over the pairs: take the mean. "),
            (F.logsigmoid(m).mean(), "The sign: the loss is minus the log-likelihood, -logsigmoid(...). "),
            (-F.logsigmoid(-m).mean(), "Chosen and rejected are swapped: the margin is (chosen) - (rejected). "),
            (-F.logsigmoid(beta * (pc - pr)).mean(), "You left out the reference: each response's implicit "
             "reward is beta * (policy log-prob - reference log-prob). "),
            (-(beta * F.logsigmoid(m / beta)).mean(), "beta multiplies the margin inside the logsigmoid, not "
             "the loss. "),
        ])
        assert_close(loss.detach(), ref_loss, f"{what}: the loss", hint=hint + formula, atol=1e-5, rtol=1e-5,
                     check_dtype=False)
        expect(loss.requires_grad, f"{what}: your loss carries no gradient (.item(), .detach(), torch.no_grad or "
                                   "a new torch.tensor(...) cut it off the policy's log-probs): the loss is what "
                                   "trains the policy, keep it a function of pc and pr.")
        ref_pc, ref_pr = pc.detach().clone().requires_grad_(True), pr.detach().clone().requires_grad_(True)
        dpo_loss(ref_pc, ref_pr, rc, rr, beta=beta)[0].backward()
        grad_pc, grad_pr = torch.autograd.grad(loss, (pc, pr), allow_unused=True)
        for name, g, ref in (("chosen", grad_pc, ref_pc.grad), ("rejected", grad_pr, ref_pr.grad)):
            expect(g is not None, f"{what}: your loss does not depend on the policy's {name} log-probs. {formula}")
            assert_close(g, ref, f"{what}: the gradient of the loss with respect to the policy's {name} log-probs",
                         atol=1e-6, rtol=1e-5)
        for name, got_r, ref_r, rule in (("chosen_rewards", chosen, ref_chosen, "beta * (pc - rc)"),
                                         ("rejected_rewards", rejected, ref_rejected, "beta * (pr - rr)")):
            got_r = got_r.detach()
            hint = _hint(got_r, [
                (ref_rejected if name == "chosen_rewards" else ref_chosen, "Chosen and rejected are swapped. "),
                (ref_r / beta, "Multiply by beta. "),
                ((pc if name == "chosen_rewards" else pr).detach() * beta, "Subtract the reference's log-probs. "),
            ])
            assert_close(got_r, ref_r, f"{what}: {name}", hint=f"{hint}{name} = {rule}.", atol=1e-5, rtol=1e-5,
                         check_dtype=False)
    return (f"equals minillm.dpo.dpo_loss (loss, its gradient, both rewards) in {len(cases)} cases, margins of "
            "+-150 included.")


# -- E.2: group advantages ------------------------------------------------------------------------


def _advantage_cases() -> list[tuple[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(502)
    binary = (torch.rand(4, 8, generator=gen) < 0.4).float()
    binary[1], binary[3] = 0.0, 1.0  # a group that failed, one that always succeeded
    one_hit = torch.zeros(2, 16)
    one_hit[0, 5] = one_hit[1, 0] = 1.0
    cases = [
        ("4 groups of 8 rewards 0 or 1, group 1 all 0 and group 3 all 1", binary),
        ("groups of G = 2", torch.tensor([[0.0, 1.0], [1.0, 1.0], [0.25, 0.75], [3.0, -1.0]])),
        ("partial credit, 3 groups of 6", torch.rand(3, 6, generator=gen).round(decimals=2)),
        ("one success among 16 samples", one_hit),
        ("one group (P = 1) of 5", torch.tensor([[0.2, 0.2, 0.9, 0.2, 0.5]])),
    ]
    for _ in range(2):  # and two drawn at random
        p, g = int(torch.randint(1, 6, (), generator=gen)), int(torch.randint(2, 10, (), generator=gen))
        cases.append((f"drawn at random (P = {p}, G = {g})", torch.randn(p, g, generator=gen) * 3))
    return cases


@exercise("E.2", "group advantages")
def grade_advantages(answer: Callable[[torch.Tensor], torch.Tensor]) -> str:
    """answer(rewards (P, G)) -> advantages (P, G), as `minillm.grpo.group_advantages` (population std, eps 1e-4)."""
    formula = ("Per group (a row): (r - mean) / (std + 1e-4), the mean and std over the row's G rewards "
               "(dim=1, keepdim=True), the population std (divide by G: correction=0).")
    cases = _advantage_cases()
    for what, rewards in cases:
        given = rewards.clone()
        got = as_tensor(call_answer(answer, given, what=f"your advantages ({what})"), f"advantages for {what}")
        expect(torch.equal(given, rewards), f"{what}: your function changed `rewards` in place; return a new tensor.")
        expect(tuple(got.shape) == tuple(rewards.shape),
               f"{what}: advantages of shape {tuple(got.shape)}, expected the rewards' shape {tuple(rewards.shape)} "
               "(one advantage per sample).")
        expected = group_advantages(rewards)
        if not bool(torch.isfinite(got).all()):
            raise ExerciseFailed(f"{what}: your advantages hold NaN or inf. A group whose rewards are all equal has "
                                 "std 0, and 0 / 0 is NaN: add eps = 1e-4 to the std, which gives such a group zeros "
                                 f"(no signal: no sample was better than another). {formula}")
        r = rewards
        centred = r - r.mean(dim=1, keepdim=True)
        std = r.std(dim=1, correction=0, keepdim=True)
        hint = _hint(got, [
            (centred / (r.std(dim=1, keepdim=True) + 1e-4), "torch's .std() divides by G - 1 by default (Bessel's "
             "correction); GRPO uses the population std: .std(dim=1, correction=0, keepdim=True). "),
            (centred, "You only subtracted the mean (Dr. GRPO's form): divide by the group's std + 1e-4 too. "),
            (torch.where(std > 0, centred / std.clamp(min=1e-30), 0.0), "Add eps = 1e-4 to the std, as the "
             "reference does (it also keeps equal groups at zero without a special case). "),
            (centred / (r.var(dim=1, correction=0, keepdim=True) + 1e-4).sqrt(), "Add eps to the std, not to the "
             "variance under the square root. "),
            ((r - r.mean()) / (r.std(correction=0) + 1e-4), "You used the mean and std of all P * G rewards: "
             "each group (row) is compared with itself only, dim=1. "),
            ((r - r.mean(dim=0, keepdim=True)) / (r.std(dim=0, correction=0, keepdim=True) + 1e-4),
             "A group is a row (the G samples of one prompt): reduce over dim=1, not dim=0. "),
        ])
        assert_close(got, expected, f"{what}: the tensor of advantages", hint=hint + formula, atol=1e-5, rtol=1e-5,
                     check_dtype=False)
    return (f"equals minillm.grpo.group_advantages in {len(cases)} cases: groups of equal rewards (zeros), G = 2, "
            "one success among 16, and random ones.")


# -- E.3: response log-probs from logits ----------------------------------------------------------


def _logprob_cases() -> list[tuple[str, GPT, torch.Tensor, torch.Tensor]]:
    """(what, model, idx (B, T), response_mask (B, T)): right-padded rows of prompt + response + padding."""
    with torch.random.fork_rng():
        torch.manual_seed(503)
        model = GPT(GPTConfig(vocab_size=48, context_length=16, d_model=16, n_layer=2, n_head=2,
                              init_std=0.2)).eval()  # fmt: skip
    gen = torch.Generator().manual_seed(503)

    def rows(spans: list[tuple[int, int]], t: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(1, 48, (len(spans), t), generator=gen)
        mask = torch.zeros(idx.shape, dtype=torch.bool)
        for r, (prompt, response) in enumerate(spans):
            mask[r, prompt : prompt + response] = True
            idx[r, prompt + response :] = 0  # the padding token
        return idx, mask

    cases = [
        ("3 rows: prompts of 4, 2, 6 tokens, responses of 5, 3, 6, then padding", *rows([(4, 5), (2, 3), (6, 6)], 12)),
        ("a row that fills the context (no padding) and a response of one token", *rows([(5, 11), (9, 1)], 16)),
        ("one row, a prompt of one token", *rows([(1, 7)], 8)),
    ]
    for _ in range(2):  # and two drawn at random
        t, b = int(torch.randint(4, 17, (), generator=gen)), int(torch.randint(1, 5, (), generator=gen))
        spans = []
        for _ in range(b):
            prompt = int(torch.randint(1, t, (), generator=gen))
            spans.append((prompt, int(torch.randint(1, t - prompt + 1, (), generator=gen))))
        cases.append((f"drawn at random ({b} rows of {t} tokens)", *rows(spans, t)))
    return [(what, model, idx, mask) for what, idx, mask in cases]


@exercise("E.3", "response log-probs from logits")
def grade_response_logprobs(answer: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]) -> str:
    """answer(logits (B, T, V), idx (B, T), response_mask (B, T)) -> (B,), as `sequence_logprobs(model, idx, mask)`.

    The logits are the tiny GPT's own on idx; the sum runs over the response
    tokens t of log p(idx[t] | idx[<t]) = log_softmax(logits[t - 1])[idx[t]].
    """
    rule = ("The logits at position t - 1 predict token t: log_softmax(logits[:, :-1], dim=-1), gather idx[:, 1:], "
            "times response_mask[:, 1:] (the mask of the predicted tokens), summed over the positions.")
    cases = _logprob_cases()
    for what, model, idx, mask in cases:
        with torch.no_grad():
            expected = sequence_logprobs(model, idx, mask)
            logits = model(idx)[0]
        given = (logits.clone().requires_grad_(True), idx.clone(), mask.clone())
        got = as_tensor(call_answer(answer, *given, what=f"your response_logprobs ({what})"),
                        f"response_logprobs for {what}")
        expect(torch.equal(given[0].detach(), logits) and torch.equal(given[1], idx) and torch.equal(given[2], mask),
               f"{what}: your function changed its inputs in place; compute new tensors.")
        b = idx.size(0)
        expect(tuple(got.shape) == (b,), f"{what}: a result of shape {tuple(got.shape)}, expected (B,) = ({b},): "
                                         "one sum of log-probs per row.")
        logp = logits.log_softmax(dim=-1)
        shifted = logp[:, :-1].gather(-1, idx[:, 1:, None]).squeeze(-1)  # (B, T-1): log p(token t | < t)
        unshifted = logp.gather(-1, idx[:, :, None]).squeeze(-1)  # (B, T): the logits of t scoring token t
        hint = _hint(got, [
            ((unshifted * mask).sum(1), "You scored token t with the logits at t, which already saw it: the logits "
             "at t - 1 predict token t (shift by one). "),
            ((shifted * mask[:, :-1]).sum(1), "The mask is shifted the wrong way: the log-prob of token t sits at "
             "position t - 1 of the shifted tensor, so take response_mask[:, 1:] (whether token t is a response "
             "token), not response_mask[:, :-1]. "),
            (shifted.sum(1), "You summed over every token, the prompt's and the padding's too: only response "
             "tokens count (response_mask). "),
            (unshifted.sum(1), "Shift by one, and count only the response tokens. "),
            ((shifted * mask[:, 1:]).sum(1) / mask[:, 1:].sum(1), "Sum over the response tokens, do not average: "
             "log p(response | prompt) is the sum of its tokens' log-probs. "),
            ((logits[:, :-1].gather(-1, idx[:, 1:, None]).squeeze(-1) * mask[:, 1:]).sum(1), "Those are raw "
             "logits: take log_softmax over the vocabulary first (dim=-1). "),
            ((logits.log_softmax(dim=1)[:, :-1].gather(-1, idx[:, 1:, None]).squeeze(-1) * mask[:, 1:]).sum(1),
             "log_softmax runs over the vocabulary, the last axis (dim=-1), not over positions. "),
        ])
        assert_close(got.detach(), expected, f"{what}: the (B,) tensor of response log-probs", hint=hint + rule,
                     atol=1e-4, rtol=1e-5, check_dtype=False)
        expect(got.requires_grad, f"{what}: your result carries no gradient (.item(), .detach(), torch.no_grad or a "
                                  "new tensor cut it off the logits); DPO and GRPO train through these log-probs.")
    return (f"equals minillm.align.sequence_logprobs on a tiny GPT in {len(cases)} batches: prompts, responses and "
            "padding of different lengths, a row without padding, a one-token response.")


# -- E.4: PPO's clipped objective -----------------------------------------------------------------


def _clip_cases() -> list[tuple[str, torch.Tensor, torch.Tensor, float]]:
    """(what, log-ratios (N,), advantages (N,), eps)."""
    gen = torch.Generator().manual_seed(504)
    ratios = torch.tensor([0.5, 0.79, 0.8, 0.81, 0.95, 1.0, 1.05, 1.19, 1.2, 1.21, 2.0, 5.0])
    advantages = torch.tensor([-1.5, -0.3, 0.0, 0.7, 2.0])
    grid_r, grid_a = ratios.repeat_interleave(len(advantages)), advantages.repeat(len(ratios))
    cases = [
        ("every ratio from 0.5 to 5 (0.8 and 1.2 among them) with advantages -1.5 .. 2, eps = 0.2",
         grid_r.log(), grid_a, 0.2),
        ("the same grid, eps = 0.1", grid_r.log(), grid_a, 0.1),
    ]
    for eps in (0.2, 0.28):  # and two drawn at random
        n = int(torch.randint(4, 20, (), generator=gen))
        cases.append((f"drawn at random ({n} tokens, eps = {eps})", 0.4 * torch.randn(n, generator=gen),
                      torch.randn(n, generator=gen), eps))
    return cases


def _objective(log_ratio: torch.Tensor, advantage: torch.Tensor, eps: float) -> torch.Tensor:
    """Each token's clipped objective, as grpo_loss computes it: minus its loss on that one token alone."""
    one = torch.ones(1, 1, dtype=torch.bool)
    return torch.stack([-grpo_loss(lr.view(1, 1), torch.zeros(1, 1), a.view(1), one, clip_eps=eps)[0]
                        for lr, a in zip(log_ratio, advantage)])


@exercise("E.4", "PPO's clipped objective")
def grade_clipped_objective(answer: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]) -> str:
    """answer(ratio (N,), advantage (N,), eps) -> (N,): min(ratio A, clip(ratio, 1 - eps, 1 + eps) A).

    The reference is `minillm.grpo.grpo_loss` on one token at a time (a mask of
    one token, no KL): minus its loss, the objective the update maximizes.
    """
    rule = ("Per token: min(ratio * A, clamp(ratio, 1 - eps, 1 + eps) * A), the smaller of the two products "
            "(torch.minimum): no gain from moving the ratio beyond 1 +- eps in the advantage's direction, and the "
            "full loss when it moved the wrong way.")
    cases = _clip_cases()
    for what, log_ratio, adv, eps in cases:
        ratio = torch.exp(log_ratio - torch.zeros(()))  # as grpo_loss makes it from logps - old_logps
        given = (ratio.clone(), adv.clone())
        got = as_tensor(call_answer(answer, *given, eps, what=f"your clipped_objective ({what})"),
                        f"clipped_objective for {what}")
        expect(torch.equal(given[0], ratio) and torch.equal(given[1], adv),
               f"{what}: your function changed its inputs in place; compute new tensors.")
        expect(tuple(got.shape) == tuple(ratio.shape), f"{what}: a result of shape {tuple(got.shape)}, expected "
                                                       f"{tuple(ratio.shape)}: one objective per token.")
        expected = _objective(log_ratio, adv, eps)
        clipped = ratio.clamp(1 - eps, 1 + eps)
        hint = _hint(got, [
            (-expected, "That is the loss (minus the objective); return the objective itself, to be maximized. "),
            (clipped * adv, "Only the clipped term: take the minimum of it and the unclipped ratio * A (a token whose "
             "ratio moved the wrong way keeps its full, unclipped, loss). "),
            (ratio * adv, "No clipping: clamp the ratio to [1 - eps, 1 + eps] in the second term. "),
            (torch.maximum(ratio * adv, clipped * adv), "The maximum would reward moving the ratio without limit: "
             "take the minimum (the pessimistic bound). "),
            ((ratio * adv).clamp(1 - eps, 1 + eps), "Clip the ratio, not the product ratio * A. "),
            (torch.minimum(ratio * adv, (ratio * adv).clamp(1 - eps, 1 + eps)), "Clip the ratio, not the product "
             "ratio * A: the second term is clamp(ratio, 1 - eps, 1 + eps) * A. "),
            (torch.minimum(ratio, clipped) * adv, "The minimum is over the two products ratio * A and clip(ratio) * A, "
             "not over the ratios: with a negative advantage that flips which one is smaller. "),
        ])
        assert_close(got, expected, f"{what}: the per-token objective", hint=hint + rule, atol=1e-5, rtol=1e-5,
                     check_dtype=False)
    return (f"equals the objective of minillm.grpo.grpo_loss, token by token, in {len(cases)} cases: ratios at and "
            "beyond 1 +- eps, advantages of both signs and zero.")


# -- E.5: a reward that length cannot hack --------------------------------------------------------


def _parse(text: str) -> list | None:
    """The stripped text as a Python list literal, else None."""
    try:
        value = ast.literal_eval(text.strip())
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None
    return value if isinstance(value, list) else None


def sort_reward(row: dict, text: str) -> float:
    """The reference: the share of positions equal to sorted(input); 0.0 unless the text lists the input's ints."""
    answer = _parse(text)
    if answer is None or not all(type(x) is int for x in answer):
        return 0.0
    given = ast.literal_eval(row["input"])
    if Counter(answer) != Counter(given):
        return 0.0
    target = sorted(given)
    return sum(a == b for a, b in zip(answer, target)) / len(target)


def _answers(xs: list[int], rng: random.Random) -> list[tuple[str, str]]:
    """(kind, text) answers to "Sort the list." for input xs: right, partly right, hacks, and not lists."""
    s = sorted(xs)
    swap = list(s)
    i = next((k for k in range(len(s) - 1) if s[k] != s[k + 1]), 0)
    swap[i], swap[i + 1] = swap[i + 1], swap[i]
    other = next(v for v in range(10) if v not in xs)
    changed = list(s)
    changed[rng.randrange(len(s))] = other
    return [
        ("the right answer", str(s)),
        ("the right answer without spaces", "[" + ",".join(map(str, s)) + "]"),
        ("the right answer with spaces and a newline around it", f"  {s}\n"),
        ("the input as it was", str(xs)),
        ("sorted the wrong way", str(s[::-1])),
        ("two neighbours swapped", str(swap)),
        ("the answer padded with its largest number (longer, so length_reward likes it)", str(s + [s[-1]] * 4)),
        ("the answer with its last number cut", str(s[:-1])),
        ("one number replaced by one not in the input", str(changed)),
        ("a number repeated in place of another", str([s[0]] + s[:-1])),
        ("the answer twice", f"{s} {s}"),
        ("the answer in a sentence", f"The sorted list is {s}."),
        ("an empty list", "[]"),
        ("a list inside a list", str([s])),
        ("strings instead of numbers", str([str(v) for v in s])),
        ("a single number", str(s[0])),
        ("an unclosed bracket", str(s)[:-1]),
    ]


def _reward_cases() -> list[tuple[str, dict, str]]:
    rng = random.Random(505)
    rows = list_tasks(4, seed=505, tasks=("sort",), min_len=3, max_len=6)
    rows.append({"instruction": "Sort the list.", "input": "[7, 1, 7, 3]", "output": "[1, 3, 7, 7]", "task": "sort"})
    return [(f"{kind} (input {row['input']}: {text!r})", row, text) for row in rows for kind, text in
            _answers(ast.literal_eval(row["input"]), rng)]  # fmt: skip


@exercise("E.5", "a reward that length cannot hack")
def grade_sort_reward(answer: Callable[[dict, str], float]) -> str:
    """answer(row, text) -> float in [0, 1] for the sort task: the share of positions right, 0.0 for any text
    that is not a Python list of exactly the input's integers (padded, cut, changed, not a list)."""
    rule = ("Parse the stripped text (ast.literal_eval or json.loads, in a try: anything that does not parse gets "
            "0.0); 0.0 unless it is a list of ints whose multiset equals the input's (Counter(answer) == "
            "Counter(input)); else the share of positions where it equals sorted(input).")
    cases = _reward_cases()
    for what, row, text in cases:
        given = dict(row)
        got = as_number(call_answer(answer, given, text, what=f"your sort_reward on {what}",
                                    hint="A reward function must not raise on what the model writes: return 0.0 "
                                         "for any text that is not a list of integers (train_grpo drops the whole "
                                         "group when one reward raises)."), f"sort_reward on {what}")
        expect(given == row, f"{what}: your sort_reward changed the row; leave it as it was.")
        expected = sort_reward(row, text)
        if abs(got - expected) <= 1e-9:
            continue
        parsed = _parse(text)
        if expected == 0.0 and got > 0 and parsed is not None and all(type(x) is int for x in parsed):
            hint = ("An answer whose numbers are not exactly the input's (padded, cut, changed, repeated) must get "
                    "0.0, whatever its positions: otherwise the policy gains by writing the right numbers at the "
                    "start and anything after them. ")
        elif expected == 0.0 and got > 0:
            hint = ("The whole response must be a list of integers: text around it, a second list, strings or "
                    "nested lists get 0.0 (a reward that digs an answer out of any text can be gamed by writing "
                    "many). ")
        elif expected > 0 and got == 0.0:
            hint = ("Give partial credit: an answer holding the input's numbers gets the share of positions that "
                    "match sorted(input), not only 0 or 1. ")
        elif expected == 1.0 and got != 1.0:
            hint = "Compare numbers, not characters: parse the text, so that '[1,2]' and ' [1, 2]\\n' count as right. "
        else:
            hint = ""
        raise ExerciseFailed(f"{what}: your reward is {got:g}, expected {expected:g} "
                             f"(exact_match_reward gives {exact_match_reward(row, text):g}, length_reward "
                             f"{length_reward(row, text):.2f}). {hint}{rule}")
    return (f"equals the reference in {len(cases)} cases: right answers however spaced, partial credit for the "
            "input's numbers in other orders, 0 for padded, cut, changed answers and for text that is no list.")
