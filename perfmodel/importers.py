"""Read other producers' measurements into `Measurement` rows: nccl-tests text output, and dispatch.

`read_measurements` reads either a measurement CSV (`perfmodel.measurements.read_csv`, by its magic
line) or nccl-tests output. Both readers are strict: a malformed line raises `ValueError` naming
the file, the line number and the field (`measurements.FieldParser`); nothing is skipped silently.
Times that are NaN, infinite, zero or negative are rejected.
"""

from __future__ import annotations

import math
import os
import pathlib
import re

from .measurements import COLLECTIVE_OPS, MAGIC, FieldParser, Measurement, MeasurementSet, read_csv

# ----------------------------------------------------------------------------- nccl-tests

NCCL_TESTS = {
    "all_reduce_perf": "all_reduce",
    "all_gather_perf": "all_gather",
    "reduce_scatter_perf": "reduce_scatter",
    "alltoall_perf": "all_to_all",
    "sendrecv_perf": "send_recv",
}
# nccl-tests data types, as printed in the "type" column, to numpy names.
_NCCL_TYPES = {
    "int8": "int8", "char": "int8", "uint8": "uint8", "int32": "int32", "int": "int32",
    "uint32": "uint32", "int64": "int64", "uint64": "uint64", "half": "float16", "float16": "float16",
    "float": "float32", "float32": "float32", "double": "float64", "float64": "float64",
    "bfloat16": "bfloat16", "f8e4m3": "float8_e4m3fn", "f8e5m2": "float8_e5m2",
}


def bus_bandwidth_factor(op: str, n_devices: int) -> float:
    """busbw / algbw of nccl-tests for `op` on n ranks.

    all_reduce 2(n−1)/n; all_gather, reduce_scatter, all_to_all (n−1)/n; send_recv 1.

    Args:
      op: a collective op class (`measurements.COLLECTIVE_OPS`).
      n_devices: ranks n ≥ 1.

    Returns:
      The dimensionless factor.

    Raises:
      ValueError: an op that is not a collective.

    References:
      nccl-tests doc/PERFORMANCE.md ("Bus bandwidth").
    """
    if op == "all_reduce":
        return 2 * (n_devices - 1) / n_devices
    if op in ("all_gather", "reduce_scatter", "all_to_all"):
        return (n_devices - 1) / n_devices
    if op == "send_recv":
        return 1.0
    raise ValueError(f"op={op!r} is not one of {COLLECTIVE_OPS}")


def _nccl_op(op: str | None, name: str, text: str) -> tuple[str, str]:
    if op is not None:
        for binary, ours in NCCL_TESTS.items():
            if op in (binary, ours):
                return binary, ours
        raise ValueError(f"op={op!r} is not one of {sorted(NCCL_TESTS)} or {sorted(NCCL_TESTS.values())}")
    found = {b for b in NCCL_TESTS if b in pathlib.Path(name).name} or {b for b in NCCL_TESTS if b in text}
    if len(found) != 1:
        raise ValueError(
            f"{name}: cannot tell which nccl-tests binary wrote it (found {sorted(found) or 'none'} in the "
            f"file name and text); pass op= one of {sorted(NCCL_TESTS)}"
        )
    binary = found.pop()
    return binary, NCCL_TESTS[binary]


