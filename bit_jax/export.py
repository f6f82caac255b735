"""Export any training checkpoint to the official BiT .npz.

    python -m bit_jax.export --workdir=DIR [--step=N] [--out=FILE]

Reads `<workdir>/checkpoints/<step>` (the latest by default) and writes its parameters in
the layout every BiT loader reads (`bit_jax.npz`). Training does this for its last step.
"""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp
from absl import app, flags

from bit_jax import entry, npz
from bit_jax.errors import UserError


def export(workdir: str, out: str | None = None, step: int | None = None) -> str:
  """Writes checkpoint `step` (default: latest) of `workdir` as .npz; returns its path."""
  params, step = checkpoint_params(workdir, step)
  out = out or os.path.join(workdir, f"params_step{step}.npz")
  npz.save(params, out)
  return out


def checkpoint_params(workdir: str, step: int | None = None) -> tuple[dict, int]:
  """(params on the host, step) of checkpoint `step` (default: latest) of a train.py run."""
  directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
  if not os.path.isdir(directory):
    raise UserError(f"{directory} does not exist; expected the workdir of a train.py run")
  manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
      read_only=True))
  steps = manager.all_steps()
  step = manager.latest_step() if step is None else step
  if step not in steps:
    raise UserError(f"no checkpoint for step {step} in {directory}; "
                    f"valid steps: {', '.join(map(str, steps)) or 'none'}")
  state = manager.restore(step, args=ocp.args.StandardRestore())
  manager.close()
  return jax.device_get(state["params"]), step


def main(argv):
  del argv
  flags_ = flags.FLAGS
  entry.run(lambda: print(export(flags_.workdir, flags_.out, flags_.step)))


if __name__ == "__main__":
  flags.DEFINE_string("workdir", None, "A train.py workdir.", required=True)
  flags.DEFINE_integer("step", None, "Checkpoint step; default: the latest.")
  flags.DEFINE_string("out", None, "Output .npz; default: <workdir>/params_step<N>.npz.")
  app.run(main)
