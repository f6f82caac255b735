import pytest

from input_pipeline import splits
from input_pipeline.errors import InputError

SIZES = {"train": 11, "test": 4}


def _indices(split):
  ranges = splits.absolute_ranges(split, SIZES, "toy")
  return [(name, i) for name, a, b in ranges for i in range(a, b)]


@pytest.mark.parametrize("split,expect", [
    ("train", [("train", i) for i in range(11)]),
    ("train[:3]", [("train", 0), ("train", 1), ("train", 2)]),
    ("train[-2:]", [("train", 9), ("train", 10)]),
    ("train[50%:]", [("train", i) for i in range(6, 11)]),
    ("test[1:2]+train[:1]", [("test", 1), ("train", 0)]),
    ("train[5:5]", []),
])
def test_absolute_ranges_follow_tfds_slicing(split, expect):
  assert _indices(split) == expect


@pytest.mark.parametrize("split", ["train", "train[3:]+test", "test[:3]"])
@pytest.mark.parametrize("count", [1, 2, 3, 5])
def test_process_shards_are_disjoint_covering_and_even(split, count):
  shards = [_indices(splits.shard(split, i, count)) for i in range(count)]
  everything = _indices(split)
  assert sorted(sum(shards, [])) == sorted(everything)  # Covering, disjoint.
  # TFDS divides each +-joined part evenly on its own.
  assert max(map(len, shards)) - min(map(len, shards)) <= split.count("+") + 1


def test_bad_process_index():
  with pytest.raises(InputError, match=r"process_index 2 is not in \[0, "):
    splits.shard("train", 2, 2)


@pytest.mark.parametrize("split,reason", [
    ("trian", "Unknown split 'trian'"),
    ("train[:99]", "incompatible with 11 examples"),
    ("train[abc]", "Unrecognized split format"),
])
def test_bad_split_lists_valid_splits(split, reason):
  with pytest.raises(InputError) as e:
    splits.absolute_ranges(split, SIZES, "toy")
  message = str(e.value)
  assert reason in message and "valid splits: test, train" in message
  assert "train[:800]" in message and "\n" not in message
