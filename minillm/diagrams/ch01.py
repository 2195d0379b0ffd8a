"""Chapter 01's diagrams: the curation pipeline and the ideas inside its steps.

What is drawn comes from the package when the diagram is drawn: the pipeline's
defaults from `CurationConfig`, hashes from `minillm.dedup.exact_key`, MinHash
signatures from `MinHasher`, redactions from `redact_pii`, n-gram matches from
`Decontaminator`, train/validation sides from `curation.split_of`. The counts of
what each step removes from the chapter's corpus are in the chapter's own report
and plots (they need the data sets), not here.
"""

from __future__ import annotations

import inspect

import numpy as np

from minillm.curation import CurationConfig, split_of
from minillm.dedup import (Decontaminator, MinHasher, candidate_probability, dedup_exact, exact_key, jaccard,
                           shingle_hashes, words)
from minillm.diagrams import diagram
from minillm.diagrams.kit import ACCENT, INK, MUTED, Diagram
from minillm.pii import find_pii, redact_pii


@diagram("01_pipeline")
def pipeline() -> Diagram:
    """The curation pipeline: each step in order, and what it removes or changes."""

    cfg = CurationConfig()
    n = inspect.signature(Decontaminator).parameters["n"].default
    d = Diagram(7.2, 3.75, title="The curation pipeline: what each step removes")
    steps = [
        ("raw documents", "data", "crawl, books,\ncode, messages", ""),
        ("1. normalize", "op", "NFC, control chars,\nHTML, whitespace", "changes text,\nremoves none"),
        ("2. quality rules", "op", "first failing rule\nnames the reason", "short, repetitive,\ngibberish, boilerplate"),
        ("3. exact dedup", "op", "hash of the\ncanonical text", "every copy\nbut the first"),
        ("4. near dedup", "op", "MinHash + LSH,\n" + f"Jaccard ≥ {cfg.near_dedup_threshold}",
         "near copies\nbut the first"),
        ("5. decontaminate", "op", f"shares a {n}-gram\nwith a benchmark", "leaked test\nquestions"),
        ("6. redact PII", "op", "e-mails, phones,\ncards → <TAGS>", "replaces items,\nremoves none"),
        ("7. split", "op", "hash of the text\n→ train / validation", "nothing: sides\nare stable"),
    ]
    w, h, gap = 1.45, 0.9, 0.3
    boxes = []
    for i, (name, kind, what, removes) in enumerate(steps):
        col, row = i % 4, i // 4
        x = 0.25 + col * (w + gap)
        y = 2.25 - row * 1.65
        b = d.box(x, y, w, h, "", kind=kind)
        d.text(x + w / 2, y + h - 0.17, name, size=9, weight="bold")
        d.text(x + w / 2, y + 0.3, what, size=9)
        if removes:
            d.text(x + w / 2, y - 0.27, removes, size=9,
                   color=MUTED if "none" in removes or "nothing" in removes else ACCENT)
        boxes.append(b)
    for i in (0, 1, 2, 4, 5, 6):
        d.arrow(boxes[i].right, boxes[i + 1].left)
    turn, right = 1.62, boxes[3].x + w + 0.13
    d.line([boxes[3].right, (right, boxes[3].right[1]), (right, turn), (0.1, turn), (0.1, boxes[4].center[1])],
           color=INK, lw=1.2)
    d.arrow((0.1, boxes[4].center[1]), boxes[4].left)
    return d


@diagram("01_exact_dedup")
def exact_dedup() -> Diagram:
    """Exact deduplication: canonical form (case-folded, spaces collapsed), a hash, keep the first of each hash."""

    docs = ["The cat sat on the mat.", "the  CAT sat on\nthe mat.", "A dog ran in the park.",
            "The cat sat on the mat!"]
    kept = set(dedup_exact(docs))
    d = Diagram(7.2, 2.95, title="Exact deduplication: one hash per document")
    for x, head in ((0.3, "document"), (2.65, "canonical form"), (4.85, "exact_key")):
        d.text(x, 2.35, head, size=9, ha="left", color=MUTED)
    seen: dict[str, int] = {}
    for i, doc in enumerate(docs):
        y = 1.75 - i * 0.48
        key = exact_key(doc)
        d.box(0.3, y, 2.05, 0.36, repr(doc)[1:-1], kind="data", size=9)
        d.box(2.65, y, 1.9, 0.36, " ".join(doc.casefold().split()), kind="op", size=9)
        d.arrow((2.35, y + 0.18), (2.65, y + 0.18))
        d.box(4.85, y, 1.0, 0.36, key[:8] + "…", kind="tensor", size=9)
        d.arrow((4.55, y + 0.18), (4.85, y + 0.18))
        if i in kept:
            seen[key] = i
            d.text(6.0, y + 0.18, "keep", size=10, ha="left", weight="bold")
        else:
            d.text(6.0, y + 0.18, f"drop: copy of {seen[key] + 1}", size=10, ha="left", color=ACCENT)
        d.text(0.15, y + 0.18, str(i + 1), size=9, color=MUTED)
    d.text(3.6, 0.12, "one changed character (. → !) is a new hash: near copies need MinHash", size=9, color=MUTED)
    return d


