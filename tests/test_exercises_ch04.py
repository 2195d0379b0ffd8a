"""Chapter 04's exercise checks: a right answer passes, typical mistakes fail, an untouched stub is not attempted."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from minillm.exercises import ExerciseFailed, check

# -- 4.1: RMSNorm ----------------------------------------------------------------------------


class MyRMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return self.weight * x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + self.eps)


class CentredNorm(MyRMSNorm):  # subtracts the mean: LayerNorm without the shift
    def forward(self, x):
        return super().forward(x - x.mean(dim=-1, keepdim=True))


class EpsOutside(MyRMSNorm):
    def forward(self, x):
        return self.weight * x / (x.pow(2).mean(dim=-1, keepdim=True).sqrt() + self.eps)


class WithBias(MyRMSNorm):
    def __init__(self, dim, eps=1e-5):
        super().__init__(dim, eps)
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x):
        return super().forward(x) + self.bias


class RandomInit(MyRMSNorm):
    def __init__(self, dim, eps=1e-5):
        super().__init__(dim, eps)
        nn.init.normal_(self.weight, 1.0, 0.2)


class UnbiasedStd(MyRMSNorm):  # x.var() is not the mean square
    def forward(self, x):
        return self.weight * x / torch.sqrt(x.var(dim=-1, keepdim=True) + self.eps)


def test_4_1_right_answer_passes():
    assert check("4.1", MyRMSNorm) is True


@pytest.mark.parametrize("wrong", [CentredNorm, EpsOutside, WithBias, RandomInit, UnbiasedStd])
def test_4_1_wrong_answers_fail(wrong):
    with pytest.raises(ExerciseFailed, match="not right yet"):
        check("4.1", wrong)


# -- 4.2: counting parameters ----------------------------------------------------------------


def count_parameters(c):
    C, L, V = c.d_model, c.n_layer, c.vocab_size
    D = C // c.n_head
    b = 1 if c.bias else 0
    qkv_out = (c.n_head + 2 * c.kv_heads) * D
    attn = C * qkv_out + b * qkv_out + C * C + b * C
    f = c.ff_width
    mlp = (2 * C * f + b * (f + C)) if c.mlp == "gelu" else (3 * C * f + b * (2 * f + C))
    norm = C + (C if c.norm == "layernorm" and c.bias else 0)
    total = V * C + L * (attn + mlp + 2 * norm) + norm
    total += c.context_length * C if c.positions == "learned" else 0
    total += 0 if c.tie_embeddings else V * C
    return total


def count_gpt2_only(c):  # the chapter's formula: right for GPT-2 small, wrong for everything else
    C, L = c.d_model, c.n_layer
    return c.vocab_size * C + c.context_length * C + L * (12 * C * C + 13 * C) + 2 * C


def count_forgets_untied_head(c):
    n = count_parameters(c)
    return n if c.tie_embeddings else n - c.vocab_size * c.d_model


def count_ignores_gqa(c):  # k and v as wide as q
    n = count_parameters(c)
    D = c.d_model // c.n_head
    return n + c.n_layer * 2 * (c.n_head - c.kv_heads) * D * (c.d_model + (1 if c.bias else 0))


def count_as_float(c):
    return float(count_parameters(c))


def test_4_2_right_answer_passes():
    assert check("4.2", count_parameters) is True


@pytest.mark.parametrize("wrong", [count_gpt2_only, count_forgets_untied_head, count_ignores_gqa, count_as_float])
def test_4_2_wrong_answers_fail(wrong):
    with pytest.raises(ExerciseFailed, match="not right yet"):
        check("4.2", wrong)


def test_4_2_names_the_missing_part():
    with pytest.raises(ExerciseFailed, match="exactly the .*untied output head .96,000.: did you leave it out"):
        check("4.2", count_forgets_untied_head)


# -- 4.3: top-p ------------------------------------------------------------------------------


def top_p_filter(logits, p):
    probs = torch.softmax(logits.float(), dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    keep_sorted = sorted_probs.cumsum(-1) - sorted_probs < p
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    kept = probs * keep
    return kept / kept.sum(-1, keepdim=True)


def top_p_drops_the_crossing_token(logits, p):  # keeps only tokens with cumulative mass below p
    probs = torch.softmax(logits, dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    keep_sorted = sorted_probs.cumsum(-1) < p
    keep_sorted[..., 0] = True
    kept = probs * torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    return kept / kept.sum(-1, keepdim=True)


def top_p_not_renormalized(logits, p):
    probs = torch.softmax(logits, dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    keep_sorted = sorted_probs.cumsum(-1) - sorted_probs < p
    return probs * torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)


def top_p_keeps_sorted_order(logits, p):  # forgets to put the probabilities back in vocabulary order
    probs = torch.softmax(logits, dim=-1)
    sorted_probs, _ = probs.sort(dim=-1, descending=True)
    kept = sorted_probs * (sorted_probs.cumsum(-1) - sorted_probs < p)
    return kept / kept.sum(-1, keepdim=True)


def top_p_with_a_loop_over_the_first_row(logits, p):  # handles a single distribution, not a batch
    flat = logits.reshape(-1, logits.size(-1))[0]
    return top_p_filter(flat, p).expand_as(logits)


def test_4_3_right_answer_passes():
    assert check("4.3", top_p_filter) is True


@pytest.mark.parametrize("wrong", [top_p_drops_the_crossing_token, top_p_not_renormalized, top_p_keeps_sorted_order,
                                   top_p_with_a_loop_over_the_first_row])
def test_4_3_wrong_answers_fail(wrong):
    with pytest.raises(ExerciseFailed, match="not right yet"):
        check("4.3", wrong)


# -- stubs -----------------------------------------------------------------------------------


@pytest.mark.parametrize("id", ["4.1", "4.2", "4.3"])
def test_stubs_are_not_attempted(id, capsys):
    def stub(*args, **kwargs):
        raise NotImplementedError

    assert check(id, stub) is False
    assert "not attempted yet" in capsys.readouterr().out


def test_the_reference_formula_is_the_chapters_for_gpt2():
    from minillm.model import GPTConfig

    c = GPTConfig.from_preset("gpt2")
    assert count_parameters(c) == count_gpt2_only(c) == 124_439_808
    assert math.isclose(count_parameters(GPTConfig.from_preset("llama2-7b")), 6_738_415_616)
