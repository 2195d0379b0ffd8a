"""HumanEval and MBPP: does the code a model writes pass the tests? pass@k, run in a sandbox (appendix D).

A code model is judged the way a programmer is: by running what it wrote.
Each task gives a prompt, the model writes `n` completions, each completion
becomes a program with the task's tests (`program`), and `minillm.sandbox`
runs the programs in separate, limited processes.

* `load_humaneval()`: HumanEval's 164 tasks (Chen et al. 2021): the prompt is
  a function's signature and docstring; a completion is its body.
* `load_mbpp(split)`: MBPP (Austin et al. 2021), split by task id as in its
  paper (prompt 1-10, test 11-510, validation 511-600, train 601-974; or
  "full"). The prompt is the zero-shot one of the bigcode-evaluation-harness
  (after the InCoder paper): the task's text and its first test in a
  docstring, ``'\"\"\"\\n{text}\\n{test_list[0]}\\n\"\"\"\\n'``; a completion is the
  whole solution (imports, helpers, the function). `challenge_test_list` is not used.
* `pass_at_k(n, c, k)`: Chen et al.'s unbiased estimator of the chance that at
  least one of k samples passes, from n samples of which c passed:
  1 - C(n-c, k) / C(n, k), computed as a product that never overflows.
* `read_samples(path)`, `evaluate_samples(tasks, samples, ks)`, `write_results`:
  samples in openai/human-eval's JSONL format (``{"task_id", "completion"}``),
  so the samples of any model can be scored; a `CodeReport` with every
  sample's verdict and pass@k averaged over tasks with its standard error.
* `generate_samples(model, tokenizer, tasks, n)`: a minillm model writes the
  samples, decoded together (`minillm.batching.decode_together`).

Where the code ends: a HumanEval body ends at its first non-blank line back at
column 0 (`minillm.skills.function_body`, the rule of chapter 05); an MBPP
solution at bigcode's stop sequences (`MBPP_STOPS`). `truncate_completion`
applies the rule to any completion. Long prompts: a prompt longer than the
model's context keeps its last `context_length` tokens (as `stream_text` does)
and the window slides as the model writes; each sample records how many prompt
tokens its model never saw (`prompt_tokens_dropped`).
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from minillm.batching import decode_together
from minillm.data import MBPP_TASK_IDS, data_file, jsonl_objects
from minillm.errors import ConfigError, DataError
from minillm.fileio import atomic_write
from minillm.generate import TextDecoder
from minillm.model import GPT
from minillm.sandbox import Limits, run_many
from minillm.skills import function_body
from minillm.tokenizer import ENDOFTEXT, Tokenizer

SUITES = ("humaneval", "mbpp")
MBPP_SPLITS = ("full", *MBPP_TASK_IDS)
#: Where an MBPP solution ends: bigcode-evaluation-harness's stop sequences for MBPP, less "\nclass"
#: (a solution may define a class: the tests of tasks 367 and 927 build trees of the solution's `Node`).
MBPP_STOPS = ("\nassert", '\n"""', "\nprint", "\nif", "\n```")


@dataclass(frozen=True)
class CodeTask:
    """One programming task: the prompt a model continues, its tests, and a reference solution.

    `suite` is "humaneval" or "mbpp". HumanEval: `test` defines `check(candidate)`
    and `entry_point` names the function to check; `reference` is the canonical
    body. MBPP: `test` is the task's asserts, `setup` its test setup code, and
    `reference` the whole reference solution.
    """

    suite: str
    task_id: str
    prompt: str
    test: str
    reference: str
    entry_point: str = ""
    setup: str = ""


def program(task: CodeTask, completion: str) -> str:
    """The program that passes when `completion` solves `task` (exits 0) and fails otherwise.

    HumanEval: prompt + completion + test + ``check(entry_point)`` (as openai/human-eval).
    MBPP: completion + setup code + asserts; the setup code follows the solution
    because the only two tasks that have any (367, 927) build objects of a class the solution defines.
    """
    if task.suite == "humaneval":
        return f"{task.prompt}{completion}\n{task.test}\ncheck({task.entry_point})\n"
    return f"{completion}\n\n{task.setup}\n{task.test}\n"


