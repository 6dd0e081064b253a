"""ops.py and efficiency.py: closed forms at the roofline prior, reparameterization, gradients."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from perfmodel import get_hardware, ops
from perfmodel.efficiency import (
    Efficiency, EfficiencyParams, constrain, datasheet_params, params_from_dict, params_to_dict,
    unconstrain,
)

H100 = get_hardware("h100-sxm")
GB200 = get_hardware("gb200-nvl72")
P = datasheet_params(H100)
RTOL_PRIOR = 2e-4  # the prior's efficiency is 1 − 1e-4 and its fixed costs are ~1 FLOP / 1 ns


def test_datasheet_gemm_is_the_roofline():
    m = n = k = 8192.0
    assert float(ops.gemm_time(P, H100, m, n, k, 2.0)) == pytest.approx(2 * m * n * k / 989.4e12, rel=RTOL_PRIOR)
    # GEMV: memory bound, weights dominate
    t = float(ops.gemm_time(P, H100, 1.0, n, k, 2.0))
    assert t == pytest.approx((n * k + n + k) * 2.0 / 3.35e12, rel=RTOL_PRIOR)


def test_cache_knee_closed_form():
    # Memory time × (1 − (1 − ρ)·K^p / (bytes^p + K^p)): ρ well inside the cache, 1 far beyond,
    # halfway at K; the sharpness p sets how fast it falls (at 2K: 1/(1 + 2^p) of the way left).
    e = constrain(P)
    rho, k, sharp = 0.4, 32e6, 3.0
    eff = e._replace(cache_bytes=e.cache_bytes.at[0].set(k), cache_ratio=e.cache_ratio.at[0].set(rho),
                     cache_sharpness=e.cache_sharpness.at[0].set(sharp))
    inv_bw = 1.0 / H100.hbm_bandwidth_bytes_per_s
    for nbytes, factor in ((k, 1 - (1 - rho) / 2), (2 * k, 1 - (1 - rho) / 9), (k / 2, 1 - (1 - rho) * 8 / 9),
                           (1e3, rho), (1e12, 1.0)):
        t = float(ops.roofline_time(eff, 0, 0.0, nbytes, 0.0, inv_bw))
        assert t == pytest.approx((nbytes + 1.0) * inv_bw / (1 - 1e-4) * factor + 1e-9, rel=2e-4)


def test_fp4_weights_use_the_fp4_peak_only_when_activations_are_fp4():
    big = 16384.0
    t_w4a4 = float(ops.gemm_time(datasheet_params(GB200), GB200, big, big, big, 0.5))
    t_w4a16 = float(ops.gemm_time(datasheet_params(GB200), GB200, big, big, big, 2.0, weight_bytes_per_elem=0.5))
    assert t_w4a4 == pytest.approx(2 * big**3 / 10e15, rel=RTOL_PRIOR)
    assert t_w4a16 == pytest.approx(2 * big**3 / 2.5e15, rel=RTOL_PRIOR)


def test_decode_attention_gqa_and_latent_bytes():
    b, s, q, kvh, d = 8.0, 4096.0, 32.0, 8.0, 128.0
    t = float(ops.decode_attention_time(P, H100, b, s, q, kvh, d, d, 2.0))
    assert t == pytest.approx((b * s * kvh * 2 * d * 2 + b * q * 2 * d * 2) / 3.35e12, rel=RTOL_PRIOR)
    _, latent_bytes = ops.decode_attention_cost(b, s, 128.0, 1.0, 576.0, 512.0, 1.0, latent=True)
    assert float(latent_bytes) == b * s * 576 + b * 128 * (576 + 512)


def test_prefill_attention_causal_flops():
    flops, _ = ops.prefill_attention_cost(2.0, 1024.0, 1024.0, 16.0, 4.0, 128.0, 128.0, 2.0)
    assert float(flops) == 2 * 2 * 16 * (1024 * 1025 / 2) * 256
    full, _ = ops.prefill_attention_cost(2.0, 1024.0, 1024.0, 16.0, 4.0, 128.0, 128.0, 2.0, causal=False)
    assert float(full) == 4 * 2 * 16 * 1024 * 1024 * 128


@pytest.mark.parametrize("kind,steps,factor", [
    ("all_reduce", 6, 2 * 7 / 8), ("all_gather", 3, 7 / 8), ("reduce_scatter", 3, 7 / 8),
    ("all_to_all", 3, 7 / 8), ("send_recv", 1, 1.0),
])
def test_collectives_closed_form(kind, steps, factor):
    t = float(ops.collective_time(P, H100, kind, 1e6, 8.0))
    assert t == pytest.approx(steps * 1e-6 + factor * 1e6 / 450e9, rel=RTOL_PRIOR)
    assert float(ops.collective_time(P, H100, kind, 1e6, 1.0)) == 0.0


def test_collective_levels():
    # 16 devices do not fit an 8-GPU NVLink domain: scale-out at 50 GB/s, 5 µs per step
    t = float(ops.collective_time(P, H100, "all_gather", 1e6, 16.0))
    assert t == pytest.approx(4 * 5e-6 + 15 / 16 * 1e6 / 50e9, rel=RTOL_PRIOR)
    t72 = float(ops.collective_time(datasheet_params(GB200), GB200, "all_gather", 1e6, 64.0))
    assert t72 == pytest.approx(6 * 1e-6 + 63 / 64 * 1e6 / 900e9, rel=RTOL_PRIOR)


def test_unknown_collective_raises():
    with pytest.raises(ValueError, match="allreduce"):
        ops.collective_time(P, H100, "allreduce", 1e6, 8.0)


def test_smooth_max_bounds_and_symmetry():
    a = jnp.logspace(-9, -1, 50)
    b = a[::-1]
    s = ops.smooth_max(a, b)
    hi = jnp.maximum(a, b)
    assert bool(jnp.all(s >= hi)) and bool(jnp.all(s <= hi * 2 ** 0.125 * (1 + 1e-6)))
    np.testing.assert_array_equal(np.asarray(s), np.asarray(ops.smooth_max(b, a)))
    assert float(ops.smooth_max(0.0, 0.0)) == 0.0
    exact = (np.asarray(a, np.float64) ** 8 + np.asarray(b, np.float64) ** 8) ** 0.125
    np.testing.assert_allclose(np.asarray(s), exact, rtol=2e-6)  # the documented polynomial error
    assert float(ops.smooth_max(3.0, 1e-3)) == 3.0  # one term dominates: exactly the roofline


def test_smooth_max_is_c1_at_ties():
    # d/da (a^8 + b^8)^(1/8) at a = b is 2^(-7/8); the polynomial form matches it from both sides
    grad_a = jax.grad(ops.smooth_max, argnums=0)
    for a in (1.0 - 1e-4, 1.0, 1.0 + 1e-4):
        assert float(grad_a(jnp.float32(a), jnp.float32(1.0))) == pytest.approx(2 ** -0.875, abs=2e-3)


def test_reparameterization_round_trip_and_json(tmp_path):
    p2 = unconstrain(constrain(P))
    for x, y in zip(jax.tree.leaves(P), jax.tree.leaves(p2)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-4)
    path = tmp_path / "p.json"
    path.write_text(json.dumps(params_to_dict(P)))
    p3 = params_from_dict(json.loads(path.read_text()))
    for x, y in zip(jax.tree.leaves(P), jax.tree.leaves(p3)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    # a profile written before the knee had a sharpness loads with the p = 1 knee it was fitted with
    before = {k: v for k, v in params_to_dict(P)["unconstrained"].items() if k != "cache_sharpness_log"}
    np.testing.assert_array_equal(np.asarray(constrain(params_from_dict({"unconstrained": before})).cache_sharpness),
                                  np.ones(6, np.float32))


def test_any_real_vector_is_valid():
    key = jax.random.PRNGKey(0)
    leaves = jax.tree.leaves(P)
    keys = jax.random.split(key, len(leaves))
    wild = jax.tree.unflatten(jax.tree.structure(P), [10 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])
    t = ops.gemm_time(wild, H100, 64.0, 64.0, 64.0, 2.0)
    c = ops.collective_time(wild, H100, "all_reduce", 1e3, 4.0)
    assert bool(jnp.isfinite(t)) and float(t) > 0 and bool(jnp.isfinite(c)) and float(c) > 0


@pytest.mark.parametrize("bad", [
    {"unconstrained": {}},
    {"unconstrained": {**params_to_dict(P)["unconstrained"], "compute_logit": [0.0, 1.0]}},
    {"unconstrained": {**params_to_dict(P)["unconstrained"], "bogus": [1.0]}},
    {"unconstrained": {**params_to_dict(P)["unconstrained"], "link_logit": [0.0, float("nan"), 0.0]}},
    [1, 2],
])
def test_params_from_dict_rejects_malformed(bad):
    with pytest.raises(ValueError):
        params_from_dict(bad)


def test_unconstrain_rejects_out_of_range():
    e = constrain(P)._replace(compute_eff=jnp.full(6, 1.5))
    with pytest.raises(ValueError, match="compute_eff"):
        unconstrain(e)
    with pytest.raises(ValueError, match="efficiency"):
        datasheet_params(H100, efficiency=1.0)


def _mid_params():
    # away from saturation, so finite differences see every parameter
    e = constrain(P)
    return unconstrain(Efficiency(
        compute_eff=jnp.full(6, 0.6), compute_half_flops=jnp.full(6, 1e9), memory_eff=jnp.full(6, 0.7),
        memory_half_bytes=jnp.full(6, 1e5), cache_bytes=jnp.full(6, 4e6), cache_ratio=jnp.full(6, 0.5),
            cache_sharpness=jnp.full(6, 2.0),
        overhead_s=jnp.full(6, 5e-6), link_alpha_s=e.link_alpha_s * 2,
        link_eff=jnp.full(3, 0.8), power_weight=e.power_weight,
    ))


def _scaled(fn):
    # check_grads in float32 needs O(1) outputs: report microseconds
    return lambda *a: 1e6 * fn(*a)


def test_check_grads_gemm_and_attention():
    pm = _mid_params()
    check_grads(_scaled(lambda p, m, n, k: ops.gemm_time(p, H100, m, n, k, 2.0)),
                (pm, 96.0, 4096.0, 4096.0), order=1, modes=("rev",), eps=1e-2, atol=2e-2, rtol=2e-2)
    check_grads(_scaled(lambda p, b, s: ops.decode_attention_time(p, H100, b, s, 32.0, 8.0, 128.0, 128.0, 2.0)),
                (pm, 8.0, 4096.0), order=1, modes=("rev",), eps=1e-2, atol=2e-2, rtol=2e-2)


def test_check_grads_collective():
    pm = _mid_params()
    check_grads(_scaled(lambda p, nbytes, n: ops.collective_time(p, H100, "all_reduce", nbytes, n)),
                (pm, 3e6, 5.5), order=1, modes=("rev",), eps=1e-2, atol=2e-2, rtol=2e-2)


def test_vmap_over_sizes():
    m = jnp.arange(1.0, 1025.0)
    t = jax.jit(jax.vmap(lambda mm: ops.gemm_time(P, H100, mm, 4096.0, 4096.0, 2.0)))(m)
    assert t.shape == (1024,) and bool(jnp.all(jnp.diff(t) > 0))
