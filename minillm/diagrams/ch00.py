"""Chapter 00's diagrams: the map of the book and the arithmetic of what training costs.

Every number drawn here is computed from the package when the diagram is drawn:
parameter counts from a `GPT` built on the ``meta`` device (shapes, no memory),
costs from `minillm.scaling`, the book model's settings from `book_config`.
"""

from __future__ import annotations

import importlib

import torch

from minillm import scaling
from minillm.config import preset_config
from minillm.diagrams import diagram
from minillm.diagrams.kit import ACCENT, MUTED, Diagram
from minillm.model import GPT
from minillm.pretrained import book_config

# The chapter's assumptions for the cost example (chapter 00 sets the same values).
MFU = 0.4
H100_PRICE = 2.50  # dollars per GPU-hour
PUE = 1.2


def _parameters(config) -> int:
    """Parameters of a GPT with `config`, counted on the meta device (no memory, no time)."""
    with torch.device("meta"):
        return GPT(config).num_parameters()


def _book_run(scale: str = "cpu") -> tuple[object, int, int]:
    """(TrainConfig, parameters, training tokens) of the book model at `scale`."""
    run = book_config(scale)
    n = _parameters(run.model_config(run.vocab_size))
    return run, n, run.tokens_per_step * run.max_steps


def _short(x: float) -> str:
    """1.07e6 -> '1.07M', 6.1e9 -> '6.1B', 1.4e12 -> '1.4T' (three significant digits)."""
    for limit, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if x >= limit:
            return f"{x / limit:.3g}{suffix}"
    return f"{x:.3g}"


@diagram("00_four_steps")
def four_steps() -> Diagram:
    """The four steps of building an LLM (data, architecture, training at scale, evaluation) and their chapters."""
    d = Diagram(7.2, 2.6, title="Building an LLM: four steps, nine chapters")
    steps = [
        ("1. Data", "data", ["collect, filter,", "deduplicate, redact,", "decontaminate"], "chapter 01"),
        ("2. Architecture", "layer", ["tokens, attention,", "transformer blocks,", "next-token head"],
         "chapters 02-04"),
        ("3. Training", "op", ["pretrain, scale out", "over many GPUs,", "fine-tune"], "chapters 05-07"),
        ("4. Evaluation", "tensor", ["perplexity,", "benchmarks,", "error bars"], "chapter 08"),
    ]
    w, gap, x0, y = 1.45, 0.37, 0.2, 0.55
    boxes = []
    for i, (name, kind, lines, chapters) in enumerate(steps):
        x = x0 + i * (w + gap)
        b = d.box(x, y, w, 1.2, "", kind=kind)
        d.text(x + w / 2, y + 0.98, name, size=10, weight="bold")
        for k, line in enumerate(lines):
            d.text(x + w / 2, y + 0.7 - k * 0.19, line, size=9)
        d.text(x + w / 2, y - 0.2, chapters, size=9, color=MUTED)
        boxes.append(b)
    for a, b in zip(boxes, boxes[1:]):
        d.arrow(a.right, b.left)
    top, back = y + 1.2, y + 1.42
    d.line([(boxes[-1].x + w / 2, top), (boxes[-1].x + w / 2, back), (boxes[0].x + w / 2, back)],
           color=ACCENT, dashed=True)
    d.arrow((boxes[0].x + w / 2, back), (boxes[0].x + w / 2, top), color=ACCENT)
    d.text(3.6, back + 0.13, "what evaluation finds sends you back to the data", size=9, color=ACCENT)
    return d


