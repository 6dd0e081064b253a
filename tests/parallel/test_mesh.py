"""LayoutMesh: both views of the same devices, and errors that name the numbers."""

import jax
import numpy as np
import pytest
from jax.sharding import AxisType

from parallel import as_layout_mesh, make_mesh
from perfmodel.specs import Layout


@pytest.mark.parametrize("kvp,tpa", [(1, 8), (2, 4), (4, 2), (8, 1)])
def test_helix_meshes(kvp, tpa):
    lm = make_mesh(kvp, tpa)
    assert (lm.size("kvp"), lm.size("tpa"), lm.size("dp")) == (kvp, tpa, 1)
    assert (lm.size("tpf"), lm.size("ep")) == (8, 1)
    assert lm.mesh.axis_names == ("dp", "kvp", "tpa")  # no split needed: plain names
    assert all(t == AxisType.Auto for t in lm.mesh.axis_types)


@pytest.mark.parametrize(
    "layout", [Layout(kvp=8, tpa=1, tpf=2, ep=4), Layout(kvp=2, tpa=4, tpf=4, ep=2),
               Layout(dp_attn=8, tpf=1, ep=8, batch=8), Layout(dp_attn=2, kvp=2, tpa=2, tpf=2, ep=4, batch=2)],
)
def test_ffn_view_reuses_the_same_devices(layout):
    lm = make_mesh(layout)
    for axis in ("dp", "kvp", "tpa", "tpf", "ep"):
        assert lm.size(axis) == getattr(layout, "dp_attn" if axis == "dp" else axis)
    # The FFN axes partition the non-trivial physical axes: every device gets one (tpf, ep) slot.
    ffn = lm.tpf + lm.ep
    assert len(set(ffn)) == len(ffn)
    assert {a for a in lm.mesh.axis_names if lm.mesh.shape[a] > 1} == set(ffn)
    ids = np.vectorize(lambda d: d.id)(lm.mesh.devices)
    assert sorted(ids.ravel().tolist()) == list(range(8))


def test_split_axis_names():
    lm = make_mesh(Layout(kvp=8, tpa=1, tpf=2, ep=4))
    assert lm.kvp == ("kvp0", "kvp1") and lm.tpf == ("kvp1",) and lm.ep == ("kvp0",)
    assert dict(lm.mesh.shape) == {"dp": 1, "kvp0": 4, "kvp1": 2, "tpa": 1}


def test_plain_mesh_view():
    mesh = jax.make_mesh((2, 4), ("kvp", "tpa"), axis_types=(AxisType.Auto,) * 2)
    lm = as_layout_mesh(mesh)
    assert (lm.size("kvp"), lm.size("tpa"), lm.size("dp"), lm.size("tpf")) == (2, 4, 1, 8)


def test_errors_name_the_numbers():
    with pytest.raises(ValueError, match=r"tpf·ep=4·4 must equal .*=8"):
        make_mesh(2, 4, tpf=4, ep=4)
    with pytest.raises(ValueError, match="needs 16 devices, only 8"):
        make_mesh(4, 4)
    with pytest.raises(ValueError, match="tpa is required"):
        make_mesh(2)
    with pytest.raises(ValueError, match="pp=2"):
        make_mesh(Layout(kvp=2, tpa=2, tpf=4, pp=2))
    with pytest.raises(ValueError, match="kvp=0"):
        make_mesh(0, 8)
    mesh = jax.make_mesh((2, 4), ("x", "y"), axis_types=(AxisType.Auto,) * 2)
    with pytest.raises(ValueError, match=r"unknown mesh axis 'kvp'.*\('x', 'y'\)"):
        as_layout_mesh(mesh)
    lm = make_mesh(2, 4)
    with pytest.raises(ValueError, match="unknown logical axis 'sp'"):
        lm.size("sp")
