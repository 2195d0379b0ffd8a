"""Checkpoints: one home for saving, committing, pruning, locking and loading (chapters 05-06).

Chapter 05 (`05_pretraining`) stops a run and resumes it on the same loss
curve; chapter 06 (`06_scaling`) does the same with many processes. A run
folder looks like this:

    out/
      .minillm.lock           held by the live run (a second run is refused)
      train_config.json  minillm_tokenizer.json  metrics.jsonl  samples.txt  loss.png
      checkpoints/
        latest                 the name of the newest complete checkpoint
        step_0002000/
          config.json          the GPTConfig                          } the model: what generate,
          model.safetensors    the full weights (tensors only)        } evaluate, finetune and
          minillm_tokenizer.json                                      } load_model read
          train_config.json    the run's TrainConfig
          trainer.pt           step, RNG and sampler states, optimizer state (one process)
          dcp/                 sharded model + optimizer state (multi-process runs only)

**One commit path.** Every save (one process or many, pretraining or
fine-tuning) writes into a staging folder `.step_N.tmp`, flushes it to disk,
renames it to `step_N`, then replaces `latest`, then prunes. A crash at any
moment leaves `latest` naming a complete checkpoint; the debris of a killed
save is removed by the next save. Pruning deletes only folders named like the
ones it writes (`step_` + digits, compared as numbers).

**Safe loading.** Weights are safetensors (no code can hide in them) and
`trainer.pt` is read with `torch.load(weights_only=True)`. The sharded `dcp/`
folder of `torch.distributed.checkpoint` holds a pickle (`.metadata`), so it is
read only when a multi-process run resumes itself (`restore_sharded`):
trusted input only. `load_model` and every command that loads a model for use
read `model.safetensors`, which every save writes, sharded runs included.

`save_checkpoint` / `load_checkpoint` do the same for any `nn.Module` and
optimizer of a builder's own.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_model as load_module_weights
from safetensors.torch import save_model as save_module_weights
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)

from minillm.config import TrainConfig
from minillm.distributed import DistContext
from minillm.errors import CheckpointError, CheckpointNotFoundError, ConfigError, RunFolderError, StorageError
from minillm.fileio import FolderLock, atomic_path, atomic_write, fsync, fsync_tree
from minillm.model import GPT, GPTConfig, read_safetensors, save_weights
from minillm.tokenizer import LEGACY_TOKENIZER_FILE, TOKENIZER_FILE, BPETokenizer, load_tokenizer, tokenizer_path

CHECKPOINTS = "checkpoints"
TRAINER_FILE = "trainer.pt"
TRAINER_FORMAT = "minillm-trainer"
SHARDS = "dcp"  # the folder of a sharded checkpoint holding torch.distributed.checkpoint's files
LOCK_FILE = ".minillm.lock"
#: Settings a resumed run may change; any other difference is a mismatched checkpoint.
RESUMABLE = frozenset({
    "max_steps", "eval_interval", "eval_batches", "log_interval", "keep_checkpoints", "sample_prompt",
    "sample_tokens", "device", "compile", "peak_tflops", "activation_checkpointing", "reshard_after_forward",
})  # fmt: skip
RUN_FILES = ("train_config.json", TOKENIZER_FILE, LEGACY_TOKENIZER_FILE, "metrics.jsonl", "samples.txt", "loss.png")
_STEP = re.compile(r"step_(\d{7,})")  # the checkpoint folders minillm writes
_DEBRIS = re.compile(r"\.step_\d{7,}\.(tmp|old)|\.latest\..+\.part")  # what a killed save leaves behind


def checkpoint_name(step: int) -> str:
    """The folder name of the checkpoint after `step` optimizer steps: step_0000123."""
    return f"step_{step:07d}"


# ---------------------------------------------------------------------------
# The commit path: staging folder -> fsync -> rename -> latest -> prune
# ---------------------------------------------------------------------------


def checkpoint_steps(root: Path) -> list[tuple[int, Path]]:
    """(step, folder) of the checkpoint folders minillm wrote in `root`, oldest first (by number)."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP.fullmatch(p.name)) and p.is_dir()]
    return sorted(found)


