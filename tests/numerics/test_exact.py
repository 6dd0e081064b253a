"""Bit-exactness of quantize / dequantize / fake_quantize against an independent numpy reference.

The reference follows the spec text, not the implementation: the shared exponent comes from
`np.frexp` of the float64 block maximum (rule "rceil": a float64 log2 estimate corrected by exact
comparisons), V/X is formed in float64, and elements are rounded by ml_dtypes casts (ties to even) or
by nearest-neighbour search on the format's grid enumerated from ml_dtypes bit patterns (ties away).
Conventions of the project that the reference states explicitly: f32 subnormal inputs count as zero
(DAZ); dequantized values below 2^-126 are flushed to ±0 (XLA CPU); a block with NaN/Inf has scale
byte 0xFF, zero codes and dequantizes to NaN.

References: OCP MX v1.0 §6.3 (conversion), §5.3 (element formats), §5.4 (E8M0).
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import numerics

F32_TINY = float(np.finfo(np.float32).tiny)  # 2^-126
ML_TYPES = {
    "mxfp8_e4m3": ml_dtypes.float8_e4m3fn,
    "mxfp8_e5m2": ml_dtypes.float8_e5m2,
    "mxfp6_e3m2": ml_dtypes.float6_e3m2fn,
    "mxfp6_e2m3": ml_dtypes.float6_e2m3fn,
    "mxfp4_e2m1": ml_dtypes.float4_e2m1fn,
}
MX_FORMATS = (*ML_TYPES, "mxint8")
BLOCK = 32  # source: OCP MX v1.0 Table 1, k = 32 for every concrete MX format
INT8_MAX = 127 / 64  # source: OCP MX v1.0 §5.3.4 (INT8 with implicit scale 2^-6)


# ------------------------------------------------------------------------------------------------
# Reference (numpy + ml_dtypes)


def _elem_params(name):
    """(max_normal, emax) read from ml_dtypes.finfo, not from numerics."""
    if name == "mxint8":
        return INT8_MAX, 0
    fi = ml_dtypes.finfo(ML_TYPES[name])
    return float(fi.max), int(fi.maxexp) - 1


def _grid(name):
    """Sorted non-negative finite values of the element format, from its bit patterns."""
    if name == "mxint8":
        return np.arange(128) / 64.0
    t = ML_TYPES[name]
    nbits = ml_dtypes.finfo(t).bits
    vals = np.arange(2 ** (nbits - 1), dtype=np.uint8).view(t).astype(np.float64)
    return np.unique(vals[np.isfinite(vals)])


def _round_grid(v, grid, away):
    """Nearest grid value with saturation; ties away from zero or to the even grid index."""
    a = np.minimum(np.nan_to_num(np.abs(v)), grid[-1])  # NaN blocks are masked by the caller
    hi_i = np.searchsorted(grid, a, side="left")
    lo_i = np.maximum(hi_i - 1, 0)
    lo, hi = grid[lo_i], grid[hi_i]
    d_lo, d_hi = a - lo, hi - a
    tie_hi = away if away else (hi_i % 2 == 0)
    mag = np.where((d_hi < d_lo) | ((d_hi == d_lo) & tie_hi), hi, lo)
    return np.copysign(mag, v)


def _daz(x):
    x = np.asarray(x, np.float32)
    return np.where(np.abs(x) < F32_TINY, np.copysign(np.float32(0), x), x)


def _ftz(y64):
    with np.errstate(over="ignore"):  # rceil: a block max near float32 max may round up to 2^128
        y = np.asarray(y64, np.float64).astype(np.float32)
    return np.where(np.abs(y) < F32_TINY, np.copysign(np.float32(0), y), y)


def _blocks(x, axis, block):
    """x (float32) → (blocks [..., nb, block] with the axis moved last, zero-padded)."""
    xm = np.moveaxis(x, axis, -1)
    n = xm.shape[-1]
    nb = -(-n // block)
    xp = np.zeros(xm.shape[:-1] + (nb * block,), np.float32)
    xp[..., :n] = xm
    return xp.reshape(xm.shape[:-1] + (nb, block)), n


def _unblock(b, axis, n):
    out = b.reshape(b.shape[:-2] + (-1,))[..., :n]
    return np.moveaxis(out, -1, axis)


def ref_mx(x, name, axis=-1, rule="floor", rounding="even"):
    """OCP MX v1.0 §6.3. Returns (element values in element units [padded blocks], scale bytes, dequant)."""
    with np.errstate(invalid="ignore"):  # signalling-NaN bit patterns of the exhaustive test
        xb, n = _blocks(_daz(x), axis, BLOCK)
        xb = xb.astype(np.float64)
    max_normal, emax = _elem_params(name)
    nonfinite = ~np.all(np.isfinite(xb), axis=-1, keepdims=True)
    amax = np.max(np.abs(np.where(nonfinite, 0, xb)), axis=-1, keepdims=True)
    safe = np.where(amax > 0, amax, 1.0)
    if rule == "floor":
        s = np.frexp(safe)[1] - 1 - emax  # frexp mantissa in [0.5, 1): floor(log2 amax) = e − 1
    else:  # smallest s with amax ≤ max_normal · 2^s
        s = np.ceil(np.log2(safe / max_normal)).astype(np.int64)
        s = np.where(np.ldexp(max_normal, s - 1) >= safe, s - 1, s)
        s = np.where(np.ldexp(max_normal, s) < safe, s + 1, s)
    s = np.clip(np.where(amax > 0, s, -1000), -127, 127)
    v = np.ldexp(xb, -s)
    if name == "mxint8":
        vals = _round_grid(v, _grid(name), away=True) if rounding == "away" else np.clip(np.rint(v * 64), -127, 127) / 64
        vals = vals + 0.0  # a two's complement integer has no −0
    elif rounding == "away":
        vals = _round_grid(v, _grid(name), away=True)
    else:  # v has ≤ 24 significant bits: the float32 step is exact in the range that can round to non-zero
        vals = np.clip(v, -max_normal, max_normal).astype(np.float32).astype(ML_TYPES[name]).astype(np.float64)
    vals = np.where(nonfinite, 0.0, vals)
    scale_bytes = np.where(nonfinite, 255, s + 127).astype(np.uint8)[..., 0]
    deq = np.where(nonfinite, np.nan, _ftz(np.ldexp(vals, s)))
    return vals, np.moveaxis(scale_bytes, -1, axis % x.ndim), _unblock(deq, axis, n)


def ref_nvfp4(x, axis=-1):
    """NVFP4: s_t = max(amax/(6·448), 2^-126), s_b = E4M3(amax_b / 6 / s_t), codes = E2M1(x · (1 / (s_b · s_t)))."""
    xb, n = _blocks(_daz(x), axis, 16)
    nonfinite = ~np.all(np.isfinite(xb), axis=-1, keepdims=True)
    amax_b = np.max(np.abs(np.where(nonfinite, 0, xb)), axis=-1, keepdims=True)
    amax_t = np.max(amax_b).astype(np.float32)  # over the blocks free of NaN/Inf
    s_t = np.float32(1) if amax_t == 0 else max(amax_t / np.float32(6 * 448), np.float32(F32_TINY))
    with np.errstate(divide="ignore", invalid="ignore"):
        s_b = np.minimum(amax_b / np.float32(6) / s_t, np.float32(448)).astype(ml_dtypes.float8_e4m3fn)
    x_b = _ftz(s_b.astype(np.float32) * s_t)  # the float32 scale products are flushed like XLA CPU
    enc = np.where(x_b == 0, np.float32(0), np.float32(1) / np.where(x_b == 0, np.float32(1), x_b))
    with np.errstate(invalid="ignore"):
        y = np.where(nonfinite, np.float32(0), xb * enc)  # encode scale 1/X_b, rounded to float32
    codes = np.clip(y, -6, 6).astype(ml_dtypes.float4_e2m1fn)
    deq = np.where(nonfinite, np.nan, _ftz(codes.astype(np.float32) * x_b))
    return codes, s_b, s_t, _unblock(deq, axis, n)


def ref_fp8_tensor(x):
    x = _daz(x)
    fin = np.isfinite(x)
    amax = np.max(np.abs(np.where(fin, x, 0))).astype(np.float32)
    s_t = np.float32(1) if amax == 0 else max(amax / np.float32(448), np.float32(F32_TINY))
    codes = np.where(fin, np.clip(x * (np.float32(1) / s_t), -448, 448), np.nan).astype(ml_dtypes.float8_e4m3fn)
    return codes, s_t, _ftz(codes.astype(np.float32) * s_t)


# ------------------------------------------------------------------------------------------------
# Test data: named groups of rows of 96 elements (3 MX blocks, 6 NVFP4 blocks).

W = 96


def _rows(a):
    a = np.asarray(a, np.float32).ravel()
    a = np.concatenate([a, np.zeros((-a.size) % W, np.float32)])
    return a.reshape(-1, W)


def _ties(name):
    """Every tie of the element grid (and the saturating tie above max), in blocks whose max pins s = 0."""
    grid = _grid(name)
    mids = (grid[:-1] + grid[1:]) / 2
    step_top = grid[-1] - grid[-2]
    mids = np.concatenate([mids, [grid[-1] + step_top / 2]])
    vals = np.concatenate([mids, -mids])
    per = BLOCK - 1
    vals = np.concatenate([vals, np.zeros((-vals.size) % per)]).reshape(-1, per)
    blocks = np.concatenate([np.full((vals.shape[0], 1), grid[-1]), vals], axis=1)
    return np.concatenate([blocks * 2.0**k for k in (-100, -30, 0, 30, 100)])


def _saturating(name, rng):
    """Block maxima whose mantissa exceeds the element's largest one."""
    max_normal, emax = _elem_params(name)
    top = max_normal / 2.0**emax
    mants = [(top + 2) / 2, 2 - 2.0**-23, np.nextafter(np.float32(top), np.float32(2))]
    rows = []
    for k in (-90, -3, 0, 5, 90):
        b = rng.standard_normal((len(mants), BLOCK)) * 2.0 ** (k - 2)
        b[:, 7] = np.asarray(mants) * 2.0**k * np.array([1, -1, 1])
        rows.append(b)
    return np.concatenate(rows)


