"""Appendix C's diagrams: serving a model over HTTP, with continuous batching.

Every number and token drawn comes from the package: statuses, error codes and
limits from `minillm.serve`'s own checks run on bad requests against a tiny
random model (`ServeConfig()`'s defaults; `check_headers` for the middleware's
401 and 413); the streamed lines built by the server's `stream_chunk`, `_sse`
and `_usage`, their pieces from a `TextDecoder`; slot lengths, stale rows and key masks from a real `SlotKVCache`
filled through `insert` and decode steps of a tiny random GPT; token ids from
`encode_chat` with a 320-token BPE trained on the book's list tasks
(`minillm.synthetic`), the conversation's answers computed by those tasks;
timelines from `simulate`, a step-by-step model of the `BatchEngine`'s
admission rule. Nothing is trained but the tokenizer (a fraction of a second).
"""

from __future__ import annotations

import dataclasses
import functools
import json

import torch

from minillm import serve
from minillm.batching import Request, SlotKVCache
from minillm.diagrams import diagram
from minillm.diagrams.kit import ACCENT, INK, MUTED, SERIES, STYLE, Diagram, text_runs, text_width
from minillm.diagrams.kit import cell as _cell
from minillm.diagrams.kit import pale as _pale
from minillm.generate import TextDecoder
from minillm.instruct import add_special_tokens, encode_chat, format_chat
from minillm.model import GPT, GPTConfig
from minillm.synthetic import TASKS, list_tasks
from minillm.tokenizer import BPETokenizer

MARKER = SERIES[3]  # a chat marker: one special id (as in chapter 07's templates)
#: The timelines' requests, in arrival order: (arrival step, tokens to generate).
ARRIVALS = ((0, 6), (0, 3), (1, 9), (2, 4), (4, 2), (5, 5), (7, 3))
SLOTS = 3  # rows of the timelines' engine (max_batch)
NUMBERS = [5, 0, 3]  # the list the conversation is about


def _conversation() -> list[dict]:
    """System, user, assistant, user, in the words of the book's list tasks; the last one types "<|end|>"."""
    (sort, by_sorting), (reverse, _) = TASKS["sort"], TASKS["reverse"]
    return [{"role": "system", "content": "Return a list."},
            {"role": "user", "content": f"{sort} {NUMBERS}"},
            {"role": "assistant", "content": str(by_sorting(NUMBERS))},
            {"role": "user", "content": f"{reverse} <|end|>"}]


def _answer() -> str:
    """The answer to the last turn, as the "reverse" task computes it."""
    return str(TASKS["reverse"][1](TASKS["sort"][1](NUMBERS)))


@functools.lru_cache(maxsize=1)
def _tokenizer() -> BPETokenizer:
    """A 320-token BPE trained on 400 of the book's list tasks, plus the chat markers."""
    rows = list_tasks(400, seed=0)
    text = "\n".join(f"{r['instruction']}\n{r['input']}\n{r['output']}" for r in rows)
    return add_special_tokens(BPETokenizer.train(text, 320))


def _tiny_gpt(context: int) -> GPT:
    """A random 1-layer GPT over the tokenizer's vocabulary (no training: only shapes and lengths matter)."""
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=_tokenizer().vocab_size, context_length=context, d_model=16, n_layer=1, n_head=2)
    return GPT(config).eval()


