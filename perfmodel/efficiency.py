"""The learnable parameters of the cost model: a small pytree of unconstrained reals.

`EfficiencyParams` is what optax updates: every field is an unconstrained float32 array, and
`constrain` maps it to physical values (`Efficiency`), so any real vector is a valid model:

    compute_eff[c]        = sigmoid(compute_logit[c])        ∈ (0, 1)   peak-FLOP/s fraction
    compute_half_flops[c] = exp(compute_half_log[c])         > 0        FLOPs at half efficiency
    memory_eff[c]         = sigmoid(memory_logit[c])         ∈ (0, 1)   HBM-bandwidth fraction
    memory_half_bytes[c]  = exp(memory_half_log[c])          > 0        bytes at half efficiency
    cache_bytes[c]        = exp(cache_log[c])                > 0        working set of the cache knee
    cache_ratio[c]        = sigmoid(cache_logit[c])          ∈ (0, 1)   cache-resident / DRAM time per byte
    cache_sharpness[c]    = exp(cache_sharpness_log[c])      > 0        how abruptly the cache knee falls
    overhead_s[c]         = exp(overhead_log[c])             > 0        launch overhead per op
    link_alpha_s[l]       = exp(link_alpha_log[l])           > 0        latency per collective step
    link_eff[l]           = sigmoid(link_logit[l])           ∈ (0, 1)   link-bandwidth fraction
    power_weight[p]       = sigmoid(power_logit[p])          ∈ (0, 1)   share of (peak − idle) power

indexed by op class c ∈ `OP_CLASSES`, link level l ∈ `LINK_LEVELS` (die-to-die, scale-up,
scale-out) and power component p ∈ `POWER_COMPONENTS`. Scale-like values live in log space so a
fit moves them by ratios.

The efficiency curves over size s (FLOPs or bytes) are eff(s) = eff_max · s / (s + s_half), so an
op's compute time is s / (peak · eff(s)) = (s + s_half) / (peak · eff_max): a fixed cost plus a
linear one, the α–β form of a kernel (ops.py). A last-level cache makes the memory time per byte
fall for small working sets instead: the memory time is multiplied by

    1 − (1 − cache_ratio) · k^p / (bytes^p + k^p),    k = cache_bytes, p = cache_sharpness,

cache_ratio for working sets well inside the cache, 1 well beyond it; p = 1 is a gentle knee, a
large p a step at k (a cyclic sweep over an LRU cache hits every time below its capacity and never
above). Measured on this CPU: decode attention over a 4 MB cache streams 1.3× faster per byte than
over 67 MB, and fake_quantize of 4 MiB takes 1/4.2-1/5.3 of the time of 4× the elements; in one
quick measurement of it, the held-out MAPE of kernels > 1 ms fell from 10.8% to 8.8% (random split)
and from 14.2% to 10.6% (extrapolation split) with the p = 1 term. Past the last level the step is
sharp: float32 x * y and copies stream at 26-29 GB/s up to a 101 MB working set and at 17-24 GB/s
from 134 MB on, and float32 decode attention takes 2.8× the time for 2× the cache between the same
sizes; with a fitted p (6-30 here) the extrapolation-split MAPE of quick runs fell from 10.5-11.3%
to 7.9-9.6%. On a GPU the fit finds the L2's share the same way.

`datasheet_params(hw)` is the uncalibrated roofline prior: efficiencies 1 − 1e-4, half sizes of
one FLOP / one byte, no cache effect (cache_ratio 1 − 1e-4, sharpness 1), 1 ns launch overhead, the
preset's link latencies, and power weights of a compute-dominated GPU. `params_to_dict` /
`params_from_dict` round-trip through JSON.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .specs import HardwareSpec

# quantize: casting a tensor to a block format (numerics.fake_quantize; a block max, a scale and a
# rounding per element), priced apart from plain elementwise ops: on this CPU it runs 1.2-10× the
# time of a copy of the same bytes, and its cost curve over size is its own.
OP_CLASSES = ("gemm", "grouped_gemm", "prefill_attention", "decode_attention", "elementwise", "quantize")
LINK_LEVELS = ("die-to-die", "scale-up", "scale-out")
POWER_COMPONENTS = ("compute", "memory", "link")

GEMM, GROUPED_GEMM, PREFILL_ATTENTION, DECODE_ATTENTION, ELEMENTWISE, QUANTIZE = range(len(OP_CLASSES))

_FIELD_SIZES = {
    "compute_logit": len(OP_CLASSES), "compute_half_log": len(OP_CLASSES),
    "memory_logit": len(OP_CLASSES), "memory_half_log": len(OP_CLASSES),
    "cache_log": len(OP_CLASSES), "cache_logit": len(OP_CLASSES), "cache_sharpness_log": len(OP_CLASSES),
    "overhead_log": len(OP_CLASSES),
    "link_alpha_log": len(LINK_LEVELS), "link_logit": len(LINK_LEVELS),
    "power_logit": len(POWER_COMPONENTS),
}


class EfficiencyParams(NamedTuple):
    """Unconstrained parameters (what a fitter updates); see the module docstring for the map.

    Shapes: the first eight fields [6] (one per op class), link fields [3], power_logit [3].
    """

    compute_logit: jax.Array
    compute_half_log: jax.Array
    memory_logit: jax.Array
    memory_half_log: jax.Array
    cache_log: jax.Array
    cache_logit: jax.Array
    cache_sharpness_log: jax.Array
    overhead_log: jax.Array
    link_alpha_log: jax.Array
    link_logit: jax.Array
    power_logit: jax.Array


class Efficiency(NamedTuple):
    """Physical values of `EfficiencyParams` (units in the field names)."""

    compute_eff: jax.Array
    compute_half_flops: jax.Array
    memory_eff: jax.Array
    memory_half_bytes: jax.Array
    cache_bytes: jax.Array
    cache_ratio: jax.Array
    cache_sharpness: jax.Array
    overhead_s: jax.Array
    link_alpha_s: jax.Array
    link_eff: jax.Array
    power_weight: jax.Array


def constrain(params: EfficiencyParams) -> Efficiency:
    """Map unconstrained parameters to physical values (sigmoid for fractions, exp for scales).

    Args:
      params: an `EfficiencyParams` of float arrays.

    Returns:
      the `Efficiency` with the same shapes.
    """
    sig, exp = jax.nn.sigmoid, jnp.exp
    return Efficiency(
        compute_eff=sig(params.compute_logit), compute_half_flops=exp(params.compute_half_log),
        memory_eff=sig(params.memory_logit), memory_half_bytes=exp(params.memory_half_log),
        cache_bytes=exp(params.cache_log), cache_ratio=sig(params.cache_logit),
        cache_sharpness=exp(params.cache_sharpness_log), overhead_s=exp(params.overhead_log),
        link_alpha_s=exp(params.link_alpha_log), link_eff=sig(params.link_logit), power_weight=sig(params.power_logit),
    )


def _logit(p):
    p = np.asarray(p, np.float64)
    return np.log(p) - np.log1p(-p)


def unconstrain(eff: Efficiency) -> EfficiencyParams:
    """Inverse of `constrain`: physical values to unconstrained parameters.

    Raises:
      ValueError: a fraction outside (0, 1) or a scale that is not positive, naming the field.
    """
    out = {}
    for name, value in eff._asdict().items():
        v = np.asarray(value, np.float64)
        if name in ("compute_eff", "memory_eff", "cache_ratio", "link_eff", "power_weight"):
            if not np.all((v > 0) & (v < 1)):
                raise ValueError(f"Efficiency.{name}={v.tolist()} must lie in (0, 1)")
        elif not np.all(v > 0) or not np.all(np.isfinite(v)):
            raise ValueError(f"Efficiency.{name}={v.tolist()} must be positive and finite")
    e = {k: np.asarray(v, np.float64) for k, v in eff._asdict().items()}
    out = EfficiencyParams(
        compute_logit=_logit(e["compute_eff"]), compute_half_log=np.log(e["compute_half_flops"]),
        memory_logit=_logit(e["memory_eff"]), memory_half_log=np.log(e["memory_half_bytes"]),
        cache_log=np.log(e["cache_bytes"]), cache_logit=_logit(e["cache_ratio"]),
        cache_sharpness_log=np.log(e["cache_sharpness"]), overhead_log=np.log(e["overhead_s"]),
        link_alpha_log=np.log(e["link_alpha_s"]), link_logit=_logit(e["link_eff"]),
        power_logit=_logit(e["power_weight"]),
    )
    return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), out)


# source: prior, not a datasheet figure. Memory-bound decode draws ~70% of TDP on an H200
# (public vLLM power benchmark: 517 W at batch 128 of a 700 W part, idle 80 W), so memory gets a
# large share; tensor cores the rest; links little. Calibrate against measured power.
_POWER_WEIGHTS = (0.55, 0.40, 0.05)


def datasheet_params(hw: HardwareSpec, *, efficiency: float = 1.0 - 1e-4, overhead_s: float = 1e-9,
                     cache_ratio: float = 1.0 - 1e-4) -> EfficiencyParams:
    """The uncalibrated roofline prior for `hw`: the datasheet peaks, no fixed costs.

    Args:
      hw: the hardware; its link latencies become α.
      efficiency: compute, memory and link efficiency (≈ 1: the roofline itself).
      overhead_s: launch overhead per op (≈ 0).
      cache_ratio: cache-resident over DRAM time per byte (≈ 1: no cache effect), knee at 1 MiB
        with sharpness 1.

    Returns:
      `EfficiencyParams` (float32).

    Raises:
      ValueError: efficiency or cache_ratio outside (0, 1), or overhead_s ≤ 0.

    References:
      Williams et al., Roofline, CACM 2009.
    """
    if not 0.0 < efficiency < 1.0:
        raise ValueError(f"efficiency={efficiency} must lie in (0, 1)")
    if not overhead_s > 0:
        raise ValueError(f"overhead_s={overhead_s} must be positive")
    if not 0.0 < cache_ratio < 1.0:
        raise ValueError(f"cache_ratio={cache_ratio} must lie in (0, 1)")
    n, n_l = len(OP_CLASSES), len(LINK_LEVELS)
    alpha = [max(level.latency_s, 1e-12) for level in hw.links]
    return unconstrain(Efficiency(
        compute_eff=np.full(n, efficiency), compute_half_flops=np.ones(n),
        memory_eff=np.full(n, efficiency), memory_half_bytes=np.ones(n),
        cache_bytes=np.full(n, float(1 << 20)), cache_ratio=np.full(n, cache_ratio), cache_sharpness=np.ones(n),
        overhead_s=np.full(n, overhead_s), link_alpha_s=np.asarray(alpha),
        link_eff=np.full(n_l, efficiency), power_weight=np.asarray(_POWER_WEIGHTS),
    ))


def params_to_dict(params: EfficiencyParams) -> dict:
    """JSON-ready dict: {"unconstrained": {field: [floats]}, "physical": {...}, "names": ...}."""
    phys = constrain(params)
    return {
        "op_classes": list(OP_CLASSES), "link_levels": list(LINK_LEVELS),
        "power_components": list(POWER_COMPONENTS),
        "unconstrained": {k: np.asarray(v, np.float64).tolist() for k, v in params._asdict().items()},
        "physical": {k: np.asarray(v, np.float64).tolist() for k, v in phys._asdict().items()},
    }


def params_from_dict(d: dict) -> EfficiencyParams:
    """Inverse of `params_to_dict` (reads the "unconstrained" block). A profile without
    `cache_sharpness_log` (written before the field existed) gets sharpness 1, its knee's form.

    Raises:
      ValueError: a missing or unknown field, a wrong length, or a non-finite value, named.
    """
    if not isinstance(d, dict) or not isinstance(d.get("unconstrained"), dict):
        raise ValueError("efficiency params: expected a dict with an 'unconstrained' mapping")
    raw = d["unconstrained"]
    unknown = sorted(set(raw) - set(_FIELD_SIZES))
    if unknown:
        raise ValueError(f"efficiency params: unknown fields {unknown}")
    out = {}
    raw = {"cache_sharpness_log": [0.0] * len(OP_CLASSES), **raw}  # older profiles: the p = 1 knee
    for name, size in _FIELD_SIZES.items():
        if name not in raw:
            raise ValueError(f"efficiency params: missing field {name!r}")
        v = np.asarray(raw[name], np.float64)
        if v.shape != (size,):
            raise ValueError(f"efficiency params: {name} has shape {v.shape}, expected ({size},)")
        if not np.all(np.isfinite(v)):
            raise ValueError(f"efficiency params: {name}={v.tolist()} has a non-finite value")
        out[name] = jnp.asarray(v, jnp.float32)
    return EfficiencyParams(**out)


def efficiency_at(eff_max, half, size):
    """eff(size) = eff_max · size / (size + half): the efficiency curve over op size."""
    return eff_max * size / (size + half)
