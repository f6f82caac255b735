"""A fine-tuned model on disk: what `transfer.py` and VTAB leave in each run's directory.

    <run dir>/params.npz   the parameters in the official BiT layout, the new head included
    <run dir>/model.json   the `ModelCard`: everything needed to use them

    run_dir.write(directory, params, card)
    model, params, card = run_dir.load(directory)

`bit_jax.predict`, `bit_jax.features` and `bit_jax.export` read a run through `load`, so a
run directory is the one thing a user keeps, copies and ships.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from bit_jax import atomic_files, models, npz, pretrained
from bit_jax.errors import UserError

PARAMS_NAME = "params.npz"
CARD_NAME = "model.json"


@dataclasses.dataclass(frozen=True)
class ModelCard:
  """What a fine-tuned model is and how to feed it."""
  model: str  # A name for `models.get_model`, e.g. BiT-M-R50x1.
  class_names: tuple[str, ...]  # Index -> name; the head's size is their number.
  resize: int  # The training resize (HyperRule); evaluation resizes straight to `crop`.
  crop: int  # The square input the model was fine-tuned and evaluated at.
  # The eval preprocessing of one image (input_pipeline.ops), decoded bytes to model input.
  pp_image: str
  # How the dataset's labels became these classes: "identity", or a VTAB task's mapping.
  label_mapping: str = "identity"
  # Where it came from: init, dataset, train split, shots, seed, steps, test top-1, ...
  provenance: dict[str, Any] = dataclasses.field(default_factory=dict)

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  def pp_eval(self) -> str:
    """The eval preprocessing of a labelled example, as `input_pipeline` iterators take it."""
    return f"{self.pp_image}|onehot({self.num_classes})|keep('image', 'label')"


def pp_image(crop: int) -> str:
  """The HyperRule's eval preprocessing of one image: resize to the crop, scale to [-1, 1]."""
  return f"decode|resize({crop})|value_range(-1,1)"


def write(directory: str | os.PathLike, params: Any, card: ModelCard) -> None:
  """Writes params.npz, then model.json: a directory with a card holds complete params."""
  os.makedirs(directory, exist_ok=True)
  npz.save(params, os.path.join(directory, PARAMS_NAME))
  atomic_files.write_json(os.path.join(directory, CARD_NAME), dataclasses.asdict(card))


def is_run(directory: str | os.PathLike) -> bool:
  """Whether `directory` holds a finished fine-tuning run (its card is written last)."""
  return os.path.isfile(os.path.join(directory, CARD_NAME))


def read_card(directory: str | os.PathLike) -> ModelCard:
  path = os.path.join(directory, CARD_NAME)
  if not os.path.isfile(path):
    raise UserError(f"{directory} is not a fine-tuning run directory: it has no {CARD_NAME} "
                    f"(transfer.py and VTAB write one beside {PARAMS_NAME} per run)")
  try:
    with open(path) as f:
      fields = json.load(f)
    fields["class_names"] = tuple(fields["class_names"])
    return ModelCard(**fields)
  except (json.JSONDecodeError, KeyError, TypeError) as e:
    raise UserError(f"{path} is not a valid model card ({e}); expected the fields "
                    f"{', '.join(f.name for f in dataclasses.fields(ModelCard))}") from None


def load(directory: str | os.PathLike, *, dtype: str = "float32", kernels: str = "auto"
         ) -> tuple[models.ResNetV2, dict[str, Any], ModelCard]:
  """(model, params, card) of a run directory; the params are checked against the model."""
  card = read_card(directory)
  if card.model not in models.MODEL_NAMES:
    raise UserError(f"{directory}/{CARD_NAME} names the model {card.model!r}; valid: "
                    f"{', '.join(models.MODEL_NAMES)}")
  model = models.get_model(card.model, num_classes=card.num_classes, dtype=dtype,
                           kernels=kernels)
  params, report = pretrained.load(os.path.join(directory, PARAMS_NAME), model)
  if report.replaced:  # A head that does not match the card would predict zeros.
    raise UserError(f"{directory}/{PARAMS_NAME} has no head for the card's "
                    f"{card.num_classes} classes ({', '.join(report.replaced)} missing or "
                    "of another shape)")
  return model, params, card
