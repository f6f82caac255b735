"""One process of the multi-host test (tests/test_multihost.py), or its single-process twin.

  python tests/multihost_worker.py PROCESS_ID NUM_PROCESSES PORT LOCAL_DEVICES OUT.npz

joins `jax.distributed` on localhost:PORT with LOCAL_DEVICES CPU devices and gloo
collectives, trains tiny-R14 for `STEPS` steps on a global batch sharded over the devices of
every process (each process feeds only its own rows, as the input pipeline does), and
writes the final parameters and losses as this process sees them, and whether it would stop
when only process 1 was sent SIGTERM (`distributed.on_any_process`).
"""
from __future__ import annotations

import os
import sys

import numpy as np

STEPS = 3
GLOBAL_BATCH = 16
IMAGE_SIZE = 32
NUM_CLASSES = 4
ACCUM_STEPS = 2


def global_batch(step: int) -> dict[str, np.ndarray]:
  """Step `step`'s global batch: the same numbers in every process."""
  rng = np.random.default_rng(step)
  shape = (GLOBAL_BATCH, IMAGE_SIZE, IMAGE_SIZE, 3)
  return {"image": rng.uniform(-1, 1, shape).astype(np.float32),
          "label": np.eye(NUM_CLASSES, dtype=np.float32)[
              rng.integers(0, NUM_CLASSES, GLOBAL_BATCH)]}


def train(devices) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], list[float]]:
  """STEPS train steps over a mesh of `devices`: flat initial and final params, the losses."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # pylint: disable=import-outside-toplevel

  from bit_jax import losses, models, npz, train_step as train_step_lib  # pylint: disable=import-outside-toplevel

  model = models.get_model("tiny-R14", num_classes=NUM_CLASSES)
  mesh = Mesh(np.array(devices), ("data",))
  replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))

  def init():
    params = model.init(jax.random.key(0), jnp.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 3)))["params"]
    # A non-zero head, so the updates reach the backbone from the first step.
    head = params["head"]
    head["kernel"] = 0.1 * jax.random.normal(jax.random.key(1), head["kernel"].shape)
    return train_step_lib.create_train_state(params, optimizer)

  # Small enough that the loss does not blow up: a diverging run amplifies the rounding of
  # the processes' different summation orders beyond any tolerance.
  schedule = lambda step: 0.02
  optimizer = optax.chain(optax.trace(0.9), optax.scale_by_learning_rate(schedule))
  state = jax.jit(init, out_shardings=replicated)()
  step_fn = train_step_lib.make_train_step(model, optimizer, losses.softmax_xent, schedule,
                                           accum_steps=ACCUM_STEPS)
  jitted = jax.jit(step_fn, in_shardings=(replicated, sharded),
                   out_shardings=(replicated, replicated), donate_argnums=0)
  initial = npz.flatten(jax.tree.map(np.asarray, jax.device_get(state.params)))
  step_losses = []
  for step in range(STEPS):
    batch = global_batch(step)
    # This process's rows: those its own devices hold under the `data` sharding.
    indices = sharded.addressable_devices_indices_map((GLOBAL_BATCH,))
    rows = sorted({(idx[0].start or 0, idx[0].stop or GLOBAL_BATCH)
                   for idx in indices.values()})
    local = {k: np.concatenate([v[a:b] for a, b in rows]) for k, v in batch.items()}
    global_arrays = jax.tree.map(
        lambda x, full: jax.make_array_from_process_local_data(sharded, x, full.shape),
        local, batch)
    state, metrics = jitted(state, global_arrays)
    step_losses.append(float(metrics["loss"]))  # Replicated: readable in every process.
  params = jax.tree.map(np.asarray, jax.device_get(state.params))
  return initial, npz.flatten(params), step_losses


def main(argv: list[str]) -> None:
  process_id, num_processes, port, local_devices = (int(a) for a in argv[1:5])
  out_path = argv[5]
  import jax  # pylint: disable=import-outside-toplevel
  # Before any backend exists: this process's CPU devices and CPU collectives across hosts.
  jax.config.update("jax_num_cpu_devices", local_devices)
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=f"localhost:{port}",
                             num_processes=num_processes, process_id=process_id,
                             initialization_timeout=60, heartbeat_timeout_seconds=30,
                             shutdown_timeout_seconds=30)
  assert jax.process_count() == num_processes
  assert jax.device_count() == num_processes * local_devices
  _, flat, step_losses = train(jax.devices())
  from bit_jax import distributed  # pylint: disable=import-outside-toplevel
  # As after a SIGTERM that reached only process 1, then none: every process must agree.
  stop_votes = [distributed.on_any_process(process_id == 1), distributed.on_any_process(False)]
  np.savez(out_path, losses=np.array(step_losses), stop_votes=np.array(stop_votes),
           process_count=jax.process_count(), device_count=jax.device_count(),
           **{f"params/{k}": v for k, v in flat.items()})
  jax.distributed.shutdown()


if __name__ == "__main__":
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  main(sys.argv)
