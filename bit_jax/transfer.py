"""Transfer: `finetune_and_evaluate(config, workdir)`.

For each number of shots (all data, or k per class) and seed: BiT-HyperRule fine-tuning from
the pretrained checkpoint (and, optionally, the same run from scratch as the baseline). Then,
optionally, the frozen-feature evaluations of `bit_jax.linear_eval`. Every result has test
top-1 on the full test split and ECE; all go to `<workdir>/results.json`, TensorBoard, and a
table printed at the end.

Each fine-tuning run keeps its result in its own directory, `<workdir>/runs/<init>-<shots>-
seed<k>/`:
  settings.json   what the run depends on (its plan, init, data); a rerun must match it
  checkpoints/    its state every `checkpoint_every_steps` and on SIGTERM; gone once finished
  params.npz      the fine-tuned parameters, official layout (`bit_jax.run_dir`)
  model.json      how to use them: `python -m bit_jax.predict --model_dir=<run dir> ...`
  result.json     its test top-1 and ECE, written last
A rerun skips the finished runs, resumes an interrupted one from its checkpoint and computes
the rest, so a killed or preempted transfer loses at most `checkpoint_every_steps` steps.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers

import input_pipeline
from input_pipeline import derived
from bit_jax import atomic_files, checkpointing, distributed, fewshot_classifiers, finetune
from bit_jax import features as features_lib
from bit_jax import host_allocator, linear_eval, models, run_dir, run_settings
from bit_jax.errors import UserError

RESULTS_NAME = "results.json"
RUNS_DIR = "runs"
RESULT_NAME = "result.json"


def finetune_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs every evaluation `config` asks for; returns what results.json holds."""
  methods = _linear_methods(config.linear_eval)
  _check_config(config, methods)
  mesh = distributed.data_mesh()
  host_allocator.log_advice(jax.default_backend())
  source = input_pipeline.get_source(config.dataset, config.data_dir)
  num_classes = config.num_classes or source.num_classes
  if not num_classes:
    raise UserError(f"{config.dataset} does not say how many classes it has; "
                    "set --config.num_classes")
  model = models.get_model(config.model, num_classes=num_classes, dtype=config.dtype,
                           remat=config.remat, kernels=config.kernels,
                           platform=mesh.devices.flat[0].platform)
  pretrained_params = checkpointing.load_init(config.init, model)
  for split in filter(None, (config.test_split, config.val_split)):
    input_pipeline.check_split(source, split)  # Missing or empty: fails before any training.
  train_labels = derived.read_labels(source, config.train_split)
  num_train = config.num_train_examples or len(train_labels)
  image_hw = tuple(config.image_size) or _image_hw(source)

  runs = []
  inits = [("pretrained", pretrained_params)] if pretrained_params is not None else []
  if config.from_scratch_baseline or pretrained_params is None:
    inits.append(("scratch", None))

  # Every draw and plan first: a bad one fails before anything is trained or written.
  class_names = _class_names(source, num_classes)
  jobs = []  # (shots, seed, train source, plan)
  for shots in (config.shots if config.finetune else ()):
    for seed in config.seeds:
      train_source, size = source, num_train
      if shots:
        chosen = fewshot_classifiers.select_few_shot(train_labels, shots, seed, class_names)
        train_source, size = derived.Subset(source, config.train_split, chosen), len(chosen)
      jobs.append((shots, seed, train_source, finetune.make_plan(config, size, image_hw)))
  linear_plan = finetune.make_plan(config, num_train, image_hw) if methods else None

  for shots, seed, train_source, plan in jobs:
    for init_name, params in inits:
      name = f"{init_name}-{f'{shots}shot' if shots else 'all'}-seed{seed}"
      directory = os.path.join(workdir, RUNS_DIR, name)
      settings = {"model": config.model, "init": config.init if params is not None else "",
                  "dataset": config.dataset, "train_split": config.train_split,
                  "test_split": config.test_split, "shots": shots or "all", "seed": seed,
                  "num_classes": num_classes, "plan": _plan_settings(plan)}
      result = _finished_result(directory, settings)
      if result is None:
        logging.info("Fine-tuning %s: %s", name, plan)
        result = _finetune_run(model, params, train_source, source, config, plan, seed,
                               mesh, settings, directory, class_names, cache=bool(shots))
      else:
        logging.info("Skipping %s: finished before (%s)", name, directory)
      runs.append({"evaluation": "finetune", "init": init_name, "shots": shots or "all",
                   "seed": seed, **result, "schedule": list(plan.schedule),
                   "resolution": [plan.resize, plan.crop], "mixup_alpha": plan.mixup_alpha,
                   "run_dir": directory})
      _write_results(workdir, config, runs)

  if methods:
    plan = linear_plan
    for init_name, params in inits:
      if params is None:
        params = finetune.init_params(model, jax.random.key(0), plan.crop)
      runs += _frozen_feature_runs(config, methods, model, params, source, num_classes,
                                   plan, mesh, init_name)
      _write_results(workdir, config, runs)

  summary = summarize(runs)
  writer = metric_writers.create_default_writer(workdir,
                                                just_logging=jax.process_index() > 0)
  for i, row in enumerate(summary):
    writer.write_scalars(i, {f"{row['evaluation']}/{row['init']}/{row['shots']}shot/{k}":
                             row[k] for k in ("top1_mean", "ece_mean")})
  writer.flush()
  results = _write_results(workdir, config, runs)
  print(format_table(summary))
  return results


