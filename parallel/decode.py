"""Decode a whole model under a Helix layout: one shard_map program per step, compiled once.

    decoder = ShardedDecoder(weights, spec, make_mesh(Layout(kvp=2, tpa=4, tpf=8, batch=8)),
                             batch=8, max_seq=128)
    state = decoder.init_state()
    logits, state = decoder.step(state, tokens)        # tokens int32 [B] -> logits [B, vocab]
    all_logits = decoder.teacher_forced(tokens_bt)      # [B, T] -> [B, T, vocab] (lax.scan of steps)

Per step: embedding lookup (replicated table), every layer's `parallel.layer.layer_local` (Helix
attention, KV append, FFN), final RMSNorm and the LM head split over the attention group's vocab
columns followed by an all-gather of the logits (replicated head when the group does not divide the
vocab). The KV caches live sharded on the mesh in round-robin storage order; kv_len advances by one.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from perfmodel.specs import ModelSpec

from . import blocks
from .helix import TOKENS_PER_BLOCK
from .layer import cache_shapes, cache_specs, layer_local, make_plan, place_layer_weights
from .mesh import LayoutMesh, as_layout_mesh
from .weights import ModelWeights, lm_head_sharded, model_specs


class DecodeState(NamedTuple):
    """caches: per layer, the tuple of cache arrays (`parallel.layer.cache_shapes`); kv_len: [B] int32."""

    caches: tuple
    kv_len: jax.Array


def _axes(axes):
    return axes if axes else None


class ShardedDecoder:
    """A model's weights placed on a mesh, with a jitted decode step; see the module docstring.

    Args:
      weights: global `ModelWeights` (e.g. `parallel.model.export_weights(model)`).
      spec: the model's `ModelSpec`.
      mesh: a LayoutMesh (`make_mesh(layout)`) or a Mesh with axes "kvp" and "tpa".
      batch: sequences decoded together.
      max_seq: cache length per sequence.
      tokens_per_block: round-robin KV block (paper §2.3).
      microbatches: micro-batches; hopb: overlap their all-to-alls with the next one's attention.
      policy: optional numerics QuantPolicy. Weights are stored quantized per `policy.weights` (along
        their contraction axis, global tensor scales), projections quantize their activations per
        `policy.activations`, new KV rows are stored per `policy.kv_cache` along head_dim, and the
        all-to-all payload is sent per `policy.communication`. Embedding, norms, router and attention
        scores stay FP32, as in `parallel.model.Transformer`.

    Raises:
      ValueError: a layout the model cannot use (Layout.check_model) or shapes the mesh does not divide.
    """

    def __init__(self, weights: ModelWeights, spec: ModelSpec, mesh, *, batch: int, max_seq: int,
                 tokens_per_block: int = TOKENS_PER_BLOCK, microbatches: int = 1, hopb: bool = True,
                 policy=None):
        self.lm: LayoutMesh = as_layout_mesh(mesh)
        self.spec, self.batch, self.max_seq = spec, batch, max_seq
        if len(weights.layers) != spec.n_layers:
            raise ValueError(f"weights have {len(weights.layers)} layers, spec.n_layers={spec.n_layers}")
        if policy is not None and policy.weights != "fp32":
            # Stored quantized once, on the global arrays (global tensor scales), so the projections
            # then only quantize their activations.
            weights = _quantize_weights(weights, policy)
            policy = dataclasses.replace(policy, weights="fp32")
        self.plan = make_plan(spec, self.lm, batch=batch, seq=max_seq, tokens_per_block=tokens_per_block,
                              microbatches=microbatches, hopb=hopb, policy=policy)
        w = weights._replace(layers=tuple(place_layer_weights(layer, self.plan) for layer in weights.layers))
        self.specs = model_specs(w, self.lm)
        self.weights = jax.device_put(w, jax.tree.map(lambda s: NamedSharding(self.lm.mesh, s), self.specs))
        self._cpu = self.lm.mesh.devices.flat[0].platform == "cpu"
        self._step = jax.jit(self._step_impl)
        self._teacher_forced = jax.jit(self._teacher_forced_impl)

    def init_state(self) -> DecodeState:
        """Empty caches (zeros, sharded) and kv_len = 0."""
        lm, spec = self.lm, self.spec
        shapes = cache_shapes(spec, lm, batch=self.batch, seq=self.max_seq)
        specs = cache_specs(spec, lm)
        layer = tuple(jax.device_put(jnp.zeros(s, jnp.float32), NamedSharding(lm.mesh, p)) for s, p in zip(shapes, specs))
        kv_len = jax.device_put(jnp.zeros((self.batch,), jnp.int32), NamedSharding(lm.mesh, P(_axes(lm.dp))))
        return DecodeState(tuple(layer for _ in range(spec.n_layers)), kv_len)

    def step(self, state: DecodeState, tokens: jax.Array) -> tuple[jax.Array, DecodeState]:
        """One decode step: tokens int32 [B] at position kv_len -> (logits [B, vocab], new state)."""
        if tokens.shape != (self.batch,):
            raise ValueError(f"tokens must be [batch={self.batch}], got {tokens.shape}")
        out = self._step(self.weights, state, tokens)
        if self._cpu:
            # XLA's CPU collectives block pool threads in a rendezvous: with several multi-device
            # executions queued (a Python loop of steps), they can deadlock and abort after 40 s
            # ("Termination timeout ... exceeded"). One execution in flight at a time avoids it.
            jax.block_until_ready(out)
        return out

    def teacher_forced(self, tokens: jax.Array) -> jax.Array:
        """Feed tokens [B, T] one decode step at a time from an empty cache; logits [B, T, vocab].

        The steps run inside one compiled `lax.scan` (one program, one dispatch).
        """
        if tokens.ndim != 2 or tokens.shape[0] != self.batch:
            raise ValueError(f"tokens must be [batch={self.batch}, T], got {tokens.shape}")
        if tokens.shape[1] > self.max_seq:
            raise ValueError(f"T={tokens.shape[1]} tokens exceed the cache length max_seq={self.max_seq}")
        return self._teacher_forced(self.weights, self.init_state(), tokens)

    def _teacher_forced_impl(self, weights, state, tokens):
        def body(state, tok):
            logits, state = self._step_impl(weights, state, tok)
            return state, logits

        _, logits = lax.scan(body, state, jnp.swapaxes(tokens, 0, 1))
        return jnp.swapaxes(logits, 0, 1)

    def _step_impl(self, weights, state, tokens):
        lm, plan = self.lm, self.plan
        dp, group = _axes(lm.dp), lm.attention_group
        sharded_head = lm_head_sharded(self.spec.vocab, lm)

        def local(w, caches, kv_len, tokens):
            x = w.embed[tokens]
            new = []
            for lw, cache in zip(w.layers, caches):
                x, cache = layer_local(x, lw, cache, kv_len, plan)
                new.append(cache)
            h = blocks.rms_norm(x, w.final_norm)
            logits = plan.dot_general(h, w.lm_head, (((1,), (0,)), ((), ())), precision=blocks.PRECISION,
                                      preferred_element_type=jnp.float32)
            if sharded_head:
                logits = lax.all_gather(logits, group, axis=1, tiled=True, to="invarying")
            return logits, tuple(new), kv_len + 1

        cspecs = tuple(cache_specs(self.spec, lm) for _ in range(self.spec.n_layers))
        logits, caches, kv_len = jax.shard_map(
            local, mesh=lm.mesh,
            in_specs=(self.specs, cspecs, P(dp), P(dp)),
            out_specs=(P(dp, None), cspecs, P(dp)),
        )(weights, state.caches, state.kv_len, tokens.astype(jnp.int32))
        return logits, DecodeState(caches, kv_len)


def _quantize_weights(w: ModelWeights, policy) -> ModelWeights:
    """Store projection weights per policy.weights, blocks along each one's contraction axis."""
    from numerics import fake_quantize

    fmt, rule = policy.weights, policy.scale_rule_for(policy.weights)

    def q(a, axis):
        return None if a is None else fake_quantize(a, fmt, axis=axis, scale_rule=rule)

    layers = []
    for layer in w.layers:
        a, f = layer.attn, layer.ffn
        if hasattr(a, "wkv_a"):  # MLA
            qo = a.wo.reshape(-1, a.wo.shape[-1])
            a = a._replace(wq_a=q(a.wq_a, 0), wq=q(a.wq, 0), wkv_a=q(a.wkv_a, 0), w_uk=q(a.w_uk, 1),
                           w_uv=q(a.w_uv, 1), wo=q(qo, 0).reshape(a.wo.shape))
        else:
            qo = a.wo.reshape(-1, a.wo.shape[-1])
            a = a._replace(wq=q(a.wq, 0), wk=q(a.wk, 0), wv=q(a.wv, 0), wo=q(qo, 0).reshape(a.wo.shape))
        if hasattr(f, "router"):
            f = f._replace(w_gate=q(f.w_gate, 1), w_up=q(f.w_up, 1), w_down=q(f.w_down, 1),
                           shared_gate=q(f.shared_gate, 0), shared_up=q(f.shared_up, 0),
                           shared_down=q(f.shared_down, 0))
        else:
            f = f._replace(w_gate=q(f.w_gate, 0), w_up=q(f.w_up, 0), w_down=q(f.w_down, 0))
        layers.append(layer._replace(attn=a, ffn=f))
    return w._replace(layers=tuple(layers), lm_head=q(w.lm_head, 0))
