"""Chapter 02's diagrams: from text to bytes to BPE tokens, then to batches and embeddings.

Every number drawn is computed here with the package: a toy BPE learned by
`minillm.bpe.BPETokenizer.train` on `TOY_CORPUS` (Sennrich et al.'s
example, small enough to draw and needing no download), GPT-2's
pre-tokenization pattern, `minillm.tokens` for shards and windows, and the
book model's shapes from `minillm.book_config("cpu")`.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from functools import lru_cache

import numpy as np
import regex

from minillm import tokens
from minillm.diagrams import diagram
from minillm.diagrams.kit import ACCENT, MUTED, SERIES, Diagram
from minillm.pretrained import book_config
from minillm.tokenizer import GPT2_PATTERN, BPETokenizer

#: The toy corpus of the BPE diagrams: five words, repeated (Sennrich et al., 2016).
TOY_CORPUS = ("low low low low low lower lower newest newest newest newest newest newest "
              "widest widest widest")
TOY_MERGES = 8
EOT = "<|endoftext|>"
INK_NOTE = "#222222"


@lru_cache(maxsize=None)
def toy_tokenizer():
    """The toy BPE: `TOY_MERGES` merges learned on `TOY_CORPUS`, then `<|endoftext|>`."""
    return BPETokenizer.train(TOY_CORPUS, 256 + TOY_MERGES + 1, special_tokens=(EOT,))


def shown(b: bytes) -> str:
    """A token's bytes as readable text: a space is drawn as a middle dot."""
    return b.decode("utf-8", errors="replace").replace(" ", "·").replace("\n", "\\n")


def _pieces(d: Diagram, x: float, y: float, labels, kind: str = "tensor", h: float = 0.36,
            unit: float = 0.0, w: float = 0.42, gap: float = 0.05, size: float = 10, colors=None,
            label_colors=None):
    """A row of boxes left to right from (x, y); width `w`, or `unit` per character when `unit` > 0."""
    boxes = []
    for k, label in enumerate(labels):
        width = max(unit * len(label), 0.22) if unit else w
        edge = colors[k] if colors else None
        boxes.append(d.box(x, y, width, h, label, kind=kind, size=size, edge=edge,
                           label_color=label_colors[k] if label_colors else "#222222"))
        x += width + gap
    return boxes


@diagram("02_chars_vs_bytes")
def chars_vs_bytes() -> Diagram:
    """One word with a non-ASCII letter as characters (code points) and as UTF-8 bytes."""
    word = "café"
    d = Diagram(7.2, 2.5, title=f"“{word}”: {len(word)} characters, {len(word.encode())} UTF-8 bytes")
    d.text(0.15, 1.72, "characters", ha="left", color=MUTED)
    d.text(0.15, 0.72, "UTF-8 bytes", ha="left", color=MUTED)
    x0, w, gap = 1.3, 0.58, 0.08
    bx = x0
    for ch in word:
        raw = list(ch.encode("utf-8"))
        span = len(raw) * w + (len(raw) - 1) * gap
        hot = len(raw) > 1
        c = d.box(bx, 1.5, span, 0.45, f"{ch}  (U+{ord(ch):04X})" if hot else ch, kind="data",
                  edge=ACCENT if hot else None, size=10)
        for k, b in enumerate(raw):
            bb = d.box(bx + k * (w + gap), 0.5, w, 0.45, str(b), kind="tensor", edge=ACCENT if hot else None)
            d.arrow(c.bottom if not hot else (bb.x + w / 2, 1.5), bb.top, color=ACCENT if hot else "#222222")
        bx += span + gap
    d.text(bx + 0.1, 1.72, "a character tokenizer\nneeds every letter it\nwill ever meet", ha="left", size=9,
           color=MUTED)
    d.text(bx + 0.1, 0.72, "256 possible values:\nnothing is unknown", ha="left", size=9, color=MUTED)
    d.text(x0, 0.2, f"“{word[-1]}” is {len(word[-1].encode())} bytes; ASCII letters are 1 byte each",
           ha="left", size=9, color=ACCENT)
    return d


