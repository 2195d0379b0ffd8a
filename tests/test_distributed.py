"""minillm.distributed and the trainer's strategies: real torchrun processes on the CPU (gloo, 2 ranks).

One torchrun launch (tests/dist_worker.py) runs DDP, FSDP, a sharded
checkpoint resume, activation checkpointing and bf16 under FSDP, DDP and FSDP
under torch.compile, and measures
per-rank bytes; a two-"node" launch (two torchrun commands, one process each)
runs the CLI at the same time. The tests compare them with one-process runs here.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from minillm import distributed as D
from minillm.checkpoint import load_model
from minillm.memory import estimate_memory
from minillm.model import GPT, GPTConfig
from minillm import checkpoint as ckpt
from minillm.config import TrainConfig, preset_config
from minillm.corpus import prepare_corpus
from minillm.errors import ConfigError, LaunchError
from minillm.train import train

ROOT = Path(__file__).resolve().parents[1]
#: Over the shakespeare-char preset: a tiny character model of The Verdict, 2 micro-batches per step.
OVERRIDES = dict(data="the-verdict", n_layer=2, n_head=2, d_model=32, context_length=16, batch_size=4, grad_accum=2,
                 max_steps=6, warmup_steps=2, lr=3e-3, min_lr=3e-4, eval_interval=3, eval_batches=2, sample_tokens=0,
                 device="cpu")  # fmt: skip
TIMEOUT = 900  # seconds for a launch on a busy machine
PRESET_STEPS = 20  # the shakespeare-char preset under torchrun, as a reader would launch it


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(cache: Path) -> dict:
    # inductor's kernel cache in the test's own folder: nothing shared with other runs on the machine
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               MINILLM_CACHE_DIR=str(cache), TORCHINDUCTOR_CACHE_DIR=str(cache / "inductor"))  # fmt: skip
    env.setdefault("MINILLM_DATA_DIR", str(ROOT.parent / "shared" / "data"))
    return env


def _finish(proc: subprocess.Popen, what: str) -> str:
    try:
        out, _ = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    assert proc.returncode == 0, f"{what} failed (exit {proc.returncode}):\n{out[-6000:]}"
    return out


@pytest.fixture(scope="module")
def launched(tmp_path_factory) -> dict:
    """Start the 2-rank worker, a two-node CLI run on a prepared corpus, and the preset under torchrun."""
    tmp = tmp_path_factory.mktemp("dist")
    spec = tmp / "spec.json"
    spec.write_text(json.dumps({"out": str(tmp), "overrides": OVERRIDES}))
    # the corpus the two-node run reads: prepared once here; no rank may tokenize again
    prepared = tmp / "verdict-char"
    prepare_corpus(preset_config("shakespeare-char", **OVERRIDES), prepared)
    stamps = {p.name: p.stat().st_mtime_ns for p in prepared.iterdir()}
    run = [sys.executable, "-m", "torch.distributed.run"]
    common = dict(cwd=ROOT, env=_env(tmp / "cache"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    worker = subprocess.Popen([*run, "--nproc_per_node=2", "--master_addr=127.0.0.1", f"--master_port={free_port()}",
                               str(ROOT / "tests" / "dist_worker.py"), str(spec)], **common)  # fmt: skip
    port = free_port()
    settings = {k: v for k, v in OVERRIDES.items() if k != "data"}
    cli = ["-m", "minillm", "train", "--preset", "shakespeare-char", "--out", str(tmp / "two_nodes"), "--data",
           str(prepared), "--strategy", "ddp", "--no-progress"] + [a for k, v in settings.items()
                                                                   for a in (f"--{k}", str(v))]  # fmt: skip
    nodes = [subprocess.Popen([*run, "--nnodes=2", f"--node_rank={i}", "--nproc_per_node=1",
                               "--master_addr=127.0.0.1", f"--master_port={port}", *cli], **common)
             for i in range(2)]  # fmt: skip
    _finish(worker, "the 2-rank worker")
    for i, node in enumerate(nodes):
        _finish(node, f"node {i} of the two-node run")
    # the preset exactly as a reader types it: no --strategy, no --grad-accum, no --batch-size
    preset = subprocess.Popen([*run, "--nproc_per_node=2", "--master_addr=127.0.0.1", f"--master_port={free_port()}",
                               "-m", "minillm", "train", "--preset", "shakespeare-char", "--max-steps",
                               str(PRESET_STEPS), "--out", str(tmp / "preset"), "--no-progress"], **common)  # fmt: skip
    preset_log = _finish(preset, "the shakespeare-char preset under torchrun")
    return {"tmp": tmp, "prepared": prepared, "stamps": stamps, "preset_log": preset_log,
            **json.loads((tmp / "results.json").read_text())}  # fmt: skip


@pytest.fixture(scope="module")
def single() -> list[float]:
    """The one-process run with the same global batch and seed."""
    torch.set_num_threads(1)
    result = train(preset_config("shakespeare-char", **OVERRIDES), None, progress=False, verbose=False)
    return [r["train_loss"] for r in result.history if "train_loss" in r]


def test_ddp_matches_a_single_process_at_every_step(launched, single):
    assert launched["world_size"] == 2
    assert len(launched["ddp"]) == OVERRIDES["max_steps"]
    torch.testing.assert_close(launched["ddp"], single, rtol=0, atol=1e-5)


def test_fsdp_matches_ddp_at_every_step(launched):
    torch.testing.assert_close(launched["fsdp"], launched["ddp"], rtol=0, atol=1e-5)


def test_activation_checkpointing_and_zero2_resharding_keep_the_fsdp_curve(launched):
    torch.testing.assert_close(launched["fsdp_checkpointed"], launched["fsdp"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_compiled_ddp_and_fsdp_give_the_eager_losses(launched, strategy):
    """`--compile` under torchrun: inductor's kernels on the CPU, the eager losses to 1e-5 at every step."""
    assert len(launched[f"{strategy}_compiled"]) == 3
    assert launched["inductor_files"] > 0, "inductor generated no kernels: nothing was compiled"
    torch.testing.assert_close(launched[f"{strategy}_compiled"], launched[f"{strategy}_eager3"], rtol=0, atol=1e-5)


