"""FFN on the Helix devices: dense SwiGLU with TP = N, or top-k MoE with TPF × EP.

After attention the activations are replicated on all N devices of a Helix group (the W_O
all-reduce leaves them so), so the FFN needs no dispatch all-to-all: every device routes the whole
batch, evaluates its E/EP experts on its F_e/TPF slice of their width (and its slice of the shared
experts, which are split over all N), and one all-reduce sums the partials (paper §2.1.2).

References:
  Helix Parallelism, arXiv 2507.07120, §2.1.2.
"""

from __future__ import annotations

import jax
from jax import lax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from . import blocks
from .mesh import LayoutMesh, as_layout_mesh
from .weights import DenseFFNWeights, MoEWeights, ffn_specs


def ffn_local(h: jax.Array, w: DenseFFNWeights | MoEWeights, *, lm: LayoutMesh, top_k: int,
              dot_general=lax.dot_general) -> jax.Array:
    """This device's partial FFN output for normalized activations h [N_tok, H] (call in shard_map).

    The sum of the partials over all devices of the mesh is the FFN output.
    """
    if isinstance(w, DenseFFNWeights):
        return blocks.swiglu(h, w.w_gate, w.w_up, w.w_down, dot_general=dot_general)
    gates = blocks.route(h, w.router, top_k=top_k)  # every device routes the whole (replicated) batch
    e_local = w.w_gate.shape[0]
    first = (lax.axis_index(lm.ep) if lm.ep else 0) * e_local
    local_gates = lax.dynamic_slice_in_dim(gates, first, e_local, axis=1)
    y = blocks.moe_experts(h, local_gates, w.w_gate, w.w_up, w.w_down, dot_general=dot_general)
    if w.shared_gate is not None:
        y = y + blocks.swiglu(h, w.shared_gate, w.shared_up, w.shared_down, dot_general=dot_general)
    return y


def check_ffn(w: DenseFFNWeights | MoEWeights, lm: LayoutMesh, *, top_k: int) -> None:
    """Raises ValueError (naming the numbers) when the FFN weights do not split over the mesh."""
    n, tpf, ep = lm.n_devices, lm.size("tpf"), lm.size("ep")
    if isinstance(w, DenseFFNWeights):
        f = w.w_gate.shape[1]
        if f % n:
            raise ValueError(f"TP={n} devices do not divide the dense FFN width F={f}")
        return
    e, _, fe = w.w_gate.shape
    if e % ep:
        raise ValueError(f"ep={ep} does not divide n_experts={e}")
    if fe % tpf:
        raise ValueError(f"tpf={tpf} does not divide expert_ffn={fe}")
    if not 0 < top_k <= e:
        raise ValueError(f"top_k={top_k} must be in [1, n_experts={e}]")
    if w.shared_gate is not None and w.shared_gate.shape[1] % n:
        raise ValueError(f"{n} devices do not divide the shared-expert width {w.shared_gate.shape[1]}")


def ffn_reference(x: jax.Array, w: DenseFFNWeights | MoEWeights, *, top_k: int = 0) -> jax.Array:
    """Single-device FFN sub-layer without the residual: FFN(RMSNorm(x)); x [N_tok, H]."""
    h = blocks.rms_norm(x, w.norm)
    if isinstance(w, DenseFFNWeights):
        return blocks.swiglu(h, w.w_gate, w.w_up, w.w_down)
    y = blocks.moe_experts(h, blocks.route(h, w.router, top_k=top_k), w.w_gate, w.w_up, w.w_down)
    if w.shared_gate is not None:
        y = y + blocks.swiglu(h, w.shared_gate, w.shared_up, w.shared_down)
    return y


def sharded_ffn(x: jax.Array, w: DenseFFNWeights | MoEWeights, *, mesh: LayoutMesh | Mesh, top_k: int = 0,
                dot_general=lax.dot_general) -> jax.Array:
    """FFN sub-layer FFN(RMSNorm(x)) with TP = N (dense) or TPF × EP (MoE), then one all-reduce.

    Args:
      x: [tokens, H], replicated on the mesh.
      w: global FFN weights (`DenseFFNWeights` or `MoEWeights`).
      mesh: the mesh; its tpf and ep axes split the weights.
      top_k: experts per token (MoE).
      dot_general: contraction for the projections.

    Returns:
      [tokens, H], replicated.

    Raises:
      ValueError: widths or experts that the mesh does not divide.
    """
    lm = as_layout_mesh(mesh)
    check_ffn(w, lm, top_k=top_k)
    every = lm.tpf + lm.ep

    def local(x, w):
        y = ffn_local(blocks.rms_norm(x, w.norm), w, lm=lm, top_k=top_k, dot_general=dot_general)
        return lax.psum(y, every)

    return jax.shard_map(local, mesh=lm.mesh, in_specs=(P(), ffn_specs(w, lm)), out_specs=P())(x, w)
