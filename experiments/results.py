"""Results a researcher can trust: atomic files, run metadata, resumable sweeps.

Every experiment run owns one `ResultsDir` (`results/NAME/<timestamp>/` or `--out DIR`). All files in
it are written atomically (a temporary file in the same folder, then `os.replace`), so a run killed at
any moment leaves each file either absent or complete. `sweep` processes work items in chunks and
rewrites its results file after each chunk; run again with the same folder, it skips what is done.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import importlib.metadata
import io
import json
import math
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import tqdm

PACKAGES = ("jax", "jaxlib", "flax", "optax", "numpy", "ml_dtypes", "matplotlib", "tqdm")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> pathlib.Path:
    """Write `data` to `path` atomically: a temporary file in the same folder, fsync, `os.replace`.

    Readers see the old file or the new one, never a partial one, even if the process is killed.

    Args:
      path: destination file; its parent folders are created.
      data: the bytes to write.

    Returns:
      The destination path.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> pathlib.Path:
    """Write UTF-8 `text` to `path` atomically (see `atomic_write_bytes`)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def _jsonable(obj: Any) -> Any:
    """Convert dataclasses, numpy/JAX scalars and arrays, tuples and paths into JSON values.

    Raises:
      ValueError: a non-finite float (JSON has no NaN/Inf; results must say what went wrong instead).
    """
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, pathlib.PurePath):
        return str(obj)
    if hasattr(obj, "tolist") and callable(obj.tolist):  # numpy / JAX arrays and scalars
        return _jsonable(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        raise ValueError(f"non-finite value {obj!r} cannot be written to JSON")
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise ValueError(f"cannot write {type(obj).__name__} value {obj!r} to JSON")


def write_json(path: str | os.PathLike, obj: Any) -> pathlib.Path:
    """Write `obj` as indented JSON, atomically. Raises ValueError on NaN/Inf or unknown types."""
    return atomic_write_text(path, json.dumps(_jsonable(obj), indent=2, sort_keys=False) + "\n")


def write_csv(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None):
    """Write rows (dicts) as a CSV table with a header, atomically.

    Args:
      path: destination file.
      rows: one mapping per row.
      columns: column order; default: keys in order of first appearance over all rows.

    Raises:
      ValueError: a row has a key that is not among `columns`.
    """
    if columns is None:
        columns = list(dict.fromkeys(k for row in rows for k in row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        extra = set(row) - set(columns)
        if extra:
            raise ValueError(f"row has columns {sorted(extra)} not among {list(columns)}")
        writer.writerow({k: _jsonable(v) for k, v in row.items()})
    return atomic_write_text(path, buf.getvalue())


def read_csv(path: str | os.PathLike) -> list[dict[str, str]]:
    """Read a CSV table written by `write_csv` (values come back as strings)."""
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def git_sha(cwd: str | os.PathLike | None = None) -> str | None:
    """The git commit of the working tree (suffixed "-dirty" with uncommitted changes), or None."""
    cwd = cwd or pathlib.Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                             check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("-dirty" if dirty else "")


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux, `platform.processor()` elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def collect_metadata() -> dict[str, Any]:
    """Where and with what a result was produced: versions, backend, devices, CPU, git SHA.

    Returns:
      A JSON-ready dict with python, platform, packages (name -> version), backend, device_kind,
      device_count, cpu_model, cpu_count, git_sha, argv.
    """
    import jax  # imported here: `experiments list` must not start JAX

    packages = {}
    for name in PACKAGES:
        try:
            packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            packages[name] = None
    devices = jax.devices()
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": packages,
        "backend": jax.default_backend(),
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "git_sha": git_sha(),
        "argv": list(sys.argv),
    }


def timestamp() -> str:
    """UTC time as a folder name, e.g. 20250101T120000Z."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


