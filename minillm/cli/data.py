"""`prepare`, `datasets` and `curate`: the data commands of `python -m minillm` (chapters 01-02).

    python -m minillm datasets
    python -m minillm prepare tinyshakespeare --tokenizer char --out data/shakespeare-char
    python -m minillm curate notes/ more.jsonl --out data/clean

`prepare` is `minillm.corpus.prepare_corpus`; `train --data DIR` trains on the
folder it writes. `curate` is `minillm.curation.curate`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from minillm.cli.common import add_command, check_empty_folder


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add `prepare`, `datasets` and `curate` to the subcommands of `python -m minillm`."""
    p = add_command(
        commands, "prepare",
        help="download/verify a text data set, train a tokenizer, write token shards",
        description="Download (or find offline) and verify a data set, train or load a tokenizer, tokenize the "
        "text, split it into train/val and write memory-mappable token shards, the tokenizer and corpus.json "
        "into --out. Train on it with `python -m minillm train --preset NAME --data DIR`.",
    )  # fmt: skip
    p.add_argument("name", help="data set name, e.g. tinyshakespeare, the-verdict, python-stdlib "
                   "(see `python -m minillm datasets`)")  # fmt: skip
    p.add_argument("--out", default=None, help="output directory (default: data/NAME-TOKENIZER)")
    p.add_argument("--tokenizer", default="bpe", choices=["bpe", "char", "gpt2"],
                   help="learn a byte-level BPE, build a character vocabulary, or use GPT-2's BPE")  # fmt: skip
    p.add_argument("--vocab-size", type=int, default=4096, help="BPE vocabulary size to learn (bpe only)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="last fraction of the tokens held out")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.set_defaults(func=run_prepare)

    p = add_command(commands, "datasets", help="list the data sets minillm knows by name",
                    description="List every data set `prepare`, `train --data` and the book know by name.")
    p.set_defaults(func=run_datasets)

    p = add_command(
        commands, "curate",
        help="clean a text corpus: normalize, filter, deduplicate, decontaminate, redact PII",
        description="Read documents from files/folders (.txt, .md, .py, ... one document per file, paragraph "
        "or line; .jsonl rows with a text field), run the curation pipeline and write DIR/curated.jsonl "
        "plus DIR/report.json (documents and bytes in/out per step, reasons for removal).",
    )  # fmt: skip
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="files or folders to read")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--doc-per", default="file", choices=["file", "paragraph", "line"],
                   help="how text files split into documents")  # fmt: skip
    p.add_argument("--text-field", default="text", help="field of JSON rows holding the text")
    p.add_argument("--min-words", type=int, default=50, help="quality rule: fewest words a document may have")
    p.add_argument("--no-quality", action="store_true", help="skip the heuristic quality rules")
    p.add_argument("--near-threshold", type=float, default=0.8,
                   help="Jaccard similarity above which near-duplicates are removed; 0 skips this step")
    p.add_argument("--decontaminate", nargs="*", default=["hellaswag", "arc", "mmlu"], metavar="SET",
                   help="evaluation sets to decontaminate against (default: hellaswag arc mmlu); "
                   "'none' skips this step")  # fmt: skip
    p.add_argument("--ngram", type=int, default=13, help="decontamination n-gram size in words")
    p.add_argument("--no-pii", action="store_true", help="skip privacy redaction")
    p.add_argument("--num-proc", type=int, default=None, help="worker processes for datasets.map (default: one)")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty --out")
    p.set_defaults(func=run_curate)


def run_prepare(args: argparse.Namespace) -> int:
    """`prepare NAME`: write a prepared corpus folder and print its summary."""
    from minillm.corpus import prepare_corpus

    summary = prepare_corpus(args.name, args.out, tokenizer=args.tokenizer, vocab_size=args.vocab_size,
                             val_fraction=args.val_fraction, overwrite=args.overwrite)  # fmt: skip
    shown = {k: v for k, v in summary.items() if k not in ("format", "version", "settings")}
    width = max(len(k) for k in shown)
    for key, value in shown.items():
        print(f"{key:<{width}}  {value:,}" if isinstance(value, int) else f"{key:<{width}}  {value}")
    print(f"train on it:  python -m minillm train --preset PRESET --data {summary['out_dir']} --out RUN_DIR")
    return 0


def run_datasets(args: argparse.Namespace) -> int:
    """`datasets`: one line per known data set name."""
    from minillm.data import STDLIB, get_spec, names

    for name in names():
        description = "this Python's standard library sources (no download)" if name == STDLIB \
            else get_spec(name).description  # fmt: skip
        print(f"{name:<22} {description}")
    return 0


def run_curate(args: argparse.Namespace) -> int:
    """`curate INPUT... --out DIR`: curated.jsonl and report.json in DIR."""
    from minillm.curation import CurationConfig, curate, read_documents
    from minillm.data import datasets_progress
    from minillm.dedup import Decontaminator
    from minillm.errors import DataError
    from minillm.fileio import atomic_write
    from minillm.quality import QualityConfig

    out = Path(args.out)
    check_empty_folder(out, args.overwrite)
    docs = read_documents(args.inputs, args.doc_per, args.text_field)
    if not docs:
        raise DataError(f"no documents found in {', '.join(args.inputs)}")
    quality = None if args.no_quality else QualityConfig(min_words=args.min_words)
    sets = _decontamination_sets(args.decontaminate)
    with datasets_progress(False):  # no "Downloading data" bars or logging of `datasets` (offline, local files)
        decon = Decontaminator.from_benchmarks(sets, args.ngram) if sets else None
        config = CurationConfig(quality=quality, near_dedup_threshold=args.near_threshold or None,
                                decontaminate=decon, redact_pii=not args.no_pii, num_proc=args.num_proc)  # fmt: skip
        ds, report = curate(docs, config, progress=True)  # the bars of the pipeline's own steps
    lines = "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in ds["text"])
    atomic_write(out / "curated.jsonl", lines)
    atomic_write(out / "report.json", json.dumps(report.to_dict(), indent=1))
    print(report.table())
    if not len(ds):
        print(f"every document was removed (see the table: which step, for which reason); {out / 'curated.jsonl'} "
              "is empty")  # fmt: skip
    print(f"wrote {len(ds)} documents to {out / 'curated.jsonl'} and the report to {out / 'report.json'}")
    return 0


def _decontamination_sets(values: list[str]) -> list[str]:
    """The evaluation sets of `--decontaminate` ([] skips the step): 'none' or the option alone skip it."""
    from minillm.errors import ConfigError

    if any(v.lower() == "none" for v in values):
        if len(values) > 1:
            raise ConfigError(f"--decontaminate none skips decontamination; it cannot be combined with other sets "
                              f"({' '.join(values)})")  # fmt: skip
        return []
    return values
