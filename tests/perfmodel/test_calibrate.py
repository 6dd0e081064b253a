"""Calibration: splits (calib_data), losses and fit (calibrate), parameters (calib_params), report
(calib_report), profiles (profile), the CPU spec (cpu), CLI."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from perfmodel import calib_data, calib_params, calib_report, calibrate, cpu, efficiency, kernels, measurements, ops, profile
from perfmodel.calib_params import CalibParams
from perfmodel.efficiency import DECODE_ATTENTION, ELEMENTWISE, GEMM, QUANTIZE, constrain, unconstrain
from perfmodel.measurements import Measurement, MeasurementSet
from perfmodel.presets import get_hardware
from numerics import FORMAT_NAMES

H100 = get_hardware("h100-sxm")
BF16, FP8 = calib_params.PRECISIONS.index("bf16"), calib_params.PRECISIONS.index("fp8")
NVFP4 = FORMAT_NAMES.index("nvfp4")


def _logit(p):
    return float(np.log(p) - np.log1p(-p))


def _truth() -> CalibParams:
    """Known parameters away from the prior: what the synthetic fit must recover."""
    e = constrain(efficiency.datasheet_params(H100))
    phys = e._replace(
        compute_eff=e.compute_eff.at[GEMM].set(0.7).at[DECODE_ATTENTION].set(0.5),
        memory_eff=e.memory_eff.at[GEMM].set(0.8).at[DECODE_ATTENTION].set(0.75).at[ELEMENTWISE].set(0.85)
        .at[QUANTIZE].set(0.85),
        overhead_s=e.overhead_s.at[GEMM].set(6e-6).at[DECODE_ATTENTION].set(4e-6).at[ELEMENTWISE].set(3e-6)
        .at[QUANTIZE].set(5e-6),
        link_alpha_s=e.link_alpha_s.at[1].set(3e-6), link_eff=e.link_eff.at[1].set(0.7),
    )
    offsets = jnp.zeros((6, len(calib_params.PRECISIONS), 2)).at[GEMM, FP8, 0].set(_logit(0.5) - _logit(0.7))
    formats = jnp.zeros((len(FORMAT_NAMES), 2)).at[NVFP4, 1].set(_logit(0.4) - _logit(0.85))
    return CalibParams(unconstrain(phys), offsets, formats)


def _synthetic_rows(params, noise=0.03, seed=0):
    rng = np.random.default_rng(seed)
    grid = [1 << e for e in range(6, 15)]
    rows = []
    for dtype in ("bfloat16", "float8_e4m3fn"):
        size = jnp.dtype(dtype).itemsize
        for _ in range(50):
            m, n, k = (int(v) for v in rng.choice(grid, 3))
            rows.append(dict(op="gemm", kernel="matmul", dtype=dtype, m=m, n=n, k=k,
                             bytes=(m * k + k * n + m * n) * size, flops=2 * m * n * k))
    for _ in range(40):
        b, s, h = int(rng.choice([1, 8, 64])), int(rng.choice([1 << e for e in range(9, 18)])), int(rng.choice([8, 32, 64]))
        kvh, d = h // int(rng.choice([1, 8])), int(rng.choice([64, 128]))
        rows.append(dict(op="decode_attention", kernel="gqa_decode", dtype="bfloat16", batch=b, seq=s, heads=h,
                         kv_heads=kvh, head_dim=d, bytes=(2 * b * s * kvh * d + 2 * b * h * d) * 2, flops=4 * b * h * s * d))
    for e in (1 << p for p in range(10, 29, 2)):
        rows.append(dict(op="elementwise", kernel="multiply", dtype="float32", elements=e, bytes=12 * e, flops=e))
        rows.append(dict(op="copy", kernel="copy", dtype="bfloat16", elements=e, bytes=4 * e, flops=0))
        for fmt in ("mxfp8_e4m3", "nvfp4"):
            rows.append(dict(op="fake_quantize", kernel="fake_quantize", dtype="float32", fmt=fmt, elements=e,
                             bytes=8 * e, flops=25 * e))
    for op in ("all_reduce", "all_gather", "all_to_all"):
        for nbytes in (1 << p for p in range(10, 31, 2)):
            rows.append(dict(op=op, kernel=op, dtype="float32", n_devices=8, bytes=nbytes))
    rows = [Measurement(**r, median_s=1.0, min_s=1.0) for r in rows]
    t = calib_params.predict_rows(params, H100, rows, calib_params.cost_model_times)
    t = t * np.exp(noise * rng.standard_normal(len(rows)))
    return [dataclasses.replace(r, median_s=float(x), min_s=float(x)) for r, x in zip(rows, t)]


@pytest.fixture(scope="module")
def synthetic():
    truth = _truth()
    rows = _synthetic_rows(truth)
    fitted, report = calibrate.fit(rows, H100, seed=0)
    return truth, rows, fitted, report


def test_fit_recovers_known_parameters_within_5_percent(synthetic):
    truth, _, fitted, _ = synthetic
    for precision, idx in (("bf16", (("compute_eff", GEMM), ("memory_eff", GEMM), ("overhead_s", GEMM),
                                     ("memory_eff", DECODE_ATTENTION), ("overhead_s", DECODE_ATTENTION),
                                     ("memory_eff", ELEMENTWISE), ("overhead_s", ELEMENTWISE),
                                     ("link_alpha_s", 1), ("link_eff", 1))),
                           ("fp8", (("compute_eff", GEMM),))):
        want = constrain(calib_params.efficiency_for(truth, precision))
        got = constrain(calib_params.efficiency_for(fitted, precision))
        for field, i in idx:
            w, g = float(getattr(want, field)[i]), float(getattr(got, field)[i])
            assert g == pytest.approx(w, rel=0.05), f"{precision} {field}[{i}]: fitted {g:.4g}, true {w:.4g}"
    # NVFP4's quantize kernel streams at its own efficiency (quantize class + format offset). Its FLOPs
    # are proportional to its bytes, so only the time is identifiable, not the compute/memory split.
    rows = [r for r in synthetic[1] if r.op == "fake_quantize"]
    want = calib_params.predict_rows(truth, H100, rows)
    got = calib_params.predict_rows(fitted, H100, rows)
    nvfp4 = np.array([r.fmt == "nvfp4" for r in rows])
    np.testing.assert_allclose(got, want, rtol=0.02)
    assert want[nvfp4][-1] > 1.5 * want[~nvfp4][-1]  # the offset matters: at the largest size, > 1.5× the time


def test_fit_finds_the_cache_knee():
    # Copies on a CPU-like part: 16 MB working sets and below stream at 0.4× the DRAM time per byte,
    # the knee as sharp as this VM's (sharpness 6: 1% of the step left at 2.2×).
    hw = cpu.cpu_local_spec(50e9, cores=2, clock_hz=2e9, flags={"avx2"}, memory_bytes=16e9)
    e = constrain(calib_params.init_params(hw).efficiency)
    truth = calib_params.init_params(hw)._replace(efficiency=unconstrain(e._replace(
        memory_eff=e.memory_eff.at[ELEMENTWISE].set(0.6), overhead_s=e.overhead_s.at[ELEMENTWISE].set(2e-6),
        cache_bytes=e.cache_bytes.at[ELEMENTWISE].set(16e6), cache_ratio=e.cache_ratio.at[ELEMENTWISE].set(0.4),
        cache_sharpness=e.cache_sharpness.at[ELEMENTWISE].set(6.0))))
    rows = [Measurement(op="copy", kernel="copy", dtype="float32", elements=n, bytes=8 * n, median_s=1.0, min_s=1.0)
            for n in np.unique(np.geomspace(1 << 14, 1 << 28, 60).astype(int))]
    t = calib_params.predict_rows(truth, hw, rows) * np.exp(0.02 * np.random.default_rng(0).standard_normal(len(rows)))
    rows = [dataclasses.replace(r, median_s=float(x), min_s=float(x)) for r, x in zip(rows, t)]
    fitted, report = calibrate.fit(rows, hw)
    got = constrain(fitted.efficiency)
    assert float(got.cache_bytes[ELEMENTWISE]) == pytest.approx(16e6, rel=0.1)
    assert float(got.cache_ratio[ELEMENTWISE]) == pytest.approx(0.4, rel=0.05)
    assert float(got.cache_sharpness[ELEMENTWISE]) == pytest.approx(6.0, rel=0.05)
    assert report.table("fitted", "heldout", "all")["all"]["mape"] < 3.0


def test_fit_report_on_synthetic_data(synthetic):
    _, rows, fitted, report = synthetic
    # 3% log-normal noise: the held-out MAPE is the noise (~2.4%), the datasheet roofline is far off.
    held = report.table("fitted", "heldout", "all")["all"]
    base = report.table("datasheet", "heldout", "all")["all"]
    assert held["n"] == report.counts["heldout"] > 0 and held["mape"] < 4.0
    assert base["mape"] > 5 * held["mape"]
    assert report.losses["final"] < report.losses["initial"]
    # Unmeasured classes have no data gradient: the prior takes them from the start (efficiency 0.5)
    # to the datasheet values.
    prior, start = calib_params.init_params(H100), calib_params.init_params(H100, efficiency=0.5)
    for field in ("compute_logit", "memory_logit", "overhead_log"):
        for c in (efficiency.GROUPED_GEMM, efficiency.PREFILL_ATTENTION):
            want = float(getattr(prior.efficiency, field)[c])
            assert float(getattr(fitted.efficiency, field)[c]) == pytest.approx(want, abs=1e-3)
    assert float(start.efficiency.compute_logit[0]) == pytest.approx(0.0, abs=1e-6)


def test_check_grads_on_the_loss():
    truth = _truth()
    rows = [r for r in _synthetic_rows(truth, seed=1)][::6]
    with jax.enable_x64(True):
        data, _ = calib_data.make_data(rows, dtype=jnp.float64)
        p64 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64) + 0.1, truth)  # off the optimum
        prior = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), calib_params.init_params(H100))
        # One function weighing the three robust losses differently, so one compile checks them all.
        fn = jax.jit(lambda p: sum((i + 1.0) * calibrate.objective(p, data, prior, H100, calib_params.cost_model_times,
                                                                   loss=loss, prior_weight=1e-3)
                                   for i, loss in enumerate(calibrate.ROBUST_LOSSES)))
        check_grads(fn, (p64,), order=1, modes=("rev",), eps=1e-5, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("kind,r,want", [
    ("l2", 0.3, 0.045), ("huber", 0.05, 0.00125), ("huber", -0.5, 0.1 * (0.5 - 0.05)),
    ("cauchy", 0.1, 0.5 * 0.01 * np.log(2.0)),
])
def test_robust_losses_closed_forms(kind, r, want):
    assert float(calibrate.robust_loss(jnp.float32(r), kind, 0.1)) == pytest.approx(want, rel=1e-5)


def test_robust_loss_rejects_bad_settings():
    with pytest.raises(ValueError, match="kind='tukey' is not one of"):
        calibrate.robust_loss(jnp.zeros(2), "tukey")
    with pytest.raises(ValueError, match="scale=0 must be positive"):
        calibrate.robust_loss(jnp.zeros(2), "huber", 0)


def _rows_for_split():
    rows = [Measurement(op="gemm", kernel="matmul", dtype="float32", m=s, n=s, k=s, flops=2 * s**3,
                        bytes=12 * s * s, median_s=1e-3, min_s=1e-3) for s in range(8, 48)]
    rows += [Measurement(op="copy", kernel="copy", dtype="float32", elements=e, bytes=8 * e, median_s=1e-4,
                         min_s=1e-4) for e in range(100, 120)]
    return rows


def test_split_is_deterministic_stratified_and_order_free():
    rows = _rows_for_split()
    held = calib_data.split_mask(rows, "random", 0.25, seed=3)
    ops_ = np.array([r.op for r in rows])
    assert held[ops_ == "gemm"].sum() == 10 and held[ops_ == "copy"].sum() == 5
    np.testing.assert_array_equal(held, calib_data.split_mask(rows, "random", 0.25, seed=3))
    perm = np.random.default_rng(0).permutation(len(rows))
    held_perm = calib_data.split_mask([rows[i] for i in perm], "random", 0.25, seed=3)
    np.testing.assert_array_equal(held_perm, held[perm])  # a row's fate does not depend on file order
    assert not np.array_equal(held, calib_data.split_mask(rows, "random", 0.25, seed=4))


def test_extrapolation_split_holds_out_the_largest():
    rows = _rows_for_split()
    held = calib_data.split_mask(rows, "extrapolation", 0.25)
    assert sorted(r.m for r, h in zip(rows, held) if h and r.op == "gemm") == list(range(38, 48))
    assert sorted(r.elements for r, h in zip(rows, held) if h and r.op == "copy") == list(range(115, 120))
    with pytest.raises(ValueError, match="split kind='k-fold'"):
        calib_data.split_mask(rows, "k-fold")
    with pytest.raises(ValueError, match="fraction=1.0 must be in"):
        calib_data.split_mask(rows, "random", 1.0)


def test_error_report_math_and_headline():
    t = np.array([2e-3, 4e-3, 1e-4, 5e-3])
    rows = [Measurement(op="copy", kernel="copy", dtype="float32", elements=i + 1, bytes=8, median_s=float(x),
                        min_s=float(x)) for i, x in enumerate(t)]
    held = np.array([True, True, True, False])
    preds = {"fitted": t * np.array([1.1, 0.8, 3.0, 1.0]), "datasheet": t * np.array([0.5, 0.5, 0.5, 0.5])}
    errors, headline = calib_report.error_report(rows, held, preds, threshold_s=1e-3)
    pick = {(e["model"], e["subset"], e["op"], e["kernels"]): e for e in errors}
    long_fit = pick[("fitted", "heldout", "all", ">1ms")]
    assert long_fit["n"] == 2 and long_fit["mape"] == pytest.approx(15.0) and long_fit["median_ape"] == pytest.approx(15.0)
    all_fit = pick[("fitted", "heldout", "copy", "all")]
    assert all_fit["n"] == 3 and all_fit["mape"] == pytest.approx((10 + 20 + 200) / 3)
    assert all_fit["p90_ape"] == pytest.approx(np.percentile([10, 20, 200], 90))
    assert headline == dict(n=2, threshold_s=1e-3, fitted_mape=pytest.approx(15.0), datasheet_mape=pytest.approx(50.0),
                            ratio=pytest.approx(50 / 15))


def test_cost_model_adapter_matches_measure_bytes_and_flops():
    # kernels.py and ops.py count bytes and FLOPs independently; they must agree row by row.
    gemm = [p.fields for p in kernels.gemm_points([(64, 128, 256), (3, 5, 7)], ["float32", "bfloat16"])]
    cols = calib_data.columns([Measurement(**f, median_s=1.0, min_s=1.0) for f in gemm])  # what the fit costs
    flops, nbytes = ops.gemm_cost(cols["m"], cols["n"], cols["k"], cols["bytes_per_elem"],
                                  out_bytes_per_elem=cols["out_bytes_per_elem"])
    np.testing.assert_array_equal(flops, [f["flops"] for f in gemm])
    np.testing.assert_array_equal(nbytes, [f["bytes"] for f in gemm])
    att = [p.fields for p in kernels.decode_attention_points([(2, 512, 16, 4, 64), (1, 100, 8, 8, 128)], ["bfloat16"])]
    for f in att:
        flops, nbytes = ops.decode_attention_cost(f["batch"], f["seq"], f["heads"], f["kv_heads"], f["head_dim"],
                                                  f["head_dim"], 2)
        assert (flops, nbytes) == (f["flops"], f["bytes"])


def test_per_precision_offsets_reach_the_cost_model():
    truth = _truth()
    rows = [Measurement(op="gemm", kernel="matmul", dtype=d, m=4096, n=4096, k=4096, flops=2 * 4096**3,
                        bytes=3 * 4096**2 * jnp.dtype(d).itemsize, median_s=1.0, min_s=1.0)
            for d in ("bfloat16", "float8_e4m3fn")]
    got = calib_params.predict_rows(truth, H100, rows, calib_params.cost_model_times)
    want = [ops.gemm_time(calib_params.efficiency_for(truth, p), H100, 4096, 4096, 4096, b)
            for p, b in (("bf16", 2), ("fp8", 1))]
    np.testing.assert_allclose(got, np.asarray(want, np.float64), rtol=1e-6)
    with pytest.raises(ValueError, match="precision='fp16' is not one of"):
        calib_params.efficiency_for(truth, "fp16")


def test_cpu_local_spec_from_declared_isa():
    hw = cpu.cpu_local_spec(40e9, n_devices=8, cores=2, clock_hz=2.7e9, flags={"avx512f", "amx_bf16"},
                                  memory_bytes=16e9)
    assert hw.flops_fp32 == 2 * 2.7e9 * 64 and hw.flops_bf16 == 2 * 2.7e9 * 1024
    assert hw.hbm_bandwidth_bytes_per_s == 40e9 and hw.scale_up.size == 8
    avx2 = cpu.cpu_local_spec(40e9, cores=4, clock_hz=3e9, flags={"avx2"}, memory_bytes=16e9)
    assert avx2.flops_fp32 == avx2.flops_bf16 == 4 * 3e9 * 32
    with pytest.raises(ValueError, match="cannot derive a CPU peak"):
        cpu.cpu_local_spec(40e9, cores=2, clock_hz=2e9, flags={"neon"}, memory_bytes=1e9)
    copies = [Measurement(op="copy", kernel="copy", dtype="float32", elements=e, bytes=8 * e, median_s=t, min_s=t)
              for e, t in ((1000, 1e-6), (10**6, 1e-3))]
    assert cpu.stream_copy_bandwidth(copies) == pytest.approx(8e9)
    with pytest.raises(ValueError, match="no copy rows"):
        cpu.stream_copy_bandwidth(copies[:0])
    # A CPU measurement pinned to one core is fitted against a one-core spec (measure.pin_cpus).
    env = {"backend": "cpu", "device_count": 8}
    one = calibrate.hardware_for(MeasurementSet(tuple(copies), {**env, "cpu_affinity": [1]}))
    assert one.flops_fp32 == cpu.cpu_local_spec(8e9, cores=1).flops_fp32
    free = calibrate.hardware_for(MeasurementSet(tuple(copies), env))
    assert free.flops_fp32 == cpu.cpu_local_spec(8e9).flops_fp32


def test_format_columns_name_unknown_formats():
    rows = [Measurement(op="fake_quantize", kernel="fake_quantize", dtype="float32", fmt=f, elements=1024,
                        bytes=8192, median_s=1e-5, min_s=1e-5) for f in ("nvfp4", "mxfp9")]
    assert calib_data.columns(rows[:1])["format_index"].tolist() == [FORMAT_NAMES.index("nvfp4")]
    with pytest.raises(ValueError, match=r"unknown formats \['mxfp9'\]"):
        calib_data.columns(rows)


def test_profile_round_trip_and_strict_load(tmp_path, synthetic):
    _, _, fitted, report = synthetic
    path = profile.save_profile(tmp_path / "p.json", H100, fitted, {"random": report}, {"backend": "gpu"})
    hw, params = profile.load_profile(path)
    assert hw == H100
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(fitted)):
        np.testing.assert_array_equal(a, b)
    doc = json.loads(path.read_text())
    assert doc["report"]["random"]["headline"] == report.headline and doc["env"] == {"backend": "gpu"}

    def broken(edit, match):
        d = json.loads(path.read_text())
        edit(d)
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps(d))
        with pytest.raises(ValueError, match=match):
            profile.load_profile(bad)

    broken(lambda d: d.update(format="other"), "format is not 'paretolab-profile'")
    broken(lambda d: d.update(version=1), "version=1; this reader knows 2")
    broken(lambda d: d.update(extra=1), r"unknown top-level keys \['extra'\]")
    broken(lambda d: d["hardware"].update(flops_fp64=1.0), r"hardware has unknown fields \['flops_fp64'\]")
    broken(lambda d: d["hardware"]["links"][1].pop("latency_s"), r"hardware.links\[1\] has .*missing \['latency_s'\]")
    broken(lambda d: d["hardware"].update(hbm_bandwidth_bytes_per_s=-1.0), "hbm_bandwidth_bytes_per_s=-1.0")
    key = ".efficiency.overhead_log"
    broken(lambda d: d["params"][key].update(value=[1.0, 2.0]), rf"params\['{key}'\] shape \[2\]")
    broken(lambda d: d["params"][key]["value"].__setitem__(0, float("nan")), rf"params\['{key}'\] has non-finite")
    broken(lambda d: d["params"].pop(key), rf"missing \['{key}'\]")
    (tmp_path / "notjson.json").write_text("{")
    with pytest.raises(ValueError, match="not JSON"):
        profile.load_profile(tmp_path / "notjson.json")


def test_profile_with_a_generic_pytree(tmp_path):
    params = {"a": jnp.arange(3.0), "b": (jnp.float32(2.5),)}
    path = profile.save_profile(tmp_path / "g.json", H100, params)
    _, back = profile.load_profile(path, template=params)
    assert jax.tree.structure(back) == jax.tree.structure(params)
    np.testing.assert_array_equal(back["a"], params["a"])


def test_hardware_for_picks_the_preset_of_a_device_kind():
    gpu = {"backend": "gpu", "device_kind": "NVIDIA H100 80GB HBM3"}
    assert calibrate.hardware_for(MeasurementSet((), gpu)) == H100
    assert calibrate.hardware_for(MeasurementSet((), gpu), "gb200-nvl72").name == "gb200-nvl72"
    with pytest.raises(ValueError, match="no hardware preset for device_kind='Gaudi3'"):
        calibrate.hardware_for(MeasurementSet((), {"backend": "gpu", "device_kind": "Gaudi3"}))
