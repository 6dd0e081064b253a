"""studies.py: the paper comparisons computed on a small synthetic sweep with known answers."""

import numpy as np
import pytest

from perfmodel.step import make_layout_arrays
from perfmodel.studies import MIXES, PAPER_HELIX, disaggregation_row, format_disaggregation, format_helix, helix_ratios

# family, tokens/s/user, tokens/s/GPU, batch, micro-batches, hopb, exposed comm (s)
POINTS = [
    ("helix", 200.0, 10.0, 1, 1, 1.0, 1e-3),
    ("helix", 100.0, 40.0, 8, 8, 1.0, 0.0),
    ("helix", 80.0, 35.0, 8, 8, 0.0, 0.0),  # the point above without HOP-B (paper's ablation)
    ("tp", 150.0, 5.0, 1, 1, 1.0, 0.0),
    ("tp", 50.0, 20.0, 4, 1, 1.0, 0.0),
    ("dp_ep", 120.0, 12.0, 2, 1, 1.0, 0.0),
]


def _synthetic():
    fam, x, y, b, mb, hopb, comm = map(np.asarray, zip(*POINTS))
    lay = make_layout_arrays(batch=b.astype(np.float32), microbatches=mb.astype(np.float32), hopb=hopb.astype(np.float32))
    lay = type(lay)(*(np.asarray(v) for v in lay))
    r = {"tokens_per_s_per_user": x, "tokens_per_s_per_gpu": y, "ttl_s": 1.0 / x, "fits": np.ones(len(x), bool),
         "comm_s": comm}
    return r, fam, lay


def test_helix_ratios_known_answers():
    r, fam, lay = _synthetic()
    out = helix_ratios(r, fam, lay)
    assert out["interactivity"] == pytest.approx(200 / 150)
    assert out["throughput"] == pytest.approx(40 / 12) and out["throughput_at_tokens_per_s_per_user"] == pytest.approx(100)
    assert out["ttl_fixed_batch"] == pytest.approx(200 / 150) and out["ttl_fixed_batch_at_batch"] == 1
    assert out["batch_equal_ttl"] == pytest.approx(2.0) and out["batch_equal_ttl_at_ttl_s"] == pytest.approx(1 / 50)
    assert out["hopb"] == pytest.approx(1 - 80 / 100)
    assert out["hopb_vs_one_batched_all_to_all"] == pytest.approx(0.0)
    assert out["exposed_comm_share_at_max_interactivity"] == pytest.approx(0.2)
    assert out["n_layouts"] == 6 and out["n_feasible"] == {"dp_ep": 1, "helix": 3, "tp": 2}


def test_helix_ratios_without_helix_reports_it():
    r, fam, lay = _synthetic()
    r["fits"] = fam != "helix"
    assert "error" in helix_ratios(r, fam, lay)


def test_format_helix_quotes_the_paper():
    r, fam, lay = _synthetic()
    row = {"model": "llama-3.1-405b", "alpha_scale": 1.0, **helix_ratios(r, fam, lay)}
    text = format_helix([row])
    assert "1.33× (paper 1.13×)" in text and "3.33× (paper 4.0×)" in text and "20.0% (paper 12%)" in text
    assert set(PAPER_HELIX) == {"deepseek-r1", "llama-3.1-405b"}


@pytest.mark.slow
def test_disaggregation_row_small():
    row = disaggregation_row("llama-3.1-8b", "prefill-heavy", n_batches=8, targets=(10.0, 100.0))
    assert (row["isl"], row["osl"]) == MIXES["prefill-heavy"]
    assert all(np.isfinite(row["gain"])) and all(a > 0 for a in row["alpha"])
    assert all(f <= 1.0 + 1e-6 for f in row["fixed_0.5"] + row["fixed_3.5"])  # rate matching is optimal
    assert "llama-3.1-8b" in format_disaggregation([row])
