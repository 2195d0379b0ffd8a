"""Chapter 03's diagrams: attention, from dot products to the KV cache.

The numbers drawn are computed here with the package (`minillm.attention`), on
small seeded random inputs or the book model's configuration, never typed in.
"""

from __future__ import annotations

import math

import torch

from minillm.attention import RotaryEmbedding, attention_weights, causal_mask, repeat_kv, softmax
from minillm.diagrams import diagram
from minillm.diagrams.kit import ACCENT, INK, MUTED, SERIES, STYLE, Diagram
from minillm.pretrained import book_config


def _vector(values, fmt: str = "{:.2f}") -> str:
    """[a, b, c] written with `fmt`; infinities and nan as the words Python prints."""
    return "[" + ", ".join(fmt.format(v) if math.isfinite(v) else str(v) for v in values) + "]"


@diagram("03_one_query")
def one_query() -> Diagram:
    """Attention for one query: scores q·kⱼ/√D, a softmax into weights, a weighted sum of the values."""
    gen = torch.Generator().manual_seed(3)
    n_keys, dim = 4, 8
    q, keys = torch.randn(dim, generator=gen), torch.randn(n_keys, dim, generator=gen)
    scores = (keys @ q / math.sqrt(dim)).tolist()
    weights = attention_weights(q[None], keys)[0].tolist()  # the package's softmax of the same scores

    d = Diagram(7.3, 3.2, title="One query: scores, softmax, weighted sum of values")
    cell, top = 0.42, 2.45
    y0 = top - n_keys * cell
    mid = y0 + n_keys * cell / 2
    qb = d.box(0.15, mid + 0.2, 0.7, 0.42, "q", kind="tensor", shape="(D,)", shape_side="above")
    kb = d.box(0.15, mid - 0.62, 0.7, 0.42, "K", kind="tensor", shape="(S, D)")
    dot = d.box(1.2, mid - 0.3, 1.0, 0.6, "q · kⱼ / √D", kind="op", size=9)
    d.arrow(qb.right, (dot.x, dot.y + 0.42))
    d.arrow(kb.right, (dot.x, dot.y + 0.18))
    lo, hi = min(scores), max(scores)
    sg = d.grid(2.5, y0, [[s] for s in scores], cell=cell, vmin=lo - 0.3 * (hi - lo), vmax=hi, text=True)
    d.text(sg.x + cell / 2, top + 0.17, "scores sⱼ", size=9, color=MUTED)
    d.arrow(dot.right, (sg.x, mid))
    soft = d.box(3.27, mid - 0.25, 0.85, 0.5, "softmax", kind="op", size=9)
    d.arrow((sg.x + cell, mid), soft.left)
    wg = d.grid(4.42, y0, [[w] for w in weights], cell=cell, vmin=0, vmax=1, text=True)
    d.text(wg.x + cell / 2, top + 0.17, "weights aⱼ", size=9, color=MUTED)
    d.text(wg.x + cell / 2, y0 - 0.15, f"sum {sum(weights):.2f}", size=9, color=MUTED)
    d.arrow(soft.right, (wg.x, mid))
    for j in range(n_keys):
        d.text(sg.x - 0.1, y0 + (n_keys - 0.5 - j) * cell, f"{j}", size=9, color=MUTED, ha="right")
    mix = d.box(5.17, mid - 0.3, 0.95, 0.6, "Σⱼ aⱼ vⱼ", kind="op", size=10)
    d.arrow((wg.x + cell, mid), mix.left)
    vb = d.box(5.3, 0.25, 0.7, 0.42, "V", kind="tensor", shape="(S, D)", shape_side="right")
    d.arrow(vb.top, mix.bottom)
    zb = d.box(6.45, mid - 0.21, 0.7, 0.42, "z", kind="tensor", shape="(D,)")
    d.arrow(mix.right, zb.left)
    d.text(0.15, 0.3, f"S = {n_keys} keys, D = {dim}: the best-matching key gets the most weight",
           size=9, color=MUTED, ha="left")
    return d


