"""Training and evaluation of the `parallel.model.Transformer` under a `numerics.QuantPolicy`.

Pure functions of a parameter pytree (`nnx.State` of the model's `nnx.Param`s), shared by the
`mx-accuracy` study and the quickstart:

  params = init_params(spec, seed)                          # one compile per spec
  lrs = lr_schedule(lr, steps, warmup_steps)                # warm-up + cosine decay to lr/10
  params, curve = train(spec, policy, params, batches, lrs, val, eval_every, weight_decay, grad_clip)
  loss = eval_fn(spec, policy)(params, val)                 # mean cross-entropy, nats/byte

Numerics: FP32 master weights and an FP32 AdamW (optax); the policy's `dot_general` quantizes the
operands of every projection (weights, activations, and the cotangents in the backward matmuls), while
vector ops stay FP32 (see `parallel.model`). Compiled functions are cached per (spec, policy, optimizer
constants): equal policies compile once, whatever the seed, data or learning-rate schedule.
"""

from __future__ import annotations

import functools
import io
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm
from flax import nnx
from jax import lax
from scipy import stats

from numerics import QuantPolicy
from parallel.model import Transformer
from perfmodel.specs import ModelSpec

from .results import atomic_write_bytes


def policy_for(weights: str = "fp32", activations: str = "fp32", gradients: str = "fp32",
               scale_rule: str | None = None, grad_rounding: str = "even", seed: int = 0) -> QuantPolicy:
    """A QuantPolicy for the given roles (the scale rule applies to the MX formats among them)."""
    return QuantPolicy(weights=weights, activations=activations, gradients=gradients, scale_rule=scale_rule,
                       grad_rounding=grad_rounding, seed=seed)


@functools.lru_cache(maxsize=None)
def _init_fn(spec: ModelSpec):
    return jax.jit(lambda key: nnx.state(Transformer(spec, rngs=nnx.Rngs(key)), nnx.Param))


def init_params(spec: ModelSpec, seed: int) -> nnx.State:
    """Initial parameters of the model (independent of the policy) for `seed`; one compile per spec."""
    return _init_fn(spec)(jax.random.key(seed))


def _loss_fn(spec: ModelSpec, policy: QuantPolicy | None):
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: Transformer(spec, rngs=nnx.Rngs(0), policy=policy)))

    def loss(params, windows):  # windows int32 [B, T + 1] -> mean next-byte cross-entropy (nats)
        logits = nnx.merge(graphdef, params)(windows[:, :-1])
        return optax.softmax_cross_entropy_with_integer_labels(logits, windows[:, 1:]).mean()
    return loss


@functools.lru_cache(maxsize=None)
def eval_fn(spec: ModelSpec, policy: QuantPolicy | None):
    """Jitted evaluate(params, windows [m, B, T + 1]) -> mean loss (nats/byte); one per (spec, policy)."""
    loss = _loss_fn(spec, policy)
    return jax.jit(lambda params, windows: lax.map(lambda w: loss(params, w), windows).mean())


@functools.lru_cache(maxsize=None)
def cast_weights_fn(spec: ModelSpec, policy: QuantPolicy):
    """Jitted cast(params) -> params with every projection kernel fake-quantized by `policy.weights`.

    Kernels [in, out] are blocked along their input (contracting) axis, exactly as the policy's
    `dot_general` quantizes its weight operand, so for a dense GQA model
      eval_fn(spec, P(activations=a))(cast(params), val) == eval_fn(spec, P(weights=w, activations=a))(params, val)
    bit for bit (tested): the direct cast of weights then needs no compile per format. One per (spec, policy).

    Raises:
      ValueError: the spec has MLA or MoE weights (quantized outside `nnx.Linear` kernels).
    """
    if spec.kv_lora_rank > 0 or spec.n_experts > 0:
        raise ValueError(f"cast_weights_fn: {spec.name} has MLA/MoE weights (kv_lora_rank={spec.kv_lora_rank}, "
                         f"n_experts={spec.n_experts}); only dense GQA models are supported")

    def cast(params):
        return jax.tree_util.tree_map_with_path(
            lambda path, x: policy.quantize_role("weights", x, axis=0) if "kernel" in jax.tree_util.keystr(path)
            else x, params)
    return jax.jit(cast)


def adamw(weight_decay: float, grad_clip: float) -> optax.GradientTransformation:
    """AdamW without its learning rate (applied per step by `train`): u = −lr·(adam(clip(g)) + wd·w).

    Global-norm clipping, Adam with β = (0.9, 0.95), decoupled weight decay on matrices only (not on
    the norm scales): `optax.adamw` with the learning-rate scaling left out, so that one compiled step
    serves every schedule (pretraining and finetuning).
    """
    mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
    return optax.chain(optax.clip_by_global_norm(grad_clip), optax.scale_by_adam(b1=0.9, b2=0.95),
                       optax.add_decayed_weights(weight_decay, mask))


