"""Multiple-choice benchmarks as plain Python objects: HellaSwag, ARC, MMLU, TruthfulQA (chapter 08).

Chapter 08 (`08_evaluation`) scores a model on these tasks with
`minillm.evaluate`. Each loader reads the raw files of the data layer
(`minillm.data.download`), checks every row, and returns a list of
`MCExample`: the question, its answer options, the index of the right one and,
for scoring by log-likelihood, a `context` string and one `continuation` per
option (the text the model is asked to continue, as lm-evaluation-harness
words it):

| task            | context                                   | continuations           | items (shared files) |
|-----------------|-------------------------------------------|-------------------------|----------------------|
| `hellaswag`     | "{activity}: {ctx}"                       | " {ending}" (4)         | 10,042 validation    |
| `arc-easy`      | "Question: {q}\\nAnswer:"                 | " {answer}" (3-5)       | 2,376 test           |
| `arc-challenge` | same                                      | same                    | 1,172 test           |
| `mmlu`          | header + k dev shots + "Question: ..."    | " {answer}" (4)         | 14,042 test          |
| `truthfulqa-mc` | "Q: {q}\\nA:"                             | best vs incorrect (2-13)| 817                  |

A malformed row raises `DataError` (a `ValueError`) naming the file and line, so a corrupted
download never turns silently into a wrong score.
"""

from __future__ import annotations

import csv
import os
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from minillm.data import data_file, jsonl_objects
from minillm.errors import DataError

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclass
class MCExample:
    """One multiple-choice item.

    `choices` are the answer texts and `label` the index of the right one.
    `context` + `continuations[i]` is what log-likelihood scoring feeds the
    model for choice i. `header` and `shots` (solved examples, e.g. MMLU's dev
    questions) go before the question in answer-letter prompts.
    """

    id: str
    question: str
    choices: list[str]
    label: int
    context: str
    continuations: list[str]
    subject: str = ""
    header: str = ""
    shots: list[MCExample] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.choices) > len(LETTERS):
            raise DataError(f"{self.id}: {len(self.choices)} choices; at most {len(LETTERS)} (A-Z) are supported")
        if len(self.choices) < 2 or len(self.continuations) != len(self.choices):
            raise DataError(f"{self.id}: needs >= 2 choices and one continuation per choice, got "
                             f"{len(self.choices)} choices and {len(self.continuations)} continuations")  # fmt: skip
        if not 0 <= self.label < len(self.choices):
            raise DataError(f"{self.id}: label {self.label} is not an index of its {len(self.choices)} choices")


def letter_prompt(example: MCExample, with_shots: bool = True) -> str:
    """The example as an answer-letter prompt; the model's next token should be " A", " B", ...

    ``{header}{shots, each answered}{question}\\nA. ...\\nB. ...\\nAnswer:``
    """
    def block(ex: MCExample) -> str:
        lines = [ex.question.strip()] + [f"{LETTERS[i]}. {c.strip()}" for i, c in enumerate(ex.choices)]
        return "\n".join(lines) + "\nAnswer:"

    shots = "".join(f"{block(s)} {LETTERS[s.label]}\n\n" for s in example.shots) if with_shots else ""
    return f"{example.header}{shots}{block(example)}"


def _fail(path: Path, line: int, message: str) -> DataError:
    return DataError(f"{path}: line {line}: {message}; the file is malformed (re-download it, or fix that row)")


def _csv(path: Path, encoding: str = "utf-8"):
    """(first line number, fields) for each record of a CSV file (records may span lines)."""
    with open(path, newline="", encoding=encoding) as fh:
        reader = csv.reader(fh)
        start = 1
        try:
            for fields in reader:
                yield start, fields
                start = reader.line_num + 1
        except csv.Error as err:
            raise _fail(path, start, f"unreadable CSV ({err})") from None


