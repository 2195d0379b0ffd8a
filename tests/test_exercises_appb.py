"""Appendix B's exercises: a right answer passes, typical mistakes fail, the untouched stub is not attempted."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from minillm.exercises import ExerciseFailed, check

pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors: one thread is fastest on a shared CPU

# -- B.1 absmax int8 codes per output channel --------------------------------------------------


def int8_right(w):
    scale = w.abs().amax(dim=1, keepdim=True) / 127
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    return torch.round(w / safe).clamp(-127, 127).to(torch.int8), scale


def int8_multiplied(w):  # w * (127 / absmax): the same codes but where the float rounding ties
    absmax = w.abs().amax(dim=1, keepdim=True)
    codes = torch.round(w * torch.where(absmax > 0, 127 / absmax, torch.zeros_like(absmax))).clamp(-127, 127)
    return codes.to(torch.int8), absmax / 127


def int8_per_tensor(w):
    scale = w.abs().max() / 127
    return torch.round(w / scale).clamp(-127, 127).to(torch.int8), scale.view(1, 1)


def int8_per_tensor_broadcast(w):  # one scale, repeated per row
    scale = (w.abs().max() / 127).expand(w.size(0), 1)
    return torch.round(w / scale).clamp(-127, 127).to(torch.int8), scale


def int8_per_column(w):
    scale = w.abs().amax(dim=0, keepdim=True) / 127
    return torch.round(w / scale).clamp(-127, 127).to(torch.int8), scale


def int8_128(w):
    scale = w.abs().amax(dim=1, keepdim=True) / 128
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    return torch.round(w / safe).clamp(-128, 127).to(torch.int8), scale


def int8_truncated(w):
    scale = w.abs().amax(dim=1, keepdim=True) / 127
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    return (w / safe).to(torch.int8), scale


def int8_floor(w):
    scale = w.abs().amax(dim=1, keepdim=True) / 127
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    return torch.floor(w / safe).clamp(-127, 127).to(torch.int8), scale


def int8_no_abs(w):  # the max of w, not of |w|
    scale = w.amax(dim=1, keepdim=True) / 127
    return torch.round(w / scale).clamp(-127, 127).to(torch.int8), scale


def int8_float_codes(w):
    codes, scale = int8_right(w)
    return codes.float(), scale


def int8_flat_scale(w):
    codes, scale = int8_right(w)
    return codes, scale.squeeze(1)


def int8_zero_row_nan(w):  # 0 / 0 in a row of zeros
    scale = w.abs().amax(dim=1, keepdim=True) / 127
    codes = torch.round(w / scale)
    return torch.nan_to_num(codes, nan=5.0).clamp(-127, 127).to(torch.int8), scale


def test_b_1():
    assert check("B.1", int8_right) is True
    assert check("B.1", int8_multiplied) is True
    wrong = (int8_per_tensor, int8_per_tensor_broadcast, int8_per_column, int8_128, int8_truncated, int8_floor,
             int8_no_abs, int8_float_codes, int8_flat_scale, int8_zero_row_nan)
    for answer in wrong:
        with pytest.raises(ExerciseFailed):
            check("B.1", answer)
    with pytest.raises(ExerciseFailed, match="single scale for the whole matrix"):
        check("B.1", int8_per_tensor)
    with pytest.raises(ExerciseFailed, match="One scale for the whole matrix"):
        check("B.1", int8_per_tensor_broadcast)
    with pytest.raises(ExerciseFailed, match="one per input column"):
        check("B.1", int8_per_column)
    with pytest.raises(ExerciseFailed, match="128 is one step too many"):
        check("B.1", int8_128)
    with pytest.raises(ExerciseFailed, match="truncates toward zero"):
        check("B.1", int8_truncated)
    with pytest.raises(ExerciseFailed, match="floor rounds down"):
        check("B.1", int8_floor)
    with pytest.raises(ExerciseFailed, match="max of \\|w\\|, not of w"):
        check("B.1", int8_no_abs)
    with pytest.raises(ExerciseFailed, match="store them as int8"):
        check("B.1", int8_float_codes)
    with pytest.raises(ExerciseFailed, match="keepdim=True"):
        check("B.1", int8_flat_scale)
    with pytest.raises(ExerciseFailed, match="all-zero row.*0 / 0 is NaN"):
        check("B.1", int8_zero_row_nan)


def test_b_1_the_package_passes():
    from minillm.quantize import quantize_tensor

    def package(w):
        qt = quantize_tensor(w, 8, "absmax", "channel")
        return qt.codes, qt.scale

    assert check("B.1", package) is True


# -- B.2 two int4 codes in one byte ------------------------------------------------------------


def pack_right(codes):
    nibbles = (codes.to(torch.int16) & 0xF)
    if nibbles.numel() % 2:
        nibbles = torch.cat([nibbles, nibbles.new_zeros(1)])
    return (nibbles[0::2] | (nibbles[1::2] << 4)).to(torch.uint8)


def pack_bytes_loop(codes):  # a plain Python loop is right too
    values = [c & 0xF for c in codes.tolist()] + [0] * (codes.numel() % 2)
    return torch.tensor([values[i] | values[i + 1] << 4 for i in range(0, len(values), 2)], dtype=torch.uint8)


def pack_high_first(codes):
    nibbles = codes.to(torch.int16) & 0xF
    if nibbles.numel() % 2:
        nibbles = torch.cat([nibbles, nibbles.new_zeros(1)])
    return ((nibbles[0::2] << 4) | nibbles[1::2]).to(torch.uint8)


def pack_unmasked(codes):  # int8 -1 is 0b11111111: its high bits overwrite the other nibble
    c = codes
    if c.numel() % 2:
        c = torch.cat([c, c.new_zeros(1)])
    return (c[0::2] | (c[1::2] << 4)).to(torch.uint8)


def pack_offset(codes):  # code + 8 instead of two's complement
    nibbles = codes.to(torch.int16) + 8
    if nibbles.numel() % 2:
        nibbles = torch.cat([nibbles, nibbles.new_full((1,), 8)])
    return (nibbles[0::2] | (nibbles[1::2] << 4)).to(torch.uint8)


def pack_drops_odd(codes):
    nibbles = codes.to(torch.int16) & 0xF
    n = nibbles.numel() // 2 * 2
    return (nibbles[0:n:2] | (nibbles[1:n:2] << 4)).to(torch.uint8)


def pack_int16(codes):
    return pack_right(codes).to(torch.int16)


def test_b_2():
    assert check("B.2", pack_right) is True
    assert check("B.2", pack_bytes_loop) is True
    wrong = (pack_high_first, pack_unmasked, pack_offset, pack_drops_odd, pack_int16)
    for answer in wrong:
        with pytest.raises(ExerciseFailed):
            check("B.2", answer)
    with pytest.raises(ExerciseFailed, match="nibbles are swapped"):
        check("B.2", pack_high_first)
    with pytest.raises(ExerciseFailed, match="mask each code to 4 bits"):
        check("B.2", pack_unmasked)
    with pytest.raises(ExerciseFailed, match="code \\+ 8.*two's complement"):
        check("B.2", pack_offset)
    with pytest.raises(ExerciseFailed, match="last code was dropped"):
        check("B.2", pack_drops_odd)
    with pytest.raises(ExerciseFailed, match="a byte is uint8"):
        check("B.2", pack_int16)


def test_b_2_the_package_passes():
    from minillm.quantize import pack_int4

    assert check("B.2", pack_int4) is True


# -- B.3 speculative decoding's accept-or-resample step ----------------------------------------


def accept_right(p, q, token):
    accept = torch.clamp(p[token] / q[token], max=1.0)
    residual = (p - q).clamp(min=0)
    total = residual.sum()
    return accept, residual / total if total > 0 else p


def accept_no_min(p, q, token):
    _, residual = accept_right(p, q, token)
    return p[token] / q[token], residual


def accept_upside_down(p, q, token):
    _, residual = accept_right(p, q, token)
    return torch.clamp(q[token] / p[token], max=1.0), residual


def accept_target_only(p, q, token):
    _, residual = accept_right(p, q, token)
    return p[token], residual


def residual_unnormalized(p, q, token):
    accept, _ = accept_right(p, q, token)
    return accept, (p - q).clamp(min=0)


def residual_swapped(p, q, token):
    accept, _ = accept_right(p, q, token)
    residual = (q - p).clamp(min=0)
    return accept, residual / residual.sum() if residual.sum() > 0 else q


def residual_from_p(p, q, token):  # resample from the target itself
    accept, _ = accept_right(p, q, token)
    return accept, p


def residual_nan_when_equal(p, q, token):  # 0 / 0 where p == q
    accept, _ = accept_right(p, q, token)
    residual = (p - q).clamp(min=0)
    return accept, residual / residual.sum()


def residual_unclamped(p, q, token):
    accept, _ = accept_right(p, q, token)
    return accept, p - q


def test_b_3():
    assert check("B.3", accept_right) is True
    wrong = (accept_no_min, accept_upside_down, accept_target_only, residual_unnormalized, residual_swapped,
             residual_from_p, residual_nan_when_equal, residual_unclamped)
    for answer in wrong:
        with pytest.raises(ExerciseFailed):
            check("B.3", answer)
    with pytest.raises(ExerciseFailed, match="cannot exceed 1.*total variation distance"):
        check("B.3", accept_no_min)
    with pytest.raises(ExerciseFailed, match="Upside down"):
        check("B.3", accept_upside_down)
    with pytest.raises(ExerciseFailed, match="That is p\\(d\\) alone"):
        check("B.3", accept_target_only)
    with pytest.raises(ExerciseFailed, match="Normalize the residual"):
        check("B.3", residual_unnormalized)
    with pytest.raises(ExerciseFailed, match="Swapped"):
        check("B.3", residual_swapped)
    with pytest.raises(ExerciseFailed, match="counts twice.*total variation distance 0\\.\\d*[1-9]"):
        check("B.3", residual_from_p)
    with pytest.raises(ExerciseFailed, match="p == q.*fall back to p"):
        check("B.3", residual_nan_when_equal)
    with pytest.raises(ExerciseFailed, match="Clamp p - q at 0"):
        check("B.3", residual_unclamped)


def test_b_3_the_reference_is_the_rule_speculative_decoding_runs():
    """acceptance_rule against minillm.speculative._verify, draw for draw: with the same generator state, the
    reference's u < p/q decides as _verify does, and a rejection draws the same replacement."""
    from minillm.exercises.b import _spec_cases, acceptance_rule
    from minillm.speculative import _verify

    for _, p, q in _spec_cases():
        logits = torch.stack([p.log(), p.log()])  # filter_logits at temperature 1 gives p back: p_1 and p_2
        for d in torch.nonzero(q > 0).flatten()[:6]:
            accept, residual = acceptance_rule(p, q, int(d))
            for seed in range(8):
                gen = torch.Generator().manual_seed(seed)
                kept, token = _verify(d.view(1), q.view(1, -1), logits, (1.0, None, None), gen)
                mine = torch.Generator().manual_seed(seed)
                u = torch.rand((), generator=mine)
                assert kept == int(u < p[d] / q[d]) and (accept == 1.0) <= (kept == 1)
                if not kept:
                    assert int(token) == int(torch.multinomial(residual, 1, generator=mine)[0])


