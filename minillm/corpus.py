"""From text to training tokens: corpus -> tokenizer -> token shards on disk (chapters 02 and 05).

A run trains on token ids, not text. Turning a corpus into ids (reading it,
learning a BPE tokenizer on it, encoding every document, holding out the last
part for validation) takes from seconds to hours, so it is done once and
stored (`prepare_corpus`):

    DIR/
      corpus.json            the data settings, their digest, token counts
      minillm_tokenizer.json the tokenizer
      train.json  train_000000.bin ...   token shards (minillm.tokens), memory-mapped
      val.json    val_000000.bin ...

`open_corpus(DIR)` memory-maps it (`TrainData`): nothing is read until a batch
slices it, and many processes share the same pages. `python -m minillm prepare`
writes such a folder and `train --data DIR` reads it; a preset that names a
corpus (`data="tinyshakespeare"`) gets one prepared into the cache, keyed by a
digest of its data settings (`corpus_digest`), so a second run, a resumed run
and every rank of a distributed run reuse it without re-tokenizing.
`load_data` does the same work in memory, for notebooks and tests.

The book's own corpus, `python-stdlib-curated` (`curated_stdlib`), is the
standard library's files run through chapter 01's pipeline for code
(`minillm.curation.code_curation`) and split by document (a hash of each
file picks its side), so no validation file is ever trained on.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import glob
import hashlib
import itertools
import json
import os
import platform
import re
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tiktoken

from minillm.config import TrainConfig
from minillm.curation import CurationReport, StepReport, code_curation, curate, split_of
from minillm.data import STDLIB, STDLIB_FILE_HEADER, cache_dir, read_text, stdlib_dir, stdlib_files
from minillm.dedup import Decontaminator
from minillm.errors import ConfigError, DataError
from minillm.fileio import atomic_write, fsync_tree
from minillm.tokenizer import ENDOFTEXT, TOKENIZER_FILE, BPETokenizer, CharTokenizer, Tokenizer, load_tokenizer
from minillm.tokens import TokenShards, read_shards, shard_dtype, split_tokens, write_shards

CURATED_STDLIB = "python-stdlib-curated"
CURATION_VERSION = 1  # bump when the code curation's rules change: the cached corpus is rebuilt
CORPUS_FILE = "corpus.json"
CORPUS_FORMAT = "minillm-corpus"
#: The TrainConfig fields that decide the tokens (and nothing else does).
DATA_FIELDS = ("data", "data_files", "max_chars", "exclude_files", "tokenizer", "vocab_size", "tokenizer_chars",
               "val_fraction")  # fmt: skip


@dataclass
class TrainData:
    """A tokenizer and the token ids to train and validate on: 1-D arrays or memory-mapped `TokenShards`."""

    tokenizer: Tokenizer
    train: np.ndarray | TokenShards
    val: np.ndarray | TokenShards

    def __repr__(self) -> str:
        return f"TrainData(vocab_size={self.tokenizer.vocab_size}, train={len(self.train):,}, val={len(self.val):,})"


# ---------------------------------------------------------------------------
# In memory: read, tokenize, split
# ---------------------------------------------------------------------------


def load_data(config: TrainConfig, tokenizer: Tokenizer | None = None) -> TrainData:
    """Read the config's corpus, build (or reuse) its tokenizer, encode and split it, in memory.

    `config.data`: a `minillm.data.read_text` name (e.g. "tinyshakespeare",
    "python-stdlib"), "files" (`config.data_files` globs), "fineweb-edu", or a
    folder written by `prepare_corpus` (memory-mapped, see `open_corpus`).
    `tokenizer`: reuse this one instead of building it. The last
    `val_fraction` of the tokens is the validation set.
    """
    if is_prepared(config.data):
        return open_corpus(config.data)
    if config.data == CURATED_STDLIB:  # split by document, the tokenizer learned from the training side
        train_docs, val_docs = read_split_documents(config)
        tokenizer = tokenizer or build_tokenizer(config, train_docs)
        return TrainData(tokenizer, encode_documents(tokenizer, train_docs), encode_documents(tokenizer, val_docs))
    docs = read_documents(config)  # a list, or a stream for the large corpora
    if tokenizer is None:
        if config.tokenizer in ("char", "bpe"):
            docs = list(docs)
        tokenizer = build_tokenizer(config, docs)
    tokens = encode_documents(tokenizer, docs, config.tokenizer == "gpt2")
    if len(tokens) == 0:
        raise DataError(f"the corpus {config.data!r} is empty")
    train, val = split_tokens(tokens, config.val_fraction)
    if len(val) < config.context_length + 1 or len(train) < config.context_length + 1:
        raise DataError(f"{len(tokens)} tokens are too few for context_length {config.context_length} with "
                        f"val_fraction {config.val_fraction}; use more data or a shorter context")  # fmt: skip
    return TrainData(tokenizer, train, val)


def build_tokenizer(config: TrainConfig, docs: list[str]) -> Tokenizer:
    """The tokenizer `config.tokenizer` names: a character vocabulary, a BPE learned from `docs`, or GPT-2's."""
    if config.tokenizer == "char":
        return CharTokenizer.from_text("".join(docs))
    if config.tokenizer == "bpe":
        return BPETokenizer.train(spread_sample(docs, config.tokenizer_chars), config.vocab_size)
    return BPETokenizer.from_gpt2()


