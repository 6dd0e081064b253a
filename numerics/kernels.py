"""Quantization kernels: exact float32 bit arithmetic behind `numerics.quantize`.

MX quantization is exact float32/int32 bit arithmetic, so codes and scales do not depend on how a
backend rounds `log2`/`exp2` or whether it flushes subnormals:

* exponents come from the float bits (never `log2`, which rounds to the next power of two just below
  it); powers of two are built from bits, and a scale 2^s with s < −126 is applied as two factors so
  that it never passes through a subnormal;
* f32 subnormal inputs are treated as zero (explicit DAZ, what XLA CPU does anyway), on every backend;
* an element is rounded on its format's grid: t = y / q with the quantum q = 2^(max(E(y), emin) −
  mbits) is exact, then `round` (ties to even or away) or stochastic rounding, then × q; saturation
  clips to ±max_normal.

Flush to zero (FTZ). A dequantized value below 2^-126 is a float32 subnormal: IEEE backends return it
exactly, XLA CPU (and TPU) flush it to ±0. MX codes and scales never depend on this; only tiny
blocks are touched: those whose E8M0 exponent s has s + emin − mbits < −126 (s < −117 for E4M3).
NVFP4 computes its scales in float32 as the recipe does, so on a flushing backend a block with amax
below about 6·2^-126 (its scale s_b·s_t is subnormal) dequantizes to zeros. The FP32 tensor scales
of NVFP4 and fp8_e4m3 are floored at 2^-126, so tiny tensors keep a usable (normal) tensor scale.

Non-finite input. MX: a block holding NaN or ±Inf gets the E8M0 scale 0xFF (NaN) and all-zero codes;
it dequantizes to all-NaN (OCP MX v1.0 §6.3). NVFP4: the block scale is E4M3 NaN, same effect, and
the FP32 tensor scale is taken over the other blocks. fp8_e4m3 takes its tensor scale over the finite
values and maps NaN/±Inf elements to its NaN code (E4M3 has no Inf). bf16 keeps NaN and ±Inf.

References:
  OCP Microscaling Formats (MX) Specification v1.0 (2023), §6.3 (conversion), §5 (E8M0).
  Rouhani et al., "Microscaling Data Formats for Deep Learning", arXiv 2310.10537 (2023).
  NVIDIA, NVFP4 two-level scaling recipe (E4M3 block scale per 16 values, FP32 tensor scale).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from jax import lax

from .formats import E2M1, ElementFormat

_EXP = 0x7F800000  # exponent field of a float32
_ABS = 0x7FFFFFFF
_MANT = 0x007FFFFF
_SIGN = np.int32(-0x80000000)
_NVFP4_E4M3_MAX = 448.0  # source: OCP OFP8 E4M3 max normal; NVFP4 tensor scale = amax / (6 · 448)


def _bits(x):
    return lax.bitcast_convert_type(x, jnp.int32)


def _f32(b):
    return lax.bitcast_convert_type(b, jnp.float32)


def _pow2(e):
    """2^e as float32 for integer e in [−126, 127], built from the bits."""
    return _f32((e + 127) << 23)


def mul_pow2(x, e, nan=None):
    """x · 2^e for integer e in [−252, 254], exact whenever the result is a normal float32.

    The two factors have the sign of e, so the intermediate lies between x and the result. Where the
    optional mask `nan` (broadcast like e) is true the result is NaN (the factor carries the NaN, so
    the per-element work has no extra select).
    """
    e1 = e >> 1
    f1 = _pow2(e1) if nan is None else jnp.where(nan, np.float32(np.nan), _pow2(e1))
    return (x * f1) * _pow2(e - e1)


def flush_subnormals(x):
    """Treats f32 subnormals as signed zeros (DAZ), identically on every backend."""
    b = _bits(x)
    return _f32(jnp.where((b & _EXP) == 0, b & _SIGN, b))


def round_to_grid(y, elem: ElementFormat, rounding: str, key):
    """Rounds y (float32, in element units) to the grid of `elem` and saturates to ±max_normal.

    q = 2^(max(E(y), emin) − mbits) from the bits of y; t = y / q is exact; r = round(t) · q.
    Valid for formats with emin − mbits ≥ −126 (all MX, NVFP4 and FP8 elements).
    """
    q_bits = jnp.maximum(_bits(y) & _EXP, (elem.emin + 127) << 23) - (elem.mbits << 23)
    t = y * _f32((254 << 23) - q_bits)
    if rounding == "even":
        r = lax.round(t, lax.RoundingMethod.TO_NEAREST_EVEN)
    elif rounding == "away":
        r = lax.round(t, lax.RoundingMethod.AWAY_FROM_ZERO)
    else:  # stochastic: up with probability frac(t), resolved to 2^-24 of a quantum
        low = jnp.floor(t)
        u = lax.shift_right_logical(jax.random.bits(key, t.shape, jnp.uint32), np.uint32(8))
        up = u.astype(jnp.float32) < (t - low) * np.float32(2.0**24)
        r = jnp.copysign(low + up.astype(jnp.float32), t)
    return jnp.clip(r * _f32(q_bits), -elem.max_normal, elem.max_normal)


def round_bf16(x, rounding: str, key):
    """float32 → bfloat16 grid (as float32): RNE by cast, or away / stochastic on the bits."""
    if rounding == "even":
        return x.astype(jnp.bfloat16).astype(jnp.float32)
    b = _bits(x)
    mag = b & _ABS
    if rounding == "away":
        add = jnp.int32(0x8000)
    else:
        add = (jax.random.bits(key, x.shape, jnp.uint32) & np.uint32(0xFFFF)).astype(jnp.int32)
    rounded = ((mag + add) & np.int32(-0x10000)) | (b & _SIGN)
    return _f32(jnp.where(mag > _EXP, b, rounded))  # NaN stays NaN; ±Inf stays ±Inf


# ---------------------------------------------------------------------------------------------
# Block layout: the quantized axis of length n is padded to nb·B and split into (nb, B) in place.


def to_blocks(x, axis: int, block: int):
    """[..., n, ...] → [..., ceil(n / block), block, ...], zero-padded."""
    n = x.shape[axis]
    nb = -(-n // block)
    if nb * block != n:
        pad = [(0, 0)] * x.ndim
        pad[axis] = (0, nb * block - n)
        x = jnp.pad(x, pad)
    return x.reshape(x.shape[:axis] + (nb, block) + x.shape[axis + 1 :])


def from_blocks(xb, axis: int, n: int):
    """Inverse of `to_blocks`: merges the block axes and drops the padding."""
    shape = xb.shape[:axis] + (xb.shape[axis] * xb.shape[axis + 1],) + xb.shape[axis + 2 :]
    out = xb.reshape(shape)
    return out if shape[axis] == n else lax.slice_in_dim(out, 0, n, axis=axis)


# ---------------------------------------------------------------------------------------------
# Format kernels on blocked float32 input. Each returns (r, scale data): r are the element values
# (float32, exactly on the element grid) before the scale is applied.


def mx_kernel(xb, elem: ElementFormat, rule: str, rounding: str, key, bax: int):
    """OCP MX v1.0 §6.3: X = 2^(floor(log2 amax) − emax) in E8M0, V/X rounded and saturated."""
    b = _bits(xb)
    # int order = float order for |x|, NaN on top. A subnormal maximum has exponent field 0 and reads
    # as a zero block below, so the reduction needs no DAZ of its own.
    amax = jnp.max(b & _ABS, axis=bax, keepdims=True)
    s = (amax >> 23) - (127 + elem.emax)  # floor(log2 amax) − emax; zero block: −127 − emax
    if rule == "rceil":  # smallest s with amax ≤ max_normal · 2^s: bump when the mantissa is larger
        top = int(np.float32(elem.max_mantissa).view(np.int32)) & _MANT
        s = s + (((amax & _MANT) > top) & (amax > _MANT)).astype(jnp.int32)
    s = jnp.clip(s, -127, 127)
    nonfinite = amax >= _EXP
    x = _f32(jnp.where((b & _EXP) == 0, b & _SIGN, b))  # DAZ
    y = x * _pow2(-s) if elem.emax >= 2 else mul_pow2(x, -s)  # s ≤ 126 when emax ≥ 2
    return round_to_grid(y, elem, rounding, key), s, nonfinite


def _div(a, b):
    """IEEE a / b for a divisor b that is a constant or broadcast.

    XLA rewrites a / constant and a / broadcast(b) as a · (1/b), which is not correctly rounded. A
    divisor that depends on a elementwise (1 where a is NaN, where the quotient is NaN anyway) is
    neither, so the true division stays, also under vmap (an optimization barrier does not).
    """
    return a / jnp.where(jnp.isnan(a), np.float32(1), jnp.asarray(b, jnp.float32))


def _tensor_amax(absb):
    """Largest finite |x| of the whole tensor (float32), from the magnitude bits.

    Reduced in rows of 256 first: XLA CPU fuses the select into a row reduction but materializes it
    for a single full reduction.
    """
    v = jnp.where(absb < _EXP, absb, 0)
    if v.size and v.size % 256 == 0:
        v = jnp.max(v.reshape(-1, 256), axis=1)
    return _f32(jnp.max(v, initial=0))


def _tensor_scale(amax_t, divisor: float):
    """FP32 tensor scale amax / divisor, at least 2^-126 so that it survives FTZ; 1 for a zero tensor.

    Without the floor, a tensor with amax below divisor · 2^-126 would get a flushed scale of 0.
    """
    s_t = jnp.maximum(_div(amax_t, divisor), np.float32(2.0**-126))
    return jnp.where(amax_t == 0, np.float32(1), s_t)


def nvfp4_kernel(xb, rounding: str, key, bax: int):
    """NVFP4 as a sequence of correctly rounded float32 operations:

    s_t = max(amax / (6·448), 2^-126), amax over the blocks free of NaN/Inf (a non-finite block is NaN);
    s_b = E4M3(min(amax_b / 6 / s_t, 448)); X_b = s_b · s_t; P_i = E2M1(x_i · fl(1 / X_b)).
    The element step multiplies by the block's encode scale fl(1/X_b), as GPU kernels do, instead of
    dividing every element (XLA would turn that division into the same product anyway).
    """
    amax_b = jnp.max(_bits(xb) & _ABS, axis=bax, keepdims=True)
    amax_b = jnp.where(amax_b <= _MANT, 0, amax_b)  # DAZ of the maximum = maximum after DAZ
    nonfinite = amax_b >= _EXP
    amax_t = _tensor_amax(amax_b)  # over the finite blocks: a single pass over x
    s_t = _tensor_scale(amax_t, E2M1.max_normal * _NVFP4_E4M3_MAX)
    s_b = jnp.minimum(_div(_div(_f32(amax_b), E2M1.max_normal), s_t), np.float32(_NVFP4_E4M3_MAX))
    s_b = jnp.where(nonfinite, np.float32(0), s_b).astype(ml_dtypes.float8_e4m3fn)
    x_b = s_b.astype(jnp.float32) * s_t  # the block's decode scale
    zero = x_b == 0  # zero block, or a block scale below E4M3's range (or flushed): all zeros
    enc = jnp.where(zero, np.float32(0), np.float32(1) / jnp.where(zero, np.float32(1), x_b))
    return round_to_grid(flush_subnormals(xb) * enc, E2M1, rounding, key), (s_b, s_t, x_b), nonfinite


def per_tensor_kernel(x, elem: ElementFormat, rounding: str, key):
    """Per-tensor FP8: s_t = max(amax / max_normal, 2^-126) (FP32); P_i = E4M3(x_i · fl(1 / s_t))."""
    x = flush_subnormals(x)
    absb = _bits(x) & _ABS
    amax_t = _tensor_amax(absb)
    s_t = _tensor_scale(amax_t, elem.max_normal)
    finite = absb < _EXP
    y = jnp.where(finite, x * (np.float32(1) / s_t), np.float32(0))
    return round_to_grid(y, elem, rounding, key), s_t, finite


# ---------------------------------------------------------------------------------------------
# Element codes.


def encode(r, elem: ElementFormat):
    """Element values on the grid (float32) → storage codes (narrow ml_dtypes type, uint8, int8)."""
    if elem.ebits == 0:  # INT8: integer = r · 2^(mbits − emin)
        return (r * np.float32(2.0 ** (elem.mbits - elem.emin))).astype(jnp.int8)
    if elem.bits != 6:
        return r.astype(elem.dtype)  # FP8 / FP4: XLA converts exactly (r is representable)
    # FP6 (XLA cannot compile float6 casts): uint8 holding the 6-bit pattern S EEE MM / S EE MMM.
    rb = _bits(r)
    mag = rb & _ABS
    e = (mag >> 23) - 127
    normal = ((e + elem.bias) << elem.mbits) | ((mag & _MANT) >> (23 - elem.mbits))
    sub = (jnp.abs(r) * np.float32(2.0 ** (elem.mbits - elem.emin))).astype(jnp.int32)
    sign = lax.shift_right_logical(rb, 31) << (elem.ebits + elem.mbits)
    return (jnp.where(e >= elem.emin, normal, sub) | sign).astype(jnp.uint8)


def decode(codes, elem: ElementFormat):
    """Storage codes → element values (float32)."""
    if elem.ebits == 0:
        return codes.astype(jnp.float32) * np.float32(2.0 ** (elem.emin - elem.mbits))
    if elem.bits != 6:
        return codes.astype(jnp.float32)
    c = codes.astype(jnp.int32)
    width = elem.ebits + elem.mbits
    ef = (c >> elem.mbits) & ((1 << elem.ebits) - 1)
    mf = c & ((1 << elem.mbits) - 1)
    normal = _f32(((ef - elem.bias + 127) << 23) | (mf << (23 - elem.mbits)))
    sub = mf.astype(jnp.float32) * np.float32(elem.min_subnormal)
    v = jnp.where(ef == 0, sub, normal)
    return jnp.where((c >> width) & 1 == 1, -v, v)