def _rejections() -> dict[str, tuple[int, str]]:
    """check -> (HTTP status, its code, else its param, else its type): what the server's own checks answer."""
    config = serve.ServeConfig()
    server = serve.Server(_tiny_gpt(96), _tokenizer(), config)
    ok = {"model": config.model_name}

    def caught(check, *args) -> tuple[int, str]:
        try:
            check(*args)
        except serve.APIError as err:
            return err.status, err.code or (f"param: {err.param}" if err.param else err.type)
        raise AssertionError(f"{check.__name__} accepted a bad request")

    key = {"authorization": "Bearer wrong"}
    too_big = {"content-length": str(config.max_body_bytes + 1)}
    long = [{"role": "user", "content": " ".join([str(NUMBERS)] * 20)}]
    return {"key": caught(serve.check_headers, key, "POST", "/v1/completions", dataclasses.replace(config, api_key="k")),
            "size": caught(serve.check_headers, too_big, "POST", "/v1/completions", config),
            "json": caught(serve._check_common, [], config),
            "model": caught(serve._check_common, {"model": "gpt-4o"}, config),
            "n": caught(serve._check_common, {**ok, "n": config.max_n + 1}, config),
            "max_tokens": caught(serve._sampling, {"max_tokens": server.context + 1}, config, server.context),
            "context": caught(server.chat_requests, {**ok, "messages": long}),
            "queue": caught(server.submit, [Request([1], max_tokens=1)] * (config.max_batch + config.max_queue + 1), None),
            "timeout": caught(serve._ended, "timeout", config.request_timeout)}






def _lines(d: Diagram, x: float, y: float, lines, color: str = MUTED, step: float = 0.22) -> None:
    """Left-aligned lines of 9-point text from (x, y) downwards: captions and notes."""
    for k, line in enumerate(lines):
        d.text(x, y - step * k, line, size=9, color=color, ha="left")


@diagram("C_request_path")
def request_path() -> Diagram:
    """Client -> uvicorn/FastAPI -> guard -> checks -> queue -> slots -> TextDecoder -> JSON or SSE; rejections."""
    err, config = _rejections(), serve.ServeConfig()
    d = Diagram(7.3, 4.0, title="The path of a request through the server")
    client = d.box(0.12, 0.75, 1.0, 2.6, "", kind="data")
    for k, line in enumerate(("clients", "", "openai", "(Python)", "", "curl", "", "the chat", "page", "(GET /)")):
        d.text(client.center[0], 3.1 - 0.2 * k, line, size=10 if k == 0 else 9, weight="bold" if k == 0 else "normal")
    y, h = 2.75, 0.6
    app = d.box(1.45, y, 1.1, h, "uvicorn +\nFastAPI", kind="op", size=9)
    guard = d.box(2.85, y, 1.15, h, "guard\nkey, body size", kind="op", size=9)
    check = d.box(4.3, y, 1.3, h, "parse, check\nfields, context", kind="op", size=9)
    queue = d.box(5.9, y, 1.25, h, f"queue\n≤ {config.max_queue} waiting", kind="tensor", size=9)
    d.text(1.45, y + h + 0.17, "POST /v1/chat/completions or /v1/completions, JSON body", size=9, color=MUTED,
           ha="left")
    d.arrow((client.x + client.w, y + h / 2), app.left)
    for a, b in ((app, guard), (guard, check), (check, queue)):
        d.arrow(a.right, b.left)
    # what a step answers instead (statuses from the server's checks)
    answers = ((guard, (("key", "no or wrong key"), ("size", "body too large"))),
               (check, (("json", "a bad field"), ("model", "unknown model"), ("context", "over the context"))),
               (queue, (("queue", "queue full"),)))
    for box, rows in answers:
        for k, (check_name, words) in enumerate(rows):
            d.text(box.x + (0.2 if box is queue else 0.05), y - 0.17 - 0.2 * k, f"{err[check_name][0]} {words}",
                   size=9, color=ACCENT, ha="left")
    yb = 0.75
    engine = d.box(5.55, yb, 1.6, 0.95, "", kind="layer")
    d.text(engine.center[0], yb + 0.75, "BatchEngine", size=9)
    for s in range(4):
        _cell(d, engine.x + 0.18 + s * 0.32, yb + 0.38, 0.28, 0.2, fill=STYLE["tensor"][0], edge=STYLE["tensor"][1])
    d.text(engine.center[0], yb + 0.2, f"≤ {config.max_batch} slots, one model", size=9, color=MUTED)
    d.arrow((queue.x + 0.1, y), (queue.x + 0.1, engine.y + engine.h))
    d.text(queue.x + 0.2, 2.1, "a free slot", size=9, color=MUTED, ha="left")
    d.text(engine.x + engine.w, yb - 0.17, f"{err['timeout'][0]} too slow", size=9, color=ACCENT, ha="right")
    ids = d.box(4.3, yb + 0.2, 0.9, 0.55, "token ids\n1 per step", kind="tensor", size=9)
    dec = d.box(2.8, yb + 0.175, 1.25, 0.6, "TextDecoder\nwhole characters,\nstop strings", kind="op", size=9)
    out = d.box(1.45, yb + 0.175, 1.1, 0.6, "JSON, or SSE\nas they come", kind="data", size=9)
    for a, b in ((engine, ids), (ids, dec), (dec, out)):
        d.arrow(a.left, b.right)
    d.arrow(out.left, (client.x + client.w, out.left[1]))
    _lines(d, 0.12, 0.35, ["\"stream\": false answers once, at the end; \"stream\": true sends each piece at once"])
    _lines(d, 0.12, 0.12, ["red: the HTTP status a request gets instead, with {\"error\": {message, type, param, "
                           "code}}"], color=ACCENT)
    return d


