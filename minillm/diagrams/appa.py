"""Appendix A's diagrams: the transformer family (encoders, decoders, encoder-decoders).

Every number drawn comes from the package: masks from the attention layer
(`minillm.attention.CausalSelfAttention`, `causal_mask`), bucket ids from
`relative_position_bucket`, a masking draw from `minillm.masked_lm.mask_tokens`,
decoder inputs from `minillm.seq2seq.shift_right`, shapes and KV-cache lengths
from a small `Seq2SeqLM` run, and parameter counts from a model of t5-small's
shape (its Hugging Face config read by `config_from_hf_seq2seq`, built on the
meta device, so nothing is downloaded).
"""

from __future__ import annotations

import dataclasses

import matplotlib
import torch
from matplotlib import colors, patches

from minillm.attention import AttentionConfig, CausalSelfAttention, causal_mask, relative_position_bucket
from minillm.diagrams import diagram
from minillm.diagrams.kit import ACCENT, INK, MUTED, STYLE, Diagram
from minillm.family import FamilyConfig
from minillm.masked_lm import mask_tokens
from minillm.seq2seq import Seq2SeqLM, config_from_hf_seq2seq, shift_right

#: t5-small's config.json (the fields `config_from_hf_seq2seq` reads): 60.5M parameters.
T5_SMALL = {"model_type": "t5", "vocab_size": 32128, "d_model": 512, "d_kv": 64, "d_ff": 2048, "num_layers": 6,
            "num_heads": 8, "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
            "feed_forward_proj": "relu", "n_positions": 512, "layer_norm_epsilon": 1e-6, "pad_token_id": 0,
            "eos_token_id": 1, "decoder_start_token_id": 0}
#: The masked-language-model example sentence (word tokens, for readability).
SENTENCE = "the cat sat on the mat and the dog ate its food".split()
#: The appendix's seq2seq task: a number in words -> its digits (character tokens).
SOURCE, TARGET = "forty-two", "42"
PALE = "#f4f4f4"  # a masked cell (as `Diagram.grid` draws it)


def _t5_small() -> Seq2SeqLM:
    """A `Seq2SeqLM` of t5-small's shape on the meta device (no memory, no weights: for counting)."""
    with torch.device("meta"):
        return Seq2SeqLM(config_from_hf_seq2seq(T5_SMALL, {}))


def _cell(d: Diagram, x: float, y: float, w: float, h: float, label: str = "", kind: str = "tensor",
          size: float = 9, fill: str | None = None, edge: str | None = None, lw: float = 1.0,
          color: str = INK) -> None:
    """A small square-cornered cell (a token, a key, a bucket) with `label` in it."""
    face, line, _ = STYLE[kind]
    d.ax.add_patch(patches.Rectangle((x, y), w, h, fc=fill or face, ec=edge or line, lw=lw))
    if label:
        d.text(x + w / 2, y + h / 2, label, size=size, color=color)


def _mask_grid(d: Diagram, x: float, y: float, allowed: torch.Tensor, cell: float) -> None:
    """A boolean (rows, cols) mask as cells: blue where a query may attend, pale grey where masked."""
    d.grid(x, y, allowed.float().tolist(), cell=cell, vmin=0, vmax=1.6, mask=(~allowed).tolist())


# ---------------------------------------------------------------------------
# The three kinds
# ---------------------------------------------------------------------------


