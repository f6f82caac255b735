r"""Accelerator throughput: train and inference images/s, MFU and memory; one dated row.

On each local device of a GPU or TPU host, for BiT-S-R50x1 at 224 px in bfloat16 at 128 and
256 images per device:
- train images/s per device: the real upstream step, built as `bit_jax.train` builds it
  (`configs/bit_s.py`'s optimizer, loss and sharding; `train_step.make_train_step`, jitted
  with the batch split over the mesh's `data` axis and the state donated);
- inference images/s per device: the forward our evaluators run (`models.for_inference`:
  kernels standardized once per pass);
- FLOPs per step per device: XLA's cost analysis of the compiled program where it counts at
  least the convolutions and matrix products the program must do (`matmul_flops`, counted
  from the program's jaxpr); else that count. The row says which;
- MFU: those FLOPs per second over the device's peak dense bf16 FLOP/s (`PEAK_BF16_FLOPS`,
  by `device.device_kind`; blank for a kind not listed, e.g. CPU);
- compiled peak memory per device (XLA's memory analysis: arguments + outputs - aliased +
  temporaries);
- the input pipeline's images/s with all host cores: the real `input_pipeline.train_dataset`
  stream with the config's train preprocessing at this resolution, on JPEGs (500x375, as
  benchmarks/input_pipeline.py writes them) in a temporary folder. Needs TensorFlow; without
  it the cell says why.
Then it appends one row (date, commit, device kind and count, jax version, every number) to
the table under "## Accelerator throughput" in `--results` (made if missing; the file is
replaced atomically) and prints it.

Timing: compilation and `--warmup` calls are not timed; one more call sizes the timed
windows (`--window_s` each, fewer and shorter if the budget is short); each window ends with
`block_until_ready`; the median of `--windows` windows is kept. `--budget_s` bounds the run:
each phase (train and inference per batch size, the input pipeline) gets its share of what
is left after the compilations still to come, and a phase that would start past the budget is
skipped (its cells say so).

  python benchmarks/accelerator.py            # on a GPU or TPU host: R50x1, 224 px, 128,256
  python benchmarks/accelerator.py --model=tiny-R14 --resolution=32 --batches=2,4 \
      --budget_s=60 --results=/tmp/RESULTS.md  # a CPU smoke run

On this workplace's lent GPU machine (the `run` tool; /work/.library/device/KINDS.md, as
read in 2026-11: its python3 is Python 3.12 with jax 0.11.2 and the jax-cuda13 plugin, flax,
optax, absl-py and numpy, but no ml_collections and no TensorFlow), one call, which ends in
under 8 minutes (the default --budget_s=420 plus imports):

  run(command="set -o pipefail; cp benchmarks/RESULTS.md $OUT/; PYTHONUNBUFFERED=1 "
              "PYTHONPATH=.venv/lib/python3.11/site-packages python3 benchmarks/accelerator.py "
              "--results=$OUT/RESULTS.md --commit=<git rev-parse --short HEAD, run here> "
              "2>&1 | tee $OUT/accelerator.log",
      carry=[".venv/lib/python3.11/site-packages/ml_collections"], timeout_s=480)

ml_collections (pure Python, 0.6 MiB; configs/ imports it) travels from this checkout's venv,
alone in that folder there. The machine's own jax, flax and optax run the program: pinned
jaxlib 0.10.2 cannot travel (its wheel alone is 85 MB; a call carries at most 64 MiB), nor
can TensorFlow (274 MB), so that row's pipeline cell reads "n/a (No module named
'tensorflow')". The tree travels without .git, hence `--commit`. The row comes back in
$OUT/RESULTS.md and the log: copy that file over benchmarks/RESULTS.md if the local one has
not changed since, else append the printed row to its table.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
sys.path.insert(0, ROOT)
from xla_memory import memory_summary  # noqa: E402  # pylint: disable=wrong-import-position
from bit_jax import atomic_files, distributed, entry, losses, models, optim, sharding  # noqa: E402
from bit_jax import train_step as train_step_lib  # noqa: E402
from bit_jax.errors import UserError  # noqa: E402
from configs import bit_s, common  # noqa: E402

GIB = 2**30
# Peak dense (not 2:4-sparse) bfloat16 FLOP/s per JAX device, by `device.device_kind`.
# NVIDIA's datasheets give Tensor Core BF16 "with sparsity"; the dense rate is half of it.
PEAK_BF16_FLOPS = {
    # H100 Tensor Core GPU datasheet: SXM 1,979 TFLOPS, PCIe 1,513, NVL 1,671 (with sparsity).
    "NVIDIA H100 80GB HBM3": 989e12,
    "NVIDIA H100 PCIe": 756e12,
    "NVIDIA H100 NVL": 835e12,
    # H200 Tensor Core GPU datasheet: SXM 1,979 TFLOPS with sparsity.
    "NVIDIA H200": 989e12,
    # A100 Tensor Core GPU datasheet: 312 TFLOPS dense, SXM and PCIe, 40 and 80 GB.
    "NVIDIA A100-SXM4-40GB": 312e12,
    "NVIDIA A100-SXM4-80GB": 312e12,
    "NVIDIA A100-PCIE-40GB": 312e12,
    "NVIDIA A100 80GB PCIe": 312e12,
    # Cloud TPU system architecture pages, per chip: v3 123 TFLOPS (two TensorCores, each
    # its own JAX device), v4 275 (one device per chip: megacore), v5e ("TPU v5 lite") 197,
    # v5p ("TPU v5", also reported as "TPU v5p") 459, v6e ("TPU v6 lite") 918.
    "TPU v3": 123e12 / 2,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5": 459e12,
    "TPU v5p": 459e12,
    "TPU v6 lite": 918e12,
}
HEADING = "## Accelerator throughput"
INTRO = ("`python benchmarks/accelerator.py` (see its docstring): one row per run. Per device: "
         "the upstream train step (`configs/bit_s.py`) and the evaluators' forward on a "
         "device-resident random batch, median of timed windows after warm-up; FLOPs per "
         "step from XLA's cost analysis (`xla`) or the jaxpr's convolutions and matrix "
         "products (`jaxpr`); MFU against the peak dense bf16 FLOP/s in the peak column; "
         "compiled peak memory from XLA's memory analysis; the input pipeline on synthetic "
         "500x375 JPEGs with all host cores. Several batch sizes: values in the order of the "
         "batch column, separated by /.")
COLUMNS = ("date", "commit", "device", "devices", "jax", "model", "px", "dtype",
           "batch per device", "train images/s per device", "inference images/s per device",
           "train MFU", "inference MFU", "train GFLOP per step per device",
           "inference GFLOP per step per device", "FLOPs from", "train peak GiB per device",
           "inference peak GiB per device", "input pipeline images/s (host cores)",
           "peak TFLOP/s per device", "run s")
PIPELINE_WARMUP = 5  # Untimed batches while tf.data's autotune settles (as input_pipeline.py).
JPEG_SIZE = (375, 500)  # (height, width): ImageNet's median, as benchmarks/input_pipeline.py.


class _Parser(argparse.ArgumentParser):
  def error(self, message):  # One `error:` line (bit_jax.entry), not argparse's usage + line.
    raise UserError(message)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  parser = _Parser(description=__doc__.split("\n")[0])
  parser.add_argument("--model", default="BiT-S-R50x1", help="a bit_jax.models name")
  parser.add_argument("--resolution", type=int, default=224)
  parser.add_argument("--batches", default="128,256",
                      help="comma-separated images per device per step")
  parser.add_argument("--dtype", default="bfloat16", help=f"one of {', '.join(models.DTYPES)}")
  parser.add_argument("--results", default=os.path.join(ROOT, "benchmarks", "RESULTS.md"),
                      help="the Markdown file whose table gets the row")
  parser.add_argument("--budget_s", type=float, default=420.0,
                      help="the whole run's bound in seconds, compilations included")
  parser.add_argument("--windows", type=int, default=5, help="timed windows; the median is kept")
  parser.add_argument("--window_s", type=float, default=2.0, help="length of one timed window")
  parser.add_argument("--warmup", type=int, default=2, help="untimed calls after compiling")
  parser.add_argument("--pipeline_images", type=int, default=256,
                      help="JPEGs written for the input pipeline; 0 skips it")
  parser.add_argument("--peak_tflops", type=float, default=0.0,
                      help="peak dense TFLOP/s per device; default, for bfloat16: "
                           "PEAK_BF16_FLOPS by device kind")
  parser.add_argument("--commit", default="",
                      help="what the row names as the commit; default: git rev-parse, "
                           "with +uncommitted if tracked files changed")
  args = parser.parse_args(argv)
  try:
    args.batches = [int(b) for b in args.batches.split(",")]
  except ValueError:
    raise UserError(f"--batches={args.batches!r} is not valid: give comma-separated "
                    "integers >= 1, e.g. 128,256") from None
  checks = [(min(args.batches) >= 1, f"--batches={args.batches} must all be >= 1"),
            (len(set(args.batches)) == len(args.batches),
             f"--batches={args.batches} must be distinct"),
            (args.resolution >= 32, f"--resolution={args.resolution} must be >= 32 (the "
                                    "network downsamples 32x)"),
            (args.dtype in models.DTYPES, f"--dtype={args.dtype!r}: one of "
                                          f"{', '.join(models.DTYPES)}"),
            (args.budget_s > 0, f"--budget_s={args.budget_s} must be > 0"),
            (args.windows >= 1, f"--windows={args.windows} must be >= 1"),
            (args.window_s > 0, f"--window_s={args.window_s} must be > 0"),
            (args.warmup >= 0, f"--warmup={args.warmup} must be >= 0"),
            (args.pipeline_images >= 0, f"--pipeline_images={args.pipeline_images} must be "
                                        ">= 0"),
            (args.peak_tflops >= 0, f"--peak_tflops={args.peak_tflops} must be >= 0")]
  for ok, message in checks:
    if not ok:
      raise UserError(message)
  models.get_architecture(args.model)  # UserError listing the valid names.
  return args


# --- FLOPs counted from the program --------------------------------------------------------

def matmul_flops(jaxpr: Any) -> int:
  """FLOPs of the convolutions and matrix products in `jaxpr` (a `ClosedJaxpr` or `Jaxpr`).

  Two per multiply-add, and only the multiply-adds of real input elements: not those of a
  convolution's padding or of the holes of a dilated input (a strided convolution's input
  gradient), as XLA's cost analysis counts them. Nested programs are counted where they run:
  a `scan` body times its length, the larger `cond` branch, a `while` body once (its trip
  count is not in the program). Elementwise work is left out, so this is a lower bound on
  what a compiled program of `jaxpr` does.
  """
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "conv_general_dilated":
      total += _conv_flops(eqn)
    elif name == "dot_general":
      total += _dot_flops(eqn)
    inner = [matmul_flops(sub) for sub in _subjaxprs(eqn.params)]
    if name == "cond":
      total += max(inner, default=0)
    else:
      total += sum(inner) * (eqn.params["length"] if name == "scan" else 1)
  return total


def _subjaxprs(params: dict) -> list:
  found = []
  for value in params.values():
    for item in value if isinstance(value, (tuple, list)) else (value,):
      if hasattr(item, "eqns") or hasattr(getattr(item, "jaxpr", None), "eqns"):
        found.append(item)
  return found


def _dot_flops(eqn) -> int:
  (lhs_contracting, _), _ = eqn.params["dimension_numbers"]
  lhs, out = eqn.invars[0].aval, eqn.outvars[0].aval
  return 2 * int(np.prod(out.shape)) * int(np.prod([lhs.shape[d] for d in lhs_contracting]))


def _conv_flops(eqn) -> int:
  """Output batch x output features x input features per group x the (output position,
  kernel tap) pairs that land on a real input element, per spatial dimension."""
  lhs, rhs = eqn.invars[0].aval, eqn.invars[1].aval
  out = eqn.outvars[0].aval
  p = eqn.params
  lhs_spec, rhs_spec, out_spec = p["dimension_numbers"]
  pairs = 1
  for i in range(len(lhs_spec) - 2):
    size, taps = lhs.shape[lhs_spec[2 + i]], rhs.shape[rhs_spec[2 + i]]
    lhs_dilation, rhs_dilation = p["lhs_dilation"][i], p["rhs_dilation"][i]
    stride, (low, _) = p["window_strides"][i], p["padding"][i]
    last = (size - 1) * lhs_dilation  # The dilated input's last real element.
    pairs *= sum(1 for o in range(out.shape[out_spec[2 + i]]) for k in range(taps)
                 if 0 <= o * stride + k * rhs_dilation - low <= last
                 and (o * stride + k * rhs_dilation - low) % lhs_dilation == 0)
  return 2 * out.shape[out_spec[0]] * out.shape[out_spec[1]] * rhs.shape[rhs_spec[1]] * pairs


def step_flops(compiled: jax.stages.Compiled, counted: int) -> tuple[float, str]:
  """(FLOPs, "xla" or "jaxpr"): XLA's count of `compiled` unless it is below `counted`, the
  jaxpr's convolutions and matrix products, which the program cannot do without (a backend
  that leaves its library calls out of the count gives less)."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  xla = float((cost or {}).get("flops", 0.0))
  return (xla, "xla") if xla >= counted else (float(counted), "jaxpr")