@diagram("03_stable_softmax")
def stable_softmax() -> Diagram:
    """Softmax of large scores: exp overflows to inf and inf/inf is nan; subtracting the max first is exact."""
    s = torch.tensor([1000.0, 1001.0, 1002.0])
    naive_exp = s.exp()
    naive = naive_exp / naive_exp.sum()
    shifted = s - s.max()
    stable_exp = shifted.exp()
    stable = stable_exp / stable_exp.sum()
    assert torch.isnan(naive).all() and torch.allclose(stable, softmax(s)) and torch.allclose(stable, s.softmax(-1))

    d = Diagram(7.3, 2.9, title="Softmax of large scores: subtract the maximum first")
    sb = d.box(0.15, 1.05, 1.45, 0.5, _vector(s.tolist(), "{:.0f}"), kind="tensor", size=9, shape="scores s")
    # the naive path (top)
    e1 = d.box(2.35, 1.9, 1.2, 0.45, "exp(s)", kind="op", size=9)
    n1 = d.box(3.95, 1.9, 1.35, 0.45, _vector(naive_exp.tolist()), kind="warn", size=9)
    n2 = d.box(5.8, 1.9, 1.4, 0.45, _vector(naive.tolist()), kind="warn", size=9)
    d.arrow((sb.x + sb.w, 1.42), e1.left)
    d.arrow(e1.right, n1.left)
    d.arrow(n1.right, n2.left, label="÷ sum", label_offset=(0, 0.34))
    d.text(n1.x + n1.w / 2, 1.68, "e¹⁰⁰⁰ overflows float32", size=9, color=ACCENT)
    d.text(n2.x + n2.w / 2, 1.68, "inf / inf = nan", size=9, color=ACCENT)
    # the stable path (bottom)
    m1 = d.box(1.85, 0.55, 0.95, 0.45, "s − max(s)", kind="op", size=9)
    t1 = d.box(3.1, 0.55, 0.9, 0.45, _vector(shifted.tolist(), "{:.0f}"), kind="tensor", size=9)
    t2 = d.box(4.3, 0.55, 1.35, 0.45, _vector(stable_exp.tolist()), kind="tensor", size=9)
    t3 = d.box(5.95, 0.55, 1.25, 0.45, _vector(stable.tolist()), kind="tensor", size=9, shape="probabilities")
    d.arrow((sb.x + sb.w, 1.18), m1.left)
    d.arrow(m1.right, t1.left)
    d.arrow(t1.right, t2.left, label="exp", label_offset=(0, 0.34))
    d.arrow(t2.right, t3.left, label="÷ sum", label_offset=(0, 0.34))
    d.text(t2.x + t2.w / 2, 0.42, "largest exponent e⁰ = 1", size=9, color=MUTED)
    return d


@diagram("03_causal_mask")
def causal_mask_grid() -> Diagram:
    """The causal mask: query i sees keys j ≤ i (weights shown); with a cache, the T queries are the last of S."""
    t = 6
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(t, 8, generator=gen), torch.randn(t, 8, generator=gen)
    mask = causal_mask(t)
    weights = attention_weights(q, k, mask)
    assert torch.allclose(weights.sum(-1), torch.ones(t)) and (weights[~mask] == 0).all()
    cache_mask = causal_mask(3, 6)

    d = Diagram(7.3, 4.0, title="The causal mask: no looking ahead")
    cell = 0.42
    x0, y0 = 0.75, 0.55
    g = d.grid(x0, y0, weights.tolist(), cell=cell, vmin=0, vmax=1, mask=(~mask).tolist(), text=True)
    top = y0 + t * cell
    for i in range(t):
        d.text(x0 - 0.1, y0 + (t - 0.5 - i) * cell, str(i), size=9, color=MUTED, ha="right")
        d.text(x0 + (i + 0.5) * cell, top + 0.12, str(i), size=9, color=MUTED)
    d.text(x0 + t * cell / 2, top + 0.33, "key j", size=9, color=MUTED)
    d.text(0.25, y0 + t * cell / 2, "query i", size=9, color=MUTED, rotation=90)
    d.text(g.x + g.w / 2, 0.3, "weights aᵢⱼ, T = S = " + str(t) + "; grey: j > i, weight 0", size=9, color=MUTED)

    x1, rows = 4.25, cache_mask.shape[0]
    y1 = y0 + (t - rows) * cell
    g2 = d.grid(x1, y1, cache_mask.float().tolist(), cell=cell, vmin=0, vmax=1.6, mask=(~cache_mask).tolist())
    for j in range(cache_mask.shape[1]):
        d.text(x1 + (j + 0.5) * cell, y1 + rows * cell + 0.12, str(j), size=9, color=MUTED)
    for i in range(rows):
        d.text(x1 - 0.1, y1 + (rows - 0.5 - i) * cell, f"{cache_mask.shape[1] - rows + i}", size=9, color=MUTED,
               ha="right")
    d.brace(x1 + 0.03, x1 + 3 * cell - 0.03, y1 + rows * cell + 0.3, "cached keys", below=False)
    d.brace(x1 + 3 * cell + 0.03, x1 + g2.w - 0.03, y1 + rows * cell + 0.3, "new keys", below=False)
    n_new, n_keys = cache_mask.shape
    d.text(x1 + g2.w / 2, y1 - 0.22, f"causal_mask({n_new}, {n_keys}): {n_new} new queries", size=9, color=MUTED)
    d.text(x1 + g2.w / 2, y1 - 0.45, f"at positions {n_keys - n_new} … {n_keys - 1}, {n_keys} keys", size=9,
           color=MUTED)
    d.text(x1 + g2.w / 2, 0.75, "blue: may attend (True)", size=9, color=STYLE["tensor"][1])
    d.text(x1 + g2.w / 2, 0.5, "grey: the future (False → −∞)", size=9, color=MUTED)
    return d


