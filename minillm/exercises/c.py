"""Appendix C's exercises: reading a streamed answer, the key mask of a decode step, percentiles, continuous batching.

The checks compare the reader's function with the package on inputs the reader
did not choose: streams written by the server's own `minillm.serve._sse` (with
its error chunks, `APIError.body()`), the key mask of `minillm.batching.SlotKVCache`
(and a decode step of a tiny GPT through that cache), ``numpy.percentile``, and
for continuous batching a schedule of slot free times kept in a heap here. The
random cases come from private generators: the reader's random state is left alone.
"""

from __future__ import annotations

import heapq
import json
import math
import random
from collections.abc import Callable, Iterable

import numpy as np
import torch

from minillm.attention import KVCache
from minillm.batching import SlotKVCache
from minillm.exercises import (ExerciseFailed, as_number, as_tensor, assert_close, call_answer, exercise, expect,
                               is_stub)
from minillm.model import GPT, GPTConfig
from minillm.serve import APIError, _sse


# -- C.1: reading a streamed answer ---------------------------------------------------------------

TEXTS = ("Hello", " world", ",", "\n", "line one\nline two\n", "", "naïve café", "日本語 🙂", 'a "quoted" word',
         "back\\slash", "\ttab", "data: [DONE]", ": not a comment", '{"json": 1}', " 42", "\r\n")


def _lines(raw: str) -> list[str]:
    """The lines `httpx.Response.iter_lines()` yields for this body (split at newlines, without them)."""
    lines = raw.split("\n")
    return lines[:-1] if lines and lines[-1] == "" else lines


