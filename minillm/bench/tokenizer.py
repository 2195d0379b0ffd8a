"""Tokenizer benchmark: `python -m minillm.bench tokenizer` (chapter 02).

Measures, on one corpus (Tiny Shakespeare by default):

* the seconds :meth:`minillm.tokenizer.BPETokenizer.train` needs for a
  4096-token vocabulary (best of ``--repeats`` runs);
* the time to encode the corpus with our GPT-2 tokenizer and with tiktoken's,
  in the same process, as a ratio (ours / tiktoken) and in tokens per second.
  "cold" starts from an empty chunk cache (every distinct chunk is run through
  BPE once); "warm" encodes again with the cache filled (pre-tokenization plus
  a dict lookup per chunk). ``encode_ordinary`` ignores special tokens;
  ``encode`` also scans the text for them. Every figure is the best of
  ``--repeats`` runs, with both encoders checked to give identical ids.
  tiktoken keeps no cache between calls, so the "cold" ratio is the fair one;
  "warm" shows what the cache buys when the same words come back.
"""

from __future__ import annotations

import argparse
import time
from typing import Callable


def best_of(repeats: int, fn: Callable[[], object], setup: Callable[[], None] | None = None) -> tuple[float, object]:
    """Fastest wall-clock seconds of ``repeats`` calls of ``fn`` (``setup`` runs untimed
    before each call) and the last call's result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        if setup is not None:
            setup()
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main(argv: list[str]) -> int:
    """Run the benchmark and print a table; returns the process exit code."""
    from minillm import data
    from minillm.bench import environment
    from minillm.tokenizer import BPETokenizer

    parser = argparse.ArgumentParser(prog="python -m minillm.bench tokenizer", description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", default="tinyshakespeare", help="a minillm.data.read_text corpus name")
    parser.add_argument("--vocab-size", type=int, default=4096, help="vocabulary size to train (default 4096)")
    parser.add_argument("--repeats", type=int, default=5, help="best of this many runs (default 5)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")

    import tiktoken

    text = data.read_text(args.corpus)
    print(environment())
    print(f"tiktoken {tiktoken.__version__}; corpus {args.corpus!r}: {len(text):,} characters, "
          f"{len(text.encode('utf-8')):,} bytes; best of {args.repeats} runs\n")

    train_s, trained = best_of(args.repeats, lambda: BPETokenizer.train(text, args.vocab_size))
    print(f"train BPE, vocab {trained.vocab_size}: {train_s:.2f} s (target <= 10 s)\n")

    ours, ref = BPETokenizer.from_gpt2(), tiktoken.get_encoding("gpt2")
    ordinary, full = "tiktoken encode_ordinary", "tiktoken encode"
    rows = [  # (name, reference row for the ratio, timed call, untimed setup before each call)
        (ordinary, None, lambda: ref.encode_ordinary(text), None),
        (full, None, lambda: ref.encode(text), None),
        ("minillm encode_ordinary, cold cache", ordinary, lambda: ours.encode_ordinary(text), ours.clear_cache),
        ("minillm encode_ordinary, warm cache", ordinary, lambda: ours.encode_ordinary(text), None),
        ("minillm encode, cold cache", full, lambda: ours.encode(text), ours.clear_cache),
        ("minillm encode, warm cache", full, lambda: ours.encode(text), None),
    ]
    seconds: dict[str, float] = {}
    expected = ref.encode(text)
    title = f"GPT-2 encoding ({len(expected):,} tokens)"
    print(f"{title:<40}{'seconds':>9}{'Mtok/s':>9}{'x tiktoken':>12}")
    for name, baseline, fn, setup in rows:
        seconds[name], ids = best_of(args.repeats, fn, setup)
        if ids != expected:
            print(f"error: {name} gives different ids than tiktoken")
            return 1
        ratio = f"{seconds[name] / seconds[baseline]:.2f}" if baseline else "1.00"
        print(f"{name:<40}{seconds[name]:>9.3f}{len(ids) / seconds[name] / 1e6:>9.2f}{ratio:>12}")
    print("\n(target: minillm encode within 10x of tiktoken's time)")
    return 0
