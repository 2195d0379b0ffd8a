"""Chapter 07's diagrams: fine-tuning, from a classification head to instruction batches.

The numbers drawn come from the package: the book model's shapes (`book_config`),
trainable counts from `set_trainable` and `count_parameters` on a model of those
shapes (random weights: counts do not depend on them), prompts from
`format_prompt`, and targets from `instruction_collate`.
"""

from __future__ import annotations

import torch
from matplotlib import patches

from minillm.classify import GPTClassifier
from minillm.diagrams import diagram
from minillm.diagrams.kit import ACCENT, INK, MUTED, SERIES, STYLE, Diagram
from minillm.finetune import set_trainable
from minillm.instruct import IGNORE_INDEX, end_token, format_prompt, instruction_collate
from minillm.lora import GPT2_TARGETS, LoRAConfig, LoRALinear, count_parameters, inject_lora
from minillm.model import GPT
from minillm.pretrained import book_config
from minillm.synthetic import list_tasks


def _book_gpt_config():
    """The book model's `GPTConfig` (CPU scale), without loading its weights."""
    run = book_config("cpu")
    return run.model_config(run.vocab_size)


def _book_classifier():
    """A `GPTClassifier` with the book model's shapes (random weights, for counting parameters)."""
    torch.manual_seed(0)
    return GPTClassifier(GPT(_book_gpt_config()), num_classes=2)


def _percent(fraction: float) -> str:
    """A share as a percentage with two significant digits below 1% (0.024%), else one decimal (18.5%)."""
    return f"{100 * fraction:.2g}%" if fraction < 0.01 else f"{100 * fraction:.1f}%"


def _cell(d: Diagram, x: float, y: float, w: float, h: float, label: str, kind: str, size: float = 9,
          edge: str | None = None, lw: float = 1.0, color: str = INK) -> None:
    """One token cell: a small square-cornered box (tensor: blue, op: grey, warn: red)."""
    face, line, _ = STYLE[kind]

    d.ax.add_patch(patches.Rectangle((x, y), w, h, fc=face, ec=edge or line, lw=lw))
    if label:
        d.text(x + w / 2, y + h / 2, label, size=size, color=color)


@diagram("07_classifier_head")
def classifier_head() -> Diagram:
    """A GPT as a classifier: right-padded ids -> GPT -> h (B, T, C) -> last real token -> Linear C -> K."""
    cfg = _book_gpt_config()
    k = 2
    d = Diagram(7.3, 3.4, title="A classifier: read the last real token, then a K-way head")
    lengths = [5, 8]
    T = max(lengths)
    cw, ch = 0.3, 0.3
    x0, y0 = 0.55, 1.95
    d.text(x0 + T * cw / 2, y0 + 2 * ch + 0.2, "idx (B, T), padded on the right", size=9, color=MUTED)
    for b, n in enumerate(lengths):
        y = y0 + (1 - b) * ch
        for t in range(T):
            if t < n:
                last = t == n - 1
                _cell(d, x0 + t * cw, y, cw, ch, "", "tensor", edge=ACCENT if last else None, lw=2.0 if last else 1.0)
            else:
                _cell(d, x0 + t * cw, y, cw, ch, "pad", "op", size=9, color=MUTED)
        d.text(x0 - 0.06, y + ch / 2, f"b={b}", size=9, color=MUTED, ha="right")
    d.text(x0 + T * cw / 2, y0 - 0.18, f"lengths = {lengths}", size=9, color=MUTED)
    gpt = d.box(3.3, 1.9, 1.3, 0.7, "GPT blocks\n+ final norm", kind="layer", size=9)
    d.arrow((x0 + T * cw + 0.05, y0 + ch), gpt.left)
    h = d.box(4.9, 2.0, 0.7, 0.5, "h", kind="tensor", shape=f"(B, T, C={cfg.d_model})")
    d.arrow(gpt.right, h.left)
    old = d.box(5.95, 1.85, 1.25, 0.8, f"LM head\nC → V={cfg.vocab_size:,}\nremoved", kind="warn", size=9)
    d.arrow(h.right, old.left, color=ACCENT, dashed=True)
    pick = d.box(4.45, 0.55, 1.85, 0.6, "h[b, lengths[b] − 1]\nlast real token", kind="op", size=9)
    d.arrow((h.x + h.w / 2, h.y - 0.26), (h.x + h.w / 2, pick.y + pick.h), color=ACCENT)
    pooled = d.box(3.25, 0.6, 0.75, 0.5, "", kind="tensor", shape="(B, C)")
    d.arrow(pick.left, pooled.right)
    head = d.box(1.75, 0.55, 1.1, 0.6, f"Linear\nC → K={k}", kind="layer", size=9)
    d.arrow(pooled.left, head.right)
    logits = d.box(0.35, 0.6, 0.95, 0.5, "logits", kind="tensor", shape=f"(B, K={k})")
    d.arrow(head.left, logits.right)
    d.text(2.3, 0.18, "new, random at first", size=9, color=MUTED)
    d.text(5.4, 0.18, "causal: padding after it cannot change it", size=9, color=MUTED)
    return d


