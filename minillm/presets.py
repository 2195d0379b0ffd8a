"""Named training runs and their data: presets, typed overrides, corpus -> tokens (chapter 05).

Chapter 05 (`05_pretraining`) trains the presets of this module:

* `shakespeare-char`: the classic laptop-CPU "baby GPT", a character-level model
  of Tiny Shakespeare (4 layers, 4 heads, width 128, context 64, batch 12,
  2,000 steps, lr 1e-3, no dropout, fp32);
* `quickstart`: a small code model on this Python's own standard library with a
  byte-level BPE tokenizer learned from it; `python -m minillm quickstart`
  trains it in a few minutes on a CPU, with no download;
* `gpt2-124m`: GPT-2 small on a FineWeb-Edu sample (streamed through Hugging
  Face `datasets` when online) or on local text files (`data="files"`), bf16 and
  `torch.compile` on a GPU.

`preset_config(name, **overrides)` builds the `TrainConfig`; `apply_overrides`
types string values from the dataclass fields (the CLI's `--key value`).
`load_data(config)` turns the config's data fields into a tokenizer and
train/validation token arrays (`TrainData`). `TINY` shortens presets for
`minillm.train.pretrained_tiny`, the small cached base model of later chapters.
"""

from __future__ import annotations

import dataclasses
import glob
import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from minillm.train import TrainConfig

PRESETS: dict[str, dict[str, Any]] = {
    "shakespeare-char": dict(
        data="tinyshakespeare", tokenizer="char", n_layer=4, n_head=4, d_model=128, context_length=64,
        dropout=0.0, batch_size=12, max_steps=2000, lr=1e-3, min_lr=1e-4, warmup_steps=100, beta2=0.99,
        weight_decay=0.1, eval_interval=250, eval_batches=20, precision="fp32", sample_prompt="\n",
        sample_tokens=200,
    ),
    "quickstart": dict(
        data="python-stdlib", exclude_files="encodings/*,pydoc_data/*", tokenizer="bpe", vocab_size=1024,
        tokenizer_chars=600_000, n_layer=4, n_head=4, d_model=128, context_length=128, dropout=0.0, batch_size=12,
        max_steps=1200, lr=3e-3, min_lr=3e-4, warmup_steps=100, beta2=0.99, weight_decay=0.1, eval_interval=200,
        eval_batches=10, precision="auto", sample_prompt="def fibonacci(n):\n", sample_tokens=60,
    ),
    "gpt2-124m": dict(
        data="fineweb-edu", tokenizer="gpt2", max_chars=2_000_000_000, n_layer=12, n_head=12, d_model=768,
        context_length=1024, dropout=0.0, vocab_multiple=64, batch_size=16, grad_accum=32, max_steps=2000,
        lr=6e-4, min_lr=6e-5, warmup_steps=200, beta2=0.95, weight_decay=0.1, eval_interval=250,
        eval_batches=20, log_interval=10, precision="auto", compile=True, sample_prompt="The meaning of",
        sample_tokens=48,
    ),
}  # fmt: skip

#: The runs of `minillm.train.pretrained_tiny`: presets shortened to about a minute on a
#: laptop CPU. Written out in full (not derived from PRESETS), so that tuning a preset
#: never changes the cached base models that later chapters' notebooks print from.
TINY: dict[str, dict[str, Any]] = {
    "shakespeare-char": dict(PRESETS["shakespeare-char"], max_steps=800, eval_interval=800, sample_tokens=0,
                             eval_batches=20, device="cpu"),
    "quickstart": dict(
        data="python-stdlib", tokenizer="bpe", vocab_size=2048, tokenizer_chars=600_000, n_layer=4, n_head=4,
        d_model=128, context_length=128, dropout=0.0, batch_size=16, max_steps=300, lr=2e-3, min_lr=2e-4,
        warmup_steps=50, beta2=0.99, weight_decay=0.1, eval_interval=300, eval_batches=10, precision="fp32",
        sample_prompt="def fibonacci(n):\n", sample_tokens=0, device="cpu",
    ),
}  # fmt: skip


