"""`bit_digits`: scikit-learn's 1,797 8x8 handwritten digits (UCI optdigits).

The downstream ("transfer") dataset of the offline demo: small, few-shot.
"""
import numpy as np

from input_pipeline.embedded.base import EmbeddedBuilder
from input_pipeline.errors import InputError


class BitDigits(EmbeddedBuilder):
  """Digits 0-9 (~180 each); test = 50 per class."""

  CLASS_NAMES = tuple(str(d) for d in range(10))
  IMAGE_SHAPE = (8, 8, 1)
  TEST_PER_CLASS = 50  # train 1,297 / test 500.
  DESCRIPTION = (
      "UCI optical handwritten digits as shipped by scikit-learn "
      "(sklearn.datasets.load_digits): 1,797 8x8 grayscale images of 10 "
      "classes. Pixel counts 0..16 are scaled to 0..255 (round(v * 255 / 16)). "
      "Split fixed here: test = 50 per class chosen by a permutation seeded 0, "
      "train = the other 1,297.")
  HOMEPAGE = ("https://archive.ics.uci.edu/dataset/80/"
              "optical+recognition+of+handwritten+digits")
  CITATION = ("E. Alpaydin, C. Kaynak. Optical Recognition of Handwritten "
              "Digits. UCI Machine Learning Repository, 1998.")
  LICENSE = "CC BY 4.0"

  def load_arrays(self):
    try:
      # Imported here: only preparing this dataset needs scikit-learn.
      from sklearn.datasets import load_digits
    except ImportError:
      raise InputError("bit_digits reads scikit-learn's bundled digits, and "
                       "scikit-learn is not installed: pip install "
                       "scikit-learn") from None
    digits = load_digits()
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)
    return images, digits.target.astype(np.int64)
