"""Quantized `dot_general` and two-operand `einsum` with MX-style forward and backward passes.

Forward (OCP MX v1.0 §6, Dot and DotGeneral): the activation operand (lhs) is block-quantized with
`policy.activations` and the weight operand (rhs) with `policy.weights`, both along their (last)
contracting dimension, so a block of one meets the matching block of the other; products are
accumulated in float32.

Backward (arXiv 2310.10537, MX training: every matmul quantizes along its own reduction dimension):
with out = lhs · rhs and cotangent g,
  d lhs = Q_g(g) · Q_w(rhs)ᵀ, contracted over rhs's free dimensions,
  d rhs = Q_a(lhs)ᵀ · Q_g(g), contracted over lhs's free dimensions,
each operand re-quantized from its unquantized value along that backward matmul's own contracting
dimension (the residuals are the unquantized operands). Q_g uses `policy.gradients` with
`policy.grad_rounding`. Stochastic rounding takes its key from `policy.seed` folded with a 32-bit hash
of the cotangent's bits (and the index of the backward matmul), so every step gets fresh noise without
threading keys through the model; identical cotangents get identical noise.

The blocked axis is the last contracting dimension; a matmul without contracting dimensions (an outer
product) blocks along each operand's last axis. With precision=None the dots run at
`Precision.HIGHEST`, so an emulation on an accelerator does not drop to bf16 passes.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .quantize import fake_quantize

if TYPE_CHECKING:
    from .policy import QuantPolicy


def _normalize_dn(dimension_numbers, lhs_ndim: int, rhs_ndim: int):
    try:
        (lc, rc), (lb, rb) = dimension_numbers
        dn = ((tuple(int(d) for d in lc), tuple(int(d) for d in rc)),
              (tuple(int(d) for d in lb), tuple(int(d) for d in rb)))
    except (TypeError, ValueError) as err:
        raise ValueError(f"malformed dimension_numbers={dimension_numbers!r}") from err
    (lc, rc), (lb, rb) = dn
    if len(lc) != len(rc) or len(lb) != len(rb):
        raise ValueError(f"dimension_numbers={dimension_numbers!r}: lhs and rhs lists differ in length")
    for dims, ndim, side in ((lc + lb, lhs_ndim, "lhs"), (rc + rb, rhs_ndim, "rhs")):
        if len(set(dims)) != len(dims) or any(not 0 <= d < ndim for d in dims):
            raise ValueError(f"dimension_numbers={dimension_numbers!r} invalid for a {side} of rank {ndim}")
    return dn


def _free(ndim: int, *used):
    taken = set().union(*used)
    return tuple(d for d in range(ndim) if d not in taken)


def _block_axis(contracting, ndim: int) -> int:
    return contracting[-1] if contracting else max(ndim - 1, 0)


def _q(policy, role: str, x, contracting, rounding="even", key=None):
    """fake_quantize x with the role's format, blocked along the last contracting dimension."""
    fmt = getattr(policy, role)
    return fake_quantize(x, fmt, axis=_block_axis(contracting, x.ndim), scale_rule=policy.scale_rule_for(fmt),
                         rounding=rounding, key=key)


def _dot(a, b, dn, precision):
    return lax.dot_general(a, b, dn, precision=precision, preferred_element_type=jnp.float32)


def _grad_key(policy, g, which: int):
    """PRNG key for stochastic rounding of the cotangent: seed ⊕ hash(bits of g) ⊕ matmul index."""
    b = lax.bitcast_convert_type(g.astype(jnp.float32), jnp.uint32)
    mixed = (b ^ lax.shift_right_logical(b, np.uint32(16))) * np.uint32(0x45D9F3B)
    h = jnp.sum(mixed ^ lax.shift_right_logical(mixed, np.uint32(13)), dtype=jnp.uint32)
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(policy.seed), h), which)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _mx_dot_vjp(lhs, rhs, dn, cfg):
    return _mx_dot_fwd(lhs, rhs, dn, cfg)[0]


