"""Appendix B's exercises: int8 codes per channel, int4 packing, speculative decoding's rule, KV-cache bytes,
the distillation loss.

The checks compare the reader's function with the package on inputs the reader
did not choose: `minillm.quantize.quantize_tensor` (codes and scales, rows of
zeros and outliers), `minillm.quantize.pack_int4` and `unpack_int4` (odd counts,
-8 and 7), `minillm.memory.kv_cache_bytes` (multi-head, grouped-query and
multi-query attention, pruned heads, every format) and
`minillm.distill.distillation_loss` (values and gradients, ignored positions).
Speculative decoding's accept-or-resample step is checked against `acceptance_rule`,
the rule of `minillm.speculative` written out here (the tests hold it to the
package's own `_verify`), and against what the rule is for: summed over every
token the draft can propose, the tokens it lets through follow the target's p
exactly. The random cases come from private generators: the reader's random
state is left alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
import torch.nn.functional as F

from minillm.distill import distillation_loss
from minillm.exercises import ExerciseFailed, as_number, as_tensor, assert_close, call_answer, exercise, expect
from minillm.generate import filter_logits
from minillm.memory import KV_FORMATS, kv_cache_bytes
from minillm.model import GPTConfig
from minillm.quantize import pack_int4, quantize_tensor, unpack_int4


def _close(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-6, rtol: float = 1e-5) -> bool:
    """Whether the reader's `a` equals a candidate `b` (same shape), for the hints."""
    return a.shape == b.shape and bool(torch.allclose(a.detach().double(), b.detach().double(), atol=atol, rtol=rtol))


def _hint(got: torch.Tensor, candidates: list[tuple[torch.Tensor, str]], **tolerances: float) -> str:
    """The hint of the first typical mistake whose result `got` equals, else ""."""
    return next((hint for value, hint in candidates if _close(got, value, **tolerances)), "")


def _pair(got: object, what: str, names: str) -> tuple:
    expect(isinstance(got, (tuple, list)) and len(got) == 2,
           f"{what}: your function returned {type(got).__name__}; return a tuple of two: {names}.")
    return tuple(got)


# -- B.1: absmax int8 codes, one scale per output channel -----------------------------------------


def _int8_cases() -> list[tuple[str, torch.Tensor]]:
    """(what, a Linear weight (out, in))."""
    gen = torch.Generator().manual_seed(201)
    outlier = torch.randn(8, 24, generator=gen)
    outlier[3, 5] = 40.0  # one large weight: only row 3's scale should notice it
    zeros = torch.randn(6, 10, generator=gen)
    zeros[2] = 0.0  # a row of zeros: scale 0, codes 0
    negative = torch.randn(4, 12, generator=gen)
    negative[1, 7] = -9.0  # a row whose largest |w| is negative: its code is -127
    magnitudes = torch.randn(5, 16, generator=gen) * torch.tensor([1e-3, 1e-2, 1e-1, 1.0, 10.0])[:, None]
    cases = [
        ("a 16 x 32 weight initialized like GPT-2's (std 0.02)", 0.02 * torch.randn(16, 32, generator=gen)),
        ("an 8 x 24 weight with one outlier of 40 in row 3", outlier),
        ("a 6 x 10 weight whose row 2 is all zeros", zeros),
        ("a 4 x 12 weight whose row 1 peaks at -9", negative),
        ("5 rows of magnitudes 0.001 to 10", magnitudes),
        ("one output row (1 x 7)", torch.randn(1, 7, generator=gen)),
        ("one input column (9 x 1)", torch.randn(9, 1, generator=gen)),
    ]
    for _ in range(2):  # and two drawn at random
        out, inp = int(torch.randint(2, 40, (), generator=gen)), int(torch.randint(2, 40, (), generator=gen))
        cases.append((f"drawn at random ({out} x {inp})", torch.randn(out, inp, generator=gen) * 0.1))
    return cases