@diagram("02_pretokenize")
def pretokenize() -> Diagram:
    """GPT-2's regular expression splits a sentence into chunks; merges never cross a chunk's edge."""
    sentence = "The dog's bark, isn't it?   12345 dogs!\n"
    chunks = regex.findall(GPT2_PATTERN, sentence)
    assert "".join(chunks) == sentence

    def kind_of(c: str) -> int:
        if regex.fullmatch(r"'(?:[sdmt]|ll|ve|re)", c):
            return 1
        if regex.fullmatch(r" ?\p{L}+", c):
            return 0
        if regex.fullmatch(r" ?\p{N}+", c):
            return 2
        if c.isspace():
            return 4
        return 3

    names = ["words", "contractions", "numbers", "punctuation", "whitespace"]
    d = Diagram(7.3, 2.7, title="Pre-tokenization: GPT-2's pattern cuts text into chunks")
    text = sentence.replace(" ", "·").replace("\n", "\\n")
    d.box(0.3, 1.75, 6.7, 0.4, text, kind="data", size=10)
    d.arrow((3.65, 1.75), (3.65, 1.35), label="regex.findall(GPT2_PATTERN, text)", label_offset=(1.45, 0.0))
    labels = [shown(c.encode()) for c in chunks]
    colors = [SERIES[kind_of(c)] for c in chunks]
    _pieces(d, 0.12, 0.85, labels, kind="data", unit=0.105, gap=0.05, colors=colors, label_colors=colors,
            size=10)
    x = 0.15
    for k, name in enumerate(names):
        d.box(x, 0.3, 0.16, 0.16, kind="data", edge=SERIES[k], fill="white")
        d.text(x + 0.22, 0.38, name, ha="left", size=9, color=SERIES[k])
        x += 0.45 + 0.075 * len(name)
    d.text(7.15, 0.66, f"{len(chunks)} chunks: merges stay inside one", ha="right", size=9, color=ACCENT)
    d.text(0.3, 1.55, "· marks a space; a word keeps its leading space", ha="left", size=9, color=MUTED)
    return d


@diagram("02_bpe_loop")
def bpe_loop() -> Diagram:
    """The BPE training loop on a toy corpus: count pairs, merge the most frequent, repeat."""
    tok = toy_tokenizer()
    chunks = Counter(regex.findall(GPT2_PATTERN, TOY_CORPUS))
    words = [(list(c.encode()), n) for c, n in chunks.items()]
    pairs: Counter = Counter()
    for w, n in words:
        for p in zip(w, w[1:]):
            pairs[p] += n
    ranked = sorted(pairs, key=lambda p: (-pairs[p], p))
    best = ranked[0]
    assert best == tok.merges[0][:2]

    d = Diagram(7.3, 3.9, title="Training BPE: count pairs, merge the most frequent, repeat")
    # the corpus as chunks of bytes with counts
    d.text(0.1, 3.3, "chunks × count (as bytes)", ha="left", size=9, color=MUTED)
    y = 2.85
    for c, n in sorted(chunks.items(), key=lambda cn: -cn[1]):
        d.box(0.1, y, 1.35, 0.34, f"{shown(c.encode())}  ×{n}", kind="data", size=10)
        y -= 0.45
    # count pairs
    cnt = d.box(1.95, 2.45, 1.25, 0.55, "count every\nadjacent pair", kind="op", size=10)
    d.arrow((1.45, 2.72), cnt.left)
    d.text(2.57, 2.12, "top pairs", size=9, color=MUTED)
    y = 1.72
    for k, p in enumerate(ranked[:4]):
        a, b = (shown(bytes([i])) for i in p)
        d.box(1.95, y, 1.25, 0.3, f"{a} + {b}:  {pairs[p]}", kind="tensor", size=10,
              edge=ACCENT if k == 0 else None)
        y -= 0.38
    d.arrow(cnt.bottom, (2.57, 2.24))
    # merge
    a, b, new = tok.merges[0]
    mrg = d.box(3.7, 2.45, 1.55, 0.55, f"merge the top pair\neverywhere: id {new}", kind="op", size=10,
                edge=ACCENT)
    d.arrow(cnt.right, mrg.left)
    a2, b2 = ranked[1]
    tie = pairs[best] == pairs[ranked[1]]
    d.text(4.47, 2.05, f"a tie at {pairs[best]}: the smaller pair\n({best[0]}, {best[1]}) beats ({a2}, {b2})"
           if tie else "ties: the smallest (a, b)", size=9, color=MUTED)
    d.arrow((mrg.x + mrg.w / 2, 3.0), (cnt.x + cnt.w / 2, 3.0), curve=0.3, color=ACCENT)
    d.text(3.35, 3.5, "repeat: one merge per new id, until vocab_size", size=9, color=ACCENT)
    # merges learned
    d.text(5.6, 3.3, "merges learned, in order", ha="left", size=9, color=MUTED)
    y = 2.9
    for a, b, new in tok.merges[:6]:
        d.box(5.6, y, 1.6, 0.3, f"{new}: {shown(tok.token_bytes(a))} + {shown(tok.token_bytes(b))}"
              f" → {shown(tok.token_bytes(new))}", kind="layer", size=9)
        y -= 0.38
    d.arrow(mrg.right, (5.6, 3.05))
    d.text(5.6, y + 0.2, f"… {len(tok.merges)} merges in all", ha="left", size=9, color=MUTED)
    d.text(4.42, 1.4, "a new token merges again:\nes + t → est, lo + w → low", size=9, color=MUTED)
    return d


