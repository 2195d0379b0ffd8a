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

Examples longer than the model's context (`fit_context`). A small model
(context 64 or 128 tokens) meets many: MMLU's header, a long HellaSwag
ending. The policy is lm-evaluation-harness's: the context is cut from the
LEFT and the whole continuation is kept, because the continuation is what is
scored and the end of the context is what predicts it. A continuation of up
to `context_length` tokens fits (the model reads at least one context token
and all but the last continuation token); an example with a longer
continuation (any of its choices) is skipped, since its choices could not be
compared. Answer-letter prompts are cut from the left too (the scored token,
the letter, always fits), so they are never skipped. Each `MCResult` counts
its examples ``truncated`` and ``skipped``, and its accuracies and standard
errors are over the scored examples only (``n``); a task whose examples are
all skipped reports ``n = 0``, no accuracy (None) and a ``note`` saying why.

Benchmark text is plain text: it is encoded with `tokenizer.encode_ordinary`
(any `minillm.tokenizer.Tokenizer`, or a tiktoken encoding), so a
"<|endoftext|>" inside a question is just characters.

The benchmark data comes from `minillm.tasks`; `minillm.harness` runs whole
tasks, prints tables and is the command line (`python -m minillm evaluate`).
Text metrics (BLEU, ROUGE) and LLM-as-judge live in `minillm.metrics`.
"""

from __future__ import annotations

import math
import numbers
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from minillm.errors import DataError
from minillm.tasks import LETTERS, MCExample, chance, letter_prompt
from minillm.tokenizer import Tokenizer


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _check_batch_size(batch_size: int) -> None:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise DataError(f"batch_size must be a positive number of sequences, got {batch_size!r}")


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
    _check_batch_size(batch_size)
    device, was_training = _device(model), model.training
    model.eval()
    try:
        total, count = _scored_windows(model, ids, windows, batch_size, device, progress)
    finally:
        model.train(was_training)
    return Perplexity(float(total) / count, count)


def _scored_windows(model: torch.nn.Module, ids: torch.Tensor, windows: list, batch_size: int, device: torch.device,
                    progress: bool) -> tuple[torch.Tensor, int]:
    """(summed next-token loss, scored tokens) of `perplexity`'s windows, `batch_size` windows at a time."""
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
    return total, count


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


def fit_context(context: list[int], continuation: list[int],
                context_length: int) -> tuple[list[int], list[int]] | None:  # fmt: skip
    """(context, continuation) as the model reads them, or None when the continuation does not fit.

    The model reads context + continuation minus its last token (it predicts
    every token from the ones before), so the pair fits when it has at most
    `context_length` + 1 tokens. A longer pair keeps the whole continuation
    and the last ``context_length + 1 - len(continuation)`` context tokens (the
    context is cut from the left). A continuation longer than `context_length`
    tokens leaves no room for even one context token to predict its first
    token from: None.
    """
    room = context_length + 1 - len(continuation)  # context tokens that fit
    if room < 1:
        return None
    return context[-room:], continuation


@torch.no_grad()
def loglikelihoods(model: torch.nn.Module, requests: Sequence[tuple[list[int], list[int]]],
                   batch_size: int = 16, progress: bool = False) -> list[float]:  # fmt: skip
    """Summed log-probability (nats) of each continuation given its context: one float per request.

    Each request is (context ids, continuation ids). Requests are sorted by
    length, right-padded into batches of `batch_size` rows (padding comes after
    the scored tokens, so a causal model never sees it) and scored in one
    forward pass per batch. When context + continuation exceed the context
    length, the context is cut from the left (`fit_context`); a continuation
    longer than the context length raises `DataError` (`score_multiple_choice`
    skips such examples instead).
    """
    _check_batch_size(batch_size)
    t_max = model.config.context_length
    fitted = []
    for ctx, cont in requests:
        if not cont:
            raise DataError("a continuation encodes to no tokens; every choice needs at least one token")
        if not ctx:
            raise DataError("a context encodes to no tokens; the first token needs something to be predicted from")
        pair = fit_context(ctx, cont, t_max)
        if pair is None:
            raise DataError(f"a continuation of {len(cont)} tokens does not fit the context length {t_max}")
        fitted.append(pair[0] + pair[1])
    device, was_training = _device(model), model.training
    model.eval()
    order = sorted(range(len(requests)), key=lambda i: -len(requests[i][0]) - len(requests[i][1]))
    out = [0.0] * len(requests)
    batches = range(0, len(order), batch_size)
    for start in _progress(batches, len(batches), "log-likelihood", progress):
        rows = order[start : start + batch_size]
        seqs = [fitted[i] for i in rows]
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


