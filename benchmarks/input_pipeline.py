r"""Input pipeline throughput: images/s (and per CPU core) on synthetic JPEGs.

Writes ImageNet-like JPEGs (smooth random content, default 500x375, quality
90) into a temporary image folder, then times the real per-process streams
(`input_pipeline.train_dataset` / `eval_dataset`: read, shuffle, preprocess,
batch, prefetch; tf.data autotune) for the ImageNet train and eval recipes.

  python benchmarks/input_pipeline.py                  # all pipelines
  python benchmarks/input_pipeline.py --batches=50 --pipelines=train

Copy the printed table into benchmarks/RESULTS.md (section "Input pipeline").
"""
import itertools
import os
import sys
import tempfile
import time

from absl import app
from absl import flags
import numpy as np
import tensorflow as tf

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import input_pipeline as ip  # pylint: disable=g-import-not-at-top

PIPELINES = {
    "train": "decode|inception_crop(224)|flip_lr|value_range(-1, 1)|"
             "onehot(1000)",
    "train_fused": "decode_jpeg_and_inception_crop(224)|flip_lr|"
                   "value_range(-1, 1)|onehot(1000)",
    "eval": "decode|resize_small(256)|central_crop(224)|value_range(-1, 1)|"
            "onehot(1000)",
}

FLAGS = flags.FLAGS


def define_flags():
  """Only when run as a script: benchmarks/accelerator.py imports `write_jpegs`, in processes
  whose own flags (input_pipeline's CLI: `batch_size`) these would collide with."""
  flags.DEFINE_list("pipelines", list(PIPELINES), "Pipelines to run.")
  flags.DEFINE_integer("images", 512, "Distinct synthetic JPEGs to write.")
  flags.DEFINE_integer("height", 375, "JPEG height (ImageNet's median is ~375).")
  flags.DEFINE_integer("width", 500, "JPEG width (ImageNet's median is ~500).")
  flags.DEFINE_integer("batch_size", 128, "Per-process batch size.")
  flags.DEFINE_integer("batches", 30, "Timed batches per pipeline.")
  flags.DEFINE_integer("warmup", 5, "Untimed batches first (autotune settles).")
  flags.DEFINE_list("threads", ["0", "1"], "tf.data threads per run; 0: one per "
                    "core (autotune). 1 gives the per-core rate directly.")


def write_jpegs(root: str, n: int, height: int, width: int):
  """Smooth random images: JPEG size and decode cost like photos, not noise."""
  rng = np.random.default_rng(0)
  os.makedirs(os.path.join(root, "class0"))
  for i in range(n):
    coarse = rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 3))
    image = tf.image.resize(coarse[None].astype(np.float32), (height, width),
                            method="bicubic")[0]
    image += rng.normal(0, 8, image.shape)  # Some texture.
    jpeg = tf.io.encode_jpeg(tf.saturate_cast(image, tf.uint8), quality=90)
    with open(os.path.join(root, "class0", f"{i}.jpg"), "wb") as f:
      f.write(jpeg.numpy())


def images_per_second(ds: tf.data.Dataset, batches: int, warmup: int,
                      threads: int) -> float:
  if threads:
    options = tf.data.Options()
    options.threading.private_threadpool_size = threads
    options.threading.max_intra_op_parallelism = 1
    ds = ds.with_options(options)
  it = ds.as_numpy_iterator()
  for _ in range(warmup):
    next(it)
  start, images = time.perf_counter(), 0
  for batch in itertools.islice(it, batches):
    # Eval pads its last batch: count real images only.
    images += batch["_mask"].sum() if "_mask" in batch else len(batch["image"])
  return images / (time.perf_counter() - start)


def main(argv):
  del argv
  cores = len(os.sched_getaffinity(0))
  with tempfile.TemporaryDirectory() as root:
    write_jpegs(root, FLAGS.images, FLAGS.height, FLAGS.width)
    source = ip.get_source(f"folder:{root}")
    size = sum(os.path.getsize(os.path.join(root, "class0", f))
               for f in os.listdir(os.path.join(root, "class0")))
    print(f"{FLAGS.images} JPEGs {FLAGS.width}x{FLAGS.height}, mean "
          f"{size / FLAGS.images / 1024:.0f} KiB; {cores} CPU cores; "
          f"TF {tf.__version__}; batch {FLAGS.batch_size}")
    print("| pipeline | pp | tf.data threads | images/s | images/s per core |")
    print("|---|---|---|---|---|")
    for name, threads in itertools.product(FLAGS.pipelines, FLAGS.threads):
      pp, threads = PIPELINES[name], int(threads)
      if name.startswith("train"):
        ds = ip.train_dataset(source, "train", pp, FLAGS.batch_size)
      else:  # Eval passes end: repeat the padded stream for long runs.
        ds = ip.eval_dataset(source, "train", pp, FLAGS.batch_size)[0].repeat()
      rate = images_per_second(ds, FLAGS.batches, FLAGS.warmup, threads)
      used = threads or cores
      cell = pp.replace("|", "\\|")  # A | inside a Markdown table cell.
      print(f"| {name} | `{cell}` | {threads or f'{cores} (all)'} | "
            f"{rate:,.0f} | {rate / used:,.0f} |")


if __name__ == "__main__":
  define_flags()
  app.run(main)
