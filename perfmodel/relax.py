"""The continuous relaxation of the layout space searched by `search.gradient_search`.

    relaxed_layout(theta, model, space, phase, isl) -> (LayoutArrays, u)
    relaxed_terms(arm, theta, ...) -> (−log2 tokens/s/GPU, {constraint: violation}, integrality)
    relaxed_loss(arm, theta, ...) -> ℓ(θ)
    phase_metrics(model, hw, params, phase, lay, isl, osl, relaxed=False) -> PhaseMetrics

Relaxation (gradient search). Each pool's layout is a vector θ of reals mapped onto log2 degrees:

    u_N = ν·σ(θ0)                              ν = log2(max GPUs per replica)
    (u_tpa, u_kvp, u_dp) = u_N · softmax(θ1, θ2, θ3)          (prefill: u_kvp = 0)
    MoE:   u_ep = u_N·σ(θ4), u_tpf = u_N − u_ep
    dense: u_ep = 0, u_tpf = u_tpa + (u_N − u_tpa)·σ(θ4)     (σ = 0: Medha-style FFN on TPA GPUs)
    u_pp = log2(pp_max)·σ(θ5),   log2 B = b_0 + (b_1 − b_0)·σ(θ6)
    decode: microbatches = max1(B / (min(pp, B)·dp_attn))^σ(θ7)   (1, or one request each: HOP-B)
    prefill: chunk = ISL·(c_min/ISL)^σ(θ7)

so dp_attn·kvp·tpa = tpf·ep holds exactly. The cost model runs with `relaxed=True` (uneven-split
roundings dropped, `step.decode_step`). Each start minimizes

    ℓ(θ) = −log2 tokens/s/GPU(θ) + w_t·Σ_j h_β(c_j(θ))² + λ_t·Σ_i sin²(π·u_i)/π²,
    h_β(x) = softplus(β·x)/β   (a smooth hinge → max(0, x) as β → ∞)

with constraints c_j ≤ 0 in log2 units: memory log2(bytes/HBM) per pool; SLAs log2(TTFT/T_ft),
log2(TTL/T_l); divisibility, which for powers of two dividing n reads u ≤ v2(n) (v2: the exponent
of 2 in n) — u_tpa ≤ v2(Q), u_tpa ≤ v2(K) unless plain TP (that term is weighted by
tanh(2·(u_kvp + u_dp))), u_ep ≤ v2(E), u_tpf ≤ v2(F) — together with the integrality term over
u_i ∈ {u_tpa, u_kvp, u_dp, u_tpf, u_ep, u_pp}; GPUs per replica u_N + u_pp ≤ ν; B ≥ dp_attn; and
the total GPUs of the smallest balanced system, log2(G_min/G) with k = r_d/r_p and
G_min = smax(k, 1)·g_p + smax(1/k, 1)·g_d (co-located: log2(g/G)). The disaggregated objective
is the rate-matched −log2 OSL/(g_p/r_p + g_d/r_d). Penalty weight w_t and sharpness β_t grow
geometrically, λ_t linearly from 0 after the first third of the steps. optax Adam runs all starts
at once (`vmap`) inside one `lax.scan`, compiled once per (model, hardware, space).

`phase_metrics` (one pool's TTFT, TTL, requests/s/GPU, GPUs and memory ratio) lives here, at the
bottom of the search modules, because both the relaxation and the discrete searches cost pools with it.

References:
  Beyond the Buzz, arXiv 2506.05508 §3 (rate matching, integer pool sizes, Pareto under TTFT/TTL).
  Helix, arXiv 2507.07120 §4 (the decode layout space: TP, KVP × TPA, TPF × EP, PP, HOP-B).
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, NamedTuple

import jax
import jax.numpy as jnp
import optax

from . import ops
from .serving import colocated, kv_cache_bytes, replica_gpus
from .specs import HardwareSpec, ModelSpec
from .memory import fits
from .layer import max1_relaxed, pipeline_microbatches, round_up
from .step import LayoutArrays, decode_step, prefill_step

if TYPE_CHECKING:  # annotations only: search.py imports this module, never the reverse at run time
    from .search import SearchSpace

PHASES = ("prefill", "decode", "colocated")


# ------------------------------------------------------------------------------------ pool metrics

class PhaseMetrics(NamedTuple):
    """One pool's metrics per design point. ttft_s is 0 for a decode pool (the prefill pool sets
    it) and ttl_s 0 for a prefill pool; rate_per_gpu in requests/s/GPU; mem_ratio = bytes/HBM."""

    ttft_s: jax.Array
    ttl_s: jax.Array
    rate_per_gpu: jax.Array
    gpus: jax.Array
    mem_ratio: jax.Array


def phase_metrics(model: ModelSpec, hw: HardwareSpec, params, phase: str, lay: LayoutArrays, isl, osl, *,
                  relaxed: bool = False) -> PhaseMetrics:
    """Per-pool metrics: the two halves of `serving.disaggregated`, or `serving.colocated`.

    Args:
      phase: "prefill", "decode" or "colocated".
      lay: design points. isl, osl: request lengths. relaxed: smooth roundings (`step`).

    Returns:
      `PhaseMetrics`.

    Raises:
      ValueError: an unknown phase.
    """
    isl, osl = jnp.asarray(isl, jnp.float32), jnp.asarray(osl, jnp.float32)
    ctx = isl + 0.5 * osl
    g = replica_gpus(lay)
    zero = jnp.zeros_like(lay.batch)
    if phase == "prefill":
        st = prefill_step(model, hw, params, lay, isl, relaxed=relaxed)
        kv_per_gpu = lay.batch * kv_cache_bytes(model, isl, lay.kv_bits) / g
        t_kv = ops.collective_time(params, hw, "send_recv", kv_per_gpu, 2.0, level=2)
        ttft = jnp.maximum(st.time_s, t_kv) + t_kv / float(model.n_layers)
        c = jnp.where(lay.chunk > 0, jnp.minimum(lay.chunk, isl), isl)
        _, ratio = fits(model, hw, lay, isl, tokens=lay.batch * c, relaxed=relaxed)
        return PhaseMetrics(ttft, zero, lay.batch / (st.period_s * g), g, ratio)
    if phase == "decode":
        st = decode_step(model, hw, params, lay, ctx, relaxed=relaxed)
        _, ratio = fits(model, hw, lay, ctx, relaxed=relaxed)
        return PhaseMetrics(zero, st.time_s, lay.batch / (st.time_s * osl * g), g, ratio)
    if phase == "colocated":
        s = colocated(model, hw, params, lay, isl, osl, relaxed=relaxed)
        b = round_up(lay.batch / pipeline_microbatches(lay), relaxed)
        _, ratio = fits(model, hw, lay, ctx, tokens=b + jnp.minimum(b * isl / osl, isl), relaxed=relaxed)
        return PhaseMetrics(s.ttft_s, s.ttl_s, s.tokens_per_s_per_gpu / osl, g, ratio)
    raise ValueError(f"phase={phase!r} must be one of {PHASES}")


# ------------------------------------------------------------------------------------ relaxation

N_THETA = 8  # relaxation variables per pool (module docstring)


def _v2(n: int) -> int:
    """Exponent of 2 in n: a power of two 2^u divides n iff u ≤ v2(n)."""
    return (n & -n).bit_length() - 1


def smooth_hinge(x, beta):
    """h_β(x) = softplus(β·x)/β: a smooth max(0, x), within log(2)/β of it."""
    return jax.nn.softplus(beta * x) / beta


def relaxed_layout(theta, model: ModelSpec, space: SearchSpace, phase: str, isl):
    """Map unconstrained θ [..., 8] to a real-valued layout (module docstring).

    Args:
      theta: [..., N_THETA] reals.
      model, space: the model and the space (degree and batch ranges).
      phase: "prefill", "decode" or "colocated".
      isl: prompt tokens (prefill chunk range).

    Returns:
      (LayoutArrays of real degrees, u [..., 7] = (log2 tpa, log2 kvp, log2 dp_attn, log2 tpf,
      log2 ep, log2 pp, s) with s the micro-batch exponent or the chunk position in [0, 1]).
    """
    sig = jax.nn.sigmoid
    u_n = math.log2(space.max_gpus) * sig(theta[..., 0])
    if phase == "prefill":
        w = jax.nn.softmax(jnp.stack([theta[..., 1], theta[..., 3]], -1), -1)
        u_tpa, u_kvp, u_dp = u_n * w[..., 0], jnp.zeros_like(u_n), u_n * w[..., 1]
    else:
        w = jax.nn.softmax(theta[..., 1:4], -1)
        u_tpa, u_kvp, u_dp = u_n * w[..., 0], u_n * w[..., 1], u_n * w[..., 2]
    if model.is_moe:
        u_ep = u_n * sig(theta[..., 4])
        u_tpf = u_n - u_ep
    else:
        u_ep = jnp.zeros_like(u_n)
        u_tpf = u_tpa + (u_n - u_tpa) * sig(theta[..., 4])
    u_pp = math.log2(max(space.pp_options)) * sig(theta[..., 5])
    grid = space.batches(phase)
    b_lo, b_hi = math.log2(grid[0]), math.log2(grid[-1])
    batch = jnp.exp2(b_lo + (b_hi - b_lo) * sig(theta[..., 6]))
    s = sig(theta[..., 7])
    pp, dp = jnp.exp2(u_pp), jnp.exp2(u_dp)
    isl = jnp.asarray(isl, jnp.float32)
    chunk, mb = jnp.zeros_like(u_n), jnp.ones_like(u_n)
    positive = [c for c in space.chunks if c > 0]
    if phase == "prefill" and positive:
        c_min = jnp.minimum(float(min(positive)), isl)
        chunk = isl * jnp.exp(s * jnp.log(c_min / isl))
    elif phase != "prefill":
        per_group = batch / (jnp.minimum(pp, batch) * dp)
        mb = jnp.exp(s * jnp.log(max1_relaxed(per_group)))
    wb, kb, ab, cb = space.bits
    lay = LayoutArrays(
        tpa=jnp.exp2(u_tpa), kvp=jnp.exp2(u_kvp), dp_attn=dp, tpf=jnp.exp2(u_tpf), ep=jnp.exp2(u_ep), pp=pp,
        dp=jnp.ones_like(u_n), batch=batch, microbatches=mb, chunk=chunk, hopb=jnp.ones_like(u_n),
        weight_bits=jnp.full_like(u_n, wb), kv_bits=jnp.full_like(u_n, kb), act_bits=jnp.full_like(u_n, ab),
        comm_bits=jnp.full_like(u_n, cb))
    return lay, jnp.stack([u_tpa, u_kvp, u_dp, u_tpf, u_ep, u_pp, s], -1)


def _log2(x):
    return jnp.log2(jnp.maximum(x, 1e-30))


def _pool_terms(model: ModelSpec, space: SearchSpace, phase: str, u, lay, m: PhaseMetrics, ttft_limit_s,
                ttl_limit_s, beta):
    """Hinged violations (≥ 0) of one pool's constraints, and its integrality term."""
    h = functools.partial(smooth_hinge, beta=beta)
    u_tpa, u_kvp, u_dp, u_tpf, u_ep, u_pp, s = (u[..., i] for i in range(7))
    a_tpf = _v2(model.expert_ffn) if model.is_moe else _v2(model.ffn)
    if model.is_moe and model.n_moe_layers < model.n_layers:
        a_tpf = min(a_tpf, _v2(model.ffn))
    v = {
        f"{phase}/memory": h(_log2(m.mem_ratio)),
        f"{phase}/tpa_divides_q": h(u_tpa - _v2(model.n_heads)),
        # TPA beyond the KV heads only as plain TP (kvp = dp_attn = 1), which duplicates KV heads
        f"{phase}/tpa_divides_kv": h(u_tpa - _v2(model.n_kv_heads)) * jnp.tanh(2.0 * (u_kvp + u_dp)),
        f"{phase}/tpf_divides_ffn": h(u_tpf - a_tpf),
        f"{phase}/gpus_per_replica": h(u_tpa + u_kvp + u_dp + u_pp - math.log2(space.max_gpus)),
        f"{phase}/batch_ge_dp": h(u_dp - _log2(lay.batch)),
    }
    if model.is_moe:
        v[f"{phase}/ep_divides_experts"] = h(u_ep - _v2(model.n_experts))
    if phase != "decode":
        v[f"{phase}/ttft"] = h(_log2(m.ttft_s / ttft_limit_s))
    if phase != "prefill":
        v[f"{phase}/ttl"] = h(_log2(m.ttl_s / ttl_limit_s))
    frac = jnp.sin(jnp.pi * u[..., :6]) / jnp.pi
    integ = jnp.sum(frac * frac, -1) + (0.0 if phase == "prefill" else 4.0 * s * (1.0 - s))
    return v, integ


