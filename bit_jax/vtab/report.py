"""VTAB-1k results beside published numbers: `report.md`, `report.csv` and `report.png`.

Units: `results` come in as top-1 fractions in [0, 1], as the evaluators return them; every
number written out is top-1 in percent (0-100), the unit of the published table.

    write_report({"cifar100": [0.871, 0.868], "dmlab": 0.512, ...}, "workdir/vtab")

Rows are the 19 tasks, the natural / specialized / structured means and the 19-task mean (the
VTAB score: a mean over tasks, not over groups). A task missing from `results` (or None: a
failed task) shows as "—" and is left out of the means, which then say over how many tasks.

Every column names its protocol (bit_jax/vtab/protocols.py) in a `protocol` row above the
numbers: ours as the run recorded it, the VTAB study's rows from their metadata columns (all
`vtab_lightweight`), the BiT means `hyperrule`. Results of different protocols are refused in
one column; side by side, the notes say the protocols differ.
"""

from __future__ import annotations

import csv
import math
import pathlib
from typing import Mapping, Sequence, Union

import numpy as np

from bit_jax.errors import UserError
from bit_jax.vtab import protocols, registry

# VTAB's released per-task table (Zhai et al. 2019), copied from shared/reference: one row per
# method; the columns whose first header row says "1000" are VTAB-1k, in percent.
PUBLISHED_CSV = pathlib.Path(__file__).with_name("published_results.csv")
PUBLISHED_COLUMNS = {
    "Caltech101": "caltech101", "CIFAR-100": "cifar100", "DTD": "dtd",
    "Flowers102": "oxford_flowers102", "Pets": "oxford_iiit_pet", "SVHN": "svhn",
    "Sun397": "sun397", "Camelyon": "patch_camelyon", "EuroSAT": "eurosat",
    "Resisc45": "resisc45", "Retinopathy": "diabetic_retinopathy", "Clevr-Count": "clevr_count",
    "Clevr-Dist": "clevr_distance", "DMLab": "dmlab", "KITTI-Dist": "kitti_distance",
    "dSpr-Loc": "dsprites_location", "dSpr-Orient": "dsprites_orientation",
    "sNORB-Azim": "smallnorb_azimuth", "sNORB-Elev": "smallnorb_elevation",
}
DEFAULT_COMPARE = ("Sup-100%", "From-Scratch")
# Headline VTAB-1k 19-task means, in percent, from the BiT paper (Kolesnikov et al. 2019); it
# gives no per-task table, so these fill only the 19-task mean row.
BIT_MEANS = {"BiT-L": 76.3, "BiT-M": 70.6, "BiT-S": 66.9}
BIT_PROTOCOL = "hyperrule"  # BiT paper, Section 3.3 and Table 2: no sweep on VTAB-1k.
MEAN_ROW = "mean (19 tasks)"
PROTOCOL_ROW = "protocol"

Result = Union[float, Sequence[float], None]


def load_published(path: str | pathlib.Path = PUBLISHED_CSV) -> dict[str, dict[str, float]]:
  """{method: {task name: VTAB-1k top-1 in percent}} from the published table."""
  with open(path, newline="") as f:
    rows = list(csv.reader(f))
  subset, columns = rows[0], rows[1]
  tasks = {i: PUBLISHED_COLUMNS[name] for i, name in enumerate(columns)
           if subset[i] == "1000"}
  return {row[0]: {task: float(row[i]) for i, task in tasks.items()}
          for row in rows[3:] if row and row[0]}


def published_protocols(path: str | pathlib.Path = PUBLISHED_CSV) -> dict[str, str]:
  """{method: the protocol its row ran}, read off the table's metadata columns
  (`hyper_sweep_size`, `preprocessing`) by `protocols.published_protocol`."""
  with open(path, newline="") as f:
    rows = list(csv.reader(f))
  subset, columns = rows[0], rows[1]
  meta = {i: name for i, name in enumerate(columns) if subset[i] == "metadata"}
  return {row[0]: protocols.published_protocol({name: row[i] for i, name in meta.items()})
          for row in rows[3:] if row and row[0]}


def our_protocol(results: Mapping[str, Result], protocol: str | Mapping[str, str]) -> str:
  """The one protocol of `results`' column: `protocol`, or the one protocol `protocol`
  ({task: protocol}) gives every task with a result. Two or more: a one-line UserError."""
  if isinstance(protocol, str):
    label = protocol
  else:
    by_protocol = {}
    for task, result in results.items():
      if result is not None:
        by_protocol.setdefault(protocol.get(task, "unnamed"), []).append(task)
    if len(by_protocol) > 1:
      mixed = "; ".join(f"{name} ({', '.join(tasks)})" for name, tasks in by_protocol.items())
      raise UserError(f"results of different protocols cannot share one column: {mixed}; "
                      "report each protocol's results on their own")
    label = next(iter(by_protocol), None) or next(iter(protocol.values()), "unnamed")
  protocols.check(label.split(",")[0])  # "vtab_lightweight, modified: ..." names one too.
  return label


