"""Chapter 05's diagrams: the next-token loss, the training loop, AdamW, the schedule, checkpoints.

The numbers drawn come from the package: the book model's run (`minillm.book_config("cpu")`),
the `gpt2-124m` preset, the schedule `minillm.optim.lr_at` and the groups `minillm.optim.param_groups`.
"""

from __future__ import annotations

import torch

from minillm.config import preset_config
from minillm.diagrams import diagram
from minillm.diagrams.kit import ACCENT, INK, MUTED, SERIES, Diagram
from minillm.model import GPT
from minillm.optim import lr_at, param_groups
from minillm.pretrained import book_config

SPACE = "␣"  # a visible space


def _book():
    return book_config("cpu")


@diagram("05_next_token_loss")
def next_token_loss() -> Diagram:
    """The inputs are the window without its last token, the targets the window without its first:
    position t predicts token t + 1, and the loss is the mean of -log p(target) over all positions."""
    text = "to be or"
    chars = [SPACE if ch == " " else ch for ch in text]
    x, y = chars[:-1], chars[1:]  # the shift the loss is about
    d = Diagram(7.3, 3.55, title="The next-token loss: targets are the inputs shifted by one")
    x0, step, w, h = 1.75, 0.52, 0.42, 0.38

    def col(i: int) -> float:
        return x0 + i * step

    rows = {"window": 2.62, "x": 1.9, "y": 1.0, "loss": 0.3}
    d.text(x0 - 0.15, rows["window"] + h / 2, "text window\n(T + 1 tokens)", size=9, ha="right")
    d.text(x0 - 0.15, rows["x"] + h / 2, "inputs x", size=10, ha="right")
    d.text(x0 - 0.15, rows["y"] + h / 2, "targets y", size=10, ha="right")
    d.text(x0 - 0.15, rows["loss"] + h / 2, "−log p(y)", size=10, ha="right")
    for i, ch in enumerate(chars):
        d.box(col(i), rows["window"], w, h, ch, kind="data", size=11)
    xs = [d.box(col(i), rows["x"], w, h, ch, kind="tensor", size=11) for i, ch in enumerate(x)]
    ys = [d.box(col(i + 1), rows["y"], w, h, ch, kind="tensor", size=11) for i, ch in enumerate(y)]
    for i, (bx, by) in enumerate(zip(xs, ys)):
        d.arrow(bx.bottom, by.top, color=ACCENT if i == 2 else INK, lw=1.0)
        cell = d.box(col(i + 1), rows["loss"], w, h, f"ℓ{'₀₁₂₃₄₅₆₇₈₉'[i]}", kind="op", size=10)
        d.arrow(by.bottom, cell.top, lw=0.9)
    right = col(len(chars)) + 0.05
    d.text(right, rows["x"] + h / 2, "tokens[:-1]\n(B, T)", size=9, color=MUTED, ha="left")
    d.text(right, rows["y"] + h / 2, "tokens[1:]\n(B, T)", size=9, color=MUTED, ha="left")
    d.text(right, rows["loss"] + h / 2, "mean over B·T\n= loss L;\nPPL = eᴸ", size=9, ha="left")
    d.text(x0 - 0.15, (rows["x"] + rows["y"] + h) / 2, "GPT + softmax:\np(next | x₀ x₁ x₂)", size=9,
           color=ACCENT, ha="right")
    return d


@diagram("05_training_loop")
def training_loop() -> Diagram:
    """One optimizer step of `minillm.train.train`, repeated `max_steps` times (the book run's settings)."""
    cfg = _book()
    m = cfg.model
    d = Diagram(7.4, 3.3, title="The training loop (the book model's settings)")
    y, h, w, gap = 1.55, 0.75, 1.12, 0.3
    x0 = 0.2
    xs = [x0 + i * (w + gap) for i in range(5)]
    batch = d.box(xs[0], y, w, h, f"batch\n{cfg.batch_size} × {m.context_length}", kind="data", size=9,
                  shape="x, y: (B, T)", shape_side="above")
    fwd = d.box(xs[1], y, w, h, "forward\nGPT → loss", kind="layer", size=9)
    bwd = d.box(xs[2], y, w, h, "backward\nfills .grad", kind="op", size=9)
    clip = d.box(xs[3], y, w, h, f"clip ‖g‖\nto ≤ {cfg.grad_clip:g}", kind="op", size=9)
    opt = d.box(xs[4], y, w, h, "AdamW step\nzero_grad", kind="op", size=9)
    for a, b in ((batch, fwd), (fwd, bwd), (bwd, clip), (clip, opt)):
        d.arrow(a.right, b.left)
    sched = d.box(xs[4], 2.55, w, 0.45, "lr_at(step)", kind="op", size=9)
    d.arrow(sched.bottom, opt.top, label=None)
    d.text(xs[3] + w, 2.78, f"warmup {cfg.warmup_steps}, {cfg.schedule}\n{cfg.lr:g} → {cfg.min_lr:g}",
           size=9, color=MUTED, ha="right")
    # the way back, below
    d.line([(opt.bottom[0], y), (opt.bottom[0], 0.95), (batch.bottom[0] + 0.25, 0.95)], color=INK, lw=1.2)
    d.arrow((batch.bottom[0] + 0.25, 0.95), (batch.bottom[0] + 0.25, y), lw=1.2)
    d.text((batch.bottom[0] + opt.bottom[0]) / 2, 1.1, f"step += 1, until step = max_steps = {cfg.max_steps:,}",
           size=9, color=INK)
    ev = d.box(xs[2] - 0.35, 0.12, 2.55, 0.6, f"every {cfg.eval_interval} steps: validation loss,\n"
               "a sample, a checkpoint", kind="note", size=9)
    disk = d.box(xs[4] + 0.05, 0.12, w - 0.1, 0.6, "run folder", kind="data", size=9)
    d.arrow(ev.right, disk.left)
    d.line([(xs[2] + 0.9, 0.95), (xs[2] + 0.9, ev.y + ev.h)], color=MUTED, dashed=True)
    return d


