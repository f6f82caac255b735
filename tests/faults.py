"""Faults the fault tests inject: damaged checkpoints, a checkpoint write that fails, a kill
after a checkpoint (in a fresh process running the demo config: `run_demo`), and a signal
sent to a command once its steps are running (preemption, Ctrl-C)."""
import errno
import glob
import os
import signal
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


def fail_write_at(step):
  """From now on, the write of checkpoint `step` fails in orbax's background thread (its
  final rename: a full disk), the way a real write fails."""
  from orbax.checkpoint._src.path import async_path
  real_rename = async_path.rename
  async def rename(src, dst):
    if os.path.basename(str(dst)) == str(step):
      raise OSError(errno.ENOSPC, "No space left on device", str(dst))
    return await real_rename(src, dst)
  async_path.rename = rename


def kill_after_checkpoint(step):
  """From now on, the process is SIGKILLed right after checkpoint `step` is on disk, the way a
  preempted or crashed host dies."""
  from bit_jax import checkpointing
  real_save = checkpointing.Checkpointer.save
  def save_then_die(self, saved_step, state):
    real_save(self, saved_step, state)
    if saved_step == step:
      self.wait()
      os.kill(os.getpid(), signal.SIGKILL)
  checkpointing.Checkpointer.save = save_then_die


FAULTS = {"fail_write_at": fail_write_at, "kill_after_checkpoint": kill_after_checkpoint}


def run_demo(workdir, overrides, fault=None, timeout=600):
  """Runs the demo config with `overrides` in `workdir` as train.py does, in a fresh process
  (tests/demo_run.py), after `fault` ((name in FAULTS, step)) is set up: CompletedProcess
  with text stdout and stderr."""
  fault_args = [] if fault is None else [f"--fault={fault[0]}:{fault[1]}"]
  return subprocess.run([sys.executable, "-m", "tests.demo_run", str(workdir),
                         repr(overrides), *fault_args], cwd=ROOT, capture_output=True,
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
