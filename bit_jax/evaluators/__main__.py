"""Evaluate a checkpoint, or every checkpoint of a run, on a suite of evaluators.

    python -m bit_jax.evaluators --config=configs/evaluate.py:suite=robustness \
        --init=<.npz | release name | train.py workdir> --workdir=DIR [--every_checkpoint]

Runs `config.evals` (`bit_jax.evaluators`; `configs/evaluate.py` holds the suites) once per
checkpoint: an .npz, the latest checkpoint of a workdir, or with `--every_checkpoint` each
of them. Into DIR it writes `results.json` ({checkpoint: {"<eval>/<metric>": value}}, written
again atomically after each checkpoint, so a killed run keeps what it finished and a rerun
skips every checkpoint already there), `results.md` (the latest checkpoint's metrics beside
the published BiT numbers of `published_robustness.csv` beside it) and, once two or more
steps are evaluated, `curves/<eval>_<metric>.png`: each metric over training steps.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from typing import Any

import jax
import ml_collections
from absl import app, flags, logging

from bit_jax import atomic_files, checkpointing, distributed, entry, models, pretrained, zoo
from bit_jax.errors import UserError
from bit_jax.evaluators import Evaluators

RESULTS = "results.json"
TABLE = "results.md"
CURVES = "curves"
PUBLISHED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "published_robustness.csv")
NPZ_KEY = "npz"  # The results key of an .npz, which has no step.


def evaluate(config: ml_collections.ConfigDict, init: str, workdir: str, *,
             every_checkpoint: bool = False) -> dict[str, dict[str, float]]:
  """Evaluates `init` (see the module docstring) into `workdir`; returns every result there,
  {checkpoint key: {"<eval>/<metric>": value}}, the key a step number or "npz"."""
  mesh = distributed.data_mesh()
  model = models.get_model(config.model, num_classes=config.num_classes, dtype=config.dtype,
                           kernels=config.kernels, platform=mesh.devices.flat[0].platform)
  evaluators = Evaluators.from_config(config, model, mesh)
  checkpoints = _checkpoints(init, every_checkpoint)
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise UserError(f"--workdir={workdir!r} is a file; give a new or an earlier evaluate "
                    "directory")
  path = os.path.join(workdir, RESULTS)
  record = _read(path, init, config)
  for key, load in checkpoints:
    if key in record["results"]:
      logging.info("Checkpoint %s of %s: evaluated before, skipped.", key, init)
      continue
    params = _fit(load(), model, f"{init} ({key})")
    step = int(key) if key.isdigit() else 0
    metrics = evaluators.run(step, params, force=True)
    logging.info("Checkpoint %s: %s", key,
                 ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items())))
    record["results"][key] = metrics
    atomic_files.write_json(path, record)
  results = record["results"]
  if jax.process_index() == 0 and results:
    write_table(os.path.join(workdir, TABLE), results, read_published())
    steps = sorted(int(k) for k in results if k.isdigit())
    if len(steps) > 1:
      draw_curves(os.path.join(workdir, CURVES), {s: results[str(s)] for s in steps})
  return results


def _checkpoints(init: str, every_checkpoint: bool) -> list[tuple[str, Any]]:
  """[(results key, () -> params)] of what `init` names, oldest first."""
  if not init:
    raise UserError("--init is required: an official .npz, a release name (BiT-M-R50x1) or "
                    "a train.py workdir")
  if os.path.isdir(init):
    directory = os.path.join(init, checkpointing.CHECKPOINT_DIR)
    if not os.path.isdir(directory):
      raise UserError(f"--init={init!r} is a folder without {checkpointing.CHECKPOINT_DIR}/; "
                      "give a train.py workdir or an .npz")
    reader = checkpointing.Checkpointer(directory, read_only=True)
    try:
      steps = reader.all_steps()
    finally:
      reader.close()
    if not steps:
      raise UserError(f"{directory} holds no checkpoint")
    steps = sorted(steps) if every_checkpoint else [max(steps)]
    return [(str(s), lambda s=s: checkpointing.read_params(init, s)[0]) for s in steps]
  if every_checkpoint:
    raise UserError(f"--every_checkpoint needs a train.py workdir as --init, not {init!r}")
  path = zoo.resolve(init)
  if not os.path.isfile(path):
    raise UserError(f"--init={init!r} does not exist; give an official .npz, a release name "
                    "or a train.py workdir")
  from bit_jax import npz  # pylint: disable=import-outside-toplevel
  return [(NPZ_KEY, lambda: npz.load(path))]


def _fit(params: Any, model: models.ResNetV2, source: str) -> Any:
  """The params, checked against the model; a head of another size is an error here."""
  fitted, report = pretrained.fit(params, model, source=source)
  if report.replaced:
    raise UserError(f"{source} has no head for the config's {model.num_classes} classes "
                    f"({', '.join(report.replaced)} missing or of another shape): set "
                    "--config.num_classes (and --config.model) to the checkpoint's")
  return fitted


def _read(path: str, init: str, config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The results written before (a damaged file is moved aside and redone); they must be of
  the same init and model."""
  fresh = {"init": os.path.abspath(init) if os.path.exists(init) else init,
           "model": config.model, "results": {}}
  if not os.path.exists(path):
    return fresh
  try:
    with open(path) as f:
      record = json.load(f)
    record["results"] = dict(record["results"])
  except (OSError, ValueError, KeyError, TypeError) as e:
    aside = atomic_files.move_aside(path)
    logging.warning("%s could not be read (%s); moved to %s, evaluating again.", path, e, aside)
    return fresh
  if (record.get("init"), record.get("model")) != (fresh["init"], fresh["model"]):
    raise UserError(f"{path} holds results of {record.get('model')} from {record.get('init')}, "
                    f"not of {fresh['model']} from {fresh['init']}: use another --workdir")
  return record