@diagram("01_minhash_lsh")
def minhash_lsh() -> Diagram:
    """MinHash and LSH: shingles, signatures (agreeing positions), bands, and a candidate pair."""


    a = ("the quick brown fox jumps over the lazy dog near the quiet river bank while the old farmer "
         "watches from his porch and smiles at the sunset")
    b = a.replace("lazy dog", "lazy cat")
    k, num_perm, bands, rows = 3, 24, 6, 4
    hasher = MinHasher(num_perm=num_perm, shingle_size=k, seed=0)
    sa, sb = hasher.signature(a), hasher.signature(b)
    same = sa == sb
    ha, hb = shingle_hashes(a, k), shingle_hashes(b, k)
    true_j = jaccard(ha, hb)
    hit = [bool(same[i * rows:(i + 1) * rows].all()) for i in range(bands)]
    d = Diagram(7.2, 3.5, title="MinHash signatures and LSH bands")
    d.box(0.15, 2.45, 3.3, 0.45, "A: … over the lazy dog near …", kind="data", size=9)
    d.box(3.75, 2.45, 3.3, 0.45, "B: … over the lazy cat near …", kind="data", size=9)
    d.text(3.6, 2.2, f"word {k}-shingles: |A| = {len(ha)}, |B| = {len(hb)}, shared {len(np.intersect1d(ha, hb))}; "
           f"Jaccard J = {true_j:.2f}", size=9, color=MUTED)
    cell, x0 = 0.26, 0.5
    for r, (name, y) in enumerate((("A", 1.55), ("B", 1.2))):
        d.text(0.3, y + cell / 2, name, size=10, weight="bold")
        for j in range(num_perm):
            d.box(x0 + j * cell, y, cell, cell, "", kind="tensor", lw=0.8,
                  fill=None if same[j] else "#c9c9c9", edge=None if same[j] else "#5f5f5f")
    d.text(3.6, 1.95, f"{num_perm} minima, one per hash function (signature)", size=9, color=MUTED)
    for i in range(bands):
        x = x0 + i * rows * cell
        d.brace(x + 0.03, x + rows * cell - 0.03, 1.12, "match" if hit[i] else "differs", size=9,
                color=ACCENT if hit[i] else MUTED)
    d.text(0.15, 0.62, f"agreeing positions: {int(same.sum())} of {num_perm} → estimate of J = {same.mean():.2f} "
           f"(grey: the minima differ)", size=9, ha="left")
    p = float(candidate_probability(true_j, bands, rows))
    d.text(0.15, 0.3, f"{bands} bands of {rows} rows; {sum(hit)} bands agree on every row → A and B are a candidate "
           f"pair (P = {p:.2f} at this J)", size=9, ha="left", color=ACCENT)
    return d


@diagram("01_pii_redaction")
def pii_redaction() -> Diagram:
    """PII redaction: a pattern proposes, a validator decides, a typed placeholder replaces."""

    items = [
        ("jane.doe@example.com", "pattern"),
        ("+1 415 555 0132", "8-15 digits"),
        ("4111 1111 1111 1111", "Luhn checksum"),
        ("4111 1111 1111 1112", "Luhn checksum"),
        ("GB82 WEST 1234 5698 7654 32", "mod-97 checksum"),
        ("10.0.0.7", "ipaddress module"),
        ("999.0.0.7", "ipaddress module"),
        ("2024-01-15", "no layout fits"),
    ]
    d = Diagram(7.2, 3.6, title="Privacy redaction: pattern, validator, placeholder")
    for x, head in ((0.15, "text"), (2.75, "kind"), (3.85, "validated by"), (5.45, "after redact_pii")):
        d.text(x, 3.0, head, size=9, ha="left", color=MUTED)
    for i, (item, check) in enumerate(items):
        y = 2.6 - i * 0.33
        found = find_pii(item)
        after = redact_pii(item)
        d.text(0.15, y, item, size=9, ha="left")
        d.text(2.75, y, found[0].kind if found else "-", size=9, ha="left", color=MUTED)
        d.text(3.85, y, check, size=9, ha="left", color=MUTED)
        d.arrow((5.2, y), (5.4, y), color=MUTED)
        d.text(5.45, y, after if found else "unchanged", size=9, ha="left", color=ACCENT if found else INK,
               weight="bold" if found else "normal")
    return d


