"""Timing harness: times jitted JAX kernels on the local backend and writes a measurement file.

The kernels (`perfmodel.kernels`) are the ones the cost model costs: GEMM, decode attention,
elementwise and copy, `numerics.fake_quantize`, collectives over the local mesh. The method follows
the spirit of the MLPerf Power measurement rules (arXiv 2410.12032 §4): compile and warm-up
excluded; each point repeated until a minimum duration per round; the order of points shuffled in
every round so drift cannot pose as a size effect; per round the minimum over calls, over rounds
the median and the IQR; points whose IQR/median exceeds a threshold are flagged `noisy`, never
dropped. The file format is `perfmodel.measurements` (docs/measurements.md).

    python -m perfmodel.measure --quick --out results/measurements/cpu.csv
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence

import jax
import jaxlib
import numpy as np
from tqdm.auto import tqdm

from .cpu import cpu_model
from .kernels import FAMILIES, Point, plan
from .measurements import SCHEMA_VERSION, Measurement, MeasurementSet, read_csv, write_csv


@dataclasses.dataclass(frozen=True)
class TimingConfig:
    """How points are timed.

    Attributes:
      rounds: rounds per point; the order of points is reshuffled in every round.
      min_round_s: each round repeats a point until this much wall time has passed (≥ 1 call).
      warmup_calls: untimed calls after compilation.
      round_warmup_calls: untimed calls at the start of each round: interleaving evicts the point's
        caches (and on this CPU lets the AMX unit power down; pinned bf16 GEMMs had IQR/median up
        to 1.0 without it), so a round times the point warm, as a serving loop runs it.
      noisy_threshold: flag a point when IQR/median over rounds exceeds this.
      memory_budget_bytes: inputs + outputs held at once; points are interleaved within groups
        that fit this budget.
      seed: seeds the shuffles and the input data.

    Raises:
      ValueError: rounds < 1, warmup_calls < 0, a non-positive budget or threshold, or a negative
        min_round_s.
    """

    rounds: int = 9
    min_round_s: float = 0.05
    warmup_calls: int = 2
    round_warmup_calls: int = 1
    noisy_threshold: float = 0.1
    memory_budget_bytes: int = 1 << 30
    seed: int = 0

    def __post_init__(self):
        if self.rounds < 1 or min(self.warmup_calls, self.round_warmup_calls) < 0 or self.memory_budget_bytes <= 0:
            raise ValueError(f"bad TimingConfig {self}")
        if not (self.min_round_s >= 0 and self.noisy_threshold > 0):
            raise ValueError(f"bad TimingConfig {self}")


QUICK_TIMING = TimingConfig(rounds=7, min_round_s=0.02)


def default_timing(quick: bool) -> TimingConfig:
    """`QUICK_TIMING` or `TimingConfig()`; on an accelerator with a 16 GiB memory budget (its
    kernels are ~1000× larger)."""
    timing = QUICK_TIMING if quick else TimingConfig()
    if jax.default_backend() != "cpu":
        timing = dataclasses.replace(timing, memory_budget_bytes=16 << 30)
    return timing


def time_round(call: Callable[[], object], min_s: float,
               clock: Callable[[], float] = time.perf_counter) -> tuple[float, int]:
    """Call `call()` until `min_s` seconds have passed (at least once); return the fastest call.

    Each call is timed alone up to `jax.block_until_ready` of its result, so the time includes
    dispatch: what one launch of the kernel costs.

    Args:
      call: runs the kernel once.
      min_s: minimum duration of the round (seconds).
      clock: seconds since an arbitrary origin.

    Returns:
      (min time over the calls in seconds, number of calls).
    """
    best, calls, start = float("inf"), 0, clock()
    while True:
        t0 = clock()
        jax.block_until_ready(call())
        t1 = clock()
        best, calls = min(best, t1 - t0), calls + 1
        if t1 - start >= min_s:
            return best, calls


def summarize(round_mins: Sequence[float], calls: int, noisy_threshold: float) -> dict:
    """Median, IQR and min over the per-round minima, and the noisy flag.

    IQR = q75 − q25 (linear interpolation); noisy ⇔ IQR > noisy_threshold · median.

    Args:
      round_mins: [n_rounds] per-round minimum times (seconds).
      calls: timed calls over all rounds.
      noisy_threshold: relative IQR above which a point is flagged.

    Returns:
      The time fields of a `Measurement`: median_s, iqr_s, min_s, n_rounds, n_repeats, noisy.
    """
    t = np.asarray(round_mins, dtype=np.float64)
    q25, median, q75 = np.percentile(t, [25, 50, 75])
    iqr = float(q75 - q25)
    return dict(median_s=float(median), iqr_s=iqr, min_s=float(t.min()), n_rounds=int(t.size),
                n_repeats=int(calls), noisy=bool(iqr > noisy_threshold * median))


def _groups(points: Sequence[Point], budget: int) -> list[list[int]]:
    """Consecutive groups of point indices whose footprints sum to ≤ budget (≥ 1 point each)."""
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
    `config.rounds` rounds, each in a fresh random order, time every point with `time_round` after
    `config.round_warmup_calls` untimed calls.
    A point with `flops=None` gets the FLOPs of XLA's `cost_analysis()` of its compiled kernel.

    Args:
      points: the kernels.
      config: rounds, durations, warm-up, noise threshold, memory budget, seed.
      progress: show a tqdm bar on stderr.

    Returns:
      [len(points)] measurements, statistics from `summarize`.
    """
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
            if shuffled[i].fields.get("flops", 0) is None:  # counted by XLA (see kernels.fake_quantize_points)
                xla_flops = (compiled.cost_analysis() or {}).get("flops")
                shuffled[i] = dataclasses.replace(
                    shuffled[i], fields={**shuffled[i].fields, "flops": int(xla_flops or 0)})
            calls[i] = lambda c=compiled, a=args: c(*a)
            for _ in range(config.warmup_calls):
                jax.block_until_ready(calls[i]())
            bar.update(1)
        for _ in range(config.rounds):
            for i in rng.permutation(group):
                for _ in range(config.round_warmup_calls):
                    jax.block_until_ready(calls[i]())
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


