"""Bytes moved by the collectives of a compiled XLA program, read from its HLO text.

`compiled.cost_analysis()` has no collective bytes, so we read them from `compiled.as_text()`. Each
collective's result shape and replica-group size n give the bytes one device sends, under the usual
algorithms (the conventions of NCCL's bus bandwidth):

  all-to-all          S·(n−1)/n    (S: result bytes; the device's own chunk stays)
  all-gather          S·(n−1)/n    (S: gathered result; the device's shard reaches n−1 peers)
  reduce-scatter      S·(n−1)      (S: scattered result = input/n)
  all-reduce          2·S·(n−1)/n  (ring: reduce-scatter then all-gather)
  collective-permute  S            (a device in a source–target pair sends its whole buffer)

Async pairs (`*-start` / `*-done`, GPU) are counted once, at the `-done` (its result is the output),
with the replica groups of its `-start`; async-wrapped ops are found inside their wrapped computation.
Ops inside loop bodies are counted once (the static count, like `cost_analysis`).

References:
  XLA operation semantics (AllToAll, AllGather, AllReduce, ReduceScatter, CollectivePermute).
  NCCL performance notes: algorithm and bus bandwidth (nccl-tests, doc/PERFORMANCE.md).
"""

from __future__ import annotations

import dataclasses
import re

KINDS = ("all-to-all", "all-reduce", "all-gather", "reduce-scatter", "collective-permute")

_BITS = {
    "pred": 8, "s2": 2, "u2": 2, "s4": 4, "u4": 4, "s8": 8, "u8": 8, "s16": 16, "u16": 16, "s32": 32, "u32": 32,
    "s64": 64, "u64": 64, "f16": 16, "bf16": 16, "f32": 32, "f64": 64, "c64": 64, "c128": 128,
    "f4e2m1fn": 4, "f6e2m3fn": 6, "f6e3m2fn": 6, "f8e3m4": 8, "f8e4m3": 8, "f8e4m3fn": 8, "f8e4m3fnuz": 8,
    "f8e4m3b11fnuz": 8, "f8e5m2": 8, "f8e5m2fnuz": 8, "f8e8m0fnu": 8,
}
_OP = re.compile(r"=\s*(?P<type>.*?)\s+(?P<op>" + "|".join(KINDS) + r")(?P<phase>-start|-done)?\((?P<args>[^)]*)\)")
_NAME = re.compile(r"^\s*(?:ROOT\s+)?%?(?P<name>[\w.\-]+)\s*=")
_ARRAY = re.compile(r"\b([a-z]+[0-9a-z]*)\[([0-9,]*)\]")
_GROUPS_LIST = re.compile(r"replica_groups=\{\{([0-9,]*)\}")
_GROUPS_IOTA = re.compile(r"replica_groups=\[([0-9]+),([0-9]+)\]<=")
_PARTITIONS = re.compile(r"num_partitions=([0-9]+)")


@dataclasses.dataclass(frozen=True)
class Collective:
    """One collective of a compiled program.

    Attributes:
      kind: one of KINDS.
      name: the HLO instruction name.
      result_bytes: bytes of its result on one device.
      group_size: devices per replica group n.
      bytes_moved: bytes one device sends (module docstring).
    """

    kind: str
    name: str
    result_bytes: int
    group_size: int
    bytes_moved: float


def _type_bytes(type_str: str) -> int:
    bits = 0
    for dtype, dims in _ARRAY.findall(type_str):
        if dtype not in _BITS:
            raise ValueError(f"unknown HLO element type {dtype!r} in {type_str!r}")
        count = 1
        for d in filter(None, dims.split(",")):
            count *= int(d)
        bits += count * _BITS[dtype]
    return -(-bits // 8)


def _group_size(line: str, n_devices: int) -> int:
    if m := _GROUPS_IOTA.search(line):
        return int(m.group(2))
    if m := _GROUPS_LIST.search(line):
        return len([x for x in m.group(1).split(",") if x])
    return n_devices  # replica_groups={} or absent: all devices


def collectives(compiled, *, n_devices: int | None = None) -> list[Collective]:
    """Every collective of a compiled program (or of its HLO text), in text order.

    Args:
      compiled: a `jax.stages.Compiled` (or anything with `as_text()`), or HLO text.
      n_devices: devices of the program, used where replica groups are empty (default: the
        module's num_partitions, else 1).

    Returns:
      A list of `Collective`.

    Raises:
      ValueError: an element type this parser does not know.
    """
    text = compiled if isinstance(compiled, str) else compiled.as_text()
    if n_devices is None:
        m = _PARTITIONS.search(text)
        n_devices = int(m.group(1)) if m else 1
    lines = text.splitlines()
    starts = {}
    for line in lines:
        op, name = _OP.search(line), _NAME.match(line)
        if op and name and op.group("phase") == "-start":
            starts[name.group("name")] = line
    found = []
    for line in lines:
        op, name = _OP.search(line), _NAME.match(line)
        if not op or not name or op.group("phase") == "-start":
            continue
        kind = op.group("op")
        group_line = line
        if op.group("phase") == "-done":
            operand = op.group("args").strip().split(",")[0].split()[-1].lstrip("%")
            group_line = starts.get(operand, line)
        n = _group_size(group_line, n_devices)
        size = _type_bytes(op.group("type"))
        if kind in ("all-to-all", "all-gather"):
            moved = size * (n - 1) / n
        elif kind == "reduce-scatter":
            moved = size * (n - 1)
        elif kind == "all-reduce":
            moved = 2 * size * (n - 1) / n
        else:
            moved = float(size) if "source_target_pairs={{" in group_line else 0.0
        found.append(Collective(kind, name.group("name"), size, n, moved))
    return found


def collective_bytes(compiled, *, n_devices: int | None = None) -> dict[str, float]:
    """Bytes one device sends per collective kind: {"all-to-all": …, "all-reduce": …, …}.

    Every kind in KINDS is present (0.0 when the program has none). See the module docstring for
    the per-kind convention.

    Args:
      compiled: a `jax.stages.Compiled`, or HLO text.
      n_devices: as in `collectives`.

    Returns:
      dict kind -> bytes per device.
    """
    out = dict.fromkeys(KINDS, 0.0)
    for c in collectives(compiled, n_devices=n_devices):
        out[c.kind] += c.bytes_moved
    return out
