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
  optimizer state stay fp32; the loss is computed in fp32. fp16 autocast is the
  same with float16, whose narrow range needs a gradient scaler (the trainer
  makes one; see `minillm.distributed.make_grad_scaler`);
* `set_matmul_precision(device, precision)`: TF32 tensor cores on CUDA for the
  fp32 matrix multiplies of every precision except strict "fp32".

The formats (chapter 06): fp32 has 8 exponent and 23 mantissa bits; TF32
keeps the 8 exponent bits and 10 mantissa bits inside the tensor cores; bf16
has 8 and 7 (fp32's range, less precision); fp16 has 5 and 10 (more precision,
but values above 65504 overflow and gradients below ~6e-8 underflow to zero).
"""

from __future__ import annotations

import contextlib

import torch

from minillm.errors import ConfigError

PRECISIONS = ("auto", "fp32", "tf32", "bf16", "fp16")
#: The autocast dtype of each mixed precision; the others run in fp32.
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


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
        raise ConfigError(f"unknown device {device!r} ({err}); use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available; use device='auto' or 'cpu'")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {device!r} requested but MPS is not available; use device='auto' or 'cpu'")
    return dev


def resolve_precision(precision: str, device: torch.device) -> str:
    """"auto" -> "bf16" on CUDA, "fp32" elsewhere (CPUs without native bf16 are slower in it).

    "tf32" is fp32 with TF32 matrix multiplies on CUDA, plain "fp32" on other devices.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if precision == "tf32" and device.type != "cuda":
        return "fp32"
    return precision


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The context a forward pass runs in: bf16 or fp16 autocast, or nothing for fp32/tf32."""
    if precision in AUTOCAST_DTYPES:
        return torch.autocast(device_type=device.type, dtype=AUTOCAST_DTYPES[precision])
    return contextlib.nullcontext()


def set_matmul_precision(device: torch.device, precision: str) -> None:
    """On CUDA, allow TF32 tensor cores unless `precision` is strict "fp32"; elsewhere nothing.

    TF32 rounds the inputs of fp32 matrix multiplies to 10 mantissa bits (about
    3 decimal digits) and runs them several times faster; under bf16/fp16
    autocast it speeds up the matrix multiplies that stay in fp32.
    """
    if device.type == "cuda":
        allow = precision != "fp32"
        torch.backends.cuda.matmul.allow_tf32 = allow
        torch.backends.cudnn.allow_tf32 = allow
