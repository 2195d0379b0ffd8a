"""Tests of minillm.model and minillm.layers: config, forward, counts, checkpoints, HF parity."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from minillm.errors import ConfigError
from minillm.generate import generate
from minillm.layers import Block, GeluMLP, RMSNorm, SwiGLU, make_mlp, make_norm
from minillm.model import GPT, MODEL_SHAPES, GPTConfig


def tiny(**kw) -> GPTConfig:
    return GPTConfig(**{"vocab_size": 61, "context_length": 24, "d_model": 32, "n_layer": 2, "n_head": 4, **kw})


LLAMA_TINY = {"norm": "rmsnorm", "mlp": "swiglu", "positions": "rope", "bias": False, "n_kv_head": 2,
              "tie_embeddings": False}  # fmt: skip


# -- config -------------------------------------------------------------------


def test_config_validation_errors():
    with pytest.raises(ValueError, match="divisible by n_head"):
        tiny(d_model=30)
    with pytest.raises(ValueError, match="divisible by n_kv_head"):
        tiny(n_kv_head=3)
    with pytest.raises(ValueError, match="norm"):
        tiny(norm="batchnorm")
    with pytest.raises(ValueError, match="mlp"):
        tiny(mlp="relu")
    with pytest.raises(ValueError, match="positions"):
        tiny(positions="alibi")
    with pytest.raises(ValueError, match="n_layer"):
        tiny(n_layer=0)
    with pytest.raises(ValueError, match="gpt2-medium"):
        GPTConfig.from_preset("gpt5")


def test_config_defaults():
    assert tiny().ff_width == 128 and tiny().kv_heads == 4
    assert GPTConfig.from_preset("llama2-7b").ff_width == 11008
    assert GPTConfig(d_model=4096, n_head=32, mlp="swiglu").ff_width == 11008  # 8/3 * 4096 rounded up to 256
    assert tiny(vocab_multiple=64).padded_vocab_size == 64


# -- layers -------------------------------------------------------------------


def test_rmsnorm_matches_torch():
    x = torch.randn(3, 5, 16)
    ours = RMSNorm(16, eps=1e-6)
    ref = torch.nn.RMSNorm(16, eps=1e-6)
    with torch.no_grad():
        ours.weight.uniform_()
        ref.weight.copy_(ours.weight)
    torch.testing.assert_close(ours(x), ref(x))


def test_mlps_by_hand():
    x = torch.randn(2, 3, 8)
    mlp = GeluMLP(8, 16)
    h = mlp.fc(x)
    gelu = 0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h**3)))
    torch.testing.assert_close(mlp(x), mlp.proj(gelu))
    glu = SwiGLU(8, 16)
    g = glu.gate(x)
    torch.testing.assert_close(glu(x), glu.down(g * torch.sigmoid(g) * glu.up(x)))


def test_make_norm_and_mlp_by_name():
    assert isinstance(make_norm("layernorm", 8), torch.nn.LayerNorm)
    assert make_norm("layernorm", 8, bias=False).bias is None
    assert isinstance(make_norm("rmsnorm", 8), RMSNorm)
    assert isinstance(make_mlp("swiglu", 8, 16), SwiGLU)
    with pytest.raises(ValueError, match="norm"):
        make_norm("batchnorm", 8)
    with pytest.raises(ValueError, match="mlp"):
        make_mlp("tanh", 8, 16)
    x = torch.randn(2, 3, 8)
    relu = make_mlp("relu", 8, 16)  # T5's MLP: fc -> relu -> proj
    torch.testing.assert_close(relu(x), relu.proj(torch.relu(relu.fc(x))))
    geglu = make_mlp("geglu", 8, 16)  # T5 v1.1: gated, tanh-approximated GELU
    torch.testing.assert_close(geglu(x), geglu.down(F.gelu(geglu.gate(x), approximate="tanh") * geglu.up(x)))
    exact = make_mlp("gelu_exact", 8, 16)  # BERT, BART: the erf GELU
    torch.testing.assert_close(exact(x), exact.proj(F.gelu(exact.fc(x))))


@pytest.mark.parametrize("pre_norm", [True, False])
def test_block_residual_paths(pre_norm):
    block = Block(tiny().attention(), d_ff=64, pre_norm=pre_norm).eval()
    x = torch.randn(2, 5, 32)
    if pre_norm:
        h = x + block.attn(block.norm1(x))
        expected = h + block.mlp(block.norm2(h))
    else:
        h = block.norm1(x + block.attn(x))
        expected = block.norm2(h + block.mlp(h))
    torch.testing.assert_close(block(x), expected)


# -- forward ------------------------------------------------------------------


def test_forward_shapes_and_loss_by_hand():
    model = GPT(tiny()).eval()
    idx = torch.randint(0, 61, (2, 10))
    targets = torch.randint(0, 61, (2, 10))
    targets[0, :4] = -100
    logits, loss = model(idx, targets)
    assert logits.shape == (2, 10, 61)
    logp = torch.log_softmax(logits, dim=-1)
    keep = targets != -100
    nll = -logp[keep].gather(1, targets[keep][:, None])
    torch.testing.assert_close(loss, nll.mean())
    assert abs(loss.item() - math.log(61)) < 0.2  # small init: close to uniform
    assert model(idx)[1] is None
    assert model(idx, only_last=True)[0].shape == (2, 1, 61)


def test_forward_errors():
    model = GPT(tiny())
    with pytest.raises(ValueError, match=r"\[0, 61\)"):
        model(torch.tensor([[1, 61]]))
    with pytest.raises(ValueError, match=r"\[0, 61\)"):
        model(torch.tensor([[-1, 3]]))
    with pytest.raises(ValueError, match="context length 24"):
        model(torch.zeros(1, 25, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        model(torch.zeros(1, 3))
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        model(torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="targets"):
        model(torch.zeros(1, 3, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long))


def test_gpt2_initialization():
    model = GPT(tiny(d_model=128, n_layer=8, vocab_size=512))

    def std(p: torch.Tensor) -> float:
        return p.detach().std().item()

    assert std(model.tok_emb.weight) == pytest.approx(0.02, rel=0.05)
    assert std(model.blocks[0].attn.qkv.weight) == pytest.approx(0.02, rel=0.05)
    for block in model.blocks:
        assert std(block.attn.proj.weight) == pytest.approx(0.02 / 4, rel=0.05)  # 1/sqrt(2*8)
        assert std(block.mlp.proj.weight) == pytest.approx(0.02 / 4, rel=0.05)
    assert torch.all(model.blocks[0].attn.qkv.bias == 0)
    assert model.lm_head.weight is model.tok_emb.weight


def test_padded_vocab_keeps_logits_and_loss_to_vocab_size():
    model = GPT(tiny(vocab_multiple=64))
    assert model.tok_emb.weight.shape == (64, 32)
    logits, _ = model(torch.randint(0, 61, (1, 5)))
    assert logits.shape == (1, 5, 61)
    with pytest.raises(ValueError, match="token ids"):
        model(torch.tensor([[62]]))


@pytest.mark.parametrize("positions", ["learned", "sinusoidal", "rope", "none"])
@pytest.mark.parametrize("pre_norm", [True, False])
def test_kv_cache_matches_full_forward(positions, pre_norm):
    model = GPT(tiny(positions=positions, pre_norm=pre_norm, n_kv_head=2)).eval()
    idx = torch.randint(0, 61, (2, 12))
    full, _ = model(idx)
    cache = model.new_kv_cache(2)
    parts = [model(idx[:, a:b], kv_cache=cache)[0] for a, b in [(0, 5), (5, 6), (6, 7), (7, 12)]]
    assert cache.length == 12
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="context length"):
        model(torch.zeros(2, 13, dtype=torch.long), kv_cache=cache)


# -- counting -----------------------------------------------------------------


def test_parameter_and_flop_counts_by_hand():
    model = GPT(tiny(vocab_size=64))
    d, ff, v, t, n_layer = 32, 128, 64, 24, 2
    per_block = (4 * d * d + 4 * d) + (2 * d * ff + ff + d) + 2 * 2 * d
    expected = v * d + t * d + n_layer * per_block + 2 * d
    assert model.num_parameters() == expected
    assert model.num_parameters(exclude_embeddings=True) == expected - v * d - t * d
    n_matmul = n_layer * per_block + 2 * d + v * d  # tied head counts as a matmul
    assert model.flops_per_token() == 6 * n_matmul + 12 * n_layer * t * d
    assert model.flops_per_token(seq_len=8, training=False) == (6 * n_matmul + 12 * n_layer * 8 * d) // 3


@pytest.mark.parametrize(
    "preset, n_embd, n_layer, n_head, expected",
    [
        ("gpt2", 768, 12, 12, 124_439_808),
        ("gpt2-medium", 1024, 24, 16, 354_823_168),
        ("gpt2-large", 1280, 36, 20, 774_030_080),
        ("gpt2-xl", 1600, 48, 25, 1_557_611_200),
    ],
)
def test_gpt2_preset_counts_match_transformers(preset, n_embd, n_layer, n_head, expected):
    from transformers import GPT2Config, GPT2LMHeadModel

    with torch.device("meta"):
        ours = GPT(GPTConfig.from_preset(preset))
        hf = GPT2LMHeadModel(GPT2Config(n_embd=n_embd, n_layer=n_layer, n_head=n_head))
    hf_count = sum(p.numel() for p in hf.parameters())
    assert ours.num_parameters() == hf_count == expected


def test_llama2_7b_preset_count_matches_transformers():
    from transformers import LlamaConfig, LlamaForCausalLM

    with torch.device("meta"):
        ours = GPT(GPTConfig.from_preset("llama2-7b"))
        hf = LlamaForCausalLM(LlamaConfig())  # LlamaConfig's defaults are Llama-2-7B's shapes
    assert ours.num_parameters() == sum(p.numel() for p in hf.parameters()) == 6_738_415_616
    assert set(MODEL_SHAPES) >= {"gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "llama-110m", "llama2-7b"}


# -- checkpoints --------------------------------------------------------------


@pytest.mark.parametrize("extra", [{}, LLAMA_TINY])
def test_save_load_round_trip(tmp_path, extra):
    model = GPT(tiny(**extra)).eval()
    model.save(tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json", "model.safetensors"]
    loaded = GPT.load(tmp_path / "ckpt").eval()
    assert loaded.config == model.config
    idx = torch.randint(0, 61, (2, 7))
    torch.testing.assert_close(loaded(idx)[0], model(idx)[0], atol=0, rtol=0)


def test_load_errors(tmp_path):
    GPT(tiny()).save(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "n_layer": 3}))
    with pytest.raises(ValueError, match=r"missing keys \['blocks\.2\."):
        GPT.load(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**config, "d_ff": 64}))
    with pytest.raises(ValueError, match=r"blocks\.0\.mlp\.fc\.weight: \(128, 32\) vs model \(64, 32\)"):
        GPT.load(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**config, "colour": "red"}))
    with pytest.raises(ValueError, match="colour"):
        GPT.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="GPT.save"):
        GPT.load(tmp_path / "nowhere")


# -- Hugging Face parity ------------------------------------------------------


def _hf_gpt2(path, activation="gelu_new"):
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=97, n_positions=32, n_embd=32, n_layer=2, n_head=4, initializer_range=0.2,
                     bos_token_id=0, eos_token_id=0, pad_token_id=0, activation_function=activation)  # fmt: skip
    model = GPT2LMHeadModel(cfg).eval()
    model.save_pretrained(path)
    return model


def _hf_llama(path, **shape):
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = {"num_attention_heads": 4, "num_key_value_heads": 2, **shape}
    cfg = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      max_position_embeddings=32, rope_theta=500.0, initializer_range=0.2,
                      bos_token_id=0, eos_token_id=0, pad_token_id=0, **shape)  # fmt: skip
    model = LlamaForCausalLM(cfg).eval()
    model.save_pretrained(path)
    return model


def _hf_gpt2_exact_gelu(path):
    # activation_function "gelu" is the exact (erf) GELU: GPTConfig(mlp="gelu_exact")
    return _hf_gpt2(path, activation="gelu")


def _hf_llama_small_heads(path):
    # heads narrower than hidden_size / num_attention_heads (2 heads of 6 in width 32): GPTConfig.d_head
    return _hf_llama(path, num_attention_heads=2, num_key_value_heads=1, head_dim=6)


@pytest.mark.parametrize("build", [_hf_gpt2, _hf_gpt2_exact_gelu, _hf_llama, _hf_llama_small_heads])
def test_from_pretrained_matches_transformers(tmp_path, build):
    hf = build(tmp_path)
    ours = GPT.from_pretrained(tmp_path).eval()
    idx = torch.randint(0, 97, (2, 16))
    expected = hf(idx).logits
    assert expected.std() > 0.1  # weights large enough that a wrong mapping shows
    torch.testing.assert_close(ours(idx)[0], expected, atol=1e-5, rtol=0)
    mask = torch.ones_like(idx)
    hf_tokens = hf.generate(idx, attention_mask=mask, max_new_tokens=12, min_new_tokens=12, do_sample=False)
    assert torch.equal(generate(ours, idx, 12, temperature=0), hf_tokens)


def test_from_pretrained_mismatch_names_keys(tmp_path):
    _hf_gpt2(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    state["transformer.h.0.mlp.c_fc.weight"] = torch.zeros(32, 64)
    state["transformer.extra.weight"] = torch.zeros(2)
    save_file(state, tmp_path / "model.safetensors")
    expected = r"extra\.weight.*blocks\.0\.mlp\.fc\.weight: \(64, 32\) vs model \(128, 32\)"
    with pytest.raises(ValueError, match=expected):
        GPT.from_pretrained(tmp_path)


def test_from_pretrained_errors(tmp_path, monkeypatch):
    import huggingface_hub

    def offline(*args, **kwargs):
        raise OSError("offline mode")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(FileNotFoundError, match="not a local directory.*offline mode"):
        GPT.from_pretrained("gpt2")
    with pytest.raises(FileNotFoundError, match="config.json"):
        GPT.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="'bert' is not supported"):
        GPT.from_pretrained(tmp_path)


def test_cross_entropy_ignores_padding_like_torch():
    model = GPT(tiny())
    idx = torch.randint(0, 61, (2, 6))
    targets = torch.full((2, 6), -100)
    targets[1, 2] = 5
    logits, loss = model(idx, targets)
    torch.testing.assert_close(loss, -F.log_softmax(logits[1, 2], dim=-1)[5])


def test_a_zero_width_is_blamed_on_d_model_not_on_the_derived_mlp_width():
    with pytest.raises(ValueError, match="d_model must be a positive integer, got 0"):
        GPTConfig(d_model=0)
    with pytest.raises(ValueError, match="n_head must be a positive integer, got 0"):
        GPTConfig(n_head=0)


def test_a_head_size_apart_from_d_model_over_n_head(tmp_path):
    # GPTConfig.d_head: 3 heads of size 8 in a width-32 model (what removing a head from a 4-head model leaves)
    from minillm.memory import kv_cache_bytes

    config = GPTConfig(vocab_size=40, context_length=16, d_model=32, n_layer=2, n_head=3, d_head=8)
    model = GPT(config).eval()
    attn = model.blocks[0].attn
    assert attn.qkv.weight.shape == (3 * 3 * 8, 32) and attn.proj.weight.shape == (32, 3 * 8)
    x = torch.randint(0, 40, (2, 10))
    with torch.no_grad():
        full = model(x)[0]
        cache = model.new_kv_cache(2, 16)
        assert cache.k.shape[-1] == 8
        assert kv_cache_bytes(config, 2, 16) == cache.k.numel() * 4 * 2
        step = torch.cat([model(x[:, :6], kv_cache=cache)[0], model(x[:, 6:], kv_cache=cache)[0]], dim=1)
    torch.testing.assert_close(step, full, atol=1e-5, rtol=1e-5)
    # the attention FLOPs count H D, not d_model: 12 n_layer T H D for training, so 8 more tokens of context cost
    assert model.flops_per_token(16) - model.flops_per_token(8) == 12 * 2 * 8 * 3 * 8
    model.save(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["d_head"] == 8
    torch.testing.assert_close(GPT.load(tmp_path / "m")(x)[0], full, atol=0, rtol=0)
    # a config without d_head writes none (old folders and run digests stay as they were)
    assert "d_head" not in GPTConfig(vocab_size=40, context_length=16, d_model=32, n_layer=1, n_head=4).to_dict()
    with pytest.raises(ValueError, match="d_head"):
        GPTConfig(vocab_size=40, d_model=32, n_head=4, d_head=0)


def test_the_gpt2_activation_decides_the_mlp_and_the_two_gelus_differ(tmp_path):
    """gelu_new / gelu_pytorch_tanh -> mlp="gelu" (tanh), gelu -> "gelu_exact" (erf); anything else is refused.

    Loading the exact-GELU checkpoint as if it were tanh changes the logits: the parity test above can tell them apart.
    """
    import dataclasses

    from minillm.model import config_from_hf

    base = {"model_type": "gpt2", "vocab_size": 97, "n_positions": 32, "n_embd": 32, "n_layer": 2, "n_head": 4}
    assert config_from_hf({**base, "activation_function": "gelu_new"}).mlp == "gelu"
    assert config_from_hf({**base, "activation_function": "gelu_pytorch_tanh"}).mlp == "gelu"
    assert config_from_hf({**base, "activation_function": "gelu"}).mlp == "gelu_exact"
    with pytest.raises(ConfigError, match="relu"):
        config_from_hf({**base, "activation_function": "relu"})
    hf = _hf_gpt2_exact_gelu(tmp_path)
    exact = GPT.from_pretrained(tmp_path).eval()
    tanh = GPT(dataclasses.replace(exact.config, mlp="gelu")).eval()
    tanh.load_state_dict(exact.state_dict())
    idx = torch.randint(0, 97, (2, 16))
    with torch.no_grad():
        expected = hf(idx).logits
        assert (tanh(idx)[0] - expected).abs().max() > 1e-4  # the wrong GELU shows
        torch.testing.assert_close(exact(idx)[0], expected, atol=1e-5, rtol=0)
    assert exact.config.ff_width == tanh.config.ff_width == 4 * 32