@exercise("B.1", "absmax int8 codes, one scale per output channel")
def grade_int8_per_channel(answer: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]) -> str:
    """answer(w (out, in)) -> (codes int8 (out, in), scale (out, 1)), as `quantize_tensor(w, 8, "absmax", "channel")`.

    The scales are compared to float precision, the codes exactly (a code one
    step off is accepted only where w / scale lies within 1e-3 of a half step,
    where the order of the float operations may round it either way).
    """
    rule = ("Per output channel (a row of the (out, in) weight): scale = max |w| over the row / 127, kept as (out, 1) "
            "(amax(dim=1, keepdim=True)); codes = round(w / scale), clamped to [-127, 127], as int8. A row of zeros "
            "gets scale 0 and codes 0.")
    cases = _int8_cases()
    for what, w in cases:
        given = w.clone()
        got = _pair(call_answer(answer, given, what=f"your quantize_int8 ({what})"), what, "(codes, scale)")
        codes, scale = (as_tensor(t, f"{what}: the {name}") for t, name in zip(got, ("codes", "scale")))
        expect(torch.equal(given, w), f"{what}: your function changed the weight in place; compute new tensors.")
        ref = quantize_tensor(w, 8, "absmax", "channel")
        out, inp = w.shape
        if scale.numel() == 1 and out > 1:
            raise ExerciseFailed(f"{what}: a single scale for the whole matrix (per tensor): one outlier then coarsens "
                                 f"every row. Give each output row its own scale. {rule}")
        if tuple(scale.shape) == (1, inp) and out > 1 and inp > 1:
            raise ExerciseFailed(f"{what}: a scale of shape (1, {inp}) is one per input column; an output channel is "
                                 f"a row of the (out, in) weight: reduce over dim=1. {rule}")
        expect(tuple(scale.shape) == (out, 1),
               f"{what}: a scale of shape {tuple(scale.shape)}, expected ({out}, 1): one per output row, kept 2-D "
               "(keepdim=True) so that w / scale broadcasts over the row.")
        absmax = w.abs().amax(dim=1, keepdim=True)
        hint = _hint(scale, [
            (absmax / 128, "128 is one step too many: int8's symmetric range is [-127, 127] (2^7 - 1), so the largest "
             "|w| maps to 127; with 128 it would need code 128, which int8 cannot hold. "),
            (absmax / 255, "255 levels is the zero-point (unsigned) scheme; absmax uses [-127, 127]: divide by 127. "),
            (absmax, "Divide the row's max |w| by 127: the scale is the size of one step, not the range. "),
            (w.amax(dim=1, keepdim=True) / 127, "Take the max of |w|, not of w: a row whose largest weight is "
             "negative needs that one covered too. "),
            (torch.full_like(absmax, float(w.abs().max()) / 127), "One scale for the whole matrix: each row gets "
             "its own. "),
        ])
        assert_close(scale.detach().float(), ref.scale, f"{what}: the scales", hint=hint + rule, atol=1e-12,
                     rtol=1e-6, check_dtype=False)
        expect(codes.dtype == torch.int8, f"{what}: codes of dtype {codes.dtype}; store them as int8 (one byte each, "
                                          "the point of the exercise): .to(torch.int8) after rounding and clamping.")
        expect(tuple(codes.shape) == (out, inp), f"{what}: codes of shape {tuple(codes.shape)}, expected the "
                                                 f"weight's ({out}, {inp}).")
        x = w / torch.where(absmax > 0, absmax / 127, torch.ones_like(absmax))  # (out, in) in steps
        diff = codes.to(torch.int16) - ref.codes.to(torch.int16)
        tie = ((x - x.floor()) - 0.5).abs() < 1e-3  # within 1e-3 of a half step: either rounding is right
        if bool(((diff == 0) | ((diff.abs() == 1) & tie)).all()):
            continue
        zero_rows = (absmax == 0).squeeze(1)
        if bool(zero_rows.any()) and bool((diff[zero_rows] != 0).any()) and bool((diff[~zero_rows] == 0).all()):
            raise ExerciseFailed(f"{what}: the codes of the all-zero row are {codes[zero_rows][0, :6].tolist()}..., "
                                 "expected zeros. Its scale is 0 and 0 / 0 is NaN (which int8 turns into anything): "
                                 "divide by the scale with zeros replaced by 1, torch.where(scale > 0, scale, 1), "
                                 f"which gives codes 0. {rule}")
        hint = _hint(codes.to(torch.int16), [
            (x.trunc().clamp(-127, 127).to(torch.int16), "Converting to int8 truncates toward zero (2.7 -> 2, "
             "-2.7 -> -2): round to the nearest step first, torch.round(w / scale). "),
            (x.floor().clamp(-127, 127).to(torch.int16), "floor rounds down (-2.3 -> -3): round to the nearest "
             "step, torch.round(w / scale). "),
            (x.ceil().clamp(-127, 127).to(torch.int16), "ceil rounds up: round to the nearest step, "
             "torch.round(w / scale). "),
        ], atol=0, rtol=0)
        wrong = int((diff != 0).sum())
        raise ExerciseFailed(f"{what}: {wrong} of {diff.numel()} codes differ from quantize_tensor's (the first: "
                             f"{codes.flatten()[diff.flatten() != 0][:4].tolist()} where it has "
                             f"{ref.codes.flatten()[diff.flatten() != 0][:4].tolist()}). {hint}{rule}")
    return (f"codes and scales equal minillm.quantize.quantize_tensor(w, 8, 'absmax', 'channel') on {len(cases)} "
            "weights: an outlier, a row of zeros, a negative peak, rows of magnitudes 0.001 to 10, one row, one "
            "column.")


