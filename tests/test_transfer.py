"""Transfer end to end: mock data, the embedded demo, results and bad input."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from bit_jax import (features, fewshot_classifiers, finetune, models, npz, predict, run_dir,
                     transfer)
from bit_jax.errors import UserError
from tests import tiny_configs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_end_to_end_on_mock_data(tmp_path, monkeypatch):
  # With the memory savers on (as for R152x4 at 384 px): micro-batches and rematerialisation.
  config = tiny_configs.transfer(shots=(0, 1), seeds=(3,),
                 linear_eval=("bigvision_fewshot,ncm", "ericsson_linear", "ericsson_fewshot"),
                 linear_shots=(1,), fewshot_ways=2, fewshot_shots=(1,), fewshot_queries=1,
                 fewshot_episodes=5, accum_steps=2, remat=True, linear_pp="resize(32)")
  built = []
  get_model = models.get_model
  monkeypatch.setattr(models, "get_model", lambda *a, **k: built.append(get_model(*a, **k))
                      or built[-1])
  with tfds.testing.mock_data(num_examples=60):
    results = transfer.finetune_and_evaluate(config, str(tmp_path))
  assert built and all(model.remat for model in built)
  runs = results["runs"]
  finetunes = [r for r in runs if r["evaluation"] == "finetune"]
  assert [(r["shots"], r["seed"], r["init"]) for r in finetunes] == [
      ("all", 3, "scratch"), (1, 3, "scratch")]
  for run in runs:  # The whole mock test split, every time; episodes test on their queries.
    episodic = run["evaluation"] == "ericsson_fewshot"
    assert run["num_test_examples"] == (5 * 2 * 1 if episodic else 60)
    assert 0 <= run["top1"] <= 1 and 0 <= run["ece"] <= 1
  assert {r["evaluation"] for r in runs} == {"finetune", "bigvision_fewshot", "ncm",
                                             "ericsson_linear", "ericsson_fewshot"}
  assert finetunes[0]["schedule"] == [1, 2, 2, 3, 4] and finetunes[0]["resolution"] == [36, 32]
  with open(tmp_path / transfer.RESULTS_NAME) as f:
    assert json.load(f)["summary"] == results["summary"]
  assert any(name.startswith("events.out.tfevents") for name in os.listdir(tmp_path))


def test_each_frozen_feature_method_reads_its_published_preprocessing():
  plan = finetune.make_plan(tiny_configs.transfer(), 50, None)
  pp = lambda method, **kw: transfer._feature_pp(tiny_configs.transfer(**kw), method, plan,
                                                  10)
  tail = "|value_range(-1,1)|onehot(10)|keep('image', 'label')"
  assert pp("ericsson_linear") == ("decode|resize_small(224, method='bicubic')|"
                                   f"central_crop(224){tail}")
  assert pp("ericsson_fewshot") == f"decode|resize(257)|central_crop(224){tail}"
  assert pp("bigvision_fewshot") == f"decode|resize(256)|central_crop(224){tail}"
  assert pp("ncm") == plan.pp_eval(10)
  assert pp("ericsson_linear", linear_pp="resize(32)") == f"decode|resize(32){tail}"


def test_summary_gives_mean_and_spread_over_seeds():
  runs = [{"evaluation": "finetune", "init": "pretrained", "shots": 5, "seed": s, "top1": t,
           "ece": 0.1} for s, t in ((0, 0.5), (1, 0.7))]
  [row] = transfer.summarize(runs)
  assert row["top1_mean"] == pytest.approx(0.6) and row["top1_std"] == pytest.approx(0.1)
  assert row["num_seeds"] == 2
  assert "60.0 ± 10.0" in transfer.format_table([row])


def test_unknown_linear_method_is_refused(tmp_path):
  with pytest.raises(UserError, match="unknown linear_eval method 'svm'; valid: "
                                      "ericsson_linear, ericsson_fewshot, bigvision_fewshot"):
    transfer.finetune_and_evaluate(tiny_configs.transfer(dataset="bit_digits",
                                         linear_eval=("bigvision_fewshot,svm",)),
                                   str(tmp_path))


def test_a_checkpoint_for_another_architecture_is_refused(tmp_path):
  other = models.get_model("tiny-R26", num_classes=10)
  npz.save(jax.jit(other.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"],
           tmp_path / "r26.npz")
  with pytest.raises(UserError, match="does not fit the model tiny-R14.*looks like tiny-R26"):
    transfer.finetune_and_evaluate(
        tiny_configs.transfer(dataset="bit_digits", init=str(tmp_path / "r26.npz")),
                                   str(tmp_path))


def test_more_shots_than_the_smallest_class_is_refused(tmp_path):
  config = tiny_configs.transfer(dataset="bit_digits", shots=(500,))
  with pytest.raises(UserError, match=r"Class '\d' \(label \d\) has only \d+ examples, "
                                      "fewer than shots=500"):
    transfer.finetune_and_evaluate(config, str(tmp_path))
  assert not os.path.exists(tmp_path / transfer.RESULTS_NAME)


@pytest.mark.parametrize("args,message", [
    (["--config.model=R50"], "error: unknown model 'R50'; valid models: BiT-S-R50x1"),
    (["--config.dataset=not_a_dataset"], "error: "),
    (["--config.resolution=20,16"], "error: resolution (resize 20, crop 16) is too small"),
])
def test_bad_input_ends_with_one_line_and_a_nonzero_exit(tmp_path, args, message):
  done = subprocess.run(
      [sys.executable, "transfer.py", "--config=configs/transfer.py:demo=True",
       f"--workdir={tmp_path}", "--config.init=", *args],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert done.returncode == 2, done.stderr[-2000:]
  last = done.stderr.strip().splitlines()[-1]
  assert last.startswith(message), last
  if "dataset" in args[0]:
    assert "not_a_dataset" in last


def test_demo_transfer_pretrained_beats_from_scratch_in_its_table(demo_run, optimized_env,
                                                                 tmp_path):
  """The offline BiT story: the demo's checkpoint, fine-tuned on images it never saw.

  The demo config itself (HyperRule lr, 100 steps) on one seed, from the shortened demo
  pretraining: pretrained beats from-scratch at 5 and 10 shots in the printed table.
  """
  pretrain_dir, pretraining = demo_run
  assert pretraining.returncode == 0, pretraining.stderr[-2000:]
  done = subprocess.run(
      [sys.executable, "transfer.py", "--config=configs/transfer.py:demo=True",
       f"--workdir={tmp_path}", f"--config.init={pretrain_dir}", "--config.seeds=0"],
      cwd=ROOT, env=optimized_env, capture_output=True, text=True, timeout=900)
  assert done.returncode == 0, done.stderr[-3000:]
  table = done.stdout.strip().splitlines()
  assert table[0].split() == ["evaluation", "init", "shots", "seeds", "top-1", "%", "ECE"]
  top1 = {tuple(line.split()[:3]): float(line.split()[4]) for line in table[2:]}
  evaluations = ("finetune", "bigvision_fewshot", "ericsson_fewshot")
  assert set(top1) == {(evaluation, init, shots) for evaluation in evaluations
                       for init in ("pretrained", "scratch") for shots in ("5", "10")} | {
                           ("ericsson_linear", init, "all") for init in ("pretrained", "scratch")}
  for evaluation in evaluations:
    for shots in ("5", "10"):
      assert top1[evaluation, "pretrained", shots] > top1[evaluation, "scratch", shots] + 10
  with open(tmp_path / transfer.RESULTS_NAME) as f:
    runs = json.load(f)["runs"]
  # bit_farm_animals' whole test split; episodes test on their queries.
  assert all(r["num_test_examples"] == 500 for r in runs
             if r["evaluation"] != "ericsson_fewshot")
  assert {r["resolution"][1] for r in runs if "resolution" in r} == {32}

  # Each fine-tuning run left a model that predicts its own test split exactly as it scored.
  finetuned = [r for r in runs if r["evaluation"] == "finetune"]
  assert len(finetuned) == 4 and all(run_dir.is_run(r["run_dir"]) for r in finetuned)
  run = next(r for r in finetuned if r["init"] == "pretrained" and r["shots"] == 5)
  # On one device, in the run's batches of 250, as the transfer process ran.
  one_device = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
  predicted = predict.predict(run["run_dir"], ["tfds:bit_farm_animals:test"], labels=True,
                              mesh=one_device)
  assert predicted.metrics["top1"] == run["top1"]
  assert predicted.metrics["num_examples"] == 500

  # `bit_jax.features`' extraction gives the run's own ridge few-shot numbers (on one device
  # and in batches of 250, as the transfer process ran).
  model, params, _ = features.load(pretrain_dir, "tiny-R14")
  def extract(split):
    arrays = features.extract(model, params, "bit_farm_animals", split,
                              run_dir.pp_image(32) + "|keep('image', 'label')",
                              batch_size=250, mesh=one_device)
    return arrays["pre_logits"], arrays["labels"]
  (train_x, train_y), (test_x, test_y) = extract("train"), extract("test")
  for shots in (5, 10):
    [ridge] = [r for r in runs if r["evaluation"] == "bigvision_fewshot"
               and r["init"] == "pretrained" and r["shots"] == shots]
    chosen = fewshot_classifiers.select_few_shot(train_y, shots, seed=0)
    # Within one of the 500 test images: this model has no head, so XLA compiles another
    # program, whose last bits may differ; another preprocessing would move many.
    assert abs(fewshot_classifiers.ridge_fewshot_accuracy(train_x[chosen], train_y[chosen], test_x,
                                              test_y, 5) - ridge["top1"]) <= 1 / 500


@pytest.mark.parametrize("overrides,message", [
    (dict(seeds=()), r"seeds=\(\) is not valid: give one or more integers >= 0"),
    (dict(shots=(-1,)), r"shots=\(-1,\) is not valid"),
    (dict(resolution=(36,)), r"resolution=\(36,\) is not valid: it must be two integers"),
    (dict(trainable="backbone"), r"trainable='backbone' is not valid; valid: all, head"),
    (dict(test_split="validation"), r"validation"),
    (dict(finetune=False), r"nothing to run"),
])
def test_bad_transfer_input_is_refused_before_anything_is_written(tmp_path, overrides,
                                                                  message):
  with pytest.raises(UserError, match=message):
    transfer.finetune_and_evaluate(tiny_configs.transfer(dataset="bit_digits", **overrides),
                                   str(tmp_path))
  assert os.listdir(tmp_path) == []