def _chunks(rng: random.Random, n: int, chat: bool, usage: bool = False, texts: tuple[str, ...] = TEXTS,
            choices: int = 1) -> list[dict]:  # fmt: skip
    """n chunks of a streamed completion as minillm.serve writes them (chat: a role chunk first)."""
    ident = ("chatcmpl-" if chat else "cmpl-") + "".join(rng.choice("0123456789abcdef") for _ in range(24))
    head = {"id": ident, "object": "chat.completion.chunk" if chat else "text_completion",
            "created": 1_767_000_000 + rng.randrange(10_000), "model": "book-chat"}  # fmt: skip
    out = []
    if chat:
        for i in range(choices):
            role = {"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
            out.append({**head, "choices": [role]})
    for k in range(n):
        i, text = rng.randrange(choices), rng.choice(texts)
        last = k == n - 1
        reason = rng.choice(("stop", "length")) if last else None
        if chat:
            delta = {} if last else {"content": text}
            choice = {"index": i, "delta": delta, "logprobs": None, "finish_reason": reason}
        else:
            choice = {"index": i, "text": "" if last else text, "logprobs": None, "finish_reason": reason}
        out.append({**head, "choices": [choice]})
    if usage:
        p, c = rng.randint(1, 300), rng.randint(1, 64)
        usage_ = {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}
        out.append({**head, "choices": [], "usage": usage_})
    return out


def _body(chunks: list[dict], rng: random.Random | None = None, noise: float = 0.0, done: bool = True,
          escape: bool = True) -> str:  # fmt: skip
    """The response body: each chunk as `_sse` writes it, then `data: [DONE]` (unless not `done`).

    With `noise`, about that share of the events gets a comment (or a lone `retry:`
    field) before it, and as many an `event:` or `id:` field in its own block: lines a
    client of this API skips.
    """

    parts = []
    for k, chunk in enumerate(chunks):
        if rng is not None and rng.random() < noise:
            parts.append(rng.choice((": keep-alive\n\n", ":\n\n", ": ping 1767000000\n\n", "retry: 3000\n\n")))
        if rng is not None and rng.random() < noise:
            parts.append(rng.choice(("event: message\n", f"id: {k}\n", "event: completion.chunk\n")))
        parts.append(_sse(chunk).decode() if escape else f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n")
    if done:
        parts.append(_sse("[DONE]").decode())
    return "".join(parts)


def _error(message: str) -> dict:
    """The chunk the server sends when a request fails mid-stream (OpenAI's error shape)."""

    return APIError(503, message, type="server_error").body()


def _attempt(answer, lines: list[str]):
    """(result, None) or (None, exception) of answer(iter(lines)); a stub is not attempted."""
    if is_stub(answer):
        raise NotImplementedError
    try:
        return answer(iter(lines)), None
    except (NotImplementedError, ExerciseFailed):
        raise
    except Exception as err:  # noqa: BLE001 - raising is right for some streams, checked by the caller
        return None, err


def _stream_cases() -> tuple[list, list, list]:
    """(good, errors, truncated) streams: (what, lines, the chunks it holds / the error's message / None)."""
    rng = random.Random(301)
    plain, chat = _chunks(rng, 5, chat=False), _chunks(rng, 6, chat=True, usage=True)
    noisy, tricky = _chunks(rng, 7, chat=False), _chunks(rng, 5, chat=True, texts=("data: [DONE]", ": x", "\n\n"))
    utf8 = _chunks(rng, 6, chat=False, texts=("naïve", "日本語", "🙂", "\n"))
    good = [
        ("a completion stream of 5 chunks", _lines(_body(plain)), plain),
        ("a chat stream (a role chunk first, text with newlines and unicode, a usage chunk)", _lines(_body(chat)),
         chat),
        ("an empty answer: only data: [DONE]", _lines(_body([])), []),
        ("keep-alive comments (': keep-alive') and event:, id:, retry: lines among the chunks",
         _lines(_body(noisy, rng, noise=0.7)), noisy),
        ("chunks whose text contains 'data: [DONE]' and ': ' (inside the JSON, so not the end of the stream)",
         _lines(_body(tricky)), tricky),
        ("a server that writes UTF-8 as is (not \\u escapes)", _lines(_body(utf8, escape=False)), utf8),
    ]
    for _ in range(3):  # and three drawn at random
        is_chat, n, choices = rng.random() < 0.5, rng.randint(1, 12), rng.randint(1, 3)
        cs = _chunks(rng, n, is_chat, usage=rng.random() < 0.5, choices=choices)
        good.append((f"drawn at random ({'chat, ' if is_chat else ''}{len(cs)} chunks, {choices} choice"
                     f"{'s' if choices > 1 else ''}, comments among them)", _lines(_body(cs, rng, noise=0.3)), cs))
    oom, shutdown, late = ("the engine stopped: RuntimeError: CUDA error: out of memory", "the server is shutting down",
                           "request timed out after 120 s")  # fmt: skip
    errors = [
        ("an error after two chunks (the stream stops there)",
         _lines(_body([*_chunks(rng, 2, chat=False), _error(oom)], done=False)), oom),
        ("an error as the first event", _lines(_body([_error(shutdown)], done=False)), shutdown),
        ("an error chunk, then data: [DONE] all the same (some servers end every stream so)",
         _lines(_body([*_chunks(rng, 3, chat=True), _error(late)], rng, noise=0.3)), late),
    ]
    full = _lines(_body(_chunks(rng, 6, chat=False)))
    truncated = [
        ("a stream cut after three chunks (no data: [DONE]: the connection dropped)", full[:6], None),
        ("a stream cut right after a data line (before its blank line)", full[:9], None),
        ("a stream of keep-alive comments only", [": keep-alive", "", ": keep-alive", ""], None),
        ("no lines at all", [], None),
    ]
    return good, errors, truncated


@exercise("C.1", "reading a streamed answer")
def grade_parse_sse(answer: Callable[[Iterable[str]], list[dict]]) -> str:
    """answer(lines) -> the JSON chunks before `data: [DONE]`; ValueError for an error chunk or a cut stream.

    `lines` is an iterator of str, as `httpx.Response.iter_lines()` yields them
    for a body written by `minillm.serve` (`_sse`): `data: {json}` lines, blank
    lines between events, and here also comment lines (`: keep-alive`) and other
    fields (`event:`, `id:`, `retry:`), which a client ignores.
    """
    good, errors, truncated = _stream_cases()
    skip = ("Read only the lines that start with 'data: '; skip blank lines, comments (lines that start with ':') "
            "and other fields ('event: ...', 'id: ...', 'retry: ...').")
    for what, lines, expected in good:
        got, err = _attempt(answer, lines)
        if err is not None:
            if "iterator" in str(err) or "generator" in str(err):
                hint = "`lines` is an iterator, as response.iter_lines() is: loop over it once (for line in lines)."
            elif any(line and not line.startswith("data: ") for line in lines):
                hint = skip
            else:
                hint = ""
            raise ExerciseFailed(f"{what}: your parse_sse raised {type(err).__name__}: {err}, on a stream that ends "
                                 f"properly with data: [DONE]. {hint}".strip())
        expect(isinstance(got, list), f"{what}: parse_sse returned {type(got).__name__}; return a list of the "
                                      "chunks (dicts, one per data line).")
        if got == expected:
            continue
        if any(c == "[DONE]" or c == "data: [DONE]" for c in got) or got[: len(expected)] == expected:
            hint = ("data: [DONE] is the end marker, not JSON and not a chunk: stop reading there and leave it out "
                    "of the result.")
        elif any(isinstance(c, str) for c in got):
            hint = "Each chunk is the JSON after 'data: ': json.loads(line[len('data: '):]), a dict."
        elif got == expected[: len(got)]:
            hint = ("You stopped before the end: compare the whole line with 'data: [DONE]' (a chunk's text may "
                    "contain those characters inside its JSON).")
        else:
            hint = "Return every chunk, in order, as json.loads gives it. " + skip
        first = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))
        if first >= len(got):
            shown = f"chunk {first} is missing"
        elif first >= len(expected):
            shown = f"your chunk {first} is {got[first]!r:.100}, which is not in the stream"
        else:
            shown = f"your chunk {first} is {got[first]!r:.100}, the stream's is {expected[first]!r:.100}"
        raise ExerciseFailed(f"{what}: you returned {len(got)} chunks, the stream holds {len(expected)}; {shown}. "
                             f"{hint}")
    for what, lines, message in errors:
        got, err = _attempt(answer, lines)
        returned = f"a list of {len(got)} chunks" if isinstance(got, list) else f"{got!r:.80}"
        expect(err is not None, f"{what}: parse_sse returned {returned} instead of raising. A chunk "
                                f"{{\"error\": {{\"message\": ...}}}} means the request failed: raise ValueError "
                                f"with the error's message ({message!r}).")
        expect(isinstance(err, ValueError), f"{what}: parse_sse raised {type(err).__name__}: {err}; raise ValueError "
                                            f"with the error's message ({message!r}).")
        expect(message in str(err), f"{what}: parse_sse raised ValueError({str(err)!r:.120}), which does not say "
                                    f"why: put the server's message ({message!r}, in chunk['error']['message']) in "
                                    "it. Check each chunk for an 'error' key as you read it.")
    for what, lines, _ in truncated:
        got, err = _attempt(answer, lines)
        returned = f"a list of {len(got)} chunks" if isinstance(got, list) else f"{got!r:.80}"
        expect(err is not None, f"{what}: parse_sse returned {returned}. The lines ended without data: [DONE], so "
                                "the answer may be incomplete (the connection dropped, the server died): raise "
                                "ValueError instead of returning part of it.")
        expect(isinstance(err, ValueError), f"{what}: parse_sse raised {type(err).__name__}: {err}; a stream that "
                                            "ends without data: [DONE] should raise ValueError.")
    return (f"returns the chunks of {len(good)} streams (comments and other fields among them, [DONE] inside a "
            f"text, unicode) and raises ValueError for {len(errors)} error streams and {len(truncated)} cut ones.")


