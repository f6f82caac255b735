"""`bit_animal_silhouettes`: 10,000 28x28 animal silhouettes (animal-mnist 0.4), and the
demo's upstream and downstream datasets cut from it.

    bit_animals_upstream   10 classes, train 7,500 / test 1,000   the demo pretrains here
    bit_farm_animals        5 classes, train 1,500 / test   500   ... and transfers here
    bit_wild_animals        5 classes, train 4,500 / test   500   classes disjoint from farm

No image is in both `bit_animals_upstream`'s train and `bit_farm_animals`: as ImageNet-21k
holds most of BiT's downstream classes, the upstream knows the farm animals as classes, but
the transfer trains and tests only on images pretraining never saw.
"""
import gzip
import importlib.util
import os
import pickle

import numpy as np
import tensorflow_datasets as tfds

from input_pipeline.embedded.base import EmbeddedBuilder
from input_pipeline.errors import InputError

_FILES = ("data/Animal_MNIST/animal_data_version_3.gz",
          "data/Animal_MNIST/animal_label_version_3.gz")


class BitAnimalSilhouettes(EmbeddedBuilder):
  """Animal silhouettes, 10 classes of 1,000; test = 100 per class."""

  CLASS_NAMES = ("bear", "bird", "cat", "cow", "dog", "elephant", "giraffe",
                 "horse", "sheep", "zebra")
  IMAGE_SHAPE = (28, 28, 1)
  TEST_PER_CLASS = 100  # train 9,000 / test 1,000.
  DESCRIPTION = (
      "Animal-MNIST: 10,000 28x28 grayscale silhouettes of 10 animals (1,000 "
      "each), read from the animal-mnist 0.4 pip package. Split fixed here: "
      "test = 100 per class chosen by a permutation seeded 0, train = the "
      "other 9,000.")
  HOMEPAGE = "https://pypi.org/project/animal-mnist/0.4/"
  CITATION = "Sina Mohammadi, animal-mnist 0.4 (PyPI), 2025."
  LICENSE = "MIT"

  def load_arrays(self):
    spec = importlib.util.find_spec("animal_mnist")
    if spec is None or not spec.submodule_search_locations:
      raise InputError("bit_animal_silhouettes reads the animal-mnist package, "
                       "which is not installed: pip install --no-deps "
                       "animal-mnist==0.4")
    # find_spec, not import: the package's __init__ pulls in tf.keras.
    root = list(spec.submodule_search_locations)[0]
    images, labels = (_load_array(os.path.join(root, f)) for f in _FILES)
    if (images.shape != (10_000, 28, 28) or images.dtype != np.uint8 or
        labels.shape != (10_000,) or set(np.unique(labels)) != set(range(10))):
      raise InputError(f"animal-mnist data in {root} is not the 0.4 release "
                       f"(images {images.shape} {images.dtype}, labels "
                       f"{labels.shape}); pip install --no-deps "
                       "animal-mnist==0.4")
    return images, labels.astype(np.int64)


# The only globals a pickled plain numpy array needs. Anything else in the file
# is refused instead of run: unpickling executes whatever a file names.
def _reconstruct():
  try:
    from numpy._core.multiarray import _reconstruct as fn  # numpy >= 2.
  except ImportError:
    from numpy.core.multiarray import _reconstruct as fn  # numpy 1.
  return fn

_ALLOWED = {("numpy.core.multiarray", "_reconstruct"): _reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
            ("numpy", "ndarray"): lambda: np.ndarray,
            ("numpy", "dtype"): lambda: np.dtype}


class _ArrayUnpickler(pickle.Unpickler):

  def find_class(self, module, name):
    if (module, name) not in _ALLOWED:
      raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
    return _ALLOWED[module, name]()


def _load_array(path: str) -> np.ndarray:
  with gzip.open(path, "rb") as f:
    array = _ArrayUnpickler(f).load()
  if not isinstance(array, np.ndarray) or array.dtype.hasobject:
    raise InputError(f"{path} does not hold a plain numpy array")
  return array


