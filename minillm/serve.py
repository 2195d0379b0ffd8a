"""An OpenAI-compatible HTTP server for a minillm model: streaming, continuous batching, limits (appendix C).

`python -m minillm serve --checkpoint DIR` (or `serve(...)`, or `create_app`
for tests and notebooks) serves one model with the endpoints and JSON shapes
of OpenAI's API, so the official `openai` client, `curl`, or any tool that
speaks the protocol can call it:

* `GET /v1/models` (and `/v1/models/{id}`), `GET /health`, `GET /` (a chat page, served from the
  package: no CDN, no build step);
* `POST /v1/completions` (`prompt`: a string or a list of strings) and
  `POST /v1/chat/completions` (`messages`, in the chat template of chapter 07;
  a base model without the template answers 400);
* fields `model`, `max_tokens`, `temperature`, `top_p`, `stop`, `seed`, `n`,
  `stream` (Server-Sent Events: `data: {chunk}` lines, then `data: [DONE]`)
  and `stream_options.include_usage`; responses carry `usage` and each choice a
  `finish_reason` ("stop" or "length").

Requests are decoded together by a `minillm.batching.BatchEngine` (continuous
batching). Limits (`ServeConfig`): request body size (413), prompt + max_tokens
within the context (400, with the numbers), `max_tokens` at most
`max_tokens_limit`, at most `max_batch` decoding and `max_queue` waiting (429, Retry-After
beyond), a per-request timeout (504; in a stream, an error event after the
text so far), an optional bearer `api_key` (401 on every path but the chat
page and /health).
A client that disconnects mid-stream frees its slot before the next step.
Errors have OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`;
no response ever carries a traceback. fastapi and uvicorn are imported lazily
(the rest of the package does not need them).
"""

# no `from __future__ import annotations`: FastAPI reads the routes' annotations, which name local imports

import asyncio
import contextlib
import dataclasses
import hmac
import json
import logging
import math
import time
import uuid
from importlib import resources
from pathlib import Path
from typing import Any

from minillm.batching import BatchEngine, Handle, QueueFull, Request
from minillm.checkpoint import load_model
from minillm.errors import ConfigError, MinillmError
from minillm.instruct import CHAT_TOKENS, encode_chat
from minillm.model import GPT
from minillm.tokenizer import ENDOFTEXT, Tokenizer

log = logging.getLogger(__name__)


@dataclasses.dataclass
class ServeConfig:
    """What the server allows. `model_name` is the id clients pass as `model`."""

    model_name: str = "minillm"
    api_key: str | None = None  # clients send "Authorization: Bearer <key>"; None: no key needed
    max_batch: int = 8  # sequences decoded together
    max_queue: int = 32  # sequences waiting for a slot; more get 429
    max_body_bytes: int = 1_000_000
    max_tokens_limit: int | None = None  # the largest max_tokens accepted (None: the context length)
    default_max_tokens: int = 64  # OpenAI's completions default is 16; a chat answer needs more
    max_n: int = 8
    request_timeout: float = 120.0  # seconds from arrival to the last token

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_queue", "max_body_bytes", "default_max_tokens", "max_n"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if not (isinstance(self.request_timeout, (int, float)) and self.request_timeout > 0):
            raise ConfigError(f"request_timeout must be a positive number of seconds, got {self.request_timeout!r}")
        if self.api_key is not None and not (isinstance(self.api_key, str) and self.api_key):
            raise ConfigError("api_key must be a non-empty string or None")


#: Seconds a client told 429 (the queue is full) should wait before it tries again (the Retry-After header).
RETRY_AFTER_S = 1


