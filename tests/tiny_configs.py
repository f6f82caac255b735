"""The small runs the tests make: tiny-R14 at 32 px, batches of 16, a few steps.

One definition, so that tests agree on it (and XLA's compilation cache, shared by the test
run, compiles each of their programs once).
"""
from configs import demo
from configs import transfer as transfer_config

# Over any upstream config (configs/bit_*.py, demo.py): evaluation and checkpoints only where
# a test asks for them.
UPSTREAM = dict(model="tiny-R14", image_size=32, batch_size=16, eval_batch_size=16,
                shuffle_buffer=64, warmup_steps=2, log_every_steps=1, eval_every_steps=1000,
                checkpoint_every_steps=1000)


def upstream(config=None, **overrides):
  """`config` (configs/demo.py's by default) with `UPSTREAM` and then `overrides`."""
  config = config if config is not None else demo.get_config()
  config.update({**UPSTREAM, **overrides})
  return config


def transfer(**overrides):
  """configs/transfer.py for tiny-R14 on cifar10 (mock data), 4 steps at 36/32 px."""
  config = transfer_config.get_config("model=tiny-R14,dataset=cifar10")
  config.update({**dict(resolution=(36, 32), batch_size=16, eval_batch_size=16, total_steps=4,
                        log_every_steps=2, shuffle_buffer=64), **overrides})
  return config
