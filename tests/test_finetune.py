"""Tests of minillm.classify and minillm.finetune: classifier head, spam splits, collate, freezing, the loop,
checkpoints, Ctrl-C and exact resume (library and `finetune` command)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from minillm.classify import (
    ClassificationDataset,
    GPTClassifier,
    classification_collate,
    classification_loader,
    confusion_matrix,
    predict,
    spam_splits,
    stratified_splits,
)
from minillm.checkpoint import latest_checkpoint, read_trainer_state
from minillm.errors import CheckpointError, CheckpointNotFoundError, ConfigError, RunFolderError
from minillm.finetune import FinetuneConfig, evaluate_loader, finetune, set_trainable
from minillm.lora import LoRAConfig, inject_lora
from minillm.model import GPT, GPTConfig
from minillm.optim import cosine_lr
from minillm.tokenizer import TOKENIZER_FILE, BPETokenizer


def tiny_gpt(vocab_size: int = 20, **kw) -> GPT:
    return GPT(GPTConfig(vocab_size=vocab_size, context_length=16, d_model=32, n_layer=3, n_head=4, **kw))


class IdTokenizer:
    """Text "3 5 7" -> ids [3, 5, 7]: lets tests write token ids as text."""

    special_tokens: dict[str, int] = {}

    def encode_ordinary(self, text: str) -> list[int]:
        return [int(t) for t in text.split()]


def test_classification_collate_pads_right_by_hand():
    batch = classification_collate([([4, 5, 6], 1), ([7], 0)], pad_id=9)
    assert batch["idx"].tolist() == [[4, 5, 6], [7, 9, 9]]
    assert batch["lengths"].tolist() == [3, 1] and batch["targets"].tolist() == [1, 0]
    with pytest.raises(ValueError, match="empty batch"):
        classification_collate([])


def test_dataset_truncates_to_max_length_and_rejects_empty():
    data = ClassificationDataset([("1 2 3 4 5", 1), ("6", 0)], IdTokenizer(), max_length=3)
    assert data[0] == ([1, 2, 3], 1) and data[1] == ([6], 0) and len(data) == 2
    with pytest.raises(ValueError, match="no tokens"):
        ClassificationDataset([("", 0)], IdTokenizer(), max_length=3)


def test_classifier_scores_last_real_token_and_ignores_padding():
    torch.manual_seed(0)
    clf = GPTClassifier(tiny_gpt(), num_classes=3).eval()
    assert clf.gpt.lm_head is clf.head and clf.head.weight.shape == (3, 32)
    assert clf.gpt.tok_emb.weight.shape == (20, 32)  # the embedding is kept, untied from the new head
    seqs = [[1, 2, 3, 4, 5], [6, 7]]
    batch = classification_collate([(s, 0) for s in seqs], pad_id=0)
    logits, _ = clf(batch["idx"], lengths=batch["lengths"])
    for row, seq in enumerate(seqs):  # each sequence alone, no padding: its last position
        alone, _ = clf(torch.tensor([seq]))
        torch.testing.assert_close(logits[row], alone[0], rtol=1e-5, atol=1e-5)
    # the head applied to the final hidden state, computed by hand
    x = clf.gpt.tok_emb(torch.tensor([seqs[1]])) + clf.gpt.pos_emb(torch.arange(2))
    for block in clf.gpt.blocks:
        x = block(x)
    expected = F.linear(clf.gpt.norm_f(x)[0, -1], clf.head.weight, clf.head.bias)
    torch.testing.assert_close(logits[1], expected, rtol=1e-5, atol=1e-5)
    _, loss = clf(**batch)
    torch.testing.assert_close(loss, F.cross_entropy(logits, batch["targets"]))
    with pytest.raises(ValueError, match="lengths"):
        clf(batch["idx"], lengths=torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="num_classes"):
        GPTClassifier(tiny_gpt(), num_classes=1)


def test_set_trainable_counts_by_hand():
    clf = GPTClassifier(tiny_gpt(), num_classes=2)
    head = 32 * 2 + 2
    norm = 2 * 32
    block = sum(p.numel() for p in clf.gpt.blocks[0].parameters())
    total = sum(p.numel() for p in clf.parameters())
    assert set_trainable(clf, "head")["trainable"] == head
    assert set_trainable(clf, 0)["trainable"] == head + norm
    assert set_trainable(clf, 2)["trainable"] == head + norm + 2 * block
    assert all(not p.requires_grad for p in clf.gpt.blocks[0].parameters())
    assert all(p.requires_grad for p in clf.gpt.blocks[2].parameters())
    assert set_trainable(clf, "all")["trainable"] == total
    assert set_trainable(clf, "none")["trainable"] == 0
    for bad in ("some", 4, -1, True):
        with pytest.raises(ValueError, match="layers must be"):
            set_trainable(clf, bad)


def test_stratified_splits_balance_and_proportions():
    by_class = {0: [f"ham{i}" for i in range(100)], 1: [f"spam{i}" for i in range(20)]}
    splits = stratified_splits(by_class, seed=1, fractions=(0.5, 0.25, 0.25), balance=True)
    for name, n in {"train": 10, "val": 5, "test": 5}.items():
        assert sum(1 for _, y in splits[name] if y == 0) == n and sum(1 for _, y in splits[name] if y == 1) == n
    texts = [t for rows in splits.values() for t, _ in rows]
    assert len(texts) == len(set(texts)) == 40
    assert stratified_splits(by_class, 1, (0.5, 0.25, 0.25), True) == splits
    assert stratified_splits(by_class, 2, (0.5, 0.25, 0.25), True) != splits
    unbalanced = stratified_splits(by_class, 1, (0.5, 0.25, 0.25), balance=False)
    assert sum(len(v) for v in unbalanced.values()) == 120
    with pytest.raises(ValueError, match="fractions"):
        stratified_splits(by_class, 1, (0.5, 0.5, 0.5), True)


def test_spam_splits_from_the_data_layer():
    splits = spam_splits(seed=123)
    # distinct messages: 653 spam, 4,518 ham (counted independently from the raw file); 653 of each, 70/10/20
    assert {k: len(v) for k, v in splits.items()} == {"train": 2 * 457, "val": 2 * 65, "test": 2 * 131}
    for rows in splits.values():
        assert 2 * sum(label for _, label in rows) == len(rows)
    texts = [t for rows in splits.values() for t, _ in rows]
    assert len(set(texts)) == len(texts)


def test_confusion_matrix_by_hand():
    preds, labels = torch.tensor([0, 1, 1, 0, 1]), torch.tensor([0, 1, 0, 0, 1])
    assert confusion_matrix(preds, labels, 2).tolist() == [[2, 1], [0, 2]]


def _synthetic(n: int, seed: int) -> list[tuple[str, int]]:
    """Label 1 when token 3 occurs in the sequence: a task a tiny model learns in a few dozen steps."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        ids = torch.randint(4, 20, (int(torch.randint(3, 12, (1,), generator=gen)),), generator=gen)
        if i % 2:
            ids[int(torch.randint(0, len(ids), (1,), generator=gen))] = 3
        rows.append((" ".join(map(str, ids.tolist())), i % 2))
    return rows