@diagram("03_mha_shapes")
def mha_shapes() -> Diagram:
    """Multi-head attention: (B, T, C) -> q, k, v -> (B, H, T, D) -> attention per head -> (B, T, C)."""
    model = book_config().model
    d = Diagram(7.3, 3.95, title="Multi-head attention: the shapes")
    h = 0.5
    # row 1, left to right: project, split heads
    r1 = 2.75
    x = d.box(0.15, r1, 0.75, h, "x", kind="tensor", shape="(B, T, C)")
    qkv = d.box(1.25, r1 - 0.05, 1.05, h + 0.1, "Linear qkv\nC → 3C", kind="layer", size=9)
    three = d.box(2.65, r1, 0.95, h, "q, k, v", kind="tensor", shape="3 × (B, T, C)")
    split = d.box(3.95, r1 - 0.05, 1.35, h + 0.1, "view (B, T, H, D)\ntranspose(1, 2)", kind="op", size=9)
    heads = d.box(5.65, r1, 1.5, h, "q, k, v per head", kind="tensor", shape="3 × (B, H, T, D)", size=9)
    for a, b in ((x, qkv), (qkv, three), (three, split), (split, heads)):
        d.arrow(a.right, b.left)
    # row 2, right to left: attention inside each head
    r2 = 1.6
    att = d.box(5.45, r2 - 0.05, 1.7, h + 0.1, "softmax(q kᵀ / √D)\nwith the causal mask", kind="op", size=9)
    probs = d.box(3.95, r2, 1.15, h, "att", kind="tensor", shape="(B, H, T, T)")
    mix = d.box(2.65, r2, 0.95, h, "att · v", kind="op")
    d.arrow((heads.x + heads.w / 2 + 0.05, r1 - 0.25), att.top)
    d.arrow(att.left, probs.right)
    d.arrow(probs.left, mix.right)
    d.text(heads.x + heads.w / 2 + 0.1, (r1 - 0.25 + att.y + att.h) / 2, "q, k", size=9, color=MUTED, ha="left")
    # row 3, left to right: merge heads, output projection
    r3 = 0.45
    yh = d.box(0.15, r2, 1.0, h, "z per head", kind="tensor", shape="(B, H, T, D)", size=9)
    d.arrow(mix.left, yh.right)
    merge = d.box(0.15, r3 - 0.05, 1.5, h + 0.1, "transpose(1, 2)\nreshape (B, T, C)", kind="op", size=9)
    d.arrow((yh.x + 0.5, r2 - 0.25), (yh.x + 0.5, merge.y + merge.h))
    y = d.box(2.0, r3, 0.75, h, "y", kind="tensor", shape="(B, T, C)")
    proj = d.box(3.1, r3 - 0.05, 1.05, h + 0.1, "Linear proj\nC → C", kind="layer", size=9)
    out = d.box(4.5, r3, 0.75, h, "out", kind="tensor", shape="(B, T, C)")
    for a, b in ((merge, y), (y, proj), (proj, out)):
        d.arrow(a.right, b.left)
    # v goes around the scores to att · v
    d.line([(heads.x + 0.12, r1 - 0.06), (heads.x + 0.12, 2.42), (mix.x + mix.w / 2, 2.42)], color=INK, lw=1.2)
    d.arrow((mix.x + mix.w / 2, 2.42), mix.top)
    d.text(mix.x + mix.w / 2 + 0.1, 2.3, "v", size=9, color=MUTED, ha="left")
    c, n_head = model.d_model, model.n_head
    d.text(5.3, 0.82, "C = H · D", size=10, color=ACCENT, ha="left")
    d.text(5.3, 0.55, f"book model: {c} = {n_head} × {c // n_head}", size=9, color=MUTED, ha="left")
    return d


