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
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from minillm.align import (EpochShuffle, check_common, check_models, check_rows, is_count, is_nonnegative,
                           is_positive, optimizer_step, pack, prompt_ids, require, reward_value, sample_group,
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
    if not isinstance(rewards, torch.Tensor):
        raise TypeError(f"rewards must be a (P, G) tensor, got {type(rewards).__name__}")
    if rewards.dim() != 2 or rewards.size(1) < 2:
        raise ConfigError(f"rewards must be (P, G) with groups of G >= 2 samples, got {tuple(rewards.shape)}")
    require(is_positive(eps), f"eps must be a finite number > 0 (it keeps equal groups at 0, not NaN), got {eps!r}")
    rewards = rewards if rewards.dtype.is_floating_point else rewards.double()  # 0/1 ints or bools: exact in float64
    if not bool(torch.isfinite(rewards).all()):
        raise DataError("rewards must be finite numbers (found NaN or inf)")
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    if not bool(torch.isfinite(centred).all()):
        raise DataError("rewards so large that their group mean overflows; rescale the reward")
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
    if not (logps.shape == old_logps.shape == mask.shape and advantages.shape == logps.shape[:1]) or (
            logps.dim() != 2 or logps.size(0) == 0):
        raise ConfigError(f"need logps, old_logps, mask (N, T-1) with N >= 1 and advantages (N,); got "
                          f"{tuple(logps.shape)}, {tuple(old_logps.shape)}, {tuple(mask.shape)}, "
                          f"{tuple(advantages.shape)}")  # fmt: skip
    require(is_positive(clip_eps) and clip_eps < 1 and is_nonnegative(kl_coef), f"need 0 < clip_eps < 1 and a "
            f"finite kl_coef >= 0, got {clip_eps!r}, {kl_coef!r}")  # fmt: skip
    require(kl_coef == 0 or ref_logps is not None, "kl_coef > 0 needs ref_logps (the reference's log-probs)")
    if ref_logps is not None and ref_logps.shape != logps.shape:
        raise ConfigError(f"ref_logps must have logps' shape {tuple(logps.shape)}, got {tuple(ref_logps.shape)}")
    mask, adv = mask.bool(), advantages[:, None]
    ratio = torch.exp(logps - old_logps)
    clipped = torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * adv
    per_token = -torch.minimum(ratio * adv, clipped)

    def average(x: torch.Tensor) -> torch.Tensor:  # where(), not x * mask: a NaN in the padding stays out
        return (torch.where(mask, x, 0.0).sum(dim=1) / mask.sum(dim=1).clamp(min=1)).mean()

    kl = math.nan
    if ref_logps is not None:
        k3 = torch.exp(ref_logps - logps) - (ref_logps - logps) - 1
        per_token, kl = per_token + kl_coef * k3, float(average(k3.detach()))
    clip_fraction = float(((ratio * adv > clipped) & mask).sum() / mask.sum().clamp(min=1))
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
        require(is_count(self.group_size, 2) and all(is_count(n) for n in ints[1:]),
                f"need group_size >= 2 (advantages compare samples of one prompt) and prompts_per_step, steps, "
                f"max_new_tokens, inner_updates >= 1, all integers; got {ints}")  # fmt: skip
        require(all(is_positive(x) for x in (self.lr, self.temperature, self.clip_eps)) and self.clip_eps < 1
                and is_nonnegative(self.kl_coef), f"need finite lr, temperature > 0, 0 < clip_eps < 1 and "
                f"kl_coef >= 0; got {self.lr!r}, {self.temperature!r}, {self.clip_eps!r}, {self.kl_coef!r}")  # fmt: skip
        require(isinstance(self.scale_rewards, bool), f"scale_rewards must be a bool, got {self.scale_rewards!r}")
        check_common(self)


@dataclass
class GRPOResult:
    """What `train_grpo` returns: the policy, one record a step, totals, and the wall time."""

    policy: GPT
    history: list[dict] = field(default_factory=list)
    skipped: int = 0  # samples whose reward function raised (their groups were dropped)
    zero_signal_groups: int = 0  # groups whose rewards were all equal (advantage 0: left out of the update)
    seconds: float = 0.0


def _reward(reward_fn: Callable[[dict, str], float], row: dict, text: str,
            where: str) -> tuple[float | None, Exception | None]:  # fmt: skip
    """(reward_fn(row, text) as a float, None), or (None, the exception) when it raised (a counted skip).

    DataError for NaN, inf and non-numbers (`minillm.align.reward_value`).
    """
    try:
        value = reward_fn(row, text)
    except Exception as err:  # a bug, or an answer it cannot parse: skip the group, count it, go on
        return None, err
    return reward_value(value, where), None


def train_grpo(policy: GPT, reference: GPT | None, rows: list[dict], tokenizer: Tokenizer,
               reward_fn: Callable[[dict, str], float], config: GRPOConfig) -> GRPOResult:  # fmt: skip
    """Train `policy` in place with GRPO on prompt `rows`, scored by `reward_fn(row, response_text) -> float`.

    Each step: `prompts_per_step` rows (an epoch-wise shuffle from `seed`), G
    samples each (`sample_group`), their rewards. A group with a sample whose
    reward function raised is dropped (`skipped` counts the samples; a step in
    which it raised for every sample is a DataError quoting the error); a group
    of equal rewards has no signal and is left out of the update. The others'
    samples form one batch for `inner_updates` AdamW steps on `grpo_loss`
    (log-probs at the sampling temperature). The reference (None allowed when
    kl_coef is 0) gives the KL estimate. History per step: reward_mean,
    reward_one (share of rewards == 1), kl, clip_fraction, loss, skipped,
    zero_signal_groups, updated, seconds.
    """
    t0 = time.perf_counter()
    check_models(policy, reference)
    if not isinstance(config, GRPOConfig):
        raise TypeError(f"config must be a GRPOConfig, got {type(config).__name__}")
    if not callable(reward_fn):
        raise TypeError(f"reward_fn must be a function (row, text) -> float, got {type(reward_fn).__name__}")
    rows = check_rows(rows)
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
        rewards, sequences, scored, errors = [], [], [], []
        for i in order.take(config.prompts_per_step):
            samples = sample_group(policy, tokenizer, rows[i], g, config.max_new_tokens, temp, sampler, config.template)
            scored_pairs = [_reward(reward_fn, rows[i], tokenizer.decode([t for t in s if t != end]),
                                    f"row {i}, sample {j}") for j, s in enumerate(samples)]  # fmt: skip
            scores = [value for value, _ in scored_pairs]
            errors += [(i, err) for _, err in scored_pairs if err is not None]
            if None in scores:
                record["skipped"] += scores.count(None)
            elif len(set(scores)) == 1:
                record["zero_signal_groups"] += 1
            else:
                rewards.append(scores)
                sequences += [(prompts[i] + s, len(prompts[i])) for s in samples]
            scored += [s for s in scores if s is not None]
        if errors:
            i, err = errors[0]
            if not scored:
                raise DataError(f"the reward function raised for every sample of step {step + 1}, e.g. for row {i}: "
                                f"{type(err).__name__}: {err}") from err
            log.warning("step %d: the reward function raised for %d samples (first, row %d: %s: %s); their groups "
                        "are skipped", step + 1, len(errors), i, type(err).__name__, err)  # fmt: skip
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
