"""minillm.checkpoint (and monitor's metrics.jsonl): the commit path, SIGKILLed runs, torn metrics, the run lock,
the generic save/load API and load_model, on tiny models and real processes killed at random moments."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import minillm.train as train_module
from minillm import checkpoint as ckpt
from minillm.config import TrainConfig, apply_overrides
from minillm.errors import CheckpointError, CheckpointNotFoundError, RunFolderError
from minillm.monitor import read_metrics
from minillm.train import train

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "kill_worker.py"
TINY = dict(data="the-verdict", tokenizer="char", n_layer=2, n_head=2, d_model=32, context_length=16, batch_size=4,
            max_steps=12, lr=3e-3, min_lr=3e-4, warmup_steps=3, eval_interval=4, eval_batches=2, sample_tokens=0,
            device="cpu")  # fmt: skip
# the killed runs: a checkpoint at every step, two kept; dropout draws from the global RNG, so an exact
# resume needs its state back too; max_steps is never reached (the kills stop the run long before)
KILLED = dict(TINY, eval_interval=1, keep_checkpoints=2, max_steps=100, dropout=0.1)
N_KILLS = 10
FSYNC_DELAY = 0.01  # seconds added to each fsync in the killed processes (about 20 per save)


def tiny(**overrides) -> TrainConfig:
    return apply_overrides(TrainConfig(), {**TINY, **overrides})


def quiet_train(config: TrainConfig, out, **kwargs):
    return train(config, out, progress=False, verbose=False, **kwargs)


def step_folder(step: int) -> str:
    """The name the module docstring gives a checkpoint folder (step_0002000), written out here."""
    return "step_" + str(step).rjust(7, "0")


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def make_trainer_file(folder: Path, step: int) -> None:
    """A folder that `latest_checkpoint` takes as complete (it looks for trainer.pt)."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"format": "minillm-trainer", "step": step}, folder / "trainer.pt")


def plant_foreign(out: Path) -> dict[Path, str]:
    """A user's own files in a run folder, beside and inside minillm's `checkpoints/`."""
    files = {
        out / "data.csv": "a,b\n1,2\n",
        out / "checkpoints" / "mine.txt": "my notes",
        out / "checkpoints" / "backup.txt": "a backup list",
        out / "checkpoints" / "my_notes" / "notes.md": "# notes",
        out / "checkpoints" / "step_best" / "weights.bin": "best weights, chosen by hand",
        out / "checkpoints" / ".step_notes.tmp" / "x.txt": "not debris: not a step number",
    }
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return files


def assert_intact(files: dict[Path, str]) -> None:
    for path, text in files.items():
        assert path.is_file() and path.read_text() == text, f"{path} was deleted or changed"


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def subprocess_env(cache: Path) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MINILLM_CACHE_DIR=str(cache),
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))  # fmt: skip
    env.setdefault("MINILLM_DATA_DIR", str(ROOT.parent / "shared" / "data"))
    return env


# -- shared by the kill and lock tests: one prepared corpus, the uninterrupted run, a fork server -------------


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """A corpus cache prepared once (by the uninterrupted reference run) for every process of this module."""
    cache = tmp_path_factory.mktemp("cache")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINILLM_CACHE_DIR", str(cache))
        # the same run without interruptions; evaluations (any interval) draw no random numbers
        reference = quiet_train(tiny(**{**KILLED, "eval_interval": KILLED["max_steps"]}), None)
    torch.set_num_threads(threads)
    return SimpleNamespace(cache=cache, losses={r["step"]: r["train_loss"] for r in reference.history if r["step"]})


