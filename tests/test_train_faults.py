"""Nothing hangs, nothing is silently lost (issue #19): a failed checkpoint write, Ctrl-C and
bad config or workdir inputs each end `train.py` with one line and a documented exit status."""
import os
import signal
import subprocess
import sys
import time

import pytest

from bit_jax import checkpointing, entry, errors, train
from configs import demo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(model="tiny-R14", batch_size=16, eval_batch_size=16, shuffle_buffer=64,
            warmup_steps=2, log_every_steps=1, eval_every_steps=1000,
            checkpoint_every_steps=1000)


def _error_lines(stderr):
  return [line for line in stderr.splitlines() if line.startswith("error:")]


# The demo through entry.run, as train.py runs it, with the write of checkpoint 4 failing in
# orbax's background thread (its final rename: a full disk), the way a real write fails.
_FAILING_WRITE = """
import errno, os, sys, time
sys.path.insert(0, {root!r})
from orbax.checkpoint._src.path import async_path
from bit_jax import entry, train
from configs import demo
original_rename = async_path.rename
async def rename(src, dst):
  if os.path.basename(str(dst)) == "4":
    with open({marker!r}, "w") as f:
      f.write(repr(time.time()))
    raise OSError(errno.ENOSPC, "No space left on device", str(dst))
  return await original_rename(src, dst)
async_path.rename = rename
config = demo.get_config()
config.update({overrides!r})
entry.run(lambda: train.train_and_evaluate(config, {workdir!r}))
"""


def test_failed_checkpoint_write_exits_with_one_line_and_keeps_the_previous(tmp_path):
  workdir, marker = tmp_path / "run", tmp_path / "failed_at"
  overrides = dict(TINY, total_steps=6, checkpoint_every_steps=2, keep_checkpoints=1)
  done = subprocess.run(
      [sys.executable, "-c", _FAILING_WRITE.format(root=ROOT, marker=str(marker),
                                                    overrides=overrides, workdir=str(workdir))],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  ended = time.time()
  assert done.returncode == entry.EXIT_FAILED, done.stderr[-3000:]
  assert ended - float(marker.read_text()) < 30  # Exits at once; it used to hang.
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
  process = subprocess.Popen(
      [sys.executable, "train.py", "--config=configs/demo.py", f"--workdir={workdir}",
       "--config.total_steps=100000", "--config.log_every_steps=1",
       "--config.checkpoint_every_steps=100000", "--config.batch_size=16"],
      cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 300
  for line in process.stderr:  # Wait until steps are running.
    if "train/loss" in line or time.time() > deadline:
      break
  process.send_signal(signal.SIGINT)
  _, rest = process.communicate(timeout=120)
  assert process.returncode == entry.EXIT_PREEMPTED, rest[-3000:]
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


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  """A tiny-R14, 10-class demo run of 2 steps: its workdir."""
  workdir = str(tmp_path_factory.mktemp("finished"))
  config = demo.get_config()
  config.update(dict(TINY, total_steps=2, checkpoint_every_steps=2))
  train.train_and_evaluate(config, workdir)
  return workdir


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


# (case, config overrides, workdir: "new" / "file" / "finished", what the line must contain)
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
    ("workdir is a file", {}, "file", "is a file, not a directory"),
    ("workdir beyond total_steps", dict(total_steps=1), "finished",
     "this workdir holds step 2, beyond total_steps 1"),
    ("workdir of another model", dict(model="tiny-R26"), "finished",
     "this workdir holds a tiny-R14 (units 1,1,1,1, root width 32, 10-class head) run; the "
     "config asks for a tiny-R26"),
    ("workdir of another head", dict(num_classes=5), "finished",
     "holds a tiny-R14 (units 1,1,1,1, root width 32, 10-class head) run; the config asks "
     "for a tiny-R14 (units 1,1,1,1, root width 32, 5-class head)"),
]


@pytest.mark.parametrize("overrides,kind,expected",
                         [case[1:] for case in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, finished_run,
                                                         overrides, kind, expected):
  workdir = {"new": str(tmp_path / "new"), "file": str(tmp_path / "file"),
             "finished": finished_run}[kind]
  if kind == "file":
    with open(workdir, "w") as f:
      f.write("not a workdir")
  before = _tree(workdir)
  config = demo.get_config()
  config.update({**TINY, "total_steps": 2, **overrides})
  capsys.readouterr()
  with pytest.raises(SystemExit) as exit_info:
    entry.run(lambda: train.train_and_evaluate(config, workdir))
  assert exit_info.value.code == entry.EXIT_BAD_INPUT
  [line] = capsys.readouterr().err.strip().splitlines()
  assert line.startswith("error: ") and expected in line, line
  assert _tree(workdir) == before


def test_checkpointer_refuses_to_keep_nothing(tmp_path):
  with pytest.raises(errors.UserError, match="keep_checkpoints=0"):
    checkpointing.Checkpointer(str(tmp_path / "checkpoints"), keep=0)
  assert not os.path.exists(tmp_path / "checkpoints")
