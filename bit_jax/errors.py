"""The exceptions entry points end a run with: bad user input, a diverged run, a checkpoint
that could not be written, and a preempted run.

Entry points catch `UserError`, `NonFiniteLossError` and `CheckpointError`, print the
one-line message and exit nonzero (`bit_jax.entry`); `Preempted` is a `SystemExit`, so a
preempted run exits with its status from any caller. Anything else is a bug and keeps its
traceback.
"""


# SIGTERM or SIGINT (Ctrl-C) stopped the run after it saved a checkpoint; rerunning the same
# command resumes. 128 + SIGTERM, the status a shell reports for a job SIGTERM killed.
EXIT_PREEMPTED = 143


class UserError(ValueError):
  """Bad input from the user; the message is one line naming what is wrong and what is valid."""


class NonFiniteLossError(RuntimeError):
  """The loss, or the parameters after an update, became NaN or Inf; the last good
  checkpoint is left as it was."""


class CheckpointError(RuntimeError):
  """A checkpoint could not be written (full disk, a vanished directory, ...); the ones
  written before it are intact."""


class Preempted(SystemExit):
  """SIGTERM or SIGINT stopped the run after it saved a checkpoint; rerunning resumes.

  A `SystemExit` whose code is `EXIT_PREEMPTED`: schedulers and scripts see "stopped early,
  resumable" and not "done", whether the run came from train.py or not.
  """

  def __init__(self):
    super().__init__(EXIT_PREEMPTED)


def one_line(e: BaseException, limit: int = 200) -> str:
  """`e` as one line: its type and the first line of its message, cut at `limit` characters
  and before the dump of an array's spec that follows orbax's TensorStore errors."""
  line = next((text.strip() for text in str(e).splitlines() if text.strip()), "")
  line = line.split(" See full TensorStore details")[0]
  return f"{type(e).__name__}: {line if len(line) <= limit else line[:limit] + '...'}"
