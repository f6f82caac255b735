import csv
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

import input_pipeline
from bit_jax import distributed, features, finetune, models, predict, run_dir
from bit_jax.errors import UserError
from input_pipeline.image_files import ImageFiles, list_images

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ("cat", "dog", "emu")
CROP = 32
BATCH = 8  # One per simulated device; 9 images make a padded second batch.


def make_run(directory, classes=CLASSES):
  """A fine-tuning run directory of tiny-R14 with a random (nonzero) head."""
  model = models.get_model("tiny-R14", num_classes=len(classes))
  # Random numbers in the model's shapes (no compiled init): norms at identity, small kernels.
  shapes = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct(
      (1, CROP, CROP, 3), np.float32))["params"]
  rng = np.random.default_rng(1)
  params = jax.tree_util.tree_map_with_path(
      lambda path, s: (np.ones(s.shape, np.float32) if path[-1].key == "scale" else
                       0.1 * rng.normal(size=s.shape).astype(np.float32)), shapes)
  card = run_dir.ModelCard(model="tiny-R14", class_names=tuple(classes), resize=CROP,
                           crop=CROP, pp_image=run_dir.pp_image(CROP))
  run_dir.write(directory, params, card)
  return str(directory)


def make_labelled_folder(root, classes=CLASSES, per_class=3):
  rng = np.random.default_rng(0)
  for c in classes:
    os.makedirs(os.path.join(root, c), exist_ok=True)
    for i in range(per_class):
      pixels = rng.integers(0, 256, (36, 40, 3), np.uint8)
      Image.fromarray(pixels).save(os.path.join(root, c, f"{i}.png"))
  return str(root)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  return make_run(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
  return make_labelled_folder(tmp_path_factory.mktemp("labelled"))


@pytest.fixture(scope="module")
def mesh():
  return distributed.data_mesh()


def _reference_logits(run, paths, mesh):
  """Logits as the run's own evaluation (`finetune.evaluate`) extracts them: its eval
  preprocessing and batches, the images listed by hand."""
  model, params, card = run_dir.load(run)
  source = ImageFiles(paths, np.zeros(len(paths), np.int64), class_names=card.class_names)
  return features.extract(model, params, source, "files", card.pp_eval(), batch_size=BATCH,
                          mesh=mesh, outputs=("logits",))["logits"]


def test_csv_lists_top_k_classes_and_probabilities_in_order(run, labelled, mesh):
  result = predict.predict(run, [labelled], batch_size=BATCH, mesh=mesh)
  paths = list_images([labelled])
  assert result.names == paths and result.key == "path" and result.labels is None
  # Bitwise: the same batches and preprocessing as the run's own evaluation.
  np.testing.assert_array_equal(result.logits, _reference_logits(run, paths, mesh))
  probs = np.asarray(jax.nn.softmax(result.logits.astype(np.float64), axis=-1))

  rows = list(csv.reader(predict.to_csv(result, CLASSES, top_k=2).splitlines()))
  assert rows[0] == ["path", "class_1", "prob_1", "class_2", "prob_2"]
  for row, path, p in zip(rows[1:], paths, probs):
    order = np.argsort(-p)
    assert row[0] == path
    assert row[1::2] == [CLASSES[order[0]], CLASSES[order[1]]]
    # p is the program predict runs (bitwise); the CSV's 6 decimals round it by <= 5e-7.
    np.testing.assert_allclose([float(x) for x in row[2::2]], p[order[:2]], atol=1e-6)
  assert len(rows) == 1 + len(paths) == 10

  # top_k beyond the classes: every class once, probabilities descending, summing to 1.
  for row in csv.DictReader(predict.to_csv(result, CLASSES, top_k=5).splitlines()):
    assert sorted(row[f"class_{i}"] for i in (1, 2, 3)) == list(CLASSES)
    assert "class_4" not in row
    row_probs = [float(row[f"prob_{i}"]) for i in (1, 2, 3)]
    assert row_probs == sorted(row_probs, reverse=True)
    # Three 6-decimal roundings (<= 5e-7 each) of a float32 softmax (sums to 1 within ~2e-7).
    assert sum(row_probs) == pytest.approx(1.0, abs=3e-6)


def test_labels_metrics_are_finetune_evaluate(run, labelled, mesh, tmp_path, capsys):
  output = tmp_path / "out" / "predictions.csv"
  result = predict.run(run, [f"folder:{labelled}"], str(output), labels=True,
                       batch_size=BATCH, progress=False)
  model, params, card = run_dir.load(run)
  plan = finetune.Plan(resize=CROP, crop=CROP, schedule=(1, 1, 1, 1, 1), mixup_alpha=0.0,
                       base_lr=0.0, batch_size=BATCH, accum_steps=1, eval_batch_size=BATCH,
                       shuffle_buffer=1, log_every_steps=1)
  expected = finetune.evaluate(model, params, input_pipeline.get_source(f"folder:{labelled}"),
                               "train", len(CLASSES), plan, mesh=mesh)
  assert result.metrics["top1"] == expected["top1"]
  assert result.metrics["ece"] == expected["ece"]
  assert result.metrics["num_examples"] == expected["num_test_examples"] == 9
  assert result.metrics["top5"] == 1.0  # Three classes: the top 3 hold every label.
  printed = capsys.readouterr().out
  assert f"top-1 {expected['top1']:.4f}" in printed and "ECE" in printed
  for row in csv.DictReader(open(output)):  # The label column is the class folder.
    assert row["label"] == os.path.basename(os.path.dirname(row["path"]))


def test_tfds_split_rows_are_indices_in_split_order(run, mesh, tmp_path):
  data_dir = str(tmp_path / "tfds")
  result = predict.predict(run, ["tfds:bit_digits:test[:11]"], data_dir=data_dir,
                           batch_size=BATCH, mesh=mesh)
  assert result.key == "index" and result.names == [str(i) for i in range(11)]
  model, params, card = run_dir.load(run)
  source = input_pipeline.get_source("bit_digits", data_dir)
  logits = features.extract(model, params, source, "test[:11]",
                            f"{card.pp_image}|keep('image', 'label')", batch_size=BATCH,
                            mesh=mesh, outputs=("logits",))["logits"]
  np.testing.assert_array_equal(result.logits, logits)
  # Its classes are not the run's: --labels refuses, naming both.
  with pytest.raises(UserError, match="has classes 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, but the run "
                     "was fine-tuned on the classes cat, dog, emu") as e:
    predict.predict(run, ["tfds:bit_digits:test"], labels=True, data_dir=data_dir)
  assert "\n" not in str(e.value)


def test_undecodable_images_are_reported_by_path_and_the_rest_predicted(run, mesh, tmp_path,
                                                                         capsys):
  pixels = np.random.default_rng(3).integers(0, 256, (36, 36, 3), np.uint8)
  folder = tmp_path / "mixed"
  os.makedirs(folder)
  Image.fromarray(pixels).save(folder / "rgb.png")
  Image.fromarray(pixels).convert("L").save(folder / "gray.jpg")
  Image.fromarray(pixels).convert("CMYK").save(folder / "cmyk.jpg")
  Image.fromarray(pixels).convert("RGBA").save(folder / "rgba.png")
  Image.fromarray(pixels[..., 0].astype(np.uint16) * 257).save(folder / "sixteen_bit.png")
  Image.fromarray(pixels[:2, :3]).save(folder / "tiny.png")
  (folder / "truncated.jpg").write_bytes((folder / "gray.jpg").read_bytes()[:120])
  (folder / "junk.png").write_bytes(b"not an image at all")

  output = tmp_path / "p.csv"
  result = predict.run(run, [str(folder)], str(output), batch_size=BATCH, progress=False)
  bad = {str(folder / "truncated.jpg"), str(folder / "junk.png")}
  assert set(result.skipped) == bad
  good = [p for p in list_images([str(folder)]) if p not in bad]
  assert [r["path"] for r in csv.DictReader(open(output))] == good
  assert np.isfinite(result.logits).all() and result.logits.shape == (6, 3)
  stderr = capsys.readouterr().err
  for path in bad:
    assert f"skipped {path}: cannot decode" in stderr


def test_bad_inputs_fail_with_one_line(run, labelled, tmp_path):
  cases = [
      (["nosuch:thing"], {}, "nosuch:thing does not exist; --images takes"),
      (["tfds:bit_digits"], {}, "write tfds:NAME:SPLIT"),
      ([labelled], {"labels": True}, "--labels needs labelled images"),
      ([f"folder:{labelled}", labelled], {}, "cannot be combined"),
      ([labelled], {"split": "test"}, "--split=test picks a split sub-folder"),
      ([f"folder:{labelled}"], {"split": "test"}, "bad split 'test'.*valid splits: train"),
  ]
  for images, kwargs, message in cases:
    with pytest.raises(UserError, match=message) as e:
      predict.predict(run, images, **kwargs)
    assert "\n" not in str(e.value)
  other = make_labelled_folder(tmp_path / "other", ("ant", "bee", "cat"), per_class=1)
  with pytest.raises(UserError, match="has classes ant, bee, cat, but the run was fine-tuned"):
    predict.predict(run, [f"folder:{other}"], labels=True)
  with pytest.raises(UserError, match="--top_k must be at least 1"):
    predict.run(run, [labelled], str(tmp_path / "p.csv"), top_k=0)


def test_command_line_bad_model_dir_exits_2_with_one_line(tmp_path):
  done = subprocess.run(
      [sys.executable, "-m", "bit_jax.predict", f"--model_dir={tmp_path}",
       f"--images={tmp_path}", f"--output={tmp_path / 'predictions.csv'}"],
      cwd=ROOT, capture_output=True, text=True, timeout=120,
      env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
  assert done.returncode == 2, done.stderr
  errors = [l for l in done.stderr.splitlines() if l.startswith("error:")]
  assert errors == [done.stderr.strip().splitlines()[-1]]
  assert "is not a fine-tuning run directory" in errors[0] and "model.json" in errors[0]
  assert not (tmp_path / "predictions.csv").exists()
