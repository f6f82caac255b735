r"""Does BiT-HyperRule fine-tuning fit one accelerator? XLA's compiled memory analysis.

Compiles the real fine-tuning step (`bit_jax.train_step.make_train_step` with the HyperRule's
SGD momentum 0.9, softmax cross-entropy, MixUp 0.1, state donated) for abstract inputs
(`jax.ShapeDtypeStruct`: nothing is allocated, so R152x4's 936M parameters cost nothing) on
one device, and prints XLA's memory analysis of the compiled executable for each setting:
arguments (params, momentum, batch), outputs, aliased (donated) bytes, temporaries
(activations, gradients, workspace) and the peak they add up to; and, independent of any
backend, the residuals one micro-batch's forward pass keeps for its backward pass.

  python benchmarks/memory.py          # R152x4, 384 px, batch 512: the settings below
  python benchmarks/memory.py --model=tiny-R14 --resolution=32 --batch=16 \
      --settings=float32:1:0,bfloat16:2:1  # dtype:accum_steps:remat, a quick check

On a machine without an accelerator the CPU compiler's analysis is the proxy: the same
program, but XLA:CPU computes bf16 convolutions in float32 (so bf16 rows are no smaller
there) and turns `remat` into a lower peak only in part (R152x4 fsdp: 10.35 -> 7.14 GiB;
one device's fine-tuning step: not at all); the residuals column shows what both save on a
backend that keeps them. Run as a script, it compiles with XLA:CPU's memory-minimizing
(depth-first) schedule, as an accelerator schedules within its memory, not XLA:CPU's default
breadth-first one, which keeps more alive for thread concurrency (`CPU_SCHEDULER_FLAG`; XLA's
`xla/service/cpu/cpu_compiler.cc`, `CpuCompiler::CreateHloSchedule`). The model is the plain
one accelerators run (`kernels="plain"`), not the XLA:CPU-tuned kernels `bit_jax.cpu_kernels`
would give it on CPU.

With `--upstream`, the pretraining step instead (`configs/bit_l.py` for R152x4: 18,291
sigmoid classes; `configs/bit_m.py` for R50x1: 21,843), on a mesh of `--devices` simulated
CPU devices (the script starts with 8), replicated and `fsdp` (`bit_jax.sharding`): the
per-device peak of the partitioned program, beside the memory of TPU v3, TPU v4, H100 and
H200 (nominal, per core or GPU), and the residuals of one device's batch (what `remat`
shrinks on an accelerator; the CPU proxy's peak shows part of that saving, see above):

  python benchmarks/memory.py --upstream   # R152x4 224 px 8/device, R50x1 224 px 128/device

With `--target=NAME` (`benchmarks/targets.py`: tpu-v3-8, tpu-v4-8, tpu-v4-128, tpu-v5p-8,
h100), the accelerator's own compiler instead, from this CPU machine (`make accelerators`
first): the upstream step (replicated and fsdp), the HyperRule fine-tuning step on the
target's devices (`--batch` over all of them, as `bit_jax.finetune` splits it; a setting may
end in `:fsdp`) and the evaluators' forward (`bit_jax.features.forward`: the
upstream configs' eval batch at 224 px, `configs/transfer.py`'s eval batch at the
fine-tuning resolution), each with the kernels `get_model(kernels="auto")` picks for the
target's devices. Per device: memory, peak, FLOPs, collectives, compile time and whether it
fits the device (libtpu refuses a program over HBM: "does not fit"):

  python benchmarks/memory.py --target=h100   # every step on 8 H100s: R152x4 and R50x1 upstream
                                              # as above, R152x4 fine-tuning bf16:64:1
  python benchmarks/memory.py --target=tpu-v4-8 --steps=finetune --settings=bfloat16:16:1:fsdp

An R152x4 TPU compile takes 2-10 minutes and 17-18 GB of host memory: one at a time.

Copy the printed tables into benchmarks/RESULTS.md (section "Memory").
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec as P

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import targets  # noqa: E402  # pylint: disable=wrong-import-position
import xla_memory  # noqa: E402  # pylint: disable=wrong-import-position
from bit_jax import distributed, losses, models, optim, sharding  # noqa: E402
from bit_jax import train_step as train_step_lib  # noqa: E402
from configs import bit_l, bit_m, transfer  # noqa: E402

GIB = 2**30
# dtype:accum_steps:remat, from the naive step to the one that fits.
DEFAULT_SETTINGS = ("float32:1:0,bfloat16:1:0,bfloat16:1:1,bfloat16:16:1,float32:32:0,"
                    "bfloat16:32:1,bfloat16:64:1")
# --upstream: (config, model, batch per device), each compiled replicated and fsdp.
UPSTREAM_SETTINGS = "bit_l:BiT-M-R152x4:8,bit_m:BiT-M-R50x1:128"
UPSTREAM_CONFIGS = {"bit_l": bit_l.get_config, "bit_m": bit_m.get_config}
BUDGETS_GIB = {"TPU v3": 16, "TPU v4": 32, "H100": 80, "H200": 141}  # Nominal, per device.
SIMULATED_DEVICES = 8
# --target: the steps compiled, and the fine-tuning setting the README recommends.
TARGET_STEPS = ("upstream", "finetune", "forward")
TARGET_SETTINGS = "bfloat16:64:1"
# How XLA:CPU orders the program decides how many buffers are alive at once. Its default
# (breadth-first) orders independent ops for thread-level concurrency and keeps far more
# alive than its depth-first memory scheduler (R152x4 fsdp, RESULTS.md: 15.70 vs 7.14 GiB
# per device); accelerators schedule within their memory (XLA:GPU's latency-hiding scheduler
# takes a memory limit), so run as a script, the proxy compiles depth-first unless XLA_FLAGS
# sets this flag. XLA:CPU reads it from XLA_FLAGS only (not from `compile`'s options).
CPU_SCHEDULER_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model", default="BiT-M-R152x4")
  parser.add_argument("--resolution", type=int, default=None,
                      help="default 384 (fine-tuning), 224 with --upstream")
  parser.add_argument("--batch", type=int, default=512,
                      help="images per fine-tuning step: on one device, or over --target's")
  parser.add_argument("--num_classes", type=int, default=None,
                      help="default 1000 (fine-tuning), the config's with --upstream")
  parser.add_argument("--settings", default=None,
                      help="comma-separated dtype:accum_steps:remat (remat 0 or 1), with "
                           "--target optionally :sharding; default "
                           f"{DEFAULT_SETTINGS}, with --target {TARGET_SETTINGS}")
  parser.add_argument("--budget_gib", type=float, default=80e9 / GIB,
                      help="the accelerator's memory: 80 GB (74.5 GiB)")
  parser.add_argument("--upstream", action="store_true",
                      help="the pretraining step on --devices devices, replicated vs fsdp")
  parser.add_argument("--upstream_settings", default=UPSTREAM_SETTINGS,
                      help="comma-separated config:model:batch_per_device (config: "
                           f"{', '.join(UPSTREAM_CONFIGS)})")
  parser.add_argument("--devices", type=int, default=None,
                      help=f"the mesh's devices: for --upstream (default {SIMULATED_DEVICES}), "
                           "or the first N of --target's (default all)")
  parser.add_argument("--dtype", default="bfloat16",
                      help="compute dtype for --upstream (and --target's upstream and forward)")
  parser.add_argument("--remat", type=int, default=1, help="remat (0 or 1) for --upstream")
  parser.add_argument("--fsdp_min_size", type=int, default=None,
                      help="fsdp's threshold in elements; default: the config's")
  parser.add_argument("--target", choices=list(targets.TARGETS),
                      help="compile for this accelerator with its own compiler "
                           "(benchmarks/targets.py)")
  parser.add_argument("--steps", default=",".join(TARGET_STEPS),
                      help=f"with --target, comma-separated: {', '.join(TARGET_STEPS)}")
  parser.add_argument("--shardings", default=",".join(sharding.MODES),
                      help="with --target, the upstream step's state shardings")
  return parser.parse_args(argv)


def compiled_memory(model_name: str, resolution: int, batch: int, num_classes: int,
                    dtype, accum_steps: int, remat: bool) -> dict[str, float]:
  """Memory analysis (bytes) of the compiled fine-tuning step; nothing is allocated."""
  model = models.get_model(model_name, num_classes, dtype=dtype, remat=remat, kernels="plain")
  lowered, params = finetune_step(model, resolution, batch, num_classes, accum_steps)
  out = compiled_stats(lowered)
  out["params"] = _nbytes(params)
  out["residuals"] = residual_bytes(model, params, batch // accum_steps, resolution, num_classes)
  return out


def finetune_step(model: models.ResNetV2, resolution: int, batch: int, num_classes: int,
                  accum_steps: int, mesh: jax.sharding.Mesh | None = None,
                  mode: str = "replicated", fsdp_min_size: int | None = None
                  ) -> tuple[jax.stages.Lowered, object]:
  """(the lowered BiT-HyperRule fine-tuning step, the parameters' shapes): SGD momentum 0.9,
  softmax cross-entropy, MixUp 0.1, state donated. On `mesh`, as `bit_jax.finetune` jits it:
  the state sharded by `mode`, the global `batch` split over the `data` axis; else on one
  device."""
  params = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, resolution, resolution, 3))))["params"]
  schedule = lambda step: 0.003 * jnp.ones(())
  optimizer = optax.chain(optax.trace(decay=0.9), optax.scale_by_learning_rate(schedule))
  state = jax.eval_shape(lambda p: train_step_lib.create_train_state(p, optimizer), params)
  batched = None if mesh is None else jax.sharding.NamedSharding(mesh, P("data"))
  batch_shapes = {
      "image": jax.ShapeDtypeStruct((batch, resolution, resolution, 3), jnp.float32,
                                    sharding=batched),
      "label": jax.ShapeDtypeStruct((batch, num_classes), jnp.float32, sharding=batched)}
  step = train_step_lib.make_train_step(model, optimizer, losses.softmax_xent, schedule,
                                        accum_steps=accum_steps, mixup_alpha=0.1,
                                        rng=jax.random.key(0))
  if mesh is None:
    return jax.jit(step, donate_argnums=0).lower(state, batch_shapes), params
  state_shardings = sharding.shardings(state, mesh, mode,
                                       fsdp_min_size or sharding.DEFAULT_MIN_SIZE)
  jitted = jax.jit(step, in_shardings=(state_shardings, batched),
                   out_shardings=(state_shardings, jax.sharding.NamedSharding(mesh, P())),
                   donate_argnums=0)
  return jitted.lower(sharding.abstract(state, state_shardings), batch_shapes), params


def forward_step(model: models.ResNetV2, resolution: int, batch: int,
                 mesh: jax.sharding.Mesh) -> jax.stages.Lowered:
  """The evaluators' forward (`bit_jax.features.forward` of logits and pre_logits) as they
  run it: the kernels standardized once (the inference model), the parameters replicated, the
  global `batch` split over the mesh's `data` axis."""
  from bit_jax import features  # pylint: disable=import-outside-toplevel  # TF.
  run_model, _ = models.hoist_weight_standardization(model)
  replicated = jax.sharding.NamedSharding(mesh, P())
  params = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, resolution, resolution, 3))))["params"]
  params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
                        params)
  images = jax.ShapeDtypeStruct((batch, resolution, resolution, 3), jnp.float32,
                                sharding=jax.sharding.NamedSharding(mesh, P("data")))
  return features.forward.lower(run_model, params, images, ("logits", "pre_logits"))