def _percent(task: str, result: Result) -> list[float]:
  """Per-seed top-1 in percent; [] for a missing task."""
  values = [] if result is None else [result] if np.isscalar(result) else list(result)
  for value in values:
    numeric = isinstance(value, (int, float, np.number)) and not isinstance(value, bool)
    if not (numeric and 0.0 <= value <= 1.0):
      raise UserError(f"top-1 for {task} must be a fraction in [0, 1], got {value!r} "
                      f"(the report converts to percent)")
  return [100.0 * float(v) for v in values]


def _mean(values: Sequence[float]) -> float | None:
  return float(np.mean(values)) if len(values) else None


def _std(values: Sequence[float]) -> float | None:
  if not values:
    return None
  return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def _num_tasks(group: str) -> int:
  """Tasks a mean row of `group` ("all" for the 19-task mean) averages when none is missing."""
  return len(registry.TASKS) if group == "all" else len(registry.group(group))


def table(results: Mapping[str, Result], method_name: str = "ours",
          compare: Sequence[str] = DEFAULT_COMPARE, *,
          protocol: str | Mapping[str, str]) -> tuple[list[str], list[dict]]:
  """(columns, rows): the protocol row, one row per task, the group means, the 19-task mean.

  The first row (task `protocol`) names each value column's protocol: `protocol` for ours
  (one name, or {task: name}, which must agree; see `our_protocol`). Every other row has
  every column; values are percent or None. `{method_name}_std` is the std over seeds
  (ddof=1; 0 for one seed) and `{method_name}_n` the number of seeds, or of tasks in a mean
  row.
  """
  for name in results:
    registry.get(name)  # A typo would otherwise silently show as a missing task.
  ours_protocol = our_protocol(results, protocol)
  published = load_published()
  for method in compare:
    if method not in published:
      raise UserError(f"unknown published method {method!r}; valid methods: "
                      f"{', '.join(published)}")
  if method_name in (*compare, *BIT_MEANS):
    raise UserError(f"method name {method_name!r} is taken by a published method; pick another")

  std, n = f"{method_name}_std", f"{method_name}_n"
  columns = ["task", "group", method_name, std, n, *compare, *BIT_MEANS]
  published_protocol = published_protocols()
  protocol_row = {"task": PROTOCOL_ROW, method_name: ours_protocol,
                  **{m: published_protocol[m] for m in compare},
                  **{m: BIT_PROTOCOL for m in BIT_MEANS}}

  task_rows = []
  for task in registry.TASKS:
    values = _percent(task.name, results.get(task.name))
    task_rows.append({"task": task.name, "group": task.group, method_name: _mean(values),
                      std: _std(values), n: len(values),
                      **{m: published[m][task.name] for m in compare}})
  means = [(f"{g} mean", g, [r for r in task_rows if r["group"] == g]) for g in registry.GROUPS]
  means.append((MEAN_ROW, "all", task_rows))
  mean_rows = []
  for label, group, members in means:
    ours = [r[method_name] for r in members if r[method_name] is not None]
    mean_rows.append({"task": label, "group": group, method_name: _mean(ours), std: None,
                      n: len(ours), **{m: _mean([r[m] for r in members]) for m in compare},
                      **(BIT_MEANS if group == "all" else {})})
  return columns, [{c: row.get(c) for c in columns}
                   for row in [protocol_row, *task_rows, *mean_rows]]


def _cell(value: float | None) -> str:
  return "—" if value is None else f"{value:.1f}"