@diagram("01_decontamination")
def decontamination() -> Diagram:
    """Decontamination: benchmark n-grams hashed once, a document's n-grams looked up, any match removes it."""

    n = inspect.signature(Decontaminator).parameters["n"].default
    question = ("Which of the following is the best way to conserve water at home when brushing your teeth "
                "every morning and every night")
    doc = "Quiz of the day: " + question + "? Answers tomorrow, with more puzzles for the whole family."
    clean = "Water is precious: turn off the tap while brushing, and fix leaking pipes to save more of it."
    decon = Decontaminator({"benchmark": [question]}, n=n)
    hits, misses = decon.matches(doc).get("benchmark", 0), decon.matches(clean).get("benchmark", 0)
    grams = max(len(words(question)) - n + 1, 0)
    d = Diagram(7.2, 3.1, title=f"Decontamination: shared {n}-word n-grams")
    q = d.box(0.15, 1.75, 1.45, 0.6, "benchmark\nquestion + answer", kind="data", size=9)
    h = d.box(1.95, 1.75, 1.5, 0.6, f"every {n}-gram,\nhashed once", kind="op", size=9)
    s = d.box(3.8, 1.75, 1.5, 0.6, "sorted uint64\narray", kind="tensor", size=9)
    d.arrow(q.right, h.left)
    d.arrow(h.right, s.left)
    d.text(2.7, 2.55, f"this {len(words(question))}-word question: {grams} n-grams", size=9, color=MUTED)
    t = d.box(0.15, 0.55, 1.45, 0.6, "training\ndocument", kind="data", size=9)
    g = d.box(1.95, 0.55, 1.5, 0.6, f"its {n}-grams,\nhashed", kind="op", size=9)
    look = d.box(3.8, 0.55, 1.5, 0.6, "binary search\n(searchsorted)", kind="op", size=9)
    d.arrow(t.right, g.left)
    d.arrow(g.right, look.left)
    d.arrow(s.bottom, look.top)
    d.arrow(look.right, (5.55, 0.85), color=MUTED)
    d.text(5.65, 1.15, "a text quoting it:", size=9, ha="left", color=MUTED)
    d.text(5.65, 0.93, f"{hits} shared: remove", size=9, ha="left", color=ACCENT, weight="bold")
    d.text(5.65, 0.6, "a paraphrase:", size=9, ha="left", color=MUTED)
    d.text(5.65, 0.38, f"{misses} shared: keep", size=9, ha="left")
    d.text(3.6, 0.15, f"a question shorter than {n} words has no n-gram: it cannot be found", size=9, color=MUTED)
    return d


@diagram("01_train_val_split")
def train_val_split() -> Diagram:
    """The train/validation split: a hash of each (deduplicated) document picks its side, stable across runs."""

    fraction = inspect.signature(split_of).parameters["val_fraction"].default
    pool = ["import os", "def square(x):\n    return x * x", "class Point:\n    pass",
            "def mean(xs):\n    return sum(xs) / len(xs)", "def f():\n    pass", "import math\nprint(math.pi)"]
    val = [t for t in pool if split_of(t) == "validation"][:1]
    train = [t for t in pool if split_of(t) == "train"][:3]
    docs = [train[0], val[0], train[1], train[2]] if val else train
    d = Diagram(7.2, 3.0, title="Train/validation split by a hash of each document")
    for x, head in ((0.15, "document (after dedup)"), (3.1, "exact_key"), (4.35, "u = first 8 hex / 16⁸"),
                    (6.2, "side")):
        d.text(x, 2.42, head, size=9, ha="left", color=MUTED)
    for i, doc in enumerate(docs):
        y = 1.85 - i * 0.45
        key = exact_key(doc)
        u = int(key[:8], 16) / 16**8
        side = split_of(doc)
        d.box(0.15, y, 2.6, 0.34, doc.split("\n")[0] + (" …" if "\n" in doc else ""), kind="data", size=9)
        d.arrow((2.75, y + 0.17), (3.05, y + 0.17))
        d.text(3.1, y + 0.17, key[:8], size=9, ha="left", color=MUTED)
        d.text(4.35, y + 0.17, f"u = {u:.3f}", size=9, ha="left")
        val_side = side == "validation"
        d.box(5.85, y, 1.2, 0.34, side, kind="warn" if val_side else "tensor", size=9)
    d.text(3.6, 0.3, f"u < {fraction} → validation: about {fraction:.0%} of documents, the same side on every "
           "machine and run", size=9, color=ACCENT)
    return d
