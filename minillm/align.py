"""Aligning the model, the shared pieces (appendix E): log-probs of responses, their batches, checkable rewards.

Chapter 07 showed the model right answers; appendix E (`E_alignment`) trains
on what the model itself writes, judged. Two methods, one module each, are
built from the pieces here:

* `minillm.dpo`: preference tuning (DPO, Rafailov et al. 2023) on pairs of a
  better and a worse response.
* `minillm.grpo`: reinforcement learning with verifiable rewards (GRPO, Shao
  et al. 2024) on groups of the model's own samples, scored by a program.

Here: `sequence_logprobs(model, idx, response_mask)`, log p(response | prompt)
of a right-padded batch, (B,) or per token (B, T-1), the quantity both methods
are built from; `sample_group`, G sampled answers to one prompt (GRPO's
groups, DPO's rejected answers); `response_batch` (and `pack`, `prompt_ids`) encode prompts and
responses exactly as chapter 07 did (`minillm.instruct.encode_example`: the
template's prompt, the response, its end marker); the rewards, programs that
check an answer (`exact_match_reward`) or only seem to
(`looks_like_answer_reward`, `length_reward`: for reward hacking); and the
loops' small helpers (`check_models`, `optimizer_step`, `EpochShuffle`).

Both loops keep the policy in eval mode (no dropout: at step 0 its log-probs
equal the reference's, so DPO's loss starts at log 2 and GRPO's ratio at 1),
use chapter 05's AdamW and clipping (`minillm.optim`), never update the
reference, and are reproducible with `seed`.
"""

from __future__ import annotations

import math
import numbers
import re

import numpy as np
import torch
import torch.nn.functional as F

from minillm.batching import decode_together
from minillm.errors import ConfigError, DataError
from minillm.generate import stream
from minillm.instruct import TEMPLATES, encode_example, end_token
from minillm.model import GPT
from minillm.optim import clip_grad_norm
from minillm.tokenizer import Tokenizer

Encoded = tuple[list[int], int]  # (prompt + response + end token ids, number of prompt tokens)


def require(ok: bool, message: str) -> None:
    """Raise ConfigError(message) unless `ok`: the settings checks of the loops' configs."""
    if not ok:
        raise ConfigError(message)


def is_count(value, low: int = 1) -> bool:
    """Whether `value` is an int (not a bool) >= low: steps, sizes, counts."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def is_positive(value) -> bool:
    """Whether `value` is a finite real number > 0 (not a bool): rates, temperatures, coefficients."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def is_nonnegative(value) -> bool:
    """Whether `value` is a finite real number >= 0 (not a bool): coefficients that may be switched off."""
    return is_positive(value) or (isinstance(value, numbers.Real) and not isinstance(value, bool) and value == 0)


def check_common(config) -> None:
    """The settings every loop config shares: template, seed, device (ConfigError naming the bad one)."""
    require(config.template in TEMPLATES, f"template must be one of {TEMPLATES}, got {config.template!r}")
    require(is_count(config.seed, 0), f"seed must be an integer >= 0, got {config.seed!r}")
    require(isinstance(config.device, str), f"device must be a str ('auto', 'cpu', 'cuda', ...), got {config.device!r}")
    require(is_nonnegative(config.grad_clip) and is_nonnegative(config.weight_decay),
            f"grad_clip and weight_decay must be finite numbers >= 0, got {config.grad_clip!r}, "
            f"{config.weight_decay!r}")  # fmt: skip


def check_rows(rows, name: str = "rows", output: bool = False) -> list[dict]:
    """`rows` as a list of dicts (TypeError otherwise); with `output`, each must have one (DataError naming it)."""
    if isinstance(rows, (str, bytes, dict)) or not isinstance(rows, (list, tuple)):
        raise TypeError(f"{name} must be a list of dict rows (instruction, input, output), got {type(rows).__name__}")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise TypeError(f"{name}[{i}] must be a dict row, got {type(row).__name__}")
        if output and not isinstance(row.get("output"), str):
            raise DataError(f"{name}[{i}] has no 'output' string: the right answer a reward or a pair needs")
    return list(rows)


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
    if not isinstance(idx, torch.Tensor) or not isinstance(response_mask, torch.Tensor):
        raise TypeError("idx and response_mask must be tensors (see response_batch / pack)")
    if idx.dtype.is_floating_point or idx.dtype == torch.bool or response_mask.dtype != torch.bool:
        raise TypeError(f"idx must hold integer token ids and response_mask be bool; got {idx.dtype} and "
                        f"{response_mask.dtype}")  # fmt: skip
    if idx.dim() != 2 or response_mask.shape != idx.shape:
        raise ConfigError(f"idx and response_mask must both be (B, T), got {tuple(idx.shape)} and "
                          f"{tuple(response_mask.shape)}")  # fmt: skip
    require(is_positive(temperature), f"temperature must be a finite number > 0, got {temperature!r}")
    if bool(response_mask[:, 0].any()):
        raise DataError("response_mask is True at position 0: the first token has no logits predicting it")
    device = next(model.parameters()).device
    idx, response_mask = idx.to(device, torch.long), response_mask.to(device)
    logits, _ = model(idx)  # (B, T, V)
    logits = logits[:, :-1].float() / temperature  # (B, T-1, V): position t - 1 predicts token t
    logp = -F.cross_entropy(logits.transpose(1, 2), idx[:, 1:], reduction="none") * response_mask[:, 1:]
    return logp if per_token else logp.sum(dim=-1)


