"""Multi-host start-up (`jax.distributed.initialize()` when the environment asks for it) and
the data-parallel mesh every loop runs on.

Every host runs the same command. On a TPU pod slice and under SLURM, JAX finds its peers
from the environment; elsewhere set `config.coordinator_address`, `config.num_processes` and
`config.process_id` (or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID).
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

# Variables whose presence means "this is one process of several".
_CLUSTER_HINTS = ("JAX_COORDINATOR_ADDRESS", "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS")


def maybe_initialize(config: Any) -> bool:
  """Initialises jax.distributed once if this run is multi-process; True if it did."""
  if jax.distributed.is_initialized():
    return False
  if config.get("coordinator_address"):
    jax.distributed.initialize(config.coordinator_address, config.num_processes,
                               config.process_id)
  elif (any(os.environ.get(name) for name in _CLUSTER_HINTS)
        or int(os.environ.get("SLURM_NTASKS", "1")) > 1):
    jax.distributed.initialize()
  else:
    return False
  logging.info("Process %d of %d, %d local of %d devices.", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  return True


def data_mesh(devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  """`devices` (default: every device of every host) on one axis, `data`: batches are
  sharded on it (`P("data")`); the train state is replicated (`P()`) or, with
  `config.sharding="fsdp"`, its large leaves are split over it too (`bit_jax.sharding`).

  The axis is `Auto`: XLA propagates the shardings through the model, which can then be
  written with plain reshapes (`jax.make_mesh`'s default, `Explicit`, types every
  intermediate's sharding and refuses reshapes that merge or split a sharded axis's
  neighbours, e.g. GroupNorm's grouping of channels)."""
  devices = jax.devices() if devices is None else devices
  return jax.make_mesh((len(devices),), ("data",), devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,))


def on_any_process(flag: bool) -> bool:
  """True in every process if `flag` is True in any (a blocking collective when several).

  A SIGTERM may reach one host only; every host must then save and stop at the same step, or
  the others wait in the next step's collectives for a host that is gone.
  """
  if jax.process_count() == 1:
    return flag
  return bool(np.any(multihost_utils.process_allgather(np.asarray(flag))))
