r"""Train-step and inference throughput, FLOPs, utilisation and memory; timm side by side.

Times the real jitted train step (`bit_jax.train_step.make_train_step`: SGD momentum 0.9 with
coupled weight decay as in `bit_jax.optim`, `softmax_xent`, state donated) and the jitted
inference forward, on a mesh of every local device with the batch sharded on `data`, after
warm-up; each figure is the median of `--iters` timed calls. Inference is timed twice: the
plain forward, which standardizes the kernels on every call (as timm does), and the forward
our evaluators run, with the kernels standardized once per evaluation pass
(`models.for_inference`). FLOPs per image come from XLA's cost analysis of the compiled step,
utilisation from those FLOPs over the device's peak, and the memory from the compiled
executable's memory analysis.

When torch and timm are importable, timm's `resnetv2_*_bit` (eager PyTorch, the same
forward + cross-entropy + backward + SGD-momentum step, `--torch_threads` threads) is timed
in the same process and the ratios ours/timm are printed. The two alternate in blocks of
`--block` timed calls, each block after one untimed call, so that both see the same machine
load but neither is timed while the other's threads and cache contents linger (alternating
call by call measured ours ~5% and timm ~2% slower). The process's malloc is reported: on
CPU it matters to XLA (bit_jax/host_allocator.py), and both frameworks share it.

  python benchmarks/throughput.py                                  # R50x1, 128 px, batch 8
  python benchmarks/throughput.py --model=BiT-M-R50x1 --resolution=224 --batch=128 \
      --dtype=bfloat16 --iters=20                                  # the GPU target
  python benchmarks/throughput.py --model=tiny-R14 --resolution=32 --iters=2   # smoke run

Copy the printed table into benchmarks/RESULTS.md (section "Throughput").
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any, Callable

# torch (through torchvision, which timm imports) must load before TensorFlow, which
# bit_jax imports through input_pipeline: the other order segfaults in torchvision's ops.
try:
  import timm
  import torch
except ImportError as e:
  timm = torch = None
  _TIMM_IMPORT_ERROR = str(e)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from xla_memory import memory_summary  # noqa: E402  # pylint: disable=wrong-import-position
from bit_jax import distributed, host_allocator, losses, models  # noqa: E402
from bit_jax import train_step as train_step_lib  # noqa: E402

# timm's names for the BiT architectures (tiny test variants have none).
TIMM_NAMES = {arch: f"resnetv2_{arch[1:].lower()}_bit" for arch in models.ARCHITECTURES}
# Dense peak FLOP/s per device by (device kind substring, dtype); float32 matmuls run as TF32
# on NVIDIA GPUs at JAX's default precision. Anything else: pass --peak_tflops, or on CPU
# the script measures a large matmul and uses that as the peak.
PEAK_TFLOPS = {
    ("H100", "bfloat16"): 989.0, ("H100", "float32"): 494.0,
    ("H200", "bfloat16"): 989.0, ("H200", "float32"): 494.0,
    ("A100", "bfloat16"): 312.0, ("A100", "float32"): 156.0,
    ("TPU v4", "bfloat16"): 275.0, ("TPU v5 lite", "bfloat16"): 197.0,
    ("TPU v5p", "bfloat16"): 459.0,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model", default="BiT-M-R50x1", help="a bit_jax.models name")
  parser.add_argument("--resolution", type=int, default=128)
  parser.add_argument("--batch", type=int, default=8, help="images per device per step")
  parser.add_argument("--dtype", default="float32", choices=list(models.DTYPES))
  parser.add_argument("--num_classes", type=int, default=1000)
  parser.add_argument("--accum_steps", type=int, default=1)
  parser.add_argument("--remat", action="store_true")
  parser.add_argument("--kernels", default="auto", choices=models.KERNELS,
                      help="plain, cpu (bit_jax.cpu_kernels), or auto: cpu on a CPU backend")
  parser.add_argument("--iters", type=int, default=10, help="timed calls; the median is kept")
  parser.add_argument("--block", type=int, default=3,
                      help="timed calls in a row per benchmark, after one untimed call")
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--peak_tflops", type=float, default=0.0,
                      help="peak per device; default: known accelerators, or measured on CPU")
  parser.add_argument("--timm", default="auto", choices=["auto", "off"],
                      help="auto: time timm too when torch and timm import")
  parser.add_argument("--torch_threads", type=int, default=os.cpu_count())
  return parser.parse_args(argv)


def _seconds(fn: Callable[[], Any]) -> float:
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def cpu_matmul_peak(dtype, size: int = 2048, iters: int = 5) -> float:
  """FLOP/s of a large matmul on the first device: the CPU's practical peak."""
  a = jnp.ones((size, size), dtype)
  f = jax.jit(lambda a: a @ a)
  jax.block_until_ready(f(a))
  best = min(_seconds(lambda: jax.block_until_ready(f(a))) for _ in range(iters))
  return 2 * size**3 / best


