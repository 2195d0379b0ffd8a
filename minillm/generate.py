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

`stream_text` and `complete` are the one home of "prompt -> text": they encode
the prompt, sample with their own seeded generator, and give back the new text
(in pieces as it is written, or whole), stopping at the end-of-text token or at
a stop string. Training samples, the `generate` command, instruction responses,
and the judge of chapter 08 all write text through them.
"""

from __future__ import annotations

import codecs
import math
import numbers
from collections.abc import Iterable, Iterator, Sequence

import torch

from minillm.attention import KVCache
from minillm.errors import ConfigError, DataError
from minillm.model import GPT
from minillm.tokenizer import ENDOFTEXT, SpecialNames, Tokenizer


def check_sampling(temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None) -> None:
    """Raise `ConfigError` unless the decoding settings can work: a finite temperature >= 0
    (0 = greedy), top_k an integer >= 1 or None, top_p in (0, 1] or None."""
    if not _is_real(temperature) or not math.isfinite(temperature) or temperature < 0:
        raise ConfigError(f"temperature must be a finite number >= 0 (0 = greedy decoding), got {temperature!r}")
    if top_k is not None and (not _is_int(top_k) or top_k < 1):
        raise ConfigError(f"top_k must be an integer >= 1 (or None to keep all tokens), got {top_k!r}")
    if top_p is not None and (not _is_real(top_p) or not 0.0 < top_p <= 1.0):  # NaN fails the range test
        raise ConfigError(f"top_p must be a number in (0, 1] (or None to keep all tokens), got {top_p!r}")


def _is_real(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _is_int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def filter_logits(
    logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None
) -> torch.Tensor:
    """Next-token probabilities (..., V) after temperature, top-k and top-p filtering.

    Applied in that order: divide by `temperature` (> 0), keep the `top_k` largest
    logits, then keep the smallest set of most likely tokens whose total
    probability is >= `top_p` (the most likely token always stays). Removed
    tokens get probability 0; the rest are renormalized.
    """
    check_sampling(temperature, top_k, top_p)
    if temperature == 0:
        raise ConfigError("temperature must be > 0 for sampling (temperature 0 is greedy decoding: take the argmax)")
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


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:  # fmt: skip
    """The next token of each row, (B,), from logits (B, V): greedy at `temperature=0`, else sampled.

    The one decoding step of `stream` (and of `minillm.batching.decode_together`, which must draw
    exactly what `stream` draws): `filter_logits`, then one multinomial draw from `generator`.
    """
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = filter_logits(logits, temperature, top_k, top_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def _check_model(model: GPT) -> None:
    if not isinstance(model, GPT):
        raise TypeError(f"model must be a minillm GPT, got {type(model).__name__}")


def _check_budget(max_new_tokens: int) -> None:
    if not _is_int(max_new_tokens) or max_new_tokens < 0:
        raise ConfigError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")


def _check(model: GPT, idx: torch.Tensor, max_new_tokens: int) -> None:
    _check_model(model)
    if not isinstance(idx, torch.Tensor) or idx.dim() != 2 or idx.size(1) == 0:
        shape = tuple(idx.shape) if isinstance(idx, torch.Tensor) else type(idx).__name__
        raise ConfigError(f"prompt must be a (B, T) tensor of token ids with T >= 1, got {shape}")
    _check_budget(max_new_tokens)


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
    kv_cache: KVCache | None = None,
) -> Iterator[torch.Tensor]:
    """Yield the next token of each sequence, (B,), one step at a time.

    idx: prompt token ids (B, T). `temperature=0` is greedy decoding. Sampling draws
    from `generator` (or a new one seeded with `seed`; else the global RNG).
    Stops after `max_new_tokens` steps, or once every sequence has produced one of
    `stop_tokens` (a finished sequence repeats its stop token). With `use_cache`
    each step feeds only the newest token through a `KVCache`; past the context
    length both paths re-read the last `context_length` tokens (a sliding window).
    `kv_cache`: an empty cache to use instead of a new float one (e.g. appendix
    B's `minillm.quantize_kv.Int8KVCache`), one row per prompt.
    The model runs in eval mode (its training flag is restored afterwards).
    """
    _check(model, idx, max_new_tokens)
    check_sampling(temperature, top_k, top_p)
    if generator is None and seed is not None:
        generator = torch.Generator(device=idx.device).manual_seed(seed)
    stops = torch.tensor(sorted(set(stop_tokens)), dtype=torch.long, device=idx.device)
    ctx = model.config.context_length
    was_training = model.training
    model.eval()
    try:
        tokens = idx
        if kv_cache is not None:
            _check_given_cache(kv_cache, idx, use_cache)
            cache = kv_cache
        else:
            cache = model.new_kv_cache(idx.size(0), min(ctx, idx.size(1) + max_new_tokens)) if use_cache else None
        feed = tokens[:, -ctx:]  # what the next forward pass reads
        finished = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
        last = None
        for _ in range(max_new_tokens):
            if cache is not None and cache.length + feed.size(1) > cache.max_len:
                cache.reset()  # window full: start over from the last ctx tokens
                feed = tokens[:, -ctx:]
            logits, _ = model(feed, kv_cache=cache, only_last=True)
            nxt = sample_next(logits[:, -1], temperature, top_k, top_p, generator)
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


def _check_given_cache(cache: KVCache, idx: torch.Tensor, use_cache: bool) -> None:
    if not use_cache:
        raise ConfigError("kv_cache was given with use_cache=False; leave one of them out")
    if not isinstance(cache, KVCache):
        raise TypeError(f"kv_cache must be a minillm.attention.KVCache, got {type(cache).__name__}")
    if cache.length != 0 or cache.k.size(1) != idx.size(0):
        raise ConfigError(f"kv_cache must be empty with one row per prompt ({idx.size(0)}); it holds "
                          f"{cache.length} positions of {cache.k.size(1)} rows (reset() it, or make a new one)")


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
    kv_cache: KVCache | None = None,
) -> torch.Tensor:
    """Prompt (B, T) -> prompt followed by the generated tokens, (B, T + n), n <= max_new_tokens.

    Same arguments as `stream`; n is smaller than `max_new_tokens` when every
    sequence hit a stop token (which is kept in the output).
    """
    new = list(stream(model, idx, max_new_tokens, temperature, top_k, top_p, stop_tokens, generator, seed, use_cache,
                      kv_cache))  # fmt: skip
    return torch.cat([idx, torch.stack(new, dim=1)], dim=1) if new else idx.clone()


# ---------------------------------------------------------------------------
# Prompt -> text
# ---------------------------------------------------------------------------


def stream_text(
    model: GPT,
    tokenizer: Tokenizer,
    prompt: str,
    max_new_tokens: int = 200,
    *,
    temperature: float = 0.8,
    top_k: int | None = 50,
    top_p: float | None = None,
    seed: int | None = 0,
    stop: Sequence[str] = (),
    stop_ids: Sequence[int] | None = None,
    allowed_special: SpecialNames = frozenset(),
) -> Iterator[str]:
    """Yield the text the model writes after `prompt`, in pieces, as the tokens are sampled.

    The prompt is plain text (`tokenizer.encode_ordinary`: "<|endoftext|>" in it
    is just characters), cut on the left to the model's context length; name
    the special tokens it really contains in `allowed_special` (e.g. a chat
    template's markers). Decoding: `temperature` (0 = greedy), `top_k`, `top_p`
    as in `stream`, drawn from a generator of our own seeded with `seed` (None:
    a fresh random seed), so the global RNG is never touched and one seed gives
    one text.

    Generation ends after `max_new_tokens` tokens, at a token of `stop_ids`
    (default: the tokenizer's <|endoftext|> if it has one; () never stops), or
    as soon as one of the `stop` strings appears (a str alone is one stop
    string); the stop token or string and anything after it are not yielded. A piece never ends inside a multi-byte
    UTF-8 character (a token can be half an emoji): text is held back while it
    decodes to a trailing U+FFFD, and while it could be the start of a stop
    string. Settings are checked at the call, before the first piece.
    """
    _check_model(model)
    _check_budget(max_new_tokens)
    check_sampling(temperature, top_k, top_p)
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
    stops = (stop,) if isinstance(stop, str) else tuple(stop)
    if any(not isinstance(s, str) or not s for s in stops):
        raise ConfigError(f"stop must be a sequence of non-empty strings, got {stop!r}")
    if stop_ids is None:
        end = tokenizer.special_tokens.get(ENDOFTEXT)
        stop_ids = () if end is None else (end,)
    if isinstance(stop_ids, (int, str)) or any(not _is_int(i) for i in stop_ids):
        raise ConfigError(f"stop_ids must be a sequence of token ids (integers), got {stop_ids!r}")
    if allowed_special:
        ids = tokenizer.encode(prompt, allowed_special=allowed_special, disallowed_special=())
    else:
        ids = tokenizer.encode_ordinary(prompt)
    if not ids:
        raise DataError(f"the prompt {prompt!r} encodes to no tokens; give at least one character to continue "
                        "(e.g. a newline)")  # fmt: skip
    device = next(model.parameters()).device
    idx = torch.tensor([ids[-model.config.context_length :]], dtype=torch.long, device=device)
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()  # a non-deterministic seed for this generator only
    else:
        generator.manual_seed(seed)
    steps = stream(model, idx, max_new_tokens, temperature, top_k, top_p, stop_tokens=stop_ids, generator=generator)
    return _pieces(steps, tokenizer, frozenset(int(i) for i in stop_ids), stops)


def _pieces(steps: Iterator[torch.Tensor], tokenizer: Tokenizer, stop_ids: frozenset[int],
            stops: tuple[str, ...]) -> Iterator[str]:  # fmt: skip
    """The text of the tokens of `steps` (each (1,)), in pieces; see `stream_text`."""
    decoder = TextDecoder(tokenizer, stops, stop_ids)
    try:
        for token in steps:
            piece = decoder.push(int(token[0]))
            if piece:
                yield piece
            if decoder.stopped:
                return
        piece = decoder.finish()
        if piece:
            yield piece
    finally:
        steps.close()  # restores the model's training flag even when the caller stops early


class TextDecoder:
    """New tokens in, text out: the incremental detokenizer of `stream_text` and of the server (appendix C).

    `push(token_id)` returns the text that may be shown now (maybe ""): a piece
    never ends inside a multi-byte UTF-8 character nor with what could be the
    start of a stop string. With a byte-level tokenizer (one with
    `decode_bytes`) the bytes go through an incremental UTF-8 decoder, which
    holds back only a valid incomplete character and turns invalid bytes into
    U+FFFD at once; otherwise text is held back while it decodes to a trailing
    U+FFFD. A token of `stop_ids` (which returns what was held back) or a
    `stops` string sets `stopped`; the stop and what follows it are never
    returned. `finish()` returns what was held back when the tokens end for
    another reason (a budget). The pieces join to `tokenizer.decode` of the
    tokens, cut at the stop.
    """

    def __init__(self, tokenizer: Tokenizer, stops: tuple[str, ...] = (), stop_ids: frozenset[int] = frozenset()):
        self.tokenizer, self.stops, self.stop_ids = tokenizer, stops, stop_ids
        self.pending: list[int] = []  # new tokens whose text is not yet in `text` (maybe half a character)
        self.bytes = codecs.getincrementaldecoder("utf-8")("replace") if hasattr(tokenizer, "decode_bytes") else None
        self.text, self.sent = "", 0  # the new text decoded so far; how much of it was returned
        self.stopped = False

    def push(self, token_id: int) -> str:
        """The text that token `token_id` makes showable (maybe ""); sets `stopped` at a stop."""
        if self.stopped:
            return ""
        if token_id in self.stop_ids:  # the end: what was held back is the text's end
            piece = self.finish()
            self.stopped = True
            return piece
        if self.bytes is not None:
            piece = self.bytes.decode(self.tokenizer.decode_bytes([token_id]), final=False)
        else:
            self.pending.append(token_id)
            piece = self.tokenizer.decode(self.pending)
            if piece.endswith("\ufffd"):  # maybe an incomplete UTF-8 character: wait for its next bytes
                return ""
            self.pending.clear()
        self.text += piece
        end, self.stopped = _stop_cut(self.text, self.sent, self.stops, final=False)
        return self._release(end)

    def finish(self) -> str:
        """What is still held back (bytes that never became a character decode to U+FFFD, the honest text)."""
        if self.stopped:
            return ""
        if self.bytes is not None:
            self.text += self.bytes.decode(b"", final=True)
        elif self.pending:
            self.text += self.tokenizer.decode(self.pending)
            self.pending.clear()
        end, _ = _stop_cut(self.text, self.sent, self.stops, final=True)
        return self._release(end)

    def _release(self, end: int) -> str:
        piece, self.sent = self.text[self.sent : end], max(end, self.sent)
        return piece


def _stop_cut(text: str, start: int, stops: tuple[str, ...], final: bool) -> tuple[int, bool]:
    """(how far `text` may be yielded, whether a stop string was found).

    Everything before `start` was yielded already; no stop string can begin
    there, since a text that might grow into one is always held back.
    """
    hits = [i for i in (text.find(s, start) for s in stops) if i >= 0]
    if hits:
        return min(hits), True
    if final:
        return len(text), False
    hold = 0  # the longest end of the text that is the beginning of a stop string
    for s in stops:
        for k in range(min(len(s) - 1, len(text) - start), hold, -1):
            if text.endswith(s[:k]):
                hold = k
                break
    return len(text) - hold, False


def complete(
    model: GPT,
    tokenizer: Tokenizer,
    prompt: str,
    max_new_tokens: int = 200,
    *,
    temperature: float = 0.8,
    top_k: int | None = 50,
    top_p: float | None = None,
    seed: int | None = 0,
    stop: Sequence[str] = (),
    stop_ids: Sequence[int] | None = None,
    allowed_special: SpecialNames = frozenset(),
) -> str:
    """The text the model writes after `prompt` (the new text only, not the prompt).

    The joined pieces of `stream_text`, with the same arguments: e.g.
    `complete(model, tok, "Once upon a time", 50, temperature=0)` is the greedy
    continuation, ended early by <|endoftext|> when the tokenizer has it.
    """
    return "".join(stream_text(model, tokenizer, prompt, max_new_tokens, temperature=temperature, top_k=top_k,
                               top_p=top_p, seed=seed, stop=stop, stop_ids=stop_ids,
                               allowed_special=allowed_special))  # fmt: skip
