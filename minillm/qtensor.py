"""Quantized tensors from scratch: integer codes, float scales, two int4 codes a byte (appendix B).

Appendix B (`B_inference_compression`) makes the book model smaller by storing
each weight of its linear layers as a small integer code plus a shared float
scale. A weight w becomes

    absmax (symmetric):      q = round(w / s),      s = max|w| / (2^(b-1) - 1),   w ~ q s
    zero-point (asymmetric): q = round(w / s) + z,  s = (max - min) / (2^b - 1),  w ~ (q - z) s

with b bits per code: codes in [-127, 127] (int8) or [-7, 7] (int4) for absmax,
in [0, 255] or [0, 15] for zero-point (whose range [min, max] is widened to
include 0, so that z = round(-min / s) is a valid code and 0 stays exact).
Rounding moves each weight by at most half a step, |w - q s| <= s / 2, so the
error is set by the scale, and the scale by the largest weight it has to cover. One outlier then spoils every
weight that shares its scale; hence the *granularity*:

    tensor    one scale for the whole matrix                          scale (1, 1)
    channel   one scale per output row of a Linear weight (out, in)   scale (out, 1)
    group     one scale per `group_size` consecutive inputs of a row  scale (out, in / group_size)

* `quantize_tensor` / `QuantizedTensor.dequantize`: the arithmetic above;
* `pack_int4` / `unpack_int4`: two 4-bit codes in one byte;
* `check_settings`: the bits, group size and scheme a user asked for, checked.

`minillm.quantize` builds linear layers and whole models from these (and
re-exports every name here).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from minillm.errors import ConfigError
from minillm.int8_matmul import _nonzero

BITS = (4, 8)
SCHEMES = ("absmax", "zeropoint")
GRANULARITIES = ("tensor", "channel", "group")


def check_settings(bits: int, group_size: int | None, scheme: str) -> None:
    """Raise ConfigError unless bits is 4 or 8, group_size None or a positive int, scheme a known one."""
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in BITS:
        raise ConfigError(f"bits must be 4 or 8, got {bits!r}")
    if group_size is not None and (isinstance(group_size, bool) or not isinstance(group_size, int)
                                   or group_size < 1):  # fmt: skip
        raise ConfigError(f"group_size must be a positive integer (e.g. 32, 64, 128) or None for one scale "
                          f"per output row, got {group_size!r}")  # fmt: skip
    if scheme not in SCHEMES:
        raise ConfigError(f"scheme must be one of {SCHEMES}, got {scheme!r}")



# ---------------------------------------------------------------------------
# One tensor: codes and scales
# ---------------------------------------------------------------------------


@dataclass
class QuantizedTensor:
    """A tensor as integer codes and float scales (and zero points); `dequantize()` gives it back.

    codes: the original shape, int8 (absmax) or uint8 (zero-point), one code per
    element (4-bit codes too: packing is `pack_int4`'s job). scale: float32
    (R, G), one per group of G groups in R rows (tensor: (1, 1); channel:
    (out, 1); group: (out, in / group_size)). zero: uint8 (R, G), zero-point only.
    """

    codes: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor | None
    shape: tuple[int, ...]
    bits: int
    scheme: str
    granularity: str
    group_size: int | None = None

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The float tensor the codes stand for, of the original shape: (q - z) * s, computed in float32."""
        rows, groups = self.scale.shape
        q = self.codes.reshape(rows, groups, -1).float()  # (R, G, group width)
        if self.zero is not None:
            q = q - self.zero.float()[..., None]
        return (q * self.scale.float()[..., None]).reshape(self.shape).to(dtype)


def quantize_tensor(w: torch.Tensor, bits: int = 8, scheme: str = "absmax", granularity: str = "tensor",
                    group_size: int | None = None, *, name: str = "the tensor") -> QuantizedTensor:  # fmt: skip
    """Quantize `w` to `bits`-bit codes with one scale per tensor, output row (channel) or group.

    w: any shape for granularity "tensor"; a Linear weight (out, in) for
    "channel" and "group" (which needs a `group_size` dividing `in`). Absmax:
    codes in [-(2^(b-1)-1), 2^(b-1)-1], zero-point: codes in [0, 2^b - 1], with
    the range widened to include 0 (so zero, and padding, stay exact).
    Elementwise, |w - dequantize()| <= scale / 2 (up to float rounding).
    `name` is used in error messages.
    """
    check_settings(bits, group_size, scheme)
    if granularity not in GRANULARITIES:
        raise ConfigError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    if (granularity == "group") != (group_size is not None):
        raise ConfigError("granularity 'group' needs a group_size, and only it takes one "
                          f"(got granularity={granularity!r}, group_size={group_size!r})")  # fmt: skip
    if not isinstance(w, torch.Tensor) or not w.is_floating_point() or w.numel() == 0:
        raise ConfigError(f"{name} must be a non-empty floating-point tensor to quantize")
    if granularity != "tensor" and w.dim() != 2:
        raise ConfigError(f"granularity {granularity!r} needs a 2-D weight (out, in); {name} has shape "
                          f"{tuple(w.shape)}")
    bad = int((~torch.isfinite(w)).sum())
    if bad:
        raise ConfigError(f"{name} holds {bad} NaN or inf values; quantization needs finite weights "
                          "(the model diverged or the checkpoint is damaged)")  # fmt: skip
    x = w.detach().float()
    rows, width = (1, x.numel()) if granularity == "tensor" else tuple(x.shape)
    size = group_size or width
    if width % size:
        raise ConfigError(f"group_size {size} does not divide the input width {width} of {name}; choose a "
                          f"divisor of {width}, or None for one scale per output row")
    x = x.reshape(rows, width // size, size)  # (R, G, size)
    if scheme == "absmax":
        qmax = 2 ** (bits - 1) - 1
        scale = x.abs().amax(dim=-1) / qmax  # (R, G)
        codes = torch.round(x / _nonzero(scale)[..., None]).clamp(-qmax, qmax).to(torch.int8)
        zero = None
    else:
        qmax = 2**bits - 1
        lo, hi = x.amin(dim=-1).clamp(max=0), x.amax(dim=-1).clamp(min=0)  # the range includes 0
        scale = (hi - lo) / qmax
        zero = torch.round(-lo / _nonzero(scale)).clamp(0, qmax)  # the code of w = 0
        codes = (torch.round(x / _nonzero(scale)[..., None]) + zero[..., None]).clamp(0, qmax).to(torch.uint8)
        zero = zero.to(torch.uint8)
    return QuantizedTensor(codes.reshape(w.shape), scale, zero, tuple(w.shape), bits, scheme, granularity, group_size)


# ---------------------------------------------------------------------------
# Two 4-bit codes per byte
# ---------------------------------------------------------------------------


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """Pack 4-bit codes (n,) (any shape, read flat) into bytes (ceil(n / 2),) uint8.

    codes: uint8 in [0, 15], or int8 in [-8, 7] (stored as their 4-bit two's
    complement). Code 2i goes into the low nibble of byte i, code 2i+1 into the
    high one; an odd count is padded with a zero nibble.
    """
    if codes.dtype not in (torch.int8, torch.uint8):
        raise ConfigError(f"pack_int4 packs int8 or uint8 codes, got {codes.dtype}")
    flat = codes.reshape(-1).to(torch.int16)
    lo, hi = (-8, 7) if codes.dtype == torch.int8 else (0, 15)
    if flat.numel() and (int(flat.min()) < lo or int(flat.max()) > hi):
        raise ConfigError(f"4-bit {codes.dtype} codes must lie in [{lo}, {hi}], "
                          f"got values in [{int(flat.min())}, {int(flat.max())}]")
    nibbles = (flat & 0xF).to(torch.uint8)
    if nibbles.numel() % 2:
        nibbles = torch.cat([nibbles, nibbles.new_zeros(1)])
    pairs = nibbles.view(-1, 2)
    return pairs[:, 0] | (pairs[:, 1] << 4)


def unpack_int4(packed: torch.Tensor, n: int, signed: bool = False) -> torch.Tensor:
    """The `n` codes (n,) in `packed` (ceil(n / 2),) uint8: uint8 in [0, 15], or int8 in [-8, 7] if `signed`."""
    if packed.dtype != torch.uint8 or packed.dim() != 1:
        raise ConfigError(f"unpack_int4 needs a 1-D uint8 tensor, got {packed.dtype} of shape {tuple(packed.shape)}")
    if not 2 * packed.numel() - 1 <= n <= 2 * packed.numel() or n < 0:
        raise ConfigError(f"{packed.numel()} bytes hold {2 * packed.numel() - 1} or {2 * packed.numel()} "
                          f"codes, not {n}")
    nibbles = torch.stack([packed & 0xF, packed >> 4], dim=1).reshape(-1)[:n]  # (n,) uint8 in [0, 15]
    if not signed:
        return nibbles
    # 0..7 stay, 8..15 become -8..-1 (the nibble read as 4-bit two's complement); in int8 with no wider copy,
    # 4x faster than widening to int16 and choosing with `where` (a 128 x 512 weight: 0.18 ms against 0.75)
    return (nibbles.view(torch.int8) ^ 8) - 8
