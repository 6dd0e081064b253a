"""A small decoder-only transformer in flax nnx, built from `parallel.blocks`, decodable under any layout.

API:
  model = Transformer(spec, rngs=nnx.Rngs(0), policy=None)   # spec: perfmodel.specs.ModelSpec
  logits = model(tokens)            # tokens int32 [B, T] -> logits float32 [B, T, vocab]
  weights = export_weights(model)   # ModelWeights of global arrays (parallel.weights)
  decoder = sharded_decoder(model, mesh, batch=B, max_seq=S)   # parallel.decode.ShardedDecoder
  decoder.teacher_forced(tokens)    # the same logits, one Helix decode step per token

Architecture: token embedding, `n_layers` pre-norm blocks (RMSNorm → attention → residual, RMSNorm →
FFN → residual), final RMSNorm, untied LM head. Attention is GQA/MHA with RoPE, or DeepSeek MLA in
absorbed form when `spec.kv_lora_rank > 0`; the FFN is SwiGLU, or top-k MoE with shared experts for
layers ≥ `spec.n_dense_layers` when `spec.n_experts > 0`. Train it with `nnx.Optimizer` on one device.

Numerics: with a `numerics.QuantPolicy`, `policy.dot_general` is injected into every projection
(`nnx.Linear(..., dot_general=policy.dot_general)`) and into the expert and MLA-absorption matmuls.
Vector ops (norms, RoPE, softmax, attention score and value contractions, router, residuals) stay
FP32. `policy=None` uses `jax.lax.dot_general`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from perfmodel.specs import ModelSpec

from . import blocks
from .weights import AttentionWeights, DenseFFNWeights, LayerWeights, MLAWeights, ModelWeights, MoEWeights

if TYPE_CHECKING:
    from numerics import QuantPolicy


def _linear(n_in: int, n_out: int, dot_general, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(n_in, n_out, use_bias=False, dot_general=dot_general, precision=blocks.PRECISION, rngs=rngs)


def _param(rngs: nnx.Rngs, shape: tuple[int, ...], fan_in: int) -> nnx.Param:
    return nnx.Param(jax.random.normal(rngs.params(), shape, jnp.float32) * fan_in**-0.5)


def _batched(dot_general, x: jax.Array, w: jax.Array) -> jax.Array:
    """Per-head matmul: x [B, T, Q, a] · w [Q, a, b] -> [B, T, Q, b] with the policy's dot_general."""
    y = dot_general(x, w, (((3,), (1,)), ((2,), (0,))), precision=blocks.PRECISION,
                    preferred_element_type=jnp.float32)  # [Q, B, T, b]
    return jnp.transpose(y, (1, 2, 0, 3))


class Attention(nnx.Module):
    """GQA / MHA self-attention with RoPE."""

    def __init__(self, spec: ModelSpec, dot_general, rngs: nnx.Rngs):
        h, q, k, d, dv = spec.hidden, spec.n_heads, spec.n_kv_heads, spec.head_dim, spec.v_dim
        self.shape = (q, k, d, dv)
        self.norm = nnx.Param(jnp.ones((h,), jnp.float32))
        self.wq = _linear(h, q * d, dot_general, rngs)
        self.wk = _linear(h, k * d, dot_general, rngs)
        self.wv = _linear(h, k * dv, dot_general, rngs)
        self.wo = _linear(q * dv, h, dot_general, rngs)

    def __call__(self, x: jax.Array, positions: jax.Array, mask: jax.Array) -> jax.Array:
        (b, t, _), (q, k, d, dv) = x.shape, self.shape
        h = blocks.rms_norm(x, self.norm[...])
        qh = blocks.rope(self.wq(h).reshape(b, t, q, d), positions)
        kh = blocks.rope(self.wk(h).reshape(b, t, k, d), positions)
        vh = self.wv(h).reshape(b, t, k, dv)
        o = blocks.attention(qh, kh, vh, mask, scale=d**-0.5)
        return self.wo(o.reshape(b, t, q * dv))

    def export(self) -> AttentionWeights:
        q, k, d, dv = self.shape
        h = self.norm.shape[0]
        return AttentionWeights(
            norm=self.norm[...], wq=self.wq.kernel[...].reshape(h, q, d), wk=self.wk.kernel[...].reshape(h, k, d),
            wv=self.wv.kernel[...].reshape(h, k, dv), wo=self.wo.kernel[...].reshape(q, dv, h),
        )