def compiled_stats(lowered: jax.stages.Lowered) -> dict[str, float]:
  """Compiles `lowered`; XLA's memory analysis in bytes, the peak they add up to and the
  compile time."""
  start = time.perf_counter()
  out = xla_memory.memory_summary(lowered.compile())
  out["compile_s"] = time.perf_counter() - start
  return out


def cpu_scheduler(xla_flags: str | None = None) -> str:
  """"memory" or "concurrency": the order XLA:CPU compiles in under `xla_flags` (default: the
  XLA_FLAGS environment variable; the last setting of `CPU_SCHEDULER_FLAG` wins)."""
  flags = os.environ.get("XLA_FLAGS", "") if xla_flags is None else xla_flags
  concurrency = True  # XLA:CPU's default.
  for flag in flags.split():
    name, _, value = flag.partition("=")
    if name == CPU_SCHEDULER_FLAG:
      concurrency = value.lower() not in ("false", "0")
  return "concurrency" if concurrency else "memory"


def _schedule(device: jax.Device) -> str:
  return cpu_scheduler() if device.platform == "cpu" else f"{device.platform}'s own"


def _nbytes(tree) -> int:
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def residual_bytes(model, params, micro_batch: int, resolution: int, num_classes: int) -> int:
  """Bytes autodiff keeps from one micro-batch's forward pass for its backward pass.

  The leaves of the `jax.vjp` closure, under `eval_shape`: what the program must hold
  between forward and backward whatever the backend's scheduler does (the parameters, which
  are arguments anyway, are left out). This is what `remat` and bf16 shrink.
  """
  inner, _ = models.hoist_weight_standardization(model)  # As in the train step's loop.
  images = jax.ShapeDtypeStruct((micro_batch, resolution, resolution, 3), jnp.float32)
  labels = jax.ShapeDtypeStruct((micro_batch, num_classes), jnp.float32)
  loss = lambda p, x, y: jnp.mean(losses.softmax_xent(inner.apply({"params": p}, x)[0], y))
  vjp = jax.eval_shape(lambda p, x, y: jax.vjp(loss, p, x, y)[1], params, images, labels)
  return _nbytes(vjp) - _nbytes(params)


