"""`python -m bit_jax.evaluators`: the robustness suite end to end on TFDS mock data and an ObjectNet-like
folder, over every checkpoint of a run; a rerun skips what is done; bad inputs exit 2."""
import json
import logging
import os
import subprocess
import sys

from absl import logging as absl_logging
import jax
import jax.numpy as jnp
import optax
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from bit_jax import checkpointing, entry, models, train_step
from bit_jax.evaluators import __main__ as cli
from bit_jax.errors import UserError
from bit_jax.evaluators import subset
from configs import evaluate as evaluate_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUITE = ["imagenet", "imagenet_v2", "imagenet_real", "imagenet_a", "imagenet_r",
         "imagenet_sketch", "objectnet"]


def _objectnet(root):
  """An ObjectNet 1.0 layout: images/<folder>/*.png and the four mappings/ files.

  Folders `alarm_clock` (ImageNet's `analog clock; digital clock`), `banana` and `chair`
  (no ImageNet class: not counted). The ILSVRC-2012 ids run backwards from the sorted
  WordNet-id order, as an index permutation the conversion must undo.
  """
  names = [f"class {i}" for i in range(1000)]
  names[409], names[530], names[954] = "analog clock", "digital clock", "banana"
  os.makedirs(root / "mappings")
  (root / "mappings" / "imagenet_to_label_2012_v2").write_text(
      "\n".join(names[999 - i] for i in range(1000)))  # Line i is the name of index 999 - i.
  (root / "mappings" / "pytorch_to_imagenet_2012_id.json").write_text(
      json.dumps({str(i): 1000 - i for i in range(1000)}))  # Index i has ILSVRC id 1000 - i.
  (root / "mappings" / "folder_to_objectnet_label.json").write_text(json.dumps(
      {"alarm_clock": "Alarm clock", "banana": "Banana", "chair": "Chair"}))
  (root / "mappings" / "objectnet_to_imagenet_1k.json").write_text(json.dumps(
      {"Alarm clock": "analog clock; digital clock", "Banana": "banana"}))
  for i, folder in enumerate(("alarm_clock", "banana", "chair")):
    os.makedirs(root / "images" / folder)
    for j in range(3):
      image = tf.fill((40, 40, 3), tf.constant(40 * i + 10 * j, tf.uint8))
      (root / "images" / folder / f"{j}.png").write_bytes(tf.io.encode_png(image).numpy())


def test_objectnet_mappings_folder_becomes_folder_to_imagenet_indices(tmp_path):
  _objectnet(tmp_path)
  mapping = subset.load_mapping(str(tmp_path / "mappings"), 1000, "evals.objectnet.mapping")
  assert mapping == {"alarm_clock": [409, 530], "banana": [954]}


@pytest.fixture(scope="module")
def run_with_checkpoints(tmp_path_factory):
  """The workdir of a tiny-R14, 1000-class run with checkpoints at steps 2 and 4 (random
  parameters, as train.py saves them: no training needed to evaluate them)."""
  workdir = str(tmp_path_factory.mktemp("run"))
  model = models.get_model("tiny-R14", num_classes=1000)
  checkpointer = checkpointing.Checkpointer(
      os.path.join(workdir, checkpointing.CHECKPOINT_DIR), use_async=False)
  params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
  for step in (2, 4):
    params["head"]["kernel"] = 0.01 * step * jax.random.normal(jax.random.key(step),
                                                                (1024, 1000))
    state = train_step.create_train_state(params, optax.sgd(0.1))
    checkpointer.save(step, state.replace(step=jnp.asarray(step, jnp.int32)))
  checkpointer.close()
  return workdir


def _suite(tmp_path):
  _objectnet(tmp_path / "objectnet")
  config = evaluate_config.get_config(f"crop=32,objectnet={tmp_path / 'objectnet'}")
  config.update(dict(model="tiny-R14", eval_batch_size=16))
  return config


