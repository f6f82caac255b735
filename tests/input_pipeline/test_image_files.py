import os

import numpy as np
import pytest
from PIL import Image

from input_pipeline.errors import InputError
from input_pipeline.image_files import ImageFiles, list_images, undecodable
from input_pipeline.image_folder import ImageFolder


def _save(path, image):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  image.save(path)
  return str(path)


def _read(source, split="files", **kw):
  return [{k: v.numpy() for k, v in ex.items()} for ex in source.read(split, **kw)]


def test_list_images_walks_folders_sorted_and_keeps_named_files(tmp_path, write_folder):
  write_folder(tmp_path / "photos", {"b": 1, "a/deeper": 2})
  (tmp_path / "photos" / "notes.txt").write_text("x")
  (tmp_path / "photos" / ".hidden.png").write_bytes(b"x")
  named = tmp_path / "scan.dat"
  named.write_bytes(b"x")
  assert list_images([str(tmp_path / "photos"), str(named)]) == [
      str(tmp_path / "photos/a/deeper/0.png"), str(tmp_path / "photos/a/deeper/1.png"),
      str(tmp_path / "photos/b/0.png"), str(named)]
  with pytest.raises(InputError, match="missing.jpg is not an image file or a folder"):
    list_images([str(tmp_path / "missing.jpg")])
  os.makedirs(tmp_path / "empty")
  with pytest.raises(InputError, match="has no image files"):
    list_images([str(tmp_path / "empty")])


def test_files_read_in_order_sliced_and_sharded(tmp_path, write_folder):
  write_folder(tmp_path, {"x": 5})
  paths = list_images([str(tmp_path)])
  source = ImageFiles(paths, [0, 1, 2, 0, 1], class_names=["a", "b", "c"])
  assert source.num_classes == 3 and source.split_sizes == {"files": 5}
  examples = _read(source)
  assert [e["file_name"].decode() for e in examples] == paths
  assert [e["label"] for e in examples] == [0, 1, 2, 0, 1]
  assert examples[0]["image"][:4] == b"\x89PNG"
  assert source.num_examples("files[1:3]") == 2
  shards = [e["file_name"].decode() for p in range(2)
            for e in _read(source, process_index=p, process_count=2)]
  assert shards == paths
  assert "label" not in _read(ImageFiles(paths))[0]
  with pytest.raises(InputError, match="bad split 'files\\+files'"):
    source.num_examples("files+files")
  assert list(source.without([paths[1]]).paths) == paths[:1] + paths[2:]
  assert list(source.without([paths[1]]).labels) == [0, 2, 0, 1]


def test_from_folder_keeps_the_folders_order_and_labels(tmp_path, write_folder):
  write_folder(tmp_path, {"train/cat": 2, "train/dog": 3, "test/dog": 1})
  folder = ImageFolder(str(tmp_path))
  files = ImageFiles.from_folder(folder, "train")
  want = [(e["file_name"], e["label"]) for e in _read(folder, "train")]
  assert [(e["file_name"], e["label"]) for e in _read(files)] == want
  assert files.class_names == ("cat", "dog") and files.image_shape is None


def test_undecodable_finds_broken_files_not_odd_ones(tmp_path):
  pixels = np.random.default_rng(0).integers(0, 256, (20, 24, 3), np.uint8)
  good = [_save(tmp_path / "rgb.jpg", Image.fromarray(pixels)),
          _save(tmp_path / "gray.png", Image.fromarray(pixels).convert("L")),
          _save(tmp_path / "cmyk.jpg", Image.fromarray(pixels).convert("CMYK")),
          _save(tmp_path / "16bit.png", Image.fromarray(pixels[..., 0].astype(np.uint16))),
          _save(tmp_path / "tiny.png", Image.fromarray(pixels[:1, :1]))]
  truncated = tmp_path / "truncated.jpg"
  truncated.write_bytes((tmp_path / "rgb.jpg").read_bytes()[:150])
  empty = tmp_path / "empty.png"
  empty.write_bytes(b"")
  bad = undecodable(good + [str(truncated), str(empty)])
  assert sorted(bad) == sorted([str(truncated), str(empty)])
  assert all(why and "\n" not in why for why in bad.values())
  assert undecodable([]) == {}