class Worker:
    """tests/kill_worker.py serve: forks training runs and lock holders for the test to SIGKILL."""

    def __init__(self, env: dict, log: Path) -> None:
        self.log = log
        self.proc = subprocess.Popen([sys.executable, str(WORKER), "serve"], cwd=ROOT, env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(log, "w"))  # fmt: skip
        self.answers: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.answers.put(json.loads(line))

    def _answer(self, key: str, timeout: float = 120) -> int:
        try:
            answer = self.answers.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"kill_worker gave no {key!r} in {timeout} s:\n{self.log_tail()}") from None
        assert key in answer, answer
        return answer[key]

    def start(self, **command) -> int:
        """Fork a child for `command`; return its pid (it stays unreaped until `status`)."""
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        return self._answer("pid")

    def status(self) -> int:
        """Reap the last child (once killed, or ended); its exit status (-9: SIGKILL)."""
        self.proc.stdin.write(json.dumps({"cmd": "reap"}) + "\n")
        self.proc.stdin.flush()
        return self._answer("status")

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def close(self) -> None:
        try:
            self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def worker(shared, tmp_path_factory):
    w = Worker(subprocess_env(shared.cache), tmp_path_factory.mktemp("worker") / "stderr.txt")
    yield w
    w.close()


# -- 1. the commit path ------------------------------------------------------------------------------


def test_commit_points_latest_at_a_complete_folder_and_replaces_a_step_saved_twice(tmp_path):
    root = tmp_path / "checkpoints"
    staging = ckpt.staging_folder(root, step_folder(5))
    assert staging.parent == root and staging.is_dir() and not any(staging.iterdir())
    assert ckpt.latest_checkpoint(tmp_path) is None  # a staging folder is not a checkpoint
    make_trainer_file(staging, 5)
    (staging / "model.safetensors").write_bytes(b"first")
    final = ckpt.commit(staging)
    assert final == root / step_folder(5)
    assert (root / "latest").read_text().strip() == step_folder(5)
    assert ckpt.latest_checkpoint(tmp_path) == final
    assert listing(root) == ["latest", step_folder(5)]  # no staging folder left
    assert listing(final) == ["model.safetensors", "trainer.pt"]

    again = ckpt.staging_folder(root, step_folder(5))  # the same step saved again: replaced, nothing left over
    make_trainer_file(again, 5)
    (again / "model.safetensors").write_bytes(b"second")
    assert ckpt.commit(again) == final
    assert (final / "model.safetensors").read_bytes() == b"second"
    assert listing(root) == ["latest", step_folder(5)]
    assert ckpt.latest_checkpoint(tmp_path) == final


def test_pruning_keeps_the_newest_by_number_and_never_touches_foreign_files(tmp_path):
    root = tmp_path / "checkpoints"
    foreign = plant_foreign(tmp_path)
    for step in (9, 10, 100):
        make_trainer_file(root / step_folder(step), step)
    staging = ckpt.staging_folder(root, step_folder(101))
    make_trainer_file(staging, 101)
    ckpt.commit(staging, keep=2)
    kept = [p.name for p in root.iterdir() if p.name.startswith("step_0")]
    assert sorted(kept) == [step_folder(100), step_folder(101)]
    assert_intact(foreign)
    assert (root / "step_best").is_dir() and (root / "my_notes").is_dir()
    # past 9,999,999 steps the name grows a digit: "step_10000000" < "step_9999999" as text, not as a number
    make_trainer_file(root / "step_9999999", 9999999)
    staging = ckpt.staging_folder(root, "step_10000000")
    make_trainer_file(staging, 10_000_000)
    ckpt.commit(staging, keep=1)
    assert [step for step, _ in ckpt.checkpoint_steps(root)] == [10_000_000]
    assert_intact(foreign)
    # without `latest` the newest complete folder by number is found
    make_trainer_file(root / "step_9999999", 9999999)
    (root / "latest").unlink()
    assert ckpt.latest_checkpoint(tmp_path).name == "step_10000000"
    assert [s for s, _ in ckpt.checkpoint_steps(root)] == [9999999, 10_000_000]


