"""Chapter 04's diagrams: norms, MLPs, the block, the whole GPT, its parameters, and decoding.

Every number drawn is computed here from the package (`minillm.layers`,
`minillm.model.GPTConfig`, `minillm.generate.filter_logits`), never typed in.
"""

from __future__ import annotations

import torch
from matplotlib import patches

from minillm.diagrams import diagram
from minillm.diagrams.kit import ACCENT, INK, MUTED, SERIES, STYLE, Diagram
from minillm.generate import filter_logits
from minillm.layers import GeluMLP, SwiGLU, make_norm
from minillm.model import GPT, GPTConfig

#: A token vector with a clear positive mean (six features), for the norm diagram.
TOKEN = (2.9, 1.1, 3.3, 0.6, 2.4, 1.5)
#: The made-up next-word logits of the chapter's decoding section ("The cat sat on the ...").
WORDS = ("mat", "floor", "sofa", "bed", "roof", "chair", "table", "moon", "piano", "idea")
LOGITS = (3.2, 2.6, 2.3, 2.0, 1.4, 1.3, 1.0, -0.5, -1.0, -2.0)


def _bars(d: Diagram, x: float, y: float, w: float, h: float, values, lo: float, hi: float,
          colors=None, frame: str = "tensor") -> None:
    """A small bar chart in a tensor-coloured frame: one bar per value, on a common scale [lo, hi]."""
    face, edge, _ = STYLE[frame]
    d.ax.add_patch(patches.Rectangle((x, y), w, h, fc=face, ec=edge, lw=1.0))
    scale = h / (hi - lo)
    zero = y + (0 - lo) * scale
    d.line([(x, zero), (x + w, zero)], color=MUTED, lw=0.8)
    n = len(values)
    slot = w / n
    for i, v in enumerate(values):
        color = colors[i] if colors is not None else edge
        bottom, top = sorted((zero, zero + float(v) * scale))
        d.ax.add_patch(patches.Rectangle((x + i * slot + slot * 0.18, bottom), slot * 0.64, max(top - bottom, 0.005),
                                         fc=color, ec="none"))


def _gpt2_counts() -> tuple[dict[str, int], object]:
    """GPT-2 small's parameters by part (from the model itself, built on the meta device)."""
    with torch.device("meta"):
        model = GPT(GPTConfig.from_preset("gpt2"))
    parts = {"tok_emb": 0, "pos_emb": 0, "attn": 0, "mlp": 0, "norm": 0, "norm_f": 0, "lm_head": 0}
    for name, p in model.named_parameters():  # a tied head is listed once, as tok_emb
        key = next(k for k in ("tok_emb", "pos_emb", "norm_f", "attn", "mlp", "norm", "lm_head") if k in name)
        parts[key] += p.numel()
    assert sum(parts.values()) == model.num_parameters()
    return parts, model.config


