"""Error and bytes of a Helix decode step with MX-quantized KV cache, weights and all-to-all payload.

One Helix decoder-layer decode step (attention on KVP × TPA devices, one all-to-all of partial
outputs + LSE over KVP, W_O and FFN on all N devices) runs on the device mesh with a `QuantPolicy`
quantizing one role at a time — the KV cache (prefilled cache included), the weights, the all-to-all
payload (packed element codes + scales + FP32 LSE) — and then all three; each output is compared with
the FP32 step on the same inputs (`parallel.mx_study`). The all-to-all bytes per device are read
from the compiled HLO (`parallel.hlo.collective_bytes`). Swept over numerics formats and layouts, for
a GQA layer (Llama head geometry) and an MLA layer (DeepSeek-V3 latent KV, absorbed form).

Errors are relative L2 errors of the layer's update y − x; SQNR in dB for all three roles together.
Quantized all-to-all payloads are a question no public system answers yet: the table gives the bytes
saved and the error they cost.

Needs kvp·tpa devices: the CLI gives JAX 8 emulated CPU devices (or the accelerators of the host).
Reference: Helix, arXiv 2507.07120 §2.1; OCP MX v1.0; arXiv 2310.10537.
Runtime on 2 shared CPU cores (docs/experiments.md): --quick about 2 minutes, full mode about 3 minutes.
"""

from __future__ import annotations

import dataclasses

import jax

from numerics import FORMAT_NAMES
from parallel import mx_study
from perfmodel.specs import Layout

from . import plots
from .results import ResultsDir

SPECS = {"gqa": mx_study.GQA_SPEC, "mla": mx_study.MLA_SPEC}
ROLE_TITLES = {"kv": "KV cache", "weights": "weights", "a2a": "all-to-all payload", "all": "all three"}


def parse_layout(text: str) -> tuple[int, int]:
    """"KVPxTPA" (e.g. "4x2") → (kvp, tpa).

    Raises:
      ValueError: text not of that form or non-positive degrees.
    """
    parts = text.lower().split("x")
    try:
        kvp, tpa = (int(p) for p in parts)
    except ValueError:
        raise ValueError(f"layout {text!r} is not KVPxTPA, e.g. 4x2") from None
    if kvp < 1 or tpa < 1:
        raise ValueError(f"layout {text!r}: degrees must be >= 1")
    return kvp, tpa


@dataclasses.dataclass(frozen=True)
class Config:
    """Formats × layouts; the defaults are full mode (about 3 minutes on 2 shared CPU cores).

    Attributes:
      seed: seeds the random layer weights, inputs and caches.
      formats: numerics format names (FP32 is the reference and not listed).
      gqa_layouts, mla_layouts: "KVPxTPA" layouts of the GQA layer (8 KV heads) and the MLA layer
        (one latent KV head: TPA = 1); an empty tuple skips that layer. The FFN runs TP over all N.
      batch: sequences decoded; seq: KV cache length (multiple of 16·KVP).
      scale_rule: MX scale rule ("floor", the OCP rule, or "rceil"); None: each format's default.
    """

    seed: int = 0
    formats: tuple[str, ...] = tuple(f for f in FORMAT_NAMES if f != "fp32")
    gqa_layouts: tuple[str, ...] = ("4x2", "8x1", "2x4")
    mla_layouts: tuple[str, ...] = ("8x1",)
    batch: int = 8
    seq: int = 256
    scale_rule: str | None = None

    def __post_init__(self):
        bad = sorted(set(self.formats) - set(FORMAT_NAMES))
        if bad or not self.formats:
            raise ValueError(f"formats {self.formats}: unknown {bad}; valid: {', '.join(FORMAT_NAMES)}")
        if not self.gqa_layouts and not self.mla_layouts:
            raise ValueError("give at least one layout (gqa_layouts or mla_layouts)")
        for text in (*self.gqa_layouts, *self.mla_layouts):
            parse_layout(text)
        for text in self.mla_layouts:
            if parse_layout(text)[1] != 1:
                raise ValueError(f"mla layout {text!r}: MLA has one latent KV head, so TPA must be 1")
        if self.batch < 1 or self.seq < 1:
            raise ValueError(f"batch={self.batch} and seq={self.seq} must be >= 1")
        if self.scale_rule not in (None, "floor", "rceil"):
            raise ValueError(f"scale_rule={self.scale_rule!r}; valid: floor, rceil, none")

    def items(self) -> list[tuple[str, str]]:
        return [("gqa", t) for t in self.gqa_layouts] + [("mla", t) for t in self.mla_layouts]


