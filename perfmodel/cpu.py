"""This CPU host as a `HardwareSpec`: the "datasheet" an uncalibrated CPU baseline can use.

A VM publishes no datasheet. The compute peak follows from the core count, the clock and the ISA
(/proc/cpuinfo); the memory bandwidth is measured (`stream_copy_bandwidth`); the emulated devices
of the CPU mesh share that memory.
"""

from __future__ import annotations

import os
import pathlib
import platform
from collections.abc import Sequence

from .measurements import Measurement, MeasurementSet, rows_of
from .specs import HardwareSpec, LinkLevel

# source: Intel 64 and IA-32 Architectures Optimization Reference Manual: two 512-bit FMA units per
# core on server cores with AVX-512 (16 float32 lanes · 2 flops · 2 ports); AVX2: 8 lanes · 2 · 2.
_FP32_FLOPS_PER_CYCLE = {"avx512f": 64, "avx2": 32}
# source: Intel, 4th Gen Xeon Scalable (Sapphire Rapids) AMX: 1024 BF16 operations per cycle per core.
_AMX_BF16_FLOPS_PER_CYCLE = 1024
# source: Intel ARK, Xeon Platinum 8480+: TDP 350 W for 56 cores (6.25 W per core); idle is an
# estimate (30% of TDP). The VM's power cannot be measured here; energy on it is not calibrated.
_WATTS_PER_CORE = 350.0 / 56
# source: NOTES.md (measured here): emulated CPU collectives cost ~100–400 µs per call. A prior.
_EMULATED_COLLECTIVE_STEP_S = 100e-6


def proc_cpuinfo() -> dict[str, str]:
    """The first value of every key of /proc/cpuinfo ("model name", "cpu MHz", "flags", ...); {} if unreadable."""
    try:
        text = pathlib.Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    info: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            info.setdefault(key.strip(), value.strip())
    return info


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo, else what `platform` reports)."""
    return proc_cpuinfo().get("model name") or platform.processor() or platform.machine()


def stream_copy_bandwidth(measurements: MeasurementSet | Sequence[Measurement]) -> float:
    """Best copy bandwidth in the measurements: max over `copy` rows of bytes / median_s.

    Args:
      measurements: rows, of which the `copy` rows count.

    Returns:
      Bandwidth in bytes/s.

    Raises:
      ValueError: no copy rows.
    """
    bw = [r.bytes / r.median_s for r in rows_of(measurements) if r.op == "copy" and r.bytes]
    if not bw:
        raise ValueError("no copy rows to derive a memory bandwidth from; pass memory_bandwidth_bytes_per_s")
    return max(bw)


def cpu_local_spec(memory_bandwidth_bytes_per_s: float, *, n_devices: int = 8, cores: int | None = None,
                   clock_hz: float | None = None, flags: set[str] | None = None,
                   memory_bytes: float | None = None) -> HardwareSpec:
    """A `HardwareSpec` for this CPU host, as a "datasheet" the uncalibrated baseline can use.

    peak float32 = cores · clock · (64 flop/cycle with AVX-512, 32 with AVX2; two FMA ports);
    peak bfloat16 = cores · clock · 1024 with AMX-BF16 (XLA:CPU reaches it through oneDNN), else
    the float32 peak. clock is /proc/cpuinfo's "cpu MHz" (the base clock a VM reports; turbo is
    not visible). A VM publishes no memory datasheet, so the memory bandwidth is passed in: the
    calibration CLI passes `stream_copy_bandwidth` of the measurements, i.e. MEASURED, which makes
    the baseline stronger on memory-bound kernels than a true datasheet would. The emulated devices
    share that memory: every link level gets that bandwidth and a 100 µs α prior (NOTES.md).

    Args:
      memory_bandwidth_bytes_per_s: memory bandwidth to declare (bytes/s).
      n_devices: emulated devices, the scale-up domain size.
      cores, clock_hz, flags, memory_bytes: override what /proc and os report (tests); clock in Hz,
        memory in bytes.

    Returns:
      HardwareSpec named "cpu-local".

    Raises:
      ValueError: no usable clock or ISA (not x86 with AVX2/AVX-512), or a bad bandwidth.

    References:
      Intel 64 and IA-32 Architectures Optimization Reference Manual (FMA ports, AVX-512, AMX).
    """
    info = proc_cpuinfo()
    cores = cores or os.cpu_count() or 1
    clock_hz = clock_hz or float(info.get("cpu MHz", 0.0)) * 1e6
    flags = set(info.get("flags", "").split()) if flags is None else flags
    per_cycle = next((v for k, v in _FP32_FLOPS_PER_CYCLE.items() if k in flags), 0)
    if not clock_hz or not per_cycle:
        raise ValueError(f"cannot derive a CPU peak: clock_hz={clock_hz}, AVX2/AVX-512 in flags={bool(per_cycle)}; "
                         "pass clock_hz= and flags=")
    if memory_bytes is None:
        memory_bytes = float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    fp32 = cores * clock_hz * per_cycle
    bf16 = cores * clock_hz * _AMX_BF16_FLOPS_PER_CYCLE if "amx_bf16" in flags else fp32
    bw = float(memory_bandwidth_bytes_per_s)
    peak_w = cores * _WATTS_PER_CORE
    return HardwareSpec(
        name="cpu-local", flops_fp4=0.0, flops_fp8=0.0, flops_bf16=float(bf16), flops_fp32=float(fp32),
        hbm_bandwidth_bytes_per_s=bw, hbm_capacity_bytes=float(memory_bytes),
        idle_power_w=0.3 * peak_w, peak_power_w=peak_w,
        links=(LinkLevel("die-to-die", 1, bw, 0.0),
               LinkLevel("scale-up", n_devices, bw, _EMULATED_COLLECTIVE_STEP_S),
               LinkLevel("scale-out", n_devices, bw, _EMULATED_COLLECTIVE_STEP_S)),
    )
