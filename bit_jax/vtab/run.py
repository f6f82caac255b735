"""VTAB-1k runs: `run(config, workdir)` fine-tunes every selected task for every seed.

Protocols (`config.protocol`, fields in configs/vtab.py; what each is and its source:
bit_jax/vtab/protocols.py):
  hyperrule         BiT-HyperRule on train800val200 (1000 examples: 500 steps, no MixUp); top-1
                    and ECE on the whole test split. The resolution is the HyperRule's for the
                    task's typical image size (registry `image_hw`) unless `config.resolution`;
                    random flips and crops are off where they would change the label
                    (registry `flip`, `random_crop`).
  vtab_lightweight  The VTAB paper's lightweight sweep: every (lr, steps) of lightweight_lrs x
                    lightweight_steps on train800 (images resized to lightweight_resolution, no
                    crop, no flip, no MixUp, no warmup, lr / 10 at 30/60/90% of the steps),
                    scored by top-1 on val200; the best retrained on train800val200, tested.
  hyperrule_sweep   The hyperrule run with every (lr, steps) of sweep_lrs x sweep_steps on
                    train800, chosen and retrained the same way.

Resumable: each finished piece is a JSON file, written atomically, that a rerun reuses:
  settings.json                              what results depend on; a rerun must match it
  runs/<task>/seed<k>.json                   a finished (task, seed): top-1, ECE, its plan
  runs/<task>/seed<k>/lr<lr>_steps<n>.json   a finished sweep candidate: top-1 on val200
  runs/<task>/seed<k>/model/                 the tested run's params.npz + model.json
                                             (`bit_jax.run_dir`); its checkpoints/ while
                                             it trains (resumed by a rerun)
  runs/<task>/error.txt                      the last failure's traceback, gone on success
  results.json                               {task: [top-1 per seed], or null: failed}, for
                                             the tasks run now and all finished before
  report/report.{md,csv,png}                 beside the published numbers (vtab.report)
A task that fails (data missing, a bug) is logged in one line and recorded as failed; the
other tasks go on, and the next run retries only what did not finish.

A seed or sweep-candidate file that cannot be used (truncated, empty, not a JSON object, no
finite `top1`) counts as unfinished: it is renamed to `<name>.unreadable-<time>` (never
deleted), logged in one line, and computed again. settings.json is `bit_jax.run_settings`'
record, guarding the seed and candidate files: an unreadable one is moved aside when there
are none, and refused (one line, nothing touched) when there are.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import math
import os
import pathlib
import traceback
from typing import Any

import jax
import ml_collections
import tensorflow as tf
from absl import logging

import input_pipeline
from input_pipeline import derived
from bit_jax import (atomic_files, checkpointing, distributed, finetune, models, pretrained,
                     run_settings)
from bit_jax.errors import NonFiniteLossError, UserError, one_line
from bit_jax.vtab import protocols, registry, report

PROTOCOLS = tuple(protocols.PROTOCOLS)
RESULTS_NAME = "results.json"
ERROR_NAME = "error.txt"
MODEL_DIR = "model"  # runs/<task>/seed<k>/model: the final run's params.npz and model.json.
REPORT_DIR = "report"
# What a finished run's numbers depend on, per protocol; seeds, tasks, the eval batch and
# gradient accumulation do not.
_COMMON = ("model", "init", "protocol", "dtype", "batch_size", "shuffle_buffer")
_HYPERRULE = ("resolution", "hyperrule_variant", "base_lr", "total_steps", "mixup_alpha")
SETTINGS = {
    "hyperrule": _COMMON + _HYPERRULE,
    "hyperrule_sweep": _COMMON + _HYPERRULE + ("sweep_lrs", "sweep_steps"),
    "vtab_lightweight": _COMMON + ("lightweight_lrs", "lightweight_steps",
                                   "lightweight_resolution"),
}


@dataclasses.dataclass(frozen=True)
class Outcome:
  results: dict[str, list[float] | None]  # What results.json holds.
  failed: tuple[str, ...]  # Tasks that did not finish every seed.
  results_path: pathlib.Path
  report_paths: dict[str, pathlib.Path]  # "md", "csv", "png".


def run(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> Outcome:
  """Runs what is not finished yet; writes results.json and the report."""
  tasks = select_tasks(config.tasks)
  check_config(config)
  workdir = pathlib.Path(workdir)
  settings = _check_settings(config, workdir)
  mesh = distributed.data_mesh()

  @functools.cache
  def backbone():
    """Once, before the first fine-tuning: a bad --init stops the run with nothing written."""
    params = _load_backbone(config)
    run_settings.record(workdir, settings)
    return params

  finished, failed = {}, []  # {task: [its seeds' records] or None: failed}.
  for task in tasks:
    records = {seed: _read_result(_seed_path(workdir, task, seed)) for seed in config.seeds}
    pending = [seed for seed, record in records.items() if record is None]
    pretrained_backbone = backbone() if pending else None
    try:
      if pending:
        records.update(_finish_seeds(task, pending, config, workdir, pretrained_backbone, mesh))
      finished[task.name] = [records[seed] for seed in config.seeds]
      _error_path(workdir, task).unlink(missing_ok=True)
    except Exception as e:  # pylint: disable=broad-except  # One task must not stop the rest.
      finished[task.name] = None
      failed.append(task.name)
      _record_failure(workdir, task, e)

  finished = _with_other_finished_tasks(finished, config, workdir)
  results = {name: None if records is None else [record["top1"] for record in records]
             for name, records in finished.items()}
  results_path = atomic_files.write_json(workdir / RESULTS_NAME, results)
  report_paths = report.write_report(results, workdir / REPORT_DIR, method_name=config.model,
                                     protocol=_protocols(finished, settings))
  return Outcome(results, tuple(failed), results_path, report_paths)


def _with_other_finished_tasks(finished: dict, config, workdir: pathlib.Path) -> dict:
  """`finished` plus every task not asked for this time that the workdir holds for all seeds,
  in registry order: running the groups one by one builds up one results.json and report."""
  merged = {}
  for task in registry.TASKS:
    if task.name in finished:
      merged[task.name] = finished[task.name]
      continue
    records = [_read_result(_seed_path(workdir, task, seed)) for seed in config.seeds]
    if all(records):
      merged[task.name] = records
  return merged


def _protocols(finished: dict, settings: dict) -> dict[str, str]:
  """{task: the protocol its numbers ran}: the run's (`protocols.label`, with any departure
  from the published settings), or the other protocol a seed's file names, which the report
  refuses to put in the same column."""
  ours = protocols.label(settings)
  by_task = {}
  for name, records in finished.items():
    names = {record.get("protocol", "unrecorded") for record in records or ()}
    by_task[name] = ours if names <= {settings["protocol"]} else ", ".join(sorted(names))
  return by_task


def select_tasks(spec: str) -> tuple[registry.Task, ...]:
  """`all`, groups and task names, comma-separated -> tasks in registry order."""
  names = [name.strip() for name in spec.split(",") if name.strip()]
  if not names:
    raise UserError(f"no VTAB tasks in {spec!r}; give all, a group "
                    f"({', '.join(registry.GROUPS)}) or task names, comma-separated")
  return registry.TASKS if "all" in names else registry.select(names)


def check_config(config: ml_collections.ConfigDict) -> None:
  """Bad input fails here, before any task runs, with one line."""
  protocols.check(config.protocol)
  models.compute_dtype(config.dtype)
  models.get_architecture(config.model)
  if not config.seeds:
    raise UserError("no seeds; give at least one, e.g. --seeds=0")
  if config.protocol == "vtab_lightweight":
    if config.total_steps or config.resolution:
      raise UserError("--config.total_steps and --config.resolution set the hyperrule "
                      "protocols; vtab_lightweight takes --config.lightweight_steps and "
                      "--config.lightweight_resolution")
    if (not config.lightweight_lrs or not config.lightweight_steps
        or min(config.lightweight_steps) < 1):
      raise UserError("vtab_lightweight needs learning rates and positive step counts, e.g. "
                      "--config.lightweight_lrs=0.1,0.01 --config.lightweight_steps=2500,10000")
    if config.lightweight_resolution < finetune.MIN_CROP:
      raise UserError(f"--config.lightweight_resolution {config.lightweight_resolution} is too "
                      f"small: at least {finetune.MIN_CROP} (the network downsamples by 32); "
                      f"the protocol's is {protocols.LIGHTWEIGHT_RESOLUTION}")
    return
  if config.resolution:
    finetune.make_plan(config, registry.TRAIN_EXAMPLES, None)  # Checks resize and crop.
  if config.protocol == "hyperrule_sweep":
    if config.total_steps:
      raise UserError("--total_steps shortens the hyperrule protocol; for hyperrule_sweep set "
                      "--sweep_steps")
    if not config.sweep_lrs or not config.sweep_steps or min(config.sweep_steps) < 1:
      raise UserError("hyperrule_sweep needs learning rates and positive step counts, e.g. "
                      "--sweep_lrs=0.01,0.1 --sweep_steps=2500,10000")


def _finish_seeds(task, seeds, config, workdir, backbone, mesh) -> dict[int, dict]:
  """Each seed's record, also written to its file."""
  model = models.get_model(config.model, num_classes=task.num_classes, dtype=config.dtype,
                           remat=config.remat, kernels=config.kernels,
                           platform=mesh.devices.flat[0].platform)
  params = None if backbone is None else pretrained.fit(backbone, model)[0]  # A zero head.
  job = _TaskJob(task, config, task_source(task, config.data_dir), model, params, mesh)
  records = {}
  for seed in seeds:
    logging.info("VTAB %s, seed %d: %s protocol", task.name, seed, config.protocol)
    candidates_dir = _seed_path(workdir, task, seed).with_suffix("")
    if config.protocol == "hyperrule":
      result = job.finetune("train800val200", "test", seed, job.hyperrule_plan("train800val200"),
                            keep_in=candidates_dir / MODEL_DIR)
    elif config.protocol == "hyperrule_sweep":
      grid = itertools.product(config.sweep_lrs, config.sweep_steps)
      result = _sweep(job, seed, candidates_dir, grid, lambda lr, steps, split: (
          job.hyperrule_plan(split, base_lr=lr, total_steps=steps)))
    else:
      grid = itertools.product(config.lightweight_lrs, config.lightweight_steps)
      result = _sweep(job, seed, candidates_dir, grid, lambda lr, steps, split: (
          _lightweight_plan(config, lr, steps)))
    records[seed] = {"task": task.name, "seed": seed, "protocol": config.protocol, **result}
    atomic_files.write_json(_seed_path(workdir, task, seed), records[seed])
  return records


