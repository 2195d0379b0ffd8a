"""Training checkpoints: written atomically, resumed exactly (chapter 05).

Chapter 05 (`05_pretraining`) stops a run and resumes it on the same loss
curve. A run directory looks like this:

    out/
      train_config.json  tokenizer.json  metrics.jsonl  samples.txt  loss.png
      checkpoints/
        latest                 the name of the newest complete checkpoint
        step_0002000/
          config.json          the GPTConfig          } GPT.save (safetensors)
          model.safetensors    the weights            }
          tokenizer.json       the tokenizer
          train_config.json    the TrainConfig
          trainer.pt           optimizer state, step, RNG states, data sampler state

A checkpoint is written into a temporary folder and renamed into place only
when complete, and `latest` is replaced atomically afterwards: a crash or Ctrl-C
mid-write leaves the previous checkpoint as the latest. `trainer.pt` holds only
tensors, numbers and strings (`torch.save`), read back with
`torch.load(weights_only=True)`, which cannot run code from the file.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from minillm.fileio import atomic_write
from minillm.model import GPT, GPTConfig
from minillm.train import TrainConfig

CHECKPOINTS = "checkpoints"
TRAINER_FILE = "trainer.pt"
TRAINER_FORMAT = "minillm-trainer"
#: Settings a resumed run may change; any other difference is a mismatched checkpoint.
RESUMABLE = frozenset({
    "max_steps", "eval_interval", "eval_batches", "log_interval", "keep_checkpoints", "sample_prompt",
    "sample_tokens", "device", "compile", "peak_tflops", "activation_checkpointing", "reshard_after_forward",
})  # fmt: skip
_RUN_FILES = ("train_config.json", "tokenizer.json", "metrics.jsonl", "samples.txt", "loss.png")


def checkpoint_name(step: int) -> str:
    """The folder name of the checkpoint after `step` optimizer steps: step_0000123."""
    return f"step_{step:07d}"


def write_checkpoint_files(directory: Path, model: GPT, tokenizer: Any, config: TrainConfig,
                           trainer_state: dict | None = None) -> None:  # fmt: skip
    """Write one checkpoint's files (model, tokenizer, config, trainer state) into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    model.save(directory)  # config.json + model.safetensors
    tokenizer.save(directory / "tokenizer.json")
    atomic_write(directory / "train_config.json", json.dumps(dataclasses.asdict(config), indent=1) + "\n")
    if trainer_state is not None:
        tmp = directory / f".{TRAINER_FILE}.tmp"
        torch.save(trainer_state, tmp)
        os.replace(tmp, directory / TRAINER_FILE)


