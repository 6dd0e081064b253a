"""mx_dot_general / mx_einsum / QuantPolicy: forward and VJP against references built by hand from
fake_quantize and plain matmuls, and injection into flax nnx Linear and Einsum."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import numerics
from numerics import QuantPolicy, fake_quantize, mx_dot_general

# Three different formats, so a role mix-up (or a wrong blocking axis) changes the result.
POLICY = QuantPolicy(weights="mxfp4_e2m1", activations="mxfp8_e4m3", gradients="mxfp6_e3m2")
# The hand references contract with jnp.einsum / matmul in other layouts than mx_dot_general does, so
# float32 accumulation order may differ in the last bits; the quantized operands are identical.
DOT_RTOL = 1e-5


def fa(x, axis):  # activations
    return fake_quantize(x, POLICY.activations, axis=axis)


def fw(x, axis):  # weights
    return fake_quantize(x, POLICY.weights, axis=axis)


def fg(x, axis):  # gradients
    return fake_quantize(x, POLICY.gradients, axis=axis)


def _arr(shape, seed):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


# (lhs shape, rhs shape, dimension numbers, forward by hand, d lhs by hand, d rhs by hand)
CASES = {
    "matmul": ((8, 64), (64, 40), (((1,), (0,)), ((), ())),
               lambda l, r: fa(l, 1) @ fw(r, 0),
               lambda l, r, g: fg(g, 1) @ fw(r, 1).T,
               lambda l, r, g: fa(l, 0).T @ fg(g, 0)),
    "rhs_transposed": ((8, 64), (40, 64), (((1,), (1,)), ((), ())),
                       lambda l, r: fa(l, 1) @ fw(r, 1).T,
                       lambda l, r, g: fg(g, 1) @ fw(r, 0),
                       lambda l, r, g: fg(g, 0).T @ fa(l, 0)),
    "batched": ((2, 6, 40), (2, 40, 36), (((2,), (1,)), ((0,), (0,))),
                lambda l, r: jnp.einsum("bmk,bkn->bmn", fa(l, 2), fw(r, 1)),
                lambda l, r, g: jnp.einsum("bmn,bkn->bmk", fg(g, 2), fw(r, 2)),
                lambda l, r, g: jnp.einsum("bmk,bmn->bkn", fa(l, 1), fg(g, 1))),
    "two_contracting": ((5, 3, 40), (3, 40, 24), (((1, 2), (0, 1)), ((), ())),
                        lambda l, r: jnp.einsum("thd,hdn->tn", fa(l, 2), fw(r, 1)),
                        lambda l, r, g: jnp.einsum("tn,hdn->thd", fg(g, 1), fw(r, 2)),
                        lambda l, r, g: jnp.einsum("thd,tn->hdn", fa(l, 0), fg(g, 0))),
    "contracting_first": ((48, 5), (7, 48), (((0,), (1,)), ((), ())),
                          lambda l, r: fa(l, 0).T @ fw(r, 1).T,
                          lambda l, r, g: (fg(g, 1) @ fw(r, 0)).T,
                          lambda l, r, g: fg(g, 0).T @ fa(l, 1).T),
}


def _close(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, rtol=DOT_RTOL, atol=DOT_RTOL * np.abs(b).max())


@pytest.mark.parametrize("case", CASES)
def test_forward_and_vjp_match_hand_reference(case):
    ls, rs, dn, fwd, dl, dr = CASES[case]
    lhs, rhs = _arr(ls, 0) * 3, _arr(rs, 1)
    out, vjp = jax.vjp(lambda a, b: mx_dot_general(a, b, dn, policy=POLICY), lhs, rhs)
    _close(out, fwd(lhs, rhs))
    g = _arr(out.shape, 2) * 1e-3
    d_lhs, d_rhs = vjp(g)
    _close(d_lhs, dl(lhs, rhs, g))
    _close(d_rhs, dr(lhs, rhs, g))
    if case == "matmul":  # the check has teeth: blocking the cotangent along the other axis is far off
        wrong = fg(g, 0) @ fw(rhs, 1).T
        assert np.abs(np.asarray(wrong - dl(lhs, rhs, g))).max() > 100 * DOT_RTOL * np.abs(np.asarray(d_lhs)).max()


def test_fp32_policy_is_plain_dot_general():
    lhs, rhs = _arr((8, 64), 0), _arr((64, 40), 1)
    dn = (((1,), (0,)), ((), ()))
    f = lambda a, b: jnp.sum(jnp.sin(mx_dot_general(a, b, dn, policy=QuantPolicy())))  # noqa: E731
    ref = lambda a, b: jnp.sum(jnp.sin(jax.lax.dot_general(a, b, dn, precision="highest")))  # noqa: E731
    np.testing.assert_array_equal(f(lhs, rhs), ref(lhs, rhs))
    for got, want in zip(jax.grad(f, (0, 1))(lhs, rhs), jax.grad(ref, (0, 1))(lhs, rhs)):
        _close(got, want)


def test_scale_rule_and_dtypes():
    lhs, rhs = _arr((4, 64), 0).astype(jnp.bfloat16), _arr((64, 8), 1).astype(jnp.bfloat16)
    p = QuantPolicy.uniform("mxfp4_e2m1", scale_rule="rceil")
    out = mx_dot_general(lhs, rhs, (((1,), (0,)), ((), ())), policy=p)
    assert out.dtype == jnp.bfloat16
    want = fake_quantize(lhs, "mxfp4_e2m1", scale_rule="rceil") @ fake_quantize(rhs, "mxfp4_e2m1", axis=0, scale_rule="rceil")
    np.testing.assert_array_equal(np.asarray(out, np.float32), np.asarray(want.astype(jnp.bfloat16), np.float32))
    out32 = mx_dot_general(lhs, rhs, (((1,), (0,)), ((), ())), preferred_element_type=jnp.float32, policy=p)
    assert out32.dtype == jnp.float32
    g = jax.grad(lambda a: mx_dot_general(a, rhs, (((1,), (0,)), ((), ())), policy=p).astype(jnp.float32).sum())(lhs)
    assert g.dtype == jnp.bfloat16


def test_stochastic_gradient_rounding_is_deterministic_per_cotangent():
    lhs, rhs = _arr((16, 64), 0), _arr((64, 32), 1)
    dn = (((1,), (0,)), ((), ()))

    @functools.partial(jax.jit, static_argnums=(0,))
    def grads(policy, scale=1.0):
        loss = lambda a, b: jnp.sum(jnp.sin(mx_dot_general(a, b, dn, policy=policy)) * scale)  # noqa: E731
        return jax.grad(loss, (0, 1))(lhs, rhs)

    sr = dict(weights="mxfp8_e4m3", activations="mxfp8_e4m3", gradients="mxfp4_e2m1", grad_rounding="stochastic")
    a1, a2 = grads(QuantPolicy(**sr, seed=3)), grads(QuantPolicy(**sr, seed=3))
    b = grads(QuantPolicy(**sr, seed=4))
    exact = grads(QuantPolicy())  # unquantized gradients
    for x, y, z, e in zip(a1, a2, b, exact):
        np.testing.assert_array_equal(x, y)  # same seed, same cotangent: same noise
        assert not np.array_equal(x, z)  # another seed: other noise
        # FP4 gradients with stochastic rounding still point the right way: relative error well below 1
        assert np.linalg.norm(np.asarray(x - e)) < 0.5 * np.linalg.norm(np.asarray(e))
    c = grads(QuantPolicy(**sr, seed=3), scale=1.5)  # another cotangent: fresh noise
    ratio = np.asarray(c[0]) / np.where(np.asarray(a1[0]) == 0, 1, np.asarray(a1[0]))
    assert not np.allclose(ratio, 1.5)


def test_nnx_linear_with_policy_dot_general():
    layer = nnx.Linear(64, 24, dot_general=POLICY.dot_general, rngs=nnx.Rngs(0))
    x = _arr((6, 64), 3)
    kernel, bias = layer.kernel[...], layer.bias[...]
    np.testing.assert_array_equal(layer(x), fa(x, 1) @ fw(kernel, 0) + bias[None])

    @nnx.jit
    def grad_step(model, v):
        return nnx.grad(lambda m: jnp.sum(jnp.tanh(m(v))))(model)

    grads = grad_step(layer, x)
    y = fa(x, 1) @ fw(kernel, 0) + bias[None]
    g = 1 - jnp.tanh(y) ** 2
    _close(grads.kernel[...], fa(x, 0).T @ fg(g, 0))
    _close(grads.bias[...], g.sum(0))


def test_nnx_einsum_with_policy_einsum():
    layer = nnx.Einsum("btd,dnh->btnh", (64, 2, 8), einsum_op=POLICY.einsum, rngs=nnx.Rngs(0))
    x = _arr((2, 3, 64), 4)
    want = jnp.einsum("btd,dnh->btnh", fa(x, 2), fw(layer.kernel[...], 0))
    _close(layer(x), want)
    # An output order that makes jnp.einsum swap its operands keeps the roles: x stays the activation.
    k = _arr((5, 64), 5)
    got = numerics.mx_einsum("bd,hd->hb", x[0], k, policy=POLICY)
    _close(got, (fa(x[0], 1) @ fw(k, 1).T).T)
    got = numerics.mx_einsum("...d,hd", x, k, policy=POLICY)  # ellipsis, implicit output "...h"
    _close(got, jnp.einsum("btd,hd->bth", fa(x, 2), fw(k, 1)))


def test_policy_validation_and_roles():
    assert QuantPolicy.uniform("mxfp6_e3m2").kv_cache == "mxfp6_e3m2"
    assert QuantPolicy().dot_general == QuantPolicy().dot_general  # equal callables: jit caches hit
    p = QuantPolicy.mx_paper_fp4_fp6(kv_cache="nvfp4")
    x = _arr((4, 32), 0)
    np.testing.assert_array_equal(p.quantize_role("kv_cache", x), fake_quantize(x, "nvfp4"))
    with pytest.raises(ValueError, match="'mxfp3'"):
        QuantPolicy(weights="mxfp3")
    with pytest.raises(ValueError, match="'nearest'"):
        QuantPolicy(grad_rounding="nearest")
    with pytest.raises(ValueError, match="'round'"):
        QuantPolicy(scale_rule="round")
    with pytest.raises(ValueError, match="seed='1'"):
        QuantPolicy(seed="1")
    with pytest.raises(ValueError, match="'weight'"):
        p.quantize_role("weight", x)
    with pytest.raises(ValueError, match="int32"):
        mx_dot_general(jnp.ones((2, 3), jnp.int32), x[:3], (((1,), (0,)), ((), ())), policy=p)
    with pytest.raises(ValueError, match="invalid for a lhs of rank 2"):
        mx_dot_general(x, x.T, (((2,), (0,)), ((), ())), policy=p)
    with pytest.raises(ValueError, match="exactly two operands"):
        numerics.mx_einsum("ab,bc,cd->ad", x, x.T, x, policy=p)
    with pytest.raises(ValueError, match="repeated index"):
        numerics.mx_einsum("aa,ab->b", x[:, :4], x, policy=p)
