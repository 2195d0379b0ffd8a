"""Tests of minillm.quantize: error bounds, int4 packing, QuantizedLinear, its kernel setting, quantize(),
bytes, save/load, errors. (The int8 (W8A8) product itself: tests/test_int8_matmul.py.)

Independent references: the error bound |w - q s| <= s / 2 that rounding
guarantees, `torch.fake_quantize_per_channel_affine` (PyTorch's own
quantize-dequantize) for the codes, `torch.ao.quantization.quantize_dynamic`
for a whole int8 linear layer, and the float model for the int8 kernel on a GPT.
"""

from __future__ import annotations

import copy
import json
import pickle
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file
from torch import nn

import minillm.int8_matmul as int8_matmul
import minillm.model as model_module
import minillm.quantize as quantize_module
from minillm.checkpoint import save_model_folder
from minillm.errors import CheckpointError, CheckpointNotFoundError, ConfigError
from minillm.model import GPT, GPTConfig
from minillm.quantize import (
    QuantizedLinear,
    int8_linear_reference,
    int_mm_padded,
    load_quantized,
    model_bytes,
    pack_int4,
    quantize,
    quantize_activations,
    quantize_tensor,
    save_quantized,
    unpack_int4,
)
from minillm.tokenizer import CharTokenizer

pytestmark = pytest.mark.usefixtures("one_thread")
FAST = settings(max_examples=40, deadline=None, derandomize=True)


def random_matrix(seed: int, rows: int, cols: int, magnitude: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, cols, generator=g) * magnitude


def scale_per_element(qt) -> torch.Tensor:
    """The scale each element of a QuantizedTensor was rounded with, in its shape."""
    rows, groups = qt.scale.shape
    per = qt.scale[..., None].expand(rows, groups, qt.codes.numel() // (rows * groups))
    return per.reshape(qt.shape)


def tiny_gpt(**kw) -> GPT:
    config = GPTConfig(**{"vocab_size": 64, "context_length": 16, "d_model": 32, "n_layer": 2, "n_head": 4, **kw})
    return GPT(config).eval()


TOKENS = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(1))


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).norm() / b.norm())


# ---------------------------------------------------------------------------
# quantize_tensor: the arithmetic
# ---------------------------------------------------------------------------


@FAST
@given(seed=st.integers(0, 2**31 - 1), rows=st.integers(1, 6), groups=st.integers(1, 4),
       size=st.sampled_from([1, 2, 3, 8, 16]), bits=st.sampled_from([4, 8]),
       scheme=st.sampled_from(["absmax", "zeropoint"]), granularity=st.sampled_from(["tensor", "channel", "group"]),
       magnitude=st.floats(1e-3, 1e3), shift=st.floats(-3, 3), zero_row=st.booleans())  # fmt: skip
def test_round_trip_error_is_at_most_half_a_step(seed, rows, groups, size, bits, scheme, granularity,
                                                 magnitude, shift, zero_row):  # fmt: skip
    w = (random_matrix(seed, rows, groups * size) + shift) * magnitude  # shifted: zero-point's range is lopsided
    if zero_row:
        w[0] = 0
    qt = quantize_tensor(w, bits, scheme, granularity, size if granularity == "group" else None)
    deq = qt.dequantize()
    assert deq.shape == w.shape and deq.dtype == torch.float32 and torch.isfinite(deq).all()
    s = scale_per_element(qt)
    assert ((w - deq).abs() <= s / 2 * (1 + 1e-5) + 1e-6 * w.abs()).all()
    if scheme == "absmax":
        qmax = 2 ** (bits - 1) - 1
        assert qt.codes.dtype == torch.int8 and qt.zero is None
        assert int(qt.codes.abs().max()) <= qmax
        blocks = {"tensor": w.reshape(1, 1, -1), "channel": w.reshape(rows, 1, -1),
                  "group": w.reshape(rows, groups, size)}  # (R, G, group width)
        torch.testing.assert_close(qt.scale, blocks[granularity].abs().amax(-1) / qmax)
    else:
        assert qt.codes.dtype == torch.uint8 and qt.zero.dtype == torch.uint8
        assert int(qt.codes.max()) <= 2**bits - 1 and int(qt.zero.max()) <= 2**bits - 1
    if zero_row and granularity != "tensor":
        assert (deq[0] == 0).all() and (qt.scale[0] == 0).all()


