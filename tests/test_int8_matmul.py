"""Tests of minillm.int8_matmul: int8 weights times int8 activations (W8A8), written out and with fast kernels.

Independent references: float64 products with the activations' rounding bound
(the error budget below), the exact integer product for `int_mm_padded`, and
fbgemm's own unpacking of the weight it was given.
"""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from minillm.int8_matmul import Int8Kernel, int8_linear_reference, int_mm_padded, quantize_activations
from minillm.quantize import QuantizedLinear, quantize_tensor

pytestmark = pytest.mark.usefixtures("one_thread")
FAST = settings(max_examples=40, deadline=None, derandomize=True)


def random_matrix(seed: int, rows: int, cols: int, magnitude: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, cols, generator=g) * magnitude


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).norm() / b.norm())


# Error budget. With W' = the dequantized weight, the exact product is x W'^T + b. The reference rounds each
# row of x to the grid of step s_x[i] = max|x[i]| / 127, moving each element by at most s_x[i] / 2, so output
# (i, j) moves by at most s_x[i] / 2 * sum_k |W'[j, k]|, and the integer sum adds nothing. fbgemm (the CPU
# kernel) rounds the same per-row-scaled values to its own 7-bit grid of step <= 2 s_x[i], so its bound is
# twice that. On top, float32 rounding of the rescale and of fbgemm's output: 1e-5 of sum_k |x W'| + |b|.


def int8_error_bounds(x: torch.Tensor, layer: QuantizedLinear) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(exact float64 output, the reference's rounding bound, float slack) for x (rows, in)."""
    w = layer.weight.double()
    b = torch.zeros(layer.out_features, dtype=torch.float64) if layer.bias is None else layer.bias.detach().double()
    x = x.double()
    exact = x @ w.T + b
    s_x = x.abs().amax(dim=1, keepdim=True) / 127
    bound = s_x / 2 * w.abs().sum(dim=1)[None]
    slack = 1e-5 * (x.abs() @ w.abs().T + b.abs()) + 1e-30
    return exact, bound, slack


@FAST
@given(seed=st.integers(0, 2**31 - 1), rows=st.integers(1, 9), cols=st.integers(1, 40), out=st.integers(1, 12),
       magnitude=st.floats(1e-3, 1e3), zero_row=st.booleans())  # fmt: skip
def test_int8_reference_is_the_exact_product_of_the_rounded_activations(seed, rows, cols, out, magnitude, zero_row):
    x = random_matrix(seed, rows, cols, magnitude)
    if zero_row:
        x[0] = 0
    layer = QuantizedLinear.from_linear(nn.Linear(cols, out), kernel="int8")
    qx, s_x = quantize_activations(x)
    assert qx.dtype == torch.int8 and s_x.shape == (rows, 1) and int(qx.abs().max()) <= 127
    assert ((qx.double() * s_x.double() - x.double()).abs() <= s_x.double() / 2 * (1 + 1e-5)).all()  # half a step
    if zero_row:
        assert (qx[0] == 0).all() and s_x[0] == 0
    # independently, in float64: (qx s_x) (q s_w)^T + b, every product and sum exact at these sizes
    want = (qx.double() * s_x.double()) @ (layer.codes.double() * layer.scale.double()).T + layer.bias.detach().double()
    got = int8_linear_reference(x, layer.codes, layer.scale, layer.bias.detach())
    assert got.dtype == torch.float32 and got.shape == (rows, out)
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-6 * float(want.abs().max()) + 1e-30)
    exact, bound, slack = int8_error_bounds(x, layer)
    assert ((got.double() - exact).abs() <= bound + slack).all()


@FAST
@given(seed=st.integers(0, 2**31 - 1), rows=st.integers(1, 40), cols=st.sampled_from([1, 7, 8, 24, 50, 96]),
       out=st.sampled_from([1, 5, 8, 33]), magnitude=st.floats(1e-2, 1e2), bias=st.booleans(),
       per_tensor=st.booleans(), outlier=st.floats(1, 100))  # fmt: skip
def test_int8_kernel_is_within_activation_rounding_of_the_exact_product(seed, rows, cols, out, magnitude, bias,
                                                                        per_tensor, outlier):  # fmt: skip
    x = random_matrix(seed, rows, cols, magnitude)
    x[:, seed % cols] *= outlier  # an outlier feature, as LLM activations have
    linear = nn.Linear(cols, out, bias=bias)
    layer = QuantizedLinear.from_linear(linear, kernel="int8")
    if per_tensor:  # one scale for the whole matrix (as minillm.bench.compress builds it) works too
        qt = quantize_tensor(linear.weight, 8, "absmax", "tensor")
        layer.codes, layer.scale = qt.codes, qt.scale
    exact, bound, slack = int8_error_bounds(x, layer)
    reference = int8_linear_reference(x, layer.codes, layer.scale, layer.bias)
    y = layer(x)
    assert y.shape == (rows, out) and y.dtype == torch.float32
    assert ((reference.double() - exact).abs() <= bound + slack).all()
    assert ((y.double() - exact).abs() <= 2 * bound + slack).all()  # fbgemm's 7-bit activations
    assert ((y.double() - reference.double()).abs() <= 3 * bound + 2 * slack).all()


