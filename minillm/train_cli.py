"""The `train`, `generate` and `quickstart` commands of `python -m minillm` (chapter 05).

`add_train_commands(commands)` adds them to the CLI's subcommands (see
`minillm.cli`). Each is a thin layer over `minillm.train`:

    python -m minillm train --preset shakespeare-char --out runs/shakespeare [--max-steps 500] [--lr 3e-4]
    python -m minillm train --out runs/shakespeare --resume
    python -m minillm generate --checkpoint runs/shakespeare --prompt "ROMEO:"
    python -m minillm quickstart
    torchrun --nproc_per_node=2 -m minillm train --preset shakespeare-char --out runs/ddp --strategy ddp \
        --grad-accum 2 [--precision bf16|fp16|fp32] [--activation-checkpointing] [--compile]

Every `TrainConfig` field is a `--key value` option of `train` (dashes or
underscores), typed from the dataclass; a true/false setting given alone
(`--compile`) means true. Under `torchrun` (chapter 06) every process runs the
command; only rank 0 prints and writes run files.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

from minillm.train import TrainConfig

QUICKSTART_PROMPTS = ("def fibonacci(n):\n", "class Stack:\n    def __init__(self):\n", "import os\n\n\ndef ")
_FIELD_PREFIX = "set_"  # argparse dest of a TrainConfig override


def add_train_commands(commands: argparse._SubParsersAction) -> None:
    """Add the `train`, `generate` and `quickstart` subcommands to an argparse subparsers object."""
    from minillm.presets import PRESETS

    p = commands.add_parser(
        "train",
        help="pretrain a GPT from a preset (checkpoints, metrics.jsonl, loss plot)",
        description="Train a GPT as a preset says, with any TrainConfig field overridden by --key value. "
        "Writes checkpoints/, metrics.jsonl, samples.txt and loss.png into --out. Ctrl-C saves a checkpoint "
        "and stops; --resume continues exactly where it stopped.",
    )
    p.add_argument("--preset", help=f"one of: {', '.join(PRESETS)} (default with --resume: the run's own settings)")
    p.add_argument("--out", required=True, help="run directory (must be new or empty, unless --resume/--overwrite)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    p.add_argument("--overwrite", action="store_true", help="delete the run files in --out and start over")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    settings = p.add_argument_group("settings (TrainConfig fields; override the preset)")
    for f in dataclasses.fields(TrainConfig):
        kind = f.type if isinstance(f.type, str) else f.type.__name__
        flags = dict.fromkeys([f"--{f.name.replace('_', '-')}", f"--{f.name}"])  # both spellings, once each
        extra = {"nargs": "?", "const": "true"} if kind == "bool" else {}  # --compile alone means --compile true
        settings.add_argument(*flags, dest=_FIELD_PREFIX + f.name, metavar=kind.upper(), default=None,
                              help=f"default {f.default!r}", **extra)  # fmt: skip
    _strict(p, [f.name for f in dataclasses.fields(TrainConfig)])
    p.set_defaults(func=_train)

    p = commands.add_parser(
        "generate",
        help="continue a prompt with a trained checkpoint",
        description="Load a run directory (its latest checkpoint) or a checkpoint directory, with the tokenizer "
        "saved inside it, and sample a continuation of --prompt, printed as it is generated.",
    )
    p.add_argument("--checkpoint", required=True, help="run directory (--out of train) or checkpoint directory")
    p.add_argument("--prompt", default="\n", help="text to continue ('\\n' is a newline)")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=50, help="sample among the k most likely tokens (0: all)")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling threshold")
    p.add_argument("--num-samples", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_generate)

    p = commands.add_parser(
        "quickstart",
        help="train a small Python code model on this machine's standard library (CPU, minutes, no download)",
        description="Learn a BPE tokenizer from the Python standard library's source, pretrain the quickstart "
        "preset on it, print code completions, and write the checkpoint, metrics.jsonl and loss.png to --out.",
    )
    p.add_argument("--out", default="runs/quickstart", help="run directory (default runs/quickstart)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier quickstart run in --out")
    p.add_argument("--max-steps", type=int, default=None, help="optimizer steps (default: the preset's)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_quickstart)


def _strict(parser: argparse.ArgumentParser, valid: list[str]) -> None:
    """Make `parser` reject unknown options itself, naming the valid settings (argparse's own
    message, raised by the top-level parser, would not list them)."""
    parse_known = parser.parse_known_args

    def parse_known_args(args=None, namespace=None):
        namespace, extras = parse_known(args, namespace)
        unknown = [a for a in extras if a.startswith("-")]
        if unknown:
            import difflib

            key = unknown[0].lstrip("-").split("=")[0].replace("-", "_")
            close = difflib.get_close_matches(key, valid, n=3)
            hint = f" (did you mean {', '.join('--' + c.replace('_', '-') for c in close)}?)" if close else ""
            parser.error(f"unknown setting {unknown[0]}{hint}; valid settings: "
                         + ", ".join("--" + v.replace("_", "-") for v in valid))  # fmt: skip
        return namespace, extras

    parser.parse_known_args = parse_known_args


def _overrides(args: argparse.Namespace) -> dict[str, str]:
    return {k[len(_FIELD_PREFIX) :]: v for k, v in vars(args).items() if k.startswith(_FIELD_PREFIX) and v is not None}


def _train(args: argparse.Namespace) -> int:
    from minillm.checkpoint import latest_checkpoint, read_config
    from minillm.presets import apply_overrides, preset_config

    overrides = _overrides(args)
    if args.preset is not None:
        config = preset_config(args.preset, **overrides)
    elif args.resume:
        checkpoint = latest_checkpoint(args.out)
        if checkpoint is None:
            raise FileNotFoundError(f"no checkpoint in {args.out} to resume from; start a run with --preset")
        config = apply_overrides(read_config(checkpoint), overrides)
    else:
        raise ValueError("give --preset NAME for a new run (or --resume to continue the run in --out)")
    return _run(config, Path(args.out), resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress)


def _run(config: TrainConfig, out: Path, resume: bool, overwrite: bool, progress: bool) -> int:
    from minillm.device import resolve_device
    from minillm.distributed import print0
    from minillm.train import NonFiniteLossError, train

    device = resolve_device(config.device)
    print0(f"run {out}: {config.n_layer} layers, width {config.d_model}, context {config.context_length}, "
          f"{config.tokens_per_step:,} tokens/step, {config.max_steps:,} steps on {device}"
          + (f", strategy {config.strategy}" if config.strategy != "single" else "")
          + (" (resuming)" if resume else ""), flush=True)  # fmt: skip
    try:
        result = train(config, out, resume=resume, overwrite=overwrite, progress=progress)
    except NonFiniteLossError as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    print0(f"step {result.step}: val loss {result.val_loss:.4f} (perplexity {_ppl(result.val_loss)}) "
          f"in {result.seconds:.0f} s; checkpoint, metrics.jsonl and loss.png in {out}")  # fmt: skip
    if result.interrupted:
        print0(f"interrupted: continue with  python -m minillm train --out {out} --resume")
        return 130
    return 0


def _ppl(loss: float | None) -> str:
    import math

    return "n/a" if loss is None else f"{math.exp(min(loss, 50.0)):.2f}"


def _generate(args: argparse.Namespace) -> int:
    from minillm.checkpoint import load_model
    from minillm.device import resolve_device
    from minillm.presets import unescape

    prompt = unescape(args.prompt)  # '\n' -> newline, like --sample-prompt
    model, tokenizer = load_model(args.checkpoint, device=resolve_device(args.device))
    for i in range(args.num_samples):
        if args.num_samples > 1:
            print(f"--- sample {i + 1} ---")
        stream_completion(model, tokenizer, prompt, args.max_new_tokens, args.temperature,
                          args.top_k or None, args.top_p, seed=args.seed + i)  # fmt: skip
    return 0


def stream_completion(model: Any, tokenizer: Any, prompt: str, max_new_tokens: int = 200, temperature: float = 0.8,
                      top_k: int | None = 50, top_p: float | None = None, seed: int = 0, file=None) -> str:  # fmt: skip
    """Print `prompt` and its sampled continuation as it is generated; return the whole text."""
    import torch

    from minillm.generate import stream

    file = sys.stdout if file is None else file
    device = next(model.parameters()).device
    ids = tokenizer.encode(prompt, disallowed_special=()) if hasattr(tokenizer, "special_tokens") else \
        tokenizer.encode(prompt)  # fmt: skip
    if not ids:
        raise ValueError("the prompt encodes to no tokens; give at least one character")
    idx = torch.tensor([ids[-model.config.context_length :]], dtype=torch.long, device=device)
    print(prompt, end="", file=file, flush=True)
    new: list[int] = []
    shown = ""
    for token in stream(model, idx, max_new_tokens, temperature, top_k, top_p, seed=seed):
        new.append(int(token[0]))
        text = tokenizer.decode(new)
        if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
            print(text[len(shown) :], end="", file=file, flush=True)
            shown = text
    text = tokenizer.decode(new)
    print(text[len(shown) :], file=file, flush=True)
    return prompt + text


def _quickstart(args: argparse.Namespace) -> int:
    from minillm.presets import preset_config

    overrides: dict[str, Any] = {"device": args.device}
    if args.max_steps is not None:
        overrides["max_steps"] = args.max_steps
    config = preset_config("quickstart", **overrides)
    out = Path(args.out)
    t0 = time.perf_counter()
    print("quickstart: a small GPT learns Python from this machine's standard library (no download).")
    print("Learning a BPE tokenizer, then training; samples appear at each evaluation.", flush=True)
    code = _run(config, out, resume=False, overwrite=args.overwrite, progress=not args.no_progress)
    if code != 0:
        return code
    from minillm.checkpoint import load_model

    model, tokenizer = load_model(out)
    print("\nCompletions of the trained model (temperature 0.6, top-k 20):")
    for i, prompt in enumerate(QUICKSTART_PROMPTS):
        print(f"\n--- completion {i + 1} ---")
        stream_completion(model, tokenizer, prompt, max_new_tokens=80, temperature=0.6, top_k=20, seed=i)
    print(f"\nDone in {time.perf_counter() - t0:.0f} s. Checkpoint, metrics.jsonl and loss.png are in {out}.")
    print(f'Try:  python -m minillm generate --checkpoint {out} --prompt "def parse_args(argv):\\n"')
    return 0
