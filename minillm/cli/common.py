"""What every command of `python -m minillm` shares: the parser class, printing, logging, model loading.

Importing this module imports no torch: the library is imported by the
command handlers, when a command runs.

* `Parser`: argparse with the command line's conventions. A mistake raises
  `UsageError` (printed as `error: ...`, exit status 2); an unknown option
  names the closest valid ones; `--max_steps` means `--max-steps`; help shows
  each option's default; and options can be filled in lazily (`fill=`), so a
  command whose options need the library (`train`) costs nothing until it is
  the command being parsed or its help is shown.
* `print0` and `logging_to_stderr`: output of process rank 0 only under
  `torchrun` (every process runs the command).
* `integer` and `number`: option types that refuse NaN, negative or out-of-range
  values while parsing, naming the option and what would work.
* `load_model_arg`: the (model, tokenizer) of a `--checkpoint` argument.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import logging
import math
import os
import sys
import textwrap
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from minillm.errors import ConfigError, RunFolderError


class UsageError(ConfigError):
    """A command line that does not parse: unknown option, missing or invalid value."""


class HelpFormatter(argparse.HelpFormatter):
    """argparse's, with each option's default at the end of its help (unless the help says one),
    INT/FLOAT as the value of a number option, and no line broken inside a hyphenated name."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (not action.option_strings or default is None or default is False or default is argparse.SUPPRESS
                or "default" in text.lower()):  # fmt: skip
            return text
        return f"{text} (default: %(default)s)"

    def _get_default_metavar_for_optional(self, action: argparse.Action) -> str:
        kind = getattr(action.type, "__name__", None)  # int, float, or a checked `integer`/`number`
        return {"int": "INT", "float": "FLOAT"}.get(kind, action.dest.upper())  # type: ignore[arg-type]

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return textwrap.fill(" ".join(text.split()), width, initial_indent=indent, subsequent_indent=indent,
                             break_on_hyphens=False)  # fmt: skip