def test_b_3_the_cases_are_what_they_say():
    from minillm.exercises.b import _spec_cases

    cases = {what.split(" (")[0]: (p, q) for what, p, q in _spec_cases()}
    p, q = cases["a target with top_k=3"]
    assert int((p == 0).sum()) == 9 and bool((q > 0).all())
    p, q = cases["a draft with top_p=0.6"]
    assert bool(((q == 0) & (p > 0)).any())
    p, q = cases["a draft equal to the target"]
    assert torch.equal(p, q)
    assert max(p.numel() for _, p, _ in _spec_cases()) == 64


def test_b_3_the_package_rule_passes():
    from minillm.exercises.b import acceptance_rule

    assert check("B.3", acceptance_rule) is True


# -- B.4 the KV cache's bytes ------------------------------------------------------------------

BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "int8": 1}


def kv_right(config, batch_size, seq_len, kv_format):
    per_vector = config.head_dim * BYTES[kv_format] + (4 if kv_format == "int8" else 0)
    return batch_size * seq_len * 2 * config.n_layer * config.kv_heads * per_vector


def kv_float(config, batch_size, seq_len, kv_format):  # a float of the right value is right
    return float(kv_right(config, batch_size, seq_len, kv_format))


def kv_keys_only(config, batch_size, seq_len, kv_format):
    return kv_right(config, batch_size, seq_len, kv_format) // 2