def _finetune_run(model, params, train_source, source, config, plan, seed, mesh, settings,
                  directory, class_names, *, cache: bool) -> dict[str, Any]:
  """One fine-tuning run, resumed from its checkpoint if it has one; leaves a run directory
  (`bit_jax.run_dir`) and returns the test metrics."""
  run_settings.record(directory, settings)
  if params is None:
    params = finetune.init_params(model, jax.random.key(seed), plan.crop)
  keep = finetune.KeptRun(directory, model=config.model, class_names=class_names,
                          provenance={k: v for k, v in settings.items() if k != "plan"})
  result, _ = finetune.finetune(
      model, params, train_source, config.train_split, source, config.test_split,
      settings["num_classes"], plan, seed=seed, mesh=mesh, cache_train=cache, keep=keep)
  atomic_files.write_json(os.path.join(directory, RESULT_NAME), result)
  return result


def _plan_settings(plan: finetune.Plan) -> dict[str, Any]:
  """The plan's fields that change a run's numbers (not how often it logs or saves)."""
  ignored = ("eval_batch_size", "log_every_steps", "checkpoint_every_steps",
             "preemption_check_every_steps", "accum_steps", "sharding", "fsdp_min_size")
  return {k: v for k, v in dataclasses.asdict(plan).items() if k not in ignored}


def _finished_result(directory: str, settings: dict) -> dict | None:
  """The result of a finished run in `directory`, None if it has not finished; `UserError`
  if the directory holds a run with other settings (its numbers would be mislabelled)."""
  result_path = os.path.join(directory, RESULT_NAME)
  run_settings.check(directory, settings, guards=[
      result_path, os.path.join(directory, checkpointing.CHECKPOINT_DIR)])
  result = atomic_files.read_json(result_path)
  if result is None or not run_dir.is_run(directory):
    return None
  return result


def _class_names(source, num_classes: int) -> tuple[str, ...]:
  """Class index -> name, from the source's metadata; else the indices."""
  names = source.class_names
  return names if names and len(names) == num_classes else tuple(map(str, range(num_classes)))


def _check_config(config: ml_collections.ConfigDict, methods: tuple[str, ...]) -> None:
  """The fields `finetune.make_plan` does not check; `UserError` on the first bad one."""
  if not config.finetune and not methods:
    raise UserError("finetune=False and no linear_eval method: nothing to run; set "
                    "--config.finetune=True or --config.linear_eval=ericsson_linear,...")
  if not config.seeds or not all(isinstance(s, int) and s >= 0 for s in config.seeds):
    raise UserError(f"seeds={tuple(config.seeds)!r} is not valid: give one or more integers "
                    ">= 0, e.g. --config.seeds=0,1,2")
  if config.finetune and (not config.shots or not all(
      isinstance(s, int) and s >= 0 for s in config.shots)):
    raise UserError(f"shots={tuple(config.shots)!r} is not valid: give integers >= 0 "
                    "(examples per class; 0 is the whole training split), e.g. 0 or 1,5,10")


def _linear_methods(names) -> tuple[str, ...]:
  """`("bigvision_fewshot", "ncm")` or `("bigvision_fewshot,ncm",)` (as a command line gives
  it) -> checked names."""
  methods = tuple(m.strip() for item in names for m in item.split(",") if m.strip())
  unknown = [m for m in methods if m not in linear_eval.METHODS]
  if unknown:
    raise UserError(f"unknown linear_eval method {unknown[0]!r}; valid: "
                    f"{', '.join(linear_eval.METHODS)}")
  return methods


