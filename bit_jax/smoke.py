"""A smoke run of the model: build, run, write the official .npz, read it back.

Stands in for the Quickstart's main job until `train.py --config=configs/demo.py` lands.
"""
import sys

import jax
import jax.numpy as jnp
import numpy as np

from bit_jax import models, npz, pretrained


def main(workdir: str = "workdir/smoke") -> None:
  model = models.get_model("tiny-R14", num_classes=10)
  images = jax.random.uniform(jax.random.key(0), (4, 64, 64, 3), minval=-1, maxval=1)
  params = model.init(jax.random.key(1), images)["params"]
  logits, out = jax.jit(model.apply)({"params": params}, images)
  path = f"{workdir}/tiny-R14.npz"
  npz.save(params, path)
  reloaded, report = pretrained.load(path, models.get_model("tiny-R14", num_classes=3))
  print(f"logits {logits.shape}, pre_logits {out['pre_logits'].shape}; wrote {path}")
  print(f"reloaded for 3 classes: {report}")
  np.testing.assert_array_equal(reloaded["root_block"]["standardized_conv2d"]["kernel"],
                                params["root_block"]["standardized_conv2d"]["kernel"])


if __name__ == "__main__":
  main(*sys.argv[1:])
