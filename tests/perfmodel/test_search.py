"""search.py: exhaustive search vs a plain Python loop, gradient search vs known optima, penalties'
gradients, integer pools, clear errors for infeasible cases.

One small space (tiny-dense on a GB200 slowed 1000× with 1.5 MB of HBM, so memory, TTL and TTFT all
bind; ≤ 4 GPUs per replica, ≤ 8 in all) is
shared by every test, so the optimizer and the point evaluators compile once per serving mode.
"""

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from perfmodel import Workload, datasheet_params, get_hardware, get_model
from perfmodel.search import (
    MODES, N_THETA, Case, SearchSpace, batch_grid, exhaustive_search, gradient_search, phase_layouts,
    phase_tables, relaxed_loss, relaxed_terms, sla_sweep, solve_pools,
)
from perfmodel.search import _Pool
from perfmodel.serving import colocated, disaggregated, replica_gpus
from perfmodel.step import LayoutArrays

# Every rate × 1e-3 and 1.5 MB of HBM: the tiny model then trades weight reads, KV, compute
# and collective latency as a large model does on the real part.
HW = get_hardware("gb200-nvl72").scaled(1e-3, hbm_capacity_bytes=1.5e6)
TINY = get_model("tiny-dense")
P = datasheet_params(HW)
SPACE = SearchSpace(max_gpus=4, max_total_gpus=8, decode_batches=(1, 2, 3, 4, 6, 8, 12, 16),
                    prefill_batches=(1, 2, 4), pp_options=(1, 2), chunks=(0, 64), weight_format="bf16",
                    kv_format="bf16", act_format="bf16", comm_format="bf16")
ISL, OSL = 256, 64
STEPS = 60


def _case(ttft=3e-3, ttl=1e-4, space=SPACE):
    return Case(TINY, HW, Workload(ISL, OSL, ttft_limit_s=ttft, ttl_limit_s=ttl), space, name="tiny")


@pytest.fixture(scope="module")
def tables():
    return phase_tables(_case())


def _rows(lay: LayoutArrays):
    return [LayoutArrays(*(np.float32(np.asarray(x)[i]) for x in lay)) for i in range(len(lay.tpa))]


def _reference(case):
    """A plain Python loop over every (prefill, decode, n_p, n_d) and every co-located layout,
    costed by `serving.disaggregated` / `serving.colocated`: (best tokens/s/GPU, frontier points,
    the Serving of every pair, the Serving of every co-located layout)."""
    w, G = case.workload, case.space.max_total_gpus
    pf, _ = phase_layouts(case, "prefill")
    dc, _ = phase_layouts(case, "decode")
    both = jax.jit(lambda p, d: disaggregated(TINY, HW, P, p, d, float(ISL), float(OSL)))
    s = both(LayoutArrays(*(jnp.asarray(x)[:, None] for x in pf)), LayoutArrays(*(jnp.asarray(x)[None, :] for x in dc)))
    s = jax.tree.map(lambda x: np.broadcast_to(np.asarray(x), (len(pf.tpa), len(dc.tpa))), s)
    g_p, g_ds = np.asarray(replica_gpus(pf)), np.asarray(replica_gpus(dc))
    best, points = 0.0, []
    for i, j in itertools.product(range(len(pf.tpa)), range(len(dc.tpa))):
        if not s.fits[i, j] or s.ttft_s[i, j] > w.ttft_limit_s:
            continue
        g_d = float(g_ds[j])
        r_d = float(dc.batch[j]) / (float(s.ttl_s[i, j]) * OSL)  # requests/s of a decode replica
        r_p = r_d * g_p[i] / (float(s.alpha[i, j]) * g_d)  # from α = (r_d / r_p)(g_p / g_d)
        value = 0.0
        for n_p in range(1, G + 1):
            for n_d in range(1, G + 1):
                if n_p * g_p[i] + n_d * g_d <= G:
                    value = max(value, OSL * min(n_p * r_p, n_d * r_d) / (n_p * g_p[i] + n_d * g_d))
        points.append((1.0 / float(s.ttl_s[i, j]), value))
        if s.ttl_s[i, j] <= w.ttl_limit_s:
            best = max(best, value)
    co = jax.tree.map(np.asarray, jax.jit(lambda l: colocated(TINY, HW, P, l, float(ISL), float(OSL)))(dc))
    for j in range(len(dc.tpa)):
        if co.fits[j] and co.ttft_s[j] <= w.ttft_limit_s and co.gpus[j] <= G:
            points.append((1.0 / float(co.ttl_s[j]), float(co.tokens_per_s_per_gpu[j])))
            if co.ttl_s[j] <= w.ttl_limit_s:
                best = max(best, float(co.tokens_per_s_per_gpu[j]))
    return best, points, s, co


