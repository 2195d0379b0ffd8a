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

import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

_ROOT = Path(__file__).resolve().parent

_SHARED = Path(__file__).resolve().parent.parent / "shared" / "data"
if _SHARED.is_dir():
    os.environ.setdefault("MINILLM_DATA_DIR", str(_SHARED))
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(_SHARED / "tiktoken-cache"))

#: The CPU kernels every pytest process and notebook kernel uses on x86-64: AVX2 code in
#: PyTorch's own kernels (softmax, norms, reductions, the fused AdamW, CPU flash attention)
#: and in MKL's matrix products. PyTorch otherwise picks AVX-512 code where the CPU has it,
#: and AVX-512 rounds differently in the last bits: the book model of the preset's earlier,
#: larger run, trained on such a CPU, ended at a validation loss of 3.18830 instead of
#: 3.18779, and its sampled text, and every output that quotes it, differed. The committed
#: notebook outputs come from AVX2 kernels, which every x86-64 CPU of the last decade has;
#: pinned here (before anything imports torch), a CI machine of either kind reproduces them. Set the variables yourself
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
#: policy changes no number (the work is split the same way); it applies to the workers,
#: the kernels they start and the background training of the book model (below).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


#: What a notebook needs from the cache, read from its source: the chat model
#: (`book_chat_run`, `book_chat_model`) or the book model (`book_run(`, `book_model(`).
_NEEDS_CHAT = re.compile(r"book_chat_(run|model)")
_NEEDS_BOOK = re.compile(r"book_(run|model)\(")


def _needs(notebook: Path) -> int:
    """0: a notebook (or test file) that needs no book model; 1: the book model; 2: its chat version."""
    if notebook.suffix != ".ipynb":
        return 0
    text = notebook.read_text(encoding="utf-8")
    return 2 if _NEEDS_CHAT.search(text) else 1 if _NEEDS_BOOK.search(text) else 0


def _runs_book_notebooks(config) -> bool:
    """Whether this pytest run collects a notebook that loads the book model (or its chat version)."""
    for arg in config.args:
        path = (Path(config.invocation_params.dir) / arg.split("::")[0]).resolve()
        if path.is_dir():
            notebooks = (nb for nb in path.rglob("*.ipynb") if ".ipynb_checkpoints" not in nb.parts)
            if any(_needs(nb) for nb in notebooks if ".venv" not in nb.relative_to(path).parts):
                return True
        elif path.is_file() and _needs(path):
            return True
    return False


#: The training of the book model and its chat version, started in the background by
#: `pytest_configure`; each step printed with its time.
_TRAIN_BOOK = """
import os, signal, sys, threading, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stopped by pytest_unconfigure: clean up, release the lock


def stop_with_the_parent(parent=os.getppid()):  # pytest killed (SIGTERM, kill -9): no orphan keeps training
    while os.getppid() == parent:
        time.sleep(1)
    os.kill(os.getpid(), signal.SIGTERM)


threading.Thread(target=stop_with_the_parent, daemon=True).start()
from minillm.pretrained import book_chat_run, book_run
start = time.perf_counter()
folder, trained = book_run(progress=False)
print(f"book model {'trained' if trained else 'found cached'} in {time.perf_counter() - start:.0f} s: {folder}", flush=True)
start = time.perf_counter()
folder, trained = book_chat_run()  # chapter 07's instruction tuning, which appendices C and E load
print(f"book chat model {'tuned' if trained else 'found cached'} in {time.perf_counter() - start:.0f} s: {folder}", flush=True)
"""


def pytest_configure(config):
    """Start training the book model (then its chat version) in the background when the run has notebooks that load it.

    Chapters 03, 05, 07 and 08, appendices C and E and two solutions load the book
    model or its chat version from the cache (`minillm.book_run`, `book_chat_run`).
    Training takes 4 to 10 minutes on two cores: started here, in a process of its
    own, it runs while the xdist workers take the unit tests and the notebooks that
    need no book model (`pytest_collection_modifyitems` orders them first). A notebook
    that needs it waits on the run's lock (`minillm.pretrained._build_once`) and then
    loads it; nothing is trained twice. Its two threads keep the thread count the
    committed outputs were computed with (the bits depend on it), and PASSIVE OpenMP
    threads give their core to the workers' while they wait. Workers (and runs without
    such notebooks) skip this.
    """
    if hasattr(config, "workerinput") or not _runs_book_notebooks(config):
        return
    log = tempfile.NamedTemporaryFile("w+", prefix="minillm-book-", suffix=".log", delete=False)
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    process = subprocess.Popen([sys.executable, "-c", _TRAIN_BOOK], cwd=_ROOT, env=env, stdout=log,
                               stderr=subprocess.STDOUT)  # fmt: skip
    config.stash[_TRAINING] = (process, Path(log.name))
    log.close()
    _wait_until_it_holds_the_lock(process)


