"""Timing harness: times jitted JAX kernels on the local backend and writes a measurement file.

The kernels are the ones the cost model costs (GEMM, decode attention, elementwise and copy,
`numerics.fake_quantize`, collectives over the local mesh). The method follows the spirit of the
MLPerf rules (arXiv 2410.12032 §4): compile and warm-up excluded; each point repeated until a
minimum duration per round; the order of points shuffled in every round so drift cannot pose as a
size effect; per round the minimum over calls, over rounds the median and the IQR; points whose
IQR/median exceeds a threshold are flagged `noisy`, never dropped. The file format is documented in
docs/measurements.md; `perfmodel.importers.read_csv` reads it back.

    python -m perfmodel.measure --quick --out results/measurements/cpu.csv
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import pathlib
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np

SCHEMA_VERSION = 1
MAGIC = "# paretolab-measurements"
COLLECTIVE_OPS = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "send_recv")
OP_CLASSES = ("gemm", "decode_attention", "elementwise", "copy", "fake_quantize") + COLLECTIVE_OPS
SHAPE_FIELDS = ("m", "n", "k", "batch", "seq", "heads", "kv_heads", "head_dim", "elements", "n_devices")


@dataclasses.dataclass(frozen=True)
class Measurement:
    """One measured point: what ran, its size, and its time statistics (one row of the file).

    Attributes:
      op: op class, one of `OP_CLASSES`.
      kernel: what was timed, e.g. "matmul", "psum", "all_reduce_perf/in-place".
      dtype: element type name as numpy spells it ("float32", "bfloat16").
      fmt: numerics format name for `fake_quantize`, else "".
      m, n, k: GEMM [m, k] @ [k, n]; 0 when unused.
      batch, seq, heads, kv_heads, head_dim: decode attention, one query token per sequence.
      elements: elements of an elementwise, copy or fake_quantize operand.
      n_devices: devices in the collective group (1 for single-device kernels).
      bytes: bytes moved: memory traffic of a kernel; for a collective the nccl-tests "size", i.e.
        the per-rank buffer (all_reduce: the reduced buffer, all_gather: the gathered output,
        reduce_scatter: the input, all_to_all: the send buffer, send_recv: the message).
      flops: floating-point operations (2·m·n·k for a GEMM).
      median_s, iqr_s, min_s: median, inter-quartile range and minimum over rounds (seconds).
      n_rounds: rounds; n_repeats: timed calls over all rounds.
      noisy: IQR/median above the harness threshold.
      emulated: the devices are emulated (CPU mesh): a correctness harness, not a link to fit.
      source: "measure" (this harness), "nccl-tests", or another producer's name.

    Raises:
      ValueError: naming the field and value, for an unknown op, a negative size, a non-finite or
        non-positive time, or min_s > median_s.
    """

    op: str
    kernel: str
    dtype: str
    fmt: str = ""
    m: int = 0
    n: int = 0
    k: int = 0
    batch: int = 0
    seq: int = 0
    heads: int = 0
    kv_heads: int = 0
    head_dim: int = 0
    elements: int = 0
    n_devices: int = 1
    bytes: int = 0
    flops: int = 0
    median_s: float = 0.0
    iqr_s: float = 0.0
    min_s: float = 0.0
    n_rounds: int = 1
    n_repeats: int = 1
    noisy: bool = False
    emulated: bool = False
    source: str = "measure"

    def __post_init__(self):
        if self.op not in OP_CLASSES:
            raise ValueError(f"op={self.op!r} is not one of {OP_CLASSES}")
        for name in ("kernel", "dtype", "fmt", "source"):
            value = getattr(self, name)
            if not isinstance(value, str) or "," in value or "\n" in value:
                raise ValueError(f"{name}={value!r} must be a string without commas or newlines")
        if not self.kernel or not self.dtype:
            raise ValueError(f"kernel={self.kernel!r} and dtype={self.dtype!r} must be non-empty")
        for name in SHAPE_FIELDS + ("bytes", "flops"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name}={value!r} must be a non-negative integer")
        for name in ("n_devices", "n_rounds", "n_repeats"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        for name in ("median_s", "iqr_s", "min_s"):
            value = getattr(self, name)
            if not isinstance(value, (float, int, np.floating)) or not np.isfinite(value):
                raise ValueError(f"{name}={value!r} must be a finite number of seconds")
        if self.median_s <= 0 or self.min_s <= 0 or self.iqr_s < 0:
            raise ValueError(
                f"times must be positive (median_s={self.median_s!r}, min_s={self.min_s!r}) and "
                f"iqr_s={self.iqr_s!r} non-negative"
            )
        if self.min_s > self.median_s:
            raise ValueError(f"min_s={self.min_s!r} exceeds median_s={self.median_s!r}")
        if self.n_repeats < self.n_rounds:
            raise ValueError(f"n_repeats={self.n_repeats} < n_rounds={self.n_rounds}")
        if self.op in COLLECTIVE_OPS and self.bytes == 0:
            raise ValueError(f"a {self.op} needs bytes > 0, got bytes=0")


COLUMNS = tuple(f.name for f in dataclasses.fields(Measurement))
_BOOL_FIELDS = ("noisy", "emulated")
_FLOAT_FIELDS = ("median_s", "iqr_s", "min_s")


@dataclasses.dataclass(frozen=True)
class MeasurementSet:
    """Measured points plus the environment they were measured in (JSON-serializable dict)."""

    rows: tuple[Measurement, ...]
    env: Mapping = dataclasses.field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.rows)

    def of(self, *ops: str) -> MeasurementSet:
        """The rows of the given op classes."""
        return MeasurementSet(tuple(r for r in self.rows if r.op in ops), self.env)


def format_row(row: Measurement) -> str:
    """One CSV line of `row` in `COLUMNS` order (floats in shortest round-trip form)."""
    out = []
    for name in COLUMNS:
        value = getattr(row, name)
        if name in _BOOL_FIELDS:
            out.append("1" if value else "0")
        elif name in _FLOAT_FIELDS:
            out.append(repr(float(value)))
        else:
            out.append(str(int(value)) if not isinstance(value, str) else value)
    return ",".join(out)


def write_csv(path: str | os.PathLike, mset: MeasurementSet) -> pathlib.Path:
    """Write `mset` as a measurement file (docs/measurements.md), atomically (temp file + rename).

    Returns:
      The path written.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"{MAGIC} schema={SCHEMA_VERSION}", "# env=" + json.dumps(dict(mset.env), sort_keys=True)]
    lines.append(",".join(COLUMNS))
    lines.extend(format_row(r) for r in mset.rows)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)
    return path