@diagram("04_norms")
def norms() -> Diagram:
    """LayerNorm subtracts the mean, then divides by the standard deviation; RMSNorm only divides by the RMS."""
    x = torch.tensor([TOKEN])
    ln, rms = make_norm("layernorm", len(TOKEN)), make_norm("rmsnorm", len(TOKEN))
    with torch.no_grad():
        centred, ln_out, rms_out = x - x.mean(-1, keepdim=True), ln(x), rms(x)

    def stats(v: torch.Tensor) -> str:
        return f"mean {v.mean().item():.2f}\nRMS {v.pow(2).mean().sqrt().item():.2f}"

    d = Diagram(7.3, 4.3, title="LayerNorm and RMSNorm on one token vector")
    lo, hi = -2.0, 3.6
    pw, ph = 0.95, 0.9
    cols = (0.25, 2.3, 4.35)
    rows = {"ln": 2.5, "rms": 0.72}
    d.text(0.25, 3.66, "LayerNorm (GPT-2): centre, then scale", ha="left", size=10, weight="bold")
    d.text(0.25, 1.88, "RMSNorm (Llama): scale only", ha="left", size=10, weight="bold")
    for key, panels in (("ln", (x, centred, ln_out)), ("rms", (x, None, rms_out))):
        y = rows[key]
        for cx, v in zip(cols, panels):
            if v is None:
                continue
            _bars(d, cx, y, pw, ph, v[0].tolist(), lo, hi)
            d.text(cx + pw / 2, y - 0.27, stats(v), size=9, color=MUTED)
    # LayerNorm: x -> (- mean) -> (÷ std) -> gain and shift
    y = rows["ln"] + ph / 2
    sub = d.box(1.42, y - 0.22, 0.66, 0.44, "− μ", kind="op")
    d.arrow((cols[0] + pw, y), sub.left)
    d.arrow(sub.right, (cols[1], y))
    div = d.box(3.47, y - 0.22, 0.66, 0.44, "÷ σ", kind="op")
    d.arrow((cols[1] + pw, y), div.left)
    d.arrow(div.right, (cols[2], y))
    gain = d.box(5.65, y - 0.3, 1.45, 0.6, "γ ⊙ x̂ + β\nlearned: 2C", kind="layer", size=9)
    d.arrow((cols[2] + pw, y), gain.left)
    # RMSNorm: x -> (÷ RMS) -> gain; no centring step
    y = rows["rms"] + ph / 2
    div = d.box(2.45, y - 0.22, 0.95, 0.44, "÷ RMS", kind="op")
    d.arrow((cols[0] + pw, y), div.left)
    d.arrow(div.right, (cols[2], y))
    d.text(2.92, y + 0.42, "no centring: the mean keeps its sign", size=9, color=ACCENT)
    gain = d.box(5.65, y - 0.3, 1.45, 0.6, "γ ⊙ x̂\nlearned: C", kind="layer", size=9)
    d.arrow((cols[2] + pw, y), gain.left)
    return d


@diagram("04_mlps")
def mlps() -> Diagram:
    """GPT-2's GELU MLP (two matrices, d_ff = 4C) beside Llama's SwiGLU (three matrices, d_ff ≈ 8C/3)."""
    c = 768
    d_ff_swiglu = GPTConfig(d_model=c, n_head=12, mlp="swiglu").ff_width
    with torch.device("meta"):
        n_gelu = sum(p.numel() for p in GeluMLP(c, 4 * c).parameters())
        n_swiglu = sum(p.numel() for p in SwiGLU(c, d_ff_swiglu).parameters())

    d = Diagram(7.3, 3.9, title="The MLP: GELU (GPT-2) and SwiGLU (Llama)")
    # GELU row
    y = 2.55
    d.text(0.15, 3.3, "GELU MLP", ha="left", size=10, weight="bold")
    x = d.box(0.15, y, 0.6, 0.45, "x", kind="tensor", shape="(B, T, C)")
    fc = d.box(1.1, y - 0.05, 1.05, 0.55, "fc\nC → 4C", kind="layer", size=9)
    act = d.box(2.55, y, 0.8, 0.45, "GELU", kind="op", shape="(B, T, 4C)")
    proj = d.box(3.75, y - 0.05, 1.05, 0.55, "proj\n4C → C", kind="layer", size=9)
    out = d.box(5.2, y, 0.6, 0.45, "y", kind="tensor", shape="(B, T, C)")
    for a, b in ((x, fc), (fc, act), (act, proj), (proj, out)):
        d.arrow(a.right, b.left)
    d.text(5.95, y + 0.22, f"{n_gelu:,}\nparameters", ha="left", size=9, color=MUTED)
    d.text(7.15, 3.3, f"counts at C = {c}", ha="right", size=9, color=MUTED)
    # SwiGLU row
    d.text(0.15, 1.7, "SwiGLU MLP", ha="left", size=10, weight="bold")
    xs = d.box(0.15, 0.75, 0.6, 0.45, "x", kind="tensor", shape="(B, T, C)")
    gate = d.box(1.1, 1.1, 1.05, 0.5, "gate\nC → d_ff", kind="layer", size=9)
    up = d.box(1.1, 0.3, 1.05, 0.5, "up\nC → d_ff", kind="layer", size=9)
    silu = d.box(2.5, 1.13, 0.7, 0.44, "SiLU", kind="op")
    mul = d.circle(3.5, 0.97, 0.17, "×")
    down = d.box(3.95, 0.7, 1.05, 0.55, "down\nd_ff → C", kind="layer", size=9)
    outs = d.box(5.3, 0.75, 0.6, 0.45, "y", kind="tensor", shape="(B, T, C)")
    d.arrow(xs.right, gate.left)
    d.arrow(xs.right, up.left)
    d.arrow(gate.right, silu.left)
    d.arrow(silu.right, (mul.center[0] - 0.1, mul.center[1] + 0.13))
    d.arrow(up.right, (mul.center[0] - 0.1, mul.center[1] - 0.13))
    d.arrow(mul.right, down.left)
    d.arrow(down.right, outs.left)
    d.text(3.5, 0.55, "gate ⊙ value", size=9, color=ACCENT)
    d.text(6.05, 0.97, f"d_ff = {d_ff_swiglu}:\n{n_swiglu:,}\nparameters", ha="left", size=9, color=MUTED)
    return d