def _affinity() -> list[int] | None:
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None


def pin_cpus(n: int) -> list[int]:
    """Restrict this process, and every thread it starts from now on, to `n` of its allowed CPUs.

    On a small shared VM the straggler of XLA:CPU's two-thread kernels makes timings bimodal: a
    1024³ f32 GEMM timed 30 times had IQR/median 0.37-0.50 on this 2-core VM's two cores and 0.01
    pinned to one. Call it before JAX starts its backend (the thread pools inherit the mask then),
    as `main` does; the fitted `cpu-local` spec then counts the pinned cores
    (`calibrate.hardware_for` reads `cpu_affinity` from the env).

    Args:
      n: cores to keep: the last n of the allowed set.

    Returns:
      The CPUs now allowed.

    Raises:
      ValueError: n < 1, more than the allowed CPUs, or an OS without CPU affinity.
    """
    allowed = _affinity()
    if allowed is None:
        raise ValueError("this OS has no CPU affinity (os.sched_setaffinity); measure without --cpus")
    if not 1 <= n <= len(allowed):
        raise ValueError(f"cpus={n} must lie in [1, {len(allowed)}] (the CPUs this process may use: {allowed})")
    os.sched_setaffinity(0, allowed[-n:])
    return _affinity()


# glibc malloc settings of the measurement children (`run_isolated`). XLA:CPU takes its outputs and
# temporaries from malloc; a request above glibc's mmap threshold (dynamic: 128 KiB at start, raised
# by what the process happened to free before, at most 32 MiB) or beyond a thread arena's 64 MiB heap
# is mapped fresh and faulted in on every call, and a freed heap top is trimmed back to the OS.
# Measured here, pinned, one device: x * y over 64 MiB 22.3 ms with 16 Ki page faults per call,
# 5.9 ms with these settings (0 faults); bf16 decode attention (batch 8, 8k tokens, 32 over 4 heads,
# d 64) 20.3 ms → 12.4 ms. A GPU runtime pools its memory (XLA's BFC allocator), so this is the
# kernel the cost model describes. Variables the caller has set are kept.
MALLOC_ENV = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_THRESHOLD_": str(1 << 32),
              "MALLOC_TRIM_THRESHOLD_": str(1 << 34)}