@diagram("05_grad_accum")
def grad_accum() -> Diagram:
    """Gradient accumulation: k micro-batches, each loss divided by k, gradients summed in .grad, one step."""
    cfg = preset_config("gpt2-124m")
    k, b, t = cfg.grad_accum, cfg.batch_size, cfg.context_length
    d = Diagram(7.3, 3.4, title="Gradient accumulation: k micro-batches, one optimizer step")
    top, h = 1.95, 0.5
    grads = d.box(0.6, 0.6, 3.6, 0.5, ".grad = Σᵢ ∇(lossᵢ / k) = ∇ mean loss", kind="tensor", size=10)
    for i, (name, x) in enumerate((("1", 0.15), ("2", 1.65), ("k", 3.45))):
        mb = d.box(x, top + 0.55, 1.35, 0.45, f"micro-batch {name}", kind="data", size=9)
        fb = d.box(x, top - 0.2, 1.35, h, "forward,\nbackward(loss / k)", kind="op", size=9)
        d.arrow(mb.bottom, fb.top)
        d.arrow(fb.bottom, (grads.x + 0.6 + i * 1.25, grads.y + grads.h), lw=1.0)
    d.text(3.22, top + 0.3, "…", size=14)
    step = d.box(5.4, 0.6, 1.6, 0.5, "clip, AdamW:\none step", kind="op", size=10)
    d.arrow(grads.right, step.left, color=ACCENT)
    d.text(6.2, 2.35, f"the gpt2-124m preset:\nk = {k} micro-batches\nof {b} × {t:,} tokens\n"
           f"= {k * b * t:,} tokens\nper optimizer step", size=9, color=INK)
    d.text(3.65, 0.22, "the same gradient as one batch k times larger, in the memory of one micro-batch",
           size=9, color=MUTED)
    return d


