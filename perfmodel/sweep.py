"""Exhaustive sweeps: enumerate discrete layouts, evaluate them vectorized in chunks, classify.

    enumerate_layouts(model, *, max_gpus, batches, ...) -> (LayoutArrays of numpy, families)
    evaluate(fn, lay, *, chunk=16384, progress=False) -> pytree of numpy arrays
    decode_sweep(model, hw, params, lay, seq_len, **kw) -> dict of numpy arrays
    FAMILIES, family names per layout

`evaluate` jits `vmap(fn)` once and feeds it the design points in fixed-size chunks (the last one
padded) from one thread per core: a chunk's intermediates stay in cache and its memory is bounded,
whatever the number of points (benchmarks/bench_sweep.py compares it with one vmap over all).

Layout families (Helix, arXiv 2507.07120 §4 baselines):
    "tp"      KVP = 1, dp_attn = 1: attention TP over TPA = N (KV duplicated when N > K), FFN TP / TP×EP
    "dp_ep"   KVP = 1, dp_attn > 1: data-parallel attention, EP (or TP) FFN
    "medha"   KVP > 1 with the FFN on the TPA GPUs only (tpf·ep = TPA < N), dense models
    "helix"   KVP > 1 with the FFN on all N GPUs (tpf·ep = N)
PP > 1 is allowed in every family (column `pp`).
"""

from __future__ import annotations

import concurrent.futures
import itertools
import math
import os
import threading
import weakref
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .memory import fits
from .serving import pareto_mask, replica_gpus
from .specs import HardwareSpec, ModelSpec
from .step import LayoutArrays, decode_step

FAMILIES = ("tp", "dp_ep", "medha", "helix")


def _powers_of_two(limit: int) -> list[int]:
    return [1 << i for i in range(int(math.log2(limit)) + 1)]


def _divisors_pow2(n: int) -> list[int]:
    return [d for d in _powers_of_two(n) if n % d == 0]