class JaxBench:
  """Our jitted train step and inference forward, compiled once, with their analyses."""

  def __init__(self, args: argparse.Namespace, model: models.ResNetV2 | None = None):
    """`model`: instead of the one `args` names (benchmarks/kernels.py's variants)."""
    dtype = models.DTYPES[args.dtype]
    self.model = model or models.get_model(args.model, args.num_classes, dtype=dtype,
                                           remat=args.remat, kernels=args.kernels)
    devices = jax.local_devices()
    mesh = distributed.data_mesh(devices)
    replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    self.batch_per_device = args.batch
    self.global_batch = args.batch * len(devices)
    rng = np.random.default_rng(0)
    shape = (self.global_batch, args.resolution, args.resolution, 3)
    batch = {"image": rng.uniform(-1, 1, shape).astype(np.float32),
             "label": np.eye(args.num_classes, dtype=np.float32)[
                 rng.integers(0, args.num_classes, self.global_batch)]}
    self.batch = jax.device_put(batch, sharded)
    params = jax.jit(self.model.init, out_shardings=replicated)(
        jax.random.key(0), jnp.zeros((1, args.resolution, args.resolution, 3)))["params"]
    schedule = lambda step: 0.01
    optimizer = optax.chain(optax.add_decayed_weights(1e-4), optax.trace(0.9),
                            optax.scale_by_learning_rate(schedule))
    step = train_step_lib.make_train_step(self.model, optimizer, losses.softmax_xent,
                                          schedule, accum_steps=args.accum_steps)
    self.state = jax.jit(train_step_lib.create_train_state, static_argnums=1,
                         out_shardings=replicated)(params, optimizer)
    self.step = jax.jit(step, in_shardings=(replicated, sharded),
                        out_shardings=(replicated, replicated), donate_argnums=0)
    self.compiled_step = self.step.lower(self.state, self.batch).compile()
    infer = lambda p, images: self.model.apply({"params": p}, images)[0]
    self.infer = jax.jit(infer, in_shardings=(replicated, sharded), out_shardings=sharded)
    self.compiled_infer = self.infer.lower(self.state.params, self.batch["image"]).compile()
    # Our evaluators' path: kernels standardized once per evaluation pass, not on every call
    # (timm re-standardizes per call).
    served, self.served_params = models.for_inference(self.model, self.state.params)
    self.compiled_served = jax.jit(
        lambda p, images: served.apply({"params": p}, images)[0],
        in_shardings=(replicated, sharded), out_shardings=sharded).lower(
            self.served_params, self.batch["image"]).compile()

  def train_call(self):
    self.state, metrics = self.compiled_step(self.state, self.batch)
    jax.block_until_ready(metrics)

  def infer_call(self):
    jax.block_until_ready(self.compiled_infer(self.state.params, self.batch["image"]))

  def served_call(self):
    jax.block_until_ready(self.compiled_served(self.served_params, self.batch["image"]))

  def flops_per_image(self, compiled) -> float:
    # The cost analysis of a partitioned program is per device: one device's share of the
    # batch, plus the per-step work on the replicated parameters.
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", 0.0)) / self.batch_per_device


class TimmBench:
  """timm's resnetv2_*_bit: the same train step in eager PyTorch, and inference."""

  def __init__(self, args: argparse.Namespace):
    self.torch = torch
    torch.set_num_threads(args.torch_threads)
    self.device = "cuda" if torch.cuda.is_available() else "cpu"
    arch = models.MODEL_NAMES[args.model]
    self.name = TIMM_NAMES[arch]
    self.model = timm.create_model(self.name, pretrained=False,
                                   num_classes=args.num_classes).to(self.device)
    self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9,
                                     weight_decay=1e-4)
    self.autocast = torch.autocast(self.device, dtype=torch.bfloat16,
                                   enabled=args.dtype == "bfloat16")
    n = args.batch
    self.images = torch.rand(n, 3, args.resolution, args.resolution, device=self.device) * 2 - 1
    self.labels = torch.randint(0, args.num_classes, (n,), device=self.device)

  def _sync(self):
    if self.device == "cuda":
      self.torch.cuda.synchronize()

  def train_call(self):
    self.model.train()
    self.optimizer.zero_grad(set_to_none=True)
    with self.autocast:
      loss = self.torch.nn.functional.cross_entropy(self.model(self.images), self.labels)
    loss.backward()
    self.optimizer.step()
    self._sync()

  def infer_call(self):
    self.model.eval()
    with self.torch.inference_mode(), self.autocast:
      self.model(self.images)
    self._sync()