# ----------------------------------------------------------------------------- timing


@dataclasses.dataclass(frozen=True)
class TimingConfig:
    """How points are timed.

    Attributes:
      rounds: rounds per point; the order of points is reshuffled in every round.
      min_round_s: each round repeats a point until this much wall time has passed (≥ 1 call).
      warmup_calls: untimed calls after compilation.
      noisy_threshold: flag a point when IQR/median over rounds exceeds this.
      memory_budget_bytes: inputs + outputs held at once; points are interleaved within groups
        that fit this budget.
      seed: seeds the shuffles and the input data.
    """

    rounds: int = 9
    min_round_s: float = 0.05
    warmup_calls: int = 2
    noisy_threshold: float = 0.1
    memory_budget_bytes: int = 1 << 30
    seed: int = 0

    def __post_init__(self):
        if self.rounds < 1 or self.warmup_calls < 0 or self.memory_budget_bytes <= 0:
            raise ValueError(f"bad TimingConfig {self}")
        if not (self.min_round_s >= 0 and self.noisy_threshold > 0):
            raise ValueError(f"bad TimingConfig {self}")


QUICK_TIMING = TimingConfig(rounds=7, min_round_s=0.02)


@dataclasses.dataclass(frozen=True)
class Point:
    """A kernel to time: `fn(*make_inputs(rng))` under jit, and the row fields that describe it.

    `make_inputs` returns device arrays (already placed/sharded); `footprint_bytes` bounds the
    memory its inputs and outputs hold. `fields` are the `Measurement` fields except the times.
    """

    fn: Callable
    make_inputs: Callable[[np.random.Generator], tuple]
    footprint_bytes: int
    fields: Mapping


