"""settings.json of a train.py workdir: recorded once, a resumed run must match its fields,
the total steps may change."""
import json
import os

import pytest

from bit_jax import run_settings
from bit_jax.errors import UserError
from configs import demo


def _config(**overrides):
  config = demo.get_config()
  config.update(overrides)
  return config


def test_a_workdir_without_settings_accepts_any_and_records_them(tmp_path):
  run_settings.check(_config(lr_per_256=9.0), str(tmp_path), 600)  # Nothing recorded yet.
  assert run_settings.total_steps(str(tmp_path)) is None
  run_settings.record(_config(), str(tmp_path), 600)
  with open(tmp_path / run_settings.SETTINGS_NAME) as f:
    recorded = json.load(f)
  assert recorded == {**{field: _config()[field] for field in run_settings.FIELDS
                         if field != "decay_epochs"},
                      "decay_epochs": [30, 60, 80], run_settings.TOTAL_STEPS: 600}
  assert run_settings.total_steps(str(tmp_path)) == 600


def test_another_setting_is_refused_naming_the_field_and_both_values(tmp_path):
  run_settings.record(_config(), str(tmp_path), 600)
  run_settings.check(_config(eval_every_steps=7, checkpoint_every_steps=3), str(tmp_path),
                     900)  # Cadences and the length do not make another run.
  with pytest.raises(UserError) as error:
    run_settings.check(_config(lr_per_256=0.1, pp_train="decode|onehot(10)"), str(tmp_path),
                       600)
  assert str(error.value) == (
      "this workdir's run was started with other settings (pp_train "
      "'decode|resize(36)|random_crop(32)|flip_lr|value_range(-1,1)|onehot(10)' -> "
      "'decode|onehot(10)'; lr_per_256 0.4 -> 0.1; recorded in "
      f"{tmp_path / run_settings.SETTINGS_NAME}): rerun with its settings to resume it, or "
      "use another workdir")


def test_a_longer_run_records_its_new_total_only(tmp_path):
  run_settings.record(_config(), str(tmp_path), 600)
  before = os.path.getmtime(tmp_path / run_settings.SETTINGS_NAME)
  run_settings.record(_config(), str(tmp_path), 600)  # Unchanged: not rewritten.
  assert os.path.getmtime(tmp_path / run_settings.SETTINGS_NAME) == before
  run_settings.record(_config(), str(tmp_path), 900)
  assert run_settings.total_steps(str(tmp_path)) == 900


def test_an_unreadable_settings_file_is_moved_aside_and_written_again(tmp_path):
  (tmp_path / run_settings.SETTINGS_NAME).write_text('{"model": "tiny')  # Truncated.
  run_settings.check(_config(seed=5), str(tmp_path), 600)  # Nothing to compare with.
  run_settings.record(_config(), str(tmp_path), 600)
  [aside] = [n for n in os.listdir(tmp_path) if ".unreadable-" in n]
  assert (tmp_path / aside).read_text() == '{"model": "tiny'
  assert run_settings.total_steps(str(tmp_path)) == 600
