"""The main job: calibrate on this machine, decode Helix on 8 devices, sweep the Pareto, train in MXFP6.

Five stages, each resumable (run again with the same --out to continue):

1. calibrate: time this machine's kernels (GEMM, decode attention, elementwise/copy, fake_quantize;
   `perfmodel.measure` quick plan) and fit the cost model (`perfmodel.calibrate`): held-out MAPE
   of kernels > 1 ms on the random and extrapolation splits, against the datasheet roofline; the
   fitted profile is saved (`calibration_profile.json`). With --hardware PROFILE.json the stage
   uses that profile instead of measuring.
2. train: a small byte-level transformer (flax nnx, `parallel.model`) on the CPython corpus, FP32 and
   all-MXFP6 (E3M2 weights, activations, gradients) with the same seed, data order and
   hyperparameters (`experiments.training`): validation loss of each.
3. helix decode: the trained FP32 model decodes the validation windows under a Helix layout on 8
   devices (KVP × TPA attention, one all-to-all + LSE combine, round-robin KV append, TP FFN;
   `parallel.sharded_decoder`), teacher-forced; its logits are checked against the single-device
   model (max error, tolerance rtol 1e-5 of the largest logit); then with the KV cache stored in an
   MX format: logit error and validation loss against the reference.
4. helix pareto: the Helix paper's sweep (`experiments.helix_pareto`) on GB200-NVL72 (DeepSeek-R1 and
   Llama-3.1-405B, FP4, 1M context, ≤ 64 GPUs: the headline ratios), and the same sweep on the
   calibrated profile of this machine (a model it could hold, on its 8 devices).
5. summary: summary.md and summary.json with every figure above, and quickstart.png.

Runtime on 2 shared CPU cores: 5 minutes at load 2–4, 7 minutes at load 7 (docs/experiments.md).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import jax
import numpy as np
import optax
from flax import nnx
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from numerics import FORMAT_NAMES, QuantPolicy
from parallel import Transformer, make_mesh, sharded_decoder
from perfmodel.specs import Layout, ModelSpec

from . import calibration, helix_pareto, plots
from . import corpus as corpus_lib
from . import mx_accuracy as mx
from . import training
from .results import ResultsDir


@dataclasses.dataclass(frozen=True)
class Config:
    """The main job's knobs (5–7 minutes on 2 shared CPU cores).

    Attributes:
      seed: model init, data order, calibration split.
      hardware: a fitted profile JSON to use instead of measuring this machine (stage 1 skipped).
      corpus: a local text file or folder instead of the CPython corpus.
      measure_families, measure_rounds, measure_min_round_s, fit_steps: stage 1 (see `calibrate`;
        collectives are left out: on emulated devices they are a correctness harness, not a link to fit).
      n_layers, hidden, n_heads, n_kv_heads, ffn, seq_len, batch_size, steps, lr, warmup_steps,
        eval_every, eval_windows: stage 2 (model, AdamW with warm-up and cosine decay).
      train_policy: the MX training policy (a key of `mx_accuracy.POLICIES`) compared with FP32.
      kvp, tpa: the Helix layout of stage 3 (kvp·tpa devices; TPA ≤ n_kv_heads; FFN TP over all).
      decode_batch: validation windows decoded at once.
      kv_format: the MX format of the KV cache in stage 3.
      gb200_models, n_batches: stage 4 on GB200-NVL72 (1M context, FP4, ≤ 64 GPUs).
      local_model, local_seq_len, local_max_gpus, local_bits: stage 4 on the calibrated profile.
    """

    seed: int = 0
    hardware: str | None = None
    corpus: str | None = None
    measure_families: tuple[str, ...] = ("gemm", "decode_attention", "elementwise", "fake_quantize")
    measure_rounds: int | None = None
    measure_min_round_s: float | None = None
    fit_steps: int = 3000
    n_layers: int = 2
    hidden: int = 128
    n_heads: int = 8
    n_kv_heads: int = 2
    ffn: int = 256
    seq_len: int = 128
    batch_size: int = 16
    steps: int = 800
    lr: float = 3e-3
    warmup_steps: int = 80
    eval_every: int = 100
    eval_windows: int = 256
    train_policy: str = "mxfp6_e3m2"
    kvp: int = 4
    tpa: int = 2
    decode_batch: int = 8
    kv_format: str = "mxfp8_e4m3"
    gb200_models: tuple[str, ...] = ("deepseek-r1", "llama-3.1-405b")
    n_batches: int = 96
    local_model: str = "llama-3.1-8b"
    local_seq_len: float = 32768.0
    local_max_gpus: int = 8
    local_bits: float = 16.0

    def __post_init__(self):
        calibration.Config(families=self.measure_families, rounds=self.measure_rounds,
                           min_round_s=self.measure_min_round_s, steps=self.fit_steps)  # validates these
        mx.Config(n_layers=self.n_layers, hidden=self.hidden, n_heads=self.n_heads, n_kv_heads=self.n_kv_heads,
                  ffn=self.ffn, seq_len=self.seq_len, batch_size=self.batch_size, steps=self.steps, lr=self.lr,
                  warmup_steps=self.warmup_steps, eval_every=self.eval_every, eval_windows=self.eval_windows)
        if self.train_policy not in mx.POLICIES or self.train_policy == "fp32":
            raise ValueError(f"train_policy={self.train_policy!r}; valid: {', '.join(p for p in mx.POLICIES if p != 'fp32')}")
        if self.kv_format not in FORMAT_NAMES:
            raise ValueError(f"kv_format={self.kv_format!r}; valid: {', '.join(FORMAT_NAMES)}")
        n = self.kvp * self.tpa
        if self.kvp < 1 or self.tpa < 1 or self.n_kv_heads % self.tpa or self.n_heads % n or self.ffn % n or 256 % n:
            raise ValueError(f"kvp={self.kvp} × tpa={self.tpa}: TPA must divide n_kv_heads={self.n_kv_heads} and "
                             f"N={n} must divide n_heads={self.n_heads}, ffn={self.ffn} and the 256-byte vocabulary")
        if self.seq_len % (16 * self.kvp):
            raise ValueError(f"seq_len={self.seq_len} must be a multiple of 16·kvp={16 * self.kvp} (round-robin KV "
                             "blocks of 16 tokens)")
        if self.decode_batch < 1:
            raise ValueError(f"decode_batch={self.decode_batch} must be >= 1")
        helix_pareto.Config(models=self.gb200_models, n_batches=self.n_batches)
        helix_pareto.Config(models=(self.local_model,), seq_len=self.local_seq_len, max_gpus=self.local_max_gpus,
                            bits=self.local_bits, n_batches=self.n_batches)

    @property
    def spec(self) -> ModelSpec:
        return ModelSpec(name="quickstart-lm", n_layers=self.n_layers, hidden=self.hidden, n_heads=self.n_heads,
                         n_kv_heads=self.n_kv_heads, head_dim=self.hidden // self.n_heads, ffn=self.ffn, vocab=256)


QUICK: dict = {}  # the main job is already quick; its tests shrink it further with overrides


def _stage(out: ResultsDir, name: str, fn):
    """Run `fn()` once per results folder (a one-item resumable sweep); its dict result is kept."""
    row = out.sweep(f"stage_{name}", [name], lambda _: [fn()], desc=f"quickstart: {name}")[0]
    return {k: v for k, v in row.items() if k != "key"}


# ------------------------------------------------------------------------------------------- stages

def stage_calibrate(config: Config, out: ResultsDir) -> dict:
    """Stage 1: measure and fit (or read a given profile's report)."""
    if config.hardware is not None:
        with open(config.hardware) as f:
            doc = json.load(f)
        report = doc.get("report") or {}
        head = {"hardware": doc["hardware"]["name"], "profile": config.hardware, "measured_here": False,
                "rows": None, "load_avg": list(os.getloadavg())}
        for split in ("random", "extrapolation"):
            h = (report.get(split) or {}).get("headline") or {}
            head[f"heldout_{split}"] = {"fitted_mape_pct": h.get("fitted_mape"), "datasheet_mape_pct": h.get("datasheet_mape"),
                                        "ratio_datasheet_over_fitted": h.get("ratio"), "n_kernels_gt_1ms": h.get("n")}
        calibration.resolve_hardware(config.hardware, "gb200-nvl72")  # fails early on a malformed profile
        return head
    cfg = calibration.Config(seed=config.seed, quick_plan=True, families=config.measure_families,
                             rounds=config.measure_rounds, min_round_s=config.measure_min_round_s, steps=config.fit_steps)
    return {**calibration.calibrate_and_save(cfg, out, prefix="calibration_"), "measured_here": True}


def _data(config: Config):
    data = corpus_lib.load_corpus(config.corpus)
    windows = corpus_lib.eval_windows(data.val, config.seq_len, config.eval_windows)
    n = len(windows) // config.batch_size * config.batch_size
    if n == 0:
        raise ValueError(f"validation split gives {len(windows)} windows, fewer than batch_size={config.batch_size}")
    return data, windows[:n]


def stage_train(config: Config, out: ResultsDir) -> dict:
    """Stage 2: FP32 and the MX policy from the same init, data order and schedule; FP32 params saved."""
    data, windows = _data(config)
    val = windows.reshape(-1, config.batch_size, config.seq_len + 1)
    batches = corpus_lib.sample_batches(data.train, config.steps, config.batch_size, config.seq_len, config.seed)
    lrs = training.lr_schedule(config.lr, config.steps, config.warmup_steps)
    spec = config.spec

    def work(chunk):
        rows = []
        for name in chunk:
            policy = None if name == "fp32" else training.policy_for(*mx.POLICIES[name])
            start = time.perf_counter()
            params, curve = training.train(spec, policy, training.init_params(spec, config.seed), batches, lrs,
                                           val, config.eval_every, 0.1, 1.0, desc=f"train {name}")
            wall = time.perf_counter() - start
            if name == "fp32":
                training.save_params(out.file("fp32_params.npz"), params)
            rows.append({"policy": name, "val_loss": curve[-1][2], "curve": curve, "wall_s": wall,
                         "tokens_per_s": config.steps * config.batch_size * config.seq_len / wall})
        return rows

    runs = out.sweep("training", ["fp32", config.train_policy], work, desc="train FP32 vs MX")
    fp32, mxr = runs
    n_params = sum(int(x.size) for x in jax.tree.leaves(training.init_params(spec, config.seed)))
    return {"corpus": data.name, "corpus_sha256": data.sha256, "python_version": data.python_version,
            "n_params": n_params, "tokens": config.steps * config.batch_size * config.seq_len,
            "policy": config.train_policy, "fp32_val_loss": fp32["val_loss"], "mx_val_loss": mxr["val_loss"],
            "delta": mxr["val_loss"] - fp32["val_loss"],
            "relative_pct": 100 * (mxr["val_loss"] - fp32["val_loss"]) / fp32["val_loss"],
            "curves": {r["policy"]: r["curve"] for r in runs}, "tokens_per_s": {r["policy"]: r["tokens_per_s"] for r in runs}}


def _loss(logits: np.ndarray, targets: np.ndarray) -> float:
    return float(optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean())


def stage_helix(config: Config, out: ResultsDir) -> dict:
    """Stage 3: teacher-forced Helix decode of the trained FP32 model vs the single-device model."""
    n = config.kvp * config.tpa
    if n > jax.device_count():
        raise ValueError(f"the Helix layout KVP{config.kvp}×TPA{config.tpa} needs {n} devices, JAX has "
                         f"{jax.device_count()}: run through the CLI (8 emulated CPU devices) or set "
                         "jax_num_cpu_devices before JAX starts")
    spec = config.spec
    params = training.load_params(out.file("fp32_params.npz"), training.init_params(spec, config.seed))
    model = nnx.merge(nnx.graphdef(nnx.eval_shape(lambda: Transformer(spec, rngs=nnx.Rngs(0)))), params)
    _, windows = _data(config)
    idx = np.linspace(0, len(windows) - 1, config.decode_batch).round().astype(int)
    tokens, targets = windows[idx, :-1], windows[idx, 1:]
    reference = np.asarray(nnx.jit(lambda m, t: m(t))(model, tokens))
    mesh = make_mesh(Layout(kvp=config.kvp, tpa=config.tpa, tpf=n, batch=config.decode_batch))
    scale = float(np.abs(reference).max())
    out_rows = {}
    for name, policy in (("fp32", None), (config.kv_format, QuantPolicy(kv_cache=config.kv_format))):
        decoder = sharded_decoder(model, mesh, batch=config.decode_batch, max_seq=config.seq_len, policy=policy)
        logits = np.asarray(decoder.teacher_forced(tokens))
        err = np.abs(logits - reference)
        out_rows[name] = {"max_abs_error": float(err.max()), "max_rel_error": float(err.max() / scale),
                          "val_loss": _loss(logits, targets),
                          "within_tolerance": bool(np.all(err <= 1e-5 * np.abs(reference) + 1e-5 * scale))}
    return {"layout": f"KVP{config.kvp}×TPA{config.tpa} attention, TP{n} FFN", "devices": n,
            "device_kind": jax.devices()[0].device_kind, "sequences": config.decode_batch, "tokens": config.seq_len,
            "reference_val_loss": _loss(reference, targets), "max_abs_logit": scale, "kv_format": config.kv_format,
            "fp32": out_rows["fp32"], "mx_kv": out_rows[config.kv_format]}


def stage_pareto(config: Config, profile: str | None) -> dict:
    """Stage 4: the Helix sweep on GB200-NVL72 (headline ratios) and on this machine's profile."""
    rng = np.random.default_rng(config.seed)
    gb = helix_pareto.Config(seed=config.seed, models=config.gb200_models, n_batches=config.n_batches,
                             alpha_scales=(1.0,), plot_points=1500)
    result = {"gb200": {m: helix_pareto.sweep_model(m, gb, 1.0, rng) for m in config.gb200_models}}
    if profile is not None:
        local = helix_pareto.Config(seed=config.seed, hardware=profile, models=(config.local_model,),
                                    seq_len=config.local_seq_len, max_gpus=config.local_max_gpus, bits=config.local_bits,
                                    n_batches=config.n_batches, pp_options=(1, 2, 4), alpha_scales=(1.0,), plot_points=1500)
        try:
            result["local"] = {config.local_model: helix_pareto.sweep_model(config.local_model, local, 1.0, rng)}
        except ValueError as e:  # e.g. no feasible Helix layout on this machine's 8 devices
            result["local"] = {config.local_model: {"error": str(e)}}
    return result


# ------------------------------------------------------------------------------------------ summary

def _frontier_axes(ax, row: dict, title: str):
    for k, (name, s) in enumerate(row["plot"].items()):
        x, y = np.asarray(s["x"]), np.asarray(s["y"])
        f = plots.pareto_front(x, y)
        ax.scatter(x, y, s=3, alpha=0.15, color=f"C{k}", linewidths=0)
        ax.step(x[f], y[f], where="post", color=f"C{k}", lw=1.6, label=name.split(" (")[0])
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("tokens/s/user")
    ax.set_ylabel("tokens/s/GPU")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)


