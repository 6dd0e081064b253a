"""Single-device reference math of a decoder layer: the unsharded ground truth for parallel/.

Everything is float32 with `Precision.HIGHEST` contractions, so the same code is exact on CPU and
does not fall back to TF32 on GPUs. Shapes use B batch, T query tokens, S cached tokens, Q query heads,
K KV heads (G = Q/K per group), D head dim, Dv value head dim, H hidden, F FFN width, E experts.
Projections take a `dot_general` argument so that a numerics `QuantPolicy` can be injected.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

PRECISION = lax.Precision.HIGHEST
ROPE_THETA = 10000.0  # source: RoFormer, arXiv 2104.09864 §3.4 (θ_i = 10000^(-2i/d))


def rms_norm(x: jax.Array, scale: jax.Array, *, eps: float = 1e-6) -> jax.Array:
    """RMSNorm over the last axis: y = x / sqrt(mean(x²) + eps) · scale.

    Args:
      x: [..., H].
      scale: [H].
      eps: added to the mean square.

    Returns:
      [..., H], float32.
    """
    x = x.astype(jnp.float32)
    ms = jnp.mean(jnp.square(x), axis=-1, keepdims=True)
    return x * lax.rsqrt(ms + eps) * jnp.reshape(scale, (1,) * (x.ndim - 1) + scale.shape)


def rope(x: jax.Array, positions: jax.Array, *, theta: float = ROPE_THETA) -> jax.Array:
    """Rotary position embedding (rotate-half form) of x at integer positions.

    y[:d/2] = x₁·cos(p·θᵢ) − x₂·sin(p·θᵢ),  y[d/2:] = x₂·cos(p·θᵢ) + x₁·sin(p·θᵢ),  θᵢ = theta^(−2i/d).

    Args:
      x: [..., heads, d], d even.
      positions: integer positions, shape x.shape[:-2].
      theta: RoPE base.

    Returns:
      [..., heads, d], float32.

    References:
      RoFormer, arXiv 2104.09864, §3.4.
    """
    d = x.shape[-1]
    if d % 2:
        raise ValueError(f"RoPE needs an even dimension, got d={d}")
    inv_freq = theta ** (-jnp.arange(0, d, 2, dtype=jnp.float32) / d)
    angle = positions.astype(jnp.float32)[..., None, None] * inv_freq.reshape((1,) * (x.ndim - 1) + (d // 2,))
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, *, scale: float) -> jax.Array:
    """Masked GQA attention, softmax(q·kᵀ·scale)·v; rows with no valid key return 0.

    Query head h attends with KV head h // G, G = Q / K.

    Args:
      q: [B, T, Q, D].
      k: [B, S, K, D].
      v: [B, S, K, Dv].
      mask: [B, T, S] bool, True where query t may attend to key s.
      scale: softmax scale (1/√D for standard attention).

    Returns:
      [B, T, Q, Dv], float32.
    """
    b, t, nq, d = q.shape
    nk = k.shape[2]
    qg = q.reshape(b, t, nk, nq // nk, d)
    s = jnp.einsum("btkgd,bskd->btkgs", qg, k, precision=PRECISION) * scale
    m = mask[:, :, None, None, :]
    p = jax.nn.softmax(jnp.where(m, s, -jnp.inf), axis=-1)
    p = jnp.where(jnp.any(m, axis=-1, keepdims=True), p, 0.0)
    out = jnp.einsum("btkgs,bskd->btkgd", p, v, precision=PRECISION)
    return out.reshape(b, t, nq, v.shape[-1])


def decode_attention(
    q: jax.Array, k_cache: jax.Array, v_cache: jax.Array, kv_len: jax.Array, *, scale: float | None = None
) -> jax.Array:
    """Decode attention of one new token per sequence over its first kv_len cached tokens.

    Args:
      q: [B, Q, D].
      k_cache: [B, S, K, D], in token order.
      v_cache: [B, S, K, Dv].
      kv_len: [B] int, valid tokens per sequence (0 gives a zero output).
      scale: softmax scale, default 1/√D.

    Returns:
      [B, Q, Dv], float32.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    mask = jnp.arange(k_cache.shape[1])[None, :] < kv_len[:, None]
    return attention(q[:, None], k_cache, v_cache, mask[:, None, :], scale=scale)[:, 0]


