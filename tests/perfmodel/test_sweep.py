"""sweep.py: enumeration validity, chunked evaluation equals a plain vmap, one compilation."""

import jax
import numpy as np
import pytest

from perfmodel import Layout, datasheet_params, get_hardware, get_model
from perfmodel.step import LayoutArrays, decode_step
from perfmodel.sweep import FAMILIES, decode_sweep, enumerate_layouts, evaluate

HW = get_hardware("gb200-nvl72")
P = datasheet_params(HW)


@pytest.mark.parametrize("name", ["tiny-dense", "tiny-moe", "llama-3.1-8b"])
def test_every_enumerated_layout_is_valid(name):
    model = get_model(name)
    lay, fam = enumerate_layouts(model, max_gpus=16, batches=[1, 2, 4, 8, 12], pp_options=(1, 2),
                                 microbatch_modes=("none", "per_request", "pow2"), hopb_options=(1.0, 0.0))
    cols = np.stack([np.asarray(x) for x in lay], axis=1).astype(int).tolist()
    assert len(set(map(tuple, cols))) == len(cols)  # no duplicates
    for row, f in zip(cols, fam):
        tpa, kvp, d, tpf, ep, pp, dp, b, mb, chunk, hopb = row[:11]  # Python ints
        if f == "medha":
            assert tpf == tpa and kvp > 1 and ep == 1
            continue
        even = b % (d * min(pp, b)) == 0 and (b // (d * min(pp, b))) % mb == 0
        layout = Layout(tpa=tpa, kvp=kvp, dp_attn=d, tpf=tpf, ep=ep, pp=1, dp=dp,
                        batch=b if even else d * mb, microbatches=mb, hopb=bool(hopb))
        layout.check_model(model)  # raises on an invalid layout (uneven batches: checked on a proxy)
        assert f == ("helix" if kvp > 1 else "tp" if d == 1 else "dp_ep")
    assert set(fam) <= set(FAMILIES)


def test_enumeration_errors():
    with pytest.raises(ValueError, match="unknown families"):
        enumerate_layouts(get_model("tiny-dense"), max_gpus=8, batches=[1], families=("ring",))
    with pytest.raises(ValueError, match="microbatch_modes"):
        enumerate_layouts(get_model("tiny-dense"), max_gpus=8, batches=[1], microbatch_modes=("all",))


def test_chunked_evaluation_matches_vmap_and_compiles_once():
    model = get_model("llama-3.1-70b")
    lay, _ = enumerate_layouts(model, max_gpus=64, batches=list(range(1, 65)), pp_options=(1, 2))
    n = len(lay.tpa)
    compiles = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, *_a, **_k: compiles.append(event) if event == "/jax/core/compile/backend_compile_duration" else None)
    fn = lambda l: decode_step(model, HW, P, l, 8192.0).time_s  # noqa: E731
    got = evaluate(fn, lay, chunk=2048, workers=2)
    n_compiles = len(compiles)
    want = np.asarray(jax.jit(jax.vmap(fn))(jax.tree.map(np.asarray, lay)))
    assert n > 3 * 2048 and n_compiles == 1  # several chunks, one compilation
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_decode_sweep_fields():
    model = get_model("tiny-moe")
    lay, _ = enumerate_layouts(model, max_gpus=8, batches=[1, 8])
    r = decode_sweep(model, HW, P, lay, 128.0, chunk=1024)
    assert set(r) == {"ttl_s", "tokens_per_s_per_user", "tokens_per_s_per_gpu", "fits", "mem_ratio", "comm_s"}
    np.testing.assert_allclose(r["tokens_per_s_per_user"] * r["ttl_s"], 1.0, rtol=1e-6)
    assert r["fits"].all()


def test_evaluate_pairs_of_layouts_pads_the_last_chunk():
    """[n, 2] fields read from a transposed view (what bench_sweep passes), a float and a bool
    output, n not a multiple of the chunk: every point equals a plain vmap over the pairs."""
    model = get_model("llama-3.1-8b")
    lay, _ = enumerate_layouts(model, max_gpus=16, batches=[1, 3, 8, 33])
    n = len(lay.tpa)
    rng = np.random.default_rng(0)
    swap = rng.permutation(n)
    pairs = LayoutArrays(*(np.stack([np.asarray(x), np.asarray(x)[swap]]).T for x in lay))  # [n, 2] views

    def fn(p):
        pf, dc = LayoutArrays(*(x[0] for x in p)), LayoutArrays(*(x[1] for x in p))
        t = decode_step(model, HW, P, dc, 4096.0).time_s + decode_step(model, HW, P, pf, 512.0).time_s
        return {"t": t, "big": pf.batch > dc.batch}

    got = evaluate(fn, pairs, chunk=1000, workers=2)
    want = jax.jit(jax.vmap(fn))(jax.tree.map(np.asarray, pairs))
    assert n % 1000 and got["big"].dtype == bool and got["t"].shape == (n,)
    np.testing.assert_array_equal(got["big"], np.asarray(want["big"]))
    np.testing.assert_allclose(got["t"], np.asarray(want["t"]), rtol=1e-6)
    with pytest.raises(ValueError, match="must all be"):
        evaluate(fn, pairs._replace(tpa=pairs.tpa[:-1]))