def _residual_column(d: Diagram, x0: float, pre: bool) -> None:
    """One block drawn bottom to top: the residual spine at x0, the sublayers on a branch to its right."""
    spine = x0 + 0.35
    branch = x0 + 1.55
    inp = d.box(spine - 0.35, 0.45, 0.7, 0.4, "x", kind="tensor", shape="(B, T, C)", shape_side="right")
    y = inp.y + inp.h
    for k, name in enumerate(("Attn", "MLP")):
        tap = y + 0.18
        d.line([(spine, tap), (branch, tap)], color=INK, lw=1.2)
        if pre:
            ln = d.box(branch - 0.45, tap + 0.12, 0.9, 0.36, f"LN{k + 1}", kind="layer")
            d.arrow((branch, tap), ln.bottom)
            f = d.box(branch - 0.45, ln.y + ln.h + 0.15, 0.9, 0.38, name, kind="layer")
            d.arrow(ln.top, f.bottom)
        else:
            f = d.box(branch - 0.45, tap + 0.12, 0.9, 0.38, name, kind="layer")
            d.arrow((branch, tap), f.bottom)
        top = f.y + f.h + 0.15
        add = d.circle(spine, top, 0.14, "+", size=11)
        d.line([(spine, y), (spine, top - 0.14)], color=INK, lw=1.6)
        d.line([(branch, f.y + f.h), (branch, top)], color=INK, lw=1.2)
        d.arrow((branch, top), add.right)
        y = top + 0.14
        if not pre:
            ln = d.box(spine - 0.45, y + 0.2, 0.9, 0.36, f"LN{k + 1}", kind="warn")
            d.arrow(add.top, ln.bottom)
            y = ln.y + ln.h
    out = d.box(spine - 0.35, y + 0.25, 0.7, 0.4, "x′", kind="tensor", shape="(B, T, C)", shape_side="right")
    d.arrow((spine, y), out.bottom, lw=1.6)


@diagram("04_pre_post_ln")
def pre_post_ln() -> Diagram:
    """Pre-LN keeps the residual path a pure sum; post-LN puts a norm on it after every sublayer."""
    d = Diagram(7.0, 5.5, title="Where the norm goes: pre-LN and post-LN")
    _residual_column(d, 0.55, pre=True)
    _residual_column(d, 4.1, pre=False)
    d.text(1.8, 4.95, "pre-LN (GPT-2, Llama)", size=10, weight="bold")
    d.text(5.35, 4.95, "post-LN (2017 transformer)", size=10, weight="bold")
    d.text(1.8, 0.15, "x ← x + f(LN(x)): the spine is a pure sum", size=9, color=MUTED)
    d.text(5.35, 0.15, "x ← LN(x + f(x)): every norm is on the spine", size=9, color=ACCENT)
    return d


