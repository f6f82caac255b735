"""An evaluator's entry in `config.evals`: its fields, their defaults, and their checks.

Every entry has `kind` (a key of `bit_jax.evaluators.KINDS`), `every_steps` (0: the run's
`eval_every_steps`) and `enabled` (False switches it off); each kind adds its own fields.
Every check raises `UserError` with one line naming `evals.<name>.<field>`.
"""

from __future__ import annotations

from typing import Any, Mapping

from bit_jax.errors import UserError

COMMON = {"kind": "", "every_steps": 0, "enabled": True}


def read(name: str, entry: Mapping[str, Any], fields: Mapping[str, Any]) -> dict[str, Any]:
  """The entry's fields over the kind's defaults; an unknown field fails, listing the valid."""
  entry = entry.to_dict() if hasattr(entry, "to_dict") else dict(entry)
  valid = {**COMMON, **fields}
  unknown = sorted(set(entry) - set(valid))
  if unknown:
    raise UserError(f"evals.{name}.{unknown[0]} is not a field of a {entry.get('kind')!r} "
                    f"evaluator; valid: {', '.join(sorted(valid))}")
  read_ = {**valid, **entry}
  if not isinstance(read_["every_steps"], int) or read_["every_steps"] < 0:
    raise UserError(f"evals.{name}.every_steps={read_['every_steps']!r} is not valid: it must "
                    "be an integer >= 1, or 0 for the run's eval_every_steps")
  return read_


def positive_int(name: str, field: str, value: Any) -> int:
  if not isinstance(value, int) or isinstance(value, bool) or value < 1:
    raise UserError(f"evals.{name}.{field}={value!r} is not valid: it must be an integer >= 1")
  return value


def non_empty_str(name: str, field: str, value: Any) -> str:
  if not isinstance(value, str) or not value:
    raise UserError(f"evals.{name}.{field}={value!r} is not valid: it must be a non-empty "
                    "string")
  return value


# The fields of an evaluator that reads one split; "" and 0 take the run's value.
DATA = {"dataset": "", "split": "", "pp": "", "batch_size": 0}


def data(name: str, entry: Mapping[str, Any], run: Any) -> tuple[str, str, str, int]:
  """(dataset, split, pp, batch_size) of a one-split evaluator, the run's where left empty."""
  dataset = entry["dataset"] or run.dataset
  split = entry["split"] or run.split
  pp = entry["pp"] or run.pp
  batch_size = entry["batch_size"] or run.batch_size
  for field, value in (("dataset", dataset), ("split", split), ("pp", pp)):
    non_empty_str(name, field, value)
  return dataset, split, pp, positive_int(name, "batch_size", batch_size)
