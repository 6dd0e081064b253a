"""What calibration fits, and the cost model's prediction for measured rows.

`CalibParams` is the cost model's `EfficiencyParams` plus per-precision and per-format logit
offsets: a pytree optax updates directly. `cost_model_times` maps a measurement op class onto
the `perfmodel.ops` cost function that costs it, vectorized over the rows; `predict_rows`
evaluates it for any rows.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import ops
from numerics.formats import FORMAT_NAMES

from .calib_data import make_data
from .efficiency import DECODE_ATTENTION, ELEMENTWISE, GEMM, OP_CLASSES, QUANTIZE, EfficiencyParams, datasheet_params
from .measurements import Measurement
from .specs import HardwareSpec

# predict(params, hardware, op, cols) → seconds [n], > 0; cols as `calib_data.columns` of the rows.
PredictFn = Callable[[object, object, str, Mapping[str, jax.Array]], jax.Array]

# Measurement op class → the cost function that costs it (perfmodel.ops).
MODEL_OF_OP = {
    "gemm": "gemm_time", "decode_attention": "decode_attention_time", "elementwise": "elementwise_time",
    "copy": "elementwise_time", "fake_quantize": "quantize_time", "all_reduce": "collective_time",
    "all_gather": "collective_time", "reduce_scatter": "collective_time", "all_to_all": "collective_time",
    "send_recv": "collective_time",
}
# Measurement op class → the cost model's op class (`efficiency.OP_CLASSES`) whose parameters price it.
OP_CLASS_OF_OP = {"gemm": GEMM, "decode_attention": DECODE_ATTENTION, "elementwise": ELEMENTWISE,
                  "copy": ELEMENTWISE, "fake_quantize": QUANTIZE}
# Compute precisions, as `HardwareSpec.peak_flops` picks its peak: ≤ 4.5, ≤ 8.25, ≤ 16 bits, else FP32.
PRECISIONS = ("fp4", "fp8", "bf16", "fp32")


def precision_index(bytes_per_elem) -> jax.Array:
    """Index into `PRECISIONS` of an operand width, by the same thresholds as `peak_flops`.

    Args:
      bytes_per_elem: operand width (bytes), any shape.

    Returns:
      int32 indices, same shape.
    """
    bits = 8.0 * jnp.asarray(bytes_per_elem, jnp.float32)
    return jnp.where(bits <= 4.5, 0, jnp.where(bits <= 8.25, 1, jnp.where(bits <= 16.0, 2, 3)))


class CalibParams(NamedTuple):
    """What calibration fits: the cost model's `EfficiencyParams` plus logit offsets.

    One compute efficiency per op class cannot serve two precisions whose peaks differ by more than
    their achieved rates do (this CPU: f32 GEMMs reach ~45% of the AVX-512 peak, bf16 ~15-20% of
    the AMX peak), nor every block format's quantize kernel (measured here: NVFP4's fake_quantize
    takes 2.2× MXFP8's time at equal bytes, a per-tensor FP8 cast 0.8×; XLA's FLOP counts do not
    tell them apart). Row i of op class c at precision p, quantizing to format f, therefore uses

        compute_logit[c] + precision_logit[c, p, 0] + format_logit[f, 0],
        memory_logit[c] + precision_logit[c, p, 1] + format_logit[f, 1],

    (no format term for rows without a format), offsets that start (and are pulled by the prior)
    at 0, so an unmeasured precision or format inherits the class's values.
    `efficiency_for(params, precision)` folds the precision offsets into an `EfficiencyParams`; the
    format offsets price `fake_quantize` kernels, which the step model does not cost.

    Attributes:
      efficiency: `perfmodel.efficiency.EfficiencyParams` (raw).
      precision_logit: [n_op_classes, len(PRECISIONS), 2] raw offsets (compute, memory).
      format_logit: [len(numerics.FORMAT_NAMES), 2] raw offsets (compute, memory).
    """

    efficiency: EfficiencyParams
    precision_logit: jax.Array
    format_logit: jax.Array


def init_params(hardware: HardwareSpec, efficiency: float | None = None,
                cache_ratio: float | None = None) -> CalibParams:
    """`efficiency.datasheet_params(hardware)` with zero precision and format offsets.

    Args:
      hardware: the `HardwareSpec`.
      efficiency: compute/memory/link efficiency (default: the datasheet roofline's 1 − 1e-4). A fit
        starts from 0.5: at 1 − 1e-4 the sigmoid is saturated (gradient ∝ 1e-4), and a fit that
        starts there can settle with a compute-bound class explained by a too-low memory efficiency.
      cache_ratio: the cache knee's time ratio (default 1 − 1e-4, no cache effect). A fit starts
        from 0.9: from 1 − 1e-4 the decode-attention knee is not found (held-out MAPE of kernels
        > 1 ms 10.8% on this CPU instead of 8.8%), from 0.5 the GEMMs settle on a memory-bound
        optimum (23.6% for GEMMs instead of 8.2%).

    Returns:
      `CalibParams`.
    """
    kw = {k: v for k, v in (("efficiency", efficiency), ("cache_ratio", cache_ratio)) if v is not None}
    return CalibParams(datasheet_params(hardware, **kw),
                       jnp.zeros((len(OP_CLASSES), len(PRECISIONS), 2), jnp.float32),
                       jnp.zeros((len(FORMAT_NAMES), 2), jnp.float32))


def start_params(hardware: HardwareSpec, rows: Sequence[Measurement]) -> CalibParams:
    """Where a fit starts: `init_params(hardware, efficiency=0.5, cache_ratio=0.9)` with each op
    class's cache knee at the median bytes of its rows (`OP_CLASS_OF_OP`).

    A knee started far from the data's gets no gradient that moves it there: a synthetic fit with
    the true knee at 32 MB, started at 1 MiB, explained the small kernels by a lower launch overhead
    instead.

    Args:
      hardware: the `HardwareSpec`.
      rows: the training rows.

    Returns:
      `CalibParams`.
    """
    p = init_params(hardware, efficiency=0.5, cache_ratio=0.9)
    cache_log = np.asarray(p.efficiency.cache_log, np.float64)
    for c in set(OP_CLASS_OF_OP.values()):
        sizes = [r.bytes for r in rows if OP_CLASS_OF_OP.get(r.op) == c and r.bytes > 0]
        if sizes:
            cache_log[c] = np.log(np.median(sizes))
    return p._replace(efficiency=p.efficiency._replace(cache_log=jnp.asarray(cache_log, jnp.float32)))


def efficiency_for(params: CalibParams, precision: str) -> EfficiencyParams:
    """The `EfficiencyParams` of one compute precision (offsets folded in), for the cost model.

    compute_logit[c] + precision_logit[c, p, 0] and memory_logit[c] + precision_logit[c, p, 1].

    Raises:
      ValueError: an unknown precision.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is not one of {PRECISIONS}")
    p = PRECISIONS.index(precision)
    e = params.efficiency
    return e._replace(compute_logit=e.compute_logit + params.precision_logit[:, p, 0],
                      memory_logit=e.memory_logit + params.precision_logit[:, p, 1])


def _per_row(params, bytes_per_elem, format_index):
    """EfficiencyParams whose compute/memory logits are [n_op_classes, n_rows]: each row its
    precision's and format's offsets (format_index < 0: none).

    The cost functions index these leaves by op class only, so per-row columns broadcast against
    the row arrays.
    """
    if not isinstance(params, CalibParams):
        return params
    p = precision_index(bytes_per_elem)
    f = jnp.asarray(format_index, jnp.int32)
    fmt = jnp.where((f >= 0)[:, None], params.format_logit[jnp.maximum(f, 0)], 0.0)  # [n_rows, 2]
    e = params.efficiency
    return e._replace(compute_logit=e.compute_logit[:, None] + params.precision_logit[:, p, 0] + fmt[None, :, 0],
                      memory_logit=e.memory_logit[:, None] + params.precision_logit[:, p, 1] + fmt[None, :, 1])


def cost_model_times(params, hardware: HardwareSpec, op: str, cols: Mapping[str, jax.Array]) -> jax.Array:
    """The cost model's time for every row of one op class: a thin, vectorized map onto perfmodel.ops.

    gemm → `gemm_time(m, n, k, bytes_per_elem, out_bytes_per_elem=...)`; decode_attention →
    `decode_attention_time(batch, seq, heads, kv_heads, head_dim, head_dim, bytes_per_elem)`;
    elementwise, copy → `elementwise_time(bytes, flops)`; fake_quantize → `quantize_time(bytes,
    flops)`; collectives → `collective_time(op, bytes, n_devices)`.

    Args:
      params: `CalibParams`, or `EfficiencyParams` / `Efficiency` (no precision offsets).
      hardware: `HardwareSpec`.
      op: measurement op class.
      cols: `calib_data.columns` of the rows as arrays [n].

    Returns:
      seconds [n].

    Raises:
      ValueError: an op class the cost model does not cost.
    """
    c = cols
    eff = _per_row(params, c["bytes_per_elem"], c["format_index"])
    if op == "gemm":
        return ops.gemm_time(eff, hardware, c["m"], c["n"], c["k"], c["bytes_per_elem"],
                             out_bytes_per_elem=c["out_bytes_per_elem"])
    if op == "decode_attention":
        return ops.decode_attention_time(eff, hardware, c["batch"], c["seq"], c["heads"], c["kv_heads"],
                                         c["head_dim"], c["head_dim"], c["bytes_per_elem"])
    if op in ("elementwise", "copy"):
        return ops.elementwise_time(eff, hardware, c["bytes"], c["flops"])
    if op == "fake_quantize":
        return ops.quantize_time(eff, hardware, c["bytes"], c["flops"])
    if op in MODEL_OF_OP:
        return ops.collective_time(eff, hardware, op, c["bytes"], c["n_devices"])
    raise ValueError(f"op={op!r} has no cost function; known: {sorted(MODEL_OF_OP)}")


@functools.partial(jax.jit, static_argnames=("hardware", "predict"))
def _predict_all(params, cols, *, hardware, predict):
    return {op: predict(params, hardware, op, c) for op, c in cols.items()}


def predict_rows(params, hardware: HardwareSpec, rows: Sequence[Measurement],
                 predict: PredictFn | None = None) -> np.ndarray:
    """Model times for `rows`, in row order (one jitted evaluation of every op class).

    Args:
      params: parameters `predict` takes (`CalibParams` for the default).
      hardware: the `HardwareSpec` (static).
      rows: the measurements whose sizes are costed.
      predict: default `cost_model_times`.

    Returns:
      float64 [len(rows)], seconds.
    """
    data, index = make_data(rows)
    times = _predict_all(params, data.cols, hardware=hardware, predict=predict or cost_model_times)
    out = np.empty(len(rows))
    for op, t in times.items():
        out[index[op]] = np.asarray(t, np.float64)
    return out