class ResultsDir:
    """The output folder of one run; every write is atomic.

    Args:
      path: the folder (created if missing).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = pathlib.Path(path)
        self.path.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"ResultsDir({str(self.path)!r})"

    def file(self, name: str) -> pathlib.Path:
        """Path of file `name` inside the folder (no sub-paths escaping it)."""
        p = (self.path / name).resolve()
        if self.path.resolve() not in p.parents:
            raise ValueError(f"file name {name!r} leaves the results folder {self.path}")
        return p

    def exists(self, name: str) -> bool:
        return self.file(name).exists()

    def write_text(self, name: str, text: str) -> pathlib.Path:
        return atomic_write_text(self.file(name), text)

    def write_json(self, name: str, obj: Any) -> pathlib.Path:
        return write_json(self.file(name), obj)

    def read_json(self, name: str) -> Any:
        return json.loads(self.file(name).read_text(encoding="utf-8"))

    def write_csv(self, name: str, rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None):
        return write_csv(self.file(name), rows, columns)

    def save_figure(self, name: str, fig) -> pathlib.Path:
        """Save a matplotlib Figure as PNG atomically."""
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
        return atomic_write_bytes(self.file(name), buf.getvalue())

    def sweep(self, name: str, items: Sequence[Any], fn: Callable[[list[Any]], list[Mapping[str, Any]]],
              key: Callable[[Any], str] = str, chunk_size: int = 1, desc: str | None = None) -> list[dict]:
        """A resumable sweep over `items`; see `sweep`. Results go to `<name>.jsonl` in this folder."""
        return sweep(self.file(f"{name}.jsonl"), items, fn, key=key, chunk_size=chunk_size,
                     desc=desc or name)


def _read_done(path: pathlib.Path) -> dict[str, dict]:
    done: dict[str, dict] = {}
    if not path.exists():
        return done
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            row = json.loads(line)
            done[row["key"]] = row
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{path}:{lineno}: malformed sweep line {line[:80]!r}: {e}") from e
    return done


def sweep(path: str | os.PathLike, items: Sequence[Any], fn: Callable[[list[Any]], list[Mapping[str, Any]]],
          key: Callable[[Any], str] = str, chunk_size: int = 1, desc: str = "sweep") -> list[dict]:
    """Process `items` in chunks, saving each finished chunk; skip items already saved at `path`.

    After each chunk the whole results file (done rows + the chunk's rows) is rewritten atomically,
    so an interruption (Ctrl-C, a kill) loses at most the chunk in progress. Calling `sweep` again
    with the same `path` and items resumes: items whose key is in the file are not recomputed.

    Args:
      path: JSON-lines results file; one row per item, each with a "key" field.
      items: the work items, in order.
      fn: maps a list of items (one chunk) to one row (a JSON-ready mapping) per item, same order.
      key: a unique string per item (default `str`); rows are stored and found under it.
      chunk_size: items per call of `fn` (and per save).
      desc: tqdm progress-bar label.

    Returns:
      One row per item, in the order of `items`, each a dict with "key" first.

    Raises:
      ValueError: duplicate keys, chunk_size < 1, `fn` returning the wrong number of rows, rows
        saved at `path` whose keys are not among `items` (a different sweep in the same folder).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size} must be >= 1")
    path = pathlib.Path(path)
    keys = [key(item) for item in items]
    if len(set(keys)) != len(keys):
        dup = sorted({k for k in keys if keys.count(k) > 1})
        raise ValueError(f"sweep {desc!r}: duplicate item keys {dup}")
    done = _read_done(path)
    stray = set(done) - set(keys)
    if stray:
        raise ValueError(f"{path} holds rows for keys {sorted(stray)[:5]} that are not items of this sweep; "
                         "use a fresh output folder")
    todo = [(k, item) for k, item in zip(keys, items) if k not in done]
    with tqdm.tqdm(total=len(items), initial=len(items) - len(todo), desc=desc, unit="item",
                   disable=None) as bar:
        for start in range(0, len(todo), chunk_size):
            chunk = todo[start:start + chunk_size]
            rows = list(fn([item for _, item in chunk]))
            if len(rows) != len(chunk):
                raise ValueError(f"sweep {desc!r}: fn returned {len(rows)} rows for {len(chunk)} items")
            for (k, _), row in zip(chunk, rows):
                done[k] = {"key": k, **{c: v for c, v in row.items() if c != "key"}}
            lines = [json.dumps(_jsonable(done[k])) for k in keys if k in done]
            atomic_write_text(path, "\n".join(lines) + "\n")
            bar.update(len(chunk))
    return [done[k] for k in keys]