def test_a_killed_saves_debris_is_removed_by_the_next_save(tmp_path):
    root = tmp_path / "checkpoints"
    foreign = plant_foreign(tmp_path)
    make_trainer_file(root / step_folder(3), 3)
    (root / "latest").write_text(step_folder(3) + "\n")
    for debris in (".step_0000004.tmp", ".step_0000004.old"):  # a save of step 4 killed while staging / replacing
        (root / debris / "dcp").mkdir(parents=True)
        (root / debris / "model.safetensors").write_bytes(b"half a fi")
    assert ckpt.latest_checkpoint(tmp_path).name == step_folder(3)  # debris is never taken for a checkpoint
    staging = ckpt.staging_folder(root, step_folder(4))
    make_trainer_file(staging, 4)
    ckpt.commit(staging, keep=1)
    assert [p.name for p in root.iterdir() if p.name.startswith(".step_0")] == []
    assert ckpt.latest_checkpoint(tmp_path).name == step_folder(4)
    assert not (root / step_folder(3)).exists()
    assert_intact(foreign)


def test_overwrite_removes_only_minillms_own_files(tmp_path, cache_dir):
    out = tmp_path / "run"
    quiet_train(tiny(max_steps=4, keep_checkpoints=2, sample_tokens=4), out)
    own = ["loss.png", "metrics.jsonl", "minillm_tokenizer.json", "samples.txt", "train_config.json"]
    assert set(own) <= set(listing(out))
    foreign = plant_foreign(out)
    (out / "checkpoints" / ".step_0000009.tmp").mkdir()  # debris of a killed save is minillm's too
    with pytest.raises(RunFolderError, match="--overwrite"):
        ckpt.prepare_run_dir(out, tiny(), resume=False, overwrite=False)
    assert ckpt.prepare_run_dir(out, tiny(), resume=False, overwrite=True) is None
    assert_intact(foreign)
    assert listing(out) == ["checkpoints", "data.csv"]
    assert listing(out / "checkpoints") == [".step_notes.tmp", "backup.txt", "mine.txt", "my_notes", "step_best"]
    # remove_run_files on a fresh run, then a new run over it with overwrite=True
    result = quiet_train(tiny(max_steps=2, eval_interval=2), out, overwrite=True)
    assert result.step == 2 and ckpt.latest_checkpoint(out).name == step_folder(2)
    ckpt.remove_run_files(out)
    assert_intact(foreign)
    assert listing(out) == ["checkpoints", "data.csv"]
    shutil.rmtree(out / "checkpoints")
    (out / "checkpoints").mkdir()
    quiet_train(tiny(max_steps=2, eval_interval=2), out, overwrite=True)
    ckpt.remove_run_files(out)
    assert listing(out) == ["data.csv"]  # an emptied checkpoints/ goes too


# -- 2. real processes killed with SIGKILL ------------------------------------------------------------------


