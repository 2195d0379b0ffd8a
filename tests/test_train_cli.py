"""`python -m minillm train | generate | quickstart | export`: in-process and in real subprocesses."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from minillm import checkpoint as ckpt
from minillm.cli import main
from minillm.monitor import read_metrics
from minillm.tokenizer import TOKENIZER_FILE

TINY = ["--data", "the-verdict", "--n-layer", "1", "--n-head", "2", "--d-model", "32", "--context-length", "16",
        "--batch-size", "4", "--eval-batches", "2", "--sample-tokens", "0", "--device", "cpu",
        "--no-progress"]  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_thread")


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def test_train_then_generate(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--preset", "shakespeare-char", "--out", str(out), "--max-steps", "6",
                 "--eval-interval", "3", "--lr", "3e-3", *TINY])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "val loss" in printed and str(out) in printed
    config = ckpt.read_config(out)
    assert (config.max_steps, config.lr, config.model.n_layer, config.data) == (6, 3e-3, 1, "the-verdict")
    assert [r["step"] for r in read_metrics(out)] == list(range(7))
    assert (out / "loss.png").is_file() and ckpt.latest_checkpoint(out).name == "step_0000006"

    code = main(["generate", "--checkpoint", str(out), "--prompt", "I had\\n", "--max-new-tokens", "15",
                 "--num-samples", "2", "--seed", "1"])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0
    assert printed.count("--- sample") == 2 and printed.count("I had\n") == 2
    # the same text as the library's complete(): generate prints minillm.generate.stream_text's pieces
    from minillm.generate import complete

    model, tokenizer = ckpt.load_model(out)
    first = printed.split("--- sample 2 ---")[0].removeprefix("--- sample 1 ---\n")
    assert first == "I had\n" + complete(model, tokenizer, "I had\n", 15, seed=1) + "\n"

    # Resume without --preset: the run's own settings, with a longer schedule; underscores spell settings too.
    code = main(["train", "--out", str(out), "--resume", "--max_steps", "8", "--no-progress"])
    assert code == 0, capsys.readouterr()
    assert ckpt.latest_checkpoint(out).name == "step_0000008"


def test_bad_input_gives_clear_errors(tmp_path, capsys):
    assert main(["train", "--preset", "shakespeare", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "unknown preset 'shakespeare' (did you mean shakespeare-char?)" in err
    assert "choose one of book, gpt2-124m, quickstart, shakespeare-char" in err
    assert main(["train", "--preset", "shakespeare-char", "--out", str(tmp_path / "x"), "--learning-rate", "3"]) == 2
    err = capsys.readouterr().err
    assert "error: unknown setting --learning-rate" in err and "--lr" in err and "--max-steps" in err
    assert main(["train", "--preset", "shakespeare-char", "--out", str(tmp_path / "x"), "--max-steps", "ten"]) == 2
    assert "'max_steps' needs a int, got 'ten'" in capsys.readouterr().err
    assert main(["train", "--preset", "shakespeare-char", "--out", str(tmp_path / "x"), "--schedule", "linear"]) == 2
    assert "argument --schedule: invalid choice: 'linear'" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path / "x")]) == 2
    assert "--preset" in capsys.readouterr().err
    assert main(["generate", "--checkpoint", str(tmp_path)]) == 2
    assert "holds no model" in capsys.readouterr().err


def test_existing_run_needs_resume_or_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--preset", "shakespeare-char", "--out", str(out), "--max-steps", "2", "--eval-interval", "2",
            *TINY]  # fmt: skip
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == 2
    assert "already exists" in capsys.readouterr().err
    assert main([*args, "--overwrite", "--break-lock"]) == 0
    assert main(["train", "--out", str(out), "--resume", "--n-layer", "2", "--no-progress"]) == 2
    assert "'n_layer': (1, 2)" in capsys.readouterr().err


def test_train_on_a_prepared_corpus_folder(tmp_path, capsys):
    data = tmp_path / "verdict-char"
    assert main(["prepare", "the-verdict", "--tokenizer", "char", "--out", str(data)]) == 0
    out = tmp_path / "run"
    tiny = [a if a != "the-verdict" else str(data) for a in TINY]  # --data DIR instead of the name
    assert main(["train", "--preset", "shakespeare-char", "--out", str(out), "--max-steps", "3",
                 "--eval-interval", "3", *tiny]) == 0, capsys.readouterr().err  # fmt: skip
    assert [r["step"] for r in read_metrics(out)] == [0, 1, 2, 3]
    assert ckpt.read_config(out).data == str(data)
    model, tokenizer = ckpt.load_model(out)
    summary = json.loads((data / "corpus.json").read_text())
    assert tokenizer.vocab_size == model.config.vocab_size == summary["vocab_size"]


def _tiny_run(tmp_path) -> tuple:
    out = tmp_path / "run"
    assert main(["train", "--preset", "shakespeare-char", "--out", str(out), "--max-steps", "2",
                 "--eval-interval", "2", *TINY]) == 0  # fmt: skip
    return out, ckpt.load_model(out)


def _same_logits(model, other) -> None:
    idx = torch.randint(0, model.config.vocab_size, (2, 8))
    with torch.no_grad():
        torch.testing.assert_close(model(idx)[0], other(idx)[0])


def test_export_minillm(tmp_path, capsys):
    run, (model, tokenizer) = _tiny_run(tmp_path)
    out = tmp_path / "exported"
    assert main(["export", "--checkpoint", str(run), "--out", str(out)]) == 0
    assert {"model.safetensors", "config.json", TOKENIZER_FILE} <= {p.name for p in out.iterdir()}
    loaded, loaded_tokenizer = ckpt.load_model(out)
    _same_logits(model, loaded)
    assert loaded_tokenizer.encode("I had") == tokenizer.encode("I had")
    capsys.readouterr()
    assert main(["export", "--checkpoint", str(run), "--out", str(out)]) == 2  # never silently overwritten
    assert "--overwrite" in capsys.readouterr().err
    assert main(["export", "--checkpoint", str(run), "--out", str(out), "--overwrite"]) == 0


@pytest.mark.skipif(importlib.util.find_spec("minillm.hf") is None, reason="minillm.hf (export_hf) has not landed")
def test_export_hf(tmp_path, capsys):
    run, (model, tokenizer) = _tiny_run(tmp_path)
    out = tmp_path / "hf"
    assert main(["export", "--checkpoint", str(run), "--out", str(out), "--format", "hf"]) == 0
    assert "no Hugging Face tokenizer" in capsys.readouterr().out  # a character tokenizer has no HF twin
    assert {"model.safetensors", "config.json", TOKENIZER_FILE} <= {p.name for p in out.iterdir()}
    loaded, loaded_tokenizer = ckpt.load_model(out)  # a Hugging Face folder, read back
    _same_logits(model, loaded)
    assert loaded_tokenizer.encode("I had") == tokenizer.encode("I had")
    assert main(["export", "--checkpoint", str(run), "--out", str(out), "--format", "hf"]) == 2


def test_ctrl_c_saves_a_checkpoint_and_says_how_to_resume(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "minillm", "train", "--preset", "shakespeare-char", "--out", str(out),
           "--max-steps", "100000", "--eval-interval", "100000", *TINY]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            metrics = out / "metrics.jsonl"
            if metrics.is_file() and len(metrics.read_text().splitlines()) >= 4:
                break
            if proc.poll() is not None:
                pytest.fail(f"train exited early: {proc.communicate()}")
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert "--resume" in stdout and "Traceback" not in stderr
    assert "last val loss" in stdout and "measured at step 0" in stdout  # not passed off as the last step's
    last = read_metrics(out)[-1]["step"]
    assert ckpt.latest_checkpoint(out).name == ckpt.checkpoint_name(last)


def test_quickstart_runs_end_to_end(tmp_path):
    out = tmp_path / "qs"
    cmd = [sys.executable, "-m", "minillm", "quickstart", "--out", str(out), "--max-steps", "2", "--no-progress"]
    result = subprocess.run(cmd, check=False, capture_output=True, text=True, env=_env(), timeout=300)
    assert result.returncode == 0, result.stderr
    assert "def fibonacci(n):" in result.stdout and "--- completion 3 ---" in result.stdout
    assert (out / "loss.png").is_file() and (out / "metrics.jsonl").is_file()
    assert ckpt.latest_checkpoint(out).name == "step_0000002"
    assert (ckpt.latest_checkpoint(out) / TOKENIZER_FILE).is_file()
    again = subprocess.run(cmd, check=False, capture_output=True, text=True, env=_env(), timeout=300)
    assert again.returncode == 2 and "--overwrite" in again.stderr  # never silently overwritten
    assert "--resume" in again.stderr  # ... and the hint names a flag quickstart takes:
    files = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    resumed = subprocess.run([*cmd, "--resume"], check=False, capture_output=True, text=True, env=_env(), timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "already finished: step 2" in resumed.stdout and "--- completion 3 ---" in resumed.stdout
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == files  # nothing written
