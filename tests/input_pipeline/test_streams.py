"""Per-process tf.data streams on real (embedded) TFDS data and on mocks."""
import itertools

import numpy as np
import pytest
import tensorflow_datasets as tfds

import input_pipeline as ip
from input_pipeline import streams
from input_pipeline.errors import InputError

IDS = "keep('index')"  # Fast pp: the provenance index is all these tests need.
AUGMENT = ("decode|inception_crop(6)|flip_lr|value_range(0, 1)|"
           "keep('image', 'index')")


def _take(ds, n):
  return list(itertools.islice(ds.as_numpy_iterator(), n))


def _ids(batches):
  return [int(i) for b in batches for i in b["index"]]


def test_two_processes_read_disjoint_shards_that_cover_the_split(digits):
  split = "train[:200]"
  every = sorted(_ids(_take(ip.eval_dataset(digits, split, IDS, 200)[0], 1)))
  epochs = []
  for p in range(2):
    ds = ip.train_dataset(digits, split, IDS, 1, seed=3, process_index=p,
                          process_count=2)
    epochs.append(_ids(_take(ds, 100)))  # 100 per process: one epoch.
  assert len(set(epochs[0])) == 100 and len(set(epochs[1])) == 100
  assert not set(epochs[0]) & set(epochs[1])
  assert sorted(epochs[0] + epochs[1]) == every


def test_each_epoch_is_a_fresh_permutation(digits):
  ds = ip.train_dataset(digits, "train[:50]", IDS, 10, seed=0)
  ids = _ids(_take(ds, 15))  # Three epochs of 50.
  epochs = [ids[:50], ids[50:100], ids[100:]]
  for epoch in epochs:
    assert sorted(epoch) == sorted(epochs[0]) and len(set(epoch)) == 50
  assert epochs[0] != epochs[1] != epochs[2]


def test_seed_fixes_the_stream(digits):
  def stream(seed):
    return _ids(_take(ip.train_dataset(digits, "train", IDS, 16, seed=seed), 3))
  assert stream(1) == stream(1)
  assert stream(1) != stream(2)


@pytest.mark.parametrize("start_step", [1, 4, 5, 7])  # 5 batches per epoch.
def test_resuming_at_a_step_gives_exactly_the_same_batches(digits, start_step):
  def stream(**kw):
    return ip.train_dataset(digits, "train[:40]", AUGMENT, 8, seed=5, **kw)
  full = _take(stream(), start_step + 4)
  resumed = _take(stream(start_step=start_step), 4)
  for a, b in zip(full[start_step:], resumed):
    np.testing.assert_array_equal(a["index"], b["index"])
    np.testing.assert_array_equal(a["image"], b["image"])  # Same crops too.


def test_cache_does_not_change_the_stream(digits):
  def stream(cache):
    ds = ip.train_dataset(digits, "train[:30]", AUGMENT, 10, cache=cache)
    return _take(ds, 7)
  for a, b in zip(stream(False), stream(True)):
    np.testing.assert_array_equal(a["image"], b["image"])


def test_train_batches_have_the_pp_shapes_and_no_rng(digits):
  pp = "decode|resize(16)|flip_lr|value_range(-1, 1)|onehot(10)"
  (batch,) = _take(ip.train_dataset(digits, "train", pp, 4), 1)
  assert set(batch) == {"image", "label", "index"}
  assert batch["image"].shape == (4, 16, 16, 3)
  assert batch["image"].dtype == np.float32 and batch["label"].shape == (4, 10)
  assert -1 <= batch["image"].min() and batch["image"].max() <= 1


