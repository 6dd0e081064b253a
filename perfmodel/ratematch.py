"""Rate matching and elastic scaling of disaggregated serving.

    rate_matching(case, ttl_limits_s, *, tables=None) -> list[dict]     α* vs TTL; fixed α; co-located
    traffic_trace(seed=0, *, duration_s=3600, interval_s=120, ...) -> Trace
    elastic_candidates(model, hw, trace, *, ...) -> dict                 candidate layouts, costed
    elastic_scaling(model, hw, trace, *, ...) -> ElasticResult            per-interval plan vs best static
    python -m perfmodel.ratematch [--model M] [--quick]                  prints both studies

Dynamic rate matching (arXiv 2506.05508 §3). With per-GPU request rates R_p (best prefill layout
meeting TTFT) and R_d (best decode layout meeting TTL), a fluid system with α prefill GPUs per
decode GPU serves min(α·R_p, R_d)/(1 + α) requests/s/GPU. The rate-matched ratio α* = R_d/R_p
gives OSL/(1/R_p + 1/R_d), the maximum over α; a fixed α loses the factor
min(α·R_p, R_d)·(1/R_p + 1/R_d)/(1 + α). R_d falls as the TTL target tightens, so α* moves with it.

Elastic scaling. A trace gives per interval an arrival rate λ_t and request lengths (ISL_t, OSL_t).
Candidate layouts are, for every distinct (ISL, OSL) of the trace, the best prefill, decode and
co-located replica of each size from the exhaustive tables (`search.phase_tables`), all of them
costed at every (ISL, OSL). An interval's configuration is disaggregated (a prefill and a decode
layout, n_p = ⌈λ_t/r_p⌉ and n_d = ⌈λ_t/r_d⌉ replicas) or co-located (n = ⌈λ_t/r_c⌉), with
layouts meeting the SLA at that interval's lengths. Switching configurations re-provisions every
replica that is new in its role and layout: its GPUs load the model for `reprovision_s` seconds
before serving (make-before-break), which is paid in GPU-seconds. A dynamic program over the
intervals (states: the `top_k` cheapest configurations of each interval plus the best static one)
minimizes provisioned + re-provisioning GPU-seconds while serving every request within the SLA:

    goodput/GPU = Σ_t λ_t·OSL_t·Δt / (Σ_t GPUs_t·Δt + reprovision_s · Σ GPUs loaded)

(the first interval's configuration, like the static one, is up before the trace starts).

The best static configuration keeps one set of layouts and replica counts all hour; requests
beyond its capacity, or in intervals whose lengths its layouts cannot serve within the SLA, are
not goodput. It maximizes goodput/GPU among configurations serving at least `attainment` of the
requests (replica counts from the levels that match one interval's demand exactly).

References:
  Beyond the Buzz, arXiv 2506.05508 §3–4 (rate matching, α from ~0.5 to ≥ 3.5, dynamic rate
  matching and elastic scaling; its later version is cited in issue 6 for about 2× the goodput of
  the best static configuration with the Dynamo Planner prototype — not checked against the
  paper's text here, nor its setup reproduced).
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import numpy as np

from .search import Case, PhaseTable, SearchSpace, best_per_size, phase_tables, pool_evaluator
from .specs import HardwareSpec, ModelSpec, Workload

REGIMES = {"chat": (2048, 512), "summarize": (8192, 256), "reasoning": (1024, 4096)}  # (ISL, OSL)


def _best_rate(t: PhaseTable, workload: Workload) -> float:
    idx = list(best_per_size(t, workload).values())
    return float(np.max(np.asarray(t.metrics.rate_per_gpu)[idx])) if idx else 0.0


def rate_matching(case: Case, ttl_limits_s, *, tables: dict | None = None, alphas=(0.5, 3.5)) -> list[dict]:
    """Rate-matched α* and tokens/s/GPU against the TTL target; fixed α; co-located.

    Args:
      case: model, hardware, workload (its TTFT limit applies), space.
      ttl_limits_s: TTL targets.
      tables: `search.phase_tables(case)` with all three pools (computed when None).
      alphas: fixed prefill:decode GPU ratios to compare.

    Returns:
      one dict per target: ttl_limit_s, alpha (α*), rate_matched, fixed (dict α -> tokens/s/GPU),
      colocated (tokens/s/GPU; 0 when infeasible), prefill_rate_per_gpu, decode_rate_per_gpu.

    Raises:
      ValueError: tables without the prefill, decode and co-located pools.
    """
    tables = phase_tables(case, phases=("prefill", "decode", "colocated")) if tables is None else tables
    missing = {"prefill", "decode", "colocated"} - set(tables)
    if missing:
        raise ValueError(f"rate_matching needs tables of every pool; missing {sorted(missing)}")
    osl, rows = float(case.workload.osl), []
    for ttl in ttl_limits_s:
        w = dataclasses.replace(case.workload, ttl_limit_s=float(ttl))
        r_p, r_d, r_c = (_best_rate(tables[p], w) for p in ("prefill", "decode", "colocated"))
        ok = r_p > 0 and r_d > 0
        rows.append({
            "ttl_limit_s": float(ttl), "alpha": r_d / r_p if ok else math.nan,
            "rate_matched": osl / (1.0 / r_p + 1.0 / r_d) if ok else 0.0,
            "fixed": {a: osl * min(a * r_p, r_d) / (1.0 + a) if ok else 0.0 for a in alphas},
            "colocated": osl * r_c, "prefill_rate_per_gpu": r_p, "decode_rate_per_gpu": r_d,
        })
    return rows


# ------------------------------------------------------------------------------------------ traces

class Trace(NamedTuple):
    """Per-interval traffic: start time, arrival rate (requests/s), ISL, OSL, regime name."""

    t_s: np.ndarray
    arrival_rate_per_s: np.ndarray
    isl: np.ndarray
    osl: np.ndarray
    regime: np.ndarray
    interval_s: float


def traffic_trace(seed: int = 0, *, duration_s: float = 3600.0, interval_s: float = 120.0,
                  mean_rate_per_s: float = 20.0, regimes: dict = REGIMES, switch_prob: float = 0.15,
                  burst_factor: float = 3.0, length_jitter: float = 0.3) -> Trace:
    """A synthetic hour of traffic, reproducible from `seed` (numpy `default_rng(seed)`).

    Arrival rate λ_t = λ̄ · (1 + 0.5·sin(2π·t/T + φ)) · b_t · exp(ε_t): a slow swing of ±50% with
    random phase φ ~ U[0, 2π), a burst b_t = burst_factor over a random window of T/12 to T/6, and
    AR(1) log-noise ε_t = 0.7·ε_{t−1} + N(0, 0.2²). The request mix is a Markov chain over
    `regimes` (switching with probability `switch_prob` per interval); ISL and OSL are the
    regime's times exp(N(0, length_jitter²)) (σ = 0.3 by default), rounded to powers of two (so
    lengths recur).

    Args:
      seed: RNG seed. duration_s, interval_s: trace length and interval (T, Δt).
      mean_rate_per_s: λ̄. regimes: {name: (ISL, OSL)}. switch_prob, burst_factor, length_jitter: as above.

    Returns:
      `Trace` with ⌈T/Δt⌉ intervals.

    Raises:
      ValueError: non-positive durations or rate, an empty regime table, a probability outside [0, 1].
    """
    if not (duration_s > 0 and interval_s > 0 and mean_rate_per_s > 0 and regimes and 0 <= switch_prob <= 1):
        raise ValueError(f"traffic_trace: duration_s={duration_s}, interval_s={interval_s}, "
                         f"mean_rate_per_s={mean_rate_per_s} must be > 0, regimes={regimes!r} non-empty, "
                         f"switch_prob={switch_prob} in [0, 1]")
    rng = np.random.default_rng(seed)
    n = int(math.ceil(duration_s / interval_s))
    t = np.arange(n) * interval_s
    swing = 1.0 + 0.5 * np.sin(2.0 * np.pi * t / duration_s + rng.uniform(0.0, 2.0 * np.pi))
    width = int(rng.integers(max(1, n // 12), max(2, n // 6 + 1)))
    start = int(rng.integers(0, max(1, n - width + 1)))
    burst = np.ones(n)
    burst[start:start + width] = burst_factor
    eps = np.zeros(n)
    for k in range(n):
        eps[k] = (0.7 * eps[k - 1] if k else 0.0) + rng.normal(0.0, 0.2)
    names = list(regimes)
    state, regime = int(rng.integers(len(names))), []
    for _ in range(n):
        if rng.uniform() < switch_prob:
            state = int(rng.choice([i for i in range(len(names)) if i != state] or [state]))
        regime.append(names[state])
    base = np.asarray([regimes[r] for r in regime], np.float64)
    lengths = np.exp2(np.round(np.log2(base * np.exp(rng.normal(0.0, length_jitter, base.shape))))).astype(np.int64)
    return Trace(t, mean_rate_per_s * swing * burst * np.exp(eps), lengths[:, 0], lengths[:, 1],
                 np.asarray(regime), float(interval_s))


# -------------------------------------------------------------------------------- elastic scaling

@dataclasses.dataclass
class ElasticResult:
    """Elastic plan against the best static configuration (goodput in output tokens/s per GPU).

    Attributes:
      goodput_per_gpu: elastic: tokens served within the SLA / (provisioned + re-provisioning GPU-s).
      static_goodput_per_gpu: the best static configuration's (0 when none reaches `attainment`).
      ratio: elastic / static.
      gpu_seconds, reprovision_gpu_seconds, tokens: elastic totals.
      plan: per interval: t_s, arrival_rate_per_s, isl, osl, mode, prefill / decode / colocated
        (replicas, layout), gpus, reloaded_gpus.
      static: the static configuration (mode, layouts, replicas, gpus, attainment).
      candidates: candidate layouts per pool.
    """

    goodput_per_gpu: float
    static_goodput_per_gpu: float
    ratio: float
    gpu_seconds: float
    reprovision_gpu_seconds: float
    tokens: float
    plan: list
    static: dict
    candidates: dict


class _Costed(NamedTuple):
    rows: list  # LayoutArrays rows (tuples)
    family: list
    rate: np.ndarray  # [layouts, workloads] requests/s per replica, 0 where the SLA fails
    gpus: np.ndarray  # [layouts]


_ROLES = ("prefill", "decode", "colocated")


def _workloads(trace: Trace):
    workloads = sorted({(int(i), int(o)) for i, o in zip(trace.isl, trace.osl)})
    return workloads, np.asarray([workloads.index((int(i), int(o))) for i, o in zip(trace.isl, trace.osl)])


def elastic_candidates(model: ModelSpec, hw: HardwareSpec, trace: Trace, *, space: SearchSpace | None = None,
                       params=None, ttft_limit_s: float = 10.0, ttl_limit_s: float = 0.02,
                       progress: bool = False) -> dict:
    """Candidate layouts for `elastic_scaling`: the best replica of each size per pool and
    (ISL, OSL) of the trace (exhaustive tables), each costed at every (ISL, OSL) of the trace.

    Returns:
      {pool: candidates} with per-replica request rates (0 where the SLA fails) and GPUs.
    """
    space = SearchSpace() if space is None else space
    params = Case(model, hw, Workload(1, 1), space, params).efficiency
    workloads, _ = _workloads(trace)
    return _candidate_layouts(model, hw, params, space, workloads, ttft_limit_s, ttl_limit_s, progress)


def _candidate_layouts(model, hw, params, space, workloads, ttft, ttl, progress) -> dict:
    phases = (("prefill", "decode") if "disaggregated" in space.modes else ()) + (
        ("colocated",) if "colocated" in space.modes else ())
    found = {p: {} for p in phases}
    for isl, osl in workloads:
        case = Case(model, hw, Workload(int(isl), int(osl), ttft_limit_s=ttft, ttl_limit_s=ttl), space, params)
        for phase, t in phase_tables(case, progress=progress, phases=phases).items():
            for i in best_per_size(t, case.workload).values():
                found[phase].setdefault(tuple(float(np.asarray(x)[i]) for x in t.lay), str(t.family[i]))
    out = {}
    for phase, rows in found.items():
        if not rows:
            continue
        fn = pool_evaluator(model, hw, phase)
        cols = tuple(np.asarray(c, np.float32) for c in zip(*rows))
        rate = np.zeros((len(rows), len(workloads)))
        gpus = None
        for k, (isl, osl) in enumerate(workloads):
            m = jax.tree.map(lambda x: np.asarray(x, np.float64), fn(params, cols, float(isl), float(osl)))
            ok = (m.mem_ratio <= 1.0) & (m.ttft_s <= ttft) & (m.ttl_s <= ttl)
            rate[:, k] = np.where(ok, m.rate_per_gpu * m.gpus, 0.0)
            gpus = np.round(m.gpus)
        out[phase] = _Costed(list(rows), list(rows.values()), rate, gpus)
    return out


def _layout(row, family) -> dict:
    keys = ("tpa", "kvp", "dp_attn", "tpf", "ep", "pp", "dp", "batch", "microbatches", "chunk")
    d = {k: int(round(v)) for k, v in zip(keys, row) if k != "dp"}
    d["family"] = family
    return d


def _interval_configs(cands: dict, w: int, lam: float, cluster: int, top_k: int) -> list:
    """Configurations serving λ within the SLA at workload index w: (gpus, {(role, layout): n})."""
    out = []
    if "prefill" in cands:
        p, d = cands["prefill"], cands["decode"]
        with np.errstate(divide="ignore"):
            n_p = np.where(p.rate[:, w] > 0, np.ceil(lam / p.rate[:, w]), np.inf)
            n_d = np.where(d.rate[:, w] > 0, np.ceil(lam / d.rate[:, w]), np.inf)
        g = (n_p * p.gpus)[:, None] + (n_d * d.gpus)[None, :]
        for i, j in zip(*np.nonzero(g <= cluster)):
            out.append((float(g[i, j]), {("prefill", int(i)): int(n_p[i]), ("decode", int(j)): int(n_d[j])}))
    if "colocated" in cands:
        c = cands["colocated"]
        with np.errstate(divide="ignore"):
            n = np.where(c.rate[:, w] > 0, np.ceil(lam / c.rate[:, w]), np.inf)
        for i in np.flatnonzero(n * c.gpus <= cluster):
            out.append((float(n[i] * c.gpus[i]), {("colocated", int(i)): int(n[i])}))
    out.sort(key=lambda x: x[0])
    return out[:top_k]


def _best_static(cands: dict, trace_w, lam, osl, cluster: int, attainment: float):
    """Max goodput/GPU of one configuration kept all trace, among those serving ≥ attainment.

    Replica counts come from the levels ⌈λ_t / r_t⌉ that exactly serve one interval's demand."""
    demand, n_t = float(np.sum(lam)), len(lam)
    best = (0.0, None)

    def consider(roles):
        nonlocal best
        rates, levels = [], []
        for role, u in roles:
            r = cands[role].rate[u, trace_w]
            if not np.any(r > 0):
                return
            rates.append(r)
            levels.append(np.unique(np.ceil(lam[r > 0] / r[r > 0])))
        grids = np.meshgrid(*levels, indexing="ij")  # [L_1, (L_2)] replica counts per role
        cap = np.full(grids[0].shape + (n_t,), np.inf)
        gpus = np.zeros(grids[0].shape)
        for (role, u), n, r in zip(roles, grids, rates):
            cap = np.minimum(cap, n[..., None] * r)
            gpus = gpus + n * cands[role].gpus[u]
        served = np.minimum(lam, cap)
        ok = (gpus <= cluster) & (served.sum(-1) >= attainment * demand * (1.0 - 1e-12))
        if not ok.any():
            return
        value = np.where(ok, (served * osl).sum(-1) / (gpus * n_t), -np.inf)
        k = np.unravel_index(int(np.argmax(value)), value.shape)
        if value[k] > best[0]:
            config = {ru: int(n[k]) for ru, n in zip(roles, grids)}
            best = (float(value[k]), (config, float(gpus[k]), float(served[k].sum() / demand)))

    if "prefill" in cands:
        for i in range(len(cands["prefill"].rows)):
            for j in range(len(cands["decode"].rows)):
                consider((("prefill", i), ("decode", j)))
    if "colocated" in cands:
        for i in range(len(cands["colocated"].rows)):
            consider((("colocated", i),))
    return best


