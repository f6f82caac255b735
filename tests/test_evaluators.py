"""bit_jax.evaluators: each kind on a hand-computed case, the registry's checks and schedule,
and the evaluators in the upstream loop (at their every_steps; a failing one is disabled)."""
import glob
import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

import input_pipeline
from bit_jax import calibration, distributed, entry, fewshot_classifiers, losses, models
from bit_jax import npz, train
from bit_jax.checkpointing import EXPORT_NAME
from bit_jax.errors import UserError
from bit_jax.evaluators import Evaluators, classification, fewshot, real, subset
from configs import bit_m, bit_s, common
from tests import tiny_configs


class LogitsAreInputs:
  """A stand-in model whose logits (and pre_logits) are its input: exact expected values."""

  def apply(self, variables, images):
    del variables
    return images, {"pre_logits": images}


def _sums(step, *args):
  return jax.tree.map(np.asarray, step(None, *map(jnp.asarray, args)))


# --- Each kind against a hand-computed case -------------------------------------------------------

def test_classification_counts_top1_top5_loss_and_ece():
  logits = np.array([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 0.5], [0.0, 0.0, 5.0]])
  labels = np.array([0, 2, 0, 2])
  mask = np.array([1, 1, 1, 0])  # The last one is padding.
  sums = _sums(classification.make_step(LogitsAreInputs(), "softmax_xent", 3), logits,
               labels, mask)
  assert sums["count"] == 3
  assert sums["top1"] == 2  # Examples 0 and 2; 1 predicts class 1.
  assert sums["top5"] == 3  # k = 3 classes: every label is in the top 3.
  onehot = np.eye(3)[labels[:3]]
  # Three float32 losses (<= 3.3) summed in another order: within 2 ulps (2.4e-7) of the sum.
  np.testing.assert_allclose(
      sums["loss"], np.sum(losses.softmax_xent(jnp.asarray(logits[:3]), jnp.asarray(onehot))),
      rtol=1e-6)
  probs = calibration.softmax(logits[:3])
  # The step's float32 bin sums against float64: a few float32 ulps (measured 1.4e-8 relative).
  np.testing.assert_allclose(classification.ece(sums),
                             calibration.expected_calibration_error(probs, labels[:3]),
                             rtol=1e-5)


def test_real_counts_a_hit_in_the_label_set_and_skips_empty_sets():
  # Predictions 0, 1, 2, 3, 0. ReaL sets: {0, 2} hit, {} skipped, {3} miss, {1, 3} hit, {1} miss.
  logits = np.eye(4)[[0, 1, 2, 3, 0]] * 5
  onehot = input_pipeline.get_preprocess_fn("onehot(4, key='real_label', key_result='label')")
  sets = [[0, 2], [], [3], [1, 3], [1]]
  labels = np.stack([onehot({"real_label": tf.constant(s, tf.int64)})["label"].numpy()
                     for s in sets])
  sums = _sums(real.make_step(LogitsAreInputs(), 4), logits, labels, np.ones(5))
  assert (sums["hits"], sums["counted"], sums["count"]) == (2, 4, 5)


def test_subset_never_predicts_a_class_outside_the_subset():
  # Class 5 has the highest logit everywhere but is in no dataset class's mapping.
  logits = np.array([[0.0, 1.0, 0.5, 0.0, 0.0, 9.0],
                     [0.0, 2.0, 0.0, 1.0, 0.0, 9.0],
                     [0.0, 0.0, 0.0, 0.0, 0.0, 9.0]])
  mapping = {"0": [1], "1": [2, 3]}  # Dataset class 2 is not mapped: not counted.
  matrix = subset.mapping_matrix(mapping, None, 3, 6)
  sums = _sums(subset.make_step(LogitsAreInputs()), logits, np.array([0, 1, 2]),
               np.ones(3), matrix)
  assert sums["counted"] == 2
  assert sums["top1"] == 1  # Example 0 -> class 1; example 1 -> class 1, not in {2, 3}.
  assert sums["top5"] == 2  # Example 1's 2 and 3 are in its restricted top 5.


