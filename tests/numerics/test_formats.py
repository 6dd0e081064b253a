"""Format constants against ml_dtypes.finfo and the spec; bits per element; format lookup errors."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import numerics
from numerics import formats as F

FP_ELEMENTS = [
    (F.E4M3, ml_dtypes.float8_e4m3fn),
    (F.E5M2, ml_dtypes.float8_e5m2),
    (F.E3M2, ml_dtypes.float6_e3m2fn),
    (F.E2M3, ml_dtypes.float6_e2m3fn),
    (F.E2M1, ml_dtypes.float4_e2m1fn),
    (F.BF16, ml_dtypes.bfloat16),
    (F.FP32, np.float32),
]


@pytest.mark.parametrize("elem, dtype", FP_ELEMENTS, ids=[e.name for e, _ in FP_ELEMENTS])
def test_element_constants_match_ml_dtypes(elem, dtype):
    fi = ml_dtypes.finfo(dtype)
    assert elem.max_normal == float(fi.max)
    assert elem.min_normal == float(fi.smallest_normal)
    assert elem.min_subnormal == float(fi.smallest_subnormal)
    assert elem.emax == fi.maxexp - 1
    assert elem.emin == fi.minexp
    assert elem.mbits == fi.nmant
    assert elem.ebits == fi.nexp
    assert elem.bits == fi.bits
    assert elem.dtype is dtype


def test_spec_table_constants():
    # source: OCP MX v1.0 Tables 2-4 (max normal, emax) and §5.3.4 (INT8, implicit scale 2^-6)
    assert [(e.max_normal, e.emax) for e in (F.E4M3, F.E5M2, F.E3M2, F.E2M3, F.E2M1)] == [
        (448.0, 8), (57344.0, 15), (28.0, 4), (7.5, 2), (6.0, 2)]
    assert F.INT8.max_normal == 127 / 64 and F.INT8.min_subnormal == 2.0**-6 and F.INT8.emax == 0
    assert [e.max_mantissa for e in (F.E4M3, F.E5M2, F.E3M2, F.E2M3, F.E2M1)] == [1.75, 1.75, 1.75, 1.875, 1.5]
    e8m0 = ml_dtypes.finfo(ml_dtypes.float8_e8m0fnu)
    assert (F.E8M0.emin, F.E8M0.emax) == (e8m0.minexp, e8m0.maxexp - 1) == (-127, 127)
    assert F.E4M3_SCALE.dtype is ml_dtypes.float8_e4m3fn


def test_format_names_and_lookup():
    assert numerics.FORMAT_NAMES == ("mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e3m2", "mxfp6_e2m3", "mxfp4_e2m1",
                                     "mxint8", "nvfp4", "fp8_e4m3", "bf16", "fp32")
    for name in numerics.FORMAT_NAMES:
        fmt = numerics.get_format(name)
        assert fmt.name == name and numerics.get_format(fmt) is fmt
    assert all(numerics.get_format(n).block_size == 32 for n in numerics.FORMAT_NAMES[:6])
    assert numerics.get_format("nvfp4").block_size == 16
    assert numerics.get_format("mxfp4_e2m1", block_size=16).block_size == 16


@pytest.mark.parametrize("name, bits", [("mxfp4_e2m1", 4.25), ("nvfp4", 4.5), ("mxfp8_e4m3", 8.25),
                                        ("mxfp8_e5m2", 8.25), ("mxfp6_e3m2", 6.25), ("mxfp6_e2m3", 6.25),
                                        ("mxint8", 8.25), ("fp8_e4m3", 8.0), ("bf16", 16.0), ("fp32", 32.0)])
def test_bits_per_element(name, bits):
    assert numerics.bits_per_element(name) == bits


def test_format_errors_name_the_value():
    with pytest.raises(ValueError, match=r"'mxfp5'.*mxfp8_e4m3.*fp32"):
        numerics.get_format("mxfp5")
    with pytest.raises(ValueError, match="'bf16' is not block-scaled"):
        numerics.get_format("bf16", block_size=32)
    with pytest.raises(ValueError, match="block_size=0"):
        numerics.get_format("mxfp8_e4m3", block_size=0)
    with pytest.raises(ValueError, match="block_size=32"):
        F.BlockFormat("odd", "per_tensor", F.E4M3, block_size=32, tensor_scale=True)
    with pytest.raises(ValueError, match="needs scale"):
        F.BlockFormat("odd", "mx", F.E4M3, 32, F.E4M3_SCALE)
    with pytest.raises(ValueError, match="nvfp4 needs E2M1"):
        F.BlockFormat("odd", "nvfp4", F.E4M3, 16, F.E4M3_SCALE)
    with pytest.raises(ValueError, match="unknown format"):
        numerics.bits_per_element("int4")
