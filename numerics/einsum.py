"""`mx_einsum`: a two-operand `jnp.einsum` whose contraction is `mx_dot_general`.

flax nnx `Einsum` calls `einsum_op(subscripts, inputs, kernel, precision=..., ...)`. `jnp.einsum`
itself may swap its operands before calling `dot_general`, which would swap the activation and weight
roles, so this module lowers the subscripts itself: the first operand is always the activation (lhs),
the second the weight (rhs). Indices only in one operand and not in the output are summed first;
repeated indices within an operand (diagonals) and size-1 broadcasting are not supported.
"""

from __future__ import annotations

import string
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp

from .dot import mx_dot_general

if TYPE_CHECKING:
    from .policy import QuantPolicy


def _expand_ellipsis(terms, out, ndims):
    used = set("".join(terms) + (out or ""))
    pool = [c for c in string.ascii_letters if c not in used]
    widths = []
    for term, nd in zip(terms, ndims):
        width = nd - (len(term) - 3) if "..." in term else 0
        if width < 0:
            raise ValueError(f"einsum term {term!r} has more indices than its operand's rank {nd}")
        widths.append(width)
    full = pool[: max(widths)]
    terms = [t.replace("...", "".join(full[len(full) - w :])) for t, w in zip(terms, widths)]
    if out is not None:
        out = out.replace("...", "".join(full))
    return terms, out


def _parse(subscripts: str, ndims):
    spec = subscripts.replace(" ", "")
    lhs_spec, arrow, out = spec.partition("->")
    terms = lhs_spec.split(",")
    if len(terms) != 2:
        raise ValueError(f"mx_einsum takes exactly two operands; subscripts={subscripts!r}")
    terms, out = _expand_ellipsis(terms, out if arrow else None, ndims)
    if not arrow:  # implicit mode: indices that appear once, sorted
        joined = "".join(terms)
        out = "".join(sorted(c for c in set(joined) if joined.count(c) == 1))
    for t, nd in zip(terms, ndims):
        if len(t) != nd or not t.isalpha():
            raise ValueError(f"einsum term {t!r} does not match an operand of rank {nd} ({subscripts!r})")
        if len(set(t)) != len(t):
            raise ValueError(f"repeated index in einsum term {t!r} (diagonals) is not supported")
    if len(set(out)) != len(out) or not set(out) <= set("".join(terms)):
        raise ValueError(f"bad einsum output {out!r} for {subscripts!r}")
    return terms[0], terms[1], out


def mx_einsum(subscripts: str, *operands, policy: QuantPolicy, precision=None,
              preferred_element_type=None, out_sharding=None, **kwargs) -> jax.Array:
    """Two-operand einsum through `mx_dot_general` (first operand = activations, second = weights).

    Args:
      subscripts: einsum string, e.g. "btd,dnh->btnh" (ellipsis and implicit output supported).
      *operands: the activation and the weight array.
      policy: the QuantPolicy.
      precision: as `jnp.einsum` (None means HIGHEST, see `mx_dot_general`).
      preferred_element_type: output dtype.
      out_sharding: passed to the forward dot_general (only when the result needs no transpose).
      **kwargs: `optimize` is accepted and ignored (two operands have one contraction order).

    Returns:
      The einsum result.

    Raises:
      ValueError: not exactly two operands, malformed subscripts, diagonals, mismatched sizes.
    """
    if set(kwargs) - {"optimize"}:
        raise ValueError(f"unsupported einsum arguments: {sorted(set(kwargs) - {'optimize'})}")
    if len(operands) != 2:
        raise ValueError(f"mx_einsum takes exactly two operands, got {len(operands)}")
    lhs, rhs = operands
    lt, rt, out = _parse(subscripts, (jnp.ndim(lhs), jnp.ndim(rhs)))
    sizes = {}
    for term, arr in ((lt, lhs), (rt, rhs)):
        for c, n in zip(term, jnp.shape(arr)):
            if sizes.setdefault(c, n) != n:
                raise ValueError(f"index {c!r} has sizes {sizes[c]} and {n} in {subscripts!r}")
    # Sum indices that appear in one operand only and not in the output.
    lsum = [i for i, c in enumerate(lt) if c not in rt and c not in out]
    rsum = [i for i, c in enumerate(rt) if c not in lt and c not in out]
    if lsum:
        lhs, lt = jnp.sum(lhs, axis=tuple(lsum)), "".join(c for i, c in enumerate(lt) if i not in lsum)
    if rsum:
        rhs, rt = jnp.sum(rhs, axis=tuple(rsum)), "".join(c for i, c in enumerate(rt) if i not in rsum)
    contract = [c for c in lt if c in rt and c not in out]
    batch = [c for c in lt if c in rt and c in out]
    dn = (([lt.index(c) for c in contract], [rt.index(c) for c in contract]),
          ([lt.index(c) for c in batch], [rt.index(c) for c in batch]))
    result = "".join(batch) + "".join(c for c in lt if c not in rt) + "".join(c for c in rt if c not in lt)
    sharding = out_sharding if result == out else None
    if out_sharding is not None and sharding is None:
        raise ValueError(f"out_sharding needs the einsum output in dot_general order {result!r}, got {out!r}")
    y = mx_dot_general(lhs, rhs, dn, precision, preferred_element_type, policy=policy, out_sharding=sharding)
    return y if result == out else jnp.transpose(y, [result.index(c) for c in out])
