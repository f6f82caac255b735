"""Random weights in the official BiT .npz layout, built from the published key list.

Written from the checkpoint format, not from `bit_jax.models`, so tests that load these
files check our model against the format rather than against itself.
"""
import numpy as np


def make_official_weights(seed=0, root=32, widths=(32, 64, 128, 256),
                          units=(1, 1, 1, 1), num_classes=10, conv_name="standardized_conv2d"):
  """`{"resnet/...": array}`; `conv_name` lets a test mimic files with numbered convs."""
  rng = np.random.default_rng(seed)
  w = {}

  def conv(name, shape):
    w[f"{name}/{conv_name}/kernel"] = rng.normal(size=shape).astype(np.float32)

  def gn(name, c):
    w[name + "/group_norm/gamma"] = (1 + 0.1 * rng.normal(size=c)).astype(np.float32)
    w[name + "/group_norm/beta"] = (0.1 * rng.normal(size=c)).astype(np.float32)

  conv("resnet/root_block", (7, 7, 3, root))
  cin = root
  for b, (wd, nu) in enumerate(zip(widths, units), start=1):
    for u in range(1, nu + 1):
      p = f"resnet/block{b}/unit{u:02d}"
      gn(p + "/a", cin)
      if u == 1:
        conv(p + "/a/proj", (1, 1, cin, 4 * wd))
      conv(p + "/a", (1, 1, cin, wd))
      gn(p + "/b", wd)
      conv(p + "/b", (3, 3, wd, wd))
      gn(p + "/c", wd)
      conv(p + "/c", (1, 1, wd, 4 * wd))
      cin = 4 * wd
  gn("resnet", cin)
  if num_classes:
    w["resnet/head/conv2d/kernel"] = (
        0.1 * rng.normal(size=(1, 1, cin, num_classes))).astype(np.float32)
    w["resnet/head/conv2d/bias"] = rng.normal(size=num_classes).astype(np.float32)
  return w