def parse_settings(text: str, with_sharding: bool = False) -> list[tuple]:
  """(dtype, accum_steps, remat) per comma-separated `dtype:accum_steps:remat`; with
  `with_sharding`, a fourth field too, the state's sharding (`:fsdp`; default replicated)."""
  settings = []
  for item in text.split(","):
    fields = item.split(":")
    mode = fields.pop() if with_sharding and len(fields) == 4 else "replicated"
    dtype, accum, remat = fields
    if dtype not in ("float32", "bfloat16"):
      raise ValueError(f"dtype {dtype!r}: float32 or bfloat16")
    sharding.check(mode)
    settings.append((dtype, int(accum), bool(int(remat))) + ((mode,) if with_sharding else ()))
  return settings


def upstream_memory(config_name: str, model_name: str, resolution: int, batch_per_device: int,
                    dtype: str, remat: bool, mode: str, mesh: jax.sharding.Mesh, *,
                    num_classes: int | None = None, fsdp_min_size: int | None = None
                    ) -> dict[str, float]:
  """Per-device memory analysis (bytes) of the compiled, partitioned upstream train step
  (`upstream_step`, the plain model). XLA's analysis of an SPMD program is that of one
  device's program."""
  lowered, out = upstream_step(config_name, model_name, resolution, batch_per_device, dtype,
                               remat, mode, mesh, num_classes=num_classes,
                               fsdp_min_size=fsdp_min_size)
  model, params = out.pop("model"), out.pop("params")
  out.update(compiled_stats(lowered))
  out["residuals"] = residual_bytes(model, params, batch_per_device, resolution,
                                    out["num_classes"])
  return out


