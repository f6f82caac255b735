"""Transfer runs kept on disk: run directories, skipping finished runs, resuming an
interrupted fine-tuning bitwise, SIGTERM, and refusing a workdir run under other settings."""
import json
import os
import signal

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

import input_pipeline
from bit_jax import (checkpointing, distributed, entry, finetune, models, npz, run_dir,
                     transfer)
from bit_jax.errors import NonFiniteLossError, UserError
from tests import faults, tiny_configs


def _run_dirs(workdir):
  return sorted(os.listdir(os.path.join(workdir, transfer.RUNS_DIR)))


def test_each_run_keeps_its_model_and_a_rerun_skips_it(tmp_path, monkeypatch):
  config = tiny_configs.transfer(shots=(1,), seeds=(0, 1), trainable="block4")
  with tfds.testing.mock_data(num_examples=40):
    first = transfer.finetune_and_evaluate(config, str(tmp_path))
    assert _run_dirs(tmp_path) == ["scratch-1shot-seed0", "scratch-1shot-seed1"]
    for run in first["runs"]:
      model, params, card = run_dir.load(run["run_dir"])
      assert card.num_classes == 10 and card.crop == 32
      assert card.provenance["seed"] == run["seed"] and card.provenance["shots"] == 1
      assert card.provenance["trainable"] == "block4"
      assert card.pp_eval() == finetune.make_plan(config, 10, None).pp_eval(10)
      assert not os.path.exists(os.path.join(run["run_dir"], "checkpoints"))
      # Only block4 onwards was trained: the stem is still the random init of its seed.
      init = finetune.init_params(model, jax.random.key(run["seed"]), 32)
      np.testing.assert_array_equal(params["root_conv"]["kernel"], init["root_conv"]["kernel"])

    # A rerun finds both finished: nothing is trained, the results are the same.
    monkeypatch.setattr(finetune, "train", lambda *a, **k: pytest.fail("trained again"))
    again = transfer.finetune_and_evaluate(config, str(tmp_path))
  assert [r["top1"] for r in again["runs"]] == [r["top1"] for r in first["runs"]]


def test_a_killed_transfer_keeps_its_finished_runs(tmp_path, monkeypatch):
  config = tiny_configs.transfer(shots=(1,), seeds=(0, 1))
  train = finetune.train
  calls = []
  def dies_in_the_second_run(*args, **kwargs):
    calls.append(kwargs["seed"])
    if len(calls) == 2:
      raise KeyboardInterrupt  # Stands for SIGKILL: nothing after this point runs.
    return train(*args, **kwargs)
  monkeypatch.setattr(finetune, "train", dies_in_the_second_run)
  with tfds.testing.mock_data(num_examples=40):
    with pytest.raises(KeyboardInterrupt):
      transfer.finetune_and_evaluate(config, str(tmp_path))
    with open(tmp_path / transfer.RESULTS_NAME) as f:
      assert [r["seed"] for r in json.load(f)["runs"]] == [0]
    results = transfer.finetune_and_evaluate(config, str(tmp_path))
  assert calls == [0, 1, 1]  # The finished seed 0 is not trained again.
  assert [r["seed"] for r in results["runs"]] == [0, 1]


def test_a_rerun_with_other_settings_is_refused(tmp_path):
  with tfds.testing.mock_data(num_examples=40):
    transfer.finetune_and_evaluate(tiny_configs.transfer(shots=(1,)), str(tmp_path))
    with pytest.raises(UserError, match=r"holds a run started with other settings "
                                        r"\(plan.base_lr 0.003 -> 0.01; recorded in "):
      transfer.finetune_and_evaluate(tiny_configs.transfer(shots=(1,), base_lr=0.01),
                                     str(tmp_path))