# -- B.2: two int4 codes in one byte --------------------------------------------------------------


def _int4_cases() -> list[tuple[str, torch.Tensor]]:
    """(what, codes (n,) int8 in [-8, 7])."""
    gen = torch.Generator().manual_seed(202)
    weight_codes = quantize_tensor(torch.randn(6, 10, generator=gen), 4, "absmax", "channel").codes.flatten()
    cases = [
        ("every code from -8 to 7 in order (16 codes)", torch.arange(-8, 8, dtype=torch.int8)),
        ("the same, reversed", torch.arange(7, -9, -1, dtype=torch.int8)),
        ("7 codes (an odd count)", torch.tensor([3, -1, 0, 7, -8, -7, 5], dtype=torch.int8)),
        ("a single code, -3", torch.tensor([-3], dtype=torch.int8)),
        ("the 60 int4 codes of a 6 x 10 weight from quantize_tensor(w, 4, 'absmax', 'channel')", weight_codes),
    ]
    for _ in range(2):  # and two drawn at random, one odd and one even
        for parity in (1, 0):
            n = 2 * int(torch.randint(1, 40, (), generator=gen)) + parity
            cases.append((f"drawn at random ({n} codes)", torch.randint(-8, 8, (n,), generator=gen, dtype=torch.int8)))
    return cases


