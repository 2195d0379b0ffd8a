"""int8 weights times int8 activations (W8A8): the integer matrix multiply, written out and with fast kernels (appendix B).

`minillm.quantize` stores a linear layer's weight as int8 codes q with one
float scale s_w per output row (8-bit absmax, `kernel="int8"`). This module
multiplies such a weight without rebuilding it: each row of activations is
rounded to int8 with its own scale, on the fly, and the product is a sum of
integers:

    y[i, j] ~ s_x[i] s_w[j] * sum_k qx[i, k] q[j, k]      (an exact int32 sum)

The weight is never rebuilt; the only new error is the activations' rounding
(to 8 bits per row; on a CPU to fbgemm's 7-bit grid, see `Int8Kernel`).
Whether that is faster depends on the hardware's integer kernels: on CUDA
`torch._int_mm` (int8 tensor cores), on an x86 CPU fbgemm's dynamic int8 linear
layer (the one behind `torch.ao.nn.quantized.dynamic.Linear`), fed the codes
and scales as they are. `torch._int_mm` on a CPU is a slow generic loop (5-30x
slower than an fp32 matmul on an AVX2 CPU without VNNI), so the CPU uses fbgemm.
Fused weight-only kernels (int4 codes unpacked inside the matmul) are not
written here.

* `quantize_activations` / `int8_linear_reference`: the product written out in plain torch;
* `int_mm_padded`: the same integer product with `torch._int_mm`, padded to its shape rules;
* `Int8Kernel`: the fast forward pass of `QuantizedLinear(kernel="int8")`, with
  its cache of the weight in the kernel's form.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F


def _nonzero(scale: torch.Tensor) -> torch.Tensor:
    """The scale with zeros replaced by 1, to divide by: an all-zero group gets codes 0 (and scale 0), no NaN."""
    return torch.where(scale > 0, scale, torch.ones_like(scale))


# ---------------------------------------------------------------------------
# The product written out
# ---------------------------------------------------------------------------


def quantize_activations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x (rows, in) float -> (codes int8 (rows, in), scale float32 (rows, 1)): absmax, one scale per row (token).

    Activations change with every input, so their scale is chosen on the fly
    ("dynamic" quantization), per row: one token's outlier then costs only that
    token precision. An all-zero row gets codes 0 and scale 0.
    """
    x = x.float()
    scale = x.abs().amax(dim=-1, keepdim=True) / 127
    return torch.round(x / _nonzero(scale)).clamp(-127, 127).to(torch.int8), scale


def _rescale(acc: torch.Tensor, x_scale: torch.Tensor, w_scale: torch.Tensor,
             bias: torch.Tensor | None) -> torch.Tensor:  # fmt: skip
    """y = acc * s_x * s_w + b in float32: acc (rows, out) int32, s_x (rows, 1), s_w (out, 1) or (1, 1)."""
    y = acc.float() * x_scale * w_scale.float().reshape(1, -1)
    return y if bias is None else y + bias.float()


