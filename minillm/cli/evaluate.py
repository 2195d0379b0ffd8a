"""`evaluate` (multiple-choice benchmarks) and `skills` (what a model can do), commands of `python -m minillm`.

    python -m minillm evaluate --checkpoint runs/base --tasks hellaswag,arc-easy --limit 200
    python -m minillm skills --checkpoint book --untrained            # the book model (chapters 05, 08)
    python -m minillm skills --checkpoint book --untrained --task next-line     # chapter 08's next line
    python -m minillm skills --checkpoint book-chat --task instructions         # chapter 07's exact match

A thin layer over `minillm.harness` (`evaluate_tasks`, `format_table`), which
runs the tasks of `minillm.tasks` with the scorers of `minillm.evaluate`.
The JSON file (``settings``, ``complete``, ``results``) is rewritten atomically
as each task finishes; Ctrl-C prints what finished and where, and exits 130.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

from minillm.cli.common import add_command, load_model_arg

ALL_TASKS = "hellaswag,arc-easy,arc-challenge,mmlu,truthfulqa-mc"


@contextlib.contextmanager
def _sigint_held() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT) back until the block ends, where the platform can (POSIX, main thread)."""
    can = hasattr(signal, "pthread_sigmask") and threading.current_thread() is threading.main_thread()
    if can:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        if can:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # a held Ctrl-C is raised here


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add `evaluate` to the subcommands of `python -m minillm`."""
    p = add_command(
        commands, "evaluate",
        help="score a checkpoint on multiple-choice benchmarks (HellaSwag, ARC, MMLU, TruthfulQA)",
        description="Score a minillm checkpoint (or a Hugging Face GPT-2 folder) on multiple-choice "
        "benchmarks by log-likelihood (acc, acc_norm per byte, acc_token per token) and/or by "
        "answer-letter prompts; print a table with binomial standard errors and chance "
        "accuracies, and write the results as JSON, saved after each task (Ctrl-C keeps the finished ones). "
        "An example longer than the model's context has its context cut from the left; one whose answer "
        "alone does not fit is skipped; the table and the JSON count both per task.",
    )  # fmt: skip
    p.add_argument("--checkpoint", required=True, help="run folder, checkpoint folder, or Hugging Face GPT-2 folder")
    p.add_argument("--tasks", default=ALL_TASKS, help=f"comma-separated tasks (default: all five, {ALL_TASKS})")
    p.add_argument("--limit", type=int, default=None, help="first N examples per task (MMLU: per subject)")
    p.add_argument("--method", default="loglik", choices=["loglik", "letter", "both"],
                   help="log-likelihood of the answers, answer letters, or both")  # fmt: skip
    p.add_argument("--k-shot", type=int, default=0, help="MMLU: solved dev examples in each prompt (0-5)")
    p.add_argument("--batch-size", type=int, default=16, help="sequences per forward pass")
    p.add_argument("--device", default=None, help="cpu, cuda or mps (default: the best available)")
    p.add_argument("--out", default="evaluation.json", help="JSON results file, rewritten as each task finishes")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run_evaluate)

    p = add_command(
        commands, "skills",
        help="measure what a code model can do: functions it finishes in valid Python, the next line, instructions",
        description="--task parse (chapter 05): give the model the header and docstring of top-level functions "
        "from the held-out files of the book's curated corpus, let it write each body (temperature 0.4, top-k 50, "
        "seed i for prompt i) until the function ends, and count the bodies that Python parses. --task next-line "
        "(chapter 08): which of four lines of a held-out file comes next, by log-likelihood and by mutual "
        "information. --task instructions (chapter 07): greedy exact match on held-out list instructions in the "
        "chat template (a chat model, e.g. --checkpoint book-chat; with it, the book model with the chat markers "
        "added and untuned is scored first). Prints each rate with its standard error; --untrained also scores a "
        "randomly initialized model of the same shape (the run's step-0 weights for 'book').",
    )  # fmt: skip
    p.add_argument("--checkpoint", required=True,
                   help="run folder or checkpoint, 'book' for the book model or 'book-chat' for chapter 07's chat "
                   "model (each trained first if not cached)")
    p.add_argument("--task", choices=("parse", "next-line", "instructions"), default="parse",
                   help="what to measure (default parse)")
    p.add_argument("--prompts", type=int, default=None,
                   help="functions, questions or instructions to score (default 60, 200, 200: as the chapters)")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="token budget per function body (default: the model's context length, as chapter 05)")
    p.add_argument("--untrained", action="store_true", help="also score an untrained model of the same config")
    p.set_defaults(func=run_skills)


def run_evaluate(args: argparse.Namespace) -> int:
    """`evaluate`: print the results table and write the JSON file, one finished task at a time.

    The JSON file is rewritten (atomically) as each task finishes, with
    ``"complete": false`` until the last one, so a crash or Ctrl-C keeps the
    finished tasks; Ctrl-C prints what was done and where, and returns 130.
    """
    import sys

    from minillm.device import resolve_device
    from minillm.errors import ConfigError
    from minillm.fileio import atomic_write
    from minillm.harness import evaluate_tasks, format_table
    from minillm.tasks import TASKS

    tasks = list(dict.fromkeys(t.strip() for t in args.tasks.split(",") if t.strip()))
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        raise ConfigError(f"unknown tasks {unknown}; --tasks takes a comma-separated list of {', '.join(TASKS)}")
    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit must be a positive number of examples, got {args.limit}")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be a positive number of sequences, got {args.batch_size}")
    if not 0 <= args.k_shot <= 5:
        raise ConfigError(f"--k-shot must be 0-5 (MMLU has 5 solved dev questions per subject), got {args.k_shot}")
    out = Path(args.out)
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; give the path of a JSON file")
    device = resolve_device(args.device or "auto")
    model, tokenizer = load_model_arg(args.checkpoint, device=device)
    methods = ("loglik", "letter") if args.method == "both" else (args.method,)
    meta = {"checkpoint": str(args.checkpoint), "tasks": tasks, "method": args.method, "limit": args.limit,
            "k_shot": args.k_shot, "context_length": model.config.context_length, "device": str(device)}  # fmt: skip
    report: dict = {}

    def save(key: str, metrics: dict) -> None:
        results = {**report, key: metrics}
        done = len(results) == len(tasks) * len(methods)
        with _sigint_held():  # the file and `report` change together: the summary after Ctrl-C says what it holds
            atomic_write(out, json.dumps({"settings": meta, "complete": done, "results": results}, indent=1) + "\n")
            report[key] = metrics

    try:
        evaluate_tasks(model, tokenizer, tasks, limit=args.limit, methods=methods, batch_size=args.batch_size,
                       k_shot=args.k_shot, progress=not args.no_progress, on_result=save)  # fmt: skip
    except KeyboardInterrupt:
        if getattr(args, "debug", False):
            raise
        if report:
            print(format_table(report))
        keys = {t: [t if m == "loglik" else f"{t}/letter" for m in methods] for t in tasks}
        finished = [t for t in tasks if all(k in report for k in keys[t])]
        left = [t for t in tasks if t not in finished]
        kept = f"their results are in {out}" if report else f"nothing was written to {out}"
        print(f"\ninterrupted: {len(finished)} of {len(tasks)} tasks finished ({', '.join(finished) or 'none'}); "
              f"{kept}; not finished: {', '.join(left)}", file=sys.stderr)  # fmt: skip
        return 130
    print(format_table(report))
    print(f"wrote {out}")
    return 0


def run_skills(args: argparse.Namespace) -> int:
    """`skills`: chapter 05's parse rate, chapter 08's next line or chapter 07's instructions, for a model (and a twin)."""
    import torch

    from minillm.corpus import curated_stdlib
    from minillm.errors import ConfigError
    from minillm.model import GPT
    from minillm.pretrained import book_chat_run, book_config, book_run
    from minillm.skills import function_prompts, next_line_accuracy, next_line_questions, parse_rate, write_functions

    n = args.prompts if args.prompts is not None else {"parse": 60, "next-line": 200, "instructions": 200}[args.task]
    if n < 1 or (args.max_new_tokens is not None and args.max_new_tokens < 1):
        raise ConfigError(f"--prompts and --max-new-tokens must be positive, got {n} and {args.max_new_tokens}")
    if args.task == "instructions":
        return _instructions(args, n)
    if args.checkpoint == "book":
        folder = book_run(progress=True)[0]
    elif args.checkpoint == "book-chat":
        folder = book_chat_run()[0]
    else:
        folder = args.checkpoint
    model, tokenizer = load_model_arg(str(folder))
    models = {"model": model}
    if args.untrained:
        torch.manual_seed(book_config().seed if args.checkpoint == "book" else 0)  # "book": the run's step-0 weights
        models = {"untrained": GPT(model.config).eval(), **models}
    corpus = curated_stdlib()
    if args.task == "next-line":
        questions = next_line_questions(corpus.validation, corpus.paths["validation"], n)
        for name, m in models.items():
            r = next_line_accuracy(m, tokenizer, questions)
            print(f"{name:<10} next line (n={r['n']}, chance {r['chance']:.2f}): " + ", ".join(
                f"{k} {r[k]:.3f} ± {r[k + '_stderr']:.3f}" for k in ("acc", "acc_norm", "acc_mutual_info")))
        return 0
    prompts = function_prompts(corpus.validation, limit=n)
    budget = args.max_new_tokens or model.config.context_length
    for name, m in models.items():
        attempts = write_functions(m, tokenizer, prompts, budget)
        ended = sum(a.ended for a in attempts) / len(attempts)
        print(f"{name:<10} parses {parse_rate(attempts)}; ended {ended:.2f}")
    return 0


