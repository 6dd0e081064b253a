"""Block quantization: `quantize`, `dequantize` and `fake_quantize` with a straight-through gradient.

Semantics (OCP MX v1.0 §6.3 for the MX formats; details and the FTZ note in `numerics.kernels`):

* MX: blocks of 32 along `axis` share the E8M0 scale X = 2^(floor(log2 amax) − emax_elem) (rule
  "floor", from the float bits) or 2^ceil(log2(amax / max_normal)) (rule "rceil", the block max never
  saturates), exponent clamped to [−127, 127]; elements V/X rounded (ties to even by default) and
  saturated to ±max_normal. A block with NaN or ±Inf has scale 0xFF and dequantizes to all-NaN; an
  all-zero block gives zeros. f32 subnormal inputs count as zero.
* NVFP4: E2M1 elements in blocks of 16 with an E4M3 block scale s_b = E4M3(amax_b / 6 / s_t) and an
  FP32 tensor scale s_t = amax / (6·448); elements x · fl(1 / (s_b·s_t)) rounded to E2M1.
* fp8_e4m3: one FP32 scale s_t = amax / 448 per tensor; elements x · fl(1 / s_t) rounded to E4M3.
  Both tensor scales are floored at 2^-126 (1 for an all-zero tensor). bf16: a RNE cast. fp32: identity.
* Lengths that are not a multiple of the block size are zero-padded internally; results have the
  input's shape. Inputs are converted to float32 first (exact for bf16 and f16).

Element codes in a QuantizedArray: float8_e4m3fn, float8_e5m2, float4_e2m1fn (XLA converts these),
int8 for MXINT8 (value = code · 2^-6), and for FP6 uint8 bytes holding the 6-bit pattern (S EEE MM for
E3M2, S EE MMM for E2M3; `np.asarray(q.codes).view(ml_dtypes.float6_e3m2fn)` reads them), because XLA
cannot compile float6 casts. MX scales are the E8M0 bytes as uint8 (biased exponent, 255 = NaN).

References:
  OCP Microscaling Formats (MX) Specification v1.0 (2023), §5, §6.3.
  Rouhani et al., "Microscaling Data Formats for Deep Learning", arXiv 2310.10537 (2023).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from . import kernels as K
from .formats import ROUNDINGS, SCALE_RULES, BlockFormat, get_format


@functools.partial(jax.tree_util.register_dataclass, data_fields=("codes", "scales", "tensor_scale"),
                   meta_fields=("format", "axis", "shape"))
@dataclasses.dataclass(frozen=True)
class QuantizedArray:
    """A quantized tensor: element codes, block scales, tensor scale and static metadata (a pytree).

    Attributes:
      codes: element codes; the input shape with `axis` padded to a multiple of the block size.
      scales: block scales, the input shape with `axis` of length ceil(n / block); uint8 E8M0 bytes for
        MX, float8_e4m3fn for NVFP4; None for formats without block scales.
      tensor_scale: float32 scalar for NVFP4 and fp8_e4m3; None otherwise.
      format: the BlockFormat (static).
      axis: the non-negative quantized axis (static).
      shape: the original shape (static).
    """

    codes: jax.Array
    scales: jax.Array | None
    tensor_scale: jax.Array | None
    format: BlockFormat
    axis: int
    shape: tuple[int, ...]


def _check(x, fmt, axis, scale_rule, rounding, key):
    """Validates the public arguments; returns (float32 x, format, axis, scale rule)."""
    fmt = get_format(fmt)
    if not hasattr(x, "dtype"):
        x = np.asarray(x)  # Python scalars and lists
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"quantization needs a floating-point input, got dtype {x.dtype} "
                         f"({type(x).__name__})")
    x = jnp.asarray(x)
    rank = max(x.ndim, 1)  # a scalar is quantized as a block of one
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) or not -rank <= axis < rank:
        raise ValueError(f"axis={axis!r} is out of range for an input of shape {x.shape}")
    axis = int(axis) % rank
    if rounding not in ROUNDINGS:
        raise ValueError(f"unknown rounding {rounding!r}; valid: {ROUNDINGS}")
    if rounding == "stochastic" and key is None:
        raise ValueError("rounding='stochastic' needs a PRNG key (key=None given)")
    if rounding != "stochastic" and key is not None:
        raise ValueError(f"a PRNG key was given but rounding={rounding!r}; keys are for 'stochastic'")
    if fmt.kind == "identity" and rounding != "even":
        raise ValueError(f"format 'fp32' is the identity; rounding={rounding!r} does not apply")
    if scale_rule is None:
        scale_rule = fmt.default_scale_rule
    elif scale_rule not in SCALE_RULES:
        raise ValueError(f"unknown scale rule {scale_rule!r}; valid: {SCALE_RULES}")
    elif fmt.kind != "mx":
        raise ValueError(f"scale_rule={scale_rule!r} applies to MX formats only, not {fmt.name!r}")
    return x.astype(jnp.float32), fmt, axis, scale_rule


@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5, 6))
def _quantize_parts(x, key, fmt: BlockFormat, axis: int, rule, rounding: str, fake: bool):
    """The quantizer: float32 x → fake-quantized float32, or (codes, scales, tensor_scale)."""
    if x.ndim == 0:
        x = x.reshape(1)
    elem = fmt.element
    if fmt.kind == "identity":
        return x if fake else (x, None, None)
    if fmt.kind == "cast":
        r = K.round_bf16(K.flush_subnormals(x), rounding, key)
        return r if fake else (r.astype(jnp.bfloat16), None, None)
    if fmt.kind == "per_tensor":
        r, s_t, finite = K.per_tensor_kernel(x, elem, rounding, key)
        if fake:
            return jnp.where(finite, r * s_t, np.float32(np.nan))
        return jnp.where(finite, r, np.float32(np.nan)).astype(elem.dtype), None, s_t
    n = x.shape[axis]
    xb = K.to_blocks(x, axis, fmt.block_size)
    if fmt.kind == "nvfp4":
        r, (s_b, s_t, x_b), nonfinite = K.nvfp4_kernel(xb, rounding, key, axis + 1)
        if fake:
            return K.from_blocks(jnp.where(nonfinite, np.float32(np.nan), r * x_b), axis, n)
        scales = jnp.where(nonfinite, np.float32(np.nan), s_b.astype(jnp.float32))
        scales = scales.astype(ml_dtypes.float8_e4m3fn)
        codes = jnp.where(nonfinite, np.float32(0), r).astype(elem.dtype)
        return codes.reshape(_padded(x.shape, axis, xb)), jnp.squeeze(scales, axis + 1), s_t
    r, s, nonfinite = K.mx_kernel(xb, elem, rule, rounding, key, axis + 1)
    if fake:
        if elem.ebits == 0:
            r = jnp.where(r == 0, np.float32(0), r)  # INT8 has no −0 (and XLA folds r + 0 to r)
        return K.from_blocks(K.mul_pow2(r, s, nan=nonfinite), axis, n)
    codes = K.encode(jnp.where(nonfinite, np.float32(0), r), elem)
    scales = jnp.where(nonfinite, 255, s + 127).astype(jnp.uint8)
    return codes.reshape(_padded(x.shape, axis, xb)), jnp.squeeze(scales, axis + 1), None


def _padded(shape, axis, xb):
    return shape[:axis] + (xb.shape[axis] * xb.shape[axis + 1],) + shape[axis + 1 :]


def quantize(x, fmt, *, axis: int = -1, scale_rule: str | None = None, rounding: str = "even",
             key=None) -> QuantizedArray:
    """Quantizes x to a block-scaled format along `axis`.

    MX (OCP MX v1.0 §6.3): X = 2^clamp(floor(log2 max|V|) − emax, −127, 127), P_i = sat(round(V_i / X)).
    A block containing NaN or ±Inf gets X = NaN (E8M0 0xFF) and dequantizes to all-NaN; an all-zero
    block gets X = 2^-127 and zero codes. With scale_rule="rceil" a block maximum within half an element
    ulp of 2^128 rounds up to 2^128 and dequantizes to ±Inf (float32 has no such value).

    Args:
      x: floating-point array, any shape (bf16, f16, f32; converted to float32 first).
      fmt: a format name from FORMAT_NAMES or a BlockFormat.
      axis: the axis whose consecutive elements form blocks (any axis; padded when needed).
      scale_rule: "floor" (OCP, MX default) or "rceil" (round-up scale); MX formats only.
      rounding: "even" (ties to even), "away" (ties away from zero) or "stochastic".
      key: PRNG key, required for (and only for) rounding="stochastic".

    Returns:
      QuantizedArray with codes, scales (and tensor scale), see the module docstring for dtypes.

    Raises:
      ValueError: unknown format, scale rule or rounding; non-float input; axis out of range;
        stochastic rounding without a key (or a key without it).

    References:
      OCP MX v1.0 §6.3; arXiv 2310.10537.
    """
    x, fmt, ax, rule = _check(x, fmt, axis, scale_rule, rounding, key)
    codes, scales, tensor_scale = _quantize_parts(x, key, fmt, ax, rule, rounding, False)
    return QuantizedArray(codes, scales, tensor_scale, fmt, ax, tuple(x.shape))


@functools.partial(jax.jit, static_argnums=(3, 4, 5))
def _dequantize(codes, scales, tensor_scale, fmt: BlockFormat, axis: int, shape):
    elem = fmt.element
    if fmt.kind in ("identity", "cast"):
        return codes.astype(jnp.float32).reshape(shape)
    if fmt.kind == "per_tensor":
        return (codes.astype(jnp.float32) * tensor_scale).reshape(shape)
    n = shape[axis] if shape else 1
    vb = K.to_blocks(K.decode(codes, elem), axis, fmt.block_size)
    if fmt.kind == "nvfp4":
        s_b = jnp.expand_dims(scales.astype(jnp.float32), axis + 1)
        out = vb * (jnp.where(jnp.isnan(s_b), np.float32(0), s_b) * tensor_scale)
        out = jnp.where(jnp.isnan(s_b), np.float32(np.nan), out)
    else:
        e = jnp.expand_dims(scales.astype(jnp.int32), axis + 1)
        out = K.mul_pow2(vb, e - 127, nan=e == 255)
    return K.from_blocks(out, axis, n).reshape(shape)


def dequantize(q: QuantizedArray) -> jax.Array:
    """Decodes a QuantizedArray to float32 of the original shape.

    MX: V_i = P_i · X (E8M0 byte 255 gives NaN for the whole block); NVFP4: V_i = P_i · s_b · s_t;
    fp8_e4m3: V_i = P_i · s_t. Bit-identical to `fake_quantize` with the same arguments.

    Args:
      q: the QuantizedArray returned by `quantize`.

    Returns:
      float32 array of shape q.shape. Values below 2^-126 are flushed to ±0 on XLA CPU.

    References:
      OCP MX v1.0 §6.3.
    """
    return _dequantize(q.codes, q.scales, q.tensor_scale, q.format, q.axis, q.shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _fake_ste(x, key, static):
    return _quantize_parts(x, key, *static[:4], True)


def _fake_ste_fwd(x, key, static):
    return _fake_ste(x, key, static), None


def _fake_ste_bwd(static, _, g):
    return g, None  # straight-through: dq/dx := I


_fake_ste.defvjp(_fake_ste_fwd, _fake_ste_bwd)


def fake_quantize(x, fmt, *, axis: int = -1, scale_rule: str | None = None, rounding: str = "even",
                  key=None) -> jax.Array:
    """Quantizes and dequantizes in one jit-able step, with a straight-through gradient.

    fake_quantize(x) = dequantize(quantize(x)) bit for bit; d fake_quantize(x) / dx := I (the
    straight-through estimator: the cotangent passes unchanged, cast to x's dtype). The format "fp32"
    is the identity.

    Args:
      x: floating-point array, any shape.
      fmt: a format name from FORMAT_NAMES or a BlockFormat.
      axis: the blocked axis.
      scale_rule: "floor" (MX default) or "rceil"; MX formats only.
      rounding: "even", "away" or "stochastic".
      key: PRNG key for stochastic rounding.

    Returns:
      float32 array of x's shape. A block with NaN or ±Inf becomes all-NaN.

    Raises:
      ValueError: as `quantize`.

    References:
      OCP MX v1.0 §6.3; Bengio et al., "Estimating or Propagating Gradients Through Stochastic
      Neurons" (2013) for the straight-through estimator.
    """
    x32, fmt, ax, rule = _check(x, fmt, axis, scale_rule, rounding, key)
    if fmt.kind == "identity":
        return x32
    return _fake_ste(x32, key, (fmt, ax, rule, rounding)).reshape(x32.shape)
