r"""The accelerators `benchmarks/memory.py --target=NAME` compiles for, from a CPU-only machine.

XLA's TPU compiler (libtpu) and its deviceless CUDA compiler both take compile-only devices
(`jax.experimental.topologies.get_topology_desc`): a mesh of them, abstract inputs with
shardings on it, and `jax.jit(step).lower(...).compile()` runs the accelerator's own
compiler, whose memory analysis, cost analysis and HLO are what that slice or GPU would run.

  make accelerators                                    # once: into .accelerators/ (1.2 GB)
  python benchmarks/memory.py --target=tpu-v4-8        # every step below, 4 TPU v4 chips

The compilers are `requirements-accelerators.txt`, installed into `.accelerators/` outside
the venv's default imports: a plugin there would make every JAX process (every test) probe
for a TPU or GPU. `prepare_process` puts the folder on `sys.path` of the one process that
compiles ahead, whose runtime stays the CPU (`JAX_PLATFORMS=cpu`).
"""
from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import os
import re
import sys
import time

import jax
from jax.experimental import topologies

# Appended, not first: benchmarks/input_pipeline.py would hide the input_pipeline package.
if os.path.dirname(os.path.abspath(__file__)) not in sys.path:
  sys.path.append(os.path.dirname(os.path.abspath(__file__)))
import xla_memory  # noqa: E402  # pylint: disable=wrong-import-position

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ACCELERATORS = os.path.join(ROOT, ".accelerators")  # `make accelerators` installs here.
HERE = os.path.dirname(os.path.abspath(__file__))
GIB = 2**30
COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce")
# The compilers' packages by `Target.platform` (requirements-accelerators.txt).
PACKAGES = {"tpu": ("libtpu", "libtpu"), "cuda": ("jax_plugins.xla_cuda12", "jax-cuda12-plugin")}


@dataclasses.dataclass(frozen=True)
class Target:
  """One accelerator as `get_topology_desc` describes it."""
  description: str  # The machine, for the report.
  platform: str  # get_topology_desc's: "tpu" (libtpu) or "cuda" (XLA's deviceless compile).
  topology: str  # TPU: the topology name; CUDA: "1x1xN", N GPUs on one host.
  # Memory per device a program may fill. TPU: the compiler's own limit (libtpu 0.0.42.1's
  # RESOURCE_EXHAUSTED message: "exceeds available HBM (30.75G)" on v4), which it enforces;
  # CUDA: the target config's device_memory_size (None: read from the file).
  hbm_gib: float | None
  chip_config: str | None = None  # TPU: chip_config_name; v4 wants "megacore".
  target_config: str | None = None  # CUDA: a GpuTargetConfigProto text file in benchmarks/.

  def memory_gib(self) -> float:
    if self.hbm_gib is not None:
      return self.hbm_gib
    text = open(os.path.join(HERE, self.target_config), encoding="utf-8").read()
    return int(re.search(r"device_memory_size:\s*(\d+)", text).group(1)) / GIB


TARGETS = {
    "tpu-v3-8": Target("TPU v3-8: 8 cores (4 chips), 16 GiB HBM per core", "tpu", "v3:2x2",
                       15.48),
    "tpu-v4-8": Target("TPU v4-8: 4 chips (megacore), 32 GiB HBM each", "tpu", "v4:2x2x1",
                       30.75, chip_config="megacore"),
    "tpu-v4-128": Target("TPU v4-128: 64 chips (megacore), 32 GiB HBM each", "tpu",
                         "v4:4x4x4", 30.75, chip_config="megacore"),
    "tpu-v5p-8": Target("TPU v5p-8: 4 chips (megacore), 95 GB HBM each", "tpu", "v5p:2x2x1",
                        95.74),
    "h100": Target("8 x NVIDIA H100 SXM 80 GB (one HGX node)", "cuda", "1x1x8", None,
                   target_config="h100_sxm_80gb.txtpb"),
}


def prepare_process() -> None:
  """Before any JAX backend exists: the runtime stays the CPU, and the compilers installed
  in `.accelerators/` (if there) are importable. libtpu needs no cloud metadata server
  (`TPU_SKIP_MDS_QUERY`) and shares its lock file with concurrent compiling processes
  (`ALLOW_MULTIPLE_LIBTPU_LOAD`). TPU_WORKER_HOSTNAMES stays unset: `bit_jax.distributed`
  would read it as a multi-host run."""
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  jax.config.update("jax_platforms", "cpu")
  if os.path.isdir(ACCELERATORS) and ACCELERATORS not in sys.path:
    sys.path.append(ACCELERATORS)