@diagram("04_block_shapes")
def block_shapes() -> Diagram:
    """A pre-LN GPT-2 block with the package's parameter names and the shape after every step."""
    d = Diagram(7.4, 3.75, title="One pre-LN block, with shapes and parameter names")
    # row 1: attention half
    y1 = 2.25
    x = d.box(0.15, y1, 0.6, 0.46, "x", kind="tensor", shape="(B, T, C)")
    n1 = d.box(1.05, y1 - 0.02, 0.8, 0.5, "norm1", kind="layer", shape="(B, T, C)")
    qkv = d.box(2.15, y1 - 0.05, 1.0, 0.56, "attn.qkv\nC → 3C", kind="layer", size=9, shape="(B, T, 3C)")
    att = d.box(3.45, y1 - 0.05, 1.45, 0.56, "causal attention\nH heads of size D", kind="op", size=9,
                shape="q, k, v: (B, H, T, D)")
    proj = d.box(5.2, y1 - 0.05, 1.0, 0.56, "attn.proj\nC → C", kind="layer", size=9, shape="(B, T, C)")
    add1 = d.circle(6.65, y1 + 0.23, 0.15, "+", size=11)
    for a, b in ((x, n1), (n1, qkv), (qkv, att), (att, proj)):
        d.arrow(a.right, b.left)
    d.arrow(proj.right, add1.left)
    d.line([(x.top[0], x.y + x.h), (x.top[0], 3.1), (add1.center[0], 3.1)], color=INK, lw=1.4)
    d.arrow((add1.center[0], 3.1), add1.top)
    d.text(3.4, 3.22, "residual: x + attention", size=9, color=MUTED)
    # the stream returns to the left for the MLP half
    y2 = 0.8
    mid = 1.62
    d.line([(add1.center[0], add1.y), (add1.center[0], mid), (0.45, mid), (0.45, y2 + 0.23)], color=INK, lw=1.4)
    n2 = d.box(1.05, y2 - 0.02, 0.8, 0.5, "norm2", kind="layer", shape="(B, T, C)")
    fc = d.box(2.15, y2 - 0.05, 1.0, 0.56, "mlp.fc\nC → 4C", kind="layer", size=9, shape="(B, T, 4C)")
    gelu = d.box(3.45, y2, 0.8, 0.46, "GELU", kind="op", shape="(B, T, 4C)")
    mproj = d.box(4.55, y2 - 0.05, 1.0, 0.56, "mlp.proj\n4C → C", kind="layer", size=9, shape="(B, T, C)")
    add2 = d.circle(5.95, y2 + 0.23, 0.15, "+", size=11)
    out = d.box(6.4, y2, 0.6, 0.46, "x′", kind="tensor")
    d.arrow((0.45, y2 + 0.23), n2.left)
    for a, b in ((n2, fc), (fc, gelu), (gelu, mproj)):
        d.arrow(a.right, b.left)
    d.arrow(mproj.right, add2.left)
    d.arrow(add2.right, out.left)
    d.text(out.center[0], out.y - 0.13, "(B, T, C)", size=9, color=MUTED)
    d.line([(0.45, y2 + 0.23), (0.45, 0.2), (add2.center[0], 0.2)], color=INK, lw=1.4)
    d.arrow((add2.center[0], 0.2), add2.bottom)
    d.text(3.2, 0.32, "residual: x + MLP", size=9, color=MUTED)
    return d