def preset_config(name: str, **overrides: Any) -> TrainConfig:
    """The `TrainConfig` of preset `name` with `overrides` applied (see `apply_overrides`)."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose one of {', '.join(sorted(PRESETS))}")
    return apply_overrides(TrainConfig(**PRESETS[name]), overrides)


def tiny_config(name: str) -> TrainConfig:
    """The config `pretrained_tiny(name)` trains: `TINY[name]` over the `TrainConfig` defaults."""
    if name not in TINY:
        raise KeyError(f"unknown tiny model {name!r}; choose one of {', '.join(sorted(TINY))}")
    return TrainConfig(**TINY[name])


def apply_overrides(config: TrainConfig, overrides: dict[str, Any]) -> TrainConfig:
    """A copy of `config` with fields replaced; string values are converted to the field's type.

    Keys may use dashes or underscores (`max-steps` = `max_steps`). An unknown key
    raises KeyError listing the valid ones; a value that does not parse raises ValueError.
    """
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    changes = {}
    for key, value in overrides.items():
        name = key.replace("-", "_")
        if name not in fields:
            import difflib

            close = difflib.get_close_matches(name, fields, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise KeyError(f"unknown setting {key!r}{hint}; valid settings: {', '.join(fields)}")
        changes[name] = parse_value(fields[name], value) if isinstance(value, str) else value
    return dataclasses.replace(config, **changes)


def parse_value(f: dataclasses.Field, text: str) -> Any:
    """Convert command-line text to the type of dataclass field `f` (int, float, bool or str)."""
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    try:
        if kind == "bool":
            lowered = text.lower()
            if lowered not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(text)
            return lowered in ("true", "1", "yes")
        if kind == "int":
            return int(float(text)) if "e" in text.lower() and float(text).is_integer() else int(text)
        if kind == "float":
            return float(text)
    except ValueError:
        raise ValueError(f"setting {f.name!r} needs a {kind}, got {text!r}") from None
    return unescape(text)


def unescape(text: str) -> str:
    """Command-line text with the escapes \\n and \\t turned into a newline and a tab."""
    return text.replace("\\n", "\n").replace("\\t", "\t")


# ---------------------------------------------------------------------------
# Data: corpus -> tokenizer -> train/val tokens
# ---------------------------------------------------------------------------


@dataclass
class TrainData:
    """A tokenizer and the token ids (1-D int arrays) to train and validate on."""

    tokenizer: Any
    train: np.ndarray
    val: np.ndarray

    def __repr__(self) -> str:
        return f"TrainData(vocab_size={self.tokenizer.vocab_size}, train={len(self.train):,}, val={len(self.val):,})"


def load_data(config: TrainConfig, tokenizer: Any = None) -> TrainData:
    """Read the config's corpus, build (or reuse) its tokenizer, encode and split it.

    `config.data`: a `minillm.data.read_text` name (e.g. "tinyshakespeare",
    "python-stdlib"), "files" (`config.data_files` globs), or "fineweb-edu".
    `tokenizer`: reuse this one (a resumed run) instead of building it.
    The last `val_fraction` of the tokens is the validation set.
    """
    from minillm.tokenizer import BPETokenizer, CharTokenizer
    from minillm.tokens import shard_dtype, split_tokens

    docs = _read_documents(config)  # a list, or a stream for the large corpora
    if tokenizer is None and config.tokenizer in ("char", "bpe"):
        docs = list(docs)
    if tokenizer is None:
        if config.tokenizer == "char":
            tokenizer = CharTokenizer.from_text("".join(docs))
        elif config.tokenizer == "bpe":
            tokenizer = BPETokenizer.train(_spread_sample(docs, config.tokenizer_chars), config.vocab_size)
        elif config.tokenizer == "gpt2":
            tokenizer = BPETokenizer.from_gpt2()
        else:
            raise ValueError(f"tokenizer must be 'char', 'bpe' or 'gpt2', got {config.tokenizer!r}")
    tokens = _encode(tokenizer, docs, config.tokenizer == "gpt2", shard_dtype(tokenizer.vocab_size))
    if len(tokens) == 0:
        raise ValueError(f"the corpus {config.data!r} is empty")
    train, val = split_tokens(tokens, config.val_fraction)
    if len(val) < config.context_length + 1 or len(train) < config.context_length + 1:
        raise ValueError(f"{len(tokens)} tokens are too few for context_length {config.context_length} with "
                         f"val_fraction {config.val_fraction}; use more data or a shorter context")  # fmt: skip
    return TrainData(tokenizer, train, val)


def _read_documents(config: TrainConfig) -> Iterable[str]:
    """The corpus' documents (streamed for files and FineWeb-Edu), cut to `max_chars` characters in total."""
    if config.data == "files":
        paths = sorted({p for pattern in config.data_files.split(",") if pattern.strip()
                        for p in glob.glob(pattern.strip(), recursive=True)})  # fmt: skip
        if not paths:
            raise FileNotFoundError(f"data='files' found no files for data_files={config.data_files!r}; "
                                    "give glob patterns such as 'corpus/*.txt' (comma-separated)")  # fmt: skip
        docs = _take(_read_files(paths), config.max_chars)
    elif config.data == "fineweb-edu":
        docs = _take(_fineweb_edu(), config.max_chars)
    else:
        from minillm.data import read_text

        text = read_text(config.data)
        if config.exclude_files:
            text = _exclude_files(text, config)
        docs = [text[: config.max_chars] if config.max_chars else text]
    return docs


