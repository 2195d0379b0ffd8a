"""The command line: `python -m minillm ...` in a real subprocess, and `prepare` end to end."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from minillm.data import read_text
from minillm.tokenizer import BPETokenizer
from minillm.tokens import prepare_corpus, read_shards


def run_cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "minillm", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


def test_help_lists_commands():
    result = run_cli("--help")
    assert result.returncode == 0, result.stderr
    assert "prepare" in result.stdout and "datasets" in result.stdout
    result = run_cli("prepare", "--help")
    assert result.returncode == 0 and "--vocab-size" in result.stdout


def test_datasets_lists_every_name():
    result = run_cli("datasets")
    assert result.returncode == 0, result.stderr
    listed = {line.split()[0] for line in result.stdout.splitlines() if line.strip()}
    assert {"tinyshakespeare", "mmlu", "hellaswag", "gpt2"} <= listed


def test_prepare_unknown_dataset_is_a_clear_error(tmp_path):
    result = run_cli("prepare", "tinyshakespear", "--out", str(tmp_path / "x"))
    assert result.returncode == 2
    assert "unknown data set" in result.stderr and "tinyshakespeare" in result.stderr
    assert "Traceback" not in result.stderr


def test_prepare_writes_shards_that_decode_to_the_text(tmp_path):
    out = tmp_path / "verdict"
    result = run_cli("prepare", "the-verdict", "--vocab-size", "300", "--out", str(out))
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["vocab_size"] == 300 and summary["dtype"] == "uint16"

    tok = BPETokenizer.load(out / "tokenizer.json")
    train, val = read_shards(out, "train", vocab_size=300), read_shards(out, "val")
    assert len(train) == summary["train_tokens"] and len(val) == summary["val_tokens"]
    assert summary["train_tokens"] + summary["val_tokens"] == summary["tokens"]
    ids = np.concatenate([train[:], val[:]]).tolist()
    assert tok.decode(ids) == read_text("the-verdict")  # lossless round trip through disk
    assert abs(summary["val_tokens"] / summary["tokens"] - 0.1) < 0.01


def test_prepare_refuses_to_overwrite(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    result = run_cli("prepare", "the-verdict", "--tokenizer", "char", "--out", str(out))
    assert result.returncode == 2 and "--overwrite" in result.stderr
    assert (out / "keep.txt").read_text() == "precious"


@pytest.mark.parametrize("kind", ["char", "gpt2"])
def test_prepare_other_tokenizers(tmp_path, kind):
    import tiktoken

    summary = prepare_corpus("the-verdict", tmp_path / kind, tokenizer=kind, val_fraction=0.2)
    text = read_text("the-verdict")
    tokens = np.concatenate([read_shards(tmp_path / kind, "train")[:],
                             read_shards(tmp_path / kind, "val")[:]])
    if kind == "char":
        assert summary["tokens"] == len(text) and summary["vocab_size"] == len(set(text))
    else:  # GPT-2's own tokenizer, through tiktoken, is the independent reference
        assert tokens.tolist() == tiktoken.get_encoding("gpt2").encode_ordinary(text)


def test_offline_and_missing_data_is_a_clear_error_not_a_traceback(tmp_path):
    import os

    env = {**os.environ, "MINILLM_DATA_DIR": str(tmp_path / "empty-mirror"),
           "MINILLM_CACHE_DIR": str(tmp_path / "cache"), "http_proxy": "http://127.0.0.1:9",
           "https_proxy": "http://127.0.0.1:9"}  # nothing listens on the discard port: fails at once
    result = subprocess.run([sys.executable, "-m", "minillm", "prepare", "the-verdict", "--out",
                             str(tmp_path / "out")], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2
    assert "could not download" in result.stderr and "MINILLM_DATA_DIR" in result.stderr
    assert "Traceback" not in result.stderr
