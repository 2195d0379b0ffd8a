"""Running benchmark tasks and reporting them; `python -m minillm evaluate` (chapter 08).

Chapter 08 (`08_evaluation`) uses `evaluate_tasks` to score a model on the
tasks of `minillm.tasks` with the scorers of `minillm.evaluate`, and
`format_table` to print accuracies with binomial standard errors next to each
task's chance accuracy. `add_evaluate_command` adds the `evaluate` command to
the command line; `load_checkpoint` reads what it evaluates.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from minillm.evaluate import score_letters, score_multiple_choice

# ---------------------------------------------------------------------------
# Running tasks and reporting
# ---------------------------------------------------------------------------


def evaluate_tasks(model: torch.nn.Module, tokenizer: Any, tasks: Sequence[str], limit: int | None = None,
                   methods: Sequence[str] = ("loglik",), batch_size: int = 16, k_shot: int = 0,
                   progress: bool = True) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Run tasks of `minillm.tasks.TASKS` and return their metrics, keyed "task" or "task/letter".

    `limit`: the first N examples of each task (MMLU: the first N per subject,
    so all subjects are represented). `methods`: "loglik" and/or "letter".
    `k_shot`: MMLU's number of dev-set examples in each prompt. MMLU results add
    ``acc_macro`` (mean over subjects) and ``subjects`` (per-subject accuracy).
    """
    from minillm.tasks import load_task

    unknown = set(methods) - {"loglik", "letter"}
    if unknown:
        raise ValueError(f"unknown methods {sorted(unknown)}; use 'loglik' and/or 'letter'")
    report: dict[str, dict[str, Any]] = {}
    for task in tasks:
        options = {"k_shot": k_shot, "limit_per_subject": limit} if task == "mmlu" else {"limit": limit}
        examples = load_task(task, **options)
        for method in methods:
            scorer = score_multiple_choice if method == "loglik" else score_letters
            result = scorer(model, tokenizer, examples, batch_size=batch_size, task=task, progress=progress)
            metrics: dict[str, Any] = result.metrics()
            if task == "mmlu":
                metrics["acc_macro"] = result.macro_micro()[0]
                metrics["subjects"] = {s: a for s, (a, _) in result.by_subject().items()}
            report[task if method == "loglik" else f"{task}/letter"] = metrics
    return report


def format_table(report: dict[str, dict[str, Any]]) -> str:
    """The report of `evaluate_tasks` as an aligned text table (accuracy ± standard error)."""
    lines = [f"{'task':<22} {'n':>6} {'metric':<10} {'value':>7}   {'stderr':>7} {'chance':>7}"]
    for task, m in report.items():
        for metric in ("acc", "acc_norm", "acc_token", "acc_macro"):
            if metric in m:
                err = f"± {m[metric + '_stderr']:.4f}" if metric + "_stderr" in m else " " * 8
                lines.append(f"{task:<22} {m['n']:>6} {metric:<10} {m[metric]:>7.4f} {err:>9} {m['chance']:>7.4f}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# Command line: python -m minillm evaluate
# ---------------------------------------------------------------------------


def load_checkpoint(path: str, device: str | None = None) -> tuple[torch.nn.Module, Any]:
    """(model, tokenizer) from a minillm checkpoint or run folder, or a Hugging Face GPT-2 folder.

    A minillm checkpoint holds config.json, model.safetensors and
    tokenizer.json; a run folder holds checkpoints/latest. A folder whose
    config.json has ``"model_type": "gpt2"`` loads with `GPT.from_pretrained`
    and GPT-2's tokenizer.
    """
    import json
    from pathlib import Path

    from minillm.model import GPT
    from minillm.tokenizer import BPETokenizer, load_tokenizer

    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory; pass a checkpoint or run folder")
    config = root / "config.json"
    if config.is_file() and "model_type" in json.loads(config.read_text()):
        model = GPT.from_pretrained(root, device=device)
        if model.config.vocab_size != 50257:
            raise ValueError(f"{root} is not a GPT-2 vocabulary model; only GPT-2 tokenizers are known here")
        return model.eval(), BPETokenizer.from_gpt2()
    if (root / "model.safetensors").is_file() and (root / "tokenizer.json").is_file():
        return GPT.load(root, device=device).eval(), load_tokenizer(root / "tokenizer.json")
    from minillm.checkpoint import load_model  # a run folder: its latest checkpoint

    return load_model(root, device=device)


def _evaluate_command(args: Any) -> int:
    import json
    from pathlib import Path

    from minillm.fileio import atomic_write
    from minillm.tasks import TASKS

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        raise ValueError(f"unknown tasks {unknown}; --tasks takes a comma-separated list of {', '.join(TASKS)}")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be a positive number of examples, got {args.limit}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer = load_checkpoint(args.checkpoint, device=device)
    methods = ("loglik", "letter") if args.method == "both" else (args.method,)
    report = evaluate_tasks(model, tokenizer, tasks, limit=args.limit, methods=methods,
                            batch_size=args.batch_size, k_shot=args.k_shot, progress=not args.no_progress)  # fmt: skip
    print(format_table(report))
    out = Path(args.out)
    meta = {"checkpoint": str(args.checkpoint), "limit": args.limit, "k_shot": args.k_shot, "device": device}
    atomic_write(out, json.dumps({"settings": meta, "results": report}, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


def add_evaluate_command(commands: Any) -> None:
    """Add `evaluate` to an argparse subparsers object (`python -m minillm evaluate --help`)."""
    p = commands.add_parser(
        "evaluate",
        help="score a checkpoint on multiple-choice benchmarks (HellaSwag, ARC, MMLU, TruthfulQA)",
        description="Score a minillm checkpoint (or a Hugging Face GPT-2 folder) on multiple-choice "
        "benchmarks by log-likelihood (acc, acc_norm per byte, acc_token per token) and/or by "
        "answer-letter prompts; print a table with binomial standard errors and chance "
        "accuracies, and write the results as JSON.",
    )
    p.add_argument("--checkpoint", required=True, help="checkpoint folder, run folder, or HF GPT-2 folder")
    p.add_argument("--tasks", default="hellaswag,arc-easy,arc-challenge,mmlu,truthfulqa-mc",
                   help="comma-separated tasks (default: all five)")  # fmt: skip
    p.add_argument("--limit", type=int, default=None, help="first N examples per task (MMLU: per subject)")
    p.add_argument("--method", default="loglik", choices=["loglik", "letter", "both"],
                   help="log-likelihood of answers, answer letters, or both (default loglik)")  # fmt: skip
    p.add_argument("--k-shot", type=int, default=0, help="MMLU: solved dev examples in each prompt (0-5)")
    p.add_argument("--batch-size", type=int, default=16, help="sequences per forward pass (default 16)")
    p.add_argument("--device", default=None, help="cpu, cuda, mps (default: cuda if available)")
    p.add_argument("--out", default="evaluation.json", help="JSON results file (default evaluation.json)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_evaluate_command)
