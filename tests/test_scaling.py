"""Tests for minillm.scaling: hand-computed values, round trips, published figures, errors."""

from __future__ import annotations

import math

import pytest

from minillm import scaling


# --- compute ---------------------------------------------------------------


def test_training_flops_is_six_n_d():
    # 6 * 124e6 * 1e9 = 744e15, computed by hand.
    assert scaling.training_flops(124e6, 1e9) == pytest.approx(7.44e17)
    assert scaling.training_flops(1, 1) == 6.0
    assert scaling.training_flops(124e6, 0) == 0.0


def test_flops_per_token_attention_term():
    # GPT-2 small: 12 layers, context 1024, width 768.
    # 12 * 12 * 1024 * 768 = 113,246,208 extra FLOPs per token.
    assert scaling.flops_per_token(124e6, 12, 1024, 768) == pytest.approx(744e6 + 113_246_208)
    assert scaling.flops_per_token(124e6) == pytest.approx(744e6)
    # Per token times tokens.
    assert scaling.training_flops(10, 3, n_layer=1, context=2, d_model=4) == pytest.approx(3 * (60 + 96))


def test_gpt3_flops_match_brown_et_al():
    # Brown et al. 2020, Table D.1: GPT-3 175B on 300B tokens, 3.14e23 FLOPs, 3.64e3 PF-days.
    flops = scaling.training_flops(175e9, 300e9)
    assert flops == pytest.approx(3.14e23, rel=0.01)
    assert scaling.petaflop_s_days(flops) == pytest.approx(3640, rel=0.01)


def test_petaflop_s_day_unit():
    assert scaling.petaflop_s_days(8.64e19) == pytest.approx(1.0)


# --- data ------------------------------------------------------------------


def test_chinchilla_70b_gets_1_4t_tokens():
    # Hoffmann et al. 2022: Chinchilla, 70B parameters, 1.4T tokens.
    assert scaling.chinchilla_tokens(70e9) == pytest.approx(1.4e12)
    assert scaling.chinchilla_tokens(1e6, tokens_per_param=10) == pytest.approx(1e7)


@pytest.mark.parametrize("flops", [1e15, 5.88e23, 3.14e23])
def test_compute_optimal_round_trip(flops):
    n, d = scaling.compute_optimal(flops)
    assert d == pytest.approx(20 * n)
    assert scaling.training_flops(n, d) == pytest.approx(flops)


def test_compute_optimal_chinchilla_budget():
    # 6 * 70e9 * 1.4e12 = 5.88e23 FLOPs -> back to 70B parameters and 1.4T tokens.
    n, d = scaling.compute_optimal(5.88e23)
    assert n == pytest.approx(70e9)
    assert d == pytest.approx(1.4e12)
    # A hand-solved case: C = 6 * N * (5 N) = 30 N^2 = 30e12 -> N = 1e6.
    n, d = scaling.compute_optimal(30e12, tokens_per_param=5)
    assert (n, d) == (pytest.approx(1e6), pytest.approx(5e6))


# --- time ------------------------------------------------------------------


def test_device_peaks_from_datasheets():
    assert scaling.peak_flops("V100", "fp16") == 125e12
    assert scaling.peak_flops("A100") == 312e12
    assert scaling.peak_flops("H100") == 989e12
    assert scaling.peak_flops("H200", "bf16") == 989e12
    assert scaling.peak_flops("A100", "fp32") == 19.5e12
    for device in scaling.DEVICES.values():
        assert device.source and device.watts > 0 and device.peak


def test_gpu_hours_by_hand():
    # 3.6e18 FLOPs at 1e15 FLOP/s and 50% MFU: 7,200 s = 2 h.
    assert scaling.gpu_hours(3.6e18, 1e15, 0.5) == pytest.approx(2.0)
    assert scaling.gpu_hours(3.6e18, 1e15, 1.0) == pytest.approx(1.0)


def test_implied_utilization_by_hand():
    # Made-up run: 1e9 parameters, 1e11 tokens -> 6e20 FLOPs; 1,000 GPU-hours
    # at 5e14 FLOP/s peak could do 1.8e21 FLOPs, so the utilization is 1/3.
    assert scaling.implied_utilization(1e9, 1e11, 1000, 5e14) == pytest.approx(1 / 3)


def test_implied_utilization_inverts_gpu_hours():
    flops = scaling.training_flops(7e9, 2e12)
    hours = scaling.gpu_hours(flops, 312e12, 0.43)
    assert scaling.implied_utilization(7e9, 2e12, hours, 312e12) == pytest.approx(0.43)


@pytest.mark.parametrize(
    "n_params, gpu_hours",
    [(7e9, 184_320), (70e9, 1_720_320)],  # Touvron et al. 2023, Llama 2, Table 2
)
def test_llama2_implies_plausible_mfu(n_params, gpu_hours):
    # A100-80GB at 312 TFLOP/s bf16, 2T tokens. Large, well-run training jobs
    # reach roughly 30-60% MFU; anything outside that band would mean a bug.
    mfu = scaling.implied_utilization(n_params, 2e12, gpu_hours, scaling.peak_flops("A100"))
    assert 0.3 < mfu < 0.6