def test_finetune_learns_a_synthetic_task_and_writes_metrics(tmp_path):
    torch.manual_seed(0)
    clf = GPTClassifier(tiny_gpt(), 2)
    train = classification_loader(_synthetic(256, 0), IdTokenizer(), 16, batch_size=16, shuffle=True)
    val = classification_loader(_synthetic(64, 1), IdTokenizer(), 16, batch_size=32)
    before = evaluate_loader(clf, val)["accuracy"]
    config = FinetuneConfig(epochs=4, lr=3e-3, min_lr=3e-4, warmup_steps=5, eval_interval=40, device="cpu")
    result = finetune(clf, train, val, config, tmp_path, progress=False)
    assert result.steps == 4 * 16
    after = evaluate_loader(clf, val)
    assert before < 0.75 and after["accuracy"] >= 0.9
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 65)) and (tmp_path / "loss.png").is_file()
    assert [r["step"] for r in records if "val_accuracy" in r] == [40, 64]
    assert records[-1]["val_accuracy"] == after["accuracy"]
    for r in records:  # the pretraining schedule (chapter 05), not a copy
        assert math.isclose(r["lr"], cosine_lr(r["step"] - 1, 3e-3, 64, 5, 3e-4))
    preds, labels = predict(clf, val)
    assert (preds == labels).float().mean().item() == after["accuracy"]


def test_finetune_trains_only_unfrozen_parameters():
    torch.manual_seed(0)
    clf = GPTClassifier(tiny_gpt(), 2)
    set_trainable(clf, 1)
    frozen = {k: v.clone() for k, v in clf.named_parameters() if not k.startswith(("gpt.blocks.2", "gpt.norm_f",
                                                                                   "gpt.lm_head"))}  # fmt: skip
    trained = clf.gpt.blocks[2].mlp.fc.weight.detach().clone()
    train = classification_loader(_synthetic(32, 0), IdTokenizer(), 16, batch_size=8)
    finetune(clf, train, None, FinetuneConfig(epochs=1, device="cpu"), progress=False)
    for k, v in clf.named_parameters():
        if k in frozen:
            assert torch.equal(v, frozen[k]), k
    assert not torch.equal(clf.gpt.blocks[2].mlp.fc.weight, trained)
    with pytest.raises(ValueError, match="no parameter requires a gradient"):
        set_trainable(clf, "none")
        finetune(clf, train, None, FinetuneConfig(epochs=1, device="cpu"), progress=False)


