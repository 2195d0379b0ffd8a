"""Evaluating a language model: perplexity and multiple-choice benchmarks (chapter 08).

Chapter 08 (`08_evaluation`) teaches each function of this module:

* `perplexity`: exp of the mean next-token loss on held-out tokens; a text
  longer than the context is scored with a sliding window (`stride`), each
  token exactly once and with as much context as the window allows.
  `unigram_perplexity` is the baseline any model must beat.
* `score_multiple_choice`: the log-likelihood of each answer continuation
  given the context, many continuations per forward pass (right-padded batch).
  It reports three accuracies, named as lm-evaluation-harness names them:

  - ``acc``: the choice with the largest summed log-likelihood;
  - ``acc_norm``: largest log-likelihood per byte of the continuation's text
    (UTF-8 bytes; the harness divides by ``len(str)``, the same number for
    ASCII text), so long answers are not penalized for having more tokens;
  - ``acc_token``: largest mean log-likelihood per token (what Karpathy's
    llm.c HellaSwag script calls acc_norm; it depends on the tokenizer).
* `score_letters`: answer-letter prompting; the prompt lists the choices as
  A/B/C/D and the next-token logits over " A", " B", ... decide.
* `binomial_stderr` puts an error bar on every accuracy.

Benchmark text is plain text: it is encoded with `tokenizer.encode_ordinary`
(any `minillm.tokenizer.Tokenizer`, or a tiktoken encoding), so a
"<|endoftext|>" inside a question is just characters.

The benchmark data comes from `minillm.tasks`; `minillm.harness` runs whole
tasks, prints tables and is the command line (`python -m minillm evaluate`).
Text metrics (BLEU, ROUGE) and LLM-as-judge live in `minillm.metrics`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from minillm.errors import DataError
from minillm.tasks import LETTERS, MCExample, chance, letter_prompt
from minillm.tokenizer import Tokenizer


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _progress(iterable, total: int, desc: str, enabled: bool):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=False)


# ---------------------------------------------------------------------------
# Perplexity
# ---------------------------------------------------------------------------


@dataclass
class Perplexity:
    """Result of `perplexity`: `loss` is the mean negative log-likelihood (nats per token)."""

    loss: float
    n_tokens: int

    @property
    def perplexity(self) -> float:
        """exp(loss): the effective number of equally likely next tokens."""
        return math.exp(self.loss)


def sliding_windows(n_tokens: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first_scored) of each window over a sequence of `n_tokens` tokens.

    The model reads tokens[begin:end] and predicts tokens[begin+1:end+1]; only
    predictions of tokens at positions >= first_scored + 1 count (the others were
    scored by an earlier window). Every token but the first is scored once.
    """
    if window < 1 or not 1 <= stride <= window:
        raise DataError(f"need window >= 1 and 1 <= stride <= window, got window={window}, stride={stride}")
    out, scored = [], 0  # predictions 0..scored-1 (targets 1..scored) are done
    begin = 0
    while scored < n_tokens - 1:
        end = min(begin + window, n_tokens - 1)
        out.append((begin, end, scored))
        scored = end
        begin += stride
    return out


@torch.no_grad()
def perplexity(model: torch.nn.Module, tokens: Sequence[int] | torch.Tensor | np.ndarray,
               window: int | None = None, stride: int | None = None, batch_size: int = 8,
               progress: bool = False) -> Perplexity:  # fmt: skip
    """Perplexity of `model` on a 1-D token sequence, with a sliding window.

    `window` (default: the model's context length) is the most tokens the model
    reads at once; windows start every `stride` tokens (default `window`:
    disjoint windows, cheapest). A smaller stride gives each token more context
    (stride 1: every token sees a full window) at more compute. When the text
    fits in one window the result is the full-context perplexity.
    """
    ids = torch.as_tensor(np.asarray(tokens), dtype=torch.long).flatten()
    if ids.numel() < 2:
        raise DataError(f"perplexity needs at least 2 tokens, got {ids.numel()}")
    window = window or model.config.context_length
    if window > model.config.context_length:
        raise DataError(f"window {window} is longer than the model's context length {model.config.context_length}")
    windows = sliding_windows(ids.numel(), window, stride or window)
    device, was_training = _device(model), model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64)
    count = 0
    batches = range(0, len(windows), batch_size)
    for i in _progress(batches, len(batches), "perplexity", progress):
        chunk = windows[i : i + batch_size]
        width = max(end - begin for begin, end, _ in chunk)
        x = torch.zeros(len(chunk), width, dtype=torch.long)  # (B, T), right-padded
        y = torch.full((len(chunk), width), -100, dtype=torch.long)  # -100: not scored
        for row, (begin, end, first) in enumerate(chunk):
            x[row, : end - begin] = ids[begin:end]
            skip = first - begin  # predictions already made by an earlier window
            y[row, skip : end - begin] = ids[first + 1 : end + 1]
        logits, _ = model(x.to(device))
        nll = F.cross_entropy(logits.float().flatten(0, 1), y.to(device).flatten(), ignore_index=-100,
                              reduction="sum")  # fmt: skip
        total += nll.double().cpu()
        count += int((y != -100).sum())
    model.train(was_training)
    return Perplexity(float(total) / count, count)