def test_subset_mapping_by_class_name_and_checks_against_the_head(tmp_path):
  path = tmp_path / "mapping.json"
  path.write_text(json.dumps({"cat": [3], "dog": [1, 2]}))
  mapping = subset.load_mapping(str(path), 4, "evals.x.mapping")
  matrix = subset.mapping_matrix(mapping, ["cat", "dog", "emu"], 3, 4)
  np.testing.assert_array_equal(matrix, [[0, 0, 0, 1], [0, 1, 1, 0], [0, 0, 0, 0]])
  with pytest.raises(UserError, match=r"does not fit the model's 3-way head: class 'cat' maps "
                                      r"to head index 3 \(valid: 0 to 2\)"):
    subset.load_mapping(str(path), 3, "evals.x.mapping")
  with pytest.raises(UserError, match="names class 'dog', which the dataset does not have"):
    subset.mapping_matrix(mapping, ["cat", "cow"], 2, 4)
  shipped = subset.load_mapping("imagenet_a.json", 1000, "evals.a.mapping")
  assert len(shipped) == 200 and shipped["6"] == [6]  # hendrycks' indices_in_1k starts 6, 11.
  assert len(subset.load_mapping("imagenet_r.json", 1000, "evals.r.mapping")) == 200


def test_fewshot_equals_ridge_fewshot_accuracy_on_the_same_features():
  rng = np.random.default_rng(0)
  train_y, test_y = np.repeat(np.arange(4), 6), np.repeat(np.arange(4), 5)
  centers = rng.normal(size=(4, 16))
  train_x = centers[train_y] + rng.normal(size=(24, 16))
  test_x = centers[test_y] + rng.normal(size=(20, 16))
  got = fewshot.accuracies(train_x, train_y, test_x, test_y, (1, 5, 7), 2, 2.0**10,
                           prefix="toy")
  assert set(got) == {"toy_1shot", "toy_5shot"}  # 7 shots > 6 per class: skipped.
  for k in (1, 5):
    expected = np.mean([fewshot_classifiers.ridge_fewshot_accuracy(
        train_x[idx], train_y[idx], test_x, test_y, 4)
        for idx in (fewshot_classifiers.select_few_shot(train_y, k, seed) for seed in (0, 1))])
    # Means of accuracies (multiples of 1/20) from the same float64 arithmetic.
    assert got[f"toy_{k}shot"] == pytest.approx(expected, abs=1e-12)


# --- The registry -------------------------------------------------------------------------------

def _tiny_config(**evals):
  config = tiny_configs.upstream(eval_every_steps=2)
  for name, entry in evals.items():
    config.evals[name] = entry
  return config


def _build(config):
  model = models.get_model(config.model, num_classes=config.num_classes)
  return Evaluators.from_config(config, model, distributed.data_mesh())


@pytest.mark.parametrize("entry, message", [
    (dict(kind="clasification"), "evals.bad.kind='clasification' is not valid; valid kinds: "
     "classification, fewshot, real, subset"),
    (common.classification_eval(dataset="imagenet_v3", split="test"),
     "unknown dataset 'imagenet_v3' in evals.bad.dataset"),
    (common.fewshot_eval(datasets={"x": ("no_such_data", "train", "test")}),
     "unknown dataset 'no_such_data' in evals.bad.datasets.x"),
    (common.subset_eval("imagenet_a", "test", "imagenet_a.json"),
     "evals.bad.mapping='imagenet_a.json' does not fit the model's 10-way head"),
    (common.subset_eval("imagenet_a", "test", "/no/such.json"),
     "evals.bad.mapping='/no/such.json' cannot be read as a mapping file"),
    (dict(kind="classification", every_step=5), "evals.bad.every_step is not a field"),
    (dict(kind="fewshot", datasets={"x": ("dtd", "train")}), "evals.bad.datasets.x="),
    (dict(kind="classification", every_steps=-1), "evals.bad.every_steps=-1 is not valid"),
])
def test_bad_evaluator_entries_fail_with_one_line(entry, message):
  with pytest.raises(UserError) as error:
    _build(_tiny_config(bad=entry))
  assert message in str(error.value) and "\n" not in str(error.value)


def test_bad_evaluator_exits_2_before_anything_is_written(tmp_path, capsys):
  config = _tiny_config(bad=dict(kind="ridge"))
  with pytest.raises(SystemExit) as exit_info:
    entry.run(lambda: train.train_and_evaluate(config, str(tmp_path / "run")))
  assert exit_info.value.code == entry.EXIT_BAD_INPUT
  assert capsys.readouterr().err.strip().startswith("error: evals.bad.kind='ridge' is not valid")
  assert not os.path.exists(tmp_path / "run")


