"""ratematch.py: rate-matched α against the closed form, fixed α, reproducible traces, elastic plans
against per-interval minima and the best static configuration.

The tiny model on a GB200 slowed 1000× (as in test_search.py) keeps every table small.
"""

import dataclasses
import math

import numpy as np
import pytest

from perfmodel import Workload, get_hardware, get_model
from perfmodel.ratematch import REGIMES, elastic_candidates, elastic_scaling, rate_matching, traffic_trace
from perfmodel.search import Case, SearchSpace, best_per_size, phase_metrics, phase_tables
from perfmodel.step import make_layout_arrays
from perfmodel import datasheet_params


HW = get_hardware("gb200-nvl72").scaled(1e-3, hbm_capacity_bytes=1.5e6)
TINY = get_model("tiny-dense")
SPACE = SearchSpace(max_gpus=4, max_total_gpus=8, decode_batches=(1, 2, 3, 4, 6, 8, 12, 16),
                    prefill_batches=(1, 2, 4), pp_options=(1, 2), chunks=(0, 64), weight_format="bf16",
                    kv_format="bf16", act_format="bf16", comm_format="bf16")
CASE = Case(TINY, HW, Workload(256, 64, ttft_limit_s=3e-3), SPACE)
TTLS = (3e-4, 1.5e-4, 1e-4, 6e-5)


@pytest.fixture(scope="module")
def tables():
    return phase_tables(CASE)


def test_rate_matching_is_the_best_ratio_and_moves_with_ttl(tables):
    rows = rate_matching(CASE, TTLS, tables=tables)
    for ttl, row in zip(TTLS, rows):
        w = dataclasses.replace(CASE.workload, ttl_limit_s=ttl)
        r_p, r_d = (max(float(tables[p].metrics.rate_per_gpu[i]) for i in best_per_size(tables[p], w).values())
                    for p in ("prefill", "decode"))
        assert row["alpha"] == pytest.approx(r_d / r_p, rel=1e-9)
        assert row["rate_matched"] == pytest.approx(64 / (1 / r_p + 1 / r_d), rel=1e-9)
        # no fixed ratio beats rate matching, and α* attains it (fluid limit)
        grid = np.geomspace(0.05, 20, 2001)
        fixed = 64 * np.minimum(grid * r_p, r_d) / (1 + grid)
        assert fixed.max() <= row["rate_matched"] * (1 + 1e-9)
        assert fixed.max() >= row["rate_matched"] * (1 - 5e-3)
        for a, v in row["fixed"].items():
            assert v == pytest.approx(64 * min(a * r_p, r_d) / (1 + a), rel=1e-9) and v <= row["rate_matched"]
    alphas = [r["alpha"] for r in rows]
    assert alphas[0] > alphas[-1]  # tighter TTL → slower decode per GPU → fewer prefill GPUs per decode GPU
    with pytest.raises(ValueError, match="missing"):
        rate_matching(CASE, TTLS, tables={"decode": tables["decode"]})


def test_traffic_trace_is_reproducible_and_documented():
    a, b, c = traffic_trace(7), traffic_trace(7), traffic_trace(8)
    for x, y in zip(a[:-1], b[:-1]):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.arrival_rate_per_s, c.arrival_rate_per_s)
    assert len(a.t_s) == 30 and a.interval_s == 120.0 and np.all(a.arrival_rate_per_s > 0)
    assert set(a.regime) <= set(REGIMES)
    for lengths in (a.isl, a.osl):
        assert np.all(np.log2(lengths) == np.round(np.log2(lengths)))  # powers of two
    assert a.arrival_rate_per_s.max() / a.arrival_rate_per_s.min() > 2  # the trace varies
    with pytest.raises(ValueError, match="interval_s=0"):
        traffic_trace(0, interval_s=0)


TRACE = traffic_trace(3, duration_s=1200.0, interval_s=120.0, mean_rate_per_s=2e4, length_jitter=0.0,
                      regimes={"short": (256, 64), "long": (512, 32)})