class APIError(Exception):
    """An error answered in OpenAI's shape with an HTTP status."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None) -> None:  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


# ---------------------------------------------------------------------------
# Requests: parsed and checked by hand, so every mistake names its field
# ---------------------------------------------------------------------------


def _field(body: dict, name: str, kinds: tuple[type, ...], default: Any = None, what: str = "") -> Any:
    """body[name] if it has one of `kinds` (bool is never a number), else APIError 400 naming the field."""
    value = body.get(name)
    if value is None:
        return default
    number = float in kinds or int in kinds
    if not isinstance(value, kinds) or (number and isinstance(value, bool) and bool not in kinds):
        raise APIError(400, f"'{name}' must be {what or ' or '.join(k.__name__ for k in kinds)}, "
                            f"got {json.dumps(value)[:80]}", param=name)  # fmt: skip
    return value


def _number(value: int | float) -> float:
    """A JSON number as a float; an integer too large for one is inf (then refused by the range checks)."""
    try:
        return float(value)
    except OverflowError:
        return math.inf


def _sampling(body: dict, config: ServeConfig, context: int) -> dict:
    """The decoding settings shared by both endpoints, checked: dict of Request fields (without ids)."""
    temperature = _number(_field(body, "temperature", (int, float), 1.0, "a number between 0 and 2"))
    if not (math.isfinite(temperature) and 0 <= temperature <= 2):
        raise APIError(400, f"'temperature' must be between 0 and 2, got {temperature}", param="temperature")
    top_p = _field(body, "top_p", (int, float), None, "a number in (0, 1]")
    top_p = None if top_p is None else _number(top_p)
    if top_p is not None and not (math.isfinite(top_p) and 0 < top_p <= 1):
        raise APIError(400, f"'top_p' must be in (0, 1], got {top_p}", param="top_p")
    top_p = None if top_p is None or top_p >= 1 else float(top_p)
    limit = min(config.max_tokens_limit or context, context)
    max_tokens = _field(body, "max_tokens", (int,), None, "a positive integer")
    if max_tokens is None:
        max_tokens = _field(body, "max_completion_tokens", (int,), config.default_max_tokens, "a positive integer")
    if max_tokens < 1 or max_tokens > limit:
        raise APIError(400, f"'max_tokens' must be between 1 and {limit}, got {max_tokens}", param="max_tokens")
    stop = _field(body, "stop", (str, list), (), "a string or a list of up to 4 strings")
    stop = (stop,) if isinstance(stop, str) else tuple(stop)
    if len(stop) > 4 or any(not isinstance(s, str) or not s for s in stop):
        raise APIError(400, "'stop' must be a non-empty string or a list of up to 4 non-empty strings", param="stop")
    seed = _field(body, "seed", (int,), None, "an integer")
    if seed is not None and not -(2**63) <= seed < 2**63:
        raise APIError(400, f"'seed' must be a 64-bit integer, in [-2**63, 2**63), got {seed}", param="seed")
    return dict(max_tokens=max_tokens, temperature=temperature, top_p=top_p, stop=stop, seed=seed,
                timeout=config.request_timeout)  # fmt: skip


def _check_common(body: Any, config: ServeConfig) -> tuple[int, bool, bool]:
    """(n, stream, include_usage) after checking the body is an object naming the served model."""
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    model = _field(body, "model", (str,), None, "a string")
    if model is None:
        raise APIError(400, "'model' is required", param="model")
    if model != config.model_name:
        raise APIError(404, f"the model '{model}' does not exist; this server serves '{config.model_name}'",
                       param="model", code="model_not_found")  # fmt: skip
    n = _field(body, "n", (int,), 1, "a positive integer")
    if not 1 <= n <= config.max_n:
        raise APIError(400, f"'n' must be between 1 and {config.max_n}, got {n}", param="n")
    stream = _field(body, "stream", (bool,), False, "true or false")
    options = _field(body, "stream_options", (dict,), {}, "an object")
    return n, stream, bool(options.get("include_usage", False))


def _checked_request(ids: list[int], sampling: dict, stop_ids: frozenset[int], context: int, param: str) -> Request:
    """A `Request`, or APIError 400 when the prompt and max_tokens do not fit the context."""
    if not ids:
        raise APIError(400, "the prompt is empty: give at least one character", param=param)
    if len(ids) + sampling["max_tokens"] > context:
        raise APIError(400, f"this model's context is {context} tokens; the prompt has {len(ids)} tokens and "
                            f"max_tokens is {sampling['max_tokens']} ({len(ids) + sampling['max_tokens']} in all): "
                            "shorten the prompt or lower max_tokens", param=param,
                       code="context_length_exceeded")  # fmt: skip
    return Request(ids, stop_ids=stop_ids, **sampling)


# ---------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------


class Server:
    """The model, its engine and the request handling behind the HTTP routes of `create_app`."""

    def __init__(self, model: GPT, tokenizer: Tokenizer, config: ServeConfig) -> None:
        self.model, self.tokenizer, self.config = model, tokenizer, config
        self.context = model.config.context_length
        self.engine = BatchEngine(model, tokenizer, config.max_batch, config.max_queue)
        self.chat = all(t in tokenizer.special_tokens for t in CHAT_TOKENS)
        end = tokenizer.special_tokens.get(ENDOFTEXT)
        self.stop_ids = frozenset(() if end is None else (end,))
        # a chat answer ends at <|end|>, and at any other marker: the model must never write the next turn
        self.chat_stop_ids = self.stop_ids | ({tokenizer.special_tokens[t] for t in CHAT_TOKENS} if self.chat else set())
        self.created = int(time.time())

    def models(self) -> dict:
        return {"object": "list", "data": [self.model_card(self.config.model_name)]}

    def model_card(self, name: str) -> dict:
        """The model object of `GET /v1/models/{name}`; 404 for a model this server does not serve."""
        if name != self.config.model_name:
            raise APIError(404, f"the model '{name}' does not exist; this server serves '{self.config.model_name}'",
                           code="model_not_found")  # fmt: skip
        return {"id": name, "object": "model", "created": self.created, "owned_by": "minillm"}

    def completion_requests(self, body: dict) -> tuple[list[Request], list[int], int, bool, bool]:
        """(requests, prompt token counts, n, stream, include_usage) of a /v1/completions body."""
        n, stream, usage = _check_common(body, self.config)
        prompt = body.get("prompt")
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if not isinstance(prompts, list) or not prompts or any(not isinstance(p, str) for p in prompts):
            raise APIError(400, "'prompt' is required: a string or a non-empty list of strings", param="prompt")
        sampling = _sampling(body, self.config, self.context)
        ids = [self.tokenizer.encode_ordinary(p) for p in prompts]
        requests = [_checked_request(i, sampling, self.stop_ids, self.context, "prompt") for i in ids]
        return [_choice(r, j) for r in requests for j in range(n)], [len(i) for i in ids], n, stream, usage

    def chat_requests(self, body: dict) -> tuple[list[Request], list[int], int, bool, bool]:
        """The same for a /v1/chat/completions body (400 for a model without the chat template)."""
        n, stream, usage = _check_common(body, self.config)
        if not self.chat:
            raise APIError(400, "this model has no chat template (it is a base model, not instruction-tuned): "
                                "use /v1/completions", param="messages", code="no_chat_template")  # fmt: skip
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise APIError(400, "'messages' is required: a non-empty list of {role, content} objects",
                           param="messages")  # fmt: skip
        try:
            ids = encode_chat(messages, self.tokenizer)
        except MinillmError as err:
            raise APIError(400, str(err), param="messages") from None
        sampling = _sampling(body, self.config, self.context)
        request = _checked_request(ids, sampling, self.chat_stop_ids, self.context, "messages")
        return [_choice(request, j) for j in range(n)], [len(ids)], n, stream, usage

    def submit(self, requests: list[Request], loop: asyncio.AbstractEventLoop) -> list[Handle]:
        """Queue every choice, or none (429 when the queue is full)."""
        handles: list[Handle] = []
        try:
            for request in requests:
                handles.append(self.engine.submit(request, loop))
        except QueueFull as err:
            for handle in handles:
                handle.cancel()
            raise APIError(429, f"the server is busy: {err}; retry later", type="rate_limit_error",
                           code="rate_limit_exceeded") from None  # fmt: skip
        except ConfigError as err:  # a request the engine cannot run (checked before, so rare)
            for handle in handles:
                handle.cancel()
            raise APIError(400, str(err)) from None
        except MinillmError as err:  # the engine stopped (shutting down, or a device error)
            for handle in handles:
                handle.cancel()
            raise APIError(503, f"the server cannot generate now: {err}", type="server_error") from None
        return handles


#: Paths served without the API key: the chat page (it asks for the key itself) and the health check.
PUBLIC_PATHS = ("/", "/health")


def check_headers(headers: Any, method: str, path: str, config: ServeConfig) -> None:
    """The checks made before a body is read: the API key (401), the declared size (400, 413).

    With an API key, every path but the public ones (`PUBLIC_PATHS`: the chat
    page and /health) needs it; `path` is relative to where the app is mounted.
    `headers`: a mapping with lower-case names (Starlette's `Headers` is one).
    """
    if config.api_key is not None and path not in PUBLIC_PATHS:
        scheme, _, key = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(key.strip().encode(), config.api_key.encode()):
            raise APIError(401, "invalid or missing API key: send 'Authorization: Bearer <key>'", code="invalid_api_key")
    length = headers.get("content-length") if method == "POST" else None
    if length is not None and not length.isdigit():
        raise APIError(400, f"Content-Length must be a number of bytes, got {length[:40]!r}")
    if length is not None and int(length) > config.max_body_bytes:
        raise APIError(413, f"the request body is larger than {config.max_body_bytes} bytes", code="request_too_large")


def _choice(request: Request, j: int) -> Request:
    """Choice j of n: its own copy, seeded seed + j when a seed is given (n choices, n different texts)."""
    return dataclasses.replace(request, seed=None if request.seed is None else request.seed + j)


def stream_chunk(head: dict, index: int, text: str | None, reason: str | None, chat: bool,
                 first: bool = False) -> dict:  # fmt: skip
    """One event of a streamed answer: choice `index`'s new `text` (None: none) or its finish `reason`.

    `head` holds the fields every event repeats (id, object, created, model).
    A chat stream's `first` event announces the role; its text is in `delta`.
    """
    if chat:
        delta = {"role": "assistant", "content": ""} if first else ({} if text is None else {"content": text})
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": reason}
    else:
        choice = {"index": index, "text": text or "", "logprobs": None, "finish_reason": reason}
    return {**head, "choices": [choice]}


def _sse(data: dict | str) -> bytes:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n".encode()


async def _events(handles: list[Handle]) -> Any:
    """(choice index, event) from every handle as they come, until each has ended."""
    merged: asyncio.Queue = asyncio.Queue()

    async def forward(i: int, handle: Handle) -> None:
        while True:
            event = await handle.queue.get()
            await merged.put((i, event))
            if event[0] in ("done", "error"):
                return

    tasks = [asyncio.create_task(forward(i, h)) for i, h in enumerate(handles)]
    try:
        for _ in range(len(handles)):
            while True:
                i, event = await merged.get()
                yield i, event
                if event[0] in ("done", "error"):
                    break
    finally:
        for task in tasks:
            task.cancel()
        for handle in handles:
            handle.cancel()  # no-op for the finished; frees the slot of any other


def _ended(reason: str, timeout: float) -> str:
    """OpenAI's finish_reason for the engine's, or APIError for a timeout."""
    if reason == "timeout":
        raise APIError(504, f"the request took longer than {timeout:g} s", type="timeout", code="timeout")
    return "stop" if reason == "stop" else "length"


async def _collect(handles: list[Handle], timeout: float) -> list[tuple[str, str, int]]:
    texts = [[] for _ in handles]
    ends: list[tuple[str, int] | None] = [None] * len(handles)
    async with contextlib.aclosing(_events(handles)) as events:  # an error cancels the other choices at once
        async for i, event in events:
            if event[0] == "text":
                texts[i].append(event[1])
            elif event[0] == "error":
                raise APIError(503, event[1], type="server_error")
            else:
                ends[i] = (_ended(event[1], timeout), event[2])
    return [("".join(t), e[0], e[1]) for t, e in zip(texts, ends)]


def _usage(prompt_tokens: list[int], completion_tokens: int) -> dict:
    p = sum(prompt_tokens)
    return {"prompt_tokens": p, "completion_tokens": completion_tokens, "total_tokens": p + completion_tokens}


def create_app(model: GPT, tokenizer: Tokenizer, config: ServeConfig | None = None) -> Any:
    """A FastAPI app serving `model` (started and stopped with the app's lifespan)."""
    from fastapi import FastAPI, Request as HTTPRequest
    from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse

    class ClosingStreamingResponse(StreamingResponse):
        """A stream that closes its body generator as soon as sending ends, also when the client went away.

        Starlette stops iterating when a send fails (the client disconnected) but
        leaves the generator to the garbage collector, so its `finally`, which
        frees the request's slots, ran up to seconds later (measured: 0.03 s to
        1.6 s after the client closed). Closing it here frees them at once.
        """

        async def stream_response(self, send: Any) -> None:
            try:
                await super().stream_response(send)
            finally:
                await self.body_iterator.aclose()

    config = config or ServeConfig()
    server = Server(model, tokenizer, config)

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> Any:
        server.engine.start()
        try:
            yield
        finally:
            server.engine.close()

    app = FastAPI(title="minillm", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server

    @app.exception_handler(APIError)
    async def api_error(request: HTTPRequest, err: APIError) -> JSONResponse:
        headers = {401: {"WWW-Authenticate": "Bearer"}, 429: {"Retry-After": str(RETRY_AFTER_S)}}.get(err.status)
        return JSONResponse(err.body(), status_code=err.status, headers=headers)

    @app.exception_handler(Exception)
    async def unexpected(request: HTTPRequest, err: Exception) -> JSONResponse:  # never a traceback to a client
        log.exception("error while serving %s", request.url.path)
        return JSONResponse(APIError(500, "internal server error", type="server_error").body(), status_code=500)

    @app.exception_handler(404)
    async def not_found(request: HTTPRequest, err: Exception) -> JSONResponse:
        return JSONResponse(APIError(404, f"no route {request.url.path}", code="not_found").body(), status_code=404)

    @app.exception_handler(405)
    async def not_allowed(request: HTTPRequest, err: Exception) -> JSONResponse:
        return JSONResponse(APIError(405, f"{request.method} is not allowed on {request.url.path}").body(),
                            status_code=405)  # fmt: skip

    @app.middleware("http")
    async def guard(request: HTTPRequest, call_next: Any) -> Any:
        """The API key and the body size, before any route reads the body."""
        try:
            route = request.scope["path"]  # relative to a mount point (root_path), as the router matches it
            root = request.scope.get("root_path", "")
            route = route[len(root):] or "/" if root and route.startswith(root) else route
            check_headers(request.headers, request.method, route, config)
        except APIError as err:
            return await api_error(request, err)
        return await call_next(request)

    async def read_json(request: HTTPRequest) -> Any:
        body = b""
        async for chunk in request.stream():  # counted as it arrives: a chunked body has no content-length
            body += chunk
            if len(body) > config.max_body_bytes:
                raise APIError(413, f"the request body is larger than {config.max_body_bytes} bytes",
                               code="request_too_large")  # fmt: skip
        try:
            return json.loads(body)
        except (ValueError, UnicodeDecodeError) as err:
            raise APIError(400, f"the request body is not valid JSON: {err}") from None
        except RecursionError:
            raise APIError(400, "the request body is not valid JSON: nested too deeply") from None

    async def respond(request: HTTPRequest, chat: bool) -> Any:
        body = await read_json(request)
        # tokenizing a long prompt takes a while: in a worker thread, so that other streams go on meanwhile
        requests, prompt_tokens, n, stream, include_usage = await asyncio.to_thread(
            server.chat_requests if chat else server.completion_requests, body)
        handles = server.submit(requests, asyncio.get_running_loop())
        ident = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        head = {"id": ident, "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
                "model": config.model_name}  # fmt: skip
        if not stream:
            results = await _collect(handles, config.request_timeout)
            choices = [({"index": i, "message": {"role": "assistant", "content": text}, "logprobs": None,
                         "finish_reason": reason} if chat else
                        {"index": i, "text": text, "logprobs": None, "finish_reason": reason})
                       for i, (text, reason, _) in enumerate(results)]  # fmt: skip
            return JSONResponse({**head, "choices": choices,
                                 "usage": _usage(prompt_tokens, sum(r[2] for r in results))})  # fmt: skip
        head = {**head, "object": "chat.completion.chunk" if chat else "text_completion"}

        def chunk(i: int, text: str | None, reason: str | None, first: bool = False) -> bytes:
            return _sse(stream_chunk(head, i, text, reason, chat, first))

        async def sse() -> Any:
            produced = 0
            try:
                if chat:
                    for i in range(len(handles)):
                        yield chunk(i, None, None, first=True)
                async with contextlib.aclosing(_events(handles)) as events:  # its tasks end with this stream
                    async for i, event in events:
                        if event[0] == "text":
                            yield chunk(i, event[1], None)
                        elif event[0] == "error":
                            yield _sse(APIError(503, event[1], type="server_error").body())
                            return
                        else:
                            produced += event[2]
                            try:
                                yield chunk(i, None, _ended(event[1], config.request_timeout))
                            except APIError as err:
                                yield _sse(err.body())
                                return
                if include_usage:
                    yield _sse({**head, "choices": [], "usage": _usage(prompt_tokens, produced)})
                yield _sse("[DONE]")
            finally:
                for handle in handles:  # the client went away (or we are done): free every slot
                    handle.cancel()

        return ClosingStreamingResponse(sse(), media_type="text/event-stream",
                                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})  # fmt: skip

    @app.post("/v1/completions")
    async def completions(request: HTTPRequest) -> Any:
        return await respond(request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: HTTPRequest) -> Any:
        return await respond(request, chat=True)

    @app.get("/v1/models")
    async def models() -> Any:
        return server.models()

    @app.get("/v1/models/{name:path}")  # ids may hold slashes, as Hugging Face names do
    async def model(name: str) -> Any:
        return server.model_card(name)

    @app.get("/health")
    async def health() -> Any:
        running, waiting = server.engine.load
        alive = server.engine.alive
        body = {"status": "ok" if alive else "stopped", "model": config.model_name, "running": running,
                "waiting": waiting, "max_batch": config.max_batch, "max_queue": config.max_queue, "chat": server.chat,
                "context_length": server.context}  # fmt: skip
        return body if alive else JSONResponse(body, status_code=503)  # a dead engine fails liveness probes

    @app.get("/")
    async def page() -> Any:
        return HTMLResponse(chat_page())

    return app


def chat_page() -> str:
    """The chat page's HTML (one file in the package: its script and style are inline)."""
    return resources.files("minillm").joinpath("static", "chat.html").read_text(encoding="utf-8")


def serve(checkpoint: str | Path, host: str = "127.0.0.1", port: int = 8000, config: ServeConfig | None = None,
          device: str | None = None) -> None:  # fmt: skip
    """Load a checkpoint (`minillm.checkpoint.load_model`) and serve it with uvicorn until Ctrl-C."""
    import uvicorn

    model, tokenizer = load_model(checkpoint, device=device)
    app = create_app(model, tokenizer, config)
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)
