"""No command and no loader unpickles anything from a folder a user hands us.

A pickle runs code when it is loaded. The test plants one in every file a
loader might open (trainer state, DCP metadata and shards, `pytorch_model.bin`
and friends), then runs every command that reads a checkpoint. The payload
creates a marker file when unpickled; the marker must never appear.
"""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import pytest
import torch

from minillm import checkpoint as ckpt
from minillm.cli import main
from minillm.config import TrainConfig, apply_overrides
from minillm.errors import CheckpointError
from minillm.model import GPT
from minillm.train import train

pytestmark = pytest.mark.usefixtures("one_thread")

#: Names a loader could be tempted to open: trainer and optimizer states, DCP files, PyTorch weights.
PICKLE_NAMES = ("trainer.pt", "optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin",
                "pytorch_model.bin", "model.pt", "model.bin", "adapter.pt", "data.pkl", "dcp/.metadata",
                "dcp/__0_0.distcp")  # fmt: skip


class Payload:
    """Unpickling this opens (creates) the marker file: proof that code from the file ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def plant(folder: Path, marker: Path) -> None:
    """A pickle payload in every name of PICKLE_NAMES inside `folder` (replacing what was there)."""
    for name in PICKLE_NAMES:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as fh:
            torch.save({"state": Payload(marker)}, fh) if name.endswith(".pt") else pickle.dump(Payload(marker), fh)


@pytest.fixture(scope="module")
def poisoned(tmp_path_factory) -> dict:
    """A real run whose every checkpoint and root folder is full of pickle payloads."""
    tmp = tmp_path_factory.mktemp("safe")
    marker = tmp / "PWNED"
    config = apply_overrides(TrainConfig(), dict(
        data="the-verdict", tokenizer="bpe", vocab_size=300, tokenizer_chars=5000, n_layer=1, n_head=2, d_model=32,
        context_length=64, batch_size=2, max_steps=2, eval_interval=2, eval_batches=1, sample_tokens=0,
        device="cpu"))  # fmt: skip
    run = tmp / "run"
    train(config, run, progress=False, verbose=False)
    checkpoint = ckpt.latest_checkpoint(run)
    # a Hugging Face folder holding only pickled weights, and a sharded-looking checkpoint without safetensors
    hf = tmp / "hf"
    hf.mkdir()
    (hf / "config.json").write_text('{"model_type": "gpt2", "n_positions": 64, "n_embd": 32, "n_layer": 1, '
                                    '"n_head": 2, "vocab_size": 300}')  # fmt: skip
    sharded = tmp / "sharded"
    shutil.copytree(checkpoint, sharded)
    (sharded / "model.safetensors").unlink()
    for folder in (run, checkpoint, hf, sharded):
        plant(folder, marker)
    assert not marker.exists()
    return {"tmp": tmp, "marker": marker, "run": run, "checkpoint": checkpoint, "hf": hf, "sharded": sharded}


def test_the_payload_works(tmp_path):
    """The check is only as good as its payload: plain unpickling does create the marker."""
    marker = tmp_path / "marker"
    with open(tmp_path / "p.pkl", "wb") as fh:
        pickle.dump(Payload(marker), fh)
    with open(tmp_path / "p.pkl", "rb") as fh:
        pickle.load(fh)  # noqa: S301 - the point of this test
    assert marker.exists()


@pytest.mark.parametrize("which", ["run", "checkpoint"])
def test_loaders_read_no_pickle(poisoned, which):
    model, tokenizer = ckpt.load_model(poisoned[which])
    assert isinstance(model, GPT) and tokenizer.vocab_size == 300
    exported = ckpt.export_checkpoint(poisoned[which], poisoned["tmp"] / f"export-{which}")
    GPT.load(exported)
    assert not poisoned["marker"].exists()


def test_folders_with_only_pickled_weights_are_refused_not_unpickled(poisoned):
    with pytest.raises(CheckpointError, match="model.safetensors"):
        GPT.from_pretrained(poisoned["hf"])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        ckpt.load_model(poisoned["hf"])
    with pytest.raises(CheckpointError, match="sharded checkpoint"):
        ckpt.load_model(poisoned["sharded"])
    with pytest.raises(CheckpointError, match="cannot be read safely"):
        ckpt.read_trainer_state(poisoned["checkpoint"])  # weights_only refuses the payload's global
    assert not poisoned["marker"].exists()


@pytest.mark.parametrize("command", [
    ["generate", "--checkpoint", "{run}", "--prompt", "I", "--max-new-tokens", "3"],
    ["generate", "--checkpoint", "{checkpoint}", "--prompt", "I", "--max-new-tokens", "3"],
    ["evaluate", "--checkpoint", "{run}", "--tasks", "arc-easy", "--limit", "2", "--out", "{tmp}/eval.json",
     "--no-progress"],
    ["finetune", "--task", "classify", "--checkpoint", "{run}", "--out", "{tmp}/ft", "--max-steps", "1",
     "--batch-size", "4"],
    ["export", "--checkpoint", "{run}", "--out", "{tmp}/exp-minillm"],
    ["export", "--checkpoint", "{run}", "--out", "{tmp}/exp-hf", "--format", "hf"],
    ["train", "--out", "{run}", "--resume", "--max-steps", "4", "--no-progress"],
    ["generate", "--checkpoint", "{hf}", "--prompt", "I"],
    ["generate", "--checkpoint", "{sharded}", "--prompt", "I"],
], ids=["generate-run", "generate-checkpoint", "evaluate", "finetune", "export", "export-hf", "resume",
        "generate-hf-pickles", "generate-sharded"])  # fmt: skip
def test_no_command_executes_a_planted_pickle(poisoned, command, capsys):
    args = [a.format(**{k: str(v) for k, v in poisoned.items()}) for a in command]
    code = main(args)
    err = capsys.readouterr().err
    assert not poisoned["marker"].exists(), f"{command[0]} unpickled a planted file"
    if command[0] in ("train",) or "{hf}" in command or "{sharded}" in command:
        assert code == 2 and "error:" in err  # refused with a message, not a traceback
    else:
        assert code == 0, err