def kv_all_heads(config, batch_size, seq_len, kv_format):
    per_vector = config.head_dim * BYTES[kv_format] + (4 if kv_format == "int8" else 0)
    return batch_size * seq_len * 2 * config.n_layer * config.n_head * per_vector


def kv_no_scales(config, batch_size, seq_len, kv_format):
    return batch_size * seq_len * 2 * config.n_layer * config.kv_heads * config.head_dim * BYTES[kv_format]


def kv_derived_head_size(config, batch_size, seq_len, kv_format):
    head_dim = config.d_model // config.n_head
    per_vector = head_dim * BYTES[kv_format] + (4 if kv_format == "int8" else 0)
    return batch_size * seq_len * 2 * config.n_layer * config.kv_heads * per_vector


def kv_bits(config, batch_size, seq_len, kv_format):
    return 8 * kv_right(config, batch_size, seq_len, kv_format)


def kv_one_layer(config, batch_size, seq_len, kv_format):
    return kv_right(config, batch_size, seq_len, kv_format) // config.n_layer


def kv_always_fp32(config, batch_size, seq_len, kv_format):
    return kv_right(config, batch_size, seq_len, "fp32")


def kv_d_model(config, batch_size, seq_len, kv_format):  # d_model numbers per token and layer, as without GQA
    return batch_size * seq_len * 2 * config.n_layer * config.d_model * BYTES[kv_format]


