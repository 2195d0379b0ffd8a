"""pytest settings for the whole run (unit tests and notebooks alike).

A developer's checkout has the book's offline data mirror beside it
(`../shared/data`): when it is there and nothing else was configured, point
minillm and tiktoken at it, so `pytest` (and the notebook kernels nbval starts,
which inherit this environment) need no network. Elsewhere the data layer
downloads and caches files as it would for any reader. On x86-64 it also pins the
CPU kernels (`REPRODUCIBLE_CPU_KERNELS`), so that a CI machine with AVX-512 computes
the book model and the notebooks' outputs bit for bit as one without it does.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

_ROOT = Path(__file__).resolve().parent

_SHARED = Path(__file__).resolve().parent.parent / "shared" / "data"
if _SHARED.is_dir():
    os.environ.setdefault("MINILLM_DATA_DIR", str(_SHARED))
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(_SHARED / "tiktoken-cache"))

#: The CPU kernels every pytest process and notebook kernel uses on x86-64: AVX2 code in
#: PyTorch's own kernels (softmax, norms, reductions, the fused AdamW, CPU flash attention)
#: and in MKL's matrix products. PyTorch otherwise picks AVX-512 code where the CPU has it,
#: and AVX-512 rounds differently in the last bits: the book model trained on such a CPU
#: ends at a validation loss of 3.18830 instead of 3.18779, and its sampled text, and
#: every output that quotes it, differ. The committed notebook outputs come from AVX2
#: kernels, which every x86-64 CPU of the last decade has; pinned here (before anything
#: imports torch), a CI machine of either kind reproduces them. Set the variables yourself
#: to re-execute a notebook exactly: `ATEN_CPU_CAPABILITY=avx2 MKL_CBWR=AVX2 jupyter nbconvert ...`.
REPRODUCIBLE_CPU_KERNELS = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2"}
if platform.machine().lower() in ("x86_64", "amd64"):
    for _name, _value in REPRODUCIBLE_CPU_KERNELS.items():
        os.environ.setdefault(_name, _value)

#: xdist runs two workers on the two cores, each a notebook kernel or a test that may
#: use two threads: the cores are oversubscribed. OpenMP's idle threads then spin and
#: take the core from the thread that has work: measured on the book model's training
#: step (2 threads) beside one busy process, 578 ms a step with the default (spinning)
#: policy and 377 ms with PASSIVE (186 ms alone); in a CI run chapter 07's cells took
#: 995 s beside the other worker against 131 s alone. PASSIVE idle threads sleep. The
#: policy changes no number (the work is split the same way); it applies to the workers
#: and the kernels they start, not to the main process, which trains the book model
#: alone before the workers start.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _runs_chapters(config) -> bool:
    """Whether this pytest run collects notebooks that use the book model: chapters, appendix, solutions."""
    books = (_ROOT / "chapters", _ROOT / "appendix")
    for arg in config.args:
        path = (Path(config.invocation_params.dir) / arg.split("::")[0]).resolve()
        if path == _ROOT or any(path == b or b in path.parents for b in books):
            return True
    return False


def pytest_configure(config):
    """Train the book model (and its chat version) once, before the notebooks start, when a run includes the chapters.

    Chapters 03, 05, 07 and 08 and the appendix load the book model (`minillm.book_run`); chapter 07
    and appendix C the chat model (`minillm.pretrained.book_chat_run`). Trained inside one
    notebook while the other xdist worker runs, two processes of two threads each share two
    cores and the run crawls; trained here first, alone, it takes its normal time and every
    notebook then loads it from the cache. Workers (and runs without the chapters) skip this.
    """
    if hasattr(config, "workerinput") or not _runs_chapters(config):
        return
    import time

    from minillm.pretrained import book_chat_run, book_run

    start = time.perf_counter()
    folder, trained = book_run(progress=False)
    what = "trained" if trained else "found cached"
    print(f"\nbook model {what} in {time.perf_counter() - start:.0f} s: {folder}", flush=True)
    start = time.perf_counter()
    folder, trained = book_chat_run()  # chapter 07's instruction tuning, which appendix C serves
    what = "tuned" if trained else "found cached"
    print(f"book chat model {what} in {time.perf_counter() - start:.0f} s: {folder}", flush=True)
