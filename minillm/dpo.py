"""Preference tuning with DPO (appendix E): raise the better response's log-prob against a frozen reference.

For pairs (prompt, chosen, rejected), DPO (Rafailov et al. 2023) turns the
Bradley-Terry model of preferences, p(chosen > rejected) = sigmoid(r_c - r_r),
with the implicit reward r = beta (log p_policy - log p_ref), into a loss on
the policy alone: loss = -log sigmoid(beta ((pc - rc) - (pr - rr))) (`dpo_loss`).
`train_dpo` is the loop (one forward pass scores the chosen and rejected rows
of a batch; the reference's log-probs are computed once) and reports how
often the implicit reward ranks held-out pairs right (`preference_stats`).
`pairs_from_answers` builds pairs from the model's own wrong answers, judged
by a program.
DPO may lower both log-probs (only their difference counts);
`DPOConfig.sft_coef` adds the chosen responses' NLL to hold them up (RPO,
Pang et al. 2024). The shared pieces (log-probs, encoding) are in `minillm.align`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from minillm.align import (Encoded, EpochShuffle, check_common, check_models, check_rows, default_pad_id,
                           encode_response, exact_match_reward, greedy_answers, is_count, is_nonnegative, is_positive,
                           optimizer_step, pack, require, reward_value, sample_group, sequence_logprobs)
from minillm.device import resolve_device
from minillm.errors import ConfigError, DataError
from minillm.instruct import end_token
from minillm.model import GPT
from minillm.optim import SCHEDULES, lr_at, make_optimizer
from minillm.tokenizer import Tokenizer


@dataclass(frozen=True)
class PreferencePair:
    """A prompt row (a dict with `instruction` and optional `input`) and two responses, the better first."""

    prompt: dict
    chosen: str
    rejected: str

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, dict) or not isinstance(self.chosen, str) or not isinstance(self.rejected, str):
            raise TypeError(f"a PreferencePair is (a dict row, a str, a str), got ({type(self.prompt).__name__}, "
                            f"{type(self.chosen).__name__}, {type(self.rejected).__name__})")  # fmt: skip


def pairs_from_answers(model: GPT, tokenizer: Tokenizer, rows: list[dict],
                       reward_fn: Callable[[dict, str], float] = exact_match_reward, samples: int = 4,
                       temperature: float = 1.0, max_new_tokens: int = 24, greedy: bool = True, seed: int = 0,
                       template: str = "chat") -> list[PreferencePair]:  # fmt: skip
    """Preference pairs from the model's own mistakes: (row, its right `output`, a worse answer the model gave).

    For each row, the model's greedy answer (`greedy`, by `greedy_answers`) and `samples` answers
    sampled at `temperature` (`sample_group`, generator seeded with `seed`) are
    scored with `reward_fn(row, text)`; each distinct, non-empty answer that
    scores below the row's `output` becomes the rejected side of a pair whose
    chosen side is that output. A row the model always answers right gives no
    pair. The preference is checkable: it is the reward program's, not a judge's.
    An answer equal to the output up to surrounding whitespace is never
    rejected; a reward function that raises or returns a non-number is a
    DataError naming the row.
    """
    rows = check_rows(rows, output=True)
    if not callable(reward_fn):
        raise TypeError(f"reward_fn must be a function (row, text) -> float, got {type(reward_fn).__name__}")
    if not is_count(samples, 0) or not isinstance(greedy, bool) or not (greedy or samples):
        raise ConfigError(f"samples must be an integer >= 0, greedy a bool, and some answers must be drawn (greedy "
                          f"or samples > 0); got samples={samples!r}, greedy={greedy!r}")  # fmt: skip

    def score(i: int, row: dict, text: str) -> float:
        try:
            value = reward_fn(row, text)
        except Exception as err:
            raise DataError(f"row {i}: the reward function raised {type(err).__name__}: {err}") from err
        return reward_value(value, f"row {i}")

    end = tokenizer.special_tokens[end_token(template)]
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    greedy_text = greedy_answers(model, tokenizer, rows, max_new_tokens, template) if greedy else [None] * len(rows)
    pairs = []
    for i, (row, first) in enumerate(zip(rows, greedy_text)):
        best = score(i, row, row["output"])
        answers = [first] if greedy else []
        if samples:
            answers += [tokenizer.decode([t for t in s if t != end]).strip()
                        for s in sample_group(model, tokenizer, row, samples, max_new_tokens, temperature, gen,
                                              template)]  # fmt: skip
        seen = {row["output"].strip()}
        for text in answers:
            if text and text not in seen and score(i, row, text) < best:
                seen.add(text)
                pairs.append(PreferencePair(row, row["output"], text))
    return pairs


def _encode_pairs(pairs: list[PreferencePair], tokenizer: Tokenizer, context_length: int,
                  template: str) -> list[tuple[Encoded, Encoded]]:  # fmt: skip
    """Each pair's (chosen, rejected) encodings; a DataError names the pair that cannot be used."""
    if isinstance(pairs, (str, dict)) or not isinstance(pairs, (list, tuple)) or not all(
            isinstance(p, PreferencePair) for p in pairs):
        raise TypeError("pairs must be a list of PreferencePair(prompt row, chosen, rejected)")
    out = []
    for i, p in enumerate(pairs):
        if p.chosen.strip() == p.rejected.strip():
            raise DataError(f"pair {i}: chosen and rejected are the same response ({p.chosen!r}); a preference "
                            "needs two different responses: drop the pair")  # fmt: skip
        out.append((encode_response(p.prompt, p.chosen, tokenizer, context_length, template, f"pair {i} (chosen)"),
                    encode_response(p.prompt, p.rejected, tokenizer, context_length, template, f"pair {i} (rejected)")))
    return out