def relaxed_terms(arm: str, theta, model: ModelSpec, hw: HardwareSpec, params, space: SearchSpace, isl, osl,
                  ttft_limit_s, ttl_limit_s, beta):
    """Objective, hinged constraint violations and integrality of one relaxed design.

    Args:
      arm: "disaggregated" (theta [2, N_THETA]: prefill, decode) or "colocated" ([1, N_THETA]).
      theta: relaxation variables of one design.
      params: efficiencies. isl, osl: request lengths. ttft_limit_s, ttl_limit_s: the SLA.
      beta: hinge sharpness.

    Returns:
      (objective = −log2 tokens/s/GPU, {name: violation ≥ 0}, integrality ≥ 0).
    """
    G = float(space.max_total_gpus)
    phases = ("prefill", "decode") if arm == "disaggregated" else ("colocated",)
    viol, integ, mets = {}, 0.0, []
    for k, phase in enumerate(phases):
        lay, u = relaxed_layout(theta[k], model, space, phase, isl)
        m = phase_metrics(model, hw, params, phase, lay, isl, osl, relaxed=True)
        v, i = _pool_terms(model, space, phase, u, lay, m, ttft_limit_s, ttl_limit_s, beta)
        viol.update(v)
        integ = integ + i
        mets.append(m)
    if arm == "disaggregated":
        mp, md = mets
        tps = osl / (1.0 / mp.rate_per_gpu + 1.0 / md.rate_per_gpu)
        k_ratio = (md.rate_per_gpu * md.gpus) / (mp.rate_per_gpu * mp.gpus)  # prefill replicas per decode replica
        g_min = ops.smooth_max(k_ratio, 1.0) * mp.gpus + ops.smooth_max(1.0 / k_ratio, 1.0) * md.gpus
        viol["total_gpus"] = smooth_hinge(_log2(g_min / G), beta)
    else:
        (mc,) = mets
        tps = mc.rate_per_gpu * osl
        viol["total_gpus"] = smooth_hinge(_log2(mc.gpus / G), beta)
    return -_log2(tps), viol, integ


