"""Watching a training run: throughput, MFU, metrics.jsonl, samples.txt and the loss plot (chapter 05).

Chapter 05 (`05_pretraining`) measures how fast training goes. Tokens per
second is the tokens of the optimizer steps since the last record divided by
their wall time (evaluations excluded). Model FLOPs utilization (MFU) compares
the FLOPs the model needs, `GPT.flops_per_token` (about 6 N plus the attention
term) times tokens/s, with the device's peak FLOP/s: `device_peak_flops` looks
GPUs up in `minillm.scaling.DEVICES`. A CPU's peak depends on its cores, clock
and vector units, so it is unknown unless you give it (`peak_tflops`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from minillm.errors import ConfigError, StorageError
from minillm.fileio import atomic_path, atomic_write
from minillm.scaling import DEVICES

log = logging.getLogger(__name__)


def _tqdm() -> Any:
    """tqdm's class for this front end, imported on first use: `tqdm.auto` warns at import time in a
    notebook without widgets, and a library import must print nothing."""
    from tqdm.auto import tqdm

    return tqdm


def progress_bar(total: int, initial: int = 0, enabled: bool = True, desc: str = "", unit: str = "step") -> Any:
    """A tqdm progress bar (a text bar in a terminal, a widget in JupyterLab); `enabled=False` shows nothing."""
    return _tqdm()(total=total, initial=initial, disable=not enabled, desc=desc, unit=unit, dynamic_ncols=True)


def device_peak_flops(device: torch.device, precision: str, peak_tflops: float = 0.0) -> float | None:
    """Peak FLOP/s for MFU: `peak_tflops` if given, else `minillm.scaling.DEVICES` for known GPUs.

    A CUDA device whose name contains a table key (e.g. "H100") gets its bf16 peak
    under bf16, else its tf32 (or fp32) peak. CPUs and unknown GPUs: None (MFU unknown).
    """
    if peak_tflops > 0:
        return peak_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, spec in DEVICES.items():
        if key in name:
            fmt = "bf16" if precision == "bf16" else "tf32" if torch.backends.cuda.matmul.allow_tf32 else "fp32"
            return spec.peak.get(fmt, spec.peak.get("fp16"))
    return None


def mfu(flops_per_token: float, tokens_per_s: float, peak: float) -> float:
    """Model FLOPs utilization: the fraction of the device's peak FLOP/s spent on the model's own FLOPs."""
    if peak <= 0:
        raise ConfigError(f"peak FLOP/s must be > 0, got {peak}")
    return flops_per_token * tokens_per_s / peak


class MetricsLog:
    """The run's records, appended to `out/metrics.jsonl` as they come (none written if `out` is None).

    A resumed run first drops the records logged after its checkpoint's step,
    so the file never holds a step twice.
    """

    def __init__(self, out: Path | None, start_step: int) -> None:
        self.out, self.fh = out, None
        self.records: list[dict] = []
        if out is None:
            return
        path = out / "metrics.jsonl"
        if path.exists():  # a resumed run: keep what the checkpoint had seen (a torn last line is dropped)
            self.records = [r for r in read_metrics(path, repair=True) if r["step"] <= start_step]
            atomic_write(path, "".join(json.dumps(r) + "\n" for r in self.records))
        self.fh = open(path, "a", encoding="utf-8")

    def write(self, record: dict, on_step: Callable[[dict], None] | None = None) -> None:
        """Append one record (and pass it to `on_step`)."""
        self.records.append(record)
        if self.fh is not None:
            try:
                self.fh.write(json.dumps(record) + "\n")
                self.fh.flush()
            except OSError as err:
                raise StorageError(f"could not append to {self.out / 'metrics.jsonl'} ({err}); the last checkpoint "
                                   "is intact: free some space, then continue with --resume (a torn last line "
                                   "is dropped then)") from err  # fmt: skip
        if on_step is not None:
            on_step(record)

    def sample(self, step: int, text: str, verbose: bool) -> None:
        """Print a generated sample (if `verbose`) and append it to `samples.txt`."""
        if verbose:
            _tqdm().write(f"--- sample at step {step} ---\n{text}\n")
        if self.out is not None:
            try:
                with open(self.out / "samples.txt", "a", encoding="utf-8") as fh:
                    fh.write(f"--- step {step} ---\n{text}\n\n")
            except OSError as err:
                raise StorageError(f"could not append to {self.out / 'samples.txt'} ({err}); free some space, "
                                   "then continue with --resume") from err  # fmt: skip

    def close(self) -> None:
        """Close metrics.jsonl (a failed flush of a full disk was already reported by `write`)."""
        if self.fh is not None:
            try:
                self.fh.close()
            except OSError:
                pass
            self.fh = None


def read_metrics(path: str | os.PathLike, repair: bool = False) -> list[dict]:
    """The records of a `metrics.jsonl` file (a missing file is an error).

    A run killed mid-write can leave a torn last line. `repair=True` drops it
    with a warning (a resumed run does this); otherwise it is an error, as is a
    bad line anywhere but the end.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; metrics.jsonl is written by minillm.train.train")
    lines = [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    records = []
    for i, line in enumerate(lines):
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or "step" not in record:
                raise ConfigError("not a metrics record")
        except ValueError as err:
            if repair and i == len(lines) - 1:
                log.warning("%s: dropped a torn last line (%d characters) left by an interrupted write", path,
                            len(line))
                break
            raise ConfigError(f"{path}, line {i + 1} is not a metrics record ({err})") from err
        records.append(record)
    return records


def plot_metrics(records: list[dict], path: str | os.PathLike | None = None, title: str = ""):
    """Train loss (raw, and a centred moving average) and validation loss against the step; PNG if `path`.

    Returns the matplotlib figure (closed when saved, so notebooks show it only once).
    """
    import matplotlib.pyplot as plt

    train = [(r["step"], r["train_loss"]) for r in records if "train_loss" in r]
    val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=90)
    if train:
        steps, losses = zip(*train)
        ax.plot(steps, losses, color="tab:blue", alpha=0.25, linewidth=0.8)
        w = max(1, len(losses) // 40) | 1  # an odd window: a centred mean does not lag behind
        smooth = np.convolve(losses, np.ones(w) / w, mode="valid")
        steps_smooth = steps[w // 2 : len(steps) - w // 2]
        ax.plot(steps_smooth, smooth, color="tab:blue", label="train (smoothed)" if w > 1 else "train")
    if val:
        ax.plot(*zip(*val), "o-", color="tab:orange", label="validation")
    ax.set(xlabel="step", ylabel="loss (nats/token)", title=title or "training loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    if path is not None:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
        plt.close(fig)
    return fig
