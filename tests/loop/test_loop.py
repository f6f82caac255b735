"""`bit_jax.loop`: upstream pretraining and fine-tuning run one loop, so the same faults end
them the same way (tests/loop/loop_faults.py runs the fault script in a process per loop)."""
import json
import subprocess
import sys

import pytest

from bit_jax import entry
from tests import faults
from tests.loop import loop_faults


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
  """{loop: {fault: its report}} for both loops, run side by side."""
  root = tmp_path_factory.mktemp("loops")
  processes = {loop: subprocess.Popen(
      [sys.executable, "-m", "tests.loop.loop_faults", loop, str(root / loop)],
      cwd=faults.ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for loop in ("upstream", "finetune")}
  reports = {}
  for loop, process in processes.items():
    stdout, stderr = process.communicate(timeout=900)
    assert process.returncode == 0, stderr[-3000:]
    reports[loop] = {r["fault"]: r for r in map(json.loads, stdout.splitlines())}
  return reports


@pytest.mark.parametrize("loop", ["upstream", "finetune"])
@pytest.mark.parametrize("fault, expected_status, expected_steps", [
    ("sigterm_middle", entry.EXIT_PREEMPTED, [2]),  # The step it arrived in, saved.
    ("sigterm_last", entry.EXIT_PREEMPTED, [loop_faults.TOTAL_STEPS]),  # The last one too.
    ("diverge", entry.EXIT_FAILED, [2]),  # Step 3 diverged: nothing after step 2 saved.
    ("failed_write", entry.EXIT_FAILED, [2]),  # Step 3's write failed; step 2's is kept.
])
def test_a_fault_ends_the_loop_with_its_status_and_what_it_saved(
    outcomes, loop, fault, expected_status, expected_steps):
  report = outcomes[loop][fault]
  assert report["status"] == expected_status, report
  assert report["checkpoint_steps"] == expected_steps, report
  assert report["handlers_restored"], report
  assert report["open_checkpointers"] == 0, report


@pytest.mark.parametrize("loop, name", [("upstream", "training"), ("finetune", "fine-tuning")])
def test_the_error_line_says_what_happened_and_what_was_kept(outcomes, loop, name):
  diverged, failed = outcomes[loop]["diverge"], outcomes[loop]["failed_write"]
  assert diverged["error"].startswith(
      f"{name} diverged: loss nan (parameter norm nan) at step 3; the last checkpoint "
      f"(step 2) in {diverged['checkpoints']} is untouched; "), diverged
  assert failed["error"].startswith(
      f"writing checkpoint step 3 to {failed['checkpoints']} failed: OSError: [Errno 28] "
      "No space left on device"), failed
  assert failed["error"].endswith("(steps: 2)"), failed
