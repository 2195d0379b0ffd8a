"""Chapter 06's diagrams: where training memory goes, and how the parallelisms split it.

The numbers drawn come from the package: bytes per parameter from `minillm.memory.estimate_memory`,
bit layouts from `torch.finfo`, the pipeline bubble from a drawn schedule (checked against the
formula), and the values a block keeps per token from `minillm.memory.block_activation_bytes`.
"""

from __future__ import annotations

import math

import torch

from minillm.diagrams import diagram
from minillm.diagrams.kit import ACCENT, INK, MUTED, SERIES, Diagram
from minillm.memory import block_activation_bytes, count_parameters, estimate_memory
from minillm.model import GPTConfig

RANKS = 4  # the devices drawn in the partition diagrams
EMPTY = "#ffffff"


def _per_param(**kwargs) -> dict[str, float]:
    """Bytes per parameter and per rank (weights, gradients, optimizer, states) of GPT-2 small's training."""
    config = GPTConfig.from_preset("gpt2")
    n = count_parameters(config)
    est = estimate_memory(config, **kwargs)
    return {"params": est.params / n, "grads": est.grads / n, "optimizer": est.optimizer / n, "states": est.states / n}


def _fmt(b: float) -> str:
    return f"{b:.0f}" if abs(b - round(b)) < 0.01 else f"{b:.1f}"


def _shards(d: Diagram, x: float, y: float, w: float, h: float, held, color: str | None = None,
            label: str | None = None, size: float = 9) -> None:
    """A tensor cut into RANKS shards: shard i is filled (with `color`, default device i's) where `held[i]`."""
    from matplotlib import patches

    cell = w / len(held)
    for i, keep in enumerate(held):
        face = (color or SERIES[i]) if keep else EMPTY
        d.ax.add_patch(patches.Rectangle((x + i * cell, y), cell, h, fc=face, ec=MUTED, lw=0.7,
                                         alpha=0.85 if keep else 1.0))
    if label:
        d.text(x - 0.06, y + h / 2, label, size=size, ha="right", color=INK)


@diagram("06_bytes_per_param")
def bytes_per_param() -> Diagram:
    """The 16 bytes per parameter of AdamW training, in the package's autocast setup and in classic mixed precision."""
    fp32, bf16 = torch.finfo(torch.float32).bits // 8, torch.finfo(torch.bfloat16).bits // 8
    ours = _per_param(strategy="single", precision="bf16")
    classic = _per_param(strategy="single", precision="bf16", param_bytes=bf16, grad_bytes=bf16,
                         optimizer_bytes=3 * fp32)  # the fp32 master weights, Adam's m and v  # fmt: skip
    assert ours["params"] == ours["grads"] == ours["optimizer"] / 2 == fp32
    unit = 0.41  # inches per byte
    x0 = 0.3
    d = Diagram(7.3, 3.45, title="Where the bytes go, per parameter (training with AdamW)")

    def part(name: str, kind: str, nbytes: float, fmt: str = "fp32") -> tuple[str, float, str]:
        return (f"{name}\n{fmt} · {_fmt(nbytes)} B", nbytes, kind)

    rows = [
        (2.1, "minillm: autocast, fp32 weights (precision=\"bf16\")",
         [part("weight", "layer", ours["params"]), part("gradient", "tensor", ours["grads"]),
          part("Adam m", "op", ours["optimizer"] / 2), part("Adam v", "op", ours["optimizer"] / 2)], ours["states"]),
        (0.6, "classic mixed precision (ZeRO paper): bf16 weights + fp32 master",
         [part("weight", "layer", classic["params"], "bf16"), part("grad", "tensor", classic["grads"], "bf16"),
          part("master\nweight", "accent", fp32), part("Adam m", "op", fp32),
          part("Adam v", "op", classic["optimizer"] - 2 * fp32)], classic["states"]),
    ]
    for y, title, parts, total in rows:
        d.text(x0, y + 0.78, title, size=10, ha="left", weight="bold")
        x = x0
        for label, nbytes, kind in parts:
            d.box(x, y, nbytes * unit, 0.6, label, kind=kind, size=9)
            x += nbytes * unit
        assert abs((x - x0) / unit - total) < 1e-9
        d.brace(x0, x, y - 0.08, f"{_fmt(total)} bytes per parameter, before any activation")
    d.text(x0, 1.63, f"+ {bf16} B per parameter: the bf16 weight copies autocast makes (counted with the "
           "activations)", size=9, ha="left", color=MUTED)
    return d