@exercise("B.2", "two int4 codes in one byte")
def grade_pack_int4(answer: Callable[[torch.Tensor], torch.Tensor]) -> str:
    """answer(codes (n,) int8 in [-8, 7]) -> (ceil(n / 2),) uint8, as `minillm.quantize.pack_int4`; and
    `unpack_int4(packed, n, signed=True)` must give the codes back."""
    rule = ("Each code as its 4-bit two's complement (code & 0xF: -1 -> 0b1111, -8 -> 0b1000); code 2i in the low "
            "nibble of byte i, code 2i+1 in its high nibble (<< 4); an odd count padded with a zero nibble: "
            "ceil(n / 2) bytes, uint8.")
    cases = _int4_cases()
    for what, codes in cases:
        given = codes.clone()
        got = as_tensor(call_answer(answer, given, what=f"your pack_int4 ({what})"), f"the packed bytes for {what}")
        expect(torch.equal(given, codes), f"{what}: your function changed the codes in place; compute new tensors.")
        n = codes.numel()
        expect(got.dtype == torch.uint8, f"{what}: bytes of dtype {got.dtype}; a byte is uint8 (0..255): combine "
                                         "the nibbles in a wider integer type if you like, then .to(torch.uint8).")
        if got.numel() == n // 2 and n % 2:
            raise ExerciseFailed(f"{what}: {got.numel()} bytes for {n} codes: the last code was dropped. An odd "
                                 f"count is padded with a zero nibble, so it takes ceil(n / 2) bytes. {rule}")
        expect(tuple(got.shape) == ((n + 1) // 2,), f"{what}: packed bytes of shape {tuple(got.shape)}, expected "
                                                    f"({(n + 1) // 2},): two codes a byte, 1-D.")
        expected = pack_int4(codes)
        if torch.equal(got, expected):
            expect(torch.equal(unpack_int4(got, n, signed=True), codes), f"{what}: unpack_int4 does not give the "
                                                                         "codes back.")  # cannot fail: for the record
            continue
        c = torch.cat([codes.to(torch.int16), codes.new_zeros(n % 2, dtype=torch.int16)]).view(-1, 2)
        lo, hi = c[:, 0], c[:, 1]
        hint = _hint(got.to(torch.int16), [
            (((lo & 0xF) << 4) | (hi & 0xF), "The nibbles are swapped: code 2i goes into the LOW nibble "
             "(bits 0-3), code 2i+1 into the high one (bits 4-7). "),
            ((lo | (hi << 4)) & 0xFF, "A negative int8 code has all its high bits set (-1 is 0b11111111), and OR-ing "
             "it in overwrites the other nibble: mask each code to 4 bits first (code & 0xF). "),
            (((lo + 8) & 0xF) | (((hi + 8) & 0xF) << 4), "You stored code + 8 (an offset); the format is the 4-bit "
             "two's complement, code & 0xF, which unpack_int4(signed=True) reads back (nibbles 8..15 are -8..-1). "),
        ], atol=0, rtol=0)
        back = unpack_int4(got, n, signed=True)
        bad = int((back != codes).sum())
        raise ExerciseFailed(f"{what}: your bytes {got[:6].tolist()}... differ from pack_int4's "
                             f"{expected[:6].tolist()}..., and unpack_int4(packed, {n}, signed=True) gets {bad} of "
                             f"{n} codes wrong. {hint}{rule}")
    return (f"equals minillm.quantize.pack_int4 on {len(cases)} code arrays (every value from -8 to 7, odd counts, "
            "one code, a real weight's codes), and unpack_int4 gives each back.")


# -- B.3: speculative decoding's accept-or-resample step -----------------------------------------


def acceptance_rule(p: torch.Tensor, q: torch.Tensor, token: int) -> tuple[float, torch.Tensor]:
    """The reference: (min(1, p[token] / q[token]), normalize(max(0, p - q))) for p, q (V,), q[token] > 0.

    As `minillm.speculative` verifies a guess: accepted when a uniform u < p/q,
    else a replacement is drawn from the residual (V,), which is p itself where
    max(0, p - q) is all zero (p == q, when a rejection cannot happen anyway).
    """
    accept = min(1.0, float(p[token] / q[token]))
    residual = (p - q).clamp(min=0.0)
    total = residual.sum()
    return accept, (residual / total if total > 0 else p.clone())


def _spec_cases() -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(what, p (V,), q (V,)): the target's and the draft's next-token distributions, as filter_logits makes them."""
    gen = torch.Generator().manual_seed(203)

    def logits(v: int, spread: float = 2.0) -> torch.Tensor:
        return spread * torch.randn(v, generator=gen)

    same = filter_logits(logits(8), 1.0)
    target = logits(12)
    cases = [
        ("8 tokens, target and draft drawn at random", filter_logits(logits(8), 1.0), filter_logits(logits(8), 1.0)),
        ("a draft equal to the target (p == q)", same, same.clone()),
        ("a target with top_k=3 (p is 0 on 9 of 12 tokens the draft may propose)", filter_logits(target, 1.0, 3),
         filter_logits(target + logits(12, 0.5), 1.0)),
        ("a draft with top_p=0.6 (q is 0 where the target still wants tokens)", filter_logits(logits(10), 1.0),
         filter_logits(logits(10), 1.0, None, 0.6)),
        ("a confident draft (temperature 0.3) and a hesitant target (temperature 2)", filter_logits(target, 2.0),
         filter_logits(target + logits(12, 1.0), 0.3)),
        ("a vocabulary of 64 tokens, temperature 0.7 for both", filter_logits(logits(64), 0.7),
         filter_logits(logits(64), 0.7)),
    ]
    for _ in range(2):  # and two drawn at random
        v = int(torch.randint(2, 40, (), generator=gen))
        base = logits(v)
        draft = filter_logits(base + logits(v, 1.5), 1.0)
        cases.append((f"drawn at random (V = {v})", filter_logits(base, 1.0), draft))
    return cases


def _output_distribution(q: torch.Tensor, answers: dict[int, tuple[float, torch.Tensor]]) -> torch.Tensor:
    """(V,) float64: the distribution of the token a round writes when the draft proposes d ~ q and the rule
    `answers[d] = (accept probability, residual)` decides: sum_d q(d) [a_d one_hot(d) + (1 - a_d) residual_d]."""
    out = torch.zeros(q.numel(), dtype=torch.float64)
    for d, (a, residual) in answers.items():
        out += float(q[d]) * (1 - a) * residual.detach().double()
        out[d] += float(q[d]) * a
    return out


@exercise("B.3", "speculative decoding's accept-or-resample step")
def grade_acceptance(answer: Callable[[torch.Tensor, torch.Tensor, int], tuple[object, torch.Tensor]]) -> str:
    """answer(p (V,), q (V,), token) -> (the probability of accepting `token`, the residual (V,) a replacement is
    drawn from after a rejection), for every token the draft can propose (q > 0), as `acceptance_rule`; and the
    token a round writes then follows p exactly (computed, not sampled)."""
    rule = ("Accept the draft's token d with probability min(1, p(d) / q(d)) (target over draft); after a rejection "
            "draw from the residual max(0, p - q), normalized to sum to 1 (where it is all zero, p == q, use p).")
    cases = _spec_cases()
    for what, p, q in cases:
        answers: dict[int, tuple[float, torch.Tensor]] = {}
        for d in (int(t) for t in torch.nonzero(q > 0).flatten()):
            given = (p.clone(), q.clone())
            where = f"{what}, token {d}"
            got = _pair(call_answer(answer, *given, d, what=f"your acceptance step ({where})"), where,
                        "(acceptance probability, residual)")
            expect(torch.equal(given[0], p) and torch.equal(given[1], q),
                   f"{where}: your function changed p or q in place; compute new tensors.")
            accept = as_number(got[0], f"{where}: the acceptance probability")
            residual = as_tensor(got[1], f"{where}: the residual")
            expect(tuple(residual.shape) == tuple(p.shape),
                   f"{where}: a residual of shape {tuple(residual.shape)}, expected ({p.numel()},): a distribution "
                   "over the vocabulary.")
            answers[d] = (accept, residual)
        wrong_output = ""
        if all(bool(torch.isfinite(r).all()) for _, r in answers.values()):
            out = _output_distribution(q, answers)
            tv = 0.5 * float((out - p.double()).abs().sum())
            wrong_output = (f" With your rule the tokens a round writes would follow a distribution at total variation "
                            f"distance {tv:.3f} from the target's p, instead of p itself.")
        for d, (accept, residual) in answers.items():
            where = f"{what}, token {d} (p = {float(p[d]):.4f}, q = {float(q[d]):.4f})"
            ref_accept, ref_residual = acceptance_rule(p, q, d)
            if abs(accept - ref_accept) > 1e-5 * max(1.0, ref_accept):
                ratio = float(p[d] / q[d])
                if accept > 1:
                    hint = "A probability cannot exceed 1: min(1, p(d) / q(d)), the target wants d at least as much. "
                elif float(p[d]) > 0 and abs(accept - min(1.0, float(q[d] / p[d]))) < 1e-5:
                    hint = "Upside down: the ratio is p(d) / q(d), the target's probability over the draft's. "
                elif abs(accept - float(p[d])) < 1e-5:
                    hint = ("That is p(d) alone; d was drawn with probability q(d), so it is kept with probability "
                            "p(d) / q(d) (at most 1): q(d) times that is min(p(d), q(d)). ")
                else:
                    hint = ""
                raise ExerciseFailed(f"{where}: your acceptance probability is {accept:.4f}, expected "
                                     f"min(1, {ratio:.4f}) = {ref_accept:.4f}. {hint}{rule}{wrong_output}")
            diff = p - q
            unnormalized = diff.clamp(min=0)
            if not bool(torch.isfinite(residual).all()):
                hint = ("Where p == q, max(0, p - q) is all zero and dividing by its sum is 0 / 0: fall back to p "
                        "there, as the package does (a rejection then has probability 0, but a NaN must not reach "
                        "torch.multinomial). " if float(unnormalized.sum()) == 0 else
                        "p - q sums to 0 (both sum to 1): clamp it at 0 first, then divide by the sum of what is "
                        "left. ")
                raise ExerciseFailed(f"{where}: your residual holds NaN or inf. {hint}{rule}")
            hint = _hint(residual, [
                (unnormalized, "Normalize the residual: divide max(0, p - q) by its sum, so that it is a "
                 "distribution. "),
                ((-diff).clamp(min=0) / (-diff).clamp(min=0).sum().clamp(min=1e-30), "Swapped: the residual is where "
                 "the target wants MORE than the draft gave, max(0, p - q), not max(0, q - p). "),
                (diff, "Clamp p - q at 0 (a token the draft over-proposes gets no extra chance, not a negative "
                 "one), then normalize: max(0, p - q) / its sum. "),
                (p, "Resampling from p itself counts twice the tokens the draft already proposed and got accepted: "
                 "the output would lean towards the draft. Draw from what p has beyond q, max(0, p - q). "),
                (q, "After a rejection draw from the residual max(0, p - q), normalized, not from the draft's q. "),
                (torch.zeros_like(p), "The residual is all zero here (p == q): fall back to p, as the package does. "),
            ])
            assert_close(residual.detach().float(), ref_residual, f"{where}: the residual",
                         hint=hint + rule + wrong_output, atol=1e-6, rtol=1e-5, check_dtype=False)
        out = _output_distribution(q, answers)  # right answers: check the guarantee itself
        assert_close(out, p.double(), f"{what}: the distribution of the token a round writes", atol=1e-5, rtol=0)
    return (f"equals the rule of minillm.speculative for every token the draft can propose in {len(cases)} cases "
            "(p == q, a target's top-k, a draft's top-p, peaked and flat, V up to 64), and the tokens it lets "
            "through follow the target's p exactly (summed over the draft's proposals, not sampled).")


# -- B.4: the KV cache's bytes --------------------------------------------------------------------


def _kv(config: GPTConfig, batch: int, length: int, fmt: str, *, heads: int | None = None,
        head_dim: int | None = None, keys_and_values: int = 2, scales: bool = True, layers: int | None = None,
        width: int | None = None) -> int:  # fmt: skip
    """kv_cache_bytes with one ingredient changed: the typical mistakes, for the hints."""
    heads = config.kv_heads if heads is None else heads
    head_dim = config.head_dim if head_dim is None else head_dim
    layers = config.n_layer if layers is None else layers
    width = KV_FORMATS[fmt] if width is None else width
    per_vector = head_dim * width + (4 if fmt == "int8" and scales else 0)
    return batch * length * keys_and_values * layers * heads * per_vector


def _kv_cases() -> list[tuple[str, GPTConfig, int, int, str]]:
    """(what, config, batch_size, seq_len, kv_format)."""
    gen = torch.Generator().manual_seed(204)
    gpt2 = GPTConfig.from_preset("gpt2")
    llama = GPTConfig.from_preset("llama2-7b")
    cases = [
        ("GPT-2 124M, one sequence of 1,024 tokens, fp32", gpt2, 1, 1024, "fp32"),
        ("GPT-2 124M, 8 sequences of 512 tokens, bf16", gpt2, 8, 512, "bf16"),
        ("Llama-2-7B (32 heads), 4 sequences of 4,096 tokens, fp16", llama, 4, 4096, "fp16"),
        ("the same with grouped-query attention, 8 key/value heads for 32 query heads, bf16",
         dataclasses.replace(llama, n_kv_head=8), 4, 4096, "bf16"),
        ("multi-query attention (1 key/value head), 16 sequences of 2,000 tokens, fp32",
         dataclasses.replace(llama, n_kv_head=1), 16, 2000, "fp32"),
        ("GPT-2 124M, int8 (one fp32 scale per cached head vector), 2 sequences of 1,000 tokens", gpt2, 2, 1000,
         "int8"),
        ("grouped-query attention (4 key/value heads) in int8", dataclasses.replace(llama, n_kv_head=4), 3, 333,
         "int8"),
        ("a pruned model: 8 heads of size 64 kept (d_head = 64) in a d_model of 768", GPTConfig(
            vocab_size=50257, context_length=1024, d_model=768, n_layer=12, n_head=8, d_head=64), 2, 700, "bf16"),
    ]
    for fmt in ("fp16", "int8"):  # and two drawn at random
        heads = int(torch.randint(1, 9, (), generator=gen))
        kv_heads = [h for h in range(1, heads + 1) if heads % h == 0][int(torch.randint(0, 99, (), generator=gen)) % 2]
        config = GPTConfig(vocab_size=512, context_length=256, d_model=16 * heads, n_layer=int(torch.randint(
            1, 7, (), generator=gen)), n_head=heads, n_kv_head=kv_heads)  # fmt: skip
        b, t = int(torch.randint(1, 9, (), generator=gen)), int(torch.randint(1, 257, (), generator=gen))
        cases.append((f"drawn at random ({config.n_layer} layers, {heads} heads, {kv_heads} key/value heads, "
                      f"{b} x {t} tokens, {fmt})", config, b, t, fmt))
    return cases


@exercise("B.4", "the KV cache's bytes")
def grade_kv_cache_bytes(answer: Callable[[GPTConfig, int, int, str], int]) -> str:
    """answer(config, batch_size, seq_len, kv_format) -> bytes, as `minillm.memory.kv_cache_bytes`."""
    rule = ("bytes = batch_size * seq_len * 2 (keys and values) * n_layer * config.kv_heads * (config.head_dim * "
            "bytes per number, 4 fp32, 2 bf16/fp16, 1 int8, + 4 for an int8 vector's fp32 scale).")
    cases = _kv_cases()
    for what, config, b, t, fmt in cases:
        given = dataclasses.replace(config)
        got = as_number(call_answer(answer, given, b, t, fmt, what=f"your kv_cache_bytes ({what})"),
                        f"kv_cache_bytes for {what}")
        expect(given == config, f"{what}: your function changed the config; leave it as it was.")
        expected = kv_cache_bytes(config, b, t, fmt)
        if got == expected:
            continue
        candidates = [
            (_kv(config, b, t, fmt, keys_and_values=1), "Count keys AND values: two vectors per head, token and "
             "layer. "),
            (_kv(config, b, t, fmt, heads=config.n_head), "Only the key/value heads are cached: with grouped-query "
             "attention several query heads share one, so use config.kv_heads, not n_head (nor d_model = n_head * "
             "head_dim numbers per token). "),
            (_kv(config, b, t, fmt, scales=False), "An int8 cache keeps one fp32 scale (4 bytes) per head vector "
             "besides its head_dim one-byte numbers. "),
            (_kv(config, b, t, fmt, head_dim=config.d_model // config.n_head), "A pruned model's heads keep their "
             "size: use config.head_dim (d_head when set), not d_model // n_head. "),
            (8 * expected, "Bytes, not bits. "),
            (_kv(config, b, t, fmt, layers=1), "Every layer caches its own keys and values: times n_layer. "),
            (_kv(config, 1, t, fmt), "Each sequence of the batch has its own cache: times batch_size. "),
            (_kv(config, b, t, fmt, width=4, scales=False), "The format sets the bytes per number: 4 for fp32, 2 for "
             "bf16 and fp16, 1 for int8 (KV_FORMATS in minillm.memory). "),
            (_kv(config, b, t, fmt, heads=1, head_dim=config.d_model), "Per layer and token the cache holds "
             "kv_heads vectors of head_dim numbers, not one of d_model: those are equal only without grouped-query "
             "attention and pruned heads. "),
        ]
        hint = next((h for value, h in candidates if value == got and value != expected), "")
        raise ExerciseFailed(f"{what}: your answer is {got:,.0f} bytes, kv_cache_bytes gives {expected:,} "
                             f"({expected / 2**30:.3f} GiB). {hint}{rule}")
    return (f"equals minillm.memory.kv_cache_bytes in {len(cases)} cases: multi-head, grouped-query and multi-query "
            "attention, pruned heads, fp32, bf16, fp16 and int8.")


# -- B.5: the distillation loss -------------------------------------------------------------------


def _distill_cases() -> list[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor, float, float]]:
    """(what, student logits (B, T, V), teacher logits (B, T, V), targets (B, T), temperature, alpha)."""
    gen = torch.Generator().manual_seed(205)

    def batch(b: int, t: int, v: int, teacher_scale: float = 2.0) -> tuple[torch.Tensor, ...]:
        return (torch.randn(b, t, v, generator=gen), teacher_scale * torch.randn(b, t, v, generator=gen),
                torch.randint(0, v, (b, t), generator=gen))

    padded = batch(3, 6, 13)
    padded[2][0, 4:] = -100  # the end of row 0 and a position of row 2 are padding
    padded[2][2, 1] = -100
    cases = [
        ("2 x 5 positions, 11 tokens, T = 2, alpha = 0.5", *batch(2, 5, 11), 2.0, 0.5),
        ("T = 1, alpha = 1 (the teacher's term alone)", *batch(2, 4, 9), 1.0, 1.0),
        ("T = 3, alpha = 0 (plain cross-entropy)", *batch(1, 7, 10), 3.0, 0.0),
        ("T = 4, alpha = 0.3, three targets of -100 (ignored)", *padded, 4.0, 0.3),
        ("T = 0.5 (sharpened), alpha = 0.9", *batch(2, 3, 17), 0.5, 0.9),
        ("a confident teacher (logits x 10), T = 2, alpha = 0.7", *batch(2, 4, 12, 10.0), 2.0, 0.7),
    ]
    for _ in range(2):  # and two drawn at random
        b, t, v = (int(torch.randint(1, hi, (), generator=gen)) for hi in (4, 8, 30))
        temperature, alpha = 0.5 + 4 * float(torch.rand((), generator=gen)), float(torch.rand((), generator=gen))
        cases.append((f"drawn at random ({b} x {t} positions, {v + 2} tokens, T = {temperature:.2f}, "
                      f"alpha = {alpha:.2f})", *batch(b, t, v + 2), temperature, alpha))
    return cases


def _distill_mistakes(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, temp: float,
                      alpha: float) -> list[tuple[torch.Tensor, str]]:  # fmt: skip
    """(value, hint) of the typical mistakes, computed on the detached inputs."""
    v = s.size(-1)
    keep = y.reshape(-1) != -100
    ce = F.cross_entropy(s.reshape(-1, v), y.reshape(-1), ignore_index=-100)

    def kl(a: torch.Tensor, b: torch.Tensor, positions: torch.Tensor = keep) -> torch.Tensor:
        """Mean over `positions` of KL(softmax(a) || softmax(b)), rows of (N, V)."""
        log_a, log_b = F.log_softmax(a[positions], -1), F.log_softmax(b[positions], -1)
        return (log_a.exp() * (log_a - log_b)).sum(-1).mean()

    ss, tt = s.reshape(-1, v) / temp, t.reshape(-1, v) / temp
    right_kl = kl(tt, ss)
    soft_ce = -(F.softmax(tt[keep], -1) * F.log_softmax(ss[keep], -1)).sum(-1).mean()
    every = torch.ones_like(keep)
    return [
        (alpha * right_kl + (1 - alpha) * ce, "The soft term is multiplied by T^2: the gradient of the softened KL "
         "shrinks like 1 / T^2, and T^2 puts it back on the hard term's scale. "),
        (alpha * temp**2 * kl(ss, tt) + (1 - alpha) * ce, "The KL runs the other way: KL(teacher || student), "
         "sum over v of p_teacher * (log p_teacher - log p_student) (F.kl_div(student_log_probs, teacher_probs) "
         "computes exactly that; its first argument is the student's). "),
        (alpha * temp**2 * kl(t.reshape(-1, v), s.reshape(-1, v)) + (1 - alpha) * ce, "Soften both distributions: "
         "divide both models' logits by T before the softmax. "),
        ((1 - alpha) * temp**2 * right_kl + alpha * ce, "alpha weighs the teacher's (soft) term, 1 - alpha the "
         "cross-entropy with the observed tokens. "),
        (alpha * temp**2 * right_kl + (1 - alpha) * F.cross_entropy(ss, y.reshape(-1), ignore_index=-100),
         "The hard term is the ordinary cross-entropy of the student's logits, not divided by T. "),
        (alpha * temp**2 * kl(tt, ss, every) + (1 - alpha) * ce, "Positions whose target is -100 are padding: leave "
         "them out of the KL term too (average over the kept positions only). "),
        (alpha * temp**2 * right_kl / v + (1 - alpha) * ce, "The KL is summed over the vocabulary and averaged over "
         "positions (F.kl_div(..., reduction='batchmean') on (N, V) rows); reduction='mean' divides by V too. "),
        (alpha * temp**2 * right_kl * int(keep.sum()) + (1 - alpha) * ce, "Average the KL over the positions, do "
         "not sum it. "),
        (alpha * temp**2 * soft_ce + (1 - alpha) * ce, "That is the cross-entropy with the teacher's soft labels: it "
         "differs from the KL by the teacher's entropy, a constant, so its gradient is right but its value is not; "
         "the loss takes the KL, which is 0 when the student matches the teacher. "),
    ]


@exercise("B.5", "the distillation loss")
def grade_distillation_loss(answer: Callable[..., torch.Tensor]) -> str:
    """answer(student_logits (B, T, V), teacher_logits (B, T, V), targets (B, T), temperature, alpha) -> scalar, as
    `minillm.distill.distillation_loss`: the value and its gradient with respect to the student's logits."""
    rule = ("loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * "
            "cross_entropy(student, targets), the KL summed over the vocabulary and both terms averaged over the "
            "positions whose target is not -100.")
    cases = _distill_cases()
    for what, student, teacher, targets, temp, alpha in cases:
        s, t, y = student.clone().requires_grad_(True), teacher.clone(), targets.clone()
        got = as_tensor(call_answer(answer, s, t, y, temp, alpha, what=f"your distillation_loss ({what})"),
                        f"the loss for {what}")
        expect(torch.equal(s.detach(), student) and torch.equal(t, teacher) and torch.equal(y, targets),
               f"{what}: your function changed its inputs in place; compute new tensors.")
        expect(got.numel() == 1, f"{what}: a loss of shape {tuple(got.shape)}; the loss is one number (a mean).")
        expected = distillation_loss(student, teacher, targets, temp, alpha)
        expect(bool(torch.isfinite(got).all()), f"{what}: your loss is {float(got.detach())}, the reference "
                                                f"{float(expected):.4f}. {rule}")
        hint = _hint(got.detach().reshape(()), _distill_mistakes(student, teacher, targets, temp, alpha), atol=1e-5)
        assert_close(got.detach().reshape(()).float(), expected, f"{what}: the loss", hint=hint + rule, atol=1e-5,
                     rtol=1e-5)
        expect(got.requires_grad, f"{what}: your loss carries no gradient (.item(), .detach(), torch.no_grad or a new "
                                  "torch.tensor(...) cut it off the student's logits): it is what trains the student.")
        (grad,) = torch.autograd.grad(got.sum(), s, allow_unused=True)
        expect(grad is not None, f"{what}: your loss does not depend on the student's logits. {rule}")
        ref_s = student.clone().requires_grad_(True)
        distillation_loss(ref_s, teacher, targets, temp, alpha).backward()
        assert_close(grad, ref_s.grad, f"{what}: the gradient with respect to the student's logits", hint=rule,
                     atol=1e-6, rtol=1e-4)
    return (f"equals minillm.distill.distillation_loss (value and gradient) in {len(cases)} cases: alpha 0, 1 and "
            "between, T from 0.5 to 4, ignored targets, a confident teacher.")
