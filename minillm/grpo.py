"""Reinforcement learning with verifiable rewards, GRPO (appendix E): sample, score with a program, reinforce.

GRPO (Shao et al. 2024), in the simple form nanochat and CS336 use: sample a
group of G answers per prompt (`minillm.align.sample_group`, one batched
decode with the KV cache), score each with a program (`minillm.align.exact_match_reward`), and
push up the answers better than their group's mean (`group_advantages`) with
PPO's clipped ratio (`grpo_loss`), optionally held near the reference by a KL
penalty. No value network: the group's mean is the baseline. `train_grpo` is
the loop; a reward function that raises costs its group (counted), not the run.
"""

from __future__ import annotations

import logging
import math
import numbers
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from minillm.align import (EpochShuffle, check_models, optimizer_step, pack, prompt_ids, require, sample_group,
                           sequence_logprobs)
from minillm.device import resolve_device
from minillm.errors import ConfigError, DataError
from minillm.instruct import end_token
from minillm.model import GPT
from minillm.optim import make_optimizer
from minillm.tokenizer import Tokenizer

log = logging.getLogger(__name__)


def group_advantages(rewards: torch.Tensor, eps: float = 1e-4, scale: bool = True) -> torch.Tensor:
    """Rewards (P, G) of P groups of G samples -> advantages (P, G): (r - group mean) / (group std + eps).

    The std is the population one (divide by G, no Bessel correction): a
    group's advantages have mean 0 and variance just under 1. A group whose
    rewards are all equal gets zeros (no signal). `scale=False`: only r - mean
    (the "Dr. GRPO" form, which does not up-weight groups with a small spread).
    """
    if rewards.dim() != 2 or rewards.size(1) < 2:
        raise ConfigError(f"rewards must be (P, G) with groups of G >= 2 samples, got {tuple(rewards.shape)}")
    if not bool(torch.isfinite(rewards).all()):
        raise DataError("rewards must be finite numbers (found NaN or inf)")
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    return centred / (rewards.std(dim=1, correction=0, keepdim=True) + eps) if scale else centred


