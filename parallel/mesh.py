"""Device meshes for Helix layouts: attention axes (dp, kvp, tpa) and FFN axes (tpf, ep) on one mesh.

Helix (arXiv 2507.07120 §2) runs attention on N = DP_attn·KVP·TPA devices and then reuses the same
N devices as TPF × EP for the FFN. One `jax.sharding.Mesh` serves both views: its physical axes are
the coarsest common refinement of the two factorizations of N, and each logical axis (`dp`, `kvp`,
`tpa`, `tpf`, `ep`) is a tuple of physical axis names. A logical axis that needs no splitting keeps
its own name, so a plain `kvp × tpa` mesh has physical axes named "dp", "kvp" and "tpa".

Example: kvp=8, tpa=1, tpf=2, ep=4 gives physical axes dp(1), kvp0(4), kvp1(2), tpa(1), with
kvp = ("kvp0", "kvp1"), tpf = ("kvp1",), ep = ("kvp0",).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
from jax.sharding import AxisType, Mesh

from perfmodel.specs import Layout

ATTENTION_AXES = ("dp", "kvp", "tpa")
FFN_AXES = ("tpf", "ep")
LOGICAL_AXES = ATTENTION_AXES + FFN_AXES


def _prime_factors(n: int) -> list[int]:
    factors, p = [], 2
    while p * p <= n:
        while n % p == 0:
            factors.append(p)
            n //= p
        p += 1
    if n > 1:
        factors.append(n)
    return factors


@dataclasses.dataclass(frozen=True)
class LayoutMesh:
    """A device mesh with the logical Helix axes mapped to tuples of physical mesh axes.

    Attributes:
      mesh: the `jax.sharding.Mesh` (axis types Auto, for shard_map-centred code).
      dp, kvp, tpa: physical axes of attention's data-parallel, KV-parallel and KV-head-parallel axes.
      tpf, ep: physical axes of the FFN's tensor-parallel and expert-parallel axes (same devices).
    """

    mesh: Mesh
    dp: tuple[str, ...]
    kvp: tuple[str, ...]
    tpa: tuple[str, ...]
    tpf: tuple[str, ...]
    ep: tuple[str, ...]

    def __post_init__(self):
        names = set(self.mesh.axis_names)
        for logical in LOGICAL_AXES:
            for axis in getattr(self, logical):
                if axis not in names:
                    raise ValueError(
                        f"unknown mesh axis {axis!r} for logical axis {logical!r}; the mesh has axes "
                        f"{tuple(self.mesh.axis_names)}"
                    )
        attn = self.dp + self.kvp + self.tpa
        if len(set(attn)) != len(attn) or set(attn) != names:
            raise ValueError(
                f"dp={self.dp}, kvp={self.kvp}, tpa={self.tpa} must partition the mesh axes "
                f"{tuple(self.mesh.axis_names)}"
            )
        ffn = self.tpf + self.ep
        if len(set(ffn)) != len(ffn) or not set(ffn) <= names:
            raise ValueError(f"tpf={self.tpf} and ep={self.ep} must be disjoint mesh axes")
        if self.size("tpf") * self.size("ep") != self.n_devices:
            raise ValueError(
                f"tpf·ep={self.size('tpf')}·{self.size('ep')} must equal the mesh's {self.n_devices} devices"
            )

    def axes(self, logical: str) -> tuple[str, ...]:
        """Physical axis names of a logical axis ("dp", "kvp", "tpa", "tpf", "ep")."""
        if logical not in LOGICAL_AXES:
            raise ValueError(f"unknown logical axis {logical!r}; expected one of {LOGICAL_AXES}")
        return getattr(self, logical)

    def size(self, logical: str) -> int:
        """Number of devices along a logical axis."""
        size = 1
        for axis in self.axes(logical):
            size *= self.mesh.shape[axis]
        return size

    @property
    def n_devices(self) -> int:
        return self.mesh.size

    @property
    def attention_group(self) -> tuple[str, ...]:
        """The axes of one Helix attention group (kvp then tpa), which share the whole batch."""
        return self.kvp + self.tpa

    @property
    def all_axes(self) -> tuple[str, ...]:
        return self.dp + self.kvp + self.tpa

    def __repr__(self) -> str:
        degrees = ", ".join(f"{a}={self.size(a)}" for a in LOGICAL_AXES)
        return f"LayoutMesh({degrees}; mesh={dict(self.mesh.shape)})"


def make_mesh(
    layout: Layout | int,
    tpa: int | None = None,
    *,
    dp_attn: int = 1,
    tpf: int | None = None,
    ep: int = 1,
    devices: Sequence[jax.Device] | None = None,
) -> LayoutMesh:
    """Build the mesh of one Helix layout: attention as dp×kvp×tpa, the FFN as tpf×ep, same devices.

    N = dp_attn·kvp·tpa = tpf·ep devices. Physical axes are the attention axes, split (into "kvp0",
    "kvp1", ...) only where the FFN's factorization needs it; see the module docstring.

    Args:
      layout: a `perfmodel.specs.Layout` (its tpa, kvp, dp_attn, tpf, ep are used; pp and dp must be
        1: a mesh holds one pipeline stage of one replica), or the KVP degree as an int.
      tpa: TPA degree when `layout` is an int (required then).
      dp_attn: data-parallel attention groups, when `layout` is an int.
      tpf: FFN tensor-parallel degree, when `layout` is an int (default N / ep).
      ep: expert-parallel degree, when `layout` is an int.
      devices: devices to use (default: the first N of `jax.devices()`).

    Returns:
      A `LayoutMesh`.

    Raises:
      ValueError: degrees that are not positive, tpf·ep ≠ N, fewer than N devices, or a Layout
        with pp or dp > 1.

    References:
      Helix Parallelism, arXiv 2507.07120, §2 (attention on KVP×TPA, FFN on TPF×EP, same GPUs).
    """
    if isinstance(layout, Layout):
        if tpa is not None:
            raise ValueError(f"pass tpa inside the Layout, not as tpa={tpa}")
        if layout.pp != 1 or layout.dp != 1:
            raise ValueError(
                f"a mesh holds one pipeline stage of one replica; got pp={layout.pp}, dp={layout.dp}"
            )
        kvp, tpa, dp_attn, tpf, ep = layout.kvp, layout.tpa, layout.dp_attn, layout.tpf, layout.ep
    else:
        kvp = layout
        if tpa is None:
            raise ValueError("make_mesh(kvp, tpa): tpa is required when the first argument is an int")
    for name, value in dict(dp_attn=dp_attn, kvp=kvp, tpa=tpa, ep=ep).items():
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name}={value!r} must be a positive integer")
    n = dp_attn * kvp * tpa
    if tpf is None:
        if n % ep:
            raise ValueError(f"ep={ep} does not divide the {n} devices dp_attn·kvp·tpa={dp_attn}·{kvp}·{tpa}")
        tpf = n // ep
    if not isinstance(tpf, int) or tpf <= 0 or tpf * ep != n:
        raise ValueError(
            f"tpf·ep={tpf}·{ep} must equal the attention devices dp_attn·kvp·tpa={dp_attn}·{kvp}·{tpa}={n}"
        )
    if devices is None:
        devices = jax.devices()
    if len(devices) < n:
        raise ValueError(f"layout needs {n} devices, only {len(devices)} available")
    devices = list(devices)[:n]

    # One cell per prime factor of each attention degree, major to minor; the FFN's tpf takes its
    # prime factors from the minor end (TP wants the closest devices), ep gets the rest.
    cells = [(name, p) for name, degree in zip(ATTENTION_AXES, (dp_attn, kvp, tpa)) for p in _prime_factors(degree)]
    need = _prime_factors(tpf)
    owner = ["ep"] * len(cells)
    for i in reversed(range(len(cells))):
        if cells[i][1] in need:
            need.remove(cells[i][1])
            owner[i] = "tpf"
    # Merge neighbouring cells of the same attention axis and FFN axis into one physical axis.
    groups: list[list] = []  # [attention axis, ffn axis, size]
    for (name, p), ffn in zip(cells, owner):
        if groups and groups[-1][0] == name and groups[-1][1] == ffn:
            groups[-1][2] *= p
        else:
            groups.append([name, ffn, p])
    physical, sizes, views = [], [], {a: [] for a in LOGICAL_AXES}
    for name in ATTENTION_AXES:
        mine = [g for g in groups if g[0] == name]
        if not mine:  # a degree of 1 keeps a size-1 axis so every spec can name it
            physical.append(name)
            sizes.append(1)
            views[name].append(name)
        for k, (_, ffn, size) in enumerate(mine):
            axis = name if len(mine) == 1 else f"{name}{k}"
            physical.append(axis)
            sizes.append(size)
            views[name].append(axis)
            views[ffn].append(axis)
    mesh = jax.make_mesh(tuple(sizes), tuple(physical), axis_types=(AxisType.Auto,) * len(sizes), devices=devices)
    return LayoutMesh(mesh, **{a: tuple(v) for a, v in views.items()})


def as_layout_mesh(
    mesh: LayoutMesh | Mesh,
    *,
    kvp: str | tuple[str, ...] = "kvp",
    tpa: str | tuple[str, ...] = "tpa",
    dp: str | tuple[str, ...] | None = None,
    tpf: str | tuple[str, ...] | None = None,
    ep: str | tuple[str, ...] | None = None,
) -> LayoutMesh:
    """View a plain `jax.sharding.Mesh` as a `LayoutMesh` (a `LayoutMesh` is returned unchanged).

    Args:
      mesh: a LayoutMesh, or a Mesh whose axes are named by the arguments below.
      kvp, tpa: mesh axis name(s) of KVP and TPA.
      dp: mesh axis name(s) of data-parallel attention (default: the mesh's "dp" axis if any).
      tpf, ep: FFN axes (default: tpf = every mesh axis, ep = none).

    Raises:
      ValueError: an axis name the mesh does not have, or axes that do not partition the mesh.
    """
    if isinstance(mesh, LayoutMesh):
        return mesh
    if not isinstance(mesh, Mesh):
        raise ValueError(f"expected a jax.sharding.Mesh or LayoutMesh, got {type(mesh).__name__}")

    def tup(v):
        return () if v is None else ((v,) if isinstance(v, str) else tuple(v))

    if dp is None:
        dp = ("dp",) if "dp" in mesh.axis_names else ()
    kvp_t, tpa_t, dp_t = tup(kvp), tup(tpa), tup(dp)
    for axis in kvp_t + tpa_t + dp_t + tup(tpf) + tup(ep):
        if axis not in mesh.axis_names:
            raise ValueError(f"unknown mesh axis {axis!r}; the mesh has axes {tuple(mesh.axis_names)}")
    if tpf is None:
        tpf = tuple(a for a in mesh.axis_names if a not in tup(ep))
    return LayoutMesh(mesh, dp=dp_t, kvp=kvp_t, tpa=tpa_t, tpf=tup(tpf), ep=tup(ep))
