"""Measurement rows and the measurement file: one schema, one writer, one strict reader.

A `Measurement` is one timed point (what ran, its size, its time statistics); a `MeasurementSet`
is rows plus the environment they were measured in. `write_csv` and `read_csv` are the file format
of docs/measurements.md (schema 1); `perfmodel.measure` writes it, `perfmodel.importers` adds
other producers' formats (nccl-tests) that parse into the same rows with the same `FieldParser`.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import pathlib
import re
from collections.abc import Mapping, Sequence
from typing import NoReturn

import jax.numpy as jnp
import numpy as np

from .fileio import write_text_atomic

SCHEMA_VERSION = 1
MAGIC = "# paretolab-measurements"
COLLECTIVE_OPS = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "send_recv")
OP_CLASSES = ("gemm", "decode_attention", "elementwise", "copy", "fake_quantize") + COLLECTIVE_OPS
SHAPE_FIELDS = ("m", "n", "k", "batch", "seq", "heads", "kv_heads", "head_dim", "elements", "n_devices")
SIZE_FIELDS = SHAPE_FIELDS + ("bytes", "flops")  # what a row's size is: the cost model's inputs


@dataclasses.dataclass(frozen=True)
class Measurement:
    """One measured point: what ran, its size, and its time statistics (one row of the file).

    Attributes:
      op: op class, one of `OP_CLASSES`.
      kernel: what was timed, e.g. "matmul", "psum", "all_reduce_perf/in-place".
      dtype: element type name as numpy spells it ("float32", "bfloat16").
      fmt: numerics format name for `fake_quantize`, else "".
      m, n, k: GEMM [m, k] @ [k, n]; 0 when unused.
      batch, seq, heads, kv_heads, head_dim: decode attention, one query token per sequence.
      elements: elements of an elementwise, copy or fake_quantize operand.
      n_devices: devices in the collective group (1 for single-device kernels).
      bytes: bytes moved: memory traffic of a kernel; for a collective the nccl-tests "size", i.e.
        the per-rank buffer (all_reduce: the reduced buffer, all_gather: the gathered output,
        reduce_scatter: the input, all_to_all: the send buffer, send_recv: the message).
      flops: floating-point operations (2·m·n·k for a GEMM).
      median_s, iqr_s, min_s: median, inter-quartile range and minimum over rounds (seconds).
      n_rounds: rounds; n_repeats: timed calls over all rounds.
      noisy: IQR/median above the harness threshold.
      emulated: the devices are emulated (CPU mesh): a correctness harness, not a link to fit.
      source: "measure" (this harness), "nccl-tests", or another producer's name.

    Raises:
      ValueError: naming the field and value, for an unknown op, a negative size, a non-finite or
        non-positive time, or min_s > median_s.
    """

    op: str
    kernel: str
    dtype: str
    fmt: str = ""
    m: int = 0
    n: int = 0
    k: int = 0
    batch: int = 0
    seq: int = 0
    heads: int = 0
    kv_heads: int = 0
    head_dim: int = 0
    elements: int = 0
    n_devices: int = 1
    bytes: int = 0
    flops: int = 0
    median_s: float = 0.0
    iqr_s: float = 0.0
    min_s: float = 0.0
    n_rounds: int = 1
    n_repeats: int = 1
    noisy: bool = False
    emulated: bool = False
    source: str = "measure"

    def __post_init__(self):
        if self.op not in OP_CLASSES:
            raise ValueError(f"op={self.op!r} is not one of {OP_CLASSES}")
        for name in STR_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, str) or "," in value or "\n" in value:
                raise ValueError(f"{name}={value!r} must be a string without commas or newlines")
        if not self.kernel or not self.dtype:
            raise ValueError(f"kernel={self.kernel!r} and dtype={self.dtype!r} must be non-empty")
        for name in SIZE_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name}={value!r} must be a non-negative integer")
        for name in ("n_devices", "n_rounds", "n_repeats"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        for name in TIME_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, (float, int, np.floating)) or not np.isfinite(value):
                raise ValueError(f"{name}={value!r} must be a finite number of seconds")
        if self.median_s <= 0 or self.min_s <= 0 or self.iqr_s < 0:
            raise ValueError(
                f"times must be positive (median_s={self.median_s!r}, min_s={self.min_s!r}) and "
                f"iqr_s={self.iqr_s!r} non-negative"
            )
        if self.min_s > self.median_s:
            raise ValueError(f"min_s={self.min_s!r} exceeds median_s={self.median_s!r}")
        if self.n_repeats < self.n_rounds:
            raise ValueError(f"n_repeats={self.n_repeats} < n_rounds={self.n_rounds}")
        if self.op in COLLECTIVE_OPS and self.bytes == 0:
            raise ValueError(f"a {self.op} needs bytes > 0, got bytes=0")


# The file's columns and how each is spelled, from the annotations above (one source of truth).
COLUMNS = tuple(f.name for f in dataclasses.fields(Measurement))
_KINDS = {f.name: f.type for f in dataclasses.fields(Measurement)}
STR_FIELDS = tuple(n for n in COLUMNS if _KINDS[n] == "str")
INT_FIELDS = tuple(n for n in COLUMNS if _KINDS[n] == "int")
TIME_FIELDS = tuple(n for n in COLUMNS if _KINDS[n] == "float")
BOOL_FIELDS = tuple(n for n in COLUMNS if _KINDS[n] == "bool")


@dataclasses.dataclass(frozen=True)
class MeasurementSet:
    """Measured points plus the environment they were measured in (JSON-serializable dict)."""

    rows: tuple[Measurement, ...]
    env: Mapping = dataclasses.field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.rows)

    def of(self, *ops: str) -> MeasurementSet:
        """The rows of the given op classes."""
        return MeasurementSet(tuple(r for r in self.rows if r.op in ops), self.env)


def rows_of(measurements: MeasurementSet | Sequence[Measurement]) -> list[Measurement]:
    """The rows of a `MeasurementSet`, or the given sequence of rows, as a list."""
    return list(measurements.rows if isinstance(measurements, MeasurementSet) else measurements)


def itemsize(dtype: str) -> int:
    """Bytes per element of a dtype name ("float32" → 4, "bfloat16" → 2, "float8_e4m3fn" → 1).

    Raises:
      ValueError: a name that is no element type.
    """
    try:
        return int(np.dtype(jnp.dtype(dtype)).itemsize)
    except TypeError as e:
        raise ValueError(f"dtype={dtype!r} is not a known element type") from e


# The GEMM kernel whose output is FP32 whatever its inputs (the accumulator, written as is; see
# kernels.gemm_points); any other gemm kernel writes its input dtype.
GEMM_FP32_OUT = "matmul_fp32_out"


def gemm_out_itemsize(row: Measurement) -> int:
    """Bytes per output element of a `gemm` row: 4 for `GEMM_FP32_OUT`, else its dtype's
    (docs/measurements.md, "What `bytes` and `flops` count").

    Raises:
      ValueError: a dtype that is no element type (`itemsize`).
    """
    return 4 if row.kernel == GEMM_FP32_OUT else itemsize(row.dtype)


# ----------------------------------------------------------------------------- writing


def format_row(row: Measurement) -> str:
    """One CSV line of `row` in `COLUMNS` order (floats in shortest round-trip form, bools 0/1)."""
    out = []
    for name in COLUMNS:
        value = getattr(row, name)
        if name in BOOL_FIELDS:
            out.append("1" if value else "0")
        elif name in TIME_FIELDS:
            out.append(repr(float(value)))
        else:
            out.append(str(int(value)) if not isinstance(value, str) else value)
    return ",".join(out)


def write_csv(path: str | os.PathLike, mset: MeasurementSet) -> pathlib.Path:
    """Write `mset` as a measurement file (docs/measurements.md), atomically.

    Layout: the magic line `# paretolab-measurements schema=1`, `# env={json}`, the header row
    (`COLUMNS`), one `format_row` per row. `read_csv` reads it back exactly.

    Args:
      path: destination file; parent folders are created.
      mset: rows and environment.

    Returns:
      The path written.
    """
    lines = [f"{MAGIC} schema={SCHEMA_VERSION}", "# env=" + json.dumps(dict(mset.env), sort_keys=True),
             ",".join(COLUMNS)]
    lines.extend(format_row(r) for r in mset.rows)
    return write_text_atomic(path, "\n".join(lines) + "\n")


# ----------------------------------------------------------------------------- reading


@dataclasses.dataclass(frozen=True)
class FieldParser:
    """Parses fields of one text file; every error names the file, the line and the field.

    `fail(lineno, field, message)` raises ValueError('<file>:<line>: field <field>: <message>').
    """

    name: str

    @classmethod
    def read(cls, source: str | os.PathLike) -> tuple[FieldParser, str]:
        """A parser named after the file `source`, and the file's text."""
        path = pathlib.Path(source)
        return cls(str(path)), path.read_text()

    def fail(self, lineno: int, field: str | None, message: str) -> NoReturn:
        where = f"{self.name}:{lineno}"
        raise ValueError(f"{where}: field {field!r}: {message}" if field else f"{where}: {message}")

    def integer(self, lineno: int, field: str, text: str) -> int:
        """A plain non-negative decimal integer ("1024", not "1024.0" or "1e3")."""
        if not re.fullmatch(r"[+]?\d+", text.strip()):
            self.fail(lineno, field, f"{text!r} is not a non-negative integer")
        return int(text)

    def time(self, lineno: int, field: str, text: str, *, allow_zero: bool = False) -> float:
        """A finite positive number (non-negative with `allow_zero`): NaN, inf and negatives fail."""
        try:
            value = float(text)
        except ValueError:
            self.fail(lineno, field, f"{text!r} is not a number")
        if not math.isfinite(value):
            self.fail(lineno, field, f"{text!r} is not finite")
        if value < 0 or (value == 0 and not allow_zero):
            self.fail(lineno, field, f"{text!r} must be {'non-negative' if allow_zero else 'positive'}")
        return value


