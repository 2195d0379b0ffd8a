"""A full disk during a run: a clear error, the previous checkpoint intact, no debris, and a resume that works.

The disk is made "full" for one subprocess with `RLIMIT_FSIZE`: no file it
writes may grow past the limit (SIGXFSZ is ignored, so the write fails with
EFBIG as it would with ENOSPC). Checkpoint saves and `metrics.jsonl` appends
are each made to fail, then the same run is resumed without the limit and must
land on the losses of a run that never failed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from minillm import checkpoint as ckpt
from minillm.config import preset_config
from minillm.monitor import read_metrics
from minillm.train import train

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]
OVERRIDES = dict(data="the-verdict", n_layer=1, n_head=2, d_model=32, context_length=32, eval_interval=2,
                 eval_batches=1, sample_tokens=0, keep_checkpoints=3, max_steps=8, device="cpu")  # fmt: skip
SETTINGS = ["train", "--preset", "shakespeare-char", "--no-progress"] + [a for k, v in OVERRIDES.items()
                                                                for a in (f"--{k.replace('_', '-')}", str(v))]
LIMITED = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a too-large write fails with EFBIG instead of killing us
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
from minillm.cli import main
raise SystemExit(main(sys.argv[2:]))
"""


def run(args: list[str], env: dict, limit: int | None = None) -> subprocess.CompletedProcess:
    prefix = [sys.executable, "-c", LIMITED, str(limit)] if limit else [sys.executable, "-m", "minillm"]
    return subprocess.run(prefix + args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    cache = tmp_path_factory.mktemp("cache")
    return dict(os.environ, OMP_NUM_THREADS="1", MINILLM_CACHE_DIR=str(cache),
                PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))  # fmt: skip


@pytest.fixture(scope="module")
def reference(tmp_path_factory, env) -> list[float]:
    """The losses of the same run with nothing going wrong."""
    out = tmp_path_factory.mktemp("ref") / "run"
    done = run([*SETTINGS, "--out", str(out)], env)
    assert done.returncode == 0, done.stderr
    return [r["train_loss"] for r in read_metrics(out) if "train_loss" in r]


def start(out: Path) -> None:
    """The first half of the run (4 of its 8 steps), stopped as Ctrl-C would stop it."""
    train(preset_config("shakespeare-char", **OVERRIDES), out, stop_after=4, progress=False, verbose=False)
    assert ckpt.latest_checkpoint(out).name == "step_0000004"


def debris(out: Path) -> list[str]:
    return sorted(p.name for p in out.rglob(".*") if p.name != ".minillm.lock")


def test_a_full_disk_during_a_checkpoint_save(tmp_path, env, reference):
    out = tmp_path / "run"
    start(out)
    weights = (ckpt.latest_checkpoint(out) / "model.safetensors").stat().st_size
    (out / "notes.txt").write_text("mine")
    full = run([*SETTINGS, "--out", str(out), "--resume"], env, limit=weights // 2)
    assert full.returncode == 2, full.stderr
    assert "Traceback" not in full.stderr and "error: could not save checkpoint step_0000006" in full.stderr
    assert "the last checkpoint, step_0000004, is intact" in full.stderr
    assert ckpt.latest_checkpoint(out).name == "step_0000004" and debris(out) == []
    ckpt.load_model(out)  # still loadable
    again = run([*SETTINGS, "--out", str(out), "--resume"], env)  # space is back
    assert again.returncode == 0, again.stderr
    losses = [r["train_loss"] for r in read_metrics(out) if "train_loss" in r]
    assert losses == pytest.approx(reference, abs=1e-6) and (out / "notes.txt").read_text() == "mine"


def test_a_full_disk_while_appending_metrics(tmp_path, env, reference):
    out = tmp_path / "run"
    start(out)
    size = (out / "metrics.jsonl").stat().st_size
    full = run([*SETTINGS, "--out", str(out), "--resume"], env, limit=size + 40)
    assert full.returncode == 2, full.stderr
    assert "Traceback" not in full.stderr and "could not append to" in full.stderr
    assert ckpt.latest_checkpoint(out).name == "step_0000004" and debris(out) == []
    again = run([*SETTINGS, "--out", str(out), "--resume"], env)
    assert again.returncode == 0, again.stderr
    records = read_metrics(out)
    assert [r["step"] for r in records] == list(range(9))
    assert [r["train_loss"] for r in records if "train_loss" in r] == pytest.approx(reference, abs=1e-6)
    json.dumps(records)
