"""One training loop, upstream pretraining's or fine-tuning's, through the fault script of
tests/loop/test_loop.py; one JSON line per fault on stdout.

    python -m tests.loop.loop_faults upstream|finetune WORKDIR

Each fault runs a fresh 4-step tiny-R14 run in WORKDIR/<fault> and reports the exit status
its exception maps to (`entry.exit_status`), the checkpoint steps left, whether SIGTERM's and
SIGINT's handlers are the ones from before the run, and how many checkpointers are still
open. A process of its own: the signals are real, and a failed orbax write may leave threads
that never finish (the process ends with `os._exit`).
"""
import json
import os
import signal
import sys

import jax
import jax.numpy as jnp

import input_pipeline
from bit_jax import checkpointing, distributed, entry, finetune, models, train
from tests import faults, tiny_configs

TOTAL_STEPS = 4
# (fault, the step it strikes, checkpoint_every_steps). The failed write is last: orbax's
# threads may not recover from it.
FAULTS = (("sigterm_middle", 2, 1000), ("sigterm_last", TOTAL_STEPS, 1000),
          ("diverge", 3, 1), ("failed_write", 3, 1))
DATASET = "bit_animals_upstream"  # Embedded: configs/demo.py's, 10 classes of 32 px images.
REAL_ITERATOR = input_pipeline.train_iterator


def run_upstream(workdir: str, checkpoint_every_steps: int) -> None:
  config = tiny_configs.upstream(total_steps=TOTAL_STEPS, keep_checkpoints=1,
                                 checkpoint_every_steps=checkpoint_every_steps)
  config.evals.eval.enabled = False  # Fine-tuning's loop has none.
  train.train_and_evaluate(config, workdir)


def run_finetune(workdir: str, checkpoint_every_steps: int) -> None:
  model = models.get_model("tiny-R14", num_classes=10)
  plan = finetune.Plan(resize=36, crop=32, schedule=(1, 2, 3, 3, TOTAL_STEPS),
                       mixup_alpha=0.0, base_lr=0.003, batch_size=16, accum_steps=1,
                       eval_batch_size=16, shuffle_buffer=64, log_every_steps=1,
                       checkpoint_every_steps=checkpoint_every_steps)
  params = finetune.init_params(model, jax.random.key(0), plan.crop)
  finetune.train(model, params, input_pipeline.get_source(DATASET), "train", 10, plan, seed=0,
                 mesh=distributed.data_mesh(),
                 checkpoint_dir=os.path.join(workdir, checkpointing.CHECKPOINT_DIR))


def _strike(fault: str, at_step: int) -> None:
  """Makes `fault` happen at step `at_step` of the next run."""
  def iterator(*args, **kwargs):
    for step, batch in enumerate(REAL_ITERATOR(*args, **kwargs), kwargs["start_step"] + 1):
      if step == at_step and fault.startswith("sigterm"):
        os.kill(os.getpid(), signal.SIGTERM)  # While the step is taken.
      if step == at_step and fault == "diverge":
        batch = {**batch, "image": batch["image"] * jnp.nan}
      yield batch
  input_pipeline.train_iterator = iterator

  if fault == "failed_write":  # The last fault: nothing runs after it.
    faults.fail_write_at(at_step)


def _track_open_checkpointers() -> list:
  """The checkpointers made from now on whose orbax manager is not closed."""
  still_open = []
  real_init = checkpointing.Checkpointer.__init__
  def init(self, *args, **kwargs):
    real_init(self, *args, **kwargs)
    still_open.append(self)
    close_manager = self._manager.close
    def close():
      close_manager()
      still_open.remove(self)
    self._manager.close = close
  checkpointing.Checkpointer.__init__ = init
  return still_open


def main(driver: str, root: str) -> None:
  run = {"upstream": run_upstream, "finetune": run_finetune}[driver]
  still_open = _track_open_checkpointers()
  for fault, at_step, checkpoint_every_steps in FAULTS:
    workdir = os.path.join(root, fault)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    _strike(fault, at_step)
    try:
      run(workdir, checkpoint_every_steps)
      status, message = 0, ""
    except BaseException as e:  # pylint: disable=broad-except
      status, message = entry.exit_status(e), str(e)
    checkpoints = os.path.join(workdir, checkpointing.CHECKPOINT_DIR)
    steps = sorted(int(n) for n in os.listdir(checkpoints) if n.isdigit()) if os.path.isdir(
        checkpoints) else []
    print(json.dumps({
        "fault": fault, "at_step": at_step, "status": status, "error": message,
        "checkpoints": checkpoints, "checkpoint_steps": steps,
        "handlers_restored": all(signal.getsignal(s) is h for s, h in handlers.items()),
        "open_checkpointers": len(still_open)}), flush=True)
  sys.stderr.flush()
  os._exit(0)


if __name__ == "__main__":
  main(*sys.argv[1:])
