"""Chapter 04's exercises: RMSNorm as a module, counting a model's parameters, top-p filtering.

Each check compares the reader's answer with the package (`minillm.layers.RMSNorm`,
`minillm.model.GPT`, `minillm.generate.filter_logits`) on inputs the reader did
not choose.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from minillm.exercises import ExerciseFailed, assert_close, exercise, expect
from minillm.generate import filter_logits
from minillm.layers import RMSNorm
from minillm.model import GPT, GPTConfig


@exercise("4.1", "RMSNorm as a module")
def rms_norm_check(answer) -> str:
    """`answer(dim, eps=...)` -> an nn.Module that behaves and loads like `minillm.layers.RMSNorm(dim, eps)`."""
    hint = ("RMSNorm divides each vector by sqrt(mean(x**2) + eps) over the last axis (keepdim=True), "
            "subtracts no mean, puts eps inside the square root, and multiplies by its learned gain `weight`.")
    g = torch.Generator().manual_seed(404)
    cases = [((3, 7, 16), 1e-5, 1.0, 3.0), ((2, 5), 1e-5, 1.0, -2.0), ((2, 3, 4, 32), 1e-5, 2.0, 0.0),
             ((4, 8), 1e-2, 0.05, 0.0)]  # last: small inputs, where where eps goes matters
    for shape, eps, scale, shift in cases:
        dim = shape[-1]
        module = answer(dim, eps=eps)
        expect(isinstance(module, nn.Module), f"calling your class with (dim, eps=...) should give an nn.Module, "
                                              f"got {type(module).__name__}")
        params = {name: tuple(p.shape) for name, p in module.named_parameters()}
        expect(params == {"weight": (dim,)}, f"RMSNorm({dim}) has one parameter, `weight` of shape ({dim},) (no "
                                             f"bias: nothing is subtracted, so nothing is shifted back); yours has "
                                             f"{params or 'none'}")
        x = shift + scale * torch.randn(*shape, generator=g)
        ref = RMSNorm(dim, eps=eps)
        with torch.no_grad():
            assert_close(module(x.clone()), ref(x), f"a freshly made module on x of shape {shape}",
                         "A new RMSNorm starts with weight = 1 (torch.ones), so it only rescales. " + hint)
            ref.weight.copy_(1.0 + 0.3 * torch.randn(dim, generator=g))
            module.load_state_dict(ref.state_dict())
            got = module(x.clone())
            expect(isinstance(got, torch.Tensor) and got.shape == x.shape,
                   f"for x of shape {tuple(shape)} the output should be a tensor of the same shape. {hint}")
            assert_close(got, ref(x), f"the module with trained weights on x of shape {shape}, eps={eps}", hint)
    return ("Has one parameter `weight`, starts at ones, loads the package's state dict, and matches "
            "minillm.layers.RMSNorm on four shapes, off-centre and tiny inputs, and two values of eps.")


# -- 4.2: counting parameters --------------------------------------------------------------


_PARTS: dict[str, dict[str, int]] = {}


def _count_by_part(config) -> dict[str, int]:
    with torch.device("meta"):
        model = GPT(config)
    parts = {"token embedding": 0, "position embedding": 0, "attention": 0, "MLP": 0, "norms": 0,
             "untied output head": 0}
    keys = (("tok_emb", "token embedding"), ("pos_emb", "position embedding"), (".attn.", "attention"),
            (".mlp.", "MLP"), ("norm", "norms"), ("lm_head", "untied output head"))
    for name, p in model.named_parameters():  # a tied head is listed once, as tok_emb
        parts[next(part for key, part in keys if key in name)] += p.numel()
    assert sum(parts.values()) == model.num_parameters()
    return parts


def _parts(config) -> dict[str, int]:
    """The parameters of `GPT(config)` by part, counted on the model itself (built on the meta device).

    Every block is the same, so models of one and two blocks give the count of L blocks exactly
    (and quickly, even for Llama 2 7B's width).
    """
    key = repr(config)
    if key not in _PARTS:
        one = _count_by_part(dataclasses.replace(config, n_layer=1))
        two = _count_by_part(dataclasses.replace(config, n_layer=2))
        _PARTS[key] = {part: one[part] + (config.n_layer - 1) * (two[part] - one[part]) for part in one}
    return dict(_PARTS[key])


def _configs():
    gpt2 = GPTConfig.from_preset("gpt2")
    yield "GPT-2 small", gpt2
    yield "GPT-2 medium", GPTConfig.from_preset("gpt2-medium")
    yield "a small GPT-2 with an untied head", GPTConfig(vocab_size=1000, context_length=128, d_model=96, n_layer=3,
                                                        n_head=4, tie_embeddings=False)
    yield "a GPT-2 with d_ff = 3C and no biases", GPTConfig(vocab_size=517, context_length=64, d_model=80,
                                                            n_layer=2, n_head=5, d_ff=240, bias=False)
    yield "Llama 2 7B (RMSNorm, SwiGLU, RoPE, untied)", GPTConfig.from_preset("llama2-7b")
    yield "a Llama-style model with grouped-query attention", GPTConfig(
        vocab_size=300, context_length=64, d_model=128, n_layer=2, n_head=8, n_kv_head=2, norm="rmsnorm",
        mlp="swiglu", positions="rope", bias=False)
    yield "a Llama-style model with biases and learned positions", dataclasses.replace(
        gpt2, vocab_size=211, context_length=32, d_model=64, n_layer=3, n_head=4, norm="rmsnorm", mlp="swiglu")


@exercise("4.2", "count the parameters by formula")
def count_check(answer) -> str:
    """`answer(config)` -> the number of parameters of `GPT(config)`, by formula, for GPT-2 and Llama-style configs."""
    for what, config in _configs():
        got = answer(config)  # first, so that an untouched stub returns at once
        parts = _parts(config)
        expected = sum(parts.values())
        expect(isinstance(got, int) and not isinstance(got, bool),
               f"count_parameters should return an int, got {type(got).__name__} ({got!r}) for {what}")
        if got == expected:
            continue
        diff = got - expected
        named = [part for part, n in parts.items() if n and abs(diff) == n]
        clue = (f" The difference is exactly the {' or the '.join(named)} ({abs(diff):,}): did you "
                f"{'count it although it is absent or tied' if diff > 0 else 'leave it out'}?") if named else ""
        by_part = ", ".join(f"{part} {n:,}" for part, n in parts.items() if n)
        raise ExerciseFailed(
            f"for {what} you count {got:,} parameters, the model has {expected:,} ({diff:+,}).{clue} "
            f"The model's parts: {by_part}. Look at config.ff_width (the MLP width), config.kv_heads (key/value "
            f"heads: q has n_head * D outputs, k and v kv_heads * D each), config.bias (linear layers and "
            f"LayerNorms; RMSNorm never has one), config.positions and config.tie_embeddings.")
    return "Matches GPT(config).num_parameters() on GPT-2 small and medium, Llama 2 7B and four smaller variants."


# -- 4.3: top-p filtering -------------------------------------------------------------------


@exercise("4.3", "top-p filtering without a loop")
def top_p_check(answer) -> str:
    """`answer(logits, p)` -> probabilities (..., V) after nucleus filtering, like `filter_logits(logits, top_p=p)`."""
    hint = ("Keep the smallest set of most likely tokens whose probabilities add up to at least p: sort the "
            "probabilities, keep a token while the mass of the tokens ranked above it is still below p (so the "
            "token that crosses p stays), zero the rest in the original order, and renormalize.")
    g = torch.Generator().manual_seed(43)
    peaked = torch.tensor([[6.0, 1.0, 0.5, 0.0, -1.0]])  # the top token alone has more than p = 0.9
    cases = [(2.0 * torch.randn(4, 50, generator=g), 0.9), (2.0 * torch.randn(4, 50, generator=g), 0.5),
             (torch.randn(2, 3, 40, generator=g), 0.95), (3.0 * torch.randn(3, 30, generator=g), 0.05),
             (torch.randn(2, 20, generator=g), 1.0), (peaked, 0.9)]
    for logits, p in cases:
        expected = filter_logits(logits, top_p=p)
        got = answer(logits.clone(), p)
        expect(isinstance(got, torch.Tensor), f"top_p_filter should return a tensor, got {type(got).__name__}")
        expect(got.shape == logits.shape, f"for logits of shape {tuple(logits.shape)} the probabilities should "
                                          f"have the same shape, got {tuple(got.shape)}")
        assert_close(got.sum(-1), torch.ones(logits.shape[:-1]), f"the sum of the probabilities (p = {p})",
                     "Renormalize what you keep so that every row sums to 1.", atol=1e-5, rtol=0)
        kept, should = (got > 0).sum(-1), (expected > 0).sum(-1)
        expect(torch.equal(kept, should),
               f"for logits of shape {tuple(logits.shape)} and p = {p} you keep {kept.flatten().tolist()} tokens "
               f"per row, the reference keeps {should.flatten().tolist()}. {hint}")
        assert_close(got, expected, f"top_p_filter(logits of shape {tuple(logits.shape)}, p = {p})", hint,
                     atol=1e-6, rtol=1e-5)
    return "Matches filter_logits(logits, top_p=p) on batched logits (2-D and 3-D), p from 0.05 to 1, and a peaked row."