def upstream_step(config_name: str, model_name: str, resolution: int, batch_per_device: int,
                  dtype: str, remat: bool, mode: str, mesh: jax.sharding.Mesh, *,
                  num_classes: int | None = None, fsdp_min_size: int | None = None,
                  kernels: str = "plain") -> tuple[jax.stages.Lowered, dict]:
  """(the lowered upstream train step, what it holds: the state's bytes, whole and per
  device, the head's classes, the model and its parameters' shapes).

  As `bit_jax.train` builds it: the config's optimizer and loss, the state sharded by `mode`
  (`bit_jax.sharding`, the config's `fsdp_min_size`) and donated, the batch split over the
  mesh's `data` axis, the model's `kernels` chosen for the mesh's devices.
  `num_classes` and `fsdp_min_size` override the config's.
  """
  config = UPSTREAM_CONFIGS[config_name](f"model={model_name}")
  config.num_classes = num_classes or config.num_classes
  config.fsdp_min_size = fsdp_min_size or config.fsdp_min_size
  model = models.get_model(model_name, config.num_classes, dtype=dtype, remat=remat,
                           kernels=kernels, platform=mesh.devices.flat[0].platform)
  schedule = optim.make_schedule(config, steps_per_epoch=10_000, total_steps=100_000)
  optimizer = optim.make_optimizer(config, schedule)
  params = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, resolution, resolution, 3))))["params"]
  shapes = jax.eval_shape(lambda p: train_step_lib.create_train_state(p, optimizer), params)
  state_shardings = sharding.shardings(shapes, mesh, mode, config.fsdp_min_size)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  batched = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  batch = batch_per_device * mesh.size
  batch_shapes = {"image": jax.ShapeDtypeStruct((batch, resolution, resolution, 3),
                                                jnp.float32, sharding=batched),
                  "label": jax.ShapeDtypeStruct((batch, config.num_classes), jnp.float32,
                                                sharding=batched)}
  step = train_step_lib.make_train_step(model, optimizer, losses.get_loss(config.loss),
                                        schedule)
  lowered = jax.jit(step, in_shardings=(state_shardings, batched),
                    out_shardings=(state_shardings, replicated), donate_argnums=0).lower(
                        sharding.abstract(shapes, state_shardings), batch_shapes)
  state_per_device = sum(
      x.size * x.dtype.itemsize * math.prod(s.shard_shape(x.shape)) // max(1, x.size)
      for x, s in zip(jax.tree.leaves(shapes), jax.tree.leaves(state_shardings)))
  return lowered, {"state": _nbytes(shapes), "state_per_device": state_per_device,
                   "num_classes": config.num_classes, "model": model, "params": params}


