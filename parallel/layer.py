"""One decode step of a decoder layer on a Helix mesh: attention (KVP × TPA) then FFN (TPF × EP).

Per device, in order (the op list the cost model mirrors; B_g = batch of one attention group):
  1. RMSNorm of x [B_g, H] (replicated within the group).
  2. Q/K/V projections for the device's TPA heads (replicated over KVP); RoPE at position kv_len.
     MLA: query down/up projections, q_nope·W_UK (absorb), latent c and shared RoPE key.
  3. KV append of the new token on one KVP rank (round-robin, `tokens_per_block`).
  4. Partial attention over the device's S/KVP tokens → (O_i, LSE_i) [B_g, Q/TPA, ·];
     MLA applies W_UV to O_i here, so the payload is v_dim wide.
  5. One all-to-all over KVP: (KVP−1)/KVP of B_g·(Q/TPA)·(Dv + 1) FP32 values leave each device.
  6. LSE combine (FP32) → exact attention for Q/N heads of the whole group batch.
  7. W_O on those Q/N heads (TP over all KVP·TPA devices) → partial [B_g, H]; all-reduce over the group.
  8. Residual; RMSNorm; with dp > 1 an all-gather of the batch over dp.
  9. FFN partial: SwiGLU over F/N columns (dense), or router + E/EP local experts × F_e/TPF + shared
     experts over F_s/N (MoE).
 10. All-reduce of the FFN partial over all N devices (dp > 1: reduce-scatter over dp, then
     all-reduce over the group); residual.

Baselines are layouts of the same code: plain TP is kvp=1, tpa=N (KV heads duplicated when N > K);
DP attention + EP is dp=N, kvp=tpa=1 with the FFN as ep=N (all-gather / reduce-scatter around it).

References:
  Helix Parallelism, arXiv 2507.07120, §2.1–2.3.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P

from perfmodel.specs import Layout, ModelSpec

from . import blocks
from .ffn import check_ffn, ffn_local, ffn_reference
from .helix import TOKENS_PER_BLOCK, HelixGeometry, append_local, helix_geometry, helix_local
from .mesh import LayoutMesh
from .weights import AttentionWeights, LayerWeights, MLAWeights, duplicate_kv_heads, layer_specs


def _axes(axes: tuple[str, ...]):
    return axes if axes else None


def _varying_axes(x) -> frozenset:
    """Mesh axes a shard_map value varies over, by its type (jax 0.10: `aval.mat.varying`)."""
    aval = jax.typeof(x)
    vma = getattr(aval, "vma", None)
    return frozenset(aval.mat.varying if vma is None else vma)


def _psum(x, axes, lm: LayoutMesh):
    """psum over those of `axes` that x varies over (a size-1 axis may or may not, by type)."""
    axes = tuple(a for a in axes if a in _varying_axes(x))
    return lax.psum(x, axes) if axes else x


def _identity(x):
    return x


@dataclasses.dataclass(frozen=True)
class LayerPlan:
    """Static description of a sharded decoder layer (validated by `make_plan`).

    Attributes:
      lm: the mesh. spec: the model. geo: Helix attention geometry.
      dot_general: contraction for projections (a numerics policy's, or lax.dot_general).
      kv_quantize: applied to each new K/V (or MLA latent) row along head_dim before it is stored.
      comm_format, comm_scale_rule: numerics format and MX scale rule of the all-to-all payload.
    """

    lm: LayoutMesh
    spec: ModelSpec
    geo: HelixGeometry
    dot_general: Callable = lax.dot_general
    kv_quantize: Callable = _identity
    comm_format: str = "fp32"
    comm_scale_rule: str | None = None


def layout_of(lm: LayoutMesh, *, batch: int = 1, microbatches: int = 1, hopb: bool = True) -> Layout:
    """The `perfmodel.specs.Layout` a mesh realizes."""
    return Layout(tpa=lm.size("tpa"), kvp=lm.size("kvp"), dp_attn=lm.size("dp"), tpf=lm.size("tpf"),
                  ep=lm.size("ep"), batch=batch, microbatches=microbatches, hopb=hopb)


def make_plan(
    spec: ModelSpec, lm: LayoutMesh, *, batch: int, seq: int, tokens_per_block: int = TOKENS_PER_BLOCK,
    microbatches: int = 1, hopb: bool = True, policy=None,
) -> LayerPlan:
    """Validate (Layout.check_model, Helix geometry) and fix the static plan of a sharded layer.

    Args:
      spec: model shape. lm: mesh. batch: global batch. seq: cache length (storage slots).
      tokens_per_block: round-robin KV block. microbatches: micro-batches; hopb: overlap their
        all-to-alls with the next micro-batch's attention (False: serialized).
      policy: optional numerics QuantPolicy: projections use `policy.dot_general`, new KV rows are
        quantized per `policy.kv_cache` along head_dim, the all-to-all per `policy.communication`.

    Raises:
      ValueError: a layout the model cannot use, or shapes the mesh does not divide.
    """
    layout_of(lm, batch=batch, microbatches=microbatches, hopb=hopb).check_model(spec)
    geo = helix_geometry(lm, batch=batch, q_heads=spec.n_heads, kv_heads=spec.n_kv_heads, seq=seq,
                         tokens_per_block=tokens_per_block, microbatches=microbatches, hopb=hopb)
    if policy is None:
        return LayerPlan(lm, spec, geo)
    kv_quantize = _identity
    if policy.kv_cache != "fp32":
        def kv_quantize(x):
            return policy.quantize_role("kv_cache", x, axis=-1)  # along head_dim, the policy's scale rule

    return LayerPlan(
        lm, spec, geo, dot_general=policy.dot_general, kv_quantize=kv_quantize, comm_format=policy.communication,
        comm_scale_rule=policy.scale_rule_for(policy.communication),
    )


def cache_shapes(spec: ModelSpec, lm: LayoutMesh, *, batch: int, seq: int) -> tuple[tuple[int, ...], ...]:
    """Global cache shapes of one layer: (K, V) [B, S, max(K, TPA), ·] or the MLA latent [B, S, r + d_rope]."""
    if spec.is_mla:
        return ((batch, seq, spec.kv_lora_rank + spec.rope_dim),)
    heads = max(spec.n_kv_heads, lm.size("tpa"))
    return ((batch, seq, heads, spec.head_dim), (batch, seq, heads, spec.v_dim))


def cache_specs(spec: ModelSpec, lm: LayoutMesh):
    dp, kvp, tpa = _axes(lm.dp), _axes(lm.kvp), _axes(lm.tpa)
    if spec.is_mla:
        return (P(dp, kvp, None),)
    return (P(dp, kvp, tpa, None), P(dp, kvp, tpa, None))


def _proj(dot_general, x, w):
    """x [B, a] · w [a, ...] -> [B, ...] in FP32."""
    return dot_general(x, w, (((1,), (0,)), ((), ())), precision=blocks.PRECISION,
                       preferred_element_type=jnp.float32)


def attention_local(x, w: AttentionWeights | MLAWeights, cache, kv_len, plan: LayerPlan):
    """Steps 1–7 on one device (inside shard_map): returns (attention output [B_g, H], new cache)."""
    lm, geo, spec, dot = plan.lm, plan.geo, plan.spec, plan.dot_general
    h = blocks.rms_norm(x, w.norm)
    rank = lax.axis_index(lm.kvp) if lm.kvp else jnp.int32(0)
    d = spec.head_dim
    if isinstance(w, MLAWeights):
        r = spec.kv_lora_rank
        cq = blocks.rms_norm(_proj(dot, h, w.wq_a), w.q_norm) if w.wq_a is not None else h
        qf = _proj(dot, cq, w.wq)  # [B, Q/TPA, D + d_rope]
        q_latent = jnp.transpose(dot(qf[..., :d], w.w_uk, (((2,), (1,)), ((1,), (0,))), precision=blocks.PRECISION,
                                     preferred_element_type=jnp.float32), (1, 0, 2))
        q = jnp.concatenate([q_latent, blocks.rope(qf[..., d:], kv_len)], axis=-1)
        kv = _proj(dot, h, w.wkv_a)
        latent = jnp.concatenate(
            [blocks.rms_norm(kv[:, :r], w.kv_norm), blocks.rope(kv[:, None, r:], kv_len)[:, 0]], axis=-1)
        (c,) = cache
        c = append_local(c, plan.kv_quantize(latent), kv_len, rank, geo.kvp, geo.block)
        new_cache = (c,)

        def post(o):  # W_UV before the exchange: payload v_dim wide
            return jnp.transpose(dot(o, w.w_uv, (((2,), (1,)), ((1,), (0,))), precision=blocks.PRECISION,
                                     preferred_element_type=jnp.float32), (1, 0, 2))

        o = helix_local(q, c[:, :, None, :], None, kv_len + 1, lm=lm, geo=geo, scale=(d + spec.rope_dim) ** -0.5,
                        v_dim=r, post=post, comm_format=plan.comm_format, comm_scale_rule=plan.comm_scale_rule)
    else:
        q = blocks.rope(_proj(dot, h, w.wq), kv_len)
        k_new = blocks.rope(_proj(dot, h, w.wk), kv_len)
        v_new = _proj(dot, h, w.wv)
        kc, vc = cache
        kc = append_local(kc, plan.kv_quantize(k_new), kv_len, rank, geo.kvp, geo.block)
        vc = append_local(vc, plan.kv_quantize(v_new), kv_len, rank, geo.kvp, geo.block)
        new_cache = (kc, vc)
        o = helix_local(q, kc, vc, kv_len + 1, lm=lm, geo=geo, scale=d**-0.5, comm_format=plan.comm_format, comm_scale_rule=plan.comm_scale_rule)
    b, qn, dv = o.shape
    y = _proj(dot, o.reshape(b, qn * dv), w.wo.reshape(qn * dv, -1))  # W_O: TP over all N
    return _psum(y, lm.attention_group, lm), new_cache


def layer_local(x, w: LayerWeights, cache, kv_len, plan: LayerPlan):
    """Steps 1–10 on one device (inside shard_map): returns (x_out [B_g, H], new cache)."""
    lm = plan.lm
    a, cache = attention_local(x, w.attn, cache, kv_len, plan)
    x = x + a
    h = blocks.rms_norm(x, w.ffn.norm)
    dp = lm.size("dp") > 1
    if dp:
        h = lax.all_gather(h, lm.dp, axis=0, tiled=True)
    y = ffn_local(h, w.ffn, lm=lm, top_k=plan.spec.top_k, dot_general=plan.dot_general)
    if dp:
        y = lax.psum_scatter(y, lm.dp, scatter_dimension=0, tiled=True)
    return x + _psum(y, lm.attention_group, lm), cache


def place_layer_weights(w: LayerWeights, plan: LayerPlan) -> LayerWeights:
    """Duplicate KV heads where TPA > K and check that the FFN splits; returns the weights to shard."""
    check_ffn(w.ffn, plan.lm, top_k=plan.spec.top_k)
    return w._replace(attn=duplicate_kv_heads(w.attn, plan.geo.tpa))


def decoder_layer(x, weights: LayerWeights, cache, kv_len, *, plan: LayerPlan):
    """One decode step of a decoder layer on the plan's mesh (weights are global arrays).

    Args:
      x: [batch, H] hidden state of the new token.
      weights: global `LayerWeights` (KV heads not yet duplicated).
      cache: the layer's caches, shapes `cache_shapes`, storage order (round-robin).
      kv_len: [batch] int tokens already cached.
      plan: from `make_plan`.

    Returns:
      (x_out [batch, H], new cache).

    Raises:
      ValueError: weights the mesh does not divide.
    """
    lm = plan.lm
    w = place_layer_weights(weights, plan)
    dp = _axes(lm.dp)

    def local(x, w, cache, kv_len):
        return layer_local(x, w, cache, kv_len, plan)

    return jax.shard_map(
        local, mesh=lm.mesh,
        in_specs=(P(dp, None), layer_specs(w, lm), cache_specs(plan.spec, lm), P(dp)),
        out_specs=(P(dp, None), cache_specs(plan.spec, lm)),
    )(x, w, tuple(cache), kv_len.astype(jnp.int32))


def reference_layer(x, w: LayerWeights, cache, kv_len, spec: ModelSpec):
    """Single-device decode step of a layer on token-order caches ([B, S, K, ·] or MLA [B, S, r+dr])."""
    a = w.attn
    h = blocks.rms_norm(x, a.norm)
    idx = jnp.arange(x.shape[0])
    d = spec.head_dim
    if isinstance(a, MLAWeights):
        r = spec.kv_lora_rank
        cq = blocks.rms_norm(jnp.dot(h, a.wq_a, precision=blocks.PRECISION), a.q_norm) if a.wq_a is not None else h
        qf = jnp.einsum("bh,hqd->bqd", cq, a.wq, precision=blocks.PRECISION)
        q_latent = jnp.einsum("bqd,qdr->bqr", qf[..., :d], a.w_uk, precision=blocks.PRECISION)
        kv = jnp.dot(h, a.wkv_a, precision=blocks.PRECISION)
        latent = jnp.concatenate([blocks.rms_norm(kv[:, :r], a.kv_norm), blocks.rope(kv[:, None, r:], kv_len)[:, 0]], -1)
        c = cache[0].at[idx, kv_len].set(latent)
        o = blocks.mla_decode_attention(q_latent, blocks.rope(qf[..., d:], kv_len), c, kv_len + 1,
                                        scale=(d + spec.rope_dim) ** -0.5)
        o = jnp.einsum("bqr,qrv->bqv", o, a.w_uv, precision=blocks.PRECISION)
        cache = (c,)
    else:
        q = blocks.rope(jnp.einsum("bh,hqd->bqd", h, a.wq, precision=blocks.PRECISION), kv_len)
        k = blocks.rope(jnp.einsum("bh,hkd->bkd", h, a.wk, precision=blocks.PRECISION), kv_len)
        v = jnp.einsum("bh,hkd->bkd", h, a.wv, precision=blocks.PRECISION)
        cache = (cache[0].at[idx, kv_len].set(k), cache[1].at[idx, kv_len].set(v))
        o = blocks.decode_attention(q, cache[0], cache[1], kv_len + 1)
    x = x + jnp.einsum("bqv,qvh->bh", o, a.wo, precision=blocks.PRECISION)
    return x + ffn_reference(x, w.ffn, top_k=spec.top_k), cache