def check_data_settings(config: TrainConfig) -> None:
    """Raise `ConfigError` for data settings that the corpus would silently ignore.

    `data_files` is read only with data "files", `exclude_files` only with the
    python-stdlib corpus; a prepared folder's data settings come from its own
    corpus.json. Cheap (no file is read): the command line calls it before a run starts.
    """
    if is_prepared(config.data):
        return
    if config.data_files.strip() and config.data != "files":
        raise ConfigError(f"data_files is read only with data 'files', not {config.data!r}; pass --data files "
                          f"to train on {config.data_files!r}, or set data_files to '' (--data-files '')")  # fmt: skip
    if config.data == CURATED_STDLIB and config.max_chars:
        raise ConfigError(f"max_chars does not apply to {CURATED_STDLIB!r} (whole files, curated); set it to 0")
    if config.exclude_files.strip() and config.data != STDLIB:
        raise ConfigError(f"exclude_files works on the {STDLIB!r} corpus (files with headers), not {config.data!r}; "
                          "set exclude_files to '' (--exclude-files '') for any other corpus")


def read_documents(config: TrainConfig) -> Iterable[str]:
    """The corpus' documents (streamed for files and FineWeb-Edu), cut to `max_chars` characters in total."""
    check_data_settings(config)
    if config.data == "files":
        return _take(_read_files(_file_paths(config)), config.max_chars)
    if config.data == "fineweb-edu":
        return _take(_fineweb_edu(), config.max_chars)
    if config.data == CURATED_STDLIB:
        return list(read_split_documents(config)[0]) + list(read_split_documents(config)[1])
    text = read_text(config.data)
    if config.exclude_files:
        text = exclude_files(text, config)
    return [text[: config.max_chars] if config.max_chars else text]


@dataclass
class CuratedCorpus:
    """The curated standard library: documents (one per file) and their paths by split, and the report."""

    train: list[str]
    validation: list[str]
    paths: dict[str, list[str]]
    report: CurationReport

    def __repr__(self) -> str:
        n = {k: f"{len(v)} files, {sum(map(len, getattr(self, k))) / 1e6:.2f}M chars" for k, v in self.paths.items()}
        return f"CuratedCorpus(train: {n['train']}, validation: {n['validation']})"