@diagram("C_sse")
def sse() -> Diagram:
    """A streamed chat completion (`data:` lines, the last chunk's finish_reason, [DONE]) above the JSON answer."""
    tok = _tokenizer()
    answer, end = tok.encode_ordinary(_answer()), tok.special_tokens["<|end|>"]
    decoder = TextDecoder(tok, stop_ids=frozenset({end}))  # the pieces the server streams: its decoder's output
    pieces = [p for p in (decoder.push(i) for i in answer + [end]) if p]
    usage = serve._usage([len(encode_chat(_conversation(), tok))], len(answer) + 1)  # the <|end|> written counts
    head = {"id": "chatcmpl-0", "object": "chat.completion.chunk", "created": 0,
            "model": serve.ServeConfig().model_name}

    def short(line: str, fields: dict) -> str:
        """A line with the fields every event repeats (id, object, created, model, index, logprobs) made "…"."""
        for field in (json.dumps(fields)[1:-1], '"index": 0', '"logprobs": null'):
            line = line.replace(field, "…")
        return line

    def event(chunk: dict) -> str:
        """One chunk through the server's `_sse`, with the repeated fields shortened."""
        return short(serve._sse(chunk).decode(), head)

    wire = [event(serve.stream_chunk(head, 0, None, None, chat=True, first=True))]
    wire += [event(serve.stream_chunk(head, 0, p, None, chat=True)) for p in pieces]
    wire += [event(serve.stream_chunk(head, 0, None, "stop", chat=True)), event({**head, "choices": [], "usage": usage}),
             serve._sse("[DONE]").decode()]
    d = Diagram(7.3, 4.7, title="One answer, streamed or not")
    top = 4.15
    d.text(0.15, top, "\"stream\": true: text/event-stream, one event per line", size=10, weight="bold", ha="left")
    for k, text in enumerate(wire):
        last = '"stop"' in text or "[DONE]" in text
        d.text(0.25, top - 0.3 - 0.22 * k, text.strip(), size=9, ha="left", color=ACCENT if last else INK)
    notes = (f"{len(pieces)} pieces of text, as the TextDecoder releases them; then the finish_reason; "
             "usage (only with", "stream_options.include_usage); [DONE]. A blank line ends each event; "
                                 "…: fields every event repeats")
    y = top - 0.3 - 0.22 * len(wire)
    _lines(d, 0.25, y, notes, step=0.2)
    y -= 0.6
    d.text(0.15, y, "\"stream\": false: one JSON body at the end", size=10, weight="bold", ha="left")
    message = {"role": "assistant", "content": "".join(pieces)}
    head = {**head, "object": "chat.completion"}
    body = {**head, "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}],
            "usage": usage}
    text = short(json.dumps(body), head)
    cut = text.index('"usage"')
    box = d.box(0.15, y - 0.68, 7.0, 0.5, kind="data")
    for k, line in enumerate((text[:cut], " " + text[cut:])):
        d.text(0.25, box.y + box.h - 0.14 - 0.22 * k, line, size=9, ha="left")
    return d


