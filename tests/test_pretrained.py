"""Fitting a checkpoint to a model: head replacement and clear errors for misfits."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bit_jax import models, pretrained
from bit_jax.errors import UserError
from tests.official_layout import make_official_weights

MODEL = models.get_model("tiny-R14", num_classes=10)


def _write(tmp_path, weights, name="ckpt.npz"):
  path = tmp_path / name
  np.savez(path, **weights)
  return path


def test_new_number_of_classes_gets_a_zero_head_and_keeps_the_backbone(tmp_path):
  weights = make_official_weights(num_classes=21843 // 100)
  path = _write(tmp_path, weights)
  params, report = pretrained.load(path, MODEL)
  assert params["head"]["kernel"].shape == (1024, 10)
  assert not params["head"]["kernel"].any() and not params["head"]["bias"].any()
  assert report.replaced == ("head/bias", "head/kernel")
  assert len(report.loaded) == len(weights) - 2
  np.testing.assert_array_equal(params["block3"]["unit01"]["conv2"]["kernel"],
                                weights["resnet/block3/unit01/b/standardized_conv2d/kernel"])
  assert "replaced (zero-initialised): head/bias, head/kernel" in str(report)
  # The fitted tree is exactly what the model expects.
  logits, _ = MODEL.apply({"params": params}, jnp.zeros((1, 32, 32, 3)))
  np.testing.assert_array_equal(logits, 0.0)


def test_a_matching_head_is_kept_unless_reset(tmp_path):
  path = _write(tmp_path, make_official_weights(num_classes=10))
  _, kept = pretrained.load(path, MODEL)
  assert kept.replaced == () and "head/kernel" in kept.loaded
  params, reset = pretrained.load(path, MODEL, reset_head=True)
  assert reset.replaced == ("head/bias", "head/kernel")
  assert not params["head"]["kernel"].any()


def test_backbone_model_drops_the_head_and_headless_file_gets_one(tmp_path):
  backbone = models.get_model("tiny-R14")
  params, report = pretrained.load(_write(tmp_path, make_official_weights()), backbone)
  assert "head" not in params and report.dropped == ("head/kernel", "head/bias")
  _, report = pretrained.load(
      _write(tmp_path, make_official_weights(num_classes=0), "headless.npz"), MODEL)
  assert report.replaced == ("head/bias", "head/kernel")


def _misfit(tmp_path, weights, model=MODEL):
  with pytest.raises(UserError) as error:
    pretrained.load(_write(tmp_path, weights), model)
  message = str(error.value)
  assert "\n" not in message and "does not fit the model tiny-R14" in message
  return message


def test_missing_keys_are_named(tmp_path):
  weights = make_official_weights()
  del weights["resnet/block2/unit01/b/group_norm/gamma"]
  message = _misfit(tmp_path, weights)
  assert "1 missing, e.g. block2/unit01/norm2/scale" in message


def test_unexpected_keys_are_named(tmp_path):
  weights = make_official_weights()
  weights["resnet/block2/unit01/extra/kernel"] = np.ones(3)
  assert "1 unexpected, e.g. block2/unit01/extra/kernel" in _misfit(tmp_path, weights)


def test_wrong_shapes_are_named_with_both_shapes(tmp_path):
  weights = make_official_weights()
  weights["resnet/block1/unit01/b/standardized_conv2d/kernel"] = np.ones((5, 5, 32, 32))
  message = _misfit(tmp_path, weights)
  assert ("block1/unit01/conv2/kernel (5, 5, 32, 32) vs (3, 3, 32, 32)"
          in message)


def test_another_width_says_what_the_file_looks_like(tmp_path):
  wide = make_official_weights(root=64, widths=(64, 128, 256, 512))
  message = _misfit(tmp_path, wide)
  assert "of the wrong shape" in message
  assert "looks like an unlisted ResNet-v2 (units 1,1,1,1, root width 64" in message


def test_another_depth_names_the_model_the_file_looks_like(tmp_path):
  deeper = make_official_weights(units=(2, 2, 2, 2))
  message = _misfit(tmp_path, deeper)
  assert "unexpected, e.g. block1/unit02/" in message
  assert "looks like tiny-R26 (units 2,2,2,2, root width 32, 10-class head)" in message


def test_describe_recognises_the_release_sizes_without_allocating():
  model = models.get_model("BiT-M-R152x2", num_classes=21843)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
  flat = {"/".join(p.key for p in path): leaf.shape
          for path, leaf in jax.tree_util.tree_flatten_with_path(shapes["params"])[0]}
  assert pretrained.describe(flat) == (
      "R152x2 (units 3,8,36,3, root width 128, 21843-class head)")
  assert pretrained.describe({"foo": (1,)}).startswith("not a BiT ResNet-v2")
