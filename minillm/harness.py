"""Running benchmark tasks and reporting them (chapter 08).

Chapter 08 (`08_evaluation`) uses `evaluate_tasks` to score a model on the
tasks of `minillm.tasks` with the scorers of `minillm.evaluate`, and
`format_table` to print accuracies with binomial standard errors next to each
task's chance accuracy. The command `python -m minillm evaluate`
(`minillm.cli.evaluate`) runs them on a checkpoint, saving each task's result
as soon as it is done (`on_result`).

Examples longer than the model's context are cut from the left or skipped
(the policy is in `minillm.evaluate`); each result counts them (``truncated``,
``skipped``), its accuracies are over the ``n`` scored examples, and the table
shows the counts and a note for each task they touched.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from minillm.errors import ConfigError
from minillm.evaluate import score_letters, score_multiple_choice
from minillm.tasks import TASKS, load_task
from minillm.tokenizer import Tokenizer

METRICS = ("acc", "acc_norm", "acc_token", "acc_macro")
"""The accuracies `format_table` shows, in this order, where a result has them."""


def check_settings(tasks: Sequence[str], limit: int | None = None, methods: Sequence[str] = ("loglik",),
                   batch_size: int = 16, k_shot: int = 0) -> None:  # fmt: skip
    """Raise `ConfigError` for settings `evaluate_tasks` cannot run, before any work is done."""
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        raise ConfigError(f"unknown tasks {unknown}; choose a list of {', '.join(TASKS)}")
    bad_methods = set(methods) - {"loglik", "letter"}
    if bad_methods or not methods:
        raise ConfigError(f"unknown methods {sorted(bad_methods)}; use 'loglik' and/or 'letter'")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"limit must be None (every example) or a positive number of examples, got {limit!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive number of sequences, got {batch_size!r}")
    if not isinstance(k_shot, int) or not 0 <= k_shot <= 5:
        raise ConfigError(f"k_shot must be 0-5 (MMLU's dev split has 5 solved questions per subject), got {k_shot!r}")


def evaluate_tasks(model: torch.nn.Module, tokenizer: Tokenizer, tasks: Sequence[str], limit: int | None = None,
                   methods: Sequence[str] = ("loglik",), batch_size: int = 16, k_shot: int = 0,
                   progress: bool = True, on_result: Callable[[str, dict[str, Any]], None] | None = None,
                   ) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Run tasks of `minillm.tasks.TASKS` and return their metrics, keyed "task" or "task/letter".

    `limit`: the first N examples of each task (MMLU: the first N per subject,
    so all subjects are represented). `methods`: "loglik" and/or "letter".
    `k_shot`: MMLU's number of dev-set examples in each prompt. MMLU results add
    ``acc_macro`` (mean over subjects) and ``subjects`` (per-subject accuracy).
    Every result has ``n`` (examples scored), ``truncated`` and ``skipped``
    (see `minillm.evaluate.MCResult.metrics`). `on_result(key, metrics)` is
    called as each result is done (e.g. to save it before the next task starts).
    """
    check_settings(tasks, limit, methods, batch_size, k_shot)
    report: dict[str, dict[str, Any]] = {}
    for task in tasks:
        options = {"k_shot": k_shot, "limit_per_subject": limit} if task == "mmlu" else {"limit": limit}
        examples = load_task(task, **options)
        for method in methods:
            scorer = score_multiple_choice if method == "loglik" else score_letters
            result = scorer(model, tokenizer, examples, batch_size=batch_size, task=task, progress=progress)
            metrics: dict[str, Any] = result.metrics()
            if task == "mmlu":
                metrics["acc_macro"] = result.macro_micro()[0] if result.examples else None
                metrics["subjects"] = {s: a for s, (a, _) in result.by_subject().items()}
            key = task if method == "loglik" else f"{task}/letter"
            report[key] = metrics
            if on_result is not None:
                on_result(key, metrics)
    return report


def _number(value: float | None, width: int) -> str:
    return f"{'n/a':>{width}}" if value is None else f"{value:>{width}.4f}"


def format_table(report: dict[str, dict[str, Any]]) -> str:
    """The report of `evaluate_tasks` as an aligned text table (accuracy ± standard error).

    ``n`` is the number of examples scored (the accuracies are over them),
    ``trunc`` and ``skip`` the examples cut from the left to fit the context
    and those skipped; a note under the table explains each task they touched.
    """
    lines = [f"{'task':<22} {'n':>6} {'trunc':>6} {'skip':>6} {'metric':<10} {'value':>7}   {'stderr':>7} "
             f"{'chance':>7}"]  # fmt: skip
    notes = []
    for task, m in report.items():
        counts = f"{m['n']:>6} {m.get('truncated', 0):>6} {m.get('skipped', 0):>6}"
        for metric in METRICS:
            if metric in m:
                stderr = m.get(metric + "_stderr")
                err = f"± {stderr:.4f}" if stderr is not None else " " * 8
                lines.append(f"{task:<22} {counts} {metric:<10} {_number(m[metric], 7)} {err:>9} "
                             f"{_number(m['chance'], 7)}")  # fmt: skip
        if m.get("note"):
            notes.append(f"  {task}: {m['note']}")
    if notes:
        lines += ["", "notes (n: examples scored; accuracies are over them):", *notes]
    return "\n".join(lines)
