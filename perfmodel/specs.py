"""Specs: the single source of truth for models, hardware and layouts.

`ModelSpec` and `Layout` are frozen dataclasses, validated at construction. parallel/ builds its
meshes and shapes from them; the cost model costs them.
"""

from __future__ import annotations

import dataclasses


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

    Raises:
      ValueError: a non-positive degree, or attention and FFN GPU counts that differ.
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

    def __post_init__(self):
        _check_positive(
            "Layout", tpa=self.tpa, kvp=self.kvp, dp_attn=self.dp_attn, tpf=self.tpf, ep=self.ep,
            pp=self.pp, dp=self.dp, batch=self.batch, microbatches=self.microbatches,
        )
        _check_non_negative("Layout", chunk=self.chunk)
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

    def check_model(self, model: ModelSpec) -> None:
        """Raise ValueError naming the numbers when this layout cannot shard `model`.

        TPA may exceed the KV heads only as plain TP (kvp=1), which then duplicates KV heads;
        TPA must then be a multiple of the KV heads. Otherwise TPA must divide the KV heads.
        """
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
