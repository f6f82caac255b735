"""Every op eagerly and inside tf.data (they differ: static shapes, tracing)."""
import numpy as np
import pytest
import tensorflow as tf

from input_pipeline import ops
from input_pipeline.errors import InputError

RNG = tf.constant([7, 11], tf.int64)


def _image(h=12, w=10, c=3):
  pixels = np.arange(h * w * c, dtype=np.int32).reshape(h, w, c) % 251
  return tf.constant(pixels, tf.uint8)


def _example(**kw):
  return {"image": _image(), "label": tf.constant(3, tf.int64), "_rng": RNG,
          **kw}


def run_both(pp, example):
  """Runs `pp` eagerly and in a tf.data map; asserts they agree; returns it."""
  fn = ops.get_preprocess_fn(pp)
  eager = {k: v.numpy() for k, v in fn(example).items()}
  in_data = next(iter(tf.data.Dataset.from_tensors(example).map(fn)
                      .as_numpy_iterator()))
  assert eager.keys() == in_data.keys()
  for k in eager:
    np.testing.assert_array_equal(eager[k], in_data[k], err_msg=f"{pp} {k}")
  return in_data


# Every registered op must appear here: the test below checks it.
CASES = {
    "decode": ("decode", lambda d, out: out["image"].shape == (6, 5, 3)),
    "to_rgb": ("to_rgb", lambda d, out: out["image"].shape == (12, 10, 3)),
    "resize": ("resize((6, 4))", lambda d, out: out["image"].shape == (6, 4, 3)
               and out["image"].dtype == np.uint8),
    "resize_small": ("resize_small(5)",
                     lambda d, out: out["image"].shape == (6, 5, 3)),
    "central_crop": ("central_crop(4)", lambda d, out: np.array_equal(
        out["image"], d["image"].numpy()[4:8, 3:7])),
    "random_crop": ("random_crop((5, 3))",
                    lambda d, out: out["image"].shape == (5, 3, 3)),
    "inception_crop": ("inception_crop(8)",
                       lambda d, out: out["image"].shape == (8, 8, 3)),
    "decode_jpeg_and_inception_crop": (
        "decode_jpeg_and_inception_crop(4)",
        lambda d, out: out["image"].shape == (4, 4, 3)),
    "flip_lr": ("flip_lr", lambda d, out: out["image"].shape == (12, 10, 3)),
    # float32 x / 127.5 - 1 in [-1, 1] against float64: 1 ulp at 1 (1.2e-7; measured 1.5e-7),
    # far below one pixel level (2 / 255).
    "value_range": ("value_range(-1, 1)", lambda d, out: np.allclose(
        out["image"], d["image"].numpy() / 127.5 - 1, atol=1e-6)),
    "onehot": ("onehot(5)", lambda d, out: out["label"].tolist() ==
               [0, 0, 0, 1, 0]),
    "keep": ("keep('label')", lambda d, out: set(out) == {"label", "_rng"}),
    "drop": ("drop('label')", lambda d, out: set(out) == {"image", "_rng"}),
    "rename": ("rename('label', 'y')",
               lambda d, out: set(out) == {"image", "y", "_rng"}),
}


def test_every_op_has_a_case():
  assert set(CASES) == set(ops.OPS)


@pytest.mark.parametrize("name", sorted(CASES))
def test_op_eager_and_in_tf_data(name, encode):
  pp, check = CASES[name]
  example = _example()
  if name == "decode":
    example["image"] = tf.constant(encode((6, 5, 3), "png"))
  if name == "decode_jpeg_and_inception_crop":
    example["image"] = tf.constant(encode((16, 12, 3), "jpeg"))
  assert check(example, run_both(pp, example))


@pytest.mark.parametrize("channels,fmt", [(1, "png"), (3, "png"), (4, "png"),
                                          (1, "jpeg"), (3, "jpeg")])
def test_decode_gives_rgb_for_1_3_4_channel_files(channels, fmt, encode):
  data = encode((6, 5, channels), fmt)
  out = run_both("decode", {"image": tf.constant(data)})
  assert out["image"].shape == (6, 5, 3) and out["image"].dtype == np.uint8
  decoded = tf.io.decode_image(data).numpy()
  if channels == 1:  # Gray is tiled, not re-weighted.
    np.testing.assert_array_equal(out["image"], np.repeat(decoded, 3, -1))
  else:  # RGB kept, alpha dropped.
    np.testing.assert_array_equal(out["image"], decoded[..., :3])


