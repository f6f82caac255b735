"""What a `train.py` workdir's run was started with: `<workdir>/settings.json`.

Written when a run first starts (after every check passed), it holds the config fields that
change what the run computes (`FIELDS`) and the run's total steps. Rerunning `train.py` on
the workdir resumes it only with the same `FIELDS`: another learning rate, seed, dataset or
preprocessing is refused with one line naming the field, its recorded and its new value,
since the checkpoints could not show that half the run came from other settings. The total
steps may change (a run is continued further, or ended earlier if not yet past it); the file
then records the new total. A workdir from before this file existed, or whose file is
unreadable (moved aside), is resumed as it is and the file written from the current settings.

`total_steps(workdir)` lets a reader (`checkpointing.load_init`) tell how far an unfinished
run got.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections
from absl import logging

from bit_jax import atomic_files
from bit_jax.errors import UserError

SETTINGS_NAME = "settings.json"
# Fields whose change would make a resumed run another run. Not here: cadences (log, eval,
# checkpoint), the eval split and batch, accum_steps, remat and kernels (same result, other
# memory or speed), data_dir, and init/resume (read only when a run first starts).
FIELDS = ("model", "num_classes", "dtype", "image_size", "dataset", "train_split",
          "num_train_examples", "pp_train", "shuffle_buffer", "loss", "batch_size",
          "lr_per_256", "schedule", "warmup_steps", "decay_epochs", "momentum", "weight_decay",
          "weight_decay_style", "grad_clip_norm", "seed")
TOTAL_STEPS = "total_steps"  # The run's length in steps, from total_steps or total_epochs.


def settings_of(config: ml_collections.ConfigDict, total_steps: int) -> dict[str, Any]:
  """The record of `config`: `FIELDS` (as JSON has them) and the total steps."""
  settings = json.loads(json.dumps({field: config[field] for field in FIELDS}))
  return {**settings, TOTAL_STEPS: total_steps}


def check(config: ml_collections.ConfigDict, workdir: str, total_steps: int) -> None:
  """`UserError` (one line: the field, recorded and new value) when `workdir` records a run
  of other `FIELDS`. Reads only."""
  recorded = read(workdir)
  if recorded is None:
    return
  current = settings_of(config, total_steps)
  changed = [f"{field} {recorded[field]!r} -> {current[field]!r}" for field in FIELDS
             if field in recorded and recorded[field] != current[field]]
  if changed:
    raise UserError(f"this workdir's run was started with other settings ({'; '.join(changed)}"
                    f"; recorded in {os.path.join(workdir, SETTINGS_NAME)}): rerun with its "
                    "settings to resume it, or use another workdir")


def record(config: ml_collections.ConfigDict, workdir: str, total_steps: int) -> None:
  """Writes settings.json (process 0), unless it already holds these settings."""
  path = os.path.join(workdir, SETTINGS_NAME)
  current = settings_of(config, total_steps)
  recorded = read(workdir)
  if recorded == current:
    return
  if recorded is not None and recorded.get(TOTAL_STEPS) != total_steps:
    logging.info("Total steps %s -> %d, recorded in %s.", recorded.get(TOTAL_STEPS),
                 total_steps, path)
  elif recorded is None and os.path.lexists(path) and jax.process_index() == 0:
    logging.warning("%s is unreadable: moved to %s; writing it again from the current "
                    "settings.", path, atomic_files.move_aside(path))
  atomic_files.write_json(path, current)


def read(workdir: str) -> dict[str, Any] | None:
  """settings.json's record, or None when it is missing or unreadable."""
  try:
    with open(os.path.join(workdir, SETTINGS_NAME), encoding="utf-8") as f:
      recorded = json.load(f)
  except (OSError, ValueError):
    return None
  return recorded if isinstance(recorded, dict) and recorded else None


def total_steps(workdir: str) -> int | None:
  """The total steps `workdir`'s run was started (or last continued) with, if recorded."""
  total = (read(workdir) or {}).get(TOTAL_STEPS)
  return total if isinstance(total, int) and not isinstance(total, bool) else None