@dataclasses.dataclass(frozen=True)
class _TaskJob:
  """What every fine-tuning of one task shares."""
  task: registry.Task
  config: ml_collections.ConfigDict
  source: Any  # input_pipeline.Source yielding the task's labels.
  model: models.ResNetV2
  params: Any  # Pretrained with a zero head; None fine-tunes from scratch.
  mesh: jax.sharding.Mesh

  def finetune(self, train_split: str, eval_split: str, seed: int, plan: finetune.Plan,
               keep_in: pathlib.Path | None = None) -> dict[str, Any]:
    """Fine-tunes by `plan` on one split key, evaluates on another. With `keep_in`, the run
    checkpoints there (and resumes) and leaves its model there (`bit_jax.run_dir`)."""
    params = self.params
    if params is None:
      params = finetune.init_params(self.model, jax.random.key(seed), plan.crop)
    splits = self.task.splits
    keep = None if keep_in is None else finetune.KeptRun(
        str(keep_in), model=self.config.model,
        class_names=tuple(map(str, range(self.task.num_classes))),
        label_mapping=f"VTAB {self.task.name}: {self.task.label} ({self.task.source})",
        provenance={"init": self.config.init, "dataset": self.task.tfds,
                    "train_split": splits[train_split], "vtab_task": self.task.name,
                    "protocol": self.config.protocol, "seed": seed, "base_lr": plan.base_lr})
    result, _ = finetune.finetune(
        self.model, params, self.source, splits[train_split], self.source, splits[eval_split],
        self.task.num_classes, plan, seed=seed, mesh=self.mesh,
        cache_train=True,  # 1000 examples: decoded once, not per epoch.
        keep=keep)
    return {**result, "train_split": train_split, "eval_split": eval_split,
            "schedule": list(plan.schedule), "resolution": [plan.resize, plan.crop],
            "base_lr": plan.base_lr, "mixup_alpha": plan.mixup_alpha,
            "flip": plan.flip, "random_crop": plan.random_crop,
            "pp_train": plan.pp_train(self.task.num_classes),
            "pp_eval": plan.pp_eval(self.task.num_classes)}

  def hyperrule_plan(self, train_split: str, **overrides) -> finetune.Plan:
    """The HyperRule's plan for `train_split`; `overrides` are config fields."""
    config = self.config.copy_and_resolve_references()
    config.update(overrides)
    # VTAB-1k sizes are known; mock data and some TFDS versions have no split metadata.
    size = registry.num_examples(self.task, train_split)
    plan = finetune.make_plan(config, size, tuple(self.task.image_hw))
    return dataclasses.replace(plan, flip=self.task.flip, random_crop=self.task.random_crop)


