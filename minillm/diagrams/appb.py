"""Appendix B's diagrams: inference efficiency and compression.

The figures: `B_absmax_zeropoint` (a skewed row of weights on int8 codes, symmetric
and asymmetric), `B_granularity` (one scale per tensor, per output row, per group,
and the weights one outlier spoils), `B_int4_packing` (two 4-bit codes a byte, low
nibble first), `B_kv_cache` (the bytes a token adds to the KV cache with MHA, GQA,
MQA and an int8 cache), `B_speculative` (one round of speculative decoding: four
guesses, two kept), `B_pruning` (zeros in place against smaller matrices) and
`B_distillation` (the two terms of the student's loss).

Every number drawn comes from the package: codes, scales and zero points from
`minillm.quantize.quantize_tensor` (the weights are a short hand-written row and a
small seeded random matrix with one outlier), bytes from `pack_int4` (and checked
with `unpack_int4`), KV-cache sizes from `minillm.memory.kv_cache_bytes` for the
book model's shape (`book_config("cpu")`) and the `llama2-7b` preset, the round of
speculative decoding from `minillm.speculative._verify` on hand-written draft and
target distributions over six words (its random draws from a seeded generator,
replayed to show them), the pruned matrices from `minillm.prune` (`_keep_largest`,
the ranking of `magnitude_masks`; `prune_neurons` and `prune_heads` on a tiny MLP
and attention layer) and the loss's weights from `DistillConfig`'s defaults.
Values computed by PyTorch are rounded before they are drawn.
"""

from __future__ import annotations

import dataclasses
import functools

import torch
from matplotlib import patches

from minillm.attention import AttentionConfig, CausalSelfAttention
from minillm.diagrams import diagram
from minillm.diagrams.kit import ACCENT, INK, MUTED, SERIES, STYLE, Box, Diagram, cell, pale
from minillm.distill import DistillConfig
from minillm.layers import GeluMLP
from minillm.memory import KV_FORMATS, kv_cache_bytes
from minillm.model import GPTConfig
from minillm.pretrained import book_config
from minillm.prune import _keep_largest, prune_heads, prune_neurons
from minillm.quantize import pack_int4, quantize_tensor, unpack_int4
from minillm.speculative import _verify

KEEP, DROP = SERIES[2], ACCENT  # kept (green) and rejected or removed (red), as appendix E's right and wrong
DRAFT, TARGET = SERIES[0], SERIES[1]  # the draft model's distribution q (blue), the target's p (orange)
PALE = "#f4f4f4"  # what is gone or unused (as `Diagram.grid` draws a masked cell)
#: A skewed row of weights: most of its range is on the positive side.
SKEWED = [-0.30, -0.12, 0.21, 0.34, 0.48, 0.66, 1.00]
#: The int4 packing example: a row of five weights (an odd count, so the last byte is padded).
FIVE = [0.21, -0.09, 0.30, 0.01, -0.17]


# ---------------------------------------------------------------------------
# Drawing helpers (as appendix C's and E's)
# ---------------------------------------------------------------------------


def _lines(d: Diagram, x: float, y: float, lines, color: str = MUTED, step: float = 0.2, size: float = 9,
           ha: str = "left", weight: str = "normal") -> None:  # fmt: skip
    """Lines of text from (x, y) downwards: captions and notes."""
    for k, line in enumerate(lines):
        d.text(x, y - step * k, line, size=size, color=color, ha=ha, weight=weight)


def _num(x: float, digits: int = 2) -> str:
    """−0.30 (a real minus sign)."""
    return f"{x:.{digits}f}".replace("-", "−")


def _int(n: int) -> str:
    """−38, 4,096 (a real minus sign, thousands separated)."""
    return f"{n:,}".replace("-", "−")


def _size(n: int) -> str:
    """Bytes as B, KiB, MiB or GiB (powers of 1,024), exact where it can be."""
    for unit, power in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 2**power:
            v = n / 2**power
            return f"{v:,.0f} {unit}" if v == int(v) else f"{v:,.1f} {unit}"
    return f"{n:,} B"


# ---------------------------------------------------------------------------
# Absmax and zero-point
# ---------------------------------------------------------------------------


