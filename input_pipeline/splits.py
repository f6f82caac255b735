"""TFDS split strings (`train[:800]`, `train[10%:]+test`): shards and errors.

One grammar for every source: TFDS's own parser also serves image folders, so
slicing behaves identically on TFDS data, embedded data and folders.
"""
import tensorflow_datasets as tfds

from input_pipeline.errors import InputError

HELP = "slice like train[:800] or train[10%:], join with +"


def shard(split: str, process_index: int, process_count: int):
  """The part of `split` process `process_index` reads.

  `tfds.even_splits`: disjoint and covering; each `+`-joined part is divided
  into contiguous pieces differing by at most one example. With TFDS files each
  process opens only the records it needs.
  """
  if not 0 <= process_index < process_count:
    raise InputError(f"process_index {process_index} is not in "
                     f"[0, process_count={process_count})")
  if process_count == 1:
    return split
  return tfds.even_splits(split, n=process_count)[process_index]


def absolute_ranges(split, sizes: dict[str, int],
                    dataset: str) -> list[tuple[str, int, int]]:
  """`split` (a string or `shard`'s result) -> [(split_name, start, stop)]."""
  infos = {name: tfds.core.SplitInfo(name=name, shard_lengths=[n], num_bytes=0)
           for name, n in sizes.items()}
  try:
    instructions = tfds.core.ReadInstruction.from_spec(split).to_absolute(infos)
  except (KeyError, ValueError, AssertionError) as e:
    raise bad_split(split, dataset, sizes, e) from None
  return [(i.splitname, i.from_ or 0, sizes[i.splitname] if i.to is None
           else i.to) for i in instructions]


def bad_split(split, dataset: str, valid, error: BaseException) -> InputError:
  lines = [l.strip() for l in str(error).splitlines() if l.strip()]
  reason = lines[-1] if lines else type(error).__name__  # The specific line.
  return InputError(f"bad split {str(split)!r} for dataset {dataset} "
                    f"({reason}); valid splits: {', '.join(sorted(valid))}; "
                    f"{HELP}")