@diagram("07_lora")
def lora() -> Diagram:
    """LoRA beside a frozen weight: y = x Wᵀ + (α/r) x Aᵀ Bᵀ, with A (r × d_in) and B (d_out × r)."""
    cfg = _book_gpt_config()
    torch.manual_seed(0)
    qkv = GPT(cfg).blocks[0].attn.qkv
    r, alpha = 8, 16
    layer = LoRALinear(qkv, rank=r, alpha=alpha)
    d_in, d_out = qkv.in_features, qkv.out_features
    n_w = qkv.weight.numel()
    n_ab = layer.lora_A.numel() + layer.lora_B.numel()
    scale = LoRAConfig(rank=r, alpha=alpha).scaling
    d = Diagram(7.3, 3.5, title=f"LoRA on the book model's qkv layer (r = {r}, α = {alpha})")
    x = d.box(0.15, 1.4, 0.75, 0.5, "x", kind="tensor", shape=f"(…, d_in={d_in})")
    w = d.box(1.9, 2.05, 1.6, 0.8, f"W  (frozen)\n{d_out} × {d_in}\n{n_w:,} weights", kind="op", size=9)
    d.arrow(x.right, w.left)
    # A: r x d_in drawn short and wide; B: d_out x r drawn tall and thin (to scale in r against d)
    a = d.box(1.9, 0.55, 1.2, 0.32, f"A  {r} × {d_in}", kind="layer", size=9)
    d.arrow(x.right, a.left)
    mid = d.box(3.5, 0.55, 0.55, 0.32, "", kind="tensor", shape=f"(…, r={r})", shape_side="below")
    d.arrow(a.right, mid.left)
    b = d.box(4.35, 0.3, 0.34, 0.82, "B", kind="layer", size=9)
    d.text(4.52, 1.27, f"{d_out} × {r}", size=9, color=MUTED)
    d.arrow(mid.right, b.left)
    sc = d.circle(5.2, 0.71, 0.22, "×", size=11)
    d.text(5.2, 0.3, f"α/r = {scale:g}", size=9, color=MUTED)
    d.arrow(b.right, sc.left)
    add = d.circle(5.65, 1.65, 0.2, "+", size=12)
    d.arrow(w.right, (add.x + 0.05, add.y + add.h - 0.05))
    d.arrow(sc.top, add.bottom)
    y = d.box(6.2, 1.4, 0.85, 0.5, "y", kind="tensor", shape=f"(…, d_out={d_out})")
    d.arrow(add.right, y.left)
    d.text(0.15, 0.6, f"A and B: {n_ab:,} numbers\n= r (d_in + d_out),\n"
                       f"{100 * n_ab / n_w:.1f}% of W", size=9, color=ACCENT, ha="left")
    d.text(4.55, 2.7, "B starts at 0: the adapted\nlayer starts equal to W", size=9, color=MUTED, ha="left")
    d.text(4.55, 2.2, "merge: W' = W + (α/r) B A", size=9, color=MUTED, ha="left")
    return d


@diagram("07_freezing")
def freezing() -> Diagram:
    """Which parts train under `set_trainable`: head only, the last 1 or 2 blocks, all blocks."""
    model = _book_classifier()
    n = model.gpt.config.n_layer
    choices = [("head", "head only"), (1, "+ last block"), (2, "+ last 2 blocks"), (n, f"all {n} blocks")]
    rows = ["embeddings"] + [f"block {i}" for i in range(n)] + ["final norm", "head C → K"]
    d = Diagram(7.2, 4.1, title="Freezing: which parameters train (set_trainable)")
    col_w, row_h, x0, top = 1.28, 0.36, 1.75, 3.35
    for j, (layers, name) in enumerate(choices):
        counts = set_trainable(model, layers)
        gpt = model.gpt
        flags = [gpt.tok_emb.weight.requires_grad]
        flags += [next(b.parameters()).requires_grad for b in gpt.blocks]
        flags += [gpt.norm_f.weight.requires_grad, gpt.lm_head.weight.requires_grad]
        cx = x0 + j * col_w
        d.text(cx + (col_w - 0.12) / 2, top + 0.22, name, size=9, weight="bold")
        for i, (row, trains) in enumerate(zip(rows, flags)):
            y = top - (i + 1) * row_h
            d.box(cx, y, col_w - 0.12, row_h - 0.06, "trains" if trains else "frozen",
                  kind="layer" if trains else "op", size=9, label_color=INK if trains else MUTED)
        d.text(cx + (col_w - 0.12) / 2, top - (len(rows) + 1) * row_h + 0.12,
               f"{counts['trainable']:,}\n({_percent(counts['fraction'])})", size=9)
    for i, row in enumerate(rows):
        d.text(x0 - 0.12, top - (i + 1) * row_h + (row_h - 0.06) / 2, row, size=9, ha="right")
    d.text(x0 - 0.12, top - (len(rows) + 1) * row_h + 0.12, "trainable\nparameters", size=9, ha="right",
           color=MUTED)
    d.text(3.6, 0.12, "tokens enter at the top; frozen early blocks keep their pretrained features", size=9,
           color=MUTED)
    return d