def unigram_perplexity(train_tokens: Sequence[int], eval_tokens: Sequence[int], vocab_size: int,
                       smoothing: float = 1.0) -> Perplexity:  # fmt: skip
    """Perplexity of a unigram model (token frequencies of `train_tokens`, add-`smoothing`).

    The baseline that knows which tokens are common but ignores all context.
    Scores eval_tokens[1:], the same tokens `perplexity` scores.
    """
    if smoothing <= 0:
        raise DataError(f"smoothing must be > 0 (else unseen tokens get probability 0), got {smoothing}")
    counts = np.bincount(np.asarray(train_tokens, dtype=np.int64), minlength=vocab_size).astype(np.float64)
    if len(counts) > vocab_size:
        raise DataError(f"train_tokens has ids >= vocab_size {vocab_size}")
    logp = np.log(counts + smoothing) - np.log(counts.sum() + smoothing * vocab_size)
    targets = np.asarray(eval_tokens, dtype=np.int64)[1:]
    return Perplexity(float(-logp[targets].mean()), len(targets))


# ---------------------------------------------------------------------------
# Log-likelihood of continuations
# ---------------------------------------------------------------------------


def encode_pair(tokenizer: Tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids), split where the context's tokens end.

    Trailing spaces of the context move to the continuation, and the pair is
    encoded as one text, so the continuation's first token is the one the model
    would really see (as lm-evaluation-harness does).
    """
    spaces = len(context) - len(context.rstrip(" "))
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer.encode_ordinary(context + continuation)
    n_context = len(tokenizer.encode_ordinary(context))
    return whole[:n_context], whole[n_context:]


@torch.no_grad()
def loglikelihoods(model: torch.nn.Module, requests: Sequence[tuple[list[int], list[int]]],
                   batch_size: int = 16, progress: bool = False) -> list[float]:  # fmt: skip
    """Summed log-probability (nats) of each continuation given its context: one float per request.

    Each request is (context ids, continuation ids). Requests are sorted by
    length, right-padded into batches of `batch_size` rows (padding comes after
    the scored tokens, so a causal model never sees it) and scored in one
    forward pass per batch. When context + continuation exceed the context
    length, the context is cut from the left.
    """
    t_max = model.config.context_length
    for ctx, cont in requests:
        if not cont:
            raise DataError("a continuation encodes to no tokens; every choice needs at least one token")
        if len(cont) > t_max:
            raise DataError(f"a continuation of {len(cont)} tokens does not fit the context length {t_max}")
        if not ctx:
            raise DataError("a context encodes to no tokens; the first token needs something to be predicted from")
    device, was_training = _device(model), model.training
    model.eval()
    order = sorted(range(len(requests)), key=lambda i: -len(requests[i][0]) - len(requests[i][1]))
    out = [0.0] * len(requests)
    batches = range(0, len(order), batch_size)
    for start in _progress(batches, len(batches), "log-likelihood", progress):
        rows = order[start : start + batch_size]
        seqs = [(requests[i][0] + requests[i][1])[-(t_max + 1) :] for i in rows]
        width = max(len(s) - 1 for s in seqs)
        x = torch.zeros(len(rows), width, dtype=torch.long)  # (B, T) inputs, right-padded
        for r, s in enumerate(seqs):
            x[r, : len(s) - 1] = torch.tensor(s[:-1])
        logits, _ = model(x.to(device))  # (B, T, V)
        for r, (i, s) in enumerate(zip(rows, seqs)):
            n = len(requests[i][1])
            positions = slice(len(s) - 1 - n, len(s) - 1)  # predictions of the continuation tokens
            logp = logits[r, positions].float().log_softmax(-1)  # (n, V)
            target = torch.tensor(s[-n:], device=logp.device)
            out[i] = float(logp.gather(-1, target[:, None]).sum())
    model.train(was_training)
    return out


# ---------------------------------------------------------------------------
# Multiple choice
# ---------------------------------------------------------------------------


def binomial_stderr(p: float, n: int) -> float:
    """Standard error of an accuracy p measured on n independent items: sqrt(p (1 - p) / n)."""
    if n <= 0:
        raise DataError(f"n must be positive, got {n}")
    return math.sqrt(p * (1 - p) / n)


@dataclass
class MCResult:
    """Scores of a multiple-choice run; `predictions[metric]` has one chosen index per example.

    `scores[i]` holds example i's per-choice scores (summed log-likelihoods, or
    letter logits for `method="letter"`).
    """

    task: str
    method: str
    examples: list[MCExample]
    scores: list[list[float]]
    predictions: dict[str, list[int]]
    extra: dict[str, float] = field(default_factory=dict)

    def accuracy(self, metric: str = "acc") -> float:
        """Fraction of examples whose prediction under `metric` is the label."""
        if metric not in self.predictions:
            raise KeyError(f"no metric {metric!r}; this result has {sorted(self.predictions)}")
        pred = self.predictions[metric]
        return sum(p == e.label for p, e in zip(pred, self.examples)) / len(self.examples)

    def metrics(self) -> dict[str, float]:
        """Every accuracy with its binomial standard error (`<metric>_stderr`), chance, n, extras."""
        out: dict[str, float] = {}
        for metric in self.predictions:
            acc = self.accuracy(metric)
            out[metric], out[f"{metric}_stderr"] = acc, binomial_stderr(acc, len(self.examples))
        return {**out, "chance": chance(self.examples), "n": len(self.examples), **self.extra}

    def by_subject(self, metric: str = "acc") -> dict[str, tuple[float, int]]:
        """(accuracy, count) per `subject` of the examples (e.g. MMLU's 57), sorted by subject."""
        hits: dict[str, list[bool]] = defaultdict(list)
        for p, e in zip(self.predictions[metric], self.examples):
            hits[e.subject].append(p == e.label)
        return {s: (sum(h) / len(h), len(h)) for s, h in sorted(hits.items())}

    def macro_micro(self, metric: str = "acc") -> tuple[float, float]:
        """(macro, micro) accuracy: mean over subjects, and over all examples."""
        per = self.by_subject(metric)
        return sum(a for a, _ in per.values()) / len(per), self.accuracy(metric)


def _argmax(values: Sequence[float]) -> int:
    return int(np.argmax(np.asarray(values)))  # ties: the first


def score_multiple_choice(model: torch.nn.Module, tokenizer: Tokenizer, examples: Sequence[MCExample],
                          batch_size: int = 16, task: str = "", progress: bool = False) -> MCResult:  # fmt: skip
    """Score each choice by the log-likelihood of its continuation after the context.

    Returns an `MCResult` with predictions for ``acc`` (summed log-likelihood),
    ``acc_norm`` (per byte of the continuation) and ``acc_token`` (per token).
    The choices of many examples share a forward pass (`batch_size` rows).
    """
    if not examples:
        raise DataError("no examples to score")
    requests, spans = [], []
    for ex in examples:
        spans.append((len(requests), len(ex.continuations)))
        requests.extend(encode_pair(tokenizer, ex.context, c) for c in ex.continuations)
    lls = loglikelihoods(model, requests, batch_size=batch_size, progress=progress)
    scores, preds = [], {"acc": [], "acc_norm": [], "acc_token": []}
    for ex, (first, n) in zip(examples, spans):
        ll = lls[first : first + n]
        n_bytes = [len(c.encode("utf-8")) for c in ex.continuations]
        n_tok = [len(requests[first + j][1]) for j in range(n)]
        scores.append(ll)
        preds["acc"].append(_argmax(ll))
        preds["acc_norm"].append(_argmax([v / b for v, b in zip(ll, n_bytes)]))
        preds["acc_token"].append(_argmax([v / t for v, t in zip(ll, n_tok)]))
    return MCResult(task, "loglik", list(examples), scores, preds)


def letter_ids(tokenizer: Tokenizer, n: int) -> list[int]:
    """Token ids of " A", " B", ... (n letters); each must be a single token."""
    ids = []
    for letter in LETTERS[:n]:
        tok = tokenizer.encode_ordinary(" " + letter)
        if len(tok) != 1:
            raise DataError(f"{' ' + letter!r} is {len(tok)} tokens for this tokenizer; answer-letter scoring "
                             "needs one token per letter (use a BPE tokenizer, or score by log-likelihood)")  # fmt: skip
        ids.append(tok[0])
    return ids


@torch.no_grad()
def score_letters(model: torch.nn.Module, tokenizer: Tokenizer, examples: Sequence[MCExample],
                  batch_size: int = 16, task: str = "", progress: bool = False) -> MCResult:  # fmt: skip
    """Answer-letter prompting: the largest next-token logit among " A", " B", ... after `letter_prompt`.

    `extra["letter_mass"]` is the mean probability the model puts on the valid
    letters at all: near 0 means the model does not understand the format, and
    its "choices" are noise.
    """
    if not examples:
        raise DataError("no examples to score")
    t_max, device, was_training = model.config.context_length, _device(model), model.training
    model.eval()
    prompts = [tokenizer.encode_ordinary(letter_prompt(ex))[-t_max:] for ex in examples]
    scores, mass = [], []
    batches = range(0, len(examples), batch_size)
    for start in _progress(batches, len(batches), "letters", progress):
        chunk = prompts[start : start + batch_size]
        x = torch.zeros(len(chunk), max(map(len, chunk)), dtype=torch.long)  # (B, T), right-padded
        for r, p in enumerate(chunk):
            x[r, : len(p)] = torch.tensor(p)
        logits, _ = model(x.to(device))
        for r, p in enumerate(chunk):
            ex = examples[start + r]
            ids = letter_ids(tokenizer, len(ex.choices))
            last = logits[r, len(p) - 1].float()  # (V,) next-token logits after "Answer:"
            scores.append(last[ids].tolist())
            mass.append(float(last.softmax(-1)[ids].sum()))
    model.train(was_training)
    preds = [_argmax(s) for s in scores]
    return MCResult(task, "letter", list(examples), scores, {"acc": preds}, {"letter_mass": float(np.mean(mass))})
