"""Studies: the Helix paper reproduction and the disaggregation table, as library functions.

    helix_study(model, *, hardware="gb200-nvl72", seq_len=1e6, max_gpus=64, ...) -> dict
    disaggregation_study(models, mixes, *, hardware="gb200-nvl72", ...) -> list of dict rows
    python -m perfmodel.studies [--quick]        prints both as markdown

Helix (arXiv 2507.07120 §4): every decode layout of a model on 1–64 GPUs of a GB200 NVL72 with
FP4 weights, KV, activations and communication at a 1M-token context is costed; the Helix frontier
(KVP > 1, FFN on all N GPUs) is compared with the frontier of every other layout (TP with KV
duplication, DP attention + EP, Medha-style KVP whose FFN stays on the TPA GPUs, each with PP):

    interactivity     max tokens/s/user, Helix / baselines            (paper: Llama-405B 1.13×)
    throughput        max over equal tokens/s/user of tokens/s/GPU     (paper: Llama-405B 4×)
    ttl_fixed_batch   max over batch of min TTL baseline / min TTL Helix (paper: DeepSeek-R1 1.5×)
    batch_equal_ttl   max over TTL budgets of the largest batch within it, Helix / baselines
                                                                        (paper: DeepSeek-R1 32×)
    hopb              max over equal tokens/s/GPU of the tokens/s/user lost without HOP-B, both with
                      one request per micro-batch (run one after another when off: the paper's
                      Fig. 3 ablation); also against a single batched all-to-all (micro-batches = 1)
                                                                        (paper: ≈12% dense, ≈1% DS-R1)

Disaggregation (arXiv 2506.05508 §4): per model and ISL/OSL mix, co-located serving (chunked
prefill piggybacked) against disaggregated serving with rate matching, at a set of interactivity
targets: the gain in tokens/s/GPU, the rate-matched α, and fixed α = 0.5 and 3.5 relative to it.
"""

from __future__ import annotations

import argparse
import math

import jax.numpy as jnp
import numpy as np

from .efficiency import EfficiencyParams, datasheet_params
from .memory import fits
from .presets import get_hardware, get_model
from .specs import HardwareSpec, ModelSpec
from .serving import colocated, disaggregated, envelope, pareto_front, replica_gpus
from .step import LayoutArrays, decode_step, prefill_step
from .sweep import decode_sweep, enumerate_layouts, evaluate

PAPER_HELIX = {
    "deepseek-r1": {"ttl_fixed_batch": 1.5, "batch_equal_ttl": 32.0, "hopb": 0.01},
    "llama-3.1-405b": {"interactivity": 1.13, "throughput": 4.0, "hopb": 0.12},
}


def scaled_alpha(params: EfficiencyParams, scale: float) -> EfficiencyParams:
    """`params` with every link latency α multiplied by `scale` (the latency-sensitivity knob)."""
    return params._replace(link_alpha_log=params.link_alpha_log + math.log(scale))


def log_batch_grid(n: int, top: int) -> list[int]:
    """n log-spaced batch sizes from 1 to `top`, rounded to integers, unique."""
    return sorted({int(round(b)) for b in np.geomspace(1, top, n)})


def _best_by_group(keys, values, valid, mode):
    """Per unique key among valid points: min or max of values (dict)."""
    out = {}
    for k, v in zip(keys[valid], values[valid]):
        if k not in out or (v < out[k] if mode == "min" else v > out[k]):
            out[k] = v
    return out