def test_an_interrupted_finetuning_resumes_to_the_same_parameters(tmp_path, monkeypatch):
  """Killed after step 5 with a checkpoint at step 4: the rerun starts at step 4 and ends
  bitwise where an uninterrupted run ends (MixUp on, so its randomness is replayed too)."""
  config = tiny_configs.transfer(total_steps=6, checkpoint_every_steps=2, mixup_alpha=0.2)
  real_iterator = input_pipeline.train_iterator
  with tfds.testing.mock_data(num_examples=40):
    source = input_pipeline.get_source("cifar10")
    plan = finetune.make_plan(config, 40, None)
    model = models.get_model("tiny-R14", num_classes=10)
    params = jax.device_get(finetune.init_params(model, jax.random.key(0), plan.crop))
    def run(checkpoint_dir=None):
      return jax.device_get(finetune.train(model, params, source, "train", 10, plan, seed=0,
                                           mesh=distributed.data_mesh(),
                                           checkpoint_dir=checkpoint_dir))
    uninterrupted = run()

    def dies_after_five_batches(*args, **kwargs):
      batches = real_iterator(*args, **kwargs)
      for _ in range(5):
        yield next(batches)
      raise KeyboardInterrupt
    monkeypatch.setattr(input_pipeline, "train_iterator", dies_after_five_batches)
    checkpoints = str(tmp_path / "checkpoints")
    with pytest.raises(KeyboardInterrupt):
      run(checkpoints)
    assert os.listdir(checkpoints) == ["4"]

    starts = []
    def records_its_start(*args, **kwargs):
      starts.append(kwargs["start_step"])
      return real_iterator(*args, **kwargs)
    monkeypatch.setattr(input_pipeline, "train_iterator", records_its_start)
    resumed = run(checkpoints)
  assert starts == [4]
  a, b = npz.flatten(uninterrupted), npz.flatten(resumed)
  for key in a:
    assert a[key].tobytes() == b[key].tobytes(), key


def test_sigterm_saves_the_finetuning_run_and_exits_143(tmp_path):
  returncode, rest = faults.signal_once_running(
      ["transfer.py", "--config=configs/transfer.py:demo=True", f"--workdir={tmp_path}",
       "--config.init=", "--config.from_scratch_baseline=False", "--config.shots=5",
       "--config.seeds=0", "--config.linear_eval=", "--config.total_steps=100000",
       "--config.log_every_steps=1"], "fine-tune step 2/", signal.SIGTERM)
  assert returncode == entry.EXIT_PREEMPTED, rest[-3000:]
  assert "Rerun the same command to resume" in rest
  checkpoints = tmp_path / transfer.RUNS_DIR / "scratch-5shot-seed0" / "checkpoints"
  [step] = os.listdir(checkpoints)
  assert int(step) >= 2
  assert not run_dir.is_run(checkpoints.parent)  # Not finished: no model card.


def test_a_diverging_finetuning_stops_with_one_line_and_never_saves_the_diverged_state(
    tmp_path):
  config = tiny_configs.transfer(total_steps=8, checkpoint_every_steps=1, base_lr=1e30)
  checkpoints = tmp_path / "checkpoints"
  with tfds.testing.mock_data(num_examples=40):
    plan = finetune.make_plan(config, 40, None)
    model = models.get_model("tiny-R14", num_classes=10)
    params = finetune.init_params(model, jax.random.key(0), plan.crop)
    with pytest.raises(NonFiniteLossError) as raised:
      finetune.train(model, params, input_pipeline.get_source("cifar10"), "train", 10, plan,
                     seed=0, mesh=distributed.data_mesh(), checkpoint_dir=str(checkpoints))
  message = str(raised.value)
  assert "\n" not in message and message.startswith("fine-tuning diverged: loss ")
  step = int(message.split(" at step ")[1].split(";")[0])
  assert 1 < step < 8, message
  # Every step until then was saved; the one kept is the last finite one, and says so.
  assert os.listdir(checkpoints) == [str(step - 1)]
  assert (f"the last checkpoint (step {step - 1}) in {checkpoints} is untouched; lower "
          "--config.base_lr") in message
  kept = checkpointing.Checkpointer(str(checkpoints), read_only=True).restore()
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(kept["params"]))
