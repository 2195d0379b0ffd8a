"""Continuous batching: many requests decoded together, each in its own slot of one KV cache (appendix C).

A server that decodes one request at a time leaves most of the hardware idle:
a decode step reads every weight to produce one token for one sequence. Run
the step for 16 sequences at once and it costs little more. Requests do not
arrive together, though, nor end together. *Continuous batching* (Orca, Yu et
al. 2022; vLLM) admits new requests between decode steps and lets a finished
one leave at once, so no request waits for the longest in its batch.

* `SlotKVCache`: keys and values of `slots` sequences, each row filled to its
  own length. A decode step feeds one token per active row; the cache writes
  each row's keys at that row's position, gives each row its own position
  (`length` is a (B,) tensor: learned positions and RoPE read it) and a key
  mask that hides the empty end of every row.
* `BatchEngine`: a thread that owns the model. `submit(Request)` queues a
  request (a full queue raises `QueueFull`); between decode steps the engine
  prefills waiting requests alone (one forward pass over the prompt, copied
  into a free slot) and then decodes every active row in one forward pass.
  Each request samples with its own temperature, top-k/top-p and seeded
  generator, and its tokens become text through `minillm.generate.TextDecoder`
  (stop strings, whole UTF-8 characters). Events reach the caller through the
  request's `Handle` (a thread-safe queue, or an asyncio queue for a server).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import queue
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence

import torch

from minillm.attention import KVCache
from minillm.errors import ConfigError, MinillmError
from minillm.generate import TextDecoder, check_sampling, filter_logits, sample_next
from minillm.model import GPT
from minillm.tokenizer import Tokenizer


#: Temperatures below this decode greedily: dividing logits by, say, 1e-300 overflows to inf and the
#: softmax to NaN, while any temperature this small already puts all the probability on the top token.
GREEDY_BELOW = 1e-4
#: `BatchEngine.batch_sizes` and `queue_sizes` keep between this many and twice this many recent steps.
RECORDED_STEPS = 100_000


class QueueFull(MinillmError):
    """The engine's waiting queue is at its bound: try again later (HTTP 429)."""


