"""Cost of one op: GEMM, grouped (MoE) GEMM, attention, elementwise, collectives.

Every function is pure `jnp`, takes sizes as scalars or arrays (so it `vmap`s and relaxes to real
degrees) and is differentiable in both the sizes and the efficiency parameters. This is the API
the calibration fits against measured kernels:

    gemm_time(params, hw, m, n, k, bytes_per_elem, *, weight_bytes_per_elem=None,
              out_bytes_per_elem=None) -> seconds                    [m, k] @ [k, n]
    grouped_gemm_time(params, hw, tokens, n, k, groups, bytes_per_elem, *,
                      weight_bytes_per_elem=None) -> seconds         MoE experts: `groups` weights
    decode_attention_time(params, hw, batch, seq_len, n_heads, n_kv_heads, qk_dim, v_dim,
                          kv_bytes_per_elem, *, latent=False, act_bytes_per_elem=None) -> seconds
    prefill_attention_time(params, hw, seqs, q_len, kv_len, n_heads, n_kv_heads, qk_dim, v_dim,
                           bytes_per_elem, *, kv_bytes_per_elem=None, latent=False,
                           causal=True) -> seconds
    elementwise_time(params, hw, bytes, flops=0.0) -> seconds        norms, activations, copies
    collective_time(params, hw, kind, bytes, n_devices, level=None) -> seconds

`params` is an `EfficiencyParams` (or an already constrained `Efficiency`); `hw` a `HardwareSpec`.
Bytes per element may be fractional (MXFP4: 4.25 / 8). The matching `*_cost` functions return
(flops, bytes) without timing.

Time model (roofline with calibrated efficiencies; Williams et al. 2009):

    t_compute = (flops + s_half) / (peak(bits) · eff_c)     (eff(s) = eff_c · s / (s + s_half))
    t_memory  = (bytes + b_half) / (hbm_bw · eff_m)
    t         = smooth_max(t_compute, t_memory) + overhead
    smooth_max(a, b) ≈ (a^8 + b^8)^(1/8)    (≤ 9% above max at a = b, < 1e-4 off at a ≥ 3·b;
                                            a C¹ polynomial form, relative error ≤ 2e-6)

The peak is chosen by the compute precision max(bits of the operands) (`HardwareSpec.peak_flops`).
Collectives (α–β per link level; ring bandwidth term, switch/tree latency term):

    t = α_l · steps(kind, n) + traffic(kind, bytes, n) / (bw_l · eff_l)
    all_reduce: steps 2·log2 n, traffic 2(n−1)/n · bytes       (bytes = the reduced buffer)
    all_gather: log2 n, (n−1)/n · bytes                        (bytes = the gathered output)
    reduce_scatter: log2 n, (n−1)/n · bytes                    (bytes = the input)
    all_to_all: log2 n, (n−1)/n · bytes                        (bytes = the send buffer)
    send_recv: 1, bytes                                        (bytes = the message)

`bytes` follows nccl-tests' "size" (per-rank buffer). A collective over one device costs 0. The
level l is the innermost `hw.links` level whose size holds n devices, unless given.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from .efficiency import (
    DECODE_ATTENTION, ELEMENTWISE, GEMM, GROUPED_GEMM, OP_CLASSES, PREFILL_ATTENTION, QUANTIZE,
    Efficiency, EfficiencyParams, constrain,
)
from .specs import HardwareSpec

COLLECTIVES = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "send_recv")
_TINY = 1e-30


def as_efficiency(params: EfficiencyParams | Efficiency) -> Efficiency:
    """Constrain `params` unless it already is an `Efficiency`."""
    if isinstance(params, Efficiency):
        return params
    if isinstance(params, EfficiencyParams):
        return constrain(params)
    raise ValueError(f"params must be EfficiencyParams or Efficiency, got {type(params).__name__}")


# h(y) ≈ (1 + y)^(1/8) on [0, 1]: degree-5 minimax fit (max error 1.6e-6) constrained to
# h(0) = 1, h(1) = 2^(1/8), h'(1) = 2^(1/8)/16, so the smooth max below is C¹ at ties and exact when
# one time dominates. Five FMAs instead of three square roots: this is the model's hot loop.
_H = (0.12492981224887743, -0.053671422442987414, 0.029184675186096614, -0.01269240200403085,
      0.0027570696773019134)


def smooth_max(a, b):
    """Scale-free smooth maximum ≈ (a^8 + b^8)^(1/8) of non-negative times (relative error ≤ 2e-6).

    hi · h((lo/hi)^8) with h a polynomial fit of (1 + y)^(1/8) that keeps h(0) = 1 (exact roofline
    when one term dominates), the tie value 2^(1/8), and the tie slope that makes the function C¹.
    Normalizing by hi avoids float32 under/overflow of the 8th powers.
    """
    hi, lo = jnp.maximum(a, b), jnp.minimum(a, b)
    r = lo / jnp.maximum(hi, _TINY)
    r2 = r * r
    r4 = r2 * r2
    y = r4 * r4
    h = _H[4]
    for c in _H[3::-1]:
        h = h * y + c
    return hi + hi * (h * y)


def roofline_time(eff: Efficiency, op_class: int, flops, bytes_, inv_peak_flops, inv_hbm_bytes_per_s):
    """`op_time` with reciprocal rates (s/FLOP, s/byte) for the hot loops: one log and one sigmoid
    (the cache knee of `efficiency`) besides the division in `smooth_max`."""
    t_c = (flops + eff.compute_half_flops[op_class]) * (inv_peak_flops * (1.0 / eff.compute_eff[op_class]))
    t_m = (bytes_ + eff.memory_half_bytes[op_class]) * (inv_hbm_bytes_per_s * (1.0 / eff.memory_eff[op_class]))
    # the cache knee (efficiency.py): 1 − (1 − ratio)·k^p / (bytes^p + k^p), as a sigmoid in log bytes
    # (bytes under one byte count as one: log 0 would make the gradient in p NaN)
    inside = jax.nn.sigmoid(eff.cache_sharpness[op_class]
                            * (jnp.log(eff.cache_bytes[op_class]) - jnp.log(jnp.maximum(bytes_, 1.0))))
    t_m = t_m - t_m * (1.0 - eff.cache_ratio[op_class]) * inside
    return smooth_max(t_c, t_m) + eff.overhead_s[op_class]


def op_time(eff: Efficiency, op_class: int, flops, bytes_, peak_flops_per_s, hbm_bytes_per_s):
    """Roofline time of one op of class `op_class` (index into `OP_CLASSES`), seconds."""
    return roofline_time(eff, op_class, flops, bytes_, 1.0 / peak_flops_per_s, 1.0 / hbm_bytes_per_s)


def _bits(*bytes_per_elem):
    return 8.0 * jnp.maximum(*bytes_per_elem) if len(bytes_per_elem) > 1 else 8.0 * bytes_per_elem[0]


# ---------------------------------------------------------------------------------------------- GEMM

def gemm_cost(m, n, k, bytes_per_elem, weight_bytes_per_elem=None, out_bytes_per_elem=None):
    """FLOPs 2·m·n·k and HBM bytes m·k·a + k·n·w + m·n·o of [m, k] @ [k, n] → [m, n]."""
    w = bytes_per_elem if weight_bytes_per_elem is None else weight_bytes_per_elem
    o = bytes_per_elem if out_bytes_per_elem is None else out_bytes_per_elem
    return 2.0 * m * n * k, m * k * bytes_per_elem + k * n * w + m * n * o


def gemm_time(params, hw: HardwareSpec, m, n, k, bytes_per_elem, *, weight_bytes_per_elem=None,
              out_bytes_per_elem=None):
    """Time of a GEMM [m, k] @ [k, n].

    Args:
      params: `EfficiencyParams` (or `Efficiency`).
      hw: hardware.
      m, n, k: sizes (scalars or arrays, real-valued allowed).
      bytes_per_elem: activation bytes per element (e.g. 2 for bf16, 4.25/8 for MXFP4).
      weight_bytes_per_elem: the [k, n] operand's bytes per element (default: bytes_per_elem).
      out_bytes_per_elem: the output's (default: bytes_per_elem).

    Returns:
      seconds, broadcast over the inputs. The peak is that of 8·max(activation, weight bytes) bits.
    """
    eff = as_efficiency(params)
    w = bytes_per_elem if weight_bytes_per_elem is None else weight_bytes_per_elem
    flops, nbytes = gemm_cost(m, n, k, bytes_per_elem, w, out_bytes_per_elem)
    return op_time(eff, GEMM, flops, nbytes, hw.peak_flops(_bits(bytes_per_elem, w)),
                   hw.hbm_bandwidth_bytes_per_s)


def grouped_gemm_cost(tokens, n, k, groups, bytes_per_elem, weight_bytes_per_elem=None):
    """FLOPs 2·tokens·n·k; bytes groups·k·n·w + tokens·(k + n)·a (each group's weights read once)."""
    w = bytes_per_elem if weight_bytes_per_elem is None else weight_bytes_per_elem
    return 2.0 * tokens * n * k, groups * k * n * w + tokens * (k + n) * bytes_per_elem


def grouped_gemm_time(params, hw: HardwareSpec, tokens, n, k, groups, bytes_per_elem, *,
                      weight_bytes_per_elem=None):
    """Time of a grouped GEMM: `tokens` rows in total spread over `groups` [k, n] weight matrices.

    Args:
      tokens: rows over all groups (MoE: tokens × top-k routed to the local experts).
      n, k: per-group weight shape [k, n].
      groups: weight matrices actually read (MoE: experts that received a token; real-valued).
      bytes_per_elem, weight_bytes_per_elem: as in `gemm_time`.

    Returns:
      seconds.
    """
    eff = as_efficiency(params)
    w = bytes_per_elem if weight_bytes_per_elem is None else weight_bytes_per_elem
    flops, nbytes = grouped_gemm_cost(tokens, n, k, groups, bytes_per_elem, w)
    return op_time(eff, GROUPED_GEMM, flops, nbytes, hw.peak_flops(_bits(bytes_per_elem, w)),
                   hw.hbm_bandwidth_bytes_per_s)


# ----------------------------------------------------------------------------------------- attention

def kv_elems_per_token(n_kv_heads, qk_dim, v_dim, latent=False):
    """KV-cache elements per token: K·(qk + v), or K·qk when V is part of a shared latent (MLA)."""
    return n_kv_heads * qk_dim if latent else n_kv_heads * (qk_dim + v_dim)


def decode_attention_cost(batch, seq_len, n_heads, n_kv_heads, qk_dim, v_dim, kv_bytes_per_elem,
                          *, latent=False, act_bytes_per_elem=None):
    """FLOPs 2·B·Q·S·(qk + v); bytes B·S·kv_elems·kv_bytes + B·Q·(qk + v)·act_bytes."""
    a = kv_bytes_per_elem if act_bytes_per_elem is None else act_bytes_per_elem
    flops = 2.0 * batch * n_heads * seq_len * (qk_dim + v_dim)
    nbytes = (batch * seq_len * kv_elems_per_token(n_kv_heads, qk_dim, v_dim, latent) * kv_bytes_per_elem
              + batch * n_heads * (qk_dim + v_dim) * a)
    return flops, nbytes


def decode_attention_time(params, hw: HardwareSpec, batch, seq_len, n_heads, n_kv_heads, qk_dim,
                          v_dim, kv_bytes_per_elem, *, latent=False, act_bytes_per_elem=None):
    """Time of decode attention: one query token per sequence against a KV cache of seq_len.

    Args:
      batch: sequences B.
      seq_len: cached tokens S (per device under KVP: S / KVP).
      n_heads: query heads Q on the device; n_kv_heads: KV heads K on the device.
      qk_dim, v_dim: per-head dims (MLA absorbed: kv_lora_rank + rope_dim, kv_lora_rank).
      kv_bytes_per_elem: KV-cache bytes per element.
      latent: K and V share one cached latent of qk_dim elements per KV head (MLA).
      act_bytes_per_elem: query/output bytes per element (default: kv_bytes_per_elem).

    Returns:
      seconds.

    References:
      Helix, arXiv 2507.07120, Appendix A (KV read = B·2·⌈K/TPA⌉·Hsz·S/KVP·bytes / MemBW).
    """
    eff = as_efficiency(params)
    a = kv_bytes_per_elem if act_bytes_per_elem is None else act_bytes_per_elem
    flops, nbytes = decode_attention_cost(batch, seq_len, n_heads, n_kv_heads, qk_dim, v_dim,
                                          kv_bytes_per_elem, latent=latent, act_bytes_per_elem=a)
    return op_time(eff, DECODE_ATTENTION, flops, nbytes, hw.peak_flops(_bits(kv_bytes_per_elem, a)),
                   hw.hbm_bandwidth_bytes_per_s)


def causal_pairs(q_len, kv_len):
    """Query–key pairs of the last q_len queries over kv_len keys, causal: q·(kv − q) + q(q + 1)/2."""
    return q_len * (kv_len - q_len) + 0.5 * q_len * (q_len + 1.0)


def prefill_attention_cost(seqs, q_len, kv_len, n_heads, n_kv_heads, qk_dim, v_dim, bytes_per_elem,
                           *, kv_bytes_per_elem=None, latent=False, causal=True, pairs=None):
    """Flash attention: FLOPs 2·seqs·Q·pairs·(qk + v); bytes: Q and O once, the KV once.

    `pairs` (per sequence and head) overrides the causal / full count when given.
    """
    kv_b = bytes_per_elem if kv_bytes_per_elem is None else kv_bytes_per_elem
    if pairs is None:
        pairs = causal_pairs(q_len, kv_len) if causal else q_len * kv_len
    flops = 2.0 * seqs * n_heads * pairs * (qk_dim + v_dim)
    nbytes = seqs * (q_len * n_heads * (qk_dim + v_dim) * bytes_per_elem
                     + kv_len * kv_elems_per_token(n_kv_heads, qk_dim, v_dim, latent) * kv_b)
    return flops, nbytes


def prefill_attention_time(params, hw: HardwareSpec, seqs, q_len, kv_len, n_heads, n_kv_heads,
                           qk_dim, v_dim, bytes_per_elem, *, kv_bytes_per_elem=None, latent=False,
                           causal=True):
    """Time of prefill (flash) attention: q_len new tokens per sequence over kv_len keys.

    Args:
      seqs: sequences; q_len: new tokens each; kv_len: keys each (≥ q_len; the new ones last).
      n_heads, n_kv_heads, qk_dim, v_dim, latent: as in `decode_attention_time`.
      bytes_per_elem: Q/O bytes per element; kv_bytes_per_elem: the cache's (default: the same).
      causal: count only the causal pairs q·(kv − q) + q(q + 1)/2 (flash skips masked tiles).

    Returns:
      seconds.

    References:
      Dao et al., FlashAttention-2, arXiv 2307.08691 §3 (FLOPs 4·seq²·d·heads, halved when causal).
    """
    eff = as_efficiency(params)
    kv_b = bytes_per_elem if kv_bytes_per_elem is None else kv_bytes_per_elem
    flops, nbytes = prefill_attention_cost(seqs, q_len, kv_len, n_heads, n_kv_heads, qk_dim, v_dim,
                                           bytes_per_elem, kv_bytes_per_elem=kv_b, latent=latent,
                                           causal=causal)
    return op_time(eff, PREFILL_ATTENTION, flops, nbytes, hw.peak_flops(_bits(bytes_per_elem, kv_b)),
                   hw.hbm_bandwidth_bytes_per_s)


def elementwise_time(params, hw: HardwareSpec, bytes, flops=0.0):
    """Time of a memory-bound elementwise op (norm, activation, residual add, copy).

    Args:
      bytes: HBM bytes read plus written.
      flops: arithmetic, at the FP32 rate of `hw`.

    Returns:
      seconds.
    """
    eff = as_efficiency(params)
    return op_time(eff, ELEMENTWISE, flops, bytes, hw.flops_fp32, hw.hbm_bandwidth_bytes_per_s)


def quantize_time(params, hw: HardwareSpec, bytes, flops):
    """Time of casting a tensor to a block format (`numerics.fake_quantize`): its own op class.

    Args:
      params: `EfficiencyParams` (or `Efficiency`); the `quantize` class prices it.
      hw: hardware.
      bytes: HBM bytes read plus written (scalar or array).
      flops: arithmetic (block max, scale, rounding), at the FP32 rate of `hw` (same shape).

    Returns:
      seconds, broadcast over bytes and flops.

    References:
      OCP Microscaling Formats (MX) v1.0, §6.3 (the conversion this costs).
    """
    eff = as_efficiency(params)
    return op_time(eff, QUANTIZE, flops, bytes, hw.flops_fp32, hw.hbm_bandwidth_bytes_per_s)


# --------------------------------------------------------------------------------------- collectives

class Group(NamedTuple):
    """What a collective needs to know about its device group (computed once per group size).

    log_n: log2 n; frac: (n − 1)/n; pair: min(n − 1, 1) clipped at 0 (send/recv happens at all);
    alpha_s: α of the group's link level; inv_bw: 1 / (bandwidth · efficiency) of that level;
    inv_bw_peak: 1 / bandwidth (for utilization).
    """

    log_n: jax.Array
    frac: jax.Array
    pair: jax.Array
    alpha_s: jax.Array
    inv_bw: jax.Array
    inv_bw_peak: jax.Array


def _level_masks(hw: HardwareSpec, n_devices):
    """(n fits the die-to-die domain, n fits the scale-up domain)."""
    return n_devices <= hw.links[0].size, n_devices <= hw.links[1].size


def link_level(hw: HardwareSpec, n_devices):
    """Index of the innermost link level whose domain holds n devices (0 die, 1 scale-up, 2 out)."""
    inner, middle = _level_masks(hw, n_devices)
    return jnp.where(inner, 0, jnp.where(middle, 1, 2))


def group(eff: Efficiency, hw: HardwareSpec, n_devices, level=None) -> Group:
    """The `Group` of n devices (real-valued n allowed; n ≤ 1 makes every collective free)."""
    n = jnp.maximum(n_devices, 1.0)
    if level is None:
        inner, middle = _level_masks(hw, n_devices)
    else:
        inner, middle = jnp.asarray(level) == 0, jnp.asarray(level) == 1

    def pick(values):  # values[level] as selects (a gather per design point is slow on CPU)
        return jnp.where(inner, values[0], jnp.where(middle, values[1], values[2]))

    bw = [l.bandwidth_bytes_per_s for l in hw.links]
    return Group(
        log_n=jnp.log2(n), frac=1.0 - 1.0 / n, pair=jnp.clip(n_devices - 1.0, 0.0, 1.0),
        alpha_s=pick(eff.link_alpha_s), inv_bw=pick([1.0 / (bw[i] * eff.link_eff[i]) for i in range(3)]),
        inv_bw_peak=pick([1.0 / b for b in bw]),
    )


def _check_kind(kind: str) -> None:
    if kind not in COLLECTIVES:
        raise ValueError(f"kind={kind!r} is not a collective; valid: {COLLECTIVES}")


def group_steps(kind: str, g: Group):
    """Latency steps: all_reduce 2·log2 n; all_gather, reduce_scatter, all_to_all log2 n; send_recv 1."""
    _check_kind(kind)
    return 2.0 * g.log_n if kind == "all_reduce" else g.pair if kind == "send_recv" else g.log_n


def group_traffic(kind: str, bytes, g: Group):
    """Bytes a device sends: all_reduce 2(n−1)/n·b; all_gather, reduce_scatter, all_to_all (n−1)/n·b;
    send_recv b."""
    _check_kind(kind)
    if kind == "all_reduce":
        return 2.0 * g.frac * bytes
    return g.pair * bytes if kind == "send_recv" else g.frac * bytes


def group_time(kind: str, bytes, g: Group):
    """α·steps + traffic / (bandwidth · efficiency) of a collective on group `g`."""
    return g.alpha_s * group_steps(kind, g) + group_traffic(kind, bytes, g) * g.inv_bw


def collective_steps(kind: str, n_devices):
    """Latency steps of a collective over n devices (0 for n ≤ 1)."""
    _check_kind(kind)
    log_n = jnp.log2(jnp.maximum(n_devices, 1.0))
    return 2.0 * log_n if kind == "all_reduce" else jnp.clip(n_devices - 1.0, 0.0, 1.0) if kind == "send_recv" else log_n


def collective_traffic(kind: str, bytes, n_devices):
    """Bytes each device sends for a collective whose per-rank buffer is `bytes` (nccl-tests size)."""
    _check_kind(kind)
    n = jnp.maximum(n_devices, 1.0)
    if kind == "all_reduce":
        return 2.0 * (1.0 - 1.0 / n) * bytes
    return jnp.clip(n_devices - 1.0, 0.0, 1.0) * bytes if kind == "send_recv" else (1.0 - 1.0 / n) * bytes


def collective_time(params, hw: HardwareSpec, kind: str, bytes, n_devices, level=None):
    """α–β time of a collective.

    Args:
      params: `EfficiencyParams` (or `Efficiency`).
      hw: hardware; its `links` give bandwidth per level, `params` the latency and efficiency.
      kind: one of `COLLECTIVES`.
      bytes: per-rank buffer (nccl-tests "size"; see the module docstring).
      n_devices: devices in the group (real-valued allowed; ≤ 1 costs 0).
      level: link level index (0 die-to-die, 1 scale-up, 2 scale-out); default: by `n_devices`.

    Returns:
      seconds.

    Raises:
      ValueError: an unknown kind.

    References:
      Thakur, Rabenseifner, Gropp, "Optimization of collective communication operations in MPICH",
      IJHPCA 2005 (ring and recursive-doubling costs).
    """
    _check_kind(kind)
    return group_time(kind, bytes, group(as_efficiency(params), hw, n_devices, level))


__all__ = [
    "COLLECTIVES", "OP_CLASSES", "Group", "as_efficiency", "causal_pairs", "collective_steps",
    "collective_time", "collective_traffic", "decode_attention_cost", "decode_attention_time",
    "elementwise_time", "gemm_cost", "gemm_time", "group", "group_steps", "group_time", "group_traffic",
    "grouped_gemm_cost", "grouped_gemm_time", "kv_elems_per_token", "link_level", "op_time",
    "prefill_attention_cost", "prefill_attention_time", "quantize_time", "roofline_time", "smooth_max",
]
