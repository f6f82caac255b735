"""VTAB-1k label preprocessing: a TFDS example dict -> {"image": uint8 HxWx3, "label": int64}.

Each function runs eagerly and inside `tf.data` `map`. Images stay as TFDS decodes them (uint8);
only single-channel images are tiled to 3 channels, as the benchmark does. Resizing and value
ranges belong to the transfer pipeline's pp string, applied after these.

Every rule here restates google-research/task_adaptation `task_adaptation/data/<dataset>.py`;
the docstrings say which function there.
"""

from __future__ import annotations

from typing import Callable

import tensorflow as tf

Example = dict
Preprocess = Callable[[Example], Example]

CLEVR_MIN_OBJECTS = 3  # CLEVR scenes hold 3 to 10 objects: count_all has 8 classes.
# Bins on the closest object's depth, `objects/pixel_coords[:, 2]`: (0, 8] -> 0, (8, 8.5] -> 1,
# ..., (10, 100] -> 5. The reference picked them for roughly balanced classes.
CLEVR_DISTANCE_THRESHOLDS = (0.0, 8.0, 8.5, 9.0, 9.5, 10.0, 100.0)
KITTI_VEHICLE_TYPES = 3  # TFDS kitti `objects/type` ids 0, 1, 2: Car, Van, Truck.
KITTI_NO_VEHICLE_DEPTH = 1000.0  # Stand-in depth when no vehicle: lands in the last bin.
# Bins on the closest vehicle's depth `objects/location[:, 2]` (metres): (-100, 8] -> 0,
# (8, 20] -> 1, (20, 999] -> 2, no vehicle -> 3.
KITTI_DISTANCE_THRESHOLDS = (-100.0, 8.0, 20.0, 999.0)


def _out(image: tf.Tensor, label: tf.Tensor) -> Example:
  return {"image": image, "label": tf.cast(label, tf.int64)}


def _bin(value: tf.Tensor, thresholds: tuple[float, ...]) -> tf.Tensor:
  """Index of the last threshold strictly below `value`: bin i is (t[i], t[i+1]].

  The reference's `reduce_max(where(thresholds - value < 0))`, for sorted thresholds. Above
  t[-1] gives len(t) - 1 (kitti's "no vehicle" class); at or below t[0] gives -1, which no
  real example reaches.
  """
  below = tf.constant(thresholds, value.dtype) < value
  return tf.reduce_sum(tf.cast(below, tf.int64)) - 1


def _three_channels(image: tf.Tensor) -> tf.Tensor:
  return tf.tile(image, [1, 1, 3])


def image_and_label(example: Example) -> Example:
  """TFDS `image` and `label` as they are: the natural and specialized tasks, and dmlab."""
  return _out(example["image"], example["label"])


def clevr_count(example: Example) -> Example:
  """Number of objects minus 3 (clevr.py `_count_preprocess_fn`)."""
  count = tf.size(example["objects"]["size"], out_type=tf.int64)
  return _out(example["image"], count - CLEVR_MIN_OBJECTS)


def clevr_distance(example: Example) -> Example:
  """Binned depth of the closest object (clevr.py `_closest_object_preprocess_fn`)."""
  depth = tf.reduce_min(example["objects"]["pixel_coords"][:, 2])
  return _out(example["image"], _bin(depth, CLEVR_DISTANCE_THRESHOLDS))


def kitti_distance(example: Example) -> Example:
  """Binned depth of the closest car, van or truck (kitti.py `_closest_vehicle_distance_pp`)."""
  objects = example["objects"]
  vehicle_depths = tf.boolean_mask(objects["location"][:, 2],
                                   objects["type"] < KITTI_VEHICLE_TYPES)
  depth = tf.reduce_min(tf.concat([vehicle_depths, [KITTI_NO_VEHICLE_DEPTH]], axis=0))
  return _out(example["image"], _bin(depth, KITTI_DISTANCE_THRESHOLDS))


def dsprites(attribute: str, num_values: int, num_classes: int) -> Preprocess:
  """Groups `num_values` consecutive values of `attribute` into `num_classes` bins.

  dsprites.py `DSpritesData(predicted_attribute, num_classes)`: label = floor(v / (num_values /
  num_classes)), here in integers. The 0/1 mask image becomes 0/255 on 3 channels.
  """
  def preprocess(example: Example) -> Example:
    label = tf.cast(example[attribute], tf.int64) * num_classes // num_values
    return _out(_three_channels(example["image"]) * 255, label)
  return preprocess


def smallnorb(attribute: str) -> Preprocess:
  """`attribute` as the label, the grey image on 3 channels (smallnorb.py `SmallNORBData`)."""
  def preprocess(example: Example) -> Example:
    return _out(_three_channels(example["image"]), example[attribute])
  return preprocess