@diagram("06_float_formats")
def float_formats() -> Diagram:
    """fp32, bf16 and fp16 bit by bit: sign, exponent (range) and mantissa (precision), from `torch.finfo`."""
    bit = 0.19
    x0 = 0.95
    d = Diagram(7.3, 3.2, title="Number formats, bit by bit")
    colors = {"sign": "#d9d9d9", "exponent": "#9cc3ea", "mantissa": "#f6c38f"}
    y = 2.25
    for dtype, name in ((torch.float32, "fp32"), (torch.bfloat16, "bf16"), (torch.float16, "fp16")):
        f = torch.finfo(dtype)
        mantissa = round(-math.log2(f.eps))
        exponent = f.bits - 1 - mantissa
        fields = [("sign", 1), ("exponent", exponent), ("mantissa", mantissa)]
        x = x0
        for field, count in fields:
            for _ in range(count):
                d.box(x, y, bit, 0.3, kind="tensor", fill=colors[field], edge="#8a8a8a", lw=0.6)
                x += bit
        d.text(x0 - 0.12, y + 0.15, name, size=11, ha="right", weight="bold")
        info = f"{exponent} exponent bits: max {f.max:.1e};   {mantissa} mantissa bits: eps {f.eps:.1e}"
        d.text(x0, y - 0.17, info, size=9, ha="left", color=MUTED)
        if name != "fp32":
            d.text(x + 0.12, y + 0.15, f"{f.bits} bits", size=9, ha="left", color=MUTED)
        y -= 0.72
    # bf16 is fp32 with the 16 low mantissa bits dropped: the cut, drawn on fp32
    cut = x0 + 16 * bit
    d.line([(cut, 2.2), (cut, 2.6)], color=ACCENT, lw=1.5)
    d.text(cut + 0.05, 2.7, "bf16 keeps the bits left of this line", size=9, ha="left", color=ACCENT)
    for i, (field, color) in enumerate(colors.items()):
        d.box(x0 + i * 1.7, 0.12, 0.25, 0.2, kind="tensor", fill=color, edge="#8a8a8a", lw=0.6)
        d.text(x0 + i * 1.7 + 0.33, 0.22, field, size=9, ha="left")
    return d


@diagram("06_ddp")
def ddp() -> Diagram:
    """Data parallelism: every rank holds a whole replica, computes gradients on its shard, then all-reduce."""
    per = _per_param(strategy="ddp", world_size=RANKS)
    d = Diagram(7.3, 3.5, title=f"Data parallelism (DDP) on {RANKS} ranks: full replicas, one all-reduce")
    col, gap, x0 = 1.6, 0.17, 0.3
    reduce_y = 0.72
    for r in range(RANKS):
        x = x0 + r * (col + gap)
        d.box(x - 0.06, 0.42, col + 0.12, 2.65, kind="note", edge=SERIES[r], lw=1.4)
        d.text(x + col / 2, 2.9, f"rank {r}", size=10, color=SERIES[r], weight="bold")
        data = d.box(x + 0.1, 2.38, col - 0.2, 0.36, f"batch rows {r + 1}/{RANKS}", kind="data", size=9)
        model = d.box(x + 0.1, 1.72, col - 0.2, 0.46, "whole model\n+ AdamW state", kind="layer", size=9)
        d.arrow(data.bottom, model.top)
        grad = d.box(x + 0.3, 1.2, col - 0.6, 0.3, f"grads g{r}", kind="tensor", size=9)
        d.arrow(model.bottom, grad.top)
        d.arrow(grad.bottom, (grad.bottom[0], reduce_y + 0.2))
    bar = d.box(x0 + 0.1, reduce_y - 0.2, RANKS * (col + gap) - gap - 0.2, 0.4,
                "all-reduce: every rank gets (g0 + g1 + g2 + g3) / 4, then takes the same AdamW step",
                kind="op", size=9)
    assert abs(bar.y + bar.h - (reduce_y + 0.2)) < 1e-9
    d.text(3.65, 0.2, f"each rank holds {_fmt(per['states'])} bytes per parameter (weights {_fmt(per['params'])}, "
           f"gradients {_fmt(per['grads'])}, AdamW {_fmt(per['optimizer'])}): nothing is divided by {RANKS}",
           size=9, color=ACCENT)
    return d