def staging_folder(root: Path, name: str) -> Path:
    """An empty `.NAME.tmp` folder in `root` to write a checkpoint into; a killed save's debris is removed first.

    A save killed between moving the old `NAME` aside and renaming the new one
    into place left the old one as `.NAME.old`: it is put back first.
    """
    root.mkdir(parents=True, exist_ok=True)
    old = root / f".{name}.old"
    if old.is_dir() and not (root / name).exists():
        os.replace(old, root / name)
    for path in [*root.iterdir(), old, root / f".{name}.tmp"]:
        if path.exists() and (_DEBRIS.fullmatch(path.name) or path in (old, root / f".{name}.tmp")):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    tmp = root / f".{name}.tmp"
    tmp.mkdir()
    return tmp


def commit(tmp: Path, keep: int | None = None, latest: bool = True) -> Path:
    """Make the staging folder `tmp` (`.NAME.tmp`) the checkpoint `NAME`, point `latest` at it, prune.

    The order makes every crash harmless: the files are flushed before the
    rename, the rename is atomic, and `latest` changes only once the folder is
    complete. A checkpoint of the same name (the same step saved again) is
    moved aside first and removed last. `keep`: newest checkpoints to keep.
    `latest=False`: a model folder of its own (fine-tuning, caches): no pointer.
    """
    root, name = tmp.parent, tmp.name[1:].removesuffix(".tmp")
    final, old = root / name, root / f".{name}.old"
    fsync_tree(tmp)
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    fsync(root)
    if latest:
        atomic_write(root / "latest", name + "\n")
    shutil.rmtree(old, ignore_errors=True)
    if keep is not None:
        for _, path in checkpoint_steps(root)[:-keep]:
            if path != final:
                shutil.rmtree(path, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint folder of a run (via `latest`), or None if there is none."""
    root = Path(run_dir) / CHECKPOINTS
    pointer = root / "latest"
    if pointer.is_file():
        target = root / pointer.read_text(encoding="utf-8", errors="replace").strip()
        if _STEP.fullmatch(target.name) and (target / TRAINER_FILE).is_file():
            return target
    complete = [p for _, p in checkpoint_steps(root) if (p / TRAINER_FILE).is_file()]
    return complete[-1] if complete else None


# ---------------------------------------------------------------------------
# The run folder: lock, new run / resume / overwrite
# ---------------------------------------------------------------------------


def read_config(path: str | os.PathLike) -> TrainConfig:
    """The `TrainConfig` saved in a run or checkpoint folder (or a train_config.json file)."""
    path = Path(path)
    if path.is_dir():
        path = path / "train_config.json"
    if not path.is_file():
        raise CheckpointNotFoundError(f"{path} not found; is this a minillm run or checkpoint folder?")
    try:
        return TrainConfig.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, UnicodeDecodeError, ConfigError, TypeError) as err:
        raise CheckpointError(f"{path} is not a readable TrainConfig ({err})") from err


def prepare_run_dir(out: Path, config: TrainConfig, resume: bool, overwrite: bool) -> Path | None:
    """Check `out` for a new run or a resume; return the checkpoint to resume from (None: a new run).

    A new run needs an empty or missing `out`, or `overwrite`, which deletes
    minillm's own run files and checkpoints there and nothing else. A resume
    needs a checkpoint whose config matches `config` except for `RESUMABLE` settings.
    """
    if resume and overwrite:
        raise ConfigError("choose either resume (continue the run) or overwrite (start over), not both")
    if resume:
        checkpoint = latest_checkpoint(out)
        if checkpoint is None:
            raise CheckpointNotFoundError(f"no checkpoint in {out}/{CHECKPOINTS} to resume from; "
                                          "start without --resume")  # fmt: skip
        diff = read_config(checkpoint).differences(config, ignore=RESUMABLE)
        if diff:
            raise CheckpointError(
                f"the checkpoint in {checkpoint} was trained with other settings, (saved, requested): {diff}. "
                f"Resume with the saved settings (only {sorted(RESUMABLE)} may change) or start a new run."
            )
        return checkpoint
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"{out} exists and is not a directory; choose another output directory")
    if out.exists() and any(p.name != LOCK_FILE for p in out.iterdir()):
        if not overwrite:
            raise RunFolderError(f"{out} already exists and is not empty; pass --resume to continue its run, "
                                 "--overwrite to start over, or choose another --out")  # fmt: skip
        remove_run_files(out)
    out.mkdir(parents=True, exist_ok=True)
    return None


def remove_run_files(out: Path) -> None:
    """Delete what a run of minillm writes in `out` (run files, its checkpoint folders), nothing else."""
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)
        for part in out.glob(f".{name}.*.part"):  # an atomic write that was killed
            part.unlink(missing_ok=True)
    root = out / CHECKPOINTS
    if root.is_dir():
        for path in root.iterdir():
            if _STEP.fullmatch(path.name) or _DEBRIS.fullmatch(path.name):
                shutil.rmtree(path, ignore_errors=True)
        (root / "latest").unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            root.rmdir()  # only if nothing else is left in it


def write_run_files(out: Path, config: TrainConfig, tokenizer: Any) -> None:
    """The run's own copies of its config and tokenizer (checkpoints carry theirs too)."""
    atomic_write(out / "train_config.json", config.to_json())
    tokenizer.save(out / TOKENIZER_FILE)


# ---------------------------------------------------------------------------
# Training checkpoints: one process or many
# ---------------------------------------------------------------------------


def _trainer_state(step: int, data_rng: torch.Generator, scaler: Any, world_size: int) -> dict:
    state = {
        "format": TRAINER_FORMAT, "version": 2, "step": step, "world_size": world_size,
        "torch_rng": torch.get_rng_state(), "data_rng": data_rng.get_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }  # fmt: skip
    if scaler is not None:
        state["scaler"] = scaler.state_dict()
    return state


def save(run_dir: str | os.PathLike, step: int, model: GPT, optimizer: torch.optim.Optimizer,
         data_rng: torch.Generator, config: TrainConfig, tokenizer: Any, scaler: Any = None,
         ctx: DistContext | None = None) -> Path:  # fmt: skip
    """Save the state after `step` steps as `run_dir/checkpoints/step_N` (see the module docstring).

    One process (`ctx` None or of world size 1): the optimizer state goes into
    `trainer.pt`. Many (`ctx.distributed`; collective: every rank calls it):
    each rank writes its shards of model and optimizer state into `dcp/`, and
    rank 0 also writes the gathered full weights. Returns the checkpoint folder.
    """
    ctx = ctx or DistContext()
    root = Path(run_dir) / CHECKPOINTS
    name = checkpoint_name(step)
    tmp = root / f".{name}.tmp"
    if ctx.is_main:
        tmp = staging_folder(root, name)
    ctx.barrier()
    state = _trainer_state(step, data_rng, scaler, ctx.world_size)
    if ctx.distributed:
        model_state, optim_state = get_state_dict(model, optimizer)
        dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=tmp / SHARDS)
        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    else:
        state["optimizer"] = optimizer.state_dict()
        full = model.state_dict()
    error = None
    if ctx.is_main:
        try:
            save_weights(tmp, model.config, full)
            tokenizer.save(tmp / TOKENIZER_FILE)
            atomic_write(tmp / "train_config.json", config.to_json())
            with atomic_path(tmp / TRAINER_FILE) as path:
                torch.save(state, path)
            commit(tmp, keep=config.keep_checkpoints)
        except (OSError, RuntimeError) as err:  # torch.save reports a full disk as a RuntimeError
            shutil.rmtree(tmp, ignore_errors=True)
            kept = latest_checkpoint(run_dir)
            error = StorageError(f"could not save checkpoint {name} in {root} ({err}); "
                                 + (f"the last checkpoint, {kept.name}, is intact. " if kept else "")
                                 + "Free some space (or fix the permissions), then continue with --resume")
    if ctx.distributed:  # every rank stops, not only rank 0
        message = ctx.broadcast(None if error is None else str(error))
        error = error or (StorageError(message) if message else None)
    if error is not None:
        raise error
    ctx.barrier()
    return root / name


