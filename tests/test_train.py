"""Upstream training end to end: configs, the demo, exact resume, preemption, divergence."""
import glob
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from bit_jax import entry, errors, npz, run_settings, train
from bit_jax.checkpointing import EXPORT_NAME
from configs import bit_l, bit_m, bit_s, common
from tests import faults, tiny_configs
from tests.conftest import DEMO_STEPS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("get_config", [bit_s.get_config, bit_m.get_config, bit_l.get_config])
def test_upstream_configs_run_a_few_steps_on_mock_data(tmp_path, get_config):
  config = tiny_configs.upstream(
      get_config(), dataset="imagenet2012", num_classes=1000, total_steps=3,
      num_train_examples=64, train_split="train", eval_split="validation",
      **dict(zip(("pp_train", "pp_eval"), common.imagenet_pp(1000, crop=32, resize=36))))
  for name in set(config.evals) - {"eval"}:  # Their 224px data would dominate; see
    config.evals[name].enabled = False  # tests/test_evaluators.py and test_evaluators_cli.py.
  with tfds.testing.mock_data(num_examples=20):
    results = train.train_and_evaluate(config, str(tmp_path))
  assert 0.0 <= results["eval/top1"] <= results["eval/top5"] <= 1.0
  assert np.isfinite(results["eval/loss"])
  assert os.path.exists(tmp_path / "checkpoints" / "3")
  assert npz.load(tmp_path / EXPORT_NAME)["head"]["kernel"].shape[-1] == 1000


def _scalars(workdir):
  """{tag: {step: value}} from the TensorBoard event files in `workdir`."""
  scalars = {}
  for path in glob.glob(os.path.join(workdir, "events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        array = tf.make_ndarray(value.tensor)
        if array.shape == () and array.dtype.kind == "f":  # Scalars, not hparams or text.
          scalars.setdefault(value.tag, {})[event.step] = float(array)
  return scalars


def _run_train_py(workdir, *overrides, timeout=600):
  return subprocess.run(
      [sys.executable, "train.py", "--config=configs/demo.py", f"--workdir={workdir}",
       *overrides], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path):
  # With an evaluator running before and after the kill: evaluation never changes training.
  overrides = dict(total_steps=8, checkpoint_every_steps=4, log_every_steps=4,
                   eval_every_steps=1000, batch_size=16, shuffle_buffer=256,
                   evals=dict(fewshot=dict(every_steps=3, shots=(1,), datasets={
                       "bit_farm_animals": ("bit_farm_animals", "train[:20]", "test[:16]"),
                       "bit_digits": ("bit_digits", "train[:20]", "test[:16]")})))
  straight = faults.run_demo(tmp_path / "straight", overrides)
  assert straight.returncode == 0, straight.stderr[-3000:]
  assert "[3] fewshot/bit_digits_1shot=" in straight.stderr  # The evaluator did run.
  # SIGKILLed right after the checkpoint of step 4 is on disk, as a crashed host dies.
  killed = faults.run_demo(tmp_path / "resumed", overrides,
                           fault=("kill_after_checkpoint", 4))
  assert killed.returncode == -signal.SIGKILL
  assert not os.path.exists(tmp_path / "resumed" / EXPORT_NAME)
  resumed = faults.run_demo(tmp_path / "resumed", overrides)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "resumed from step 4" in resumed.stderr
  a = npz.read_flat(tmp_path / "straight" / EXPORT_NAME)
  b = npz.read_flat(tmp_path / "resumed" / EXPORT_NAME)
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)  # Bitwise.


def test_sigterm_saves_a_checkpoint_before_exiting(tmp_path):
  workdir = tmp_path / "preempted"
  returncode, rest = faults.signal_once_running(
      ["train.py", "--config=configs/demo.py", f"--workdir={workdir}",
       "--config.total_steps=100000", "--config.log_every_steps=1",
       "--config.checkpoint_every_steps=100000"], "train/loss", signal.SIGTERM)
  assert returncode == entry.EXIT_PREEMPTED, rest[-3000:]
  steps = os.listdir(workdir / "checkpoints")
  assert len(steps) == 1 and 0 < int(steps[0]) < 100000
  assert not os.path.exists(workdir / EXPORT_NAME)  # Not finished: nothing exported.


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
  config = tiny_configs.upstream(total_steps=2, checkpoint_every_steps=2)
  train.train_and_evaluate(config, str(tmp_path))
  good = {k: v.copy() for k, v in npz.read_flat(tmp_path / EXPORT_NAME).items()}
  # Resume the same run with a learning rate that blows the parameters up: as a workdir
  # without settings.json (a recorded one refuses another learning rate).
  os.remove(tmp_path / run_settings.SETTINGS_NAME)
  diverging = tiny_configs.upstream(total_steps=6, checkpoint_every_steps=1, lr_per_256=1e30,
                                    warmup_steps=0)
  # Step 3's loss is still finite (computed before the exploding update); its parameters
  # are not, so step 3 must not be saved over the good step 2.
  # Step 2 is the checkpoint it resumed from: the message does not vouch for it as "good".
  with pytest.raises(errors.NonFiniteLossError, match=r"at step 3.*checkpoint \(step 2\) in "
                                                      r".* that this run resumed from is "):
    train.train_and_evaluate(diverging, str(tmp_path))
  assert os.listdir(tmp_path / "checkpoints") == ["2"]
  np.testing.assert_array_equal(npz.read_flat(tmp_path / EXPORT_NAME)["group_norm/beta"],
                                good["group_norm/beta"])


def test_unknown_config_key_lists_the_valid_keys(capsys):
  with pytest.raises(SystemExit) as exit_info:
    entry.check_config_overrides(["train.py", "--config=configs/demo.py",
                                  "--config.learning_rate=0.1"])
  assert exit_info.value.code == entry.EXIT_BAD_INPUT
  message = capsys.readouterr().err.strip()
  assert "\n" not in message
  assert "unknown config key 'learning_rate'" in message and "lr_per_256" in message


def test_bad_config_argument_and_model_fail_with_one_line(tmp_path):
  bad_arg = subprocess.run(
      [sys.executable, "train.py", "--config=configs/bit_s.py:modle=R50", "--workdir=x"],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert bad_arg.returncode == entry.EXIT_BAD_INPUT
  assert bad_arg.stderr.strip().splitlines()[-1] == (
      "error: bad config argument 'modle=R50'; valid: model=..., recipe=...")
  bad_model = _run_train_py(tmp_path, "--config.model=R50", timeout=120)
  assert bad_model.returncode == entry.EXIT_BAD_INPUT
  assert bad_model.stderr.strip().splitlines()[-1].startswith(
      "error: unknown model 'R50'; valid models: BiT-S-R50x1")


def test_demo_learns_on_the_embedded_data(demo_run):
  workdir, done = demo_run
  assert done.returncode == 0, done.stderr[-3000:]
  scalars = _scalars(workdir)
  losses = scalars["train/loss"]
  last = max(losses)
  assert last == DEMO_STEPS and losses[last] < 0.5 * losses[50]
  assert scalars["eval/top1"][last] > 0.6  # 10 balanced classes: chance is 0.1.
  # The few-shot evaluator (every 150 steps) watches transfer to unseen images improve.
  fewshot = scalars["fewshot/bit_farm_animals_10shot"]
  assert sorted(fewshot) == [150, 300] and fewshot[300] > fewshot[150]
  # Every checkpoint_every_steps (200), and the last step.
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints")), key=int) == ["200", str(last)]
  exported = npz.load(os.path.join(workdir, EXPORT_NAME))
  assert exported["head"]["kernel"].shape == (1024, 10)
