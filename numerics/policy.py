"""`QuantPolicy`: a number format for every tensor role, injected into flax nnx layers.

    policy = QuantPolicy(weights="mxfp4_e2m1", activations="mxfp6_e3m2", gradients="mxfp6_e3m2")
    layer = nnx.Linear(64, 32, dot_general=policy.dot_general, rngs=nnx.Rngs(0))
    attn = nnx.Einsum("btd,dnh->btnh", (64, 4, 16), einsum_op=policy.einsum, rngs=nnx.Rngs(0))

References:
  Rouhani et al., "Microscaling Data Formats for Deep Learning", arXiv 2310.10537 (2023)
  (formats per tensor role: weights, activations, gradients).
"""

from __future__ import annotations

import dataclasses

from .dot import mx_dot_general
from .einsum import mx_einsum
from .formats import ROUNDINGS, SCALE_RULES, BlockFormat, get_format
from .quantize import fake_quantize

ROLES = ("weights", "activations", "gradients", "kv_cache", "communication")


@dataclasses.dataclass(frozen=True)
class _Bound:
    """A policy-bound callable; equal policies give equal (hashable) callables, so jit caches hit."""

    fn: object
    policy: QuantPolicy

    def __call__(self, *args, **kwargs):
        return self.fn(*args, policy=self.policy, **kwargs)


@dataclasses.dataclass(frozen=True)
class QuantPolicy:
    """Formats per tensor role, scale rule and gradient rounding.

    Attributes:
      weights: format of the weight operand (rhs) of every quantized matmul.
      activations: format of the activation operand (lhs).
      gradients: format of the cotangents in the backward matmuls.
      kv_cache: format for the KV cache (used by attention code through `quantize_role`).
      communication: format of tensors sent over collectives (same).
      scale_rule: None (each format's default; "floor" for MX) or "floor" / "rceil" for all MX roles.
      grad_rounding: rounding of the gradients: "even", "away" or "stochastic".
      seed: seed of the stochastic-rounding keys (see `numerics.dot`).

    Raises:
      ValueError: unknown format name, scale rule or rounding, or a non-int seed.
    """

    weights: str = "fp32"
    activations: str = "fp32"
    gradients: str = "fp32"
    kv_cache: str = "fp32"
    communication: str = "fp32"
    scale_rule: str | None = None
    grad_rounding: str = "even"
    seed: int = 0

    def __post_init__(self):
        for role in ROLES:
            get_format(getattr(self, role))  # raises ValueError naming an unknown format
        if self.scale_rule is not None and self.scale_rule not in SCALE_RULES:
            raise ValueError(f"unknown scale rule {self.scale_rule!r}; valid: None, {SCALE_RULES}")
        if self.grad_rounding not in ROUNDINGS:
            raise ValueError(f"unknown grad_rounding {self.grad_rounding!r}; valid: {ROUNDINGS}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed={self.seed!r} must be an int")

    @classmethod
    def uniform(cls, fmt: str | BlockFormat, **kwargs) -> QuantPolicy:
        """One format for every role, e.g. QuantPolicy.uniform("mxfp6_e3m2")."""
        return cls(**{role: fmt for role in ROLES}, **kwargs)

    @classmethod
    def mx_paper_fp4_fp6(cls, **kwargs) -> QuantPolicy:
        """arXiv 2310.10537 §7: MXFP4 weights, MXFP6 (E3M2) activations and gradients."""
        return cls(weights="mxfp4_e2m1", activations="mxfp6_e3m2", gradients="mxfp6_e3m2", **kwargs)

    def scale_rule_for(self, fmt: str | BlockFormat) -> str | None:
        """The scale rule to pass for `fmt`: the policy's rule for MX formats, None otherwise."""
        return self.scale_rule if get_format(fmt).kind == "mx" else None

    @property
    def dot_general(self):
        """A `lax.dot_general`-compatible callable: `nnx.Linear(..., dot_general=policy.dot_general)`."""
        return _Bound(mx_dot_general, self)

    @property
    def einsum(self):
        """A `jnp.einsum`-compatible callable for two operands: `nnx.Einsum(..., einsum_op=policy.einsum)`."""
        return _Bound(mx_einsum, self)

    def quantize_role(self, role: str, x, *, axis: int = -1):
        """fake_quantize(x) with the format of `role` (e.g. "kv_cache"), straight-through gradient.

        Raises:
          ValueError: unknown role.
        """
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; valid: {ROLES}")
        fmt = getattr(self, role)
        return fake_quantize(x, fmt, axis=axis, scale_rule=self.scale_rule_for(fmt))
