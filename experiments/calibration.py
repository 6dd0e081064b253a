"""Measure this machine's kernels and fit the cost model to them (perfmodel.measure + perfmodel.calibrate).

The experiment times the kernels the cost model costs (GEMM, decode attention, elementwise and copy,
`fake_quantize`, collectives over the local mesh) with `perfmodel.measure`, or reads measurement
files (this project's CSV or nccl-tests output) through `perfmodel.importers`; then fits the
efficiency pytree with `perfmodel.calibrate.fit` on two deterministic held-out splits (random and
extrapolation: the largest kernels held out) and once on every row for the saved profile.

Outputs: `measurements.csv` (docs/measurements.md schema), `report.md` (MAPE, median and p90 APE per
op class, fitted vs the uncalibrated datasheet roofline, train and held-out), `fit_errors.csv`,
`profile.json` (what `--hardware PROFILE.json` of every experiment accepts) and
`predicted_vs_measured.png`.

Also the helpers other experiments use to honour `--hardware PROFILE.json`: `resolve_hardware`.
Runtime on 2 shared CPU cores (docs/experiments.md): --quick about 1 minute, full mode about 6.5 minutes.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from perfmodel import (PRECISIONS, SPLITS, STATISTICS, FitReport, HardwareSpec, datasheet_params, efficiency_for,
                       get_hardware, init_params, load_profile, measured_times, percentage_errors, precision_index,
                       predict_rows, save_profile, split_mask)
from perfmodel import calibrate as cal
from perfmodel import importers, measure

from .results import ResultsDir


# ------------------------------------------------------------------------------ profiles for experiments

def precision_of_bits(bits: float) -> str:
    """The compute precision (`perfmodel.PRECISIONS`) whose fitted offsets apply to
    operands of `bits` bits per element, by the thresholds of `perfmodel.precision_index`."""
    return PRECISIONS[int(precision_index(float(bits) / 8.0))]


def resolve_hardware(profile: str | None, preset: str, bits: float = 16.0):
    """The hardware and cost-model parameters an experiment runs on.

    With a fitted profile (`--hardware PROFILE.json`): its `HardwareSpec` and its fitted efficiencies
    at the precision of `bits` (`perfmodel.efficiency_for`); else the preset and its datasheet roofline.

    Args:
      profile: path of a profile written by `perfmodel.save_profile`, or None.
      preset: hardware preset name used when `profile` is None.
      bits: bits per element of the study's operands (picks the fitted precision offsets).

    Returns:
      (HardwareSpec, EfficiencyParams, label), label naming the source ("gb200-nvl72 (datasheet)",
      "cpu-local (profile x.json)").

    Raises:
      ValueError: a malformed profile (from `load_profile`) or an unknown preset.
    """
    if profile is None:
        hw = get_hardware(preset)
        return hw, datasheet_params(hw), f"{hw.name} (datasheet)"
    hw, params = load_profile(profile)
    return hw, efficiency_for(params, precision_of_bits(bits)), f"{hw.name} (profile {os.path.basename(profile)})"


# ------------------------------------------------------------------------------------------- config

@dataclasses.dataclass(frozen=True)
class Config:
    """Measure-and-fit settings; the defaults are full mode (about 6.5 minutes on 2 shared cores).

    Attributes:
      seed: seeds the held-out split (and the measurement shuffles).
      hardware: a profile JSON whose HardwareSpec is the spec fitted against (e.g. refit a GPU
        profile to new measurements); default: `preset`, else by device kind (cpu-local on a CPU).
      preset: a hardware preset name to fit against instead (e.g. "h200-sxm").
      measurements: measurement CSVs or nccl-tests outputs to fit instead of measuring this machine.
      quick_plan: `perfmodel.measure`'s quick plan (fewer, smaller points).
      families: kernel families to measure (subset of `perfmodel.measure.FAMILIES`).
      rounds, min_round_s: timing rounds per point and seconds per round (None: the plan's default).
      cpus: on a CPU backend, cores the measurement process is pinned to (`perfmodel.measure.pin_cpus`;
        on this 2-core VM a GEMM's IQR/median fell from ~0.4 on two free cores to 0.01 on one pinned
        core); 0 measures in this process, unpinned.
      loss, loss_scale, prior_weight, statistic, steps: `perfmodel.calibrate.fit` settings.
      holdout_fraction: share of each op class held out.
    """

    seed: int = 0
    hardware: str | None = None
    preset: str | None = None
    measurements: tuple[str, ...] = ()
    quick_plan: bool = False
    families: tuple[str, ...] = measure.FAMILIES
    rounds: int | None = None
    min_round_s: float | None = None
    cpus: int = 1
    loss: str = "huber"
    loss_scale: float = 0.1
    prior_weight: float = 1e-6
    statistic: str = "median"
    steps: int = 3000
    holdout_fraction: float = 0.25

    def __post_init__(self):
        bad = sorted(set(self.families) - set(measure.FAMILIES))
        if bad or not self.families:
            raise ValueError(f"families={self.families}: unknown {bad}; valid: {', '.join(measure.FAMILIES)}")
        if self.loss not in cal.ROBUST_LOSSES:
            raise ValueError(f"loss={self.loss!r}; valid: {', '.join(cal.ROBUST_LOSSES)}")
        if self.statistic not in STATISTICS:
            raise ValueError(f"statistic={self.statistic!r}; valid: {', '.join(STATISTICS)}")
        if self.steps < 1 or (self.rounds is not None and self.rounds < 1):
            raise ValueError(f"steps={self.steps} and rounds={self.rounds} must be >= 1")
        if self.cpus < 0:
            raise ValueError(f"cpus={self.cpus} must be >= 0")
        if self.min_round_s is not None and not self.min_round_s >= 0:
            raise ValueError(f"min_round_s={self.min_round_s} must be >= 0")
        if not 0 < self.holdout_fraction < 1:
            raise ValueError(f"holdout_fraction={self.holdout_fraction} must lie in (0, 1)")
        if self.hardware is not None and self.preset is not None:
            raise ValueError(f"give hardware={self.hardware!r} or preset={self.preset!r}, not both")
        for path in self.measurements:
            if not os.path.isfile(path):
                raise ValueError(f"measurement file {path!r} does not exist")


QUICK = {"quick_plan": True}


# ------------------------------------------------------------------------------------------ the study

def measure_or_read(config: Config) -> measure.MeasurementSet:
    """The measurements: read from `config.measurements`, or timed on this machine now."""
    if config.measurements:
        sets = [importers.read_measurements(p) for p in config.measurements]
        return sets[0] if len(sets) == 1 else importers.concat(*sets)
    timing = None
    if config.rounds is not None or config.min_round_s is not None:
        base = measure.QUICK_TIMING if config.quick_plan else measure.TimingConfig()
        overrides = {k: v for k, v in (("rounds", config.rounds), ("min_round_s", config.min_round_s)) if v is not None}
        timing = dataclasses.replace(base, seed=config.seed, **overrides)
    return measure.measure_here(quick=config.quick_plan, families=config.families, timing=timing, cpus=config.cpus)


def target_hardware(config: Config, mset: measure.MeasurementSet) -> HardwareSpec:
    """The spec fitted against: the profile's, the preset, or by device kind (`hardware_for`)."""
    if config.hardware is not None:
        return load_profile(config.hardware)[0]
    return cal.hardware_for(mset, config.preset)


# Random splits whose held-out MAPE the summary spreads: one split holds out ~20 kernels > 1 ms in
# quick mode, and which ones moves the figure (measured here on one quick measurement file: 7.8% to
# 16.0% over split seeds 0-4).
RANDOM_SPLIT_SEEDS = 5


def _fit_kw(config: Config) -> dict:
    return dict(loss=config.loss, loss_scale=config.loss_scale, prior_weight=config.prior_weight,
                statistic=config.statistic, steps=config.steps)


def fit_all(config: Config, mset: measure.MeasurementSet, hw: HardwareSpec):
    """`calibrate.fit` on the random and extrapolation splits and on every row (the profile).

    Returns:
      (params of the all-rows fit, {split: (params, FitReport)} for "random", "extrapolation", "all").
    """
    kw = dict(_fit_kw(config), seed=config.seed)
    fits = {split: cal.fit(mset, hw, split=split, holdout_fraction=config.holdout_fraction, **kw)
            for split in SPLITS}
    fits["all"] = cal.fit(mset, hw, holdout_fraction=0.0, **kw)
    return fits["all"][0], fits


def random_split_spread(config: Config, mset: measure.MeasurementSet, hw: HardwareSpec,
                        first: FitReport) -> dict:
    """Held-out MAPE (kernels > 1 ms) of the fitted model over `RANDOM_SPLIT_SEEDS` random splits.

    Split seeds config.seed, config.seed + 1, ...; `first` is the report of config.seed's split.

    Returns:
      {"seeds": [...], "fitted_mape_pct": [...], "mean_pct", "min_pct", "max_pct"}: per seed, and
      over the seeds whose split holds out a kernel > 1 ms (a split without one has None; so do the
      summaries when none has).
    """
    seeds = [config.seed + i for i in range(RANDOM_SPLIT_SEEDS)]
    mapes = [first.headline["fitted_mape"]] + [
        cal.fit(mset, hw, split="random", holdout_fraction=config.holdout_fraction, seed=s,
                **_fit_kw(config))[1].headline["fitted_mape"] for s in seeds[1:]]
    scored = [m for m in mapes if m is not None]
    return {"seeds": seeds, "fitted_mape_pct": mapes,
            **{f"{k}_pct": float(f(scored)) if scored else None for k, f in (("mean", np.mean), ("min", np.min),
                                                                             ("max", np.max))}}


def plot_predicted_vs_measured(mset, hw, fits, config: Config) -> Figure:
    """Predicted against measured time per kernel (log-log): datasheet roofline vs the random-split fit."""
    rows = [r for r in mset.rows if not r.emulated]  # what `fit` trains and scores on
    measured = measured_times(rows, config.statistic)
    held = split_mask(rows, "random", config.holdout_fraction, config.seed)
    params, report = fits["random"]
    preds = {"datasheet roofline (uncalibrated)": predict_rows(init_params(hw), hw, rows),
             "fitted (random split)": predict_rows(params, hw, rows)}
    ops = list(dict.fromkeys(r.op for r in rows))
    fig = Figure(figsize=(11, 5))
    FigureCanvasAgg(fig)
    lo, hi = measured.min() / 3, measured.max() * 3
    for k, (title, pred) in enumerate(preds.items()):
        ax = fig.add_subplot(1, 2, k + 1)
        lo, hi = min(lo, pred.min() / 3), max(hi, pred.max() * 3)
        for j, op in enumerate(ops):
            sel = np.array([r.op == op for r in rows])
            ax.scatter(measured[sel & ~held], pred[sel & ~held], s=14, color=f"C{j}", alpha=0.5, label=f"{op} (train)")
            ax.scatter(measured[sel & held], pred[sel & held], s=30, color=f"C{j}", marker="x", label=f"{op} (held out)")
        ape = percentage_errors(pred, measured)
        long = measured > report.headline["threshold_s"]
        ax.set_title(f"{title}\nheld-out MAPE, kernels > 1 ms: {ape[held & long].mean():.1f}%" if (held & long).any()
                     else title, fontsize=10)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(f"measured time (s, {config.statistic} over rounds)")
        ax.set_ylabel("cost-model time (s)")
        ax.grid(True, which="both", alpha=0.3)
    for ax in fig.axes:
        ax.plot([lo, hi], [lo, hi], color="k", lw=0.8, ls="--", label="y = x")
        ax.axvline(1e-3, color="gray", lw=0.6, ls=":")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
    fig.axes[-1].legend(fontsize=7, loc="upper left", ncol=1)
    n_emulated = len(mset.rows) - len(rows)
    fig.suptitle(f"Calibration of {hw.name}: {len(rows)} kernels fitted"
                 + (f" ({n_emulated} collectives on emulated devices not fitted)" if n_emulated else "")
                 + "; dotted line: 1 ms", fontsize=11)
    fig.tight_layout()
    return fig


def _headline(report: FitReport) -> dict:
    h = report.headline
    return {"fitted_mape_pct": h["fitted_mape"], "datasheet_mape_pct": h["datasheet_mape"],
            "ratio_datasheet_over_fitted": h["ratio"], "n_kernels_gt_1ms": h["n"]}


def calibrate_and_save(config: Config, out: ResultsDir, prefix: str = "") -> dict:
    """Measure (or read), fit, and write measurements.csv, report.md, fit_errors.csv, profile.json and
    predicted_vs_measured.png into `out` (each name preceded by `prefix`).

    Returns:
      Headline dict: hardware, rows, held-out MAPE (> 1 ms) per split with the datasheet baseline,
      profile path, load average.
    """
    mset = measure_or_read(config)
    measure.write_csv(out.file(f"{prefix}measurements.csv"), mset)
    hw = target_hardware(config, mset)
    params, fits = fit_all(config, mset, hw)
    reports = {split: rep for split, (_, rep) in fits.items()}
    profile = out.file(f"{prefix}profile.json")
    save_profile(profile, hw, params, reports, mset.env)
    text = "\n\n".join(f"## {split} split\n\n{rep.format()}" for split, rep in reports.items())
    rows = [dict(split=split, **e) for split, rep in reports.items() for e in rep.errors]
    out.write_csv(f"{prefix}fit_errors.csv", rows)
    out.save_figure(f"{prefix}predicted_vs_measured.png", plot_predicted_vs_measured(mset, hw, fits, config))
    n_emulated = sum(r.emulated for r in mset.rows)
    head = {"hardware": hw.name, "rows": len(mset), "rows_fitted": len(mset) - n_emulated,
            "rows_noisy": int(sum(r.noisy for r in mset.rows)),
            "heldout_random": _headline(reports["random"]),
            "heldout_random_seeds": random_split_spread(config, mset, hw, reports["random"]),
            "heldout_extrapolation": _headline(reports["extrapolation"]),
            "train_all_mape_pct": reports["all"].table("fitted", "train", ">1ms").get("all", {}).get("mape"),
            "profile": str(profile),
            "load_avg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}
    out.write_text(f"{prefix}report.md", f"# Calibration of {hw.name}\n\n{len(mset)} measured kernels "
                   f"({n_emulated} on emulated devices, excluded from the fit), {head['rows_noisy']} flagged "
                   f"noisy (IQR/median > threshold; kept). Load average {head['load_avg']}.\n\n{text}\n")
    return head


def run(config: Config, out: ResultsDir) -> dict:
    """Measure and fit; write the tables, the profile, the plot and summary.md."""
    head = calibrate_and_save(config, out)
    r, e, s = head["heldout_random"], head["heldout_extrapolation"], head["heldout_random_seeds"]

    def pct(v):
        return "—" if v is None else f"{v:.1f}%"

    def ratio(v):
        return "—" if v is None else f"{v:.2f}×"

    out.write_text("summary.md", "\n".join([
        f"# calibrate: {head['hardware']}", "",
        f"{head['rows']} kernels measured ({head['rows_fitted']} fitted; {head['rows_noisy']} noisy), "
        f"load average {head['load_avg']}.", "",
        "| split | held-out kernels > 1 ms | fitted MAPE | datasheet roofline MAPE | datasheet / fitted |",
        "|---|---|---|---|---|",
        f"| random | {r['n_kernels_gt_1ms']} | {pct(r['fitted_mape_pct'])} | {pct(r['datasheet_mape_pct'])} | "
        f"{ratio(r['ratio_datasheet_over_fitted'])} |",
        f"| extrapolation (largest held out) | {e['n_kernels_gt_1ms']} | {pct(e['fitted_mape_pct'])} | "
        f"{pct(e['datasheet_mape_pct'])} | {ratio(e['ratio_datasheet_over_fitted'])} |", "",
        f"Random split over {len(s['seeds'])} split seeds {s['seeds']}: fitted MAPE mean {pct(s['mean_pct'])} "
        f"(min {pct(s['min_pct'])}, max {pct(s['max_pct'])}; per seed "
        f"{', '.join(pct(v) for v in s['fitted_mape_pct'])}).", "",
        f"Profile: `profile.json` (use it with `--hardware {head['profile']}`). Details: `report.md`, "
        "`fit_errors.csv`, `predicted_vs_measured.png`.", ""]))
    return head
