"""Plot helpers (matplotlib, Agg; no pyplot state): Pareto frontiers, loss curves, error vs bits.

Each helper returns a `matplotlib.figure.Figure`; save it with `ResultsDir.save_figure(name, fig)`.
Figures are built on `matplotlib.figure.Figure` directly, so no GUI backend or global state is used.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def _figure(figsize: tuple[float, float]) -> Figure:
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)  # render with Agg, whatever pyplot's backend is
    return fig


def pareto_front(x, y) -> np.ndarray:
    """Indices of the points not dominated when both x and y are maximized, sorted by x.

    A point i is dominated when some j has x_j ≥ x_i and y_j ≥ y_i with one inequality strict.

    Args:
      x, y: [n] coordinates (e.g. tokens/s/user and tokens/s/GPU).

    Returns:
      [m] int indices into x/y, ascending in x (and so descending in y).

    Raises:
      ValueError: shapes differ or a coordinate is NaN.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be 1-D of equal length, got {x.shape} and {y.shape}")
    if np.isnan(x).any() or np.isnan(y).any():
        raise ValueError("pareto_front: NaN in coordinates")
    order = np.lexsort((-y, -x))  # x descending, ties: y descending
    front, best_y = [], -np.inf
    for i in order:
        if y[i] > best_y:
            front.append(i)
            best_y = y[i]
    return np.asarray(front[::-1], dtype=int)


