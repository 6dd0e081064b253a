"""specs.py and presets.py: published constants, validation errors that name the value."""

import math

import numpy as np
import pytest

from perfmodel import HARDWARE, MODELS, HardwareSpec, Layout, LinkLevel, ModelSpec, Workload, get_hardware, get_model
from perfmodel.specs import format_bits


def _norm_params(m: ModelSpec) -> int:
    return (2 * m.n_layers + 1) * m.hidden  # RMSNorm weights: two per layer plus the final one


@pytest.mark.parametrize("name,published", [
    # source: safetensors parameter counts of meta-llama/Llama-3.1-8B and -70B on Hugging Face
    ("llama-3.1-8b", 8_030_261_248),
    ("llama-3.1-70b", 70_553_706_496),
])
def test_llama_parameter_counts_exact(name, published):
    m = get_model(name)
    assert m.total_params + _norm_params(m) == published


def test_moe_parameter_counts():
    ds = get_model("deepseek-r1")  # arXiv 2412.19437: 671B total, 37B activated (MTP module excluded)
    assert ds.total_params == pytest.approx(671e9, rel=2e-3)
    assert ds.active_params == pytest.approx(37e9, rel=2e-2)
    mix = get_model("mixtral-8x7b")  # Mixtral paper: 47B total, 13B active
    assert mix.total_params == pytest.approx(46.7e9, rel=1e-2)
    assert mix.active_params == pytest.approx(12.9e9, rel=1e-2)
    qwen = get_model("qwen3-235b-a22b")  # model name: 235B total, 22B active
    assert qwen.total_params == pytest.approx(235e9, rel=1e-2)
    assert qwen.active_params == pytest.approx(22e9, rel=2e-2)


def test_mla_dims():
    ds = get_model("deepseek-r1")
    assert (ds.qk_dim, ds.attn_v_dim, ds.kv_elems_per_token, ds.n_moe_layers) == (576, 512, 576, 58)
    llama = get_model("llama-3.1-405b")
    assert llama.kv_elems_per_token == 2 * 8 * 128


def test_presets_cover_the_issue():
    assert {"h100-sxm", "h200-sxm", "b200", "gb200-nvl72", "mi300x", "tpu-v5p"} <= set(HARDWARE)
    assert {"llama-3.1-8b", "llama-3.1-70b", "llama-3.1-405b", "deepseek-r1", "qwen3-235b-a22b",
            "mixtral-8x7b", "tiny-dense", "tiny-moe"} <= set(MODELS)
    gb = get_hardware("GB200-NVL72")
    assert gb.scale_up.size == 72 and gb.hbm_bandwidth_bytes_per_s == 8e12
    f32 = lambda x: float(np.float32(x))  # noqa: E731  (peaks are float32 arrays)
    assert float(gb.peak_flops(4.25)) == f32(10e15) and float(gb.peak_flops(8.25)) == f32(5e15)
    h100 = get_hardware("h100-sxm")  # no FP4: FP4 formats run at the FP8 rate
    assert float(h100.peak_flops(4.5)) == f32(1978.9e12) and float(h100.peak_flops(16)) == f32(989.4e12)


@pytest.mark.parametrize("lookup,name", [(get_model, "llama-4"), (get_hardware, "a100")])
def test_unknown_preset_lists_valid_names(lookup, name):
    with pytest.raises(ValueError, match=rf"{name}.*valid names: .*(llama-3.1-8b|h100-sxm)"):
        lookup(name)


@pytest.mark.parametrize("kwargs,match", [
    (dict(hidden=0), "hidden=0"),
    (dict(n_heads=12, n_kv_heads=8), "n_heads=12"),
    (dict(n_experts=8, top_k=9, expert_ffn=64), "top_k=9"),
    (dict(kv_lora_rank=512, n_kv_heads=8), "n_kv_heads=8"),
    (dict(n_layers=-2), "n_layers=-2"),
])
def test_bad_model_spec(kwargs, match):
    base = dict(name="x", n_layers=2, hidden=64, n_heads=8, n_kv_heads=4, head_dim=16, ffn=128, vocab=256)
    with pytest.raises(ValueError, match=match):
        ModelSpec(**{**base, **kwargs})


