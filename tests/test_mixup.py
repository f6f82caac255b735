"""MixUp on device: a hand computation, one lambda per batch, alpha 0, dtypes, a sharded batch."""
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

from bit_jax.mixup import mixup

# The hand computations are float64; mixup's values are float32, each a few roundings from
# them: <= 1e-7 relative (measured 4.8e-7 at 30, 1.6e-8 relative), so rtol 1e-6 (1e-5 for
# the jitted, sharded batch).


def _batch():
  image = jnp.array([0.0, 10.0, 20.0, 30.0]).reshape(4, 1, 1, 1)
  label = jnp.eye(4)[jnp.array([0, 1, 2, 3])]
  return {"image": image, "label": label, "index": jnp.arange(4)}


def test_mixup_matches_a_hand_computation():
  rng = jax.random.key(0)
  lam = float(jax.random.beta(rng, 0.2, 0.2))
  assert 0 < lam < 1
  out = mixup(rng, _batch(), 0.2)
  # Example i is mixed with example 3 - i.
  expected_images = [lam * 0 + (1 - lam) * 30, lam * 10 + (1 - lam) * 20,
                     lam * 20 + (1 - lam) * 10, lam * 30 + (1 - lam) * 0]
  np.testing.assert_allclose(out["image"].ravel(), expected_images, rtol=1e-6)
  np.testing.assert_allclose(out["label"][0], [lam, 0, 0, 1 - lam], rtol=1e-6)
  np.testing.assert_allclose(out["label"][2], [0, 1 - lam, lam, 0], rtol=1e-6)
  np.testing.assert_array_equal(out["index"], jnp.arange(4))  # Not a key.


def test_one_lambda_per_batch_and_labels_stay_distributions():
  out = mixup(jax.random.key(3), _batch(), 1.0)
  np.testing.assert_allclose(out["label"].sum(-1), 1.0, rtol=1e-6)
  lams = np.asarray(out["label"])[np.arange(4), np.arange(4)]
  np.testing.assert_allclose(lams, lams[0], rtol=1e-6)


def test_alpha_zero_is_the_identity():
  batch = _batch()
  assert mixup(jax.random.key(0), batch, 0.0) is batch


def test_integer_images_become_float():
  batch = {"image": jnp.array([[0], [255]], jnp.uint8),
           "label": jnp.eye(2)}
  out = mixup(jax.random.key(1), batch, 0.5)
  assert out["image"].dtype == jnp.float32


def test_jitted_on_a_batch_sharded_over_8_devices():
  mesh = jax.make_mesh((8,), ("data",))  # Explicit axes: jnp.roll would fail.
  sharding = NamedSharding(mesh, P("data"))
  x = jnp.arange(16.0).reshape(16, 1)
  batch = {"image": jax.device_put(x, sharding),
           "label": jax.device_put(jnp.eye(16), sharding)}
  rng = jax.random.key(7)
  out = jax.jit(mixup, static_argnums=2)(rng, batch, 0.4)
  lam = float(jax.random.beta(rng, 0.4, 0.4))
  np.testing.assert_allclose(np.asarray(out["image"]),
                             lam * x + (1 - lam) * x[::-1], rtol=1e-5)
  assert out["image"].sharding.is_equivalent_to(sharding, 2)