@diagram("06_zero_stages")
def zero_stages() -> Diagram:
    """ZeRO-1/2/3 (FSDP): which shards of weights, gradients and AdamW state each of 4 ranks holds."""
    d = Diagram(7.4, 4.6, title=f"What each of {RANKS} ranks holds: DDP and the ZeRO stages")
    x_lab, x0, cell, gap = 0.1, 1.55, 1.13, 0.17
    heights = {"params": 0.14, "grads": 0.14, "optimizer": 0.28}  # drawn in proportion to 4, 4 and 8 bytes
    names = {"params": "weights", "grads": "grads", "optimizer": "AdamW"}
    stages = [("DDP", "ddp", 0), ("ZeRO-1", "zero1", 1), ("ZeRO-2", "zero2", 2), ("ZeRO-3\n= FSDP", "zero3", 3)]
    x_right = x0 + RANKS * (cell + gap) - 0.05
    d.text(x_right + 0.3, 4.05, "B/param\nper rank", size=9, color=MUTED)
    for r in range(RANKS):
        d.text(x0 + r * (cell + gap) + cell / 2, 4.05, f"rank {r}", size=10, color=SERIES[r], weight="bold")
    y = 3.2
    for label, strategy, stage in stages:
        per = _per_param(strategy=strategy, world_size=RANKS)
        sharded = {"params": stage >= 3, "grads": stage >= 2, "optimizer": stage >= 1}
        d.text(x_lab, y + 0.35, label, size=10, ha="left", weight="bold")
        for r in range(RANKS):
            x = x0 + r * (cell + gap)
            yy = y + 0.72
            for kind in ("params", "grads", "optimizer"):
                yy -= heights[kind] + 0.04
                held = [i == r for i in range(RANKS)] if sharded[kind] else [True] * RANKS
                _shards(d, x, yy, cell, heights[kind], held, color=SERIES[r], label=names[kind] if r == 0 else None)
        d.text(x_right + 0.3, y + 0.35, _fmt(per["states"]), size=11, weight="bold",
               color=ACCENT if stage == 3 else INK)
        y -= 0.92
    d.text(3.7, 0.2, "each bar: one kind of state cut into 4 shards; coloured = kept by that rank, white = not kept",
           size=9, color=MUTED)
    return d


@diagram("06_fsdp_layer")
def fsdp_layer() -> Diagram:
    """FSDP per layer, seen from rank 0: all-gather the weights, compute, free; reduce-scatter the gradients."""
    d = Diagram(7.4, 3.5, title="FSDP, one layer at a time (seen from rank 0)")
    own = [True, False, False, False]
    full = [True] * RANKS
    w = 0.72
    # forward
    d.text(0.1, 2.85, "forward", size=10, ha="left", weight="bold")
    _shards(d, 0.2, 2.2, w, 0.28, own)
    d.text(0.2 + w / 2, 2.02, "own shard of W", size=9, color=MUTED)
    d.arrow((0.2 + w + 0.05, 2.34), (1.95, 2.34), label="all-gather", label_offset=(0, 0.16))
    _shards(d, 1.98, 2.2, w, 0.28, full)
    d.text(1.98 + w / 2, 2.02, "full W", size=9, color=MUTED)
    layer = d.box(3.1, 2.09, 1.3, 0.5, "forward of\nlayer ℓ", kind="layer", size=9)
    d.arrow((1.98 + w + 0.05, 2.34), layer.left)
    free = d.box(4.8, 2.09, 1.2, 0.5, "free the other\nshards", kind="op", size=9)
    d.arrow(layer.right, free.left)
    d.arrow(free.right, (7.25, 2.34), label="layer ℓ+1", label_offset=(0, 0.16))
    # backward
    d.text(0.1, 1.5, "backward", size=10, ha="left", weight="bold")
    _shards(d, 0.2, 0.85, w, 0.28, own)
    d.text(0.2 + w / 2, 0.67, "own shard of W", size=9, color=MUTED)
    d.arrow((0.2 + w + 0.05, 0.99), (1.95, 0.99), label="all-gather", label_offset=(0, 0.16))
    _shards(d, 1.98, 0.85, w, 0.28, full)
    d.text(1.98 + w / 2, 0.67, "full W again", size=9, color=MUTED)
    back = d.box(3.1, 0.74, 1.3, 0.5, "backward of\nlayer ℓ", kind="layer", size=9)
    d.arrow((1.98 + w + 0.05, 0.99), back.left)
    d.arrow(back.right, (4.75, 0.99))
    _shards(d, 4.78, 0.85, w, 0.28, [True] * RANKS, color=SERIES[0])
    d.text(4.78 + w / 2, 0.67, "full grad, own rows", size=9, color=MUTED)
    d.arrow((4.78 + w + 0.05, 0.99), (6.45, 0.99), label="reduce-scatter", label_offset=(0, 0.16), color=ACCENT)
    _shards(d, 6.48, 0.85, w, 0.28, own)
    d.text(6.48 + w / 2, 0.67, "grad shard", size=9, color=MUTED)
    d.text(3.7, 0.25, f"reduce-scatter sums the {RANKS} ranks' gradients and gives each rank only its own shard,"
           " which AdamW updates", size=9, color=MUTED)
    return d