def main_upstream(args: argparse.Namespace) -> list[dict]:
  """The --upstream report: one table row per (setting, sharding mode)."""
  if jax.device_count() < args.devices:
    raise ValueError(f"--devices={args.devices}, but JAX sees {jax.device_count()}: run this "
                     "file as a script (it asks for 8 CPU devices), or set "
                     f"XLA_FLAGS=--xla_force_host_platform_device_count={args.devices}")
  mesh = distributed.data_mesh(jax.devices()[:args.devices])
  device = jax.devices()[0]
  print(f"resolution: {args.resolution}\ndevices: {args.devices} x "
        f"{device.platform}:{device.device_kind}\ndtype: {args.dtype}\n"
        f"remat: {bool(args.remat)}\nschedule: {_schedule(device)}")
  budgets = " | ".join(f"fits {name} ({gib} GiB)" for name, gib in BUDGETS_GIB.items())
  print(f"\n| model | classes | batch per device | sharding | state GiB per device | "
        f"arguments GiB | temp GiB | peak GiB per device | {budgets} | residuals GiB |\n"
        f"|{'---|' * (9 + len(BUDGETS_GIB))}")
  rows = []
  for item in args.upstream_settings.split(","):
    config_name, model_name, batch = item.split(":")
    if config_name not in UPSTREAM_CONFIGS:
      raise ValueError(f"config {config_name!r}: one of {', '.join(UPSTREAM_CONFIGS)}")
    for mode in sharding.MODES:
      m = upstream_memory(config_name, model_name, args.resolution, int(batch), args.dtype,
                          bool(args.remat), mode, mesh, num_classes=args.num_classes,
                          fsdp_min_size=args.fsdp_min_size)
      m.update(model=model_name, batch_per_device=int(batch), sharding=mode)
      rows.append(m)
      fits = " | ".join("yes" if m["peak"] <= gib * GIB else "no"
                        for gib in BUDGETS_GIB.values())
      print(f"| {model_name} | {m['num_classes']} | {batch} | {mode} | "
            f"{m['state_per_device'] / GIB:.2f} | {m['argument'] / GIB:.2f} | "
            f"{m['temp'] / GIB:.2f} | {m['peak'] / GIB:.2f} | {fits} | "
            f"{m['residuals'] / GIB:.2f} |", flush=True)
  print()
  for m in rows:
    print(f"peak_gib[{m['model']}:{m['sharding']}]: {m['peak'] / GIB:.2f} "
          f"(compiled in {m['compile_s']:.0f} s)")
  return rows


