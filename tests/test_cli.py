"""The command line: `python -m minillm ...` in real subprocesses and in-process; `prepare` end to end.

What every command shares is tested here: help (defaults, choices, each preset's
settings), errors (`error: ...` and exit status 2, `--debug`), logging, and the
import cost (`--help` never imports torch). The pretraining commands are in
test_train_cli.py.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest

from minillm.cli import build_parser, main
from minillm.corpus import prepare_corpus
from minillm.data import read_text
from minillm.errors import ConfigError
from minillm.tokenizer import TOKENIZER_FILE, BPETokenizer
from minillm.tokens import read_shards


def run_cli(*args: str, cwd=None, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "minillm", *args], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=300)  # fmt: skip


def flat(text: str) -> str:
    """Help text with argparse's line wrapping undone."""
    return " ".join(text.split())


# ---------------------------------------------------------------------------
# Help
# ---------------------------------------------------------------------------


def test_help_lists_commands():
    result = run_cli("--help")
    assert result.returncode == 0, result.stderr
    for command in ("prepare", "datasets", "curate", "train", "generate", "quickstart", "finetune", "evaluate",
                    "export"):  # fmt: skip
        assert f"\n    {command}" in result.stdout, command
    result = run_cli("prepare", "--help")
    assert result.returncode == 0
    help_text = flat(result.stdout)
    assert "--vocab-size INT BPE vocabulary size to learn (bpe only) (default: 4096)" in help_text
    assert "{bpe,char,gpt2}" in help_text and "(default: bpe)" in help_text


def test_every_command_has_help_with_defaults(capsys):
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    for name, sub in commands.items():
        assert sub.format_help().startswith(f"usage: python -m minillm {name}")
        for action in sub._actions:
            if action.option_strings and action.help != "==SUPPRESS==":
                assert action.help, f"{name} {action.option_strings[0]} has no help"
    assert main(["evaluate", "--help"]) == 0
    text = flat(capsys.readouterr().out)
    assert "{loglik,letter,both}" in text and "(default: loglik)" in text and "(default: 16)" in text


def test_train_help_lists_each_presets_default_and_the_choices(capsys):
    from minillm.cli.train import SETTING_HELP
    from minillm.config import PRESETS, preset_config, settings

    assert main(["train", "--help"]) == 0
    text = flat(capsys.readouterr().out)
    assert "n_layer: default 4 (shakespeare-char, quickstart, book), 12 (gpt2-124m)" in text
    assert "lr: default 0.001 (shakespeare-char), 0.003 (quickstart, book), 0.0006 (gpt2-124m)" in text
    configs = {name: preset_config(name) for name in PRESETS}
    for setting in settings().values():
        option = "--" + setting.name.replace("_", "-")
        assert option in text, option
        assert f"{setting.name}: default" in text
        if setting.choices:
            assert f"{option} {{{','.join(setting.choices)}}}" in text
        values = {getattr(c.model if setting.owner == "model" else c, setting.name) for c in configs.values()}
        if len(values) == 1:
            assert f"{setting.name}: default" in text and "(every preset)" in text
    assert set(SETTING_HELP) == set(settings()), "every setting needs its meaning in SETTING_HELP, and only those"


# ---------------------------------------------------------------------------
# Laziness: `import minillm` and `--help` import no torch
# ---------------------------------------------------------------------------

NO_TORCH = """
import contextlib, io, sys
import minillm
assert "torch" not in sys.modules, "import minillm imported torch"
assert "minillm.model" not in sys.modules
from minillm.cli import build_parser, main
build_parser()
assert "torch" not in sys.modules, "building the parser imported torch"
with contextlib.redirect_stdout(io.StringIO()) as out:
    assert main(["--help"]) == 0
    assert main(["prepare", "--help"]) == 0
    assert main(["export", "--help"]) == 0
assert "train" in out.getvalue()
assert "torch" not in sys.modules, "--help imported torch"
print("ok")
"""


def test_import_and_help_do_not_import_torch():
    result = subprocess.run([sys.executable, "-c", NO_TORCH], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
    # the real entry point: -X importtime lists every module imported
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "minillm", "--help"], capture_output=True,
                            text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if "|" in line}
    assert "minillm.cli" in imported and "torch" not in imported


def test_reexports_are_imported_lazily():
    import minillm

    code = ("import sys, minillm; assert 'minillm.corpus' not in sys.modules; f = minillm.prepare_corpus; "
            "assert 'minillm.corpus' in sys.modules and f.__module__ == 'minillm.corpus'; "
            "assert 'prepare_corpus' in dir(minillm) and 'GPT' in dir(minillm); print('ok')")  # fmt: skip
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "ok", result.stderr
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        minillm.not_a_name  # noqa: B018


IMPORTED_DEPENDENCIES = """
import warnings
import numpy, regex, tiktoken, safetensors.torch, tqdm, tqdm.auto, torch, torch.distributed, torch.nn.functional
import datasets, matplotlib, sympy  # torch imports sympy lazily (it adds a filter)
before = list(warnings.filters)
import minillm, minillm.train, minillm.distributed
assert minillm.GPT and minillm.TrainConfig
after = list(warnings.filters)
assert after == before, [f for f in after if f not in before]
print("ok")
"""


def test_importing_minillm_changes_no_warning_filters():
    """A library never changes its user's warning filters (third-party imports go first: some do)."""
    result = subprocess.run([sys.executable, "-c", IMPORTED_DEPENDENCIES], capture_output=True, text=True,
                            timeout=300)  # fmt: skip
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


