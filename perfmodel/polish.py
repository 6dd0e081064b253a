"""Rounding a relaxed optimum to valid discrete designs, and the local discrete search.

    solve_pools(r_p, g_p, r_d, g_d, osl, max_total_gpus) -> (tokens/s/GPU, n_p, n_d)

Rounding and polish. Each start's u is snapped to the nearest valid layout structure (Euclidean
in u; the list of structures comes from `enumerate_layouts` and costs no model evaluation), its
batch to the nearest grid value. Per structure the largest feasible batch is found by galloping
and bisection on the batch grid (TTL, TTFT and memory rise with B), then the last few grid
batches below it and the largest one divisible by min(pp, B)·dp_attn are compared (uneven
splits make tokens/s/GPU non-monotone in B). A hill climb then visits the structures within L1
distance 2 in (log2 degrees, pp index, micro-batch / chunk index) of the incumbent and those with
its replica size, pool by pool, until no neighbour improves; `solve_pools` sizes the pools. When
no rounded start is feasible, a descent on the largest violation (memory, TTFT, TTL at the
smallest batch) over the same neighbourhoods restores feasibility first.

A pool (`search._Pool`) is one phase's discrete layouts as structures × batch grid, evaluated on
demand; everything here drives it and counts nothing itself (the pool counts its evaluations).

References:
  Beyond the Buzz, arXiv 2506.05508 §3 (rate matching, integer pool sizes, Pareto under TTFT/TTL).
  Helix, arXiv 2507.07120 §4 (the decode layout space: TP, KVP × TPA, TPF × EP, PP, HOP-B).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, NamedTuple

import jax.numpy as jnp
import numpy as np

from .relax import _relaxed_u

if TYPE_CHECKING:  # annotations only: search.py imports this module, never the reverse at run time
    from .search import Case, _Pool


def solve_pools(r_p, g_p, r_d, g_d, osl, max_total_gpus: int):
    """Integer replica counts of a disaggregated system maximizing tokens/s/GPU.

        max over n_p, n_d ≥ 1 with n_p·g_p + n_d·g_d ≤ G of OSL·min(n_p·r_p, n_d·r_d)/(n_p·g_p + n_d·g_d)

    For fixed n_p the value rises in n_d up to n_p·r_p/r_d and falls after: n_d is its floor or
    ceil (clipped to the budget).

    Args:
      r_p, r_d: requests/s of one prefill / decode replica (numpy, broadcast together).
      g_p, g_d: GPUs of one replica. osl: output tokens per request.
      max_total_gpus: G.

    Returns:
      (tokens/s/GPU, n_p, n_d) arrays; tokens/s/GPU is 0 where no system fits in G.

    References:
      Beyond the Buzz, arXiv 2506.05508 §3 (integer solve of prefill and decode GPU counts).
    """
    r_p, g_p, r_d, g_d = np.broadcast_arrays(*(np.asarray(x, np.float64) for x in (r_p, g_p, r_d, g_d)))
    n_p = np.arange(1, max_total_gpus + 1, dtype=np.float64).reshape((-1,) + (1,) * r_p.ndim)
    cap = np.floor((max_total_gpus - n_p * g_p) / g_d)
    ideal = n_p * r_p / np.maximum(r_d, 1e-300)
    best = np.zeros(r_p.shape)
    best_np, best_nd = np.zeros(r_p.shape, np.int64), np.zeros(r_p.shape, np.int64)
    for n_d in (np.floor(ideal), np.ceil(ideal)):
        n_d = np.clip(n_d, 1.0, np.maximum(cap, 1.0))
        v = osl * np.minimum(n_p * r_p, n_d * r_d) / (n_p * g_p + n_d * g_d)
        v = np.where(cap >= 1.0, v, 0.0)
        i = np.argmax(v, axis=0)
        vi = np.take_along_axis(v, i[None], 0)[0]
        better = vi > best
        best = np.where(better, vi, best)
        best_np = np.where(better, i + 1, best_np)
        best_nd = np.where(better, np.take_along_axis(n_d * np.ones_like(v), i[None], 0)[0].astype(np.int64), best_nd)
    return best, best_np, best_nd



def _batch_search(pool: _Pool, si: int, guess: int, window: int):
    """Generator (driven by `_drive`): the largest feasible batch of structure si by galloping
    from `guess` and bisecting, then `window` grid batches below it and the largest aligned one.
    Yields lists of batch indices, receives their metrics, returns [(bi, metrics)] feasible."""
    lo_ok, n = pool.min_batch_index(si), len(pool.grid)
    if lo_ok >= n:
        return []
    k = int(np.clip(guess, lo_ok, n - 1))
    (m,) = yield [k]
    if pool.feasible(m):
        lo, hi, step = k, n, 1
        while lo + step < n:
            (m,) = yield [lo + step]
            if pool.feasible(m):
                lo, step = lo + step, step * 2
            else:
                hi = lo + step
                break
    else:
        hi, lo, step = k, None, 1
        while hi - step >= lo_ok:
            (m,) = yield [hi - step]
            if pool.feasible(m):
                lo = hi - step
                break
            hi, step = hi - step, step * 2
        if lo is None:
            if hi == lo_ok:
                return []
            (m,) = yield [lo_ok]
            if not pool.feasible(m):
                return []
            lo = lo_ok
    while hi - lo > 1:
        mid = (lo + hi) // 2
        (m,) = yield [mid]
        if pool.feasible(m):
            lo = mid
        else:
            hi = mid
    _, kvp, d, _, _, pp, _ = pool.struct[si]
    cands = {lo} | {b for b in range(max(lo_ok, lo - window + 1), lo)}
    aligned = [b for b in range(lo, lo_ok - 1, -1) if int(pool.grid[b]) % (min(pp, int(pool.grid[b])) * d) == 0]
    if aligned:
        cands.add(aligned[0])
    cands = sorted(cands)
    mets = yield cands
    return [(b, m) for b, m in zip(cands, mets) if pool.feasible(m)]


def _drive(pool: _Pool, searches: dict):
    """Run `_batch_search` generators in lockstep, one batched evaluation per round."""
    results, pending = {}, {}
    for key, gen in searches.items():
        try:
            pending[key] = (gen, next(gen))
        except StopIteration as e:
            results[key] = e.value
    while pending:
        points = [(key[0] if isinstance(key, tuple) else key, bi) for key, (_, bis) in pending.items() for bi in bis]
        mets = iter(pool.evaluate(points))
        nxt = {}
        for key, (gen, bis) in pending.items():
            try:
                nxt[key] = (gen, gen.send([next(mets) for _ in bis]))
            except StopIteration as e:
                results[key] = e.value
        pending = nxt
    return results


def _best_batches(pool: _Pool, guesses: dict, value, window: int):
    """{si: (bi, metrics, value)} of the best feasible batch per structure (value: metrics -> float)."""
    found = _drive(pool, {si: _batch_search(pool, si, g, window) for si, g in guesses.items()})
    out = {}
    for si, feas in found.items():
        if feas:
            vals = [value(si, m) for _, m in feas]
            j = int(np.argmax(vals))
            if vals[j] > 0:
                out[si] = (feas[j][0], feas[j][1], vals[j])
    return out


def _snap(pool: _Pool, u: np.ndarray, batch: np.ndarray):
    """Nearest structure (Euclidean in u) and nearest grid batch (in log2) for every start."""
    d = ((u[:, None, :] - pool.coords[None, :, :]) ** 2).sum(-1)
    si = np.argmin(d, 1)
    bi = np.abs(np.log2(pool.grid)[None, :] - np.log2(np.maximum(batch, 1.0))[:, None]).argmin(1)
    return si, bi


def _guess(pool: _Pool, si_from: int, bi_from: int, si_to: int) -> int:
    """Batch guess for a neighbour: the incumbent's batch scaled by the replica-size ratio."""
    g = lambda s: float(np.prod(pool.struct[s, :3]) * pool.struct[s, 5])  # noqa: E731
    b = pool.grid[bi_from] * g(si_to) / g(si_from)
    return int(np.abs(np.log2(pool.grid) - math.log2(max(b, 1.0))).argmin())