def _lightweight_plan(config: ml_collections.ConfigDict, lr: float,
                      steps: int) -> finetune.Plan:
  """One point of VTAB's lightweight sweep (protocols.py): train and test images resized to
  lightweight_resolution square, no crop, no flip, no MixUp; SGD momentum 0.9 and no weight
  decay as `finetune` always trains; `steps` steps at `lr`, no warmup, lr / 10 at 30/60/90%."""
  config = config.copy_and_resolve_references()
  size = config.lightweight_resolution
  config.update(resolution=(size, size), total_steps=0)  # make_plan checks the size.
  plan = finetune.make_plan(config, registry.TRAIN_EXAMPLES, None)
  return dataclasses.replace(plan, schedule=protocols.lightweight_schedule(steps), base_lr=lr,
                             mixup_alpha=0.0, flip=False, random_crop=False)


def _sweep(job: _TaskJob, seed: int, candidates_dir: pathlib.Path, grid, plan_for
           ) -> dict[str, Any]:
  """Every (lr, steps) of `grid` trained on train800 and scored on val200; the best (the
  first of equals) retrained on train800val200 and tested. `plan_for(lr, steps, split)`."""
  candidates, errors = [], []
  for lr, steps in grid:
    path = candidates_dir / f"lr{lr:g}_steps{steps}.json"
    record = _read_result(path)
    if record is None:
      try:
        record = job.finetune("train800", "val200", seed, plan_for(lr, steps, "train800"))
      except NonFiniteLossError as e:  # Diverged at a high learning rate: not a choice.
        logging.warning("VTAB %s, seed %d: candidate lr %g, %d steps failed: %s",
                        job.task.name, seed, lr, steps, e)
        errors.append(str(e))
        continue
      atomic_files.write_json(path, {**record, "steps": steps})
    candidates.append({"base_lr": lr, "steps": steps, "val200_top1": record["top1"]})
  if not candidates:
    raise NonFiniteLossError(f"every sweep candidate diverged (lower --config.sweep_lrs); "
                             f"the first: {errors[0]}")
  best = max(candidates, key=lambda c: c["val200_top1"])  # The first of equals.
  final = job.finetune("train800val200", "test", seed,
                       plan_for(best["base_lr"], best["steps"], "train800val200"),
                       keep_in=candidates_dir / MODEL_DIR)
  return {**final, "chosen": best, "candidates": candidates}


