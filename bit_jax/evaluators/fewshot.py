"""`fewshot`: ridge regression on frozen features, k shots per class, on several datasets.

big_vision's few-shot evaluator (`evaluators/fewshot_lsr.py`, `Evaluator.run` and
`compute_fewshot_metrics`; its defaults in `configs/common_fewshot.py`, `get_fewshot_lsr`): the
model's `pre_logits` of every image of each dataset's train and test split are extracted once
per evaluation, then for each seed and each number of shots a closed-form ridge classifier is
fitted on `shots` images per class of the train split
(`bit_jax.fewshot_classifiers.select_few_shot`, the same draw as big_vision) and scored on the
whole test split (`bit_jax.fewshot_classifiers.ridge_fewshot_accuracy`, l2 2^10). Tags are
`<dataset>_<shots>shot`, the mean over `num_seeds` seeds (big_vision writes one tag per seed).

A dataset that cannot be read is dropped from the evaluator with one logged line; a number of
shots above a dataset's smallest class is skipped for that dataset.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
from absl import logging

import input_pipeline
from bit_jax import features, fewshot_classifiers
from bit_jax.errors import UserError, one_line
from bit_jax.evaluators import inference, spec

FIELDS = {
    "datasets": {},  # {tag name: (dataset, train split, test split)}.
    "shots": (1, 5, 10, 25),
    "l2_reg": 2.0**10,
    "num_seeds": 3,
    "pp": "",  # Must keep integer (or one-hot) labels under "label".
    "batch_size": 0,
}


class Evaluator:
  """Few-shot ridge accuracy of `pre_logits` on each of `datasets`."""

  def __init__(self, name: str, entry: Mapping[str, Any], run: inference.Run):
    self.name, self.run = name, run
    datasets = entry["datasets"]
    if not isinstance(datasets, Mapping) or not datasets:
      raise UserError(f"evals.{name}.datasets={datasets!r} is not valid: give "
                      "{name: (dataset, train split, test split), ...}")
    self.datasets = {}
    for key, value in datasets.items():
      if (not isinstance(value, (tuple, list)) or len(value) != 3
          or not all(isinstance(v, str) and v for v in value)):
        raise UserError(f"evals.{name}.datasets.{key}={value!r} is not valid: give "
                        "(dataset, train split, test split), e.g. ('dtd', 'train', 'test')")
      inference.check_dataset_name(value[0], f"evals.{name}.datasets.{key}", run)
      self.datasets[key] = tuple(value)
    shots = entry["shots"]
    if (not isinstance(shots, (tuple, list)) or not shots
        or not all(isinstance(s, int) and s >= 1 for s in shots)):
      raise UserError(f"evals.{name}.shots={shots!r} is not valid: give a tuple of integers "
                      ">= 1, e.g. (1, 5, 10, 25)")
    self.shots = tuple(shots)
    if not isinstance(entry["l2_reg"], (int, float)) or entry["l2_reg"] < 0:
      raise UserError(f"evals.{name}.l2_reg={entry['l2_reg']!r} is not valid: it must be >= 0")
    self.l2_reg = float(entry["l2_reg"])
    self.num_seeds = spec.positive_int(name, "num_seeds", entry["num_seeds"])
    self.pp = spec.non_empty_str(name, "pp", entry["pp"] or run.pp)
    self.batch_size = spec.positive_int(name, "batch_size", entry["batch_size"] or run.batch_size)
    self._sources = {}  # dataset -> Source, opened on first use.

  def describe(self) -> str:
    return f"{', '.join(self.datasets)}; shots {', '.join(map(str, self.shots))}"

  def _features(self, params, dataset: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(float32 pre_logits, integer labels) of every example of `split`, in order."""
    if dataset not in self._sources:
      self._sources[dataset] = input_pipeline.get_source(dataset, self.run.data_dir)
    # `params` are `run.prepare`d for `run.model`, whose kernels are taken as given.
    out = features.extract(self.run.model, params, self._sources[dataset], split, self.pp,
                           batch_size=self.batch_size, mesh=self.run.mesh)
    return out["pre_logits"].astype(np.float32), out[features.LABELS]

  def run_on(self, params: Any) -> dict[str, float]:
    results = {}
    for key, (dataset, train_split, test_split) in list(self.datasets.items()):
      try:
        train_x, train_y = self._features(params, dataset, train_split)
        test_x, test_y = self._features(params, dataset, test_split)
      except Exception as e:  # pylint: disable=broad-except  # Missing or bad data.
        logging.warning("evaluator %s: dropping %s for this run: %s", self.name, key,
                        one_line(e))
        del self.datasets[key]
        continue
      results.update(accuracies(train_x, train_y, test_x, test_y, self.shots, self.num_seeds,
                                self.l2_reg, prefix=key))
    if not self.datasets:
      raise ValueError("none of its datasets could be read")
    return results


def accuracies(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
               test_y: np.ndarray, shots: tuple[int, ...], num_seeds: int, l2_reg: float, *,
               prefix: str) -> dict[str, float]:
  """{f"{prefix}_{k}shot": mean over seeds 0..num_seeds-1 of the k-shot ridge accuracy}."""
  num_classes = int(max(train_y.max(), test_y.max())) + 1
  counts = np.bincount(train_y)
  smallest = int(counts[counts > 0].min()) if train_y.size else 0
  results = {}
  for k in shots:
    if k > smallest:
      continue
    accs = []
    for seed in range(num_seeds):
      idx = fewshot_classifiers.select_few_shot(train_y, k, seed)
      accs.append(fewshot_classifiers.ridge_fewshot_accuracy(
          train_x[idx], train_y[idx], test_x, test_y, num_classes, l2_reg))
    results[f"{prefix}_{k}shot"] = float(np.mean(accs))
  return results
