"""Presets: published hardware and model constants, each with its source.

    get_hardware("gb200-nvl72") -> HardwareSpec
    get_model("deepseek-r1") -> ModelSpec

Names are lower case; lookups are case-insensitive and raise ValueError listing the valid names.

FLOP/s are dense (no 2:4 sparsity): NVIDIA datasheets print sparse figures with an asterisk, and
the dense rate is half. Link bandwidths are per GPU and per direction (NVLink "1.8 TB/s" is the
bidirectional total: 900 GB/s each way). Latencies α are per collective step and are priors to be
calibrated (perfmodel.calibrate), not datasheet values: no vendor publishes them.
Idle power is not on datasheets either; the values below are labelled estimates.
"""

from __future__ import annotations

from .specs import HardwareSpec, LinkLevel, ModelSpec

T = 1e12
GB = 1e9

# Latency priors, per collective step (see module docstring).
# source: NCCL send/recv over NVLink ≈ 3.7 µs without CUDA graphs, ≈ 0.5 µs with them (NVIDIA/nccl
# issue #1984, H800); NVLS all-reduce on 2×H100 ≈ 6 µs (NVIDIA/nccl issue #1259). Prior: 1 µs/step.
_NVLINK_STEP_S = 1.0e-6
# source: inter-node NCCL small-message all-reduce on H100 + 400G InfiniBand ≈ 25 µs (NVIDIA/nccl
# issue #1453); prior 5 µs per step.
_IB_STEP_S = 5.0e-6
# source: ConnectX-7 400 Gb/s per GPU (DGX H100/B200 datasheets: 8× 400 Gb/s) = 50 GB/s per direction.
_IB_400G = LinkLevel("scale-out", 1 << 20, 50 * GB, _IB_STEP_S)


def _single_die(hbm_bandwidth: float) -> LinkLevel:
    # source: one die per package; no die-to-die link. Size 1, so GPU-level collectives never use it.
    return LinkLevel("die-to-die", 1, hbm_bandwidth, 0.0)