def test_bf16_under_fsdp_trains(launched):
    bf16 = launched["fsdp_bf16"]
    assert len(bf16) == 2 and all(math.isfinite(x) for x in bf16)
    assert abs(bf16[0] - launched["fsdp"][0]) < 0.05  # the same first batch, computed in bf16


def test_fsdp_holds_about_half_the_bytes_of_ddp_and_the_estimator_agrees(launched):
    ddp = sum(launched["bytes_ddp"].values())
    config = GPTConfig(vocab_size=64, context_length=32, d_model=64, n_layer=4, n_head=4)  # the worker's model
    model = GPT(config)
    n, tensors = model.num_parameters(), len(list(model.parameters()))
    assert ddp == 16 * n + 4 * tensors  # fp32 weights, grads, two AdamW moments, one fp32 step count per tensor
    for rank in launched["per_rank"]:
        fsdp = sum(rank["bytes_fsdp"].values())
        assert fsdp <= 0.55 * ddp
        estimate = estimate_memory(config, strategy="fsdp", world_size=2).states
        assert abs(estimate - fsdp) <= 0.10 * fsdp
    assert abs(estimate_memory(config, strategy="ddp", world_size=2).states - ddp) <= 0.10 * ddp


def test_ddp_defers_the_all_reduce_to_the_last_micro_batch_and_equals_one_big_batch(launched):
    for rank in launched["per_rank"]:
        deferred = rank["deferred"]
        assert deferred["per_sync"] >= 1
        assert deferred["accumulated_calls"] == deferred["per_sync"]  # 2 micro-batches, one all-reduce
        assert deferred["max_grad_diff"] < 1e-6