def _scores(values, name: str) -> list[float]:
    """A 1-D sequence of numbers (list, tuple, 1-D array or tensor) as floats; TypeError or DataError naming the item."""
    if isinstance(values, (str, bytes, dict, set, frozenset)) or not hasattr(values, "__len__") or (
            getattr(values, "ndim", 1) != 1):
        raise TypeError(f"{name} must be a 1-D sequence of scores (list, tuple, array), got {type(values).__name__}")
    out = []
    for i, v in enumerate(values):
        if isinstance(v, (str, bytes)) or not isinstance(v, (numbers.Real, np.bool_, np.number, torch.Tensor)):
            raise TypeError(f"{name}[{i}] must be a number, got {v!r}")
        out.append(float(v))
        if not math.isfinite(out[-1]):
            raise DataError(f"{name}[{i}] is {out[-1]}; scores must be finite numbers")
    return out


def paired_change(before: Sequence[float], after: Sequence[float]) -> tuple[float, float]:
    """(mean of after - before, its standard error) for scores of the same n items measured twice.

    The standard error is that of the mean of the n per-item differences,
    sd(after_i - before_i) / sqrt(n) (sample sd, n - 1): pairing removes the
    spread between items, so a change is measured more precisely than by two
    independent accuracies. n must be at least 2.
    """
    before, after = _scores(before, "before"), _scores(after, "after")
    if len(before) != len(after):
        raise DataError(f"before has {len(before)} scores and after {len(after)}; pair the same items")
    if len(before) < 2:
        raise DataError(f"a paired standard error needs at least 2 items, got {len(before)}")
    diffs = [a - b for b, a in zip(before, after)]
    if not all(math.isfinite(d) for d in diffs):
        raise DataError("the differences overflow: scores this large cannot be compared in float64")
    mean = sum(diffs) / len(diffs)
    var = sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1)
    return mean, math.sqrt(var / len(diffs))


