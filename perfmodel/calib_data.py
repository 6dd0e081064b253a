"""Measurements as fitting data: columns, the deterministic held-out splits, weighted op groups.

`split_mask` holds out a share of every op class, deterministically: `random` by a seeded hash of
what each row is (so not by file order), `extrapolation` the largest kernels. `make_data` groups
the rows by op class into jnp columns, log times and weights 1/(#classes · #training rows of the
class), so each op class weighs the same in the loss and held-out rows weigh 0.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from numerics.formats import FORMAT_NAMES

from .measurements import SIZE_FIELDS, Measurement, gemm_out_itemsize, itemsize

SPLITS = ("random", "extrapolation")
STATISTICS = ("median", "min")


def columns(rows: Sequence[Measurement]) -> dict[str, np.ndarray]:
    """Struct of arrays of the rows' sizes.

    Args:
      rows: the measurements.

    Returns:
      {field: float64 [len(rows)]} for every `measurements.SIZE_FIELDS` field, plus
      `bytes_per_elem` from each row's dtype, `out_bytes_per_elem` (a gemm row's output,
      `measurements.gemm_out_itemsize`; the dtype's for other rows) and `format_index`, the row's
      `fmt` as an index into `numerics.FORMAT_NAMES` (−1 for rows without a format).

    Raises:
      ValueError: an unknown dtype or format name.
    """
    cols = {f: np.array([getattr(r, f) for r in rows], np.float64) for f in SIZE_FIELDS}
    cols["bytes_per_elem"] = np.array([itemsize(r.dtype) for r in rows], np.float64)
    cols["out_bytes_per_elem"] = np.array([gemm_out_itemsize(r) if r.op == "gemm" else itemsize(r.dtype)
                                           for r in rows], np.float64)
    unknown = sorted({r.fmt for r in rows if r.fmt and r.fmt not in FORMAT_NAMES})
    if unknown:
        raise ValueError(f"unknown formats {unknown} in the measurements; valid: {', '.join(FORMAT_NAMES)}")
    cols["format_index"] = np.array([FORMAT_NAMES.index(r.fmt) if r.fmt else -1 for r in rows], np.float64)
    return cols


def measured_times(rows: Sequence[Measurement], statistic: str = "median") -> np.ndarray:
    """The time each row is fitted and scored against: `median_s` (default) or `min_s`.

    The minimum is the steadier statistic on a shared machine (contention only ever adds time); the
    median is the one NOTES.md validates on a quiet one.

    Returns:
      float64 [len(rows)], seconds.

    Raises:
      ValueError: an unknown statistic.
    """
    if statistic not in STATISTICS:
        raise ValueError(f"statistic={statistic!r} is not one of {STATISTICS}")
    return np.array([r.median_s if statistic == "median" else r.min_s for r in rows], np.float64)


def group_by_op(rows: Sequence[Measurement]) -> dict[str, list[int]]:
    """Positions in `rows` of each op class, classes in order of first appearance."""
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault(r.op, []).append(i)
    return groups


def size_key(row: Measurement) -> float:
    """The size an extrapolation split sorts by: FLOPs where counted, else bytes, else elements."""
    return float(row.flops or row.bytes or row.elements)


def _row_hash(row: Measurement, seed: int) -> str:
    key = (seed, row.op, row.kernel, row.dtype, row.fmt) + tuple(getattr(row, f) for f in SIZE_FIELDS)
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
    for idx in group_by_op(rows).values():
        hashes = {i: _row_hash(rows[i], seed) for i in idx}
        if kind == "random":
            order = sorted(idx, key=lambda i: hashes[i])
        else:
            order = sorted(idx, key=lambda i: (-size_key(rows[i]), hashes[i]))
        held[order[: int(round(fraction * len(idx)))]] = True
    return held


@dataclasses.dataclass(frozen=True)
class Data:
    """Rows grouped by op class as jnp columns, with log times and per-row weights (a pytree).

    Attributes:
      cols: {op: `columns` of its rows as arrays [n_op]}.
      log_t: {op: log measured time [n_op]} (log seconds).
      weight: {op: loss weight [n_op]}, 0 for held-out rows.
    """

    cols: dict[str, dict[str, jax.Array]]
    log_t: dict[str, jax.Array]
    weight: dict[str, jax.Array]


jax.tree_util.register_dataclass(Data, data_fields=["cols", "log_t", "weight"], meta_fields=[])


def make_data(rows: Sequence[Measurement], dtype=jnp.float32, statistic: str = "median",
              train: np.ndarray | None = None) -> tuple[Data, dict[str, np.ndarray]]:
    """Group rows by op class; training rows weigh 1/(#classes · #training rows of the class).

    Held-out rows stay in the arrays with weight 0, so every split of one file has the same shapes
    (and `calibrate.fit` compiles once).

    Args:
      rows: the measurements.
      dtype: of the arrays.
      statistic: see `measured_times`.
      train: bool [len(rows)], the training rows (default all).

    Returns:
      (data, index): index[op] are the positions in `rows` of that class's entries in data.

    Raises:
      ValueError: an unknown statistic or dtype name.
    """
    train = np.ones(len(rows), bool) if train is None else np.asarray(train, bool)
    index = group_by_op(rows)
    n_classes = len({rows[i].op for i in np.flatnonzero(train)}) or 1
    cols, log_t, weight = {}, {}, {}
    for op, idx in index.items():
        sub = [rows[i] for i in idx]
        cols[op] = {k: jnp.asarray(v, dtype) for k, v in columns(sub).items()}
        log_t[op] = jnp.asarray(np.log(measured_times(sub, statistic)), dtype)
        mask = train[idx]
        weight[op] = jnp.asarray(mask / (n_classes * max(int(mask.sum()), 1)), dtype)
    return Data(cols, log_t, weight), {op: np.asarray(idx) for op, idx in index.items()}