def test_int8_kernel_on_a_layer_is_close_to_the_float_layer():
    linear = nn.Linear(256, 128)
    x = torch.randn(32, 256)
    dequantized = QuantizedLinear.from_linear(linear)
    integer = QuantizedLinear.from_linear(linear, kernel="int8")
    # measured: 0.4% of the output's norm (weights alone), 0.8% (and 8-bit activations: the reference),
    # 1.4% (and fbgemm's 7-bit activations)
    assert rel_error(dequantized(x), linear(x)) < 0.01 and rel_error(integer(x), linear(x)) < 0.03
    assert rel_error(int8_linear_reference(x, integer.codes, integer.scale, integer.bias), linear(x)) < 0.02


@FAST
@given(m=st.integers(1, 40), k=st.integers(1, 40), n=st.integers(1, 40), seed=st.integers(0, 2**31 - 1))
def test_int_mm_padded_gives_the_integer_product_for_any_shape(m, k, n, seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(-127, 128, (m, k), generator=g, dtype=torch.int8)
    b = torch.randint(-127, 128, (k, n), generator=g, dtype=torch.int8)
    got = int_mm_padded(a, b)
    assert got.dtype == torch.int32 and torch.equal(got.long(), a.long() @ b.long())


def test_int8_kernel_through_int_mm_equals_the_reference_bit_for_bit(monkeypatch):
    # the CUDA path (torch._int_mm, padded), run on the CPU: the same integers and the same rescale as the reference
    monkeypatch.setattr(Int8Kernel, "backend", staticmethod(lambda device: "int_mm"))
    for cols, out, rows in ((48, 7, 1), (50, 33, 20), (64, 16, 17)):  # k, n not multiples of 8; m <= 16 and > 16
        layer = QuantizedLinear.from_linear(nn.Linear(cols, out), kernel="int8")
        x = torch.randn(rows, cols)
        assert torch.equal(layer(x), int8_linear_reference(x, layer.codes, layer.scale, layer.bias))
        assert layer._int8._prepared[-1].shape == (cols + -cols % 8, out + -out % 8)  # padded once, cached


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_int8_kernel_on_cuda_matches_the_reference():
    layer = QuantizedLinear.from_linear(nn.Linear(200, 44), kernel="int8")
    x = torch.randn(3, 5, 200)
    want = int8_linear_reference(x, layer.codes, layer.scale, layer.bias)
    got = layer.cuda()(x.cuda()).cpu()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)  # exact integers; float rescale on another chip


def test_int8_kernel_uses_the_codes_and_scales_as_they_are_packed_once():
    linear = nn.Linear(64, 24)
    with torch.no_grad():
        linear.weight[3] = 0  # an all-zero row: codes 0, scale 0
    layer = QuantizedLinear.from_linear(linear, kernel="int8")
    x = torch.randn(5, 64)
    assert layer._int8._prepared is None and "kernel=int8" in repr(layer)
    y = layer(x)
    assert not y.requires_grad  # inference only: no gradient through the integer product
    packed = layer._int8._prepared[-1]
    weight, bias = torch.ops.quantized.linear_unpack(packed)
    assert torch.equal(weight.int_repr(), layer.codes) and bias is None  # no requantization
    nonzero = torch.where(layer.scale[:, 0] > 0, layer.scale[:, 0], 1.0)
    assert torch.equal(weight.q_per_channel_scales().float(), nonzero)
    assert (y[:, 3] == layer.bias[3]).all()
    layer(x)
    assert layer._int8._prepared[-1] is packed  # cached
    assert sorted(layer.state_dict()) == ["bias", "codes", "scale"]  # never saved
    with torch.no_grad():
        layer.codes.copy_(-layer.codes)  # in place (as load_state_dict does): packed anew
    torch.testing.assert_close(layer(x) - layer.bias, -(y - layer.bias), rtol=0, atol=1e-5)
    assert layer._int8._prepared[-1] is not packed
    twin = copy.deepcopy(layer)
    assert twin._int8._prepared is None and torch.equal(twin(x), layer(x))
    layer.kernel = "dequantize"
    assert layer._int8._prepared is None and layer(x).requires_grad
