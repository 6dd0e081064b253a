"""Search the layout space: exhaustive enumeration, and gradient descent over a continuous relaxation.

    Case(model, hw, workload, space=SearchSpace(...), params=None)
    exhaustive_search(case, *, progress=False) -> SearchResult       exact optimum + Pareto frontier
    gradient_search(case, *, starts=24, steps=100, seed=0) -> SearchResult
    sla_sweep(case, ttl_limits_s, **kw) -> list[SearchResult]       the frontier from warm starts
    phase_metrics(model, hw, params, phase, lay, isl, osl) -> PhaseMetrics
    solve_pools(r_p, g_p, r_d, g_d, osl, max_total_gpus) -> (tokens/s/GPU, n_p, n_d)

Designs. A design is co-located (one layout L, chunked prefill piggybacked on decode), or
disaggregated: a prefill layout L_p, a decode layout L_d and integer replica counts n_p, n_d. A
replica of L has g = N·pp GPUs (N = dp_attn·kvp·tpa = tpf·ep, `sweep.enumerate_layouts` lists the
valid ones: powers of two dividing heads, experts and FFN widths, KV duplication only under plain
TP). Per replica, requests/s are r_p = B_p / period_p (prefill) and r_d = B_d / (TTL·OSL) (decode).

    tokens/s/GPU = OSL · min(n_p·r_p, n_d·r_d) / (n_p·g_p + n_d·g_d),   n_p·g_p + n_d·g_d ≤ G
    co-located:    tokens/s/GPU = B / (TTL · g)

subject to TTFT ≤ T_ft (prefill pool: max(t_prefill, t_kv) + t_kv/L as in `serving.disaggregated`),
TTL ≤ T_l, and each pool's HBM footprint ≤ capacity. `solve_pools` finds the best integers exactly:
for fixed n_p the value rises in n_d up to n_p·r_p/r_d and falls after, so n_d is its floor or ceil.

Exhaustive search. Every valid discrete design is costed: prefill layouts × batches × chunk sizes
(|P|), decode layouts × batches × HOP-B micro-batching (|D|) and the same layouts co-located (|C|),
vectorized in chunks (`sweep.evaluate`). Given replica sizes the system value rises with r_p and
r_d, so only the best feasible prefill and decode replica of each size can be optimal: the
optimum is exact over every (L_p, L_d, n_p, n_d) after |P| + |D| + |C| model evaluations. The
frontier of tokens/s/GPU against tokens/s/user (= 1/TTL) takes, for every decode layout on the
frontier of its replica size, the best system built around it.

Relaxation (gradient search): `relax` (θ → layout, penalties, the multi-start Adam optimizer).
Rounding and polish: `polish` (snapping, batch galloping, hill climb, integer pools).

Evaluations (the headline cost): the exhaustive search's |P| + |D| + |C|; for the gradient
search starts × steps per pool (one value-and-gradient evaluation of one design point counts as
one evaluation) plus every distinct discrete point evaluated while rounding and polishing.

References:
  Beyond the Buzz, arXiv 2506.05508 §3 (rate matching, integer pool sizes, Pareto under TTFT/TTL).
  Helix, arXiv 2507.07120 §4 (the decode layout space: TP, KVP × TPA, TPF × EP, PP, HOP-B).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .efficiency import EfficiencyParams, datasheet_params
from .polish import _arm_candidates, _polish, _system_value
from .polish import solve_pools as solve_pools
from .relax import N_THETA as N_THETA
from .relax import PHASES as PHASES
from .relax import PhaseMetrics as PhaseMetrics
from .relax import _optimizer
from .relax import phase_metrics as phase_metrics
from .relax import relaxed_layout as relaxed_layout
from .relax import relaxed_loss as relaxed_loss
from .relax import relaxed_terms as relaxed_terms
from .relax import smooth_hinge as smooth_hinge
from .serving import pareto_front
from .specs import HardwareSpec, ModelSpec, Workload, format_bits
from .step import LayoutArrays
from .sweep import enumerate_layouts, evaluate

MODES = ("disaggregated", "colocated")
_STRUCT = ("tpa", "kvp", "dp_attn", "tpf", "ep", "pp")


def batch_grid(max_batch: int, rel_step: float = 0.01) -> tuple[int, ...]:
    """Batches 1..max_batch: every integer while integers are ≥ rel_step apart, then a geometric
    grid of ratio 1 + rel_step (rounded). A 1% grid up to 4096 has 471 values."""
    if max_batch < 1 or not 0 < rel_step < 1:
        raise ValueError(f"batch_grid: max_batch={max_batch} must be ≥ 1 and rel_step={rel_step} in (0, 1)")
    n = int(math.ceil(math.log(max_batch) / math.log1p(rel_step))) + 1
    return tuple(sorted({int(round(b)) for b in np.geomspace(1, max_batch, max(n, 1))}))


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """The discrete design space searched (both searches use exactly this set).

    Attributes:
      max_gpus: GPUs per replica, N·pp (a power of two).
      max_total_gpus: GPUs of the whole system (both pools), G.
      decode_batches, prefill_batches: batch grids (strictly increasing positive integers).
      pp_options: pipeline depths (uneven stages allowed).
      chunks: prefill chunk sizes (0: the whole prompt; sizes ≥ ISL are the same as 0).
      modes: "disaggregated" and/or "colocated".
      weight_format, kv_format, act_format, comm_format: numerics format names.

    Raises:
      ValueError: a bad size, grid, mode or format, naming it.
    """

    max_gpus: int = 64
    max_total_gpus: int = 144
    decode_batches: tuple[int, ...] = batch_grid(4096)
    prefill_batches: tuple[int, ...] = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
    pp_options: tuple[int, ...] = (1, 2, 4, 8)
    chunks: tuple[int, ...] = (0, 2048, 8192)
    modes: tuple[str, ...] = MODES
    weight_format: str = "mxfp4_e2m1"
    kv_format: str = "mxfp8_e4m3"
    act_format: str = "mxfp8_e4m3"
    comm_format: str = "mxfp8_e4m3"

    def __post_init__(self):
        if self.max_gpus < 1 or self.max_gpus & (self.max_gpus - 1):
            raise ValueError(f"SearchSpace.max_gpus={self.max_gpus} must be a power of two")
        if self.max_total_gpus < 2:
            raise ValueError(f"SearchSpace.max_total_gpus={self.max_total_gpus} must be ≥ 2")
        for name in ("decode_batches", "prefill_batches", "pp_options"):
            v = tuple(getattr(self, name))
            if not v or any(not isinstance(b, int) or b < 1 for b in v) or list(v) != sorted(set(v)):
                raise ValueError(f"SearchSpace.{name}={v} must be strictly increasing positive integers")
        if not self.chunks or any(not isinstance(c, int) or c < 0 for c in self.chunks):
            raise ValueError(f"SearchSpace.chunks={self.chunks} must be non-negative integers")
        if not self.modes or set(self.modes) - set(MODES):
            raise ValueError(f"SearchSpace.modes={self.modes} must be a non-empty subset of {MODES}")
        for role in ("weight_format", "kv_format", "act_format", "comm_format"):
            format_bits(getattr(self, role), role=f"SearchSpace.{role}")

    @property
    def bits(self) -> tuple[float, float, float, float]:
        return tuple(format_bits(getattr(self, r)) for r in ("weight_format", "kv_format", "act_format",
                                                               "comm_format"))

    def batches(self, phase: str) -> tuple[int, ...]:
        return self.prefill_batches if phase == "prefill" else self.decode_batches

    def chunk_options(self, isl: int) -> tuple[int, ...]:
        """Distinct chunk sizes at this ISL: 0 (whole prompt) first, then descending."""
        return (0,) + tuple(sorted({c for c in self.chunks if 0 < c < isl}, reverse=True))


@dataclasses.dataclass(frozen=True)
class Case:
    """One search problem: model, hardware, workload (ISL, OSL, TTFT and TTL limits), space.

    `params` are the cost model's efficiencies (default: the datasheet roofline of `hw`).
    """

    model: ModelSpec
    hw: HardwareSpec
    workload: Workload
    space: SearchSpace = SearchSpace()
    params: EfficiencyParams | None = dataclasses.field(default=None, compare=False, hash=False)
    name: str = ""

    @property
    def efficiency(self) -> EfficiencyParams:
        return datasheet_params(self.hw) if self.params is None else self.params

    def with_ttl(self, ttl_limit_s: float) -> "Case":
        return dataclasses.replace(self, workload=dataclasses.replace(self.workload, ttl_limit_s=ttl_limit_s))


def _feasible(m, workload: Workload):
    return (m.mem_ratio <= 1.0) & (m.ttft_s <= workload.ttft_limit_s) & (m.ttl_s <= workload.ttl_limit_s)


# ------------------------------------------------------------------------------- designs, results

@dataclasses.dataclass(frozen=True)
class Design:
    """One serving configuration and its metrics.

    Attributes:
      mode: "disaggregated" or "colocated".
      decode: layout of a decode (or co-located) replica: tpa, kvp, dp_attn, tpf, ep, pp, batch,
        microbatches, family.
      prefill: layout of a prefill replica (with chunk), or None.
      n_decode, n_prefill: replicas per pool (co-located: 1 replica; any count has the same
        per-GPU metrics).
      gpus: GPUs of the whole system.
      tokens_per_s_per_gpu, tokens_per_s_per_user, ttft_s, ttl_s: its metrics.
    """

    mode: str
    decode: dict
    prefill: dict | None
    n_decode: int
    n_prefill: int
    gpus: int
    tokens_per_s_per_gpu: float
    tokens_per_s_per_user: float
    ttft_s: float
    ttl_s: float

    @property
    def alpha(self) -> float:
        """Prefill GPUs per decode GPU (0: co-located)."""
        if self.prefill is None:
            return 0.0
        return self.n_prefill * _replica(self.prefill) / (self.n_decode * _replica(self.decode))


def _replica(layout: dict) -> int:
    return layout["dp_attn"] * layout["kvp"] * layout["tpa"] * layout["pp"]


@dataclasses.dataclass
class SearchResult:
    """Result of a search: the best design under the case's SLA and what it cost.

    Attributes:
      method: "exhaustive" or "gradient".
      best: the best feasible `Design`.
      evaluations: design points the cost model evaluated (see the module docstring).
      wall_s: wall time.
      frontier: (tokens/s/user, tokens/s/GPU) of the Pareto frontier under the TTFT limit
        (exhaustive search only), sorted by tokens/s/user.
      details: breakdown (evaluations per stage, space sizes, ...).
    """

    method: str
    best: Design
    evaluations: int
    wall_s: float
    frontier: tuple[np.ndarray, np.ndarray] | None = None
    details: dict = dataclasses.field(default_factory=dict)


def _layout_dict(lay: LayoutArrays, i: int, family: str) -> dict:
    d = {k: int(round(float(np.asarray(getattr(lay, k))[i]))) for k in _STRUCT + ("batch", "microbatches", "chunk")}
    d["family"] = str(family)
    return d


def _design_colocated(lay, fam, m: PhaseMetrics, i, osl) -> Design:
    tps = float(m.rate_per_gpu[i]) * osl
    g = int(round(float(m.gpus[i])))
    return Design("colocated", _layout_dict(lay, i, fam[i]), None, 1, 0, g, tps, 1.0 / float(m.ttl_s[i]),
                  float(m.ttft_s[i]), float(m.ttl_s[i]))


def _design_disaggregated(pf, i, dc, j, n_p, n_d, tps) -> Design:
    """pf, dc: (lay, families, metrics) of the two pools; i, j: indices."""
    (lp, fp, mp), (ld, fd, md) = pf, dc
    gp, gd = int(round(float(mp.gpus[i]))), int(round(float(md.gpus[j])))
    return Design("disaggregated", _layout_dict(ld, j, fd[j]), _layout_dict(lp, i, fp[i]), int(n_d), int(n_p),
                  int(n_p) * gp + int(n_d) * gd, float(tps), 1.0 / float(md.ttl_s[j]), float(mp.ttft_s[i]),
                  float(md.ttl_s[j]))


# ------------------------------------------------------------------------------- the discrete space

def _check_fits_somewhere(case: Case) -> None:
    """A closed-form lower bound: the weights alone, spread over the largest replica."""
    m, space = case.model, case.space
    weights = m.total_params * space.bits[0] / 8.0 / space.max_gpus
    if weights > case.hw.hbm_capacity_bytes:
        raise ValueError(
            f"{m.name} fits on no layout: its weights alone need {weights / 1e9:.1f} GB per GPU on "
            f"max_gpus={space.max_gpus} GPUs ({space.weight_format}), more than the "
            f"{case.hw.hbm_capacity_bytes / 1e9:.0f} GB HBM of {case.hw.name}")


def phase_layouts(case: Case, phase: str, batches=None):
    """Every valid discrete layout of one pool (`sweep.enumerate_layouts` with the space's options).

    Prefill pools: TP and DP-attention families (no KVP), no HOP-B, times every chunk option.
    Decode and co-located pools: every family, HOP-B micro-batching off or one request each.

    Returns:
      (LayoutArrays of numpy [n], families [n]).
    """
    space, isl = case.space, case.workload.isl
    batches = list(space.batches(phase) if batches is None else batches)
    kw = dict(max_gpus=space.max_gpus, batches=batches, pp_options=space.pp_options, bits=space.bits)
    if phase == "prefill":
        lay, fam = enumerate_layouts(case.model, families=("tp", "dp_ep"), microbatch_modes=("none",), **kw)
        chunks = space.chunk_options(isl)
        n = len(fam)
        lay = LayoutArrays(*(np.tile(np.asarray(x), len(chunks)) for x in lay))
        lay = lay._replace(chunk=np.repeat(np.asarray(chunks, np.float32), n))
        return lay, np.tile(fam, len(chunks))
    return enumerate_layouts(case.model, microbatch_modes=("none", "per_request"), **kw)


class PhaseTable(NamedTuple):
    """Every layout of one pool with its metrics (numpy); they do not depend on the SLA, so one
    table serves every TTFT and TTL limit of the same model, hardware, space, ISL and OSL."""

    lay: LayoutArrays
    family: np.ndarray
    metrics: PhaseMetrics


def phase_tables(case: Case, *, progress: bool = False, phases=None) -> dict[str, PhaseTable]:
    """Cost every discrete layout of the pools the case's modes need.

    Returns:
      {phase: PhaseTable} for "prefill" and "decode" (disaggregated) and/or "colocated".
    """
    if phases is None:
        phases = (("prefill", "decode") if "disaggregated" in case.space.modes else ()) + (
            ("colocated",) if "colocated" in case.space.modes else ())
    w, params, out = case.workload, case.efficiency, {}
    for phase in phases:
        lay, fam = phase_layouts(case, phase)
        fn = functools.partial(_table_fn, case.model, case.hw, params, phase, float(w.isl), float(w.osl))
        r = evaluate(fn, lay, progress=progress, desc=f"{phase} ({len(fam):,})")
        out[phase] = PhaseTable(lay, fam, PhaseMetrics(**r))
    return out


def _table_fn(model, hw, params, phase, isl, osl, lay):
    return phase_metrics(model, hw, params, phase, lay, isl, osl)._asdict()


def _infeasible_message(case: Case, tables: dict[str, PhaseTable]) -> str:
    w = case.workload
    parts = []
    for phase, t in tables.items():
        m = t.metrics
        fit = m.mem_ratio <= 1.0
        if not fit.any():
            parts.append(f"{phase}: no layout fits in HBM (smallest footprint {m.mem_ratio.min():.2f}× "
                         f"the {case.hw.hbm_capacity_bytes / 1e9:.0f} GB of {case.hw.name})")
            continue
        if phase != "decode":
            parts.append(f"{phase}: best TTFT {m.ttft_s[fit].min():.3g} s (limit {w.ttft_limit_s:g} s)")
        if phase != "prefill":
            parts.append(f"{phase}: best TTL {m.ttl_s[fit].min():.3g} s (limit {w.ttl_limit_s:g} s)")
    return (f"no design of {case.model.name} on {case.hw.name} (ISL={w.isl}, OSL={w.osl}) meets the SLA "
            f"within {case.space.max_gpus} GPUs per replica: " + "; ".join(parts))


def best_per_size(t: PhaseTable, workload: Workload):
    """Index of the best feasible layout (max requests/s/GPU) of each replica size."""
    idx = np.flatnonzero(_feasible(t.metrics, workload))
    g = np.asarray(t.metrics.gpus)[idx]
    out = {}
    for size in np.unique(g):
        sel = idx[g == size]
        out[float(size)] = int(sel[np.argmax(np.asarray(t.metrics.rate_per_gpu)[sel])])
    return out


def exhaustive_search(case: Case, *, progress: bool = False, tables: dict | None = None) -> SearchResult:
    """Cost every discrete design of the case's space; return the optimum and the Pareto frontier.

    Args:
      case: the problem.
      progress: tqdm bars over the chunks.
      tables: precomputed `phase_tables(case)` of the same ISL and OSL (any SLA); their
        evaluations are still counted.

    Returns:
      `SearchResult` with the best design under the SLA and the frontier of tokens/s/GPU against
      tokens/s/user of every design meeting the TTFT limit.

    Raises:
      ValueError: no design fits in memory or meets the SLA (the message gives the best values).
    """
    t0 = time.perf_counter()
    _check_fits_somewhere(case)
    tables = phase_tables(case, progress=progress) if tables is None else tables
    w, G = case.workload, case.space.max_total_gpus
    osl = float(w.osl)
    cands, fx, fy = [], [], []
    if "colocated" in tables:
        t = tables["colocated"]
        m = t.metrics
        ok = _feasible(m, w) & (m.gpus <= G)
        if ok.any():
            i = int(np.argmax(np.where(ok, m.rate_per_gpu, -np.inf)))
            cands.append(_design_colocated(t.lay, t.family, m, i, osl))
        front = (m.mem_ratio <= 1.0) & (m.ttft_s <= w.ttft_limit_s) & (m.gpus <= G)
        fx.append(1.0 / m.ttl_s[front])
        fy.append(m.rate_per_gpu[front] * osl)
    if "prefill" in tables:
        tp, td = tables["prefill"], tables["decode"]
        bp = best_per_size(tp, w)
        if bp:
            ip = np.asarray(list(bp.values()))
            gp = np.asarray(tp.metrics.gpus)[ip]
            rp = np.asarray(tp.metrics.rate_per_gpu)[ip] * gp
            bd = best_per_size(td, w)
            if bd:
                jd = np.asarray(list(bd.values()))
                gd = np.asarray(td.metrics.gpus)[jd]
                rd = np.asarray(td.metrics.rate_per_gpu)[jd] * gd
                v, n_p, n_d = solve_pools(rp[:, None], gp[:, None], rd[None, :], gd[None, :], osl, G)
                a, b = np.unravel_index(int(np.argmax(v)), v.shape)
                if v[a, b] > 0:
                    cands.append(_design_disaggregated((tp.lay, tp.family, tp.metrics), ip[a],
                                                       (td.lay, td.family, td.metrics), jd[b],
                                                       n_p[a, b], n_d[a, b], v[a, b]))
            x, y = _disaggregated_frontier(td, ip, gp, rp, osl, G)
            fx.append(x)
            fy.append(y)
    n_eval = sum(len(t.family) for t in tables.values())
    if not cands:
        raise ValueError(_infeasible_message(case, tables))
    best = max(cands, key=lambda d: d.tokens_per_s_per_gpu)
    x, y = np.concatenate(fx), np.concatenate(fy)
    frontier = pareto_front(x, y, y > 0) if len(x) else (x, y)
    return SearchResult("exhaustive", best, n_eval, time.perf_counter() - t0, frontier,
                        {"evaluations": {p: len(t.family) for p, t in tables.items()}})


def _grouped_front(x, y, group, valid):
    """Indices of the points on the (x, y) Pareto frontier (both maximized) of their group."""
    idx = np.flatnonzero(valid)
    order = np.lexsort((-y[idx], -x[idx], group[idx]))  # by group, then x descending, y descending
    i, gr, ys = idx[order], group[idx][order], y[idx][order]
    start = np.r_[True, gr[1:] != gr[:-1]]
    best = np.full(len(i), -np.inf)
    run = -np.inf
    for k in range(len(i)):  # running max of y within each group
        run = -np.inf if start[k] else run
        best[k] = run
        run = max(run, ys[k])
    return i[ys > best]


def _disaggregated_frontier(td: PhaseTable, ip, gp, rp, osl, G):
    """(tokens/s/user, tokens/s/GPU) of the best system around every decode layout on the
    frontier (1/TTL, requests/s/GPU) of its replica size (given the size, the system value rises
    with the decode rate, so no other decode layout can be on the system frontier)."""
    m = td.metrics
    j = _grouped_front(1.0 / m.ttl_s, m.rate_per_gpu, m.gpus, m.mem_ratio <= 1.0)
    if not len(j) or not len(ip):
        return np.zeros(0), np.zeros(0)
    gd = m.gpus[j]
    v, _, _ = solve_pools(rp[None, :], gp[None, :], (m.rate_per_gpu[j] * gd)[:, None], gd[:, None], osl, G)
    return 1.0 / m.ttl_s[j], v.max(axis=1)


# ------------------------------------------------------------------- pools of discrete layouts

_POINT_BLOCK = 64


@functools.lru_cache(maxsize=64)
def pool_evaluator(model: ModelSpec, hw: HardwareSpec, phase: str):
    """jit(f(params, columns of a LayoutArrays, isl, osl) -> PhaseMetrics), cached per pool kind."""
    return jax.jit(lambda params, cols, isl, osl: phase_metrics(model, hw, params, phase, LayoutArrays(*cols),
                                                                isl, osl))


class _Pool:
    """One pool's discrete layouts as structures × batch grid, evaluated on demand (cached, counted).

    A structure is (tpa, kvp, dp_attn, tpf, ep, pp, s): s is the HOP-B switch (micro-batches of
    one request each; decode) or the chunk option (prefill). Rows equal `phase_layouts`' rows.
    """

    def __init__(self, case: Case, phase: str):
        self.case, self.phase = case, phase
        self.grid = np.asarray(case.space.batches(phase), np.float64)
        lay, fam = phase_layouts(case, phase, batches=[int(self.grid[-1])])
        cols = np.stack([np.asarray(getattr(lay, k)) for k in _STRUCT], 1).astype(np.int64)
        if phase == "prefill":
            opts = case.space.chunk_options(case.workload.isl)
            s = np.asarray([opts.index(int(c)) for c in np.asarray(lay.chunk)])
            c_min = min([c for c in opts if c > 0], default=case.workload.isl)
            pos = np.asarray([0.0 if c == 0 else math.log(case.workload.isl / c) / math.log(case.workload.isl / c_min)
                              for c in opts])
            self.chunks = np.asarray(opts, np.float64)
        else:
            s = (np.asarray(lay.microbatches) > 1).astype(np.int64)
            pos = np.asarray([0.0, 1.0])
        rows, idx = np.unique(np.concatenate([cols, s[:, None]], 1), axis=0, return_index=True)
        self.struct, self.family = rows, np.asarray(fam)[idx]
        pp_index = {p: i for i, p in enumerate(case.space.pp_options)}
        deg = np.log2(rows[:, :5]).round().astype(np.int64)
        self.lattice = np.concatenate([deg, np.asarray([[pp_index[p]] for p in rows[:, 5]]), rows[:, 6:]], 1)
        self.coords = np.concatenate([np.log2(rows[:, :6]), pos[rows[:, 6]][:, None]], 1)
        self.l1 = np.abs(self.lattice[:, None, :] - self.lattice[None, :, :]).sum(-1)
        self.size = np.prod(rows[:, :3], 1) * rows[:, 5]  # GPUs per replica
        self.bits = case.space.bits
        self.fn = pool_evaluator(case.model, case.hw, phase)
        self.cache: dict[tuple, tuple] = {}

    def __len__(self):
        return len(self.struct)

    @property
    def evaluations(self) -> int:
        return len(self.cache)

    def row(self, si: int, bi: int) -> tuple:
        tpa, kvp, d, tpf, ep, pp, s = (int(x) for x in self.struct[si])
        b = int(self.grid[bi])
        chunk, mb = 0, 1
        if self.phase == "prefill":
            chunk = int(self.chunks[s])
        elif s and kvp > 1:
            mb = -(-b // (min(pp, b) * d))  # one request per micro-batch (as `enumerate_layouts`)
        return (tpa, kvp, d, tpf, ep, pp, 1, b, mb, chunk, 1, *self.bits)

    def neighbours(self, si: int) -> np.ndarray:
        """Structures within L1 distance 2 of si, or of its replica size (si excluded)."""
        return np.flatnonzero(((self.l1[si] <= 2) | (self.size == self.size[si])) & (self.l1[si] > 0))

    def min_batch_index(self, si: int) -> int:
        return int(np.searchsorted(self.grid, self.struct[si, 2]))  # batch ≥ dp_attn

    def evaluate(self, points) -> list[tuple]:
        """Metrics (ttft, ttl, rate/GPU, gpus, mem ratio) of (structure, batch index) points."""
        rows = [self.row(si, bi) for si, bi in points]
        todo = sorted({r for r in rows if r not in self.cache})
        w = self.case.workload
        for s in range(0, len(todo), _POINT_BLOCK):  # fixed-size blocks: one compilation per pool
            part = todo[s:s + _POINT_BLOCK]
            arr = np.asarray(part + [part[-1]] * (_POINT_BLOCK - len(part)), np.float32).T
            out = self.fn(self.case.efficiency, tuple(arr), float(w.isl), float(w.osl))
            out = np.stack([np.asarray(x, np.float64) for x in out], 1)[:len(part)]
            self.cache.update(zip(part, map(tuple, out)))
        return [self.cache[r] for r in rows]

    def feasible(self, met) -> bool:
        w = self.case.workload
        ttft, ttl, rate, _, mem = met
        return bool(mem <= 1.0 and ttft <= w.ttft_limit_s and ttl <= w.ttl_limit_s and np.isfinite(rate))

    def layout(self, si: int, bi: int) -> dict:
        keys = _STRUCT + ("dp", "batch", "microbatches", "chunk")
        d = {k: int(v) for k, v in zip(keys, self.row(si, bi)) if k != "dp"}
        d["family"] = str(self.family[si])
        return d


def _design(case: Case, pools: dict, inc: dict) -> Design:
    if "colocated" in inc:
        c = inc["colocated"]
        tps, _, _ = _system_value(case, None, c)
        return Design("colocated", pools["colocated"].layout(c.si, c.bi), None, 1, 0, int(c.met[3]), tps,
                      1.0 / c.met[1], c.met[0], c.met[1])
    p, d = inc["prefill"], inc["decode"]
    tps, n_p, n_d = _system_value(case, p, d)
    return Design("disaggregated", pools["decode"].layout(d.si, d.bi), pools["prefill"].layout(p.si, p.bi), n_d, n_p,
                  int(n_p * p.met[3] + n_d * d.met[3]), tps, 1.0 / d.met[1], p.met[0], d.met[1])


def gradient_search(case: Case, *, starts: int = 24, steps: int = 100, seed: int = 0, lr: float = 0.1,
                    window: int = 3, max_rounds: int = 8, init: dict | None = None, frac0: float = 0.0,
                    warm: dict | None = None) -> SearchResult:
    """Gradient descent over the continuous relaxation, then rounding and a local discrete polish.

    Args:
      case: the problem.
      starts: random starts per serving mode (optimized at once with `vmap`).
      steps: Adam steps.
      seed: seed of the starts (numpy `default_rng`).
      lr: Adam learning rate (cosine-decayed to a tenth).
      window: grid batches compared below the largest feasible one.
      max_rounds: hill-climbing rounds.
      init: {mode: theta [starts, pools, N_THETA]} warm starts (replaces the random ones).
      frac0: where the penalty schedule starts (0 cold; > 0 for warm starts).
      warm: {phase: {structure index: batch index}} extra rounding candidates (warm starts).

    Returns:
      `SearchResult` (details: evaluations per stage, final theta per mode, incumbents, the best
      rounded design's tokens/s/GPU before the hill climb and the evaluations spent up to then).

    Raises:
      ValueError: the model fits on no layout, or no feasible design was found.
    """
    t0 = time.perf_counter()
    _check_fits_somewhere(case)
    w, params = case.workload, case.efficiency
    rng = np.random.default_rng(seed)
    n_opt, designs, thetas, incs, polish_evals, rounded, rounding_evals = 0, [], {}, {}, {}, {}, 0
    for arm in (a for a in MODES if a in case.space.modes):
        phases = ("prefill", "decode") if arm == "disaggregated" else ("colocated",)
        pools = {p: _Pool(case, p) for p in phases}
        theta0 = rng.normal(0.0, 1.5, (starts, len(phases), N_THETA)) if init is None else init[arm]
        run = _optimizer(arm, case.model, case.hw, case.space, steps)
        theta, _ = run(jnp.asarray(theta0, jnp.float32), params, float(w.isl), float(w.osl), float(w.ttft_limit_s),
                       float(w.ttl_limit_s), float(lr), float(frac0))
        theta = np.asarray(theta)
        thetas[arm] = theta
        n_opt += theta.shape[0] * steps * len(phases)
        inc = _arm_candidates(case, arm, pools, theta, warm or {}, window)
        if inc is not None:
            rounded[arm] = _design(case, pools, inc).tokens_per_s_per_gpu
            rounding_evals += sum(pool.evaluations for pool in pools.values())
            inc = _polish(case, pools, inc, window, max_rounds)
            designs.append(_design(case, pools, inc))
            incs.update({p: (i.si, i.bi) for p, i in inc.items()})
        polish_evals.update({p: pool.evaluations for p, pool in pools.items()})
    n_polish = sum(polish_evals.values())
    if not designs:
        raise ValueError(
            f"gradient search found no feasible design of {case.model.name} on {case.hw.name} (ISL={w.isl}, "
            f"OSL={w.osl}, TTFT ≤ {w.ttft_limit_s:g} s, TTL ≤ {w.ttl_limit_s:g} s) after {starts} starts; "
            f"`exhaustive_search` tells whether one exists")
    best = max(designs, key=lambda d: d.tokens_per_s_per_gpu)
    details = {"evaluations": {"optimizer": n_opt, **{f"polish/{p}": n for p, n in polish_evals.items()}},
               "theta": thetas, "incumbents": incs,
               # before the hill climb: the best rounded start (after its batch search) per mode
               "rounded_tokens_per_s_per_gpu": max(rounded.values(), default=0.0),
               "rounding_evaluations": rounding_evals}
    return SearchResult("gradient", best, n_opt + n_polish, time.perf_counter() - t0, None, details)


def sla_sweep(case: Case, ttl_limits_s, *, starts: int = 24, steps: int = 100, warm_steps: int = 40,
              seed: int = 0, **kw) -> list[SearchResult]:
    """Trace the frontier along the TTL target: a cold gradient search at the first limit, then
    warm starts (the previous thetas, the schedule from its middle, the previous incumbents as
    rounding candidates) at each next one. Order the limits from loose to tight or the reverse.

    Returns:
      one `SearchResult` per TTL limit (ValueError where no design is feasible propagates).
    """
    out, prev = [], None
    for ttl in ttl_limits_s:
        c = case.with_ttl(float(ttl))
        if prev is None:
            r = gradient_search(c, starts=starts, steps=steps, seed=seed, **kw)
        else:
            warm = {}
            for phase, (si, bi) in prev.details["incumbents"].items():
                warm.setdefault(phase, {})[si] = bi
            r = gradient_search(c, starts=starts, steps=warm_steps, seed=seed, init=prev.details["theta"],
                                frac0=0.5, warm=warm, **kw)
        out.append(r)
        prev = r
    return out