def truncate_completion(completion: str, suite: str = "humaneval") -> str:
    """`completion` (the text after a task's prompt) cut where its code ends (unchanged if it does not end).

    HumanEval: before the first non-blank line at column 0 (a new top-level
    statement after the function body). MBPP: before the first of `MBPP_STOPS`.
    """
    end = _code_end(completion + "\n", suite)
    return completion if end is None else completion[:end]


def _code_end(completion: str, suite: str) -> int | None:
    """Where the code of `completion` ends (the index of the first character cut), None if it has not ended."""
    if suite == "humaneval":  # every complete line of the completion may end the body
        body, ended = function_body("\n" + completion)
        return len(body) - 1 if ended else None
    if suite != "mbpp":
        raise ConfigError(f"unknown suite {suite!r}; choose from {', '.join(SUITES)}")
    hits = [i for i in (("\n" + completion).find(s) for s in MBPP_STOPS) if i >= 0]
    return min(hits) if hits else None  # a stop at i of "\n" + completion: keep the completion's first i characters


# ---------------------------------------------------------------------------
# Tasks
# ---------------------------------------------------------------------------


def _field(path: Path, line: int, row: dict, key: str, kind: type = str, empty: bool = False) -> Any:
    value = row.get(key)
    if not isinstance(value, kind) or isinstance(value, bool) or (not empty and not value):
        raise DataError(f"{path}: line {line}: {key!r} must be a {'' if empty else 'non-empty '}{kind.__name__}, "
                        f"got {value!r}")  # fmt: skip
    return value


def load_humaneval(path: str | os.PathLike | None = None) -> list[CodeTask]:
    """HumanEval's 164 tasks (`path`: a HumanEval.jsonl(.gz) to read instead of the data layer's)."""
    path = data_file("humaneval", path, "HumanEval.jsonl.gz")
    tasks = []
    for line, row in jsonl_objects(path):
        f = {k: _field(path, line, row, k) for k in ("task_id", "prompt", "entry_point", "canonical_solution", "test")}
        tasks.append(CodeTask("humaneval", f["task_id"], f["prompt"], f["test"], f["canonical_solution"],
                              entry_point=f["entry_point"]))  # fmt: skip
    return tasks


def mbpp_prompt(text: str, first_test: str) -> str:
    """The zero-shot MBPP prompt of the bigcode-evaluation-harness: the task and one test in a docstring."""
    return f'"""\n{text.strip()}\n{first_test.strip()}\n"""\n'


def load_mbpp(split: str = "test", path: str | os.PathLike | None = None) -> list[CodeTask]:
    """MBPP's tasks of `split` ("test": 500 tasks, 11-510; "full": all 974), with ids "MBPP/<task_id>".

    Every reference solution passes its own tests in the sandbox, but MBPP/123's
    takes about 9 s on a 2-core machine: with a timeout under ~15 s it may time out.
    """
    if split not in MBPP_SPLITS:
        raise ConfigError(f"unknown MBPP split {split!r}; choose from {', '.join(MBPP_SPLITS)}")
    low, high = MBPP_TASK_IDS.get(split, (1, 10**9))
    path = data_file("mbpp", path, "mbpp.jsonl")
    tasks = []
    for line, row in jsonl_objects(path):
        number = _field(path, line, row, "task_id", int)
        tests = _field(path, line, row, "test_list", list)
        if not all(isinstance(t, str) and t.strip() for t in tests):
            raise DataError(f"{path}: line {line}: 'test_list' must hold non-empty strings, got {tests!r}")
        text, code = _field(path, line, row, "text"), _field(path, line, row, "code")
        setup = _field(path, line, row, "test_setup_code", empty=True)
        if low <= number <= high:
            tasks.append(CodeTask("mbpp", f"MBPP/{number}", mbpp_prompt(text, tests[0]), "\n".join(tests) + "\n",
                                  code, setup=setup))  # fmt: skip
    return tasks


def load_code_task(name: str, split: str | None = None, path: str | os.PathLike | None = None) -> list[CodeTask]:
    """The tasks of suite `name` ("humaneval", or "mbpp" with `split`, default "test")."""
    if name == "humaneval":
        if split not in (None, "test"):
            raise ConfigError(f"HumanEval has one split, 'test'; got {split!r}")
        return load_humaneval(path)
    if name == "mbpp":
        return load_mbpp(split or "test", path)
    raise ConfigError(f"unknown code task {name!r}; choose from {', '.join(SUITES)}")