@diagram("03_rope")
def rope() -> Diagram:
    """RoPE: dimension i pairs with i + D/2; each pair turns by p·θᵢ at position p; q·k sees only m − n."""
    dim, base = 8, 10000.0
    rot = RotaryEmbedding(dim, 8, theta=base)
    theta = rot.cos.new_tensor([base ** (-2 * i / dim) for i in range(dim // 2)])
    e0 = torch.zeros(1, 1, 4, dim)
    e0[..., 0] = 1.0  # a unit vector in dimension 0: its pair is (0, D/2)
    turned = rot(e0)[0, 0]  # (4, D): positions 0..3
    angles = [math.atan2(turned[p, dim // 2].item(), turned[p, 0].item()) for p in range(4)]
    assert all(abs(a - p * theta[0].item()) < 1e-5 for p, a in enumerate(angles))

    d = Diagram(7.3, 3.45, title="RoPE: rotate each pair of dimensions by position")
    # the pairs of one head
    cell, x0, y0 = 0.42, 1.25, 2.55
    for i in range(dim):
        pair = i % (dim // 2)
        d.box(x0 + i * cell, y0, cell, cell, f"{i}", kind="tensor", fill=_tint(SERIES[pair]), edge=SERIES[pair],
              size=9)
    d.text(x0 - 0.1, y0 + cell / 2, f"head, D = {dim}:", size=9, color=MUTED, ha="right")
    d.text(x0 + dim * cell + 0.12, y0 + cell / 2, "colour = pair (i, i + D/2)", size=9, color=MUTED,
           ha="left")

    def dial(cx: float, cy: float, r: float, thetas, label: str, color: str, note: str) -> None:
        d.circle(cx, cy, r, kind="note")
        for p, a in enumerate(thetas):
            end = (cx + r * math.cos(a), cy + r * math.sin(a))
            d.arrow((cx, cy), end, color=color, lw=1.2)
            if note == "":
                d.text(cx + (r + 0.15) * math.cos(a), cy + (r + 0.15) * math.sin(a), f"p={p}", size=9,
                       color=MUTED)
        d.text(cx, cy - r - 0.2, label, size=9, color=INK)
        if note:
            d.text(cx, cy + r + 0.17, note, size=9, color=MUTED)

    fast, slow = theta[0].item(), theta[-1].item()
    dial(1.25, 1.25, 0.6, [p * fast for p in range(4)], f"pair 0: θ = {fast:.0f} rad per position", SERIES[0], "")
    dial(3.85, 1.25, 0.6, [p * slow for p in range(4)], f"pair {dim // 2 - 1}: θ = {slow:.3f} rad per position",
         SERIES[dim // 2 - 1], "p = 0 … 3: almost no turn")
    # the relative angle between a rotated query and key
    cx, cy, r = 6.15, 1.25, 0.6
    d.circle(cx, cy, r, kind="note")
    aq, ak = 2.1, 0.75
    d.arrow((cx, cy), (cx + r * math.cos(aq), cy + r * math.sin(aq)), color=ACCENT)
    d.arrow((cx, cy), (cx + r * math.cos(ak), cy + r * math.sin(ak)), color=SERIES[0])
    d.text(cx + (r + 0.2) * math.cos(aq), cy + (r + 0.15) * math.sin(aq), "q at m", size=9, color=ACCENT)
    d.text(cx + (r + 0.25) * math.cos(ak), cy + (r + 0.2) * math.sin(ak), "k at n", size=9, color=SERIES[0])
    arc = [(cx + 0.3 * math.cos(a), cy + 0.3 * math.sin(a)) for a in torch.linspace(ak, aq, 20).tolist()]
    d.line(arc, color=INK)
    d.text(cx, cy - 0.22, "(m − n)·θ", size=9, color=INK)
    d.text(cx, cy - r - 0.2, "only the difference matters", size=9, color=INK)
    d.text(3.65, 0.2, "query at position m turned by m·θ, key at n by n·θ: their dot product depends on m − n",
           size=9, color=MUTED)
    return d


def _tint(color: str, amount: float = 0.75) -> str:
    """`color` mixed with white (a light fill of the same hue)."""
    r, g, b = (int(color[i:i + 2], 16) for i in (1, 3, 5))
    return "#" + "".join(f"{round(c + (255 - c) * amount):02x}" for c in (r, g, b))


@diagram("03_gqa")
def gqa() -> Diagram:
    """Multi-head, grouped-query and multi-query attention: which key/value head each query head reads."""
    n_head = 8
    d = Diagram(7.3, 4.25, title="Query heads sharing key/value heads")
    rows = [("multi-head", n_head), ("grouped-query", 2), ("multi-query", 1)]
    w, gap, x0 = 0.42, 0.16, 1.75
    for r, (name, n_kv) in enumerate(rows):
        top = 3.35 - r * 1.12
        # which key/value head each query head uses, as the package computes it
        owner = repeat_kv(torch.arange(n_kv, dtype=torch.float32).view(1, n_kv, 1, 1), n_head // n_kv).flatten()
        group = n_head // n_kv
        kv_x = []
        for g in range(n_kv):
            first, last = x0 + g * group * (w + gap), x0 + (g * group + group - 1) * (w + gap) + w
            kv_x.append((first + last) / 2)
        for hq in range(n_head):
            kv = int(owner[hq])
            color = SERIES[kv % len(SERIES)]
            qx = x0 + hq * (w + gap)
            d.box(qx, top, w, 0.3, f"q{hq}", kind="tensor", size=9)
            d.line([(qx + w / 2, top), (kv_x[kv], top - 0.38)], color=color, lw=1.2)
        for g in range(n_kv):
            color = SERIES[g % len(SERIES)]
            bw = w if n_kv == n_head else 0.75
            d.box(kv_x[g] - bw / 2, top - 0.68, bw, 0.3, f"kv{g}", kind="tensor", size=9,
                  fill=_tint(color), edge=color)
        d.text(0.1, top - 0.17, name, size=10, ha="left", weight="bold")
        d.text(0.1, top - 0.42, f"H = {n_head}, Hkv = {n_kv}", size=9, color=MUTED, ha="left")
        ratio = "cache × 1" if n_kv == n_head else f"cache × 1/{n_head // n_kv}"
        d.text(7.2, top - 0.53, ratio, size=9, color=ACCENT if n_kv < n_head else MUTED, ha="right")
    d.text(3.65, 0.18, "query head h reads key/value head h // (H / Hkv) (repeat_kv)", size=9, color=MUTED)
    return d


@diagram("03_kv_cache")
def kv_cache() -> Diagram:
    """Generation with and without a KV cache: which positions' keys and values each step computes."""
    prompt, steps = 3, 4
    n = prompt + steps
    run_full = [prompt + s for s in range(steps + 1)]  # no cache: every step runs all the tokens so far
    run_cached = [prompt] + [1] * steps  # cache: the prompt once, then the newest token only
    new_fill, new_edge = STYLE["warn"][0], ACCENT
    empty = dict(kind="tensor", fill="#ffffff", edge="#b0b0b0", lw=0.6)
    d = Diagram(7.3, 3.6, title="The KV cache: compute each key and value once")
    cell, y0 = 0.34, 0.8
    labels = ["prefill"] + [f"step {s}" for s in range(1, steps + 1)]

    def panel(x0: float, title: str, cached: bool, counts) -> None:
        for r in range(steps + 1):
            length = prompt + r
            y = y0 + (steps - r) * cell
            for j in range(n):
                cx = x0 + j * cell
                if j >= length:
                    d.box(cx, y, cell, cell, **empty)
                elif cached and r > 0 and j < length - 1:
                    d.box(cx, y, cell, cell, kind="tensor", lw=0.8)
                else:
                    d.box(cx, y, cell, cell, kind="tensor", fill=new_fill, edge=new_edge, lw=0.8)
            d.text(x0 + n * cell + 0.1, y + cell / 2, f"{counts[r]}", size=9, color=MUTED, ha="left")
        top = y0 + (steps + 1) * cell
        d.text(x0 + n * cell / 2, top + 0.38, title, size=10, weight="bold")
        d.text(x0 + n * cell / 2, top + 0.13, "position →", size=9, color=MUTED)
        d.text(x0 + n * cell + 0.1, top + 0.13, "tokens", size=9, color=MUTED, ha="left")
        d.text(x0 + n * cell / 2, y0 - 0.2, f"{sum(counts)} tokens through the model", size=9,
               color=INK if cached else ACCENT)

    for r, label in enumerate(labels):
        d.text(0.8, y0 + (steps - r) * cell + cell / 2, label, size=9, color=MUTED, ha="right")
    panel(0.9, "without a cache", False, run_full)
    panel(4.2, "with a KV cache", True, run_cached)
    d.box(0.9, 0.15, 0.24, 0.22, kind="tensor", fill=new_fill, edge=new_edge, lw=0.8)
    d.text(1.22, 0.26, "k, v computed this step", size=9, color=INK, ha="left")
    d.box(3.35, 0.15, 0.24, 0.22, kind="tensor", lw=0.8)
    d.text(3.67, 0.26, "read from the cache", size=9, color=INK, ha="left")
    d.box(5.4, 0.15, 0.24, 0.22, **empty)
    d.text(5.72, 0.26, "not yet generated", size=9, color=INK, ha="left")
    return d