def test_exhaustive_agrees_with_python_loop(tables):
    case = _case()
    res = exhaustive_search(case, tables=tables)
    best, points, dis, co = _reference(case)
    # the per-pool tables compose to serving.disaggregated / serving.colocated at every point
    mp, md, mc = tables["prefill"].metrics, tables["decode"].metrics, tables["colocated"].metrics
    np.testing.assert_allclose(OSL / (1 / mp.rate_per_gpu[:, None] + 1 / md.rate_per_gpu[None, :]),
                               dis.tokens_per_s_per_gpu, rtol=2e-5)
    np.testing.assert_allclose(np.broadcast_to(mp.ttft_s[:, None], dis.ttft_s.shape), dis.ttft_s, rtol=1e-6)
    np.testing.assert_allclose(np.broadcast_to(md.ttl_s[None, :], dis.ttl_s.shape), dis.ttl_s, rtol=1e-6)
    np.testing.assert_array_equal((mp.mem_ratio[:, None] <= 1) & (md.mem_ratio[None, :] <= 1), dis.fits)
    np.testing.assert_allclose(mc.rate_per_gpu * OSL, co.tokens_per_s_per_gpu, rtol=1e-6)
    np.testing.assert_allclose(mc.ttft_s, co.ttft_s, rtol=1e-6)
    np.testing.assert_array_equal(mc.mem_ratio <= 1, co.fits)
    assert res.best.tokens_per_s_per_gpu == pytest.approx(best, rel=2e-5)
    assert res.evaluations == sum(len(t.family) for t in tables.values()) > 400
    # frontier: every reference point lies on or under it, and each frontier point is attained
    x, y = res.frontier
    px, py = np.asarray(points).T
    for xi, yi in zip(px, py):
        assert yi <= np.max(np.where(x >= xi * (1 - 1e-6), y, 0.0)) * (1 + 2e-5)
    for xi, yi in zip(x, y):
        assert np.any((np.abs(px / xi - 1) < 1e-5) & (np.abs(py / yi - 1) < 2e-5))
    d = res.best  # the returned design is consistent with its own metrics
    assert d.ttl_s <= case.workload.ttl_limit_s and d.ttft_s <= case.workload.ttft_limit_s
    assert d.gpus <= case.space.max_total_gpus


def test_pool_rows_are_the_enumerated_layouts():
    case = _case()
    for phase in ("prefill", "decode"):
        pool = _Pool(case, phase)
        lay, _ = phase_layouts(case, phase)
        want = {tuple(float(np.asarray(x)[i]) for x in lay) for i in range(len(lay.tpa))}
        got = {tuple(float(v) for v in pool.row(si, bi)) for si in range(len(pool))
               for bi in range(pool.min_batch_index(si), len(pool.grid))}
        assert got == want


def test_solve_pools_matches_brute_force():
    rng = np.random.default_rng(0)
    r_p, r_d = rng.uniform(0.1, 5, 40), rng.uniform(0.1, 5, 40)
    g_p, g_d = rng.choice([1, 2, 4, 8], 40), rng.choice([1, 2, 4, 8], 40)
    v, n_p, n_d = solve_pools(r_p, g_p, r_d, g_d, 100.0, 24)
    for k in range(40):
        want = max((100 * min(a * r_p[k], b * r_d[k]) / (a * g_p[k] + b * g_d[k])
                    for a in range(1, 25) for b in range(1, 25) if a * g_p[k] + b * g_d[k] <= 24), default=0.0)
        assert v[k] == pytest.approx(want, rel=1e-12)
        if want:
            assert n_p[k] * g_p[k] + n_d[k] * g_d[k] <= 24
            got = 100 * min(n_p[k] * r_p[k], n_d[k] * r_d[k]) / (n_p[k] * g_p[k] + n_d[k] * g_d[k])
            assert got == pytest.approx(want)


def test_gradient_matches_exhaustive_on_small_space(tables):
    case = _case()
    ex = exhaustive_search(case, tables=tables)
    gr = gradient_search(case, starts=8, steps=STEPS)
    assert gr.best.tokens_per_s_per_gpu == pytest.approx(ex.best.tokens_per_s_per_gpu, rel=1e-6)
    assert gr.evaluations == 8 * STEPS * 3 + sum(v for k, v in gr.details["evaluations"].items() if k != "optimizer")


def test_gradient_finds_planted_optimum(tables):
    """Limits planted at the fastest prefill (TTFT) and decode (TTL) layouts leave only those
    feasible: the optimum is that pair with its best integer pools, known without a search."""
    mp, md = tables["prefill"].metrics, tables["decode"].metrics
    fit_p, fit_d = mp.mem_ratio <= 1, md.mem_ratio <= 1
    ttft = float(mp.ttft_s[fit_p].min()) * (1 + 1e-6)
    ttl = float(md.ttl_s[fit_d].min()) * (1 + 1e-6)
    i = np.flatnonzero(fit_p & (mp.ttft_s <= ttft))
    j = np.flatnonzero(fit_d & (md.ttl_s <= ttl))
    v, _, _ = solve_pools((mp.rate_per_gpu * mp.gpus)[i][:, None], mp.gpus[i][:, None],
                          (md.rate_per_gpu * md.gpus)[j][None, :], md.gpus[j][None, :], OSL, SPACE.max_total_gpus)
    case = _case(ttft=ttft, ttl=ttl)
    assert np.all(tables["colocated"].metrics.ttl_s > ttl)  # co-located cannot meet it
    gr = gradient_search(case, starts=8, steps=STEPS)
    assert gr.best.mode == "disaggregated"
    assert gr.best.tokens_per_s_per_gpu == pytest.approx(float(v.max()), rel=1e-6)


