"""Serving metrics: TTFT, TTL, tokens/s/user, tokens/s/GPU; co-located vs disaggregated; Pareto.

    colocated(model, hw, params, lay, isl, osl) -> Serving
    disaggregated(model, hw, params, prefill_lay, decode_lay, isl, osl, *, alpha=None,
                  prefill_hw=None) -> Serving
    sla_mask(serving, ttft_limit_s, ttl_limit_s) -> bool array
    pareto_mask(x, y, valid=None) -> bool array           (maximize both; jnp, jit-able)
    pareto_front(x, y, valid=None) -> (x_front, y_front)   (numpy, sorted by x)
    envelope(x_front, y_front, x_query) -> best y with x ≥ x_query (numpy)

Co-located (chunked prefill piggybacked on decode, Sarathi-style): one iteration carries B decode
tokens and P = B·ISL/OSL prompt tokens (`step.mixed_step`); TTL = t_iter, TTFT = max(1, ISL/P)·t_iter,
tokens/s/GPU = B / (t_iter · GPUs).

Disaggregated with rate matching (arXiv 2506.05508 §3): a prefill replica of g_p GPUs serves
r_p = B_p / period_p requests/s; a decode replica of g_d GPUs serves r_d = B_d / (TTL · OSL).
Balancing the request rates, the prefill:decode GPU ratio is

    α = (r_d / r_p) · (g_p / g_d),   tokens/s/GPU = B_d / (TTL · g_d · (1 + α)).

With a fixed α the slower pool limits the request rate: per decode GPU, min(α·r_p/g_p, r_d/g_d)
requests/s, and tokens/s/GPU = OSL · min(...) / (1 + α). The KV cache (ISL tokens × all layers)
streams layer by layer from the prefill GPUs to the decode pool over the scale-out link (or the
scale-up link when both pools share a domain): TTFT = max(TTFT_p, t_kv) + t_kv / L.
Replica counts are continuous here (the fluid limit); perfmodel.search solves the integer ones.

Every rate is derived from one reciprocal per step (tokens/s/user = 1/TTL, batches/s = 1/period):
a step's cost is a chain of hundreds of elementwise ops, and XLA fuses such a chain into each
consumer it feeds except a division, which it computes once and shares; multiplying by the
reciprocal keeps a vectorized sweep from re-evaluating the step for every metric.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import ops
from .memory import fits
from .specs import HardwareSpec, ModelSpec
from .layer import pipeline_microbatches, round_up
from .step import LayoutArrays, StepCost, decode_step, mixed_step, prefill_step


class Serving(NamedTuple):
    """Serving metrics of one configuration (arrays over design points).

    ttft_s, ttl_s: latencies; tokens_per_s_per_user = 1/TTL; tokens_per_s_per_gpu: output tokens
    per second per GPU of the whole system; alpha: prefill GPUs per decode GPU (0: co-located);
    gpus: GPUs of one replica (decode replica when disaggregated); fits: HBM holds the footprint.
    """

    ttft_s: jax.Array
    ttl_s: jax.Array
    tokens_per_s_per_user: jax.Array
    tokens_per_s_per_gpu: jax.Array
    alpha: jax.Array
    gpus: jax.Array
    fits: jax.Array


def replica_gpus(lay: LayoutArrays):
    """GPUs of one model replica: N · pp (dp replicas do not change per-GPU metrics)."""
    return lay.n_attention * lay.pp


def colocated(model: ModelSpec, hw: HardwareSpec, params, lay: LayoutArrays, isl, osl,
              step: StepCost | None = None, *, relaxed: bool = False) -> Serving:
    """Co-located serving with chunked prefill piggybacked on every decode iteration.

    Args:
      model, hw, params: as in `step`. lay: design point(s).
      isl, osl: input and output tokens per request.
      step: a precomputed `mixed_step` (to share it with energy accounting).
      relaxed: smooth surrogate of the integer roundings (`step.decode_step`).

    Returns:
      `Serving` (alpha = 0).

    References:
      Agrawal et al., Sarathi-Serve, OSDI 2024 §4 (stall-free chunked prefill); arXiv 2506.05508 §3.
    """
    isl, osl = jnp.asarray(isl, jnp.float32), jnp.asarray(osl, jnp.float32)
    ctx = isl + 0.5 * osl
    step = mixed_step(model, hw, params, lay, ctx, isl, osl, relaxed=relaxed) if step is None else step
    t = step.time_s
    per_user = 1.0 / t
    b = round_up(lay.batch / pipeline_microbatches(lay), relaxed)
    p = b * isl / osl
    ttft = jnp.maximum(1.0, isl / p) / per_user
    g = replica_gpus(lay)
    ok, _ = fits(model, hw, lay, ctx, tokens=b + jnp.minimum(p, isl), relaxed=relaxed)
    return Serving(ttft, t, per_user, lay.batch * per_user / g, jnp.zeros_like(t), g, ok)


def kv_cache_bytes(model: ModelSpec, tokens, kv_bits):
    """Bytes of the KV cache of `tokens` tokens over all layers (no duplication)."""
    return tokens * float(model.kv_elems_per_token * model.n_layers) * kv_bits / 8.0


def disaggregated(model: ModelSpec, hw: HardwareSpec, params, prefill_lay: LayoutArrays,
                  decode_lay: LayoutArrays, isl, osl, *, alpha=None, prefill_hw: HardwareSpec | None = None,
                  prefill_params=None, kv_level: int | None = None,
                  steps: tuple[StepCost, StepCost] | None = None, relaxed: bool = False) -> Serving:
    """Disaggregated prefill and decode pools, rate matched (or at a fixed ratio α).

    Args:
      model: the model. hw, params: decode pool hardware and efficiencies.
      prefill_lay, decode_lay: design points of the two pools (broadcast together).
      isl, osl: request lengths.
      alpha: fixed prefill:decode GPU ratio (None: the rate-matched one).
      prefill_hw, prefill_params: a different prefill pool (heterogeneous; default: the decode's).
      kv_level: link level of the KV transfer (default: scale-out, 2).
      steps: precomputed (prefill_step, decode_step).
      relaxed: smooth surrogate of the integer roundings (`step.decode_step`).

    Returns:
      `Serving`; alpha is the rate-matched or given ratio; gpus the decode replica's.

    References:
      Beyond the Buzz, arXiv 2506.05508 §3 (rate matching, α from ~0.5 to ≥ 3.5).
    """
    phw = hw if prefill_hw is None else prefill_hw
    pparams = params if prefill_params is None else prefill_params
    isl, osl = jnp.asarray(isl, jnp.float32), jnp.asarray(osl, jnp.float32)
    ctx = isl + 0.5 * osl
    if steps is None:
        steps = (prefill_step(model, phw, pparams, prefill_lay, isl, relaxed=relaxed),
                 decode_step(model, hw, params, decode_lay, ctx, relaxed=relaxed))
    pf, dc = steps
    g_p, g_d = replica_gpus(prefill_lay), replica_gpus(decode_lay)
    per_user = 1.0 / dc.time_s
    r_p = prefill_lay.batch * (1.0 / pf.period_s)
    r_d = decode_lay.batch * per_user / osl
    level = 2 if kv_level is None else kv_level
    kv_per_gpu = prefill_lay.batch * kv_cache_bytes(model, isl, prefill_lay.kv_bits) / g_p
    t_kv = ops.collective_time(pparams, phw, "send_recv", kv_per_gpu, 2.0, level=level)
    ttft = jnp.maximum(pf.time_s, t_kv) + t_kv / float(model.n_layers)
    if alpha is None:
        a = (r_d / r_p) * (g_p / g_d)
        tps_gpu = decode_lay.batch * per_user / (g_d * (1.0 + a))
    else:
        a = jnp.broadcast_to(jnp.asarray(alpha, jnp.float32), r_d.shape)
        tps_gpu = osl * jnp.minimum(a * r_p / g_p, r_d / g_d) / (1.0 + a)
    ok_p, _ = fits(model, phw, prefill_lay, isl, tokens=prefill_lay.batch * jnp.where(
        prefill_lay.chunk > 0, jnp.minimum(prefill_lay.chunk, isl), isl), relaxed=relaxed)
    ok_d, _ = fits(model, hw, decode_lay, ctx, relaxed=relaxed)
    return Serving(ttft, dc.time_s, per_user, tps_gpu, a, g_d, ok_p & ok_d)


def sla_mask(s: Serving, ttft_limit_s=jnp.inf, ttl_limit_s=jnp.inf):
    """fits ∧ TTFT ≤ limit ∧ TTL ≤ limit (the disaggregation paper drops TTFT > 10 s)."""
    return s.fits & (s.ttft_s <= ttft_limit_s) & (s.ttl_s <= ttl_limit_s)


def pareto_mask(x, y, valid=None):
    """Points on the upper-right frontier of (x, y), both maximized; jnp, jit-able.

    A point is on the frontier when no other valid point has x ≥ its x and y ≥ its y with one
    strictly greater; exact duplicates keep one representative.

    Args:
      x, y: [n] arrays. valid: [n] bool (invalid points are never on the frontier).

    Returns:
      [n] bool.
    """
    x, y = jnp.asarray(x), jnp.asarray(y)
    valid = jnp.ones(x.shape, bool) if valid is None else valid
    xs = jnp.where(valid, x, -jnp.inf)
    ys = jnp.where(valid, y, -jnp.inf)
    order = jnp.lexsort((-ys, -xs))  # x descending, then y descending
    y_sorted = ys[order]
    prev_best = jnp.concatenate([jnp.full((1,), -jnp.inf, y_sorted.dtype),
                                 jax.lax.cummax(y_sorted)[:-1]])
    on = (y_sorted > prev_best) & valid[order]
    return jnp.zeros(x.shape, bool).at[order].set(on)


def pareto_front(x, y, valid=None):
    """(x_front, y_front) sorted by x ascending (numpy), from `pareto_mask`."""
    mask = np.asarray(pareto_mask(jnp.asarray(x), jnp.asarray(y), None if valid is None else jnp.asarray(valid)))
    xf, yf = np.asarray(x)[mask], np.asarray(y)[mask]
    order = np.argsort(xf)
    return xf[order], yf[order]


def envelope(x_front, y_front, x_query):
    """Upper envelope: the best y among frontier points with x ≥ x_query (−inf when none)."""
    x_front, y_front = np.asarray(x_front), np.asarray(y_front)
    idx = np.searchsorted(x_front, np.asarray(x_query), side="left")
    padded = np.concatenate([y_front, [-np.inf]])
    return padded[np.minimum(idx, len(y_front))]
