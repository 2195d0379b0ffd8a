"""Load test of the HTTP server (appendix C): `python -m minillm.bench serve [options]`.

Starts `python -m minillm serve` in a subprocess (the book's chat model by
default), sends the same streamed requests from 1, 4 and 16 concurrent clients,
and once more from 16 clients to a server that decodes one sequence at a time
(`--max-batch 1`), the reference. For each it prints total generated tokens/s,
the ratio to the reference, and p50/p95 of the time to first token (TTFT) and
of the whole request's latency. Every request is greedy with `max_tokens`
tokens and no stop string, so all runs generate the same number of tokens
(unless the model writes <|endoftext|>, which the table's token count would show).

`load_test(url, model, prompts, clients, max_tokens)` is the measurement
(the notebook of appendix C calls it); `start_server` the subprocess.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from minillm.bench import environment


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation between the sorted values (numpy's default)."""
    if not values:
        raise ValueError("no values")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def start_server(checkpoint: str | os.PathLike, *options: str, model_name: str = "book-chat",
                 threads: int | None = None, wait: float = 120.0) -> Iterator[str]:  # fmt: skip
    """Run `python -m minillm serve` in a subprocess; yield its base URL once /health answers; stop it after.

    `threads`: OMP_NUM_THREADS of the server (None: inherit). Its output is
    kept in a temporary file and shown if it exits early.
    """
    import tempfile

    import httpx

    port = free_port()
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    log = tempfile.TemporaryFile(mode="w+")
    cmd = [sys.executable, "-m", "minillm", "serve", "--checkpoint", str(checkpoint), "--port", str(port),
           "--model-name", model_name, *options]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + wait
        while True:
            if proc.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"the server exited with status {proc.returncode}:\n{log.read()[-2000:]}")
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not answer /health within {wait:.0f} s")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _one(client, url: str, body: dict, headers: dict) -> dict:
    """Send one streamed completion; return its text, tokens, TTFT and latency (seconds)."""
    start = time.perf_counter()
    first, text, tokens = None, [], 0
    with client.stream("POST", url + "/v1/completions", json=body, headers=headers) as response:
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {response.read().decode()[:300]}")
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(chunk["error"]["message"])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            for choice in chunk["choices"]:
                if choice["text"]:
                    first = first or time.perf_counter()
                    text.append(choice["text"])
    end = time.perf_counter()
    return {"text": "".join(text), "tokens": tokens, "ttft": (first or end) - start, "latency": end - start}


def load_test(url: str, model: str, prompts: list[str], clients: int, max_tokens: int = 32,
              api_key: str | None = None) -> dict:  # fmt: skip
    """Send every prompt (greedy, `max_tokens`, streamed) from `clients` concurrent clients; return the figures.

    Returns {"clients", "requests", "tokens", "seconds", "tokens_per_s", "ttft_p50", "ttft_p95",
    "latency_p50", "latency_p95", "texts"} (texts in the order of `prompts`).
    """
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    results: list[dict | None] = [None] * len(prompts)
    errors: list[BaseException] = []
    todo = iter(range(len(prompts)))
    lock = threading.Lock()

    def client_loop() -> None:
        with httpx.Client(timeout=300) as client:
            while True:
                with lock:
                    i = next(todo, None)
                if i is None or errors:
                    return
                body = {"model": model, "prompt": prompts[i], "max_tokens": max_tokens, "temperature": 0,
                        "stream": True, "stream_options": {"include_usage": True}}  # fmt: skip
                try:
                    results[i] = _one(client, url, body, headers)
                except BaseException as err:  # reported below, in the caller's thread
                    errors.append(err)
                    return

    start = time.perf_counter()
    threads = [threading.Thread(target=client_loop) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"a request failed: {errors[0]}") from errors[0]
    done = [r for r in results if r is not None]
    tokens = sum(r["tokens"] for r in done)
    ttft, latency = [r["ttft"] for r in done], [r["latency"] for r in done]
    return {"clients": clients, "requests": len(done), "tokens": tokens, "seconds": seconds,
            "tokens_per_s": tokens / seconds, "ttft_p50": percentile(ttft, 50), "ttft_p95": percentile(ttft, 95),
            "latency_p50": percentile(latency, 50), "latency_p95": percentile(latency, 95),
            "texts": [r["text"] for r in done]}  # fmt: skip


def default_prompts(n: int) -> list[str]:
    """n different plain-text prompts (chapter 07's generated list instructions, no chat template).

    They go to /v1/completions, which reads a prompt as plain text: what the model
    continues them with does not matter here, only that every request decodes
    `max_tokens` tokens (checked: an <|endoftext|> would end one early).
    """
    from minillm.synthetic import list_tasks

    return [f"{row['instruction']}\n\n{row['input']}\n" for row in list_tasks(n, seed=7)]


def main(argv: list[str] | None = None) -> int:
    """`python -m minillm.bench serve`: the two servers, the runs at each client count, the table."""
    parser = argparse.ArgumentParser(prog="python -m minillm.bench serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default="book-chat",
                        help="model folder to serve; 'book-chat' (default): the book's chat model")  # fmt: skip
    parser.add_argument("--requests", type=int, default=32, help="requests per run (default 32)")
    parser.add_argument("--max-tokens", type=int, default=32, help="tokens each request generates (default 32)")
    parser.add_argument("--clients", default="1,4,16", help="concurrent clients per run (default 1,4,16)")
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of the server")
    args = parser.parse_args(argv)
    if args.checkpoint == "book-chat":
        from minillm.pretrained import book_chat_run

        checkpoint: str | Path = book_chat_run()[0]
    else:
        checkpoint = args.checkpoint
    prompts = default_prompts(args.requests)
    levels = [int(c) for c in args.clients.split(",")]
    rows = []
    with start_server(checkpoint, "--max-batch", "1", "--max-queue", str(args.requests),
                      threads=args.threads) as url:  # fmt: skip
        reference = load_test(url, "book-chat", prompts, max(levels), args.max_tokens)
        rows.append((f"{max(levels)} clients, one at a time (--max-batch 1)", reference))
    with start_server(checkpoint, "--max-batch", str(max(levels)), "--max-queue", str(args.requests),
                      threads=args.threads) as url:  # fmt: skip
        for clients in levels:
            result = load_test(url, "book-chat", prompts, clients, args.max_tokens)
            if result["texts"] != reference["texts"]:
                print(f"warning: {clients} clients got different greedy texts than the reference")
            rows.append((f"{clients} client{'s' if clients > 1 else ''}, continuous batching", result))
    print(f"# {environment()}")
    print(f"# {args.requests} requests of {args.max_tokens} greedy tokens; checkpoint {checkpoint}")
    print(f"| server and clients | tokens/s | vs one at a time | TTFT p50 / p95 (s) | latency p50 / p95 (s) |")
    print("|---|---|---|---|---|")
    base = reference["tokens_per_s"]
    for name, r in rows:
        print(f"| {name} | {r['tokens_per_s']:.0f} | {r['tokens_per_s'] / base:.2f}x | "
              f"{r['ttft_p50']:.2f} / {r['ttft_p95']:.2f} | {r['latency_p50']:.2f} / {r['latency_p95']:.2f} |")
    return 0