def trace_encode(tok, chunk: str) -> list[tuple[int | None, list[int]]]:
    """(rank of the merge applied, ids after it) for each step of encoding one chunk; the first has rank None."""
    rank = {(a, b): (r, m) for r, (a, b, m) in enumerate(tok.merges)}
    ids = list(chunk.encode("utf-8"))
    steps = [(None, ids)]
    while len(ids) > 1:
        pair = min(zip(ids, ids[1:]), key=lambda p: rank.get(p, (len(rank),))[0])
        if pair not in rank:
            break
        r, new = rank[pair]
        out, i = [], 0
        while i < len(ids):
            if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
                out.append(new)
                i += 2
            else:
                out.append(ids[i])
                i += 1
        ids = out
        steps.append((r, ids))
    return steps


@diagram("02_bpe_encode")
def bpe_encode() -> Diagram:
    """Encoding a new word: its bytes, then the learned merges replayed lowest rank first, then tokens."""
    tok = toy_tokenizer()
    word = " lowest"
    steps = trace_encode(tok, word)
    assert steps[-1][1] == tok.encode(word)
    row_h = 0.5
    d = Diagram(7.2, 0.75 + row_h * len(steps) + 0.45, title="Encoding “·lowest”: bytes → merges → tokens")
    y = d.height - 0.95
    for k, (r, ids) in enumerate(steps):
        last = k == len(steps) - 1
        if r is None:
            note = "UTF-8 bytes"
        else:
            a, b, _ = tok.merges[r]
            note = f"merge #{r + 1}: {shown(tok.token_bytes(a))} + {shown(tok.token_bytes(b))}"
        d.text(0.1, y + 0.18, note, ha="left", size=9, color=ACCENT if last else MUTED)
        x = 2.35
        for i in ids:
            b = tok.token_bytes(i)
            w = 0.3 + 0.16 * len(b)
            d.box(x, y, w, 0.36, f"{shown(b)}", kind="tensor", size=10, edge=ACCENT if last else None)
            if last or r is None:
                d.text(x + w / 2, y - 0.07, str(i), size=9, color=MUTED, va="top")
            x += w + 0.05
        y -= row_h
        if r is None:
            y -= 0.22
    d.text(5.0, y + row_h + 0.18, f"{len(steps[0][1])} bytes → {len(steps[-1][1])} tokens", ha="left", size=10,
           color=ACCENT)
    used = {r for r, _ in steps[1:]}
    skipped = [r for r in range(max(used)) if r not in used]
    if skipped:
        a, b, _ = tok.merges[skipped[0]]
        d.text(5.0, y + 2 * row_h + 0.18, f"merge #{skipped[0] + 1} ({shown(tok.token_bytes(a))} + "
               f"{shown(tok.token_bytes(b))}) finds\nno such pair here: skipped", ha="left", size=9, color=MUTED)
    return d


