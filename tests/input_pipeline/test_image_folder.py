import os

import numpy as np
import pytest

import input_pipeline as ip
from input_pipeline.errors import InputError
from input_pipeline.image_folder import ImageFolder


def _read(source, split="train", **kw):
  return [{k: v.numpy() for k, v in ex.items()}
          for ex in source.read(split, **kw)]


def test_class_layout_labels_sorted_class_folders(tmp_path, write_folder):
  write_folder(tmp_path, {"zebra": 2, "ant": 3, "moth": 1})
  source = ImageFolder(str(tmp_path))
  assert source.class_names == ("ant", "moth", "zebra")
  assert source.image_shape is None  # Files of any size: unknown until decoded.
  assert source.split_sizes == {"train": 6}
  examples = _read(source)
  assert len(examples) == 6
  for ex in examples:
    folder = os.path.basename(os.path.dirname(ex["file_name"].decode()))
    assert source.class_names[ex["label"]] == folder
    assert ex["image"][:4] == b"\x89PNG"  # Encoded: `decode` decodes.


def test_split_layout_shares_class_ids_across_splits(tmp_path, write_folder):
  write_folder(tmp_path, {"train/cat": 2, "train/dog": 2, "test/dog": 1,
                          "test/emu": 1})
  source = ImageFolder(str(tmp_path))
  assert source.class_names == ("cat", "dog", "emu")
  assert source.split_sizes == {"test": 2, "train": 4}
  test_labels = sorted(ex["label"] for ex in _read(source, "test"))
  assert test_labels == [1, 2]
  assert source.num_examples("train[:50%]+test") == 4


def test_order_is_fixed_and_mixed_so_slices_sample_all_classes(
    tmp_path, write_folder):
  write_folder(tmp_path, {c: 10 for c in "abcd"})
  first = [ex["file_name"] for ex in _read(ImageFolder(str(tmp_path)))]
  again = [ex["file_name"] for ex in _read(ImageFolder(str(tmp_path)))]
  assert first == again
  head = _read(ImageFolder(str(tmp_path)), "train[:25%]")
  assert len({ex["label"] for ex in head}) > 1


def test_process_shards_are_disjoint_and_covering(tmp_path, write_folder):
  write_folder(tmp_path, {"a": 4, "b": 3})
  source = ImageFolder(str(tmp_path))
  shards = [[ex["file_name"] for ex in _read(source, "train", process_index=i,
                                             process_count=2)]
            for i in range(2)]
  assert sorted(len(s) for s in shards) == [3, 4]
  assert not set(shards[0]) & set(shards[1])
  assert sorted(shards[0] + shards[1]) == sorted(
      ex["file_name"] for ex in _read(source))


def test_hidden_and_non_image_files_are_ignored(tmp_path, write_folder):
  write_folder(tmp_path, {"a": 2})
  (tmp_path / "a" / ".DS_Store").write_bytes(b"junk")
  (tmp_path / "a" / "notes.txt").write_text("not an image")
  (tmp_path / ".git").mkdir()
  assert ImageFolder(str(tmp_path)).split_sizes == {"train": 2}


def test_gray_rgb_and_rgba_files_decode_to_rgb_batches(tmp_path, encode):
  os.makedirs(tmp_path / "x")
  for name, shape, fmt in [("gray.png", (5, 4, 1), "png"),
                           ("rgba.png", (4, 6, 4), "png"),
                           ("gray.jpg", (7, 5, 1), "jpeg"),
                           ("rgb.jpeg", (3, 3, 3), "jpeg")]:
    (tmp_path / "x" / name).write_bytes(encode(shape, fmt))
  source = ip.get_source(f"folder:{tmp_path}")
  ds, num_batches = ip.eval_dataset(source, "train",
                                    "decode|resize(4)|keep('image')", 4)
  (batch,) = list(ds.as_numpy_iterator())
  assert num_batches == 1 and batch["image"].shape == (4, 4, 4, 3)
  assert batch["_mask"].all()