def task_source(task: registry.Task, data_dir: str | None):
  """The task's TFDS data with its labels (`task.preprocess`), images still uint8."""
  source = input_pipeline.get_source(task.tfds, data_dir)
  shape = source.image_shape or (None, None, None)
  channels = shape[-1] or 3

  def preprocess(example):
    # Sources leave images encoded for the pp's `decode`, but the label functions work on
    # pixels (dsprites scales its 0/1 masks; grey images are tiled): decode as stored.
    image = example["image"]
    if image.dtype == tf.string:
      image = tf.io.decode_image(image, channels=channels, expand_animations=False)
    return task.preprocess({**example, "image": image})

  return derived.Mapped(source, preprocess, num_classes=task.num_classes, name=task.name,
                        image_shape=(*shape[:2], 3))


def _load_backbone(config: ml_collections.ConfigDict):
  """`config.init` without its head (numpy, reused by every task), or None: from scratch."""
  headless = models.get_model(config.model, dtype=models.compute_dtype(config.dtype))
  return checkpointing.load_init(config.init, headless)


def _check_settings(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> dict:
  """The settings results depend on; those a workdir's finished runs came from must match."""
  settings = json.loads(json.dumps({key: config[key] for key in SETTINGS[config.protocol]}))
  finished = [*workdir.glob("runs/*/seed*.json"), *workdir.glob("runs/*/seed*/*.json")]
  run_settings.check(workdir, settings, guards=finished)
  return settings


def _record_failure(workdir: pathlib.Path, task: registry.Task, error: Exception) -> None:
  path = _error_path(workdir, task)
  if jax.process_index() == 0:
    text = "".join(traceback.format_exception(error))
    atomic_files.write(path, lambda f: f.write(text), text=True)
  what = str(error) if isinstance(error, UserError) else one_line(error)  # A UserError is one.
  logging.error("VTAB task %s failed: %s (traceback: %s)", task.name, what, path)


def _seed_path(workdir: pathlib.Path, task: registry.Task, seed: int) -> pathlib.Path:
  return workdir / "runs" / task.name / f"seed{seed}.json"


def _error_path(workdir: pathlib.Path, task: registry.Task) -> pathlib.Path:
  return workdir / "runs" / task.name / ERROR_NAME


def _read_result(path: pathlib.Path) -> dict | None:
  """A finished piece's record (a seed's or a sweep candidate's), or None: not finished. A
  file without a usable record is moved aside, logged in one line, and so done again."""
  return atomic_files.read_json(path, _no_finite_top1)


def _no_finite_top1(record: dict) -> str | None:
  top1 = record.get("top1")
  if isinstance(top1, (int, float)) and not isinstance(top1, bool) and math.isfinite(top1):
    return None
  return "no finite top1 in it"