def read_nccl_tests(source: str | os.PathLike, *, op: str | None = None, n_devices: int | None = None,
                    source_name: str = "nccl-tests") -> MeasurementSet:
    """Parse the text output of nccl-tests (all_reduce_perf, all_gather_perf, reduce_scatter_perf,
    alltoall_perf, sendrecv_perf) into collective points.

    The table (`size count type redop [root] time algbw busbw #wrong time algbw busbw #wrong`, out-of-
    place then in-place; older versions print `error` for `#wrong`) gives two points per size, kernel
    "<binary>/out-of-place" and "<binary>/in-place". nccl-tests prints the mean time over its `iters`
    in µs; it becomes `median_s` (seconds) with iqr_s = 0 and n_repeats = iters. Every row is checked:
    algbw = size / time (GB/s) and busbw = algbw · `bus_bandwidth_factor(op, n)`, to the printed
    precision, so a wrong op, rank count or shifted column is caught, not fitted.

    Args:
      source: path of the captured output (the "# Using devices" rank lines give n and the device).
      op: the binary or our op name; default: inferred from the file name or text.
      n_devices: ranks, when the output has no rank lines; must agree with them otherwise.
      source_name: the `source` column of the rows.

    Returns:
      A `MeasurementSet`; env holds the header, device kind, ranks and hosts.

    Raises:
      ValueError: naming line and field, for a malformed or missing table, an unknown data type, a
        NaN/inf/non-positive time, #wrong > 0, or algbw/busbw inconsistent with size/time.
    """
    parse, text = FieldParser.read(source)
    name = parse.name
    binary, ours = _nccl_op(op, name, text)
    lines = text.splitlines()
    env: dict = {"source": source_name, "file": pathlib.Path(name).name, "nccl_test": binary}
    ranks, hosts, kinds = [], set(), set()
    columns, header_line, rows, log_lines = None, 0, [], 0
    for lineno, line in enumerate(lines, start=1):
        stripped = line.strip()
        if re.search(r"\bNCCL (INFO|WARN)\b", line):
            log_lines += 1  # NCCL_DEBUG output interleaved with the table: counted in env, not data
            continue
        if stripped.startswith("# nThread"):
            env["header"] = stripped[1:].strip()
            tokens = stripped.split()
            iters = [tokens[i + 1] for i in range(1, len(tokens) - 1)
                     if tokens[i] == "iters:" and tokens[i - 1] not in ("warmup", "agg")]
            env["iters"] = int(iters[0]) if iters and iters[0].isdigit() else 1
            continue
        rank = re.match(r"#\s+Rank\s+(\d+)\s+Group\s+\d+\s+Pid\s+\d+\s+on\s+(\S+)\s+device\s+\d+\s+\[[^\]]*\]\s+(.*)$",
                        stripped)
        if rank:
            ranks.append(int(rank.group(1)))
            hosts.add(rank.group(2))
            kinds.add(rank.group(3).strip())
            continue
        if stripped.startswith("#"):
            tokens = stripped.lstrip("#").split()
            if tokens[:2] == ["size", "count"]:
                if columns is not None:
                    parse.fail(lineno, None, f"a second table (the first starts at line {header_line}); "
                                           "split the file, one test per file")
                columns, header_line = _nccl_columns(parse, lineno, tokens), lineno
            continue
        if not stripped or columns is None:
            continue  # prose, command lines or blank lines around the table
        rows.append((lineno, stripped.split()))
    if columns is None:
        parse.fail(len(lines), None, "no nccl-tests table (no '# size count type ...' header line)")
    if not rows:
        parse.fail(header_line, None, "the table has no rows")
    if ranks and sorted(ranks) != list(range(len(ranks))):
        parse.fail(1, "Rank", f"rank lines list ranks {sorted(ranks)}, expected 0..{len(ranks) - 1}")
    if n_devices is None:
        if not ranks:
            raise ValueError(f"{name}: no '#  Rank ...' lines; pass n_devices=")
        n_devices = len(ranks)
    elif ranks and n_devices != len(ranks):
        raise ValueError(f"{name}: n_devices={n_devices} but the file lists {len(ranks)} ranks")
    if n_devices < 1:
        raise ValueError(f"n_devices={n_devices} must be >= 1")
    env.update(op=ours, n_devices=n_devices, n_hosts=len(hosts) or None, log_lines_skipped=log_lines,
               device_kind=", ".join(sorted(kinds)) or None)
    factor = bus_bandwidth_factor(ours, n_devices)
    out = []
    for lineno, fields in rows:
        out += _nccl_row(parse, lineno, fields, columns, binary, ours, n_devices, factor,
                         env.get("iters", 1), source_name)
    return MeasurementSet(tuple(out), env)