# --- Timing ----------------------------------------------------------------------------------

class Budget:
  """The run's deadline, shared out among the phases still to come."""

  def __init__(self, seconds: float, phases: int, compilations: int):
    self.start = time.perf_counter()
    self.deadline = self.start + seconds
    self.phases, self.compilations = phases, compilations
    self.compile_times: list[float] = []

  def left(self) -> float:
    return self.deadline - time.perf_counter()

  def compiled(self, seconds: float) -> None:
    self.compile_times.append(seconds)
    self.compilations -= 1

  def skip_to(self, phases: int, compilations: int) -> None:
    """What is still to come after a phase ended early (skipped, or out of memory)."""
    self.phases, self.compilations = phases, compilations

  def share(self) -> float:
    """Seconds for the phase starting now: an equal part of what is left once the
    compilations still to come (at the mean time of those so far) are set aside."""
    mean_compile = statistics.mean(self.compile_times) if self.compile_times else 0.0
    share = max(0.0, self.left() - mean_compile * self.compilations) / max(self.phases, 1)
    self.phases -= 1
    return share


def timed_rate(call: Callable[[], Any], images_per_call: float, share_s: float,
               args: argparse.Namespace, warmup: int | None = None) -> dict[str, float]:
  """Median images/s of `call` over `args.windows` windows after `warmup` calls (default
  `args.warmup`).

  One more call sizes the windows: `args.window_s` each, shorter if `share_s` is short, and
  at least one call; every window ends with `block_until_ready` on its last call's output.
  """
  for _ in range(args.warmup if warmup is None else warmup):
    jax.block_until_ready(call())
  start = time.perf_counter()
  jax.block_until_ready(call())
  one = time.perf_counter() - start
  calls = max(1, int(min(args.window_s, share_s / args.windows) / one))
  rates = []
  for _ in range(args.windows):
    start = time.perf_counter()
    for _ in range(calls):
      out = call()
    jax.block_until_ready(out)
    rates.append(images_per_call * calls / (time.perf_counter() - start))
  return {"rate": statistics.median(rates), "calls_per_window": calls}


