"""Files replaced whole or not at all: a killed run never leaves half a results file or .npz.

`write` writes to a temporary file in the target's directory and renames it over the target
(`os.replace`, atomic within a filesystem): until the new file is complete, the old one is
there as it was, and a failed write leaves no temporary file behind.

The temporary file is `.<name>.<host>.<pid>.<random>.tmp` beside the target, so what a killed
process left (it had no chance to clean up) is recognisable: each `write` first removes the
temporary files of the same target that this host's dead processes left. Those of live
processes, and of other hosts (whose processes cannot be checked from here), are kept.
Files are created with mode 0666 less the umask, as by any other tool (0644 under umask 022).

`write_directory` does the same for a directory (a SavedModel): written under a temporary
name, then renamed into place; the earlier one is moved aside and deleted only after.

`move_aside` renames a file that cannot be used (a truncated result) out of the way, never
deleting it, so that whoever reads it can redo its work and a person can still look at it;
`read_json` reads a record that way: one that cannot be used is set aside with one logged line.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import secrets
import shutil
import socket
from typing import IO, Any, Callable

import jax
from absl import logging

Path = str | os.PathLike


def write(path: Path, write_to: Callable[[IO], Any], *, text: bool = False) -> Path:
  """Calls `write_to(f)` on a new file (UTF-8 text if `text`, else binary) that then
  replaces `path`; returns `path`. Missing parent directories are made."""
  directory, name = os.path.split(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  _remove_stale_temporary_files(directory, name)
  tmp_path = os.path.join(directory, f".{name}.{_host()}.{os.getpid()}."
                                     f"{secrets.token_hex(4)}.tmp")
  # Not tempfile.mkstemp: its files are 0600 whatever the umask.
  fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
  try:
    with (os.fdopen(fd, "w", encoding="utf-8") if text else os.fdopen(fd, "wb")) as f:
      write_to(f)
    os.replace(tmp_path, path)
  except BaseException:
    os.unlink(tmp_path)
    raise
  return path


def write_directory(path: Path, write_to: Callable[[str], Any]) -> Path:
  """Calls `write_to(directory)` on a new temporary directory that then takes the name
  `path`; returns `path`. Between the two renames (POSIX cannot swap directories) `path` is
  briefly absent, never half written."""
  parent, name = os.path.split(os.path.abspath(path))
  os.makedirs(parent, exist_ok=True)
  _remove_stale_temporary_files(parent, name)
  temporary = lambda: os.path.join(
      parent, f".{name}.{_host()}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
  new = temporary()
  try:
    write_to(new)
    if os.path.lexists(path):
      old = temporary()
      os.rename(path, old)
      os.rename(new, path)
      shutil.rmtree(old)
    else:
      os.rename(new, path)
  except BaseException:
    shutil.rmtree(new, ignore_errors=True)
    raise
  return path


def write_json(path: Path, value: Any) -> Path:
  """Writes `value` as JSON to `path` atomically, in process 0 only (every process may call
  it; results are the same on all); returns `path`."""
  if jax.process_index() == 0:
    write(path, lambda f: json.dump(value, f, indent=1), text=True)
  return path


def move_aside(path: Path) -> str:
  """Renames `path` to `<path>.unreadable-<local time>` (made unique); returns the new path."""
  stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
  aside, n = f"{os.fspath(path)}.unreadable-{stamp}", 1
  while os.path.lexists(aside):
    n += 1
    aside = f"{os.fspath(path)}.unreadable-{stamp}-{n}"
  os.rename(path, aside)
  return aside


class Unusable(Exception):
  """A file is there but cannot be used; the message says why, e.g. "not JSON: ..."."""


def read_json_object(path: Path) -> dict | None:
  """The non-empty JSON object in `path`; None if there is no file; `Unusable` otherwise."""
  try:
    with open(path, encoding="utf-8") as f:
      value = json.load(f)
  except FileNotFoundError:
    return None
  except (OSError, ValueError) as e:  # Unreadable, truncated, empty, not UTF-8.
    raise Unusable(f"not JSON: {e}") from None
  if not isinstance(value, dict) or not value:
    raise Unusable("no JSON object in it")
  return value


def set_aside(path: Path, problem: str, then: str) -> None:
  """Moves an unusable file out of the way (process 0; the others only log it), logging one
  line with the `problem` and what happens `then`."""
  if jax.process_index() == 0:
    try:
      where = f"moved to {move_aside(path)}"
    except FileNotFoundError:  # Moved since it was read.
      where = "gone already"
  else:
    where = "process 0 moves it aside"
  logging.warning("%s is unusable (%s); %s, %s", os.fspath(path), problem, where, then)


def read_json(path: Path, problem: Callable[[dict], str | None] = lambda record: None,
              then: str = "computing it again") -> dict | None:
  """A finished piece's JSON record, or None if it must be done (again): no file, or one that
  is not a JSON object or in which `problem(record)` finds a problem (set aside, logged)."""
  try:
    record = read_json_object(path)
    found = None if record is None else problem(record)
  except Unusable as e:
    record, found = None, str(e)
  if found is None:
    return record
  set_aside(path, found, then)
  return None


def _host() -> str:
  return socket.gethostname() or "localhost"


def _remove_stale_temporary_files(directory: str, name: str) -> None:
  pattern = re.compile(rf"\.{re.escape(name)}\.{re.escape(_host())}\.(\d+)\.[0-9a-f]+\.tmp")
  for entry in os.listdir(directory):
    match = pattern.fullmatch(entry)
    if match and not _alive(int(match.group(1))):
      stale = os.path.join(directory, entry)
      try:
        if os.path.isdir(stale) and not os.path.islink(stale):
          shutil.rmtree(stale)  # A `write_directory`'s.
        else:
          os.unlink(stale)
      except FileNotFoundError:  # Another process removed it first.
        pass


def _alive(pid: int) -> bool:
  if pid == os.getpid():
    return True  # Another thread of this process may be writing the same target.
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # Someone else's process.
    return True
  return True