# -- C.2: the key mask of a decode step -----------------------------------------------------------


def _slot_cache(lengths: list[int], max_len: int, rows: list[int]) -> SlotKVCache:
    """A SlotKVCache whose slot s holds lengths[s] positions (even slots filled by insert, as the engine does)."""
    cache = SlotKVCache(n_layer=1, slots=len(lengths), n_kv_head=1, head_dim=2, max_len=max_len)
    for slot, n in enumerate(lengths):
        if slot % 2 == 0 and n > 0:
            prefilled = KVCache(1, 1, 1, 2, max_len)
            prefilled.advance(n)
            cache.insert(slot, prefilled)
        else:
            cache.lengths[slot] = n
    return cache.use(rows)


def _mask_cases() -> list[tuple[str, SlotKVCache]]:
    gen = random.Random(302)
    cases = [
        ("four rows of lengths 3, 0, 7 and 5 (max_len 8: 7 is the last position)",
         _slot_cache([3, 0, 7, 5], 8, [0, 1, 2, 3])),
        ("three of six slots in use, out of order", _slot_cache([2, 9, 0, 4, 11, 6], 12, [4, 0, 3])),
        ("one row", _slot_cache([5], 16, [0])),
        ("every row empty (its first token goes to position 0)", _slot_cache([0, 0, 0], 4, [2, 0, 1])),
        ("max_len 1", _slot_cache([0, 0], 1, [1, 0])),
    ]
    for _ in range(4):  # and four drawn at random, each with an empty row and a row at the last position
        slots, max_len = gen.randint(2, 7), gen.randint(2, 24)
        lengths = [gen.randrange(max_len) for _ in range(slots)]
        lengths[gen.randrange(slots)], lengths[gen.randrange(slots)] = 0, max_len - 1
        rows = gen.sample(range(slots), gen.randint(1, slots))
        cases.append((f"drawn at random ({len(rows)} of {slots} slots in use, max_len {max_len})",
                      _slot_cache(lengths, max_len, rows)))
    return cases


