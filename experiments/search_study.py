"""Gradient search against exhaustive search over the serving-layout space (perfmodel.search).

For each case — model × workload × TTL limit on GB200-NVL72 (MXFP4 weights, MXFP8 KV, activations and
communication; ≤ 64 GPUs per replica, ≤ 144 per system; co-located and disaggregated serving) — the
exhaustive search costs every discrete design (`perfmodel.search.exhaustive_search`: prefill, decode
and co-located tables, exact integer pool sizes) and the gradient search optimizes the continuous
relaxation from many starts, rounds and polishes (`perfmodel.search.gradient_search`). Reported per
case: both optima (tokens/s/GPU and the design), the gap 1 − gradient/exhaustive, the model
evaluations each used and their ratio, wall times. Then an SLA sweep (`perfmodel.search.sla_sweep`,
warm starts from loose to tight TTL) against the exhaustive frontier.

Targets (the search issue): within 2% of the exhaustive optimum on ≥ 90% of cases with ≤ 5% of the
evaluations. Cases are the benchmark set of `benchmarks/bench_search.py` (Llama-3.1-70B, -405B,
DeepSeek-R1 × prefill-heavy, decode-heavy, 1M-token context × TTL ≤ 10 and 50 ms).
Runtime on 2 shared CPU cores (docs/experiments.md): --quick 20–50 s, full mode about 3.5 minutes.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from perfmodel import Workload, format_bits, get_model
from perfmodel.search import Case, SearchSpace, batch_grid, exhaustive_search, gradient_search, phase_tables, sla_sweep
from perfmodel.serving import envelope

from .calibration import resolve_hardware
from .helix_pareto import tidy_pareto
from .results import ResultsDir

# name: (ISL, OSL, TTFT limit s, max decode batch). source: benchmarks/bench_search.py (the issue's set).
WORKLOADS = {
    "prefill-heavy": (8192, 256, 10.0, 4096),
    "decode-heavy": (512, 4096, 10.0, 4096),
    "1M-context": (1_000_000, 8192, 60.0, 512),
}


@dataclasses.dataclass(frozen=True)
class Config:
    """Cases and search settings; the defaults are full mode (about 3.5 minutes on 2 shared CPU cores).

    Attributes:
      seed: seeds the gradient search's random starts.
      hardware: a fitted profile JSON replacing `preset` (None: the preset's datasheet).
      preset: hardware preset.
      models: model presets.
      workloads: names of `WORKLOADS`.
      ttl_limits_ms: TTL limits of the cases (ms).
      batch_step: relative step of the decode batch grid (integers first, then geometric).
      max_gpus, max_total_gpus: GPUs per replica (power of two) and per system.
      prefill_batches, pp_options, chunks, modes: the rest of the `perfmodel.search.SearchSpace`.
      starts, steps: gradient search starts (per serving mode) and Adam steps.
      sweep_model, sweep_workload, sweep_ttl_ms, warm_steps: the SLA sweep (empty sweep_ttl_ms: none).
    """

    seed: int = 0
    hardware: str | None = None
    preset: str = "gb200-nvl72"
    models: tuple[str, ...] = ("llama-3.1-70b", "llama-3.1-405b", "deepseek-r1")
    workloads: tuple[str, ...] = tuple(WORKLOADS)
    ttl_limits_ms: tuple[float, ...] = (10.0, 50.0)
    batch_step: float = 0.01
    max_gpus: int = 64
    max_total_gpus: int = 144
    prefill_batches: tuple[int, ...] = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
    pp_options: tuple[int, ...] = (1, 2, 4, 8)
    chunks: tuple[int, ...] = (0, 2048, 8192)
    modes: tuple[str, ...] = ("disaggregated", "colocated")
    starts: int = 24
    steps: int = 100
    sweep_model: str = "llama-3.1-70b"
    sweep_workload: str = "decode-heavy"
    sweep_ttl_ms: tuple[float, ...] = (50.0, 30.0, 20.0, 10.0, 5.0, 3.0)
    warm_steps: int = 40

    def __post_init__(self):
        if not self.models or not self.workloads or not self.ttl_limits_ms:
            raise ValueError("models, workloads and ttl_limits_ms must be non-empty")
        for m in (*self.models, self.sweep_model):
            get_model(m)
        bad = sorted(set(self.workloads) - set(WORKLOADS)) + ([self.sweep_workload] if self.sweep_workload not in WORKLOADS else [])
        if bad:
            raise ValueError(f"unknown workloads {bad}; valid: {', '.join(WORKLOADS)}")
        if min((*self.ttl_limits_ms, *self.sweep_ttl_ms)) <= 0:
            raise ValueError(f"TTL limits must be > 0: {self.ttl_limits_ms}, {self.sweep_ttl_ms}")
        if self.starts < 1 or self.steps < 1 or self.warm_steps < 1:
            raise ValueError(f"starts={self.starts}, steps={self.steps}, warm_steps={self.warm_steps} must be >= 1")
        self.space("prefill-heavy")  # SearchSpace validates the rest

    def space(self, workload: str) -> SearchSpace:
        return SearchSpace(max_gpus=self.max_gpus, max_total_gpus=self.max_total_gpus,
                           decode_batches=batch_grid(WORKLOADS[workload][3], self.batch_step),
                           prefill_batches=self.prefill_batches, pp_options=self.pp_options, chunks=self.chunks,
                           modes=self.modes)


# --quick: Llama-3.1-70B on two workloads (4 cases), a 5% batch grid, fewer starts and steps, a 3-target sweep.
QUICK = {"models": ("llama-3.1-70b",), "workloads": ("prefill-heavy", "decode-heavy"), "batch_step": 0.05,
         "starts": 16, "steps": 60, "sweep_ttl_ms": (50.0, 20.0, 5.0), "warm_steps": 60}


def _design(d) -> str:
    def lay(x):
        s = (f"{x['family']} tpa{x['tpa']} kvp{x['kvp']} dp{x['dp_attn']} tpf{x['tpf']} ep{x['ep']} "
             f"pp{x['pp']} B{x['batch']}")
        return s + (f" mb{x['microbatches']}" if x["microbatches"] > 1 else "") + (f" c{x['chunk']}" if x["chunk"] else "")
    if d.mode == "colocated":
        return f"co [{lay(d.decode)}]"
    return f"dis [P {d.n_prefill}×({lay(d.prefill)}) D {d.n_decode}×({lay(d.decode)})]"


def _case(config: Config, model: str, workload: str):
    hw, params, _ = resolve_hardware(config.hardware, config.preset, format_bits("mxfp8_e4m3"))
    isl, osl, ttft, _ = WORKLOADS[workload]
    return Case(get_model(model), hw, Workload(isl, osl, ttft_limit_s=ttft), config.space(workload), params,
                name=f"{model} {workload}")


def search_cases(config: Config, model: str, workload: str) -> dict:
    """Exhaustive and gradient search of one (model, workload) at every TTL limit (tables shared)."""
    base = _case(config, model, workload)
    start = time.perf_counter()
    tables = phase_tables(base, progress=True)  # shared by every TTL limit (the tables do not depend on the SLA)
    t_tables = time.perf_counter() - start
    rows = []
    for ttl_ms in config.ttl_limits_ms:
        case = base.with_ttl(ttl_ms / 1e3)
        ex = exhaustive_search(case, tables=tables)
        gr = gradient_search(case, starts=config.starts, steps=config.steps, seed=config.seed)
        e, g = ex.best.tokens_per_s_per_gpu, gr.best.tokens_per_s_per_gpu
        rows.append({"model": model, "workload": workload, "ttl_ms": ttl_ms, "exhaustive": e, "gradient": g,
                     "gap_pct": 100.0 * (1.0 - g / e), "evals_exhaustive": ex.evaluations,
                     "evals_gradient": gr.evaluations, "eval_fraction": gr.evaluations / ex.evaluations,
                     "wall_exhaustive_s": ex.wall_s + t_tables, "wall_gradient_s": gr.wall_s,
                     "mode_exhaustive": ex.best.mode, "mode_gradient": gr.best.mode,
                     "design_exhaustive": _design(ex.best), "design_gradient": _design(gr.best),
                     "evals_gradient_detail": gr.details["evaluations"]})
    return {"cases": rows}


def sla_sweep_study(config: Config) -> dict:
    """Gradient search along the TTL targets from warm starts against the exhaustive frontier."""
    case = _case(config, config.sweep_model, config.sweep_workload)
    tables = phase_tables(case, progress=True)
    ex = exhaustive_search(case, tables=tables)
    x, y = ex.frontier
    results = sla_sweep(case, [t / 1e3 for t in config.sweep_ttl_ms], starts=config.starts, steps=config.steps,
                        warm_steps=config.warm_steps, seed=config.seed)
    points = []
    for ttl_ms, r in zip(config.sweep_ttl_ms, results):
        want = float(envelope(x, y, 1e3 / ttl_ms))
        points.append({"ttl_ms": ttl_ms, "exhaustive": want, "gradient": r.best.tokens_per_s_per_gpu,
                       "gradient_tokens_per_s_per_user": r.best.tokens_per_s_per_user,
                       "gap_pct": 100.0 * (1.0 - r.best.tokens_per_s_per_gpu / want), "evals_gradient": r.evaluations,
                       "design_gradient": _design(r.best)})
    return {"case": case.name, "frontier_x": np.asarray(x).tolist(), "frontier_y": np.asarray(y).tolist(),
            "evals_exhaustive": ex.evaluations, "points": points}


def plot(cases: list[dict], sweep: dict | None) -> Figure:
    """Left: gap against evaluation fraction per case (target box shaded). Right: the SLA sweep."""
    fig = Figure(figsize=(12.5 if sweep else 6.5, 5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 2 if sweep else 1, 1)
    ax.axvspan(0, 5, ymin=0, ymax=1, color="green", alpha=0.06)
    models = list(dict.fromkeys(c["model"] for c in cases))
    marks = {w: m for w, m in zip(WORKLOADS, "os^")}
    for c in cases:
        ax.scatter(100 * c["eval_fraction"], max(c["gap_pct"], 0.0) + 1e-3, color=f"C{models.index(c['model'])}",
                   marker=marks[c["workload"]], s=40 if c["ttl_ms"] == min(x["ttl_ms"] for x in cases) else 70,
                   alpha=0.8, edgecolor="k", lw=0.4)
    ax.axhline(2.0, color="gray", ls="--", lw=0.8)
    ax.axvline(5.0, color="gray", ls="--", lw=0.8)
    ax.set_yscale("symlog", linthresh=0.1)
    ax.set_ylim(-0.03, max(10.0, 2 * max(c["gap_pct"] for c in cases)))
    ax.set_xscale("log")
    ax.set_xlim(min(0.1, 50 * min(c["eval_fraction"] for c in cases)), max(100.0, 200 * max(c["eval_fraction"] for c in cases)))
    ax.set_xlabel("gradient-search evaluations, % of exhaustive")
    ax.set_ylabel("gap to the exhaustive optimum, % (0 = found it)")
    ax.set_title("Per case (green: ≤ 5% of the evaluations; dashed: 2% gap)", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], ls="", marker="o", color=f"C{i}", label=m) for i, m in enumerate(models)]
    handles += [Line2D([], [], ls="", marker=marks[w], color="gray", label=w)
                for w in WORKLOADS if any(c["workload"] == w for c in cases)]
    ax.legend(handles=handles, fontsize=8, title="small marker: tighter TTL", title_fontsize=7)
    if sweep:
        ax2 = fig.add_subplot(1, 2, 2)
        ax2.step(sweep["frontier_x"], sweep["frontier_y"], where="post", color="k", lw=1.5,
                 label=f"exhaustive frontier ({sweep['evals_exhaustive']:,} evaluations)")
        px = [p["gradient_tokens_per_s_per_user"] for p in sweep["points"]]
        ax2.scatter(px, [p["gradient"] for p in sweep["points"]], color="C3", zorder=3, s=40,
                    label=f"gradient search per TTL target ({sum(p['evals_gradient'] for p in sweep['points']):,} "
                          "evaluations in all; dotted: the targets)")
        groups: dict = {}  # targets whose designs coincide share one label
        for p, xv in zip(sweep["points"], px):
            ax2.axvline(1e3 / p["ttl_ms"], color="C3", lw=0.5, ls=":")
            groups.setdefault((xv, p["gradient"]), []).append(p)
        for (xv, yv), ps in groups.items():
            ttls = ", ".join(f"{p['ttl_ms']:g}" for p in ps)
            ax2.annotate(f"TTL ≤ {ttls} ms\ngap " + ", ".join(f"{p['gap_pct']:.1f}%" for p in ps), (xv, yv),
                         xytext=(4, -20),
                         textcoords="offset points", fontsize=7, color="C3")
        ax2.set_xscale("log")
        ax2.set_yscale("log")
        ax2.set_xlabel("tokens/s/user (1 / TTL)")
        ax2.set_ylabel("tokens/s/GPU")
        ax2.set_title(f"SLA sweep from warm starts: {sweep['case']}", fontsize=10)
        ax2.grid(True, which="both", alpha=0.3)
        ax2.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    return tidy_pareto(fig)


def run(config: Config, out: ResultsDir) -> dict:
    """All cases (resumable per model × workload), the SLA sweep, search_cases.csv, search.png, summary.md."""
    items = [(m, w) for m in config.models for w in config.workloads]
    done = out.sweep("cases", items, lambda chunk: [search_cases(config, m, w) for m, w in chunk], key="/".join,
                     desc="search cases")
    cases = [c for row in done for c in row["cases"]]
    sweep = None
    if config.sweep_ttl_ms:
        sweep = out.sweep("sla_sweep", ["sweep"], lambda chunk: [sla_sweep_study(config)], desc="SLA sweep")[0]
        out.write_csv("sla_sweep.csv", sweep["points"])
    out.write_csv("search_cases.csv", [{k: v for k, v in c.items() if k != "evals_gradient_detail"} for c in cases])
    out.save_figure("search.png", plot(cases, sweep))
    gaps = np.asarray([c["gap_pct"] for c in cases])
    fracs = np.asarray([c["eval_fraction"] for c in cases])
    within = gaps <= 2.0
    head = {"n_cases": len(cases), "cases_within_2pct": int(within.sum()), "frac_cases_within_2pct": float(within.mean()),
            "median_gap_pct": float(np.median(gaps)), "max_gap_pct": float(gaps.max()),
            "median_eval_fraction": float(np.median(fracs)), "max_eval_fraction": float(fracs.max()),
            "target_met": bool(within.mean() >= 0.9 and fracs.max() <= 0.05),
            "sweep_max_gap_pct": None if sweep is None else max(p["gap_pct"] for p in sweep["points"]),
            "sweep_eval_fraction": None if sweep is None else
            sum(p["evals_gradient"] for p in sweep["points"]) / sweep["evals_exhaustive"]}
    lines = ["# search: gradient vs exhaustive search", "",
             f"{len(cases)} cases; targets: within 2% on ≥ 90% of cases, ≤ 5% of the evaluations. "
             f"Reached: {head['cases_within_2pct']}/{len(cases)} within 2% (median gap {head['median_gap_pct']:.2f}%, "
             f"max {head['max_gap_pct']:.2f}%), evaluations {100 * head['median_eval_fraction']:.2f}% median, "
             f"{100 * head['max_eval_fraction']:.2f}% max — target {'met' if head['target_met'] else 'not met'}.", "",
             "| case | exhaustive tokens/s/GPU [design] | gradient tokens/s/GPU [design] | gap % | evals exhaustive "
             "| evals gradient | fraction | wall exh s | wall grad s |", "|---|---|---|---|---|---|---|---|---|"]
    for c in cases:
        lines.append(f"| {c['model']} {c['workload']} TTL≤{c['ttl_ms']:g}ms | {c['exhaustive']:.2f} "
                     f"{c['design_exhaustive']} | {c['gradient']:.2f} {c['design_gradient']} | {c['gap_pct']:.2f} | "
                     f"{c['evals_exhaustive']:,} | {c['evals_gradient']:,} | {100 * c['eval_fraction']:.2f}% | "
                     f"{c['wall_exhaustive_s']:.1f} | {c['wall_gradient_s']:.1f} |")
    lines += ["", "Wall times include compilation (the first gradient case of each model and batch grid compiles "
              "the optimizer). Exhaustive wall times include costing the tables, which the SLAs of one workload "
              "share (as benchmarks/bench_search.py counts them)."]
    if sweep:
        lines += ["", f"## SLA sweep: {sweep['case']}", "", "| TTL ≤ ms | exhaustive | gradient | gap % | evals |",
                  "|---|---|---|---|---|"]
        lines += [f"| {p['ttl_ms']:g} | {p['exhaustive']:.2f} | {p['gradient']:.2f} | {p['gap_pct']:.2f} | "
                  f"{p['evals_gradient']:,} |" for p in sweep["points"]]
        lines.append(f"\nWhole sweep: {100 * head['sweep_eval_fraction']:.2f}% of the exhaustive frontier's evaluations.")
    out.write_text("summary.md", "\n".join(lines) + "\n")
    return head
