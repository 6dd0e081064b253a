"""serving.py and energy.py: rate matching closed forms, Pareto frontier, energy accounting."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from perfmodel import datasheet_params, get_hardware, get_model
from perfmodel.energy import disaggregated_energy, energy_per_token, step_power
from perfmodel.serving import (
    colocated, disaggregated, envelope, pareto_front, pareto_mask, sla_mask,
)
from perfmodel.step import StepCost, decode_step, make_layout_arrays

H200 = get_hardware("h200-sxm")
P = datasheet_params(H200)
FP8 = dict(weight_bits=8.0, kv_bits=8.0, act_bits=8.0, comm_bits=8.0)
MODEL = get_model("llama-3.1-70b")


def _step(time_s, period_s, busy=(0.0, 0.0, 0.0)):
    z = jnp.float32(0.0)
    w = np.asarray(jax.nn.sigmoid(P.power_logit))
    return StepCost(jnp.float32(time_s), jnp.float32(period_s), z, z, z, z, z, z, z, *map(jnp.float32, busy),
                    jnp.float32(w @ np.asarray(busy)))


PF_LAY = make_layout_arrays(tpa=8, tpf=8, batch=2, **FP8)
DC_LAY = make_layout_arrays(tpa=8, tpf=8, batch=64, **FP8)
STEPS = (_step(1.0, 0.5), _step(0.02, 0.02))  # TTFT 1 s, a prefill batch every 0.5 s; TTL 20 ms


def test_rate_matching_closed_form():
    s = disaggregated(MODEL, H200, P, PF_LAY, DC_LAY, 4096.0, 100.0, steps=STEPS)
    r_p, r_d = 2 / 0.5, 64 / (0.02 * 100)  # requests/s per replica: 4 and 32
    alpha = (r_d / r_p) * (8 / 8)
    assert float(s.alpha) == pytest.approx(alpha)
    assert float(s.tokens_per_s_per_gpu) == pytest.approx(64 / (0.02 * 8 * (1 + alpha)), rel=1e-6)
    assert float(s.tokens_per_s_per_user) == pytest.approx(50.0)
    assert float(s.ttft_s) > 1.0  # plus the exposed KV transfer


@pytest.mark.parametrize("alpha,served_per_decode_gpu", [(0.5, 0.5 * 4 / 8), (20.0, 32 / 8)])
def test_fixed_alpha_is_limited_by_the_slower_pool(alpha, served_per_decode_gpu):
    s = disaggregated(MODEL, H200, P, PF_LAY, DC_LAY, 4096.0, 100.0, alpha=alpha, steps=STEPS)
    assert float(s.tokens_per_s_per_gpu) == pytest.approx(100 * served_per_decode_gpu / (1 + alpha), rel=1e-6)


def test_rate_matched_alpha_beats_every_fixed_alpha():
    matched = float(disaggregated(MODEL, H200, P, PF_LAY, DC_LAY, 4096.0, 100.0, steps=STEPS).tokens_per_s_per_gpu)
    for a in np.geomspace(0.1, 100, 31):
        fixed = disaggregated(MODEL, H200, P, PF_LAY, DC_LAY, 4096.0, 100.0, alpha=float(a), steps=STEPS)
        assert float(fixed.tokens_per_s_per_gpu) <= matched * (1 + 1e-6)


def test_colocated_piggybacking_slows_decode():
    s = colocated(MODEL, H200, P, DC_LAY, 4096.0, 512.0)
    pure = decode_step(MODEL, H200, P, DC_LAY, 4096.0 + 256.0)
    assert float(s.ttl_s) > float(pure.time_s)
    assert float(s.tokens_per_s_per_gpu) == pytest.approx(64 / (float(s.ttl_s) * 8), rel=1e-6)
    # 64 decodes ask for 64·4096/512 = 512 prompt tokens per iteration: a prompt takes 8 iterations
    assert float(s.ttft_s) == pytest.approx(8 * float(s.ttl_s), rel=1e-6)
    assert bool(sla_mask(s, ttft_limit_s=10.0)) and not bool(sla_mask(s, ttl_limit_s=1e-4))


def _brute_force_front(x, y):
    on = np.zeros(len(x), bool)
    for i in range(len(x)):
        dominated = np.any((x >= x[i]) & (y >= y[i]) & ((x > x[i]) | (y > y[i])))
        duplicate_before = np.any((x[:i] == x[i]) & (y[:i] == y[i]))
        on[i] = not dominated and not duplicate_before
    return on


def test_pareto_mask_matches_brute_force():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 30, 400).astype(np.float32)  # integer grid: many ties
    y = rng.integers(0, 30, 400).astype(np.float32)
    got = np.asarray(jax.jit(pareto_mask)(x, y))
    want = _brute_force_front(x, y)
    # ties between exact duplicates may keep a different representative; compare the point sets
    assert {(a, b) for a, b in zip(x[got], y[got])} == {(a, b) for a, b in zip(x[want], y[want])}
    assert got.sum() == want.sum()
    valid = rng.random(400) < 0.5
    got_v = np.asarray(pareto_mask(x, y, valid))
    assert not np.any(got_v & ~valid)
    assert got_v.sum() == _brute_force_front(x[valid], y[valid]).sum()


def test_envelope():
    xf, yf = pareto_front(np.array([1.0, 2.0, 3.0, 2.5]), np.array([10.0, 5.0, 1.0, 0.5]))
    np.testing.assert_array_equal(xf, [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(envelope(xf, yf, [0.5, 1.0, 1.5, 3.0, 4.0]), [10.0, 10.0, 5.0, 1.0, -np.inf])


def test_power_and_energy_closed_form():
    idle = step_power(H200, P, _step(1.0, 1.0))
    assert float(idle) == pytest.approx(H200.idle_power_w + H200.host_power_w)
    busy = _step(0.01, 0.01, busy=(0.002, 0.008, 0.001))
    w = np.asarray(jax.nn.sigmoid(P.power_logit))
    power = H200.idle_power_w + (H200.peak_power_w - H200.idle_power_w) * (w @ [0.2, 0.8, 0.1]) + H200.host_power_w
    e = energy_per_token(H200, P, busy, 64.0, 8.0)
    assert float(e.power_w) == pytest.approx(power, rel=1e-6)
    assert float(e.joules_per_token) == pytest.approx(power * 8 * 0.01 / 64, rel=1e-6)
    assert float(e.tokens_per_joule) == pytest.approx(1 / float(e.joules_per_token), rel=1e-6)


def test_real_step_power_within_idle_and_peak():
    st = decode_step(MODEL, H200, P, DC_LAY, 4096.0)
    p = float(step_power(H200, P, st)) - H200.host_power_w
    assert H200.idle_power_w < p < H200.peak_power_w
    w = np.asarray(jax.nn.sigmoid(P.power_logit))  # the weighted accumulator equals the weighted parts
    parts = np.asarray([st.busy_compute_s, st.busy_memory_s, st.busy_link_s])
    assert float(st.weighted_busy_s) == pytest.approx(float(w @ parts), rel=1e-5)


def test_disaggregated_energy_weights_the_pools():
    s = disaggregated(MODEL, H200, P, PF_LAY, DC_LAY, 4096.0, 100.0, steps=STEPS)
    e = disaggregated_energy(H200, H200, P, P, *STEPS, s, PF_LAY, DC_LAY)
    idle = H200.idle_power_w + H200.host_power_w  # the synthetic steps do no work
    assert float(e.power_w) == pytest.approx(idle, rel=1e-6)
    assert float(e.joules_per_token) == pytest.approx(idle / float(s.tokens_per_s_per_gpu), rel=1e-6)
