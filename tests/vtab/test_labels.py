"""Label preprocessing of the structured VTAB tasks on hand-made TFDS-shaped examples.

Every case runs eagerly and inside `tf.data` (graph mode with unknown object counts, as TFDS
yields them). Expected labels come from the rules in task_adaptation, worked out by hand at and
just past every threshold.
"""

import numpy as np
import pytest
import tensorflow as tf

from bit_jax.vtab import labels

IMAGE = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)


def above(x):
  """The next float32 after `x`: the smallest value in the bin above threshold `x`."""
  return float(np.nextafter(np.float32(x), np.float32(np.inf)))


def eager(fn, example):
  return fn(tf.nest.map_structure(tf.constant, example))


def in_graph(fn, example):
  """`fn` inside tf.data, with the object dimension unknown while tracing."""
  example = tf.nest.map_structure(tf.constant, example)
  signature = tf.nest.map_structure(
      lambda t: tf.TensorSpec([None] * t.shape.rank if t.shape.rank else [], t.dtype), example)
  ds = tf.data.Dataset.from_generator(lambda: iter([example]), output_signature=signature)
  return next(iter(ds.map(fn)))


RUNS = pytest.mark.parametrize("run", [eager, in_graph], ids=["eager", "tf.data"])


def clevr(depths):
  """A CLEVR example with one object per depth (pixel_coords z)."""
  n = len(depths)
  return {"image": IMAGE, "file_name": "x.png",
          "objects": {"size": np.zeros(n, np.int64), "shape": np.ones(n, np.int64),
                      "pixel_coords": np.array([[10.0, 20.0, d] for d in depths],
                                               np.float32).reshape(n, 3)}}


@RUNS
@pytest.mark.parametrize("objects,label", [(3, 0), (4, 1), (7, 4), (10, 7)])
def test_clevr_count_is_objects_minus_three(run, objects, label):
  out = run(labels.clevr_count, clevr([9.0] * objects))
  assert out["label"].dtype == tf.int64 and int(out["label"]) == label
  np.testing.assert_array_equal(out["image"], IMAGE)


@RUNS
@pytest.mark.parametrize("depth,label", [
    (0.5, 0), (8.0, 0), (above(8.0), 1), (8.5, 1), (above(8.5), 2), (9.0, 2), (9.25, 3),
    (9.5, 3), (above(9.5), 4), (10.0, 4), (above(10.0), 5), (50.0, 5), (100.0, 5)])
def test_clevr_distance_bins_at_and_past_each_threshold(run, depth, label):
  out = run(labels.clevr_distance, clevr([depth]))
  assert out["label"].dtype == tf.int64 and int(out["label"]) == label


@RUNS
def test_clevr_distance_uses_the_closest_object(run):
  # Closest depth 8.7 -> bin (8.5, 9] = 2; the x, y pixel coordinates play no part.
  assert int(run(labels.clevr_distance, clevr([12.0, 8.7, 9.9]))["label"]) == 2


CAR, VAN, TRUCK, PEDESTRIAN, PERSON_SITTING, CYCLIST, TRAM, MISC = range(8)  # TFDS kitti ids.


def kitti(objects):
  """A KITTI example from [(type, depth)]; x and y of `location` are irrelevant."""
  n = len(objects)
  return {"image": IMAGE,
          "objects": {"type": np.array([t for t, _ in objects], np.int64).reshape(n),
                      "location": np.array([[1.5, -2.0, z] for _, z in objects],
                                           np.float32).reshape(n, 3)}}


@RUNS
@pytest.mark.parametrize("depth,label", [
    (-5.0, 0), (1.0, 0), (8.0, 0), (above(8.0), 1), (12.0, 1), (20.0, 1), (above(20.0), 2),
    (30.0, 2), (999.0, 2)])
def test_kitti_distance_bins_at_and_past_each_threshold(run, depth, label):
  out = run(labels.kitti_distance, kitti([(CAR, depth)]))
  assert out["label"].dtype == tf.int64 and int(out["label"]) == label
  np.testing.assert_array_equal(out["image"], IMAGE)


@RUNS
@pytest.mark.parametrize("vehicle", [CAR, VAN, TRUCK])
def test_kitti_cars_vans_and_trucks_are_vehicles(run, vehicle):
  assert int(run(labels.kitti_distance, kitti([(vehicle, 10.0)]))["label"]) == 1


