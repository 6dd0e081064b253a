"""Every experiment of issue 8 end to end, smaller than --quick, checking the files and the values in them.

Sizes are overridden the way a user would (`registry.make_config(..., overrides=...)`), so the CLI's
parsing is exercised too. One calibration (a module fixture) provides the profile that the other
experiments take as `--hardware`. The quick modes themselves run in the tests marked slow.
"""

import json
import math

import numpy as np
import pytest

from experiments import cli, plots, registry, results
from perfmodel import MeasurementSet, get_hardware, load_profile, read_csv, write_csv

NEW = ("quickstart", "calibrate", "helix-pareto", "disagg-pareto", "search", "helix-mx", "energy")


def _run(name, tmp_path, quick=False, hardware=None, seed=None, **overrides):
    config = registry.make_config(name, quick=quick, hardware=hardware, seed=seed,
                                  overrides={k: str(v) for k, v in overrides.items()})
    rd, headline = registry.run_experiment(name, config, out=tmp_path / name)
    assert rd.read_json("summary.json") == json.loads(json.dumps(headline))
    meta = rd.read_json("metadata.json")
    assert meta["status"] == "complete" and meta["experiment"] == name and meta["device_count"] == 8
    assert rd.read_json("config.json") == results._jsonable(config)
    assert rd.file("summary.md").read_text().startswith("# ")
    return rd, headline


def _png(rd, name):
    data = rd.file(name).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, name


def _finite(*values):
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


def _monotone_front(x, y):
    """The Pareto frontier of (x, y): ascending x, strictly descending y."""
    f = plots.pareto_front(np.asarray(x, float), np.asarray(y, float))
    xs, ys = np.asarray(x, float)[f], np.asarray(y, float)[f]
    assert np.all(np.diff(xs) > 0) and np.all(np.diff(ys) < 0)
    return xs, ys


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """A tiny calibration of this machine (elementwise kernels, 2 rounds): (ResultsDir, headline)."""
    return _run("calibrate", tmp_path_factory.mktemp("cal"), quick=True, families="elementwise", rounds=2,
                min_round_s=0.001, steps=200)


def test_every_experiment_is_registered_and_follows_the_contract():
    for name in NEW:
        assert name in registry.names()
        assert registry.describe(name)
        registry.make_config(name)  # full-mode defaults validate
        registry.make_config(name, quick=True)


@pytest.mark.parametrize("name, overrides, message", [
    ("calibrate", {"families": "gemm,nosuch"}, r"unknown \['nosuch'\]"),
    ("helix-pareto", {"models": "gpt-5"}, "gpt-5"),
    ("helix-pareto", {"alpha_scales": "0.25,1"}, "must start with 1.0"),
    ("disagg-pareto", {"mixes": "chatty"}, r"unknown mixes \['chatty'\]"),
    ("search", {"workloads": "tiny"}, r"unknown workloads \['tiny'\]"),
    ("helix-mx", {"gqa_layouts": "4by2"}, "is not KVPxTPA"),
    ("helix-mx", {"mla_layouts": "4x2"}, "TPA must be 1"),
    ("energy", {"plot_format": "nvfp4"}, "is not among formats"),
    ("quickstart", {"tpa": "4"}, r"TPA must divide n_kv_heads=2"),
    ("quickstart", {"seq_len": "48"}, r"multiple of 16·kvp=64"),
])
def test_bad_configs_name_the_value(name, overrides, message):
    with pytest.raises(ValueError, match=message):
        registry.make_config(name, overrides=overrides)


def test_calibrate(calibrated):
    rd, head = calibrated
    rows = (rd.path / "measurements.csv").read_text().splitlines()
    n_rows = sum(1 for line in rows if line and not line.startswith("#")) - 1  # minus the header
    assert n_rows == head["rows"] == head["rows_fitted"] == 52  # 13 sizes × 2 dtypes × (multiply, copy)
    for split in ("heldout_random", "heldout_extrapolation"):
        h = head[split]
        assert h["n_kernels_gt_1ms"] >= 1 and _finite(h["fitted_mape_pct"], h["datasheet_mape_pct"])
        # the fit beats the uncalibrated roofline on kernels it never saw
        assert 0 < h["fitted_mape_pct"] < h["datasheet_mape_pct"] and h["ratio_datasheet_over_fitted"] > 1
    spread = head["heldout_random_seeds"]  # seed 0's split is the headline's; the others differ
    assert spread["seeds"] == [0, 1, 2, 3, 4]
    assert spread["fitted_mape_pct"][0] == head["heldout_random"]["fitted_mape_pct"]
    scored = [v for v in spread["fitted_mape_pct"] if v is not None]  # a split may hold out no kernel > 1 ms
    assert spread["mean_pct"] == pytest.approx(np.mean(scored)) and len(set(scored)) > 1
    assert (spread["min_pct"], spread["max_pct"]) == (min(scored), max(scored))
    hw, params = load_profile(head["profile"])
    assert hw.name == "cpu-local" and hw.links[1].size == 8
    errors = results.read_csv(rd.file("fit_errors.csv"))
    assert {e["split"] for e in errors} == {"random", "extrapolation", "all"}
    assert {e["model"] for e in errors} == {"fitted", "datasheet"}
    _png(rd, "predicted_vs_measured.png")
    assert "| random |" in rd.file("summary.md").read_text()