def compiler_version(target: Target) -> str:
  """The compiler's package and version; `SystemExit` (one `error:` line) when it is not
  installed."""
  module, package = PACKAGES[target.platform]
  try:
    found = importlib.util.find_spec(module) is not None
  except ModuleNotFoundError:  # The parent namespace (jax_plugins) is absent too.
    found = False
  if not found:
    raise SystemExit(f"error: {package} is not installed, and --target compiles with it: run "
                     "`make accelerators` (requirements-accelerators.txt into .accelerators/, "
                     "which this script puts on its path)")
  return f"{package} {importlib.metadata.version(package)}"


def devices(target: Target, count: int | None = None) -> list[jax.Device]:
  """The target's compile-only devices, or its first `count` (a GPU target: `count` GPUs)."""
  if target.platform == "tpu":
    kwargs = {"chip_config_name": target.chip_config} if target.chip_config else {}
    found = topologies.get_topology_desc(
        topology_name=target.topology, platform="tpu", **kwargs).devices
  else:
    text = open(os.path.join(HERE, target.target_config), encoding="utf-8").read()
    gpus = count or int(target.topology.split("x")[-1])
    found = topologies.get_topology_desc(
        topology_name=target.target_config, platform="cuda", target_config=text,
        topology=f"1x1x{gpus}").devices
  if count and count > len(found):
    raise SystemExit(f"error: --devices={count}, but {target.topology} has {len(found)}")
  return list(found[:count] if count else found)


def compile_report(lowered: jax.stages.Lowered, target: Target,
                   loop_steps: int = 1) -> dict:
  """Compiles `lowered` with the target's compiler: per device, XLA's memory analysis in
  bytes and the peak they add up to, FLOPs, the collectives in the compiled HLO, the compile
  time and whether it fits the device's memory.

  A program over the device's memory fails libtpu's compile with RESOURCE_EXHAUSTED: that
  is reported as not fitting (`error`), with no figures. `loop_steps`: how many times the
  step's loop (gradient accumulation) runs; XLA's cost analysis counts a loop body once,
  so its FLOPs are multiplied by it (the per-step work outside the loop, the weight
  standardization and the update, is then counted that many times too: a small part).
  CUDA's deviceless compile gives no FLOPs (None).
  """
  start = time.perf_counter()
  try:
    compiled = lowered.compile()
  except jax.errors.JaxRuntimeError as e:
    if "RESOURCE_EXHAUSTED" not in str(e):
      raise
    return {"fits": False, "error": str(e).splitlines()[0],
            "compile_s": time.perf_counter() - start}
  compile_s = time.perf_counter() - start
  out = {**xla_memory.memory_summary(compiled), "compile_s": compile_s, "error": None}
  out["fits"] = out["peak"] <= target.memory_gib() * GIB
  cost = compiled.cost_analysis()
  flops = (cost or {}).get("flops")
  out["flops"] = None if flops is None or flops < 0 else flops * loop_steps
  out["collectives"] = count_collectives(compiled.as_text())
  return out


def count_collectives(hlo: str) -> dict[str, int]:
  """How many of each of `COLLECTIVES` a compiled HLO module runs: its instructions of that
  opcode, synchronous (`all-gather(`) or the start of an asynchronous one
  (`all-gather-start(`), wherever they are (a loop body's counted once). libtpu writes a
  reduce-scatter as a fusion calling a computation named `all-reduce-scatter` (an all-reduce
  and the device's slice of it): that counts as one reduce-scatter, not an all-reduce. On a
  large slice (v4:4x4x4) libtpu writes fsdp's all-gathers as all-reduces of a zero-padded
  buffer (`all-reduce(dynamic-update-slice)`): they count as the all-reduces they run as."""
  counts = dict.fromkeys(COLLECTIVES, 0)
  computation = ""
  for line in hlo.splitlines():
    if not line.startswith(" "):  # A computation's header (or the module's).
      computation = line
    elif not computation.startswith("%all-reduce-scatter"):
      found = re.search(r"\s(all-gather|reduce-scatter|all-reduce)(?:-start)?\(", line)
      if found:
        counts[found.group(1)] += 1
      elif "calls=%all-reduce-scatter" in line:
        counts["reduce-scatter"] += 1
  return counts