def test_classifier_save_load_round_trip(tmp_path):
    clf = GPTClassifier(tiny_gpt(), 2, labels=("ham", "spam")).eval()
    idx = torch.randint(0, 20, (2, 7))
    clf.save(tmp_path / "clf")
    again = GPTClassifier.load(tmp_path / "clf").eval()
    assert again.labels == ("ham", "spam")
    torch.testing.assert_close(again(idx)[0], clf(idx)[0], rtol=0, atol=0)
    inject_lora(clf, LoRAConfig(rank=2))
    with pytest.raises(ValueError, match="LoRA"):
        clf.save(tmp_path / "lora")
    with pytest.raises(FileNotFoundError):
        GPTClassifier.load(tmp_path / "missing")


def test_finetune_config_validation():
    with pytest.raises(ValueError, match="epochs"):
        FinetuneConfig(epochs=0)
    with pytest.raises(ValueError, match="lr"):
        FinetuneConfig(lr=1e-4, min_lr=1e-3)
    with pytest.raises(ValueError, match="schedule"):
        FinetuneConfig(schedule="linear")


# ---------------------------------------------------------------------------
# Checkpoints, Ctrl-C and exact resume
# ---------------------------------------------------------------------------


def _run_parts(lora: bool) -> tuple:
    """The same model and loaders every call: dropout on (the RNG states matter), shuffled training data."""
    torch.manual_seed(0)
    model = GPTClassifier(tiny_gpt(dropout=0.1), 2)
    if lora:
        inject_lora(model, LoRAConfig(rank=2, dropout=0.1, targets=("attn.qkv", "mlp.fc")))
        model.head.requires_grad_(True)
    train = classification_loader(_synthetic(40, 0), IdTokenizer(), 16, batch_size=8, shuffle=True, seed=3)
    val = classification_loader(_synthetic(16, 1), IdTokenizer(), 16, batch_size=8)
    return model, train, val


RESUME_CONFIG = FinetuneConfig(epochs=3, lr=3e-3, min_lr=3e-4, warmup_steps=2, eval_interval=4, device="cpu")


