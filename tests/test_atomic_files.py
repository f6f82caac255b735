"""Atomic writes: the old file stays whole until the new one is, and failures leave no trace."""
import json
import os
import socket
import stat
import subprocess
import sys

import jax
import pytest

from bit_jax import atomic_files


def test_write_replaces_the_file_and_makes_its_directory(tmp_path):
  path = tmp_path / "new" / "dir" / "data.bin"
  assert atomic_files.write(path, lambda f: f.write(b"one")) == path
  atomic_files.write(path, lambda f: f.write(b"two"))
  assert path.read_bytes() == b"two"
  atomic_files.write(str(path), lambda f: f.write("drei"), text=True)
  assert path.read_text(encoding="utf-8") == "drei"
  assert os.listdir(path.parent) == ["data.bin"]  # No temporary file left behind.


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary_file(tmp_path):
  path = tmp_path / "results.json"
  path.write_text("old", encoding="utf-8")

  def half_then_fail(f):
    f.write("half")
    raise KeyboardInterrupt  # Also an interruption, not only an error.

  with pytest.raises(KeyboardInterrupt):
    atomic_files.write(path, half_then_fail, text=True)
  assert path.read_text(encoding="utf-8") == "old"
  assert os.listdir(tmp_path) == ["results.json"]


def test_write_json_round_trips_and_cleans_up_an_unserializable_value(tmp_path):
  path = tmp_path / "r.json"
  assert atomic_files.write_json(path, {"top1": [0.5, 0.75], "task": "dtd"}) == path
  assert json.loads(path.read_text(encoding="utf-8")) == {"top1": [0.5, 0.75], "task": "dtd"}
  with pytest.raises(TypeError):
    atomic_files.write_json(path, {"bad": object()})  # Fails halfway through the dump.
  assert json.loads(path.read_text(encoding="utf-8"))["task"] == "dtd"
  assert os.listdir(tmp_path) == ["r.json"]


def test_only_process_zero_writes_json(tmp_path, monkeypatch):
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  path = tmp_path / "r.json"
  assert atomic_files.write_json(path, {"a": 1}) == path  # Every process gets the path.
  assert not path.exists()


def _dead_pid():
  """The id of a process that has exited (and been reaped)."""
  child = subprocess.Popen([sys.executable, "-c", "pass"])
  child.wait()
  return child.pid


def test_temporary_files_a_killed_writer_left_are_removed_by_the_next_write(tmp_path):
  host = socket.gethostname()
  stale = tmp_path / f".params.npz.{host}.{_dead_pid()}.0badcafe.tmp"
  live = tmp_path / f".params.npz.{host}.{os.getppid()}.0badcafe.tmp"  # Still writing.
  other_host = tmp_path / f".params.npz.elsewhere-{host}.{_dead_pid()}.0badcafe.tmp"
  other_target = tmp_path / f".other.npz.{host}.{_dead_pid()}.0badcafe.tmp"
  for orphan in (stale, live, other_host, other_target):
    orphan.write_bytes(b"half")
  atomic_files.write(tmp_path / "params.npz", lambda f: f.write(b"whole"))
  assert sorted(os.listdir(tmp_path)) == sorted(
      ["params.npz", live.name, other_host.name, other_target.name])


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_files_get_the_mode_the_umask_gives(tmp_path, umask):
  old = os.umask(umask)
  try:
    atomic_files.write(tmp_path / "a.json", lambda f: f.write("{}"), text=True)
    atomic_files.write(tmp_path / "a.json", lambda f: f.write("[]"), text=True)  # Replaced.
  finally:
    os.umask(old)
  assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o666 & ~umask


def test_move_aside_keeps_the_file_under_a_new_name(tmp_path):
  path = tmp_path / "seed0.json"
  path.write_text("{trunc", encoding="utf-8")
  first = atomic_files.move_aside(path)
  path.write_text("", encoding="utf-8")
  second = atomic_files.move_aside(path)  # The same second: a second name, nothing lost.
  assert not path.exists() and first != second
  assert os.path.basename(first).startswith("seed0.json.unreadable-")
  assert (open(first).read(), open(second).read()) == ("{trunc", "")


@pytest.mark.parametrize("text,problem", [
    ('{"top1": 0.5', "not JSON"), ("", "not JSON"), ("[1, 2]", "no JSON object in it"),
    ("{}", "no JSON object in it"), ('{"top1": null}', "no top1")])
def test_read_json_sets_an_unusable_record_aside_with_one_line(tmp_path, caplog, text,
                                                                problem):
  path = tmp_path / "seed0.json"
  path.write_text(text, encoding="utf-8")
  check = lambda record: None if record.get("top1") is not None else "no top1"
  assert atomic_files.read_json(path, check) is None
  [aside] = tmp_path.glob("seed0.json.unreadable-*")
  assert aside.read_text(encoding="utf-8") == text and not path.exists()
  [logged] = [r.getMessage() for r in caplog.records if "is unusable" in r.getMessage()]
  assert f"({problem}" in logged and str(aside) in logged and "computing it again" in logged
  assert "\n" not in logged


def test_read_json_returns_a_usable_record_and_none_for_no_file(tmp_path):
  path = tmp_path / "result.json"
  assert atomic_files.read_json(path) is None
  atomic_files.write_json(path, {"top1": 0.5})
  assert atomic_files.read_json(path, lambda record: None) == {"top1": 0.5}
  assert os.listdir(tmp_path) == ["result.json"]