def helix_ratios(r: dict, fam: np.ndarray, lay: LayoutArrays) -> dict:
    """The paper's four comparisons and the HOP-B ablation from one decode sweep (numpy)."""
    x, y, ttl, ok = r["tokens_per_s_per_user"], r["tokens_per_s_per_gpu"], r["ttl_s"], r["fits"]
    hopb, mb, batch = np.asarray(lay.hopb), np.asarray(lay.microbatches), np.asarray(lay.batch)
    helix = (fam == "helix") & ok
    overlap = helix & ((hopb == 1.0) | (mb == 1.0))
    in_flight = np.minimum(np.asarray(lay.pp), batch)
    per_request = mb == np.ceil(batch / (in_flight * np.asarray(lay.dp_attn)))  # one request per micro-batch
    paper_on = helix & per_request & ((hopb == 1.0) | (mb == 1.0))
    paper_off = helix & per_request & ((hopb == 0.0) | (mb == 1.0))
    base = (fam != "helix") & ok & ((hopb == 1.0) | (mb == 1.0))
    out = {"n_layouts": int(len(fam)), "n_feasible": {f: int(((fam == f) & ok).sum()) for f in np.unique(fam)}}
    if not overlap.any() or not base.any():
        return {**out, "error": "no feasible Helix or baseline layout"}
    xh, yh = pareto_front(x, y, overlap)
    xb, yb = pareto_front(x, y, base)
    out["interactivity"] = float(xh.max() / xb.max())
    grid = np.geomspace(max(xh.min(), xb.min()), min(xh.max(), xb.max()), 400)
    ratio = envelope(xh, yh, grid) / envelope(xb, yb, grid)
    i = int(np.argmax(ratio))
    out["throughput"] = float(ratio[i])
    out["throughput_at_tokens_per_s_per_user"] = float(grid[i])
    th = _best_by_group(batch, ttl, overlap, "min")
    tb = _best_by_group(batch, ttl, base, "min")
    common = sorted(set(th) & set(tb))
    ttl_ratio = [tb[b] / th[b] for b in common]
    j = int(np.argmax(ttl_ratio))
    out["ttl_fixed_batch"], out["ttl_fixed_batch_at_batch"] = float(ttl_ratio[j]), int(common[j])
    out["ttl_ratio_by_batch"] = {int(b): float(v) for b, v in zip(common, ttl_ratio)}
    budgets = np.unique(ttl[base])
    bh = _running_max_batch(ttl[overlap], batch[overlap], budgets)
    bb = _running_max_batch(ttl[base], batch[base], budgets)
    k = int(np.argmax(bh / bb))
    out["batch_equal_ttl"], out["batch_equal_ttl_at_ttl_s"] = float(bh[k] / bb[k]), float(budgets[k])
    out["hopb"] = _interactivity_loss(x, y, paper_on, paper_off)
    out["hopb_vs_one_batched_all_to_all"] = _interactivity_loss(x, y, overlap, helix & (mb == 1.0))
    out["exposed_comm_share_at_max_interactivity"] = float(r["comm_s"][overlap][np.argmax(x[overlap])]
                                                           * x[overlap].max())
    out["frontier_helix"] = (xh, yh)
    out["frontier_baseline"] = (xb, yb)
    return out


def _interactivity_loss(x, y, with_mask, without_mask):
    """Largest relative loss of tokens/s/user at equal tokens/s/GPU when going from the frontier of
    `with_mask` to that of `without_mask`: max_y 1 − x_without(y) / x_with(y)."""
    yw, xw = pareto_front(y, x, with_mask)  # frontier with the axes swapped: x as a function of y
    yo, xo = pareto_front(y, x, without_mask)
    grid = np.geomspace(max(yw.min(), yo.min()), min(yw.max(), yo.max()), 400)
    return float(np.max(1.0 - envelope(yo, xo, grid) / envelope(yw, xw, grid)))


def _running_max_batch(ttl, batch, budgets):
    """For each TTL budget: the largest batch with TTL ≤ budget (0 when none)."""
    order = np.argsort(ttl)
    best = np.maximum.accumulate(batch[order])
    idx = np.searchsorted(ttl[order], budgets, side="right") - 1
    return np.where(idx >= 0, best[np.maximum(idx, 0)], 0.0)


