"""Global arrays on a `data` mesh axis over 8 simulated CPU devices."""
import itertools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest

import input_pipeline as ip
from input_pipeline import feeding
from input_pipeline.errors import InputError


def _mesh(n):
  return jax.make_mesh((n,), ("data",), devices=jax.devices()[:n])


def test_train_batches_are_global_arrays_sharded_on_data(digits):
  mesh = _mesh(8)
  pp = "decode|resize(8)|value_range(0, 1)|onehot(10)"
  it = ip.train_iterator(digits, "train", pp, 16, mesh, seed=2)
  batch = next(it)
  assert batch["image"].shape == (16, 8, 8, 3)
  assert batch["image"].sharding.spec == P("data")
  assert {s.data.shape[0] for s in batch["image"].addressable_shards} == {2}
  local = next(ip.train_dataset(digits, "train", pp, 16, seed=2)
               .as_numpy_iterator())  # One process: local batch == global.
  np.testing.assert_array_equal(np.asarray(batch["image"]), local["image"])


def test_train_iterator_resumes_at_a_step(digits):
  mesh, pp = _mesh(8), "decode|random_crop(6)|flip_lr|keep('image', 'index')"
  full = list(itertools.islice(
      ip.train_iterator(digits, "train[:64]", pp, 16, mesh), 7))
  resumed = list(itertools.islice(
      ip.train_iterator(digits, "train[:64]", pp, 16, mesh, start_step=5), 2))
  for a, b in zip(full[5:], resumed):
    np.testing.assert_array_equal(np.asarray(a["image"]),
                                  np.asarray(b["image"]))


@pytest.mark.parametrize("devices,batch", [(8, 8), (8, 24), (8, 512), (4, 12),
                                           (2, 6), (1, 5)])
def test_eval_sees_every_example_once_for_any_batch_and_devices(
    digits, devices, batch):
  evals = ip.eval_iterator(digits, "test", "keep('index')", batch,
                           _mesh(devices))
  assert evals.num_examples == 500 and len(evals) == -(-500 // batch)
  for _ in range(2):  # Re-iterable, same result.
    seen, count = [], 0
    for b in evals:
      assert b["_mask"].sharding.spec == P("data")
      mask = np.asarray(b["_mask"])
      seen += np.asarray(b["index"])[mask].tolist()
      count += 1
    assert count == len(evals)
    assert sorted(seen) == sorted(set(seen)) and len(seen) == 500


def test_a_jitted_step_counts_real_examples_exactly(digits):
  mesh = _mesh(8)
  evals = ip.eval_iterator(digits, "test", "onehot(10)|keep('label')", 64, mesh)
  per_class = jax.jit(lambda b: jnp.sum(b["label"] * b["_mask"][:, None], 0))
  total = sum(np.asarray(per_class(b)) for b in evals)
  np.testing.assert_array_equal(total, np.full(10, 50.0))


def test_string_fields_stay_host_numpy(tmp_path, write_folder):
  write_folder(tmp_path, {"a": 3, "b": 2})
  evals = ip.eval_iterator(f"folder:{tmp_path}", "train",
                           "decode|resize(4)|keep('image', 'file_name')", 8,
                           _mesh(8))
  (batch,) = list(evals)
  assert isinstance(batch["file_name"], np.ndarray)
  assert isinstance(batch["image"], jax.Array)
  assert sum(bool(f) for f in batch["file_name"]) == 5  # Padding is "".


def test_batch_sizes_that_do_not_divide_the_devices_are_refused():
  with pytest.raises(InputError, match="global batch size 12 must be a "
                     "positive multiple of the 8 devices"):
    feeding.local_batch_size(12, _mesh(8))
  assert feeding.local_batch_size(24, _mesh(8)) == 24


def test_a_mesh_without_a_data_axis_is_refused():
  mesh = jax.make_mesh((8,), ("batch",))
  with pytest.raises(InputError, match="named 'data'"):
    feeding.local_batch_size(8, mesh)