@diagram("A_three_kinds")
def three_kinds() -> Diagram:
    """Encoder-only (fills in [MASK]), decoder-only (next token), encoder-decoder (cross-attention), side by side."""
    n = 4
    everything, past = torch.ones(n, n, dtype=torch.bool), causal_mask(n)
    d = Diagram(7.3, 3.95, title="Three kinds of transformer")
    tw, th, gap = 0.56, 0.34, 0.06
    y_in, y_stack, h_stack, y_out = 0.95, 1.62, 0.78, 2.74
    icon = 0.09

    def tokens(x: float, y: float, labels, edges=None) -> list[float]:
        """A row of token cells from x; returns their centres."""
        centres = []
        for k, label in enumerate(labels):
            if label is not None:
                _cell(d, x, y, tw, th, label, kind="data", size=9, edge=edges[k] if edges else None)
            centres.append(x + tw / 2)
            x += tw + gap
        return centres

    def stack(x: float, w: float, label: str, allowed: torch.Tensor) -> object:
        box = d.box(x, y_stack, w, h_stack, kind="layer")
        d.text(x + (w - n * icon - 0.1) / 2, y_stack + h_stack / 2, label, size=9)
        _mask_grid(d, x + w - n * icon - 0.12, y_stack + (h_stack - n * icon) / 2, allowed, icon)
        return box

    def column(x: float, w: float, title: str, models: str, lines) -> None:
        d.text(x + w / 2, 3.42, title, size=10, weight="bold")
        d.text(x + w / 2, 3.2, models, size=9, color=MUTED)
        for k, line in enumerate(lines):
            d.text(x + w / 2, 0.62 - 0.24 * k, line, size=9, color=MUTED)

    # encoder-only
    x1, w3 = 0.15, 3 * tw + 2 * gap
    column(x1, w3, "encoder-only", "BERT, RoBERTa", ("in: text with [MASK]s", "out: the masked tokens"))
    ins = tokens(x1, y_in, ["the", "[MASK]", "sleeps"])
    stack(x1, w3, "encoder\nsees all", everything)
    outs = tokens(x1, y_out, [None, "cat", None])
    for c in ins:
        d.arrow((c, y_in + th), (c, y_stack))
    d.arrow((outs[1], y_stack + h_stack), (outs[1], y_out))

    # decoder-only
    x2 = 2.3
    column(x2, w3, "decoder-only", "GPT, Llama", ("in: the text so far", "out: the next token"))
    ins = tokens(x2, y_in, ["the", "cat", "sleeps"])
    stack(x2, w3, "decoder\nsees the past", past)
    outs = tokens(x2, y_out, ["cat", "sleeps", "."])
    for c in ins:
        d.arrow((c, y_in + th), (c, y_stack))
    for c in outs:
        d.arrow((c, y_stack + h_stack), (c, y_out))

    # encoder-decoder
    x3, w2 = 4.45, 2 * tw + gap
    x4 = x3 + w2 + 0.35
    column(x3, x4 + w2 - x3, "encoder-decoder", "T5, BART", ("in: an input, and the output so far",
                                                              "out: the next output token"))
    d.text((x3 + x4 + w2) / 2, 0.62 - 0.48, "red: cross-attention to the memory", size=9, color=ACCENT)
    ins = tokens(x3, y_in, ["the", "cat"])
    enc = stack(x3, w2, "encoder", everything)
    for c in ins:
        d.arrow((c, y_in + th), (c, y_stack))
    mem = d.box(x3, y_out, w2, th, "memory", kind="tensor", size=9)
    d.arrow(enc.top, mem.bottom)
    ins = tokens(x4, y_in, ["<s>", "die"])
    stack(x4, w2, "decoder", past)
    outs = tokens(x4, y_out, ["die", "Katze"])
    for c in ins:
        d.arrow((c, y_in + th), (c, y_stack))
    for c in outs:
        d.arrow((c, y_stack + h_stack), (c, y_out))
    d.arrow(mem.right, (x4, y_stack + h_stack * 0.7), color=ACCENT, lw=1.6)
    return d


# ---------------------------------------------------------------------------
# Masks
# ---------------------------------------------------------------------------


@diagram("A_masks")
def masks() -> Diagram:
    """The masks of the three attentions: bidirectional with padding, causal, and cross (decoder x encoder)."""
    enc = ["the", "cat", "sleeps", "<pad>", "<pad>"]
    dec = ["<s>", "die", "Katze", "schläft"]
    s, t = len(enc), len(dec)
    real = torch.tensor([[tok != "<pad>" for tok in enc]])  # (1, S): the encoder's padding mask
    config = AttentionConfig(d_model=8, n_head=2, causal=False, positions="none")
    encoder_attn, cross_attn = CausalSelfAttention(config), CausalSelfAttention(config)
    decoder_attn = CausalSelfAttention(dataclasses.replace(config, causal=True))
    # the masks the layers apply (their `_mask`, as in forward), broadcast to (queries, keys)
    bidir = encoder_attn._mask(real, 1, s, s, "cpu")[0, 0].expand(s, s)
    causal = decoder_attn._mask(None, 1, t, t, "cpu").expand(t, t)
    cross = cross_attn._mask(real, 1, t, s, "cpu")[0, 0].expand(t, s)
    assert torch.equal(causal, causal_mask(t))

    d = Diagram(7.3, 3.85, title="Who may attend to whom: three masks")
    cell, y0 = 0.34, 0.72
    panels = ((0.75, enc, enc, bidir, "encoder self-attention", "bidirectional"),
              (3.25, dec, dec, causal, "decoder self-attention", "causal"),
              (5.3, dec, enc, cross, "cross-attention", "decoder reads encoder"))
    for x, queries, keys, allowed, title, sub in panels:
        rows, cols = allowed.shape
        y = y0 + (s - rows) * cell
        _mask_grid(d, x, y, allowed, cell)
        for i, q in enumerate(queries):
            d.text(x - 0.07, y + (rows - 0.5 - i) * cell, q, size=9, color=MUTED, ha="right")
        for j, k in enumerate(keys):
            d.text(x + (j + 0.5) * cell, y0 + s * cell + 0.07, k, size=9, rotation=90, va="bottom",
                   color=ACCENT if k == "<pad>" else MUTED)
        centre = x + cols * cell / 2
        d.text(centre, 3.3, title, size=10, weight="bold")
        d.text(centre, 3.08, sub, size=9, color=MUTED)
        d.text(centre, y - 0.15, f"({rows}, {cols}): queries × keys", size=9, color=MUTED)
    d.box(0.75, 0.12, 0.22, 0.2, kind="tensor", fill=_grid_blue(), edge="white")
    d.text(1.05, 0.22, "may attend (True)", size=9, ha="left")
    d.box(2.6, 0.12, 0.22, 0.2, kind="tensor", fill=PALE, edge=MUTED)
    d.text(2.9, 0.22, "masked (False → −∞)", size=9, ha="left")
    d.text(4.65, 0.22, "padding keys: masked for every query", size=9, ha="left", color=ACCENT)
    return d


