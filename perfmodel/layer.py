"""The ops of one decoder layer under a layout, costed per GPU: the per-layer op list of the steps.

`step.py` sums these ops over the layers of a pipeline pass; this module owns the list itself and
the accumulator (`Tally`) that turns each op into time, work and traffic. Design points are
`step.LayoutArrays` (float degrees), so everything is jit-able, `vmap`-able and differentiable in
the degrees and the efficiency parameters. API:

    decode_layer_cost(model, hw, params, lay, seq_len, *, moe=None) -> LayerCost
                                                   one decoder layer of decode_step, with bytes per collective
    hopb_time(compute_s, comm_s, n, overlap) -> seconds            HOP-B micro-batch overlap
    expected_active_experts(n_experts, top_k, tokens) -> experts that receive a token
    exact_ceil, round_up, max1_relaxed        the layouts' integer roundings (and their relaxations)
    Tally, PassShape, add_layers(t, model, lay, shape, n_dense, n_moe), bytes_per_elem(bits)
                                              the accumulator and one pass's layers, for step.py
    pipeline_microbatches(lay) -> min(pp, batch)                  decode micro-batches in flight

Layer dataflow on the N = dp_attn·kvp·tpa GPUs of one pipeline stage (Helix, arXiv 2507.07120 §2;
G = kvp·tpa is one attention group, T tokens per replica, T_a = T / dp_attn per group):

    attention  QKV by TPA (K heads per GPU: max(1, K/TPA), duplicated when TPA > K), attention
               over S/KVP cached tokens, all-to-all over KVP (partial outputs + LSE), W_O by G,
               all-reduce over G. HOP-B over `microbatches` n: c + m + (n−1)·max(c, m).
    dense FFN  all-gather over dp_attn, TP over tpf·ep, reduce-scatter over dp_attn (each group
               keeps the sum for its own tokens), all-reduce over G (tpf·ep = N; a replicated
               FFN, tpf·ep ≤ G, only all-reduces over its tpf·ep GPUs).
    MoE FFN    router; dispatch all-to-all over dp_attn; local experts E/EP, each TPF-sharded,
               reading only the experts that got a token: (E/EP)·(1 − (1 − k/E)^T); shared experts
               TP over G; combine all-to-all over dp_attn; all-reduce over G. With
               moe_dispatch="all_gather" the dispatch/combine all-to-alls become an all-gather of
               the batch and a reduce-scatter of the outputs over dp_attn, as in the dense FFN
               (what parallel/ does: it evaluates its local experts for every gathered token).

Integer layouts are costed exactly (uneven splits round up: the largest DP group or pipeline
micro-batch sets the time); `relaxed=True` drops those roundings for gradient search, and
max(1, K/TPA) has a C¹ relaxation that is exact at every valid TPA. Not modeled: expert load
imbalance (tokens are routed uniformly), KV-append writes, sampling/logit communication, and
prefill under KVP beyond splitting its attention (the QKV projections stay replicated over KVP).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import ops
from .efficiency import DECODE_ATTENTION, ELEMENTWISE, GEMM, GROUPED_GEMM, PREFILL_ATTENTION
from .specs import HardwareSpec, ModelSpec

_LSE_BYTES = 4.0  # one FP32 log-sum-exp per (token, head) travels with the partial outputs
MOE_DISPATCH = ("all_to_all", "all_gather")  # how DP attention groups exchange MoE tokens
# Online softmax per attention score: scale-and-subtract the running max (one FMA, 2), max, exp, sum.
# source: FlashAttention-2, arXiv 2307.08691 §3.1 (the matmul-only count 4·d per score omits them).
_SOFTMAX_FLOPS = 5.0
_PEAKS = ("gemm", "attn", "fp32")  # compute precisions an op runs at (weights, KV, FP32 elementwise)


def exact_ceil(x):
    """ceil(x) in value, d/dx = 1 in gradient (straight-through): exact at integer layouts, and
    still informative for a gradient search (e.g. layers of the largest pipeline stage)."""
    return x + jax.lax.stop_gradient(jnp.ceil(x - 1e-4) - x)


def round_up(x, relaxed: bool = False):
    """The layouts' integer roundings: `exact_ceil(x)`, or x itself when `relaxed` (a smooth
    surrogate for gradient search, exact wherever the division is exact)."""
    return x if relaxed else exact_ceil(x)


def max1_relaxed(x):
    """max(1, x), exact outside (1, 2) and C¹: 1 + (x−1)²(2 − (x−1)) on [1, 2].

    ceil(K/TPA) for valid layouts (TPA divides K, or K divides TPA) is max(1, K/TPA); this
    relaxation equals it at every such point (and every integer) yet has a continuous gradient.
    """
    u = jnp.clip(x - 1.0, 0.0, 1.0)
    return jnp.where(x >= 2.0, x, 1.0 + u * u * (2.0 - u))


def pipeline_microbatches(lay):
    """Decode micro-batches in flight through the pipeline: min(pp, batch) (a stage never
    splits a request; with fewer requests than stages the others idle)."""
    return jnp.minimum(lay.pp, lay.batch)


class Tally:
    """Trace-time accumulator of op costs (a Python object; everything inside is jnp).

    Degrees, their reciprocals, reciprocal rates and collective groups are computed once per pass
    and shared by every op: the model runs at millions of design points per second, so the hot
    path multiplies instead of dividing. Work is accumulated as FLOPs per compute precision, HBM
    bytes and link-seconds; the busy times at the datasheet peaks and their power-weighted sum are
    linear in those, so they are formed once at the end (`busy`) instead of per op.
    """

    def __init__(self, hw: HardwareSpec, eff, lay, relaxed: bool = False, moe_dispatch: str = "all_to_all"):
        if moe_dispatch not in MOE_DISPATCH:
            raise ValueError(f"moe_dispatch={moe_dispatch!r} is not one of {MOE_DISPATCH}")
        self.hw, self.eff, self.lay, self.relaxed, self.moe_dispatch = hw, eff, lay, relaxed, moe_dispatch
        self.inv_peak = {
            "gemm": 1.0 / hw.peak_flops(jnp.maximum(lay.weight_bits, lay.act_bits)),
            "attn": 1.0 / hw.peak_flops(jnp.maximum(lay.kv_bits, lay.act_bits)),
            "fp32": 1.0 / hw.flops_fp32,
        }
        self.inv_bw = 1.0 / hw.hbm_bandwidth_bytes_per_s
        self.g = lay.kvp * lay.tpa  # one attention group
        self.nf = lay.tpf * lay.ep  # GPUs of the FFN
        inv = {k: 1.0 / getattr(lay, f) for k, f in (("tpa", "tpa"), ("kvp", "kvp"), ("d", "dp_attn"),
                                                     ("tpf", "tpf"), ("ep", "ep"), ("mb", "microbatches"))}
        self.inv = {**inv, "g": inv["kvp"] * inv["tpa"], "nf": inv["tpf"] * inv["ep"]}
        self.groups = {}
        z = jnp.zeros_like(lay.batch)
        self.parts = {"attention": z, "ffn": z, "comm": z, "other": z}
        self.flops_at = dict.fromkeys(_PEAKS, z)  # FLOPs per compute precision
        self.hbm = self.net = self.link_s = z  # HBM bytes, bytes sent, Σ bytes sent / link peak
        self.by_kind = None  # {kind: bytes a GPU sends}, recorded only when set (decode_layer_cost)

    def op_time(self, cls, flops, nbytes, peak="gemm"):
        return ops.roofline_time(self.eff, cls, flops, nbytes, self.inv_peak[peak], self.inv_bw)

    def work(self, flops, nbytes, peak, count):
        self.flops_at[peak] = self.flops_at[peak] + count * flops
        self.hbm = self.hbm + count * nbytes

    def op(self, part, cls, cost, count, peak="gemm"):
        flops, nbytes = cost
        self.work(flops, nbytes, peak, count)
        t = self.op_time(cls, flops, nbytes, peak)
        self.parts[part] = self.parts[part] + count * t
        return t

    def group(self, name, n, inv_n=None, level=None):
        """The `ops.Group` of n GPUs, built once per name; inv_n = 1/n when already at hand."""
        if name not in self.groups:
            grp = ops.group(self.eff, self.hw, n, level)
            if inv_n is not None:  # (n − 1)/n, 0 for n ≤ 1, without a second division
                grp = grp._replace(frac=jnp.maximum(1.0 - inv_n, 0.0))
            self.groups[name] = grp
        return self.groups[name]

    def coll_work(self, kind, nbytes, grp, count):
        traffic = count * ops.group_traffic(kind, nbytes, grp)
        self.net = self.net + traffic
        self.link_s = self.link_s + traffic * grp.inv_bw_peak
        if self.by_kind is not None:
            self.by_kind[kind] = self.by_kind[kind] + traffic

    def coll(self, kind, nbytes, grp, count, part="comm"):
        self.coll_work(kind, nbytes, grp, count)
        t = ops.group_time(kind, nbytes, grp)
        self.parts[part] = self.parts[part] + count * t
        return t

    def scale(self, factor):
        for k in self.parts:
            self.parts[k] = self.parts[k] * factor

    def total(self):
        p = self.parts
        return p["attention"] + p["ffn"] + p["comm"] + p["other"]

    @property
    def flops(self):
        f = self.flops_at
        return f["gemm"] + f["attn"] + f["fp32"]

    def busy(self):
        """(compute, memory, link, power-weighted) busy seconds: the work at the datasheet peaks."""
        f, ip = self.flops_at, self.inv_peak
        compute = f["gemm"] * ip["gemm"] + f["attn"] * ip["attn"] + f["fp32"] * ip["fp32"]
        memory = self.hbm * self.inv_bw
        w = self.eff.power_weight
        return compute, memory, self.link_s, w[0] * compute + w[1] * memory + w[2] * self.link_s


class PassShape(NamedTuple):
    """New tokens of one pass: decode sequences at a context, and prefill tokens."""

    dec_seqs: jax.Array | None  # decode sequences per replica (one new token each)
    dec_ctx: jax.Array | None  # cached tokens each reads
    pf_tokens: jax.Array | None  # prefill tokens per replica
    pf_seqs: jax.Array | None  # sequences those tokens belong to
    pf_pairs: jax.Array | None  # causal query-key pairs per prefill sequence
    pf_kv: jax.Array | None  # keys each prefill sequence reads

    @property
    def tokens(self):
        t = 0.0
        if self.dec_seqs is not None:
            t = t + self.dec_seqs
        if self.pf_tokens is not None:
            t = t + self.pf_tokens
        return t


def bytes_per_elem(bits):
    """Bytes per element of a `bits`-bit format: bits / 8 (scalar or array, same shape back).

    Block formats count their shared scale: MXFP4 is 4 + 8/32 = 4.25 bits (OCP MX v1.0 §5: k = 32, an
    E8M0 scale), 0.53125 B.
    """
    return bits * 0.125


def _attention(t: Tally, m: ModelSpec, lay, s: PassShape, count):
    """One attention block (pre-norm, QKV, attention, KVP all-to-all, W_O, all-reduce), per GPU."""
    wb, kb, ab, cb = (bytes_per_elem(lay.weight_bits), bytes_per_elem(lay.kv_bits),
                      bytes_per_elem(lay.act_bits), bytes_per_elem(lay.comm_bits))
    inv = t.inv
    h, q = float(m.hidden), float(m.n_heads)
    qh = q * inv["tpa"]
    kvh = max1_relaxed(m.n_kv_heads * inv["tpa"])
    ta = round_up(s.tokens * inv["d"], t.relaxed)  # tokens of the largest attention group
    mb = lay.microbatches
    t.op("other", ELEMENTWISE, (10.0 * ta * h, 10.0 * ta * h * ab), count, peak="fp32")
    if m.is_mla:
        rope, nope, lat = float(m.rope_dim), float(m.head_dim), float(m.kv_lora_rank)
        if m.q_lora_rank:
            t.op("attention", GEMM, ops.gemm_cost(ta, float(m.q_lora_rank), h, ab, wb), count)
        k_q = float(m.q_lora_rank) or h
        t.op("attention", GEMM, ops.gemm_cost(ta, qh * (nope + rope), k_q, ab, wb), count)
        t.op("attention", GEMM, ops.gemm_cost(ta, lat + rope, h, ab, wb), count)
    else:
        hsz = float(m.head_dim)
        t.op("attention", GEMM, ops.gemm_cost(ta, (qh + 2.0 * kvh) * hsz, h, ab, wb), count)
    v_out = float(m.v_dim)
    kvp_group = t.group("kvp", lay.kvp, inv["kvp"])
    if s.dec_seqs is not None:
        bd = round_up(s.dec_seqs * inv["d"], t.relaxed)  # the largest group when d does not divide the batch
        per_mb = bd * inv["mb"]
        ctx = s.dec_ctx * inv["kvp"]
        if m.is_mla:  # absorbed MLA: q_nope·W_UK into the latent, attention over it, latent·W_UV
            t.op("attention", GROUPED_GEMM, ops.grouped_gemm_cost(bd * qh, lat, nope, qh, ab, wb), count)
            attn = ops.decode_attention_cost(per_mb, ctx, qh, 1.0, lat + rope, lat, kb, latent=True,
                                             act_bytes_per_elem=ab)
        else:
            attn = ops.decode_attention_cost(per_mb, ctx, qh, kvh, hsz, hsz, kb, act_bytes_per_elem=ab)
        attn = (attn[0] + _SOFTMAX_FLOPS * per_mb * qh * ctx, attn[1])
        c = t.op_time(DECODE_ATTENTION, attn[0], attn[1], "attn")
        t.work(attn[0], attn[1], "attn", count * mb)
        a2a_bytes = per_mb * qh * (v_out * cb + _LSE_BYTES)
        comm = ops.group_time("all_to_all", a2a_bytes, kvp_group)
        t.coll_work("all_to_all", a2a_bytes, kvp_group, count * mb)
        total = hopb_time(c, comm, mb, lay.hopb)
        t.parts["attention"] = t.parts["attention"] + count * mb * c
        t.parts["comm"] = t.parts["comm"] + count * (total - mb * c)
        if m.is_mla:  # W_UV on this GPU's Q/TPA heads, before the all-to-all: its payload is v_dim wide
            t.op("attention", GROUPED_GEMM, ops.grouped_gemm_cost(bd * qh, v_out, lat, qh, ab, wb), count)
    if s.pf_tokens is not None:
        seqs = s.pf_seqs * inv["d"]
        q_len = s.pf_tokens / s.pf_seqs
        kv_len = s.pf_kv * inv["kvp"]
        pairs = s.pf_pairs * inv["kvp"]
        if m.is_mla:  # prefill runs MLA expanded: latent context × W_UK/W_UV, then MHA
            t.op("attention", GEMM, ops.gemm_cost(seqs * kv_len, qh * (nope + v_out), lat, kb, wb, ab), count)
            cost = ops.prefill_attention_cost(seqs, q_len, kv_len, qh, qh, nope + rope, v_out, ab, pairs=pairs)
        else:
            cost = ops.prefill_attention_cost(seqs, q_len, kv_len, qh, kvh, hsz, hsz, ab, kv_bytes_per_elem=kb,
                                              pairs=pairs)
        cost = (cost[0] + _SOFTMAX_FLOPS * seqs * qh * pairs, cost[1])
        t.op("attention", PREFILL_ATTENTION, cost, count, peak="attn")
        t.coll("all_to_all", (s.pf_tokens * inv["d"]) * qh * (v_out * cb + _LSE_BYTES), kvp_group, count)
    t.op("attention", GEMM, ops.gemm_cost(ta, h, q * inv["g"] * v_out, ab, wb), count)
    t.coll("all_reduce", ta * h * cb, t.group("g", t.g, inv["g"]), count)


def _dense_ffn(t: Tally, m: ModelSpec, lay, s: PassShape, count):
    wb, ab, cb = bytes_per_elem(lay.weight_bits), bytes_per_elem(lay.act_bits), bytes_per_elem(lay.comm_bits)
    h, f_local = float(m.hidden), float(m.ffn) * t.inv["nf"]
    tok = s.tokens
    t.coll("all_gather", tok * h * cb, t.group("d", lay.dp_attn, t.inv["d"]), count)
    t.op("ffn", GEMM, ops.gemm_cost(tok, 2.0 * f_local, h, ab, wb), count)
    t.op("other", ELEMENTWISE, (3.0 * tok * f_local, 3.0 * tok * f_local * ab), count, peak="fp32")
    t.op("ffn", GEMM, ops.gemm_cost(tok, h, f_local, ab, wb), count)
    # The tpf·ep GPUs of one FFN replica span r = max(1, tpf·ep/G) attention groups (r = dp_attn when
    # tpf·ep = N; tpf·ep ≤ N always): a reduce-scatter over those groups leaves each group the sum
    # for its own tokens, an all-reduce over the replica's tpf·ep/r GPUs in the group finishes it.
    r = jnp.maximum(t.nf * t.inv["g"], 1.0)
    inv_r = jnp.minimum(t.g * t.inv["nf"], 1.0)
    t.coll("reduce_scatter", tok * h * cb, t.group("r", r, inv_r), count)
    t.coll("all_reduce", tok * inv_r * h * cb, t.group("nf/r", t.nf * inv_r, r * t.inv["nf"]), count)


def hopb_time(compute_s, comm_s, n, overlap=1.0):
    """n micro-batches of attention (compute_s each) and all-to-all (comm_s each).

    HOP-B (overlap = 1): c + m + (n − 1)·max(c, m), the all-to-all of micro-batch i hidden behind
    the attention of i + 1 (smooth max); without it (overlap = 0): n·(c + m).

    References:
      Helix, arXiv 2507.07120 §2.1.3, Fig. 3 (8 requests, c = 2, m = 1.2: 25.6 → 17.2 units).
    """
    overlapped = compute_s + comm_s + (n - 1.0) * ops.smooth_max(compute_s, comm_s)
    return overlap * overlapped + (1.0 - overlap) * n * (compute_s + comm_s)


def expected_active_experts(n_experts, top_k, tokens):
    """E·(1 − (1 − k/E)^T): experts that receive at least one of T uniformly routed tokens."""
    if top_k >= n_experts:  # every token reaches every expert (log(1 − k/E) = −inf)
        return jnp.where(jnp.asarray(tokens) > 0, float(n_experts), 0.0)
    return n_experts * (1.0 - jnp.exp(tokens * float(np.log1p(-top_k / n_experts))))


def _moe_ffn(t: Tally, m: ModelSpec, lay, s: PassShape, count):
    wb, ab, cb = bytes_per_elem(lay.weight_bits), bytes_per_elem(lay.act_bits), bytes_per_elem(lay.comm_bits)
    h, fe, e, k = float(m.hidden), float(m.expert_ffn), float(m.n_experts), float(m.top_k)
    inv = t.inv
    tok = s.tokens
    ta = round_up(tok * inv["d"], t.relaxed)  # tokens of the largest attention group
    d_group = t.group("d", lay.dp_attn, inv["d"])
    gather = t.moe_dispatch == "all_gather"
    if gather:  # every GPU receives (and routes) every token of the replica
        t.coll("all_gather", tok * h * cb, d_group, count)
    t.op("ffn", GEMM, ops.gemm_cost(tok if gather else ta, e, h, ab, wb), count)
    dispatch = ta * inv["g"] * k * h * cb  # each group member sends its share of the group's tokens
    if not gather:
        t.coll("all_to_all", dispatch, d_group, count)
    local_tokens = tok * k * inv["ep"]
    active = expected_active_experts(e, k, tok) * inv["ep"]
    fe_local = fe * inv["tpf"]
    t.op("ffn", GROUPED_GEMM, ops.grouped_gemm_cost(local_tokens, 2.0 * fe_local, h, active, ab, wb), count)
    t.op("other", ELEMENTWISE, (3.0 * local_tokens * fe_local, 3.0 * local_tokens * fe_local * ab), count,
         peak="fp32")
    t.op("ffn", GROUPED_GEMM, ops.grouped_gemm_cost(local_tokens, h, fe_local, active, ab, wb), count)
    if m.n_shared_experts:
        fs_local = float(m.n_shared_experts) * fe * inv["g"]
        t.op("ffn", GEMM, ops.gemm_cost(ta, 2.0 * fs_local, h, ab, wb), count)
        t.op("ffn", GEMM, ops.gemm_cost(ta, h, fs_local, ab, wb), count)
    if gather:  # each group keeps the sum for its own tokens
        t.coll("reduce_scatter", tok * h * cb, d_group, count)
    else:
        t.coll("all_to_all", dispatch, d_group, count)
    t.coll("all_reduce", ta * h * cb, t.group("g", t.g, inv["g"]), count)


def add_layers(t: Tally, model: ModelSpec, lay, s: PassShape, n_dense, n_moe):
    """Accumulate n_dense dense-FFN and n_moe MoE layers of shape `s` into `t` (attention is the
    same in both kinds, so it is costed once for all of them)."""
    _attention(t, model, lay, s, n_dense + n_moe)
    if n_dense:
        _dense_ffn(t, model, lay, s, n_dense)
    if n_moe:
        _moe_ffn(t, model, lay, s, n_moe)


class LayerCost(NamedTuple):
    """One decoder layer of a decode step on one GPU.

    time_s: its critical path (HOP-B overlap included). flops, hbm_bytes: its work.
    collective_bytes: {kind: bytes one GPU sends} for every kind of `ops.COLLECTIVES`, the traffic
      the layer's collectives are charged with (`ops.group_traffic`; module docstring of `ops`).
    """

    time_s: jax.Array
    flops: jax.Array
    hbm_bytes: jax.Array
    collective_bytes: dict[str, jax.Array]


def decode_layer_cost(model: ModelSpec, hw: HardwareSpec, params, lay, seq_len, *,
                      moe: bool | None = None, relaxed: bool = False,
                      moe_dispatch: str = "all_to_all") -> LayerCost:
    """The ops of one decoder layer exactly as `step.decode_step` costs them (one layer of its sum).

    Pre-norm, QKV, attention over seq_len/KVP cached tokens, the KVP all-to-all, W_O and its
    all-reduce, then the FFN (module docstring), for one pipeline micro-batch of ⌈B/min(pp, B)⌉
    sequences (B when pp = 1). No embedding, LM head or pipeline send.

    Args:
      model, hw: specs. params: `EfficiencyParams` (or `Efficiency`).
      lay: the design point(s), a `step.LayoutArrays`. seq_len, relaxed, moe_dispatch: as in
        `step.decode_step`.
      moe: an MoE layer (default: whether the model has experts); False costs a dense FFN layer.

    Returns:
      `LayerCost` per GPU.

    Raises:
      ValueError: moe=True for a dense model, or an unknown moe_dispatch.
    """
    if moe is None:
        moe = model.is_moe
    if moe and not model.is_moe:
        raise ValueError(f"moe=True but {model.name} has no experts (n_experts={model.n_experts})")
    t = Tally(hw, ops.as_efficiency(params), lay, relaxed, moe_dispatch)
    t.by_kind = dict.fromkeys(ops.COLLECTIVES, jnp.zeros_like(lay.batch))
    b = round_up(lay.batch / pipeline_microbatches(lay), relaxed)
    s = PassShape(b, jnp.asarray(seq_len, jnp.float32), None, None, None, None)
    add_layers(t, model, lay, s, 0.0 if moe else 1.0, 1.0 if moe else 0.0)
    return LayerCost(t.total(), t.flops, t.hbm, t.by_kind)
