"""`python -m bit_jax.vtab`: list and report, in process and once as a real command."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from bit_jax.vtab import __main__ as cli
from bit_jax.vtab import registry


def run_cli(capsys, *argv):
  cli.main(list(argv))
  return capsys.readouterr().out


def test_list_json_is_the_registry(capsys):
  records = json.loads(run_cli(capsys, "list", "--json"))
  assert records == [registry.as_json(task) for task in registry.TASKS]
  assert records[0]["splits"]["val200"] == "train[2754:2954]"  # caltech101's tail of train.


def test_list_json_of_a_group_and_a_task(capsys):
  records = json.loads(run_cli(capsys, "list", "--json", "specialized", "dmlab"))
  assert [r["name"] for r in records] == ["patch_camelyon", "eurosat", "resisc45",
                                          "diabetic_retinopathy", "dmlab"]


def test_list_text_shows_splits_sources_and_notes(capsys):
  out = run_cli(capsys, "list", "kitti_distance")
  assert "kitti:3.1.0" in out and "train800val200=train[:800]+validation[:200]" in out
  assert "task_adaptation/data/kitti.py" in out and "note:" in out


def test_unknown_name_exits_with_one_line(capsys):
  with pytest.raises(SystemExit) as exit_:
    cli.main(["list", "--json", "cifar10"])
  err = capsys.readouterr().err.strip()
  assert exit_.value.code == 2 and "\n" not in err
  assert "unknown VTAB task or group 'cifar10'" in err and "cifar100" in err


def test_report_writes_three_files(tmp_path, capsys):
  results = tmp_path / "results.json"
  results.write_text(json.dumps({"cifar100": [0.5, 0.6], "dmlab": 0.4, "svhn": None}))
  out = run_cli(capsys, "report", "--results", str(results), "--out_dir", str(tmp_path / "r"),
                "--compare", "Sup-100%")
  assert out.split() == [str(tmp_path / "r" / f"report.{k}") for k in ("md", "csv", "png")]
  md = (tmp_path / "r" / "report.md").read_text(encoding="utf-8")
  assert "| cifar100 | natural | 55.0 ± 7.1 | 2 | 57.0 |" in md


def test_report_bad_results_file_exits_with_one_line(tmp_path, capsys):
  results = tmp_path / "results.json"
  results.write_text("{not json")
  with pytest.raises(SystemExit) as exit_:
    cli.main(["report", "--results", str(results), "--out_dir", str(tmp_path)])
  err = capsys.readouterr().err.strip()
  assert exit_.value.code == 2 and "\n" not in err and "cannot read --results" in err


def test_module_command_prints_the_json_registry():
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
  done = subprocess.run([sys.executable, "-m", "bit_jax.vtab", "list", "--json"],
                        capture_output=True, text=True, env=env, timeout=120, check=False,
                        cwd=pathlib.Path(__file__).parents[2])  # The repository root.
  assert done.returncode == 0, done.stderr[-2000:]
  records = json.loads(done.stdout)
  assert len(records) == 19
  assert all(set(r) == {"name", "group", "tfds", "num_classes", "splits"} for r in records)
