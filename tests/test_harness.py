"""The `evaluate` command (`minillm.cli.evaluate` over `minillm.harness`) on tiny saved models whose
context is too small for many examples: every default task completes, each task's result is saved as soon
as it is done, Ctrl-C (a real SIGINT to a real process) keeps them and exits 130, and bad flags are
clear errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import minillm.harness
from minillm.checkpoint import load_model, save_model_folder
from minillm.cli import main
from minillm.errors import ConfigError
from minillm.harness import check_settings, evaluate_tasks
from minillm.model import GPT, GPTConfig
from minillm.tokenizer import BPETokenizer

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TASKS = ["hellaswag", "arc-easy", "arc-challenge", "mmlu", "truthfulqa-mc"]
TEXT = ("Question: Which of these is a mammal?\nAnswer: the whale. The quick brown fox jumps over the lazy dog. "
        "A. B. C. D. The following are multiple choice questions (with answers) about science.\n") * 8


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: the tiny models are fastest so on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer():
    return BPETokenizer.train(TEXT, vocab_size=300)


@pytest.fixture(scope="module")
def models(tmp_path_factory, tokenizer):
    """context length -> folder of a tiny random minillm model saved with its tokenizer."""
    root = tmp_path_factory.mktemp("eval-models")
    out = {}
    for context in (64, 128):
        torch.manual_seed(context)
        model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, context_length=context, d_model=16, n_layer=1,
                              n_head=2))  # fmt: skip
        out[context] = save_model_folder(root / f"ctx{context}", model, tokenizer)
    return out


def _evaluate(*argv: str) -> int:
    return main(["evaluate", *map(str, argv), "--no-progress", "--device", "cpu"])


@pytest.mark.parametrize("context", [128, 64])
def test_default_tasks_complete_on_a_small_context(models, context, tmp_path, capsys):
    out = tmp_path / "results.json"
    assert _evaluate("--checkpoint", models[context], "--limit", 2, "--out", out) == 0
    printed = capsys.readouterr().out
    saved = json.loads(out.read_text())
    assert saved["complete"] is True and saved["settings"]["context_length"] == context
    results = saved["results"]
    assert list(results) == DEFAULT_TASKS
    for task, m in results.items():
        total = 2 * 57 if task == "mmlu" else 2  # MMLU: --limit per subject
        assert m["n"] + m["skipped"] == total and 0 <= m["truncated"] <= m["n"]
        assert (m["acc"] is None) == (m["n"] == 0)
        assert task in printed
    assert results["mmlu"]["truncated"] > 0  # the header alone is longer than 64 tokens for this tokenizer
    assert "trunc" in printed and "skip" in printed and "notes" in printed


def _interrupt_on(task: str, monkeypatch, error: type[BaseException] = KeyboardInterrupt) -> None:
    """Make scoring `task` raise `error` (as Ctrl-C or a crash would), other tasks scored as usual."""
    real = minillm.harness.score_multiple_choice

    def scorer(*args, **kwargs):
        if kwargs.get("task") == task:
            raise error()
        return real(*args, **kwargs)

    monkeypatch.setattr(minillm.harness, "score_multiple_choice", scorer)


def test_ctrl_c_keeps_the_finished_tasks(models, tmp_path, monkeypatch, capsys):
    out = tmp_path / "results.json"
    _interrupt_on("arc-challenge", monkeypatch)
    code = _evaluate("--checkpoint", models[128], "--tasks", "arc-easy,arc-challenge,mmlu", "--limit", 2,
                     "--out", out)  # fmt: skip
    assert code == 130
    captured = capsys.readouterr()
    assert "interrupted: 1 of 3 tasks finished (arc-easy)" in captured.err
    assert str(out) in captured.err and "not finished: arc-challenge, mmlu" in captured.err
    assert "arc-easy" in captured.out  # the table of what was done
    saved = json.loads(out.read_text())
    assert saved["complete"] is False and list(saved["results"]) == ["arc-easy"]
    assert saved["results"]["arc-easy"]["n"] == 2


def test_a_crash_keeps_the_finished_tasks(models, tmp_path, monkeypatch):
    out = tmp_path / "results.json"
    _interrupt_on("mmlu", monkeypatch, error=RuntimeError)
    with pytest.raises(RuntimeError):
        _evaluate("--checkpoint", models[64], "--tasks", "arc-easy,truthfulqa-mc,mmlu", "--limit", 1, "--out", out)
    saved = json.loads(out.read_text())
    assert saved["complete"] is False and list(saved["results"]) == ["arc-easy", "truthfulqa-mc"]


def test_results_are_reported_as_each_task_finishes(models, tokenizer):
    model, _ = load_model(models[64])
    seen = []
    report = evaluate_tasks(model, tokenizer, ["hellaswag", "mmlu"], limit=1, methods=("loglik", "letter"),
                            progress=False, on_result=lambda key, m: seen.append((key, m["n"])))  # fmt: skip
    assert seen == [(key, report[key]["n"]) for key in report]
    assert [key for key, _ in seen] == ["hellaswag", "hellaswag/letter", "mmlu", "mmlu/letter"]


@pytest.mark.parametrize("argv, flag", [
    (["--batch-size", "0"], "--batch-size"), (["--batch-size", "-2"], "--batch-size"),
    (["--limit", "0"], "--limit"), (["--limit", "-5"], "--limit"),
    (["--k-shot", "6"], "--k-shot"), (["--k-shot", "-1"], "--k-shot"),
    (["--tasks", "hellaswag,hellaswog"], "--tasks"), (["--tasks", ","], "--tasks"),
])  # fmt: skip
def test_bad_flags_are_clear_errors(models, tmp_path, argv, flag, capsys):
    out = tmp_path / "results.json"
    assert _evaluate("--checkpoint", models[64], "--out", out, *argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and flag in err and "range()" not in err and "Traceback" not in err
    assert not out.exists()


def test_library_settings_are_checked(models, tokenizer):
    for kwargs, word in [({"batch_size": 0}, "batch_size"), ({"limit": 0}, "limit"), ({"k_shot": 9}, "k_shot"),
                         ({"methods": ("guess",)}, "methods")]:  # fmt: skip
        with pytest.raises(ConfigError, match=word):
            check_settings(["arc-easy"], **kwargs)
    with pytest.raises(ConfigError, match="unknown tasks"):
        check_settings(["arc-easy", "nope"])


def test_sigint_to_a_real_evaluate_process(models, tmp_path):
    """Start `python -m minillm evaluate`, wait for the first finished task in the JSON, press Ctrl-C."""
    out = tmp_path / "results.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}  # fmt: skip
    # arc-easy (30 examples) finishes in a moment; MMLU (30 per subject: 1,710 questions, one sequence per forward
    # pass) takes many seconds, so Ctrl-C lands inside it even when this process is starved of CPU on a loaded
    # machine (with 3 per subject, a CI run once saw the command finish before the signal was sent).
    args = ["evaluate", "--checkpoint", str(models[128]), "--tasks", "arc-easy,mmlu", "--limit", "30",
            "--batch-size", "1", "--no-progress", "--device", "cpu", "--out", str(out)]  # fmt: skip
    # A child inherits an ignored or blocked SIGINT from its parent (an xdist worker can have one: two CI runs saw
    # the command run to the end, exit 0, after the signal). Start it as a terminal would: Ctrl-C raises.
    start = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
             "signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT}); sys.argv = ['minillm', *sys.argv[1:]]; "
             "runpy.run_module('minillm', run_name='__main__', alter_sys=True)")
    cmd = [sys.executable, "-c", start, *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 300
        while not out.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert out.exists(), f"no results file; the command ended with {proc.poll()}"
        assert proc.poll() is None, "the command finished before Ctrl-C could be sent: give it a longer second task"
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert "interrupted: 1 of 2 tasks finished (arc-easy)" in stderr and str(out) in stderr
    saved = json.loads(out.read_text())
    assert saved["complete"] is False and list(saved["results"]) == ["arc-easy"]
    assert saved["results"]["arc-easy"]["n"] + saved["results"]["arc-easy"]["skipped"] == 30
    assert "arc-easy" in stdout
