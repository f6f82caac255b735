"""settings.json: one record for train.py workdirs, transfer runs and VTAB workdirs; a rerun
must match it, fields named `may_change` are recorded anew, an unreadable one guards results."""
import json
import os

import pytest

from bit_jax import run_settings, transfer
from bit_jax.errors import UserError
from bit_jax.vtab import run as vtab_run
from configs import demo
from configs import vtab as vtab_config
from tests import tiny_configs


def _config(**overrides):
  config = demo.get_config()
  config.update(overrides)
  return config


def _settings(**overrides):
  return run_settings.upstream(_config(**overrides), 600)


def test_a_directory_without_settings_accepts_any_and_records_them(tmp_path):
  run_settings.check(tmp_path, _settings(lr_per_256=9.0))  # Nothing recorded yet.
  assert run_settings.total_steps(tmp_path) is None
  run_settings.record(tmp_path, _settings())
  with open(tmp_path / run_settings.SETTINGS_NAME) as f:
    recorded = json.load(f)
  assert recorded == {**{field: _config()[field] for field in run_settings.UPSTREAM_FIELDS
                         if field != "decay_epochs"},
                      "decay_epochs": [30, 60, 80], run_settings.TOTAL_STEPS: 600}
  assert run_settings.total_steps(tmp_path) == 600


def test_another_setting_is_refused_naming_each_field_and_both_values(tmp_path):
  run_settings.record(tmp_path, _settings())
  run_settings.check(tmp_path, run_settings.upstream(_config(eval_every_steps=7), 900),
                     may_change=[run_settings.TOTAL_STEPS])  # Cadences, the length: same run.
  with pytest.raises(UserError) as error:
    run_settings.check(tmp_path, _settings(lr_per_256=0.1, pp_train="decode|onehot(10)"))
  assert str(error.value) == (
      f"{tmp_path} holds a run started with other settings (pp_train "
      "'decode|resize(36)|random_crop(32)|flip_lr|value_range(-1,1)|onehot(10)' -> "
      "'decode|onehot(10)'; lr_per_256 0.4 -> 0.1; recorded in "
      f"{tmp_path / run_settings.SETTINGS_NAME}): rerun with those settings, or use another "
      "--workdir")


def test_a_nested_field_is_named_by_its_path(tmp_path):
  run_settings.record(tmp_path, {"seed": 0, "plan": {"base_lr": 0.003, "crop": 32}})
  with pytest.raises(UserError, match=r"\(plan.base_lr 0.003 -> 0.01; recorded in "):
    run_settings.check(tmp_path, {"seed": 0, "plan": {"base_lr": 0.01, "crop": 32}})


def test_a_longer_run_records_its_new_total_only(tmp_path):
  run_settings.record(tmp_path, _settings())
  before = os.path.getmtime(tmp_path / run_settings.SETTINGS_NAME)
  run_settings.record(tmp_path, _settings())  # Unchanged: not rewritten.
  assert os.path.getmtime(tmp_path / run_settings.SETTINGS_NAME) == before
  run_settings.record(tmp_path, run_settings.upstream(_config(), 900))
  assert run_settings.total_steps(tmp_path) == 900


@pytest.mark.parametrize("content", ['{"model": "tiny', "[]", ""])
def test_an_unreadable_record_guarding_nothing_is_moved_aside_and_written_again(tmp_path,
                                                                                 content):
  (tmp_path / run_settings.SETTINGS_NAME).write_text(content)
  run_settings.check(tmp_path, _settings(seed=5), guards=[tmp_path / "checkpoints"])
  run_settings.record(tmp_path, _settings())
  [aside] = [n for n in os.listdir(tmp_path) if ".unreadable-" in n]
  assert (tmp_path / aside).read_text() == content
  assert run_settings.total_steps(tmp_path) == 600


def test_an_unreadable_record_guarding_results_is_refused_and_left_alone(tmp_path):
  (tmp_path / run_settings.SETTINGS_NAME).write_text("[]")
  (tmp_path / "checkpoints").mkdir()
  with pytest.raises(UserError) as error:
    run_settings.check(tmp_path, _settings(seed=5), guards=[tmp_path / "checkpoints"])
  assert str(error.value).startswith(
      f"{tmp_path / run_settings.SETTINGS_NAME} is unreadable (no JSON object in it), so "
      f"nothing shows what {tmp_path / 'checkpoints'} came from: move it aside")
  assert sorted(os.listdir(tmp_path)) == ["checkpoints", run_settings.SETTINGS_NAME]


def _train(directory):
  """train.py's check (`train._check_config`), continuing a run with another lr."""
  run_settings.record(directory, _settings())
  return "lr_per_256 0.4 -> 0.1", lambda: run_settings.check(
      directory, _settings(lr_per_256=0.1), may_change=[run_settings.TOTAL_STEPS])


def _transfer(directory):
  """transfer.py's check of a run directory, rerun with another base lr."""
  def settings(base_lr):
    config = tiny_configs.transfer(base_lr=base_lr)
    return {"model": config.model, "seed": 0, "plan": {"base_lr": config.base_lr}}
  run_settings.record(directory, settings(0.003))
  return "plan.base_lr 0.003 -> 0.01", lambda: transfer._finished_result(  # pylint: disable=protected-access
      str(directory), settings(0.01))


def _vtab(directory):
  """vtab run's check of a workdir, rerun with another batch size."""
  config = vtab_config.get_config("model=tiny-R14")
  run_settings.record(directory, vtab_run._check_settings(config, directory))  # pylint: disable=protected-access
  config.batch_size = 16
  return "batch_size 512 -> 16", lambda: vtab_run._check_settings(config, directory)  # pylint: disable=protected-access


@pytest.mark.parametrize("setup", [_train, _transfer, _vtab], ids=["train", "transfer", "vtab"])
def test_train_transfer_and_vtab_refuse_a_changed_setting_in_the_same_words(tmp_path, setup):
  change, rerun = setup(tmp_path)
  with pytest.raises(UserError) as error:
    rerun()
  assert str(error.value) == (
      f"{tmp_path} holds a run started with other settings ({change}; recorded in "
      f"{tmp_path / run_settings.SETTINGS_NAME}): rerun with those settings, or use another "
      "--workdir")
