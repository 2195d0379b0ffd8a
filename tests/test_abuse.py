"""Abuse: every command given a wrong, damaged or absurd input fails cleanly, and touches nothing.

Each case of `CASES` runs `python -m minillm ...` in a real subprocess, in a
folder of its own holding a copy of one tiny trained run (built once for the
module) and a planted user file, and checks what a user sees:

* the exit status: 2 for a user's mistake, 3 for a failed run, 130 for Ctrl-C,
  0 where the command has nothing to do and says so;
* `error: ...` on stderr, naming what was wrong (the expected words), and no
  Python traceback anywhere;
* the files that were there before (the planted one, the whole run) are
  byte-for-byte and mtime-for-mtime as they were, and a command that fails
  writes no new file.

Cases that argparse rejects import no torch and cost a fraction of a second; the
others import torch (a few seconds each). The in-process tests at the end check
the same rules on the library's side (`minillm.config`, `minillm.memory`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from minillm.checkpoint import read_config
from minillm.config import TrainConfig, apply_overrides, check_model_fields, preset_config, settings
from minillm.corpus import check_data_settings, read_documents
from minillm.errors import CheckpointError, ConfigError
from minillm.memory import available_memory, check_fits
from minillm.model import GPTConfig

TINY = ["--preset", "shakespeare-char", "--data", "the-verdict", "--n-layer", "1", "--n-head", "2", "--d-model", "32",
        "--context-length", "32", "--eval-batches", "1", "--sample-tokens", "0", "--no-progress"]  # fmt: skip
NEW = ["train", *TINY, "--max-steps", "2", "--eval-interval", "2", "--out", "{tmp}/new"]  # a new run in the case folder
STEP = "checkpoints/step_0000002"  # the tiny run's one checkpoint
PLANTED = "notes.txt"  # a user's file in the case folder and in the run folder


def _env(cache: Path) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MINILLM_CACHE_DIR": str(cache)}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)  # never under torchrun, even when pytest itself is
    return env


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    return _env(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, env) -> Path:
    """One tiny trained run (2 steps, 1 layer, width 32), copied by each case that uses it."""
    out = tmp_path_factory.mktemp("trained") / "run"
    cmd = [sys.executable, "-m", "minillm", "train", *TINY, "--max-steps", "2", "--eval-interval", "2",
           "--out", str(out)]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    return out


# ---------------------------------------------------------------------------
# Damage done to a case's copy of the run before the command runs
# ---------------------------------------------------------------------------


def truncate(name: str) -> Callable[[Path], None]:
    def damage(tmp: Path) -> None:
        path = tmp / "run" / STEP / name
        path.write_bytes(path.read_bytes()[:1000])

    damage.__name__ = f"truncate {name}"
    return damage


def garble_config(tmp: Path) -> None:
    (tmp / "run" / STEP / "train_config.json").write_text('{"lr": 0.001,\n "max_steps": oops}\n')


def non_utf8_file(tmp: Path) -> None:
    (tmp / "corpus").mkdir()
    (tmp / "corpus" / "good.txt").write_text("plain text " * 50)
    (tmp / "corpus" / "latin1.txt").write_bytes("caf\xe9 cr\xe8me ".encode("latin-1") * 50)


@dataclasses.dataclass
class Case:
    """One command line and what it must do. `{run}` is the case's copy of the trained run, `{tmp}` its folder."""

    id: str
    args: list[str]
    code: int = 2
    words: tuple[str, ...] = ()  # expected in stderr (in stdout when `code` is 0 or 130)
    damage: Callable[[Path], None] | None = None
    writes: bool = False  # may create files (a run that started, Ctrl-C)
    lock: bool = False  # a live process holds the run's lock
    interrupt: bool = False  # send Ctrl-C once training runs


