"""Shared by the serving tests: a tiny model folder (with or without the chat template) and a live server.

`live_server(folder, **options)` starts `python -m minillm serve` on 127.0.0.1 on a free port in a
subprocess (a real server, as a reader runs it), waits for /health and stops it afterwards.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import torch

from minillm.checkpoint import save_model_folder
from minillm.instruct import add_special_tokens
from minillm.model import GPT, GPTConfig
from minillm.tokenizer import BPETokenizer

ROOT = Path(__file__).resolve().parent.parent
TEXT = (ROOT / "minillm" / "batching.py").read_text() + (ROOT / "minillm" / "generate.py").read_text()


def tiny_folder(folder: Path, chat: bool, context_length: int = 96, seed: int = 0) -> Path:
    """A random 2-layer GPT and a 320-token BPE (plus the chat markers when `chat`) saved in `folder`."""
    tokenizer = BPETokenizer.train(TEXT, 320)
    if chat:
        tokenizer = add_special_tokens(tokenizer)
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, context_length=context_length, d_model=32, n_layer=2,
                          n_head=4))  # fmt: skip
    return save_model_folder(folder, model, tokenizer)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def live_server(folder: Path, *options: str, name: str = "tiny"):
    """Yield the base URL of `python -m minillm serve --checkpoint folder` running in a subprocess."""
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "minillm", "serve", "--checkpoint", str(folder), "--port",
                             str(port), "--model-name", name, *options], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited with {proc.returncode}:\n{proc.stdout.read()}")
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not answer /health within 60 s")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
