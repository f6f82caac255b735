"""Export any training checkpoint to the official BiT .npz.

    python -m bit_jax.export --workdir=DIR [--step=N] [--out=FILE]

Reads `<workdir>/checkpoints/<step>` (the latest by default) and writes its parameters in
the layout every BiT loader reads (`bit_jax.npz`). Training does this for its last step.
The file is written atomically, with the umask's mode: an interrupted export leaves any
earlier file whole, and its temporary file is removed by the next one (`bit_jax.atomic_files`).
"""

from __future__ import annotations

import os

from absl import app, flags

from bit_jax import checkpointing, entry, npz


def export(workdir: str, out: str | None = None, step: int | None = None) -> str:
  """Writes checkpoint `step` (default: latest) of `workdir` as .npz; returns its path."""
  params, step = checkpointing.read_params(workdir, step)
  out = out or os.path.join(workdir, f"params_step{step}.npz")
  npz.save(params, out)
  return out


def main(argv):
  del argv
  flags_ = flags.FLAGS
  entry.run(lambda: print(export(flags_.workdir, flags_.out, flags_.step)))


if __name__ == "__main__":
  flags.DEFINE_string("workdir", None, "A train.py workdir.", required=True)
  flags.DEFINE_integer("step", None, "Checkpoint step; default: the latest.")
  flags.DEFINE_string("out", None, "Output .npz; default: <workdir>/params_step<N>.npz.")
  app.run(main)
