"""XLA's memory analysis of a compiled program, and the per-device peak it adds up to."""
from __future__ import annotations

import jax


def memory_summary(compiled: jax.stages.Compiled) -> dict[str, int]:
  """Bytes per device: arguments, outputs, aliased (donated inputs reused as outputs),
  temporaries, and `peak` = arguments + outputs - aliased + temporaries."""
  stats = compiled.memory_analysis()
  out = {"argument": stats.argument_size_in_bytes, "output": stats.output_size_in_bytes,
         "alias": stats.alias_size_in_bytes, "temp": stats.temp_size_in_bytes}
  out["peak"] = out["argument"] + out["output"] - out["alias"] + out["temp"]
  return out