def _grid_blue() -> str:
    """The colour `_mask_grid` gives an allowed cell (for a legend swatch), as `Diagram.grid` computes it."""
    return colors.to_hex(matplotlib.colormaps["Blues"](0.08 + 0.8 * 1.0 / 1.6))


# ---------------------------------------------------------------------------
# The encoder-decoder
# ---------------------------------------------------------------------------


@diagram("A_encoder_decoder")
def encoder_decoder() -> Diagram:
    """Encoder stack -> memory (B, S, C) -> every decoder block's cross-attention; shared embeddings; LM head."""
    model = _t5_small()
    c = model.config
    enc_block = sum(p.numel() for p in model.encoder.blocks[0].parameters())
    dec_block = sum(p.numel() for p in model.decoder.blocks[0].parameters())
    cross = sum(p.numel() for p in model.decoder.blocks[0].cross_attn.parameters())
    cross += sum(p.numel() for p in model.decoder.blocks[0].norm_cross.parameters())
    assert dec_block - enc_block == cross
    total = model.num_parameters()

    d = Diagram(7.3, 5.3, title="The encoder-decoder")
    xe, we, xd, wd = 0.45, 1.75, 4.0, 1.85
    # encoder, bottom to top
    ids = d.box(xe + 0.25, 0.2, we - 0.5, 0.4, "input_ids", kind="tensor", size=9, shape="(B, S)", shape_side="right")
    emb = d.box(xe, 0.85, we, 0.45, "tok_emb", kind="layer")
    d.arrow(ids.top, emb.bottom)
    d.box(xe - 0.15, 1.5, we + 0.3, 1.35, kind="note")
    att = d.box(xe, 1.65, we, 0.5, "self-attention\nbidirectional", kind="layer", size=9)
    mlp = d.box(xe, 2.3, we, 0.42, "MLP", kind="layer")
    d.arrow(emb.top, att.bottom)
    d.text(xe + we + 0.08, 1.42, "(B, S, C)", size=9, color=MUTED, ha="left")
    d.arrow(att.top, mlp.bottom)
    mem = d.box(xe + 0.25, 3.05, we - 0.5, 0.42, "memory", kind="tensor", edge=ACCENT)
    d.text(mem.center[0], 3.6, "(B, S, C)", size=9, color=MUTED)
    d.arrow(mlp.top, mem.bottom)
    d.text(xe + we + 0.25, 2.35, "encoder", size=10, weight="bold", ha="left")
    d.text(xe + we + 0.25, 2.1, f"× {c.n_layer}", size=11, weight="bold", ha="left")
    # decoder, bottom to top
    dids = d.box(xd + 0.2, 0.75, wd - 0.4, 0.4, "decoder_input_ids", kind="tensor", size=9, shape="(B, T)",
                 shape_side="right")
    demb = d.box(xd, 1.4, wd, 0.45, "tok_emb", kind="layer")
    d.arrow(dids.top, demb.bottom)
    d.box(xd - 0.15, 2.05, wd + 0.3, 2.1, kind="note")
    sa = d.box(xd, 2.2, wd, 0.5, "causal self-attention", kind="layer", size=9)
    ca = d.box(xd, 3.0, wd, 0.5, "cross-attention", kind="layer", edge=ACCENT, size=9)
    dm = d.box(xd, 3.65, wd, 0.4, "MLP", kind="layer")
    d.arrow(demb.top, sa.bottom)
    d.text(xd + wd + 0.08, 1.97, "(B, T, C)", size=9, color=MUTED, ha="left")
    d.arrow(sa.top, ca.bottom)
    d.arrow(ca.top, dm.bottom)
    d.text(xd + wd + 0.25, 2.85, "decoder", size=10, weight="bold", ha="left")
    d.text(xd + wd + 0.25, 2.6, f"× {c.n_decoder_layer}", size=11, weight="bold", ha="left")
    head = d.box(xd, 4.35, wd, 0.45, "lm_head  C → V", kind="layer", size=9)
    d.arrow(dm.top, head.bottom)
    logits = d.box(6.2, 4.37, 0.95, 0.42, "logits", kind="tensor", shape="(B, T, V)")
    d.arrow(head.right, logits.left)
    # the memory goes to the cross-attention of every decoder block
    d.arrow(mem.right, ca.left, color=ACCENT, lw=1.6)
    d.text((mem.right[0] + ca.left[0]) / 2, mem.right[1] + 0.15, "keys and values for", size=9, color=ACCENT)
    d.text((mem.right[0] + ca.left[0]) / 2, mem.right[1] - 0.17, "every decoder block", size=9, color=ACCENT)
    # one embedding table for both stacks (and the head)
    d.line([emb.right, demb.left], color=MUTED, dashed=True)
    d.text(3.1, 1.05, "one shared table, V × C", size=9, color=MUTED)
    # the numbers of t5-small
    notes = (f"t5-small: N = {c.n_layer}, C = {c.d_model}, V = {c.vocab_size:,}",
             f"encoder block {enc_block / 1e6:.2f}M parameters,",
             f"decoder block {dec_block / 1e6:.2f}M: + cross-attention",
             f"total {total / 1e6:.1f}M (lm_head tied to tok_emb)",
             "not drawn: norms and residual additions")
    for k, line in enumerate(notes):
        d.text(0.2, 4.78 - 0.22 * k, line, size=9, color=MUTED, ha="left")
    return d