def curated_stdlib(val_fraction: float = 0.1, progress: bool = False) -> CuratedCorpus:
    """The book's corpus: this Python's standard library curated for code, split by file; cached.

    `minillm.curation.code_curation` runs on every file of `minillm.data.stdlib_files`
    (generated files, files that do not parse and data tables are dropped; exact
    and near duplicates removed; files sharing a 13-word n-gram with HumanEval or
    MBPP removed; e-mail addresses and other personal data redacted), then
    `minillm.curation.split_of` puts each file on the train or validation side.
    The result is cached in `<cache>/corpora/` under a digest of the Python
    version, the files' sizes and the rules (`CURATION_VERSION`).
    """
    root = stdlib_dir()
    files = stdlib_files(root)
    key = json.dumps([platform.python_version(), CURATION_VERSION, val_fraction,
                      [[f.as_posix(), (root / f).stat().st_size] for f in files]])  # fmt: skip
    path = cache_dir() / "corpora" / f"{CURATED_STDLIB}-{hashlib.sha256(key.encode()).hexdigest()[:12]}.json"
    if path.is_file():
        saved = json.loads(path.read_text(encoding="utf-8"))
        report = CurationReport([StepReport(**step) for step in saved["report"]["steps"]])
        return CuratedCorpus(saved["train"], saved["validation"], saved["paths"], report)
    texts = [(root / f).read_text(encoding="utf-8") for f in files]
    clean, report = curate(texts, code_curation(Decontaminator.from_benchmarks(("humaneval", "mbpp"))), progress)
    out: dict[str, Any] = {"train": [], "validation": [], "paths": {"train": [], "validation": []}}
    for text, i in zip(clean["text"], clean["id"]):
        side = split_of(text, val_fraction)
        out[side].append(text)
        out["paths"][side].append(files[i].as_posix())
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps({**out, "report": report.to_dict()}))
    return CuratedCorpus(out["train"], out["validation"], out["paths"], report)


def read_split_documents(config: TrainConfig) -> tuple[list[str], list[str]]:
    """(train documents, validation documents) of a corpus split by document (`python-stdlib-curated`)."""
    check_data_settings(config)
    if config.data != CURATED_STDLIB:
        raise ConfigError(f"{config.data!r} is split by token position, not by document; use read_documents")
    corpus = curated_stdlib(config.val_fraction)
    return corpus.train, corpus.validation


def exclude_files(text: str, config: TrainConfig) -> str:
    """The python-stdlib corpus without the files matching `config.exclude_files` (globs)."""
    if config.data != STDLIB:
        raise ConfigError(f"exclude_files works on the {STDLIB!r} corpus (files with headers), not {config.data!r}")
    patterns = [p.strip() for p in config.exclude_files.split(",") if p.strip()]
    head, tail = STDLIB_FILE_HEADER.split("{path}")
    parts = re.split(f"^{re.escape(head)}(.*){re.escape(tail)}", text, flags=re.MULTILINE)
    kept = [STDLIB_FILE_HEADER.format(path=path) + body for path, body in zip(parts[1::2], parts[2::2])
            if not any(fnmatch.fnmatch(path, pattern) for pattern in patterns)]  # fmt: skip
    return parts[0] + "".join(kept)


def _file_paths(config: TrainConfig) -> list[str]:
    """The files `config.data_files` (comma-separated globs) names, sorted; none found is an error."""
    paths = sorted({p for pattern in config.data_files.split(",") if pattern.strip()
                    for p in glob.glob(pattern.strip(), recursive=True) if os.path.isfile(p)})  # fmt: skip
    if not paths:
        raise FileNotFoundError(f"data='files' found no files for data_files={config.data_files!r}; "
                                "give glob patterns such as 'corpus/*.txt' (comma-separated)")  # fmt: skip
    return paths


def _read_files(paths: list[str]) -> Iterator[str]:
    for path in paths:
        try:
            with open(path, encoding="utf-8") as fh:
                yield fh.read()
        except UnicodeDecodeError as err:
            raise DataError(f"{path} is not UTF-8 text ({err}); convert it or leave it out of data_files") from err


def _fineweb_edu() -> Iterator[str]:
    """Documents of FineWeb-Edu's 10B-token sample, streamed (online only)."""
    try:
        from datasets import load_dataset  # heavy; only this corpus needs it

        stream = load_dataset("HuggingFaceFW/fineweb-edu", name="sample-10BT", split="train", streaming=True)
        for row in stream:
            yield row["text"]
    except Exception as err:
        raise FileNotFoundError(
            f"could not stream FineWeb-Edu from the Hugging Face hub ({type(err).__name__}: {err}); "
            "go online, or train on local text with --data files --data-files 'path/*.txt'"
        ) from err


def _take(docs: Iterable[str], max_chars: int) -> Iterator[str]:
    total = 0
    for doc in docs:
        if max_chars and total + len(doc) >= max_chars:
            yield doc[: max_chars - total]
            return
        yield doc
        total += len(doc)


