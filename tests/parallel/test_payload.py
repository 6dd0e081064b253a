"""Quantized all-to-all payloads: bit-exact wire format, routing, and bytes equal to the packed size."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import numerics
from parallel import collectives, make_mesh, payload_bytes
from parallel.payload import _pack, _unpack, exchange_partials

FORMATS = ["mxfp4_e2m1", "mxfp6_e3m2", "nvfp4", "fp8_e4m3"]  # 4- and 6-bit packing, block + tensor scales
KVP, TPA, B, QL, DV = 4, 2, 2, 8, 40  # Dv = 40 is not a block multiple: padded codes travel too


@pytest.mark.parametrize("fmt", ["mxfp4_e2m1", "mxfp6_e3m2", "mxfp8_e4m3", "bf16"])
def test_pack_unpack_roundtrip(fmt):
    x = np.random.default_rng(0).standard_normal((3, 5, 64)).astype(np.float32)
    q = numerics.quantize(x, fmt)
    bits = numerics.get_format(fmt).element.bits
    packed = _pack(q.codes, bits)
    assert packed.dtype == jnp.uint8 and packed.shape == (3, 5, 64 * bits // 8)
    codes = _unpack(packed, bits, 64, q.codes.dtype)
    np.testing.assert_array_equal(np.asarray(codes).view(np.uint8), np.asarray(q.codes).view(np.uint8))


def test_exchange_is_bit_exact_and_routed():
    """Device (i, j) sends head chunk c of its partials to KVP rank c; each arrives as fake_quantize(chunk)."""
    lm = make_mesh(KVP, TPA)
    rng = np.random.default_rng(1)
    out = rng.standard_normal((KVP, TPA, B, QL, DV)).astype(np.float32) * 3.0
    lse = rng.standard_normal((KVP, TPA, B, QL)).astype(np.float32)

    def body(o, l):
        res = {}
        for fmt in FORMATS:
            outs, lses = exchange_partials(o[0, 0], l[0, 0], lm.kvp, KVP, fmt)
            res[fmt] = (outs[None, None], lses[None, None])
        return res

    spec = P("kvp", "tpa")
    fn = jax.jit(jax.shard_map(body, mesh=lm.mesh, in_specs=(spec, spec), out_specs=spec))
    compiled = fn.lower(out, lse).compile()
    got = compiled(out, lse)
    qn = QL // KVP
    for fmt in FORMATS:
        outs, lses = (np.asarray(a) for a in got[fmt])  # [KVP dest, TPA, B, KVP source, Qn, ·]
        for c in range(KVP):
            for j in range(TPA):
                for i in range(KVP):
                    chunk = out[i, j, :, c * qn : (c + 1) * qn]
                    expected = np.asarray(numerics.fake_quantize(chunk, fmt, axis=-1))
                    np.testing.assert_array_equal(outs[c, j, :, i], expected, err_msg=f"{fmt} {c} {j} {i}")
                    np.testing.assert_array_equal(lses[c, j, :, i], lse[i, j, :, c * qn : (c + 1) * qn])
    # HLO: one uint8 all-to-all per format, each moving the packed size.
    moved = sorted(c.bytes_moved for c in collectives(compiled) if c.kind == "all-to-all")
    assert moved == sorted(payload_bytes(B, QL, DV, KVP, fmt) for fmt in FORMATS)


def test_payload_bytes_closed_forms():
    # FP32: (KVP−1)·B·Qn·(Dv + 1)·4
    assert payload_bytes(B, QL, DV, KVP) == 3 * B * 2 * 41 * 4
    # MXFP4: Dv padded to 64 → 32 code bytes + 2 E8M0 scale bytes + 4 LSE bytes per (token, head)
    assert payload_bytes(B, QL, DV, KVP, "mxfp4_e2m1") == 3 * B * 2 * (32 + 2 + 4)
    # NVFP4: 16-element blocks → Dv padded to 48: 24 code bytes + 3 E4M3 scales + 4 LSE; + 4 B tensor scale
    assert payload_bytes(B, QL, DV, KVP, "nvfp4") == 3 * (B * 2 * (24 + 3 + 4) + 4)
    # MXFP6: 64 six-bit codes = 48 bytes
    assert payload_bytes(B, QL, DV, KVP, "mxfp6_e3m2") == 3 * B * 2 * (48 + 2 + 4)