@pytest.mark.parametrize("process_count", [1, 2, 3])
@pytest.mark.parametrize("batch_size", [1, 7, 64, 500, 512])
def test_eval_sees_every_example_exactly_once(digits, process_count,
                                             batch_size):
  seen, lengths = [], set()
  for p in range(process_count):
    ds, num_batches = ip.eval_dataset(digits, "test", IDS, batch_size,
                                      process_index=p,
                                      process_count=process_count)
    batches = list(ds.as_numpy_iterator())
    assert len(batches) == num_batches
    lengths.add(num_batches)
    for b in batches:
      assert b["index"].shape == (batch_size,)
      seen += b["index"][b["_mask"]].tolist()
      assert (b["index"][~b["_mask"]] == 0).all()  # Padding is zeros.
  assert len(lengths) == 1  # Hosts stay in lockstep.
  assert sorted(seen) == sorted(set(seen)) and len(seen) == 500
  largest_shard = -(-500 // process_count)
  assert lengths == {-(-largest_shard // batch_size)}


def test_eval_is_the_same_every_pass(digits):
  ds, _ = ip.eval_dataset(digits, "test[:20]", AUGMENT, 8)
  first, second = list(ds.as_numpy_iterator()), list(ds.as_numpy_iterator())
  for a, b in zip(first, second):
    np.testing.assert_array_equal(a["image"], b["image"])


def test_eval_on_mock_tfds_data_pads_and_masks():
  with tfds.testing.mock_data(num_examples=5):
    source = ip.get_source("cifar10")
    ds, num_batches = ip.eval_dataset(source, "test",
                                      "decode|value_range(0, 1)|keep('image')",
                                      4)
    batches = list(ds.as_numpy_iterator())
  assert num_batches == 2 and len(batches) == 2
  assert batches[0]["_mask"].tolist() == [True] * 4
  assert batches[1]["_mask"].tolist() == [True, False, False, False]
  assert batches[1]["image"].shape == (4, 32, 32, 3)
  assert not batches[1]["image"][1:].any()


def test_train_on_mock_tfds_data():
  with tfds.testing.mock_data(num_examples=6):
    source = ip.get_source("mnist")
    ds = ip.train_dataset(source, "train", "decode|onehot(10)", 4)
    batches = _take(ds, 3)  # Crosses an epoch boundary.
  assert batches[2]["image"].shape == (4, 28, 28, 3)
  assert (batches[2]["label"].sum(-1) == 1).all()


def test_varying_shapes_after_pp_stop_the_stream_with_a_hint(digits):
  ds = ip.train_dataset(digits, "train", "decode|inception_crop", 4)
  with pytest.raises(InputError, match="bad data in bit_digits split 'train'"
                     ".*needs one shape after preprocessing: add resize"):
    _ = [b for b, _ in zip(streams.iterate(ds, digits, "train"), range(50))]


def test_static_shapes_come_from_the_data_when_decoding_hides_them(digits):
  ds = ip.train_dataset(digits, "train", "decode|keep('image')", 4)
  assert ds.element_spec["image"].shape == (4, 8, 8, 3)


def test_an_empty_shard_is_refused(digits):
  with pytest.raises(InputError, match="has no examples"):
    ip.train_dataset(digits, "train[:1]", IDS, 1, process_index=1,
                     process_count=2)


def test_a_corrupt_image_in_a_folder_is_named(tmp_path, write_folder, encode):
  write_folder(tmp_path, {"cat": 3})
  bad = tmp_path / "cat" / "cut.jpg"
  bad.write_bytes(encode((32, 32, 3), "jpeg")[:300])
  source = ip.get_source(f"folder:{tmp_path}")
  ds, _ = ip.eval_dataset(source, "train", "decode|resize(4)", 2)
  with pytest.raises(InputError, match=f"cannot decode image {bad} in "
                     f"folder:{tmp_path} split 'train'.*fix or remove it"):
    list(streams.iterate(ds, source, "train"))


def test_bad_labels_become_an_input_error(digits):
  ds, _ = ip.eval_dataset(digits, "test", "onehot(5)|keep('label')", 50)
  with pytest.raises(InputError, match=r"bad data in bit_digits split 'test'.*"
                     r"onehot\(5\): label out of range"):
    list(streams.iterate(ds, digits, "test"))


def test_a_file_removed_after_listing_becomes_an_input_error(
    tmp_path, write_folder):
  write_folder(tmp_path, {"cat": 2})
  source = ip.get_source(f"folder:{tmp_path}")
  (tmp_path / "cat" / "1.png").unlink()
  with pytest.raises(InputError, match="bad data in folder:.*1.png"):
    ds, _ = ip.eval_dataset(source, "train", "decode", 2)
    list(streams.iterate(ds, source, "train"))