def mla_decode_attention(
    q_latent: jax.Array, q_rope: jax.Array, kv_cache: jax.Array, kv_len: jax.Array, *, scale: float
) -> jax.Array:
    """MLA decode attention in DeepSeek's absorbed form; one latent KV head shared by all query heads.

    score_h,s = (q_latent_h · c_s + q_rope_h · k_rope_s)·scale, out_h = Σ_s softmax(score_h)_s · c_s,
    with the cache row [c_s ; k_rope_s] of width r + d_rope.

    Args:
      q_latent: [B, Q, r], the no-RoPE query already multiplied by W_UK (absorbed).
      q_rope: [B, Q, d_rope].
      kv_cache: [B, S, r + d_rope], latent c followed by the shared RoPE key.
      kv_len: [B] int.
      scale: softmax scale (DeepSeek: 1/√(qk_nope_head_dim + qk_rope_head_dim)).

    Returns:
      [B, Q, r], the latent output (multiply by W_UV per head for the value).

    References:
      DeepSeek-V2, arXiv 2405.04434, §2.1.2–2.1.3 (low-rank KV, absorbed W_UK, decoupled RoPE).
    """
    r = q_latent.shape[-1]
    q = jnp.concatenate([q_latent, q_rope], axis=-1)
    k = kv_cache[:, :, None, :]
    return decode_attention(q, k, k[..., :r], kv_len, scale=scale)


def partial_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, valid: jax.Array, *, scale: float
) -> tuple[jax.Array, jax.Array]:
    """Attention of one query token over a slice of the keys, with its log-sum-exp.

    lse = log Σ_s exp(q·k_s·scale) over valid s;  out = Σ_s exp(q·k_s·scale − lse)·v_s.
    A slice with no valid key gives lse = −inf and out = 0, which the combine weighs by exp(−inf) = 0.

    Args:
      q: [B, Q, D].
      k: [B, S, K, D].
      v: [B, S, K, Dv].
      valid: [B, S] bool.
      scale: softmax scale.

    Returns:
      (out [B, Q, Dv], lse [B, Q]), float32.

    References:
      Helix Parallelism, arXiv 2507.07120, §2.1.1; FlashAttention-2, arXiv 2307.08691, §3.1.
    """
    b, nq, d = q.shape
    nk = k.shape[2]
    qg = q.reshape(b, nk, nq // nk, d)
    s = jnp.einsum("bkgd,bskd->bkgs", qg, k, precision=PRECISION) * scale
    s = jnp.where(valid[:, None, None, :], s, -jnp.inf)
    m = jnp.max(s, axis=-1, keepdims=True)
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    p = jnp.exp(s - m)
    l = jnp.sum(p, axis=-1, keepdims=True)
    out = jnp.einsum("bkgs,bskd->bkgd", p, v, precision=PRECISION) / jnp.where(l > 0, l, 1.0)
    lse = jnp.where(l > 0, m + jnp.log(l), -jnp.inf)
    return out.reshape(b, nq, v.shape[-1]), lse.reshape(b, nq)


def combine_partials(out: jax.Array, lse: jax.Array, *, axis: int = 0) -> tuple[jax.Array, jax.Array]:
    """Exact combine of partial attentions over disjoint key slices, in FP32.

    LSE = log Σ_i exp(LSE_i),  O = Σ_i exp(LSE_i − LSE)·O_i.  All slices empty gives O = 0, LSE = −inf.

    Args:
      out: [..., P, ..., Dv] partial outputs, the slices along `axis`.
      lse: out.shape[:-1], their log-sum-exps.
      axis: the slice axis (non-negative, counted in `lse`).

    Returns:
      (out with `axis` removed, lse with `axis` removed).

    References:
      Helix Parallelism, arXiv 2507.07120, §2.1.1 (all-to-all then LSE rescale).
    """
    out, lse = out.astype(jnp.float32), lse.astype(jnp.float32)
    m = jnp.max(lse, axis=axis, keepdims=True)
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    w = jnp.exp(lse - m)
    total = jnp.sum(w, axis=axis, keepdims=True)
    safe = jnp.where(total > 0, total, 1.0)
    o = jnp.sum(w[..., None] * out, axis=axis) / jnp.squeeze(safe, axis)[..., None]
    lse_all = jnp.where(total > 0, m + jnp.log(safe), -jnp.inf)
    return o, jnp.squeeze(lse_all, axis)


def _contract_last(x: jax.Array, w: jax.Array, dot_general=lax.dot_general) -> jax.Array:
    """x[..., H] · w[H, ...] with the given dot_general (FP32 out)."""
    return dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ())), precision=PRECISION,
                       preferred_element_type=jnp.float32)