def _mx_dot_fwd(lhs, rhs, dn, cfg):
    policy, precision, out_dtype, out_sharding = cfg
    (lc, rc), _ = dn
    ql = _q(policy, "activations", lhs, lc)
    qr = _q(policy, "weights", rhs, rc)
    kw = {} if out_sharding is None else {"out_sharding": out_sharding}
    out = lax.dot_general(ql, qr, dn, precision=precision, preferred_element_type=jnp.float32, **kw)
    return out.astype(out_dtype), (lhs, rhs)


def _mx_dot_bwd(dn, cfg, res, g):
    policy, precision, _, _ = cfg
    lhs, rhs = res
    (lc, rc), (lb, rb) = dn
    lf, rf = _free(lhs.ndim, lc, lb), _free(rhs.ndim, rc, rb)
    nb = len(lb)
    g_lf = tuple(range(nb, nb + len(lf)))
    g_rf = tuple(range(nb + len(lf), nb + len(lf) + len(rf)))
    g_b = tuple(range(nb))
    g = g.astype(jnp.float32)
    rnd = policy.grad_rounding

    def qg(contracting, which):
        key = _grad_key(policy, g, which) if rnd == "stochastic" else None
        return _q(policy, "gradients", g, contracting, rnd, key)

    # d lhs = g · rhsᵀ over rhs's free dims → dims (batch, lf, rc-paired lc), then to lhs order.
    d_lhs = _dot(qg(g_rf, 0), _q(policy, "weights", rhs, rf), ((g_rf, rf), (g_b, rb)), precision)
    lhs_order = list(lb) + list(lf) + [lc[rc.index(r)] for r in sorted(rc)]
    d_lhs = jnp.transpose(d_lhs, np.argsort(lhs_order))

    # d rhs = lhsᵀ · g over lhs's free dims → dims (batch, rf, lc-paired rc), then to rhs order.
    d_rhs = _dot(qg(g_lf, 1), _q(policy, "activations", lhs, lf), ((g_lf, lf), (g_b, lb)), precision)
    rhs_order = list(rb) + list(rf) + [rc[lc.index(c)] for c in sorted(lc)]
    d_rhs = jnp.transpose(d_rhs, np.argsort(rhs_order))
    return d_lhs.astype(lhs.dtype), d_rhs.astype(rhs.dtype)


_mx_dot_vjp.defvjp(_mx_dot_fwd, _mx_dot_bwd)
_mx_dot = jax.jit(_mx_dot_vjp, static_argnums=(2, 3))  # eager calls compile once per signature




def mx_dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None, *,
                   policy: QuantPolicy, out_sharding=None) -> jax.Array:
    """`lax.dot_general` with block-quantized operands, FP32 accumulation and a quantized backward.

    out = Σ_k Q_a(lhs)[…, k] · Q_w(rhs)[k, …], blocks along the last contracting dimension.

    Args:
      lhs: the activation operand, floating point.
      rhs: the weight operand, floating point.
      dimension_numbers: ((lhs_contracting, rhs_contracting), (lhs_batch, rhs_batch)) as in
        `lax.dot_general`.
      precision: passed to the dots; None means `lax.Precision.HIGHEST`.
      preferred_element_type: output dtype; None gives the promoted input dtype.
      policy: the QuantPolicy (formats of weights, activations and gradients).
      out_sharding: passed to the forward `lax.dot_general`.

    Returns:
      The product, shape as `lax.dot_general`'s.

    Raises:
      ValueError: malformed dimension numbers or non-float operands.

    References:
      OCP MX v1.0 §6 (Dot, DotGeneral); arXiv 2310.10537 (MX training compute flow).
    """
    for name, a in (("lhs", lhs), ("rhs", rhs)):
        dtype = getattr(a, "dtype", None)
        if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
            raise ValueError(f"mx_dot_general needs floating-point operands; {name} has dtype {dtype}")
    dn = _normalize_dn(dimension_numbers, jnp.ndim(lhs), jnp.ndim(rhs))
    out_dtype = jnp.dtype(preferred_element_type or jnp.result_type(lhs, rhs))
    cfg = (policy, lax.Precision.HIGHEST if precision is None else precision, out_dtype, out_sharding)
    return _mx_dot(lhs, rhs, dn, cfg)