def helix_study(model: str, *, hardware: str = "gb200-nvl72", seq_len: float = 1e6, max_gpus: int = 64,
                bits: float = 4.0, n_batches: int = 320, max_batch: int = 16384,
                pp_options=(1, 2, 3, 4, 6, 8), alpha_scale: float = 1.0, progress: bool = False) -> dict:
    """Sweep every decode layout of `model` and compare Helix with the best baselines.

    Args:
      model, hardware: preset names.
      seq_len: KV context per request (1M in the paper).
      max_gpus: bound on GPUs per replica (64 in the paper).
      bits: bits per element of weights, KV, activations and communication (paper: FP4 = 4).
      n_batches, max_batch: batch grid (log-spaced, rounded, unique).
      pp_options: pipeline depths (uneven stages allowed).
      alpha_scale: multiplies every link latency α of the datasheet prior (sensitivity).

    Returns:
      dict of ratios (see module docstring), layout counts, the two frontiers.
    """
    hw = get_hardware(hardware)
    r, fam, lay = helix_sweep(get_model(model), hw, scaled_alpha(datasheet_params(hw), alpha_scale),
                              seq_len=seq_len, max_gpus=max_gpus, bits=bits, n_batches=n_batches,
                              max_batch=max_batch, pp_options=pp_options, progress=progress)
    return {"model": model, "hardware": hardware, "alpha_scale": alpha_scale, **helix_ratios(r, fam, lay)}


def helix_sweep(model: ModelSpec, hw: HardwareSpec, params: EfficiencyParams, *, seq_len: float,
                max_gpus: int, bits: float, n_batches: int, max_batch: int, pp_options, progress: bool = False,
                desc: str | None = None):
    """Decode metrics of every layout of the Helix study (all families, HOP-B on and off).

    Args:
      model, hw, params: the model, the hardware and its efficiencies (datasheet or a fitted profile).
      seq_len, max_gpus, bits, n_batches, max_batch, pp_options: as in `helix_study`.
      progress, desc: progress bar and its label.

    Returns:
      (metrics dict of `sweep.decode_sweep`, family per layout, the `LayoutArrays`).
    """
    lay, fam = enumerate_layouts(model, max_gpus=max_gpus, batches=log_batch_grid(n_batches, max_batch),
                                 pp_options=pp_options, microbatch_modes=("none", "per_request", "pow2"),
                                 hopb_options=(1.0, 0.0), bits=(bits,) * 4)
    kw = {"desc": desc} if desc else {}
    return decode_sweep(model, hw, params, lay, seq_len, progress=progress, **kw), fam, lay


# ---------------------------------------------------------------------------------- disaggregation

MIXES = {"prefill-heavy": (8192, 256), "balanced": (2048, 2048), "decode-heavy": (512, 4096)}
INTERACTIVITY_TARGETS = (10.0, 20.0, 50.0, 100.0, 200.0)  # tokens/s/user


def _with_chunks(lay: LayoutArrays, chunks) -> LayoutArrays:
    n = len(lay.tpa)
    rep = LayoutArrays(*(np.tile(np.asarray(x), len(chunks)) for x in lay))
    return rep._replace(chunk=np.repeat(np.asarray(chunks, np.float32), n))


def best_prefill(model, hw, params, isl, *, ttft_limit_s, max_gpus, bits, batches=(1, 2, 4, 8, 16, 32),
                 chunks=(0, 2048, 8192)):
    """The prefill configuration of most requests/s/GPU whose TTFT meets the limit (arXiv 2506.05508
    §3: max batch / (TTFT · GPUs) under the TTFT limit). Returns (LayoutArrays row, metrics dict)."""
    lay, _ = enumerate_layouts(model, max_gpus=max_gpus, batches=list(batches), pp_options=(1, 2, 4),
                               families=("tp", "dp_ep"), microbatch_modes=("none",), bits=(bits,) * 4)
    lay = _with_chunks(lay, chunks)

    def fn(l):
        st = prefill_step(model, hw, params, l, isl)
        c = jnp.where(l.chunk > 0, jnp.minimum(l.chunk, isl), isl)
        ok, _ = fits(model, hw, l, isl, tokens=l.batch * c)
        return dict(ttft_s=st.time_s, rate_per_gpu=l.batch / (st.period_s * replica_gpus(l)), fits=ok)

    r = evaluate(fn, lay)
    valid = r["fits"] & (r["ttft_s"] <= ttft_limit_s)
    if not valid.any():
        raise ValueError(f"no prefill layout of {model.name} meets TTFT ≤ {ttft_limit_s} s at ISL={isl}")
    i = int(np.argmax(np.where(valid, r["rate_per_gpu"], -np.inf)))
    row = LayoutArrays(*(np.asarray(x)[i] for x in lay))
    return row, {k: float(v[i]) for k, v in r.items()}


