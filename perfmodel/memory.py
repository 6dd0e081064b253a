"""Per-GPU memory of a model under a layout, and the Helix paper's Appendix A roofline.

Design points are `step.LayoutArrays` (float degrees), so everything here is jit-able, `vmap`-able
and differentiable like the step costs. API:

    memory_footprint(model, lay, seq_len, tokens=None, *, relaxed=False) -> Memory   bytes per GPU
    fits(model, hw, lay, seq_len, tokens=None, *, relaxed=False) -> (bool, HBM use ratio)
    attention_weights_per_gpu(model, lay), ffn_weights_per_gpu(model, lay, moe),
    kv_elems_per_token_per_gpu(model, lay)                           elements per layer per GPU
    decode_read_bytes(model, lay, seq_len) -> (kv, weights)           per GPU per dense layer
    appendix_a_read_times(...)                                        the paper's roofline, literally

Sharding (Helix, arXiv 2507.07120 §2; G = kvp·tpa): QKV (and MLA up-projections) by TPA, MLA
down-projections replicated, W_O by G; dense FFN TP over tpf·ep; MoE experts E/EP each TPF-sharded,
shared experts TP over G, router replicated; embedding and LM head vocab-parallel over G; the KV
cache of B/dp_attn sequences split over the sequence by KVP and over KV heads by TPA (duplicated
when TPA exceeds them; the MLA latent on every TPA rank).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .specs import HardwareSpec, ModelSpec
from .layer import exact_ceil, max1_relaxed, pipeline_microbatches, round_up
from .step import LayoutArrays, largest_stage


def _bytes(bits):
    return bits / 8.0


class Memory(NamedTuple):
    """Bytes per GPU."""

    weights_bytes: jax.Array
    kv_bytes: jax.Array
    activation_bytes: jax.Array

    @property
    def total_bytes(self):
        return self.weights_bytes + self.kv_bytes + self.activation_bytes


def attention_weights_per_gpu(model: ModelSpec, lay: LayoutArrays):
    """Attention weight elements of one layer on one GPU: QKV (and MLA up-projections) by TPA,
    MLA down-projections replicated, W_O by G = KVP·TPA."""
    h, q = float(model.hidden), float(model.n_heads)
    qh, g = q / lay.tpa, lay.kvp * lay.tpa
    w_o = q / g * float(model.v_dim) * h
    if model.is_mla:
        nope, rope, lat, v = (float(model.head_dim), float(model.rope_dim), float(model.kv_lora_rank),
                              float(model.v_dim))
        ql = float(model.q_lora_rank)
        w_q = h * ql + ql * qh * (nope + rope) if ql else h * qh * (nope + rope)
        return w_q + h * (lat + rope) + qh * lat * (nope + v) + w_o
    kvh = max1_relaxed(model.n_kv_heads / lay.tpa)
    return h * (qh + 2.0 * kvh) * float(model.head_dim) + w_o


def ffn_weights_per_gpu(model: ModelSpec, lay: LayoutArrays, moe: bool):
    """FFN weight elements of one layer on one GPU (dense: TP over tpf·ep; MoE: E/EP experts,
    TPF-sharded, shared experts TP over G, replicated router)."""
    h = float(model.hidden)
    if not moe:
        return 3.0 * h * float(model.ffn) / (lay.tpf * lay.ep)
    g = lay.kvp * lay.tpa
    fe = float(model.expert_ffn)
    return (float(model.n_experts) / lay.ep * 3.0 * h * fe / lay.tpf
            + float(model.n_shared_experts) * 3.0 * h * fe / g + h * float(model.n_experts))


def kv_elems_per_token_per_gpu(model: ModelSpec, lay: LayoutArrays):
    """Cached elements per token per layer on one GPU: 2·max(1, K/TPA)·Hsz, or the MLA latent
    (kv_lora_rank + rope_dim), duplicated on every TPA rank."""
    if model.is_mla:
        return jnp.full_like(lay.tpa, float(model.kv_lora_rank + model.rope_dim))
    return 2.0 * max1_relaxed(model.n_kv_heads / lay.tpa) * float(model.head_dim)


def memory_footprint(model: ModelSpec, lay: LayoutArrays, seq_len, tokens=None, *, relaxed: bool = False) -> Memory:
    """Per-GPU HBM use: weights of ⌈L/pp⌉ layers (+ embedding/LM head, vocab-parallel over G), the
    KV cache of B/dp_attn sequences × seq_len/KVP tokens × ⌈L/pp⌉ layers, activations of `tokens`.
    Dense and MoE layers are spread over the stages in proportion.

    Args:
      seq_len: cached tokens per sequence.
      tokens: tokens in flight per pass (default: a decode micro-batch, batch / min(pp, batch)).
      relaxed: as in `decode_step`.

    Returns:
      `Memory` (bytes).
    """
    wb, kb, ab = _bytes(lay.weight_bits), _bytes(lay.kv_bits), _bytes(lay.act_bits)
    n_moe = float(model.n_moe_layers)
    n_dense = float(model.n_layers) - n_moe
    g = lay.kvp * lay.tpa
    stage = largest_stage(model, lay, relaxed)
    per_stage = (float(model.n_layers) * attention_weights_per_gpu(model, lay)
                 + n_dense * ffn_weights_per_gpu(model, lay, False)
                 + n_moe * ffn_weights_per_gpu(model, lay, True)) * stage
    embed = float(model.vocab) * float(model.hidden) / g * (1.0 + 1.0 / lay.pp)
    weights = (per_stage + embed) * wb
    kv = (round_up(lay.batch / lay.dp_attn, relaxed) * jnp.asarray(seq_len, jnp.float32) / lay.kvp
          * kv_elems_per_token_per_gpu(model, lay) * float(model.n_layers) * stage * kb)
    tok = round_up(lay.batch / pipeline_microbatches(lay), relaxed) if tokens is None else tokens
    h = float(model.hidden)
    act = tok * 6.0 * h
    if n_dense:
        act = act + tok * 2.0 * float(model.ffn) / (lay.tpf * lay.ep)
    if n_moe:
        act = act + tok * float(model.top_k) / lay.ep * 2.0 * float(model.expert_ffn) / lay.tpf
    return Memory(weights, kv, act * ab)


def fits(model: ModelSpec, hw: HardwareSpec, lay: LayoutArrays, seq_len, tokens=None, *, relaxed: bool = False):
    """True where the per-GPU footprint fits HBM; also returns the use ratio (smooth constraint)."""
    ratio = memory_footprint(model, lay, seq_len, tokens, relaxed=relaxed).total_bytes / hw.hbm_capacity_bytes
    return ratio <= 1.0, ratio


# ---------------------------------------------------------------------------- Appendix A roofline

def decode_read_bytes(model: ModelSpec, lay: LayoutArrays, seq_len):
    """(KV bytes, weight bytes) one GPU reads per dense layer in a decode step, as the model counts.

    KV: B/dp_attn · S/KVP · kv_elems_per_token_per_gpu · kv_bytes. Weights: attention (QKV by TPA,
    W_O by KVP·TPA) + FFN (3·H·F / (TPF·EP)).
    """
    kv = (exact_ceil(lay.batch / lay.dp_attn) * jnp.asarray(seq_len, jnp.float32) / lay.kvp
          * kv_elems_per_token_per_gpu(model, lay) * _bytes(lay.kv_bits))
    w = (attention_weights_per_gpu(model, lay) + ffn_weights_per_gpu(model, lay, False)) * _bytes(lay.weight_bits)
    return kv, w


def appendix_a_read_times(batch, q_heads, kv_heads, head_size, hidden, ffn, seq_len, tpa, kvp, tpf,
                          bytes_per_elem, hbm_bytes_per_s):
    """The Helix paper's per-layer roofline, literally (Appendix A):

        KV read      = B · 2 · ⌈K/TPA⌉ · Hsz · (S/KVP) · bytes / MemBW
        weight read  = (2·H·(Q/TPA)·Hsz + 2·H·⌈K/TPA⌉·Hsz + 3·H·F/TPF) · bytes / MemBW

    Args: scalars as in the paper (Q, K heads; Hsz head size; H hidden; F FFN; S context).

    Returns:
      (kv_read_s, weight_read_s).

    References:
      Helix, arXiv 2507.07120, Appendix A and Fig. 1.
    """
    kv_per_gpu = np.ceil(kv_heads / tpa)
    kv = batch * 2 * kv_per_gpu * head_size * (seq_len / kvp) * bytes_per_elem / hbm_bytes_per_s
    w = (2 * hidden * (q_heads / tpa) * head_size + 2 * hidden * kv_per_gpu * head_size
         + 3 * hidden * ffn / tpf) * bytes_per_elem / hbm_bytes_per_s
    return kv, w
