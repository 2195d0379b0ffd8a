"""What training a language model costs: FLOPs, GPU-hours, dollars and energy.

Chapter 00 (introduction) uses this module as a back-of-the-envelope calculator;
chapter 05 (pretraining) comes back to it when it measures throughput and MFU.

The chain of estimates, each step one small function:

1. **Compute.** Training a model with ``N`` parameters on ``D`` tokens takes about
   ``C = 6 N D`` floating-point operations (Kaplan et al. 2020, "Scaling Laws for
   Neural Language Models", section 2.1): the forward pass costs 2 FLOPs per
   parameter per token (one multiply and one add in each matrix product) and the
   backward pass twice that (gradients for the activations *and* for the weights).
   Attention over a context of ``T`` tokens adds a term that does not depend on the
   parameter count; :func:`flops_per_token` can include it (convention below).
2. **Data.** Hoffmann et al. 2022 ("Training Compute-Optimal Large Language
   Models", the Chinchilla paper) found that for a fixed compute budget loss is
   lowest with about 20 training tokens per parameter: :func:`chinchilla_tokens`
   and, for a budget ``C = 6 N D`` with ``D = 20 N``, :func:`compute_optimal`.
3. **Time.** A GPU with peak throughput ``P`` FLOP/s (dense, no sparsity; see
   :data:`DEVICES`) running at model FLOPs utilization ``u`` (MFU, the fraction of
   the peak that goes into the model's own FLOPs) needs ``C / (P u)`` seconds:
   :func:`gpu_hours`, and the inverse :func:`implied_utilization`.
4. **Money and energy.** :func:`dollars`, :func:`energy_kwh` (GPU power times
   hours times the data center's power usage effectiveness, PUE) and
   :func:`co2_kg` (kWh times the grid's carbon intensity).

:func:`estimate` runs the whole chain and returns a :class:`CostEstimate`.

Every number here is an estimate good to a few tens of percent: it ignores
evaluation, failed runs, hyper-parameter searches and the GPUs' idle time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from minillm.errors import ConfigError

# ---------------------------------------------------------------------------
# Input checks: a calculator should refuse nonsense loudly.
# ---------------------------------------------------------------------------


def _number(name: str, value: object) -> float:
    """``value`` as a finite float, or a TypeError/ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value}")
    return value


def _positive(name: str, value: object) -> float:
    value = _number(name, value)
    if value <= 0:
        raise ConfigError(f"{name} must be > 0, got {value:g}")
    return value


def _non_negative(name: str, value: object) -> float:
    value = _number(name, value)
    if value < 0:
        raise ConfigError(f"{name} must be >= 0, got {value:g}")
    return value


def _utilization(value: object) -> float:
    value = _number("utilization", value)
    if not 0 < value <= 1:
        raise ConfigError(
            f"utilization must be a fraction in (0, 1], got {value:g}; "
            "write 40% as 0.4 (well-tuned large runs reach about 0.3 to 0.6)"
        )
    return value


# ---------------------------------------------------------------------------
# 1. Compute
# ---------------------------------------------------------------------------


def flops_per_token(
    n_params: float, n_layer: int = 0, context: int = 0, d_model: int = 0
) -> float:
    """Training FLOPs for one token: ``6 N`` plus, optionally, attention's ``12 L T d``.

    ``n_params`` (``N``) counts the parameters that take part in a matrix product
    for every token: all weights of the blocks and the output head. (An embedding
    *lookup* costs no FLOPs; with GPT-2's tied embedding and head, counting every
    parameter once is close enough.) Each costs 2 FLOPs forward and 4 backward.

    The attention scores ``Q K^T`` and the weighted sum ``A V`` are matrix
    products between activations, not with parameters, so ``6 N`` misses them.
    Per layer and token, each costs ``2 T d`` FLOPs forward for a context of ``T``
    tokens and width ``d = d_model``; forward plus backward (times 3) over
    ``n_layer`` layers gives ``12 L T d``. This is the convention of Chowdhery et
    al. 2022 (PaLM, appendix B) used for MFU figures; it counts the full ``T x T``
    score matrix although a causal mask makes half of it zero. Kaplan et al. 2020
    (Table 1) count only ``Q K^T``, i.e. half of this term. Leave ``n_layer``,
    ``context`` and ``d_model`` at 0 for the plain ``6 N``.
    """
    n = _non_negative("n_params", n_params)
    layers = _non_negative("n_layer", n_layer)
    ctx = _non_negative("context", context)
    width = _non_negative("d_model", d_model)
    attention = (layers, ctx, width)
    if any(attention) and not all(attention):
        raise ConfigError(
            "to count attention FLOPs give all of n_layer, context and d_model "
            f"(got n_layer={n_layer}, context={context}, d_model={d_model}); "
            "leave all three at 0 for the plain 6*N estimate"
        )
    return 6.0 * n + 12.0 * layers * ctx * width