def test_decode_passes_through_already_decoded_images():
  gray = _image(4, 4, 1)
  out = run_both("decode", {"image": gray})
  np.testing.assert_array_equal(out["image"], np.repeat(gray.numpy(), 3, -1))
  assert run_both("decode(1)", {"image": _image(4, 4, 3)})["image"].shape == (
      4, 4, 1)


def test_to_rgb_tiles_gray_and_drops_alpha():
  rgba = _image(3, 3, 4)
  np.testing.assert_array_equal(
      run_both("to_rgb", {"image": rgba})["image"], rgba.numpy()[..., :3])
  with pytest.raises(InputError, match="2 channels"):
    ops.get_preprocess_fn("to_rgb")({"image": _image(3, 3, 2)})


def test_resize_rounds_back_to_uint8():
  image = tf.constant([[[0], [255]]], tf.uint8)  # 1x2, averaging gives 127.5.
  out = run_both("resize((1, 1), method='area')", {"image": image})["image"]
  assert out.dtype == np.uint8 and out.item() == 128


@pytest.mark.parametrize("hw,expect", [((12, 10), (6, 5)), ((10, 30), (5, 15)),
                                       ((7, 7), (5, 5))])
def test_resize_small_keeps_aspect_and_hits_the_short_side(hw, expect):
  out = run_both("resize_small(5)", {"image": _image(*hw)})
  assert out["image"].shape[:2] == expect


def test_random_crop_is_a_window_of_the_image_and_follows_the_seed():
  image = _image(12, 10, 3).numpy()
  crops = set()
  for seed in range(8):
    ex = {"image": tf.constant(image), "_rng": tf.constant([seed, 0], tf.int64)}
    crop = run_both("random_crop(4)", ex)["image"]
    windows = [(i, j) for i in range(9) for j in range(7)
               if np.array_equal(image[i:i + 4, j:j + 4], crop)]
    assert windows
    crops.add(windows[0])
  assert len(crops) > 1  # Different seeds, different windows.


def test_inception_crop_respects_area_and_aspect_ranges():
  image = tf.zeros([100, 100, 3], tf.uint8)
  fn = ops.get_preprocess_fn(
      "inception_crop(area_min=0.3, area_max=0.5, aspect_min=0.5, "
      "aspect_max=2.0)")
  sizes = set()
  for seed in range(20):
    h, w, _ = fn({"image": image, "_rng": tf.constant([seed, 1], tf.int64)}
                 )["image"].shape
    sizes.add((h, w))
    # Integer rounding of the window allows a little slack.
    assert 0.28 <= h * w / 1e4 <= 0.52 and 0.45 <= w / h <= 2.2, (h, w)
  assert len(sizes) > 5


def test_fused_jpeg_crop_matches_decode_then_crop(encode):
  data = tf.constant(encode((40, 32, 3), "jpeg", seed=3))
  for seed in range(4):
    rng = tf.constant([seed, 5], tf.int64)
    fused = ops.get_preprocess_fn("decode_jpeg_and_inception_crop")(
        {"image": data, "_rng": rng})["image"].numpy()
    split = ops.get_preprocess_fn("decode|inception_crop")(
        {"image": data, "_rng": rng})["image"].numpy()
    assert fused.shape == split.shape  # Same window...
    # ...same pixels, except where chroma upsampling at the window's edge
    # lacks the neighbours a full decode has.
    np.testing.assert_allclose(fused[1:-1, 1:-1], split[1:-1, 1:-1], atol=2)


def test_flip_lr_flips_exactly_or_not_and_both_happen():
  image = _image(4, 6, 3).numpy()
  flipped = 0
  for seed in range(16):
    out = run_both("flip_lr", {"image": tf.constant(image),
                               "_rng": tf.constant([seed, 2], tf.int64)})
    if np.array_equal(out["image"], image[:, ::-1]):
      flipped += 1
    else:
      np.testing.assert_array_equal(out["image"], image)
  assert 0 < flipped < 16


def test_random_ops_repeat_with_the_same_rng_and_chain_fresh_seeds():
  fn = ops.get_preprocess_fn("random_crop(4)|random_crop(4)")
  a, b = fn(_example()), fn(_example())
  np.testing.assert_array_equal(a["image"], b["image"])
  assert not np.array_equal(a["_rng"], RNG)  # Consumed, so ops differ.


