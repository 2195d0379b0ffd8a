"""Chapter 08's diagrams: how a model is scored, and how sure a score is.

Every number drawn is computed here from the package: the sliding windows by
`minillm.evaluate.sliding_windows`, the standard errors by
`minillm.evaluate.binomial_stderr`, the n-gram overlaps by `minillm.metrics.rouge`,
the parsed grades by `minillm.metrics.parse_score`, the shared n-grams by
`minillm.dedup.Decontaminator`. Log-probabilities in the scoring diagrams are a
toy example (labelled so); their sums, per-byte values and picks are computed.
"""

from __future__ import annotations

from minillm.dedup import Decontaminator, words
from minillm.diagrams import diagram
from minillm.diagrams.kit import ACCENT, INK, MUTED, SERIES, Diagram
from minillm.evaluate import binomial_stderr, sliding_windows
from minillm.metrics import parse_score, rouge, rouge_tokens
from minillm.pretrained import book_config
from minillm.tasks import MCExample
from minillm.tasks import letter_prompt as prompt_of

#: The toy multiple-choice question of the scoring diagrams: (continuation tokens, their log-probabilities).
TOY_CONTEXT = "Question: Which gas do plants take in?\nAnswer:"
TOY_CHOICES = {
    "A": ([" oxygen"], [-2.1]),
    "B": ([" carbon", " dioxide"], [-2.6, -0.3]),
    "C": ([" water"], [-2.4]),
}
TOY_LABEL = "B"


def _toy_scores() -> dict[str, tuple[float, int, float]]:
    """letter -> (summed log-likelihood, UTF-8 bytes of the continuation, per byte)."""
    out = {}
    for letter, (tokens, logps) in TOY_CHOICES.items():
        ll, n_bytes = sum(logps), len("".join(tokens).encode("utf-8"))
        out[letter] = (ll, n_bytes, ll / n_bytes)
    return out


@diagram("08_mc_loglik")
def mc_loglik() -> Diagram:
    """Multiple choice by log-likelihood: context + each continuation -> summed log-probs -> argmax (acc, acc_norm)."""
    scores = _toy_scores()
    acc = max(scores, key=lambda k: scores[k][0])
    acc_norm = max(scores, key=lambda k: scores[k][2])
    d = Diagram(7.4, 3.5, title="Multiple choice by log-likelihood (toy log-probabilities)")
    ctx = d.box(0.1, 1.15, 1.45, 0.95, "Question: Which\ngas do plants\ntake in?\nAnswer:", kind="data", size=9)
    d.text(0.82, 0.95, "context c", size=9, color=MUTED)
    d.text(2.75, 2.85, "continuation tokens, log p(token | c, earlier tokens)", size=9, color=MUTED)
    d.text(4.95, 2.85, "sum ℓ", size=9, color=MUTED)
    d.text(5.9, 2.85, "ℓ / bytes", size=9, color=MUTED)
    rows = {"A": 2.3, "B": 1.45, "C": 0.6}
    for letter, y in rows.items():
        tokens, logps = TOY_CHOICES[letter]
        ll, n_bytes, per_byte = scores[letter]
        d.arrow(ctx.right, (1.8, y + 0.2), color=MUTED)
        d.text(1.92, y + 0.2, letter, size=10, weight="bold")
        x = 2.08
        for token, lp in zip(tokens, logps):
            w = 0.12 + 0.1 * len(token)
            t = d.box(x, y, w, 0.4, repr(token)[1:-1].replace(" ", "␣"), kind="tensor", size=9)
            d.text(t.center[0], y - 0.13, f"{lp:+.1f}", size=9, color=MUTED)
            x += w + 0.06
        s = d.box(4.6, y + 0.02, 0.7, 0.36, f"{ll:+.1f}", kind="op", size=9)
        d.arrow((x, y + 0.2), s.left, color=MUTED)
        n = d.box(5.5, y + 0.02, 0.8, 0.36, f"{per_byte:+.3f}", kind="op", size=9)
        d.arrow(s.right, n.left, color=MUTED)
        d.text(5.9, y - 0.1, f"÷ {n_bytes} bytes", size=9, color=MUTED)
        marks = []
        if letter == acc:
            marks.append(("acc", ACCENT if acc != TOY_LABEL else SERIES[2]))
        if letter == acc_norm:
            marks.append(("acc_norm", ACCENT if acc_norm != TOY_LABEL else SERIES[2]))
        for k, (name, color) in enumerate(marks):
            d.text(6.45, y + 0.2 - 0.2 * k, f"← {name}", size=9, color=color, ha="left", weight="bold")
        if letter == TOY_LABEL:
            d.text(6.45, y - 0.12, "(right)", size=9, color=SERIES[2], ha="left")
    d.text(3.7, 0.12, f"acc: argmax of the sum picks {acc}; more tokens, more negative terms. "
                      f"acc_norm: per byte picks {acc_norm}.", size=9, color=INK)
    return d


