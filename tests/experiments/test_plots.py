"""Plot helpers: Pareto frontier against brute force, knees, PNG output."""

import numpy as np
import pytest

from experiments import plots, results


def _brute_front(x, y):
    n = len(x)
    keep = [i for i in range(n) if not any(
        x[j] >= x[i] and y[j] >= y[i] and (x[j] > x[i] or y[j] > y[i]) for j in range(n))]
    # equal points: keep one
    uniq = {}
    for i in keep:
        uniq.setdefault((x[i], y[i]), i)
    return sorted(uniq.values(), key=lambda i: x[i])


@pytest.mark.parametrize("seed", range(5))
def test_pareto_front_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 20, 60).astype(float)
    y = rng.integers(0, 20, 60).astype(float)
    front = plots.pareto_front(x, y)
    assert [(x[i], y[i]) for i in front] == [(x[i], y[i]) for i in _brute_front(x, y)]


def test_pareto_front_rejects_nan():
    with pytest.raises(ValueError, match="NaN"):
        plots.pareto_front([1.0, np.nan], [1.0, 2.0])


def test_knees_of_a_piecewise_linear_front():
    # a gentle slope, a corner at index 4, a steep drop with a second corner at index 6
    x = np.array([0, 2, 4, 6, 8, 8.5, 9, 10.0])
    y = np.array([10, 9.8, 9.6, 9.4, 9.2, 5.0, 1.0, 0.0])
    assert plots.knee_indices(x, y, 1, log=False).tolist() == [4]
    assert plots.knee_indices(x, y, 2, log=False).tolist() == [4, 6]
    # collinear points have no knee; log axes: a power law is a straight line
    assert plots.knee_indices([1, 2, 3, 4], [4, 3, 2, 1], 2, log=False).tolist() == []
    assert plots.knee_indices([1, 10, 100, 1000], [1000, 100, 10, 1], 2, log=True).tolist() == []


def test_plots_write_png(tmp_path):
    rd = results.ResultsDir(tmp_path)
    rng = np.random.default_rng(0)
    x, y = rng.uniform(1, 100, 40), rng.uniform(1, 100, 40)
    figs = {
        "pareto.png": plots.plot_pareto({"a": (x, y, [f"tp{i}" for i in range(40)])}),
        "loss.png": plots.plot_loss_curves({"fp32": ([0, 1, 2], [[3, 2, 1], [3, 2.5, 1.5]])}),
        "bits.png": plots.plot_error_vs_bits({"weights": [("mxfp4", 4.25, 0.1), ("mxfp8", 8.25, 0.01)]},
                                            yscale="log"),
    }
    for name, fig in figs.items():
        data = rd.save_figure(name, fig).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    with pytest.raises(ValueError, match="2 labels for 40 points"):
        plots.plot_pareto({"a": (x, y, ["a", "b"])})
