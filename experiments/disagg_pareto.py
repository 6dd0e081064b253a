"""Co-located vs disaggregated serving across models and ISL/OSL mixes; rate matching α vs the TTL target.

For each model (Llama-3.1-8B/70B/405B, DeepSeek-R1) and request mix (prefill-heavy 8192/256, balanced
2048/2048, decode-heavy 512/4096) on GB200-NVL72, every discrete prefill, decode and co-located
layout is costed once (`perfmodel.search.phase_tables`: TP, DP attention + EP, Helix KVP, PP, batch,
chunked prefill). Then:

  * the Pareto frontiers of tokens/s/GPU against tokens/s/user (= 1/TTL) of co-located serving
    (chunked prefill piggybacked on decode) and of disaggregated serving (integer pool sizes,
    `perfmodel.search.exhaustive_search`), both under TTFT ≤ 10 s;
  * per TTL target, rate matching (`perfmodel.ratematch.rate_matching`): the prefill:decode GPU
    ratio α* = R_d/R_p that balances the pools, its tokens/s/GPU, fixed α = 0.5 and α = 3.5, and
    the best co-located configuration; the gain of disaggregation = rate-matched / co-located.

The paper's findings to check: disaggregation gains most for prefill-heavy traffic and large models
(little for 8B); the best α moves with the TTL target, so a fixed α = 3.5 loses at tight TTL and
α = 0.5 at loose TTL (or the reverse), while rate matching dominates both.

Reference: Beyond the Buzz, arXiv 2506.05508 §3–4. Pools are fluid in the rate-matching table (α
continuous, as in the paper's plots) and integer in the frontiers.
Runtime on 2 shared CPU cores (docs/experiments.md): --quick 25–40 s, full mode 1–1.5 minutes.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from perfmodel import Workload, format_bits, get_model
from perfmodel.ratematch import rate_matching
from perfmodel.search import Case, SearchSpace, batch_grid, exhaustive_search, phase_tables
from perfmodel.studies import MIXES

from . import plots
from .calibration import resolve_hardware
from .helix_pareto import layout_label, tidy_pareto
from .results import ResultsDir

MODELS = ("llama-3.1-8b", "llama-3.1-70b", "llama-3.1-405b", "deepseek-r1")


@dataclasses.dataclass(frozen=True)
class Config:
    """The grid; the defaults are full mode (1–1.5 minutes on 2 shared CPU cores).

    Attributes:
      seed: seeds the subsample of co-located points drawn in the Pareto plots.
      hardware: a fitted profile JSON replacing `preset` (None: the preset's datasheet).
      preset: hardware preset.
      models: model presets.
      mixes: names of `perfmodel.studies.MIXES` (ISL, OSL).
      ttft_limit_s: TTFT limit (the paper drops points above 10 s).
      ttl_targets_ms: TTL targets of the rate-matching table (ms; 1000/TTL tokens/s/user).
      max_gpus, max_total_gpus: GPUs per replica (power of two) and per system.
      max_batch, batch_step: decode batch grid 1..max_batch, integers then relative steps of batch_step.
      weight_format, kv_format, act_format, comm_format: numerics formats (bits per element).
      plot_points: co-located points drawn per Pareto plot besides the frontier.
    """

    seed: int = 0
    hardware: str | None = None
    preset: str = "gb200-nvl72"
    models: tuple[str, ...] = MODELS
    mixes: tuple[str, ...] = tuple(MIXES)
    ttft_limit_s: float = 10.0
    ttl_targets_ms: tuple[float, ...] = (5.0, 10.0, 20.0, 50.0, 100.0)
    max_gpus: int = 64
    max_total_gpus: int = 144
    max_batch: int = 4096
    batch_step: float = 0.01
    weight_format: str = "mxfp4_e2m1"
    kv_format: str = "mxfp8_e4m3"
    act_format: str = "mxfp8_e4m3"
    comm_format: str = "mxfp8_e4m3"
    plot_points: int = 3000

    def __post_init__(self):
        if not self.models or not self.mixes or not self.ttl_targets_ms:
            raise ValueError("models, mixes and ttl_targets_ms must be non-empty")
        for m in self.models:
            get_model(m)
        bad = sorted(set(self.mixes) - set(MIXES))
        if bad:
            raise ValueError(f"unknown mixes {bad}; valid: {', '.join(MIXES)}")
        if min(self.ttl_targets_ms) <= 0 or not self.ttft_limit_s > 0:
            raise ValueError(f"ttl_targets_ms={self.ttl_targets_ms} and ttft_limit_s={self.ttft_limit_s} must be > 0")
        self.space  # SearchSpace validates GPUs, grids and formats

    @property
    def space(self) -> SearchSpace:
        return SearchSpace(max_gpus=self.max_gpus, max_total_gpus=self.max_total_gpus,
                           decode_batches=batch_grid(self.max_batch, self.batch_step),
                           weight_format=self.weight_format, kv_format=self.kv_format,
                           act_format=self.act_format, comm_format=self.comm_format)


# --quick: two mixes (the two ends), a 10% batch grid.
QUICK = {"mixes": ("prefill-heavy", "decode-heavy"), "batch_step": 0.1, "plot_points": 1500}


def _frontier(case: Case, tables: dict, mode: str):
    """(x, y) frontier of one serving mode, or empty arrays when no design of it is feasible."""
    phases = ("colocated",) if mode == "colocated" else ("prefill", "decode")
    one = dataclasses.replace(case, space=dataclasses.replace(case.space, modes=(mode,)))
    try:
        x, y = exhaustive_search(one, tables={p: tables[p] for p in phases}).frontier
    except ValueError:
        return np.zeros(0), np.zeros(0)
    return np.asarray(x, np.float64), np.asarray(y, np.float64)


def _plot_data(tables: dict, osl: float, ttft_limit_s: float, dis, config: Config, rng) -> dict:
    """Co-located design points (frontier + sample) and the disaggregated frontier, with layout labels.

    A disaggregated frontier point sits at 1/TTL of its decode layout; its label is that decode
    layout (found by its TTL among the decode table's rows that fit in memory) and the pool ratio
    is not shown.
    """
    t = tables["colocated"]
    m = t.metrics
    ok = (m.mem_ratio <= 1.0) & (m.ttft_s <= ttft_limit_s)
    x, y = 1.0 / np.asarray(m.ttl_s, np.float64), np.asarray(m.rate_per_gpu, np.float64) * osl
    idx = np.flatnonzero(ok)
    out = {}
    if len(idx):
        front = idx[plots.pareto_front(x[idx], y[idx])]
        rest = np.setdiff1d(idx, front)
        rest = rng.choice(rest, min(len(rest), config.plot_points), replace=False) if len(rest) else rest
        keep = np.concatenate([front, rest])
        out["co-located"] = {"x": x[keep].tolist(), "y": y[keep].tolist(),
                             "labels": [layout_label(t.lay, int(i), str(t.family[i])) for i in keep]}
    if len(dis[0]):
        td = tables["decode"]
        dx = 1.0 / np.asarray(td.metrics.ttl_s, np.float64)
        fits = np.asarray(td.metrics.mem_ratio) <= 1.0
        labels = []
        for xv in dis[0]:
            cand = np.flatnonzero(fits & np.isclose(dx, xv, rtol=1e-6, atol=0.0))
            labels.append("D: " + layout_label(td.lay, int(cand[0]), str(td.family[cand[0]])) if len(cand) else "")
        out["disaggregated (rate-matched pools)"] = {"x": dis[0].tolist(), "y": dis[1].tolist(), "labels": labels}
    return out


def study_case(model_name: str, mix: str, config: Config, rng) -> dict:
    """One (model, mix): frontiers of both modes and the rate-matching rows per TTL target."""
    hw, params, label = resolve_hardware(config.hardware, config.preset, format_bits(config.act_format))
    isl, osl = MIXES[mix]
    case = Case(get_model(model_name), hw, Workload(isl, osl, ttft_limit_s=config.ttft_limit_s), config.space, params)
    tables = phase_tables(case, progress=True)
    targets = [t / 1e3 for t in config.ttl_targets_ms]
    rm = rate_matching(case, targets, tables=tables, alphas=(0.5, 3.5))
    co, dis = _frontier(case, tables, "colocated"), _frontier(case, tables, "disaggregated")
    rows = []
    for r in rm:
        rate, col = r["rate_matched"], r["colocated"]
        rows.append({"ttl_ms": 1e3 * r["ttl_limit_s"], "tokens_per_s_per_user": 1.0 / r["ttl_limit_s"],
                     "alpha": None if math.isnan(r["alpha"]) else r["alpha"],
                     "rate_matched": rate, "fixed_0.5": r["fixed"][0.5], "fixed_3.5": r["fixed"][3.5],
                     "colocated": col, "gain": rate / col if col > 0 else None,
                     "fixed_0.5_rel": r["fixed"][0.5] / rate if rate > 0 else None,
                     "fixed_3.5_rel": r["fixed"][3.5] / rate if rate > 0 else None})
    return {"model": model_name, "mix": mix, "isl": isl, "osl": osl, "hardware": label,
            "evaluations": {p: len(t.family) for p, t in tables.items()}, "targets": rows,
            "max_tokens_per_s_per_gpu": {"colocated": float(co[1].max()) if len(co[1]) else 0.0,
                                         "disaggregated": float(dis[1].max()) if len(dis[1]) else 0.0},
            "plot": _plot_data(tables, float(osl), config.ttft_limit_s, dis, config, rng)}


def plot_rate_matching(cases: list[dict], config: Config) -> Figure:
    """Per mix: α* against the TTL target (top); fixed α and co-located relative to rate-matched (bottom)."""
    mixes = [m for m in config.mixes if any(c["mix"] == m for c in cases)]
    fig = Figure(figsize=(4.6 * len(mixes), 7.8))
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, len(mixes), squeeze=False, sharex=True)
    colors = {m: f"C{i}" for i, m in enumerate(config.models)}
    for j, mix in enumerate(mixes):
        top, bottom = axes[0, j], axes[1, j]
        for c in (c for c in cases if c["mix"] == mix):
            t = c["targets"]
            ms = [r["ttl_ms"] for r in t]
            col = colors[c["model"]]
            top.plot(ms, [np.nan if r["alpha"] is None else r["alpha"] for r in t], "o-", color=col, label=c["model"])
            for key, style, name in (("fixed_0.5_rel", "--", "α = 0.5"), ("fixed_3.5_rel", ":", "α = 3.5")):
                bottom.plot(ms, [np.nan if r[key] is None else r[key] for r in t], style, marker=".", color=col)
            bottom.plot(ms, [r["colocated"] / r["rate_matched"] if r["rate_matched"] > 0 else np.nan for r in t],
                        "-.", marker="x", color=col)
        isl, osl = MIXES[mix]
        top.set_title(f"{mix} (ISL {isl} / OSL {osl})", fontsize=10)
        top.set_yscale("log")
        top.axhline(0.5, color="gray", lw=0.7, ls="--")
        top.axhline(3.5, color="gray", lw=0.7, ls=":")
        bottom.axhline(1.0, color="k", lw=0.7)
        for ax in (top, bottom):
            ax.set_xscale("log")
            ax.grid(True, which="both", alpha=0.3)
        bottom.set_xlabel("TTL target (ms; tokens/s/user = 1000 / TTL)")
        if j == 0:
            top.set_ylabel("rate-matched α* (prefill GPUs per decode GPU)")
            bottom.set_ylabel("tokens/s/GPU relative to rate-matched")
    from matplotlib.lines import Line2D

    axes[0, 0].legend(fontsize=8, title="model", title_fontsize=8)
    axes[1, 0].legend(handles=[Line2D([], [], ls="--", marker=".", color="k", label="fixed α = 0.5"),
                               Line2D([], [], ls=":", marker=".", color="k", label="fixed α = 3.5"),
                               Line2D([], [], ls="-.", marker="x", color="k", label="co-located")], fontsize=8)
    fig.suptitle(f"Rate matching vs fixed α on {cases[0]['hardware']} (TTFT ≤ {config.ttft_limit_s:g} s, fluid pools; "
                 "gray lines: α = 0.5 and 3.5)", fontsize=11)
    fig.tight_layout()
    return fig


def _fmt(v, spec=".2f", suffix=""):
    return "—" if v is None else f"{v:{spec}}{suffix}"


def run(config: Config, out: ResultsDir) -> dict:
    """Study every (model, mix); write rate_matching.csv, frontiers.csv, the plots and summary.md."""
    rng = np.random.default_rng(config.seed)
    items = [(m, mix) for m in config.models for mix in config.mixes]
    cases = out.sweep("cases", items, lambda chunk: [study_case(m, mix, config, rng) for m, mix in chunk],
                      key="/".join, desc="disaggregation cases")
    table = [{"model": c["model"], "mix": c["mix"], "isl": c["isl"], "osl": c["osl"], **r}
             for c in cases for r in c["targets"]]
    out.write_csv("rate_matching.csv", table)
    out.write_csv("frontiers.csv", [{"model": c["model"], "mix": c["mix"], "mode": mode, "tokens_per_s_per_user": x,
                                     "tokens_per_s_per_gpu": y, "label": lab}
                                    for c in cases for mode, s in c["plot"].items() if mode.startswith("dis")
                                    for x, y, lab in zip(s["x"], s["y"], s["labels"])])
    out.save_figure("rate_matching.png", plot_rate_matching(cases, config))
    for c in cases:
        if c["plot"]:
            fig = plots.plot_pareto({k: (s["x"], s["y"], s["labels"]) for k, s in c["plot"].items()},
                                    xlabel="tokens/s/user (1 / TTL)", ylabel="tokens/s/GPU (whole system)",
                                    title=f"{c['model']}, ISL {c['isl']} / OSL {c['osl']}, TTFT ≤ "
                                          f"{config.ttft_limit_s:g} s — {c['hardware']}")
            out.save_figure(f"pareto_{c['model']}_{c['mix']}.png", tidy_pareto(fig))

    # findings
    gains = {(c["model"], c["mix"]): [r["gain"] for r in c["targets"] if r["gain"] is not None] for c in cases}
    best_gain = {k: max(v) if v else None for k, v in gains.items()}
    alpha_range = {(c["model"], c["mix"]): [r["alpha"] for r in c["targets"] if r["alpha"] is not None] for c in cases}
    head_rows = [f"| {c['model']} | {c['isl']}/{c['osl']} | " + " | ".join(
        f"{_fmt(r['gain'], '.2f', '×')}, α* {_fmt(r['alpha'], '.2f')}, {_fmt(r['fixed_0.5_rel'], '.2f')}, "
        f"{_fmt(r['fixed_3.5_rel'], '.2f')}" for r in c["targets"]) + " |" for c in cases]
    ranked = sorted(((v, k) for k, v in best_gain.items() if v is not None), reverse=True)
    lines = [f"# disagg-pareto: co-located vs disaggregated serving on {cases[0]['hardware']}", "",
             f"Formats: weights {config.weight_format}, KV {config.kv_format}, activations {config.act_format}, "
             f"communication {config.comm_format}; ≤ {config.max_gpus} GPUs per replica, ≤ {config.max_total_gpus} "
             f"per system; TTFT ≤ {config.ttft_limit_s:g} s (arXiv 2506.05508 §3–4).", "",
             "Each cell, per TTL target: gain of rate-matched disaggregation over the best co-located "
             "configuration (tokens/s/GPU), the rate-matched α*, and fixed α = 0.5 and α = 3.5 as a fraction "
             "of rate-matched (fluid pools).", "",
             "| model | ISL/OSL | " + " | ".join(f"TTL ≤ {t:g} ms" for t in config.ttl_targets_ms) + " |",
             "|---|---|" + "---|" * len(config.ttl_targets_ms), *head_rows, "",
             "## Findings", ""]
    if ranked:
        lines.append("- Gain of disaggregation over co-located (max over TTL targets), largest first: " + ", ".join(
            f"{m} {mix} {g:.2f}×" for g, (m, mix) in ranked) + ".")
    for (m, mix), a in alpha_range.items():
        if a:
            c = next(c for c in cases if (c["model"], c["mix"]) == (m, mix))
            worst05 = min((r["fixed_0.5_rel"] for r in c["targets"] if r["fixed_0.5_rel"] is not None), default=None)
            worst35 = min((r["fixed_3.5_rel"] for r in c["targets"] if r["fixed_3.5_rel"] is not None), default=None)
            lines.append(f"- {m} {mix}: α* from {min(a):.2f} to {max(a):.2f} over the TTL targets; fixed α = 0.5 "
                         f"reaches down to {_fmt(worst05)} and α = 3.5 to {_fmt(worst35)} of rate-matched.")
    lines += ["", "Plots: `rate_matching.png`, " + ", ".join(f"`pareto_{c['model']}_{c['mix']}.png`" for c in cases)
              + " (co-located points and the disaggregated frontier; disaggregated knees are labelled with their "
              "decode layout).", ""]
    out.write_text("summary.md", "\n".join(lines))
    return {"hardware": cases[0]["hardware"],
            "gain_max": {f"{m}/{mix}": g for (m, mix), g in best_gain.items()},
            "alpha_range": {f"{m}/{mix}": [min(a), max(a)] if a else None for (m, mix), a in alpha_range.items()},
            "fixed_alpha_worst_rel": {f"{c['model']}/{c['mix']}": {
                "0.5": min((r["fixed_0.5_rel"] for r in c["targets"] if r["fixed_0.5_rel"] is not None), default=None),
                "3.5": min((r["fixed_3.5_rel"] for r in c["targets"] if r["fixed_3.5_rel"] is not None), default=None)}
                for c in cases},
            "max_tokens_per_s_per_gpu": {f"{c['model']}/{c['mix']}": c["max_tokens_per_s_per_gpu"] for c in cases}}
