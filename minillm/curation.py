"""Data curation: turn raw text into a training set you would trust, and say what was removed and why.

Chapter 01 (data) teaches this module. The steps, in pipeline order:

1. :func:`~minillm.quality.normalize` Unicode NFC, control characters, HTML markup, whitespace.
2. :func:`~minillm.quality.quality_failures` heuristic rules in the spirit of Gopher (Rae et
   al., 2021) and C4 (Raffel et al., 2020); each rule is small, configurable
   in :class:`QualityConfig` and names itself when a document fails it.
   Optionally :class:`CharNGramLM` scores text and drops high perplexity.
3. exact deduplication on :func:`~minillm.dedup.exact_key`, a hash of the normalized text;
4. near-duplicate removal with MinHash and LSH (:mod:`minillm.dedup`);
5. :class:`~minillm.dedup.Decontaminator`: documents sharing an n-gram (13 words by default)
   with an evaluation set (HellaSwag, ARC, MMLU) are removed;
6. privacy redaction with :func:`minillm.pii.redact_pii`.

:func:`curate` streams a ``datasets.Dataset`` through the steps with
``map``/``filter`` (``num_proc`` workers) and returns the clean set and a
:class:`CurationReport` (documents and bytes in/out per step, reasons for
removal). The command ``python -m minillm curate`` wraps it.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import regex

from minillm.data import datasets_progress
from minillm.dedup import Decontaminator, MinHasher, cluster_signatures, exact_key
from minillm.errors import DataError
from minillm.pii import redact_pii
from minillm.quality import (CharNGramLM, CodeQualityConfig, NormalizeConfig, QualityConfig, code_quality_failures,
                             normalize, quality_failures)

# ---------------------------------------------------------------------------
# The pipeline
# ---------------------------------------------------------------------------


@dataclass
class CurationConfig:
    """Which steps :func:`curate` runs, and how. ``None`` (or False/empty) switches a step off."""

    normalize: NormalizeConfig | None = field(default_factory=NormalizeConfig)
    quality: QualityConfig | CodeQualityConfig | None = field(default_factory=QualityConfig)  # prose or code rules
    perplexity_model: CharNGramLM | None = None
    max_perplexity: float = 1e3
    exact_dedup: bool = True
    near_dedup_threshold: float | None = 0.8
    num_perm: int = 128
    shingle_size: int = 5
    decontaminate: Decontaminator | None = None
    redact_pii: bool = True
    num_proc: int | None = None
    seed: int = 0


@dataclass
class StepReport:
    """What one step did: documents and UTF-8 bytes in and out, removals by reason."""

    step: str
    docs_in: int
    docs_out: int
    bytes_in: int
    bytes_out: int
    removed: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[int]] = field(default_factory=dict)  # reason -> up to 5 original ids
    seconds: float = 0.0


@dataclass
class CurationReport:
    """Per-step reports of one :func:`curate` run, in order."""

    steps: list[StepReport]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: ``{"steps": [...], "docs_in", "docs_out", "bytes_in", "bytes_out"}``."""
        first, last = self.steps[0], self.steps[-1]
        return {"docs_in": first.docs_in, "docs_out": last.docs_out, "bytes_in": first.bytes_in,
                "bytes_out": last.bytes_out, "steps": [asdict(s) for s in self.steps]}

    def table(self) -> str:
        """A plain-text table of the steps (no timings, so it is reproducible)."""
        rows = [f"{'step':<16}{'docs in':>9}{'docs out':>9}{'kB in':>10}{'kB out':>10}  removed by reason"]
        for s in self.steps:
            why = ", ".join(f"{k} {v}" for k, v in sorted(s.removed.items(), key=lambda kv: -kv[1]))
            rows.append(f"{s.step:<16}{s.docs_in:>9}{s.docs_out:>9}{s.bytes_in / 1e3:>10.1f}"
                        f"{s.bytes_out / 1e3:>10.1f}  {why}")
        return "\n".join(rows)


def _nbytes(ds) -> int:
    return int(sum(ds["bytes"])) if len(ds) else 0


def _nothing_left(ds, name: str, steps: list[StepReport]) -> bool:
    """Report a step that has no documents to work on (an earlier step removed them all)."""
    if len(ds):
        return False
    steps.append(StepReport(name, 0, 0, 0, 0))
    return True


