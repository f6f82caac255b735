"""The benchmark scripts run end to end on a tiny model and print their fields (not timed)."""
import importlib.util
import os

import pytest

from bit_jax import cpu_kernels

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name):
  spec = importlib.util.spec_from_file_location(
      f"benchmarks_{name}", os.path.join(ROOT, "benchmarks", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _printed_fields(text):
  return dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)


def test_throughput_prints_speed_flops_utilisation_and_memory(capsys):
  throughput = _load("throughput")
  results = throughput.main(["--model=tiny-R14", "--resolution=32", "--batch=1",
                             "--iters=1", "--warmup=1", "--timm=off"])
  fields = _printed_fields(capsys.readouterr().out)
  for key in ("train_ours_images_per_s_per_device", "infer_ours_images_per_s_per_device",
              "train_gflops_per_image", "train_utilisation", "train_memory_peak_gib",
              "infer_memory_temp_gib", "peak_tflops_per_device", "device", "allocator"):
    assert key in fields, key
  assert results["train_ours_images_per_s_per_device"] > 0
  # Training costs about 3 forward passes, plus the per-step work on the parameters (weight
  # standardization and the update), which is large for a tiny model at 1 image per device.
  ratio = results["train_gflops_per_image"] / results["infer_gflops_per_image"]
  assert 2.5 < ratio < 5
  assert 0 < results["train_utilisation"]
  assert results["peak_source"] == "measured 2048^3 matmul"
  # Donated state: the outputs alias the arguments.
  assert results["train_memory_alias_gib"] > 0
  assert results["timm_model"] is None and "train_ratio_ours_over_timm" not in results


def test_memory_prints_the_analysis_of_each_setting(capsys):
  memory = _load("memory")
  rows = memory.main(["--model=tiny-R14", "--resolution=32", "--batch=4",
                      "--settings=float32:1:0,bfloat16:2:1"])
  out = capsys.readouterr().out
  assert "| float32 | 1 (4) | no |" in out and "| bfloat16 | 2 (2) | yes |" in out
  assert [(r["dtype"], r["accum_steps"], r["remat"]) for r in rows] == [
      ("float32", 1, False), ("bfloat16", 2, True)]
  for r in rows:
    assert r["peak"] == r["argument"] + r["output"] - r["alias"] + r["temp"]
    assert r["temp"] > 0 and r["fits"]
  # bf16 + remat + half the micro-batch keeps far fewer bytes for the backward pass.
  assert 0 < rows[1]["residuals"] < rows[0]["residuals"] / 4
  # The arguments hold the float32 parameters and their momentum, whatever the compute dtype.
  assert rows[0]["argument"] > 2 * rows[0]["params"]


def test_memory_rejects_a_batch_that_does_not_split():
  memory = _load("memory")
  with pytest.raises(ValueError, match="not divisible"):
    memory.main(["--model=tiny-R14", "--resolution=32", "--batch=6", "--settings=float32:4:0"])


def test_memory_upstream_compares_replicated_and_fsdp_per_device(capsys):
  memory = _load("memory")
  rows = memory.main(["--upstream", "--upstream_settings=bit_l:tiny-R14:2", "--resolution=32",
                      "--num_classes=4", "--fsdp_min_size=4096", "--devices=8"])
  out = capsys.readouterr().out
  assert "| tiny-R14 | 4 | 2 | replicated |" in out and "| tiny-R14 | 4 | 2 | fsdp |" in out
  assert "fits TPU v3 (16 GiB)" in out and "fits H200 (141 GiB)" in out
  replicated, fsdp = rows
  assert (replicated["sharding"], fsdp["sharding"]) == ("replicated", "fsdp")
  for r in rows:
    assert r["peak"] == r["argument"] + r["output"] - r["alias"] + r["temp"]
  # Per device: the whole state replicated; fsdp holds 1/8 of its large leaves.
  assert replicated["state_per_device"] == replicated["state"]
  assert fsdp["state_per_device"] < replicated["state"] / 3
  assert fsdp["argument"] < replicated["argument"] and fsdp["peak"] < replicated["peak"]


def test_memory_reads_xla_cpus_schedule_from_its_flags():
  memory = _load("memory")
  flag = memory.CPU_SCHEDULER_FLAG
  assert memory.cpu_scheduler("") == "concurrency"  # XLA:CPU's default.
  assert memory.cpu_scheduler(f"--xla_force_host_platform_device_count=8 {flag}=false") == (
      "memory")
  assert memory.cpu_scheduler(f"{flag}=false {flag}=true") == "concurrency"  # The last wins.


def test_kernels_lists_the_plain_model_all_tuned_and_each_op_left_out():
  kernels = _load("kernels")
  ops = set(cpu_kernels.OPS)
  assert set(kernels.variants()) == {"plain", "all tuned"} | {f"all tuned but {op}" for op in ops}
  assert kernels.variants()["all tuned"] == cpu_kernels.OPS
  assert all(set(fields) == ops - {name.split()[-1]}
             for name, fields in kernels.variants().items() if "but" in name)
  assert list(kernels.chosen_variants("all tuned")) == ["plain", "all tuned"]
  with pytest.raises(SystemExit, match="unknown variant 'fast'; valid: plain, all tuned"):
    kernels.chosen_variants("fast")


def test_kernels_prints_the_chosen_variants_against_the_plain_model(capsys):
  # Two variants: each compiles a train step and a forward (the full set is the benchmark's).
  kernels = _load("kernels")
  results = kernels.main(["--model=tiny-R14", "--resolution=32", "--batch=2", "--iters=1",
                          "--num_classes=4", "--variants=all tuned"])
  out = capsys.readouterr().out
  assert "| plain | " in out and "| all tuned | " in out
  assert list(results) == ["plain", "all tuned"]
  assert results["plain"]["train_ratio"] == results["plain"]["infer_ratio"] == 1.0
  for r in results.values():
    assert r["train_s"] > 0 and r["infer_s"] > 0