def test_calibrate_fits_someone_elses_measurement_file(calibrated, tmp_path):
    # The rows of the fixture's run, as if measured on an H100: the spec comes from the device kind.
    rows = read_csv(calibrated[0].path / "measurements.csv").rows
    env = {"backend": "gpu", "device_kind": "NVIDIA H100 80GB HBM3"}
    theirs = write_csv(tmp_path / "h100.csv", MeasurementSet(rows, env))
    rd, head = _run("calibrate", tmp_path, measurements=theirs, steps=200)
    assert head["hardware"] == "h100-sxm" and head["rows"] == len(rows)
    assert read_csv(rd.file("measurements.csv")).rows == rows  # written back as read
    hw, _ = load_profile(head["profile"])
    assert hw == get_hardware("h100-sxm")
    assert head["heldout_random"]["fitted_mape_pct"] < head["heldout_random"]["datasheet_mape_pct"]
    _, named = _run("calibrate", tmp_path / "named", measurements=theirs, preset="gb200-nvl72", steps=200)
    assert named["hardware"] == "gb200-nvl72"


def test_helix_pareto(tmp_path):
    rd, head = _run("helix-pareto", tmp_path, seed=3, n_batches=6, max_batch=64, pp_options="1,2",
                    alpha_scales="1,0.25", plot_points=200)
    table = results.read_csv(rd.file("helix_ratios.csv"))
    assert [(r["model"], float(r["alpha_scale"])) for r in table] == [
        ("deepseek-r1", 1.0), ("llama-3.1-405b", 1.0), ("deepseek-r1", 0.25), ("llama-3.1-405b", 0.25)]
    sweeps = [json.loads(line) for line in rd.file("helix_sweeps.jsonl").read_text().splitlines()]
    for model in ("deepseek-r1", "llama-3.1-405b"):
        h = head[model]
        assert h["n_layouts"] > 1000 and _finite(*(h[k] for k in ("interactivity", "throughput", "ttl_fixed_batch",
                                                                  "batch_equal_ttl", "hopb")))
        assert h["throughput"] > 0 and h["ttl_fixed_batch"] > 0 and h["batch_equal_ttl"] >= 1 and 0 <= h["hopb"] < 1
        # interactivity = max tokens/s/user of Helix over the baselines': read it off the drawn points (every
        # frontier point is drawn, and the fastest point of a series is on its frontier)
        plot = next(s["plot"] for s in sweeps if s["model"] == model and s["alpha_scale"] == 1.0)
        (hx, hy), (bx, by) = [_monotone_front(s["x"], s["y"]) for s in plot.values()]
        assert h["interactivity"] == pytest.approx(hx.max() / bx.max(), rel=1e-6)
        assert all(lab for s in plot.values() for lab in s["labels"])
        _png(rd, f"pareto_{model}.png")
    assert set(head["alpha_sensitivity"]) == {"deepseek-r1/alpha0.25", "llama-3.1-405b/alpha0.25"}


def test_disagg_pareto(tmp_path):
    rd, head = _run("disagg-pareto", tmp_path, models="llama-3.1-70b", mixes="prefill-heavy,decode-heavy",
                    ttl_targets_ms="10,50", max_batch=256, batch_step=0.5, max_gpus=16, plot_points=200)
    table = results.read_csv(rd.file("rate_matching.csv"))
    assert [(r["mix"], float(r["ttl_ms"])) for r in table] == [
        ("prefill-heavy", 10.0), ("prefill-heavy", 50.0), ("decode-heavy", 10.0), ("decode-heavy", 50.0)]
    for r in table:
        rate, co, a = float(r["rate_matched"]), float(r["colocated"]), float(r["alpha"])
        assert rate > 0 and co > 0 and a > 0 and float(r["gain"]) == pytest.approx(rate / co)
        # rate matching is the best α: min(α·R_p, R_d)(1/R_p + 1/R_d)/(1 + α) ≤ 1 for any fixed α
        assert 0 < float(r["fixed_0.5_rel"]) <= 1 + 1e-9 and 0 < float(r["fixed_3.5_rel"]) <= 1 + 1e-9
    pre, dec = ([float(r["alpha"]) for r in table if r["mix"] == m] for m in ("prefill-heavy", "decode-heavy"))
    assert min(pre) > max(dec)  # prefill-heavy traffic needs more prefill GPUs per decode GPU
    front = [r for r in results.read_csv(rd.file("frontiers.csv"))]
    for mix in ("prefill-heavy", "decode-heavy"):
        pts = [(float(r["tokens_per_s_per_user"]), float(r["tokens_per_s_per_gpu"])) for r in front if r["mix"] == mix]
        x, y = np.asarray(pts).T
        assert len(x) >= 2 and np.all(np.diff(x) > 0) and np.all(np.diff(y) < 0)  # written as a frontier
        assert all(r["label"].startswith("D: ") for r in front if r["mix"] == mix)
    assert set(head["gain_max"]) == {"llama-3.1-70b/prefill-heavy", "llama-3.1-70b/decode-heavy"}
    _png(rd, "rate_matching.png")
    _png(rd, "pareto_llama-3.1-70b_prefill-heavy.png")