# ---------------------------------------------------------------------------
# Cross-attention
# ---------------------------------------------------------------------------


@diagram("A_cross_attention")
def cross_attention() -> Diagram:
    """Cross-attention: queries from the decoder, keys and values from the memory, through one fused qkv layer."""
    model = _t5_small()
    layer = model.decoder.blocks[0].cross_attn
    h, hd, rows = layer.n_head, layer.n_head * layer.head_dim, layer.qkv.weight.shape[0]
    # the layer computes what the drawing says: q from the first H·D rows, k and v from the rest
    gen = torch.Generator().manual_seed(0)
    small = CausalSelfAttention(AttentionConfig(d_model=16, n_head=4, causal=False, positions="none"))
    x, memory = torch.randn(2, 3, 16, generator=gen), torch.randn(2, 5, 16, generator=gen)
    with torch.no_grad():
        w = small.qkv.weight
        q = (x @ w[:16].T + small.qkv.bias[:16]).view(2, 3, 4, 4).transpose(1, 2)
        k, v = small.context_kv(memory)
        att = (q @ k.transpose(-2, -1) / small.head_dim**0.5).softmax(-1)  # (B, H, T, S): no causal mask
        by_hand = small.proj((att @ v).transpose(1, 2).reshape(2, 3, 16))
        assert torch.allclose(small(x, context=memory), by_hand, atol=1e-5)

    d = Diagram(7.3, 4.1, title="Cross-attention: queries from the decoder, keys and values from the encoder")
    xb = d.box(0.15, 2.8, 0.85, 0.45, "x", kind="tensor", shape="(B, T, C)")
    d.text(xb.center[0], 3.42, "decoder", size=9, color=MUTED)
    mb = d.box(0.15, 1.0, 0.85, 0.45, "memory", kind="tensor", size=9, shape="(B, S, C)")
    d.text(mb.center[0], 1.62, "encoder", size=9, color=MUTED)
    # the fused weight, as three bands of rows
    bx, bw, band, by = 1.35, 1.1, 0.9, 0.75
    face, edge, _ = STYLE["layer"]
    bands = (("q", 0, hd, 2), ("k", hd, 2 * hd, 1), ("v", 2 * hd, rows, 0))
    centre = {}
    for name, lo, hi, k in bands:
        y = by + k * band
        _cell(d, bx, y, bw, band, f"{name}: rows\n{lo}–{hi - 1}", fill=face, edge=edge)
        centre[name] = y + band / 2
    d.ax.add_patch(patches.Rectangle((bx, by), bw, 3 * band, fc="none", ec=ACCENT, lw=1.8))
    d.text(bx + bw / 2, by - 0.15, "cross_attn.qkv.weight", size=9, color=ACCENT)
    d.arrow(xb.right, (bx, centre["q"]))
    d.arrow(mb.right, (bx, centre["k"]))
    d.arrow(mb.right, (bx, centre["v"]))
    qb = d.box(2.8, centre["q"] - 0.22, 0.9, 0.45, "q", kind="tensor", shape="(B, H, T, D)")
    kb = d.box(2.8, centre["k"] - 0.22, 0.9, 0.45, "k", kind="tensor", shape="(B, H, S, D)")
    vb = d.box(2.8, centre["v"] - 0.22, 0.9, 0.45, "v", kind="tensor", shape="(B, H, S, D)")
    for name, box in (("q", qb), ("k", kb), ("v", vb)):
        d.arrow((bx + bw, centre[name]), box.left)
    soft = d.box(4.05, 2.27, 1.7, 0.62, "softmax(q kᵀ / √D)\npadding keys masked", kind="op", size=9)
    d.arrow(qb.right, (soft.x, soft.y + 0.45))
    d.arrow(kb.right, (soft.x, soft.y + 0.17))
    mix = d.box(4.45, vb.y, 0.9, 0.45, "att · v", kind="op")
    d.arrow(soft.bottom, mix.top)
    d.text(soft.center[0] + 0.08, (soft.y + mix.y + mix.h) / 2, "att (B, H, T, S)", size=9, color=MUTED,
           ha="left")
    d.arrow(vb.right, mix.left)
    proj = d.box(5.7, vb.y - 0.03, 0.7, 0.51, "proj", kind="layer")
    d.arrow(mix.right, proj.left)
    out = d.box(6.65, vb.y, 0.55, 0.45, "out", kind="tensor", shape="(B, T, C)")
    d.arrow(proj.right, out.left)
    for k, line in enumerate(("no causal mask:", "each of the T", "positions reads", "all S inputs")):
        d.text(6.0, 3.25 - 0.22 * k, line, size=9, color=MUTED, ha="left")
    d.text(0.15, 0.3, f"one fused layer, as in self-attention: its first H·D = {hd} rows turn x into queries,",
           size=9, color=ACCENT, ha="left")
    d.text(0.15, 0.08, f"the rest turn the memory into keys and values (t5-small: H = {h}, D = {layer.head_dim}, "
                       f"weight {rows} × {layer.qkv.weight.shape[1]})", size=9, color=ACCENT, ha="left")
    return d