@diagram("04_gpt_model")
def gpt_model() -> Diagram:
    """The whole GPT: token ids (B, T) -> embeddings -> L blocks -> final norm -> logits (B, T, V)."""
    c = GPTConfig.from_preset("gpt2")
    d = Diagram(7.45, 3.6, title="The whole GPT, from token ids to next-token logits")
    yc = 1.75
    ids = d.box(0.1, yc - 0.23, 0.6, 0.46, "ids", kind="tensor", shape="(B, T)")
    tok = d.box(1.0, yc - 0.05, 0.95, 0.56, "tok_emb\nV × C", kind="layer", size=9)
    pos = d.box(1.0, 0.55, 0.95, 0.56, "pos_emb\nT × C", kind="layer", size=9)
    d.text(0.4, 0.83, "0 … T−1", size=9, color=MUTED)
    d.arrow((0.75, 0.83), pos.left)
    d.arrow(ids.right, (tok.x, yc + 0.23))
    add = d.circle(2.3, yc + 0.23, 0.15, "+", size=11)
    d.arrow(tok.right, add.left)
    d.line([(pos.right[0], pos.right[1]), (add.center[0], pos.right[1])], color=INK, lw=1.2)
    d.arrow((add.center[0], pos.right[1]), add.bottom)
    # the stack of blocks, drawn as cards
    bx, by = 2.75, yc - 0.1
    for k in (2, 1):
        d.box(bx + 0.1 * k, by + 0.1 * k, 1.05, 0.62, kind="layer")
    blocks = d.box(bx, by, 1.05, 0.62, "L blocks", kind="layer")
    d.text(bx + 0.55, by - 0.16, "(B, T, C)", size=9, color=MUTED)
    d.arrow(add.right, blocks.left)
    norm = d.box(4.3, yc - 0.02, 0.8, 0.5, "norm_f", kind="layer")
    d.arrow((bx + 1.25, yc + 0.23), norm.left)
    head = d.box(5.4, yc - 0.05, 0.95, 0.56, "lm_head\nC → V", kind="layer", size=9)
    d.arrow(norm.right, head.left)
    logits = d.box(6.6, yc - 0.02, 0.75, 0.5, "logits", kind="tensor", shape="(B, T, V)")
    d.arrow(head.right, logits.left)
    # weight tying
    d.arrow(tok.top, head.top, color=ACCENT, dashed=True, curve=-0.22, style="<|-|>")
    d.text(3.65, 3.05, "tied: lm_head.weight is tok_emb.weight", size=9, color=ACCENT)
    d.text(3.7, 0.2, f"GPT-2 small: V = {c.vocab_size:,}, C = {c.d_model}, L = {c.n_layer}, "
                     f"T ≤ {c.context_length:,}: (B, T) → (B, T, {c.d_model}) → (B, T, {c.vocab_size})",
           size=9, color=MUTED)
    return d


