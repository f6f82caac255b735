"""Files replaced whole or not at all: a killed run never leaves half a results file or .npz.

`write` writes to a temporary file in the target's directory and renames it over the target
(`os.replace`, atomic within a filesystem): until the new file is complete, the old one is
there as it was, and a failed write leaves no temporary file behind.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import IO, Any, Callable

import jax

Path = str | os.PathLike


def write(path: Path, write_to: Callable[[IO], Any], *, text: bool = False) -> Path:
  """Calls `write_to(f)` on a new file (UTF-8 text if `text`, else binary) that then
  replaces `path`; returns `path`. Missing parent directories are made."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp_path = tempfile.mkstemp(suffix=os.path.splitext(path)[1] + ".tmp", dir=directory)
  try:
    with (os.fdopen(fd, "w", encoding="utf-8") if text else os.fdopen(fd, "wb")) as f:
      write_to(f)
    os.replace(tmp_path, path)
  except BaseException:
    os.unlink(tmp_path)
    raise
  return path


def write_json(path: Path, value: Any) -> Path:
  """Writes `value` as JSON to `path` atomically, in process 0 only (every process may call
  it; results are the same on all); returns `path`."""
  if jax.process_index() == 0:
    write(path, lambda f: json.dump(value, f, indent=1), text=True)
  return path