def time_round(call: Callable[[], object], min_s: float,
               clock: Callable[[], float] = time.perf_counter) -> tuple[float, int]:
    """Call `call()` until `min_s` seconds have passed (at least once); return (min time, calls).

    Each call is timed alone up to `jax.block_until_ready` of its result, so the time includes
    dispatch: what one launch of the kernel costs.
    """
    import jax

    best, calls, start = float("inf"), 0, clock()
    while True:
        t0 = clock()
        jax.block_until_ready(call())
        t1 = clock()
        best, calls = min(best, t1 - t0), calls + 1
        if t1 - start >= min_s:
            return best, calls


def summarize(round_mins: Sequence[float], calls: int, noisy_threshold: float) -> dict:
    """Median, IQR and min over per-round minima; the noisy flag (IQR/median > threshold)."""
    t = np.asarray(round_mins, dtype=np.float64)
    q25, median, q75 = np.percentile(t, [25, 50, 75])
    iqr = float(q75 - q25)
    return dict(median_s=float(median), iqr_s=iqr, min_s=float(t.min()), n_rounds=int(t.size),
                n_repeats=int(calls), noisy=bool(iqr > noisy_threshold * median))


def _groups(points: Sequence[Point], budget: int) -> list[list[int]]:
    groups, current, used = [], [], 0
    for i, p in enumerate(points):
        if current and used + p.footprint_bytes > budget:
            groups.append(current)
            current, used = [], 0
        current.append(i)
        used += p.footprint_bytes
    return groups + ([current] if current else [])


def time_points(points: Sequence[Point], config: TimingConfig = TimingConfig(),
                progress: bool = True) -> list[Measurement]:
    """Time `points` and return one `Measurement` per point, in the order given.

    Points are shuffled (seeded) into memory-bounded groups; per group: inputs are built, every
    kernel is compiled (`jit(...).lower(...).compile()`, not timed) and warmed up; then
    `config.rounds` rounds, each in a fresh random order, time every point with `time_round`.
    """
    import jax
    from tqdm.auto import tqdm

    rng = np.random.default_rng(config.seed)
    order = rng.permutation(len(points))
    shuffled = [points[i] for i in order]
    results: dict[int, Measurement] = {}
    bar = tqdm(total=len(points) * (config.rounds + 1), desc="measure", unit="pt",
               disable=not progress, file=sys.stderr)
    for group in _groups(shuffled, config.memory_budget_bytes):
        calls, round_mins, n_calls = {}, {i: [] for i in group}, {i: 0 for i in group}
        for i in group:
            args = shuffled[i].make_inputs(rng)
            compiled = jax.jit(shuffled[i].fn).lower(*args).compile()
            if shuffled[i].fields.get("flops", 0) is None:  # counted by XLA (see fake_quantize_points)
                xla_flops = (compiled.cost_analysis() or {}).get("flops")
                shuffled[i] = dataclasses.replace(
                    shuffled[i], fields={**shuffled[i].fields, "flops": int(xla_flops or 0)})
            calls[i] = lambda c=compiled, a=args: c(*a)
            for _ in range(config.warmup_calls):
                jax.block_until_ready(calls[i]())
            bar.update(1)
        for _ in range(config.rounds):
            for i in rng.permutation(group):
                best, n = time_round(calls[i], config.min_round_s)
                round_mins[i].append(best)
                n_calls[i] += n
                bar.update(1)
        for i in group:
            stats = summarize(round_mins[i], n_calls[i], config.noisy_threshold)
            results[int(order[i])] = Measurement(**shuffled[i].fields, **stats)
        del calls
    bar.close()
    return [results[i] for i in range(len(points))]


# ----------------------------------------------------------------------------- environment


def _git(*args: str) -> str:
    root = pathlib.Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def _cpu_model() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict:
    """JAX/jaxlib/numpy/Python versions, backend, device kind and count, CPU, git SHA, UTC time."""
    import jax
    import jaxlib

    devices = jax.devices()
    return dict(
        schema=SCHEMA_VERSION,
        created_utc=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        jax=jax.__version__, jaxlib=jaxlib.__version__, numpy=np.__version__,
        python=platform.python_version(), platform=platform.platform(),
        backend=jax.default_backend(), device_kind=devices[0].device_kind, device_count=len(devices),
        cpu_model=_cpu_model(), cpu_count=os.cpu_count(),
        git_sha=_git("rev-parse", "HEAD"), git_dirty=bool(_git("status", "--porcelain", "--", "perfmodel")),
        load_avg=list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    )


# ----------------------------------------------------------------------------- kernels


