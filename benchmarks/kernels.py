r"""Do the backend-tuned kernels pay? A same-run A/B of the plain model against each variant.

Builds the model with its plain operations (`kernels="plain"`, what accelerators run), with
all of `bit_jax.cpu_kernels.OPS`, and with all of them but one (what each one adds to the
tuned model). For each, `throughput.JaxBench` compiles the real train step (SGD momentum 0.9
with weight decay, softmax cross-entropy, state donated) and the forward our evaluators run
(kernels standardized once per pass, `models.for_inference`); they are timed in turns, blocks
of `--block` calls per variant after one untimed call, and each variant's median time is
printed over the plain model's. A variant stays in `cpu_kernels.OPS` only while it gains at least 3% of the
train or the inference step here (benchmarks/RESULTS.md).

  python benchmarks/kernels.py                          # R50x1, 128 px, batch 8, float32
  python benchmarks/kernels.py --model=tiny-R14 --resolution=32 --iters=2   # smoke run
  python benchmarks/kernels.py --variants="plain,all tuned but conv"         # two of them
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import jax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import throughput  # noqa: E402  # pylint: disable=wrong-import-position
from bit_jax import cpu_kernels, host_allocator, models  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model", default="BiT-M-R50x1", help="a bit_jax.models name")
  parser.add_argument("--resolution", type=int, default=128)
  parser.add_argument("--batch", type=int, default=8, help="images per device per step")
  parser.add_argument("--dtype", default="float32", choices=list(models.DTYPES))
  parser.add_argument("--num_classes", type=int, default=1000)
  parser.add_argument("--iters", type=int, default=15, help="timed calls per variant")
  parser.add_argument("--block", type=int, default=3, help="timed calls in a row")
  parser.add_argument("--variants", default="",
                      help="comma-separated variant names to time (plain always); "
                           "default: every variant")
  return parser.parse_args(argv)


# JaxBench's calls: the train step, and the forward our evaluators run.
CALLS = {"train": "train_call", "infer": "served_call"}


def variants() -> dict[str, dict]:
  """Model fields per variant: the plain model, every tuned op, and each op left out."""
  ops = cpu_kernels.OPS
  out = {"plain": {}, "all tuned": dict(ops)}
  out.update({f"all tuned but {field}": {f: op for f, op in ops.items() if f != field}
              for field in ops})
  return out


def chosen_variants(names: str) -> dict[str, dict]:
  """The variants `--variants` names (all when empty), plain first; `SystemExit` naming the
  valid ones for an unknown name."""
  every = variants()
  wanted = [name.strip() for name in names.split(",") if name.strip()] or list(every)
  unknown = [name for name in wanted if name not in every]
  if unknown:
    raise SystemExit(f"unknown variant {unknown[0]!r}; valid: {', '.join(every)}")
  return {name: every[name] for name in ["plain", *wanted] if name in every}


def run(args: argparse.Namespace) -> dict[str, dict[str, float]]:
  """{variant: {"train_s", "infer_s", "train_ratio", "infer_ratio"}}; ratios over plain."""
  bench_args = throughput.parse_args(
      [f"--model={args.model}", f"--resolution={args.resolution}", f"--batch={args.batch}",
       f"--dtype={args.dtype}", f"--num_classes={args.num_classes}", "--kernels=plain"])
  plain = models.get_model(args.model, args.num_classes, dtype=args.dtype, kernels="plain")
  benches = {name: throughput.JaxBench(bench_args, model=plain.clone(**fields))
             for name, fields in chosen_variants(args.variants).items()}
  results = {name: {} for name in benches}
  for kind in ("train", "infer"):
    times = {name: [] for name in benches}
    for bench in benches.values():
      getattr(bench, CALLS[kind])()  # Warm-up.
    while len(times["plain"]) < args.iters:
      block = min(args.block, args.iters - len(times["plain"]))
      for name, bench in benches.items():
        call = getattr(bench, CALLS[kind])
        call()  # Untimed: the switch from the other variant.
        for _ in range(block):
          start = time.perf_counter()
          call()
          times[name].append(time.perf_counter() - start)
    for name, ts in times.items():
      results[name][f"{kind}_s"] = statistics.median(ts)
    for name in benches:
      results[name][f"{kind}_ratio"] = results[name][f"{kind}_s"] / results["plain"][f"{kind}_s"]
  return results


def main(argv: list[str] | None = None) -> dict:
  args = parse_args(argv)
  results = run(args)
  device = jax.local_devices()[0]
  print(f"model: {args.model}, {args.resolution} px, batch {args.batch}/device, {args.dtype}; "
        f"device: {device.platform}:{device.device_kind} x{jax.local_device_count()}; "
        f"malloc: {host_allocator.loaded_allocator()}; {args.iters} calls per variant")
  print("\n| variant | train step ms | / plain | inference ms (evaluators) | / plain |\n"
        "|---|---|---|---|---|")
  for name, r in results.items():
    print(f"| {name} | {1e3 * r['train_s']:.1f} | {r['train_ratio']:.3f} | "
          f"{1e3 * r['infer_s']:.1f} | {r['infer_ratio']:.3f} |")
  return results


if __name__ == "__main__":
  main()