class Parser(argparse.ArgumentParser):
    """An `ArgumentParser` with the conventions of `python -m minillm` (see the module docstring).

    `fill(parser)`: adds the options, called once, just before the first parse
    or help; `option_noun`: what an unknown option is called in the error.
    """

    def __init__(self, *args: Any, fill: Callable[[Parser], None] | None = None, option_noun: str = "option",
                 **kwargs: Any) -> None:  # fmt: skip
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        self._fill = fill
        self.option_noun = option_noun

    def ensure_filled(self) -> None:
        """Add the lazily defined options now (a no-op after the first call)."""
        fill, self._fill = self._fill, None
        if fill is not None:
            fill(self)

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None):
        """argparse's, after `ensure_filled`, with `--a_b` read as `--a-b` and unknown options named."""
        self.ensure_filled()
        args = list(sys.argv[1:] if args is None else args)
        namespace, extras = super().parse_known_args(self._dashed(args), namespace)
        unknown = [a for a in extras if a.startswith("-") and a != "-"]
        if unknown:
            self.error(self._unknown_message(unknown[0]))
        return namespace, extras

    def format_help(self) -> str:
        self.ensure_filled()
        return super().format_help()

    def format_usage(self) -> str:
        self.ensure_filled()
        return super().format_usage()

    def error(self, message: str):  # type: ignore[override]
        """Print the usage line and raise `UsageError(message)` (the caller prints `error: message`)."""
        self.print_usage(sys.stderr)
        raise UsageError(message)

    def _dashed(self, args: list[str]) -> list[str]:
        """`args` with `--a_b[=v]` spelled `--a-b[=v]` where only the dashed option exists."""
        out = []
        for i, arg in enumerate(args):
            if arg == "--":
                return out + args[i:]
            name, eq, value = arg.partition("=")
            dashed = name.replace("_", "-")
            if (arg.startswith("--") and dashed != name and dashed in self._option_string_actions
                    and name not in self._option_string_actions):  # fmt: skip
                arg = dashed + eq + value
            out.append(arg)
        return out

    def _unknown_message(self, arg: str) -> str:
        options = list(dict.fromkeys(s for a in self._actions for s in a.option_strings if s.startswith("--")))
        name = "--" + arg.lstrip("-").split("=")[0].replace("_", "-")
        close = difflib.get_close_matches(name, options, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        noun = self.option_noun
        return f"unknown {noun} {arg}{hint}; valid {noun}s: {', '.join(o for o in options if o != '--help')}"


# ---------------------------------------------------------------------------
# Option values checked while parsing (no library import needed)
# ---------------------------------------------------------------------------


def integer(low: int, high: int | None = None, note: str = "") -> Callable[[str], int]:
    """An argparse `type`: an integer in [low, high]; otherwise argparse's error (exit status 2) says
    what would work, e.g. "argument --num-samples: must be an integer >= 1, got 0"."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low or (high is not None and value > high):
            wanted = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
            raise argparse.ArgumentTypeError(f"must be {wanted}{note}, got {text!r}")
        return value

    parse.__name__ = "int"  # what argparse calls the type in its own messages
    return parse


def number(low: float, high: float | None = None, *, low_open: bool = False, high_open: bool = False,
           note: str = "") -> Callable[[str], float]:  # fmt: skip
    """An argparse `type`: a finite number between `low` and `high` (each bound closed unless `*_open`)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        ok = math.isfinite(value) and (value > low if low_open else value >= low)
        if high is not None:
            ok = ok and (value < high if high_open else value <= high)
        if not ok:
            if high is None:
                wanted = f"a finite number {'>' if low_open else '>='} {low:g}"
            else:
                wanted = f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
            raise argparse.ArgumentTypeError(f"must be {wanted}{note}, got {text!r}")
        return value

    parse.__name__ = "float"
    return parse


def add_command(commands: argparse._SubParsersAction, name: str, *, help: str, description: str,
                **kwargs: Any) -> Parser:  # fmt: skip
    """A new subcommand parser (`kwargs`: `fill`, `option_noun`, `epilog`, ...) with `--debug` accepted
    after the command too."""
    parser = commands.add_parser(name, help=help, description=description, **kwargs)
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the full traceback of any error")  # fmt: skip
    return parser


def check_empty_folder(out: Path, overwrite: bool) -> None:
    """Raise `RunFolderError` if `out` is a file or a non-empty folder and not `overwrite`."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise RunFolderError(f"{out} exists and is not empty; choose another --out or pass --overwrite")


# ---------------------------------------------------------------------------
# Output: rank 0 only under torchrun
# ---------------------------------------------------------------------------


def process_rank() -> int:
    """This process' rank under `torchrun` (its RANK variable); 0 without it."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def print0(*args: Any, **kwargs: Any) -> None:
    """`print` on rank 0 only (every process of a `torchrun` launch runs the command)."""
    if process_rank() == 0:
        print(*args, **kwargs)


class _StderrHandler(logging.StreamHandler):
    """A handler writing to whatever `sys.stderr` is at the time of each record (tests replace it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


@contextlib.contextmanager
def logging_to_stderr() -> Iterator[None]:
    """While the block runs, the `minillm.*` loggers' INFO messages print as plain lines on stderr.

    Under `torchrun` only rank 0 prints them; other ranks print warnings and
    errors only, prefixed by their rank. Everything is restored afterwards.
    """
    logger = logging.getLogger("minillm")
    rank = process_rank()
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(message)s" if rank == 0 else f"[rank {rank}] %(message)s"))
    saved = logger.level, logger.propagate
    logger.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    logger.propagate = False
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


# ---------------------------------------------------------------------------
# --checkpoint
# ---------------------------------------------------------------------------


def load_model_arg(checkpoint: str, device: Any = None, *, hub_names: bool = False) -> tuple[Any, Any]:
    """(model in eval mode, tokenizer) of a `--checkpoint` argument.

    Whatever `minillm.checkpoint.load_model` reads (a run folder, a checkpoint,
    an export, a Hugging Face folder with a tokenizer), plus a Hugging Face
    GPT-2 folder saved without tokenizer files (`save_pretrained` of the model
    alone): GPT-2's own tokenizer is the one that fits its vocabulary. With
    `hub_names`, a name that is not a folder (e.g. "gpt2") is a Hugging Face hub model.
    """
    from minillm.checkpoint import load_model
    from minillm.model import GPT
    from minillm.tokenizer import BPETokenizer

    folder = Path(checkpoint)
    if _gpt2_without_tokenizer(folder) or (hub_names and not folder.exists()):
        return GPT.from_pretrained(checkpoint, device=device).eval(), BPETokenizer.from_gpt2()
    return load_model(folder, device=device)


def _gpt2_without_tokenizer(folder: Path) -> bool:
    """Whether `folder` holds a Hugging Face GPT-2 (GPT-2's vocabulary) but no tokenizer file."""
    import json

    from minillm.tokenizer import tokenizer_path

    try:
        hf = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):  # missing or not JSON: load_model says what is wrong
        return False
    if not isinstance(hf, dict) or hf.get("model_type") != "gpt2" or hf.get("vocab_size") != 50257:
        return False
    return tokenizer_path(folder) is None and not (folder / "vocab.json").is_file()
