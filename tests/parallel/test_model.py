"""The flax nnx Transformer: forward, a training step, and decoding its parameters under Helix layouts."""

import jax
import numpy as np
import optax
import pytest
from flax import nnx

import numerics
from numerics import QuantPolicy
from parallel import Transformer, export_weights, make_mesh, sharded_decoder
from perfmodel.specs import Layout, ModelSpec

GQA2 = ModelSpec("tiny-gqa-2l", 2, 64, 16, 8, 8, 128, 256)
MLA_MOE = ModelSpec("tiny-mla-moe", 2, 64, 16, 1, 8, 128, 256, kv_lora_rank=32, rope_dim=8, v_head_dim=8,
                    n_experts=8, top_k=2, n_shared_experts=1, expert_ffn=16, n_dense_layers=1)

TRAIN_MLA_MOE = ModelSpec("tiny-mla-moe-1l", 1, 64, 16, 1, 8, 128, 256, kv_lora_rank=32, rope_dim=8,
                          v_head_dim=8, n_experts=8, top_k=2, n_shared_experts=1, expert_ffn=16)
TRAIN_DENSE = ModelSpec("tiny-dense-1l", 1, 64, 4, 2, 16, 128, 256)


def _tokens(b, t, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (b, t), dtype=np.int32)


@pytest.mark.parametrize("spec", [TRAIN_DENSE, pytest.param(TRAIN_MLA_MOE, marks=pytest.mark.slow)],
                         ids=["dense", "mla-moe"])
def test_forward_and_training_step(spec, random_model):
    model = random_model(spec)
    forward = nnx.jit(lambda m, t: m(t))
    tokens = _tokens(2, 17)
    logits = forward(model, tokens)
    assert logits.shape == (2, 17, 256) and logits.dtype == np.float32
    # Causal: the logits at t do not depend on tokens after t.
    changed = tokens.copy()
    changed[:, 9:] = (changed[:, 9:] + 1) % 256
    np.testing.assert_array_equal(forward(model, changed)[:, :9], logits[:, :9])

    optimizer = nnx.Optimizer(model, optax.sgd(0.3), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, tokens):
        def loss_fn(model):
            lg = model(tokens[:, :-1])
            return optax.softmax_cross_entropy_with_integer_labels(lg, tokens[:, 1:]).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    losses = [float(step(model, optimizer, tokens)) for _ in range(4)]
    assert np.all(np.isfinite(losses))
    assert losses[-1] < losses[0] - 0.1  # memorizing one batch


def test_bad_tokens_rank(random_model):
    with pytest.raises(ValueError, match=r"tokens must be \[batch, time\], got shape \(5,\)"):
        random_model(GQA2)(np.zeros(5, np.int32))


@pytest.mark.parametrize(
    "spec,layout,steps",
    [
        # ≥ 100 decode steps with round-robin KV append (16-token blocks over 4 KVP ranks), HOP-B on.
        (GQA2, Layout(kvp=4, tpa=2, tpf=8, batch=4, microbatches=2), 112),
        # MLA + MoE (dense first layer), TPA=1 Helix with the FFN as TPF=2 × EP=4 on split mesh axes.
        (MLA_MOE, Layout(kvp=8, tpa=1, tpf=2, ep=4, batch=4), 24),
    ],
    ids=["gqa-helix-4x2-hopb-112steps", "mla-moe-helix-8x1-tpf2-ep4"],
)
def test_sharded_decode_equals_model(spec, layout, steps, random_model, assert_close):
    model = random_model(spec, seed=3)
    tokens = _tokens(layout.batch, steps, seed=4)
    reference = nnx.jit(lambda m, t: m(t))(model, tokens)
    decoder = sharded_decoder(model, make_mesh(layout), batch=layout.batch, max_seq=128,
                              microbatches=layout.microbatches)
    assert_close(decoder.teacher_forced(tokens), reference)


def test_sharded_decode_with_mx_weights_equals_mx_model(random_model, assert_close):
    """MX inside the mesh: MXFP4 weights (quantized once, globally) decode to the MXFP4 model's logits."""
    spec = ModelSpec("tiny-mx", 1, 64, 8, 4, 16, 128, 256)
    policy = QuantPolicy(weights="mxfp4_e2m1")
    tokens = _tokens(4, 8, seed=8)
    forward = nnx.jit(lambda m, t: m(t))
    model = random_model(spec, seed=7, policy=policy)
    reference = forward(model, tokens)
    decoder = sharded_decoder(model, make_mesh(Layout(kvp=2, tpa=4, tpf=8, batch=4)), batch=4, max_seq=32)
    # The decoder stores the weights on the MXFP4 grid (they changed, and re-quantizing is exact).
    head, stored = export_weights(model).lm_head, np.asarray(decoder.weights.lm_head)
    assert np.max(np.abs(stored - head)) > 1e-2
    np.testing.assert_array_equal(numerics.fake_quantize(stored, "mxfp4_e2m1", axis=0), stored)
    assert_close(decoder.teacher_forced(tokens), reference)
    # The step API: single steps reproduce the first positions and advance kv_len.
    state = decoder.init_state()
    for t in range(3):
        logits, state = decoder.step(state, tokens[:, t])
        assert_close(logits, reference[:, t])
    np.testing.assert_array_equal(state.kv_len, [3] * 4)


def test_decoder_errors(random_model):
    model = random_model(GQA2, seed=5)
    decoder = sharded_decoder(model, make_mesh(Layout(kvp=2, tpa=4, tpf=8, batch=2)), batch=2, max_seq=32)
    with pytest.raises(ValueError, match=r"tokens must be \[batch=2\], got \(3,\)"):
        decoder.step(decoder.init_state(), np.zeros(3, np.int32))
    with pytest.raises(ValueError, match=r"T=40 tokens exceed the cache length max_seq=32"):
        decoder.teacher_forced(_tokens(2, 40))
    with pytest.raises(ValueError, match=r"tpa=4 exceeds n_kv_heads=1"):
        sharded_decoder(random_model(MLA_MOE), make_mesh(Layout(kvp=2, tpa=4, tpf=8, batch=2)), batch=2, max_seq=32)
    with pytest.raises(ValueError, match=r"kvp=8 does not divide the cache length seq=100"):
        sharded_decoder(model, make_mesh(Layout(kvp=8, tpa=1, tpf=8, batch=2)), batch=2, max_seq=100)


def test_model_parameters():
    """Parameter count of a small model with its real initializers (shapes only: nnx.eval_shape)."""
    model = nnx.eval_shape(lambda: Transformer(ModelSpec("init", 1, 32, 4, 2, 8, 64, 256), rngs=nnx.Rngs(0)))
    params = nnx.state(model, nnx.Param)
    n = sum(np.size(p) for p in jax.tree.leaves(params))
    # embed 256·32 + attention (32·32 + 2·32·16 + 32·32) + norms 3·32 + FFN 3·32·64 + head 32·256
    assert n == 256 * 32 + (32 * 32 + 2 * 32 * 16 + 32 * 32) + 3 * 32 + 3 * 32 * 64 + 32 * 256
