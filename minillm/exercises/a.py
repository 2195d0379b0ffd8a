"""Appendix A's exercises: the padding mask, T5's relative position buckets, shift right, cross-attention.

Every check compares the reader's function with the package (`CausalSelfAttention`
and `relative_position_bucket` in `minillm.attention`, `shift_right` in
`minillm.seq2seq`) on shapes, seeds and edge cases the reader did not choose.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from minillm.attention import AttentionConfig, CausalSelfAttention, causal_mask, relative_position_bucket
from minillm.exercises import ExerciseFailed, as_tensor, assert_close, call_answer, exercise, expect, is_stub
from minillm.seq2seq import shift_right


def _layer(config: AttentionConfig, seed: int) -> CausalSelfAttention:
    """A layer with random weights, made without touching the reader's random state."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        layer = CausalSelfAttention(config)
    return layer.eval()


# -- A.1: the padding mask, causal or not ---------------------------------------------------------


def _padding(lengths: list[int], s: int, left: bool = False) -> torch.Tensor:
    """(B, S) bool, True at the `lengths[b]` real tokens of row b (at the end of the row when `left`)."""
    pos = torch.arange(s)[None, :]
    n = torch.tensor(lengths)[:, None]
    return pos >= s - n if left else pos < n


@exercise("A.1", "the padding mask, causal or not")
def grade_padding_mask(answer: Callable[[torch.Tensor, bool, int], torch.Tensor]) -> str:
    """answer(key_padding (B, S) bool, causal, T) -> bool mask broadcastable to (B, 1, T, S), True = may attend.

    The reference is the mask `CausalSelfAttention` itself builds (`_mask`): the
    padding mask (True = a real key) broadcast over heads and queries, AND the
    causal mask `causal_mask(T, S)` when the layer is causal (the T queries are
    the last T of the S positions), and then the rule that a query whose every
    key is masked may see all keys (its output is never used, and a row of
    -inf would make a NaN). The check requires that rule: the last cases
    (left padding under a causal mask, a row that is all padding) test it.
    """
    layers = {causal: _layer(AttentionConfig(d_model=8, n_head=2, context_length=64, causal=causal), 1)
              for causal in (False, True)}
    gen = torch.Generator().manual_seed(101)
    cases = [  # (what, key_padding, causal, T); no query has every key masked in the first five
        ("an encoder (not causal, T = S), right padding", _padding([6, 4, 2], 6), False, 6),
        ("cross-attention (not causal, T = 4 queries, S = 7 memory keys)", _padding([7, 3], 7), False, 4),
        ("cross-attention with more queries than keys (T = 9, S = 3)", _padding([3, 1], 3), False, 9),
        ("a decoder (causal, T = S), right padding", _padding([5, 2, 1], 5), True, 5),
        ("a decoder with a cache (causal, T = 3 new of S = 8 positions)", _padding([8, 6], 8), True, 3),
        ("causal with left padding (the first queries of the second row see only padding)",
         _padding([6, 3], 6, left=True), True, 6),
        ("not causal, a row that is all padding", _padding([5, 0, 2], 5), False, 5),
    ]
    for _ in range(4):  # and four drawn at random
        b, s = (int(torch.randint(2, 5, (), generator=gen)), int(torch.randint(2, 10, (), generator=gen)))
        causal = bool(torch.randint(0, 2, (), generator=gen))
        t = int(torch.randint(1, s + 1, (), generator=gen)) if causal else int(torch.randint(1, 10, (), generator=gen))
        cases.append((f"drawn at random ({'causal' if causal else 'not causal'}, B = {b}, T = {t}, S = {s})",
                      torch.rand(b, s, generator=gen) > 0.3, causal, t))
    rule = ("A query whose every key is masked (padding under the causal mask, or a row of padding only) "
            "may see all keys instead, as CausalSelfAttention does: `allowed | ~allowed.any(-1, keepdim=True)`; "
            "its output is never used, and a row of -inf would give NaN after the softmax.")
    for what, key_padding, causal, t in cases:
        b, s = key_padding.shape
        mask = as_tensor(call_answer(answer, key_padding.clone(), causal, t, what="your padding_mask"),
                         f"padding_mask for {what}")
        expect(mask.dtype == torch.bool, f"{what}: the mask has dtype {mask.dtype}; return a bool tensor "
                                         "(True = may attend).")
        target = (b, 1, t, s)
        try:
            fits = mask.dim() <= 4 and torch.broadcast_shapes(mask.shape, target) == target
        except RuntimeError:
            fits = False
        expect(fits, f"{what}: a mask of shape {tuple(mask.shape)} does not broadcast to (B, 1, T, S) = {target}. "
                     "Give the padding mask a head axis and a query axis, key_padding[:, None, None, :] "
                     "(B, 1, 1, S); a causal (T, S) mask then broadcasts against it.")
        expected = layers[causal]._mask(key_padding, b, t, s, key_padding.device).expand(target)
        got = mask.expand(target)
        if torch.equal(got, expected):
            continue
        plain = key_padding[:, None, None, :] & (causal_mask(t, s) if causal else True)
        if torch.equal(got, plain.expand(target)):
            hint = rule
        elif causal:
            hint = ("With causal=True a query may attend to a key when the key is a real token AND the causal "
                    "mask allows it: key_padding[:, None, None, :] & causal_mask(T, S), where query i sits at "
                    f"position S - T + i (the T queries are the last T of the S positions). {rule}")
        else:
            hint = ("Without causality, query i may attend to key j exactly when key j is a real token "
                    "(True in key_padding), whatever the query: key_padding[:, None, None, :]; padding "
                    f"queries are not masked, only padding keys. {rule}")
        wrong = (got != expected).nonzero()[0].tolist()
        raise ExerciseFailed(f"{what}: at (batch {wrong[0]}, query {wrong[2]}, key {wrong[3]}) your mask says "
                             f"{bool(got[tuple(wrong)])}, CausalSelfAttention's says {bool(expected[tuple(wrong)])}. "
                             f"{hint}")
    return (f"equals the mask CausalSelfAttention builds in {len(cases)} cases: encoder, cross-attention, decoder "
            "with and without a cache, and queries whose every key is padding.")