@diagram("00_language_model")
def language_model() -> Diagram:
    """What a language model does: token ids in, a distribution over the next token out (book model's shapes)."""
    run, n, _ = _book_run("cpu")
    cfg = run.model_config(run.vocab_size)
    V, T = cfg.vocab_size, cfg.context_length
    d = Diagram(7.2, 2.5, title="A language model predicts the next token")
    text = d.box(0.1, 1.2, 0.9, 0.55, "text", kind="data")
    d.text(0.55, 0.95, "def add(a, b):", size=9, color=MUTED)
    ids = d.box(1.75, 1.2, 0.95, 0.55, "token ids", kind="tensor", shape=f"(B, T), T ≤ {T}")
    d.arrow(text.right, ids.left, label="tokenizer", label_offset=(0, 0.16))
    model = d.box(2.98, 1.05, 1.4, 0.85, f"GPT\n{n / 1e6:.2f}M parameters", kind="layer", size=9)
    d.arrow(ids.right, model.left)
    logits = d.box(4.65, 1.2, 0.95, 0.55, "logits", kind="tensor", shape=f"(B, T, {V:,})")
    d.arrow(model.right, logits.left)
    probs = d.box(5.95, 1.2, 1.1, 0.55, "softmax", kind="op")
    d.arrow(logits.right, probs.left)
    d.text(6.5, 0.95, "P(next token)", size=9, color=MUTED)
    d.text(6.5, 0.75, f"over {V:,} tokens", size=9, color=MUTED)
    d.text(3.6, 0.3, "Position t sees tokens 1..t only; training makes the true next token likely.",
           size=9, color=ACCENT)
    d.text(3.6, 2.08, f"the book model: vocabulary {V:,}, context {T}, width {cfg.d_model}, {cfg.n_layer} blocks",
           size=9, color=MUTED)
    return d


@diagram("00_six_flops")
def six_flops() -> Diagram:
    """Why training costs 6 FLOPs per parameter per token: one product forward, two backward."""
    d = Diagram(7.2, 2.7, title="6 FLOPs per parameter per token: y = x W, forward and backward")
    rows = [
        ("forward", "y = x W", "x", "W", "y", "2"),
        ("backward: input", "∂L/∂x = ∂L/∂y Wᵀ", "∂L/∂y", "Wᵀ", "∂L/∂x", "2"),
        ("backward: weights", "∂L/∂W = xᵀ ∂L/∂y", "xᵀ", "∂L/∂y", "∂L/∂W", "2"),
    ]
    for i, (name, formula, a, b, out, flops) in enumerate(rows):
        y = 1.8 - i * 0.6
        d.text(0.15, y + 0.2, name, size=9, ha="left", color=MUTED)
        d.box(1.55, y, 0.75, 0.4, a, kind="tensor", size=9)
        d.text(2.45, y + 0.2, "×", size=11)
        q = d.box(2.6, y, 0.75, 0.4, b, kind="layer" if "W" in b else "tensor", size=9)
        r = d.box(3.75, y, 0.8, 0.4, out, kind="tensor" if out != "∂L/∂W" else "accent", size=9)
        d.arrow(q.right, r.left)
        d.text(4.7, y + 0.2, formula, size=9, ha="left")
        d.text(6.95, y + 0.2, f"{flops} · N", size=10, ha="right", weight="bold")
    d.line([(5.9, 0.45), (7.0, 0.45)], color=MUTED)
    total = scaling.flops_per_token(1)
    d.text(6.95, 0.25, f"{total:g} · N per token", size=10, ha="right", weight="bold", color=ACCENT)
    d.text(0.15, 0.25, "each product: one multiply and one add per weight", size=9, ha="left", color=MUTED)
    return d


