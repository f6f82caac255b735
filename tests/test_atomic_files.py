"""Atomic writes: the old file stays whole until the new one is, and failures leave no trace."""
import json
import os

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
