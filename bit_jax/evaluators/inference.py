"""What every evaluator shares: the run it evaluates, its data, and the model's outputs on it.

`Run` carries the inference model (weight standardization hoisted: `run.prepare(params)`
standardizes the kernels once per evaluation, not in every forward call), the mesh and the
run's defaults, which an evaluator's empty fields take (`dataset` "", `split` "", `pp` "",
`batch_size` 0, `every_steps` 0: the run's dataset, eval_split, pp_eval, eval_batch_size and
eval_every_steps). `batches` opens an evaluation split lazily, when the evaluator first runs:
TFDS downloads and prepares a missing dataset where it can, as for the training data; one it
cannot (a manual download, no network) fails then, not when the run starts.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow_datasets as tfds
from jax.sharding import NamedSharding, PartitionSpec as P

import input_pipeline
from input_pipeline import embedded
from input_pipeline.datasets import FOLDER_PREFIX
from bit_jax import models
from bit_jax.errors import UserError
from bit_jax.evaluators import spec


@dataclasses.dataclass(frozen=True)
class Run:
  """The model and settings of the run that evaluators evaluate."""
  model: models.ResNetV2  # Takes its kernels as given: see `prepare`.
  standardize: Callable[[Any], Any]  # Training params -> the params `model` takes.
  mesh: jax.sharding.Mesh
  num_classes: int  # Head size.
  loss: str  # softmax_xent or sigmoid_xent: how logits become probabilities (ECE).
  dataset: str = ""  # The defaults of the evaluators' empty fields.
  split: str = ""
  pp: str = ""
  batch_size: int = 0
  every_steps: int = 0
  data_dir: str | None = None

  @classmethod
  def create(cls, model: models.ResNetV2, mesh: jax.sharding.Mesh, **fields) -> "Run":
    inner, standardize = models.hoist_weight_standardization(model)
    return cls(model=inner, standardize=jax.jit(standardize), mesh=mesh,
               num_classes=model.num_classes, **fields)

  def prepare(self, params: Any) -> Any:
    """The training params, replicated and with standardized kernels, for `self.model`."""
    return self.standardize(jax.device_put(params, NamedSharding(self.mesh, P())))


class OneSplit:
  """What an evaluator of one split of one dataset shares: its `spec.DATA` fields (the run's
  where left empty), checked when it is built, and its batches, opened when it first runs."""

  def __init__(self, name: str, entry: Mapping[str, Any], run: Run):
    self.name, self.run = name, run
    self.dataset, self.split, self.pp, self.batch_size = spec.data(name, entry, run)
    check_dataset_name(self.dataset, f"evals.{name}.dataset", run)
    self._data = None

  def describe(self) -> str:
    return f"{self.dataset} {self.split}"

  @property
  def data(self) -> input_pipeline.EvalBatches:
    if self._data is None:
      self._data = batches(self.run, self.dataset, self.split, self.pp, self.batch_size)
    return self._data


def check_dataset_name(name: str, where: str, run: Run) -> None:
  """`UserError` unless `name` is an embedded dataset, `folder:/path`, a TFDS builder or the
  run's own dataset (which its loop checks; it may be a user-prepared one, e.g. imagenet21k).

  Only the name: whether the data is prepared is found out when the evaluator runs.
  """
  if not isinstance(name, str) or not name:
    raise UserError(f"{where}={name!r} is not valid: give a dataset name")
  base = name.split(":")[0].split("/")[0]
  if name == run.dataset or name.startswith(FOLDER_PREFIX) or base in embedded.BUILDERS:
    return
  try:
    tfds.builder_cls(base)
  except tfds.core.registered.DatasetNotFoundError:
    raise UserError(f"unknown dataset {name!r} in {where}; valid: the embedded "
                    f"{', '.join(embedded.BUILDERS)}, {FOLDER_PREFIX}/path/to/images, or a TFDS "
                    "name as listed by tfds.list_builders(), e.g. imagenet_v2") from None


def batches(run: Run, dataset: str, split: str, pp: str,
            batch_size: int) -> input_pipeline.EvalBatches:
  """Every example of `split` once, in padded, masked global batches."""
  source = input_pipeline.get_source(dataset, run.data_dir)
  return input_pipeline.eval_iterator(source, split, pp, batch_size, run.mesh,
                                      data_dir=run.data_dir)


@functools.cache
def jitted(make_step: Callable[..., Callable], mesh: jax.sharding.Mesh, *args) -> Callable:
  """`jax.jit(make_step(*args))`, its outputs replicated; one per arguments, so evaluators of
  one kind share its compilations."""
  return jax.jit(make_step(*args), out_shardings=NamedSharding(mesh, P()))


def sum_over(data: Iterator[Mapping[str, jax.Array]],
             step: Callable[[Mapping[str, jax.Array]], Mapping[str, jax.Array]]
             ) -> dict[str, np.ndarray]:
  """Sums the per-batch counts `step(batch)` over all batches, on device; then on the host."""
  sums = None
  for batch in data:
    counts = step(batch)
    sums = counts if sums is None else jax.tree.map(jnp.add, sums, counts)
  if sums is None:
    raise UserError("the evaluation split has no examples")
  return jax.tree.map(np.asarray, jax.device_get(sums))


def one_hot(labels: jax.Array, num_classes: int) -> jax.Array:
  """One-hot rows for integer labels; one-hot or multi-hot labels pass through."""
  return labels if labels.ndim > 1 else jax.nn.one_hot(labels, num_classes)

