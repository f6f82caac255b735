"""A TFDS builder for a labelled image array that ships inside a pip package.

Preparing one reads the installed package (no network) and writes ordinary
TFDS files, so `tfds.load(name, split="train[:800]", data_dir=...)` slices,
shards and reports split sizes exactly as for any TFDS dataset. TFDS writes
into an `incomplete.*` folder and renames it when done, and
`datasets.get_source` removes the empty folders a failed preparation leaves.
"""
import numpy as np
import tensorflow_datasets as tfds


class EmbeddedBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Subclasses set the class attributes and implement `load_arrays`."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  CLASS_NAMES: tuple[str, ...] = ()
  IMAGE_SHAPE: tuple[int, int, int] = (0, 0, 1)
  TEST_PER_CLASS = 0  # Test split: this many examples of every class.
  DESCRIPTION = HOMEPAGE = CITATION = LICENSE = ""
  # No code folder to search for checksums (nothing is downloaded). Also
  # sidesteps TFDS 4.9.10's code_path, which imports the `importlib_resources`
  # backport that it only requires on Python < 3.9.
  code_path = None

  def load_arrays(self) -> tuple[np.ndarray, np.ndarray]:
    """Returns (uint8 images [n, h, w], int labels [n]) from the package."""
    raise NotImplementedError

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=self.DESCRIPTION,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=self.IMAGE_SHAPE),
            "label": tfds.features.ClassLabel(names=self.CLASS_NAMES),
            # Position in the package's array: provenance, and lets tests
            # check that shards and splits are disjoint.
            "index": tfds.features.Scalar(np.int64),
        }),
        supervised_keys=("image", "label"),
        homepage=self.HOMEPAGE,
        citation=self.CITATION,
        license=self.LICENSE,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    images, labels = self.load_arrays()
    return {split: self._generate_examples(images, labels, indices)
            for split, indices in self.split_indices(labels).items()}

  def split_indices(self, labels: np.ndarray) -> dict[str, np.ndarray]:
    """{split: indices into the package's arrays}; test is fixed per class."""
    test = fixed_test_indices(labels, self.TEST_PER_CLASS)
    return {"train": np.setdiff1d(np.arange(len(labels)), test), "test": test}

  def _generate_examples(self, images, labels, indices):
    for i in indices:
      yield int(i), {"image": images[i][..., None], "label": int(labels[i]),
                     "index": int(i)}


def fixed_test_indices(labels: np.ndarray, per_class: int) -> np.ndarray:
  """The first `per_class` indices of each class in a permutation seeded 0.

  Fixed forever: changing it changes the dataset, which needs a new VERSION.
  """
  rng = np.random.default_rng(0)
  picks = [rng.permutation(np.flatnonzero(labels == c))[:per_class]
           for c in np.unique(labels)]
  return np.sort(np.concatenate(picks))