def dashboard(config: Config, train: dict, pareto: dict) -> Figure:
    """One figure: loss curves FP32 vs MX, the GB200 Helix frontiers, the calibrated machine's frontiers."""
    panels = [("train", None)] + [("gb200", m) for m in pareto["gb200"]] + [
        ("local", m) for m, r in pareto.get("local", {}).items() if "plot" in r]
    fig = Figure(figsize=(4.3 * len(panels), 4.0))
    FigureCanvasAgg(fig)
    for k, (kind, m) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), k + 1)
        if kind == "train":
            for j, (name, curve) in enumerate(train["curves"].items()):
                c = np.asarray(curve, dtype=float)
                label = "FP32" if name == "fp32" else mx.POLICY_TITLES.get(name, name)
                ax.plot(c[:, 0], c[:, 2], "o-", color=f"C{j}", ms=3, label=f"{label}: {c[-1, 2]:.3f}")
            ax.set_xlabel("step")
            ax.set_ylabel("validation loss (nats/byte)")
            ax.set_title(f"Training, {train['n_params'] / 1e6:.2f}M params, CPython corpus", fontsize=9)
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7)
        else:
            r = pareto[kind][m]
            where = "GB200-NVL72, FP4, 1M ctx" if kind == "gb200" else \
                f"this machine's profile, {config.local_seq_len:,.0f} ctx"
            _frontier_axes(ax, r, f"{m} decode: {where}")
    fig.tight_layout()
    return helix_pareto.tidy_pareto(fig)


