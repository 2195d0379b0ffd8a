"""Aligning the model: preference tuning (DPO) and RL with verifiable rewards (GRPO) (appendix E).

Chapter 07 showed the model right answers; appendix E (`E_alignment`) trains
on what the model itself writes, judged:

* `sequence_logprobs(model, idx, response_mask)`: log p(response | prompt) of
  a right-padded batch, (B,) or per token (B, T-1), the quantity both methods
  are built from. `response_batch` and `pair_batch` encode prompts and
  responses exactly as chapter 07 did (`minillm.instruct.encode_example`: the
  template's prompt, the response, its end marker).
* DPO (Rafailov et al. 2023): for pairs (prompt, chosen, rejected) raise
  log p(chosen) - log p(rejected) relative to a frozen reference copy,
  loss = -log sigmoid(beta ((pc - rc) - (pr - rr))) (`dpo_loss`). The implicit
  reward of a response is beta (log p_policy - log p_ref); `train_dpo` reports
  how often it ranks held-out pairs right. DPO may lower both log-probs (only
  their difference counts); `DPOConfig.sft_coef` adds the chosen responses'
  NLL to hold them up (RPO, Pang et al. 2024).
* GRPO (Shao et al. 2024): sample a group of G answers per prompt
  (`sample_group`, one batched decode with the KV cache), score each with a
  program (`exact_match_reward`), and push up the answers better than their
  group's mean (`group_advantages`) with PPO's clipped ratio (`grpo_loss`),
  optionally held near the reference by a KL penalty. `train_grpo` is the loop.
* Weak rewards, to watch a policy satisfy a reward without getting better at
  the task (reward hacking): `looks_like_answer_reward` (the shape of an
  answer) and `length_reward` (longer is better).

Both loops keep the policy in eval mode (no dropout: at step 0 its log-probs
equal the reference's, so DPO's loss starts at log 2 and GRPO's ratio at 1),
use chapter 05's AdamW and clipping (`minillm.optim`), never update the
reference, and are reproducible with `seed`.
"""

from __future__ import annotations

import logging
import math
import numbers
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from minillm.device import resolve_device
from minillm.errors import ConfigError, DataError
from minillm.generate import stream
from minillm.instruct import encode_example, end_token
from minillm.model import GPT
from minillm.optim import SCHEDULES, clip_grad_norm, lr_at, make_optimizer
from minillm.tokenizer import Tokenizer

log = logging.getLogger(__name__)
Encoded = tuple[list[int], int]  # (prompt + response + end token ids, number of prompt tokens)

# ---------------------------------------------------------------------------
# Log-probabilities of responses, and batches of them
# ---------------------------------------------------------------------------


def sequence_logprobs(model: GPT, idx: torch.Tensor, response_mask: torch.Tensor, per_token: bool = False,
                      temperature: float = 1.0) -> torch.Tensor:  # fmt: skip
    """Sum over response tokens of log p(token_t | tokens_<t), (B,); or per token, (B, T-1).

    idx: (B, T) right-padded ids; response_mask: (B, T) bool, True where the
    *token* belongs to the response (token t is predicted by the logits at
    t - 1, so position 0 never does). One forward pass; gradients flow (wrap a
    reference's call in `torch.no_grad`). Right padding leaves a row's value as
    it is alone (the model is causal). `per_token`: entry t - 1 is the log-prob
    of token t times the mask. `temperature`: of softmax(logits / temperature).
    """
    if idx.dim() != 2 or response_mask.shape != idx.shape:
        raise ConfigError(f"idx and response_mask must both be (B, T), got {tuple(idx.shape)} and "
                          f"{tuple(response_mask.shape)}")  # fmt: skip
    _check(temperature > 0, f"temperature must be > 0, got {temperature!r}")
    if bool(response_mask[:, 0].any()):
        raise DataError("response_mask is True at position 0: the first token has no logits predicting it")
    logits, _ = model(idx)  # (B, T, V)
    logits = logits[:, :-1].float() / temperature  # (B, T-1, V): position t - 1 predicts token t
    logp = -F.cross_entropy(logits.transpose(1, 2), idx[:, 1:], reduction="none") * response_mask[:, 1:]
    return logp if per_token else logp.sum(dim=-1)


@dataclass(frozen=True)
class PreferencePair:
    """A prompt row (a dict with `instruction` and optional `input`) and two responses, the better first."""

    prompt: dict
    chosen: str
    rejected: str