def disaggregation_row(model_name: str, mix: str, *, hardware: str = "gb200-nvl72", bits: float = 8.25,
                       max_gpus: int = 64, ttft_limit_s: float = 10.0, n_batches: int = 48,
                       targets=INTERACTIVITY_TARGETS) -> dict:
    """Co-located vs disaggregated for one model and ISL/OSL mix (see module docstring)."""
    m, hw = get_model(model_name), get_hardware(hardware)
    params = datasheet_params(hw)
    isl, osl = MIXES[mix]
    pf_row, pf_metrics = best_prefill(m, hw, params, float(isl), ttft_limit_s=ttft_limit_s,
                                      max_gpus=max_gpus, bits=bits)
    lay, _ = enumerate_layouts(m, max_gpus=max_gpus, batches=log_batch_grid(n_batches, 2048), pp_options=(1, 2, 4),
                               families=("tp", "dp_ep"), microbatch_modes=("none",), bits=(bits,) * 4)
    ctx = isl + 0.5 * osl

    def fn(l):
        pf = LayoutArrays(*(jnp.broadcast_to(jnp.asarray(v), l.tpa.shape) for v in pf_row))
        steps = (prefill_step(m, hw, params, pf, float(isl)), decode_step(m, hw, params, l, ctx))
        co = colocated(m, hw, params, l, float(isl), float(osl))
        out = dict(co_x=co.tokens_per_s_per_user, co_y=co.tokens_per_s_per_gpu,
                   co_ok=co.fits & (co.ttft_s <= ttft_limit_s))
        for name, a in (("dis", None), ("a05", 0.5), ("a35", 3.5)):
            d = disaggregated(m, hw, params, pf, l, float(isl), float(osl), alpha=a, steps=steps)
            out[f"{name}_x"], out[f"{name}_y"] = d.tokens_per_s_per_user, d.tokens_per_s_per_gpu
            out[f"{name}_ok"] = d.fits & (d.ttft_s <= ttft_limit_s)
            if a is None:
                out["alpha"] = d.alpha
        return out

    r = evaluate(fn, lay)
    fronts = {k: pareto_front(r[f"{k}_x"], r[f"{k}_y"], r[f"{k}_ok"]) for k in ("co", "dis", "a05", "a35")}
    t = np.asarray(targets, np.float64)
    env = {k: envelope(*fronts[k], t) for k in fronts}
    # α of the rate-matched point that attains the envelope at each target
    dis_ok = r["dis_ok"]
    alphas = []
    for target in t:
        sel = dis_ok & (r["dis_x"] >= target)
        alphas.append(float(r["alpha"][sel][np.argmax(r["dis_y"][sel])]) if sel.any() else float("nan"))
    with np.errstate(divide="ignore", invalid="ignore"):
        gain = np.where(np.isfinite(env["co"]) & (env["co"] > 0), env["dis"] / env["co"], np.nan)
        rel05 = np.where(env["dis"] > 0, env["a05"] / env["dis"], np.nan)
        rel35 = np.where(env["dis"] > 0, env["a35"] / env["dis"], np.nan)
    return {"model": model_name, "mix": mix, "isl": isl, "osl": osl, "targets": t.tolist(),
            "gain": gain.tolist(), "alpha": alphas, "fixed_0.5": rel05.tolist(), "fixed_3.5": rel35.tolist(),
            "prefill": {k: float(getattr(pf_row, k)) for k in ("tpa", "dp_attn", "tpf", "ep", "pp", "batch", "chunk")},
            "prefill_metrics": pf_metrics, "n_decode_layouts": int(len(lay.tpa))}


