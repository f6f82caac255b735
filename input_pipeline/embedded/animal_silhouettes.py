"""`bit_animal_silhouettes`: 10,000 28x28 animal silhouettes (animal-mnist 0.4).

The upstream ("pretraining") dataset of the offline demo.
"""
import gzip
import importlib.util
import os
import pickle

import numpy as np

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


class _AnimalSubset(BitAnimalSilhouettes, skip_registration=True):
  """Some of the ten classes, relabelled 0..k-1: disjoint upstream and downstream tasks."""

  TEST_PER_CLASS = 100  # train 4,500 / test 500.

  def load_arrays(self):
    images, labels = super().load_arrays()
    kept = [BitAnimalSilhouettes.CLASS_NAMES.index(n) for n in self.CLASS_NAMES]
    mask = np.isin(labels, kept)
    relabel = np.full(len(BitAnimalSilhouettes.CLASS_NAMES), -1)
    relabel[kept] = np.arange(len(kept))
    self._package_index = np.flatnonzero(mask)
    return images[mask], relabel[labels[mask]]

  def _generate_examples(self, images, labels, indices):
    # `index` stays the position in the package, as in bit_animal_silhouettes.
    for key, example in super()._generate_examples(images, labels, indices):
      yield key, {**example, "index": int(self._package_index[key])}


class BitWildAnimals(_AnimalSubset):
  """The demo's upstream: five wild animals of animal-mnist, 900 train / 100 test each."""

  CLASS_NAMES = ("bear", "bird", "elephant", "giraffe", "zebra")
  DESCRIPTION = ("The bear, bird, elephant, giraffe and zebra silhouettes of animal-mnist "
                 "0.4 (labels 0-4 in this order); test = 100 per class as in "
                 "bit_animal_silhouettes, train = the other 4,500.")


class BitFarmAnimals(_AnimalSubset):
  """The demo's downstream: the other five classes, unseen upstream."""

  CLASS_NAMES = ("cat", "cow", "dog", "horse", "sheep")
  DESCRIPTION = ("The cat, cow, dog, horse and sheep silhouettes of animal-mnist 0.4 "
                 "(labels 0-4 in this order); test = 100 per class as in "
                 "bit_animal_silhouettes, train = the other 4,500.")