def relaxed_loss(arm: str, theta, model: ModelSpec, hw: HardwareSpec, params, space: SearchSpace, isl, osl,
                 ttft_limit_s, ttl_limit_s, *, beta=8.0, weight=10.0, integrality=0.0):
    """ℓ(θ) = −log2 tokens/s/GPU + weight·Σ violations² + integrality·Σ sin²(π·u)/π² (scalar)."""
    obj, viol, integ = relaxed_terms(arm, theta, model, hw, params, space, isl, osl, ttft_limit_s, ttl_limit_s,
                                     beta)
    pen = sum(v * v for v in viol.values())
    return obj + weight * pen + integrality * integ


def _schedule(frac, w=(1.0, 100.0), beta=(2.0, 32.0), lam=2.0):
    """Penalty weight and hinge sharpness grow geometrically; integrality from a third of the way."""
    return (beta[0] * (beta[1] / beta[0]) ** frac, w[0] * (w[1] / w[0]) ** frac,
            lam * jnp.clip((frac - 1.0 / 3.0) * 1.5, 0.0, 1.0))


@functools.lru_cache(maxsize=64)
def _optimizer(arm: str, model: ModelSpec, hw: HardwareSpec, space: SearchSpace, steps: int):
    """jit(run(theta0 [S, pools, 8], params, isl, osl, ttft, ttl, lr, frac0) -> (theta, loss [steps, S])).

    Adam (optax) on every start at once; cosine-decayed learning rate; the penalty schedule runs
    from frac0 to 1 (warm starts begin part-way)."""
    tx = optax.scale_by_adam()

    def loss(theta, params, isl, osl, ttft, ttl, beta, w, lam):
        return relaxed_loss(arm, theta, model, hw, params, space, isl, osl, ttft, ttl, beta=beta, weight=w,
                            integrality=lam)

    value_and_grad = jax.vmap(jax.value_and_grad(loss), in_axes=(0,) + (None,) * 8)

    def run(theta0, params, isl, osl, ttft, ttl, lr, frac0):
        def body(carry, k):
            theta, state = carry
            frac = frac0 + (1.0 - frac0) * k / max(steps - 1, 1)
            beta, w, lam = _schedule(frac)
            val, grad = value_and_grad(theta, params, isl, osl, ttft, ttl, beta, w, lam)
            grad = jnp.where(jnp.isfinite(grad), grad, 0.0)
            upd, state = tx.update(grad, state, theta)
            step_lr = lr * (0.1 + 0.9 * 0.5 * (1.0 + jnp.cos(jnp.pi * k / max(steps, 1))))
            return (theta - step_lr * upd, state), val

        (theta, _), losses = jax.lax.scan(body, (theta0, tx.init(theta0)), jnp.arange(steps, dtype=jnp.float32))
        return theta, losses

    return jax.jit(run)


@functools.lru_cache(maxsize=64)
def _relaxed_u(model: ModelSpec, space: SearchSpace, phase: str):
    return jax.jit(lambda theta, isl: relaxed_layout(theta, model, space, phase, isl))