def _markdown(columns: list[str], rows: list[dict], method_name: str,
              missing: list[str]) -> str:
  std, n = f"{method_name}_std", f"{method_name}_n"
  published = [c for c in columns if c not in ("task", "group", method_name, std, n)]
  header = ["task", "group", method_name, "n", *published]
  protocol_row, *rows = rows
  ours_protocol = protocol_row[method_name]
  name, modified = ours_protocol.split(", modified: ", 1) if ", modified: " in ours_protocol \
      else (ours_protocol, "")
  lines = ["# VTAB-1k top-1 accuracy (%)", "",
           "| " + " | ".join(header) + " |", "|" + "---|" * len(header),
           "| " + " | ".join([PROTOCOL_ROW, "", name + ("*" if modified else ""), "",
                               *(protocol_row[c] for c in published)]) + " |"]
  for row in rows:
    ours = _cell(row[method_name])
    if row[std]:
      ours += f" ± {row[std]:.1f}"
    is_task = row["task"] in registry.names()
    n_cell = str(row[n]) if is_task else f"{row[n]}/{_num_tasks(row['group'])}"
    cells = [row["task"], row["group"], ours, n_cell, *(_cell(row[c]) for c in published)]
    lines.append("| " + " | ".join(cells) + " |")
  lines += ["", f"- `{method_name}`: mean over seeds ± std (ddof=1); `n`: seeds, or tasks in a "
            "mean row. Means are over tasks (the 19-task mean is the VTAB score).",
            f"- `{PROTOCOL_ROW}` row: what each column ran (bit_jax/vtab/protocols.py): " +
            "; ".join(f"`{key}` = {value}" for key, value in protocols.PROTOCOLS.items()
                      if key in {name, *(protocol_row[c] for c in published)}) + "."]
  if modified:
    lines.append(f"- `{method_name}`: {name} with settings changed from the published ones "
                 f"(*): {modified}. Not comparable with published {name} numbers.")
  other = sorted({protocol_row[c] for c in published} - {name})
  if other:
    lines.append(f"- `{method_name}` ran {name}; columns of {', '.join(other)} ran another "
                 "protocol: side by side, a difference mixes representation and protocol.")
  lines += ["- Published columns: VTAB-1k per-task table released with Zhai et al. 2019, "
            "\"A Large-scale Study of Representation Learning with the Visual Task Adaptation "
            "Benchmark\", all by its lightweight sweep (metadata: hyper_sweep_size 4, "
            "resize(224)) (its paper text quotes 19-task means 65.6 for Sup-100% and 42.1 for "
            "From-Scratch; the released table gives the means above).",
            "- BiT-L / BiT-M / BiT-S: 19-task means from Kolesnikov et al. 2019, \"Big Transfer "
            "(BiT)\", by the BiT-HyperRule (BiT-L 78.72 with 50 hyper-parameter settings per "
            "task, not shown); no per-task numbers."]
  if missing:
    lines.append(f"- Missing (not run or failed), shown as — and left out of `{method_name}`'s "
                 f"means, which cover fewer tasks than the published ones: {', '.join(missing)}.")
  return "\n".join(lines) + "\n"


def _csv(path: pathlib.Path, columns: list[str], rows: list[dict]) -> None:
  with open(path, "w", newline="", encoding="utf-8") as f:
    writer = csv.writer(f)
    writer.writerow(columns)
    for row in rows:
      writer.writerow(["" if row[c] is None else
                       f"{row[c]:.4f}" if isinstance(row[c], float) else row[c]
                       for c in columns])


def _plot(path: pathlib.Path, rows: list[dict], method_name: str,
          compare: Sequence[str]) -> None:
  import matplotlib
  matplotlib.use("Agg")  # Files only: no display on a training host.
  import matplotlib.pyplot as plt

  protocol_row, *rows = rows
  series = [method_name, *compare]
  x = np.arange(len(rows))
  width = 0.8 / len(series)
  fig, ax = plt.subplots(figsize=(14, 5))
  for i, name in enumerate(series):
    heights = [math.nan if r[name] is None else r[name] for r in rows]
    protocol = protocol_row[name].split(",")[0]
    ax.bar(x - 0.4 + (i + 0.5) * width, heights, width, label=f"{name} ({protocol})")
  for i, (name, bit) in enumerate(BIT_MEANS.items()):  # Over the 19-task mean's bars.
    ax.hlines(bit, x[-1] - 0.45, x[-1] + 0.45, colors=f"C{len(series) + i}",
              linestyles="dashed", label=f"{name} (paper, {BIT_PROTOCOL})")
  ax.axvline(len(registry.TASKS) - 0.5, color="grey", linewidth=0.8)
  ax.set_xticks(x, [r["task"] for r in rows], rotation=60, ha="right", fontsize=8)
  ax.set_ylabel("top-1 (%)")
  ax.set_ylim(0, 100)
  ax.set_title("VTAB-1k")
  ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # Clear of the bars.
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def write_report(results: Mapping[str, Result], out_dir: str | pathlib.Path,
                 method_name: str = "ours", compare: Sequence[str] = DEFAULT_COMPARE, *,
                 protocol: str | Mapping[str, str]) -> dict[str, pathlib.Path]:
  """Writes report.md, report.csv and report.png into `out_dir`; returns their paths.

  `results`: task name -> top-1 fraction, or a list of per-seed fractions, or None (failed).
  `compare`: published methods (rows of the published table) to show beside ours.
  `protocol`: the protocol `results` ran (a `protocols.PROTOCOLS` name, or `protocols.label`
  of the run's settings), or {task: that}; different protocols are refused.
  """
  columns, rows = table(results, method_name, compare, protocol=protocol)
  missing = [r["task"] for r in rows[1:len(registry.TASKS) + 1] if r[method_name] is None]
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  paths = {kind: out / f"report.{kind}" for kind in ("md", "csv", "png")}
  paths["md"].write_text(_markdown(columns, rows, method_name, missing), encoding="utf-8")
  _csv(paths["csv"], columns, rows)
  _plot(paths["png"], rows, method_name, compare)
  return paths
