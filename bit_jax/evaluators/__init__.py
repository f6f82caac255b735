"""Evaluators as a registry: `config.evals` names the evaluators a run (or `__main__`'s command
line, `python -m bit_jax.evaluators`, on any checkpoint) runs, each with its kind, its data and
how often it runs, as big_vision does (`big_vision/evaluators/common.py`, `from_config`;
`configs/bit_i1k.py`, `config.evals`).

    config.evals.eval = dict(kind="classification", split="validation", every_steps=1000, ...)
    config.evals.fewshot = dict(kind="fewshot", datasets={...}, shots=(1, 5, 10, 25), ...)

    evaluators = Evaluators.from_config(config, model, mesh)   # checks every entry: UserError
    results = evaluators.run(step, params, total_steps)        # {"<name>/<metric>": value}

Kinds (one module each): `classification` (top-1/top-5/loss/ECE of the head on a split),
`fewshot` (ridge few-shot on frozen `pre_logits`, several datasets and shots), `real`
(ImageNet-ReaL multi-label accuracy), `subset` (an N-way head on a dataset of a subset of its
classes, via a class-index mapping file). Fields are described in `spec` and in each kind's
module. An evaluator runs every `every_steps` steps and at the last step. One that fails while
running (its dataset is missing, say) logs one line and is disabled for the rest of the run;
training goes on. Evaluators read their own data and draw no randomness from the run, so they
never change what training sees.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import ml_collections
from absl import logging

from bit_jax import models
from bit_jax.errors import UserError, one_line
from bit_jax.evaluators import classification, fewshot, inference, real, spec, subset

KINDS = {"classification": classification, "fewshot": fewshot, "real": real, "subset": subset}


def build(name: str, entry: Mapping[str, Any], run: inference.Run):
  """One evaluator from its `config.evals` entry; `UserError` on any bad field."""
  kind = entry.get("kind")
  if kind not in KINDS:
    raise UserError(f"evals.{name}.kind={kind!r} is not valid; valid kinds: "
                    f"{', '.join(KINDS)}")
  module = KINDS[kind]
  fields = spec.read(name, entry, module.FIELDS)
  evaluator = module.Evaluator(name, fields, run)
  evaluator.kind = kind
  evaluator.every_steps = fields["every_steps"] or run.every_steps
  spec.positive_int(name, "every_steps", evaluator.every_steps)
  return evaluator


class Evaluators:
  """The enabled evaluators of a run, in name order (ConfigDict sorts), and when each runs."""

  def __init__(self, evaluators: list, run: inference.Run):
    self.evaluators, self.run_info = list(evaluators), run

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, model: models.ResNetV2,
                  mesh: jax.sharding.Mesh, **defaults) -> "Evaluators":
    """`config.evals`' enabled entries; the run's defaults from `config` (see `inference`)."""
    fields = dict(dataset=config.get("dataset", ""), split=config.get("eval_split", ""),
                  pp=config.get("pp_eval", ""), batch_size=config.get("eval_batch_size", 0),
                  every_steps=config.get("eval_every_steps", 0),
                  data_dir=config.get("data_dir"), loss=config.get("loss", "softmax_xent"))
    fields.update(defaults)
    run = inference.Run.create(model, mesh, **fields)
    evals = config.get("evals") or {}
    if not hasattr(evals, "items"):
      raise UserError(f"evals={evals!r} is not valid: give a dict of named evaluators")
    built = []
    for name, entry in evals.items():
      if not hasattr(entry, "get"):
        raise UserError(f"evals.{name}={entry!r} is not valid: give a dict with a kind, one "
                        f"of {', '.join(KINDS)}")
      if entry.get("enabled", True):
        built.append(build(name, entry, run))
    return cls(built, run)

  def __len__(self) -> int:
    return len(self.evaluators)

  def names(self) -> list[str]:
    return [e.name for e in self.evaluators]

  def due(self, step: int, total_steps: int) -> list:
    return [e for e in self.evaluators if step % e.every_steps == 0 or step == total_steps]

  def run(self, step: int, params: Any, total_steps: int | None = None, *,
          force: bool = False) -> dict[str, float]:
    """Runs the evaluators due at `step` (all of them if `force`); returns
    {"<name>/<metric>": value}. One that fails is logged and disabled."""
    due = self.evaluators if force else self.due(step, total_steps)
    if not due:
      return {}
    prepared = self.run_info.prepare(params)  # Kernels standardized once for all of them.
    results = {}
    for evaluator in due:
      try:
        metrics = evaluator.run_on(prepared)
      except Exception as e:  # pylint: disable=broad-except  # Missing data, a bad mapping.
        logging.warning("evaluator %s (%s) failed at step %d and is disabled for this run: "
                        "%s", evaluator.name, evaluator.describe(), step, one_line(e))
        self.evaluators.remove(evaluator)
        continue
      results.update({f"{evaluator.name}/{k}": v for k, v in metrics.items()})
    return results
