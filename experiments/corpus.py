"""A byte-level text corpus that needs no download: CPython's own docs and standard library.

The default corpus is the English prose of `pydoc_data.topics` (the help() topics, ~0.46 MB) followed
by the source of a fixed list of pure-Python standard-library modules (`STDLIB_MODULES`, ~1 MB of
code). Its bytes differ between Python versions, so every result records the corpus's SHA-256 and the
Python version. Any local text file or folder can replace it (`corpus=PATH` / `--corpus PATH`).

Split: the byte stream is cut into blocks of `block_bytes`; blocks are ranked by SHA-256 of their
index, the first `val_fraction` of the ranking is validation, the next `test_fraction` is test, the
rest is train; each split keeps its blocks in stream order. Deterministic, interleaved (prose and code
land in every split), and independent of any RNG.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import os
import pathlib
import platform

import numpy as np

# Pure-Python modules present in CPython 3.11-3.14 (resolved with importlib, so a module that
# became a package, e.g. `string` in 3.14, is read from its __init__.py).
STDLIB_MODULES: tuple[str, ...] = (
    "argparse", "ast", "bisect", "calendar", "collections", "contextlib", "copy", "csv",
    "dataclasses", "difflib", "enum", "fractions", "functools", "heapq", "inspect", "json.decoder",
    "json.encoder", "pprint", "queue", "random", "shlex", "statistics", "string", "textwrap",
    "tokenize", "typing", "urllib.parse",
)
SEPARATOR = b"\n\n"


@dataclasses.dataclass(frozen=True, eq=False)
class Corpus:
    """A byte corpus split into train/validation/test.

    Attributes:
      name: "cpython" or the path it was read from.
      documents: names of the documents, in stream order.
      skipped: files of a folder that were not read (binary or not UTF-8), with the reason.
      sha256: hex SHA-256 of the whole byte stream (before the split).
      python_version: the interpreter's version (the default corpus depends on it).
      n_bytes: length of the byte stream.
      train, val, test: uint8 arrays [n_train], [n_val], [n_test].
    """

    name: str
    documents: tuple[str, ...]
    skipped: tuple[str, ...]
    sha256: str
    python_version: str
    n_bytes: int
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def describe(self) -> dict:
        """JSON-ready record of what was read: name, SHA-256, Python version, sizes, documents."""
        return {
            "name": self.name, "sha256": self.sha256, "python_version": self.python_version,
            "n_bytes": self.n_bytes, "n_train": int(self.train.size), "n_val": int(self.val.size),
            "n_test": int(self.test.size), "n_documents": len(self.documents),
            "documents": list(self.documents), "skipped": list(self.skipped),
        }


def cpython_documents() -> list[tuple[str, bytes]]:
    """The default corpus's documents: pydoc topics (sorted by topic) then `STDLIB_MODULES` sources.

    Raises:
      ValueError: a listed module has no source file in this Python (e.g. it is frozen).
    """
    from pydoc_data.topics import topics  # the help() texts of the running CPython

    prose = "\n\n".join(topics[k].strip() for k in sorted(topics)).encode("utf-8")
    docs = [("pydoc_data.topics", prose)]
    for name in STDLIB_MODULES:
        spec = importlib.util.find_spec(name)
        origin = getattr(spec, "origin", None)
        if not origin or not origin.endswith(".py") or not os.path.isfile(origin):
            raise ValueError(f"standard-library module {name!r} has no source file here (origin={origin!r})")
        docs.append((name, pathlib.Path(origin).read_bytes()))
    return docs


def _text_or_reason(data: bytes) -> str | None:
    if b"\x00" in data:
        return "contains NUL bytes (binary)"
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        return f"not UTF-8 ({e.reason} at byte {e.start})"
    return None


def path_documents(path: str | os.PathLike) -> tuple[list[tuple[str, bytes]], list[str]]:
    """Documents of a text file, or of every text file under a folder (sorted by relative path).

    Hidden files and folders (names starting with ".") are not visited. Files of a folder that are
    binary or not UTF-8 are skipped and listed with the reason; an explicitly named file must be text.

    Returns:
      (documents as (relative name, bytes), skipped files as "name: reason").

    Raises:
      ValueError: missing path, a named file that is not text, or no text at all.
    """
    path = pathlib.Path(path)
    if path.is_file():
        data = path.read_bytes()
        reason = _text_or_reason(data)
        if reason:
            raise ValueError(f"corpus file {str(path)!r} is not text: {reason}")
        docs, skipped = [(path.name, data)], []
    elif path.is_dir():
        docs, skipped = [], []
        for root, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for f in sorted(files):
                if f.startswith("."):
                    continue
                p = pathlib.Path(root) / f
                rel = p.relative_to(path).as_posix()
                data = p.read_bytes()
                reason = _text_or_reason(data)
                if reason:
                    skipped.append(f"{rel}: {reason}")
                else:
                    docs.append((rel, data))
        docs.sort(key=lambda d: d[0])
    else:
        raise ValueError(f"corpus path {str(path)!r} is neither a file nor a folder")
    if not any(data for _, data in docs):
        raise ValueError(f"corpus path {str(path)!r} holds no text (skipped: {skipped[:5]})")
    return docs, skipped


def split_blocks(data: np.ndarray, val_fraction: float, test_fraction: float,
                 block_bytes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Deterministic block split of a byte stream into train/validation/test.

    n_blocks = ceil(n / block_bytes); n_val = max(1, round(n_blocks · val_fraction)), likewise n_test.
    Blocks are ranked by SHA-256(str(index)); ranks [0, n_val) are validation, [n_val, n_val + n_test)
    test, the rest train. Each split concatenates its blocks in stream order.

    Args:
      data: uint8 [n].
      val_fraction, test_fraction: shares of blocks, each in (0, 0.5).
      block_bytes: block length in bytes.

    Returns:
      (train, val, test) uint8 arrays.

    Raises:
      ValueError: fractions out of range, block_bytes < 1, or fewer than 3 blocks.
    """
    for name, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 < frac < 0.5:
            raise ValueError(f"{name}={frac} must lie in (0, 0.5)")
    if block_bytes < 1:
        raise ValueError(f"block_bytes={block_bytes} must be >= 1")
    n_blocks = -(-data.size // block_bytes)
    n_val = max(1, round(n_blocks * val_fraction))
    n_test = max(1, round(n_blocks * test_fraction))
    if n_blocks < n_val + n_test + 1:
        raise ValueError(f"corpus of {data.size} bytes gives {n_blocks} blocks of {block_bytes} bytes: "
                         f"too few for {n_val} validation + {n_test} test + 1 train block")
    rank = sorted(range(n_blocks), key=lambda i: hashlib.sha256(str(i).encode()).digest())
    split = np.zeros(n_blocks, dtype=np.int8)  # 0 train, 1 val, 2 test
    split[rank[:n_val]] = 1
    split[rank[n_val:n_val + n_test]] = 2
    per_byte = np.repeat(split, block_bytes)[:data.size]
    return data[per_byte == 0], data[per_byte == 1], data[per_byte == 2]


def load_corpus(path: str | os.PathLike | None = None, val_fraction: float = 0.05,
                test_fraction: float = 0.05, block_bytes: int = 4096) -> Corpus:
    """Load and split a byte-level corpus: CPython's docs + stdlib (path=None) or a local file/folder.

    Documents are joined with a blank line (b"\\n\\n") into one stream; see `split_blocks`.

    Args:
      path: None for the CPython corpus, else a text file or a folder of text files.
      val_fraction, test_fraction, block_bytes: see `split_blocks`.

    Returns:
      A Corpus with its SHA-256 and the Python version.

    Raises:
      ValueError: unreadable or empty input, or a corpus too small to split.
    """
    if path is None:
        docs, skipped, name = cpython_documents(), [], "cpython"
    else:
        (docs, skipped), name = path_documents(path), str(path)
    stream = SEPARATOR.join(data for _, data in docs)
    arr = np.frombuffer(stream, dtype=np.uint8).copy()
    train, val, test = split_blocks(arr, val_fraction, test_fraction, block_bytes)
    return Corpus(name=name, documents=tuple(n for n, _ in docs), skipped=tuple(skipped),
                  sha256=hashlib.sha256(stream).hexdigest(), python_version=platform.python_version(),
                  n_bytes=len(stream), train=train, val=val, test=test)


def sample_batches(data: np.ndarray, n_batches: int, batch_size: int, seq_len: int, seed: int) -> np.ndarray:
    """Random training windows, the same for every run with the same seed (the data order).

    Args:
      data: uint8 [n] (a split).
      n_batches, batch_size, seq_len: output shape; each window holds seq_len + 1 bytes
        (inputs are [:-1], targets [1:]).
      seed: numpy PCG64 seed of the window offsets.

    Returns:
      int32 [n_batches, batch_size, seq_len + 1].

    Raises:
      ValueError: data shorter than one window.
    """
    if data.size < seq_len + 1:
        raise ValueError(f"split of {data.size} bytes is shorter than one window of {seq_len + 1}")
    rng = np.random.Generator(np.random.PCG64(seed))
    starts = rng.integers(0, data.size - seq_len, size=(n_batches, batch_size))
    return data[starts[..., None] + np.arange(seq_len + 1)].astype(np.int32)


def eval_windows(data: np.ndarray, seq_len: int, max_windows: int | None = None) -> np.ndarray:
    """Non-overlapping windows of a split, evenly spread over it, for evaluation.

    Args:
      data: uint8 [n].
      seq_len: window length minus one (inputs [:-1], targets [1:]).
      max_windows: take at most this many, at evenly spaced positions (None: all).

    Returns:
      int32 [n_windows, seq_len + 1].
    """
    n = data.size // (seq_len + 1)
    if n == 0:
        raise ValueError(f"split of {data.size} bytes is shorter than one window of {seq_len + 1}")
    idx = np.arange(n) if max_windows is None or max_windows >= n else \
        np.linspace(0, n - 1, max_windows).round().astype(int)
    return data[:n * (seq_len + 1)].reshape(n, seq_len + 1)[idx].astype(np.int32)