def _reloaded(cands, old: dict, new: dict) -> float:
    """GPUs that load a replica when going from configuration `old` to `new`."""
    return float(sum(max(0, n - old.get(ru, 0)) * cands[ru[0]].gpus[ru[1]] for ru, n in new.items()))


def elastic_scaling(model: ModelSpec, hw: HardwareSpec, trace: Trace, *, space: SearchSpace | None = None,
                    params=None, ttft_limit_s: float = 10.0, ttl_limit_s: float = 0.02,
                    reprovision_s: float = 60.0, max_cluster_gpus: int = 2048, attainment: float = 1.0,
                    top_k: int = 32, progress: bool = False, candidates: dict | None = None) -> ElasticResult:
    """Per-interval pool sizes and layouts for a trace, against the best static configuration.

    Args:
      model, hw: the model and hardware (params: efficiencies, default the datasheet roofline).
      trace: `traffic_trace` output.
      space: the layout space (default `SearchSpace()` with a 1% batch grid to 4096).
      ttft_limit_s, ttl_limit_s: the SLA.
      reprovision_s: seconds a re-provisioned replica's GPUs load before serving (source: estimate;
        weights over host links take seconds, engine start-up and graph capture tens of seconds).
      max_cluster_gpus: GPUs available to the deployment.
      attainment: share of requests the static configuration must serve within the SLA.
      top_k: configurations kept per interval in the dynamic program.
      candidates: `elastic_candidates(...)` of the same trace, space and SLA (computed when None).

    Returns:
      `ElasticResult`.

    Raises:
      ValueError: an interval whose demand no configuration serves within the SLA and the cluster.
    """
    _, trace_w = _workloads(trace)
    lam, osl, dt = np.asarray(trace.arrival_rate_per_s, np.float64), np.asarray(trace.osl, np.float64), trace.interval_s
    cands = candidates if candidates is not None else elastic_candidates(
        model, hw, trace, space=space, params=params, ttft_limit_s=ttft_limit_s, ttl_limit_s=ttl_limit_s,
        progress=progress)
    static_value, static = _best_static(cands, trace_w, lam, osl, max_cluster_gpus, attainment)
    states = []
    for t, (w, l) in enumerate(zip(trace_w, lam)):
        cfgs = _interval_configs(cands, int(w), float(l), max_cluster_gpus, top_k)
        if static is not None and attainment >= 1.0:
            cfgs.append((float(static[1]), static[0]))  # staying static is always an option
        if not cfgs:
            raise ValueError(f"interval {t} (λ={l:.3g} req/s, ISL={trace.isl[t]}, OSL={trace.osl[t]}): no "
                             f"configuration of {model.name} serves it within TTFT ≤ {ttft_limit_s:g} s, "
                             f"TTL ≤ {ttl_limit_s:g} s on ≤ {max_cluster_gpus} GPUs")
        states.append(cfgs)
    # dynamic program: cost[t][k] = min GPU-seconds up to t ending in configuration k
    cost, back = [np.asarray([g * dt for g, _ in states[0]])], []
    for t in range(1, len(states)):
        trans = np.asarray([[reprovision_s * _reloaded(cands, a, b) for _, a in states[t - 1]] for _, b in states[t]])
        total = cost[-1][None, :] + trans
        back.append(np.argmin(total, 1))
        cost.append(total.min(1) + np.asarray([g * dt for g, _ in states[t]]))
    k = int(np.argmin(cost[-1]))
    path = [k]
    for b in reversed(back):
        path.append(int(b[path[-1]]))
    path.reverse()
    plan, reload_gpus = [], 0.0
    for t, k in enumerate(path):
        g, cfg = states[t][k]
        reload = _reloaded(cands, states[t - 1][path[t - 1]][1], cfg) if t else 0.0
        reload_gpus += reload
        entry = {"t_s": float(trace.t_s[t]), "arrival_rate_per_s": float(lam[t]), "isl": int(trace.isl[t]),
                 "osl": int(trace.osl[t]),
                 "mode": "colocated" if any(r == "colocated" for r, _ in cfg) else "disaggregated",
                 "gpus": int(g), "reloaded_gpus": int(reload)}
        for (role, u), n in cfg.items():
            entry[role] = (n, _layout(cands[role].rows[u], cands[role].family[u]))
        plan.append(entry)
    tokens = float(np.sum(lam * osl) * dt)
    gpu_s = float(sum(p["gpus"] for p in plan) * dt)
    reprov = reprovision_s * reload_gpus
    goodput = tokens / (gpu_s + reprov)
    static_info = {}
    if static is not None:
        config, gpus, att = static
        static_info = {"gpus": int(gpus), "attainment": att,
                       **{role: (n, _layout(cands[role].rows[u], cands[role].family[u]))
                          for (role, u), n in config.items()}}
    return ElasticResult(goodput, static_value, goodput / static_value if static_value else math.inf, gpu_s, reprov,
                         tokens, plan, static_info, {r: len(c.rows) for r, c in cands.items()})


