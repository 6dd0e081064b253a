"""quantize / fake_quantize API: shapes, dtypes, pytree, compile caching, STE, stochastic rounding,
bad input, metrics."""

from __future__ import annotations

import importlib
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import numerics

quantize_module = importlib.import_module("numerics.quantize")  # the attribute is the function

QUANTIZED = [f for f in numerics.FORMAT_NAMES if f != "fp32"]


def _normal(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("name", numerics.FORMAT_NAMES)
def test_shapes_dtypes_and_pytree(name):
    x = _normal((3, 40, 5))
    q = numerics.quantize(x, name, axis=1)
    fmt = numerics.get_format(name)
    want_codes = {"mxfp6_e3m2": np.uint8, "mxfp6_e2m3": np.uint8, "mxint8": np.int8, "bf16": ml_dtypes.bfloat16,
                  "fp32": np.float32, "nvfp4": ml_dtypes.float4_e2m1fn, "mxfp4_e2m1": ml_dtypes.float4_e2m1fn,
                  "fp8_e4m3": ml_dtypes.float8_e4m3fn, "mxfp8_e4m3": ml_dtypes.float8_e4m3fn,
                  "mxfp8_e5m2": ml_dtypes.float8_e5m2}[name]
    assert q.codes.dtype == want_codes
    if fmt.block_size:
        nb = -(-40 // fmt.block_size)
        assert q.codes.shape == (3, nb * fmt.block_size, 5) and q.scales.shape == (3, nb, 5)
    assert (q.tensor_scale is not None) == fmt.tensor_scale
    leaves, tree = jax.tree_util.tree_flatten(q)
    assert all(isinstance(leaf, jax.Array) for leaf in leaves)
    if name in ("mxfp6_e3m2", "nvfp4", "fp8_e4m3"):  # a QuantizedArray crosses jit (one per kind)
        q = jax.jit(lambda v: numerics.quantize(v, name, axis=1))(x)
        assert jax.tree_util.tree_structure(q) == tree
    out = numerics.dequantize(q)
    assert out.shape == x.shape and out.dtype == jnp.float32
    np.testing.assert_array_equal(out, numerics.fake_quantize(x, name, axis=1))


@pytest.mark.parametrize("name", ["mxfp6_e2m3", "nvfp4", "fp8_e4m3"])
def test_vmap_matches_per_example_calls(name):
    """Tensor scales are per example under vmap, and their exact divisions survive batching."""
    x = _normal((3, 5, 40)) * np.float32(3.7)
    q = jax.vmap(lambda c: numerics.quantize(c, name))(x)
    out = jax.vmap(numerics.dequantize)(q)
    for i in range(3):
        np.testing.assert_array_equal(out[i], numerics.fake_quantize(x[i], name))
        if q.tensor_scale is not None:
            assert q.tensor_scale[i] == numerics.quantize(x[i], name).tensor_scale


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_narrow_input_dtypes_are_converted_exactly(dtype):
    x = jnp.asarray(_normal((4, 64)), dtype)
    np.testing.assert_array_equal(numerics.fake_quantize(x, "mxfp8_e4m3"),
                                  numerics.fake_quantize(x.astype(jnp.float32), "mxfp8_e4m3"))
    assert numerics.fake_quantize(x, "fp32").dtype == jnp.float32


def test_scalar_and_empty_inputs():
    assert numerics.fake_quantize(jnp.float32(3.3), "mxfp4_e2m1") == 3.0
    q = numerics.quantize(jnp.float32(-5.5), "nvfp4")  # the tensor amax maps to 6 · 448: exact up to rounding
    assert q.codes[0] == -6 and q.scales[0] == 448 and np.isclose(numerics.dequantize(q), -5.5, rtol=2e-7)
    assert numerics.fake_quantize(jnp.zeros((0, 7)), "mxfp8_e4m3", axis=0).shape == (0, 7)


def test_no_recompilation_for_repeated_calls():
    x = _normal((8, 64))
    numerics.fake_quantize(x, "mxfp6_e2m3")
    before = quantize_module._quantize_parts._cache_size()
    for seed in range(3):
        numerics.fake_quantize(_normal((8, 64), seed), "mxfp6_e2m3")
        numerics.fake_quantize(_normal((8, 64), seed), numerics.get_format("mxfp6_e2m3"))
    assert quantize_module._quantize_parts._cache_size() == before
    step = jax.jit(lambda v: numerics.fake_quantize(v, "nvfp4").sum())
    for seed in range(3):
        step(_normal((8, 64), seed))
    assert step._cache_size() == 1


@pytest.mark.parametrize("name", numerics.FORMAT_NAMES)
def test_straight_through_gradient(name):
    x = _normal((4, 48)) * 3
    w = _normal((4, 48), seed=1)
    g = jax.jit(jax.grad(lambda v: jnp.sum(w * numerics.fake_quantize(v, name, axis=0))))(x)
    np.testing.assert_array_equal(g, w)  # dq/dx := I, exactly
    gb = jax.grad(lambda v: jnp.sum(numerics.fake_quantize(v, name)))(jnp.asarray(x, jnp.bfloat16))
    assert gb.dtype == jnp.bfloat16 and np.all(np.asarray(gb, np.float32) == 1)


@pytest.mark.parametrize("name", ["mxfp4_e2m1", "mxfp8_e4m3", "mxfp6_e3m2", "mxint8", "nvfp4", "fp8_e4m3", "bf16"])
def test_stochastic_rounding_is_unbiased_between_neighbours(name):
    rows = 2048
    base = np.linspace(-1.9, 1.9, 32).astype(np.float32) * 1.37
    base[0] = base[16] = 4.0  # pin the block scales (MX: one block; NVFP4: two); may saturate, skipped
    x = np.tile(base, (rows, 1))
    if name in ("nvfp4", "fp8_e4m3"):
        x[0, 0] = 4.5  # tensor amax for the tensor scale; row 0 is excluded below
    out = np.asarray(numerics.fake_quantize(x, name, rounding="stochastic", key=jax.random.key(7)))[1:]
    even = np.asarray(numerics.fake_quantize(x, name))[1:]
    for j in sorted(set(range(32)) - {0, 16}):
        vals = np.unique(out[:, j])
        assert len(vals) <= 2 and vals.min() <= x[1, j] <= vals.max(), (j, vals, x[1, j])
        assert even[0, j] in vals or len(vals) == 2
        if len(vals) == 2:
            lo, hi = vals
            p = (x[1, j] - lo) / (hi - lo)
            sigma = np.sqrt(p * (1 - p) / (rows - 1))
            frac_up = np.mean(out[:, j] == hi)
            assert abs(frac_up - p) <= 5 * sigma + 1e-6, (name, j, frac_up, p)
    again = numerics.fake_quantize(x, name, rounding="stochastic", key=jax.random.key(7))
    other = numerics.fake_quantize(x, name, rounding="stochastic", key=jax.random.key(8))
    np.testing.assert_array_equal(np.asarray(again)[1:], out)
    assert not np.array_equal(np.asarray(other)[1:], out)


def test_rounding_away_differs_from_even_only_on_ties():
    x = np.array([[4.0, 2.5, 0.25, 0.75, 1.25, -2.5, 5.0, 2.4]], np.float32)  # E2M1 grid, X = 1
    np.testing.assert_array_equal(numerics.fake_quantize(x, "mxfp4_e2m1"), [[4, 2, 0, 1, 1, -2, 4, 2]])
    np.testing.assert_array_equal(numerics.fake_quantize(x, "mxfp4_e2m1", rounding="away"),
                                  [[4, 3, 0.5, 1, 1.5, -3, 6, 2]])


def test_nan_inf_and_zero_blocks():
    x = np.zeros((3, 64), np.float32)
    x[1, :32] = 1.0
    x[1, 3] = np.nan
    x[2, 40] = -np.inf
    x[2, :32] = 2.0
    for name in ("mxfp8_e4m3", "mxint8", "mxfp4_e2m1"):
        q = numerics.quantize(x, name)
        np.testing.assert_array_equal(q.scales, [[0, 0], [255, 0], [1 + 127 - numerics.get_format(name).element.emax, 255]])
        out = np.asarray(numerics.dequantize(q))
        assert np.all(out[0] == 0) and np.all(np.isnan(out[1, :32])) and np.all(out[1, 32:] == 0)
        assert np.all(out[2, :32] == 2) and np.all(np.isnan(out[2, 32:]))
    out = np.asarray(numerics.fake_quantize(x, "nvfp4"))
    assert np.all(np.isnan(out[1, :16])) and np.all(out[1, 16:32] == 1) and np.all(np.isnan(out[2, 32:48]))
    x[1, 4] = 1000.0  # the NVFP4 tensor scale ignores blocks holding NaN/Inf: amax_t = 2
    assert numerics.quantize(x, "nvfp4").tensor_scale == np.float32(2) / np.float32(6 * 448)


def test_bad_input_raises_naming_the_value():
    x = _normal((2, 32))
    with pytest.raises(ValueError, match="int32"):
        numerics.quantize(jnp.arange(32), "mxfp8_e4m3")
    with pytest.raises(ValueError, match="dtype int64"):
        numerics.fake_quantize([1, 2], "mxfp8_e4m3")
    np.testing.assert_array_equal(numerics.fake_quantize([1.0, 2.2], "mxfp4_e2m1"), [1.0, 2.0])
    with pytest.raises(ValueError, match="'fp7'"):
        numerics.fake_quantize(x, "fp7")
    with pytest.raises(ValueError, match="'ceil'"):
        numerics.quantize(x, "mxfp8_e4m3", scale_rule="ceil")
    with pytest.raises(ValueError, match="'nearest'"):
        numerics.quantize(x, "mxfp8_e4m3", rounding="nearest")
    with pytest.raises(ValueError, match="needs a PRNG key"):
        numerics.fake_quantize(x, "mxfp4_e2m1", rounding="stochastic")
    with pytest.raises(ValueError, match="rounding='even'"):
        numerics.fake_quantize(x, "mxfp4_e2m1", key=jax.random.key(0))
    with pytest.raises(ValueError, match="axis=2"):
        numerics.fake_quantize(x, "mxfp4_e2m1", axis=2)
    with pytest.raises(ValueError, match="'rceil' applies to MX formats only, not 'nvfp4'"):
        numerics.fake_quantize(x, "nvfp4", scale_rule="rceil")
    with pytest.raises(ValueError, match="identity"):
        numerics.fake_quantize(x, "fp32", rounding="away")


def test_metrics_against_closed_forms():
    x = np.array([3.0, 4.0, 0.0, 0.0], np.float32)  # ‖x‖ = 5
    xh = x + np.array([0.0, 0.0, 0.3, 0.4], np.float32)  # ‖e‖ = 0.5
    assert np.isclose(numerics.sqnr_db(x, xh), 20.0, rtol=1e-6)  # 10·log10(25 / 0.25)
    assert np.isclose(numerics.relative_l2_error(x, xh), 0.1, rtol=1e-6)
    assert np.isclose(numerics.max_abs_error(x, xh), 0.4, rtol=1e-6)
    big = x * np.float32(2.0**100)  # squares would overflow float32 without normalization
    assert np.isclose(numerics.sqnr_db(big, xh * np.float32(2.0**100)), 20.0, rtol=1e-6)
    assert numerics.sqnr_db(x, x) == np.inf
    with pytest.raises(ValueError, match=r"\(4,\).*\(3,\)"):
        numerics.sqnr_db(x, x[:3])
    # Gaussian data: each extra mantissa bit buys about 6 dB (E2M1 1 bit, E3M2 2, E4M3 3, INT8 6, bf16 7).
    g = _normal((64, 256))
    s = {f: float(numerics.sqnr_db(g, numerics.fake_quantize(g, f))) for f in
         ("mxfp4_e2m1", "mxfp6_e3m2", "mxfp8_e4m3", "mxint8", "bf16")}
    assert s["mxfp4_e2m1"] < s["mxfp6_e3m2"] < s["mxfp8_e4m3"] < s["mxint8"] < s["bf16"]
    assert 4 < s["mxfp8_e4m3"] - s["mxfp6_e3m2"] < 8