# -- A.2: T5's relative position buckets ----------------------------------------------------------


def _bucket_hint(r: int, got: int, expected: int, bidirectional: bool, num_buckets: int, max_distance: int) -> str:
    """What to look at for relative position r (key - query) whose bucket is `got` instead of `expected`."""
    half = num_buckets // 2 if bidirectional else num_buckets
    exact = half // 2
    distance = abs(r) if bidirectional else max(-r, 0)
    sign = ("relative_position is key position - query position: negative for keys before the query, "
            "positive for keys after it.")
    if bidirectional and (got >= half) != (expected >= half) and got % half == expected % half:
        return (f"Bidirectional buckets come in two halves of {half}: keys at or before the query use buckets "
                f"0 .. {half - 1}, keys after it (relative position > 0) {half} .. {num_buckets - 1} (add "
                f"num_buckets // 2 = {half}). " + sign)
    if not bidirectional and r < 0 and got == 0:
        return ("A causal stack sees the keys before the query (relative position < 0): their distance is "
                "-relative_position, and only keys after the query fall in bucket 0. " + sign)
    if not bidirectional and r > 0:
        return ("In a causal (unidirectional) stack the keys after the query are never seen: their distance "
                "counts as 0, so they share bucket 0. The distance is max(-relative_position, 0). " + sign)
    side = (f"Bidirectional: the distance is |relative_position| and each side has {half} buckets. "
            if bidirectional else "Causal: the distance of a key before the query is -relative_position. ")
    if distance < exact:
        return side + f"Distances below {exact} (half of the {half} buckets of a side) each get their own bucket: " \
                      "the bucket is the distance itself."
    if distance >= max_distance:
        return side + f"Every distance of max_distance ({max_distance}) or more shares the side's last bucket, " \
                      f"{half - 1}: clamp the logarithmic bucket."
    return side + (f"From distance {exact} on, the bucket is {exact} + int(log(distance / {exact}) / "
                   f"log(max_distance / {exact}) * ({half} - {exact})), rounded down (.long() of a float32 "
                   f"tensor), so that {exact} .. max_distance spread logarithmically over buckets {exact} .. "
                   f"{half - 1}.")