def test_sigkill_at_random_moments_keeps_a_loadable_latest_and_the_resume_exact(tmp_path, shared, worker,
                                                                              monkeypatch):  # fmt: skip
    monkeypatch.setenv("MINILLM_CACHE_DIR", str(shared.cache))
    monkeypatch.setattr(train_module, "plot_metrics", lambda *a, **k: None)  # as in the worker: fast steps
    out = tmp_path / "run"
    foreign = plant_foreign(out)  # the first run starts with overwrite=True: these must survive it too
    config = tiny(**KILLED)
    rng = random.Random(20240613)
    step, debris_seen, steps_at_kill, ahead = 0, set(), [], 0
    for kill in range(N_KILLS):
        pid = worker.start(cmd="train", out=str(out), overrides=KILLED, fsync_delay=FSYNC_DELAY)
        try:
            if kill == 0:
                wait_for(lambda: ckpt.latest_checkpoint(out) is not None, 120, "the first checkpoint")
            time.sleep(rng.uniform(0.05, 0.8))
        finally:
            os.kill(pid, signal.SIGKILL)  # not reaped yet: the pid is still the child's
        status = worker.status()
        assert status == -signal.SIGKILL, f"the run ended ({status}) before kill {kill}:\n{worker.log_tail()}"

        # latest names a complete checkpoint, loadable for use and for resuming, never older than before
        latest = ckpt.latest_checkpoint(out)
        assert latest is not None, f"kill {kill}: no checkpoint left: {listing(out / 'checkpoints')}"
        state = ckpt.read_trainer_state(latest)
        assert latest.name == step_folder(state["step"]) and state["step"] >= step
        steps_at_kill.append(state["step"])
        model, tokenizer = ckpt.load_model(out)
        saved = load_file(latest / "model.safetensors")
        for name, tensor in model.state_dict().items():
            if name in saved:
                assert torch.equal(tensor, saved[name]), name
        assert tokenizer.decode(tokenizer.encode("I had")) == "I had"
        assert_intact(foreign)
        debris_seen |= {p.name for p in (out / "checkpoints").iterdir() if p.name.startswith(".")}
        # killed between the rename of a step folder and `latest`:
        ahead += any(s > state["step"] for s, _ in ckpt.checkpoint_steps(out / "checkpoints"))

        # the killed run resumes (here, one step and its save); its lock died with it
        result = quiet_train(config, out, resume=True, stop_after=state["step"] + 1)
        step = state["step"] + 1
        assert result.step == step and [r["step"] for r in result.history] == [step]
        assert ckpt.latest_checkpoint(out).name == step_folder(step)
        names = listing(out / "checkpoints")
        assert not [n for n in names if n.startswith(".step_0")], f"debris left after a save: {names}"
        assert len([n for n in names if n.startswith("step_0")]) <= KILLED["keep_checkpoints"]
        assert [r["step"] for r in read_metrics(out)] == list(range(step + 1))  # each step once, no torn line
        assert not (out / ".minillm.lock").exists()
        assert_intact(foreign)

    # losses of the run killed N_KILLS times, resumed each time, equal those of the uninterrupted run
    records = read_metrics(out)
    assert [r["step"] for r in records] == list(range(step + 1)) and step >= N_KILLS + 1
    for r in records[1:]:
        assert r["train_loss"] == pytest.approx(shared.losses[r["step"]], abs=1e-6, rel=0), r["step"]
    print(f"steps at the kills {steps_at_kill}; debris the kills left: {sorted(debris_seen)}; "
          f"kills between a rename and `latest`: {ahead}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_dead(pid: int, timeout: float = 30) -> None:
    """Wait until process `pid` has exited (gone, or a zombie: its files, and so its flock, are closed)."""

    def dead() -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
        except (FileNotFoundError, ProcessLookupError):
            return True

    wait_for(dead, timeout, f"process {pid} to exit")


def test_sigkill_of_a_two_rank_sharded_save_keeps_a_loadable_latest(tmp_path, shared):
    out, pid_dir = tmp_path / "run", tmp_path / "pids"
    pid_dir.mkdir()
    foreign = plant_foreign(out)
    overrides = dict(KILLED, strategy="ddp", grad_accum=2, dropout=0.0)
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"out": str(out), "overrides": overrides, "fsync_delay": FSYNC_DELAY,
                                "pid_dir": str(pid_dir)}))  # fmt: skip
    log = tmp_path / "torchrun.txt"
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                                 "--master_addr=127.0.0.1", f"--master_port={free_port()}", str(WORKER), "once",
                                 str(spec)], cwd=ROOT, env=subprocess_env(shared.cache), stdout=fh, stderr=fh,
                                start_new_session=True)  # fmt: skip
    ranks: list[int] = []
    try:
        deadline = time.monotonic() + 150
        while ckpt.latest_checkpoint(out) is None or len(list(pid_dir.glob("rank*.pid"))) < 2:
            assert proc.poll() is None, f"torchrun ended ({proc.returncode}):\n{log.read_text()[-4000:]}"
            assert time.monotonic() < deadline, f"no checkpoint in 150 s:\n{log.read_text()[-4000:]}"
            time.sleep(0.02)
        ranks = [int(p.read_text()) for p in sorted(pid_dir.glob("rank*.pid"))]
        time.sleep(random.Random(7).uniform(0.05, 1.0))
        assert proc.poll() is None, f"torchrun ended before the kill:\n{log.read_text()[-4000:]}"
    finally:
        # torchrun starts each rank in a session of its own: the launcher's group, then each rank
        os.killpg(proc.pid, signal.SIGKILL)
        ranks = ranks or [int(p.read_text()) for p in pid_dir.glob("rank*.pid")]
        for pid in ranks:
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                if str(WORKER) in Path(f"/proc/{pid}/cmdline").read_text():  # still our rank, not a reused pid
                    os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=30)
        for pid in ranks:
            wait_dead(pid)
    latest = ckpt.latest_checkpoint(out)
    assert latest is not None
    state = ckpt.read_trainer_state(latest)
    assert state["world_size"] == 2 and "optimizer" not in state and (latest / "dcp" / ".metadata").is_file()
    model, tokenizer = ckpt.load_model(out)
    x = torch.tensor([tokenizer.encode("I had always")])
    logits, _ = model(x)
    assert logits.shape[:2] == x.shape and torch.isfinite(logits).all()
    assert_intact(foreign)
    deadline = time.monotonic() + 30  # both ranks are dead: the kernel frees their lock as their files close
    while True:
        try:
            held = ckpt.run_lock(out).acquire()
            break
        except RunFolderError:
            assert time.monotonic() < deadline, "the lock of the killed ranks was never released"
            time.sleep(0.1)
    held.release()
    print(f"sharded run killed after step {state['step']}; checkpoints/: {listing(out / 'checkpoints')}")


