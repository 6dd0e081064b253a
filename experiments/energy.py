"""Energy of LLM decode: tokens/J and J/token over hardware, precision and layout (perfmodel.energy).

Every decode layout of a model (TP, DP attention + EP, Helix KVP, PP; batch grid) on each hardware
preset and at each precision (weights, KV, activations and communication in one numerics format) is
costed with `perfmodel.step.decode_step`; its power is `perfmodel.energy.energy_per_token`:

    P = P_idle + (P_peak − P_idle) · Σ_c w_c·u_c + P_host       (per GPU, full-system share)
    J/token = P · GPUs · period / tokens,   tokens/J = 1 / (J/token)

Reported per (hardware, precision): the most tokens/J of any feasible layout and the most tokens/J
at each interactivity target (tokens/s/user ≥ 1000/TTL), with the layout, power and tokens/s/GPU;
the frontier of tokens/J against tokens/s/user.

MLPerf Power (arXiv 2410.12032) makes energy a first-class metric with rules for measuring it:
performance and power from the same run, only the steady-state window counted (≥ 60 s, no
warm-up or tail), the full-system boundary (wall power of the whole node: accelerators, host CPUs,
memory, fans, power supplies), no best-of-N. The numbers here are MODELLED from datasheet TDPs and
the cost model's utilizations, not measured: the model describes the steady state of one decode
step, and its host share approximates the full-system boundary; use them to rank designs, and
measure wall power under those rules before quoting joules.
Runtime on 2 shared CPU cores (docs/experiments.md): --quick and full mode 7–15 s.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from numerics import FORMAT_NAMES
from perfmodel import HARDWARE, format_bits, get_hardware, get_model
from perfmodel.energy import energy_per_token
from perfmodel.serving import replica_gpus
from perfmodel.memory import fits
from perfmodel.step import decode_step
from perfmodel.studies import log_batch_grid
from perfmodel.sweep import enumerate_layouts, evaluate

from . import plots
from .calibration import resolve_hardware
from .helix_pareto import layout_label, tidy_pareto
from .results import ResultsDir

MLPERF_RULES = (
    "performance and power are measured in the same run;",
    "only the steady-state window counts (at least 60 s of samples; warm-up and tail excluded);",
    "the boundary is the full system: wall power of the node (accelerators, host CPUs, memory, network, "
    "fans, power supplies), not the accelerator's own sensor;",
    "no best-of-N: every run is reported.",
)


@dataclasses.dataclass(frozen=True)
class Config:
    """The grid; the defaults are full mode (7–15 s on 2 shared CPU cores).

    Attributes:
      seed: seeds the subsample of non-frontier points drawn in the plots.
      hardware: a fitted profile JSON added as one more system (its spec, power and fitted efficiencies).
      presets: hardware presets compared.
      model: model preset.
      seq_len: KV context of each decode step (tokens).
      formats: numerics formats of weights, KV, activations and communication (one per precision).
      max_gpus: GPUs per replica (N·pp).
      n_batches, max_batch: log-spaced batch grid.
      pp_options: pipeline depths.
      ttl_targets_ms: interactivity targets (TTL ≤ target) of the table.
      plot_format: the precision of the hardware-comparison plot.
      plot_points: non-frontier points drawn per series.
    """

    seed: int = 0
    hardware: str | None = None
    presets: tuple[str, ...] = tuple(HARDWARE)
    model: str = "llama-3.1-70b"
    seq_len: int = 8192
    formats: tuple[str, ...] = ("bf16", "mxfp8_e4m3", "mxfp4_e2m1")
    max_gpus: int = 16
    n_batches: int = 64
    max_batch: int = 2048
    pp_options: tuple[int, ...] = (1, 2, 4)
    ttl_targets_ms: tuple[float, ...] = (100.0, 50.0, 20.0, 10.0)
    plot_format: str = "mxfp8_e4m3"
    plot_points: int = 1500

    def __post_init__(self):
        if not self.presets and self.hardware is None:
            raise ValueError("give at least one hardware preset or a profile")
        for p in self.presets:
            get_hardware(p)
        get_model(self.model)
        bad = sorted(set(self.formats) - set(FORMAT_NAMES))
        if bad or not self.formats:
            raise ValueError(f"formats {self.formats}: unknown {bad}; valid: {', '.join(FORMAT_NAMES)}")
        if self.plot_format not in self.formats:
            raise ValueError(f"plot_format={self.plot_format!r} is not among formats={self.formats}")
        if self.seq_len < 1 or self.max_gpus < 1 or self.n_batches < 1 or self.max_batch < 1:
            raise ValueError(f"seq_len={self.seq_len}, max_gpus={self.max_gpus}, n_batches={self.n_batches}, "
                             f"max_batch={self.max_batch} must be >= 1")
        if not self.ttl_targets_ms or min(self.ttl_targets_ms) <= 0:
            raise ValueError(f"ttl_targets_ms={self.ttl_targets_ms} must be non-empty and > 0")

    def systems(self) -> list[str]:
        """System keys: the presets, then "profile" when a profile is given."""
        return list(self.presets) + (["profile"] if self.hardware else [])


# --quick: a coarser batch grid, two precisions.
QUICK = {"formats": ("bf16", "mxfp8_e4m3"), "n_batches": 24, "pp_options": (1, 2), "plot_points": 800}


def sweep_system(config: Config, system: str, fmt: str, rng) -> dict:
    """Decode layouts of the model on one system at one precision: energy, speed, best points, plot data."""
    bits = format_bits(fmt)
    profile = config.hardware if system == "profile" else None
    hw, params, label = resolve_hardware(profile, system if profile is None else "gb200-nvl72", bits)
    m = get_model(config.model)
    lay, fam = enumerate_layouts(m, max_gpus=config.max_gpus, batches=log_batch_grid(config.n_batches, config.max_batch),
                                 pp_options=config.pp_options, bits=(bits,) * 4)

    def fn(l):
        step = decode_step(m, hw, params, l, float(config.seq_len))
        ok, _ = fits(m, hw, l, float(config.seq_len))
        e = energy_per_token(hw, params, step, l.batch, replica_gpus(l))
        return dict(ttl_s=step.time_s, tokens_per_s_per_gpu=l.batch / (step.time_s * replica_gpus(l)),
                    power_w=e.power_w, joules_per_token=e.joules_per_token, tokens_per_joule=e.tokens_per_joule,
                    fits=ok & jnp.isfinite(e.tokens_per_joule))

    r = evaluate(fn, lay, progress=False)
    ok = r["fits"]
    x = 1.0 / np.asarray(r["ttl_s"], np.float64)
    tpj = np.asarray(r["tokens_per_joule"], np.float64)
    row = {"system": system, "hardware": label, "format": fmt, "bits": bits, "n_layouts": int(len(fam)),
           "n_feasible": int(ok.sum()), "targets": []}
    if not ok.any():
        return row

    def point(i):
        return {"layout": layout_label(lay, int(i), str(fam[i])), "tokens_per_joule": float(tpj[i]),
                "joules_per_token": float(r["joules_per_token"][i]), "tokens_per_s_per_user": float(x[i]),
                "tokens_per_s_per_gpu": float(r["tokens_per_s_per_gpu"][i]), "power_w_per_gpu": float(r["power_w"][i]),
                "gpus": int(round(float(np.asarray(replica_gpus(lay))[i])))}

    row["best"] = point(int(np.argmax(np.where(ok, tpj, -np.inf))))
    for t in config.ttl_targets_ms:
        sel = ok & (x >= 1e3 / t)
        row["targets"].append({"ttl_ms": t, **(point(int(np.argmax(np.where(sel, tpj, -np.inf)))) if sel.any() else {})})
    idx = np.flatnonzero(ok)
    front = idx[plots.pareto_front(x[idx], tpj[idx])]
    rest = np.setdiff1d(idx, front)
    rest = rng.choice(rest, min(len(rest), config.plot_points), replace=False) if len(rest) else rest
    keep = np.concatenate([front, rest])
    row["plot"] = {"x": x[keep].tolist(), "y": tpj[keep].tolist(), "n_front": int(len(front)),
                   "labels": [layout_label(lay, int(i), str(fam[i])) for i in keep]}
    return row


def _fmt_point(p: dict) -> str:
    if "tokens_per_joule" not in p:
        return "—"
    return (f"{p['tokens_per_joule']:.2f} tok/J ({1e3 * p['joules_per_token']:.0f} mJ/tok, "
            f"{p['power_w_per_gpu']:.0f} W/GPU, {p['layout']})")


def run(config: Config, out: ResultsDir) -> dict:
    """Every (system, format); energy.csv, energy_targets.csv, the plots, summary.md with MLPerf Power's rules."""
    rng = np.random.default_rng(config.seed)
    items = [(s, f) for s in config.systems() for f in config.formats]
    rows = out.sweep("systems", items, lambda chunk: [sweep_system(config, s, f, rng) for s, f in chunk],
                     key="/".join, desc="energy sweeps")
    out.write_csv("energy.csv", [{k: v for k, v in r.items() if k not in ("key", "targets", "plot", "best")}
                                 | {f"best_{k}": v for k, v in r.get("best", {}).items()} for r in rows])
    out.write_csv("energy_targets.csv", [{"system": r["system"], "format": r["format"], **t} for r in rows
                                         for t in r["targets"]],
                  columns=["system", "format", "ttl_ms", "layout", "tokens_per_joule", "joules_per_token",
                           "tokens_per_s_per_user", "tokens_per_s_per_gpu", "power_w_per_gpu", "gpus"])
    # hardware comparison: frontiers only (several systems' clouds would hide each other)
    fronts = {r["hardware"]: tuple(r["plot"][k][:r["plot"]["n_front"]] for k in ("x", "y", "labels")) for r in rows
              if r["format"] == config.plot_format and "plot" in r}
    title = f"{config.model} decode, {config.seq_len:,}-token context"
    fig = plots.plot_pareto(fronts, xlabel="tokens/s/user (1 / TTL)", ylabel="tokens/J (modelled, full-system share)",
                            n_knees=1, title=f"{title}, {config.plot_format}: energy-efficiency frontiers by hardware")
    out.save_figure("energy_by_hardware.png", tidy_pareto(fig))
    first = config.systems()[0]
    label = next(r["hardware"] for r in rows if r["system"] == first)
    per_fmt = {f: next((r["plot"]["x"], r["plot"]["y"], r["plot"]["labels"]) for r in rows
                       if r["system"] == first and r["format"] == f and "plot" in r) for f in config.formats
               if any(r["system"] == first and r["format"] == f and "plot" in r for r in rows)}
    if per_fmt:
        fig = plots.plot_pareto(per_fmt, xlabel="tokens/s/user (1 / TTL)", ylabel="tokens/J (modelled)", n_knees=2,
                                title=f"{title} on {label}: energy efficiency by precision")
        out.save_figure("energy_by_precision.png", tidy_pareto(fig))

    lines = [f"# energy: tokens/J and J/token of {config.model} decode ({config.seq_len:,}-token context)", "",
             "**These are modelled numbers, not measurements.** Power per GPU = idle + (peak − idle)·utilization "
             "+ the GPU's share of host power, from datasheet TDPs and the cost model's busy times "
             "(`perfmodel.energy`). MLPerf Power's rules (arXiv 2410.12032) for measured energy, which any "
             "comparison with these figures must follow:", "", *[f"- {rule}" for rule in MLPERF_RULES], "",
             "The model describes the steady state of a decode step (the window MLPerf counts) and approximates "
             "the full-system boundary by each GPU's share of host power; it has no warm-up, no idle gaps between "
             "requests and no prefill. For scale, MLPerf Inference v4.0 reports 111.4 J per sample for "
             "Llama2-70B on an 8×H100 system (a sample is a whole request, prompt and output, so this is not a "
             "J/token figure).", "",
             "## Most tokens/J per system and precision (any interactivity)", "",
             "| system | format | layouts (feasible) | tokens/J | mJ/token | W/GPU | tokens/s/user | tokens/s/GPU | layout |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        b = r.get("best")
        if b is None:
            lines.append(f"| {r['hardware']} | {r['format']} | {r['n_layouts']:,} (0) | — | — | — | — | — | no layout fits |")
            continue
        lines.append(f"| {r['hardware']} | {r['format']} | {r['n_layouts']:,} ({r['n_feasible']:,}) | "
                     f"{b['tokens_per_joule']:.2f} | {1e3 * b['joules_per_token']:.1f} | {b['power_w_per_gpu']:.0f} | "
                     f"{b['tokens_per_s_per_user']:.1f} | {b['tokens_per_s_per_gpu']:.0f} | {b['layout']} |")
    lines += ["", "## Most tokens/J at an interactivity target (TTL ≤ target)", "",
              "| system | format | " + " | ".join(f"TTL ≤ {t:g} ms" for t in config.ttl_targets_ms) + " |",
              "|---|---|" + "---|" * len(config.ttl_targets_ms)]
    lines += [f"| {r['hardware']} | {r['format']} | " + " | ".join(_fmt_point(t) for t in r["targets"]) + " |"
              for r in rows]
    lines += ["", "Plots: `energy_by_hardware.png` (frontier of tokens/J against tokens/s/user per system, "
              f"{config.plot_format}), `energy_by_precision.png` ({label}).", ""]
    out.write_text("summary.md", "\n".join(lines))
    return {"model": config.model, "seq_len": config.seq_len, "modelled_not_measured": True,
            "best_tokens_per_joule": {f"{r['system']}/{r['format']}": r.get("best", {}).get("tokens_per_joule")
                                      for r in rows},
            "joules_per_token_at_ttl": {f"{r['system']}/{r['format']}": {f"{t['ttl_ms']:g}ms": t.get("joules_per_token")
                                                                          for t in r["targets"]} for r in rows}}
