"""Where and in which number format a model runs: device and precision choice (chapters 05-06).

Chapter 05 (`05_pretraining`) trains on whatever the reader has; chapter 06
(`06_scaling`) comes back to mixed precision. The same code path serves CPUs,
CUDA GPUs and Apple's MPS:

* `resolve_device("auto")`: CUDA if available, else MPS, else the CPU;
* `resolve_precision("auto", device)`: bf16 autocast on CUDA (tensor cores,
  no loss scaling needed), fp32 elsewhere (CPUs without native bf16 units run
  it slower than fp32);
* `autocast(device, precision)`: the context a forward pass runs in. Under bf16
  autocast, matrix multiplies run in bf16 while the weights, gradients and
  optimizer state stay fp32; the loss is computed in fp32.
"""

from __future__ import annotations

import contextlib

import torch

PRECISIONS = ("auto", "fp32", "bf16")


def resolve_device(device: str = "auto") -> torch.device:
    """"auto" -> CUDA if available, else MPS if available, else CPU; other names are checked."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"unknown device {device!r} ({err}); use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available; use device='auto' or 'cpu'")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r} requested but MPS is not available; use device='auto' or 'cpu'")
    return dev


def resolve_precision(precision: str, device: torch.device) -> str:
    """"auto" -> "bf16" on CUDA, "fp32" elsewhere (CPUs without native bf16 are slower in it)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The context a forward pass runs in: bf16 autocast, or nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
