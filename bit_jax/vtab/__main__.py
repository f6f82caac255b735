"""VTAB-1k command line.

    python -m bit_jax.vtab list [--json] [TASK_OR_GROUP ...]
    python -m bit_jax.vtab report --results results.json --out_dir DIR [--compare Sup-100% ...]

One subcommand per job: each is a parser in `parser()` plus a function taking the parsed args.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from bit_jax import entry
from bit_jax.errors import UserError
from bit_jax.vtab import registry, report


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

  # `run` (fine-tune and evaluate the selected tasks) goes here the same way: its parser, and
  # set_defaults(job=...) with a function of the parsed args.
  return p


def main(argv: Sequence[str] | None = None) -> None:
  args = parser().parse_args(argv)
  entry.run(lambda: args.job(args))


if __name__ == "__main__":
  entry.prepare()
  main(sys.argv[1:])
