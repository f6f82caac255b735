"""Shared fixtures: embedded datasets prepared once, and tiny image files."""
import os

import numpy as np
import pytest
import tensorflow as tf

import input_pipeline as ip


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory):
  """A TFDS data_dir holding every embedded dataset, prepared once."""
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  for name in ("bit_digits", "bit_animal_silhouettes", "bit_animals_upstream",
               "bit_wild_animals", "bit_farm_animals"):
    ip.get_source(name, data_dir)
  return data_dir


@pytest.fixture(scope="session")
def digits(tfds_dir):
  return ip.get_source("bit_digits", tfds_dir)


def _encode(shape=(6, 5, 3), fmt="png", seed=0) -> bytes:
  pixels = np.random.default_rng(seed).integers(0, 256, shape, np.uint8)
  encode = tf.io.encode_png if fmt == "png" else tf.io.encode_jpeg
  return encode(pixels).numpy()


@pytest.fixture
def encode():
  """encode(shape=(h, w, c), fmt="png"|"jpeg", seed) -> image file bytes."""
  return _encode


@pytest.fixture
def write_folder():
  """write_folder(root, {"cat": 3, "test/dog": 2}, shape) writes PNG folders."""

  def write(root, layout, shape=(6, 5, 3)):
    for i, (folder, n) in enumerate(sorted(layout.items())):
      os.makedirs(os.path.join(root, folder), exist_ok=True)
      for j in range(n):
        with open(os.path.join(root, folder, f"{j}.png"), "wb") as f:
          f.write(_encode(shape, seed=100 * i + j))
    return str(root)
  return write
