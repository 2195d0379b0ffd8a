"""The command-line interface: `python -m minillm COMMAND ...`.

Each command is a thin layer over the package: it parses arguments, calls the
function that does the work, and prints a summary. Later chapters add their
commands here (train, generate, evaluate, finetune, quickstart).
"""

from __future__ import annotations

import argparse
import sys


def _prepare(args: argparse.Namespace) -> int:
    from minillm.tokens import prepare_corpus

    summary = prepare_corpus(
        args.name,
        args.out,
        tokenizer=args.tokenizer,
        vocab_size=args.vocab_size,
        val_fraction=args.val_fraction,
        overwrite=args.overwrite,
    )
    width = max(len(k) for k in summary)
    for key, value in summary.items():
        print(f"{key:<{width}}  {value}")
    return 0


def _datasets(args: argparse.Namespace) -> int:
    from minillm.data import STDLIB, get_spec, names

    for name in names():
        description = "this Python's standard library sources (no download)" if name == STDLIB \
            else get_spec(name).description
        print(f"{name:<22} {description}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The `python -m minillm` argument parser with every command registered."""
    parser = argparse.ArgumentParser(
        prog="python -m minillm",
        description="minillm: build a large language model from scratch. "
        "Each command is a thin layer over the `minillm` package.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = commands.add_parser(
        "prepare",
        help="download/verify a text data set, train a tokenizer, write token shards",
        description="Download (or find offline) and verify a data set, train or load a "
        "tokenizer, tokenize the text, split it into train/val and write uint16/uint32 "
        "token shards plus the tokenizer and a summary.json into --out.",
    )
    p.add_argument("name", help="data set name, e.g. tinyshakespeare, the-verdict, python-stdlib")
    p.add_argument("--out", default=None, help="output directory (default: data/NAME-TOKENIZER)")
    p.add_argument(
        "--tokenizer",
        default="bpe",
        choices=["bpe", "char", "gpt2"],
        help="train a byte-level BPE, build a character vocabulary, or use GPT-2's BPE",
    )
    p.add_argument("--vocab-size", type=int, default=4096, help="BPE vocabulary size (bpe only)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="last fraction of tokens held out")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.set_defaults(func=_prepare)

    p = commands.add_parser("datasets", help="list the data sets minillm knows by name")
    p.set_defaults(func=_datasets)

    from minillm.curation import add_curate_command
    from minillm.finetune import add_finetune_command
    from minillm.harness import add_evaluate_command
    from minillm.train_cli import add_train_commands

    add_curate_command(commands)
    add_train_commands(commands)
    add_finetune_command(commands)
    add_evaluate_command(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; user mistakes print `error: ...` and return exit code 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except (ValueError, KeyError, TypeError, OSError) as err:  # user mistakes, missing files, offline
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