@diagram("06_tensor_parallel")
def tensor_parallel() -> Diagram:
    """The tensor-parallel MLP: A split by columns, B by rows, one all-reduce of the partial outputs."""
    d = Diagram(7.4, 3.8, title="Tensor parallelism: the MLP split over 2 devices")
    x = d.box(0.15, 1.6, 0.55, 0.5, "x", kind="tensor", shape="(B, T, C)")
    d.text(0.42, 1.1, "on both\ndevices", size=9, color=MUTED)
    ys = {0: 2.5, 1: 0.7}
    parts = []
    for dev, y in ys.items():
        color = SERIES[dev]
        d.box(1.0, y - 0.25, 5.0, 1.0, kind="note", edge=color, lw=1.4)
        d.text(1.1, y + 0.62, f"device {dev}", size=9, ha="left", color=color, weight="bold")
        a = d.box(1.25, y, 1.0, 0.45, f"x · A{dev + 1}", kind="layer", size=10)
        d.text(1.75, y - 0.12, f"A{dev + 1}: C × 2C", size=9, color=MUTED)
        d.arrow(x.right, a.left)
        g = d.box(2.55, y, 0.7, 0.45, "GELU", kind="op", size=9)
        d.arrow(a.right, g.left)
        h = d.box(3.55, y, 0.6, 0.45, f"h{dev}", kind="tensor", size=10)
        d.text(3.85, y - 0.12, "(B, T, 2C)", size=9, color=MUTED)
        d.arrow(g.right, h.left)
        b = d.box(4.45, y, 1.0, 0.45, f"h{dev} · B{dev + 1}", kind="layer", size=10)
        d.text(4.95, y - 0.12, f"B{dev + 1}: 2C × C", size=9, color=MUTED)
        d.arrow(h.right, b.left)
        parts.append(b)
    s = d.circle(6.45, 1.85, 0.22, "+", kind="warn", size=12)
    for b in parts:
        d.arrow(b.right, (s.center[0] - 0.16, s.center[1] + (0.16 if b.y > 1.5 else -0.16)))
    d.text(6.45, 1.47, "all-reduce", size=9, color=ACCENT)
    y = d.box(6.8, 1.6, 0.5, 0.5, "y", kind="tensor", shape="(B, T, C)", shape_side="above")
    d.arrow(s.right, y.left)
    d.text(3.7, 0.17, "A (C × 4C) cut by columns, B (4C × C) by rows: GELU acts elementwise, so nothing is "
           "exchanged until the sum", size=9, color=MUTED)
    return d


def _gpipe(p: int, m: int) -> dict[int, dict[int, str]]:
    """The GPipe schedule: {stage: {time slot: "F3" or "B3"}}; forwards of all micro-batches, then backwards."""
    slots: dict[int, dict[int, str]] = {s: {} for s in range(p)}
    for s in range(p):
        for mb in range(m):
            slots[s][s + mb] = f"F{mb + 1}"
            slots[s][m + p - 1 + (p - 1 - s) + mb] = f"B{mb + 1}"
    return slots