def test_search(tmp_path):
    rd, head = _run("search", tmp_path, seed=1, models="llama-3.1-8b", workloads="prefill-heavy",
                    ttl_limits_ms="20,50", batch_step=0.3, max_gpus=8, max_total_gpus=16, prefill_batches="1,2,4",
                    pp_options="1,2", chunks="0", modes="colocated", starts=2, steps=5,
                    sweep_model="llama-3.1-8b", sweep_workload="prefill-heavy", sweep_ttl_ms="50,20", warm_steps=5)
    cases = results.read_csv(rd.file("search_cases.csv"))
    assert [float(c["ttl_ms"]) for c in cases] == [20.0, 50.0] and head["n_cases"] == 2
    for c in cases:
        e, g = float(c["exhaustive"]), float(c["gradient"])
        assert e > 0 and g > 0 and g <= e * (1 + 1e-9)  # the exhaustive optimum is exact over the same space
        assert float(c["gap_pct"]) == pytest.approx(100 * (1 - g / e), abs=1e-9)
        assert int(c["evals_gradient"]) > 0 and int(c["evals_exhaustive"]) > 0
    e20, e50 = (float(c["exhaustive"]) for c in cases)
    assert e50 >= e20  # a looser TTL limit can only raise the optimum
    sweep = results.read_csv(rd.file("sla_sweep.csv"))
    assert len(sweep) == 2 and all(float(p["gradient"]) <= float(p["exhaustive"]) * (1 + 1e-9) for p in sweep)
    assert head["max_gap_pct"] >= 0 and 0 <= head["frac_cases_within_2pct"] <= 1
    _png(rd, "search.png")


def test_helix_mx(tmp_path):
    rd, head = _run("helix-mx", tmp_path, formats="mxfp8_e4m3,mxfp4_e2m1", gqa_layouts="4x2", mla_layouts="",
                    batch=2, seq=64)
    rows = {r["format"]: r for r in results.read_csv(rd.file("helix_mx.csv"))}
    assert list(rows) == ["mxfp8_e4m3", "mxfp4_e2m1"] and {r["layout"] for r in rows.values()} == {"KVP4×TPA2"}
    for role in ("kv", "weights", "a2a", "all"):
        e8, e4 = float(rows["mxfp8_e4m3"][f"err_{role}"]), float(rows["mxfp4_e2m1"][f"err_{role}"])
        assert 0 < e8 < e4 < 1  # fewer bits, more error; neither format destroys the step
    r8, r4 = (float(rows[f]["a2a_bytes_ratio"]) for f in ("mxfp8_e4m3", "mxfp4_e2m1"))
    assert 0 < r4 < r8 < 0.3  # payload bytes vs FP32: codes + E8M0 scales + FP32 LSE
    assert head["gqa/KVP4×TPA2"]["mxfp4_e2m1"]["err_all"] == pytest.approx(float(rows["mxfp4_e2m1"]["err_all"]))
    _png(rd, "error_vs_bits_gqa_KVP4xTPA2.png")