def simulate(requests, slots: int, continuous: bool = True) -> list[tuple[int, int]]:
    """(slot, first step) of each request [(arrival step, tokens), ...] on an engine of `slots` rows.

    Time goes in decode steps. A request of n tokens holds a slot for n steps,
    its first being its prefill (which gives its first token). Before each step
    the free slots take the requests that have arrived, oldest first, lowest
    slot first: the `BatchEngine`'s `_admit`. Continuous: a slot is free again
    right after its request's last step. Static: requests join only when every
    slot is free, and a batch keeps all its slots until its longest request ends.
    """
    placed: list[tuple[int, int] | None] = [None] * len(requests)
    free_at = [0] * slots  # the step at which each slot is free again
    waiting, step = list(range(len(requests))), 0
    while waiting:
        free = [s for s in range(slots) if free_at[s] <= step]
        if not continuous and len(free) < slots:
            free = []
        for s in free:
            ready = [r for r in waiting if requests[r][0] <= step]
            if not ready:
                break
            waiting.remove(ready[0])
            placed[ready[0]] = (s, step)
            free_at[s] = step + requests[ready[0]][1]
        if not continuous and any(p is not None and p[1] == step for p in placed):
            free_at = [max(free_at)] * slots  # the batch holds every slot until its longest ends
        step += 1
    return placed


def _summary(requests, placed) -> tuple[int, float]:
    """(steps until the last request ends, mean steps a request waits for a slot)."""
    total = max(start + n for (_, n), (_, start) in zip(requests, placed))
    return total, sum(start - arrival for (arrival, _), (_, start) in zip(requests, placed)) / len(requests)


def _timeline(d: Diagram, x0: float, y0: float, cell: float, placed, steps: int, static: bool,
              only: int | None = None) -> None:
    """Slots as rows (slot 0 on top), steps as columns; each request's cells in its colour, its letter inside.

    `static`: hatch the cells a batch holds without using them. `only`: draw that request in colour, the rest grey.
    """
    used = set()
    for s in range(SLOTS):
        d.text(x0 - 0.08, y0 + (SLOTS - 0.5 - s) * cell, f"slot {s}", size=9, color=MUTED, ha="right")
        for t in range(steps):
            _cell(d, x0 + t * cell, y0 + (SLOTS - 1 - s) * cell, cell, cell, edge="#d0d0d0", lw=0.6)
    for r, ((_, n), (s, start)) in enumerate(zip(ARRIVALS, placed)):
        name, color = chr(ord("A") + r), SERIES[r % len(SERIES)] if only in (None, r) else "#9a9a9a"
        for t in range(start, start + n):
            used.add((s, t))
            _cell(d, x0 + t * cell, y0 + (SLOTS - 1 - s) * cell, cell, cell, name, edge="white",
                  fill=color if t == start else _pale(color, 0.55), color="white" if t == start else INK)
    for start in {p[1] for p in placed} if static else ():  # a batch holds every slot until its longest ends
        end = max(st + n for (_, n), (_, st) in zip(ARRIVALS, placed) if st == start)
        for s in range(SLOTS):
            for t in range(start, end):
                if (s, t) not in used:
                    _cell(d, x0 + t * cell, y0 + (SLOTS - 1 - s) * cell, cell, cell, fill="#f4f4f4",
                          edge="#d0d0d0", hatch="///", lw=0.6)
    for t in range(steps):  # arrivals above the grid
        names = "".join(chr(ord("A") + r) for r, (a, _) in enumerate(ARRIVALS) if a == t)
        if names and only is None:
            d.text(x0 + (t + 0.5) * cell, y0 + SLOTS * cell + 0.13, names, size=9, color=MUTED)


