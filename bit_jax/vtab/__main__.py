"""VTAB-1k command line.

    python -m bit_jax.vtab list [--json] [TASK_OR_GROUP ...]
    python -m bit_jax.vtab report --results results.json --out_dir DIR [--protocol NAME]
        [--compare Sup-100% ...]
    python -m bit_jax.vtab run --config=configs/vtab.py[:ARGS] --workdir=DIR \
        [--config.FIELD=VALUE ...]

e.g. `run --config=configs/vtab.py:model=BiT-M-R50x1,init=BiT-M-R50x1.npz,tasks=natural
--config.seeds=0,1,2 --workdir=DIR`. `list` and `report` are each a parser in `parser()` plus
a function taking the parsed args. `run` is configured like train.py and transfer.py: absl
flags, `--workdir` and an ml_collections config file whose fields `--config.FIELD=VALUE` set
(configs/vtab.py lists them), then one library call, `bit_jax.vtab.run.run(config, workdir)`.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from typing import Sequence

import ml_collections
from absl import flags, logging
from ml_collections import config_flags

from bit_jax import entry, run_settings
from bit_jax.errors import UserError
from bit_jax.vtab import protocols, registry, report
from bit_jax.vtab import run as vtab_run

RUN_USAGE = ("python -m bit_jax.vtab run --config=configs/vtab.py[:ARGS] --workdir=DIR "
             "[--config.FIELD=VALUE ...]")
# Tuple fields, set as `--config.seeds=0,1,2`: (item type, example). ml_collections keeps an
# item it cannot read as a literal as a string (`--config.seeds=one` gives ('one',)).
NUMBER_TUPLES = {"seeds": (int, "0,1,2"), "resolution": (int, "448,384"),
                 "sweep_lrs": (float, "0.01,0.1"), "sweep_steps": (int, "2500,10000"),
                 "lightweight_lrs": (float, "0.1,0.01"),
                 "lightweight_steps": (int, "2500,10000")}


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
  paths = report.write_report(results, args.out_dir, args.method_name, args.compare,
                              protocol=results_protocol(args.results, args.protocol))
  print("\n".join(str(p) for p in paths.values()))


def results_protocol(results_path: str, given: str | None) -> str:
  """The protocol of a results file: what `run` recorded in the settings.json beside it (with
  any departure from the published settings), or `--protocol`; they must agree."""
  settings_path = pathlib.Path(results_path).with_name(run_settings.SETTINGS_NAME)
  try:
    settings = json.loads(settings_path.read_text(encoding="utf-8"))
    recorded = protocols.label(settings)
  except FileNotFoundError:
    recorded = None
  except (ValueError, TypeError, KeyError, AttributeError) as e:
    raise UserError(f"cannot read the protocol from {settings_path}: {e!r}; move it aside and "
                    "give --protocol") from None
  if given is not None:
    protocols.check(given)
    if recorded is not None and recorded.split(",")[0] != given:
      raise UserError(f"--protocol {given} but {settings_path} records {recorded!r}: the "
                      "results ran that protocol")
  if recorded is None and given is None:
    raise UserError(f"which protocol did {results_path} run? No {run_settings.SETTINGS_NAME} "
                    f"beside it; give --protocol ({', '.join(protocols.PROTOCOLS)})")
  return recorded or given


def run_tasks(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Runs what is not finished; prints where results.json and the report are; exit 1 names
  the tasks that failed."""
  outcome = vtab_run.run(config, workdir)
  print(outcome.results_path)
  print(outcome.report_paths["md"])
  if outcome.failed:
    print(f"error: {len(outcome.failed)} VTAB task(s) failed: {', '.join(outcome.failed)} "
          f"(tracebacks in {workdir}/runs/TASK/{vtab_run.ERROR_NAME}); rerun to retry them",
          file=sys.stderr)
    sys.exit(entry.EXIT_FAILED)


def run_command(argv: Sequence[str]) -> None:
  parsed = run_flags(argv)
  if parsed is not None:  # None: it printed the help.
    run_tasks(*parsed)


def run_flags(argv: Sequence[str]) -> tuple[ml_collections.ConfigDict, str] | None:
  """`run`'s arguments -> (config, workdir), parsed as train.py's absl flags are; None after
  printing the help for `--help`.

  The flags live in their own FlagValues, not absl's global FLAGS, so each call parses afresh
  and `main` can run more than once in a process (tests, a notebook).
  """
  argv = ["python -m bit_jax.vtab run", *argv]
  if "--config" in argv[:-1]:  # `--config FILE` as `--config=FILE`, the form entry checks.
    at = argv.index("--config")
    argv[at:at + 2] = [f"--config={argv[at + 1]}"]
  entry.check_config_overrides(argv)  # An unknown --config.KEY or variant: one line, exit 2.
  flag_values = flags.FlagValues()
  flags.DEFINE_string("workdir", None, "Where results go; rerunning skips what is finished.",
                      flag_values=flag_values)
  config_flags.DEFINE_config_file("config", None, "configs/vtab.py[:ARGS]",
                                  flag_values=flag_values, lock_config=True, sys_argv=argv)
  flags.mark_flag_as_required("config", flag_values=flag_values)
  flags.register_validator("workdir", bool, "give the directory results go to, --workdir=DIR",
                           flag_values=flag_values)  # Missing or empty: not the cwd.
  if {"-h", "--help", "--helpshort", "--helpfull"} & set(argv):
    print(f"usage: {RUN_USAGE}\n\nThe config's fields and variants: configs/vtab.py.\n\n"
          f"{flag_values.get_help().lstrip()}")
    return None
  try:
    extra = flag_values(argv)[1:]
  except flags.Error as e:  # E.g. a missing --workdir, an old-style --seeds=0, a bad value.
    raise UserError(f"{str(e).rstrip('.')}; usage: {RUN_USAGE}") from None
  if extra:
    raise UserError(f"unexpected arguments {' '.join(extra)}; usage: {RUN_USAGE}")
  check_number_tuples(flag_values.config)
  return flag_values.config, flag_values.workdir


def check_number_tuples(config: ml_collections.ConfigDict) -> None:
  """The tuple fields hold numbers of the right kind, resolution two of them."""
  for field, (kind, example) in NUMBER_TUPLES.items():
    values = config[field]
    if not all(isinstance(v, (int, float) if kind is float else int) and
               not isinstance(v, bool) for v in values):
      raise UserError(f"--config.{field} takes comma-separated {kind.__name__}s, e.g. "
                      f"--config.{field}={example}; got {','.join(map(str, values))}")
  if config.resolution and len(config.resolution) != 2:
    raise UserError(f"--config.resolution takes RESIZE,CROP, e.g. --config.resolution=448,384; "
                    f"got {','.join(map(str, config.resolution))}")


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
  reporting.add_argument("--protocol", default=None,
                         help=f"what the results ran ({', '.join(protocols.PROTOCOLS)}); "
                              f"default: from the {run_settings.SETTINGS_NAME} beside --results")
  reporting.add_argument("--compare", nargs="*", default=list(report.DEFAULT_COMPARE),
                         help="published methods (rows of published_results.csv)")
  reporting.set_defaults(job=write_report)

  # `main` hands `run` to `run_command` before this parser sees it; listed for --help.
  commands.add_parser("run", add_help=False,
                      help="fine-tune and evaluate tasks; resumable; writes results.json and "
                           f"the report: {RUN_USAGE}")
  return p


def main(argv: Sequence[str] | None = None) -> None:
  argv = list(sys.argv[1:] if argv is None else argv)
  if argv[:1] == ["run"]:
    entry.run(lambda: run_command(argv[1:]))
    return
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