def training_flops(
    n_params: float, n_tokens: float, n_layer: int = 0, context: int = 0, d_model: int = 0
) -> float:
    """Total training FLOPs ``C = D * flops_per_token`` (``6 N D`` by default).

    Example: GPT-2 small (124M parameters) on 10B tokens needs about
    ``6 * 124e6 * 10e9 = 7.4e18`` FLOPs.
    """
    tokens = _non_negative("n_tokens", n_tokens)
    return tokens * flops_per_token(n_params, n_layer, context, d_model)


def petaflop_s_days(flops: float) -> float:
    """``flops`` in petaflop/s-days (1e15 FLOP/s for one day = 8.64e19 FLOPs).

    The unit of the GPT-3 paper (Brown et al. 2020, Table D.1): 175B parameters on
    300B tokens is about 3,640 petaflop/s-days.
    """
    return _non_negative("flops", flops) / (1e15 * 86_400)


# ---------------------------------------------------------------------------
# 2. Data: Chinchilla's tokens per parameter
# ---------------------------------------------------------------------------

#: Compute-optimal training tokens per parameter (Hoffmann et al. 2022).
CHINCHILLA_TOKENS_PER_PARAM = 20.0


def chinchilla_tokens(n_params: float, tokens_per_param: float = CHINCHILLA_TOKENS_PER_PARAM) -> float:
    """Compute-optimal number of training tokens for ``n_params`` parameters.

    Chinchilla itself: 70B parameters -> 1.4T tokens.
    """
    return _positive("n_params", n_params) * _positive("tokens_per_param", tokens_per_param)


def compute_optimal(
    flops: float, tokens_per_param: float = CHINCHILLA_TOKENS_PER_PARAM
) -> tuple[float, float]:
    """Model size ``N`` and token count ``D`` that spend ``flops`` compute-optimally.

    Solves ``C = 6 N D`` with ``D = r N`` (``r = tokens_per_param``):
    ``N = sqrt(C / (6 r))`` and ``D = r N``. Returns ``(N, D)``.
    """
    c = _positive("flops", flops)
    r = _positive("tokens_per_param", tokens_per_param)
    n = math.sqrt(c / (6.0 * r))
    return n, r * n


# ---------------------------------------------------------------------------
# 3. Time: device peaks and utilization
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Device:
    """One accelerator: dense peak FLOP/s per number format, power, and where they come from.

    ``peak`` maps a format (``"bf16"``, ``"fp16"``, ``"tf32"``, ``"fp32"``) to
    FLOP/s *without* structured sparsity (datasheets often print the sparse
    figure, twice as large, first). ``watts`` is the board's maximum power.
    """

    name: str
    peak: dict[str, float] = field(default_factory=dict)
    watts: float = 0.0
    source: str = ""


#: Dense peak throughput of common training GPUs, from NVIDIA's datasheets.
DEVICES: dict[str, Device] = {
    "T4": Device(
        "NVIDIA T4", {"fp16": 65e12, "fp32": 8.1e12}, 70, "NVIDIA T4 Tensor Core GPU datasheet"
    ),
    "V100": Device(
        "NVIDIA V100 SXM2",
        {"fp16": 125e12, "fp32": 15.7e12},
        300,
        "NVIDIA V100 Tensor Core GPU datasheet (SXM2)",
    ),
    "A100": Device(
        "NVIDIA A100 SXM 80GB",
        {"bf16": 312e12, "fp16": 312e12, "tf32": 156e12, "fp32": 19.5e12},
        400,
        "NVIDIA A100 Tensor Core GPU datasheet (SXM; dense, sparsity doubles tensor figures)",
    ),
    "H100": Device(
        "NVIDIA H100 SXM",
        {"bf16": 989e12, "fp16": 989e12, "tf32": 495e12, "fp32": 67e12},
        700,
        "NVIDIA H100 Tensor Core GPU datasheet (SXM5; 1,979 TFLOP/s bf16 is with sparsity)",
    ),
    "H200": Device(
        "NVIDIA H200 SXM",
        {"bf16": 989e12, "fp16": 989e12, "tf32": 495e12, "fp32": 67e12},
        700,
        "NVIDIA H200 Tensor Core GPU datasheet (SXM; same compute as H100, more memory)",
    ),
}


def peak_flops(device: str, dtype: str = "bf16") -> float:
    """Dense peak FLOP/s of ``device`` (a key of :data:`DEVICES`) in number format ``dtype``."""
    if device not in DEVICES:
        raise ConfigError(f"unknown device {device!r}; known devices: {', '.join(DEVICES)}")
    peaks = DEVICES[device].peak
    if dtype not in peaks:
        raise ConfigError(
            f"{device} has no {dtype!r} peak in the table; available: {', '.join(peaks)}"
        )
    return peaks[dtype]