def spread_sample(docs: list[str], n_chars: int, pieces: int = 32) -> list[str]:
    """About `n_chars` characters in `pieces` slices spread evenly over the corpus (for BPE training)."""
    text = "\n".join(docs)
    if n_chars <= 0 or n_chars >= len(text):
        return [text]
    size = n_chars // pieces
    starts = np.linspace(0, len(text) - size, pieces).astype(np.int64)
    return [text[s : s + size] for s in starts]


def encode_documents(tokenizer: Tokenizer, docs: Iterable[str], gpt2: bool = False, batch: int = 256) -> np.ndarray:
    """Token ids of all documents, each followed by the end-of-text token when the tokenizer has one
    (a single document: no end-of-text). Encoded in batches, so only the ids are held in memory."""
    dtype = shard_dtype(tokenizer.vocab_size)
    eot = tokenizer.special_tokens.get(ENDOFTEXT)
    if gpt2:  # tiktoken is byte-for-byte GPT-2's BPE (tested in chapter 02) and much faster in bulk
        encode_batch = tiktoken.get_encoding("gpt2").encode_ordinary_batch
    else:

        def encode_batch(texts: list[str]) -> list[list[int]]:
            return [tokenizer.encode_ordinary(t) for t in texts]

    pieces, pending, n_docs = [], [], 0
    for doc in itertools.chain(docs, [None]):  # None flushes the last batch
        if doc is not None:
            pending.append(doc)
            n_docs += 1
        if pending and (doc is None or len(pending) == batch):
            pieces += [np.asarray(ids, dtype=dtype) for ids in encode_batch(pending)]
            pending = []
    if n_docs == 1:
        return pieces[0]
    tail = np.asarray([eot] if eot is not None else [], dtype=dtype)
    return np.concatenate([x for piece in pieces for x in (piece, tail)]) if pieces else np.empty(0, dtype)


# ---------------------------------------------------------------------------
# On disk: prepared corpus folders
# ---------------------------------------------------------------------------


def data_settings(config: TrainConfig) -> dict[str, Any]:
    """The settings that decide the tokens: `DATA_FIELDS`, plus the Python version for python-stdlib."""
    settings = {name: getattr(config, name) for name in DATA_FIELDS}
    if config.data == "files":  # the files themselves, so that an edited file is tokenized again
        settings["files"] = [[p, os.stat(p).st_size, os.stat(p).st_mtime_ns] for p in _file_paths(config)]
    if config.data in (STDLIB, CURATED_STDLIB):
        settings["python"] = platform.python_version()  # each Python ships different sources
    if config.data == CURATED_STDLIB:
        settings["curation"] = CURATION_VERSION
    return settings


