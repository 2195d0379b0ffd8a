"""minillm.memory: the memory estimator against hand arithmetic and measurements; activation checkpointing."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from minillm.memory import (
    MemoryEstimate,
    activation_bytes,
    block_activation_bytes,
    checkpoint_blocks,
    count_parameters,
    estimate_memory,
    kv_cache_bytes,
    max_kv_batch,
    saved_activation_bytes,
    state_bytes,
)
from minillm.errors import ConfigError
from minillm.model import GPT, GPTConfig
from minillm.optim import make_optimizer

GPT2_PARAMS = 124_439_808  # GPT-2 small with its tied head, as published (e.g. Hugging Face's model card)


def small(**kw) -> GPTConfig:
    return GPTConfig(**{**dict(vocab_size=96, context_length=64, d_model=64, n_layer=4, n_head=4), **kw})


def test_parameter_count_of_gpt2_small_without_allocating():
    assert count_parameters(GPTConfig.from_preset("gpt2")) == GPT2_PARAMS


def test_zero_stages_shard_what_they_should():
    c, n = GPTConfig.from_preset("gpt2"), GPT2_PARAMS
    ddp = estimate_memory(c, strategy="ddp", world_size=8)
    assert (ddp.params, ddp.grads, ddp.optimizer) == (497_759_232, 497_759_232, 995_518_464)  # 4N, 4N, 8N
    z1 = estimate_memory(c, strategy="zero1", world_size=8)
    assert (z1.params, z1.grads, z1.optimizer) == (4 * n, 4 * n, n)
    z2 = estimate_memory(c, strategy="zero2", world_size=8)
    assert (z2.params, z2.grads, z2.optimizer) == (4 * n, n // 2, n)
    z3 = estimate_memory(c, strategy="zero3", world_size=8)
    assert z3.states == 2 * n == estimate_memory(c, strategy="fsdp", world_size=8).states
    assert z3.total == z3.states + z3.activations and z3.gib()["params"] == n / 2 / 2**30
    bf16 = estimate_memory(c, strategy="single", param_bytes=2, grad_bytes=2, optimizer_bytes=4)
    assert bf16.states == 8 * n


@pytest.mark.parametrize("mlp", ["gelu", "swiglu"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_activation_estimate_matches_what_autograd_saves(mlp, precision):
    config = small(mlp=mlp)
    model = GPT(config)
    x = torch.randint(0, 96, (4, 64))
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    with saved_activation_bytes(model) as saved, torch.autocast("cpu", dtype=dtype, enabled=precision == "bf16"):
        model(x, x)
    estimate = activation_bytes(config, 4, 64, precision)
    assert abs(estimate - saved["bytes"]) <= 0.10 * saved["bytes"]


def test_activation_checkpointing_keeps_block_inputs_and_the_same_gradients():
    config = small(dropout=0.1)
    plain = GPT(config)
    ckpt = GPT(config)
    ckpt.load_state_dict(plain.state_dict())
    checkpoint_blocks(ckpt)
    x = torch.randint(0, 96, (4, 64))
    torch.manual_seed(1)
    with saved_activation_bytes(plain) as full:
        plain(x, x)[1].backward()
    torch.manual_seed(1)
    with saved_activation_bytes(ckpt) as kept:
        ckpt(x, x)[1].backward()  # recomputation replays the same dropout masks
    for p, q in zip(plain.parameters(), ckpt.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=0, atol=1e-6)
    assert kept["bytes"] < full["bytes"] / 4
    # measured: what stays saved; the estimate is the peak, which adds the block being recomputed.
    # (The estimator leaves out dropout masks: measure without dropout.)
    config = small()
    model = checkpoint_blocks(GPT(config))
    with saved_activation_bytes(model) as kept:
        model(x, x)
    expected = activation_bytes(config, 4, 64, "fp32", True) - block_activation_bytes(config, 4, 64, "fp32")
    assert abs(expected - kept["bytes"]) <= 0.10 * kept["bytes"]
    with torch.no_grad():
        torch.testing.assert_close(ckpt.eval()(x)[0], plain.eval()(x)[0])  # evaluation path unchanged
    assert list(dict(ckpt.named_parameters())) == list(dict(plain.named_parameters()))


def test_state_bytes_after_a_step_is_16_bytes_per_parameter():
    model = GPT(small())
    optimizer = make_optimizer(model, 1e-3)
    assert state_bytes(model, optimizer) == {"params": 4 * model.num_parameters(), "grads": 0, "optimizer": 0}
    x = torch.randint(0, 96, (2, 64))
    model(x, x)[1].backward()
    optimizer.step()
    got = state_bytes(model, optimizer)
    tensors = len(list(model.parameters()))
    assert got == {"params": 4 * model.num_parameters(), "grads": 4 * model.num_parameters(),
                   "optimizer": 8 * model.num_parameters() + 4 * tensors}  # fmt: skip


def test_memory_errors_say_what_to_fix():
    c = small()
    with pytest.raises(ValueError, match="strategy must be one of"):
        estimate_memory(c, strategy="zero4")
    with pytest.raises(ValueError, match="world_size"):
        estimate_memory(c, world_size=0)
    with pytest.raises(ValueError, match="'single' is one process"):
        estimate_memory(c, strategy="single", world_size=2)
    with pytest.raises(ValueError, match="micro_batch"):
        activation_bytes(c, 0)
    with pytest.raises(ValueError, match="context must be"):
        activation_bytes(c, 1, context=65)
    with pytest.raises(TypeError, match="needs a model with .blocks"):
        checkpoint_blocks(nn.Linear(2, 2))
    assert isinstance(estimate_memory(c), MemoryEstimate)


@pytest.mark.parametrize("n_kv_head", [None, 2, 1])
def test_kv_cache_bytes_are_what_the_model_allocates(n_kv_head):
    """The estimate against the tensors `GPT.new_kv_cache` really allocates: MHA, GQA (2 of 4 heads), MQA."""
    config = GPTConfig(vocab_size=64, context_length=32, d_model=32, n_layer=3, n_head=4, n_kv_head=n_kv_head)
    model = GPT(config)
    for batch, length in [(1, None), (5, 32), (2, 7)]:
        cache = model.new_kv_cache(batch, length)
        assert kv_cache_bytes(config, batch, length) == cache.k.nbytes + cache.v.nbytes
        half = model.new_kv_cache(batch, length, dtype=torch.bfloat16)
        assert kv_cache_bytes(config, batch, length, "bf16") == half.k.nbytes + half.v.nbytes
    mha = kv_cache_bytes(dataclasses.replace(config, n_kv_head=None), 1)
    assert kv_cache_bytes(config, 1) * config.n_head == mha * config.kv_heads  # GQA stores kv_heads/n_head of it
    # int8: a quarter of the numbers' bytes plus one fp32 scale per head vector (head_dim 8 here: 8 + 4 vs 32)
    assert kv_cache_bytes(config, 1, kv_format="int8") * 32 == kv_cache_bytes(config, 1) * 12


def test_max_kv_batch_and_bad_kv_arguments():
    config = GPTConfig(vocab_size=64, context_length=32, d_model=32, n_layer=3, n_head=4)
    one = kv_cache_bytes(config, 1)
    assert max_kv_batch(config, 10 * one + one // 2) == 10
    assert max_kv_batch(config, 10 * one, weight_bytes=3 * one) == 7
    assert max_kv_batch(config, one, weight_bytes=2 * one) == 0
    for bad in [dict(memory_bytes=1e9), dict(memory_bytes=-1), dict(weight_bytes=0.5), dict(memory_bytes=True)]:
        with pytest.raises(ConfigError, match="bytes"):
            max_kv_batch(config, **{"memory_bytes": 10 * one, **bad})
    for bad in [dict(kv_format="int4"), dict(batch_size=0), dict(seq_len=33), dict(seq_len=0), dict(batch_size=1.5),
                dict(batch_size=True)]:
        with pytest.raises(ConfigError):
            kv_cache_bytes(config, **{"batch_size": 1, **bad})
