"""Design points per second of the full cost model under jit + vmap, and the time of one jax.grad.

One design point = a (prefill layout, decode layout) pair of one model on one hardware: the
prefill step, the decode step, the co-located iteration, serving metrics of both modes (TTFT, TTL,
tokens/s/user, tokens/s/GPU, rate-matched α, memory fit) and energy (J/token of both modes).
Printed side by side in one run: the blocked evaluation of perfmodel.sweep.evaluate, a flat vmap,
and a 10-op smooth roofline (the reference figure of NOTES.md). The last line is one JSON object.

    python benchmarks/bench_sweep.py [--points 2097152] [--models deepseek-r1,llama-3.1-70b]
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from perfmodel import datasheet_params, get_hardware, get_model
from perfmodel.energy import disaggregated_energy, energy_per_token
from perfmodel.serving import colocated, disaggregated, replica_gpus
from perfmodel.step import LayoutArrays, decode_step, make_layout_arrays, mixed_step, prefill_step
from perfmodel.ops import smooth_max
from perfmodel.sweep import evaluate

ISL, OSL = 8192.0, 1024.0
CHUNK = inspect.signature(evaluate).parameters["chunk"].default


def random_points(model, n, seed=0):
    """n random (prefill, decode) layout pairs stacked along the field axis (2 × 15 fields)."""
    rng = np.random.default_rng(seed)
    pow2 = lambda hi: 2.0 ** rng.integers(0, hi + 1, n)  # noqa: E731
    def one():
        tpa = np.minimum(pow2(3), model.n_kv_heads)
        kvp = pow2(3)
        d = pow2(2)
        n_gpu = tpa * kvp * d
        ep = np.minimum(pow2(3), n_gpu) if model.is_moe else np.ones(n)
        return make_layout_arrays(tpa=tpa, kvp=kvp, dp_attn=d, ep=ep, tpf=n_gpu / ep, pp=pow2(2),
                                  batch=np.round(2.0 ** rng.uniform(0, 10, n)), microbatches=pow2(1),
                                  chunk=rng.choice([0.0, 2048.0], n), weight_bits=4.25, kv_bits=8.25,
                                  act_bits=8.25, comm_bits=8.25)
    pf, dc = one(), one()
    return LayoutArrays(*[jnp.concatenate([a[None], b[None]]) for a, b in zip(pf, dc)])


def full_model(model, hw, params):
    def point(pair: LayoutArrays):
        pf_lay = LayoutArrays(*(x[0] for x in pair))
        dc_lay = LayoutArrays(*(x[1] for x in pair))
        pf = prefill_step(model, hw, params, pf_lay, ISL)
        dc = decode_step(model, hw, params, dc_lay, ISL + OSL / 2)
        mix = mixed_step(model, hw, params, dc_lay, ISL + OSL / 2, ISL, OSL)
        dis = disaggregated(model, hw, params, pf_lay, dc_lay, ISL, OSL, steps=(pf, dc))
        co = colocated(model, hw, params, dc_lay, ISL, OSL, step=mix)
        e_dis = disaggregated_energy(hw, hw, params, params, pf, dc, dis, pf_lay, dc_lay)
        e_co = energy_per_token(hw, params, mix, dc_lay.batch, replica_gpus(dc_lay))
        return dict(ttft=dis.ttft_s, ttl=dis.ttl_s, tps_gpu=dis.tokens_per_s_per_gpu, alpha=dis.alpha,
                    ok=dis.fits, co_ttft=co.ttft_s, co_ttl=co.ttl_s, co_tps_gpu=co.tokens_per_s_per_gpu,
                    j_dis=e_dis.joules_per_token, j_co=e_co.joules_per_token)
    return point


def roofline10(hw):
    """The NOTES.md reference: ten smooth-roofline ops (perfmodel.ops.smooth_max) of one design point."""
    def point(x):
        t = 0.0
        for i in range(10):
            c = x * (i + 1.0) * (1e9 / hw.flops_bf16)
            m = (x + i) * (1e6 / hw.hbm_bandwidth_bytes_per_s)
            t = t + smooth_max(c, m)
        return t
    return point


def throughput(model, hw, params, n, rounds):
    """Points/s of sweep.evaluate, of one vmap over all points, and of the 10-op reference."""
    pts = random_points(model, n)
    point = full_model(model, hw, params)
    pairs = LayoutArrays(*(np.asarray(c).T for c in pts))  # fields [n, 2]: (prefill, decode)
    flat = jax.jit(jax.vmap(point, in_axes=1))
    x = jnp.asarray(np.random.default_rng(1).uniform(1, 100, n), jnp.float32)
    ref = jax.jit(jax.vmap(roofline10(hw)))
    runs = {"chunked": lambda: evaluate(point, pairs), "flat": lambda: flat(pts), "roofline10": lambda: ref(x)}
    best = {k: float("inf") for k in runs}
    for f in runs.values():
        jax.block_until_ready(f())
    for _ in range(rounds):  # interleaved rounds, best of each
        for k, f in runs.items():
            t0 = time.perf_counter()
            jax.block_until_ready(f())
            best[k] = min(best[k], time.perf_counter() - t0)
    np.testing.assert_allclose(evaluate(point, pairs)["ttl"], np.asarray(flat(pts)["ttl"]), rtol=1e-5)
    cpu = float("inf")  # process CPU time: less sensitive than wall time to other users of the machine
    for _ in range(rounds):
        c0 = time.process_time()
        evaluate(point, pairs)
        cpu = min(cpu, time.process_time() - c0)
    out = {k: n / v for k, v in best.items()}
    out["cpu_ns_per_point"] = cpu / n * 1e9
    return out, pts


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--points", type=int, default=1 << 21)
    ap.add_argument("--models", default="deepseek-r1,llama-3.1-70b")
    ap.add_argument("--hardware", default="gb200-nvl72")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    hw = get_hardware(args.hardware)
    params = datasheet_params(hw)
    n = args.points
    summary = {"hardware": args.hardware, "points": n, "cpu_count": os.cpu_count()}
    print(f"{n:,} design points per model on {args.hardware}; one point = prefill + decode + co-located "
          "iteration + serving metrics (TTFT, TTL, tokens/s/user, tokens/s/GPU, rate-matched α, fit) + energy")
    for i, name in enumerate(args.models.split(",")):
        model = get_model(name)
        pps, pts = throughput(model, hw, params, n, args.rounds)
        print(f"{name}:")
        print(f"  sweep.evaluate ({CHUNK:,}-point chunks, {os.cpu_count()} threads):"
              f"{pps['chunked'] / 1e6:8.2f} M points/s")
        print(f"  one vmap over all points:                      {pps['flat'] / 1e6:8.2f} M points/s   "
              f"(evaluate / flat {pps['chunked'] / pps['flat']:.2f}×)")
        print(f"  10-op smooth roofline reference:               {pps['roofline10'] / 1e6:8.2f} M points/s   "
              f"(a full point costs {pps['roofline10'] / pps['chunked']:.0f}× one reference point)")
        print(f"  CPU time per point (all threads):              {pps['cpu_ns_per_point']:8.1f} ns   "
              f"(≈ {os.cpu_count() / pps['cpu_ns_per_point'] * 1e3:.1f} M points/s if every core were ours)")
        key = name.replace("-", "_").replace(".", "_")
        summary[f"{key}_cpu_ns_per_point"] = round(pps["cpu_ns_per_point"], 1)
        summary[f"{key}_points_per_s"] = round(pps["chunked"])
        summary[f"{key}_flat_vmap_points_per_s"] = round(pps["flat"])
        summary[f"{key}_roofline10_points_per_s"] = round(pps["roofline10"])
        if i:
            continue
        # one jax.grad through the model: d(sum of log tokens/s/GPU)/d(efficiency params) over a
        # batch of full design points, and d(TTL)/d(params, relaxed degrees) of one decode point
        def loss(p, sub, model=model):
            o = jax.vmap(full_model(model, hw, p), in_axes=1)(sub)
            return jnp.sum(jnp.log(o["tps_gpu"]))
        n_grad = min(n, 1 << 13)
        sub = jax.tree.map(lambda a: a[:, :n_grad], pts)
        g = jax.jit(jax.grad(loss))
        t0 = time.perf_counter()
        jax.block_until_ready(g(params, sub))
        t_compile = time.perf_counter() - t0
        t_grad = min(_timed(g, params, sub) for _ in range(args.rounds))
        one = jax.jit(jax.grad(lambda p, deg, model=model: decode_step(
            model, hw, p, make_layout_arrays(**deg), ISL + OSL / 2, relaxed=True).time_s, argnums=(0, 1)))
        deg = dict(tpa=jnp.float32(1.5), kvp=jnp.float32(3.0), ep=jnp.float32(4.5), tpf=jnp.float32(1.0),
                   batch=jnp.float32(17.0))
        jax.block_until_ready(one(params, deg))
        t_one = min(_timed(one, params, deg) for _ in range(20))
        print(f"  jax.grad over {n_grad:,} full points w.r.t. the efficiency pytree: {t_grad * 1e3:.1f} ms "
              f"(compile {t_compile:.1f} s)")
        print(f"  jax.grad of one decode step w.r.t. params and relaxed degrees: {t_one * 1e6:.1f} µs")
        summary.update(grad_model=name, grad_points=n_grad, grad_s=round(t_grad, 4),
                       grad_compile_s=round(t_compile, 2), grad_one_point_s=round(t_one, 7))
    print(json.dumps(summary))


def _timed(f, *a):
    t0 = time.perf_counter()
    jax.block_until_ready(f(*a))
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
