"""MX numerics inside the Helix mesh: error of one decode step and the all-to-all bytes, per format.

For each numerics format, one Helix decoder-layer decode step runs four times with a `QuantPolicy`
that quantizes one role — the KV cache (stored along head_dim, prefilled cache included), the weights
(along their contraction axis), the all-to-all payload (partial outputs along Dv, sent as packed
codes + scales + FP32 LSE) — and then all three together; each output is compared with the FP32 step
on the same inputs. The all-to-all bytes per device are read from the compiled HLO.

    python -m parallel.mx_study [--model gqa|mla] [--formats mxfp4_e2m1,nvfp4] [--cpu-devices 8]

Errors are of the layer's update y − x (the residual stream x itself is exact in every format):
relative L2 error ‖Δ‖/‖y_fp32 − x‖ and SQNR in dB.

References:
  Helix Parallelism, arXiv 2507.07120, §2.1 (all-to-all of partial outputs and LSEs).
  OCP MX v1.0; Rouhani et al., arXiv 2310.10537 (formats).
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np

from perfmodel.specs import Layout, ModelSpec

ROLE_SETS = {"kv": ("kv_cache",), "weights": ("weights",), "a2a": ("communication",),
             "all": ("kv_cache", "weights", "communication")}

# Llama-like head geometry (head_dim 128, GQA 16/8) at a width that runs on a laptop.
GQA_SPEC = ModelSpec("mx-study-gqa", 1, 512, 16, 8, 128, 1024, 256)
# DeepSeek-V3 attention geometry (source: DeepSeek-V3 config: kv_lora_rank 512, qk_rope_head_dim 64,
# qk_nope_head_dim 128, v_head_dim 128, q_lora_rank 1536), 16 heads, narrow model width.
MLA_SPEC = ModelSpec("mx-study-mla", 1, 512, 16, 1, 128, 1024, 256, q_lora_rank=384, kv_lora_rank=512,
                     rope_dim=64, v_head_dim=128)


@dataclasses.dataclass(frozen=True)
class MXStudyConfig:
    """spec: the layer's model; layout: the Helix layout (KVP × TPA, TPF × EP); seq: cache length;
    formats: numerics format names (None: all); role_sets: names from ROLE_SETS to run;
    scale_rule: MX scale rule (None: the format's default); seed."""

    spec: ModelSpec = GQA_SPEC
    layout: Layout = Layout(kvp=4, tpa=2, tpf=8, batch=8)
    seq: int = 256
    formats: tuple[str, ...] | None = None
    role_sets: tuple[str, ...] = tuple(ROLE_SETS)
    scale_rule: str | None = None
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class MXStudyRow:
    """One format: relative L2 error per quantized role set, SQNR of the last role set, all-to-all bytes
    per device with that format's payload (None when "a2a" and "all" were not run)."""

    format: str
    bits_per_element: float
    a2a_bytes: float | None
    a2a_bytes_fp32: float
    rel_error: dict[str, float]
    sqnr_db: float


def _random_weights(spec: ModelSpec, seed: int):
    """Layer-0 weights of the model's shapes: N(0, 1/fan_in) matrices (LeCun normal), unit norm scales.

    Drawn with NumPy from the shapes of `export_weights(Transformer(spec))` (jax.eval_shape: nothing
    is compiled); fan_in is the contraction length of each matrix.
    """
    from flax import nnx

    from .model import Transformer, export_weights

    shapes = jax.eval_shape(lambda: export_weights(Transformer(spec, rngs=nnx.Rngs(0))).layers[0])
    rng = np.random.default_rng(seed)

    def draw(path, s):
        name = jax.tree_util.keystr(path)
        if len(s.shape) == 1:
            return jnp.ones(s.shape, jnp.float32)
        fan_in = s.shape[0] * (s.shape[1] if name.endswith(".wo") else 1)
        if len(s.shape) == 3 and not name.endswith((".wq", ".wk", ".wv", ".wo")):
            fan_in = s.shape[1]  # experts [E, in, out], MLA w_uk [Q, D, r], w_uv [Q, r, Dv]
        return jnp.asarray(rng.standard_normal(s.shape, np.float32) / np.sqrt(fan_in))

    return jax.tree_util.tree_map_with_path(draw, shapes)


def _inputs(config: MXStudyConfig):
    """Layer weights, x [B, H], token-order caches written by the layer's own K/V projections, kv_len."""
    from . import blocks

    spec, b, s = config.spec, config.layout.batch, config.seq
    weights = _random_weights(spec, config.seed)
    rng = np.random.default_rng(config.seed)
    x = jnp.asarray(rng.standard_normal((b, spec.hidden), np.float32))
    hist = jnp.asarray(rng.standard_normal((b, s, spec.hidden), np.float32))
    kv_len = jnp.asarray(rng.integers(s // 2, s - 1, b), jnp.int32)
    pos = jnp.broadcast_to(jnp.arange(s)[None], (b, s))
    a = weights.attn

    @jax.jit
    def caches(hist):
        h = blocks.rms_norm(hist, a.norm)
        if spec.is_mla:
            kv = jnp.einsum("bsh,hc->bsc", h, a.wkv_a, precision=blocks.PRECISION)
            r = spec.kv_lora_rank
            lat = jnp.concatenate([blocks.rms_norm(kv[..., :r], a.kv_norm), blocks.rope(kv[..., None, r:], pos)[..., 0, :]], -1)
            return (lat,)
        k = blocks.rope(jnp.einsum("bsh,hkd->bskd", h, a.wk, precision=blocks.PRECISION), pos)
        return (k, jnp.einsum("bsh,hkd->bskd", h, a.wv, precision=blocks.PRECISION))

    return weights, x, caches(hist), kv_len


def run(config: MXStudyConfig = MXStudyConfig()) -> list[MXStudyRow]:
    """Run the study (needs config.layout's N devices); one compile per (format, role set).

    Returns:
      One `MXStudyRow` per format, in the order of `config.formats` (default: numerics.FORMAT_NAMES).
    """
    from numerics import FORMAT_NAMES, QuantPolicy, bits_per_element, fake_quantize, relative_l2_error, sqnr_db

    from .helix import round_robin_positions
    from .hlo import collective_bytes
    from .layer import decoder_layer, make_plan
    from .mesh import make_mesh

    unknown = set(config.role_sets) - set(ROLE_SETS)
    if unknown or not config.role_sets:
        raise ValueError(f"role_sets={config.role_sets} must be a non-empty subset of {tuple(ROLE_SETS)}")
    lay = config.layout
    lm = make_mesh(lay)
    weights, x, caches, kv_len = _inputs(config)
    pos = round_robin_positions(config.seq, lay.kvp, 16)

    def step(policy):
        plan = make_plan(config.spec, lm, batch=lay.batch, seq=config.seq, microbatches=lay.microbatches,
                         policy=policy)
        stored = caches
        if policy is not None and policy.kv_cache != "fp32":  # the prefilled cache is stored quantized too
            rule = policy.scale_rule_for(policy.kv_cache)
            stored = tuple(fake_quantize(c, policy.kv_cache, axis=-1, scale_rule=rule) for c in caches)
        stored = tuple(c[:, pos] for c in stored)
        if not config.spec.is_mla and lay.tpa > config.spec.n_kv_heads:
            stored = tuple(jnp.repeat(c, lay.tpa // config.spec.n_kv_heads, axis=2) for c in stored)
        fn = jax.jit(lambda x, w, c, n: decoder_layer(x, w, c, n, plan=plan)[0])
        compiled = fn.lower(x, weights, stored, kv_len).compile()
        return compiled(x, weights, stored, kv_len), collective_bytes(compiled)["all-to-all"]

    ref, ref_bytes = step(None)
    update = ref - x
    rows = []
    for fmt in config.formats or FORMAT_NAMES:
        errors, a2a, out = {}, None, None
        for name in config.role_sets:
            policy = QuantPolicy(**{r: fmt for r in ROLE_SETS[name]}, scale_rule=config.scale_rule)
            out, moved = step(policy)
            errors[name] = float(relative_l2_error(out - x, update))
            if "communication" in ROLE_SETS[name]:
                a2a = moved
        rows.append(MXStudyRow(fmt, bits_per_element(fmt), a2a, ref_bytes, errors, float(sqnr_db(out - x, update))))
    return rows


def format_table(rows: list[MXStudyRow]) -> str:
    """A fixed-width table of the rows."""
    names = list(rows[0].rel_error) if rows else []
    head = f"{'format':<12} {'bits/el':>7} {'a2a B/dev':>10} {'vs fp32':>8} " + " ".join(
        f"{'err ' + n:>11}" for n in names) + f" {'SQNR ' + (names[-1] if names else ''):>10}"
    lines = [head, "-" * len(head)]
    for r in rows:
        a2a = f"{r.a2a_bytes:>10.0f} {r.a2a_bytes / r.a2a_bytes_fp32:>8.3f}" if r.a2a_bytes is not None else f"{'-':>10} {'-':>8}"
        errs = " ".join(f"{r.rel_error[n]:>11.2e}" for n in names)
        lines.append(f"{r.format:<12} {r.bits_per_element:>7.2f} {a2a} {errs} {r.sqnr_db:>8.1f}dB")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("gqa", "mla"), default="gqa")
    parser.add_argument("--formats", default=None, help="comma-separated numerics format names (default: all)")
    parser.add_argument("--kvp", type=int, default=None, help="KVP degree (default 4 for gqa, 8 for mla)")
    parser.add_argument("--tpa", type=int, default=None, help="TPA degree (default 2 for gqa, 1 for mla)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--scale-rule", choices=("floor", "rceil"), default=None)
    parser.add_argument("--cpu-devices", type=int, default=8, help="emulated CPU devices when running on CPU")
    args = parser.parse_args(argv)
    if jax.config.jax_platforms in (None, "", "cpu"):
        jax.config.update("jax_num_cpu_devices", args.cpu_devices)
    mla = args.model == "mla"
    kvp = args.kvp or (8 if mla else 4)
    tpa = args.tpa or (1 if mla else 2)
    config = MXStudyConfig(
        spec=MLA_SPEC if mla else GQA_SPEC, layout=Layout(kvp=kvp, tpa=tpa, tpf=kvp * tpa, batch=args.batch),
        seq=args.seq, formats=tuple(args.formats.split(",")) if args.formats else None, scale_rule=args.scale_rule,
    )
    rows = run(config)
    print(f"Helix decode step of {config.spec.name} on KVP={kvp} x TPA={tpa}, batch {args.batch}, cache {args.seq}; "
          "relative L2 error of the layer update vs FP32")
    print(format_table(rows))
    print(json.dumps({r.format: {"a2a_bytes": r.a2a_bytes, **{f"err_{k}": v for k, v in r.rel_error.items()}}
                      for r in rows}))


if __name__ == "__main__":
    main()
