"""What a run's results depend on: `<directory>/settings.json`, the one record of a `train.py`
workdir, a transfer run directory and a VTAB workdir.

    run_settings.check(directory, settings, guards=[checkpoints])  # before anything is written
    run_settings.record(directory, settings)                       # once the run starts

A rerun on the directory continues it, or reuses its results, only with the same settings:
another value is refused with one line naming each changed field, its recorded and its new
value (`lr_per_256 0.4 -> 0.1`; a nested field as `plan.base_lr`), since nothing in the results
could show that part of them came from other settings. Fields named `may_change` (train.py's
total steps) are recorded anew instead.

No file: nothing to compare with (a new directory); the settings are recorded. An unreadable
file (truncated, not a JSON object): when the directory holds none of the results it guards,
it is moved aside with a warning and written again from the current settings; otherwise the
run is refused, since nothing could show what those results came from.
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterable

import ml_collections
from absl import logging

from bit_jax import atomic_files
from bit_jax.errors import UserError

SETTINGS_NAME = "settings.json"

# A train.py run's fields whose change would make a resumed run another run. Not here:
# cadences (log, eval, checkpoint), the eval split and batch, accum_steps, remat and kernels
# (same result, other memory or speed), data_dir, and init/resume (read only when a run first
# starts).
UPSTREAM_FIELDS = (
    "model", "num_classes", "dtype", "image_size", "dataset", "train_split",
    "num_train_examples", "pp_train", "shuffle_buffer", "loss", "batch_size", "lr_per_256",
    "schedule", "warmup_steps", "decay_epochs", "momentum", "weight_decay",
    "weight_decay_style", "grad_clip_norm", "seed")
TOTAL_STEPS = "total_steps"  # A train.py run's length: it may be continued further.


def upstream(config: ml_collections.ConfigDict, total_steps: int) -> dict[str, Any]:
  """A train.py run's settings: `UPSTREAM_FIELDS` of `config` and its total steps."""
  return {**{field: config[field] for field in UPSTREAM_FIELDS}, TOTAL_STEPS: total_steps}


def check(directory: str | os.PathLike, settings: dict[str, Any], *,
          guards: Iterable[str | os.PathLike] = (), may_change: Iterable[str] = ()) -> None:
  """`UserError` (one line) when `directory` records other `settings` (but for `may_change`),
  or an unreadable record while any of `guards` (the results it vouches for) exists. Reads
  only."""
  path = os.path.join(directory, SETTINGS_NAME)
  try:
    recorded = atomic_files.read_json_object(path)
  except atomic_files.Unusable as e:
    present = [os.fspath(g) for g in guards if os.path.lexists(g)]
    if present:
      more = f" and {len(present) - 1} more" if len(present) > 1 else ""
      raise UserError(f"{path} is unreadable ({e}), so nothing shows what {present[0]}{more} "
                      "came from: move it aside to accept them under the current settings, "
                      "or use another --workdir") from None
    return  # `record` moves it aside.
  if recorded is None:
    return
  changed = _changes(recorded, settings, tuple(may_change))
  if changed:
    raise UserError(f"{directory} holds a run started with other settings "
                    f"({'; '.join(changed)}; recorded in {path}): rerun with those settings, "
                    "or use another --workdir")


def record(directory: str | os.PathLike, settings: dict[str, Any]) -> None:
  """Writes settings.json (process 0) unless it already holds `settings`; logs the fields
  that changed (those `check` let change), and moves an unreadable file aside first."""
  path = os.path.join(directory, SETTINGS_NAME)
  try:
    recorded = atomic_files.read_json_object(path)
  except atomic_files.Unusable as e:
    atomic_files.set_aside(path, str(e), "it is written again from the current settings")
    recorded = None
  current = _as_json(settings)
  if recorded == current:
    return
  if recorded is not None:
    logging.info("%s: %s", path, "; ".join(_changes(recorded, current, ())))
  atomic_files.write_json(path, current)


def read(directory: str | os.PathLike) -> dict[str, Any] | None:
  """settings.json's record, or None when it is missing or unreadable."""
  try:
    return atomic_files.read_json_object(os.path.join(directory, SETTINGS_NAME))
  except atomic_files.Unusable:
    return None


def total_steps(workdir: str | os.PathLike) -> int | None:
  """The total steps a train.py workdir's run was started (or last continued) with."""
  total = (read(workdir) or {}).get(TOTAL_STEPS)
  return total if isinstance(total, int) and not isinstance(total, bool) else None


def _as_json(settings: dict[str, Any]) -> dict[str, Any]:
  """As settings.json holds them: tuples as lists."""
  return json.loads(json.dumps(settings))


def _changes(recorded: dict, settings: dict, may_change: tuple[str, ...]) -> list[str]:
  """`field old -> new` for each field (nested as `a.b`) that differs, in `settings`' order."""
  old, new = _flat(recorded), _flat(_as_json(settings))
  return [f"{key} {old.get(key)!r} -> {new.get(key)!r}" for key in dict.fromkeys([*new, *old])
          if key.split(".")[0] not in may_change and old.get(key) != new.get(key)]


def _flat(settings: dict, prefix: str = "") -> dict[str, Any]:
  flat = {}
  for key, value in settings.items():
    if isinstance(value, dict):
      flat.update(_flat(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat
