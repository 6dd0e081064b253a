"""The kernels the timing harness times, and the plan of which sizes it times them at.

Each family builds `Point`s: a jit-able function, a way to make its inputs, and the `Measurement`
fields (op class, sizes, bytes and FLOPs) that describe it. The byte and FLOP counts are the ones
`perfmodel.ops` costs (`gemm_cost`, `decode_attention_cost`, `collective_traffic`); a test holds
the two against each other. `plan` picks log-spaced sizes per family for this backend.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from .measurements import COLLECTIVE_OPS, GEMM_FP32_OUT, itemsize

FAMILIES = ("gemm", "decode_attention", "elementwise", "fake_quantize", "collectives")


@dataclasses.dataclass(frozen=True)
class Point:
    """A kernel to time: `fn(*make_inputs(rng))` under jit, and the row fields that describe it.

    Attributes:
      fn: the kernel (traced by `jax.jit`).
      make_inputs: rng → device arrays, already placed (sharded for collectives).
      footprint_bytes: bound on the memory its inputs and outputs hold at once.
      fields: the `Measurement` fields except the times; `flops=None` asks the harness to fill in
        the count of XLA's `cost_analysis()` for the compiled kernel.
    """

    fn: Callable
    make_inputs: Callable[[np.random.Generator], tuple]
    footprint_bytes: int
    fields: Mapping


def log2_grid(lo: int, hi: int, step: int = 1) -> list[int]:
    """Powers of two from `lo` to `hi` inclusive, every `step`-th exponent.

    Raises:
      ValueError: lo or hi not a power of two, or hi < lo.
    """
    if lo <= 0 or hi < lo or lo & (lo - 1) or hi & (hi - 1):
        raise ValueError(f"log2_grid needs powers of two 0 < lo <= hi, got lo={lo}, hi={hi}")
    return [1 << e for e in range(lo.bit_length() - 1, hi.bit_length(), step)]


def _normal(rng: np.random.Generator, shape: tuple[int, ...], dtype: str, sharding=None):
    x = rng.standard_normal(shape, dtype=np.float32).astype(jnp.dtype(dtype))
    return jax.device_put(x, sharding) if sharding is not None else jax.device_put(x)


def gemm_points(shapes: Sequence[tuple[int, int, int]], dtypes: Sequence[str]) -> list[Point]:
    """GEMM [m, k] @ [k, n] in `dtype` with an FP32 output (the accumulator), per shape and dtype.

    flops = 2·m·n·k; bytes = (m·k + k·n)·itemsize + m·n·4. Kernel name `GEMM_FP32_OUT`. The output
    stays FP32 because XLA:CPU does not fuse a cast into its GEMM: a bfloat16 output is a second
    kernel that reads and writes the [m, n] product again (measured here: 1.1-1.8× the time of
    the GEMM alone, most at small k), traffic a GEMM's roofline does not have.
    """
    points = []
    for dtype in dtypes:
        size = itemsize(dtype)
        for m, n, k in shapes:
            def fn(a, b):
                return jnp.matmul(a, b, preferred_element_type=jnp.float32)

            nbytes = (m * k + k * n) * size + m * n * 4
            points.append(Point(
                fn=fn,
                make_inputs=lambda rng, m=m, n=n, k=k, d=dtype: (_normal(rng, (m, k), d), _normal(rng, (k, n), d)),
                footprint_bytes=nbytes,
                fields=dict(op="gemm", kernel=GEMM_FP32_OUT, dtype=dtype, m=m, n=n, k=k, bytes=nbytes,
                            flops=2 * m * n * k),
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
    b, h, d = q.shape
    kvh = k.shape[1]
    qg = q.reshape(b, kvh, h // kvh, d)
    s = jnp.einsum("bkgd,bksd->bkgs", qg, k, preferred_element_type=jnp.float32) * (d ** -0.5)
    p = jax.nn.softmax(s, axis=-1).astype(v.dtype)
    o = jnp.einsum("bkgs,bksd->bkgd", p, v, preferred_element_type=jnp.float32)
    return o.reshape(b, h, d).astype(q.dtype)


def decode_attention_points(configs: Sequence[tuple[int, int, int, int, int]],
                            dtypes: Sequence[str]) -> list[Point]:
    """`decode_attention` per (batch, seq, heads, kv_heads, head_dim) and dtype.

    flops = 4·batch·heads·seq·head_dim (QKᵀ and PV); bytes = (2·batch·seq·kv_heads·head_dim
    + 2·batch·heads·head_dim)·itemsize (K and V read once, q read and out written once).

    Raises:
      ValueError: kv_heads does not divide heads.
    """
    points = []
    for dtype in dtypes:
        size = itemsize(dtype)
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
    """Bandwidth kernels per element count and dtype: `x * y` and `copy(x)`.

    elementwise: bytes = 3·elements·itemsize, flops = elements; copy: bytes = 2·elements·itemsize,
    flops = 0.
    """
    points = []
    for dtype in dtypes:
        size = itemsize(dtype)
        for e in sizes:
            points.append(Point(
                fn=jnp.multiply,
                make_inputs=lambda rng, e=e, d=dtype: (_normal(rng, (e,), d), _normal(rng, (e,), d)),
                footprint_bytes=3 * e * size,
                fields=dict(op="elementwise", kernel="multiply", dtype=dtype, elements=e, bytes=3 * e * size, flops=e),
            ))
            points.append(Point(
                fn=jnp.copy,
                make_inputs=lambda rng, e=e, d=dtype: (_normal(rng, (e,), d),),
                footprint_bytes=2 * e * size,
                fields=dict(op="copy", kernel="copy", dtype=dtype, elements=e, bytes=2 * e * size, flops=0),
            ))
    return points


def fake_quantize_points(sizes: Sequence[int], formats: Sequence[str], row: int = 1024) -> list[Point]:
    """`numerics.fake_quantize(x, fmt, axis=-1)` on float32 [elements / row, row], per size and format.

    bytes = 2·elements·4 (read and write float32); flops = what XLA's `cost_analysis()` counts for
    the compiled kernel (filled in by `measure.time_points`; ~30 per element for the MX formats).

    Raises:
      ValueError: an element count that is not a multiple of `row`.
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


# Collective op → (the per-rank body under shard_map over mesh axis "x", the kernel name recorded).
_COLLECTIVES = {
    "all_reduce": (lambda x, ring: lax.psum(x, "x"), "psum"),
    "all_gather": (lambda x, ring: lax.all_gather(x, "x", tiled=True), "all_gather"),
    "reduce_scatter": (lambda x, ring: lax.psum_scatter(x, "x", scatter_dimension=0, tiled=True), "psum_scatter"),
    "all_to_all": (lambda x, ring: lax.all_to_all(x, "x", 0, 0, tiled=True), "all_to_all"),
    "send_recv": (lambda x, ring: lax.ppermute(x, "x", ring), "ppermute"),
}


def collective_points(sizes_bytes: Sequence[int], ops: Sequence[str] = COLLECTIVE_OPS,
                      devices=None) -> list[Point]:
    """Collectives over a 1-D mesh of `devices` (default all local ones) under `jax.shard_map`.

    Per rank, with L = bytes / 4 float32 elements and n devices: all_reduce psums [L];
    all_gather gathers [L / n] shards into [L]; reduce_scatter psum-scatters [L] into [L / n];
    all_to_all exchanges [L] in n chunks; send_recv ppermutes [L] one step around the ring.
    `bytes` follows the nccl-tests "size" convention (see `Measurement`); rows on CPU devices are
    marked `emulated`.

    Args:
      sizes_bytes: per-rank buffer sizes (bytes), each a multiple of 4·n.
      ops: collective op classes, a subset of `COLLECTIVE_OPS`.
      devices: the devices of the mesh (default `jax.devices()`).

    Returns:
      One `Point` per (op, size), in that order.

    Raises:
      ValueError: an unknown op, or bytes not a multiple of 4·n.

    References:
      nccl-tests doc/PERFORMANCE.md (the "size" of each collective).
    """
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    mesh = jax.sharding.Mesh(np.array(devices), ("x",), axis_types=(jax.sharding.AxisType.Auto,))
    sharding = NamedSharding(mesh, P("x"))
    ring = [(i, (i + 1) % n) for i in range(n)]
    emulated = devices[0].platform == "cpu"
    points = []
    for op in ops:
        if op not in _COLLECTIVES:
            raise ValueError(f"unknown collective op={op!r}; expected one of {COLLECTIVE_OPS}")
        body, kernel = _COLLECTIVES[op]
        fn = jax.shard_map(lambda x, body=body: body(x, ring), mesh=mesh, in_specs=P("x"), out_specs=P("x"))
        for nbytes in sizes_bytes:
            if nbytes % (4 * n):
                raise ValueError(f"bytes={nbytes} is not a multiple of 4·n_devices={4 * n}")
            global_len = nbytes // 4 * (1 if op == "all_gather" else n)
            points.append(Point(
                fn=fn,
                make_inputs=lambda rng, g=global_len: (_normal(rng, (g,), "float32", sharding),),
                footprint_bytes=3 * n * nbytes,
                fields=dict(op=op, kernel=kernel, dtype="float32", n_devices=n, bytes=nbytes, emulated=emulated),
            ))
    return points


# ----------------------------------------------------------------------------- the plan of a run


def _gemm_shapes(rng: np.random.Generator, grid: list[int], n_random: int) -> list[tuple[int, int, int]]:
    """The cubes of `grid`, then `n_random` distinct random (M, N, K) from it."""
    shapes = [(s, s, s) for s in grid]
    while len(shapes) < len(grid) + n_random:
        shape = tuple(int(v) for v in rng.choice(grid, size=3))
        if shape not in shapes:
            shapes.append(shape)
    return shapes


def _attention_configs(rng: np.random.Generator, count: int, max_kv_bytes: int, max_seq: int):
    """`count` distinct random (batch, seq, heads, kv_heads, head_dim) whose float32 K + V fit.

    Query heads per KV head are 4 or 8, the GQA groups of the model presets (Llama-3.1 8, Mixtral
    4; MLA decode is one latent head for all). Not MHA: XLA:CPU lowers a group of one to a
    matrix-vector product that streams the cache ~3× faster per byte than the packed GEMM of a
    group (measured here: 20 vs 6.7 GB/s in float32), a second kernel the one decode-attention
    roofline would have to average.
    """
    configs = []
    while len(configs) < count:
        b = int(rng.choice([1, 2, 4, 8, 16, 32]))
        s = int(rng.choice(log2_grid(256, max_seq)))
        h = int(rng.choice([8, 16, 32]))
        kvh = h // int(rng.choice([4, 8]))
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


# Elementwise operands reach 64 MiB; measure them with glibc's allocator set to reuse memory
# (`measure.MALLOC_ENV`, as `measure.run_isolated` does): otherwise XLA:CPU maps an output that
# large fresh on every call and its page faults (≈ 16 ms for 64 MiB here) are timed as bandwidth.
# Accelerators get sizes ~1000× larger so that their kernels too run longer than 1 ms.
_PLANS = {
    ("cpu", True): _Sizes((128, 2048), 20, 12, 128 << 20, 16384, (1 << 12, 1 << 24, 1),
                          tuple(log2_grid(1 << 18, 1 << 22)), (1 << 12, 1 << 16, 1 << 20, 1 << 22)),
    ("cpu", False): _Sizes((16, 4096), 60, 40, 512 << 20, 65536, (1 << 12, 1 << 24, 1),
                           (1 << 14, 1 << 16, 1 << 18, 1 << 20, 1 << 22), tuple(log2_grid(1 << 10, 1 << 26))),
    ("accelerator", True): _Sizes((512, 16384), 20, 12, 8 << 30, 131072, (1 << 16, 1 << 28, 2),
                                  (1 << 22, 1 << 24, 1 << 26), tuple(log2_grid(1 << 12, 1 << 30, 2))),
    ("accelerator", False): _Sizes((64, 32768), 60, 40, 32 << 30, 524288, (1 << 12, 1 << 30, 1),
                                   (1 << 18, 1 << 20, 1 << 22, 1 << 24, 1 << 26), tuple(log2_grid(1 << 10, 1 << 32))),
}


def plan(quick: bool = True, families: Sequence[str] = FAMILIES, seed: int = 0) -> tuple[list[Point], dict]:
    """The points of a run: log-spaced sizes per family, fewer in quick mode, larger on accelerators.

    GEMMs: the cubes of a log2 grid plus random (M, N, K) from it; decode attention: random
    configurations under a K + V budget; elementwise and copy: a log2 grid of element counts;
    fake_quantize: every `numerics.FORMAT_NAMES` format; collectives: all of `COLLECTIVE_OPS` over
    the local devices. GEMM, attention and elementwise run in float32 and bfloat16.

    Args:
      quick: the quick plan (fewer, smaller points).
      families: a subset of `FAMILIES`.
      seed: seeds the random shapes (same seed, same plan).

    Returns:
      (points, skipped): `skipped` maps a family that cannot run here to the reason (e.g.
      collectives on one device, or numerics without `fake_quantize`).

    Raises:
      ValueError: an unknown family.
    """
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