def _timm_or_none(args) -> TimmBench | None:
  if args.timm == "off" or models.MODEL_NAMES[args.model] not in TIMM_NAMES:
    return None
  if timm is None:
    print(f"timm: not measured ({_TIMM_IMPORT_ERROR})")
    return None
  return TimmBench(args)


def run(args: argparse.Namespace) -> dict[str, Any]:
  """Runs every measurement; returns the figures (also printed by `main`)."""
  ours = JaxBench(args)
  timm = _timm_or_none(args)
  device = jax.local_devices()[0]
  n_devices = jax.local_device_count()
  results: dict[str, Any] = {
      "model": args.model, "resolution": args.resolution, "batch_per_device": args.batch,
      "dtype": args.dtype, "accum_steps": args.accum_steps, "remat": args.remat,
      "kernels": args.kernels,
      "device": f"{device.platform}:{device.device_kind}", "devices": n_devices,
      "allocator": host_allocator.loaded_allocator(),
      "timm_model": timm.name if timm else None}
  for kind in ("train", "infer"):
    benches = [("ours", getattr(ours, f"{kind}_call"))]
    if kind == "infer":
      benches.append(("ours_served", ours.served_call))
    if timm:
      benches.append(("timm", getattr(timm, f"{kind}_call")))
    for _, call in benches:
      for _ in range(args.warmup):
        call()
    times = {name: [] for name, _ in benches}
    while len(times[benches[0][0]]) < args.iters:
      block = min(args.block, args.iters - len(times[benches[0][0]]))
      for name, call in benches:
        call()  # Untimed: the switch from the other benchmark.
        times[name].extend(_seconds(call) for _ in range(block))
    for name, ts in times.items():
      seconds = statistics.median(ts)
      results[f"{kind}_{name}_s"] = seconds
      ours_bench = name.startswith("ours")
      images = ours.global_batch if ours_bench else args.batch
      per_device = n_devices if ours_bench else 1
      results[f"{kind}_{name}_images_per_s_per_device"] = images / seconds / per_device
    if timm:
      for name in times:
        if name != "timm":
          results[f"{kind}_ratio_{name}_over_timm"] = (results[f"{kind}_{name}_s"]
                                                       / results[f"{kind}_timm_s"])
  for kind, compiled in (("train", ours.compiled_step), ("infer", ours.compiled_infer)):
    flops = ours.flops_per_image(compiled)
    results[f"{kind}_gflops_per_image"] = flops / 1e9
    memory = memory_summary(compiled)
    results.update({f"{kind}_memory_{k}_gib": v / 2**30 for k, v in memory.items()})
  peak = args.peak_tflops * 1e12
  peak_source = "given"
  if not peak:
    known = [v for (kind, dt), v in PEAK_TFLOPS.items()
             if kind in device.device_kind and dt == args.dtype]
    if known:
      peak, peak_source = known[0] * 1e12, "spec"
    elif device.platform == "cpu":
      peak, peak_source = cpu_matmul_peak(models.DTYPES[args.dtype]), "measured 2048^3 matmul"
  results["peak_tflops_per_device"] = peak / 1e12 if peak else None
  results["peak_source"] = peak_source if peak else None
  for kind in ("train", "infer"):
    achieved = results[f"{kind}_gflops_per_image"] * 1e9 * results[
        f"{kind}_ours_images_per_s_per_device"]
    results[f"{kind}_tflops_per_device"] = achieved / 1e12
    results[f"{kind}_utilisation"] = achieved / peak if peak else None
  return results


def _format(value) -> str:
  if isinstance(value, float):
    return f"{value:.4g}"
  return str(value)


def main(argv: list[str] | None = None) -> dict[str, Any]:
  args = parse_args(argv)
  results = run(args)
  for key, value in results.items():
    print(f"{key}: {_format(value)}")
  row = ["ours"] + [_format(results[f"{k}_ours_images_per_s_per_device"])
                    for k in ("train", "infer")]
  print("\n| | train images/s/device | inference images/s/device |\n|---|---|---|")
  print("| " + " | ".join(row) + " |")
  print(f"| ours, kernels standardized once per pass (our evaluators) | | "
        f"{_format(results['infer_ours_served_images_per_s_per_device'])} |")
  if results["timm_model"]:
    print("| timm | " + " | ".join(_format(results[f"{k}_timm_images_per_s_per_device"])
                                   for k in ("train", "infer")) + " |")
    print("| ours/timm time | " + " | ".join(_format(results[f"{k}_ratio_ours_over_timm"])
                                             for k in ("train", "infer")) + " |")
    print(f"| ours (evaluators)/timm time | | "
          f"{_format(results['infer_ratio_ours_served_over_timm'])} |")
  return results


if __name__ == "__main__":
  main()
