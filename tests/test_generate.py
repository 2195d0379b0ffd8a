"""Tests of minillm.generate: logits filtering, decoding rules, KV cache, stop tokens."""

from __future__ import annotations

import pytest
import torch

from minillm.generate import filter_logits, generate, stream
from minillm.model import GPT, GPTConfig


@pytest.fixture(scope="module")
def model() -> GPT:
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=53, context_length=20, d_model=32, n_layer=2, n_head=4, n_kv_head=2, positions="rope")
    m = GPT(cfg)
    with torch.no_grad():  # larger output weights: peaky, varied next-token distributions
        m.lm_head.weight.mul_(5)
    return m.eval()


PROBS = torch.tensor([0.5, 0.25, 0.125, 0.125])


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({}, [0.5, 0.25, 0.125, 0.125]),
        ({"top_k": 2}, [2 / 3, 1 / 3, 0.0, 0]),
        ({"top_p": 0.4}, [1.0, 0, 0, 0]),  # the top token alone already has 0.5 >= 0.4
        ({"top_p": 0.7}, [2 / 3, 1 / 3, 0, 0]),  # 0.5 < 0.7 <= 0.75
        ({"top_p": 0.8}, [4 / 7, 2 / 7, 1 / 7, 0]),  # 0.75 < 0.8 <= 0.875
        ({"top_p": 1.0}, [0.5, 0.25, 0.125, 0.125]),
        ({"temperature": 0.5}, [16 / 22, 4 / 22, 1 / 22, 1 / 22]),  # p^2, renormalized
        ({"temperature": 0.5, "top_k": 2}, [0.8, 0.2, 0, 0]),
        ({"top_k": 3}, [0.5, 0.25, 0.125, 0.125]),  # tokens 2 and 3 tie for 3rd place: both stay
    ],
)
def test_filter_logits_by_hand(kwargs, expected):
    logits = PROBS.log() + 3.0  # a constant shift does not change the distribution
    torch.testing.assert_close(filter_logits(logits, **kwargs), torch.tensor(expected))


def test_filter_logits_tie_at_k_and_errors():
    probs = filter_logits(torch.tensor([[2.0, 1.0, 1.0, 0.0]]), top_k=2)
    assert (probs > 0).sum() == 3
    with pytest.raises(ValueError, match="temperature"):
        filter_logits(PROBS, temperature=0.0)
    with pytest.raises(ValueError, match="top_k"):
        filter_logits(PROBS, top_k=0)
    with pytest.raises(ValueError, match="top_p"):
        filter_logits(PROBS, top_p=1.5)


def test_filter_logits_on_batches():
    logits = torch.tensor([[0.0, 1.0, 2.0], [5.0, 0.0, 0.0]])
    probs = filter_logits(logits, top_p=0.5)
    assert torch.equal(probs > 0, torch.tensor([[False, False, True], [True, False, False]]))


def test_greedy_matches_a_plain_argmax_loop(model):
    idx = torch.randint(0, 53, (2, 4))
    expected = idx
    for _ in range(10):
        logits, _ = model(expected)
        expected = torch.cat([expected, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(generate(model, idx, 10, temperature=0), expected)
    assert torch.equal(generate(model, idx, 10, temperature=0, use_cache=False), expected)


def test_seeded_sampling_is_reproducible(model):
    idx = torch.randint(0, 53, (2, 4))
    a = generate(model, idx, 12, seed=7)
    assert torch.equal(a, generate(model, idx, 12, generator=torch.Generator().manual_seed(7)))
    assert not torch.equal(a, generate(model, idx, 12, seed=8))
    assert a.shape == (2, 16) and torch.equal(a[:, :4], idx)


@pytest.mark.parametrize("kwargs", [{}, {"top_k": 5}, {"top_p": 0.9, "temperature": 0.8}])
def test_cached_and_uncached_give_the_same_tokens(model, kwargs):
    idx = torch.randint(0, 53, (3, 5))
    n = 30  # 5 + 30 > context length 20: both paths slide the window
    cached = generate(model, idx, n, seed=3, **kwargs)
    uncached = generate(model, idx, n, seed=3, use_cache=False, **kwargs)
    assert cached.shape == (3, 35)
    assert torch.equal(cached, uncached)


def test_top_k_one_is_greedy(model):
    idx = torch.randint(0, 53, (2, 3))
    assert torch.equal(generate(model, idx, 10, top_k=1, seed=0), generate(model, idx, 10, temperature=0))


def test_stop_tokens_in_a_batch(model):
    idx = torch.randint(0, 53, (2, 3))
    free = generate(model, idx, 10, temperature=0)
    stop = int(free[0, 3 + 4])  # row 0's 5th new token (it may also appear earlier)
    # Step at which each row first emits `stop` (10 = never).
    first = [int((row[3:] == stop).nonzero()[0]) if (row[3:] == stop).any() else 10 for row in free]
    out = generate(model, idx, 10, temperature=0, stop_tokens=[stop])
    assert out.shape[1] == 3 + (max(first) + 1 if max(first) < 10 else 10)
    for row, k in enumerate(first):
        n = min(k + 1, out.shape[1] - 3)  # tokens up to and including the stop ...
        assert torch.equal(out[row, : 3 + n], free[row, : 3 + n])
        assert torch.all(out[row, 3 + n :] == stop)  # ... then the stop token repeated


def test_single_sequence_stops_at_stop_token(model):
    idx = torch.randint(0, 53, (1, 3))
    free = generate(model, idx, 8, temperature=0)
    stop = int(free[0, 5])  # the 3rd new token (it may also appear earlier)
    k = int((free[0, 3:] == stop).nonzero()[0])
    out = generate(model, idx, 8, temperature=0, stop_tokens={stop, 10_000})
    assert torch.equal(out, free[:, : 3 + k + 1])


def test_stream_yields_one_token_per_step(model):
    idx = torch.randint(0, 53, (2, 3))
    steps = list(stream(model, idx, 6, seed=1))
    assert len(steps) == 6 and all(s.shape == (2,) for s in steps)
    assert torch.equal(torch.cat([idx, torch.stack(steps, 1)], 1), generate(model, idx, 6, seed=1))


def test_generate_edge_cases_and_training_flag(model):
    idx = torch.randint(0, 53, (1, 4))
    assert torch.equal(generate(model, idx, 0), idx)
    model.train()
    generate(model, idx, 2)
    assert model.training
    model.eval()
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(model, idx, -1)
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        generate(model, idx[0], 3)
    with pytest.raises(ValueError, match="top_p"):
        generate(model, idx, 3, top_p=0.0)
    with pytest.raises(TypeError, match="GPT"):
        generate(torch.nn.Linear(2, 2), idx, 3)