@diagram("08_letter_prompt")
def letter_prompt() -> Diagram:
    """Answer-letter prompting: the options listed A/B/C, then the next-token logits of ' A', ' B', ' C' decide."""
    words = [("".join(t)).strip() for t, _ in TOY_CHOICES.values()]
    ex = MCExample(id="toy", question="Which gas do plants take in?", choices=words, label=1,
                   context=TOY_CONTEXT, continuations=[" " + w for w in words])  # fmt: skip
    text = prompt_of(ex)
    # toy next-token probabilities: most mass on tokens that are not letters (a model that misses the format)
    probs = {" A": 0.012, " B": 0.009, " C": 0.007}
    mass = sum(probs.values())
    pick = max(probs, key=probs.get)
    d = Diagram(7.3, 3.0, title="Answer-letter prompting: one forward pass, one token")
    p = d.box(0.1, 0.85, 2.3, 1.6, "", kind="data")
    for k, line in enumerate(text.split("\n")):
        d.text(0.22, 2.2 - 0.3 * k, line, size=9, ha="left", color=ACCENT if line == "Answer:" else INK)
    d.text(1.25, 0.65, "tasks.letter_prompt(example)", size=9, color=MUTED)
    m = d.box(2.75, 1.35, 0.9, 0.6, "model", kind="layer")
    d.arrow(p.right, m.left)
    logits = d.box(4.0, 1.4, 0.95, 0.5, "next-token\nlogits", kind="tensor", shape="(V,)", size=9)
    d.arrow(m.right, logits.left)
    d.text(5.95, 2.55, "softmax, then keep the letters", size=9, color=MUTED)
    for k, (tok, pr) in enumerate(probs.items()):
        y = 2.05 - 0.45 * k
        b = d.box(5.35, y, 0.55, 0.34, repr(tok)[1:-1].replace(" ", "␣"), kind="tensor", size=9)
        d.arrow(logits.right, b.left, color=MUTED)
        d.text(6.0, y + 0.17, f"p = {pr:.3f}", size=9, ha="left",
               color=ACCENT if tok == pick else INK, weight="bold" if tok == pick else "normal")
    d.text(5.35, 0.85, f"pick: {pick.strip()} (right: {'ABC'[ex.label]})", size=9, color=ACCENT, ha="left")
    d.text(3.65, 0.2, f"letter_mass = {' + '.join(f'{v:.3f}' for v in probs.values())} = {mass:.3f}:"
                      " near 0, the model misses the format and the pick is noise", size=9, color=MUTED)
    return d