@diagram("04_weight_tying")
def weight_tying() -> Diagram:
    """One V x C matrix read two ways: a row lookup on the way in, a dot product with every row on the way out."""
    g = torch.Generator().manual_seed(4)
    v, c, token = 6, 5, 2
    w = torch.randn(v, c, generator=g)
    h = w[token] + 0.6 * torch.randn(c, generator=g)      # a hidden state that still resembles its input token
    logits = w @ h
    cell = 0.3
    d = Diagram(7.3, 3.6, title="Weight tying: one matrix reads tokens in and scores them out")
    gy = 0.95
    # left: the lookup
    d.text(1.75, 3.05, "in: look up a row", size=10, weight="bold")
    tid = d.box(0.1, gy + (v - 1 - token) * cell - 0.05, 0.75, 0.4, f"id {token}", kind="tensor")
    left = d.grid(1.05, gy, w.tolist(), cell=cell, cmap="RdBu_r", vmin=-2.5, vmax=2.5)
    row_y = gy + (v - 1 - token) * cell
    d.ax.add_patch(patches.Rectangle((left.x, row_y), c * cell, cell, fc="none", ec=ACCENT, lw=2.0))
    d.arrow(tid.right, (left.x, row_y + cell / 2))
    emb = d.grid(3.05, gy + 0.3, [[float(t)] for t in w[token]], cell=cell, cmap="RdBu_r", vmin=-2.5, vmax=2.5)
    d.arrow((left.x + c * cell, row_y + cell / 2), (emb.x, row_y + cell / 2))
    d.text(emb.x + cell / 2, gy + 0.12, "(C,)", size=9, color=MUTED)
    d.text(left.x + c * cell / 2, gy - 0.2, "tok_emb.weight (V × C)", size=9, color=MUTED)
    # right: the output head
    d.text(5.4, 3.05, "out: one dot product per row", size=10, weight="bold")
    hid = d.grid(3.95, gy + 0.3, [[float(t)] for t in h], cell=cell, cmap="RdBu_r", vmin=-2.5, vmax=2.5)
    d.text(hid.x + cell / 2, gy + 0.12, "h (C,)", size=9, color=MUTED)
    right = d.grid(4.6, gy, w.tolist(), cell=cell, cmap="RdBu_r", vmin=-2.5, vmax=2.5)
    d.arrow((hid.x + cell, gy + 0.3 + c * cell / 2), (right.x, gy + 0.3 + c * cell / 2))
    out = d.grid(6.6, gy, [[float(t)] for t in logits], cell=cell, cmap="RdBu_r", vmin=-6, vmax=6)
    d.arrow((right.x + c * cell, gy + v * cell / 2), (out.x, gy + v * cell / 2), label="W h")
    d.text(out.x + cell / 2, gy - 0.2, "logits (V,)", size=9, color=MUTED)
    d.text(right.x + c * cell / 2, gy - 0.2, "lm_head.weight (V × C)", size=9, color=MUTED)
    best = int(logits.argmax())
    d.ax.add_patch(patches.Rectangle((out.x, gy + (v - 1 - best) * cell), cell, cell, fc="none", ec=ACCENT, lw=2.0))
    d.text(3.65, 0.38, f"h still resembles row {token}'s embedding, so row {best} gets the highest logit",
           size=9, color=ACCENT)
    d.text((left.x + right.x + c * cell) / 2, 2.88, "one tensor", size=9, color=ACCENT)
    d.line([(left.x + c * cell / 2, gy + v * cell + 0.12), (left.x + c * cell / 2, 2.75),
            (right.x + c * cell / 2, 2.75), (right.x + c * cell / 2, gy + v * cell + 0.12)], color=ACCENT, lw=1.2,
           dashed=True)
    assert best == token
    return d