# ---------------------------------------------------------------------------
# pass@k
# ---------------------------------------------------------------------------


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased estimate of pass@k from n samples of which c passed: 1 - C(n-c, k) / C(n, k).

    Computed as 1 - prod_{i=n-c+1}^{n} (1 - k / i) (Chen et al. 2021), which
    needs no huge binomial coefficients.
    """
    for name, value in (("n", n), ("c", c), ("k", k)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name} must be an integer, got {value!r}")
    if n < 1 or not 0 <= c <= n:
        raise ConfigError(f"need n >= 1 samples and 0 <= c <= n passed, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ConfigError(f"pass@{k} needs k between 1 and the number of samples n={n}; got k={k}"
                          + (" (draw more samples, or lower k)" if k > n else ""))  # fmt: skip
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


# ---------------------------------------------------------------------------
# Samples and their scores
# ---------------------------------------------------------------------------


def read_samples(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The samples of a JSONL file in openai/human-eval's format: one ``{"task_id", "completion", ...}`` a line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no samples file {path}")
    samples = []
    for line, row in jsonl_objects(path):
        for key in ("task_id", "completion"):
            if key not in row:
                raise DataError(f"{path}: line {line}: no {key!r} field (each line needs 'task_id' and 'completion')")
            if not isinstance(row[key], str):
                raise DataError(f"{path}: line {line}: {key!r} must be a string, got {type(row[key]).__name__}")
        samples.append(row)
    if not samples:
        raise DataError(f"{path} holds no samples")
    return samples


@dataclass(frozen=True)
class SampleResult:
    """The verdict on one sample: its task, its index among that task's samples, and the sandbox's outcome."""

    task_id: str
    completion_id: int
    completion: str
    status: str  # "passed", "failed", "timed out" or "crashed"
    error: str
    seconds: float

    @property
    def passed(self) -> bool:
        """Whether the program ran to its end within its limits."""
        return self.status == "passed"


@dataclass
class CodeReport:
    """Every sample's verdict, per task (n samples, c passed), and pass@k averaged over the tasks that have samples.

    `pass_at[k]` is (mean over tasks, its standard error across tasks: nan for
    one task); `missing` lists the tasks with no samples, which are left out of the mean.
    """

    results: list[SampleResult]
    counts: dict[str, tuple[int, int]]
    pass_at: dict[int, tuple[float, float]]
    missing: list[str]

    def summary(self) -> dict[str, Any]:
        """The numbers as a JSON-ready dict (nan standard errors become null)."""
        statuses = dict(Counter(r.status for r in self.results))
        passed = sum(c for _, c in self.counts.values())
        return {"tasks": len(self.counts), "samples": len(self.results), "passed": passed, "statuses": statuses, "missing": self.missing,
                "pass_at_k": {f"pass@{k}": {"value": v, "stderr": None if math.isnan(e) else e}
                              for k, (v, e) in self.pass_at.items()},
                "per_task": {t: {"n": n, "c": c} for t, (n, c) in self.counts.items()}}  # fmt: skip

    def __str__(self) -> str:
        s = self.summary()
        statuses = ", ".join(f"{v} {k}" for k, v in sorted(s["statuses"].items()))
        lines = [f"{s['tasks']} tasks, {s['samples']} samples: {statuses}"]
        if self.missing:
            shown = ", ".join(self.missing[:5]) + (", ..." if len(self.missing) > 5 else "")
            lines.append(f"{len(self.missing)} tasks have no samples and are left out: {shown}")
        for k, (v, e) in self.pass_at.items():
            lines.append(f"pass@{k:<4} {v:.3f} ± {e:.3f}" if not math.isnan(e) else f"pass@{k:<4} {v:.3f}")
        return "\n".join(lines)


def _group(tasks: Sequence[CodeTask], samples: Sequence[dict[str, Any]]) -> dict[str, list[int]]:
    """{task_id: indices of its samples}, in the order of `tasks`; DataError for samples of unknown tasks."""
    known = {t.task_id: [] for t in tasks}
    unknown = []
    for i, s in enumerate(samples):
        if not isinstance(s, dict) or not all(isinstance(s.get(k), str) for k in ("task_id", "completion")):
            raise DataError(f"sample {i} must be a dict with a str 'task_id' and 'completion', got {s!r:.200}")
        (known[s["task_id"]] if s["task_id"] in known else unknown).append(i)
    if unknown:
        names = list(dict.fromkeys(samples[i]["task_id"] for i in unknown))
        example = next(iter(known), "?")
        raise DataError(f"{len(unknown)} of {len(samples)} samples name tasks not among the {len(known)} "
                        f"being scored: "
                        f"{', '.join(map(repr, names[:5]))}{', ...' if len(names) > 5 else ''} "
                        f"(ids look like {example!r}; is this the right --task and split?)")  # fmt: skip
    return known


def _check_ks(ks: Sequence[int], counts: dict[str, int]) -> list[int]:
    """The distinct ks, sorted; ConfigError for a k < 1 or larger than some task's number of samples."""
    ks = sorted(set(ks))
    if not ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks):
        raise ConfigError(f"k must be positive integers, got {ks}")
    fewest = min(counts, key=counts.get)
    if ks[-1] > counts[fewest]:
        raise ConfigError(f"pass@{ks[-1]} needs at least {ks[-1]} samples of every task, but {fewest} has "
                          f"{counts[fewest]}; lower k or draw more samples")  # fmt: skip
    return ks