def _is_out_of_memory(e: Exception) -> bool:
  text = str(e)
  return "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()


# --- The programs ----------------------------------------------------------------------------

class Upstream:
  """What `bit_jax.train` builds before its loop, from configs/bit_s.py (ILSVRC-2012
  upstream) for `args.model` at `args.resolution` and `args.dtype`: the model, the optimizer
  and loss, the state's shardings and its initializer. Built once: every batch size's
  program shares them (and the initializer's compilation)."""

  def __init__(self, args: argparse.Namespace, mesh: jax.sharding.Mesh):
    config = self.config = bit_s.get_config(f"model={args.model}")
    # The batch size and the schedule's epochs only set the learning rate, which costs the
    # same at any value: the first batch size's serves them all.
    config.dtype, config.image_size = args.dtype, args.resolution
    config.batch_size = args.batches[0] * mesh.size
    self.mesh = mesh
    self.model = models.get_model(config.model, num_classes=config.num_classes,
                                  dtype=config.dtype, remat=config.remat,
                                  kernels=config.kernels, head_bias_init=config.head_bias_init)
    self.schedule = optim.make_schedule(config, steps_per_epoch=1000,
                                        total_steps=1000 * config.total_epochs)
    self.optimizer = optim.make_optimizer(config, self.schedule)
    self.loss = losses.get_loss(config.loss)
    image_shape = (1, config.image_size, config.image_size, 3)

    def new_state():
      params = self.model.init(jax.random.key(config.seed), jnp.zeros(image_shape))["params"]
      return train_step_lib.create_train_state(params, self.optimizer)

    shapes = jax.eval_shape(new_state)
    self.state_shardings = sharding.shardings(shapes, mesh, config.sharding,
                                              config.fsdp_min_size)
    self.init_state = jax.jit(new_state, out_shardings=self.state_shardings)