def int8_linear_reference(x: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor,
                          bias: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """x (..., in) -> (..., out) float32: the W8A8 integer linear layer, written out in plain torch.

    codes int8 (out, in) and scale (out, 1) (or (1, 1)) are an absmax weight,
    W ~ codes * scale. With the activations quantized per row, X ~ qx * s_x,

        y[i, j] = sum_k X[i, k] W[j, k] ~ s_x[i] s_w[j] * sum_k qx[i, k] codes[j, k]

    The sum is taken over integers (products of two int8 fit in 15 bits and k
    of them in an int32 for any k below 133,000), exactly; the floats come back
    once per output, in the rescale. The only error beyond the weight's own is
    the activations' rounding, at most s_x[i] / 2 per element. This is the
    slow, readable version (an int32 matrix multiply on the CPU); `Int8Kernel`
    (`QuantizedLinear` with kernel="int8") computes the same with a fast kernel.
    """
    shape = x.shape
    qx, sx = quantize_activations(x.reshape(-1, shape[-1]))
    acc = qx.cpu().to(torch.int32) @ codes.cpu().to(torch.int32).T  # (rows, out), exact
    return _rescale(acc.to(x.device), sx, scale, bias).reshape(*shape[:-1], -1)


# ---------------------------------------------------------------------------
# Fast kernels
# ---------------------------------------------------------------------------


def int_mm_padded(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a (m, k) int8 @ b (k, n) int8 -> (m, n) int32 with `torch._int_mm`, padded to its CUDA shape rules.

    On CUDA, `torch._int_mm` (cuBLASLt's int8 GEMM) needs m > 16 and k, n
    multiples of 8. Zero rows of `a`, and zero columns of `a` and rows of `b`
    (k), change no product; zero columns of `b` (n) add outputs that are cut
    off. So any shape works, at the cost of copies where one does not fit
    (`Int8Kernel` pads its weight once, ahead of time, so only decoding's few
    rows are padded on each call).
    """
    (m, k), n = a.shape, b.shape[1]
    pad_m, pad_k, pad_n = max(0, 17 - m), -k % 8, -n % 8
    if pad_m or pad_k:
        a = F.pad(a, (0, pad_k, 0, pad_m))
    if pad_k or pad_n:
        b = F.pad(b, (0, pad_n, 0, pad_k))
    return torch._int_mm(a, b)[:m, :n]


def _fbgemm_engine() -> bool:
    """Whether torch's quantized CPU engine is fbgemm (or x86, which uses it for dynamic linear layers)."""
    return torch.backends.quantized.engine in ("fbgemm", "x86")


def _fbgemm_pack(codes: torch.Tensor, scale: torch.Tensor) -> Any:
    """fbgemm's packed form of the int8 weight codes (out, in) with their per-row scales, no bias, no requantizing.

    The codes become a `torch.qint8` tensor as they are (zero point 0, the
    scales as float64); `linear_unpack` gives back exactly these codes and scales.
    """
    out = codes.shape[0]
    per_row = _nonzero(scale.float().reshape(-1).expand(out)).double().contiguous()  # an all-zero row: codes 0
    with warnings.catch_warnings():  # torch marks its quantized-tensor constructors deprecated
        warnings.simplefilter("ignore")
        weight = torch._make_per_channel_quantized_tensor(codes.cpu().contiguous(), per_row.cpu(),
                                                           torch.zeros(out, dtype=torch.long), 0)  # fmt: skip
        return torch.ops.quantized.linear_prepack(weight, None)



class Int8Kernel:
    """The W8A8 forward pass of one int8 layer: what `int8_linear_reference` computes, with a fast kernel.

    `forward(x, codes, scale, bias)`: x (..., in) -> (..., out) in x's dtype,
    for absmax int8 codes (out, in) and scales (out, 1) or (1, 1). On CUDA with
    `torch._int_mm` (`int_mm_padded`), on a CPU with fbgemm's dynamic int8
    linear layer (without fbgemm, the reference itself). The kernel's form of
    the weight (fbgemm's packed matrix, or the padded transposed codes) is built
    on the first call and cached, rebuilt when the codes, the scales or the
    device change; a copy (or a pickle) starts with an empty cache and packs its own.
    """

    def __init__(self) -> None:
        self._prepared: tuple | None = None  # (backend, codes, version, scale, version, the kernel's weight)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_prepared": None}  # a copy (or a pickle) packs its own weight

    @property
    def nbytes(self) -> int:
        """Bytes of the kernel's own copy of the weight: 0 until the first call.

        CUDA: the padded transposed codes, exactly. fbgemm: its packed matrix holds
        the out x in int8 codes plus, per output row, a scale, a zero point and a
        column offset (4 bytes each); counted as that, without the padding its
        blocked layout may add (fbgemm does not report its size).
        """
        if self._prepared is None:
            return 0
        backend, codes, weight = self._prepared[0], self._prepared[1], self._prepared[-1]
        if backend == "int_mm":
            return weight.numel() * weight.element_size()
        return codes.numel() + 12 * codes.shape[0]

    @staticmethod
    def backend(device: torch.device) -> str:
        """The kernel for tensors on `device`: "int_mm" (CUDA), "fbgemm" (a CPU with it) or "reference"."""
        if device.type == "cuda":
            return "int_mm"
        return "fbgemm" if device.type == "cpu" and _fbgemm_engine() else "reference"

    def _prepare(self, backend: str, codes: torch.Tensor, scale: torch.Tensor) -> Any:
        """The weight in the backend's form, from the cache while codes, scales and device are unchanged."""
        # valid for the same tensor objects (a move to another device makes new ones), unmodified in place
        cached = self._prepared
        if (cached is None or cached[0] != backend or cached[1] is not codes or cached[2] != codes._version
                or cached[3] is not scale or cached[4] != scale._version):  # fmt: skip
            if backend == "fbgemm":
                weight = _fbgemm_pack(codes, scale)
            else:  # int_mm: (in, out) padded to multiples of 8 once, so that calls pad only their rows
                codes_t = codes.T
                weight = F.pad(codes_t, (0, -codes_t.shape[1] % 8, 0, -codes_t.shape[0] % 8))
            self._prepared = (backend, codes, codes._version, scale, scale._version, weight)
        return self._prepared[-1]

    def forward(self, x: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor,
                bias: torch.Tensor | None) -> torch.Tensor:  # fmt: skip
        """x (..., in) -> (..., out): x W^T + b with W = codes * scale, activations rounded to int8 per row.

        Inference only: rounding has no useful gradient, and fbgemm none at all, so
        the output is computed without autograd (it never requires grad).
        """
        out_features, in_features = codes.shape
        with torch.no_grad():
            return self._product(x.reshape(-1, in_features), codes, scale, bias).to(x.dtype).reshape(
                *x.shape[:-1], out_features)  # fmt: skip

    def _product(self, rows: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor,
                 bias: torch.Tensor | None) -> torch.Tensor:  # fmt: skip
        """rows (n, in) -> (n, out) float32."""
        backend = self.backend(rows.device)
        if backend == "reference":
            y = int8_linear_reference(rows, codes, scale, bias)
        elif backend == "int_mm":
            out_features, in_features = codes.shape
            qx, sx = quantize_activations(rows)
            acc = int_mm_padded(F.pad(qx, (0, -in_features % 8)), self._prepare(backend, codes, scale))
            y = _rescale(acc[:, :out_features], sx, scale, bias)
        else:
            # fbgemm quantizes its whole input with ONE scale (uint8 with a zero point, 7 bits: PyTorch narrows
            # the range so that AVX2's 16-bit sums of u8 x s8 pairs cannot overflow): for one row (decoding)
            # that is the row's own. For more, dividing each row by its own s_x = absmax / 127 first puts every
            # row on [-127, 127], so each row gets its own scale as in the reference (on a grid of step <= 2 s_x
            # instead of s_x: 7 bits, not 8), and the layer being linear, multiplying the output rows by s_x
            # undoes the division (s_x is kept above 0: a row of zeros stays zeros).
            x, packed = rows.float(), self._prepare(backend, codes, scale)
            if x.shape[0] == 1:
                y = torch.ops.quantized.linear_dynamic(x, packed, True)
            else:
                sx = x.abs().amax(dim=-1, keepdim=True).clamp_min(1e-30) / 127
                y = torch.ops.quantized.linear_dynamic(x / sx, packed, True) * sx
            if bias is not None:
                y = y + bias.float()
        return y