def evaluate_samples(tasks: Sequence[CodeTask], samples: Sequence[dict[str, Any]], ks: Sequence[int] = (1,),
                     limits: Limits | None = None, workers: int | None = None,
                     progress: bool = False) -> CodeReport:  # fmt: skip
    """Run every sample's program in the sandbox (`run_many`) and score pass@k for each k.

    A sample whose task is not in `tasks` raises DataError (before anything
    runs); tasks without samples are reported in `missing`, not counted as
    failures; a k larger than some task's number of samples raises ConfigError.
    """
    if not samples:
        raise DataError("no samples to score")
    groups = _group(tasks, samples)
    counts = {t: len(ix) for t, ix in groups.items() if ix}
    ks = _check_ks(ks, counts)
    by_id = {t.task_id: t for t in tasks}
    outcomes = run_many([program(by_id[s["task_id"]], s["completion"]) for s in samples], limits, workers=workers,
                        progress=progress)  # fmt: skip
    results: list[SampleResult | None] = [None] * len(samples)
    for ix in groups.values():
        for j, i in enumerate(ix):
            o = outcomes[i]
            results[i] = SampleResult(samples[i]["task_id"], j, samples[i]["completion"], o.status, o.error, o.seconds)
    passed = {t: sum(results[i].passed for i in ix) for t, ix in groups.items() if ix}
    scores = {}
    for k in ks:
        values = [pass_at_k(counts[t], passed[t], k) for t in counts]
        mean = sum(values) / len(values)
        var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else math.nan
        scores[k] = (mean, math.sqrt(var / len(values)))
    return CodeReport(results, {t: (counts[t], passed[t]) for t in counts}, scores,
                      [t for t, ix in groups.items() if not ix])  # fmt: skip


def write_results(report: CodeReport, path: str | os.PathLike) -> tuple[Path, Path]:
    """Write one JSON line per sample to `path` and the summary to `<path stem>.summary.json`, each atomically.

    Like openai/human-eval's ``<samples>_results.jsonl``: each line is the
    sample's task_id, completion_id, completion, status, passed, error and seconds.
    """
    path = Path(path)
    lines = [json.dumps({"task_id": r.task_id, "completion_id": r.completion_id, "completion": r.completion,
                         "status": r.status, "passed": r.passed, "error": r.error, "seconds": round(r.seconds, 4)})
             for r in report.results]  # fmt: skip
    summary = path.with_name(f"{path.stem}.summary.json")
    atomic_write(path, "".join(line + "\n" for line in lines))
    atomic_write(summary, json.dumps(report.summary(), indent=1) + "\n")
    return path, summary