def log2_grid(lo: int, hi: int, step: int = 1) -> list[int]:
    """Powers of two from `lo` to `hi` inclusive (both powers of two), every `step`-th exponent."""
    if lo <= 0 or hi < lo or lo & (lo - 1) or hi & (hi - 1):
        raise ValueError(f"log2_grid needs powers of two 0 < lo <= hi, got lo={lo}, hi={hi}")
    return [1 << e for e in range(lo.bit_length() - 1, hi.bit_length(), step)]


def _dtype(name: str):
    import jax.numpy as jnp

    return jnp.dtype(name)


def _normal(rng: np.random.Generator, shape: tuple[int, ...], dtype: str, sharding=None):
    import jax

    x = rng.standard_normal(shape, dtype=np.float32).astype(_dtype(dtype))
    return jax.device_put(x, sharding) if sharding is not None else jax.device_put(x)


def gemm_points(shapes: Sequence[tuple[int, int, int]], dtypes: Sequence[str]) -> list[Point]:
    """GEMM [m, k] @ [k, n] with FP32 accumulation; flops = 2·m·n·k, bytes = (mk + kn + mn)·size."""
    import jax.numpy as jnp

    points = []
    for dtype in dtypes:
        size = _dtype(dtype).itemsize
        for m, n, k in shapes:
            def fn(a, b, dt=_dtype(dtype)):
                return jnp.matmul(a, b, preferred_element_type=jnp.float32).astype(dt)

            points.append(Point(
                fn=fn,
                make_inputs=lambda rng, m=m, n=n, k=k, d=dtype: (_normal(rng, (m, k), d), _normal(rng, (k, n), d)),
                footprint_bytes=(m * k + k * n + m * n) * size,
                fields=dict(op="gemm", kernel="matmul", dtype=dtype, m=m, n=n, k=k,
                            bytes=(m * k + k * n + m * n) * size, flops=2 * m * n * k),
            ))
    return points