@diagram("08_sliding_window")
def sliding_window() -> Diagram:
    """Sliding-window perplexity: windows every `stride` tokens; only tokens no earlier window scored count."""
    n, window = 22, 8
    cell, x0 = 0.25, 1.3
    d = Diagram(7.2, 4.75, title=f"Sliding-window perplexity: {n} tokens, window {window}")
    y = 3.95
    for i in range(n):
        d.box(x0 + i * cell, y, cell, cell, "", kind="tensor", lw=0.8)
        if i % 3 == 0:
            d.text(x0 + i * cell + cell / 2, y + cell + 0.12, str(i), size=9, color=MUTED)
    d.text(x0 - 0.1, y + cell / 2, "tokens", size=9, ha="right", color=MUTED)
    top = 3.7
    for stride in (window, window // 2):
        wins = sliding_windows(n, window, stride)
        n_scored = sum(end - first for _, end, first in wins)
        kind = " (disjoint: stride = window)" if stride == window else ""
        d.text(0.1, top, f"stride {stride}{kind}: {len(wins)} windows, {n_scored} tokens scored", size=9,
               ha="left", weight="bold")
        for k, (begin, end, first) in enumerate(wins):
            row = top - 0.38 - 0.27 * k
            for i in range(begin, end + 1):  # reads tokens[begin:end], predicts tokens[begin+1:end+1]
                d.box(x0 + i * cell, row, cell, 0.21, "", kind="accent" if i > first else "op", lw=0.6)
            d.text(x0 - 0.1, row + 0.1, f"window {k + 1}", size=9, ha="right", color=MUTED)
        top -= 0.38 + 0.27 * len(wins) + 0.2
    d.box(0.3, 0.12, 0.3, 0.2, "", kind="op", lw=0.6)
    d.text(0.7, 0.22, "read as context only", size=9, ha="left")
    d.box(2.6, 0.12, 0.3, 0.2, "", kind="accent", lw=0.6)
    d.text(3.0, 0.22, "predicted and scored: every token but the first, once", size=9, ha="left")
    return d


@diagram("08_ppl_pipeline")
def ppl_pipeline() -> Diagram:
    """Held-out perplexity with an error bar: files -> tokens -> model -> loss per file -> mean ± s.e. -> exp."""
    T = book_config("cpu").context_length
    d = Diagram(7.4, 2.9, title="Held-out perplexity, with an error bar over files")
    files = d.box(0.1, 1.55, 1.05, 0.6, "held-out\nfiles", kind="data", size=9)
    enc = d.box(1.45, 1.6, 0.95, 0.5, "tokenize", kind="op", size=9)
    d.arrow(files.right, enc.left)
    win = d.box(2.7, 1.6, 1.05, 0.5, "windows", kind="tensor", shape=f"(B, T), T = {T}", size=9)
    d.arrow(enc.right, win.left)
    model = d.box(4.05, 1.55, 0.85, 0.6, "model", kind="layer")
    d.arrow(win.right, model.left)
    logits = d.box(5.2, 1.6, 0.95, 0.5, "logits", kind="tensor", shape="(B, T, V)", size=9)
    d.arrow(model.right, logits.left)
    ce = d.box(6.35, 1.6, 0.95, 0.5, "−log p(next)", kind="op", size=9)
    d.arrow(logits.right, ce.left)
    per_file = d.box(5.2, 0.45, 1.05, 0.55, "mean loss\nof each file", kind="op", size=9)
    d.arrow(ce.bottom, (per_file.right[0], per_file.top[1] - 0.05), curve=-0.3)
    stats = d.box(3.05, 0.45, 1.6, 0.55, "mean ± s / √files", kind="op", size=9)
    d.arrow(per_file.left, stats.right)
    ppl = d.box(0.65, 0.45, 1.85, 0.55, "exp(mean ± 2 s.e.)\n= perplexity interval", kind="accent", size=9)
    d.arrow(stats.left, ppl.right)
    d.text(3.85, 0.22, "the file is the unit of sampling", size=9, color=ACCENT)
    return d


@diagram("08_ngram_overlap")
def ngram_overlap() -> Diagram:
    """BLEU/ROUGE count shared n-grams: a word salad shares every word of the reference and few bigrams."""
    reference = "The cat sat on the mat near the door."
    salad = "mat the door The near on sat cat the."
    ref, hyp = rouge_tokens(reference), rouge_tokens(salad)
    scores = rouge(salad, reference)
    ref_bigrams = {tuple(ref[i : i + 2]) for i in range(len(ref) - 1)}
    d = Diagram(7.4, 3.3, title="ROUGE counts shared n-grams, not meaning")
    cell = 0.62
    x0 = 1.35
    for row, (name, toks, y) in enumerate((("reference", ref, 2.45), ("word salad", hyp, 1.55))):
        d.text(x0 - 0.1, y + 0.17, name, size=9, ha="right", color=MUTED)
        for i, w in enumerate(toks):
            d.box(x0 + i * (cell + 0.04), y, cell, 0.34, w, kind="data" if row == 0 else "tensor", size=9)
    d.text(x0 - 0.1, 1.1, "its bigrams", size=9, ha="right", color=MUTED)
    for i in range(len(hyp) - 1):
        bigram = tuple(hyp[i : i + 2])
        hit = bigram in ref_bigrams
        xm = x0 + i * (cell + 0.04) + cell + 0.02
        d.text(xm, 1.1 - 0.22 * (i % 2), " ".join(bigram), size=9, color=SERIES[2] if hit else ACCENT,
               weight="bold" if hit else "normal")
    r1, r2 = scores["rouge1"], scores["rouge2"]
    d.text(3.7, 0.42, f"ROUGE-1: every word shared, F1 = {r1.fmeasure:.3f}.   ROUGE-2: "
                      f"{round(r2.precision * (len(hyp) - 1))} of {len(hyp) - 1} bigrams shared, "
                      f"F1 = {r2.fmeasure:.3f}", size=9)
    d.text(3.7, 0.15, "green: a bigram of the reference; red: not in it", size=9, color=MUTED)
    return d


@diagram("08_llm_judge")
def llm_judge() -> Diagram:
    """LLM as judge: template -> judge model -> free-text reply -> parse_score -> grade or None -> aggregate."""
    replies = ["Score: 8", "**7**/10 - mostly right", "Great answer!!!"]
    grades = [parse_score(r) for r in replies]
    valid = [g for g in grades if g is not None]
    d = Diagram(7.4, 3.1, title="An LLM as judge: prompt, reply, parse, aggregate")
    inp = d.box(0.1, 1.15, 1.15, 0.9, "question\nanswer\n(reference)", kind="data", size=9)
    tpl = d.box(1.45, 1.3, 1.15, 0.6, "judge_prompt\ntemplate", kind="op", size=9)
    d.arrow(inp.right, tpl.left)
    judge = d.box(2.75, 1.3, 0.9, 0.6, "judge\nmodel", kind="layer", size=9)
    d.arrow(tpl.right, judge.left)
    d.text(4.75, 2.55, "reply", size=9, color=MUTED)
    d.text(6.35, 2.55, "parse_score", size=9, color=MUTED)
    for k, (reply, grade) in enumerate(zip(replies, grades)):
        y = 2.0 - 0.55 * k
        r = d.box(3.95, y, 1.65, 0.38, reply, kind="data", size=9)
        d.arrow(judge.right, r.left, color=MUTED)
        g = d.box(5.95, y, 0.8, 0.38, "None" if grade is None else f"{grade:g}",
                  kind="warn" if grade is None else "tensor", size=9)
        d.arrow(r.right, g.left, color=MUTED)
    mean = sum(valid) / len(valid)
    d.text(3.7, 0.35, f"aggregate: mean grade {mean:g} over {len(valid)} readable; "
                     f"unparsed {1 - len(valid) / len(grades):.0%} (report it: a judge that cannot answer is none)",
           size=9, color=ACCENT)
    return d


@diagram("08_contamination")
def contamination() -> Diagram:
    """Contamination check: hash every n-gram of the test items, look training text's n-grams up in them."""
    n = 8
    item = "Which gas do plants take in from the air to make their food?"
    clean = "def area(width, height): return the product of width and height for the caller"
    leaked = "forum notes: which gas do plants take in from the air to make their food? asked again"
    checker = Decontaminator({"test set": [item]}, n=n)
    hits = {"clean": checker.matches(clean).get("test set", 0), "leaked": checker.matches(leaked).get("test set", 0)}
    n_item = len(words(item)) - n + 1
    d = Diagram(7.4, 3.1, title=f"Contamination: shared {n}-word n-grams")
    test = d.box(0.1, 1.95, 1.35, 0.6, "benchmark\nitems", kind="data", size=9)
    grams = d.box(1.8, 1.95, 1.3, 0.6, f"every {n}-gram,\nhashed", kind="op", size=9)
    d.arrow(test.right, grams.left)
    table = d.box(3.45, 1.95, 1.2, 0.6, "sorted\nhash set", kind="tensor", size=9,
                  shape=f"{n_item} from this item", shape_side="above")
    d.arrow(grams.right, table.left)
    train = d.box(0.1, 0.55, 1.35, 0.6, "training\ndocuments", kind="data", size=9)
    slide = d.box(1.8, 0.55, 1.3, 0.6, f"their {n}-grams,\nhashed", kind="op", size=9)
    d.arrow(train.right, slide.left)
    look = d.box(3.45, 0.55, 1.2, 0.6, "look up\n(binary search)", kind="op", size=9)
    d.arrow(slide.right, look.left)
    d.arrow(table.bottom, look.top)
    ok = d.box(5.05, 1.25, 2.25, 0.45, f"clean document: {hits['clean']} shared", kind="tensor", size=9)
    bad = d.box(5.05, 0.45, 2.25, 0.45, f"leaked document: {hits['leaked']} shared", kind="warn", size=9)
    d.arrow(look.right, ok.left, color=MUTED)
    d.arrow(look.right, bad.left, color=ACCENT)
    d.text(6.17, 0.2, "flag the item; report the clean rest", size=9, color=ACCENT)
    return d


@diagram("08_stderr")
def stderr() -> Diagram:
    """The binomial standard error: the same accuracy measured on test sets of growing size."""
    p = 0.25
    sizes = (50, 200, 1000, 10042)
    lo_axis, hi_axis = 0.1, 0.4
    x0, x1 = 1.8, 6.9
    d = Diagram(7.3, 2.9, title=f"Accuracy {p} ± 2 standard errors, by test-set size n")

    def xpos(v: float) -> float:
        return x0 + (v - lo_axis) / (hi_axis - lo_axis) * (x1 - x0)

    for k, n in enumerate(sizes):
        y = 2.15 - 0.42 * k
        se = binomial_stderr(p, n)
        d.text(x0 - 0.15, y, f"n = {n:,}", size=9, ha="right")
        d.line([(xpos(p - 2 * se), y), (xpos(p + 2 * se), y)], color=SERIES[0], lw=3)
        d.line([(xpos(p - 2 * se), y - 0.08), (xpos(p - 2 * se), y + 0.08)], color=SERIES[0], lw=1.2)
        d.line([(xpos(p + 2 * se), y - 0.08), (xpos(p + 2 * se), y + 0.08)], color=SERIES[0], lw=1.2)
        d.text(xpos(p + 2 * se) + 0.1, y, f"s.e. {se:.3f}", size=9, ha="left", color=MUTED)
    base = 0.45
    d.line([(x0, base), (x1, base)], color=INK)
    for v in (0.1, 0.2, 0.3, 0.4):
        d.line([(xpos(v), base - 0.05), (xpos(v), base + 0.05)], color=INK)
        d.text(xpos(v), base - 0.2, f"{v:.1f}", size=9)
    d.line([(xpos(p), base), (xpos(p), 2.35)], color=ACCENT, dashed=True)
    d.text(0.1, 0.45, "s.e. = √(p(1 − p) / n)", size=9, ha="left", color=MUTED)
    return d
