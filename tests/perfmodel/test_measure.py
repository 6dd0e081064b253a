"""Timing harness (measure), kernels and plans (kernels), rows and the file (measurements)."""

import dataclasses
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from perfmodel import kernels, measure, measurements
from perfmodel.measure import TimingConfig
from perfmodel.measurements import Measurement, MeasurementSet

FAST = TimingConfig(rounds=3, min_round_s=0.0, warmup_calls=1, seed=1)


def test_summarize_median_iqr_min_and_noisy_flag():
    # Per-round minima 1, 2, 3, 4, 100: median 3, quartiles 2 and 4 (linear interpolation), IQR 2.
    stats = measure.summarize([4.0, 1.0, 100.0, 3.0, 2.0], calls=17, noisy_threshold=0.5)
    assert stats == dict(median_s=3.0, iqr_s=2.0, min_s=1.0, n_rounds=5, n_repeats=17, noisy=True)
    assert measure.summarize([4.0, 1.0, 100.0, 3.0, 2.0], 17, noisy_threshold=0.7)["noisy"] is False


def test_time_round_repeats_until_min_duration_and_keeps_the_minimum():
    # A fake clock: each call reads two ticks; call durations 5, 3, 4, 6 ticks; 1 tick between calls.
    durations = iter([5, 3, 4, 6, 100])
    now = [0.0]

    def clock():
        return now[0]

    def call():
        now[0] += next(durations)
        return jnp.zeros(())

    best, calls = measure.time_round(call, min_s=11.0, clock=clock)
    assert (best, calls) == (3.0, 3)  # 5 + 3 + 4 = 12 ≥ 11 after the third call
    best, calls = measure.time_round(lambda: jnp.zeros(()), min_s=0.0)
    assert calls == 1 and best > 0


def test_rounds_are_interleaved_in_a_fresh_order(monkeypatch):
    seen = []

    def fake_round(call, min_s):
        seen.append(int(call()[0]))
        return 1e-3 * (1 + seen[-1]), 1

    monkeypatch.setattr(measure, "time_round", fake_round)
    points = [kernels.Point(fn=lambda x, c=c: x + c, make_inputs=lambda rng: (jnp.zeros(1, jnp.int32),),
                            footprint_bytes=4, fields=dict(op="copy", kernel=f"k{c}", dtype="int32", elements=1))
              for c in range(6)]
    rows = measure.time_points(points, dataclasses.replace(FAST, rounds=4), progress=False)
    rounds = [seen[i:i + 6] for i in range(0, 24, 6)]
    assert all(sorted(r) == list(range(6)) for r in rounds)
    assert len({tuple(r) for r in rounds}) > 1, f"every round ran in the same order: {rounds}"
    assert [r.kernel for r in rows] == [f"k{c}" for c in range(6)]  # results come back in input order
    assert [r.median_s for r in rows] == pytest.approx([1e-3 * (1 + c) for c in range(6)])


def test_each_round_warms_its_point_up_first(monkeypatch):
    calls = []
    monkeypatch.setattr(measure, "time_round", lambda call, min_s: (calls.append("timed"), (1e-3, 1))[1])
    monkeypatch.setattr(measure.jax, "block_until_ready", lambda x: (calls.append("warm"), x)[1])
    point = kernels.Point(fn=lambda x: x + 1, make_inputs=lambda rng: (jnp.zeros(1),), footprint_bytes=4,
                          fields=dict(op="copy", kernel="k", dtype="float32", elements=1))
    config = dataclasses.replace(FAST, rounds=2, warmup_calls=0, round_warmup_calls=2)
    measure.time_points([point], config, progress=False)
    assert calls == ["warm", "warm", "timed"] * 2


