"""`export`: copy a trained model out of its run, a command of `python -m minillm` (chapter 05).

    python -m minillm export --checkpoint runs/shakespeare --out models/shakespeare            # minillm
    python -m minillm export --checkpoint runs/shakespeare --out models/hf --format hf         # transformers

`--format minillm` is `minillm.checkpoint.export_checkpoint` (weights, config
and tokenizer; `minillm.load_model` reads it); `--format hf` is
`minillm.hf.export_hf`, a folder `transformers` loads with `from_pretrained`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from minillm.cli.common import add_command, check_empty_folder
from minillm.errors import ConfigError


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add `export` to the subcommands of `python -m minillm`."""
    p = add_command(
        commands, "export",
        help="write a run's model (and tokenizer) to a folder, for minillm or Hugging Face transformers",
        description="Copy the model of a run folder (its latest checkpoint) or of a checkpoint folder into "
        "--out: minillm's own format (safetensors weights, config, tokenizer) or a Hugging Face folder "
        "that transformers' from_pretrained loads.",
    )  # fmt: skip
    p.add_argument("--checkpoint", required=True, help="run folder (--out of train) or checkpoint folder")
    p.add_argument("--out", required=True, help="folder to write (new or empty, unless --overwrite)")
    p.add_argument("--format", default="minillm", choices=["minillm", "hf"],
                   help="minillm's checkpoint format, or Hugging Face transformers'")  # fmt: skip
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty --out")
    p.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    """`export`: write the model in --format to --out (never into the run or checkpoint it reads)."""
    out = Path(args.out)
    source = Path(args.checkpoint).resolve()
    if out.resolve() == source or source in out.resolve().parents:
        raise ConfigError(f"--out {out} is inside --checkpoint {args.checkpoint}; the export would mix with the "
                          "files it is read from. Choose a folder outside it, e.g. models/NAME")  # fmt: skip
    if args.format == "minillm":
        from minillm.checkpoint import export_checkpoint

        check_empty_folder(out, args.overwrite)
        export_checkpoint(args.checkpoint, out)
    else:
        from minillm.checkpoint import load_model
        from minillm.hf import export_hf
        from minillm.tokenizer import TOKENIZER_FILE, BPETokenizer

        model, tokenizer = load_model(args.checkpoint, device="cpu")
        bpe = isinstance(tokenizer, BPETokenizer)  # the only kind with a Hugging Face equivalent
        export_hf(model, out, tokenizer=tokenizer if bpe else None, overwrite=args.overwrite)
        if not bpe:
            tokenizer.save(out / TOKENIZER_FILE)
            print(f"note: a {type(tokenizer).__name__} has no Hugging Face equivalent; {out} holds minillm's "
                  f"tokenizer file ({TOKENIZER_FILE}) for minillm.load_model, and no Hugging Face tokenizer")
    print(f"wrote the model of {args.checkpoint} to {out} ({args.format} format)")
    return 0