def save(run_dir: str | os.PathLike, step: int, model: GPT, optimizer: torch.optim.Optimizer,
         data_rng: torch.Generator, config: TrainConfig, tokenizer: Any, scaler: Any = None) -> Path:  # fmt: skip
    """Save the state after `step` steps as `run_dir/checkpoints/step_N`, point `latest` at it, prune.

    Keeps the newest `config.keep_checkpoints` checkpoints. Returns the checkpoint folder.
    `scaler`: an fp16 gradient scaler whose state is saved too. (Multi-process
    runs save sharded checkpoints with `minillm.distributed.save_checkpoint`.)
    """
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(step)
    tmp = root / f".{final.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)  # debris of an earlier crash
    state = {
        "format": TRAINER_FORMAT,
        "version": 1,
        "step": step,
        "optimizer": optimizer.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "data_rng": data_rng.get_state(),
    }
    if scaler is not None:
        state["scaler"] = scaler.state_dict()
    write_checkpoint_files(tmp, model, tokenizer, config, state)
    if final.exists():  # the same step saved again (e.g. stopped right after resuming)
        old = root / f".{final.name}.old"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)  # the checkpoint appears complete or not at all
    atomic_write(root / "latest", final.name + "\n")
    keep = sorted(p.name for p in root.glob("step_*") if p.is_dir())[-config.keep_checkpoints :]
    for path in root.iterdir():
        if path.is_dir() and path.name not in keep:
            shutil.rmtree(path, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint folder of a run (via `latest`), or None if there is none."""
    root = Path(run_dir) / CHECKPOINTS
    pointer = root / "latest"
    if pointer.is_file():
        target = root / pointer.read_text().strip()
        if (target / TRAINER_FILE).is_file():
            return target
    complete = sorted(p for p in root.glob("step_*") if (p / TRAINER_FILE).is_file())
    return complete[-1] if complete else None


def read_config(path: str | os.PathLike) -> TrainConfig:
    """The `TrainConfig` saved in a run or checkpoint folder (or a train_config.json file)."""
    path = Path(path)
    if path.is_dir():
        path = path / "train_config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; is this a minillm run or checkpoint folder?")
    fields = json.loads(path.read_text())
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    if set(fields) - known:
        raise ValueError(f"{path} has unknown TrainConfig fields {sorted(set(fields) - known)}")
    return TrainConfig(**fields)


def restore(checkpoint: Path, model: GPT, optimizer: torch.optim.Optimizer, data_rng: torch.Generator,
            device: torch.device | str = "cpu", scaler: Any = None) -> int:  # fmt: skip
    """Load a checkpoint into `model`, `optimizer`, `data_rng` and the global RNGs (and `scaler`); return its step.

    Raises ValueError when the checkpoint's model does not match `model`'s config,
    or when it is a sharded (multi-process) checkpoint.
    """
    if not (checkpoint / "model.safetensors").is_file() and (checkpoint / "dcp").is_dir():
        raise ValueError(f"{checkpoint} is a sharded checkpoint of a multi-process run; resume it with the same "
                         "torchrun launch and --strategy, or export it (minillm.distributed.export_checkpoint)")
    from safetensors.torch import load_file

    saved = GPTConfig(**json.loads((checkpoint / "config.json").read_text()))
    if saved != model.config:
        diff = {k: (v, getattr(model.config, k)) for k, v in dataclasses.asdict(saved).items()
                if getattr(model.config, k) != v}  # fmt: skip
        raise ValueError(f"checkpoint {checkpoint} holds a different model: (saved, requested) = {diff}")
    model.load_weights(load_file(checkpoint / "model.safetensors"), source=str(checkpoint))
    state = read_trainer_state(checkpoint)
    optimizer.load_state_dict(state["optimizer"])
    return restore_progress(state, data_rng, scaler)


def read_trainer_state(checkpoint: Path) -> dict:
    """The trainer state of a checkpoint (`trainer.pt`, loaded with `weights_only=True`)."""
    state = torch.load(checkpoint / TRAINER_FILE, map_location="cpu", weights_only=True)
    if state.get("format") != TRAINER_FORMAT:
        raise ValueError(f"{checkpoint / TRAINER_FILE} is not a minillm trainer state")
    return state


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


def prepare_run_dir(out: Path, config: TrainConfig, resume: bool, overwrite: bool) -> dict:
    """Check `out` for a new run or a resume; returns {"checkpoint": Path | None, "tokenizer": ... | None}.

    A new run needs an empty or missing `out` (or `overwrite`, which deletes the
    run files and checkpoints there, nothing else). A resume needs a checkpoint
    whose config matches `config` except for `RESUMABLE` settings.
    """
    from minillm.tokenizer import load_tokenizer

    if resume and overwrite:
        raise ValueError("choose either resume (continue the run) or overwrite (start over), not both")
    if resume:
        checkpoint = latest_checkpoint(out)
        if checkpoint is None:
            raise FileNotFoundError(f"no checkpoint in {out}/{CHECKPOINTS} to resume from; start without --resume")
        saved = dataclasses.asdict(read_config(checkpoint))
        diff = {k: (saved[k], v) for k, v in dataclasses.asdict(config).items()
                if saved[k] != v and k not in RESUMABLE}  # fmt: skip
        if diff:
            raise ValueError(
                f"the checkpoint in {checkpoint} was trained with other settings, (saved, requested): {diff}. "
                f"Resume with the saved settings (only {sorted(RESUMABLE)} may change) or start a new run."
            )
        return {"checkpoint": checkpoint, "tokenizer": load_tokenizer(checkpoint / "tokenizer.json")}
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a directory; choose another output directory")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} already exists and is not empty; pass --resume to continue its run, "
                                  "--overwrite to start over, or choose another --out")  # fmt: skip
        shutil.rmtree(out / CHECKPOINTS, ignore_errors=True)
        for name in _RUN_FILES:
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    return {"checkpoint": None, "tokenizer": None}


def write_run_files(out: Path, config: TrainConfig, tokenizer: Any) -> None:
    """The run's own copies of its config and tokenizer (checkpoints carry theirs too)."""
    atomic_write(out / "train_config.json", json.dumps(dataclasses.asdict(config), indent=1) + "\n")
    tokenizer.save(out / "tokenizer.json")


def load_model(path: str | os.PathLike, device: torch.device | str | None = None) -> tuple[GPT, Any]:
    """(model in eval mode, tokenizer) from a run folder (its latest checkpoint) or a checkpoint folder (sharded too)."""
    from minillm.tokenizer import load_tokenizer

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is not a directory; pass a run folder (--out of train) or a checkpoint")
    if not (path / "model.safetensors").is_file() and not (path / "dcp").is_dir():
        checkpoint = latest_checkpoint(path)
        if checkpoint is None:
            raise FileNotFoundError(f"{path} holds no checkpoint (no model.safetensors, no {CHECKPOINTS}/latest)")
        path = checkpoint
    if not (path / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{path} has no tokenizer.json; checkpoints written by minillm.train include one")
    if (path / "model.safetensors").is_file():
        model = GPT.load(path, device=device)
    else:  # a sharded checkpoint of a multi-process run, gathered here in one process
        from minillm.distributed import load_sharded_model

        model = load_sharded_model(path, device=device)
    model.eval()
    return model, load_tokenizer(path / "tokenizer.json")
