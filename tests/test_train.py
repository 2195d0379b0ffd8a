"""minillm.train, minillm.checkpoint, minillm.config and minillm.corpus on tiny models (a few seconds each)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from minillm import checkpoint as ckpt
from minillm.data import read_text
from minillm.device import resolve_device, resolve_precision
from minillm.model import GPT, GPTConfig
from minillm.monitor import device_peak_flops, mfu, plot_metrics, read_metrics
from minillm import config as config_module
from minillm.config import PRESETS, TrainConfig, apply_overrides, preset_config
from minillm.corpus import TrainData, load_data, prepare_corpus, read_documents
from minillm.errors import CheckpointError, ConfigError, RunFolderError
from minillm.pretrained import pretrained_tiny
from minillm.tokenizer import BPETokenizer
from minillm.train import NonFiniteLossError, eval_windows, evaluate, forward_backward, sample, train


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(**overrides) -> TrainConfig:
    """A character model of The Verdict (20 kB): trains a step in milliseconds."""
    base = dict(data="the-verdict", tokenizer="char", n_layer=2, n_head=2, d_model=32, context_length=16,
                batch_size=4, max_steps=12, lr=3e-3, min_lr=3e-4, warmup_steps=3, eval_interval=4, eval_batches=2,
                sample_tokens=8, sample_prompt="I", device="cpu")  # fmt: skip
    return apply_overrides(TrainConfig(), {**base, **overrides})


@pytest.fixture(scope="module")
def verdict() -> TrainData:
    return load_data(tiny())


# -- the pieces of a step -----------------------------------------------------


def test_gradient_accumulation_equals_one_larger_batch():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=30, context_length=8, d_model=16, n_layer=2, n_head=2))
    micro = [(torch.randint(30, (3, 8)), torch.randint(30, (3, 8))) for _ in range(4)]
    loss = forward_backward(model, micro)
    accumulated = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    x, y = torch.cat([m[0] for m in micro]), torch.cat([m[1] for m in micro])
    logits, _ = model(x, y)
    big = F.cross_entropy(logits.reshape(-1, 30), y.reshape(-1))  # one batch 4x larger, loss by hand
    big.backward()
    torch.testing.assert_close(loss, big.detach())
    for name, p in model.named_parameters():
        torch.testing.assert_close(accumulated[name], p.grad, rtol=1e-5, atol=1e-7, msg=name)
    with pytest.raises(ValueError, match="micro-batch"):
        forward_backward(model, [])


def test_evaluate_is_the_mean_cross_entropy_of_evenly_spread_windows():
    assert eval_windows(100, 9, 4) == [0, 30, 60, 90]  # last start: 100 - 9 - 1
    assert eval_windows(12, 9, 10) == [0, 1, 2]  # never more windows than there are
    with pytest.raises(ValueError, match="fewer than context_length"):
        eval_windows(5, 9, 2)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=20, context_length=8, d_model=16, n_layer=1, n_head=2))
    tokens = np.random.default_rng(0).integers(0, 20, size=200).astype(np.uint16)
    got = evaluate(model, tokens, context_length=8, batch_size=3, max_batches=2)
    starts = np.linspace(0, 200 - 9, 6).round().astype(int)
    losses = []
    with torch.no_grad():
        for s in starts:
            window = torch.tensor(tokens[s : s + 9].astype(np.int64))
            logits, _ = model(window[None, :-1])
            losses.append(F.cross_entropy(logits[0], window[1:]).item())
    assert got == pytest.approx(sum(losses) / len(losses), rel=1e-5)


def test_devices_precision_and_peak():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert resolve_precision("auto", torch.device("cuda")) == "bf16"
    assert device_peak_flops(torch.device("cpu"), "fp32") is None  # unknown: no MFU
    assert device_peak_flops(torch.device("cpu"), "fp32", peak_tflops=2.5) == 2.5e12
    assert mfu(6e6, 1e4, 1.2e11) == pytest.approx(0.5)  # 6 MFLOP/token * 10k tokens/s = half of 120 GFLOP/s
    with pytest.raises(ValueError, match="peak"):
        mfu(1.0, 1.0, 0.0)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("fp8", torch.device("cpu"))
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        resolve_device("gpu")


def test_sample_is_reproducible_and_leaves_the_global_rng_alone(verdict):
    config = tiny(sample_prompt="I had", sample_tokens=12, seed=3)
    model = GPT(config.model_config(verdict.tokenizer.vocab_size))
    before = torch.get_rng_state()
    a = sample(model, verdict.tokenizer, config)
    assert torch.equal(before, torch.get_rng_state())
    assert a == sample(model, verdict.tokenizer, config)
    assert a.startswith("I had") and len(a) == len("I had") + 12


# -- presets, overrides, data --------------------------------------------------


def test_shakespeare_char_preset_is_the_baby_gpt():
    c = preset_config("shakespeare-char")
    m = c.model
    assert (m.n_layer, m.n_head, m.d_model, m.context_length, c.batch_size) == (4, 4, 128, 64, 12)
    assert (c.max_steps, c.lr, m.dropout, c.precision, c.tokenizer) == (2000, 1e-3, 0.0, "fp32", "char")
    assert set(PRESETS) >= {"shakespeare-char", "quickstart", "gpt2-124m"}
    g = preset_config("gpt2-124m")
    assert (g.model.n_layer, g.model.d_model, g.context_length, g.tokenizer, g.compile) == (12, 768, 1024, "gpt2", True)


def test_unknown_preset_and_override_keys_list_the_valid_ones():
    with pytest.raises(ConfigError, match="unknown preset 'shakespeare'.*shakespeare-char"):
        preset_config("shakespeare")
    with pytest.raises(ConfigError, match=r"unknown setting 'lrr' \(did you mean lr\?\).*max_steps"):
        preset_config("shakespeare-char", lrr=0.1)


def test_every_model_field_is_a_setting_so_a_llama_gqa_model_trains_from_presets():
    c = preset_config("shakespeare-char", n_kv_head="2", d_ff="96", rope_theta="500000", tie_embeddings="false",
                      attn_impl="manual", positions="rope", norm="rmsnorm", mlp="swiglu", bias="false")
    m = c.model
    assert (m.kv_heads, m.ff_width, m.rope_theta, m.tie_embeddings, m.attn_impl) == (2, 96, 5e5, False, "manual")
    assert apply_overrides(c, {"model.n_layer": "3"}).model.n_layer == 3  # dotted names work too
    with pytest.raises(ConfigError, match="'norm' needs one of layernorm, rmsnorm, got 'batchnorm'"):
        apply_overrides(c, {"norm": "batchnorm"})
    with pytest.raises(ConfigError, match="'strategy' needs one of auto, single, ddp, fsdp"):
        apply_overrides(c, {"strategy": "zero9"})
    with pytest.raises(ConfigError, match="divisible by n_kv_head"):
        apply_overrides(c, {"n_kv_head": "3"})
    assert apply_overrides(c, {"d_ff": "none"}).model.d_ff is None


def test_derived_model_values_follow_replace_and_the_config_round_trips_through_json():
    gelu = preset_config("shakespeare-char").model
    assert gelu.ff_width == 4 * 128 and gelu.d_ff is None
    swiglu = apply_overrides(preset_config("shakespeare-char"), {"mlp": "swiglu"}).model
    assert swiglu.ff_width == 256 * math.ceil(8 * 128 / 3 / 256)  # recomputed, not the old 512 kept
    c = preset_config("quickstart", n_kv_head=2)
    assert TrainConfig.from_dict(json.loads(c.to_json())) == c
    legacy = {"data": "tinyshakespeare", "tokenizer": "char", "n_layer": 3, "d_model": 64, "context_length": 32,
              "n_head": 4, "lr": 2e-3}  # the flat layout train_config.json had before the model was nested
    old = TrainConfig.from_dict(legacy)
    assert (old.model.n_layer, old.model.d_model, old.context_length, old.lr) == (3, 64, 32, 2e-3)
    with pytest.raises(ConfigError, match="unknown TrainConfig fields"):
        TrainConfig.from_dict({"lr": 1e-3, "colour": "red"})
    assert c.differences(apply_overrides(c, {"lr": "1e-2", "n_layer": "2"})) == {"lr": (3e-3, 1e-2), "n_layer": (4, 2)}


def test_overrides_are_typed_from_the_dataclass():
    c = apply_overrides(TrainConfig(), {"max-steps": "500", "lr": "3e-4", "compile": "true", "sample_prompt": "a\\nb",
                                        "batch_size": 7})  # fmt: skip
    assert (c.max_steps, c.lr, c.compile, c.sample_prompt, c.batch_size) == (500, 3e-4, True, "a\nb", 7)
    assert apply_overrides(c, {"max_steps": "1e3"}).max_steps == 1000
    with pytest.raises(ValueError, match="'max_steps' needs a int, got 'many'"):
        apply_overrides(c, {"max_steps": "many"})
    with pytest.raises(ValueError, match="needs a bool"):
        apply_overrides(c, {"compile": "maybe"})
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        apply_overrides(c, {"batch_size": "0"})
    with pytest.raises(ValueError, match="schedule must be one of"):
        TrainConfig(schedule="linear")


def test_load_data_char_bpe_and_files(verdict, tmp_path):
    text = read_text("the-verdict")
    assert verdict.tokenizer.decode(np.concatenate([verdict.train, verdict.val]).tolist()) == text
    assert abs(len(verdict.val) / len(text) - 0.1) < 0.01
    bpe = load_data(tiny(tokenizer="bpe", vocab_size=300, tokenizer_chars=5000, max_chars=8000))
    assert bpe.tokenizer.vocab_size == 300
    assert bpe.tokenizer.decode(np.concatenate([bpe.train, bpe.val]).tolist()) == text[:8000]
    (tmp_path / "a.txt").write_text("hello world " * 40)
    (tmp_path / "b.txt").write_text("goodbye moon " * 40)
    files = load_data(tiny(data="files", data_files=str(tmp_path / "*.txt"), tokenizer="bpe", vocab_size=270))
    eot = files.tokenizer.special_tokens["<|endoftext|>"]
    ids = np.concatenate([files.train, files.val]).tolist()
    assert ids.count(eot) == 2  # one after each document
    assert files.tokenizer.decode(ids) == "hello world " * 40 + "<|endoftext|>" + "goodbye moon " * 40 + "<|endoftext|>"
    with pytest.raises(FileNotFoundError, match="found no files"):
        load_data(tiny(data="files", data_files=str(tmp_path / "*.md")))


def test_exclude_files_drops_stdlib_files_by_glob():
    full = read_text("python-stdlib")
    kept = read_documents(tiny(data="python-stdlib", exclude_files="encodings/*, json/*"))[0]
    assert "# ==== file: encodings/utf_8.py ====" in full and "# ==== file: json/decoder.py ====" in full
    assert "# ==== file: encodings/" not in kept and "# ==== file: json/" not in kept
    assert "# ==== file: argparse.py ====" in kept and len(kept) < len(full)
    with pytest.raises(ValueError, match="exclude_files works on the 'python-stdlib' corpus"):
        load_data(tiny(exclude_files="*.py"))


# -- the loop: metrics, checkpoints, resume ----------------------------------------


def test_train_writes_metrics_plot_samples_and_checkpoint(tmp_path, verdict):
    out = tmp_path / "run"
    seen = []
    result = train(tiny(peak_tflops=1.0), out, data=verdict, progress=False, verbose=False, on_step=seen.append)
    records = read_metrics(out)
    assert records == result.history == seen
    assert records[0] == {"step": 0, "val_loss": records[0]["val_loss"], "val_ppl": records[0]["val_ppl"]}
    assert records[0]["val_loss"] == pytest.approx(math.log(verdict.tokenizer.vocab_size), abs=0.15)  # uniform guess
    assert [r["step"] for r in records] == list(range(13))
    flops = result.model.flops_per_token(16)
    for r in records[1:]:
        assert {"train_loss", "lr", "tokens_per_s", "grad_norm", "mfu"} <= set(r) and r["tokens_per_s"] > 0
        assert r["mfu"] == pytest.approx(flops * r["tokens_per_s"] / 1e12)  # peak_tflops=1.0
    evaluated = [r["step"] for r in records if "val_loss" in r]
    assert evaluated == [0, 4, 8, 12]
    assert all(r["val_ppl"] == pytest.approx(math.exp(r["val_loss"])) for r in records if "val_loss" in r)
    assert records[-1]["val_loss"] < records[0]["val_loss"] - 0.3  # it learned something
    assert result.val_loss == records[-1]["val_loss"] and result.step == 12 and not result.interrupted
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "samples.txt").read_text().count("--- step") == 4
    assert [s for s, _ in result.samples] == [0, 4, 8, 12]
    latest = ckpt.latest_checkpoint(out)
    assert latest.name == "step_0000012" and len(list((out / "checkpoints").glob("step_*"))) == 1
    model, tok = ckpt.load_model(out)
    for a, b in zip(model.state_dict().values(), result.model.state_dict().values()):
        assert torch.equal(a, b)
    assert tok.chars == verdict.tokenizer.chars
    assert ckpt.read_config(latest) == tiny(peak_tflops=1.0)


def test_compile_gives_the_eager_losses(verdict, tmp_path, monkeypatch):
    """`compile=True` (inductor on the CPU) trains the same curve as eager, to 1e-5 at every step."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    config = tiny(max_steps=4, eval_interval=4, sample_tokens=0)
    eager = train(config, None, data=verdict, progress=False, verbose=False)
    compiled = train(dataclasses.replace(config, compile=True), None, data=verdict, progress=False, verbose=False)
    assert any((tmp_path / "inductor").rglob("*.py")), "inductor generated no kernels: nothing was compiled"
    losses = [[r["train_loss"] for r in run.history if "train_loss" in r] for run in (eager, compiled)]
    assert len(losses[0]) == 4
    torch.testing.assert_close(losses[1], losses[0], rtol=0, atol=1e-5)
    assert compiled.val_loss == pytest.approx(eager.val_loss, abs=1e-5)


def test_lr_follows_the_schedule(verdict):
    result = train(tiny(schedule="wsd", decay_fraction=0.5, warmup_steps=2), data=verdict, progress=False,
                   verbose=False)  # fmt: skip
    lrs = [r["lr"] for r in result.history if "lr" in r]
    # warmup 2 steps, stable until step 6, then linear from 3e-3 to 3e-4 over steps 6..11 (0-based)
    expected = [1.5e-3, 3e-3, 3e-3, 3e-3, 3e-3, 3e-3] + [3e-3 - 2.7e-3 * k / 6 for k in range(6)]
    assert lrs == pytest.approx(expected)


def _interrupt_at(step: int):
    def on_step(record: dict) -> None:
        if record["step"] == step:
            os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C does

    return on_step


@pytest.mark.parametrize("how", ["ctrl-c", "stop_after"])
def test_resume_reproduces_the_uninterrupted_run(tmp_path, verdict, how):
    config = tiny(dropout=0.1)  # dropout draws from the global RNG: its state must be restored too
    full = train(config, tmp_path / "full", data=verdict, progress=False, verbose=False)
    out = tmp_path / "stopped"
    if how == "ctrl-c":
        first = train(config, out, data=verdict, progress=False, verbose=False, on_step=_interrupt_at(5))
    else:
        first = train(config, out, data=verdict, progress=False, verbose=False, stop_after=5)
    assert first.interrupted and first.step == 5
    assert ckpt.latest_checkpoint(out).name == "step_0000005"
    resumed = train(config, out, resume=True, progress=False, verbose=False)  # data reloaded from scratch
    assert resumed.step == 12 and [r["step"] for r in resumed.history] == list(range(6, 13))
    expected = {r["step"]: r for r in full.history}
    for r in resumed.history:
        assert r["train_loss"] == expected[r["step"]]["train_loss"], r["step"]  # bitwise
        if r["step"] in (8, 12):
            assert r["val_loss"] == expected[r["step"]]["val_loss"]
    for a, b in zip(full.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)
    steps = [r["step"] for r in read_metrics(out)]
    assert steps == sorted(set(steps)) and steps[-1] == 12 and 5 in steps  # no duplicate after resume


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, verdict, monkeypatch):
    import minillm.train as train_module

    out = tmp_path / "run"
    built: list[GPT] = []

    class Spy(GPT):  # keeps a handle on the model the loop builds
        def __init__(self, config):
            super().__init__(config)
            built.append(self)

    def poison(record: dict) -> None:
        if record["step"] == 6:  # after the checkpoint of step 4
            with torch.no_grad():
                built[0].blocks[0].mlp.fc.weight.fill_(float("nan"))

    monkeypatch.setattr(train_module, "GPT", Spy)
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at step 7.*step_0000004"):
        train(tiny(), out, data=verdict, progress=False, verbose=False, on_step=poison)
    assert ckpt.latest_checkpoint(out).name == "step_0000004"
    model, _ = ckpt.load_model(out)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_output_dir_is_never_silently_overwritten(tmp_path, verdict):
    out = tmp_path / "run"
    train(tiny(max_steps=2, eval_interval=2), out, data=verdict, progress=False, verbose=False)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="--resume.*--overwrite"):
        train(tiny(max_steps=2), out, data=verdict, progress=False, verbose=False)
    result = train(tiny(max_steps=3, eval_interval=3), out, overwrite=True, data=verdict, progress=False,
                   verbose=False)  # fmt: skip
    assert result.step == 3 and [r["step"] for r in read_metrics(out)] == [0, 1, 2, 3]
    assert (out / "notes.txt").read_text() == "mine"  # only the run's own files are replaced
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(tiny(), tmp_path / "empty", resume=True, progress=False, verbose=False)
    with pytest.raises(ValueError, match="not both"):
        train(tiny(), out, resume=True, overwrite=True, progress=False, verbose=False)


def test_mismatched_checkpoint_is_a_clear_error(tmp_path, verdict):
    out = tmp_path / "run"
    train(tiny(max_steps=2, eval_interval=2), out, data=verdict, progress=False, verbose=False)
    with pytest.raises(ValueError, match=r"other settings.*'n_layer': \(2, 3\)"):
        train(tiny(n_layer=3), out, resume=True, progress=False, verbose=False)
    more = train(tiny(max_steps=4, eval_interval=2), out, resume=True, progress=False, verbose=False)
    assert more.step == 4  # max_steps may change on resume
    wrong = GPT(tiny(d_model=48).model_config(verdict.tokenizer.vocab_size))
    opt = torch.optim.AdamW(wrong.parameters())
    with pytest.raises(ValueError, match="different model.*d_model"):
        ckpt.restore(ckpt.latest_checkpoint(out), wrong, opt, torch.Generator())
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        ckpt.load_model(tmp_path)


def test_a_crash_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path, verdict, monkeypatch):
    out = tmp_path / "run"
    result = train(tiny(max_steps=4, eval_interval=4), out, data=verdict, progress=False, verbose=False)
    before = {k: v.clone() for k, v in result.model.state_dict().items()}
    real_save = torch.save

    def crash(obj, path):  # write half a file, then die like a killed process would
        real_save(obj, path)
        with open(path, "r+b") as fh:
            fh.truncate(100)
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt.torch, "save", crash)
    opt = torch.optim.AdamW(result.model.parameters())
    with torch.no_grad():
        result.model.tok_emb.weight.add_(1.0)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save(out, 8, result.model, opt, torch.Generator(), tiny(), result.tokenizer)
    assert ckpt.latest_checkpoint(out).name == "step_0000004"
    assert not (out / "checkpoints" / "step_0000008").exists()
    model, _ = ckpt.load_model(out)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    monkeypatch.setattr(ckpt.torch, "save", real_save)
    ckpt.save(out, 8, result.model, opt, torch.Generator(), tiny(), result.tokenizer)  # debris is cleaned up
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest", "step_0000008"]


def test_plot_metrics_returns_a_figure(tmp_path):
    records = [{"step": 0, "val_loss": 4.0}] + [{"step": s, "train_loss": 4.0 - 0.1 * s} for s in range(1, 11)]
    fig = plot_metrics(records, tmp_path / "loss.png", title="t")
    assert fig.axes[0].get_title() == "t" and (tmp_path / "loss.png").stat().st_size > 1000
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        read_metrics(tmp_path / "nothing")


def test_pretrained_tiny_trains_once_then_loads_from_the_cache(cache_dir, monkeypatch):
    import minillm.pretrained as pretrained_module

    monkeypatch.setitem(config_module.TINY, "shakespeare-char",
                        dict(model=dict(n_layer=1, d_model=32, context_length=16), max_steps=3, eval_interval=3, eval_batches=1,
                             sample_tokens=0, max_chars=20_000, device="cpu"))  # fmt: skip
    model, tok = pretrained_tiny("shakespeare-char")
    assert model.config.n_layer == 1 and tok.vocab_size == model.config.vocab_size
    cached = list((cache_dir / "pretrained").iterdir())
    assert len(cached) == 1 and json.loads((cached[0] / "config.json").read_text())["d_model"] == 32

    def no_training(*args, **kwargs):
        raise AssertionError("pretrained_tiny trained again instead of using its cache")

    monkeypatch.setattr(pretrained_module, "train", no_training)
    again, _ = pretrained_tiny("shakespeare-char")
    for a, b in zip(model.parameters(), again.parameters()):
        assert torch.equal(a, b)
    with pytest.raises(ConfigError, match="unknown tiny model.*shakespeare-char"):
        pretrained_tiny("tiny-stories")


