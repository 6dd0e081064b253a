"""Fitted hardware profiles: a JSON file with the hardware spec, the raw parameters and the fit report.

Every experiment accepts one (`--hardware profile.json`). `save_profile` writes it atomically;
`load_profile` reads it strictly: unknown or missing fields, wrong shapes and non-finite values
raise `ValueError` naming the entry.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from .calib_params import PRECISIONS, CalibParams, efficiency_for, init_params
from .calib_report import FitReport
from .efficiency import constrain
from .fileio import write_text_atomic
from .specs import HardwareSpec, LinkLevel

PROFILE_FORMAT = "paretolab-profile"
PROFILE_VERSION = 2  # 2: CalibParams gained format_logit
_TOP_LEVEL = ("format", "version", "hardware", "params", "physical", "report", "env")


def _flatten(params) -> dict[str, dict]:
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    return {jax.tree_util.keystr(path): dict(shape=list(np.shape(v)), value=np.asarray(v, np.float64).tolist())
            for path, v in leaves}


def _physical(params) -> dict:
    """Human-readable physical values per precision (not read back)."""
    if not isinstance(params, CalibParams):
        return {}
    return {p: {k: np.asarray(v, np.float64).tolist() for k, v in constrain(efficiency_for(params, p))._asdict().items()}
            for p in PRECISIONS}


def save_profile(path: str | os.PathLike, hardware: HardwareSpec, params,
                 report: FitReport | Mapping | None = None, env: Mapping | None = None):
    """Write a fitted profile as JSON, atomically: hardware spec, raw parameters, fit report, env.

    Layout: {"format": "paretolab-profile", "version": 2, "hardware": {HardwareSpec fields, links as
    a list of LinkLevel dicts}, "params": {keystr(path): {"shape": [...], "value": nested lists}},
    "physical": {precision: constrained values} (for reading; ignored on load), "report": the
    FitReport (or a dict of them) or null, "env": the measurement environment or {}}.

    Args:
      path: destination file; parent folders are created.
      hardware: the spec the parameters were fitted on.
      params: raw parameter pytree (`CalibParams` or any pytree of arrays).
      report: a `FitReport`, a {name: FitReport} mapping, or None.
      env: the measurement environment.

    Returns:
      The path written.

    Raises:
      ValueError: non-finite values (JSON is written with allow_nan=False).
    """
    if isinstance(report, FitReport):
        report = report.to_dict()
    elif isinstance(report, Mapping):
        report = {k: v.to_dict() if isinstance(v, FitReport) else v for k, v in report.items()}
    doc = dict(format=PROFILE_FORMAT, version=PROFILE_VERSION, hardware=dataclasses.asdict(hardware),
               params=_flatten(params), physical=_physical(params), report=report, env=dict(env or {}))
    return write_text_atomic(path, json.dumps(doc, indent=1, sort_keys=True, allow_nan=False))


def _check_fields(cls, obj, name: str, where: str) -> dict:
    """`obj` as the keyword arguments of dataclass `cls`: no unknown fields, no missing required ones."""
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: {name} must be an object, got {type(obj).__name__}")
    fields = dataclasses.fields(cls)
    unknown = set(obj) - {f.name for f in fields}
    missing = {f.name for f in fields if f.default is dataclasses.MISSING} - set(obj)
    if unknown or missing:
        raise ValueError(f"{where}: {name} has unknown fields {sorted(unknown)}, missing {sorted(missing)}")
    return obj


def _hardware_from_dict(d, where: str) -> HardwareSpec:
    _check_fields(HardwareSpec, d, "hardware", where)
    links = d["links"]
    if not isinstance(links, list) or len(links) != 3:
        raise ValueError(f"{where}: hardware.links must be a list of 3 link levels, got {links!r}")
    try:
        levels = tuple(LinkLevel(**_check_fields(LinkLevel, level, f"hardware.links[{i}]", where))
                       for i, level in enumerate(links))
        return HardwareSpec(**{**d, "links": levels})
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: hardware: {e}") from e


def _leaf(where: str, key: str, entry, like) -> jax.Array:
    """One stored parameter {"shape", "value"} as float32, checked against the template leaf `like`."""
    if not isinstance(entry, dict) or set(entry) != {"shape", "value"}:
        raise ValueError(f"{where}: params[{key!r}] must be {{'shape': [...], 'value': ...}}")
    try:
        value = np.asarray(entry["value"], np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: params[{key!r}] value is not numeric: {e}") from e
    if list(value.shape) != entry["shape"] or value.shape != np.shape(like):
        raise ValueError(f"{where}: params[{key!r}] shape {list(value.shape)} (declared {entry['shape']}) "
                         f"but the model expects {list(np.shape(like))}")
    if not np.all(np.isfinite(value)):
        raise ValueError(f"{where}: params[{key!r}] has non-finite values")
    return jnp.asarray(value, jnp.float32)


def load_profile(path: str | os.PathLike, template=None) -> tuple[HardwareSpec, object]:
    """Read a profile written by `save_profile`, strictly.

    Args:
      path: profile JSON.
      template: a parameter pytree giving the structure to fill (default `init_params(hardware)`,
        a `CalibParams`).

    Returns:
      (hardware, params): the `HardwareSpec` and the raw parameter pytree (float32 leaves).

    Raises:
      ValueError: naming the entry, for a wrong format or version, bad hardware fields, parameter
        paths that differ from the template's, a wrong shape, or a non-finite value.
    """
    where = str(path)
    try:
        with open(path) as f:
            doc = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not JSON: {e}") from e
    if not isinstance(doc, dict) or doc.get("format") != PROFILE_FORMAT:
        raise ValueError(f"{where}: format is not {PROFILE_FORMAT!r}")
    unknown = sorted(set(doc) - set(_TOP_LEVEL))
    if unknown:
        raise ValueError(f"{where}: unknown top-level keys {unknown}")
    if doc.get("version") != PROFILE_VERSION:
        raise ValueError(f"{where}: version={doc.get('version')!r}; this reader knows {PROFILE_VERSION}")
    for key in ("hardware", "params"):
        if key not in doc:
            raise ValueError(f"{where}: missing {key!r}")
    hardware = _hardware_from_dict(doc["hardware"], where)
    if template is None:
        template = init_params(hardware)
    paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
    stored = doc["params"]
    if not isinstance(stored, dict):
        raise ValueError(f"{where}: params must be an object")
    expected = [jax.tree_util.keystr(p) for p, _ in paths_leaves]
    unknown, missing = sorted(set(stored) - set(expected)), sorted(set(expected) - set(stored))
    if unknown or missing:
        raise ValueError(f"{where}: params unknown {unknown}, missing {missing}")
    leaves = [_leaf(where, key, stored[key], like) for key, (_, like) in zip(expected, paths_leaves)]
    return hardware, jax.tree_util.tree_unflatten(treedef, leaves)
