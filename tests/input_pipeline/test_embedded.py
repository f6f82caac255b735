"""The embedded datasets behave as real TFDS datasets, built offline."""
import gzip
import importlib.util
import os
import pickle

import numpy as np
import pytest
from sklearn.datasets import load_digits
import tensorflow_datasets as tfds

import input_pipeline as ip
from input_pipeline import embedded
from input_pipeline.embedded import animal_silhouettes
from input_pipeline.embedded.digits import BitDigits
from input_pipeline.errors import InputError

SIZES = {"bit_animal_silhouettes": (9000, 1000, 10, (28, 28, 1)),
         "bit_animals_upstream": (7500, 1000, 10, (28, 28, 1)),
         "bit_digits": (1297, 500, 10, (8, 8, 1))}


def _load(name, split, data_dir):
  """Through plain TFDS: nothing of ours but the registered builder."""
  ds = tfds.load(name, split=split, data_dir=data_dir)
  return [{k: v.numpy() for k, v in ex.items()} for ex in ds]


@pytest.mark.parametrize("name", sorted(SIZES))
def test_split_sizes_and_metadata(name, tfds_dir):
  train, test, classes, shape = SIZES[name]
  info = tfds.builder(name, data_dir=tfds_dir).info
  assert info.splits["train"].num_examples == train
  assert info.splits["test"].num_examples == test
  assert info.features["label"].num_classes == classes
  assert info.features["image"].shape == shape
  assert info.supervised_keys == ("image", "label")
  assert info.redistribution_info.license and info.homepage and info.citation
  assert ip.num_examples(name, "train[:800]", tfds_dir) == 800
  assert ip.num_examples(name, "train[10%:20%]+test", tfds_dir) == (
      round(train * 0.2) - round(train * 0.1) + test)


# bit_animals_upstream leaves the farm pool out; its own test checks what it covers.
@pytest.mark.parametrize("name", ["bit_animal_silhouettes", "bit_digits"])
def test_splits_are_disjoint_cover_the_package_and_test_is_balanced(
    name, tfds_dir):
  train, test, classes, _ = SIZES[name]
  train_ex = _load(name, "train", tfds_dir)
  test_ex = _load(name, "test", tfds_dir)
  train_ids = {ex["index"] for ex in train_ex}
  test_ids = {ex["index"] for ex in test_ex}
  assert len(train_ids) == train and len(test_ids) == test
  assert not train_ids & test_ids
  assert train_ids | test_ids == set(range(train + test))
  per_class = np.bincount([ex["label"] for ex in test_ex], minlength=classes)
  assert (per_class == test // classes).all()


def test_slicing_reads_exactly_the_sliced_examples(tfds_dir):
  everything = [ex["index"] for ex in _load("bit_digits", "train", tfds_dir)]
  assert [ex["index"] for ex in _load("bit_digits", "train[:800]", tfds_dir)
          ] == everything[:800]
  assert [ex["index"] for ex in _load("bit_digits", "train[-5%:]", tfds_dir)
          ] == everything[-65:]


def test_digits_pixels_and_labels_match_scikit_learn(tfds_dir):
  source = load_digits()
  for ex in _load("bit_digits", "test[:50]", tfds_dir):
    i = ex["index"]
    expect = np.round(source.images[i] * 255 / 16).astype(np.uint8)
    np.testing.assert_array_equal(ex["image"][..., 0], expect)
    assert ex["label"] == source.target[i]


def test_animal_pixels_and_labels_match_the_package(tfds_dir):
  images, labels = embedded.BitAnimalSilhouettes(
      data_dir=tfds_dir).load_arrays()
  for ex in _load("bit_animal_silhouettes", "test[:50]", tfds_dir):
    np.testing.assert_array_equal(ex["image"][..., 0], images[ex["index"]])
    assert ex["label"] == labels[ex["index"]]
  # Alphabetical class order, checked on the package's first (bear) image.
  assert labels[0] == 0 and tfds.builder(
      "bit_animal_silhouettes", data_dir=tfds_dir).info.features[
          "label"].names[0] == "bear"


def test_a_failed_preparation_leaves_nothing_behind(tmp_path, monkeypatch):
  def broken(self, images, labels, indices):
    for n, i in enumerate(indices):
      if n == 100:
        raise OSError("disk on fire")
      yield int(i), {"image": images[i][..., None], "label": int(labels[i]),
                     "index": int(i)}
  monkeypatch.setattr(BitDigits, "_generate_examples", broken)
  with pytest.raises(InputError, match="could not prepare bit_digits.*disk on "
                     "fire"):
    ip.get_source("bit_digits", str(tmp_path))
  files = [os.path.join(d, f) for d, _, fs in os.walk(tmp_path) for f in fs]
  assert files == []
  assert not (tmp_path / "bit_digits").exists()
  monkeypatch.undo()  # The next attempt succeeds from scratch.
  assert ip.num_examples("bit_digits", "test", str(tmp_path)) == 500


def test_a_missing_package_names_the_pip_command(tmp_path, monkeypatch):
  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None
                      if name == "animal_mnist" else real(name, *a))
  with pytest.raises(InputError, match="pip install --no-deps "
                     "animal-mnist==0.4"):
    ip.get_source("bit_animal_silhouettes", str(tmp_path))
  assert not (tmp_path / "bit_animal_silhouettes").exists()


