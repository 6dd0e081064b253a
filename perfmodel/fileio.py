"""Atomic file writes for the files perfmodel produces (measurement CSVs, fitted profiles)."""

from __future__ import annotations

import os
import pathlib


def write_text_atomic(path: str | os.PathLike, text: str) -> pathlib.Path:
    """Write `text` to `path` atomically: a temporary file in the same folder, then `os.replace`.

    A reader sees the old file or the whole new one, never a partial write; parent folders are
    created.

    Args:
      path: destination file.
      text: its full contents.

    Returns:
      The path written.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path
