"""Weights of the decoder, as global (unsharded) arrays, and how each one is sharded on a LayoutMesh.

The nnx model (`parallel.model`) exports into these containers; the sharded decoder (`parallel.decode`)
places them with `weight_specs`. Helix sharding (arXiv 2507.07120 §2.1): Q/K/V projections split by
TPA over heads and replicated over KVP; W_O split over all N = KVP·TPA devices on its input (heads in
(tpa, kvp) order, the order the all-to-all leaves them in); dense FFN split over all N; MoE experts
split over EP and each expert's width over TPF; norms and routers replicated. Data-parallel attention
groups (dp) replicate the attention weights.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from .mesh import LayoutMesh


class AttentionWeights(NamedTuple):
    """GQA / MHA attention. norm [H]; wq [H, Q, D]; wk [H, K, D]; wv [H, K, Dv]; wo [Q, Dv, H]."""

    norm: jax.Array
    wq: jax.Array
    wk: jax.Array
    wv: jax.Array
    wo: jax.Array


class MLAWeights(NamedTuple):
    """DeepSeek MLA in absorbed form (arXiv 2405.04434 §2.1).

    norm [H]; wq_a [H, q_rank] and q_norm [q_rank] (None without query compression);
    wq [q_rank or H, Q, D + d_rope]; wkv_a [H, r + d_rope]; kv_norm [r]; w_uk [Q, D, r];
    w_uv [Q, r, Dv]; wo [Q, Dv, H].
    """

    norm: jax.Array
    wq_a: jax.Array | None
    q_norm: jax.Array | None
    wq: jax.Array
    wkv_a: jax.Array
    kv_norm: jax.Array
    w_uk: jax.Array
    w_uv: jax.Array
    wo: jax.Array


class DenseFFNWeights(NamedTuple):
    """SwiGLU FFN. norm [H]; w_gate, w_up [H, F]; w_down [F, H]."""

    norm: jax.Array
    w_gate: jax.Array
    w_up: jax.Array
    w_down: jax.Array


class MoEWeights(NamedTuple):
    """Top-k MoE. norm [H]; router [H, E]; w_gate, w_up [E, H, F_e]; w_down [E, F_e, H];
    shared_gate, shared_up [H, F_s], shared_down [F_s, H] (None without shared experts)."""

    norm: jax.Array
    router: jax.Array
    w_gate: jax.Array
    w_up: jax.Array
    w_down: jax.Array
    shared_gate: jax.Array | None
    shared_up: jax.Array | None
    shared_down: jax.Array | None


class LayerWeights(NamedTuple):
    attn: AttentionWeights | MLAWeights
    ffn: DenseFFNWeights | MoEWeights


class ModelWeights(NamedTuple):
    """embed [V, H]; layers; final_norm [H]; lm_head [H, V]."""

    embed: jax.Array
    layers: tuple[LayerWeights, ...]
    final_norm: jax.Array
    lm_head: jax.Array


def _axes(axes: tuple[str, ...]):
    return axes if axes else None


def duplicate_kv_heads(w: AttentionWeights | MLAWeights, tpa: int) -> AttentionWeights | MLAWeights:
    """Repeat K/V projection heads so that TPA > K ranks each own one copy (plain-TP KV duplication).

    Head j of the result is KV head j // (tpa / K); MLA's single latent head is replicated by sharding
    instead, so MLA weights are returned unchanged.

    Raises:
      ValueError: tpa > K and not a multiple of K.
    """
    if isinstance(w, MLAWeights):
        return w
    k = w.wk.shape[1]
    if tpa <= k:
        return w
    if tpa % k:
        raise ValueError(f"tpa={tpa} exceeds kv_heads={k} and is not a multiple of it: KV cannot be duplicated")
    rep = tpa // k
    return w._replace(wk=jnp.repeat(w.wk, rep, axis=1), wv=jnp.repeat(w.wv, rep, axis=1))


def attention_specs(w: AttentionWeights | MLAWeights, lm: LayoutMesh):
    """PartitionSpecs of attention weights (after `duplicate_kv_heads`)."""
    tpa, heads_n = _axes(lm.tpa), _axes(lm.tpa + lm.kvp)
    if isinstance(w, MLAWeights):
        return MLAWeights(
            norm=P(), wq_a=None if w.wq_a is None else P(), q_norm=None if w.q_norm is None else P(),
            wq=P(None, tpa, None), wkv_a=P(), kv_norm=P(), w_uk=P(tpa, None, None),
            w_uv=P(tpa, None, None), wo=P(heads_n, None, None),
        )
    return AttentionWeights(
        norm=P(), wq=P(None, tpa, None), wk=P(None, tpa, None), wv=P(None, tpa, None), wo=P(heads_n, None, None)
    )


def ffn_specs(w: DenseFFNWeights | MoEWeights, lm: LayoutMesh):
    """PartitionSpecs of FFN weights: dense over all N devices, experts over EP × TPF."""
    every = _axes(lm.tpf + lm.ep)
    if isinstance(w, DenseFFNWeights):
        return DenseFFNWeights(norm=P(), w_gate=P(None, every), w_up=P(None, every), w_down=P(every, None))
    ep, tpf = _axes(lm.ep), _axes(lm.tpf)
    shared = w.shared_gate is not None
    return MoEWeights(
        norm=P(), router=P(), w_gate=P(ep, None, tpf), w_up=P(ep, None, tpf), w_down=P(ep, tpf, None),
        shared_gate=P(None, every) if shared else None, shared_up=P(None, every) if shared else None,
        shared_down=P(every, None) if shared else None,
    )


def layer_specs(w: LayerWeights, lm: LayoutMesh) -> LayerWeights:
    return LayerWeights(attn=attention_specs(w.attn, lm), ffn=ffn_specs(w.ffn, lm))


def lm_head_sharded(vocab: int, lm: LayoutMesh) -> bool:
    """The LM head is split over the attention group's vocab columns when they divide the vocab."""
    return vocab % (lm.size("kvp") * lm.size("tpa")) == 0


def model_specs(w: ModelWeights, lm: LayoutMesh) -> ModelWeights:
    vocab = w.lm_head.shape[1]
    head = P(None, _axes(lm.attention_group)) if lm_head_sharded(vocab, lm) else P()
    return ModelWeights(
        embed=P(), layers=tuple(layer_specs(layer, lm) for layer in w.layers), final_norm=P(), lm_head=head
    )