def _encode(row: dict, response: str, tokenizer: Tokenizer, context_length: int, template: str,
            where: str) -> Encoded:  # fmt: skip
    """Chapter 07's encoding of row + response; a DataError names `where` and the sizes."""
    try:
        ids, n = encode_example({**row, "output": response}, tokenizer, template)
    except DataError as err:
        raise DataError(f"{where}: {err}") from None
    if len(ids) > context_length:
        raise DataError(f"{where}: {len(ids)} tokens (prompt {n} + response {len(ids) - n}) do not fit the "
                        f"context of {context_length}; drop it or shorten the response")  # fmt: skip
    return ids, n


def prompt_ids(row: dict, tokenizer: Tokenizer, template: str = "chat") -> list[int]:
    """The prompt's token ids, exactly as `encode_example` (and `generate_response`) encode it."""
    ids, n = encode_example({**row, "output": "."}, tokenizer, template)  # the prompt is encoded on its own
    return ids[:n]


def pack(sequences: list[Encoded], pad_id: int, device=None) -> dict[str, torch.Tensor]:
    """(ids, prompt length) pairs -> {"idx": (B, T) right-padded with `pad_id`, "response_mask": (B, T) bool}."""
    if not sequences:
        raise DataError("cannot make a batch of no sequences")
    idx = torch.full((len(sequences), max(len(ids) for ids, _ in sequences)), pad_id, dtype=torch.long)
    mask = torch.zeros(idx.shape, dtype=torch.bool)
    for r, (ids, n) in enumerate(sequences):
        idx[r, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        mask[r, n : len(ids)] = True
    return {"idx": idx.to(device), "response_mask": mask.to(device)}


def _pad(tokenizer: Tokenizer, template: str, pad_id: int | None) -> int:
    return tokenizer.special_tokens.get(end_token(template), 0) if pad_id is None else pad_id  # chapter 07 pads so


def response_batch(rows: list[dict], responses: list[str], tokenizer: Tokenizer, context_length: int,
                   template: str = "chat", pad_id: int | None = None) -> dict[str, torch.Tensor]:  # fmt: skip
    """Row i's prompt + responses[i] + end marker: {"idx": (B, T), "response_mask": (B, T)}.

    Padding defaults to the template's end token. A row that does not fit
    `context_length` (or has an empty response) raises DataError with its index.
    """
    if len(rows) != len(responses):
        raise DataError(f"{len(rows)} rows but {len(responses)} responses; give one response per row")
    return pack([_encode(r, s, tokenizer, context_length, template, f"example {i}")
                 for i, (r, s) in enumerate(zip(rows, responses))], _pad(tokenizer, template, pad_id))  # fmt: skip


def _encode_pairs(pairs: list[PreferencePair], tokenizer: Tokenizer, context_length: int,
                  template: str) -> list[tuple[Encoded, Encoded]]:  # fmt: skip
    """Each pair's (chosen, rejected) encodings; a DataError names the pair that cannot be used."""
    out = []
    for i, p in enumerate(pairs):
        if p.chosen.strip() == p.rejected.strip():
            raise DataError(f"pair {i}: chosen and rejected are the same response ({p.chosen!r}); a preference "
                            "needs two different responses: drop the pair")  # fmt: skip
        out.append((_encode(p.prompt, p.chosen, tokenizer, context_length, template, f"pair {i} (chosen)"),
                    _encode(p.prompt, p.rejected, tokenizer, context_length, template, f"pair {i} (rejected)")))
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
    batch = _pack_pairs(_encode_pairs(pairs, tokenizer, context_length, template), _pad(tokenizer, template, pad_id))
    b = len(pairs)
    return {"chosen_idx": batch["idx"][:b], "chosen_mask": batch["response_mask"][:b],
            "rejected_idx": batch["idx"][b:], "rejected_mask": batch["response_mask"][b:]}  # fmt: skip


# ---------------------------------------------------------------------------
# DPO
# ---------------------------------------------------------------------------


def dpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor, ref_chosen_logps: torch.Tensor,
             ref_rejected_logps: torch.Tensor,
             beta: float = 0.1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """(loss, chosen_rewards (B,), rejected_rewards (B,)) of DPO; all four inputs (B,) sequence log-probs.

    loss = mean of -log sigmoid(beta ((pc - rc) - (pr - rr))), by `logsigmoid`
    (no overflow at large margins); rewards = beta (policy - ref), detached.
    """
    if not (isinstance(beta, numbers.Real) and beta > 0 and math.isfinite(beta)):
        raise ConfigError(f"beta must be a finite number > 0 (about 0.1), got {beta!r}")
    logps = (policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    if len({tuple(t.shape) for t in logps}) != 1:
        raise ConfigError(f"the four log-prob tensors must have one shape (B,), got {[tuple(t.shape) for t in logps]}")
    chosen, rejected = policy_chosen_logps - ref_chosen_logps, policy_rejected_logps - ref_rejected_logps
    loss = -F.logsigmoid(beta * (chosen - rejected)).mean()
    return loss, (beta * chosen).detach(), (beta * rejected).detach()


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


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
        _check(self.beta > 0 and math.isfinite(self.beta), f"beta must be a finite number > 0, got {self.beta!r}")
        _check(self.lr > 0 and self.sft_coef >= 0, f"need lr > 0 and sft_coef >= 0, got {self.lr}, {self.sft_coef}")
        _check(isinstance(self.steps, int) and self.steps >= 1 and isinstance(self.batch_size, int)
               and self.batch_size >= 1, f"steps and batch_size must be integers >= 1, got {self.steps}, "
               f"{self.batch_size}")  # fmt: skip
        _check(self.schedule in SCHEDULES and 0 <= self.warmup_steps <= self.steps, f"schedule must be one of "
               f"{SCHEDULES} and 0 <= warmup_steps <= steps; got {self.schedule!r}, {self.warmup_steps}")  # fmt: skip
        _check(self.grad_clip >= 0 and self.weight_decay >= 0, "grad_clip and weight_decay must be >= 0")


@dataclass
class DPOResult:
    """What `train_dpo` returns; `eval_before`/`eval_after`: `preference_stats` on eval_pairs (None without)."""

    policy: GPT
    history: list[dict] = field(default_factory=list)  # per step: loss, reward_accuracy, margin, nll, lr
    eval_before: dict | None = None
    eval_after: dict | None = None
    seconds: float = 0.0


def _check_models(policy: GPT, reference: GPT | None) -> None:
    if not isinstance(policy, GPT) or not (reference is None or isinstance(reference, GPT)):
        raise TypeError("policy and reference must be minillm GPT models")
    if reference is not None and {id(p) for p in policy.parameters()} & {id(p) for p in reference.parameters()}:
        raise ConfigError("the reference is (or shares weights with) the policy; pass a frozen copy: "
                          "reference = copy.deepcopy(policy)")  # fmt: skip


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
    _check_models(policy, reference)
    if not pairs:
        raise DataError("train_dpo needs at least one preference pair")
    device = resolve_device(config.device)
    policy.to(device).eval()
    reference.to(device).eval()
    ctx, pad = policy.config.context_length, _pad(tokenizer, config.template, None)
    train = _encode_pairs(pairs, tokenizer, ctx, config.template)
    held = _encode_pairs(eval_pairs, tokenizer, ctx, config.template) if eval_pairs else None
    ref_c, ref_r = _pair_logprobs(reference, train, pad)
    result = DPOResult(policy)
    if held:
        ref_held = _pair_logprobs(reference, held, pad)
        result.eval_before = preference_stats(*_pair_logprobs(policy, held, pad), *ref_held, config.beta)
    optimizer = make_optimizer(policy, config.lr, config.weight_decay)
    order = _Shuffle(len(pairs), config.seed)
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
        (loss + config.sft_coef * nll).backward()
        _step(optimizer, policy, config.grad_clip)
        result.history.append({"step": step + 1, "loss": float(loss.detach()), "margin": float((rc - rr).mean()),
                               "reward_accuracy": float((rc > rr).float().mean()), "nll": float(nll.detach()),
                               "lr": lr})  # fmt: skip
    if held:
        result.eval_after = preference_stats(*_pair_logprobs(policy, held, pad), *ref_held, config.beta)
    result.seconds = time.perf_counter() - t0
    return result


def _step(optimizer: torch.optim.Optimizer, model: GPT, grad_clip: float) -> None:
    """Clip the gradients (grad_clip > 0), take the optimizer step, clear the gradients."""
    if grad_clip > 0:
        clip_grad_norm([p for p in model.parameters() if p.requires_grad], grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


class _Shuffle:
    """Indices 0..n-1 in a fresh random order each epoch, from a generator seeded with `seed`."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.gen, self.queue = n, torch.Generator().manual_seed(seed), []

    def take(self, k: int) -> list[int]:
        out = []
        while len(out) < k:
            self.queue = self.queue or torch.randperm(self.n, generator=self.gen).tolist()
            out.append(self.queue.pop(0))
        return out


# ---------------------------------------------------------------------------
# GRPO
# ---------------------------------------------------------------------------


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


@torch.no_grad()
def sample_group(model: GPT, tokenizer: Tokenizer, row: dict, group_size: int, max_new_tokens: int,
                 temperature: float = 1.0, generator: torch.Generator | None = None,
                 template: str = "chat") -> list[list[int]]:  # fmt: skip
    """G sampled responses to one prompt: token id lists, each ending with the end marker if it was reached.

    The G copies of the prompt are decoded together in one batch with the KV
    cache (`minillm.generate.stream`; equal prompts need no padding), from
    softmax(logits / temperature) without top-k/top-p (the distribution whose
    log-probs GRPO trains). `generator`: on the model's device (None: torch's
    global RNG). The prompt plus `max_new_tokens` must fit the context.
    """
    _check(isinstance(group_size, int) and group_size >= 1, f"group_size must be an integer >= 1, got {group_size!r}")
    ids = prompt_ids(row, tokenizer, template)
    if len(ids) + max_new_tokens > model.config.context_length:
        raise DataError(f"a prompt of {len(ids)} tokens + max_new_tokens={max_new_tokens} exceeds the context of "
                        f"{model.config.context_length}; lower max_new_tokens or shorten the prompt")  # fmt: skip
    end = tokenizer.special_tokens[end_token(template)]
    idx = torch.tensor([ids] * group_size, dtype=torch.long, device=next(model.parameters()).device)  # (G, T)
    steps = list(stream(model, idx, max_new_tokens, temperature, stop_tokens=[end], generator=generator))
    new = torch.stack(steps, dim=1).tolist() if steps else [[] for _ in range(group_size)]  # (G, n)
    return [seq[: seq.index(end) + 1] if end in seq else seq for seq in new]


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
    _check(kl_coef == 0 or ref_logps is not None, "kl_coef > 0 needs ref_logps (the reference's log-probs)")
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
        _check(all(isinstance(n, int) for n in ints) and self.group_size >= 2 and min(ints[1:]) >= 1,
               f"need group_size >= 2 (advantages compare samples of one prompt) and prompts_per_step, steps, "
               f"max_new_tokens, inner_updates >= 1, all integers; got {ints}")  # fmt: skip
        _check(self.lr > 0 and self.temperature > 0 and self.clip_eps > 0 and self.kl_coef >= 0, "need lr, "
               f"temperature, clip_eps > 0 and kl_coef >= 0; got {self.lr}, {self.temperature}, {self.clip_eps}, "
               f"{self.kl_coef}")  # fmt: skip
        _check(self.grad_clip >= 0 and self.weight_decay >= 0, "grad_clip and weight_decay must be >= 0")


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
    _check_models(policy, reference)
    _check(config.kl_coef == 0 or reference is not None, "kl_coef > 0 needs a reference model (a frozen copy of "
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
    order, sampler = _Shuffle(len(rows), config.seed), torch.Generator(device=device).manual_seed(config.seed)
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
                _step(optimizer, policy, config.grad_clip)
            record.update(loss=float(loss.detach()), updated=True, **info)
        result.skipped += record["skipped"]
        result.zero_signal_groups += record["zero_signal_groups"]
        record["seconds"] = time.perf_counter() - t_step
        result.history.append(record)
    result.seconds = time.perf_counter() - t0
    return result


# ---------------------------------------------------------------------------
# Rewards: a program checks the answer
# ---------------------------------------------------------------------------


def exact_match_reward(row: dict, text: str) -> float:
    """1.0 when the stripped response equals the row's `output` (stripped), else 0.0."""
    return float(text.strip() == str(row["output"]).strip())


_ANSWER_SHAPE = re.compile(r"-?\d+|\[\s*(-?\d+\s*(,\s*-?\d+\s*)*)?\]")


def looks_like_answer_reward(row: dict, text: str) -> float:
    """1.0 for any integer or Python list of integers, right or wrong: a weak reward (the shape of an answer)."""
    return float(_ANSWER_SHAPE.fullmatch(text.strip()) is not None)


def length_reward(row: dict, text: str, chars: int = 40) -> float:
    """min(len(response), chars) / chars, whatever it says: the length bias of learned reward models, as a reward."""
    return min(len(text.strip()), chars) / chars
