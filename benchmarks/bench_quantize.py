"""fake_quantize throughput per format next to a device copy of the same 64 MiB float32 tensor.

    python benchmarks/bench_quantize.py [--mib 64] [--rounds 7] [--formats mxfp4_e2m1,nvfp4]

Throughput = tensor bytes / time (a copy reads and writes the tensor once each; fake_quantize reads
it twice, once for the block maxima and once to quantize, and writes the result once, so a purely
memory-bound fake_quantize would reach 2/3 of copy). The baseline is the faster of XLA's copy and a
streaming x·2 loop, measured in the same run. Method (NOTES.md "Timing"): compile and warm up
first; in each round every kernel runs `--calls` times in a shuffled order and keeps its minimum; the
figure is the median over rounds, so drift between rounds cannot favour one kernel. The ratio
fake_quantize / copy is measured side by side in one process. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import numerics


def _time_once(fn, x) -> float:
    t0 = time.perf_counter()
    fn(x).block_until_ready()
    return time.perf_counter() - t0


def measure(kernels: dict, x, rounds: int, calls: int, seed: int = 0) -> dict[str, float]:
    """Median over rounds of the per-round minimum time (s) of each kernel, interleaved."""
    for fn in kernels.values():  # compile and warm up
        fn(x).block_until_ready()
        fn(x).block_until_ready()
    rng = random.Random(seed)
    per_round: dict[str, list[float]] = {name: [] for name in kernels}
    for _ in range(rounds):
        order = list(kernels)
        rng.shuffle(order)
        for name in order:
            per_round[name].append(min(_time_once(kernels[name], x) for _ in range(calls)))
    return {name: statistics.median(ts) for name, ts in per_round.items()}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=64, help="tensor size in MiB of float32")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=3, help="calls per kernel per round (min taken)")
    parser.add_argument("--formats", default=",".join(f for f in numerics.FORMAT_NAMES if f != "fp32"))
    args = parser.parse_args(argv)
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    for f in formats:
        numerics.get_format(f)  # ValueError naming an unknown format
    n = args.mib * 2**20 // 4
    cols = 4096 if n % 4096 == 0 else 32
    if n % cols:
        raise ValueError(f"--mib={args.mib} does not give a whole number of {cols}-wide rows")
    x = jax.random.normal(jax.random.key(0), (n // cols, cols), jnp.float32)
    nbytes = x.size * x.dtype.itemsize

    # Two copies: XLA's `copy` op, and a streaming elementwise loop (x·2) that XLA CPU runs on the
    # same thread partitions as fake_quantize's fusions. The faster one is the baseline.
    kernels = {"copy": jax.jit(jnp.copy), "stream_x2": jax.jit(lambda v: v * 2)}
    for f in formats:
        kernels[f] = jax.jit(lambda v, f=f: numerics.fake_quantize(v, f))
    times = measure(kernels, x, args.rounds, args.calls)

    gbs = {name: nbytes / t / 1e9 for name, t in times.items()}
    base = max(("copy", "stream_x2"), key=lambda k: gbs[k])
    print(f"backend={jax.default_backend()} devices={jax.device_count()} tensor={tuple(x.shape)} "
          f"float32 = {nbytes / 2**20:.0f} MiB; rounds={args.rounds} calls={args.calls}; baseline={base}")
    print(f"{'kernel':<12} {'time ms':>9} {'GB/s':>8} {'vs base':>8}")
    for name, t in times.items():
        print(f"{name:<12} {t * 1e3:9.2f} {gbs[name]:8.2f} {gbs[name] / gbs[base]:8.3f}")
    ratios = {f: gbs[f] / gbs[base] for f in formats}
    summary = {
        "benchmark": "bench_quantize",
        "tensor_mib": args.mib,
        "copy_gb_s": round(gbs["copy"], 3),
        "stream_x2_gb_s": round(gbs["stream_x2"], 3),
        "baseline": base,
        "fake_quantize_gb_s": {f: round(gbs[f], 3) for f in formats},
        "ratio_vs_baseline": {f: round(r, 3) for f, r in ratios.items()},
        "min_ratio": round(min(ratios.values()), 3) if ratios else None,
        "target_ratio": 0.25,
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
