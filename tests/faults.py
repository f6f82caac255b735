"""Faults the fault tests inject: damaged checkpoints, runs of the demo config in a fresh
process with a patch applied first (a write that fails, a kill at a checkpoint), and a
signal sent to a command once its steps are running (preemption, Ctrl-C)."""
import glob
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def damage_checkpoint(step_dir, how):
  """Damages every data file of an orbax checkpoint step: `truncate` cuts each to half
  (restoring then fails), `flip` inverts 64 bytes mid-file (the arrays are stored compressed:
  it restores, to numbers finite or not but not those saved)."""
  files = glob.glob(os.path.join(step_dir, "default", "ocdbt.process_*", "d", "*"))
  assert files, f"no data files under {step_dir}"
  for path in files:
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
      if how == "truncate":
        f.truncate(size // 2)
      elif how == "flip":
        f.seek(size // 2)
        flipped = bytes(b ^ 0xff for b in f.read(64))
        f.seek(size // 2)
        f.write(flipped)
      else:
        raise ValueError(how)


# The demo config under `entry.run`, as train.py runs it, after `patch` (code) is applied.
_SCRIPT = """
import logging, os, signal, sys
logging.basicConfig(level=logging.INFO)
sys.path.insert(0, {root!r})
from bit_jax import checkpointing, entry, train
from configs import demo
{patch}
config = demo.get_config()
config.update({overrides!r})
entry.run(lambda: train.train_and_evaluate(config, {workdir!r}))
"""

# Patch: SIGKILL the process right after the checkpoint of step `kill_at` is on disk, the way
# a preempted or crashed host dies.
KILL_AT = """
original_save = checkpointing.Checkpointer.save
def save_then_die(self, step, state):
  original_save(self, step, state)
  if step == {kill_at}:
    self.wait()
    os.kill(os.getpid(), signal.SIGKILL)
checkpointing.Checkpointer.save = save_then_die
"""


def run_demo(workdir, overrides, patch="", timeout=600):
  """Runs the demo config with `overrides` in `workdir` in a fresh process: CompletedProcess
  with text stdout and stderr."""
  script = _SCRIPT.format(root=ROOT, patch=patch, overrides=overrides, workdir=str(workdir))
  return subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                        text=True, timeout=timeout)


def signal_once_running(args, running_marker, signum):
  """Starts `python *args` in the repository root, sends `signum` once a stderr line holds
  `running_marker` (or after 300 s), and waits: (exit status, the stderr after that line)."""
  process = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 300
  for line in process.stderr:  # Wait until steps are running.
    if running_marker in line or time.time() > deadline:
      break
  process.send_signal(signum)
  _, rest = process.communicate(timeout=120)
  return process.returncode, rest
