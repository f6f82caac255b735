"""The VTAB-1k fine-tuning protocols by name: what each runs, where it comes from, and the rules
of the VTAB paper's lightweight sweep as pure functions.

A number is comparable with a published one only when both ran the same protocol, so every
result carries its protocol's name (`run` records it in settings.json and each seed's file;
`report` names it above every column and refuses to mix two in one column).

  hyperrule         BiT-HyperRule (Kolesnikov et al. 2020, Section 3.3; big_transfer
                    `bit_hyperrule.py`): one run on train800val200, no sweep. The BiT paper's
                    VTAB-1k means (BiT-L 76.3, BiT-M 70.6, BiT-S 66.9) ran this.
  vtab_lightweight  The VTAB paper's lightweight sweep (Zhai et al. 2019), restated below from
                    google-research/task_adaptation. Its released per-task table
                    (published_results.csv, `hyper_sweep_size` 4, `preprocessing` resize(224))
                    ran this.
  hyperrule_sweep   Ours, no published numbers: the HyperRule (its resolution, crop and flip,
                    warmup and 40/60/80% decays) with the learning rate and the length swept
                    on train800, scored on val200, the best retrained on train800val200.

The lightweight sweep, as task_adaptation runs it:
- Preprocessing, `data_loader.py` `preprocess_fn`: `tf.image.resize(image, [224, 224])`
  (bilinear, aspect ratio ignored) and nothing else: no crop, no flip, in training or test.
  The range is the module's (`--input_range`); BiT models take [-1, 1]. Our `resize` rounds
  back to uint8 before `value_range` (at most half a grey level from task_adaptation's float).
- Optimiser, `trainer.py` `get_train_op`: `tf.train.MomentumOptimizer(lr, momentum=0.9)` on the
  mean softmax cross-entropy (`model.py` `model_fn`, whose linear head starts at zero) and no
  weight decay (`model_fn` adds no regularisation loss). The rate is
  `tf.train.piecewise_constant(global_step, decay_steps, [lr * lr_decay_factor**i])` with
  `lr_decay_factor` 0.1 (`adapt_and_eval.py`'s default): divided by 10 once the step is past
  each of `decay_steps`, so updates 0..750 of 2500 use `lr`. `apply_warmup_lr` warms up only
  with `--warmup_steps`, 0 by default; the README's batch-512 command (`--batch_size 512
  --initial_learning_rate 0.01 --decay_steps 750,1500,2250 --max_steps 2500`) sets none.
- The sweep (Zhai et al. 2019, arXiv:1910.04867, its lightweight hyper-parameter sweep; the
  README command above is one of its points): batch 512, lr in {0.1, 0.01} x steps in
  {2500, 10000}, decays at 30%, 60% and 90% of the steps; each of the 4 trained on train800
  and scored by top-1 on val200, the best retrained on train800val200 and tested once on test.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from bit_jax.errors import UserError

PROTOCOLS = {
    "hyperrule": "BiT-HyperRule on train800val200, no sweep (Kolesnikov et al. 2020, BiT)",
    "vtab_lightweight": "VTAB's lightweight sweep: resize 224, no augmentation, lr {0.1, 0.01} "
                        "x {2500, 10000} steps, best on val200 (Zhai et al. 2019, VTAB)",
    "hyperrule_sweep": "ours: the HyperRule with lr and steps swept, best on val200 (no "
                       "published numbers)",
}
# The old name of hyperrule_sweep: it claimed VTAB's sweep, which is vtab_lightweight.
RENAMED = {"sweep": "hyperrule_sweep"}

# The lightweight sweep's published settings (see the module docstring for their sources).
LIGHTWEIGHT_LRS = (0.1, 0.01)
LIGHTWEIGHT_STEPS = (2500, 10_000)
LIGHTWEIGHT_RESOLUTION = 224
LIGHTWEIGHT_BATCH_SIZE = 512
LIGHTWEIGHT_DECAY_FRACTIONS = (0.3, 0.6, 0.9)  # lr / 10 after each fraction of the steps.

# What published_results.csv's metadata says of every VTAB-study row: the lightweight sweep.
LIGHTWEIGHT_METADATA = {"hyper_sweep_size": "4", "preprocessing": "resize(224)"}


def check(name: str) -> str:
  """`name` if it is a protocol, else a one-line UserError naming the valid ones."""
  if name in PROTOCOLS:
    return name
  valid = ", ".join(PROTOCOLS)
  if name in RENAMED:
    raise UserError(f"protocol {name!r} is now {RENAMED[name]!r} (the HyperRule with lr and "
                    f"steps swept; VTAB's own sweep is 'vtab_lightweight'); valid: {valid}")
  raise UserError(f"unknown protocol {name!r}; valid: {valid}")


def lightweight_schedule(steps: int) -> tuple[int, int, int, int, int]:
  """[warmup, decay1, decay2, decay3, total] of a `steps`-step lightweight run: no warmup,
  decays at 30/60/90% (2500 -> (0, 750, 1500, 2250, 2500)), in `finetune.Plan.schedule`'s
  form, which `hyperrule.staircase_schedule` turns into rates as `piecewise_constant` does."""
  if steps < 1:
    raise UserError(f"a lightweight run needs at least 1 step, got {steps}")
  decays = [round(fraction * steps) for fraction in LIGHTWEIGHT_DECAY_FRACTIONS]
  return (0, *decays, steps)


def deviations(settings: Mapping[str, Any]) -> list[str]:
  """How a run's settings depart from its protocol's published ones, e.g. shortened for a
  CPU: ["lightweight_steps 2,4 (published 2500,10000)"]; [] for the protocol as published."""
  protocol = settings.get("protocol")
  if protocol == "vtab_lightweight":
    published = {"lightweight_lrs": LIGHTWEIGHT_LRS, "lightweight_steps": LIGHTWEIGHT_STEPS,
                 "lightweight_resolution": LIGHTWEIGHT_RESOLUTION,
                 "batch_size": LIGHTWEIGHT_BATCH_SIZE}
  elif protocol == "hyperrule":
    # The HyperRule's own: its schedule and resolution (0 / (): from the rule), lr 0.003.
    published = {"total_steps": 0, "resolution": (), "base_lr": 0.003, "batch_size": 512,
                 "mixup_alpha": -1.0}
  else:
    return []
  return [f"{key} {_text(settings[key])} (published {_text(value)})"
          for key, value in published.items()
          if key in settings and _normal(settings[key]) != _normal(value)]


def label(settings: Mapping[str, Any]) -> str:
  """The protocol's name, with how the run departs from it: `vtab_lightweight` or
  `vtab_lightweight, modified: lightweight_steps 2,4 (published 2500,10000)`."""
  changed = deviations(settings)
  name = settings["protocol"]
  return f"{name}, modified: {'; '.join(changed)}" if changed else name


def published_protocol(metadata: Mapping[str, str]) -> str:
  """The protocol of a row of the published VTAB table, from its metadata columns."""
  if all(metadata.get(key) == value for key, value in LIGHTWEIGHT_METADATA.items()):
    return "vtab_lightweight"
  found = ", ".join(f"{key}={metadata.get(key)!r}" for key in LIGHTWEIGHT_METADATA)
  return f"unknown ({found})"


def _normal(value: Any) -> Any:
  """Lists (JSON) and tuples (configs) compare equal; ints and floats by value."""
  return tuple(value) if isinstance(value, (list, tuple)) else value


def _text(value: Any) -> str:
  if isinstance(value, Sequence) and not isinstance(value, str):
    return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value) or "()"
  return f"{value:g}" if isinstance(value, float) else str(value)
