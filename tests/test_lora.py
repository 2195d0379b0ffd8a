"""Tests of minillm.lora: LoRALinear, injection, merge/unmerge, gradients, adapter files, peft parity."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from minillm.errors import ConfigError
from minillm.lora import (
    GPT2_TARGETS,
    LoRAConfig,
    LoRALinear,
    count_parameters,
    inject_lora,
    load_adapter,
    lora_layers,
    lora_state_dict,
    merge_lora,
    read_adapter_config,
    remove_lora,
    save_adapter,
    unmerge_lora,
)
from minillm.model import GPT, GPTConfig


def tiny_gpt(**kw) -> GPT:
    config = GPTConfig(**{"vocab_size": 53, "context_length": 16, "d_model": 32, "n_layer": 2, "n_head": 4, **kw})
    return GPT(config).eval()


def randomize_adapters(model: nn.Module) -> None:
    """B starts at zero; give it values so the adapters change the output."""
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.normal_(0, 0.05)


def test_config_validation():
    with pytest.raises(ValueError, match="rank"):
        LoRAConfig(rank=0)
    with pytest.raises(ValueError, match="alpha"):
        LoRAConfig(alpha=0)
    with pytest.raises(ValueError, match="dropout"):
        LoRAConfig(dropout=1.0)
    with pytest.raises(ValueError, match="targets"):
        LoRAConfig(targets=())
    assert LoRAConfig(rank=4, alpha=8).scaling == 2.0
    assert LoRAConfig(targets="mlp.fc").targets == ("mlp.fc",)


def test_lora_linear_matches_hand_computed_update():
    base = nn.Linear(6, 5)
    layer = LoRALinear(base, rank=2, alpha=6.0)
    assert torch.count_nonzero(layer.lora_B) == 0 and torch.count_nonzero(layer.lora_A) > 0
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(3, 4, 6)
    expected = x @ base.weight.T + base.bias + 3.0 * (x @ layer.lora_A.T @ layer.lora_B.T)  # alpha / r = 3
    torch.testing.assert_close(layer(x), expected)
    assert not base.weight.requires_grad and not base.bias.requires_grad
    with pytest.raises(TypeError, match="nn.Linear"):
        LoRALinear(nn.Conv1d(2, 2, 1))


def test_injected_model_equals_base_at_init():
    model = tiny_gpt()
    idx = torch.randint(0, 53, (2, 16))
    before, _ = model(idx)
    names = inject_lora(model, LoRAConfig(rank=4, targets=GPT2_TARGETS))
    assert names == [f"blocks.{i}.{t}" for i in range(2) for t in GPT2_TARGETS]
    after, _ = model(idx)
    torch.testing.assert_close(after, before, rtol=0, atol=0)


def test_target_patterns_and_errors():
    model = tiny_gpt()
    assert inject_lora(model, LoRAConfig(targets=("blocks.1.*",))) == [
        "blocks.1.attn.qkv", "blocks.1.attn.proj", "blocks.1.mlp.fc", "blocks.1.mlp.proj"]  # fmt: skip
    with pytest.raises(ValueError, match="already has LoRA"):
        inject_lora(model, LoRAConfig())
    with pytest.raises(ValueError, match="no linear layer matches"):
        inject_lora(tiny_gpt(), LoRAConfig(targets=("attn.c_attn",)))
    with pytest.raises(ValueError, match="no LoRA adapters"):
        merge_lora(tiny_gpt())


def test_merged_equals_unmerged_and_unmerge_restores_base():
    model = tiny_gpt()
    base_weight = model.blocks[0].attn.qkv.weight.detach().clone()
    inject_lora(model, LoRAConfig(rank=4, alpha=8, targets=GPT2_TARGETS))
    randomize_adapters(model)
    idx = torch.randint(0, 53, (2, 16))
    unmerged, _ = model(idx)
    merge_lora(model)
    assert all(layer.merged for layer in lora_layers(model).values())
    merged, _ = model(idx)
    torch.testing.assert_close(merged, unmerged, rtol=1e-5, atol=1e-5)
    layer = model.blocks[0].attn.qkv
    torch.testing.assert_close(layer.base.weight, base_weight + 2.0 * layer.lora_B @ layer.lora_A)
    unmerge_lora(model)
    torch.testing.assert_close(layer.base.weight, base_weight, rtol=1e-6, atol=1e-6)
    again, _ = model(idx)
    torch.testing.assert_close(again, unmerged, rtol=1e-5, atol=1e-5)


def test_remove_lora_gives_plain_gpt_with_merged_weights(tmp_path):
    model = tiny_gpt()
    inject_lora(model, LoRAConfig(rank=2, targets=GPT2_TARGETS))
    randomize_adapters(model)
    idx = torch.randint(0, 53, (1, 16))
    adapted, _ = model(idx)
    remove_lora(model)
    assert not lora_layers(model) and isinstance(model.blocks[0].attn.qkv, nn.Linear)
    model.save(tmp_path / "merged")
    reloaded = GPT.load(tmp_path / "merged").eval()
    torch.testing.assert_close(reloaded(idx)[0], adapted, rtol=1e-5, atol=1e-5)


def test_only_lora_parameters_receive_gradients():
    model = tiny_gpt()
    inject_lora(model, LoRAConfig(rank=4, targets=("attn.qkv", "mlp.fc")))
    randomize_adapters(model)
    idx = torch.randint(0, 53, (2, 16))
    _, loss = model(idx, idx)
    loss.backward()
    for name, p in model.named_parameters():
        if "lora_" in name:
            assert p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert not p.requires_grad and p.grad is None, name


def test_count_parameters_by_hand():
    model = tiny_gpt()  # d_model 32, d_ff 128, 2 layers
    total = model.num_parameters()
    assert count_parameters(model) == {"trainable": total, "total": total, "fraction": 1.0}
    inject_lora(model, LoRAConfig(rank=4, targets=("attn.qkv", "mlp.fc")))
    # per layer: qkv 4 * (32 + 96), fc 4 * (32 + 128)
    lora = 2 * (4 * (32 + 96) + 4 * (32 + 128))
    counts = count_parameters(model)
    assert counts["trainable"] == lora and counts["total"] == total + lora
    assert counts["fraction"] == pytest.approx(lora / (total + lora))


def test_adapter_round_trip(tmp_path):
    config = LoRAConfig(rank=3, alpha=5.0, targets=("attn.qkv", "mlp.proj"))
    torch.manual_seed(1)
    model = tiny_gpt()
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    inject_lora(model, config)
    randomize_adapters(model)
    idx = torch.randint(0, 53, (2, 16))
    expected, _ = model(idx)
    path = save_adapter(model, tmp_path / "adapter.safetensors", config)
    from safetensors.torch import load_file

    saved = load_file(path)
    assert set(saved) == {f"blocks.{i}.{t}.lora_{ab}" for i in range(2) for t in config.targets for ab in "AB"}
    assert read_adapter_config(path) == config
    fresh = tiny_gpt()
    fresh.load_state_dict(base_state)
    assert load_adapter(fresh, path) == config  # injects, then loads
    torch.testing.assert_close(fresh(idx)[0], expected, rtol=0, atol=0)
    for k, v in lora_state_dict(model).items():
        torch.testing.assert_close(lora_state_dict(fresh)[k], v)


def test_adapter_errors(tmp_path):
    model = tiny_gpt()
    config = LoRAConfig(rank=2)
    inject_lora(model, config)
    merge_lora(model)
    with pytest.raises(ValueError, match="unmerge"):
        save_adapter(model, tmp_path / "a.safetensors", config)
    unmerge_lora(model)
    path = save_adapter(model, tmp_path / "a.safetensors", config)
    with pytest.raises(ValueError, match="does not fit"):
        load_adapter(tiny_gpt(d_model=64), path)
    with pytest.raises(FileNotFoundError):
        load_adapter(tiny_gpt(), tmp_path / "missing.safetensors")
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="not a minillm LoRA adapter"):
        read_adapter_config(tmp_path / "other.safetensors")


def test_lora_outputs_equal_peft_on_tiny_gpt2(tmp_path):
    """The same base weights and the same (nonzero) A, B give the same logits as peft."""
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf_config = transformers.GPT2Config(vocab_size=97, n_positions=32, n_embd=48, n_layer=2, n_head=4,
                                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)  # fmt: skip
    hf = transformers.GPT2LMHeadModel(hf_config).eval()
    hf.save_pretrained(tmp_path / "hf", safe_serialization=True)
    ours = GPT.from_pretrained(tmp_path / "hf").eval()

    rank, alpha = 4, 12.0
    pairs = {"attn.c_attn": "attn.qkv", "mlp.c_proj": "mlp.proj"}  # HF Conv1D <-> our nn.Linear
    peft_model = peft.get_peft_model(hf, peft.LoraConfig(
        r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=list(pairs), fan_in_fan_out=True,
        init_lora_weights=True)).eval()  # fmt: skip
    inject_lora(ours, LoRAConfig(rank=rank, alpha=alpha, targets=tuple(pairs.values())))
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for i in range(hf_config.n_layer):
            for hf_name, our_name in pairs.items():
                hf_layer = peft_model.base_model.model.transformer.h[i].get_submodule(hf_name)
                our_layer = ours.blocks[i].get_submodule(our_name)
                a = torch.randn(our_layer.lora_A.shape, generator=gen) * 0.2
                b = torch.randn(our_layer.lora_B.shape, generator=gen) * 0.2
                hf_layer.lora_A["default"].weight.copy_(a)
                hf_layer.lora_B["default"].weight.copy_(b)
                our_layer.lora_A.copy_(a)
                our_layer.lora_B.copy_(b)
    idx = torch.randint(0, 97, (2, 20), generator=gen)
    with torch.no_grad():
        expected = peft_model(input_ids=idx).logits
        got, _ = ours(idx)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    with torch.no_grad(), peft_model.disable_adapter():
        plain = peft_model(input_ids=idx).logits
    assert (plain - expected).abs().max() > 1e-2  # the adapters really change the output
    merge_lora(ours)
    torch.testing.assert_close(ours(idx)[0], expected, rtol=1e-5, atol=1e-5)


def test_finetune_benchmark_counts_by_hand():
    from minillm.bench.finetune import measure

    small = {"n_layer": 1, "d_model": 64, "n_head": 2, "vocab_size": 100}
    targets = ["attn.qkv", "attn.proj", "mlp.fc", "mlp.proj"]
    lora = measure("gpt2", 4, targets, "cpu", batch=1, seq_len=8, steps=1, overrides=small)
    # rank 4 on 64->192, 64->64, 64->256, 256->64: 4 * (256 + 128 + 320 + 320)
    assert lora["trainable"] == 4096 and lora["state_bytes"] == 12 * 4096
    full = measure("gpt2", 0, targets, "cpu", batch=1, seq_len=8, steps=1, overrides=small)
    assert full["trainable"] == full["total"] == lora["total"] - 4096
    assert full["tokens_per_s"] > 0 and lora["peak_kind"] == "RSS added"


def test_a_rank_wider_than_the_layers_is_refused_before_anything_is_allocated():
    model = tiny_gpt()  # width 32: qkv 32 -> 96, mlp.proj 128 -> 32
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError, match=r"rank 100000 is larger than blocks\.0\.attn\.qkv \(32 -> 96\).*<= 32"):
        inject_lora(model, LoRAConfig(rank=100000, targets=GPT2_TARGETS))
    assert not lora_layers(model) and all(p.requires_grad for p in model.parameters())  # left as it was
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    with pytest.raises(ConfigError, match=r"rank 33 .*\(32 -> 96\)"):
        inject_lora(model, LoRAConfig(rank=33, targets=("attn.qkv",)))
    assert len(inject_lora(model, LoRAConfig(rank=32, targets=GPT2_TARGETS))) == 8  # full rank is allowed
    with pytest.raises(ConfigError, match=r"rank 9 .*\(16 -> 8\)"):
        LoRALinear(nn.Linear(16, 8), rank=9)


def test_finetune_command_refuses_a_huge_lora_rank(tmp_path, capsys):
    from minillm.cli import main
    from minillm.tokenizer import TOKENIZER_FILE, BPETokenizer

    base = tmp_path / "base"
    tiny_gpt(vocab_size=257).save(base)
    BPETokenizer.train("a few words", 257).save(base / TOKENIZER_FILE)
    out = tmp_path / "out"
    assert main(["finetune", "--task", "classify", "--checkpoint", str(base), "--out", str(out),
                 "--lora-rank", "100000", "--device", "cpu"]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert err.startswith("error: LoRA rank 100000 is larger than") and "Traceback" not in err
    assert not out.exists()  # refused before the run started
