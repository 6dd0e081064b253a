"""The Helix paper's study: ≥100,000 decode layouts per model, Helix vs the best baselines, HOP-B ablation.

Every decode layout of DeepSeek-R1 and Llama-3.1-405B on 1–64 GPUs of a GB200 NVL72 (FP4 weights,
KV, activations and communication; 1M-token KV context) is costed with perfmodel's analytical model
(`perfmodel.studies.helix_sweep`): TP (KV duplicated past the KV heads), DP
attention + EP, Medha-style KVP (FFN on the TPA GPUs), and Helix (KVP × TPA attention, FFN on all N
GPUs), each with pipeline parallelism, HOP-B micro-batching on and off. `perfmodel.studies.helix_ratios`
reads the paper's comparisons off the two Pareto frontiers (tokens/s/GPU against tokens/s/user):

    interactivity     max tokens/s/user, Helix / baselines                 (paper: Llama-405B 1.13×)
    throughput        max over equal tokens/s/user of tokens/s/GPU ratio   (paper: Llama-405B 4×)
    ttl_fixed_batch   max over batch of min TTL baseline / Helix           (paper: DeepSeek-R1 1.5×)
    batch_equal_ttl   max over TTL budgets of the largest batch, ratio     (paper: DeepSeek-R1 32×)
    hopb              tokens/s/user lost with HOP-B off (paper's ablation) (paper: ≈12% dense, ≈1% DS-R1)

`--hardware PROFILE.json` replaces the GB200 datasheet by a fitted profile (its spec and its fitted
efficiencies at FP4). `alpha_scales` repeats the study with every link latency α scaled (sensitivity).

Reference: Helix Parallelism, arXiv 2507.07120 §4 (Fig. 5-6, HOP-B ablation Fig. 7), Appendix A.
Runtime on 2 shared CPU cores (docs/experiments.md): --quick 5–15 s, full mode 10–25 s.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from perfmodel import get_model
from perfmodel.studies import PAPER_HELIX, format_helix, helix_ratios, helix_sweep, log_batch_grid, scaled_alpha

from . import plots
from .calibration import resolve_hardware
from .results import ResultsDir

FAMILY_TITLES = {"tp": "TP", "dp_ep": "DP+EP", "medha": "Medha KVP", "helix": "Helix"}
RATIOS = ("interactivity", "throughput", "ttl_fixed_batch", "batch_equal_ttl", "hopb")


@dataclasses.dataclass(frozen=True)
class Config:
    """The sweep; the defaults are full mode (10–25 s on 2 shared CPU cores).

    Attributes:
      seed: seeds the subsample of non-frontier points drawn in the plots.
      hardware: a fitted profile JSON replacing `preset` (None: the preset's datasheet).
      preset: hardware preset (the paper: GB200 NVL72).
      models: model presets.
      seq_len: KV context per request in tokens (paper: 1M).
      max_gpus: GPUs per replica, N·pp (paper: 64).
      bits: bits per element of weights, KV, activations and communication (paper: FP4 = 4).
      n_batches, max_batch: log-spaced batch grid (rounded, unique).
      pp_options: pipeline depths (uneven stages allowed).
      alpha_scales: link-latency multipliers to repeat the study with (1.0 first: the plots use it).
      plot_points: non-frontier points drawn per series (all frontier points are drawn).
    """

    seed: int = 0
    hardware: str | None = None
    preset: str = "gb200-nvl72"
    models: tuple[str, ...] = ("deepseek-r1", "llama-3.1-405b")
    seq_len: float = 1e6
    max_gpus: int = 64
    bits: float = 4.0
    n_batches: int = 320
    max_batch: int = 16384
    pp_options: tuple[int, ...] = (1, 2, 3, 4, 6, 8)
    alpha_scales: tuple[float, ...] = (1.0, 0.25)
    plot_points: int = 4000

    def __post_init__(self):
        if not self.models:
            raise ValueError("models must name at least one model preset")
        for m in self.models:
            get_model(m)  # raises ValueError naming an unknown preset
        if self.max_gpus < 1 or self.n_batches < 1 or self.max_batch < 1 or self.plot_points < 0:
            raise ValueError(f"max_gpus={self.max_gpus}, n_batches={self.n_batches}, max_batch={self.max_batch} "
                             f"must be >= 1 and plot_points={self.plot_points} >= 0")
        if not self.seq_len > 0 or not self.bits > 0:
            raise ValueError(f"seq_len={self.seq_len} and bits={self.bits} must be > 0")
        if not self.pp_options or min(self.pp_options) < 1:
            raise ValueError(f"pp_options={self.pp_options} must be non-empty positive depths")
        if not self.alpha_scales or self.alpha_scales[0] != 1.0 or min(self.alpha_scales) <= 0:
            raise ValueError(f"alpha_scales={self.alpha_scales} must start with 1.0 and be > 0")


# --quick: a coarser batch grid (still ≥ 100,000 layouts per model), no α sensitivity.
QUICK = {"n_batches": 96, "alpha_scales": (1.0,), "plot_points": 2000}


def layout_label(lay, i: int, family: str) -> str:
    """A short name of design point i, e.g. "KVP8×TPA8 EP64 B32 mb4", "TP64 pp2 B8", "DP8 EP8 B64"."""
    g = {k: int(round(float(np.asarray(getattr(lay, k))[i]))) for k in
         ("tpa", "kvp", "dp_attn", "tpf", "ep", "pp", "batch", "microbatches")}
    ffn = "×".join(f"{k.upper()}{g[k]}" for k in ("tpf", "ep") if g[k] > 1) or "TPF1"
    if family == "tp":
        s = f"TP{g['tpa']}" + (f" {ffn}" if g["ep"] > 1 else "")
    elif family == "dp_ep":
        s = f"DP{g['dp_attn']}" + (f"×TPA{g['tpa']}" if g["tpa"] > 1 else "") + f" {ffn}"
    else:
        s = ("Medha " if family == "medha" else "") + f"KVP{g['kvp']}×TPA{g['tpa']} {ffn}"
    s += (f" pp{g['pp']}" if g["pp"] > 1 else "") + f" B{g['batch']}"
    if g["microbatches"] > 1:
        s += f" mb{g['microbatches']}" + ("" if float(np.asarray(lay.hopb)[i]) else " (HOP-B off)")
    return s


_OFFSETS = ((6, 6), (6, -16), (-6, 6), (-6, -16), (6, 20), (-6, 20), (6, -30), (-6, -30), (6, 34), (-6, 34),
            (6, -44), (-6, -44), (6, 48), (-6, 48))


def tidy_pareto(fig):
    """Make a `plots.plot_pareto` figure legible: plain-number log ticks, non-overlapping knee labels.

    Tick labels: 10, 20, 50, 100, ... instead of 2×10¹ (matplotlib labels minor ticks of log axes
    spanning less than a decade in scientific notation, and they collide). Knee labels: each label
    in turn takes the first offset around its point (right/left, above/below) whose box overlaps no
    label placed before it and stays inside the axes.

    Returns:
      The same figure.
    """
    from matplotlib.ticker import FuncFormatter

    def major(v, _):
        return f"{v:g}"

    def minor(v, _):
        mantissa = v / 10 ** np.floor(np.log10(v)) if v > 0 else 0
        return f"{v:g}" if np.isclose(mantissa, 2) or np.isclose(mantissa, 5) else ""

    for ax in fig.axes:
        for axis, scale in ((ax.xaxis, ax.get_xscale()), (ax.yaxis, ax.get_yscale())):
            if scale == "log":
                axis.set_major_formatter(FuncFormatter(major))
                axis.set_minor_formatter(FuncFormatter(minor))
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        frame = ax.get_window_extent(renderer)
        placed = []
        for ann in [t for t in ax.texts if hasattr(t, "xyann")]:
            fallback = None  # the first offset inside the axes, when every one overlaps a label
            for off in _OFFSETS:
                ann.xyann = off
                ann.set_horizontalalignment("left" if off[0] > 0 else "right")
                box = ann.get_window_extent(renderer).expanded(1.05, 1.15)
                inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
                if inside and not any(box.overlaps(b) for b in placed):
                    break
                if inside and fallback is None:
                    fallback = off
            else:
                off = fallback or _OFFSETS[0]
                ann.xyann = off
                ann.set_horizontalalignment("left" if off[0] > 0 else "right")
            placed.append(ann.get_window_extent(renderer))
    return fig


def plot_series(x, y, mask, lay, fam, n_sample: int, rng) -> dict:
    """Points to draw of one series: its whole Pareto frontier plus a random sample of the rest.

    The frontier of the drawn points is the frontier of all points of the series (every frontier
    point is kept), so `plots.plot_pareto` finds the same frontier and knees.
    """
    idx = np.flatnonzero(mask)
    front = idx[plots.pareto_front(x[idx], y[idx])]
    rest = np.setdiff1d(idx, front)
    if len(rest) > n_sample:
        rest = rng.choice(rest, n_sample, replace=False)
    keep = np.concatenate([front, rest])
    return {"x": x[keep].tolist(), "y": y[keep].tolist(),
            "labels": [layout_label(lay, int(i), str(fam[i])) for i in keep]}


def sweep_model(model_name: str, config: Config, alpha_scale: float = 1.0, rng=None) -> dict:
    """Sweep one model's decode layouts and compare Helix with the baselines.

    Returns:
      A JSON-ready row: model, hardware, alpha_scale, layout counts, the ratios of
      `perfmodel.studies.helix_ratios` with their paper values, and (when `rng` is given) plot data
      for the Helix and baseline series.

    Raises:
      ValueError: no feasible Helix or baseline layout (nothing to compare).
    """
    m = get_model(model_name)
    hw, params, label = resolve_hardware(config.hardware, config.preset, config.bits)
    r, fam, lay = helix_sweep(m, hw, scaled_alpha(params, alpha_scale), seq_len=config.seq_len,
                              max_gpus=config.max_gpus, bits=config.bits, n_batches=config.n_batches,
                              max_batch=config.max_batch, pp_options=config.pp_options, progress=True,
                              desc=model_name)
    ratios = helix_ratios(r, fam, lay)
    if "error" in ratios:
        raise ValueError(f"{model_name} on {label}: {ratios['error']} (feasible per family: {ratios['n_feasible']})")
    # the same comparison against plain TP (with PP) only, the paper's main baseline
    tp = (fam == "helix") | (fam == "tp")
    vs_tp = helix_ratios({k: np.asarray(v)[tp] for k, v in r.items()}, fam[tp],
                         type(lay)(*(np.asarray(x)[tp] for x in lay)))
    row = {"model": model_name, "hardware": label, "alpha_scale": alpha_scale,
           **{k: v for k, v in ratios.items() if not k.startswith("frontier_") and k != "ttl_ratio_by_batch"},
           "vs_tp": {k: vs_tp.get(k) for k in RATIOS}, "paper": PAPER_HELIX.get(model_name, {})}
    if rng is not None:
        x, y, ok = r["tokens_per_s_per_user"], r["tokens_per_s_per_gpu"], r["fits"]
        hopb, mb = np.asarray(lay.hopb), np.asarray(lay.microbatches)
        overlap = ok & ((hopb == 1.0) | (mb == 1.0))  # HOP-B on (or nothing to overlap), as helix_ratios
        row["plot"] = {
            "Helix (KVP×TPA, FFN on all N)": plot_series(x, y, overlap & (fam == "helix"), lay, fam,
                                                         config.plot_points, rng),
            "best baselines (TP, DP+EP, Medha KVP; ±PP)": plot_series(x, y, overlap & (fam != "helix"), lay, fam,
                                                                      config.plot_points, rng)}
    return row


def _paper_cell(row: dict, key: str) -> str:
    ref = row["paper"].get(key)
    got = row.get(key)
    if key == "hopb":
        return f"{100 * got:.1f}%" + (f" (paper ≈{100 * ref:.0f}%)" if ref is not None else "")
    return f"{got:.2f}×" + (f" (paper {ref:g}×)" if ref is not None else "")


def run(config: Config, out: ResultsDir) -> dict:
    """Sweep every (model, α scale), write helix_ratios.csv, one Pareto plot per model and summary.md."""
    rng = np.random.default_rng(config.seed)
    items = [(m, a) for a in config.alpha_scales for m in config.models]

    def work(chunk):
        return [sweep_model(m, config, a, rng if a == 1.0 else None) for m, a in chunk]

    rows = out.sweep("helix_sweeps", items, work, key=lambda it: f"{it[0]}/alpha{it[1]:g}", desc="Helix sweeps")
    table = []
    for r in rows:
        flat = {k: v for k, v in r.items() if k not in ("key", "plot", "paper", "n_feasible", "vs_tp")}
        flat.update({f"feasible_{f}": n for f, n in r["n_feasible"].items()})
        flat.update({f"vs_tp_{k}": v for k, v in r["vs_tp"].items()})
        flat.update({f"paper_{k}": v for k, v in r["paper"].items()})
        table.append(flat)
    out.write_csv("helix_ratios.csv", table)
    for r in rows:
        if "plot" not in r:
            continue
        series = {name: (s["x"], s["y"], s["labels"]) for name, s in r["plot"].items()}
        fig = plots.plot_pareto(series, xlabel="tokens/s/user (1 / TTL)", ylabel="tokens/s/GPU",
                                title=f"{r['model']} decode, {config.seq_len:,.0f}-token KV, "
                                      f"FP{config.bits:g}, ≤{config.max_gpus} GPUs — {r['hardware']}")
        out.save_figure(f"pareto_{r['model']}.png", tidy_pareto(fig))

    main = [r for r in rows if r["alpha_scale"] == 1.0]
    lines = [f"# helix-pareto: Helix vs the best baselines on {main[0]['hardware']}", "",
             f"Decode layouts on 1–{config.max_gpus} GPUs, {config.seq_len:,.0f}-token KV context, "
             f"{config.bits:g}-bit weights/KV/activations/communication, {len(log_batch_grid(config.n_batches, config.max_batch))} "
             f"batch sizes 1–{config.max_batch}, PP ∈ {list(config.pp_options)}, HOP-B on/off "
             "(arXiv 2507.07120 §4). Ratios are Helix over the best baseline frontier (TP, DP+EP, Medha KVP).", "",
             format_helix(rows), "",
             "## Against the paper's headlines", ""]
    for r in main:
        lines.append(f"- **{r['model']}** ({r['n_layouts']:,} layouts): "
                     + ", ".join(f"{k.replace('_', ' ')} {_paper_cell(r, k)}" for k in RATIOS) + ".")
        lines.append("  Against plain TP (± PP) only, the paper's main baseline: " + ", ".join(
            f"{k.replace('_', ' ')} " + ("—" if r["vs_tp"][k] is None else
                                         f"{100 * r['vs_tp'][k]:.1f}%" if k == "hopb" else f"{r['vs_tp'][k]:.2f}×")
            for k in RATIOS if k != "hopb") + ".")
    lines += ["", "Where the numbers differ from the paper, see docs/experiments.md (helix-pareto) for the "
              "reasons: the paper normalizes to its own simulator's baselines and picks its operating points "
              "by eye; this study takes the maxima over whole frontiers of one analytical model.", "",
              "Plots: " + ", ".join(f"`pareto_{r['model']}.png`" for r in main) + " (layouts labelled at the knees).", ""]
    out.write_text("summary.md", "\n".join(lines))
    return {"hardware": main[0]["hardware"], "seq_len": config.seq_len, "max_gpus": config.max_gpus,
            "bits": config.bits,
            **{r["model"]: {"n_layouts": r["n_layouts"], **{k: r[k] for k in RATIOS}, "vs_tp": r["vs_tp"],
                            "paper": r["paper"]} for r in main},
            "alpha_sensitivity": {f"{r['model']}/alpha{r['alpha_scale']:g}": {k: r[k] for k in RATIOS}
                                  for r in rows if r["alpha_scale"] != 1.0}}
