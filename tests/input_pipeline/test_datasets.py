"""Resolving names to sources: TFDS (mocked), embedded, folders, and errors."""
import pytest
import tensorflow_datasets as tfds

import input_pipeline as ip
from input_pipeline import datasets
from input_pipeline import image_folder
from input_pipeline.errors import InputError


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