class _Incumbent(NamedTuple):
    si: int
    bi: int
    met: tuple


def _system_value(case: Case, pf: _Incumbent | None, dc: _Incumbent):
    """tokens/s/GPU (and pools) of a disaggregated pair, or of a co-located replica (pf None)."""
    osl, G = float(case.workload.osl), case.space.max_total_gpus
    if pf is None:
        return (dc.met[2] * osl if dc.met[3] <= G else 0.0), 0, 1
    v, n_p, n_d = solve_pools(pf.met[2] * pf.met[3], pf.met[3], dc.met[2] * dc.met[3], dc.met[3], osl, G)
    return float(v), int(n_p), int(n_d)


def _polish(case: Case, pools: dict, inc: dict, window: int, max_rounds: int):
    """Hill climb, pool by pool (the other pool fixed), over `_Pool.neighbours`: the structures
    within L1 distance 2 and those of the incumbent's replica size (a relaxation biased towards,
    say, uneven pipeline stages lands on the right size but a distant split of it)."""
    for _ in range(max_rounds):
        improved = False
        for phase, pool in pools.items():
            cur = inc[phase]
            other = {k: v for k, v in inc.items() if k != phase}

            def value(si, met, phase=phase, other=other):
                trial = {**other, phase: _Incumbent(si, -1, met)}
                return _system_value(case, trial.get("prefill"), trial.get("decode", trial.get("colocated")))[0]

            base = value(cur.si, cur.met)
            neigh = pool.neighbours(cur.si)
            found = _best_batches(pool, {int(s): _guess(pool, cur.si, cur.bi, int(s)) for s in neigh}, value, window)
            if found:
                si = max(found, key=lambda s: found[s][2])
                if found[si][2] > base * (1.0 + 1e-9):
                    inc[phase] = _Incumbent(si, found[si][0], found[si][1])
                    improved = True
        if not improved:
            break
    return inc