@diagram("06_pipeline_bubble")
def pipeline_bubble() -> Diagram:
    """Pipeline parallelism: a time x stage grid, with the idle bubble, for one and for four micro-batches."""
    p = 4
    d = Diagram(7.4, 4.2, title=f"Pipeline parallelism over p = {p} stages: the bubble")
    cell, x0 = 0.31, 1.0
    y_top = 3.5
    for m in (1, 4):
        slots = _gpipe(p, m)
        total = 2 * (m + p - 1)
        idle = sum(total - len(slots[s]) for s in range(p)) / (p * total)
        assert abs(idle - (p - 1) / (m + p - 1)) < 1e-12  # the drawn schedule's idle share is the formula's
        d.text(0.1, y_top + 0.12, f"m = {m} micro-batch" + ("es" if m > 1 else "") + ":  bubble (p−1)/(m+p−1) = "
               f"{p - 1}/{m + p - 1} = {idle:.0%} of the time", size=10, ha="left", weight="bold")
        for s in range(p):
            y = y_top - 0.12 - (s + 1) * cell
            d.text(x0 - 0.08, y + cell / 2, f"stage {s + 1}", size=9, ha="right")
            for t in range(total):
                label = slots[s].get(t)
                if label is None:
                    d.box(x0 + t * cell, y, cell, cell, kind="tensor", lw=0.5, fill="#fbe0dc", edge="#e3a59c")
                else:
                    mb = int(label[1:]) - 1
                    d.box(x0 + t * cell, y, cell, cell, label, kind="tensor", size=9, lw=0.5,
                          fill=SERIES[mb] if label[0] == "F" else "#ffffff", edge=SERIES[mb],
                          label_color="white" if label[0] == "F" else SERIES[mb])
        d.arrow((x0, y - 0.1), (x0 + total * cell + 0.3, y - 0.1), color=MUTED, lw=0.8)
        d.text(x0 + total * cell + 0.38, y - 0.1, "time", size=9, ha="left", color=MUTED)
        y_top -= 1.8
    d.text(4.35, 2.75, "F3 = forward of micro-batch 3,\nB3 = its backward;\nred = the stage is idle",
           size=9, ha="left", color=MUTED)
    return d


@diagram("06_checkpointing")
def checkpointing() -> Diagram:
    """Activation checkpointing: without, each block keeps 16 values of width C per token; with, only its input."""
    config = GPTConfig.from_preset("gpt2")
    c, h = config.d_model, config.n_head
    per_token = block_activation_bytes(config, 1, 1, "fp32")
    values = (per_token - (4 + h) * 4) / (4 * c)  # width-C values per token (fp32), leaving out the norm statistics
    layers = 4
    d = Diagram(7.4, 3.9, title="Activation checkpointing: what backward finds stored")
    step = 1.6
    for row, (y, name) in enumerate(((2.55, "without"), (0.78, "with checkpointing"))):
        d.text(0.1, y + 0.78, name, size=10, ha="left", weight="bold")
        for i in range(layers + 1):
            x = 0.2 + i * step
            xin = d.box(x, y + 0.2, 0.3, 0.3, kind="tensor")
            if i == layers:
                break
            blk = d.box(x + 0.45, y + 0.12, 0.8, 0.46, f"block {i + 1}", kind="layer", size=9)
            d.arrow(xin.right, blk.left)
            d.arrow(blk.right, (x + step, y + 0.35))
            if row == 0:  # the block's internals (norm outputs, q, k, v, MLP hidden, ...) are kept
                for j in range(6):
                    d.box(x + 0.45 + j * 0.135, y - 0.18, 0.11, 0.22, kind="tensor", lw=0.6)
            else:  # recomputed in backward
                d.box(x + 0.35, y - 0.3, 1.0, 0.3, "recompute", kind="warn", size=9)
    d.text(3.7, 2.12, f"kept per token: {values:.0f} tensors of width C in every block (its input, the norm outputs, "
           "q, k, v,", size=9, color=MUTED)
    d.text(3.7, 1.9, "attention's output, the mid-block residual, the 4C-wide MLP hidden layer before and after GELU)",
           size=9, color=MUTED)
    d.text(3.7, 0.2, "kept: only each block's input (1 of width C); backward runs each block's forward again, "
           "one at a time", size=9, color=ACCENT)
    return d