def _instructions(args: argparse.Namespace, n: int) -> int:
    """`skills --task instructions`: chapter 07's exact match on n held-out list instructions (chat template)."""
    import torch

    from minillm.errors import ConfigError
    from minillm.instruct import add_special_tokens, resize_vocab
    from minillm.pretrained import book_chat_rows, book_chat_run, book_run
    from minillm.skills import exact_match
    from minillm.synthetic import list_tasks, prompt_key

    models = {}
    if args.checkpoint in ("book", "book-chat"):
        base, tokenizer = load_model_arg(str(book_run(progress=True)[0]))
        chat_tokenizer = add_special_tokens(tokenizer)
        models["untuned"] = (resize_vocab(base, chat_tokenizer.vocab_size).eval(), chat_tokenizer)
        models["chat"] = load_model_arg(str(book_chat_run()[0]))
    else:
        models["model"] = load_model_arg(args.checkpoint)
        if "<|assistant|>" not in models["model"][1].special_tokens:
            raise ConfigError(f"{args.checkpoint} has no chat template markers: --task instructions needs a chat "
                              "model (e.g. --checkpoint book-chat)")  # fmt: skip
    held_out = list_tasks(n, seed=1, exclude={prompt_key(r) for r in book_chat_rows()})  # as chapter 07
    torch.set_num_threads(1)  # token-by-token decoding is latency-bound (chapter 07 scores on one thread too)
    for name, (m, tok) in models.items():
        budget = args.max_new_tokens or min(64, max(len(tok.encode_ordinary(r["output"])) for r in held_out) + 1)
        rate, _ = exact_match(m, tok, held_out, "chat", max_new_tokens=budget)
        print(f"{name:<10} exact match {rate} (greedy, up to {budget} new tokens)")
    return 0
