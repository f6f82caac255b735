"""VTAB-1k command line.

    python -m bit_jax.vtab list [--json] [TASK_OR_GROUP ...]
    python -m bit_jax.vtab report --results results.json --out_dir DIR [--compare Sup-100% ...]
    python -m bit_jax.vtab run --model=BiT-M-R50x1 --init=BiT-M-R50x1.npz --workdir=DIR \
        [--tasks=all|natural|cifar100,dtd] [--protocol=hyperrule|sweep] [--seeds=0,1,2] ...

One subcommand per job: each is a parser in `parser()` plus a function taking the parsed args.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from absl import logging

from bit_jax import entry
from bit_jax.errors import UserError
from bit_jax.vtab import registry, report
from bit_jax.vtab import run as vtab_run
from configs import vtab as vtab_config


def list_tasks(args: argparse.Namespace) -> None:
  tasks = registry.select(args.names)
  if args.json:
    print(json.dumps([registry.as_json(task) for task in tasks], indent=2))
    return
  for task in tasks:
    print(f"{task.name:22} {task.group:12} {task.tfds:52} {task.num_classes:4d} classes")
    print(f"    label: {task.label}")
    print("    " + "  ".join(f"{key}={task.splits[key]}" for key in registry.SPLIT_KEYS))
    print(f"    source: task_adaptation/data/{task.source}")
    if task.note:
      print(f"    note: {task.note}")


def write_report(args: argparse.Namespace) -> None:
  try:
    with open(args.results) as f:
      results = json.load(f)
  except (OSError, ValueError) as e:
    raise UserError(f"cannot read --results {args.results}: {e}; expected a JSON object "
                    "{task: top-1 fraction or [per-seed fractions] or null}") from None
  if not isinstance(results, dict):
    raise UserError(f"--results {args.results} must hold a JSON object {{task: top-1}}")
  paths = report.write_report(results, args.out_dir, args.method_name, args.compare)
  print("\n".join(str(p) for p in paths.values()))


def run_tasks(args: argparse.Namespace) -> None:
  outcome = vtab_run.run(run_config(args), args.workdir)
  print(outcome.results_path)
  print(outcome.report_paths["md"])
  if outcome.failed:
    print(f"error: {len(outcome.failed)} VTAB task(s) failed: {', '.join(outcome.failed)} "
          f"(tracebacks in {args.workdir}/runs/TASK/{vtab_run.ERROR_NAME}); rerun to retry them",
          file=sys.stderr)
    sys.exit(entry.EXIT_FAILED)


def run_config(args: argparse.Namespace):
  """configs/vtab.py with the fields the flags set."""
  config = vtab_config.get_config()
  config.update(model=args.model, init=args.init, tasks=args.tasks, protocol=args.protocol,
                data_dir=args.tfds_data_dir, seeds=_numbers(args.seeds, "--seeds"))
  if args.resolution:
    config.resolution = _resolution(args.resolution)
  if args.sweep_lrs:
    config.sweep_lrs = _numbers(args.sweep_lrs, "--sweep_lrs", float)
  if args.sweep_steps:
    config.sweep_steps = _numbers(args.sweep_steps, "--sweep_steps")
  for field in ("total_steps", "batch_size", "eval_batch_size", "accum_steps", "remat",
                "dtype"):
    if getattr(args, field) is not None:
      config[field] = getattr(args, field)
  return config


def _numbers(text: str, flag: str, kind=int) -> tuple:
  """`0,1,2` -> (0, 1, 2); anything else fails with one line."""
  try:
    return tuple(kind(item) for item in text.split(",") if item.strip())
  except ValueError:
    raise UserError(f"{flag} takes comma-separated {kind.__name__}s, e.g. "
                    f"{flag}={'0,1,2' if kind is int else '0.01,0.1'}; got {text!r}") from None


def _resolution(text: str) -> tuple[int, int]:
  values = _numbers(text, "--resolution")
  if len(values) != 2:
    raise UserError(f"--resolution takes RESIZE,CROP, e.g. 448,384; got {text!r}")
  return values


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m bit_jax.vtab", description="VTAB-1k tasks.")
  commands = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

  listing = commands.add_parser("list", help="the task registry")
  listing.add_argument("names", nargs="*", metavar="TASK_OR_GROUP",
                       help=f"tasks or groups ({', '.join(registry.GROUPS)}); default all 19")
  listing.add_argument("--json", action="store_true",
                       help="a JSON list of {name, group, tfds, num_classes, splits}")
  listing.set_defaults(job=list_tasks)

  reporting = commands.add_parser("report", help="Markdown, CSV and PNG beside published numbers")
  reporting.add_argument("--results", required=True,
                         help="JSON {task: top-1 fraction in [0, 1], or a list per seed, or null}")
  reporting.add_argument("--out_dir", required=True)
  reporting.add_argument("--method_name", default="ours")
  reporting.add_argument("--compare", nargs="*", default=list(report.DEFAULT_COMPARE),
                         help="published methods (rows of published_results.csv)")
  reporting.set_defaults(job=write_report)

  running = commands.add_parser(
      "run", help="fine-tune and evaluate tasks; resumable; writes results.json and the report")
  running.add_argument("--model", required=True, help="release name, e.g. BiT-M-R50x1")
  running.add_argument("--init", required=True,
                       help="official .npz or a train.py workdir; '' fine-tunes from scratch")
  running.add_argument("--workdir", required=True,
                       help="where results go; rerunning skips what is finished there")
  running.add_argument("--tasks", default="all",
                       help=f"all, a group ({', '.join(registry.GROUPS)}) or task names, "
                            "comma-separated")
  running.add_argument("--protocol", default="hyperrule",
                       help=f"{' or '.join(vtab_run.PROTOCOLS)}: one BiT-HyperRule run on "
                            "train800val200, or the lr x steps sweep chosen on val200")
  running.add_argument("--tfds_data_dir", default=None, help="TFDS data_dir of the datasets")
  running.add_argument("--seeds", default="0", help="comma-separated, e.g. 0,1,2")
  running.add_argument("--resolution", default="",
                       help="RESIZE,CROP for every task; default: the HyperRule's per task")
  running.add_argument("--total_steps", type=int, help="hyperrule: rescale its 500 steps")
  running.add_argument("--batch_size", type=int)
  running.add_argument("--eval_batch_size", type=int)
  running.add_argument("--accum_steps", type=int, help="micro-batches per step; same result")
  running.add_argument("--remat", action="store_true", default=None,
                       help="recompute each unit in the backward pass: less memory")
  running.add_argument("--dtype", help="float32 or bfloat16 compute")
  running.add_argument("--sweep_lrs", default="", help="sweep: e.g. 0.01,0.1")
  running.add_argument("--sweep_steps", default="", help="sweep: e.g. 2500,10000")
  running.set_defaults(job=run_tasks)
  return p


def main(argv: Sequence[str] | None = None) -> None:
  args = parser().parse_args(argv)
  entry.run(lambda: args.job(args))


def show_progress() -> None:
  """`run`'s progress and failures on stderr, as absl.app would log them."""
  logging.use_absl_handler()
  logging.set_verbosity(logging.INFO)


if __name__ == "__main__":
  entry.prepare()
  show_progress()
  main(sys.argv[1:])
