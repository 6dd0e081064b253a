"""Calibration: fit the cost model's efficiency parameters to measured kernel times with optax.

The objective is a robust loss on log-time residuals (relative errors) plus a prior pulling the
raw (reparameterized, unconstrained) parameters toward their datasheet-derived values:

    L(θ) = Σ_i w_i ρ(log t̂_i(θ) − log t_i) + λ Σ_j (θ_j − θ⁰_j)²,

ρ ∈ {l2: r²/2, huber(δ), cauchy(c): c²/2·log(1 + (r/c)²)}, w_i = 1/(#classes · #rows of i's op class)
so each op class weighs the same. The held-out split is deterministic: `random` (seeded,
stratified per op class) or `extrapolation` (the largest sizes of each class held out). The report
compares the fit with the uncalibrated datasheet roofline on train and held-out rows, per op class.

    python -m perfmodel.calibrate --quick          # measure this machine, fit, report, save profile
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .cpu import cpu_local_spec, stream_copy_bandwidth
from .measurements import Measurement, MeasurementSet

PredictFn = Callable[[object, object, str, Mapping[str, jax.Array]], jax.Array]
ROBUST_LOSSES = ("l2", "huber", "cauchy")
SPLITS = ("random", "extrapolation")
_COLUMN_FIELDS = ("m", "n", "k", "batch", "seq", "heads", "kv_heads", "head_dim", "elements", "n_devices",
                  "bytes", "flops")


def itemsize(dtype: str) -> int:
    """Bytes per element of a dtype name ("float32" → 4, "bfloat16" → 2, "float8_e4m3fn" → 1)."""
    try:
        return int(np.dtype(jnp.dtype(dtype)).itemsize)
    except TypeError as e:
        raise ValueError(f"dtype={dtype!r} is not a known element type") from e


def columns(rows: Sequence[Measurement]) -> dict[str, np.ndarray]:
    """Struct of arrays (float64) of the rows' sizes, plus `bytes_per_elem` from each dtype."""
    cols = {f: np.array([getattr(r, f) for r in rows], np.float64) for f in _COLUMN_FIELDS}
    cols["bytes_per_elem"] = np.array([itemsize(r.dtype) for r in rows], np.float64)
    return cols


def size_key(row: Measurement) -> float:
    """The size an extrapolation split sorts by: FLOPs where counted, else bytes."""
    return float(row.flops or row.bytes or row.elements)


# ----------------------------------------------------------------------------- splits


def _row_hash(row: Measurement, seed: int) -> str:
    key = (seed, row.op, row.kernel, row.dtype, row.fmt) + tuple(getattr(row, f) for f in _COLUMN_FIELDS)
    return hashlib.sha256(repr(key).encode()).hexdigest()


def split_mask(rows: Sequence[Measurement], kind: str = "random", fraction: float = 0.25,
               seed: int = 0) -> np.ndarray:
    """Held-out mask: per op class, round(fraction · n) rows held out, deterministically.

    random: the rows whose seeded SHA-256 of (op, kernel, dtype, fmt, sizes) sort first, so the split
      depends on what a row is, not on file order. extrapolation: the rows of largest `size_key`
      (ties broken by the hash), i.e. the model must extrapolate to bigger kernels.

    Args:
      rows: the measurements.
      kind: "random" or "extrapolation".
      fraction: share of each op class held out, in [0, 1).
      seed: seeds the random split (and tie-breaks).

    Returns:
      bool [len(rows)]: True where held out.

    Raises:
      ValueError: an unknown kind or a fraction outside [0, 1).
    """
    if kind not in SPLITS:
        raise ValueError(f"split kind={kind!r} is not one of {SPLITS}")
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction={fraction} must be in [0, 1)")
    held = np.zeros(len(rows), bool)
    by_op: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by_op.setdefault(r.op, []).append(i)
    for idx in by_op.values():
        hashes = {i: _row_hash(rows[i], seed) for i in idx}
        if kind == "random":
            order = sorted(idx, key=lambda i: hashes[i])
        else:
            order = sorted(idx, key=lambda i: (-size_key(rows[i]), hashes[i]))
        held[order[: int(round(fraction * len(idx)))]] = True
    return held