# ---------------------------------------------------------------------------
# BERT's masking
# ---------------------------------------------------------------------------


def _masking_draw():
    """`SENTENCE` through `mask_tokens`: the first seed whose draw shows every case (2 [MASK], 1 random, 1 kept)."""
    vocab = ["[PAD]", "[MASK]"] + sorted(set(SENTENCE) | {"a", "big", "red", "sun", "ran", "cup", "bed", "hat"})
    pad_id, mask_id = 0, 1
    ids = torch.tensor([[vocab.index(w) for w in SENTENCE]])
    for seed in range(10_000):
        inputs, labels = mask_tokens(ids, mask_id, len(vocab), 0.15, special_ids=(pad_id,),
                                     generator=torch.Generator().manual_seed(seed))
        chosen = labels[0] != -100
        masked = chosen & (inputs[0] == mask_id)
        random = chosen & (inputs[0] != mask_id) & (inputs[0] != ids[0])
        kept = chosen & (inputs[0] == ids[0])
        if masked.sum() == 2 and random.sum() == 1 and kept.sum() == 1:
            return vocab, seed, inputs[0].tolist(), labels[0].tolist(), masked, random, kept
    raise AssertionError("no seed shows all three cases")


@diagram("A_mlm_masking")
def mlm_masking() -> Diagram:
    """BERT's recipe on a sentence: 15% chosen; of those 80% [MASK], 10% random, 10% kept; labels only there."""
    vocab, seed, inputs, labels, masked, random, kept = _masking_draw()
    n = len(SENTENCE)
    d = Diagram(7.3, 3.55, title="BERT's masking: choose 15%, then 80% [MASK], 10% random, 10% kept")
    w, gap, h, x0 = 0.5, 0.04, 0.36, 0.72
    rows = {"text": 2.45, "input": 1.6, "labels": 0.95}
    for name, y in rows.items():
        d.text(x0 - 0.1, y + h / 2, name, size=9, color=MUTED, ha="right")
    case = {j: "mask" if masked[j] else "random" if random[j] else "kept" if kept[j] else None for j in range(n)}
    colours = {"mask": STYLE["warn"], "random": STYLE["accent"], "kept": STYLE["data"]}
    for j, word in enumerate(SENTENCE):
        x = x0 + j * (w + gap)
        chosen = case[j] is not None
        _cell(d, x, rows["text"], w, h, word, kind="data", edge=ACCENT if chosen else None, lw=1.8 if chosen else 1.0)
        if chosen:
            face, edge, _ = colours[case[j]]
            _cell(d, x, rows["input"], w, h, vocab[inputs[j]], kind="data", fill=face, edge=edge, lw=1.4)
            d.arrow((x + w / 2, rows["text"]), (x + w / 2, rows["input"] + h), color=edge)
            _cell(d, x, rows["labels"], w, h, vocab[labels[j]], kind="tensor")
        else:
            _cell(d, x, rows["input"], w, h, vocab[inputs[j]], kind="data")
            _cell(d, x, rows["labels"], w, h, "−100", kind="tensor", fill="white", edge="#b0b0b0", color=MUTED)
    n_chosen = sum(c is not None for c in case.values())
    d.text(x0, 3.0, f"red: chosen (each token with p = 0.15); this draw, seed {seed}, chose {n_chosen} of {n} "
                    "to show every case", size=9, color=MUTED, ha="left")
    legend = (("mask", "[MASK]: 80% of the chosen"), ("random", "a random token: 10%"), ("kept", "unchanged: 10%"))
    x = x0
    for key, text in legend:
        face, edge, _ = colours[key]
        _cell(d, x, 0.4, 0.22, 0.2, fill=face, edge=edge)
        d.text(x + 0.3, 0.5, text, size=9, ha="left")
        x += 2.2
    d.text(x0, 0.15, "labels: the original token's id where chosen, −100 elsewhere (the loss skips those)",
           size=9, color=MUTED, ha="left")
    return d


