"""Chapter 00's exercises: the cost calculator, checked against `minillm.scaling`."""

from __future__ import annotations

import math

import numpy as np

from minillm import scaling
from minillm.exercises import ExerciseFailed, assert_close, exercise, expect


def _pair(value, what: str) -> tuple[float, float]:
    expect(isinstance(value, (tuple, list)) and len(value) == 2,
           f"{what} should return a pair (two numbers), got {type(value).__name__} {value!r}")
    a, b = value
    try:
        return float(a), float(b)
    except (TypeError, ValueError):
        raise ExerciseFailed(f"{what} should return two numbers, got {value!r}") from None


def _cases(seed: int = 0, k: int = 6):
    """Random runs: (parameters, tokens, peak FLOP/s, MFU, price per GPU-hour), spread over many magnitudes."""
    rng = np.random.default_rng(seed)
    for _ in range(k):
        yield (float(10 ** rng.uniform(6, 11.5)), float(10 ** rng.uniform(8, 13)),
               float(rng.choice([65e12, 125e12, 312e12, 989e12])), float(rng.uniform(0.2, 0.6)),
               float(rng.uniform(0.5, 4.0)))


@exercise("0.1", "a training-cost calculator")
def grade_cost(training_cost) -> str:
    """Check exercise 0.1 (a training-cost calculator) against the package; returns what was checked."""
    for seed in range(3):
        for n, d, peak, mfu, price in _cases(seed):
            hours, usd = _pair(training_cost(n, d, peak, mfu, price), "training_cost")
            ref_hours = scaling.gpu_hours(scaling.training_flops(n, d), peak, mfu)
            where = f"training_cost({n:.3g}, {d:.3g}, {peak:.3g}, {mfu:.2f}, {price:.2f})"
            if not math.isclose(hours, ref_hours, rel_tol=1e-6):
                ratio = hours / ref_hours if ref_hours else float("nan")
                hint = ("Off by 3600: GPU-hours are seconds / 3600." if math.isclose(ratio, 3600, rel_tol=1e-3)
                        or math.isclose(ratio, 1 / 3600, rel_tol=1e-3) else
                        "Off by a factor of 3: training is 6 N D FLOPs, not 2 N D (that is the forward pass only)."
                        if math.isclose(ratio, 1 / 3, rel_tol=1e-3) else
                        "The utilization divides the peak: seconds = C / (peak * mfu).")
                raise ExerciseFailed(f"{where}: GPU-hours {hours:.4g}, expected {ref_hours:.4g}. {hint}")
            assert_close(usd, scaling.dollars(ref_hours, price), f"{where}: dollars",
                         hint="Dollars are GPU-hours times the price per GPU-hour.", rtol=1e-6, atol=0.0)
    return "GPU-hours and dollars match minillm.scaling on 18 random runs."


@exercise("0.2", "the compute-optimal split of a budget")
def grade_optimal(compute_optimal) -> str:
    """Check exercise 0.2 (the compute-optimal split of a budget) against the package; returns what was checked."""
    rng = np.random.default_rng(1)
    budgets = [1e18, 3.15e23, *(float(10 ** x) for x in rng.uniform(15, 26, 6))]
    for c in budgets:
        n, d = _pair(compute_optimal(c), "compute_optimal")
        ref_n, ref_d = scaling.compute_optimal(c)
        if math.isclose(n, ref_d, rel_tol=1e-6) and math.isclose(d, ref_n, rel_tol=1e-6):
            raise ExerciseFailed(f"compute_optimal({c:.3g}) returned (tokens, parameters); return (N, D).")
        expect(math.isclose(n * d * 6, c, rel_tol=1e-6),
               f"compute_optimal({c:.3g}) = ({n:.4g}, {d:.4g}) does not spend the budget: 6 N D = {6 * n * d:.4g}. "
               "The two must satisfy C = 6 N D.")
        assert_close(n, ref_n, f"N for a budget of {c:.3g} FLOPs",
                     hint="With D = 20 N, C = 6 N D = 120 N², so N = sqrt(C / 120).", rtol=1e-6, atol=0.0)
        assert_close(d, ref_d, f"D for a budget of {c:.3g} FLOPs", hint="D = 20 N.", rtol=1e-6, atol=0.0)
    return f"(N, D) matches scaling.compute_optimal on {len(budgets)} budgets, GPT-3's among them."


@exercise("0.3", "the utilization a published run implies")
def grade_mfu(implied_mfu) -> str:
    """Check exercise 0.3 (the utilization a published run implies) against the package; returns what was checked."""
    runs = [(6.74e9, 2e12, 184_320, 312e12), (68.98e9, 2e12, 1_720_320, 312e12)]
    rng = np.random.default_rng(2)
    for n, d, peak, mfu, _ in _cases(3, 6):
        runs.append((n, d, scaling.gpu_hours(scaling.training_flops(n, d), peak, mfu) * rng.uniform(0.8, 1.2), peak))
    for n, d, hours, peak in runs:
        got = implied_mfu(n, d, hours, peak)
        ref = scaling.implied_utilization(n, d, hours, peak)
        try:
            got = float(got)
        except (TypeError, ValueError):
            raise ExerciseFailed(f"implied_mfu should return a number, got {got!r}") from None
        if math.isclose(got, 100 * ref, rel_tol=1e-6):
            raise ExerciseFailed("Return a fraction (0.4), not a percentage (40).")
        assert_close(got, ref, f"implied_mfu({n:.3g}, {d:.3g}, {hours:,.0f} GPU-hours, {peak:.3g} FLOP/s)",
                     hint="MFU = 6 N D / (hours * 3600 * peak): the FLOPs done over the FLOPs the GPUs could do.",
                     rtol=1e-6, atol=0.0)
    return f"matches scaling.implied_utilization on {len(runs)} runs, Llama 2 7B and 70B among them."
