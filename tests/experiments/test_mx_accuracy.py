"""mx-accuracy: exactness of the FP32 policy, MX gradients, and the study end to end."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from experiments import mx_accuracy as mx
from experiments import registry, results, training
from numerics import QuantPolicy
from parallel.model import Transformer
from perfmodel.specs import ModelSpec

SPEC = ModelSpec(name="test-lm", n_layers=1, hidden=32, n_heads=2, n_kv_heads=1, head_dim=16, ffn=64, vocab=256)


@pytest.fixture(scope="module")
def setup():
    params = training.init_params(SPEC, 0)
    windows = jnp.asarray(np.random.default_rng(0).integers(0, 256, (4, 17)), jnp.int32)
    fp32 = jax.jit(jax.value_and_grad(training._loss_fn(SPEC, None)))(params, windows)
    return params, windows, fp32


def _flat(tree):
    return jnp.concatenate([x.ravel() for x in jax.tree.leaves(tree)])


def test_fp32_policy_matches_unquantized_model_bit_for_bit(setup):
    params, windows, (loss0, grads0) = setup
    tokens = windows[:, :-1]

    def logits(policy):
        graphdef = nnx.graphdef(Transformer(SPEC, rngs=nnx.Rngs(1), policy=policy))
        return jax.jit(lambda p, t: nnx.merge(graphdef, p)(t))(params, tokens)

    np.testing.assert_array_equal(np.asarray(logits(None)), np.asarray(logits(QuantPolicy())))
    loss1, grads1 = jax.jit(jax.value_and_grad(training._loss_fn(SPEC, QuantPolicy())))(params, windows)
    assert loss1 == loss0
    np.testing.assert_array_equal(np.asarray(_flat(grads1)), np.asarray(_flat(grads0)))


def test_weights_cast_outside_equal_the_weight_policy(setup):
    """The direct cast's shortcut: weights cast once outside the model (`cast_weights_fn`) give bit for bit
    the losses of the policies that quantize them inside every matmul, with or without activations."""
    params, windows, (loss0, _) = setup
    fmt, rule = "mxfp4_e2m1", "rceil"
    cast = training.cast_weights_fn(SPEC, QuantPolicy(weights=fmt, scale_rule=rule))(params)
    loss = lambda policy, p: float(training.eval_fn(SPEC, policy)(p, windows[None]))  # one compile per policy
    reference = loss(None, cast)
    assert loss(QuantPolicy(weights=fmt, scale_rule=rule), params) == reference != loss0
    both = loss(QuantPolicy(weights=fmt, activations=fmt, scale_rule=rule), params)
    assert both == loss(QuantPolicy(activations=fmt, scale_rule=rule), cast) != reference


def test_mx_training_step_gives_finite_gradients_that_differ_from_fp32(setup):
    params, windows, (loss0, grads0) = setup
    policy = training.policy_for(*mx.POLICIES["mxfp6_e3m2"])
    loss, grads = jax.jit(jax.value_and_grad(training._loss_fn(SPEC, policy)))(params, windows)
    g, g0 = _flat(grads), _flat(grads0)
    assert bool(jnp.isfinite(g).all()) and math.isfinite(float(loss))
    assert loss != loss0 and float(jnp.max(jnp.abs(g - g0))) > 0
    # the MX gradient still points the way FP32's does (cosine > 0.5)
    assert float(jnp.vdot(g, g0)) > 0.5 * float(jnp.linalg.norm(g) * jnp.linalg.norm(g0))
    # one AdamW step of the study's optimizer: finite, non-zero updates
    tx = training.adamw(weight_decay=0.1, grad_clip=1.0)
    updates, _ = jax.jit(lambda g, p: tx.update(g, tx.init(p), p))(grads, params)  # one compile, not ~100 eager ops
    u = _flat(updates)
    assert bool(jnp.isfinite(u).all()) and float(jnp.max(jnp.abs(u))) > 0


def test_mean_ci_against_t_table():
    mean, ci = training.mean_ci([1.0, 2.0, 3.0])
    # source: Student-t table, t(0.975, df=2) = 4.302653; s = 1, n = 3
    assert mean == 2.0 and ci == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    assert training.mean_ci([5.0]) == (5.0, None)


@pytest.mark.parametrize("overrides, message", [
    ({"direct_formats": ("mxfp5",)}, "unknown format 'mxfp5'"),
    ({"eval_every": 7}, "eval_every=7 does not divide steps=1000"),
    ({"train_policies": ("fp16",)}, "unknown training policy 'fp16'"),
    ({"hidden": 100}, "n_heads=8 does not divide hidden=100"),
    ({"warmup_steps": 1000}, "warmup_steps=1000"),
])
def test_config_validation(overrides, message):
    with pytest.raises(ValueError, match=message):
        mx.Config(**overrides)


SMOKE = dict(n_seeds=1, n_layers=1, hidden=32, n_heads=2, n_kv_heads=1, ffn=64, seq_len=32, batch_size=8,
             steps=40, warmup_steps=5, lr=1e-2, eval_every=20, eval_windows=16, train_policies=("mxfp6_e3m2",),
             stochastic_rounding=(), direct_formats=("mxfp4_e2m1",), scale_rules=("floor",), roles=("both",),
             qat_formats=("mxfp4_e2m1",), qat_steps=20)


def _check_run(rd, config):
    files = {p.name for p in rd.path.iterdir()}
    assert {"config.json", "metadata.json", "summary.md", "summary.json", "corpus.json", "training.csv",
            "training_runs.csv", "loss_curves.csv", "direct_cast.csv", "qat.csv", "training.md",
            "direct_cast.md", "qat.md", "loss_curves.png", "loss_delta.png", "direct_cast_vs_bits.png",
            "qat_curves.png", "fp32_params.npz"} <= files
    headline = json.loads((rd.path / "summary.json").read_text())
    corpus_info = json.loads((rd.path / "corpus.json").read_text())
    assert headline["corpus_sha256"] == corpus_info["sha256"] and len(corpus_info["sha256"]) == 64
    summary = (rd.path / "summary.md").read_text()
    assert corpus_info["sha256"] in summary and "Comparison with the paper's claims" in summary
    # training: every run learned something (uniform guess is ln 256 = 5.545 nats/byte)
    runs = results.read_csv(rd.path / "training_runs.csv")
    assert len(runs) == config.n_seeds * (1 + len(config.train_policies) + len(config.stochastic_rounding))
    assert all(float(r["val_loss"]) < math.log(256) - 1.0 for r in runs)
    fp32 = {int(r["seed"]): float(r["val_loss"]) for r in runs if r["policy"] == "fp32"}
    assert headline["fp32_val_loss"] == pytest.approx(np.mean(list(fp32.values())))
    for key, d in headline["training_delta"].items():
        policy, rounding = key.split("/")
        mx_losses = [float(r["val_loss"]) - fp32[int(r["seed"])] for r in runs
                     if (r["policy"], r["grad_rounding"]) == (policy, rounding)]
        assert d["delta"] == pytest.approx(np.mean(mx_losses)) and d["n"] == config.n_seeds
    # direct cast: the FP32 row is the baseline; deltas are differences of the stored losses
    dc = results.read_csv(rd.path / "direct_cast.csv")
    base = float(dc[0]["val_loss"])
    assert (dc[0]["role"], dc[0]["format"], float(dc[0]["delta"])) == ("none", "fp32", 0.0)
    assert base == pytest.approx(fp32[config.seed])  # the saved reference is the seed's FP32 run
    for r in dc[1:]:
        assert float(r["delta"]) == pytest.approx(float(r["val_loss"]) - base)
    mxfp4_both = next(float(r["delta"]) for r in dc if (r["role"], r["format"]) == ("both", "mxfp4_e2m1"))
    assert mxfp4_both > 0  # 4-bit weights and activations cost loss
    # QAT: gap closed = 1 - gap after / gap before
    qat = {r["format"]: r for r in results.read_csv(rd.path / "qat.csv")}
    f, q = qat["fp32"], qat["mxfp4_e2m1"]
    gap_before = float(q["before"]) - float(f["before"])
    gap_after = float(q["after"]) - float(f["after"])
    assert float(q["before"]) - base == pytest.approx(mxfp4_both)
    assert headline["qat_gap_closed"]["mxfp4_e2m1"] == pytest.approx(1 - gap_after / gap_before)
    return headline


def test_smoke_end_to_end_and_resume(tmp_path):
    config = mx.Config(**SMOKE)
    rd, headline = registry.run_experiment("mx-accuracy", config, out=tmp_path / "run")
    _check_run(rd, config)
    # one compiled training step serves the FP32 pretraining and the FP32 finetuning (no recompilation)
    assert training.train_fn(config.spec, None, config.weight_decay, config.grad_clip)._cache_size() == 1
    stamp = {p.name: p.stat().st_mtime_ns for p in rd.path.glob("*.jsonl")}
    _, again = registry.run_experiment("mx-accuracy", config, out=tmp_path / "run")  # resumes: nothing to do
    assert {p.name: p.stat().st_mtime_ns for p in rd.path.glob("*.jsonl")} == stamp
    assert {k: v for k, v in again.items() if k != "runtime_s"} == {k: v for k, v in headline.items()
                                                                    if k != "runtime_s"}


@pytest.mark.slow
def test_quick_mode_end_to_end(tmp_path):
    config = registry.make_config("mx-accuracy", quick=True)
    rd, headline = registry.run_experiment("mx-accuracy", config, out=tmp_path / "quick")
    _check_run(rd, config)
    assert set(headline["training_delta"]) == {f"{p}/even" for p in config.train_policies}
