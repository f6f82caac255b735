"""`python -m bit_jax.vtab`: list, report and run's command line, in process and as a real
command.

`run`'s tests stop at `bit_jax.vtab.run.run`, which a fake stands in for: they check what
config and workdir the command line gives it (tests/vtab/test_run.py runs it for real).
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from bit_jax.vtab import __main__ as cli
from bit_jax.vtab import registry
from bit_jax.vtab import run as vtab_run
from configs import vtab as vtab_config

ROOT = pathlib.Path(__file__).parents[2]
CONFIG = ROOT / "configs" / "vtab.py"


def run_cli(capsys, *argv):
  cli.main(list(argv))
  return capsys.readouterr().out


def test_list_json_is_the_registry(capsys):
  records = json.loads(run_cli(capsys, "list", "--json"))
  assert records == [registry.as_json(task) for task in registry.TASKS]
  for record in records:  # What scripts read: these keys stay.
    assert set(record) == {"name", "group", "tfds", "num_classes", "splits"}
    assert set(record["splits"]) == {"train800", "val200", "train800val200", "test"}
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
                "--compare", "Sup-100%", "--protocol", "vtab_lightweight")
  assert out.split() == [str(tmp_path / "r" / f"report.{k}") for k in ("md", "csv", "png")]
  md = (tmp_path / "r" / "report.md").read_text(encoding="utf-8")
  assert "| cifar100 | natural | 55.0 ± 7.1 | 2 | 57.0 |" in md
  assert "| protocol |  | vtab_lightweight |  | vtab_lightweight | hyperrule |" in md


def test_report_reads_the_protocol_from_the_runs_settings(tmp_path, capsys):
  results = tmp_path / "results.json"
  results.write_text(json.dumps({"cifar100": [0.5]}))
  (tmp_path / "settings.json").write_text(json.dumps(
      {"protocol": "vtab_lightweight", "lightweight_steps": [2, 4], "batch_size": 512}))
  run_cli(capsys, "report", "--results", str(results), "--out_dir", str(tmp_path / "r"))
  md = (tmp_path / "r" / "report.md").read_text(encoding="utf-8")
  assert "| protocol |  | vtab_lightweight* |" in md
  assert "lightweight_steps 2,4 (published 2500,10000)" in md


@pytest.mark.parametrize("settings,flags,message", [
    (None, [], "which protocol did {results} run? No settings.json beside it; give --protocol "
               "(hyperrule, vtab_lightweight, hyperrule_sweep)"),
    (None, ["--protocol", "sweep"], "protocol 'sweep' is now 'hyperrule_sweep'"),
    (None, ["--protocol", "vtab"], "unknown protocol 'vtab'; valid: hyperrule, vtab_lightweight"),
    ({"protocol": "hyperrule"}, ["--protocol", "vtab_lightweight"],
     "--protocol vtab_lightweight but {settings} records 'hyperrule'"),
])
def test_report_without_one_known_protocol_exits_with_one_line(settings, flags, message,
                                                               tmp_path, capsys):
  results = tmp_path / "results.json"
  results.write_text(json.dumps({"cifar100": 0.5}))
  if settings is not None:
    (tmp_path / "settings.json").write_text(json.dumps(settings))
  with pytest.raises(SystemExit) as exit_:
    cli.main(["report", "--results", str(results), "--out_dir", str(tmp_path / "r"), *flags])
  err = capsys.readouterr().err.strip()
  assert exit_.value.code == 2 and "\n" not in err
  assert err.startswith("error: " + message.format(results=results,
                                                  settings=tmp_path / "settings.json")), err
  assert not (tmp_path / "r").exists()


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
                        cwd=ROOT)
  assert done.returncode == 0, done.stderr[-2000:]
  records = json.loads(done.stdout)
  assert len(records) == 19
  assert all(set(r) == {"name", "group", "tfds", "num_classes", "splits"} for r in records)


# --- run: --config=configs/vtab.py[:ARGS] --workdir=DIR [--config.FIELD=VALUE ...] -------------

@pytest.fixture
def fake_run(monkeypatch):
  """Stands in for `vtab.run.run`: `calls` gets each (config, workdir); `failed` sets the
  outcome's failed tasks. Bad input is checked as the real one checks it, first."""

  class Fake:
    def __init__(self):
      self.calls, self.failed = [], ()

    def __call__(self, config, workdir):
      vtab_run.select_tasks(config.tasks)
      vtab_run.check_config(config)
      self.calls.append((config, workdir))
      workdir = pathlib.Path(workdir)
      return vtab_run.Outcome({}, self.failed, workdir / vtab_run.RESULTS_NAME,
                              {"md": workdir / "report" / "report.md"})

  fake = Fake()
  monkeypatch.setattr(vtab_run, "run", fake)
  return fake


def test_run_config_variants_and_overrides_reach_the_config(fake_run, tmp_path, capsys):
  out = run_cli(capsys, "run",
                f"--config={CONFIG}:model=BiT-S-R50x1,init=x.npz,tasks=natural,"
                "protocol=hyperrule_sweep",
                f"--workdir={tmp_path}", "--config.seeds=0,1", "--config.resolution=448,384",
                "--config.sweep_lrs=0.03", "--config.sweep_steps=100,200",
                "--config.data_dir=/data/tfds", "--config.remat", "--config.accum_steps=4",
                "--config.dtype=bfloat16")
  [(config, workdir)] = fake_run.calls
  assert workdir == str(tmp_path)
  assert (config.model, config.init, config.tasks, config.protocol) == (
      "BiT-S-R50x1", "x.npz", "natural", "hyperrule_sweep")
  assert (config.seeds, config.resolution, config.sweep_lrs, config.sweep_steps) == (
      (0, 1), (448, 384), (0.03,), (100, 200))
  assert (config.data_dir, config.remat, config.accum_steps, config.dtype) == (
      "/data/tfds", True, 4, "bfloat16")
  assert out.split() == [str(tmp_path / "results.json"), str(tmp_path / "report" / "report.md")]