def _near_pow2(rng):
    """Block maxima 1–4 ulps below a power of two (float32 log2 rounds them up)."""
    rows = []
    for k in (-60, -1, 0, 3, 8, 61):
        for i in range(1, 5):
            b = rng.uniform(-1, 1, BLOCK) * 2.0 ** (k - 1)
            b[3] = np.float32(2.0**k) - i * np.float32(2.0 ** (k - 24))
            rows.append(b)
    return np.stack(rows)


def _specials():
    """Zero blocks, NaN, ±Inf, E8M0 clamping at both ends, subnormal inputs."""
    blocks = [np.zeros(BLOCK), np.full(BLOCK, -0.0)]
    b = np.linspace(-1, 1, BLOCK); b[5] = np.nan; blocks.append(b)
    b = np.linspace(-1, 1, BLOCK); b[9] = np.inf; blocks.append(b)
    b = np.linspace(-1, 1, BLOCK); b[0] = -np.inf; blocks.append(b)
    for k in (-126, -125, -122, -119, -110):  # E8M0 lower clamp: floor(log2 amax) − emax < −127
        blocks.append(np.linspace(-1, 1.5, BLOCK) * 2.0**k)
    f32max = float(np.finfo(np.float32).max)
    blocks.append(np.linspace(-f32max, f32max, BLOCK))  # upper end (s = 127 for MXINT8)
    blocks.append(np.linspace(-1, 1, BLOCK) * 2.0**127 * 1.999)
    sub = np.linspace(-1, 1, BLOCK) * 2.0**-130  # f32 subnormals: treated as zero
    blocks.append(sub)
    top_sub = np.array([0x007FFFFF, 0x807FFFF0, 0x00400000], np.uint32).view(np.float32)  # largest subnormals
    blocks.append(np.resize(top_sub, BLOCK))
    mixed = np.linspace(-1, 1, BLOCK) * 2.0**-120; mixed[::4] = sub[::4]
    blocks.append(mixed)
    return np.stack(blocks)