@diagram("02_special_tokens")
def special_tokens() -> Diagram:
    """Encode and decode with a special token: refused by default, one id when allowed, round trip exact."""
    tok = toy_tokenizer()
    text = f" lowest{EOT} newest"
    allowed = tok.encode(text, allowed_special={EOT})
    plain = tok.encode(text, disallowed_special=())
    assert tok.decode(allowed) == text and tok.decode(plain) == text
    try:
        tok.encode(text)
        refused = False
    except ValueError:
        refused = True
    assert refused
    eot = tok.special_tokens[EOT]

    d = Diagram(7.3, 3.4, title="Special tokens: encode, decode, round trip")
    src = d.box(0.15, 2.45, 2.5, 0.45, shown(text.encode()), kind="data", size=10)
    d.text(1.4, 3.02, "text", size=9, color=MUTED)
    warn = d.box(3.3, 2.5, 3.85, 0.4, "encode(text): ValueError, special text refused", kind="warn", size=9)
    d.arrow(src.right, warn.left, color=ACCENT)
    d.text(3.3, 2.12, "encode(text, allowed_special={'<|endoftext|>'})", ha="left", size=9, color=MUTED)
    x, w = 3.3, 0.5
    for i in allowed:
        d.box(x, 1.55, w, 0.36, str(i), kind="tensor", size=10, edge=ACCENT if i == eot else None)
        x += w + 0.05
    d.text(x + 0.05, 1.73, f"{len(allowed)} ids", ha="left", size=9, color=MUTED)
    k = allowed.index(eot)
    d.text(3.3 + k * (w + 0.05) + w / 2, 1.4, f"{eot} = {EOT}, one id", size=9, color=ACCENT, va="top")
    d.arrow((src.x + src.w, src.y + 0.05), (3.28, 1.73), curve=0.2)
    d.text(0.15, 1.7, f"disallowed_special=():\n{len(plain)} ids, the special text\nspelled as ordinary text",
           ha="left", size=9, color=MUTED)
    dec = d.box(4.5, 0.25, 2.65, 0.6, "decode: each id's bytes,\njoined, then UTF-8 decoded", kind="op", size=9)
    d.arrow((4.4, 1.55), (5.0, 0.85))
    out = d.box(0.15, 0.32, 2.5, 0.45, shown(tok.decode(allowed).encode()), kind="data", size=10)
    d.arrow(dec.left, out.right)
    d.text(3.55, 0.8, "the same text,\nbyte for byte", size=9, color=ACCENT)
    return d