@diagram("C_static_vs_continuous")
def static_vs_continuous() -> Diagram:
    """The same requests under static batching (wait for the longest) and continuous batching (join, leave)."""
    runs = [(False, simulate(ARRIVALS, SLOTS, continuous=False)), (True, simulate(ARRIVALS, SLOTS))]
    steps = max(_summary(ARRIVALS, placed)[0] for _, placed in runs)
    d = Diagram(7.3, 4.1, title=f"{len(ARRIVALS)} requests on {SLOTS} slots: static and continuous batching")
    cell, x0 = min(0.27, 6.1 / steps), 0.85
    for k, (continuous, placed) in enumerate(runs):
        y0 = 2.3 - 1.55 * k
        total, wait = _summary(ARRIVALS, placed)
        name = "continuous: join at the next step, leave at once" if continuous else \
            "static: a batch starts together and ends with its longest"
        d.text(0.15, y0 + SLOTS * cell + 0.38, name, size=10, weight="bold", ha="left")
        d.text(x0 - 0.08, y0 + SLOTS * cell + 0.13, "arrive", size=9, color=MUTED, ha="right")
        _timeline(d, x0, y0, cell, placed, steps, static=not continuous)
        d.text(x0 + steps * cell + 0.1, y0 + 0.55, f"{total} steps", size=10, ha="left",
               color=ACCENT if not continuous else INK, weight="bold")
        d.text(x0 + steps * cell + 0.1, y0 + 0.3, f"mean wait\n{wait:.1f} steps", size=9, ha="left", va="top",
               color=MUTED)
    _lines(d, 0.15, 0.4, ("dark: prefill (the prompt in one pass, the first token); pale: one decode step each;",
                          "hatched: a slot its batch holds unused until its longest request ends. A column: a step."))
    return d


def _slot_cache():
    """A 4-slot `SlotKVCache` of a tiny GPT: 4 prompts inserted, 2 decode steps, slot 1 released, then refilled.

    Returns (lengths after the release, stale positions (slot -> filled positions
    beyond its length), the new request's prefilled `KVCache` length, lengths
    after the insert, key_mask() of the next step, max_len).
    """
    model = _tiny_gpt(10)
    cache = SlotKVCache.for_model(model, 4)

    def prefill(n: int):
        kv = model.new_kv_cache(1, n)
        model(torch.arange(1, n + 1)[None], kv_cache=kv)  # the whole prompt in one forward pass
        return kv

    with torch.no_grad():
        for slot, n in enumerate((5, 3, 4, 2)):
            cache.insert(slot, prefill(n))
        for _ in range(2):  # two decode steps, one token per row
            model(torch.ones(4, 1, dtype=torch.long), kv_cache=cache.use([0, 1, 2, 3]))
        cache.release(1)  # its request finished
        before = cache.lengths.tolist()
        written = (cache.k[0, :, 0].abs().sum(-1) > 0).tolist()  # (slots, max_len): positions holding keys
        new = prefill(3)
        cache.insert(1, new)
    after = cache.lengths.tolist()
    mask = cache.use([0, 1, 2, 3]).key_mask().tolist()
    return before, written, new.length, after, mask, cache.max_len