def test_defaults_schedule_and_switching_off():
  config = _tiny_config()
  config.evals.fewshot.every_steps = 3
  evaluators = _build(config)
  assert evaluators.names() == ["eval", "fewshot"]
  assert [e.name for e in evaluators.due(2, 10)] == ["eval"]  # eval_every_steps = 2.
  assert [e.name for e in evaluators.due(3, 10)] == ["fewshot"]
  assert [e.name for e in evaluators.due(5, 10)] == []
  assert [e.name for e in evaluators.due(10, 10)] == ["eval", "fewshot"]  # The last step.
  config.evals.fewshot.enabled = False
  assert _build(config).names() == ["eval"]
  eval_ = _build(config).evaluators[0]
  assert (eval_.dataset, eval_.split, eval_.batch_size) == ("bit_animals_upstream", "test", 16)


def test_upstream_configs_build_their_default_evaluators():
  s = _build_config_only(bit_s.get_config())
  assert sorted(s.names()) == ["eval", "fewshot", "real", "v2"]
  assert set(s.evaluators[s.names().index("fewshot")].datasets) == {
      "caltech101", "cars196", "cifar100", "dtd", "oxford_iiit_pet", "uc_merced"}
  assert sorted(_build_config_only(bit_m.get_config()).names()) == ["eval", "fewshot"]


def _build_config_only(config):
  # The real head size, a tiny body: building checks every entry without a big model.
  model = models.get_model("tiny-R14", num_classes=config.num_classes)
  return Evaluators.from_config(config, model, distributed.data_mesh())


# --- In the upstream loop -----------------------------------------------------------------------

def _scalars(workdir):
  scalars = {}
  for path in glob.glob(os.path.join(workdir, "events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        array = tf.make_ndarray(value.tensor)
        if array.shape == () and array.dtype.kind == "f":
          scalars.setdefault(value.tag, {})[event.step] = float(array)
  return scalars


def test_loop_runs_each_evaluator_at_its_steps_and_survives_a_failing_one(tmp_path, caplog):
  config = _tiny_config(
      fewshot=common.fewshot_eval(
          datasets={"bit_digits": ("bit_digits", "train[:40]", "test[:16]")}, shots=(1, 2),
          pp="decode|resize(32)|value_range(-1,1)|keep('image', 'label')", every_steps=3,
          num_seeds=1),
      missing=common.classification_eval(dataset="folder:/no/such/folder", split="train"))
  config.total_steps = 4
  config.evals.eval.split = "test[:32]"
  with caplog.at_level(logging.WARNING):
    results = train.train_and_evaluate(config, str(tmp_path))
  scalars = _scalars(str(tmp_path))
  assert sorted(scalars["eval/top1"]) == [2, 4]  # eval_every_steps=2, and the last step.
  assert sorted(scalars["eval/ece"]) == [2, 4]
  assert sorted(scalars["fewshot/bit_digits_2shot"]) == [3, 4]
  assert not [tag for tag in scalars if tag.startswith("missing/")]
  assert 0.0 <= results["eval/top1"] <= 1.0 and "fewshot/bit_digits_1shot" in results
  [line] = [r.getMessage() for r in caplog.records if "missing" in r.getMessage()]
  assert "failed at step 2 and is disabled for this run" in line
  assert "/no/such/folder does not exist" in line
  params = npz.load(tmp_path / EXPORT_NAME)  # The step-4 parameters the evaluators saw.
  assert params["head"]["kernel"].shape == (1024, 10)

  # The few-shot value equals fewshot.ridge_fewshot_accuracy on the model's own features.
  model = models.get_model(config.model, num_classes=config.num_classes)
  forward = jax.jit(lambda x: model.apply({"params": params}, x)[1]["pre_logits"])

  def features(split):
    ds, _ = input_pipeline.eval_dataset(input_pipeline.get_source("bit_digits"), split,
                                        config.evals.fewshot.pp, 16)
    feats, labels = [], []
    for batch in ds.as_numpy_iterator():
      feats.append(np.asarray(forward(batch["image"]))[batch["_mask"]])
      labels.append(batch["label"][batch["_mask"]])
    return np.concatenate(feats), np.concatenate(labels)

  (train_x, train_y), (test_x, test_y) = features("train[:40]"), features("test[:16]")
  idx = fewshot_classifiers.select_few_shot(train_y, 2, seed=0)
  expected = fewshot_classifiers.ridge_fewshot_accuracy(train_x[idx], train_y[idx], test_x, test_y,
                                                int(max(train_y.max(), test_y.max())) + 1)
  # An accuracy over 16 examples, a multiple of 1/16: the same predictions. The features come
  # from another program (the mesh's, not 1 device's), which could flip a prediction only for
  # a test example within float32 rounding of a decision boundary.
  assert scalars["fewshot/bit_digits_2shot"][4] == pytest.approx(expected, abs=1e-6)