def _violation(pool: _Pool, met) -> float:
    """Largest relative violation (log2) of memory, TTFT and TTL; ≤ 0 when feasible."""
    w = pool.case.workload
    ttft, ttl, _, _, mem = met
    return max(math.log2(max(mem, 1e-30)), math.log2(max(ttft, 1e-30) / w.ttft_limit_s),
               math.log2(max(ttl, 1e-30) / w.ttl_limit_s))


def _restore_feasibility(pool: _Pool, structs: list, max_rounds: int = 16):
    """When no rounded start is feasible: descend on the violation at each structure's smallest
    batch (where memory, TTFT and TTL are least) over `_Pool.neighbours`."""

    def viol(ss):
        return [_violation(pool, m) for m in pool.evaluate([(s, pool.min_batch_index(s)) for s in ss])]

    structs = [s for s in structs if pool.min_batch_index(s) < len(pool.grid)]
    if not structs:
        return None
    v0 = viol(structs)
    for k in np.argsort(v0):  # descend from every rounded start, least violated first
        cur, best = structs[k], v0[k]
        for _ in range(max_rounds):
            if best <= 0:
                return cur
            neigh = [int(s) for s in pool.neighbours(cur) if pool.min_batch_index(int(s)) < len(pool.grid)]
            v = viol(neigh) if neigh else [np.inf]
            if min(v) >= best:
                break
            cur, best = neigh[int(np.argmin(v))], min(v)
        if best <= 0:
            return cur
    return None


def _arm_candidates(case: Case, arm: str, pools: dict, theta: np.ndarray, extra: dict, window: int):
    """Snap every start, find each distinct structure's best batch, pick the best combination."""
    isl = float(case.workload.isl)
    found = {}
    for k, (phase, pool) in enumerate(pools.items()):
        lay, u = _relaxed_u(case.model, case.space, phase)(jnp.asarray(theta[:, k], jnp.float32), isl)
        si, bi = _snap(pool, np.asarray(u, np.float64), np.asarray(lay.batch, np.float64))
        guesses = {}
        for s, b in zip(si.tolist(), bi.tolist()):
            guesses.setdefault(s, b)
        for s, b in extra.get(phase, {}).items():
            guesses.setdefault(s, b)
        rate = lambda si, met: met[2]  # noqa: E731  fluid requests/s/GPU: the pool-size-free ranking
        found[phase] = _best_batches(pool, guesses, rate, window)
        if not found[phase]:
            si = _restore_feasibility(pool, list(guesses))
            found[phase] = {} if si is None else _best_batches(pool, {si: pool.min_batch_index(si)}, rate, window)
        if not found[phase]:
            return None
    if arm == "colocated":
        (f,) = found.values()
        best = max(f, key=lambda s: _system_value(case, None, _Incumbent(s, *f[s][:2]))[0])
        return {"colocated": _Incumbent(best, *found["colocated"][best][:2])}
    best, best_v = None, 0.0
    for sp, (bp, mp, _) in found["prefill"].items():
        for sd, (bd, md, _) in found["decode"].items():
            v = _system_value(case, _Incumbent(sp, bp, mp), _Incumbent(sd, bd, md))[0]
            if v > best_v:
                best, best_v = (_Incumbent(sp, bp, mp), _Incumbent(sd, bd, md)), v
    return None if best is None else {"prefill": best[0], "decode": best[1]}

