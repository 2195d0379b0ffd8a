"""The command-line interface: `python -m minillm COMMAND ...` (every chapter).

Every command lives here, one module per group; the library modules keep no
argparse code. Each command is a thin layer: parse, call the library, print.

* `minillm.cli.data`: `prepare`, `datasets`, `curate` (chapters 01-02);
* `minillm.cli.train`: `train`, `generate`, `quickstart` (chapters 04-06);
* `minillm.cli.finetune`: `finetune` (chapter 07);
* `minillm.cli.evaluate`: `evaluate`, `skills` (chapters 05, 07, 08);
* `minillm.cli.code`: `evaluate-code`, HumanEval/MBPP pass@k (appendix D);
* `minillm.cli.export`: `export` (chapter 05);
* `minillm.cli.serve`: `serve` (appendix C);
* `minillm.cli.book`: `book build`, `book serve`, the book as a website (`minillm.website`);
* `minillm.cli.common`: what they share (the parser class, rank-0 output, logging).

`python -m minillm --help` imports no torch: a command's handler imports the
library when it runs, and the options of `train` (read from `minillm.config`,
which needs torch) are added only when `train` is the command being parsed.

Errors: a user's mistake (`minillm.errors.MinillmError`, an `OSError` such as
a missing file, a command line that does not parse) prints `error: <message>`
on stderr and exits with status 2; a loss that became NaN exits with 3; Ctrl-C
outside training exits with 130. Anything else is a bug and keeps its
traceback; `--debug` shows the traceback of every error. The library's
`minillm.*` loggers print their INFO messages as plain lines on stderr (rank 0
only under `torchrun`).
"""

from __future__ import annotations

import sys

from minillm.cli import book, code, data, evaluate, export, finetune, serve, train
from minillm.cli.common import Parser, UsageError, logging_to_stderr
from minillm.errors import MinillmError

#: The modules whose `add_commands(subparsers)` register the commands, in the order `--help` lists them.
COMMAND_MODULES = (data, train, finetune, evaluate, code, export, serve, book)


def build_parser() -> Parser:
    """The `python -m minillm` argument parser with every command registered (imports no torch)."""
    parser = Parser(
        prog="python -m minillm",
        description="minillm: build a large language model from scratch. "
        "Each command is a thin layer over the `minillm` package; `COMMAND --help` shows its options.",
    )
    parser.add_argument("--debug", action="store_true", help="show the full traceback of any error")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.add_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command and return its exit status (0 ok, 2 a user's mistake, 3 NaN loss, 130 interrupted)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except SystemExit as exit:  # --help
        return exit.code if isinstance(exit.code, int) else 0
    if args.command is None:
        parser.print_help()
        return 0
    debug = getattr(args, "debug", False)
    with logging_to_stderr():
        try:
            return args.func(args)
        except KeyboardInterrupt:
            if debug:
                raise
            print("\ninterrupted", file=sys.stderr)
            return 130
        except (MinillmError, OSError) as err:
            if debug:
                raise
            print(f"error: {err}", file=sys.stderr)
            return 2


__all__ = ["build_parser", "main"]
