"""Specs: the single source of truth for models, hardware, layouts and workloads.

`ModelSpec`, `Layout`, `HardwareSpec` (with its `LinkLevel`s) and `Workload` are frozen dataclasses,
validated at construction. parallel/ builds its meshes and shapes from them; the cost model costs
them. Presets live in `perfmodel.presets` (`get_model`, `get_hardware`).

Number formats are named as numerics/ names them; `format_bits(name)` is the one place that turns a
name into bits per element (scale overhead included: MXFP4 = 4 + 8/32 = 4.25).
"""

from __future__ import annotations

import dataclasses
import math


def _check_positive(owner: str, **values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, (int,)) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{owner}.{name}={value!r} must be a positive integer")


def _check_non_negative(owner: str, **values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, (int,)) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{owner}.{name}={value!r} must be a non-negative integer")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A decoder-only transformer, as its published config describes it.

    Attributes:
      name: preset name, e.g. "llama-3.1-405b".
      n_layers: decoder layers L.
      hidden: model width H.
      n_heads: query heads Q.
      n_kv_heads: KV heads K (= Q for MHA; 1 latent head for MLA).
      head_dim: per-head dimension Hsz of Q/K/V (for MLA: the no-RoPE query/key part).
      ffn: dense SwiGLU intermediate size F.
      vocab: vocabulary size.
      n_experts: routed experts (0 for a dense model).
      top_k: experts each token is routed to.
      n_shared_experts: always-on shared experts.
      expert_ffn: intermediate size of one expert.
      n_dense_layers: leading layers with a dense FFN in an MoE model (DeepSeek: 3).
      q_lora_rank: MLA query compression rank (0: none).
      kv_lora_rank: MLA latent KV rank (0: not MLA).
      rope_dim: MLA decoupled RoPE dimension.
      v_head_dim: MLA value head dimension (0: equal to head_dim).

    Raises:
      ValueError: a non-positive size, heads not divisible by KV heads, top_k > n_experts.
    """

    name: str
    n_layers: int
    hidden: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn: int
    vocab: int
    n_experts: int = 0
    top_k: int = 0
    n_shared_experts: int = 0
    expert_ffn: int = 0
    n_dense_layers: int = 0
    q_lora_rank: int = 0
    kv_lora_rank: int = 0
    rope_dim: int = 0
    v_head_dim: int = 0

    def __post_init__(self):
        _check_positive(
            f"ModelSpec({self.name!r})",
            n_layers=self.n_layers, hidden=self.hidden, n_heads=self.n_heads,
            n_kv_heads=self.n_kv_heads, head_dim=self.head_dim, ffn=self.ffn, vocab=self.vocab,
        )
        _check_non_negative(
            f"ModelSpec({self.name!r})",
            n_experts=self.n_experts, top_k=self.top_k, n_shared_experts=self.n_shared_experts,
            expert_ffn=self.expert_ffn, n_dense_layers=self.n_dense_layers,
            q_lora_rank=self.q_lora_rank, kv_lora_rank=self.kv_lora_rank,
            rope_dim=self.rope_dim, v_head_dim=self.v_head_dim,
        )
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"ModelSpec({self.name!r}): n_heads={self.n_heads} is not a multiple of "
                f"n_kv_heads={self.n_kv_heads}"
            )
        if self.n_experts:
            if not 0 < self.top_k <= self.n_experts:
                raise ValueError(
                    f"ModelSpec({self.name!r}): top_k={self.top_k} must be in [1, n_experts={self.n_experts}]"
                )
            if self.expert_ffn <= 0:
                raise ValueError(f"ModelSpec({self.name!r}): MoE needs expert_ffn > 0, got {self.expert_ffn}")
        if self.n_dense_layers > self.n_layers:
            raise ValueError(
                f"ModelSpec({self.name!r}): n_dense_layers={self.n_dense_layers} > n_layers={self.n_layers}"
            )
        if self.is_mla and self.n_kv_heads != 1:
            raise ValueError(
                f"ModelSpec({self.name!r}): MLA caches one latent head; n_kv_heads={self.n_kv_heads} must be 1"
            )
        if not self.is_mla and (self.q_lora_rank or self.rope_dim):
            raise ValueError(
                f"ModelSpec({self.name!r}): q_lora_rank={self.q_lora_rank} / rope_dim={self.rope_dim} "
                "are MLA fields but kv_lora_rank=0"
            )

    @property
    def is_moe(self) -> bool:
        return self.n_experts > 0

    @property
    def is_mla(self) -> bool:
        return self.kv_lora_rank > 0

    @property
    def v_dim(self) -> int:
        """Value head dimension."""
        return self.v_head_dim or self.head_dim

    # Derived sizes, used by the cost model and by parallel/ alike. Element counts, not bytes.

    @property
    def n_moe_layers(self) -> int:
        """Layers with a routed-expert FFN (0 for a dense model)."""
        return self.n_layers - self.n_dense_layers if self.is_moe else 0

    @property
    def qk_dim(self) -> int:
        """Per-head query·key dimension of decode attention.

        GQA/MHA: head_dim. MLA with absorbed up-projections (DeepSeek-V2 §2.1.2): queries are moved
        into the latent space, so q·k runs over kv_lora_rank + rope_dim (576 for DeepSeek-R1).
        """
        return self.kv_lora_rank + self.rope_dim if self.is_mla else self.head_dim

    @property
    def attn_v_dim(self) -> int:
        """Per-head value dimension inside decode attention (MLA absorbed: kv_lora_rank)."""
        return self.kv_lora_rank if self.is_mla else self.v_dim

    @property
    def kv_elems_per_token(self) -> int:
        """KV-cache elements per token per layer: 2·K·Hsz (GQA) or kv_lora_rank + rope_dim (MLA)."""
        if self.is_mla:
            return self.kv_lora_rank + self.rope_dim
        return 2 * self.n_kv_heads * self.head_dim

    @property
    def attn_params(self) -> int:
        """Attention weights of one layer (Q, K, V, O projections; MLA: down/up projections)."""
        h, q = self.hidden, self.n_heads
        if not self.is_mla:
            return h * q * self.head_dim + 2 * h * self.n_kv_heads * self.head_dim + q * self.v_dim * h
        qk_head = self.head_dim + self.rope_dim
        w_q = h * self.q_lora_rank + self.q_lora_rank * q * qk_head if self.q_lora_rank else h * q * qk_head
        w_dkv = h * (self.kv_lora_rank + self.rope_dim)
        w_ukv = self.kv_lora_rank * q * (self.head_dim + self.v_dim)
        return w_q + w_dkv + w_ukv + q * self.v_dim * h

    @property
    def dense_ffn_params(self) -> int:
        """SwiGLU FFN weights of one dense layer: 3·H·F."""
        return 3 * self.hidden * self.ffn

    @property
    def expert_params(self) -> int:
        """SwiGLU weights of one expert: 3·H·F_e."""
        return 3 * self.hidden * self.expert_ffn

    @property
    def moe_ffn_params(self) -> int:
        """Routed + shared experts + router of one MoE layer."""
        return (self.n_experts + self.n_shared_experts) * self.expert_params + self.hidden * self.n_experts

    @property
    def embedding_params(self) -> int:
        """Input embedding plus LM head (untied): 2·V·H."""
        return 2 * self.vocab * self.hidden

    @property
    def total_params(self) -> int:
        """All weights of the model."""
        dense = self.n_layers - self.n_moe_layers
        return (self.n_layers * self.attn_params + dense * self.dense_ffn_params
                + self.n_moe_layers * self.moe_ffn_params + self.embedding_params)

    @property
    def active_params(self) -> int:
        """Weights one token touches: routed top-k experts only."""
        dense = self.n_layers - self.n_moe_layers
        moe_active = (self.top_k + self.n_shared_experts) * self.expert_params + self.hidden * self.n_experts
        return (self.n_layers * self.attn_params + dense * self.dense_ffn_params
                + self.n_moe_layers * moe_active + self.embedding_params)


@dataclasses.dataclass(frozen=True)
class Layout:
    """How one model replica is laid out over GPUs for one phase (prefill or decode).

    Attention runs on `dp_attn × kvp × tpa` GPUs: `dp_attn` data-parallel groups (each holding a
    slice of the batch), each splitting the KV cache over the sequence (`kvp`, KV parallelism) and
    over KV heads (`tpa`). The same GPUs then run the FFN as `tpf × ep` (FFN tensor parallelism ×
    expert parallelism), so `dp_attn·kvp·tpa == tpf·ep` (Helix, arXiv 2507.07120 §2). Familiar
    layouts are special cases:
      plain TP=N:        tpa=N, kvp=1, dp_attn=1, tpf=N, ep=1 (KV duplicated when N > KV heads);
      Helix:             kvp·tpa=N, tpf·ep=N;
      DP attention + EP: dp_attn=N, tpa=kvp=1, ep=N (tpf=1).
    `pp` pipeline stages and `dp` whole-model replicas multiply the GPU count.

    Attributes:
      tpa, kvp, dp_attn, tpf, ep, pp, dp: parallel degrees (positive integers).
      batch: concurrent sequences per replica.
      microbatches: HOP-B micro-batches (1 = no overlap).
      chunk: prefill chunk size in tokens (0 = no chunking).
      weight_format, kv_format, act_format, comm_format: numerics format names.
      hopb: with microbatches > 1, overlap the KVP all-to-all of micro-batch i with the attention
        of micro-batch i+1 (HOP-B, c + m + (n-1)·max(c, m)); False runs the same micro-batches
        one after another, n·(c + m) (the paper's ablation).

    Raises:
      ValueError: a non-positive degree, attention and FFN GPU counts that differ, an unknown
        format name (`check_model` checks the rest).
    """

    tpa: int = 1
    kvp: int = 1
    dp_attn: int = 1
    tpf: int = 1
    ep: int = 1
    pp: int = 1
    dp: int = 1
    batch: int = 1
    microbatches: int = 1
    chunk: int = 0
    weight_format: str = "bf16"
    kv_format: str = "bf16"
    act_format: str = "bf16"
    comm_format: str = "bf16"
    hopb: bool = True

    def __post_init__(self):
        _check_positive(
            "Layout", tpa=self.tpa, kvp=self.kvp, dp_attn=self.dp_attn, tpf=self.tpf, ep=self.ep,
            pp=self.pp, dp=self.dp, batch=self.batch, microbatches=self.microbatches,
        )
        _check_non_negative("Layout", chunk=self.chunk)
        for role in ("weight_format", "kv_format", "act_format", "comm_format"):
            format_bits(getattr(self, role), role=f"Layout.{role}")
        if self.attention_gpus != self.ffn_gpus:
            raise ValueError(
                f"Layout: attention uses dp_attn·kvp·tpa={self.dp_attn}·{self.kvp}·{self.tpa}="
                f"{self.attention_gpus} GPUs but the FFN uses tpf·ep={self.tpf}·{self.ep}="
                f"{self.ffn_gpus}; Helix reuses the same GPUs, so they must be equal"
            )

    @property
    def attention_gpus(self) -> int:
        return self.dp_attn * self.kvp * self.tpa

    @property
    def ffn_gpus(self) -> int:
        return self.tpf * self.ep

    @property
    def gpus_per_stage(self) -> int:
        """N: GPUs of one pipeline stage of one replica."""
        return self.attention_gpus

    @property
    def n_gpus(self) -> int:
        """All GPUs of the layout: N · pp · dp."""
        return self.attention_gpus * self.pp * self.dp

    @property
    def weight_bits(self) -> float:
        return format_bits(self.weight_format)

    @property
    def kv_bits(self) -> float:
        return format_bits(self.kv_format)

    @property
    def act_bits(self) -> float:
        return format_bits(self.act_format)

    @property
    def comm_bits(self) -> float:
        return format_bits(self.comm_format)

    def check_model(self, model: ModelSpec) -> None:
        """Raise ValueError naming the numbers when this layout cannot shard `model`.

        TPA may exceed the KV heads only as plain TP (kvp=1), which then duplicates KV heads;
        TPA must then be a multiple of the KV heads. Otherwise TPA must divide the KV heads.
        The batch must split evenly over dp_attn groups and HOP-B micro-batches.
        """
        if self.batch % self.dp_attn:
            raise ValueError(f"Layout: dp_attn={self.dp_attn} does not divide batch={self.batch}")
        if self.batch % self.microbatches:
            raise ValueError(f"Layout: microbatches={self.microbatches} does not divide batch={self.batch}")
        if self.tpa > model.n_kv_heads:
            if self.kvp != 1 or self.tpa % model.n_kv_heads:
                raise ValueError(
                    f"tpa={self.tpa} exceeds n_kv_heads={model.n_kv_heads} of {model.name}: only plain "
                    f"TP (kvp=1) with tpa a multiple of the KV heads may duplicate KV (kvp={self.kvp})"
                )
        elif model.n_kv_heads % self.tpa:
            raise ValueError(f"tpa={self.tpa} does not divide n_kv_heads={model.n_kv_heads} of {model.name}")
        if model.n_heads % self.tpa:
            raise ValueError(f"tpa={self.tpa} does not divide n_heads={model.n_heads} of {model.name}")
        if model.n_layers % self.pp:
            raise ValueError(f"pp={self.pp} does not divide n_layers={model.n_layers} of {model.name}")
        if model.is_moe and model.n_experts % self.ep:
            raise ValueError(f"ep={self.ep} does not divide n_experts={model.n_experts} of {model.name}")
        if not model.is_moe and self.ep != 1:
            raise ValueError(f"ep={self.ep} needs an MoE model; {model.name} is dense")
        if model.ffn % self.tpf and model.n_layers > model.n_moe_layers:
            raise ValueError(f"tpf={self.tpf} does not divide ffn={model.ffn} of {model.name}")
        if model.is_moe and model.expert_ffn % self.tpf:
            raise ValueError(f"tpf={self.tpf} does not divide expert_ffn={model.expert_ffn} of {model.name}")



# ----------------------------------------------------------------------------------------------
# Number formats

def _bits_per_element(name: str) -> float:
    # The one call site of the format library: numerics is the source of truth for bits/element.
    import numerics

    return numerics.bits_per_element(name)


def _format_names() -> tuple[str, ...]:
    import numerics

    return tuple(numerics.FORMAT_NAMES)


def format_bits(name: str, *, role: str = "format") -> float:
    """Bits per element of a numerics format, block-scale overhead included.

    Args:
      name: a numerics format name, e.g. "bf16", "mxfp4_e2m1" (4.25), "nvfp4" (4.5).
      role: what the name is used for, quoted in the error.

    Returns:
      bits per element (float).

    Raises:
      ValueError: an unknown format name.

    References:
      OCP Microscaling Formats (MX) v1.0, §5.
    """
    try:
        return float(_bits_per_element(name))
    except (KeyError, ValueError, TypeError):
        raise ValueError(
            f"{role}={name!r} is not a known number format; valid: {', '.join(_format_names())}"
        ) from None


# ----------------------------------------------------------------------------------------------
# Hardware

def _check_positive_real(owner: str, allow_zero: tuple[str, ...] = (), **values: float) -> None:
    for name, value in values.items():
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or value < 0 or (value == 0 and name not in allow_zero):
            raise ValueError(f"{owner}.{name}={value!r} must be a positive finite number")


@dataclasses.dataclass(frozen=True)
class LinkLevel:
    """One level of the interconnect hierarchy (arXiv 2311.16417 §3: die, package, scale-up, scale-out).

    Attributes:
      name: "die-to-die", "scale-up", "scale-out".
      size: devices reachable at this level (a collective over ≤ size devices uses it).
      bandwidth_bytes_per_s: per-device, per-direction bandwidth.
      latency_s: latency α of one step of a collective (one message hop), seconds.
    """

    name: str
    size: int
    bandwidth_bytes_per_s: float
    latency_s: float

    def __post_init__(self):
        _check_positive(f"LinkLevel({self.name!r})", size=self.size)
        _check_positive_real(f"LinkLevel({self.name!r})", allow_zero=("latency_s",),
                             bandwidth_bytes_per_s=self.bandwidth_bytes_per_s, latency_s=self.latency_s)


@dataclasses.dataclass(frozen=True)
class HardwareSpec:
    """One accelerator and its place in the interconnect hierarchy.

    Attributes:
      name: preset name, e.g. "gb200-nvl72".
      flops_fp4, flops_fp8, flops_bf16, flops_fp32: dense tensor FLOP/s per GPU (0: not supported;
        FP4 then runs at the FP8 rate, as formats are upcast).
      hbm_bandwidth_bytes_per_s, hbm_capacity_bytes: HBM per GPU.
      idle_power_w, peak_power_w: GPU board power, idle and at full load (TDP/TBP).
      host_power_w: per-GPU share of the rest of the system (CPU, NICs, switches, fans), for
        full-system energy as MLPerf Power measures it (arXiv 2410.12032 §3).
      links: (die-to-die, scale-up, scale-out) levels, innermost first, with growing sizes.

    Raises:
      ValueError: a non-positive size, bandwidth or power; idle > peak; links not ordered.
    """

    name: str
    flops_fp4: float
    flops_fp8: float
    flops_bf16: float
    flops_fp32: float
    hbm_bandwidth_bytes_per_s: float
    hbm_capacity_bytes: float
    idle_power_w: float
    peak_power_w: float
    links: tuple[LinkLevel, LinkLevel, LinkLevel]
    host_power_w: float = 0.0

    def __post_init__(self):
        owner = f"HardwareSpec({self.name!r})"
        _check_positive_real(
            owner, allow_zero=("flops_fp4", "flops_fp8", "host_power_w"),
            flops_fp4=self.flops_fp4, flops_fp8=self.flops_fp8, flops_bf16=self.flops_bf16,
            flops_fp32=self.flops_fp32, hbm_bandwidth_bytes_per_s=self.hbm_bandwidth_bytes_per_s,
            hbm_capacity_bytes=self.hbm_capacity_bytes, idle_power_w=self.idle_power_w,
            peak_power_w=self.peak_power_w, host_power_w=self.host_power_w,
        )
        if self.idle_power_w > self.peak_power_w:
            raise ValueError(f"{owner}: idle_power_w={self.idle_power_w} > peak_power_w={self.peak_power_w}")
        for name in ("flops_fp4", "flops_fp8", "flops_bf16", "flops_fp32", "hbm_bandwidth_bytes_per_s",
                     "hbm_capacity_bytes", "idle_power_w", "peak_power_w", "host_power_w"):
            # Store floats: a Python int above 2^31 (95 GiB) would overflow int32 once traced under jit.
            object.__setattr__(self, name, float(getattr(self, name)))
        if len(self.links) != 3 or not all(isinstance(l, LinkLevel) for l in self.links):
            raise ValueError(f"{owner}: links must be 3 LinkLevels (die-to-die, scale-up, scale-out), got {self.links!r}")
        sizes = [l.size for l in self.links]
        if sizes != sorted(sizes):
            raise ValueError(f"{owner}: link level sizes {sizes} must grow outward")

    @property
    def die_to_die(self) -> LinkLevel:
        return self.links[0]

    @property
    def scale_up(self) -> LinkLevel:
        return self.links[1]

    @property
    def scale_out(self) -> LinkLevel:
        return self.links[2]

    def scaled(self, rate: float, hbm_capacity_bytes: float | None = None) -> "HardwareSpec":
        """A what-if part: every rate × `rate` (FLOP/s of each precision, HBM and link bandwidths),
        latencies and power unchanged, optionally another HBM capacity.

        Args:
          rate: factor on the rates (> 0).
          hbm_capacity_bytes: HBM per GPU in bytes (default: unchanged).

        Returns:
          The `HardwareSpec`, named "<name>/<1/rate>" (e.g. "gb200-nvl72/1000" for rate 1e-3).

        Raises:
          ValueError: rate ≤ 0 (or a capacity `HardwareSpec` rejects), naming the value.
        """
        if not rate > 0:
            raise ValueError(f"{self.name}: rate={rate} must be positive")
        links = tuple(dataclasses.replace(l, bandwidth_bytes_per_s=l.bandwidth_bytes_per_s * rate) for l in self.links)
        return dataclasses.replace(
            self, name=f"{self.name}/{1 / rate:g}", flops_fp4=self.flops_fp4 * rate, flops_fp8=self.flops_fp8 * rate,
            flops_bf16=self.flops_bf16 * rate, flops_fp32=self.flops_fp32 * rate,
            hbm_bandwidth_bytes_per_s=self.hbm_bandwidth_bytes_per_s * rate, links=links,
            hbm_capacity_bytes=self.hbm_capacity_bytes if hbm_capacity_bytes is None else hbm_capacity_bytes)

    def peak_flops(self, compute_bits):
        """Dense FLOP/s at a compute precision in bits (scalar or array; jnp-traceable).

        ≤ 4.5 bits (FP4, MXFP4, NVFP4) → FP4 rate, or FP8 where FP4 is unsupported; ≤ 8.25 (FP8,
        MXFP8, MXFP6) → FP8 rate, or BF16 where FP8 is unsupported; ≤ 16 → BF16; else FP32.
        """
        import jax.numpy as jnp

        fp8 = self.flops_fp8 or self.flops_bf16
        fp4 = self.flops_fp4 or fp8
        bits = jnp.asarray(compute_bits, jnp.float32)
        return jnp.where(bits <= 4.5, fp4, jnp.where(bits <= 8.25, fp8,
                         jnp.where(bits <= 16.0, self.flops_bf16, self.flops_fp32)))


# ----------------------------------------------------------------------------------------------
# Workload

@dataclasses.dataclass(frozen=True)
class Workload:
    """Traffic and service-level agreement (arXiv 2506.05508 §3).

    Attributes:
      isl: input sequence length (prompt tokens).
      osl: output sequence length (generated tokens).
      arrival_rate_per_s: requests per second offered to the system (0: saturated, as many as
        the configuration serves).
      ttft_limit_s: time-to-first-token limit (the disaggregation paper drops TTFT > 10 s).
      ttl_limit_s: token-to-token latency limit (inf: none).

    Raises:
      ValueError: a non-positive length or limit, a negative rate.
    """

    isl: int
    osl: int
    arrival_rate_per_s: float = 0.0
    ttft_limit_s: float = 10.0
    ttl_limit_s: float = math.inf

    def __post_init__(self):
        _check_positive("Workload", isl=self.isl, osl=self.osl)
        _check_positive_real("Workload", allow_zero=("arrival_rate_per_s",),
                             arrival_rate_per_s=self.arrival_rate_per_s)
        for name in ("ttft_limit_s", "ttl_limit_s"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value) or value <= 0:
                raise ValueError(f"Workload.{name}={value!r} must be positive (inf: no limit)")

    @property
    def mean_context(self) -> float:
        """Average KV length a decode step reads: ISL + OSL/2."""
        return self.isl + self.osl / 2