@diagram("C_slot_cache")
def slot_cache() -> Diagram:
    """SlotKVCache rows filled to their own lengths; a freed slot; a prefilled KVCache copied in; the key mask."""
    before, written, n_new, after, mask, max_len = _slot_cache()
    blue, edge, _ = STYLE["tensor"]
    d = Diagram(7.3, 3.9, title="The SlotKVCache: one row per request, each filled to its own length")
    cell, top = 0.22, 2.05
    panels = ((0.75, "two decode steps, then release(1)", before), (4.5, "insert(1, kv); the next step", after))
    for x0, title, lengths in panels:
        d.text(x0 + max_len * cell / 2 + 0.1, top + 4 * cell + 0.42, title, size=10, weight="bold")
        for t in range(max_len):
            d.text(x0 + (t + 0.5) * cell, top + 4 * cell + 0.12, str(t), size=9, color=MUTED)
        d.text(x0 + max_len * cell + 0.08, top + 4 * cell + 0.12, "length", size=9, color=MUTED, ha="left")
        for s in range(4):
            y = top + (3 - s) * cell
            d.text(x0 - 0.08, y + cell / 2, f"slot {s}", size=9, color=MUTED, ha="right")
            d.text(x0 + max_len * cell + 0.25, y + cell / 2, str(lengths[s]), size=9,
                   color=ACCENT if s == 1 else INK)
            for t in range(max_len):
                x = x0 + t * cell
                if lengths is after and t == lengths[s]:  # where this step's token goes (and is seen)
                    _cell(d, x, y, cell, cell, fill=STYLE["warn"][0], edge=ACCENT, lw=1.4)
                elif mask[s][t] if lengths is after else t < lengths[s]:
                    _cell(d, x, y, cell, cell, fill=blue, edge=edge, lw=0.8)
                elif written[s][t]:  # keys still there beyond the length: never seen
                    _cell(d, x, y, cell, cell, fill="#f4f4f4", edge="#b0b0b0", hatch="///", lw=0.6)
                else:
                    _cell(d, x, y, cell, cell, edge="#d0d0d0", lw=0.6)
    # the new request, prefilled alone, then copied into the free row
    xk, yk = 2.3, 1.05
    d.text(xk - 0.08, yk + cell / 2, "KVCache", size=9, color=MUTED, ha="right")
    for t in range(n_new):
        _cell(d, xk + t * cell, yk, cell, cell, fill=STYLE["accent"][0], edge=STYLE["accent"][1])
    d.text(xk - 0.75, yk - 0.22, f"a new request: its {n_new}-token prompt prefilled alone, in one pass", size=9,
           color=MUTED, ha="left")
    d.arrow((xk + n_new * cell + 0.05, yk + cell / 2), (4.5 - 0.6, top + 2.5 * cell), color=ACCENT, curve=-0.3,
            label="insert(1, kv): copy its rows", label_offset=(0.75, -0.25))
    legend = ((blue, edge, None, "a key the row sees (key_mask)"),
              (STYLE["warn"][0], ACCENT, None, "this step's token, at position length"),
              ("#f4f4f4", "#b0b0b0", "///", "left over, masked"))
    for (fill, line, hatch, text), x in zip(legend, (0.15, 2.55, 5.55)):
        _cell(d, x, 0.35, 0.22, 0.2, fill=fill, edge=line, hatch=hatch)
        d.text(x + 0.3, 0.45, text, size=9, ha="left")
    _lines(d, 0.15, 0.12, ["release() only sets a length to 0; a row sees its own keys, never another row's"])
    return d


@diagram("C_prefill_decode")
def prefill_decode() -> Diagram:
    """One request of the continuous timeline: queue wait, prefill, decode steps shared with the batch; TTFT, ITL."""
    placed = simulate(ARRIVALS, SLOTS)
    # the request that waits longest (the longer one on a tie) is the one drawn
    r = max(range(len(ARRIVALS)), key=lambda i: (placed[i][1] - ARRIVALS[i][0], ARRIVALS[i][1]))
    (arrival, _), (slot, start) = ARRIVALS[r], placed[r]
    steps = _summary(ARRIVALS, placed)[0]
    rows = [sum(st <= t < st + m for (_, m), (_, st) in zip(ARRIVALS, placed)) for t in range(steps)]
    name = chr(ord("A") + r)
    prompt = len(encode_chat(_conversation(), _tokenizer()))
    d = Diagram(7.3, 4.25, title=f"Request {name}'s wait, prefill and decode (the continuous timeline)")
    cell, x0, y0 = min(0.45, 6.0 / steps), 1.0, 1.45
    _timeline(d, x0, y0, cell, placed, steps, static=False, only=r)
    top = y0 + SLOTS * cell
    yq = top + 0.45  # the queue row, above the slots
    d.text(x0 - 0.08, yq + cell / 2, "queue", size=9, color=MUTED, ha="right")
    for t in range(arrival, start):
        _cell(d, x0 + t * cell, yq, cell, cell, name, fill="#f4f4f4", edge="#b0b0b0", hatch="///", color=MUTED)
    d.arrow((x0 + (start - 0.5) * cell, yq), (x0 + (start + 0.3) * cell, y0 + (SLOTS - slot) * cell), color=ACCENT)
    d.text(x0 + (arrival + 0.5) * cell, yq + cell + 0.13, f"{name} arrives", size=9, color=MUTED)
    d.text(x0 - 0.08, y0 - 0.2, "batch size", size=9, color=MUTED, ha="right")
    for t in range(steps):
        d.text(x0 + (t + 0.5) * cell, y0 - 0.2, str(rows[t]), size=9, color=MUTED)
    d.brace(x0 + arrival * cell, x0 + (start + 1) * cell, y0 - 0.42,
            f"time to first token: {start + 1 - arrival} steps", color=ACCENT)
    d.brace(x0 + (start + 1) * cell, x0 + (start + 2) * cell, top + 0.1, "", below=False, color=ACCENT)
    d.text(x0 + (start + 2) * cell + 0.1, top + 0.17, "time between tokens: 1 step", size=9, color=ACCENT,
           ha="left")
    _lines(d, 0.15, 0.5, (f"prefill (dark): the whole prompt in one forward pass, alone (the chat of the template "
                          f"figure: {prompt} tokens),", "filling a KV cache; it gives the first token. Decode (pale): "
                          "one token per pass, every row together.", "Time to first token grows with the queue and "
                          "the prompt; the time between tokens with the batch."), step=0.2)
    return d