def data_groups(name, seed=0):
    rng = np.random.default_rng(seed)
    sign = lambda n: rng.choice([-1.0, 1.0], n)  # noqa: E731
    groups = {
        "normal": rng.standard_normal((4, W)),
        "uniform": rng.uniform(-3, 3, (4, W)),
        "log_uniform_2^-100..2^100": sign(4 * W) * 2.0 ** rng.uniform(-100, 100, 4 * W),
        "log_normal": sign(4 * W) * 2.0 ** np.clip(rng.normal(0, 35, 4 * W), -100, 100),
        "block_scaled_2^-100..2^100": rng.standard_normal((12, BLOCK)) * 2.0 ** rng.integers(-100, 101, (12, 1)),
        "ties": _ties(name) if name in MX_FORMATS else np.zeros(W),
        "saturation": _saturating(name, rng) if name in MX_FORMATS else np.zeros(W),
        "near_pow2": _near_pow2(rng),
        "specials": _specials(),
    }
    rows, where = [], {}
    for g, a in groups.items():
        r = _rows(a)
        where[g] = (sum(len(x) for x in rows), sum(len(x) for x in rows) + len(r))
        rows.append(r)
    return np.concatenate(rows), where


def _bits_equal(a, b):
    """Bit equality of float32 arrays, NaN == NaN."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return (a.view(np.uint32) == b.view(np.uint32)) | (np.isnan(a) & np.isnan(b))


def _report(ok, where, axis):
    bad_rows = np.nonzero(~np.all(ok, axis=1 if axis in (-1, 1) else 0))[0]
    groups = sorted({g for g, (a, b) in where.items() for r in bad_rows if a <= r < b})
    return f"{len(bad_rows)} rows differ, groups {groups}"


def _codes_as_values(q, name):
    c = np.asarray(q.codes)
    if name == "mxint8":
        return c.astype(np.float64) / 64
    return c.view(np.uint8).view(ML_TYPES[name]).astype(np.float64)


# ------------------------------------------------------------------------------------------------
# Tests


@pytest.mark.parametrize("name", MX_FORMATS)
@pytest.mark.parametrize("rule, rounding", [("floor", "even"), ("rceil", "even"), ("floor", "away")])
def test_mx_bit_exact(name, rule, rounding):
    x, where = data_groups(name)
    vals, scale_bytes, deq = ref_mx(x, name, -1, rule, rounding)
    q = numerics.quantize(x, name, scale_rule=rule, rounding=rounding)
    assert q.scales.dtype == np.uint8
    np.testing.assert_array_equal(np.asarray(q.scales), scale_bytes)
    got_vals = _codes_as_values(q, name).reshape(vals.shape)
    ok_codes = (got_vals == vals) & (np.signbit(got_vals) == np.signbit(vals) if name != "mxint8" else True)
    assert ok_codes.all(), "codes: " + _report(ok_codes.reshape(x.shape[0], -1), where, -1)
    fq = np.asarray(numerics.fake_quantize(x, name, scale_rule=rule, rounding=rounding))
    ok = _bits_equal(fq, deq)
    assert ok.all(), "fake_quantize: " + _report(ok, where, -1)
    assert _bits_equal(numerics.dequantize(q), fq).all(), "dequantize(quantize(x)) != fake_quantize(x)"


@pytest.mark.parametrize("name", MX_FORMATS)
def test_mx_axis0_and_padding(name):
    x, where = data_groups(name, seed=1)
    xt = np.ascontiguousarray(x.T[:, :37])  # axis 0 blocks; 37 columns, so rows alone are padded too
    _, scale_bytes, deq = ref_mx(xt, name, 0)
    q = numerics.quantize(xt, name, axis=0)
    assert q.codes.shape == (-(-xt.shape[0] // BLOCK) * BLOCK, 37)
    np.testing.assert_array_equal(np.asarray(q.scales), scale_bytes)
    fq = numerics.fake_quantize(xt, name, axis=0)
    assert fq.shape == xt.shape and _bits_equal(fq, deq).all()
    assert _bits_equal(numerics.dequantize(q), deq).all()
    # Padded lengths on other axes and ranks; each case runs for two of the six formats.
    cases = (((3, 33), -1), ((70,), 0), ((2, 45, 3), 1), ((5, 1), -1), ((40, 3), 0), ((2, 3, 31), 2))
    i = MX_FORMATS.index(name)
    for shape, axis in (cases[i], cases[(i + 3) % len(cases)]):
        xs = data_groups(name, seed=2)[0].ravel()[: int(np.prod(shape))].reshape(shape)
        _, _, deq = ref_mx(xs, name, axis)
        q = numerics.quantize(xs, name, axis=axis)
        assert q.shape == shape and _bits_equal(numerics.dequantize(q), deq).all(), (shape, axis)


def test_mx_scale_from_bits_below_powers_of_two():
    # amax = 2^k − i ulp: floor(log2 amax) = k − 1, while float32 log2 rounds to k.
    for k in (-60, 0, 3, 61):
        for i in (1, 2, 3):
            amax = np.float32(2.0**k) - i * np.float32(2.0 ** (k - 24))
            if abs(k) > 8:
                assert np.floor(np.log2(amax)) == k  # the trap: float32 log2 rounds up to k
            x = np.zeros((1, BLOCK), np.float32)
            x[0, 0] = amax
            q = numerics.quantize(x, "mxfp8_e4m3")
            assert int(q.scales[0, 0]) == (k - 1) - 8 + 127


@pytest.mark.parametrize("name", MX_FORMATS)
def test_mx_saturation_floor_vs_rceil(name):
    max_normal, emax = _elem_params(name)
    top = max_normal / 2.0**emax
    x = np.full((1, BLOCK), 0.25, np.float32)
    x[0, 0] = (top + 2) / 2 * 2.0**emax  # mantissa above the largest element mantissa
    floor = np.asarray(numerics.fake_quantize(x, name))
    rceil = np.asarray(numerics.fake_quantize(x, name, scale_rule="rceil"))
    assert floor[0, 0] == max_normal  # saturated: X = 1
    assert rceil[0, 0] >= x[0, 0] * (1 - 2.0**-3) and rceil[0, 0] != max_normal  # X = 2, no saturation


@pytest.mark.parametrize("arrangement", ["sequential", "permuted"])
def test_exhaustive_bf16_through_every_mx_format(arrangement):
    """All 65,536 bf16 bit patterns, in blocks of 32, through every MX format and scale rule."""
    bits = np.arange(2**16, dtype=np.uint16)
    if arrangement == "permuted":
        bits = np.random.default_rng(0).permutation(bits)
    x = bits.view(ml_dtypes.bfloat16).astype(np.float32).reshape(-1, BLOCK)
    assert np.isnan(x).sum() == 2 * 127 and np.isinf(x).sum() == 2
    for name in MX_FORMATS:
        for rule in ("floor", "rceil"):
            vals, scale_bytes, deq = ref_mx(x, name, -1, rule)
            q = numerics.quantize(x, name, scale_rule=rule)
            np.testing.assert_array_equal(np.asarray(q.scales), scale_bytes, err_msg=f"{name} {rule}")
            got = _codes_as_values(q, name).reshape(vals.shape)
            assert np.array_equal(got, vals), f"{name} {rule}: codes"
            fq = numerics.fake_quantize(x, name, scale_rule=rule)
            assert _bits_equal(fq, deq).all(), f"{name} {rule}: values"


def test_nvfp4_bit_exact():
    x, where = data_groups("nvfp4")
    x = np.concatenate([x, _rows(np.array([np.nan, 1, 2, -np.inf] + [0.5] * 28))])
    tiny = _rows(_specials()[5:10])  # a tensor with amax ≈ 2^-110: subnormal scale products, flushed
    assert _bits_equal(numerics.fake_quantize(tiny, "nvfp4"), ref_nvfp4(tiny)[3]).all()
    codes, s_b, s_t, deq = ref_nvfp4(x)
    q = numerics.quantize(x, "nvfp4")
    np.testing.assert_array_equal(np.asarray(q.codes).view(np.uint8), codes.reshape(q.codes.shape).view(np.uint8))
    got_sb = np.asarray(q.scales).view(np.uint8)
    want_sb = np.where(np.isnan(deq.reshape(x.shape[0], -1, 16)[..., 0]), np.uint8(0x7F), s_b[..., 0].view(np.uint8))
    np.testing.assert_array_equal(got_sb, want_sb)
    assert np.asarray(q.tensor_scale) == s_t
    fq = numerics.fake_quantize(x, "nvfp4")
    ok = _bits_equal(fq, deq)
    assert ok.all(), _report(ok, where, -1)
    assert _bits_equal(numerics.dequantize(q), fq).all()
    # Every E2M1 tie inside a block whose scale is exact (s_t = 1, s_b = 2).
    grid = _grid("mxfp4_e2m1")
    mids = (grid[:-1] + grid[1:]) / 2
    t = np.zeros((1, 48), np.float32)
    t[0, 0] = 6 * 448  # tensor amax → s_t = 1
    t[0, 16], t[0, 17:17 + len(mids)] = 12.0, mids * 2  # block max 12 → s_b = 2
    t[0, 32], t[0, 33:33 + len(mids)] = -12.0, -mids * 2
    want = ref_nvfp4(t)[3]
    assert _bits_equal(numerics.fake_quantize(t, "nvfp4"), want).all()
    assert np.array_equal(want[0, 17:19], [0.0, 2.0])  # 0.25 → 0 (even), 0.75 → 1 (even) in units of s_b


def test_fp8_per_tensor_and_bf16_bit_exact():
    x, _ = data_groups("fp8_e4m3")
    x = np.concatenate([x[:8], _rows(np.array([np.nan, np.inf, -np.inf, 3.0]))])
    tiny = _rows(_specials()[5:10])  # amax ≈ 2^-110: amax / 448 is floored at 2^-126
    assert _bits_equal(numerics.fake_quantize(tiny, "fp8_e4m3"), ref_fp8_tensor(tiny)[2]).all()
    codes, s_t, deq = ref_fp8_tensor(x)
    q = numerics.quantize(x, "fp8_e4m3")
    np.testing.assert_array_equal(np.asarray(q.codes).view(np.uint8), codes.view(np.uint8))
    assert np.asarray(q.tensor_scale) == s_t
    assert _bits_equal(numerics.fake_quantize(x, "fp8_e4m3"), deq).all()
    assert _bits_equal(numerics.dequantize(q), deq).all()
    xb, _ = data_groups("bf16")
    want = _daz(xb).astype(ml_dtypes.bfloat16)
    q = numerics.quantize(xb, "bf16")
    np.testing.assert_array_equal(np.asarray(q.codes).view(np.uint16), want.view(np.uint16))
    assert _bits_equal(numerics.fake_quantize(xb, "bf16"), want.astype(np.float32)).all()


def test_fp32_is_identity():
    x, _ = data_groups("fp32")
    assert _bits_equal(numerics.fake_quantize(x, "fp32"), x).all()
    assert _bits_equal(numerics.dequantize(numerics.quantize(x, "fp32")), x).all()