def _drop(ds, name: str, num_proc: int | None, reason_of: Callable[[str], str], steps: list[StepReport]):
    """Run a filtering step: compute a reason per row ("" keeps it), filter, and report."""
    if _nothing_left(ds, name, steps):
        return ds
    start, docs_in, bytes_in = time.perf_counter(), len(ds), _nbytes(ds)
    ds = ds.map(lambda r: {"_why": reason_of(r["text"])}, num_proc=num_proc, desc=name)
    removed: Counter[str] = Counter()
    examples: dict[str, list[int]] = {}
    for i, why in zip(ds["id"], ds["_why"]):
        if why:
            removed[why] += 1
            if removed[why] <= 5:
                examples.setdefault(why, []).append(i)
    ds = ds.filter(lambda r: not r["_why"], num_proc=num_proc, desc=name).remove_columns("_why")
    steps.append(StepReport(name, docs_in, len(ds), bytes_in, _nbytes(ds), dict(removed), examples,
                            time.perf_counter() - start))
    return ds


def _transform(ds, name: str, num_proc: int | None, fn: Callable[[str], str], steps: list[StepReport]):
    """Run a rewriting step (documents stay, bytes change) and report it."""
    if _nothing_left(ds, name, steps):
        return ds
    start, bytes_in = time.perf_counter(), _nbytes(ds)
    ds = ds.map(lambda r: {"text": (t := fn(r["text"])), "bytes": len(t.encode("utf-8"))},
                num_proc=num_proc, desc=name)
    steps.append(StepReport(name, len(ds), len(ds), bytes_in, _nbytes(ds), seconds=time.perf_counter() - start))
    return ds


def _select(ds, name: str, keep: list[int], reason: str, steps: list[StepReport], start: float):
    """Keep rows ``keep`` (positions) and report the others as removed for ``reason``."""
    dropped = sorted(set(range(len(ds))) - set(keep))
    out = ds.select(keep)
    ids = list(ds.select(dropped[:5])["id"]) if dropped else []
    steps.append(StepReport(name, len(ds), len(out), _nbytes(ds), _nbytes(out),
                            {reason: len(dropped)} if dropped else {}, {reason: ids} if dropped else {},
                            time.perf_counter() - start))
    return out


def curate(docs, config: CurationConfig | None = None, progress: bool = False):
    """Run the curation pipeline; return ``(clean dataset, CurationReport)``.

    ``docs`` is a list of strings or a ``datasets.Dataset`` with a ``text``
    column. The result has columns ``text``, ``id`` (the row's position in the
    input) and ``bytes`` (UTF-8 length). ``progress`` shows ``datasets``' bars.
    When a step removes every document, the later steps report 0 in and out
    and the result is empty (the report says which rule removed what).
    """
    import datasets

    cfg = config or CurationConfig()
    if isinstance(docs, datasets.Dataset):
        if "text" not in docs.column_names:
            raise DataError(f"the dataset needs a 'text' column; its columns are {docs.column_names}")
        texts = list(docs["text"])
    elif isinstance(docs, (list, tuple)) and all(isinstance(d, str) for d in docs):
        texts = list(docs)
    else:
        raise TypeError("curate expects a list of str or a datasets.Dataset with a 'text' column")
    if not texts:
        raise DataError("curate needs at least one document")
    with datasets_progress(progress):
        ds = datasets.Dataset.from_dict({"text": texts, "id": list(range(len(texts))),
                                         "bytes": [len(t.encode("utf-8")) for t in texts]})
        steps: list[StepReport] = []
        n = cfg.num_proc
        if cfg.normalize is not None:
            ds = _transform(ds, "normalize", n, lambda t, c=cfg.normalize: normalize(t, c), steps)
        if isinstance(cfg.quality, CodeQualityConfig):
            ds = _drop(ds, "quality", n, lambda t, c=cfg.quality: next(iter(code_quality_failures(t, c)), ""), steps)
        elif cfg.quality is not None:
            ds = _drop(ds, "quality", n, lambda t, c=cfg.quality: next(iter(quality_failures(t, c, True)), ""),
                       steps)
        if cfg.perplexity_model is not None:
            lm, limit = cfg.perplexity_model, cfg.max_perplexity
            ds = _drop(ds, "perplexity", n, lambda t: "perplexity" if lm.perplexity(t) > limit else "", steps)
        if cfg.exact_dedup and not _nothing_left(ds, "exact_dedup", steps):
            start = time.perf_counter()
            keys = ds.map(lambda r: {"_key": exact_key(r["text"])}, num_proc=n, desc="exact dedup")["_key"]
            first: dict[str, int] = {}
            keep = [first.setdefault(k, i) for i, k in enumerate(keys) if k not in first]
            ds = _select(ds, "exact_dedup", keep, "exact_duplicate", steps, start)
        if cfg.near_dedup_threshold and not _nothing_left(ds, "near_dedup", steps):
            start, hasher = time.perf_counter(), MinHasher(cfg.num_perm, cfg.shingle_size, cfg.seed)
            sig = ds.map(lambda b: {"_sig": hasher.signatures(b["text"])}, batched=True, batch_size=1000,
                         num_proc=n, desc="minhash")["_sig"]
            sig = np.asarray(sig, dtype=np.uint32).reshape(len(ds), cfg.num_perm)
            keep = cluster_signatures(sig, cfg.near_dedup_threshold).keep
            ds = _select(ds, "near_dedup", keep, "near_duplicate", steps, start)
        if cfg.decontaminate is not None:
            dec = cfg.decontaminate
            ds = _drop(ds, "decontaminate", n, lambda t: "+".join(sorted(dec.matches(t))), steps)
        if cfg.redact_pii:
            ds = _transform(ds, "redact_pii", n, redact_pii, steps)
    if not steps:
        steps.append(StepReport("none", len(ds), len(ds), _nbytes(ds), _nbytes(ds)))
    return ds, CurationReport(steps)