def main_target(args: argparse.Namespace) -> list[dict]:
  """The --target report: each step compiled by the target's compiler, one row each."""
  target = targets.TARGETS[args.target]
  compiler = targets.compiler_version(target)
  steps = args.steps.split(",")
  unknown = sorted(set(steps) - set(TARGET_STEPS))
  if unknown:
    raise ValueError(f"step {unknown[0]!r}: one of {', '.join(TARGET_STEPS)}")
  mesh = distributed.data_mesh(targets.devices(target, args.devices))
  device = mesh.devices.flat[0]
  print(f"target: {args.target} ({target.description})\ndevices: {mesh.size} x "
        f"{device.platform}:{device.device_kind}\ncompiler: {compiler}, jax {jax.__version__}"
        f"\nmemory_gib_per_device: {target.memory_gib():.2f}")
  print("\n| step | model | px | batch per device | dtype | accum | remat | sharding | "
        "arguments GiB | temp GiB | peak GiB | fits | TFLOP per device | all-gather | "
        "reduce-scatter | all-reduce | compile s |\n|" + "---|" * 17)
  rows = []

  def report(lowered, network, loop_steps=1, **row):
    row.update(targets.compile_report(lowered, target, loop_steps), kernels=_kernels_of(network))
    rows.append(row)
    print(_target_row(row), flush=True)

  upstream = [item.split(":") for item in args.upstream_settings.split(",")]
  for config_name, model_name, batch in upstream:
    if config_name not in UPSTREAM_CONFIGS:
      raise ValueError(f"config {config_name!r}: one of {', '.join(UPSTREAM_CONFIGS)}")
  resolution = args.resolution or 224
  if "upstream" in steps:
    for config_name, model_name, batch in upstream:
      for mode in args.shardings.split(","):
        lowered, info = upstream_step(config_name, model_name, resolution, int(batch),
                                      args.dtype, bool(args.remat), mode, mesh,
                                      num_classes=args.num_classes,
                                      fsdp_min_size=args.fsdp_min_size, kernels="auto")
        report(lowered, info["model"], step="upstream", model=model_name,
               resolution=resolution, batch_per_device=int(batch), dtype=args.dtype,
               accum_steps=1, remat=bool(args.remat), sharding=mode)
  if "forward" in steps:
    for config_name, model_name, _ in upstream:
      config = UPSTREAM_CONFIGS[config_name](f"model={model_name}")
      model = models.get_model(model_name, args.num_classes or config.num_classes,
                               dtype=args.dtype, kernels="auto", platform=device.platform)
      report(forward_step(model, resolution, config.eval_batch_size, mesh), model,
             step="forward", model=model_name, resolution=resolution,
             batch_per_device=config.eval_batch_size / mesh.size, dtype=args.dtype)
  finetune_resolution = args.resolution or 384
  num_classes = args.num_classes or 1000
  settings = parse_settings(args.settings or TARGET_SETTINGS, with_sharding=True)
  if "finetune" in steps:
    for dtype, accum, remat, mode in settings:
      if args.batch % (accum * mesh.size):
        raise ValueError(f"batch {args.batch} does not split over {mesh.size} devices x "
                         f"accum_steps {accum}")
      model = models.get_model(args.model, num_classes, dtype=dtype, remat=remat,
                               kernels="auto", platform=device.platform)
      lowered, _ = finetune_step(model, finetune_resolution, args.batch, num_classes, accum,
                                 mesh, mode, args.fsdp_min_size)
      report(lowered, model, accum, step="finetune", model=args.model,
             resolution=finetune_resolution, batch_per_device=args.batch / mesh.size,
             dtype=dtype, accum_steps=accum, remat=remat, sharding=mode)
  if "forward" in steps:  # The fine-tuned model's test-set forward, the first setting's dtype.
    dtype, batch = settings[0][0], transfer.get_config().eval_batch_size
    model = models.get_model(args.model, num_classes, dtype=dtype, kernels="auto",
                             platform=device.platform)
    report(forward_step(model, finetune_resolution, batch, mesh), model, step="forward",
           model=args.model, resolution=finetune_resolution, batch_per_device=batch / mesh.size,
           dtype=dtype)
  # The kernels get_model(kernels="auto") gave the compiled models, for the target's devices.
  print(f"\nkernels: {', '.join(sorted({m['kernels'] for m in rows}))}")
  for m in rows:  # Exact, where the table's GiB round a small program to 0.00.
    key = (f"{m['step']}:{m['model']}:{m['resolution']}:{m.get('sharding', 'replicated')}:"
           f"{m.get('accum_steps', 1)}")
    print(f"peak_bytes[{key}]: {'does not fit' if m['error'] else m['peak']}")
  return rows


