"""Benchmark of multiple-choice scoring (chapter 08): `python -m minillm.bench evaluate [options]`.

Scores the first `--limit` HellaSwag examples by log-likelihood
(`minillm.evaluate.score_multiple_choice`) twice on one device: one sequence
per forward pass (the reference), then `--batch-size` sequences per forward
pass (right-padded). Prints examples/s of both, the ratio, and whether both
runs chose the same answers. The model has random weights (speed does not
depend on them): `--preset gpt2` is GPT-2 small's shape with its tokenizer.
"""

from __future__ import annotations

import argparse
import time

import torch

from minillm.bench import environment, sync
from minillm.evaluate import score_multiple_choice
from minillm.model import GPT, MODEL_SHAPES, GPTConfig


def time_scoring(model: GPT, tokenizer, examples, batch_size: int) -> tuple[float, list[int]]:
    """(examples per second, acc predictions) of scoring `examples` with `batch_size` rows per pass."""
    device = next(model.parameters()).device
    score_multiple_choice(model, tokenizer, examples[:2], batch_size=batch_size)  # warm-up
    sync(device)
    start = time.perf_counter()
    result = score_multiple_choice(model, tokenizer, examples, batch_size=batch_size)
    sync(device)
    return len(examples) / (time.perf_counter() - start), result.predictions["acc"]


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print one line per setting; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m minillm.bench evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="gpt2", choices=sorted(p for p in MODEL_SHAPES if p.startswith("gpt2")),
                        help="model shape, random weights (default gpt2 = 124M)")  # fmt: skip
    parser.add_argument("--n-layer", type=int, default=None, help="override the preset's number of layers")
    parser.add_argument("--d-model", type=int, default=None, help="override the preset's width (64 per head)")
    parser.add_argument("--limit", type=int, default=64, help="HellaSwag examples to score (default 64)")
    parser.add_argument("--batch-size", type=int, default=32, help="sequences per batched pass (default 32)")
    parser.add_argument("--device", default=None, help="cpu, cuda, mps (default: cuda if available)")
    args = parser.parse_args(argv)
    if args.limit < 2 or args.batch_size < 1:
        parser.error("--limit must be >= 2 and --batch-size >= 1")
    from minillm.tasks import load_hellaswag
    from minillm.tokenizer import BPETokenizer

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(0)
    overrides = {"n_layer": args.n_layer} if args.n_layer else {}
    if args.d_model:
        overrides.update(d_model=args.d_model, n_head=max(1, args.d_model // 64))
    model = GPT(GPTConfig.from_preset(args.preset, **overrides)).to(device).eval()
    tokenizer = BPETokenizer.from_gpt2()
    examples = load_hellaswag(limit=args.limit)
    print(environment())
    print(f"device {device}, fp32, torch threads {torch.get_num_threads()}, {args.preset} {overrides or ''} (random weights), "
          f"{len(examples)} HellaSwag examples x 4 endings")  # fmt: skip
    one, pred_one = time_scoring(model, tokenizer, examples, 1)
    many, pred_many = time_scoring(model, tokenizer, examples, args.batch_size)
    same = "same answers" if pred_one == pred_many else "ANSWERS DIFFER"
    print(f"{'one sequence per pass':<28} {one:8.2f} examples/s")
    print(f"{f'batched ({args.batch_size} per pass)':<28} {many:8.2f} examples/s")
    print(f"{'batched / one at a time':<28} {many / one:8.2f}x   {same}")
    return 0