# -- 3. a torn metrics.jsonl --------------------------------------------------------------------------


def test_a_torn_last_metrics_line_is_dropped_on_resume_and_is_an_error_otherwise(tmp_path, cache_dir, caplog):
    out = tmp_path / "run"
    first = quiet_train(tiny(), out, stop_after=6)
    assert first.step == 6
    path = out / "metrics.jsonl"
    with open(path, "a") as fh:
        fh.write('{"step": 7, "train_loss": 3.1')  # a kill in the middle of writing step 7's record
    with pytest.raises(ValueError, match=r"metrics\.jsonl, line 8\b"):
        read_metrics(out)
    with caplog.at_level("WARNING", logger="minillm"):
        resumed = quiet_train(tiny(), out, resume=True)
    assert resumed.step == 12
    warnings = [r for r in caplog.records if r.levelname == "WARNING" and "torn" in r.getMessage()]
    assert len(warnings) == 1 and "metrics.jsonl" in warnings[0].getMessage()
    lines = path.read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == list(range(13))  # valid JSONL, every step once
    assert [r["step"] for r in read_metrics(out)] == list(range(13))
    full = quiet_train(tiny(), None)
    for r, expected in zip(read_metrics(out)[1:], full.history[1:]):
        assert r["train_loss"] == pytest.approx(expected["train_loss"], abs=1e-6, rel=0), r["step"]


def test_read_metrics_repairs_only_a_torn_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    good = [json.dumps({"step": i, "train_loss": 1.0 / (i + 1)}) for i in range(3)]
    path.write_text("\n".join(good) + "\n" + '{"step": 3, "tr')
    assert [r["step"] for r in read_metrics(path, repair=True)] == [0, 1, 2]
    path.write_text(good[0] + "\n" + '{"step": 1, "tr' + "\n" + good[2] + "\n")  # not the last line: not a tear
    for repair in (False, True):
        with pytest.raises(ValueError, match=r"line 2\b"):
            read_metrics(path, repair=repair)
    path.write_text("\n".join(good) + "\n" + "[1, 2]\n")  # JSON, but not a record
    with pytest.raises(ValueError, match=r"line 4\b"):
        read_metrics(path)
    with pytest.raises(FileNotFoundError):
        read_metrics(tmp_path / "nothing.jsonl")


# -- 4. the run lock ----------------------------------------------------------------------------------