class SlotKVCache:
    """Keys and values of `slots` independent sequences, row r filled to `lengths[r]`.

    Shapes as `minillm.attention.KVCache`: (n_layer, slots, Hkv, max_len, D).
    `use(rows)` picks the rows the next forward pass runs on, in order (B,);
    that pass must feed exactly one token per row. `insert(slot, cache)` copies
    a prefilled single-sequence `KVCache` into a slot.
    """

    def __init__(self, n_layer: int, slots: int, n_kv_head: int, head_dim: int, max_len: int,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> None:  # fmt: skip
        shape = (n_layer, slots, n_kv_head, max_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.max_len = max_len
        self.lengths = torch.zeros(slots, dtype=torch.long, device=device)
        self.rows = torch.arange(slots, device=device)
        self._positions = torch.arange(max_len, device=device)

    @classmethod
    def for_model(cls, model: GPT, slots: int) -> SlotKVCache:
        """An empty cache of `slots` rows of the model's context length, on its device and dtype."""
        c, w = model.config, model.tok_emb.weight
        return cls(c.n_layer, slots, c.kv_heads, c.head_dim, c.context_length, w.device, w.dtype)

    def use(self, rows: Sequence[int] | torch.Tensor) -> SlotKVCache:
        """Run the next forward pass on these rows (B,), in this order; returns self."""
        self.rows = torch.as_tensor(rows, dtype=torch.long, device=self.lengths.device)
        return self

    @property
    def length(self) -> torch.Tensor:
        """(B,): how many positions each row in use holds (where its next token sits)."""
        return self.lengths[self.rows]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, Hkv, 1, D) at each row's own position; return all keys, values (B, Hkv, max_len, D)."""
        if k.size(-2) != 1 or k.size(0) != self.rows.numel():
            raise ConfigError(f"a SlotKVCache takes one token for each of its {self.rows.numel()} rows in use, "
                              f"got keys of shape {tuple(k.shape)}; prefill with a KVCache and insert() it")  # fmt: skip
        at = self.lengths[self.rows]
        if int(at.max()) >= self.max_len:
            raise ConfigError(f"a row of the SlotKVCache is full ({self.max_len} positions)")
        self.k[layer, self.rows, :, at] = k[:, :, 0]
        self.v[layer, self.rows, :, at] = v[:, :, 0]
        return self.k[layer, self.rows], self.v[layer, self.rows]

    def key_mask(self) -> torch.Tensor:
        """(B, max_len) bool: the keys each row may see, its filled positions and the one just written."""
        return self._positions[None, :] <= self.lengths[self.rows][:, None]

    def advance(self, n: int) -> None:
        """Mark n more positions as filled in each row in use (called once per forward pass)."""
        self.lengths[self.rows] += n

    def insert(self, slot: int, cache: KVCache, row: int = 0) -> None:
        """Copy sequence `row` of a `KVCache` (its `length` positions) into `slot`, which it now owns."""
        n = cache.length
        if n > self.max_len:
            raise ConfigError(f"a sequence of {n} positions does not fit a slot of {self.max_len}")
        self.k[:, slot, :, :n] = cache.k[:, row, :, :n]
        self.v[:, slot, :, :n] = cache.v[:, row, :, :n]
        self.lengths[slot] = n

    def release(self, slot: int) -> None:
        """Free `slot` (its contents are overwritten by the next insert)."""
        self.lengths[slot] = 0


def decode_together(model: GPT, prompts: Sequence[Sequence[int]], max_new_tokens: int, *, seeds: Sequence[int],
                    temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                    stop_ids: Iterable[int] = (), rows: int = 16,
                    on_token: Callable[[int, int], bool] | None = None) -> list[list[int]]:  # fmt: skip
    """The new tokens of each prompt as `minillm.generate.stream` samples them for it alone, `rows` prompts at a time.

    Prompt i (a list of at most `context_length` ids) is sampled with its own
    generator seeded `seeds[i]`, as `stream(model, (1, T_i) prompt, ..., seed=seeds[i])`
    would: it is prefilled alone, then decoded beside the other rows in a
    `SlotKVCache`, one token a row per forward pass. Past its window (prompt +
    new tokens beyond `stream`'s cache) a row re-reads its last `context_length`
    tokens at every step, as `stream` does; those rows share one pass. A prompt
    ends after `max_new_tokens` tokens, at a token of `stop_ids` (kept, as
    `stream` yields it), or when `on_token(i, token)` returns True (that token
    kept); a free row then takes the next prompt. Sampling draws only from the
    prompts' own generators, so the tokens are `stream`'s as long as a batched
    forward pass computes each row as it would alone. On a CPU with the pinned
    kernels of `conftest.py` it did for every attempt of chapters 05 and 08; in
    general a batched matrix product may round a row's logits differently in the
    last bit, which changes a sample only at a near-tie. Returns one list of new
    ids per prompt.
    """
    _check_decode(model, prompts, max_new_tokens, seeds, rows)
    check_sampling(temperature, top_k, top_p)
    ctx, device, stops = model.config.context_length, model.tok_emb.weight.device, frozenset(stop_ids)
    new: list[list[int]] = [[] for _ in prompts]
    waiting = collections.deque(range(len(prompts)))
    cache = SlotKVCache.for_model(model, min(rows, len(prompts)))
    slots: dict[int, int] = {}  # slot -> prompt index (rows decoded through the slot cache)
    windowed: list[int] = []  # prompts whose window is full: one pass over their last ctx tokens each step
    generators = [torch.Generator(device=device).manual_seed(int(seed)) for seed in seeds]

    def emit(i: int, logits: torch.Tensor) -> bool:
        """Sample prompt i's next token from logits (1, V); True when prompt i has ended."""
        token = int(sample_next(logits, temperature, top_k, top_p, generators[i])[0])
        new[i].append(token)
        ended = on_token(i, token) if on_token is not None else False
        return bool(ended) or token in stops or len(new[i]) >= max_new_tokens

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            while waiting or slots or windowed:
                while waiting and len(slots) + len(windowed) < cache.k.size(1):  # prefill each newcomer alone
                    i = waiting.popleft()
                    single = model.new_kv_cache(1, min(ctx, len(prompts[i]) + max_new_tokens))
                    logits, _ = model(torch.tensor([list(prompts[i])], device=device), kv_cache=single, only_last=True)
                    if not emit(i, logits[:, -1]):
                        slot = next(s for s in range(cache.k.size(1)) if s not in slots)
                        cache.insert(slot, single)
                        slots[slot] = i
                full = [s for s, i in slots.items() if int(cache.lengths[s]) >= _window(prompts[i], max_new_tokens, ctx)]
                for slot in full:  # from now on it re-reads its window at every step, as `stream` does
                    windowed.append(slots.pop(slot))
                    cache.release(slot)
                if slots:
                    order = sorted(slots)
                    feed = torch.tensor([[new[slots[s]][-1]] for s in order], device=device)
                    logits, _ = model(feed, kv_cache=cache.use(order))
                    for row, slot in enumerate(order):
                        if emit(slots[slot], logits[row : row + 1, -1]):
                            del slots[slot]
                            cache.release(slot)
                if windowed:  # the full windows, one pass for all of them
                    windows = torch.tensor([(list(prompts[i]) + new[i])[-ctx:] for i in windowed], device=device)
                    logits, _ = model(windows, only_last=True)
                    for row, i in enumerate(list(windowed)):
                        if emit(i, logits[row : row + 1, -1]):
                            windowed.remove(i)
    finally:
        model.train(was_training)
    return new


def _window(prompt: Sequence[int], max_new_tokens: int, ctx: int) -> int:
    """The size of `stream`'s cache for this prompt: its window is full past this many positions."""
    return min(ctx, len(prompt) + max_new_tokens)


def _check_decode(model: GPT, prompts: Sequence[Sequence[int]], max_new_tokens: int, seeds: Sequence[int],
                  rows: int) -> None:  # fmt: skip
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
        raise ConfigError(f"rows must be a positive integer, got {rows!r}")
    if len(seeds) != len(prompts):
        raise ConfigError(f"one seed per prompt: got {len(seeds)} seeds for {len(prompts)} prompts")
    ctx, vocab = model.config.context_length, model.config.vocab_size
    for i, ids in enumerate(prompts):
        if not 0 < len(ids) <= ctx:
            raise ConfigError(f"prompt {i} has {len(ids)} tokens; give 1 to {ctx} (the model's context)")
        if any(isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < vocab for t in ids):
            raise ConfigError(f"prompt {i} has a token id outside 0..{vocab - 1}")


@dataclasses.dataclass
class Request:
    """One sequence to generate: prompt token ids and how to decode them.

    `max_tokens` new tokens at most; `temperature` 0 (or below `GREEDY_BELOW`) is greedy; `stop`: strings
    that end the text (not returned); `stop_ids`: tokens that end it (e.g.
    <|endoftext|>, a chat template's <|end|>); `seed` seeds this request's own
    generator (None: a random one); `timeout`: seconds from submission after
    which it ends with finish reason "timeout".
    """

    ids: list[int]
    max_tokens: int = 64
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    stop_ids: frozenset[int] = frozenset()
    seed: int | None = None
    timeout: float | None = None

    def check(self, context_length: int, vocab_size: int | None = None) -> None:
        """Raise ConfigError when the request cannot run (empty prompt, unknown ids, too long, bad settings)."""
        if not self.ids:
            raise ConfigError("the prompt encodes to no tokens")
        if vocab_size is not None and not all(isinstance(i, int) and 0 <= i < vocab_size for i in self.ids):
            raise ConfigError(f"the prompt's token ids must be integers in [0, {vocab_size})")
        if self.seed is not None and not (isinstance(self.seed, int) and -(2**63) <= self.seed < 2**64):
            raise ConfigError(f"seed must be an integer in [-2**63, 2**64), got {self.seed!r}")
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ConfigError(f"max_tokens must be a positive integer, got {self.max_tokens!r}")
        if len(self.ids) + self.max_tokens > context_length:
            raise ConfigError(f"the prompt has {len(self.ids)} tokens and max_tokens is {self.max_tokens}: together "
                              f"{len(self.ids) + self.max_tokens}, more than the model's context of "
                              f"{context_length} tokens")  # fmt: skip
        check_sampling(self.temperature, self.top_k, self.top_p)


class Handle:
    """What `BatchEngine.submit` returns: the request's events, in order.

    Events are tuples: ("text", piece) as text becomes showable, then one
    ("done", finish_reason, completion_tokens) with finish_reason "stop" (a
    stop token or string), "length" (max_tokens), "timeout" or "cancelled";
    or ("error", message). With `loop` (an asyncio loop) they go to
    `self.queue`, an `asyncio.Queue`; else to a `queue.Queue` read by `events()`.
    """

    def __init__(self, request: Request, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.request, self.loop = request, loop
        self.queue: asyncio.Queue | queue.Queue = asyncio.Queue() if loop is not None else queue.Queue()
        self.cancelled = threading.Event()
        self.submitted = time.perf_counter()
        self.first_token_at: float | None = None

    def put(self, event: tuple) -> None:
        if self.loop is None:
            self.queue.put(event)
        else:
            try:
                self.loop.call_soon_threadsafe(self.queue.put_nowait, event)
            except RuntimeError:  # the loop closed (the server stopped): nobody is left to tell
                pass

    def cancel(self) -> None:
        """Stop generating (a client went away): the engine frees the slot before its next step."""
        self.cancelled.set()

    def events(self, timeout: float | None = None) -> Iterator[tuple]:
        """Yield events until "done" or "error" (thread-safe queue handles only)."""
        if self.loop is not None:
            raise ConfigError("this handle delivers to an asyncio queue: await handle.queue.get()")
        while True:
            event = self.queue.get(timeout=timeout)
            yield event
            if event[0] in ("done", "error"):
                return

    def result(self, timeout: float | None = None) -> tuple[str, str, int]:
        """(text, finish_reason, completion_tokens), waiting for the end; raises MinillmError on an error event."""
        pieces = []
        for event in self.events(timeout):
            if event[0] == "text":
                pieces.append(event[1])
            elif event[0] == "error":
                raise MinillmError(event[1])
            else:
                return "".join(pieces), event[1], event[2]
        raise AssertionError("unreachable")


@dataclasses.dataclass
class _Active:
    """A request in a slot: its handle, decoder, generator, last token and count of new tokens."""

    handle: Handle
    decoder: TextDecoder
    generator: torch.Generator
    last: int = 0
    produced: int = 0


class BatchEngine:
    """Decode many requests together on one model, admitting new ones between steps (continuous batching).

    `max_batch` slots decode at once; up to `max_queue` more wait (beyond that
    `submit` raises `QueueFull`). `start()` runs the loop in a daemon thread;
    `close()` stops it and ends every request still queued or running with
    ("error", ...). `batch_sizes` and `queue_sizes` record the rows of each
    decode step and the requests still waiting then (for measurement). The model runs in eval mode, no gradients.
    """

    def __init__(self, model: GPT, tokenizer: Tokenizer, max_batch: int = 8, max_queue: int = 64) -> None:
        for name, value in (("max_batch", max_batch), ("max_queue", max_queue)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        self.model, self.tokenizer = model.eval(), tokenizer
        self.max_batch, self.max_queue = max_batch, max_queue
        self.cache = SlotKVCache.for_model(model, max_batch)
        self.device = model.tok_emb.weight.device
        self._waiting: collections.deque[Handle] = collections.deque()
        self._slots: dict[int, _Active] = {}
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closing = False
        self.batch_sizes: list[int] = []  # rows of each decode step
        self.queue_sizes: list[int] = []  # requests still waiting at each decode step

    # -- the caller's side --------------------------------------------------

    def start(self) -> BatchEngine:
        """Start the decoding thread (once); returns self."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="minillm-batch-engine", daemon=True)
            self._thread.start()
        return self

    def submit(self, request: Request, loop: asyncio.AbstractEventLoop | None = None) -> Handle:
        """Queue `request` (checked first) and return its `Handle`; QueueFull when the queue is at its bound."""
        request.check(self.model.config.context_length, self.model.config.vocab_size)
        handle = Handle(request, loop)
        with self._wake:
            if self._closing:
                raise MinillmError("the engine is shut down")
            free = self.max_batch - len(self._slots)  # requests that will not wait: they take a slot at once
            if len(self._waiting) >= self.max_queue + max(free, 0):
                raise QueueFull(f"{len(self._waiting)} requests are waiting already (the bound is {self.max_queue})")
            self._waiting.append(handle)
            self._wake.notify()
        return handle

    def close(self, timeout: float = 10.0) -> None:
        """Stop the thread; every request still waiting or running ends with an error event."""
        with self._wake:
            self._closing = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout)
        else:  # never started: nobody else will answer the waiting requests
            self._fail_all("the engine was closed before it started")

    @property
    def alive(self) -> bool:
        """Whether the decoding thread runs and takes requests."""
        return self._thread is not None and self._thread.is_alive() and not self._closing

    @property
    def load(self) -> tuple[int, int]:
        """(requests decoding now, requests waiting)."""
        return len(self._slots), len(self._waiting)

    # -- the engine's thread ------------------------------------------------

    def _run(self) -> None:
        try:
            with torch.inference_mode():
                while True:
                    with self._wake:
                        while not self._closing and not self._waiting and not self._slots:
                            self._wake.wait()
                        if self._closing:
                            break
                    self._admit()
                    if self._slots:
                        self._step()
        except Exception as err:  # a bug or a device error: end every request with it, keep nothing running
            self._fail_all(f"the engine stopped: {type(err).__name__}: {err}")
            raise
        self._fail_all("the server is shutting down")

    def _fail_all(self, message: str) -> None:
        with self._wake:
            self._closing = True
            handles = list(self._waiting) + [a.handle for a in self._slots.values()]
            self._waiting.clear()
            self._slots.clear()
        for handle in handles:
            handle.put(("error", message))

    def _admit(self) -> None:
        """Prefill waiting requests into free slots (each alone: one pass over its prompt)."""
        while len(self._slots) < self.max_batch:
            with self._wake:
                if not self._waiting:
                    return
                handle = self._waiting.popleft()
            if self._expired(handle):
                continue
            req = handle.request
            try:
                generator = torch.Generator(device=self.device)
                generator.manual_seed(req.seed if req.seed is not None else secrets.randbits(63))  # global RNG untouched
                active = _Active(handle, TextDecoder(self.tokenizer, req.stop, req.stop_ids), generator)
                cache = self.model.new_kv_cache(1, len(req.ids))
                logits, _ = self.model(torch.tensor([req.ids], device=self.device), kv_cache=cache, only_last=True)
            except Exception as err:  # noqa: BLE001 - this request fails, answered; the engine goes on
                handle.put(("error", f"cannot start this request: {type(err).__name__}: {err}"))
                continue
            slot = next(s for s in range(self.max_batch) if s not in self._slots)
            self.cache.insert(slot, cache)
            self._slots[slot] = active
            self._emit_or_fail(slot, logits[:, -1])

    def _step(self) -> None:
        """One forward pass over every active row, then each row samples its next token."""
        for slot in [s for s, a in self._slots.items() if self._expired(a.handle, s)]:
            self._finish(slot, "timeout" if not self._slots[slot].handle.cancelled.is_set() else "cancelled")
        if not self._slots:
            return
        slots = sorted(self._slots)
        idx = torch.tensor([[self._slots[s].last] for s in slots], device=self.device)
        logits, _ = self.model(idx, kv_cache=self.cache.use(slots))
        self.batch_sizes.append(len(slots))
        self.queue_sizes.append(len(self._waiting))
        if len(self.batch_sizes) > 2 * RECORDED_STEPS:  # a server runs for days: keep the recent steps only
            del self.batch_sizes[:RECORDED_STEPS], self.queue_sizes[:RECORDED_STEPS]
        for row, slot in enumerate(slots):
            self._emit_or_fail(slot, logits[row : row + 1, -1])

    def _emit_or_fail(self, slot: int, logits: torch.Tensor) -> None:
        """`_emit`, but an error in one request's sampling or decoding ends that request only."""
        try:
            self._emit(slot, logits)
        except Exception as err:  # noqa: BLE001 - e.g. NaN logits; the other rows go on
            active = self._slots.pop(slot, None)
            self.cache.release(slot)
            if active is not None:
                active.handle.put(("error", f"generation failed: {type(err).__name__}: {err}"))

    def _emit(self, slot: int, logits: torch.Tensor) -> None:
        """Sample the next token of `slot` from logits (1, V), send its text, finish the request if it ended."""
        active = self._slots[slot]
        req = active.handle.request
        if req.temperature < GREEDY_BELOW:  # 0, or so small that logits / T overflows: greedy either way
            token = int(logits.argmax(dim=-1))
        else:
            probs = filter_logits(logits.float(), req.temperature, req.top_k, req.top_p)
            token = int(torch.multinomial(probs, 1, generator=active.generator))
        if active.handle.first_token_at is None:
            active.handle.first_token_at = time.perf_counter()
        active.last, active.produced = token, active.produced + 1
        piece = active.decoder.push(token)
        if piece:
            active.handle.put(("text", piece))
        if active.decoder.stopped:
            self._finish(slot, "stop")
        elif active.produced >= req.max_tokens:
            piece = active.decoder.finish()
            if piece:
                active.handle.put(("text", piece))
            self._finish(slot, "length")

    def _finish(self, slot: int, reason: str) -> None:
        active = self._slots.pop(slot)
        self.cache.release(slot)
        active.handle.put(("done", reason, active.produced))

    def _expired(self, handle: Handle, slot: int | None = None) -> bool:
        """Whether the request was cancelled or ran past its timeout (a waiting one is answered here)."""
        req = handle.request
        late = req.timeout is not None and time.perf_counter() - handle.submitted > req.timeout
        if slot is None and (late or handle.cancelled.is_set()):
            handle.put(("done", "cancelled" if handle.cancelled.is_set() else "timeout", 0))
        return late or handle.cancelled.is_set()