def _mask_step(answer) -> int:
    """A decode step of a tiny GPT through a SlotKVCache whose key mask is the reader's, against each row alone.

    Returns the number of rows compared; raises ExerciseFailed when a row's logits differ.
    """
    config = GPTConfig(vocab_size=64, context_length=16, d_model=16, n_layer=2, n_head=2)
    with torch.random.fork_rng():
        torch.manual_seed(303)
        model = GPT(config).eval()
        prompts = [torch.randint(0, 64, (n,)) for n in (1, 6, 11, 15)]  # 15: the step writes the last position
        nexts = torch.randint(0, 64, (len(prompts),)).tolist()
    slots = [2, 0, 3, 1]  # prompt i lives in slot slots[i]
    cache = SlotKVCache.for_model(model, len(prompts))
    cache.key_mask = lambda: as_tensor(call_answer(answer, cache.length.clone(), cache.max_len,
                                             what="your key_mask (inside the model)"), "key_mask")  # fmt: skip
    alone = []
    with torch.no_grad():
        for prompt, slot, token in zip(prompts, slots, nexts, strict=True):
            kv = model.new_kv_cache(1)
            model(prompt[None], kv_cache=kv)
            cache.insert(slot, kv)
            alone.append(model(torch.tensor([[token]]), kv_cache=kv)[0][0, -1])
        order = [1, 3, 0, 2]  # the rows of the step, in this order (slots 0, 1, 2, 3)
        logits, _ = model(torch.tensor([[nexts[i]] for i in order]), kv_cache=cache.use([slots[i] for i in order]))
    for row, i in enumerate(order):
        assert_close(logits[row, -1], alone[i], f"the logits of a row of {len(prompts[i])} cached tokens in a batched "
                     "decode step with your mask", hint="Each row must see exactly its own keys: its cached "
                     "positions and the one written in this step.", atol=1e-5, rtol=1e-4)  # fmt: skip
    return len(order)