def read_trainer_state(checkpoint: Path) -> dict:
    """The trainer state of a checkpoint (`trainer.pt`, loaded with `weights_only=True`: no code runs)."""
    path = checkpoint / TRAINER_FILE
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointNotFoundError(f"{path} not found; the checkpoint is incomplete") from None
    except Exception as err:  # truncated zip, a pickle with forbidden globals, ...
        raise CheckpointError(f"{path} cannot be read safely ({type(err).__name__}: {err}); it is corrupt, "
                              "or not a minillm trainer state: resume from another checkpoint") from err
    if not isinstance(state, dict) or state.get("format") != TRAINER_FORMAT:
        raise CheckpointError(f"{path} is not a minillm trainer state")
    return state


def _check_model(checkpoint: Path, config: GPTConfig) -> None:
    path = checkpoint / "config.json"
    try:
        saved = GPTConfig(**json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise CheckpointNotFoundError(f"{path} not found; the checkpoint is incomplete") from None
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path} is not a readable model config ({err}); resume from another "
                              "checkpoint") from err  # fmt: skip
    diff = saved.differences(config)
    if diff:
        raise CheckpointError(f"checkpoint {checkpoint} holds a different model: (saved, requested) = {diff}")


def restore(checkpoint: Path, model: GPT, optimizer: torch.optim.Optimizer, data_rng: torch.Generator,
            scaler: Any = None) -> int:  # fmt: skip
    """Load a one-process checkpoint into `model`, `optimizer`, `data_rng`, the global RNGs (and `scaler`).

    Returns its step. A sharded checkpoint or another model raises CheckpointError.
    """
    state = read_trainer_state(checkpoint)
    if "optimizer" not in state:
        raise CheckpointError(f"{checkpoint} is a sharded checkpoint of a {state.get('world_size')}-process run; "
                              "resume it with the same torchrun launch and --strategy")  # fmt: skip
    _check_model(checkpoint, model.config)
    model.load_weights(read_safetensors(checkpoint / "model.safetensors"), source=str(checkpoint))
    optimizer.load_state_dict(state["optimizer"])
    return restore_progress(state, data_rng, scaler)


