"""collective_bytes: HLO text parsing (async pairs, iota groups, tuples, sub-byte types) and a real program."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.sharding import PartitionSpec as P

from parallel import collective_bytes, collectives, make_mesh

GPU_STYLE = """HloModule jit_step, num_partitions=8
ENTRY %main {
  %p = f32[4,256]{1,0} parameter(0)
  %ars = bf16[8,128]{1,0} all-reduce-start(%x), channel_id=1, replica_groups=[2,4]<=[8], to_apply=%add
  %ard = bf16[8,128]{1,0} all-reduce-done(%ars)
  %ags = (f32[4,256]{1,0}, f32[16,256]{1,0}) all-gather-start(%p), channel_id=2, replica_groups={{0,1,2,3},{4,5,6,7}}, dimensions={0}
  %agd = f32[16,256]{1,0} all-gather-done(%ags)
  %cps = (u8[1024]{0}, u8[1024]{0}, u32[], u32[]) collective-permute-start(%y), channel_id=3, source_target_pairs={{0,1},{1,0}}
  %cpd = u8[1024]{0} collective-permute-done(%cps)
  %rs = f32[2,64]{1,0} reduce-scatter(%z), channel_id=4, replica_groups={}, dimensions={0}, to_apply=%add
  %a2a = (f4e2m1fn[2,64]{1,0}, f4e2m1fn[2,64]{1,0}) all-to-all(%u, %v), channel_id=5, replica_groups=[4,2]<=[2,4]T(1,0)
  %gte = f4e2m1fn[2,64]{1,0} get-tuple-element(%a2a), index=0
}
"""


def test_parse_gpu_style_text():
    found = {c.kind: c for c in collectives(GPU_STYLE)}
    assert len(collectives(GPU_STYLE)) == 5  # each async pair counted once
    ar = found["all-reduce"]
    assert (ar.result_bytes, ar.group_size, ar.bytes_moved) == (8 * 128 * 2, 4, 2 * 2048 * 3 / 4)
    ag = found["all-gather"]
    assert (ag.result_bytes, ag.group_size, ag.bytes_moved) == (16 * 256 * 4, 4, 16384 * 3 / 4)
    assert found["collective-permute"].bytes_moved == 1024
    rs = found["reduce-scatter"]  # empty replica groups: all 8 partitions
    assert (rs.group_size, rs.bytes_moved) == (8, 2 * 64 * 4 * 7)
    a2a = found["all-to-all"]  # 4-bit elements: 2·(2·64·4 bits) = 128 bytes
    assert (a2a.result_bytes, a2a.group_size, a2a.bytes_moved) == (128, 2, 64)
    assert collective_bytes(GPU_STYLE)["all-reduce"] == ar.bytes_moved


def test_unknown_element_type_is_an_error():
    with pytest.raises(ValueError, match=r"unknown HLO element type 'f7'"):
        collectives("%x = f7[2]{0} all-reduce(%y), replica_groups={{0,1}}")


def test_real_program_every_kind():
    """One shard_map program with each collective kind; bytes from shapes written here."""
    lm = make_mesh(2, 4)  # physical axes dp(1), kvp(2), tpa(4)

    def body(x):  # x: [2, 16] per device
        a = lax.psum(x, ("kvp", "tpa"))  # all-reduce, n = 8: 2·(7/8)·128 B
        g = lax.all_gather(x, "tpa", axis=0, tiled=True)  # [8, 16]: (3/4)·512 B
        s = lax.psum_scatter(g, "kvp", scatter_dimension=0, tiled=True)  # [4, 16] result: 256·(2−1) B
        t = lax.all_to_all(x, "tpa", 1, 1, tiled=True)  # [2, 16]: (3/4)·128 B
        p = lax.ppermute(x, "kvp", [(0, 1), (1, 0)])  # 128 B
        return a[:1] + g[:1] + s[:1] + t[:1] + p[:1]

    fn = jax.jit(jax.shard_map(body, mesh=lm.mesh, in_specs=P(("kvp", "tpa")), out_specs=P(("kvp", "tpa"))))
    compiled = fn.lower(jnp.zeros((16, 16), jnp.float32)).compile()
    got = collective_bytes(compiled)
    assert got == {"all-reduce": 2 * 7 / 8 * 128, "all-gather": 3 / 4 * 512, "reduce-scatter": 256.0,
                   "all-to-all": 3 / 4 * 128, "collective-permute": 128.0}
    x = np.arange(256, dtype=np.float32).reshape(16, 16)
    assert np.all(np.isfinite(compiled(x)))