def swiglu(
    x: jax.Array, w_gate: jax.Array, w_up: jax.Array, w_down: jax.Array, *, dot_general=lax.dot_general
) -> jax.Array:
    """SwiGLU FFN: (silu(x·W_gate) ⊙ (x·W_up))·W_down.

    Args:
      x: [..., H].
      w_gate, w_up: [H, F].
      w_down: [F, H].
      dot_general: contraction (e.g. a numerics policy's quantized `dot_general`).

    Returns:
      [..., H], float32.

    References:
      Shazeer, GLU Variants Improve Transformer, arXiv 2002.05202.
    """
    h = jax.nn.silu(_contract_last(x, w_gate, dot_general)) * _contract_last(x, w_up, dot_general)
    return _contract_last(h, w_down, dot_general)


def route(x: jax.Array, w_router: jax.Array, *, top_k: int) -> jax.Array:
    """Top-k softmax router: gate weights per token and expert, zero outside the top k.

    p = softmax(x·W_router); keep the k largest, renormalize them to sum to 1.

    Args:
      x: [N, H].
      w_router: [H, E].
      top_k: experts per token.

    Returns:
      gates [N, E], float32, k non-zeros per row summing to 1.

    References:
      Mixtral of Experts, arXiv 2401.04088, §2.1 (top-2 softmax gating).
    """
    probs = jax.nn.softmax(jnp.einsum("nh,he->ne", x, w_router, precision=PRECISION), axis=-1)
    top, idx = lax.top_k(probs, top_k)
    top = top / jnp.sum(top, axis=-1, keepdims=True)
    return jnp.sum(jax.nn.one_hot(idx, w_router.shape[-1], dtype=jnp.float32) * top[..., None], axis=-2)


def moe_experts(
    x: jax.Array, gates: jax.Array, w_gate: jax.Array, w_up: jax.Array, w_down: jax.Array,
    *, dot_general=lax.dot_general,
) -> jax.Array:
    """Routed experts, evaluated densely and weighted by their gates: Σ_e gates[:, e]·SwiGLU_e(x).

    Dense evaluation over the given experts is exact (gate 0 for unrouted pairs) and suits the small
    decode batches this package runs; the expert weights may be a slice of the experts (EP) or of
    their FFN width (TPF), in which case the result is a partial sum.

    Args:
      x: [N, H].
      gates: [N, E] gate weights of these experts.
      w_gate, w_up: [E, H, F_e].
      w_down: [E, F_e, H].
      dot_general: contraction.

    Returns:
      [N, H], float32.
    """
    g = dot_general(x, w_gate, (((1,), (1,)), ((), ())), precision=PRECISION, preferred_element_type=jnp.float32)
    u = dot_general(x, w_up, (((1,), (1,)), ((), ())), precision=PRECISION, preferred_element_type=jnp.float32)
    h = jax.nn.silu(g) * u  # [N, E, F_e]
    y = dot_general(h, w_down, (((2,), (1,)), ((1,), (0,))), precision=PRECISION,
                    preferred_element_type=jnp.float32)  # [E, N, H]
    return jnp.einsum("enh,ne->nh", y, gates, precision=PRECISION)
