"""Tests of minillm.quantize_kv.Int8KVCache: bytes, rounding, decoding with a model, beam reorder, errors.

Independent references: `minillm.memory.kv_cache_bytes` (the formula) for the
bytes, `torch.fake_quantize_per_channel_affine` (PyTorch's own quantize-dequantize)
for what a stored vector comes back as, and the float `KVCache` for decoding.
"""

from __future__ import annotations

import pytest
import torch

from minillm.attention import KVCache
from minillm.errors import ConfigError
from minillm.generate import generate
from minillm.memory import kv_cache_bytes
from minillm.model import GPT, GPTConfig
from minillm.quantize_kv import Int8KVCache

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_gpt(seed: int = 0, **kw) -> GPT:
    torch.manual_seed(seed)
    config = GPTConfig(**{"vocab_size": 64, "context_length": 32, "d_model": 32, "n_layer": 2, "n_head": 4, **kw})
    return GPT(config).eval()


def fake_quantized(x: torch.Tensor) -> torch.Tensor:
    """x (..., D) rounded as int8 absmax codes with one scale per vector, by PyTorch's own op."""
    rows = x.reshape(-1, x.size(-1)).float()
    scale = rows.abs().amax(dim=1) / 127
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    out = torch.fake_quantize_per_channel_affine(rows, scale, torch.zeros(len(rows), dtype=torch.int32), 0, -127, 127)
    return out.reshape(x.shape)


@pytest.mark.parametrize("kw", [{}, {"n_kv_head": 2}, {"n_kv_head": 1, "d_head": 6}])
def test_the_bytes_allocated_are_the_formula(kw):
    model = tiny_gpt(**kw)
    for batch, length in ((1, 32), (3, 10)):
        cache = Int8KVCache.for_model(model, batch, length)
        assert cache.nbytes == kv_cache_bytes(model.config, batch, length, "int8")
        assert model.new_kv_cache(batch, length).nbytes == kv_cache_bytes(model.config, batch, length, "fp32")
    # the book model's shape (D = 32): 36 bytes a vector instead of 128
    d = model.config.head_dim
    assert Int8KVCache.for_model(model, 1).nbytes / model.new_kv_cache(1).nbytes == pytest.approx((d + 4) / (4 * d))


def test_update_returns_what_pytorch_fake_quantization_gives_and_keeps_earlier_positions():
    g = torch.Generator().manual_seed(1)
    cache = Int8KVCache(n_layer=2, batch_size=2, n_kv_head=3, head_dim=8, max_len=12)
    first_k, first_v = torch.randn(2, 3, 5, 8, generator=g) * 3, torch.randn(2, 3, 5, 8, generator=g)
    first_k[0, 1, 2] = 0.0  # an all-zero vector: scale 0, codes 0, no NaN
    k, v = cache.update(1, first_k, first_v)
    assert k.shape == v.shape == (2, 3, 5, 8) and k.dtype == torch.float32
    torch.testing.assert_close(k, fake_quantized(first_k), rtol=0, atol=1e-6)
    torch.testing.assert_close(v, fake_quantized(first_v), rtol=0, atol=1e-6)
    assert torch.equal(k[0, 1, 2], torch.zeros(8))
    cache.advance(5)
    new_k, new_v = torch.randn(2, 3, 1, 8, generator=g) * 100, torch.randn(2, 3, 1, 8, generator=g)
    k, v = cache.update(1, new_k, new_v)  # a token with large keys does not change the earlier ones
    assert k.shape == (2, 3, 6, 8)
    torch.testing.assert_close(k, fake_quantized(torch.cat([first_k, new_k], dim=2)), rtol=0, atol=1e-5)
    scale = new_k.abs().amax(dim=-1, keepdim=True) / 127
    assert bool(((k[:, :, -1:] - new_k).abs() <= scale / 2 + 1e-5).all())  # within half a step
    assert not cache.k[0].any()  # layer 0 untouched