@diagram("00_cost_chain")
def cost_chain() -> Diagram:
    """From parameters and tokens to FLOPs, GPU-hours, dollars and energy (the gpt2-124m preset on one H100)."""
    run = preset_config("gpt2-124m")
    n = _parameters(run.model_config(run.model.vocab_size))
    tokens = run.tokens_per_step * run.max_steps
    est = scaling.estimate(n, tokens, "H100", utilization=MFU, price_per_gpu_hour=H100_PRICE, pue=PUE)
    peak = scaling.peak_flops("H100", "bf16")
    d = Diagram(7.3, 2.75, title="What a training run costs: the gpt2-124m preset on one H100")
    nb = d.box(0.1, 1.35, 1.2, 0.7, f"N = {n / 1e6:.1f}M\nparameters", kind="layer", size=9)
    db = d.box(0.1, 0.35, 1.2, 0.7, f"D = {tokens / 1e9:.2f}B\ntokens", kind="data", size=9)
    fl = d.box(1.85, 0.85, 1.3, 0.7, f"C = 6 N D\n{est.flops:.2e} FLOPs", kind="op", size=9)
    d.arrow(nb.right, fl.left)
    d.arrow(db.right, fl.left)
    gh = d.box(3.95, 0.85, 1.3, 0.7, f"{est.gpu_hours * 60:.0f} GPU-minutes", kind="tensor", size=9)
    d.arrow(fl.right, gh.left, label=f"÷ {peak / 1e12:g} TFLOP/s", label_offset=(0, 0.5))
    d.text((fl.right[0] + gh.left[0]) / 2, 0.62, f"÷ MFU {MFU:.0%}", size=9, color=MUTED)
    usd = d.box(6.0, 1.45, 1.2, 0.55, f"${est.dollars:.2f}", kind="accent", size=10)
    kwh = d.box(6.0, 0.4, 1.2, 0.55, f"{est.kwh:.2f} kWh", kind="accent", size=10)
    d.arrow(gh.right, usd.left)
    d.arrow(gh.right, kwh.left)
    d.text(6.6, 2.15, f"× ${H100_PRICE:.2f} per hour", size=9, color=MUTED)
    d.text(6.55, 0.2, f"× {scaling.DEVICES['H100'].watts:.0f} W × PUE {PUE}", size=9, color=MUTED)
    return d


@diagram("00_chinchilla")
def chinchilla() -> Diagram:
    """Chinchilla's rule: about 20 tokens per parameter, and how far from it known runs and the book model are."""
    ratio = scaling.CHINCHILLA_TOKENS_PER_PARAM
    _, n_book, d_book = _book_run("cpu")
    runs = [  # name, parameters, tokens (published, as in chapter 00)
        ("GPT-3", 175e9, 300e9),
        ("Chinchilla", 70e9, scaling.chinchilla_tokens(70e9)),
        ("book model (CPU)", n_book, d_book),
    ]
    d = Diagram(7.2, 2.75, title=f"Compute-optimal: about {ratio:g} tokens per parameter")
    cols = (0.15, 1.65, 3.05, 4.45, 5.75)
    for x, head in zip(cols, ("run", "N parameters", f"D = {ratio:g} N", "D trained", "D / N")):
        d.text(x, 2.2, head, size=9, ha="left", color=MUTED)
    for i, (name, n, tokens) in enumerate(runs):
        y = 1.6 - i * 0.5
        d.text(cols[0], y + 0.18, name, size=9, ha="left")
        d.box(cols[1], y, 1.2, 0.36, f"{_short(n)}", kind="layer", size=9)
        d.box(cols[2], y, 1.2, 0.36, f"{_short(scaling.chinchilla_tokens(n))}", kind="note", size=9)
        d.box(cols[3], y, 1.2, 0.36, f"{_short(tokens)}", kind="data", size=9)
        per = tokens / n
        verdict = "fewer" if per < ratio * 0.9 else "more" if per > ratio * 1.1 else "optimal"
        d.text(cols[4], y + 0.18, f"{per:.3g}  ({verdict})", size=10, ha="left",
               color=ACCENT if verdict == "fewer" else "#222222")
    n_opt, d_opt = scaling.compute_optimal(scaling.training_flops(175e9, 300e9))
    d.text(3.6, 0.25, f"GPT-3's compute spent optimally: {_short(n_opt)} parameters on {_short(d_opt)} tokens",
           size=9, color=MUTED)
    return d


