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
there) and its scheduler does not turn `remat` into a lower peak (the recomputation is
there, the saving is not); the residuals column shows what both save on a backend that
keeps them. The model is the plain one accelerators run (`kernels="plain"`), not the
XLA:CPU-tuned kernels `bit_jax.cpu_kernels` would give it on CPU.

Copy the printed table into benchmarks/RESULTS.md (section "Memory").
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bit_jax import losses, models  # noqa: E402
from bit_jax import train_step as train_step_lib  # noqa: E402

GIB = 2**30
# dtype:accum_steps:remat, from the naive step to the one that fits.
DEFAULT_SETTINGS = ("float32:1:0,bfloat16:1:0,bfloat16:1:1,bfloat16:16:1,float32:32:0,"
                    "bfloat16:32:1,bfloat16:64:1")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model", default="BiT-M-R152x4")
  parser.add_argument("--resolution", type=int, default=384)
  parser.add_argument("--batch", type=int, default=512, help="images per step, one device")
  parser.add_argument("--num_classes", type=int, default=1000)
  parser.add_argument("--settings", default=DEFAULT_SETTINGS,
                      help="comma-separated dtype:accum_steps:remat (remat 0 or 1)")
  parser.add_argument("--budget_gib", type=float, default=80e9 / GIB,
                      help="the accelerator's memory: 80 GB (74.5 GiB)")
  return parser.parse_args(argv)


def compiled_memory(model_name: str, resolution: int, batch: int, num_classes: int,
                    dtype, accum_steps: int, remat: bool) -> dict[str, float]:
  """Memory analysis (bytes) of the compiled fine-tuning step; nothing is allocated."""
  model = models.get_model(model_name, num_classes, dtype=dtype, remat=remat, kernels="plain")
  params = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, resolution, resolution, 3))))["params"]
  schedule = lambda step: 0.003 * jnp.ones(())
  optimizer = optax.chain(optax.trace(decay=0.9), optax.scale_by_learning_rate(schedule))
  state = jax.eval_shape(lambda p: train_step_lib.create_train_state(p, optimizer), params)
  batch_shapes = {"image": jax.ShapeDtypeStruct((batch, resolution, resolution, 3), jnp.float32),
                  "label": jax.ShapeDtypeStruct((batch, num_classes), jnp.float32)}
  step = train_step_lib.make_train_step(model, optimizer, losses.softmax_xent, schedule,
                                        accum_steps=accum_steps, mixup_alpha=0.1,
                                        rng=jax.random.key(0))
  start = time.perf_counter()
  compiled = jax.jit(step, donate_argnums=0).lower(state, batch_shapes).compile()
  stats = compiled.memory_analysis()
  out = {"argument": stats.argument_size_in_bytes, "output": stats.output_size_in_bytes,
         "alias": stats.alias_size_in_bytes, "temp": stats.temp_size_in_bytes}
  out["peak"] = out["argument"] + out["output"] - out["alias"] + out["temp"]
  out["params"] = _nbytes(params)
  out["compile_s"] = time.perf_counter() - start
  out["residuals"] = residual_bytes(model, params, batch // accum_steps, resolution, num_classes)
  return out


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


def parse_settings(text: str) -> list[tuple[str, int, bool]]:
  settings = []
  for item in text.split(","):
    dtype, accum, remat = item.split(":")
    if dtype not in ("float32", "bfloat16"):
      raise ValueError(f"dtype {dtype!r}: float32 or bfloat16")
    settings.append((dtype, int(accum), bool(int(remat))))
  return settings


def main(argv: list[str] | None = None) -> list[dict]:
  args = parse_args(argv)
  device = jax.devices()[0]
  print(f"model: {args.model}\nresolution: {args.resolution}\nbatch: {args.batch}\n"
        f"device: {device.platform}:{device.device_kind}\nbudget_gib: {args.budget_gib:.1f}")
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
  main()