def encode_response(row: dict, response: str, tokenizer: Tokenizer, context_length: int, template: str,
            where: str) -> Encoded:  # fmt: skip
    """Chapter 07's encoding of row + response; a DataError names `where` and the sizes."""
    if not isinstance(row, dict) or not isinstance(response, str):
        raise TypeError(f"{where}: need a dict row and a str response, got {type(row).__name__} and "
                        f"{type(response).__name__}")  # fmt: skip
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
    if not isinstance(row, dict):
        raise TypeError(f"a prompt row must be a dict (instruction, input), got {type(row).__name__}")
    ids, n = encode_example({**row, "output": "."}, tokenizer, template)  # the prompt is encoded on its own
    return ids[:n]


def pack(sequences: list[Encoded], pad_id: int, device=None) -> dict[str, torch.Tensor]:
    """(ids, prompt length) pairs -> {"idx": (B, T) right-padded with `pad_id`, "response_mask": (B, T) bool}."""
    if not sequences:
        raise DataError("cannot make a batch of no sequences")
    if not is_count(pad_id, 0):
        raise ConfigError(f"pad_id must be a token id (an int >= 0), got {pad_id!r}")
    for r, (ids, n) in enumerate(sequences):
        if not (is_count(n) and n < len(ids)):
            raise DataError(f"sequence {r}: {len(ids)} ids with a prompt of {n!r}; need 1 <= prompt < len(ids) (a "
                            "prompt and a response of at least one token)")  # fmt: skip
    idx = torch.full((len(sequences), max(len(ids) for ids, _ in sequences)), pad_id, dtype=torch.long)
    mask = torch.zeros(idx.shape, dtype=torch.bool)
    for r, (ids, n) in enumerate(sequences):
        idx[r, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        mask[r, n : len(ids)] = True
    return {"idx": idx.to(device), "response_mask": mask.to(device)}


def default_pad_id(tokenizer: Tokenizer, template: str, pad_id: int | None) -> int:
    """`pad_id`, or when None the template's end token, as chapter 07 pads (0 if the tokenizer lacks it)."""
    return tokenizer.special_tokens.get(end_token(template), 0) if pad_id is None else pad_id  # chapter 07 pads so


def response_batch(rows: list[dict], responses: list[str], tokenizer: Tokenizer, context_length: int,
                   template: str = "chat", pad_id: int | None = None) -> dict[str, torch.Tensor]:  # fmt: skip
    """Row i's prompt + responses[i] + end marker: {"idx": (B, T), "response_mask": (B, T)}.

    Padding defaults to the template's end token. A row that does not fit
    `context_length` (or has an empty response) raises DataError with its index.
    """
    rows = check_rows(rows)
    if isinstance(responses, str) or not isinstance(responses, (list, tuple)) or not all(
            isinstance(r, str) for r in responses):
        raise TypeError("responses must be a list of str, one per row")
    if len(rows) != len(responses):
        raise DataError(f"{len(rows)} rows but {len(responses)} responses; give one response per row")
    return pack([encode_response(r, s, tokenizer, context_length, template, f"example {i}")
                 for i, (r, s) in enumerate(zip(rows, responses))], default_pad_id(tokenizer, template, pad_id))  # fmt: skip


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
    require(is_count(group_size), f"group_size must be an integer >= 1, got {group_size!r}")
    ids = prompt_ids(row, tokenizer, template)
    if len(ids) + max_new_tokens > model.config.context_length:
        raise DataError(f"a prompt of {len(ids)} tokens + max_new_tokens={max_new_tokens} exceeds the context of "
                        f"{model.config.context_length}; lower max_new_tokens or shorten the prompt")  # fmt: skip
    end = tokenizer.special_tokens[end_token(template)]
    idx = torch.tensor([ids] * group_size, dtype=torch.long, device=next(model.parameters()).device)  # (G, T)
    steps = list(stream(model, idx, max_new_tokens, temperature, stop_tokens=[end], generator=generator))
    new = torch.stack(steps, dim=1).tolist() if steps else [[] for _ in range(group_size)]  # (G, n)
    return [seq[: seq.index(end) + 1] if end in seq else seq for seq in new]


def greedy_answers(model: GPT, tokenizer: Tokenizer, rows: list[dict], max_new_tokens: int = 24,
                   template: str = "chat", batch: int = 64) -> list[str]:  # fmt: skip
    """Each row's greedy response (stripped, without the end marker), `batch` rows decoded together.

    The prompts are encoded as in training (`prompt_ids`) and decoded with
    `minillm.batching.decode_together` at temperature 0, stopping at the
    template's end marker: the answers of `minillm.instruct.generate_response`,
    one row at a time, in a fraction of the time.
    """
    rows = check_rows(rows)
    if not rows:
        return []
    end = tokenizer.special_tokens[end_token(template)]
    prompts = [prompt_ids(r, tokenizer, template) for r in rows]
    new = decode_together(model, prompts, max_new_tokens, seeds=[0] * len(rows), temperature=0.0, stop_ids=[end],
                          rows=batch)  # fmt: skip
    return [tokenizer.decode([t for t in ids if t != end]).strip() for ids in new]


# ---------------------------------------------------------------------------
# What the loops share
# ---------------------------------------------------------------------------


def check_models(policy: GPT, reference: GPT | None, need_reference: bool = False) -> None:
    """TypeError unless both are minillm GPTs (reference None only without `need_reference`); ConfigError if
    they share weights or differ in vocabulary or context (the reference must score the policy's tokens)."""
    if not isinstance(policy, GPT) or not (reference is None or isinstance(reference, GPT)):
        raise TypeError("policy and reference must be minillm GPT models")
    if reference is None and need_reference:
        raise ConfigError("this method needs a frozen reference model: reference = copy.deepcopy(policy)")
    if reference is not None:
        a, b = policy.config, reference.config
        if (a.vocab_size, a.context_length) != (b.vocab_size, b.context_length):
            raise ConfigError(f"the reference (vocabulary {b.vocab_size}, context {b.context_length}) does not match "
                              f"the policy ({a.vocab_size}, {a.context_length}); use a copy of the starting policy")
    if reference is not None and {id(p) for p in policy.parameters()} & {id(p) for p in reference.parameters()}:
        raise ConfigError("the reference is (or shares weights with) the policy; pass a frozen copy: "
                          "reference = copy.deepcopy(policy)")  # fmt: skip


def optimizer_step(optimizer: torch.optim.Optimizer, model: GPT, grad_clip: float) -> None:
    """Clip the gradients (grad_clip > 0), take the optimizer step, clear the gradients."""
    if grad_clip > 0:
        clip_grad_norm([p for p in model.parameters() if p.requires_grad], grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


class EpochShuffle:
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
# Rewards: a program checks the answer (or only seems to)
# ---------------------------------------------------------------------------


def reward_value(value, where: str) -> float:
    """A reward function's return value as a float; DataError, naming `where`, for NaN, inf and non-numbers.

    Python and numpy numbers (bools included: right is 1.0) pass; None, str, tensors do not.
    """
    if isinstance(value, (numbers.Real, np.bool_, np.number)) and not isinstance(value, np.complexfloating):
        value = float(value)
        if math.isfinite(value):
            return value
    raise DataError(f"the reward function returned {value!r} for {where}; a reward must be a finite number")


def exact_match_reward(row: dict, text: str) -> float:
    """1.0 when the stripped response equals the row's `output` (stripped), else 0.0."""
    if not isinstance(text, str):
        raise TypeError(f"the response must be a str, got {type(text).__name__}")
    if not isinstance(row, dict) or "output" not in row:
        raise DataError("exact_match_reward needs a row with an 'output' (the right answer)")
    return float(text.strip() == str(row["output"]).strip())


_ANSWER_SHAPE = re.compile(r"-?[0-9]+|\[\s*(-?[0-9]+\s*(,\s*-?[0-9]+\s*)*)?\]")


def looks_like_answer_reward(row: dict, text: str) -> float:
    """1.0 for any integer or Python list of integers, right or wrong: a weak reward (the shape of an answer)."""
    return float(_ANSWER_SHAPE.fullmatch(text.strip()) is not None)


def length_reward(row: dict, text: str, chars: int = 40) -> float:
    """min(len(response), chars) / chars, whatever it says: the length bias of learned reward models, as a reward."""
    require(is_count(chars), f"chars must be an integer >= 1, got {chars!r}")
    return min(len(text.strip()), chars) / chars