@diagram("C_limits")
def limits() -> Diagram:
    """The admission checks in order, with the status each answers and the ServeConfig field it reads."""
    err, c = _rejections(), serve.ServeConfig()
    rows = (("key", "API key (Bearer)", f"api_key = {c.api_key}: no key needed"),
            ("size", "body size", f"max_body_bytes = {c.max_body_bytes:,}"),
            ("json", "a JSON object", "—"),
            ("model", "the model's name", f"model_name = {c.model_name!r}"),
            ("n", "choices asked (n)", f"max_n = {c.max_n}"),
            ("max_tokens", "max_tokens", f"max_tokens_limit = {c.max_tokens_limit}: the context\n"
                                         f"(default_max_tokens = {c.default_max_tokens} if absent)"),
            ("context", "prompt + max_tokens", "≤ the model's context_length"),
            ("queue", "a free slot, or a place",
             f"max_batch = {c.max_batch} decoding,\nmax_queue = {c.max_queue} waiting"),
            ("timeout", "arrival to last token", f"request_timeout = {c.request_timeout:g} s"))
    d = Diagram(7.3, 4.7, title="What the server checks, in order, and what it answers")
    x_check, x_status, x_code, x_field = 0.15, 2.05, 2.6, 4.4
    top, h = 4.05, 0.4
    for x, head in ((x_check, "check"), (x_status, "answer"), (x_field, "ServeConfig() field")):
        d.text(x, top + 0.05, head, size=10, weight="bold", ha="left")
    for k, (key, what, field) in enumerate(rows):
        y = top - (k + 1) * h
        status, code = err[key]
        d.text(x_check, y + h / 2, f"{k + 1}. {what}", size=9, ha="left")
        d.box(x_status, y + 0.05, 0.45, h - 0.1, str(status), kind="warn", size=9)
        d.text(x_code, y + h / 2, code, size=9, ha="left", color=ACCENT)
        d.text(x_field, y + h / 2, field, size=9, ha="left", color=MUTED if field == "—" else INK)
        if k in (1, 6):  # the middleware's checks end after 2, the parsing's after 7
            d.line([(0.15, y - 0.02), (7.15, y - 0.02)], color="#b0b0b0", dashed=True)
    _lines(d, 0.15, 0.3, ("1-2: the middleware, before the body is read; 3-7: parsing; 8: the engine's queue; "
                          "9: while it decodes.", "Every error has OpenAI's shape, {\"error\": {message, type, param, "
                          "code}}, and never a traceback."), step=0.2)
    return d


