"""Decoder layer (Helix attention + TP / TPF×EP FFN) and the baselines, against the single-device layer;
collective bytes of a Helix layer against the closed form of paper §2.1.2."""

import jax
import numpy as np
import pytest

from parallel import collective_bytes, decoder_layer, export_weights, make_mesh, make_plan, reference_layer
from parallel.helix import round_robin_positions
from parallel.layer import cache_shapes
from perfmodel.specs import Layout

B, S, BLOCK = 8, 64, 4
KV_LEN = np.array([5, 0, 12, 33, 63, 17, 1, 8], np.int32)  # ragged; row 1 is a first token (empty cache)

# (spec, layout, what it covers)
CASES = {
    "helix-dense-2x4": ("gqa", Layout(kvp=2, tpa=4, tpf=8, batch=B)),
    "helix-dense-4x2-hopb": ("gqa", Layout(kvp=4, tpa=2, tpf=8, batch=B, microbatches=2)),
    "helix-moe-4x2-tpf2-ep4": ("moe", Layout(kvp=4, tpa=2, tpf=2, ep=4, batch=B)),
    "helix-mla-8x1": ("mla", Layout(kvp=8, tpa=1, tpf=8, batch=B)),
    "baseline-tp8-kv-duplication": ("gqa2", Layout(kvp=1, tpa=8, tpf=8, batch=B)),
    "baseline-dp-attention-ep8": ("moe", Layout(dp_attn=8, ep=8, tpf=1, batch=B)),
    "baseline-dp2-helix-2x2": ("mla", Layout(dp_attn=2, kvp=4, tpa=1, tpf=8, batch=B)),
}

_compiled, _weights = {}, {}


def _layer_inputs(spec, random_model):
    if spec not in _weights:
        _weights[spec] = export_weights(random_model(spec)).layers[0]
    rng = np.random.default_rng(1)
    x = rng.standard_normal((B, spec.hidden)).astype(np.float32)
    shapes = cache_shapes(spec, make_mesh(1, 1, devices=jax.devices()[:1]), batch=B, seq=S)
    caches = tuple(rng.standard_normal(s).astype(np.float32) for s in shapes)  # token order
    return _weights[spec], x, caches