def _pack_pairs(encoded: list[tuple[Encoded, Encoded]], pad_id: int, device=None) -> dict[str, torch.Tensor]:
    """One batch of 2B rows, the chosen responses first: {"idx": (2B, T), "response_mask": (2B, T)}."""
    return pack([c for c, _ in encoded] + [r for _, r in encoded], pad_id, device)


def pair_batch(pairs: list[PreferencePair], tokenizer: Tokenizer, context_length: int, template: str = "chat",
               pad_id: int | None = None) -> dict[str, torch.Tensor]:  # fmt: skip
    """{"chosen_idx", "chosen_mask", "rejected_idx", "rejected_mask"}, each (B, T), padded to one T.

    DataError, naming the pair, for chosen == rejected (whitespace aside) or a
    response that does not fit `context_length`.
    """
    batch = _pack_pairs(_encode_pairs(pairs, tokenizer, context_length, template), default_pad_id(tokenizer, template, pad_id))
    b = len(pairs)
    return {"chosen_idx": batch["idx"][:b], "chosen_mask": batch["response_mask"][:b],
            "rejected_idx": batch["idx"][b:], "rejected_mask": batch["response_mask"][b:]}  # fmt: skip


def dpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor, ref_chosen_logps: torch.Tensor,
             ref_rejected_logps: torch.Tensor,
             beta: float = 0.1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """(loss, chosen_rewards (B,), rejected_rewards (B,)) of DPO; all four inputs (B,) sequence log-probs.

    loss = mean of -log sigmoid(beta ((pc - rc) - (pr - rr))), by `logsigmoid`
    (no overflow at large margins); rewards = beta (policy - ref), detached.
    A NaN or infinite log-prob gives a NaN or infinite loss (`train_dpo` stops
    with a DataError when its loss is not finite).
    """
    if not is_positive(beta):
        raise ConfigError(f"beta must be a finite number > 0 (about 0.1), got {beta!r}")
    logps = (policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    if not all(isinstance(t, torch.Tensor) and t.dtype.is_floating_point for t in logps):
        raise TypeError("the four log-probs must be floating-point tensors (sequence_logprobs' output)")
    if len({tuple(t.shape) for t in logps}) != 1 or logps[0].dim() != 1 or logps[0].numel() == 0:
        raise ConfigError(f"the four log-prob tensors must have one shape (B,) with B >= 1 (one value a sequence, "
                          f"not per token), got {[tuple(t.shape) for t in logps]}")  # fmt: skip
    chosen, rejected = policy_chosen_logps - ref_chosen_logps, policy_rejected_logps - ref_rejected_logps
    loss = -F.logsigmoid(beta * (chosen - rejected)).mean()
    return loss, (beta * chosen).detach(), (beta * rejected).detach()


@dataclass
class DPOConfig:
    """DPO's settings; defaults suit the book's chat model on a CPU."""

    beta: float = 1.0  # small = the policy may move far from the reference (the paper's 0.1 moved this model too far)
    lr: float = 1e-4
    steps: int = 40
    batch_size: int = 16  # pairs a step
    sft_coef: float = 1.0  # x mean token NLL of the chosen responses (0: plain DPO)
    warmup_steps: int = 0
    schedule: str = "constant"  # minillm.optim.SCHEDULES (cosine decays to lr / 10)
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # 0: no clipping
    template: str = "chat"
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        require(is_positive(self.beta), f"beta must be a finite number > 0, got {self.beta!r}")
        require(is_positive(self.lr) and is_nonnegative(self.sft_coef), f"need lr > 0 and sft_coef >= 0 (finite "
                f"numbers), got {self.lr!r}, {self.sft_coef!r}")  # fmt: skip
        require(is_count(self.steps) and is_count(self.batch_size), f"steps and batch_size must be integers >= 1, "
                f"got {self.steps!r}, {self.batch_size!r}")  # fmt: skip
        require(self.schedule in SCHEDULES and is_count(self.warmup_steps, 0) and self.warmup_steps <= self.steps,
                f"schedule must be one of {SCHEDULES} and warmup_steps an integer in 0..steps; got "
                f"{self.schedule!r}, {self.warmup_steps!r}")  # fmt: skip
        check_common(self)


@dataclass
class DPOResult:
    """What `train_dpo` returns; `eval_before`/`eval_after`: `preference_stats` on eval_pairs (None without)."""

    policy: GPT
    history: list[dict] = field(default_factory=list)  # per step: loss, reward_accuracy, margin, nll, lr
    eval_before: dict | None = None
    eval_after: dict | None = None
    seconds: float = 0.0


@torch.no_grad()
def _pair_logprobs(model: GPT, encoded: list, pad_id: int, batch_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen (N,), rejected (N,)) sequence log-probs of encoded pairs, without gradients."""
    device, out = next(model.parameters()).device, []
    for s in range(0, len(encoded), batch_size):
        batch = _pack_pairs(encoded[s : s + batch_size], pad_id, device)
        out.append(sequence_logprobs(model, batch["idx"], batch["response_mask"]).view(2, -1))
    return tuple(torch.cat(out, dim=1))


def preference_stats(pc: torch.Tensor, pr: torch.Tensor, rc: torch.Tensor, rr: torch.Tensor,
                     beta: float) -> dict[str, float]:  # fmt: skip
    """How well policy (pc, pr) and reference (rc, rr) log-probs, each (N,), rank N pairs.

    reward_accuracy: share with chosen reward > rejected reward (strictly: a
    policy equal to its reference scores 0, all ties); margin: mean chosen
    minus rejected reward; logp_accuracy: share with pc > pr (the policy alone).
    """
    margins = beta * ((pc - rc) - (pr - rr))
    return {"reward_accuracy": float((margins > 0).float().mean()), "margin": float(margins.mean()),
            "logp_accuracy": float((pc > pr).float().mean())}  # fmt: skip


def train_dpo(policy: GPT, reference: GPT, pairs: list[PreferencePair], tokenizer: Tokenizer, config: DPOConfig,
              eval_pairs: list[PreferencePair] | None = None) -> DPOResult:  # fmt: skip
    """Train `policy` in place with DPO against the frozen `reference` on `pairs`.

    All pairs are encoded and checked first (a bad pair raises DataError before
    any step); the reference's log-probs are computed once. Each step draws
    `batch_size` pairs (an epoch-wise shuffle from `seed`), scores chosen and
    rejected rows in one forward pass, and takes an AdamW step.
    """
    t0 = time.perf_counter()
    check_models(policy, reference, need_reference=True)
    if not isinstance(config, DPOConfig):
        raise TypeError(f"config must be a DPOConfig, got {type(config).__name__}")
    if not pairs:
        raise DataError("train_dpo needs at least one preference pair")
    device = resolve_device(config.device)
    policy.to(device).eval()
    reference.to(device).eval()
    ctx, pad = policy.config.context_length, default_pad_id(tokenizer, config.template, None)
    train = _encode_pairs(pairs, tokenizer, ctx, config.template)
    held = _encode_pairs(eval_pairs, tokenizer, ctx, config.template) if eval_pairs else None
    ref_c, ref_r = _pair_logprobs(reference, train, pad)
    result = DPOResult(policy)
    if held:
        ref_held = _pair_logprobs(reference, held, pad)
        result.eval_before = preference_stats(*_pair_logprobs(policy, held, pad), *ref_held, config.beta)
    optimizer = make_optimizer(policy, config.lr, config.weight_decay)
    order = EpochShuffle(len(pairs), config.seed)
    for step in range(config.steps):
        lr = lr_at(step, config.schedule, config.lr, config.steps, config.warmup_steps, config.lr / 10)
        for group in optimizer.param_groups:
            group["lr"] = lr
        take = order.take(config.batch_size)
        batch = _pack_pairs([train[i] for i in take], pad, device)
        logps = sequence_logprobs(policy, batch["idx"], batch["response_mask"])  # (2B,): chosen, then rejected
        b = len(take)
        loss, rc, rr = dpo_loss(logps[:b], logps[b:], ref_c[take], ref_r[take], config.beta)
        nll = -(logps[:b] / batch["response_mask"][:b].sum(dim=1)).mean()  # per token of the chosen responses
        if not math.isfinite(float(loss.detach())):
            raise DataError(f"the DPO loss is {float(loss.detach())} at step {step + 1}: the log-probs overflowed "
                            "(lower lr, or check the model's weights)")  # fmt: skip
        (loss + config.sft_coef * nll).backward()
        optimizer_step(optimizer, policy, config.grad_clip)
        result.history.append({"step": step + 1, "loss": float(loss.detach()), "margin": float((rc - rr).mean()),
                               "reward_accuracy": float((rc > rr).float().mean()), "nll": float(nll.detach()),
                               "lr": lr})  # fmt: skip
    if held:
        result.eval_after = preference_stats(*_pair_logprobs(policy, held, pad), *ref_held, config.beta)
    result.seconds = time.perf_counter() - t0
    return result