def read_published(path: str = PUBLISHED) -> list[dict[str, str]]:
  """The rows of the published-numbers CSV: eval, metric, model, value (%), source, note."""
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def write_table(path: str, results: dict[str, dict[str, float]],
                published: list[dict[str, str]]) -> None:
  """A Markdown table: each top-1/top-5 of the latest checkpoint, in %, beside the published
  numbers of the same eval and metric."""
  key = max(results, key=lambda k: int(k) if k.isdigit() else -1)
  ours = {tag: value for tag, value in results[key].items()
          if tag.rsplit("/", 1)[-1] in ("top1", "top5")}
  models_ = sorted({row["model"] for row in published})
  cited = {(row["eval"], row["metric"], row["model"]): row["value"] for row in published}
  header = ["eval", "metric", f"this checkpoint ({key})", *models_]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for tag in sorted(ours):
    name, metric = tag.rsplit("/", 1)
    row = [name, metric, f"{100 * ours[tag]:.2f}",
           *(cited.get((name, metric, m), "") for m in models_)]
    lines.append("| " + " | ".join(row) + " |")
  sources = sorted({row["source"] for row in published})
  lines += ["", "Published numbers (%): " + "; ".join(sources) + ".", ""]
  atomic_files.write(path, lambda f: f.write("\n".join(lines)), text=True)


def draw_curves(directory: str, by_step: dict[int, dict[str, float]]) -> list[str]:
  """One PNG per metric, its value over the steps; returns the paths."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=import-outside-toplevel
  steps = sorted(by_step)
  tags = sorted({tag for metrics in by_step.values() for tag in metrics})
  paths = []
  for tag in tags:
    points = [(s, by_step[s][tag]) for s in steps if tag in by_step[s]]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(*zip(*points), marker="o")
    ax.set_xlabel("training step")
    ax.set_ylabel(tag)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = os.path.join(directory, tag.replace("/", "_") + ".png")
    atomic_files.write(path, lambda f, fig=fig: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)
    paths.append(path)
  return paths


FLAGS = flags.FLAGS


def main(argv):
  del argv
  entry.run(lambda: evaluate(FLAGS.config, FLAGS.init, FLAGS.workdir,
                             every_checkpoint=FLAGS.every_checkpoint))


if __name__ == "__main__":
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("init", None, "An official .npz, a release name or a train.py workdir.")
  flags.DEFINE_string("workdir", None, "Where results.json, results.md and curves/ go.")
  flags.DEFINE_bool("every_checkpoint", False, "Evaluate every checkpoint of the --init "
                    "workdir (skipping those in results.json), not only the latest.")
  config_flags.DEFINE_config_file("config", None, "configs/evaluate.py[:suite=...].",
                                  lock_config=True)
  flags.mark_flags_as_required(["config", "init", "workdir"])
  entry.prepare()
  entry.check_config_overrides(sys.argv)
  app.run(main)