@diagram("B_absmax_zeropoint")
def absmax_zeropoint() -> Diagram:
    """Skewed weights on int8: absmax spreads -127..127 over [-max|w|, max|w|], zero-point 0..255 over [min, max]."""
    w = torch.tensor(SKEWED)
    sym = quantize_tensor(w, 8, "absmax")
    asym = quantize_tensor(w, 8, "zeropoint")
    s_sym, s_asym, z = sym.scale.item(), asym.scale.item(), int(asym.zero.item())
    codes_sym, codes_asym = sym.codes.tolist(), asym.codes.tolist()
    lo, hi, big = min(SKEWED), max(SKEWED), max(abs(v) for v in SKEWED)
    assert codes_asym[0] == 0 and codes_asym[-1] == 255 and codes_sym[-1] == 127  # min -> 0, max -> the top code
    unused = min(codes_sym) - (-127)  # absmax codes below the smallest weight's
    d = Diagram(7.3, 4.75, title="int8 codes for a skewed row of weights: absmax and zero-point")
    x0, x1 = 0.55, 6.95

    def at(v: float) -> float:
        return x0 + (x1 - x0) * (v + big) / (2 * big)

    def panel(top: float, name: str, formula: str, codes, scale: float, zero: int, first: float, last: float,
              ends: tuple[int, int], notes) -> None:  # fmt: skip
        d.text(0.15, top, name, size=10, weight="bold", ha="left")
        d.text(7.15, top, formula, size=9, color=MUTED, ha="right")
        yf, yb, bh = top - 0.55, top - 1.05, 0.2
        d.line([(at(-big), yf), (at(big), yf)], color=INK, lw=0.9)
        for v in (-big, 0.0, big):
            d.line([(at(v), yf - 0.04), (at(v), yf + 0.04)], color=INK, lw=0.9)
        d.text(at(-big), yf + 0.19, _num(-big), size=9, color=MUTED)
        d.text(x0 - 0.1, yf, "w", size=10, ha="right", style="italic")
        d.text(x0 - 0.1, yb + bh / 2, "q", size=10, ha="right", style="italic")
        # the codes: a bar from the first code's value to the last's, the unused part hatched
        used_from = at((min(codes) - zero) * scale)
        d.ax.add_patch(patches.Rectangle((at(first), yb), at(last) - at(first), bh, fc=STYLE["tensor"][0],
                                         ec=STYLE["tensor"][1], lw=1.0))
        if used_from - at(first) > 0.05:
            d.ax.add_patch(patches.Rectangle((at(first), yb), used_from - at(first), bh, fc=pale(ACCENT, 0.85),
                                             ec=ACCENT, lw=1.0, hatch="///"))
        for v, q in zip(SKEWED, codes):
            x = at(v)
            d.circle(x, yf, 0.04, kind="tensor")
            d.text(x, yf + 0.19, _num(v), size=9)
            xq = at((q - zero) * scale)
            d.line([(x, yf - 0.05), (xq, yb + bh)], color="#9a9a9a", lw=0.7, dashed=True)
            d.line([(xq, yb), (xq, yb + bh)], color=STYLE["tensor"][1], lw=1.0)
            d.text(xq, yb - 0.15, _int(q), size=9)
        for q in ends:  # the code range's ends, where no weight sits
            if q not in codes:
                d.text(at((q - zero) * scale), yb - 0.15, _int(q), size=9, color=ACCENT if q < 0 else INK)
        # where w = 0 goes
        x = at(0.0)
        d.line([(x, yf - 0.05), (x, yb + bh)], color=SERIES[3], lw=1.0)
        d.text(x + 0.06, (yf + yb + bh) / 2 + 0.02, f"0 → {zero}", size=9, color=SERIES[3], ha="left")
        d.text(x, yb - 0.15, str(zero), size=9, color=SERIES[3])
        _lines(d, 0.55, yb - 0.42, notes, color=INK)

    panel(4.2, "absmax (symmetric): codes −127 … 127, int8", f"scale = max|w| / 127 = {_num(big)} / 127 = "
          f"{s_sym:.5f}", codes_sym, s_sym, 0, -big, big, (-127, 127),
          ("w ≈ q · scale; the codes are spread over [−max|w|, max|w|], symmetric around 0:",))
    d.text((at(-big) + at(min(codes_sym) * s_sym)) / 2, 4.2 - 1.05 + 0.42, "unused codes", size=9, color=ACCENT)
    d.text(0.55, 4.2 - 1.05 - 0.62, f"{unused} of 255 codes, −127 … {_int(min(codes_sym) - 1)}, stand for "
           f"[−{_num(big)}, {_num(lo)}), where no weight is", size=9, color=ACCENT, ha="left")
    panel(2.2, "zero-point (asymmetric): codes 0 … 255, uint8",
          f"scale = (max − min) / 255 = {_num(hi - lo)} / 255 = {s_asym:.5f}", codes_asym, s_asym, z, lo, hi,
          (0, 255),
          (f"z = round(−min / scale) = {z}, the code of w = 0; w ≈ (q − z) · scale. min → 0, max → 255:",))
    d.text(0.55, 2.2 - 1.05 - 0.62, f"every code lies in the row's range, so a step is {s_asym / s_sym:.2f} of "
           "absmax's", size=9, color=INK, ha="left")
    _lines(d, 0.15, 0.28, (f"rounding moves a weight by at most scale / 2: {s_sym / 2:.4f} with absmax, "
                           f"{s_asym / 2:.4f} with zero-point (quantize_tensor)",))
    return d


# ---------------------------------------------------------------------------
# Granularity
# ---------------------------------------------------------------------------


OUT, IN, GROUP = 4, 12, 4  # the granularity figure's matrix (out, in) and group size
OUTLIER = (1, 6, 1.5)  # its row, column and value


@functools.lru_cache(maxsize=1)
def _outlier_matrix() -> torch.Tensor:
    """A (4, 12) weight of small values (seeded, rounded to hundredths) with one outlier."""
    g = torch.Generator().manual_seed(0)
    normal = torch.randn(OUT, IN, generator=g, dtype=torch.float64)  # float64: no vectorized kernel, same on any CPU
    values = [[round(v * 0.1, 2) for v in row] for row in normal.tolist()]
    r, c, v = OUTLIER
    values[r][c] = v
    return torch.tensor(values)