CASES = [
    # -- parsed by argparse (no torch import) ---------------------------------------------------------
    Case("generate --num-samples 0", ["generate", "--checkpoint", "{run}", "--num-samples", "0"],
         words=("--num-samples", "integer >= 1")),
    Case("generate --temperature nan", ["generate", "--checkpoint", "{run}", "--temperature", "nan"],
         words=("--temperature", "finite number >= 0")),
    Case("generate --top-k -1", ["generate", "--checkpoint", "{run}", "--top-k", "-1"], words=("--top-k", "0: all")),
    Case("generate --top-p 1.5", ["generate", "--checkpoint", "{run}", "--top-p", "1.5"], words=("--top-p", "(0, 1]")),
    Case("generate --max-new-tokens -3", ["generate", "--checkpoint", "{run}", "--max-new-tokens", "-3"],
         words=("--max-new-tokens", ">= 0")),
    Case("generate --seed -1", ["generate", "--checkpoint", "{run}", "--seed", "-1"], words=("--seed",)),
    Case("quickstart --max-steps 0", ["quickstart", "--out", "{tmp}/qs", "--max-steps", "0"],
         words=("--max-steps", "integer >= 1")),
    Case("export --format onnx", ["export", "--checkpoint", "{run}", "--out", "{tmp}/x", "--format", "onnx"],
         words=("--format", "invalid choice")),
    Case("unknown command", ["trian", "--out", "{tmp}/x"], words=("invalid choice", "train")),
    Case("generate --help shows defaults", ["generate", "--help"], code=0,
         words=("(default: 200)", "(default: 0.8)", "(default: 50)", "(default: 1)", "(default: auto)")),
    Case("datasets --help explains", ["datasets", "--help"], code=0, words=("List every data set",)),
    # -- settings that cannot work: refused before anything is written ------------------------------
    Case("train --grad-clip nan", [*NEW, "--grad-clip", "nan"], words=("grad_clip", "finite number >= 0")),
    Case("train --max-chars -1", [*NEW, "--max-chars", "-1"], words=("max_chars", ">= 0", "0: the whole corpus")),
    Case("train --lr nan", [*NEW, "--lr", "nan"], words=("lr must be a finite number > 0",)),
    Case("train --lr inf", [*NEW, "--lr", "inf"], words=("lr must be a finite number > 0",)),
    Case("train --val-fraction nan", [*NEW, "--val-fraction", "nan"], words=("val_fraction", "between 0 and 1")),
    Case("train --d-model 0", [*NEW, "--d-model", "0"], words=("d_model must be a positive integer",)),
    Case("train --n-head 0", [*NEW, "--n-head", "0"], words=("n_head must be a positive integer",)),
    Case("train --context-length -5", [*NEW, "--context-length", "-5"], words=("context_length", "positive")),
    Case("train --dropout 1.5", [*NEW, "--dropout", "1.5"], words=("dropout", "[0, 1)")),
    Case("train --device tpu", [*NEW, "--device", "tpu"], words=("unknown device 'tpu'",)),
    Case("train --batch-size 100000000 (memory)", [*NEW, "--batch-size", "100000000"],
         words=("GiB", "available on cpu", "batch_size")),
    Case("train --data-files without --data files", [*NEW, "--data-files", "{tmp}/corpus/*.txt"],
         words=("data_files", "--data files")),
    Case("train --exclude-files on the-verdict", [*NEW, "--exclude-files", "*.py"], words=("exclude_files",)),
    Case("train --data-files non-UTF-8", [*NEW, "--data", "files", "--data-files", "{tmp}/corpus/*.txt"],
         words=("latin1.txt", "not UTF-8"), damage=non_utf8_file),
    Case("train unknown preset", ["train", "--preset", "shakespear", "--out", "{tmp}/x"],
         words=("unknown preset 'shakespear'", "shakespeare-char")),
    Case("train unknown setting", [*NEW, "--learning-rate", "3e-4"], words=("unknown setting", "--lr")),
    Case("train --strategy ddp without torchrun", [*NEW, "--strategy", "ddp"], words=("torchrun",)),
    Case("prepare --vocab-size 0", ["prepare", "the-verdict", "--vocab-size", "0", "--out", "{tmp}/x"],
         words=("vocab_size",)),
    Case("prepare --val-fraction nan", ["prepare", "the-verdict", "--val-fraction", "nan", "--out", "{tmp}/x"],
         words=("val_fraction",)),
    Case("export --out inside the run", ["export", "--checkpoint", "{run}", "--out", "{run}/export"],
         words=("inside --checkpoint",)),
    # -- damaged, missing or busy runs ----------------------------------------------------------------
    Case("generate: truncated model.safetensors", ["generate", "--checkpoint", "{run}"],
         words=("model.safetensors", "truncated or corrupt"), damage=truncate("model.safetensors")),
    Case("evaluate: truncated model.safetensors",
         ["evaluate", "--checkpoint", "{run}", "--tasks", "arc-easy", "--limit", "2", "--out", "{tmp}/e.json"],
         words=("model.safetensors",), damage=truncate("model.safetensors")),
    Case("finetune: truncated model.safetensors",
         ["finetune", "--task", "classify", "--checkpoint", "{run}", "--out", "{tmp}/ft", "--max-steps", "1"],
         words=("model.safetensors",), damage=truncate("model.safetensors")),
    Case("train --resume: truncated model.safetensors", ["train", "--out", "{run}", "--resume", "--max-steps", "4"],
         words=("model.safetensors",), damage=truncate("model.safetensors")),
    Case("train --resume: truncated trainer.pt", ["train", "--out", "{run}", "--resume", "--max-steps", "4"],
         words=("trainer.pt",), damage=truncate("trainer.pt")),
    Case("train --resume: broken train_config.json", ["train", "--out", "{run}", "--resume"],
         words=("train_config.json", "line 2"), damage=garble_config),
    Case("generate: missing checkpoint folder", ["generate", "--checkpoint", "{tmp}/no-such-run"],
         words=("no-such-run",)),
    Case("quickstart --resume: no run there", ["quickstart", "--out", "{tmp}/no-such-run", "--resume"],
         words=("no checkpoint",)),
    Case("quickstart into an existing run", ["quickstart", "--out", "{run}", "--max-steps", "1"],
         words=("--resume", "--overwrite")),
    Case("train --resume: run locked by a live process", ["train", "--out", "{run}", "--resume", "--max-steps", "4"],
         words=("in use by a live run",), lock=True),
    # -- runs that stop: a finished run, a diverging run, Ctrl-C ----------------------------------------
    Case("train --resume: run already finished", ["train", "--out", "{run}", "--resume"], code=0,
         words=("already finished", "step 2", "--max-steps 4")),
    Case("train --lr 1e30 diverges", [*NEW[:-2], "--max-steps", "5", "--lr", "1e30", "--warmup-steps", "0",
                                       "--out", "{tmp}/new"], code=3, words=("training loss is",), writes=True),
    Case("train Ctrl-C", ["train", *TINY, "--max-steps", "100000", "--eval-interval", "100000", "--out", "{tmp}/new"],
         code=130, words=("last val loss", "measured at step 0", "--resume"), writes=True, interrupt=True),
]  # fmt: skip


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """{relative path: (sha256, mtime_ns)} of every file under `folder`."""
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip


