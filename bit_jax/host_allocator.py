"""Which malloc this process allocates with, and the advice XLA:CPU users need about it.

XLA:CPU gives every execution a fresh block for its temporary buffers (0.4 GiB for R50x1's
train step at 128 px, batch 8). glibc's malloc serves a block that large with mmap and
unmaps it on free, so every step faults all its pages in again: ~110k page faults and a
quarter of the step's CPU time on the 2-core development machine. tcmalloc keeps freed
memory mapped; with it preloaded the faults are gone (benchmarks/RESULTS.md). Accelerators
allocate on the device and do not care.
"""

from __future__ import annotations

import os

from absl import logging

TCMALLOC_HINT = ("XLA:CPU is running on glibc malloc, which page-faults each step's "
                 "temporary buffers in again (up to a quarter of a CPU train step); "
                 "preload tcmalloc: LD_PRELOAD={path} (Debian/Ubuntu package "
                 "libtcmalloc-minimal4; `make` does this when it is installed)")
# Where Debian and Ubuntu install it, for the hint's example path.
DEBIAN_TCMALLOC = "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"
_KNOWN = ("tcmalloc", "jemalloc", "mimalloc")


def loaded_allocator(maps_path: str = "/proc/self/maps") -> str:
  """'tcmalloc', 'jemalloc' or 'mimalloc' when one is mapped into this process, else
  'glibc malloc'; 'unknown' where the process's mappings cannot be read (not Linux)."""
  try:
    with open(maps_path) as f:
      maps = f.read()
  except OSError:
    return "unknown"
  for name in _KNOWN:
    if f"lib{name}" in maps:
      return name
  return "glibc malloc"


def advice(platform: str, allocator: str | None = None) -> str | None:
  """The one-line hint for a run on `platform` ('cpu', 'gpu', 'tpu'), or None."""
  allocator = allocator or loaded_allocator()
  if platform != "cpu" or allocator != "glibc malloc":
    return None
  return TCMALLOC_HINT.format(path=DEBIAN_TCMALLOC if os.path.exists(DEBIAN_TCMALLOC)
                              else "/path/to/libtcmalloc_minimal.so.4")


def log_advice(platform: str) -> None:
  hint = advice(platform)
  if hint:
    logging.warning(hint)