SLA = dict(ttft_limit_s=3e-3, ttl_limit_s=1.5e-4)


@pytest.fixture(scope="module")
def candidates():
    return elastic_candidates(TINY, HW, TRACE, space=SPACE, **SLA)


def test_elastic_plan_serves_every_interval_and_beats_static(candidates):
    kw = dict(space=SPACE, max_cluster_gpus=4096, candidates=candidates, **SLA)
    free = elastic_scaling(TINY, HW, TRACE, reprovision_s=0.0, **kw)
    costly = elastic_scaling(TINY, HW, TRACE, reprovision_s=60.0, **kw)
    never = elastic_scaling(TINY, HW, TRACE, reprovision_s=1e9, **kw)
    assert len({(p["isl"], p["osl"]) for p in free.plan}) == 2
    for res in (free, costly, never):
        assert res.static_goodput_per_gpu > 0
        assert res.goodput_per_gpu >= res.static_goodput_per_gpu * (1 - 1e-9)  # staying static is allowed
        for p, lam in zip(res.plan, TRACE.arrival_rate_per_s):
            assert p["gpus"] <= 4096 and p["arrival_rate_per_s"] == lam
    assert free.reprovision_gpu_seconds == 0.0
    assert free.goodput_per_gpu >= costly.goodput_per_gpu >= never.goodput_per_gpu * (1 - 1e-9)
    assert never.reprovision_gpu_seconds == 0.0  # loading anything costs more than any saving
    tokens = float(np.sum(TRACE.arrival_rate_per_s * TRACE.osl) * TRACE.interval_s)
    assert free.tokens == pytest.approx(tokens)
    assert free.goodput_per_gpu == pytest.approx(tokens / free.gpu_seconds)
    assert costly.goodput_per_gpu == pytest.approx(tokens / (costly.gpu_seconds + costly.reprovision_gpu_seconds))
    assert free.static["attainment"] == pytest.approx(1.0)
    assert free.static["gpus"] * len(TRACE.t_s) * TRACE.interval_s >= free.gpu_seconds
    relaxed = elastic_scaling(TINY, HW, TRACE, reprovision_s=60.0, attainment=0.8, **kw)
    assert relaxed.static_goodput_per_gpu >= costly.static_goodput_per_gpu
    assert relaxed.static["attainment"] >= 0.8 - 1e-12
    with pytest.raises(ValueError, match=r"no configuration of tiny-dense serves it"):
        elastic_scaling(TINY, HW, TRACE, space=SPACE, max_cluster_gpus=1, candidates=candidates, **SLA)


def test_elastic_plan_meets_demand_with_its_layouts(candidates):
    res = elastic_scaling(TINY, HW, TRACE, space=SPACE, reprovision_s=0.0, max_cluster_gpus=4096,
                          candidates=candidates, **SLA)
    P = datasheet_params(HW)
    for p in res.plan:
        for role in ("prefill", "decode", "colocated"):
            if role not in p:
                continue
            n, lay = p[role]
            fields = {k: v for k, v in lay.items() if k != "family"}
            la = make_layout_arrays(**fields, weight_bits=16.0, kv_bits=16.0, act_bits=16.0, comm_bits=16.0)
            m = phase_metrics(TINY, HW, P, role, la, float(p["isl"]), float(p["osl"]))  # eager: no compilation
            ttft, ttl, rate_per_gpu, gpus, mem = (float(x) for x in m)
            assert mem <= 1 and ttft <= SLA["ttft_limit_s"] and ttl <= SLA["ttl_limit_s"]
            r = rate_per_gpu * gpus  # requests/s of one replica: n = ⌈λ / r⌉
            assert n * r >= p["arrival_rate_per_s"] * (1 - 1e-6) and (n - 1) * r < p["arrival_rate_per_s"]
    assert math.isfinite(res.ratio) and res.ratio >= 1.0
