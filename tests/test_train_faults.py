"""Nothing hangs, nothing is silently lost: a failed checkpoint write, Ctrl-C and
bad config or workdir inputs each end `train.py` with one line and a documented exit status;
a damaged latest checkpoint is set aside and the run goes on from the one before."""
import json
import logging
import os
import shutil
import signal
import subprocess
import sys

from absl import logging as absl_logging
import numpy as np
import pytest
import tensorflow as tf

from bit_jax import checkpointing, entry, errors, npz, run_settings, train
from configs import demo
from tests import faults, tiny_configs

ROOT = faults.ROOT
TINY = tiny_configs.UPSTREAM


def _error_lines(stderr):
  return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_failed_checkpoint_write_exits_with_one_line_and_keeps_the_previous(tmp_path):
  workdir = tmp_path / "run"
  overrides = dict(TINY, total_steps=6, checkpoint_every_steps=2, keep_checkpoints=1)
  done = faults.run_demo(workdir, overrides, fault=("fail_write_at", 4),
                         timeout=300)  # A run that hangs on the failed write fails here.
  assert done.returncode == entry.EXIT_FAILED, done.stderr[-3000:]
  # Orbax logs the failure with its traceback; the run ends on one line, not on a traceback.
  [line] = _error_lines(done.stderr)
  assert line == done.stderr.strip().splitlines()[-1]
  assert f"checkpoint step 4 to {workdir / 'checkpoints'} failed" in line
  assert "No space left on device" in line and "(steps: 2)" in line
  # keep_checkpoints=1 would have deleted step 2 once step 4 was written: it was not.
  assert sorted(n for n in os.listdir(workdir / "checkpoints") if n.isdigit()) == ["2"]
  assert not os.path.exists(workdir / checkpointing.EXPORT_NAME)


def test_ctrl_c_saves_and_exits_with_the_preempted_status(tmp_path):
  workdir = tmp_path / "interrupted"
  returncode, rest = faults.signal_once_running(
      ["train.py", "--config=configs/demo.py", f"--workdir={workdir}",
       "--config.total_steps=100000", "--config.log_every_steps=1",
       "--config.checkpoint_every_steps=100000", "--config.batch_size=16"], "train/loss",
      signal.SIGINT)
  assert returncode == entry.EXIT_PREEMPTED, rest[-3000:]
  assert "KeyboardInterrupt" not in rest and "Traceback" not in rest
  assert "SIGINT received: saved step" in rest and "Rerun the same command" in rest
  steps = os.listdir(workdir / "checkpoints")
  assert len(steps) == 1 and 0 < int(steps[0]) < 100000
  assert not os.path.exists(workdir / checkpointing.EXPORT_NAME)