def _exclude_files(text: str, config: TrainConfig) -> str:
    """The python-stdlib corpus without the files matching `config.exclude_files` (globs)."""
    import fnmatch
    import re

    from minillm.data import STDLIB, STDLIB_FILE_HEADER

    if config.data != STDLIB:
        raise ValueError(f"exclude_files works on the {STDLIB!r} corpus (files with headers), not {config.data!r}")
    patterns = [p.strip() for p in config.exclude_files.split(",") if p.strip()]
    head, tail = STDLIB_FILE_HEADER.split("{path}")
    parts = re.split(f"^{re.escape(head)}(.*){re.escape(tail)}", text, flags=re.MULTILINE)
    kept = [STDLIB_FILE_HEADER.format(path=path) + body for path, body in zip(parts[1::2], parts[2::2])
            if not any(fnmatch.fnmatch(path, pattern) for pattern in patterns)]  # fmt: skip
    return parts[0] + "".join(kept)


def _read_files(paths: list[str]):
    for path in paths:
        with open(path, encoding="utf-8") as fh:
            yield fh.read()


def _fineweb_edu():
    """Documents of FineWeb-Edu's 10B-token sample, streamed (online only)."""
    try:
        from datasets import load_dataset

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


def _spread_sample(docs: list[str], n_chars: int, pieces: int = 32) -> list[str]:
    """About `n_chars` characters in `pieces` slices spread evenly over the corpus (for BPE training)."""
    text = "\n".join(docs)
    if n_chars <= 0 or n_chars >= len(text):
        return [text]
    size = n_chars // pieces
    starts = np.linspace(0, len(text) - size, pieces).astype(np.int64)
    return [text[s : s + size] for s in starts]


def _encode(tokenizer: Any, docs: Iterable[str], gpt2: bool, dtype: np.dtype, batch: int = 256) -> np.ndarray:
    """Token ids of all documents, each followed by the end-of-text token when the tokenizer has one
    (a single document: no end-of-text). Encoded in batches, so only the ids are held in memory."""
    eot = getattr(tokenizer, "special_tokens", {}).get("<|endoftext|>")
    if gpt2:  # tiktoken is byte-for-byte GPT-2's BPE (tested in chapter 02) and much faster in bulk
        import tiktoken

        encode_batch = tiktoken.get_encoding("gpt2").encode_ordinary_batch
    else:
        plain = {"disallowed_special": ()} if hasattr(tokenizer, "special_tokens") else {}  # specials as text

        def encode_batch(texts: list[str]) -> list[list[int]]:
            return [tokenizer.encode(t, **plain) for t in texts]
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