@diagram("07_templates")
def templates() -> Diagram:
    """One list-task row in the Alpaca template and in the chat template; the response is what is learned."""
    row = list_tasks(1, seed=0)[0]
    d = Diagram(7.3, 3.9, title="One example, two templates: prompt, then the response")
    boxes = []
    for x, name, template in ((0.15, "Alpaca", "alpaca"), (4.45, "chat", "chat")):
        end = end_token(template)
        prompt = format_prompt(row, template).replace("\n\n", "\n")
        lines = prompt.rstrip("\n").split("\n")
        if template == "alpaca":  # wrap the long preamble
            words = lines[0].split()
            lines = [" ".join(words[:6]), " ".join(words[6:11]), " ".join(words[11:])] + lines[1:]
        w = 3.85 if template == "alpaca" else 2.7
        h = 0.23 * len(lines) + 0.2
        top = 3.3
        d.text(x, top + 0.12, f"{name} template", size=10, weight="bold", ha="left")
        box = d.box(x, top - h, w, h, "", kind="data")
        for i, line in enumerate(lines):
            special = line.startswith("<|") or line.startswith("###")
            d.text(x + 0.1, top - 0.2 - 0.23 * i, line, size=9, ha="left", color=SERIES[3] if special else INK)
        resp = d.box(x, top - h - 0.5, w, 0.4, "", kind="tensor")
        d.text(x + 0.1, resp.y + 0.2, f"{row['output']}  {end}", size=10, ha="left", color=ACCENT, weight="bold")
        d.text(x + w - 0.08, resp.y + 0.2, "response", size=9, ha="right", color=MUTED)
        boxes.append((box, resp))
    d.text(0.15, 0.28, "prompt: read by the model, masked out of the loss;  response + end token: the targets.",
           size=9, color=MUTED, ha="left")
    d.text(4.5, 1.1, "<|user|>, <|assistant|>, <|end|>:\none new token each, no text\ncan forge them",
           size=9, color=SERIES[3], ha="left")
    return d


@diagram("07_prompt_mask")
def prompt_mask() -> Diagram:
    """One example's inputs and targets: targets are the ids shifted by one; prompt targets become -100."""
    names = ["p0", "p1", "p2", "p3", "p4", "r0", "r1", "end"]
    n_prompt = 5
    ids = list(range(len(names)))
    out = instruction_collate([(ids, n_prompt)], pad_id=-1, mask_prompt=True)
    inputs, targets = out["idx"][0].tolist(), out["targets"][0].tolist()
    d = Diagram(7.2, 3.2, title="The prompt mask: targets are the next tokens, prompt targets are −100")
    cw, chh, x0 = 0.66, 0.38, 1.45
    rows_y = {"ids": 1.95, "inputs": 1.25, "targets": 0.6}
    for t, i in enumerate(ids):
        _cell(d, x0 + t * cw, rows_y["ids"], cw - 0.04, chh, names[i],
              "tensor" if i >= n_prompt else "op", size=9)
    for t, i in enumerate(inputs):
        _cell(d, x0 + t * cw, rows_y["inputs"], cw - 0.04, chh, names[i], "tensor" if i >= n_prompt else "op")
    for t, i in enumerate(targets):
        if i == IGNORE_INDEX:
            _cell(d, x0 + t * cw, rows_y["targets"], cw - 0.04, chh, "−100", "warn", color=ACCENT)
        else:
            _cell(d, x0 + t * cw, rows_y["targets"], cw - 0.04, chh, names[i], "tensor", edge=SERIES[2], lw=2)
    labels = {"ids": "ids", "inputs": "inputs = ids[:-1]", "targets": "targets = ids[1:]"}
    for key, y in rows_y.items():
        d.text(x0 - 0.1, y + chh / 2, labels[key], size=9, ha="right")
    d.brace(x0, x0 + n_prompt * cw - 0.04, rows_y["ids"] + chh + 0.1, f"prompt ({n_prompt} tokens)", below=False)
    d.brace(x0 + n_prompt * cw, x0 + len(ids) * cw - 0.04, rows_y["ids"] + chh + 0.1, "response + end", below=False)
    kept = sum(t != IGNORE_INDEX for t in targets)
    d.text(x0 + len(targets) * cw + 0.1, rows_y["targets"] + chh / 2, f"{kept} of {len(targets)}\ncount",
           size=9, color=SERIES[2], ha="left")
    d.text(3.6, 0.22, f"position {n_prompt - 1} reads the last prompt token and must predict the first response "
                      "token: it counts", size=9, color=MUTED)
    return d


