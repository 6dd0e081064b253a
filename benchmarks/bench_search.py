"""Gradient search against exhaustive search: optimum gap and model evaluations, 18 cases.

    python benchmarks/bench_search.py [--quick] [--starts 24] [--steps 100] [--no-sweep]

Cases (GB200-NVL72, MXFP4 weights, MXFP8 KV/activations/communication, ≤ 64 GPUs per replica,
≤ 144 GPUs per system, co-located and disaggregated serving):
  models     Llama-3.1-70B, Llama-3.1-405B, DeepSeek-R1
  workloads  prefill-heavy ISL 8192 / OSL 256, decode-heavy 512 / 4096 (TTFT ≤ 10 s, the
             disaggregation paper's cut), 1M-token context 1,000,000 / 8192 (TTFT ≤ 60 s)
  SLAs       TTL ≤ 10 ms (100 tokens/s/user) and TTL ≤ 50 ms (20 tokens/s/user)
Batch grids: every integer to 100, then 1% steps, to 4096 (1M context: to 512).

Per case: the exhaustive optimum (serving mode, tokens/s/GPU), gradient search's best feasible
design, the gap 1 − gradient/exhaustive, the model evaluations of each (exhaustive: every design
point; gradient: starts × steps per pool + every rounded and polished point), and wall times
(exhaustive: costing its tables, which both SLAs of a workload share, plus the search over them;
gradient: first case of each model and grid includes compiling the optimizer, marked *).
"Rounded gap": the best rounded start (snapped, with its batch search) before the hill climb.
Ablation: the same rounding and polish from the same random starts without any gradient step
(what the relaxation contributes). Then an SLA sweep from warm starts against the exhaustive
frontier. The last line is one JSON object with the headline figures.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from perfmodel import Workload, get_hardware, get_model
from perfmodel.search import (
    Case, SearchSpace, batch_grid, exhaustive_search, gradient_search, phase_tables, sla_sweep,
)
from perfmodel.serving import envelope

MODELS = ("llama-3.1-70b", "llama-3.1-405b", "deepseek-r1")
WORKLOADS = {  # name: (ISL, OSL, TTFT limit s, max decode batch)
    "prefill-heavy": (8192, 256, 10.0, 4096),
    "decode-heavy": (512, 4096, 10.0, 4096),
    "1M-context": (1_000_000, 8192, 60.0, 512),
}
TTL_LIMITS_S = (0.010, 0.050)


def _layout(d: dict | None) -> str:
    if d is None:
        return "-"
    s = (f"{d['family']} tpa{d['tpa']} kvp{d['kvp']} dp{d['dp_attn']} tpf{d['tpf']} ep{d['ep']} pp{d['pp']} "
         f"B{d['batch']}")
    return s + (f" mb{d['microbatches']}" if d["microbatches"] > 1 else "") + (f" c{d['chunk']}" if d["chunk"] else "")


def _design(d) -> str:
    if d.mode == "colocated":
        return f"co {d.tokens_per_s_per_gpu:9.2f} [{_layout(d.decode)}]"
    return (f"dis {d.tokens_per_s_per_gpu:9.2f} [P {d.n_prefill}×({_layout(d.prefill)}) "
            f"D {d.n_decode}×({_layout(d.decode)})]")


def run_cases(models, workloads, ttl_limits, *, starts: int, steps: int):
    hw = get_hardware("gb200-nvl72")
    rows, compiled = [], set()
    print("| case | exhaustive optimum tokens/s/GPU [design] | gradient best tokens/s/GPU [design] | gap % "
          "| evals exhaustive | evals gradient | fraction | wall exh s | wall grad s | gradient rounded gap % "
          "| no-gradient ablation: gap % / rounded gap % / evals |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for model_name in models:
        model = get_model(model_name)
        for wname in workloads:
            isl, osl, ttft, max_batch = WORKLOADS[wname]
            space = SearchSpace(decode_batches=batch_grid(max_batch))
            base = Case(model, hw, Workload(isl, osl, ttft_limit_s=ttft), space)
            t0 = time.perf_counter()
            tables = phase_tables(base, progress=True)
            t_tables = time.perf_counter() - t0
            for ttl in ttl_limits:
                case = base.with_ttl(ttl)
                name = f"{model_name} {wname} TTL≤{ttl * 1e3:g}ms"
                ex = exhaustive_search(case, tables=tables)
                t_ex = t_tables + ex.wall_s
                key = (model_name, max_batch)
                gr = gradient_search(case, starts=starts, steps=steps)
                ab = gradient_search(case, starts=starts, steps=0)  # ablation: the same rounding and polish
                star = "" if key in compiled else "*"
                compiled.add(key)
                gap = 100.0 * (1.0 - gr.best.tokens_per_s_per_gpu / ex.best.tokens_per_s_per_gpu)
                gap_ab = 100.0 * (1.0 - ab.best.tokens_per_s_per_gpu / ex.best.tokens_per_s_per_gpu)
                e = ex.best.tokens_per_s_per_gpu
                rgap, rgap_ab = (100.0 * (1.0 - r.details["rounded_tokens_per_s_per_gpu"] / e) for r in (gr, ab))
                frac = gr.evaluations / ex.evaluations
                rows.append(dict(case=name, exhaustive=ex.best.tokens_per_s_per_gpu,
                                 gradient=gr.best.tokens_per_s_per_gpu,
                                 gap_pct=gap, evals_exhaustive=ex.evaluations, evals_gradient=gr.evaluations,
                                 fraction=frac, wall_exhaustive_s=t_ex, wall_gradient_s=gr.wall_s,
                                 includes_compile=bool(star), mode_exhaustive=ex.best.mode, mode_gradient=gr.best.mode,
                                 gap_polish_only_pct=gap_ab, evals_polish_only=ab.evaluations,
                                 rounded_gap_pct=rgap, rounded_gap_polish_only_pct=rgap_ab,
                                 evals_gradient_detail=gr.details["evaluations"]))
                print(f"| {name} | {_design(ex.best)} | {_design(gr.best)} | {gap:.2f} | {ex.evaluations:,} | "
                      f"{gr.evaluations:,} | {100 * frac:.2f}% | {t_ex:.1f} | {gr.wall_s:.1f}{star} | {rgap:.2f} | "
                      f"{gap_ab:.2f} / {rgap_ab:.2f} / {ab.evaluations:,} |", flush=True)
    return rows


def run_sweep(model_name: str, wname: str, targets_s, *, starts: int, steps: int, warm_steps: int):
    """SLA sweep from warm starts (loose → tight) against the exhaustive frontier."""
    isl, osl, ttft, max_batch = WORKLOADS[wname]
    case = Case(get_model(model_name), get_hardware("gb200-nvl72"), Workload(isl, osl, ttft_limit_s=ttft),
                SearchSpace(decode_batches=batch_grid(max_batch)))
    tables = phase_tables(case)
    ex = exhaustive_search(case, tables=tables)
    x, y = ex.frontier
    t0 = time.perf_counter()
    results = sla_sweep(case, targets_s, starts=starts, steps=steps, warm_steps=warm_steps)
    wall = time.perf_counter() - t0
    print(f"\nSLA sweep, {model_name} {wname}: gradient search from warm starts vs the exhaustive frontier")
    print("| TTL limit ms | exhaustive tokens/s/GPU | gradient tokens/s/GPU | gap % | gradient evals |")
    print("|---|---|---|---|---|")
    gaps, evals = [], 0
    for ttl, r in zip(targets_s, results):
        want = float(envelope(x, y, 1.0 / ttl))
        gap = 100.0 * (1.0 - r.best.tokens_per_s_per_gpu / want)
        gaps.append(gap)
        evals += r.evaluations
        print(f"| {ttl * 1e3:g} | {want:.2f} | {r.best.tokens_per_s_per_gpu:.2f} | {gap:.2f} | {r.evaluations:,} |")
    print(f"sweep: {len(targets_s)} targets, {evals:,} gradient evaluations in all vs {ex.evaluations:,} for the "
          f"exhaustive frontier ({100 * evals / ex.evaluations:.2f}%), {wall:.1f} s")
    return dict(case=f"{model_name} {wname}", targets_ms=[t * 1e3 for t in targets_s], gaps_pct=gaps,
                evals_gradient=evals, evals_exhaustive=ex.evaluations)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Llama-3.1-70B only (6 cases)")
    parser.add_argument("--starts", type=int, default=24)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--no-sweep", action="store_true")
    args = parser.parse_args(argv)
    models = MODELS[:1] if args.quick else MODELS
    t0 = time.perf_counter()
    rows = run_cases(models, tuple(WORKLOADS), TTL_LIMITS_S, starts=args.starts, steps=args.steps)
    sweep = None
    if not args.no_sweep:
        sweep = run_sweep("llama-3.1-70b", "decode-heavy", (0.05, 0.03, 0.02, 0.01, 0.005, 0.003),
                          starts=args.starts, steps=args.steps, warm_steps=40)
    gaps = np.asarray([r["gap_pct"] for r in rows])
    fracs = np.asarray([r["fraction"] for r in rows])
    within = gaps <= 2.0
    timed = [r for r in rows if not r["includes_compile"]]
    headline = {
        "bench": "search", "n_cases": len(rows), "cases_within_2pct": int(within.sum()),
        "frac_cases_within_2pct": float(within.mean()), "median_gap_pct": float(np.median(gaps)),
        "max_gap_pct": float(gaps.max()), "median_eval_fraction": float(np.median(fracs)),
        "max_eval_fraction": float(fracs.max()),
        "cases_within_2pct_and_5pct_evals": int((within & (fracs <= 0.05)).sum()),
        "target_met": bool(within.mean() >= 0.9 and fracs.max() <= 0.05),
        "median_wall_ratio_gradient_over_exhaustive_excl_compile": float(np.median(
            [r["wall_gradient_s"] / r["wall_exhaustive_s"] for r in timed])) if timed else None,
        "ablation_no_gradient_cases_within_2pct": int(sum(r["gap_polish_only_pct"] <= 2.0 for r in rows)),
        "ablation_no_gradient_median_gap_pct": float(np.median([r["gap_polish_only_pct"] for r in rows])),
        "ablation_no_gradient_max_gap_pct": float(max(r["gap_polish_only_pct"] for r in rows)),
        "ablation_no_gradient_median_evals": float(np.median([r["evals_polish_only"] for r in rows])),
        "median_evals_gradient": float(np.median([r["evals_gradient"] for r in rows])),
        "rounded_gap_pct_gradient_median_max": [float(np.median([r["rounded_gap_pct"] for r in rows])),
                                                float(max(r["rounded_gap_pct"] for r in rows))],
        "rounded_gap_pct_no_gradient_median_max": [float(np.median([r["rounded_gap_polish_only_pct"] for r in rows])),
                                                   float(max(r["rounded_gap_polish_only_pct"] for r in rows))],
        "sweep_max_gap_pct": None if sweep is None else float(max(sweep["gaps_pct"])),
        "sweep_eval_fraction": None if sweep is None else sweep["evals_gradient"] / sweep["evals_exhaustive"],
        "starts": args.starts, "steps": args.steps, "wall_s": time.perf_counter() - t0,
    }
    print(json.dumps(headline))


if __name__ == "__main__":
    main()
