"""Test-wide setup: 8 simulated CPU devices, so sharding code runs as on a pod slice."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402

# Must happen before any JAX backend is created; every test sees 8 CPU devices.
jax.config.update("jax_num_cpu_devices", 8)
