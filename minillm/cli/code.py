"""`evaluate-code` (HumanEval and MBPP pass@k in a sandbox), a command of `python -m minillm` (appendix D).

    python -m minillm evaluate-code --task humaneval --samples samples.jsonl --k 1,10
    python -m minillm evaluate-code --task mbpp --checkpoint book --n 20 --temperature 0.8

A thin layer over `minillm.codeeval`: read samples in openai/human-eval's
JSONL format (or, with `--checkpoint`, let a minillm model write them first),
run each as a program with its task's tests in `minillm.sandbox`, print pass@k
and write one result line per sample plus a summary JSON.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from minillm.cli.common import add_command, integer, load_model_arg, number


def _ks(text: str) -> list[int]:
    """An argparse `type`: comma-separated positive integers, e.g. "1,10"."""
    try:
        ks = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        ks = []
    if not ks or min(ks) < 1:
        raise argparse.ArgumentTypeError(f"must be comma-separated positive integers such as 1,10, got {text!r}")
    return ks


_ks.__name__ = "list of k"


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add `evaluate-code` to the subcommands of `python -m minillm`."""
    p = add_command(
        commands, "evaluate-code",
        help="score code samples on HumanEval or MBPP: pass@k, each program run in a sandbox",
        description="Run each sample (openai/human-eval's JSONL: one {\"task_id\", \"completion\"} a line) "
        "with its task's tests in a sandboxed process, print pass@k (Chen et al.'s unbiased estimator, "
        "averaged over tasks, with its standard error) and write one result line per sample and a summary. "
        "HumanEval ids are 'HumanEval/0'..'HumanEval/163'; MBPP ids 'MBPP/11' (the task_id). Tasks without "
        "samples are reported and left out of pass@k. With --checkpoint a minillm model first writes --n "
        "samples per task (a prompt longer than its context keeps its last tokens; the count is printed).",
    )  # fmt: skip
    p.add_argument("--task", required=True, choices=["humaneval", "mbpp"], help="the benchmark")
    p.add_argument("--split", default="test", choices=["test", "validation", "train", "prompt", "full"],
                   help="MBPP's split by task id (test 11-510, validation 511-600, train 601-974, prompt 1-10)")
    p.add_argument("--samples", default=None, metavar="FILE",
                   help="samples JSONL to score; with --checkpoint, where the generated samples are written "
                   "(default there: <task>_samples.jsonl)")  # fmt: skip
    p.add_argument("--k", type=_ks, default=None, metavar="K[,K...]",
                   help="comma-separated k of pass@k (default: 1, plus 10 and 100 where every task has that many "
                   "samples)")  # fmt: skip
    p.add_argument("--out", default=None, metavar="FILE", help="results JSONL (default: <samples>_results.jsonl beside the samples); "
                   "the summary goes to <out stem>.summary.json")  # fmt: skip
    p.add_argument("--workers", type=integer(1), default=None, help="programs run at once (default: the sandbox's)")
    p.add_argument("--timeout", type=number(0, low_open=True), default=10.0, help="seconds each program may run")
    p.add_argument("--checkpoint", default=None, metavar="DIR",
                   help="generate the samples with this run folder or checkpoint ('book': the book model)")
    p.add_argument("--n", type=integer(1), default=20, help="with --checkpoint: samples per task")
    p.add_argument("--temperature", type=number(0), default=0.8, help="with --checkpoint: sampling temperature")
    p.add_argument("--top-p", type=number(0, 1, low_open=True), default=None,
                   help="with --checkpoint: nucleus sampling (default: off)")
    p.add_argument("--max-new-tokens", type=integer(1), default=256, help="with --checkpoint: token budget per sample")
    p.add_argument("--batch", type=integer(1), default=16, help="with --checkpoint: samples decoded together")
    p.add_argument("--seed", type=integer(0), default=0, help="with --checkpoint: sample j of task i uses seed + i*n + j")
    p.add_argument("--limit", type=integer(1), default=None, help="with --checkpoint: the first N tasks only")
    p.add_argument("--device", default=None, help="with --checkpoint: cpu, cuda or mps (default: the best available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run_evaluate_code)


def run_evaluate_code(args: argparse.Namespace) -> int:
    """`evaluate-code`: (generate and) score the samples, print pass@k, write the results."""
    import math
    from collections import Counter

    from minillm.codeeval import evaluate_samples, load_code_task, read_samples, write_results
    from minillm.errors import ConfigError
    from minillm.sandbox import Limits

    if args.task == "humaneval" and args.split != "test":
        raise ConfigError(f"--split is for MBPP; HumanEval has only its test split (got {args.split!r})")
    tasks = load_code_task(args.task, args.split)
    if args.checkpoint is None:
        if args.samples is None:
            raise ConfigError("give --samples FILE.jsonl to score, or --checkpoint DIR to generate samples first")
        if args.limit is not None:
            raise ConfigError("--limit picks the tasks to generate for; use it with --checkpoint")
        samples = read_samples(args.samples)
    path = Path(args.samples or f"{args.task}_samples.jsonl")
    out = Path(args.out) if args.out else path.with_name(f"{path.stem}_results.jsonl")
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; give the path of a JSONL file")
    _check_writable(out, "the results", "--out")  # now, not after all the runs
    if args.checkpoint is not None:
        _check_writable(path, "the samples", "--samples")
        samples = _generate(args, tasks[: args.limit], path)
        tasks = tasks[: args.limit]
    ks = args.k
    if ks is None:
        fewest = min(Counter(s["task_id"] for s in samples).values())
        ks = [k for k in (1, 10, 100) if k <= fewest]
    limits = Limits(timeout_s=args.timeout, cpu_s=max(1, math.ceil(args.timeout)))
    report = evaluate_samples(tasks, samples, ks, limits=limits, workers=args.workers, progress=not args.no_progress)
    print(report)
    results, summary = write_results(report, out)
    print(f"wrote {results} and {summary}")
    return 0


def _check_writable(path: Path, what: str, option: str) -> None:
    """ConfigError if `path`'s folder cannot take a new file (it is made if missing), before any work is done."""
    import tempfile

    from minillm.errors import ConfigError

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=path.parent).close()
    except OSError as err:
        raise ConfigError(f"cannot write {what} to {path} ({err.strerror or err}); give {option} a writable path") from None


def _generate(args: argparse.Namespace, tasks: list, path: Path) -> list[dict]:
    """The samples a minillm model writes for `tasks`, written to `path` (and a line on prompts cut)."""
    from minillm.codeeval import generate_samples, write_samples
    from minillm.device import resolve_device
    from minillm.pretrained import book_run

    folder = book_run(progress=not args.no_progress)[0] if args.checkpoint == "book" else args.checkpoint
    model, tokenizer = load_model_arg(str(folder), device=resolve_device(args.device or "auto"))
    samples = generate_samples(model, tokenizer, tasks, args.n, temperature=args.temperature, top_p=args.top_p,
                               max_new_tokens=args.max_new_tokens, batch=args.batch, seed=args.seed,
                               progress=not args.no_progress)  # fmt: skip
    cut = {s["task_id"]: s["prompt_tokens_dropped"] for s in samples if s["prompt_tokens_dropped"]}
    if cut:
        print(f"{len(cut)} of {len(tasks)} prompts are longer than the model's context "
              f"({model.config.context_length} tokens): each kept its last tokens "
              f"(dropped {min(cut.values())}-{max(cut.values())} tokens)")  # fmt: skip
    write_samples(samples, path)
    print(f"wrote {len(samples)} samples to {path}")
    return samples