@diagram("07_batch_padding")
def batch_padding() -> Diagram:
    """A collated instruction batch: padded to its longest row; targets -100 at prompt and padding."""
    examples = [(list(range(10, 16)), 3), (list(range(20, 29)), 5), (list(range(30, 34)), 2)]  # (ids, prompt length)
    out = instruction_collate(examples, pad_id=0, max_length=_book_gpt_config().context_length)
    idx, targets = out["idx"].tolist(), out["targets"].tolist()
    B, T = len(idx), len(idx[0])
    d = Diagram(7.3, 2.75, title=f"A batch of {B} examples, padded to its longest (T = {T}), not to the context")
    cw, chh = 0.33, 0.34
    xs = {"idx": 0.75, "targets": 4.15}
    y0 = 0.75
    for name, grid in (("idx", idx), ("targets", targets)):
        x0 = xs[name]
        d.text(x0 + T * cw / 2, y0 + B * chh + 0.2, f"{name} (B, T)", size=10, weight="bold")
        for b in range(B):
            n_real = len(examples[b][0]) - 1
            n_prompt = examples[b][1]
            y = y0 + (B - 1 - b) * chh
            for t in range(T):
                v = grid[b][t]
                if t >= n_real:
                    kind, label, color = ("op", "pad", MUTED) if name == "idx" else ("warn", "pad", ACCENT)
                elif name == "targets" and v == IGNORE_INDEX:
                    kind, label, color = "warn", "", ACCENT
                elif name == "idx" and t < n_prompt:
                    kind, label, color = "op", "p", INK
                else:
                    kind, label, color = "tensor", "r" if name == "idx" else "✓", INK
                _cell(d, x0 + t * cw, y, cw, chh, label, kind, size=9, color=color)
            if name == "idx":
                d.text(x0 - 0.08, y + chh / 2, f"row {b}", size=9, color=MUTED, ha="right")
    legend = [("op", "p: prompt, pad: padding"), ("tensor", "r: response, ✓: counted target"),
              ("warn", "−100: ignored")]
    for (kind, text), x in zip(legend, (0.15, 2.35, 5.2)):
        _cell(d, x, 0.2, 0.22, 0.22, "", kind)
        d.text(x + 0.3, 0.31, text, size=9, ha="left", color=ACCENT if kind == "warn" else INK)
    return d


@diagram("07_tradeoffs")
def tradeoffs() -> Diagram:
    """Full fine-tuning, freezing and LoRA on the book model: trainable parameters and their training memory."""
    model = _book_classifier()
    rows = []
    for layers, name in (("all", "full fine-tuning"), (1, "last block + head"), ("head", "head only (probe)")):
        rows.append((name, set_trainable(model, layers)["trainable"]))
    lora_model = _book_classifier()
    inject_lora(lora_model, LoRAConfig(rank=8, alpha=16, targets=GPT2_TARGETS))
    lora_model.head.requires_grad_(True)
    rows.insert(1, ("LoRA r=8 + head", count_parameters(lora_model)["trainable"]))
    full = rows[0][1]
    d = Diagram(7.3, 2.9, title="What each choice trains on the book model")
    x_bar, bar_w, top, row_h = 1.95, 2.6, 2.2, 0.45
    d.text(x_bar, top + 0.2, "trainable parameters (bar: share of full)", size=9, color=MUTED, ha="left")
    d.text(6.55, top + 0.2, "grads + AdamW", size=9, color=MUTED)
    for i, (name, n) in enumerate(rows):
        y = top - (i + 1) * row_h
        d.text(x_bar - 0.1, y + 0.17, name, size=9, ha="right")
        d.box(x_bar, y + 0.02, bar_w, 0.3, "", kind="tensor", fill="#f6f6f6", edge=MUTED)
        d.box(x_bar, y + 0.02, max(bar_w * n / full, 0.02), 0.3, "", kind="tensor", fill=STYLE["layer"][0],
              edge=STYLE["layer"][1])
        d.text(x_bar + bar_w + 0.1, y + 0.17, f"{n:,}  ({_percent(n / full)})", size=9, ha="left")
        memory = 12 * n
        d.text(6.55, y + 0.17, f"{memory / 2**20:.2f} MiB" if memory >= 2**20 / 10 else f"{memory / 2**10:.1f} KiB",
               size=9)
    d.text(3.65, 0.12, "gradients + AdamW's two moments: 12 bytes per trainable parameter (fp32)",
           size=9, color=MUTED)
    return d