def test_sla_sweep_traces_frontier_without_recompiling(tables):
    limits = [2e-4, 1e-4, 6e-5]
    compiles = []
    sla_sweep(_case(), limits[:1], starts=8, steps=STEPS, warm_steps=STEPS)  # compiled here (or before)
    jax.monitoring.register_event_duration_secs_listener(
        lambda e, *_a, **_k: compiles.append(e) if e == "/jax/core/compile/backend_compile_duration" else None)
    out = sla_sweep(_case(), limits, starts=8, steps=STEPS, warm_steps=STEPS)
    assert not compiles  # the TTL limit is traced: one compiled optimizer serves the whole sweep
    for ttl, r in zip(limits, out):
        ex = exhaustive_search(_case(ttl=ttl), tables=tables)
        assert r.best.ttl_s <= ttl
        assert r.best.tokens_per_s_per_gpu <= ex.best.tokens_per_s_per_gpu * (1 + 1e-6)
        assert r.best.tokens_per_s_per_gpu >= 0.98 * ex.best.tokens_per_s_per_gpu


def test_relaxed_loss_and_penalties_are_differentiable():
    theta = jnp.asarray(np.random.default_rng(1).normal(0, 1, (1, N_THETA)), jnp.float32)
    args = (TINY, HW, P, SPACE, float(ISL), float(OSL), 3e-3, 1e-4)
    _, viol, integ = relaxed_terms("colocated", theta, *args, 8.0)
    assert {"colocated/memory", "colocated/ttl", "colocated/ttft", "colocated/tpf_divides_ffn",
            "colocated/gpus_per_replica", "total_gpus"} <= set(viol)
    assert all(np.isfinite(v) for v in viol.values()) and np.isfinite(integ)

    def f(t):  # the optimizer's loss, and the penalty and integrality terms on their own
        _, v, i = relaxed_terms("colocated", t, *args, 8.0)
        loss = relaxed_loss("colocated", t, *args, beta=8.0, weight=10.0, integrality=1.0)
        return jnp.stack([loss, sum(x * x for x in v.values()), i])

    f = jax.jit(f)
    assert np.all(np.asarray(f(theta))[1:] > 1e-3)  # this point pays penalties: the check is not vacuous
    # forward mode (one jvp compilation; reverse mode is its exact transpose)
    check_grads(f, (theta,), order=1, modes=("fwd",), eps=1e-2, atol=2e-2, rtol=2e-2)


def test_model_that_fits_nowhere_raises_clearly():
    big = Case(get_model("llama-3.1-405b"), get_hardware("h100-sxm"), Workload(1024, 128),
               SearchSpace(max_gpus=2, decode_batches=(1, 2)))
    for search in (exhaustive_search, gradient_search):
        with pytest.raises(ValueError, match=r"llama-3.1-405b fits on no layout: its weights alone need [0-9.]+ GB"):
            search(big)


def test_kv_that_fits_nowhere_and_impossible_sla_raise_clearly(tables):
    long = dataclasses.replace(_case(), workload=Workload(1 << 16, OSL, ttft_limit_s=1.0, ttl_limit_s=1.0))
    with pytest.raises(ValueError, match=r"gradient search found no feasible design of tiny-dense .*\(ISL=65536"):
        gradient_search(long, starts=8, steps=STEPS)  # weights fit, a 64k-token KV cache does not
    with pytest.raises(ValueError, match=r"TTL ≤ 1e-09 s"):
        gradient_search(_case(ttl=1e-9), starts=8, steps=STEPS)
    with pytest.raises(ValueError, match=r"decode: best TTL [0-9.e-]+ s \(limit 1e-09 s\)"):
        exhaustive_search(_case(ttl=1e-9), tables=tables)
    huge = {k: t._replace(metrics=t.metrics._replace(mem_ratio=t.metrics.mem_ratio + 1.0))  # every footprint > HBM
            for k, t in tables.items()}
    with pytest.raises(ValueError, match=r"colocated: no layout fits in HBM \(smallest footprint [0-9.]+×"):
        exhaustive_search(_case(), tables=huge)


def test_space_validation():
    with pytest.raises(ValueError, match="max_gpus=6"):
        SearchSpace(max_gpus=6)
    with pytest.raises(ValueError, match="decode_batches"):
        SearchSpace(decode_batches=(4, 2))
    with pytest.raises(ValueError, match="modes"):
        SearchSpace(modes=("pooled",))
    with pytest.raises(ValueError, match="weight_format='fp5'"):
        SearchSpace(weight_format="fp5")
    assert batch_grid(4096)[:12] == tuple(range(1, 13)) and batch_grid(4096)[-1] == 4096
    assert set(MODES) == set(SPACE.modes)