class MLA(nnx.Module):
    """DeepSeek multi-head latent attention, absorbed form (arXiv 2405.04434 §2.1)."""

    def __init__(self, spec: ModelSpec, dot_general, rngs: nnx.Rngs):
        h, q, d, dv = spec.hidden, spec.n_heads, spec.head_dim, spec.v_dim
        r, dr, qr = spec.kv_lora_rank, spec.rope_dim, spec.q_lora_rank
        if dr % 2:
            raise ValueError(f"MLA rope_dim={dr} must be even")
        self.dims = (q, d, dv, r, dr)
        self.dot_general = dot_general
        self.norm = nnx.Param(jnp.ones((h,), jnp.float32))
        if qr:
            self.wq_a = _linear(h, qr, dot_general, rngs)
            self.q_norm = nnx.Param(jnp.ones((qr,), jnp.float32))
        else:
            self.wq_a, self.q_norm = None, None
        self.wq = _linear(qr or h, q * (d + dr), dot_general, rngs)
        self.wkv_a = _linear(h, r + dr, dot_general, rngs)
        self.kv_norm = nnx.Param(jnp.ones((r,), jnp.float32))
        self.w_uk = _param(rngs, (q, d, r), r)  # q_nope · W_UKᵀ: contracts D
        self.w_uv = _param(rngs, (q, r, dv), r)
        self.wo = _linear(q * dv, h, dot_general, rngs)

    def __call__(self, x: jax.Array, positions: jax.Array, mask: jax.Array) -> jax.Array:
        (b, t, _), (q, d, dv, r, dr) = x.shape, self.dims
        h = blocks.rms_norm(x, self.norm[...])
        cq = blocks.rms_norm(self.wq_a(h), self.q_norm[...]) if self.wq_a is not None else h
        qh = self.wq(cq).reshape(b, t, q, d + dr)
        q_rope = blocks.rope(qh[..., d:], positions)
        q_latent = _batched(self.dot_general, qh[..., :d], self.w_uk[...])  # [B, T, Q, r]
        kv = self.wkv_a(h)
        c = blocks.rms_norm(kv[..., :r], self.kv_norm[...])
        k_rope = blocks.rope(kv[..., None, r:], positions)[:, :, 0]
        key = jnp.concatenate([c, k_rope], axis=-1)[:, :, None, :]  # one latent head [B, T, 1, r + dr]
        query = jnp.concatenate([q_latent, q_rope], axis=-1)
        o_latent = blocks.attention(query, key, key[..., :r], mask, scale=(d + dr) ** -0.5)
        o = _batched(self.dot_general, o_latent, self.w_uv[...])  # [B, T, Q, Dv]
        return self.wo(o.reshape(b, t, q * dv))

    def export(self) -> MLAWeights:
        q, d, dv, r, dr = self.dims
        h = self.norm.shape[0]
        qa = self.wq_a is not None
        return MLAWeights(
            norm=self.norm[...], wq_a=self.wq_a.kernel[...] if qa else None,
            q_norm=self.q_norm[...] if qa else None,
            wq=self.wq.kernel[...].reshape(-1, q, d + dr), wkv_a=self.wkv_a.kernel[...], kv_norm=self.kv_norm[...],
            w_uk=self.w_uk[...], w_uv=self.w_uv[...], wo=self.wo.kernel[...].reshape(q, dv, h),
        )


