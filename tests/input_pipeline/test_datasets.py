"""Resolving names to sources: TFDS (mocked), embedded, folders, and errors."""
import pytest
import tensorflow_datasets as tfds

import input_pipeline as ip
from input_pipeline import datasets
from input_pipeline import derived
from input_pipeline import image_folder
from input_pipeline.embedded.animal_silhouettes import FARM_ANIMALS
from input_pipeline.errors import InputError
from input_pipeline.image_files import ImageFiles
from input_pipeline.indexed import Indexed


def test_tfds_source_on_mock_data_reads_encoded_images_and_counts():
  with tfds.testing.mock_data(num_examples=7):
    source = ip.get_source("cifar10", "/nonexistent")
    assert source.name == "cifar10" and source.num_classes == 10
    ds = source.read("train")
    assert ds.element_spec["image"].dtype.name == "string"  # decode op's job.
    # Mock data has no split metadata and ignores slicing: counted, not
    # looked up, so the number always matches what is read.
    assert ip.num_examples(source, "train[:3]") == 7
    decoded = ip.get_preprocess_fn("decode")(next(iter(ds)))
    assert decoded["image"].shape == (32, 32, 3)


def test_unknown_dataset_names_the_valid_choices():
  with pytest.raises(InputError) as e:
    ip.get_source("cifar1O")
  message = str(e.value)
  assert "unknown dataset 'cifar1O'" in message
  assert "did you mean" in message and "cifar10" in message
  for choice in ("bit_animal_silhouettes", "bit_digits", "folder:",
                 "tfds.list_builders()"):
    assert choice in message
  assert "\n" not in message


def test_unknown_version_is_one_line_with_the_versions(tmp_path):
  with pytest.raises(InputError, match=r"cannot load dataset 'cifar10:9\.9\.9'"
                     r".*only: 3\.0\.2"):
    ip.get_source("cifar10:9.9.9", str(tmp_path))


def test_unprepared_tfds_dataset_without_downloads_says_how_to_build(tmp_path):
  with pytest.raises(InputError, match="not prepared in .*tfds build mnist"):
    ip.get_source("mnist", str(tmp_path), download=False)
  assert list(tmp_path.iterdir()) == []


def test_bad_split_of_a_tfds_dataset_lists_its_splits(digits):
  for split in ("validation", "train[:5000]"):
    with pytest.raises(InputError) as e:
      digits.read(split)
    assert "valid splits: test, train" in str(e.value)
    assert "bit_digits" in str(e.value)


def test_embedded_names_resolve_to_prepared_sources(digits, tfds_dir):
  assert isinstance(digits, datasets.TfdsSource)
  assert digits.num_classes == 10
  assert digits.builder.is_prepared()
  assert digits.num_examples("train", 1, 2) == 648  # 1297 = 649 + 648.


def test_embedded_data_another_process_prepared_meanwhile_is_used(tmp_path, monkeypatch):
  # The hosts of one run prepare the same embedded data at once: TFDS renames each one's
  # incomplete.* folder into place, and every rename after the first fails.
  data_dir = str(tmp_path)
  prepare = tfds.core.DatasetBuilder.download_and_prepare

  def another_process_wins_the_rename(self, *args, **kwargs):
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", prepare)
    tfds.builder(self.name, data_dir=data_dir).download_and_prepare(*args, **kwargs)
    raise OSError(f"Cannot rename {data_dir}/{self.name}/incomplete.ABC_1.0.0. "
                  f"Destination {data_dir}/{self.name}/1.0.0 already exists.")

  monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare",
                      another_process_wins_the_rename)
  source = ip.get_source("bit_digits", data_dir)
  assert ip.num_examples(source, "train") > 0


def test_folder_prefix_resolves_to_an_image_folder(tmp_path, write_folder):
  root = write_folder(tmp_path, {"cat": 2, "dog": 1})
  source = ip.get_source(f"folder:{root}")
  assert isinstance(source, image_folder.ImageFolder)
  assert ip.num_examples(f"folder:{root}", "train") == 3


def test_versions_and_configs_pass_through_to_tfds(tfds_dir):
  assert ip.num_examples("bit_digits:1.0.0", "test", tfds_dir) == 500
  with tfds.testing.mock_data(num_examples=2):
    assert ip.get_source("cifar10:3.0.2").builder.version == "3.0.2"


# --- Metadata: num_classes, class_names, image_shape -----------------------------------------

def test_tfds_sources_carry_their_metadata(digits, tfds_dir):
  assert digits.class_names == tuple(str(d) for d in range(10))
  assert digits.image_shape == (8, 8, 1)
  farm = ip.get_source("bit_farm_animals", tfds_dir)
  assert (farm.num_classes, farm.class_names, farm.image_shape) == (5, FARM_ANIMALS, (28, 28, 1))


def test_tfds_metadata_under_mock_data_is_what_the_features_say():
  with tfds.testing.mock_data(num_examples=2):
    flowers = ip.get_source("oxford_flowers102", "/nonexistent")
    celeb_a = ip.get_source("celeb_a", "/nonexistent")  # Attributes, no "label".
  assert flowers.num_classes == len(flowers.class_names) == 102
  assert flowers.class_names[0] == "pink primrose"
  assert flowers.image_shape == (None, None, 3)  # Images of any size.
  assert (celeb_a.num_classes, celeb_a.class_names) == (None, None)
  assert celeb_a.image_shape == (218, 178, 3)


def _every_kind(tmp_path, write_folder, digits):
  folder = image_folder.ImageFolder(write_folder(tmp_path, {"cat": 2, "dog": 1}))
  return {"tfds": digits, "folder": folder,
          "files": ImageFiles.from_folder(folder, "train"),
          "unlabelled files": ImageFiles(folder._select("train", 0, 1)[0]),
          "subset": derived.Subset(digits, "train", [3, 1]),
          "mapped": derived.Mapped(digits, lambda ex: ex),
          "relabelled": derived.Mapped(digits, lambda ex: ex, num_classes=2),
          "indexed": Indexed(folder)}


def test_every_kind_of_source_has_the_metadata_with_one_meaning(tmp_path, write_folder, digits):
  sources = _every_kind(tmp_path, write_folder, digits)
  for kind, source in sources.items():
    n, names, shape = source.num_classes, source.class_names, source.image_shape
    assert n is None or isinstance(n, int), kind
    assert names is None or (isinstance(names, tuple) and len(names) == n
                             and all(isinstance(name, str) for name in names)), kind
    assert shape is None or (isinstance(shape, tuple) and len(shape) == 3 and all(
        d is None or isinstance(d, int) for d in shape)), kind
  metadata = {kind: (s.num_classes, s.class_names, s.image_shape) for kind, s in sources.items()}
  digit_names = tuple(str(d) for d in range(10))
  assert metadata == {
      "tfds": (10, digit_names, (8, 8, 1)),
      "folder": (2, ("cat", "dog"), None),  # Files of any size.
      "files": (2, ("cat", "dog"), None),
      "unlabelled files": (None, None, None),
      "subset": (10, digit_names, (8, 8, 1)),
      "mapped": (10, digit_names, (8, 8, 1)),
      "relabelled": (2, None, (8, 8, 1)),  # New labels: the digits' names no longer apply.
      "indexed": (2, ("cat", "dog"), None)}


def test_mapped_takes_the_metadata_its_function_changes(digits):
  mapped = derived.Mapped(digits, lambda ex: ex, num_classes=2, class_names=("odd", "even"),
                          image_shape=(8, 8, 3))
  assert (mapped.num_classes, mapped.class_names, mapped.image_shape) == (
      2, ("odd", "even"), (8, 8, 3))