HARDWARE: dict[str, HardwareSpec] = {
    "h100-sxm": HardwareSpec(
        name="h100-sxm",
        flops_fp4=0.0,  # source: NVIDIA H100 datasheet (Hopper has no FP4 tensor cores)
        flops_fp8=1978.9 * T,  # source: NVIDIA H100 datasheet, SXM, FP8 3,958 TFLOPS with sparsity / 2
        flops_bf16=989.4 * T,  # source: NVIDIA H100 datasheet, SXM, BF16 1,979 TFLOPS with sparsity / 2
        flops_fp32=494.7 * T,  # source: NVIDIA H100 datasheet, SXM, TF32 989 TFLOPS with sparsity / 2
        hbm_bandwidth_bytes_per_s=3.35e12,  # source: NVIDIA H100 datasheet, SXM, 3.35 TB/s
        hbm_capacity_bytes=80 * GB,  # source: NVIDIA H100 datasheet, SXM, 80 GB
        idle_power_w=70.0,  # source: estimate ≈ 10% of TDP (public nvidia-smi idle readings 60–80 W)
        peak_power_w=700.0,  # source: NVIDIA H100 datasheet, SXM, max TDP up to 700 W
        host_power_w=575.0,  # source: DGX H100 datasheet, ~10.2 kW max system − 8×700 W, per GPU
        links=(
            _single_die(3.35e12),
            # source: NVIDIA H100 datasheet, NVLink 900 GB/s (bidirectional); HGX H100 8-GPU NVSwitch domain
            LinkLevel("scale-up", 8, 450 * GB, _NVLINK_STEP_S),
            _IB_400G,
        ),
    ),
    "h200-sxm": HardwareSpec(
        name="h200-sxm",
        flops_fp4=0.0,  # source: NVIDIA H200 datasheet (Hopper: no FP4)
        flops_fp8=1978.9 * T,  # source: NVIDIA H200 datasheet, SXM, FP8 3,958 TFLOPS with sparsity / 2
        flops_bf16=989.4 * T,  # source: NVIDIA H200 datasheet, SXM, BF16 1,979 TFLOPS with sparsity / 2
        flops_fp32=494.7 * T,  # source: NVIDIA H200 datasheet, SXM, TF32 989 TFLOPS with sparsity / 2
        hbm_bandwidth_bytes_per_s=4.8e12,  # source: NVIDIA H200 datasheet, 4.8 TB/s
        hbm_capacity_bytes=141 * GB,  # source: NVIDIA H200 datasheet, 141 GB HBM3e
        idle_power_w=80.0,  # source: estimate; public H200 SXM idle measurement ≈ 80 W (vLLM power benchmarks)
        peak_power_w=700.0,  # source: NVIDIA H200 datasheet, SXM, max TDP up to 700 W
        host_power_w=575.0,  # source: DGX H200 datasheet, ~10.2 kW max system − 8×700 W, per GPU
        links=(
            _single_die(4.8e12),
            # source: NVIDIA H200 datasheet, NVLink 900 GB/s (bidirectional); HGX H200 8-GPU domain
            LinkLevel("scale-up", 8, 450 * GB, _NVLINK_STEP_S),
            _IB_400G,
        ),
    ),
    "b200": HardwareSpec(
        name="b200",
        flops_fp4=9000 * T,  # source: NVIDIA DGX B200 datasheet, 144 PFLOPS FP4 (sparse) / 8 GPUs / 2
        flops_fp8=4500 * T,  # source: NVIDIA DGX B200 datasheet, 72 PFLOPS FP8 (sparse) / 8 GPUs / 2
        flops_bf16=2250 * T,  # source: NVIDIA HGX B200 datasheet, BF16 36 PFLOPS (sparse) / 8 / 2
        flops_fp32=1100 * T,  # source: NVIDIA HGX B200 datasheet, TF32 18 PFLOPS (sparse) / 8 / 2
        hbm_bandwidth_bytes_per_s=8e12,  # source: NVIDIA DGX B200 datasheet, 64 TB/s / 8 GPUs
        hbm_capacity_bytes=180 * GB,  # source: NVIDIA DGX B200 datasheet, 1,440 GB / 8 GPUs
        idle_power_w=140.0,  # source: estimate ≈ 14% of TDP, as measured for H200 (80 / 700 W)
        peak_power_w=1000.0,  # source: NVIDIA HGX B200 datasheet, TDP 1,000 W per GPU
        host_power_w=790.0,  # source: NVIDIA DGX B200 datasheet, ~14.3 kW max system − 8×1,000 W, per GPU
        links=(
            # source: NVIDIA Blackwell architecture brief, two dies joined by the 10 TB/s NV-HBI
            LinkLevel("die-to-die", 1, 10e12, 0.0),
            # source: NVIDIA DGX B200 datasheet, NVLink 5 1.8 TB/s per GPU (bidirectional), 8-GPU domain
            LinkLevel("scale-up", 8, 900 * GB, _NVLINK_STEP_S),
            _IB_400G,
        ),
    ),
    "gb200-nvl72": HardwareSpec(
        name="gb200-nvl72",
        flops_fp4=10000 * T,  # source: NVIDIA GB200 NVL72 datasheet, 1,440 PFLOPS FP4 (sparse) / 72 / 2
        flops_fp8=5000 * T,  # source: NVIDIA GB200 NVL72 datasheet, 720 PFLOPS FP8/FP6 (sparse) / 72 / 2
        flops_bf16=2500 * T,  # source: NVIDIA GB200 NVL72 datasheet, 360 PFLOPS FP16/BF16 (sparse) / 72 / 2
        flops_fp32=1250 * T,  # source: NVIDIA GB200 NVL72 datasheet, 180 PFLOPS TF32 (sparse) / 72 / 2
        # source: NVIDIA GB200 NVL72 datasheet, 576 TB/s / 72 GPUs; Helix arXiv 2507.07120 App. A: 8,000 GB/s
        hbm_bandwidth_bytes_per_s=8e12,
        hbm_capacity_bytes=186 * GB,  # source: NVIDIA GB200 NVL72 datasheet, 13.4 TB HBM3e / 72 GPUs
        idle_power_w=170.0,  # source: estimate ≈ 14% of TDP, as measured for H200 (80 / 700 W)
        peak_power_w=1200.0,  # source: Blackwell per-GPU specifications, GB200 max TDP 1.2 kW
        host_power_w=630.0,  # source: NVL72 rack ≈ 132 kW (NVIDIA GB200 NVL72 reference) − 72×1.2 kW, per GPU
        links=(
            # source: NVIDIA Blackwell architecture brief, two dies joined by the 10 TB/s NV-HBI
            LinkLevel("die-to-die", 1, 10e12, 0.0),
            # source: NVIDIA GB200 NVL72 datasheet, 130 TB/s NVLink / 72 GPUs = 1.8 TB/s bidirectional
            LinkLevel("scale-up", 72, 900 * GB, _NVLINK_STEP_S),
            _IB_400G,
        ),
    ),
    "mi300x": HardwareSpec(
        name="mi300x",
        flops_fp4=0.0,  # source: AMD Instinct MI300X datasheet (CDNA 3: no FP4)
        flops_fp8=2614.9 * T,  # source: AMD Instinct MI300X datasheet, FP8 2,614.9 TFLOPS (dense)
        flops_bf16=1307.4 * T,  # source: AMD Instinct MI300X datasheet, BF16 1,307.4 TFLOPS (dense)
        flops_fp32=653.7 * T,  # source: AMD Instinct MI300X datasheet, TF32 653.7 TFLOPS (dense)
        hbm_bandwidth_bytes_per_s=5.3e12,  # source: AMD Instinct MI300X datasheet, 5.3 TB/s
        hbm_capacity_bytes=192 * GB,  # source: AMD Instinct MI300X datasheet, 192 GB HBM3
        idle_power_w=100.0,  # source: estimate ≈ 14% of TBP, as measured for H200 (80 / 700 W)
        peak_power_w=750.0,  # source: AMD Instinct MI300X datasheet, TBP 750 W
        host_power_w=575.0,  # source: estimate, taken equal to an 8-GPU DGX H100 host share
        links=(
            # source: AMD CDNA 3 white paper, Infinity Fabric AP / Infinity Cache peak 17.2 TB/s between
            # the 8 XCDs and 4 IODs of one package (level size 1: a GPU is the device here)
            LinkLevel("die-to-die", 1, 17.2e12, 0.0),
            # source: AMD Instinct MI300X datasheet, 7 Infinity Fabric links × 128 GB/s (bidirectional)
            # = 896 GB/s peer aggregate, fully connected 8-GPU platform: 448 GB/s per direction
            LinkLevel("scale-up", 8, 448 * GB, _NVLINK_STEP_S),
            _IB_400G,
        ),
    ),
    "tpu-v5p": HardwareSpec(
        name="tpu-v5p",
        flops_fp4=0.0,  # source: Google Cloud TPU v5p docs (no FP4)
        flops_fp8=459 * T,  # source: Google Cloud TPU v5p docs, peak compute per chip (FP8) 459 TFLOPS
        flops_bf16=459 * T,  # source: Google Cloud TPU v5p docs, peak compute per chip (BF16) 459 TFLOPS
        flops_fp32=459 * T / 4,  # source: estimate; MXU fp32 via 4 bf16 passes (no published figure)
        hbm_bandwidth_bytes_per_s=2765 * GB,  # source: Google Cloud TPU v5p docs, 2,765 GB/s
        hbm_capacity_bytes=95 * 2**30,  # source: Google Cloud TPU v5p docs, 95 GiB HBM2e per chip
        idle_power_w=80.0,  # source: estimate (Google publishes no v5p power figures)
        peak_power_w=450.0,  # source: estimate (Google publishes no v5p power figures)
        host_power_w=0.0,  # source: not published
        links=(
            _single_die(2765 * GB),
            # source: Google Cloud TPU v5p docs, bidirectional ICI 1,200 GB/s per chip, 3D torus,
            # 8,960 chips per pod: 600 GB/s per direction
            LinkLevel("scale-up", 8960, 600 * GB, _NVLINK_STEP_S),
            # source: Google Cloud TPU v5p docs, data-center network 50 Gb/s per chip
            LinkLevel("scale-out", 1 << 20, 50 / 8 * GB, _IB_STEP_S),
        ),
    ),
}