@diagram("00_book_journey")
def book_journey() -> Diagram:
    """The book model's journey through the chapters: corpus, tokenizer, model, pretraining, fine-tuning, evaluation."""
    run, n, tokens = _book_run("cpu")
    cfg = run.model_config(run.vocab_size)
    d = Diagram(7.2, 3.0, title="One small model through the book")
    stages = [
        ("01", "corpus", "data", "Python standard\nlibrary, curated"),
        ("02", "tokenizer", "op", f"byte-level BPE,\n{run.vocab_size:,} tokens"),
        ("03-04", "model", "layer", f"GPT, {cfg.n_layer} blocks,\nwidth {cfg.d_model}"),
        ("05", "pretraining", "op", f"{tokens / 1e6:.2f}M tokens,\n{run.max_steps:,} steps"),
        ("07", "fine-tuning", "layer", "classifier, LoRA,\ninstructions"),
        ("08", "evaluation", "tensor", "perplexity,\nbenchmarks"),
    ]
    w, h, gap = 2.0, 0.75, 0.35
    boxes = []
    for i, (chapter, name, kind, detail) in enumerate(stages):
        col, row = i % 3, i // 3
        x = 0.3 + col * (w + gap)
        y = 1.65 - row * 1.25
        b = d.box(x, y, w, h, "", kind=kind)
        d.text(x + 0.1, y + h - 0.17, f"{chapter} · {name}", size=9, ha="left", weight="bold")
        d.text(x + w / 2, y + 0.25, detail, size=9)
        boxes.append(b)
    d.arrow(boxes[0].right, boxes[1].left)
    d.arrow(boxes[1].right, boxes[2].left)
    d.line([(boxes[2].bottom[0], boxes[2].y), (boxes[2].bottom[0], 1.25), (boxes[0].bottom[0], 1.25)],
           color="#222222", lw=1.2)
    d.arrow((boxes[0].bottom[0], 1.25), boxes[3].top)
    d.arrow(boxes[3].right, boxes[4].left)
    d.arrow(boxes[4].right, boxes[5].left)
    d.text(3.6, 0.15, f"{n:,} parameters: trained on two CPU cores in chapter 05", size=9, color=ACCENT)
    return d


@diagram("00_package_map")
def package_map() -> Diagram:
    """The chapters and the `minillm` modules each one builds (the package the rest of the book imports)."""
    d = Diagram(7.2, 3.3, title="Chapters and the package modules they build")
    groups = [
        ("00 introduction", ["scaling"]),
        ("01 data", ["quality", "dedup", "pii", "curation", "corpus"]),
        ("02 tokenization", ["tokenizer", "tokens"]),
        ("03 attention", ["attention"]),
        ("04 GPT model", ["layers", "model", "generate"]),
        ("05 pretraining", ["optim", "train", "checkpoint"]),
        ("06 scaling out", ["memory", "distributed", "strategy"]),
        ("07 fine-tuning", ["classify", "lora", "instruct"]),
        ("08 evaluation", ["evaluate", "tasks", "metrics"]),
    ]
    for _, modules in groups:  # every module drawn exists in the package
        for m in modules:
            importlib.import_module(f"minillm.{m}")
    for i, (chapter, modules) in enumerate(groups):
        y = 2.65 - i * 0.29
        d.text(0.2, y, chapter, size=9, ha="left")
        d.arrow((1.55, y), (1.85, y), color=MUTED)
        x = 1.95
        for m in modules:
            w = 0.16 + 0.085 * len(m)
            d.box(x, y - 0.11, w, 0.22, "", kind="layer" if i else "op", lw=0.8)
            d.text(x + w / 2, y, m, size=9)
            x += w + 0.08
    d.text(5.9, 1.5, "import minillm", size=10, weight="bold", color=ACCENT)
    d.text(5.9, 1.25, "one tested package;", size=9, color=MUTED)
    d.text(5.9, 1.05, "each chapter writes a", size=9, color=MUTED)
    d.text(5.9, 0.85, "small version first", size=9, color=MUTED)
    return d