def test_b_4():
    assert check("B.4", kv_right) is True
    assert check("B.4", kv_float) is True
    wrong = (kv_keys_only, kv_all_heads, kv_no_scales, kv_derived_head_size, kv_bits, kv_one_layer, kv_always_fp32,
             kv_d_model)
    for answer in wrong:
        with pytest.raises(ExerciseFailed):
            check("B.4", answer)
    with pytest.raises(ExerciseFailed, match="keys AND values"):
        check("B.4", kv_keys_only)
    with pytest.raises(ExerciseFailed, match="grouped-query.*config.kv_heads"):
        check("B.4", kv_all_heads)
    with pytest.raises(ExerciseFailed, match="one fp32 scale"):
        check("B.4", kv_no_scales)
    with pytest.raises(ExerciseFailed, match="pruned model's heads keep their size"):
        check("B.4", kv_derived_head_size)
    with pytest.raises(ExerciseFailed, match="Bytes, not bits"):
        check("B.4", kv_bits)
    with pytest.raises(ExerciseFailed, match="times n_layer"):
        check("B.4", kv_one_layer)
    with pytest.raises(ExerciseFailed, match="The format sets the bytes per number"):
        check("B.4", kv_always_fp32)
    with pytest.raises(ExerciseFailed, match="config.kv_heads, not n_head"):  # the first case with GQA shows it
        check("B.4", kv_d_model)


def test_b_4_the_package_passes():
    from minillm.memory import kv_cache_bytes

    assert check("B.4", kv_cache_bytes) is True


# -- B.5 the distillation loss -----------------------------------------------------------------


def distill_right(student_logits, teacher_logits, targets, temperature, alpha):
    v = student_logits.size(-1)
    s, t, y = student_logits.reshape(-1, v), teacher_logits.reshape(-1, v), targets.reshape(-1)
    keep = y != -100
    ce = F.cross_entropy(s, y, ignore_index=-100)
    kl = F.kl_div(F.log_softmax(s[keep] / temperature, -1), F.log_softmax(t[keep] / temperature, -1),
                  log_target=True, reduction="batchmean")
    return alpha * temperature**2 * kl + (1 - alpha) * ce


def distill_no_t_squared(student_logits, teacher_logits, targets, temperature, alpha):
    kl = distill_right(student_logits, teacher_logits, targets, temperature, 1.0) / temperature**2
    return alpha * kl + (1 - alpha) * distill_right(student_logits, teacher_logits, targets, temperature, 0.0)


def distill_reversed_kl(student_logits, teacher_logits, targets, temperature, alpha):
    v = student_logits.size(-1)
    s, t, y = student_logits.reshape(-1, v), teacher_logits.reshape(-1, v), targets.reshape(-1)
    keep = y != -100
    kl = F.kl_div(F.log_softmax(t[keep] / temperature, -1), F.log_softmax(s[keep] / temperature, -1),
                  log_target=True, reduction="batchmean")
    return alpha * temperature**2 * kl + (1 - alpha) * F.cross_entropy(s, y, ignore_index=-100)


def distill_unsoftened(student_logits, teacher_logits, targets, temperature, alpha):
    return (alpha * temperature**2 * distill_right(student_logits, teacher_logits, targets, 1.0, 1.0)
            + (1 - alpha) * distill_right(student_logits, teacher_logits, targets, 1.0, 0.0))


def distill_alpha_swapped(student_logits, teacher_logits, targets, temperature, alpha):
    return distill_right(student_logits, teacher_logits, targets, temperature, 1 - alpha)