def measure_batch(args: argparse.Namespace, upstream: Upstream, batch_per_device: int,
                  budget: Budget) -> dict[str, Any]:
  """Train and inference figures at `batch_per_device`, as `bit_jax.train` runs the step."""
  config, mesh, n = upstream.config, upstream.mesh, upstream.mesh.size
  replicated, batched = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  state = upstream.init_state()
  rng = np.random.default_rng(0)
  global_batch = batch_per_device * n
  images = rng.uniform(-1, 1, (global_batch, config.image_size, config.image_size, 3))
  labels = np.eye(config.num_classes, dtype=np.float32)[
      rng.integers(0, config.num_classes, global_batch)]
  batch = jax.device_put({"image": images.astype(np.float32), "label": labels}, batched)

  step = train_step_lib.make_train_step(upstream.model, upstream.optimizer, upstream.loss,
                                        upstream.schedule, accum_steps=config.accum_steps)
  start = time.perf_counter()
  traced = jax.jit(step, in_shardings=(upstream.state_shardings, batched),
                   out_shardings=(upstream.state_shardings, replicated),
                   donate_argnums=0).trace(state, batch)
  compiled_step = traced.lower().compile()
  out: dict[str, Any] = {"train_compile_s": time.perf_counter() - start}
  budget.compiled(out["train_compile_s"])
  out["train_peak"] = memory_summary(compiled_step)["peak"]
  # The jaxpr is of the whole mesh's batch; every conv and matrix product scales with it.
  out["train_flops"], out["flops_from"] = step_flops(compiled_step,
                                                     matmul_flops(traced.jaxpr) // n)

  def train_call():
    nonlocal state
    state, metrics = compiled_step(state, batch)
    return metrics  # Its param_norm is of the updated parameters: the whole step is done.

  timed = timed_rate(train_call, batch_per_device, budget.share(), args)
  out["train_rate"], out["train_calls"] = timed["rate"], timed["calls_per_window"]

  inner, served_params = models.for_inference(upstream.model, state.params)
  del state  # Its buffers, before the inference program's.
  forward = lambda p, x: inner.apply({"params": p}, x)[0]
  start = time.perf_counter()
  traced = jax.jit(forward, in_shardings=(replicated, batched),
                   out_shardings=batched).trace(served_params, batch["image"])
  compiled_forward = traced.lower().compile()
  out["infer_compile_s"] = time.perf_counter() - start
  budget.compiled(out["infer_compile_s"])
  out["infer_peak"] = memory_summary(compiled_forward)["peak"]
  out["infer_flops"], infer_from = step_flops(compiled_forward, matmul_flops(traced.jaxpr) // n)
  if infer_from != out["flops_from"]:
    out["flops_from"] = f"train {out['flops_from']}, inference {infer_from}"
  timed = timed_rate(lambda: compiled_forward(served_params, batch["image"]),
                     batch_per_device, budget.share(), args)
  out["infer_rate"], out["infer_calls"] = timed["rate"], timed["calls_per_window"]
  return out


def _input_pipeline_benchmark():
  """benchmarks/input_pipeline.py, loaded under another name (its own is the package's)."""
  spec = importlib.util.spec_from_file_location(
      "benchmarks_input_pipeline", os.path.join(ROOT, "benchmarks", "input_pipeline.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def measure_pipeline(args: argparse.Namespace, num_classes: int, batch: int,
                     share_s: float) -> dict[str, Any]:
  """Images/s of the per-process training stream with all host cores (tf.data autotune)."""
  try:
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    return {"pipeline": f"n/a ({e})"}
  tf.config.set_visible_devices([], "GPU")  # tf.data only preprocesses; JAX owns the GPUs.
  import input_pipeline  # pylint: disable=import-outside-toplevel
  writer = _input_pipeline_benchmark()
  pp = common.imagenet_pp(num_classes, crop=args.resolution,
                          resize=round(args.resolution * 256 / 224))[0]
  with tempfile.TemporaryDirectory() as root:
    writer.write_jpegs(root, args.pipeline_images, *JPEG_SIZE)
    source = input_pipeline.get_source(f"folder:{root}")
    stream = iter(input_pipeline.train_dataset(source, "train", pp, batch).as_numpy_iterator())
    timed = timed_rate(lambda: next(stream), batch, share_s, args, warmup=PIPELINE_WARMUP)
  cores = len(os.sched_getaffinity(0))
  return {"pipeline": f"{_number(timed['rate'])} ({cores} cores)",
          "pipeline_rate": timed["rate"], "pipeline_calls": timed["calls_per_window"]}


# --- The row ---------------------------------------------------------------------------------

def _number(x: float) -> str:
  return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.4g}"


def _commit(given: str) -> str:
  if given:
    return given
  env = dict(os.environ, GIT_OPTIONAL_LOCKS="0")  # Read only: never refresh the index.
  git = lambda *a: subprocess.run(["git", "-C", ROOT, *a], capture_output=True, text=True,
                                  env=env, check=True).stdout.strip()
  try:
    head = git("rev-parse", "--short", "HEAD")
    changed = git("status", "--porcelain", "--untracked-files=no")
  except (OSError, subprocess.CalledProcessError):
    return "uncommitted"
  return f"{head}+uncommitted" if changed else head


def make_row(args: argparse.Namespace, per_batch: dict[int, dict], pipeline: dict,
             peak: float | None, seconds: float) -> list[str]:
  device = jax.local_devices()[0]

  def cells(key: str, fmt: Callable[[dict], str]) -> str:
    return " / ".join(fmt(r) if key in r else r.get("skipped", "skipped")
                      for r in per_batch.values())

  def mfu(kind: str) -> str:
    # FLOPs per step x steps per second (images/s over images per step) over the peak.
    utilisation = lambda r: r[f"{kind}_flops"] * r[f"{kind}_rate"] / r["batch"] / peak
    return cells(f"{kind}_rate", lambda r: f"{100 * utilisation(r):.3g}%") if peak else ""

  return [
      datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
      _commit(args.commit), f"{device.platform}:{device.device_kind}",
      str(jax.local_device_count()), jax.__version__, args.model, str(args.resolution),
      args.dtype, " / ".join(str(b) for b in per_batch),
      cells("train_rate", lambda r: _number(r["train_rate"])),
      cells("infer_rate", lambda r: _number(r["infer_rate"])),
      mfu("train"), mfu("infer"),
      cells("train_flops", lambda r: _number(r["train_flops"] / 1e9)),
      cells("infer_flops", lambda r: _number(r["infer_flops"] / 1e9)),
      cells("flops_from", lambda r: r["flops_from"]),
      cells("train_peak", lambda r: _number(r["train_peak"] / GIB)),
      cells("infer_peak", lambda r: _number(r["infer_peak"] / GIB)),
      pipeline["pipeline"], _number(peak / 1e12) if peak else "", f"{seconds:.0f}"]


def _table_line(cells: Sequence[str]) -> str:
  return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def append_row(path: str, row: Sequence[str]) -> None:
  """Adds `row` as the last line of the table under `HEADING` in `path`, replacing the file
  atomically. Makes the file, the heading (at the end) or the table (at the section's end)
  where missing; a table under the heading with other columns is left as it is, and a new
  one starts after it."""
  text = open(path, encoding="utf-8").read() if os.path.exists(path) else ""
  lines = text.splitlines()
  header = [_table_line(COLUMNS), "|" + "---|" * len(COLUMNS)]
  new = [_table_line(row)]
  if HEADING not in (line.strip() for line in lines):
    lines += ([""] if lines else []) + [HEADING, "", INTRO, ""] + header + new
  else:
    start = [line.strip() for line in lines].index(HEADING)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")),
               len(lines))
    table = [i for i in range(start + 1, end) if lines[i].startswith("|")]
    if table and lines[table[0]] == header[0]:
      lines[table[-1] + 1:table[-1] + 1] = new
    else:
      at = table[-1] + 1 if table else end
      while not table and at > start + 1 and not lines[at - 1].strip():
        at -= 1  # Before the blank lines that end the section.
      lines[at:at] = [""] + header + new + ([""] if at < len(lines) else [])
  atomic_files.write(path, lambda f: f.write("\n".join(lines) + "\n"), text=True)


def run(args: argparse.Namespace) -> dict[str, Any]:
  """Measures everything `args` asks for; appends and returns the row, with the figures."""
  devices = jax.local_devices()
  mesh = distributed.data_mesh(devices)
  device = devices[0]
  # The table's peaks are bf16's: a float32 run gets an MFU only from --peak_tflops.
  peak = args.peak_tflops * 1e12 or (
      PEAK_BF16_FLOPS.get(device.device_kind) if args.dtype == "bfloat16" else None)
  budget = Budget(args.budget_s, phases=2 * len(args.batches) + 1,
                  compilations=2 * len(args.batches))
  print(f"device: {device.platform}:{device.device_kind} x {len(devices)}\n"
        f"jax: {jax.__version__}\nmodel: {args.model}\nresolution: {args.resolution}\n"
        f"dtype: {args.dtype}\npeak_tflops_per_device: {peak / 1e12 if peak else 'unknown'}",
        flush=True)
  upstream = Upstream(args, mesh)
  per_batch = {}
  for batch in args.batches:
    after = (budget.phases - 2, budget.compilations - 2)  # Train and inference.
    if budget.left() <= 0:
      per_batch[batch] = {"batch": batch, "skipped": "over budget"}
      budget.skip_to(*after)
      continue
    try:
      result = measure_batch(args, upstream, batch, budget)
    except Exception as e:  # pylint: disable=broad-except
      if not _is_out_of_memory(e):
        raise
      result = {"skipped": "out of memory"}
      budget.skip_to(*after)
      print(f"batch {batch}: out of memory ({str(e).splitlines()[0]})", flush=True)
    per_batch[batch] = {"batch": batch, **result}
    for key, value in result.items():
      print(f"batch{batch}_{key}: {_number(value) if isinstance(value, float) else value}",
            flush=True)
  share = budget.share()
  if not args.pipeline_images:
    pipeline = {"pipeline": "n/a (--pipeline_images=0)"}
  elif budget.left() <= 0:
    pipeline = {"pipeline": "n/a (over budget)"}
  else:  # What one host feeds its devices per step, at the largest batch.
    pipeline = measure_pipeline(args, upstream.config.num_classes,
                                max(args.batches) * len(devices), share)
  print(f"input_pipeline: {pipeline['pipeline']}", flush=True)
  row = make_row(args, per_batch, pipeline, peak, time.perf_counter() - budget.start)
  append_row(args.results, row)
  print(f"\nappended to {args.results}:\n{_table_line(COLUMNS)}\n{_table_line(row)}")
  return {"row": row, "per_batch": per_batch, **pipeline}


def main(argv: Sequence[str] | None = None) -> None:
  entry.run(lambda: run(parse_args(argv)))


if __name__ == "__main__":
  main()
