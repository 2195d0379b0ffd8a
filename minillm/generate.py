"""Text generation: greedy, temperature, top-k and top-p sampling (chapter 04).

Chapter 04 (`04_gpt_model`) ends by letting the model write. A language model
gives a distribution over the next token; a decoding rule turns it into one:

* greedy (`temperature=0`): the most likely token;
* temperature T: sample from softmax(logits / T) (T < 1 sharpens, T > 1 flattens);
* top-k: sample only among the k most likely tokens;
* top-p (nucleus): sample only among the smallest set of most likely tokens
  whose probabilities add up to at least p.

`filter_logits` is that rule as a pure function (for plots); `stream` yields the
new tokens one step at a time and `generate` collects them. Both reuse keys and
values through a `KVCache` by default, so each step feeds the model one token
instead of the whole sequence; the tokens are the same either way.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

from minillm.model import GPT


def filter_logits(
    logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None
) -> torch.Tensor:
    """Next-token probabilities (..., V) after temperature, top-k and top-p filtering.

    Applied in that order: divide by `temperature` (> 0), keep the `top_k` largest
    logits, then keep the smallest set of most likely tokens whose total
    probability is >= `top_p` (the most likely token always stays). Removed
    tokens get probability 0; the rest are renormalized.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 for sampling (use greedy decoding for 0), got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 (or None to keep all tokens), got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1] (or None), got {top_p}")
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]  # (..., 1) k-th largest
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if top_p is not None and top_p < 1.0:
        sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
        mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs  # probability of the tokens ranked above
        drop_sorted = mass_before >= top_p  # the set before this token already reaches p
        drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to vocabulary order
        probs = probs.masked_fill(drop, 0.0)
        probs = probs / probs.sum(dim=-1, keepdim=True)
    return probs


def _check(model: GPT, idx: torch.Tensor, max_new_tokens: int) -> None:
    if not isinstance(model, GPT):
        raise TypeError(f"model must be a minillm GPT, got {type(model).__name__}")
    if not isinstance(idx, torch.Tensor) or idx.dim() != 2 or idx.size(1) == 0:
        shape = tuple(idx.shape) if isinstance(idx, torch.Tensor) else type(idx).__name__
        raise ValueError(f"prompt must be a (B, T) tensor of token ids with T >= 1, got {shape}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")


@torch.no_grad()
def stream(
    model: GPT,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop_tokens: Iterable[int] = (),
    generator: torch.Generator | None = None,
    seed: int | None = None,
    use_cache: bool = True,
) -> Iterator[torch.Tensor]:
    """Yield the next token of each sequence, (B,), one step at a time.

    idx: prompt token ids (B, T). `temperature=0` is greedy decoding. Sampling draws
    from `generator` (or a new one seeded with `seed`; else the global RNG).
    Stops after `max_new_tokens` steps, or once every sequence has produced one of
    `stop_tokens` (a finished sequence repeats its stop token). With `use_cache`
    each step feeds only the newest token through a `KVCache`; past the context
    length both paths re-read the last `context_length` tokens (a sliding window).
    The model runs in eval mode (its training flag is restored afterwards).
    """
    _check(model, idx, max_new_tokens)
    if temperature > 0:
        filter_logits(idx.new_zeros(1, dtype=torch.float), temperature, top_k, top_p)  # validate early
    if generator is None and seed is not None:
        generator = torch.Generator(device=idx.device).manual_seed(seed)
    stops = torch.tensor(sorted(set(stop_tokens)), dtype=torch.long, device=idx.device)
    ctx = model.config.context_length
    was_training = model.training
    model.eval()
    try:
        tokens = idx
        cache = model.new_kv_cache(idx.size(0), min(ctx, idx.size(1) + max_new_tokens)) if use_cache else None
        feed = tokens[:, -ctx:]  # what the next forward pass reads
        finished = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
        last = None
        for _ in range(max_new_tokens):
            if cache is not None and cache.length + feed.size(1) > cache.max_len:
                cache.reset()  # window full: start over from the last ctx tokens
                feed = tokens[:, -ctx:]
            logits, _ = model(feed, kv_cache=cache, only_last=True)
            logits = logits[:, -1]  # (B, V)
            if temperature == 0:
                nxt = logits.argmax(dim=-1)
            else:
                probs = filter_logits(logits, temperature, top_k, top_p)
                nxt = torch.multinomial(probs, 1, generator=generator).squeeze(1)
            if last is not None:  # finished sequences keep repeating their stop token
                nxt = torch.where(finished, last, nxt)
            finished = finished | torch.isin(nxt, stops)
            last = nxt
            yield nxt
            if bool(finished.all()):
                return
            tokens = torch.cat([tokens, nxt[:, None]], dim=1)
            feed = nxt[:, None] if cache is not None else tokens[:, -ctx:]
    finally:
        model.train(was_training)


def generate(
    model: GPT,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop_tokens: Iterable[int] = (),
    generator: torch.Generator | None = None,
    seed: int | None = None,
    use_cache: bool = True,
) -> torch.Tensor:
    """Prompt (B, T) -> prompt followed by the generated tokens, (B, T + n), n <= max_new_tokens.

    Same arguments as `stream`; n is smaller than `max_new_tokens` when every
    sequence hit a stop token (which is kept in the output).
    """
    new = list(stream(model, idx, max_new_tokens, temperature, top_k, top_p, stop_tokens, generator, seed, use_cache))
    return torch.cat([idx, torch.stack(new, dim=1)], dim=1) if new else idx.clone()