def test_decoding_with_the_int8_cache_stays_close_to_the_float_cache():
    for kw in ({}, {"n_kv_head": 2, "positions": "rope", "norm": "rmsnorm", "mlp": "swiglu"}):
        model = tiny_gpt(seed=3, **kw)
        prompt = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(4))
        runs = []
        for cache in (model.new_kv_cache(2), Int8KVCache.for_model(model, 2)):
            with torch.no_grad():
                logits, _ = model(prompt, kv_cache=cache)
                steps = [logits[:, -1]]
                for t in range(6):
                    nxt = steps[-1].argmax(-1, keepdim=True)
                    logits, _ = model(nxt, kv_cache=cache)
                    steps.append(logits[:, -1])
            runs.append(torch.stack(steps))
        float_logits, int8_logits = runs
        gap = (int8_logits - float_logits).abs().max().item()
        assert 0 < gap < 0.02 * float_logits.std().item(), (kw, gap)


def test_generate_takes_an_int8_cache_and_slides_past_the_context():
    model = tiny_gpt(seed=5)
    prompt = torch.randint(0, 64, (1, 20), generator=torch.Generator().manual_seed(6))
    cache = Int8KVCache.for_model(model, 1)
    out = generate(model, prompt, 40, temperature=0, kv_cache=cache)  # 60 > 32 tokens: the window slides
    assert out.shape == (1, 60) and torch.equal(out[:, :20], prompt)
    reference = generate(model, prompt, 40, temperature=0)
    agree = (out == reference).float().mean().item()
    assert agree > 0.9, agree  # the same greedy tokens almost everywhere (a near-tie may flip)


def test_reorder_and_rewind_keep_codes_and_scales_together():
    g = torch.Generator().manual_seed(7)
    cache = Int8KVCache(n_layer=1, batch_size=3, n_kv_head=1, head_dim=4, max_len=6)
    x = torch.randn(3, 1, 2, 4, generator=g) * torch.tensor([1.0, 10.0, 100.0])[:, None, None, None]
    before, _ = cache.update(0, x, x)
    cache.advance(2)
    cache.reorder(torch.tensor([2, 0]))
    after, _ = cache.update(0, torch.zeros(2, 1, 1, 4), torch.zeros(2, 1, 1, 4))
    torch.testing.assert_close(after[:, :, :2], before[[2, 0]], rtol=0, atol=0)
    cache.rewind(1)
    k, _ = cache.update(0, x[:2, :, :1], x[:2, :, :1])  # overwrites position 1
    torch.testing.assert_close(k[:, :, 1], fake_quantized(x[:2, :, 0]), rtol=0, atol=1e-5)


def test_bad_use_gives_clear_errors():
    model = tiny_gpt()
    for bad in (0, 33, 2.0, True):
        with pytest.raises(ConfigError, match="max_len"):
            Int8KVCache.for_model(model, 1, bad)
    with pytest.raises(ConfigError, match="batch_size"):
        Int8KVCache.for_model(model, 0)
    with pytest.raises(ConfigError, match="dtype"):
        Int8KVCache(1, 1, 1, 4, 4, dtype=torch.int8)
    cache = Int8KVCache(1, 1, 1, 4, 4)
    with pytest.raises(ConfigError, match="full"):
        cache.update(0, torch.randn(1, 1, 5, 4), torch.randn(1, 1, 5, 4))
    nan = torch.randn(1, 1, 2, 4)
    nan[0, 0, 1, 2] = float("nan")
    with pytest.raises(ConfigError, match="keys of layer 0.*NaN"):
        cache.update(0, nan, torch.randn(1, 1, 2, 4))
    prompt = torch.zeros(2, 3, dtype=torch.long)
    with pytest.raises(ConfigError, match="one row per prompt"):
        generate(model, prompt, 2, kv_cache=Int8KVCache.for_model(model, 1))
    used = Int8KVCache.for_model(model, 2)
    used.advance(1)
    with pytest.raises(ConfigError, match="empty"):
        generate(model, prompt, 2, kv_cache=used)
    with pytest.raises(ConfigError, match="use_cache=False"):
        generate(model, prompt, 2, kv_cache=Int8KVCache.for_model(model, 2), use_cache=False)
    with pytest.raises(TypeError, match="KVCache"):
        generate(model, prompt, 2, kv_cache="int8")
    assert isinstance(Int8KVCache.for_model(model, 1), KVCache)