def _nccl_columns(parse: FieldParser, lineno: int, tokens: list[str]) -> dict:
    if "time" not in tokens:
        parse.fail(lineno, "time", "header has no time column")
    first = tokens.index("time")
    lead, groups = tokens[:first], tokens[first:]
    for needed in ("size", "count", "type"):
        if needed not in lead:
            parse.fail(lineno, needed, "missing from the table header")
    if len(groups) != 8 or groups[0::4] != ["time", "time"] or groups[1::4] != ["algbw", "algbw"] \
            or groups[2::4] != ["busbw", "busbw"] or any(g not in ("#wrong", "error") for g in groups[3::4]):
        parse.fail(lineno, "time", f"expected 'time algbw busbw #wrong' twice after {lead}, got {groups}")
    return {"lead": lead, "n": len(lead) + 8}


def _nccl_row(parse, lineno, fields, columns, binary, op, n_devices, factor, iters, source_name):
    if len(fields) != columns["n"]:
        parse.fail(lineno, None, f"{len(fields)} fields, the table header has {columns['n']}: {' '.join(fields)}")
    lead = dict(zip(columns["lead"], fields))
    size = parse.integer(lineno, "size", lead["size"])
    parse.integer(lineno, "count", lead["count"])
    if size == 0:
        parse.fail(lineno, "size", "0 bytes: no collective point (run nccl-tests with -b > 0)")
    if lead["type"] not in _NCCL_TYPES:
        parse.fail(lineno, "type", f"{lead['type']!r} is not one of {sorted(_NCCL_TYPES)}")
    rows = []
    for placement, start in (("out-of-place", len(columns["lead"])), ("in-place", len(columns["lead"]) + 4)):
        time_text, algbw_text, busbw_text, wrong = fields[start:start + 4]
        time_us = parse.time(lineno, f"time ({placement})", time_text)
        algbw = parse.time(lineno, f"algbw ({placement})", algbw_text, allow_zero=True)
        busbw = parse.time(lineno, f"busbw ({placement})", busbw_text, allow_zero=True)
        if wrong != "N/A":
            try:
                bad = float(wrong)
            except ValueError:
                parse.fail(lineno, f"#wrong ({placement})", f"{wrong!r} is not a number or N/A")
            if not math.isfinite(bad) or (re.fullmatch(r"\d+", wrong) and bad > 0):
                parse.fail(lineno, f"#wrong ({placement})", f"{wrong} wrong results: the point is invalid")
        expect = size / time_us / 1e3  # GB/s
        if abs(algbw - expect) > 0.006 + 2e-3 * expect:
            parse.fail(lineno, f"algbw ({placement})", f"{algbw_text} GB/s but size/time = {expect:.4g} GB/s")
        if abs(busbw - algbw * factor) > 0.011 + 2e-3 * busbw:
            parse.fail(lineno, f"busbw ({placement})",
                       f"{busbw_text} GB/s but algbw·factor = {algbw * factor:.4g} GB/s for {op} on "
                       f"{n_devices} ranks (factor {factor:.4g}): wrong op or rank count?")
        t = time_us * 1e-6
        rows.append(Measurement(
            op=op, kernel=f"{binary}/{placement}", dtype=_NCCL_TYPES[lead["type"]], n_devices=n_devices,
            bytes=size, median_s=t, min_s=t, iqr_s=0.0, n_rounds=1, n_repeats=max(1, iters),
            source=source_name,
        ))
    return rows


def read_measurements(source: str | os.PathLike, **nccl_kwargs) -> MeasurementSet:
    """Read a measurement CSV (recognized by its magic line) or else nccl-tests output.

    Args:
      source: path of the file.
      **nccl_kwargs: `read_nccl_tests` options (op, n_devices, source_name).

    Returns:
      A `MeasurementSet`.

    Raises:
      ValueError: nccl-tests options given for a CSV, or whatever the reader raises.
    """
    with open(source) as f:
        first = f.readline()
    if first.startswith(MAGIC):
        if nccl_kwargs:
            raise ValueError(f"{source} is a measurement CSV; nccl-tests options {sorted(nccl_kwargs)} do not apply")
        return read_csv(source)
    return read_nccl_tests(source, **nccl_kwargs)


def concat(*sets: MeasurementSet) -> MeasurementSet:
    """All rows of `sets` in order; env lists each set's env under "parts"."""
    return MeasurementSet(tuple(r for s in sets for r in s.rows), {"parts": [dict(s.env) for s in sets]})