class _Evil:
  def __reduce__(self):
    return (os.mkdir, ("/tmp/should_not_exist_bit_pickle",))


def test_package_arrays_load_without_running_pickled_code(tmp_path):
  path = tmp_path / "evil.gz"
  with gzip.open(path, "wb") as f:
    pickle.dump(_Evil(), f)
  with pytest.raises(pickle.UnpicklingError, match="refusing to load"):
    animal_silhouettes._load_array(str(path))
  assert not os.path.exists("/tmp/should_not_exist_bit_pickle")
  plain = tmp_path / "plain.gz"
  with gzip.open(plain, "wb") as f:
    pickle.dump(np.arange(6, dtype=np.uint8).reshape(2, 3), f)
  np.testing.assert_array_equal(animal_silhouettes._load_array(str(plain)),
                                np.arange(6).reshape(2, 3))


def test_wild_and_farm_animals_split_the_ten_classes(tfds_dir):
  """Disjoint classes, relabelled 0-4, images unchanged; farm trains on its pool only."""
  full = {ex["index"]: ex for ex in _load("bit_animal_silhouettes", "train+test", tfds_dir)}
  names = animal_silhouettes.BitAnimalSilhouettes.CLASS_NAMES
  seen = set()
  for name, builder, num_train in (
      ("bit_wild_animals", animal_silhouettes.BitWildAnimals, 4500),
      ("bit_farm_animals", animal_silhouettes.BitFarmAnimals, 1500)):
    info = tfds.builder(name, data_dir=tfds_dir).info
    assert info.splits["train"].num_examples == num_train
    assert info.splits["test"].num_examples == 500
    assert info.features["label"].names == list(builder.CLASS_NAMES)
    examples = _load(name, "train+test", tfds_dir)
    for ex in examples[::97]:
      original = full[ex["index"]]
      np.testing.assert_array_equal(ex["image"], original["image"])
      assert builder.CLASS_NAMES[ex["label"]] == names[original["label"]]
    indices = {ex["index"] for ex in examples}
    assert len(indices) == num_train + 500 and not indices & seen
    seen |= indices
  test = {ex["index"] for ex in _load("bit_animal_silhouettes", "test", tfds_dir)}
  assert {i for i in seen if i in test} == test  # Both keep the ten-class test split.
  assert np.bincount([full[i]["label"] for i in seen - test], minlength=10).tolist() == [
      300 if n in animal_silhouettes.FARM_ANIMALS else 900 for n in names]


def test_upstream_never_holds_an_image_the_farm_transfer_uses(tfds_dir):
  """The demo pretrains on bit_animals_upstream and transfers to bit_farm_animals."""
  upstream_train = _load("bit_animals_upstream", "train", tfds_dir)
  farm = {ex["index"] for ex in _load("bit_farm_animals", "train+test", tfds_dir)}
  upstream = {ex["index"] for ex in upstream_train}
  assert len(upstream) == 7500 and not upstream & farm
  full = {ex["index"]: ex for ex in _load("bit_animal_silhouettes", "train", tfds_dir)}
  assert upstream | (farm & set(full)) == set(full)  # Nothing else is left out.
  for ex in upstream_train[::101]:  # Labels as in bit_animal_silhouettes.
    assert ex["label"] == full[ex["index"]]["label"]
    np.testing.assert_array_equal(ex["image"], full[ex["index"]]["image"])
