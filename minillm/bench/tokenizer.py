"""Tokenizer benchmark: `python -m minillm.bench tokenizer` (chapter 02).

Measures, on one corpus (Tiny Shakespeare by default; ``--corpus wikitext-2``
takes ``--split``, validation by default):

* the seconds :meth:`minillm.bpe.BPETokenizer.train` needs for a
  4096-token vocabulary (best of ``--repeats`` runs);
* the time to encode the corpus with our GPT-2 tokenizer and with tiktoken's,
  in the same process, as a ratio (ours / tiktoken) and in tokens per second.
  "cold" starts from an empty chunk cache (every distinct chunk that is not
  itself a token is run through BPE once; one that is a token is looked up in
  a table made with the tokenizer, as tiktoken does); "warm" encodes again with
  the cache filled (pre-tokenization plus a dict lookup per chunk). ``encode_ordinary`` ignores special tokens;
  ``encode`` also scans the text for them. Every figure is the best of
  ``--repeats`` runs, the rows taking turns, with both encoders checked to give
  identical ids.
  tiktoken keeps no cache between calls, so the "cold" ratio is the fair one
  (target: at most 2x tiktoken's time); "warm" shows what the cache buys when
  the same words come back.
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
    parser.add_argument("--corpus", default="tinyshakespeare",
                        help="a minillm.data.read_text corpus name (default tinyshakespeare)")
    parser.add_argument("--split", default=None,
                        help="the split of a corpus that has several (wikitext-2: validation, the default, or test)")
    parser.add_argument("--vocab-size", type=int, default=4096, help="vocabulary size to train (default 4096)")
    parser.add_argument("--repeats", type=int, default=5, help="best of this many runs (default 5)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")

    import tiktoken

    split = args.split or ("validation" if args.corpus == "wikitext-2" else None)
    text = data.read_text(args.corpus, split=split)
    corpus = args.corpus if split is None else f"{args.corpus} {split}"
    print(environment())
    print(f"tiktoken {tiktoken.__version__}; corpus {corpus!r}: {len(text):,} characters, "
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
    seconds = {name: float("inf") for name, *_ in rows}
    expected = ref.encode(text)
    for _ in range(args.repeats):  # rows interleaved: a change in the machine's load hits them alike
        for name, _, fn, setup in rows:  # each warm row follows its cold row, which fills the cache
            t, ids = best_of(1, fn, setup)
            if ids != expected:
                print(f"error: {name} gives different ids than tiktoken")
                return 1
            seconds[name] = min(seconds[name], t)
    title = f"GPT-2 encoding ({len(expected):,} tokens)"
    print(f"{title:<40}{'seconds':>9}{'Mtok/s':>9}{'x tiktoken':>12}")
    for name, baseline, *_ in rows:
        ratio = f"{seconds[name] / seconds[baseline]:.2f}" if baseline else "1.00"
        print(f"{name:<40}{seconds[name]:>9.3f}{len(expected) / seconds[name] / 1e6:>9.2f}{ratio:>12}")
    cold = seconds["minillm encode, cold cache"] / seconds[full]
    warm = seconds["minillm encode, warm cache"] / seconds[full]
    print(f"\nminillm encode vs tiktoken on {corpus}: cold cache {cold:.2f}x (target <= 2x), "
          f"warm cache {warm:.2f}x; identical ids")
    return 0
