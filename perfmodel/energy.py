"""Energy: power from component utilizations; joules per token and tokens per joule.

    step_power(hw, params, step) -> watts per GPU (board + host share)
    energy_per_token(hw, params, step, tokens, gpus) -> Energy
    disaggregated_energy(prefill_hw, decode_hw, prefill_params, decode_params, prefill_step,
                         decode_step, serving, prefill_lay, decode_lay, osl) -> Energy

Power model (per GPU, full-system boundary as MLPerf Power measures it):

    P = P_idle + (P_peak − P_idle) · Σ_c w_c · u_c + P_host,   c ∈ {compute, memory, link}
    u_compute = Σ flops/peak / period,  u_memory = Σ bytes/HBM_bw / period,  u_link = Σ traffic/link_bw / period

with weights w_c from the efficiency pytree (`power_weight`, calibratable). Energy per period is
P · GPUs · period; J/token divides by the tokens the period produces.

References:
  MLPerf Power, arXiv 2410.12032 §3–4 (system boundary, tokens/J); NVIDIA/AMD datasheets (TDP).
"""

from __future__ import annotations

from typing import NamedTuple

import jax

from .serving import Serving, replica_gpus
from .specs import HardwareSpec
from .step import LayoutArrays, StepCost


class Energy(NamedTuple):
    """power_w: average power per GPU (host share included); joules_per_token; tokens_per_joule."""

    power_w: jax.Array
    joules_per_token: jax.Array
    tokens_per_joule: jax.Array


def step_power(hw: HardwareSpec, params, step: StepCost):
    """Average power per GPU over one period of `step`, watts.

    Args:
      hw: hardware (idle, peak and host power).
      params: `EfficiencyParams`; kept for symmetry: the step applied its power weights already
        (`StepCost.weighted_busy_s`), so the step and the energy must use the same parameters.
      step: a `StepCost` (busy times and period).

    Returns:
      watts per GPU.
    """
    del params  # the power weights were applied by the step (StepCost.weighted_busy_s)
    u = step.weighted_busy_s * (1.0 / step.period_s)  # the reciprocal serving.py shares (its docstring)
    return hw.idle_power_w + (hw.peak_power_w - hw.idle_power_w) * u + hw.host_power_w


def energy_per_token(hw: HardwareSpec, params, step: StepCost, tokens, gpus) -> Energy:
    """Energy of `tokens` produced per period of `step` on `gpus` GPUs.

    Args:
      tokens: output tokens per period (decode: the batch; co-located: the decode batch).
      gpus: GPUs running the step.

    Returns:
      `Energy`.
    """
    p = step_power(hw, params, step)
    j = p * gpus / (tokens * (1.0 / step.period_s))
    return Energy(p, j, 1.0 / j)


def disaggregated_energy(prefill_hw: HardwareSpec, decode_hw: HardwareSpec, prefill_params, decode_params,
                         prefill_step: StepCost, decode_step: StepCost, serving: Serving,
                         prefill_lay: LayoutArrays, decode_lay: LayoutArrays) -> Energy:
    """Energy per output token of a rate-matched (or fixed-α) disaggregated system.

    Per decode GPU there are α prefill GPUs; both pools draw their step power; output tokens per
    second per decode GPU are tokens_per_s_per_gpu · (1 + α).

    Returns:
      `Energy` (power_w averaged over all GPUs of the system).
    """
    p_p = step_power(prefill_hw, prefill_params, prefill_step)
    p_d = step_power(decode_hw, decode_params, decode_step)
    a = serving.alpha
    power_per_gpu = (p_d + a * p_p) / (1.0 + a)
    j = power_per_gpu / serving.tokens_per_s_per_gpu
    return Energy(power_per_gpu, j, 1.0 / j)


__all__ = ["Energy", "disaggregated_energy", "energy_per_token", "replica_gpus", "step_power"]