@pytest.mark.parametrize("scheme", ["absmax", "zeropoint"])
@pytest.mark.parametrize("bits", [4, 8])
def test_codes_agree_with_torch_fake_quantize(scheme, bits):
    w = random_matrix(3, 16, 64) + 0.5
    qt = quantize_tensor(w, bits, scheme, "group", 16)
    rows = w.reshape(-1, 16)  # one row per group: PyTorch's per-channel quantization along axis 0
    zero = torch.zeros(rows.shape[0], dtype=torch.int32) if qt.zero is None else qt.zero.reshape(-1).int()
    lo, hi = (-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1) if scheme == "absmax" else (0, 2**bits - 1)
    reference = torch.fake_quantize_per_channel_affine(rows, qt.scale.reshape(-1), zero, 0, lo, hi).reshape(w.shape)
    differ = (qt.dequantize() - reference).abs() > 1e-6 * scale_per_element(qt) + 1e-7
    assert differ.float().mean() < 1e-3  # only exact ties (x / s vs x * (1 / s)) may round the other way


@settings(max_examples=25, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**31 - 1), rows=st.integers(4, 12), cols=st.integers(8, 48), factor=st.floats(10, 1e3),
       scheme=st.sampled_from(["absmax", "zeropoint"]))  # fmt: skip
def test_per_channel_int8_beats_per_tensor_with_an_outlier_row(seed, rows, cols, factor, scheme):
    w = random_matrix(seed, rows, cols)
    w[seed % rows] *= factor
    errors = {g: float((w - quantize_tensor(w, 8, scheme, g).dequantize()).pow(2).sum()) for g in ("tensor", "channel")}
    assert errors["channel"] <= errors["tensor"]


@settings(max_examples=25, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**31 - 1), n_outliers=st.integers(1, 2), factor=st.floats(20, 200),
       scheme=st.sampled_from(["absmax", "zeropoint"]))  # fmt: skip
def test_groupwise_int4_beats_per_tensor_with_outlier_input_channels(seed, n_outliers, factor, scheme):
    w = random_matrix(seed, 32, 256)
    columns = torch.randperm(256, generator=torch.Generator().manual_seed(seed))[:n_outliers]
    w[:, columns] *= factor  # LLM-style outlier features: a few input channels, every row
    mse = {g: float((w - quantize_tensor(w, 4, scheme, g, 32 if g == "group" else None).dequantize()).pow(2).mean())
           for g in ("tensor", "group")}  # fmt: skip
    assert mse["group"] < mse["tensor"] / 3


def test_all_zero_tensor_and_rows_give_zeros_not_nan():
    for scheme in ("absmax", "zeropoint"):
        for granularity, size in (("tensor", None), ("channel", None), ("group", 4)):
            for w in (torch.zeros(3, 8), torch.cat([torch.zeros(1, 8), torch.ones(2, 8)])):
                deq = quantize_tensor(w, 4, scheme, granularity, size).dequantize()
                assert torch.equal(deq, w)  # zeros and a constant row are exact


# ---------------------------------------------------------------------------
# int4 packing
# ---------------------------------------------------------------------------


def test_pack_all_sixteen_codes_both_signs():
    unsigned = torch.arange(16, dtype=torch.uint8)
    signed = torch.arange(-8, 8, dtype=torch.int8)
    for codes, is_signed in ((unsigned, False), (signed, True)):
        packed = pack_int4(codes)
        assert packed.dtype == torch.uint8 and packed.shape == (8,)
        assert torch.equal(unpack_int4(packed, 16, signed=is_signed), codes)
    assert pack_int4(torch.tensor([1, 2, 15], dtype=torch.uint8)).tolist() == [0x21, 0x0F]  # low nibble first
    assert pack_int4(torch.tensor([-1], dtype=torch.int8)).tolist() == [0x0F]  # two's complement


@FAST
@given(codes=st.lists(st.integers(0, 15), max_size=101), signed=st.booleans())
def test_pack_round_trip_any_length(codes, signed):
    t = torch.tensor(codes, dtype=torch.uint8)
    if signed:
        t = (t.to(torch.int16) - 8).to(torch.int8)
    packed = pack_int4(t)
    assert packed.numel() == (len(codes) + 1) // 2
    assert torch.equal(unpack_int4(packed, len(codes), signed=signed), t)