# ------------------------------------------------------------------------------------------ report

def _fmt_layout(n_lay) -> str:
    n, d = n_lay
    s = (f"{n}×{d['family']}(tpa{d['tpa']} kvp{d['kvp']} dp{d['dp_attn']} tpf{d['tpf']} ep{d['ep']} pp{d['pp']} "
         f"B{d['batch']}")
    return s + (f" c{d['chunk']}" if d.get("chunk") else "") + ")"


def main(argv=None) -> None:
    """Print the rate-matching table and the elastic-scaling study (python -m perfmodel.ratematch)."""
    import argparse
    import time

    from .presets import get_hardware, get_model

    parser = argparse.ArgumentParser(prog="python -m perfmodel.ratematch", description=main.__doc__)
    parser.add_argument("--model", default="llama-3.1-70b")
    parser.add_argument("--hardware", default="gb200-nvl72")
    parser.add_argument("--seed", type=int, default=0, help="traffic trace seed")
    parser.add_argument("--rate", type=float, default=200.0, help="mean arrival rate, requests/s")
    parser.add_argument("--quick", action="store_true", help="a 20-minute trace, one rate-matching mix")
    args = parser.parse_args(argv)
    model, hw = get_model(args.model), get_hardware(args.hardware)
    t0 = time.perf_counter()
    targets = (0.005, 0.01, 0.02, 0.05, 0.1)
    print(f"## Rate matching, {model.name} on {hw.name} (TTFT ≤ 10 s; tokens/s/GPU, fluid pools)\n")
    print("| ISL/OSL | TTL ≤ ms | α* | rate-matched | α = 0.5 | α = 3.5 | co-located "
          "| best of α = 0.5, 3.5 vs rate-matched |")
    print("|---|---|---|---|---|---|---|---|")
    mixes = ((8192, 256),) if args.quick else ((8192, 256), (2048, 2048), (512, 4096))
    for isl, osl in mixes:
        case = Case(model, hw, Workload(isl, osl, ttft_limit_s=10.0))
        for r in rate_matching(case, targets):
            f5, f35 = r["fixed"][0.5], r["fixed"][3.5]
            rel = max(f5, f35) / r["rate_matched"] if r["rate_matched"] else math.nan
            print(f"| {isl}/{osl} | {r['ttl_limit_s'] * 1e3:g} | {r['alpha']:.2f} | {r['rate_matched']:.1f} "
                  f"| {f5:.1f} | "
                  f"{f35:.1f} | {r['colocated']:.1f} | {rel:.3f} |", flush=True)
    trace = traffic_trace(args.seed, duration_s=1200.0 if args.quick else 3600.0, mean_rate_per_s=args.rate)
    print(f"\n## Elastic scaling, {model.name}: traffic_trace(seed={args.seed}, mean {args.rate:g} req/s, "
          f"{len(trace.t_s)} intervals of {trace.interval_s:g} s), TTFT ≤ 10 s, TTL ≤ 20 ms\n")
    cands = elastic_candidates(model, hw, trace, ttft_limit_s=10.0, ttl_limit_s=0.02)
    print("| re-provisioning s | static attainment | elastic goodput/GPU | best static goodput/GPU | ratio | "
          "re-provisioning share of GPU-s |")
    print("|---|---|---|---|---|---|")
    results = {}
    for reprov in (0.0, 60.0, 300.0):
        for att in (1.0, 0.95):
            res = elastic_scaling(model, hw, trace, ttft_limit_s=10.0, ttl_limit_s=0.02, reprovision_s=reprov,
                                  attainment=att, candidates=cands)
            results[(reprov, att)] = res
            share = res.reprovision_gpu_seconds / (res.gpu_seconds + res.reprovision_gpu_seconds)
            print(f"| {reprov:g} | {att:g} | {res.goodput_per_gpu:.1f} | {res.static_goodput_per_gpu:.1f} | "
                  f"{res.ratio:.2f}× | {100 * share:.1f}% |", flush=True)
    res = results[(60.0, 1.0)]
    print(f"\nplan at 60 s re-provisioning (static: {res.static['gpus']} GPUs, "
          + ", ".join(_fmt_layout(v) for k, v in res.static.items() if k in _ROLES) + ")\n")
    print("| t min | λ req/s | ISL/OSL | GPUs | reloaded | configuration |")
    print("|---|---|---|---|---|---|")
    for p in res.plan:
        cfg = ", ".join(f"{r[0].upper()} {_fmt_layout(p[r])}" for r in _ROLES if r in p)
        print(f"| {p['t_s'] / 60:g} | {p['arrival_rate_per_s']:.1f} | {p['isl']}/{p['osl']} | {p['gpus']} | "
              f"{p['reloaded_gpus']} | {cfg} |")
    print(f"\n(candidates {res.candidates}; {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