def test_pinned_measurement_in_a_child_process():
    with pytest.raises(ValueError, match=r"cpus=0 must lie in \[1, "):
        measure.pin_cpus(0)
    with pytest.raises(ValueError, match="cpus=4096 must lie in"):
        measure.pin_cpus(4096)
    with pytest.raises(ValueError, match="warmup_calls=1 would be dropped"):
        measure.run_isolated(quick=True, timing=FAST)  # the child cannot be told FAST's warm-ups
    timing = dataclasses.replace(measure.default_timing(True), rounds=1, min_round_s=0.0, seed=1)
    mset = measure.run_isolated(quick=True, families=["elementwise", "collectives"], timing=timing, cpus=1,
                                cpu_devices=4, progress=False)
    assert mset.env["cpu_affinity"] == sorted(os.sched_getaffinity(0))[-1:]  # the last allowed core
    # glibc's allocator set to reuse memory in the children, unless the caller set it
    callers = {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")}
    assert mset.env["malloc_env"] == {**measure.MALLOC_ENV, **callers}
    assert all(r.n_rounds == 1 for r in mset.rows)
    # one-device kernels in a one-device child, collectives on the emulated mesh of a second
    assert mset.env["devices_per_family"] == {"elementwise": 1, "collectives": 4}
    assert mset.env["device_count"] == 4 and mset.env["families"] == ["elementwise", "collectives"]
    assert {r.op for r in mset.rows if not r.emulated} == {"elementwise", "copy"}
    assert {r.n_devices for r in mset.rows if r.emulated} == {4}


def test_memory_budget_splits_points_into_groups():
    pts = [kernels.Point(fn=None, make_inputs=None, footprint_bytes=b, fields={}) for b in (4, 4, 4, 9, 1)]
    assert measure._groups(pts, budget=10) == [[0, 1], [2], [3, 4]]


def _run(points):
    return measure.time_points(points, FAST, progress=False)


def test_gemm_and_attention_points_time_the_right_math():
    gemm = kernels.gemm_points([(8, 16, 32)], ["float32", "bfloat16"])
    assert gemm[0].fields["flops"] == 2 * 8 * 16 * 32
    assert gemm[0].fields["bytes"] == (8 * 32 + 32 * 16 + 8 * 16) * 4
    assert gemm[1].fields["bytes"] == (8 * 32 + 32 * 16) * 2 + 8 * 16 * 4  # FP32 output
    assert gemm[1].fn(*gemm[1].make_inputs(np.random.default_rng(0))).dtype == jnp.float32
    a, b = gemm[0].make_inputs(np.random.default_rng(0))
    np.testing.assert_allclose(gemm[0].fn(a, b), np.asarray(a) @ np.asarray(b), rtol=1e-5, atol=1e-5)

    (att,) = kernels.decode_attention_points([(2, 16, 4, 2, 8)], ["float32"])
    assert att.fields["flops"] == 4 * 2 * 4 * 16 * 8
    assert att.fields["bytes"] == (2 * 2 * 16 * 2 * 8 + 2 * 2 * 4 * 8) * 4
    q, k, v = (np.asarray(x, np.float64) for x in att.make_inputs(np.random.default_rng(0)))
    assert k.shape == (2, 2, 16, 8)  # [batch, kv_heads, seq, head_dim]
    kk, vv = np.repeat(k, 2, axis=1), np.repeat(v, 2, axis=1)  # query head h uses KV head h // 2
    s = np.einsum("bhd,bhsd->bhs", q, kk) / math.sqrt(8)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    np.testing.assert_allclose(att.fn(*att.make_inputs(np.random.default_rng(0))),
                               np.einsum("bhs,bhsd->bhd", p, vv), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="kv_heads=3 does not divide heads=4"):
        kernels.decode_attention_points([(1, 8, 4, 3, 8)], ["float32"])

    rows = _run(gemm + [att])
    assert [r.op for r in rows] == ["gemm", "gemm", "decode_attention"]
    for r in rows:
        assert r.n_rounds == 3 and r.n_repeats >= 3 and 0 < r.min_s <= r.median_s and not r.emulated


def test_elementwise_and_copy_points():
    pts = kernels.elementwise_points([256], ["float32"])
    assert [p.fields["op"] for p in pts] == ["elementwise", "copy"]
    assert pts[0].fields["bytes"] == 3 * 256 * 4 and pts[0].fields["flops"] == 256
    assert pts[1].fields["bytes"] == 2 * 256 * 4 and pts[1].fields["flops"] == 0
    x, y = pts[0].make_inputs(np.random.default_rng(0))
    np.testing.assert_array_equal(pts[0].fn(x, y), np.asarray(x) * np.asarray(y))
    # The copy must really run: XLA reports reading and writing the whole array.
    (x,) = pts[1].make_inputs(np.random.default_rng(0))
    cost = jax.jit(pts[1].fn).lower(x).compile().cost_analysis()
    assert cost["bytes accessed"] == 2 * 256 * 4


@pytest.mark.parametrize("op", measurements.COLLECTIVE_OPS)
def test_collectives_match_numpy_on_the_emulated_mesh(op):
    n = jax.device_count()
    (pt,) = kernels.collective_points([4 * 2 * n], ops=[op])  # 2n float32 per rank
    (x,) = pt.make_inputs(np.random.default_rng(0))
    out = np.asarray(pt.fn(x))
    shards = np.asarray(x).reshape(n, -1)  # rank r holds shards[r]
    if op == "all_reduce":
        want = np.tile(shards.sum(0), n)
    elif op == "all_gather":
        want = np.tile(shards.reshape(-1), n)
    elif op == "reduce_scatter":
        want = shards.sum(0)  # rank r keeps chunk r of the sum
    elif op == "all_to_all":
        chunks = shards.reshape(n, n, -1)  # [sender, chunk, elem]: rank r receives chunk r of everyone
        want = chunks.transpose(1, 0, 2).reshape(-1)
    else:
        want = np.roll(shards, 1, axis=0).reshape(-1)  # rank r receives from r - 1
    np.testing.assert_allclose(out, want, rtol=1e-6)
    assert pt.fields == dict(op=op, kernel=pt.fields["kernel"], dtype="float32", n_devices=n, bytes=8 * n,
                             emulated=True)


def test_collective_sizes_must_divide():
    n = jax.device_count()
    with pytest.raises(ValueError, match=f"bytes=12 is not a multiple of 4·n_devices={4 * n}"):
        kernels.collective_points([12])
    with pytest.raises(ValueError, match="unknown collective op='broadcast'"):
        kernels.collective_points([4 * n], ops=["broadcast"])


def test_time_points_flags_emulated_collectives():
    rows = _run(kernels.collective_points([4 * 8 * jax.device_count()], ops=["all_reduce", "send_recv"]))
    assert all(r.emulated and r.n_devices == jax.device_count() and r.median_s > 0 for r in rows)


def test_plan_quick_covers_the_families():
    points, skipped = kernels.plan(quick=True)
    ops = {p.fields["op"] for p in points}
    assert {"gemm", "decode_attention", "elementwise", "copy"} <= ops
    assert set(measurements.COLLECTIVE_OPS) <= ops  # 8 emulated devices in tests
    gemm = [p.fields for p in points if p.fields["op"] == "gemm"]
    assert {g["dtype"] for g in gemm} == {"float32", "bfloat16"}
    assert len({(g["m"], g["n"], g["k"]) for g in gemm}) == len(gemm) // 2  # no duplicate shapes
    import numerics

    if hasattr(numerics, "fake_quantize") and hasattr(numerics, "FORMAT_NAMES"):
        assert {p.fields["fmt"] for p in points if p.fields["op"] == "fake_quantize"} == set(numerics.FORMAT_NAMES)
    else:
        assert "fake_quantize" in skipped
    # Same seed, same plan.
    again, _ = kernels.plan(quick=True)
    assert [p.fields for p in again] == [p.fields for p in points]
    with pytest.raises(ValueError, match="unknown families"):
        kernels.plan(families=["gemm", "matmul"])


def test_fake_quantize_points_when_numerics_has_it():
    numerics = pytest.importorskip("numerics")
    if not hasattr(numerics, "fake_quantize"):
        pytest.skip("numerics.fake_quantize not written yet")
    fmt = numerics.FORMAT_NAMES[0]
    (pt,) = kernels.fake_quantize_points([2048], [fmt])
    (x,) = pt.make_inputs(np.random.default_rng(0))
    np.testing.assert_array_equal(jax.jit(pt.fn)(x), numerics.fake_quantize(x, fmt, axis=-1))
    assert pt.fields["bytes"] == 2 * 2048 * 4 and pt.fields["flops"] is None
    (row,) = _run([pt])  # flops are XLA's count for the compiled kernel
    assert row.flops == jax.jit(pt.fn).lower(x).compile().cost_analysis()["flops"] > 2048
    assert (row.op, row.fmt, row.dtype, row.elements) == ("fake_quantize", fmt, "float32", 2048)


def _row(**kw):
    base = dict(op="gemm", kernel="matmul", dtype="float32", m=2, n=3, k=4, bytes=80, flops=48,
                median_s=1.5e-3, iqr_s=1e-4, min_s=1.25e-3, n_rounds=5, n_repeats=40)
    return Measurement(**{**base, **kw})


@pytest.mark.parametrize("field,value,match", [
    ("op", "conv", "op='conv' is not one of"),
    ("bytes", -1, "bytes=-1 must be a non-negative integer"),
    ("m", 2.5, "m=2.5 must be a non-negative integer"),
    ("median_s", float("nan"), "median_s=nan must be a finite"),
    ("median_s", float("inf"), "median_s=inf must be a finite"),
    ("median_s", -1e-3, "times must be positive"),
    ("iqr_s", -1e-9, "non-negative"),
    ("min_s", 2e-3, "min_s=0.002 exceeds median_s=0.0015"),
    ("n_repeats", 2, "n_repeats=2 < n_rounds=5"),
    ("kernel", "a,b", "without commas"),
])
def test_measurement_validation_names_the_field(field, value, match):
    with pytest.raises(ValueError, match=match):
        _row(**{field: value})


def test_csv_round_trip_is_exact(tmp_path):
    rows = (_row(), _row(op="all_to_all", kernel="all_to_all", m=0, n=0, k=0, n_devices=8, bytes=4096, flops=0,
                         median_s=1 / 3, min_s=0.1, noisy=True, emulated=True))
    mset = MeasurementSet(rows, {"backend": "cpu", "nested": {"a": [1, 2]}})
    path = measurements.write_csv(tmp_path / "sub" / "m.csv", mset)
    assert not list(path.parent.glob(".*.tmp"))  # the temp file was renamed away
    back = measurements.read_csv(path)
    assert back.rows == rows and back.env == mset.env
    first, env_line = path.read_text().splitlines()[:2]
    assert first == "# paretolab-measurements schema=1" and json.loads(env_line[6:]) == mset.env


def test_environment_records_versions_devices_and_git():
    env = measure.environment()
    assert env["jax"] == jax.__version__ and env["backend"] == "cpu" and env["device_count"] == jax.device_count()
    assert env["git_sha"] == "unknown" or len(env["git_sha"]) == 40
    assert env["created_utc"].endswith("+00:00") and env["cpu_model"]


def test_cli_writes_a_measurement_file(tmp_path, monkeypatch):
    tiny = kernels.gemm_points([(8, 8, 8)], ["float32"]) + kernels.elementwise_points([64], ["float32"])
    monkeypatch.setattr(measure, "plan", lambda quick, families, seed: (tiny, {"collectives": "test"}))
    out = measure.main(["--quick", "--out", str(tmp_path / "m.csv"), "--rounds", "2", "--min-round-s", "0",
                        "--no-progress"])
    back = measurements.read_csv(out)
    assert [r.op for r in back.rows] == ["gemm", "elementwise", "copy"]
    assert back.env["quick"] is True and back.env["timing"]["rounds"] == 2 and back.env["skipped"] == {"collectives": "test"}
    assert all(r.n_rounds == 2 for r in back.rows)
