"""The experiments: CLI names → modules, config building, and running one with its records.

Contract of an experiment module `experiments/<module>.py`:

    @dataclasses.dataclass(frozen=True)
    class Config: ...          # defaults = full mode; validate in __post_init__ (ValueError)
    QUICK: dict[str, object]   # field overrides for --quick
    def run(config: Config, out: ResultsDir) -> dict: ...   # writes tables/plots, returns headline

Optional fields the CLI knows: `seed: int` (set by --seed) and `hardware: str` (set by
--hardware PROFILE.json: the path of a fitted hardware profile; the experiment loads it itself with
perfmodel's profile loader). The runner writes config.json, metadata.json, summary.json (the headline)
and, unless the experiment wrote one, summary.md.
"""

from __future__ import annotations

import dataclasses
import importlib
import pathlib
import time
import types
import typing
from collections.abc import Mapping
from typing import Any

from . import results

# CLI name -> module. Add an entry when you add experiments/<module>.py.
EXPERIMENTS: dict[str, str] = {
    "quickstart": "experiments.quickstart",
    "mx-accuracy": "experiments.mx_accuracy",
    "calibrate": "experiments.calibration",
    "helix-pareto": "experiments.helix_pareto",
    "disagg-pareto": "experiments.disagg_pareto",
    "search": "experiments.search_study",
    "helix-mx": "experiments.helix_mx",
    "energy": "experiments.energy",
}


class ConfigMismatchError(ValueError):
    """An output folder already holds a run of a different config."""


def names() -> list[str]:
    """Registered experiment names, sorted."""
    return sorted(EXPERIMENTS)


def load(name: str) -> types.ModuleType:
    """Import the module of experiment `name` and check that it follows the contract.

    Raises:
      ValueError: unknown name (the message lists the valid ones) or a module breaking the contract.
    """
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; valid: {', '.join(names())}")
    module = importlib.import_module(EXPERIMENTS[name])
    config = getattr(module, "Config", None)
    if not (isinstance(config, type) and dataclasses.is_dataclass(config)
            and config.__dataclass_params__.frozen):
        raise ValueError(f"experiment {name!r} ({module.__name__}) has no frozen dataclass `Config`")
    if not isinstance(getattr(module, "QUICK", None), Mapping):
        raise ValueError(f"experiment {name!r} ({module.__name__}) has no `QUICK` dict")
    if not callable(getattr(module, "run", None)):
        raise ValueError(f"experiment {name!r} ({module.__name__}) has no `run(config, out)`")
    unknown = set(module.QUICK) - {f.name for f in dataclasses.fields(config)}
    if unknown:
        raise ValueError(f"experiment {name!r}: QUICK sets unknown fields {sorted(unknown)}")
    return module


def describe(name: str) -> str:
    """First line of the experiment module's docstring."""
    doc = load(name).__doc__ or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{text!r} is not a boolean (true/false/1/0/yes/no)")


def parse_value(text: str, tp: Any) -> Any:
    """Parse command-line `text` into a value of type `tp`.

    Supported: bool, int, float, str, `X | None` ("none" → None), `tuple[X, ...]` and `tuple[X, Y]`
    (comma-separated; empty text → empty tuple), `Literal[...]` of strings or ints.

    Raises:
      ValueError: text that is not a value of `tp`, or an unsupported type.
    """
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and text.strip().lower() == "none":
            return None
        rest = [a for a in args if a is not type(None)]
        errors = []
        for a in rest:
            try:
                return parse_value(text, a)
            except ValueError as e:
                errors.append(str(e))
        raise ValueError(f"{text!r} is not a value of {tp}: {'; '.join(errors)}")
    if origin is tuple:
        parts = [p.strip() for p in text.split(",")] if text.strip() else []
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(parse_value(p, args[0]) for p in parts)
        if len(parts) != len(args):
            raise ValueError(f"{text!r}: expected {len(args)} comma-separated values for {tp}")
        return tuple(parse_value(p, a) for p, a in zip(parts, args))
    if origin is typing.Literal:
        for a in args:
            try:
                if parse_value(text, type(a)) == a:
                    return a
            except ValueError:
                pass
        raise ValueError(f"{text!r} is not one of {list(args)}")
    if tp is bool:
        return _parse_bool(text)
    if tp is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"{text!r} is not an integer") from None
    if tp is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a number") from None
    if tp is str:
        return text
    raise ValueError(f"cannot parse a value of type {tp} from the command line")