def test_value_range_maps_ends_and_clips():
  image = tf.constant([[[0], [255]]], tf.uint8)
  out = run_both("value_range(-1, 1)", {"image": image})["image"]
  np.testing.assert_allclose(out.ravel(), [-1, 1])
  out = run_both("value_range(0, 1, 0, 127.5, clip_values=True)",
                 {"image": image})["image"]
  np.testing.assert_allclose(out.ravel(), [0, 1])


def test_onehot_options_and_out_of_range_labels_fail():
  out = run_both("onehot(3, key_result='labels', on=0.9, off=0.05)",
                 {"label": tf.constant(2, tf.int64)})
  np.testing.assert_allclose(out["labels"], [0.05, 0.05, 0.9])
  assert out["label"] == 2
  with pytest.raises(tf.errors.InvalidArgumentError, match="out of range"):
    ops.get_preprocess_fn("onehot(3)")({"label": tf.constant(3, tf.int64)})


def test_onehot_of_a_label_list_is_multi_hot():
  out = run_both("onehot(5)", {"label": tf.constant([4, 1, 4], tf.int64)})
  np.testing.assert_array_equal(out["label"], [0, 1, 0, 0, 1])


def test_keep_retains_internal_keys():
  out = ops.get_preprocess_fn("keep('image')")(_example(extra=tf.constant(1)))
  assert set(out) == {"image", "_rng"}


def test_the_callers_dict_is_not_modified():
  example = _example()
  ops.get_preprocess_fn("flip_lr|rename('label', 'y')|value_range")(example)
  assert set(example) == {"image", "label", "_rng"}
  assert example["image"].dtype == tf.uint8


def test_empty_pp_is_identity():
  assert ops.get_preprocess_fn("")({"a": 1}) == {"a": 1}


@pytest.mark.parametrize("pp,words", [
    ("decode|inceptoin_crop(224)", ["unknown preprocessing op 'inceptoin_crop'",
                                    "did you mean 'inception_crop'",
                                    "valid ops:", "flip_lr", "value_range"]),
    ("resize(224, sizze=3)", ["wrong arguments", "resize(224, sizze=3)",
                              "expected resize(size, method="]),
    ("onehot", ["wrong arguments", "expected onehot(depth"]),
    ("resize(224", ["cannot parse", "resize(224"]),
    ("resize(size)", ["cannot parse", "literal"]),
    ("resize(__import__('os'))", ["cannot parse"]),
    ("a.b", ["cannot parse"]),
    ("resize(-3)", ["resize: size must be a positive int"]),
    ("resize(None)", ["resize: size must be a positive int"]),
    ("central_crop((2, 2, 2))", ["central_crop: size must be"]),
    ("resize(3, method='fancy')", ["unknown resize method 'fancy'",
                                   "bilinear"]),
    ("inception_crop(area_min=0.9, area_max=0.1)", ["area_min <= area_max"]),
    ("decode(2)", ["channels must be 0"]),
    ("onehot(0)", ["depth must be a positive int"]),
    ("value_range(0, 1, 5, 5)", ["must differ"]),
])
def test_bad_pp_strings_raise_one_line_naming_the_fix(pp, words):
  with pytest.raises(InputError) as e:
    ops.get_preprocess_fn(pp)
  message = str(e.value)
  assert "\n" not in message
  for word in words:
    assert word in message


def test_a_missing_key_is_named_with_the_keys_present():
  fn = ops.get_preprocess_fn("flip_lr(key='img')")
  with pytest.raises(InputError, match="needs key 'img'.*image, label"):
    tf.data.Dataset.from_tensors(_example()).map(fn)


@pytest.mark.parametrize("pp,words", [
    ("central_crop(20)", ["op 'central_crop(20)' cannot run on an example of",
                          "image (12, 10, 3)", "resize first"]),
    ("value_range('a')", ["op \"value_range('a')\" cannot run on"]),
])
def test_ops_that_cannot_run_on_the_example_say_so(pp, words):
  with pytest.raises(InputError) as e:
    tf.data.Dataset.from_tensors(_example()).map(ops.get_preprocess_fn(pp))
  for word in words:
    assert word in str(e.value)


def test_register_adds_an_op():
  @ops.register
  def get_test_only_double(key="x"):
    return lambda data: {**data, key: data[key] * 2}
  try:
    assert ops.get_preprocess_fn("test_only_double")({"x": 2})["x"] == 4
  finally:
    del ops.OPS["test_only_double"]