# ---------------------------------------------------------------------------
# T5's relative position buckets
# ---------------------------------------------------------------------------


def _bucket_starts(bidirectional: bool, num_buckets: int, max_distance: int, after: bool) -> dict[int, int]:
    """bucket id -> the smallest distance |j − i| in it, for keys before (or, `after`, after) the query."""
    far = 4 * max_distance
    distance = torch.arange(0, far + 1)
    rel = distance if after else -distance
    buckets = relative_position_bucket(rel, bidirectional, num_buckets, max_distance).tolist()
    starts: dict[int, int] = {}
    for dist, b in zip(distance.tolist(), buckets):
        if after and dist == 0:
            continue  # distance 0 is the query itself, counted among the keys before it
        starts.setdefault(b, dist)
    return starts


@diagram("A_relative_buckets")
def relative_buckets() -> Diagram:
    """T5's relative position buckets: exact for small distances, log-spaced up to max_distance, then one."""
    nb, md = 32, 128
    half = nb // 2
    rows = (("encoder (bidirectional): key at or before the query", _bucket_starts(True, nb, md, False), 0),
            ("encoder: key after the query", _bucket_starts(True, nb, md, True), half),
            ("decoder (causal): key at or before the query", _bucket_starts(False, nb, md, False), 0),
            ("decoder, continued (a key after the query: bucket 0, and masked)", _bucket_starts(False, nb, md, False),
             half))
    # everything farther than any drawn distance shares the last bucket
    assert relative_position_bucket(torch.tensor([-10**6]), True, nb, md).item() == half - 1
    assert relative_position_bucket(torch.tensor([10**6]), True, nb, md).item() == nb - 1
    assert relative_position_bucket(torch.tensor([-10**6, 5]), False, nb, md).tolist() == [nb - 1, 0]

    d = Diagram(7.3, 4.75, title=f"T5's relative positions: distance → bucket ({nb} buckets, max_distance {md})")
    cw, ch, x0 = 0.43, 0.32, 0.25
    top = 3.8
    for r, (title, starts, first) in enumerate(rows):
        y = top - r * 0.9
        d.text(x0, y + ch + 0.17, title, size=9, ha="left", weight="bold")
        last = max(starts)
        for k, b in enumerate(range(first, first + half)):
            x = x0 + k * cw
            if b not in starts:  # never used: distance 0 counts as "before"
                _cell(d, x, y, cw, ch, str(b), fill="white", edge="#b0b0b0", color=MUTED)
                continue
            kind = "warn" if b == last else "accent" if starts.get(b + 1, starts[b] + 1) - starts[b] > 1 else "tensor"
            face, edge, _ = STYLE[kind]
            _cell(d, x, y, cw, ch, str(b), fill=face, edge=edge)
            # a ruler under the strip: the distance where each bucket begins
            d.line([(x, y), (x, y - 0.06)], color=MUTED)
            d.text(x, y - 0.16, str(starts[b]), size=9, color=MUTED)
        end = starts.get(first + half)  # a strip that continues on the next one, or ∞ after the last bucket
        d.text(x0 + half * cw, y - 0.16, "∞" if end is None else str(end), size=9, color=MUTED)
        d.line([(x0 + half * cw, y), (x0 + half * cw, y - 0.06)], color=MUTED)
    legend = (("tensor", "exact: one distance each"), ("accent", "log-spaced: ever wider"),
              ("warn", "the last: every distance beyond"))
    x = x0
    for kind, text in legend:
        face, edge, _ = STYLE[kind]
        _cell(d, x, 0.43, 0.22, 0.2, fill=face, edge=edge)
        d.text(x + 0.3, 0.53, text, size=9, ha="left")
        x += 2.3
    d.text(x0, 0.17, "in a cell: the bucket id; under the strip: the distance |j − i| where each bucket begins",
           size=9, color=MUTED, ha="left")
    return d


