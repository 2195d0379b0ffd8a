"""Benchmarks: `python -m minillm.bench NAME [options]`.

Each benchmark is a module of this package with a `main(argv)` function. Speed
is measured here, never in tests, and reported as a ratio against a reference
measured in the same run (plus tokens/s and MFU where they apply), together
with the device, library versions and date, so a reader can reproduce it.
"""

from __future__ import annotations

import datetime
import platform

BENCHMARKS = {
    "tokenizer": "minillm.bench.tokenizer",
    "model": "minillm.bench.model",
    "curation": "minillm.bench.curation",
    "train": "minillm.bench.train",
    "evaluate": "minillm.bench.evaluate",
    "finetune": "minillm.bench.finetune",
    "scaling": "minillm.bench.scaling",
    "gpu": "minillm.bench.gpu",
    "serve": "minillm.bench.serve",
    "compress": "minillm.bench.compress",
}


def sync(device) -> None:
    """Wait for the work queued on `device` (CUDA runs kernels asynchronously); nothing to wait for on a CPU."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn, device, repeat: int = 5, warmup: int = 0) -> float:
    """Median wall seconds of `fn()` over `repeat` calls after `warmup` untimed ones, the device's work included."""
    import time

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def matmul_flops(n: int = 2048, repeats: int = 5, device: str = "cpu") -> float:
    """Measured fp32 FLOP/s of an (n, n) @ (n, n) matrix multiply (best of `repeats`, after a warm-up).

    A CPU has no published peak to divide by; this is the ceiling the benchmarks'
    "fraction of the measured matmul peak" (a CPU's MFU) is taken against.
    """
    import time

    import torch

    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def environment() -> str:
    """A one-line description of where a benchmark ran (device, versions, date)."""
    import torch

    if torch.cuda.is_available():
        device = torch.cuda.get_device_name()
    else:
        import os

        device = f"CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"
    return (
        f"{device}; Python {platform.python_version()}, torch {torch.__version__}; "
        f"{datetime.date.today().isoformat()}"
    )