def _pct(v):
    return "—" if v is None else f"{v:.1f}%"


def _paper_gap() -> str:
    """The MX paper's all-MXFP6 training gap over FP32, absolute and relative, from mx_accuracy.PAPER_TRAINING."""
    gaps = [(v[1] - v[0], 100 * (v[1] - v[0]) / v[0]) for v in mx.PAPER_TRAINING.values()]
    return (f"+{min(g for g, _ in gaps):.2f} to +{max(g for g, _ in gaps):.2f} nats/token "
            f"(+{min(r for _, r in gaps):.2f}% to +{max(r for _, r in gaps):.2f}%)")


def _times(v):
    return "—" if v is None else f"{v:.2f}×"


def _ratio_line(r: dict) -> str:
    paper = r.get("paper", {})
    cells = []
    for k in helix_pareto.RATIOS:
        v = r[k]
        ref = paper.get(k)
        cell = f"{100 * v:.1f}%" if k == "hopb" else f"{v:.2f}×"
        if ref is not None:
            cell += f" (paper {100 * ref:.0f}%)" if k == "hopb" else f" (paper {ref:g}×)"
        cells.append(cell)
    return " | ".join(cells)


def run(config: Config, out: ResultsDir) -> dict:
    """Run the five stages; write summary.md, summary.json's headline, quickstart.png and the stage files."""
    start = time.perf_counter()
    cal = _stage(out, "calibrate", lambda: stage_calibrate(config, out))
    train = _stage(out, "train", lambda: stage_train(config, out))
    helix = _stage(out, "helix_decode", lambda: stage_helix(config, out))
    pareto = _stage(out, "helix_pareto", lambda: stage_pareto(config, cal["profile"]))
    out.write_csv("training_curves.csv", [{"policy": p, "step": c[0], "train_loss": c[1], "val_loss": c[2]}
                                          for p, curve in train["curves"].items() for c in curve])
    out.write_csv("helix_ratios.csv", [{"hardware": r["hardware"], "model": m, "n_layouts": r["n_layouts"],
                                        **{k: r[k] for k in helix_pareto.RATIOS},
                                        **{f"paper_{k}": v for k, v in r["paper"].items()}}
                                       for kind in ("gb200", "local") for m, r in pareto.get(kind, {}).items()
                                       if "error" not in r])
    for kind, rows in pareto.items():
        for m, r in rows.items():
            if "plot" in r:
                fig = plots.plot_pareto({k: (s["x"], s["y"], s["labels"]) for k, s in r["plot"].items()},
                                        xlabel="tokens/s/user (1 / TTL)", ylabel="tokens/s/GPU",
                                        title=f"{m} decode — {r['hardware']}")
                out.save_figure(f"pareto_{kind}_{m}.png", helix_pareto.tidy_pareto(fig))
    out.save_figure("quickstart.png", dashboard(config, train, pareto))
    wall = time.perf_counter() - start
    load = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    r_, e_, s_ = cal["heldout_random"], cal["heldout_extrapolation"], cal.get("heldout_random_seeds")
    fp, mk = helix["fp32"], helix["mx_kv"]
    lines = ["# quickstart: what this run measured", "",
             f"Runtime {wall / 60:.1f} min on {os.cpu_count()} CPU cores (load average {load}); JAX "
             f"{jax.__version__}, backend {jax.default_backend()}, {jax.device_count()} devices.", "",
             "## 1. Calibration of the cost model" + ("" if cal.get("measured_here", True) else
                                                      f" (profile {cal['profile']}, not measured here)"), "",
             f"Hardware {cal['hardware']}" + (f", {cal['rows']} kernels timed" if cal.get("rows") else "") + ". "
             "Held-out MAPE over kernels > 1 ms, fitted model vs the uncalibrated datasheet roofline:", "",
             "| split | kernels | fitted | datasheet | datasheet / fitted |", "|---|---|---|---|---|",
             f"| random | {r_['n_kernels_gt_1ms']} | {_pct(r_['fitted_mape_pct'])} | {_pct(r_['datasheet_mape_pct'])} | "
             f"{_times(r_['ratio_datasheet_over_fitted'])} |",
             f"| extrapolation | {e_['n_kernels_gt_1ms']} | {_pct(e_['fitted_mape_pct'])} | {_pct(e_['datasheet_mape_pct'])} | "
             f"{_times(e_['ratio_datasheet_over_fitted'])} |", "",
             *([f"Random split over split seeds {s_['seeds']}: fitted MAPE mean {_pct(s_['mean_pct'])} (min "
                f"{_pct(s_['min_pct'])}, max {_pct(s_['max_pct'])}).", ""] if s_ else []),
             "## 2. Training: FP32 vs MXFP6 on the CPython corpus", "",
             f"{train['n_params'] / 1e6:.2f}M-parameter byte-level transformer, {train['tokens'] / 1e6:.2f}M training "
             f"tokens, same seed, data order and schedule; corpus SHA-256 `{train['corpus_sha256'][:16]}…`, Python "
             f"{train['python_version']}. Validation loss (nats/byte): FP32 **{train['fp32_val_loss']:.4f}**, "
             f"{mx.POLICY_TITLES.get(train['policy'], train['policy'])} **{train['mx_val_loss']:.4f}** "
             f"(Δ {train['delta']:+.4f}, {train['relative_pct']:+.2f}%; the MX paper reports {_paper_gap()} for "
             "its 20M–1.5B models; one seed here — mx-accuracy gives intervals over seeds).", "",
             f"## 3. Helix decode on {helix['devices']} {helix['device_kind']} devices", "",
             f"{helix['layout']}, {helix['sequences']} validation sequences × {helix['tokens']} tokens, teacher-forced "
             f"against the single-device model (largest |logit| {helix['max_abs_logit']:.2f}):", "",
             "| KV cache | max abs logit error | relative to max logit | within rtol 1e-5 | validation loss |",
             "|---|---|---|---|---|",
             f"| FP32 | {fp['max_abs_error']:.2e} | {fp['max_rel_error']:.2e} | {'yes' if fp['within_tolerance'] else 'NO'} | "
             f"{fp['val_loss']:.4f} |",
             f"| {helix['kv_format']} | {mk['max_abs_error']:.2e} | {mk['max_rel_error']:.2e} | (quantized) | "
             f"{mk['val_loss']:.4f} (Δ {mk['val_loss'] - helix['reference_val_loss']:+.4f}) |",
             f"| single-device reference | — | — | — | {helix['reference_val_loss']:.4f} |", "",
             "## 4. Helix Pareto: headline ratios (Helix over the best of TP, DP+EP, Medha KVP; ±PP)", "",
             "| hardware | model | layouts | interactivity | throughput | TTL at fixed batch | batch at equal TTL | HOP-B |",
             "|---|---|---|---|---|---|---|---|"]
    for kind in ("gb200", "local"):
        for m, r in pareto.get(kind, {}).items():
            if "error" in r:
                lines.append(f"| this machine | {m} | — | {r['error']} | | | | |")
            else:
                lines.append(f"| {r['hardware']} | {m} | {r['n_layouts']:,} | {_ratio_line(r)} |")
    lines += ["", "Plots: `quickstart.png`, `calibration_predicted_vs_measured.png`, " + ", ".join(
        f"`pareto_{k}_{m}.png`" for k, rows in pareto.items() for m, r in rows.items() if "plot" in r) + ".", ""]
    out.write_text("summary.md", "\n".join(lines))

    def ratios(r):
        return {"error": r["error"]} if "error" in r else {
            "hardware": r["hardware"], "n_layouts": r["n_layouts"], **{k: r[k] for k in helix_pareto.RATIOS},
            "paper": r["paper"]}

    return {
        "calibration": {"hardware": cal["hardware"], "measured_here": cal.get("measured_here", True),
                        "heldout_mape_pct": r_["fitted_mape_pct"], "heldout_datasheet_mape_pct": r_["datasheet_mape_pct"],
                        "heldout_ratio": r_["ratio_datasheet_over_fitted"], "heldout_n": r_["n_kernels_gt_1ms"],
                        "extrapolation_mape_pct": e_["fitted_mape_pct"],
                        "extrapolation_datasheet_mape_pct": e_["datasheet_mape_pct"]},
        "helix_decode": {"layout": helix["layout"], "devices": helix["devices"],
                         "max_abs_error": fp["max_abs_error"], "max_rel_error": fp["max_rel_error"],
                         "within_tolerance": fp["within_tolerance"], "kv_format": helix["kv_format"],
                         "mx_kv_max_abs_error": mk["max_abs_error"], "mx_kv_val_loss": mk["val_loss"],
                         "fp32_val_loss": fp["val_loss"], "reference_val_loss": helix["reference_val_loss"]},
        "helix_ratios": {kind: {m: ratios(r) for m, r in rows.items()} for kind, rows in pareto.items()},
        "training": {"policy": train["policy"], "fp32_val_loss": train["fp32_val_loss"],
                     "mx_val_loss": train["mx_val_loss"], "delta": train["delta"], "relative_pct": train["relative_pct"],
                     "n_params": train["n_params"], "tokens": train["tokens"], "corpus_sha256": train["corpus_sha256"]},
        "runtime_s": wall, "load_avg": load,
    }