def distill_kl_over_padding(student_logits, teacher_logits, targets, temperature, alpha):
    v = student_logits.size(-1)
    s, t, y = student_logits.reshape(-1, v), teacher_logits.reshape(-1, v), targets.reshape(-1)
    kl = F.kl_div(F.log_softmax(s / temperature, -1), F.log_softmax(t / temperature, -1), log_target=True,
                  reduction="batchmean")
    return alpha * temperature**2 * kl + (1 - alpha) * F.cross_entropy(s, y, ignore_index=-100)


def distill_kl_mean(student_logits, teacher_logits, targets, temperature, alpha):  # reduction="mean" divides by V
    v = student_logits.size(-1)
    s, t, y = student_logits.reshape(-1, v), teacher_logits.reshape(-1, v), targets.reshape(-1)
    keep = y != -100
    log_q, log_p = F.log_softmax(s[keep] / temperature, -1), F.log_softmax(t[keep] / temperature, -1)
    kl = (log_p.exp() * (log_p - log_q)).mean()  # what F.kl_div(..., reduction="mean") computes
    return alpha * temperature**2 * kl + (1 - alpha) * F.cross_entropy(s, y, ignore_index=-100)


def distill_soft_cross_entropy(student_logits, teacher_logits, targets, temperature, alpha):
    v = student_logits.size(-1)
    s, t, y = student_logits.reshape(-1, v), teacher_logits.reshape(-1, v), targets.reshape(-1)
    keep = y != -100
    soft = -(F.softmax(t[keep] / temperature, -1) * F.log_softmax(s[keep] / temperature, -1)).sum(-1).mean()
    return alpha * temperature**2 * soft + (1 - alpha) * F.cross_entropy(s, y, ignore_index=-100)


def distill_item(student_logits, teacher_logits, targets, temperature, alpha):
    return torch.tensor(distill_right(student_logits, teacher_logits, targets, temperature, alpha).item())


def test_b_5():
    assert check("B.5", distill_right) is True
    wrong = (distill_no_t_squared, distill_reversed_kl, distill_unsoftened, distill_alpha_swapped,
             distill_kl_over_padding, distill_kl_mean, distill_soft_cross_entropy, distill_item)
    for answer in wrong:
        with pytest.raises(ExerciseFailed):
            check("B.5", answer)
    with pytest.raises(ExerciseFailed, match="multiplied by T\\^2"):
        check("B.5", distill_no_t_squared)
    with pytest.raises(ExerciseFailed, match="KL runs the other way"):
        check("B.5", distill_reversed_kl)
    with pytest.raises(ExerciseFailed, match="Soften both distributions"):
        check("B.5", distill_unsoftened)
    with pytest.raises(ExerciseFailed, match="alpha weighs the teacher's"):
        check("B.5", distill_alpha_swapped)
    with pytest.raises(ExerciseFailed, match="-100 are padding.*KL term too"):
        check("B.5", distill_kl_over_padding)
    with pytest.raises(ExerciseFailed, match="reduction='mean' divides by V"):
        check("B.5", distill_kl_mean)
    with pytest.raises(ExerciseFailed, match="teacher's entropy"):
        check("B.5", distill_soft_cross_entropy)
    with pytest.raises(ExerciseFailed, match="no gradient"):
        check("B.5", distill_item)


def test_b_5_the_package_passes():
    from minillm.distill import distillation_loss

    assert check("B.5", distillation_loss) is True


# -- all of them -------------------------------------------------------------------------------

RIGHT = {"B.1": int8_right, "B.2": pack_right, "B.3": accept_right, "B.4": kv_right, "B.5": distill_right}


def test_the_checks_leave_the_random_states_alone():
    state, py_state = torch.random.get_rng_state(), random.getstate()
    for id, answer in RIGHT.items():
        assert check(id, answer) is True
    assert torch.equal(torch.random.get_rng_state(), state)
    assert random.getstate() == py_state


def test_an_answer_that_forgets_to_return_is_wrong_not_unattempted():
    def forgets_return(codes):
        packed = pack_right(codes)  # noqa: F841

    with pytest.raises(ExerciseFailed, match="should be a torch.Tensor, got NoneType"):
        check("B.2", forgets_return)
    with pytest.raises(ExerciseFailed, match="return a tuple of two: \\(codes, scale\\)"):
        check("B.1", lambda w: int8_right(w)[0])
    def kv_forgets_return(config, batch_size, seq_len, kv_format):
        n = kv_right(config, batch_size, seq_len, kv_format)  # noqa: F841

    with pytest.raises(ExerciseFailed, match="expected a number, got NoneType"):
        check("B.4", kv_forgets_return)
