"""Transfer: `finetune_and_evaluate(config, workdir)`.

For each number of shots (all data, or k per class) and seed: BiT-HyperRule fine-tuning from
the pretrained checkpoint (and, optionally, the same run from scratch as the baseline). Then,
optionally, the frozen-feature evaluations of `bit_jax.linear_eval`. Every result has test
top-1 on the full test split and ECE; all go to `<workdir>/results.json`, TensorBoard, and a
table printed at the end.
"""

from __future__ import annotations

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
from bit_jax import atomic_files, checkpointing, distributed, fewshot, finetune
from bit_jax import host_allocator, linear_eval, models
from bit_jax.errors import UserError

RESULTS_NAME = "results.json"


def finetune_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs every evaluation `config` asks for; returns what results.json holds."""
  methods = _linear_methods(config.linear_eval)
  mesh = distributed.data_mesh()
  host_allocator.log_advice(jax.default_backend())
  source = input_pipeline.get_source(config.dataset, config.data_dir)
  num_classes = config.num_classes or source.num_classes
  if not num_classes:
    raise UserError(f"{config.dataset} does not say how many classes it has; "
                    "set --config.num_classes")
  model = models.get_model(config.model, num_classes=num_classes, dtype=config.dtype,
                           remat=config.remat, kernels=config.kernels)
  pretrained_params = checkpointing.load_init(config.init, model)
  train_labels = derived.read_labels(source, config.train_split)
  num_train = config.num_train_examples or len(train_labels)
  image_hw = tuple(config.image_size) or _image_hw(source)

  runs = []
  writer = metric_writers.create_default_writer(workdir,
                                                just_logging=jax.process_index() > 0)
  inits = [("pretrained", pretrained_params)] if pretrained_params is not None else []
  if config.from_scratch_baseline or pretrained_params is None:
    inits.append(("scratch", None))

  for shots in (config.shots if config.finetune else ()):
    for seed in config.seeds:
      train_source, size = source, num_train
      if shots:
        chosen = fewshot.select_few_shot(train_labels, shots, seed)
        train_source, size = derived.Subset(source, config.train_split, chosen), len(chosen)
      plan = finetune.make_plan(config, size, image_hw)
      for init_name, params in inits:
        if params is None:
          params = finetune.init_params(model, jax.random.key(seed), plan.crop)
        logging.info("Fine-tuning from %s: %s shots, seed %d, %s", init_name, shots or "all",
                     seed, plan)
        result = finetune.finetune(model, params, train_source, config.train_split, source,
                                   config.test_split, num_classes, plan, seed=seed,
                                   mesh=mesh, cache_train=bool(shots))
        runs.append({"evaluation": "finetune", "init": init_name, "shots": shots or "all",
                     "seed": seed, **result, "schedule": list(plan.schedule),
                     "resolution": [plan.resize, plan.crop], "mixup_alpha": plan.mixup_alpha})
        _write_results(workdir, config, runs)

  if methods:
    plan = finetune.make_plan(config, num_train, image_hw)
    for init_name, params in inits:
      if params is None:
        params = finetune.init_params(model, jax.random.key(0), plan.crop)
      runs += _frozen_feature_runs(config, methods, model, params, source, num_classes,
                                   plan, mesh, init_name)
      _write_results(workdir, config, runs)

  summary = summarize(runs)
  for i, row in enumerate(summary):
    writer.write_scalars(i, {f"{row['evaluation']}/{row['init']}/{row['shots']}shot/{k}":
                             row[k] for k in ("top1_mean", "ece_mean")})
  writer.flush()
  results = _write_results(workdir, config, runs)
  print(format_table(summary))
  return results


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
  """The `linear_eval` methods on frozen pre_logits at the HyperRule's eval resolution.

  ericsson_fewshot's episodes come from train and test together, as ssl-transfer's
  `SetDataset` pools every split; the episode sizes are checked before any feature is computed.
  """
  if "ericsson_fewshot" in methods:
    pool = np.concatenate([derived.read_labels(source, config.train_split),
                           derived.read_labels(source, config.test_split)])
    for shots in config.fewshot_shots:
      linear_eval.check_episodes(pool, config.fewshot_ways, shots, config.fewshot_queries)
  pp = plan.pp_eval(num_classes)
  features = lambda split: finetune.predict(model, params, source, split, pp,
                                            batch_size=plan.eval_batch_size, mesh=mesh,
                                            output="pre_logits")
  train_x, train_y = features(config.train_split)
  test_x, test_y = features(config.test_split)
  train_y, test_y = train_y.argmax(-1), test_y.argmax(-1)
  runs = []
  few = [m for m in methods if m in ("bigvision_fewshot", "ncm")]
  if few:
    runs += linear_eval.few_shot(train_x, train_y, test_x, test_y, num_classes,
                                 shots=config.linear_shots, seeds=config.seeds, methods=few)
  if "ericsson_fewshot" in methods:
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
    if config.val_split:
      val_x, val_y = features(config.val_split)
      val_y = val_y.argmax(-1)
      fit_x, fit_y = train_x, train_y
    else:
      fit, val = linear_eval.split_validation(len(train_y), config.val_fraction)
      fit_x, fit_y, val_x, val_y = train_x[fit], train_y[fit], train_x[val], train_y[val]
    result = linear_eval.ericsson_linear(fit_x, fit_y, val_x, val_y, test_x, test_y,
                                         metric=metric)
    runs.append({**result, "shots": "all", "seed": linear_eval.VAL_SEED})
  return [{"evaluation": r.pop("method"), "init": init_name, **r} for r in runs]


def _image_hw(source) -> tuple[int, int] | None:
  """(height, width) from TFDS metadata when every image has the same size."""
  builder = getattr(source, "builder", None)
  try:
    shape = builder.info.features["image"].shape
  except (AttributeError, KeyError, TypeError):
    return None
  return tuple(shape[:2]) if None not in shape[:2] else None


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
