"""The real TPU and GPU compilers compile the upstream step from this CPU machine.

`benchmarks/memory.py --target` runs in a subprocess: libtpu and the CUDA plugin
(`make accelerators`, into .accelerators/) are loaded there only, never in a test process.
"""
import importlib.util
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_targets():
  spec = importlib.util.spec_from_file_location(
      "benchmarks_targets", os.path.join(ROOT, "benchmarks", "targets.py"))
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # Its dataclass looks its module up there.
  spec.loader.exec_module(module)
  return module


def _pinned_versions():
  with open(os.path.join(ROOT, "requirements-accelerators.txt"), encoding="utf-8") as f:
    return dict(line.strip().split("==") for line in f if not line.startswith("#") and "==" in line)


def _table(text):
  """The report's table as one dict per row, keyed by the header's columns."""
  lines = [line for line in text.splitlines() if line.startswith("| ")]
  header = [cell.strip() for cell in lines[0].strip("|").split("|")]
  return [dict(zip(header, (cell.strip() for cell in line.strip("|").split("|"))))
          for line in lines[1:]]


@pytest.mark.parametrize("target,package", [("tpu-v4-8", "libtpu"), ("h100", "jax-cuda12-plugin")])
def test_tiny_upstream_step_and_forward_compile_for_the_target_with_plain_kernels(
    target, package, optimized_env):
  targets = _load_targets()
  if not os.path.isdir(targets.ACCELERATORS):
    pytest.fail(f"{targets.ACCELERATORS} is missing: run `make accelerators` (installs "
                "requirements-accelerators.txt there, outside the venv's default imports)")
  result = subprocess.run(
      [sys.executable, os.path.join(ROOT, "benchmarks", "memory.py"), f"--target={target}",
       "--steps=upstream,forward", "--shardings=fsdp", "--upstream_settings=bit_l:tiny-R14:2",
       "--model=tiny-R14", "--resolution=32", "--num_classes=4", "--fsdp_min_size=4096"],
      capture_output=True, text=True, timeout=600, check=False,
      env=optimized_env)  # The target's compiler as users run it: no XLA:CPU test flags.
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
  out = result.stdout
  fields = dict(line.split(": ", 1) for line in out.splitlines()
                if re.match(r"^[\w\[\]:-]+: ", line))
  assert fields["compiler"].startswith(f"{package} {_pinned_versions()[package]},")
  # The compile-only devices are the target's, so "auto" gives the plain model there.
  platform = targets.TARGETS[target].platform
  assert fields["devices"].split(" x ")[1].startswith("tpu:" if platform == "tpu" else "gpu:")
  assert fields["kernels"] == "plain"
  row, *forwards = _table(out)
  assert (row["step"], row["model"], row["sharding"]) == ("upstream", "tiny-R14", "fsdp")
  # The evaluators' forward (bit_jax.features.forward) compiles for the target too: of the
  # pretrained model and of the fine-tuned one (--model).
  assert [(f["step"], f["model"], f["fits"]) for f in forwards] == [
      ("forward", "tiny-R14", "yes")] * 2
  memory_gib = float(fields["memory_gib_per_device"])
  assert memory_gib == pytest.approx(targets.TARGETS[target].memory_gib(), abs=0.01)
  peak = int(fields["peak_bytes[upstream:tiny-R14:32:fsdp:1]"])
  assert 0 < peak < memory_gib * 2**30 and row["fits"] == "yes"
  assert float(row["peak GiB"]) == pytest.approx(peak / 2**30, abs=0.005)  # Rounded to 0.01.
  # fsdp: the sharded weights are gathered where used and their gradients reduced.
  assert int(row["all-gather"]) > 0
  assert int(row["reduce-scatter"]) + int(row["all-reduce"]) > 0
  # libtpu's cost analysis counts FLOPs; CUDA's deviceless compile gives none.
  assert (row["TFLOP per device"] != "") == (platform == "tpu")


def test_a_missing_compiler_fails_with_one_line_naming_the_install_command(monkeypatch):
  targets = _load_targets()
  monkeypatch.setitem(targets.PACKAGES, "tpu", ("no_such_compiler_module", "libtpu"))
  with pytest.raises(SystemExit, match=r"^error: libtpu is not installed.*`make accelerators`"):
    targets.compiler_version(targets.TARGETS["tpu-v4-8"])


def test_collectives_are_counted_once_each_and_libtpus_reduce_scatter_as_one():
  targets = _load_targets()
  hlo = "\n".join([
      "HloModule step",
      "%all-reduce-scatter (input: f32[8]) -> f32[2] {",
      "  %all-reduce.1 = f32[8] all-reduce(%input), to_apply=%add",
      "}",
      "ENTRY %main (p: f32[8]) -> f32[8] {",
      "  %all-gather-start = (f32[2], f32[8]) all-gather-start(%p), dimensions={0}",
      "  %all-gather-done = f32[8] all-gather-done(%all-gather-start)",
      "  %all-gather.2 = f32[8] all-gather(%p), dimensions={0}",
      "  %fusion = f32[2] fusion(%p), kind=kCustom, calls=%all-reduce-scatter",
      "  %reduce-scatter = f32[2] reduce-scatter(%p), dimensions={0}",
      "  %all-reduce-start = f32[8] all-reduce-start(%p), to_apply=%add",
      "}"])
  assert targets.count_collectives(hlo) == {"all-gather": 2, "reduce-scatter": 2,
                                            "all-reduce": 1}
