"""Modeled communication of one decoder layer: bytes per GPU per collective kind.

`layer_collective_bytes(model, layout)` returns the traffic the cost model charges the collectives
of one decode-step layer with (`layer.decode_layer_cost`, the same ops `decode_step` sums), so it
can be held against the bytes a real sharded layer moves (`parallel.hlo.collective_bytes` of the
compiled layer). The quantity is *bytes one GPU sends*, under ring / pairwise algorithms:

    all_reduce      2·(n−1)/n · S   S = the reduced buffer (ring: reduce-scatter then all-gather)
    all_gather        (n−1)/n · S   S = the gathered result
    reduce_scatter    (n−1)/n · S   S = the input (n × the scattered result)
    all_to_all        (n−1)/n · S   S = the send buffer (the GPU's own chunk stays)
    send_recv                   S   S = the message

which is `parallel.hlo`'s convention too (there S is read from each collective's HLO result shape:
the same numbers). A collective over one GPU moves nothing. Per layer, with B sequences in each
of d = dp_attn attention groups of G = KVP·TPA GPUs (N = d·G), Q query heads, value head dim Dv,
hidden H, `c` bytes per communicated element (Layout.comm_format) and one FP32 LSE per
(token, head):

    all_to_all   (KVP−1)·B·(Q/G)·(Dv·c + 4)    Helix partials + LSE (arXiv 2507.07120 §2.2); for
                                               MLA, Dv is the value head dim (W_UV is applied
                                               before the exchange), not the latent rank
    all_reduce   2·(G−1)/G·B·H·c after W_O, and the same after the FFN (TP = N, or TPF×EP)
    d > 1        the FFN all-gathers the d·B tokens over d and reduce-scatters its outputs back,
                 (d−1)·B·H·c each; MoE layers do the same with moe_dispatch="all_gather", or
                 dispatch and combine top-k token copies with two all-to-alls of
                 (d−1)/d·(B/G)·top_k·H·c each (moe_dispatch="all_to_all", the default)

References:
  Helix Parallelism, arXiv 2507.07120, §2.1–2.2 and Fig. 4.
  NCCL performance notes (nccl-tests doc/PERFORMANCE.md): bus bandwidth factors per collective.
"""

from __future__ import annotations

from .efficiency import datasheet_params
from .ops import COLLECTIVES
from .presets import get_hardware
from .specs import Layout, ModelSpec
from .layer import decode_layer_cost
from .step import layout_arrays

# perfmodel's collective names and XLA's HLO opcodes (`parallel.hlo.KINDS`)
XLA_KINDS = {"all_reduce": "all-reduce", "all_gather": "all-gather", "reduce_scatter": "reduce-scatter",
             "all_to_all": "all-to-all", "send_recv": "collective-permute"}

_HW = get_hardware("gb200-nvl72")  # traffic does not depend on the hardware; any spec serves


def layer_collective_bytes(model: ModelSpec, layout: Layout, *, moe: bool | None = None,
                           moe_dispatch: str = "all_to_all") -> dict[str, float]:
    """Bytes one GPU sends per collective kind in one decode-step layer, as the cost model charges.

    See the module docstring for the per-kind convention and the closed forms.

    Args:
      model: the model. layout: its layout (pp and dp do not change one layer's collectives; a
        pipeline micro-batch of ⌈batch/min(pp, batch)⌉ sequences passes the layer).
      moe: an MoE layer (default: whether the model has experts); False for a dense FFN layer.
      moe_dispatch: "all_to_all" or "all_gather" (`step.decode_step`).

    Returns:
      {kind: bytes} for every kind of `ops.COLLECTIVES` (0.0 where the layer has none).

    Raises:
      ValueError: a layout that cannot shard the model (`Layout.check_model`), moe=True for a dense
        model, or an unknown moe_dispatch.
    """
    layout.check_model(model)
    cost = decode_layer_cost(model, _HW, datasheet_params(_HW), layout_arrays(layout), 1.0, moe=moe,
                             moe_dispatch=moe_dispatch)
    return {kind: float(cost.collective_bytes[kind]) for kind in COLLECTIVES}