def _frozen_feature_runs(config, methods, model, params, source, num_classes, plan, mesh,
                         init_name):
  """The `linear_eval` methods on frozen pre_logits, each at its protocol's preprocessing
  (`linear_eval.FEATURE_PP`; ncm at the fine-tuning's eval resolution) unless
  `config.linear_pp` sets one for all.

  ericsson_fewshot's episodes come from train and test together, as ssl-transfer's
  `SetDataset` pools every split; the episode sizes are checked before any feature is computed.
  """
  if "ericsson_fewshot" in methods:
    pool = np.concatenate([derived.read_labels(source, config.train_split),
                           derived.read_labels(source, config.test_split)])
    for shots in config.fewshot_shots:
      linear_eval.check_episodes(pool, config.fewshot_ways, shots, config.fewshot_queries)
  cache = {}
  def features(method, split):  # (pre_logits, integer labels), once per (pp, split).
    pp = _feature_pp(config, method, plan, num_classes)
    if (pp, split) not in cache:
      out = features_lib.extract(model, params, source, split, pp,
                                 batch_size=plan.eval_batch_size, mesh=mesh)
      cache[pp, split] = out["pre_logits"], out["labels"]
    return cache[pp, split]
  def train_and_test(method):
    return (*features(method, config.train_split), *features(method, config.test_split))

  runs = []
  for method in (m for m in methods if m in ("bigvision_fewshot", "ncm")):
    runs += linear_eval.few_shot(*train_and_test(method), num_classes,
                                 shots=config.linear_shots, seeds=config.seeds,
                                 methods=(method,))
  if "ericsson_fewshot" in methods:
    train_x, train_y, test_x, test_y = train_and_test("ericsson_fewshot")
    pool_x, pool_y = np.concatenate([train_x, test_x]), np.concatenate([train_y, test_y])
    for shots in config.fewshot_shots:
      for seed in config.seeds:
        runs.append(linear_eval.ericsson_fewshot(
            pool_x, pool_y, ways=config.fewshot_ways, shots=shots,
            queries=config.fewshot_queries, episodes=config.fewshot_episodes, seed=seed))
  if "ericsson_linear" in methods:
    metric = config.linear_metric or linear_eval.metric_for(config.dataset)
    if metric == "voc07_map":
      raise UserError("ericsson_linear's voc07_map needs multi-hot labels, which transfer.py "
                      "does not feed; call bit_jax.linear_eval.ericsson_linear directly")
    train_x, train_y, test_x, test_y = train_and_test("ericsson_linear")
    if config.val_split:
      val_x, val_y = features("ericsson_linear", config.val_split)
      fit_x, fit_y = train_x, train_y
    else:
      fit, val = linear_eval.split_validation(len(train_y), config.val_fraction)
      fit_x, fit_y, val_x, val_y = train_x[fit], train_y[fit], train_x[val], train_y[val]
    result = linear_eval.ericsson_linear(fit_x, fit_y, val_x, val_y, test_x, test_y,
                                         metric=metric)
    runs.append({**result, "shots": "all", "seed": linear_eval.VAL_SEED})
  return [{"evaluation": r["method"], "init": init_name,
           "pp": _feature_pp(config, r["method"], plan, num_classes),
           **{k: v for k, v in r.items() if k != "method"}} for r in runs]


def _feature_pp(config, method: str, plan: finetune.Plan, num_classes: int) -> str:
  """The preprocessing `method`'s features are extracted at (see `_frozen_feature_runs`)."""
  middle = config.linear_pp or linear_eval.FEATURE_PP[method]
  if middle is None:
    return plan.pp_eval(num_classes)
  return f"decode|{middle}|value_range(-1,1)|onehot({num_classes})|keep('image', 'label')"


def _image_hw(source) -> tuple[int, int] | None:
  """(height, width) from the source's metadata when every image has the same size."""
  hw = (source.image_shape or (None, None))[:2]
  return None if None in hw else tuple(hw)


def summarize(runs: list[dict]) -> list[dict]:
  """Mean and spread (std over seeds) per (evaluation, init, shots)."""
  groups: dict[tuple, list[dict]] = {}
  for run in runs:
    groups.setdefault((run["evaluation"], run["init"], str(run["shots"])), []).append(run)
  return [{"evaluation": e, "init": i, "shots": s, "num_seeds": len(rs),
           "top1_mean": float(np.mean([r["top1"] for r in rs])),
           "top1_std": float(np.std([r["top1"] for r in rs])),
           "ece_mean": float(np.mean([r["ece"] for r in rs]))}
          for (e, i, s), rs in groups.items()]


def format_table(summary: list[dict]) -> str:
  header = f"{'evaluation':<17} {'init':<10} {'shots':>5} {'seeds':>5}  {'top-1 %':>14}  ECE"
  lines = [header, "-" * len(header)]
  for row in summary:
    top1 = f"{100 * row['top1_mean']:.1f} ± {100 * row['top1_std']:.1f}"
    lines.append(f"{row['evaluation']:<17} {row['init']:<10} {row['shots']:>5} "
                 f"{row['num_seeds']:>5}  {top1:>14}  {row['ece_mean']:.3f}")
  return "\n".join(lines)


def _write_results(workdir: str, config, runs: list[dict]) -> dict[str, Any]:
  results = {"config": json.loads(config.to_json_best_effort()), "runs": runs,
             "summary": summarize(runs)}
  atomic_files.write_json(os.path.join(workdir, RESULTS_NAME), results)
  return results