def lr_schedule(lr: float, steps: int, warmup_steps: int = 0, constant: bool = False) -> np.ndarray:
    """Learning rate per step [steps]: linear warm-up from 0, cosine decay to lr/10 (or constant)."""
    if constant:
        return np.full(steps, lr, np.float32)
    schedule = optax.warmup_cosine_decay_schedule(0.0, lr, warmup_steps, steps, lr / 10)
    return np.asarray(jax.vmap(schedule)(np.arange(steps)), np.float32)


@functools.lru_cache(maxsize=None)
def train_fn(spec: ModelSpec, policy: QuantPolicy | None, weight_decay: float, grad_clip: float):
    """Jitted train_chunk(params, opt_state, batches [n, B, T + 1], lrs [n], val [m, B, T + 1]).

    Runs n AdamW steps in one `lax.scan`, then evaluates on `val`; returns (params, opt_state,
    training losses [n], validation loss). Cached per (spec, policy, weight_decay, grad_clip): equal
    policies compile once, whatever the seed, data or schedule.
    """
    loss, tx = _loss_fn(spec, policy), adamw(weight_decay, grad_clip)

    @jax.jit
    def train_chunk(params, opt_state, batches, lrs, val):
        def step(carry, xs):
            (params, opt_state), (windows, lr) = carry, xs
            value, grads = jax.value_and_grad(loss)(params, windows)
            updates, opt_state = tx.update(grads, opt_state, params)
            params = optax.apply_updates(params, jax.tree.map(lambda u: -lr * u, updates))
            return (params, opt_state), value
        (params, opt_state), losses = lax.scan(step, (params, opt_state), (batches, lrs))
        return params, opt_state, losses, lax.map(lambda w: loss(params, w), val).mean()

    return train_chunk


def train(spec: ModelSpec, policy: QuantPolicy | None, params, batches: np.ndarray, lrs: np.ndarray,
          val: np.ndarray, eval_every: int, weight_decay: float, grad_clip: float, desc: str = "train"):
    """Train from `params` over `batches` [steps, B, T + 1] with learning rates `lrs` [steps].

    Validates every `eval_every` steps under the same policy; `desc` labels the progress bar.

    Returns:
      (final params, curve rows [step, mean training loss of the last eval_every steps, validation loss]).

    Raises:
      FloatingPointError: the training loss became NaN/Inf (the step is named).
    """
    train_chunk = train_fn(spec, policy, weight_decay, grad_clip)
    opt_state = adamw(weight_decay, grad_clip).init(params)
    curve = []
    bar = tqdm.tqdm(total=len(batches), desc=desc, unit="step", leave=False, disable=None)
    for start in range(0, len(batches), eval_every):
        stop = start + eval_every
        params, opt_state, losses, val_loss = train_chunk(params, opt_state, batches[start:stop], lrs[start:stop], val)
        losses = np.asarray(losses)
        if not np.isfinite(losses).all():
            raise FloatingPointError(f"non-finite training loss at step {start + int(np.argmin(np.isfinite(losses)))}")
        curve.append([stop, float(losses.mean()), float(val_loss)])
        bar.update(len(losses))
        bar.set_postfix(val_loss=f"{curve[-1][2]:.4f}")
    bar.close()
    return params, curve


def save_params(path, params) -> None:
    """Write the parameter leaves to an .npz file, atomically."""
    buf = io.BytesIO()
    np.savez(buf, *[np.asarray(x) for x in jax.tree.leaves(params)])
    atomic_write_bytes(path, buf.getvalue())


def load_params(path, like):
    """Read parameters saved by `save_params` into the structure of `like`.

    Raises:
      ValueError: the file's arrays do not match `like` in number or shape.
    """
    with np.load(path) as f:
        leaves = [f[f"arr_{i}"] for i in range(len(f.files))]
    want = jax.tree.leaves(like)
    if [x.shape for x in leaves] != [x.shape for x in want]:
        raise ValueError(f"{path}: saved shapes {[x.shape for x in leaves][:4]}... do not match the model's "
                         f"{[x.shape for x in want][:4]}...")
    # as device arrays: a jitted step fed numpy leaves would compile a second executable
    return jax.tree.unflatten(jax.tree.structure(like), [jnp.asarray(x) for x in leaves])


def mean_ci(values) -> tuple[float, float | None]:
    """Mean and half-width of the two-sided 95% Student-t interval (None for one value)."""
    x = np.asarray(values, dtype=float)
    if x.size < 2:
        return float(x.mean()), None
    return float(x.mean()), float(stats.t.ppf(0.975, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