@pytest.mark.parametrize("make,words", [
    (lambda root: None, ["does not exist"]),
    (lambda root: os.makedirs(root), ["has no sub-folders", "<class>/<image>"]),
    (lambda root: os.makedirs(os.path.join(root, "cat")),
     ["has no images", ".jpg", "<class>/<image>"]),
])
def test_missing_or_empty_folders_fail_with_the_expected_layout(
    tmp_path, make, words):
  root = str(tmp_path / "images")
  make(root)
  with pytest.raises(InputError) as e:
    ip.get_source(f"folder:{root}")
  for word in words:
    assert word in str(e.value)


def test_an_empty_split_folder_is_named(tmp_path, write_folder):
  write_folder(tmp_path, {"train/cat": 2})
  os.makedirs(tmp_path / "test" / "cat")
  with pytest.raises(InputError, match=f"{tmp_path}/test has no images"):
    ImageFolder(str(tmp_path))


@pytest.mark.parametrize("content,why", [
    (b"", "empty file"), (b"<html>oops</html>", "unknown header")])
def test_junk_files_are_named_when_the_folder_opens(tmp_path, write_folder,
                                                    content, why):
  write_folder(tmp_path, {"cat": 2})
  bad = tmp_path / "cat" / "bad.jpg"
  bad.write_bytes(content)
  with pytest.raises(InputError, match=f"{bad} is not a JPEG.*{why}"):
    ImageFolder(str(tmp_path))


def test_first_undecodable_finds_a_truncated_jpeg(tmp_path, write_folder,
                                                  encode):
  write_folder(tmp_path, {"cat": 3})
  bad = tmp_path / "cat" / "cut.jpg"
  bad.write_bytes(encode((32, 32, 3), "jpeg")[:300])  # Header intact.
  source = ImageFolder(str(tmp_path))  # The header check passes...
  assert source.first_undecodable("train") == str(bad)  # ...decoding fails.
  os.remove(bad)
  assert ImageFolder(str(tmp_path)).first_undecodable("train") is None


def test_bad_split_lists_the_folder_splits(tmp_path, write_folder):
  write_folder(tmp_path, {"cat": 2})
  with pytest.raises(InputError, match="valid splits: train;"):
    ImageFolder(str(tmp_path)).read("test")


def test_labels_are_int64_and_paths_absolute(tmp_path, write_folder,
                                             monkeypatch):
  write_folder(tmp_path, {"cat": 1})
  monkeypatch.chdir(tmp_path)
  (ex,) = _read(ImageFolder("."))
  assert ex["label"].dtype == np.int64
  assert os.path.isabs(ex["file_name"].decode())


def test_class_folders_without_images_are_named_not_read_as_splits(tmp_path):
  for name in ("cat", "dog"):
    os.makedirs(tmp_path / name)
  with pytest.raises(InputError) as e:
    ImageFolder(str(tmp_path))
  assert str(e.value) == (
      f"image folder {tmp_path} has no images (.bmp, .gif, .jpeg, .jpg, .png, "
      f".webp) in its class sub-folders (cat, dog); expected {tmp_path}/<class>/"
      f"<image> or {tmp_path}/<split>/<class>/<image>")


def test_check_split_fails_at_once_on_a_missing_or_empty_split(tmp_path,
                                                               write_folder):
  write_folder(tmp_path, {"train/cat": 2, "train/dog": 1})
  source = ImageFolder(str(tmp_path))
  assert ip.check_split(source, "train") == 3
  assert ip.check_split(f"folder:{tmp_path}", "train[1:]") == 2
  with pytest.raises(InputError, match=r"bad split 'test' .*valid splits: train;"):
    ip.check_split(source, "test")  # No test/ folder: fails before any training.
  with pytest.raises(InputError, match=(
      r"^split 'train\[:0\]' of folder:.* holds no examples; its splits: "
      r"train \(3\); slice like")):
    ip.check_split(source, "train[:0]")
