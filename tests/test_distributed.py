"""jax.distributed is started only when the environment or config asks for it; the mesh."""
import jax
import ml_collections

from bit_jax import distributed


def test_single_process_runs_do_not_initialize(monkeypatch):
  for name in (*distributed._CLUSTER_HINTS, "SLURM_NTASKS"):
    monkeypatch.delenv(name, raising=False)
  calls = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **k: calls.append(a))
  config = ml_collections.ConfigDict({"coordinator_address": ""})
  assert distributed.maybe_initialize(config) is False and calls == []


def test_explicit_coordinator_and_slurm_initialize(monkeypatch):
  calls = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **k: calls.append(a))
  monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
  config = ml_collections.ConfigDict(
      {"coordinator_address": "10.0.0.1:1234", "num_processes": 4, "process_id": 2})
  assert distributed.maybe_initialize(config)
  assert calls == [("10.0.0.1:1234", 4, 2)]
  monkeypatch.setenv("SLURM_NTASKS", "16")
  assert distributed.maybe_initialize(ml_collections.ConfigDict({"coordinator_address": ""}))
  assert calls[-1] == ()  # SLURM: JAX reads the peers from the environment.


def test_data_mesh_puts_every_device_on_the_data_axis():
  mesh = distributed.data_mesh()
  assert mesh.axis_names == ("data",) and mesh.shape == {"data": jax.device_count()}
  assert sorted(d.id for d in mesh.devices.flat) == sorted(d.id for d in jax.devices())
  two = distributed.data_mesh(jax.devices()[:2])
  assert two.shape == {"data": 2} and set(two.devices.flat) == set(jax.devices()[:2])