def restore_sharded(checkpoint: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                    data_rng: torch.Generator, ctx: DistContext, scaler: Any = None) -> int:  # fmt: skip
    """Load a sharded checkpoint into the wrapped `model` and `optimizer` on every rank; return its step.

    Reads `dcp/.metadata`, a pickle: call it only on your own run's checkpoints.
    The world size must be the one that saved it.
    """
    state = read_trainer_state(checkpoint)
    if not (checkpoint / SHARDS).is_dir():
        raise CheckpointError(f"{checkpoint} is a one-process checkpoint; resume it with strategy 'single'")
    if state.get("world_size") != ctx.world_size:
        raise CheckpointError(f"{checkpoint} was saved by {state.get('world_size')} processes; resume it with "
                              f"--nproc_per_node/--nnodes giving that many, not {ctx.world_size}")  # fmt: skip
    _check_model(checkpoint, model.config)
    model_state, optim_state = get_state_dict(model, optimizer)
    target = {"model": model_state, "optim": optim_state}
    dcp.load(target, checkpoint_id=checkpoint / SHARDS)
    set_state_dict(model, optimizer, model_state_dict=target["model"], optim_state_dict=target["optim"])
    return restore_progress(state, data_rng, scaler)


def restore_progress(state: dict, data_rng: torch.Generator, scaler: Any = None) -> int:
    """Put back what makes a resumed run continue exactly: the global (and CUDA) RNG states,
    the data sampler's generator and the fp16 loss scaler; return the step."""
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] and torch.cuda.is_available() and len(state["cuda_rng"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    data_rng.set_state(state["data_rng"])
    if scaler is not None and "scaler" in state:
        scaler.load_state_dict(state["scaler"])
    return int(state["step"])


# ---------------------------------------------------------------------------
# Loading a model for use: minillm checkpoints, exports and Hugging Face folders
# ---------------------------------------------------------------------------


def model_folder(path: str | os.PathLike) -> Path:
    """The folder holding the model files of `path`: a checkpoint/model folder itself, or a run's latest."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointNotFoundError(f"{path} is not a directory; pass a run folder (--out of train), a "
                                      "checkpoint folder, or a Hugging Face model folder")  # fmt: skip
    if (path / "config.json").is_file():
        return path
    if (path / "model" / "config.json").is_file():  # a fine-tuning run: its final model
        return path / "model"
    checkpoint = latest_checkpoint(path)
    if checkpoint is None:
        raise CheckpointNotFoundError(f"{path} holds no model (no config.json, no {CHECKPOINTS}/latest)")
    if not (checkpoint / "config.json").is_file():
        raise CheckpointNotFoundError(f"{path} is an unfinished fine-tuning run (its checkpoints hold training "
                                      "state, not a model folder); finish it with `python -m minillm finetune "
                                      f"--out {path} --resume`")  # fmt: skip
    return checkpoint


def load_model(path: str | os.PathLike, device: torch.device | str | None = None) -> tuple[GPT, Any]:
    """(model in eval mode, tokenizer) from a run folder, a checkpoint, an export or a Hugging Face folder.

    * a run folder: `--out` of train (its latest checkpoint) or of finetune (its `model/`);
    * a minillm checkpoint or model folder: `config.json` + `model.safetensors` + minillm's tokenizer;
    * a Hugging Face folder (`config.json` with a `model_type`, e.g. written by
      `minillm.hf.export_hf` or `save_pretrained`): `GPT.from_pretrained`, with
      minillm's tokenizer file if present, else GPT-2's `vocab.json` + `merges.txt`.

    Only safetensors and JSON are read: nothing in the folder can run code.
    """
    folder = model_folder(path)
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{folder / 'config.json'} is not valid JSON ({err})") from err
    if isinstance(config, dict) and "model_type" in config:
        model = GPT.from_pretrained(folder, device=device)
        if tokenizer_path(folder) is not None:
            tokenizer = load_tokenizer(folder)
        elif (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
            tokenizer = BPETokenizer.from_gpt2(folder)
        else:
            raise CheckpointNotFoundError(f"{folder} has no tokenizer minillm can read ({TOKENIZER_FILE}, or "
                                          "GPT-2's vocab.json + merges.txt)")  # fmt: skip
    else:
        if not (folder / "model.safetensors").is_file() and (folder / SHARDS).is_dir():
            raise CheckpointError(f"{folder} is a sharded checkpoint written without model.safetensors (an older "
                                  "minillm); resume the run once with its torchrun launch to write one")  # fmt: skip
        if tokenizer_path(folder) is None:
            raise CheckpointNotFoundError(f"{folder} has no {TOKENIZER_FILE}; checkpoints written by minillm "
                                          "include one")  # fmt: skip
        model = GPT.load(folder, device=device)
        tokenizer = load_tokenizer(folder)
    model.eval()
    return model, tokenizer


def export_checkpoint(checkpoint: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Copy the model of a checkpoint (or a run folder's latest) into `out_dir`: weights, config, tokenizer.

    Every save writes the full weights, sharded runs included, so this is a copy
    of safetensors and JSON files; `load_model(out_dir)` and `GPT.load` read it.
    """
    source, out = model_folder(checkpoint), Path(out_dir)
    if not (source / "model.safetensors").is_file():
        raise CheckpointNotFoundError(f"{source} has no model.safetensors to export")
    out.mkdir(parents=True, exist_ok=True)
    for name in ("model.safetensors", "config.json", "train_config.json"):
        if (source / name).is_file():
            with atomic_path(out / name) as tmp:
                shutil.copyfile(source / name, tmp)
    load_tokenizer(source).save(out / TOKENIZER_FILE)
    return out


def save_model_folder(folder: str | os.PathLike, model: nn.Module, tokenizer: Any,
                      run_config: TrainConfig | None = None) -> Path:  # fmt: skip
    """Write a model folder `load_model` reads (weights, config, tokenizer) through the commit path.

    `model` is anything with `save(directory)` (a `GPT`, a `GPTClassifier`).
    The folder appears complete or not at all; an existing one is replaced.
    """
    folder = Path(folder)
    tmp = staging_folder(folder.parent, folder.name)
    try:
        model.save(tmp)
        tokenizer.save(tmp / TOKENIZER_FILE)
        if run_config is not None:
            atomic_write(tmp / "train_config.json", run_config.to_json())
        return commit(tmp, latest=False)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------
# Any module and optimizer: a checkpoint API for builders
# ---------------------------------------------------------------------------


def save_checkpoint(model: nn.Module, optimizer: torch.optim.Optimizer | None, step: int,
                    path: str | os.PathLike) -> Path:  # fmt: skip
    """Save any module's weights (safetensors) and optimizer state (`torch.save`) in folder `path`, atomically.

    The folder is written beside `path` under a temporary name and renamed into
    place; an existing checkpoint at `path` is replaced only once the new one is complete.
    """
    path = Path(path)
    tmp = staging_folder(path.parent, path.name) if path.parent != path else None
    try:
        save_module_weights(model, str(tmp / "model.safetensors"))
        state = {"format": TRAINER_FORMAT, "version": 2, "step": int(step),
                 "optimizer": optimizer.state_dict() if optimizer is not None else None}  # fmt: skip
        torch.save(state, tmp / TRAINER_FILE)
        fsync_tree(tmp)
        old = path.parent / f".{path.name}.old"
        if path.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(tmp, path)
        fsync(path.parent)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def load_checkpoint(path: str | os.PathLike, model: nn.Module,
                    optimizer: torch.optim.Optimizer | None = None) -> int:  # fmt: skip
    """Load a `save_checkpoint` folder into `model` (and `optimizer`); return the saved step.

    Weights must match the module exactly (names and shapes); nothing is unpickled
    (`weights_only=True`).
    """
    path = Path(path)
    weights = path / "model.safetensors"
    if not weights.is_file():
        raise CheckpointNotFoundError(f"{weights} not found; pass a folder written by save_checkpoint")
    try:
        missing, unexpected = load_module_weights(model, str(weights), strict=False)
    except Exception as err:
        raise CheckpointError(f"{weights} does not fit the model or is damaged ({type(err).__name__}: {err})") from err
    if missing or unexpected:
        raise CheckpointError(f"{weights} does not match the model: missing {sorted(missing)[:8]}, "
                              f"unexpected {sorted(unexpected)[:8]}")  # fmt: skip
    state = read_trainer_state(path)
    if optimizer is not None:
        if state.get("optimizer") is None:
            raise CheckpointError(f"{path} holds no optimizer state")
        optimizer.load_state_dict(state["optimizer"])
    return int(state["step"])


def run_lock(folder: str | os.PathLike) -> FolderLock:
    """The lock of a run folder (`.minillm.lock`), held by the run that writes there."""
    return FolderLock(Path(folder) / LOCK_FILE)


@contextlib.contextmanager
def locked(folder: str | os.PathLike, break_lock: bool = False) -> Iterator[FolderLock]:
    """Hold the run lock of `folder` during a `with` block; `break_lock`: remove a stale one first."""
    lock = run_lock(folder)
    if break_lock:
        lock.break_lock()
    with lock:
        yield lock
