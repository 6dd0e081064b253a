"""One decode step, one prefill, or one co-located iteration of a model under a layout.

Design points are `LayoutArrays`: a pytree of float arrays (degrees, batch, bits), so every
function here is jit-able, `vmap`-able over millions of layouts and differentiable in the degrees
(relaxed to reals) and in the efficiency parameters. `layout_arrays(Layout)` converts the frozen
spec. API:

    decode_step(model, hw, params, lay, seq_len, *, relaxed=False) -> StepCost    a token per sequence
    prefill_step(model, hw, params, lay, isl, *, relaxed=False) -> StepCost       prompts of `batch` seqs
    mixed_step(model, hw, params, lay, seq_len, isl, osl, *, relaxed=False) -> StepCost
                                                                      decode + piggybacked prefill
Every step takes `moe_dispatch` ("all_to_all" or "all_gather", `layer.py`).

A step is one pipeline pass through all layers (the per-layer op list and its dataflow on the
N = dp_attn·kvp·tpa GPUs of a stage live in `perfmodel.layer`, one layer as `layer.decode_layer_cost`)
plus the embedding, the LM head and the sends between stages:

    PP         `pp` stages each hold ⌈L/pp⌉ layers; m = min(pp, B) micro-batches of B/m in flight;
               a token passes every stage: latency = L·t_layer(B/m) + (pp − 1)·t_send.

Familiar layouts: TP (tpa = tpf = N), Helix (kvp·tpa = tpf·ep = N), DP attention + EP (dp_attn =
ep = N), Medha-style KVP (kvp·tpa = N, FFN TP over tpf = tpa only, replicated: tpf·ep < N is allowed
in `LayoutArrays` for dense models, not in `Layout`).

Integer layouts are costed exactly (uneven splits round up: the largest DP group, pipeline
micro-batch or stage sets the time); `relaxed=True` drops those roundings for gradient search.
Memory footprint, the capacity check and the Appendix A roofline live in `perfmodel.memory`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from . import ops
from .efficiency import ELEMENTWISE, GEMM
from .layer import PassShape, Tally, add_layers, bytes_per_elem, pipeline_microbatches, round_up
from .specs import HardwareSpec, Layout, ModelSpec


class LayoutArrays(NamedTuple):
    """A design point (or a batch of them) as float arrays; fields as in `specs.Layout`.

    hopb is 1.0 (overlap) or 0.0 (sequential micro-batches); *_bits are bits per element.
    """

    tpa: jax.Array
    kvp: jax.Array
    dp_attn: jax.Array
    tpf: jax.Array
    ep: jax.Array
    pp: jax.Array
    dp: jax.Array
    batch: jax.Array
    microbatches: jax.Array
    chunk: jax.Array
    hopb: jax.Array
    weight_bits: jax.Array
    kv_bits: jax.Array
    act_bits: jax.Array
    comm_bits: jax.Array

    @property
    def n_attention(self):
        """N: GPUs of one pipeline stage."""
        return self.dp_attn * self.kvp * self.tpa

    @property
    def n_gpus(self):
        """All GPUs: N · pp · dp."""
        return self.n_attention * self.pp * self.dp


_DEFAULTS = dict(tpa=1.0, kvp=1.0, dp_attn=1.0, tpf=1.0, ep=1.0, pp=1.0, dp=1.0, batch=1.0,
                 microbatches=1.0, chunk=0.0, hopb=1.0, weight_bits=16.0, kv_bits=16.0, act_bits=16.0,
                 comm_bits=16.0)


def make_layout_arrays(**fields) -> LayoutArrays:
    """LayoutArrays from keyword arrays (broadcast together; missing fields take defaults).

    Raises:
      ValueError: an unknown field name.
    """
    unknown = sorted(set(fields) - set(_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown LayoutArrays fields {unknown}; valid: {list(_DEFAULTS)}")
    values = [jnp.asarray(fields.get(k, v), jnp.float32) for k, v in _DEFAULTS.items()]
    return LayoutArrays(*jnp.broadcast_arrays(*values))


def layout_arrays(layout: Layout) -> LayoutArrays:
    """The float design point of a `Layout` (formats turned into bits per element)."""
    return make_layout_arrays(
        tpa=layout.tpa, kvp=layout.kvp, dp_attn=layout.dp_attn, tpf=layout.tpf, ep=layout.ep,
        pp=layout.pp, dp=layout.dp, batch=layout.batch, microbatches=layout.microbatches,
        chunk=layout.chunk, hopb=float(layout.hopb), weight_bits=layout.weight_bits,
        kv_bits=layout.kv_bits, act_bits=layout.act_bits, comm_bits=layout.comm_bits,
    )


def stack_layouts(layouts) -> LayoutArrays:
    """Stack `Layout`s into one LayoutArrays with a leading axis."""
    return jax.tree.map(lambda *x: jnp.stack(x), *[layout_arrays(l) for l in layouts])


class StepCost(NamedTuple):
    """Cost of a step on one GPU. Times in seconds; flops and bytes per GPU per period.

    time_s: latency (decode: TTL; prefill: TTFT of the batch; mixed: the iteration).
    period_s: steady-state time between completions of this step (pipelining overlaps steps).
    attention_s, ffn_s, comm_s, other_s: critical-path split of one pass through the layers
      (exposed communication in comm_s).
    flops, hbm_bytes, net_bytes: work per GPU per period.
    busy_compute_s, busy_memory_s, busy_link_s: that work at the datasheet peaks (for utilization).
    weighted_busy_s: Σ_c power_weight[c] · busy_c, what the power model needs (energy.py).
    """

    time_s: jax.Array
    period_s: jax.Array
    attention_s: jax.Array
    ffn_s: jax.Array
    comm_s: jax.Array
    other_s: jax.Array
    flops: jax.Array
    hbm_bytes: jax.Array
    net_bytes: jax.Array
    busy_compute_s: jax.Array
    busy_memory_s: jax.Array
    busy_link_s: jax.Array
    weighted_busy_s: jax.Array


def _pass(model, hw, eff, lay, s: PassShape, out_tokens, head_count=1.0, relaxed=False,
          moe_dispatch="all_to_all") -> Tally:
    """All layers of one pipeline pass (every stage once), plus embedding and LM head.

    `head_count` scales the LM head (prefill: one head per prompt, not per chunk).
    """
    t = Tally(hw, eff, lay, relaxed, moe_dispatch)
    n_moe = float(model.n_moe_layers)
    add_layers(t, model, lay, s, float(model.n_layers) - n_moe, n_moe)
    ab, wb = bytes_per_elem(lay.act_bits), bytes_per_elem(lay.weight_bits)
    h, v = float(model.hidden), float(model.vocab)
    tokens_d = s.tokens * t.inv["d"]
    t.op("other", ELEMENTWISE, (0.0, tokens_d * h * (wb + ab)), 1.0, peak="fp32")
    t.op("other", GEMM, ops.gemm_cost(out_tokens * t.inv["d"], v * t.inv["g"], h, ab, wb), head_count)
    # pipeline hand-offs: a pair of GPUs, over the level that holds the whole replica
    stage_pair = t.group("pp", 2.0, level=ops.link_level(hw, lay.n_attention * lay.pp))
    t.coll("send_recv", tokens_d * h * ab, stage_pair, lay.pp - 1.0)
    return t


def _cost(t: Tally, time_s, period_s, work_scale) -> StepCost:
    p = t.parts
    compute, memory, link, weighted = t.busy()
    return StepCost(
        time_s=time_s, period_s=period_s, attention_s=p["attention"], ffn_s=p["ffn"], comm_s=p["comm"],
        other_s=p["other"], flops=work_scale * t.flops, hbm_bytes=work_scale * t.hbm,
        net_bytes=work_scale * t.net, busy_compute_s=work_scale * compute,
        busy_memory_s=work_scale * memory, busy_link_s=work_scale * link,
        weighted_busy_s=work_scale * weighted,
    )


def largest_stage(model: ModelSpec, lay: LayoutArrays, relaxed=False):
    """Share of the layers on the largest pipeline stage: ⌈L/pp⌉ / L (L/pp / L when `relaxed`)."""
    return round_up(float(model.n_layers) / lay.pp, relaxed) / float(model.n_layers)


def _bottleneck(model: ModelSpec, lay: LayoutArrays, in_flight, relaxed=False):
    """Uneven stages: m micro-batches queue at the largest stage, so a pass takes
    max(1, m·⌈L/pp⌉/L) times the sum of the stages (1 when pp divides L)."""
    return jnp.maximum(1.0, in_flight * largest_stage(model, lay, relaxed))


def decode_step(model: ModelSpec, hw: HardwareSpec, params, lay: LayoutArrays, seq_len, *,
                relaxed: bool = False, moe_dispatch: str = "all_to_all") -> StepCost:
    """One decode step: every one of `batch` sequences gets a token (TTL = time_s).

    The batch is split into m = min(pp, B) pipeline micro-batches of B/m in flight; each passes
    every stage, so TTL = L·t_layer(B/m) + (pp − 1)·t_send and a GPU works m/pp of the time.

    Args:
      model, hw: specs. params: `EfficiencyParams` (or `Efficiency`).
      lay: the design point(s). seq_len: cached tokens each sequence attends to.
      relaxed: drop the integer roundings (uneven splits: ⌈B/m⌉, ⌈B/dp_attn⌉, ⌈L/pp⌉) for a
        smooth function of real degrees; they are exact when the splits are even.
      moe_dispatch: how dp_attn > 1 groups exchange MoE tokens: "all_to_all" (dispatch and combine
        of each token's top-k copies, as production DP-attention + EP serving does) or
        "all_gather" (gather the batch, reduce-scatter the outputs, as parallel/ implements it).

    Returns:
      `StepCost` (per GPU; work per period = per TTL).

    Raises:
      ValueError: an unknown moe_dispatch.

    References:
      Helix, arXiv 2507.07120 §2 and Appendix A.
    """
    eff = ops.as_efficiency(params)
    in_flight = pipeline_microbatches(lay)
    b = round_up(lay.batch / in_flight, relaxed)  # the largest micro-batch
    seq_len = jnp.asarray(seq_len, jnp.float32)
    s = PassShape(b, seq_len, None, None, None, None)
    t = _pass(model, hw, eff, lay, s, b, relaxed=relaxed, moe_dispatch=moe_dispatch)
    time = t.total() * _bottleneck(model, lay, in_flight, relaxed)
    return _cost(t, time, time, in_flight / lay.pp)


def _chunk_shape(tokens_per_seq_chunk, seqs, isl):
    """Prefill of `seqs` sequences in chunks of c tokens: per-chunk average causal pairs and keys."""
    c = tokens_per_seq_chunk
    prefix = 0.5 * (isl - c)  # average prefix before a chunk
    pairs = c * prefix + 0.5 * c * (c + 1.0)
    return pairs, prefix + c


def prefill_step(model: ModelSpec, hw: HardwareSpec, params, lay: LayoutArrays, isl, *,
                 relaxed: bool = False, moe_dispatch: str = "all_to_all") -> StepCost:
    """Prefill of `batch` prompts of `isl` tokens, chunked (`chunk` > 0) and pipelined over `pp`.

    Chunks of C tokens (C = isl when chunk = 0) are the pipeline's micro-batches (chunked
    pipeline parallelism, arXiv 2506.05508 §2): TTFT = (isl/C + pp − 1)·t_stage, and a new batch
    enters every (isl/C)·t_stage (period_s).

    Args:
      isl: prompt tokens per sequence. relaxed, moe_dispatch: as in `decode_step`.

    Returns:
      `StepCost`: time_s = TTFT of the batch (without queueing), period_s as above.
    """
    eff = ops.as_efficiency(params)
    isl = jnp.asarray(isl, jnp.float32)
    c = jnp.where(lay.chunk > 0, jnp.minimum(lay.chunk, isl), isl)
    n_chunks = isl / c
    pairs, kv = _chunk_shape(c, lay.batch, isl)
    s = PassShape(None, None, lay.batch * c, lay.batch, pairs, kv)
    t = _pass(model, hw, eff, lay, s, lay.batch, head_count=1.0 / n_chunks, relaxed=relaxed,
              moe_dispatch=moe_dispatch)
    # A stage's time per prompt token of a chunk: TTFT = (isl + (pp − 1)·C)·that, the period isl·that.
    # Both multiply this one quotient, which XLA computes once for all consumers (it never copies
    # a division into them; serving.py's docstring), so a sweep evaluates the pass once.
    per_token = t.total() * largest_stage(model, lay, relaxed) / c
    ttft = (isl + (lay.pp - 1.0) * c) * per_token
    t.scale(n_chunks)
    return _cost(t, ttft, isl * per_token, n_chunks / lay.pp)


def mixed_step(model: ModelSpec, hw: HardwareSpec, params, lay: LayoutArrays, seq_len, isl, osl, *,
               relaxed: bool = False, moe_dispatch: str = "all_to_all") -> StepCost:
    """One co-located iteration: `batch` decode tokens plus piggybacked prefill tokens.

    Rate balance (Sarathi-style chunked prefill): a steady state finishes B/OSL requests per
    iteration, so it must prefill P = B·ISL/OSL prompt tokens per iteration, in chunks of
    c = min(P, ISL) tokens of P/c prompts. TTL = time_s; TTFT ≈ max(1, ISL/P)·time_s.

    Args:
      seq_len: context of the decoding sequences (ISL + OSL/2 on average).
      isl, osl: request lengths. relaxed, moe_dispatch: as in `decode_step`.

    Returns:
      `StepCost` of one iteration.
    """
    eff = ops.as_efficiency(params)
    in_flight = pipeline_microbatches(lay)
    b = round_up(lay.batch / in_flight, relaxed)  # the largest micro-batch
    isl = jnp.asarray(isl, jnp.float32)
    p = b * isl / jnp.asarray(osl, jnp.float32)
    c = jnp.minimum(p, isl)
    pairs, kv = _chunk_shape(c, p / c, isl)
    s = PassShape(b, jnp.asarray(seq_len, jnp.float32), p, p / c, pairs, kv)
    t = _pass(model, hw, eff, lay, s, b + p / c, relaxed=relaxed, moe_dispatch=moe_dispatch)
    time = t.total() * _bottleneck(model, lay, in_flight, relaxed)
    return _cost(t, time, time, in_flight / lay.pp)