def test_sharded_checkpoint_resume_continues_the_same_curve(launched):
    torch.testing.assert_close(launched["fsdp_resumed"], launched["fsdp"], rtol=0, atol=1e-6)
    shards = launched["tmp"] / "fsdp" / "checkpoints" / "step_0000006" / ckpt.SHARDS
    assert sorted(p.name for p in shards.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]  # one per rank


def test_export_gives_one_safetensors_file_with_the_same_logits(launched, tmp_path):
    saved = torch.load(launched["tmp"] / "logits.pt", weights_only=True)
    out = ckpt.export_checkpoint(launched["tmp"] / "fsdp", tmp_path / "export")
    assert (out / "model.safetensors").is_file()
    model = GPT.load(out).eval()
    with torch.no_grad():
        logits, _ = model(saved["x"])
    torch.testing.assert_close(logits, saved["logits"], rtol=0, atol=1e-5)
    direct, tokenizer = load_model(launched["tmp"] / "fsdp")  # its full weights, written at every sharded save
    torch.testing.assert_close(direct(saved["x"])[0], saved["logits"], rtol=0, atol=1e-5)
    assert tokenizer.vocab_size == model.config.vocab_size


def test_two_nodes_match_the_single_node_run(launched):
    run = launched["tmp"] / "two_nodes"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train_loss"] for r in records if "train_loss" in r]
    torch.testing.assert_close(losses, launched["ddp"], rtol=0, atol=1e-5)
    assert (run / "checkpoints" / "step_0000006" / ckpt.SHARDS / ".metadata").is_file()


def test_torchrun_ranks_read_the_prepared_shards_without_tokenizing_again(launched):
    prepared = launched["prepared"]
    assert {p.name: p.stat().st_mtime_ns for p in prepared.iterdir()} == launched["stamps"]  # untouched
    corpora = launched["tmp"] / "cache" / "corpora"
    assert not any(p.name.startswith("the-verdict") for p in corpora.glob("*"))  # nothing prepared again
    saved = ckpt.read_config(launched["tmp"] / "two_nodes")
    assert saved.data == str(prepared) and saved.tokenizer == "char"


def test_the_preset_under_torchrun_needs_no_extra_flags_and_logs_the_one_process_losses(launched):
    log = launched["preset_log"]
    assert "2 processes share each micro-batch of 12 sequences (6 each)" in log
    records = [json.loads(line) for line in (launched["tmp"] / "preset" / "metrics.jsonl").read_text().splitlines()]
    ranked = [r["train_loss"] for r in records if "train_loss" in r]
    torch.set_num_threads(1)
    one = train(preset_config("shakespeare-char", max_steps=PRESET_STEPS), None, progress=False, verbose=False)
    alone = [r["train_loss"] for r in one.history if "train_loss" in r]
    assert len(ranked) == PRESET_STEPS
    torch.testing.assert_close(ranked, alone, rtol=0, atol=2e-5)


# ---------------------------------------------------------------------------
# One process: precisions, errors, helpers
# ---------------------------------------------------------------------------


def tiny(**overrides) -> TrainConfig:
    return preset_config("shakespeare-char", **{**OVERRIDES, "max_steps": 4, **overrides})


def test_fp16_scaler_skips_an_injected_inf_step(monkeypatch):
    import minillm.train as train_module

    real, calls, seen = train_module.forward_backward, [0], {}

    def injecting(model, batches, device, precision, scaler=None):
        calls[0] += 1
        if calls[0] == 4:  # the step after the injection: were the weights left alone?
            seen["unchanged"] = all(torch.equal(p, q) for p, q in zip(model.parameters(), seen["before"]))
        loss = real(model, batches, device, precision, scaler)
        if calls[0] == 3:  # overflow in one gradient of step 3
            seen["before"] = [p.detach().clone() for p in model.parameters()]
            next(model.parameters()).grad[0, 0] = float("inf")
        return loss

    monkeypatch.setattr(train_module, "forward_backward", injecting)
    result = train(tiny(precision="fp16"), None, progress=False, verbose=False)
    steps = [r for r in result.history if "train_loss" in r]
    assert result.skipped_steps == 1 and seen["unchanged"]
    assert [r["skipped_steps"] for r in steps] == [0, 0, 1, 1]
    assert steps[2]["loss_scale"] == steps[1]["loss_scale"] / 2 == 2.0**15
    assert all(math.isfinite(r["train_loss"]) for r in steps)