# ----------------------------------------------------------------------------- loss


def robust_loss(r: jax.Array, kind: str = "huber", scale: float = 0.1) -> jax.Array:
    """ρ(r) elementwise on log residuals r.

    l2: r²/2; huber: r²/2 for |r| ≤ δ, δ(|r| − δ/2) beyond (δ = scale); cauchy: c²/2·log(1 + (r/c)²)
    (c = scale). scale is in log units: 0.1 ≈ 10% relative error.

    Raises:
      ValueError: an unknown kind or a non-positive scale.
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


@dataclasses.dataclass(frozen=True)
class Data:
    """Rows grouped by op class as jnp columns, with log times and per-row weights (a pytree)."""

    cols: dict[str, dict[str, jax.Array]]
    log_t: dict[str, jax.Array]
    weight: dict[str, jax.Array]


jax.tree_util.register_dataclass(Data, data_fields=["cols", "log_t", "weight"], meta_fields=[])


STATISTICS = ("median", "min")


def measured_times(rows: Sequence[Measurement], statistic: str = "median") -> np.ndarray:
    """The time each row is fitted to: `median_s` (default) or `min_s` (seconds).

    The minimum is the steadier statistic on a shared machine (contention only ever adds time); the
    median is the one NOTES.md validates on a quiet one.

    Raises:
      ValueError: an unknown statistic.
    """
    if statistic not in STATISTICS:
        raise ValueError(f"statistic={statistic!r} is not one of {STATISTICS}")
    return np.array([r.median_s if statistic == "median" else r.min_s for r in rows], np.float64)


def make_data(rows: Sequence[Measurement], dtype=jnp.float32, statistic: str = "median",
              train: np.ndarray | None = None) -> tuple[Data, dict[str, np.ndarray]]:
    """Group rows by op class; training rows weigh 1/(#classes · #training rows of the class).

    Held-out rows stay in the arrays with weight 0, so every split of one file has the same shapes
    (and `fit` compiles once).

    Args:
      rows: the measurements.
      dtype: of the arrays.
      statistic: see `measured_times`.
      train: bool [len(rows)], the training rows (default all).

    Returns:
      (data, index): index[op] are the positions in `rows` of that class's entries in data.
    """
    train = np.ones(len(rows), bool) if train is None else np.asarray(train, bool)
    index: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        index.setdefault(r.op, []).append(i)
    n_classes = len({rows[i].op for i in np.flatnonzero(train)}) or 1
    cols, log_t, weight = {}, {}, {}
    for op, idx in index.items():
        sub = [rows[i] for i in idx]
        cols[op] = {k: jnp.asarray(v, dtype) for k, v in columns(sub).items()}
        log_t[op] = jnp.asarray(np.log(measured_times(sub, statistic)), dtype)
        mask = train[idx]
        weight[op] = jnp.asarray(mask / (n_classes * max(int(mask.sum()), 1)), dtype)
    return Data(cols, log_t, weight), {op: np.asarray(idx) for op, idx in index.items()}


def objective(params, data: Data, prior_params, hardware, predict: PredictFn, *, loss: str = "huber",
              loss_scale: float = 0.1, prior_weight: float = 1e-6) -> jax.Array:
    """L(θ) = Σ_i w_i ρ(log t̂_i(θ) − log t_i) + λ Σ_j (θ_j − θ⁰_j)² (see the module docstring).

    Args:
      params: raw parameter pytree θ (what optax updates).
      data: `make_data` output.
      prior_params: θ⁰, same structure (raw datasheet-derived values).
      hardware: passed through to `predict` (static).
      predict: predict(params, hardware, op, cols) → times [n] in seconds, > 0.
      loss, loss_scale: robust loss ρ and its scale (log units).
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


# ----------------------------------------------------------------------------- the cost model

# Measurement op class → the cost function that costs it (perfmodel.ops).
MODEL_OF_OP = {
    "gemm": "gemm_time", "decode_attention": "decode_attention_time", "elementwise": "elementwise_time",
    "copy": "elementwise_time", "fake_quantize": "elementwise_time", "all_reduce": "collective_time",
    "all_gather": "collective_time", "reduce_scatter": "collective_time", "all_to_all": "collective_time",
    "send_recv": "collective_time",
}
# Compute precisions, as `HardwareSpec.peak_flops` picks its peak: ≤ 4.5, ≤ 8.25, ≤ 16 bits, else FP32.
PRECISIONS = ("fp4", "fp8", "bf16", "fp32")


def precision_index(bytes_per_elem) -> jax.Array:
    """Index into `PRECISIONS` of an operand width, by the same thresholds as `peak_flops`."""
    bits = 8.0 * jnp.asarray(bytes_per_elem, jnp.float32)
    return jnp.where(bits <= 4.5, 0, jnp.where(bits <= 8.25, 1, jnp.where(bits <= 16.0, 2, 3)))


class CalibParams(NamedTuple):
    """What calibration fits: the cost model's `EfficiencyParams` plus per-precision logit offsets.

    One compute efficiency per op class cannot serve two precisions whose peaks differ by more than
    their achieved rates do (this CPU: f32 GEMMs reach ~45% of the AVX-512 peak, bf16 ~15-20% of
    the AMX peak). Row i of op class c at precision p therefore uses

        compute_logit[c] + precision_logit[c, p, 0],   memory_logit[c] + precision_logit[c, p, 1],

    offsets that start (and are pulled by the prior) at 0, so an unmeasured precision inherits
    the class's values. `efficiency_for(params, precision)` folds them into an `EfficiencyParams`.

    Attributes:
      efficiency: `perfmodel.efficiency.EfficiencyParams` (raw).
      precision_logit: [n_op_classes, len(PRECISIONS), 2] raw offsets (compute, memory).
    """

    efficiency: object
    precision_logit: jax.Array


def init_params(hardware, efficiency: float | None = None) -> CalibParams:
    """`efficiency.datasheet_params(hardware)` with zero precision offsets.

    Args:
      hardware: the `HardwareSpec`.
      efficiency: compute/memory/link efficiency (default: the datasheet roofline's 1 − 1e-4). A fit
        starts from 0.5: at 1 − 1e-4 the sigmoid is saturated (gradient ∝ 1e-4), and a fit that
        starts there can settle with a compute-bound class explained by a too-low memory efficiency.

    Returns:
      `CalibParams`.
    """
    from .efficiency import OP_CLASSES, datasheet_params

    base = datasheet_params(hardware) if efficiency is None else datasheet_params(hardware, efficiency=efficiency)
    return CalibParams(base, jnp.zeros((len(OP_CLASSES), len(PRECISIONS), 2), jnp.float32))


def efficiency_for(params: CalibParams, precision: str):
    """The `EfficiencyParams` of one compute precision (offsets folded in), for the cost model.

    Raises:
      ValueError: an unknown precision.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is not one of {PRECISIONS}")
    p = PRECISIONS.index(precision)
    e = params.efficiency
    return e._replace(compute_logit=e.compute_logit + params.precision_logit[:, p, 0],
                      memory_logit=e.memory_logit + params.precision_logit[:, p, 1])


def _per_row(params, bytes_per_elem):
    """EfficiencyParams whose compute/memory logits are [n_op_classes, n_rows]: each row its precision's.

    The cost functions index these leaves by op class only, so per-row columns broadcast against
    the row arrays.
    """
    if not isinstance(params, CalibParams):
        return params
    p = precision_index(bytes_per_elem)
    e = params.efficiency
    return e._replace(compute_logit=e.compute_logit[:, None] + params.precision_logit[:, p, 0],
                      memory_logit=e.memory_logit[:, None] + params.precision_logit[:, p, 1])


def cost_model_times(params, hardware, op: str, cols: Mapping[str, jax.Array]) -> jax.Array:
    """The cost model's time for every row of one op class: a thin, vectorized map onto perfmodel.ops.

    gemm → `gemm_time(m, n, k, bytes_per_elem)`; decode_attention → `decode_attention_time(batch,
    seq, heads, kv_heads, head_dim, head_dim, bytes_per_elem)`; elementwise, copy, fake_quantize →
    `elementwise_time(bytes, flops)`; collectives → `collective_time(op, bytes, n_devices)`.

    Args:
      params: `CalibParams`, or `EfficiencyParams` / `Efficiency` (no precision offsets).
      hardware: `HardwareSpec`.
      op: measurement op class.
      cols: `columns` of the rows as arrays [n].

    Returns:
      seconds [n].

    Raises:
      ValueError: an op class the cost model does not cost.
    """
    from . import ops

    c = cols
    eff = _per_row(params, c["bytes_per_elem"])
    if op == "gemm":
        return ops.gemm_time(eff, hardware, c["m"], c["n"], c["k"], c["bytes_per_elem"])
    if op == "decode_attention":
        return ops.decode_attention_time(eff, hardware, c["batch"], c["seq"], c["heads"], c["kv_heads"],
                                         c["head_dim"], c["head_dim"], c["bytes_per_elem"])
    if op in ("elementwise", "copy", "fake_quantize"):
        return ops.elementwise_time(eff, hardware, c["bytes"], c["flops"])
    if op in MODEL_OF_OP:
        return ops.collective_time(eff, hardware, op, c["bytes"], c["n_devices"])
    raise ValueError(f"op={op!r} has no cost function; known: {sorted(MODEL_OF_OP)}")


# ----------------------------------------------------------------------------- report


def percentage_errors(predicted: np.ndarray, measured: np.ndarray) -> np.ndarray:
    """Absolute percentage errors 100·|t̂ − t|/t."""
    return 100.0 * np.abs(np.asarray(predicted, np.float64) - measured) / measured


def _summary(ape: np.ndarray) -> dict:
    if ape.size == 0:
        return dict(n=0, mape=None, median_ape=None, p90_ape=None)
    return dict(n=int(ape.size), mape=float(ape.mean()), median_ape=float(np.median(ape)),
                p90_ape=float(np.percentile(ape, 90)))


@dataclasses.dataclass(frozen=True)
class FitReport:
    """What a fit did and how well the fitted model and the datasheet baseline predict.

    Attributes:
      config: the fit's settings (split, fraction, seed, loss, scale, prior weight, steps, lr).
      counts: rows used for training and held out, excluded (by reason), noisy.
      losses: objective at the start and end of training.
      errors: one dict per (model ∈ {fitted, datasheet}, subset ∈ {train, heldout},
        op ∈ op classes + "all", kernels ∈ {"all", ">1ms"}) with n, mape, median_ape, p90_ape (%).
      headline: held-out MAPE over kernels > 1 ms (all op classes): fitted, datasheet and the
        ratio datasheet / fitted.
    """

    config: dict
    counts: dict
    losses: dict
    errors: tuple[dict, ...]
    headline: dict

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def table(self, model: str, subset: str, kernels: str = ">1ms") -> dict[str, dict]:
        """op → summary for one (model, subset, kernels) slice of `errors`."""
        return {e["op"]: e for e in self.errors
                if e["model"] == model and e["subset"] == subset and e["kernels"] == kernels}

    def format(self) -> str:
        """A markdown table per kernel filter: op class × (fitted vs datasheet) on train and held-out."""
        def pct(v):
            return "—" if v is None else f"{v:.1f}"

        out = [f"split={self.config['split']} held-out={self.counts['heldout']} train={self.counts['train']} "
               f"excluded={self.counts['excluded']} noisy={self.counts['noisy']}"]
        for kernels in (">1ms", "all"):
            out += ["", f"kernels {kernels}: MAPE / median / p90 APE in %",
                    "| op | n train | n held | fitted train | fitted held-out | datasheet held-out |",
                    "|---|---|---|---|---|---|"]
            ft, fh = self.table("fitted", "train", kernels), self.table("fitted", "heldout", kernels)
            bh = self.table("datasheet", "heldout", kernels)
            for op in ft:
                cells = [" / ".join(pct(s[k]) for k in ("mape", "median_ape", "p90_ape")) for s in (ft[op], fh[op], bh[op])]
                out.append(f"| {op} | {ft[op]['n']} | {fh[op]['n']} | " + " | ".join(cells) + " |")
        h = self.headline
        out += ["", f"headline: held-out MAPE (kernels > 1 ms) fitted {pct(h['fitted_mape'])}% vs datasheet "
                    f"{pct(h['datasheet_mape'])}% (ratio {h['ratio'] if h['ratio'] is None else round(h['ratio'], 2)}, "
                    f"n={h['n']})"]
        return "\n".join(out)


def error_report(rows: Sequence[Measurement], held: np.ndarray, predictions: Mapping[str, np.ndarray],
                 threshold_s: float = 1e-3, statistic: str = "median") -> tuple[tuple[dict, ...], dict]:
    """Error summaries per model, subset, op class (and "all"), kernel filter; and the headline.

    Errors are against `measured_times(rows, statistic)`; "> 1 ms" filters on the same times.
    """
    measured = measured_times(rows, statistic)
    ops = np.array([r.op for r in rows])
    long = measured > threshold_s
    errors = []
    for model, pred in predictions.items():
        ape = percentage_errors(pred, measured)
        for subset, mask in (("train", ~held), ("heldout", held)):
            for kernels, kmask in (("all", np.ones_like(long)), (">1ms", long)):
                for op in list(dict.fromkeys(ops)) + ["all"]:
                    m = mask & kmask & ((ops == op) if op != "all" else True)
                    errors.append(dict(model=model, subset=subset, op=op, kernels=kernels, **_summary(ape[m])))
    pick = {e["model"]: e for e in errors if e["subset"] == "heldout" and e["op"] == "all" and e["kernels"] == ">1ms"}
    fitted, base = pick["fitted"]["mape"], pick["datasheet"]["mape"]
    headline = dict(n=pick["fitted"]["n"], threshold_s=threshold_s, fitted_mape=fitted, datasheet_mape=base,
                    ratio=(base / fitted) if fitted and base is not None else None)
    return tuple(errors), headline


# ----------------------------------------------------------------------------- fit


@functools.partial(jax.jit, static_argnames=("hardware", "predict"))
def _predict_all(params, cols, *, hardware, predict):
    return {op: predict(params, hardware, op, c) for op, c in cols.items()}


def predict_rows(params, hardware, rows: Sequence[Measurement], predict: PredictFn = None) -> np.ndarray:
    """Model times (s) for `rows`, in row order (one jitted evaluation of every op class)."""
    data, index = make_data(rows)
    times = _predict_all(params, data.cols, hardware=hardware, predict=predict or cost_model_times)
    out = np.empty(len(rows))
    for op, t in times.items():
        out[index[op]] = np.asarray(t, np.float64)
    return out


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


def fit(measurements: MeasurementSet | Sequence[Measurement], hardware, params0=None, *,
        predict: PredictFn | None = None, prior_params=None, baseline_params=None,
        split: str = "random", holdout_fraction: float = 0.25, seed: int = 0,
        loss: str = "huber", loss_scale: float = 0.1, prior_weight: float = 1e-6,
        steps: int = 3000, learning_rate: float = 0.05, include_emulated: bool = False,
        threshold_s: float = 1e-3, statistic: str = "median"):
    """Fit the raw parameter pytree to measured times with optax Adam; report held-out errors.

    Minimizes `objective` on the training rows of a deterministic `split_mask` split: Adam with a
    cosine-decayed step size and global-norm clipping, `steps` full-batch steps in one jitted
    `lax.scan`. Parameters are the cost model's raw leaves (reparameterized by softplus/sigmoid
    inside the model), so every step is valid.

    Args:
      measurements: measured rows (`MeasurementSet` or a sequence of `Measurement`).
      hardware: the `HardwareSpec` the model costs on (static).
      params0: initial raw parameters; default `init_params(hardware, efficiency=0.5)` (see there).
      predict: predict(params, hardware, op, cols) → seconds [n]; default `cost_model_times`.
      prior_params: θ⁰ of the prior; default `init_params(hardware)` (the datasheet roofline) with
        the default predict, else params0.
      baseline_params: the uncalibrated baseline; default prior_params.
      split, holdout_fraction, seed: see `split_mask`.
      loss, loss_scale, prior_weight: see `objective`.
      steps, learning_rate: Adam steps and peak step size.
      include_emulated: fit emulated collectives too (default: excluded and counted in the report:
        the CPU mesh is a correctness harness, not a link to fit).
      threshold_s: the headline only counts kernels whose measured time exceeds this.
      statistic: fit and score `median_s` ("median") or `min_s` ("min"); see `measured_times`.

    Returns:
      (params, report): fitted raw parameters (same structure as params0) and a `FitReport`.

    Raises:
      ValueError: no rows left to train or hold out, or a bad split/loss setting.
    """
    predict = predict or cost_model_times
    rows = list(measurements.rows if isinstance(measurements, MeasurementSet) else measurements)
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
    to32 = lambda tree: jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)  # noqa: E731
    if prior_params is None:
        prior_params = init_params(hardware) if predict is cost_model_times else params0
    params0 = to32(init_params(hardware, efficiency=0.5) if params0 is None else params0)
    prior_params = to32(prior_params)
    baseline_params = to32(baseline_params) if baseline_params is not None else prior_params
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


# ----------------------------------------------------------------------------- profiles

PROFILE_FORMAT = "paretolab-profile"
PROFILE_VERSION = 1


def _flatten(params) -> dict[str, dict]:
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    return {jax.tree_util.keystr(path): dict(shape=list(np.shape(v)), value=np.asarray(v, np.float64).tolist())
            for path, v in leaves}


def _physical(params) -> dict:
    """Human-readable physical values per precision (not read back)."""
    if not isinstance(params, CalibParams):
        return {}
    from .efficiency import constrain

    return {p: {k: np.asarray(v, np.float64).tolist() for k, v in constrain(efficiency_for(params, p))._asdict().items()}
            for p in PRECISIONS}


def save_profile(path, hardware, params, report: FitReport | Mapping | None = None, env: Mapping | None = None):
    """Write a fitted profile as JSON, atomically: hardware spec, raw parameters, fit report, env.

    Layout: {"format": "paretolab-profile", "version": 1, "hardware": {HardwareSpec fields, links as
    a list of LinkLevel dicts}, "params": {keystr(path): {"shape": [...], "value": nested lists}},
    "physical": {precision: constrained values} (for reading; ignored on load), "report": the
    FitReport (or a dict of them) or null, "env": the measurement environment or {}}.

    Returns:
      The path written.
    """
    import json
    import os
    import pathlib

    if isinstance(report, FitReport):
        report = report.to_dict()
    elif isinstance(report, Mapping):
        report = {k: v.to_dict() if isinstance(v, FitReport) else v for k, v in report.items()}
    doc = dict(format=PROFILE_FORMAT, version=PROFILE_VERSION, hardware=dataclasses.asdict(hardware),
               params=_flatten(params), physical=_physical(params), report=report, env=dict(env or {}))
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=True, allow_nan=False))
    os.replace(tmp, path)
    return path


def _hardware_from_dict(d, where: str):
    from .specs import HardwareSpec, LinkLevel

    def build(cls, obj, name):
        if not isinstance(obj, dict):
            raise ValueError(f"{where}: {name} must be an object, got {type(obj).__name__}")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown, missing = set(obj) - fields, {f.name for f in dataclasses.fields(cls)
                                               if f.default is dataclasses.MISSING} - set(obj)
        if unknown or missing:
            raise ValueError(f"{where}: {name} has unknown fields {sorted(unknown)}, missing {sorted(missing)}")
        return obj

    build(HardwareSpec, d, "hardware")
    links = d["links"]
    if not isinstance(links, list) or len(links) != 3:
        raise ValueError(f"{where}: hardware.links must be a list of 3 link levels, got {links!r}")
    try:
        levels = tuple(LinkLevel(**build(LinkLevel, l, f"hardware.links[{i}]")) for i, l in enumerate(links))
        return HardwareSpec(**{**d, "links": levels})
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: hardware: {e}") from e


def load_profile(path, template=None):
    """Read a profile written by `save_profile`, strictly.

    Args:
      path: profile JSON.
      template: a parameter pytree giving the structure to fill (default `init_params(hardware)`,
        a `CalibParams`).

    Returns:
      (hardware, params): the `HardwareSpec` and the raw parameter pytree (float32 leaves).

    Raises:
      ValueError: naming the entry, for a wrong format or version, bad hardware fields, parameter
        paths that differ from the template's, a wrong shape, or a non-finite value.
    """
    import json

    where = str(path)
    try:
        with open(path) as f:
            doc = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not JSON: {e}") from e
    if not isinstance(doc, dict) or doc.get("format") != PROFILE_FORMAT:
        raise ValueError(f"{where}: format is not {PROFILE_FORMAT!r}")
    unknown = sorted(set(doc) - {"format", "version", "hardware", "params", "physical", "report", "env"})
    if unknown:
        raise ValueError(f"{where}: unknown top-level keys {unknown}")
    if doc.get("version") != PROFILE_VERSION:
        raise ValueError(f"{where}: version={doc.get('version')!r}; this reader knows {PROFILE_VERSION}")
    for key in ("hardware", "params"):
        if key not in doc:
            raise ValueError(f"{where}: missing {key!r}")
    hardware = _hardware_from_dict(doc["hardware"], where)
    if template is None:
        template = init_params(hardware)
    paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
    stored = doc["params"]
    if not isinstance(stored, dict):
        raise ValueError(f"{where}: params must be an object")
    expected = [jax.tree_util.keystr(p) for p, _ in paths_leaves]
    unknown, missing = sorted(set(stored) - set(expected)), sorted(set(expected) - set(stored))
    if unknown or missing:
        raise ValueError(f"{where}: params unknown {unknown}, missing {missing}")
    leaves = []
    for key, (_, like) in zip(expected, paths_leaves):
        entry = stored[key]
        if not isinstance(entry, dict) or set(entry) != {"shape", "value"}:
            raise ValueError(f"{where}: params[{key!r}] must be {{'shape': [...], 'value': ...}}")
        try:
            value = np.asarray(entry["value"], np.float64)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}: params[{key!r}] value is not numeric: {e}") from e
        if list(value.shape) != entry["shape"] or value.shape != np.shape(like):
            raise ValueError(f"{where}: params[{key!r}] shape {list(value.shape)} (declared {entry['shape']}) "
                             f"but the model expects {list(np.shape(like))}")
        if not np.all(np.isfinite(value)):
            raise ValueError(f"{where}: params[{key!r}] has non-finite values")
        leaves.append(jnp.asarray(value, jnp.float32))
    return hardware, jax.tree_util.tree_unflatten(treedef, leaves)


# ----------------------------------------------------------------------------- entry point

# Device kind (as jax reports it) → hardware preset, for accelerators whose datasheet we carry.
_DEVICE_PRESETS = (("GB200", "gb200-nvl72"), ("B200", "b200"), ("H200", "h200-sxm"), ("H100", "h100-sxm"),
                   ("MI300X", "mi300x"), ("TPU v5p", "tpu-v5p"))


def hardware_for(mset: MeasurementSet, name: str | None = None):
    """The `HardwareSpec` to fit against: a preset `name`, else by the measured device kind.

    "cpu-local" (or a CPU backend) builds `cpu_local_spec` with the measured copy bandwidth.

    Raises:
      ValueError: an accelerator with no preset and no name given.
    """
    from .presets import get_hardware

    env = mset.env
    if name is None and env.get("backend") != "cpu":
        kind = str(env.get("device_kind", ""))
        name = next((preset for key, preset in _DEVICE_PRESETS if key.lower() in kind.lower()), None)
        if name is None:
            raise ValueError(f"no hardware preset for device_kind={kind!r}; pass --hardware NAME")
    if name is None or name == "cpu-local":
        return cpu_local_spec(stream_copy_bandwidth(mset), n_devices=int(env.get("device_count", 8)))
    return get_hardware(name)


def calibrate(mset: MeasurementSet, hardware, **fit_kwargs):
    """Fit on both splits (for the report) and then on all rows (for the profile).

    Returns:
      (params, reports): params fitted on every row; reports {"random": FitReport,
      "extrapolation": FitReport, "all": FitReport (training errors of the final fit)}.
    """
    reports = {}
    for split in SPLITS:
        _, reports[split] = fit(mset, hardware, split=split, **fit_kwargs)
    params, reports["all"] = fit(mset, hardware, holdout_fraction=0.0, **fit_kwargs)
    return params, reports


def main(argv: Sequence[str] | None = None) -> dict:
    """`python -m perfmodel.calibrate --quick`: measure this machine (or read files), fit, report, save."""
    import argparse
    import datetime
    import json
    import pathlib
    import time

    parser = argparse.ArgumentParser(prog="python -m perfmodel.calibrate", description=main.__doc__)
    parser.add_argument("--quick", action="store_true", help="quick measurement (when measuring)")
    parser.add_argument("--measurements", nargs="+", metavar="FILE",
                        help="measurement CSVs or nccl-tests outputs to fit instead of measuring")
    parser.add_argument("--hardware", help="hardware preset (default: by device kind; cpu-local on CPU)")
    parser.add_argument("--out", help="output folder (default results/calibration/<UTC time>)")
    parser.add_argument("--loss", default="huber", choices=ROBUST_LOSSES)
    parser.add_argument("--loss-scale", type=float, default=0.1, help="robust loss scale in log units")
    parser.add_argument("--prior-weight", type=float, default=1e-6)
    parser.add_argument("--statistic", default="median", choices=STATISTICS)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cpu-devices", type=int, default=8, help="emulated CPU devices when measuring")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = pathlib.Path(args.out or f"results/calibration/{stamp}")
    from . import importers, measure

    if args.measurements:
        sets = [importers.read_measurements(f) for f in args.measurements]
        mset = sets[0] if len(sets) == 1 else importers.concat(*sets)
    else:
        jax.config.update("jax_num_cpu_devices", args.cpu_devices)
        mset = measure.run(quick=args.quick, progress=not args.no_progress)
        measure.write_csv(out / "measurements.csv", mset)
    hardware = hardware_for(mset, args.hardware)
    params, reports = calibrate(mset, hardware, loss=args.loss, loss_scale=args.loss_scale,
                                prior_weight=args.prior_weight, statistic=args.statistic, steps=args.steps,
                                seed=args.seed)
    text = "\n\n".join(f"## {split} split\n\n{rep.format()}" for split, rep in reports.items())
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(f"# calibration of {hardware.name}\n\n{text}\n")
    save_profile(out / "profile.json", hardware, params, reports, mset.env)
    print(text)
    summary = dict(
        hardware=hardware.name, rows=len(mset), out=str(out), wall_s=round(time.perf_counter() - start, 1),
        heldout_mape_gt1ms_random=reports["random"].headline,
        heldout_mape_gt1ms_extrapolation=reports["extrapolation"].headline,
    )
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
