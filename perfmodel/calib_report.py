"""How well a fit predicts: absolute percentage errors per op class, fitted vs the datasheet baseline.

For predictions t̂ and measured times t, APE = 100·|t̂ − t|/t; a summary is its mean (MAPE), median
and 90th percentile. `error_report` summarizes every (model, subset, op class, kernel filter)
slice; `FitReport` holds them with the fit's settings and formats the markdown tables.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from .calib_data import measured_times
from .measurements import Measurement


def percentage_errors(predicted: np.ndarray, measured: np.ndarray) -> np.ndarray:
    """Absolute percentage errors 100·|t̂ − t|/t.

    Args:
      predicted: t̂ [n], seconds.
      measured: t [n], seconds, > 0.

    Returns:
      float64 [n], percent.
    """
    return 100.0 * np.abs(np.asarray(predicted, np.float64) - measured) / measured


def _summary(ape: np.ndarray) -> dict:
    if ape.size == 0:
        return dict(n=0, mape=None, median_ape=None, p90_ape=None)
    return dict(n=int(ape.size), mape=float(ape.mean()), median_ape=float(np.median(ape)),
                p90_ape=float(np.percentile(ape, 90)))


@dataclasses.dataclass(frozen=True)
class FitReport:
    """What a fit did and how well the fitted model and the datasheet baseline predict.

    Attributes:
      config: the fit's settings (split, fraction, seed, loss, scale, prior weight, steps, lr).
      counts: rows used for training and held out, excluded (by reason), noisy.
      losses: objective at the start and end of training.
      errors: one dict per (model ∈ {fitted, datasheet}, subset ∈ {train, heldout},
        op ∈ op classes + "all", kernels ∈ {"all", ">1ms"}) with n, mape, median_ape, p90_ape (%).
      headline: held-out MAPE over kernels > 1 ms (all op classes): fitted, datasheet and the
        ratio datasheet / fitted.
    """

    config: dict
    counts: dict
    losses: dict
    errors: tuple[dict, ...]
    headline: dict

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def table(self, model: str, subset: str, kernels: str = ">1ms") -> dict[str, dict]:
        """op → summary for one (model, subset, kernels) slice of `errors`."""
        return {e["op"]: e for e in self.errors
                if e["model"] == model and e["subset"] == subset and e["kernels"] == kernels}

    def format(self) -> str:
        """A markdown table per kernel filter: op class × (fitted vs datasheet) on train and held-out."""
        def pct(v):
            return "—" if v is None else f"{v:.1f}"

        out = [f"split={self.config['split']} held-out={self.counts['heldout']} train={self.counts['train']} "
               f"excluded={self.counts['excluded']} noisy={self.counts['noisy']}"]
        for kernels in (">1ms", "all"):
            out += ["", f"kernels {kernels}: MAPE / median / p90 APE in %",
                    "| op | n train | n held | fitted train | fitted held-out | datasheet held-out |",
                    "|---|---|---|---|---|---|"]
            ft, fh = self.table("fitted", "train", kernels), self.table("fitted", "heldout", kernels)
            bh = self.table("datasheet", "heldout", kernels)
            for op in ft:
                cells = [" / ".join(pct(s[k]) for k in ("mape", "median_ape", "p90_ape")) for s in (ft[op], fh[op], bh[op])]
                out.append(f"| {op} | {ft[op]['n']} | {fh[op]['n']} | " + " | ".join(cells) + " |")
        h = self.headline
        out += ["", f"headline: held-out MAPE (kernels > 1 ms) fitted {pct(h['fitted_mape'])}% vs datasheet "
                    f"{pct(h['datasheet_mape'])}% (ratio {h['ratio'] if h['ratio'] is None else round(h['ratio'], 2)}, "
                    f"n={h['n']})"]
        return "\n".join(out)


def error_report(rows: Sequence[Measurement], held: np.ndarray, predictions: Mapping[str, np.ndarray],
                 threshold_s: float = 1e-3, statistic: str = "median") -> tuple[tuple[dict, ...], dict]:
    """Error summaries per model, subset, op class (and "all"), kernel filter; and the headline.

    Errors are against `calib_data.measured_times(rows, statistic)`; "> 1 ms" filters on the same
    times. headline ratio = datasheet MAPE / fitted MAPE on held-out kernels above `threshold_s`.

    Args:
      rows: the measurements scored.
      held: bool [len(rows)], the held-out rows.
      predictions: {model: seconds [len(rows)]}; must hold "fitted" and "datasheet".
      threshold_s: the "> 1 ms" filter and headline threshold (seconds).
      statistic: "median" or "min".

    Returns:
      (errors, headline): the `FitReport.errors` and `FitReport.headline` entries.

    Raises:
      ValueError: an unknown statistic.
    """
    measured = measured_times(rows, statistic)
    ops = np.array([r.op for r in rows])
    long = measured > threshold_s
    errors = []
    for model, pred in predictions.items():
        ape = percentage_errors(pred, measured)
        for subset, mask in (("train", ~held), ("heldout", held)):
            for kernels, kmask in (("all", np.ones_like(long)), (">1ms", long)):
                for op in list(dict.fromkeys(ops)) + ["all"]:
                    m = mask & kmask & ((ops == op) if op != "all" else True)
                    errors.append(dict(model=model, subset=subset, op=op, kernels=kernels, **_summary(ape[m])))
    pick = {e["model"]: e for e in errors if e["subset"] == "heldout" and e["op"] == "all" and e["kernels"] == ">1ms"}
    fitted, base = pick["fitted"]["mape"], pick["datasheet"]["mape"]
    headline = dict(n=pick["fitted"]["n"], threshold_s=threshold_s, fitted_mape=fitted, datasheet_mape=base,
                    ratio=(base / fitted) if fitted and base is not None else None)
    return tuple(errors), headline