@pytest.mark.parametrize("lora,stop", [(False, 7), (True, 5)], ids=["full-mid-epoch", "lora-epoch-end"])
def test_resume_continues_on_the_loss_curve_of_an_uninterrupted_run(tmp_path, one_thread, lora, stop):
    model, train, val = _run_parts(lora)  # 5 batches per epoch, 15 steps
    whole = finetune(model, train, val, RESUME_CONFIG, tmp_path / "whole", progress=False)
    assert not whole.interrupted and whole.steps == 15

    model, train, val = _run_parts(lora)
    first = finetune(model, train, val, RESUME_CONFIG, tmp_path / "run", progress=False, stop_after=stop)
    assert first.interrupted and first.steps == stop
    folder = tmp_path / "run" / "checkpoints" / f"step_{stop:07d}"
    assert latest_checkpoint(tmp_path / "run") == folder
    assert {p.name for p in folder.iterdir()} == {"model.safetensors", "trainer.pt", "finetune_config.json"}
    state = read_trainer_state(folder)  # weights_only=True
    assert (state["step"], state["epoch"], state["batches"]) == (stop, (stop - 1) // 5, (stop - 1) % 5 + 1)

    torch.manual_seed(999)  # whatever happened in between: the checkpoint's RNG states take over
    model, train, val = _run_parts(lora)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # and its weights
    rest = finetune(model, train, val, RESUME_CONFIG, tmp_path / "run", progress=False, resume=True)
    assert rest.steps == 15 and [r["step"] for r in rest.history] == list(range(stop + 1, 16))
    got, want = first.history + rest.history, whole.history
    for name in ("train_loss", "grad_norm", "val_loss", "val_accuracy"):
        torch.testing.assert_close([r.get(name, 0.0) for r in got], [r.get(name, 0.0) for r in want],
                                   rtol=0, atol=1e-6, msg=name)  # fmt: skip
    for a, b in zip(model.state_dict().values(), whole.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    saved = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert saved == list(range(1, 16))  # each step once
    assert latest_checkpoint(tmp_path / "run").name == "step_0000015"
    assert len(list((tmp_path / "run" / "checkpoints").glob("step_*"))) == 1  # keep_checkpoints=1


def test_checkpoints_every_eval_interval_and_resume_refusals(tmp_path, one_thread):
    from minillm.checkpoint import locked

    model, train, val = _run_parts(False)
    config = dataclasses.replace(RESUME_CONFIG, keep_checkpoints=5)
    finetune(model, train, val, config, tmp_path, progress=False, stop_after=10)
    steps = sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*"))
    assert steps == ["step_0000004", "step_0000008", "step_0000010"]
    with pytest.raises(RunFolderError, match="holds the checkpoints of a fine-tuning run"):
        finetune(model, train, val, config, tmp_path, progress=False)  # a second run in the same folder
    with pytest.raises(CheckpointError, match=r"other settings.*'lr': \(0\.003, 0\.01\)"):
        finetune(model, train, val, dataclasses.replace(config, lr=1e-2), tmp_path, progress=False, resume=True)
    other = classification_loader(_synthetic(48, 0), IdTokenizer(), 16, batch_size=8, shuffle=True)
    with pytest.raises(CheckpointError, match="5 training batches per epoch, the loader now gives 6"):
        finetune(model, other, val, config, tmp_path, progress=False, resume=True)
    set_trainable(model, "head")
    with pytest.raises(CheckpointError, match="optimizer state"):
        finetune(model, train, val, config, tmp_path, progress=False, resume=True)
    with pytest.raises(CheckpointNotFoundError, match="no checkpoint"):
        finetune(model, train, val, config, tmp_path / "new", progress=False, resume=True)
    with pytest.raises(ConfigError, match="out_dir"):
        finetune(model, train, val, config, None, progress=False, resume=True)
    with locked(tmp_path), pytest.raises(RunFolderError, match="in use by a live run"):
        finetune(model, train, val, config, tmp_path, progress=False, resume=True)
    set_trainable(model, "all")
    resumed = finetune(model, train, val, dataclasses.replace(config, eval_interval=100), tmp_path, progress=False,
                       resume=True)  # eval_interval may change  # fmt: skip
    assert resumed.steps == 15 and resumed.history[0]["step"] == 11


def _tiny_base(folder: Path) -> Path:
    """A minillm model folder a `finetune` command reads: a tiny GPT and a byte-level tokenizer."""
    GPT(GPTConfig(vocab_size=257, context_length=32, d_model=32, n_layer=2, n_head=4)).save(folder)
    BPETokenizer.train("bytes only", 257).save(folder / TOKENIZER_FILE)
    return folder


def test_finetune_command_ctrl_c_saves_and_resume_completes(tmp_path, capsys, one_thread):
    base, out = _tiny_base(tmp_path / "base"), tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # a tiny model: one thread is fastest, and never oversubscribed
    command = [sys.executable, "-m", "minillm", "finetune", "--task", "classify", "--checkpoint", str(base),
               "--out", str(out), "--max-steps", "120", "--batch-size", "4", "--eval-interval", "50",
               "--device", "cpu"]  # fmt: skip
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                            env=env)  # fmt: skip
    seen = []
    try:
        while not any("fine-tuning steps 1 to 120" in line for line in seen):  # Ctrl-C is handled from here on
            line = proc.stderr.readline()
            assert line, f"finetune ended before training: {''.join(seen)}"
            seen.append(line)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        proc.kill()
    stderr = "".join(seen) + stderr
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "Ctrl-C: finishing this step" in stderr
    checkpoint = latest_checkpoint(out)
    step = read_trainer_state(checkpoint)["step"]
    assert 0 < step < 120
    assert stdout.strip().splitlines()[-1] == (f"interrupted at step {step}: continue with  python -m minillm "
                                               f"finetune --out {out} --resume")  # fmt: skip
    assert not (out / "results.json").exists()

    from minillm.cli import main

    assert main(["finetune", "--out", str(out), "--resume", "--max-steps", "121"]) == 2  # not the run's setting
    assert "--max-steps was 120 there, not 121" in capsys.readouterr().err
    assert main(["finetune", "--out", str(out), "--resume", "--device", "cpu"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["steps"] == 120 and 0 <= results["test"]["accuracy"] <= 1
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 121))
    assert GPTClassifier.load(out / "model").labels == ("ham", "spam")
    assert main(command[3:]) == 2  # the new-run command again: the folder holds a run
    assert "not empty; choose another --out, or continue its run with --resume" in capsys.readouterr().err


def test_finetune_command_explains_a_checkpoint_that_holds_no_model(tmp_path, capsys):
    from minillm.cli import main

    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["finetune", "--task", "classify", "--checkpoint", str(empty), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {empty} holds no model") and "Hugging Face" not in err
    assert main(["finetune", "--out", str(tmp_path / "o")]) == 2
    assert "needs --task and --checkpoint" in capsys.readouterr().err
    assert main(["finetune", "--out", str(empty), "--resume"]) == 2
    assert f"{empty} holds no fine-tuning run to resume" in capsys.readouterr().err
    run = tmp_path / "run"  # a fine-tuning output folder given as the model to start from
    run.mkdir()
    (run / "finetune_args.json").write_text("{}")
    assert main(["finetune", "--task", "classify", "--checkpoint", str(run), "--out", str(tmp_path / "o")]) == 2
    assert "is the output folder of a fine-tuning run" in capsys.readouterr().err