@diagram("02_shards_windows")
def shards_windows() -> Diagram:
    """A token stream written as shards on disk, read back as one array, cut into (x, y) windows shifted by one."""
    tok = toy_tokenizer()
    ids = tok.encode(" lowest newest low widest lower newer")
    shard_size, T = 6, 4
    with tempfile.TemporaryDirectory() as tmp:
        sidecar = tokens.write_shards(ids, tmp, vocab_size=tok.vocab_size, shard_size=shard_size, tokenizer="toy")
        meta = json.loads(sidecar.read_text())
        stream = np.asarray(tokens.read_shards(tmp, vocab_size=tok.vocab_size)[:])
    assert stream.tolist() == ids
    windows = tokens.SlidingWindowDataset(stream, context_length=T, stride=T)

    d = Diagram(7.3, 3.5, title="Token shards on disk, sliding windows for training")
    # shards
    x = 0.15
    cell = 0.38
    sizes = [s["num_tokens"] for s in meta["shards"]]
    start = 0
    for k, (s, n) in enumerate(zip(meta["shards"], sizes)):
        w = n * cell
        d.box(x + start * cell, 2.55, w - 0.06, 0.4, f"{s['file']}", kind="data", size=9, edge=SERIES[k])
        start += n
    d.text(0.15 + start * cell + 0.1, 2.75, f"{meta['dtype']},\n{shard_size} ids a shard", ha="left", size=9,
           color=MUTED)
    d.text(0.15, 3.1, "write_shards: the token stream as files on disk", ha="left", size=9, color=MUTED)
    d.arrow((3.2, 2.55), (3.2, 2.1), label="read_shards: one array again (memory-mapped)",
            label_offset=(1.75, 0.0))
    # the stream
    y = 1.45
    for i, t in enumerate(stream.tolist()):
        shard = i // shard_size
        d.box(x + i * cell, y, cell, 0.36, str(t), kind="tensor", size=9, edge=SERIES[shard])

    # windows 0 and 1: x above, y below
    for wdx in range(2):
        xs, ys = windows[wdx]
        s0 = wdx * T
        assert xs.tolist() == stream[s0:s0 + T].tolist() and ys.tolist() == stream[s0 + 1:s0 + T + 1].tolist()
        col = ACCENT if wdx == 0 else SERIES[3]
        d.brace(x + s0 * cell + 0.03, x + (s0 + T) * cell - 0.03, y + 0.45, f"x{wdx}", below=False, color=col)
        d.brace(x + (s0 + 1) * cell + 0.03, x + (s0 + T + 1) * cell - 0.03, y - 0.1 - 0.28 * wdx, f"y{wdx}",
                below=True, color=col)
    d.text(x, 0.5, f"T = {T}, stride = {T}: {len(windows)} windows from {len(stream)} tokens; "
           "y is x shifted by one token", ha="left", size=9, color=INK_NOTE)
    d.text(x, 0.2, "get_batch stacks B random windows: x and y of shape (B, T)", ha="left", size=9,
           color=MUTED)
    return d



@diagram("02_embeddings")
def embeddings() -> Diagram:
    """Token and position embeddings: ids (B, T) -> E[ids] + P[0..T-1] -> x (B, T, C), the book model's shapes."""
    config = book_config("cpu")
    mc = config.model_config(config.vocab_size)
    V, C, Tmax = mc.vocab_size, mc.d_model, mc.context_length
    d = Diagram(7.2, 2.9, title="From ids to vectors: token + position embeddings")
    ids = d.box(0.15, 1.75, 0.8, 0.45, "ids", kind="tensor", shape="(B, T)")
    E = d.box(1.3, 1.7, 1.4, 0.55, f"token table E\n({V:,}, {C})", kind="layer", size=9)
    d.arrow(ids.right, E.left)
    tok = d.box(3.5, 1.75, 0.95, 0.45, "E[ids]", kind="tensor", shape="(B, T, C)")
    d.arrow(E.right, tok.left, label="row lookup", label_offset=(0, 0.2))
    pos = d.box(0.15, 0.55, 0.8, 0.45, "0 … T−1", kind="tensor", shape="(T,)")
    P = d.box(1.3, 0.5, 1.4, 0.55, f"position table P\n({Tmax}, {C})", kind="layer", size=9)
    d.arrow(pos.right, P.left)
    prow = d.box(3.5, 0.55, 0.95, 0.45, "P[t]", kind="tensor", shape="(T, C)")
    d.arrow(P.right, prow.left)
    add = d.circle(4.95, 1.38, 0.18, "+")
    d.arrow(tok.right, (add.x + 0.05, add.y + add.h - 0.05))
    d.arrow(prow.right, (add.x + 0.05, add.y + 0.05))
    x = d.box(5.4, 1.15, 0.8, 0.45, "x", kind="tensor", shape="(B, T, C)")
    d.arrow(add.right, x.left)
    d.text(5.75, 0.6, "P[t] is added to\nevery row of the batch", size=9, color=MUTED)
    d.text(6.65, 1.55, "to block 1", size=9, color=MUTED)
    d.arrow(x.right, (7.1, 1.38))
    d.text(0.15, 2.5, f"the book model: V = {V:,} ids, C = {C}, context {Tmax}", ha="left", size=9,
           color=ACCENT)
    return d
