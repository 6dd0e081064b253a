"""Shared fixtures of the parallel/ tests: tolerances and small model specs."""

import numpy as np
import pytest

from perfmodel.specs import ModelSpec

# float32 against the single-device reference: rtol 1e-5, plus an absolute floor of 1e-5 times the
# reference's largest magnitude for entries near zero (a sum of O(1) terms has O(1e-7·scale) error).
RTOL = 1e-5



def _assert_close(actual, expected, rtol=RTOL):
    expected = np.asarray(expected)
    scale = float(np.max(np.abs(expected))) if expected.size else 0.0
    np.testing.assert_allclose(np.asarray(actual), expected, rtol=rtol, atol=rtol * scale)


@pytest.fixture(scope="session")
def assert_close():
    """assert_close(actual, expected): |a − e| ≤ RTOL·|e| + RTOL·max|e| elementwise."""
    return _assert_close


@pytest.fixture(scope="session")
def specs():
    """Small models: GQA (16 q / 8 KV heads: every 8-device mesh is valid), GQA 16/2, MLA, MoE."""
    return {
        "gqa": ModelSpec("tiny-gqa", 1, 64, 16, 8, 8, 128, 256),
        "gqa2": ModelSpec("tiny-gqa-2kv", 1, 64, 16, 2, 8, 128, 256),
        "mha": ModelSpec("tiny-mha", 1, 64, 8, 8, 8, 128, 256),
        "mla": ModelSpec("tiny-mla", 1, 64, 16, 1, 8, 128, 256, kv_lora_rank=32, rope_dim=8, q_lora_rank=24,
                         v_head_dim=8),
        "moe": ModelSpec("tiny-moe", 1, 64, 16, 8, 8, 128, 256, n_experts=8, top_k=2, n_shared_experts=1,
                         expert_ffn=16),
    }


def _fill(shape, rng):
    """Random parameter values: ones(+noise) for norm scales, N(0, 1/fan_in) for matrices."""
    if len(shape) == 1:
        return (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
    fan_in = shape[0] if len(shape) == 2 else shape[1]
    return (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)


@pytest.fixture(scope="session")
def random_model():
    """random_model(spec, seed=0, policy=None): a Transformer with NumPy-random parameters.

    Built abstractly (nnx.eval_shape) and filled from NumPy, so no initializer is compiled.
    """
    import jax
    from flax import nnx

    from parallel import Transformer

    def make(spec, seed=0, policy=None):
        abstract = nnx.eval_shape(lambda: Transformer(spec, rngs=nnx.Rngs(0), policy=policy))
        graphdef, state = nnx.split(abstract)
        rng = np.random.default_rng(seed)
        state = jax.tree.map(lambda s: _fill(s.shape, rng), state)
        return nnx.merge(graphdef, state)

    return make
