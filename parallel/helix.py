"""Helix attention under `jax.shard_map`: KVP × TPA partial attention, one all-to-all, LSE combine.

Each device (kvp rank i, tpa rank j) holds S/KVP cached tokens of the KV heads of tpa rank j and the
query heads that use them, computes partial attention and its log-sum-exp, and sends the partials of
query-head chunk c to kvp rank c (one all-to-all over KVP). Afterwards each device holds every KVP
partial of Q/N query heads — heads j·Q/TPA + i·Q/N + [0, Q/N), i.e. global head chunk j·KVP + i — and
combines them exactly in FP32. The result is exact attention for Q/N heads over the whole batch.

KV storage: the sequence axis of a cache is sharded contiguously over KVP (rank i holds storage slots
[i·S/KVP, (i+1)·S/KVP)). Tokens reach ranks round-robin in blocks of `tokens_per_block` (paper §2.3):
token p lives on rank (p // b) % KVP at local slot (p // (b·KVP))·b + p % b. With
`tokens_per_block=None` the block is S/KVP, i.e. the cache is in plain token order.

HOP-B (§2.1.3): with `microbatches=M` the batch is cut in M slices; the all-to-all of slice i has no
data dependence on the attention of slice i+1 and is issued before it, so XLA's latency-hiding
scheduler can overlap them on a GPU. The result is the same as without micro-batching.

References:
  Helix Parallelism, arXiv 2507.07120, §2.1.1 (attention), §2.1.3 (HOP-B), §2.3 (KV append).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from . import blocks
from .mesh import LayoutMesh, as_layout_mesh
from .payload import exchange_partials

TOKENS_PER_BLOCK = 16  # source: Helix, arXiv 2507.07120, §2.3 (round-robin KV append every 16 tokens)


def _axes(axes: tuple[str, ...]):
    return axes if axes else None


def _is_tracer(x) -> bool:
    return isinstance(x, jax.core.Tracer)


def round_robin_positions(seq: int, kvp: int, tokens_per_block: int | None = TOKENS_PER_BLOCK) -> np.ndarray:
    """Token position held by each storage slot of a KVP-sharded cache.

    Slot s = i·(S/KVP) + j on rank i holds token ((j // b)·KVP + i)·b + j % b.

    Args:
      seq: cache length S (storage slots).
      kvp: KVP degree.
      tokens_per_block: b; None for plain token order (b = S/KVP).

    Returns:
      int64 [S], a permutation of range(S).

    Raises:
      ValueError: kvp does not divide seq, or b does not divide seq/kvp.
    """
    local, b = _check_seq(seq, kvp, tokens_per_block)
    slot = np.arange(local)
    rank = np.arange(kvp)[:, None]
    return (((slot // b) * kvp + rank) * b + slot % b).reshape(-1)


def _check_seq(seq: int, kvp: int, tokens_per_block: int | None) -> tuple[int, int]:
    if seq % kvp:
        raise ValueError(f"kvp={kvp} does not divide the cache length seq={seq}")
    local = seq // kvp
    b = local if tokens_per_block is None else tokens_per_block
    if not isinstance(b, int) or b <= 0:
        raise ValueError(f"tokens_per_block={tokens_per_block!r} must be a positive integer or None")
    if local % b:
        raise ValueError(
            f"tokens_per_block={b} does not divide the per-rank cache length seq/kvp={seq}/{kvp}={local}"
        )
    return local, b


def _slot_positions(local: int, rank: jax.Array, kvp: int, block: int) -> jax.Array:
    j = jnp.arange(local, dtype=jnp.int32)
    return ((j // block) * kvp + rank) * block + j % block


def append_local(cache: jax.Array, new: jax.Array, pos: jax.Array, rank: jax.Array, kvp: int, block: int):
    """Writes new[b] at token position pos[b] if this KVP rank owns it (else the write is dropped)."""
    local = cache.shape[1]
    owner = (pos // block) % kvp
    slot = (pos // (block * kvp)) * block + pos % block
    slot = jnp.where(owner == rank, slot, local)  # out of range: this rank does not store the token
    return cache.at[jnp.arange(cache.shape[0]), slot].set(new.astype(cache.dtype), mode="drop")


@dataclasses.dataclass(frozen=True)
class HelixGeometry:
    """Static sizes of one Helix attention call on a mesh (validated)."""

    kvp: int
    tpa: int
    dp: int
    microbatches: int
    block: int  # tokens per round-robin block
    local_seq: int
    hopb: bool = True  # overlap micro-batch i's all-to-all with i+1's attention; False serializes them

    @property
    def n(self) -> int:
        return self.kvp * self.tpa


def helix_geometry(
    lm: LayoutMesh, *, batch: int, q_heads: int, kv_heads: int, seq: int,
    tokens_per_block: int | None, microbatches: int, hopb: bool = True,
) -> HelixGeometry:
    """Validates a Helix attention shape against the mesh; raises ValueError naming the numbers.

    Rules: TPA divides the KV heads, or exceeds them as a multiple (KV duplicated); TPA divides the
    query heads and N = KVP·TPA divides them (the all-to-all splits each device's heads KVP ways);
    dp·microbatches divides the batch; KVP (and the round-robin block) divide the sequence.
    """
    kvp, tpa, dp = lm.size("kvp"), lm.size("tpa"), lm.size("dp")
    if q_heads % kv_heads:
        raise ValueError(f"q_heads={q_heads} is not a multiple of kv_heads={kv_heads}")
    if tpa <= kv_heads and kv_heads % tpa:
        raise ValueError(f"tpa={tpa} does not divide kv_heads={kv_heads}")
    if tpa > kv_heads and tpa % kv_heads:
        raise ValueError(f"tpa={tpa} exceeds kv_heads={kv_heads} but is not a multiple of it (KV duplication)")
    if q_heads % (kvp * tpa):
        raise ValueError(f"N=kvp·tpa={kvp}·{tpa}={kvp * tpa} does not divide q_heads={q_heads}")
    if not isinstance(microbatches, int) or microbatches <= 0:
        raise ValueError(f"microbatches={microbatches!r} must be a positive integer")
    if batch % (dp * microbatches):
        raise ValueError(f"dp·microbatches={dp}·{microbatches} does not divide batch={batch}")
    local, block = _check_seq(seq, kvp, tokens_per_block)
    return HelixGeometry(kvp=kvp, tpa=tpa, dp=dp, microbatches=microbatches, block=block, local_seq=local,
                         hopb=bool(hopb))


def helix_local(
    q: jax.Array, k: jax.Array, v: jax.Array | None, kv_len: jax.Array, *, lm: LayoutMesh,
    geo: HelixGeometry, scale: float, v_dim: int | None = None, post=None, comm_format: str = "fp32",
    comm_scale_rule: str | None = None,
) -> jax.Array:
    """Per-device Helix attention (call inside shard_map); returns [B_local, Q/N, Dv].

    Args:
      q: [B, Q/TPA, D] local query heads.
      k: [B, S/KVP, K_local, D] local KV shard in storage order.
      v: [B, S/KVP, K_local, Dv], or None to use k[..., :v_dim] (MLA: the latent is the value).
      kv_len: [B] valid tokens per sequence.
      lm, geo: mesh and validated geometry.
      scale: softmax scale.
      v_dim: value width when v is None.
      post: optional per-head linear map of the partial outputs [B, Q/TPA, Dv] -> [B, Q/TPA, Dout],
        applied before the exchange (MLA's W_UV; exact because the LSE combine is linear in them).
      comm_format: numerics format of the all-to-all payload ("fp32": no quantization).
      comm_scale_rule: its MX scale rule (None: the format's default).
    """
    rank = lax.axis_index(lm.kvp) if lm.kvp else jnp.int32(0)
    positions = _slot_positions(geo.local_seq, rank, geo.kvp, geo.block)
    valid = positions[None, :] < kv_len[:, None]
    if v is None:
        v = k[..., :v_dim]
    m = geo.microbatches
    size = q.shape[0] // m

    def attend(i, after=None):
        sl = slice(i * size, (i + 1) * size)
        qi = q[sl]
        if after is not None:  # no HOP-B: attention of i waits for the exchange of i − 1
            after, qi = lax.optimization_barrier((after, qi))
        out, lse = blocks.partial_attention(qi, k[sl], v[sl], valid[sl], scale=scale)
        if post is not None:
            out = post(out)
        return out, lse

    def finish(out, lse):
        if geo.kvp == 1:
            return out
        outs, lses = exchange_partials(out, lse, lm.kvp, geo.kvp, comm_format, comm_scale_rule)
        return blocks.combine_partials(outs, lses, axis=1)[0]

    # Software pipeline (HOP-B): exchange of micro-batch i is issued before attention of i+1, with no
    # data dependence between them. With hopb=False an optimization barrier serializes the two.
    results, pending = [], attend(0)
    for i in range(1, m):
        sent = finish(*pending)
        pending = attend(i, None if geo.hopb else sent)
        results.append(sent)
    results.append(finish(*pending))
    return results[0] if m == 1 else jnp.concatenate(results, axis=0)


def helix_attention(
    q: jax.Array, k_cache: jax.Array, v_cache: jax.Array, kv_len: jax.Array, *, mesh: LayoutMesh | Mesh,
    scale: float | None = None, tokens_per_block: int | None = None, microbatches: int = 1,
    hopb: bool = True, comm_format: str = "fp32",
) -> jax.Array:
    """Helix decode attention of one new token per sequence, sharded KVP × TPA on `mesh`.

    out = softmax(q·kᵀ·scale)·v over each sequence's first kv_len tokens, GQA grouping (query head h
    uses KV head h // (Q/K)), computed as KVP partial attentions combined by their LSEs after one
    all-to-all (module docstring).

    Args:
      q: [batch, q_heads, head_dim].
      k_cache: [batch, seq, kv_heads, head_dim], seq in storage order (token order when
        tokens_per_block is None; see `round_robin_positions`).
      v_cache: [batch, seq, kv_heads, v_dim].
      kv_len: [batch] int, valid tokens per sequence (0 gives a zero output).
      mesh: a LayoutMesh, or a Mesh with axes "kvp" and "tpa" (and optionally "dp").
      scale: softmax scale, default 1/√head_dim.
      tokens_per_block: round-robin block of the storage order; None for token order.
      microbatches: micro-batches of the batch.
      hopb: overlap each micro-batch's all-to-all with the next one's attention (HOP-B); False
        serializes them (the paper's ablation). Same result either way.
      comm_format: numerics format of the all-to-all payload.

    Returns:
      [batch, q_heads, v_dim], float32.

    Raises:
      ValueError: shapes that disagree, or a mesh that does not divide heads, batch or sequence
        (see `helix_geometry`), or an unknown mesh axis.

    References:
      Helix Parallelism, arXiv 2507.07120, §2.1.
    """
    lm = as_layout_mesh(mesh)
    if q.ndim != 3 or k_cache.ndim != 4 or v_cache.ndim != 4 or kv_len.ndim != 1:
        raise ValueError(
            f"expected q [B,Q,D], caches [B,S,K,D], kv_len [B]; got {q.shape}, {k_cache.shape}, "
            f"{v_cache.shape}, {kv_len.shape}"
        )
    b, nq, d = q.shape
    if k_cache.shape[0] != b or k_cache.shape[3] != d or v_cache.shape[:3] != k_cache.shape[:3] or kv_len.shape[0] != b:
        raise ValueError(f"shapes disagree: q {q.shape}, k {k_cache.shape}, v {v_cache.shape}, kv_len {kv_len.shape}")
    nk, seq = k_cache.shape[2], k_cache.shape[1]
    geo = helix_geometry(lm, batch=b, q_heads=nq, kv_heads=nk, seq=seq, tokens_per_block=tokens_per_block,
                         microbatches=microbatches, hopb=hopb)
    if geo.tpa > nk:  # plain-TP KV duplication: one copy of a KV head per TPA rank
        k_cache = jnp.repeat(k_cache, geo.tpa // nk, axis=2)
        v_cache = jnp.repeat(v_cache, geo.tpa // nk, axis=2)
    scale = d**-0.5 if scale is None else scale
    dp, kvp, tpa = _axes(lm.dp), _axes(lm.kvp), _axes(lm.tpa)

    def local(q, k, v, kv_len):
        return helix_local(q, k, v, kv_len, lm=lm, geo=geo, scale=scale, comm_format=comm_format)

    return jax.shard_map(
        local, mesh=lm.mesh,
        in_specs=(P(dp, tpa, None), P(dp, kvp, tpa, None), P(dp, kvp, tpa, None), P(dp)),
        out_specs=P(dp, _axes(lm.tpa + lm.kvp), None),
    )(q, k_cache, v_cache, kv_len.astype(jnp.int32))


def helix_mla_attention(
    q_latent: jax.Array, q_rope: jax.Array, kv_cache: jax.Array, kv_len: jax.Array, *,
    mesh: LayoutMesh | Mesh, scale: float, w_uv: jax.Array | None = None,
    tokens_per_block: int | None = None, microbatches: int = 1, hopb: bool = True, comm_format: str = "fp32",
) -> jax.Array:
    """Helix MLA decode attention (DeepSeek absorbed form): one latent KV head shared by all heads.

    Same as `blocks.mla_decode_attention`, sharded over the sequence on KVP; TPA splits the query heads
    and replicates the latent cache (MLA has one KV head, so TPA > 1 duplicates it). With `w_uv` the
    per-head up-projection is applied before the all-to-all, so the payload is Dv wide, not r.

    Args:
      q_latent: [batch, q_heads, r], no-RoPE query times W_UK.
      q_rope: [batch, q_heads, d_rope].
      kv_cache: [batch, seq, r + d_rope], latent then shared RoPE key, seq in storage order.
      kv_len: [batch] int.
      mesh: a LayoutMesh or a Mesh with axes "kvp" and "tpa".
      scale: softmax scale (DeepSeek: 1/√(qk_nope_head_dim + qk_rope_head_dim)).
      w_uv: optional [q_heads, r, Dv] value up-projection.
      tokens_per_block, microbatches, hopb, comm_format: as in `helix_attention`.

    Returns:
      [batch, q_heads, r] latent outputs, or [batch, q_heads, Dv] with w_uv.

    Raises:
      ValueError: disagreeing shapes or a mesh that does not divide heads, batch or sequence.

    References:
      Helix Parallelism, arXiv 2507.07120, §2.1; DeepSeek-V2, arXiv 2405.04434, §2.1.
    """
    lm = as_layout_mesh(mesh)
    b, nq, r = q_latent.shape
    if q_rope.shape[:2] != (b, nq) or kv_cache.ndim != 3 or kv_cache.shape[0] != b or \
            kv_cache.shape[2] != r + q_rope.shape[2] or kv_len.shape != (b,):
        raise ValueError(
            f"expected q_latent [B,Q,r], q_rope [B,Q,dr], kv_cache [B,S,r+dr], kv_len [B]; got {q_latent.shape}, "
            f"{q_rope.shape}, {kv_cache.shape}, {kv_len.shape}"
        )
    if w_uv is not None and w_uv.shape[:2] != (nq, r):
        raise ValueError(f"w_uv must be [q_heads={nq}, r={r}, Dv], got {w_uv.shape}")
    geo = helix_geometry(lm, batch=b, q_heads=nq, kv_heads=1, seq=kv_cache.shape[1],
                         tokens_per_block=tokens_per_block, microbatches=microbatches, hopb=hopb)
    dp, kvp, tpa = _axes(lm.dp), _axes(lm.kvp), _axes(lm.tpa)
    q = jnp.concatenate([q_latent, q_rope], axis=-1)

    def local(q, cache, kv_len, *w):
        k = cache[:, :, None, :]
        post = (lambda o: jnp.einsum("bhr,hrd->bhd", o, w[0], precision=blocks.PRECISION)) if w else None
        return helix_local(q, k, None, kv_len, lm=lm, geo=geo, scale=scale, v_dim=r, post=post,
                           comm_format=comm_format)

    specs = (P(dp, tpa, None), P(dp, kvp, None), P(dp)) + ((P(tpa, None, None),) if w_uv is not None else ())
    args = (q, kv_cache, kv_len.astype(jnp.int32)) + ((w_uv,) if w_uv is not None else ())
    return jax.shard_map(local, mesh=lm.mesh, in_specs=specs, out_specs=P(dp, _axes(lm.tpa + lm.kvp), None))(*args)


def kv_append(
    caches, new, kv_len: jax.Array, *, mesh: LayoutMesh | Mesh, tokens_per_block: int = TOKENS_PER_BLOCK,
):
    """Append one token per sequence to KVP-sharded caches, on exactly one KVP rank (round-robin).

    Token p = kv_len[b] goes to rank (p // b) % KVP, local slot (p // (b·KVP))·b + p % b; other ranks
    leave their shard unchanged. Caches with a head axis ([B, S, K, ·]) are split over TPA on it
    (K ≥ TPA; duplicate heads first if TPA > K); [B, S, C] caches (MLA latent) are replicated over TPA.

    Args:
      caches: a pytree of caches [batch, seq, ...] in storage order.
      new: the same pytree of new entries [batch, ...].
      kv_len: [batch] int, tokens already cached (the new token's position).
      mesh: a LayoutMesh or a Mesh with axes "kvp" and "tpa".
      tokens_per_block: round-robin block b.

    Returns:
      The updated caches (kv_len is not advanced; add 1 yourself).

    Raises:
      ValueError: disagreeing shapes, a sequence KVP·b does not divide, or (when kv_len is concrete)
        a position beyond the cache.

    References:
      Helix Parallelism, arXiv 2507.07120, §2.3.
    """
    lm = as_layout_mesh(mesh)
    leaves, tree = jax.tree.flatten(caches)
    new_leaves = tree.flatten_up_to(new)
    if not leaves:
        raise ValueError("kv_append needs at least one cache")
    seq, batch = leaves[0].shape[1], leaves[0].shape[0]
    for c, n in zip(leaves, new_leaves):
        if c.shape[0] != batch or c.shape[1] != seq or n.shape != (c.shape[0],) + c.shape[2:]:
            raise ValueError(f"cache {c.shape} and new entry {n.shape} disagree (expect [B,S,...] and [B,...])")
    if kv_len.shape != (batch,):
        raise ValueError(f"kv_len must be [batch={batch}], got {kv_len.shape}")
    kvp = lm.size("kvp")
    _, block = _check_seq(seq, kvp, tokens_per_block)
    if not _is_tracer(kv_len) and np.size(kv_len) and int(np.max(kv_len)) >= seq:
        raise ValueError(f"kv_len={np.asarray(kv_len).tolist()} has a position beyond the cache length seq={seq}")
    dp, kvpa, tpa = _axes(lm.dp), _axes(lm.kvp), _axes(lm.tpa)

    def spec(c, with_seq):
        head = (tpa,) if c.ndim == 4 else ()
        rest = (None,) * (c.ndim - 2 - len(head))
        return P(dp, kvpa, *head, *rest) if with_seq else P(dp, *head, *rest)

    def local(cs, ns, kv_len):
        rank = lax.axis_index(lm.kvp) if lm.kvp else jnp.int32(0)
        return [append_local(c, n, kv_len, rank, kvp, block) for c, n in zip(cs, ns)]

    out = jax.shard_map(
        local, mesh=lm.mesh,
        in_specs=([spec(c, True) for c in leaves], [spec(c, False) for c in leaves], P(dp)),
        out_specs=[spec(c, True) for c in leaves],
    )(leaves, new_leaves, kv_len.astype(jnp.int32))
    return jax.tree.unflatten(tree, out)