@exercise("C.2", "the key mask of a decode step")
def grade_key_mask(answer: Callable[[torch.Tensor, int], torch.Tensor]) -> str:
    """answer(lengths (B,) long, max_len) -> (B, max_len) bool, equal to `SlotKVCache.key_mask()`.

    Row b has lengths[b] positions filled; the decode step writes the new token's
    key at position lengths[b] before attention, and the new token sees its
    cached keys and itself: True at 0 .. lengths[b] inclusive. Then a decode
    step of a tiny GPT with the reader's mask must give every row the logits it
    gets alone.
    """
    cases = _mask_cases()
    for what, cache in cases:
        lengths, max_len = cache.length.clone(), cache.max_len
        given = lengths.clone()
        got = as_tensor(call_answer(answer, given, max_len, what="your key_mask"), f"key_mask for {what}")
        expect(torch.equal(given, lengths), f"{what}: your key_mask changed `lengths` in place; the cache still needs "
                                            "them (leave them as they were).")
        expected = cache.key_mask()
        b = lengths.numel()
        expect(got.dtype == torch.bool, f"{what}: the mask has dtype {got.dtype}; return a bool tensor (True = the "
                                        "key may be seen).")
        if tuple(got.shape) != (b, max_len):
            hint = (" It looks transposed: one row per sequence (B rows), one column per position (max_len)."
                    if tuple(got.shape) == (max_len, b) else "")
            raise ExerciseFailed(f"{what}: a mask of shape {tuple(got.shape)}, expected (B, max_len) = "
                                 f"{(b, max_len)}.{hint}")
        if torch.equal(got, expected):
            continue
        pos = torch.arange(max_len)[None, :]
        if torch.equal(got, pos < lengths[:, None]):
            hint = ("Your mask hides the position being written: the step stores the new token's key at position "
                    "lengths[b] before attention runs, and the token must see itself (with lengths[b] = 0 your row "
                    "would see no key at all). True at positions 0 .. lengths[b] inclusive: <=, not <.")
        elif max_len == b and torch.equal(got, expected.T):
            hint = "It looks transposed: row b is sequence b, column j is position j."
        else:
            hint = "Row b may see positions 0 .. lengths[b] (its cached keys and the new one), nothing after them."
        wrong = (got != expected).nonzero()[0].tolist()
        raise ExerciseFailed(f"{what}: row {wrong[0]} (lengths {int(lengths[wrong[0]])}) at position {wrong[1]}: your "
                             f"mask says {bool(got[tuple(wrong)])}, SlotKVCache's says {bool(expected[tuple(wrong)])}. "
                             f"{hint}")
    rows = _mask_step(answer)
    return (f"equals SlotKVCache.key_mask() in {len(cases)} cases (empty rows, rows at the last position, slots out "
            f"of order), and a decode step of a tiny GPT with your mask gives each of {rows} rows its logits alone.")


# -- C.3: percentiles of latencies ----------------------------------------------------------------


def _percentile_cases() -> list[tuple[str, list[float], float]]:
    gen = random.Random(304)
    latencies = [round(gen.lognormvariate(-1.0, 0.6), 4) for _ in range(37)]
    cases = [("one value", [0.25], q) for q in (0, 50, 95, 100)]
    cases += [("ties", [1.0, 2.0, 2.0, 1.0, 5.0, 2.0], q) for q in (0, 25, 50, 95, 100)]
    cases += [("two values", [3.0, 1.0], q) for q in (50, 95)]
    cases += [("37 latencies, unsorted", latencies, q) for q in (0, 50, 90, 95, 99, 100, 12.5)]
    cases.append(("integers", [5, 1, 4, 2, 3], 95))
    for _ in range(4):  # and four drawn at random
        n = gen.randint(2, 60)
        cases.append((f"drawn at random ({n} values)", [gen.uniform(-5, 50) for _ in range(n)],
                      gen.choice((gen.uniform(0, 100), 95, 50))))
    return cases


@exercise("C.3", "percentiles of latencies")
def grade_percentile(answer: Callable[[list[float], float], float]) -> str:
    """answer(values, q) -> the q-th percentile (q in 0..100), linear interpolation: `numpy.percentile`'s default."""
    how = ("Sort a copy, take the position p = (n - 1) * q / 100 (q is a percentage, 0 to 100), and interpolate "
           "between the values on either side: xs[floor(p)] + (xs[ceil(p)] - xs[floor(p)]) * (p - floor(p)).")
    cases = _percentile_cases()
    for what, values, q in cases:
        given = list(values)
        got = as_number(call_answer(answer, given, q, what=f"your percentile ({what}, q = {q:g})", hint=how),
                        f"percentile({what}, q = {q:g})")
        expect(given == values, f"{what}: your percentile reordered (or changed) `values` in place; sort a copy "
                                "(sorted(values)): the caller's list must stay as it was.")
        expected = float(np.percentile(values, q))
        if abs(got - expected) <= 1e-9 * max(1.0, abs(expected)):
            continue
        xs = sorted(values)
        n = len(xs)
        ranks = {xs[min(n - 1, max(0, math.ceil(q / 100 * n) - 1))], xs[int((n - 1) * q / 100)],
                 xs[round((n - 1) * q / 100)]}
        if any(abs(got - r) <= 1e-12 for r in ranks):
            hint = ("You returned one of the values (a nearest-rank percentile); numpy's default, and the bench's, "
                    "interpolates between the two values around the position. ")
        elif 0 < q < 100 and abs(got - float(np.percentile(values, min(100.0, q * 100)))) <= 1e-9 * max(1, abs(got)):
            hint = "q is a percentage (95 means the 95th percentile), not a fraction: divide it by 100. "
        else:
            hint = ""
        raise ExerciseFailed(f"{what}, q = {q:g}: you returned {got:.6g}, numpy.percentile gives {expected:.6g}. "
                             f"{hint}{how}")
    return (f"equals numpy.percentile in {len(cases)} cases: one value, ties, unsorted latencies, q = 0, 50, 95, 99 "
            "and 100, and leaves the list as it was.")