@diagram("05_lr_schedule")
def lr_schedule() -> Diagram:
    """Linear warmup then a half cosine down to min_lr: the book run's schedule, computed by `lr_at`."""
    cfg = _book()
    total, warm, hi, lo = cfg.max_steps, cfg.warmup_steps, cfg.lr, cfg.min_lr
    d = Diagram(7.3, 3.4, title=f"Warmup + cosine: the book run's learning rate over {total:,} steps")
    ox, oy, W, H = 0.95, 0.55, 5.6, 2.2

    def px(step: float) -> float:
        return ox + W * step / total

    def py(lr: float) -> float:
        return oy + H * lr / (hi * 1.08)

    d.line([(ox, oy + H + 0.05), (ox, oy), (ox + W + 0.1, oy)], color=INK, lw=1.0)
    steps = list(range(0, total, 10)) + [total - 1]
    d.line([(px(s), py(lr_at(s, cfg.schedule, hi, total, warm, lo))) for s in steps], color=SERIES[0], lw=2.0)
    for value, name in ((hi, "max_lr"), (lo, "min_lr")):
        d.line([(ox, py(value)), (ox + W, py(value))], color=MUTED, lw=0.7, dashed=True)
        d.text(ox - 0.08, py(value), f"{value:g}", size=9, ha="right", color=INK)
        d.text(ox + W + 0.08, py(value), name, size=9, ha="left", color=MUTED)
    d.text(ox - 0.08, oy, "0", size=9, ha="right")
    mid = (total + warm) // 2
    mid_lr = lr_at(mid, cfg.schedule, hi, total, warm, lo)
    d.circle(px(mid), py(mid_lr), 0.05, kind="tensor")
    d.text(px(mid) + 0.12, py(mid_lr) + 0.08, f"half-way (step {mid:,}):\n(max + min) / 2 = {mid_lr:.3g}",
           size=9, ha="left")
    # warmup, magnified in words
    d.arrow((px(warm) + 0.9, py(hi * 0.55)), (px(warm / 2) + 0.02, py(hi * 0.55)), color=ACCENT)
    d.text(px(warm) + 0.95, py(hi * 0.55), f"warmup: {warm} steps, linear\nfrom {lr_at(0, cfg.schedule, hi, total, warm, lo):.0e}"
           f" to {hi:g}", size=9, ha="left", color=ACCENT)
    for s in (0, total // 2, total):
        d.line([(px(s), oy), (px(s), oy - 0.06)], color=INK)
        d.text(px(s), oy - 0.17, f"{s:,}", size=9)
    d.text(ox + W / 2, 0.12, "step", size=10)
    d.text(0.22, oy + H / 2, "learning rate", size=10, rotation=90)
    return d


@diagram("05_adamw_update")
def adamw_update() -> Diagram:
    """One AdamW update of a weight w from its gradient g: two moments, bias correction, decoupled decay."""
    cfg = _book()
    b1, b2, wd = cfg.beta1, cfg.beta2, cfg.weight_decay
    d = Diagram(7.4, 3.6, title="One AdamW update, per weight (the book run's β₁, β₂, λ)")
    g = d.box(0.2, 2.0, 0.75, 0.5, "g", kind="tensor", size=11, shape="gradient", shape_side="below")
    m = d.box(1.45, 2.45, 1.55, 0.5, f"m ← {b1:g} m + {1 - b1:.2g} g", kind="op", size=9)
    v = d.box(1.45, 1.55, 1.55, 0.5, f"v ← {b2:g} v + {1 - b2:.2g} g²", kind="op", size=9)
    d.arrow(g.right, m.left)
    d.arrow(g.right, v.left)
    mh = d.box(3.45, 2.45, 1.3, 0.5, f"m̂ = m / (1 − {b1:g}ᵗ)", kind="op", size=9)
    vh = d.box(3.45, 1.55, 1.3, 0.5, f"v̂ = v / (1 − {b2:g}ᵗ)", kind="op", size=9)
    d.arrow(m.right, mh.left)
    d.arrow(v.right, vh.left)
    u = d.box(5.2, 2.0, 1.15, 0.5, "m̂ / (√v̂ + ε)", kind="op", size=9)
    d.arrow(mh.right, u.left)
    d.arrow(vh.right, u.left)
    d.brace(3.45, 4.75, 1.42, "bias correction", below=True)
    d.text(4.1, 1.05, "(m, v start at 0;\nt = 1, 2, … )", size=9, color=MUTED)
    d.text(2.22, 3.15, "optimizer state: m, v, t (saved in checkpoints)", size=9, color=MUTED)
    # the weight's path
    w = d.box(0.2, 0.35, 0.75, 0.5, "w", kind="tensor", size=11)
    dec = d.box(1.45, 0.35, 2.0, 0.5, f"w ← w · (1 − η·{wd:g})", kind="warn", size=9)
    d.arrow(w.right, dec.left)
    d.text(2.45, 0.15, "decoupled decay: not through g", size=9, color=ACCENT)
    upd = d.box(4.6, 0.35, 1.75, 0.5, "w ← w − η · update", kind="op", size=9)
    d.arrow(dec.right, upd.left)
    d.arrow(u.bottom, upd.top, label="update", label_offset=(0.32, 0.0))
    out = d.box(6.6, 0.35, 0.65, 0.5, "w′", kind="tensor", size=11)
    d.arrow(upd.right, out.left)
    d.text(6.85, 2.25, "η: the\nschedule's\nlr", size=9, color=MUTED)
    return d


@diagram("05_decay_groups")
def decay_groups() -> Diagram:
    """Which of the book model's parameters decay (`param_groups`): matrices of linear layers, not the rest."""
    cfg = _book()
    with torch.device("meta"):
        model = GPT(cfg.model_config(cfg.vocab_size))
    names = {id(p): n for n, p in model.named_parameters()}
    decay, rest = param_groups(model, cfg.weight_decay)
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    total = sum(p.numel() for g in (decay, rest) for p in g["params"])

    def block0(group):
        return [names[id(p)].removeprefix("blocks.0.") for p in group["params"] if names[id(p)].startswith("blocks.0.")]

    def outside(group):
        return [names[id(p)] for p in group["params"] if not names[id(p)].startswith("blocks.")]

    d = Diagram(7.4, 4.3, title="Weight decay groups of the book model (param_groups)")
    top = 3.75
    panels = ((decay, f"weight_decay = {decay['weight_decay']:g}: decayed", 0.15, "layer"),
              (rest, f"weight_decay = {rest['weight_decay']:g}: not decayed", 3.8, "tensor"))
    for group, head, x, kind in panels:
        n = sum(p.numel() for p in group["params"])
        d.text(x + 1.7, top, head, size=10, weight="bold", color=ACCENT if kind == "layer" else INK)
        d.text(x + 1.7, top - 0.27, f"{len(group['params'])} tensors, {n:,} weights ({n / total:.0%})", size=9,
               color=MUTED)
        d.text(x + 0.05, top - 0.55, f"in each of the {cfg.model.n_layer} blocks:", size=9, ha="left")
        rows = [[f"{n} {shapes['blocks.0.' + n]}" for n in block0(group)]]
        rows = [r[i:i + 2] for r in rows for i in range(0, len(r), 2)] if len(rows[0]) > 4 else [[n] for n in rows[0]]
        y = top - 1.05
        for row in rows:
            for c, label in enumerate(row):
                bw = 3.3 if len(row) == 1 else 1.62
                d.box(x + c * (bw + 0.08), y, bw, 0.3, label.replace(",)", ")"), kind=kind, size=9)
            y -= 0.36
        extra = outside(group)
        if not extra:
            d.box(x, 0.15, 3.3, 0.75, "rule: tensors with ≥ 2 dimensions,\nexcept embedding tables (and a\n"
                  "head tied to one)", kind="note", size=9)
            continue
        y -= 0.05
        d.text(x + 0.05, y + 0.15, "outside the blocks:", size=9, ha="left")
        y -= 0.3
        labels = []
        for name in extra:
            label = f"{name} {shapes[name]}".replace(",)", ")")
            if name == "tok_emb.weight" and cfg.model.tie_embeddings:
                label += " = output head"
            labels.append(label)
        full = [lab for lab in labels if "," in lab.split("(")[-1]]  # matrices: a row each
        pairs = [lab for lab in labels if lab not in full]
        for row in [[lab] for lab in full] + [pairs[i:i + 2] for i in range(0, len(pairs), 2)]:
            for c, label in enumerate(row):
                bw = 3.3 if len(row) == 1 else 1.62
                d.box(x + c * (bw + 0.08), y, bw, 0.3, label, kind=kind, size=9)
            y -= 0.36
    return d


@diagram("05_checkpoint")
def checkpoint() -> Diagram:
    """What a checkpoint holds, and how it is committed: staging folder, fsync, rename, then `latest`."""
    d = Diagram(7.4, 3.9, title="A checkpoint: everything the rest of the run depends on")
    # in memory
    d.text(1.15, 3.35, "in memory after step N", size=10, weight="bold")
    mem = [("model weights", "layer"), ("AdamW m, v, t", "tensor"), ("step N (sets the lr)", "tensor"),
           ("torch RNG (dropout)", "tensor"), ("data RNG (next windows)", "tensor")]
    for i, (label, kind) in enumerate(mem):
        d.box(0.15, 2.75 - i * 0.5, 2.0, 0.38, label, kind=kind, size=9)
    # on disk
    d.text(4.1, 3.35, "checkpoints/.step_N.tmp/", size=10, weight="bold")
    d.box(2.75, 2.75, 2.7, 0.38, "model.safetensors, config.json", kind="data", size=9)
    d.box(2.75, 1.45, 2.7, 1.05, "trainer.pt\noptimizer state, step,\ntorch_rng, data_rng", kind="data", size=9)
    d.box(2.75, 0.85, 2.7, 0.38, "train_config.json, tokenizer", kind="data", size=9)
    d.arrow((2.15, 2.94), (2.75, 2.94))
    for i in range(1, 5):
        d.arrow((2.15, 2.94 - i * 0.5), (2.75, 1.97), lw=0.9)
    # the commit
    x = 5.75
    d.text(x + 0.75, 3.35, "commit", size=10, weight="bold")
    stepsc = ["fsync the files", "rename → step_N", "latest ← step_N", "prune old ones"]
    boxes = [d.box(x, 2.75 - i * 0.6, 1.5, 0.38, s, kind="op", size=9) for i, s in enumerate(stepsc)]
    for a, b in zip(boxes, boxes[1:]):
        d.arrow(a.bottom, b.top)
    d.box(2.65, 0.75, 2.9, 2.48, kind="note")
    d.arrow((5.55, boxes[0].left[1]), boxes[0].left)
    d.box(0.15, 0.12, 7.1, 0.48, "a crash at any moment: latest still names a complete checkpoint; "
          "resume=True restores all of it", kind="warn", size=9)
    return d