def test_suite_end_to_end_on_every_checkpoint_and_rerun_skips(run_with_checkpoints, tmp_path,
                                                             caplog):
  config, out = _suite(tmp_path), str(tmp_path / "eval")
  # 48 examples per split: ImageNet-A/-R's mock labels hit their 200 classes.
  with tfds.testing.mock_data(num_examples=48):
    results = cli.evaluate(config, run_with_checkpoints, out, every_checkpoint=True)
  assert sorted(results) == ["2", "4"]
  for metrics in results.values():
    assert {tag.split("/")[0] for tag in metrics} == set(SUITE)
    assert metrics["objectnet/num_counted"] == 6  # The chair images are not counted.
    assert all(0.0 <= metrics[f"{name}/top1"] <= 1.0 for name in SUITE)
  saved = json.loads((tmp_path / "eval" / cli.RESULTS).read_text())
  assert saved["results"] == results and saved["model"] == "tiny-R14"
  table = (tmp_path / "eval" / cli.TABLE).read_text()
  assert "| objectnet | top1 |" in table and "58.7" in table and "PapersWithCode" in table
  assert os.path.getsize(tmp_path / "eval" / "curves" / "imagenet_top1.png") > 1000
  assert os.path.exists(tmp_path / "eval" / "curves" / "objectnet_top5.png")

  # Rerun: both checkpoints are done, so nothing is evaluated (no dataset is even needed).
  # The level of absl's own logger, not the root's: code run before in this process may have
  # set it (tf.saved_model.save leaves it at WARNING).
  caplog.set_level(logging.INFO, logger=absl_logging.get_absl_logger().name)
  again = cli.evaluate(config, run_with_checkpoints, out, every_checkpoint=True)
  assert again == results
  assert sum("evaluated before, skipped" in r.getMessage() for r in caplog.records) == 2


def test_a_missing_dataset_is_skipped_with_one_line(run_with_checkpoints, tmp_path, caplog):
  config = _suite(tmp_path)
  for name in SUITE[1:]:
    config.evals[name].enabled = False
  config.evals.imagenet_sketch.enabled = True
  config.evals.imagenet_sketch.dataset = "folder:/no/such/sketches"  # Not prepared.
  config.evals.imagenet.dataset = "bit_digits"  # Embedded: prepared offline.
  config.evals.imagenet.split = "test"
  config.evals.imagenet.pp = "decode|resize(32)|value_range(-1,1)|onehot(1000)"
  results = cli.evaluate(config, run_with_checkpoints, str(tmp_path / "eval"))
  assert list(results) == ["4"] and set(results["4"]) == {
      "imagenet/top1", "imagenet/top5", "imagenet/loss", "imagenet/ece"}
  [line] = [r.getMessage() for r in caplog.records if "imagenet_sketch" in r.getMessage()]
  assert "is disabled for this run" in line and "/no/such/sketches does not exist" in line


@pytest.mark.parametrize("setting, message", [
    (dict(init="/no/such.npz"), "--init='/no/such.npz' does not exist"),
    (dict(every_checkpoint=True, init="BiT-S-R50x1.npz"), "--every_checkpoint needs a "
     "train.py workdir"),
    (dict(num_classes=10), "has no head for the config's 10 classes"),
    (dict(mapping="imagenet_a.json", num_classes=10), "does not fit the model's 10-way head"),
])
def test_bad_inputs_fail_with_one_line(run_with_checkpoints, tmp_path, setting, message):
  config = _suite(tmp_path)
  if "num_classes" in setting:
    config.num_classes = setting["num_classes"]
    for name in SUITE:
      config.evals[name].enabled = name == "imagenet_a" and "mapping" in setting
  init = setting.get("init", run_with_checkpoints)
  if init == "BiT-S-R50x1.npz":
    init = str(tmp_path / "x.npz")
    open(init, "w").close()
  with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
    cli.evaluate(config, init, str(tmp_path / "eval"),
                      every_checkpoint=setting.get("every_checkpoint", False))


def test_command_line_exits_2_on_an_unknown_kind(tmp_path):
  done = subprocess.run(
      [sys.executable, "-m", "bit_jax.evaluators", "--config=configs/evaluate.py:crop=32",
       "--config.evals.imagenet.kind=top1", "--init=x.npz", f"--workdir={tmp_path}"],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert done.returncode == entry.EXIT_BAD_INPUT, done.stderr[-2000:]
  assert done.stderr.strip().splitlines()[-1] == (
      "error: evals.imagenet.kind='top1' is not valid; valid kinds: classification, fewshot, "
      "real, subset")


def test_unknown_suite_exits_2(capsys):
  with pytest.raises(SystemExit) as exit_info:
    entry.check_config_overrides(["evaluate", "--config=configs/evaluate.py:suite=speed"])
  assert exit_info.value.code == entry.EXIT_BAD_INPUT
  assert capsys.readouterr().err.strip() == (
      "error: bad config argument suite='speed'; valid: robustness")
