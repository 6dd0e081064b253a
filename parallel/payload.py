"""The Helix all-to-all: partial outputs and LSE statistics, in FP32 or as quantized bytes.

FP32: one all-to-all of [B, KVP, Q/N, Dv + 1] float32 — the partial output with its LSE appended.

Quantized (any numerics format but fp32): each destination chunk [B, Q/N, Dv] is quantized along Dv
with `numerics.quantize`, and its element codes (bit-packed: 4-bit codes two per byte, 6-bit codes
four per three bytes), block scales, tensor scale and FP32 LSEs are laid out as one uint8 row per
destination, sent in one all-to-all and decoded on arrival. The HLO then shows the bytes a real
system would move; the LSE stays FP32 because the combine needs it exact (paper §2.1.1).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax


def exchange_partials(
    out: jax.Array, lse: jax.Array, axes: tuple[str, ...], kvp: int, comm_format: str = "fp32"
) -> tuple[jax.Array, jax.Array]:
    """All-to-all over KVP of partial attentions, head chunk c going to KVP rank c.

    Args:
      out: [B, Q_local, Dv] partial outputs of this device's query heads.
      lse: [B, Q_local] their log-sum-exps.
      axes: the mesh axes of KVP.
      kvp: KVP degree (divides Q_local).
      comm_format: numerics format of the payload.

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
    return _exchange_quantized(out.reshape(b, kvp, qn, dv), lse.reshape(b, kvp, qn), axes, comm_format)


def _exchange_quantized(out, lse, axes, comm_format):
    raise NotImplementedError("quantized all-to-all payloads land with numerics/")
