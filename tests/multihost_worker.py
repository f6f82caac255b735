"""One process of the multi-host test (tests/test_multihost.py), or the one-process reference.

  python tests/multihost_worker.py OUT.npz PROCESS_ID NUM_PROCESSES PORT
  python tests/multihost_worker.py OUT.npz

The first joins `jax.distributed` on localhost:PORT with gloo collectives and trains tiny-R14
for `STEPS` steps on a global batch sharded over one device of every process (each process
feeds only its own rows, as the input pipeline does); the second trains the same global
batches over two devices of one process. Each writes the final parameters and losses as its
process sees them, and a joined process whether it would stop when only process 1 was sent
SIGTERM (`distributed.on_any_process`). Then one more step from the same start with
`sharding=fsdp`: the large leaves of the state are split over the two devices, and the
parameters are gathered back as the evaluators do (`device_put` to a replicated sharding).
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
FSDP_MIN_SIZE = 4096  # Elements: tiny-R14's larger kernels are split, its norms are not.
# Every process, the reference's too, has 2 CPU devices and computes on 2 (one per process
# when joined), so all of them run one compiled program the same way, bit for bit:
# - XLA:CPU's intra-op thread pool has max(CPU cores, local devices) threads, and Eigen splits
#   a long contraction (a conv's weight gradient over batch x pixels) into partial sums by
#   the pool's size: equal local devices, equal pools, the same order of additions.
# - The gradients' all-reduce then adds two partial sums, and a + b == b + a in float32, so
#   gloo's ring across the processes and XLA's in-process all-reduce agree exactly. With 4
#   devices they add 4 terms in different orders, a difference several steps then grow.
LOCAL_DEVICES = 2
MESH_DEVICES = 2


def global_batch(step: int) -> dict[str, np.ndarray]:
  """Step `step`'s global batch: the same numbers in every process."""
  rng = np.random.default_rng(step)
  shape = (GLOBAL_BATCH, IMAGE_SIZE, IMAGE_SIZE, 3)
  return {"image": rng.uniform(-1, 1, shape).astype(np.float32),
          "label": np.eye(NUM_CLASSES, dtype=np.float32)[
              rng.integers(0, NUM_CLASSES, GLOBAL_BATCH)]}


def initial_state(shapes):
  """The train state at step 0 on the host, the same in every process, with no init to
  compile: LeCun-normal conv kernels, GroupNorm at identity, zero momentum, and a non-zero
  head (0.1 x normal), so the updates reach the backbone from the first step."""
  import jax  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)

  def value(path, x):
    name = getattr(path[-1], "key", None)
    if path[0].name != "params" or name not in ("kernel", "scale"):
      return np.zeros(x.shape, x.dtype)
    if name == "scale":
      return np.ones(x.shape, x.dtype)
    std = 0.1 if path[1].key == "head" else 1 / np.sqrt(np.prod(x.shape[:-1]))
    return (std * rng.normal(size=x.shape)).astype(x.dtype)

  return jax.tree_util.tree_map_with_path(value, shapes)


def train(devices, mode: str = "replicated", steps: int = STEPS
          ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], list[float], int]:
  """`steps` train steps over a mesh of `devices` with the state sharded by `mode`
  (`bit_jax.sharding`): flat initial and final params, the losses, and how many state
  leaves no process holds whole."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # pylint: disable=import-outside-toplevel

  from bit_jax import losses, models, npz, sharding, train_step as train_step_lib  # pylint: disable=import-outside-toplevel

  model = models.get_model("tiny-R14", num_classes=NUM_CLASSES)
  mesh = Mesh(np.array(devices), ("data",))
  replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))

  # Small enough that the loss stays finite over the steps.
  schedule = lambda step: 0.02
  optimizer = optax.chain(optax.trace(0.9), optax.scale_by_learning_rate(schedule))
  shapes = jax.eval_shape(lambda: train_step_lib.create_train_state(
      model.init(jax.random.key(0), jnp.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 3)))["params"],
      optimizer))
  state_shardings = sharding.shardings(shapes, mesh, mode, FSDP_MIN_SIZE)
  host_state = initial_state(shapes)
  # Each process passes the same host values; each device keeps its part.
  state = jax.device_put(host_state, state_shardings)
  # Replicated over devices of both processes is not fully addressable either, but each
  # process holds it whole.
  split = sum(not (leaf.is_fully_addressable or leaf.is_fully_replicated)
              for leaf in jax.tree.leaves(state))
  step_fn = train_step_lib.make_train_step(model, optimizer, losses.softmax_xent, schedule,
                                           accum_steps=ACCUM_STEPS)
  jitted = jax.jit(step_fn, in_shardings=(state_shardings, sharded),
                   out_shardings=(state_shardings, replicated), donate_argnums=0)
  # Every process reads the whole parameters once they are replicated, as evaluators do.
  on_host = lambda tree: jax.tree.map(np.asarray, jax.device_get(
      jax.device_put(tree, replicated)))
  initial = npz.flatten(host_state.params)
  step_losses = []
  for step in range(steps):
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
  return initial, npz.flatten(on_host(state.params)), step_losses, split


def main(argv: list[str]) -> None:
  out_path = argv[1]
  joined = len(argv) > 2
  import jax  # pylint: disable=import-outside-toplevel
  # Before any backend exists: this process's CPU devices and CPU collectives across hosts.
  jax.config.update("jax_num_cpu_devices", LOCAL_DEVICES)
  if joined:
    process_id, num_processes, port = (int(a) for a in argv[2:5])
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"localhost:{port}",
                               num_processes=num_processes, process_id=process_id,
                               initialization_timeout=60, heartbeat_timeout_seconds=30,
                               shutdown_timeout_seconds=30)
    assert jax.process_count() == num_processes == MESH_DEVICES
    devices = [next(d for d in jax.devices() if d.process_index == p)
               for p in range(num_processes)]
  else:
    devices = jax.devices()[:MESH_DEVICES]
  initial, flat, step_losses, split = train(devices)
  _, fsdp_flat, fsdp_losses, fsdp_split = train(devices, "fsdp", steps=1)
  results = dict(losses=np.array(step_losses), split=split, fsdp_losses=np.array(fsdp_losses),
                 fsdp_split=fsdp_split, process_count=jax.process_count(),
                 device_count=jax.device_count(),
                 **{f"initial/{k}": v for k, v in initial.items()},
                 **{f"params/{k}": v for k, v in flat.items()},
                 **{f"fsdp/{k}": v for k, v in fsdp_flat.items()})
  if joined:
    from bit_jax import distributed  # pylint: disable=import-outside-toplevel
    # As after a SIGTERM that reached only process 1, then none: every process must agree.
    results["stop_votes"] = np.array([distributed.on_any_process(process_id == 1),
                                      distributed.on_any_process(False)])
  np.savez(out_path, **results)
  if joined:
    jax.distributed.shutdown()


if __name__ == "__main__":
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  main(sys.argv)