def _shown(piece: str) -> str:
    """A token's text, newlines and leading spaces made visible."""
    return piece.replace("\n", "↵").replace(" ", "␣")


@diagram("C_chat_template")
def chat_template() -> Diagram:
    """Messages -> format_chat text -> encode_chat ids: markers are one id each, a typed "<|end|>" is plain text."""
    tok, messages = _tokenizer(), _conversation()
    text, ids = format_chat(messages), encode_chat(messages, tok)
    markers = {i: name for name, i in tok.special_tokens.items()}
    typed_end = messages[-1]["content"]
    d = Diagram(7.3, 5.7, title="From messages to token ids: the chat template")
    top = 5.0
    d.text(0.15, top + 0.15, "messages", size=10, weight="bold", ha="left")
    for k, m in enumerate(messages):
        y = top - 0.48 - 0.56 * k
        d.box(0.15, y, 2.5, 0.46, kind="data")
        d.text(0.25, y + 0.32, m["role"], size=9, ha="left", weight="bold")
        before, marker, _ = m["content"].partition("<|end|>")
        text_runs(d, 0.25, y + 0.12, [(before, INK), (marker, ACCENT)])
    d.arrow((2.72, top - 1.1), (3.15, top - 1.1))
    d.text(3.2, top + 0.15, "format_chat(messages): the text", size=10, weight="bold", ha="left")
    lines = text.rstrip("\n").split("\n")
    box = d.box(3.2, top - 0.21 * len(lines) - 0.1, 3.95, 0.21 * len(lines) + 0.1, kind="data")
    for k, line in enumerate(lines):
        runs, rest = [], line
        if typed_end in rest:  # the user's own "<|end|>": characters, drawn red
            head, _, rest = rest.partition(typed_end)
            runs += [(head + typed_end.partition("<|end|>")[0], INK), ("<|end|>", ACCENT)]
        for part in rest.replace("<|", "\0<|").replace("|>", "|>\0").split("\0"):
            if part:
                runs.append((part, MARKER if part in tok.special_tokens else INK))
        text_runs(d, 3.3, top - 0.14 - 0.21 * k, runs)
    d.text(box.x, box.y - 0.18, "the system message's text opens the next user turn", size=9, color=MUTED, ha="left")
    # the ids, wrapped: a marker is one special id, everything else ordinary BPE tokens
    d.text(0.15, 2.4, f"encode_chat(messages, tokenizer): {len(ids)} token ids", size=10, weight="bold", ha="left")
    d.text(7.15, 2.4, "↵ a newline, ␣ a space", size=9, color=MUTED, ha="right")
    x, y, h = 0.15, 1.95, 0.3
    typed_at = text.index(typed_end) + typed_end.index("<|end|>")  # where the user's "<|end|>" starts
    at = 0  # where token i's text starts in `text`
    for i in ids:
        piece = tok.decode([i])
        label = markers.get(i, _shown(piece))
        w = max(text_width(d, label) + 0.1, 0.24)
        if x + w > 7.15:
            x, y = 0.15, y - 0.57
        typed = i not in markers and typed_at <= at < typed_at + len("<|end|>")
        fill, edge = (_pale(MARKER, 0.75), MARKER) if i in markers else \
            (STYLE["warn"][0], ACCENT) if typed else STYLE["tensor"][:2]
        _cell(d, x, y, w, h, label, fill=fill, edge=edge, color=MARKER if i in markers else INK)
        d.text(x + w / 2, y - 0.13, str(i), size=9, color=MARKER if i in markers else ACCENT if typed else MUTED)
        x, at = x + w + 0.04, at + len(piece)
    assert at == len(text)
    specials = ", ".join(f"{name} = {tok.special_tokens[name]}" for name in ("<|user|>", "<|assistant|>", "<|end|>"))
    _lines(d, 0.15, 0.35, [f"purple: a marker, one special id ({specials})"], color=MARKER)
    _lines(d, 0.15, 0.12, ["red: \"<|end|>\" typed by the user: plain characters, ordinary ids, never the marker"],
           color=ACCENT)
    return d