def test_a_live_holder_of_the_lock_stops_a_second_run_and_its_death_frees_it(tmp_path, shared, worker, monkeypatch):
    monkeypatch.setenv("MINILLM_CACHE_DIR", str(shared.cache))
    out = tmp_path / "run"
    lock_file = out / ".minillm.lock"
    pid = worker.start(cmd="lock", out=str(out))
    try:
        wait_for(lambda: lock_file.is_file() and f"pid {pid} " in lock_file.read_text(), 60, "the holder's lock")
        with pytest.raises(RunFolderError) as info:
            quiet_train(tiny(max_steps=2), out)
        message = str(info.value)
        assert f"pid {pid}" in message and "--break-lock" in message and str(lock_file) in message
        with pytest.raises(RunFolderError, match=f"pid {pid}"):
            quiet_train(tiny(max_steps=2), out, resume=True)
    finally:
        os.kill(pid, signal.SIGKILL)
    assert worker.status() == -signal.SIGKILL
    assert lock_file.is_file()  # the killed holder could not remove its file: the kernel released the lock
    result = quiet_train(tiny(max_steps=2, eval_interval=2), out)
    assert result.step == 2 and not lock_file.exists()


def test_a_second_lock_in_the_same_process_conflicts(tmp_path, cache_dir):
    out = tmp_path / "run"
    with ckpt.run_lock(out) as held:
        assert held.path.read_text().startswith(f"pid {os.getpid()} ")
        with pytest.raises(RunFolderError, match=f"pid {os.getpid()}.*break-lock"):
            ckpt.run_lock(out).acquire()  # a new open file description: flock conflicts
        with pytest.raises(RunFolderError, match=f"pid {os.getpid()}"):
            quiet_train(tiny(max_steps=2), out)
    assert not (out / ".minillm.lock").exists()
    with ckpt.run_lock(out):  # released: free again
        pass


def test_break_lock_removes_a_leftover_lock_file(tmp_path, cache_dir):
    out = tmp_path / "run"
    out.mkdir()
    lock_file = out / ".minillm.lock"
    lock_file.write_text("pid 999999 on a-machine-that-crashed\n")
    ckpt.run_lock(out).break_lock()
    assert not lock_file.exists()
    lock_file.write_text("pid 999999 on a-machine-that-crashed\n")
    with ckpt.locked(out, break_lock=True) as lock:
        assert lock_file.read_text() == f"pid {os.getpid()} on {socket.gethostname()}\n"
    assert not lock_file.exists()
    lock_file.write_text("pid 999999 on a-machine-that-crashed\n")
    result = quiet_train(tiny(max_steps=2, eval_interval=2), out, break_lock=True)  # the folder holds only it
    assert result.step == 2 and not lock_file.exists()


def test_the_lock_has_one_holder_when_a_run_ends_while_another_starts(tmp_path, monkeypatch):
    out = tmp_path / "run"
    first = ckpt.run_lock(out).acquire()
    real_open = os.open

    def open_then_first_run_ends(*args, **kwargs):  # the first run ends between the second's open and flock
        fd = real_open(*args, **kwargs)
        first.release()
        return fd

    monkeypatch.setattr(ckpt.os, "open", open_then_first_run_ends)
    second = ckpt.run_lock(out).acquire()
    monkeypatch.setattr(ckpt.os, "open", real_open)
    try:
        with pytest.raises(RunFolderError):
            ckpt.run_lock(out).acquire().release()  # a third run while the second holds the lock
    finally:
        second.release()


# -- 5. the generic API: any nn.Module and optimizer -------------------------------------------------------


def tied_module(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Embedding(11, 8), nn.Linear(8, 8), nn.GELU(), nn.Linear(8, 11, bias=False))
    model[3].weight = model[0].weight  # a tied output layer: one tensor, two modules
    return model