# --- money and energy ------------------------------------------------------


def test_dollars_energy_co2_by_hand():
    assert scaling.dollars(10, 2.5) == pytest.approx(25.0)
    # 10 h * 700 W = 7 kWh, times PUE 1.2 = 8.4 kWh; at 0.5 kg/kWh: 4.2 kg.
    assert scaling.energy_kwh(10, 700) == pytest.approx(7.0)
    assert scaling.energy_kwh(10, 700, pue=1.2) == pytest.approx(8.4)
    assert scaling.co2_kg(8.4, 0.5) == pytest.approx(4.2)


def test_llama2_7b_carbon_is_reproducible():
    # Llama 2 Table 2: 7B, 184,320 GPU-hours at 400 W, 31.22 t CO2eq. The grid
    # intensity this implies (31.22e3 kg / 73,728 kWh = 0.4234 kg/kWh) must also
    # reproduce the 70B row: 1,720,320 h * 0.4 kW * 0.4234 = 291.4 t (paper: 291.42).
    kwh_7b = scaling.energy_kwh(184_320, 400)
    assert kwh_7b == pytest.approx(73_728)
    intensity = 31.22e3 / kwh_7b
    co2_70b = scaling.co2_kg(scaling.energy_kwh(1_720_320, 400), intensity)
    assert co2_70b / 1000 == pytest.approx(291.42, rel=1e-3)


def test_estimate_chains_the_steps():
    # GPT-2 small on 10B tokens, one H100 at 40% MFU, $2.50 per hour, PUE 1.2:
    # 7.44e18 / (989e12 * 0.4) = 18,806.9 s = 5.2241 h; $13.06; 5.2241 * 0.7 * 1.2 = 4.388 kWh.
    est = scaling.estimate(124e6, 10e9, "H100", utilization=0.4, price_per_gpu_hour=2.5, pue=1.2)
    assert est.flops == pytest.approx(7.44e18)
    assert est.gpu_hours == pytest.approx(5.2241, rel=1e-4)
    assert est.wall_hours == est.gpu_hours
    assert est.dollars == pytest.approx(13.06, rel=1e-3)
    assert est.kwh == pytest.approx(4.388, rel=1e-3)
    assert est.co2_kg is None
    assert "GPU-hours" in str(est)

    eight = scaling.estimate(124e6, 10e9, "H100", n_gpus=8, kg_co2_per_kwh=0.4)
    assert eight.gpu_hours == pytest.approx(est.gpu_hours)
    assert eight.wall_hours == pytest.approx(est.gpu_hours / 8)
    assert eight.co2_kg == pytest.approx(eight.kwh * 0.4)
    assert "CO2e" in str(eight)


# --- errors ----------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, -0.1, 1.5, math.nan, 40])
def test_utilization_outside_unit_interval_is_rejected(bad):
    with pytest.raises(ValueError, match="utilization"):
        scaling.gpu_hours(1e18, 1e14, bad)


def test_negative_or_non_numeric_sizes_are_rejected():
    with pytest.raises(ValueError, match="n_params"):
        scaling.training_flops(-1, 1e9)
    with pytest.raises(ValueError, match="n_tokens"):
        scaling.training_flops(1e6, -5)
    with pytest.raises(ValueError, match="n_params"):
        scaling.chinchilla_tokens(0)
    with pytest.raises(ValueError, match="flops"):
        scaling.compute_optimal(-1e20)
    with pytest.raises(ValueError, match="finite"):
        scaling.training_flops(math.inf, 1)
    with pytest.raises(TypeError, match="n_params"):
        scaling.training_flops("124M", 1e9)
    with pytest.raises(TypeError, match="n_tokens"):
        scaling.training_flops(1e6, True)
    with pytest.raises(ValueError, match="peak"):
        scaling.gpu_hours(1e18, 0, 0.5)
    with pytest.raises(ValueError, match="hours"):
        scaling.implied_utilization(1e9, 1e9, 0, 1e14)


def test_partial_attention_arguments_are_rejected():
    with pytest.raises(ValueError, match="n_layer, context and d_model"):
        scaling.flops_per_token(1e6, n_layer=12)


def test_energy_and_money_errors():
    with pytest.raises(ValueError, match="pue"):
        scaling.energy_kwh(1, 700, pue=0.9)
    with pytest.raises(ValueError, match="price_per_gpu_hour"):
        scaling.dollars(1, -2)
    with pytest.raises(ValueError, match="kg_per_kwh"):
        scaling.co2_kg(1, -0.1)


def test_unknown_device_or_dtype():
    with pytest.raises(ValueError, match="known devices"):
        scaling.peak_flops("TPU9000")
    with pytest.raises(ValueError, match="available"):
        scaling.peak_flops("V100", "bf16")
    with pytest.raises(ValueError, match="n_gpus"):
        scaling.estimate(1e6, 1e9, n_gpus=0)