# ---------------------------------------------------------------------------
# Errors, --debug, logging
# ---------------------------------------------------------------------------


def test_a_minillm_error_is_error_exit_2_and_debug_reraises(tmp_path, capsys):
    args = ["train", "--preset", "shakespeare", "--out", str(tmp_path / "x")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown preset 'shakespeare'") and "Traceback" not in err
    with pytest.raises(ConfigError, match="unknown preset"):
        main(["--debug", *args])
    with pytest.raises(ConfigError, match="unknown preset"):
        main([*args, "--debug"])  # after the command too
    with pytest.raises(FileNotFoundError):  # an OSError: error: ... without --debug
        main(["--debug", "curate", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])
    assert main(["curate", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "error: input" in capsys.readouterr().err


def test_bugs_keep_their_traceback_and_ctrl_c_is_one_line(monkeypatch, capsys):
    from minillm.cli import data

    def boom(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(data, "run_datasets", boom)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["datasets"])

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(data, "run_datasets", interrupted)
    assert main(["datasets"]) == 130
    assert capsys.readouterr().err.strip() == "interrupted"
    with pytest.raises(KeyboardInterrupt):
        main(["--debug", "datasets"])


def test_command_line_mistakes_are_errors_with_exit_2(tmp_path, capsys):
    assert main(["prepare"]) == 2  # missing NAME
    err = capsys.readouterr().err
    assert err.startswith("usage: python -m minillm prepare") and "error: the following arguments are required" in err
    assert main(["prepare", "x", "--vocab-size", "many"]) == 2
    assert "error: argument --vocab-size: invalid int value: 'many'" in capsys.readouterr().err
    assert main(["prepare", "x", "--vocab-sise", "300"]) == 2
    assert "unknown option --vocab-sise (did you mean --vocab-size?)" in capsys.readouterr().err
    assert main(["no-such-command"]) == 2
    assert "invalid choice: 'no-such-command'" in capsys.readouterr().err
    assert main(["generate", "--checkpoint", str(tmp_path), "--temperature", "nan"]) == 2  # refused while parsing
    err = capsys.readouterr().err
    assert "error: argument --temperature: must be a finite number >= 0 (0: greedy), got 'nan'" in err
    assert main(["generate", "--checkpoint", str(tmp_path), "--num-samples", "0"]) == 2
    assert "error: argument --num-samples: must be an integer >= 1, got '0'" in capsys.readouterr().err


def test_library_logging_prints_plain_lines_on_rank_0_only(monkeypatch, capsys):
    from minillm.cli import data

    def logs(args):
        logging.getLogger("minillm.somewhere").info("a message for the user")
        logging.getLogger("minillm.somewhere").debug("not shown")
        return 0

    monkeypatch.setattr(data, "run_datasets", logs)
    assert main(["datasets"]) == 0
    assert capsys.readouterr().err == "a message for the user\n"
    monkeypatch.setenv("RANK", "1")  # another process of a torchrun launch
    assert main(["datasets"]) == 0
    assert capsys.readouterr().err == ""
    assert logging.getLogger("minillm").handlers == []  # restored after the command


# ---------------------------------------------------------------------------
# datasets, prepare
# ---------------------------------------------------------------------------


def test_datasets_lists_every_name():
    result = run_cli("datasets")
    assert result.returncode == 0, result.stderr
    listed = {line.split()[0] for line in result.stdout.splitlines() if line.strip()}
    assert {"tinyshakespeare", "mmlu", "hellaswag", "gpt2"} <= listed


def test_prepare_unknown_dataset_is_a_clear_error(tmp_path):
    result = run_cli("prepare", "tinyshakespear", "--out", str(tmp_path / "x"))
    assert result.returncode == 2, result.stderr
    assert "unknown data set" in result.stderr and "tinyshakespeare" in result.stderr
    assert "Traceback" not in result.stderr


def test_prepare_writes_shards_that_decode_to_the_text(tmp_path):
    out = tmp_path / "verdict"
    result = run_cli("prepare", "the-verdict", "--vocab-size", "300", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert f"train --preset PRESET --data {out}" in result.stdout
    summary = json.loads((out / "corpus.json").read_text())
    assert summary["vocab_size"] == 300 and summary["dtype"] == "uint16"

    tok = BPETokenizer.load(out / TOKENIZER_FILE)
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
                             read_shards(tmp_path / kind, "val")[:]])  # fmt: skip
    if kind == "char":
        assert summary["tokens"] == len(text) and summary["vocab_size"] == len(set(text))
    else:  # GPT-2's own tokenizer, through tiktoken, is the independent reference
        assert tokens.tolist() == tiktoken.get_encoding("gpt2").encode_ordinary(text)


def test_offline_and_missing_data_is_a_clear_error_not_a_traceback(tmp_path):
    env = {**os.environ, "MINILLM_DATA_DIR": str(tmp_path / "empty-mirror"),
           "MINILLM_CACHE_DIR": str(tmp_path / "cache"), "http_proxy": "http://127.0.0.1:9",
           "https_proxy": "http://127.0.0.1:9"}  # nothing listens on the discard port: fails at once
    result = run_cli("prepare", "the-verdict", "--out", str(tmp_path / "out"), env=env)
    assert result.returncode == 2
    assert "could not download" in result.stderr and "MINILLM_DATA_DIR" in result.stderr
    assert "Traceback" not in result.stderr