def decode_attention(q, k, v):
    """Decode attention, one query token per sequence, GQA, softmax in FP32.

    out[b, h] = softmax(q[b, h]·K[b, :, h // g]ᵀ / √d) · V[b, :, h // g], with g = heads / kv_heads.

    The cache is laid out [batch, kv_heads, seq, head_dim] (each KV head's tokens contiguous, as
    paged decode kernels store them), so both products are batched matrix products without a
    transpose of the cache. (A [batch, seq, kv_heads, head_dim] cache runs 2–4× slower on XLA:CPU.)

    Args:
      q: [batch, heads, head_dim].
      k, v: [batch, kv_heads, seq, head_dim].

    Returns:
      [batch, heads, head_dim] in q's dtype.
    """
    import jax
    import jax.numpy as jnp

    b, h, d = q.shape
    kvh = k.shape[1]
    qg = q.reshape(b, kvh, h // kvh, d)
    s = jnp.einsum("bkgd,bksd->bkgs", qg, k, preferred_element_type=jnp.float32) * (d ** -0.5)
    p = jax.nn.softmax(s, axis=-1).astype(v.dtype)
    o = jnp.einsum("bkgs,bksd->bkgd", p, v, preferred_element_type=jnp.float32)
    return o.reshape(b, h, d).astype(q.dtype)


def decode_attention_points(configs: Sequence[tuple[int, int, int, int, int]],
                            dtypes: Sequence[str]) -> list[Point]:
    """Decode attention per (batch, seq, heads, kv_heads, head_dim).

    flops = 4·batch·heads·seq·head_dim (QKᵀ and PV); bytes = (2·batch·seq·kv_heads·head_dim
    + 2·batch·heads·head_dim)·size (K and V read once, q read and out written once).
    """
    points = []
    for dtype in dtypes:
        size = _dtype(dtype).itemsize
        for b, s, h, kvh, d in configs:
            if h % kvh:
                raise ValueError(f"kv_heads={kvh} does not divide heads={h}")
            kv = 2 * b * s * kvh * d * size
            io = 2 * b * h * d * size
            points.append(Point(
                fn=decode_attention,
                make_inputs=lambda rng, b=b, s=s, h=h, kvh=kvh, d=d, dt=dtype: (
                    _normal(rng, (b, h, d), dt), _normal(rng, (b, kvh, s, d), dt),
                    _normal(rng, (b, kvh, s, d), dt)),
                footprint_bytes=kv + io + 4 * b * h * s * 4,
                fields=dict(op="decode_attention", kernel="gqa_decode", dtype=dtype, batch=b, seq=s,
                            heads=h, kv_heads=kvh, head_dim=d, bytes=kv + io, flops=4 * b * h * s * d),
            ))
    return points


def elementwise_points(sizes: Sequence[int], dtypes: Sequence[str]) -> list[Point]:
    """Bandwidth kernels: `x * y` (elementwise: 3 operands moved, 1 flop each) and `copy(x)`
    (2 operands moved, no flops), per element count and dtype."""
    import jax.numpy as jnp

    points = []
    for dtype in dtypes:
        size = _dtype(dtype).itemsize
        for e in sizes:
            points.append(Point(
                fn=jnp.multiply,
                make_inputs=lambda rng, e=e, d=dtype: (_normal(rng, (e,), d), _normal(rng, (e,), d)),
                footprint_bytes=3 * e * size,
                fields=dict(op="elementwise", kernel="multiply", dtype=dtype, elements=e,
                            bytes=3 * e * size, flops=e),
            ))
            points.append(Point(
                fn=jnp.copy,
                make_inputs=lambda rng, e=e, d=dtype: (_normal(rng, (e,), d),),
                footprint_bytes=2 * e * size,
                fields=dict(op="copy", kernel="copy", dtype=dtype, elements=e, bytes=2 * e * size, flops=0),
            ))
    return points


def fake_quantize_points(sizes: Sequence[int], formats: Sequence[str], row: int = 1024) -> list[Point]:
    """`numerics.fake_quantize(x, fmt, axis=-1)` on float32 [elements / row, row].

    bytes = 2·elements·4 (read and write float32); flops = what XLA's `cost_analysis()` counts for
    the compiled kernel (filled in by `time_points`; ~30 per element for the MX formats).
    """
    import numerics

    points = []
    for fmt in formats:
        for e in sizes:
            if e % row:
                raise ValueError(f"elements={e} is not a multiple of row={row}")
            points.append(Point(
                fn=lambda x, f=fmt: numerics.fake_quantize(x, f, axis=-1),
                make_inputs=lambda rng, e=e: (_normal(rng, (e // row, row), "float32"),),
                footprint_bytes=2 * e * 4,
                fields=dict(op="fake_quantize", kernel="fake_quantize", dtype="float32", fmt=fmt,
                            elements=e, bytes=2 * e * 4, flops=None),
            ))
    return points


def collective_points(sizes_bytes: Sequence[int], ops: Sequence[str] = COLLECTIVE_OPS,
                      devices=None) -> list[Point]:
    """Collectives over a 1-D mesh of `devices` (default all local ones) under `jax.shard_map`.

    Per rank, with L = bytes / 4 float32 elements and n devices: all_reduce psums [L];
    all_gather gathers [L / n] shards into [L]; reduce_scatter psum-scatters [L] into [L / n];
    all_to_all exchanges [L] in n chunks; send_recv ppermutes [L] one step around the ring.
    `bytes` follows the nccl-tests "size" convention (see `Measurement`).

    Raises:
      ValueError: an unknown op, or bytes not a multiple of 4·n.
    """
    import jax
    from jax import lax
    from jax.sharding import NamedSharding, PartitionSpec as P

    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    mesh = jax.sharding.Mesh(np.array(devices), ("x",), axis_types=(jax.sharding.AxisType.Auto,))
    sharding = NamedSharding(mesh, P("x"))
    ring = [(i, (i + 1) % n) for i in range(n)]
    local = {
        "all_reduce": lambda x: lax.psum(x, "x"),
        "all_gather": lambda x: lax.all_gather(x, "x", tiled=True),
        "reduce_scatter": lambda x: lax.psum_scatter(x, "x", scatter_dimension=0, tiled=True),
        "all_to_all": lambda x: lax.all_to_all(x, "x", 0, 0, tiled=True),
        "send_recv": lambda x: lax.ppermute(x, "x", ring),
    }
    kernel = dict(all_reduce="psum", all_gather="all_gather", reduce_scatter="psum_scatter",
                  all_to_all="all_to_all", send_recv="ppermute")
    emulated = devices[0].platform == "cpu"
    points = []
    for op in ops:
        if op not in local:
            raise ValueError(f"unknown collective op={op!r}; expected one of {COLLECTIVE_OPS}")
        for nbytes in sizes_bytes:
            if nbytes % (4 * n):
                raise ValueError(f"bytes={nbytes} is not a multiple of 4·n_devices={4 * n}")
            length = nbytes // 4
            global_len = length if op == "all_gather" else n * length
            fn = jax.shard_map(local[op], mesh=mesh, in_specs=P("x"), out_specs=P("x"))
            points.append(Point(
                fn=fn,
                make_inputs=lambda rng, g=global_len: (_normal(rng, (g,), "float32", sharding),),
                footprint_bytes=3 * n * nbytes,
                fields=dict(op=op, kernel=kernel[op], dtype="float32", n_devices=n, bytes=nbytes,
                            emulated=emulated),
            ))
    return points


# ----------------------------------------------------------------------------- plans and CLI

FAMILIES = ("gemm", "decode_attention", "elementwise", "fake_quantize", "collectives")


def _gemm_shapes(rng: np.random.Generator, grid: list[int], n_random: int) -> list[tuple[int, int, int]]:
    shapes = [(s, s, s) for s in grid]
    while len(shapes) < len(grid) + n_random:
        shape = tuple(int(v) for v in rng.choice(grid, size=3))
        if shape not in shapes:
            shapes.append(shape)
    return shapes


def _attention_configs(rng: np.random.Generator, count: int, max_kv_bytes: int, max_seq: int):
    configs = []
    while len(configs) < count:
        b = int(rng.choice([1, 2, 4, 8, 16, 32]))
        s = int(rng.choice(log2_grid(256, max_seq)))
        h = int(rng.choice([8, 16, 32]))
        kvh = h // int(rng.choice([1, 4, 8]))
        d = int(rng.choice([64, 128]))
        if 2 * b * s * kvh * d * 4 <= max_kv_bytes and (b, s, h, kvh, d) not in configs:
            configs.append((b, s, h, kvh, d))
    return configs


@dataclasses.dataclass(frozen=True)
class _Sizes:
    gemm: tuple[int, int]  # log-spaced M, N, K from .. to
    gemm_random: int  # random (M, N, K) per dtype, besides the cubes
    attention: int  # configs per dtype
    kv_bytes: int  # largest K + V cache (float32)
    max_seq: int
    elementwise: tuple[int, int, int]  # elements from, to, every n-th power of two
    fake_quantize: tuple[int, ...]
    collective: tuple[int, ...]  # bytes per rank


# Quick mode on a CPU keeps elementwise operands at ≤ 16 MiB: XLA:CPU output buffers above glibc's
# 32 MiB mmap threshold are fresh pages every call, and their page faults (≈ 25 ms for 64 MiB) are
# not a bandwidth a roofline has. The full mode measures them (and the report shows the miss).
# Accelerators get sizes ~1000× larger so that their kernels too run longer than 1 ms.
_PLANS = {
    ("cpu", True): _Sizes((128, 2048), 20, 12, 128 << 20, 16384, (1 << 12, 1 << 22, 2),
                          (1 << 18, 1 << 20, 1 << 22), (1 << 12, 1 << 16, 1 << 20, 1 << 22)),
    ("cpu", False): _Sizes((16, 4096), 60, 40, 512 << 20, 65536, (1 << 12, 1 << 24, 1),
                           (1 << 14, 1 << 16, 1 << 18, 1 << 20, 1 << 22), tuple(log2_grid(1 << 10, 1 << 26))),
    ("accelerator", True): _Sizes((512, 16384), 20, 12, 8 << 30, 131072, (1 << 16, 1 << 28, 2),
                                  (1 << 22, 1 << 24, 1 << 26), tuple(log2_grid(1 << 12, 1 << 30, 2))),
    ("accelerator", False): _Sizes((64, 32768), 60, 40, 32 << 30, 524288, (1 << 12, 1 << 30, 1),
                                   (1 << 18, 1 << 20, 1 << 22, 1 << 24, 1 << 26), tuple(log2_grid(1 << 10, 1 << 32))),
}


def plan(quick: bool = True, families: Sequence[str] = FAMILIES, seed: int = 0) -> tuple[list[Point], dict]:
    """The points of a run: log-spaced sizes per family, fewer in quick mode, larger on accelerators.

    Returns:
      (points, skipped): `skipped` maps a family that cannot run here to the reason (e.g.
      collectives on one device, or numerics without `fake_quantize`).
    """
    import jax

    unknown = set(families) - set(FAMILIES)
    if unknown:
        raise ValueError(f"unknown families {sorted(unknown)}; expected a subset of {FAMILIES}")
    sizes = _PLANS[("cpu" if jax.default_backend() == "cpu" else "accelerator", bool(quick))]
    rng = np.random.default_rng(seed)
    dtypes = ("float32", "bfloat16")
    points, skipped = [], {}
    if "gemm" in families:
        points += gemm_points(_gemm_shapes(rng, log2_grid(*sizes.gemm), sizes.gemm_random), dtypes)
    if "decode_attention" in families:
        configs = _attention_configs(rng, sizes.attention, sizes.kv_bytes, sizes.max_seq)
        points += decode_attention_points(configs, dtypes)
    if "elementwise" in families:
        points += elementwise_points(log2_grid(*sizes.elementwise), dtypes)
    if "fake_quantize" in families:
        try:
            import numerics

            formats = tuple(numerics.FORMAT_NAMES)
            numerics.fake_quantize  # noqa: B018 -- the API this family times
        except (ImportError, AttributeError) as err:
            skipped["fake_quantize"] = f"numerics has no fake_quantize/FORMAT_NAMES: {err}"
        else:
            points += fake_quantize_points(sizes.fake_quantize, formats)
    if "collectives" in families:
        n = jax.device_count()
        if n < 2:
            skipped["collectives"] = f"one local device ({jax.devices()[0].device_kind}); nothing to communicate"
        else:
            points += collective_points([b for b in sizes.collective if b % (4 * n) == 0])
    return points, skipped


def run(quick: bool = True, families: Sequence[str] = FAMILIES, timing: TimingConfig | None = None,
        progress: bool = True) -> MeasurementSet:
    """Measure this machine: `plan` the points, `time_points` them, record the environment.

    On an accelerator the default memory budget is 16 GiB (its kernels are ~1000× larger).

    Returns:
      A `MeasurementSet` whose env holds versions, devices, CPU, git SHA, time, load average at
      start and end, the timing config and the skipped families.
    """
    import jax

    if timing is None:
        timing = QUICK_TIMING if quick else TimingConfig()
        if jax.default_backend() != "cpu":
            timing = dataclasses.replace(timing, memory_budget_bytes=16 << 30)
    env = environment()
    points, skipped = plan(quick, families, timing.seed)
    start = time.perf_counter()
    rows = time_points(points, timing, progress)
    env.update(
        quick=quick, families=list(families), skipped=skipped, timing=dataclasses.asdict(timing),
        wall_s=round(time.perf_counter() - start, 3),
        load_avg_end=list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    )
    return MeasurementSet(tuple(rows), env)


def main(argv: Sequence[str] | None = None) -> pathlib.Path:
    parser = argparse.ArgumentParser(prog="python -m perfmodel.measure", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="measurement file to write (CSV, docs/measurements.md)")
    parser.add_argument("--quick", action="store_true", help="fewer, smaller points (about a minute on 2 quiet cores)")
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    parser.add_argument("--cpu-devices", type=int, default=8,
                        help="emulated CPU devices for collectives when the backend is CPU (default 8)")
    parser.add_argument("--rounds", type=int, help="rounds per point (default 7 quick, 9 full)")
    parser.add_argument("--min-round-s", type=float, help="minimum duration of a round (s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    import jax

    jax.config.update("jax_num_cpu_devices", args.cpu_devices)
    timing = QUICK_TIMING if args.quick else TimingConfig()
    if jax.default_backend() != "cpu":
        timing = dataclasses.replace(timing, memory_budget_bytes=16 << 30)
    timing = dataclasses.replace(
        timing, seed=args.seed, **{k: v for k, v in (("rounds", args.rounds), ("min_round_s", args.min_round_s))
                                   if v is not None})
    mset = run(args.quick, args.families, timing, progress=not args.no_progress)
    path = write_csv(args.out, mset)
    noisy = sum(r.noisy for r in mset.rows)
    print(f"wrote {len(mset)} points ({noisy} noisy) to {path} in {mset.env['wall_s']:.1f} s; "
          f"skipped: {mset.env['skipped'] or 'none'}")
    return path


if __name__ == "__main__":
    main()
