"""MX inside the mesh: the study's errors are zero for FP32, bounded for MXFP4, and its bytes are the packed size."""

import numpy as np
import pytest

import numerics
from parallel import payload_bytes
from parallel.mx_study import MXStudyConfig, format_table, main, run
from perfmodel.specs import Layout, ModelSpec

SPEC = ModelSpec("tiny-mx", 1, 64, 16, 8, 32, 128, 256)  # head_dim 32: one MX block per head row
LAYOUT = Layout(kvp=4, tpa=2, tpf=8, batch=8)


def test_study_rows():
    rows = run(MXStudyConfig(spec=SPEC, layout=LAYOUT, seq=64, formats=("fp32", "mxfp4_e2m1"), role_sets=("a2a",)))
    fp32, fp4 = rows
    assert fp32.rel_error == {"a2a": 0.0}  # the FP32 policy path is bit-identical to no policy
    # Bytes read from HLO equal the packed payload: FP32 (KVP−1)·B·(Q/N)·(Dv+1)·4; MXFP4 codes+scales+LSE.
    assert fp32.a2a_bytes == fp32.a2a_bytes_fp32 == 3 * 8 * 2 * 33 * 4
    assert fp4.a2a_bytes == payload_bytes(8, 8, 32, 4, "mxfp4_e2m1") == 3 * 8 * 2 * (16 + 1 + 4)
    # The payload error reaches the layer update through a linear combine and W_O: it is non-zero and
    # below twice MXFP4's own relative error on Gaussian data.
    g = np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32)
    fp4_error = float(numerics.relative_l2_error(numerics.fake_quantize(g, "mxfp4_e2m1"), g))
    assert 0.0 < fp4.rel_error["a2a"] < 2 * fp4_error
    table = format_table(rows)
    assert "mxfp4_e2m1" in table and "0.159" in table  # 504 / 3168 bytes


def test_bad_role_set():
    with pytest.raises(ValueError, match=r"role_sets=\('kv', 'acts'\)"):
        run(MXStudyConfig(spec=SPEC, layout=LAYOUT, seq=64, formats=("fp32",), role_sets=("kv", "acts")))


@pytest.mark.slow
def test_cli_runs(capsys):
    main(["--formats", "fp32,mxfp8_e4m3", "--seq", "64"])
    out = capsys.readouterr().out
    assert "mxfp8_e4m3" in out and out.strip().splitlines()[-1].startswith("{")