def test_energy_through_the_cli_with_a_profile(tmp_path, calibrated, capsys):
    _, cal_head = calibrated
    out = tmp_path / "energy"
    argv = ["run", "energy", "--out", str(out), "--hardware", cal_head["profile"], "--seed", "2",
            "presets=h100-sxm,gb200-nvl72", "formats=bf16,mxfp8_e4m3", "n_batches=6", "pp_options=1",
            "ttl_targets_ms=50", "--plot-points", "100"]
    assert cli.main(argv) == 0
    assert f"results: {out}" in capsys.readouterr().out
    rd = results.ResultsDir(out)
    head = rd.read_json("summary.json")
    assert head["modelled_not_measured"] is True
    assert set(head["best_tokens_per_joule"]) == {f"{s}/{f}" for s in ("h100-sxm", "gb200-nvl72", "profile")
                                                  for f in ("bf16", "mxfp8_e4m3")}
    for key, tpj in head["best_tokens_per_joule"].items():
        assert _finite(tpj) and tpj > 0, key
    best = {(r["system"], r["format"]): r for r in results.read_csv(rd.file("energy.csv"))}
    for (system, fmt), r in best.items():
        if system == "profile":
            assert r["hardware"].startswith("cpu-local (profile")
            continue
        hw = get_hardware(system)
        p = float(r["best_power_w_per_gpu"])
        # power = idle + (peak − idle)·utilization + host share, utilization in [0, 1]
        assert hw.idle_power_w + hw.host_power_w - 1e-3 <= p <= hw.peak_power_w + hw.host_power_w + 1e-3
        assert float(r["best_tokens_per_joule"]) * float(r["best_joules_per_token"]) == pytest.approx(1.0)
    for system in ("h100-sxm", "gb200-nvl72"):  # 8-bit weights and KV: fewer bytes per token, more tokens/J
        assert float(best[system, "mxfp8_e4m3"]["best_tokens_per_joule"]) > float(best[system, "bf16"]["best_tokens_per_joule"])
    summary = rd.file("summary.md").read_text()
    for phrase in ("modelled numbers, not measurements", "same run", "steady-state", "full system"):
        assert phrase in summary
    _png(rd, "energy_by_hardware.png")


def test_quickstart_with_a_profile(tmp_path, calibrated):
    _, cal_head = calibrated
    rd, head = _run("quickstart", tmp_path, hardware=cal_head["profile"], n_layers=1, hidden=64, ffn=128, seq_len=64,
                    steps=20, warmup_steps=2,
                    eval_every=10, eval_windows=32, decode_batch=2, gb200_models="llama-3.1-405b", n_batches=6,
                    local_seq_len=4096)
    c = head["calibration"]
    assert c["measured_here"] is False and c["hardware"] == "cpu-local"
    assert c["heldout_mape_pct"] == pytest.approx(cal_head["heldout_random"]["fitted_mape_pct"])
    h = head["helix_decode"]
    assert h["devices"] == 8 and h["within_tolerance"] is True
    assert h["max_abs_error"] < 1e-4 and h["max_rel_error"] < 1e-5  # FP32 Helix = the single-device model
    assert h["fp32_val_loss"] == pytest.approx(h["reference_val_loss"], abs=1e-5)
    assert h["mx_kv_max_abs_error"] > 100 * h["max_abs_error"]  # the MXFP8 KV cache does change the logits
    assert abs(h["mx_kv_val_loss"] - h["reference_val_loss"]) < 0.05
    t = head["training"]
    assert 0 < t["fp32_val_loss"] < math.log(256) + 0.1 and 0 < t["mx_val_loss"] < math.log(256) + 0.1
    assert t["delta"] == pytest.approx(t["mx_val_loss"] - t["fp32_val_loss"]) and t["policy"] == "mxfp6_e3m2"
    r = head["helix_ratios"]["gb200"]["llama-3.1-405b"]
    assert r["hardware"] == "gb200-nvl72 (datasheet)" and r["paper"]["interactivity"] == 1.13
    assert _finite(*(r[k] for k in ("interactivity", "throughput", "ttl_fixed_batch", "batch_equal_ttl", "hopb")))
    local = head["helix_ratios"]["local"]["llama-3.1-8b"]
    assert "error" in local or local["hardware"].startswith("cpu-local (profile")
    curves = results.read_csv(rd.file("training_curves.csv"))
    assert [(c["policy"], int(c["step"])) for c in curves] == [(p, s) for p in ("fp32", "mxfp6_e3m2") for s in (10, 20)]
    summary = rd.file("summary.md").read_text()
    for section in ("Calibration", "Training: FP32 vs MXFP6", "Helix decode on 8", "Helix Pareto"):
        assert section in summary
    _png(rd, "quickstart.png")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["helix-pareto", "disagg-pareto", "helix-mx", "energy", "calibrate"])
def test_quick_mode(name, tmp_path):
    """--quick end to end (minutes each)."""
    rd, head = _run(name, tmp_path, quick=True)
    if name == "helix-pareto":
        assert all(head[m]["n_layouts"] >= 100_000 for m in ("deepseek-r1", "llama-3.1-405b"))


@pytest.mark.slow
def test_quickstart_main_job(tmp_path):
    """The main job as a user runs it (about 5–8 minutes on 2 cores)."""
    rd, head = _run("quickstart", tmp_path)
    assert head["helix_decode"]["within_tolerance"] is True and head["calibration"]["measured_here"] is True
    assert _finite(head["calibration"]["heldout_mape_pct"], head["training"]["mx_val_loss"])