def _load_avg() -> list[float] | None:
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def environment() -> dict:
    """What a measurement depends on, for the file's env line (docs/measurements.md).

    Returns:
      JAX/jaxlib/numpy/Python versions, platform, backend, device kind and count, CPU model and
      count, git SHA and whether perfmodel/ has uncommitted changes, UTC time, load average, the
      glibc `MALLOC_*` variables (`MALLOC_ENV`).
    """
    devices = jax.devices()
    return dict(
        schema=SCHEMA_VERSION,
        created_utc=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        jax=jax.__version__, jaxlib=jaxlib.__version__, numpy=np.__version__,
        python=platform.python_version(), platform=platform.platform(),
        backend=jax.default_backend(), device_kind=devices[0].device_kind, device_count=len(devices),
        cpu_model=cpu_model(), cpu_count=os.cpu_count(), cpu_affinity=_affinity(),
        git_sha=_git("rev-parse", "HEAD"), git_dirty=bool(_git("status", "--porcelain", "--", "perfmodel")),
        load_avg=_load_avg(), malloc_env={k: v for k, v in sorted(os.environ.items()) if k.startswith("MALLOC_")},
    )


# ----------------------------------------------------------------------------- run and CLI


def run(quick: bool = True, families: Sequence[str] = FAMILIES, timing: TimingConfig | None = None,
        progress: bool = True) -> MeasurementSet:
    """Measure this machine: `kernels.plan` the points, `time_points` them, record the environment.

    Args:
      quick: the quick plan and timing.
      families: a subset of `kernels.FAMILIES`.
      timing: default `default_timing(quick)`.
      progress: show a progress bar.

    Returns:
      A `MeasurementSet` whose env holds `environment()`, the load average at the end, the timing
      config, the families, the skipped families with the reason, and the wall time.

    Raises:
      ValueError: an unknown family.
    """
    timing = default_timing(quick) if timing is None else timing
    env = environment()
    points, skipped = plan(quick, families, timing.seed)
    start = time.perf_counter()
    rows = time_points(points, timing, progress)
    env.update(
        quick=quick, families=list(families), skipped=skipped, timing=dataclasses.asdict(timing),
        wall_s=round(time.perf_counter() - start, 3), load_avg_end=_load_avg(),
    )
    return MeasurementSet(tuple(rows), env)


def run_isolated(quick: bool = True, families: Sequence[str] = FAMILIES, timing: TimingConfig | None = None,
                 cpus: int = 1, cpu_devices: int = 8, progress: bool = True) -> MeasurementSet:
    """`run` in fresh Python processes pinned to `cpus` cores (`pin_cpus`), for a CPU backend.

    The caller's JAX has already started its thread pools, so pinning has to happen in a new
    process before its JAX starts: this runs `python -m perfmodel.measure --cpus N` and reads the
    file it writes. The one-device kernels run in a child with one CPU device, the collectives in a
    second child with `cpu_devices` emulated devices: an 8-device CPU client slows and scatters
    one-device kernels (measured here, pinned: bf16 GEMMs up to 1.6× slower, their run-to-run
    difference of medians 14% instead of 4%). Both children run with glibc's allocator set to keep
    and reuse freed memory (`MALLOC_ENV`), as a GPU runtime's pool does.

    Args:
      quick, families, timing, progress: as in `run` (timing default `default_timing(quick)`).
      cpus: cores to pin the measurement to.
      cpu_devices: emulated CPU devices of the collectives' child, and the env's `device_count`
        (the mesh the fitted `cpu-local` spec describes).

    Returns:
      The `MeasurementSet` of both children: env of the first, with `device_count` = cpu_devices,
      `devices_per_family`, the families and skips of both, and the summed wall time.

    Raises:
      ValueError: no families, or a `timing` field the command line does not carry (warm-ups, noise
        threshold, memory budget) that differs from the child's default.
      RuntimeError: a child failed (e.g. a bad `cpus`), naming its exit status and, without a
        progress bar, the end of its stderr (with one, its stderr is this process's).
    """
    base = default_timing(quick)
    timing = base if timing is None else timing
    fixed = [f"{k}={getattr(timing, k)!r}" for k in ("warmup_calls", "round_warmup_calls", "noisy_threshold",
                                                      "memory_budget_bytes") if getattr(timing, k) != getattr(base, k)]
    if fixed:
        raise ValueError(f"run_isolated passes rounds, min_round_s and seed to the child; {', '.join(fixed)} "
                         "would be dropped: measure in this process (`run`) instead")
    if not families:
        raise ValueError("families is empty; expected a subset of kernels.FAMILIES")
    kernels_only = [f for f in families if f != "collectives"]
    parts = ([(kernels_only, 1)] if kernels_only else []) + (
        [(["collectives"], cpu_devices)] if "collectives" in families else [])
    sets = [_run_child(quick, fams, timing, cpus, devices, progress) for fams, devices in parts]
    env = dict(sets[0].env)
    env.update(device_count=cpu_devices, families=list(families),
               devices_per_family={f: devices for fams, devices in parts for f in fams},
               skipped={k: v for s in sets for k, v in s.env["skipped"].items()},
               wall_s=round(sum(s.env["wall_s"] for s in sets), 3), load_avg_end=sets[-1].env["load_avg_end"])
    return MeasurementSet(tuple(r for s in sets for r in s.rows), env)


