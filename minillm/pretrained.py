"""Small pretrained base models, trained once and cached, for the later chapters (07 and 08).

Chapters 07 and 08 fine-tune and evaluate a model that chapter 05 showed how to
train. `pretrained_tiny(name)` trains the run `minillm.config.TINY[name]`
names (about a minute on a laptop CPU, deterministic: fixed seed) the first
time, stores it in `<cache>/pretrained/<name>-<digest of its config>/`, and
loads it in a second afterwards. The digest covers every setting, so changing
a run can never serve a stale model.
"""

from __future__ import annotations

import hashlib
from typing import Any

from minillm.checkpoint import load_model, save_model_folder
from minillm.config import TINY, TrainConfig, tiny_config
from minillm.data import cache_dir
from minillm.errors import ConfigError
from minillm.fileio import FolderLock
from minillm.model import GPT
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