def write_samples(samples: Sequence[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Write samples as JSON Lines (openai/human-eval's format), atomically."""
    return atomic_write(path, "".join(json.dumps(s) + "\n" for s in samples))


# ---------------------------------------------------------------------------
# Samples from a minillm model
# ---------------------------------------------------------------------------


class _Writer:
    """Follows one sample token by token: its text (`TextDecoder`), and whether its code has ended."""

    def __init__(self, task: CodeTask, tokenizer: Tokenizer, stop_ids: frozenset[int]) -> None:
        self.task, self.head, self.tokens = task, task.prompt.rstrip(), 0
        self.decoder, self.text = TextDecoder(tokenizer, (), stop_ids), ""

    def completion(self) -> str:
        """The text written, as a completion of the task's whole prompt (with its trailing newline)."""
        written = self.head + self.text
        return written[len(self.task.prompt) :] if written.startswith(self.task.prompt) else self.text

    def push(self, token: int) -> bool:
        """Take the next token; True once the code has ended (`truncate_completion`'s rule) or the text stopped."""
        self.text, self.tokens = self.text + self.decoder.push(token), self.tokens + 1
        return self.decoder.stopped or ("\n" in self.text and _code_end(self.completion(), self.task.suite) is not None)

    def finish(self) -> str:
        """The completion, cut where its code ends."""
        self.text += self.decoder.finish()
        return truncate_completion(self.completion(), self.task.suite)


def generate_samples(model: GPT, tokenizer: Tokenizer, tasks: Sequence[CodeTask], n: int = 20, *,
                     temperature: float = 0.8, max_new_tokens: int = 256, top_k: int | None = None,
                     top_p: float | None = None, batch: int = 16, seed: int = 0,
                     progress: bool = False) -> list[dict[str, Any]]:  # fmt: skip
    """`n` samples per task written by `model`, sample j of task i drawn with seed ``seed + i * n + j``.

    The model continues each prompt without its trailing newline (a BPE learns
    a newline and the next line's indentation as one token, as chapter 05's
    `function_prompts` explain) until the code ends or `max_new_tokens` run out;
    `batch` samples are decoded together. A prompt longer than the context
    keeps its last `context_length` tokens. Each sample: ``task_id``,
    ``completion`` (after the task's prompt, cut by `truncate_completion`),
    ``prompt_tokens`` and ``prompt_tokens_dropped``.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"n must be a positive number of samples per task, got {n!r}")
    ctx = model.config.context_length
    end = tokenizer.special_tokens.get(ENDOFTEXT)
    stop_ids = frozenset() if end is None else frozenset({end})
    ids = [tokenizer.encode_ordinary(t.prompt.rstrip()) for t in tasks]
    for t, i in zip(tasks, ids):
        if not i:
            raise DataError(f"the prompt of {t.task_id} encodes to no tokens")
    jobs = [(i, j) for i in range(len(tasks)) for j in range(n)]
    writers = [_Writer(tasks[i], tokenizer, stop_ids) for i, _ in jobs]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(jobs), desc="samples", unit="sample")

    def on_token(s: int, token: int) -> bool:
        done = writers[s].push(token)
        if bar is not None and (done or token in stop_ids or writers[s].tokens >= max_new_tokens):
            bar.update(1)
        return done

    try:
        decode_together(model, [ids[i][-ctx:] for i, _ in jobs], max_new_tokens,
                        seeds=[seed + s for s in range(len(jobs))], temperature=temperature, top_k=top_k, top_p=top_p, stop_ids=stop_ids, rows=batch,
                        on_token=on_token)  # fmt: skip
    finally:
        if bar is not None:
            bar.close()
    return [{"task_id": tasks[i].task_id, "completion": w.finish(), "prompt_tokens": len(ids[i]),
             "prompt_tokens_dropped": max(0, len(ids[i]) - ctx)} for (i, _), w in zip(jobs, writers)]


__all__ = [
    "MBPP_STOPS",
    "CodeReport",
    "CodeTask",
    "SampleResult",
    "evaluate_samples",
    "generate_samples",
    "load_code_task",
    "load_humaneval",
    "load_mbpp",
    "mbpp_prompt",
    "pass_at_k",
    "program",
    "read_samples",
    "truncate_completion",
    "write_results",
    "write_samples",
]