def code_curation(decontaminate: Decontaminator | None = None) -> CurationConfig:
    """The pipeline for Python source files (the book's corpus): code keeps its whitespace and markup,
    prose rules are replaced by :class:`~minillm.quality.CodeQualityConfig`, the rest is unchanged."""
    return CurationConfig(normalize=NormalizeConfig(strip_html=False, whitespace=False), quality=CodeQualityConfig(),
                          decontaminate=decontaminate)  # fmt: skip


def split_of(text: str, val_fraction: float = 0.1) -> str:
    """"validation" or "train" for a document, from a hash of its normalized text (stable as documents
    come and go; split after deduplication so that no copy of a validation document stays in training)."""
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction must be strictly between 0 and 1, got {val_fraction}")
    return "validation" if int(exact_key(text)[:8], 16) / 16**8 < val_fraction else "train"


# ---------------------------------------------------------------------------
# Reading inputs (the `curate` command, minillm.cli.data, reads its INPUTs with this)
# ---------------------------------------------------------------------------

TEXT_SUFFIXES = (".txt", ".md", ".py", ".html", ".htm", ".rst")


def read_documents(paths: Sequence[str], doc_per: str = "file", text_field: str = "text") -> list[str]:
    """Documents from files and folders (searched recursively for ``.jsonl``/``.json`` and text files).

    JSON Lines rows give their ``text_field`` (a string); text files give one
    document per ``file``, per ``paragraph`` (blank-line separated) or per
    ``line``. A file that is not UTF-8, a line that is not JSON, or a row
    without a text raises DataError naming the file and the line.
    """
    if doc_per not in ("file", "paragraph", "line"):
        raise DataError(f"doc_per must be 'file', 'paragraph' or 'line', got {doc_per!r}")
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in (*TEXT_SUFFIXES, ".jsonl", ".json"))
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"input {p} does not exist; give files or folders of .txt/.jsonl documents")
    docs: list[str] = []
    for f in files:
        raw = _read_utf8(f)
        if f.suffix == ".json":
            rows = _json(raw, f, 0)
            for k, row in enumerate(rows if isinstance(rows, list) else [rows]):
                docs.append(_text_of(row, text_field, f"{f} item {k}"))
        elif f.suffix == ".jsonl":
            for line, text in enumerate(raw.split("\n"), start=1):
                if text.strip():
                    docs.append(_text_of(_json(text, f, line), text_field, f"{f} line {line}"))
        elif doc_per == "file":
            docs.append(raw)
        else:
            parts = raw.split("\n") if doc_per == "line" else regex.split(r"\n\s*\n", raw)
            docs += [p for p in parts if p.strip()]
    return docs


def _read_utf8(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise DataError(f"{path} line {line} is not valid UTF-8 (byte {data[err.start]:#04x} at offset "
                        f"{err.start}); convert the file to UTF-8 or leave it out") from None  # fmt: skip


def _json(text: str, path: Path, line: int) -> Any:
    """Parse one JSON value: a whole .json file (`line` 0) or one line of a .jsonl file."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        where = f"line {line}" if line else f"line {err.lineno}"
        raise DataError(f"{path} {where} is not valid JSON ({err.msg}, column {err.colno}); fix or remove "
                        "it") from None  # fmt: skip


def _text_of(row: Any, text_field: str, where: str) -> str:
    if not isinstance(row, dict) or text_field not in row:
        raise DataError(f"{where} has no {text_field!r} field; choose the field with --text-field")
    if not isinstance(row[text_field], str):
        raise DataError(f"{where}: {text_field!r} is {type(row[text_field]).__name__}, not a string")
    return row[text_field]