def _run_child(quick: bool, families: Sequence[str], timing: TimingConfig, cpus: int, cpu_devices: int,
               progress: bool) -> MeasurementSet:
    with tempfile.TemporaryDirectory(prefix="paretolab-measure-") as tmp:
        out = pathlib.Path(tmp) / "measurements.csv"
        cmd = [sys.executable, "-m", "perfmodel.measure", "--out", str(out), "--cpus", str(cpus),
               "--cpu-devices", str(cpu_devices), "--families", *families, "--rounds", str(timing.rounds),
               "--min-round-s", repr(timing.min_round_s), "--seed", str(timing.seed)]
        cmd += ["--quick"] if quick else []
        cmd += [] if progress else ["--no-progress"]
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=None if progress else subprocess.PIPE, text=True,
                              env={**MALLOC_ENV, **os.environ})
        if proc.returncode != 0:
            tail = (proc.stderr or "")[-2000:]
            raise RuntimeError(f"measurement process {' '.join(cmd)} exited with {proc.returncode}: {tail}")
        return read_csv(out)


def measure_here(quick: bool = True, families: Sequence[str] = FAMILIES, timing: TimingConfig | None = None,
                 cpus: int = 1, cpu_devices: int = 8, progress: bool = True) -> MeasurementSet:
    """Measure this machine the steadiest way: on a CPU backend pinned to `cpus` cores in a child
    process (`run_isolated`); on an accelerator, or with cpus=0, in this process (`run`).

    Args: as in `run_isolated`.

    Returns:
      The `MeasurementSet`.
    """
    if cpus and jax.default_backend() == "cpu":
        return run_isolated(quick, families, timing, cpus, cpu_devices, progress)
    return run(quick, families, timing, progress)


def main(argv: Sequence[str] | None = None) -> pathlib.Path:
    """`python -m perfmodel.measure --out FILE [--quick]`: measure this machine, write the file."""
    parser = argparse.ArgumentParser(prog="python -m perfmodel.measure", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="measurement file to write (CSV, docs/measurements.md)")
    parser.add_argument("--quick", action="store_true", help="fewer, smaller points (about a minute on 2 quiet cores)")
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    parser.add_argument("--cpu-devices", type=int, default=8,
                        help="emulated CPU devices for collectives when the backend is CPU (default 8)")
    parser.add_argument("--rounds", type=int, help="rounds per point (default 7 quick, 9 full)")
    parser.add_argument("--min-round-s", type=float, help="minimum duration of a round (s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cpus", type=int, help="pin the process to this many cores before JAX starts "
                        "(steadier CPU timings; see pin_cpus)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.cpus is not None:
        pin_cpus(args.cpus)
    jax.config.update("jax_num_cpu_devices", args.cpu_devices)
    overrides = {k: v for k, v in (("rounds", args.rounds), ("min_round_s", args.min_round_s)) if v is not None}
    timing = dataclasses.replace(default_timing(args.quick), seed=args.seed, **overrides)
    if jax.default_backend() == "cpu" and not MALLOC_ENV.keys() & os.environ.keys():
        print("note: no MALLOC_* variable is set, so XLA:CPU maps large outputs fresh on every call and their "
              f"page faults are timed; set {' '.join(f'{k}={v}' for k, v in MALLOC_ENV.items())} "
              "(perfmodel.measure.run_isolated does)", file=sys.stderr)
    mset = run(args.quick, args.families, timing, progress=not args.no_progress)
    path = write_csv(args.out, mset)
    noisy = sum(r.noisy for r in mset.rows)
    print(f"wrote {len(mset)} points ({noisy} noisy) to {path} in {mset.env['wall_s']:.1f} s; "
          f"skipped: {mset.env['skipped'] or 'none'}")
    return path


if __name__ == "__main__":
    main()