def _llama(name, layers, hidden, heads, ffn):
    return ModelSpec(name=name, n_layers=layers, hidden=hidden, n_heads=heads, n_kv_heads=8,
                     head_dim=128, ffn=ffn, vocab=128256)


MODELS: dict[str, ModelSpec] = {
    # source: config.json of meta-llama/Llama-3.1-8B (32 layers, hidden 4096, 32 heads, 8 KV heads,
    # intermediate 14336, vocab 128256)
    "llama-3.1-8b": _llama("llama-3.1-8b", 32, 4096, 32, 14336),
    # source: config.json of meta-llama/Llama-3.1-70B (80 layers, hidden 8192, 64 heads, 8 KV heads,
    # intermediate 28672)
    "llama-3.1-70b": _llama("llama-3.1-70b", 80, 8192, 64, 28672),
    # source: config.json of meta-llama/Llama-3.1-405B (126 layers, hidden 16384, 128 heads, 8 KV heads,
    # intermediate 53248); Helix arXiv 2507.07120 §4
    "llama-3.1-405b": _llama("llama-3.1-405b", 126, 16384, 128, 53248),
    # source: config.json of deepseek-ai/DeepSeek-R1 (= DeepSeek-V3 architecture, arXiv 2412.19437 §2,
    # §4.2): 61 layers (first_k_dense_replace 3, intermediate 18432), hidden 7168, 128 heads,
    # q_lora_rank 1536, kv_lora_rank 512, qk_rope_head_dim 64, qk_nope_head_dim 128, v_head_dim 128,
    # 256 routed + 1 shared expert, 8 per token, moe_intermediate 2048, vocab 129280.
    "deepseek-r1": ModelSpec(
        name="deepseek-r1", n_layers=61, hidden=7168, n_heads=128, n_kv_heads=1, head_dim=128,
        ffn=18432, vocab=129280, n_experts=256, top_k=8, n_shared_experts=1, expert_ffn=2048,
        n_dense_layers=3, q_lora_rank=1536, kv_lora_rank=512, rope_dim=64, v_head_dim=128,
    ),
    # source: config.json of Qwen/Qwen3-235B-A22B: 94 layers, hidden 4096, 64 heads, 4 KV heads,
    # head_dim 128, 128 experts, 8 per token, moe_intermediate 1536, intermediate 12288 (no dense
    # layers: mlp_only_layers []), vocab 151936.
    "qwen3-235b-a22b": ModelSpec(
        name="qwen3-235b-a22b", n_layers=94, hidden=4096, n_heads=64, n_kv_heads=4, head_dim=128,
        ffn=12288, vocab=151936, n_experts=128, top_k=8, expert_ffn=1536,
    ),
    # source: config.json of mistralai/Mixtral-8x7B-v0.1: 32 layers, hidden 4096, 32 heads, 8 KV
    # heads, 8 experts, 2 per token, intermediate 14336 (per expert), vocab 32000.
    "mixtral-8x7b": ModelSpec(
        name="mixtral-8x7b", n_layers=32, hidden=4096, n_heads=32, n_kv_heads=8, head_dim=128,
        ffn=14336, vocab=32000, n_experts=8, top_k=2, expert_ffn=14336,
    ),
    # Small models that parallel/ runs on 8 emulated CPU devices: every degree up to 8 divides
    # heads (8), FFN (256) and experts (8); KV heads 4 leave room for KVP × TPA meshes.
    # source: paretolab design choice (hidden 128, 2 layers; byte-level vocabulary 256).
    "tiny-dense": ModelSpec(
        name="tiny-dense", n_layers=2, hidden=128, n_heads=8, n_kv_heads=4, head_dim=16,
        ffn=256, vocab=256,
    ),
    # source: paretolab design choice (tiny-dense with 8 experts of 64, top-2, 1 shared expert).
    "tiny-moe": ModelSpec(
        name="tiny-moe", n_layers=2, hidden=128, n_heads=8, n_kv_heads=4, head_dim=16,
        ffn=256, vocab=256, n_experts=8, top_k=2, n_shared_experts=1, expert_ffn=64,
    ),
}


def _lookup(kind: str, table: dict, name: str):
    if not isinstance(name, str) or name.lower() not in table:
        raise ValueError(f"unknown {kind} {name!r}; valid names: {', '.join(sorted(table))}")
    return table[name.lower()]


def get_hardware(name: str) -> HardwareSpec:
    """The hardware preset `name` (case-insensitive).

    Raises:
      ValueError: an unknown name; the message lists the valid ones.
    """
    return _lookup("hardware", HARDWARE, name)


def get_model(name: str) -> ModelSpec:
    """The model preset `name` (case-insensitive).

    Raises:
      ValueError: an unknown name; the message lists the valid ones.
    """
    return _lookup("model", MODELS, name)
