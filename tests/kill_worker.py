"""A worker for tests/test_checkpoint.py: training runs and lock holders that the test kills with SIGKILL.

Fork server (one process for many kills; torch is imported once, not once per kill):

    python tests/kill_worker.py serve

reads one JSON command per line on stdin and answers one JSON line per event on stdout:

    {"cmd": "train", "out": DIR, "overrides": {...}, "fsync_delay": 0.01}
        fork a child that trains the TrainConfig of `overrides` into DIR (resuming if
        DIR has a checkpoint, else starting over with overwrite=True); answers
        {"pid": N}; then, once told {"cmd": "reap"} (the child stays unreaped until then, so
        the test may kill its pid without a risk of reuse), {"status": S} (-9: killed by SIGKILL)
    {"cmd": "lock", "out": DIR}
        fork a child that holds `run_lock(DIR)` and sleeps; answers as above
    {"cmd": "quit"}

The parent only imports (no torch op runs in it, it has one thread), so forking it is safe; each child
is a real process, and the kernel releases its flock when it is killed.

One run under torchrun (2 ranks, a sharded save at every step):

    python -m torch.distributed.run --nproc_per_node=2 ... tests/kill_worker.py once SPEC.json

SPEC holds `out`, `overrides` and `fsync_delay`, as above, and `pid_dir`: each rank writes its pid to
`pid_dir/rankN.pid` at start. torchrun starts every rank in a session of its own, so killing the
launcher's process group leaves the ranks running: the test kills them by these pids.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback

import torch
import torch._dynamo  # noqa: F401 - imported by the first optimizer (~3 s): once here, not in every child

import minillm.checkpoint as ckpt
import minillm.fileio as fileio
import minillm.train as train_module
from minillm.config import TrainConfig, apply_overrides


def slow_fsync(delay: float) -> None:
    """Make every fsync of a save take `delay` seconds longer, so that a kill at a random
    moment lands inside a save (staging, commit, `latest`, pruning) more often than not."""
    real = fileio.fsync

    def fsync(path):
        time.sleep(delay)
        real(path)

    fileio.fsync = fsync  # used by atomic_path and fsync_tree
    ckpt.fsync = fsync  # bound by name in minillm.checkpoint (commit)


def run(out: str, overrides: dict, fsync_delay: float) -> None:
    """Train into `out`: resume its latest checkpoint if there is one, else start over (overwrite)."""
    torch.set_num_threads(1)
    if fsync_delay > 0:
        slow_fsync(fsync_delay)
    # loss.png is redrawn at every evaluation (here every step) and takes longer than
    # the step and its save together; skipping it makes the kills land in saves.
    train_module.plot_metrics = lambda *args, **kwargs: None
    config = apply_overrides(TrainConfig(), overrides)
    resume = ckpt.latest_checkpoint(out) is not None
    train_module.train(config, out, resume=resume, overwrite=not resume, progress=False, verbose=False)


def hold_lock(out: str) -> None:
    ckpt.run_lock(out).acquire()
    time.sleep(600)


def child(command: dict) -> None:
    os.dup2(2, 1)  # the parent's stdout carries the protocol; the child writes to stderr only
    code = 0
    try:
        if command["cmd"] == "train":
            run(command["out"], command["overrides"], command.get("fsync_delay", 0.0))
        else:
            hold_lock(command["out"])
    except BaseException:  # noqa: BLE001 - reported through the exit status
        traceback.print_exc()
        code = 1
    sys.stderr.flush()
    os._exit(code)


def serve() -> None:
    def answer(message: dict) -> None:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()

    for line in sys.stdin:
        command = json.loads(line)
        if command["cmd"] == "quit":
            break
        pid = os.fork()
        if pid == 0:
            child(command)
        answer({"pid": pid})
        sys.stdin.readline()  # {"cmd": "reap"}: until then the child, even once dead, keeps its pid
        _, status = os.waitpid(pid, 0)
        answer({"status": os.waitstatus_to_exitcode(status)})
    sys.stdout.flush()
    os._exit(0)  # skip torch's slow interpreter teardown


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve()
    else:
        spec = json.loads(open(sys.argv[2], encoding="utf-8").read())
        pid_file = os.path.join(spec["pid_dir"], f"rank{os.environ['RANK']}.pid")
        with open(pid_file + ".part", "w") as fh:
            fh.write(str(os.getpid()))
        os.replace(pid_file + ".part", pid_file)
        run(spec["out"], spec["overrides"], spec.get("fsync_delay", 0.0))