def disaggregation_study(models=("llama-3.1-8b", "llama-3.1-70b", "llama-3.1-405b", "deepseek-r1"),
                         mixes=tuple(MIXES), **kw) -> list[dict]:
    """`disaggregation_row` for every model × mix."""
    return [disaggregation_row(m, mix, **kw) for m in models for mix in mixes]


# ------------------------------------------------------------------------------------------- report

def _fmt(v, digits=2):
    return "—" if v is None or not np.isfinite(v) else f"{v:.{digits}f}"


def format_helix(results: list[dict]) -> str:
    """Markdown table of `helix_study` results against the paper's headlines."""
    lines = ["| model | α scale | layouts | interactivity | throughput | TTL @ fixed batch | batch @ equal TTL "
             "| HOP-B (paper ablation) | HOP-B vs one batched all-to-all | exposed comm at max tok/s/user |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        paper = PAPER_HELIX.get(r["model"], {})

        def cell(key, pct=False):
            got = r.get(key)
            ref = paper.get(key)
            g = f"{100 * got:.1f}%" if pct else f"{got:.2f}×"
            return g + (f" (paper {100 * ref:.0f}%)" if pct and ref else f" (paper {ref}×)" if ref else "")

        lines.append(f"| {r['model']} | {r['alpha_scale']:g} | {r['n_layouts']:,} | {cell('interactivity')} | "
                     f"{cell('throughput')} | {cell('ttl_fixed_batch')} | {cell('batch_equal_ttl')} | "
                     f"{cell('hopb', True)} | {100 * r['hopb_vs_one_batched_all_to_all']:.1f}% | "
                     f"{100 * r['exposed_comm_share_at_max_interactivity']:.0f}% |")
    return "\n".join(lines)


def format_disaggregation(rows: list[dict]) -> str:
    """Markdown table: per model × mix and interactivity target, gain, α, fixed-α ratios."""
    targets = rows[0]["targets"]
    head = "| model | ISL/OSL | " + " | ".join(f"{t:g} tok/s/user: gain, α, α=0.5, α=3.5" for t in targets) + " |"
    lines = [head, "|---|---|" + "---|" * len(targets)]
    for r in rows:
        cells = [f"{_fmt(g)}×, {_fmt(a, 1)}, {_fmt(f5)}, {_fmt(f35)}"
                 for g, a, f5, f35 in zip(r["gain"], r["alpha"], r["fixed_0.5"], r["fixed_3.5"])]
        lines.append(f"| {r['model']} | {r['isl']}/{r['osl']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    """Print the Helix reproduction and the disaggregation table."""
    parser = argparse.ArgumentParser(prog="python -m perfmodel.studies", description=main.__doc__)
    parser.add_argument("--quick", action="store_true", help="coarser grids (seconds instead of minutes)")
    args = parser.parse_args(argv)
    n_batches = 96 if args.quick else 320
    helix = []
    for scale in (1.0, 0.25):
        for model in ("deepseek-r1", "llama-3.1-405b"):
            helix.append(helix_study(model, n_batches=n_batches, alpha_scale=scale, progress=not args.quick))
    print("## Helix reproduction (GB200-NVL72, FP4, 1M context, 1–64 GPUs)\n")
    print(format_helix(helix))
    models = ("llama-3.1-8b", "llama-3.1-70b") if args.quick else ("llama-3.1-8b", "llama-3.1-70b",
                                                                   "llama-3.1-405b", "deepseek-r1")
    print("\n## Disaggregated vs co-located (GB200-NVL72, MXFP8, TTFT ≤ 10 s)\n")
    print("Each cell: tokens/s/GPU gain of rate-matched disaggregation over co-located; the rate-matched α;"
          " fixed α = 0.5 and 3.5 as a fraction of rate-matched.\n")
    print(format_disaggregation(disaggregation_study(models, n_batches=24 if args.quick else 48)))


if __name__ == "__main__":
    main()