def grpo_loss(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
              clip_eps: float = 0.2, kl_coef: float = 0.0,
              ref_logps: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:  # fmt: skip
    """(loss, {"kl", "clip_fraction"}); logps, old_logps, ref_logps, mask (N, T-1) per token, advantages (N,).

    Per response token, ratio = exp(logp - old_logp) and the objective is
    min(ratio A, clip(ratio, 1 - clip_eps, 1 + clip_eps) A) (PPO's clip: no gain
    from moving a token further than clip_eps in its advantage's direction),
    minus kl_coef x the k3 estimate of KL(policy || ref), exp(ref - logp) -
    (ref - logp) - 1 (>= 0, unbiased). The loss is minus that, averaged over
    each sequence's response tokens, then over sequences (GRPO's 1/|o_i|: each
    answer weighs the same, whatever its length). `kl`: k3 averaged the same
    way (NaN without ref_logps); `clip_fraction`: share of response tokens
    where the clipped term was the smaller.
    """
    if not (logps.shape == old_logps.shape == mask.shape and advantages.shape == logps.shape[:1]):
        raise ConfigError(f"need logps, old_logps, mask (N, T-1) and advantages (N,); got {tuple(logps.shape)}, "
                          f"{tuple(old_logps.shape)}, {tuple(mask.shape)}, {tuple(advantages.shape)}")  # fmt: skip
    require(kl_coef == 0 or ref_logps is not None, "kl_coef > 0 needs ref_logps (the reference's log-probs)")
    mask, adv = mask.float(), advantages[:, None]
    ratio = torch.exp(logps - old_logps)
    clipped = torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * adv
    per_token = -torch.minimum(ratio * adv, clipped)

    def average(x: torch.Tensor) -> torch.Tensor:
        return ((x * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)).mean()

    kl = math.nan
    if ref_logps is not None:
        k3 = torch.exp(ref_logps - logps) - (ref_logps - logps) - 1
        per_token, kl = per_token + kl_coef * k3, float(average(k3.detach()))
    clip_fraction = float((((ratio * adv) > clipped).float() * mask).sum() / mask.sum().clamp(min=1))
    return average(per_token), {"kl": kl, "clip_fraction": clip_fraction}


@dataclass
class GRPOConfig:
    """GRPO's settings; defaults suit the book's chat model on a CPU."""

    group_size: int = 8  # G samples a prompt
    prompts_per_step: int = 8
    steps: int = 20
    lr: float = 5e-5
    temperature: float = 1.0
    max_new_tokens: int = 24
    clip_eps: float = 0.2
    kl_coef: float = 0.0  # > 0 needs a reference model
    inner_updates: int = 1  # optimizer steps on each sampled batch (> 1: the ratio and its clip matter)
    scale_rewards: bool = True  # divide by the group's std (False: Dr. GRPO)
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    template: str = "chat"
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        ints = (self.group_size, self.prompts_per_step, self.steps, self.max_new_tokens, self.inner_updates)
        require(all(isinstance(n, int) for n in ints) and self.group_size >= 2 and min(ints[1:]) >= 1,
               f"need group_size >= 2 (advantages compare samples of one prompt) and prompts_per_step, steps, "
               f"max_new_tokens, inner_updates >= 1, all integers; got {ints}")  # fmt: skip
        require(self.lr > 0 and self.temperature > 0 and self.clip_eps > 0 and self.kl_coef >= 0, "need lr, "
               f"temperature, clip_eps > 0 and kl_coef >= 0; got {self.lr}, {self.temperature}, {self.clip_eps}, "
               f"{self.kl_coef}")  # fmt: skip
        require(self.grad_clip >= 0 and self.weight_decay >= 0, "grad_clip and weight_decay must be >= 0")


@dataclass
class GRPOResult:
    """What `train_grpo` returns: the policy, one record a step, totals, and the wall time."""

    policy: GPT
    history: list[dict] = field(default_factory=list)
    skipped: int = 0  # samples whose reward function raised (their groups were dropped)
    zero_signal_groups: int = 0  # groups whose rewards were all equal (advantage 0: left out of the update)
    seconds: float = 0.0


def _reward(reward_fn: Callable[[dict, str], float], row: dict, text: str, where: str) -> float | None:
    """reward_fn(row, text) as a float; None when it raised (a counted skip); DataError for NaN, inf, non-numbers."""
    try:
        value = reward_fn(row, text)
    except Exception as err:  # a bug, or an answer it cannot parse: skip the group, count it, go on
        log.warning("reward function raised for %s (%s: %s); its group is skipped", where, type(err).__name__, err)
        return None
    if not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise DataError(f"the reward function returned {value!r} for {where}; a reward must be a finite number")
    return float(value)


def train_grpo(policy: GPT, reference: GPT | None, rows: list[dict], tokenizer: Tokenizer,
               reward_fn: Callable[[dict, str], float], config: GRPOConfig) -> GRPOResult:  # fmt: skip
    """Train `policy` in place with GRPO on prompt `rows`, scored by `reward_fn(row, response_text) -> float`.

    Each step: `prompts_per_step` rows (an epoch-wise shuffle from `seed`), G
    samples each (`sample_group`), their rewards. A group with a sample whose
    reward function raised is dropped (`skipped` counts the samples); a group
    of equal rewards has no signal and is left out of the update. The others'
    samples form one batch for `inner_updates` AdamW steps on `grpo_loss`
    (log-probs at the sampling temperature). The reference (None allowed when
    kl_coef is 0) gives the KL estimate. History per step: reward_mean,
    reward_one (share of rewards == 1), kl, clip_fraction, loss, skipped,
    zero_signal_groups, updated, seconds.
    """
    t0 = time.perf_counter()
    check_models(policy, reference)
    require(config.kl_coef == 0 or reference is not None, "kl_coef > 0 needs a reference model (a frozen copy of "
           "the starting policy)")  # fmt: skip
    if not rows:
        raise DataError("train_grpo needs at least one prompt row")
    device, temp, g = resolve_device(config.device), config.temperature, config.group_size
    for model in (policy, reference):
        if model is not None:
            model.to(device).eval()
    end = tokenizer.special_tokens[end_token(config.template)]
    prompts = [prompt_ids(r, tokenizer, config.template) for r in rows]
    for i, ids in enumerate(prompts):
        if len(ids) + config.max_new_tokens > policy.config.context_length:
            raise DataError(f"row {i}: a prompt of {len(ids)} tokens + max_new_tokens={config.max_new_tokens} "
                            f"exceeds the context of {policy.config.context_length}; drop the row or lower "
                            "max_new_tokens")  # fmt: skip
    optimizer = make_optimizer(policy, config.lr, config.weight_decay)
    order, sampler = EpochShuffle(len(rows), config.seed), torch.Generator(device=device).manual_seed(config.seed)
    result = GRPOResult(policy)
    for step in range(config.steps):
        t_step = time.perf_counter()
        record = {"step": step + 1, "skipped": 0, "zero_signal_groups": 0, "updated": False, "loss": math.nan,
                  "kl": math.nan, "clip_fraction": math.nan}  # fmt: skip
        rewards, sequences, scored = [], [], []
        for i in order.take(config.prompts_per_step):
            samples = sample_group(policy, tokenizer, rows[i], g, config.max_new_tokens, temp, sampler, config.template)
            scores = [_reward(reward_fn, rows[i], tokenizer.decode([t for t in s if t != end]), f"row {i}, sample {j}")
                      for j, s in enumerate(samples)]  # fmt: skip
            if None in scores:
                record["skipped"] += scores.count(None)
            elif len(set(scores)) == 1:
                record["zero_signal_groups"] += 1
            else:
                rewards.append(scores)
                sequences += [(prompts[i] + s, len(prompts[i])) for s in samples]
            scored += [s for s in scores if s is not None]
        record["reward_mean"] = sum(scored) / len(scored) if scored else math.nan
        record["reward_one"] = sum(s == 1 for s in scored) / len(scored) if scored else math.nan
        if rewards:
            adv = group_advantages(torch.tensor(rewards), scale=config.scale_rewards).flatten().to(device)
            batch = pack(sequences, end, device)
            idx, mask = batch["idx"], batch["response_mask"]
            with torch.no_grad():
                ref = None if reference is None else sequence_logprobs(reference, idx, mask, True, temp)
                old = None if config.inner_updates == 1 else sequence_logprobs(policy, idx, mask, True, temp)
            for _ in range(config.inner_updates):
                logps = sequence_logprobs(policy, idx, mask, True, temp)  # (N, T-1)
                loss, info = grpo_loss(logps, logps.detach() if old is None else old, adv, mask[:, 1:],
                                       config.clip_eps, config.kl_coef, ref)  # fmt: skip
                loss.backward()
                optimizer_step(optimizer, policy, config.grad_clip)
            record.update(loss=float(loss.detach()), updated=True, **info)
        result.skipped += record["skipped"]
        result.zero_signal_groups += record["zero_signal_groups"]
        record["seconds"] = time.perf_counter() - t_step
        result.history.append(record)
    result.seconds = time.perf_counter() - t0
    return result