@diagram("B_granularity")
def granularity() -> Diagram:
    """One int4 scale per tensor, per output row, per group of 4 inputs; the outlier spoils only its own scale."""
    w = _outlier_matrix()
    r0, c0, v0 = OUTLIER
    others = torch.ones(OUT, IN, dtype=torch.bool)
    others[r0, c0] = False
    settings = (("per tensor", "tensor", None, "one scale for the matrix", "the outlier sets every step"),
                ("per channel", "channel", None, "one scale per output row", "only its row gets coarse"),
                (f"per group, g = {GROUP}", "group", GROUP, f"one per {GROUP} inputs of a row",
                 f"only its {GROUP} weights"))
    d = Diagram(7.3, 4.55, title=f"One outlier (w = {v0:g}), three granularities: int4 absmax scales")
    c = 0.2
    mx, sx, sw, ex = 1.95, 4.65, 0.5, 6.55  # matrix, scales (cell width), error column
    d.text(mx + IN * c / 2, 4.0, f"weight (out, in) = ({OUT}, {IN})", size=9, color=MUTED)
    d.text(sx + 0.6, 4.0, "its scales", size=9, color=MUTED)
    d.text(ex, 4.08, "mean |w − ŵ|", size=9, color=MUTED)
    d.text(ex, 3.88, "of the others", size=9, color=MUTED)
    for k, (name, gran, group, says, spoils) in enumerate(settings):
        top = 3.6 - 1.17 * k
        y0 = top - OUT * c
        qt = quantize_tensor(w, 4, "absmax", gran, group)
        scale = [[round(v, 3) for v in row] for row in qt.scale.tolist()]
        errors = (w - qt.dequantize()).abs()[others].tolist()
        err = round(sum(errors) / len(errors), 6)  # summed in Python: the same on any CPU
        rows, groups = len(scale), len(scale[0])
        width = IN // groups
        spoiled = (0 if rows == 1 else r0, c0 // width)
        d.text(0.15, top - 0.02, name, size=10, weight="bold", ha="left")
        _lines(d, 0.15, top - 0.26, (says, f"scale {tuple(qt.scale.shape)}"), color=MUTED)
        d.text(0.15, top - 0.72, spoils, size=9, color=ACCENT, ha="left")
        for i in range(OUT):
            for j in range(IN):
                region = (0 if rows == 1 else i, j // width)
                hit = region == spoiled
                fill = ACCENT if (i, j) == (r0, c0) else pale(ACCENT, 0.75) if hit else STYLE["tensor"][0]
                cell(d, mx + j * c, y0 + (OUT - 1 - i) * c, c, c, fill=fill, edge="white", lw=1.0)
        # the scale regions' borders
        d.ax.add_patch(patches.Rectangle((mx, y0), IN * c, OUT * c, fc="none", ec=STYLE["tensor"][1], lw=1.4))
        if rows > 1:
            for i in range(1, OUT):
                d.line([(mx, y0 + i * c), (mx + IN * c, y0 + i * c)], color=STYLE["tensor"][1], lw=1.4)
        for g in range(1, groups):
            d.line([(mx + g * width * c, y0), (mx + g * width * c, y0 + OUT * c)], color=STYLE["tensor"][1], lw=1.4)
        # the scales, one cell each, beside the rows they serve
        sh = OUT * c / rows
        for i, row in enumerate(scale):
            for g, s in enumerate(row):
                hit = (i, g) == spoiled
                cell(d, sx + g * sw, y0 + (rows - 1 - i) * sh, sw, sh, f"{s:.3f}".lstrip("0"),
                     fill=pale(ACCENT, 0.75) if hit else STYLE["tensor"][0],
                     edge=ACCENT if hit else STYLE["tensor"][1], color=ACCENT if hit else INK)
        d.arrow((mx + IN * c + 0.05, y0 + OUT * c / 2), (sx - 0.05, y0 + OUT * c / 2), color="#9a9a9a", lw=0.8)
        d.text(ex, y0 + OUT * c / 2, f"{err:.3f}", size=10, weight="bold", color=INK)
    d.text(mx + IN * c / 2, 3.8, "←  in  →", size=9, color=MUTED)
    d.text(mx - 0.12, 3.6 - OUT * c / 2, "out", size=9, color=MUTED, rotation=90)
    _lines(d, 0.15, 0.22, (f"scale = max|w| / 7 in each region (thick borders): {v0:g} sets the red one's step, "
                           "weights near 0.1 the others'",), color=MUTED)
    return d


# ---------------------------------------------------------------------------
# int4 packing
# ---------------------------------------------------------------------------


@diagram("B_int4_packing")
def int4_packing() -> Diagram:
    """Five signed int4 codes -> their 4-bit two's complement -> three bytes, code 2i in the low nibble of byte i."""
    qt = quantize_tensor(torch.tensor(FIVE), 4, "absmax")
    codes = qt.codes  # int8 in [-7, 7]
    packed = pack_int4(codes).tolist()
    assert torch.equal(unpack_int4(torch.tensor(packed, dtype=torch.uint8), len(FIVE), signed=True), codes)
    values, scale = codes.tolist(), round(qt.scale.item(), 3)
    nibbles = [v & 0xF for v in values] + [0]  # the zero nibble that pads an odd count
    d = Diagram(7.3, 4.75, title="int4: two codes in one byte, low nibble first (pack_int4)")
    b = 0.18  # a bit's cell
    nw, inner, pitch = 4 * b, 0.16, 1.84  # a nibble; the gap within a pair; from one pair (and byte) to the next
    px = [1.8 + i * pitch for i in range(len(packed))]  # pair i, and byte i under it
    xs = [px[k // 2] + (k % 2) * (nw + inner) for k in range(len(nibbles))]  # code k's nibble
    bw = 8 * b
    bx = [x + (2 * nw + inner - bw) / 2 for x in px]
    yw, yc, yn, yb = 3.95, 3.45, 2.85, 1.55
    labels = ((yw, "w (float32)", "4 bytes each"), (yc, "code q, −7 … 7", f"round(w / {scale:g})"),
              (yn, "q & 0xF", "4-bit two's complement"), (yb, "bytes (uint8)", "pack_int4(q)"))
    for y, name, note in labels:
        d.text(0.15, y + 0.1, name, size=10, weight="bold", ha="left")
        d.text(0.15, y - 0.1, note, size=9, color=MUTED, ha="left")

    def color(k: int) -> str:
        return "#9a9a9a" if k >= len(values) else SERIES[0] if k % 2 == 0 else SERIES[3]

    for k, (n, x) in enumerate(zip(nibbles, xs)):
        if k < len(values):
            d.text(x + nw / 2, yw + 0.1, f"code {k}", size=9, color=color(k))
            d.text(x + nw / 2, yw - 0.12, _num(FIVE[k]), size=9)
            cell(d, x + 0.08, yc - 0.12, nw - 0.16, 0.26, _int(values[k]), fill=STYLE["tensor"][0], edge=color(k))
            d.arrow((x + nw / 2, yc - 0.13), (x + nw / 2, yn + b + 0.02), color="#9a9a9a", lw=0.8)
            d.text(x + nw / 2, yn - 0.14, f"= {n}", size=9, color=MUTED)
        else:
            d.text(x + nw / 2, yn + b + 0.15, "pad", size=9, color=MUTED)
        for j, bit in enumerate(f"{n:04b}"):
            cell(d, x + j * b, yn, b, b, bit, fill=pale(color(k), 0.82) if k < len(values) else PALE,
                 edge=color(k), hatch=None if k < len(values) else "///", color=INK if k < len(values) else MUTED)
    for i, (byte, x) in enumerate(zip(packed, bx)):
        for half, k in ((0, 2 * i + 1), (1, 2 * i)):  # bit 7 on the left: the high nibble (code 2i + 1) first
            nx = x + half * nw
            pad = k >= len(values)
            for j, bit in enumerate(f"{nibbles[k]:04b}"):
                cell(d, nx + j * b, yb, b, b, bit, fill=PALE if pad else pale(color(k), 0.82), edge=color(k),
                     hatch="///" if pad else None, color=MUTED if pad else INK)
            d.arrow((xs[k] + nw / 2, yn - 0.26), (nx + nw / 2, yb + b + 0.03), color=color(k), lw=1.0)
        d.ax.add_patch(patches.Rectangle((x, yb), bw, b, fc="none", ec=INK, lw=1.4))
        d.line([(x + nw, yb - 0.02), (x + nw, yb + b + 0.02)], color=INK, lw=1.4)
        d.text(x + nw / 2, yb - 0.14, "bits 7 … 4", size=9, color=MUTED)
        d.text(x + 3 * nw / 2, yb - 0.14, "bits 3 … 0", size=9, color=MUTED)
        d.text(x + bw / 2, yb - 0.4, f"byte {i} = 0x{byte:02X} = {byte}", size=9, weight="bold")
    _lines(d, 0.15, 0.78, ("code 2i goes to the low nibble of byte i (bits 3 … 0), code 2i + 1 to the high one:",
                           "    byte = q[2i] & 0xF | (q[2i+1] & 0xF) << 4.   unpack_int4: q[2i] = byte & 0xF, "
                           "q[2i+1] = byte >> 4",
                           "signed (absmax) codes: a nibble ≥ 8 is nibble − 16 "
                           f"({nibbles[1]:04b} = {nibbles[1]} → {_int(values[1])}); "
                           "zero-point's 0 … 15 go in as they are",
                           f"{len(values)} codes in {len(packed)} bytes (an odd count ends with a zero nibble), "
                           f"against {len(values)} as int8 and {4 * len(values)} as float32"),
           color=INK, step=0.21)
    return d


# ---------------------------------------------------------------------------
# The KV cache
# ---------------------------------------------------------------------------


@diagram("B_kv_cache")
def kv_cache() -> Diagram:
    """Per token and layer, K and V: n_kv_head vectors of head_dim numbers; MHA, GQA, MQA, and int8 with scales."""
    config = book_config("cpu").model
    h, dh, layers, context = config.n_head, config.head_dim, config.n_layer, config.context_length
    variants = (("MHA", h, "fp32"), ("GQA", h // 2, "fp32"), ("MQA", 1, "fp32"), ("MHA, int8 cache", h, "int8"))
    d = Diagram(7.3, 5.3, title="What one token adds to the KV cache (the book model's shape)")
    _lines(d, 3.65, 4.82, (f"{layers} layers; H = {h} query heads (q) of head_dim = {dh}. In each layer a token "
                           "leaves a key (K) and a value (V)", "vector for every key/value head; a bar's height is "
                           "its bytes"), ha="center")
    colw, x0 = 1.78, 0.15
    per_byte = 0.6 / (dh * 4)  # inches of bar height per byte (an fp32 vector is 0.6 in)
    bw, pitch = 0.26, 0.36
    yq, yk = 3.92, 3.5  # query heads, the top of the K bars
    for k, (name, kv, fmt) in enumerate(variants):
        x = x0 + k * colw
        cx = x + colw / 2
        cfg = dataclasses.replace(config, n_kv_head=kv)
        per_token = kv_cache_bytes(cfg, 1, 1, fmt)
        number, scale = dh * KV_FORMATS[fmt], 4 if fmt == "int8" else 0
        assert per_token == 2 * layers * kv * (number + scale)
        d.text(cx, 4.38, name, size=10, weight="bold", color=ACCENT if fmt == "int8" else INK)
        d.text(cx, 4.18, f"n_kv_head = {kv}, {fmt}", size=9, color=MUTED)
        # query heads, each joined to the key/value head its group shares
        qx = [cx + (i - (h - 1) / 2) * pitch for i in range(h)]
        group = h // kv
        kx = [sum(qx[g * group:(g + 1) * group]) / group for g in range(kv)]
        for i, q in enumerate(qx):
            d.line([(q, yq), (kx[i // group], yk)], color="#9a9a9a", lw=0.8)
            d.circle(q, yq, 0.07, kind="op")
        hs = max(scale * per_byte, 0.04) if scale else 0.0  # the 4-byte scale, drawn at least 0.04 in
        hk = number * per_byte + hs
        for label, ytop in (("K", yk), ("V", yk - hk - 0.2)):
            for g in range(kv):
                bx = kx[g] - bw / 2
                cell(d, bx, ytop - number * per_byte, bw, number * per_byte, fill=STYLE["tensor"][0],
                     edge=STYLE["tensor"][1])
                if scale:
                    cell(d, bx, ytop - hk, bw, hs, fill=STYLE["accent"][0], edge=STYLE["accent"][1])
            if k == 0:
                d.text(x + 0.02, ytop - hk / 2, label, size=10, weight="bold", ha="left")
            elif scale:
                d.text(kx[0] - bw / 2 - 0.07, ytop - hk / 2, label, size=9, color=MUTED, ha="right")
        if scale:
            _lines(d, cx, yk - 2 * hk - 0.4, ("int8 numbers, plus", "one fp32 scale a", "vector (yellow)"),
                   color=STYLE["accent"][1], ha="center")
        yt = yk - 2 * 0.6 - 0.2 - 0.3
        unit = f"({dh} + 4) B" if scale else f"{dh} × {KV_FORMATS[fmt]} B"
        _lines(d, cx, yt, (f"2 × {kv} × {unit}", f"= {_int(per_token // layers)} B a layer",
                           f"× {layers} layers"), color=MUTED, ha="center")
        d.text(cx, yt - 0.66, f"{_int(per_token)} B a token", size=10, weight="bold",
               color=ACCENT if fmt == "int8" else INK)
        d.text(cx, yt - 0.88, f"{_size(per_token * context)} for {context} tokens", size=9, color=MUTED)
    d.text(x0 + 0.02, yq, "q", size=10, weight="bold", ha="left")
    llama = GPTConfig.from_preset("llama2-7b")
    big = kv_cache_bytes(llama, 1, None, "bf16")
    _lines(d, 0.15, 0.5, ("kv_cache_bytes = batch × seq_len × 2 × n_layer × n_kv_head × (head_dim × bytes + 4 "
                          "if int8)",
                          f"llama2-7b ({llama.n_layer} layers, {llama.n_head} heads of {llama.head_dim}, bf16): "
                          f"{_size(big // llama.context_length)} a token, {_size(big)} for its "
                          f"{llama.context_length:,}-token context, per sequence"),
           color=INK, step=0.22)
    return d


# ---------------------------------------------------------------------------
# Speculative decoding
# ---------------------------------------------------------------------------


WORDS = ("the", "cat", "sat", "on", "a", "mat")  # the round's vocabulary
CONTEXT = ("the", "cat")
GUESSES = ("sat", "on", "a", "mat")  # what the draft proposes, one call each
#: The draft's next-token distributions q_1 .. q_4 (over WORDS) and the target's p_1 .. p_5.
Q = ((0.05, 0.05, 0.60, 0.10, 0.10, 0.10), (0.10, 0.05, 0.05, 0.50, 0.20, 0.10),
     (0.20, 0.02, 0.03, 0.05, 0.60, 0.10), (0.05, 0.05, 0.05, 0.05, 0.10, 0.70))
P = ((0.05, 0.02, 0.75, 0.08, 0.05, 0.05), (0.15, 0.05, 0.05, 0.40, 0.30, 0.05),
     (0.60, 0.02, 0.03, 0.10, 0.15, 0.10), (0.10, 0.05, 0.05, 0.05, 0.05, 0.70),
     (0.40, 0.05, 0.05, 0.30, 0.10, 0.10))
SEED = 1  # the generator of the round's draws


@functools.lru_cache(maxsize=1)
def _round() -> dict:
    """One round of `_verify` (sampling, temperature 1): kept guesses, the token it draws, and its uniform draws."""
    guesses = torch.tensor([WORDS.index(g) for g in GUESSES])
    q, p = torch.tensor(Q, dtype=torch.float64), torch.tensor(P, dtype=torch.float64)
    kept, token = _verify(guesses, q, p.log(), (1.0, None, None), torch.Generator().manual_seed(SEED))
    replay = torch.Generator().manual_seed(SEED)  # the same draws, in the same order, to show them
    draws = [round(torch.rand((), generator=replay, dtype=torch.float32).item(), 2) for _ in range(kept + 1)]
    return {"kept": int(kept), "token": WORDS[int(token)], "u": draws}


@diagram("B_speculative")
def speculative() -> Diagram:
    """k = 4 guesses by the draft, one target pass scores 5 positions; keep with min(1, p/q); residual on rejection."""
    k = len(GUESSES)
    rnd = _round()
    kept, token, u = rnd["kept"], rnd["token"], rnd["u"]
    assert kept == 2 and token == "the"
    ratios = [min(1.0, P[i][WORDS.index(g)] / Q[i][WORDS.index(g)]) for i, g in enumerate(GUESSES)]
    assert all(a < r for a, r in zip(u[:kept], ratios)) and u[kept] >= ratios[kept]
    d = Diagram(7.3, 5.65, title=f"One round of speculative decoding, k = {k}: two guesses kept")
    tw, th = 0.7, 0.3
    cols = [1.95 + i * 0.92 for i in range(k + 1)]  # guess i's column (and the bonus position's)
    right = cols[-1] + tw
    # 1. the draft's guesses
    d.text(0.15, 5.05, f"1. the draft (a small model) writes k = {k} guesses, one call each: d_i is drawn from its "
           "q_i", size=9, color=DRAFT, ha="left", weight="bold")
    yt = 4.3
    for j, word in enumerate(CONTEXT):  # the sequence so far
        cell(d, 0.15 + j * (tw + 0.05), yt, tw, th, word, fill=STYLE["op"][0], edge=STYLE["op"][1])
    d.text(0.15 + tw + 0.025, yt + th + 0.15, "the text so far", size=9, color=MUTED)
    for i, (x, g) in enumerate(zip(cols, GUESSES)):
        cell(d, x, yt, tw, th, g, fill=STYLE["tensor"][0], edge=STYLE["tensor"][1])
        d.text(x + tw / 2, yt + th + 0.15, f"d{i + 1}", size=9, color=DRAFT)
        if i:
            d.arrow((cols[i - 1] + tw / 2 + 0.12, yt + th + 0.05), (x + tw / 2 - 0.12, yt + th + 0.05),
                    curve=-0.45, color=DRAFT, lw=0.9)
    cell(d, cols[k], yt, tw, th, "?", fill="white", edge="#9a9a9a")
    d.text(cols[k] + tw / 2, yt + th + 0.15, "bonus", size=9, color=MUTED)
    # 2. the target's single pass
    yp = 3.6
    d.box(0.15, yp, right - 0.15, 0.4, f"2. the target (the large model): ONE forward pass over all {len(CONTEXT) + k} "
          f"tokens → p_1 … p_{k + 1}", kind="layer", size=9)
    inputs = [0.15 + j * (tw + 0.05) for j in range(len(CONTEXT))] + cols[:k]  # what the target reads
    for x in inputs:
        d.arrow((x + tw / 2, yt), (x + tw / 2, yp + 0.4), color="#9a9a9a", lw=0.8)
    rows = (("q_i(d_i)", "draft", [f"{Q[i][WORDS.index(g)]:.2f}" for i, g in enumerate(GUESSES)]),
            ("p_i(d_i)", "target", [f"{P[i][WORDS.index(g)]:.2f}" for i, g in enumerate(GUESSES)]),
            ("min(1, p / q)", "ratio", [f"{r:.2f}" for r in ratios]),
            ("u ~ U(0, 1)", "a draw", [f"{v:.2f}" for v in u] + ["–"] * (k - len(u))))
    for r, (name, note, values) in enumerate(rows):
        y = 3.3 - 0.25 * r
        d.text(cols[0] - 0.15, y, name, size=9, ha="right")
        d.text(0.15, y, note, size=9, color=MUTED, ha="left")
        for i, v in enumerate(values):
            d.text(cols[i] + tw / 2, y, v, size=9, color="#9a9a9a" if i > kept else INK)
    d.text(cols[k] + tw / 2, 3.3, "from p_5 only", size=9, color=MUTED)
    d.text(cols[k] + tw / 2, 3.05, "if all k kept", size=9, color=MUTED)
    yv = 3.3 - 0.25 * 4 - 0.08
    d.text(0.15, yv, "3. keep if u < ratio", size=9, ha="left", weight="bold")
    for i in range(k):
        text, color = ("✓ kept", KEEP) if i < kept else ("✗ rejected", DROP) if i == kept else \
            ("dropped", "#9a9a9a")
        d.text(cols[i] + tw / 2, yv, text, size=9, color=color,
               weight="bold" if i <= kept else "normal")
    d.line([(0.15, 1.88), (7.15, 1.88)], color="#c8c8c8", lw=0.8, dashed=True)
    # the new text
    yo = 0.95
    d.text(0.15, 1.6, "4. the round's output", size=10, weight="bold", ha="left")
    x, ow = 0.15, 0.52
    out = [(w, STYLE["op"][0], STYLE["op"][1]) for w in CONTEXT] + \
        [(g, pale(KEEP, 0.8), KEEP) for g in GUESSES[:kept]] + [(token, STYLE["layer"][0], STYLE["layer"][1])]
    for w, fill, edge in out:
        cell(d, x, yo, ow, th, w, fill=fill, edge=edge, lw=1.3)
        x += ow + 0.04
    _lines(d, 0.15, yo - 0.22, (f"{kept} kept guesses + 1 token of the", f"target (orange): {kept + 1} new tokens",
                                f"for 1 target call and {k} draft calls"), color=INK)
    # the residual at the rejected position
    i = kept
    res = [max(0.0, p - q) for p, q in zip(P[i], Q[i])]
    total = sum(res)
    ox, oy, bh, slot = 3.35, 0.5, 0.8, 0.62
    d.text(ox, 1.6, f"d{i + 1} rejected: draw from max(0, p_{i + 1} − q_{i + 1})", size=10, weight="bold",
           ha="left")
    for j, word in enumerate(WORDS):
        x = ox + j * slot
        for dx, v, color, hatch in ((0.05, Q[i][j], DRAFT, None), (0.22, P[i][j], TARGET, None),
                                    (0.39, res[j] / total, DROP, "///")):
            if v > 0:
                d.ax.add_patch(patches.Rectangle((x + dx, oy), 0.16, bh * v, fc=pale(color, 0.55), ec=color,
                                                 lw=0.8, hatch=hatch))
        d.text(x + 0.3, oy - 0.14, word, size=9, color=DROP if word == GUESSES[i] else INK,
               weight="bold" if word == token else "normal")
    d.line([(ox, oy), (ox + len(WORDS) * slot, oy)], color=INK, lw=0.9)
    for n, (name, color) in enumerate(((f"q_{i + 1}: draft", DRAFT), (f"p_{i + 1}: target", TARGET),
                                       ("residual", DROP))):
        lx = 4.35 + n * 0.98
        cell(d, lx, 1.3, 0.16, 0.14, fill=pale(color, 0.55), edge=color, hatch="///" if n == 2 else None)
        d.text(lx + 0.22, 1.37, name, size=9, color=color, ha="left")
    d.text(3.65, 0.12, f"drew “{token}” (multinomial normalizes). Kept guesses give min(p, q), the residual "
           "max(0, p − q): in all, p", size=9, color=MUTED)
    return d


# ---------------------------------------------------------------------------
# Pruning
# ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _pruned() -> dict:
    """A (6, 8) matrix with its 50% smallest |w| masked; a tiny MLP and attention layer with units removed."""
    g = torch.Generator().manual_seed(1)
    normal = torch.randn(6, 8, generator=g, dtype=torch.float64)  # float64: no vectorized kernel, same on any CPU
    w = torch.tensor([[round(v, 2) for v in row] for row in normal.tolist()])
    keep = _keep_largest(w.abs().flatten(), 0.5).view_as(w)
    ranked = sorted(w.abs().flatten().tolist())
    assert ranked[w.numel() // 2 - 1] < ranked[w.numel() // 2]  # no tie at the threshold: topk's choice is unique
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        mlp = GeluMLP(3, 6)
        attn = CausalSelfAttention(AttentionConfig(d_model=6, n_head=3, context_length=8))
    neurons = [0, 2, 3, 5]
    heads = [0, 2]
    small_mlp, small_attn = prune_neurons(mlp, neurons), prune_heads(attn, heads)
    return {"w": [[abs(v) for v in row] for row in w.tolist()], "keep": keep.tolist(), "neurons": neurons,
            "heads": heads, "fc": (tuple(mlp.fc.weight.shape), tuple(small_mlp.fc.weight.shape)),
            "proj": (tuple(mlp.proj.weight.shape), tuple(small_mlp.proj.weight.shape)),
            "qkv": (tuple(attn.qkv.weight.shape), tuple(small_attn.qkv.weight.shape)),
            "aproj": (tuple(attn.proj.weight.shape), tuple(small_attn.proj.weight.shape)),
            "head_dim": attn.head_dim, "n_head": attn.n_head}


def _shape(s: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(n) for n in s) + ")"


@diagram("B_pruning")
def pruning() -> Diagram:
    """Magnitude pruning zeroes scattered weights (same shape); structured pruning removes neurons and heads."""
    ex = _pruned()
    w, keep = ex["w"], ex["keep"]
    zeros = sum(not k for row in keep for k in row)
    total = len(w) * len(w[0])
    d = Diagram(7.3, 5.75, title="Pruning: zeros in place, or whole neurons and heads removed")
    c, hc = 0.16, 0.08  # a cell; attention's (qkv has 3 H D rows)
    xb, xa, xn = 2.25, 4.95, 6.3  # before, after, notes
    arrow_from, arrow_to = 4.05, 4.8

    def matrix(x: float, top: float, rows: int, cols: int, gone_rows=(), gone_cols=()) -> Box:
        """rows x cols cells hanging from (x, top); removed rows/columns hatched red."""
        y = top - rows * c
        for i in range(rows):
            for j in range(cols):
                gone = i in gone_rows or j in gone_cols
                cell(d, x + j * c, y + (rows - 1 - i) * c, c, c, fill=pale(DROP, 0.8) if gone else STYLE["tensor"][0],
                     edge=DROP if gone else "white", lw=0.6 if gone else 1.0, hatch="///" if gone else None)
        d.ax.add_patch(patches.Rectangle((x, y), cols * c, rows * c, fc="none", ec=MUTED, lw=0.8))
        return Box(x, y, cols * c, rows * c)

    def section(top: float, name: str, notes, call: str, mid: float) -> None:
        d.text(0.15, top, name, size=10, weight="bold", ha="left")
        _lines(d, 0.15, top - 0.25, notes, color=MUTED)
        d.arrow((arrow_from, mid), (arrow_to, mid))
        d.text((arrow_from + arrow_to) / 2, mid + 0.14, call, size=9, color=MUTED)

    # unstructured
    top = 5.1
    vmax = max(max(row) for row in w) * 1.2
    before = d.grid(xb, top - 0.2 - len(w) * c, w, cell=c, vmin=0, vmax=vmax)
    d.text(before.center[0], top - 0.08, f"W {_shape((len(w), len(w[0])))}", size=9, color=MUTED)
    section(top, "unstructured (magnitude)", (f"zero the {zeros} of {total} smallest |w|;",
                                              "the shape stays: a dense", "matmul costs the same"),
            "magnitude_masks", before.center[1])
    d.text((arrow_from + arrow_to) / 2, before.center[1] - 0.16, "apply_masks", size=9, color=MUTED)
    after = d.grid(xa, before.y, w, cell=c, vmin=0, vmax=vmax, mask=[[not k for k in row] for row in keep])
    d.text(after.center[0], top - 0.08, f"W {_shape((len(w), len(w[0])))}", size=9, color=MUTED)
    _lines(d, xn + 0.15, before.center[1] + 0.3, ("grey: zeros,", "still stored;", "sparsity", f"{zeros / total:.2f}"))
    d.line([(0.15, 3.78), (7.15, 3.78)], color="#c8c8c8", lw=0.8, dashed=True)
    # structured: MLP neurons
    top = 3.55
    (fc0, fc1), (pr0, pr1) = ex["fc"], ex["proj"]
    d_ff, width = fc0
    gone = [n for n in range(d_ff) if n not in ex["neurons"]]
    n = len(ex["neurons"])
    fc = matrix(xb, top - 0.2, d_ff, width, gone_rows=gone)
    pr = matrix(xb + width * c + 0.25, top - 0.2, width, d_ff, gone_cols=gone)
    for box, label in ((fc, f"fc {_shape(fc0)}"), (pr, f"proj {_shape(pr0)}")):
        d.text(box.center[0], top - 0.08, label, size=9, color=MUTED)
    section(top, "structured: MLP", (f"neurons {' and '.join(map(str, gone))} go: their", "rows of fc (up) "
            "and", "columns of proj (down)"), "prune_neurons", fc.y + 0.2)
    fc = matrix(xa, top - 0.2, n, width)
    pr = matrix(xa + width * c + 0.25, top - 0.2, width, n)
    for box, label in ((fc, f"fc {_shape(fc1)}"), (pr, f"proj {_shape(pr1)}")):
        d.text(box.center[0], top - 0.08, label, size=9, color=KEEP)
    _lines(d, xn + 0.15, fc.center[1] + 0.3, (f"d_ff {d_ff} → {n}:", "smaller", "matrices"), color=KEEP)
    d.line([(0.15, 2.38), (7.15, 2.38)], color="#c8c8c8", lw=0.8, dashed=True)
    # structured: attention heads
    top = 2.15
    (q0, cw), (q1, _) = ex["qkv"]
    (_, ap0), (_, ap1) = ex["aproj"]
    hd, h = ex["head_dim"], ex["n_head"]
    gone_h = [j for j in range(h) if j not in ex["heads"]]
    kept_h = len(ex["heads"])

    def heads(x: float, names: list[int], removed: list[int], transpose: bool) -> Box:
        """qkv (3 H D, C) as q, k, v bands of D rows per head, or proj (C, H D) as bands of D columns; a colour
        per head, removed heads hatched red. Drawn band by band, not cell by cell (hc-inch cells)."""
        units = len(names) * hd
        rows, cols = (cw, units) if transpose else (3 * units, cw)
        y = top - 0.2 - rows * hc
        for part in range(1 if transpose else 3):
            for u, name in enumerate(names):
                gone = name in removed
                fill, edge = pale(SERIES[name], 0.55), DROP if gone else "white"
                if transpose:
                    bx, by, bw_, bh_ = x + u * hd * hc, y, hd * hc, rows * hc
                else:
                    bx, by, bw_, bh_ = x, y + (rows - (part * units + (u + 1) * hd)) * hc, cols * hc, hd * hc
                cell(d, bx, by, bw_, bh_, fill=fill, edge=edge, lw=0.6 if gone else 1.0,
                     hatch="///" if gone else None)
        d.ax.add_patch(patches.Rectangle((x, y), cols * hc, rows * hc, fc="none", ec=MUTED, lw=0.8))
        return Box(x, y, cols * hc, rows * hc)

    for x, names, removed, color in ((xb, list(range(h)), gone_h, MUTED), (xa, ex["heads"], [], KEEP)):
        qkv = heads(x, names, removed, False)
        proj = heads(x + cw * hc + 0.35, names, removed, True)
        for part, name in enumerate("qkv"):
            d.text(x - 0.08, qkv.y + qkv.h - (part + 0.5) * qkv.h / 3, name, size=9, color=MUTED, ha="right")
        d.text(qkv.center[0], top - 0.08, f"qkv {_shape((3 * len(names) * hd, cw))}", size=9, color=color)
        d.text(proj.center[0] + 0.1, top - 0.08, f"proj {_shape((cw, len(names) * hd))}", size=9, color=color)
        assert (3 * len(names) * hd, len(names) * hd) in ((q0, ap0), (q1, ap1))
    section(top, "structured: heads", (f"head {', '.join(map(str, gone_h))} goes: its q, k",
                                        "and v rows of qkv, its", "columns of proj"),
            "prune_heads", top - 0.2 - q0 * hc / 2)
    _lines(d, xn + 0.15, top - 0.2 - q0 * hc / 2 + 0.3, (f"H {h} → {kept_h};", "each keeps", f"D = {hd}"),
           color=KEEP)
    for j in range(h):
        cell(d, 0.15 + j * 0.75, 0.3, 0.16, 0.14, fill=pale(SERIES[j], 0.55), edge="white")
        d.text(0.37 + j * 0.75, 0.37, f"head {j}", size=9, color=MUTED, ha="left")
    d.text(2.4, 0.37, f"(H = {h}, D = {hd}, C = {cw}). Red hatched: removed; prune_structured", size=9, color=MUTED,
           ha="left")
    d.text(2.4, 0.17, "returns a GPT of a smaller GPTConfig (n_head, d_ff; d_head keeps D)", size=9, color=MUTED,
           ha="left")
    return d


# ---------------------------------------------------------------------------
# Distillation
# ---------------------------------------------------------------------------


@diagram("B_distillation")
def distillation() -> Diagram:
    """Teacher and student read the same tokens; soft KL (x T^2 alpha) + hard cross-entropy (x (1 - alpha))."""
    config = DistillConfig()
    t, alpha = config.temperature, config.alpha
    d = Diagram(7.3, 4.8, title="Distillation: the student learns from the teacher's whole distribution")
    _lines(d, 0.15, 4.35, (f"distillation_loss at DistillConfig's defaults, T = {t:g} and α = {alpha:g}. The "
                           "temperature T softens both distributions;",
                           "T² keeps the soft term's gradients on the hard term's scale; α = 0 is plain next-token "
                           "training"), step=0.2)
    h = 0.5
    yt, ys = 3.2, 1.75  # the teacher's row, the student's
    x = d.box(0.15, 2.47, 0.95, 0.5, "tokens x", kind="data", size=9, shape="(B, T)")
    teacher = d.box(1.4, yt, 1.25, h, "teacher\n(frozen, eval)", kind="op", size=9)
    student = d.box(1.4, ys, 1.25, h, "student\n(trained)", kind="layer", size=9)
    d.arrow((x.x + x.w, x.center[1] + 0.1), teacher.left)
    d.arrow((x.x + x.w, x.center[1] - 0.1), student.left)
    d.text(teacher.center[0], yt + h + 0.14, "no gradients", size=9, color=MUTED)
    zt = d.box(2.95, yt, 0.85, h, "z_t", kind="tensor", size=10, shape="(B, T, V)")
    zs = d.box(2.95, ys, 0.85, h, "z_s", kind="tensor", size=10, shape="(B, T, V)")
    d.arrow(teacher.right, zt.left)
    d.arrow(student.right, zs.left)
    soft_t = d.box(4.1, yt, 1.3, h, "softmax(z_t / T):\nsoft targets", kind="op", size=9)
    soft_s = d.box(4.1, 2.45, 1.3, h, "log_softmax\n(z_s / T)", kind="op", size=9)
    d.arrow(zt.right, soft_t.left)
    d.arrow((zs.x + zs.w, zs.center[1] + 0.12), soft_s.left)
    kl = d.box(5.7, 2.75, 1.45, 0.7, f"KL(teacher ‖ student)\n× T² × α = × {t * t * alpha:g}", kind="op", size=9)
    d.arrow(soft_t.right, (kl.x, soft_t.center[1]))
    d.arrow(soft_s.right, (kl.x, soft_s.center[1]))
    y = d.box(2.95, 0.75, 0.85, h, "y: next\ntokens", kind="data", size=9)
    d.text(y.center[0] - 0.6, y.center[1], "(B, T)", size=9, color=MUTED)
    ce = d.box(4.1, 0.75, 1.3, h, "cross-entropy\n(z_s, y)", kind="op", size=9)
    d.arrow((zs.x + zs.w, zs.center[1] - 0.12), (ce.x, ce.center[1] + 0.12))
    d.arrow(y.right, (ce.x, ce.center[1] - 0.1))
    mix = d.box(5.7, 0.75, 1.3, h, f"× (1 − α) = × {1 - alpha:g}", kind="op", size=9)
    d.arrow(ce.right, mix.left)
    plus = d.circle(6.0, 2.0, 0.16, "+", kind="op", size=11)
    d.arrow((6.0, kl.y), (6.0, plus.y + plus.h))
    d.arrow((6.0, mix.y + mix.h), (6.0, plus.y))
    loss = d.box(6.45, 1.75, 0.7, h, "loss", kind="op", size=10, edge=ACCENT)
    d.arrow(plus.right, loss.left)
    # backward: only into the student
    yg = 0.38
    d.line([loss.right, (7.22, loss.right[1]), (7.22, yg), (0.45, yg), (0.45, ys + 0.1)], color=ACCENT, lw=1.1,
           dashed=True)
    d.arrow((0.45, ys + 0.1), (student.x, ys + 0.1), color=ACCENT, dashed=True, lw=1.1)
    d.text(4.1, yg - 0.17, "backward: the gradients reach the student only (the teacher runs under torch.no_grad)",
           size=9, color=ACCENT)
    _lines(d, 0.65, 1.4, ("soft targets say which", "other tokens were", "plausible, and how"), color=MUTED)
    return d