@diagram("04_param_map")
def param_map() -> Diagram:
    """Where GPT-2 small's parameters live: the count of every part, and a strip drawn to scale."""
    parts, c = _gpt2_counts()
    total = sum(parts.values())
    L = c.n_layer
    d = Diagram(7.4, 3.9, title="Where GPT-2 small's parameters live")
    y = 2.35
    h = 0.8
    d.box(0.1, y, 1.15, h, f"tok_emb\nV·C\n{parts['tok_emb'] / 1e6:.1f}M", kind="layer", size=9)
    d.box(1.4, y, 1.05, h, f"pos_emb\nT·C\n{parts['pos_emb'] / 1e6:.2f}M", kind="layer", size=9)
    # the blocks, framed with "× L"
    d.box(2.6, y - 0.2, 2.9, h + 0.55, kind="note")
    d.text(4.05, y + h + 0.2, f"per block, × L = {L}", size=9, color=MUTED)
    per = {k: parts[k] // L for k in ("attn", "mlp", "norm")}
    d.box(2.7, y, 0.95, h, f"attn\n4C²+4C\n{per['attn'] / 1e6:.2f}M", kind="layer", size=9)
    d.box(3.72, y, 0.95, h, f"mlp\n8C²+5C\n{per['mlp'] / 1e6:.2f}M", kind="layer", size=9)
    d.box(4.74, y, 0.68, h, f"norms\n4C\n{per['norm']:,}", kind="layer", size=9)
    d.box(5.65, y, 0.8, h, f"norm_f\n2C\n{parts['norm_f']:,}", kind="layer", size=9)
    d.box(6.55, y, 0.8, h, f"lm_head\ntied:\n{parts['lm_head']} new", kind="layer", size=9)
    # to scale: a strip 7 inches wide
    x0, width, sy, sh = 0.2, 7.0, 0.95, 0.42
    shown = (("tok_emb", "token embedding", SERIES[0]), ("pos_emb", "", SERIES[6]),
             ("attn", "attention", SERIES[1]), ("mlp", "MLP", SERIES[2]), ("norm", "", SERIES[3]),
             ("norm_f", "", SERIES[3]))
    x = x0
    for key, label, color in shown:
        w = width * parts[key] / total
        d.ax.add_patch(patches.Rectangle((x, sy), w, sh, fc=color, ec="white", lw=0.8))
        if label:
            d.text(x + w / 2, sy + sh / 2, f"{label} {parts[key] / total:.0%}", size=9, color="white")
        x += w
    d.text(x0 + width / 2, sy + sh + 0.2, "to scale, the whole model", size=9, color=MUTED)
    d.text(x0 + width / 2, 0.5, f"total {total:,} = V·C + T·C + L(12C² + 13C) + 2C "
                                f"(C = {c.d_model}, L = {L}, V = {c.vocab_size:,}, T = {c.context_length:,})",
           size=9, color=MUTED)
    small = (parts["norm"] + parts["norm_f"] + parts["pos_emb"]) / total
    d.text(x0 + width / 2, 0.22, f"norms and position table: {small:.1%} together, the thin slivers", size=9,
           color=MUTED)
    return d


@diagram("04_sampling")
def sampling() -> Diagram:
    """Decoding: logits -> temperature -> top-k -> top-p -> one sampled token, on the chapter's made-up logits."""
    z = torch.tensor(LOGITS)
    tau, k, p = 0.8, 5, 0.8
    stages = [("softmax(z)", filter_logits(z), "all V tokens"),
              (f"÷ τ, τ = {tau}", filter_logits(z, tau), "sharper"),
              (f"top-k, k = {k}", filter_logits(z, tau, top_k=k), f"{k} largest kept"),
              (f"top-p, p = {p}", filter_logits(z, tau, top_k=k, top_p=p), "smallest set ≥ p")]
    final = stages[-1][1]
    token = int(torch.multinomial(final, 1, generator=torch.Generator().manual_seed(0)))
    d = Diagram(7.4, 3.2, title="From logits to the next token")
    pw, ph, gap = 1.15, 1.1, 0.35
    y = 1.0
    x = 0.15
    prev = None
    for i, (name, probs, caption) in enumerate(stages):
        kept = probs > 0
        colors = [SERIES[0] if q else "#c9c9c9" for q in kept.tolist()]
        if i == len(stages) - 1:
            colors[token] = ACCENT
        # rounded: the last bits of a softmax depend on the CPU's vector kernels; the drawing must not
        _bars(d, x, y, pw, ph, [round(v, 4) for v in probs.tolist()], 0.0, 0.75, colors=colors)
        for j, q in enumerate(kept.tolist()):  # removed tokens: a grey tick at zero
            if not q:
                slot = pw / len(probs)
                d.line([(x + j * slot + slot * 0.2, y + 0.03), (x + j * slot + slot * 0.8, y + 0.03)],
                       color="#9a9a9a", lw=1.5)
        d.box(x - 0.02, y + ph + 0.2, pw + 0.04, 0.42, name, kind="op", size=9)
        d.text(x + pw / 2, y - 0.17, caption, size=9, color=MUTED)
        d.text(x + pw / 2, y - 0.42, f"{int(kept.sum())} of {len(probs)} tokens", size=9, color=MUTED)
        if prev is not None:
            d.arrow((prev, y + ph / 2), (x, y + ph / 2))
        prev = x + pw
        x += pw + gap
    d.box(x - 0.02, y + ph + 0.2, 1.15, 0.42, "sample", kind="op", size=9)
    tok = d.box(x + 0.05, y + 0.3, 1.0, 0.5, f"“{WORDS[token]}”", kind="tensor", edge=ACCENT)
    d.text(tok.center[0], y - 0.17, "next token (B,)", size=9, color=MUTED)
    d.arrow((prev, y + ph / 2), tok.left)
    d.text(3.7, 0.2, "the chapter's “The cat sat on the …” logits; bars share one probability scale", size=9,
           color=MUTED)
    return d