def test_pack_rejects_bad_input():
    with pytest.raises(ConfigError, match=r"\[0, 15\]"):
        pack_int4(torch.tensor([16], dtype=torch.uint8))
    with pytest.raises(ConfigError, match=r"\[-8, 7\]"):
        pack_int4(torch.tensor([8], dtype=torch.int8))
    with pytest.raises(ConfigError, match="int8 or uint8"):
        pack_int4(torch.tensor([1.0]))
    with pytest.raises(ConfigError, match="not 7"):
        unpack_int4(torch.zeros(2, dtype=torch.uint8), 7)


# ---------------------------------------------------------------------------
# QuantizedLinear
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("bits,group_size,scheme", [(8, None, "absmax"), (4, 16, "absmax"), (4, None, "zeropoint"),
                                                    (8, 8, "zeropoint")])  # fmt: skip
@pytest.mark.parametrize("bias", [True, False])
def test_quantized_linear_is_linear_with_the_dequantized_weight(bits, group_size, scheme, bias):
    linear = nn.Linear(48, 7, bias=bias)  # 7 * 48 codes: an odd row count, even total
    layer = QuantizedLinear.from_linear(linear, bits, group_size, scheme)
    qt = quantize_tensor(linear.weight, bits, scheme, "channel" if group_size is None else "group", group_size)
    x = torch.randn(2, 5, 48)
    assert torch.equal(layer.weight, qt.dequantize())
    torch.testing.assert_close(layer(x), nn.functional.linear(x, qt.dequantize(), linear.bias), rtol=0, atol=0)
    assert layer(x).shape == (2, 5, 7)
    expected = torch.Size([7 * 48 // 2]) if bits == 4 else torch.Size([7, 48])
    assert layer.codes.shape == expected and layer.scale.shape == (7, 48 // (group_size or 48))
    assert (layer.zero is None) == (scheme == "absmax")
    assert not any(b.is_floating_point() for b in (layer.codes, layer.zero) if b is not None)
    assert rel_error(layer(x), linear(x)) < (0.02 if bits == 8 else 0.25)


def test_quantized_linear_odd_codes_and_dtype_follow_the_model():
    linear = nn.Linear(5, 3).to(torch.bfloat16)  # 15 codes: the last byte holds one
    layer = QuantizedLinear.from_linear(linear, bits=4)
    assert layer.codes.shape == (8,) and layer.scale.dtype == torch.bfloat16
    y = layer(torch.randn(4, 5, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()
    half = copy.deepcopy(layer).to(torch.float32)
    assert half.scale.dtype == torch.float32 and half.codes.dtype == torch.uint8  # .to() leaves codes alone


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
def test_int8_linear_agrees_with_torch_dynamic_quantization():
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    linear = nn.Linear(256, 128)
    x = torch.randn(32, 256)
    y = linear(x)
    ours = QuantizedLinear.from_linear(linear, bits=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = quantize_dynamic(nn.Sequential(copy.deepcopy(linear)), {nn.Linear: per_channel_dynamic_qconfig},
                                  dtype=torch.qint8)  # fmt: skip
        their_weight = theirs[0].weight().dequantize().float()
        their_y = theirs(x)
    # the weights: both int8 per output row, so about the same error (measured: within 1%)
    ours_w, theirs_w = rel_error(ours.weight, linear.weight), rel_error(their_weight, linear.weight)
    assert 1 / 1.5 < ours_w / theirs_w < 1.5 and ours_w < 0.01
    # the outputs: PyTorch also rounds the activations to uint8, so its error is larger, of the same order
    ours_y, theirs_y = rel_error(ours(x), y), rel_error(their_y, y)
    assert ours_y <= theirs_y < 10 * ours_y and theirs_y < 0.05


# ---------------------------------------------------------------------------
# The kernel setting: "dequantize" or "int8" (the int8 product itself: tests/test_int8_matmul.py)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("bits,group_size,scheme", [(8, None, "absmax"), (4, 16, "absmax"), (8, 16, "zeropoint")])
def test_default_kernel_is_dequantize_then_linear_bit_for_bit(bits, group_size, scheme):
    layer = QuantizedLinear.from_linear(nn.Linear(32, 9), bits, group_size, scheme)
    x = torch.randn(3, 4, 32)
    assert layer.kernel == "dequantize" and "kernel" not in repr(layer)
    assert torch.equal(layer(x), nn.functional.linear(x, layer.quantized_weight().dequantize(), layer.bias))
    assert layer(x).requires_grad  # the default path stays differentiable


def test_the_w8a8_functions_are_importable_from_quantize_too():
    # they live in minillm.int8_matmul; notebooks and older code import them from here
    assert int8_linear_reference is int8_matmul.int8_linear_reference
    assert int_mm_padded is int8_matmul.int_mm_padded and quantize_activations is int8_matmul.quantize_activations


def test_int8_kernel_on_a_gpt_is_close_to_dequantize_and_round_trips(tmp_path):
    model = tiny_gpt()
    dequantized, integer = quantize(model, 8), quantize(model, 8, kernel="int8")
    assert all(m.kernel == "int8" for m in block_linears(integer).values())
    assert integer.quantization == dequantized.quantization  # same settings, same codes; only the forward differs
    assert all(torch.equal(v, dequantized.state_dict()[k]) for k, v in integer.state_dict().items())
    with torch.no_grad():
        reference, ref_loss = model(TOKENS[:, :-1], TOKENS[:, 1:])
        logits, loss = dequantized(TOKENS[:, :-1], TOKENS[:, 1:])
        int_logits, int_loss = integer(TOKENS[:, :-1], TOKENS[:, 1:])
    # measured: 0.25% (dequantize) and 0.6% (int8) of the logits' norm from fp32's, losses within 2e-4
    assert rel_error(logits, reference) < 0.01 and rel_error(int_logits, reference) < 0.02
    assert abs(float(int_loss) - float(ref_loss)) < 0.01 and abs(float(int_loss) - float(loss)) < 0.01

    folder = save_quantized(tmp_path / "q", integer, tokenizer())
    assert json.loads((folder / "quantization.json").read_text())["kernel"] == "int8"
    loaded, _ = load_quantized(folder)
    assert all(m.kernel == "int8" for m in block_linears(loaded).values())
    assert torch.equal(loaded(TOKENS)[0], integer(TOKENS)[0])

    # a file from before kernels existed has no "kernel": it loads with the dequantize kernel
    old = save_quantized(tmp_path / "old", dequantized, tokenizer())
    settings_ = json.loads((old / "quantization.json").read_text())
    assert settings_.pop("kernel") == "dequantize"
    (old / "quantization.json").write_text(json.dumps(settings_))
    loaded, _ = load_quantized(old)
    assert all(m.kernel == "dequantize" for m in block_linears(loaded).values())
    assert torch.equal(loaded(TOKENS)[0], dequantized(TOKENS)[0])

    # layers with different kernels: one per layer
    integer.blocks[0].mlp.fc.kernel = "dequantize"
    loaded, _ = load_quantized(save_quantized(tmp_path / "mixed", integer, tokenizer()))
    assert {n: m.kernel for n, m in block_linears(loaded).items()} == {n: m.kernel for n, m in
                                                                       block_linears(integer).items()}  # fmt: skip
    assert torch.equal(loaded(TOKENS)[0], integer(TOKENS)[0])


@pytest.mark.parametrize("kwargs,message", [
    ({"kernel": "int4"}, "kernel must be one of"), ({"kernel": None}, "kernel must be one of"),
    ({"kernel": "int8", "bits": 4}, "multiplies 8-bit codes; bits=4"),
    ({"kernel": "int8", "scheme": "zeropoint"}, "absmax .* no zero point"),
    ({"kernel": "int8", "group_size": 16}, "one scale per output row"),
])  # fmt: skip
def test_kernel_settings_that_cannot_work_are_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        quantize(tiny_gpt(), **kwargs)
    settings_ = {"bits": 8, "group_size": None, "scheme": "absmax", **kwargs}
    with pytest.raises(ConfigError, match=message):
        QuantizedLinear(32, 8, **settings_)
    with pytest.raises(ConfigError, match=message):
        QuantizedLinear.from_linear(nn.Linear(32, 8), **settings_)
    layer = QuantizedLinear(32, 8, **{k: v for k, v in settings_.items() if k != "kernel"})
    with pytest.raises(ConfigError, match=message):
        layer.kernel = kwargs["kernel"]
    assert layer.kernel == "dequantize"


def test_a_saved_kernel_that_cannot_work_is_a_checkpoint_error(tmp_path):
    folder = save_quantized(tmp_path / "q", quantize(tiny_gpt(), bits=4), tokenizer())
    path = folder / "quantization.json"
    path.write_text(path.read_text().replace('"kernel": "dequantize"', '"kernel": "int8"'))
    with pytest.raises(CheckpointError, match="multiplies 8-bit codes"):
        load_quantized(folder)


# ---------------------------------------------------------------------------
# A whole model
# ---------------------------------------------------------------------------


def block_linears(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if n.startswith("blocks.") and isinstance(m, (nn.Linear,
            QuantizedLinear))}  # fmt: skip


@pytest.mark.parametrize("backend", ["fbgemm", "int_mm"])
def test_model_bytes_counts_the_int8_kernels_copy_of_the_weights_once_it_exists(backend, monkeypatch):
    if backend == "fbgemm" and not int8_matmul._fbgemm_engine():
        pytest.skip("this CPU's quantized engine is not fbgemm")
    monkeypatch.setattr(int8_matmul.Int8Kernel, "backend", staticmethod(lambda device: backend))
    model = tiny_gpt()
    w8a8, dequantized = quantize(model, 8, kernel="int8"), quantize(model, 8)
    before = model_bytes(w8a8)
    assert before == model_bytes(dequantized) and before["kernel_weights"] == 0  # nothing packed before a call
    w8a8(TOKENS), dequantized(TOKENS)
    after = model_bytes(w8a8)
    shapes = [(m.out_features, m.in_features) for m in block_linears(w8a8).values()]
    if backend == "int_mm":  # the codes transposed, both sides padded to multiples of 8
        expected = sum((i + -i % 8) * (o + -o % 8) for o, i in shapes)
    else:  # the int8 codes, plus a float scale, an int32 zero point and an int32 column offset per output row
        expected = sum(o * i + 12 * o for o, i in shapes)
    assert after["kernel_weights"] == expected > 0
    assert after["total"] == before["total"] + expected
    assert model_bytes(dequantized) == before  # the dequantizing layers hold no second copy
    w8a8(TOKENS)
    assert model_bytes(w8a8) == after  # packed once, not once per call
    for m in block_linears(w8a8).values():
        m.kernel = "dequantize"  # drops the packed copy
    assert model_bytes(w8a8)["kernel_weights"] == 0


@pytest.mark.parametrize("kw", [{}, {"norm": "rmsnorm", "mlp": "swiglu", "positions": "rope", "bias": False}])
def test_quantize_gpt(kw):
    model = tiny_gpt(**kw)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    reference, _ = model(TOKENS)
    float_weight_bytes = sum(m.weight.numel() * 4 for m in block_linears(model).values())
    float_bytes = model_bytes(model)
    assert float_bytes["total"] == float_bytes["float_params"] + float_bytes["buffers"]
    assert float_bytes["float_params"] == 4 * model.num_parameters()  # the tied head counted once
    q8, q4 = quantize(model, bits=8), quantize(model, bits=4, group_size=16, scheme="zeropoint")
    for q, bits, limit in ((q8, 8, 0.01), (q4, 4, 0.1)):
        layers = block_linears(q)
        assert layers and all(isinstance(m, QuantizedLinear) for m in layers.values())
        assert type(q.lm_head) is nn.Linear and q.lm_head.weight is q.tok_emb.weight  # still tied, still float
        assert q.quantization == {"bits": bits, "group_size": None if bits == 8 else 16,
                                  "scheme": "absmax" if bits == 8 else "zeropoint"}  # fmt: skip
        logits, _ = q(TOKENS)
        assert rel_error(logits, reference) < limit
        sizes = model_bytes(q)
        assert sizes["int_weights"] * (8 // bits) * 4 == float_weight_bytes  # 1/4 (int8) or 1/8 (int4) of fp32
        assert sizes["total"] < float_bytes["total"] and sizes["total"] == sum(v for k, v in sizes.items()
                                                                               if k != "total")  # fmt: skip
    assert model_bytes(q8)["scales"] == sum(4 * m.out_features for m in block_linears(q8).values())
    # the original is untouched
    assert all(type(m) is nn.Linear for m in block_linears(model).values()) and not hasattr(model, "quantization")
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert torch.equal(model(TOKENS)[0], reference)


def test_quantize_skip_patterns():
    q = quantize(tiny_gpt(), skip=("lm_head", "*.mlp.*", "attn.proj"))
    kinds = {n: type(m).__name__ for n, m in block_linears(q).items()}
    assert kinds["blocks.0.attn.qkv"] == "QuantizedLinear"  # not matched
    assert kinds["blocks.1.mlp.fc"] == kinds["blocks.0.attn.proj"] == "Linear"  # a glob, a "."-suffix


# ---------------------------------------------------------------------------
# Save and load
# ---------------------------------------------------------------------------


def tokenizer() -> CharTokenizer:
    return CharTokenizer.from_text("abcdefghij klmnop")


@pytest.mark.parametrize("bits,group_size,scheme,dtype", [(8, None, "absmax", torch.float32),
                                                          (4, 16, "zeropoint", torch.float32),
                                                          (4, None, "absmax", torch.bfloat16)])  # fmt: skip
def test_save_and_load_give_identical_logits(tmp_path, bits, group_size, scheme, dtype):
    q = quantize(tiny_gpt().to(dtype), bits, group_size, scheme)
    folder = save_quantized(tmp_path / "q", q, tokenizer())
    loaded, tok = load_quantized(folder)
    assert torch.equal(loaded(TOKENS)[0], q(TOKENS)[0])
    assert loaded.quantization == q.quantization and tok.encode("abc") == tokenizer().encode("abc")
    mine, theirs = q.state_dict(), loaded.state_dict()
    assert mine.keys() == theirs.keys()
    assert all(mine[k].dtype == theirs[k].dtype and torch.equal(mine[k], theirs[k]) for k in mine)
    assert loaded.lm_head.weight is loaded.tok_emb.weight and not loaded.training
    assert sorted(p.name for p in folder.iterdir()) == ["minillm_tokenizer.json", "quantization.json",
                                                         "quantized.safetensors"]  # fmt: skip


def test_quantizing_the_tied_head_too_costs_memory_and_still_round_trips(tmp_path):
    model = tiny_gpt()
    default, everything = quantize(model), quantize(model, skip=())
    assert isinstance(everything.lm_head, QuantizedLinear) and type(everything.tok_emb) is nn.Embedding
    assert model_bytes(everything)["total"] > model_bytes(default)["total"]  # the embedding stays, a copy is added
    loaded, _ = load_quantized(save_quantized(tmp_path / "q", everything, tokenizer()), device="cpu")
    assert isinstance(loaded.lm_head, QuantizedLinear)
    assert torch.equal(loaded(TOKENS)[0], everything(TOKENS)[0])


def test_loading_never_unpickles(tmp_path, monkeypatch):
    folder = save_quantized(tmp_path / "q", quantize(tiny_gpt()), tokenizer())

    def refuse(*args, **kwargs):
        raise AssertionError("load_quantized unpickled something")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    load_quantized(folder)


@pytest.mark.parametrize("module, target", [(model_module, "save_file"), (quantize_module, "atomic_write")])
def test_an_interrupted_save_leaves_nothing_that_loads(tmp_path, monkeypatch, module, target):
    old = quantize(tiny_gpt())
    save_quantized(tmp_path / "kept", old, tokenizer())

    def crash(*args, **kwargs):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(module, target, crash)  # the weights' write, or the settings' write after it
    new = quantize(tiny_gpt(n_layer=1), bits=4)
    for name in ("kept", "fresh"):
        with pytest.raises(OSError):
            save_quantized(tmp_path / name, new, tokenizer())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept"]  # no staging debris, no "fresh"
    with pytest.raises(CheckpointNotFoundError):
        load_quantized(tmp_path / "fresh")
    kept, _ = load_quantized(tmp_path / "kept")  # the old folder is intact
    assert torch.equal(kept(TOKENS)[0], old(TOKENS)[0])


def test_damaged_folders_raise_checkpoint_errors(tmp_path):
    folder = save_quantized(tmp_path / "q", quantize(tiny_gpt()), tokenizer())
    weights, config = folder / "quantized.safetensors", folder / "quantization.json"
    good_weights, good_config = weights.read_bytes(), config.read_text()

    weights.write_bytes(good_weights[: len(good_weights) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_quantized(folder)
    weights.unlink()
    with pytest.raises(CheckpointNotFoundError):
        load_quantized(folder)
    weights.write_bytes(good_weights)

    state = load_file(weights)
    state["blocks.0.attn.qkv.codes"] = state["blocks.0.attn.qkv.codes"].float()
    save_file(state, weights)
    with pytest.raises(CheckpointError, match="blocks.0.attn.qkv.codes"):
        load_quantized(folder)
    weights.write_bytes(good_weights)

    for text, message in (("{not json", "not valid JSON"), ('{"format": "other"}', "not a quantized-model"),
                          (good_config.replace('"bits": 8', '"bits": 3'), "bits must be 4 or 8"),
                          (good_config.replace('"d_model": 32', '"d_model": 48'), "does not match")):  # fmt: skip
        config.write_text(text)
        with pytest.raises(CheckpointError, match=message):
            load_quantized(folder)
    config.write_text(good_config)
    (folder / "minillm_tokenizer.json").unlink()
    with pytest.raises(CheckpointNotFoundError, match="minillm_tokenizer.json"):
        load_quantized(folder)

    with pytest.raises(CheckpointNotFoundError, match="not a directory"):
        load_quantized(tmp_path / "missing")
    save_model_folder(tmp_path / "float", tiny_gpt(), tokenizer())
    with pytest.raises(CheckpointError, match="float model folder.*quantize"):
        load_quantized(tmp_path / "float")


# ---------------------------------------------------------------------------
# User mistakes
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs,message", [
    ({"bits": 3}, "bits must be 4 or 8"), ({"bits": True}, "bits must be 4 or 8"), ({"bits": "8"}, "bits must be"),
    ({"group_size": 0}, "positive integer"), ({"group_size": -32}, "positive integer"),
    ({"group_size": 2.5}, "positive integer"), ({"group_size": True}, "positive integer"),
    ({"scheme": "minmax"}, "scheme must be one of"),
    ({"group_size": 64}, r"group_size 64 does not divide the input width 32 of layer blocks\.0\.attn\.qkv"),
    ({"group_size": 3}, "input width 32"),
])  # fmt: skip
def test_quantize_rejects_bad_settings(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        quantize(tiny_gpt(), **kwargs)


def test_quantize_tensor_rejects_bad_input():
    w = torch.randn(4, 8)
    for kwargs, message in (({"granularity": "row"}, "granularity must be one of"),
                            ({"granularity": "group"}, "needs a group_size"),
                            ({"granularity": "channel", "group_size": 4}, "only it takes one"),
                            ({"granularity": "group", "group_size": 3}, "does not divide the input width 8"),
                            ({"bits": 16}, "bits must be 4 or 8")):  # fmt: skip
        with pytest.raises(ConfigError, match=message):
            quantize_tensor(w, **kwargs)
    with pytest.raises(ConfigError, match="2-D"):
        quantize_tensor(torch.randn(8), granularity="channel")
    with pytest.raises(ConfigError, match="floating-point"):
        quantize_tensor(torch.ones(4, dtype=torch.int64))
    for bad in (float("nan"), float("inf")):
        w[1, 2] = bad
        with pytest.raises(ConfigError, match="1 NaN or inf"):
            quantize_tensor(w, name="the weight")


def test_quantize_refuses_nan_weights_twice_quantized_and_nothing_left():
    model = tiny_gpt()
    with torch.no_grad():
        model.blocks[1].mlp.fc.weight[0, 0] = float("nan")
    with pytest.raises(ConfigError, match=r"layer blocks\.1\.mlp\.fc holds 1 NaN or inf"):
        quantize(model)
    q = quantize(tiny_gpt())
    with pytest.raises(ConfigError, match="already quantized"):
        quantize(q)
    with pytest.raises(ConfigError, match="no nn.Linear layer"):
        quantize(tiny_gpt(), skip=("*",))
    with pytest.raises(ConfigError, match="needs a GPT returned by quantize"):
        save_quantized("unused", tiny_gpt(), tokenizer())
    with pytest.raises(TypeError, match="must be a torch nn.Module"):
        quantize(tiny_gpt().state_dict())  # a state dict, not the model


def test_saved_settings_are_readable_json(tmp_path):
    folder = save_quantized(tmp_path / "q", quantize(tiny_gpt(), bits=4, group_size=32), tokenizer())
    settings_ = json.loads((folder / "quantization.json").read_text())
    assert settings_["quantization"] == {"bits": 4, "group_size": 32, "scheme": "absmax"}
    assert settings_["config"]["d_model"] == 32 and "blocks.1.mlp.proj" in settings_["layers"]