def _text(path: Path, line: int, value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _fail(path, line, f"{what} must be a non-empty string, got {value!r}")
    return value


def _hellaswag_text(text: str) -> str:
    """lm-evaluation-harness's clean-up of HellaSwag's WikiHow markup ("[title]", "[step]")."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def load_hellaswag(path: str | os.PathLike | None = None, limit: int | None = None) -> list[MCExample]:
    """HellaSwag validation (10,042 items): pick the ending of a short activity description.

    Context ``"{activity_label}: {ctx}"``, continuations ``" {ending}"``, as in
    lm-evaluation-harness. `path`: a file to read instead of the data layer's.
    """
    path = data_file("hellaswag", path, "hellaswag_val.jsonl")
    out = []
    for line, row in jsonl_objects(path):
        endings = row.get("endings")
        if not isinstance(endings, list) or len(endings) != 4:
            raise _fail(path, line, f"'endings' must be a list of 4 strings, got {endings!r}")
        endings = [_text(path, line, e, "each ending") for e in endings]
        label = row.get("label")
        if isinstance(label, str) and label.isdigit():
            label = int(label)
        if not isinstance(label, int) or not 0 <= label < 4:
            raise _fail(path, line, f"'label' must be 0-3, got {label!r}")
        ctx = _text(path, line, row.get("ctx"), "'ctx'")
        activity = row.get("activity_label", "")
        context = _hellaswag_text(f"{activity}: {ctx}" if activity else ctx)
        choices = [_hellaswag_text(e) for e in endings]
        out.append(MCExample(str(row.get("ind", line)), _hellaswag_text(ctx), choices, label, context,
                             [" " + c for c in choices], subject=str(activity)))  # fmt: skip
        if limit is not None and len(out) >= limit:
            break
    return out


def load_arc(subset: str = "ARC-Easy", split: str = "test", path: str | os.PathLike | None = None,
             limit: int | None = None) -> list[MCExample]:  # fmt: skip
    """AI2 Reasoning Challenge, `subset` "ARC-Easy" or "ARC-Challenge", `split` train/validation/test.

    Context ``"Question: {stem}\\nAnswer:"``, continuations ``" {answer}"``.
    Labels may be letters (A-E) or digits (1-5); the answer key is matched to
    them either way. Test sets: 2,376 (Easy) and 1,172 (Challenge) items.
    """
    subsets, splits = ("ARC-Easy", "ARC-Challenge"), {"train": "Train", "validation": "Dev", "test": "Test"}
    if subset not in subsets:
        raise DataError(f"subset must be one of {subsets}, got {subset!r}")
    if split not in splits:
        raise DataError(f"split must be one of {sorted(splits)}, got {split!r}")
    path = data_file("arc", path, f"{subset}/{subset}-{splits[split]}.jsonl")
    out = []
    for line, row in jsonl_objects(path):
        q = row.get("question")
        if not isinstance(q, dict) or not isinstance(q.get("choices"), list) or len(q["choices"]) < 2:
            raise _fail(path, line, "'question' must be an object with 'stem' and a list of >= 2 'choices'")
        stem = _text(path, line, q.get("stem"), "'question.stem'")
        labels, texts = [], []
        for choice in q["choices"]:
            if not isinstance(choice, dict):
                raise _fail(path, line, f"each choice must be an object with 'text' and 'label', got {choice!r}")
            labels.append(str(choice.get("label", "")).strip())
            texts.append(_text(path, line, choice.get("text"), "each choice's 'text'"))
        key = str(row.get("answerKey", "")).strip()
        if key not in labels:
            raise _fail(path, line, f"answerKey {key!r} is not one of the choice labels {labels}")
        out.append(MCExample(str(row.get("id", line)), stem, texts, labels.index(key),
                             f"Question: {stem}\nAnswer:", [" " + t for t in texts]))  # fmt: skip
        if limit is not None and len(out) >= limit:
            break
    return out


def _mmlu_rows(path: Path) -> list[tuple[str, list[str], int]]:
    rows = []
    for line, fields in _csv(path):
        if len(fields) != 6:
            raise _fail(path, line, f"expected 6 columns (question, A, B, C, D, answer), got {len(fields)}")
        answer = fields[5].strip()
        if answer not in ("A", "B", "C", "D"):
            raise _fail(path, line, f"answer must be A, B, C or D, got {answer!r}")
        _text(path, line, fields[0], "the question")
        rows.append((fields[0], fields[1:5], "ABCD".index(answer)))
    return rows


def mmlu_subjects(root: str | os.PathLike | None = None) -> list[str]:
    """The 57 MMLU subject names (from the test file names), sorted."""
    root = data_file("mmlu", root, "")
    return sorted(p.name[: -len("_test.csv")] for p in (root / "test").glob("*_test.csv"))


def load_mmlu(split: str = "test", subjects: list[str] | None = None, k_shot: int = 0,
              root: str | os.PathLike | None = None, limit: int | None = None,
              limit_per_subject: int | None = None) -> list[MCExample]:  # fmt: skip
    """MMLU (57 subjects; 285 dev / 1,531 validation / 14,042 test questions).

    Each prompt starts with "The following are multiple choice questions (with
    answers) about {subject}." and then `k_shot` (0-5) solved questions, the
    first k of the subject's dev split, as in the MMLU paper. Log-likelihood
    context: shots as ``"Question: ...\\nAnswer: {answer}"``, then the question;
    continuations are the answer texts. Letter prompts list A-D instead (see
    `letter_prompt`). `root`: a folder laid out as the data mirror's ``mmlu/``.
    `limit_per_subject` keeps the first n questions of each subject.
    """
    folders = {"dev": "dev", "validation": "val", "test": "test"}
    if split not in folders:
        raise DataError(f"split must be one of {sorted(folders)}, got {split!r}")
    if not 0 <= k_shot <= 5:
        raise DataError(f"k_shot must be 0-5 (the dev split has 5 questions per subject), got {k_shot}")
    root = data_file("mmlu", root, "")
    known = mmlu_subjects(root)
    unknown = sorted(set(subjects or []) - set(known))
    if unknown:
        raise DataError(f"unknown MMLU subjects {unknown}; choose from {known}")
    out = []
    for subject in subjects or known:
        name = subject.replace("_", " ")
        header = f"The following are multiple choice questions (with answers) about {name}.\n\n"
        shots = []
        for i, (q, choices, label) in enumerate(_mmlu_rows(root / "dev" / f"{subject}_dev.csv")[:k_shot]):
            shots.append(MCExample(f"{subject}/dev/{i}", q, choices, label, "", choices, subject))
        primer = "".join(f"Question: {s.question.strip()}\nAnswer: {s.choices[s.label].strip()}\n\n" for s in shots)
        rows = _mmlu_rows(root / folders[split] / f"{subject}_{folders[split]}.csv")
        for i, (q, choices, label) in enumerate(rows[:limit_per_subject]):
            context = f"{header}{primer}Question: {q.strip()}\nAnswer:"
            out.append(MCExample(f"{subject}/{split}/{i}", q, choices, label, context,
                                 [" " + c.strip() for c in choices], subject, header, shots))  # fmt: skip
            if limit is not None and len(out) >= limit:
                return out
    return out


def load_truthfulqa_mc(path: str | os.PathLike | None = None, limit: int | None = None,
                       seed: int = 0) -> list[MCExample]:  # fmt: skip
    """TruthfulQA (817 questions) as multiple choice: the best answer against the incorrect ones.

    Built from the 2021 CSV (like lm-evaluation-harness's MC1, which uses the
    paper's separate MC targets, so scores can differ slightly). Context
    ``"Q: {question}\\nA:"``. The choices are shuffled with a fixed `seed`
    (the file lists the best answer first, which would favour "A" in letter prompts).
    """
    path = data_file("truthfulqa", path, "TruthfulQA.csv")
    rng = random.Random(seed)
    out, columns = [], None
    for line, fields in _csv(path, encoding="utf-8-sig"):
        if columns is None:
            columns = fields
            missing = {"Question", "Best Answer", "Incorrect Answers"} - set(columns)
            if missing:
                raise _fail(path, line, f"header lacks the columns {sorted(missing)}")
            continue
        if len(fields) != len(columns):
            raise _fail(path, line, f"expected {len(columns)} columns, got {len(fields)}")
        row = dict(zip(columns, fields))
        question = _text(path, line, row["Question"], "'Question'")
        best = _text(path, line, row["Best Answer"], "'Best Answer'").strip()
        wrong = [a.strip() for a in row["Incorrect Answers"].split(";") if a.strip()]
        if not wrong:
            raise _fail(path, line, "'Incorrect Answers' is empty")
        choices = [best, *wrong]
        order = list(range(len(choices)))
        rng.shuffle(order)
        choices = [choices[i] for i in order]
        out.append(MCExample(f"truthfulqa/{len(out)}", question, choices, order.index(0), f"Q: {question}\nA:",
                             [" " + c for c in choices], row.get("Category", "")))  # fmt: skip
        if limit is not None and len(out) >= limit:
            break
    return out


TASKS: dict[str, Callable[..., list[MCExample]]] = {
    "hellaswag": load_hellaswag,
    "arc-easy": lambda **kw: load_arc("ARC-Easy", **kw),
    "arc-challenge": lambda **kw: load_arc("ARC-Challenge", **kw),
    "mmlu": load_mmlu,
    "truthfulqa-mc": load_truthfulqa_mc,
}
"""Task name (as the CLI's --tasks spells it) -> loader."""


def load_task(name: str, limit: int | None = None, **options: Any) -> list[MCExample]:
    """The examples of task `name` (a key of `TASKS`); `options` go to its loader (e.g. k_shot=5)."""
    if name not in TASKS:
        raise DataError(f"unknown task {name!r}; choose from {', '.join(TASKS)}")
    return TASKS[name](limit=limit, **options)


def chance(examples: list[MCExample]) -> float:
    """Expected accuracy of guessing uniformly: the mean of 1 / (number of choices)."""
    if not examples:
        raise DataError("no examples")
    return sum(1 / len(e.choices) for e in examples) / len(examples)