def gpu_hours(flops: float, peak: float, utilization: float) -> float:
    """GPU-hours to do ``flops`` on GPUs with ``peak`` FLOP/s each at MFU ``utilization``.

    ``flops / (peak * utilization) / 3600``. Split over ``k`` GPUs, the wall-clock
    time is this divided by ``k`` (the GPU-hours stay the same).
    """
    c = _non_negative("flops", flops)
    return c / (_positive("peak", peak) * _utilization(utilization)) / 3600.0


def implied_utilization(n_params: float, n_tokens: float, hours: float, peak: float) -> float:
    """The MFU that a published run implies: ``6 N D / (hours * 3600 * peak)``.

    ``hours`` are total GPU-hours, ``peak`` the FLOP/s of one GPU. The result may
    exceed 1 when the inputs are inconsistent (too few hours for the FLOPs); it
    is returned as is so that the reader can see it.
    """
    flops = training_flops(n_params, n_tokens)
    return flops / (_positive("hours", hours) * 3600.0 * _positive("peak", peak))


# ---------------------------------------------------------------------------
# 4. Money and energy
# ---------------------------------------------------------------------------


def dollars(hours: float, price_per_gpu_hour: float) -> float:
    """Rental cost of ``hours`` GPU-hours at ``price_per_gpu_hour`` dollars each."""
    return _non_negative("hours", hours) * _non_negative("price_per_gpu_hour", price_per_gpu_hour)


def energy_kwh(hours: float, watts: float, pue: float = 1.0) -> float:
    """Energy in kWh: ``hours * watts / 1000 * pue``.

    ``watts`` is the power of one GPU (its maximum, for an upper estimate);
    ``pue`` (power usage effectiveness, >= 1) scales it up for cooling and the
    rest of the data center; about 1.1 to 1.2 for modern large data centers.
    """
    pue_value = _number("pue", pue)
    if pue_value < 1:
        raise ConfigError(f"pue must be >= 1 (facility power / IT power), got {pue_value:g}")
    return _non_negative("hours", hours) * _non_negative("watts", watts) / 1000.0 * pue_value


def co2_kg(kwh: float, kg_per_kwh: float) -> float:
    """Emissions in kg CO2-equivalent: energy times the grid's carbon intensity."""
    return _non_negative("kwh", kwh) * _non_negative("kg_per_kwh", kg_per_kwh)


# ---------------------------------------------------------------------------
# The whole chain in one call
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CostEstimate:
    """The result of :func:`estimate`: what one training run costs.

    ``co2_kg`` is ``None`` unless a grid carbon intensity was given.
    """

    flops: float
    gpu_hours: float
    wall_hours: float
    dollars: float
    kwh: float
    co2_kg: float | None = None

    def __str__(self) -> str:
        co2 = "" if self.co2_kg is None else f", {self.co2_kg / 1000:.3g} t CO2e"
        return (
            f"{self.flops:.3g} FLOPs, {self.gpu_hours:,.4g} GPU-hours "
            f"({self.wall_hours:,.4g} h wall-clock), ${self.dollars:,.4g}, "
            f"{self.kwh:,.4g} kWh{co2}"
        )


def estimate(
    n_params: float,
    n_tokens: float,
    device: str = "H100",
    dtype: str = "bf16",
    utilization: float = 0.4,
    n_gpus: int = 1,
    price_per_gpu_hour: float = 0.0,
    pue: float = 1.0,
    kg_co2_per_kwh: float | None = None,
) -> CostEstimate:
    """Estimate the cost of training ``n_params`` parameters on ``n_tokens`` tokens.

    Uses ``6 N D`` FLOPs, the dense peak of ``device`` in ``dtype`` from
    :data:`DEVICES`, the given MFU ``utilization``, ``n_gpus`` GPUs in parallel
    (perfect scaling), the board power of the device, and the ``pue``.
    ``dollars`` is 0 unless ``price_per_gpu_hour`` is given; ``co2_kg`` is
    ``None`` unless ``kg_co2_per_kwh`` is given.
    """
    if isinstance(n_gpus, bool) or not isinstance(n_gpus, int) or n_gpus < 1:
        raise ConfigError(f"n_gpus must be a positive integer, got {n_gpus!r}")
    flops = training_flops(n_params, n_tokens)
    hours = gpu_hours(flops, peak_flops(device, dtype), utilization)
    kwh = energy_kwh(hours, DEVICES[device].watts, pue)
    return CostEstimate(
        flops=flops,
        gpu_hours=hours,
        wall_hours=hours / n_gpus,
        dollars=dollars(hours, price_per_gpu_hour),
        kwh=kwh,
        co2_kg=None if kg_co2_per_kwh is None else co2_kg(kwh, kg_co2_per_kwh),
    )