class DenseFFN(nnx.Module):
    """Pre-norm SwiGLU FFN."""

    def __init__(self, hidden: int, ffn: int, dot_general, rngs: nnx.Rngs):
        self.norm = nnx.Param(jnp.ones((hidden,), jnp.float32))
        self.w_gate = _linear(hidden, ffn, dot_general, rngs)
        self.w_up = _linear(hidden, ffn, dot_general, rngs)
        self.w_down = _linear(ffn, hidden, dot_general, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = blocks.rms_norm(x, self.norm[...])
        return self.w_down(jax.nn.silu(self.w_gate(h)) * self.w_up(h))

    def export(self) -> DenseFFNWeights:
        return DenseFFNWeights(self.norm[...], self.w_gate.kernel[...], self.w_up.kernel[...], self.w_down.kernel[...])


class MoEFFN(nnx.Module):
    """Pre-norm top-k MoE of SwiGLU experts plus always-on shared experts; FP32 router."""

    def __init__(self, spec: ModelSpec, dot_general, rngs: nnx.Rngs):
        h, e, f = spec.hidden, spec.n_experts, spec.expert_ffn
        self.top_k, self.dot_general = spec.top_k, dot_general
        self.norm = nnx.Param(jnp.ones((h,), jnp.float32))
        self.router = _param(rngs, (h, e), h)
        self.w_gate = _param(rngs, (e, h, f), h)
        self.w_up = _param(rngs, (e, h, f), h)
        self.w_down = _param(rngs, (e, f, h), f)
        fs = spec.n_shared_experts * f
        self.shared = DenseFFN(h, fs, dot_general, rngs) if fs else None

    def __call__(self, x: jax.Array) -> jax.Array:
        h = blocks.rms_norm(x, self.norm[...])
        flat = h.reshape(-1, h.shape[-1])
        gates = blocks.route(flat, self.router[...], top_k=self.top_k)
        y = blocks.moe_experts(flat, gates, self.w_gate[...], self.w_up[...], self.w_down[...],
                               dot_general=self.dot_general).reshape(x.shape)
        if self.shared is not None:
            s = self.shared
            y = y + s.w_down(jax.nn.silu(s.w_gate(h)) * s.w_up(h))
        return y

    def export(self) -> MoEWeights:
        s = self.shared
        return MoEWeights(
            self.norm[...], self.router[...], self.w_gate[...], self.w_up[...], self.w_down[...],
            s.w_gate.kernel[...] if s else None, s.w_up.kernel[...] if s else None,
            s.w_down.kernel[...] if s else None,
        )


class Block(nnx.Module):
    """One pre-norm decoder layer: x + attn(x), then + ffn(x)."""

    def __init__(self, spec: ModelSpec, layer: int, dot_general, rngs: nnx.Rngs):
        self.attn = MLA(spec, dot_general, rngs) if spec.is_mla else Attention(spec, dot_general, rngs)
        if spec.is_moe and layer >= spec.n_dense_layers:
            self.ffn = MoEFFN(spec, dot_general, rngs)
        else:
            self.ffn = DenseFFN(spec.hidden, spec.ffn, dot_general, rngs)

    def __call__(self, x: jax.Array, positions: jax.Array, mask: jax.Array) -> jax.Array:
        x = x + self.attn(x, positions, mask)
        return x + self.ffn(x)


class Transformer(nnx.Module):
    """Decoder-only transformer configured by a `ModelSpec`; see the module docstring for the API.

    Args:
      spec: model shape (hidden, heads, KV heads, head dim, FFN, vocab, MoE and MLA fields).
      rngs: nnx random streams for initialization.
      policy: a `numerics.QuantPolicy` whose `dot_general` every projection uses; None for FP32.
    """

    def __init__(self, spec: ModelSpec, *, rngs: nnx.Rngs, policy: QuantPolicy | None = None):
        self.spec, self.policy = spec, policy
        dot_general: Any = lax.dot_general if policy is None else policy.dot_general
        self.embed = nnx.Embed(spec.vocab, spec.hidden, rngs=rngs)
        self.layers = nnx.List([Block(spec, i, dot_general, rngs) for i in range(spec.n_layers)])
        self.final_norm = nnx.Param(jnp.ones((spec.hidden,), jnp.float32))
        self.lm_head = _linear(spec.hidden, spec.vocab, dot_general, rngs)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        """Causal forward: tokens int32 [B, T] -> logits float32 [B, T, vocab]."""
        if tokens.ndim != 2:
            raise ValueError(f"tokens must be [batch, time], got shape {tokens.shape}")
        b, t = tokens.shape
        positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32)[None, :], (b, t))
        mask = jnp.broadcast_to(jnp.tril(jnp.ones((t, t), bool))[None], (b, t, t))
        x = self.embed(tokens)
        for layer in self.layers:
            x = layer(x, positions, mask)
        return self.lm_head(blocks.rms_norm(x, self.final_norm[...]))


def export_weights(model: Transformer) -> ModelWeights:
    """The model's parameters as global arrays in the decoder's layout (`parallel.weights`)."""
    return ModelWeights(
        embed=model.embed.embedding[...],
        layers=tuple(LayerWeights(layer.attn.export(), layer.ffn.export()) for layer in model.layers),
        final_norm=model.final_norm[...],
        lm_head=model.lm_head.kernel[...],
    )


def sharded_decoder(model: Transformer, mesh, **kwargs):
    """A `parallel.decode.ShardedDecoder` holding this model's parameters on `mesh`.

    kwargs pass on (batch, max_seq, tokens_per_block, microbatches, policy); the policy defaults to
    the model's own, so an MX model decodes with MX weights and activations.
    """
    from .decode import ShardedDecoder  # the decoder imports the sharded kernels; keep the model light

    kwargs.setdefault("policy", model.policy)
    return ShardedDecoder(export_weights(model), model.spec, mesh, **kwargs)
