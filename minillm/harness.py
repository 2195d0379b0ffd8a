"""Running benchmark tasks and reporting them (chapter 08).

Chapter 08 (`08_evaluation`) uses `evaluate_tasks` to score a model on the
tasks of `minillm.tasks` with the scorers of `minillm.evaluate`, and
`format_table` to print accuracies with binomial standard errors next to each
task's chance accuracy. The command `python -m minillm evaluate`
(`minillm.cli.evaluate`) runs them on a checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from minillm.errors import ConfigError
from minillm.evaluate import score_letters, score_multiple_choice
from minillm.tasks import load_task
from minillm.tokenizer import Tokenizer

# ---------------------------------------------------------------------------
# Running tasks and reporting
# ---------------------------------------------------------------------------


def evaluate_tasks(model: torch.nn.Module, tokenizer: Tokenizer, tasks: Sequence[str], limit: int | None = None,
                   methods: Sequence[str] = ("loglik",), batch_size: int = 16, k_shot: int = 0,
                   progress: bool = True) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Run tasks of `minillm.tasks.TASKS` and return their metrics, keyed "task" or "task/letter".

    `limit`: the first N examples of each task (MMLU: the first N per subject,
    so all subjects are represented). `methods`: "loglik" and/or "letter".
    `k_shot`: MMLU's number of dev-set examples in each prompt. MMLU results add
    ``acc_macro`` (mean over subjects) and ``subjects`` (per-subject accuracy).
    """
    unknown = set(methods) - {"loglik", "letter"}
    if unknown:
        raise ConfigError(f"unknown methods {sorted(unknown)}; use 'loglik' and/or 'letter'")
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