def knee_indices(x, y, n_knees: int = 3, log: bool = True) -> np.ndarray:
    """The `n_knees` corners of a frontier (points sorted by x), found by Ramer–Douglas–Peucker.

    In axes normalized to [0, 1] (log10 axes when `log`), start from the chord between the end
    points; repeatedly add the interior point farthest from the chord of the piece it lies in. The
    points added first are where the curve bends most (the first one is the Kneedle knee).

    Args:
      x, y: [m] frontier coordinates, ascending in x.
      n_knees: how many corners to return.
      log: measure distances in log-log axes.

    Returns:
      Up to n_knees indices into x/y, ascending.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 3 or n_knees <= 0:
        return np.arange(0)
    if log:
        x, y = np.log10(np.maximum(x, 1e-300)), np.log10(np.maximum(y, 1e-300))
    u = (x - x.min()) / max(np.ptp(x), 1e-12)
    v = (y - y.min()) / max(np.ptp(y), 1e-12)
    anchors = [0, len(x) - 1]
    for _ in range(min(n_knees, len(x) - 2)):
        best, best_d = None, 1e-9
        for a, b in zip(anchors[:-1], anchors[1:]):
            if b - a < 2:
                continue
            du, dv = u[b] - u[a], v[b] - v[a]
            k = np.arange(a + 1, b)
            d = np.abs(du * (v[k] - v[a]) - dv * (u[k] - u[a])) / max(np.hypot(du, dv), 1e-12)
            j = int(np.argmax(d))
            if d[j] > best_d:
                best, best_d = int(k[j]), d[j]
        if best is None:
            break
        anchors = sorted([*anchors, best])
    return np.asarray(anchors[1:-1], dtype=int)


def plot_pareto(series: Mapping[str, tuple[Sequence[float], Sequence[float], Sequence[str]]],
                xlabel: str = "tokens/s/user", ylabel: str = "tokens/s/GPU", title: str = "",
                n_knees: int = 3, log: bool = True) -> Figure:
    """Scatter of design points and their Pareto frontier per series, layouts labelled at knees.

    Args:
      series: name -> (x [n], y [n], labels [n]); the labels name each point's layout.
      xlabel, ylabel, title: axis labels and title.
      n_knees: how many knees of each frontier get their layout label.
      log: log-log axes.
    """
    fig = _figure((7, 5))
    ax = fig.add_subplot()
    for k, (name, (x, y, labels)) in enumerate(series.items()):
        x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
        if len(labels) != len(x):
            raise ValueError(f"series {name!r}: {len(labels)} labels for {len(x)} points")
        color = f"C{k % 10}"
        ax.scatter(x, y, s=6, alpha=0.25, color=color, linewidths=0)
        front = pareto_front(x, y)
        ax.step(x[front], y[front], where="post", color=color, lw=1.8, label=f"{name} frontier")
        ax.scatter(x[front], y[front], s=16, color=color, zorder=3)
        for j in knee_indices(x[front], y[front], n_knees, log=log):
            i = front[j]
            ax.annotate(labels[i], (x[i], y[i]), xytext=(6, 6), textcoords="offset points",
                        fontsize=7, color=color,
                        bbox=dict(boxstyle="round,pad=0.2", fc="white", ec=color, lw=0.5, alpha=0.85))
    if log:
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def plot_loss_curves(curves: Mapping[str, tuple[Sequence[float], np.ndarray]], xlabel: str = "step",
                     ylabel: str = "loss (nats/byte)", title: str = "", ylim=None) -> Figure:
    """Loss curves; a curve given for several seeds is drawn as its mean with a min–max band.

    Args:
      curves: name -> (steps [n], losses [n] or [seeds, n]).
      ylim: optional (low, high) of the y axis.
    """
    fig = _figure((7, 4.5))
    ax = fig.add_subplot()
    for k, (name, (steps, losses)) in enumerate(curves.items()):
        losses = np.atleast_2d(np.asarray(losses, dtype=float))
        steps = np.asarray(steps)
        if losses.shape[1] != len(steps):
            raise ValueError(f"curve {name!r}: {losses.shape[1]} losses for {len(steps)} steps")
        color = f"C{k % 10}"
        label = name if losses.shape[0] == 1 else f"{name} (mean, min–max of {losses.shape[0]} seeds)"
        ax.plot(steps, losses.mean(0), color=color, lw=1.4, label=label)
        if losses.shape[0] > 1:
            ax.fill_between(steps, losses.min(0), losses.max(0), color=color, alpha=0.2, lw=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def plot_error_vs_bits(series: Mapping[str, Sequence[tuple[str, float, float]]],
                       xlabel: str = "bits per element (scale overhead included)",
                       ylabel: str = "error", title: str = "", yscale: str = "linear",
                       linthresh: float = 1e-3) -> Figure:
    """Error of each format against its bits per element, one marker series per group.

    Formats whose bits lie within 0.3 of each other are spread into columns 0.2 bits apart.

    Args:
      series: group name (e.g. "weights") -> [(format label, bits per element, error), ...].
      yscale: "linear", "log" (errors must be positive) or "symlog" (signed errors such as a loss
        change; linear within ±linthresh).
    """
    if yscale not in ("linear", "log", "symlog"):
        raise ValueError(f"yscale={yscale!r}; valid: linear, log, symlog")
    fig = _figure((7.5, 4.8))
    ax = fig.add_subplot()
    # formats within 0.3 bits of each other (FP8 at 8, MXINT8 and the MXFP8s at 8.25) are drawn in
    # side-by-side columns 0.2 bits apart around their mean, so their markers and labels stay apart
    formats = sorted({(b, lab) for points in series.values() for lab, b, _ in points})
    clusters: list[list[tuple[float, str]]] = []
    for b, lab in formats:
        if clusters and b - clusters[-1][-1][0] < 0.3:
            clusters[-1].append((b, lab))
        else:
            clusters.append([(b, lab)])
    x_of = {lab: np.mean([b for b, _ in c]) + 0.2 * (i - (len(c) - 1) / 2)
            for c in clusters for i, (_, lab) in enumerate(c)}
    top: dict[str, float] = {}
    markers = "osD^v<>"
    for k, (name, points) in enumerate(series.items()):
        if not points:
            continue
        labels, _, err = zip(*points)
        ax.scatter([x_of[lab] for lab in labels], err, marker=markers[k % len(markers)], color=f"C{k % 10}",
                   label=name, zorder=3, alpha=0.85)
        for lab, e in zip(labels, err):
            top[lab] = max(top.get(lab, -np.inf), e)
    for lab, e in top.items():
        ax.annotate(lab, (x_of[lab], e), xytext=(0, 6), textcoords="offset points", fontsize=7, rotation=90,
                    ha="center", va="bottom")
    ax.margins(y=0.2)
    if yscale == "symlog":
        ax.set_yscale("symlog", linthresh=linthresh)
        ax.axhline(0.0, color="k", lw=0.6)
    elif yscale == "log":
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return fig
