"""Error metrics of a quantized tensor against its reference: SQNR, relative L2, max abs error.

All are computed in float32 after dividing both tensors by max|reference|, so values up to 2^127 do
not overflow the sums of squares. They are jit-able and return 0-d float32 arrays.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .formats import bits_per_element as bits_per_element  # re-exported for numerics.metrics users


def _pair(reference, approx):
    r = jnp.asarray(reference, jnp.float32)
    a = jnp.asarray(approx, jnp.float32)
    if r.shape != a.shape:
        raise ValueError(f"reference shape {r.shape} differs from approx shape {a.shape}")
    return r, a


@jax.jit
def _energies(r, a):
    """(Σ x², Σ (x − x̂)²) of both tensors divided by max|x| (1 when x is all zeros)."""
    m = jnp.max(jnp.abs(r))
    m = jnp.where(m > 0, m, np.float32(1))
    return jnp.sum(jnp.square(r / m)), jnp.sum(jnp.square((r - a) / m))


def sqnr_db(reference, approx) -> jax.Array:
    """Signal-to-quantization-noise ratio in dB.

    SQNR = 10 · log10(Σ x² / Σ (x − x̂)²); +inf when x̂ == x, −inf when the reference is zero and the
    approximation is not, NaN when either holds NaN.

    Args:
      reference: the exact tensor x.
      approx: the quantized tensor x̂, same shape.

    Returns:
      0-d float32, dB.

    Raises:
      ValueError: shapes differ.

    References:
      arXiv 2310.10537 §5 (QSNR).
    """
    signal, noise = _energies(*_pair(reference, approx))
    return np.float32(10) * (jnp.log10(signal) - jnp.log10(noise))


def relative_l2_error(reference, approx) -> jax.Array:
    """‖x − x̂‖₂ / ‖x‖₂ (+inf for an all-zero reference and a non-zero x̂; NaN when both are zero).

    Args:
      reference: x.
      approx: x̂, same shape.

    Returns:
      0-d float32.

    Raises:
      ValueError: shapes differ.
    """
    signal, noise = _energies(*_pair(reference, approx))
    return jnp.sqrt(noise / signal)


def max_abs_error(reference, approx) -> jax.Array:
    """max |x − x̂| in the reference's units.

    Args:
      reference: x.
      approx: x̂, same shape.

    Returns:
      0-d float32.

    Raises:
      ValueError: shapes differ.
    """
    r, a = _pair(reference, approx)
    return _max_abs(r, a)


@jax.jit
def _max_abs(r, a):
    return jnp.max(jnp.abs(r - a))