# -- C.4: decode steps under continuous batching --------------------------------------------------


def _steps(lengths: list[int], slots: int) -> int:
    """Decode steps until every request is done: each takes the slot that frees first (a heap of free times)."""
    free = [0] * min(slots, max(len(lengths), 1))
    for n in lengths:  # in arrival order; the slot that frees first is taken at that step
        heapq.heappush(free, heapq.heappop(free) + n)
    return max(free)


def _static(lengths: list[int], slots: int) -> int:
    return sum(max(lengths[i : i + slots]) for i in range(0, len(lengths), slots))


def _batching_cases() -> list[tuple[str, list[int], int]]:
    gen = random.Random(305)
    cases = [
        ("one slot: one request after the other", [3, 1, 4, 1, 5], 1),
        ("more slots than requests", [3, 1, 4], 8),
        ("no requests", [], 4),
        ("two long requests and six short ones, 2 slots", [10, 2, 2, 2, 2, 2, 2, 10], 2),
        ("one long request among short ones, 4 slots", [30, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3], 4),
        ("equal lengths, 3 slots", [4] * 7, 3),
        ("a single request", [7], 3),
    ]
    for _ in range(6):  # and six drawn at random
        n, slots = gen.randint(2, 24), gen.randint(2, 6)
        cases.append((f"drawn at random ({n} requests, {slots} slots)", [gen.randint(1, 40) for _ in range(n)], slots))
    return cases


@exercise("C.4", "decode steps under continuous batching")
def grade_continuous_steps(answer: Callable[[list[int], int], int]) -> str:
    """answer(lengths, slots) -> decode steps until all requests are done under continuous batching.

    Every request waits at step 0, in order; request i needs lengths[i] decode
    steps. A request takes a free slot at the first step one is free (in
    order of arrival) and frees it when done. The reference here keeps a heap
    of the slots' free times.
    """
    rule = ("A request that starts at step t and needs n steps decodes at steps t .. t + n - 1 and frees its slot "
            "for step t + n, when the next waiting request takes it; the answer is the step at which the last "
            "slot frees (0 when there is nothing to do).")
    cases = _batching_cases()
    for what, lengths, slots in cases:
        expected = _steps(lengths, slots)
        got = as_number(call_answer(answer, list(lengths), slots, what=f"your continuous_steps ({what})"),
                        f"continuous_steps({lengths}, {slots})")
        expect(got == int(got), f"{what}: continuous_steps returned {got}; steps are whole numbers (a request "
                                "cannot be split between slots).")
        if got == expected:
            continue
        if got == _static(lengths, slots):
            hint = ("That is static batching: each group of `slots` requests waits for its longest before the next "
                    "group starts. With continuous batching a finished request frees its slot at once. ")
        elif abs(got - expected) == 1:
            hint = "Off by one. "
        elif got in (_steps(sorted(lengths), slots), _steps(sorted(lengths, reverse=True), slots)):
            hint = ("Requests take the free slots in order of arrival (first come, first served), not sorted by "
                    "length. ")
        elif lengths and got == math.ceil(sum(lengths) / slots):
            hint = "A request runs in one slot from start to end: its steps cannot be spread over several slots. "
        else:
            hint = ""
        shown = lengths if len(lengths) <= 16 else f"{lengths[:16]}..."
        raise ExerciseFailed(f"{what}: continuous_steps({shown}, slots={slots}) returned {got:g}, expected "
                             f"{expected} (static batching would take {_static(lengths, slots) if lengths else 0}). "
                             f"{hint}{rule}")
    return (f"equals a schedule of slot free times in {len(cases)} cases: one slot (the sum), more slots than "
            "requests (the longest), no requests, a long request among short ones, and random ones.")