def test_pretrained_tiny_without_cache_trains_the_same_model(cache_dir, monkeypatch):
    monkeypatch.setitem(config_module.TINY, "quickstart",
                        dict(model=dict(n_layer=1, d_model=32, context_length=16), max_steps=2, eval_interval=2, eval_batches=1,
                             sample_tokens=0, max_chars=20_000, device="cpu"))  # fmt: skip
    a, _ = pretrained_tiny("quickstart", cache=False)
    b, _ = pretrained_tiny("quickstart", cache=False)
    assert not (cache_dir / "pretrained").exists()  # no model written (the corpus is cached for reuse)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)  # seeded: deterministic


def test_config_helpers(verdict):
    c = tiny(batch_size=3, grad_accum=5)
    assert c.tokens_per_step == 3 * 5 * 16
    g = c.model_config(verdict.tokenizer.vocab_size)
    assert (g.vocab_size, g.n_layer, g.d_model, g.context_length) == (verdict.tokenizer.vocab_size, 2, 32, 16)


def test_a_corpus_is_tokenized_once_for_runs_resumes_and_prepared_folders(tmp_path, cache_dir, monkeypatch):
    trained = []
    real = BPETokenizer.train.__func__

    def counting(cls, *args, **kwargs):
        trained.append(1)
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(BPETokenizer, "train", classmethod(counting))
    config = tiny(tokenizer="bpe", vocab_size=300, tokenizer_chars=5000, max_steps=4, eval_interval=2)
    summary = prepare_corpus(config, tmp_path / "corpus")  # `python -m minillm prepare` does this
    assert len(trained) == 1 and summary["vocab_size"] == 300
    from_folder = apply_overrides(config, {"data": str(tmp_path / "corpus")})
    first = train(from_folder, tmp_path / "run", stop_after=2, progress=False, verbose=False)
    train(from_folder, tmp_path / "run", resume=True, progress=False, verbose=False)
    assert len(trained) == 1  # neither the run nor its resume tokenized again
    assert isinstance(first.config, TrainConfig) and ckpt.read_config(tmp_path / "run").data == str(tmp_path / "corpus")
    train(config, tmp_path / "a", progress=False, verbose=False)  # a named corpus: prepared into the cache ...
    train(config, tmp_path / "b", progress=False, verbose=False)  # ... once for both runs
    assert len(trained) == 2 and len(list((cache_dir / "corpora").iterdir())) == 1
    files = tmp_path / "text.txt"
    files.write_text(read_text("the-verdict")[:6000])
    by_files = apply_overrides(config, {"data": "files", "data_files": str(files)})
    train(by_files, None, progress=False, verbose=False)
    files.write_text(read_text("the-verdict")[6000:12000])  # an edited file is tokenized again
    train(by_files, None, progress=False, verbose=False)
    assert len(trained) == 4