def test_run_without_overrides_is_configs_vtab_py(fake_run, capsys):
  run_cli(capsys, "run", f"--config={CONFIG}", "--workdir=w", "--config.init=")
  [(config, _)] = fake_run.calls
  assert config.to_dict() == vtab_config.get_config().to_dict()
  assert (config.tasks, config.protocol, config.seeds, config.data_dir) == (
      "all", "hyperrule", (0,), None)
  assert config.is_locked  # A typo in code that sets a field fails too.


def test_run_names_failed_tasks_and_exits_1(fake_run, tmp_path, capsys):
  fake_run.failed = ("dtd", "svhn")
  with pytest.raises(SystemExit) as exit_:
    cli.main(["run", f"--config={CONFIG}:tasks=natural", f"--workdir={tmp_path}"])
  out, err = capsys.readouterr()
  assert exit_.value.code == 1
  assert out.split()[0] == str(tmp_path / "results.json")  # Results are still written.
  assert err.strip().splitlines()[-1] == (
      f"error: 2 VTAB task(s) failed: dtd, svhn (tracebacks in {tmp_path}/runs/TASK/"
      "error.txt); rerun to retry them")


@pytest.mark.parametrize("variant,flags,message", [
    ("", ["--config.seed=1"], "unknown config key 'seed' in --config.seed; valid keys: accum"),
    (":protocl=sweep", [], "bad config argument 'protocl=sweep'; valid: model=..., init=..."),
    (":tasks=cifar100,dtd", [], "bad config argument 'dtd'"),  # Use --config.tasks=a,b.
    (":protocol=grid", [], "unknown protocol 'grid'; valid: hyperrule, vtab_lightweight, "
                           "hyperrule_sweep"),
    (":protocol=sweep", [], "protocol 'sweep' is now 'hyperrule_sweep' (the HyperRule with lr "
                            "and steps swept; VTAB's own sweep is 'vtab_lightweight'); valid: "),
    ("", ["--config.lightweight_steps=2.5"], "--config.lightweight_steps takes comma-separated "
                                             "ints, e.g. --config.lightweight_steps=2500,10000"),
    ("", ["--config.tasks=cifar10"], "unknown VTAB task or group 'cifar10'"),
    ("", ["--config.seeds=one"], "--config.seeds takes comma-separated ints, e.g. "
                                 "--config.seeds=0,1,2; got one"),
    ("", ["--config.sweep_steps=2,1e3"], "--config.sweep_steps takes comma-separated ints"),
    ("", ["--config.resolution=448"], "--config.resolution takes RESIZE,CROP, e.g."),
    ("", ["--config.batch_size=big"], "flag --config.batch_size=big: invalid literal for int"),
    ("", ["--seeds=0,1"], "Unknown command line flag 'seeds'; usage: python -m bit_jax.vtab "
                          "run --config=configs/vtab.py[:ARGS] --workdir=DIR"),
    ("", ["--workdir="], "flag --workdir=: give the directory results go to, --workdir=DIR"),
])
def test_run_bad_input_exits_with_one_line(variant, flags, message, fake_run, tmp_path,
                                           capsys):
  with pytest.raises(SystemExit) as exit_:
    cli.main(["run", f"--config={CONFIG}{variant}", f"--workdir={tmp_path / 'work'}", *flags])
  err = capsys.readouterr().err.strip()
  assert exit_.value.code == 2 and "\n" not in err, err
  assert err.startswith(f"error: {message}"), err
  assert not fake_run.calls and not (tmp_path / "work").exists()


def test_module_command_run_with_an_unknown_key_exits_2():
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
  done = subprocess.run([sys.executable, "-m", "bit_jax.vtab", "run", "--config=configs/vtab.py",
                         "--workdir=unused", "--config.seed=1"],
                        capture_output=True, text=True, env=env, timeout=120, check=False,
                        cwd=ROOT)
  assert done.returncode == 2, done.stderr[-2000:]
  assert done.stderr.strip().splitlines()[-1].startswith(
      "error: unknown config key 'seed' in --config.seed")
  assert not (ROOT / "unused").exists()


def test_run_lightweight_variant_and_its_fields_reach_the_config(fake_run, tmp_path, capsys):
  run_cli(capsys, "run", f"--config={CONFIG}:protocol=vtab_lightweight", f"--workdir={tmp_path}",
          "--config.lightweight_lrs=0.5", "--config.lightweight_steps=2,4",
          "--config.lightweight_resolution=32")
  [(config, _)] = fake_run.calls
  assert config.protocol == "vtab_lightweight"
  assert (config.lightweight_lrs, config.lightweight_steps, config.lightweight_resolution) == (
      (0.5,), (2, 4), 32)
  default = vtab_config.get_config("protocol=vtab_lightweight")
  assert (default.lightweight_lrs, default.lightweight_steps, default.lightweight_resolution,
          default.batch_size) == ((0.1, 0.01), (2500, 10_000), 224, 512)  # The VTAB paper's.