def enumerate_layouts(model: ModelSpec, *, max_gpus: int, batches: Sequence[int],
                      pp_options: Sequence[int] = (1,), microbatch_modes: Sequence[str] = ("none", "per_request"),
                      hopb_options: Sequence[float] = (1.0,), bits: tuple[float, float, float, float] = (16, 16, 16, 16),
                      families: Sequence[str] = FAMILIES, uneven_pp: bool = True):
    """Every valid discrete decode layout of `model` on up to `max_gpus` GPUs (powers of two).

    Attention: N = dp_attn·kvp·tpa with TPA dividing both the query and the KV heads, or (plain TP,
    kvp = dp_attn = 1) a multiple of the KV heads dividing the query heads. FFN: tpf·ep = N with EP
    dividing the experts (MoE) and TPF the FFN width; "medha" keeps tpf = tpa (dense only).

    Args:
      model: the model.
      max_gpus: bound on N·pp.
      batches: batch sizes per replica (uneven splits over pipeline micro-batches and dp_attn
        groups are allowed: the largest one sets the time; B < dp_attn is skipped).
      pp_options: pipeline depths; with `uneven_pp` stages may hold ⌈L/pp⌉ and ⌊L/pp⌋ layers.
      microbatch_modes: "none" (1), "per_request" (HOP-B over every request of a group pass),
        "pow2" (every power of two dividing that count); the last two only with KVP > 1.
      hopb_options: 1.0 (overlap) and/or 0.0 (the same micro-batches run sequentially).
      bits: (weight, kv, act, comm) bits per element.
      families: which of `FAMILIES` to keep.

    Returns:
      (LayoutArrays of float32 numpy arrays [n], family names [n] as a numpy str array).

    Raises:
      ValueError: an unknown family or microbatch mode, max_gpus < 1, no batch.
    """
    bad = sorted(set(families) - set(FAMILIES))
    if bad:
        raise ValueError(f"unknown families {bad}; valid: {FAMILIES}")
    bad = sorted(set(microbatch_modes) - {"none", "per_request", "pow2"})
    if bad:
        raise ValueError(f"unknown microbatch_modes {bad}; valid: none, per_request, pow2")
    if max_gpus < 1 or not batches:
        raise ValueError(f"max_gpus={max_gpus} must be ≥ 1 and batches={list(batches)} non-empty")
    q, k = model.n_heads, model.n_kv_heads
    rows, fams = [], []
    for n in _powers_of_two(max_gpus):
        attn = []
        for tpa in _divisors_pow2(n):
            if q % tpa:
                continue
            if k % tpa == 0:
                for kvp in _divisors_pow2(n // tpa):
                    attn.append((n // (tpa * kvp), kvp, tpa))
            elif tpa % k == 0 and tpa == n:
                attn.append((1, 1, tpa))
        for (d, kvp, tpa), pp in itertools.product(attn, pp_options):
            if n * pp > max_gpus or (not uneven_pp and model.n_layers % pp):
                continue
            ffns = []
            for ep in _divisors_pow2(n):
                tpf = n // ep
                if model.is_moe and (model.n_experts % ep or model.expert_ffn % tpf):
                    continue
                if not model.is_moe and ep > 1:
                    continue
                if model.n_layers > model.n_moe_layers and model.ffn % tpf:
                    continue
                ffns.append((tpf, ep, "helix" if kvp > 1 else ("tp" if d == 1 else "dp_ep")))
            if kvp > 1 and not model.is_moe and tpa < n:
                ffns.append((tpa, 1, "medha"))
            for (tpf, ep, fam), b in itertools.product(ffns, batches):
                in_flight = min(pp, b)  # pipeline micro-batches (layer.pipeline_microbatches)
                if fam not in families or b < d:
                    continue
                per_group = -(-b // (in_flight * d))  # requests of the largest group per pipeline pass
                mbs = set()
                if "none" in microbatch_modes:
                    mbs.add(1)
                if kvp > 1 and "per_request" in microbatch_modes:
                    mbs.add(per_group)  # HOP-B overlaps the KVP all-to-all; nothing to do without one
                if kvp > 1 and "pow2" in microbatch_modes:
                    mbs.update(m for m in _divisors_pow2(per_group) if per_group % m == 0)
                for mb, hopb in itertools.product(sorted(mbs), hopb_options):
                    if mb == 1 and hopb == 0.0 and len(hopb_options) > 1:
                        continue  # identical to hopb = 1 with one micro-batch
                    rows.append((tpa, kvp, d, tpf, ep, pp, 1, b, mb, 0, hopb, *bits))
                    fams.append(fam)
    if not rows:
        raise ValueError(f"no valid layout of {model.name} on ≤ {max_gpus} GPUs with batches {list(batches)}")
    arr = np.asarray(rows, np.float32).T
    return LayoutArrays(*arr), np.asarray(fams)


_RUNNERS: "weakref.WeakKeyDictionary[Callable, dict]" = weakref.WeakKeyDictionary()
# Vector registers of the widest kind the CPU has (AVX-512: 16 floats; XLA CPU prefers 8 by
# default, and a sweep is nothing but long elementwise chains). A preference, not a requirement:
# CPUs without AVX-512 keep their widest; results do not depend on it.
_CPU_OPTIONS = {"xla_cpu_prefer_vector_width": 512}


def _runner(fn: Callable, shapes: tuple) -> Callable:
    """jit of vmap(fn) over a block [fields, chunk]: the rows are the LayoutArrays fields of
    `shapes` (per point), the points are the last axis. Cached per function and field shapes, so
    repeated sweeps never recompile."""
    runs = _RUNNERS.setdefault(fn, {})
    if shapes not in runs:
        sizes = [math.prod(s) for s in shapes]
        bounds = np.cumsum([0, *sizes]).tolist()

        def block_fn(block):
            cols = [block[a:b].reshape(*shape, block.shape[-1]) for a, b, shape in zip(bounds, bounds[1:], shapes)]
            return jax.vmap(lambda *c: fn(LayoutArrays(*c)), in_axes=-1)(*cols)

        runs[shapes] = jax.jit(block_fn, compiler_options=_CPU_OPTIONS if jax.default_backend() == "cpu" else None)
    return runs[shapes]


def evaluate(fn: Callable, lay: LayoutArrays, *, chunk: int = 1 << 14, progress: bool = False,
             desc: str = "sweep", workers: int | None = None):
    """Evaluate `fn(LayoutArrays) -> pytree of arrays` over many design points.

    `fn` is vmapped and jitted once (cached per function object and field shapes); the points go
    through it in fixed-size chunks (the last one padded) on `workers` threads, written into
    preallocated outputs. Small chunks keep the model's intermediates in cache. A chunk travels as
    one [fields, chunk] block, copied into a buffer each thread reuses: one argument per call
    instead of one per field, and every field read at unit stride by the compiled loops (a
    [chunk, 2] prefill/decode pair read as x[:, 0] is strided, about a third slower).
    benchmarks/bench_sweep.py measures this against one vmap over all points.

    Args:
      fn: a jnp function of one design point (it is vmapped).
      lay: LayoutArrays of [n, ...] numpy or jax arrays (e.g. [n, 2] for prefill/decode pairs).
      chunk: points per jitted call.
      progress: show a tqdm bar.
      workers: threads (default: the CPU count).

    Returns:
      the pytree of numpy arrays of length n.

    Raises:
      ValueError: fields of different lengths, or chunk < 1.
    """
    if chunk < 1:
        raise ValueError(f"chunk={chunk} must be positive")
    leaves = [np.asarray(x, np.float32) for x in lay]
    n = leaves[0].shape[0]
    if any(x.ndim < 1 or x.shape[0] != n for x in leaves):
        raise ValueError(f"LayoutArrays fields must all be [n, ...]; got shapes {[x.shape for x in leaves]}")
    chunk = min(chunk, n)
    shapes = tuple(x.shape[1:] for x in leaves)
    run = _runner(fn, shapes)
    rows = [x.reshape(n, -1) for x in leaves]  # [n, size] views (a copy only for odd strides)
    bounds = np.cumsum([0, *(r.shape[1] for r in rows)]).tolist()
    buffers = threading.local()

    def block(start):
        """The chunk at `start` as [fields, chunk] in this thread's buffer, padded with its last point."""
        buf = getattr(buffers, "block", None)
        if buf is None:  # 64-byte aligned: jax then reads it in place instead of copying it
            raw = np.empty(bounds[-1] * chunk + 16, np.float32)
            skip = (-raw.ctypes.data % 64) // 4
            buf = buffers.block = raw[skip:skip + bounds[-1] * chunk].reshape(bounds[-1], chunk)
        keep = min(chunk, n - start)
        for r, a, b in zip(rows, bounds, bounds[1:]):
            np.copyto(buf[a:b, :keep], r[start:start + keep].T)
            if keep < chunk:
                buf[a:b, keep:] = r[start + keep - 1][:, None]
        return buf, keep

    out_leaves, treedef = jax.tree.flatten(jax.eval_shape(run, block(0)[0]))  # [chunk, ...] per leaf
    outs = [np.empty((n, *o.shape[1:]), o.dtype) for o in out_leaves]

    def one(start):
        buf, keep = block(start)
        for dst, y in zip(outs, jax.tree.leaves(run(buf))):
            dst[start:start + keep] = np.asarray(y)[:keep]  # waits for the call: buf is free again

    starts = list(range(0, n, chunk))
    one(starts[0])  # compile once, before the threads start
    with concurrent.futures.ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
        done = pool.map(one, starts[1:])
        if progress:
            from tqdm import tqdm

            done = tqdm(done, total=len(starts), initial=1, desc=desc, unit="chunk")
        for _ in done:
            pass
    return jax.tree.unflatten(treedef, outs)


def decode_sweep(model: ModelSpec, hw: HardwareSpec, params, lay: LayoutArrays, seq_len, **kw):
    """Decode metrics of every design point: TTL, tokens/s/user, tokens/s/GPU, memory fit.

    Returns:
      dict of numpy arrays: ttl_s, tokens_per_s_per_user, tokens_per_s_per_gpu, fits, mem_ratio,
      comm_s (exposed communication per step).
    """
    def fn(l):
        c = decode_step(model, hw, params, l, seq_len)
        ok, ratio = fits(model, hw, l, seq_len)
        return dict(ttl_s=c.time_s, tokens_per_s_per_user=1.0 / c.time_s,
                    tokens_per_s_per_gpu=l.batch / (c.time_s * replica_gpus(l)), fits=ok,
                    mem_ratio=ratio, comm_s=c.comm_s)

    return evaluate(fn, lay, **kw)


def frontier(x, y, valid):
    """numpy mask of the Pareto frontier (both maximized) among `valid` points."""
    return np.asarray(pareto_mask(jnp.asarray(x), jnp.asarray(y), jnp.asarray(valid)))
