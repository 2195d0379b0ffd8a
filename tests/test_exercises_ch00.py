"""Chapter 00's exercise checks: a right answer passes, typical mistakes fail, the stub is not attempted."""

from __future__ import annotations

import pytest

from minillm.exercises import ExerciseFailed, check


def cost(n, d, peak, mfu, price):
    hours = 6 * n * d / (peak * mfu) / 3600
    return hours, hours * price


def optimal(c):
    n = (c / (6 * 20)) ** 0.5
    return n, 20 * n


def mfu(n, d, hours, peak):
    return 6 * n * d / (hours * 3600 * peak)


def stub(*args):
    raise NotImplementedError


def test_right_answers_pass():
    assert check("0.1", cost) is True
    assert check("0.2", optimal) is True
    assert check("0.3", mfu) is True


@pytest.mark.parametrize("wrong", [
    lambda n, d, p, u, pr: (6 * n * d / (p * u), 6 * n * d / (p * u) * pr),            # seconds, not hours
    lambda n, d, p, u, pr: (2 * n * d / (p * u) / 3600, 2 * n * d / (p * u) / 3600 * pr),  # forward only
    lambda n, d, p, u, pr: (6 * n * d * u / p / 3600, 6 * n * d * u / p / 3600 * pr),  # MFU multiplies
    lambda n, d, p, u, pr: (cost(n, d, p, u, pr)[0], pr),                                 # forgot the hours
])
def test_cost_mistakes_fail(wrong):
    with pytest.raises(ExerciseFailed):
        check("0.1", wrong)


@pytest.mark.parametrize("wrong", [
    lambda c: optimal(c)[::-1],                               # (D, N)
    lambda c: ((c / 6) ** 0.5, 20 * (c / 6) ** 0.5),         # forgot the 20 in N
    lambda c: ((c / 120) ** 0.5, (c / 120) ** 0.5 / 20),     # D = N / 20
])
def test_optimal_mistakes_fail(wrong):
    with pytest.raises(ExerciseFailed):
        check("0.2", wrong)


@pytest.mark.parametrize("wrong", [
    lambda n, d, h, p: 100 * mfu(n, d, h, p),                 # a percentage
    lambda n, d, h, p: 6 * n * d / (h * p),                   # hours as seconds
    lambda n, d, h, p: 2 * n * d / (h * 3600 * p),            # forward FLOPs only
])
def test_mfu_mistakes_fail(wrong):
    with pytest.raises(ExerciseFailed):
        check("0.3", wrong)


def test_stubs_are_not_attempted(capsys):
    for id in ("0.1", "0.2", "0.3"):
        assert check(id, stub) is False
    assert "not attempted yet" in capsys.readouterr().out