@exercise("A.2", "T5's relative position buckets")
def grade_relative_buckets(answer: Callable[[torch.Tensor, bool, int, int], torch.Tensor]) -> str:
    """answer(relative_position, bidirectional, num_buckets, max_distance) -> buckets (same shape, int64).

    Compared with `minillm.attention.relative_position_bucket` on every relative
    position from far before to far after the query, and on the (T, S) matrix of
    key - query positions that `RelativePositionBias` makes.
    """
    settings = [(32, 128, True), (32, 128, False), (16, 64, True), (8, 20, False), (64, 256, True), (12, 30, False)]
    for num_buckets, max_distance, bidirectional in settings:
        span = 2 * max_distance + 7
        q_pos, k_pos = torch.arange(3, 3 + 9)[:, None], torch.arange(40)[None, :]
        for name, rel in (("every relative position", torch.arange(-span, span + 1)),
                          ("the (T, S) matrix of key - query positions", k_pos - q_pos)):
            where = (f"{name}, bidirectional={bidirectional}, num_buckets={num_buckets}, "
                     f"max_distance={max_distance}")
            got = as_tensor(call_answer(answer, rel.clone(), bidirectional, num_buckets, max_distance,
                                  what="your relative_bucket"), f"the buckets of {name}")
            expect(tuple(got.shape) == tuple(rel.shape),
                   f"{where}: buckets of shape {tuple(got.shape)}, expected the shape of relative_position "
                   f"{tuple(rel.shape)} (one bucket per entry).")
            expect(got.dtype == torch.int64, f"{where}: the buckets have dtype {got.dtype}; return integer indices "
                                             "(int64, .long()), which an nn.Embedding can look up.")
            expected = relative_position_bucket(rel, bidirectional, num_buckets, max_distance)
            if torch.equal(got, expected):
                continue
            first = (got != expected).nonzero()[0]
            r, mine, theirs = int(rel[tuple(first)]), int(got[tuple(first)]), int(expected[tuple(first)])
            raise ExerciseFailed(
                f"{where}: relative position {r} (key - query) gets bucket {mine}, the reference {theirs}. "
                + _bucket_hint(r, mine, theirs, bidirectional, num_buckets, max_distance))
    return (f"equals minillm.attention.relative_position_bucket for {len(settings)} settings (T5's 32 buckets and "
            "128, bidirectional and causal, others) on every distance up to beyond max_distance.")


# -- A.3: teacher forcing: shift right ------------------------------------------------------------


@exercise("A.3", "teacher forcing")
def grade_shift_right(answer: Callable[[torch.Tensor, int, int], torch.Tensor]) -> str:
    """answer(labels (B, T), start_id, pad_id) -> decoder inputs (B, T), like `minillm.seq2seq.shift_right`."""
    gen = torch.Generator().manual_seed(103)

    def labels(b: int, t: int, lengths: list[int] | None = None) -> torch.Tensor:
        y = torch.randint(3, 50, (b, t), generator=gen)
        if lengths is not None:  # -100 after each row's length: padding the loss ignores
            y = y.masked_fill(torch.arange(t)[None, :] >= torch.tensor(lengths)[:, None], -100)
        return y

    masked_start = labels(2, 6)
    masked_start[:, :2] = -100  # the first labels ignored, e.g. a prompt the loss skips
    cases = [
        ("T5 (start = pad = 0), no -100", labels(2, 5), 0, 0),
        ("BART (start 2, pad 1), -100 at the padded ends", labels(3, 7, [7, 4, 1]), 2, 1),
        ("start 5, pad 3, -100 at the start of each row", masked_start, 5, 3),
        ("a single label per row (T = 1)", labels(3, 1), 7, 0),
        ("one row, -100 in the middle", torch.tensor([[11, -100, 12, -100, -100, 13]]), 1, 4),
    ]
    for _ in range(3):  # and three drawn at random
        b, t = int(torch.randint(1, 5, (), generator=gen)), int(torch.randint(1, 12, (), generator=gen))
        y = labels(b, t, torch.randint(0, t + 1, (b,), generator=gen).tolist())
        start, pad = torch.randint(0, 3, (2,), generator=gen).tolist()
        cases.append((f"drawn at random (B = {b}, T = {t}, start {start}, pad {pad})", y, start, pad))
    for what, y, start, pad in cases:
        given = y.clone()
        got = as_tensor(call_answer(answer, given, start, pad, what="your shift_right"), f"shift_right for {what}")
        expect(torch.equal(given, y), f"{what}: your function changed `labels` in place; build a new tensor "
                                      "(the loss still needs the labels, -100 included).")
        expect(tuple(got.shape) == tuple(y.shape),
               f"{what}: decoder inputs of shape {tuple(got.shape)}, expected the labels' shape {tuple(y.shape)}: "
               "the start token goes in front and the last label drops off.")
        expect(got.dtype == y.dtype, f"{what}: decoder inputs of dtype {got.dtype}; keep the labels' {y.dtype} "
                                     "(token ids for an embedding).")
        expected = shift_right(y, start, pad)
        if torch.equal(got, expected):
            continue
        if not torch.equal(got[:, 0], expected[:, 0]):
            hint = (f"Every row starts with start_id ({start}): the decoder reads it at step 0 and predicts "
                    "labels[:, 0].")
        elif bool((got == -100).any()):
            hint = (f"-100 marks a label the loss ignores; it is no token id (the embedding would fail on it): "
                    f"replace it with pad_id ({pad}) in the decoder inputs.")
        else:
            hint = ("At step t the decoder reads the label of step t - 1: out[:, 1:] = labels[:, :-1] "
                    f"(then -100 -> pad_id ({pad})).")
        assert_close(got, expected, f"{what}: shift_right(labels, start_id={start}, pad_id={pad})", hint=hint)
    return (f"equals minillm.seq2seq.shift_right in {len(cases)} cases (T5 and BART ids, -100 at the ends, the "
            "start and the middle, T = 1) and leaves the labels as they were.")


