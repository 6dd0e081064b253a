"""Calibration: fit the cost model's efficiency parameters to measured kernel times with optax.

The objective is a robust loss on log-time residuals (relative errors) plus a prior pulling the
raw (reparameterized, unconstrained) parameters toward their datasheet-derived values:

    L(θ) = Σ_i w_i ρ(log t̂_i(θ) − log t_i) + λ Σ_j (θ_j − θ⁰_j)²,

ρ ∈ {l2: r²/2, huber(δ), cauchy(c): c²/2·log(1 + (r/c)²)}, w_i = 1/(#classes · #rows of i's op class)
so each op class weighs the same. The held-out split is deterministic: `random` (seeded,
stratified per op class) or `extrapolation` (the largest sizes of each class held out). The report
compares the fit with the uncalibrated datasheet roofline on train and held-out rows, per op class.

The pieces: `calib_data` (columns, splits, weights), `calib_params` (`CalibParams`, the cost-model
adapter), `calib_report` (errors, `FitReport`), `profile` (JSON profiles), `cpu` (this CPU's spec).

The command that measures this machine (or reads files), fits and saves a profile is the
`calibrate` experiment: `python -m experiments run calibrate --quick`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .calib_data import Data, make_data, split_mask
from .calib_params import PredictFn, cost_model_times, init_params, predict_rows, start_params
from .calib_report import FitReport, error_report
from .cpu import cpu_local_spec, stream_copy_bandwidth
from .measurements import Measurement, MeasurementSet, rows_of
from .presets import get_hardware
from .specs import HardwareSpec

ROBUST_LOSSES = ("l2", "huber", "cauchy")


def robust_loss(r: jax.Array, kind: str = "huber", scale: float = 0.1) -> jax.Array:
    """ρ(r) elementwise on log residuals r.

    l2: r²/2; huber: r²/2 for |r| ≤ δ, δ(|r| − δ/2) beyond (δ = scale); cauchy: c²/2·log(1 + (r/c)²)
    (c = scale).

    Args:
      r: log residuals log t̂ − log t, any shape.
      kind: one of `ROBUST_LOSSES`.
      scale: δ or c, in log units: 0.1 ≈ 10% relative error.

    Returns:
      ρ(r), same shape as r.

    Raises:
      ValueError: an unknown kind or a non-positive scale.

    References:
      Huber, "Robust Estimation of a Location Parameter", Ann. Math. Statist. 35(1), 1964.
    """
    if scale <= 0:
        raise ValueError(f"robust loss scale={scale} must be positive")
    if kind == "l2":
        return 0.5 * r**2
    if kind == "huber":
        return optax.losses.huber_loss(r, delta=scale)
    if kind == "cauchy":
        return 0.5 * scale**2 * jnp.log1p((r / scale) ** 2)
    raise ValueError(f"robust loss kind={kind!r} is not one of {ROBUST_LOSSES}")


def objective(params, data: Data, prior_params, hardware: HardwareSpec, predict: PredictFn, *,
              loss: str = "huber", loss_scale: float = 0.1, prior_weight: float = 1e-6) -> jax.Array:
    """L(θ) = Σ_i w_i ρ(log t̂_i(θ) − log t_i) + λ Σ_j (θ_j − θ⁰_j)² (see the module docstring).

    Args:
      params: raw parameter pytree θ (what optax updates).
      data: `calib_data.make_data` output (columns, log t, weights w).
      prior_params: θ⁰, same structure (raw datasheet-derived values).
      hardware: passed through to `predict` (static).
      predict: predict(params, hardware, op, cols) → times [n] in seconds, > 0.
      loss, loss_scale: robust loss ρ and its scale (log units); see `robust_loss`.
      prior_weight: λ.

    Returns:
      Scalar loss.
    """
    total = jnp.zeros((), jnp.float32)
    for op, cols in data.cols.items():
        t_hat = predict(params, hardware, op, cols)
        r = jnp.log(t_hat) - data.log_t[op]
        total = total + jnp.sum(data.weight[op] * robust_loss(r, loss, loss_scale))
    sq = jax.tree.map(lambda p, p0: jnp.sum((jnp.asarray(p) - p0) ** 2), params, prior_params)
    return total + prior_weight * sum(jax.tree.leaves(sq))


@functools.partial(jax.jit, static_argnames=("hardware", "predict", "loss", "loss_scale", "steps"))
def _train(params0, prior_params, data: Data, prior_weight, learning_rate, *, hardware, predict, loss,
           loss_scale, steps):
    """`steps` full-batch Adam steps on `objective` in one `lax.scan` (cosine-decayed step size,
    global-norm clipping). Returns (params, loss per step, final loss)."""

    def obj(p):
        return objective(p, data, prior_params, hardware, predict, loss=loss, loss_scale=loss_scale,
                         prior_weight=prior_weight)

    schedule = optax.cosine_decay_schedule(learning_rate, max(steps, 1), alpha=0.02)
    opt = optax.chain(optax.clip_by_global_norm(10.0), optax.adam(schedule))

    def step(carry, _):
        p, s = carry
        value, g = jax.value_and_grad(obj)(p)
        updates, s = opt.update(g, s, p)
        return (optax.apply_updates(p, updates), s), value

    (params, _), values = jax.lax.scan(step, (params0, opt.init(params0)), None, length=steps)
    return params, values, obj(params)


def _float32(tree):
    return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)


def fit(measurements: MeasurementSet | Sequence[Measurement], hardware: HardwareSpec, params0=None, *,
        predict: PredictFn | None = None, prior_params=None, baseline_params=None,
        split: str = "random", holdout_fraction: float = 0.25, seed: int = 0,
        loss: str = "huber", loss_scale: float = 0.1, prior_weight: float = 1e-6,
        steps: int = 3000, learning_rate: float = 0.05, include_emulated: bool = False,
        threshold_s: float = 1e-3, statistic: str = "median") -> tuple[object, FitReport]:
    """Fit the raw parameter pytree to measured times with optax Adam; report held-out errors.

    Minimizes `objective` on the training rows of a deterministic `calib_data.split_mask` split:
    Adam with a cosine-decayed step size and global-norm clipping, `steps` full-batch steps in one
    jitted `lax.scan`. Parameters are the cost model's raw leaves (reparameterized by
    softplus/sigmoid inside the model), so every step is valid.

    Args:
      measurements: measured rows (`MeasurementSet` or a sequence of `Measurement`).
      hardware: the `HardwareSpec` the model costs on (static).
      params0: initial raw parameters; default `start_params(hardware, training rows)` (see there).
      predict: predict(params, hardware, op, cols) → seconds [n]; default `cost_model_times`.
      prior_params: θ⁰ of the prior; default `init_params(hardware)` (the datasheet roofline) with
        the default predict, else params0.
      baseline_params: the uncalibrated baseline; default prior_params.
      split, holdout_fraction, seed: see `calib_data.split_mask`.
      loss, loss_scale, prior_weight: see `objective`.
      steps, learning_rate: Adam steps and peak step size.
      include_emulated: fit emulated collectives too (default: excluded and counted in the report:
        the CPU mesh is a correctness harness, not a link to fit).
      threshold_s: the headline only counts kernels whose measured time exceeds this (seconds).
      statistic: fit and score `median_s` ("median") or `min_s` ("min"); see `measured_times`.

    Returns:
      (params, report): fitted raw parameters (same structure as params0) and a `FitReport`.

    Raises:
      ValueError: no rows left to train, a bad split/loss setting, or a diverged fit.
    """
    predict = predict or cost_model_times
    rows = rows_of(measurements)
    excluded = {}
    if not include_emulated:
        kept = [r for r in rows if not r.emulated]
        if len(kept) < len(rows):
            excluded["emulated"] = len(rows) - len(kept)
        rows = kept
    held = split_mask(rows, split, holdout_fraction, seed)
    train = [r for r, h in zip(rows, held) if not h]
    if not train:
        raise ValueError(f"no training rows ({len(rows)} rows, {int(held.sum())} held out)")
    if prior_params is None:
        prior_params = init_params(hardware) if predict is cost_model_times else params0
    params0 = _float32(start_params(hardware, train) if params0 is None else params0)
    prior_params = _float32(prior_params)
    baseline_params = _float32(baseline_params) if baseline_params is not None else prior_params
    data, _ = make_data(rows, statistic=statistic, train=~held)
    params, values, final = _train(params0, prior_params, data, jnp.float32(prior_weight),
                                   jnp.float32(learning_rate), hardware=hardware, predict=predict, loss=loss,
                                   loss_scale=loss_scale, steps=steps)
    if not np.isfinite(float(final)):
        raise ValueError(f"fit diverged: final loss {float(final)}; lower learning_rate={learning_rate}")
    preds = {"fitted": predict_rows(params, hardware, rows, predict),
             "datasheet": predict_rows(baseline_params, hardware, rows, predict)}
    errors, headline = error_report(rows, held, preds, threshold_s, statistic)
    report = FitReport(
        config=dict(split=split, holdout_fraction=holdout_fraction, seed=seed, loss=loss, loss_scale=loss_scale,
                    prior_weight=prior_weight, steps=steps, learning_rate=learning_rate,
                    include_emulated=include_emulated, threshold_s=threshold_s, statistic=statistic),
        counts=dict(train=len(train), heldout=int(held.sum()), excluded=excluded,
                    noisy=int(sum(r.noisy for r in rows))),
        losses=dict(initial=float(values[0]) if steps else float(final), final=float(final)),
        errors=errors, headline=headline,
    )
    return params, report


# ----------------------------------------------------------------------------- entry point

# Device kind (as jax reports it) → hardware preset, for accelerators whose datasheet we carry.
_DEVICE_PRESETS = (("GB200", "gb200-nvl72"), ("B200", "b200"), ("H200", "h200-sxm"), ("H100", "h100-sxm"),
                   ("MI300X", "mi300x"), ("TPU v5p", "tpu-v5p"))


def hardware_for(mset: MeasurementSet, name: str | None = None) -> HardwareSpec:
    """The `HardwareSpec` to fit against: a preset `name`, else by the measured device kind.

    "cpu-local" (or a CPU backend) builds `cpu.cpu_local_spec` with the measured copy bandwidth and
    as many cores as the measurement ran on (env `cpu_affinity`; all of this machine's otherwise).

    Args:
      mset: the measurements; env gives backend, device kind and count.
      name: a preset name or "cpu-local"; default by device kind.

    Returns:
      The spec.

    Raises:
      ValueError: an accelerator with no preset and no name given, an unknown preset, or a CPU set
        without copy rows.
    """
    env = mset.env
    if name is None and env.get("backend") != "cpu":
        kind = str(env.get("device_kind", ""))
        name = next((preset for key, preset in _DEVICE_PRESETS if key.lower() in kind.lower()), None)
        if name is None:
            raise ValueError(f"no hardware preset for device_kind={kind!r}; name one (calibrate experiment: preset=NAME)")
    if name is None or name == "cpu-local":
        pinned = env.get("cpu_affinity")  # the cores the measurement ran on (measure.pin_cpus)
        return cpu_local_spec(stream_copy_bandwidth(mset), n_devices=int(env.get("device_count", 8)),
                              cores=len(pinned) if pinned else None)
    return get_hardware(name)