def adamw_steps(model: nn.Module, optimizer: torch.optim.Optimizer, n: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        x = torch.randint(0, 11, (4, 5), generator=g)
        loss = nn.functional.cross_entropy(model(x).reshape(-1, 11), x.roll(1, dims=1).reshape(-1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def test_save_and_load_checkpoint_restore_any_module_and_optimizer_exactly(tmp_path):
    model = tied_module(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    adamw_steps(model, optimizer, 3, seed=1)
    path = ckpt.save_checkpoint(model, optimizer, 3, tmp_path / "ckpt")
    assert Path(path) == tmp_path / "ckpt" and listing(tmp_path) == ["ckpt"]

    other = tied_module(99)  # another initialization, a fresh optimizer
    other_opt = torch.optim.AdamW(other.parameters(), lr=1e-2, weight_decay=0.1)
    assert ckpt.load_checkpoint(tmp_path / "ckpt", other, other_opt) == 3
    assert other[3].weight is other[0].weight  # still tied
    for (name, a), b in zip(model.state_dict().items(), other.state_dict().values()):
        assert torch.equal(a, b), name
    assert other_opt.state_dict()["state"][0]["step"] == 3
    adamw_steps(model, optimizer, 2, seed=2)
    adamw_steps(other, other_opt, 2, seed=2)
    for (name, a), b in zip(model.state_dict().items(), other.state_dict().values()):
        assert torch.equal(a, b), name  # moments and step counts came back too
    assert ckpt.load_checkpoint(tmp_path / "ckpt", tied_module(5)) == 3  # weights only


def test_load_checkpoint_errors_are_clear(tmp_path):
    model = tied_module(0)
    optimizer = torch.optim.AdamW(model.parameters())
    adamw_steps(model, optimizer, 1, seed=1)
    ckpt.save_checkpoint(model, optimizer, 1, tmp_path / "ckpt")
    wider = nn.Sequential(nn.Embedding(11, 16), nn.Linear(16, 16), nn.GELU(), nn.Linear(16, 11, bias=False))
    with pytest.raises(CheckpointError):
        ckpt.load_checkpoint(tmp_path / "ckpt", wider)
    deeper = nn.Sequential(*tied_module(0), nn.Linear(11, 11))
    with pytest.raises(CheckpointError, match="missing"):
        ckpt.load_checkpoint(tmp_path / "ckpt", deeper)
    with pytest.raises(CheckpointNotFoundError):
        ckpt.load_checkpoint(tmp_path / "nowhere", model)
    ckpt.save_checkpoint(model, None, 1, tmp_path / "weights_only")
    with pytest.raises(CheckpointError, match="optimizer"):
        ckpt.load_checkpoint(tmp_path / "weights_only", model, optimizer)

    for name in ("model.safetensors", "trainer.pt"):
        broken = tmp_path / f"broken_{name}"
        shutil.copytree(tmp_path / "ckpt", broken)
        data = (broken / name).read_bytes()
        (broken / name).write_bytes(data[: len(data) // 2])  # cut in half
        with pytest.raises(CheckpointError) as info:
            ckpt.load_checkpoint(broken, tied_module(0), torch.optim.AdamW(tied_module(0).parameters()))
        assert name in str(info.value)


def test_trainer_state_is_never_unpickled(tmp_path):
    marker = tmp_path / "code_ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))  # unpickling it would create the marker file

    model = tied_module(0)
    ckpt.save_checkpoint(model, None, 1, tmp_path / "ckpt")
    torch.save({"format": "minillm-trainer", "step": 1, "optimizer": Payload()}, tmp_path / "ckpt" / "trainer.pt")
    with pytest.raises(CheckpointError):
        ckpt.load_checkpoint(tmp_path / "ckpt", model)
    with pytest.raises(CheckpointError):
        ckpt.read_trainer_state(tmp_path / "ckpt")
    assert not marker.exists()


def test_saving_over_a_checkpoint_is_atomic(tmp_path, monkeypatch):
    model = tied_module(0)
    optimizer = torch.optim.AdamW(model.parameters())
    adamw_steps(model, optimizer, 1, seed=1)
    ckpt.save_checkpoint(model, optimizer, 1, tmp_path / "ckpt")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    adamw_steps(model, optimizer, 1, seed=2)
    real_save = torch.save

    def crash(obj, path, *args, **kwargs):  # half a file, then an error
        real_save(obj, path, *args, **kwargs)
        with open(path, "r+b") as fh:
            fh.truncate(64)
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_checkpoint(model, optimizer, 2, tmp_path / "ckpt")
    monkeypatch.setattr(torch, "save", real_save)
    assert listing(tmp_path) == ["ckpt"]  # no .ckpt.tmp / .ckpt.old left
    fresh = tied_module(3)
    assert ckpt.load_checkpoint(tmp_path / "ckpt", fresh, torch.optim.AdamW(fresh.parameters())) == 1
    for name, value in fresh.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert ckpt.save_checkpoint(model, optimizer, 2, tmp_path / "ckpt")  # and the next save goes through
    assert ckpt.load_checkpoint(tmp_path / "ckpt", fresh) == 2


def test_save_checkpoint_after_a_killed_save_of_the_same_path(tmp_path):
    model = tied_module(0)
    optimizer = torch.optim.AdamW(model.parameters())
    ckpt.save_checkpoint(model, optimizer, 1, tmp_path / "ckpt")
    (tmp_path / ".ckpt.tmp").mkdir()  # what a SIGKILL during the next save leaves (no `finally` runs)
    (tmp_path / ".ckpt.tmp" / "model.safetensors").write_bytes(b"half")
    ckpt.save_checkpoint(model, optimizer, 2, tmp_path / "ckpt")
    assert ckpt.load_checkpoint(tmp_path / "ckpt", tied_module(1)) == 2
    assert listing(tmp_path) == ["ckpt"]


# -- 6. load_model ----------------------------------------------------------------------------------


@pytest.fixture
def trained(tmp_path, cache_dir):
    out = tmp_path / "run"
    result = quiet_train(tiny(max_steps=4), out)
    return SimpleNamespace(out=out, result=result, latest=ckpt.latest_checkpoint(out))


def assert_same_model(model, reference) -> None:
    assert not model.training
    for (name, a), b in zip(reference.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), name


def test_load_model_reads_a_run_folder_a_checkpoint_and_an_export(trained, tmp_path):
    text = "I had always thought"
    for source in (trained.out, trained.latest, ckpt.export_checkpoint(trained.out, tmp_path / "export")):
        model, tokenizer = ckpt.load_model(source)
        assert_same_model(model, trained.result.model)
        assert tokenizer.encode(text) == trained.result.tokenizer.encode(text)
    assert listing(tmp_path / "export") == ["config.json", "minillm_tokenizer.json", "model.safetensors",
                                           "train_config.json"]  # fmt: skip


def test_load_model_on_damaged_folders(trained, tmp_path):
    def copy(name: str) -> Path:
        folder = tmp_path / name
        shutil.copytree(trained.latest, folder)
        return folder

    bad_json = copy("bad_json")
    (bad_json / "config.json").write_text('{"d_model": 32, "n_la')
    with pytest.raises(CheckpointError, match="config.json"):
        ckpt.load_model(bad_json)

    half = copy("half")
    data = (half / "model.safetensors").read_bytes()
    (half / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        ckpt.load_model(half)

    no_tokenizer = copy("no_tokenizer")
    (no_tokenizer / "minillm_tokenizer.json").unlink()
    with pytest.raises(CheckpointNotFoundError, match="minillm_tokenizer.json"):
        ckpt.load_model(no_tokenizer)
    (no_tokenizer / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {"type": "BPE"}}))
    with pytest.raises(CheckpointNotFoundError):  # a Hugging Face tokenizer.json is not a minillm tokenizer
        ckpt.load_model(no_tokenizer)

    legacy = copy("legacy")  # written before the tokenizer file was renamed
    (legacy / "minillm_tokenizer.json").rename(legacy / "tokenizer.json")
    model, tokenizer = ckpt.load_model(legacy)
    assert_same_model(model, trained.result.model)
    assert tokenizer.encode("I had") == trained.result.tokenizer.encode("I had")

    with pytest.raises(CheckpointNotFoundError):
        ckpt.load_model(tmp_path / "does_not_exist")
    with pytest.raises(CheckpointNotFoundError):
        ckpt.load_model(tmp_path)  # a folder without a model or checkpoints


def test_resuming_from_a_checkpoint_with_a_damaged_config_is_a_clear_error(trained):
    (trained.latest / "config.json").write_text('{"d_model": 32, "n_la')
    with pytest.raises(CheckpointError, match="config.json"):
        quiet_train(tiny(max_steps=6), trained.out, resume=True)