def corpus_digest(config: TrainConfig) -> str:
    """12 hex digits naming the tokens `config`'s data settings give (the cache key of a prepared corpus)."""
    text = json.dumps(data_settings(config), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def is_prepared(path: str | os.PathLike) -> bool:
    """True when `path` is a folder written by `prepare_corpus`."""
    return bool(str(path)) and (Path(path) / CORPUS_FILE).is_file()


def cached_corpus_dir(config: TrainConfig) -> Path:
    """Where a named corpus is prepared for training: `<cache>/corpora/<name>-<tokenizer>-<digest>`."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", config.data)[:40]
    return cache_dir() / "corpora" / f"{name}-{config.tokenizer}-{corpus_digest(config)}"


def prepare_corpus(config: TrainConfig | str, out_dir: str | os.PathLike | None = None, *, tokenizer: str = "bpe",
                   vocab_size: int = 4096, val_fraction: float = 0.1, overwrite: bool = False,
                   reuse_tokenizer: Tokenizer | None = None) -> dict[str, Any]:  # fmt: skip
    """Turn a corpus into a tokenizer plus train/val token shards in `out_dir`; return its summary.

    `config`: a `TrainConfig` (its data settings), or a corpus name with the
    keyword settings (the command line's `prepare NAME`; the BPE then learns
    from the whole corpus). `out_dir` defaults to `data/<name>-<tokenizer>`.
    The folder is written under a temporary name and renamed when complete; an
    existing non-empty `out_dir` is an error unless `overwrite`.
    `reuse_tokenizer`: encode with this tokenizer instead of building one.
    """
    if isinstance(config, str):
        config = TrainConfig(data=config, tokenizer=tokenizer, vocab_size=vocab_size, val_fraction=val_fraction,
                             tokenizer_chars=0)  # fmt: skip
    out = Path(out_dir) if out_dir is not None else Path("data") / f"{config.data}-{config.tokenizer}"
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise FileExistsError(f"{out} already exists and is not empty; choose another --out "
                              "or pass --overwrite to replace its files")  # fmt: skip
    start = time.perf_counter()
    n_chars = [0]

    def counted(stream: Iterable[str]) -> Iterator[str]:
        for doc in stream:
            n_chars[0] += len(doc)
            yield doc

    if config.data == CURATED_STDLIB:  # split by document; the tokenizer sees only the training side
        train_docs, val_docs = read_split_documents(config)
        tok = reuse_tokenizer or build_tokenizer(config, train_docs)
        train, val = encode_documents(tok, counted(train_docs)), encode_documents(tok, counted(val_docs))
        tokens = np.concatenate([train, val])
    else:
        docs = read_documents(config)
        if reuse_tokenizer is None and config.tokenizer in ("char", "bpe"):
            docs = list(docs)
        tok = reuse_tokenizer or build_tokenizer(config, docs)
        tokens = encode_documents(tok, counted(docs), config.tokenizer == "gpt2")
        if len(tokens) == 0:
            raise DataError(f"the corpus {config.data!r} is empty")
        train, val = split_tokens(tokens, config.val_fraction)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        label = f"{config.tokenizer} ({tok.vocab_size} tokens)"
        write_shards(train, tmp, tok.vocab_size, tokenizer=label, prefix="train")
        write_shards(val, tmp, tok.vocab_size, tokenizer=label, prefix="val")
        tok.save(tmp / TOKENIZER_FILE)
        summary = {
            "format": CORPUS_FORMAT, "version": 1, "settings": data_settings(config),
            "digest": corpus_digest(config), "dataset": config.data, "characters": n_chars[0],
            "tokenizer": config.tokenizer, "vocab_size": tok.vocab_size, "tokens": len(tokens),
            "train_tokens": len(train), "val_tokens": len(val),
            "chars_per_token": round(n_chars[0] / len(tokens), 3), "dtype": shard_dtype(tok.vocab_size).name,
            "seconds": round(time.perf_counter() - start, 2),
        }  # fmt: skip
        atomic_write(tmp / CORPUS_FILE, json.dumps(summary, indent=2) + "\n")
        fsync_tree(tmp)
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {**summary, "out_dir": str(out)}


def open_corpus(directory: str | os.PathLike) -> TrainData:
    """The tokenizer and memory-mapped train/val tokens of a `prepare_corpus` folder."""
    directory = Path(directory)
    summary = read_corpus_summary(directory)
    tok = load_tokenizer(directory / TOKENIZER_FILE)
    if tok.vocab_size != summary["vocab_size"]:
        raise DataError(f"{directory}: the tokenizer has {tok.vocab_size} tokens, the shards "
                        f"{summary['vocab_size']}; prepare the corpus again")  # fmt: skip
    return TrainData(tok, read_shards(directory, "train", tok.vocab_size), read_shards(directory, "val", tok.vocab_size))


def read_corpus_summary(directory: str | os.PathLike) -> dict[str, Any]:
    """The `corpus.json` of a prepared corpus folder, checked."""
    path = Path(directory) / CORPUS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; prepare the corpus with `python -m minillm prepare NAME --out "
                                f"{directory}`")  # fmt: skip
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path} is not valid JSON ({err}); prepare the corpus again") from err
    if not isinstance(summary, dict) or summary.get("format") != CORPUS_FORMAT:
        raise DataError(f"{path} is not a minillm corpus summary")
    return summary


def with_corpus_settings(config: TrainConfig, directory: str | os.PathLike) -> TrainConfig:
    """`config` with its data settings replaced by those a prepared corpus folder was made with."""
    settings = {k: v for k, v in read_corpus_summary(directory)["settings"].items() if k in DATA_FIELDS}
    return dataclasses.replace(config, **{**settings, "data": str(directory)})
