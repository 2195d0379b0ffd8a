"""Chapter 08's graded exercises: a right answer passes, typical mistakes fail, the stub is not attempted."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from minillm.exercises import ExerciseFailed, check


# -- 8.1 bits per byte -------------------------------------------------------------------


def bpb_right(model, tokenizer, ids):
    with torch.no_grad():  # independent of minillm.evaluate: disjoint windows, summed by hand
        T, nats = model.config.context_length, 0.0
        for begin in range(0, len(ids) - 1, T):
            chunk = torch.tensor(ids[begin : begin + T + 1])
            logits = model(chunk[:-1][None])[0][0]
            nats += float(torch.nn.functional.cross_entropy(logits, chunk[1:], reduction="sum"))
    return nats / math.log(2) / len(tokenizer.decode(ids[1:]).encode("utf-8"))


def bpb_bits_per_token(model, tokenizer, ids):
    from minillm.evaluate import perplexity

    return perplexity(model, ids).loss / math.log(2)


def bpb_nats(model, tokenizer, ids):
    return bpb_right(model, tokenizer, ids) * math.log(2)


def bpb_characters(model, tokenizer, ids):
    text = tokenizer.decode(ids[1:])
    return bpb_right(model, tokenizer, ids) * len(text.encode("utf-8")) / len(text)


def bpb_all_tokens(model, tokenizer, ids):
    scored, everything = tokenizer.decode(ids[1:]).encode(), tokenizer.decode(ids).encode()
    return bpb_right(model, tokenizer, ids) * len(scored) / len(everything)


def test_8_1_right_answer_passes():
    assert check("8.1", bpb_right) is True


@pytest.mark.parametrize("wrong", [bpb_bits_per_token, bpb_nats, bpb_characters, bpb_all_tokens],
                         ids=lambda f: f.__name__)
def test_8_1_wrong_answers_fail(wrong):
    with pytest.raises(ExerciseFailed):
        check("8.1", wrong)


def test_8_1_hint_names_the_mistake():
    with pytest.raises(ExerciseFailed, match="first token is never predicted"):
        check("8.1", bpb_all_tokens)
    with pytest.raises(ExerciseFailed, match="divide by ln 2"):
        check("8.1", bpb_nats)


# -- 8.2 bootstrap -----------------------------------------------------------------------


def boot_right(correct, resamples=2000, seed=0):
    rng = np.random.default_rng(seed)
    x = np.asarray(correct, dtype=float)
    means = [x[rng.integers(0, len(x), len(x))].mean() for _ in range(resamples)]
    return float(np.std(means))


def boot_without_replacement(correct, resamples=2000, seed=0):
    rng = np.random.default_rng(seed)
    x = np.asarray(correct, dtype=float)
    return float(np.std([rng.permutation(x).mean() for _ in range(resamples)]))


def boot_std_of_answers(correct, resamples=2000, seed=0):
    rng = np.random.default_rng(seed)
    x = np.asarray(correct, dtype=float)
    return float(np.std(x[rng.integers(0, len(x), len(x))]))


def boot_fixed_size(correct, resamples=2000, seed=0):
    rng = np.random.default_rng(seed)
    x = np.asarray(correct, dtype=float)
    return float(np.std([x[rng.integers(0, len(x), 100)].mean() for _ in range(resamples)]))


def boot_formula(correct, resamples=2000, seed=0):
    p = float(np.mean(correct))
    return math.sqrt(p * (1 - p) / len(correct))


def boot_unseeded(correct, resamples=2000, seed=0):
    return boot_right(correct, resamples, seed=None)


def test_8_2_right_answer_passes():
    assert check("8.2", boot_right) is True


@pytest.mark.parametrize("wrong", [boot_without_replacement, boot_std_of_answers, boot_fixed_size, boot_formula,
                                   boot_unseeded], ids=lambda f: f.__name__)
def test_8_2_wrong_answers_fail(wrong):
    with pytest.raises(ExerciseFailed):
        check("8.2", wrong)


# -- 8.3 acc_norm by hand ----------------------------------------------------------------


def norm_right(result):
    picks = []
    for ex, ll in zip(result.examples, result.scores):
        per_byte = [v / len(c.encode("utf-8")) for v, c in zip(ll, ex.continuations)]
        picks.append(max(range(len(ll)), key=lambda j: (per_byte[j], -j)))
    return picks


def norm_acc(result):
    return [int(np.argmax(ll)) for ll in result.scores]


def norm_characters(result):
    return [int(np.argmax([v / len(c) for v, c in zip(ll, ex.continuations)]))
            for ex, ll in zip(result.examples, result.scores)]


def norm_choices(result):
    return [int(np.argmax([v / len(c.encode()) for v, c in zip(ll, ex.choices)]))
            for ex, ll in zip(result.examples, result.scores)]


def norm_argmin(result):
    return [int(np.argmin([v / len(c.encode()) for v, c in zip(ll, ex.continuations)]))
            for ex, ll in zip(result.examples, result.scores)]


def test_8_3_right_answer_passes():
    assert check("8.3", norm_right) is True


@pytest.mark.parametrize("wrong", [norm_acc, norm_characters, norm_choices, norm_argmin], ids=lambda f: f.__name__)
def test_8_3_wrong_answers_fail(wrong):
    with pytest.raises(ExerciseFailed):
        check("8.3", wrong)


def test_8_3_acc_picks_are_named():
    with pytest.raises(ExerciseFailed, match="these are the `acc` picks"):
        check("8.3", norm_acc)


# -- the stubs ---------------------------------------------------------------------------


@pytest.mark.parametrize("id", ["8.1", "8.2", "8.3"])
def test_stubs_are_not_attempted(id, capsys):
    def stub(*args, **kwargs):
        raise NotImplementedError

    assert check(id, stub) is False
    assert "not attempted yet" in capsys.readouterr().out