@RUNS
@pytest.mark.parametrize("objects,label", [
    ([], 3),  # No objects at all: the "no vehicle" class.
    ([(PEDESTRIAN, 5.0), (PERSON_SITTING, 5.0), (CYCLIST, 5.0), (TRAM, 5.0), (MISC, 5.0)], 3),
    ([(PEDESTRIAN, 2.0), (CAR, 30.0)], 2),  # A closer non-vehicle is ignored.
    ([(CAR, 30.0), (VAN, 15.0), (TRUCK, 50.0)], 1),  # The closest vehicle counts.
    ([(TRUCK, 4.0), (TRAM, 1.0), (CAR, 25.0)], 0),
])
def test_kitti_distance_is_to_the_closest_vehicle(run, objects, label):
  assert int(run(labels.kitti_distance, kitti(objects))["label"]) == label


def in_dataset(fn, examples):
  """`fn` mapped over a batch of same-shaped examples with from_tensor_slices."""
  return list(tf.data.Dataset.from_tensor_slices(examples).map(fn).as_numpy_iterator())


def test_dsprites_x_position_pairs_values_into_16_classes():
  values = np.arange(32)
  masks = (np.arange(32 * 64 * 64).reshape(32, 64, 64, 1) % 3 == 0).astype(np.uint8)
  out = in_dataset(labels.dsprites("label_x_position", num_values=32, num_classes=16),
                   {"image": masks, "label_x_position": values,
                    "label_orientation": np.zeros(32, np.int64)})
  assert [int(o["label"]) for o in out] == [v // 2 for v in values]
  for mask, o in zip(masks, out):
    assert o["image"].dtype == np.uint8 and o["image"].shape == (64, 64, 3)
    for channel in range(3):  # The 0/1 mask, scaled to 0/255, on every channel.
      np.testing.assert_array_equal(o["image"][..., channel], mask[..., 0] * 255)


def test_dsprites_orientation_groups_40_values_into_16_classes():
  out = in_dataset(labels.dsprites("label_orientation", num_values=40, num_classes=16),
                   {"image": np.ones((40, 64, 64, 1), np.uint8),
                    "label_orientation": np.arange(40)})
  got = [int(o["label"]) for o in out]
  # The reference's float rule, floor(v / (40 / 16)), and a few values by hand.
  assert got == [int(np.floor(v / 2.5)) for v in range(40)]
  assert [got[v] for v in (0, 2, 3, 4, 5, 37, 38, 39)] == [0, 0, 1, 1, 2, 14, 15, 15]
  assert sorted(set(got)) == list(range(16))


def test_dsprites_eager_matches_dataset():
  fn = labels.dsprites("label_orientation", num_values=40, num_classes=16)
  example = {"image": np.ones((64, 64, 1), np.uint8), "label_orientation": np.int64(12)}
  assert int(eager(fn, example)["label"]) == 4 == int(in_graph(fn, example)["label"])


@pytest.mark.parametrize("attribute,num_values", [("label_azimuth", 18),
                                                  ("label_elevation", 9)])
def test_smallnorb_keeps_the_label_and_tiles_the_grey_image(attribute, num_values):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (num_values, 96, 96, 1), dtype=np.uint8)
  values = np.arange(num_values, dtype=np.int64)[::-1].copy()
  other = "label_elevation" if attribute == "label_azimuth" else "label_azimuth"
  out = in_dataset(labels.smallnorb(attribute),
                   {"image": images, attribute: values, other: np.zeros(num_values, np.int64)})
  assert [int(o["label"]) for o in out] == list(values)
  for image, o in zip(images, out):
    assert o["image"].dtype == np.uint8
    np.testing.assert_array_equal(o["image"], np.repeat(image, 3, axis=-1))


@RUNS
def test_image_and_label_passes_both_through(run):
  out = run(labels.image_and_label, {"image": IMAGE, "label": np.int64(4), "id": "a"})
  assert set(out) == {"image", "label"}
  np.testing.assert_array_equal(out["image"], IMAGE)
  assert out["label"].dtype == tf.int64 and int(out["label"]) == 4