def _hold_lock(folder: Path, env: dict) -> subprocess.Popen:
    """A live process holding the run lock of `folder` (until it is killed)."""
    code = ("import sys, time\nfrom minillm.checkpoint import run_lock\nrun_lock(sys.argv[1]).acquire()\n"
            "print('locked', flush=True)\ntime.sleep(600)\n")  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def _interrupt(proc: subprocess.Popen, out: Path) -> None:
    """Send Ctrl-C once `out`'s metrics hold step 0's evaluation and a training step."""
    deadline = time.time() + 120
    metrics = out / "metrics.jsonl"
    while time.time() < deadline and proc.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_abuse(case: Case, trained: Path, env: dict, tmp_path: Path):
    shutil.copytree(trained, tmp_path / "run")
    (tmp_path / PLANTED).write_text("a user's file: never touched\n")
    (tmp_path / "run" / PLANTED).write_text("a user's file in the run folder\n")
    if case.damage is not None:
        case.damage(tmp_path)
    args = [a.format(run=tmp_path / "run", tmp=tmp_path) for a in case.args]
    holder = _hold_lock(tmp_path / "run", env) if case.lock else None
    before = snapshot(tmp_path)
    try:
        proc = subprocess.Popen([sys.executable, "-m", "minillm", *args], cwd=tmp_path, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
        if case.interrupt:
            _interrupt(proc, tmp_path / "new")
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        for p in (proc, holder):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    shown = f"exit {proc.returncode}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    assert proc.returncode == case.code, shown
    assert "Traceback" not in stdout + stderr, shown
    if case.code in (2, 3):
        assert stderr.startswith("error: ") or "\nerror: " in stderr, shown
    where = stderr if case.code in (2, 3) else stdout
    for words in case.words:
        assert words in where, shown
    after = snapshot(tmp_path)
    changed = [name for name, seen in before.items() if after.get(name) != seen]
    assert not changed, f"changed or removed: {changed}\n{shown}"
    if not case.writes:
        assert set(after) == set(before), f"new files: {sorted(set(after) - set(before))}\n{shown}"


# ---------------------------------------------------------------------------
# The library's side: every setting checked, the memory estimate refused in time
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", [s.name for s in settings().values() if s.type_name in ("int", "float")])
def test_every_number_setting_refuses_nan_and_negative_values_by_name(name):
    setting = settings()[name]
    bad = ["-1", "-7"] + (["nan", "inf", "-inf"] if setting.type_name == "float" else [])
    for text in bad:
        with pytest.raises(ConfigError, match=name):
            preset_config("shakespeare-char", **{name: text})


def test_model_fields_are_blamed_by_their_own_name():
    c = TrainConfig()
    for name, value in (("d_model", "0"), ("n_head", "0"), ("context_length", "-5"), ("n_layer", "0"),
                        ("d_ff", "0"), ("n_kv_head", "0"), ("vocab_multiple", "0")):  # fmt: skip
        with pytest.raises(ConfigError, match=f"^{name} must be"):
            apply_overrides(c, {name: value})
    with pytest.raises(ConfigError, match="^norm_eps must be a finite number > 0"):
        check_model_fields({"norm_eps": math.nan})  # a dict of GPTConfig fields, the others their defaults
    with pytest.raises(ConfigError, match="^dropout must be a probability in \\[0, 1\\)"):
        apply_overrides(c, {"dropout": "1.5"})
    # a config read back from JSON is checked before the model is made, too
    fields = c.to_dict()
    fields["model"]["d_model"] = 0
    with pytest.raises(ConfigError, match="^d_model must be"):
        TrainConfig.from_dict(fields)
    fields["model"]["d_model"], fields["grad_clip"] = 128, math.nan
    with pytest.raises(ConfigError, match="grad_clip"):
        TrainConfig.from_dict(fields)


def test_data_settings_must_be_used_by_the_corpus(tmp_path):
    with pytest.raises(ConfigError, match="data_files is read only with data 'files'"):
        check_data_settings(TrainConfig(data="the-verdict", data_files="notes/*.txt"))
    with pytest.raises(ConfigError, match="data_files is read only with data 'files'"):
        read_documents(TrainConfig(data="the-verdict", data_files="notes/*.txt"))
    with pytest.raises(ConfigError, match="data 'files' needs data_files"):
        TrainConfig(data="files")
    with pytest.raises(ConfigError, match="exclude_files works on the 'python-stdlib' corpus"):
        check_data_settings(TrainConfig(data="the-verdict", exclude_files="*.py"))
    check_data_settings(TrainConfig(data="files", data_files="notes/*.txt"))  # fine
    check_data_settings(TrainConfig(data="python-stdlib", exclude_files="encodings/*"))  # fine
    (tmp_path / "folder.txt").mkdir()  # a folder that matches the glob is not a file to read
    (tmp_path / "a.txt").write_text("text " * 20)
    docs = list(read_documents(TrainConfig(data="files", data_files=str(tmp_path / "*.txt"))))
    assert docs == ["text " * 20]


def test_check_fits_refuses_what_cannot_fit_and_says_by_how_much():
    model = GPTConfig(vocab_size=65, context_length=32, d_model=32, n_layer=1, n_head=2)
    estimate = check_fits(model, micro_batch=4, available=2**30)
    assert 0 < estimate.total < 2**30
    with pytest.raises(ConfigError) as err:
        check_fits(model, micro_batch=10**8, available=8 * 2**30)
    message = str(err.value)
    assert "GiB" in message and "8.0 GiB available on cpu" in message and "batch_size" in message
    with pytest.raises(ConfigError, match="2 processes"):  # CPU ranks share one machine's memory
        check_fits(model, micro_batch=4, available=int(estimate.total * 1.5), processes=2)
    assert check_fits(model, micro_batch=10**8, device="meta").total > 2**40  # unknown free memory: not refused
    free = available_memory("cpu")
    assert free is None or free > 0
    # a million layers are counted without building them
    huge = dataclasses.replace(model, n_layer=10**6)
    with pytest.raises(ConfigError, match="GiB"):
        check_fits(huge, micro_batch=1, available=2**30)


def test_json_and_utf8_errors_name_the_file(tmp_path):
    path = tmp_path / "train_config.json"
    path.write_text('{"lr": 0.001,\n "max_steps": oops}\n')
    with pytest.raises(CheckpointError, match="train_config.json.*line 2"):
        read_config(path)
    path.write_bytes(b'{"sample_prompt": "\xff"}')
    with pytest.raises(CheckpointError, match="train_config.json"):
        read_config(path)