def _run(name, specs, random_model):
    """Compile the sharded layer once per case; returns (outputs, compiled, plan)."""
    if name not in _compiled:
        spec_name, layout = CASES[name]
        spec = specs[spec_name]
        lm = make_mesh(layout)
        plan = make_plan(spec, lm, batch=B, seq=S, tokens_per_block=BLOCK, microbatches=layout.microbatches)
        w, x, caches = _layer_inputs(spec, random_model)
        pos = round_robin_positions(S, layout.kvp, BLOCK)
        stored = tuple(c[:, pos] for c in caches)
        if not spec.is_mla and layout.tpa > spec.n_kv_heads:  # plain TP stores each KV head tpa/K times
            stored = tuple(np.repeat(c, layout.tpa // spec.n_kv_heads, axis=2) for c in stored)
        fn = jax.jit(lambda x, w, c, n: decoder_layer(x, w, c, n, plan=plan))
        compiled = fn.lower(x, w, stored, KV_LEN).compile()
        _compiled[name] = (compiled(x, w, stored, KV_LEN), compiled, plan, pos)
    return _compiled[name]


@pytest.fixture(scope="module")
def references(specs, random_model):
    """Single-device layer step per spec (token-order caches), jitted once per spec."""
    ref = jax.jit(reference_layer, static_argnums=4)
    out = {}
    for spec_name in {s for s, _ in CASES.values()}:
        w, x, caches = _layer_inputs(specs[spec_name], random_model)
        out[spec_name] = ref(x, w, caches, KV_LEN, specs[spec_name])
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_layer_matches_single_device(name, specs, references, assert_close, random_model):
    spec_name, layout = CASES[name]
    (x_out, caches), _, _, pos = _run(name, specs, random_model)
    x_ref, caches_ref = references[spec_name]
    assert_close(x_out, x_ref)
    inverse = np.argsort(pos)
    for c, c_ref in zip(caches, caches_ref):
        c = np.asarray(c)[:, inverse]
        if c.ndim == 4 and c.shape[2] > c_ref.shape[2]:  # duplicated KV heads: every copy equals its head
            rep = c.shape[2] // c_ref.shape[2]
            for j in range(rep):
                assert_close(c[:, :, j::rep], c_ref)
        else:
            assert_close(c, c_ref)


@pytest.mark.parametrize("name", ["helix-dense-2x4", "helix-dense-4x2-hopb", "helix-moe-4x2-tpf2-ep4"])
def test_helix_layer_collective_bytes_closed_form(name, specs, random_model):
    """Paper §2.1.2: the all-to-all sends (KVP−1)·B·H/N activations + LSE statistics per device;
    W_O and the FFN each end in an all-reduce of the [B, H] activations (ring: 2·(N−1)/N of it)."""
    spec_name, layout = CASES[name]
    spec = specs[spec_name]
    _, compiled, _, _ = _run(name, specs, random_model)
    kvp, n, f32 = layout.kvp, layout.kvp * layout.tpa, 4
    attn_hidden = spec.n_heads * spec.v_dim  # H of the attention output (Q·Dv)
    all_to_all = (kvp - 1) * B * attn_hidden // n * f32 + (kvp - 1) * B * spec.n_heads // n * f32  # + LSE
    all_reduce = 2 * (2 * (n - 1) / n * B * spec.hidden * f32)
    got = collective_bytes(compiled)
    assert got == {"all-to-all": all_to_all, "all-reduce": all_reduce, "all-gather": 0.0,
                   "reduce-scatter": 0.0, "collective-permute": 0.0}


def test_dp_attention_ep_collectives(specs, random_model):
    """DP attention + EP: no all-to-all; the FFN gathers the batch and reduce-scatters it back."""
    _, compiled, _, _ = _run("baseline-dp-attention-ep8", specs, random_model)
    got = collective_bytes(compiled)
    n, h = 8, specs["moe"].hidden
    assert got["all-to-all"] == 0.0 and got["all-reduce"] == 0.0  # group-size-1 psums move nothing
    assert got["all-gather"] == (n - 1) / n * B * h * 4
    assert got["reduce-scatter"] == (n - 1) * (B // n) * h * 4


def test_layout_errors_name_the_numbers(specs, random_model):
    with pytest.raises(ValueError, match=r"tpa=4 exceeds n_kv_heads=2 of tiny-gqa-2kv: .*\(kvp=2\)"):
        make_plan(specs["gqa2"], make_mesh(Layout(kvp=2, tpa=4, tpf=8, batch=B)), batch=B, seq=S)
    with pytest.raises(ValueError, match=r"ep=8 needs an MoE model"):
        make_plan(specs["gqa"], make_mesh(Layout(dp_attn=8, ep=8, tpf=1, batch=B)), batch=B, seq=S)
    with pytest.raises(ValueError, match=r"ep=3 does not divide n_experts=8"):
        make_plan(specs["moe"], make_mesh(Layout(kvp=2, tpa=1, tpf=2, ep=3, dp_attn=3, batch=6),
                                          devices=jax.devices()[:6]), batch=6, seq=S)
    w, x, caches = _layer_inputs(specs["moe"], random_model)
    bad = w._replace(ffn=w.ffn._replace(w_gate=w.ffn.w_gate[:, :, :12], w_up=w.ffn.w_up[:, :, :12],
                                        w_down=w.ffn.w_down[:, :12]))
    plan_tpf = make_plan(specs["moe"], make_mesh(Layout(kvp=2, tpa=4, tpf=8, ep=1, batch=B)), batch=B, seq=S)
    with pytest.raises(ValueError, match=r"tpf=8 does not divide expert_ffn=12"):
        decoder_layer(x, bad, caches, KV_LEN, plan=plan_tpf)


def test_sharded_ffn_tpf_ep(specs, random_model, assert_close):
    """The FFN alone on TPF=2 × EP=4 (split mesh axes: kvp=8 viewed as 4 × 2) equals the reference."""
    from parallel import sharded_ffn
    from parallel.ffn import ffn_reference

    w, x, _ = _layer_inputs(specs["moe"], random_model)
    lm = make_mesh(Layout(kvp=8, tpa=1, tpf=2, ep=4, batch=B))
    out = jax.jit(lambda x, w: sharded_ffn(x, w, mesh=lm, top_k=2))(x, w.ffn)
    assert_close(out, jax.jit(lambda x, w: ffn_reference(x, w, top_k=2))(x, w.ffn))
