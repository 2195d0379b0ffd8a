"""Shared by the serving tests: the tokenizers' training text, a tiny model folder, a live server.

`live_server(folder, *options)` is `minillm.bench.serve.start_server` (a real
`python -m minillm serve` in a subprocess on a free port of 127.0.0.1, stopped
afterwards) with one thread for the server: tiny models are fastest that way.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from minillm.bench.serve import start_server
from minillm.checkpoint import save_model_folder
from minillm.instruct import add_special_tokens
from minillm.model import GPT, GPTConfig
from minillm.tokenizer import BPETokenizer

#: The tokenizers' training text: fixed here, so that the models' texts (which the tests rely on to end
#: both ways, at a stop token and at max_tokens) do not move when the package's sources change.
CORPUS = (
    "A server that decodes one request at a time leaves most of the machine idle: each step reads every weight "
    "to write one token for one sequence. Run the step for sixteen sequences at once and it costs little more. "
    "Requests do not arrive together, though, nor end together. Continuous batching admits new requests between "
    "decode steps and lets a finished one leave at once, so no request waits for the longest in its batch.\n"
    "Each request owns a slot of the cache: its keys and values, filled to its own length. A decode step feeds "
    "one token per row, writes each row's keys at that row's position, and hides the empty end of every row.\n"
    "def step(self, rows):\n    logits = self.model(tokens, kv_cache=self.cache.use(rows))\n    return logits\n"
    "Stop strings end the text; the stop and what follows are never shown. Café, naïve, déjà vu: a token can be "
    "half a character, so text is held back until the character is whole. 1, 2, 3, 4, 5 - done!\n"
)


def tiny_folder(folder: Path, chat: bool, context_length: int = 96, seed: int = 0) -> Path:
    """A random 2-layer GPT and a 320-token BPE of CORPUS (plus the chat markers when `chat`) saved in `folder`."""
    tokenizer = BPETokenizer.train(CORPUS, 320)
    if chat:
        tokenizer = add_special_tokens(tokenizer)
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, context_length=context_length, d_model=32, n_layer=2,
                          n_head=4))  # fmt: skip
    return save_model_folder(folder, model, tokenizer)


@contextlib.contextmanager
def live_server(folder: Path, *options: str, name: str = "tiny"):
    """Yield the base URL of `python -m minillm serve --checkpoint folder *options` (model id `name`)."""
    with start_server(folder, *options, model_name=name, threads=1, wait=60) as url:
        yield url