# The downstream's training pool: this many images of each farm class, held out of
# `bit_animals_upstream` so the demo's transfer never trains or tests on an image that
# pretraining saw. Fixed forever (a permutation seeded 1): changing it changes datasets.
FARM_ANIMALS = ("cat", "cow", "dog", "horse", "sheep")
FARM_TRAIN_PER_CLASS = 300


def farm_train_pool(labels: np.ndarray, test: np.ndarray) -> np.ndarray:
  """Package indices of the farm animals' downstream training pool (1,500 images)."""
  rng = np.random.default_rng(1)
  picks = []
  for name in FARM_ANIMALS:
    candidates = np.setdiff1d(
        np.flatnonzero(labels == BitAnimalSilhouettes.CLASS_NAMES.index(name)), test)
    picks.append(rng.permutation(candidates)[:FARM_TRAIN_PER_CLASS])
  return np.sort(np.concatenate(picks))


class BitAnimalsUpstream(BitAnimalSilhouettes):
  """The demo's upstream: all ten animals, less the farm animals' downstream pool."""

  DESCRIPTION = ("The ten animal-mnist 0.4 silhouette classes with their labels, less the "
                 "1,500 farm-animal images `bit_farm_animals` trains on: train 7,500; test = "
                 "the 1,000 of bit_animal_silhouettes (used only to evaluate).")

  def split_indices(self, labels):
    splits = super().split_indices(labels)
    pool = farm_train_pool(labels, splits["test"])
    return {"train": np.setdiff1d(splits["train"], pool), "test": splits["test"]}


class _AnimalSubset(BitAnimalSilhouettes, skip_registration=True):
  """Some of the ten classes, relabelled 0..k-1; `index` stays the package index."""

  VERSION = tfds.core.Version("2.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release.",
                   "2.0.0": "Example keys are package indices; bit_farm_animals' train is "
                            "the 1,500-image pool held out of bit_animals_upstream."}

  def split_indices(self, labels):
    kept = np.isin(labels, [BitAnimalSilhouettes.CLASS_NAMES.index(n)
                            for n in self.CLASS_NAMES])
    return {split: indices[kept[indices]]
            for split, indices in super().split_indices(labels).items()}

  def _generate_examples(self, images, labels, indices):
    relabel = {BitAnimalSilhouettes.CLASS_NAMES.index(n): i
               for i, n in enumerate(self.CLASS_NAMES)}
    for key, example in super()._generate_examples(images, labels, indices):
      yield key, {**example, "label": relabel[example["label"]]}


class BitWildAnimals(_AnimalSubset):
  """Five wild animals, 900 train / 100 test each: classes disjoint from the farm's."""

  CLASS_NAMES = ("bear", "bird", "elephant", "giraffe", "zebra")
  DESCRIPTION = ("The bear, bird, elephant, giraffe and zebra silhouettes of animal-mnist "
                 "0.4 (labels 0-4 in this order); test = 100 per class as in "
                 "bit_animal_silhouettes, train = the other 4,500.")


class BitFarmAnimals(_AnimalSubset):
  """The demo's downstream: 300 train / 100 test of each farm animal, unseen upstream."""

  CLASS_NAMES = FARM_ANIMALS
  DESCRIPTION = ("The cat, cow, dog, horse and sheep silhouettes of animal-mnist 0.4 "
                 "(labels 0-4 in this order); test = 100 per class as in "
                 "bit_animal_silhouettes, train = 300 per class that bit_animals_upstream "
                 "leaves out (1,500).")

  def split_indices(self, labels):
    full = BitAnimalSilhouettes.split_indices(self, labels)
    pool = farm_train_pool(labels, full["test"])
    return {"train": pool, "test": super().split_indices(labels)["test"]}