def _kernels_of(model: models.ResNetV2) -> str:
  """Which of `models.get_model`'s kernels `model` has: `plain` or `cpu`."""
  plain = (model.conv, model.norm_act) == (models.Conv, models.GroupNormAct)
  return "plain" if plain else "cpu"


def _target_row(m: dict) -> str:
  """One --target table row: "does not fit" in place of the figures libtpu refused."""
  setting = (f"| {m['step']} | {m['model']} | {m['resolution']} | {m['batch_per_device']:g} | "
             f"{m['dtype']} | {m.get('accum_steps', '')} | "
             f"{'yes' if m.get('remat') else 'no' if 'remat' in m else ''} | "
             f"{m.get('sharding', 'replicated')} |")
  if m["error"]:
    return f"{setting} | | | no: {m['error']} | | | | | {m['compile_s']:.0f} |"
  flops = "" if m["flops"] is None else f"{m['flops'] / 1e12:.2f}"
  counts = " | ".join(str(m["collectives"][name]) for name in targets.COLLECTIVES)
  return (f"{setting} {m['argument'] / GIB:.2f} | {m['temp'] / GIB:.2f} | "
          f"{m['peak'] / GIB:.2f} | {'yes' if m['fits'] else 'no'} | {flops} | {counts} | "
          f"{m['compile_s']:.0f} |")


def main(argv: list[str] | None = None) -> list[dict]:
  args = parse_args(argv)
  if args.target:
    return main_target(args)
  args.settings = args.settings or DEFAULT_SETTINGS
  args.devices = args.devices or SIMULATED_DEVICES
  args.resolution = args.resolution or (224 if args.upstream else 384)
  if not args.upstream:
    args.num_classes = args.num_classes or 1000
  if args.upstream:
    return main_upstream(args)
  device = jax.devices()[0]
  print(f"model: {args.model}\nresolution: {args.resolution}\nbatch: {args.batch}\n"
        f"device: {device.platform}:{device.device_kind}\nbudget_gib: {args.budget_gib:.1f}\n"
        f"schedule: {_schedule(device)}")
  rows = []
  print("\n| dtype | accum_steps (micro-batch) | remat | arguments GiB | outputs GiB | "
        "aliased GiB | temp GiB | peak GiB | fits | residuals GiB |\n"
        "|---|---|---|---|---|---|---|---|---|---|")
  for dtype, accum, remat in parse_settings(args.settings):
    if args.batch % accum:
      raise ValueError(f"batch {args.batch} is not divisible by accum_steps {accum}")
    m = compiled_memory(args.model, args.resolution, args.batch, args.num_classes,
                        jnp.dtype(dtype), accum, remat)
    m.update(dtype=dtype, accum_steps=accum, remat=remat,
             fits=m["peak"] / GIB <= args.budget_gib)
    rows.append(m)
    print(f"| {dtype} | {accum} ({args.batch // accum}) | {'yes' if remat else 'no'} | "
          f"{m['argument'] / GIB:.2f} | {m['output'] / GIB:.2f} | {m['alias'] / GIB:.2f} | "
          f"{m['temp'] / GIB:.2f} | {m['peak'] / GIB:.2f} | {'yes' if m['fits'] else 'no'} | "
          f"{m['residuals'] / GIB:.2f} |",
          flush=True)
  print(f"\nparams_gib: {rows[0]['params'] / GIB:.2f}")
  for m in rows:
    print(f"peak_gib[{m['dtype']}:{m['accum_steps']}:{int(m['remat'])}]: {m['peak'] / GIB:.2f} "
          f"(compiled in {m['compile_s']:.0f} s)")
  return rows


if __name__ == "__main__":
  # Before any backend exists: with --target, the CPU runtime and the compilers' path; the
  # simulated devices --upstream partitions over, and the memory-minimizing schedule (see
  # CPU_SCHEDULER_FLAG) unless XLA_FLAGS chooses.
  if parse_args().target:
    targets.prepare_process()
  jax.config.update("jax_num_cpu_devices",
                    max(SIMULATED_DEVICES, parse_args().devices or SIMULATED_DEVICES))
  if CPU_SCHEDULER_FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {CPU_SCHEDULER_FLAG}=false"
  try:
    main()
  except ValueError as e:  # A setting that does not parse or split: one line.
    raise SystemExit(f"error: {e}") from None
