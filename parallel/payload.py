"""The Helix all-to-all: partial outputs and LSE statistics, in FP32 or as quantized bytes.

FP32: one all-to-all of [B, KVP, Q/N, Dv + 1] float32 — the partial output with its LSE appended.

Quantized (any numerics format but fp32): each destination chunk [B, Q/N, Dv] is quantized along Dv
with `numerics.quantize`, and its element codes (bit-packed: 4-bit codes two per byte, 6-bit codes
four per three bytes), block scales, tensor scale and FP32 LSEs are laid out as one uint8 row per
destination, sent in one all-to-all and decoded on arrival. The HLO then shows the bytes a real
system would move; the LSE stays FP32 because the combine needs it exact (paper §2.1.1).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


def exchange_partials(
    out: jax.Array, lse: jax.Array, axes: tuple[str, ...], kvp: int, comm_format: str = "fp32",
    scale_rule: str | None = None,
) -> tuple[jax.Array, jax.Array]:
    """All-to-all over KVP of partial attentions, head chunk c going to KVP rank c.

    Args:
      out: [B, Q_local, Dv] partial outputs of this device's query heads.
      lse: [B, Q_local] their log-sum-exps.
      axes: the mesh axes of KVP.
      kvp: KVP degree (divides Q_local).
      comm_format: numerics format of the payload.
      scale_rule: MX scale rule of the payload ("floor", "rceil"; None: the format's default).

    Returns:
      (outs [B, KVP, Q_local/KVP, Dv], lses [B, KVP, Q_local/KVP]): the partials of this rank's head
      chunk from every KVP rank, sources along axis 1.
    """
    b, ql, dv = out.shape
    qn = ql // kvp
    if comm_format == "fp32":
        payload = jnp.concatenate([out, lse[..., None]], axis=-1).reshape(b, kvp, qn, dv + 1)
        recv = lax.all_to_all(payload, axes, 1, 1)
        return recv[..., :dv], recv[..., dv]
    return _exchange_quantized(out.reshape(b, kvp, qn, dv), lse.reshape(b, kvp, qn), axes, comm_format, scale_rule)


def _bitcast_bytes(a: jax.Array) -> jax.Array:
    """[..., n] of a ≥ 8-bit dtype -> [..., n·itemsize] uint8 (bit-exact)."""
    if a.dtype == jnp.uint8:
        return a
    u = lax.bitcast_convert_type(a, jnp.uint8)
    return u if u.ndim == a.ndim else u.reshape(a.shape[:-1] + (a.shape[-1] * u.shape[-1],))


def _from_bytes(u: jax.Array, dtype) -> jax.Array:
    """Inverse of `_bitcast_bytes`."""
    dtype = jnp.dtype(dtype)
    if dtype == jnp.uint8:
        return u
    size = dtype.itemsize
    if size == 1:
        return lax.bitcast_convert_type(u, dtype)
    return lax.bitcast_convert_type(u.reshape(u.shape[:-1] + (u.shape[-1] // size, size)), dtype)


def _lanes(bits: int, n: int, ndim: int) -> jax.Array:
    """Shift amounts bits·[0, n) shaped to broadcast along the last of ndim axes."""
    return (bits * jnp.arange(n, dtype=jnp.uint32)).reshape((1,) * (ndim - 1) + (n,))


def _pack(codes: jax.Array, bits: int) -> jax.Array:
    """Element codes [..., n] -> bytes [..., ceil(n·bits/8)]: 4-bit codes two per byte, 6-bit four per 3."""
    if bits >= 8:
        return _bitcast_bytes(codes)
    if codes.dtype != jnp.uint8:  # float4_e2m1fn: its 4-bit pattern
        codes = lax.bitcast_convert_type(codes, jnp.uint4).astype(jnp.uint8)
    group = math.lcm(bits, 8) // bits  # codes per group of whole bytes
    n = codes.shape[-1]
    pad = -n % group
    u = jnp.pad(codes, [(0, 0)] * (codes.ndim - 1) + [(0, pad)]).astype(jnp.uint32)
    u = u.reshape(u.shape[:-1] + ((n + pad) // group, group))
    word = jnp.sum(u << _lanes(bits, group, u.ndim), axis=-1, dtype=jnp.uint32)
    nbytes = group * bits // 8
    out = (word[..., None] >> _lanes(8, nbytes, word.ndim + 1)) & 0xFF
    return out.astype(jnp.uint8).reshape(word.shape[:-1] + (word.shape[-1] * nbytes,))


def _unpack(data: jax.Array, bits: int, n: int, dtype) -> jax.Array:
    """Inverse of `_pack`: bytes [..., m] -> codes [..., n] of `dtype`."""
    if bits >= 8:
        return _from_bytes(data, dtype)
    group = math.lcm(bits, 8) // bits
    nbytes = group * bits // 8
    b = data.astype(jnp.uint32).reshape(data.shape[:-1] + (data.shape[-1] // nbytes, nbytes))
    word = jnp.sum(b << _lanes(8, nbytes, b.ndim), axis=-1, dtype=jnp.uint32)
    u = (word[..., None] >> _lanes(bits, group, word.ndim + 1)) & np.uint32((1 << bits) - 1)
    u = u.reshape(word.shape[:-1] + (word.shape[-1] * group,))[..., :n].astype(jnp.uint8)
    if jnp.dtype(dtype) == jnp.uint8:
        return u
    return lax.bitcast_convert_type(u.astype(jnp.uint4), dtype)


def _exchange_quantized(out, lse, axes, comm_format, scale_rule):
    """out [B, KVP, Qn, Dv], lse [B, KVP, Qn]: quantize each destination chunk, send bytes, decode."""
    from numerics import QuantizedArray, dequantize, get_format, quantize

    fmt = get_format(comm_format)
    bits = fmt.element.bits
    kvp = out.shape[1]
    # One self-contained message per destination. A Python loop, not vmap: numerics' tensor scales
    # (NVFP4, fp8_e4m3) differ by an ulp under vmap, and each chunk must equal its own quantize().
    rule = scale_rule if fmt.kind == "mx" else None
    per_dest = [quantize(out[:, c], fmt, axis=-1, scale_rule=rule) for c in range(kvp)]
    q = jax.tree.map(lambda *leaves: jnp.stack(leaves), *per_dest)  # [KVP, B, Qn, ·] leaves
    parts = [("codes", q.codes, _pack(q.codes, bits)),
             ("lse", None, _bitcast_bytes(jnp.swapaxes(lse, 0, 1)[..., None]))]
    if q.scales is not None:
        parts.append(("scales", q.scales, _bitcast_bytes(q.scales)))
    if q.tensor_scale is not None:
        parts.append(("tensor_scale", q.tensor_scale, _bitcast_bytes(q.tensor_scale[:, None])))
    rows = [p[2].reshape(kvp, -1) for p in parts]
    sizes = [r.shape[1] for r in rows]
    recv = lax.all_to_all(jnp.concatenate(rows, axis=1), axes, 0, 0)  # [KVP sources, bytes]
    fields, offset = {}, 0
    for (name, like, packed), size in zip(parts, sizes):
        data = recv[:, offset : offset + size].reshape(packed.shape)
        offset += size
        if name == "codes":
            fields[name] = _unpack(data, bits, like.shape[-1], like.dtype)
        elif name == "lse":
            fields[name] = _from_bytes(data, jnp.float32)[..., 0]
        elif name == "scales":
            fields[name] = _from_bytes(data, like.dtype)
        else:
            fields[name] = _from_bytes(data, like.dtype)[:, 0]
    received = QuantizedArray(fields["codes"], fields.get("scales"), fields.get("tensor_scale"),
                              q.format, q.axis, q.shape)
    outs = jnp.stack([dequantize(jax.tree.map(lambda a, i=i: a[i], received)) for i in range(kvp)])
    return jnp.swapaxes(outs, 0, 1), jnp.swapaxes(fields["lse"], 0, 1)


def payload_bytes(batch: int, q_heads_local: int, v_dim: int, kvp: int, comm_format: str = "fp32") -> int:
    """Bytes one device sends in the Helix all-to-all (its KVP − 1 outgoing chunks).

    FP32: (KVP−1)·B·(Q_local/KVP)·(Dv + 1)·4. Quantized: per chunk, the packed codes
    ⌈Dv'·bits/8⌉ per (token, head) with Dv' = Dv rounded up to the block, the block scales, 4 bytes
    of LSE per (token, head) and 4 bytes of tensor scale where the format has one.
    """
    qn = q_heads_local // kvp
    if comm_format == "fp32":
        return (kvp - 1) * batch * qn * (v_dim + 1) * 4
    from numerics import get_format

    fmt = get_format(comm_format)
    bits = fmt.element.bits
    block = fmt.block_size or 1
    padded = -(-v_dim // block) * block
    per_row = -(-padded * bits // 8) + 4  # codes + LSE
    if fmt.scale is not None:
        per_row += padded // block * fmt.scale.bits // 8
    chunk = batch * qn * per_row + (4 if fmt.tensor_scale else 0)
    return (kvp - 1) * chunk