@dataclass
class MCResult:
    """Scores of a multiple-choice run; `predictions[metric]` has one chosen index per scored example.

    `examples` are the scored examples and `scores[i]` holds example i's
    per-choice scores (summed log-likelihoods, or letter logits for
    `method="letter"`). `truncated`: how many of them had their context cut
    from the left to fit `context_length`; `skipped`: the examples not scored
    (an answer longer than the context), which no accuracy counts.
    """

    task: str
    method: str
    examples: list[MCExample]
    scores: list[list[float]]
    predictions: dict[str, list[int]]
    extra: dict[str, float] = field(default_factory=dict)
    truncated: int = 0
    skipped: list[MCExample] = field(default_factory=list)
    context_length: int | None = None

    def _check_scored(self) -> None:
        if not self.examples:
            raise DataError(f"{self.task or 'this task'}: no example was scored ({self.note()}); "
                            "there is no accuracy to report")  # fmt: skip

    def accuracy(self, metric: str = "acc") -> float:
        """Fraction of the scored examples whose prediction under `metric` is the label."""
        if metric not in self.predictions:
            raise KeyError(f"no metric {metric!r}; this result has {sorted(self.predictions)}")
        self._check_scored()
        pred = self.predictions[metric]
        return sum(p == e.label for p, e in zip(pred, self.examples)) / len(self.examples)

    def note(self) -> str:
        """What the context length did to this task, in words ("" when every example fit whole)."""
        total, n_skip = len(self.examples) + len(self.skipped), len(self.skipped)
        ctx = f"the context of {self.context_length} tokens" if self.context_length else "the context"
        if total and n_skip == total:
            return f"all {total} examples skipped (each has an answer longer than {ctx}): no accuracy, n = 0"
        parts = []
        if self.truncated:
            cut = "prompt" if self.method == "letter" else "context"
            parts.append(f"{self.truncated} of {total} truncated ({cut} cut from the left to fit {ctx})")
        if n_skip:
            parts.append(f"{n_skip} of {total} skipped (an answer longer than {ctx}); "
                         f"accuracies over the {len(self.examples)} scored")  # fmt: skip
        return "; ".join(parts)

    def metrics(self) -> dict[str, Any]:
        """Every accuracy with its binomial standard error (`<metric>_stderr`), chance, n, counts, extras.

        ``n`` is the number of scored examples (accuracies and standard errors
        are over those); ``truncated`` and ``skipped`` count the examples that
        did not fit whole (see the module docstring), and ``note`` says so in
        words when either is nonzero. With no scored example, every accuracy,
        standard error and ``chance`` is None.
        """
        out: dict[str, Any] = {}
        n = len(self.examples)
        for metric in self.predictions:
            acc = self.accuracy(metric) if n else None
            out[metric] = acc
            out[f"{metric}_stderr"] = binomial_stderr(acc, n) if n else None
        out.update(chance=chance(self.examples) if n else None, n=n, truncated=self.truncated,
                   skipped=len(self.skipped))  # fmt: skip
        if self.note():
            out["note"] = self.note()
        return {**out, **self.extra}

    def by_subject(self, metric: str = "acc") -> dict[str, tuple[float, int]]:
        """(accuracy, count) per `subject` of the scored examples (e.g. MMLU's 57), sorted by subject."""
        hits: dict[str, list[bool]] = defaultdict(list)
        for p, e in zip(self.predictions[metric], self.examples):
            hits[e.subject].append(p == e.label)
        return {s: (sum(h) / len(h), len(h)) for s, h in sorted(hits.items())}

    def macro_micro(self, metric: str = "acc") -> tuple[float, float]:
        """(macro, micro) accuracy: mean over subjects, and over all scored examples."""
        self._check_scored()
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
    Examples longer than the model's context are cut from the left or skipped
    (see `fit_context`); the result counts both.
    """
    if not examples:
        raise DataError("no examples to score")
    _check_batch_size(batch_size)
    t_max = model.config.context_length
    scored, skipped, requests, spans, truncated = [], [], [], [], 0
    for ex in examples:
        pairs = [encode_pair(tokenizer, ex.context, c) for c in ex.continuations]
        if any(len(cont) > t_max for _, cont in pairs):
            skipped.append(ex)  # its choices could not all be scored: the example is not compared at all
            continue
        truncated += any(len(ctx) + len(cont) > t_max + 1 for ctx, cont in pairs)
        scored.append(ex)
        spans.append((len(requests), len(pairs)))
        requests.extend(pairs)
    lls = loglikelihoods(model, requests, batch_size=batch_size, progress=progress) if requests else []
    scores, preds = [], {"acc": [], "acc_norm": [], "acc_token": []}
    for ex, (first, n) in zip(scored, spans):
        ll = lls[first : first + n]
        n_bytes = [len(c.encode("utf-8")) for c in ex.continuations]
        n_tok = [len(requests[first + j][1]) for j in range(n)]
        scores.append(ll)
        preds["acc"].append(_argmax(ll))
        preds["acc_norm"].append(_argmax([v / b for v, b in zip(ll, n_bytes)]))
        preds["acc_token"].append(_argmax([v / t for v, t in zip(ll, n_tok)]))
    return MCResult(task, "loglik", scored, scores, preds, truncated=int(truncated), skipped=skipped,
                    context_length=t_max)  # fmt: skip


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

    A prompt longer than the model's context is cut from the left (its end,
    "Answer:", is what the letter follows); the result counts those as
    ``truncated``. `extra["letter_mass"]` is the mean probability the model
    puts on the valid letters at all: near 0 means the model does not
    understand the format, and its "choices" are noise.
    """
    if not examples:
        raise DataError("no examples to score")
    _check_batch_size(batch_size)
    t_max, device, was_training = model.config.context_length, _device(model), model.training
    model.eval()
    prompts = [tokenizer.encode_ordinary(letter_prompt(ex)) for ex in examples]
    truncated = sum(len(p) > t_max for p in prompts)
    prompts = [p[-t_max:] for p in prompts]
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
    return MCResult(task, "letter", list(examples), scores, {"acc": preds}, {"letter_mass": float(np.mean(mass))},
                    truncated=truncated, context_length=t_max)  # fmt: skip