_REQUIRED = ("op", "dtype", "median_s")


def read_csv(source: str | os.PathLike) -> MeasurementSet:
    """Read a measurement file in the documented schema (docs/measurements.md), strictly.

    The file starts with `# paretolab-measurements schema=1`, may carry `# env={json}` and other
    `#` comment lines, then a header row naming columns of `COLUMNS` (any order; `op`, `dtype` and
    `median_s` required, the others default as in `Measurement`, `kernel` to `op`, `min_s` to
    `median_s`, `source` to "csv"), then one row per point.

    Args:
      source: path of the CSV file.

    Returns:
      A `MeasurementSet` (env from the `# env=` line, else {}).

    Raises:
      ValueError: naming the line number and field, for a missing or wrong magic line, an unknown,
        missing or duplicated column, a row with the wrong number of fields, a non-integer size,
        a NaN/inf/non-positive time, an unknown op, or an empty line.
    """
    parse, text = FieldParser.read(source)
    lines = text.splitlines()
    if not lines or not lines[0].startswith(MAGIC):
        parse.fail(1, None, f"expected the magic line {MAGIC!r} schema={SCHEMA_VERSION}")
    match = re.fullmatch(re.escape(MAGIC) + r" schema=(\d+)\s*", lines[0])
    if not match or int(match.group(1)) != SCHEMA_VERSION:
        parse.fail(1, "schema", f"{lines[0]!r}: this reader knows schema={SCHEMA_VERSION}")
    env, header, rows = {}, None, []
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            parse.fail(lineno, None, "empty line")
        if line.startswith("#"):
            if line.startswith("# env="):
                if header is not None:
                    parse.fail(lineno, "env", "the env line must come before the header row")
                try:
                    env = json.loads(line[len("# env="):])
                except json.JSONDecodeError as e:
                    parse.fail(lineno, "env", f"invalid JSON: {e}")
                if not isinstance(env, dict):
                    parse.fail(lineno, "env", "must be a JSON object")
            continue
        fields = next(csv.reader([line]))
        if header is None:
            header = [f.strip() for f in fields]
            unknown = [f for f in header if f not in COLUMNS]
            missing = [f for f in _REQUIRED if f not in header]
            dupes = sorted({f for f in header if header.count(f) > 1})
            if unknown or missing or dupes:
                parse.fail(lineno, "header", f"unknown columns {unknown}, missing {missing}, duplicated {dupes}")
            continue
        if len(fields) != len(header):
            parse.fail(lineno, None, f"{len(fields)} fields but the header has {len(header)}")
        rows.append(_csv_row(parse, lineno, dict(zip(header, (f.strip() for f in fields)))))
    if header is None:
        parse.fail(len(lines), "header", "no header row")
    return MeasurementSet(tuple(rows), env)


def _csv_row(parse: FieldParser, lineno: int, raw: dict[str, str]) -> Measurement:
    values: dict = {}
    for field, text in raw.items():
        if field in INT_FIELDS:
            values[field] = parse.integer(lineno, field, text)
        elif field in TIME_FIELDS:
            values[field] = parse.time(lineno, field, text, allow_zero=field == "iqr_s")
        elif field in BOOL_FIELDS:
            if text not in ("0", "1"):
                parse.fail(lineno, field, f"{text!r} must be 0 or 1")
            values[field] = text == "1"
        else:
            values[field] = text
    values.setdefault("kernel", values["op"])
    values.setdefault("min_s", values["median_s"])
    values.setdefault("source", "csv")
    if values["op"] not in OP_CLASSES:
        parse.fail(lineno, "op", f"{values['op']!r} is not one of {OP_CLASSES}")
    try:
        return Measurement(**values)
    except ValueError as e:  # a cross-field check: name the field the message starts with
        field = next((f for f in raw if re.match(rf"{f}\b", str(e))), None)
        parse.fail(lineno, field, str(e))