def make_config(name: str, quick: bool = False, seed: int | None = None, hardware: str | None = None,
                overrides: Mapping[str, str] | None = None):
    """The Config of experiment `name`: defaults, then QUICK (if quick), --seed, --hardware, overrides.

    Args:
      name: registered experiment name.
      quick: apply the module's QUICK overrides.
      seed: value for the `seed` field.
      hardware: path of a hardware-profile JSON for the `hardware` field (must exist).
      overrides: field name -> command-line text, parsed into the field's type.

    Raises:
      ValueError: unknown experiment or field (lists the valid ones), unparsable value, a missing
        hardware file, or the Config's own validation.
    """
    module = load(name)
    cls = module.Config
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls)]
    values: dict[str, Any] = dict(module.QUICK) if quick else {}
    if seed is not None:
        if "seed" not in fields:
            raise ValueError(f"experiment {name!r} takes no seed")
        values["seed"] = seed
    if hardware is not None:
        if "hardware" not in fields:
            raise ValueError(f"experiment {name!r} takes no hardware profile")
        if not pathlib.Path(hardware).is_file():
            raise ValueError(f"hardware profile {hardware!r} is not a file")
        values["hardware"] = str(hardware)
    for key, text in (overrides or {}).items():
        if key not in fields:
            raise ValueError(f"experiment {name!r} has no config key {key!r}; valid: {', '.join(fields)}")
        try:
            values[key] = parse_value(text, hints[key])
        except ValueError as e:
            raise ValueError(f"{name}: {key}={text!r}: {e}") from None
    return cls(**values)


def _default_summary_md(name: str, headline: Mapping[str, Any]) -> str:
    lines = [f"# {name}", "", "| figure | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in headline.items()]
    return "\n".join(lines) + "\n"


def run_experiment(name: str, config, out: str | pathlib.Path | None = None,
                   results_root: str | pathlib.Path = "results") -> tuple[results.ResultsDir, dict]:
    """Run experiment `name` with `config` and record it in a results folder.

    The folder is `out`, or `results_root/NAME/<UTC timestamp>/`. A folder that already holds a
    config.json is resumed (sweeps skip finished work) only if that config equals this one.

    Returns:
      (the ResultsDir, the headline dict also written to summary.json).

    Raises:
      ValueError: unknown experiment or a config of another experiment.
      ConfigMismatchError: `out` holds a run of a different config.
    """
    module = load(name)
    if not isinstance(config, module.Config):
        raise ValueError(f"config is a {type(config).__name__}, expected {module.__name__}.Config")
    if out is None:
        base = pathlib.Path(results_root) / name / results.timestamp()
        out, n = base, 1
        while out.exists():
            out, n = base.with_name(f"{base.name}-{n}"), n + 1
    rd = results.ResultsDir(out)
    config_json = results._jsonable(config)
    resumed = rd.exists("config.json")
    if resumed:
        old = rd.read_json("config.json")
        diff = sorted(k for k in set(old) | set(config_json) if old.get(k) != config_json.get(k))
        if diff:
            raise ConfigMismatchError(f"{rd.path} holds a run of another config (differs in {diff}); "
                             "use a fresh --out folder")
    rd.write_json("config.json", config_json)
    meta = {"experiment": name, **results.collect_metadata(), "resumed": resumed,
            "started_utc": results.timestamp(), "status": "running"}
    rd.write_json("metadata.json", meta)
    if rd.exists("summary.md"):
        rd.file("summary.md").unlink()
    start = time.perf_counter()
    try:
        headline = module.run(config, rd)
    except BaseException as e:
        meta.update(status="interrupted" if isinstance(e, KeyboardInterrupt) else f"failed: {e!r}"[:500],
                    wall_time_s=time.perf_counter() - start)
        rd.write_json("metadata.json", meta)
        raise
    meta.update(status="complete", wall_time_s=time.perf_counter() - start)
    rd.write_json("summary.json", headline)
    if not rd.exists("summary.md"):
        rd.write_text("summary.md", _default_summary_md(name, headline))
    rd.write_json("metadata.json", meta)
    return rd, dict(headline)
