"""Aligning the model: preference tuning (DPO) and RL with verifiable rewards (GRPO) (appendix E).

Chapter 07's instruction tuning shows the model right answers. Appendix E
(`E_alignment`) goes on with what the model itself writes, judged:

* `sequence_logprobs(model, idx, response_mask)`: log p(response | prompt) of
  a right-padded batch (B,), or per token (B, T-1); the one quantity both
  methods are built from. `response_batch` and `pair_batch` encode prompts and
  responses exactly as chapter 07 did (`minillm.instruct.encode_example`: chat
  template, the response ends with its end marker) into ids and masks.
* DPO (Rafailov et al. 2023): for pairs (prompt, chosen, rejected), raise
  log p(chosen) - log p(rejected) relative to a frozen reference copy:
  loss = -log sigmoid(beta ((pc - rc) - (pr - rr))) (`dpo_loss`). The implicit
  reward of a response is beta (log p_policy - log p_ref); `train_dpo` reports
  how often it ranks held-out pairs right, before and after.
* GRPO (Shao et al. 2024): sample a group of G answers per prompt
  (`sample_group`, one batched decode with the KV cache), score them with a
  program (`exact_match_reward`), and push up the answers better than their
  group's mean (`group_advantages`) with PPO's clipped ratio (`grpo_loss`),
  optionally held near the reference by a KL penalty. `train_grpo` is the loop.
* `looks_like_answer_reward`: a deliberately weak reward (the shape of an
  answer, not its truth), to watch a policy satisfy a reward without getting
  better at the task (reward hacking).

Both loops keep the policy in eval mode (no dropout: at step 0 the policy's
log-probs equal the reference's, so DPO's loss starts at log 2 and GRPO's
ratio at 1), use chapter 05's AdamW, schedules and clipping (`minillm.optim`),
never update the reference, and are reproducible with `seed`.
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

# ---------------------------------------------------------------------------
# Log-probabilities of responses, and batches of them
# ---------------------------------------------------------------------------


def sequence_logprobs(model: GPT, idx: torch.Tensor, response_mask: torch.Tensor, per_token: bool = False,
                      temperature: float = 1.0) -> torch.Tensor:  # fmt: skip
    """Sum over response tokens of log p(token_t | tokens_<t): (B,); or per token, (B, T-1).

    idx: (B, T) right-padded token ids; response_mask: (B, T) bool, True where
    the *token* is part of the response (token t is predicted by the logits at
    t - 1, so position 0 never is). One forward pass; gradients flow (wrap the
    reference's call in `torch.no_grad`). Right padding leaves a row's value as
    it is alone (the model is causal). `per_token=True`: (B, T-1), entry t - 1
    the log-prob of token t times the mask (0 off the response). `temperature`:
    log-probs of softmax(logits / temperature), the distribution GRPO samples from.
    """
    if idx.dim() != 2 or response_mask.shape != idx.shape:
        raise ConfigError(f"idx and response_mask must both be (B, T), got {tuple(idx.shape)} and "
                          f"{tuple(response_mask.shape)}")  # fmt: skip
    if bool(response_mask[:, 0].any()):
        raise DataError("response_mask is True at position 0: the first token has no logits predicting it")
    logits, _ = model(idx)  # (B, T, V)
    logits = logits[:, :-1].float() / temperature  # (B, T-1, V): position t - 1 predicts token t
    logp = -F.cross_entropy(logits.transpose(1, 2), idx[:, 1:], reduction="none")  # (B, T-1)
    logp = logp * response_mask[:, 1:]
    return logp if per_token else logp.sum(dim=-1)


@dataclass(frozen=True)
class PreferencePair:
    """A prompt row (a dict with `instruction` and optional `input`) and two responses, the better first."""

    prompt: dict
    chosen: str
    rejected: str


def _encode(row: dict, response: str, tokenizer: Tokenizer, context_length: int, template: str,
            where: str) -> tuple[list[int], int]:  # fmt: skip
    """(prompt + response + end ids, prompt length) by chapter 07's encoding; DataError names `where`."""
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


def pack(sequences: list[tuple[list[int], int]], pad_id: int, device=None) -> dict[str, torch.Tensor]:
    """(ids, prompt length) pairs -> {"idx": (B, T) right-padded with `pad_id`, "response_mask": (B, T) bool}."""
    if not sequences:
        raise DataError("cannot make a batch of no sequences")
    longest = max(len(ids) for ids, _ in sequences)
    idx = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), longest), dtype=torch.bool)
    for r, (ids, n) in enumerate(sequences):
        idx[r, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        mask[r, n : len(ids)] = True
    return {"idx": idx.to(device), "response_mask": mask.to(device)}


def response_batch(rows: list[dict], responses: list[str], tokenizer: Tokenizer, context_length: int,
                   template: str = "chat", pad_id: int | None = None) -> dict[str, torch.Tensor]:  # fmt: skip
    """Row i's prompt followed by responses[i] and the end marker: {"idx": (B, T), "response_mask": (B, T)}.

    Padding defaults to the template's end token (as in chapter 07). A row that
    does not fit `context_length` raises DataError with its index and sizes.
    """
    if len(rows) != len(responses):
        raise DataError(f"{len(rows)} rows but {len(responses)} responses; give one response per row")
    pad = tokenizer.special_tokens.get(end_token(template), 0) if pad_id is None else pad_id
    return pack([_encode(r, s, tokenizer, context_length, template, f"example {i}")
                 for i, (r, s) in enumerate(zip(rows, responses))], pad)  # fmt: skip


def _encode_pairs(pairs: list[PreferencePair], tokenizer: Tokenizer, context_length: int,
                  template: str) -> list[tuple[tuple[list[int], int], tuple[list[int], int]]]:  # fmt: skip
    """Each pair's (chosen, rejected) encodings; DataError names the pair that cannot be used."""
    encoded = []
    for i, p in enumerate(pairs):
        if p.chosen.strip() == p.rejected.strip():
            raise DataError(f"pair {i}: chosen and rejected are the same response ({p.chosen!r}); a preference "
                            "needs two different responses: drop the pair")  # fmt: skip
        encoded.append((_encode(p.prompt, p.chosen, tokenizer, context_length, template, f"pair {i} (chosen)"),
                        _encode(p.prompt, p.rejected, tokenizer, context_length, template, f"pair {i} (rejected)")))
    return encoded


def pair_batch(pairs: list[PreferencePair], tokenizer: Tokenizer, context_length: int, template: str = "chat",
               pad_id: int | None = None) -> dict[str, torch.Tensor]:  # fmt: skip
    """{"chosen_idx", "chosen_mask", "rejected_idx", "rejected_mask"}, each (B, T), padded to one T.

    Bad input raises DataError naming the pair: chosen == rejected (after
    stripping whitespace), or a response that does not fit `context_length`.
    """
    pad = tokenizer.special_tokens.get(end_token(template), 0) if pad_id is None else pad_id
    encoded = _encode_pairs(pairs, tokenizer, context_length, template)
    batch = pack([c for c, _ in encoded] + [r for _, r in encoded], pad)
    b = len(pairs)
    return {"chosen_idx": batch["idx"][:b], "chosen_mask": batch["response_mask"][:b],
            "rejected_idx": batch["idx"][b:], "rejected_mask": batch["response_mask"][b:]}  # fmt: skip


# ---------------------------------------------------------------------------
# DPO
# ---------------------------------------------------------------------------


def dpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor, ref_chosen_logps: torch.Tensor,
             ref_rejected_logps: torch.Tensor, beta: float = 0.1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """(loss, chosen_rewards (B,), rejected_rewards (B,)) of DPO; all inputs (B,) sequence log-probs.

    loss = mean of -log sigmoid(beta ((pc - rc) - (pr - rr))), computed with
    `logsigmoid` (no overflow for large margins); rewards = beta (policy - ref),
    detached (for reporting).
    """
    if not (isinstance(beta, numbers.Real) and beta > 0 and math.isfinite(beta)):
        raise ConfigError(f"beta must be a finite number > 0 (about 0.1), got {beta!r}")
    shapes = {tuple(t.shape) for t in (policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                                       ref_rejected_logps)}  # fmt: skip
    if len(shapes) != 1:
        raise ConfigError(f"the four log-prob tensors must have one shape (B,), got {sorted(shapes)}")
    chosen = policy_chosen_logps - ref_chosen_logps
    rejected = policy_rejected_logps - ref_rejected_logps
    loss = -F.logsigmoid(beta * (chosen - rejected)).mean()
    return loss, (beta * chosen).detach(), (beta * rejected).detach()


@dataclass
class DPOConfig:
    """DPO's settings; defaults suit the book's chat model on a CPU."""

    beta: float = 0.1  # how far the policy may move from the reference: small = far
    lr: float = 1e-4
    steps: int = 40
    batch_size: int = 8  # pairs a step
    warmup_steps: int = 0
    schedule: str = "constant"  # minillm.optim.SCHEDULES (cosine decays to lr / 10)
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # 0 disables clipping
    sft_coef: float = 0.0  # > 0 adds sft_coef x the chosen responses' mean token NLL (RPO, Pang et al. 2024)
    template: str = "chat"
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        if not self.sft_coef >= 0:
            raise ConfigError(f"sft_coef must be >= 0, got {self.sft_coef!r}")
        if not (self.beta > 0 and math.isfinite(self.beta)):
            raise ConfigError(f"beta must be a finite number > 0 (about 0.1), got {self.beta!r}")
        _check_loop(self.lr, self.steps, self.batch_size, self.schedule, self.grad_clip, self.weight_decay)
        if not 0 <= self.warmup_steps <= self.steps:
            raise ConfigError(f"warmup_steps must be in [0, steps={self.steps}], got {self.warmup_steps}")


def _check_loop(lr, steps, batch, schedule, grad_clip, weight_decay) -> None:
    if not lr > 0 or not isinstance(steps, int) or steps < 1 or not isinstance(batch, int) or batch < 1:
        raise ConfigError(f"need lr > 0 and integers steps >= 1, batch >= 1; got lr={lr}, steps={steps}, "
                          f"batch={batch}")  # fmt: skip
    if schedule not in SCHEDULES or grad_clip < 0 or weight_decay < 0:
        raise ConfigError(f"schedule must be one of {SCHEDULES} (got {schedule!r}); grad_clip and weight_decay "
                          f"must be >= 0 (got {grad_clip}, {weight_decay})")  # fmt: skip


@dataclass
class DPOResult:
    """What `train_dpo` returns. `eval_before`/`eval_after`: `preference_stats` on eval_pairs (None without)."""

    policy: GPT
    history: list[dict] = field(default_factory=list)  # per step: loss, reward_accuracy, margin, lr
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
def pair_logprobs(model: GPT, encoded: list, pad_id: int, batch_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen (N,), rejected (N,)) sequence log-probs of encoded pairs (`_encode_pairs`), without gradients."""
    device = next(model.parameters()).device
    chosen, rejected = [], []
    for s in range(0, len(encoded), batch_size):
        part = encoded[s : s + batch_size]
        batch = pack([c for c, _ in part] + [r for _, r in part], pad_id, device)
        logps = sequence_logprobs(model, batch["idx"], batch["response_mask"])
        chosen.append(logps[: len(part)])
        rejected.append(logps[len(part) :])
    return torch.cat(chosen), torch.cat(rejected)


def preference_stats(pc: torch.Tensor, pr: torch.Tensor, rc: torch.Tensor, rr: torch.Tensor,
                     beta: float) -> dict[str, float]:  # fmt: skip
    """How well log-probs (each (N,)) rank pairs: the implicit reward's accuracy and margin, and p's own.

    reward_accuracy: share of pairs with chosen reward > rejected reward
    (strictly: a policy equal to its reference scores 0, all ties);
    margin: mean chosen minus rejected reward; logp_accuracy: share with
    log p(chosen) > log p(rejected) under the policy alone.
    """
    margins = beta * ((pc - rc) - (pr - rr))
    return {"reward_accuracy": float((margins > 0).float().mean()), "margin": float(margins.mean()),
            "logp_accuracy": float((pc > pr).float().mean())}  # fmt: skip


def train_dpo(policy: GPT, reference: GPT, pairs: list[PreferencePair], tokenizer: Tokenizer, config: DPOConfig,
              eval_pairs: list[PreferencePair] | None = None) -> DPOResult:  # fmt: skip
    """Train `policy` with DPO against the frozen `reference` on `pairs` for `config.steps` steps.

    All pairs are encoded and checked first (bad pairs raise DataError before
    any step); the reference's log-probs are computed once (it never changes).
    Each step draws `batch_size` pairs (an epoch-wise shuffle from `seed`),
    runs the policy on chosen and rejected rows in one forward pass, and takes
    an AdamW step (`minillm.optim`). The policy is trained in place and returned.
    """
    t0 = time.perf_counter()
    _check_models(policy, reference)
    if not pairs:
        raise DataError("train_dpo needs at least one preference pair")
    device = resolve_device(config.device)
    policy.to(device).eval()
    reference.to(device).eval()
    ctx, pad = policy.config.context_length, tokenizer.special_tokens.get(end_token(config.template), 0)
    train = _encode_pairs(pairs, tokenizer, ctx, config.template)
    held = _encode_pairs(eval_pairs, tokenizer, ctx, config.template) if eval_pairs else None
    ref_c, ref_r = pair_logprobs(reference, train, pad)
    ref_eval = pair_logprobs(reference, held, pad) if held else None
    result = DPOResult(policy)
    if held:
        result.eval_before = preference_stats(*pair_logprobs(policy, held, pad), *ref_eval, config.beta)
    optimizer = make_optimizer(policy, config.lr, config.weight_decay)
    params = [p for p in policy.parameters() if p.requires_grad]
    order = _Shuffle(len(pairs), config.seed)
    for step in range(config.steps):
        lr = lr_at(step, config.schedule, config.lr, config.steps, config.warmup_steps, config.lr / 10)
        for group in optimizer.param_groups:
            group["lr"] = lr
        chosen = order.take(config.batch_size)
        batch = pack([train[i][0] for i in chosen] + [train[i][1] for i in chosen], pad, device)
        logps = sequence_logprobs(policy, batch["idx"], batch["response_mask"])  # (2B,): chosen, then rejected
        b = len(chosen)
        loss, rc, rr = dpo_loss(logps[:b], logps[b:], ref_c[chosen], ref_r[chosen], config.beta)
        nll = -(logps[:b] / batch["response_mask"][:b].sum(dim=1)).mean()  # per token of the chosen responses
        (loss + config.sft_coef * nll if config.sft_coef > 0 else loss).backward()
        if config.grad_clip > 0:
            clip_grad_norm(params, config.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        result.history.append({"step": step + 1, "loss": float(loss.detach()), "reward_accuracy": float((rc > rr).float().mean()),
                               "margin": float((rc - rr).mean()), "nll": float(nll.detach()), "lr": lr})  # fmt: skip
    if held:
        result.eval_after = preference_stats(*pair_logprobs(policy, held, pad), *ref_eval, config.beta)
    result.seconds = time.perf_counter() - t0
    return result


class _Shuffle:
    """Indices 0..n-1 in a fresh random order each epoch, drawn from a generator seeded with `seed`."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.gen, self.queue = n, torch.Generator().manual_seed(seed), []

    def take(self, k: int) -> list[int]:
        out = []
        while len(out) < k:
            if not self.queue:
                self.queue = torch.randperm(self.n, generator=self.gen).tolist()
            out.append(self.queue.pop(0))
        return out


# ---------------------------------------------------------------------------
# GRPO
# ---------------------------------------------------------------------------


def group_advantages(rewards: torch.Tensor, eps: float = 1e-4, scale: bool = True) -> torch.Tensor:
    """Rewards (P, G) of P groups of G samples -> advantages (P, G): (r - group mean) / (group std + eps).

    The std is the population one (divide by G, no Bessel correction), so a
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
    """G sampled responses to one prompt, each a list of token ids ending with the end marker (if reached).

    The G copies of the prompt are decoded together in one batch with the KV
    cache (`minillm.generate.stream`; equal prompts need no padding), sampling
    from softmax(logits / temperature) with no top-k/top-p (the loss's log-probs
    are of that same distribution). `generator` on the model's device (None:
    torch's global RNG). The prompt plus `max_new_tokens` must fit the context.
    """
    if not isinstance(group_size, int) or group_size < 1:
        raise ConfigError(f"group_size must be an integer >= 1, got {group_size!r}")
    ids = prompt_ids(row, tokenizer, template)
    if len(ids) + max_new_tokens > model.config.context_length:
        raise DataError(f"a prompt of {len(ids)} tokens + max_new_tokens={max_new_tokens} exceeds the context of "
                        f"{model.config.context_length}; lower max_new_tokens or shorten the prompt")  # fmt: skip
    end = tokenizer.special_tokens[end_token(template)]
    device = next(model.parameters()).device
    idx = torch.tensor([ids] * group_size, dtype=torch.long, device=device)  # (G, T)
    steps = list(stream(model, idx, max_new_tokens, temperature, stop_tokens=[end], generator=generator))
    if not steps:
        return [[] for _ in range(group_size)]
    new = torch.stack(steps, dim=1).tolist()  # (G, n)
    return [seq[: seq.index(end) + 1] if end in seq else seq for seq in new]


def grpo_loss(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
              clip_eps: float = 0.2, kl_coef: float = 0.0,
              ref_logps: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:  # fmt: skip
    """(loss, {"kl", "clip_fraction"}) of GRPO; logps, old_logps, ref_logps, mask (N, T-1), advantages (N,).

    Per response token: ratio = exp(logp - old_logp); objective
    min(ratio A, clip(ratio, 1 - clip_eps, 1 + clip_eps) A) (PPO's clip: no
    gain from moving a token's probability further than clip_eps in the
    advantage's direction), minus kl_coef times the k3 estimate of KL(policy || ref),
    exp(ref - logp) - (ref - logp) - 1 (>= 0, unbiased). The loss is minus that,
    averaged over each sequence's response tokens, then over sequences (GRPO's
    1/|o_i| form: every answer weighs the same, whatever its length). `kl` is
    the k3 average the same way (NaN without ref_logps); `clip_fraction` the
    share of response tokens whose clipped term was the smaller one.
    """
    if not (logps.shape == old_logps.shape == mask.shape and advantages.shape == logps.shape[:1]):
        raise ConfigError(f"need logps, old_logps, mask (N, T-1) and advantages (N,); got {tuple(logps.shape)}, "
                          f"{tuple(old_logps.shape)}, {tuple(mask.shape)}, {tuple(advantages.shape)}")  # fmt: skip
    if kl_coef > 0 and ref_logps is None:
        raise ConfigError("kl_coef > 0 needs ref_logps (the reference model's per-token log-probs)")
    mask = mask.float()
    ratio = torch.exp(logps - old_logps)
    adv = advantages[:, None]
    clipped = torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * adv
    per_token = -torch.minimum(ratio * adv, clipped)
    kl = None
    if ref_logps is not None:
        delta = ref_logps - logps
        kl = torch.exp(delta) - delta - 1
        per_token = per_token + kl_coef * kl
    count = mask.sum(dim=1).clamp(min=1)  # response tokens per sequence

    def average(x: torch.Tensor) -> torch.Tensor:
        return ((x * mask).sum(dim=1) / count).mean()

    clip_active = ((ratio * adv) > clipped).float()
    info = {"kl": float(average(kl.detach())) if kl is not None else math.nan,
            "clip_fraction": float((clip_active * mask).sum() / mask.sum().clamp(min=1))}  # fmt: skip
    return average(per_token), info


@dataclass
class GRPOConfig:
    """GRPO's settings; defaults suit the book's chat model on a CPU."""

    group_size: int = 8  # G samples a prompt
    prompts_per_step: int = 4
    steps: int = 20
    lr: float = 1e-4
    temperature: float = 1.0
    max_new_tokens: int = 24
    clip_eps: float = 0.2
    kl_coef: float = 0.0  # > 0 needs a reference model
    inner_updates: int = 1  # optimizer steps on each sampled batch (> 1: the ratio and the clip matter)
    scale_rewards: bool = True  # divide by the group's std (False: Dr. GRPO)
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    template: str = "chat"
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        if not isinstance(self.group_size, int) or self.group_size < 2:
            raise ConfigError(f"group_size must be an integer >= 2 (advantages compare samples of one prompt), "
                              f"got {self.group_size!r}")  # fmt: skip
        _check_loop(self.lr, self.steps, self.prompts_per_step, "constant", self.grad_clip, self.weight_decay)
        if not (self.temperature > 0 and self.max_new_tokens >= 1 and self.clip_eps > 0 and self.kl_coef >= 0
                and isinstance(self.inner_updates, int) and self.inner_updates >= 1):  # fmt: skip
            raise ConfigError("need temperature > 0, max_new_tokens >= 1, clip_eps > 0, kl_coef >= 0 and "
                              f"inner_updates >= 1; got {self.temperature}, {self.max_new_tokens}, {self.clip_eps}, "
                              f"{self.kl_coef}, {self.inner_updates}")  # fmt: skip


@dataclass
class GRPOResult:
    """What `train_grpo` returns: the policy, one record a step, totals, and the wall time."""

    policy: GPT
    history: list[dict] = field(default_factory=list)
    skipped: int = 0  # samples whose reward function raised (their groups were dropped)
    zero_signal_groups: int = 0  # groups whose rewards were all equal (advantage 0: no update from them)
    seconds: float = 0.0


def _reward(reward_fn: Callable[[dict, str], float], row: dict, text: str, where: str) -> float | None:
    """reward_fn(row, text) as a float; None when it raised (a counted skip); DataError for NaN, inf, non-numbers."""
    try:
        value = reward_fn(row, text)
    except Exception as err:  # a bug or an unparseable answer in the user's reward: skip, count, go on
        log.warning("reward function raised for %s (%s: %s); its group is skipped", where, type(err).__name__, err)
        return None
    if not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise DataError(f"the reward function returned {value!r} for {where}; a reward must be a finite number")
    return float(value)


def train_grpo(policy: GPT, reference: GPT | None, rows: list[dict], tokenizer: Tokenizer,
               reward_fn: Callable[[dict, str], float], config: GRPOConfig) -> GRPOResult:  # fmt: skip
    """Train `policy` with GRPO on prompt `rows`, scored by `reward_fn(row, response_text) -> float`.

    Each step: `prompts_per_step` rows (an epoch-wise shuffle from `seed`), G
    samples each (`sample_group`), rewards, `group_advantages`. Groups with a
    sample whose reward function raised are dropped (`skipped` counts the
    samples); groups with equal rewards carry no signal and are left out of the
    update (`zero_signal_groups`). The rest form one batch: `inner_updates`
    AdamW steps on `grpo_loss` (log-probs at the sampling temperature). The
    reference (None allowed when kl_coef is 0) gives the KL estimate. History
    per step: reward_mean, reward_one (share of rewards == 1), kl,
    clip_fraction, loss, skipped, zero_signal_groups, updated, seconds.
    """
    t0 = time.perf_counter()
    _check_models(policy, reference)
    if config.kl_coef > 0 and reference is None:
        raise ConfigError("kl_coef > 0 needs a reference model (a frozen copy of the starting policy)")
    if not rows:
        raise DataError("train_grpo needs at least one prompt row")
    device = resolve_device(config.device)
    policy.to(device).eval()
    if reference is not None:
        reference.to(device).eval()
    ctx, end, g = policy.config.context_length, tokenizer.special_tokens[end_token(config.template)], config.group_size
    prompts = [prompt_ids(r, tokenizer, config.template) for r in rows]
    for i, ids in enumerate(prompts):
        if len(ids) + config.max_new_tokens > ctx:
            raise DataError(f"row {i}: a prompt of {len(ids)} tokens + max_new_tokens={config.max_new_tokens} "
                            f"exceeds the context of {ctx}; drop the row or lower max_new_tokens")  # fmt: skip
    optimizer = make_optimizer(policy, config.lr, config.weight_decay)
    params = [p for p in policy.parameters() if p.requires_grad]
    order, sampler = _Shuffle(len(rows), config.seed), torch.Generator(device=device).manual_seed(config.seed)
    result = GRPOResult(policy)
    for step in range(config.steps):
        t_step = time.perf_counter()
        record = {"step": step + 1, "skipped": 0, "zero_signal_groups": 0, "updated": False}
        rewards, sequences, all_rewards = [], [], []
        for i in order.take(config.prompts_per_step):
            samples = sample_group(policy, tokenizer, rows[i], g, config.max_new_tokens, config.temperature,
                                   sampler, config.template)  # fmt: skip
            texts = [tokenizer.decode([t for t in s if t != end]) for s in samples]
            scores = [_reward(reward_fn, rows[i], t, f"row {i}, sample {j}") for j, t in enumerate(texts)]
            if None in scores:
                record["skipped"] += scores.count(None)
                continue
            all_rewards += scores
            if len(set(scores)) == 1:
                record["zero_signal_groups"] += 1
                continue
            rewards.append(scores)
            sequences += [(prompts[i] + s, len(prompts[i])) for s in samples]
        record["reward_mean"] = sum(all_rewards) / len(all_rewards) if all_rewards else math.nan
        record["reward_one"] = sum(r == 1 for r in all_rewards) / len(all_rewards) if all_rewards else math.nan
        record.update(kl=math.nan, clip_fraction=math.nan, loss=math.nan)
        if rewards:
            adv = group_advantages(torch.tensor(rewards), scale=config.scale_rewards).flatten().to(device)
            batch = pack(sequences, end, device)
            idx, mask = batch["idx"], batch["response_mask"]
            with torch.no_grad():
                ref = None if reference is None else sequence_logprobs(reference, idx, mask, True, config.temperature)
                old = None if config.inner_updates == 1 else sequence_logprobs(policy, idx, mask, True,
                                                                               config.temperature)  # fmt: skip
            for _ in range(config.inner_updates):
                logps = sequence_logprobs(policy, idx, mask, True, config.temperature)  # (N, T-1)
                loss, info = grpo_loss(logps, logps.detach() if old is None else old, adv, mask[:, 1:],
                                       config.clip_eps, config.kl_coef, ref)  # fmt: skip
                loss.backward()
                if config.grad_clip > 0:
                    clip_grad_norm(params, config.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
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
    """1.0 for any integer or Python list of integers, right or wrong: a weak reward, for reward hacking."""
    return float(_ANSWER_SHAPE.fullmatch(text.strip()) is not None)


def length_reward(row: dict, text: str, chars: int = 40) -> float:
    """len(response) / chars, at most 1: "longer looks more thorough", the length bias of learned reward models."""
    return min(len(text.strip()), chars) / chars
