"""The book model and small pretrained base models: trained once, cached, loaded by later chapters.

**The book model** (`book_model()`) is the reader's own model: chapter 01's
curated standard library (`minillm.corpus.curated_stdlib`), chapter 02's BPE
tokenizer learned on it, and chapter 05's main run, the `book` preset
(`book_config()`). Chapter 05 trains it (4 to 10 minutes on a 2-core CPU);
chapters 03, 07 and 08 load the same run. `book_run()` returns its run folder
(checkpoint, `metrics.jsonl`, samples, loss plot) under
`<cache>/book/book-<scale>-<digest of its config>/`, training it first when
absent: the digest covers every setting, so a changed preset never serves a
stale model. `MINILLM_BOOK_SCALE=gpu` (`minillm.config.book_scale`) selects
the GPU-scale run (`BOOK_GPU`).

**The book's chat model** (`book_chat_model()`) is the book model after chapter
07's instruction tuning (`tune_book_chat`, the recipe `BOOK_CHAT`): the chat
template's markers added, prompt masking, generated list instructions on the
CPU. `book_chat_run()` caches it like `book_run` (keyed by the book model's
config and the recipe); chapter 07 calls it, appendix C serves it.

**Tiny models** (`pretrained_tiny(name)`) are older, smaller runs kept for tests
and quick experiments. `pretrained_tiny(name)` trains the run `minillm.config.TINY[name]`
names (about a minute on a laptop CPU, deterministic: fixed seed) the first
time, stores it in `<cache>/pretrained/<name>-<digest of its config>/`, and
loads it in a second afterwards. The digest covers every setting, so changing
a run can never serve a stale model.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from minillm.checkpoint import load_model, save_model_folder
from minillm.config import TINY, TrainConfig, apply_overrides, book_scale, preset_config, tiny_config
from minillm.data import cache_dir
from minillm.errors import ConfigError
from minillm.fileio import FolderLock, atomic_write
from minillm.finetune import FinetuneConfig, FinetuneResult, finetune
from minillm.instruct import add_special_tokens, instruction_loader, instruction_splits, resize_vocab
from minillm.model import GPT
from minillm.synthetic import list_tasks
from minillm.train import train


def config_digest(config: TrainConfig) -> str:
    """12 hex digits that change whenever any setting of `config` does (the cache key)."""
    return hashlib.sha256(config.to_json().encode()).hexdigest()[:12]


def pretrained_tiny(name: str = "shakespeare-char", cache: bool = True, progress: bool = False) -> tuple[GPT, Any]:
    """A small pretrained (model, tokenizer): `TINY[name]` trained once and cached under `minillm.data.cache_dir()`.

    `cache=False` always trains, in memory. Concurrent first calls (two notebooks
    run side by side) are safe and train once: the first holds a lock while it
    trains and writes through the checkpoints' commit path; the others wait, then load.
    """
    if name not in TINY:
        raise ConfigError(f"unknown tiny model {name!r}; choose one of {sorted(TINY)}")
    config = tiny_config(name)
    if not cache:
        result = train(config, None, progress=progress, verbose=False)
        return result.model, result.tokenizer
    target = cache_dir() / "pretrained" / f"{name}-{config_digest(config)}"
    if not (target / "model.safetensors").is_file():
        lock = FolderLock(target.with_name(f".{target.name}.lock")).acquire(wait=True)  # one trains, others wait
        try:
            if not (target / "model.safetensors").is_file():  # not written while this process waited
                result = train(config, None, progress=progress, verbose=False)
                save_model_folder(target, result.model, result.tokenizer, result.config)
        finally:
            lock.release()
    return load_model(target)


#: What the GPU scale changes in the `book` preset: a 30M-parameter model with a 1,024-token
#: context and a larger vocabulary, trained about 100x longer (bf16 on CUDA).
BOOK_GPU: dict[str, Any] = dict(
    vocab_size=8192, tokenizer_chars=0, n_layer=8, n_head=8, d_model=512, context_length=1024, batch_size=32,
    max_steps=10_000, lr=1e-3, min_lr=1e-4, warmup_steps=500, eval_interval=1000, device="auto", precision="auto",
    vocab_multiple=64,
)  # fmt: skip


def book_config(scale: str | None = None) -> TrainConfig:
    """The book model's run: the `book` preset ("cpu") or the preset with `BOOK_GPU` ("gpu").

    `scale` defaults to `minillm.config.book_scale()` (the MINILLM_BOOK_SCALE variable).
    """
    scale = scale or book_scale()
    if scale not in ("cpu", "gpu"):
        raise ConfigError(f"scale must be 'cpu' or 'gpu', got {scale!r}")
    config = preset_config("book")
    return apply_overrides(config, BOOK_GPU) if scale == "gpu" else config


def book_run(scale: str | None = None, progress: bool = False, root: str | os.PathLike | None = None,
             ) -> tuple[Path, bool]:  # fmt: skip
    """(the book model's run folder, whether this call trained it): the cached run, or trained now.

    The run trains in a hidden folder next to its final place and is renamed
    there only when finished, so an interrupted training never leaves a run
    that looks complete (the next call starts it again). Concurrent calls train
    once: the first holds a lock, the others wait and then load. `root`
    defaults to `<cache>/book`.
    """
    scale = scale or book_scale()
    config = book_config(scale)
    target = book_run_folder(scale, root)
    return _build_once(target, lambda staging: train(config, staging, overwrite=True, progress=progress,
                                                     verbose=False))  # fmt: skip


def book_run_folder(scale: str | None = None, root: str | os.PathLike | None = None) -> Path:
    """Where `book_run` keeps the run (trained or not): `<root>/book-<scale>-<digest of its config>`.

    While it trains, `.<name>.lock` beside it names the process that holds it.
    """
    scale = scale or book_scale()
    base = Path(root) if root is not None else cache_dir() / "book"
    return base / f"book-{scale}-{config_digest(book_config(scale))}"


def _build_once(target: Path, build: Callable[[Path], Any]) -> tuple[Path, bool]:
    """(target, whether this call built it): `build(staging)` fills a hidden folder, renamed to `target` when done.

    An interrupted build never leaves a folder that looks complete: its staging
    folder is removed (or, after kill -9, cleared by the next call, which starts
    again); concurrent calls build once: the first
    holds a lock, the others wait and then find the target.
    """
    if target.is_dir():
        return target, False
    target.parent.mkdir(parents=True, exist_ok=True)
    lock = FolderLock(target.with_name(f".{target.name}.lock")).acquire(wait=True)
    try:
        if target.is_dir():  # built by another process while this one waited
            return target, False
        staging = target.with_name(f".{target.name}.training")
        shutil.rmtree(staging, ignore_errors=True)  # an interrupted earlier attempt
        try:
            build(staging)
        except BaseException:  # an error, Ctrl-C, SIGTERM turned into SystemExit: no half-built folder stays
            shutil.rmtree(staging, ignore_errors=True)
            raise
        os.replace(staging, target)
        return target, True
    finally:
        lock.release()


def book_model(scale: str | None = None, progress: bool = False) -> tuple[GPT, Any]:
    """The book model (model in eval mode, tokenizer): `book_run`'s checkpoint, trained first if needed."""
    return load_model(book_run(scale, progress)[0])


#: Chapter 07's instruction tuning of the book model (section 4), per scale: which rows
#: (`instructions`, `n_train` of them), optimizer steps, rows a step, peak learning rate, seed.
BOOK_CHAT: dict[str, dict[str, Any]] = {
    "cpu": dict(instructions="list-tasks", n_train=3000, steps=400, batch_size=32, lr=2e-3, seed=123),
    "gpu": dict(instructions="alpaca", n_train=None, steps=180, batch_size=16, lr=3e-4, seed=123),
}


def _chat_recipe(scale: str | None) -> tuple[str, dict[str, Any]]:
    scale = scale or book_scale()
    if scale not in BOOK_CHAT:
        raise ConfigError(f"scale must be one of {sorted(BOOK_CHAT)}, got {scale!r}")
    return scale, BOOK_CHAT[scale]


def book_chat_rows(scale: str | None = None) -> list[dict]:
    """The instruction rows `tune_book_chat` trains on: generated list tasks (cpu) or Alpaca's train split (gpu)."""
    _, recipe = _chat_recipe(scale)
    if recipe["instructions"] == "list-tasks":
        return list_tasks(recipe["n_train"], seed=0)
    return instruction_splits(seed=recipe["seed"])["train"]


def tune_book_chat(base: GPT, tokenizer: Any, scale: str | None = None) -> tuple[GPT, Any, FinetuneResult]:
    """Chapter 07's instruction tuning: (tuned model, chat tokenizer, the `finetune` result).

    The chat template's markers join the tokenizer (`add_special_tokens`) and the
    model (`resize_vocab`, new rows at the mean embedding); the rows of
    `book_chat_rows` are trained with the response tokens as the only targets
    (`mask_prompt`), `BOOK_CHAT[scale]` steps of AdamW on a cosine schedule.
    `base` is not changed.
    """
    scale, recipe = _chat_recipe(scale)
    chat_tokenizer = add_special_tokens(tokenizer)
    chat_base = resize_vocab(base, chat_tokenizer.vocab_size).eval()
    torch.manual_seed(recipe["seed"])
    tuned = copy.deepcopy(chat_base)
    loader = instruction_loader(book_chat_rows(scale), chat_tokenizer, tuned.config.context_length,
                                batch_size=recipe["batch_size"], template="chat", mask_prompt=True, shuffle=True,
                                seed=recipe["seed"])  # fmt: skip
    config = FinetuneConfig(max_steps=recipe["steps"], lr=recipe["lr"], min_lr=recipe["lr"] / 10, warmup_steps=20,
                            eval_interval=recipe["steps"], device={"cpu": "cpu", "gpu": "cuda"}[scale])  # fmt: skip
    result = finetune(tuned, loader, None, config, progress=False)
    return tuned, chat_tokenizer, result


def book_chat_run(scale: str | None = None, root: str | os.PathLike | None = None) -> tuple[Path, bool]:
    """(the chat model's folder, whether this call trained it): `tune_book_chat` on `book_model()`, cached.

    The folder is a model folder (`load_model` reads it) plus `tuning.json`: the
    recipe, the seconds it took and the training records. Keyed by the book
    model's run and `BOOK_CHAT[scale]`: a change to `tune_book_chat`'s own code
    needs a changed recipe (or an emptied cache) to take effect. Trained in a
    hidden folder and renamed when finished; concurrent calls train once. On the
    CPU it trains with at most two threads, as chapter 07 does, so that the
    chapter's CPU gets the chapter's bits (the thread count changes the
    rounding). Like the chapter, the tuning seeds torch's global RNG.
    """
    scale, recipe = _chat_recipe(scale)
    book_folder = book_run(scale)[0]
    digest = hashlib.sha256(json.dumps([book_folder.name, recipe], sort_keys=True).encode()).hexdigest()[:12]
    base = Path(root) if root is not None else cache_dir() / "book"

    def build(staging: Path) -> None:
        threads = torch.get_num_threads()
        try:
            if scale == "cpu":
                torch.set_num_threads(min(2, os.cpu_count() or 1))
            model, tokenizer = load_model(book_folder)
            tuned, chat_tokenizer, result = tune_book_chat(model, tokenizer, scale)
        finally:
            torch.set_num_threads(threads)
        save_model_folder(staging, tuned, chat_tokenizer)
        record = {"scale": scale, "recipe": recipe, "book_run": book_folder.name, "seconds": result.seconds,
                  "steps": result.steps, "history": result.history}  # fmt: skip
        atomic_write(staging / "tuning.json", json.dumps(record, indent=1))

    return _build_once(base / f"book-chat-{scale}-{digest}", build)


def book_chat_model(scale: str | None = None) -> tuple[GPT, Any]:
    """The book's chat model (model in eval mode, chat tokenizer): `book_chat_run`'s folder, tuned first if needed."""
    return load_model(book_chat_run(scale)[0])
