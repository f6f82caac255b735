import numpy as np

from input_pipeline import ops
from input_pipeline.image_folder import ImageFolder
from input_pipeline.indexed import INDEX, Indexed


def test_index_is_the_position_in_the_split_for_every_process_shard(tmp_path, write_folder):
  write_folder(tmp_path, {"train/a": 4, "train/b": 3, "test/a": 2, "test/b": 3})
  source = Indexed(ImageFolder(str(tmp_path)))
  split = "train[2:]+test"
  order = [ex["file_name"].numpy() for ex in source.source.read(split)]
  assert len(order) == 10
  seen = {}
  for count in (1, 3):
    for p in range(count):
      for ex in source.read(split, p, count):
        seen.setdefault(count, []).append(int(ex[INDEX]))
        assert order[int(ex[INDEX])] == ex["file_name"].numpy()
  assert sorted(seen[1]) == sorted(seen[3]) == list(range(10))
  assert seen[1] == list(range(10))


def test_index_survives_keep_and_the_source_passes_through(tmp_path, write_folder, digits):
  write_folder(tmp_path, {"a": 2, "b": 1})
  folder = ImageFolder(str(tmp_path))
  source = Indexed(folder)
  assert source.class_names == folder.class_names and source.num_classes == 2
  assert Indexed(digits).image_shape == digits.image_shape == (8, 8, 1)
  pp = ops.get_preprocess_fn("decode|keep('image')")
  assert [int(pp(ex)[INDEX]) for ex in source.read("train")] == [0, 1, 2]
  # TFDS: shards of the test split, read by two processes, cover it in order.
  tfds_source = Indexed(digits)
  positions = np.concatenate([tfds_source.positions("test[:7]", p, 2) for p in range(2)])
  assert positions.tolist() == list(range(7))
