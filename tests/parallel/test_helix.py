"""Helix attention on 8 CPU devices against the single-device reference (parallel.blocks)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType

from parallel import (
    helix_attention, helix_mla_attention, kv_append, make_mesh, round_robin_positions,
)

MESHES = [(1, 8), (2, 4), (4, 2), (8, 1)]  # kvp × tpa on 8 devices
B, S, D = 4, 64, 16
R, DR, DV = 32, 8, 8  # small MLA: latent rank, RoPE dim, value dim
KV_LEN = np.array([S, 1, 17, 0], np.int32)  # full, one token (only KVP rank 0 has it), ragged, empty


def _normal(seed, shape):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def np_attention(q, k, v, kv_len, scale=None):
    """Independent float64 NumPy decode attention with GQA grouping; empty sequences give 0."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    b, nq, d = q.shape
    group = nq // k.shape[2]
    scale = d**-0.5 if scale is None else scale
    out = np.zeros((b, nq, v.shape[-1]))
    for i in range(b):
        n = int(kv_len[i])
        if n == 0:
            continue
        for h in range(nq):
            s = k[i, :n, h // group] @ q[i, h] * scale
            p = np.exp(s - s.max())
            out[i, h] = p @ v[i, :n, h // group] / p.sum()
    return out


def np_mla(q_latent, q_rope, latent, kv_len, scale):
    q = np.concatenate([q_latent, q_rope], axis=-1)
    return np_attention(q, latent[:, :, None, :], latent[:, :, None, : q_latent.shape[-1]], kv_len, scale)


@pytest.fixture(scope="module")
def inputs():
    return dict(
        q16=_normal(0, (B, 16, D)), k8=_normal(1, (B, S, 8, D)), v8=_normal(2, (B, S, 8, D)),
        q8=_normal(3, (B, 8, D)), k2=_normal(4, (B, S, 2, D)), v2=_normal(5, (B, S, 2, D)),
        q_latent=_normal(6, (B, 16, R)), q_rope=_normal(7, (B, 16, DR)), latent=_normal(8, (B, S, R + DR)),
        w_uv=_normal(9, (16, R, DV)),
    )


@pytest.mark.parametrize("kvp,tpa", MESHES)
def test_helix_matches_reference(kvp, tpa, inputs, assert_close):
    """GQA 16/8, MHA 8/8, GQA 16/2, MLA; ragged kv_len; HOP-B; round-robin storage — one compile per mesh."""
    lm = make_mesh(kvp, tpa)
    x = inputs
    pos = round_robin_positions(S, kvp, 4)  # storage slot -> token position
    mla_scale = (D + DR) ** -0.5

    @jax.jit
    def run(x):
        h = functools.partial(helix_attention, kv_len=KV_LEN, mesh=lm)
        return dict(
            gqa=h(x["q16"], x["k8"], x["v8"]),
            gqa_hopb=h(x["q16"], x["k8"], x["v8"], microbatches=2),
            gqa_round_robin=h(x["q16"], x["k8"][:, pos], x["v8"][:, pos], tokens_per_block=4),
            mha=h(x["q8"], x["k8"], x["v8"]),
            gqa_2kv=h(x["q16"], x["k2"], x["v2"]),  # tpa > 2 duplicates the 2 KV heads (plain-TP style)
            mla=helix_mla_attention(x["q_latent"], x["q_rope"], x["latent"], KV_LEN, mesh=lm, scale=mla_scale),
            mla_wuv=helix_mla_attention(x["q_latent"], x["q_rope"], x["latent"], KV_LEN, mesh=lm,
                                        scale=mla_scale, w_uv=x["w_uv"], microbatches=2),
        )

    out = run(x)
    ref_gqa = np_attention(x["q16"], x["k8"], x["v8"], KV_LEN)
    assert_close(out["gqa"], ref_gqa)
    np.testing.assert_array_equal(out["gqa_hopb"], out["gqa"])  # HOP-B: identical, not just close
    assert_close(out["gqa_round_robin"], ref_gqa)
    assert_close(out["mha"], np_attention(x["q8"], x["k8"], x["v8"], KV_LEN))
    assert_close(out["gqa_2kv"], np_attention(x["q16"], x["k2"], x["v2"], KV_LEN))
    ref_mla = np_mla(x["q_latent"], x["q_rope"], x["latent"], KV_LEN, mla_scale)
    assert_close(out["mla"], ref_mla)
    assert_close(out["mla_wuv"], np.einsum("bqr,qrv->bqv", ref_mla, x["w_uv"]))
    # The empty sequence (every shard's LSE = -inf) gives exactly zero, not NaN.
    for name, o in out.items():
        assert np.all(np.isfinite(o)), name
        np.testing.assert_array_equal(o[3], 0.0)


def test_mla_deepseek_dims(assert_close):
    """DeepSeek-V3 absorbed MLA: latent rank 512 + RoPE 64 shared by all heads (TPA=1 Helix and plain TP)."""
    r, dr, nq, s = 512, 64, 16, 32  # source: DeepSeek-V3 config (kv_lora_rank 512, qk_rope_head_dim 64)
    scale = (128 + dr) ** -0.5  # qk_nope_head_dim 128 + qk_rope_head_dim 64
    ql, qr, c = _normal(10, (2, nq, r)), _normal(11, (2, nq, dr)), _normal(12, (2, s, r + dr))
    kv_len = np.array([s, 9], np.int32)
    helix, tp = make_mesh(8, 1), make_mesh(1, 8)
    run = jax.jit(lambda *a: (helix_mla_attention(*a, mesh=helix, scale=scale),
                              helix_mla_attention(*a, mesh=tp, scale=scale)))
    ref = np_mla(ql, qr, c, kv_len, scale)
    for out in run(ql, qr, c, kv_len):
        assert out.shape == (2, nq, r)
        assert_close(out, ref)


def test_hopb_issues_all_to_all_before_next_attention(inputs):
    """HOP-B order in the traced program: attention(0), all-to-all(0), attention(1), all-to-all(1), with
    no dependence between all-to-all(0) and attention(1); hopb=False adds that dependence (a barrier)."""
    lm = make_mesh(4, 2)
    x = inputs

    def inner(hopb):
        jaxpr = jax.make_jaxpr(lambda q, k, v: helix_attention(q, k, v, KV_LEN, mesh=lm, microbatches=2, hopb=hopb))(
            x["q16"], x["k8"], x["v8"])
        (sm,) = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "shard_map"]
        return [e.primitive.name for e in sm.params["jaxpr"].eqns]

    for hopb in (True, False):
        names = inner(hopb)
        order = [n for n in names if n in ("dot_general", "all_to_all", "optimization_barrier")]
        barrier = [] if hopb else ["optimization_barrier"]
        assert order == ["dot_general", "dot_general", "all_to_all"] + barrier + ["dot_general", "dot_general", "all_to_all"]

    run = jax.jit(lambda q, k, v: [helix_attention(q, k, v, KV_LEN, mesh=lm, microbatches=m, hopb=h)
                                   for m, h in ((1, True), (2, True), (2, False))])
    one, overlapped, serial = run(x["q16"], x["k8"], x["v8"])
    np.testing.assert_array_equal(overlapped, one)
    np.testing.assert_array_equal(serial, one)


def test_kv_append_decode_loop_stays_exact(assert_close):
    """120 decode steps: append on one KVP rank (round-robin, 16-token blocks), attend, match the reference."""
    steps, seq, nq, nk = 120, 128, 16, 8
    lm = make_mesh(4, 2)
    kv_len0 = np.array([0, 7, 3, 5], np.int32)  # ragged prompts already cached
    prompt = np.arange(seq)[None, :, None, None] < kv_len0[:, None, None, None]
    k0, v0 = _normal(20, (B, seq, nk, D)) * prompt, _normal(21, (B, seq, nk, D)) * prompt
    qs, ks, vs = _normal(22, (steps, B, nq, D)), _normal(23, (steps, B, nk, D)), _normal(24, (steps, B, nk, D))
    pos = round_robin_positions(seq, 4, 16)

    @jax.jit
    def sharded(k, v):
        def step(carry, xs):
            k, v, n = carry
            q, kn, vn = xs
            k, v = kv_append((k, v), (kn, vn), n, mesh=lm, tokens_per_block=16)
            return (k, v, n + 1), helix_attention(q, k, v, n + 1, mesh=lm, tokens_per_block=16)

        (k, v, n), outs = jax.lax.scan(step, (k, v, jnp.asarray(kv_len0)), (qs, ks, vs))
        return k, v, n, outs

    k_st, v_st, n, outs = sharded(k0[:, pos], v0[:, pos])
    k_ref, v_ref, ref, lens = k0.copy(), v0.copy(), [], kv_len0.copy()
    for t in range(steps):
        k_ref[np.arange(B), lens], v_ref[np.arange(B), lens] = ks[t], vs[t]
        lens = lens + 1
        ref.append(np_attention(qs[t], k_ref, v_ref, lens))
    assert_close(outs, np.stack(ref))
    np.testing.assert_array_equal(n, kv_len0 + steps)
    inverse = np.argsort(pos)
    np.testing.assert_array_equal(np.asarray(k_st)[:, inverse], k_ref)  # every token stored once, in place
    np.testing.assert_array_equal(np.asarray(v_st)[:, inverse], v_ref)
    # Round-robin: KVP rank i holds the 16-token blocks i, i+4, ...: token 16·j + t on rank j % 4.
    assert pos[:16].tolist() == list(range(16)) and pos[16:32].tolist() == list(range(64, 80))
    assert pos[32:48].tolist() == list(range(16, 32))


def test_kv_append_writes_one_rank():
    lm = make_mesh(4, 2)
    cache = np.zeros((B, 128, 2, 4), np.float32)
    new = np.ones((B, 2, 4), np.float32)
    out = jax.jit(lambda c, x, n: kv_append(c, x, n, mesh=lm))(cache, new, np.array([0, 16, 47, 127], np.int32))
    written = np.argwhere(np.asarray(out[:, :, 0, 0]) == 1.0).tolist()
    # token 0 -> rank 0 slot 0; 16 -> rank 1 slot 0 (storage 32); 47 -> rank 2 slot 15 (storage 79);
    # 127 -> block 7 -> rank 3, local slot 16 + 15 (storage 96 + 31 = 127)
    assert written == [[0, 0], [1, 32], [2, 79], [3, 127]]
    with pytest.raises(ValueError, match=r"beyond the cache length seq=128"):
        kv_append(cache, new, np.array([0, 1, 2, 128], np.int32), mesh=lm)


def test_bad_shapes_name_the_numbers(inputs):
    x = inputs
    lm = make_mesh(2, 4)
    with pytest.raises(ValueError, match=r"N=kvp·tpa=2·4=8 does not divide q_heads=12"):
        helix_attention(_normal(0, (B, 12, D)), _normal(1, (B, S, 4, D)), _normal(2, (B, S, 4, D)), KV_LEN, mesh=lm)
    with pytest.raises(ValueError, match=r"tpa=4 does not divide kv_heads=6"):
        helix_attention(_normal(0, (B, 24, D)), _normal(1, (B, S, 6, D)), _normal(2, (B, S, 6, D)), KV_LEN, mesh=lm)
    with pytest.raises(ValueError, match=r"tpa=8 exceeds kv_heads=3"):
        helix_attention(_normal(0, (B, 24, D)), _normal(1, (B, S, 3, D)), _normal(2, (B, S, 3, D)), KV_LEN,
                        mesh=make_mesh(1, 8))
    with pytest.raises(ValueError, match=r"kvp=8 does not divide the cache length seq=60"):
        helix_attention(x["q16"], x["k8"][:, :60], x["v8"][:, :60], KV_LEN, mesh=make_mesh(8, 1))
    with pytest.raises(ValueError, match=r"tokens_per_block=16 does not divide the per-rank cache length seq/kvp=64/8=8"):
        helix_attention(x["q16"], x["k8"], x["v8"], KV_LEN, mesh=make_mesh(8, 1), tokens_per_block=16)
    with pytest.raises(ValueError, match=r"dp·microbatches=1·3 does not divide batch=4"):
        helix_attention(x["q16"], x["k8"], x["v8"], KV_LEN, mesh=lm, microbatches=3)
    mesh = jax.make_mesh((2, 4), ("seq", "heads"), axis_types=(AxisType.Auto,) * 2)
    with pytest.raises(ValueError, match=r"unknown mesh axis 'kvp'"):
        helix_attention(x["q16"], x["k8"], x["v8"], KV_LEN, mesh=mesh)
    with pytest.raises(ValueError, match=r"shapes disagree"):
        helix_attention(x["q16"], x["k8"], x["v8"][:, :32], KV_LEN, mesh=lm)