# ---------------------------------------------------------------------------
# Teacher forcing and generation
# ---------------------------------------------------------------------------


def _toy_seq2seq():
    """A small random `Seq2SeqLM` on characters, its vocabulary, and the ids of `SOURCE` and `TARGET` + </s>."""
    vocab = ["<pad>", "</s>", "<s>"] + sorted(set(SOURCE + TARGET))
    config = FamilyConfig(vocab_size=len(vocab), context_length=16, d_model=32, n_head=4, d_ff=64, n_layer=2,
                          n_decoder_layer=2, pad_token_id=0, eos_token_id=1, decoder_start_token_id=2)
    torch.manual_seed(0)
    model = Seq2SeqLM(config).eval()
    source = torch.tensor([[vocab.index(ch) for ch in SOURCE]])
    labels = torch.tensor([[vocab.index(ch) for ch in TARGET] + [config.eos_token_id]])
    return model, vocab, source, labels


@diagram("A_seq2seq_generation")
def seq2seq_generation() -> Diagram:
    """Teacher forcing (labels shifted right, one pass) and generation (a growing KV cache, cross K/V once)."""
    model, vocab, source, labels = _toy_seq2seq()
    c = model.config
    decoder_in = shift_right(labels, c.decoder_start_token_id, c.pad_token_id)
    with torch.no_grad():
        logits, _ = model(source, decoder_in, labels=labels)
        memory = model.encode(source)
        memory_kv = model.decoder.memory_kv(memory)  # once
        cache = model.decoder.new_kv_cache(1, decoder_in.size(1))
        lengths = []
        for step in range(decoder_in.size(1)):  # the tokens a generation would feed back, one per step
            model.decode(decoder_in[:, step:step + 1], memory_kv, kv_cache=cache)
            lengths.append(cache.length)
    s = memory_kv[0][0].shape[2]
    steps = len(lengths)
    lab = [vocab[i] for i in labels[0].tolist()]
    din = [vocab[i] for i in decoder_in[0].tolist()]

    d = Diagram(7.3, 5.6, title="Training with teacher forcing, generating one token at a time")
    # -- training ------------------------------------------------------------------------
    d.text(0.15, 5.0, "training: the decoder reads the true output, shifted right (all positions in one pass)",
           size=10, weight="bold", ha="left")
    w, h, x0 = 0.45, 0.36, 1.15
    y_lab, y_in, y_src = 4.25, 3.45, 2.55
    d.text(x0 - 0.1, y_lab + h / 2, "labels", size=9, color=MUTED, ha="right")
    d.text(x0 - 0.1, y_in + h / 2, "decoder in", size=9, color=MUTED, ha="right")
    d.text(x0 - 0.1, y_src + 0.2, "input", size=9, color=MUTED, ha="right")
    for j in range(steps):
        x = x0 + j * (w + 0.06)
        _cell(d, x, y_lab, w, h, lab[j], kind="data")
        _cell(d, x, y_in, w, h, din[j], kind="data", edge=ACCENT if j == 0 else None, lw=1.6 if j == 0 else 1.0)
        if j + 1 < steps:
            d.arrow((x + w / 2, y_lab), (x + w + 0.06 + w / 2, y_in + h), color=ACCENT)
    right = x0 + steps * (w + 0.06) - 0.06
    d.text(right + 0.12, (y_lab + y_in + h) / 2, "shift_right", size=9, color=ACCENT, ha="left")
    src = d.box(x0, y_src, right - x0 + 0.4, 0.4, SOURCE, kind="data")
    dec = d.box(3.3, y_in - 0.07, 1.05, 0.5, "decoder\ncausal", kind="layer", size=9)
    enc = d.box(3.3, y_src - 0.05, 1.05, 0.5, "encoder", kind="layer")
    d.arrow((right, y_in + h / 2), dec.left)
    d.arrow(src.right, enc.left)
    d.arrow(enc.top, dec.bottom)
    d.text(enc.top[0] + 0.08, (enc.top[1] + dec.bottom[1]) / 2, f"memory (1, {s}, C)", size=9, color=MUTED,
           ha="left")
    lb = d.box(4.75, y_in, 0.8, h, "logits", kind="tensor", size=9, shape=f"(1, {logits.shape[1]}, V)")
    d.arrow(dec.right, lb.left)
    loss = d.box(5.95, y_in - 0.07, 1.2, 0.5, "cross-entropy", kind="op", size=9)
    d.arrow(lb.right, loss.left)
    d.line([(right, y_lab + h / 2), (loss.center[0], y_lab + h / 2)], color=INK, lw=1.2)
    d.arrow((loss.center[0], y_lab + h / 2), loss.top)
    d.text(4.75, y_lab + h / 2 + 0.14, "targets", size=9, color=MUTED)
    d.text(4.75, y_src + 0.3, "the causal mask lets position t read", size=9, color=MUTED, ha="left")
    d.text(4.75, y_src + 0.08, "inputs 0 … t: never its own label", size=9, color=MUTED, ha="left")
    # -- generation ----------------------------------------------------------------------
    d.text(0.15, 2.0, "generation: one token per step, each output fed back as the next input", size=10,
           weight="bold", ha="left")
    cell, ys = 0.27, 1.33
    xs, xc, xo = 1.85, 3.2, 6.25
    d.text(1.3, 1.68, "in", size=9, color=MUTED)
    d.text(xs + steps * cell / 2, 1.68, "self-attention k, v", size=9, color=MUTED)
    d.text(xc + s * cell / 2, 1.68, f"cross-attention k, v of the S = {s} inputs", size=9, color=MUTED)
    d.text(xo + 0.22, 1.68, "out", size=9, color=MUTED)
    new_fill, new_edge = STYLE["warn"][0], ACCENT
    empty = {"fill": "white", "edge": "#b0b0b0"}
    labels_rows = ["encode"] + [f"step {k + 1}" for k in range(steps)]
    for r, name in enumerate(labels_rows):
        y = ys - r * cell
        d.text(0.95, y + cell / 2, name, size=9, color=MUTED, ha="right")
        for j in range(s):
            if r == 0:
                _cell(d, xc + j * cell, y, cell, cell, fill=new_fill, edge=new_edge)
            else:
                _cell(d, xc + j * cell, y, cell, cell)
        for j in range(steps):
            if r == 0 or j >= lengths[r - 1]:
                _cell(d, xs + j * cell, y, cell, cell, **empty)
            elif j == lengths[r - 1] - 1:
                _cell(d, xs + j * cell, y, cell, cell, fill=new_fill, edge=new_edge)
            else:
                _cell(d, xs + j * cell, y, cell, cell)
        if r > 0:
            _cell(d, 1.1, y, 0.4, cell, din[r - 1], kind="data")
            _cell(d, xo, y, 0.45, cell, lab[r - 1], kind="data")
    d.text(xc + s * cell + 0.1, ys + cell / 2, "once", size=9, color=ACCENT, ha="left")
    for x, text, style in ((1.1, "computed this step", {"fill": new_fill, "edge": new_edge}),
                           (3.2, "read back, not recomputed", {}), (5.5, "not yet", empty)):
        _cell(d, x, 0.08, 0.22, 0.2, **style)
        d.text(x + 0.3, 0.18, text, size=9, ha="left")
    return d