# --quick: the OCP formats and NVFP4, one layout per layer.
QUICK = {"formats": ("mxfp8_e4m3", "mxfp6_e3m2", "mxfp4_e2m1", "mxint8", "nvfp4", "bf16"),
         "gqa_layouts": ("4x2",), "mla_layouts": ("8x1",)}


def study_layout(model: str, text: str, config: Config) -> list[dict]:
    """`parallel.mx_study.run` for one layer and layout; one row per format.

    Raises:
      ValueError: the layout needs more devices than JAX has.
    """
    kvp, tpa = parse_layout(text)
    n = kvp * tpa
    if n > jax.device_count():
        raise ValueError(f"layout {text} needs {n} devices, JAX has {jax.device_count()}: run through the CLI "
                         "(8 emulated CPU devices) or set jax_num_cpu_devices before JAX starts")
    study = mx_study.MXStudyConfig(spec=SPECS[model], layout=Layout(kvp=kvp, tpa=tpa, tpf=n, batch=config.batch),
                                   seq=config.seq, formats=config.formats, scale_rule=config.scale_rule,
                                   seed=config.seed)
    rows = []
    for r in mx_study.run(study):
        rows.append({"model": model, "layout": f"KVP{kvp}×TPA{tpa}", "format": r.format,
                     "bits_per_element": r.bits_per_element,
                     **{f"err_{k}": v for k, v in r.rel_error.items()}, "sqnr_db_all": r.sqnr_db,
                     "a2a_bytes_per_device": r.a2a_bytes, "a2a_bytes_fp32": r.a2a_bytes_fp32,
                     "a2a_bytes_ratio": None if r.a2a_bytes is None else r.a2a_bytes / r.a2a_bytes_fp32})
    return rows


def run(config: Config, out: ResultsDir) -> dict:
    """Every (layer, layout): rows per format; helix_mx.csv, error-vs-bits plots, summary.md."""
    items = config.items()
    done = out.sweep("layouts", items, lambda chunk: [{"rows": study_layout(m, t, config)} for m, t in chunk],
                     key="/".join, desc="Helix MX layouts")
    rows = [r for d in done for r in d["rows"]]
    out.write_csv("helix_mx.csv", rows)
    groups = list(dict.fromkeys((r["model"], r["layout"]) for r in rows))
    for model, layout in groups:
        sel = [r for r in rows if (r["model"], r["layout"]) == (model, layout)]
        series = {ROLE_TITLES[k]: [(r["format"], r["bits_per_element"], r[f"err_{k}"]) for r in sel]
                  for k in mx_study.ROLE_SETS}
        fig = plots.plot_error_vs_bits(series, ylabel="relative L2 error of the layer update vs FP32", yscale="log",
                                       title=f"Helix decode step, {model.upper()} layer on {layout}: one role "
                                             "quantized, then all three")
        ax = fig.axes[0]
        lo, hi = ax.get_ylim()
        ax.set_ylim(lo, hi * 4)  # room for the rotated format labels above the highest markers
        out.save_figure(f"error_vs_bits_{model}_{layout.replace('×', 'x')}.png", fig)
    lines = ["# helix-mx: MX numerics inside the Helix mesh", "",
             f"One decode step of one layer, batch {config.batch}, KV cache {config.seq} tokens; relative L2 error "
             "of the layer update against the FP32 step per quantized role; all-to-all bytes per device from the "
             "compiled HLO (payload = element codes + block scales + FP32 LSE).", ""]
    for model, layout in groups:
        sel = [r for r in rows if (r["model"], r["layout"]) == (model, layout)]
        lines += [f"## {SPECS[model].name} on {layout}", "",
                  "| format | bits/elt | KV cache | weights | all-to-all | all | SQNR all (dB) | a2a bytes/device | vs FP32 |",
                  "|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['format']} | {r['bits_per_element']:g} | {r['err_kv']:.2e} | {r['err_weights']:.2e} | "
                  f"{r['err_a2a']:.2e} | {r['err_all']:.2e} | {r['sqnr_db_all']:.1f} | {r['a2a_bytes_per_device']:,.0f} | "
                  f"{r['a2a_bytes_ratio']:.3f} |" for r in sel]
        lines.append("")
    lines.append("Plots: " + ", ".join(f"`error_vs_bits_{m}_{l.replace('×', 'x')}.png`" for m, l in groups) + ".")
    out.write_text("summary.md", "\n".join(lines) + "\n")
    return {f"{m}/{l}": {r["format"]: {"err_kv": r["err_kv"], "err_weights": r["err_weights"], "err_a2a": r["err_a2a"],
                                        "err_all": r["err_all"], "a2a_bytes_ratio": r["a2a_bytes_ratio"]}
                         for r in rows if (r["model"], r["layout"]) == (m, l)} for m, l in groups}