def _wait_until_it_holds_the_lock(process: subprocess.Popen, timeout: float = 300.0) -> None:
    """Return once the background process holds the book run's lock (or the run exists, or the process ended).

    Otherwise a notebook that starts at once (`pytest chapters/05_pretraining.ipynb`)
    could take the lock first and train inside its kernel, beside the background process.
    """
    import time

    from minillm.pretrained import book_run_folder

    target = book_run_folder()
    lock = target.with_name(f".{target.name}.lock")
    deadline = time.monotonic() + timeout
    while process.poll() is None and not target.is_dir() and time.monotonic() < deadline:
        try:
            if lock.read_text().startswith(f"pid {process.pid} "):
                return
        except FileNotFoundError:
            pass
        time.sleep(0.2)


_TRAINING = pytest.StashKey[tuple]()


def pytest_collection_modifyitems(config, items):
    """Run what needs no book model first, then what needs the book model, then what needs its chat version.

    Within each group, the longest notebooks first (their committed cells' execution
    times), so that the short ones fill the end of the run. Every worker collects
    the same order; `--no-loadscope-reorder` (pyproject.toml) keeps xdist to it.
    """
    cost: dict[Path, tuple[int, float]] = {}

    def key(item) -> tuple[int, float]:
        path = Path(str(item.path))
        if path not in cost:
            cost[path] = (_needs(path), -_recorded_seconds(path))
        return cost[path]

    items.sort(key=key)  # stable: a file's items keep their order


#: Test files that take minutes, started first: the torchrun launches of test_distributed.py
#: (about 160 s in CI, the longest item of the suite), and the website's build and browser test.
_LONG_TEST_FILES = {"test_distributed.py": 160.0, "test_site.py": 150.0}


def _recorded_seconds(path: Path) -> float:
    """A notebook's execution time as its committed cells record it; a test file's from `_LONG_TEST_FILES`, else 0."""
    if path.suffix != ".ipynb":
        return _LONG_TEST_FILES.get(path.name, 0.0)
    from datetime import datetime

    total = 0.0
    for cell in json.loads(path.read_text(encoding="utf-8")).get("cells", []):
        times = cell.get("metadata", {}).get("execution", {})
        start, end = times.get("iopub.execute_input"), times.get("shell.execute_reply")
        if start and end:
            total += (datetime.fromisoformat(end.replace("Z", "+00:00"))
                      - datetime.fromisoformat(start.replace("Z", "+00:00"))).total_seconds()  # fmt: skip
    return total


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """How long the background training took (its log), and its failure if it failed."""
    training = config.stash.get(_TRAINING, None)
    if training is None:
        return
    process, log = training
    if process.poll() is None:
        return  # still training: the run loaded neither model (pytest_unconfigure stops it)
    text = log.read_text(errors="replace").strip()
    terminalreporter.write_sep("-", "book model (trained in the background)")
    terminalreporter.write_line(text if process.returncode == 0 else text[-5000:])


def pytest_sessionfinish(session, exitstatus):
    """A failed background training fails the run, even if no notebook happened to need it."""
    training = session.config.stash.get(_TRAINING, None)
    if training is not None and training[0].poll() not in (None, 0) and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_unconfigure(config):
    """Stop a background training the run no longer needs (interrupted, or the notebooks deselected)."""
    training = config.stash.get(_TRAINING, None)
    if training is None:
        return
    process, log = training
    if process.poll() is None:
        process.terminate()  # an unfinished run leaves only its hidden staging folder, cleared next time
        process.wait()
    log.unlink(missing_ok=True)