def test_bf16_autocast_trains_in_one_process():
    result = train(tiny(precision="bf16", max_steps=2), None, progress=False, verbose=False)
    assert result.step == 2 and math.isfinite(result.val_loss)


def test_distributed_strategies_need_torchrun_and_whole_micro_batches(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(LaunchError, match="torchrun --nproc_per_node"):
        train(tiny(strategy="ddp"), None, progress=False)
    with pytest.raises(ConfigError, match="strategy must be one of"):
        TrainConfig(strategy="zero9")
    with pytest.raises(ConfigError, match="fp16 with strategy fsdp"):
        TrainConfig(strategy="fsdp", precision="fp16")
    assert D.resolve_strategy("auto") == "single"  # no torchrun here
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert D.resolve_strategy("auto") == "ddp" and D.resolve_strategy("fsdp") == "fsdp"


def test_a_global_batch_is_shared_by_whole_micro_batches_or_by_rows():
    assert D.batch_split(4, 12, 2) == (2, 1)  # whole micro-batches
    assert D.batch_split(1, 12, 2) == (1, 2)  # one micro-batch, half its rows each
    assert D.batch_split(2, 6, 4) == (1, 2)
    with pytest.raises(ConfigError, match=r"cannot share.*--grad-accum 6"):
        D.batch_split(3, 5, 2)
    assert D.shard_micro_batches(list("abcdef"), 1, 3) == ["c", "d"]
    assert D.shard_micro_batches(list("abcd"), 0, 1) == list("abcd")
    x = torch.arange(24).reshape(6, 4)
    halves = [D.shard_micro_batches([(x, x + 1)], rank, 2)[0] for rank in range(2)]
    torch.testing.assert_close(torch.cat([h[0] for h in halves]), x)  # the ranks' rows make the whole batch
    torch.testing.assert_close(torch.cat([h[1] for h in halves]), x + 1)


def test_single_process_context_and_helpers():
    ctx = D.init_distributed("cpu", "single")
    assert (ctx.rank, ctx.world_size, ctx.is_main, ctx.distributed) == (0, 1, True, False)
    assert ctx.all_reduce_mean(torch.tensor(2.5)) == 2.5 and ctx.any(True) and ctx.broadcast("x") == "x"
    ctx.barrier()
    D.teardown(ctx)  # nothing to tear down
    model = GPT(GPTConfig(vocab_size=16, context_length=8, d_model=16, n_layer=1, n_head=2))
    assert D.wrap_model(model, "single", ctx) is model
    assert D.make_grad_scaler("bf16", "ddp", ctx.device) is None
    # clipping plain tensors is minillm.optim's clip; compare with torch's
    a = [torch.randn(3, 4, requires_grad=True) for _ in range(2)]
    b = [t.detach().clone().requires_grad_() for t in a]
    for p, q in zip(a, b):
        p.grad = torch.full_like(p, 2.0)
        q.grad = torch.full_like(q, 2.0)
    torch.testing.assert_close(D.clip_grad_norm(a, 1.0), torch.nn.utils.clip_grad_norm_(b, 1.0))
    torch.testing.assert_close(a[0].grad, b[0].grad)
    assert not D.is_sharded(a)


def test_print0_prints_on_rank_0_only(monkeypatch, capsys):
    monkeypatch.setenv("RANK", "1")
    D.print0("hidden")
    monkeypatch.setenv("RANK", "0")
    D.print0("shown")
    assert capsys.readouterr().out == "shown\n"


def test_export_rejects_a_folder_without_a_model(tmp_path):
    with pytest.raises(FileNotFoundError, match="holds no model"):
        ckpt.export_checkpoint(tmp_path, tmp_path / "out")
