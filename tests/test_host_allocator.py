"""Which malloc the process runs on, and the one-line advice for XLA:CPU runs on glibc's."""
import glob
import os
import subprocess
import sys

import pytest

from bit_jax import host_allocator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TCMALLOC = sorted(glob.glob("/usr/lib/*/libtcmalloc_minimal.so.4"))


def _maps(tmp_path, *libraries):
  path = tmp_path / "maps"
  path.write_text("".join(f"7f00-7f01 r-xp 0 08:01 1 /usr/lib/{lib}\n" for lib in libraries))
  return str(path)


def test_names_the_allocator_mapped_into_the_process(tmp_path):
  assert host_allocator.loaded_allocator(_maps(tmp_path, "libc.so.6")) == "glibc malloc"
  maps = _maps(tmp_path, "libc.so.6", "x86_64-linux-gnu/libtcmalloc_minimal.so.4")
  assert host_allocator.loaded_allocator(maps) == "tcmalloc"
  assert host_allocator.loaded_allocator(_maps(tmp_path, "libjemalloc.so.2")) == "jemalloc"
  assert host_allocator.loaded_allocator(str(tmp_path / "missing")) == "unknown"


def test_advises_tcmalloc_only_for_cpu_runs_on_glibc_malloc():
  hint = host_allocator.advice("cpu", "glibc malloc")
  assert "LD_PRELOAD=" in hint and "libtcmalloc" in hint and "\n" not in hint
  assert host_allocator.advice("cpu", "tcmalloc") is None
  assert host_allocator.advice("gpu", "glibc malloc") is None
  assert host_allocator.advice("tpu", "glibc malloc") is None


@pytest.mark.skipif(not TCMALLOC, reason="tcmalloc is not installed (libtcmalloc-minimal4)")
def test_a_preloaded_tcmalloc_is_seen():
  code = "from bit_jax import host_allocator; print(host_allocator.loaded_allocator())"
  env = dict(os.environ, LD_PRELOAD=TCMALLOC[0], PYTHONPATH=ROOT)
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                       text=True, check=True).stdout
  assert out.strip() == "tcmalloc"