def test_keep_checkpoints_zero_is_refused_by_train_py(tmp_path):
  workdir = tmp_path / "new"
  done = subprocess.run(
      [sys.executable, "train.py", "--config=configs/demo.py", f"--workdir={workdir}",
       "--config.keep_checkpoints=0", "--config.total_steps=2"],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert done.returncode == entry.EXIT_BAD_INPUT, done.stderr[-3000:]
  assert "Traceback" not in done.stderr
  assert _error_lines(done.stderr) == [
      "error: keep_checkpoints=0 is not valid: it must be an integer >= 1 "
      "(checkpoints kept; 0 would delete them all)"]
  assert not os.path.exists(workdir)


# A tiny-R14, 10-class demo run of 3 steps, a checkpoint at each.
FINISHED = dict(TINY, total_steps=3, checkpoint_every_steps=1, keep_checkpoints=3)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  """The workdir of a `FINISHED` run."""
  workdir = str(tmp_path_factory.mktemp("finished"))
  config = demo.get_config()
  config.update(FINISHED)
  train.train_and_evaluate(config, workdir)
  return workdir


def test_damaged_latest_checkpoints_fall_back_and_end_as_an_uninterrupted_run(
    tmp_path, caplog, finished_run):
  # The workdir of the same run killed before its export, its step 3 truncated and the bytes
  # of its step 2 flipped.
  workdir = tmp_path / "damaged"
  shutil.copytree(finished_run, workdir)
  os.remove(workdir / checkpointing.EXPORT_NAME)
  faults.damage_checkpoint(workdir / "checkpoints" / "3", "truncate")
  faults.damage_checkpoint(workdir / "checkpoints" / "2", "flip")
  config = demo.get_config()
  config.update(FINISHED)
  # absl's own logger: code run before in this process may have set its level (the root's
  # would not reach it; tf.saved_model.save leaves it at WARNING).
  with caplog.at_level(logging.INFO, logger=absl_logging.get_absl_logger().name):
    train.train_and_evaluate(config, str(workdir))
  lines = [r.getMessage() for r in caplog.records if "is damaged" in r.getMessage()]
  asides = sorted(n for n in os.listdir(workdir / "checkpoints") if not n.isdigit())
  assert [aside.split(".")[0] for aside in asides] == ["2", "3"]  # Kept, not deleted.
  assert all(aside.split(".")[1].startswith("unreadable-") for aside in asides)
  for step, line in zip((3, 2), lines, strict=True):  # One line each, newest first.
    assert line.startswith(f"Checkpoint step {step} in {workdir / 'checkpoints'} is damaged (")
    assert f"moved to {workdir / 'checkpoints' / asides[step - 2]}; using step 1" in line
  assert "it does not restore" in lines[0]
  assert "Starting at step 1 of 3: resumed from step 1 in this workdir" in caplog.text
  # The data stream replayed from step 1: the end is bitwise the uninterrupted run's.
  straight = npz.read_flat(os.path.join(finished_run, checkpointing.EXPORT_NAME))
  resumed = npz.read_flat(workdir / checkpointing.EXPORT_NAME)
  assert straight.keys() == resumed.keys()
  for key in straight:
    np.testing.assert_array_equal(straight[key], resumed[key], err_msg=key)


def _tree(path):
  """{relative path: (size, mtime)} of everything under `path` (or the file itself)."""
  if not os.path.exists(path):
    return None
  if os.path.isfile(path):
    return {"": (os.path.getsize(path), os.path.getmtime(path))}
  tree = {}
  for root, dirs, files in os.walk(path):
    for name in dirs + files:
      full = os.path.join(root, name)
      tree[os.path.relpath(full, path)] = (os.path.getsize(full), os.path.getmtime(full))
  return tree


def _image_folder(tmp_path, layout):
  """`folder:` dataset of 8x8 PNGs, {"train/cat": 2, ...} images per folder."""
  root = tmp_path / "images"
  for folder, count in layout.items():
    os.makedirs(root / folder)
    for i in range(count):
      png = tf.io.encode_png(np.full((8, 8, 3), 40 * i, np.uint8)).numpy()
      (root / folder / f"{i}.png").write_bytes(png)
  return f"folder:{root}"


def _text_file(path):
  path.write_text("these are not parameters\n")
  return str(path)


# (case, config overrides (a callable value makes it from tmp_path), workdir: "new" / "file" /
# "read-only" / "finished" (a `FINISHED` run's), what the line must contain). The config is
# the demo's with TINY, total_steps=3 and the overrides.
BAD_INPUTS = [
    ("negative total_steps", dict(total_steps=-5), "new",
     "total_steps=-5 is not valid: it must be an integer >= 1, or 0"),
    ("no checkpoint cadence", dict(checkpoint_every_steps=0), "new",
     "checkpoint_every_steps=0 is not valid: it must be an integer >= 1"),
    ("empty batch", dict(batch_size=0), "new", "batch_size=0 is not valid: it must be an "
     "integer >= 1"),
    ("no eval cadence", dict(eval_every_steps=0), "new",
     "eval_every_steps=0 is not valid: it must be an integer >= 1"),
    ("no log cadence", dict(log_every_steps=0), "new",
     "log_every_steps=0 is not valid: it must be an integer >= 1"),
    ("keep no checkpoint", dict(keep_checkpoints=0), "new",
     "keep_checkpoints=0 is not valid: it must be an integer >= 1"),
    ("empty eval split", dict(eval_split="test[:0]"), "new",
     "split 'test[:0]' of bit_animals_upstream holds no examples; its splits: test (1000), "
     "train (7500); slice like"),
    ("head smaller than the pp's onehot", dict(num_classes=5), "new",
     "pp_train gives labels of shape (10,); the model's head has num_classes=5 outputs: end "
     "pp_train with onehot(5), or set num_classes to the pp's"),
    ("folder dataset without a test split",
     dict(dataset=lambda tmp: _image_folder(tmp, {"train/cat": 2, "train/dog": 2})), "new",
     "bad split 'test' for dataset folder:"),
    ("class folders without images",
     dict(dataset=lambda tmp: _image_folder(tmp, {"cat": 0, "dog": 0})), "new",
     "has no images (.bmp, .gif, .jpeg, .jpg, .png, .webp) in its class sub-folders "
     "(cat, dog)"),
    ("plain text renamed .npz as init", dict(init=lambda tmp: _text_file(tmp / "init.npz")),
     "new", "init.npz' is not a zip/.npz file"),
    ("workdir is a file", {}, "file", "is a file, not a directory"),
    ("workdir is read-only", {}, "read-only", "is not writable (give a workdir this user can "
     "write to)"),
    ("workdir beyond total_steps", dict(total_steps=2), "finished",
     "this workdir holds step 3, beyond total_steps 2"),
    ("workdir of another model", dict(model="tiny-R26"), "finished",
     "this workdir holds a tiny-R14 (units 1,1,1,1, root width 32, 10-class head) run (step 3); "
     "the config asks for a tiny-R26"),
    ("workdir of another head", dict(num_classes=5, pp_train="decode|resize(32)|"
                                     "value_range(-1,1)|onehot(5)",
                                     pp_eval="decode|resize(32)|value_range(-1,1)|onehot(5)"),
     "finished", "holds a tiny-R14 (units 1,1,1,1, root width 32, 10-class head) run (step 3); the "
     "config asks for a tiny-R14 (units 1,1,1,1, root width 32, 5-class head)"),
    ("workdir of another learning rate", dict(lr_per_256=0.1), "finished",
     "holds a run started with other settings (lr_per_256 0.4 -> 0.1; recorded in "),
    ("workdir of another seed and data", dict(seed=1, shuffle_buffer=32), "finished",
     "other settings (shuffle_buffer 64 -> 32; seed 0 -> 1; recorded in "),
]


@pytest.mark.parametrize("overrides,kind,expected",
                         [case[1:] for case in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, monkeypatch,
                                                         finished_run, overrides, kind,
                                                         expected):
  workdir = {"new": str(tmp_path / "new"), "file": str(tmp_path / "file"),
             "read-only": str(tmp_path / "read-only"), "finished": finished_run}[kind]
  if kind == "file":
    with open(workdir, "w") as f:
      f.write("not a workdir")
  if kind == "read-only":  # As a read-only mount would be, even to root.
    os.makedirs(workdir)
    access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: (
        access(path, mode, **kw) and not os.fspath(path).startswith(workdir)))
  before = _tree(workdir)
  config = demo.get_config()
  config.update({**TINY, "total_steps": 3, **{
      k: v(tmp_path) if callable(v) else v for k, v in overrides.items()}})
  capsys.readouterr()
  with pytest.raises(SystemExit) as exit_info:
    entry.run(lambda: train.train_and_evaluate(config, workdir))
  assert exit_info.value.code == entry.EXIT_BAD_INPUT
  [line] = capsys.readouterr().err.strip().splitlines()
  assert line.startswith("error: ") and expected in line, line
  assert _tree(workdir) == before


def test_a_config_argument_of_the_wrong_type_names_the_field(capsys):
  with pytest.raises(SystemExit) as exit_info:
    entry.check_config_overrides(["train.py", "--config=configs/demo.py:total_steps=abc"])
  assert exit_info.value.code == entry.EXIT_BAD_INPUT
  assert capsys.readouterr().err == (
      "error: bad config argument 'total_steps=abc': total_steps must be an integer, "
      "e.g. total_steps=600\n")


def test_settings_are_recorded_once_and_a_longer_run_may_continue(tmp_path, finished_run):
  with open(os.path.join(finished_run, run_settings.SETTINGS_NAME)) as f:
    recorded = json.load(f)
  assert recorded["lr_per_256"] == 0.4 and recorded[run_settings.TOTAL_STEPS] == 3
  assert recorded["model"] == "tiny-R14" and set(run_settings.UPSTREAM_FIELDS) < recorded.keys()
  config = demo.get_config()
  config.update({**FINISHED, "total_steps": 5})
  settings = run_settings.upstream(config, 5)
  run_settings.check(finished_run, settings,  # Continuing further is the same run.
                     may_change=[run_settings.TOTAL_STEPS])
  workdir = tmp_path / "copy"
  shutil.copytree(finished_run, workdir, ignore=shutil.ignore_patterns("checkpoints"))
  run_settings.record(str(workdir), settings)
  assert run_settings.total_steps(str(workdir)) == 5


def test_checkpointer_refuses_to_keep_nothing(tmp_path):
  with pytest.raises(errors.UserError, match="keep_checkpoints=0"):
    checkpointing.Checkpointer(str(tmp_path / "checkpoints"), keep=0)
  assert not os.path.exists(tmp_path / "checkpoints")