# -- A.4: cross-attention, written out ------------------------------------------------------------


def _refuse(*args, **kwargs):
    raise ExerciseFailed("write cross-attention out with attn.qkv, attn.proj and the attention formula: "
                         "calling the layer itself (attn(...)) is what the check compares you with.")


@exercise("A.4", "cross-attention, written out")
def grade_cross_attention(answer: Callable[..., torch.Tensor]) -> str:
    """answer(x (B, T, C), memory (B, S, C), attn, memory_mask (B, S) bool) -> (B, T, C).

    Compared with `attn(x, mask=memory_mask, context=memory)` for layers with
    `causal=False`: queries from x through the first H D rows of `attn.qkv`,
    keys and values from the memory through the rest, scores times
    `attn.config.scale` (1/sqrt(D) when None) with padding keys masked, softmax,
    heads merged, `attn.proj`. Every memory row has at least one real token; the layers have as many
    key/value heads as query heads (the appendix's models do not use grouped-query attention).
    The layer's own forward is switched off while the answer runs.
    """
    basics = ("Queries: x through the first H*D rows of attn.qkv (weight[:H*D], and bias[:H*D] when the bias is "
              "not None); keys and values: the memory through the rest (split in two). View each as heads "
              "(B, H, T or S, D) with H = attn.n_head, D = attn.head_dim; scores q k^T times attn.config.scale "
              "(1/sqrt(D) when it is None); -inf where memory_mask[:, None, None, :] is False; softmax over the S "
              "keys; times v; heads back to (B, T, H*D); then attn.proj.")
    cases = [  # (what, config, B, T, S, lengths of the memory rows)
        ("4 heads of 8, T = 5 queries, S = 7 memory positions",
         AttentionConfig(d_model=32, n_head=4, causal=False, attn_impl="manual"), 2, 5, 7, [7, 4]),
        ("the same on PyTorch's fused kernel, no padding", AttentionConfig(d_model=32, n_head=4, causal=False),
         2, 6, 6, [6, 6]),
        ("more queries than memory positions (T = 9, S = 3)",
         AttentionConfig(d_model=24, n_head=3, causal=False, attn_impl="manual"), 3, 9, 3, [3, 1, 2]),
        ("T5-style: no biases, unscaled scores (scale = 1.0), heads of 8 with C = 24 and H = 4 (H*D = 32)",
         AttentionConfig(d_model=24, n_head=4, d_head=8, causal=False, bias=False, scale=1.0, attn_impl="manual"),
         2, 4, 5, [5, 2]),
    ]
    hints = ["", "", "", "attn.config.scale is 1.0 here (T5 does not scale its scores), the head size is "
             "attn.head_dim = 8 (not C // H = 6), and the layer has no biases (attn.qkv.bias is None). "]
    gen = torch.Generator().manual_seed(104)
    for i, ((what, config, b, t, s, lengths), hint) in enumerate(zip(cases, hints, strict=True)):
        layer = _layer(config, 104 + i)
        if config.bias:
            with torch.no_grad():  # nonzero biases, so that forgetting one shows
                layer.qkv.bias.normal_(0.0, 0.5, generator=gen)
                layer.proj.bias.normal_(0.0, 0.5, generator=gen)
        x = torch.randn(b, t, config.d_model, generator=gen)
        memory = torch.randn(b, s, config.d_model, generator=gen)
        memory_mask = _padding(lengths, s)
        with torch.no_grad():
            expected = layer(x, mask=memory_mask, context=memory)
            unmasked = layer(x, context=memory)
            layer.forward = _refuse
            try:
                got = call_answer(answer, x.clone(), memory.clone(), layer, memory_mask.clone(),
                            what=f"your cross_attention ({what})")
            finally:
                del layer.forward
        got = as_tensor(got, f"cross_attention ({what})")
        expect(tuple(got.shape) == tuple(expected.shape),
               f"{what}: output of shape {tuple(got.shape)}, expected (B, T, C) = {tuple(expected.shape)}: one "
               "vector per query, after attn.proj.")
        expect(bool(torch.isfinite(got).all()), f"{what}: the output holds nan or inf. {hint}{basics}")
        if not bool(memory_mask.all()) and torch.allclose(got, unmasked, atol=1e-5, rtol=1e-4):
            hint += ("Your output is that of attention without the memory mask: padding positions of the memory "
                     "must get a score of -inf before the softmax. ")
        assert_close(got, expected, f"{what}: the output", hint=hint + basics, atol=1e-5, rtol=1e-4)
    return (f"matches attn(x, mask=memory_mask, context=memory) for {len(cases)} layers: padding, T > S, "
            "PyTorch's fused kernel, and T5's unscaled heads without biases.")