@pytest.mark.parametrize("kwargs,match", [
    (dict(tpa=2, kvp=2, tpf=2), "tpf·ep=2·1=2"),
    (dict(tpa=0), "tpa=0"),
    (dict(weight_format="fp5"), "weight_format='fp5'"),
])
def test_bad_layout(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Layout(**kwargs)


@pytest.mark.parametrize("layout,model,match", [
    (Layout(tpa=3, tpf=3), "tiny-dense", "tpa=3 does not divide n_kv_heads=4"),
    (Layout(tpa=8, kvp=2, tpf=16), "tiny-dense", "tpa=8 exceeds n_kv_heads=4"),
    (Layout(tpa=1, kvp=1, dp_attn=3, ep=3, batch=3), "tiny-moe", "ep=3 does not divide n_experts=8"),
    (Layout(tpa=2, ep=2), "tiny-dense", "ep=2 needs an MoE model"),
    (Layout(pp=3), "tiny-dense", "pp=3 does not divide n_layers=2"),
    (Layout(dp_attn=2, tpf=2, batch=3), "tiny-dense", "dp_attn=2 does not divide batch=3"),
    (Layout(batch=6, microbatches=4), "tiny-dense", "microbatches=4 does not divide batch=6"),
    (Layout(tpa=1, dp_attn=4, ep=4, batch=4), "tiny-dense", "ep=4 needs an MoE model"),
])
def test_layout_does_not_fit_model(layout, model, match):
    with pytest.raises(ValueError, match=match):
        layout.check_model(get_model(model))


def test_layout_accepts_plain_tp_duplication_and_formats():
    Layout(tpa=8, tpf=8).check_model(get_model("tiny-dense"))  # K=4: KV duplicated twice
    lay = Layout(weight_format="mxfp4_e2m1", kv_format="nvfp4", act_format="mxfp8_e4m3")
    assert (lay.weight_bits, lay.kv_bits, lay.act_bits, lay.comm_bits) == (4.25, 4.5, 8.25, 16.0)
    assert format_bits("fp32") == 32.0


def _hw(**kw):
    base = dict(name="x", flops_fp4=0.0, flops_fp8=1e15, flops_bf16=5e14, flops_fp32=1e14,
                hbm_bandwidth_bytes_per_s=1e12, hbm_capacity_bytes=1e10, idle_power_w=50.0, peak_power_w=500.0,
                links=(LinkLevel("d", 1, 1e12, 0.0), LinkLevel("u", 8, 1e11, 1e-6), LinkLevel("o", 64, 1e10, 1e-5)))
    return HardwareSpec(**{**base, **kw})


@pytest.mark.parametrize("kwargs,match", [
    (dict(hbm_bandwidth_bytes_per_s=-1.0), "hbm_bandwidth_bytes_per_s=-1.0"),
    (dict(idle_power_w=600.0), "idle_power_w=600.0 > peak_power_w=500.0"),
    (dict(flops_bf16=math.nan), "flops_bf16=nan"),
    (dict(links=(LinkLevel("d", 1, 1e12, 0.0), LinkLevel("u", 72, 1e11, 1e-6), LinkLevel("o", 8, 1e10, 1e-5))),
     r"sizes \[1, 72, 8\]"),
])
def test_bad_hardware(kwargs, match):
    _hw()
    with pytest.raises(ValueError, match=match):
        _hw(**kwargs)


def test_bad_link_and_workload():
    with pytest.raises(ValueError, match="size=0"):
        LinkLevel("u", 0, 1e11, 1e-6)
    with pytest.raises(ValueError, match="isl=0"):
        Workload(isl=0, osl=10)
    with pytest.raises(ValueError, match="ttl_limit_s=nan"):
        Workload(isl=10, osl=10, ttl_limit_s=math.nan)
    assert Workload(isl=1000, osl=200).mean_context == 1100


def test_scaled_hardware_scales_every_rate_and_nothing_else():
    hw = get_hardware("gb200-nvl72")
    small = hw.scaled(1e-3, hbm_capacity_bytes=1.5e6)
    assert small.name == "gb200-nvl72/1000" and small.hbm_capacity_bytes == 1.5e6
    for field in ("flops_fp4", "flops_fp8", "flops_bf16", "flops_fp32", "hbm_bandwidth_bytes_per_s"):
        assert getattr(small, field) == pytest.approx(getattr(hw, field) * 1e-3)
    for a, b in zip(small.links, hw.links):
        assert (a.bandwidth_bytes_per_s, a.latency_s, a.size) == (pytest.approx(b.bandwidth_bytes_per_s * 1e-3),
                                                                   b.latency_s, b.size)
    assert (small.idle_power_w, small.peak_power_w) == (hw.idle_power_w, hw.peak_power_w)
    assert hw.scaled(2.0).hbm_capacity_bytes == hw.hbm_capacity_bytes
    with pytest.raises(ValueError, match="rate=0.0 must be positive"):
        hw.scaled(0.0)
